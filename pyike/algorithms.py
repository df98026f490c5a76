"""The one table of transforms pyike knows: what they are, what iked.conf calls them,
their sizes, and whether pyike can serve them in IKE and in ESP.

Every other module asks this table instead of stating its own facts:

* ``config``    the iked.conf(5) names (in iked's parse.y order, since iked takes the
                first name a word is a prefix of) and whether a configured transform
                can be served; a configured transform that cannot is refused there.
* ``proposals`` what goes on the wire: ``from_specs`` keeps only what ``servable``
                says can be served, so iked's defaults (which list 3DES) never offer it.
* ``crypto``    key material lengths, PRF hashes and the AEAD/CBC constructors for
                SK payloads (RFC 7296 3.14, RFC 5282, RFC 7634 3).
* ``esp``       the same for ESP (RFC 4303, RFC 4106, RFC 7634 2).

A row is one transform (ID and, where the ID needs one, key length). ``ike``/``esp``
say whether pyike can serve it there; ``in_ikesa``/``in_childsa`` whether the config
accepts its names in ``ikesa``/``childsa`` (iked.conf(5)'s tables). Rows without a
constructor are only known by name, so that a configuration naming them gets a precise
refusal instead of an offer pyike could not keep.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers import algorithms as cipher_algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from pyike.registry import DhId, EncrId, IntegId, PrfId

__all__ = [
    "DH_BRAINPOOL_P224R1",
    "DH_BRAINPOOL_P256R1",
    "DH_BRAINPOOL_P384R1",
    "DH_BRAINPOOL_P512R1",
    "DH_ECP_192",
    "DH_ECP_224",
    "DH_SNTRUP761X25519",
    "ENCRS",
    "ENCR_BLOWFISH",
    "ENCR_CAST",
    "GROUPS",
    "INTEGS",
    "PRFS",
    "Aead",
    "EncrAlg",
    "GroupAlg",
    "GroupKind",
    "IntegAlg",
    "PrfAlg",
    "Use",
    "encr",
    "group",
    "integ",
    "prf",
]

# Numbers iked.conf(5) accepts that pyike.registry does not list.
ENCR_CAST = 6  # IANA IKEv2 Transform Type 1, ENCR_CAST (RFC 2144)
ENCR_BLOWFISH = 7  # IANA IKEv2 Transform Type 1, ENCR_BLOWFISH
DH_ECP_192 = 25  # RFC 5114 section 3.2
DH_ECP_224 = 26  # RFC 5114 section 3.2
DH_BRAINPOOL_P224R1 = 27  # RFC 6954
DH_BRAINPOOL_P256R1 = 28  # RFC 6954
DH_BRAINPOOL_P384R1 = 29  # RFC 6954
DH_BRAINPOOL_P512R1 = 30  # RFC 6954
DH_SNTRUP761X25519 = 1035  # OpenIKED private-use number (hybrid PQ key exchange)


class Use(Enum):
    """Where a transform is used: the IKE SA's SK payloads, or ESP."""

    IKE = "ikesa"
    ESP = "childsa"


class Aead(Protocol):
    """What SK payloads and ESP need of an AEAD object (AESGCM, ChaCha20Poly1305)."""

    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes: ...
    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes: ...


# --------------------------------------------------------------------------- encryption


@dataclass(frozen=True, slots=True)
class EncrAlg:
    """One encryption transform (Transform Type 1) at one key length."""

    id: int
    key_bits: int | None  # Key Length attribute (RFC 7296 3.3.5); None: the ID takes none
    names: tuple[str, ...]  # iked.conf(5) names; the first is the one iked prints
    iked_length: int  # iked's key length column in octets (its printer matches on it)
    in_ikesa: bool  # iked.conf accepts the names in "ikesa" (iked.conf(5), plus chacha20)
    in_childsa: bool  # ... in "childsa"
    ike: bool = False  # pyike can protect SK payloads with it
    esp: bool = False  # pyike's ESP codec can carry it
    aead: bool = False  # combined mode: no INTEG transform (RFC 7296 3.3, RFC 5282)
    key_len: int = 0  # cipher key octets
    salt_len: int = 0  # octets of KEYMAT after the key (RFC 4106 8.1, RFC 7634 2)
    iv_len: int = 0  # explicit IV carried in each packet/payload
    icv_len: int = 0  # AEAD tag octets (0 for non-AEAD: the INTEG transform has it)
    block_len: int = 1  # cipher block (padding unit of CBC); 1 for AEADs
    aead_factory: Callable[[bytes], Aead] | None = field(default=None, repr=False)
    block_factory: Callable[[bytes], cipher_algorithms.AES] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.names[0] if self.names else EncrId.name_of(self.id)

    @property
    def keymat_len(self) -> int:
        """Octets of key material the transform takes from prf+ (RFC 7296 2.14, 2.17)."""
        return self.key_len + self.salt_len

    def serves(self, use: Use) -> bool:
        return self.ike if use is Use.IKE else self.esp

    def new_aead(self, key: bytes) -> Aead:
        """The AEAD object for `key` (the cipher key, without the salt)."""
        if self.aead_factory is None:
            raise ValueError(f"{self.name} is not an AEAD pyike implements")
        return self.aead_factory(key)

    def new_block_cipher(self, key: bytes) -> cipher_algorithms.AES:
        if self.block_factory is None:
            raise ValueError(f"{self.name} is not a block cipher pyike implements")
        return self.block_factory(key)


def _aes_cbc(bits: int) -> EncrAlg:
    # RFC 3602 (ESP), RFC 7296 3.14 (IKE): 16-octet random IV, 16-octet blocks.
    return EncrAlg(
        EncrId.AES_CBC, bits, (f"aes-{bits}",), bits // 8, True, True, ike=True, esp=True,
        key_len=bits // 8, iv_len=16, block_len=16, block_factory=cipher_algorithms.AES,
    )  # fmt: skip


def _aes_gcm16(bits: int, in_ikesa: bool) -> EncrAlg:
    # RFC 4106 (ESP), RFC 5282 (IKE): key | 4-octet salt, 8-octet IV, 16-octet ICV.
    return EncrAlg(
        EncrId.AES_GCM_16, bits, (f"aes-{bits}-gcm",), bits // 8, in_ikesa, True,
        ike=True, esp=True, aead=True, key_len=bits // 8, salt_len=4, iv_len=8, icv_len=16,
        aead_factory=AESGCM,
    )  # fmt: skip


def _known(
    id_: int, bits: int | None, names: tuple[str, ...], length: int, ike: bool, esp: bool,
    aead: bool = False,
) -> EncrAlg:  # fmt: skip
    """A transform iked.conf names but pyike cannot serve."""
    return EncrAlg(id_, bits, names, length, ike, esp, aead=aead)


# In iked's parse.y order (ikeencxfs and ipsecencxfs merged; each keeps its order).
ENCRS: tuple[EncrAlg, ...] = (
    _known(EncrId.DES3, None, ("3des", "3des-cbc"), 24, True, True),
    _aes_cbc(128),
    _aes_cbc(192),
    _aes_cbc(256),
    _known(EncrId.AES_CTR, 128, ("aes-128-ctr",), 16, False, True),
    _known(EncrId.AES_CTR, 192, ("aes-192-ctr",), 24, False, True),
    _known(EncrId.AES_CTR, 256, ("aes-256-ctr",), 32, False, True),
    _aes_gcm16(128, in_ikesa=True),
    _aes_gcm16(192, in_ikesa=False),
    _aes_gcm16(256, in_ikesa=True),
    # AES-GCM with a 12-octet ICV: `cryptography`'s AESGCM only makes 16-octet tags.
    _known(EncrId.AES_GCM_12, 128, ("aes-128-gcm-12",), 16, True, False, aead=True),
    _known(EncrId.AES_GCM_12, 256, ("aes-256-gcm-12",), 32, True, False, aead=True),
    _known(EncrId.NULL_AUTH_AES_GMAC, 128, ("aes-128-gmac",), 16, False, True, aead=True),
    _known(EncrId.NULL_AUTH_AES_GMAC, 192, ("aes-192-gmac",), 24, False, True, aead=True),
    _known(EncrId.NULL_AUTH_AES_GMAC, 256, ("aes-256-gmac",), 32, False, True, aead=True),
    _known(ENCR_BLOWFISH, 160, ("blowfish",), 20, False, True),
    _known(ENCR_CAST, 128, ("cast",), 16, False, True),
    # RFC 7634: 32-octet key | 4-octet salt, 8-octet IV, 16-octet tag, no Key Length
    # attribute (section 2; iked sends 256 anyway). pyike: iked.conf(5) lists it for
    # childsa only; pyike also accepts it in ikesa, as RFC 7634 section 3 defines it.
    EncrAlg(
        EncrId.CHACHA20_POLY1305,
        key_bits=None,
        names=("chacha20-poly1305",),
        iked_length=32,
        in_ikesa=True,
        in_childsa=True,
        ike=True,
        esp=True,
        aead=True,
        key_len=32,
        salt_len=4,
        iv_len=8,
        icv_len=16,
        aead_factory=ChaCha20Poly1305,
    ),
    _known(EncrId.NULL, None, ("null",), 0, False, True),
)

_ENCR_BY_ID: dict[tuple[int, int | None], EncrAlg] = {(e.id, e.key_bits): e for e in ENCRS}


def encr(encr_id: int, key_bits: int | None) -> EncrAlg | None:
    """The row for a transform as negotiated (key_bits 0 or None: no Key Length)."""
    row = _ENCR_BY_ID.get((encr_id, key_bits or None))
    if row is None and key_bits:  # a Key Length on an ID that takes none stays unknown
        return None
    return row


# --------------------------------------------------------------------------- integrity


@dataclass(frozen=True, slots=True)
class IntegAlg:
    """One integrity transform (Transform Type 3)."""

    id: int
    names: tuple[str, ...]
    hash: type[hashes.HashAlgorithm] | None = None  # None: pyike does not implement it
    key_len: int = 0
    icv_len: int = 0

    @property
    def name(self) -> str:
        return self.names[0] if self.names else IntegId.name_of(self.id)

    def serves(self, use: Use) -> bool:
        return self.hash is not None

    def new_mac(self, key: bytes) -> crypto_hmac.HMAC:
        """A keyed HMAC; callers copy() it per message and truncate to ``icv_len``."""
        if self.hash is None:
            raise ValueError(f"integrity {self.name} is not implemented")
        return crypto_hmac.HMAC(key, self.hash())


# RFC 4868 2.1 (key = full hash output, ICV = half) and RFC 2404 (SHA-1, 96 bits).
INTEGS: tuple[IntegAlg, ...] = (
    IntegAlg(IntegId.HMAC_MD5_96, ("hmac-md5",)),  # RFC 8221 5: MUST NOT
    IntegAlg(IntegId.HMAC_SHA1_96, ("hmac-sha1",), hashes.SHA1, 20, 12),
    IntegAlg(IntegId.HMAC_SHA2_256_128, ("hmac-sha2-256",), hashes.SHA256, 32, 16),
    IntegAlg(IntegId.HMAC_SHA2_384_192, ("hmac-sha2-384",), hashes.SHA384, 48, 24),
    IntegAlg(IntegId.HMAC_SHA2_512_256, ("hmac-sha2-512",), hashes.SHA512, 64, 32),
)
_INTEG_BY_ID = {i.id: i for i in INTEGS}


def integ(integ_id: int) -> IntegAlg | None:
    return _INTEG_BY_ID.get(integ_id)


# --------------------------------------------------------------------------- PRF


@dataclass(frozen=True, slots=True)
class PrfAlg:
    """One pseudo-random function (Transform Type 2); IKE SAs only."""

    id: int
    names: tuple[str, ...]
    hash: type[hashes.HashAlgorithm] | None = None  # every PRF pyike serves is an HMAC

    @property
    def name(self) -> str:
        return self.names[0] if self.names else PrfId.name_of(self.id)

    @property
    def output_len(self) -> int:
        """Output octets; also the "preferred key length" of RFC 7296 2.14."""
        if self.hash is None:
            raise ValueError(f"PRF {self.name} is not implemented")
        return self.hash().digest_size

    def serves(self, use: Use) -> bool:
        return self.hash is not None

    def new_prf(self, key: bytes) -> crypto_hmac.HMAC:
        """prf(K, .) of RFC 7296 2.13 keyed with `key`: update() then finalize()."""
        if self.hash is None:
            raise ValueError(f"PRF {self.name} is not implemented")
        return crypto_hmac.HMAC(key, self.hash())


PRFS: tuple[PrfAlg, ...] = (
    PrfAlg(PrfId.HMAC_MD5, ("hmac-md5",)),
    PrfAlg(PrfId.HMAC_SHA1, ("hmac-sha1",), hashes.SHA1),
    PrfAlg(PrfId.HMAC_SHA2_256, ("hmac-sha2-256",), hashes.SHA256),
    PrfAlg(PrfId.HMAC_SHA2_384, ("hmac-sha2-384",), hashes.SHA384),
    PrfAlg(PrfId.HMAC_SHA2_512, ("hmac-sha2-512",), hashes.SHA512),
)
_PRF_BY_ID = {p.id: p for p in PRFS}


def prf(prf_id: int) -> PrfAlg | None:
    return _PRF_BY_ID.get(prf_id)


# --------------------------------------------------------------------------- DH groups


class GroupKind(Enum):
    NONE = "none"  # no PFS (childsa "group none")
    MODP = "modp"  # RFC 2409 / RFC 3526, Python integers (pyike.crypto)
    ECP = "ecp"  # RFC 5903, `cryptography`
    X25519 = "x25519"  # RFC 8031, `cryptography`
    UNSERVED = "unserved"  # named by iked.conf, not implemented by pyike


@dataclass(frozen=True, slots=True)
class GroupAlg:
    """One key exchange group (Transform Type 4)."""

    id: int
    names: tuple[str, ...]  # e.g. ("modp2048", "grp14")
    kind: GroupKind
    public_len: int = 0  # KE payload key exchange data octets (RFC 7296 3.4)

    @property
    def name(self) -> str:
        return self.names[0] if self.names else DhId.name_of(self.id)

    def serves(self, use: Use) -> bool:
        # Child SA PFS groups are computed by the IKE core, so one answer fits both.
        return self.kind is not GroupKind.UNSERVED


def _g(id_: int, name: str, grp: int, kind: GroupKind, public_len: int = 0) -> GroupAlg:
    return GroupAlg(id_, (name, f"grp{grp}"), kind, public_len)


_M, _E, _U = GroupKind.MODP, GroupKind.ECP, GroupKind.UNSERVED
# In iked's parse.y order (groupxfs).
GROUPS: tuple[GroupAlg, ...] = (
    GroupAlg(DhId.NONE, ("none",), GroupKind.NONE),
    _g(DhId.MODP_768, "modp768", 1, _U),  # RFC 8247 2.4: MUST NOT
    _g(DhId.MODP_1024, "modp1024", 2, _M, 128),
    _g(DhId.MODP_1536, "modp1536", 5, _M, 192),
    _g(DhId.MODP_2048, "modp2048", 14, _M, 256),
    _g(DhId.MODP_3072, "modp3072", 15, _M, 384),
    _g(DhId.MODP_4096, "modp4096", 16, _M, 512),
    _g(DhId.MODP_6144, "modp6144", 17, _M, 768),
    _g(DhId.MODP_8192, "modp8192", 18, _M, 1024),
    _g(DhId.ECP_256, "ecp256", 19, _E, 64),  # RFC 5903 7: x | y
    _g(DhId.ECP_384, "ecp384", 20, _E, 96),
    _g(DhId.ECP_521, "ecp521", 21, _E, 132),
    _g(DH_ECP_192, "ecp192", 25, _U),
    _g(DH_ECP_224, "ecp224", 26, _U),
    _g(DH_BRAINPOOL_P224R1, "brainpool224", 27, _U),
    _g(DH_BRAINPOOL_P256R1, "brainpool256", 28, _U),
    _g(DH_BRAINPOOL_P384R1, "brainpool384", 29, _U),
    _g(DH_BRAINPOOL_P512R1, "brainpool512", 30, _U),
    _g(DhId.CURVE25519, "curve25519", 31, GroupKind.X25519, 32),  # RFC 8031 2
    GroupAlg(DH_SNTRUP761X25519, ("sntrup761x25519",), _U),
)
_GROUP_BY_ID = {g.id: g for g in GROUPS}


def group(group_id: int) -> GroupAlg | None:
    return _GROUP_BY_ID.get(group_id)
