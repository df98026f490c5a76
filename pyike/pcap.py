"""Reading UDP datagrams out of packet captures, and writing small captures (stdlib only).

Used by ``pyike decode`` (IKE messages from a capture) and by tests.

Reading (``read_capture``):
  * pcap: both byte orders, microsecond (0xa1b2c3d4) and nanosecond (0xa1b23c4d) magic
    (https://www.ietf.org/archive/id/draft-ietf-opsawg-pcap-04.html).
  * pcapng: Section Header Blocks in either byte order (a file may hold several sections),
    Interface Description Blocks with per-interface link type, if_tsresol and
    if_tsoffset, Enhanced/Simple/obsolete Packet Blocks; other blocks are skipped
    (https://www.ietf.org/archive/id/draft-ietf-opsawg-pcapng-02.html).
  * link types: NULL (0) and LOOP (108) with their address-family word, Ethernet (1,
    with 802.1Q/802.1ad VLAN tags), RAW (101, and OpenBSD's DLT values 12/14),
    LINUX_SLL (113), LINUX_SLL2 (276), IPV4 (228), IPV6 (229).
  * IPv4 honours IHL and Total Length (Ethernet padding is not payload); IPv6 walks
    Hop-by-Hop, Routing and Destination Options headers (RFC 8200 section 4).
    IP fragments are skipped, the first one included: there is no reassembly, and a
    first fragment's UDP payload would be silently incomplete.
  * only UDP datagrams are yielded; anything else is passed over.

A file that is not a capture, or whose file header is cut short, raises ``CaptureError``.
A capture cut short in its last packet (a capture killed while writing) ends the
iteration with a logged warning, as tcpdump and tshark do.

Writing (``write_pcap``) produces LINKTYPE_RAW pcap files with correct IPv4 header and
UDP checksums, readable by tcpdump and tshark.
"""

from __future__ import annotations

import io
import logging
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

IP_PROTO_UDP = 17
IKE_PORT = 500
NATT_PORT = 4500  # RFC 3948 section 2

# Link types (https://www.tcpdump.org/linktypes.html)
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
# OpenBSD writes its own DLT numbers into pcap files: DLT_LOOP is 12 and DLT_RAW is 14
# there, while 12 is DLT_RAW on other systems. Both are sniffed (see _link_payload).
_OPENBSD_DLT_12 = 12
_OPENBSD_DLT_14 = 14

_PCAP_MAGIC_US = 0xA1B2C3D4
_PCAP_MAGIC_NS = 0xA1B23C4D
_PCAPNG_SHB = 0x0A0D0D0A
_PCAPNG_BOM = 0x1A2B3C4D
_PCAPNG_IDB = 1
_PCAPNG_OPB = 2  # obsolete Packet Block
_PCAPNG_SPB = 3
_PCAPNG_EPB = 6
_OPT_END = 0
_OPT_IF_TSRESOL = 9
_OPT_IF_TSOFFSET = 14

_ETHERTYPE_IPV4 = 0x0800
_ETHERTYPE_IPV6 = 0x86DD
_ETHERTYPE_VLANS = (0x8100, 0x88A8, 0x9100)
_AF_INET = 2
_AF_INET6 = (10, 24, 28, 30)  # Linux, OpenBSD/NetBSD, FreeBSD, macOS

_MAX_BLOCK = 64 * 1024 * 1024  # larger pcapng blocks or records are corruption
_MAX_VLAN_TAGS = 4
_MAX_IPV6_EXT_HEADERS = 16
_IPV6_SKIPPABLE = {0: "hop-by-hop", 43: "routing", 60: "destination options"}
_IPV6_FRAGMENT = 44


class CaptureError(Exception):
    """Not a capture file, or a file header that is cut short or corrupt."""


@dataclass(slots=True)
class Datagram:
    """One UDP datagram: the addressing and the UDP payload."""

    timestamp: float
    src: IPv4Address | IPv6Address
    sport: int
    dst: IPv4Address | IPv6Address
    dport: int
    payload: bytes


# ---------------------------------------------------------------------------
# IP and UDP


def _udp(
    ts: float, src: IPv4Address | IPv6Address, dst: IPv4Address | IPv6Address, seg: bytes
) -> Datagram | None:
    """UDP header (RFC 768): the Length field bounds the payload."""
    if len(seg) < 8:
        return None
    sport, dport, length = struct.unpack_from("!HHH", seg)
    if length < 8:
        return None
    if length > len(seg):
        log.warning(
            "UDP datagram %s:%d -> %s:%d was cut short by the capture's snap length",
            src,
            sport,
            dst,
            dport,
        )
        return None
    return Datagram(ts, src, sport, dst, dport, bytes(seg[8:length]))


def _ipv4(ts: float, pkt: bytes) -> Datagram | None:
    """IPv4 header (RFC 791 section 3.1)."""
    if len(pkt) < 20:
        return None
    ihl = (pkt[0] & 0x0F) * 4
    total, frag = struct.unpack_from("!H2xH", pkt, 2)
    if ihl < 20 or total < ihl or len(pkt) < ihl:
        return None
    if frag & 0x3FFF:  # MF flag or a fragment offset: part of a fragmented datagram
        log.debug("skipping an IPv4 fragment (no reassembly)")
        return None
    if pkt[9] != IP_PROTO_UDP:
        return None
    src = IPv4Address(pkt[12:16])
    dst = IPv4Address(pkt[16:20])
    return _udp(ts, src, dst, pkt[ihl:total])


def _ipv6(ts: float, pkt: bytes) -> Datagram | None:
    """IPv6 header and extension header chain (RFC 8200 sections 3 and 4)."""
    if len(pkt) < 40:
        return None
    (plen,) = struct.unpack_from("!H", pkt, 4)
    nxt = pkt[6]
    src = IPv6Address(pkt[8:24])
    dst = IPv6Address(pkt[24:40])
    body = pkt[40 : 40 + plen]
    for _ in range(_MAX_IPV6_EXT_HEADERS):
        if nxt == IP_PROTO_UDP:
            return _udp(ts, src, dst, body)
        if nxt == _IPV6_FRAGMENT:
            log.debug("skipping an IPv6 fragment (no reassembly)")
            return None
        if nxt not in _IPV6_SKIPPABLE or len(body) < 8:
            return None
        # Hdr Ext Len counts 8-octet units after the first 8 (RFC 8200 4.3, 4.4, 4.6).
        nxt, hlen = body[0], (body[1] + 1) * 8
        body = body[hlen:]
    return None


def _ip(ts: float, pkt: bytes) -> Datagram | None:
    if not pkt:
        return None
    version = pkt[0] >> 4
    if version == 4:
        return _ipv4(ts, pkt)
    if version == 6:
        return _ipv6(ts, pkt)
    return None


def _by_ethertype(ts: float, ethertype: int, pkt: bytes) -> Datagram | None:
    if ethertype == _ETHERTYPE_IPV4:
        return _ipv4(ts, pkt)
    if ethertype == _ETHERTYPE_IPV6:
        return _ipv6(ts, pkt)
    return None


def _by_family(ts: float, family: int, pkt: bytes) -> Datagram | None:
    if family == _AF_INET:
        return _ipv4(ts, pkt)
    if family in _AF_INET6:
        return _ipv6(ts, pkt)
    return None


# ---------------------------------------------------------------------------
# Link layers


def _ethernet(ts: float, frame: bytes) -> Datagram | None:
    if len(frame) < 14:
        return None
    (ethertype,) = struct.unpack_from("!H", frame, 12)
    offset = 14
    for _ in range(_MAX_VLAN_TAGS):  # 802.1Q / 802.1ad tags: TCI then the inner type
        if ethertype not in _ETHERTYPE_VLANS:
            break
        if len(frame) < offset + 4:
            return None
        (ethertype,) = struct.unpack_from("!H", frame, offset + 2)
        offset += 4
    return _by_ethertype(ts, ethertype, frame[offset:])


def _null(ts: float, frame: bytes, big_endian_only: bool) -> Datagram | None:
    """BSD loopback: a 4-byte address family, in the capturing host's byte order for
    LINKTYPE_NULL (so either order) and in network byte order for LINKTYPE_LOOP."""
    if len(frame) < 4:
        return None
    (family,) = struct.unpack_from("!I", frame)
    if not big_endian_only and family > 0xFFFF:
        (family,) = struct.unpack_from("<I", frame)
    return _by_family(ts, family, frame[4:])


def _link_payload(linktype: int, ts: float, frame: bytes) -> Datagram | None:
    if linktype == LINKTYPE_ETHERNET:
        return _ethernet(ts, frame)
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        return _ip(ts, frame)
    if linktype == LINKTYPE_LINUX_SLL:  # 16-byte header, protocol (ethertype) at 14
        if len(frame) < 16:
            return None
        return _by_ethertype(ts, struct.unpack_from("!H", frame, 14)[0], frame[16:])
    if linktype == LINKTYPE_LINUX_SLL2:  # 20-byte header, protocol (ethertype) at 0
        if len(frame) < 20:
            return None
        return _by_ethertype(ts, struct.unpack_from("!H", frame, 0)[0], frame[20:])
    if linktype == LINKTYPE_NULL:
        return _null(ts, frame, big_endian_only=False)
    if linktype == LINKTYPE_LOOP:
        return _null(ts, frame, big_endian_only=True)
    if linktype in (_OPENBSD_DLT_12, _OPENBSD_DLT_14):
        # Raw IP starts with version nibble 4 or 6; a loopback header starts with 0.
        if frame and frame[0] >> 4 in (4, 6):
            return _ip(ts, frame)
        return _null(ts, frame, big_endian_only=False)
    return None


SUPPORTED_LINKTYPES = frozenset(
    {
        LINKTYPE_NULL,
        LINKTYPE_ETHERNET,
        LINKTYPE_RAW,
        LINKTYPE_LOOP,
        LINKTYPE_LINUX_SLL,
        LINKTYPE_IPV4,
        LINKTYPE_IPV6,
        LINKTYPE_LINUX_SLL2,
        _OPENBSD_DLT_12,
        _OPENBSD_DLT_14,
    }
)


# ---------------------------------------------------------------------------
# File formats


def _truncated(where: str) -> None:
    log.warning("capture ends in the middle of %s; stopping there", where)


def _pcap(f: BinaryIO, header: bytes) -> Iterator[Datagram]:
    """Classic pcap: 24-byte file header, then 16-byte record headers."""
    if len(header) < 24:
        raise CaptureError("pcap file header is cut short")
    magic_le = struct.unpack_from("<I", header)[0]
    bo = "<" if magic_le in (_PCAP_MAGIC_US, _PCAP_MAGIC_NS) else ">"
    magic = struct.unpack_from(bo + "I", header)[0]
    ts_div = 1e9 if magic == _PCAP_MAGIC_NS else 1e6
    major, _minor, _zone, _sigfigs, _snaplen, network = struct.unpack_from(bo + "HHiIII", header, 4)
    if major != 2:
        raise CaptureError(f"unsupported pcap version {major}")
    linktype = network & 0xFFFF  # upper bits may carry FCS information
    if linktype not in SUPPORTED_LINKTYPES:
        raise CaptureError(f"unsupported link type {linktype} in pcap file")
    record = struct.Struct(bo + "IIII")
    while True:
        rh = f.read(16)
        if not rh:
            return
        if len(rh) < 16:
            _truncated("a packet record header")
            return
        sec, frac, incl, _orig = record.unpack(rh)
        if incl > _MAX_BLOCK:
            log.warning("pcap record claims %d bytes; capture is corrupt, stopping", incl)
            return
        data = f.read(incl)
        if len(data) < incl:
            _truncated("a packet")
            return
        d = _link_payload(linktype, sec + frac / ts_div, data)
        if d is not None:
            yield d


@dataclass(slots=True)
class _Interface:
    linktype: int
    ts_units: float = 1e-6  # seconds per timestamp unit (if_tsresol, default 10^-6)
    ts_offset: int = 0  # if_tsoffset, seconds


def _idb_options(bo: str, opts: bytes, iface: _Interface) -> None:
    """Options are code(2) length(2) value padded to 4 (pcapng section 3.5)."""
    pos = 0
    while pos + 4 <= len(opts):
        code, length = struct.unpack_from(bo + "HH", opts, pos)
        value = opts[pos + 4 : pos + 4 + length]
        if code == _OPT_END or len(value) < length:
            break
        if code == _OPT_IF_TSRESOL and length == 1:
            v = value[0]
            # MSB clear: 10^-v seconds; MSB set: 2^-(v & 0x7f) seconds (pcapng 4.2).
            iface.ts_units = 2.0 ** -(v & 0x7F) if v & 0x80 else 10.0**-v
        elif code == _OPT_IF_TSOFFSET and length == 8:
            (iface.ts_offset,) = struct.unpack(bo + "q", value)
        pos += 4 + length + (-length % 4)


def _pcapng(f: BinaryIO, first: bytes) -> Iterator[Datagram]:
    """pcapng: a sequence of blocks type(4) length(4) body length(4)."""
    bo = "<"
    interfaces: list[_Interface] = []
    pending = first
    in_header = True  # errors in the first SHB are CaptureErrors, later ones warnings
    warned_linktypes: set[int] = set()
    while True:
        head = pending + f.read(8 - len(pending))
        pending = b""
        if not head:
            return
        if len(head) < 8:
            if in_header:
                raise CaptureError("pcapng section header is cut short")
            _truncated("a block header")
            return
        btype_le = struct.unpack_from("<I", head)[0]
        if btype_le == _PCAPNG_SHB:
            # The byte-order magic follows the length; the length needs that order.
            bom = f.read(4)
            if len(bom) < 4:
                if in_header:
                    raise CaptureError("pcapng section header is cut short")
                _truncated("a section header")
                return
            if struct.unpack("<I", bom)[0] == _PCAPNG_BOM:
                bo = "<"
            elif struct.unpack(">I", bom)[0] == _PCAPNG_BOM:
                bo = ">"
            else:
                raise CaptureError("pcapng section header has a bad byte-order magic")
            (blen,) = struct.unpack_from(bo + "I", head, 4)
            if blen < 28 or blen % 4 or blen > _MAX_BLOCK:
                raise CaptureError(f"pcapng section header has a bad length {blen}")
            rest = f.read(blen - 12)
            if len(rest) < blen - 12:
                if in_header:
                    raise CaptureError("pcapng section header is cut short")
                _truncated("a section header")
                return
            (major,) = struct.unpack_from(bo + "H", rest)
            if major != 1:
                raise CaptureError(f"unsupported pcapng version {major}")
            interfaces = []  # interface ids are per section
            in_header = False
            continue
        btype, blen = struct.unpack_from(bo + "II", head)
        if blen < 12 or blen % 4 or blen > _MAX_BLOCK:
            log.warning("pcapng block of type %#x has a bad length %d; stopping", btype, blen)
            return
        body_and_trailer = f.read(blen - 8)
        if len(body_and_trailer) < blen - 8:
            _truncated("a block")
            return
        body = body_and_trailer[:-4]
        if btype == _PCAPNG_IDB:
            if len(body) < 8:
                log.warning("pcapng interface block is too short; stopping")
                return
            (linktype,) = struct.unpack_from(bo + "H", body)
            iface = _Interface(linktype)
            _idb_options(bo, body[8:], iface)
            interfaces.append(iface)
            continue
        if btype in (_PCAPNG_EPB, _PCAPNG_OPB):
            if len(body) < 20:
                continue
            if btype == _PCAPNG_EPB:
                if_id, ts_hi, ts_lo, caplen, _orig = struct.unpack_from(bo + "IIIII", body)
            else:
                if_id, _drops, ts_hi, ts_lo, caplen, _orig = struct.unpack_from(bo + "HHIIII", body)
            data = body[20 : 20 + caplen]
        elif btype == _PCAPNG_SPB:
            if len(body) < 4:
                continue
            # No timestamp and no interface id (interface 0); the captured length is
            # the smaller of the original length and what the block holds.
            (orig,) = struct.unpack_from(bo + "I", body)
            if_id, ts_hi, ts_lo = 0, 0, 0
            data = body[4 : 4 + orig]
        else:
            continue  # statistics, name resolution, custom blocks...
        if if_id >= len(interfaces):
            log.warning("pcapng packet refers to undeclared interface %d; skipped", if_id)
            continue
        iface = interfaces[if_id]
        if iface.linktype not in SUPPORTED_LINKTYPES:
            if iface.linktype not in warned_linktypes:
                warned_linktypes.add(iface.linktype)
                log.warning("skipping packets of unsupported link type %d", iface.linktype)
            continue
        if btype == _PCAPNG_SPB:
            ts = 0.0  # an SPB has no timestamp
        else:
            ts = ((ts_hi << 32) | ts_lo) * iface.ts_units + iface.ts_offset
        d = _link_payload(iface.linktype, ts, data)
        if d is not None:
            yield d


def iter_capture(f: BinaryIO) -> Iterator[Datagram]:
    """UDP datagrams from an open binary capture stream (pcap or pcapng).

    The file header is checked before the first datagram is read: a stream that is not
    a capture raises CaptureError on the first ``next()``.
    """
    first = f.read(4)
    if len(first) < 4:
        raise CaptureError("not a capture file (too short)")
    (magic_le,) = struct.unpack("<I", first)
    (magic_be,) = struct.unpack(">I", first)
    if magic_le == _PCAPNG_SHB:  # a palindrome: the same in both byte orders
        yield from _pcapng(f, first)
    elif _PCAP_MAGIC_US in (magic_le, magic_be) or _PCAP_MAGIC_NS in (magic_le, magic_be):
        yield from _pcap(f, first + f.read(20))
    else:
        raise CaptureError("not a pcap or pcapng file (unknown magic number)")


def read_capture(path: Path | str) -> Iterator[Datagram]:
    """UDP datagrams from a pcap or pcapng file, in file order.

    Raises CaptureError at once if the file cannot be opened or is not a capture.
    """
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the generator below
    except OSError as e:
        raise CaptureError(f"{path}: {e.strerror}") from None
    try:
        it = iter_capture(f)
        first = next(it, None)
    except BaseException:
        f.close()
        raise

    def gen() -> Iterator[Datagram]:
        with f:
            if first is not None:
                yield first
                yield from it

    return gen()


def parse_capture(data: bytes) -> list[Datagram]:
    """All UDP datagrams of a capture held in memory."""
    return list(iter_capture(io.BytesIO(data)))


# ---------------------------------------------------------------------------
# IKE over UDP (RFC 7296 section 2, RFC 3948)


def ike_payload(d: Datagram) -> bytes | None:
    """The IKE message a datagram carries, or None.

    Port 500 carries IKE messages as they are. Port 4500 carries three things
    (RFC 3948 section 2): IKE messages after a 4-byte zero Non-ESP Marker (2.2),
    ESP packets, whose first 4 bytes are a non-zero SPI (2.1), and NAT-keepalives,
    a single 0xFF byte (2.3). Only the first yields a message here.
    """
    if NATT_PORT in (d.sport, d.dport):
        if len(d.payload) >= 4 and d.payload[:4] == b"\0\0\0\0":
            return d.payload[4:]
        return None
    if IKE_PORT in (d.sport, d.dport):
        return d.payload
    return None


def is_esp(d: Datagram) -> bool:
    """UDP-encapsulated ESP (RFC 3948 section 2.1): port 4500, non-zero SPI, and at
    least the SPI and Sequence Number fields."""
    return NATT_PORT in (d.sport, d.dport) and len(d.payload) >= 8 and d.payload[:4] != b"\0\0\0\0"


def is_nat_keepalive(d: Datagram) -> bool:
    """A NAT-keepalive: one 0xFF byte on port 4500 (RFC 3948 section 2.3)."""
    return NATT_PORT in (d.sport, d.dport) and d.payload == b"\xff"


# ---------------------------------------------------------------------------
# Writing


def _checksum(data: bytes) -> int:
    """Internet checksum (RFC 1071): one's complement of the one's complement sum."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def build_ip_udp(d: Datagram, ident: int = 0) -> bytes:
    """An IPv4 or IPv6 packet carrying ``d`` as UDP, checksums filled in."""
    if d.src.version != d.dst.version:
        raise ValueError(f"address families differ: {d.src} -> {d.dst}")
    udp_len = 8 + len(d.payload)
    if udp_len > 0xFFFF:
        raise ValueError(f"UDP payload of {len(d.payload)} bytes does not fit a datagram")
    if d.src.version == 4:
        # RFC 768: pseudo header src, dst, zero, protocol, UDP length.
        pseudo = d.src.packed + d.dst.packed + struct.pack("!BBH", 0, IP_PROTO_UDP, udp_len)
    else:
        # RFC 8200 section 8.1: src, dst, upper-layer length (32), zero (24), next header.
        pseudo = d.src.packed + d.dst.packed + struct.pack("!I3xB", udp_len, IP_PROTO_UDP)
    udp = struct.pack("!HHHH", d.sport, d.dport, udp_len, 0) + d.payload
    csum = _checksum(pseudo + udp) or 0xFFFF  # a computed 0 is sent as all ones
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    if d.src.version == 4:
        total = 20 + udp_len
        if total > 0xFFFF:
            raise ValueError(f"UDP payload of {len(d.payload)} bytes does not fit IPv4")
        hdr = struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            total,
            ident & 0xFFFF,
            0x4000,
            64,
            IP_PROTO_UDP,
            0,
            d.src.packed,
            d.dst.packed,
        )  # DF set, TTL 64
        hdr = hdr[:10] + struct.pack("!H", _checksum(hdr)) + hdr[12:]
        return hdr + udp
    hdr = struct.pack("!IHBB16s16s", 6 << 28, udp_len, IP_PROTO_UDP, 64, d.src.packed, d.dst.packed)
    return hdr + udp


def write_pcap(path: Path | str, datagrams: Iterable[Datagram]) -> int:
    """Write datagrams as a LINKTYPE_RAW pcap file (microsecond timestamps, little
    endian). Returns the number of packets written."""
    count = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", _PCAP_MAGIC_US, 2, 4, 0, 0, 262144, LINKTYPE_RAW))
        for d in datagrams:
            pkt = build_ip_udp(d, ident=count + 1)
            usec_total = round(d.timestamp * 1_000_000)
            sec, usec = divmod(usec_total, 1_000_000)
            f.write(struct.pack("<IIII", sec, usec, len(pkt), len(pkt)))
            f.write(pkt)
            count += 1
    return count


# ---------------------------------------------------------------------------
# Hex input (pyike decode --hex)


class HexError(ValueError):
    """Text that is not hex bytes; the message gives the line number."""


_OFFSET_LABEL = re.compile(r"^\s*(0x)?[0-9a-fA-F]+:\s")
_HEX_TOKEN = re.compile(r"(?:0[xX])?([0-9a-fA-F]+)")


def _hex_line(line: str, lineno: int) -> bytes:
    text = line.split("#", 1)[0]
    text = _OFFSET_LABEL.sub("", text, count=1)  # "0x0010:  4500 ..." (tcpdump -x)
    digits = []
    for token in re.split(r"[\s:,]+", text.strip()):
        if not token:
            continue
        m = _HEX_TOKEN.fullmatch(token)
        if m is None:
            raise HexError(f"line {lineno}: {token!r} is not hex")
        digits.append(m.group(1))
    joined = "".join(digits)
    if len(joined) % 2:
        raise HexError(f"line {lineno}: odd number of hex digits")
    return bytes.fromhex(joined)


def read_hex(text: str, *, per_line: bool | None = None) -> list[bytes]:
    """Messages written in hex, for ``pyike decode --hex``.

    ``per_line=True``: each line is one message. ``per_line=False``: blank lines separate
    messages and a message may span several lines (a wrapped dump such as
    ``xxd -p``). ``None`` (default) picks the second if the text has a blank line
    between messages or dump offsets, else the first. Tolerated: spaces, colons and
    commas between bytes, ``0x`` prefixes, tcpdump-style ``0x0010:`` line offsets, and
    ``#`` comments (a line holding only a comment separates nothing). Raises HexError.
    """
    entries: list[bytes | None] = []  # None marks a blank line
    has_offsets = False
    for n, raw in enumerate(text.splitlines(), 1):
        if raw.split("#", 1)[0].strip():
            entries.append(_hex_line(raw, n))
            has_offsets = has_offsets or bool(_OFFSET_LABEL.match(raw))
        elif not raw.strip():
            entries.append(None)
    data_at = [i for i, e in enumerate(entries) if e is not None]
    if not data_at:
        return []
    entries = entries[data_at[0] : data_at[-1] + 1]
    if per_line is None:
        per_line = None not in entries and not has_offsets
    if per_line:
        return [e for e in entries if e]
    messages: list[bytes] = []
    current = b""
    for e in entries:
        if e is None:
            if current:
                messages.append(current)
            current = b""
        else:
            current += e
    if current:
        messages.append(current)
    return messages
