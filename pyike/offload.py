"""Kernel offloads for the data plane, as pure functions on bytes.

The data plane's cost is system calls, not crypto (docs: performance anchors): a
packet costs a TUN read or write and a UDP send or receive. Linux lets one call
carry many packets in three places, and this module holds the arithmetic for each;
pyike.dataplane and pyike.driver do the I/O and fall back to one packet per call
when the kernel refuses a feature.

- UDP GSO (``UDP_SEGMENT``, Linux 4.18): one sendmsg() of N equal-sized ESP packets,
  the kernel cuts it into N datagrams. gso_groups() picks the runs that qualify.
- UDP GRO (``UDP_GRO``, Linux 5.0): one recvmsg() returns several datagrams of one
  flow glued together, with their size in a control message. split_gro() cuts.
- virtio-net header on the TUN device (``IFF_VNET_HDR``): every TUN read and write
  starts with a 10-byte ``struct virtio_net_hdr``. With it, one write may carry a
  TCP "super-packet" that the kernel treats as the segments it stands for (as a NIC
  with GRO hands up). coalesce() merges consecutive in-order segments of one TCP
  flow (the rules of Linux's tcp_gro_receive) into such writes, and runs of equal-sized
  datagrams of one UDP flow into UDP GSO writes (VIRTIO_NET_HDR_GSO_UDP_L4, accepted
  on TUN writes since Linux 6.2).

Python's socket module lacks the UDP_SEGMENT/UDP_GRO constants: they are here.
"""

from __future__ import annotations

import struct
import sys

SOL_UDP = 17
UDP_SEGMENT = 103  # linux/udp.h
UDP_GRO = 104  # linux/udp.h
SO_SNDBUFFORCE = 32  # asm-generic/socket.h: root may exceed net.core.wmem_max
SO_RCVBUFFORCE = 33

# UDP GSO limits (net/ipv4/udp.c): at most UDP_MAX_SEGMENTS datagrams (64 before
# Linux 6.?, 128 after; 64 works everywhere) and one IP packet's worth of payload.
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000  # < 65535 - 40 (IPv6) - 8 (UDP), with room to spare

# struct virtio_net_hdr (linux/virtio_net.h). A TUN device uses the host's byte
# order for it unless TUNSETVNETLE/BE says otherwise, hence "=" (native).
VNET_HDR = struct.Struct("=BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, off
VNET_HDR_LEN = VNET_HDR.size  # 10
VNET_F_NEEDS_CSUM = 1
VNET_GSO_NONE = 0
VNET_GSO_TCPV4 = 1
VNET_GSO_TCPV6 = 4
VNET_GSO_UDP_L4 = 5  # Linux cuts it into gso_size datagrams (net/ipv4/udp_offload.c)
PLAIN_VNET_HDR = bytes(VNET_HDR_LEN)  # "a whole, checksummed packet": every other write

TCP_ACK = 0x10
TCP_PSH = 0x08
_TCP_CSUM_OFFSET = 16  # th->check within the TCP header (RFC 9293 3.1)
_UDP_CSUM_OFFSET = 6  # uh->check within the UDP header (RFC 768)
_UDP_HDR = 8
_IPV6_HDR = 40
_IPV4_HDR = 20  # only option-less IPv4 headers are merged
COALESCE_MAX_BYTES = 65535  # IPv6 payload length / IPv4 total length are 16 bits
COALESCE_MAX_SEGMENTS = 64

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


# --------------------------------------------------------------------------------------
# UDP GSO / GRO (outer ESP-in-UDP socket)


def gso_groups(
    packets: list[bytes], max_segments: int = GSO_MAX_SEGMENTS, max_bytes: int = GSO_MAX_BYTES
) -> list[list[bytes]]:
    """Split ``packets`` (in order) into runs one UDP_SEGMENT sendmsg() may carry.

    The kernel cuts a GSO send into datagrams of the first one's size; only the last
    may be shorter (udp_send_skb). So a run continues while sizes are equal, takes one
    shorter packet as its end, and is capped in count and bytes. Order is kept.
    """
    groups: list[list[bytes]] = []
    run: list[bytes] = []
    size = total = 0
    for p in packets:
        n = len(p)
        if run and n <= size and len(run) < max_segments and total + n <= max_bytes:
            run.append(p)
            total += n
            if n < size:  # a shorter datagram can only be the last of a run
                groups.append(run)
                run = []
            continue
        if run:
            groups.append(run)
        run, size, total = [p], n, n
    if run:
        groups.append(run)
    return groups


def gso_cmsg(segment_size: int) -> list[tuple[int, int, bytes]]:
    """The control message asking for UDP segmentation at ``segment_size`` bytes."""
    return [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", segment_size))]


def gro_segment_size(ancillary: list[tuple[int, int, bytes]]) -> int:
    """The datagram size of a GRO-coalesced receive (0 if the receive is one datagram)."""
    for level, kind, value in ancillary:
        if level == SOL_UDP and kind == UDP_GRO and len(value) >= 2:
            # The kernel puts an int there (udp_cmsg_recv), in host byte order.
            return int.from_bytes(value[:4] if len(value) >= 4 else value[:2], sys.byteorder)
    return 0


def split_gro(data: bytes, segment_size: int) -> list[bytes] | list[memoryview]:
    """The datagrams of a coalesced receive: equal-sized, the last one may be shorter.
    Several come as memoryviews of ``data`` (no copy; the ESP code takes them)."""
    if segment_size <= 0 or len(data) <= segment_size:
        return [data]
    view = memoryview(data)
    return [view[i : i + segment_size] for i in range(0, len(data), segment_size)]


# --------------------------------------------------------------------------------------
# Internet checksum (RFC 1071)


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """The 16-bit one's complement sum of ``data`` (odd length: zero-padded).

    2^16 = 1 (mod 0xFFFF), so the end-around-carry sum of 16-bit words is the value of
    the whole big-endian number mod 0xFFFF; computed in C by int.from_bytes. The one's
    complement zero is returned as 0xFFFF unless every word is zero.
    """
    b = bytes(data)
    if len(b) & 1:
        b += b"\0"
    v = int.from_bytes(b, "big")
    return (v % 0xFFFF or 0xFFFF) if v else 0


def _fold_add(a: int, b: int) -> int:
    s = a + b
    return (s & 0xFFFF) + (s >> 16)


def complete_checksum(pkt: bytes, csum_start: int, csum_offset: int) -> bytes:
    """Finish a CHECKSUM_PARTIAL packet (virtio NEEDS_CSUM): the field at
    csum_start + csum_offset holds the pseudo-header sum; the checksum is the
    complement of the sum from csum_start to the end, that field included."""
    at = csum_start + csum_offset
    if at + 2 > len(pkt):
        raise ValueError("checksum field beyond the packet")
    csum = ~ones_sum(memoryview(pkt)[csum_start:]) & 0xFFFF
    return pkt[:at] + _U16.pack(csum) + pkt[at + 2 :]


def _pseudo_v6(pkt: bytes, upper_len: int, proto: int = 6) -> int:
    # RFC 8200 8.1: source, destination, upper-layer length (32 bits), next header
    return ones_sum(pkt[8:40] + _U32.pack(upper_len) + bytes((0, 0, 0, proto)))


def _pseudo_v4(pkt: bytes, upper_len: int, proto: int = 6) -> int:
    # RFC 9293 3.1 / RFC 768: source, destination, zero, protocol, upper-layer length
    return ones_sum(pkt[12:20] + bytes((0, proto)) + _U16.pack(upper_len))


# --------------------------------------------------------------------------------------
# TCP segment coalescing for GSO writes to the TUN device


def tcp_segment(pkt: bytes) -> tuple[int, int, int, int, int, int] | None:
    """What decides whether ``pkt`` may merge with its neighbours, or None.

    Returns (key, seq, headers length, payload length, TCP flags, IPv4 id): segments
    merge when their keys are equal (every header byte that must match, as Linux's
    tcp_gro_receive requires: addresses, ports, ack, window, options, IP fields)
    and their sequence numbers are contiguous. Only plain data segments qualify:
    flags ACK or ACK|PSH, some payload, no IPv6 extension headers, no IPv4 options
    or fragments. The IPv4 id is -1 for IPv6.

    The key is the headers as one integer with the bytes that differ between
    segments of a flow masked out (lengths, IPv4 id and header checksum, seq, flags,
    TCP checksum): one conversion and one AND instead of a slice per field.
    """
    n = len(pkt)
    if n < 40:
        return None
    b0 = pkt[0]
    if b0 >> 4 == 6:
        # next header TCP (no extension headers) and no bytes after the payload
        if pkt[6] != 6 or (pkt[4] << 8 | pkt[5]) + _IPV6_HDR != n:
            return None
        t, ip_id = _IPV6_HDR, -1
    elif b0 == 0x45:
        # TCP, total length = what we have, no fragment (MF clear, offset 0)
        if pkt[9] != 6 or (pkt[2] << 8 | pkt[3]) != n or pkt[6] & 0x3F or pkt[7]:
            return None
        t, ip_id = _IPV4_HDR, pkt[4] << 8 | pkt[5]
    else:
        return None
    if n < t + 20:
        return None  # truncated TCP header
    thl = (pkt[t + 12] >> 4) * 4
    hl = t + thl
    flags = pkt[t + 13]
    if thl < 20 or hl >= n or flags & ~TCP_PSH != TCP_ACK:
        return None  # no payload, or SYN/FIN/RST/URG/ECE/CWR: never merged
    mask = _KEY_MASKS.get(hl + t * 256) or _key_mask(t, thl)
    key = int.from_bytes(pkt[:hl], "big") & mask
    seq = pkt[t + 4] << 24 | pkt[t + 5] << 16 | pkt[t + 6] << 8 | pkt[t + 7]
    return key, seq, hl, n - hl, flags, ip_id


_KEY_MASKS: dict[int, int] = {}


def _key_mask(ip_len: int, thl: int) -> int:
    """The mask of header bytes that must be equal for a merge (see tcp_segment)."""
    varying = [(ip_len + 4, 4), (ip_len + 13, 1), (ip_len + 16, 2)]  # seq, flags, check
    if ip_len == _IPV6_HDR:
        varying.append((4, 2))  # payload length
    else:
        varying += [(2, 2), (4, 2), (10, 2)]  # total length, id, header checksum
    m = bytearray(b"\xff" * (ip_len + thl))
    for at, size in varying:
        m[at : at + size] = bytes(size)
    mask = int.from_bytes(m, "big")
    _KEY_MASKS[ip_len + thl + ip_len * 256] = mask
    return mask


def udp_datagram(pkt: bytes) -> tuple[object, int, int, int, int, int] | None:
    """What decides whether the UDP datagram ``pkt`` may merge with its neighbours, or
    None: the shape of tcp_segment()'s answer, with seq -1 and flags 0.

    Datagrams merge when their keys are equal (addresses, ports and every IP field
    Linux's UDP GSO copies from the first into each datagram it cuts) and all but
    the last have the first's payload size: the kernel then cuts the write back into
    the very same datagrams. Only datagrams with some payload and a checksum (IPv4
    allows 0, "none": GSO would add one) qualify; no IPv6 extension headers, no IPv4
    options or fragments. The key is a tuple of the header's constant parts, read by
    one unpack_from (half the cost of a byte-by-byte parse, which matters at 64-byte
    packets).
    """
    n = len(pkt)
    if n <= _IPV4_HDR + _UDP_HDR:
        return None
    b0 = pkt[0]
    if b0 >> 4 == 6:
        if n <= _IPV6_HDR + _UDP_HDR:
            return None
        head, plen, rest, ulen, csum = _UDP6.unpack_from(pkt)
        if rest[0] != 17 or plen + _IPV6_HDR != n or ulen != plen or not csum:
            return None  # not UDP, lengths that disagree, or no checksum
        return (head, rest), -1, _IPV6_HDR + _UDP_HDR, n - _IPV6_HDR - _UDP_HDR, 0, -1
    if b0 == 0x45:
        tos, total, ip_id, frag, ttl_proto, rest, ulen, csum = _UDP4.unpack_from(pkt)
        if (
            ttl_proto[1] != 17
            or total != n
            or ulen != n - _IPV4_HDR
            or not csum
            or frag[0] & 0x3F  # MF or an offset: a fragment
            or frag[1]
        ):
            return None
        key = (tos, frag, ttl_proto, rest)
        return key, -1, _IPV4_HDR + _UDP_HDR, n - _IPV4_HDR - _UDP_HDR, 0, ip_id
    return None


# The constant parts of the headers as a few fields (see udp_datagram): IPv6 version,
# class and flow label | payload length | next header, hop limit, addresses and
# ports | UDP length | checksum; IPv4 version+TOS | total length | id | flags and
# offset | TTL and protocol | (header checksum) | addresses and ports | UDP length |
# checksum.
_UDP6 = struct.Struct(">4sH38sHH")
_UDP4 = struct.Struct(">2sHH2s2s2x12sHH")


def coalesce(
    packets: list[bytes] | list[memoryview], *, udp: bool = False
) -> list[tuple[int, int, list[bytes | memoryview]]]:
    """TUN writes for ``packets`` (in order): (start, end, buffers for os.writev()),
    the write carrying packets[start:end].

    Runs of in-order segments of one TCP flow, equal payload sizes (the last may be
    shorter, as in a GSO packet), become one write: a virtio header asking for TCP
    GSO with gso_size = that payload size and NEEDS_CSUM, the first segment's IP and
    TCP headers with the lengths of the whole, the last one's flags (PSH), and the
    pseudo-header sum as partial checksum (the kernel sums the rest, like a NIC).
    With ``udp``, runs of datagrams of one UDP flow with equal payload sizes (the
    last may be shorter) become one UDP GSO write the same way. Every other packet
    is written alone behind a zero virtio header, unchanged.

    Trusting the merged payload without re-checking each segment's TCP checksum is
    what a NIC with receive offload does; here every byte was authenticated by the
    ESP ICV (RFC 4303 3.4.4) on the way in.
    """
    if udp:
        info = [tcp_segment(p) or udp_datagram(p) for p in packets]  # type: ignore[arg-type]  # bytes | memoryview (perf)
    else:
        info = [tcp_segment(p) for p in packets]  # type: ignore[arg-type]  # bytes | memoryview (perf)
    out: list[tuple[int, int, list[bytes | memoryview]]] = []
    i, n = 0, len(packets)
    while i < n:
        first = info[i]
        j = i + 1
        if first is not None and not first[4] & TCP_PSH:
            key, seq, hl, size, _flags, ip_id = first
            tcp = seq >= 0  # UDP has no sequence space: equal keys and sizes suffice
            expect = (seq + size) & 0xFFFFFFFF
            total = hl + size
            while j < n and j - i < COALESCE_MAX_SEGMENTS:
                s = info[j]
                if (
                    s is None
                    or s[0] != key
                    or (tcp and s[1] != expect)
                    or s[3] > size
                    or total + s[3] > COALESCE_MAX_BYTES
                    or (ip_id >= 0 and s[5] != (ip_id + j - i) & 0xFFFF)
                ):
                    break
                total += s[3]
                expect = (expect + s[3]) & 0xFFFFFFFF
                j += 1
                if s[3] < size or s[4] & TCP_PSH:  # a short or PSH segment ends it
                    break
        if j - i == 1:
            out.append((i, j, [PLAIN_VNET_HDR, packets[i]]))
        else:
            out.append((i, j, _merged(packets, info, i, j, total)))  # type: ignore[arg-type]  # bytes | memoryview (perf)
        i = j
    return out


def _merged(
    packets: list[bytes], info: list, i: int, j: int, total: int
) -> list[bytes | memoryview]:
    """The writev() buffers of segments or datagrams i..j-1 merged into one GSO
    super-packet."""
    _key, seq, hl, size, _flags, _id = info[i]
    p = bytes(packets[i][:hl])  # the headers (the packets may be memoryviews)
    v6 = p[0] >> 4 == 6
    t = _IPV6_HDR if v6 else _IPV4_HDR
    l4_len = total - t
    if v6:
        ip = p[0:4] + _U16.pack(l4_len) + p[6:40]
    else:
        ip = p[0:2] + _U16.pack(total) + p[4:10] + b"\0\0" + p[12:20]
        ip = ip[:10] + _U16.pack(~ones_sum(ip) & 0xFFFF) + ip[12:]
    if seq < 0:  # UDP (udp_datagram)
        pseudo = _pseudo_v6(p, l4_len, 17) if v6 else _pseudo_v4(p, l4_len, 17)
        l4 = p[t : t + 4] + _U16.pack(l4_len) + _U16.pack(pseudo)
        gso, csum_offset = VNET_GSO_UDP_L4, _UDP_CSUM_OFFSET
    else:
        pseudo = _pseudo_v6(p, l4_len) if v6 else _pseudo_v4(p, l4_len)
        l4 = (
            p[t : t + 13]
            + bytes((info[j - 1][4],))  # the last segment's flags (PSH)
            + p[t + 14 : t + 16]
            + _U16.pack(pseudo)
            + p[t + 18 : hl]
        )
        gso = VNET_GSO_TCPV6 if v6 else VNET_GSO_TCPV4
        csum_offset = _TCP_CSUM_OFFSET
    vnet = VNET_HDR.pack(VNET_F_NEEDS_CSUM, gso, hl, size, t, csum_offset)
    bufs: list[bytes | memoryview] = [vnet + ip + l4]
    for k in range(i, j):
        bufs.append(memoryview(packets[k])[info[k][2] :])
    return bufs
