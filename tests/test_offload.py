"""pyike.offload: UDP GSO/GRO arithmetic and TCP segment / UDP datagram merging, on
real bytes.

Packets are built by scapy (an independent implementation of the headers and
checksums); GSO/GRO go through the real kernel on loopback. The merge tests
check that a merged GSO write, cut again the way the kernel's TCP or UDP GSO cuts
it, gives back the original segments byte for byte (checksums included);
tests/test_tun_gso_netns.py sends merged writes through a real TUN and router.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, IPOption_NOP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt

from pyike import offload
from pyike.dataplane import DataPlane, _Tx
from pyike.driver import enable_gro, open_udp

SRC6, DST6 = "2001:db8:c1da::1", "2001:db8:c1da::2"
SRC4, DST4 = "192.0.2.1", "198.51.100.7"
TS = [("NOP", None), ("NOP", None), ("Timestamp", (123456, 654321))]


def segments(
    n: int,
    size: int = 1000,
    *,
    v6: bool = True,
    last: int | None = None,
    seq: int = 1000,
    psh_last: bool = True,
    ip_id: int = 7,
) -> list[bytes]:
    """n in-order data segments of one flow as the sender's TCP would emit them."""
    out = []
    for k in range(n):
        plen = last if (last is not None and k == n - 1) else size
        flags = "PA" if (psh_last and k == n - 1) else "A"
        payload = bytes((seq + k + i) & 0xFF for i in range(plen))
        tcp = (
            TCP(sport=40000, dport=5201, seq=seq, ack=777, flags=flags, window=501, options=TS)
            / payload
        )
        ip = (
            IPv6(src=SRC6, dst=DST6, hlim=64)
            if v6
            else IP(src=SRC4, dst=DST4, ttl=64, id=(ip_id + k) & 0xFFFF, flags="DF")
        )
        out.append(bytes(ip / tcp))
        seq += plen
    return out


def kernel_cut(frame: bytes) -> list[bytes]:
    """What Linux's TCP GSO makes of a merged write (virtio header + super-packet):
    gso_size payload per segment, seq advanced, PSH only on the last, IPv4 ids
    incremented, lengths and checksums recomputed (by scapy here)."""
    _flags, gso_type, hdr_len, gso_size, _start, _off = offload.VNET_HDR.unpack_from(frame)
    pkt = frame[offload.VNET_HDR_LEN :]
    v6 = gso_type == offload.VNET_GSO_TCPV6
    parsed = IPv6(pkt) if v6 else IP(pkt)
    tcp = parsed[TCP]
    payload = pkt[hdr_len:]
    out = []
    for k, at in enumerate(range(0, len(payload), gso_size)):
        chunk = payload[at : at + gso_size]
        last = at + gso_size >= len(payload)
        t = tcp.copy()
        t.remove_payload()
        t.seq = (tcp.seq + at) & 0xFFFFFFFF
        t.flags = int(tcp.flags) if last else int(tcp.flags) & ~0x08
        t.chksum = None
        if v6:
            ip = parsed.copy()
            ip.remove_payload()
            ip.plen = None
        else:
            ip = parsed.copy()
            ip.remove_payload()
            ip.len = ip.chksum = None
            ip.id = (parsed.id + k) & 0xFFFF
        out.append(bytes(ip / t / chunk))
    return out


def writes(packets: list[bytes], udp: bool = False) -> list[bytes]:
    return [b"".join(bytes(b) for b in bufs) for _s, _e, bufs in offload.coalesce(packets, udp=udp)]


def assert_partial_checksum_completes(merged: bytes, v6: bool, layer: type) -> None:
    """The partial checksum of a merged packet, completed as the kernel would (from
    csum_start to the end), is the true TCP/UDP checksum of the whole: the seed Linux
    adjusts per segment when it cuts. The IPv4 header checksum must be right too."""
    ip_len = 40 if v6 else 20
    if not v6:
        assert offload.ones_sum(merged[:20]) == 0xFFFF
    full = offload.complete_checksum(merged, ip_len, 16 if layer is TCP else 6)
    ref = IPv6(full) if v6 else IP(full)
    want = ref.copy()
    want[layer].chksum = None
    assert (IPv6 if v6 else IP)(bytes(want))[layer].chksum == ref[layer].chksum


# --- UDP GSO grouping -----------------------------------------------------------------


def test_gso_groups_runs_of_equal_size_end_at_a_shorter_packet() -> None:
    pk = [bytes([i]) * n for i, n in enumerate([100, 100, 100, 60, 100, 100, 120, 120])]
    groups = offload.gso_groups(pk)
    assert [[len(p) for p in g] for g in groups] == [[100, 100, 100, 60], [100, 100], [120, 120]]
    assert [p for g in groups for p in g] == pk  # nothing lost, order kept


def test_gso_groups_caps_count_and_bytes() -> None:
    pk = [os.urandom(1000) for _ in range(150)]
    groups = offload.gso_groups(pk, max_segments=64, max_bytes=65000)
    assert [len(g) for g in groups] == [64, 64, 22]
    groups = offload.gso_groups(pk, max_segments=64, max_bytes=10_500)
    assert all(sum(map(len, g)) <= 10_500 for g in groups) and len(groups[0]) == 10
    assert [p for g in groups for p in g] == pk
    assert offload.gso_groups([]) == []


@given(st.lists(st.integers(1, 1500), max_size=200))
def test_gso_groups_are_what_the_kernel_can_cut(sizes: list[int]) -> None:
    pk = [bytes(n) for n in sizes]
    groups = offload.gso_groups(pk)
    assert [p for g in groups for p in g] == pk
    for g in groups:
        assert len(g) <= offload.GSO_MAX_SEGMENTS
        assert sum(map(len, g)) <= offload.GSO_MAX_BYTES or len(g) == 1
        assert all(len(p) == len(g[0]) for p in g[:-1]) and len(g[-1]) <= len(g[0])


def test_split_gro_and_cmsg_parsing() -> None:
    parts = [os.urandom(1400) for _ in range(5)] + [os.urandom(333)]
    glued = b"".join(parts)
    assert offload.split_gro(glued, 1400) == parts
    assert offload.split_gro(parts[0], 1400) == [parts[0]]
    assert offload.split_gro(glued, 0) == [glued]
    anc = [
        (socket.IPPROTO_IP, 8, bytes(12)),
        (offload.SOL_UDP, offload.UDP_GRO, struct.pack("=i", 1400)),
    ]
    assert offload.gro_segment_size(anc) == 1400
    assert offload.gro_segment_size(anc[:1]) == 0


def test_gso_send_and_gro_receive_through_the_kernel() -> None:
    """A UDP_SEGMENT send on loopback arrives at a UDP_GRO socket as one receive with
    the segment size; split back, it is exactly what was sealed and sent."""
    rx = open_udp(socket.AF_INET, 0, "127.0.0.1")
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert enable_gro(rx), "kernel refused UDP_GRO"
        parts = [os.urandom(1200) for _ in range(20)] + [os.urandom(77)]
        (group,) = offload.gso_groups(parts)
        tx.sendmsg(group, offload.gso_cmsg(1200), 0, rx.sock.getsockname())
        got: list[bytes] = []
        deadline = time.monotonic() + 5
        while len(got) < len(parts) and time.monotonic() < deadline:
            try:
                data, anc, _f, _src = rx.sock.recvmsg(65536, 256)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            got += offload.split_gro(data, offload.gro_segment_size(anc))
        assert got == parts
    finally:
        rx.sock.close()
        tx.close()


def test_gso_refusal_falls_back_to_one_send_per_packet() -> None:
    """SO_NO_CHECK makes the kernel refuse UDP GSO: the data plane must still
    deliver every packet, in order, and stop trying GSO."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, 11, 1)  # SO_NO_CHECK
    try:
        addr = rx.getsockname()
        with pytest.raises(OSError) as e:
            sock.sendmsg([bytes(100)] * 2, offload.gso_cmsg(100), 0, addr)
        assert e.value.errno in (errno.EIO, errno.EINVAL)  # the kernel says no
        dp = DataPlane(socket_for=lambda _local: None, note_alive=lambda _spi, _now: None)
        assert dp.gso or os.environ.get("PYIKE_OFFLOAD") == "0"
        dp.gso = True
        remote = ("127.0.0.1", addr[1])
        tx = _Tx(
            sa=None,
            child=SimpleNamespace(remote=remote, spi_in=0x1234),  # type: ignore[arg-type]
            sock=sock,
            addr=addr,
            remote=remote,
        )
        parts = [os.urandom(500) for _ in range(6)]
        dp._send(tx, parts)
        assert [rx.recv(2048) for _ in parts] == parts
        assert dp.gso is False and dp.counters["udp_sends"] == 6
        assert dp.counters["send_err"] == 0
    finally:
        rx.close()
        sock.close()


# --- checksums ------------------------------------------------------------------------


def _rfc1071(data: bytes) -> int:
    if len(data) & 1:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return s


@given(st.binary(max_size=3000))
def test_ones_sum_is_rfc1071(data: bytes) -> None:
    assert offload.ones_sum(data) == _rfc1071(data)


def test_complete_checksum_of_a_partial_tcp_packet() -> None:
    """NEEDS_CSUM as a TUN would hand it: pseudo-header sum in th->check."""
    (pkt,) = segments(1, 700)
    tcp_len = len(pkt) - 40
    pseudo = offload._pseudo_v6(pkt, tcp_len)
    partial = pkt[:56] + struct.pack(">H", pseudo) + pkt[58:]
    assert offload.complete_checksum(partial, 40, 16) == pkt
    with pytest.raises(ValueError):
        offload.complete_checksum(pkt[:50], 40, 16)


# --- merging TCP segments into GSO writes --------------------------------------------


@pytest.mark.parametrize("v6", [True, False], ids=["ipv6", "ipv4"])
@pytest.mark.parametrize("last", [1000, 321], ids=["full-last", "short-last"])
def test_merged_write_cuts_back_into_the_original_segments(v6: bool, last: int) -> None:
    pk = segments(6, 1000, v6=v6, last=last)
    (frame,) = writes(pk)
    flags, gso_type, hdr_len, gso_size, start, off = offload.VNET_HDR.unpack_from(frame)
    ip_len = 40 if v6 else 20
    assert (flags, gso_type, hdr_len, gso_size, start, off) == (
        offload.VNET_F_NEEDS_CSUM,
        offload.VNET_GSO_TCPV6 if v6 else offload.VNET_GSO_TCPV4,
        ip_len + 32,
        1000,
        ip_len,
        16,
    )
    merged = frame[offload.VNET_HDR_LEN :]
    assert len(merged) == ip_len + 32 + 5000 + last
    parsed = IPv6(merged) if v6 else IP(merged)
    assert parsed[TCP].seq == 1000 and parsed[TCP].flags == "PA"
    assert bytes(parsed[TCP].payload) == b"".join(p[ip_len + 32 :] for p in pk)
    assert_partial_checksum_completes(merged, v6, TCP)
    assert kernel_cut(frame) == pk


def test_unmergeable_packets_are_written_alone_and_in_order() -> None:
    base = segments(3, 1000, psh_last=False)
    gap = segments(1, 1000, seq=1000 + 3000 + 1)  # a hole in the sequence space
    other_ack = bytes(
        IPv6(src=SRC6, dst=DST6)
        / TCP(sport=40000, dport=5201, seq=9999, ack=778, flags="A", options=TS)
        / bytes(1000)
    )
    pure_ack = bytes(IPv6(src=SRC6, dst=DST6) / TCP(sport=40000, dport=5201, flags="A"))
    fin = bytes(IPv6(src=SRC6, dst=DST6) / TCP(sport=40000, dport=5201, seq=1, flags="FA") / b"x")
    udp = bytes(IPv6(src=SRC6, dst=DST6) / UDP(sport=1, dport=2) / bytes(1000))
    ext = bytes(
        IPv6(src=SRC6, dst=DST6)
        / IPv6ExtHdrDestOpt()
        / TCP(sport=40000, dport=5201, flags="A")
        / bytes(1000)
    )
    # Truncated TCP headers (parse_flow lets them through: it needs only the ports).
    runt6 = bytes(IPv6(src=SRC6, dst=DST6, nh=6) / bytes(10))
    runt4 = bytes(IP(src=SRC4, dst=DST4, proto=6) / bytes(21))
    pk = [*base, *gap, other_ack, pure_ack, fin, udp, ext, runt6, runt4]
    out = offload.coalesce(pk)
    assert [(s, e) for s, e, _ in out] == [(0, 3)] + [(i, i + 1) for i in range(3, len(pk))]
    for s, _e, bufs in out[1:]:
        assert bytes(bufs[0]) == offload.PLAIN_VNET_HDR and bytes(bufs[1]) == pk[s]


def test_merging_stops_where_the_kernel_could_not_cut_it_back() -> None:
    # PSH on the first: alone. A bigger segment after a smaller one: a new write.
    # A different TCP timestamp: not the same header, a new write.
    psh_first = segments(1, 1000, seq=1)
    small_then_big = segments(2, 500, seq=1001, psh_last=False) + segments(
        2, 1000, seq=2001, psh_last=False
    )
    assert [(s, e) for s, e, _ in offload.coalesce(psh_first)] == [(0, 1)]
    assert [(s, e) for s, e, _ in offload.coalesce(small_then_big)] == [(0, 2), (2, 4)]
    other_ts = bytes(
        IPv6(src=SRC6, dst=DST6)
        / TCP(
            sport=40000,
            dport=5201,
            seq=1000 + 2000,
            ack=777,
            flags="A",
            window=501,
            options=[("NOP", None), ("NOP", None), ("Timestamp", (123457, 654321))],
        )
        / bytes(1000)
    )
    pk = [*segments(2, 1000, psh_last=False), other_ts]
    assert [(s, e) for s, e, _ in offload.coalesce(pk)] == [(0, 2), (2, 3)]


def test_ipv4_ids_must_be_consecutive() -> None:
    pk = segments(3, 800, v6=False, psh_last=False)
    assert [(s, e) for s, e, _ in offload.coalesce(pk)] == [(0, 3)]
    odd = segments(3, 800, v6=False, psh_last=False)
    p = IP(odd[2])
    p.id = 99
    p.chksum = None
    odd[2] = bytes(p)
    assert [(s, e) for s, e, _ in offload.coalesce(odd)] == [(0, 2), (2, 3)]


def test_a_merged_write_stays_within_one_ip_packet() -> None:
    pk = segments(100, 1400, psh_last=False)
    out = offload.coalesce(pk)
    assert [e - s for s, e, _ in out][:2] == [46, 46]  # 46 * 1400 + 32 <= 65535
    for frame in writes(pk):
        assert len(frame) - offload.VNET_HDR_LEN - 40 <= offload.COALESCE_MAX_BYTES
    assert [p for f in writes(pk) for p in kernel_cut(f)] == pk


# --- UDP datagram merging (UDP GSO writes to the TUN) -----------------------------------


def datagrams(
    n: int, size: int = 64, *, v6: bool = True, last: int | None = None, ip_id: int = 7
) -> list[bytes]:
    """n datagrams of one UDP flow, as a sender's stack emits them (checksummed)."""
    out = []
    for k in range(n):
        plen = last if (last is not None and k == n - 1) else size
        payload = bytes((k * 7 + i) & 0xFF for i in range(plen))
        ip = (
            IPv6(src=SRC6, dst=DST6, hlim=64)
            if v6
            else IP(src=SRC4, dst=DST4, ttl=64, id=(ip_id + k) & 0xFFFF, flags="DF")
        )
        out.append(bytes(ip / UDP(sport=40000, dport=5201) / payload))
    return out


def kernel_cut_udp(frame: bytes) -> list[bytes]:
    """What Linux's UDP GSO makes of a merged write: gso_size payload per datagram, the
    first one's IP header (IPv4 ids incremented), lengths and checksums recomputed
    (by scapy here)."""
    _flags, gso_type, hdr_len, gso_size, _start, _off = offload.VNET_HDR.unpack_from(frame)
    assert gso_type == offload.VNET_GSO_UDP_L4
    pkt = frame[offload.VNET_HDR_LEN :]
    parsed = IPv6(pkt) if pkt[0] >> 4 == 6 else IP(pkt)
    udp = parsed[UDP]
    out = []
    for k, at in enumerate(range(0, len(pkt) - hdr_len, gso_size)):
        ip = parsed.copy()
        ip.remove_payload()
        if isinstance(ip, IPv6):
            ip.plen = None
        else:
            ip.len = ip.chksum = None
            ip.id = (parsed.id + k) & 0xFFFF
        u = UDP(sport=udp.sport, dport=udp.dport)
        out.append(bytes(ip / u / pkt[hdr_len + at : hdr_len + at + gso_size]))
    return out


@pytest.mark.parametrize("v6", [True, False], ids=["ipv6", "ipv4"])
@pytest.mark.parametrize("last", [64, 17], ids=["full-last", "short-last"])
def test_merged_udp_write_cuts_back_into_the_original_datagrams(v6: bool, last: int) -> None:
    pk = datagrams(10, 64, v6=v6, last=last)
    out = offload.coalesce(pk, udp=True)
    assert [(s, e) for s, e, _ in out] == [(0, 10)]
    frame = b"".join(bytes(b) for b in out[0][2])
    ip_len = 40 if v6 else 20
    assert offload.VNET_HDR.unpack_from(frame) == (
        offload.VNET_F_NEEDS_CSUM,
        offload.VNET_GSO_UDP_L4,
        ip_len + 8,
        64,
        ip_len,
        6,
    )
    merged = frame[offload.VNET_HDR_LEN :]
    assert len(merged) == ip_len + 8 + 9 * 64 + last
    assert_partial_checksum_completes(merged, v6, UDP)
    assert kernel_cut_udp(frame) == pk


def test_udp_merging_is_off_unless_asked() -> None:
    assert [(s, e) for s, e, _ in offload.coalesce(datagrams(5))] == [(i, i + 1) for i in range(5)]


def test_udp_datagrams_that_must_stay_alone() -> None:
    # A larger datagram after a smaller one ends the run (GSO cuts equal sizes).
    # Another port, a missing IPv4 checksum, a non-consecutive IPv4 id, an empty
    # datagram, a UDP length that disagrees with IP's: each stops a run.
    small_big = datagrams(2, 40) + datagrams(2, 64)
    assert [(s, e) for s, e, _ in offload.coalesce(small_big, udp=True)] == [(0, 2), (2, 4)]
    other_port = bytes(IPv6(src=SRC6, dst=DST6) / UDP(sport=40001, dport=5201) / bytes(64))
    no_csum = bytearray(datagrams(1, 64, v6=False, ip_id=9)[0])
    no_csum[26:28] = b"\0\0"
    odd_id = datagrams(3, 64, v6=False)
    p = IP(odd_id[2])
    p.id, p.chksum = 99, None
    odd_id[2] = bytes(p)
    empty = bytes(IPv6(src=SRC6, dst=DST6) / UDP(sport=40000, dport=5201))
    bad_len = bytearray(datagrams(1, 64)[0])
    bad_len[44:46] = (60).to_bytes(2, "big")
    v6 = datagrams(2, 64)
    pk = [*v6, other_port, *v6, empty, *v6, bytes(bad_len), *v6]
    assert [(s, e) for s, e, _ in offload.coalesce(pk, udp=True)] == [
        (0, 2), (2, 3), (3, 5), (5, 6), (6, 8), (8, 9), (9, 11),
    ]  # fmt: skip
    v4 = [*datagrams(2, 64, v6=False, ip_id=7), bytes(no_csum)]
    assert [(s, e) for s, e, _ in offload.coalesce(v4, udp=True)] == [(0, 2), (2, 3)]
    # Fragments, IPv4 options, another hop limit: never merged with their neighbours.
    frag = bytes(
        IP(src=SRC4, dst=DST4, id=9, flags="MF") / UDP(sport=40000, dport=5201) / bytes(64)
    )
    opts = bytes(
        IP(src=SRC4, dst=DST4, id=10, options=[IPOption_NOP()] * 4)
        / UDP(sport=40000, dport=5201)
        / bytes(64)
    )
    hop = bytes(IPv6(src=SRC6, dst=DST6, hlim=63) / UDP(sport=40000, dport=5201) / bytes(64))
    for odd in (frag, opts):
        assert offload.udp_datagram(odd) is None
    pk = [*datagrams(2, 64), hop, *datagrams(2, 64)]
    assert [(s, e) for s, e, _ in offload.coalesce(pk, udp=True)] == [(0, 2), (2, 3), (3, 5)]
    assert [(s, e) for s, e, _ in offload.coalesce(odd_id, udp=True)] == [(0, 2), (2, 3)]


def test_tcp_and_udp_runs_in_one_batch() -> None:
    tcp = segments(3, 1000, psh_last=False)
    udp = datagrams(4, 200)
    pk = [*tcp, *udp, *tcp[:1]]
    out = offload.coalesce(pk, udp=True)
    assert [(s, e) for s, e, _ in out] == [(0, 3), (3, 7), (7, 8)]
    assert kernel_cut(b"".join(bytes(b) for b in out[0][2])) == tcp
    assert kernel_cut_udp(b"".join(bytes(b) for b in out[1][2])) == udp


def test_a_merged_udp_write_stays_within_one_ip_packet_and_64_datagrams() -> None:
    big = datagrams(60, 1400)
    small = datagrams(100, 64)
    assert [e - s for s, e, _ in offload.coalesce(big, udp=True)] == [46, 14]
    assert [e - s for s, e, _ in offload.coalesce(small, udp=True)] == [64, 36]
    for pk in (big, small):
        frames = writes(pk, udp=True)
        assert all(len(f) - offload.VNET_HDR_LEN - 40 <= offload.COALESCE_MAX_BYTES for f in frames)
        assert [d for f in frames for d in kernel_cut_udp(f)] == pk


_REAL = (
    segments(4, 600, psh_last=False)
    + segments(3, 500, v6=False, psh_last=False)
    + datagrams(4, 100)
    + datagrams(3, 80, v6=False)
)


@given(
    st.lists(
        st.one_of(
            st.binary(max_size=120),
            st.tuples(st.sampled_from(_REAL), st.integers(0, 200), st.integers(0, 255)).map(
                lambda t: t[0][: t[1]] + bytes([t[2]]) + t[0][t[1] + 1 :]
            ),  # one byte changed
            st.tuples(st.sampled_from(_REAL), st.integers(0, 700)).map(lambda t: t[0][: t[1]]),
            st.sampled_from(_REAL),
        ),
        max_size=12,
    ),
    st.booleans(),
)
def test_coalesce_never_raises_and_covers_every_packet(packets: list[bytes], udp: bool) -> None:
    """Whatever an authenticated peer tunnels: no exception escapes, every packet is
    written exactly once and in order, unmerged ones unchanged, merged ones carry the
    payloads in order."""
    out = offload.coalesce(packets, udp=udp)
    assert [k for s, e, _ in out for k in range(s, e)] == list(range(len(packets)))
    for s, e, bufs in out:
        if e - s == 1:
            assert bytes(bufs[0]) == offload.PLAIN_VNET_HDR and bytes(bufs[1]) == packets[s]
        else:
            frame = b"".join(bytes(b) for b in bufs)
            _f, gso_type, hl = offload.VNET_HDR.unpack_from(frame)[:3]
            assert udp or gso_type != offload.VNET_GSO_UDP_L4
            assert frame[offload.VNET_HDR_LEN + hl :] == b"".join(p[hl:] for p in packets[s:e])
