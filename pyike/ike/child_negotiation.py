"""Negotiating one Child SA, shared by IKE_AUTH and CREATE_CHILD_SA: proposals,
traffic selector narrowing (RFC 7296 2.9) and KEYMAT (2.17)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pyike import crypto, proposals, ts, wire
from pyike.ike.child import ChildSa
from pyike.ike.common import ProtocolError
from pyike.registry import NotifyType, PayloadType
from pyike.wire import Proposal, SaPayload, TrafficSelector, TsPayload

if TYPE_CHECKING:
    from pyike.ike.sa import IkeSa

log = logging.getLogger("pyike.ike")


def child_offer(sa: IkeSa) -> tuple[int, list[Proposal]]:
    """Our inbound SPI and the proposals of IKE_AUTH (no DH there, 1.2)."""
    spi_in = sa.endpoint.new_child_spi()
    props = proposals.with_spi(
        proposals.without_dh(sa.policy.child_proposals), spi_in.to_bytes(4, "big")
    )
    return spi_in, props


def answer(
    sa: IkeSa, sa_p: SaPayload | None, tsi: TsPayload | None, tsr: TsPayload | None
) -> tuple[Proposal, list[TrafficSelector], list[TrafficSelector]]:
    """Responder side: pick a proposal and narrow the selectors (2.9), or refuse."""
    if sa_p is None or tsi is None or tsr is None:
        raise ProtocolError("Child SA request lacks SA, TSi or TSr", NotifyType.INVALID_SYNTAX)
    chosen = proposals.select(sa_p.proposals, sa.policy.child_proposals, ignore_dh=True)
    if chosen is None or len(chosen.spi) != 4:
        raise ProtocolError("no acceptable Child SA proposal", NotifyType.NO_PROPOSAL_CHOSEN)
    # TSi is the exchange initiator's side: for us as responder, the remote side.
    remote = ts.narrow(tsi.selectors, sa.policy.ts_remote)
    local = ts.narrow(tsr.selectors, sa.policy.ts_local)
    if not remote or not local:
        raise ProtocolError(
            "traffic selectors outside policy: offered "
            + ", ".join(map(ts.describe, tsi.selectors))
            + " -> "
            + ", ".join(map(ts.describe, tsr.selectors)),
            NotifyType.TS_UNACCEPTABLE,
        )
    return chosen, local, remote


def accept(
    sa: IkeSa,
    sa_p: SaPayload | None,
    tsi: TsPayload | None,
    tsr: TsPayload | None,
    offered: list[Proposal],
) -> tuple[Proposal, list[TrafficSelector], list[TrafficSelector], bool]:
    """Initiator side: check the answer and intersect its selectors with ours;
    also says whether the answer was wider than the intersection.

    OpenIKED answers with its whole policy instead of narrowing, so the
    intersection is required, not just a check (2.9).
    """
    if sa_p is None or tsi is None or tsr is None or len(sa_p.proposals) != 1:
        raise ProtocolError("Child SA answer lacks SA, TSi or TSr", NotifyType.INVALID_SYNTAX)
    chosen = sa_p.proposals[0]
    if len(chosen.spi) != 4 or not proposals.is_acceptable_answer(chosen, offered, ignore_dh=True):
        raise ProtocolError(
            "peer chose a Child SA proposal we did not offer", NotifyType.NO_PROPOSAL_CHOSEN
        )
    local = ts.narrow(tsi.selectors, sa.policy.ts_local)
    remote = ts.narrow(tsr.selectors, sa.policy.ts_remote)
    if not local or not remote:
        raise ProtocolError(
            "peer's traffic selectors do not overlap ours", NotifyType.TS_UNACCEPTABLE
        )
    wider = local != tsi.selectors or remote != tsr.selectors
    return chosen, local, remote, wider


def new_child(
    sa: IkeSa,
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
    assert sa.keys is not None and sa.suite is not None and sa.suite.prf is not None
    suite = proposals.suite_of(chosen)
    k = crypto.derive_child_keys(
        sa.suite.prf, sa.keys.sk_d, ni, nr, suite.encr, suite.key_bits, suite.integ, shared
    )
    i_to_r, r_to_i = (k.ei, k.ai), (k.er, k.ar)
    key_out, key_in = (i_to_r, r_to_i) if we_initiated else (r_to_i, i_to_r)
    policy = sa.policy
    child = ChildSa(
        policy=policy.name,
        spi_in=spi_in,
        spi_out=int.from_bytes(chosen.spi, "big"),
        suite=suite,
        key_in=key_in,
        key_out=key_out,
        ts_local=local,
        ts_remote=remote,
        lifetime=policy.child_lifetime,
        lifetime_bytes=policy.child_lifetime_bytes,
        encap=sa.nat_detected,
        local=sa.local,
        remote=sa.peer,
        created=now,
        rekey_at=sa.soft_deadline(now, policy.child_lifetime),
        expire_at=now + policy.child_lifetime if policy.child_lifetime > 0 else float("inf"),
    )
    sa.children[spi_in] = child
    return child


def note_wider(sa: IkeSa, child: ChildSa, wider: bool) -> None:
    if wider:
        child.peer_ts_wider = True
        log.info(
            "%s: the peer answered wider selectors than we proposed (its whole "
            "policy?); the Child SA keeps ours",
            sa.label,
        )


def ts_payloads(
    local: list[TrafficSelector], remote: list[TrafficSelector], *, we_initiate: bool
) -> list[wire.Payload]:
    """TSi is the exchange initiator's side (2.9)."""
    tsi, tsr = (local, remote) if we_initiate else (remote, local)
    return [TsPayload(PayloadType.TSi, [*tsi]), TsPayload(PayloadType.TSr, [*tsr])]
