"""One IKE SA: its shared state, message protection, the state table, timers.

What happens for a message is decided here in one place: a request goes to the
handler that the ``REQUEST_HANDLERS`` table names for (state, exchange); a
response goes to the :class:`~pyike.ike.requests.Request` object it answers. The
exchanges themselves live in their own modules:

  init.py           IKE_SA_INIT, both roles: cookies, INVALID_KE, NAT detection, SK_*
  auth.py           IKE_AUTH: AUTH octets (2.15), identities, the first Child SA
  create_child.py   CREATE_CHILD_SA: Child SAs (new, rekeyed), IKE SA rekeys, collisions
  informational.py  INFORMATIONAL: DELETE, liveness
  child_negotiation.py  proposals, selectors and KEYMAT of a Child SA (2.9, 2.17)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from pyike import crypto, wire
from pyike.ike import auth, create_child, fragments, informational, mobike
from pyike.ike.child import ChildSa
from pyike.ike.common import (
    IKE_PORT,
    NATT_PORT,
    ZERO_SPI,
    Addr,
    ProtocolError,
    id_text,
    notify,
    spi_text,
)
from pyike.ike.events import (
    ChildSaCreated,
    ChildSaDeleted,
    Event,
    IkeSaClosed,
    IkeSaEstablished,
    PeerLostSa,
    PeerMoved,
)
from pyike.ike.policy import SaPolicy
from pyike.ike.requests import Request, RequestWindow, Response
from pyike.ike.states import CHILD_MOVES, IKE_MOVES, ChildState, State, StateError
from pyike.proposals import Suite
from pyike.registry import ExchangeType, HeaderFlag, NotifyType, PayloadType
from pyike.wire import Message

if TYPE_CHECKING:
    from pyike.ike.create_child import ChildRekey, IkeRekey
    from pyike.ike.endpoint import Endpoint

log = logging.getLogger("pyike.ike")

REKEYED_GRACE = 60.0  # seconds an SA replaced by the peer's rekey waits for its DELETE
# Both ends of an idle SA usually run the same liveness interval, and each restarts it on
# hearing the other (2.4), so both timers run out together and every check is done twice.
# The SA's responder waits this much longer: the initiator (the home box, which needs to
# find a dead path fast) checks, the responder only answers, unless the initiator's
# interval is the longer one. Half the datagrams for a responder of many idle peers.
RESPONDER_LIVENESS_SLACK = 1.2


RequestHandler = Callable[["IkeSa", Message, list[wire.Payload], float], list[wire.Payload]]

# The state table: which handler answers a request of which exchange in which
# state. Anything not listed is dropped with a log line.
REQUEST_HANDLERS: dict[tuple[State, int], RequestHandler] = {
    (State.INIT_DONE, ExchangeType.IKE_AUTH): auth.on_auth_request,
    (State.ESTABLISHED, ExchangeType.INFORMATIONAL): mobike.on_informational,
    (State.ESTABLISHED, ExchangeType.CREATE_CHILD_SA): create_child.on_request,
    (State.DELETING, ExchangeType.INFORMATIONAL): informational.on_request,
    (State.DELETING, ExchangeType.CREATE_CHILD_SA): create_child.refuse_while_deleting,
}
# In which states a response to our request of that exchange is taken.
RESPONSE_STATES: frozenset[tuple[State, int]] = frozenset(
    {
        (State.INIT_SENT, ExchangeType.IKE_SA_INIT),
        (State.AUTH_SENT, ExchangeType.IKE_AUTH),
        (State.ESTABLISHED, ExchangeType.INFORMATIONAL),
        (State.ESTABLISHED, ExchangeType.CREATE_CHILD_SA),
        (State.DELETING, ExchangeType.INFORMATIONAL),
    }
)


class IkeSa:
    """One IKE SA and its Child SAs. Create through :class:`Endpoint`."""

    def __init__(
        self,
        endpoint: Endpoint,
        policy: SaPolicy,
        *,
        initiator: bool,
        local: Addr,
        peer: Addr,
        now: float,
        established: bool = False,
    ) -> None:
        self.endpoint = endpoint
        self.policy = policy
        self.initiator = initiator  # we are the original initiator (header I flag)
        self.local = local
        self.peer = peer
        # ``established``: the new SA of an IKE SA rekey, keyed by CREATE_CHILD_SA.
        if established:
            self.state = State.ESTABLISHED
        else:
            self.state = State.INIT_SENT if initiator else State.INIT_DONE
        rng = endpoint.rng
        self.spi_i = rng(8) if initiator else ZERO_SPI
        self.spi_r = ZERO_SPI
        self.created = now
        self.established_at: float | None = None
        self.last_received = now
        self.nat_detected = False
        self.peer_id: tuple[int, bytes] | None = None
        self.suite: Suite | None = None
        self.keys: crypto.IkeKeys | None = None
        self.children: dict[int, ChildSa] = {}  # by our inbound SPI
        self.close_reason = ""
        # Message IDs (2.2): ours in the window, the peer's for requests we answer.
        self.window = RequestWindow()
        self.peer_next_id = 0
        self.last_response: tuple[int, bytes, Addr, Addr] | None = None
        # IKE_SA_INIT state needed later for AUTH (2.15) and key derivation.
        self.dh: crypto.DhPrivate | None = None
        self.ni = b""
        self.nr = b""
        self.init_request = b""
        self.init_response = b""
        self.peer_hashes: set[int] = set()
        self.peer_certreqs: list[wire.CertReqPayload] = []  # what CAs the peer trusts (3.7)
        self.cookie = b""
        self.cipher_out: crypto.SkCipher | None = None
        self.cipher_in: crypto.SkCipher | None = None
        self.peer_id_body = b""
        self.peer_auth_method: int | None = None  # what the peer signed with, for logs/tests
        self.initial_contact = policy.initial_contact
        # Set by a request handler: close the SA once its response is out.
        self.close_after_response = ""
        self.fail_after_response = ""
        # Rekeying (RFC 7296 1.3.2, 1.3.3, 2.8).
        self.rekey_at = float("inf")  # soft IKE SA lifetime, set once established
        self.rekeyed_to: IkeSa | None = None  # the SA our children moved to
        self.rekeyed_at = 0.0
        self.ike_rekey_pending = False
        self.ike_rekeys: list[IkeRekey] = []  # completed rekeys of this IKE SA (2.8.2)
        self.child_rekeys: dict[int, list[ChildRekey]] = {}  # by the old child's spi_in
        self.lost_reported = False  # PeerLostSa emitted (once per SA)
        # RFC 7383: negotiated in IKE_SA_INIT (init.py); fragments.py does the rest.
        self.fragmentation = False
        self.fragments_out = fragments.Outgoing()
        self.fragments_in = fragments.Reassembly()
        self.mobike = mobike.MobikeState()  # RFC 4555, negotiated in IKE_AUTH (auth.py)

    def liveness_interval(self) -> float:
        """Seconds without a word from the peer before we check it (0: never)."""
        dpd = self.policy.dpd_interval
        return dpd if self.initiator else dpd * RESPONDER_LIVENESS_SLACK

    def last_heard(self) -> float:
        """When the peer last proved it is alive: an IKE message, or ESP on a child."""
        return max([self.last_received, *(c.last_inbound for c in self.children.values())])

    def soft_deadline(self, now: float, lifetime: float) -> float:
        """Soft expiry at 85-90 % of a lifetime. The jitter makes two peers with
        the same configuration rarely rekey at the same moment (RFC 7296 2.8.1)."""
        if lifetime <= 0:
            return float("inf")
        u = int.from_bytes(self.endpoint.rng(2), "big") / 65536
        return now + lifetime * (0.85 + 0.05 * u)

    def established(self, now: float) -> None:
        """IKE_AUTH succeeded, in either role."""
        self.set_state(State.ESTABLISHED)
        self.established_at = now
        self.rekey_at = self.soft_deadline(now, self.policy.ike_lifetime)
        log.info("%s: established %s", self.label, self.describe())
        self.emit(self.established_event())
        self._enforce_per_peer_limit(now)

    def _enforce_per_peer_limit(self, now: float) -> None:
        """At most ``limits.ike_sas_per_peer`` live IKE SAs per peer identity: an
        authenticated peer that keeps making new ones (a loop, or a stolen key) cannot
        fill the table; the oldest ones are deleted (with a DELETE, 1.4.1)."""
        limit = self.endpoint.limits.ike_sas_per_peer
        if self.peer_id is None:
            return
        self.endpoint.note_peer(self)
        same = [
            sa
            for sa in self.endpoint.peer_sas(self.peer_id)  # not a pass over every SA
            if sa is not self
            and sa.peer_id == self.peer_id
            and sa.state == State.ESTABLISHED
            and sa.rekeyed_to is None
        ]
        for old in sorted(same, key=lambda sa: sa.established_at or 0.0)[
            : max(0, len(same) + 1 - limit)
        ]:
            self.endpoint.guard.note(
                "limit_ike_sas_per_peer",
                now,
                "%s: %d IKE SAs with %s, the limit (--limit ike_sas_per_peer): deleting %s",
                self.label,
                len(same) + 1,
                id_text(*self.peer_id) if self.peer_id else "this peer",
                old.label,
            )
            old.delete(now, "too many IKE SAs with this peer")

    @property
    def is_established(self) -> bool:
        return self.state == State.ESTABLISHED

    # ------------------------------------------------------------------ states

    def set_state(self, new: State) -> None:
        """The one place the IKE SA's state changes."""
        old = self.state
        if new is old:
            return
        if new not in IKE_MOVES[old]:
            raise StateError(f"{self.label}: IKE SA state {old.name} -> {new.name} not allowed")
        log.debug("%s: IKE SA %s -> %s", self.label, old.name, new.name)
        self.state = new
        self.endpoint.touch(self)  # its deadlines change with the state

    def set_child_state(self, child: ChildSa, new: ChildState) -> None:
        """The one place a Child SA's state changes."""
        old = child.state
        if new is old:
            return
        if new not in CHILD_MOVES[old]:
            raise StateError(
                f"{self.label}: Child SA 0x{child.spi_in:08x} state {old.name} -> {new.name} "
                "not allowed"
            )
        log.debug("%s: Child SA 0x%08x %s -> %s", self.label, child.spi_in, old.name, new.name)
        child.state = new
        self.endpoint.touch(self)

    # ------------------------------------------------------------------ naming

    @property
    def our_spi(self) -> bytes:
        return self.spi_i if self.initiator else self.spi_r

    @property
    def label(self) -> str:
        return f"spi={spi_text(self.our_spi)}"

    def describe(self) -> str:
        peer_id = id_text(*self.peer_id) if self.peer_id else "?"
        role = "initiator" if self.initiator else "responder"
        suite = self.suite.describe() if self.suite else ""
        return (
            f"peer [{self.peer[0]}]:{self.peer[1]}[{peer_id}] local "
            f"[{self.local[0]}]:{self.local[1]} policy '{self.policy.name}' as {role} "
            f"({suite})"
        )

    # ------------------------------------------------------------------ output

    def emit(self, event: Event) -> None:
        self.endpoint.events.append(event)

    def established_event(self, replaces: IkeSa | None = None) -> IkeSaEstablished:
        return IkeSaEstablished(
            self.our_spi,
            self.policy.name,
            self.policy.key,
            self.peer_id,
            self.local,
            self.peer,
            self.initiator,
            replaces.our_spi if replaces is not None else None,
            self.suite,
        )

    def child_created(self, child: ChildSa, replaces: ChildSa | None = None) -> None:
        self.emit(
            ChildSaCreated(
                self.our_spi,
                self.peer_id,
                child.info(),
                replaces.spi_in if replaces is not None else None,
            )
        )

    def child_deleted(self, child: ChildSa, reason: str) -> None:
        self.emit(ChildSaDeleted(self.our_spi, child.info(), reason, self.peer_id))

    def transmit(self, data: bytes, what: str) -> None:
        log.info(
            "%s: send %s peer [%s]:%d local [%s]:%d, %d bytes",
            self.label,
            what,
            self.peer[0],
            self.peer[1],
            self.local[0],
            self.local[1],
            len(data),
        )
        fragments.send(self, data, self.local, self.peer)
        self.endpoint.touch(self)  # a request sent: a retransmission deadline

    def flags(self, response: bool) -> int:
        return (HeaderFlag.INITIATOR if self.initiator else 0) | (
            HeaderFlag.RESPONSE if response else 0
        )

    # ------------------------------------------------------------------ protection (3.14)

    def make_ciphers(self) -> None:
        """The SK payload ciphers of both directions, from SK_e* and SK_a*."""
        k, s = self.keys, self.suite
        assert k is not None and s is not None
        i_to_r = crypto.SkCipher(s.encr, s.key_bits, s.integ, k.sk_ei, k.sk_ai)
        r_to_i = crypto.SkCipher(s.encr, s.key_bits, s.integ, k.sk_er, k.sk_ar)
        self.cipher_out, self.cipher_in = (i_to_r, r_to_i) if self.initiator else (r_to_i, i_to_r)

    def protect(
        self, exchange: int, message_id: int, response: bool, payloads: list[wire.Payload]
    ) -> bytes:
        """Build an SK-protected message (RFC 7296 3.14, RFC 5282 for AEAD)."""
        assert self.cipher_out is not None
        first, inner = wire.build_payloads(payloads)
        body_len = self.cipher_out.sealed_length(len(inner))
        header = wire.Header(
            self.spi_i,
            self.spi_r,
            PayloadType.SK,
            exchange,
            self.flags(response),
            message_id,
            wire.HEADER_LEN + 4 + body_len,
        ).pack()
        aad = header + wire.payload_header(first, 4 + body_len)
        whole = aad + self.cipher_out.seal(aad, inner)
        fragments.protect(self, exchange, message_id, self.flags(response), first, inner, whole)
        return whole

    def unprotect(self, data: bytes, msg: Message) -> list[wire.Payload]:
        """Check and decrypt the SK payload; raises IntegrityError or WireError."""
        sk = msg.payloads[-1] if msg.payloads else None
        if isinstance(sk, fragments.Reassembled):  # each fragment was checked (RFC 7383 2.6)
            return wire.parse_payloads(sk.first_inner, sk.plain)
        if not isinstance(sk, wire.SkPayload) or self.cipher_in is None:
            raise wire.WireError("expected an encrypted (SK) payload")
        aad = data[: len(data) - len(sk.data)]
        return wire.parse_payloads(sk.first_inner, self.cipher_in.open(aad, sk.data))

    # ------------------------------------------------------------------ requests

    def send_request(
        self, request: Request, payloads: list[wire.Payload], now: float, *, plain: bool = False
    ) -> None:
        """Send ``request`` with the next message ID; it is now the one in flight."""
        mid = self.window.next_id
        if plain:  # IKE_SA_INIT only
            msg = Message(
                self.spi_i, self.spi_r, request.exchange, self.flags(False), mid, payloads
            )
            data = wire.build_message(msg)
        else:
            data = self.protect(request.exchange, mid, False, payloads)
        request.message_id, request.data, request.sent_at, request.tries = mid, data, now, 1
        self.window.outstanding = request
        self.transmit(data, request.describe())

    def queue_request(self, request: Request, now: float) -> None:
        """Window size 1 (2.3): start now if idle, else after the current exchange."""
        self.window.add(self, request, now)

    # ------------------------------------------------------------------ timers

    def next_deadline(self) -> float | None:
        if self.state == State.CLOSED:
            return None
        deadlines = []
        r = self.window.outstanding
        if r is not None:
            deadlines.append(r.retransmit_at(self.policy))
        elif (
            self.state == State.ESTABLISHED
            and self.policy.dpd_interval > 0
            and self.rekeyed_to is None
        ):
            deadlines.append(self.last_heard() + self.liveness_interval())
        if self.state == State.ESTABLISHED:
            if self.rekeyed_to is not None:
                deadlines.append(self.rekeyed_at + REKEYED_GRACE)
            elif not self.ike_rekey_pending:
                deadlines.append(self.rekey_at)
            for c in self.children.values():
                if c.state == ChildState.ACTIVE:
                    deadlines.append(c.rekey_at)
                if c.state != ChildState.DELETING:
                    deadlines.append(c.expire_at)
        if self.state == State.INIT_DONE:
            # A half-open SA dies if IKE_AUTH never comes (keeps cookies meaningful).
            deadlines.append(self.created + self.endpoint.half_open_timeout)
        soonest = min(deadlines, default=float("inf"))
        return None if soonest == float("inf") else soonest

    def handle_timer(self, now: float) -> None:
        if self.state == State.CLOSED:
            return
        if self.state == State.INIT_DONE and now >= self.created + self.endpoint.half_open_timeout:
            self.endpoint.guard.note(
                "half_open_expired",
                now,
                "%s: no IKE_AUTH from the initiator in %.0f s",
                self.label,
                self.endpoint.half_open_timeout,
                level=logging.INFO,
            )
            self.close("no IKE_AUTH from the initiator", now)
            return
        r = self.window.outstanding
        if r is not None and now >= r.retransmit_at(self.policy):
            if r.tries >= self.policy.retransmit_tries:
                r.on_timeout(self, now)
                return
            r.tries += 1
            r.sent_at = now
            self.transmit(r.data, f"{r.describe()} (retransmit {r.tries - 1})")
        if self.state != State.ESTABLISHED:
            return
        if self.rekeyed_to is not None:
            if now >= self.rekeyed_at + REKEYED_GRACE:
                # 2.18: the rekey's initiator deletes the old SA; this peer never did.
                self.close("replaced by a rekey; the peer sent no DELETE", now, error=False)
            return
        self._check_lifetimes(now)
        if (
            self.window.outstanding is None
            and self.policy.dpd_interval > 0
            and now >= self.last_heard() + self.liveness_interval()
        ):
            # Liveness (2.4): an empty INFORMATIONAL; no answer after the
            # retransmissions means the peer is gone.
            log.debug(
                "%s: nothing received for %.0f s, probing", self.label, now - self.last_heard()
            )
            self.queue_request(mobike.liveness_request(self), now)

    def _check_lifetimes(self, now: float) -> None:
        """Soft expiry starts a rekey, hard expiry deletes (RFC 7296 2.8, RFC 4301 4.4.2.1)."""
        for child in list(self.children.values()):
            if child.state != ChildState.DELETING and now >= child.expire_at:
                self.expire_child(child, "hard lifetime reached", now)
            elif child.state == ChildState.ACTIVE and now >= child.rekey_at:
                self.rekey_child(child.spi_in, now)
        if not self.ike_rekey_pending and now >= self.rekey_at:
            self.rekey(now)

    # ------------------------------------------------------------------ API

    def check_alive(self, now: float) -> None:
        """The network changed: find out now whether the peer still hears us (2.4).

        An outstanding request is retransmitted at once with its backoff restarted
        (it may have been waiting up to retransmit_cap for a path that is back);
        an idle established SA sends a liveness probe now.
        """
        r = self.window.outstanding
        if r is not None:
            r.tries = 1
            r.sent_at = now
            self.transmit(r.data, f"{r.describe()} (network changed)")
        elif self.state == State.ESTABLISHED:
            self.queue_request(mobike.liveness_request(self), now)

    def delete(self, now: float, reason: str = "closed by us") -> None:
        """Send a DELETE for the whole IKE SA (and so all its Child SAs, 1.4.1)."""
        if self.state == State.ESTABLISHED:
            self.close_reason = reason
            self.window.queue.clear()
            self.queue_request(informational.DeleteIkeRequest(), now)
        elif self.state != State.CLOSED:
            self.close(reason, now, error=False)

    def delete_child(self, spi_in: int, now: float) -> None:
        """Ask the peer to delete one Child SA (INFORMATIONAL with DELETE, 1.4.1)."""
        child = self.children.get(spi_in)
        if child is not None and child.state != ChildState.DELETING:
            self.set_child_state(child, ChildState.DELETING)
            self.queue_request(informational.DeleteChildRequest(spi_in), now)

    def rekey_child(self, spi_in: int, now: float) -> None:
        """Replace a Child SA by a fresh one (CREATE_CHILD_SA with REKEY_SA, 1.3.3)."""
        child = self.children.get(spi_in)
        if child is not None and child.state == ChildState.ACTIVE:
            log.info(
                "%s: rekeying Child SA 0x%08x (%.0f s old)", self.label, spi_in, now - child.created
            )
            self.set_child_state(child, ChildState.REKEYING)
            self.queue_request(create_child.CreateChildRequest(spi_in), now)

    def create_child(self, now: float) -> None:
        """One more Child SA for the policy's selectors (CREATE_CHILD_SA, 1.3.1)."""
        self.queue_request(create_child.CreateChildRequest(None), now)

    def rekey(self, now: float) -> None:
        """Replace this IKE SA by a fresh one; its children move along (1.3.2, 2.18)."""
        if (
            self.state == State.ESTABLISHED
            and self.rekeyed_to is None
            and not self.ike_rekey_pending
        ):
            log.info(
                "%s: rekeying IKE SA (%.0f s old)", self.label, now - (self.established_at or now)
            )
            self.ike_rekey_pending = True
            self.queue_request(create_child.IkeRekeyRequest(), now)

    def note_child_usage(self, spi_in: int, octets: int, now: float) -> None:
        """The data plane's byte count for a Child SA: lifetime in bytes (iked's
        ``lifetime ... bytes``). Rekeys at 90 %, deletes at 100 %."""
        child = self.children.get(spi_in)
        if child is None or child.lifetime_bytes <= 0:
            return
        if octets >= child.lifetime_bytes and child.state != ChildState.DELETING:
            self.expire_child(child, f"byte lifetime reached ({octets} bytes)", now)
        elif octets >= child.lifetime_bytes * 0.9 and child.state == ChildState.ACTIVE:
            self.rekey_child(spi_in, now)

    def expire_child(self, child: ChildSa, reason: str, now: float) -> None:
        """Stop using a Child SA at once and tell the peer (RFC 4301: hard lifetime)."""
        log.warning("%s: Child SA 0x%08x expired: %s", self.label, child.spi_in, reason)
        self.forget_child(child.spi_in)
        self.child_deleted(child, reason)
        self.queue_request(informational.DeleteChildRequest(child.spi_in), now)

    def forget_child(self, spi_in: int) -> ChildSa | None:
        self.child_rekeys.pop(spi_in, None)
        return self.children.pop(spi_in, None)

    def child_by_out_spi(self, spi: int) -> ChildSa | None:
        return next((c for c in self.children.values() if c.spi_out == spi), None)

    def drop(self, now: float, reason: str) -> None:
        """Forget this SA without telling the peer (it already forgot us, 2.4)."""
        self.close(reason, now, error=False)

    def close(self, reason: str, now: float, *, error: bool = True) -> None:
        if self.state == State.CLOSED:
            return
        # A responder's half-open SA never got past IKE_SA_INIT: under a flood there are
        # many, so the caller counts them (guard.note) and this line is debug only.
        half_open = self.state == State.INIT_DONE
        self.set_state(State.CLOSED)
        self.close_reason = reason
        for child in list(self.children.values()):
            self.child_deleted(child, reason)
        self.children.clear()
        self.window.clear()
        self.fragments_in.clear()
        level = logging.DEBUG if half_open else logging.WARNING if error else logging.INFO
        log.log(level, "%s: IKE SA closed: %s", self.label, reason)
        self.emit(
            IkeSaClosed(
                self.our_spi,
                self.policy.name,
                self.policy.key,
                self.peer_id,
                reason,
                error,
                self.peer,
                self.spi_i,
                self.spi_r,
            )
        )

    def successor(self, *, initiator: bool, now: float) -> IkeSa:
        """A new IKE SA with this one's policy and addresses, for a rekey (2.18)."""
        new = IkeSa(
            self.endpoint,
            self.policy,
            initiator=initiator,
            local=self.local,
            peer=self.peer,
            now=now,
            established=True,
        )
        new.fragmentation = self.fragmentation  # a property of the IKE SA (RFC 7383 2.3)
        new.mobike.negotiated = self.mobike.negotiated
        return new

    # ------------------------------------------------------------------ receive

    def receive(self, msg: Message, data: bytes, src: Addr, dst: Addr, now: float) -> None:
        """Handle one parsed message addressed to this SA."""
        if self.state == State.CLOSED:
            return
        if msg.payloads and isinstance(msg.payloads[-1], wire.SkfPayload):
            whole = fragments.receive(self, msg, data, src, dst, now)
            if whole is None:
                return
            msg = whole
        if msg.is_response:
            self._receive_response(msg, data, src, dst, now)
        else:
            self._receive_request(msg, data, src, dst, now)

    def _receive_response(
        self, msg: Message, data: bytes, src: Addr, dst: Addr, now: float
    ) -> None:
        r = self.window.outstanding
        if r is None or msg.message_id != r.message_id or msg.exchange != r.exchange:
            log.debug(
                "%s: drop unexpected response %s #%d",
                self.label,
                ExchangeType.name_of(msg.exchange),
                msg.message_id,
            )
            return
        if (self.state, msg.exchange) not in RESPONSE_STATES:
            log.debug(
                "%s: drop %s response in state %s",
                self.label,
                ExchangeType.name_of(msg.exchange),
                self.state.name,
            )
            return
        if msg.exchange != ExchangeType.IKE_SA_INIT and not (
            msg.payloads and isinstance(msg.payloads[-1], wire.SkPayload)
        ):
            # 2.21.4: an unprotected answer to a protected request can only be the
            # peer saying it does not know this SA (it restarted). Unauthenticated:
            # report it once and keep the SA (and its retransmissions) as it is.
            # Except as the answer to our DELETE: the peer has forgotten the SA we are
            # deleting (it took our DELETE and its answer was lost, or it restarted),
            # and a forged one can only end a deletion already under way, instead of
            # our retransmitting it for a minute while its Child SAs stay in use.
            invalid_spi = msg.notify(NotifyType.INVALID_IKE_SPI) is not None
            if invalid_spi and self.state == State.DELETING:
                self.close(
                    f"{self.close_reason or 'deleted'} (the peer no longer knew it)",
                    now,
                    error=False,
                )
                return
            if invalid_spi and not self.lost_reported:
                self.lost_reported = True
                log.warning(
                    "%s: peer [%s]:%d does not know this IKE SA (INVALID_IKE_SPI)",
                    self.label,
                    src[0],
                    src[1],
                )
                self.emit(
                    PeerLostSa(
                        self.our_spi, self.policy.name, self.policy.key, self.peer_id, self.peer
                    )
                )
            else:
                log.debug(
                    "%s: drop unprotected %s response #%d",
                    self.label,
                    ExchangeType.name_of(msg.exchange),
                    msg.message_id,
                )
            return
        self.last_received = now
        if msg.exchange == ExchangeType.IKE_SA_INIT:
            r.on_response(self, Response(msg, data, msg.payloads, src, dst), now)
            return
        try:
            payloads = self.unprotect(data, msg)
        except (crypto.IntegrityError, wire.WireError) as e:
            log.warning(
                "%s: drop %s response #%d: %s",
                self.label,
                ExchangeType.name_of(msg.exchange),
                msg.message_id,
                e,
            )
            return
        self._note_peer_address(src, dst)
        r.on_response(self, Response(msg, data, payloads, src, dst), now)
        if self.state != State.CLOSED and self.window.outstanding is r:
            self.window.next_id = r.message_id + 1
            self.window.done(self, now)

    def _receive_request(self, msg: Message, data: bytes, src: Addr, dst: Addr, now: float) -> None:
        if self.last_response is not None and msg.message_id == self.last_response[0]:
            # 2.1: a retransmitted request gets the very same response again.
            mid, resp, _, _ = self.last_response
            log.debug("%s: retransmitted request #%d, resending response", self.label, mid)
            fragments.send(self, resp, dst, src)
            return
        if msg.message_id != self.peer_next_id:
            log.debug(
                "%s: drop request #%d, expected #%d", self.label, msg.message_id, self.peer_next_id
            )
            return
        handler = REQUEST_HANDLERS.get((self.state, msg.exchange))
        if handler is None:
            log.info(
                "%s: drop %s request in state %s",
                self.label,
                ExchangeType.name_of(msg.exchange),
                self.state.name,
            )
            return
        try:
            payloads = self.unprotect(data, msg)
        except crypto.IntegrityError as e:
            self.endpoint.guard.note(
                "ike_integrity",
                now,
                "%s: drop %s request #%d: %s",
                self.label,
                ExchangeType.name_of(msg.exchange),
                msg.message_id,
                e,
            )
            return
        except wire.WireError as e:
            # Authenticated but malformed: answer with the error (2.21.2).
            self.endpoint.guard.note(
                "ike_bad_request",
                now,
                "%s: bad %s request #%d: %s",
                self.label,
                ExchangeType.name_of(msg.exchange),
                msg.message_id,
                e,
            )
            self._respond(msg, [notify(e.notify, e.data)], src, dst)
            return
        if (
            self.state == State.INIT_DONE
            and msg.exchange == ExchangeType.IKE_AUTH
            and not self.endpoint.guard.allow_auth(src[0], now)
        ):
            # Signature checks are the costly step an initiator that passed the cookie
            # can make us do: past the per-source budget the request is dropped unanswered
            # (a real initiator retransmits, 2.1) and the message ID stays where it is.
            self.endpoint.guard.note(
                "auth_rate_limited",
                now,
                "%s: IKE_AUTH from [%s]:%d over the signature budget (--limit "
                "auth_per_source_per_s); dropped",
                self.label,
                src[0],
                src[1],
            )
            return
        self.last_received = now
        if not mobike.hold_move(self, msg, payloads, src, dst):
            self._note_peer_address(src, dst)
        self.close_after_response = ""
        self.fail_after_response = ""
        try:
            reply = handler(self, msg, payloads, now)
        except ProtocolError as e:
            log.warning(
                "%s: refuse %s request #%d (%s): %s",
                self.label,
                ExchangeType.name_of(msg.exchange),
                msg.message_id,
                NotifyType.name_of(e.notify),
                e.detail,
            )
            reply = [notify(e.notify, e.data)]
        self._respond(msg, reply, src, dst)
        if self.close_after_response:
            self.close(self.close_after_response, now, error=False)
        elif self.fail_after_response:
            self.close(self.fail_after_response, now)

    def _respond(self, msg: Message, payloads: list[wire.Payload], src: Addr, dst: Addr) -> None:
        data = self.protect(msg.exchange, msg.message_id, True, payloads)
        self.last_response = (msg.message_id, data, dst, src)
        self.peer_next_id = msg.message_id + 1
        log.info(
            "%s: send %s res %d peer [%s]:%d local [%s]:%d, %d bytes",
            self.label,
            ExchangeType.name_of(msg.exchange),
            msg.message_id,
            src[0],
            src[1],
            dst[0],
            dst[1],
            len(data),
        )
        fragments.send(self, data, dst, src)

    def _note_peer_address(self, src: Addr, dst: Addr) -> None:
        """Follow the peer to a new address once a message from there authenticated."""
        if src != self.peer and self.state in (State.ESTABLISHED, State.INIT_DONE, State.AUTH_SENT):
            # The initiator's switch from 500 to 4500 at IKE_AUTH (RFC 7296 2.23) is
            # the normal NAT-T float, not news; another address or port is.
            floated = (
                self.state == State.INIT_DONE
                and src[0] == self.peer[0]
                and (self.peer[1], src[1]) == (IKE_PORT, NATT_PORT)
            )
            (log.debug if floated else log.info)(
                "%s: peer moved from [%s]:%d to [%s]:%d",
                self.label,
                self.peer[0],
                self.peer[1],
                src[0],
                src[1],
            )
            self.peer = src
            for child in self.children.values():
                child.remote = src
            self.emit(PeerMoved(self.our_spi, src, tuple(c.info() for c in self.children.values())))
        self.local = dst
