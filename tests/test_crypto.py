"""Property and unit tests for pyike.crypto.

Expected values come from independent oracles (Python's stdlib hmac/hashlib,
or the cryptography primitives used directly), never from pyike itself.
Published known-answer vectors live in test_crypto_vectors.py.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import shutil
import subprocess
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyike.crypto import (
    ALGORITHM_IDENTIFIERS,
    SUPPORTED_GROUPS,
    AuthenticationError,
    CryptoError,
    IntegrityError,
    InvalidKeyExchange,
    SkCipher,
    UnsupportedAlgorithm,
    auth_method_for_key,
    auth_octets,
    derive_child_keys,
    derive_ike_keys,
    dh_from_private,
    dh_generate,
    dh_public_length,
    encr_keymat_length,
    integ_icv_length,
    integ_key_length,
    is_aead,
    modp_prime,
    nat_detection_hash,
    prf_output_length,
    prf_plus,
    psk_auth,
    sign_auth,
    verify_auth,
    verify_psk_auth,
)
from pyike.registry import AuthMethod, DhId, EncrId, HashAlgorithm, IntegId, PrfId

# Independent oracles: stdlib hash constructors per PRF / INTEG transform.
STD_HASH = {
    PrfId.HMAC_SHA1: hashlib.sha1,
    PrfId.HMAC_SHA2_256: hashlib.sha256,
    PrfId.HMAC_SHA2_384: hashlib.sha384,
    PrfId.HMAC_SHA2_512: hashlib.sha512,
}
INTEG_ORACLE = {
    # integ: (stdlib hash, key length, ICV length) per RFC 2404 / RFC 4868 2.1
    IntegId.HMAC_SHA1_96: (hashlib.sha1, 20, 12),
    IntegId.HMAC_SHA2_256_128: (hashlib.sha256, 32, 16),
    IntegId.HMAC_SHA2_384_192: (hashlib.sha384, 48, 24),
    IntegId.HMAC_SHA2_512_256: (hashlib.sha512, 64, 32),
}


def std_prf(alg: PrfId, key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, STD_HASH[alg]).digest()


def std_prf_plus(alg: PrfId, key: bytes, seed: bytes, length: int) -> bytes:
    """RFC 7296 2.13 written out again on the stdlib, as an oracle."""
    out, t, n = b"", b"", 1
    while len(out) < length:
        t = std_prf(alg, key, t + seed + bytes([n]))
        out += t
        n += 1
    return out[:length]


# --------------------------------------------------------------------------- suites

GCM_SUITES = [(EncrId.AES_GCM_16, bits, IntegId.NONE) for bits in (128, 256)]
CBC_SUITES = [(EncrId.AES_CBC, bits, integ) for bits in (128, 192, 256) for integ in INTEG_ORACLE]
CHACHA_SUITES = [(EncrId.CHACHA20_POLY1305, 0, IntegId.NONE)]  # RFC 7634: no Key Length
ALL_SUITES = GCM_SUITES + CBC_SUITES + CHACHA_SUITES


def suite_id(suite: tuple[EncrId, int, IntegId]) -> str:
    encr, bits, integ = suite
    return f"{encr.name}-{bits}-{integ.name}"


def make_cipher(suite: tuple[EncrId, int, IntegId], seed: int = 0) -> SkCipher:
    encr, bits, integ = suite
    enc_key = bytes((seed + i) % 256 for i in range(encr_keymat_length(encr, bits)))
    integ_key = bytes((seed + 7 * i) % 256 for i in range(integ_key_length(integ)))
    return SkCipher(encr, bits, integ, enc_key, integ_key)


AAD = bytes(range(28)) + b"\x2e\x00\x01\x23"  # an IKE header + SK generic header


# --------------------------------------------------------------------------- key lengths


def test_keymat_lengths() -> None:
    # RFC 4106 8.1 / RFC 5282 7.1: GCM key material = AES key + 4-octet salt.
    assert encr_keymat_length(EncrId.AES_GCM_16, 128) == 20
    assert encr_keymat_length(EncrId.AES_GCM_16, 256) == 36
    assert [encr_keymat_length(EncrId.AES_CBC, b) for b in (128, 192, 256)] == [16, 24, 32]
    # RFC 7634 3: a 32-octet key and a 4-octet salt, no Key Length attribute.
    assert encr_keymat_length(EncrId.CHACHA20_POLY1305, 0) == 36
    for integ, (std, key_len, icv_len) in INTEG_ORACLE.items():
        assert integ_key_length(integ) == key_len == std().digest_size
        assert integ_icv_length(integ) == icv_len
    assert integ_key_length(IntegId.NONE) == integ_icv_length(IntegId.NONE) == 0
    assert is_aead(EncrId.AES_GCM_16) and not is_aead(EncrId.AES_CBC)
    assert is_aead(EncrId.CHACHA20_POLY1305)
    for alg, std in STD_HASH.items():
        assert prf_output_length(alg) == std().digest_size


@pytest.mark.parametrize(
    "call",
    [
        lambda: encr_keymat_length(EncrId.AES_CBC, 64),
        lambda: encr_keymat_length(EncrId.DES3, 192),
        lambda: integ_key_length(IntegId.HMAC_MD5_96),
        lambda: prf_output_length(PrfId.AES128_XCBC),
        lambda: dh_generate(DhId.MODP_768),
        lambda: dh_public_length(DhId.CURVE448),
        lambda: SkCipher(EncrId.AES_CTR, 128, IntegId.HMAC_SHA2_256_128, bytes(20), bytes(32)),
        # RFC 7296 3.3: a combined-mode cipher takes no INTEG transform.
        lambda: SkCipher(EncrId.AES_GCM_16, 128, IntegId.HMAC_SHA2_256_128, bytes(20), bytes(32)),
        lambda: SkCipher(EncrId.AES_CBC, 128, IntegId.NONE, bytes(16), b""),
    ],
)
def test_unsupported_algorithms_are_refused(call: Callable[[], object]) -> None:
    with pytest.raises(UnsupportedAlgorithm):
        call()


def test_skcipher_refuses_wrong_key_lengths() -> None:
    with pytest.raises(CryptoError):
        SkCipher(EncrId.AES_GCM_16, 128, IntegId.NONE, bytes(16), b"")  # salt missing
    with pytest.raises(CryptoError):
        SkCipher(EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_256_128, bytes(32), bytes(31))


# --------------------------------------------------------------------------- prf+


@pytest.mark.parametrize("alg", list(STD_HASH))
def test_prf_plus_matches_rfc7296_construction(alg: PrfId) -> None:
    key, seed = b"K" * 24, b"seed-octets"
    for length in (0, 1, 19, 20, 21, 64, 65, 300):
        assert prf_plus(alg, key, seed, length) == std_prf_plus(alg, key, seed, length)


@pytest.mark.parametrize("alg", list(STD_HASH))
def test_prf_plus_iteration_limit(alg: PrfId) -> None:
    """RFC 7296 2.13: the counter is one octet, so at most 255 blocks."""
    block = prf_output_length(alg)
    longest = prf_plus(alg, b"k", b"s", 255 * block)
    assert len(longest) == 255 * block
    assert longest == std_prf_plus(alg, b"k", b"s", 255 * block)
    with pytest.raises(CryptoError):
        prf_plus(alg, b"k", b"s", 255 * block + 1)
    with pytest.raises(CryptoError):
        prf_plus(alg, b"k", b"s", -1)


@given(st.binary(max_size=40), st.binary(max_size=40), st.integers(0, 400))
@settings(max_examples=60, deadline=None)
def test_prf_plus_property(key: bytes, seed: bytes, length: int) -> None:
    out = prf_plus(PrfId.HMAC_SHA2_256, key, seed, length)
    assert out == std_prf_plus(PrfId.HMAC_SHA2_256, key, seed, length)


# --------------------------------------------------------------------------- IKE / child keys

PRFS = [PrfId.HMAC_SHA2_256, PrfId.HMAC_SHA2_384, PrfId.HMAC_SHA2_512, PrfId.HMAC_SHA1]
NI, NR = b"\x11" * 32, b"\x22" * 32
SPI_I, SPI_R = bytes.fromhex("0102030405060708"), bytes.fromhex("a1a2a3a4a5a6a7a8")
GIR = b"\x5a" * 48


@pytest.mark.parametrize("prf_alg", PRFS)
@pytest.mark.parametrize("suite", ALL_SUITES, ids=suite_id)
def test_derive_ike_keys(prf_alg: PrfId, suite: tuple[EncrId, int, IntegId]) -> None:
    """RFC 7296 2.14: SKEYSEED = prf(Ni | Nr, g^ir); {SK_d|SK_ai|SK_ar|SK_ei|SK_er|SK_pi|SK_pr}
    = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)."""
    encr, bits, integ = suite
    keys = derive_ike_keys(prf_alg, encr, bits, integ, NI, NR, GIR, SPI_I, SPI_R)
    prf_len = STD_HASH[prf_alg]().digest_size
    a_len = INTEG_ORACLE[integ][1] if integ != IntegId.NONE else 0
    e_len = bits // 8 + (4 if encr == EncrId.AES_GCM_16 else 0)
    if encr == EncrId.CHACHA20_POLY1305:
        e_len = 32 + 4  # RFC 7634 3: key and salt
    lengths = [prf_len, a_len, a_len, e_len, e_len, prf_len, prf_len]

    skeyseed = std_prf(prf_alg, NI + NR, GIR)
    stream = std_prf_plus(prf_alg, skeyseed, NI + NR + SPI_I + SPI_R, sum(lengths))
    got = [keys.sk_d, keys.sk_ai, keys.sk_ar, keys.sk_ei, keys.sk_er, keys.sk_pi, keys.sk_pr]
    assert keys.skeyseed == skeyseed
    assert [len(k) for k in got] == lengths
    assert b"".join(got) == stream


def test_derive_ike_keys_rekey_uses_old_sk_d_and_old_prf() -> None:
    """RFC 7296 2.18: SKEYSEED = prf_old(SK_d_old, g^ir_new | Ni | Nr); prf+ uses the new PRF."""
    old_sk_d = b"\x33" * 48
    keys = derive_ike_keys(
        PrfId.HMAC_SHA2_256,
        EncrId.AES_GCM_16,
        256,
        IntegId.NONE,
        NI,
        NR,
        GIR,
        SPI_I,
        SPI_R,
        old_sk_d=old_sk_d,
        old_prf=PrfId.HMAC_SHA2_384,
    )
    skeyseed = std_prf(PrfId.HMAC_SHA2_384, old_sk_d, GIR + NI + NR)
    assert keys.skeyseed == skeyseed
    assert keys.sk_d == std_prf_plus(PrfId.HMAC_SHA2_256, skeyseed, NI + NR + SPI_I + SPI_R, 32)
    # Without old_prf the current PRF keys SKEYSEED too.
    same_prf = derive_ike_keys(
        PrfId.HMAC_SHA2_256, EncrId.AES_GCM_16, 256, IntegId.NONE, NI, NR, GIR, SPI_I, SPI_R,
        old_sk_d=old_sk_d,
    )  # fmt: skip
    assert same_prf.skeyseed == std_prf(PrfId.HMAC_SHA2_256, old_sk_d, GIR + NI + NR)
    with pytest.raises(CryptoError):
        derive_ike_keys(
            PrfId.HMAC_SHA2_256, EncrId.AES_GCM_16, 256, IntegId.NONE, NI, NR, GIR, SPI_I, SPI_R,
            old_prf=PrfId.HMAC_SHA2_256,
        )  # fmt: skip


@pytest.mark.parametrize("pfs", [False, True])
@pytest.mark.parametrize("suite", ALL_SUITES, ids=suite_id)
def test_derive_child_keys(suite: tuple[EncrId, int, IntegId], pfs: bool) -> None:
    """RFC 7296 2.17: KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr), taken as
    encr_i, integ_i, encr_r, integ_r."""
    encr, bits, integ = suite
    sk_d = b"\x44" * 32
    shared = b"\x66" * 32 if pfs else None
    keys = derive_child_keys(PrfId.HMAC_SHA2_256, sk_d, NI, NR, encr, bits, integ, shared)
    e_len = encr_keymat_length(encr, bits)
    a_len = integ_key_length(integ)
    seed = (shared or b"") + NI + NR
    stream = std_prf_plus(PrfId.HMAC_SHA2_256, sk_d, seed, 2 * (e_len + a_len))
    assert keys.ei == stream[:e_len]
    assert keys.ai == stream[e_len : e_len + a_len]
    assert keys.er == stream[e_len + a_len : 2 * e_len + a_len]
    assert keys.ar == stream[2 * e_len + a_len :]


# --------------------------------------------------------------------------- Diffie-Hellman


@pytest.mark.parametrize("group", sorted(SUPPORTED_GROUPS), ids=lambda g: DhId.name_of(g))
def test_dh_two_party_agreement(group: DhId) -> None:
    a, b = dh_generate(group), dh_generate(group)
    assert a.group == b.group == group
    assert len(a.public_bytes) == len(b.public_bytes) == dh_public_length(group)
    secret = a.shared(b.public_bytes)
    assert secret == b.shared(a.public_bytes)
    assert secret != dh_generate(group).shared(b.public_bytes)
    # RFC 7296 2.14 / RFC 5903 7: MODP secrets are as long as the prime,
    # ECP secrets are the x coordinate alone.
    expected_len = dh_public_length(group) // (2 if group in ECP_GROUPS else 1)
    assert len(secret) == expected_len


ECP_GROUPS = (DhId.ECP_256, DhId.ECP_384, DhId.ECP_521)
MODP_GROUPS = (
    DhId.MODP_1024, DhId.MODP_1536, DhId.MODP_2048, DhId.MODP_3072, DhId.MODP_4096,
    DhId.MODP_6144, DhId.MODP_8192,
)  # fmt: skip
MODP_BITS = {2: 1024, 5: 1536, 14: 2048, 15: 3072, 16: 4096, 17: 6144, 18: 8192}


def _miller_rabin(n: int, bases: tuple[int, ...] = (3, 5, 7)) -> bool:
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in bases:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


@pytest.mark.parametrize("group", MODP_GROUPS, ids=lambda g: DhId.name_of(g))
def test_modp_primes_are_the_rfc_safe_primes(group: DhId) -> None:
    """RFC 2409 6.2 / RFC 3526: p is a safe prime whose top and bottom 64 bits are
    all ones (p = 2^n - 2^(n-64) - 1 + 2^64 * (...)); a transcription slip would
    almost surely make it composite."""
    prime = modp_prime(group)
    bits = dh_public_length(group) * 8
    assert prime.bit_length() == bits == MODP_BITS[group]
    assert prime >> (bits - 64) == prime & (2**64 - 1) == 2**64 - 1
    if bits <= 4096:  # 11 s for 8192 bits; the pi-formula test pins every prime exactly
        assert _miller_rabin(prime) and _miller_rabin((prime - 1) // 2)


def _pi_times_2_to(n: int) -> int:
    """floor(pi * 2^n), by Machin's formula in integers (with guard bits)."""
    guard = 64
    one = 1 << (n + guard)

    def arctan_inv(x: int) -> int:  # arctan(1/x) * one
        total, term, k, sign = 0, one // x, 1, 1
        while term:
            total += sign * (term // k)
            term //= x * x
            k += 2
            sign = -sign
        return total

    return (16 * arctan_inv(5) - 4 * arctan_inv(239)) >> guard


# RFC 2409 6.2 and RFC 3526 2-7 define each prime as
# p = 2^n - 2^(n-64) - 1 + 2^64 * (floor(2^(n-130) * pi) + k), publishing k.
MODP_PI_OFFSETS = {
    DhId.MODP_1024: 129093, DhId.MODP_1536: 741804, DhId.MODP_2048: 124476,
    DhId.MODP_3072: 1690314, DhId.MODP_4096: 240904, DhId.MODP_6144: 929484,
    DhId.MODP_8192: 4743158,
}  # fmt: skip


@pytest.mark.parametrize("group", MODP_GROUPS, ids=lambda g: DhId.name_of(g))
def test_modp_primes_follow_the_rfc_pi_formula(group: DhId) -> None:
    n = MODP_BITS[group]
    k = MODP_PI_OFFSETS[group]
    expected = 2**n - 2 ** (n - 64) - 1 + 2**64 * (_pi_times_2_to(n - 130) + k)
    assert modp_prime(group) == expected


OPENSSL = shutil.which("openssl")


@pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")
@pytest.mark.parametrize("group", [DhId.MODP_2048, DhId.MODP_8192], ids=DhId.name_of)
def test_modp_public_value_matches_openssl(group: DhId) -> None:
    """An independent implementation: OpenSSL's key in the same RFC 3526 group,
    its private exponent fed to dh_from_private, must give OpenSSL's public value."""
    assert OPENSSL is not None
    name = f"group:modp_{MODP_BITS[group]}"
    pem = subprocess.run(
        [OPENSSL, "genpkey", "-algorithm", "DH", "-pkeyopt", name],
        capture_output=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    text = subprocess.run(
        [OPENSSL, "pkey", "-text", "-noout"], input=pem, capture_output=True, check=True,
        timeout=60,
    ).stdout.decode()  # fmt: skip

    def field(label: str) -> bytes:
        block = text.split(label + ":", 1)[1].split("\n")
        hex_lines = []
        for line in block[1:]:
            if not line.startswith("    "):
                break
            hex_lines.append(line.strip().replace(":", ""))
        return bytes.fromhex("".join(hex_lines))

    x, y = field("private-key"), field("public-key")
    ours = dh_from_private(group, x)
    assert ours.public_bytes == y.lstrip(b"\0").rjust(dh_public_length(group), b"\0")
    # And the other direction of the exchange: OpenSSL's y is a valid peer value.
    peer = dh_generate(group)
    assert peer.shared(ours.public_bytes) == ours.shared(peer.public_bytes)


def test_modp_exponents_are_short_and_fresh() -> None:
    """SP 800-56A 5.6.1.1.4: exponents of 2 * security strength bits, new each time."""
    a, b = dh_generate(DhId.MODP_8192), dh_generate(DhId.MODP_8192)
    assert a.public_bytes != b.public_bytes
    assert 2 < a._x < 2**400  # type: ignore[attr-defined]


def test_modp_known_exponent_public_value() -> None:
    """dh_from_private(MODP) uses the big-endian exponent with generator 2 (RFC 3526)."""
    key = dh_from_private(DhId.MODP_2048, (1000).to_bytes(2, "big"))
    prime = modp_prime(DhId.MODP_2048)
    assert key.public_bytes == pow(2, 1000, prime).to_bytes(256, "big")


# Curve25519 points of small order (the list published with Curve25519 at
# cr.yp.to/ecdh.html, including u = 0 and u = 1 and non-canonical encodings):
# X25519 with any of them gives the all-zero secret that RFC 8031 2 refuses.
X25519_LOW_ORDER = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
]


@pytest.mark.parametrize("point", X25519_LOW_ORDER)
def test_x25519_low_order_points_refused(point: str) -> None:
    with pytest.raises(InvalidKeyExchange):
        dh_generate(DhId.CURVE25519).shared(bytes.fromhex(point))


def _p521_prime() -> int:
    return 2**521 - 1  # FIPS 186-4 D.1.2.5: P-521's field is the Mersenne prime


@pytest.mark.parametrize("group", ECP_GROUPS, ids=lambda g: DhId.name_of(g))
def test_ecp_invalid_points_refused(group: DhId) -> None:
    ours, peer = dh_generate(group), dh_generate(group)
    good = peer.public_bytes
    size = len(good) // 2
    off_curve = good[:-1] + bytes([good[-1] ^ 0x01])  # y changed: not on the curve
    candidates = [
        off_curve,
        bytes(len(good)),  # (0, 0)
        good[:-1],
        good + b"\x00",
        b"\x04" + good,  # SEC 1 prefix is not part of IKEv2 KE data (RFC 5903 7)
        good[:size],
    ]
    for bad in candidates:
        with pytest.raises(InvalidKeyExchange):
            ours.shared(bad)
    if group == DhId.ECP_521:
        # x + p encodes in 66 octets but is not a field element.
        x = int.from_bytes(good[:size], "big") + _p521_prime()
        with pytest.raises(InvalidKeyExchange):
            ours.shared(x.to_bytes(size, "big") + good[size:])


@pytest.mark.parametrize("group", ECP_GROUPS, ids=lambda g: DhId.name_of(g))
@given(data=st.data())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_ecp_random_points_refused(group: DhId, data: st.DataObject) -> None:
    blob = data.draw(st.binary(min_size=dh_public_length(group), max_size=dh_public_length(group)))
    with pytest.raises(InvalidKeyExchange):
        _ECP_KEYS[group].shared(blob)


_ECP_KEYS = {group: dh_generate(group) for group in ECP_GROUPS}


@pytest.mark.parametrize("group", MODP_GROUPS, ids=lambda g: DhId.name_of(g))
def test_modp_invalid_public_values_refused(group: DhId) -> None:
    """RFC 6989 2.1: 1 < y < p-1; and the KE data has the prime's length (RFC 7296 3.4)."""
    ours = dh_generate(group)
    size = dh_public_length(group)
    prime = modp_prime(group)
    for y in (0, 1, prime - 1, prime, prime + 1, 2 ** (8 * size) - 1):
        with pytest.raises(InvalidKeyExchange):
            ours.shared(y.to_bytes(size, "big"))
    good = dh_generate(group).public_bytes
    for bad in (good[1:], b"\x00" + good, b""):
        with pytest.raises(InvalidKeyExchange):
            ours.shared(bad)


def test_x25519_wrong_length_refused() -> None:
    ours, peer = dh_generate(DhId.CURVE25519), dh_generate(DhId.CURVE25519)
    for bad in (peer.public_bytes[:-1], peer.public_bytes + b"\x00", b""):
        with pytest.raises(InvalidKeyExchange):
            ours.shared(bad)


def test_dh_from_private_refuses_bad_private_values() -> None:
    for group, private in [
        (DhId.ECP_256, bytes(32)),  # scalar 0
        (DhId.ECP_256, b"\xff" * 32),  # scalar >= n
        (DhId.CURVE25519, bytes(31)),
        (DhId.MODP_2048, b"\x01"),
        (DhId.MODP_8192, b"\x00"),
    ]:
        with pytest.raises(CryptoError):
            dh_from_private(group, private)


# --------------------------------------------------------------------------- SkCipher


@pytest.mark.parametrize("suite", ALL_SUITES, ids=suite_id)
def test_skcipher_round_trip_all_lengths(suite: tuple[EncrId, int, IntegId]) -> None:
    cipher = make_cipher(suite)
    for n in range(301):
        plain = os.urandom(n)
        body = cipher.seal(AAD, plain)
        assert len(body) == cipher.sealed_length(n)
        if suite[0] == EncrId.AES_CBC:
            assert (len(body) - cipher.iv_length - cipher.icv_length) % 16 == 0
        else:
            # RFC 5282: no padding, one Pad Length octet, 8-octet IV, 16-octet ICV.
            assert len(body) == 8 + n + 1 + 16
        assert cipher.open(AAD, body) == plain


@pytest.mark.parametrize("suite", GCM_SUITES, ids=suite_id)
def test_gcm_format_matches_rfc5282(suite: tuple[EncrId, int, IntegId]) -> None:
    """Decrypt with AESGCM directly: nonce = salt | IV, AAD = header octets,
    plaintext = payloads | Pad Length 0 (RFC 5282 3-5)."""
    encr, bits, _ = suite
    key = os.urandom(encr_keymat_length(encr, bits))
    cipher = SkCipher(encr, bits, IntegId.NONE, key, b"")
    body = cipher.seal(AAD, b"inner payloads")
    iv = body[:8]
    plain = AESGCM(key[:-4]).decrypt(key[-4:] + iv, body[8:], AAD)
    assert plain == b"inner payloads\x00"


@pytest.mark.parametrize("suite", CBC_SUITES, ids=suite_id)
def test_cbc_format_matches_rfc7296(suite: tuple[EncrId, int, IntegId]) -> None:
    """ICV = truncated HMAC(aad | IV | ciphertext); padding fills the last block."""
    encr, bits, integ = suite
    std, key_len, icv_len = INTEG_ORACLE[integ]
    enc_key, integ_key = os.urandom(bits // 8), os.urandom(key_len)
    cipher = SkCipher(encr, bits, integ, enc_key, integ_key)
    body = cipher.seal(AAD, b"x" * 20)
    covered, icv = body[:-icv_len], body[-icv_len:]
    assert icv == hmac.new(integ_key, AAD + covered, std).digest()[:icv_len]
    decryptor = Cipher(algorithms.AES(enc_key), modes.CBC(covered[:16])).decryptor()
    padded = decryptor.update(covered[16:]) + decryptor.finalize()
    assert len(padded) == 32 and padded[:20] == b"x" * 20 and padded[-1] == 11


@pytest.mark.parametrize("suite", ALL_SUITES, ids=suite_id)
def test_skcipher_any_tampered_byte_fails(suite: tuple[EncrId, int, IntegId]) -> None:
    cipher = make_cipher(suite)
    body = cipher.seal(AAD, b"some inner payloads, 37 octets long!!")
    for i in range(len(body)):
        tampered = bytearray(body)
        tampered[i] ^= 0x80
        with pytest.raises(IntegrityError):
            cipher.open(AAD, bytes(tampered))
    for i in range(len(AAD)):
        aad = bytearray(AAD)
        aad[i] ^= 0x01
        with pytest.raises(IntegrityError):
            cipher.open(bytes(aad), body)
    with pytest.raises(IntegrityError):
        make_cipher(suite, seed=1).open(AAD, body)  # another key


@pytest.mark.parametrize("suite", ALL_SUITES, ids=suite_id)
def test_skcipher_truncated_or_extended_body_fails(suite: tuple[EncrId, int, IntegId]) -> None:
    cipher = make_cipher(suite)
    body = cipher.seal(AAD, b"y" * 40)
    for n in range(len(body)):
        with pytest.raises(IntegrityError):
            cipher.open(AAD, body[:n])
    for extra in (b"\x00", b"\x00" * 16):
        with pytest.raises(IntegrityError):
            cipher.open(AAD, body + extra)


@pytest.mark.parametrize("suite", ALL_SUITES, ids=suite_id)
@given(body=st.binary(max_size=200))
@settings(max_examples=100, deadline=None)
def test_skcipher_open_random_bytes(suite: tuple[EncrId, int, IntegId], body: bytes) -> None:
    with pytest.raises(IntegrityError):
        _CIPHERS[suite_id(suite)].open(AAD, body)


_CIPHERS = {suite_id(s): make_cipher(s) for s in ALL_SUITES}


def test_chacha20_format_matches_rfc7634() -> None:
    """Decrypt with a bare ChaCha20Poly1305: nonce = salt | IV, AAD = header octets,
    plaintext = payloads | Pad Length 0 (RFC 7634 3, as RFC 5282)."""
    key = os.urandom(36)
    cipher = SkCipher(EncrId.CHACHA20_POLY1305, 0, IntegId.NONE, key, b"")
    body = cipher.seal(AAD, b"inner payloads")
    plain = ChaCha20Poly1305(key[:32]).decrypt(key[32:] + body[:8], body[8:], AAD)
    assert plain == b"inner payloads\x00"
    with pytest.raises(UnsupportedAlgorithm):  # RFC 7634 2: no Key Length attribute
        SkCipher(EncrId.CHACHA20_POLY1305, 256, IntegId.NONE, key, b"")


def test_gcm_bad_pad_length_fails() -> None:
    """A correctly authenticated plaintext whose Pad Length overruns it is refused."""
    key = os.urandom(20)
    cipher = SkCipher(EncrId.AES_GCM_16, 128, IntegId.NONE, key, b"")
    iv = b"\x00" * 8
    body = iv + AESGCM(key[:-4]).encrypt(key[-4:] + iv, b"abc\x04", AAD)
    with pytest.raises(IntegrityError):
        cipher.open(AAD, body)
    good = iv + AESGCM(key[:-4]).encrypt(key[-4:] + iv, b"abc\x02", AAD)
    assert cipher.open(AAD, good) == b"a"  # RFC 7296 3.14: padding may be any length


def test_cbc_bad_pad_length_fails() -> None:
    enc_key, integ_key = os.urandom(16), os.urandom(32)
    cipher = SkCipher(EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128, enc_key, integ_key)
    iv = os.urandom(16)
    encryptor = Cipher(algorithms.AES(enc_key), modes.CBC(iv)).encryptor()
    ct = encryptor.update(b"\x00" * 15 + b"\x10") + encryptor.finalize()  # Pad Length 16 > 15
    icv = hmac.new(integ_key, AAD + iv + ct, hashlib.sha256).digest()[:16]
    with pytest.raises(IntegrityError):
        cipher.open(AAD, iv + ct + icv)


def test_gcm_iv_never_repeats() -> None:
    cipher = make_cipher(GCM_SUITES[0])
    ivs = [cipher.seal(AAD, b"m")[:8] for _ in range(20000)]
    assert len(set(ivs)) == len(ivs)
    # Each object starts its counter at its own random value, so two objects
    # sharing a key by mistake still do not start on the same IV.
    starts = {make_cipher(GCM_SUITES[0]).seal(AAD, b"")[:8] for _ in range(50)}
    assert len(starts) == 50


def test_explicit_iv() -> None:
    gcm = make_cipher(GCM_SUITES[1])
    body = gcm.seal(AAD, b"payload", iv=b"\x01" * 8)
    assert body[:8] == b"\x01" * 8 and gcm.open(AAD, body) == b"payload"
    cbc = make_cipher(CBC_SUITES[0])
    body = cbc.seal(AAD, b"payload", iv=b"\x02" * 16)
    assert body[:16] == b"\x02" * 16 and cbc.open(AAD, body) == b"payload"
    with pytest.raises(CryptoError):
        gcm.seal(AAD, b"", iv=b"\x00" * 12)
    with pytest.raises(CryptoError):
        cbc.seal(AAD, b"", iv=b"\x00" * 8)


def test_cbc_random_iv() -> None:
    cbc = make_cipher(CBC_SUITES[-1])
    assert len({cbc.seal(AAD, b"same")[:16] for _ in range(100)}) == 100


# --------------------------------------------------------------------------- AUTH

CURVES = {
    AuthMethod.ECDSA_SHA256_P256: ec.SECP256R1(),
    AuthMethod.ECDSA_SHA384_P384: ec.SECP384R1(),
    AuthMethod.ECDSA_SHA512_P521: ec.SECP521R1(),
}
KEYS = {method: ec.generate_private_key(curve) for method, curve in CURVES.items()}
OCTETS = b"IKE_SA_INIT message | peer nonce | prf(SK_p, IDx')"


def test_auth_octets_layout() -> None:
    """RFC 7296 2.15: InitiatorSignedOctets = RealMessage1 | NonceRData | MACedIDForI."""
    id_body = bytes([2, 0, 0, 0]) + b"home.example"
    got = auth_octets(b"MSG", b"NONCE", PrfId.HMAC_SHA2_384, b"skp" * 16, id_body)
    assert got == b"MSG" + b"NONCE" + std_prf(PrfId.HMAC_SHA2_384, b"skp" * 16, id_body)


def test_psk_auth() -> None:
    """RFC 7296 2.15: AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), <octets>)."""
    inner = std_prf(PrfId.HMAC_SHA2_256, b"secret", b"Key Pad for IKEv2")
    expected = std_prf(PrfId.HMAC_SHA2_256, inner, OCTETS)
    assert psk_auth(PrfId.HMAC_SHA2_256, b"secret", OCTETS) == expected
    verify_psk_auth(PrfId.HMAC_SHA2_256, b"secret", OCTETS, expected)
    for bad in (expected[:-1], b"", bytes(len(expected))):
        with pytest.raises(AuthenticationError):
            verify_psk_auth(PrfId.HMAC_SHA2_256, b"secret", OCTETS, bad)
    with pytest.raises(AuthenticationError):
        verify_psk_auth(PrfId.HMAC_SHA2_256, b"other", OCTETS, expected)


@pytest.mark.parametrize("method", list(CURVES), ids=lambda m: f"method{int(m)}")
def test_rfc4754_sign_verify(method: AuthMethod) -> None:
    key = KEYS[method]
    assert auth_method_for_key(key) == auth_method_for_key(key.public_key()) == method
    data = sign_auth(method, key, OCTETS)
    size = (key.curve.key_size + 7) // 8
    assert len(data) == 2 * size  # RFC 4754 7: r | s, each the curve's octet length
    verify_auth(method, key.public_key(), OCTETS, data)
    with pytest.raises(AuthenticationError):
        verify_auth(method, key.public_key(), OCTETS + b"x", data)
    with pytest.raises(AuthenticationError):
        verify_auth(method, key.public_key(), OCTETS, data[:-1])
    # The curve must match the method, both ways.
    other = next(m for m in CURVES if m != method)
    with pytest.raises(AuthenticationError):
        verify_auth(other, key.public_key(), OCTETS, data)
    with pytest.raises(CryptoError):
        sign_auth(other, key, OCTETS)


@pytest.mark.parametrize("method", list(CURVES), ids=lambda m: f"curve-of-method{int(m)}")
@pytest.mark.parametrize("hash_alg", list(ALGORITHM_IDENTIFIERS), ids=lambda a: a.name)
def test_rfc7427_sign_verify(method: AuthMethod, hash_alg: HashAlgorithm) -> None:
    """Method 14 with any SHA-2 hash on any curve (OpenIKED: SHA-256 with P-384)."""
    key = KEYS[method]
    data = sign_auth(AuthMethod.DIGITAL_SIGNATURE, key, OCTETS, hash_alg)
    alg_id = ALGORITHM_IDENTIFIERS[hash_alg]
    assert data[0] == len(alg_id) and data[1 : 1 + data[0]] == alg_id
    # The rest is a DER ECDSA-Sig-Value that the library verifies on its own.
    std_hash = {2: hashes.SHA256, 3: hashes.SHA384, 4: hashes.SHA512}[hash_alg]
    key.public_key().verify(data[1 + data[0] :], OCTETS, ec.ECDSA(std_hash()))
    verify_auth(AuthMethod.DIGITAL_SIGNATURE, key.public_key(), OCTETS, data)
    with pytest.raises(AuthenticationError):
        verify_auth(AuthMethod.DIGITAL_SIGNATURE, key.public_key(), OCTETS[:-1], data)


def test_rfc7427_default_hash_is_the_curves() -> None:
    natural = {
        AuthMethod.ECDSA_SHA256_P256: HashAlgorithm.SHA2_256,
        AuthMethod.ECDSA_SHA384_P384: HashAlgorithm.SHA2_384,
        AuthMethod.ECDSA_SHA512_P521: HashAlgorithm.SHA2_512,
    }
    for method, key in KEYS.items():
        data = sign_auth(AuthMethod.DIGITAL_SIGNATURE, key, OCTETS)
        assert data[1:13] == ALGORITHM_IDENTIFIERS[natural[method]]


def test_ed25519_method14() -> None:
    """RFC 8420: method 14, id-Ed25519, a 64-octet signature over the octets themselves."""
    key = ed25519.Ed25519PrivateKey.generate()
    assert auth_method_for_key(key) == AuthMethod.DIGITAL_SIGNATURE
    data = sign_auth(AuthMethod.DIGITAL_SIGNATURE, key, OCTETS)
    assert data[:8] == b"\x07" + bytes.fromhex("300506032b6570")
    assert len(data) == 8 + 64
    key.public_key().verify(data[8:], OCTETS)
    verify_auth(AuthMethod.DIGITAL_SIGNATURE, key.public_key(), OCTETS, data)
    with pytest.raises(AuthenticationError):
        verify_auth(AuthMethod.DIGITAL_SIGNATURE, KEYS[9].public_key(), OCTETS, data)
    with pytest.raises(AuthenticationError):
        verify_auth(AuthMethod.DIGITAL_SIGNATURE, key.public_key(), b"other", data)


def test_cross_method_refusal() -> None:
    key = KEYS[AuthMethod.ECDSA_SHA384_P384]
    raw = sign_auth(AuthMethod.ECDSA_SHA384_P384, key, OCTETS)
    # A method 10 signature (raw r | s) presented as method 14.
    with pytest.raises(AuthenticationError):
        verify_auth(AuthMethod.DIGITAL_SIGNATURE, key.public_key(), OCTETS, raw)
    # Method 14 data presented as method 10.
    generic = sign_auth(AuthMethod.DIGITAL_SIGNATURE, key, OCTETS)
    with pytest.raises(AuthenticationError):
        verify_auth(AuthMethod.ECDSA_SHA384_P384, key.public_key(), OCTETS, generic)
    # Methods we do not verify with a public key.
    for method in (AuthMethod.PSK, AuthMethod.RSA_SIG, AuthMethod.NULL_AUTH, 200):
        with pytest.raises(AuthenticationError):
            verify_auth(method, key.public_key(), OCTETS, generic)  # type: ignore[arg-type]
    # An ECDSA signature checked against an Ed25519 key, and vice versa.
    ed_pub = ed25519.Ed25519PrivateKey.generate().public_key()
    with pytest.raises(AuthenticationError):
        verify_auth(AuthMethod.DIGITAL_SIGNATURE, ed_pub, OCTETS, generic)
    with pytest.raises(AuthenticationError):
        verify_auth(AuthMethod.ECDSA_SHA384_P384, ed_pub, OCTETS, raw)  # type: ignore[arg-type]


def _der_with_hash(hash_alg: HashAlgorithm) -> bytes:
    key = KEYS[AuthMethod.ECDSA_SHA256_P256]
    return sign_auth(AuthMethod.DIGITAL_SIGNATURE, key, OCTETS, hash_alg)


def test_method14_malformed_data() -> None:
    pub = KEYS[AuthMethod.ECDSA_SHA256_P256].public_key()
    good = _der_with_hash(HashAlgorithm.SHA2_256)
    alg_id, der = good[1:13], good[13:]
    cases = {
        "empty": b"",
        "length byte only": b"\x0c",
        "length beyond data": b"\x40" + alg_id + der,
        "length too short": b"\x0b" + alg_id + der,
        "length too long": b"\x0d" + alg_id + der,
        "no signature": good[:13],
        "truncated DER": good[:-1],
        "DER with trailing octet": good + b"\x00",
        "DER header only": good[:15],
    }
    for name, data in cases.items():
        with pytest.raises(AuthenticationError):
            verify_auth(AuthMethod.DIGITAL_SIGNATURE, pub, OCTETS, data)
        assert name  # keeps the case name visible in a failing traceback


@pytest.mark.parametrize(
    ("alg_id", "oid"),
    [
        # ecdsa-with-SHA1 (RFC 5758 3.2 lists ecdsa-with-SHA1 as 1.2.840.10045.4.1)
        ("3009 0607 2a8648ce3d0401", "1.2.840.10045.4.1"),
        # sha256WithRSAEncryption with NULL parameters (RFC 4055 5)
        ("300d 0609 2a864886f70d01010b 0500", "1.2.840.113549.1.1.11"),
        # ecdsa-with-SHA256 but with NULL parameters, which RFC 5758 3.2 forbids
        ("300c 0608 2a8648ce3d040302 0500", "1.2.840.10045.4.3.2"),
    ],
)
def test_method14_unknown_algorithm_names_the_oid(alg_id: str, oid: str) -> None:
    alg = bytes.fromhex(alg_id.replace(" ", ""))
    der = _der_with_hash(HashAlgorithm.SHA2_256)[13:]
    pub = KEYS[AuthMethod.ECDSA_SHA256_P256].public_key()
    with pytest.raises(AuthenticationError, match=oid.replace(".", r"\.")):
        verify_auth(AuthMethod.DIGITAL_SIGNATURE, pub, OCTETS, bytes([len(alg)]) + alg + der)


def test_method14_garbage_algorithm_identifier_is_described() -> None:
    pub = KEYS[AuthMethod.ECDSA_SHA256_P256].public_key()
    with pytest.raises(AuthenticationError, match="deadbeef"):
        verify_auth(AuthMethod.DIGITAL_SIGNATURE, pub, OCTETS, b"\x04\xde\xad\xbe\xef" + b"x" * 8)


AUTH_METHODS = [
    AuthMethod.ECDSA_SHA256_P256,
    AuthMethod.ECDSA_SHA384_P384,
    AuthMethod.ECDSA_SHA512_P521,
    AuthMethod.DIGITAL_SIGNATURE,
]


@given(method=st.sampled_from(AUTH_METHODS), data=st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_verify_auth_random_data_only_raises_authentication_error(
    method: AuthMethod, data: bytes
) -> None:
    for key in (KEYS[method if method != 14 else 9].public_key(), _ED_PUB):
        with pytest.raises(AuthenticationError):
            verify_auth(method, key, OCTETS, data)


_ED_PUB = ed25519.Ed25519PrivateKey.generate().public_key()
_GOOD_14 = {
    alg: sign_auth(AuthMethod.DIGITAL_SIGNATURE, KEYS[10], OCTETS, alg)
    for alg in ALGORITHM_IDENTIFIERS
}


@given(
    alg=st.sampled_from(list(ALGORITHM_IDENTIFIERS)),
    index=st.integers(min_value=0),
    value=st.integers(1, 255),
    cut=st.integers(min_value=0),
)
@settings(max_examples=300, deadline=None)
def test_mutated_method14_only_raises_authentication_error(
    alg: HashAlgorithm, index: int, value: int, cut: int
) -> None:
    good = _GOOD_14[alg]
    mutated = bytearray(good)
    mutated[index % len(good)] ^= value
    for data in (bytes(mutated), good[: cut % len(good)]):
        with pytest.raises(AuthenticationError):
            verify_auth(AuthMethod.DIGITAL_SIGNATURE, KEYS[10].public_key(), OCTETS, data)


@given(r=st.integers(0, 2**256 - 1), s=st.integers(0, 2**256 - 1))
@settings(max_examples=100, deadline=None)
def test_rfc4754_arbitrary_values_refused(r: int, s: int) -> None:
    """Any r | s (zero, >= n, or just wrong) fails cleanly."""
    data = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    with pytest.raises(AuthenticationError):
        verify_auth(AuthMethod.ECDSA_SHA256_P256, KEYS[9].public_key(), OCTETS, data)


def test_sign_auth_refusals() -> None:
    key = KEYS[AuthMethod.ECDSA_SHA256_P256]
    with pytest.raises(CryptoError):
        sign_auth(AuthMethod.PSK, key, OCTETS)
    with pytest.raises(CryptoError):
        sign_auth(AuthMethod.DIGITAL_SIGNATURE, key, OCTETS, HashAlgorithm.SHA1)
    with pytest.raises(CryptoError):
        sign_auth(AuthMethod.ECDSA_SHA256_P256, key, OCTETS, HashAlgorithm.SHA2_512)
    with pytest.raises(CryptoError):
        auth_method_for_key(ec.generate_private_key(ec.SECP256K1()))


def test_rfc4754_signature_is_padded() -> None:
    """P-521's r and s have at most 521 bits yet fill 66 octets each (RFC 4754 7)."""
    key = KEYS[AuthMethod.ECDSA_SHA512_P521]
    for _ in range(10):
        data = sign_auth(AuthMethod.ECDSA_SHA512_P521, key, OCTETS)
        assert len(data) == 132 and data[0] <= 1 and data[66] <= 1
        verify_auth(AuthMethod.ECDSA_SHA512_P521, key.public_key(), OCTETS, data)


# --------------------------------------------------------------------------- NAT detection


@pytest.mark.parametrize(
    ("ip", "port"),
    [("192.0.2.10", 500), ("198.51.100.7", 4500), ("2001:db8::1", 500)],
)
def test_nat_detection_hash(ip: str, port: int) -> None:
    """RFC 7296 2.23: SHA-1(SPIi | SPIr | IP | Port), IP in network order, port 2 octets."""
    spi_i, spi_r = os.urandom(8), bytes(8)
    expected = hashlib.sha1(
        spi_i + spi_r + ipaddress.ip_address(ip).packed + port.to_bytes(2, "big")
    ).digest()
    assert nat_detection_hash(spi_i, spi_r, ip, port) == expected
    assert nat_detection_hash(spi_i, spi_r, ipaddress.ip_address(ip), port) == expected
    assert nat_detection_hash(spi_i, spi_r, ip, port + 1) != expected
