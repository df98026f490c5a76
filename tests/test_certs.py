"""Certificates in iked's layout: pyike ca, openssl-made CAs, chain checks, refusals."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import subprocess
import tarfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pyike import certs, keys
from pyike.ca import Ca, CaError
from pyike.registry import IdType

FQDN = (IdType.ID_FQDN, b"peer.example.org")
DN = (IdType.ID_DER_ASN1_DN, certs.dn_from_text("/CN=peer.example.org").public_bytes())


def openssl(*args: str, cwd: Path | None = None, input: bytes | None = None) -> bytes:
    return subprocess.run(
        ["openssl", *args], capture_output=True, check=True, timeout=60, cwd=cwd, input=input
    ).stdout


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def load_pem(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture(scope="module")
def vpn(tmp_path_factory: pytest.TempPathFactory) -> Ca:
    ca = Ca("vpn", tmp_path_factory.mktemp("ssl"))
    ca.create(password="secret", key_type="p256")
    ca.certificate("peer.example.org", key_type="p256")
    ca.certificate("192.0.2.1")
    ca.certificate("2001:db8::1", key_type="p384")
    ca.certificate("user@example.org", key_type="p256")
    ca.certificate("revoked.example.org", key_type="p256")
    ca.revoke("revoked.example.org")
    return ca


@pytest.fixture
def keydir(vpn: Ca, tmp_path: Path) -> Path:
    vpn.install(tmp_path / "iked")
    return tmp_path / "iked"


def make_cert(
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    subject: str,
    *,
    ca: bool = False,
    days: tuple[int, int] = (-1, 10),
    san: x509.GeneralName | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + dt.timedelta(days=days[0]))
        .not_valid_after(now + dt.timedelta(days=days[1]))
    )
    if ca:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    if san is not None:
        b = b.add_extension(x509.SubjectAlternativeName([san]), critical=False)
    return b.sign(issuer_key, hashes.SHA256()), key


# --------------------------------------------------------------------------- pyike ca


def test_ca_files_have_ikectls_names_and_modes(vpn: Ca) -> None:
    for rel, mode in {
        "ca.crt": 0o644,
        "ca.crl": 0o644,
        "ikeca.passwd": 0o600,
        "private/ca.key": 0o600,
        "peer.example.org.crt": 0o644,
        "private/peer.example.org.key": 0o600,
    }.items():
        assert (vpn.path / rel).stat().st_mode & 0o777 == mode, rel
    assert b"ENCRYPTED" in (vpn.path / "private/ca.key").read_bytes()
    text = openssl("x509", "-in", str(vpn.cert_path), "-noout", "-text").decode()
    assert "CA:TRUE, pathlen:1" in text and "Certificate Sign, CRL Sign" in text


def test_openssl_verifies_pyike_ca_certs_and_crl(vpn: Ca) -> None:
    for host in ("peer.example.org", "192.0.2.1", "2001:db8::1"):
        out = openssl(
            "verify", "-CAfile", str(vpn.cert_path), "-crl_check", "-CRLfile",
            str(vpn.crl_path), str(vpn.host_cert_path(host)),
        )  # fmt: skip
        assert out.strip().endswith(b"OK")
    r = subprocess.run(
        ["openssl", "verify", "-CAfile", str(vpn.cert_path), "-crl_check", "-CRLfile",
         str(vpn.crl_path), str(vpn.host_cert_path("revoked.example.org"))],
        capture_output=True, timeout=30,
    )  # fmt: skip
    assert r.returncode != 0 and b"certificate revoked" in r.stdout + r.stderr
    san = openssl("x509", "-in", str(vpn.host_cert_path("192.0.2.1")), "-noout", "-ext",
                  "subjectAltName")  # fmt: skip
    assert b"IP Address:192.0.2.1" in san


def test_install_host_gives_iked_layout(vpn: Ca, tmp_path: Path) -> None:
    written = vpn.install_host("peer.example.org", tmp_path / "iked")
    rel = sorted(str(p.relative_to(tmp_path / "iked")) for p in written)
    assert rel == [
        "ca/ca.crt", "certs/peer.example.org.crt", "crls/ca.crl", "local.pub",
        "private/local.key",
    ]  # fmt: skip
    store = keys.KeyStore(tmp_path / "iked")
    store.check_local_pair()
    assert (tmp_path / "iked/private").stat().st_mode & 0o777 == 0o700


def test_export_tarballs(vpn: Ca, tmp_path: Path) -> None:
    out = vpn.export("peer.example.org", tmp_path)
    assert out.name == "peer.example.org.tgz"
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        assert tar.getmember("private/local.key").mode == 0o600
    assert {"ca/ca.crt", "crls/ca.crl", "certs/peer.example.org.crt", "local.pub"} <= names
    with tarfile.open(vpn.export(None, tmp_path)) as tar:
        files = {m.name for m in tar.getmembers() if m.isfile()}
    assert files == {"ca/ca.crt", "crls/ca.crl"}  # never the CA's private key


def test_ca_refusals(vpn: Ca, tmp_path: Path) -> None:
    with pytest.raises(CaError, match="exists already"):
        vpn.create()
    with pytest.raises(CaError, match="does not exist"):
        Ca("nope", tmp_path).certificate("x.example")
    with pytest.raises(CaError, match="cannot name"):
        vpn.certificate("../x")


# --------------------------------------------------------------------------- the store


def test_ca_hashes_are_sha1_of_spki_as_openssl_computes(keydir: Path, vpn: Ca) -> None:
    spki = openssl("x509", "-in", str(vpn.cert_path), "-noout", "-pubkey")
    spki_der = openssl("pkey", "-pubin", "-outform", "DER", input=spki)
    store = certs.CertStore.load(keydir)
    assert store.ca_hashes() == hashlib.sha1(spki_der).digest()
    assert len(store.crls) == 1 and store.problems == []


@pytest.mark.parametrize(
    ("host", "peer_id"),
    [
        ("peer.example.org", (IdType.ID_FQDN, b"PEER.example.org")),
        ("192.0.2.1", (IdType.ID_IPV4_ADDR, bytes([192, 0, 2, 1]))),
        ("2001:db8::1", (IdType.ID_IPV6_ADDR, ipaddress.ip_address("2001:db8::1").packed)),
        ("user@example.org", (IdType.ID_RFC822_ADDR, b"user@example.org")),
        ("peer.example.org", DN),
    ],
)  # fmt: skip
def test_validate_each_id_type(keydir: Path, vpn: Ca, host: str, peer_id: tuple) -> None:
    leaf = load_pem(vpn.host_cert_path(host))
    store = certs.CertStore.load(keydir)
    assert store.validate([der(leaf)], peer_id) == leaf
    with pytest.raises(certs.CertError, match="does not name the peer's ID"):
        store.validate([der(leaf)], (IdType.ID_FQDN, b"other.example.org"))


def test_revoked_cert_is_refused(keydir: Path, vpn: Ca) -> None:
    leaf = load_pem(vpn.host_cert_path("revoked.example.org"))
    with pytest.raises(certs.CertError, match=r"is revoked \(since .*, by ca\.crl\)"):
        certs.CertStore.load(keydir).validate([der(leaf)], None)


def test_expired_and_not_yet_valid(keydir: Path, vpn: Ca) -> None:
    ca_key, ca_cert = vpn.ca_key(), vpn.ca_cert()
    old, _ = make_cert(ca_key, ca_cert.subject, "old", days=(-30, -1))  # type: ignore[arg-type]
    new, _ = make_cert(ca_key, ca_cert.subject, "new", days=(2, 30))  # type: ignore[arg-type]
    store = certs.CertStore.load(keydir)
    with pytest.raises(certs.CertError, match=r"'/CN=old' .* expired on"):
        store.validate([der(old)], None)
    with pytest.raises(certs.CertError, match=r"'/CN=new' .* is not valid before"):
        store.validate([der(new)], None)


def test_untrusted_ca(keydir: Path, tmp_path: Path) -> None:
    other = Ca("other", tmp_path / "ssl")
    other.create(key_type="p256")
    other.certificate("peer.example.org", key_type="p256")
    leaf = load_pem(other.host_cert_path("peer.example.org"))
    with pytest.raises(certs.CertError, match="does not chain to a trusted CA"):
        certs.CertStore.load(keydir).validate([der(leaf)], FQDN)


def test_malformed_oversized_and_empty(keydir: Path, vpn: Ca) -> None:
    store = certs.CertStore.load(keydir)
    leaf = der(load_pem(vpn.host_cert_path("peer.example.org")))
    for bad in (b"", b"\x30\x03\x02\x01", leaf[:-10], b"\xff" * 300):
        with pytest.raises(certs.CertError, match="CERT payload 1 of 1 is not a DER"):
            store.validate([bad], FQDN)
    with pytest.raises(certs.CertError, match="more than 8"):
        store.validate([leaf] * 9, FQDN)
    with pytest.raises(certs.CertError, match=r"total .* octets"):
        store.validate([leaf, b"x" * 70000], FQDN)
    with pytest.raises(certs.CertError, match="no certificate"):
        store.validate([], FQDN)
    with pytest.raises(certs.CertError, match="no trusted CA"):
        certs.CertStore.load(keydir / "nothing").validate([leaf], FQDN)


def test_chain_loop_is_refused(keydir: Path) -> None:
    # Two CAs that certify each other, neither trusted: the path search must end.
    ka, kb = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    na = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "A")])
    nb = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "B")])
    a_by_b, _ = make_cert(kb, nb, "A", ca=True, key=ka)
    b_by_a, _ = make_cert(ka, na, "B", ca=True, key=kb)
    leaf, _ = make_cert(ka, na, "leaf", san=x509.DNSName("peer.example.org"))
    with pytest.raises(certs.CertError, match="does not chain"):
        certs.CertStore.load(keydir).validate([der(leaf), der(a_by_b), der(b_by_a)], FQDN)


def test_intermediates_sent_when_asked_and_accepted(tmp_path: Path) -> None:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Root")])
    root, _ = make_cert(root_key, root_name, "Root", ca=True, key=root_key)
    inter, inter_key = make_cert(root_key, root_name, "Inter", ca=True)
    leaf, _ = make_cert(inter_key, inter.subject, "leaf", san=x509.DNSName("peer.example.org"))
    kd = tmp_path / "iked"
    for sub, name, cert in (("ca", "ca.crt", root), ("certs", "inter.crt", inter),
                            ("certs", "leaf.crt", leaf)):  # fmt: skip
        (kd / sub).mkdir(parents=True, exist_ok=True)
        (kd / sub / name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    store = certs.CertStore.load(kd)
    assert store.chain(leaf, store.ca_hashes()) == [leaf, inter]
    assert store.chain(leaf, b"\x01" * 20) == [leaf]  # a CA we do not chain to
    assert store.chains_to_requested(leaf, store.ca_hashes())
    assert not store.chains_to_requested(leaf, b"\x01" * 20)
    assert store.local_cert(*FQDN) == leaf
    assert certs.id_of_cert(leaf) == (IdType.ID_FQDN, "peer.example.org")
    assert store.validate([der(leaf), der(inter)], FQDN) == leaf
    with pytest.raises(certs.CertError, match="does not chain"):
        store.validate([der(leaf)], FQDN)  # the intermediate is needed


def test_openssl_made_ca_and_cert(tmp_path: Path) -> None:
    """A CA as a user makes one with plain openssl (no keyUsage on the CA)."""
    d = tmp_path
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.crt", "-subj", "/CN=Home CA", "-days", "30", cwd=d)  # fmt: skip
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
            "host.key", "-out", "host.csr", "-subj", "/CN=peer.example.org", cwd=d)  # fmt: skip
    (d / "ext.cnf").write_text("subjectAltName=DNS:peer.example.org\n")
    openssl("x509", "-req", "-in", "host.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "host.crt", "-days", "10", "-extfile", "ext.cnf",
            cwd=d)  # fmt: skip
    kd = d / "iked"
    (kd / "ca").mkdir(parents=True)
    (kd / "ca" / "ca.crt").write_bytes((d / "ca.crt").read_bytes())
    leaf = load_pem(d / "host.crt")
    assert certs.CertStore.load(kd).validate([der(leaf)], FQDN) == leaf


def test_load_problems_name_the_file(tmp_path: Path, vpn: Ca) -> None:
    kd = tmp_path / "iked"
    vpn.install(kd)
    (kd / "ca" / "broken.crt").write_text(
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    )
    (kd / "certs" / "host.crt").write_bytes(b"\x00garbage")
    (kd / "crls" / "x.crl").write_text("not a crl")
    problems = certs.CertStore.load(kd).problems
    assert len(problems) == 3
    assert any(f"{kd}/ca/broken.crt: not a CA certificate" in p for p in problems)
    assert any(f"{kd}/certs/host.crt: not a certificate" in p for p in problems)
    assert any(f"{kd}/crls/x.crl: not a CRL" in p for p in problems)


def test_dn_text_round_trip() -> None:
    name = certs.dn_from_text("/C=DE/O=OpenBSD/OU=iked/CN=host.example.org")
    assert certs.dn_text(name) == "/C=DE/O=OpenBSD/OU=iked/CN=host.example.org"
    with pytest.raises(certs.CertError):
        certs.dn_from_text("/XX=1")
    assert certs.split_hashes(b"a" * 41) == [b"a" * 20, b"a" * 20]


def test_pyike_ca_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pyike.cli import main

    ssl, kd = str(tmp_path / "ssl"), tmp_path / "iked"
    monkeypatch.chdir(tmp_path)
    assert main(["ca", "--cadir", ssl, "--type", "p256", "vpn", "create"]) == 0
    assert main(["ca", "--cadir", ssl, "vpn", "certificate", "198.51.100.7", "create"]) == 0
    assert (
        main(["ca", "--cadir", ssl, "vpn", "certificate", "198.51.100.7", "install", str(kd)]) == 0
    )
    assert main(["ca", "--cadir", ssl, "vpn", "certificate", "198.51.100.7", "export"]) == 0
    assert (tmp_path / "198.51.100.7.tgz").exists()
    store = certs.CertStore.load(kd)
    local = store.local_cert(IdType.ID_IPV4_ADDR, bytes([198, 51, 100, 7]))
    assert local is not None and isinstance(
        local.public_key(), type(keys.KeyStore(kd).local_public())
    )
    with pytest.raises(SystemExit) as e:
        main(["ca", "--cadir", ssl, "vpn", "frobnicate"])
    assert e.value.code == 2
    assert main(["ca", "--cadir", ssl, "missing", "install", str(kd)]) == 1
