"""pyike <-> strongSwan charon (5.9.8, kernel-libipsec) in two network namespaces.

The issue "Interop in CI with strongSwan": ECDSA P-384 raw public keys, IDs
``carinho.lan`` (home, 192.0.2.1) and ``namorar.example.com`` (VM, 192.0.2.2),
UDP encapsulation forced on both ends (pyike always; charon ``encap = yes``,
which kernel-libipsec needs anyway, see /work/shared/notes/interop-facts.md).

Directions:

- ``pyike_init``: pyike at home initiates (a written one-policy iked.conf with an
  explicit ``ikesa``), charon on the VM responds;
- ``charon_init``: charon at home initiates, pyike on the VM responds with the
  guide's conf/vm-iked.conf (``-D ext=192.0.2.2``, iked's default proposals).

Matrix (4 cases per direction, each axis covered both ways): IKE proposal
AES-GCM-16-256/PRF-SHA384/curve25519 vs AES-CBC-256/HMAC-SHA384/PRF-SHA384/ecp384,
crossed with RFC 7427 digital signatures (AUTH method 14) vs plain RFC 4754
ECDSA (method 10; charon ``signature_authentication = no``). The Child SA follows
the IKE suite: AES-GCM-16-256 ESP, or AES-CBC-256 + HMAC-SHA2-256-128 ESP.

For each: both sides report the Child SA; its SPIs agree (pyike's log, charon's
log and ``swanctl --list-sas``); its keys agree (pyike's ``--keylog`` esp_sa table
vs charon's ``chd = 4`` key dumps, RFC 7296 section 2.17); the AUTH method on the
wire is the expected one (``pyike decode`` of the capture). The RFC 7427 cases of
each direction (one per ESP suite) also ping both ways over the inner IPv6
addresses (pyike's TUN <-> charon's libipsec TUN).

ChaCha20-Poly1305 (RFC 7634) for both the IKE SA and the Child SA, each direction,
with ping both ways (charon's openssl plugin serves it; no ``chapoly`` plugin needed).

Failure cases: a wrong peer key (AUTHENTICATION_FAILED on both sides, no Child SA;
pyike as initiator tells charon with an INFORMATIONAL, RFC 7296 2.21.2) and disjoint
proposals (NO_PROPOSAL_CHOSEN on both).

``PYIKE_WRITE_DOC_SAMPLE=1`` writes the decode of the pyike-initiator GCM/7427
exchange to docs/samples/pyike-charon-decode.txt.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from interop.strongswan import CHARON_BIN, DEBIAN_PACKAGES, Charon, parse_charon_keys
from pyike import keys
from pyike.keylog import EspKeyRecord, parse_esp_records
from tests.netns import (
    HarnessError,
    Netns,
    TwoHosts,
    capture,
    ping,
    require_binary,
    wait_until,
)
from tests.pyike_proc import CONF, REPO, PyikeProc, write_keydir

pytestmark = [pytest.mark.interop, pytest.mark.netns]

HOME_ID, VM_ID = "carinho.lan", "namorar.example.com"
HOME_ADDR, VM_ADDR = "192.0.2.1", "192.0.2.2"  # the two_hosts fixture's outer addresses
HOME_INNER, VM_INNER = "2001:db8:c1da::1", "2001:db8:c1da::2"  # the guide's vpn0 / vpn1
TIMEOUT_S = 20.0
DOC_SAMPLE_ENV = "PYIKE_WRITE_DOC_SAMPLE"
DOC_SAMPLE = REPO / "docs" / "samples" / "pyike-charon-decode.txt"


@dataclass(frozen=True, slots=True)
class Suite:
    """One IKE SA proposal, spelled for both daemons."""

    name: str
    charon: str  # swanctl ``proposals``
    pyike: str  # iked.conf ``ikesa`` clause
    esp: str  # charon's ``esp_proposals`` (pyike keeps iked's default childsa offer)
    established: str  # the suite as pyike's "established ... (...)" line names it


# The Child SA follows the IKE suite's style, so both ESP key layouts are compared:
# AEAD (key + 4-byte salt, no integrity key) and AES-CBC + HMAC-SHA2-256-128.
GCM = Suite(
    "gcm-x25519",
    "aes256gcm16-prfsha384-x25519",
    "ikesa enc aes-256-gcm prf hmac-sha2-384 group curve25519",
    "aes256gcm16",
    "enc aes-256-gcm group curve25519 prf hmac-sha2-384",
)
CBC = Suite(
    "cbc-ecp384",
    "aes256-sha384-ecp384",
    "ikesa enc aes-256 auth hmac-sha2-384 prf hmac-sha2-384 group ecp384",
    "aes256-sha256",
    "enc aes-256 auth hmac-sha2-384 group ecp384 prf hmac-sha2-384",
)

# AUTH methods (RFC 7296 3.8 / RFC 4754 / RFC 7427) as ``pyike decode`` names them.
AUTH_7427 = "DIGITAL_SIGNATURE"
AUTH_4754 = "ECDSA_SHA384_P384"

CASES = [
    pytest.param(GCM, True, id="gcm-x25519-rfc7427"),
    pytest.param(GCM, False, id="gcm-x25519-rfc4754"),
    pytest.param(CBC, True, id="cbc-ecp384-rfc7427"),
    pytest.param(CBC, False, id="cbc-ecp384-rfc4754"),
]


# --- set-up helpers ---------------------------------------------------------------------


@dataclass(slots=True)
class Keys:
    home: ec.EllipticCurvePrivateKey
    vm: ec.EllipticCurvePrivateKey


def _need_tools() -> None:
    require_binary(CHARON_BIN, DEBIAN_PACKAGES)
    require_binary("swanctl", "strongswan-swanctl")
    require_binary("tcpdump", "tcpdump")


def _add_inner(ns: Netns, addr: str) -> None:
    """charon's libipsec TUN has no address: the inner address lives on lo (``nodad``
    so it is usable at once)."""
    ns.run(["ip", "-6", "addr", "add", f"{addr}/128", "dev", "lo", "nodad"])


def _charon(
    ns: Netns,
    workdir: Path,
    *,
    home: bool,
    own: ec.EllipticCurvePrivateKey,
    peer_public: ec.EllipticCurvePublicKey,
    suite: Suite | str,
    rfc7427: bool,
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
        private_key_pem=keys.private_key_pem(own, pkcs8=True),
        peer_public_pem=keys.public_key_pem(peer_public),
        ike_proposals=suite.charon if isinstance(suite, Suite) else suite,
        esp_proposals=suite.esp if isinstance(suite, Suite) else "aes256gcm16",
        # No proto restriction: the mirror of pyike's single policy.
        local_ts=f"{local_in}/128",
        remote_ts=f"{remote_in}/128",
        encap=True,
        rfc7427=rfc7427,
    )


def _home_conf(path: Path, ikesa: str) -> Path:
    """One active policy for all traffic between the inner addresses, explicit ikesa.
    `set nomobike`: with MOBIKE charon also sends address-list INFORMATIONALs at times
    that vary run to run (MOBIKE with charon: tests/test_mobike_netns.py)."""
    path.write_text(
        "set nomobike\n"
        f'ikev2 "tun" active esp from {HOME_INNER} to {VM_INNER} \\\n'
        f"\tpeer {VM_ADDR} \\\n"
        f"\t{ikesa} \\\n"
        f"\tsrcid {HOME_ID} dstid {VM_ID} \\\n"
        "\tecdsa384\n"
    )
    return path


def _decode(pcap_path: Path, keylog_dir: Path) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "pyike", "decode", str(pcap_path), "--keylog", str(keylog_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(REPO),
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


# --- checks ------------------------------------------------------------------------------

_PYIKE_CHILD = re.compile(r"created Child SA spi in 0x(?P<i>[0-9a-f]+) out 0x(?P<o>[0-9a-f]+)")


def _pyike_child_spis(log: str) -> tuple[int, int]:
    found = [(int(m["i"], 16), int(m["o"], 16)) for m in _PYIKE_CHILD.finditer(log)]
    assert len(found) == 1, f"expected one Child SA in pyike's log, got {found}"
    return found[0]


def check_child(
    pyike: PyikeProc,
    keylog_dir: Path,
    charon: Charon,
    charon_is_initiator: bool,
    pyike_addr: str,
    charon_addr: str,
) -> None:
    """SPIs and ESP keys of the one Child SA agree between pyike and charon."""
    pyike_in, pyike_out = _pyike_child_spis(pyike.log())
    sets = parse_charon_keys(charon.log_text())
    assert len(sets) == 1 and len(sets[0]["children"]) == 1, sets
    child = sets[0]["children"][0]
    c_in = int.from_bytes(child["spi_in"], "big")
    c_out = int.from_bytes(child["spi_out"], "big")
    # One SA per direction: what pyike receives on is what charon sends with.
    assert (pyike_in, pyike_out) == (c_out, c_in), (hex(pyike_in), hex(pyike_out), child)

    # swanctl's view of the same SA.
    (sa,) = charon.list_sas()
    (listed,) = sa["child-sas"].values()
    assert int(listed["spi-in"], 16) == c_in and int(listed["spi-out"], 16) == c_out, listed

    # RFC 7296 2.17: KEYMAT gives the initiator-to-responder keys first, so charon's
    # "initiator" keys protect packets sent by the IKE initiator.
    to_charon_keys = ("encr_r", "integ_r") if charon_is_initiator else ("encr_i", "integ_i")
    from_charon_keys = ("encr_i", "integ_i") if charon_is_initiator else ("encr_r", "integ_r")
    records = parse_esp_records((keylog_dir / "esp_sa").read_text())
    by_spi: dict[int, EspKeyRecord] = {r.spi: r for r in records}
    assert set(by_spi) >= {c_in, c_out}, ([hex(s) for s in by_spi], hex(c_in), hex(c_out))
    for spi, (enc, integ), src, dst in (
        (c_in, to_charon_keys, pyike_addr, charon_addr),
        (c_out, from_charon_keys, charon_addr, pyike_addr),
    ):
        rec = by_spi[spi]
        assert (rec.src, rec.dst) == (ip_address(src), ip_address(dst)), rec
        assert rec.enc_key == child[enc], f"ESP encryption key for SPI {spi:#x} differs"
        assert rec.integ_key == child.get(integ, b""), f"ESP integrity key {spi:#x} differs"


def check_decode(text: str, auth_method: str) -> None:
    """The decoded exchange: IKE_SA_INIT and IKE_AUTH request and response, and the
    IKE_AUTH pair decrypted (its payloads indented under the SK line) with the
    expected AUTH method on both sides."""
    assert "integrity check failed" not in text, text
    blocks = {}
    for block in text.split("\n--- "):
        lines = block.splitlines()
        if len(lines) > 1:
            blocks.setdefault(" ".join(lines[1].split()[:2]), lines[2:])
    assert {
        "IKE_SA_INIT request",
        "IKE_SA_INIT response",
        "IKE_AUTH request",
        "IKE_AUTH response",
    } <= set(blocks), text
    for kind, own_id in (("request", "IDi"), ("response", "IDr")):
        inner = [
            line.split()[0]
            for line in blocks[f"IKE_AUTH {kind}"]
            if line.startswith("    ") and not line.startswith("     ")
        ]
        assert {own_id, "AUTH", "SA", "TSi", "TSr"} <= set(inner), (kind, inner, text)
        auth = [line for line in blocks[f"IKE_AUTH {kind}"] if line.split()[0] == "AUTH"]
        assert auth and auth[0].split()[1] == auth_method, (kind, auth)


# --- the cases ---------------------------------------------------------------------------


def _keys() -> Keys:
    return Keys(ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1()))


@pytest.mark.parametrize(("suite", "rfc7427"), CASES)
def test_pyike_initiator(two_hosts: TwoHosts, tmp_path: Path, suite: Suite, rfc7427: bool) -> None:
    _need_tools()
    home, vm = two_hosts
    k = _keys()
    _add_inner(vm, VM_INNER)
    keylog_dir = tmp_path / "keylog"
    keylog_dir.mkdir()
    home_keys = write_keydir(tmp_path / "home-keys", k.home, {VM_ID: k.vm.public_key()})
    conf = _home_conf(tmp_path / "home-iked.conf", suite.pyike)
    pcap_path = tmp_path / "outer.pcap"
    charon = _charon(
        vm,
        tmp_path / "charon",
        home=False,
        own=k.vm,
        peer_public=k.home.public_key(),
        suite=suite,
        rfc7427=rfc7427,
    )
    with charon, capture(vm, "eth0", pcap_path, "udp"):
        charon.load()
        pyike = PyikeProc(home, tmp_path, conf, home_keys, ["--keylog", str(keylog_dir)]).start()
        try:
            pyike.wait_log(
                rf"established peer .*policy 'tun' as initiator "
                rf"\({re.escape(suite.established)}\)",
                timeout=TIMEOUT_S,
            )
            pyike.wait_log(r"created Child SA", timeout=TIMEOUT_S)
            charon.wait_established(timeout=TIMEOUT_S)
            check_child(
                pyike,
                keylog_dir,
                charon,
                charon_is_initiator=False,
                pyike_addr=HOME_ADDR,
                charon_addr=VM_ADDR,
            )
            if rfc7427:  # ESP data both ways, AES-GCM and AES-CBC + HMAC
                assert ping(home, VM_INNER, count=3) >= 2, pyike.log()[-3000:]
                assert ping(vm, HOME_INNER, count=3) >= 2, charon.log_text()[-3000:]
        finally:
            pyike.stop()
    text = _decode(pcap_path, keylog_dir)
    check_decode(text, AUTH_7427 if rfc7427 else AUTH_4754)
    if suite is GCM and rfc7427:
        if os.environ.get(DOC_SAMPLE_ENV) == "1":
            DOC_SAMPLE.parent.mkdir(parents=True, exist_ok=True)
            DOC_SAMPLE.write_text(text)
        # docs/ike-flow.md is illustrated with this exchange: its structure must
        # still be what pyike and charon do today (values differ run to run).
        assert decode_shape(text) == decode_shape(DOC_SAMPLE.read_text()), (
            f"{DOC_SAMPLE} no longer matches a fresh run; regenerate it with {DOC_SAMPLE_ENV}=1"
        )
    assert "Traceback" not in pyike.log()


def decode_shape(text: str) -> list[str]:
    """`pyike decode` output with run-specific values (SPIs, nonces, keys, times,
    lengths, addresses' ports kept) blanked, so two runs can be compared."""
    out = []
    for line in text.splitlines():
        line = re.sub(r"^--- #\d+ [\d.]+ ", "--- ", line)
        line = re.sub(r"\b(0x)?[0-9a-f]{8,}\b(\.\.\.)?", "<hex>", line)
        line = re.sub(r"\b\d+ bytes\b", "<n> bytes", line)
        out.append(line)
    return out


@pytest.mark.parametrize(("suite", "rfc7427"), CASES)
def test_charon_initiator(two_hosts: TwoHosts, tmp_path: Path, suite: Suite, rfc7427: bool) -> None:
    _need_tools()
    home, vm = two_hosts
    k = _keys()
    _add_inner(home, HOME_INNER)
    keylog_dir = tmp_path / "keylog"
    keylog_dir.mkdir()
    vm_keys = write_keydir(tmp_path / "vm-keys", k.vm, {HOME_ID: k.home.public_key()})
    pcap_path = tmp_path / "outer.pcap"
    charon = _charon(
        home,
        tmp_path / "charon",
        home=True,
        own=k.home,
        peer_public=k.vm.public_key(),
        suite=suite,
        rfc7427=rfc7427,
    )
    pyike = PyikeProc(
        vm,
        tmp_path,
        CONF / "vm-iked.conf",
        vm_keys,
        ["-D", f"ext={VM_ADDR}", "--keylog", str(keylog_dir)],
    ).start()
    try:
        pyike.wait_log(r"listening on IPv4 UDP port 4500", timeout=15)
        with charon, capture(vm, "eth0", pcap_path, "udp"):
            charon.load()
            charon.initiate(timeout=TIMEOUT_S)
            charon.wait_established(timeout=TIMEOUT_S)
            pyike.wait_log(
                rf"established peer .*policy 'carinho' as responder "
                rf"\({re.escape(suite.established)}\)",
                timeout=TIMEOUT_S,
            )
            pyike.wait_log(r"created Child SA", timeout=TIMEOUT_S)
            check_child(
                pyike,
                keylog_dir,
                charon,
                charon_is_initiator=True,
                pyike_addr=VM_ADDR,
                charon_addr=HOME_ADDR,
            )
            if rfc7427:  # ESP data both ways, AES-GCM and AES-CBC + HMAC
                assert ping(home, VM_INNER, count=3) >= 2, pyike.log()[-3000:]
                assert ping(vm, HOME_INNER, count=3) >= 2, charon.log_text()[-3000:]
    finally:
        pyike.stop()
    check_decode(_decode(pcap_path, keylog_dir), AUTH_7427 if rfc7427 else AUTH_4754)
    assert "Traceback" not in pyike.log()


# --- ChaCha20-Poly1305 (RFC 7634), IKE and ESP -------------------------------------------

# charon's openssl plugin provides ChaCha20-Poly1305 (no "chapoly" plugin is needed, or
# installed), for IKE and for libipsec's ESP alike.
CHACHA = Suite(
    "chacha20-x25519",
    "chacha20poly1305-prfsha256-x25519",
    "ikesa enc chacha20-poly1305 prf hmac-sha2-256 group curve25519 childsa enc chacha20-poly1305",
    "chacha20poly1305",
    "enc chacha20-poly1305 group curve25519 prf hmac-sha2-256",
)


def check_chacha_child(pyike: PyikeProc, charon: Charon) -> None:
    """Both sides hold one ChaCha20-Poly1305 Child SA with the same SPIs. Its keys are
    not in the key log (Wireshark's esp_sa table has no name for it): that they agree is
    shown by the ping both ways that follows."""
    pyike_in, pyike_out = _pyike_child_spis(pyike.log())
    assert re.search(r"created Child SA .*\(enc chacha20-poly1305( esn)?\)", pyike.log())
    (sa,) = charon.list_sas()
    assert sa["encr-alg"] == "CHACHA20_POLY1305", sa
    (listed,) = sa["child-sas"].values()
    assert listed["encr-alg"] == "CHACHA20_POLY1305", listed
    assert "integ-alg" not in listed, listed  # AEAD: no separate integrity
    assert (int(listed["spi-in"], 16), int(listed["spi-out"], 16)) == (pyike_out, pyike_in)


def test_chacha20_poly1305_pyike_initiator(two_hosts: TwoHosts, tmp_path: Path) -> None:
    _need_tools()
    home, vm = two_hosts
    k = _keys()
    _add_inner(vm, VM_INNER)
    home_keys = write_keydir(tmp_path / "home-keys", k.home, {VM_ID: k.vm.public_key()})
    conf = _home_conf(tmp_path / "home-iked.conf", CHACHA.pyike)
    charon = _charon(
        vm, tmp_path / "charon", home=False, own=k.vm, peer_public=k.home.public_key(),
        suite=CHACHA, rfc7427=True,
    )  # fmt: skip
    with charon:
        charon.load()
        pyike = PyikeProc(home, tmp_path, conf, home_keys).start()
        try:
            pyike.wait_log(
                rf"established peer .*policy 'tun' as initiator "
                rf"\({re.escape(CHACHA.established)}\)",
                timeout=TIMEOUT_S,
            )
            pyike.wait_log(r"created Child SA", timeout=TIMEOUT_S)
            charon.wait_established(timeout=TIMEOUT_S)
            check_chacha_child(pyike, charon)
            assert ping(home, VM_INNER, count=3) >= 2, pyike.log()[-3000:]
            assert ping(vm, HOME_INNER, count=3) >= 2, charon.log_text()[-3000:]
        finally:
            pyike.stop()
    assert "Traceback" not in pyike.log()


def test_chacha20_poly1305_charon_initiator(two_hosts: TwoHosts, tmp_path: Path) -> None:
    _need_tools()
    home, vm = two_hosts
    k = _keys()
    _add_inner(home, HOME_INNER)
    vm_keys = write_keydir(tmp_path / "vm-keys", k.vm, {HOME_ID: k.home.public_key()})
    conf = tmp_path / "vm-iked.conf"
    conf.write_text(
        f'ikev2 "carinho" passive esp from {VM_INNER} to {HOME_INNER} '
        f"local {VM_ADDR} peer any {CHACHA.pyike} "
        f"srcid {VM_ID} dstid {HOME_ID} ecdsa384\n"
    )
    charon = _charon(
        home, tmp_path / "charon", home=True, own=k.home, peer_public=k.vm.public_key(),
        suite=CHACHA, rfc7427=True,
    )  # fmt: skip
    pyike = PyikeProc(vm, tmp_path, conf, vm_keys).start()
    try:
        pyike.wait_log(r"listening on IPv4 UDP port 4500", timeout=15)
        with charon:
            charon.load()
            charon.initiate(timeout=TIMEOUT_S)
            charon.wait_established(timeout=TIMEOUT_S)
            pyike.wait_log(
                rf"established peer .*policy 'carinho' as responder "
                rf"\({re.escape(CHACHA.established)}\)",
                timeout=TIMEOUT_S,
            )
            pyike.wait_log(r"created Child SA", timeout=TIMEOUT_S)
            check_chacha_child(pyike, charon)
            assert ping(home, VM_INNER, count=3) >= 2, pyike.log()[-3000:]
            assert ping(vm, HOME_INNER, count=3) >= 2, charon.log_text()[-3000:]
    finally:
        pyike.stop()
    assert "Traceback" not in pyike.log()


# --- MODP groups: pyike's own modular arithmetic against charon's (openssl) -------------


@pytest.mark.parametrize("bits", [2048, 8192])
def test_modp_group_pyike_initiator(two_hosts: TwoHosts, tmp_path: Path, bits: int) -> None:
    """An IKE SA keyed by MODP Diffie-Hellman (RFC 3526) computed with Python integers:
    IKE_AUTH only verifies if both ends derived the same g^ir."""
    _need_tools()
    home, vm = two_hosts
    k = _keys()
    _add_inner(vm, VM_INNER)
    home_keys = write_keydir(tmp_path / "home-keys", k.home, {VM_ID: k.vm.public_key()})
    suite = Suite(
        f"modp{bits}",
        f"aes256gcm16-prfsha256-modp{bits}",
        f"ikesa enc aes-256-gcm prf hmac-sha2-256 group modp{bits}",
        "aes256gcm16",
        f"enc aes-256-gcm group modp{bits} prf hmac-sha2-256",
    )
    conf = _home_conf(tmp_path / "home-iked.conf", suite.pyike)
    charon = _charon(
        vm, tmp_path / "charon", home=False, own=k.vm, peer_public=k.home.public_key(),
        suite=suite, rfc7427=True,
    )  # fmt: skip
    with charon:
        charon.load()
        pyike = PyikeProc(home, tmp_path, conf, home_keys).start()
        try:
            pyike.wait_log(
                rf"established peer .*policy 'tun' as initiator \({re.escape(suite.established)}\)",
                timeout=TIMEOUT_S,
            )
            pyike.wait_log(r"created Child SA", timeout=TIMEOUT_S)
            charon.wait_established(timeout=TIMEOUT_S)
            (sa,) = charon.list_sas()
            assert sa["dh-group"] == f"MODP_{bits}", sa
        finally:
            pyike.stop()
    assert "Traceback" not in pyike.log()


# --- failures ------------------------------------------------------------------------------


class PeerNotTold(AssertionError):
    """charon never learnt that pyike (initiator) refused its AUTH."""


def test_wrong_key_pyike_initiator(two_hosts: TwoHosts, tmp_path: Path) -> None:
    """pyike holds a stranger's key for the VM: it refuses charon's AUTH."""
    _need_tools()
    home, vm = two_hosts
    k, stranger = _keys(), ec.generate_private_key(ec.SECP384R1())
    _add_inner(vm, VM_INNER)  # so charon *can* install its Child SA
    home_keys = write_keydir(tmp_path / "home-keys", k.home, {VM_ID: stranger.public_key()})
    conf = _home_conf(tmp_path / "home-iked.conf", GCM.pyike)
    charon = _charon(
        vm,
        tmp_path / "charon",
        home=False,
        own=k.vm,
        peer_public=k.home.public_key(),
        suite=GCM,
        rfc7427=True,
    )
    with charon:
        charon.load()
        pyike = PyikeProc(home, tmp_path, conf, home_keys).start()
        try:
            pyike.wait_log(
                rf"(AUTHENTICATION_FAILED|authentication of the peer failed): "
                rf".*fqdn/{VM_ID} does not verify",
                timeout=TIMEOUT_S,
            )
            assert "created Child SA" not in pyike.log()
            assert "Traceback" not in pyike.log()
            try:  # RFC 7296 2.21.2: INFORMATIONAL with N(AUTHENTICATION_FAILED)
                _wait_charon(
                    charon, r"parsed INFORMATIONAL request \d+ \[ N\(AUTH_FAILED\) \]", timeout=5
                )
            except HarnessError as e:
                raise PeerNotTold(str(e)) from e
        finally:
            pyike.stop()
        # pyike retries after a failure; once it is stopped, no SA may survive.
        try:
            wait_until(
                lambda: not any(sa.get("child-sas") for sa in charon.list_sas()),
                5,
                interval=0.2,
                what="charon to drop every Child SA",
            )
        except HarnessError as e:
            raise PeerNotTold(f"{e}: {charon.list_sas()}") from e


def test_wrong_key_charon_initiator(two_hosts: TwoHosts, tmp_path: Path) -> None:
    """pyike (responder) holds a stranger's key for home: it refuses charon's AUTH."""
    _need_tools()
    home, vm = two_hosts
    k, stranger = _keys(), ec.generate_private_key(ec.SECP384R1())
    vm_keys = write_keydir(tmp_path / "vm-keys", k.vm, {HOME_ID: stranger.public_key()})
    charon = _charon(
        home,
        tmp_path / "charon",
        home=True,
        own=k.home,
        peer_public=k.vm.public_key(),
        suite=GCM,
        rfc7427=True,
    )
    pyike = PyikeProc(
        vm, tmp_path, CONF / "vm-iked.conf", vm_keys, ["-D", f"ext={VM_ADDR}"]
    ).start()
    try:
        pyike.wait_log(r"listening on IPv4 UDP port 4500", timeout=15)
        with charon:
            charon.load()
            charon.initiate(timeout=TIMEOUT_S, check=False)
            pyike.wait_log(rf"AUTHENTICATION_FAILED: .*{HOME_ID}", timeout=TIMEOUT_S)
            _wait_charon(charon, r"received AUTHENTICATION_FAILED")
            assert not charon.list_sas()
    finally:
        pyike.stop()
    assert "created Child SA" not in pyike.log()
    assert "Traceback" not in pyike.log()


def test_no_proposal_pyike_initiator(two_hosts: TwoHosts, tmp_path: Path) -> None:
    """pyike offers only GCM/curve25519, charon accepts only CBC/ecp384."""
    _need_tools()
    home, vm = two_hosts
    k = _keys()
    home_keys = write_keydir(tmp_path / "home-keys", k.home, {VM_ID: k.vm.public_key()})
    conf = _home_conf(tmp_path / "home-iked.conf", GCM.pyike)
    charon = _charon(
        vm,
        tmp_path / "charon",
        home=False,
        own=k.vm,
        peer_public=k.home.public_key(),
        suite=CBC,
        rfc7427=True,
    )
    with charon:
        charon.load()
        pyike = PyikeProc(home, tmp_path, conf, home_keys).start()
        try:
            pyike.wait_log(r"NO_PROPOSAL_CHOSEN", timeout=TIMEOUT_S)
            _wait_charon(charon, r"N\(NO_PROP\)")
        finally:
            pyike.stop()
        assert not charon.list_sas()
    assert "established" not in pyike.log()
    assert "Traceback" not in pyike.log()


def test_no_proposal_charon_initiator(two_hosts: TwoHosts, tmp_path: Path) -> None:
    """charon offers only Camellia/AES-XCBC/modp1536, which iked's defaults lack."""
    _need_tools()
    home, vm = two_hosts
    k = _keys()
    vm_keys = write_keydir(tmp_path / "vm-keys", k.vm, {HOME_ID: k.home.public_key()})
    charon = _charon(
        home,
        tmp_path / "charon",
        home=True,
        own=k.home,
        peer_public=k.vm.public_key(),
        suite="camellia128-aesxcbc-modp1536",
        rfc7427=True,
    )
    pyike = PyikeProc(
        vm, tmp_path, CONF / "vm-iked.conf", vm_keys, ["-D", f"ext={VM_ADDR}"]
    ).start()
    try:
        pyike.wait_log(r"listening on IPv4 UDP port 4500", timeout=15)
        with charon:
            charon.load()
            charon.initiate(timeout=TIMEOUT_S, check=False)
            # pyike words it "no proposal chosen (policy 'carinho')"
            pyike.wait_log(r"(?i)no.proposal.chosen", timeout=TIMEOUT_S)
            _wait_charon(charon, r"received NO_PROPOSAL_CHOSEN")
            assert not charon.list_sas()
    finally:
        pyike.stop()
    assert "established" not in pyike.log()
    assert "Traceback" not in pyike.log()


def _wait_charon(charon: Charon, pattern: str, timeout: float = TIMEOUT_S) -> Any:
    """Bounded wait for ``pattern`` in charon's log; HarnessError with its tail."""
    rx = re.compile(pattern)
    try:
        return wait_until(
            lambda: rx.search(charon.log_text()), timeout, what=f"/{pattern}/ in charon's log"
        )
    except HarnessError as e:
        tail = "\n".join(
            line
            for line in charon.log_text().splitlines()
            if "=>" not in line and not re.search(r"> +\d+: ", line)
        )[-3000:]
        raise HarnessError(f"{e}\n{tail}") from e


# --- two policies of one name ----------------------------------------------------------------

# A second inner pair in another /64, so that the kernel's source address choice
# (longest common prefix, RFC 6724 rule 8) keeps each ping on its own flow.
HOME_INNER_B, VM_INNER_B = "2001:db8:c1db::1", "2001:db8:c1db::2"


def test_two_policies_with_one_name_get_their_own_child_sa(
    two_hosts: TwoHosts, tmp_path: Path
) -> None:
    """iked accepts a name twice; so must pyike: both policies called "tun" (issue 9,
    item 6) each negotiate their own Child SA, with their own selectors, and carry
    their own traffic. charon has one child per flow."""
    _need_tools()
    home, vm = two_hosts
    k = _keys()
    for addr in (VM_INNER, VM_INNER_B):
        _add_inner(vm, addr)
    home_keys = write_keydir(tmp_path / "home-keys", k.home, {VM_ID: k.vm.public_key()})
    conf = tmp_path / "home-iked.conf"
    conf.write_text(
        "".join(
            f'ikev2 "tun" active esp from {local} to {remote} \\\n'
            f"\tpeer {VM_ADDR} \\\n"
            f"\t{GCM.pyike} \\\n"
            f"\tsrcid {HOME_ID} dstid {VM_ID} \\\n"
            "\tecdsa384\n"
            for local, remote in ((HOME_INNER, VM_INNER), (HOME_INNER_B, VM_INNER_B))
        )
    )
    flows = {
        "a": (f"{VM_INNER}/128", f"{HOME_INNER}/128"),
        "b": (f"{VM_INNER_B}/128", f"{HOME_INNER_B}/128"),
    }
    charon = Charon(
        vm,
        tmp_path / "charon",
        name="tun",
        local_addr=VM_ADDR,
        remote_addr=HOME_ADDR,
        local_id=VM_ID,
        remote_id=HOME_ID,
        private_key_pem=keys.private_key_pem(k.vm, pkcs8=True),
        peer_public_pem=keys.public_key_pem(k.home.public_key()),
        ike_proposals=GCM.charon,
        esp_proposals=GCM.esp,
        children=flows,
        encap=True,
    )
    with charon:
        charon.load()
        pyike = PyikeProc(home, tmp_path, conf, home_keys).start()
        try:
            pyike.wait_log(r"loaded 2 policies", timeout=TIMEOUT_S)
            pyike.wait_log(r"created Child SA", count=2, timeout=TIMEOUT_S)

            def installed() -> dict[str, tuple[list[str], list[str]]]:
                out = {}
                for sa in charon.list_sas():
                    for child in sa.get("child-sas", {}).values():
                        if child.get("state") == "INSTALLED":
                            out[child["name"]] = (child["local-ts"], child["remote-ts"])
                return out

            wait_until(lambda: len(installed()) == 2, TIMEOUT_S, what="two Child SAs at charon")
            got = installed()
            assert got == {name: ([local], [remote]) for name, (local, remote) in flows.items()}
            assert len(charon.list_sas()) == 2  # one IKE SA per policy, as iked does
            # Each flow crosses on its own Child SA.
            assert ping(home, VM_INNER, count=3) >= 2, pyike.log()[-3000:]
            assert ping(home, VM_INNER_B, count=3) >= 2, pyike.log()[-3000:]
            assert ping(vm, HOME_INNER_B, count=3) >= 2, charon.log_text()[-3000:]
        finally:
            pyike.stop()
    log = pyike.log()
    assert "policy 'tun' as initiator" in log and "policy 'tun#2' as initiator" in log
    assert "Traceback" not in log
