"""The one algorithm table (pyike.algorithms) says the truth: what it marks servable
works in crypto (SK payloads, DH) and esp, what it does not is refused by both, and
nothing unservable is ever offered on the wire (issue 9 item 5)."""

from __future__ import annotations

import os

import pytest

from pyike import algorithms, crypto, esp, proposals
from pyike.algorithms import Use
from pyike.config import default_child_proposals, default_ike_proposals, parse_config
from pyike.registry import DhId, EncrId, IntegId, PrfId, ProtocolId, TransformType

SERVED_INTEG = [i for i in algorithms.INTEGS if i.serves(Use.IKE)]


def _keys(row: algorithms.EncrAlg, integ: algorithms.IntegAlg | None) -> tuple[bytes, bytes]:
    return os.urandom(row.keymat_len), os.urandom(integ.key_len if integ else 0)


@pytest.mark.parametrize("row", algorithms.ENCRS, ids=lambda r: f"{r.name}-{r.key_bits}")
def test_ike_encryption_rows_are_what_skcipher_does(row: algorithms.EncrAlg) -> None:
    bits = row.key_bits or 0
    for integ in [None] if row.aead else SERVED_INTEG:
        integ_id = IntegId(integ.id) if integ else IntegId.NONE
        enc_key, integ_key = _keys(row, integ)
        if not row.ike:
            with pytest.raises(crypto.UnsupportedAlgorithm):
                crypto.SkCipher(EncrId.lookup(row.id), bits, integ_id, enc_key, integ_key)  # type: ignore[arg-type]
            continue
        cipher = crypto.SkCipher(EncrId(row.id), bits, integ_id, enc_key, integ_key)
        body = cipher.seal(b"header", b"payloads")
        assert len(body) == cipher.sealed_length(8)
        assert cipher.iv_length == row.iv_len
        assert cipher.open(b"header", body) == b"payloads"
        keys = crypto.derive_ike_keys(
            PrfId.HMAC_SHA2_256, EncrId(row.id), bits, integ_id, b"n" * 32, b"r" * 32,
            b"g" * 32, bytes(8), bytes(8),
        )  # fmt: skip
        assert len(keys.sk_ei) == row.keymat_len


@pytest.mark.parametrize("row", algorithms.ENCRS, ids=lambda r: f"{r.name}-{r.key_bits}")
def test_esp_encryption_rows_are_what_esp_does(row: algorithms.EncrAlg) -> None:
    bits = row.key_bits or 0
    for integ in [None] if row.aead else SERVED_INTEG:
        integ_id = integ.id if integ else IntegId.NONE
        enc_key, integ_key = _keys(row, integ)
        if not row.esp:
            with pytest.raises(ValueError):
                esp.OutboundSa(1, row.id, bits, integ_id, enc_key, integ_key)
            continue
        out = esp.OutboundSa(7, row.id, bits, integ_id, enc_key, integ_key)
        inb = esp.InboundSa(7, row.id, bits, integ_id, enc_key, integ_key)
        inner = bytes.fromhex("4500001c000000004001f9c8c0000201c6336405") + bytes(8)
        assert inb.open(out.seal(inner, 4)) == (4, inner)
        assert out.suite.iv_len == row.iv_len and out.suite.enc_key_len == row.keymat_len


@pytest.mark.parametrize("row", algorithms.GROUPS, ids=lambda g: g.name)
def test_group_rows_are_what_crypto_does(row: algorithms.GroupAlg) -> None:
    if row.kind is algorithms.GroupKind.NONE:
        return
    if not row.serves(Use.IKE):
        with pytest.raises(crypto.UnsupportedAlgorithm):
            crypto.dh_generate(DhId.lookup(row.id))  # type: ignore[arg-type]
        assert row.id not in crypto.SUPPORTED_GROUPS
        return
    a, b = crypto.dh_generate(DhId(row.id)), crypto.dh_generate(DhId(row.id))
    assert len(a.public_bytes) == row.public_len == crypto.dh_public_length(DhId(row.id))
    assert a.shared(b.public_bytes) == b.shared(a.public_bytes)
    assert row.id in crypto.SUPPORTED_GROUPS


@pytest.mark.parametrize("row", algorithms.PRFS, ids=lambda p: p.name)
def test_prf_rows_are_what_crypto_does(row: algorithms.PrfAlg) -> None:
    if not row.serves(Use.IKE):
        with pytest.raises(crypto.UnsupportedAlgorithm):
            crypto.prf(PrfId(row.id), b"k", b"d")
        return
    assert len(crypto.prf(PrfId(row.id), b"k", b"d")) == row.output_len


def test_iked_default_proposals_offer_only_what_pyike_serves() -> None:
    """iked's second default IKE proposal lists 3DES: it stays in the policy (and in
    pyike -n output, as iked prints it) but never goes on the wire."""
    ike = proposals.from_specs(default_ike_proposals(), ProtocolId.IKE)
    assert [p.number for p in ike] == [1, 2]
    offered = [(t.type, t.id, t.key_length) for p in ike for t in p.transforms]
    assert (TransformType.ENCR, EncrId.DES3, None) not in offered
    assert (TransformType.ENCR, EncrId.AES_CBC, 128) in offered
    for proposal, use in [(p, Use.IKE) for p in ike] + [
        (p, Use.ESP) for p in proposals.from_specs(default_child_proposals(), ProtocolId.ESP)
    ]:
        for t in proposal.transforms:
            assert proposals.servable(t.type, t.id, t.key_length, use), t


def test_a_proposal_left_without_a_cipher_is_not_offered() -> None:
    cfg = parse_config(
        "ikev2 esp from 192.0.2.1 to 192.0.2.2 childsa enc aes-128-ctr childsa enc aes-128-gcm\n",
        resolver=lambda name: [],
        refuse_unservable=False,
    )
    specs = cfg.policies[0].child_proposals
    assert len(specs) == 2
    (only,) = proposals.from_specs(specs, ProtocolId.ESP)
    assert only.number == 1  # renumbered from 1 (RFC 7296 3.3.1)
    assert [(t.id, t.key_length) for t in only.transforms if t.type == TransformType.ENCR] == [
        (EncrId.AES_GCM_16, 128)
    ]


def test_names_are_unique_within_each_config_table() -> None:
    for use_ike in (True, False):
        seen: list[str] = []
        for row in algorithms.ENCRS:
            if row.in_ikesa if use_ike else row.in_childsa:
                seen.extend(row.names)
        assert len(seen) == len(set(seen))
    for rows in (algorithms.INTEGS, algorithms.PRFS, algorithms.GROUPS):
        names = [n for r in rows for n in r.names]
        assert len(names) == len(set(names))


def test_aead_rows_have_icv_and_salt_and_others_have_neither() -> None:
    for row in algorithms.ENCRS:
        if row.ike or row.esp:
            if row.aead:
                assert row.icv_len == 16 and row.salt_len == 4 and row.iv_len == 8
            else:
                assert row.icv_len == 0 and row.salt_len == 0 and row.iv_len == row.block_len
