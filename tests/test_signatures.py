"""Signature AUTH methods 1, 9, 10, 11 and 14 against openssl, both directions.

PKCS#1 v1.5 is deterministic, so pyike's RSA signatures must equal openssl's byte for
byte (a known answer); ECDSA and PSS are randomized, so each side verifies the other's.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from pyike import signatures as sig
from pyike.crypto import AuthenticationError, CryptoError
from pyike.registry import AuthMethod
from pyike.registry import HashAlgorithm as H

OCTETS = b"IKE_SA_INIT message | Nr | prf(SK_pi, IDi')" * 7
ALL = {H.SHA2_256, H.SHA2_384, H.SHA2_512}


def openssl(*args: str, input: bytes | None = None) -> bytes:
    return subprocess.run(
        ["openssl", *args], input=input, capture_output=True, check=True, timeout=30
    ).stdout


@pytest.fixture(scope="module")
def keyfiles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    out = {}
    for name, args in {
        "rsa2048": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        "rsa3072": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072"],
        "p256": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        "p384": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
        "p521": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521"],
    }.items():
        path = d / f"{name}.key"
        openssl("genpkey", *args, "-out", str(path))
        openssl("pkey", "-in", str(path), "-pubout", "-out", str(d / f"{name}.pub"))
        out[name] = path
    (d / "data").write_bytes(OCTETS)
    return out


def load(path: Path):
    return serialization.load_pem_private_key(path.read_bytes(), None)


def openssl_sign(path: Path, digest: str, *opts: str) -> bytes:
    return openssl("dgst", f"-{digest}", "-sign", str(path), *opts, input=OCTETS)


def openssl_verifies(path: Path, digest: str, signature: bytes, *opts: str) -> bool:
    sigfile = path.with_suffix(".sig")
    sigfile.write_bytes(signature)
    pub = str(path.with_suffix(".pub"))
    r = subprocess.run(
        ["openssl", "dgst", f"-{digest}", "-verify", pub, *opts, "-signature", str(sigfile)],
        input=OCTETS,
        capture_output=True,
        timeout=30,
    )
    return r.returncode == 0 and b"Verified OK" in r.stdout


# --------------------------------------------------------------------------- method choice


@pytest.mark.parametrize(
    ("name", "keyword", "peer", "method", "hash_alg"),
    [
        ("rsa2048", "signature", ALL, AuthMethod.DIGITAL_SIGNATURE, H.SHA2_256),
        ("rsa2048", "signature", set(), AuthMethod.RSA_SIG, None),
        ("rsa2048", "rsa", set(), AuthMethod.RSA_SIG, None),
        # iked: "switching RSA to SIG" once the peer announced RFC 7427 hashes
        ("rsa2048", "rsa", ALL, AuthMethod.DIGITAL_SIGNATURE, H.SHA2_256),
        ("rsa2048", "rfc7427", set(), AuthMethod.DIGITAL_SIGNATURE, H.SHA2_256),
        ("rsa2048", "rfc7427", {H.SHA2_512}, AuthMethod.DIGITAL_SIGNATURE, H.SHA2_512),
        ("p256", "signature", ALL, AuthMethod.DIGITAL_SIGNATURE, H.SHA2_256),
        ("p256", "signature", set(), AuthMethod.ECDSA_SHA256_P256, None),
        ("p384", "signature", ALL, AuthMethod.DIGITAL_SIGNATURE, H.SHA2_384),
        ("p384", "signature", {H.SHA2_256}, AuthMethod.DIGITAL_SIGNATURE, H.SHA2_256),
        ("p384", "ecdsa384", set(), AuthMethod.ECDSA_SHA384_P384, None),
        ("p384", "ecdsa384", ALL, AuthMethod.DIGITAL_SIGNATURE, H.SHA2_384),
        ("p521", "signature", ALL, AuthMethod.DIGITAL_SIGNATURE, H.SHA2_512),
        ("p521", "ecdsa521", set(), AuthMethod.ECDSA_SHA512_P521, None),
    ],
)
def test_choose_follows_key_keyword_and_peer(
    keyfiles: dict[str, Path], name: str, keyword: str, peer: set, method: int, hash_alg: int
) -> None:
    choice = sig.choose(load(keyfiles[name]), keyword, peer)
    assert (choice.method, choice.hash_alg) == (method, hash_alg)


def test_choose_without_rfc7427_uses_the_key_method(keyfiles: dict[str, Path]) -> None:
    choice = sig.choose(load(keyfiles["rsa2048"]), "signature", ALL, rfc7427=False)
    assert choice.method == AuthMethod.RSA_SIG


@pytest.mark.parametrize(
    ("name", "keyword"),
    [("p256", "rsa"), ("rsa2048", "ecdsa256"), ("p384", "ecdsa521"), ("p521", "ecdsa384")],
)
def test_keyword_and_key_mismatch_is_refused(
    keyfiles: dict[str, Path], name: str, keyword: str
) -> None:
    with pytest.raises(CryptoError, match=f"ikeauth {keyword} needs"):
        sig.choose(load(keyfiles[name]), keyword, ALL)


def test_short_rsa_key_is_refused() -> None:
    key = rsa.generate_private_key(65537, 1024)
    with pytest.raises(CryptoError, match="RSA-1024 is too short"):
        sig.choose(key, "signature", ALL)
    with pytest.raises(AuthenticationError, match="too short"):
        sig.verify(key.public_key(), AuthMethod.RSA_SIG, OCTETS, b"x" * 128)


# --------------------------------------------------------------------------- RSA


@pytest.mark.parametrize("name", ["rsa2048", "rsa3072"])
def test_rsa_method_1_equals_openssl_sha1_pkcs1(keyfiles: dict[str, Path], name: str) -> None:
    key = load(keyfiles[name])
    ours = sig.sign(key, sig.SignatureChoice(AuthMethod.RSA_SIG), OCTETS)
    assert ours == openssl_sign(keyfiles[name], "sha1")
    sig.verify(key.public_key(), AuthMethod.RSA_SIG, OCTETS, ours, "rsa")


@pytest.mark.parametrize(
    ("hash_alg", "digest", "alg_id"),
    [
        (H.SHA2_256, "sha256", "300d06092a864886f70d01010b0500"),
        (H.SHA2_384, "sha384", "300d06092a864886f70d01010c0500"),
        (H.SHA2_512, "sha512", "300d06092a864886f70d01010d0500"),
    ],
)
def test_rfc7427_rsa_pkcs1_equals_openssl(
    keyfiles: dict[str, Path], hash_alg: H, digest: str, alg_id: str
) -> None:
    key = load(keyfiles["rsa2048"])
    data = sig.sign(key, sig.SignatureChoice(AuthMethod.DIGITAL_SIGNATURE, hash_alg), OCTETS)
    # RFC 7427 3: length 15, then sha*WithRSAEncryption (Appendix A.1), then the signature.
    assert data[0] == 15 and data[1:16].hex() == alg_id
    assert data[16:] == openssl_sign(keyfiles["rsa2048"], digest)
    sig.verify(key.public_key(), AuthMethod.DIGITAL_SIGNATURE, OCTETS, data, "rfc7427")


@pytest.mark.parametrize(("hash_alg", "digest"), [(H.SHA2_256, "sha256"), (H.SHA2_512, "sha512")])
def test_rfc7427_rsa_pss_both_ways_with_openssl(
    keyfiles: dict[str, Path], hash_alg: H, digest: str
) -> None:
    key = load(keyfiles["rsa2048"])
    choice = sig.SignatureChoice(AuthMethod.DIGITAL_SIGNATURE, hash_alg, pss=True)
    data = sig.sign(key, choice, OCTETS)
    alg_len = data[0]
    assert data[1 : 1 + alg_len] == sig.rsa_pss_algorithm_identifier(hash_alg)
    opts = ("-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest")
    assert openssl_verifies(keyfiles["rsa2048"], digest, data[1 + alg_len :], *opts)
    theirs = openssl_sign(keyfiles["rsa2048"], digest, *opts)
    wrapped = bytes([alg_len]) + data[1 : 1 + alg_len] + theirs
    sig.verify(key.public_key(), AuthMethod.DIGITAL_SIGNATURE, OCTETS, wrapped)


def test_rsa_pss_sha256_algorithm_identifier_known_answer() -> None:
    # RFC 4055 3.1 / RFC 7427 A.4.3: sha256, MGF1-sha256, salt 32, default trailer.
    assert sig.rsa_pss_algorithm_identifier(H.SHA2_256).hex() == (
        "304106092a864886f70d01010a3034a00f300d06096086480165030402010500a11c301a06092a"
        "864886f70d010108300d06096086480165030402010500a203020120"
    )


def test_pss_with_other_salt_from_openssl_verifies(keyfiles: dict[str, Path]) -> None:
    from asn1crypto import algos

    params = algos.RSASSAPSSParams(
        {
            "hash_algorithm": {"algorithm": "sha256"},
            "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": "sha256"}},
            "salt_length": 10,
        }
    )
    alg = algos.SignedDigestAlgorithm({"algorithm": "rsassa_pss", "parameters": params}).dump()
    opts = ("-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:10")
    theirs = openssl_sign(keyfiles["rsa2048"], "sha256", *opts)
    key = load(keyfiles["rsa2048"]).public_key()
    sig.verify(key, AuthMethod.DIGITAL_SIGNATURE, OCTETS, bytes([len(alg)]) + alg + theirs)


# --------------------------------------------------------------------------- ECDSA


@pytest.mark.parametrize(
    ("name", "method", "digest", "size"),
    [
        ("p256", AuthMethod.ECDSA_SHA256_P256, "sha256", 32),
        ("p384", AuthMethod.ECDSA_SHA384_P384, "sha384", 48),
        ("p521", AuthMethod.ECDSA_SHA512_P521, "sha512", 66),
    ],
)
def test_rfc4754_ecdsa_both_ways_with_openssl(
    keyfiles: dict[str, Path], name: str, method: AuthMethod, digest: str, size: int
) -> None:
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    key = load(keyfiles[name])
    data = sig.sign(key, sig.SignatureChoice(method), OCTETS)
    assert len(data) == 2 * size
    der = encode_dss_signature(int.from_bytes(data[:size]), int.from_bytes(data[size:]))
    assert openssl_verifies(keyfiles[name], digest, der)
    r, s = decode_dss_signature(openssl_sign(keyfiles[name], digest))
    raw = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    sig.verify(key.public_key(), method, OCTETS, raw, "signature")


@pytest.mark.parametrize("name", ["p256", "p384", "p521"])
def test_rfc7427_ecdsa_with_openssl(keyfiles: dict[str, Path], name: str) -> None:
    key = load(keyfiles[name])
    choice = sig.choose(key, "rfc7427", ALL)
    data = sig.sign(key, choice, OCTETS)
    digest = {H.SHA2_256: "sha256", H.SHA2_384: "sha384", H.SHA2_512: "sha512"}[choice.hash_alg]
    assert openssl_verifies(keyfiles[name], digest, data[1 + data[0] :])
    # iked signs method 14 with SHA-256 whatever the curve: that must verify too.
    theirs = openssl_sign(keyfiles[name], "sha256")
    wrapped = b"\x0c" + bytes.fromhex("300a06082a8648ce3d040302") + theirs
    sig.verify(key.public_key(), AuthMethod.DIGITAL_SIGNATURE, OCTETS, wrapped)


# --------------------------------------------------------------------------- refusals


def test_verify_refusals_are_authentication_errors(keyfiles: dict[str, Path]) -> None:
    rsa_key, ec_key = load(keyfiles["rsa2048"]), load(keyfiles["p256"])
    good = sig.sign(rsa_key, sig.SignatureChoice(AuthMethod.RSA_SIG), OCTETS)
    pub = rsa_key.public_key()
    with pytest.raises(AuthenticationError, match="does not verify"):
        sig.verify(pub, AuthMethod.RSA_SIG, OCTETS + b"x", good)
    with pytest.raises(AuthenticationError, match="ikeauth is ecdsa256"):
        sig.verify(pub, AuthMethod.RSA_SIG, OCTETS, good, "ecdsa256")
    with pytest.raises(AuthenticationError, match="ikeauth is rfc7427"):
        sig.verify(pub, AuthMethod.RSA_SIG, OCTETS, good, "rfc7427")
    with pytest.raises(AuthenticationError, match="peer's key is ECDSA P-256"):
        sig.verify(ec_key.public_key(), AuthMethod.RSA_SIG, OCTETS, good)
    pkcs1 = sig.sign(rsa_key, sig.SignatureChoice(AuthMethod.DIGITAL_SIGNATURE, H.SHA2_256), OCTETS)
    with pytest.raises(AuthenticationError, match="peer's key is ECDSA P-256"):
        sig.verify(ec_key.public_key(), AuthMethod.DIGITAL_SIGNATURE, OCTETS, pkcs1)
    for data in (b"", b"\x40abc", b"\x03\x30\x01\x00sig", pkcs1[:20], b"\x0f" + pkcs1[1:16]):
        with pytest.raises(AuthenticationError):
            sig.verify(pub, AuthMethod.DIGITAL_SIGNATURE, OCTETS, data)
    with pytest.raises(AuthenticationError):
        sig.verify(pub, 201, OCTETS, good)


def test_pss_with_mismatched_mgf_is_refused(keyfiles: dict[str, Path]) -> None:
    from asn1crypto import algos

    params = algos.RSASSAPSSParams(
        {
            "hash_algorithm": {"algorithm": "sha256"},
            "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": "sha1"}},
            "salt_length": 32,
        }
    )
    alg = algos.SignedDigestAlgorithm({"algorithm": "rsassa_pss", "parameters": params}).dump()
    key = load(keyfiles["rsa2048"]).public_key()
    with pytest.raises(AuthenticationError, match="RSASSA-PSS parameters"):
        sig.verify(key, AuthMethod.DIGITAL_SIGNATURE, OCTETS, bytes([len(alg)]) + alg + b"s")


def test_describe_key_has_no_key_material() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    assert sig.describe_key(key) == "ECDSA P-384"
    assert sig.describe_key(rsa.generate_private_key(65537, 2048).public_key()) == "RSA-2048"


# --------------------------------------------------------------------------- NIST CAVP

NIST = __import__("json").loads(
    (Path(__file__).parent / "data" / "nist_sig_vectors.json").read_text()
)
_HASH_IDS = {"SHA1": None, "SHA256": H.SHA2_256, "SHA384": H.SHA2_384, "SHA512": H.SHA2_512}


def _rsa_pub(v: dict) -> rsa.RSAPublicKey:
    return rsa.RSAPublicNumbers(int(v["e"], 16), int(v["n"], 16)).public_key()


@pytest.mark.parametrize("v", NIST["pkcs1"], ids=lambda v: v["hash"])
def test_nist_rsa_pkcs1_v15_vectors(v: dict) -> None:
    """FIPS 186-3 SigGen15 (2048 bits): SHA-1 as method 1, SHA-2 as RFC 7427 method 14."""
    key, msg, s = _rsa_pub(v), bytes.fromhex(v["msg"]), bytes.fromhex(v["sig"])
    h = _HASH_IDS[v["hash"]]
    if h is None:
        method, data = AuthMethod.RSA_SIG, s
    else:
        alg = sig.RSA_PKCS1_ALGORITHM_IDENTIFIERS[h]
        method, data = AuthMethod.DIGITAL_SIGNATURE, bytes([len(alg)]) + alg + s
    sig.verify(key, method, msg, data)
    with pytest.raises(AuthenticationError):
        sig.verify(key, method, msg[:-1] + bytes([msg[-1] ^ 1]), data)


@pytest.mark.parametrize("v", NIST["pss"], ids=lambda v: v["hash"])
def test_nist_rsa_pss_vectors(v: dict) -> None:
    """FIPS 186-3 SigGenPSS (2048 bits, salt length 0) in an RFC 7427 AUTH payload."""
    from asn1crypto import algos

    name = v["hash"].lower()
    params = algos.RSASSAPSSParams(
        {
            "hash_algorithm": {"algorithm": name},
            "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": name}},
            "salt_length": v["salt_len"],
        }
    )
    alg = algos.SignedDigestAlgorithm({"algorithm": "rsassa_pss", "parameters": params}).dump()
    data = bytes([len(alg)]) + alg + bytes.fromhex(v["sig"])
    sig.verify(_rsa_pub(v), AuthMethod.DIGITAL_SIGNATURE, bytes.fromhex(v["msg"]), data)


@pytest.mark.parametrize("v", NIST["ecdsa"], ids=lambda v: f"{v['curve']}-{v['ok']}")
def test_nist_ecdsa_sigver_vectors(v: dict) -> None:
    """FIPS 186-3 ECDSA SigVer, passing and failing vectors, as method 9/11 and 14."""
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    p256 = v["curve"].startswith("P-256")
    curve, size = (ec.SECP256R1(), 32) if p256 else (ec.SECP521R1(), 66)
    method = AuthMethod.ECDSA_SHA256_P256 if p256 else AuthMethod.ECDSA_SHA512_P521
    alg = bytes.fromhex("300a06082a8648ce3d04030" + ("2" if p256 else "4"))
    key = ec.EllipticCurvePublicNumbers(int(v["qx"], 16), int(v["qy"], 16), curve).public_key()
    r, s, msg = int(v["r"], 16), int(v["s"], 16), bytes.fromhex(v["msg"])
    raw = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    in_7427 = bytes([len(alg)]) + alg + encode_dss_signature(r, s)
    for m, data in ((method, raw), (AuthMethod.DIGITAL_SIGNATURE, in_7427)):
        if v["ok"]:
            sig.verify(key, m, msg, data)
        else:
            with pytest.raises(AuthenticationError):
                sig.verify(key, m, msg, data)
