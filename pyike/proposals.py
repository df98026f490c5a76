"""SA proposal selection (RFC 7296 sections 2.7 and 3.3).

An SA payload carries proposals; each proposal lists acceptable transforms per
transform type. The responder picks ONE proposal and ONE transform of each
type and answers with exactly that; the initiator checks that the answer is
something it offered. A proposal's transforms are ORed within a type and
ANDed across types (3.3.6).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pyike import algorithms
from pyike.registry import DhId, EncrId, EsnId, IntegId, PrfId, ProtocolId, TransformType
from pyike.wire import Proposal, Transform

# Combined-mode ciphers (RFC 5282, RFC 7634), from the one table.
AEAD = frozenset(EncrId(row.id) for row in algorithms.ENCRS if row.aead)

log = logging.getLogger("pyike.proposals")


@dataclass(frozen=True, slots=True)
class Suite:
    """The algorithms one negotiated SA uses (one transform of each type)."""

    encr: EncrId
    key_bits: int
    integ: IntegId = IntegId.NONE
    prf: PrfId | None = None  # IKE SAs only
    dh: DhId = DhId.NONE  # IKE SAs, and Child SAs with PFS
    esn: bool = False  # Child SAs only

    @property
    def aead(self) -> bool:
        return self.encr in AEAD

    def describe(self) -> str:
        """iked's wording: ``enc aes-128-gcm group curve25519 prf hmac-sha2-256``."""
        parts = [f"enc {encr_name(self.encr, self.key_bits)}"]
        if not self.aead:
            row = algorithms.integ(self.integ)
            parts.append(f"auth {row.name if row else IntegId.name_of(self.integ)}")
        if self.dh:
            parts.append(f"group {dh_name(self.dh)}")
        if self.prf is not None:
            prf_row = algorithms.prf(self.prf)
            parts.append(f"prf {prf_row.name if prf_row else PrfId.name_of(self.prf)}")
        if self.esn:
            parts.append("esn")
        return " ".join(parts)


def encr_name(encr: int, key_bits: int | None) -> str:
    """iked.conf's name for an ENCR transform (``aes-128-gcm``), else IANA's."""
    row = algorithms.encr(encr, key_bits)
    if row is not None and row.names:
        return row.name
    return f"{EncrId.name_of(encr)}/{key_bits}"


def dh_name(group: int) -> str:
    row = algorithms.group(group)
    return row.name if row is not None else DhId.name_of(group)


def servable(ttype: int, tid: int, key_bits: int | None, use: algorithms.Use) -> bool:
    """Whether pyike can serve one transform in an IKE (``Use.IKE``) or Child SA."""
    row: algorithms.EncrAlg | algorithms.IntegAlg | algorithms.PrfAlg | algorithms.GroupAlg | None
    if ttype == TransformType.ENCR:
        row = algorithms.encr(tid, key_bits)
    elif ttype == TransformType.INTEG:
        row = algorithms.integ(tid)
    elif ttype == TransformType.PRF:
        row = algorithms.prf(tid)
    elif ttype == TransformType.DH:
        row = algorithms.group(tid)
    else:
        return ttype == TransformType.ESN and tid in (EsnId.NO_ESN, EsnId.ESN)
    return row is not None and row.serves(use)


def _transform_name(t: Transform) -> str:
    if t.type == TransformType.ENCR:
        return encr_name(t.id, t.key_length)
    if t.type == TransformType.DH:
        return dh_name(t.id)
    return f"{TransformType.name_of(t.type)} {t.id}"


def from_specs(specs: Iterable[object], protocol: ProtocolId, spi: bytes = b"") -> list[Proposal]:
    """Wire proposals from config ``ProposalSpec``s (``.transforms`` = (type, id, keylen)).

    Only what pyike can serve goes on the wire (pyike.algorithms): a transform it cannot
    serve is left out, and a proposal that loses every transform of a type it lists is
    left out whole. The config parser refuses such transforms where they are written;
    this catches iked's defaults (3DES in its second IKE proposal). Proposal numbers
    stay consecutive from 1 (RFC 7296 3.3.1).
    """
    use = algorithms.Use.IKE if protocol == ProtocolId.IKE else algorithms.Use.ESP
    out: list[Proposal] = []
    for spec in specs:
        given = [Transform(t, i, k) for (t, i, k) in spec.transforms]  # type: ignore[attr-defined]
        kept = [t for t in given if servable(t.type, t.id, t.key_length, use)]
        dropped = [t for t in given if t not in kept]
        if {t.type for t in kept} != {t.type for t in given}:
            log.debug("not offering a %s proposal: nothing servable for one of its types",
                      use.value)  # fmt: skip
            continue
        if dropped:
            names = ", ".join(_transform_name(t) for t in dropped)
            log.debug("not offering %s in %s (pyike cannot serve them)", names, use.value)
        out.append(Proposal(number=len(out) + 1, protocol=protocol, spi=spi, transforms=kept))
    return out


def _by_type(p: Proposal) -> dict[int, list[Transform]]:
    table: dict[int, list[Transform]] = {}
    for t in p.transforms:
        table.setdefault(t.type, []).append(t)
    return table


def _required_types(p: Proposal, ignore_dh: bool) -> set[int]:
    """Transform types a proposal must settle (3.3.3: which types each protocol needs)."""
    types = {t.type for t in p.transforms}
    if ignore_dh:
        types.discard(TransformType.DH)
    return types


def select(
    offered: Sequence[Proposal], ours: Sequence[Proposal], *, ignore_dh: bool = False
) -> Proposal | None:
    """Responder's choice: the first offered proposal we can satisfy, in the peer's order.

    Within the chosen proposal, for each transform type the first transform
    (in the peer's order) that one of our proposals also lists is taken. The
    result carries the peer's proposal number and SPI; the caller puts its
    own SPI in. ``ignore_dh`` is for IKE_AUTH, where a Child SA proposal may
    list a DH group for later rekeys but no KE is exchanged (RFC 7296 1.2).
    """
    for theirs in offered:
        their_types = _by_type(theirs)
        for mine in ours:
            if mine.protocol != theirs.protocol:
                continue
            my_types = _by_type(mine)
            needed = _required_types(theirs, ignore_dh) | _required_types(mine, ignore_dh)
            if TransformType.ESN in needed and theirs.protocol == ProtocolId.ESP:
                # A missing ESN transform means "no ESN" (3.3.2), on either side.
                their_types.setdefault(TransformType.ESN, [Transform(TransformType.ESN, 0)])
                my_types.setdefault(TransformType.ESN, [Transform(TransformType.ESN, 0)])
            chosen: list[Transform] = []
            for ttype in sorted(needed):
                pick = next(
                    (t for t in their_types.get(ttype, []) if t in my_types.get(ttype, [])), None
                )
                if pick is None:
                    break
                chosen.append(pick)
            else:
                return Proposal(
                    number=theirs.number,
                    protocol=theirs.protocol,
                    spi=theirs.spi,
                    transforms=chosen,
                )
    return None


def is_acceptable_answer(
    answer: Proposal, ours: Sequence[Proposal], *, ignore_dh: bool = False
) -> bool:
    """Initiator's check: one transform per type, all from our proposal of that number."""
    mine = next((p for p in ours if p.number == answer.number), None)
    if mine is None or mine.protocol != answer.protocol:
        return False
    types = [t.type for t in answer.transforms]
    if len(types) != len(set(types)):
        return False
    offered = {(t.type, t.id, t.key_length) for t in mine.transforms}
    needed = _required_types(mine, ignore_dh) - {TransformType.ESN}
    if not needed <= set(types):
        return False
    return all(
        (t.type, t.id, t.key_length) in offered
        or (
            t.type == TransformType.ESN
            and t.id == EsnId.NO_ESN
            and TransformType.ESN not in {x.type for x in mine.transforms}
        )
        for t in answer.transforms
        if not (ignore_dh and t.type == TransformType.DH)
    )


def suite_of(p: Proposal) -> Suite:
    """The algorithms of a single-choice proposal (as returned by ``select``)."""
    kinds = {t.type: t for t in p.transforms}
    encr = kinds[TransformType.ENCR]
    return Suite(
        encr=EncrId(encr.id),
        key_bits=encr.key_length or 0,
        integ=IntegId(kinds[TransformType.INTEG].id)
        if TransformType.INTEG in kinds
        else IntegId.NONE,
        prf=PrfId(kinds[TransformType.PRF].id) if TransformType.PRF in kinds else None,
        dh=DhId(kinds[TransformType.DH].id) if TransformType.DH in kinds else DhId.NONE,
        esn=TransformType.ESN in kinds and kinds[TransformType.ESN].id == EsnId.ESN,
    )


def dh_groups(proposals: Iterable[Proposal]) -> list[int]:
    """Every DH group offered, in preference order, without repeats."""
    out: list[int] = []
    for p in proposals:
        for t in p.transforms:
            if t.type == TransformType.DH and t.id not in out and t.id != DhId.NONE:
                out.append(t.id)
    return out


def with_spi(proposals: Iterable[Proposal], spi: bytes) -> list[Proposal]:
    return [Proposal(p.number, p.protocol, spi, list(p.transforms)) for p in proposals]


def without_dh(proposals: Iterable[Proposal]) -> list[Proposal]:
    """Child proposals for IKE_AUTH: DH transforms removed (no KE there, 1.2)."""
    return [
        Proposal(
            p.number, p.protocol, p.spi, [t for t in p.transforms if t.type != TransformType.DH]
        )
        for p in proposals
    ]
