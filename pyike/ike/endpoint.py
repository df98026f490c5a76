"""All IKE SAs of one daemon: the sans-IO entry point of the IKE core.

An :class:`Endpoint` is fed datagrams (``receive``), the current time
(``handle_timer``) and API calls (``connect``, ``close_all``); it answers with
:class:`~pyike.ike.events.Transmit` records (``datagrams_to_send``), a next timer
deadline (``get_timer``) and events (``next_event``). The driver moves the bytes.
"""

from __future__ import annotations

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
        self.sas: dict[bytes, IkeSa] = {}  # by our SPI
        self.half_open: dict[tuple[bytes, Addr], IkeSa] = {}  # responder, by (SPIi, peer)
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

    def get_timer(self) -> float | None:
        deadlines = [d for sa in self.sas.values() if (d := sa.next_deadline()) is not None]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        for sa in list(self.sas.values()):
            deadline = sa.next_deadline()
            if deadline is not None and now >= deadline:
                sa.handle_timer(now)
        self.reap()

    # ------------------------------------------------------------------ queries and commands by ID

    def ike_sa(self, spi: bytes) -> IkeSa | None:
        """The IKE SA that events name by ``spi`` (ours), while it exists."""
        return self.sas.get(spi)

    def child_sas(self) -> list[ChildSaInfo]:
        """Every Child SA of every IKE SA, as values."""
        return [c.info() for sa in self.sas.values() for c in sa.children.values()]

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
            if reply is not None:
                self.transmits.append(Transmit(reply, dst, src))
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
        for spi, sa in list(self.sas.items()):
            if sa.state == State.CLOSED:
                del self.sas[spi]
                self.half_open.pop((sa.spi_i, sa.peer), None)
                for c in sa.children:
                    self._child_spis.discard(c)
        for key, sa in list(self.half_open.items()):
            if sa.state != State.INIT_DONE:
                del self.half_open[key]
