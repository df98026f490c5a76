"""All IKE SAs of one daemon: the sans-IO entry point of the IKE core.

An :class:`Endpoint` is fed datagrams (``receive``), the current time
(``handle_timer``) and API calls (``connect``, ``close_all``); it answers with
:class:`~pyike.ike.events.Transmit` records (``datagrams_to_send``), a next timer
deadline (``get_timer``) and events (``next_event``). The driver moves the bytes.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
from collections.abc import Callable

from pyike import wire
from pyike.ike import init
from pyike.ike.child import ChildSa
from pyike.ike.common import ZERO_SPI, Addr, IPAddress, notify, spi_text
from pyike.ike.events import ChildSaInfo, Event, Transmit
from pyike.ike.guard import Guard
from pyike.ike.policy import SaPolicy
from pyike.ike.sa import IkeSa
from pyike.ike.states import State
from pyike.limits import DEFAULT_LIMITS, Limits
from pyike.registry import ExchangeType, HeaderFlag, NotifyType
from pyike.wire import Message

log = logging.getLogger("pyike.ike")

# Plain ints for the per-datagram test in receive(): enum operators cost microseconds.
_IKE_SA_INIT = int(ExchangeType.IKE_SA_INIT)
_RESPONSE = int(HeaderFlag.RESPONSE)

PolicyLookup = Callable[[Addr, Addr, tuple[int, bytes] | None], SaPolicy | None]


# Every this many seconds every SA's deadline is recomputed, whatever was touched: a
# backstop for a deadline moved earlier by a path that touch() does not see (one pass
# over the SAs per minute costs about 5 us per SA).
RESYNC_EVERY = 60.0


class _SaTable(dict[bytes, IkeSa]):
    """The IKE SAs by our SPI; an SA put in (new, rekeyed) is touched (its timers)."""

    def __init__(self, endpoint: Endpoint) -> None:
        super().__init__()
        self._endpoint = endpoint

    def __setitem__(self, spi: bytes, sa: IkeSa) -> None:
        super().__setitem__(spi, sa)
        self._endpoint.touch(sa)
        if sa.peer_id is not None:  # an IKE SA rekey's new SA: same peer
            self._endpoint.note_peer(sa)


class _HalfOpenTable(dict[tuple[bytes, Addr], IkeSa]):
    """Responder SAs waiting for IKE_AUTH by (SPIi, peer address it came from); keeps
    each SA's key, since the SA's own peer address may move (to port 4500) later."""

    def __init__(self) -> None:
        super().__init__()
        self.key_of: dict[bytes, tuple[bytes, Addr]] = {}  # our SPI -> key here

    def __setitem__(self, key: tuple[bytes, Addr], sa: IkeSa) -> None:
        super().__setitem__(key, sa)
        self.key_of[sa.our_spi] = key

    def forget(self, sa: IkeSa) -> None:
        key = self.key_of.pop(sa.our_spi, None)
        if key is not None and self.get(key) is sa:
            del self[key]


def _no_policy(_peer: Addr, _local: Addr, _peer_id: tuple[int, bytes] | None) -> SaPolicy | None:
    return None


class Endpoint:
    """All IKE SAs of one daemon: demultiplexing, responder creation, cookies.

    ``policy_for(peer, local, peer_id)`` picks the responder policy (iked's
    rule lives in pyike.config); ``rng`` is injectable for reproducible tests.
    """

    def __init__(
        self,
        policy_for: PolicyLookup = _no_policy,
        *,
        rng: Callable[[int], bytes] = os.urandom,
        limits: Limits = DEFAULT_LIMITS,
        cookie_threshold: int | None = None,
    ) -> None:
        self.policy_for = policy_for
        self.rng = rng
        self.limits = limits
        self.cookie_threshold = (
            limits.cookie_threshold if cookie_threshold is None else cookie_threshold
        )
        self.half_open_timeout = limits.half_open_timeout
        self.guard = Guard(limits)
        # Timers and reaping cost O(log n) per event, not a pass over every SA: SAs
        # something happened to (a datagram, a timer, a state move, a message sent, a
        # new entry in `sas`) are "touched"; only those get their next_deadline()
        # recomputed into a heap of (deadline, n, SPI) and are checked for removal.
        # A heap entry whose deadline is no longer the SA's is skipped when it surfaces.
        self._touched: set[bytes] = set()  # for the timer heap
        self._reap_touched: set[bytes] = set()  # for reap()
        self._deadline: dict[bytes, float] = {}  # SPI -> deadline in the heap
        self._heap: list[tuple[float, int, bytes]] = []
        self._heap_n = itertools.count()
        self._resync_at = float("-inf")
        # Peer identity -> its IKE SAs (the per-peer limit looks there, not at all SAs);
        # pruned of SAs that are gone whenever it is read.
        self._by_peer: dict[tuple[int, bytes], list[IkeSa]] = {}
        self.sas: dict[bytes, IkeSa] = _SaTable(self)  # by our SPI
        self.half_open: _HalfOpenTable = _HalfOpenTable()  # responder, by (SPIi, peer)
        self.cookie_secret = rng(32)
        self._child_spis: set[int] = set()
        self.transmits: list[Transmit] = []
        self.events: list[Event] = []
        self.dropped = 0
        # INVALID_IKE_SPI answers (2.21.4): at most invalid_spi_burst per source address
        # per second (a restarted peer gets one probe per IKE SA it had with us).
        self.invalid_spi_burst = 8
        self._invalid_spi_sent: dict[IPAddress, tuple[float, int]] = {}

    # ------------------------------------------------------------------ API

    def connect(
        self,
        policy: SaPolicy,
        local: Addr,
        peer: Addr,
        now: float,
        *,
        initial_contact: bool | None = None,
    ) -> IkeSa:
        """Start an IKE SA as initiator.

        ``initial_contact`` overrides the policy: it must only be sent when no
        other IKE SA exists between the two identities (RFC 7296 2.4), else the
        peer deletes those.
        """
        sa = IkeSa(self, policy, initiator=True, local=local, peer=peer, now=now)
        if initial_contact is not None:
            sa.initial_contact = initial_contact
        self.sas[sa.spi_i] = sa
        init.start(sa, now)
        return sa

    def close_all(self, now: float, reason: str = "shutting down") -> None:
        for sa in list(self.sas.values()):
            sa.delete(now, reason)

    def datagrams_to_send(self) -> list[Transmit]:
        out, self.transmits = self.transmits, []
        return out

    def next_event(self) -> Event | None:
        return self.events.pop(0) if self.events else None

    def touch(self, sa: IkeSa) -> None:
        """Something changed in ``sa`` that may move its deadline or end it."""
        spi = sa.our_spi
        self._touched.add(spi)
        self._reap_touched.add(spi)

    def note_peer(self, sa: IkeSa) -> None:
        """``sa`` knows its peer's identity now (IKE_AUTH, or an IKE SA rekey)."""
        assert sa.peer_id is not None
        same = self._by_peer.setdefault(sa.peer_id, [])
        if sa not in same:
            same.append(sa)

    def peer_sas(self, peer_id: tuple[int, bytes]) -> list[IkeSa]:
        """The IKE SAs we hold with this peer identity (any state)."""
        same = self._by_peer.get(peer_id, [])
        live = [sa for sa in same if self.sas.get(sa.our_spi) is sa and sa.peer_id == peer_id]
        if live:
            self._by_peer[peer_id] = live
        else:
            self._by_peer.pop(peer_id, None)
        return live

    def _refresh(self) -> None:
        """Recompute the deadlines of touched SAs into the heap."""
        touched, self._touched = self._touched, set()
        sas, deadlines, heap = self.sas, self._deadline, self._heap
        for spi in touched:
            sa = sas.get(spi)
            d = sa.next_deadline() if sa is not None else None
            if d is None:
                deadlines.pop(spi, None)
            elif deadlines.get(spi) != d:
                deadlines[spi] = d
                heapq.heappush(heap, (d, next(self._heap_n), spi))
        # Stale entries (deadline moved or SA gone) at the top would hide the real one.
        while heap and deadlines.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)
        if len(heap) > 2 * len(deadlines) + 64:  # many stale entries: rebuild
            self._heap = heap = [(d, next(self._heap_n), spi) for spi, d in deadlines.items()]
            heapq.heapify(heap)

    def get_timer(self) -> float | None:
        self._refresh()
        return self._heap[0][0] if self._heap else None

    def handle_timer(self, now: float) -> None:
        if now >= self._resync_at:  # the backstop (RESYNC_EVERY)
            self._resync_at = now + RESYNC_EVERY
            self._touched.update(self.sas)
        self._refresh()
        heap, deadlines, due = self._heap, self._deadline, []
        while heap and heap[0][0] <= now:
            d, _n, spi = heapq.heappop(heap)
            if deadlines.get(spi) == d:
                del deadlines[spi]
                due.append(spi)
        for spi in due:
            sa = self.sas.get(spi)
            if sa is not None:
                sa.handle_timer(now)
                self.touch(sa)
        self.reap()

    # ------------------------------------------------------------------ queries and commands by ID

    def ike_sa(self, spi: bytes) -> IkeSa | None:
        """The IKE SA that events name by ``spi`` (ours), while it exists."""
        return self.sas.get(spi)

    def child_sas(self) -> list[ChildSaInfo]:
        """Every Child SA of every IKE SA, as values."""
        return [c.info() for sa in self.sas.values() for c in sa.children.values()]

    def child_sa(self, spi_in: int) -> ChildSaInfo | None:
        """The Child SA with inbound SPI ``spi_in``, as a value, while it exists."""
        found = self._child_owner(spi_in)
        return found[1].info() if found is not None else None

    def _child_owner(self, spi_in: int) -> tuple[IkeSa, ChildSa] | None:
        for sa in self.sas.values():
            child = sa.children.get(spi_in)
            if child is not None:
                return sa, child
        return None

    def note_alive(self, spi_in: int, now: float) -> None:
        """The data plane opened authenticated ESP of Child SA ``spi_in``: its peer is
        alive, so no liveness probe is needed (RFC 7296 2.4). Unknown SPIs are ignored."""
        found = self._child_owner(spi_in)
        if found is not None:
            child = found[1]
            child.last_inbound = max(child.last_inbound, now)

    def note_child_usage(self, spi_in: int, octets: int, now: float) -> None:
        """The data plane's byte count of Child SA ``spi_in`` (its byte lifetime)."""
        found = self._child_owner(spi_in)
        if found is not None:
            found[0].note_child_usage(spi_in, octets, now)

    # ------------------------------------------------------------------ SPIs

    def new_child_spi(self) -> int:
        """A fresh inbound ESP SPI (>= 256: 1-255 are reserved, RFC 4303 2.1)."""
        while True:
            spi = int.from_bytes(self.rng(4), "big")
            if spi >= 256 and spi not in self._child_spis:
                self._child_spis.add(spi)
                return spi

    def new_ike_spi(self) -> bytes:
        """A fresh SPI of ours for a new IKE SA (not zero, not in use)."""
        while True:
            spi = self.rng(8)
            if spi != ZERO_SPI and spi not in self.sas:
                return spi

    # ------------------------------------------------------------------ receive

    def receive(self, data: bytes, src: Addr, dst: Addr, now: float) -> None:
        """One IKE datagram (non-ESP marker already removed). Never raises."""
        if (
            len(self.half_open) >= self.cookie_threshold
            and len(data) > 19
            and data[18] == _IKE_SA_INIT
            and not data[19] & _RESPONSE
        ):
            # 2.6 under load: answer a cookie-less IKE_SA_INIT before parsing it at all,
            # so that a spoofed flood costs a hash per datagram (see guard.py).
            reply = self.guard.cookie_fast_path(data, src, self.cookie_secret, now)
            if reply:
                self.transmits.append(Transmit(reply, dst, src))
            if reply is not None:
                return
        try:
            msg = wire.parse_message(data)
        except wire.WireError as e:
            self.dropped += 1
            self.guard.note(
                "ike_malformed", now, "drop datagram from [%s]:%d: %s", src[0], src[1], e
            )
            return
        try:
            self._dispatch(msg, data, src, dst, now)
        except Exception:  # a bug must not take the daemon down for other peers
            self.dropped += 1
            log.exception(
                "internal error handling %s from [%s]:%d; message dropped",
                ExchangeType.name_of(msg.exchange),
                src[0],
                src[1],
            )
        self.reap()

    def _dispatch(self, msg: Message, data: bytes, src: Addr, dst: Addr, now: float) -> None:
        if msg.exchange == ExchangeType.IKE_SA_INIT and not msg.is_response:
            existing = self.half_open.get((msg.spi_i, src))
            if existing is not None:  # a retransmission: same answer again (2.1)
                self.transmits.append(Transmit(existing.init_response, dst, src))
                return
            init.on_init_request(self, msg, data, src, dst, now)
            return
        ours = msg.spi_r if msg.is_initiator else msg.spi_i
        sa = self.sas.get(ours)
        if sa is None:
            self.dropped += 1
            self.guard.note(
                "ike_unknown_spi",
                now,
                "drop %s %s #%d from [%s]:%d: unknown SPI %s",
                ExchangeType.name_of(msg.exchange),
                "response" if msg.is_response else "request",
                msg.message_id,
                src[0],
                src[1],
                spi_text(ours),
                level=logging.INFO,
            )
            if (
                not msg.is_response
                and msg.payloads
                and isinstance(msg.payloads[-1], wire.SkPayload)
            ):
                self._answer_invalid_spi(msg, src, dst, now)
            return
        sa.receive(msg, data, src, dst, now)
        self.touch(sa)

    def _answer_invalid_spi(self, msg: Message, src: Addr, dst: Addr, now: float) -> None:
        """2.21.4: a request for an SA we do not know (we restarted, say) MAY get an
        unprotected response with the same SPIs and message ID carrying
        INVALID_IKE_SPI, so that the peer re-establishes at once instead of waiting
        for its retransmissions to time out. Only for protected requests (any request
        for an established SA is): the 36-byte answer is then smaller than the
        request, so it amplifies nothing. Never for responses; rate-limited per
        source address."""
        start, count = self._invalid_spi_sent.get(src[0], (now, 0))
        if now - start >= 1.0:
            start, count = now, 0
        if count >= self.invalid_spi_burst:
            return
        if len(self._invalid_spi_sent) >= 1024:
            self._invalid_spi_sent.clear()
        self._invalid_spi_sent[src[0]] = (start, count + 1)
        # We answer as the other role of whoever sent the request (3.1, I flag).
        flags = HeaderFlag.RESPONSE | (0 if msg.is_initiator else HeaderFlag.INITIATOR)
        reply = Message(
            msg.spi_i,
            msg.spi_r,
            msg.exchange,
            flags,
            msg.message_id,
            [notify(NotifyType.INVALID_IKE_SPI)],
        )
        self.guard.note(
            "invalid_spi_sent",
            now,
            "send INVALID_IKE_SPI to [%s]:%d for %s #%d",
            src[0],
            src[1],
            ExchangeType.name_of(msg.exchange),
            msg.message_id,
            level=logging.INFO,
        )
        self.transmits.append(Transmit(wire.build_message(reply), dst, src))

    def reap(self) -> None:
        """Forget closed SAs and half-open entries that completed: only touched SAs
        can have changed state (see ``touch``)."""
        touched, self._reap_touched = self._reap_touched, set()
        for spi in touched:
            sa = self.sas.get(spi)
            if sa is None:
                continue
            if sa.state == State.CLOSED:
                del self.sas[spi]
                self._deadline.pop(spi, None)
                self.half_open.forget(sa)
                for c in sa.children:
                    self._child_spis.discard(c)
            elif sa.state != State.INIT_DONE:
                self.half_open.forget(sa)
