"""pyike <-> charon with every key and certificate set-up an iked user has (issue 12).

Same two namespaces as tests/test_interop_strongswan.py (home 192.0.2.1 with ID
carinho.lan, VM 192.0.2.2 with ID namorar.example.com), AES-GCM-16-256 /
PRF-SHA384 / curve25519, both roles for each case:

- raw RSA-2048 keys with AUTH method 1 (pyike ``rsa``, charon
  ``signature_authentication = no``) and with RFC 7427 (pyike ``rfc7427``);
- raw ECDSA P-256 and P-521 keys (pyike's default "any signature");
- X.509 certificates from a CA made by ``pyike ca`` and from one made by plain
  ``openssl`` (charon with the x509, revocation and constraints plugins), checked
  on both sides against their ca/ and CRLs;
- a certificate from an untrusted CA, an expired one and a revoked one: each side
  refuses the other's, AUTHENTICATION_FAILED, no Child SA, a log line on both sides.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from interop.strongswan import CHARON_BIN, DEBIAN_PACKAGES, Charon
from pyike import keys
from pyike.ca import Ca
from pyike.registry import IdType
from tests.netns import Netns, TwoHosts, require_binary, wait_until
from tests.pyike_proc import PyikeProc

pytestmark = [pytest.mark.interop, pytest.mark.netns]

HOME_ID, VM_ID = "carinho.lan", "namorar.example.com"
HOME_ADDR, VM_ADDR = "192.0.2.1", "192.0.2.2"
HOME_INNER, VM_INNER = "2001:db8:c1da::1", "2001:db8:c1da::2"
TIMEOUT_S = 20.0
CHARON_SUITE = "aes256gcm16-prfsha384-x25519"
PYIKE_SUITE = "ikesa enc aes-256-gcm prf hmac-sha2-384 group curve25519"


def _need_tools() -> None:
    require_binary(CHARON_BIN, DEBIAN_PACKAGES)
    require_binary("swanctl", "strongswan-swanctl")


@dataclass
class Side:
    """One end's material: its key, and optionally its certificate and trust."""

    key: object
    cert_pem: bytes | None = None
    ca_pems: tuple[bytes, ...] = ()
    crl_pems: tuple[bytes, ...] = ()


def _pyike_conf(path: Path, *, initiator: bool, auth: str) -> Path:
    if initiator:
        head = f'ikev2 "tun" active esp from {HOME_INNER} to {VM_INNER} peer {VM_ADDR}'
        ids = f"srcid {HOME_ID} dstid {VM_ID}"
    else:
        head = f'ikev2 "tun" passive esp from {VM_INNER} to {HOME_INNER} local {VM_ADDR} peer any'
        ids = f"srcid {VM_ID} dstid {HOME_ID}"
    path.write_text(f"{head} \\\n\t{PYIKE_SUITE} \\\n\t{ids} {auth}\n")
    return path


def _pyike_keydir(root: Path, own: Side, peer_id: str, peer_key: object) -> Path:
    (root / "private").mkdir(parents=True, mode=0o700)
    key = root / "private" / "local.key"
    key.write_bytes(keys.private_key_pem(own.key))  # type: ignore[arg-type]
    key.chmod(0o600)
    (root / "local.pub").write_bytes(keys.public_key_pem(own.key.public_key()))  # type: ignore[attr-defined]
    keys.install_peer_key(root, IdType.ID_FQDN, peer_id, keys.public_key_pem(peer_key))  # type: ignore[arg-type]
    for sub, pems in (
        ("certs", (own.cert_pem,) if own.cert_pem else ()),
        ("ca", own.ca_pems),
        ("crls", own.crl_pems),
    ):
        (root / sub).mkdir(exist_ok=True)
        for i, pem in enumerate(pems):
            (root / sub / f"{sub}{i}.{'crl' if sub == 'crls' else 'crt'}").write_bytes(pem)
    return root


def _charon(
    ns: Netns, workdir: Path, *, home: bool, own: Side, peer_key: object, rfc7427: bool
) -> Charon:
    local, remote = (HOME_ADDR, VM_ADDR) if home else (VM_ADDR, HOME_ADDR)
    local_in, remote_in = (HOME_INNER, VM_INNER) if home else (VM_INNER, HOME_INNER)
    return Charon(
        ns,
        workdir,
        name="tun",
        local_addr=local,
        remote_addr=remote,
        local_id=HOME_ID if home else VM_ID,
        remote_id=VM_ID if home else HOME_ID,
        private_key_pem=keys.private_key_pem(own.key, pkcs8=True),  # type: ignore[arg-type]
        peer_public_pem=keys.public_key_pem(peer_key),  # type: ignore[arg-type]
        ike_proposals=CHARON_SUITE,
        esp_proposals="aes256gcm16",
        local_ts=f"{local_in}/128",
        remote_ts=f"{remote_in}/128",
        rfc7427=rfc7427,
        cert_pem=own.cert_pem,
        ca_pems=own.ca_pems,
        crl_pems=own.crl_pems,
    )


_SPI = re.compile(r"spi=(0x[0-9a-f]+): (established|IKE SA closed: (.*))")


def _no_sa_left(log: str) -> None:
    """Every IKE SA pyike established was closed for the authentication failure."""
    established, failed = set(), set()
    for m in _SPI.finditer(log):
        if m[2] == "established":
            established.add(m[1])
        elif re.search(r"authentication|AUTHENTICATION_FAILED", m[3]):
            failed.add(m[1])
    assert established <= failed, (established - failed, log[-3000:])


def _charon_log(charon: Charon, pattern: str, timeout: float = TIMEOUT_S) -> str:
    rx = re.compile(pattern)
    found = wait_until(lambda: rx.search(charon.log_text()), timeout=timeout, what=pattern)
    return found.group(0)  # type: ignore[union-attr]


def run(
    two_hosts: TwoHosts,
    tmp_path: Path,
    *,
    pyike_initiates: bool,
    pyike: Side,
    charon: Side,
    auth: str = "",
    rfc7427: bool = True,
    expect_ok: bool = True,
) -> tuple[str, str]:
    """One exchange; returns (pyike's log, charon's log)."""
    _need_tools()
    home_ns, vm_ns = two_hosts
    pyike_ns, charon_ns = (home_ns, vm_ns) if pyike_initiates else (vm_ns, home_ns)
    charon_id = VM_ID if pyike_initiates else HOME_ID
    charon_ns.run(["ip", "-6", "addr", "add", f"{VM_INNER if pyike_initiates else HOME_INNER}/128",
                   "dev", "lo", "nodad"])  # fmt: skip
    keydir = _pyike_keydir(tmp_path / "keys", pyike, charon_id, charon.key.public_key())  # type: ignore[attr-defined]
    conf = _pyike_conf(tmp_path / "iked.conf", initiator=pyike_initiates, auth=auth)
    c = _charon(charon_ns, tmp_path / "charon", home=not pyike_initiates, own=charon,
                peer_key=pyike.key.public_key(), rfc7427=rfc7427)  # type: ignore[attr-defined]  # fmt: skip
    with c:
        c.load()
        proc = PyikeProc(pyike_ns, tmp_path, conf, keydir).start()
        try:
            if not pyike_initiates:
                c.initiate(timeout=TIMEOUT_S, check=False)
            if expect_ok:
                proc.wait_log(r"created Child SA", timeout=TIMEOUT_S)
                c.wait_established(timeout=TIMEOUT_S)
            else:
                proc.wait_log(r"AUTHENTICATION_FAILED", timeout=TIMEOUT_S)
                _charon_log(c, r"N\(AUTH_FAILED\)")
        finally:
            proc.stop()
        if not expect_ok:
            # No SA left on either side (pyike retried as initiator until stopped).
            wait_until(lambda: not c.list_sas(), timeout=TIMEOUT_S, what="charon without SAs")
            _no_sa_left(proc.log())
        plog, clog = proc.log(), c.log_text()
    assert "Traceback" not in plog
    return plog, clog


# --------------------------------------------------------------------------- raw keys


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@pytest.mark.parametrize("pyike_initiates", [True, False], ids=["pyike-init", "charon-init"])
def test_rsa_raw_keys_method_1(two_hosts: TwoHosts, tmp_path: Path, pyike_initiates: bool) -> None:
    plog, clog = run(two_hosts, tmp_path, pyike_initiates=pyike_initiates, pyike=Side(_rsa()),
                     charon=Side(_rsa()), auth="rsa", rfc7427=False)  # fmt: skip
    assert re.search(r"authenticated: RSA_SIG with the raw public key", plog), plog[-2000:]
    assert re.search(r"authentication of '[^']+' with RSA signature successful", clog)


@pytest.mark.parametrize("pyike_initiates", [True, False], ids=["pyike-init", "charon-init"])
def test_rsa_raw_keys_rfc7427(two_hosts: TwoHosts, tmp_path: Path, pyike_initiates: bool) -> None:
    plog, clog = run(two_hosts, tmp_path, pyike_initiates=pyike_initiates, pyike=Side(_rsa()),
                     charon=Side(_rsa()), auth="rfc7427")  # fmt: skip
    assert "authenticated: DIGITAL_SIGNATURE with the raw public key" in plog, plog[-2000:]
    assert re.search(r"authentication of '[^']+' with RSA_EMSA_PKCS1_SHA2_\d+ successful", clog)


@pytest.mark.parametrize("pyike_initiates", [True, False], ids=["pyike-init", "charon-init"])
@pytest.mark.parametrize(
    ("curve", "method", "rfc7427"),
    # P-256 with RFC 7427 (method 14), P-521 with its RFC 4754 method 11
    [(ec.SECP256R1(), "ECDSA_SHA256_P256", True), (ec.SECP521R1(), "ECDSA_SHA512_P521", False)],
    ids=["p256-rfc7427", "p521-rfc4754"],
)  # fmt: skip
def test_ecdsa_raw_keys(
    two_hosts: TwoHosts, tmp_path: Path, pyike_initiates: bool, curve: ec.EllipticCurve,
    method: str, rfc7427: bool,
) -> None:  # fmt: skip
    ours, theirs = ec.generate_private_key(curve), ec.generate_private_key(curve)
    plog, _ = run(two_hosts, tmp_path, pyike_initiates=pyike_initiates, pyike=Side(ours),
                  charon=Side(theirs), rfc7427=rfc7427)  # fmt: skip
    want = "DIGITAL_SIGNATURE" if rfc7427 else method
    assert f"authenticated: {want} with the raw public key" in plog, plog[-2000:]


# --------------------------------------------------------------------------- certificates


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _pyike_ca(tmp: Path) -> tuple[Side, Side, Ca]:
    """CA and both host certificates made with ``pyike ca`` (RSA-2048, as ikectl)."""
    ca = Ca("vpn", tmp / "ssl")
    ca.create(password="test")
    for host in (HOME_ID, VM_ID):
        ca.certificate(host)
    sides = []
    for host in (HOME_ID, VM_ID):
        key = serialization.load_pem_private_key(ca.host_key_path(host).read_bytes(), None)
        sides.append(Side(key, ca.host_cert_path(host).read_bytes(), (ca.cert_path.read_bytes(),),
                          (ca.crl_path.read_bytes(),)))  # fmt: skip
    return sides[0], sides[1], ca


def _openssl_ca(tmp: Path) -> tuple[Side, Side]:
    """A CA and ECDSA P-256 host certificates made with plain openssl commands."""
    d = tmp / "openssl-ca"
    d.mkdir()

    def sh(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)

    sh("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384", "-nodes",
       "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/O=Home/CN=Home CA",
       "-days", "30")  # fmt: skip
    sides = []
    for host in (HOME_ID, VM_ID):
        sh("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
           f"{host}.key", "-out", f"{host}.csr", "-subj", f"/CN={host}")  # fmt: skip
        (d / f"{host}.ext").write_text(f"subjectAltName=DNS:{host}\n")
        sh("x509", "-req", "-in", f"{host}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
           "-CAcreateserial", "-out", f"{host}.crt", "-days", "10",
           "-extfile", f"{host}.ext")  # fmt: skip
        key = serialization.load_pem_private_key((d / f"{host}.key").read_bytes(), None)
        sides.append(Side(key, (d / f"{host}.crt").read_bytes(), ((d / "ca.crt").read_bytes(),)))
    return sides[0], sides[1]


def _roles(home: Side, vm: Side, pyike_initiates: bool) -> tuple[Side, Side]:
    return (home, vm) if pyike_initiates else (vm, home)


@pytest.mark.parametrize("pyike_initiates", [True, False], ids=["pyike-init", "charon-init"])
@pytest.mark.parametrize("maker", ["pyike-ca", "openssl", "mixed"])
def test_certificates(
    two_hosts: TwoHosts, tmp_path: Path, pyike_initiates: bool, maker: str
) -> None:
    if maker == "mixed":
        # home's certificate from `pyike ca`, the VM's from an openssl CA; both trust both.
        home, _, _ = _pyike_ca(tmp_path)
        _, vm = _openssl_ca(tmp_path)
        home.ca_pems = vm.ca_pems = home.ca_pems + vm.ca_pems
    else:
        home, vm = _pyike_ca(tmp_path)[:2] if maker == "pyike-ca" else _openssl_ca(tmp_path)
    ours, theirs = _roles(home, vm, pyike_initiates)
    plog, clog = run(two_hosts, tmp_path, pyike_initiates=pyike_initiates, pyike=ours,
                     charon=theirs)  # fmt: skip
    peer = VM_ID if pyike_initiates else HOME_ID
    assert re.search(rf"peer fqdn/{re.escape(peer)} authenticated: DIGITAL_SIGNATURE with the "
                     rf"certificate '/CN={re.escape(peer)}'", plog), plog[-3000:]  # fmt: skip
    # charon checked pyike's certificate against its CA (not a raw key).
    assert re.search(r"using trusted ca certificate", clog), clog[-3000:]
    assert "BEGIN" not in plog  # no certificate or key material in pyike's log


def _expired(ca: Ca, host: str) -> bytes:
    """A certificate for host signed by ca that expired yesterday (same key as before)."""
    key = serialization.load_pem_private_key(ca.host_key_path(host).read_bytes(), None)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca.ca_cert().subject)
        .public_key(key.public_key())  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now - dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(ca.ca_key(), hashes.SHA256())  # type: ignore[arg-type]
    )
    return _pem(cert)


@pytest.mark.parametrize("pyike_initiates", [True, False], ids=["pyike-init", "charon-init"])
@pytest.mark.parametrize("refuser", ["pyike", "charon"])
@pytest.mark.parametrize("flaw", ["untrusted", "expired", "revoked"])
def test_bad_certificate_fails_authentication(
    two_hosts: TwoHosts, tmp_path: Path, pyike_initiates: bool, refuser: str, flaw: str
) -> None:
    home, vm, ca = _pyike_ca(tmp_path)
    ours, theirs = _roles(home, vm, pyike_initiates)
    # the side whose certificate is flawed is the one the refuser checks
    victim = theirs if refuser == "pyike" else ours
    victim_id = (VM_ID if pyike_initiates else HOME_ID) if refuser == "pyike" else (
        HOME_ID if pyike_initiates else VM_ID)  # fmt: skip
    if flaw == "untrusted":
        other = Ca("other", tmp_path / "ssl")
        other.create()
        other.certificate(victim_id)
        victim.key = serialization.load_pem_private_key(
            other.host_key_path(victim_id).read_bytes(), None
        )
        victim.cert_pem = other.host_cert_path(victim_id).read_bytes()
    elif flaw == "expired":
        victim.cert_pem = _expired(ca, victim_id)
    else:
        ca.revoke(victim_id)
        crl = ca.crl_path.read_bytes()
        for s in (home, vm):
            s.crl_pems = (crl,)
    # charon as initiator refusing pyike's certificate: pyike (the responder) has
    # answered and established by then; charon's INFORMATIONAL N(AUTHENTICATION_FAILED)
    # (2.21.2) makes it close the SA, which _no_sa_left checks.
    plog, clog = run(two_hosts, tmp_path, pyike_initiates=pyike_initiates, pyike=ours,
                     charon=theirs, expect_ok=False)  # fmt: skip
    if refuser == "pyike":
        reason = {"untrusted": "does not chain to a trusted CA", "expired": "expired on",
                  "revoked": "is revoked"}[flaw]  # fmt: skip
        assert re.search(rf"AUTHENTICATION_FAILED: fqdn/{re.escape(victim_id)}: .*{reason}",
                         plog), plog[-3000:]  # fmt: skip
    else:
        assert re.search(r"(refused by peer: AUTHENTICATION_FAILED|peer refused our "
                         r"authentication)", plog), plog[-3000:]  # fmt: skip
        charon_reason = {"untrusted": r"no issuer certificate found for",
                         "expired": r"certificate invalid \(valid from",
                         "revoked": r"certificate was revoked"}[flaw]  # fmt: skip
        assert re.search(charon_reason, clog), clog[-3000:]
    assert "BEGIN" not in plog
