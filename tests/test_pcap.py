"""Capture reading and writing, checked against real tools: tcpdump and tshark capture on
loopback, scapy and editcap/mergecap write the less common formats, and tshark reads
every file (ours included) as the reference for what a capture holds."""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import select
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.packet import Packet

from pyike.pcap import (
    CaptureError,
    Datagram,
    HexError,
    ike_payload,
    is_esp,
    is_nat_keepalive,
    parse_capture,
    read_capture,
    read_hex,
    write_pcap,
)

TSHARK = shutil.which("tshark")
TCPDUMP = shutil.which("tcpdump")
EDITCAP = shutil.which("editcap")
MERGECAP = shutil.which("mergecap")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="capturing on lo needs root")

A4 = ipaddress.ip_address("192.0.2.1")
B4 = ipaddress.ip_address("198.51.100.2")
A6 = ipaddress.ip_address("2001:db8::1")
B6 = ipaddress.ip_address("2001:db8::2")
MAC_A, MAC_B = "02:00:00:00:00:01", "02:00:00:00:00:02"

Row = tuple[str, int, str, int, bytes]  # src, sport, dst, dport, payload


def rows(datagrams: list[Datagram]) -> list[Row]:
    return [(str(d.src), d.sport, str(d.dst), d.dport, d.payload) for d in datagrams]


def tshark_udp(path: Path) -> list[tuple[float | None, Row]]:
    """What tshark sees in a capture: each UDP datagram (not inside ICMP errors), with
    its timestamp (None for a pcapng Simple Packet Block, which has none)."""
    assert TSHARK is not None
    fields = ["frame.time_epoch", "ip.src", "ipv6.src", "udp.srcport", "ip.dst", "ipv6.dst",
              "udp.dstport", "udp.payload"]  # fmt: skip
    cmd = [TSHARK, "-r", str(path), "-Y", "udp and not icmp and not icmpv6", "-T", "fields",
           "-E", "separator=|"]  # fmt: skip
    for f in fields:
        cmd += ["-e", f]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    out = []
    for line in proc.stdout.splitlines():
        ts, s4, s6, sp, d4, d6, dp, payload = line.split("|")
        out.append(
            (
                float(ts) if ts else None,
                (s4 or s6, int(sp), d4 or d6, int(dp), bytes.fromhex(payload)),
            )
        )
    return out


def assert_same_as_tshark(path: Path, *, expect: int | None = None) -> list[Datagram]:
    ours = list(read_capture(path))
    theirs = tshark_udp(path)
    assert rows(ours) == [r for _, r in theirs]
    for d, (ts, _) in zip(ours, theirs, strict=True):
        assert d.timestamp == pytest.approx(ts if ts is not None else 0.0, abs=2e-6)
    if expect is not None:
        assert len(ours) == expect
    return ours


SAMPLE = [
    Datagram(1700000000.123456, A4, 500, B4, 500, b"\x11" * 28),
    Datagram(1700000000.5, B4, 4500, A4, 4500, b"\0\0\0\0" + b"\x22" * 40),
    Datagram(1700000001.000001, A6, 4500, B6, 4500, b"\xde\xad\xbe\xef" + b"\x33" * 60),
    Datagram(1700000002.0, B6, 4500, A6, 4500, b"\xff"),
    Datagram(1700000003.25, A6, 500, B6, 500, b""),
    Datagram(1700000004.999999, A4, 54321, B4, 1, bytes(range(256)) * 5),
]


# ---------------------------------------------------------------------------
# Our writer, read back by us, by tshark and by scapy


def test_write_then_read_back(tmp_path: Path) -> None:
    path = tmp_path / "ours.pcap"
    assert write_pcap(path, SAMPLE) == len(SAMPLE)
    back = list(read_capture(path))
    assert rows(back) == rows(SAMPLE)
    for a, b in zip(back, SAMPLE, strict=True):
        assert a.timestamp == pytest.approx(b.timestamp, abs=1e-6)


@needs_tshark
def test_tshark_reads_our_file_with_correct_checksums(tmp_path: Path) -> None:
    path = tmp_path / "ours.pcap"
    write_pcap(path, SAMPLE)
    assert_same_as_tshark(path, expect=len(SAMPLE))
    assert TSHARK is not None
    proc = subprocess.run(
        [TSHARK, "-r", str(path), "-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE",
         "-T", "fields", "-e", "ip.checksum.status", "-e", "udp.checksum.status"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    # 1 = "Good" in Wireshark's checksum status; IPv6 has no header checksum
    statuses = [line.split("\t") for line in proc.stdout.splitlines()]
    assert statuses == [["1" if d.src.version == 4 else "", "1"] for d in SAMPLE]


def test_scapy_recomputes_the_same_checksums(tmp_path: Path) -> None:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.utils import rdpcap

    path = tmp_path / "ours.pcap"
    write_pcap(path, SAMPLE)
    for pkt, d in zip(rdpcap(str(path)), SAMPLE, strict=True):
        raw = bytes(pkt)
        cls = IP if d.src.version == 4 else IPv6
        parsed = cls(raw)
        fresh = parsed.copy()
        del fresh[UDP].chksum
        if cls is IP:
            del fresh[IP].chksum
            assert cls(bytes(fresh))[IP].chksum == parsed[IP].chksum
        assert cls(bytes(fresh))[UDP].chksum == parsed[UDP].chksum
        assert bytes(parsed[UDP].payload) == d.payload


def test_write_refuses_mixed_families(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="address families differ"):
        write_pcap(tmp_path / "x.pcap", [Datagram(0.0, A4, 1, B6, 2, b"")])


# ---------------------------------------------------------------------------
# Live captures by tcpdump and tshark on loopback


def run_capture(
    cmd: list[str], ready: bytes, send: Callable[[int], None], timeout: float = 20.0
) -> None:
    """Start a capture tool, wait until it says it is capturing, call send(i) until it
    exits (it stops itself with -c), and always stop it by its PID."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    try:
        seen = b""
        while ready not in seen:
            assert time.monotonic() < deadline, f"{cmd[0]} did not start: {seen!r}"
            r, _, _ = select.select([proc.stderr], [], [], 0.5)
            if r:
                chunk = os.read(proc.stderr.fileno(), 4096)
                assert chunk or proc.poll() is None, f"{cmd[0]} exited: {seen!r}"
                seen += chunk
        i = 0
        while proc.poll() is None:
            assert time.monotonic() < deadline, f"{cmd[0]} did not capture enough packets"
            send(i)
            i += 1
            time.sleep(0.05)
        assert proc.returncode == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stderr.close()


class Sender:
    """UDP sockets on loopback; send(i) sends the i-th of a cycle of IKE/NAT-T shapes."""

    def __init__(self) -> None:
        self.s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s4.bind(("127.0.0.1", 0))
        self.s6: socket.socket | None = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            self.s6.bind(("::1", 0))
        except OSError:
            self.s6.close()
            self.s6 = None
        self.sent: list[Row] = []

    @property
    def bpf(self) -> str:
        ports = [str(self.s4.getsockname()[1])]
        if self.s6 is not None:
            ports.append(str(self.s6.getsockname()[1]))
        return "udp and (" + " or ".join(f"src port {p}" for p in ports) + ")"

    def send(self, i: int) -> None:
        shapes = [
            (500, b"IKE" + i.to_bytes(4, "big") + b"\x00" * 21),  # bare IKE on 500
            (4500, b"\0\0\0\0NATT" + i.to_bytes(4, "big")),  # non-ESP marker + IKE
            (4500, b"\x00\x00\x10\x01" + i.to_bytes(4, "big") + b"esp"),  # ESP
            (4500, b"\xff"),  # NAT keepalive
        ]
        dport, payload = shapes[i % 4]
        use6 = self.s6 is not None and (i // 4) % 2 == 1
        sock = self.s6 if use6 else self.s4
        assert sock is not None
        dst = "::1" if use6 else "127.0.0.1"
        sock.sendto(payload, (dst, dport))
        self.sent.append((dst, sock.getsockname()[1], dst, dport, payload))

    def close(self) -> None:
        self.s4.close()
        if self.s6 is not None:
            self.s6.close()


def check_live_capture(path: Path, sender: Sender, count: int) -> None:
    got = assert_same_as_tshark(path)
    assert len(got) >= count
    for row in rows(got):
        assert row in sender.sent
    assert any(d.dport == 500 for d in got)
    assert any(ike_payload(d) and ike_payload(d).startswith(b"NATT") for d in got)
    assert any(is_esp(d) for d in got)


N_LIVE = 10


@needs_root
@pytest.mark.skipif(TCPDUMP is None or TSHARK is None, reason="tcpdump and tshark needed")
@pytest.mark.parametrize("iface", ["lo", "any"])
def test_tcpdump_capture_pcap(tmp_path: Path, iface: str) -> None:
    assert TCPDUMP is not None
    path = tmp_path / "tcpdump.pcap"
    sender = Sender()
    try:
        cmd = [TCPDUMP, "-i", iface, "-n", "-U", "-Z", "root", "-c", str(N_LIVE), "-w", str(path),
               sender.bpf]  # fmt: skip
        run_capture(cmd, b"listening on", sender.send)
    finally:
        sender.close()
    data = path.read_bytes()
    assert data[:4] == struct.pack("<I", 0xA1B2C3D4)  # classic pcap
    # link type: Ethernet on lo, LINUX_SLL2 on "any" (tcpdump 4.99)
    assert struct.unpack_from("<I", data, 20)[0] == {"lo": 1, "any": 276}[iface]
    check_live_capture(path, sender, N_LIVE)


@needs_root
@needs_tshark
@pytest.mark.parametrize("iface", ["lo", "any"])
def test_tshark_capture_pcapng(tmp_path: Path, iface: str) -> None:
    assert TSHARK is not None
    path = tmp_path / "tshark.pcapng"
    sender = Sender()
    try:
        cmd = [TSHARK, "-i", iface, "-n", "-c", str(N_LIVE), "-w", str(path), "-f", sender.bpf]
        run_capture(cmd, b"Capturing on", sender.send)
    finally:
        sender.close()
    data = path.read_bytes()
    assert data[:4] == b"\x0a\x0d\x0d\x0a"  # pcapng
    # the first IDB follows the SHB: Ethernet on lo, LINUX_SLL on "any" (dumpcap 4.0)
    idb_at = struct.unpack_from("<I", data, 4)[0]
    assert struct.unpack_from("<IIH", data, idb_at)[::2] == (1, {"lo": 1, "any": 113}[iface])
    check_live_capture(path, sender, N_LIVE)


# ---------------------------------------------------------------------------
# Link types and IP variants, written by scapy (an independent writer)


def udp4(payload: bytes = b"v4", sport: int = 500, dport: int = 500) -> Packet:
    from scapy.layers.inet import IP, UDP

    return IP(src=str(A4), dst=str(B4)) / UDP(sport=sport, dport=dport) / payload


def udp6(payload: bytes = b"v6", sport: int = 4500, dport: int = 4500) -> Packet:
    from scapy.layers.inet import UDP
    from scapy.layers.inet6 import IPv6

    return IPv6(src=str(A6), dst=str(B6)) / UDP(sport=sport, dport=dport) / payload


def scapy_pcap(path: Path, packets: list, linktype: int, nano: bool = False) -> Path:
    from scapy.utils import wrpcap

    for i, p in enumerate(packets):
        p.time = 1700000000 + i + 0.123456789
    wrpcap(str(path), packets, linktype=linktype, nano=nano)
    return path


def link_type_cases() -> dict[str, tuple[int, list]]:
    from scapy.layers.inet import IP, TCP, IPOption_RR
    from scapy.layers.inet6 import (
        ICMPv6EchoRequest,
        IPv6,
        IPv6ExtHdrDestOpt,
        IPv6ExtHdrHopByHop,
        IPv6ExtHdrRouting,
    )
    from scapy.layers.l2 import (
        ARP,
        CookedLinux,
        CookedLinuxV2,
        Dot1AD,
        Dot1Q,
        Ether,
        Loopback,
        LoopbackOpenBSD,
    )

    def eth() -> Packet:
        return Ether(src=MAC_A, dst=MAC_B)

    return {
        "ethernet": (1, [
            eth() / udp4(),
            eth() / udp6(),
            eth() / Dot1Q(vlan=7) / udp4(b"vlan"),
            eth() / Dot1AD(vlan=5) / Dot1Q(vlan=7) / udp6(b"qinq"),
            eth() / IP(src=str(A4), dst=str(B4), options=[IPOption_RR()]) / udp4()[1],
            eth() / TCP(),
            eth() / ARP(),
            eth() / IPv6() / ICMPv6EchoRequest(),
        ]),
        "raw": (101, [udp4(), udp6(), IP() / TCP()]),
        "ipv4": (228, [udp4()]),
        "ipv6": (229, [udp6()]),
        "sll": (113, [
            CookedLinux(pkttype=0, lladdrtype=772, proto=0x0800) / udp4(),
            CookedLinux(pkttype=4, lladdrtype=772, proto=0x86DD) / udp6(),
        ]),
        "sll2": (276, [
            CookedLinuxV2(proto=0x0800, ifindex=1) / udp4(),
            CookedLinuxV2(proto=0x86DD, ifindex=1) / udp6(),
        ]),
        "null": (0, [Loopback(type=2) / udp4(), Loopback(type=30) / udp6()]),
        "loop": (108, [LoopbackOpenBSD(type=2) / udp4(), LoopbackOpenBSD(type=24) / udp6()]),
        "ipv6_ext_headers": (101, [
            IPv6(src=str(A6), dst=str(B6)) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
            / IPv6ExtHdrRouting(addresses=[str(B6)]) / udp6(b"ext")[1],
        ]),
    }  # fmt: skip


@needs_tshark
@pytest.mark.parametrize("case", list(link_type_cases()))
def test_link_types_pcap(tmp_path: Path, case: str) -> None:
    linktype, packets = link_type_cases()[case]
    path = scapy_pcap(tmp_path / f"{case}.pcap", packets, linktype)
    got = assert_same_as_tshark(path)
    assert got, "every case holds at least one UDP datagram"


@needs_tshark
@pytest.mark.skipif(EDITCAP is None, reason="editcap is not installed")
@pytest.mark.parametrize("case", list(link_type_cases()))
def test_link_types_pcapng_by_editcap(tmp_path: Path, case: str) -> None:
    assert EDITCAP is not None
    linktype, packets = link_type_cases()[case]
    src = scapy_pcap(tmp_path / f"{case}.pcap", packets, linktype)
    dst = tmp_path / f"{case}.pcapng"
    subprocess.run([EDITCAP, "-F", "pcapng", str(src), str(dst)], check=True, timeout=60)
    assert dst.read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"
    assert rows(assert_same_as_tshark(dst)) == rows(list(read_capture(src)))


@needs_tshark
def test_nanosecond_pcap_and_pcapng(tmp_path: Path) -> None:
    path = scapy_pcap(tmp_path / "ns.pcap", [udp4(), udp6()], 101, nano=True)
    assert path.read_bytes()[:4] == struct.pack("<I", 0xA1B23C4D)
    got = assert_same_as_tshark(path, expect=2)
    assert got[0].timestamp == pytest.approx(1700000000.123456789, abs=1e-6)
    if EDITCAP is not None:  # editcap keeps nanoseconds: an IDB with if_tsresol = 9
        ng = tmp_path / "ns.pcapng"
        subprocess.run([EDITCAP, "-F", "pcapng", str(path), str(ng)], check=True, timeout=60)
        assert_same_as_tshark(ng, expect=2)


@needs_tshark
@pytest.mark.skipif(MERGECAP is None, reason="mergecap is not installed")
def test_pcapng_with_interfaces_of_different_link_types(tmp_path: Path) -> None:
    assert MERGECAP is not None
    cases = link_type_cases()
    inputs = [scapy_pcap(tmp_path / f"{c}.pcap", cases[c][1], cases[c][0])
              for c in ("ethernet", "sll2", "null", "loop")]  # fmt: skip
    merged = tmp_path / "merged.pcapng"
    subprocess.run([MERGECAP, "-F", "pcapng", "-w", str(merged), *map(str, inputs)],
                   check=True, timeout=60)  # fmt: skip
    got = assert_same_as_tshark(merged)
    assert len(got) == sum(len(list(read_capture(p))) for p in inputs)


def test_ethernet_padding_is_not_payload(tmp_path: Path) -> None:
    from scapy.layers.l2 import Ether

    frame = (
        bytes(Ether(src=MAC_A, dst=MAC_B) / udp4(b"x")) + b"\0" * 20
    )  # padded to the 60-byte minimum
    path = scapy_pcap(tmp_path / "pad.pcap", [Ether(frame)], 1)
    assert [d.payload for d in read_capture(path)] == [b"x"]


def test_fragments_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from scapy.layers.inet import UDP, fragment
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6

    big4 = fragment(udp4(b"A" * 3000), fragsize=1000)
    big6 = fragment6(
        IPv6(src=str(A6), dst=str(B6)) / IPv6ExtHdrFragment() / UDP() / (b"B" * 3000), 1280
    )
    assert len(big4) > 1 and len(big6) > 1
    path = scapy_pcap(tmp_path / "frag.pcap", [*big4, *big6, udp4(b"whole")], 101)
    assert [d.payload for d in read_capture(path)] == [b"whole"]


# ---------------------------------------------------------------------------
# Byte orders and pcapng details, from a small pcapng writer written here


def pcap_to_big_endian(data: bytes) -> bytes:
    """Rewrite a little-endian pcap in big-endian order (headers only; data is bytes)."""
    out = bytearray(struct.pack(">IHHiIII", *struct.unpack_from("<IHHiIII", data)))
    pos = 24
    while pos < len(data):
        sec, frac, incl, orig = struct.unpack_from("<IIII", data, pos)
        out += struct.pack(">IIII", sec, frac, incl, orig) + data[pos + 16 : pos + 16 + incl]
        pos += 16 + incl
    return bytes(out)


@needs_tshark
def test_big_endian_pcap(tmp_path: Path) -> None:
    le = tmp_path / "le.pcap"
    write_pcap(le, SAMPLE)
    be = tmp_path / "be.pcap"
    be.write_bytes(pcap_to_big_endian(le.read_bytes()))
    assert be.read_bytes()[:4] == bytes.fromhex("a1b2c3d4")
    assert rows(assert_same_as_tshark(be)) == rows(SAMPLE)


def block(bo: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = 12 + len(body)
    return struct.pack(bo + "II", btype, n) + body + struct.pack(bo + "I", n)


def option(bo: str, code: int, value: bytes) -> bytes:
    return struct.pack(bo + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def shb(bo: str) -> bytes:
    return block(bo, 0x0A0D0D0A, struct.pack(bo + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(bo: str, linktype: int, opts: bytes = b"") -> bytes:
    if opts:
        opts += option(bo, 0, b"")
    return block(bo, 1, struct.pack(bo + "HHI", linktype, 0, 0) + opts)


def epb(bo: str, if_id: int, ts: int, data: bytes) -> bytes:
    return block(bo, 6, struct.pack(bo + "IIIII", if_id, ts >> 32, ts & 0xFFFFFFFF,
                                    len(data), len(data)) + data)  # fmt: skip


def spb(bo: str, data: bytes) -> bytes:
    return block(bo, 3, struct.pack(bo + "I", len(data)) + data)


def handmade_pcapng() -> bytes:
    """Two sections: big-endian (binary timestamp resolution, offset, SPB, unknown
    blocks), then little-endian (Ethernet, default resolution)."""
    v4, v6 = bytes(udp4(b"first")), bytes(udp6(b"second"))
    from scapy.layers.l2 import Ether

    eth = bytes(Ether(src=MAC_A, dst=MAC_B) / udp4(b"third"))
    be = (
        shb(">")
        + idb(
            ">", 101, option(">", 9, bytes([0x80 | 20])) + option(">", 14, struct.pack(">q", 1000))
        )
        + block(">", 0x0BAD, b"unknown block type")
        + epb(">", 0, 1700000000 << 20 | 1 << 19, v4)  # 2^-20 s units, + 0.5 s
        + block(">", 4, b"\0" * 4)  # name resolution block (end of records only)
        + spb(">", v6)
    )
    le = (
        shb("<")
        + idb("<", 1, option("<", 9, bytes([9])))
        + epb("<", 0, 1_700_000_123_000_000_001, eth)
    )
    return be + le


@needs_tshark
def test_handmade_pcapng_two_sections_both_byte_orders(tmp_path: Path) -> None:
    path = tmp_path / "hand.pcapng"
    path.write_bytes(handmade_pcapng())
    got = assert_same_as_tshark(path, expect=3)
    assert [d.payload for d in got] == [b"first", b"second", b"third"]
    assert got[0].timestamp == pytest.approx(1700000000 + 0.5 + 1000)
    assert got[2].timestamp == pytest.approx(1700000123.000000001)


# ---------------------------------------------------------------------------
# Not captures, cut captures


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short"),
        (b"\xd4\xc3", "too short"),
        (b"GET / HTTP/1.1\r\n", "unknown magic"),
        (bytes.fromhex("d4c3b2a1") + b"\x02\x00", "pcap file header is cut short"),
        (
            bytes.fromhex("d4c3b2a1") + struct.pack("<HHiIII", 2, 4, 0, 0, 65535, 147),
            "link type 147",
        ),
        (bytes.fromhex("d4c3b2a1") + struct.pack("<HHiIII", 9, 4, 0, 0, 65535, 1), "version 9"),
        (b"\x0a\x0d\x0d\x0a\x1c\x00", "pcapng section header is cut short"),
        (b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00\x01\x02\x03\x04" + b"\0" * 16, "byte-order magic"),
    ],
)
def test_not_a_capture(data: bytes, message: str) -> None:
    with pytest.raises(CaptureError, match=message):
        parse_capture(data)


def test_read_capture_errors_at_call_time(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="No such file"):
        read_capture(tmp_path / "missing.pcap")
    (tmp_path / "text.pcap").write_text("hello, not a capture\n")
    with pytest.raises(CaptureError, match="unknown magic"):
        read_capture(tmp_path / "text.pcap")


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_truncated_last_packet_warns_and_stops(
    tmp_path: Path, fmt: str, caplog: pytest.LogCaptureFixture
) -> None:
    if fmt == "pcap":
        path = tmp_path / "t.pcap"
        write_pcap(path, SAMPLE[:3])
        data = path.read_bytes()
    else:
        data = handmade_pcapng()
    for cut in (1, 7, 20):
        with caplog.at_level(logging.WARNING, logger="pyike.pcap"):
            caplog.clear()
            got = parse_capture(data[:-cut])
        assert len(got) == 2
        assert "capture ends in the middle of" in caplog.text


# ---------------------------------------------------------------------------
# Arbitrary and mutated bytes raise only CaptureError


def only_capture_errors(data: bytes) -> None:
    try:
        for d in parse_capture(data):
            assert isinstance(d.payload, bytes)
    except CaptureError:
        pass


@functools.cache
def valid_files() -> tuple[bytes, ...]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = scapy_pcap(Path(tmp) / "eth.pcap", link_type_cases()["ethernet"][1], 1)
        raw = path.read_bytes()
    return (raw, pcap_to_big_endian(raw), handmade_pcapng())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes(data: bytes) -> None:
    only_capture_errors(data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\x3c\x4d", b"\x0a\x0d\x0d\x0a"]),
       st.binary(max_size=600))  # fmt: skip
def test_arbitrary_bytes_after_a_magic(magic: bytes, data: bytes) -> None:
    only_capture_errors(magic + data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_captures(data: st.DataObject) -> None:
    raw = bytearray(data.draw(st.sampled_from(valid_files())))
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    only_capture_errors(bytes(raw[:cut]))


# ---------------------------------------------------------------------------
# What UDP carries: RFC 3948 section 2


def dg(payload: bytes, port: int = 4500) -> Datagram:
    return Datagram(0.0, A4, port, B4, port, payload)


def test_ike_on_port_500_is_taken_as_is() -> None:
    msg = b"\0\0\0\0" + b"\x01" * 24  # even a zero SPI prefix is no marker on 500
    assert ike_payload(dg(msg, 500)) == msg
    assert not is_esp(dg(msg, 500))


def test_non_esp_marker_is_stripped_on_4500() -> None:
    # RFC 3948 2.2: IKE on port 4500 is preceded by four zero octets.
    assert ike_payload(dg(b"\0\0\0\0IKEMSG")) == b"IKEMSG"
    assert not is_esp(dg(b"\0\0\0\0IKEMSG"))


def test_esp_on_4500_is_not_ike() -> None:
    # RFC 3948 2.1: ESP's first four octets are its SPI, never zero.
    esp = b"\x00\x00\x10\x01" + b"\x00\x00\x00\x01" + b"ciphertext"
    assert ike_payload(dg(esp)) is None
    assert is_esp(dg(esp))


def test_nat_keepalive() -> None:
    # RFC 3948 2.3: a single octet 0xFF.
    assert ike_payload(dg(b"\xff")) is None
    assert is_nat_keepalive(dg(b"\xff"))
    assert not is_esp(dg(b"\xff"))
    assert not is_nat_keepalive(dg(b"\xff", 500))


def test_other_ports_and_short_payloads() -> None:
    assert ike_payload(dg(b"\0\0\0\0x", 53)) is None
    assert ike_payload(dg(b"\0\0")) is None
    assert not is_esp(dg(b"\x01\x02\x03\x04"))  # shorter than SPI + sequence number


# ---------------------------------------------------------------------------
# Hex input


def test_read_hex_lines_from_tshark(tmp_path: Path) -> None:
    path = tmp_path / "ours.pcap"
    write_pcap(path, SAMPLE)
    if TSHARK is None:
        pytest.skip("tshark is not installed")
    proc = subprocess.run([TSHARK, "-r", str(path), "-T", "fields", "-e", "udp.payload"],
                          capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    # tshark prints an empty line for the empty payload: a blank line switches to
    # paragraph mode, so ask for one message per line explicitly.
    assert read_hex(proc.stdout, per_line=True) == [d.payload for d in SAMPLE if d.payload]


def test_read_hex_formats() -> None:
    text = """
# two messages, one per line
0x01 0x02 0x03
aa:bb:cc  # trailing comment
"""
    assert read_hex(text) == [b"\x01\x02\x03", b"\xaa\xbb\xcc"]
    para = "0102\n0304\n# comment only\n0506\n\nffee\n"
    assert read_hex(para) == [bytes.fromhex("010203040506"), b"\xff\xee"]
    assert read_hex(para, per_line=True) == [b"\x01\x02", b"\x03\x04", b"\x05\x06", b"\xff\xee"]
    dump = "\t0x0000:  4500 001c\n\t0x0004:  0001 0000\n"  # tcpdump -x style offsets
    assert read_hex(dump) == [bytes.fromhex("4500001c00010000")]
    assert read_hex("0x4500001C, 0xFF") == [bytes.fromhex("4500001cff")]
    assert read_hex("  \n# nothing\n") == []


@pytest.mark.parametrize(("text", "message"), [
    ("0102\nzz\n", "line 2: 'zz' is not hex"),
    ("abc\n", "line 1: odd number of hex digits"),
    ("01 02\n\n0x\n", "line 3"),
])  # fmt: skip
def test_read_hex_errors(text: str, message: str) -> None:
    with pytest.raises(HexError, match=message):
        read_hex(text)
