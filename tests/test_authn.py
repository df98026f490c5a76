"""Credentials: what the IKE core calls for CERT, CERTREQ and signature AUTH."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pyike import certs, keys
from pyike.authn import AuthFailure, Credentials
from pyike.ca import Ca
from pyike.config import parse_id
from pyike.registry import AuthMethod, CertEncoding, IdType
from pyike.registry import HashAlgorithm as H
from pyike.wire import CertPayload, CertReqPayload

A_ID = (IdType.ID_FQDN, b"a.example.org")
B_ID = (IdType.ID_IPV4_ADDR, bytes([198, 51, 100, 2]))
OCTETS = b"signed octets " * 20
ALL = {H.SHA2_256, H.SHA2_384, H.SHA2_512}


def side(ca: Ca, host: str, keydir: Path) -> Credentials:
    ca.install_host(host, keydir)
    store = certs.CertStore.load(keydir)
    key = keys.KeyStore(keydir).local_private()
    id_type, text = parse_id(host)
    cert = store.local_cert(id_type, certs.id_payload_data(id_type, text))
    assert cert is not None
    return Credentials(local_key=key, store=store, local_cert=cert)


@pytest.fixture(scope="module")
def vpn(tmp_path_factory: pytest.TempPathFactory) -> Ca:
    ca = Ca("vpn", tmp_path_factory.mktemp("ssl"))
    ca.create()  # RSA-2048, as ikectl
    ca.certificate("a.example.org")
    ca.certificate("198.51.100.2", key_type="p256")
    ca.certificate("gone.example.org")
    ca.revoke("gone.example.org")
    return ca


def test_certificate_auth_both_ways(vpn: Ca, tmp_path: Path) -> None:
    a, b = side(vpn, "a.example.org", tmp_path / "a"), side(vpn, "198.51.100.2", tmp_path / "b")
    reqs = b.certreqs()
    assert [(r.encoding, len(r.data)) for r in reqs] == [(CertEncoding.X509_SIGNATURE, 20)]
    auth = a.sign(OCTETS, ALL)
    assert auth.method == AuthMethod.DIGITAL_SIGNATURE and auth.data[1:16].hex().startswith("300d")
    how = b.verify(A_ID, auth, a.certs(reqs), OCTETS)
    assert how.startswith("DIGITAL_SIGNATURE with the certificate '/CN=a.example.org'")
    auth_b = b.sign(OCTETS, set())  # no RFC 7427 from the peer: method 9 for P-256
    assert auth_b.method == AuthMethod.ECDSA_SHA256_P256
    a.verify(B_ID, auth_b, b.certs(a.certreqs()), OCTETS)
    with pytest.raises(AuthFailure, match="does not name the peer's ID"):
        b.verify((IdType.ID_FQDN, b"other.example.org"), auth, a.certs(reqs), OCTETS)
    with pytest.raises(AuthFailure, match="does not verify"):
        b.verify(A_ID, auth, a.certs(reqs), OCTETS + b"!")


def test_revoked_and_malformed_certs_fail_with_messages(vpn: Ca, tmp_path: Path) -> None:
    b = side(vpn, "198.51.100.2", tmp_path / "b")
    gone = side(vpn, "gone.example.org", tmp_path / "gone")
    auth = gone.sign(OCTETS, ALL)
    with pytest.raises(AuthFailure, match="is revoked"):
        b.verify((IdType.ID_FQDN, b"gone.example.org"), auth, gone.certs(), OCTETS)
    junk = [CertPayload(CertEncoding.X509_SIGNATURE, b"\x30\x82\x01")]
    with pytest.raises(AuthFailure, match="CERT payload 1 of 1 is not a DER"):
        b.verify(A_ID, auth, junk, OCTETS)


def test_certreq_for_unknown_ca_is_logged_and_cert_sent(
    vpn: Ca, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a = side(vpn, "a.example.org", tmp_path / "a")
    with caplog.at_level(logging.INFO, "pyike.authn"):
        sent = a.certs([CertReqPayload(CertEncoding.X509_SIGNATURE, b"\xab" * 20)])
        ragged = a.certs([CertReqPayload(CertEncoding.X509_SIGNATURE, b"\xab" * 21)])
    assert len(sent) == 1 and len(ragged) == 1
    assert "peer asks for CA(s) abab" in caplog.text and "sending it anyway" in caplog.text
    assert "not a list of SHA-1 hashes" in caplog.text
    assert "BEGIN" not in caplog.text  # no certificate material


def test_raw_rsa_keys_method_1_and_cert_201(tmp_path: Path) -> None:
    ka, kb = rsa.generate_private_key(65537, 2048), rsa.generate_private_key(65537, 2048)
    a = Credentials(local_key=ka, keyword="rsa")
    b = Credentials(
        local_key=kb, keyword="rsa", peer_key=lambda t, d: ka.public_key() if d == A_ID[1] else None
    )
    auth = a.sign(OCTETS, set())  # the peer announced no RFC 7427 hashes
    assert auth.method == AuthMethod.RSA_SIG
    assert a.sign(OCTETS, ALL).method == AuthMethod.DIGITAL_SIGNATURE
    assert b.verify(A_ID, auth, [], OCTETS) == "RSA_SIG with the raw public key"
    own = CertPayload(CertEncoding.IKED_BARE_PUBKEY, keys.public_key_der(ka.public_key()))
    b.verify(A_ID, auth, [own], OCTETS)
    other = CertPayload(CertEncoding.IKED_BARE_PUBKEY, keys.public_key_der(kb.public_key()))
    with pytest.raises(AuthFailure, match=r"CERT\(201\) is not the one in pubkeys"):
        b.verify(A_ID, auth, [other], OCTETS)
    with pytest.raises(AuthFailure, match="no public key for the peer's ID"):
        b.verify(B_ID, auth, [], OCTETS)
    # ikeauth rsa on our side refuses an ECDSA signature from the peer
    ec_auth = Credentials(local_key=ec.generate_private_key(ec.SECP256R1())).sign(OCTETS, set())
    with pytest.raises(AuthFailure, match="ikeauth is rsa"):
        b.verify(A_ID, ec_auth, [], OCTETS)


def test_sign_problems_are_auth_failures() -> None:
    with pytest.raises(AuthFailure, match="no local key"):
        Credentials().sign(OCTETS, ALL)
    with pytest.raises(AuthFailure, match="ikeauth ecdsa256 needs"):
        Credentials(local_key=rsa.generate_private_key(65537, 2048), keyword="ecdsa256").sign(
            OCTETS, ALL
        )
    with pytest.raises(AuthFailure, match="not a signature"):
        Credentials().verify(A_ID, _psk_auth(), [], OCTETS)


def _psk_auth():
    from pyike.wire import AuthPayload

    return AuthPayload(AuthMethod.PSK, b"x" * 32)


CONF = """\
ikev2 "certs" passive esp from 2001:db8::1 to 2001:db8::2 \\
	local 192.0.2.1 peer any srcid {srcid} dstid b.example.org {auth}
"""


def _check(tmp_path: Path, keydir: Path, srcid: str, auth: str = "") -> str:
    import subprocess
    import sys

    conf = tmp_path / "iked.conf"
    conf.write_text(CONF.format(srcid=srcid, auth=auth))
    conf.chmod(0o600)  # pyike -n refuses what others can read, as iked does
    r = subprocess.run(
        [sys.executable, "-m", "pyike", "-n", "-f", str(conf), "--keydir", str(keydir)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0 and "configuration OK" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    return r.stderr


def test_check_reports_cert_problems_with_file_names(vpn: Ca, tmp_path: Path) -> None:
    kd = tmp_path / "iked"
    vpn.install_host("a.example.org", kd)
    assert "warning" not in _check(tmp_path, kd, "a.example.org")
    out = _check(tmp_path, kd, "other.example.org")
    assert (
        f"srcid fqdn/other.example.org matches no certificate in {kd}/certs/ "
        "(a.example.org.crt: a.example.org)"
    ) in out
    out = _check(tmp_path, kd, "a.example.org", "ecdsa256")
    assert f"{kd}/private/local.key: ikeauth ecdsa256 needs a ECDSA P-256 key" in out
    (kd / "ca" / "junk.crt").write_text(
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    )
    (kd / "certs" / "locked.crt").write_bytes((kd / "certs" / "a.example.org.crt").read_bytes())
    (kd / "certs" / "locked.crt").chmod(0)
    out = _check(tmp_path, kd, "a.example.org")
    assert f"{kd}/ca/junk.crt: not a CA certificate in PEM or DER" in out
    # root reads mode-0 files; the unreadable case shows as a directory problem instead
    (kd / "private" / "local.key").unlink()
    out = _check(tmp_path, kd, "a.example.org")
    assert f"{kd}/private/local.key does not exist" in out
    for f in (kd / "certs").iterdir():
        f.unlink()
    out = _check(tmp_path, kd, "a.example.org")
    assert f"{kd}/certs/ holds no certificate (ca/ has 1)" in out


def test_check_reports_unreadable_cert_directory(vpn: Ca, tmp_path: Path) -> None:
    kd = tmp_path / "iked"
    vpn.install_host("a.example.org", kd)
    (kd / "certs" / "a.example.org.crt").unlink()
    (kd / "certs" / "a.example.org.crt").mkdir()  # a directory where a file should be
    out = _check(tmp_path, kd, "a.example.org")
    assert f"{kd}/certs/a.example.org.crt: cannot be read (Is a directory)" in out


def test_srcid_defaults_from_the_certificate(vpn: Ca, tmp_path: Path) -> None:
    from pyike.authn import local_identity

    kd = tmp_path / "iked"
    vpn.install_host("198.51.100.2", kd)
    store = certs.CertStore.load(kd)
    key = keys.KeyStore(kd).local_private()
    hostname_id = (IdType.ID_FQDN, b"some-host.lan")
    cert, ident, warnings = local_identity(store, key, hostname_id, id_from_hostname=True)
    assert cert is not None and ident == B_ID and warnings == []
    # a configured srcid that the certificate does not name: raw key, with a warning
    cert, ident, warnings = local_identity(store, key, hostname_id, id_from_hostname=False)
    assert cert is None and ident == hostname_id
    assert "srcid fqdn/some-host.lan matches no certificate" in warnings[0]
