"""The OpenIKED harness: PF_KEY shim, userspace PF_KEY stand-in, and real iked runs.

Without root (gcc only):

- the stand-in answers hand-built RFC 2367 messages the way Linux af_key does
  (GETSPI in range, UPDATE/ADD/GET/DELETE errnos, soft/hard SADB_EXPIRE layout)
  and records the keys it was given;
- the preloaded shim turns ``socket(PF_KEY, SOCK_RAW, PF_KEY_V2)`` into a
  connection to the stand-in and makes ``IP_IPSEC_POLICY``/``IPV6_IPSEC_POLICY``
  succeed (a Python child opens the socket through libc, as iked does).

As root, with Debian's openiked (iked 7.2) in network namespaces:

- (a) iked starts under the shim and stays up, registered with PF_KEY, on UDP 500;
- (b) iked <-> iked (home 192.0.2.1 ``carinho.lan`` active, VM 192.0.2.2
  ``namorar.example.com`` passive, ECDSA P-384 raw keys, the guide's "smtp"
  policy): both stand-ins get the same Child SAs (home's outbound = VM's inbound,
  same SPI and keys, and the reverse) and the mirrored flows;
- (c) a soft SADB_EXPIRE from the stand-in makes iked rekey the Child SA
  (CREATE_CHILD_SA with REKEY_SA), new SAs on both sides, old ones deleted;
- a hard SADB_EXPIRE makes iked delete the Child SA on both sides;
- with ``iked -t`` (``natt=True``) IKE runs on 4500 and the SAs carry NAT-T ports;
- the stand-in's own timers expire SAs at the lifetime iked set (slow: ~10 s).

Test (a) and the shim test use a stand-in that answers 20-100 ms late: they fail
unless the shim stretches iked's 1 ms PF_KEY reply timeout.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from interop.iked import (
    DEBIAN_PACKAGES,
    IKED_BIN,
    STANDIN_SCRIPT,
    Iked,
    IkedError,
    build_shim,
    iked_keypair,
)
from tests.netns import TwoHosts, require_binary, requires_root, wait_until

HOME_ADDR, VM_ADDR = "192.0.2.1", "192.0.2.2"  # two_hosts' outer addresses
HOME_ID, VM_ID = "carinho.lan", "namorar.example.com"
HOME_INNER, VM_INNER = "2001:db8:c1da::1", "2001:db8:c1da::2"

# The guide's policy pair (conf/home-iked.conf's "smtp-in", and its passive mirror).
HOME_CONF = f"""\
ikev2 "smtp" active esp proto tcp \\
	from {HOME_INNER} port 25 to {VM_INNER} \\
	peer {VM_ADDR} \\
	srcid {HOME_ID} dstid {VM_ID} \\
	{{lifetime}}ecdsa384
"""
VM_CONF = f"""\
ikev2 "smtp" passive esp proto tcp \\
	from {VM_INNER} to {HOME_INNER} port 25 \\
	peer {HOME_ADDR} \\
	srcid {VM_ID} dstid {HOME_ID} \\
	ecdsa384
"""

# --- RFC 2367 messages built by hand (independently of the stand-in's code) ---------
# Linux numbering (<linux/pfkeyv2.h>); all lengths in 64-bit words (RFC 2367 2.1).
SADB_GETSPI, SADB_UPDATE, SADB_ADD, SADB_DELETE, SADB_GET = 1, 2, 3, 4, 5
SADB_REGISTER, SADB_EXPIRE = 7, 8
SATYPE_ESP = 3
EXT_SA, EXT_LT_CURRENT, EXT_LT_HARD, EXT_LT_SOFT = 1, 2, 3, 4
EXT_SRC, EXT_DST, EXT_KEY_AUTH, EXT_KEY_ENC = 5, 6, 8, 9
EXT_SUPPORTED_AUTH, EXT_SUPPORTED_ENC, EXT_SPIRANGE = 14, 15, 16
AALG_SHA2_384, EALG_AESCBC = 6, 12
PID = 4242


def _msg(mtype: int, seq: int, *exts: bytes) -> bytes:
    body = b"".join(exts)
    return struct.pack("=BBBBHHII", 2, mtype, 0, SATYPE_ESP, 2 + len(body) // 8, 0, seq, PID) + body


def _addr(exttype: int, ip: str) -> bytes:
    sin = struct.pack("=H", socket.AF_INET) + bytes(2) + socket.inet_aton(ip) + bytes(8)
    return struct.pack("=HHBBH", 3, exttype, 0, 32, 0) + sin


def _sa(spi: int, auth: int = 0, enc: int = 0) -> bytes:
    return struct.pack("=HHIBBBBI", 2, EXT_SA, socket.htonl(spi), 64, 1, auth, enc, 0)


def _key(exttype: int, key: bytes) -> bytes:
    padded = key + bytes(-len(key) % 8)
    return struct.pack("=HHHH", 1 + len(padded) // 8, exttype, len(key) * 8, 0) + padded


def _lifetime(exttype: int, nbytes: int, addtime: int) -> bytes:
    return struct.pack("=HHIQQQ", 4, exttype, 0, nbytes, addtime, 0)


def _exts(data: bytes) -> dict[int, bytes]:
    """Reply extensions by type (first of each), after checking the header length."""
    assert struct.unpack_from("=H", data, 4)[0] * 8 == len(data)
    out: dict[int, bytes] = {}
    pos = 16
    while pos < len(data):
        length, etype = struct.unpack_from("=HH", data, pos)
        assert length > 0
        out.setdefault(etype, data[pos : pos + length * 8])
        pos += length * 8
    return out


def _header(data: bytes) -> tuple[int, int, int, int, int, int]:
    version, mtype, err, satype, _len, _res, seq, pid = struct.unpack_from("=BBBBHHII", data)
    return version, mtype, err, satype, seq, pid


@contextlib.contextmanager
def _standin(tmp_path: Path, *extra: str) -> Iterator[tuple[Path, Path, Path]]:
    """The stand-in as a plain child process (no namespace); stopped by PID."""
    sock, ctl, log = tmp_path / "pf.sock", tmp_path / "ctl.sock", tmp_path / "rec.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(STANDIN_SCRIPT),
            "--sock",
            str(sock),
            "--ctl",
            str(ctl),
            "--log",
            str(log),
            *extra,
        ],
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: sock.exists() and ctl.exists(), 10, what="stand-in sockets")
        yield sock, ctl, log
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _ctl(ctl: Path, cmd: dict[str, Any]) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(5)
        s.connect(str(ctl))
        s.send(json.dumps(cmd).encode())
        answer = json.loads(s.recv(1 << 20))
    assert isinstance(answer, dict)
    return answer


def _records(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_standin_answers_like_af_key(tmp_path: Path) -> None:
    """GETSPI/UPDATE/ADD/GET/DELETE and SADB_EXPIRE per RFC 2367 sections 2.3-3.1."""
    enc_key, auth_key = os.urandom(32), os.urandom(48)
    with (
        _standin(tmp_path, "--no-auto-expire") as (sock, ctl, log),
        socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as pf,
    ):
        pf.settimeout(5)
        pf.connect(str(sock))
        # REGISTER (3.1.2): the reply lists supported algorithms; we get EXPIREs after.
        pf.send(_msg(SADB_REGISTER, 1))
        reply = pf.recv(4096)
        assert _header(reply) == (2, SADB_REGISTER, 0, SATYPE_ESP, 1, PID)
        assert {EXT_SUPPORTED_AUTH, EXT_SUPPORTED_ENC} <= set(_exts(reply))

        # GETSPI (3.1.1) allocates an SPI inside the requested range.
        spirange = struct.pack("=HHIII", 2, EXT_SPIRANGE, 0x1000, 0x10FF, 0)
        pf.send(_msg(SADB_GETSPI, 2, spirange, _addr(EXT_SRC, VM_ADDR), _addr(EXT_DST, HOME_ADDR)))
        reply = pf.recv(4096)
        assert _header(reply) == (2, SADB_GETSPI, 0, SATYPE_ESP, 2, PID)
        spi = socket.ntohl(struct.unpack_from("=I", _exts(reply)[EXT_SA], 4)[0])
        assert 0x1000 <= spi <= 0x10FF

        # UPDATE (3.1.2) fills the larval SA; its reply carries no keys.
        update = [
            _sa(spi, AALG_SHA2_384, EALG_AESCBC),
            _lifetime(EXT_LT_SOFT, 900, 90),
            _lifetime(EXT_LT_HARD, 1000, 100),
            _addr(EXT_SRC, VM_ADDR),
            _addr(EXT_DST, HOME_ADDR),
            _key(EXT_KEY_ENC, enc_key),
            _key(EXT_KEY_AUTH, auth_key),
        ]
        pf.send(_msg(SADB_UPDATE, 3, *update))
        reply = pf.recv(4096)
        assert _header(reply)[:3] == (2, SADB_UPDATE, 0)
        assert not {EXT_KEY_AUTH, EXT_KEY_ENC} & set(_exts(reply))
        # UPDATE of an unknown SA is ESRCH; ADD of an existing one EEXIST.
        pf.send(_msg(SADB_UPDATE, 4, _sa(spi + 0x200), *update[1:]))
        assert _header(pf.recv(4096))[2] == errno.ESRCH
        pf.send(_msg(SADB_ADD, 5, *update))
        assert _header(pf.recv(4096))[2] == errno.EEXIST
        pf.send(_msg(SADB_GET, 6, _sa(spi), _addr(EXT_SRC, VM_ADDR), _addr(EXT_DST, HOME_ADDR)))
        assert _header(pf.recv(4096))[2] == 0

        # Soft expire: seq 0, pid 0, SA + SOFT (no HARD) + CURRENT, the SA stays.
        assert _ctl(ctl, {"cmd": "expire", "spi": spi, "hard": False})["ok"]
        expire = pf.recv(4096)
        assert _header(expire) == (2, SADB_EXPIRE, 0, SATYPE_ESP, 0, 0)
        exts = _exts(expire)
        assert {EXT_SA, EXT_LT_SOFT, EXT_LT_CURRENT, EXT_SRC, EXT_DST} <= set(exts)
        assert EXT_LT_HARD not in exts
        assert struct.unpack_from("=Q", exts[EXT_LT_SOFT], 16)[0] == 90  # addtime
        # Hard expire: HARD and no SOFT (iked looks for SOFT first), and the SA is gone.
        assert _ctl(ctl, {"cmd": "expire", "spi": spi, "hard": True})["ok"]
        exts = _exts(pf.recv(4096))
        assert EXT_LT_HARD in exts and EXT_LT_SOFT not in exts
        pf.send(_msg(SADB_DELETE, 7, _sa(spi), _addr(EXT_SRC, VM_ADDR), _addr(EXT_DST, HOME_ADDR)))
        assert _header(pf.recv(4096))[2] == errno.ESRCH

        # Garbage is recorded, not answered, and does not kill the stand-in.
        pf.send(b"\x01" * 16)
        assert _ctl(ctl, {"cmd": "ping"})["ok"]

    recs = _records(log)
    updates = [r for r in recs if r.get("type") == "SADB_UPDATE" and r["errno"] == 0]
    assert len(updates) == 1
    assert updates[0]["spi"] == spi
    assert (updates[0]["src"], updates[0]["dst"]) == (VM_ADDR, HOME_ADDR)
    assert updates[0]["enc_key"] == enc_key.hex() and updates[0]["auth_key"] == auth_key.hex()
    assert (updates[0]["enc_alg"], updates[0]["auth_alg"]) == ("aes-cbc", "hmac-sha2-384")
    assert updates[0]["lifetime_hard"]["bytes"] == 1000
    assert [r["hard"] for r in recs if r.get("type") == "SADB_EXPIRE"] == [False, True]
    assert any("error" in r for r in recs)


# The child opens the sockets through libc, as iked does; it prints what it saw.
# iked's parent opens the PF_KEY socket and passes it to its ikev2 process (imsg,
# SCM_RIGHTS), which then waits 1 ms for each reply: so the child moves the socket
# to a new descriptor the same way before polling it with iked's 1 ms timeout.
_SHIM_CHILD = r"""
import json, select, socket, struct, time
out = {}
first = socket.socket(15, socket.SOCK_RAW, 2)      # PF_KEY, PF_KEY_V2
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
socket.send_fds(a, [b"x"], [first.fileno()])
fd = socket.recv_fds(b, 1, 1)[1][0]
first.close()
s = socket.socket(fileno=fd)
s.send(struct.pack("=BBBBHHII", 2, 7, 0, 3, 2, 0, 77, 4242))  # SADB_REGISTER ESP
p = select.poll()
p.register(s, select.POLLIN)
t = time.monotonic()
out["ready"] = bool(p.poll(1))                     # iked's PFKEY_REPLY_TIMEOUT / 1000
out["waited"] = time.monotonic() - t
out["reply"] = s.recv(4096).hex() if out["ready"] else ""
p = select.poll()
p.register(a, select.POLLIN)                       # any other socket: untouched
t = time.monotonic()
out["other_ready"] = bool(p.poll(1))
out["other_waited"] = time.monotonic() - t
u4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u4.setsockopt(socket.IPPROTO_IP, 16, bytes(16))    # IP_IPSEC_POLICY
u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
u6.setsockopt(socket.IPPROTO_IPV6, 34, bytes(16))  # IPV6_IPSEC_POLICY
out["bypass"] = "ok"
print(json.dumps(out))
"""


def test_shim_redirects_pf_key_and_fakes_bypass(tmp_path: Path) -> None:
    """socket(PF_KEY) reaches the stand-in; a 1 ms poll on it (even on a descriptor
    received from another process) waits for a 100 ms-slow reply; bypass succeeds."""
    require_binary("gcc", "gcc libc6-dev")
    shim = build_shim()
    with _standin(tmp_path, "--delay-ms", "100") as (sock, _ctl_path, log):
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LD_PRELOAD": str(shim),
            "PYIKE_PFKEY_SOCK": str(sock),
            "PYIKE_PFKEY_REPLY_MS": "5000",
        }
        proc = subprocess.run(
            [sys.executable, "-c", _SHIM_CHILD],
            env=env,
            timeout=30,
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert "PF_KEY socket redirected" in proc.stderr
    assert out["ready"] and out["waited"] >= 0.09
    assert _header(bytes.fromhex(out["reply"])) == (2, SADB_REGISTER, 0, SATYPE_ESP, 77, 4242)
    assert not out["other_ready"] and out["other_waited"] < 0.09
    assert out["bypass"] == "ok"
    assert [r["type"] for r in _records(log) if r.get("dir") == "from_iked"] == ["SADB_REGISTER"]


# --- real iked ------------------------------------------------------------------------


def _require_iked() -> None:
    require_binary(IKED_BIN, DEBIAN_PACKAGES)
    require_binary("gcc", "gcc libc6-dev")
    require_binary("unshare", "util-linux")


@contextlib.contextmanager
def _iked_pair(
    two_hosts: TwoHosts,
    tmp_path: Path,
    home_lifetime: str = "",
    auto_expire: bool = False,
    natt: bool = False,
) -> Iterator[tuple[Iked, Iked]]:
    """VM (passive) then home (active) iked, each with the other's public key."""
    home_key, home_pub = iked_keypair()
    vm_key, vm_pub = iked_keypair()
    vm = Iked(
        two_hosts.vm,
        tmp_path / "vm",
        "vm",
        VM_CONF,
        vm_key,
        {HOME_ID: home_pub},
        auto_expire=auto_expire,
        natt=natt,
    )
    home = Iked(
        two_hosts.home,
        tmp_path / "home",
        "home",
        HOME_CONF.format(lifetime=home_lifetime),
        home_key,
        {VM_ID: vm_pub},
        auto_expire=auto_expire,
        natt=natt,
    )
    with vm, home:
        yield home, vm


def _child_sas(home: Iked, vm: Iked, timeout: float = 20.0) -> tuple[dict[str, Any], ...]:
    """The first Child SA pair: (home out, home in, vm out, vm in)."""
    home_out = home.wait_for_sa(lambda sa: sa["type"] == "SADB_ADD", timeout)
    home_in = home.wait_for_sa(lambda sa: sa["type"] == "SADB_UPDATE", timeout)
    vm_out = vm.wait_for_sa(lambda sa: sa["type"] == "SADB_ADD", timeout)
    vm_in = vm.wait_for_sa(lambda sa: sa["type"] == "SADB_UPDATE", timeout)
    return home_out, home_in, vm_out, vm_in


def _same_sa(out_sa: dict[str, Any], in_sa: dict[str, Any]) -> None:
    """One direction as seen by its sender (ADD) and its receiver (UPDATE)."""
    for k in ("spi", "src", "dst", "enc_alg", "enc_key", "auth_alg", "auth_key", "mode"):
        assert out_sa[k] == in_sa[k], k


@requires_root
@pytest.mark.netns
@pytest.mark.interop
def test_iked_starts_under_shim(two_hosts: TwoHosts, tmp_path: Path) -> None:
    """(a) up, registered with PF_KEY, listening on UDP 500, no PF_KEY/bypass errors;
    with a "kernel" 20 times slower than iked's 1 ms reply timeout."""
    _require_iked()
    key, _pub = iked_keypair()
    with Iked(two_hosts.vm, tmp_path / "vm", "vm", VM_CONF, key, {}, standin_delay_ms=20) as vm:
        time.sleep(1.0)  # stays up: a late fatal() would show here
        assert vm.running()
        assert 500 in vm.listening_udp_ports()
        log = vm.log_text()
        assert "pfkey_shim: PF_KEY socket redirected" in log
        for bad in (
            "pfkey_socket: failed",
            "failed to bypass IPsec",
            "no reply from PF_KEY",
            "fatal",
        ):
            assert bad not in log
        assert [r["type"] for r in vm.events()][:3] == [
            "SADB_FLUSH",
            "SADB_REGISTER",
            "SADB_REGISTER",
        ]
        assert "iked_sas" not in vm.ikectl("show", "sa")  # control socket answers
        assert vm.installed_sas() == []


@requires_root
@pytest.mark.netns
@pytest.mark.interop
def test_iked_to_iked(two_hosts: TwoHosts, tmp_path: Path) -> None:
    """(b) the guide's policy between two ikeds; SAs and flows as iked installs them."""
    _require_iked()
    t0 = time.monotonic()
    with _iked_pair(two_hosts, tmp_path) as (home, vm):
        home_out, home_in, vm_out, vm_in = _child_sas(home, vm)
        established = home.wait_established(), vm.wait_established()
        elapsed = time.monotonic() - t0
        home_flows, vm_flows = home.flows(), vm.flows()
        home_getspi = home.events("SADB_GETSPI")
        vm_getspi = vm.events("SADB_GETSPI")
    print(f"iked <-> iked established in {elapsed:.1f}s")
    assert [m.group("peer", "policy", "role") for m in established] == [
        (f"{VM_ADDR}:500", "smtp", "initiator"),
        (f"{HOME_ADDR}:500", "smtp", "responder"),
    ]

    # Home's outbound SA is the VM's inbound one, and the reverse (same SPI, keys).
    assert (home_out["src"], home_out["dst"]) == (HOME_ADDR, VM_ADDR)
    assert (home_in["src"], home_in["dst"]) == (VM_ADDR, HOME_ADDR)
    _same_sa(home_out, vm_in)
    _same_sa(vm_out, home_in)
    # Each inbound SPI is the one that side's own "kernel" handed out (GETSPI).
    assert home_in["spi"] == home_getspi[0]["spi"] and vm_in["spi"] == vm_getspi[0]["spi"]
    assert home_out["spi"] != home_in["spi"]
    for sa in (home_out, home_in):
        assert sa["mode"] == "tunnel"
        assert len(sa["enc_key"]) // 2 * 8 in (128, 192, 256)  # AES-CBC key sizes
        assert (
            len(sa["auth_key"]) // 2
            == {"hmac-sha2-384": 48, "hmac-sha2-512": 64, "hmac-sha1": 20}[sa["auth_alg"]]
        )
        assert 0 < sa["lifetime_soft"]["addtime"] < sa["lifetime_hard"]["addtime"]
    assert home_out["enc_key"] != vm_out["enc_key"]

    # Flows: home sends from ::1 port 25 to ::2 over 192.0.2.1 -> 192.0.2.2.
    out = [f for f in home_flows if f["policy_dir"] == "out"]
    assert len(out) == 1
    assert (out[0]["src"], out[0]["src_port"], out[0]["dst"], out[0]["proto"]) == (
        HOME_INNER,
        25,
        VM_INNER,
        socket.IPPROTO_TCP,
    )
    assert out[0]["requests"] == [
        {
            "proto": "esp",
            "mode": "tunnel",
            "level": "require",
            "reqid": 0,
            "tunnel_src": HOME_ADDR,
            "tunnel_dst": VM_ADDR,
        }
    ]
    vm_in_flow = [f for f in vm_flows if f["policy_dir"] == "in"]
    assert len(vm_in_flow) == 1
    assert (vm_in_flow[0]["src"], vm_in_flow[0]["src_port"], vm_in_flow[0]["dst"]) == (
        HOME_INNER,
        25,
        VM_INNER,
    )
    assert elapsed < 20


@requires_root
@pytest.mark.netns
@pytest.mark.interop
def test_soft_expire_rekeys_child_sa(two_hosts: TwoHosts, tmp_path: Path) -> None:
    """(c) SADB_EXPIRE(soft) -> CREATE_CHILD_SA(REKEY_SA) -> new SAs, old deleted."""
    _require_iked()
    with _iked_pair(two_hosts, tmp_path) as (home, vm):
        home_out, home_in, _vm_out, _vm_in = _child_sas(home, vm)
        home.expire(home_in["spi"])  # soft: "pending rekeying"
        new_in = home.wait_for_sa(
            lambda sa: sa["type"] == "SADB_UPDATE" and sa["spi"] != home_in["spi"]
        )
        new_out = home.wait_for_sa(
            lambda sa: sa["type"] == "SADB_ADD" and sa["spi"] != home_out["spi"]
        )
        vm_new_in = vm.wait_for_sa(
            lambda sa: sa["type"] == "SADB_UPDATE" and sa["spi"] == new_out["spi"]
        )
        vm_new_out = vm.wait_for_sa(
            lambda sa: sa["type"] == "SADB_ADD" and sa["spi"] == new_in["spi"]
        )
        old = {home_in["spi"], home_out["spi"]}
        for side in (home, vm):  # both delete the old pair from their "kernel"
            side.wait_for(
                lambda side=side: old <= {r["spi"] for r in side.deleted_sas()},
                20,
                "SADB_DELETE of the old SPIs",
            )
        current = {sa["spi"] for sa in home.current_sas()}
        home_log, vm_log = home.log_text(), vm.log_text()
    _same_sa(new_out, vm_new_in)
    _same_sa(vm_new_out, new_in)
    assert new_out["enc_key"] != home_out["enc_key"]
    assert current == {new_in["spi"], new_out["spi"]}
    assert f"SA {home_in['spi']:#010x} is expired, pending rekeying" in home_log
    assert "send CREATE_CHILD_SA req" in home_log
    assert "recv CREATE_CHILD_SA req" in vm_log and "type REKEY_SA" in vm_log


@requires_root
@pytest.mark.netns
@pytest.mark.interop
def test_hard_expire_deletes_child_sa(two_hosts: TwoHosts, tmp_path: Path) -> None:
    """SADB_EXPIRE(hard): iked drops the Child SA and the peer deletes its side."""
    _require_iked()
    with _iked_pair(two_hosts, tmp_path) as (home, vm):
        home_out, home_in, _vm_out, _vm_in = _child_sas(home, vm)
        home.expire(home_in["spi"], hard=True)
        home.wait_for_log(f"SA {home_in['spi']:#010x} is expired, pending deletion")
        spis = {home_in["spi"], home_out["spi"]}
        vm.wait_for(
            lambda: spis <= {r["spi"] for r in vm.deleted_sas()}, 20, "the VM deleting the Child SA"
        )
        assert home_out["spi"] in {r["spi"] for r in home.deleted_sas()}
        assert not {sa["spi"] for sa in vm.current_sas()} & spis


@requires_root
@pytest.mark.netns
@pytest.mark.interop
@pytest.mark.slow
def test_standin_expires_at_iked_lifetime(two_hosts: TwoHosts, tmp_path: Path) -> None:
    """With ``lifetime 10`` iked sets hard 10 s and soft 85-95% of it (per SA, with
    jitter); the stand-in's timer fires the first soft expiry and iked rekeys."""
    _require_iked()
    with _iked_pair(two_hosts, tmp_path, home_lifetime="lifetime 10 ", auto_expire=True) as (
        home,
        vm,
    ):
        home_out, home_in, _vm_out, _vm_in = _child_sas(home, vm)
        sas = {sa["spi"]: sa for sa in (home_out, home_in)}
        for sa in sas.values():
            assert sa["lifetime_hard"]["addtime"] == 10
            assert 8 <= sa["lifetime_soft"]["addtime"] <= 9
        new = home.wait_for_sa(
            lambda sa: sa["type"] == "SADB_UPDATE" and sa["spi"] != home_in["spi"], timeout=20
        )
        expires = [r for r in home.records() if r.get("type") == "SADB_EXPIRE"]
    first = expires[0]
    assert first["spi"] in sas and first["why"] == "lifetime" and not first["hard"]
    expired = sas[first["spi"]]
    soft = expired["lifetime_soft"]["addtime"]
    assert soft - 0.5 <= first["time"] - expired["time"] <= soft + 1.5
    assert new["time"] >= first["time"]


@requires_root
@pytest.mark.netns
@pytest.mark.interop
def test_iked_natt_installs_udp_encapsulated_sas(two_hosts: TwoHosts, tmp_path: Path) -> None:
    """``natt=True`` (iked -t): IKE on 4500 only, SAs carry the NAT-T extensions."""
    _require_iked()
    with _iked_pair(two_hosts, tmp_path, natt=True) as (home, vm):
        assert 4500 in home.listening_udp_ports()
        home_out, home_in, vm_out, vm_in = _child_sas(home, vm)
        assert home.wait_established().group("peer") == f"{VM_ADDR}:4500"
    _same_sa(home_out, vm_in)
    _same_sa(vm_out, home_in)
    for sa in (home_out, home_in, vm_out, vm_in):
        # UDP_ENCAP_ESPINUDP (RFC 3948), 4500 at both ends
        assert sa["natt"] == {"type": 2, "sport": 4500, "dport": 4500}


def test_iked_rejects_overlong_socket_path(tmp_path: Path) -> None:
    with pytest.raises(IkedError, match="too long"):
        Iked(None, tmp_path / ("x" * 120), "x", "", b"")  # type: ignore[arg-type]
