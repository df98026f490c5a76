"""pyike <-> OpenIKED 7.2 with certificates from ``ikectl ca`` and with RSA-2048 keys.

iked runs under the PF_KEY shim harness (interop/iked.py), IKE only. The CA and both
host certificates are made by iked's own tool, ``ikectl ca`` (RSA-2048 keys, a
dNSName subjectAltName per host, a CRL), in a private mount namespace whose /etc/ssl
holds interop/ikeca.cnf (Debian's openiked ships no ikeca.cnf). Both sides get
iked's layout: ca/ca.crt, certs/<host>.crt, crls/ca.crl, private/local.key.

Cases, each in both roles: certificates (iked's "any signature" default; each side
validates the other's chain), and RSA-2048 raw keys (an older OpenBSD install's
local.key; pubkeys/fqdn/<id>, no ca/).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from interop.iked import DEBIAN_PACKAGES, IKED_BIN, Iked
from interop.vm.auth import ikectl_ca
from pyike import keys
from pyike.registry import IdType
from tests.netns import TwoHosts, require_binary
from tests.pyike_proc import PyikeProc

pytestmark = [pytest.mark.interop, pytest.mark.netns]

HOME_ID, VM_ID = "carinho.lan", "namorar.example.com"
HOME_ADDR, VM_ADDR = "192.0.2.1", "192.0.2.2"
HOME_INNER, VM_INNER = "2001:db8:c1da::1", "2001:db8:c1da::2"
TIMEOUT_S = 20.0


def _need_tools() -> None:
    require_binary(IKED_BIN, DEBIAN_PACKAGES)
    require_binary("ikectl", "openiked")
    require_binary("gcc", "gcc libc6-dev")
    require_binary("unshare", "util-linux")


def _conf(initiator: bool, auth: str = "") -> str:
    if initiator:
        return (
            f'ikev2 "tun" active esp from {HOME_INNER} to {VM_INNER} peer {VM_ADDR} \\\n'
            f"\tsrcid {HOME_ID} dstid {VM_ID} {auth}\n"
        )
    return (
        f'ikev2 "tun" passive esp from {VM_INNER} to {HOME_INNER} local {VM_ADDR} peer any \\\n'
        f"\tsrcid {VM_ID} dstid {HOME_ID} {auth}\n"
    )


def _cert_files(ca_dir: Path, host: str) -> dict[str, bytes]:
    return {
        "ca/ca.crt": (ca_dir / "ca.crt").read_bytes(),
        "crls/ca.crl": (ca_dir / "ca.crl").read_bytes(),
        f"certs/{host}.crt": (ca_dir / f"{host}.crt").read_bytes(),
    }


def _pyike_keydir(root: Path, key_pem: bytes, files: dict[str, bytes], peers: dict) -> Path:
    (root / "private").mkdir(parents=True, mode=0o700)
    (root / "private" / "local.key").write_bytes(key_pem)
    (root / "private" / "local.key").chmod(0o600)
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    for ident, pem in peers.items():
        keys.install_peer_key(root, IdType.ID_FQDN, ident, pem)
    return root


def run(
    two_hosts: TwoHosts,
    tmp_path: Path,
    *,
    pyike_home: bool,
    pyike_key: bytes,
    iked_key: bytes,
    pyike_files: dict[str, bytes],
    iked_files: dict[str, bytes],
    raw: bool,
) -> tuple[str, str]:
    _need_tools()
    home_ns, vm_ns = two_hosts
    pyike_ns, iked_ns = (home_ns, vm_ns) if pyike_home else (vm_ns, home_ns)
    pyike_id, iked_id = (HOME_ID, VM_ID) if pyike_home else (VM_ID, HOME_ID)

    def pub_of(pem: bytes) -> bytes:
        return keys.public_key_pem(serialization.load_pem_private_key(pem, None).public_key())  # type: ignore[arg-type]

    keydir = _pyike_keydir(tmp_path / "pyike-keys", pyike_key, pyike_files,
                           {iked_id: pub_of(iked_key)} if raw else {})  # fmt: skip
    conf = tmp_path / "pyike.conf"
    conf.write_text(_conf(pyike_home))
    conf.chmod(0o600)
    iked = Iked(
        iked_ns, tmp_path / "iked", "iked", _conf(not pyike_home), iked_key,
        {pyike_id: pub_of(pyike_key)} if raw else {}, extra_files=iked_files,
    )  # fmt: skip
    pyike = PyikeProc(pyike_ns, tmp_path, conf, keydir)
    try:
        if pyike_home:
            iked.start()
            pyike.start()
        else:
            pyike.start()
            pyike.wait_log(r"listening on IPv4 UDP port 4500", timeout=15)
            iked.start()
        pyike.wait_log(r"created Child SA", timeout=TIMEOUT_S)
        iked.wait_for_log(r"established peer", timeout=TIMEOUT_S)
        plog, ilog = pyike.log(), iked.log_text()
    finally:
        pyike.stop()
        iked.stop()
    assert "Traceback" not in plog
    return plog, ilog


@pytest.mark.parametrize("pyike_home", [True, False], ids=["pyike-init", "iked-init"])
def test_ikectl_ca_certificates(two_hosts: TwoHosts, tmp_path: Path, pyike_home: bool) -> None:
    ca_dir = ikectl_ca(tmp_path, (HOME_ID, VM_ID))
    pyike_host, iked_host = (HOME_ID, VM_ID) if pyike_home else (VM_ID, HOME_ID)
    plog, ilog = run(
        two_hosts, tmp_path, pyike_home=pyike_home,
        pyike_key=(ca_dir / "private" / f"{pyike_host}.key").read_bytes(),
        iked_key=(ca_dir / "private" / f"{iked_host}.key").read_bytes(),
        pyike_files=_cert_files(ca_dir, pyike_host), iked_files=_cert_files(ca_dir, iked_host),
        raw=False,
    )  # fmt: skip
    assert f"peer fqdn/{iked_host} authenticated: " in plog
    assert f"with the certificate '/CN={iked_host}/O=pyike tests'" in plog, plog[-3000:]
    # iked checked our certificate against its ca/ (there are no pubkeys/ to fall back on).
    assert f"ca_validate_cert: /CN={pyike_host}/O=pyike tests ok" in ilog, ilog[-3000:]


@pytest.mark.parametrize("pyike_home", [True, False], ids=["pyike-init", "iked-init"])
def test_rsa2048_raw_keys(two_hosts: TwoHosts, tmp_path: Path, pyike_home: bool) -> None:
    def pem() -> bytes:
        return keys.private_key_pem(rsa.generate_private_key(65537, 2048))

    plog, _ = run(two_hosts, tmp_path, pyike_home=pyike_home, pyike_key=pem(), iked_key=pem(),
                  pyike_files={}, iked_files={}, raw=True)  # fmt: skip
    assert "with the raw public key" in plog, plog[-3000:]


def test_pyike_ca_signs_with_an_ikectl_ca(tmp_path: Path) -> None:
    """`pyike ca` works on a CA directory ikectl made (encrypted ca.key, ikeca.passwd,
    index.txt, serial.txt), and openssl accepts what it signs there."""
    _need_tools()
    from pyike.ca import Ca

    ca_dir = ikectl_ca(tmp_path, (HOME_ID, VM_ID))
    ca = Ca("vpn", ca_dir.parent)
    out = ca.certificate("pyike.example")
    r = subprocess.run(["openssl", "verify", "-CAfile", str(ca_dir / "ca.crt"), str(out)],
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stdout + r.stderr
    assert (ca_dir / "serial.txt").read_text().strip() == "04"  # ikectl's 01..02, then ours
    ca.revoke("pyike.example")
    r = subprocess.run(["openssl", "crl", "-in", str(ca_dir / "ca.crl"), "-noout", "-text"],
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert "Serial Number: 03" in r.stdout, r.stdout
