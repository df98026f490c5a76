"""MOBIKE (RFC 4555): moving an IKE SA and its Child SAs to other addresses.

Negotiated with MOBIKE_SUPPORTED in IKE_AUTH (3.3; `set mobike`, iked's default).
When our address changes, the original initiator (the side that decides, 3.4)
sends an INFORMATIONAL with UPDATE_SA_ADDRESSES, fresh NAT_DETECTION_*_IP and a
COOKIE2 from the new address (3.5): same SPIs, no new IKE SA. The responder lets
the IKE SA follow the authenticated request at once, but moves its ESP traffic
only after a return routability check (3.5, 5.2.5: an INFORMATIONAL with COOKIE2
to the new address, answered and authenticated), so a peer cannot point our ESP
at a third party.

Either side may also carry NAT_DETECTION_*_IP in liveness INFORMATIONALs (3.5,
3.8): the initiator compares the answer's NAT_DETECTION_DESTINATION_IP (how the
peer sees us) with the last one and, when its NAT mapping changed on an idle
tunnel, sends UPDATE_SA_ADDRESSES so that the peer's ESP follows the new mapping.

Nothing here moves an SA on an unauthenticated or malformed message: the IKE SA
code only calls these functions with decrypted, integrity-checked payloads.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pyike import crypto, wire
from pyike.ike import informational
from pyike.ike.common import IKE_PORT, Addr, has_notify, notify
from pyike.ike.events import ChildSaInfo, Event
from pyike.ike.requests import Request, Response
from pyike.ike.states import State
from pyike.registry import ExchangeType, NotifyType
from pyike.wire import Message, NotifyPayload

if TYPE_CHECKING:
    from pyike.ike.sa import IkeSa

log = logging.getLogger("pyike.ike")

COOKIE2_LEN = 16  # 8..64 octets (3.8)
NAT_HASH_LEN = 20  # SHA-1 (RFC 7296 2.23)


@dataclass(frozen=True, slots=True)
class IkeSaMoved(Event):
    """The IKE SA uses new addresses; ``children`` are its Child SAs whose ESP moved
    with it (with their new ``local``/``remote``), none before return routability."""

    spi: bytes
    local: Addr
    peer: Addr
    children: tuple[ChildSaInfo, ...] = ()


def _children(sa: IkeSa) -> tuple[ChildSaInfo, ...]:
    return tuple(c.info() for c in sa.children.values())


@dataclass(slots=True)
class MobikeState:
    negotiated: bool = False
    # The (src, dst) of the request being handled right now (its NAT-D answer and,
    # for UPDATE_SA_ADDRESSES, where the SA moves).
    pending: tuple[Addr, Addr] | None = None
    # NAT_DETECTION_DESTINATION_IP of the peer's last answer: our address as it saw it.
    seen_as: bytes = b""
    moves: int = 0  # completed moves, for logs and tests
    dropped: int = field(default=0)


# --------------------------------------------------------------------------- negotiation


def offer(sa: IkeSa) -> list[wire.Payload]:
    """IKE_AUTH request: MOBIKE_SUPPORTED if the policy allows it (3.3)."""
    return [notify(NotifyType.MOBIKE_SUPPORTED)] if sa.policy.mobike else []


def note_peer(sa: IkeSa, payloads: list[wire.Payload], now: float) -> None:
    """IKE_AUTH (either role): MOBIKE is on when both sides said so.

    An initiator behind a NAT then asks at once how the peer sees it (a liveness
    check with NAT-D right after IKE_AUTH): later checks compare with that, so a
    mapping that changes before the first idle probe is noticed too."""
    sa.mobike.negotiated = sa.policy.mobike and has_notify(payloads, NotifyType.MOBIKE_SUPPORTED)
    if sa.mobike.negotiated:
        log.debug("%s: MOBIKE negotiated", sa.label)
        if sa.initiator and _we_are_behind_nat(sa):
            sa.queue_request(NatCheckedLiveness(), now)


def _we_are_behind_nat(sa: IkeSa) -> bool:
    """The IKE_SA_INIT response's NAT_DETECTION_DESTINATION_IP (2.23) is not our own
    address: a real NAT rewrites our packets (forced encapsulation does not count)."""
    try:
        msg = wire.parse_message(sa.init_response)
    except wire.WireError:
        return False
    dsts = _notify_data(msg.payloads, NotifyType.NAT_DETECTION_DESTINATION_IP)
    if not dsts:
        return False
    ours = crypto.nat_detection_hash(sa.spi_i, sa.spi_r, sa.local[0], IKE_PORT)
    return ours not in dsts


def answer(sa: IkeSa) -> list[wire.Payload]:
    """IKE_AUTH response: MOBIKE_SUPPORTED if the initiator offered it and we allow it."""
    return [notify(NotifyType.MOBIKE_SUPPORTED)] if sa.mobike.negotiated else []


# --------------------------------------------------------------------------- NAT detection


def nat_notifies(sa: IkeSa, local: Addr, peer: Addr) -> list[wire.Payload]:
    """NAT_DETECTION_SOURCE/DESTINATION_IP for an established SA (both SPIs, 2.23)."""
    if sa.policy.force_encap:
        src = sa.endpoint.rng(20)  # keep UDP encapsulation, as in IKE_SA_INIT (SHA-1 sized)
    else:
        src = crypto.nat_detection_hash(sa.spi_i, sa.spi_r, local[0], local[1])
    dst = crypto.nat_detection_hash(sa.spi_i, sa.spi_r, peer[0], peer[1])
    return [
        notify(NotifyType.NAT_DETECTION_SOURCE_IP, src),
        notify(NotifyType.NAT_DETECTION_DESTINATION_IP, dst),
    ]


def _notify_data(payloads: list[wire.Payload], kind: NotifyType) -> list[bytes]:
    return [p.data for p in payloads if isinstance(p, NotifyPayload) and p.type == kind]


def _nat_between(sa: IkeSa, payloads: list[wire.Payload], src: Addr, dst: Addr) -> bool | None:
    """Whether the peer's NAT-D hashes disagree with the addresses the message used;
    None when it carried none (or malformed ones)."""
    srcs = _notify_data(payloads, NotifyType.NAT_DETECTION_SOURCE_IP)
    dsts = _notify_data(payloads, NotifyType.NAT_DETECTION_DESTINATION_IP)
    if not srcs or not dsts or any(len(h) != NAT_HASH_LEN for h in srcs + dsts):
        return None
    peer_nat = crypto.nat_detection_hash(sa.spi_i, sa.spi_r, src[0], src[1]) not in srcs
    our_nat = crypto.nat_detection_hash(sa.spi_i, sa.spi_r, dst[0], dst[1]) not in dsts
    return peer_nat or our_nat


def _cookie2(payloads: list[wire.Payload]) -> bytes | None:
    found = _notify_data(payloads, NotifyType.COOKIE2)
    if len(found) != 1 or not 8 <= len(found[0]) <= 64:
        return None
    return found[0]


# --------------------------------------------------------------------------- initiator


@dataclass(eq=False)
class UpdateAddressesRequest(Request):
    """INFORMATIONAL: N(UPDATE_SA_ADDRESSES), N(NAT_DETECTION_*_IP), N(COOKIE2) (3.5)."""

    exchange = ExchangeType.INFORMATIONAL
    cookie: bytes = b""
    # After a NAT mapping change: rekey the Child SAs once the update is answered.
    # OpenIKED 7.2 on Linux moves its IKE SA with UPDATE_SA_ADDRESSES but leaves
    # its kernel's outbound ESP on the old NAT port (PF_KEY SADB_UPDATE keeps the
    # encapsulation ports); the SAs of a rekey (RFC 7296 1.3.3) it installs towards
    # where it now sees us. Measured in tests/test_iked_vm_nat.py; a peer that
    # rekeys too (charon) settles the collision as 2.8.1 says.
    rekey_children: bool = False

    def start(self, sa: IkeSa, now: float) -> None:
        if sa.state != State.ESTABLISHED:
            return
        self.cookie = sa.endpoint.rng(COOKIE2_LEN)
        sa.send_request(
            self,
            [
                notify(NotifyType.UPDATE_SA_ADDRESSES),
                *nat_notifies(sa, sa.local, sa.peer),
                notify(NotifyType.COOKIE2, self.cookie),
            ],
            now,
        )

    def on_response(self, sa: IkeSa, response: Response, now: float) -> None:
        echo = _cookie2(response.payloads)
        if echo is None or not hmac.compare_digest(echo, self.cookie):
            # 3.5/3.8: the answer must echo our COOKIE2; without it, nothing moves.
            sa.mobike.dropped += 1
            log.warning("%s: UPDATE_SA_ADDRESSES answer without our COOKIE2; ignored", sa.label)
            return
        nat = _nat_between(sa, response.payloads, response.src, response.dst)
        if nat is not None:
            sa.nat_detected = nat or sa.policy.force_encap
            _note_seen_as(sa, response.payloads)
        for child in sa.children.values():
            child.local = sa.local
            child.remote = sa.peer
        sa.mobike.moves += 1
        log.info(
            "%s: moved to local [%s]:%d peer [%s]:%d (MOBIKE, same SPIs)",
            sa.label,
            sa.local[0],
            sa.local[1],
            sa.peer[0],
            sa.peer[1],
        )
        sa.emit(IkeSaMoved(sa.our_spi, sa.local, sa.peer, _children(sa)))
        if self.rekey_children:
            for spi_in in list(sa.children):
                sa.rekey_child(spi_in, now)


def move(sa: IkeSa, local: Addr, now: float) -> bool:
    """Our address changed: move ``sa`` there with UPDATE_SA_ADDRESSES (3.5).

    Returns False if MOBIKE cannot do it (not negotiated, not the original
    initiator, not established): the caller then replaces the SA as before."""
    if not sa.mobike.negotiated or not sa.initiator or sa.state != State.ESTABLISHED:
        return False
    if sa.rekeyed_to is not None:
        return False
    log.info(
        "%s: local address [%s]:%d -> [%s]:%d, sending UPDATE_SA_ADDRESSES",
        sa.label,
        sa.local[0],
        sa.local[1],
        local[0],
        local[1],
    )
    sa.local = local
    for child in sa.children.values():
        child.local = local
    r = sa.window.outstanding
    if r is not None:
        # The request in flight was stuck on the old path: resend it from here now.
        r.tries, r.sent_at = 1, now
        sa.transmit(r.data, f"{r.describe()} (address changed)")
    sa.queue_request(UpdateAddressesRequest(), now)
    return True


def _note_seen_as(sa: IkeSa, payloads: list[wire.Payload]) -> bool:
    """Remember how the peer sees us; True if that changed since the last answer."""
    dsts = _notify_data(payloads, NotifyType.NAT_DETECTION_DESTINATION_IP)
    if len(dsts) != 1 or len(dsts[0]) != NAT_HASH_LEN:
        return False
    changed = bool(sa.mobike.seen_as) and dsts[0] != sa.mobike.seen_as
    sa.mobike.seen_as = dsts[0]
    return changed


@dataclass(eq=False)
class NatCheckedLiveness(informational.LivenessRequest):
    """A liveness check (2.4) with NAT_DETECTION_*_IP (RFC 4555 3.5): the answer's
    NAT_DETECTION_DESTINATION_IP is our address as the peer sees it, so a NAT
    mapping that changed on an idle tunnel shows up here."""

    def start(self, sa: IkeSa, now: float) -> None:
        sa.send_request(self, nat_notifies(sa, sa.local, sa.peer), now)

    def on_response(self, sa: IkeSa, response: Response, now: float) -> None:
        if _note_seen_as(sa, response.payloads):
            log.info(
                "%s: the peer sees us at a new address (NAT mapping changed); "
                "sending UPDATE_SA_ADDRESSES, then rekeying the Child SAs",
                sa.label,
            )
            sa.queue_request(UpdateAddressesRequest(rekey_children=True), now)


def liveness_request(sa: IkeSa) -> informational.LivenessRequest:
    """The liveness request for ``sa``: with NAT-D when MOBIKE lets us act on it."""
    if sa.mobike.negotiated and sa.initiator:
        return NatCheckedLiveness()
    return informational.LivenessRequest()


# --------------------------------------------------------------------------- responder


def hold_move(sa: IkeSa, msg: Message, payloads: list[wire.Payload], src: Addr, dst: Addr) -> bool:
    """Called for every authenticated request before the SA follows its source.

    True under MOBIKE: addresses then change only by UPDATE_SA_ADDRESSES (3.5), which
    :func:`on_informational` handles (the IKE SA at once, the Child SAs after return
    routability); any other request is answered where it came from and moves nothing
    (charon probes a new path with an empty INFORMATIONAL before its UPDATE)."""
    sa.mobike.pending = (src, dst)
    if not sa.mobike.negotiated:
        return False
    if src != sa.peer and not (
        msg.exchange == ExchangeType.INFORMATIONAL
        and has_notify(payloads, NotifyType.UPDATE_SA_ADDRESSES)
    ):
        log.debug(
            "%s: request from [%s]:%d answered there; MOBIKE moves only on UPDATE_SA_ADDRESSES",
            sa.label,
            src[0],
            src[1],
        )
    return True


@dataclass(eq=False)
class ReturnRoutabilityRequest(Request):
    """INFORMATIONAL N(COOKIE2) to the peer's new address (3.5, 5.2.5): its
    authenticated answer with the same COOKIE2 proves the peer is there."""

    exchange = ExchangeType.INFORMATIONAL
    peer: Addr | None = None
    cookie: bytes = b""

    def start(self, sa: IkeSa, now: float) -> None:
        if sa.state != State.ESTABLISHED or sa.peer != self.peer:
            return  # moved again meanwhile: a newer check is queued
        self.cookie = sa.endpoint.rng(COOKIE2_LEN)
        sa.send_request(
            self,
            [*nat_notifies(sa, sa.local, sa.peer), notify(NotifyType.COOKIE2, self.cookie)],
            now,
        )

    def on_response(self, sa: IkeSa, response: Response, now: float) -> None:
        echo = _cookie2(response.payloads)
        if echo is None or not hmac.compare_digest(echo, self.cookie) or response.src != self.peer:
            sa.mobike.dropped += 1
            log.warning(
                "%s: return routability answer from [%s]:%d without our COOKIE2; ESP stays",
                sa.label,
                response.src[0],
                response.src[1],
            )
            return
        for child in sa.children.values():
            child.local = sa.local
            child.remote = sa.peer
        sa.mobike.moves += 1
        log.info(
            "%s: return routability to [%s]:%d confirmed; ESP moved (MOBIKE)",
            sa.label,
            sa.peer[0],
            sa.peer[1],
        )
        sa.emit(IkeSaMoved(sa.our_spi, sa.local, sa.peer, _children(sa)))


def on_informational(
    sa: IkeSa, msg: Message, payloads: list[wire.Payload], now: float
) -> list[wire.Payload]:
    """INFORMATIONAL requests under MOBIKE: UPDATE_SA_ADDRESSES (3.5), COOKIE2
    echoes (3.8) and NAT-D answers; everything else as informational.on_request."""
    if not sa.mobike.negotiated:
        return informational.on_request(sa, msg, payloads, now)
    cookie = _cookie2(payloads)
    if has_notify(payloads, NotifyType.UPDATE_SA_ADDRESSES):
        return _on_update(sa, payloads, cookie, now)
    reply = informational.on_request(sa, msg, payloads, now)
    if _notify_data(payloads, NotifyType.NAT_DETECTION_SOURCE_IP):
        # How we see the peer now (3.5): its NAT may have a new mapping.
        src, dst = sa.mobike.pending or (sa.peer, sa.local)
        reply += nat_notifies(sa, dst, src)
    if cookie is not None:
        reply.append(notify(NotifyType.COOKIE2, cookie))
    return reply


def _on_update(
    sa: IkeSa, payloads: list[wire.Payload], cookie: bytes | None, now: float
) -> list[wire.Payload]:
    src, dst = sa.mobike.pending or (sa.peer, sa.local)
    sa.mobike.pending = None
    if sa.initiator:
        # 3.4: only the original initiator moves the SA; answer, change nothing.
        sa.mobike.dropped += 1
        log.warning("%s: UPDATE_SA_ADDRESSES from the responder; ignored", sa.label)
        return [notify(NotifyType.COOKIE2, cookie)] if cookie is not None else []
    nat = _nat_between(sa, payloads, src, dst)
    if nat is not None:
        sa.nat_detected = nat or sa.policy.force_encap
    old = sa.peer
    if src != old or dst != sa.local:
        log.info(
            "%s: peer moves from [%s]:%d to [%s]:%d (UPDATE_SA_ADDRESSES)",
            sa.label,
            old[0],
            old[1],
            src[0],
            src[1],
        )
    sa.peer, sa.local = src, dst  # IKE follows the authenticated request (3.5)
    reply: list[wire.Payload] = nat_notifies(sa, sa.local, sa.peer)
    if cookie is not None:
        reply.append(notify(NotifyType.COOKIE2, cookie))
    if any(c.remote != src or c.local != dst for c in sa.children.values()):
        # ESP moves once the new address has answered us (return routability). At
        # most one check waits in the queue: a newer UPDATE retargets it.
        queued = next((r for r in sa.window.queue if isinstance(r, ReturnRoutabilityRequest)), None)
        if queued is not None:
            queued.peer = src
        else:
            sa.queue_request(ReturnRoutabilityRequest(peer=src), now)
    else:
        sa.emit(IkeSaMoved(sa.our_spi, sa.local, sa.peer))
    return reply
