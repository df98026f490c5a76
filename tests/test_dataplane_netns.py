"""The data plane's batched paths end to end: pyike <-> pyike, real kernel offloads.

A bulk TCP transfer (4 MiB; IPv6 in IPv4, and IPv4 in IPv6) crosses the tunnel
with GRO on the veth (as a real NIC has it), so the sender's ESP leaves in UDP GSO
sends, the receiver gets GRO receives and writes merged TCP segments to its TUN as
GSO writes; the bytes
must arrive intact, no ESP packet may be dropped, and the daemons' own counters
(logged at shutdown) must show that each batched path was taken. With
PYIKE_OFFLOAD=0 the same transfer takes the one-packet-per-call paths.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.netns import TwoHosts, require_binary
from tests.pyike_proc import PyikeProc, write_keydir

pytestmark = [pytest.mark.netns]

HOME_ID, VM_ID = "carinho.lan", "namorar.example.com"
INNER = {6: ("2001:db8:c1da::1", "2001:db8:c1da::2"), 4: ("203.0.113.1", "203.0.113.2")}
OUTER = {4: "192.0.2.2", 6: "2001:db8:1::2"}  # the vm's veth address (tests/conftest.py)
SUITES = "childsa enc aes-256-gcm"
STATS = re.compile(
    r"data plane: (\d+) packets TUN->ESP in (\d+) UDP sends \((\d+) GSO\), "
    r"(\d+) packets ESP->TUN in (\d+) TUN writes \((\d+) merged\); (\d+) "
    r"without SA, (\d+) ESP drops, (\d+) send errors"
)
SIZE = 4 * 1024 * 1024

SINK = (  # the vm's TCP server: receive everything, answer with its SHA-256
    "import hashlib, socket, sys\n"
    "s = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind((sys.argv[1], 5001)); s.listen(1); s.settimeout(30)\n"
    "c, _ = s.accept(); c.settimeout(30); h = hashlib.sha256()\n"
    "while b := c.recv(1 << 16):\n"
    "    h.update(b)\n"
    "c.sendall(h.hexdigest().encode()); c.close()\n"
)

SOURCE = (  # home's client: send the file, print the server's digest
    "import socket, sys, time\n"
    "data = open(sys.argv[1], 'rb').read(); deadline = time.monotonic() + 15\n"
    "while True:\n"
    "    try:\n"
    "        c = socket.create_connection((sys.argv[2], 5001), timeout=30); break\n"
    "    except OSError:\n"
    "        if time.monotonic() > deadline: raise\n"
    "        time.sleep(0.1)\n"
    "c.sendall(data); c.shutdown(socket.SHUT_WR); out = b''\n"
    "while b := c.recv(100):\n"
    "    out += b\n"
    "print(out.decode())\n"
)


def _start(
    hosts: TwoHosts, tmp: Path, outer: int, inner: int, home_extra: str = ""
) -> tuple[PyikeProc, PyikeProc]:
    home_in, vm_in = INNER[inner]
    hk, vk = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    home_keys = write_keydir(tmp / "home-keys", hk, {VM_ID: vk.public_key()})
    vm_keys = write_keydir(tmp / "vm-keys", vk, {HOME_ID: hk.public_key()})
    home_conf, vm_conf = tmp / "home.conf", tmp / "vm.conf"
    home_conf.write_text(
        f'ikev2 "bulk" active esp from {home_in} to {vm_in} '
        f"peer {OUTER[outer]} {SUITES} srcid {HOME_ID} dstid {VM_ID} {home_extra} "
        "ecdsa384\n"
    )
    vm_conf.write_text(
        f'ikev2 "bulk" passive esp from {vm_in} to {home_in} local '
        f"{OUTER[outer]} peer any {SUITES} srcid {VM_ID} dstid {HOME_ID} "
        "ecdsa384\n"
    )
    for c in (home_conf, vm_conf):
        c.chmod(0o600)
    vm = PyikeProc(hosts.vm, tmp, vm_conf, vm_keys).start()
    vm.wait_log(r"listening on IPv4 UDP port 4500", timeout=15)
    home = PyikeProc(hosts.home, tmp, home_conf, home_keys).start()
    home.wait_log(r"created Child SA", timeout=30)
    vm.wait_log(r"created Child SA", timeout=30)
    return home, vm


def _stats(p: PyikeProc) -> dict[str, int]:
    m = STATS.search(p.wait_log(STATS.pattern, timeout=10)[-1])
    assert m is not None
    names = (
        "tun_in",
        "udp_sends",
        "gso_sends",
        "tun_out",
        "tun_writes",
        "merged",
        "no_sa",
        "esp_drop",
        "send_err",
    )
    return dict(zip(names, map(int, m.groups()), strict=True))


@pytest.mark.parametrize(
    ("offload", "outer", "inner"),
    [(True, 4, 6), (True, 6, 4), (False, 4, 6)],
    ids=["offload-outer4-inner6", "offload-outer6-inner4", "PYIKE_OFFLOAD=0"],
)
def test_bulk_tcp_through_batched_paths(
    two_hosts: TwoHosts,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    offload: bool,
    outer: int,
    inner: int,
) -> None:
    require_binary("ethtool", "ethtool")
    monkeypatch.setenv("PYIKE_OFFLOAD", "1" if offload else "0")  # the daemons inherit it
    for ns in two_hosts:
        ns.run(["ethtool", "-K", "eth0", "gro", "on"])
    data = os.urandom(SIZE)
    src = tmp_path / "data"
    src.write_bytes(data)
    home, vm = _start(two_hosts, tmp_path, outer, inner)
    vm_in = INNER[inner][1]
    try:
        sink = two_hosts.vm.popen(["python3", "-c", SINK, vm_in])
        r = two_hosts.home.run(["python3", "-c", SOURCE, str(src), vm_in], timeout=60)
        two_hosts.vm.stop(sink, grace=2)
        assert r.stdout.strip() == hashlib.sha256(data).hexdigest()
        # The TUN queue was lengthened (the kernel's 500 dropped bulk TCP segments).
        assert "qlen 1000" in two_hosts.home.run(["ip", "link", "show", "pyike0"]).stdout
    finally:
        home.stop()
        vm.stop()
    h, v = _stats(home), _stats(vm)
    print("home", h, "\nvm", v)
    assert h["esp_drop"] == v["esp_drop"] == 0  # every GRO-split datagram authenticated
    assert h["send_err"] == v["send_err"] == 0
    assert h["tun_in"] > SIZE // 1500 and v["tun_out"] > SIZE // 1500
    if offload:
        assert "virtio-net" not in home.log() + vm.log()  # IFF_VNET_HDR was accepted
        assert h["gso_sends"] > 0 and h["udp_sends"] < h["tun_in"]  # several per send
        assert v["merged"] > 0 and v["tun_writes"] < v["tun_out"]  # several per write
    else:
        assert h["gso_sends"] == v["gso_sends"] == v["merged"] == h["merged"] == 0
        assert v["tun_writes"] == v["tun_out"] and h["udp_sends"] == h["tun_in"] - h["no_sa"]
    assert "Traceback" not in home.log() + vm.log()


def test_byte_lifetime_is_checked_for_sas_that_carried_traffic(
    two_hosts: TwoHosts, tmp_path: Path
) -> None:
    """The daemon polls byte counts only for Child SAs the data plane says moved
    packets since the last poll (every 5 s): 4 MiB through an SA with a 2 MB
    lifetime must end it (rekeyed at 90 %, or expired at 100 %) within a poll."""
    data = os.urandom(SIZE)
    src = tmp_path / "data"
    src.write_bytes(data)
    home, vm = _start(two_hosts, tmp_path, 4, 6, home_extra="lifetime 3600 bytes 2M")
    vm_in = INNER[6][1]
    try:
        sink = two_hosts.vm.popen(["python3", "-c", SINK, vm_in])
        r = two_hosts.home.run(["python3", "-c", SOURCE, str(src), vm_in], timeout=60)
        two_hosts.vm.stop(sink, grace=2)
        assert r.stdout.strip() == hashlib.sha256(data).hexdigest()
        home.wait_log(r"expired: byte lifetime reached|rekeyed Child SA", timeout=12)
    finally:
        home.stop()
        vm.stop()
    assert "Traceback" not in home.log() + vm.log()


UDP_SINK = (  # the vm's UDP receiver: count intact datagrams (seq, then a pattern)
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET, "
    "socket.SOCK_DGRAM)\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)\n"
    "s.bind((sys.argv[1], 5002)); s.settimeout(3); ok = bad = 0\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    try:\n"
    "        d = s.recv(2000)\n"
    "    except TimeoutError:\n"
    "        break\n"
    "    n = int.from_bytes(d[:4], 'big')\n"
    "    if d == n.to_bytes(4, 'big') + bytes((n + i) & 0xFF for i in range(996)):\n"
    "        ok += 1\n"
    "    else:\n"
    "        bad += 1\n"
    "print(ok, bad, flush=True)\n"
)

UDP_SOURCE = (  # home's sender: bursts of equal-sized datagrams, paced
    "import socket, sys, time\n"
    "s = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET, "
    "socket.SOCK_DGRAM)\n"
    "for n in range(int(sys.argv[2])):\n"
    "    s.sendto(n.to_bytes(4, 'big') + bytes((n + i) & 0xFF for i in range(996)), "
    "(sys.argv[1], 5002))\n"
    "    if n % 40 == 39:\n"
    "        time.sleep(0.004)\n"
)


@pytest.mark.parametrize("inner", [6, 4], ids=["inner6", "inner4"])
def test_udp_datagrams_are_merged_into_gso_writes_intact(
    two_hosts: TwoHosts, tmp_path: Path, inner: int
) -> None:
    """Equal-sized UDP datagrams of one flow leave the receiving daemon's data plane
    as UDP GSO writes to its TUN (pyike.offload.coalesce): each datagram arrives
    whole and unchanged at the application."""
    require_binary("ethtool", "ethtool")
    for ns in two_hosts:
        ns.run(["ethtool", "-K", "eth0", "gro", "on"])
    home, vm = _start(two_hosts, tmp_path, 4, inner)
    vm_in = INNER[inner][1]
    count = 4000
    try:
        sink = two_hosts.vm.popen(["python3", "-c", UDP_SINK, vm_in], stdout=subprocess.PIPE)
        assert sink.stdout is not None
        assert sink.stdout.readline().strip() == b"ready"
        two_hosts.home.run(["python3", "-c", UDP_SOURCE, vm_in, str(count)], timeout=60)
        ok, bad = map(int, sink.stdout.readline().split())
        two_hosts.vm.stop(sink, grace=2)
    finally:
        home.stop()
        vm.stop()
    v = _stats(vm)
    print("vm", v, "received", ok, "intact,", bad, "damaged")
    assert bad == 0
    assert ok >= 0.9 * count  # paced: UDP may still lose a few on a busy machine
    assert v["esp_drop"] == 0
    assert v["merged"] > 0 and v["tun_writes"] < v["tun_out"] / 2  # datagrams merged
    assert "Traceback" not in home.log() + vm.log()
