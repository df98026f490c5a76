"""Key files in iked's layout (iked(8) FILES and PUBLIC KEY AUTHENTICATION), checked
against keys made and read by the real ``openssl`` command."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from pyike.keys import (
    BadPublicKey,
    KeyFileError,
    KeyStore,
    install_peer_key,
    keygen,
    load_public_key_der,
    public_key_der,
    public_key_pem,
)
from pyike.registry import IdType

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")


def openssl(*args: str, input: bytes | None = None, stderr: bool = False) -> bytes:
    """stdout of a successful openssl run (or its stderr, where openssl reports)."""
    assert OPENSSL is not None
    proc = subprocess.run(
        [OPENSSL, *args], input=input, capture_output=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stderr if stderr else proc.stdout


def make_layout(tmp_path: Path) -> Path:
    """An empty iked layout: keydir 0755, private/ 0700."""
    keydir = tmp_path / "iked"
    (keydir / "private").mkdir(parents=True)
    os.chmod(keydir, 0o755)
    os.chmod(keydir / "private", 0o700)
    return keydir


def place_key(keydir: Path, pem: bytes, mode: int = 0o600) -> Path:
    path = keydir / "private" / "local.key"
    path.write_bytes(pem)
    os.chmod(path, mode)
    return path


def openssl_ec_key(tmp_path: Path, curve: str = "secp384r1") -> Path:
    """A key made as iked's documentation makes one (SEC1 PEM)."""
    out = tmp_path / f"openssl-{curve}.key"
    openssl("ecparam", "-genkey", "-name", curve, "-noout", "-out", str(out))
    return out


# ---------------------------------------------------------------------------
# keygen


@needs_openssl
def test_keygen_writes_iked_layout_that_openssl_reads(tmp_path: Path) -> None:
    keydir = tmp_path / "iked"
    written = keygen(keydir)
    key_path, pub_path = keydir / "private" / "local.key", keydir / "local.pub"
    assert written == [key_path, pub_path]
    assert (keydir / "private").stat().st_mode & 0o777 == 0o700
    assert key_path.stat().st_mode & 0o777 == 0o600
    assert pub_path.stat().st_mode & 0o777 == 0o644
    assert key_path.read_bytes().startswith(b"-----BEGIN EC PRIVATE KEY-----\n")
    assert pub_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----\n")
    # openssl agrees the key is valid, on P-384, and that local.pub is its public half.
    assert b"EC Key valid." in openssl("ec", "-check", "-noout", "-in", str(key_path), stderr=True)
    text = openssl("ec", "-in", str(key_path), "-noout", "-text")
    assert b"ASN1 OID: secp384r1" in text
    assert openssl("ec", "-in", str(key_path), "-pubout") == pub_path.read_bytes()
    store = KeyStore(keydir)
    assert isinstance(store.local_private(), ec.EllipticCurvePrivateKey)
    assert store.local_private().curve.name == "secp384r1"
    store.check_local_pair()


@needs_openssl
@pytest.mark.parametrize(
    ("curve", "oid"), [("secp256r1", b"prime256v1"), ("secp521r1", b"secp521r1")]
)
def test_keygen_other_curves(tmp_path: Path, curve: str, oid: bytes) -> None:
    key_path, _ = keygen(tmp_path, curve=curve)
    assert b"ASN1 OID: " + oid in openssl("ec", "-in", str(key_path), "-noout", "-text")


def test_keygen_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    keygen(tmp_path)
    before = (tmp_path / "private" / "local.key").read_bytes()
    with pytest.raises(KeyFileError) as e:
        keygen(tmp_path)
    assert str(e.value) == (
        f"{tmp_path}/private/local.key already exists; refusing to overwrite it without force"
    )
    assert (tmp_path / "private" / "local.key").read_bytes() == before
    keygen(tmp_path, force=True)
    assert (tmp_path / "private" / "local.key").read_bytes() != before
    KeyStore(tmp_path).check_local_pair()
    assert (tmp_path / "private" / "local.key").stat().st_mode & 0o777 == 0o600


def test_keygen_refuses_unknown_curve(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="secp384r1"):
        keygen(tmp_path, curve="brainpoolP256r1")
    assert not (tmp_path / "private").exists()


def test_keygen_ignores_umask(tmp_path: Path) -> None:
    old = os.umask(0o000)
    try:
        keygen(tmp_path / "k")
    finally:
        os.umask(old)
    assert (tmp_path / "k" / "private" / "local.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "k" / "private").stat().st_mode & 0o777 == 0o700


# ---------------------------------------------------------------------------
# Loading keys made by openssl


@needs_openssl
def test_loads_openssl_sec1_key(tmp_path: Path) -> None:
    keydir = make_layout(tmp_path)
    src = openssl_ec_key(tmp_path)
    place_key(keydir, src.read_bytes())
    key = KeyStore(keydir).local_private()
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    want = openssl("ec", "-in", str(src), "-pubout", "-outform", "DER")
    assert public_key_der(key.public_key()) == want


@needs_openssl
def test_loads_key_with_ec_parameters_block(tmp_path: Path) -> None:
    # iked's manual pages run ecparam without -noout: an EC PARAMETERS block comes first.
    out = tmp_path / "with-params.key"
    openssl("ecparam", "-genkey", "-name", "secp384r1", "-out", str(out))
    assert out.read_bytes().startswith(b"-----BEGIN EC PARAMETERS-----")
    keydir = make_layout(tmp_path)
    place_key(keydir, out.read_bytes())
    assert KeyStore(keydir).local_private().curve.name == "secp384r1"


@needs_openssl
def test_loads_openssl_pkcs8_key(tmp_path: Path) -> None:
    src = openssl_ec_key(tmp_path, "prime256v1")
    pkcs8 = openssl("pkcs8", "-topk8", "-nocrypt", "-in", str(src))
    assert pkcs8.startswith(b"-----BEGIN PRIVATE KEY-----")
    keydir = make_layout(tmp_path)
    place_key(keydir, pkcs8)
    key = KeyStore(keydir).local_private()
    assert key.curve.name == "secp256r1"
    sec1 = KeyStore(keydir)  # same key as the SEC1 original
    place_key(keydir, src.read_bytes())
    assert public_key_der(sec1.local_private().public_key()) == public_key_der(key.public_key())


@needs_openssl
def test_loads_ed25519_and_rsa_keys(tmp_path: Path) -> None:
    keydir = make_layout(tmp_path)
    place_key(keydir, openssl("genpkey", "-algorithm", "ed25519"))
    assert isinstance(KeyStore(keydir).local_private(), ed25519.Ed25519PrivateKey)
    place_key(keydir, openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"))
    assert isinstance(KeyStore(keydir).local_private(), rsa.RSAPrivateKey)


@needs_openssl
def test_local_public_written_by_openssl(tmp_path: Path) -> None:
    keydir = make_layout(tmp_path)
    src = openssl_ec_key(tmp_path)
    place_key(keydir, src.read_bytes())
    openssl("ec", "-in", str(src), "-pubout", "-out", str(keydir / "local.pub"))
    store = KeyStore(keydir)
    store.check_local_pair()
    assert public_key_der(store.local_public()) == public_key_der(
        store.local_private().public_key()
    )


@needs_openssl
def test_mismatched_local_pub_is_reported(tmp_path: Path) -> None:
    keydir = make_layout(tmp_path)
    place_key(keydir, openssl_ec_key(tmp_path).read_bytes())
    other = tmp_path / "other.key"
    openssl("ecparam", "-genkey", "-name", "secp384r1", "-noout", "-out", str(other))
    openssl("ec", "-in", str(other), "-pubout", "-out", str(keydir / "local.pub"))
    with pytest.raises(KeyFileError, match=r"local.pub does not match .*private/local.key"):
        KeyStore(keydir).check_local_pair()


# ---------------------------------------------------------------------------
# Refusals, each with the message a user sees


def test_refuses_world_readable_key(tmp_path: Path) -> None:
    keydir = make_layout(tmp_path)
    keygen(tmp_path / "src")
    path = place_key(keydir, (tmp_path / "src/private/local.key").read_bytes(), 0o644)
    with pytest.raises(KeyFileError) as e:
        KeyStore(keydir).local_private()
    assert str(e.value) == (
        f"{path} is readable by group or others (mode 0644); run: chmod 600 {path}"
    )


def test_refuses_group_writable_key(tmp_path: Path) -> None:
    keydir = make_layout(tmp_path)
    keygen(tmp_path / "src")
    path = place_key(keydir, (tmp_path / "src/private/local.key").read_bytes(), 0o620)
    with pytest.raises(KeyFileError) as e:
        KeyStore(keydir).local_private()
    assert str(e.value) == (
        f"{path} is writable by group or others (mode 0620); run: chmod 600 {path}"
    )


def test_group_readable_key_in_closed_directory_is_accepted(tmp_path: Path) -> None:
    keydir = make_layout(tmp_path)
    keygen(tmp_path / "src")
    place_key(keydir, (tmp_path / "src/private/local.key").read_bytes(), 0o640)
    assert KeyStore(keydir).local_private().curve.name == "secp384r1"


def test_group_readable_key_in_open_directory_is_refused(tmp_path: Path) -> None:
    keydir = make_layout(tmp_path)
    os.chmod(keydir / "private", 0o755)
    keygen(tmp_path / "src")
    path = place_key(keydir, (tmp_path / "src/private/local.key").read_bytes(), 0o640)
    with pytest.raises(KeyFileError) as e:
        KeyStore(keydir).local_private()
    assert str(e.value) == (
        f"{path} is readable by its group (mode 0640) and its directory {path.parent} "
        f"is open to others (mode 0755); run: chmod 600 {path} (or chmod 700 {path.parent})"
    )


def test_symlinked_key_is_judged_by_its_target(tmp_path: Path) -> None:
    keydir = make_layout(tmp_path)
    keygen(tmp_path / "src")
    target = tmp_path / "src" / "private" / "local.key"
    (keydir / "private" / "local.key").symlink_to(target)
    assert KeyStore(keydir).local_private() is not None
    os.chmod(target, 0o644)
    with pytest.raises(KeyFileError, match=r"readable by group or others \(mode 0644\)"):
        KeyStore(keydir).local_private()


def test_missing_key_says_where_it_looked(tmp_path: Path) -> None:
    keydir = make_layout(tmp_path)
    path = keydir / "private" / "local.key"
    with pytest.raises(KeyFileError) as e:
        KeyStore(keydir).local_private()
    assert str(e.value) == (
        f"{path} does not exist (looked for a private key in {keydir}/private/); "
        f"create one with: openssl ecparam -genkey -name secp384r1 -noout -out {path} "
        f"&& chmod 600 {path}"
    )


def test_missing_local_pub(tmp_path: Path) -> None:
    keydir = make_layout(tmp_path)
    with pytest.raises(KeyFileError, match=r"local.pub does not exist .*openssl ec -in .* -pubout"):
        KeyStore(keydir).local_public()


def test_empty_key_file(tmp_path: Path) -> None:
    keydir = make_layout(tmp_path)
    path = place_key(keydir, b"\n")
    with pytest.raises(KeyFileError, match=rf"^{path} is empty \(expected a private key in PEM"):
        KeyStore(keydir).local_private()


def test_garbage_key_file(tmp_path: Path) -> None:
    keydir = make_layout(tmp_path)
    path = place_key(keydir, os.urandom(300))
    with pytest.raises(KeyFileError) as e:
        KeyStore(keydir).local_private()
    assert str(e.value) == (
        f"{path} is not a PEM file (expected a line '-----BEGIN EC PRIVATE KEY-----')"
    )


def test_corrupt_pem_body(tmp_path: Path) -> None:
    keydir = make_layout(tmp_path)
    place_key(keydir, b"-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n")
    with pytest.raises(KeyFileError, match="holds a private key that cannot be parsed"):
        KeyStore(keydir).local_private()


@needs_openssl
def test_encrypted_pkcs8_key(tmp_path: Path) -> None:
    src = openssl_ec_key(tmp_path)
    enc = openssl("pkcs8", "-topk8", "-v2", "aes-256-cbc", "-passout", "pass:x", "-in", str(src))
    assert enc.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    keydir = make_layout(tmp_path)
    path = place_key(keydir, enc)
    with pytest.raises(KeyFileError) as e:
        KeyStore(keydir).local_private()
    assert str(e.value).startswith(
        f"{path} is encrypted with a passphrase, which pyike does not support; "
        f"store it unencrypted with: openssl pkey -in {path} -out {path}.new"
    )


@needs_openssl
def test_encrypted_traditional_key(tmp_path: Path) -> None:
    src = openssl_ec_key(tmp_path)
    enc = openssl("ec", "-aes256", "-passout", "pass:x", "-in", str(src))
    assert b"Proc-Type: 4,ENCRYPTED" in enc
    keydir = make_layout(tmp_path)
    place_key(keydir, enc)
    with pytest.raises(KeyFileError, match="is encrypted with a passphrase"):
        KeyStore(keydir).local_private()


@needs_openssl
def test_public_key_in_private_key_file(tmp_path: Path) -> None:
    src = openssl_ec_key(tmp_path)
    keydir = make_layout(tmp_path)
    path = place_key(keydir, openssl("ec", "-in", str(src), "-pubout"))
    with pytest.raises(KeyFileError) as e:
        KeyStore(keydir).local_private()
    assert str(e.value) == (
        f"{path} holds no private key (found PEM blocks: 'PUBLIC KEY'; expected "
        "'EC PRIVATE KEY' or 'PRIVATE KEY')"
    )


@needs_openssl
def test_unsupported_key_type(tmp_path: Path) -> None:
    keydir = make_layout(tmp_path)
    path = place_key(keydir, openssl("genpkey", "-algorithm", "X25519"))
    with pytest.raises(KeyFileError) as e:
        KeyStore(keydir).local_private()
    assert str(e.value).startswith(f"{path} holds a X25519PrivateKey; pyike supports ECDSA keys")


# ---------------------------------------------------------------------------
# Peer keys by ID (iked(8): pubkeys/{ipv4,ipv6,fqdn,ufqdn}/<ID>)


@needs_openssl
def test_peer_lookup_by_each_id_type(tmp_path: Path) -> None:
    keydir = make_layout(tmp_path)
    cases = [
        (IdType.ID_FQDN, "vpn.example.org", "fqdn/vpn.example.org"),
        (IdType.ID_RFC822_ADDR, "home@example.org", "ufqdn/home@example.org"),
        (IdType.ID_IPV4_ADDR, "198.51.100.7", "ipv4/198.51.100.7"),
        (IdType.ID_IPV6_ADDR, "2001:db8::7", "ipv6/2001:db8::7"),
    ]
    expected = {}
    for i, (id_type, _ident, rel) in enumerate(cases):
        src = tmp_path / f"peer{i}.key"
        openssl("ecparam", "-genkey", "-name", "secp384r1", "-noout", "-out", str(src))
        path = keydir / "pubkeys" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        openssl("ec", "-in", str(src), "-pubout", "-out", str(path))
        der = openssl("ec", "-in", str(src), "-pubout", "-outform", "DER")
        expected[id_type] = der
    store = KeyStore(keydir)
    for id_type, ident, rel in cases:
        assert store.peer_key_path(id_type, ident) == keydir / "pubkeys" / rel
        key = store.peer_public(id_type, ident)
        assert key is not None
        assert public_key_der(key) == expected[id_type]
    # iked lower-cases names and prints addresses canonically
    assert (
        public_key_der(store.peer_public(IdType.ID_FQDN, "VPN.Example.ORG"))
        == expected[IdType.ID_FQDN]
    )
    assert (
        public_key_der(store.peer_public(IdType.ID_IPV6_ADDR, "2001:DB8:0:0:0:0:0:7"))
        == expected[IdType.ID_IPV6_ADDR]
    )
    assert store.peer_public(IdType.ID_FQDN, "other.example.org") is None
    assert store.peer_public(IdType.ID_IPV4_ADDR, "198.51.100.8") is None


@needs_openssl
def test_peer_key_in_pkcs1_rsa_format(tmp_path: Path) -> None:
    # iked also reads "RSA PUBLIC KEY" (PEM_read_RSAPublicKey) in pubkeys/.
    keydir = make_layout(tmp_path)
    rsa_key = tmp_path / "rsa.key"
    openssl(
        "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024", "-out", str(rsa_key)
    )
    path = keydir / "pubkeys" / "fqdn" / "rsa.example.org"
    path.parent.mkdir(parents=True)
    openssl("rsa", "-in", str(rsa_key), "-RSAPublicKey_out", "-out", str(path))
    assert path.read_bytes().startswith(b"-----BEGIN RSA PUBLIC KEY-----")
    assert isinstance(
        KeyStore(keydir).peer_public(IdType.ID_FQDN, "rsa.example.org"), rsa.RSAPublicKey
    )


@pytest.mark.parametrize(
    ("id_type", "ident", "message"),
    [
        (IdType.ID_FQDN, "../private/local.key", "not usable as a file name"),
        (IdType.ID_FQDN, "..", "not usable as a file name"),
        (IdType.ID_FQDN, "", "not usable as a file name"),
        (IdType.ID_RFC822_ADDR, "a/b@example.org", "not usable as a file name"),
        (IdType.ID_IPV4_ADDR, "2001:db8::1", "wrong address family for ID_IPV4_ADDR"),
        (IdType.ID_IPV6_ADDR, "not-an-address", "not an IP address"),
        (IdType.ID_DER_ASN1_DN, "CN=x", "has no directory for ID type ID_DER_ASN1_DN"),
        (IdType.ID_KEY_ID, "abc", "has no directory for ID type ID_KEY_ID"),
        (99, "abc", "has no directory for ID type IDTYPE_99"),
    ],
)
def test_peer_ids_that_cannot_name_a_file(
    tmp_path: Path, id_type: int, ident: str, message: str
) -> None:
    with pytest.raises(KeyFileError, match=message):
        KeyStore(tmp_path).peer_public(id_type, ident)


def test_world_writable_peer_key_is_refused(tmp_path: Path) -> None:
    keygen(tmp_path / "peer")
    pem = (tmp_path / "peer" / "local.pub").read_bytes()
    path = install_peer_key(tmp_path, IdType.ID_FQDN, "peer.example.org", pem)
    os.chmod(path, 0o666)
    with pytest.raises(KeyFileError) as e:
        KeyStore(tmp_path).peer_public(IdType.ID_FQDN, "peer.example.org")
    assert str(e.value) == (
        f"{path} is writable by anyone (mode 0666), so it cannot be trusted; run: chmod 644 {path}"
    )


def test_private_key_as_peer_key_is_refused(tmp_path: Path) -> None:
    keygen(tmp_path / "peer")
    path = tmp_path / "pubkeys" / "fqdn" / "peer.example.org"
    path.parent.mkdir(parents=True)
    path.write_bytes((tmp_path / "peer" / "private" / "local.key").read_bytes())
    with pytest.raises(KeyFileError, match="a private key must never be given out"):
        KeyStore(tmp_path).peer_public(IdType.ID_FQDN, "peer.example.org")


@needs_openssl
def test_install_peer_key(tmp_path: Path) -> None:
    src = openssl_ec_key(tmp_path)
    pem = openssl("ec", "-in", str(src), "-pubout")
    path = install_peer_key(tmp_path, IdType.ID_IPV4_ADDR, "203.0.113.9", pem)
    assert path == tmp_path / "pubkeys" / "ipv4" / "203.0.113.9"
    assert path.stat().st_mode & 0o777 == 0o644
    # openssl reads what was installed, and it is the same key
    assert openssl("pkey", "-pubin", "-in", str(path)) == pem
    with pytest.raises(KeyFileError, match="already exists"):
        install_peer_key(tmp_path, IdType.ID_IPV4_ADDR, "203.0.113.9", pem)
    keygen(tmp_path / "other")
    other = (tmp_path / "other" / "local.pub").read_bytes()
    install_peer_key(tmp_path, IdType.ID_IPV4_ADDR, "203.0.113.9", other, force=True)
    assert path.read_bytes() == other
    with pytest.raises(KeyFileError, match="holds no PEM 'PUBLIC KEY'"):
        install_peer_key(tmp_path, IdType.ID_FQDN, "x.example.org", b"garbage")


# ---------------------------------------------------------------------------
# DER public keys (CERT encoding 201)


@needs_openssl
def test_public_key_der_matches_openssl(tmp_path: Path) -> None:
    src = openssl_ec_key(tmp_path)
    der = openssl("ec", "-in", str(src), "-pubout", "-outform", "DER")
    key = load_public_key_der(der)
    assert public_key_der(key) == der
    assert public_key_pem(key) == openssl("ec", "-in", str(src), "-pubout")


@pytest.mark.parametrize("der", [b"", b"\x30\x03\x02\x01\x01", os.urandom(100)])
def test_load_public_key_der_rejects_garbage(der: bytes) -> None:
    with pytest.raises(BadPublicKey):
        load_public_key_der(der)


def test_load_public_key_der_rejects_truncated_key(tmp_path: Path) -> None:
    keygen(tmp_path)
    der = public_key_der(KeyStore(tmp_path).local_public())
    for cut in (1, 10, len(der) - 1):
        with pytest.raises(BadPublicKey):
            load_public_key_der(der[:cut])
    assert issubclass(BadPublicKey, ValueError)


@needs_openssl
@pytest.mark.parametrize(
    ("key_type", "needle"),
    [
        ("p256", b"ASN1 OID: prime256v1"),
        ("p384", b"ASN1 OID: secp384r1"),
        ("p521", b"ASN1 OID: secp521r1"),
        ("rsa", b"Private-Key: (2048 bit, 2 primes)"),
    ],
)
def test_keygen_types_as_openssl_reads_them(tmp_path: Path, key_type: str, needle: bytes) -> None:
    key_path, pub_path = keygen(tmp_path, key_type=key_type)
    assert needle in openssl("pkey", "-in", str(key_path), "-noout", "-text")
    assert openssl("pkey", "-pubin", "-in", str(pub_path), "-outform", "DER") == openssl(
        "pkey", "-in", str(key_path), "-pubout", "-outform", "DER"
    )
    KeyStore(tmp_path).check_local_pair()


def test_keygen_refuses_short_rsa_and_unknown_type(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 2048"):
        keygen(tmp_path, key_type="rsa", rsa_bits=1024)
    with pytest.raises(ValueError, match="choose one of p256, p384, p521, rsa"):
        keygen(tmp_path, key_type="dsa")
    assert not (tmp_path / "private").exists()


def test_keygen_cli_type_rsa(tmp_path: Path) -> None:
    from pyike.cli import main

    assert main(["keygen", "--keydir", str(tmp_path), "--type", "rsa"]) == 0
    assert isinstance(KeyStore(tmp_path).local_private(), rsa.RSAPrivateKey)
    assert main(["keygen", "--keydir", str(tmp_path / "x"), "--type", "rsa", "--bits", "512"]) == 1
