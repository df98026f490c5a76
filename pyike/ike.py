"""The IKEv2 state machine, sans-IO (RFC 7296).

Nothing here touches a socket, a clock or a thread. An :class:`Endpoint` is fed
datagrams (``receive``), the current time (``handle_timer``) and API calls
(``connect``, ``close``); it answers with :class:`Transmit` records, a next
timer deadline and :class:`Event` objects. The driver moves the bytes.

One :class:`IkeSa` per IKE SA. Which handler runs for an incoming message is
decided in one place, the ``_REQUEST_HANDLERS`` / ``_RESPONSE_HANDLERS``
tables at the bottom of the class; initiator and responder share the child
SA negotiation, the AUTH computation and the message protection code.

Where each step of the protocol lives:
  IKE_SA_INIT   Endpoint._on_init_request (responder), IkeSa._on_init_response
  keys          IkeSa._derive_keys  (SKEYSEED and SK_*: crypto.derive_ike_keys)
  IKE_AUTH      IkeSa._send_auth_request, _on_auth_request, _on_auth_response
  AUTH octets   IkeSa._auth_octets  (RFC 7296 2.15)
  Child SAs     IkeSa._child_offer, _child_answer, _child_accept, _new_child
  protection    IkeSa._protect / _unprotect  (the SK payload, 3.14)
  INFORMATIONAL IkeSa._on_informational_request (DELETE, liveness)
  CREATE_CHILD  IkeSa._on_create_child_request (the peer rekeys or adds an SA),
                IkeSa.rekey_child / rekey / create_child (we do), _check_lifetimes
                (soft and hard expiry), _child_rekey_done / _ike_rekey_done
                (who deletes what, simultaneous rekeys)
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, auto
from ipaddress import IPv4Address, IPv6Address

from pyike import crypto, proposals, ts, wire
from pyike.proposals import Suite
from pyike.registry import (
    AuthMethod,
    DhId,
    ExchangeType,
    HashAlgorithm,
    HeaderFlag,
    IdType,
    NotifyType,
    PayloadType,
    ProtocolId,
    TransformType,
)
from pyike.wire import (
    AuthPayload,
    DeletePayload,
    IdPayload,
    KePayload,
    Message,
    NoncePayload,
    NotifyPayload,
    Proposal,
    SaPayload,
    TrafficSelector,
    TsPayload,
)

log = logging.getLogger("pyike.ike")

IPAddress = IPv4Address | IPv6Address
Addr = tuple[IPAddress, int]
IKE_PORT = 500
NATT_PORT = 4500
NONCE_LEN = 32
ZERO_SPI = bytes(8)
# RFC 7427 section 4: the hashes we can verify and produce.
OUR_SIG_HASHES = (HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512)


# --------------------------------------------------------------------------- policy


@dataclass(slots=True)
class SaPolicy:
    """What one IKE SA should negotiate: the core's view of an iked.conf policy."""

    name: str
    ike_proposals: list[Proposal]
    child_proposals: list[Proposal]
    local_id: tuple[int, bytes]
    ts_local: list[TrafficSelector]
    ts_remote: list[TrafficSelector]
    peer_id: tuple[int, bytes] | None = None  # dstid; None accepts any ID with a known key
    local_key: object | None = None  # EC private key (ecdsa256/384/521)
    psk: bytes | None = None
    # Looks up the peer's public key by (ID type, ID data): iked's pubkeys/ layout.
    peer_key: Callable[[int, bytes], object | None] = lambda _t, _d: None
    rfc7427: bool = True  # offer/use RFC 7427 signatures (method 14)
    force_encap: bool = False  # fake NAT detection so ESP goes in UDP (iked -t, encap=yes)
    initial_contact: bool = True
    ike_lifetime: float = 86400.0
    child_lifetime: float = 10800.0
    child_lifetime_bytes: int = 4294967296
    dpd_interval: float = 60.0  # probe when nothing was received for this long (0 = off)
    retransmit_base: float = 2.0  # RFC 7296 2.1: exponential backoff, like iked
    retransmit_tries: int = 5
    # Longest wait between two retransmissions (0 = none): a capped backoff finds a
    # peer that came back within this many seconds instead of up to 32 s later.
    retransmit_cap: float = 0.0


# --------------------------------------------------------------------------- events


@dataclass(slots=True)
class Transmit:
    """A datagram to send: the IKE message, from our ``local`` to ``remote``.

    The driver prepends the 4-byte non-ESP marker when the local port is 4500
    (RFC 3948 2.2).
    """

    data: bytes
    local: Addr
    remote: Addr


class ChildState(Enum):
    ACTIVE = auto()
    REKEYING = auto()  # our CREATE_CHILD_SA(REKEY_SA) for it is queued or out
    REKEYED = auto()  # replaced by a new SA; waiting for its DELETE
    DELETING = auto()  # our DELETE for it is queued or out


@dataclass(slots=True)
class ChildSa:
    """A negotiated ESP SA pair, everything the data plane needs."""

    policy: str
    spi_in: int
    spi_out: int
    suite: Suite
    key_in: tuple[bytes, bytes]  # (encryption, integrity) for packets we receive
    key_out: tuple[bytes, bytes]  # for packets we send
    ts_local: list[TrafficSelector]
    ts_remote: list[TrafficSelector]
    lifetime: float
    lifetime_bytes: int
    encap: bool  # ESP in UDP (RFC 3948)
    local: Addr
    remote: Addr
    created: float = 0.0
    # Lifetimes (RFC 7296 2.8): at ``rekey_at`` (soft, with jitter) the side that
    # notices first rekeys; at ``expire_at`` (hard) an unrekeyed SA is deleted.
    rekey_at: float = float("inf")
    expire_at: float = float("inf")
    state: ChildState = ChildState.ACTIVE
    last_inbound: float = 0.0  # set by the data plane: authenticated ESP arrived
    # The responder answered with wider selectors than we asked for (OpenIKED
    # returns its whole policy, 2.9): it may then send on this SA any traffic of
    # that policy, including what our other Child SAs to it carry. The data plane
    # accepts such packets if another of our Child SAs with this peer allows them.
    peer_ts_wider: bool = False

    def describe(self) -> str:
        flows = ", ".join(
            f"{ts.describe(a)} -> {ts.describe(b)}" for a in self.ts_local for b in self.ts_remote
        )
        return (
            f"spi in 0x{self.spi_in:08x} out 0x{self.spi_out:08x} ({self.suite.describe()}) {flows}"
        )


class Event:
    """Base of everything the core reports to its driver."""


@dataclass(slots=True)
class IkeSaEstablished(Event):
    sa: IkeSa
    replaces: IkeSa | None = None  # set for an IKE SA rekey: the SA whose children moved


@dataclass(slots=True)
class IkeSaClosed(Event):
    sa: IkeSa
    reason: str
    error: bool = True  # False for an orderly DELETE or a rekey


@dataclass(slots=True)
class ChildSaCreated(Event):
    sa: IkeSa
    child: ChildSa
    replaces: ChildSa | None = None  # set for a rekey: old SA stays until deleted


@dataclass(slots=True)
class ChildSaDeleted(Event):
    sa: IkeSa
    child: ChildSa
    reason: str


@dataclass(slots=True)
class IkeKeysDerived(Event):
    """SK_* of a new IKE SA, for an explicitly requested key log only."""

    sa: IkeSa
    keys: crypto.IkeKeys


@dataclass(slots=True)
class PeerLostSa(Event):
    """The peer answered our request with INVALID_IKE_SPI (RFC 7296 2.21.4): it has
    probably restarted and forgotten this SA. The answer is not authenticated, so
    this is a hint for the driver (re-establish), not a reason to trust it blindly."""

    sa: IkeSa


@dataclass(slots=True)
class InitialContact(Event):
    """The peer said it has no other SAs with us (RFC 7296 2.4): drop older ones."""

    sa: IkeSa
    peer_id: tuple[int, bytes]


# --------------------------------------------------------------------------- errors


class ProtocolError(Exception):
    """A request we refuse; ``notify`` goes back to the peer in the response."""

    def __init__(self, detail: str, notify: NotifyType, data: bytes = b"") -> None:
        super().__init__(detail)
        self.detail = detail
        self.notify = notify
        self.data = data


class State(Enum):
    INIT_SENT = auto()  # initiator: IKE_SA_INIT request out
    AUTH_SENT = auto()  # initiator: IKE_AUTH request out
    INIT_DONE = auto()  # responder: IKE_SA_INIT answered, waiting for IKE_AUTH
    ESTABLISHED = auto()
    DELETING = auto()  # our DELETE of the IKE SA is out
    CLOSED = auto()


REKEYED_GRACE = 60.0  # seconds an SA replaced by the peer's rekey waits for its DELETE


@dataclass(slots=True)
class _Rekey:
    """One completed rekey exchange, kept to settle simultaneous rekeys (2.8.1/2.8.2)."""

    ours: bool  # we initiated the exchange
    nonce: bytes  # the lower of its two nonces
    new: ChildSa | IkeSa


@dataclass(slots=True)
class _Request:
    """Our outstanding request (window size 1, RFC 7296 2.3)."""

    message_id: int
    exchange: int
    data: bytes
    purpose: str
    sent_at: float
    tries: int = 1
    context: dict = field(default_factory=dict)


def id_text(id_type: int, data: bytes) -> str:
    """An ID for humans: ``fqdn/namorar.example.com``, ``ipv6/2001:db8::1``."""
    try:
        if id_type == IdType.ID_IPV4_ADDR:
            return f"ipv4/{IPv4Address(data)}"
        if id_type == IdType.ID_IPV6_ADDR:
            return f"ipv6/{IPv6Address(data)}"
        if id_type in (IdType.ID_FQDN, IdType.ID_RFC822_ADDR):
            kind = "fqdn" if id_type == IdType.ID_FQDN else "ufqdn"
            return f"{kind}/{data.decode('ascii', 'replace')}"
    except ValueError:
        pass
    return f"{IdType.name_of(id_type)}/{data.hex()}"


def _spi_text(spi: bytes) -> str:
    return f"0x{spi.hex()}"


def _sig_hash_notify() -> NotifyPayload:
    """RFC 7427 section 4: the hashes we accept in method-14 signatures."""
    return NotifyPayload(
        ProtocolId.NONE,
        b"",
        NotifyType.SIGNATURE_HASH_ALGORITHMS,
        b"".join(h.to_bytes(2, "big") for h in OUR_SIG_HASHES),
    )


def _hash_list(data: bytes) -> set[int]:
    return {int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data) - 1, 2)}


# --------------------------------------------------------------------------- IKE SA


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
    ) -> None:
        self.endpoint = endpoint
        self.policy = policy
        self.initiator = initiator  # we are the original initiator (header I flag)
        self.local = local
        self.peer = peer
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
        # Message IDs (2.2): ours for requests we send, the peer's for requests we answer.
        self._next_request_id = 0
        self._peer_next_id = 0
        self._request: _Request | None = None
        self._queue: deque[tuple[str, dict]] = deque()
        self._last_response: tuple[int, bytes, Addr, Addr] | None = None
        # IKE_SA_INIT state needed later for AUTH (2.15) and key derivation.
        self._dh: crypto.DhPrivate | None = None
        self._ni = b""
        self._nr = b""
        self._init_request = b""
        self._init_response = b""
        self._peer_hashes: set[int] = set()
        self._cookie = b""
        self._out: crypto.SkCipher | None = None
        self._in: crypto.SkCipher | None = None
        self._peer_id_body = b""
        self.peer_auth_method: int | None = None  # what the peer signed with, for logs/tests
        self.initial_contact = policy.initial_contact
        # Set by a request handler: close the SA once its response is out.
        self._close_after_response = ""
        self._fail_after_response = ""
        # Rekeying (RFC 7296 1.3.2, 1.3.3, 2.8).
        self.rekey_at = float("inf")  # soft IKE SA lifetime, set once established
        self.rekeyed_to: IkeSa | None = None  # the SA our children moved to
        self._rekeyed_at = 0.0
        self._ike_rekey_pending = False
        self._ike_rekeys: list[_Rekey] = []  # completed rekeys of this IKE SA (2.8.2)
        self._child_rekeys: dict[int, list[_Rekey]] = {}  # by the old child's spi_in
        self._lost_reported = False  # PeerLostSa emitted (once per SA)

    def note_alive(self, now: float) -> None:
        """The driver saw authenticated traffic (ESP) from the peer: no probe needed."""
        self.last_received = max(self.last_received, now)

    def last_heard(self) -> float:
        """When the peer last proved it is alive: an IKE message, or ESP on a child."""
        return max([self.last_received, *(c.last_inbound for c in self.children.values())])

    def _soft_deadline(self, now: float, lifetime: float) -> float:
        """Soft expiry at 85-90 % of a lifetime. The jitter makes two peers with
        the same configuration rarely rekey at the same moment (RFC 7296 2.8.1)."""
        if lifetime <= 0:
            return float("inf")
        u = int.from_bytes(self.endpoint.rng(2), "big") / 65536
        return now + lifetime * (0.85 + 0.05 * u)

    def _established(self, now: float) -> None:
        self.state = State.ESTABLISHED
        self.established_at = now
        self.rekey_at = self._soft_deadline(now, self.policy.ike_lifetime)
        log.info("%s: established %s", self.label, self.describe())
        self._emit(IkeSaEstablished(self))

    # ------------------------------------------------------------------ naming

    @property
    def our_spi(self) -> bytes:
        return self.spi_i if self.initiator else self.spi_r

    @property
    def label(self) -> str:
        return f"spi={_spi_text(self.our_spi)}"

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

    def _emit(self, event: Event) -> None:
        self.endpoint.events.append(event)

    def _transmit(self, data: bytes, what: str) -> None:
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
        self.endpoint.transmits.append(Transmit(data, self.local, self.peer))

    def _flags(self, response: bool) -> int:
        return (HeaderFlag.INITIATOR if self.initiator else 0) | (
            HeaderFlag.RESPONSE if response else 0
        )

    def _protect(
        self, exchange: int, message_id: int, response: bool, payloads: list[wire.Payload]
    ) -> bytes:
        """Build an SK-protected message (RFC 7296 3.14, RFC 5282 for AEAD)."""
        assert self._out is not None
        first, inner = wire.build_payloads(payloads)
        body_len = self._out.sealed_length(len(inner))
        header = wire.Header(
            self.spi_i,
            self.spi_r,
            PayloadType.SK,
            exchange,
            self._flags(response),
            message_id,
            wire.HEADER_LEN + 4 + body_len,
        ).pack()
        aad = header + wire.payload_header(first, 4 + body_len)
        return aad + self._out.seal(aad, inner)

    def _unprotect(self, data: bytes, msg: Message) -> list[wire.Payload]:
        """Check and decrypt the SK payload; raises IntegrityError or WireError."""
        sk = msg.payloads[-1] if msg.payloads else None
        if not isinstance(sk, wire.SkPayload) or self._in is None:
            raise wire.WireError("expected an encrypted (SK) payload")
        aad = data[: len(data) - len(sk.data)]
        return wire.parse_payloads(sk.first_inner, self._in.open(aad, sk.data))

    # ------------------------------------------------------------------ requests

    def _send_request(
        self,
        exchange: int,
        payloads: list[wire.Payload],
        purpose: str,
        now: float,
        context: dict | None = None,
        *,
        plain: bool = False,
    ) -> None:
        mid = self._next_request_id
        if plain:  # IKE_SA_INIT only
            msg = Message(self.spi_i, self.spi_r, exchange, self._flags(False), mid, payloads)
            data = wire.build_message(msg)
        else:
            data = self._protect(exchange, mid, False, payloads)
        self._request = _Request(mid, exchange, data, purpose, now, context=context or {})
        self._transmit(data, f"{ExchangeType.name_of(exchange)} req {mid}")

    def _queue_request(self, purpose: str, now: float, **context: object) -> None:
        """Window size 1 (2.3): start now if idle, else after the current exchange."""
        if self._request is None and self.state == State.ESTABLISHED:
            self._start_request(purpose, now, dict(context))
        else:
            self._queue.append((purpose, dict(context)))

    def _start_request(self, purpose: str, now: float, context: dict) -> None:
        if purpose == "liveness":
            self._send_request(ExchangeType.INFORMATIONAL, [], purpose, now)
        elif purpose == "delete_ike":
            self.state = State.DELETING
            self._send_request(
                ExchangeType.INFORMATIONAL, [DeletePayload(ProtocolId.IKE, 0, [])], purpose, now
            )
        elif purpose == "delete_child":
            # A DELETE names the SPI of the SA as its sender receives it (3.11).
            spi_in: int = context["spi_in"]
            self._send_request(
                ExchangeType.INFORMATIONAL,
                [DeletePayload(ProtocolId.ESP, 4, [spi_in.to_bytes(4, "big")])],
                purpose,
                now,
                context,
            )
        elif purpose == "rekey_child":
            self._send_child_rekey(context, now)
        elif purpose == "rekey_ike":
            self._send_ike_rekey(context, now)
        else:  # pragma: no cover - programming error
            raise ValueError(purpose)

    def _request_done(self, now: float) -> None:
        self._request = None
        while self._queue and self.state == State.ESTABLISHED and self._request is None:
            purpose, context = self._queue.popleft()
            self._start_request(purpose, now, context)

    # ------------------------------------------------------------------ timers

    def _retransmit_at(self, r: _Request) -> float:
        """2.1: exponential backoff from retransmit_base, capped at retransmit_cap."""
        wait = self.policy.retransmit_base * 2 ** (r.tries - 1)
        if self.policy.retransmit_cap > 0:
            wait = min(wait, self.policy.retransmit_cap)
        return r.sent_at + wait

    def next_deadline(self) -> float | None:
        if self.state == State.CLOSED:
            return None
        deadlines = []
        if self._request is not None:
            deadlines.append(self._retransmit_at(self._request))
        elif (
            self.state == State.ESTABLISHED
            and self.policy.dpd_interval > 0
            and self.rekeyed_to is None
        ):
            deadlines.append(self.last_heard() + self.policy.dpd_interval)
        if self.state == State.ESTABLISHED:
            if self.rekeyed_to is not None:
                deadlines.append(self._rekeyed_at + REKEYED_GRACE)
            elif not self._ike_rekey_pending:
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
            self._close("no IKE_AUTH from the initiator", now)
            return
        r = self._request
        if r is not None and now >= self._retransmit_at(r):
            if r.tries >= self.policy.retransmit_tries:
                self._close(
                    f"peer not responding ({ExchangeType.name_of(r.exchange)} "
                    f"req {r.message_id} sent {r.tries} times)",
                    now,
                )
                return
            r.tries += 1
            r.sent_at = now
            self._transmit(
                r.data,
                f"{ExchangeType.name_of(r.exchange)} req {r.message_id} (retransmit {r.tries - 1})",
            )
        if self.state != State.ESTABLISHED:
            return
        if self.rekeyed_to is not None:
            if now >= self._rekeyed_at + REKEYED_GRACE:
                # 2.18: the rekey's initiator deletes the old SA; this peer never did.
                self._close("replaced by a rekey; the peer sent no DELETE", now, error=False)
            return
        self._check_lifetimes(now)
        if (
            self._request is None
            and self.policy.dpd_interval > 0
            and now >= self.last_heard() + self.policy.dpd_interval
        ):
            # Liveness (2.4): an empty INFORMATIONAL; no answer after the
            # retransmissions means the peer is gone.
            log.debug(
                "%s: nothing received for %.0f s, probing", self.label, now - self.last_heard()
            )
            self._queue_request("liveness", now)

    def _check_lifetimes(self, now: float) -> None:
        """Soft expiry starts a rekey, hard expiry deletes (RFC 7296 2.8, RFC 4301 4.4.2.1)."""
        for child in list(self.children.values()):
            if child.state != ChildState.DELETING and now >= child.expire_at:
                self._expire_child(child, "hard lifetime reached", now)
            elif child.state == ChildState.ACTIVE and now >= child.rekey_at:
                self.rekey_child(child.spi_in, now)
        if not self._ike_rekey_pending and now >= self.rekey_at:
            self.rekey(now)

    # ------------------------------------------------------------------ API

    def check_alive(self, now: float) -> None:
        """The network changed: find out now whether the peer still hears us (2.4).

        An outstanding request is retransmitted at once with its backoff restarted
        (it may have been waiting up to retransmit_cap for a path that is back);
        an idle established SA sends a liveness probe now.
        """
        r = self._request
        if r is not None:
            r.tries = 1
            r.sent_at = now
            self._transmit(
                r.data, f"{ExchangeType.name_of(r.exchange)} req {r.message_id} (network changed)"
            )
        elif self.state == State.ESTABLISHED:
            self._queue_request("liveness", now)

    def delete(self, now: float, reason: str = "closed by us") -> None:
        """Send a DELETE for the whole IKE SA (and so all its Child SAs, 1.4.1)."""
        if self.state in (State.ESTABLISHED,):
            self.close_reason = reason
            self._queue.clear()
            if self._request is None:
                self._start_request("delete_ike", now, {})
            else:
                self._queue.append(("delete_ike", {}))
        elif self.state != State.CLOSED:
            self._close(reason, now, error=False)

    def delete_child(self, spi_in: int, now: float) -> None:
        """Ask the peer to delete one Child SA (INFORMATIONAL with DELETE, 1.4.1)."""
        child = self.children.get(spi_in)
        if child is not None and child.state != ChildState.DELETING:
            child.state = ChildState.DELETING
            self._queue_request("delete_child", now, spi_in=spi_in)

    def rekey_child(self, spi_in: int, now: float) -> None:
        """Replace a Child SA by a fresh one (CREATE_CHILD_SA with REKEY_SA, 1.3.3)."""
        child = self.children.get(spi_in)
        if child is not None and child.state == ChildState.ACTIVE:
            log.info(
                "%s: rekeying Child SA 0x%08x (%.0f s old)", self.label, spi_in, now - child.created
            )
            child.state = ChildState.REKEYING
            self._queue_request("rekey_child", now, spi_in=spi_in)

    def create_child(self, now: float) -> None:
        """One more Child SA for the policy's selectors (CREATE_CHILD_SA, 1.3.1)."""
        self._queue_request("rekey_child", now, spi_in=None)

    def rekey(self, now: float) -> None:
        """Replace this IKE SA by a fresh one; its children move along (1.3.2, 2.18)."""
        if (
            self.state == State.ESTABLISHED
            and self.rekeyed_to is None
            and not self._ike_rekey_pending
        ):
            log.info(
                "%s: rekeying IKE SA (%.0f s old)", self.label, now - (self.established_at or now)
            )
            self._ike_rekey_pending = True
            self._queue_request("rekey_ike", now)

    def note_child_usage(self, spi_in: int, octets: int, now: float) -> None:
        """The data plane's byte count for a Child SA: lifetime in bytes (iked's
        ``lifetime ... bytes``). Rekeys at 90 %, deletes at 100 %."""
        child = self.children.get(spi_in)
        if child is None or child.lifetime_bytes <= 0:
            return
        if octets >= child.lifetime_bytes and child.state != ChildState.DELETING:
            self._expire_child(child, f"byte lifetime reached ({octets} bytes)", now)
        elif octets >= child.lifetime_bytes * 0.9 and child.state == ChildState.ACTIVE:
            self.rekey_child(spi_in, now)

    def _expire_child(self, child: ChildSa, reason: str, now: float) -> None:
        """Stop using a Child SA at once and tell the peer (RFC 4301: hard lifetime)."""
        log.warning("%s: Child SA 0x%08x expired: %s", self.label, child.spi_in, reason)
        self._forget_child(child.spi_in)
        self._emit(ChildSaDeleted(self, child, reason))
        self._queue_request("delete_child", now, spi_in=child.spi_in)

    def _forget_child(self, spi_in: int) -> ChildSa | None:
        self._child_rekeys.pop(spi_in, None)
        return self.children.pop(spi_in, None)

    def drop(self, now: float, reason: str) -> None:
        """Forget this SA without telling the peer (it already forgot us, 2.4)."""
        self._close(reason, now, error=False)

    def _close(self, reason: str, now: float, *, error: bool = True) -> None:
        if self.state == State.CLOSED:
            return
        self.state = State.CLOSED
        self.close_reason = reason
        for child in list(self.children.values()):
            self._emit(ChildSaDeleted(self, child, reason))
        self.children.clear()
        self._request = None
        self._queue.clear()
        (log.warning if error else log.info)("%s: IKE SA closed: %s", self.label, reason)
        self._emit(IkeSaClosed(self, reason, error))

    # ------------------------------------------------------------------ responder: IKE_SA_INIT

    def _answer_init(
        self,
        msg: Message,
        data: bytes,
        ni: bytes,
        ke: KePayload,
        chosen: Proposal,
        suite: Suite,
        src: Addr,
        dst: Addr,
        now: float,
    ) -> None:
        """Responder: build the IKE_SA_INIT response and derive the keys."""
        self._ni = ni
        self._nr = self.endpoint.rng(NONCE_LEN)
        self._init_request = data
        self._peer_hashes = self._sig_hashes(msg)
        self._dh = crypto.dh_generate(DhId(suite.dh))
        shared = self._dh.shared(ke.data)
        self._check_nat(msg, src, dst, spi_r=ZERO_SPI)
        payloads: list[wire.Payload] = [
            SaPayload([Proposal(chosen.number, chosen.protocol, b"", chosen.transforms)]),
            KePayload(self._dh.group, self._dh.public_bytes),
            NoncePayload(self._nr),
            *self._nat_detection_notifies(self.spi_r),
        ]
        if self.policy.rfc7427:
            payloads.append(_sig_hash_notify())
        reply = Message(
            self.spi_i, self.spi_r, ExchangeType.IKE_SA_INIT, HeaderFlag.RESPONSE, 0, payloads
        )
        self._init_response = wire.build_message(reply)
        self._peer_next_id = 1
        self._derive_keys(suite, shared)
        self._transmit(self._init_response, "IKE_SA_INIT res 0")

    # ------------------------------------------------------------------ initiator: IKE_SA_INIT

    def start(self, now: float) -> None:
        """Initiator: send the IKE_SA_INIT request (RFC 7296 1.2)."""
        groups = proposals.dh_groups(self.policy.ike_proposals)
        self._dh = crypto.dh_generate(DhId(groups[0]))
        self._ni = self.endpoint.rng(NONCE_LEN)
        self._send_init_request(now)

    def _send_init_request(self, now: float) -> None:
        assert self._dh is not None
        payloads: list[wire.Payload] = []
        if self._cookie:
            payloads.append(NotifyPayload(ProtocolId.NONE, b"", NotifyType.COOKIE, self._cookie))
        payloads += [
            SaPayload(self.policy.ike_proposals),
            KePayload(self._dh.group, self._dh.public_bytes),
            NoncePayload(self._ni),
            *self._nat_detection_notifies(ZERO_SPI),
        ]
        if self.policy.rfc7427:
            payloads.append(_sig_hash_notify())
        self._next_request_id = 0
        self._send_request(ExchangeType.IKE_SA_INIT, payloads, "init", now, plain=True)
        self._init_request = self._request.data if self._request else b""

    def _nat_detection_notifies(self, spi_r: bytes) -> list[NotifyPayload]:
        """NAT_DETECTION_*_IP (2.23). With forced encapsulation the source hash is
        deliberately wrong, so the peer believes we are behind a NAT and both
        sides move to UDP 4500 (what iked -t and strongSwan encap=yes do)."""
        src = crypto.nat_detection_hash(self.spi_i, spi_r, self.local[0], self.local[1])
        if self.policy.force_encap:
            src = self.endpoint.rng(len(src))
        dst = crypto.nat_detection_hash(self.spi_i, spi_r, self.peer[0], self.peer[1])
        return [
            NotifyPayload(ProtocolId.NONE, b"", NotifyType.NAT_DETECTION_SOURCE_IP, src),
            NotifyPayload(ProtocolId.NONE, b"", NotifyType.NAT_DETECTION_DESTINATION_IP, dst),
        ]

    def _check_nat(self, msg: Message, src: Addr, dst: Addr, *, spi_r: bytes | None = None) -> None:
        """Compare the peer's NAT_DETECTION hashes with the addresses we saw."""
        src_hashes = [
            n.data
            for n in msg.find_all(NotifyPayload)
            if n.type == NotifyType.NAT_DETECTION_SOURCE_IP
        ]
        dst_hashes = [
            n.data
            for n in msg.find_all(NotifyPayload)
            if n.type == NotifyType.NAT_DETECTION_DESTINATION_IP
        ]
        if not src_hashes and not dst_hashes:
            self.nat_detected = self.policy.force_encap
            return
        # The request's hashes were computed with SPIr = 0, the response's with SPIr.
        spi_r = self.spi_r if spi_r is None else spi_r
        peer_nat = crypto.nat_detection_hash(self.spi_i, spi_r, src[0], src[1]) not in src_hashes
        our_nat = crypto.nat_detection_hash(self.spi_i, spi_r, dst[0], dst[1]) not in dst_hashes
        self.nat_detected = peer_nat or our_nat or self.policy.force_encap
        if peer_nat or our_nat:
            log.info(
                "%s: NAT detected (%s)",
                self.label,
                " and ".join(
                    x
                    for x, y in (("peer behind NAT", peer_nat), ("we are behind NAT", our_nat))
                    if y
                ),
            )

    def _on_init_response(
        self, msg: Message, data: bytes, src: Addr, dst: Addr, now: float
    ) -> None:
        cookie = msg.notify(NotifyType.COOKIE)
        if cookie is not None:
            # 2.6: repeat the request with the cookie first, all else unchanged.
            if self._cookie == cookie.data:
                self._close("responder repeated the same COOKIE", now)
                return
            log.info("%s: responder asked for a cookie, retrying", self.label)
            self._cookie = cookie.data
            self._send_init_request(now)
            return
        invalid_ke = msg.notify(NotifyType.INVALID_KE_PAYLOAD)
        if invalid_ke is not None:
            group = int.from_bytes(invalid_ke.data[:2], "big") if len(invalid_ke.data) >= 2 else 0
            if (
                group not in proposals.dh_groups(self.policy.ike_proposals)
                or (self._dh and group == self._dh.group)
                or group not in crypto.SUPPORTED_GROUPS
            ):
                self._close(
                    f"responder wants DH group {DhId.name_of(group)}, which we do not offer", now
                )
                return
            log.info("%s: responder wants DH group %s, retrying", self.label, DhId.name_of(group))
            self._dh = crypto.dh_generate(DhId(group))
            self._send_init_request(now)
            return
        for n in msg.find_all(NotifyPayload):
            if n.type < 16384:  # error types (3.10.1)
                self._close(f"IKE_SA_INIT refused by peer: {NotifyType.name_of(n.type)}", now)
                return
        sa, ke, nonce = msg.find(SaPayload), msg.find(KePayload), msg.find(NoncePayload)
        if sa is None or ke is None or nonce is None or len(sa.proposals) != 1:
            self._close("malformed IKE_SA_INIT response (needs one SA proposal, KE, Nonce)", now)
            return
        chosen = sa.proposals[0]
        if not proposals.is_acceptable_answer(chosen, self.policy.ike_proposals):
            self._close("responder chose a proposal we did not offer", now)
            return
        suite = proposals.suite_of(chosen)
        assert self._dh is not None
        if ke.group != suite.dh or ke.group != self._dh.group:
            self._close("responder's KE group does not match the chosen proposal", now)
            return
        self.spi_r = msg.spi_r
        self._nr = nonce.data
        self._init_response = data
        self._peer_hashes = self._sig_hashes(msg)
        self._check_nat(msg, src, dst)
        try:
            shared = self._dh.shared(ke.data)
        except crypto.InvalidKeyExchange as e:
            self._close(f"invalid KE from responder: {e}", now)
            return
        self._derive_keys(suite, shared)
        self._request = None
        self._next_request_id = 1
        if self.nat_detected and self.local[1] != NATT_PORT:
            # RFC 3948 / 7296 2.23: move to port 4500 once a NAT is seen (or forced).
            self.local = (self.local[0], NATT_PORT)
            self.peer = (self.peer[0], NATT_PORT)
        self._send_auth_request(now)

    def _sig_hashes(self, msg: Message) -> set[int]:
        n = msg.notify(NotifyType.SIGNATURE_HASH_ALGORITHMS)
        return _hash_list(n.data) if n is not None else set()

    def _derive_keys(self, suite: Suite, shared: bytes) -> None:
        """SKEYSEED and SK_* (RFC 7296 2.14) and the SK payload ciphers."""
        assert suite.prf is not None
        self.suite = suite
        self.keys = crypto.derive_ike_keys(
            suite.prf,
            suite.encr,
            suite.key_bits,
            suite.integ,
            self._ni,
            self._nr,
            shared,
            self.spi_i,
            self.spi_r,
        )
        self._make_ciphers()
        self._emit(IkeKeysDerived(self, self.keys))

    def _make_ciphers(self) -> None:
        k, s = self.keys, self.suite
        assert k is not None and s is not None
        i_to_r = crypto.SkCipher(s.encr, s.key_bits, s.integ, k.sk_ei, k.sk_ai)
        r_to_i = crypto.SkCipher(s.encr, s.key_bits, s.integ, k.sk_er, k.sk_ar)
        self._out, self._in = (i_to_r, r_to_i) if self.initiator else (r_to_i, i_to_r)

    # ------------------------------------------------------------------ AUTH (2.15)

    def _auth_octets(self, *, ours: bool) -> bytes:
        """The signed octets: our IKE_SA_INIT message, the peer's nonce, prf(SK_p, ID)."""
        assert self.keys is not None and self.suite is not None and self.suite.prf is not None
        we_init = self.initiator
        signer_is_initiator = we_init if ours else not we_init
        if signer_is_initiator:
            message, nonce, sk_p = self._init_request, self._nr, self.keys.sk_pi
        else:
            message, nonce, sk_p = self._init_response, self._ni, self.keys.sk_pr
        id_body = self._local_id_payload().body() if ours else self._peer_id_body
        return crypto.auth_octets(message, nonce, self.suite.prf, sk_p, id_body)

    def _local_id_payload(self) -> IdPayload:
        kind = PayloadType.IDi if self.initiator else PayloadType.IDr
        return IdPayload(kind, self.policy.local_id[0], self.policy.local_id[1])

    def _make_auth(self) -> AuthPayload:
        octets = self._auth_octets(ours=True)
        p = self.policy
        assert self.suite is not None and self.suite.prf is not None
        if p.psk is not None:
            return AuthPayload(AuthMethod.PSK, crypto.psk_auth(self.suite.prf, p.psk, octets))
        if p.local_key is None:
            raise ProtocolError("no local key configured", NotifyType.AUTHENTICATION_FAILED)
        natural = crypto.auth_method_for_key(p.local_key)
        if p.rfc7427 and self._peer_hashes:
            # RFC 7427: the hash that matches the curve, if the peer takes it.
            preferred = {
                AuthMethod.ECDSA_SHA256_P256: HashAlgorithm.SHA2_256,
                AuthMethod.ECDSA_SHA384_P384: HashAlgorithm.SHA2_384,
                AuthMethod.ECDSA_SHA512_P521: HashAlgorithm.SHA2_512,
            }.get(natural)
            usable = [h for h in OUR_SIG_HASHES if h in self._peer_hashes]
            if usable:
                h = preferred if preferred in usable else usable[0]
                return AuthPayload(
                    AuthMethod.DIGITAL_SIGNATURE,
                    crypto.sign_auth(AuthMethod.DIGITAL_SIGNATURE, p.local_key, octets, h),
                )
        return AuthPayload(natural, crypto.sign_auth(natural, p.local_key, octets))

    def _verify_peer(self, id_payload: IdPayload | None, auth: AuthPayload | None) -> None:
        """Check the peer's identity and AUTH; raises ProtocolError(AUTHENTICATION_FAILED)."""
        fail = NotifyType.AUTHENTICATION_FAILED
        if id_payload is None or auth is None:
            raise ProtocolError("IKE_AUTH without ID or AUTH payload", fail)
        self.peer_id = (id_payload.id_type, id_payload.data)
        self._peer_id_body = id_payload.body()
        p = self.policy
        if p.peer_id is not None and self.peer_id != p.peer_id:
            raise ProtocolError(
                f"peer ID {id_text(*self.peer_id)} is not the expected {id_text(*p.peer_id)}", fail
            )
        octets = self._auth_octets(ours=False)
        assert self.suite is not None and self.suite.prf is not None
        self.peer_auth_method = auth.method
        if auth.method == AuthMethod.PSK:
            if p.psk is None:
                raise ProtocolError("peer used a shared key but the policy wants signatures", fail)
            if not hmac.compare_digest(auth.data, crypto.psk_auth(self.suite.prf, p.psk, octets)):
                raise ProtocolError("shared key AUTH does not match", fail)
            return
        if p.psk is not None:
            raise ProtocolError(
                f"peer used {AuthMethod.name_of(auth.method)} but the policy wants a shared key",
                fail,
            )
        key = p.peer_key(*self.peer_id)
        if key is None:
            raise ProtocolError(f"no public key for {id_text(*self.peer_id)}", fail)
        try:
            crypto.verify_auth(AuthMethod.lookup(auth.method), key, octets, auth.data)
        except crypto.AuthenticationError as e:
            raise ProtocolError(
                f"{AuthMethod.name_of(auth.method)} signature of "
                f"{id_text(*self.peer_id)} does not verify: {e}",
                fail,
            ) from e

    # ------------------------------------------------------------------ Child SA negotiation

    def _child_offer(self) -> tuple[int, list[Proposal]]:
        spi_in = self.endpoint.new_child_spi()
        props = proposals.with_spi(
            proposals.without_dh(self.policy.child_proposals), spi_in.to_bytes(4, "big")
        )
        return spi_in, props

    def _child_answer(
        self,
        sa: SaPayload | None,
        tsi: TsPayload | None,
        tsr: TsPayload | None,
        *,
        we_initiated: bool,
    ) -> tuple[Proposal, list[TrafficSelector], list[TrafficSelector]]:
        """Responder side: pick a proposal and narrow the selectors (2.9), or refuse."""
        if sa is None or tsi is None or tsr is None:
            raise ProtocolError("Child SA request lacks SA, TSi or TSr", NotifyType.INVALID_SYNTAX)
        chosen = proposals.select(sa.proposals, self.policy.child_proposals, ignore_dh=True)
        if chosen is None or len(chosen.spi) != 4:
            raise ProtocolError("no acceptable Child SA proposal", NotifyType.NO_PROPOSAL_CHOSEN)
        # TSi is the exchange initiator's side: for us as responder, the remote side.
        remote = ts.narrow(tsi.selectors, self.policy.ts_remote)
        local = ts.narrow(tsr.selectors, self.policy.ts_local)
        if not remote or not local:
            raise ProtocolError(
                "traffic selectors outside policy: offered "
                + ", ".join(map(ts.describe, tsi.selectors))
                + " -> "
                + ", ".join(map(ts.describe, tsr.selectors)),
                NotifyType.TS_UNACCEPTABLE,
            )
        return chosen, local, remote

    def _child_accept(
        self,
        sa: SaPayload | None,
        tsi: TsPayload | None,
        tsr: TsPayload | None,
        offered: list[Proposal],
    ) -> tuple[Proposal, list[TrafficSelector], list[TrafficSelector], bool]:
        """Initiator side: check the answer and intersect its selectors with ours;
        also says whether the answer was wider than the intersection.

        OpenIKED answers with its whole policy instead of narrowing, so the
        intersection is required, not just a check (2.9).
        """
        if sa is None or tsi is None or tsr is None or len(sa.proposals) != 1:
            raise ProtocolError("Child SA answer lacks SA, TSi or TSr", NotifyType.INVALID_SYNTAX)
        chosen = sa.proposals[0]
        if len(chosen.spi) != 4 or not proposals.is_acceptable_answer(
            chosen, offered, ignore_dh=True
        ):
            raise ProtocolError(
                "peer chose a Child SA proposal we did not offer", NotifyType.NO_PROPOSAL_CHOSEN
            )
        local = ts.narrow(tsi.selectors, self.policy.ts_local)
        remote = ts.narrow(tsr.selectors, self.policy.ts_remote)
        if not local or not remote:
            raise ProtocolError(
                "peer's traffic selectors do not overlap ours", NotifyType.TS_UNACCEPTABLE
            )
        wider = local != tsi.selectors or remote != tsr.selectors
        return chosen, local, remote, wider

    def _new_child(
        self,
        chosen: Proposal,
        spi_in: int,
        local: list[TrafficSelector],
        remote: list[TrafficSelector],
        ni: bytes,
        nr: bytes,
        *,
        we_initiated: bool,
        now: float,
        shared: bytes | None = None,
    ) -> ChildSa:
        """KEYMAT (2.17): initiator->responder keys first, of the exchange's initiator."""
        assert self.keys is not None and self.suite is not None and self.suite.prf is not None
        suite = proposals.suite_of(chosen)
        k = crypto.derive_child_keys(
            self.suite.prf, self.keys.sk_d, ni, nr, suite.encr, suite.key_bits, suite.integ, shared
        )
        i_to_r, r_to_i = (k.ei, k.ai), (k.er, k.ar)
        key_out, key_in = (i_to_r, r_to_i) if we_initiated else (r_to_i, i_to_r)
        child = ChildSa(
            policy=self.policy.name,
            spi_in=spi_in,
            spi_out=int.from_bytes(chosen.spi, "big"),
            suite=suite,
            key_in=key_in,
            key_out=key_out,
            ts_local=local,
            ts_remote=remote,
            lifetime=self.policy.child_lifetime,
            lifetime_bytes=self.policy.child_lifetime_bytes,
            encap=self.nat_detected,
            local=self.local,
            remote=self.peer,
            created=now,
            rekey_at=self._soft_deadline(now, self.policy.child_lifetime),
            expire_at=now + self.policy.child_lifetime
            if self.policy.child_lifetime > 0
            else float("inf"),
        )
        self.children[spi_in] = child
        return child

    def _note_wider(self, child: ChildSa, wider: bool) -> None:
        if wider:
            child.peer_ts_wider = True
            log.info(
                "%s: the peer answered wider selectors than we proposed (its whole "
                "policy?); the Child SA keeps ours",
                self.label,
            )

    def _child_ts_payloads(
        self, local: list[TrafficSelector], remote: list[TrafficSelector], *, we_initiate: bool
    ) -> list[wire.Payload]:
        tsi, tsr = (local, remote) if we_initiate else (remote, local)
        return [TsPayload(PayloadType.TSi, tsi), TsPayload(PayloadType.TSr, tsr)]

    # ------------------------------------------------------------------ IKE_AUTH

    def _send_auth_request(self, now: float) -> None:
        spi_in, offer = self._child_offer()
        payloads: list[wire.Payload] = [self._local_id_payload()]
        if self.initial_contact:
            payloads.append(NotifyPayload(ProtocolId.NONE, b"", NotifyType.INITIAL_CONTACT))
        if self.policy.peer_id is not None:
            payloads.append(IdPayload(PayloadType.IDr, *self.policy.peer_id))
        payloads.append(self._make_auth())
        payloads += [
            SaPayload(offer),
            *self._child_ts_payloads(self.policy.ts_local, self.policy.ts_remote, we_initiate=True),
        ]
        self.state = State.AUTH_SENT
        self._send_request(
            ExchangeType.IKE_AUTH, payloads, "auth", now, {"spi_in": spi_in, "offer": offer}
        )

    def _on_auth_request(
        self, msg: Message, payloads: list[wire.Payload], now: float
    ) -> list[wire.Payload]:
        """Responder: verify the initiator, then answer with our AUTH and the Child SA."""
        idi = next(
            (p for p in payloads if isinstance(p, IdPayload) and p.kind == PayloadType.IDi), None
        )
        if idi is not None:
            # Choose the policy again, now that the peer's identity is known (iked does).
            better = self.endpoint.policy_for(self.peer, self.local, (idi.id_type, idi.data))
            if better is not None and better is not self.policy:
                log.debug("%s: policy '%s' chosen by peer ID", self.label, better.name)
                self.policy = better
        try:
            self._verify_peer(idi, _find(payloads, AuthPayload))
        except ProtocolError as e:
            log.warning("%s: AUTHENTICATION_FAILED: %s", self.label, e.detail)
            self._fail_after_response = f"authentication of the peer failed: {e.detail}"
            return [NotifyPayload(ProtocolId.NONE, b"", NotifyType.AUTHENTICATION_FAILED)]
        reply: list[wire.Payload] = [self._local_id_payload(), self._make_auth()]
        self._established(now)
        if any(
            isinstance(p, NotifyPayload) and p.type == NotifyType.INITIAL_CONTACT for p in payloads
        ):
            assert self.peer_id is not None
            self._emit(InitialContact(self, self.peer_id))
        tsi = next(
            (p for p in payloads if isinstance(p, TsPayload) and p.kind == PayloadType.TSi), None
        )
        tsr = next(
            (p for p in payloads if isinstance(p, TsPayload) and p.kind == PayloadType.TSr), None
        )
        sa = _find(payloads, SaPayload)
        if sa is None:  # childless IKE SA (RFC 6023): nothing more to do
            return reply
        try:
            chosen, local, remote = self._child_answer(sa, tsi, tsr, we_initiated=False)
        except ProtocolError as e:
            # 1.2: the IKE SA stands even if the Child SA is refused.
            log.warning(
                "%s: Child SA refused (%s): %s", self.label, NotifyType.name_of(e.notify), e.detail
            )
            return [*reply, NotifyPayload(ProtocolId.NONE, b"", e.notify, e.data)]
        spi_in = self.endpoint.new_child_spi()
        answer = Proposal(
            chosen.number, chosen.protocol, spi_in.to_bytes(4, "big"), chosen.transforms
        )
        child = self._new_child(
            chosen, spi_in, local, remote, self._ni, self._nr, we_initiated=False, now=now
        )
        log.info("%s: created Child SA %s", self.label, child.describe())
        self._emit(ChildSaCreated(self, child))
        return [
            *reply,
            SaPayload([answer]),
            *self._child_ts_payloads(local, remote, we_initiate=False),
        ]

    def _on_auth_response(self, msg: Message, payloads: list[wire.Payload], now: float) -> None:
        errors = [p for p in payloads if isinstance(p, NotifyPayload) and p.type < 16384]
        auth = _find(payloads, AuthPayload)
        if auth is None:
            what = ", ".join(NotifyType.name_of(n.type) for n in errors) or "no AUTH payload"
            self._close(f"IKE_AUTH refused by peer: {what}", now)
            return
        idr = next(
            (p for p in payloads if isinstance(p, IdPayload) and p.kind == PayloadType.IDr), None
        )
        try:
            self._verify_peer(idr, auth)
        except ProtocolError as e:
            # 2.21.2: an initiator that rejects the responder's AUTH may say so in a
            # separate INFORMATIONAL (charon does); otherwise the responder keeps an
            # established IKE SA and Child SA until its liveness check gives up.
            log.warning("%s: AUTHENTICATION_FAILED: %s", self.label, e.detail)
            self.close_reason = f"authentication of the peer failed: {e.detail}"
            self._next_request_id = msg.message_id + 1
            self.state = State.DELETING
            self._send_request(
                ExchangeType.INFORMATIONAL,
                [NotifyPayload(ProtocolId.NONE, b"", NotifyType.AUTHENTICATION_FAILED)],
                "auth_failed",
                now,
            )
            return
        assert self._request is not None
        ctx = self._request.context
        self._established(now)
        if errors:
            log.warning(
                "%s: Child SA refused by peer: %s",
                self.label,
                ", ".join(NotifyType.name_of(n.type) for n in errors),
            )
            return
        try:
            chosen, local, remote, wider = self._child_accept(
                _find(payloads, SaPayload),
                _find_ts(payloads, PayloadType.TSi),
                _find_ts(payloads, PayloadType.TSr),
                ctx["offer"],
            )
        except ProtocolError as e:
            log.warning(
                "%s: Child SA answer unusable (%s): %s; deleting it",
                self.label,
                NotifyType.name_of(e.notify),
                e.detail,
            )
            self._queue.append(("delete_child", {"spi_in": ctx["spi_in"]}))
            return
        child = self._new_child(
            chosen, ctx["spi_in"], local, remote, self._ni, self._nr, we_initiated=True, now=now
        )
        self._note_wider(child, wider)
        log.info("%s: created Child SA %s", self.label, child.describe())
        self._emit(ChildSaCreated(self, child))

    # ------------------------------------------------------------------ INFORMATIONAL

    def _on_informational_request(
        self, msg: Message, payloads: list[wire.Payload], now: float
    ) -> list[wire.Payload]:
        """DELETE (1.4.1), liveness (2.4: empty request, empty answer), status notifies."""
        reply: list[wire.Payload] = []
        for p in payloads:
            if isinstance(p, DeletePayload):
                if p.protocol == ProtocolId.IKE:
                    log.info("%s: peer deleted the IKE SA", self.label)
                    self._close_after_response = "deleted by peer"
                    return []
                if p.protocol in (ProtocolId.ESP, ProtocolId.AH):
                    ours = []
                    for spi in p.spis:
                        child = self._child_by_out_spi(int.from_bytes(spi, "big"))
                        if child is None:
                            continue
                        self._forget_child(child.spi_in)
                        ours.append(child.spi_in.to_bytes(4, "big"))
                        log.info("%s: peer deleted Child SA %s", self.label, child.describe())
                        self._emit(ChildSaDeleted(self, child, "deleted by peer"))
                    if ours:
                        reply.append(DeletePayload(p.protocol, 4, ours))
            elif isinstance(p, NotifyPayload) and p.type < 16384:
                log.warning("%s: peer reports %s", self.label, NotifyType.name_of(p.type))
        return reply

    def _child_by_out_spi(self, spi: int) -> ChildSa | None:
        return next((c for c in self.children.values() if c.spi_out == spi), None)

    def _on_informational_response(
        self, msg: Message, payloads: list[wire.Payload], now: float
    ) -> None:
        assert self._request is not None
        if self._request.purpose == "delete_ike":
            self._close(self.close_reason or "deleted", now, error=False)
        elif self._request.purpose == "auth_failed":
            self._close(self.close_reason or "authentication of the peer failed", now)
        elif self._request.purpose == "delete_child":
            child = self._forget_child(self._request.context["spi_in"])
            if child is not None:
                self._emit(ChildSaDeleted(self, child, "deleted by us"))

    # ------------------------------------------------------------------ CREATE_CHILD_SA

    def _on_create_child_request(
        self, msg: Message, payloads: list[wire.Payload], now: float
    ) -> list[wire.Payload]:
        """The peer rekeys a Child SA (1.3.3), asks for a new one (1.3.1), or
        rekeys this IKE SA (1.3.2)."""
        sa = _find(payloads, SaPayload)
        nonce = _find(payloads, NoncePayload)
        if sa is None or nonce is None or not sa.proposals:
            raise ProtocolError("CREATE_CHILD_SA without SA or Nonce", NotifyType.INVALID_SYNTAX)
        if self.rekeyed_to is not None:
            # 2.25: this SA is on its way out; the peer must use the new one.
            raise ProtocolError("this IKE SA was rekeyed", NotifyType.TEMPORARY_FAILURE)
        if sa.proposals[0].protocol == ProtocolId.IKE:
            return self._answer_ike_rekey(sa, nonce, _find(payloads, KePayload), now)
        rekey = next(
            (p for p in payloads if isinstance(p, NotifyPayload) and p.type == NotifyType.REKEY_SA),
            None,
        )
        old = None
        if rekey is not None:
            spi = int.from_bytes(rekey.spi, "big")
            old = self._child_by_out_spi(spi) or self.children.get(spi)
            if old is None:
                raise ProtocolError(
                    "REKEY_SA for an unknown Child SA", NotifyType.CHILD_SA_NOT_FOUND, b""
                )
            if old.state == ChildState.DELETING:
                # 2.25.1: a rekey colliding with our DELETE of the same SA.
                raise ProtocolError(
                    f"Child SA 0x{old.spi_in:08x} is being deleted", NotifyType.TEMPORARY_FAILURE
                )
        chosen, local, remote = self._child_answer(
            sa,
            _find_ts(payloads, PayloadType.TSi),
            _find_ts(payloads, PayloadType.TSr),
            we_initiated=False,
        )
        ke = _find(payloads, KePayload)
        shared = None
        reply_ke: list[wire.Payload] = []
        if ke is not None:  # PFS (1.3.1): a fresh DH for the new Child SA
            ours = proposals.dh_groups(self.policy.child_proposals)
            if ke.group not in crypto.SUPPORTED_GROUPS or (ours and ke.group not in ours):
                wanted = (ours or proposals.dh_groups(self.policy.ike_proposals))[0]
                raise ProtocolError(
                    f"KE group {DhId.name_of(ke.group)} is not ours",
                    NotifyType.INVALID_KE_PAYLOAD,
                    wanted.to_bytes(2, "big"),
                )
            dh = crypto.dh_generate(DhId(ke.group))
            try:
                shared = dh.shared(ke.data)
            except crypto.InvalidKeyExchange as e:
                raise ProtocolError(str(e), NotifyType.INVALID_SYNTAX) from e
            reply_ke = [KePayload(dh.group, dh.public_bytes)]
            chosen = Proposal(
                chosen.number,
                chosen.protocol,
                chosen.spi,
                [
                    *(t for t in chosen.transforms if t.type != TransformType.DH),
                    wire.Transform(TransformType.DH, ke.group),
                ],
            )
        nr = self.endpoint.rng(NONCE_LEN)
        spi_in = self.endpoint.new_child_spi()
        answer = Proposal(
            chosen.number, chosen.protocol, spi_in.to_bytes(4, "big"), chosen.transforms
        )
        child = self._new_child(
            chosen,
            spi_in,
            local,
            remote,
            nonce.data,
            nr,
            we_initiated=False,
            now=now,
            shared=shared,
        )
        log.info(
            "%s: %s Child SA %s", self.label, "rekeyed" if old else "created", child.describe()
        )
        self._emit(ChildSaCreated(self, child, replaces=old))
        if old is not None:
            self._child_rekey_done(old, _Rekey(False, min(nonce.data, nr), child), now)
        return [
            SaPayload([answer]),
            NoncePayload(nr),
            *reply_ke,
            *self._child_ts_payloads(local, remote, we_initiate=False),
        ]

    def _refuse_while_deleting(
        self, msg: Message, payloads: list[wire.Payload], now: float
    ) -> list[wire.Payload]:
        """2.25: no new SAs on an IKE SA we are deleting."""
        raise ProtocolError("the IKE SA is being deleted", NotifyType.TEMPORARY_FAILURE)

    # ------------------------------------------------------------------ rekeying (initiator)

    def _send_child_rekey(self, context: dict, now: float) -> None:
        """CREATE_CHILD_SA: [N(REKEY_SA)], SA, Ni, [KEi], TSi, TSr (1.3.1, 1.3.3).

        ``context["spi_in"]`` names the Child SA to rekey, or is None for a new one.
        """
        old = None
        if context["spi_in"] is not None:
            old = self.children.get(context["spi_in"])
            if old is None or old.state != ChildState.REKEYING:
                return  # deleted, or rekeyed by the peer meanwhile
        spi_in = self.endpoint.new_child_spi()
        offer = proposals.with_spi(self.policy.child_proposals, spi_in.to_bytes(4, "big"))
        groups = proposals.dh_groups(self.policy.child_proposals)
        group = context.get("group") or (groups[0] if groups else None)
        ni = self.endpoint.rng(NONCE_LEN)
        payloads: list[wire.Payload] = []
        if old is not None:  # the REKEY_SA SPI is the old SA's SPI as we receive it (1.3.3)
            payloads.append(
                NotifyPayload(ProtocolId.ESP, old.spi_in.to_bytes(4, "big"), NotifyType.REKEY_SA)
            )
        payloads += [SaPayload(offer), NoncePayload(ni)]
        dh = None
        if group:  # PFS: the policy's child proposals name a group (iked's `childsa group`)
            dh = crypto.dh_generate(DhId(group))
            payloads.append(KePayload(dh.group, dh.public_bytes))
        local, remote = (
            (old.ts_local, old.ts_remote)
            if old is not None
            else (self.policy.ts_local, self.policy.ts_remote)
        )
        payloads += self._child_ts_payloads(local, remote, we_initiate=True)
        self._send_request(
            ExchangeType.CREATE_CHILD_SA,
            payloads,
            "rekey_child",
            now,
            {"old": context["spi_in"], "spi_in": spi_in, "offer": offer, "ni": ni, "dh": dh},
        )

    def _send_ike_rekey(self, context: dict, now: float) -> None:
        """CREATE_CHILD_SA: SA (IKE, our new SPI), Ni, KEi (1.3.2)."""
        if self.rekeyed_to is not None or self.state != State.ESTABLISHED:
            return
        assert self.suite is not None
        spi = self.endpoint._new_ike_spi()
        # The current group first: the peer accepted it once, so no INVALID_KE round.
        group = context.get("group") or self.suite.dh
        dh = crypto.dh_generate(DhId(group))
        ni = self.endpoint.rng(NONCE_LEN)
        offer = proposals.with_spi(self.policy.ike_proposals, spi)
        self._send_request(
            ExchangeType.CREATE_CHILD_SA,
            [SaPayload(offer), NoncePayload(ni), KePayload(dh.group, dh.public_bytes)],
            "rekey_ike",
            now,
            {"spi": spi, "offer": offer, "ni": ni, "dh": dh},
        )

    def _on_create_child_response(
        self, msg: Message, payloads: list[wire.Payload], now: float
    ) -> None:
        assert self._request is not None
        ctx = self._request.context
        errors = [p for p in payloads if isinstance(p, NotifyPayload) and p.type < 16384]
        if self._request.purpose == "rekey_ike":
            self._on_ike_rekey_response(ctx, payloads, errors, now)
        else:
            self._on_child_rekey_response(ctx, payloads, errors, now)

    def _retry_group(
        self, errors: list[NotifyPayload], offered: list[int], tried: int | None
    ) -> int | None:
        """INVALID_KE_PAYLOAD (1.3, 3.4): the group the peer wants, if we offer it."""
        for n in errors:
            if n.type == NotifyType.INVALID_KE_PAYLOAD and len(n.data) >= 2:
                group = int.from_bytes(n.data[:2], "big")
                if group in offered and group != tried and group in crypto.SUPPORTED_GROUPS:
                    return group
        return None

    def _retry_later(self, errors: list[NotifyPayload], now: float) -> float:
        """When to try a refused rekey again: soon after TEMPORARY_FAILURE (2.25)."""
        temporary = any(n.type == NotifyType.TEMPORARY_FAILURE for n in errors)
        u = int.from_bytes(self.endpoint.rng(2), "big") / 65536
        return now + (1.0 + 2.0 * u if temporary else 30.0)

    def _on_child_rekey_response(
        self, ctx: dict, payloads: list[wire.Payload], errors: list[NotifyPayload], now: float
    ) -> None:
        old = self.children.get(ctx["old"]) if ctx["old"] is not None else None
        dh: crypto.DhPrivate | None = ctx["dh"]
        if errors:
            names = ", ".join(NotifyType.name_of(n.type) for n in errors)
            group = self._retry_group(
                errors, proposals.dh_groups(self.policy.child_proposals), dh.group if dh else None
            )
            if group is not None and (old is None or old.state == ChildState.REKEYING):
                log.info(
                    "%s: peer wants DH group %s for the Child SA, retrying",
                    self.label,
                    DhId.name_of(group),
                )
                self._queue.appendleft(("rekey_child", {"spi_in": ctx["old"], "group": group}))
            elif any(n.type == NotifyType.CHILD_SA_NOT_FOUND for n in errors):
                if old is not None:
                    self._forget_child(old.spi_in)
                    self._emit(ChildSaDeleted(self, old, "the peer no longer has it"))
            elif old is not None and old.state == ChildState.REKEYING:
                old.state = ChildState.ACTIVE
                old.rekey_at = self._retry_later(errors, now)
                log.warning(
                    "%s: peer refused the Child SA rekey (%s); next try in %.0f s",
                    self.label,
                    names,
                    old.rekey_at - now,
                )
            return
        nonce = _find(payloads, NoncePayload)
        try:
            if nonce is None:
                raise ProtocolError("rekey answer without Nonce", NotifyType.INVALID_SYNTAX)
            chosen, local, remote, wider = self._child_accept(
                _find(payloads, SaPayload),
                _find_ts(payloads, PayloadType.TSi),
                _find_ts(payloads, PayloadType.TSr),
                ctx["offer"],
            )
            shared = self._child_shared_secret(chosen, dh, _find(payloads, KePayload))
        except ProtocolError as e:
            log.warning(
                "%s: Child SA rekey answer unusable (%s): %s; deleting it",
                self.label,
                NotifyType.name_of(e.notify),
                e.detail,
            )
            self._queue.append(("delete_child", {"spi_in": ctx["spi_in"]}))
            if old is not None and old.state == ChildState.REKEYING:
                old.state = ChildState.ACTIVE
                old.rekey_at = now + 30.0
            return
        child = self._new_child(
            chosen,
            ctx["spi_in"],
            local,
            remote,
            ctx["ni"],
            nonce.data,
            we_initiated=True,
            now=now,
            shared=shared,
        )
        self._note_wider(child, wider)
        log.info(
            "%s: %s Child SA %s", self.label, "rekeyed" if old else "created", child.describe()
        )
        self._emit(ChildSaCreated(self, child, replaces=old))
        if old is not None:
            self._child_rekey_done(old, _Rekey(True, min(ctx["ni"], nonce.data), child), now)

    def _child_shared_secret(
        self, chosen: Proposal, dh: crypto.DhPrivate | None, ke: KePayload | None
    ) -> bytes | None:
        """g^ir of a PFS rekey; the answer's DH transform says whether PFS was chosen."""
        group = next(
            (t.id for t in chosen.transforms if t.type == TransformType.DH and t.id != DhId.NONE),
            None,
        )
        if group is None:
            return None
        if dh is None or ke is None or ke.group != group or dh.group != group:
            raise ProtocolError("PFS answer without a matching KE", NotifyType.INVALID_SYNTAX)
        try:
            return dh.shared(ke.data)
        except crypto.InvalidKeyExchange as e:
            raise ProtocolError(str(e), NotifyType.INVALID_SYNTAX) from e

    def _child_rekey_done(self, old: ChildSa, done: _Rekey, now: float) -> None:
        """After a rekey exchange: who deletes what (2.8, collisions 2.8.1).

        Normally the rekey's initiator deletes the old SA. When both peers rekeyed
        the same SA at once, the exchange holding the lowest of the four nonces
        made a redundant SA; its initiator deletes that one, and the other
        exchange's initiator deletes the old SA.
        """
        records = self._child_rekeys.setdefault(old.spi_in, [])
        records.append(done)
        if len(records) == 1:
            if done.ours:
                self._delete_replaced_child(old, now)
            else:
                old.state = ChildState.REKEYED  # the peer deletes it
            return
        loser = min(records, key=lambda r: r.nonce)
        assert isinstance(loser.new, ChildSa)
        log.info(
            "%s: simultaneous rekey of Child SA 0x%08x; 0x%08x is redundant",
            self.label,
            old.spi_in,
            loser.new.spi_in,
        )
        if loser.ours:
            old.state = ChildState.REKEYED  # the peer's exchange won: it deletes the old SA
            loser.new.state = ChildState.DELETING
            self._queue_request("delete_child", now, spi_in=loser.new.spi_in)
        else:
            self._delete_replaced_child(old, now)

    def _delete_replaced_child(self, old: ChildSa, now: float) -> None:
        old.state = ChildState.DELETING
        self._queue_request("delete_child", now, spi_in=old.spi_in)

    # ------------------------------------------------------------------ IKE SA rekey

    def _answer_ike_rekey(
        self, sa: SaPayload, nonce: NoncePayload, ke: KePayload | None, now: float
    ) -> list[wire.Payload]:
        """Responder of an IKE SA rekey (1.3.2): new SPIs, keys from SK_d (2.18)."""
        chosen = proposals.select(sa.proposals, self.policy.ike_proposals)
        if chosen is None:
            raise ProtocolError(
                "no acceptable IKE SA proposal for the rekey", NotifyType.NO_PROPOSAL_CHOSEN
            )
        if len(chosen.spi) != 8:
            raise ProtocolError(
                "IKE SA rekey proposal without an 8-byte SPI", NotifyType.INVALID_SYNTAX
            )
        suite = proposals.suite_of(chosen)
        if ke is None or ke.group != suite.dh:
            raise ProtocolError(
                "IKE SA rekey with a KE of another group",
                NotifyType.INVALID_KE_PAYLOAD,
                int(suite.dh).to_bytes(2, "big"),
            )
        dh = crypto.dh_generate(DhId(suite.dh))
        try:
            shared = dh.shared(ke.data)
        except crypto.InvalidKeyExchange as e:
            raise ProtocolError(str(e), NotifyType.INVALID_SYNTAX) from e
        nr = self.endpoint.rng(NONCE_LEN)
        spi_r = self.endpoint._new_ike_spi()
        new = self._spawn_rekeyed(False, chosen.spi, spi_r, suite, nonce.data, nr, shared, now)
        self._ike_rekey_done(_Rekey(False, min(nonce.data, nr), new), now)
        return [
            SaPayload([Proposal(chosen.number, ProtocolId.IKE, spi_r, chosen.transforms)]),
            NoncePayload(nr),
            KePayload(dh.group, dh.public_bytes),
        ]

    def _on_ike_rekey_response(
        self, ctx: dict, payloads: list[wire.Payload], errors: list[NotifyPayload], now: float
    ) -> None:
        dh: crypto.DhPrivate = ctx["dh"]
        self._ike_rekey_pending = False
        if errors:
            group = self._retry_group(
                errors, proposals.dh_groups(self.policy.ike_proposals), dh.group
            )
            if group is not None:
                log.info(
                    "%s: peer wants DH group %s for the IKE SA rekey, retrying",
                    self.label,
                    DhId.name_of(group),
                )
                self._ike_rekey_pending = True
                self._queue.appendleft(("rekey_ike", {"group": group}))
                return
            self.rekey_at = self._retry_later(errors, now)
            log.warning(
                "%s: peer refused the IKE SA rekey (%s); next try in %.0f s",
                self.label,
                ", ".join(NotifyType.name_of(n.type) for n in errors),
                self.rekey_at - now,
            )
            return
        sa, nonce, ke = (
            _find(payloads, SaPayload),
            _find(payloads, NoncePayload),
            _find(payloads, KePayload),
        )
        problem = ""
        if sa is None or nonce is None or ke is None or len(sa.proposals) != 1:
            problem = "answer lacks SA, Nonce or KE"
        elif len(sa.proposals[0].spi) != 8 or not proposals.is_acceptable_answer(
            sa.proposals[0], ctx["offer"]
        ):
            problem = "answer is not one of our proposals"
        elif ke.group != dh.group or proposals.suite_of(sa.proposals[0]).dh != dh.group:
            problem = "answer's KE group does not match"
        shared = b""
        if not problem:
            assert ke is not None
            try:
                shared = dh.shared(ke.data)
            except crypto.InvalidKeyExchange as e:
                problem = str(e)
        if problem:
            # The peer may hold a new SA we cannot use; it dies unused with its lifetime.
            log.warning("%s: IKE SA rekey answer unusable: %s", self.label, problem)
            self.rekey_at = now + 30.0
            return
        assert sa is not None and nonce is not None
        chosen = sa.proposals[0]
        new = self._spawn_rekeyed(
            True,
            ctx["spi"],
            chosen.spi,
            proposals.suite_of(chosen),
            ctx["ni"],
            nonce.data,
            shared,
            now,
        )
        self._ike_rekey_done(_Rekey(True, min(ctx["ni"], nonce.data), new), now)

    def _spawn_rekeyed(
        self,
        we_initiated: bool,
        spi_i: bytes,
        spi_r: bytes,
        suite: Suite,
        ni: bytes,
        nr: bytes,
        shared: bytes,
        now: float,
    ) -> IkeSa:
        """The new IKE SA of a rekey. Its initiator is the rekey's initiator (2.18)."""
        assert self.keys is not None and self.suite is not None and suite.prf is not None
        new = IkeSa(
            self.endpoint,
            self.policy,
            initiator=we_initiated,
            local=self.local,
            peer=self.peer,
            now=now,
        )
        new.spi_i, new.spi_r = spi_i, spi_r
        new.peer_id, new._peer_id_body = self.peer_id, self._peer_id_body
        new._peer_hashes, new.peer_auth_method = self._peer_hashes, self.peer_auth_method
        new.nat_detected, new.initial_contact = self.nat_detected, False
        new._ni, new._nr, new.suite = ni, nr, suite
        new.keys = crypto.derive_ike_keys(
            suite.prf,
            suite.encr,
            suite.key_bits,
            suite.integ,
            ni,
            nr,
            shared,
            spi_i,
            spi_r,
            old_sk_d=self.keys.sk_d,
            old_prf=self.suite.prf,
        )
        new._make_ciphers()
        new._emit(IkeKeysDerived(new, new.keys))
        new.state = State.ESTABLISHED
        new.established_at = now
        new.rekey_at = new._soft_deadline(now, self.policy.ike_lifetime)
        self.endpoint.sas[new.our_spi] = new
        return new

    def _ike_rekey_done(self, done: _Rekey, now: float) -> None:
        """After an IKE SA rekey: move the children, delete the old SA (2.18, 2.8.2)."""
        assert isinstance(done.new, IkeSa)
        self._ike_rekeys.append(done)
        if len(self._ike_rekeys) == 1:
            self._move_to(done.new, now)
            if done.ours:
                self.delete(now, "rekeyed")
            return
        # 2.8.2: both peers rekeyed at once. The new SA with the lowest nonce is
        # redundant: its initiator deletes it; the other's initiator deletes this one.
        loser = min(self._ike_rekeys, key=lambda r: r.nonce)
        winner = next(r for r in self._ike_rekeys if r is not loser)
        assert isinstance(loser.new, IkeSa) and isinstance(winner.new, IkeSa)
        log.info("%s: simultaneous IKE SA rekey; %s is redundant", self.label, loser.new.label)
        if self.rekeyed_to is not winner.new:
            source = self.rekeyed_to or self
            source._move_to(winner.new, now, replaces=source)
        if loser.ours:
            loser.new.delete(now, "redundant after a simultaneous rekey (RFC 7296 2.8.2)")
        else:
            self.delete(now, "rekeyed")

    def _move_to(self, new: IkeSa, now: float, replaces: IkeSa | None = None) -> None:
        """Hand our Child SAs, and requests queued for them, to ``new``."""
        log.info(
            "%s: rekeyed IKE SA, now %s (%d Child SA%s moved)",
            self.label,
            new.label,
            len(self.children),
            "" if len(self.children) == 1 else "s",
        )
        new.children.update(self.children)
        new._child_rekeys.update(self._child_rekeys)
        self.children, self._child_rekeys = {}, {}
        moved = [q for q in self._queue if q[0] in ("rekey_child", "delete_child")]
        self._queue = deque(q for q in self._queue if q not in moved)
        new._queue.extend(moved)
        self.rekeyed_to, self._rekeyed_at = new, now
        self._emit(IkeSaEstablished(new, replaces=replaces or self))
        if new._request is None:
            new._request_done(now)

    # ------------------------------------------------------------------ receive

    def receive(self, msg: Message, data: bytes, src: Addr, dst: Addr, now: float) -> None:
        """Handle one parsed message addressed to this SA."""
        if self.state == State.CLOSED:
            return
        if msg.is_response:
            self._receive_response(msg, data, src, dst, now)
        else:
            self._receive_request(msg, data, src, dst, now)

    def _receive_response(
        self, msg: Message, data: bytes, src: Addr, dst: Addr, now: float
    ) -> None:
        r = self._request
        if r is None or msg.message_id != r.message_id or msg.exchange != r.exchange:
            log.debug(
                "%s: drop unexpected response %s #%d",
                self.label,
                ExchangeType.name_of(msg.exchange),
                msg.message_id,
            )
            return
        handler = self._RESPONSE_HANDLERS.get((self.state, msg.exchange))
        if handler is None:
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
            if msg.notify(NotifyType.INVALID_IKE_SPI) is not None and not self._lost_reported:
                self._lost_reported = True
                log.warning(
                    "%s: peer [%s]:%d does not know this IKE SA (INVALID_IKE_SPI)",
                    self.label,
                    src[0],
                    src[1],
                )
                self._emit(PeerLostSa(self))
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
            handler(self, msg, data, src, dst, now)
            return
        try:
            payloads = self._unprotect(data, msg)
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
        handler(self, msg, payloads, now)
        if self.state != State.CLOSED and self._request is r:
            self._next_request_id = r.message_id + 1
            self._request_done(now)

    def _receive_request(self, msg: Message, data: bytes, src: Addr, dst: Addr, now: float) -> None:
        if self._last_response is not None and msg.message_id == self._last_response[0]:
            # 2.1: a retransmitted request gets the very same response again.
            mid, resp, _, _ = self._last_response
            log.debug("%s: retransmitted request #%d, resending response", self.label, mid)
            self.endpoint.transmits.append(Transmit(resp, dst, src))
            return
        if msg.message_id != self._peer_next_id:
            log.debug(
                "%s: drop request #%d, expected #%d", self.label, msg.message_id, self._peer_next_id
            )
            return
        handler = self._REQUEST_HANDLERS.get((self.state, msg.exchange))
        if handler is None:
            log.info(
                "%s: drop %s request in state %s",
                self.label,
                ExchangeType.name_of(msg.exchange),
                self.state.name,
            )
            return
        try:
            payloads = self._unprotect(data, msg)
        except crypto.IntegrityError as e:
            log.warning(
                "%s: drop %s request #%d: %s",
                self.label,
                ExchangeType.name_of(msg.exchange),
                msg.message_id,
                e,
            )
            return
        except wire.WireError as e:
            # Authenticated but malformed: answer with the error (2.21.2).
            log.warning(
                "%s: bad %s request #%d: %s",
                self.label,
                ExchangeType.name_of(msg.exchange),
                msg.message_id,
                e,
            )
            self._respond(msg, [NotifyPayload(ProtocolId.NONE, b"", e.notify, e.data)], src, dst)
            return
        self.last_received = now
        self._note_peer_address(src, dst)
        self._close_after_response = ""
        self._fail_after_response = ""
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
            reply = [NotifyPayload(ProtocolId.NONE, b"", e.notify, e.data)]
        self._respond(msg, reply, src, dst)
        if self._close_after_response:
            self._close(self._close_after_response, now, error=False)
        elif self._fail_after_response:
            self._close(self._fail_after_response, now)

    def _respond(self, msg: Message, payloads: list[wire.Payload], src: Addr, dst: Addr) -> None:
        data = self._protect(msg.exchange, msg.message_id, True, payloads)
        self._last_response = (msg.message_id, data, dst, src)
        self._peer_next_id = msg.message_id + 1
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
        self.endpoint.transmits.append(Transmit(data, dst, src))

    def _note_peer_address(self, src: Addr, dst: Addr) -> None:
        """Follow the peer to a new address once a message from there authenticated."""
        if src != self.peer and self.state in (State.ESTABLISHED, State.INIT_DONE, State.AUTH_SENT):
            log.info(
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
        self.local = dst

    _REQUEST_HANDLERS: dict[tuple[State, int], Callable] = {}
    _RESPONSE_HANDLERS: dict[tuple[State, int], Callable] = {}


# The state table: which handler runs for which (state, exchange). Anything
# not listed is dropped with a log line.
IkeSa._REQUEST_HANDLERS = {
    (State.INIT_DONE, ExchangeType.IKE_AUTH): IkeSa._on_auth_request,
    (State.ESTABLISHED, ExchangeType.INFORMATIONAL): IkeSa._on_informational_request,
    (State.ESTABLISHED, ExchangeType.CREATE_CHILD_SA): IkeSa._on_create_child_request,
    (State.DELETING, ExchangeType.INFORMATIONAL): IkeSa._on_informational_request,
    (State.DELETING, ExchangeType.CREATE_CHILD_SA): IkeSa._refuse_while_deleting,
}
IkeSa._RESPONSE_HANDLERS = {
    (State.INIT_SENT, ExchangeType.IKE_SA_INIT): IkeSa._on_init_response,
    (State.AUTH_SENT, ExchangeType.IKE_AUTH): IkeSa._on_auth_response,
    (State.ESTABLISHED, ExchangeType.INFORMATIONAL): IkeSa._on_informational_response,
    (State.ESTABLISHED, ExchangeType.CREATE_CHILD_SA): IkeSa._on_create_child_response,
    (State.DELETING, ExchangeType.INFORMATIONAL): IkeSa._on_informational_response,
}


def _find(payloads: list[wire.Payload], cls: type) -> object | None:
    return next((p for p in payloads if isinstance(p, cls)), None)


def _find_ts(payloads: list[wire.Payload], kind: PayloadType) -> TsPayload | None:
    return next((p for p in payloads if isinstance(p, TsPayload) and p.kind == kind), None)


# --------------------------------------------------------------------------- endpoint


class Endpoint:
    """All IKE SAs of one daemon: demultiplexing, responder creation, cookies.

    ``policy_for(peer, local, peer_id)`` picks the responder policy (iked's
    rule lives in pyike.config); ``rng`` is injectable for reproducible tests.
    """

    def __init__(
        self,
        policy_for: Callable[[Addr, Addr, tuple[int, bytes] | None], SaPolicy | None] = lambda *_: (
            None
        ),
        *,
        rng: Callable[[int], bytes] = os.urandom,
        cookie_threshold: int = 32,
        half_open_timeout: float = 30.0,
    ) -> None:
        self.policy_for = policy_for
        self.rng = rng
        self.cookie_threshold = cookie_threshold
        self.half_open_timeout = half_open_timeout
        self.sas: dict[bytes, IkeSa] = {}  # by our SPI
        self._half_open: dict[tuple[bytes, Addr], IkeSa] = {}  # responder, by (SPIi, peer)
        self._cookie_secret = rng(32)
        self._child_spis: set[int] = set()
        self.transmits: list[Transmit] = []
        self.events: list[Event] = []
        self.dropped = 0
        # INVALID_IKE_SPI answers (2.21.4): at most invalid_spi_burst per source address
        # per second (a restarted peer gets one probe per IKE SA it had with us).
        self.invalid_spi_burst = 8
        self._invalid_spi_sent: dict[IPv4Address | IPv6Address, tuple[float, int]] = {}

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
        sa.start(now)
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
        self._reap()

    def new_child_spi(self) -> int:
        """A fresh inbound ESP SPI (>= 256: 1-255 are reserved, RFC 4303 2.1)."""
        while True:
            spi = int.from_bytes(self.rng(4), "big")
            if spi >= 256 and spi not in self._child_spis:
                self._child_spis.add(spi)
                return spi

    # ------------------------------------------------------------------ receive

    def receive(self, data: bytes, src: Addr, dst: Addr, now: float) -> None:
        """One IKE datagram (non-ESP marker already removed). Never raises."""
        try:
            msg = wire.parse_message(data)
        except wire.WireError as e:
            self.dropped += 1
            log.warning("drop datagram from [%s]:%d: %s", src[0], src[1], e)
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
        self._reap()

    def _dispatch(self, msg: Message, data: bytes, src: Addr, dst: Addr, now: float) -> None:
        if msg.exchange == ExchangeType.IKE_SA_INIT and not msg.is_response:
            existing = self._half_open.get((msg.spi_i, src))
            if existing is not None:  # a retransmission: same answer again (2.1)
                self.transmits.append(Transmit(existing._init_response, dst, src))
                return
            self._on_init_request(msg, data, src, dst, now)
            return
        ours = msg.spi_r if msg.is_initiator else msg.spi_i
        sa = self.sas.get(ours)
        if sa is None:
            self.dropped += 1
            log.info(
                "drop %s %s #%d from [%s]:%d: unknown SPI %s",
                ExchangeType.name_of(msg.exchange),
                "response" if msg.is_response else "request",
                msg.message_id,
                src[0],
                src[1],
                _spi_text(ours),
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
            [NotifyPayload(ProtocolId.NONE, b"", NotifyType.INVALID_IKE_SPI)],
        )
        log.info(
            "send INVALID_IKE_SPI to [%s]:%d for %s #%d",
            src[0],
            src[1],
            ExchangeType.name_of(msg.exchange),
            msg.message_id,
        )
        self.transmits.append(Transmit(wire.build_message(reply), dst, src))

    def _reap(self) -> None:
        for spi, sa in list(self.sas.items()):
            if sa.state == State.CLOSED:
                del self.sas[spi]
                self._half_open.pop((sa.spi_i, sa.peer), None)
                for c in sa.children:
                    self._child_spis.discard(c)
        for key, sa in list(self._half_open.items()):
            if sa.state != State.INIT_DONE:
                del self._half_open[key]

    # ------------------------------------------------------------------ responder IKE_SA_INIT

    def _plain_reply(
        self, msg: Message, notify: NotifyType, data: bytes, src: Addr, dst: Addr
    ) -> None:
        """An unauthenticated IKE_SA_INIT error answer (SPIr zero, 2.6/1.2)."""
        reply = Message(
            msg.spi_i,
            ZERO_SPI,
            ExchangeType.IKE_SA_INIT,
            HeaderFlag.RESPONSE,
            0,
            [NotifyPayload(ProtocolId.NONE, b"", notify, data)],
        )
        self.transmits.append(Transmit(wire.build_message(reply), dst, src))

    def _cookie_for(self, msg: Message, nonce: bytes, src: Addr) -> bytes:
        """2.6: <VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>)."""
        h = hashlib.sha256(nonce + src[0].packed + msg.spi_i + self._cookie_secret).digest()
        return b"\x00" + h

    def _on_init_request(self, msg: Message, data: bytes, src: Addr, dst: Addr, now: float) -> None:
        if msg.message_id != 0 or msg.spi_r != ZERO_SPI:
            log.info("drop IKE_SA_INIT from [%s]:%d: bad message ID or SPIr", src[0], src[1])
            return
        sa_p, ke, nonce = msg.find(SaPayload), msg.find(KePayload), msg.find(NoncePayload)
        if sa_p is None or ke is None or nonce is None:
            log.warning("IKE_SA_INIT from [%s]:%d lacks SA, KE or Nonce", src[0], src[1])
            self._plain_reply(msg, NotifyType.INVALID_SYNTAX, b"", src, dst)
            return
        if len(self._half_open) >= self.cookie_threshold:
            # 2.6: under load, state is only kept for initiators that can receive.
            expected = self._cookie_for(msg, nonce.data, src)
            got = msg.notify(NotifyType.COOKIE)
            if got is None or not hmac.compare_digest(got.data, expected):
                log.info(
                    "IKE_SA_INIT from [%s]:%d: %d half-open SAs, asking for a cookie",
                    src[0],
                    src[1],
                    len(self._half_open),
                )
                self._plain_reply(msg, NotifyType.COOKIE, expected, src, dst)
                return
        policy = self.policy_for(src, dst, None)
        if policy is None:
            log.warning("IKE_SA_INIT from [%s]:%d: no policy for this peer", src[0], src[1])
            self._plain_reply(msg, NotifyType.NO_PROPOSAL_CHOSEN, b"", src, dst)
            return
        chosen = proposals.select(sa_p.proposals, policy.ike_proposals)
        if chosen is None:
            log.warning(
                "IKE_SA_INIT from [%s]:%d: no proposal chosen (policy '%s')",
                src[0],
                src[1],
                policy.name,
            )
            self._plain_reply(msg, NotifyType.NO_PROPOSAL_CHOSEN, b"", src, dst)
            return
        suite = proposals.suite_of(chosen)
        if ke.group != suite.dh:
            # 1.2/3.4: tell the initiator which group we want; keep no state.
            log.info(
                "IKE_SA_INIT from [%s]:%d: KE group %s, asking for %s",
                src[0],
                src[1],
                DhId.name_of(ke.group),
                DhId.name_of(suite.dh),
            )
            self._plain_reply(
                msg, NotifyType.INVALID_KE_PAYLOAD, int(suite.dh).to_bytes(2, "big"), src, dst
            )
            return
        sa = IkeSa(self, policy, initiator=False, local=dst, peer=src, now=now)
        sa.spi_i = msg.spi_i
        sa.spi_r = self._new_ike_spi()
        try:
            sa._answer_init(msg, data, nonce.data, ke, chosen, suite, src, dst, now)
        except crypto.InvalidKeyExchange as e:
            log.warning("IKE_SA_INIT from [%s]:%d: invalid KE: %s", src[0], src[1], e)
            self._plain_reply(msg, NotifyType.INVALID_SYNTAX, b"", src, dst)
            return
        self.sas[sa.spi_r] = sa
        self._half_open[(sa.spi_i, src)] = sa

    def _new_ike_spi(self) -> bytes:
        while True:
            spi = self.rng(8)
            if spi != ZERO_SPI and spi not in self.sas:
                return spi
