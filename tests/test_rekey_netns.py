"""Traffic keeps flowing through rekeys: real pyike daemons in namespaces.

Five tunnels run side by side, each its own pair of namespaces, with short
lifetimes (Child SA 10 s, IKE SA 30 s): pyike <-> pyike with rekeys started by
the home side only, by the VM side only, and by both (equal lifetimes, so both
rekey at nearly the same time and collisions are settled by the nonce rule,
RFC 7296 2.8.1/2.8.2); pyike home <-> strongSwan charon VM (kernel-libipsec)
with rekeys started by pyike, and by charon.
Through each, for about a minute: a steady TCP stream from the VM to home and
pings every 0.2 s. No TCP byte may be lost or reordered, at most one ping.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from interop.strongswan import Charon
from tests.conftest import HOME_ADDRS, VM_ADDRS
from tests.netns import Netns, TwoHosts, veth_pair
from tests.pyike_proc import PyikeProc, charon_vm, write_keydir

pytestmark = [pytest.mark.netns, pytest.mark.slow]

VPN0 = "2001:db8:c1da::1"
VPN1 = "2001:db8:c1da::2"
STREAM_SECONDS = 62.0
CHILD_LIFETIME = 10
IKE_LIFETIME = 30

CONF = """\
ikev2 "rekey" {mode} esp from {local} to {remote} {peer} \\
    srcid {srcid} dstid {dstid} ikelifetime {ike} lifetime {child} ecdsa384
"""

# A steady TCP stream: 1 KiB blocks carrying their own index, every 10 ms.
_SERVER = r"""
import hashlib, socket, sys
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 2525)); s.listen(1); s.settimeout(30)
c, _ = s.accept(); c.settimeout(30)
n, h, expect, ok = 0, hashlib.sha256(), 0, True
buf = b""
while True:
    b = c.recv(65536)
    if not b:
        break
    n += len(b); h.update(b); buf += b
    while len(buf) >= 1024:
        block, buf = buf[:1024], buf[1024:]
        ok &= int.from_bytes(block[:8], "big") == expect
        expect += 1
print(n, h.hexdigest(), int(ok), flush=True)
"""
_CLIENT = r"""
import hashlib, socket, sys, time
for attempt in range(50):  # the server may not listen yet
    try:
        c = socket.create_connection((sys.argv[1], 2525), timeout=30)
        break
    except ConnectionRefusedError:
        time.sleep(0.1)
end = time.monotonic() + float(sys.argv[2])
n, h, i = 0, hashlib.sha256(), 0
while time.monotonic() < end:
    block = i.to_bytes(8, "big") + bytes([i & 255]) * 1016
    c.sendall(block); n += len(block); h.update(block); i += 1
    time.sleep(0.01)
c.shutdown(socket.SHUT_WR); c.recv(1)
print(n, h.hexdigest(), flush=True)
"""
# Pings every 0.2 s for the same time; prints sent and answered.
_PINGER = r"""
import os, select, socket, struct, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
ident, end, sent, got = os.getpid() & 0xFFFF, time.monotonic() + float(sys.argv[2]), 0, set()
while time.monotonic() < end:
    s.sendto(struct.pack("!BBHHH", 128, 0, 0, ident, sent) + b"rekey", (sys.argv[1], 0))
    sent += 1
    until = time.monotonic() + 0.2
    while (left := until - time.monotonic()) > 0 and select.select([s], [], [], left)[0]:
        p = s.recv(2048)
        if p[0] == 129 and struct.unpack("!H", p[4:6])[0] == ident:
            got.add(struct.unpack("!H", p[6:8])[0])
time.sleep(1.0)
while select.select([s], [], [], 0)[0]:
    p = s.recv(2048)
    if p[0] == 129 and struct.unpack("!H", p[4:6])[0] == ident:
        got.add(struct.unpack("!H", p[6:8])[0])
print(sent, len(got), flush=True)
"""


def _conf(path: Path, *, home: bool, child: int, ike: int) -> Path:
    path.write_text(
        CONF.format(
            mode="active" if home else "passive",
            local=VPN0 if home else VPN1,
            remote=VPN1 if home else VPN0,
            peer="peer 192.0.2.2" if home else "peer any",
            srcid="carinho.lan" if home else "namorar.example.com",
            dstid="namorar.example.com" if home else "carinho.lan",
            ike=ike,
            child=child,
        )
    )
    return path


def _start(
    hosts: TwoHosts, tmp: Path, home_life: tuple[int, int], vm_life: tuple[int, int]
) -> tuple[PyikeProc, PyikeProc]:
    hk, vk = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    home_keys = write_keydir(tmp / "home-keys", hk, {"namorar.example.com": vk.public_key()})
    vm_keys = write_keydir(tmp / "vm-keys", vk, {"carinho.lan": hk.public_key()})
    vm = PyikeProc(
        hosts.vm, tmp, _conf(tmp / "vm.conf", home=False, child=vm_life[0], ike=vm_life[1]), vm_keys
    ).start()
    vm.wait_log(r"listening on IPv4 UDP port 4500", timeout=20)
    home = PyikeProc(
        hosts.home,
        tmp,
        _conf(tmp / "home.conf", home=True, child=home_life[0], ike=home_life[1]),
        home_keys,
    ).start()
    return home, vm


def _log(peer: PyikeProc | Charon) -> str:
    return peer.log_text() if isinstance(peer, Charon) else peer.log()


def _count(log: str, pattern: str) -> int:
    return len(re.findall(pattern, log))


def _start_charon(
    hosts: TwoHosts, tmp: Path, home_life: tuple[int, int], vm_life: tuple[int, int]
) -> tuple[PyikeProc, Charon]:
    """pyike at home, strongSwan charon (kernel-libipsec) as the VM."""
    home_keys, charon = charon_vm(
        hosts,
        tmp,
        "rekey",
        # charon's rekey_time is its soft lifetime; rand_time 0 keeps it exact.
        conn_extra=f"rekey_time = {vm_life[1]}s\n over_time = {vm_life[1]}s\n rand_time = 0",
        child_extra=f"rekey_time = {vm_life[0]}s\n life_time = {2 * vm_life[0]}s\nrand_time = 0",
    )
    home = PyikeProc(
        hosts.home,
        tmp,
        _conf(tmp / "home.conf", home=True, child=home_life[0], ike=home_life[1]),
        home_keys,
    ).start()
    return home, charon


CASES = {
    # name: (home child, home ike), (vm child, vm ike) lifetimes in seconds, VM peer
    "home-rekeys": (
        (CHILD_LIFETIME, IKE_LIFETIME),
        (10 * CHILD_LIFETIME, 10 * IKE_LIFETIME),
        "pyike",
    ),
    "vm-rekeys": (
        (10 * CHILD_LIFETIME, 10 * IKE_LIFETIME),
        (CHILD_LIFETIME, IKE_LIFETIME),
        "pyike",
    ),
    "both-rekey": ((CHILD_LIFETIME, IKE_LIFETIME), (CHILD_LIFETIME, IKE_LIFETIME), "pyike"),
    "pyike-rekeys-charon": (
        (CHILD_LIFETIME, IKE_LIFETIME),
        (10 * CHILD_LIFETIME, 10 * IKE_LIFETIME),
        "charon",
    ),
    "charon-rekeys-pyike": (
        (10 * CHILD_LIFETIME, 10 * IKE_LIFETIME),
        (CHILD_LIFETIME - 1, IKE_LIFETIME - 4),
        "charon",
    ),
}


def test_traffic_survives_rekeys(stale_netns_swept: None, tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        runs = {}
        for name, (home_life, vm_life, peer) in CASES.items():
            home_ns = stack.enter_context(Netns("rk-home"))
            vm_ns = stack.enter_context(Netns("rk-vm"))
            hosts = TwoHosts(home_ns, vm_ns, veth_pair(home_ns, vm_ns, HOME_ADDRS, VM_ADDRS))
            work = tmp_path / name
            work.mkdir()
            start = _start if peer == "pyike" else _start_charon
            home, vm = start(hosts, work, home_life, vm_life)
            stack.callback(vm.stop)
            stack.callback(home.stop)
            runs[name] = (hosts, home, vm)
        streams = {}
        for name, (hosts, home, vm) in runs.items():
            home.wait_log(r"created Child SA", timeout=30)
            if isinstance(vm, Charon):
                vm.wait_established(timeout=30)
            else:
                vm.wait_log(r"created Child SA", timeout=30)
            server = hosts.home.popen([sys.executable, "-c", _SERVER, VPN0], stdout=subprocess.PIPE)
            streams[name] = (
                server,
                hosts.vm.popen(
                    [sys.executable, "-c", _CLIENT, VPN0, str(STREAM_SECONDS)],
                    stdout=subprocess.PIPE,
                ),
                hosts.vm.popen(
                    [sys.executable, "-c", _PINGER, VPN0, str(STREAM_SECONDS)],
                    stdout=subprocess.PIPE,
                ),
            )
        results = {}
        for name, (server, client, pinger) in streams.items():
            budget = STREAM_SECONDS + 40
            results[name] = tuple(
                p.communicate(timeout=budget)[0].decode().split() for p in (server, client, pinger)
            )
        failures = []
        for name, (received, sent, pings) in results.items():
            _hosts, home, vm = runs[name]
            logs = home.log() + _log(vm)
            child_rekeys = _count(home.log(), r"rekeyed Child SA")
            ike_rekeys = _count(home.log(), r"rekeyed IKE SA")
            summary = (
                f"{name}: TCP sent {sent} received {received}, pings {pings}, "
                f"child rekeys {child_rekeys}, IKE rekeys {ike_rekeys}"
            )
            print(summary)
            if not (received and sent and received[:2] == sent[:2] and received[2] == "1"):
                failures.append(f"{summary}: TCP stream damaged")
            if not pings or int(pings[0]) - int(pings[1]) > 1:
                failures.append(f"{summary}: more than one ping lost")
            # Over ~62 s: a Child SA rekey every ~9 s and an IKE SA rekey every ~27 s.
            if child_rekeys < 4 or ike_rekeys < 2:
                failures.append(f"{summary}: too few rekeys")
            if "Traceback" in logs or "internal error" in logs:
                failures.append(f"{name}: error in a log")
            if "not responding" in logs:
                failures.append(f"{name}: an IKE SA died")
        assert not failures, (
            "\n".join(failures)
            + "\n"
            + "\n".join(
                f"--- {n} home\n{r[1].log()[-3000:]}\n--- {n} vm\n{_log(r[2])[-3000:]}"
                for n, r in runs.items()
            )
        )
