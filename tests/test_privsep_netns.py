"""Privilege separation, with real processes in namespaces.

- Hostile requests: a real privileged parent (tests/privsep_parent.py, the
  pyike.privsep.parent code) in a namespace, its socketpair's other end in this
  test: malformed and out-of-policy messages are refused and logged, and the
  namespace shows that none of them was executed; valid ones are.
- The daemon: pyike <-> pyike and pyike <-> charon tunnels where the process
  that owns UDP 500/4500 and the TUN device is an unprivileged user with no
  capabilities (read from /proc/PID/status), while the tunnel carries traffic,
  rekeys, recovers after an address change (the TUN routes re-asserted through
  the parent), and a reload adds a route through the parent.
- Without root, or with an unknown --user, pyike says so in one line.
"""

from __future__ import annotations

import array
import json
import os
import pwd
import random
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from pyike import keys
from pyike.privsep import requests as rq
from pyike.privsep.drop import read_status
from pyike.registry import IdType
from tests.netns import Netns, TwoHosts, ping, requires_root, wait_until
from tests.pyike_proc import REPO, PyikeProc, charon_vm, write_keydir

pytestmark = [pytest.mark.netns, requires_root]

VPN0 = "2001:db8:c1da::1"
VPN1 = "2001:db8:c1da::2"
USER = "_pyike"


@pytest.fixture(scope="module")
def system_user() -> str:
    """The dedicated user of the README (created once, as the README does)."""
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
            check=True,
            capture_output=True,
        )
    return USER


# ---------------------------------------------------------------------------
# Hostile requests to a real parent


@dataclass
class ParentProc:
    proc: subprocess.Popen
    sock: socket.socket
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ask(self, data: bytes, fds: list[int] | None = None) -> tuple[rq.Status, bytes, list[int]]:
        if fds:
            self.sock.sendmsg(
                [data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
            )
        else:
            self.sock.send(data)
        msg, got, _flags, _addr = socket.recv_fds(self.sock, rq.MAX_REPLY, 2)
        status, body = rq.parse_reply(msg)
        return status, body, got


@pytest.fixture
def parent(stale_netns_swept: None, tmp_path: Path) -> Iterator[tuple[Netns, ParentProc]]:
    peer = ec.generate_private_key(ec.SECP256R1())
    keydir = write_keydir(
        tmp_path / "keys",
        ec.generate_private_key(ec.SECP256R1()),
        {"peer.example": peer.public_key()},
    )
    conf = tmp_path / "iked.conf"
    conf.write_text(
        f'ikev2 "t" passive esp from {VPN0} to {VPN1} srcid me.example dstid peer.example\n'
    )
    conf.chmod(0o600)  # as iked, the parent refuses a config others can read
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with Netns("privsep") as ns:
        log_path = tmp_path / "parent.log"
        with log_path.open("wb") as log:
            args = [
                sys.executable, "-m", "tests.privsep_parent", "--fd", str(theirs.fileno()),
                "--address", VPN0, "--address", "192.0.2.1", "--route", f"{VPN1}/128",
                "--route", "198.51.100.0/24", "--port", "500", "--port", "4500",
                "--keydir", str(keydir), "--config", str(conf),
            ]  # fmt: skip
            proc = subprocess.Popen(
                ns.exec_args(args),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(REPO),
                pass_fds=[theirs.fileno()],
                start_new_session=True,
            )
        ns.processes.append(proc)
        theirs.close()
        ours.settimeout(10)
        pp = ParentProc(proc, ours, log_path)
        wait_until(lambda: "ready" in pp.log() or proc.poll() is not None, 15, what="the parent")
        assert proc.poll() is None, pp.log()
        try:
            yield ns, pp
        finally:
            ours.close()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                ns.stop(proc, grace=1)


def _addr_body(ifname: bytes, version: int, plen: int, raw: bytes) -> bytes:
    return ifname.ljust(16, b"\0") + bytes([version, plen]) + raw.ljust(16, b"\0")


def _msg(kind: int, body: bytes, version: int = rq.VERSION) -> bytes:
    return rq.HEADER.pack(version, kind, len(body)) + body


def _route(net: str, src: str | None = None, ifname: str = "pyike0") -> bytes:
    n = ip_network(net, strict=False)
    body = _addr_body(ifname.encode(), n.version, n.prefixlen, ip_address(net.split("/")[0]).packed)
    s = ip_address(src) if src else None
    body += bytes([s.version if s else 0]) + (s.packed if s else b"").ljust(16, b"\0")
    return _msg(rq.RequestType.ROUTE_ADD, body)


def _peer_key(id_type: int, ident: bytes, length: int | None = None) -> bytes:
    n = len(ident) if length is None else length
    return _msg(rq.RequestType.PEER_KEY, bytes([id_type, n]) + ident)


ADDR, PYIKE0 = rq.RequestType.ADDR_ADD, b"pyike0"
V4 = ip_address("192.0.2.1").packed
HOSTILE: dict[str, tuple[bytes, str]] = {
    # name: (message, a reason the parent's log must give)
    "empty": (b"", "shorter than a header"),
    "short": (b"\x01\x01", "shorter than a header"),
    "version": (_msg(ADDR, _addr_body(PYIKE0, 4, 32, V4), version=2), "version 2"),
    "unknown type": (_msg(99, b""), "unknown request type 99"),
    "length lies": (rq.HEADER.pack(1, ADDR, 200) + _addr_body(PYIKE0, 4, 32, V4), "header says"),
    "not our interface": (_msg(ADDR, _addr_body(b"eth0", 4, 32, V4)), "'eth0' is not ours"),
    "loopback interface": (_msg(ADDR, _addr_body(b"lo", 4, 32, V4)), "'lo' is not ours"),
    "name not padded": (
        _msg(ADDR, _addr_body(b"pyike0\0eth0", 4, 32, V4)),
        "interface name not NUL-padded",
    ),
    "foreign address": (
        _msg(ADDR, _addr_body(PYIKE0, 4, 32, ip_address("203.0.113.9").packed)),
        "203.0.113.9/32 is not a configured flow address",
    ),
    "wide prefix": (_msg(ADDR, _addr_body(PYIKE0, 4, 24, V4)), "192.0.2.1/24 is not a configured"),
    "prefix 200": (_msg(ADDR, _addr_body(PYIKE0, 4, 200, V4)), "prefix length 200"),
    "family 7": (_msg(ADDR, _addr_body(PYIKE0, 7, 32, V4)), "address family 7"),
    "v4 trailing bytes": (
        _msg(ADDR, _addr_body(PYIKE0, 4, 32, V4 + b"\x01")),
        "IPv4 address with trailing bytes",
    ),
    "default route": (_route("0.0.0.0/0"), "route 0.0.0.0/0 is not a configured remote flow"),
    "v6 default route": (_route("::/0"), "route ::/0 is not a configured remote flow"),
    "host bits": (_route("198.51.100.1/24"), "has host bits set"),
    "narrower route": (_route("198.51.100.0/25"), "198.51.100.0/25 is not a configured"),
    "foreign source": (_route(f"{VPN1}/128", "2001:db8::99"), "source 2001:db8::99 is not"),
    "route on eth0": (_route(f"{VPN1}/128", ifname="eth0"), "'eth0' is not ours"),
    "ssh port": (
        _msg(rq.RequestType.UDP_OPEN, bytes([4]) + (22).to_bytes(2, "big") + bytes(16)),
        "UDP port 22 is not one of ours",
    ),
    "multicast": (
        _msg(
            rq.RequestType.UDP_OPEN,
            bytes([4]) + (500).to_bytes(2, "big") + ip_address("224.0.0.1").packed.ljust(16, b"\0"),
        ),
        "224.0.0.1 cannot carry IKE",
    ),
    "key path traversal": (
        _peer_key(IdType.ID_FQDN, b"../../private/local.key"),
        "cannot name a key file",
    ),
    "key dotdot": (_peer_key(IdType.ID_FQDN, b".."), "cannot name a key file"),
    "key DN type": (_peer_key(IdType.ID_DER_ASN1_DN, b"CN=x"), "no raw public keys for ID type"),
    "key length lies": (_peer_key(IdType.ID_FQDN, b"peer.example", 40), "ID length 40"),
    "key not an address": (_peer_key(IdType.ID_IPV4_ADDR, b"peer"), "is not an address"),
    "key control chars": (_peer_key(IdType.ID_FQDN, b"a\nb"), "cannot name a key file"),
    "reload with body": (_msg(rq.RequestType.RELOAD, b"x"), "RELOAD with a 1-byte body"),
    "oversized": (_msg(rq.RequestType.RELOAD, bytes(4000)), "over the size limit"),
}


def _tun_state(ns: Netns) -> tuple[set[str], set[str]]:
    addrs = json.loads(ns.run(["ip", "-j", "addr", "show", "dev", "pyike0"]).stdout)
    have = {f"{a['local']}/{a['prefixlen']}" for link in addrs for a in link.get("addr_info", [])}
    routes = set()
    for fam in ("-4", "-6"):
        for r in json.loads(ns.run(["ip", "-j", fam, "route", "show", "table", "all"]).stdout):
            if r.get("dev") == "pyike0" and r.get("type", "unicast") == "unicast":
                routes.add(r["dst"])
    return have, routes


def test_parent_refuses_hostile_requests(parent: tuple[Netns, ParentProc]) -> None:
    ns, pp = parent
    before = _tun_state(ns)
    for name, (data, _reason) in HOSTILE.items():
        status, _body, fds = pp.ask(data)
        assert status == rq.Status.REFUSED and not fds, name
    # A well-formed, allowed request that carries a descriptor: refused too.
    valid = rq.encode_request(rq.AddressRequest(True, "pyike0", ip_address(VPN0), 128))
    r, w = os.pipe()
    try:
        assert pp.ask(valid, fds=[r])[0] == rq.Status.REFUSED
    finally:
        os.close(r), os.close(w)
    # Random garbage (bounded, seeded): every message refused, the parent unharmed.
    rng = random.Random(1)
    for _ in range(300):
        size = rng.choice((rng.randrange(0, 8), rng.randrange(8, 80), rng.randrange(80, 600)))
        blob = bytes(rng.randrange(256) for _ in range(size))
        if rng.random() < 0.5 and size >= 5:  # a plausible header over random fields
            blob = rq.HEADER.pack(1, rng.randrange(1, 8), size - 4) + blob[4:]
        assert pp.ask(blob)[0] == rq.Status.REFUSED, blob.hex()
    assert pp.proc.poll() is None, pp.log()
    # Nothing of it was executed: no address or route appeared on (or via) the TUN.
    assert _tun_state(ns) == before
    log = pp.log()
    for name, (_data, reason) in HOSTILE.items():
        assert reason in log, (name, reason, log[-3000:])
    assert "carrying descriptors" in log
    assert "Traceback" not in log

    # The same parent executes what is allowed, exactly.
    assert pp.ask(valid)[0] == rq.Status.OK
    route = rq.RouteRequest(True, "pyike0", ip_network(f"{VPN1}/128"), ip_address(VPN0))
    assert pp.ask(rq.encode_request(route))[0] == rq.Status.OK
    addrs, routes = _tun_state(ns)
    assert f"{VPN0}/128" in addrs and any(r.split("/")[0] == VPN1 for r in routes), routes
    status, _, fds = pp.ask(rq.encode_request(rq.UdpOpenRequest(ip_address("0.0.0.0"), 4500)))
    assert status == rq.Status.OK and len(fds) == 1
    with socket.socket(fileno=fds[0]) as s:
        assert s.type == socket.SOCK_DGRAM and s.getsockname()[1] == 4500
    status, body, _ = pp.ask(rq.encode_request(rq.PeerKeyRequest(IdType.ID_FQDN, "peer.example")))
    assert status == rq.Status.OK and keys.load_public_key_der(body) is not None
    status, body, _ = pp.ask(rq.encode_request(rq.PeerKeyRequest(IdType.ID_FQDN, "nobody.example")))
    assert status == rq.Status.OK and body == b""  # no key for that ID
    status, body, _ = pp.ask(rq.encode_request(rq.ReloadRequest()))
    assert status == rq.Status.OK and len(body) > 100
    pp.sock.close()
    assert pp.proc.wait(10) == 0
    expected = len(HOSTILE) + 1 + 300
    assert re.search(rf"totals: refused {expected} executed 6", pp.log()), pp.log()[-2000:]


# ---------------------------------------------------------------------------
# The daemon, privilege-separated


def _child_of(pid: int) -> int:
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(kids) == 1, kids
    return int(kids[0])


def _udp_owners(ns: Netns, ports: tuple[int, ...] = (500, 4500)) -> set[int]:
    out = ns.run(["ss", "-uanpH"]).stdout
    owners = set()
    for line in out.splitlines():
        local = line.split()[3] if len(line.split()) > 3 else ""
        if any(local.endswith(f":{p}") for p in ports):
            owners |= {int(x) for x in re.findall(r"pid=(\d+)", line)}
    return owners


def check_separated(p: PyikeProc, user: str) -> int:
    """The network process of a running pyike is ``user`` with no capabilities and
    owns the sockets and the TUN; the root parent owns neither. Its PID."""
    assert p.proc is not None
    parent_pid = p.proc.pid
    child = _child_of(parent_pid)
    pw = pwd.getpwnam(user)
    st = read_status(child)
    assert st["Uid"].split() == [str(pw.pw_uid)] * 4, st["Uid"]
    assert st["Gid"].split() == [str(pw.pw_gid)] * 4, st["Gid"]
    assert st["Groups"] == ""
    for cap in ("CapEff", "CapPrm", "CapInh", "CapAmb"):
        assert int(st[cap], 16) == 0, (cap, st[cap])
    assert st["NoNewPrivs"] == "1"
    assert read_status(parent_pid)["Uid"].split()[0] == "0"  # the parent stays root
    assert _udp_owners(p.ns) == {child}  # the child alone owns UDP 500/4500
    fds = {os.readlink(f"/proc/{child}/fd/{n}") for n in os.listdir(f"/proc/{child}/fd")}
    assert "/dev/net/tun" in fds  # the data plane's TUN fd is the child's
    assert not any("local.key" in f for f in fds)
    parent_fds = {
        os.readlink(f"/proc/{parent_pid}/fd/{n}") for n in os.listdir(f"/proc/{parent_pid}/fd")
    }
    assert "/dev/net/tun" not in parent_fds
    # The private key file is out of the network process's reach.
    assert "local.key" in str(p.keydir / "private" / "local.key")
    r = subprocess.run(
        ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups",
         "cat", str(p.keydir / "private" / "local.key")],
        capture_output=True,
    )  # fmt: skip
    assert r.returncode != 0 and not r.stdout
    p.wait_log(rf"privsep: running as {user} \(uid {pw.pw_uid}")
    return child


REKEY_CONF = """\
ikev2 "ps" {mode} esp from {local} to {remote} {peer} \\
    srcid {srcid} dstid {dstid} ikelifetime 30 lifetime {child} ecdsa384
"""


def _conf(path: Path, home: bool, extra_flow: str = "") -> Path:
    text = REKEY_CONF.format(
        mode="active" if home else "passive",
        local=VPN0 if home else VPN1,
        remote=VPN1 if home else VPN0,
        peer="peer 192.0.2.2" if home else "peer any",
        srcid="carinho.lan" if home else "namorar.example.com",
        dstid="namorar.example.com" if home else "carinho.lan",
        child=6 if home else 600,
    )
    path.write_text(text + extra_flow)
    return path


def _recover_after_address_change(hosts: TwoHosts, home: PyikeProc) -> None:
    """Home's outer address changes; the tunnel comes back, and the parent re-asserts
    the TUN routes on the network process's behalf."""
    hosts.home.run(["ip", "addr", "del", "192.0.2.1/24", "dev", "eth0"])
    hosts.home.run(["ip", "addr", "add", "192.0.2.11/24", "dev", "eth0"])
    home.wait_log(r"network changed", timeout=10)
    home.wait_log(rf"privsep: route replace {VPN1}/128 dev pyike0", timeout=10)
    assert wait_until(lambda: ping(hosts.home, VPN1, 1, 1.0) == 1, 30, what="tunnel back")


def test_pyike_pair_separated(two_hosts: TwoHosts, tmp_path: Path, system_user: str) -> None:
    hk, vk = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    home_keys = write_keydir(tmp_path / "home-keys", hk, {"namorar.example.com": vk.public_key()})
    vm_keys = write_keydir(tmp_path / "vm-keys", vk, {"carinho.lan": hk.public_key()})
    vm = PyikeProc(two_hosts.vm, tmp_path, _conf(tmp_path / "vm.conf", False), vm_keys).start()
    vm.wait_log(r"listening on IPv4 UDP port 4500", timeout=15)
    home_conf = _conf(tmp_path / "home.conf", True)
    home = PyikeProc(two_hosts.home, tmp_path, home_conf, home_keys, ["--user", "nobody"]).start()
    home.wait_log(r"established", timeout=20)
    check_separated(home, "nobody")
    check_separated(vm, system_user)  # the default user, once it exists
    assert ping(two_hosts.home, VPN1, 3, 2.0) >= 2
    home.wait_log(r"rekeyed Child SA", timeout=20)  # lifetime 6 s at home
    assert ping(two_hosts.home, VPN1, 3, 2.0) >= 2
    _recover_after_address_change(two_hosts, home)
    # A reload adds a flow: its route is added through the parent.
    _conf(tmp_path / "home.conf", True, 'ikev2 "more" passive esp from 2001:db8:c1da::1 '
          "to 2001:db8:5::/64 srcid carinho.lan dstid namorar.example.com\n")  # fmt: skip
    home.proc.send_signal(1)  # SIGHUP to the parent, forwarded
    home.wait_log(r"privsep: route replace 2001:db8:5::/64 dev pyike0", timeout=10)
    routes = two_hosts.home.run(["ip", "-6", "route", "show", "dev", "pyike0"]).stdout
    assert "2001:db8:5::/64" in routes
    check_separated(home, "nobody")  # still the same picture after all that
    assert home.stop() == 0 and vm.stop() == 0
    for p in (home, vm):
        assert "Traceback" not in p.log()
        assert "refused a request" not in p.log()


def _start_charon(hosts: TwoHosts, tmp: Path) -> tuple[PyikeProc, object]:
    """pyike at home (child SA lifetime 6 s), charon (kernel-libipsec) as the VM,
    answering from any home address in 192.0.2.0/24 (home's address changes)."""
    home_keys, charon = charon_vm(hosts, tmp, "privsep", remote_addr="192.0.2.0/24")
    home = PyikeProc(hosts.home, tmp, _conf(tmp / "home.conf", True), home_keys).start()
    return home, charon


def test_pyike_separated_against_charon(
    two_hosts: TwoHosts, tmp_path: Path, system_user: str
) -> None:
    home, charon = _start_charon(two_hosts, tmp_path)
    try:
        home.wait_log(r"established", timeout=30)
        check_separated(home, system_user)
        assert ping(two_hosts.home, VPN1, 3, 2.0) >= 2
        home.wait_log(r"rekeyed Child SA", timeout=20)
        assert ping(two_hosts.home, VPN1, 3, 2.0) >= 2
        _recover_after_address_change(two_hosts, home)
        check_separated(home, system_user)
        assert home.stop() == 0
        assert "Traceback" not in home.log()
    finally:
        home.stop()
        charon.stop()


# ---------------------------------------------------------------------------
# Clear errors


def _pyike(args: list[str], ns: Netns | None = None, as_user: int | None = None):
    cmd = [sys.executable, "-m", "pyike", *args]
    if as_user is not None:
        cmd = ["setpriv", f"--reuid={as_user}", f"--regid={as_user}", "--clear-groups", *cmd]
    if ns is not None:
        cmd = ns.exec_args(cmd)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=str(REPO))


def test_not_root_and_unknown_user_are_one_clear_line(
    stale_netns_swept: None, tmp_path: Path
) -> None:
    conf = _conf(tmp_path / "c.conf", False)
    conf.chmod(0o644)
    tmp_path.chmod(0o755)
    nobody = pwd.getpwnam("nobody").pw_uid
    with Netns("psuser") as ns:
        r = _pyike(["-f", str(conf)], ns, as_user=nobody)
        assert r.returncode == 1, r
        assert "must be started as root" in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        r = _pyike(["-f", str(conf), "--user", "no_such_user_pyike"], ns)
        assert r.returncode == 1, r
        assert "user 'no_such_user_pyike' does not exist" in r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
        r = _pyike(["-f", str(conf), "--user", "root"], ns)
        assert r.returncode == 1 and "is root" in r.stderr, r
