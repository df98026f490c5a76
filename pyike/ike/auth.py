"""IKE_AUTH (RFC 7296 1.2, 2.15): identities, AUTH, and the first Child SA.

The initiator's request and what the responder's answer does are
:class:`AuthRequest`; the responder's side is :func:`on_auth_request`. What is
signed is :func:`auth_octets`; how the peer's AUTH is checked, :func:`verify_peer`.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pyike import authn, crypto, wire
from pyike.ike import child_negotiation as negotiation
from pyike.ike import mobike
from pyike.ike.common import (
    ProtocolError,
    error_notifies,
    find,
    find_ts,
    has_notify,
    id_text,
    notify,
)
from pyike.ike.events import InitialContact
from pyike.ike.informational import DeleteChildRequest
from pyike.ike.requests import Request, Response
from pyike.ike.states import State
from pyike.registry import AuthMethod, ExchangeType, NotifyType, PayloadType
from pyike.wire import (
    AuthPayload,
    CertPayload,
    CertReqPayload,
    IdPayload,
    Message,
    Proposal,
    SaPayload,
)

if TYPE_CHECKING:
    from pyike.ike.sa import IkeSa

log = logging.getLogger("pyike.ike")


# --------------------------------------------------------------------------- initiator


@dataclass(eq=False)
class AuthRequest(Request):
    """IDi, [CERT+], [CERTREQ], [N(INITIAL_CONTACT)], [IDr], AUTH, SAi2, TSi, TSr (1.2)."""

    exchange = ExchangeType.IKE_AUTH
    spi_in: int = 0  # the first Child SA's inbound SPI, chosen when sent
    offer: list[Proposal] = field(default_factory=list)

    def start(self, sa: IkeSa, now: float) -> None:
        self.spi_in, self.offer = negotiation.child_offer(sa)
        payloads: list[wire.Payload] = [local_id_payload(sa), *cert_payloads(sa)]
        if sa.policy.psk is None:
            payloads += credentials(sa).certreqs()
        if sa.initial_contact:
            payloads.append(notify(NotifyType.INITIAL_CONTACT))
        if sa.policy.peer_id is not None:
            payloads.append(IdPayload(PayloadType.IDr, *sa.policy.peer_id))
        payloads.append(make_auth(sa))
        payloads += [
            SaPayload(self.offer),
            *negotiation.ts_payloads(sa.policy.ts_local, sa.policy.ts_remote, we_initiate=True),
            *mobike.offer(sa),
        ]
        sa.set_state(State.AUTH_SENT)
        sa.send_request(self, payloads, now)

    def on_response(self, sa: IkeSa, response: Response, now: float) -> None:
        payloads = response.payloads
        errors = error_notifies(payloads)
        auth = find(payloads, AuthPayload)
        if auth is None:
            what = ", ".join(NotifyType.name_of(n.type) for n in errors) or "no AUTH payload"
            sa.close(f"IKE_AUTH refused by peer: {what}", now)
            return
        idr = next(
            (p for p in payloads if isinstance(p, IdPayload) and p.kind == PayloadType.IDr), None
        )
        try:
            verify_peer(sa, idr, auth, [p for p in payloads if isinstance(p, CertPayload)])
        except ProtocolError as e:
            # 2.21.2: an initiator that rejects the responder's AUTH may say so in a
            # separate INFORMATIONAL (charon does); otherwise the responder keeps an
            # established IKE SA and Child SA until its liveness check gives up.
            log.warning("%s: AUTHENTICATION_FAILED: %s", sa.label, e.detail)
            sa.close_reason = f"authentication of the peer failed: {e.detail}"
            sa.window.next_id = response.msg.message_id + 1
            sa.set_state(State.DELETING)
            AuthFailedNotice().start(sa, now)
            return
        mobike.note_peer(sa, payloads, now)
        sa.established(now)
        if errors:
            log.warning(
                "%s: Child SA refused by peer: %s",
                sa.label,
                ", ".join(NotifyType.name_of(n.type) for n in errors),
            )
            return
        try:
            chosen, local, remote, wider = negotiation.accept(
                sa,
                find(payloads, SaPayload),
                find_ts(payloads, PayloadType.TSi),
                find_ts(payloads, PayloadType.TSr),
                self.offer,
            )
        except ProtocolError as e:
            log.warning(
                "%s: Child SA answer unusable (%s): %s; deleting it",
                sa.label,
                NotifyType.name_of(e.notify),
                e.detail,
            )
            sa.window.queue.append(DeleteChildRequest(self.spi_in))
            return
        child = negotiation.new_child(
            sa, chosen, self.spi_in, local, remote, sa.ni, sa.nr, we_initiated=True, now=now
        )
        negotiation.note_wider(sa, child, wider)
        log.info("%s: created Child SA %s", sa.label, child.describe())
        sa.child_created(child)


@dataclass(eq=False)
class AuthFailedNotice(Request):
    """INFORMATIONAL N(AUTHENTICATION_FAILED): the responder's AUTH did not verify
    (2.21.2); the SA closes when it is answered or unanswered."""

    exchange = ExchangeType.INFORMATIONAL

    def start(self, sa: IkeSa, now: float) -> None:
        sa.send_request(self, [notify(NotifyType.AUTHENTICATION_FAILED)], now)

    def on_response(self, sa: IkeSa, response: Response, now: float) -> None:
        sa.close(sa.close_reason or "authentication of the peer failed", now)


# --------------------------------------------------------------------------- responder


def on_auth_request(
    sa: IkeSa, msg: Message, payloads: list[wire.Payload], now: float
) -> list[wire.Payload]:
    """Responder: verify the initiator, then answer with our AUTH and the Child SA."""
    idi = next(
        (p for p in payloads if isinstance(p, IdPayload) and p.kind == PayloadType.IDi), None
    )
    if idi is not None:
        # Choose the policy again, now that the peer's identity is known (iked does).
        better = sa.endpoint.policy_for(sa.peer, sa.local, (idi.id_type, idi.data))
        if better is not None and better is not sa.policy:
            log.debug("%s: policy '%s' chosen by peer ID", sa.label, better.name)
            sa.policy = better
    sa.peer_certreqs = [p for p in payloads if isinstance(p, CertReqPayload)]
    certs = [p for p in payloads if isinstance(p, CertPayload)]
    try:
        verify_peer(sa, idi, find(payloads, AuthPayload), certs)
    except ProtocolError as e:
        log.warning("%s: AUTHENTICATION_FAILED: %s", sa.label, e.detail)
        sa.fail_after_response = f"authentication of the peer failed: {e.detail}"
        return [notify(NotifyType.AUTHENTICATION_FAILED)]
    mobike.note_peer(sa, payloads, now)
    reply: list[wire.Payload] = [
        local_id_payload(sa),
        *cert_payloads(sa),
        make_auth(sa),
        *mobike.answer(sa),
    ]
    sa.established(now)
    if has_notify(payloads, NotifyType.INITIAL_CONTACT):
        assert sa.peer_id is not None
        sa.emit(InitialContact(sa.our_spi, sa.peer_id, sa.policy.name, sa.peer))
    sa_p = find(payloads, SaPayload)
    if sa_p is None:  # childless IKE SA (RFC 6023): nothing more to do
        return reply
    try:
        chosen, local, remote = negotiation.answer(
            sa, sa_p, find_ts(payloads, PayloadType.TSi), find_ts(payloads, PayloadType.TSr)
        )
    except ProtocolError as e:
        # 1.2: the IKE SA stands even if the Child SA is refused.
        log.warning(
            "%s: Child SA refused (%s): %s", sa.label, NotifyType.name_of(e.notify), e.detail
        )
        return [*reply, notify(e.notify, e.data)]
    spi_in = sa.endpoint.new_child_spi()
    answer = Proposal(chosen.number, chosen.protocol, spi_in.to_bytes(4, "big"), chosen.transforms)
    child = negotiation.new_child(
        sa, chosen, spi_in, local, remote, sa.ni, sa.nr, we_initiated=False, now=now
    )
    log.info("%s: created Child SA %s", sa.label, child.describe())
    sa.child_created(child)
    return [
        *reply,
        SaPayload([answer]),
        *negotiation.ts_payloads(local, remote, we_initiate=False),
    ]


# --------------------------------------------------------------------------- AUTH (2.15)


def auth_octets(sa: IkeSa, *, ours: bool) -> bytes:
    """The signed octets: our IKE_SA_INIT message, the peer's nonce, prf(SK_p, ID)."""
    assert sa.keys is not None and sa.suite is not None and sa.suite.prf is not None
    signer_is_initiator = sa.initiator if ours else not sa.initiator
    if signer_is_initiator:
        message, nonce, sk_p = sa.init_request, sa.nr, sa.keys.sk_pi
    else:
        message, nonce, sk_p = sa.init_response, sa.ni, sa.keys.sk_pr
    id_body = local_id_payload(sa).body() if ours else sa.peer_id_body
    return crypto.auth_octets(message, nonce, sa.suite.prf, sk_p, id_body)


def local_id_payload(sa: IkeSa) -> IdPayload:
    kind = PayloadType.IDi if sa.initiator else PayloadType.IDr
    return IdPayload(kind, sa.policy.local_id[0], sa.policy.local_id[1])


def make_auth(sa: IkeSa) -> AuthPayload:
    octets = auth_octets(sa, ours=True)
    p = sa.policy
    assert sa.suite is not None and sa.suite.prf is not None
    if p.psk is not None:
        return AuthPayload(AuthMethod.PSK, crypto.psk_auth(sa.suite.prf, p.psk, octets))
    try:
        # pyike.signatures picks the method from the key, ikeauth and the peer's hashes.
        return credentials(sa).sign(octets, sa.peer_hashes)
    except authn.AuthFailure as e:
        raise ProtocolError(str(e), NotifyType.AUTHENTICATION_FAILED) from None


def credentials(sa: IkeSa) -> authn.Credentials:
    """The policy's signature credentials (raw keys only when it has none)."""
    p = sa.policy
    if p.credentials is not None:
        return p.credentials
    return authn.Credentials(local_key=p.local_key, peer_key=p.peer_key, rfc7427=p.rfc7427)  # type: ignore[arg-type]


def cert_payloads(sa: IkeSa) -> list[wire.Payload]:
    """Our CERT payloads (3.6), chosen by the peer's CERTREQs; none with a shared key."""
    if sa.policy.psk is not None:
        return []
    return list(credentials(sa).certs(sa.peer_certreqs))


def verify_peer(
    sa: IkeSa,
    id_payload: IdPayload | None,
    auth: AuthPayload | None,
    certs: list[CertPayload] | None = None,
) -> None:
    """Check the peer's identity and AUTH; raises ProtocolError(AUTHENTICATION_FAILED)."""
    fail = NotifyType.AUTHENTICATION_FAILED
    if id_payload is None or auth is None:
        raise ProtocolError("IKE_AUTH without ID or AUTH payload", fail)
    peer_id = sa.peer_id = (id_payload.id_type, id_payload.data)
    sa.peer_id_body = id_payload.body()
    p = sa.policy
    if p.peer_id is not None and peer_id != p.peer_id:
        raise ProtocolError(
            f"peer ID {id_text(*peer_id)} is not the expected {id_text(*p.peer_id)}", fail
        )
    octets = auth_octets(sa, ours=False)
    assert sa.suite is not None and sa.suite.prf is not None
    sa.peer_auth_method = auth.method
    if auth.method == AuthMethod.PSK:
        if p.psk is None:
            raise ProtocolError("peer used a shared key but the policy wants signatures", fail)
        if not hmac.compare_digest(auth.data, crypto.psk_auth(sa.suite.prf, p.psk, octets)):
            raise ProtocolError("shared key AUTH does not match", fail)
        return
    if p.psk is not None:
        raise ProtocolError(
            f"peer used {AuthMethod.name_of(auth.method)} but the policy wants a shared key",
            fail,
        )
    try:
        # The key from the peer's certificate chain (checked against ca/, crls/) or
        # from pubkeys/, then its signature (pyike.authn).
        how = credentials(sa).verify(peer_id, auth, certs or [], octets)
    except authn.AuthFailure as e:
        detail = str(e) if e.names_peer else f"{id_text(*peer_id)}: {e}"
        raise ProtocolError(detail, fail) from None
    log.info("%s: peer %s authenticated: %s", sa.label, id_text(*peer_id), how)
