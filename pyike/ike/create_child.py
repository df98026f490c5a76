"""CREATE_CHILD_SA (RFC 7296 1.3): new and rekeyed Child SAs, IKE SA rekeys.

Ours: :class:`CreateChildRequest` (a new Child SA, 1.3.1, or the rekey of one,
1.3.3) and :class:`IkeRekeyRequest` (1.3.2). The peer's: :func:`on_request`.
After a rekey, :func:`child_rekey_done` and :func:`ike_rekey_done` decide who
deletes what, including simultaneous rekeys (2.8.1, 2.8.2); :func:`move_to`
hands the Child SAs to the new IKE SA (2.18).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pyike import crypto, proposals, wire
from pyike.ike import child_negotiation as negotiation
from pyike.ike.child import ChildSa
from pyike.ike.common import NONCE_LEN, ProtocolError, error_notifies, find, find_ts
from pyike.ike.events import IkeKeysDerived
from pyike.ike.informational import DeleteChildRequest
from pyike.ike.requests import Request, Response
from pyike.ike.states import ChildState, State
from pyike.proposals import Suite
from pyike.registry import DhId, ExchangeType, NotifyType, PayloadType, ProtocolId, TransformType
from pyike.wire import KePayload, Message, NoncePayload, NotifyPayload, Proposal, SaPayload

if TYPE_CHECKING:
    from pyike.ike.sa import IkeSa

log = logging.getLogger("pyike.ike")


@dataclass(slots=True)
class ChildRekey:
    """One completed Child SA rekey exchange, kept to settle collisions (2.8.1)."""

    ours: bool  # we initiated the exchange
    nonce: bytes  # the lower of its two nonces
    new: ChildSa


@dataclass(slots=True)
class IkeRekey:
    """One completed IKE SA rekey exchange, kept to settle collisions (2.8.2)."""

    ours: bool
    nonce: bytes
    new: IkeSa


# --------------------------------------------------------------------------- our requests


@dataclass(eq=False)
class CreateChildRequest(Request):
    """[N(REKEY_SA)], SA, Ni, [KEi], TSi, TSr (1.3.1, 1.3.3).

    ``old_spi_in`` names the Child SA to rekey, or is None for a new one; ``group``
    is the DH group the peer asked for with INVALID_KE_PAYLOAD.
    """

    old_spi_in: int | None
    group: int | None = None
    exchange = ExchangeType.CREATE_CHILD_SA
    moves_with_children = True
    # Chosen when sent:
    spi_in: int = 0
    offer: list[Proposal] = field(default_factory=list)
    ni: bytes = b""
    dh: crypto.DhPrivate | None = None

    def start(self, sa: IkeSa, now: float) -> None:
        old = None
        if self.old_spi_in is not None:
            old = sa.children.get(self.old_spi_in)
            if old is None or old.state != ChildState.REKEYING:
                return  # deleted, or rekeyed by the peer meanwhile
        self.spi_in = sa.endpoint.new_child_spi()
        self.offer = proposals.with_spi(sa.policy.child_proposals, self.spi_in.to_bytes(4, "big"))
        groups = proposals.dh_groups(sa.policy.child_proposals)
        group = self.group or (groups[0] if groups else None)
        self.ni = sa.endpoint.rng(NONCE_LEN)
        payloads: list[wire.Payload] = []
        if old is not None:  # the REKEY_SA SPI is the old SA's SPI as we receive it (1.3.3)
            payloads.append(
                NotifyPayload(ProtocolId.ESP, old.spi_in.to_bytes(4, "big"), NotifyType.REKEY_SA)
            )
        payloads += [SaPayload(self.offer), NoncePayload(self.ni)]
        if group:  # PFS: the policy's child proposals name a group (iked's `childsa group`)
            self.dh = crypto.dh_generate(DhId(group))
            payloads.append(KePayload(self.dh.group, self.dh.public_bytes))
        local, remote = (
            (old.ts_local, old.ts_remote)
            if old is not None
            else (sa.policy.ts_local, sa.policy.ts_remote)
        )
        payloads += negotiation.ts_payloads(local, remote, we_initiate=True)
        sa.send_request(self, payloads, now)

    def on_response(self, sa: IkeSa, response: Response, now: float) -> None:
        payloads = response.payloads
        errors = error_notifies(payloads)
        old = sa.children.get(self.old_spi_in) if self.old_spi_in is not None else None
        dh = self.dh
        if errors:
            names = ", ".join(NotifyType.name_of(n.type) for n in errors)
            group = retry_group(
                errors, proposals.dh_groups(sa.policy.child_proposals), dh.group if dh else None
            )
            if group is not None and (old is None or old.state == ChildState.REKEYING):
                log.info(
                    "%s: peer wants DH group %s for the Child SA, retrying",
                    sa.label,
                    DhId.name_of(group),
                )
                sa.window.queue.appendleft(CreateChildRequest(self.old_spi_in, group))
            elif any(n.type == NotifyType.CHILD_SA_NOT_FOUND for n in errors):
                if old is not None:
                    sa.forget_child(old.spi_in)
                    sa.child_deleted(old, "the peer no longer has it")
            elif old is not None and old.state == ChildState.REKEYING:
                sa.set_child_state(old, ChildState.ACTIVE)
                old.rekey_at = retry_later(sa, errors, now)
                log.warning(
                    "%s: peer refused the Child SA rekey (%s); next try in %.0f s",
                    sa.label,
                    names,
                    old.rekey_at - now,
                )
            return
        nonce = find(payloads, NoncePayload)
        try:
            if nonce is None:
                raise ProtocolError("rekey answer without Nonce", NotifyType.INVALID_SYNTAX)
            chosen, local, remote, wider = negotiation.accept(
                sa,
                find(payloads, SaPayload),
                find_ts(payloads, PayloadType.TSi),
                find_ts(payloads, PayloadType.TSr),
                self.offer,
            )
            shared = child_shared_secret(chosen, dh, find(payloads, KePayload))
        except ProtocolError as e:
            log.warning(
                "%s: Child SA rekey answer unusable (%s): %s; deleting it",
                sa.label,
                NotifyType.name_of(e.notify),
                e.detail,
            )
            sa.window.queue.append(DeleteChildRequest(self.spi_in))
            if old is not None and old.state == ChildState.REKEYING:
                sa.set_child_state(old, ChildState.ACTIVE)
                old.rekey_at = now + 30.0
            return
        child = negotiation.new_child(
            sa,
            chosen,
            self.spi_in,
            local,
            remote,
            self.ni,
            nonce.data,
            we_initiated=True,
            now=now,
            shared=shared,
        )
        negotiation.note_wider(sa, child, wider)
        log.info("%s: %s Child SA %s", sa.label, "rekeyed" if old else "created", child.describe())
        sa.child_created(child, replaces=old)
        if old is not None:
            child_rekey_done(sa, old, ChildRekey(True, min(self.ni, nonce.data), child), now)


@dataclass(eq=False)
class IkeRekeyRequest(Request):
    """SA (IKE, our new SPI), Ni, KEi (1.3.2)."""

    group: int | None = None  # the DH group the peer asked for with INVALID_KE_PAYLOAD
    exchange = ExchangeType.CREATE_CHILD_SA
    # Chosen when sent:
    spi: bytes = b""
    offer: list[Proposal] = field(default_factory=list)
    ni: bytes = b""
    dh: crypto.DhPrivate | None = None

    def start(self, sa: IkeSa, now: float) -> None:
        if sa.rekeyed_to is not None or sa.state != State.ESTABLISHED:
            return
        assert sa.suite is not None
        self.spi = sa.endpoint.new_ike_spi()
        # The current group first: the peer accepted it once, so no INVALID_KE round.
        group = self.group or sa.suite.dh
        dh = self.dh = crypto.dh_generate(DhId(group))
        self.ni = sa.endpoint.rng(NONCE_LEN)
        self.offer = proposals.with_spi(sa.policy.ike_proposals, self.spi)
        sa.send_request(
            self,
            [SaPayload(self.offer), NoncePayload(self.ni), KePayload(dh.group, dh.public_bytes)],
            now,
        )

    def on_response(self, sa: IkeSa, response: Response, now: float) -> None:
        payloads = response.payloads
        errors = error_notifies(payloads)
        dh = self.dh
        assert dh is not None
        sa.ike_rekey_pending = False
        if errors:
            group = retry_group(errors, proposals.dh_groups(sa.policy.ike_proposals), dh.group)
            if group is not None:
                log.info(
                    "%s: peer wants DH group %s for the IKE SA rekey, retrying",
                    sa.label,
                    DhId.name_of(group),
                )
                sa.ike_rekey_pending = True
                sa.window.queue.appendleft(IkeRekeyRequest(group))
                return
            sa.rekey_at = retry_later(sa, errors, now)
            log.warning(
                "%s: peer refused the IKE SA rekey (%s); next try in %.0f s",
                sa.label,
                ", ".join(NotifyType.name_of(n.type) for n in errors),
                sa.rekey_at - now,
            )
            return
        sa_p, nonce, ke = (
            find(payloads, SaPayload),
            find(payloads, NoncePayload),
            find(payloads, KePayload),
        )
        problem = ""
        if sa_p is None or nonce is None or ke is None or len(sa_p.proposals) != 1:
            problem = "answer lacks SA, Nonce or KE"
        elif len(sa_p.proposals[0].spi) != 8 or not proposals.is_acceptable_answer(
            sa_p.proposals[0], self.offer
        ):
            problem = "answer is not one of our proposals"
        elif ke.group != dh.group or proposals.suite_of(sa_p.proposals[0]).dh != dh.group:
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
            log.warning("%s: IKE SA rekey answer unusable: %s", sa.label, problem)
            sa.rekey_at = now + 30.0
            return
        assert sa_p is not None and nonce is not None
        chosen = sa_p.proposals[0]
        new = spawn_rekeyed(
            sa,
            True,
            self.spi,
            chosen.spi,
            proposals.suite_of(chosen),
            self.ni,
            nonce.data,
            shared,
            now,
        )
        ike_rekey_done(sa, IkeRekey(True, min(self.ni, nonce.data), new), now)


def retry_group(errors: list[NotifyPayload], offered: list[int], tried: int | None) -> int | None:
    """INVALID_KE_PAYLOAD (1.3, 3.4): the group the peer wants, if we offer it."""
    for n in errors:
        if n.type == NotifyType.INVALID_KE_PAYLOAD and len(n.data) >= 2:
            group = int.from_bytes(n.data[:2], "big")
            if group in offered and group != tried and group in crypto.SUPPORTED_GROUPS:
                return group
    return None


def retry_later(sa: IkeSa, errors: list[NotifyPayload], now: float) -> float:
    """When to try a refused rekey again: soon after TEMPORARY_FAILURE (2.25)."""
    temporary = any(n.type == NotifyType.TEMPORARY_FAILURE for n in errors)
    u = int.from_bytes(sa.endpoint.rng(2), "big") / 65536
    return now + (1.0 + 2.0 * u if temporary else 30.0)


def child_shared_secret(
    chosen: Proposal, dh: crypto.DhPrivate | None, ke: KePayload | None
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


# --------------------------------------------------------------------------- the peer's requests


def on_request(
    sa: IkeSa, msg: Message, payloads: list[wire.Payload], now: float
) -> list[wire.Payload]:
    """The peer rekeys a Child SA (1.3.3), asks for a new one (1.3.1), or
    rekeys this IKE SA (1.3.2)."""
    sa_p = find(payloads, SaPayload)
    nonce = find(payloads, NoncePayload)
    if sa_p is None or nonce is None or not sa_p.proposals:
        raise ProtocolError("CREATE_CHILD_SA without SA or Nonce", NotifyType.INVALID_SYNTAX)
    if sa.rekeyed_to is not None:
        # 2.25: this SA is on its way out; the peer must use the new one.
        raise ProtocolError("this IKE SA was rekeyed", NotifyType.TEMPORARY_FAILURE)
    if sa_p.proposals[0].protocol == ProtocolId.IKE:
        return _answer_ike_rekey(sa, sa_p, nonce, find(payloads, KePayload), now)
    rekey = next(
        (p for p in payloads if isinstance(p, NotifyPayload) and p.type == NotifyType.REKEY_SA),
        None,
    )
    old = None
    if rekey is not None:
        spi = int.from_bytes(rekey.spi, "big")
        old = sa.child_by_out_spi(spi) or sa.children.get(spi)
        if old is None:
            raise ProtocolError(
                "REKEY_SA for an unknown Child SA", NotifyType.CHILD_SA_NOT_FOUND, b""
            )
        if old.state == ChildState.DELETING:
            # 2.25.1: a rekey colliding with our DELETE of the same SA.
            raise ProtocolError(
                f"Child SA 0x{old.spi_in:08x} is being deleted", NotifyType.TEMPORARY_FAILURE
            )
    if old is None and len(sa.children) >= sa.endpoint.limits.child_sas_per_ike_sa:
        # 3.10.1: NO_ADDITIONAL_SAS, "unwilling to accept any more Child SAs on this
        # IKE SA" (a rekey replaces one, so it is always let through).
        raise ProtocolError(
            f"{len(sa.children)} Child SAs, the limit (--limit child_sas_per_ike_sa)",
            NotifyType.NO_ADDITIONAL_SAS,
        )
    chosen, local, remote = negotiation.answer(
        sa, sa_p, find_ts(payloads, PayloadType.TSi), find_ts(payloads, PayloadType.TSr)
    )
    ke = find(payloads, KePayload)
    shared = None
    reply_ke: list[wire.Payload] = []
    if ke is not None:  # PFS (1.3.1): a fresh DH for the new Child SA
        ours = proposals.dh_groups(sa.policy.child_proposals)
        if ke.group not in crypto.SUPPORTED_GROUPS or (ours and ke.group not in ours):
            wanted = (ours or proposals.dh_groups(sa.policy.ike_proposals))[0]
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
    nr = sa.endpoint.rng(NONCE_LEN)
    spi_in = sa.endpoint.new_child_spi()
    answer = Proposal(chosen.number, chosen.protocol, spi_in.to_bytes(4, "big"), chosen.transforms)
    child = negotiation.new_child(
        sa,
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
    log.info("%s: %s Child SA %s", sa.label, "rekeyed" if old else "created", child.describe())
    sa.child_created(child, replaces=old)
    if old is not None:
        child_rekey_done(sa, old, ChildRekey(False, min(nonce.data, nr), child), now)
    return [
        SaPayload([answer]),
        NoncePayload(nr),
        *reply_ke,
        *negotiation.ts_payloads(local, remote, we_initiate=False),
    ]


def refuse_while_deleting(
    sa: IkeSa, msg: Message, payloads: list[wire.Payload], now: float
) -> list[wire.Payload]:
    """2.25: no new SAs on an IKE SA we are deleting."""
    raise ProtocolError("the IKE SA is being deleted", NotifyType.TEMPORARY_FAILURE)


def _answer_ike_rekey(
    sa: IkeSa, sa_p: SaPayload, nonce: NoncePayload, ke: KePayload | None, now: float
) -> list[wire.Payload]:
    """Responder of an IKE SA rekey (1.3.2): new SPIs, keys from SK_d (2.18)."""
    chosen = proposals.select(sa_p.proposals, sa.policy.ike_proposals)
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
    nr = sa.endpoint.rng(NONCE_LEN)
    spi_r = sa.endpoint.new_ike_spi()
    new = spawn_rekeyed(sa, False, chosen.spi, spi_r, suite, nonce.data, nr, shared, now)
    ike_rekey_done(sa, IkeRekey(False, min(nonce.data, nr), new), now)
    return [
        SaPayload([Proposal(chosen.number, ProtocolId.IKE, spi_r, chosen.transforms)]),
        NoncePayload(nr),
        KePayload(dh.group, dh.public_bytes),
    ]


# --------------------------------------------------------------------------- after a rekey


def child_rekey_done(sa: IkeSa, old: ChildSa, done: ChildRekey, now: float) -> None:
    """After a rekey exchange: who deletes what (2.8, collisions 2.8.1).

    Normally the rekey's initiator deletes the old SA. When both peers rekeyed
    the same SA at once, the exchange holding the lowest of the four nonces
    made a redundant SA; its initiator deletes that one, and the other
    exchange's initiator deletes the old SA.
    """
    records = sa.child_rekeys.setdefault(old.spi_in, [])
    records.append(done)
    if len(records) == 1:
        if done.ours:
            _delete_replaced_child(sa, old, now)
        else:
            sa.set_child_state(old, ChildState.REKEYED)  # the peer deletes it
        return
    loser = min(records, key=lambda r: r.nonce)
    log.info(
        "%s: simultaneous rekey of Child SA 0x%08x; 0x%08x is redundant",
        sa.label,
        old.spi_in,
        loser.new.spi_in,
    )
    if loser.ours:
        sa.set_child_state(old, ChildState.REKEYED)  # the peer's exchange won: it deletes it
        sa.set_child_state(loser.new, ChildState.DELETING)
        sa.queue_request(DeleteChildRequest(loser.new.spi_in), now)
    else:
        _delete_replaced_child(sa, old, now)


def _delete_replaced_child(sa: IkeSa, old: ChildSa, now: float) -> None:
    sa.set_child_state(old, ChildState.DELETING)
    sa.queue_request(DeleteChildRequest(old.spi_in), now)


def spawn_rekeyed(
    sa: IkeSa,
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
    assert sa.keys is not None and sa.suite is not None and suite.prf is not None
    new = sa.successor(initiator=we_initiated, now=now)
    new.spi_i, new.spi_r = spi_i, spi_r
    new.peer_id, new.peer_id_body = sa.peer_id, sa.peer_id_body
    new.peer_hashes, new.peer_auth_method = sa.peer_hashes, sa.peer_auth_method
    new.nat_detected, new.initial_contact = sa.nat_detected, False
    new.ni, new.nr, new.suite = ni, nr, suite
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
        old_sk_d=sa.keys.sk_d,
        old_prf=sa.suite.prf,
    )
    new.make_ciphers()
    new.emit(IkeKeysDerived(spi_i, spi_r, suite, new.keys))
    new.established_at = now
    new.rekey_at = new.soft_deadline(now, sa.policy.ike_lifetime)
    sa.endpoint.sas[new.our_spi] = new
    return new


def ike_rekey_done(sa: IkeSa, done: IkeRekey, now: float) -> None:
    """After an IKE SA rekey: move the children, delete the old SA (2.18, 2.8.2)."""
    sa.ike_rekeys.append(done)
    if len(sa.ike_rekeys) == 1:
        move_to(sa, done.new, now)
        if done.ours:
            sa.delete(now, "rekeyed")
        return
    # 2.8.2: both peers rekeyed at once. The new SA with the lowest nonce is
    # redundant: its initiator deletes it; the other's initiator deletes this one.
    loser = min(sa.ike_rekeys, key=lambda r: r.nonce)
    winner = next(r for r in sa.ike_rekeys if r is not loser)
    log.info("%s: simultaneous IKE SA rekey; %s is redundant", sa.label, loser.new.label)
    if sa.rekeyed_to is not winner.new:
        source = sa.rekeyed_to or sa
        move_to(source, winner.new, now, replaces=source)
    if loser.ours:
        loser.new.delete(now, "redundant after a simultaneous rekey (RFC 7296 2.8.2)")
    else:
        sa.delete(now, "rekeyed")


def move_to(sa: IkeSa, new: IkeSa, now: float, replaces: IkeSa | None = None) -> None:
    """Hand the Child SAs of ``sa``, and requests queued for them, to ``new``."""
    log.info(
        "%s: rekeyed IKE SA, now %s (%d Child SA%s moved)",
        sa.label,
        new.label,
        len(sa.children),
        "" if len(sa.children) == 1 else "s",
    )
    new.children.update(sa.children)
    new.child_rekeys.update(sa.child_rekeys)
    sa.children, sa.child_rekeys = {}, {}
    new.window.queue.extend(sa.window.take_child_requests())
    sa.rekeyed_to, sa.rekeyed_at = new, now
    sa.emit(new.established_event(replaces=replaces or sa))
    if new.window.outstanding is None:
        new.window.done(new, now)
