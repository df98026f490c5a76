"""The IKE core with certificates and RSA keys: CERT/CERTREQ on the wire, both roles.

Sans-IO pair (tests/ike_pair.py); the certificates come from ``pyike ca``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pyike import certs, keys, wire
from pyike.authn import Credentials
from pyike.ca import Ca
from pyike.ike import ChildSaCreated, IkeSaClosed, IkeSaEstablished
from pyike.registry import AuthMethod, CertEncoding, IdType
from tests.ike_pair import HOME_ID, VM_ID, Pair, make_policy

HOME_HOST, VM_HOST = HOME_ID[1].decode(), VM_ID[1].decode()


@pytest.fixture(scope="module")
def vpn(tmp_path_factory: pytest.TempPathFactory) -> Ca:
    ca = Ca("vpn", tmp_path_factory.mktemp("ssl"))
    ca.create()
    ca.certificate(HOME_HOST)  # RSA-2048, as ikectl makes them
    ca.certificate(VM_HOST, key_type="p256")
    ca.certificate("revoked.example", key_type="p256")
    ca.revoke("revoked.example")
    return ca


def cert_side(ca: Ca, host: str, keydir: Path, **kw: object) -> Credentials:
    ca.install_host(host, keydir)
    store = certs.CertStore.load(keydir)
    key = keys.KeyStore(keydir).local_private()
    cert = store.local_cert(IdType.ID_FQDN, host.encode())
    return Credentials(local_key=key, store=store, local_cert=cert, **kw)  # type: ignore[arg-type]


def pair_with(home: Credentials, vm: Credentials, home_id=HOME_ID) -> Pair:
    h = make_policy(
        "home", local_id=home_id, peer_id=VM_ID, local_key=None, peer_public=None,
        credentials=home,
    )  # fmt: skip
    v = make_policy(
        "vm", local_id=VM_ID, peer_id=home_id, local_key=None, peer_public=None,
        local_net="2001:db8:c1da::2", remote_net="2001:db8:c1da::1", credentials=vm,
    )  # fmt: skip
    return Pair(h, v)


def test_certificates_both_roles(vpn: Ca, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    home = cert_side(vpn, HOME_HOST, tmp_path / "home")
    vm = cert_side(vpn, VM_HOST, tmp_path / "vm")
    p = pair_with(home, vm)
    with caplog.at_level(logging.INFO, "pyike.ike"):
        p.connect()
        p.run()
    assert p.events("home", IkeSaEstablished) and p.events("vm", IkeSaEstablished)
    assert p.events("home", ChildSaCreated) and p.events("vm", ChildSaCreated)
    assert (
        f"peer fqdn/{HOME_HOST} authenticated: DIGITAL_SIGNATURE with the certificate "
        f"'/CN={HOME_HOST}'" in caplog.text
    )
    assert (
        f"peer fqdn/{VM_HOST} authenticated: DIGITAL_SIGNATURE with the certificate" in caplog.text
    )
    # The responder's IKE_SA_INIT response carries CERTREQ(X.509) with the CA's hash.
    init_res = wire.parse_message(next(t for d, t in p.wire_log if d == "vm->home").data)
    (req,) = init_res.find_all(wire.CertReqPayload)
    assert req.encoding == CertEncoding.X509_SIGNATURE and req.data == vm.store.ca_hashes()
    sa_home = next(iter(p.home.sas.values()))
    assert sa_home.peer_auth_method == AuthMethod.DIGITAL_SIGNATURE


def test_rsa_method_1_raw_keys_both_roles() -> None:
    ka, kb = rsa.generate_private_key(65537, 2048), rsa.generate_private_key(65537, 2048)
    # iked's "rsa" without RFC 7427 on either side (iked switches to method 14 otherwise)
    home = Credentials(
        local_key=ka, keyword="rsa", peer_key=lambda t, d: kb.public_key(), rfc7427=False
    )
    vm = Credentials(
        local_key=kb, keyword="rsa", peer_key=lambda t, d: ka.public_key(), rfc7427=False
    )
    p = pair_with(home, vm)
    p.connect()
    p.run()
    assert p.events("home", ChildSaCreated) and p.events("vm", ChildSaCreated)
    assert next(iter(p.home.sas.values())).peer_auth_method == AuthMethod.RSA_SIG
    assert next(iter(p.vm.sas.values())).peer_auth_method == AuthMethod.RSA_SIG


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP521R1()])
def test_old_style_policy_with_rsa_and_other_curves(curve: ec.EllipticCurve) -> None:
    """SaPolicy without credentials (local_key/peer_key) takes every key type now."""
    ka, kb = rsa.generate_private_key(65537, 3072), ec.generate_private_key(curve)
    h = make_policy(
        "home", local_id=HOME_ID, peer_id=VM_ID, local_key=ka, peer_public=kb.public_key()
    )
    v = make_policy(
        "vm", local_id=VM_ID, peer_id=HOME_ID, local_key=kb, peer_public=ka.public_key(),
        local_net="2001:db8:c1da::2", remote_net="2001:db8:c1da::1",
    )  # fmt: skip
    p = Pair(h, v)
    p.connect()
    p.run()
    assert p.events("home", ChildSaCreated) and p.events("vm", ChildSaCreated)


def test_revoked_initiator_is_refused_by_responder(
    vpn: Ca, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gone_id = (IdType.ID_FQDN, b"revoked.example")
    home = cert_side(vpn, "revoked.example", tmp_path / "home")
    vm = cert_side(vpn, VM_HOST, tmp_path / "vm")
    p = pair_with(home, vm, home_id=gone_id)
    with caplog.at_level(logging.WARNING):
        p.connect()
        p.run()
    (h,) = p.events("home", IkeSaClosed)
    (v,) = p.events("vm", IkeSaClosed)
    assert "AUTHENTICATION_FAILED" in h.reason
    assert "is revoked" in v.reason
    assert not p.events("home", ChildSaCreated) and not p.events("vm", ChildSaCreated)
    assert not p.home.sas and not p.vm.sas
    assert "BEGIN" not in caplog.text


def test_untrusted_responder_is_refused_by_initiator(vpn: Ca, tmp_path: Path) -> None:
    other = Ca("other", tmp_path / "ssl")
    other.create(key_type="p256")
    other.certificate(VM_HOST, key_type="p256")
    home = cert_side(vpn, HOME_HOST, tmp_path / "home")
    # The VM trusts our CA too (ca/vpn.crt next to ca/ca.crt), but its own certificate
    # comes from a CA the home side does not know.
    (tmp_path / "vm" / "ca").mkdir(parents=True)
    (tmp_path / "vm" / "ca" / "vpn.crt").write_bytes(vpn.cert_path.read_bytes())
    vm = cert_side(other, VM_HOST, tmp_path / "vm")
    assert len(vm.store.cas) == 2
    p = pair_with(home, vm)
    p.connect()
    p.run()
    (h,) = p.events("home", IkeSaClosed)
    assert "does not chain to a trusted CA" in h.reason
    (v,) = p.events("vm", IkeSaClosed)
    assert "AUTHENTICATION_FAILED" in v.reason
    assert not p.home.sas and not p.vm.sas


def test_malformed_cert_payload_gives_authentication_failed(vpn: Ca, tmp_path: Path) -> None:
    home = cert_side(vpn, HOME_HOST, tmp_path / "home")
    vm = cert_side(vpn, VM_HOST, tmp_path / "vm")

    class Garbled(Credentials):
        def certs(self, peer_reqs=()):
            return [wire.CertPayload(CertEncoding.X509_SIGNATURE, b"\x30\x82\xff\xff junk")]

    bad = Garbled(local_key=home.local_key, store=home.store, local_cert=home.local_cert)
    p = pair_with(bad, vm)
    p.connect()
    p.run()
    (v,) = p.events("vm", IkeSaClosed)
    assert "CERT payload 1 of 1 is not a DER X.509 certificate" in v.reason
    (h,) = p.events("home", IkeSaClosed)
    assert "AUTHENTICATION_FAILED" in h.reason
