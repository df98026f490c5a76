"""Merged GSO writes through a real TUN device and a real router (root only).

What the data plane writes into its TUN (pyike.offload.coalesce with UDP merging)
is written by a small program into a TUN device in namespace "gw", which forwards it
over a veth to namespace "host". The veth has checksum and segmentation offloads
off, so the gateway's kernel cuts each GSO write and computes every checksum in
software, and the host's kernel checks them: the host's UDP and TCP sockets must get
exactly the original datagrams and bytes, with no checksum error counted. That is
the proof that the headers and partial checksums pyike builds are what Linux
expects (a wrong partial checksum passes local delivery, which trusts it, but not
this).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pyike import offload
from tests.netns import Netns, veth_pair, wait_until

# tests/test_offload.py's packets go from the tunnel's far end (SRC) to a host behind
# the gateway (DST).
from tests.test_offload import DST4, DST6, SRC4, SRC6, datagrams, segments

pytestmark = [pytest.mark.netns]

WRITER = """
import os, sys, time
from pytun import IFF_NO_PI, IFF_TUN, IFF_VNET_HDR, TunTapDevice
tun = TunTapDevice(name="gsotun", flags=IFF_TUN | IFF_NO_PI | IFF_VNET_HDR)
print("ready", flush=True)
go = sys.argv[1] + ".go"
deadline = time.monotonic() + 10
while not os.path.exists(go) and time.monotonic() < deadline:  # routes being set up
    time.sleep(0.02)
frames = open(sys.argv[1], "rb").read()
at = 0
while at < len(frames):
    n = int.from_bytes(frames[at : at + 4], "big")
    os.write(tun.fileno(), frames[at + 4 : at + 4 + n])
    at += 4 + n
print("written", flush=True)
"""

RECEIVER = """
import json, select, socket, sys, time
want = int(sys.argv[1])
socks = []
for fam, addr in ((socket.AF_INET6, sys.argv[2]), (socket.AF_INET, sys.argv[3])):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind((addr, 5201))
    socks.append(s)
print("ready", flush=True)
got, deadline = [], time.monotonic() + 10
while len(got) < want and time.monotonic() < deadline:
    r, _, _ = select.select(socks, [], [], 0.2)
    for s in r:
        got.append(s.recv(4000).hex())
print(json.dumps(got), flush=True)
"""


def _counters(ns: Netns) -> dict[str, int]:
    """The host's checksum-error counters (UDP, TCP; IPv4 and IPv6) and TCP InSegs."""
    snmp = ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines()
    out: dict[str, int] = {}
    for head, values in zip(snmp[::2], snmp[1::2], strict=False):
        proto = head.split(":")[0]
        for k, v in zip(head.split()[1:], values.split()[1:], strict=True):
            if "Csum" in k or (proto, k) == ("Tcp", "InSegs"):
                out[f"{proto}{k}"] = int(v)
    for line in ns.run(["cat", "/proc/net/snmp6"]).stdout.splitlines():
        k, v = line.split()
        if "Csum" in k:
            out[k] = int(v)
    return out


def test_merged_writes_are_cut_by_the_kernel_into_the_original_packets(
    tmp_path: Path,
) -> None:
    udp6 = datagrams(20, 64) + datagrams(7, 1200, last=333)
    udp4 = datagrams(12, 100, v6=False)
    # TCP segments to a port nobody listens on: the host checks each checksum
    # before it answers with a RST, and counts a bad one (TcpInCsumErrors).
    tcp = segments(8, 1000, psh_last=False) + segments(5, 700, v6=False, psh_last=False)
    packets = [*udp6, *tcp, *udp4]
    writes = offload.coalesce(packets, udp=True)
    assert [e - s for s, e, _ in writes] == [20, 7, 8, 5, 12]  # each run one write
    blob = b""
    for _s, _e, bufs in writes:
        frame = b"".join(bytes(b) for b in bufs)
        blob += len(frame).to_bytes(4, "big") + frame
    frames = tmp_path / "frames"
    frames.write_bytes(blob)
    with Netns("gsogw") as gw, Netns("gsohost") as host:
        veth_pair(gw, host, ["2001:db8:7::1/64", "198.51.100.1/24"], ["2001:db8:7::2/64"])
        host.run(["ip", "addr", "add", f"{DST6}/128", "dev", "eth0", "nodad"])
        host.run(["ip", "addr", "add", f"{DST4}/32", "dev", "eth0"])
        gw.run(["ip", "-6", "route", "add", f"{DST6}/128", "via", "2001:db8:7::2"])
        for k in ("net.ipv6.conf.all.forwarding=1", "net.ipv4.ip_forward=1"):
            gw.run(["sysctl", "-qw", k])
        # Software checksums and segmentation on the gateway's way out: the host
        # then checks every checksum the gateway's kernel computed from ours.
        gw.run(["ethtool", "-K", "eth0", "tx", "off", "tso", "off", "gso", "off"])
        gw.run(["ethtool", "-K", "eth0", "tx-udp-segmentation", "off"], check=False)
        receiver = host.popen(
            [sys.executable, "-c", RECEIVER, str(len(udp6) + len(udp4)), DST6, DST4],
            stdout=subprocess.PIPE,
        )
        assert receiver.stdout is not None
        assert receiver.stdout.readline().strip() == b"ready"
        writer = gw.popen([sys.executable, "-c", WRITER, str(frames)], stdout=subprocess.PIPE)
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == b"ready"
        gw.run(["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"])
        gw.run(["ip", "link", "set", "gsotun", "up"])
        gw.run(["sysctl", "-qw", "net.ipv4.conf.gsotun.rp_filter=0"])
        gw.run(["ip", "-6", "route", "add", f"{SRC6}/128", "dev", "gsotun"])
        gw.run(["ip", "route", "add", f"{SRC4}/32", "dev", "gsotun"])
        before = _counters(host)
        Path(f"{frames}.go").touch()
        assert writer.stdout.readline().strip() == b"written"
        got = json.loads(receiver.stdout.readline())
        wait_until(
            lambda: _counters(host)["TcpInSegs"] - before["TcpInSegs"] >= len(tcp),
            5,
            what="the TCP segments at the host",
        )
        after = _counters(host)
    want = [p[48:].hex() for p in udp6] + [p[28:].hex() for p in udp4]
    assert sorted(got) == sorted(want) and len(got) == len(want)
    assert after["TcpInSegs"] - before["TcpInSegs"] == len(tcp)
    errors = {k: (before[k], after[k]) for k in before if "Csum" in k and before[k] != after[k]}
    assert not errors, f"checksum errors at the host: {errors}"
