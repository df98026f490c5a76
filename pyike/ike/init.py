"""IKE_SA_INIT (RFC 7296 1.2), both roles.

The initiator's request and what its response does (cookies 2.6, INVALID_KE 1.2,
the move to port 4500 2.23) are :class:`InitRequest`; the responder's side,
from the first datagram of an unknown peer to the answer, is
:func:`on_init_request`. Both derive SKEYSEED and SK_* (2.14) in
:func:`derive_keys` and compare NAT_DETECTION hashes in :func:`check_nat`.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyike import crypto, proposals, wire
from pyike.ike import auth, fragments, guard
from pyike.ike.common import (
    FIRST_STATUS_NOTIFY,
    NATT_PORT,
    NONCE_LEN,
    ZERO_SPI,
    Addr,
    hash_list,
    notify,
    sig_hash_notify,
)
from pyike.ike.events import IkeKeysDerived, Transmit
from pyike.ike.requests import Request, Response
from pyike.ike.sa import IkeSa
from pyike.ike.states import State
from pyike.proposals import Suite
from pyike.registry import DhId, ExchangeType, HeaderFlag, NotifyType
from pyike.wire import KePayload, Message, NoncePayload, NotifyPayload, Proposal, SaPayload

if TYPE_CHECKING:
    from pyike.ike.endpoint import Endpoint

log = logging.getLogger("pyike.ike")


# --------------------------------------------------------------------------- initiator


def start(sa: IkeSa, now: float) -> None:
    """Initiator: send the IKE_SA_INIT request (RFC 7296 1.2)."""
    groups = proposals.dh_groups(sa.policy.ike_proposals)
    sa.dh = crypto.dh_generate(DhId(groups[0]))
    sa.ni = sa.endpoint.rng(NONCE_LEN)
    InitRequest().start(sa, now)


@dataclass(eq=False)
class InitRequest(Request):
    """HDR, [N(COOKIE)], SAi1, KEi, Ni, N(NAT_DETECTION_*), [N(SIGNATURE_HASH_ALGORITHMS)]."""

    exchange = ExchangeType.IKE_SA_INIT

    def start(self, sa: IkeSa, now: float) -> None:
        assert sa.dh is not None
        payloads: list[wire.Payload] = []
        if sa.cookie:
            payloads.append(notify(NotifyType.COOKIE, sa.cookie))
        payloads += [
            SaPayload(sa.policy.ike_proposals),
            KePayload(sa.dh.group, sa.dh.public_bytes),
            NoncePayload(sa.ni),
            *nat_detection_notifies(sa, ZERO_SPI),
        ]
        if sa.policy.rfc7427:
            payloads.append(sig_hash_notify())
        if sa.policy.fragmentation:
            payloads.append(fragments.supported_notify())
        # A repeated IKE_SA_INIT (cookie, other group) keeps message ID 0 (2.6, 1.2).
        sa.window.next_id = 0
        sa.send_request(self, payloads, now, plain=True)
        sa.init_request = self.data

    def on_response(self, sa: IkeSa, response: Response, now: float) -> None:
        msg = response.msg
        cookie = msg.notify(NotifyType.COOKIE)
        if cookie is not None:
            # 2.6: repeat the request with the cookie first, all else unchanged.
            if sa.cookie == cookie.data:
                sa.close("responder repeated the same COOKIE", now)
                return
            log.info("%s: responder asked for a cookie, retrying", sa.label)
            sa.cookie = cookie.data
            InitRequest().start(sa, now)
            return
        invalid_ke = msg.notify(NotifyType.INVALID_KE_PAYLOAD)
        if invalid_ke is not None:
            group = int.from_bytes(invalid_ke.data[:2], "big") if len(invalid_ke.data) >= 2 else 0
            if (
                group not in proposals.dh_groups(sa.policy.ike_proposals)
                or (sa.dh and group == sa.dh.group)
                or group not in crypto.SUPPORTED_GROUPS
            ):
                sa.close(
                    f"responder wants DH group {DhId.name_of(group)}, which we do not offer", now
                )
                return
            log.info("%s: responder wants DH group %s, retrying", sa.label, DhId.name_of(group))
            sa.dh = crypto.dh_generate(DhId(group))
            InitRequest().start(sa, now)
            return
        for n in msg.find_all(NotifyPayload):
            if n.type < FIRST_STATUS_NOTIFY:
                sa.close(f"IKE_SA_INIT refused by peer: {NotifyType.name_of(n.type)}", now)
                return
        sa_p, ke, nonce = msg.find(SaPayload), msg.find(KePayload), msg.find(NoncePayload)
        if sa_p is None or ke is None or nonce is None or len(sa_p.proposals) != 1:
            sa.close("malformed IKE_SA_INIT response (needs one SA proposal, KE, Nonce)", now)
            return
        chosen = sa_p.proposals[0]
        if not proposals.is_acceptable_answer(chosen, sa.policy.ike_proposals):
            sa.close("responder chose a proposal we did not offer", now)
            return
        suite = proposals.suite_of(chosen)
        assert sa.dh is not None
        if ke.group != suite.dh or ke.group != sa.dh.group:
            sa.close("responder's KE group does not match the chosen proposal", now)
            return
        sa.spi_r = msg.spi_r
        sa.nr = nonce.data
        sa.init_response = response.data
        sa.peer_hashes = sig_hashes(msg)
        sa.fragmentation = sa.policy.fragmentation and fragments.offered(msg)
        sa.peer_certreqs = msg.find_all(wire.CertReqPayload)
        check_nat(sa, msg, response.src, response.dst)
        try:
            shared = sa.dh.shared(ke.data)
        except crypto.InvalidKeyExchange as e:
            sa.close(f"invalid KE from responder: {e}", now)
            return
        derive_keys(sa, suite, shared)
        sa.window.outstanding = None
        sa.window.next_id = 1
        if sa.nat_detected and sa.local[1] != NATT_PORT:
            # RFC 3948 / 7296 2.23: move to port 4500 once a NAT is seen (or forced).
            sa.local = (sa.local[0], NATT_PORT)
            sa.peer = (sa.peer[0], NATT_PORT)
        auth.AuthRequest().start(sa, now)


# --------------------------------------------------------------------------- both roles


def nat_detection_notifies(sa: IkeSa, spi_r: bytes) -> list[NotifyPayload]:
    """NAT_DETECTION_*_IP (2.23). With forced encapsulation the source hash is
    deliberately wrong, so the peer believes we are behind a NAT and both
    sides move to UDP 4500 (what iked -t and strongSwan encap=yes do)."""
    src = crypto.nat_detection_hash(sa.spi_i, spi_r, sa.local[0], sa.local[1])
    if sa.policy.force_encap:
        src = sa.endpoint.rng(len(src))
    dst = crypto.nat_detection_hash(sa.spi_i, spi_r, sa.peer[0], sa.peer[1])
    return [
        notify(NotifyType.NAT_DETECTION_SOURCE_IP, src),
        notify(NotifyType.NAT_DETECTION_DESTINATION_IP, dst),
    ]


def check_nat(sa: IkeSa, msg: Message, src: Addr, dst: Addr, *, spi_r: bytes | None = None) -> None:
    """Compare the peer's NAT_DETECTION hashes with the addresses we saw."""
    src_hashes = [
        n.data for n in msg.find_all(NotifyPayload) if n.type == NotifyType.NAT_DETECTION_SOURCE_IP
    ]
    dst_hashes = [
        n.data
        for n in msg.find_all(NotifyPayload)
        if n.type == NotifyType.NAT_DETECTION_DESTINATION_IP
    ]
    if not src_hashes and not dst_hashes:
        sa.nat_detected = sa.policy.force_encap
        return
    # The request's hashes were computed with SPIr = 0, the response's with SPIr.
    spi_r = sa.spi_r if spi_r is None else spi_r
    peer_nat = crypto.nat_detection_hash(sa.spi_i, spi_r, src[0], src[1]) not in src_hashes
    our_nat = crypto.nat_detection_hash(sa.spi_i, spi_r, dst[0], dst[1]) not in dst_hashes
    sa.nat_detected = peer_nat or our_nat or sa.policy.force_encap
    # A peer that forces UDP encapsulation (iked -t, charon encap=yes, pyike always)
    # does so by sending a NAT_DETECTION_SOURCE_IP that cannot match (RFC 7296 2.23),
    # so "the peer is behind a NAT" cannot be told apart from that. When we force
    # encapsulation anyway the finding changes nothing: only a NAT on our side, real
    # news for a home box, is worth a line then.
    findings = [
        text
        for text, found in (
            ("the peer is behind a NAT or forces UDP encapsulation", peer_nat),
            ("we are behind a NAT", our_nat),
        )
        if found
    ]
    if findings:
        quiet = sa.policy.force_encap and not our_nat
        (log.debug if quiet else log.info)("%s: NAT detection: %s", sa.label, "; ".join(findings))


def sig_hashes(msg: Message) -> set[int]:
    n = msg.notify(NotifyType.SIGNATURE_HASH_ALGORITHMS)
    return hash_list(n.data) if n is not None else set()


def derive_keys(sa: IkeSa, suite: Suite, shared: bytes) -> None:
    """SKEYSEED and SK_* (RFC 7296 2.14) and the SK payload ciphers."""
    assert suite.prf is not None
    sa.suite = suite
    sa.keys = crypto.derive_ike_keys(
        suite.prf,
        suite.encr,
        suite.key_bits,
        suite.integ,
        sa.ni,
        sa.nr,
        shared,
        sa.spi_i,
        sa.spi_r,
    )
    sa.make_ciphers()
    sa.emit(IkeKeysDerived(sa.spi_i, sa.spi_r, suite, sa.keys))


# --------------------------------------------------------------------------- responder


def plain_reply(
    endpoint: Endpoint, msg: Message, kind: NotifyType, data: bytes, src: Addr, dst: Addr
) -> None:
    """An unauthenticated IKE_SA_INIT error answer (SPIr zero, 2.6/1.2)."""
    reply = Message(
        msg.spi_i,
        ZERO_SPI,
        ExchangeType.IKE_SA_INIT,
        HeaderFlag.RESPONSE,
        0,
        [notify(kind, data)],
    )
    endpoint.transmits.append(Transmit(wire.build_message(reply), dst, src))


def cookie_for(endpoint: Endpoint, msg: Message, nonce: bytes, src: Addr) -> bytes:
    """2.6: the cookie this initiator must echo (see guard.cookie_value)."""
    return guard.cookie_value(endpoint.cookie_secret, nonce, src[0], msg.spi_i)


def on_init_request(
    endpoint: Endpoint, msg: Message, data: bytes, src: Addr, dst: Addr, now: float
) -> None:
    """Responder: an IKE_SA_INIT request from a new peer. Keeps no state until the
    initiator has shown it receives (cookie under load) and sent an acceptable KE."""
    note = endpoint.guard.note
    if msg.message_id != 0 or msg.spi_r != ZERO_SPI:
        note(
            "init_malformed",
            now,
            "drop IKE_SA_INIT from [%s]:%d: bad message ID or SPIr",
            src[0],
            src[1],
            level=logging.INFO,
        )
        return
    sa_p, ke, nonce = msg.find(SaPayload), msg.find(KePayload), msg.find(NoncePayload)
    if sa_p is None or ke is None or nonce is None:
        note("init_malformed", now, "IKE_SA_INIT from [%s]:%d lacks SA, KE or Nonce", *src)
        plain_reply(endpoint, msg, NotifyType.INVALID_SYNTAX, b"", src, dst)
        return
    if len(endpoint.half_open) >= endpoint.cookie_threshold:
        # 2.6: under load, state is only kept for initiators that can receive.
        expected = cookie_for(endpoint, msg, nonce.data, src)
        got = msg.notify(NotifyType.COOKIE)
        if got is None or not hmac.compare_digest(got.data, expected):
            note(
                "cookie_sent",
                now,
                "IKE_SA_INIT from [%s]:%d: %d half-open SAs, asking for a cookie",
                src[0],
                src[1],
                len(endpoint.half_open),
                level=logging.INFO,
            )
            plain_reply(endpoint, msg, NotifyType.COOKIE, expected, src, dst)
            return
    if len(endpoint.sas) >= endpoint.limits.ike_sas:
        note(
            "limit_ike_sas",
            now,
            "drop IKE_SA_INIT from [%s]:%d: %d IKE SAs, the limit (--limit ike_sas)",
            src[0],
            src[1],
            len(endpoint.sas),
        )
        return
    policy = endpoint.policy_for(src, dst, None)
    if policy is None:
        note("init_no_policy", now, "IKE_SA_INIT from [%s]:%d: no policy for this peer", *src)
        plain_reply(endpoint, msg, NotifyType.NO_PROPOSAL_CHOSEN, b"", src, dst)
        return
    chosen = proposals.select(sa_p.proposals, policy.ike_proposals)
    if chosen is None:
        note(
            "init_no_proposal",
            now,
            "IKE_SA_INIT from [%s]:%d: no proposal chosen (policy '%s')",
            src[0],
            src[1],
            policy.name,
        )
        plain_reply(endpoint, msg, NotifyType.NO_PROPOSAL_CHOSEN, b"", src, dst)
        return
    suite = proposals.suite_of(chosen)
    if ke.group != suite.dh:
        # 1.2/3.4: tell the initiator which group we want; keep no state.
        note(
            "init_invalid_ke",
            now,
            "IKE_SA_INIT from [%s]:%d: KE group %s, asking for %s",
            src[0],
            src[1],
            DhId.name_of(ke.group),
            DhId.name_of(suite.dh),
            level=logging.INFO,
        )
        plain_reply(
            endpoint, msg, NotifyType.INVALID_KE_PAYLOAD, int(suite.dh).to_bytes(2, "big"), src, dst
        )
        return
    sa = IkeSa(endpoint, policy, initiator=False, local=dst, peer=src, now=now)
    sa.spi_i = msg.spi_i
    sa.spi_r = endpoint.new_ike_spi()
    try:
        _answer(sa, msg, data, nonce.data, ke, chosen, suite, src, dst)
    except crypto.InvalidKeyExchange as e:
        note("init_bad_ke", now, "IKE_SA_INIT from [%s]:%d: invalid KE: %s", *src, e)
        plain_reply(endpoint, msg, NotifyType.INVALID_SYNTAX, b"", src, dst)
        return
    if len(endpoint.half_open) >= endpoint.limits.half_open:
        # The table is full of SAs whose initiators echoed a cookie (real addresses) but
        # never authenticated: the oldest makes room, so new initiators still get in.
        _key, oldest = next(iter(endpoint.half_open.items()))
        note(
            "half_open_evicted",
            now,
            "half-open table full (%d, --limit half_open): dropping the oldest, from [%s]:%d",
            len(endpoint.half_open),
            oldest.peer[0],
            oldest.peer[1],
        )
        oldest.close("half-open table full", now, error=False)
        endpoint.reap()
    endpoint.sas[sa.spi_r] = sa
    endpoint.half_open[(sa.spi_i, src)] = sa


def _answer(
    sa: IkeSa,
    msg: Message,
    data: bytes,
    ni: bytes,
    ke: KePayload,
    chosen: Proposal,
    suite: Suite,
    src: Addr,
    dst: Addr,
) -> None:
    """Responder: build the IKE_SA_INIT response and derive the keys."""
    assert sa.state == State.INIT_DONE
    sa.ni = ni
    sa.nr = sa.endpoint.rng(NONCE_LEN)
    sa.init_request = data
    sa.peer_hashes = sig_hashes(msg)
    sa.dh = crypto.dh_generate(DhId(suite.dh))
    shared = sa.dh.shared(ke.data)
    check_nat(sa, msg, src, dst, spi_r=ZERO_SPI)
    payloads: list[wire.Payload] = [
        SaPayload([Proposal(chosen.number, chosen.protocol, b"", chosen.transforms)]),
        KePayload(sa.dh.group, sa.dh.public_bytes),
        NoncePayload(sa.nr),
        *nat_detection_notifies(sa, sa.spi_r),
    ]
    if sa.policy.rfc7427:
        payloads.append(sig_hash_notify())
    if sa.policy.fragmentation and fragments.offered(msg):
        sa.fragmentation = True  # RFC 7383 2.3: answer the offer, then both may fragment
        payloads.append(fragments.supported_notify())
    if sa.policy.psk is None:
        payloads += auth.credentials(sa).certreqs()  # 3.7: the CAs we trust
    reply = Message(sa.spi_i, sa.spi_r, ExchangeType.IKE_SA_INIT, HeaderFlag.RESPONSE, 0, payloads)
    sa.init_response = wire.build_message(reply)
    sa.peer_next_id = 1
    derive_keys(sa, suite, shared)
    sa.transmit(sa.init_response, "IKE_SA_INIT res 0")
