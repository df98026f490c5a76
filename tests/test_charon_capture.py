"""A real capture: two strongSwan charons, checked against pyike's wire and crypto code.

The foundations issue asks for it: "generate one in a test (two strongSwan charon
instances in network namespaces, logging keys at ike = 4) and check pyike derives
the same SK_* keys, verifies both AUTH payloads, and decrypts every SK payload."

Set-up (``test_charon_to_charon``, root): home ``carinho.lan`` 192.0.2.1 initiates to
the VM ``namorar.example.com`` 192.0.2.2; ECDSA P-384 raw public keys; ``encap =
yes`` (IKE_SA_INIT on 500, the rest on 4500 behind the non-ESP marker); one CHILD_SA
2001:db8:c1da::1/128 <-> 2001:db8:c1da::2/128. tcpdump records the veth. Then, from
the capture and charon's key log only:

- SPIs, Ni, Nr and the selected transforms come from the IKE_SA_INIT pair
  (``pyike.wire.parse_message``); the DH shared secret from charon's log;
  ``pyike.crypto.derive_ike_keys`` must give charon's SKEYSEED and SK_* (RFC 7296 2.14);
- every SK payload opens with ``SkCipher.open`` (aad = the datagram up to the IV,
  RFC 7296 3.14 / RFC 5282 5.1) and its content parses (``parse_payloads``);
- both AUTH payloads verify (``auth_octets`` per RFC 7296 2.15, ``verify_auth``),
  the octets equal those charon logged, and the wrong key is refused;
- ``derive_child_keys`` gives charon's CHILD_SA keys (RFC 7296 2.17).

Two cases: AES-GCM-16 with RFC 7427 AUTH (method 14), and AES-CBC + HMAC-SHA2 with
``signature_authentication = no`` (RFC 4754 method 10).

``test_sample_capture`` (no root) repeats the checks on the copy kept in
tests/data/charon-sample/<case>/; ``PYIKE_WRITE_CHARON_SAMPLE=1`` refreshes it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from interop.strongswan import (
    CHARON_BIN,
    DEBIAN_PACKAGES,
    Charon,
    ecdsa_p384_keypair,
    key_log_excerpt,
    parse_charon_keys,
)
from pyike.registry import (
    AuthMethod,
    DhId,
    EncrId,
    ExchangeType,
    IdType,
    IntegId,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformType,
)
from tests.netns import TwoHosts, capture, require_binary, requires_root

SAMPLE_DIR = Path(__file__).resolve().parent / "data" / "charon-sample"
WRITE_SAMPLE_ENV = "PYIKE_WRITE_CHARON_SAMPLE"

HOME_ID, VM_ID = "carinho.lan", "namorar.example.com"
HOME_ADDR, VM_ADDR = "192.0.2.1", "192.0.2.2"  # the two_hosts fixture's outer addresses
HOME_INNER, VM_INNER = "2001:db8:c1da::1", "2001:db8:c1da::2"
TIMEOUT_S = 20.0


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    ike_proposals: str
    esp_proposals: str
    rfc7427: bool
    auth_method: AuthMethod  # what both charons must put in their AUTH payloads


CASES = [
    # The offer the interop notes describe (GCM 256/128, PRF sha384/sha256, x25519
    # then ecp384); charon's "default" keyword would pick AES-CBC-128 here.
    Case(
        "aesgcm",
        "aes256gcm16-aes128gcm16-prfsha384-prfsha256-x25519-ecp384",
        "aes256gcm16",
        rfc7427=True,
        auth_method=AuthMethod.DIGITAL_SIGNATURE,
    ),
    Case(
        "aescbc",
        "aes256-sha384-ecp384",
        "aes256-sha256",
        rfc7427=False,
        auth_method=AuthMethod.ECDSA_SHA384_P384,
    ),
]


def _pyike() -> tuple[Any, Any, Any]:
    """pyike.wire, pyike.crypto, pyike.pcap (written in parallel; skip clearly if absent)."""
    why = "pyike.{} (contract API) is not there yet: nothing to check the capture against"
    wire = pytest.importorskip("pyike.wire", reason=why.format("wire"))
    crypto = pytest.importorskip("pyike.crypto", reason=why.format("crypto"))
    pcap = pytest.importorskip("pyike.pcap", reason=why.format("pcap"))
    return wire, crypto, pcap


# --- the checks -------------------------------------------------------------------------


@dataclass
class Checked:
    """What ``check_capture`` established, for the sample's keys.txt and assertions."""

    spi_i: bytes
    spi_r: bytes
    ni: bytes
    nr: bytes
    suite: str
    charon: dict[str, Any]  # charon's key set (parse_charon_keys)
    child_suite: str
    sk_payloads: int = 0
    exchanges: list[str] = field(default_factory=list)


def _transforms(proposal: Any) -> dict[int, Any]:
    """Transforms of a chosen proposal by type (a choice has one of each type)."""
    by_type: dict[int, Any] = {}
    for t in proposal.transforms:
        assert t.type not in by_type, f"chosen proposal repeats transform type {t.type}"
        by_type[t.type] = t
    return by_type


def check_capture(
    pcap_path: Path,
    home_log: str,
    vm_log: str,
    home_public_pem: bytes,
    vm_public_pem: bytes,
    case: Case,
) -> Checked:
    """Every check of the module docstring, on one capture and the two charon logs."""
    wire, crypto, pcap = _pyike()

    # Charon's view: both ends logged the same single IKE key set.
    home_sets, vm_sets = parse_charon_keys(home_log), parse_charon_keys(vm_log)
    assert len(home_sets) == 1 and len(vm_sets) == 1, "expected one IKE SA, no rekey"
    logged = home_sets[0]
    for key in ("dh_secret", "skeyseed", "sk_d", "sk_ei", "sk_er", "sk_pi", "sk_pr"):
        assert logged[key] == vm_sets[0][key], f"charons disagree on {key}"

    # Every IKE message in the capture (port 4500 ones behind the non-ESP marker).
    raws = [raw for d in pcap.read_capture(pcap_path) if (raw := pcap.ike_payload(d))]
    messages = [(raw, wire.parse_message(raw)) for raw in raws]
    init_req = [
        (r, m) for r, m in messages if m.exchange == ExchangeType.IKE_SA_INIT and not m.is_response
    ]
    init_resp = [
        (r, m) for r, m in messages if m.exchange == ExchangeType.IKE_SA_INIT and m.is_response
    ]
    assert len(init_req) == 1 and len(init_resp) == 1, "expected one IKE_SA_INIT exchange"
    (req_raw, req), (resp_raw, resp) = init_req[0], init_resp[0]
    spi_i, spi_r = resp.spi_i, resp.spi_r
    assert req.spi_i == spi_i and spi_r != bytes(8)
    ni = req.find(wire.NoncePayload).data
    nr = resp.find(wire.NoncePayload).data

    # The responder's SA payload holds exactly the chosen transforms (RFC 7296 3.3).
    (chosen,) = resp.find(wire.SaPayload).proposals
    assert chosen.protocol == ProtocolId.IKE
    tr = _transforms(chosen)
    encr = EncrId(tr[TransformType.ENCR].id)
    key_bits = tr[TransformType.ENCR].key_length
    prf_alg = PrfId(tr[TransformType.PRF].id)
    integ = IntegId(tr[TransformType.INTEG].id) if TransformType.INTEG in tr else IntegId.NONE
    group = DhId.name_of(tr[TransformType.DH].id)
    suite = f"{encr.name}-{key_bits} {integ.name} PRF_{prf_alg.name} {group}"

    # SKEYSEED and SK_* (RFC 7296 2.14) from the wire plus charon's DH secret.
    keys = crypto.derive_ike_keys(
        prf_alg, encr, key_bits, integ, ni, nr, logged["dh_secret"], spi_i, spi_r
    )
    for name in ("skeyseed", "sk_d", "sk_ei", "sk_er", "sk_pi", "sk_pr"):
        assert getattr(keys, name) == logged[name], f"{name} differs from charon's"
    for name in ("sk_ai", "sk_ar"):  # charon logs no integrity keys for AEAD
        assert getattr(keys, name) == logged.get(name, b""), f"{name} differs from charon's"

    # Open every SK payload; keys by the sender's role (I flag, RFC 7296 3.1).
    ciphers = {
        True: crypto.SkCipher(encr, key_bits, integ, keys.sk_ei, keys.sk_ai),
        False: crypto.SkCipher(encr, key_bits, integ, keys.sk_er, keys.sk_ar),
    }
    checked = Checked(spi_i, spi_r, ni, nr, suite, logged, child_suite="")
    inner: dict[tuple[int, bool], list[Any]] = {}
    for raw, msg in messages:
        assert msg.find(wire.SkfPayload) is None, "fragmented message: not expected here"
        sk = msg.find(wire.SkPayload)
        if sk is None:
            assert msg.exchange == ExchangeType.IKE_SA_INIT, "unprotected message after INIT"
            continue
        assert (msg.spi_i, msg.spi_r) == (spi_i, spi_r)
        aad = raw[: len(raw) - len(sk.data)]  # IKE header + SK generic header
        plain = ciphers[msg.is_initiator].open(aad, sk.data)
        payloads = wire.parse_payloads(sk.first_inner, plain)
        inner.setdefault((msg.exchange, msg.is_response), payloads)
        checked.sk_payloads += 1
        checked.exchanges.append(
            f"{ExchangeType.name_of(msg.exchange)} {'response' if msg.is_response else 'request'}"
            f" #{msg.message_id}"
        )
    assert (ExchangeType.IKE_AUTH, False) in inner and (ExchangeType.IKE_AUTH, True) in inner

    # AUTH (RFC 7296 2.15): initiator signs its INIT request | Nr | prf(SK_pi, IDi'),
    # the responder its INIT response | Ni | prf(SK_pr, IDr').
    home_key = serialization.load_pem_public_key(home_public_pem)
    vm_key = serialization.load_pem_public_key(vm_public_pem)
    sides = [
        (
            inner[ExchangeType.IKE_AUTH, False],
            PayloadType.IDi,
            req_raw,
            nr,
            keys.sk_pi,
            HOME_ID,
            home_key,
            vm_key,
        ),
        (
            inner[ExchangeType.IKE_AUTH, True],
            PayloadType.IDr,
            resp_raw,
            ni,
            keys.sk_pr,
            VM_ID,
            vm_key,
            home_key,
        ),
    ]
    logged_octets = {a["id_body"]: a["octets"] for a in logged["auth"]}
    for payloads, kind, init_raw, peer_nonce, sk_p, ident, key, wrong_key in sides:
        # (The IKE_AUTH request also carries IDr: the identity home wants to reach.)
        (id_payload,) = [p for p in payloads if isinstance(p, wire.IdPayload) and p.kind == kind]
        (auth,) = [p for p in payloads if isinstance(p, wire.AuthPayload)]
        assert (id_payload.id_type, id_payload.data) == (IdType.ID_FQDN, ident.encode())
        octets = crypto.auth_octets(init_raw, peer_nonce, prf_alg, sk_p, id_payload.body())
        assert octets == logged_octets[id_payload.body()], f"{ident}: AUTH octets differ"
        assert auth.method == case.auth_method
        crypto.verify_auth(AuthMethod(auth.method), key, octets, auth.data)
        with pytest.raises(crypto.AuthenticationError):  # proves the check can fail
            crypto.verify_auth(AuthMethod(auth.method), wrong_key, octets, auth.data)

    # CHILD_SA keys (RFC 7296 2.17): prf+(SK_d, Ni | Nr), no PFS in IKE_AUTH.
    child_req = next(
        p for p in inner[ExchangeType.IKE_AUTH, False] if isinstance(p, wire.SaPayload)
    )
    child_resp = next(
        p for p in inner[ExchangeType.IKE_AUTH, True] if isinstance(p, wire.SaPayload)
    )
    (child_chosen,) = child_resp.proposals
    assert child_chosen.protocol == ProtocolId.ESP
    ctr = _transforms(child_chosen)
    c_encr = EncrId(ctr[TransformType.ENCR].id)
    c_bits = ctr[TransformType.ENCR].key_length
    c_integ = IntegId(ctr[TransformType.INTEG].id) if TransformType.INTEG in ctr else IntegId.NONE
    checked.child_suite = f"{c_encr.name}-{c_bits} {c_integ.name}"
    child_keys = crypto.derive_child_keys(prf_alg, keys.sk_d, ni, nr, c_encr, c_bits, c_integ)
    (charon_child,) = logged["children"]
    assert charon_child["seed"] == ni + nr
    assert child_keys.ei == charon_child["encr_i"] and child_keys.er == charon_child["encr_r"]
    assert child_keys.ai == charon_child.get("integ_i", b"")
    assert child_keys.ar == charon_child.get("integ_r", b"")
    # Initiator's proposal SPI is its inbound SPI; the responder's, the responder's.
    assert child_req.proposals[0].spi == charon_child["spi_in"]
    assert child_chosen.spi == charon_child["spi_out"]
    return checked


# --- the real run (root) ----------------------------------------------------------------


def _read_public(charon: Charon) -> bytes:
    return (charon.swanctl_dir / "pubkey" / "local.pem").read_bytes()


@pytest.mark.netns
@pytest.mark.interop
@pytest.mark.slow
@requires_root
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_charon_to_charon(case: Case, two_hosts: TwoHosts, tmp_path: Path) -> None:
    require_binary(CHARON_BIN, DEBIAN_PACKAGES)
    require_binary("swanctl", "strongswan-swanctl")
    require_binary("tcpdump", "tcpdump")
    _pyike()  # skip before spending seconds on charon if pyike cannot check anything
    home, vm = two_hosts
    # libipsec installs a route to the remote inner address with the local inner one
    # as source, and refuses the CHILD_SA if that address is not on the host.
    home.run(["ip", "addr", "add", f"{HOME_INNER}/128", "dev", "lo"])
    vm.run(["ip", "addr", "add", f"{VM_INNER}/128", "dev", "lo"])
    home_private, home_public = ecdsa_p384_keypair()
    vm_private, vm_public = ecdsa_p384_keypair()
    common = dict(
        ike_proposals=case.ike_proposals,
        esp_proposals=case.esp_proposals,
        encap=True,
        rfc7427=case.rfc7427,
    )
    home_charon = Charon(
        home,
        tmp_path / "home",
        "home",
        HOME_ADDR,
        VM_ADDR,
        HOME_ID,
        VM_ID,
        home_private,
        vm_public,
        local_ts=f"{HOME_INNER}/128",
        remote_ts=f"{VM_INNER}/128",
        **common,
    )
    vm_charon = Charon(
        vm,
        tmp_path / "vm",
        "vm",
        VM_ADDR,
        HOME_ADDR,
        VM_ID,
        HOME_ID,
        vm_private,
        home_public,
        local_ts=f"{VM_INNER}/128",
        remote_ts=f"{HOME_INNER}/128",
        **common,
    )
    pcap_path = tmp_path / "charon.pcap"
    started = time.monotonic()
    # Exits run in reverse: home stops first (the VM answers its DELETE), then the
    # VM, then tcpdump, so the capture holds the whole life of the IKE SA.
    with (
        capture(vm, two_hosts.link.if_b, pcap_path, "udp port 500 or udp port 4500"),
        vm_charon,
        home_charon,
    ):
        vm_charon.load()
        home_charon.load()
        home_charon.initiate(timeout=TIMEOUT_S)
        sa = home_charon.wait_established(TIMEOUT_S)
        vm_charon.wait_established(TIMEOUT_S)
    elapsed = time.monotonic() - started
    assert elapsed < 4 * TIMEOUT_S

    checked = check_capture(
        pcap_path, home_charon.log_text(), vm_charon.log_text(), home_public, vm_public, case
    )
    # Cross-check with what charon reports over vici.
    assert (checked.spi_i.hex(), checked.spi_r.hex()) == (sa["initiator-spi"], sa["responder-spi"])
    assert checked.sk_payloads >= 2
    assert _read_public(home_charon) == home_public

    if os.environ.get(WRITE_SAMPLE_ENV) == "1":
        _write_sample(
            case,
            pcap_path,
            home_charon.log_text(),
            vm_charon.log_text(),
            home_public,
            vm_public,
            checked,
        )


# --- the kept sample (no root) ------------------------------------------------------------


def _keys_txt(case: Case, checked: Checked) -> str:
    c = checked.charon
    child = c["children"][0]
    lines = [
        "# strongSwan 5.9.8 charon <-> charon, captured by tests/test_charon_capture.py",
        f"# case {case.name}: proposals = {case.ike_proposals}; "
        f"esp_proposals = {case.esp_proposals}; signature_authentication = "
        f"{'yes' if case.rfc7427 else 'no'}",
        f"# initiator {HOME_ID} {HOME_ADDR}, responder {VM_ID} {VM_ADDR}, encap = yes",
        f"# IKE SA: {checked.suite}; CHILD_SA: {checked.child_suite}",
        "# SPIs and nonces from the capture; everything else as charon logged it",
        "# (ike = 4, chd = 4; see charon-*.log). Empty value = not used (AEAD).",
        f"spi_i = {checked.spi_i.hex()}",
        f"spi_r = {checked.spi_r.hex()}",
        f"ni = {checked.ni.hex()}",
        f"nr = {checked.nr.hex()}",
        f"dh_secret = {c['dh_secret'].hex()}",
    ]
    for name in ("skeyseed", "sk_d", "sk_ai", "sk_ar", "sk_ei", "sk_er", "sk_pi", "sk_pr"):
        lines.append(f"{name} = {c.get(name, b'').hex()}")
    lines += [
        f"child_spi_i = {child['spi_in'].hex()}",
        f"child_spi_r = {child['spi_out'].hex()}",
    ]
    for name in ("encr_i", "integ_i", "encr_r", "integ_r"):
        lines.append(f"child_{name} = {child.get(name, b'').hex()}")
    return "\n".join(lines) + "\n"


def read_keys_txt(path: Path) -> dict[str, bytes]:
    """``name = hex`` lines of a sample's keys.txt (comments start with #)."""
    values: dict[str, bytes] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = bytes.fromhex(value.strip())
    return values


def _write_sample(
    case: Case,
    pcap_path: Path,
    home_log: str,
    vm_log: str,
    home_public: bytes,
    vm_public: bytes,
    checked: Checked,
) -> None:
    out = SAMPLE_DIR / case.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "ike.pcap").write_bytes(pcap_path.read_bytes())
    (out / "charon-home.log").write_text(key_log_excerpt(home_log))
    (out / "charon-vm.log").write_text(key_log_excerpt(vm_log))
    (out / "home.pub.pem").write_bytes(home_public)
    (out / "vm.pub.pem").write_bytes(vm_public)
    (out / "keys.txt").write_text(_keys_txt(case, checked))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_sample_capture(case: Case) -> None:
    sample = SAMPLE_DIR / case.name
    assert (sample / "ike.pcap").is_file(), (
        f"{sample} is missing: run `{WRITE_SAMPLE_ENV}=1 pytest {__file__}` as root"
    )
    checked = check_capture(
        sample / "ike.pcap",
        (sample / "charon-home.log").read_text(),
        (sample / "charon-vm.log").read_text(),
        (sample / "home.pub.pem").read_bytes(),
        (sample / "vm.pub.pem").read_bytes(),
        case,
    )
    # keys.txt (for humans, unit tests and `pyike decode`) agrees with the capture
    # and with charon's log lines.
    keys = read_keys_txt(sample / "keys.txt")
    assert (keys["spi_i"], keys["spi_r"]) == (checked.spi_i, checked.spi_r)
    assert (keys["ni"], keys["nr"]) == (checked.ni, checked.nr)
    for name in ("dh_secret", "skeyseed", "sk_d", "sk_ei", "sk_er", "sk_pi", "sk_pr"):
        assert keys[name] == checked.charon[name], name
    child = checked.charon["children"][0]
    assert keys["child_encr_i"] == child["encr_i"]
    assert keys["child_encr_r"] == child["encr_r"]
    assert checked.sk_payloads >= 2


@pytest.mark.netns
@pytest.mark.interop
@requires_root
def test_charon_without_libipsec_does_ike_only(two_hosts: TwoHosts, tmp_path: Path) -> None:
    """The IKE-only variant (no kernel-libipsec) loads and establishes the IKE SA.

    This kernel has no ESP, so its CHILD_SA cannot be installed: the responder
    refuses it, and the IKE SA stays up (interop facts: no kernel data plane).
    """
    require_binary(CHARON_BIN, DEBIAN_PACKAGES)
    home, vm = two_hosts
    home_private, home_public = ecdsa_p384_keypair()
    vm_private, vm_public = ecdsa_p384_keypair()
    home_charon = Charon(
        home,
        tmp_path / "home",
        "home",
        HOME_ADDR,
        VM_ADDR,
        HOME_ID,
        VM_ID,
        home_private,
        vm_public,
        libipsec=False,
    )
    vm_charon = Charon(
        vm,
        tmp_path / "vm",
        "vm",
        VM_ADDR,
        HOME_ADDR,
        VM_ID,
        HOME_ID,
        vm_private,
        home_public,
        libipsec=False,
    )
    with vm_charon, home_charon:
        vm_charon.load()
        home_charon.load()
        output = home_charon.initiate(timeout=TIMEOUT_S, check=False)
        sa = home_charon.wait_established(TIMEOUT_S, child=False)
    assert "kernel-libipsec" not in (tmp_path / "home" / "strongswan.conf").read_text()
    assert sa["state"] == "ESTABLISHED" and sa["child-sas"] == {}
    assert "failed to establish CHILD_SA" in output
    (keyset,) = parse_charon_keys(home_charon.log_text())
    assert keyset["children"] == [] and len(keyset["sk_d"]) > 0
