"""Signature AUTH: which method to use, producing it, and checking the peer's.

The IKE core hands this module a key, the octets to sign (RFC 7296 2.15, from
``crypto.auth_octets``), the iked.conf ``ikeauth`` keyword and the hashes the peer
announced in SIGNATURE_HASH_ALGORITHMS (RFC 7427 4); it gets back AUTH payload data.
Nothing else in the core knows about key types.

Methods (RFC 7296 3.8 and the IANA registry):

  1   RSA_SIG            RSASSA-PKCS1-v1_5 with SHA-1 (RFC 7296 3.8; what iked's ``rsa``
                         means and what it sends without RFC 7427)
  9   ECDSA_SHA256_P256  RFC 4754: raw r|s
  10  ECDSA_SHA384_P384  RFC 4754
  11  ECDSA_SHA512_P521  RFC 4754
  14  DIGITAL_SIGNATURE  RFC 7427: length | AlgorithmIdentifier | signature, with
                         ECDSA (DER), RSASSA-PKCS1-v1_5 or RSASSA-PSS, SHA-256/384/512,
                         or Ed25519 (RFC 8420)

Keywords (iked.conf(5) ``ikeauth``), with iked's meaning:

* ``rsa``, ``ecdsa256``, ``ecdsa384``, ``ecdsa521`` name the key type (ours must be
  it) and its own method (1, 9, 10, 11). As iked does ("switching ECDSA_384 to SIG"),
  method 14 is used instead when the peer announced a hash we can use; from the peer
  we accept the named method or method 14.
* ``rfc7427``: method 14 only, both ways.
* ``signature`` (iked's default, also for no keyword): "any signature": method 14 if
  the peer announced a hash we can use, else the key's own method (1 for RSA, 9/10/11
  for the curve); any signature method from the peer.
"""

from __future__ import annotations

from dataclasses import dataclass

from asn1crypto import algos, core
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from pyike import crypto
from pyike.crypto import AuthenticationError, CryptoError
from pyike.registry import AuthMethod, HashAlgorithm

__all__ = [
    "KEYWORDS",
    "MIN_RSA_BITS",
    "AuthenticationError",
    "SignatureChoice",
    "check_key",
    "choose",
    "describe_key",
    "sign",
    "verify",
]

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey

# iked refuses RSA keys below 2048 bits for new setups; so do we (NIST SP 800-131A).
MIN_RSA_BITS = 2048

KEYWORDS = ("signature", "rsa", "ecdsa256", "ecdsa384", "ecdsa521", "rfc7427")
_KEYWORD_METHOD: dict[str, AuthMethod] = {
    "rsa": AuthMethod.RSA_SIG,
    "ecdsa256": AuthMethod.ECDSA_SHA256_P256,
    "ecdsa384": AuthMethod.ECDSA_SHA384_P384,
    "ecdsa521": AuthMethod.ECDSA_SHA512_P521,
    "rfc7427": AuthMethod.DIGITAL_SIGNATURE,
}
SIGNATURE_METHODS = frozenset(
    {
        AuthMethod.RSA_SIG,
        AuthMethod.ECDSA_SHA256_P256,
        AuthMethod.ECDSA_SHA384_P384,
        AuthMethod.ECDSA_SHA512_P521,
        AuthMethod.DIGITAL_SIGNATURE,
    }
)
# RFC 7427 4: the hashes we sign and verify with, in our order of preference for RSA.
OUR_HASHES = (HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512)
_HASH_CLASSES: dict[int, type[hashes.HashAlgorithm]] = {
    HashAlgorithm.SHA2_256: hashes.SHA256,
    HashAlgorithm.SHA2_384: hashes.SHA384,
    HashAlgorithm.SHA2_512: hashes.SHA512,
}
_HASH_NAMES = {HashAlgorithm.SHA2_256: "sha256", HashAlgorithm.SHA2_384: "sha384"}
_HASH_NAMES[HashAlgorithm.SHA2_512] = "sha512"
_HASH_BY_NAME = {name: h for h, name in _HASH_NAMES.items()}

# RFC 7427 Appendix A.1: sha{256,384,512}WithRSAEncryption (RFC 4055 5), NULL parameters.
RSA_PKCS1_ALGORITHM_IDENTIFIERS: dict[HashAlgorithm, bytes] = {
    HashAlgorithm.SHA2_256: bytes.fromhex("300d06092a864886f70d01010b0500"),
    HashAlgorithm.SHA2_384: bytes.fromhex("300d06092a864886f70d01010c0500"),
    HashAlgorithm.SHA2_512: bytes.fromhex("300d06092a864886f70d01010d0500"),
}
_RSA_PKCS1_BY_DER = {der: h for h, der in RSA_PKCS1_ALGORITHM_IDENTIFIERS.items()}
_ECDSA_BY_DER = {der: h for h, der in crypto.ALGORITHM_IDENTIFIERS.items()}


def rsa_pss_algorithm_identifier(hash_alg: HashAlgorithm) -> bytes:
    """RFC 7427 A.4.3 style id-RSASSA-PSS (RFC 4055 3.1): hash, MGF1 with the same hash,
    salt length = hash length, trailer field 1 (the default, so left out in DER)."""
    name = _HASH_NAMES[hash_alg]
    hash_id = {"algorithm": name, "parameters": core.Null()}
    params = algos.RSASSAPSSParams(
        {
            "hash_algorithm": hash_id,
            "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": hash_id},
            "salt_length": _HASH_CLASSES[hash_alg].digest_size,
        }
    )
    alg = algos.SignedDigestAlgorithm({"algorithm": "rsassa_pss", "parameters": params})
    return alg.dump(force=True)


@dataclass(frozen=True, slots=True)
class SignatureChoice:
    """What we will sign with: the AUTH method and, for method 14, hash and padding."""

    method: AuthMethod
    hash_alg: HashAlgorithm | None = None
    pss: bool = False

    def describe(self) -> str:
        text = AuthMethod.name_of(self.method)
        if self.hash_alg is not None:
            text += f" {HashAlgorithm.name_of(self.hash_alg)}"
        if self.pss:
            text += " RSASSA-PSS"
        return text


def describe_key(key: PrivateKey | PublicKey | object) -> str:
    """'RSA-2048', 'ECDSA P-384', 'Ed25519' (never any key material)."""
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        names = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
        return f"ECDSA {names.get(key.curve.name, key.curve.name)}"
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "Ed25519"
    return type(key).__name__.lstrip("_")


def _natural_method(key: PrivateKey | PublicKey) -> AuthMethod:
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return AuthMethod.RSA_SIG
    return crypto.auth_method_for_key(key)  # type: ignore[arg-type]


def check_key(key: object, keyword: str = "signature") -> None:
    """Raise CryptoError if ``key`` cannot sign/verify under ``keyword`` (config check)."""
    if keyword not in KEYWORDS:
        raise CryptoError(f"unknown signature keyword {keyword!r}")
    if not isinstance(key, PrivateKey | PublicKey):
        raise CryptoError(f"{describe_key(key)} keys cannot be used for AUTH")
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise CryptoError(f"{describe_key(key)} is too short (at least {MIN_RSA_BITS} bits)")
    try:
        natural = _natural_method(key)
    except Exception as e:  # an unsupported curve
        raise CryptoError(str(e)) from None
    fixed = _KEYWORD_METHOD.get(keyword)
    if fixed is None or fixed == AuthMethod.DIGITAL_SIGNATURE:
        return
    if fixed != natural:
        raise CryptoError(
            f"ikeauth {keyword} needs a {_KEYWORD_KEY[keyword]} key, "
            f"but the key is {describe_key(key)}"
        )


_KEYWORD_KEY = {
    "rsa": "RSA",
    "ecdsa256": "ECDSA P-256",
    "ecdsa384": "ECDSA P-384",
    "ecdsa521": "ECDSA P-521",
}


def choose(
    key: PrivateKey,
    keyword: str = "signature",
    peer_hashes: set[int] | frozenset[int] = frozenset(),
    *,
    rfc7427: bool = True,
    pss: bool = False,
) -> SignatureChoice:
    """The method we sign with (see the module docstring); raises CryptoError.

    ``rfc7427`` False never picks method 14 unless the keyword demands it; ``pss``
    makes an RSA key sign method 14 with RSASSA-PSS instead of PKCS#1 v1.5.
    """
    check_key(key, keyword)
    natural = _natural_method(key)
    fixed = _KEYWORD_METHOD.get(keyword)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return SignatureChoice(AuthMethod.DIGITAL_SIGNATURE, HashAlgorithm.IDENTITY)
    usable = [h for h in OUR_HASHES if h in peer_hashes]
    want_7427 = fixed == AuthMethod.DIGITAL_SIGNATURE or (rfc7427 and usable)
    if not want_7427:
        return SignatureChoice(natural)
    if not usable:
        # RFC 7427 4: without the notify the peer may not take method 14; the keyword
        # insists, so SHA-256 (the hash every implementation has) it is.
        usable = [HashAlgorithm.SHA2_256]
    preferred = {
        AuthMethod.ECDSA_SHA256_P256: HashAlgorithm.SHA2_256,
        AuthMethod.ECDSA_SHA384_P384: HashAlgorithm.SHA2_384,
        AuthMethod.ECDSA_SHA512_P521: HashAlgorithm.SHA2_512,
        AuthMethod.RSA_SIG: HashAlgorithm.SHA2_256,
    }[natural]
    h = preferred if preferred in usable else usable[0]
    is_rsa = isinstance(key, rsa.RSAPrivateKey)
    return SignatureChoice(AuthMethod.DIGITAL_SIGNATURE, h, pss=pss and is_rsa)


def sign(key: PrivateKey, choice: SignatureChoice, octets: bytes) -> bytes:
    """AUTH payload data for ``choice`` over ``octets``; raises CryptoError."""
    if choice.method == AuthMethod.RSA_SIG:
        if not isinstance(key, rsa.RSAPrivateKey):
            raise CryptoError(f"AUTH method RSA_SIG needs an RSA key, not {describe_key(key)}")
        # RFC 7296 3.8: RSASSA-PKCS1-v1_5 with SHA-1 (what iked and charon do).
        return key.sign(octets, padding.PKCS1v15(), hashes.SHA1())
    if choice.method == AuthMethod.DIGITAL_SIGNATURE and isinstance(key, rsa.RSAPrivateKey):
        h = choice.hash_alg or HashAlgorithm.SHA2_256
        if h not in _HASH_CLASSES:
            raise CryptoError(f"RSA with {HashAlgorithm.name_of(h)} not supported")
        algo = _HASH_CLASSES[h]()
        if choice.pss:
            alg_id = rsa_pss_algorithm_identifier(HashAlgorithm(h))
            pad: padding.AsymmetricPadding = padding.PSS(padding.MGF1(algo), algo.digest_size)
        else:
            alg_id, pad = RSA_PKCS1_ALGORITHM_IDENTIFIERS[HashAlgorithm(h)], padding.PKCS1v15()
        return bytes([len(alg_id)]) + alg_id + key.sign(octets, pad, algo)
    hash_alg = None if choice.hash_alg == HashAlgorithm.IDENTITY else choice.hash_alg
    return crypto.sign_auth(choice.method, key, octets, hash_alg)  # type: ignore[arg-type]


def _rsa_pss_params(alg_id: bytes) -> tuple[HashAlgorithm, padding.PSS] | None:
    """(hash, padding) from an id-RSASSA-PSS AlgorithmIdentifier, None if not PSS;
    AuthenticationError for PSS parameters we do not support."""
    try:
        parsed = algos.SignedDigestAlgorithm.load(alg_id, strict=True)
        if parsed["algorithm"].dotted != "1.2.840.113549.1.1.10":
            return None
    except (ValueError, TypeError):
        return None
    try:
        params = parsed["parameters"]
        if not isinstance(params, algos.RSASSAPSSParams):
            raise AuthenticationError("RSASSA-PSS AlgorithmIdentifier without parameters")
        hash_name = params["hash_algorithm"]["algorithm"].native
        mgf = params["mask_gen_algorithm"]
        mgf_hash = mgf["parameters"]["algorithm"].native
        salt = int(params["salt_length"].native)
        trailer = params["trailer_field"].native  # asn1crypto names 1 "trailer_field_bc"
    except (ValueError, TypeError, KeyError):
        raise AuthenticationError("RSASSA-PSS parameters cannot be parsed") from None
    if hash_name not in _HASH_BY_NAME or mgf["algorithm"].native != "mgf1":
        raise AuthenticationError(f"RSASSA-PSS with hash {hash_name} is not supported")
    if mgf_hash != hash_name or trailer not in (1, "trailer_field_bc") or not 0 <= salt <= 512:
        raise AuthenticationError("RSASSA-PSS parameters are not supported")
    h = _HASH_BY_NAME[hash_name]
    return h, padding.PSS(padding.MGF1(_HASH_CLASSES[h]()), salt)


def _verify_rsa_7427(key: PublicKey, alg_id: bytes, signature: bytes, octets: bytes) -> bool:
    """Method 14 with an RSA AlgorithmIdentifier; False if ``alg_id`` is not RSA."""
    h = _RSA_PKCS1_BY_DER.get(alg_id)
    pad: padding.AsymmetricPadding
    if h is not None:
        pad = padding.PKCS1v15()
    else:
        pss = _rsa_pss_params(alg_id)
        if pss is None:
            return False
        h, pad = pss
    if not isinstance(key, rsa.RSAPublicKey):
        raise AuthenticationError(f"RSA signature but the peer's key is {describe_key(key)}")
    key.verify(signature, octets, pad, _HASH_CLASSES[h]())
    return True


def method_allowed(keyword: str, method: int) -> bool:
    """Whether ``ikeauth keyword`` accepts the peer's AUTH ``method`` (as iked: a key-type
    keyword takes its own method or RFC 7427's, 'rfc7427' only method 14, 'signature'
    any signature method)."""
    fixed = _KEYWORD_METHOD.get(keyword)
    if fixed is None:
        return method in SIGNATURE_METHODS
    return method in (fixed, AuthMethod.DIGITAL_SIGNATURE)


def verify(
    key: PublicKey | object,
    method: int,
    octets: bytes,
    data: bytes,
    keyword: str = "signature",
) -> None:
    """Check the peer's signature AUTH; raises AuthenticationError (never anything else)."""
    if not method_allowed(keyword, method):
        raise AuthenticationError(
            f"peer used AUTH method {AuthMethod.name_of(method)} but ikeauth is {keyword}"
        )
    if not isinstance(key, PublicKey):
        raise AuthenticationError(f"{describe_key(key)} keys cannot be used for AUTH")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise AuthenticationError(f"the peer's {describe_key(key)} key is too short")
    try:
        if method == AuthMethod.RSA_SIG:
            if not isinstance(key, rsa.RSAPublicKey):
                raise AuthenticationError(f"RSA_SIG AUTH but the peer's key is {describe_key(key)}")
            key.verify(data, octets, padding.PKCS1v15(), hashes.SHA1())
            return
        if method == AuthMethod.DIGITAL_SIGNATURE and data:
            alg_len = data[0]
            alg_id, signature = data[1 : 1 + alg_len], data[1 + alg_len :]
            known_ec = alg_id in _ECDSA_BY_DER
            if (
                len(data) >= 1 + alg_len
                and not known_ec
                and _verify_rsa_7427(key, alg_id, signature, octets)
            ):
                return
        crypto.verify_auth(AuthMethod.lookup(method), key, octets, data)  # type: ignore[arg-type]
    except InvalidSignature:
        raise AuthenticationError("AUTH signature does not verify") from None
    except (ValueError, TypeError) as exc:
        raise AuthenticationError(f"AUTH signature rejected: {exc}") from None
