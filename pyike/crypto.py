"""IKEv2 cryptography: PRFs, key derivation, Diffie-Hellman, SK payload protection, AUTH.

Every primitive (HMAC, hashes, AES-GCM, ChaCha20-Poly1305, AES-CBC, ECDH, X25519,
ECDSA, Ed25519) comes from the ``cryptography`` package, except MODP Diffie-Hellman,
which is modular exponentiation with Python integers (the library deprecates its
finite-field DH). Which transform has which sizes and constructor is read from
``pyike.algorithms``. This module writes the IKEv2 constructions around them:

==========================  ====================================================
What                        Where (RFC)
==========================  ====================================================
prf, prf+                   ``prf``, ``prf_plus`` (RFC 7296 2.13, RFC 4868)
SKEYSEED and SK_*           ``derive_ike_keys`` (RFC 7296 2.14, rekey 2.18)
child SA KEYMAT             ``derive_child_keys`` (RFC 7296 2.17)
key lengths                 ``encr_keymat_length`` (AEAD salt: RFC 4106 8.1 /
                            RFC 5282 7.1 / RFC 7634 3), ``integ_key_length``
                            (RFC 4868 2.1)
Diffie-Hellman              ``dh_generate``, ``dh_from_private``, ``DhPrivate``
                            (RFC 7296 3.4, RFC 5903, RFC 7748, RFC 8031,
                            RFC 3526, RFC 6989, NIST SP 800-56A)
SK payload encrypt/decrypt  ``SkCipher`` (RFC 7296 3.14, RFC 5282, RFC 7634)
AUTH payload                ``auth_octets``, ``sign_auth``, ``verify_auth``,
                            ``psk_auth`` (RFC 7296 2.15, RFC 4754, RFC 7427,
                            RFC 8420)
NAT detection               ``nat_detection_hash`` (RFC 7296 2.23)
==========================  ====================================================

Errors are typed: anything wrong with bytes received from a peer raises
``IntegrityError``, ``InvalidKeyExchange`` or ``AuthenticationError``; a
request for an algorithm we do not implement raises ``UnsupportedAlgorithm``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import secrets
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cache
from hmac import compare_digest

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.ciphers import Cipher, CipherAlgorithm, modes

from pyike import algorithms
from pyike.registry import AuthMethod, DhId, EncrId, HashAlgorithm, IntegId, PrfId

__all__ = [
    "ALGORITHM_IDENTIFIERS",
    "ED25519_ALGORITHM_IDENTIFIER",
    "SUPPORTED_GROUPS",
    "AuthenticationError",
    "ChildKeys",
    "CryptoError",
    "DhPrivate",
    "IkeKeys",
    "IntegrityError",
    "InvalidKeyExchange",
    "SkCipher",
    "UnsupportedAlgorithm",
    "auth_method_for_key",
    "auth_octets",
    "derive_child_keys",
    "derive_ike_keys",
    "dh_from_private",
    "dh_generate",
    "dh_public_length",
    "encr_keymat_length",
    "integ_icv_length",
    "integ_key_length",
    "integ_mac",
    "is_aead",
    "modp_prime",
    "nat_detection_hash",
    "prf",
    "prf_output_length",
    "prf_plus",
    "psk_auth",
    "sign_auth",
    "verify_auth",
    "verify_psk_auth",
]


# --------------------------------------------------------------------------- errors


class CryptoError(Exception):
    """Base class of every error raised by this module."""


class UnsupportedAlgorithm(CryptoError):
    """A transform, group, method or key size this module does not implement."""


class IntegrityError(CryptoError):
    """An SK payload failed its ICV check or was malformed (RFC 7296 3.14)."""


class InvalidKeyExchange(CryptoError):
    """A peer's KE data is malformed or an invalid group element (RFC 6989)."""


class AuthenticationError(CryptoError):
    """An AUTH payload did not verify or could not be parsed (RFC 7296 2.15)."""


# --------------------------------------------------------------------------- PRF

# RFC 7296 2.13: prf+ counts iterations in one octet.
_PRF_PLUS_MAX_ITERATIONS = 255


def _prf(alg: int) -> algorithms.PrfAlg:
    # RFC 7296 3.3.2 / RFC 4868 2.1: every PRF pyike serves is an HMAC (algorithms.PRFS).
    row = algorithms.prf(alg)
    if row is None or row.hash is None:
        raise UnsupportedAlgorithm(f"PRF {PrfId.name_of(alg)} not supported")
    return row


def prf(alg: PrfId, key: bytes, data: bytes) -> bytes:
    """prf(K, S) of RFC 7296 2.13: HMAC with the negotiated hash, full output."""
    mac = _prf(alg).new_prf(key)
    mac.update(data)
    return mac.finalize()


def prf_output_length(alg: PrfId) -> int:
    """Output length in octets; also the "preferred key length" of RFC 7296 2.14."""
    return _prf(alg).output_len


def prf_plus(alg: PrfId, key: bytes, seed: bytes, length: int) -> bytes:
    """prf+ (RFC 7296 2.13): T1 = prf(K, S|0x01), Tn = prf(K, Tn-1|S|n), first `length` octets.

    Raises CryptoError when more than 255 iterations would be needed, since the
    counter is a single octet.
    """
    if length < 0:
        raise CryptoError(f"prf+ length must be non-negative, got {length}")
    block = prf_output_length(alg)
    iterations = -(-length // block)
    if iterations > _PRF_PLUS_MAX_ITERATIONS:
        raise CryptoError(
            f"prf+ cannot produce {length} octets: {iterations} iterations exceed 255"
        )
    out = bytearray()
    t = b""
    for n in range(1, iterations + 1):
        t = prf(alg, key, t + seed + bytes([n]))
        out += t
    return bytes(out[:length])


# --------------------------------------------------------------------------- transforms

# Sizes and constructors come from the one table, pyike.algorithms.


def _encr(encr: int, key_bits: int, use: algorithms.Use | None = None) -> algorithms.EncrAlg:
    """The table row of a transform pyike serves for `use` (None: IKE or ESP)."""
    row = algorithms.encr(encr, key_bits)
    if row is None or not (row.serves(use) if use else row.ike or row.esp):
        bits = f" with {key_bits}-bit key" if key_bits else ""
        raise UnsupportedAlgorithm(f"encryption {EncrId.name_of(encr)}{bits} not supported")
    return row


def is_aead(encr: EncrId) -> bool:
    """True for combined-mode ciphers, which take no separate integrity transform."""
    return any(row.aead for row in algorithms.ENCRS if row.id == encr)


def encr_keymat_length(encr: EncrId, key_bits: int) -> int:
    """Octets of key material an ENCR transform consumes (AEADs: key + 4-octet salt,
    RFC 5282 7.1, RFC 7634 3)."""
    return _encr(encr, key_bits).keymat_len


def _integ(integ: int) -> algorithms.IntegAlg:
    row = algorithms.integ(integ)
    if row is None or row.hash is None:
        raise UnsupportedAlgorithm(f"integrity {IntegId.name_of(integ)} not supported")
    return row


def integ_key_length(integ: IntegId) -> int:
    """Key length of an INTEG transform in octets (0 for NONE, used with AEAD)."""
    if integ == IntegId.NONE:
        return 0
    return _integ(integ).key_len


def integ_icv_length(integ: IntegId) -> int:
    """ICV (truncated MAC) length of an INTEG transform in octets."""
    if integ == IntegId.NONE:
        return 0
    return _integ(integ).icv_len


def integ_mac(integ: IntegId, key: bytes, data: bytes) -> bytes:
    """The truncated HMAC of an INTEG transform (RFC 4868 2.1, RFC 2404)."""
    row = _integ(integ)
    mac = row.new_mac(key)
    mac.update(data)
    return mac.finalize()[: row.icv_len]


def _check_suite(encr: EncrId, key_bits: int, integ: IntegId, use: algorithms.Use) -> None:
    _encr(encr, key_bits, use)
    if is_aead(encr):
        if integ != IntegId.NONE:
            # RFC 7296 3.3: a combined-mode cipher is proposed without INTEG.
            raise UnsupportedAlgorithm(
                f"{EncrId.name_of(encr)} is combined-mode; integrity must be NONE, "
                f"got {IntegId.name_of(integ)}"
            )
    else:
        integ_key_length(integ)


# --------------------------------------------------------------------------- key derivation


@dataclass(frozen=True, slots=True)
class IkeKeys:
    """SKEYSEED and the seven IKE SA keys of RFC 7296 2.14."""

    skeyseed: bytes
    sk_d: bytes
    sk_ai: bytes
    sk_ar: bytes
    sk_ei: bytes
    sk_er: bytes
    sk_pi: bytes
    sk_pr: bytes


@dataclass(frozen=True, slots=True)
class ChildKeys:
    """Child SA keys (RFC 7296 2.17): ei/ai protect initiator-to-responder traffic."""

    ei: bytes
    ai: bytes
    er: bytes
    ar: bytes


def _split(material: bytes, lengths: list[int]) -> list[bytes]:
    out, pos = [], 0
    for n in lengths:
        out.append(material[pos : pos + n])
        pos += n
    return out


def derive_ike_keys(
    prf_alg: PrfId,
    encr: EncrId,
    key_bits: int,
    integ: IntegId,
    ni: bytes,
    nr: bytes,
    shared_secret: bytes,
    spi_i: bytes,
    spi_r: bytes,
    *,
    old_sk_d: bytes | None = None,
    old_prf: PrfId | None = None,
) -> IkeKeys:
    """SKEYSEED and SK_d/ai/ar/ei/er/pi/pr (RFC 7296 2.14).

    With ``old_sk_d`` this is an IKE SA rekey (RFC 7296 2.18):
    SKEYSEED = prf_old(SK_d_old, g^ir_new | Ni | Nr), then prf+ with the new PRF.
    ``spi_i``/``spi_r`` are the SPIs of the SA being keyed (the new one on rekey).
    """
    if old_prf is not None and old_sk_d is None:
        raise CryptoError("old_prf given without old_sk_d")
    _check_suite(encr, key_bits, integ, algorithms.Use.IKE)
    if old_sk_d is None:
        skeyseed = prf(prf_alg, ni + nr, shared_secret)
    else:
        skeyseed = prf(prf_alg if old_prf is None else old_prf, old_sk_d, shared_secret + ni + nr)
    prf_len = prf_output_length(prf_alg)
    a_len = integ_key_length(integ)
    e_len = encr_keymat_length(encr, key_bits)
    lengths = [prf_len, a_len, a_len, e_len, e_len, prf_len, prf_len]
    material = prf_plus(prf_alg, skeyseed, ni + nr + spi_i + spi_r, sum(lengths))
    sk_d, sk_ai, sk_ar, sk_ei, sk_er, sk_pi, sk_pr = _split(material, lengths)
    return IkeKeys(skeyseed, sk_d, sk_ai, sk_ar, sk_ei, sk_er, sk_pi, sk_pr)


def derive_child_keys(
    prf_alg: PrfId,
    sk_d: bytes,
    ni: bytes,
    nr: bytes,
    encr: EncrId,
    key_bits: int,
    integ: IntegId,
    shared_secret: bytes | None = None,
) -> ChildKeys:
    """Child SA KEYMAT (RFC 7296 2.17): prf+(SK_d, [g^ir (new) |] Ni | Nr).

    Keys are taken in the order encr_i, integ_i, encr_r, integ_r: all keys for
    initiator-to-responder traffic first, encryption before integrity.
    """
    _check_suite(encr, key_bits, integ, algorithms.Use.ESP)
    seed = (shared_secret or b"") + ni + nr
    e_len = encr_keymat_length(encr, key_bits)
    a_len = integ_key_length(integ)
    lengths = [e_len, a_len, e_len, a_len]
    ei, ai, er, ar = _split(prf_plus(prf_alg, sk_d, seed, sum(lengths)), lengths)
    return ChildKeys(ei=ei, ai=ai, er=er, ar=ar)


# --------------------------------------------------------------------------- Diffie-Hellman

# MODP primes, all with generator 2: group 2 from RFC 2409 6.2, groups 5, 14,
# 15, 16, 17, 18 from RFC 3526 sections 2 to 7.
_MODP_PRIMES_HEX: dict[int, str] = {
    DhId.MODP_1024: """
        FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1
        29024E08 8A67CC74 020BBEA6 3B139B22 514A0879 8E3404DD
        EF9519B3 CD3A431B 302B0A6D F25F1437 4FE1356D 6D51C245
        E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED
        EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE65381
        FFFFFFFF FFFFFFFF""",
    DhId.MODP_1536: """
        FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1
        29024E08 8A67CC74 020BBEA6 3B139B22 514A0879 8E3404DD
        EF9519B3 CD3A431B 302B0A6D F25F1437 4FE1356D 6D51C245
        E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED
        EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D
        C2007CB8 A163BF05 98DA4836 1C55D39A 69163FA8 FD24CF5F
        83655D23 DCA3AD96 1C62F356 208552BB 9ED52907 7096966D
        670C354E 4ABC9804 F1746C08 CA237327 FFFFFFFF FFFFFFFF""",
    DhId.MODP_2048: """
        FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1
        29024E08 8A67CC74 020BBEA6 3B139B22 514A0879 8E3404DD
        EF9519B3 CD3A431B 302B0A6D F25F1437 4FE1356D 6D51C245
        E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED
        EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D
        C2007CB8 A163BF05 98DA4836 1C55D39A 69163FA8 FD24CF5F
        83655D23 DCA3AD96 1C62F356 208552BB 9ED52907 7096966D
        670C354E 4ABC9804 F1746C08 CA18217C 32905E46 2E36CE3B
        E39E772C 180E8603 9B2783A2 EC07A28F B5C55DF0 6F4C52C9
        DE2BCBF6 95581718 3995497C EA956AE5 15D22618 98FA0510
        15728E5A 8AACAA68 FFFFFFFF FFFFFFFF""",
    DhId.MODP_3072: """
        FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1
        29024E08 8A67CC74 020BBEA6 3B139B22 514A0879 8E3404DD
        EF9519B3 CD3A431B 302B0A6D F25F1437 4FE1356D 6D51C245
        E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED
        EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D
        C2007CB8 A163BF05 98DA4836 1C55D39A 69163FA8 FD24CF5F
        83655D23 DCA3AD96 1C62F356 208552BB 9ED52907 7096966D
        670C354E 4ABC9804 F1746C08 CA18217C 32905E46 2E36CE3B
        E39E772C 180E8603 9B2783A2 EC07A28F B5C55DF0 6F4C52C9
        DE2BCBF6 95581718 3995497C EA956AE5 15D22618 98FA0510
        15728E5A 8AAAC42D AD33170D 04507A33 A85521AB DF1CBA64
        ECFB8504 58DBEF0A 8AEA7157 5D060C7D B3970F85 A6E1E4C7
        ABF5AE8C DB0933D7 1E8C94E0 4A25619D CEE3D226 1AD2EE6B
        F12FFA06 D98A0864 D8760273 3EC86A64 521F2B18 177B200C
        BBE11757 7A615D6C 770988C0 BAD946E2 08E24FA0 74E5AB31
        43DB5BFC E0FD108E 4B82D120 A93AD2CA FFFFFFFF FFFFFFFF""",
    DhId.MODP_4096: """
        FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1
        29024E08 8A67CC74 020BBEA6 3B139B22 514A0879 8E3404DD
        EF9519B3 CD3A431B 302B0A6D F25F1437 4FE1356D 6D51C245
        E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED
        EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D
        C2007CB8 A163BF05 98DA4836 1C55D39A 69163FA8 FD24CF5F
        83655D23 DCA3AD96 1C62F356 208552BB 9ED52907 7096966D
        670C354E 4ABC9804 F1746C08 CA18217C 32905E46 2E36CE3B
        E39E772C 180E8603 9B2783A2 EC07A28F B5C55DF0 6F4C52C9
        DE2BCBF6 95581718 3995497C EA956AE5 15D22618 98FA0510
        15728E5A 8AAAC42D AD33170D 04507A33 A85521AB DF1CBA64
        ECFB8504 58DBEF0A 8AEA7157 5D060C7D B3970F85 A6E1E4C7
        ABF5AE8C DB0933D7 1E8C94E0 4A25619D CEE3D226 1AD2EE6B
        F12FFA06 D98A0864 D8760273 3EC86A64 521F2B18 177B200C
        BBE11757 7A615D6C 770988C0 BAD946E2 08E24FA0 74E5AB31
        43DB5BFC E0FD108E 4B82D120 A9210801 1A723C12 A787E6D7
        88719A10 BDBA5B26 99C32718 6AF4E23C 1A946834 B6150BDA
        2583E9CA 2AD44CE8 DBBBC2DB 04DE8EF9 2E8EFC14 1FBECAA6
        287C5947 4E6BC05D 99B2964F A090C3A2 233BA186 515BE7ED
        1F612970 CEE2D7AF B81BDD76 2170481C D0069127 D5B05AA9
        93B4EA98 8D8FDDC1 86FFB7DC 90A6C08F 4DF435C9 34063199
        FFFFFFFF FFFFFFFF""",
    DhId.MODP_6144: """
        FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1
        29024E08 8A67CC74 020BBEA6 3B139B22 514A0879 8E3404DD
        EF9519B3 CD3A431B 302B0A6D F25F1437 4FE1356D 6D51C245
        E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED
        EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D
        C2007CB8 A163BF05 98DA4836 1C55D39A 69163FA8 FD24CF5F
        83655D23 DCA3AD96 1C62F356 208552BB 9ED52907 7096966D
        670C354E 4ABC9804 F1746C08 CA18217C 32905E46 2E36CE3B
        E39E772C 180E8603 9B2783A2 EC07A28F B5C55DF0 6F4C52C9
        DE2BCBF6 95581718 3995497C EA956AE5 15D22618 98FA0510
        15728E5A 8AAAC42D AD33170D 04507A33 A85521AB DF1CBA64
        ECFB8504 58DBEF0A 8AEA7157 5D060C7D B3970F85 A6E1E4C7
        ABF5AE8C DB0933D7 1E8C94E0 4A25619D CEE3D226 1AD2EE6B
        F12FFA06 D98A0864 D8760273 3EC86A64 521F2B18 177B200C
        BBE11757 7A615D6C 770988C0 BAD946E2 08E24FA0 74E5AB31
        43DB5BFC E0FD108E 4B82D120 A9210801 1A723C12 A787E6D7
        88719A10 BDBA5B26 99C32718 6AF4E23C 1A946834 B6150BDA
        2583E9CA 2AD44CE8 DBBBC2DB 04DE8EF9 2E8EFC14 1FBECAA6
        287C5947 4E6BC05D 99B2964F A090C3A2 233BA186 515BE7ED
        1F612970 CEE2D7AF B81BDD76 2170481C D0069127 D5B05AA9
        93B4EA98 8D8FDDC1 86FFB7DC 90A6C08F 4DF435C9 34028492
        36C3FAB4 D27C7026 C1D4DCB2 602646DE C9751E76 3DBA37BD
        F8FF9406 AD9E530E E5DB382F 413001AE B06A53ED 9027D831
        179727B0 865A8918 DA3EDBEB CF9B14ED 44CE6CBA CED4BB1B
        DB7F1447 E6CC254B 33205151 2BD7AF42 6FB8F401 378CD2BF
        5983CA01 C64B92EC F032EA15 D1721D03 F482D7CE 6E74FEF6
        D55E702F 46980C82 B5A84031 900B1C9E 59E7C97F BEC7E8F3
        23A97A7E 36CC88BE 0F1D45B7 FF585AC5 4BD407B2 2B4154AA
        CC8F6D7E BF48E1D8 14CC5ED2 0F8037E0 A79715EE F29BE328
        06A1D58B B7C5DA76 F550AA3D 8A1FBFF0 EB19CCB1 A313D55C
        DA56C9EC 2EF29632 387FE8D7 6E3C0468 043E8F66 3F4860EE
        12BF2D5B 0B7474D6 E694F91E 6DCC4024 FFFFFFFF FFFFFFFF""",
    DhId.MODP_8192: """
        FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1
        29024E08 8A67CC74 020BBEA6 3B139B22 514A0879 8E3404DD
        EF9519B3 CD3A431B 302B0A6D F25F1437 4FE1356D 6D51C245
        E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED
        EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D
        C2007CB8 A163BF05 98DA4836 1C55D39A 69163FA8 FD24CF5F
        83655D23 DCA3AD96 1C62F356 208552BB 9ED52907 7096966D
        670C354E 4ABC9804 F1746C08 CA18217C 32905E46 2E36CE3B
        E39E772C 180E8603 9B2783A2 EC07A28F B5C55DF0 6F4C52C9
        DE2BCBF6 95581718 3995497C EA956AE5 15D22618 98FA0510
        15728E5A 8AAAC42D AD33170D 04507A33 A85521AB DF1CBA64
        ECFB8504 58DBEF0A 8AEA7157 5D060C7D B3970F85 A6E1E4C7
        ABF5AE8C DB0933D7 1E8C94E0 4A25619D CEE3D226 1AD2EE6B
        F12FFA06 D98A0864 D8760273 3EC86A64 521F2B18 177B200C
        BBE11757 7A615D6C 770988C0 BAD946E2 08E24FA0 74E5AB31
        43DB5BFC E0FD108E 4B82D120 A9210801 1A723C12 A787E6D7
        88719A10 BDBA5B26 99C32718 6AF4E23C 1A946834 B6150BDA
        2583E9CA 2AD44CE8 DBBBC2DB 04DE8EF9 2E8EFC14 1FBECAA6
        287C5947 4E6BC05D 99B2964F A090C3A2 233BA186 515BE7ED
        1F612970 CEE2D7AF B81BDD76 2170481C D0069127 D5B05AA9
        93B4EA98 8D8FDDC1 86FFB7DC 90A6C08F 4DF435C9 34028492
        36C3FAB4 D27C7026 C1D4DCB2 602646DE C9751E76 3DBA37BD
        F8FF9406 AD9E530E E5DB382F 413001AE B06A53ED 9027D831
        179727B0 865A8918 DA3EDBEB CF9B14ED 44CE6CBA CED4BB1B
        DB7F1447 E6CC254B 33205151 2BD7AF42 6FB8F401 378CD2BF
        5983CA01 C64B92EC F032EA15 D1721D03 F482D7CE 6E74FEF6
        D55E702F 46980C82 B5A84031 900B1C9E 59E7C97F BEC7E8F3
        23A97A7E 36CC88BE 0F1D45B7 FF585AC5 4BD407B2 2B4154AA
        CC8F6D7E BF48E1D8 14CC5ED2 0F8037E0 A79715EE F29BE328
        06A1D58B B7C5DA76 F550AA3D 8A1FBFF0 EB19CCB1 A313D55C
        DA56C9EC 2EF29632 387FE8D7 6E3C0468 043E8F66 3F4860EE
        12BF2D5B 0B7474D6 E694F91E 6DBE1159 74A3926F 12FEE5E4
        38777CB6 A932DF8C D8BEC4D0 73B931BA 3BC832B6 8D9DD300
        741FA7BF 8AFC47ED 2576F693 6BA42466 3AAB639C 5AE4F568
        3423B474 2BF1C978 238F16CB E39D652D E3FDB8BE FC848AD9
        22222E04 A4037C07 13EB57A8 1A23F0C7 3473FC64 6CEA306B
        4BCBC886 2F8385DD FA9D4B7F A2C087E8 79683303 ED5BDD3A
        062B3CF5 B3A278A6 6D2A13F8 3F44F82D DF310EE0 74AB6A36
        4597E899 A0255DC1 64F31CC5 0846851D F9AB4819 5DED7EA1
        B1D510BD 7EE74D73 FAF36BC3 1ECFA268 359046F4 EB879F92
        4009438B 481C6CD7 889A002E D5EE382B C9190DA6 FC026E47
        9558E447 5677E9AA 9E3050E2 765694DF C81F56E8 80B96E71
        60C980DD 98EDD3DF FFFFFFFF FFFFFFFF""",
}
_MODP_GENERATOR = 2

# Private exponent length: twice the group's security strength in bits, as NIST
# SP 800-56A Rev. 3 5.6.1.1.4 allows for safe-prime groups (strengths from its
# Appendix D and SP 800-57 Part 1; RFC 3526 section 8 gives similar ranges). A
# full-length exponent would cost many times more for no security gain.
_MODP_EXPONENT_BITS: dict[int, int] = {
    DhId.MODP_1024: 160,
    DhId.MODP_1536: 192,
    DhId.MODP_2048: 224,
    DhId.MODP_3072: 256,
    DhId.MODP_4096: 304,
    DhId.MODP_6144: 352,
    DhId.MODP_8192: 400,
}

# RFC 5903 2.1-2.3: the three random ECP groups and their field size in octets.
_ECP_CURVES: dict[int, tuple[type[ec.EllipticCurve], int]] = {
    DhId.ECP_256: (ec.SECP256R1, 32),
    DhId.ECP_384: (ec.SECP384R1, 48),
    DhId.ECP_521: (ec.SECP521R1, 66),
}

_X25519_LEN = 32  # RFC 7748 5 / RFC 8031 2

SUPPORTED_GROUPS: frozenset[DhId] = frozenset(
    DhId(group) for group in (*_MODP_PRIMES_HEX, *_ECP_CURVES, DhId.CURVE25519)
)


@cache
def _modp_prime(group: int) -> int:
    return int("".join(_MODP_PRIMES_HEX[group].split()), 16)


def modp_prime(group: DhId) -> int:
    """The prime modulus of a MODP group (generator 2)."""
    if group not in _MODP_PRIMES_HEX:
        raise UnsupportedAlgorithm(f"{DhId.name_of(group)} is not a supported MODP group")
    return _modp_prime(group)


def dh_public_length(group: DhId) -> int:
    """Length of the KE payload's key exchange data for `group` (RFC 7296 3.4)."""
    if group in _MODP_PRIMES_HEX:
        return (_modp_prime(group).bit_length() + 7) // 8
    if group in _ECP_CURVES:
        return 2 * _ECP_CURVES[group][1]
    if group == DhId.CURVE25519:
        return _X25519_LEN
    raise UnsupportedAlgorithm(f"DH group {DhId.name_of(group)} not supported")


class DhPrivate(ABC):
    """Our half of a Diffie-Hellman exchange in one IKE group.

    ``public_bytes`` is the KE payload's key exchange data; ``shared(peer)``
    validates the peer's KE data and returns the shared secret g^ir in the
    form RFC 7296 2.14 feeds to the PRF.
    """

    __slots__ = ("group", "public_bytes")

    def __init__(self, group: DhId, public_bytes: bytes) -> None:
        self.group = group
        self.public_bytes = public_bytes

    def _check_length(self, peer_public: bytes) -> None:
        expected = dh_public_length(self.group)
        if len(peer_public) != expected:
            raise InvalidKeyExchange(
                f"{DhId.name_of(self.group)}: KE data is {len(peer_public)} octets, "
                f"expected {expected}"
            )

    @abstractmethod
    def shared(self, peer_public: bytes) -> bytes:
        """The shared secret with the peer's KE data; raises InvalidKeyExchange."""


class _EcpPrivate(DhPrivate):
    """RFC 5903 ECP groups 19/20/21."""

    __slots__ = ("_curve", "_key", "_size")

    def __init__(self, group: DhId, key: ec.EllipticCurvePrivateKey) -> None:
        curve_cls, size = _ECP_CURVES[group]
        numbers = key.public_key().public_numbers()
        # RFC 5903 7: KE data is x | y, each padded to the field size, no 0x04 prefix.
        super().__init__(group, numbers.x.to_bytes(size, "big") + numbers.y.to_bytes(size, "big"))
        self._curve = curve_cls()
        self._key = key
        self._size = size

    def shared(self, peer_public: bytes) -> bytes:
        self._check_length(peer_public)
        try:
            # Decoding an uncompressed point validates that it lies on the curve
            # (and that its coordinates are field elements), as RFC 6989 2.3 and
            # RFC 5903 require of a recipient.
            peer = ec.EllipticCurvePublicKey.from_encoded_point(self._curve, b"\x04" + peer_public)
            point = self._key.exchange(ec.ECDH(), peer)
        except ValueError as exc:
            raise InvalidKeyExchange(f"{DhId.name_of(self.group)}: invalid point: {exc}") from None
        # RFC 5903 7 (as corrected by its errata): g^ir is the x coordinate only.
        return point.rjust(self._size, b"\x00")


class _X25519Private(DhPrivate):
    """Curve25519 group 31 (RFC 8031, RFC 7748)."""

    __slots__ = ("_key",)

    def __init__(self, key: x25519.X25519PrivateKey) -> None:
        super().__init__(DhId.CURVE25519, key.public_key().public_bytes_raw())
        self._key = key

    def shared(self, peer_public: bytes) -> bytes:
        self._check_length(peer_public)
        try:
            secret = self._key.exchange(x25519.X25519PublicKey.from_public_bytes(peer_public))
        except ValueError:
            # OpenSSL refuses an all-zero result itself.
            secret = bytes(_X25519_LEN)
        # RFC 8031 2: the all-zero shared secret (a low-order peer point) MUST be refused.
        if not any(secret):
            raise InvalidKeyExchange("CURVE25519: all-zero shared secret (low-order point)")
        return secret


class _ModpPrivate(DhPrivate):
    """MODP groups 2/5/14/15/16/17/18 (RFC 2409, RFC 3526), with Python integers.

    Modular exponentiation is all finite-field Diffie-Hellman needs, so it does not
    depend on `cryptography`'s DH API (deprecated there). ``pow`` is not constant
    time; the exponent is ephemeral and used for one exchange only.
    """

    __slots__ = ("_prime", "_size", "_x")

    def __init__(self, group: DhId, x: int) -> None:
        prime = _modp_prime(group)
        size = (prime.bit_length() + 7) // 8
        # RFC 7296 3.4: the public value is left-padded with zeros to the prime's length.
        super().__init__(group, pow(_MODP_GENERATOR, x, prime).to_bytes(size, "big"))
        self._x = x
        self._prime = prime
        self._size = size

    def shared(self, peer_public: bytes) -> bytes:
        self._check_length(peer_public)
        y = int.from_bytes(peer_public, "big")
        # RFC 6989 2.1, NIST SP 800-56A Rev. 3 5.6.2.3.1: 1 < y < p-1. In a safe-prime
        # group that leaves out exactly 0, 1 and p-1 (the subgroups of order 1 and 2)
        # and anything not reduced mod p.
        if not 1 < y < self._prime - 1:
            raise InvalidKeyExchange(f"{DhId.name_of(self.group)}: public value out of range")
        z = pow(y, self._x, self._prime)
        # SP 800-56A Rev. 3 5.7.1.1: a shared secret of 1 is an error.
        if z == 1:
            raise InvalidKeyExchange(f"{DhId.name_of(self.group)}: shared secret is 1")
        # RFC 7296 2.14: g^ir is as long as the prime, zeros prepended.
        return z.to_bytes(self._size, "big")


def dh_generate(group: DhId) -> DhPrivate:
    """A fresh ephemeral key pair in `group`."""
    if group in _ECP_CURVES:
        return _EcpPrivate(group, ec.generate_private_key(_ECP_CURVES[group][0]()))
    if group == DhId.CURVE25519:
        return _X25519Private(x25519.X25519PrivateKey.generate())
    if group in _MODP_PRIMES_HEX:
        # x in [2, 2^N - 1] (SP 800-56A Rev. 3 5.6.1.1.4 with N = _MODP_EXPONENT_BITS).
        return _ModpPrivate(group, 2 + secrets.randbelow(2 ** _MODP_EXPONENT_BITS[group] - 2))
    raise UnsupportedAlgorithm(f"DH group {DhId.name_of(group)} not supported")


def dh_from_private(group: DhId, private: bytes) -> DhPrivate:
    """A key pair from fixed private bytes, for known-answer tests.

    ECP: big-endian scalar; X25519: the 32 raw scalar octets; MODP: big-endian exponent.
    """
    try:
        if group in _ECP_CURVES:
            scalar = int.from_bytes(private, "big")
            return _EcpPrivate(group, ec.derive_private_key(scalar, _ECP_CURVES[group][0]()))
        if group == DhId.CURVE25519:
            return _X25519Private(x25519.X25519PrivateKey.from_private_bytes(private))
        if group in _MODP_PRIMES_HEX:
            x = int.from_bytes(private, "big")
            prime = _modp_prime(group)
            if not 1 < x < prime - 1:
                raise CryptoError(f"{DhId.name_of(group)}: private exponent out of range")
            return _ModpPrivate(group, x)
    except ValueError as exc:
        raise CryptoError(f"{DhId.name_of(group)}: invalid private key: {exc}") from None
    raise UnsupportedAlgorithm(f"DH group {DhId.name_of(group)} not supported")


# --------------------------------------------------------------------------- SK payload


class SkCipher:
    """Protects the Encrypted payload (SK) of IKE messages under one key.

    ``seal`` returns IV | ciphertext | ICV for the SK payload body; ``aad`` is
    every datagram octet before the IV (IKE header + SK generic header, whose
    length fields must already count the ICV: see ``sealed_length``).

    * AEADs, AES-GCM-16 (RFC 5282) and ChaCha20-Poly1305 (RFC 7634 3): 8-octet
      explicit IV; nonce = 4-octet salt | IV; the AAD is ``aad``; padding is
      minimal (none) and the Pad Length octet is kept. Reusing an IV under a key
      breaks both completely, so with ``iv=None`` the IV is a 64-bit counter,
      owned by this object, that starts at a random value and never repeats (an
      explicit ``iv`` is the caller's responsibility).
    * AES-CBC + HMAC (RFC 7296 3.14): random 16-octet IV; padding to the
      block size; ICV = truncated HMAC over aad | IV | ciphertext (RFC 4868),
      checked before decrypting.

    Which transform is which, and its sizes, comes from ``pyike.algorithms``.
    """

    __slots__ = (
        "_aead",
        "_block",
        "_cbc_key",
        "_encr",
        "_hmac",
        "_iv_counter",
        "_ivs_left",
        "_name",
        "_salt",
        "icv_length",
        "iv_length",
    )

    _CBC_BLOCK = 16

    def __init__(
        self,
        encr: EncrId,
        key_bits: int,
        integ: IntegId,
        enc_key: bytes,
        integ_key: bytes,
    ) -> None:
        row = algorithms.encr(encr, key_bits)
        if row is None or not row.ike:
            raise UnsupportedAlgorithm(f"SK encryption {EncrId.name_of(encr)} not supported")
        _check_suite(encr, key_bits, integ, algorithms.Use.IKE)
        if not row.aead and integ == IntegId.NONE:
            # RFC 7296 3.14: the SK payload always carries integrity protection.
            raise UnsupportedAlgorithm(f"{row.name} needs an integrity transform")
        expected = row.keymat_len
        if len(enc_key) != expected:
            raise CryptoError(f"encryption key is {len(enc_key)} octets, expected {expected}")
        if len(integ_key) != integ_key_length(integ):
            raise CryptoError(
                f"integrity key is {len(integ_key)} octets, expected {integ_key_length(integ)}"
            )
        self._encr = encr
        self._name = row.name
        self._aead: algorithms.Aead | None = None
        self._cbc_key: CipherAlgorithm | None = None
        self._hmac: crypto_hmac.HMAC | None = None
        self._salt = b""
        self._iv_counter = 0
        self._ivs_left = 0
        self.iv_length = row.iv_len
        if row.aead:
            # RFC 5282 7.1 / RFC 7634 3: KEYMAT is the key followed by the salt.
            self._aead = row.new_aead(enc_key[: row.key_len])
            self._salt = enc_key[row.key_len :]
            self.icv_length = row.icv_len
            self._block = 1
            self._iv_counter = int.from_bytes(os.urandom(8), "big")
            self._ivs_left = 2**64
        else:
            self._cbc_key = row.new_block_cipher(enc_key)
            self._hmac = _integ(integ).new_mac(integ_key)
            self.icv_length = integ_icv_length(integ)
            self._block = row.block_len

    # -- sizes

    def _padded_length(self, plain_len: int) -> int:
        """Plaintext + Padding + Pad Length octet."""
        # AEADs need no padding; the Pad Length octet stays (RFC 5282 3, RFC 7634 3).
        block = self._block
        return (plain_len + 1 + block - 1) // block * block

    def sealed_length(self, plain_len: int) -> int:
        """Length of ``seal``'s output for `plain_len` octets of inner payloads."""
        return self.iv_length + self._padded_length(plain_len) + self.icv_length

    # -- seal / open

    def _next_iv(self) -> bytes:
        if self._ivs_left == 0:
            raise CryptoError(f"{self._name} IV space exhausted for this key: rekey")
        self._ivs_left -= 1
        iv = self._iv_counter.to_bytes(8, "big")
        self._iv_counter = (self._iv_counter + 1) % 2**64
        return iv

    def _icv(self, data: bytes) -> bytes:
        assert self._hmac is not None
        mac = self._hmac.copy()
        mac.update(data)
        return mac.finalize()[: self.icv_length]

    def seal(self, aad: bytes, plaintext: bytes, iv: bytes | None = None) -> bytes:
        """Encrypt and protect the inner payloads; returns IV | ciphertext | ICV."""
        pad_len = self._padded_length(len(plaintext)) - len(plaintext) - 1
        padded = plaintext + bytes(pad_len) + bytes([pad_len])
        if self._aead is not None:
            if iv is None:
                iv = self._next_iv()
            elif len(iv) != self.iv_length:
                raise CryptoError(f"{self._name} IV must be {self.iv_length} octets, got {len(iv)}")
            # RFC 5282 4 / RFC 7634 2: nonce = salt | explicit IV; the AEAD output
            # already ends with the 16-octet ICV.
            return iv + self._aead.encrypt(self._salt + iv, padded, aad)
        assert self._cbc_key is not None
        if iv is None:
            iv = os.urandom(self._CBC_BLOCK)  # RFC 7296 3.14: unpredictable IV
        elif len(iv) != self._CBC_BLOCK:
            raise CryptoError(f"AES-CBC IV must be 16 octets, got {len(iv)}")
        encryptor = Cipher(self._cbc_key, modes.CBC(iv)).encryptor()
        body = iv + encryptor.update(padded) + encryptor.finalize()
        return body + self._icv(aad + body)

    def open(self, aad: bytes, body: bytes) -> bytes:
        """Verify and decrypt an SK payload body; returns the inner payloads.

        Raises IntegrityError for a bad ICV, a bad length or a bad Pad Length.
        """
        if self._aead is not None:
            if len(body) < self.iv_length + 1 + self.icv_length:
                raise IntegrityError(f"SK payload too short ({len(body)} octets)")
            iv, sealed = body[: self.iv_length], body[self.iv_length :]
            try:
                padded = self._aead.decrypt(self._salt + iv, sealed, aad)
            except InvalidTag:
                raise IntegrityError(f"{self._name} ICV check failed") from None
        else:
            assert self._cbc_key is not None
            block = self._CBC_BLOCK
            ct_len = len(body) - self.iv_length - self.icv_length
            if ct_len < block or ct_len % block:
                raise IntegrityError(f"SK payload length {len(body)} is not IV + blocks + ICV")
            covered, icv = body[: -self.icv_length], body[-self.icv_length :]
            # RFC 7296 3.14: check integrity before touching the ciphertext.
            if not compare_digest(self._icv(aad + covered), icv):
                raise IntegrityError("SK payload ICV check failed")
            decryptor = Cipher(self._cbc_key, modes.CBC(covered[:block])).decryptor()
            padded = decryptor.update(covered[block:]) + decryptor.finalize()
        pad_len = padded[-1]
        if pad_len + 1 > len(padded):
            raise IntegrityError(f"Pad Length {pad_len} exceeds the decrypted data")
        return padded[: -1 - pad_len]


# --------------------------------------------------------------------------- AUTH

# RFC 7427 Appendix A.4: AlgorithmIdentifier DER of ecdsa-with-SHA256/384/512
# (OIDs 1.2.840.10045.4.3.2/3/4 from RFC 5758 3.2, parameters absent).
ALGORITHM_IDENTIFIERS: dict[HashAlgorithm, bytes] = {
    HashAlgorithm.SHA2_256: bytes.fromhex("300a06082a8648ce3d040302"),
    HashAlgorithm.SHA2_384: bytes.fromhex("300a06082a8648ce3d040303"),
    HashAlgorithm.SHA2_512: bytes.fromhex("300a06082a8648ce3d040304"),
}
# RFC 8420 2 / RFC 8410 3: id-Ed25519 (1.3.101.112), parameters absent; the
# signature is over the AUTH octets themselves (hash IDENTITY).
ED25519_ALGORITHM_IDENTIFIER = bytes.fromhex("300506032b6570")

_SIG_HASHES: dict[int, type[hashes.HashAlgorithm]] = {
    HashAlgorithm.SHA2_256: hashes.SHA256,
    HashAlgorithm.SHA2_384: hashes.SHA384,
    HashAlgorithm.SHA2_512: hashes.SHA512,
}
_ECDSA_BY_ALGORITHM_IDENTIFIER = {der: alg for alg, der in ALGORITHM_IDENTIFIERS.items()}

# RFC 4754 3 / 7: method, curve, hash, and the octet length of r and s.
_ECDSA_METHODS: dict[int, tuple[str, HashAlgorithm, int]] = {
    AuthMethod.ECDSA_SHA256_P256: ("secp256r1", HashAlgorithm.SHA2_256, 32),
    AuthMethod.ECDSA_SHA384_P384: ("secp384r1", HashAlgorithm.SHA2_384, 48),
    AuthMethod.ECDSA_SHA512_P521: ("secp521r1", HashAlgorithm.SHA2_512, 66),
}
_METHOD_BY_CURVE = {curve: method for method, (curve, _, _) in _ECDSA_METHODS.items()}

# RFC 7296 2.15: the fixed pad string of shared-key authentication.
_PSK_PAD = b"Key Pad for IKEv2"

PrivateSigningKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicSigningKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


def auth_octets(
    message: bytes, peer_nonce: bytes, prf_alg: PrfId, sk_p: bytes, id_body: bytes
) -> bytes:
    """The octets an AUTH payload signs (RFC 7296 2.15).

    ``message`` is the signer's whole IKE_SA_INIT message, ``peer_nonce`` the
    other side's nonce data, ``sk_p`` the signer's SK_pi/SK_pr and ``id_body``
    the signer's RestOfIDPayload (ID Type, 3 reserved octets, identification data).
    """
    return message + peer_nonce + prf(prf_alg, sk_p, id_body)


def psk_auth(prf_alg: PrfId, secret: bytes, octets: bytes) -> bytes:
    """Shared-key AUTH data (method 2): prf(prf(secret, "Key Pad for IKEv2"), octets)."""
    return prf(prf_alg, prf(prf_alg, secret, _PSK_PAD), octets)


def verify_psk_auth(prf_alg: PrfId, secret: bytes, octets: bytes, auth_data: bytes) -> None:
    """Check shared-key AUTH data in constant time; raises AuthenticationError."""
    if not compare_digest(psk_auth(prf_alg, secret, octets), auth_data):
        raise AuthenticationError("shared-key AUTH mismatch")


def auth_method_for_key(key: PrivateSigningKey | PublicSigningKey) -> AuthMethod:
    """The RFC 4754 method for an ECDSA key's curve (9/10/11); method 14 for Ed25519."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        try:
            return AuthMethod(_METHOD_BY_CURVE[key.curve.name])
        except KeyError:
            raise UnsupportedAlgorithm(f"ECDSA curve {key.curve.name} not supported") from None
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return AuthMethod.DIGITAL_SIGNATURE
    raise UnsupportedAlgorithm(f"no AUTH method for {type(key).__name__}")


def _natural_hash(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> HashAlgorithm:
    return _ECDSA_METHODS[auth_method_for_key(key)][1]


def sign_auth(
    method: AuthMethod,
    key: PrivateSigningKey,
    octets: bytes,
    hash_alg: HashAlgorithm | None = None,
) -> bytes:
    """AUTH payload data for a signature method.

    * 9/10/11 (RFC 4754): raw r | s, each padded to the curve's octet length;
      the curve must match the method.
    * 14 (RFC 7427 3): 1-octet length | AlgorithmIdentifier | signature.
      ECDSA uses ``hash_alg`` (default: the curve's natural hash) and a DER
      signature; Ed25519 (RFC 8420) signs the octets directly.

    Shared keys (method 2) use ``psk_auth``.
    """
    if method in _ECDSA_METHODS:
        curve, natural, size = _ECDSA_METHODS[method]
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != curve:
            raise CryptoError(f"AUTH method {AuthMethod.name_of(method)} needs a {curve} key")
        if hash_alg not in (None, natural):
            raise CryptoError(f"AUTH method {AuthMethod.name_of(method)} fixes the hash")
        r, s = decode_dss_signature(key.sign(octets, ec.ECDSA(_SIG_HASHES[natural]())))
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    if method == AuthMethod.DIGITAL_SIGNATURE:
        if isinstance(key, ed25519.Ed25519PrivateKey):
            if hash_alg not in (None, HashAlgorithm.IDENTITY):
                raise CryptoError("Ed25519 signs with hash IDENTITY (RFC 8420)")
            alg_id, signature = ED25519_ALGORITHM_IDENTIFIER, key.sign(octets)
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            hash_alg = _natural_hash(key) if hash_alg is None else hash_alg
            if hash_alg not in ALGORITHM_IDENTIFIERS:
                raise UnsupportedAlgorithm(
                    f"ECDSA with {HashAlgorithm.name_of(hash_alg)} not supported"
                )
            alg_id = ALGORITHM_IDENTIFIERS[hash_alg]
            signature = key.sign(octets, ec.ECDSA(_SIG_HASHES[hash_alg]()))
        else:
            raise UnsupportedAlgorithm(f"no digital signature with {type(key).__name__}")
        return bytes([len(alg_id)]) + alg_id + signature
    raise UnsupportedAlgorithm(f"cannot sign AUTH method {AuthMethod.name_of(method)}")


def _describe_algorithm_identifier(der: bytes) -> str:
    """The OID of an AlgorithmIdentifier for error messages, or its hex if unparsable."""
    try:
        # SEQUENCE { OBJECT IDENTIFIER, ... } with short-form lengths (all we accept).
        if der[0] != 0x30 or der[2] != 0x06:
            raise ValueError
        content = der[4 : 4 + der[3]]
        if len(content) != der[3] or not content:
            raise ValueError
        first = content[0]
        arcs = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
        value = 0
        for byte in content[1:]:
            value = (value << 7) | (byte & 0x7F)
            if not byte & 0x80:
                arcs.append(value)
                value = 0
        return "OID " + ".".join(map(str, arcs))
    except (IndexError, ValueError):
        return "AlgorithmIdentifier " + der.hex()


def _verify_digital_signature(key: PublicSigningKey, octets: bytes, auth_data: bytes) -> None:
    """Method 14 (RFC 7427 3): 1-octet length | AlgorithmIdentifier | signature."""
    if not auth_data:
        raise AuthenticationError("empty digital-signature AUTH data")
    alg_len = auth_data[0]
    if len(auth_data) < 1 + alg_len:
        raise AuthenticationError(
            f"AlgorithmIdentifier length {alg_len} exceeds the AUTH data ({len(auth_data)} octets)"
        )
    alg_id, signature = auth_data[1 : 1 + alg_len], auth_data[1 + alg_len :]
    if alg_id == ED25519_ALGORITHM_IDENTIFIER:
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise AuthenticationError("Ed25519 signature but the peer's key is not Ed25519")
        key.verify(signature, octets)
        return
    hash_alg = _ECDSA_BY_ALGORITHM_IDENTIFIER.get(alg_id)
    if hash_alg is None:
        raise AuthenticationError(
            f"unsupported signature algorithm {_describe_algorithm_identifier(alg_id)}"
        )
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise AuthenticationError("ECDSA signature but the peer's key is not an EC key")
    # The hash comes from the AlgorithmIdentifier, not from the curve: OpenIKED
    # signs method 14 with SHA-256 even for P-384 keys.
    key.verify(signature, octets, ec.ECDSA(_SIG_HASHES[hash_alg]()))


def verify_auth(
    method: AuthMethod | int, public_key: PublicSigningKey, octets: bytes, auth_data: bytes
) -> None:
    """Verify signature AUTH data (methods 9/10/11/14); raises AuthenticationError only.

    Shared keys (method 2) use ``verify_psk_auth``.
    """
    try:
        if method in _ECDSA_METHODS:
            curve, hash_alg, size = _ECDSA_METHODS[method]
            if not isinstance(public_key, ec.EllipticCurvePublicKey):
                raise AuthenticationError(f"method {int(method)} needs an EC public key")
            if public_key.curve.name != curve:
                raise AuthenticationError(
                    f"method {int(method)} needs a {curve} key, peer has {public_key.curve.name}"
                )
            # RFC 4754 7: the signature is r | s, each exactly the curve size.
            if len(auth_data) != 2 * size:
                raise AuthenticationError(
                    f"ECDSA AUTH data is {len(auth_data)} octets, expected {2 * size}"
                )
            r = int.from_bytes(auth_data[:size], "big")
            s = int.from_bytes(auth_data[size:], "big")
            der = encode_dss_signature(r, s)
            public_key.verify(der, octets, ec.ECDSA(_SIG_HASHES[hash_alg]()))
        elif method == AuthMethod.DIGITAL_SIGNATURE:
            _verify_digital_signature(public_key, octets, auth_data)
        else:
            raise AuthenticationError(
                f"cannot verify AUTH method {AuthMethod.name_of(method)} with a public key"
            )
    except InvalidSignature:
        raise AuthenticationError("AUTH signature does not verify") from None
    except ValueError as exc:
        # Malformed DER, out-of-range r/s and similar refusals from the library.
        raise AuthenticationError(f"AUTH signature rejected: {exc}") from None


# --------------------------------------------------------------------------- NAT detection


def nat_detection_hash(
    spi_i: bytes,
    spi_r: bytes,
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | str,
    port: int,
) -> bytes:
    """NAT_DETECTION_*_IP data: SHA-1(SPIi | SPIr | IP | Port) (RFC 7296 2.23).

    Every liveness check and its answer carry two (RFC 4555 3.5), so this is kept
    cheap: an address object is used as it is (ip_address() of one formats it as
    text and parses it again), and hashlib's SHA-1 needs no context object."""
    if isinstance(ip, str):
        ip = ipaddress.ip_address(ip)
    return hashlib.sha1(spi_i + spi_r + ip.packed + port.to_bytes(2, "big")).digest()
