"""The sans-IO ESP codec: RFC 4303 packets, RFC 4106 AES-GCM, RFC 3948 UDP framing.

No sockets, no clocks, no threads: bytes in, bytes (or a typed drop) out. The driver
owns I/O; the IKE core owns keys, lifetimes and rekeying and reads the counters here.

Where things are:
  ReplayWindow        anti-replay window and ESN inference (RFC 4303 3.4.3, Appendix A2)
  OutboundSa.seal     inner packet -> ESP packet (header, IV, encryption, ICV)
  InboundSa.open      ESP packet -> inner packet, with every receive check in RFC order
  InboundSa.unprotect the cryptographic half of open() only (for captures and vectors)
  parse_flow          the inner IPv4/IPv6 header fields that traffic selectors look at
  Spd                 outbound: which Child SA carries this inner packet
  Sad                 inbound: which Child SA an ESP packet belongs to (by SPI)
  tunnel_mtu          the largest inner packet that fits a path MTU
  classify_udp_encap  ESP vs IKE vs NAT-keepalive on port 4500 (RFC 3948 2.2, 2.3)

Suites: the AEADs AES-GCM with a 16-byte ICV (RFC 4106) and ChaCha20-Poly1305 (RFC 7634),
and AES-CBC (RFC 3602) with HMAC-SHA1-96 (RFC 2404) or HMAC-SHA2-256-128/384-192/512-256
(RFC 4868); their sizes and constructors come from pyike.algorithms. OutboundSa(...) and
InboundSa(...) return a suite-specific subclass, so seal()/open() run no per-packet
dispatch. The two AEADs share one subclass: same framing, different cipher object.

Hot-path notes (measured with tools/bench_esp.py; see shared/notes/performance-anchors.md):
  * Cipher/AEAD objects are built once per SA. Creating a `cryptography` CBC context costs
    about 10 us here (more than the encryption), so each CBC SA keeps one long-lived CBC
    encryptor and decryptor and corrects the first block for the per-packet IV (see
    _CbcOutboundSa.seal): the output is exactly CBC with that IV.
  * Drops raise EspDrop; in Python 3.11 `try` costs nothing when nothing is raised, so
    the success path pays no price for the exception style.
  * Not thread-safe: one SA is driven by one thread (give each queue its own SA).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from pyike import algorithms
from pyike.registry import EncrId, IntegId, IpProto

__all__ = [
    "ANY_SELECTORS",
    "DropReason",
    "EspDrop",
    "InboundSa",
    "OutboundSa",
    "ReplayWindow",
    "Sad",
    "Selector",
    "SelectorLike",
    "SequenceOverflow",
    "Spd",
    "Suite",
    "Udp4500",
    "classify_udp_encap",
    "parse_flow",
    "suite_of",
    "tunnel_mtu",
]

# --------------------------------------------------------------------------------------
# Wire constants (RFC 4303 2)

ESP_HEADER_LEN = 8  # SPI (4) + Sequence Number (4), RFC 4303 2.1/2.2
TRAILER_LEN = 2  # Pad Length (1) + Next Header (1), RFC 4303 2.4/2.6
SEQ32_MAX = 0xFFFFFFFF
SEQ64_MAX = 0xFFFFFFFFFFFFFFFF

_MASK32 = 0xFFFFFFFF
_HEADER = struct.Struct(">II")  # SPI, Sequence Number (low 32 bits)
_HEADER_IV64 = struct.Struct(">IIQ")  # SPI, Sequence Number, 8-byte GCM IV
_AAD_ESN = struct.Struct(">III")  # SPI, Seq high, Seq low: RFC 4106 5
_SEQ_HI = struct.Struct(">I")  # implicit high bits appended to the ICV input, RFC 4303 3.3.2.1
_NONCE = struct.Struct(">IQ")  # salt (4 bytes) || IV (8 bytes), RFC 4106 4

# RFC 4303 2.4: default padding is 1, 2, 3, ... ; _PAD[n] is the n-byte padding.
_PAD: list[bytes] = [bytes(range(1, n + 1)) for n in range(256)]
# _TRAILERS[pad_len][next_header]: padding || Pad Length || Next Header, built once so
# seal() appends one precomputed object (pad_len < 16 for every suite here).
_TRAILERS: list[list[bytes]] = [
    [_PAD[pad] + bytes((pad, nh)) for nh in range(256)] for pad in range(16)
]

NEXT_HEADER_IPV4 = int(IpProto.IPV4)  # tunnel mode, RFC 4303 2.6
NEXT_HEADER_IPV6 = int(IpProto.IPV6)
NEXT_HEADER_DUMMY = int(IpProto.NO_NEXT)  # 59: TFC dummy packet, RFC 4303 2.6

_IV_POOL_BYTES = 4096  # CBC IVs are sliced from one os.urandom() call per 256 packets


# --------------------------------------------------------------------------------------
# Drops and signals


class DropReason(IntEnum):
    """Why an inbound packet was discarded; InboundSa counts each one."""

    TRUNCATED = 1  # shorter than the suite's minimal ESP packet
    BAD_LENGTH = 2  # ciphertext not a whole number of cipher blocks (CBC)
    UNKNOWN_SPI = 3  # SPI does not belong to this SA / no SA has it
    REPLAY = 4  # duplicate or left of the window (RFC 4303 3.4.3)
    INTEGRITY = 5  # ICV mismatch (RFC 4303 3.4.4)
    BAD_PADDING = 6  # Pad Length too large or padding not 1, 2, 3, ... (RFC 4303 2.4)
    BAD_NEXT_HEADER = 7  # not 4 (IPv4) or 41 (IPv6): this codec is tunnel mode only
    DUMMY = 8  # Next Header 59, a TFC dummy packet: discard silently (RFC 4303 2.6)
    MALFORMED_INNER = 9  # the inner packet is not a well-formed IPv4/IPv6 packet
    SELECTOR_MISMATCH = 10  # inner packet outside the Child SA's selectors (RFC 4301 5.2)


class EspDrop(Exception):
    """An inbound packet was discarded; `reason` says why (and was counted)."""

    def __init__(self, reason: DropReason, detail: str = "") -> None:
        super().__init__(f"{reason.name}{': ' + detail if detail else ''}")
        self.reason = reason
        self.detail = detail


class SequenceOverflow(Exception):
    """The SA's sequence number space is used up: rekey (RFC 4303 3.3.3).

    Raised by seal() instead of letting the counter cycle; nothing was sent.
    """


# --------------------------------------------------------------------------------------
# Anti-replay window (RFC 4303 3.4.3 and Appendix A2)


class ReplayWindow:
    """Sliding anti-replay window over (extended) sequence numbers.

    `top` is the highest sequence number authenticated so far and bit i of `bitmap`
    says whether `top - i` was received. The window covers [top - size + 1, top].
    Use it in two steps, as RFC 4303 3.4.3 orders them: check() before the integrity
    check (cheap rejection of replays), accept() only after the ICV verified.

    Sequence number 0 is never valid (counters start at 1, RFC 4303 2.2): the window
    starts with bit 0 set, i.e. as if 0 had been received.

    With ESN only the low 32 bits travel; infer() rebuilds the 64-bit number from the
    window position (RFC 4303 A2.1). The A2.3 resynchronisation after 2^32 consecutive
    losses is not implemented: such packets fail the ICV and count as INTEGRITY. All
    methods are O(1) amortised: the bitmap is a Python int of at most `size` bits.
    """

    __slots__ = ("_mask", "bitmap", "esn", "size", "top")

    def __init__(self, size: int = 1024, esn: bool = False) -> None:
        if size < 1:
            raise ValueError("replay window size must be at least 1")
        self.size = size
        self.esn = esn
        self.top = 0
        self.bitmap = 1  # sequence number 0 counts as seen
        self._mask = (1 << size) - 1

    def infer(self, seq_low: int) -> int:
        """The full sequence number for received low 32 bits (RFC 4303 A2.1).

        Without ESN this is `seq_low`. With ESN: case A, the window lies within one
        2^32 subspace, so a low value under the window's bottom is in the next subspace;
        case B, the window spans two subspaces, so a low value at or above the bottom
        (mod 2^32) is in the previous one. Returns 0 (never valid) where that previous
        subspace would be negative.
        """
        if not self.esn:
            return seq_low
        top = self.top
        th = top >> 32
        tl = top & _MASK32
        bottom = (tl - self.size + 1) & _MASK32
        if tl >= self.size - 1:  # case A: window within one subspace
            if seq_low < bottom:
                th += 1
        elif seq_low >= bottom:  # case B: window spans two subspaces
            th -= 1
            if th < 0:
                return 0
        return (th << 32) | seq_low

    def check(self, seq: int) -> bool:
        """True if `seq` is new: right of the window, or inside it and not yet seen."""
        d = self.top - seq
        return d < 0 or (d < self.size and not (self.bitmap >> d) & 1)

    def accept(self, seq: int) -> None:
        """Record an authenticated `seq`, sliding the window right if it is new top."""
        d = seq - self.top
        if d > 0:
            # A jump of a window or more leaves only `seq` in the window (and keeps the
            # shift small: a 2^32 shift would build a 512 MiB int).
            self.bitmap = 1 if d >= self.size else ((self.bitmap << d) | 1) & self._mask
            self.top = seq
        else:
            self.bitmap |= 1 << -d


# --------------------------------------------------------------------------------------
# Traffic selectors (RFC 7296 3.13.1, RFC 4301 4.4.1)


@runtime_checkable
class SelectorLike(Protocol):
    """What the codec needs of a traffic selector; pyike.wire's TrafficSelector fits.

    Addresses may be ipaddress objects, packed bytes (4 or 16) or strings. ip_proto 0
    is any protocol; ports 0-65535 are any port; 65535-0 is OPAQUE (RFC 7296 3.13.1).
    For ICMP/ICMPv6 the "ports" are type (high byte) and code (low byte).
    """

    @property
    def ip_proto(self) -> int: ...
    @property
    def start_port(self) -> int: ...
    @property
    def end_port(self) -> int: ...
    @property
    def start_addr(self) -> object: ...
    @property
    def end_addr(self) -> object: ...


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Selector:
    """A traffic selector: an address range, an IP protocol and a port range."""

    ip_proto: int
    start_port: int
    end_port: int
    start_addr: IPAddress
    end_addr: IPAddress

    @classmethod
    def network(
        cls, cidr: str, ip_proto: int = 0, start_port: int = 0, end_port: int = 65535
    ) -> Selector:
        """A selector for one prefix, e.g. Selector.network("2001:db8:1::/64", 6, 22, 22)."""
        net = ipaddress.ip_network(cidr, strict=False)
        return cls(ip_proto, start_port, end_port, net[0], net[-1])

    @classmethod
    def any(cls, version: int) -> Selector:
        """Every address of one family, any protocol and port."""
        return cls.network("0.0.0.0/0" if version == 4 else "::/0")


ANY_SELECTORS: tuple[Selector, ...] = (Selector.any(4), Selector.any(6))

# A compiled selector: (ip version, ip_proto, low port, high port, start, end) with the
# addresses as packed bytes: equal-length big-endian bytes compare like the numbers.
# Port -1 stands for OPAQUE (non-first fragment, truncated or portless next header):
# the any-port range compiles to (-1, 65535) so that only it admits opaque ports.
_Compiled = tuple[int, int, int, int, bytes, bytes]

# A flow: (version, src, dst, upper protocol, src port, dst port, inner length).
Flow = tuple[int, bytes, bytes, int, int, int, int]


def _packed(addr: object) -> bytes:
    """Packed bytes for an address given as ipaddress object, bytes or text."""
    if isinstance(addr, bytes | bytearray):
        if len(addr) not in (4, 16):
            raise ValueError(f"packed address must be 4 or 16 bytes, got {len(addr)}")
        return bytes(addr)
    if isinstance(addr, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return addr.packed
    if isinstance(addr, str):
        return ipaddress.ip_address(addr).packed
    packed = getattr(addr, "packed", None)
    if isinstance(packed, bytes):
        return packed
    raise TypeError(f"cannot use {addr!r} as a selector address")


def _compile(selectors: Iterable[SelectorLike]) -> tuple[_Compiled, ...]:
    out = []
    for s in selectors:
        start, end = _packed(s.start_addr), _packed(s.end_addr)
        if len(start) != len(end):
            raise ValueError(f"selector mixes address families: {s!r}")
        lo, hi = int(s.start_port), int(s.end_port)
        if (lo, hi) == (0, 65535):
            lo = -1  # any port, including OPAQUE
        elif (lo, hi) == (65535, 0):
            lo = hi = -1  # OPAQUE only (RFC 7296 3.13.1)
        out.append((4 if len(start) == 4 else 6, int(s.ip_proto), lo, hi, start, end))
    return tuple(out)


# Upper-layer protocols whose first 4 bytes are source and destination port.
_PORT_PROTOS = frozenset({6, 17, 33, 132, 136})  # TCP, UDP, DCCP, SCTP, UDP-Lite
_ICMP_PROTOS = frozenset({1, 58})
# IPv6 extension headers walked to find the upper-layer protocol (RFC 8200 4).
_IPV6_EXT_GENERIC = frozenset({0, 43, 60})  # hop-by-hop, routing, destination options
_IPV6_FRAGMENT = 44
_IPV6_AH = 51
_MAX_IPV6_EXT = 8


_PORTS = struct.Struct(">HH").unpack_from  # source port, destination port
_IPV4_FIELDS = struct.Struct(">BxHxxHxB").unpack_from  # ver/ihl, length, frag, protocol
_IPV6_FIELDS = struct.Struct(">HB").unpack_from  # payload length, next header (at 4)


def parse_flow(pkt: bytes) -> Flow | None:
    """The selector-relevant fields of an IPv4/IPv6 packet, or None if malformed.

    Returns (version, src, dst, protocol, src_port, dst_port, length): addresses as
    packed bytes, `protocol` the upper-layer protocol after IPv6 extension headers,
    ports -1 when OPAQUE (non-first fragment, truncated or portless protocol; RFC 4301
    4.4.1.3), ICMP type<<8|code in both ports (RFC 4301 4.4.1.1), and `length` the
    packet length the header claims (so TFC padding can be trimmed, RFC 4303 2.7).
    """
    n = len(pkt)
    if n < 40 and (n < 20 or pkt[0] >> 4 != 4):  # IPv6 needs 40 bytes, IPv4 20
        return None
    version = pkt[0] >> 4
    if version == 6:
        plen, proto = _IPV6_FIELDS(pkt, 4)
        length = 40 + plen
        if length > n or plen == 0:  # plen 0 means a jumbogram: not on a tunnel
            return None
        src, dst = pkt[8:24], pkt[24:40]
        off = 40
        if proto not in _PORT_PROTOS:  # walk extension headers (RFC 8200 4)
            for _ in range(_MAX_IPV6_EXT):
                if proto in _IPV6_EXT_GENERIC:
                    if off + 2 > length:
                        return None
                    proto, off = pkt[off], off + (pkt[off + 1] + 1) * 8
                elif proto == _IPV6_FRAGMENT:
                    if off + 8 > length:
                        return None
                    frag_offset = ((pkt[off + 2] << 8) | pkt[off + 3]) >> 3
                    proto, off = pkt[off], off + 8
                    if frag_offset:
                        return (6, src, dst, proto, -1, -1, length)
                elif proto == _IPV6_AH:
                    if off + 2 > length:
                        return None
                    proto, off = pkt[off], off + (pkt[off + 1] + 2) * 4
                else:
                    break
            else:
                return None  # too many extension headers to be a sane packet
    elif version == 4:
        b0, length, frag, proto = _IPV4_FIELDS(pkt)
        off = (b0 & 0x0F) * 4
        if off < 20 or length < off or length > n:
            return None
        src, dst = pkt[12:16], pkt[16:20]
        if frag & 0x1FFF:  # fragment offset != 0: no upper-layer header here
            return (4, src, dst, proto, -1, -1, length)
    else:
        return None
    if proto in _PORT_PROTOS:
        if off + 4 <= length:
            sport, dport = _PORTS(pkt, off)
            return (version, src, dst, proto, sport, dport, length)
    elif proto in _ICMP_PROTOS and off + 2 <= length:
        tc = (pkt[off] << 8) | pkt[off + 1]
        return (version, src, dst, proto, tc, tc, length)
    return (version, src, dst, proto, -1, -1, length)


def _flow_allowed(
    flow: Flow, src_sels: tuple[_Compiled, ...], dst_sels: tuple[_Compiled, ...]
) -> bool:
    """True if a selector of `src_sels` covers the source and one of `dst_sels` the dest.

    Each side is checked against its own list, as the SA's policy is the cross product
    of TSi and TSr (RFC 7296 2.9). ICMP type/code must lie in both port ranges, so a
    type restriction works on whichever selector carries it.
    """
    version, src, dst, proto, sport, dport, _ = flow
    for v, p, lo, hi, start, end in src_sels:
        if v == version and (p == 0 or p == proto) and lo <= sport <= hi and start <= src <= end:
            break
    else:
        return False
    for v, p, lo, hi, start, end in dst_sels:
        if v == version and (p == 0 or p == proto) and lo <= dport <= hi and start <= dst <= end:
            return True
    return False


def flow_key(pkt: bytes | memoryview) -> bytes | tuple[int, bytes] | None:
    """A cache key for a selector decision on ``pkt``: the header bytes that decide
    it, for the common shapes only, or None (then parse_flow() decides).

    Covered: IPv6 with a port-carrying protocol right after the fixed header, and
    option-less IPv4 that is not a non-first fragment, whose length field equals the
    packet's length (so parse_flow() would find it well-formed and untrimmed). The
    key holds next header/protocol, addresses and ports (and the IPv6 hop limit,
    which is constant within a flow): two packets with one key get the same answer
    from parse_flow() + _flow_allowed(). One slice and a few byte tests, where
    parse_flow() costs a dozen operations and a tuple.
    """
    n = len(pkt)
    if n < 24:
        return None
    b0 = pkt[0]
    if b0 >> 4 == 6:
        if n > 44 and pkt[6] in _PORT_PROTOS and (pkt[4] << 8 | pkt[5]) + 40 == n:
            return bytes(pkt[6:44])
    elif b0 == 0x45 and (
        n > 24
        and pkt[9] in _PORT_PROTOS
        and not (pkt[6] & 0x1F or pkt[7])
        and (pkt[2] << 8 | pkt[3]) == n
    ):
        return (pkt[9], bytes(pkt[12:24]))
    return None


_FLOW_CACHE_MAX = 4096


class PeerFlows:
    """The selector pairs of all our Child SAs with one peer, shared by its InboundSas.

    OpenIKED answers a Child SA request with its whole policy's selectors instead of
    narrowing them (RFC 7296 2.9), installs one kernel flow for all of them, and so
    sends every class of traffic on whichever of the Child SAs came last. An inbound
    SA whose peer declared such wider selectors (``InboundSa(peer_flows=...)``) also
    accepts a packet that another of our Child SAs with that peer would accept: the
    peer is authenticated and our policy allows the flow from it, only not on this SA.
    """

    __slots__ = ("_pairs",)

    def __init__(self) -> None:
        # (local, remote) compiled selectors -> number of Child SAs that have them
        self._pairs: dict[tuple[tuple[_Compiled, ...], tuple[_Compiled, ...]], int] = {}

    def add(
        self, local_ts: Sequence[SelectorLike], remote_ts: Sequence[SelectorLike]
    ) -> tuple[tuple[_Compiled, ...], tuple[_Compiled, ...]]:
        key = (_compile(local_ts), _compile(remote_ts))
        self._pairs[key] = self._pairs.get(key, 0) + 1
        return key

    def remove(self, key: tuple[tuple[_Compiled, ...], tuple[_Compiled, ...]]) -> None:
        left = self._pairs.get(key, 0) - 1
        if left > 0:
            self._pairs[key] = left
        else:
            self._pairs.pop(key, None)

    def allows(self, flow: Flow) -> bool:
        return any(_flow_allowed(flow, remote, local) for local, remote in self._pairs)


# --------------------------------------------------------------------------------------
# Suites


@dataclass(frozen=True, slots=True)
class Suite:
    """Sizes of one ESP transform combination (RFC 4106, RFC 7634, RFC 3602, RFC 2404,
    RFC 4868), read from pyike.algorithms."""

    encr: int
    key_bits: int
    integ: int
    aead: bool
    iv_len: int  # bytes of IV carried in each packet
    block: int  # ciphertext alignment: cipher block, or 4 for GCM (RFC 4303 2.4)
    icv_len: int
    enc_key_len: int  # bytes of ENCR key material (AEAD: key || 4-byte salt, RFC 4106 8.1)
    integ_key_len: int
    hash_name: str  # "" for AEAD
    cipher_key_len: int = 0  # the cipher key alone (enc_key_len minus the salt)


def _esp_encr(encr: int, key_bits: int | None) -> algorithms.EncrAlg:
    row = algorithms.encr(encr, key_bits)
    if row is None or not row.esp:
        bits = f" with a {key_bits}-bit key" if key_bits else ""
        raise ValueError(f"unsupported encryption transform {EncrId.name_of(encr)}{bits}")
    return row


def suite_of(encr: int, key_bits: int, integ: int) -> Suite:
    """Validate a transform combination and return its sizes (ValueError if unsupported).

    `key_bits` is the Key Length attribute; 0 for a transform that has none (RFC 7634 2).
    """
    row = _esp_encr(encr, key_bits)
    # RFC 4303 2.4: the trailer ends on a 4-byte boundary, or on the cipher block.
    block = max(row.block_len, 4)
    if row.aead:
        if integ not in (IntegId.NONE, 0):
            raise ValueError(f"{row.name} is combined mode: integrity transform must be NONE")
        return Suite(int(encr), key_bits, 0, True, row.iv_len, block, row.icv_len,
                     row.keymat_len, 0, "", row.key_len)  # fmt: skip
    mac = algorithms.integ(integ)
    if mac is None or mac.hash is None:
        raise ValueError(f"unsupported integrity transform {IntegId.name_of(integ)}")
    return Suite(int(encr), key_bits, int(integ), False, row.iv_len, block, mac.icv_len,
                 row.keymat_len, mac.key_len, mac.hash().name, row.key_len)  # fmt: skip


def _mac_for(suite: Suite, integ_key: bytes) -> crypto_hmac.HMAC:
    row = algorithms.integ(suite.integ)
    assert row is not None  # suite_of checked it
    return row.new_mac(integ_key)


def tunnel_mtu(
    path_mtu: int, outer_af: int, encr: int, integ: int, *, udp_encap: bool = True
) -> int:
    """The largest inner packet that fits `path_mtu` once wrapped in ESP (tunnel mode).

    Arithmetic (RFC 4303 2, RFC 3948 2.2):

        outer IP header        20 (IPv4) or 40 (IPv6)
      + UDP header              8 (only with NAT-T / ESP-in-UDP)
      + ESP header              8 (SPI 4 + Sequence Number 4)
      + IV                      8 (AES-GCM, ChaCha20-Poly1305) or 16 (AES-CBC)
      + ICV                     16 (AEADs), 12/16/24/32 (HMAC-SHA1-96/SHA2-256/384/512)
      = fixed overhead; what is left, `room`, holds inner || padding || 2 trailer bytes,
        whose length must be a multiple of the block (4 for GCM, 16 for CBC; RFC 4303
        2.4). So inner_max = (room rounded down to the block) - 2, which covers the
        worst case padding: any inner packet <= inner_max needs at most the padding that
        rounding reached.

    Example: 1500, IPv6 outer, AES-GCM: room = 1500 - 40 - 8 - 8 - 8 - 16 = 1420,
    already 4-aligned, inner_max = 1418: 1400 fits, 1420 does not (as measured).
    `outer_af` is socket.AF_INET/AF_INET6 (or 4/6). `encr`/`integ` are EncrId/IntegId.
    """
    if outer_af in (socket.AF_INET, 4):
        ip_len = 20
    elif outer_af in (socket.AF_INET6, 6):
        ip_len = 40
    else:
        raise ValueError(f"unknown address family {outer_af}")
    # Sizes do not depend on the key size: take any key length the transform has.
    key_bits = next((r.key_bits or 0 for r in algorithms.ENCRS if r.id == encr and r.esp), 128)
    suite = suite_of(encr, key_bits, integ)
    room = (path_mtu - ip_len - (8 if udp_encap else 0) - ESP_HEADER_LEN - suite.iv_len
            - suite.icv_len)  # fmt: skip
    mtu = room // suite.block * suite.block - TRAILER_LEN
    if mtu < 0:
        raise ValueError(f"path MTU {path_mtu} leaves no room for an inner packet")
    return mtu


def _aead_for(suite: Suite, enc_key: bytes) -> algorithms.Aead:
    """The AEAD object of an SA: the table's constructor on the key without its salt."""
    return _esp_encr(suite.encr, suite.key_bits).new_aead(enc_key[: suite.cipher_key_len])


def _check_keys(suite: Suite, enc_key: bytes, integ_key: bytes) -> None:
    if len(enc_key) != suite.enc_key_len:
        raise ValueError(f"encryption key material must be {suite.enc_key_len} bytes")
    if len(integ_key) != suite.integ_key_len:
        raise ValueError(f"integrity key must be {suite.integ_key_len} bytes")


def _is_aead(encr: int) -> bool:
    """AES-GCM-16 and ChaCha20-Poly1305 share the AEAD subclasses (same ESP framing)."""
    return any(r.aead and r.esp for r in algorithms.ENCRS if r.id == encr)


# --------------------------------------------------------------------------------------
# Outbound


class OutboundSa:
    """One outbound Child SA: seal() turns an inner IP packet into an ESP packet.

    `OutboundSa(...)` returns the subclass for the suite (_GcmOutboundSa or
    _CbcOutboundSa). `seq` is the last sequence number sent (0 before the first packet,
    RFC 4303 3.3.3); `packets`/`bytes` count sealed packets and inner bytes for the
    IKE core's soft/hard lifetimes. For AES-GCM the 8-byte IV is the 64-bit sequence
    number XOR `iv_mask` (random per SA unless given, as strongSwan does): unique under
    the key because the sequence number never repeats (RFC 4106 3.1).
    """

    __slots__ = ("_seq_max", "bytes", "esn", "packets", "seq", "spi", "suite")

    def __new__(cls, spi: int, encr: int, *args: object, **kwargs: object) -> OutboundSa:
        if cls is OutboundSa:
            cls = _GcmOutboundSa if _is_aead(encr) else _CbcOutboundSa
        return object.__new__(cls)

    def __init__(
        self,
        spi: int,
        encr: int,
        key_bits: int,
        integ: int,
        enc_key: bytes,
        integ_key: bytes,
        esn: bool = False,
        *,
        iv_mask: int | None = None,
    ) -> None:
        self.suite = suite_of(encr, key_bits, integ)
        _check_keys(self.suite, enc_key, integ_key)
        if not 0 < spi <= SEQ32_MAX:
            raise ValueError("SPI must be a non-zero 32-bit value")
        self.spi = spi
        self.esn = esn
        self.seq = 0
        # Never cycle: without ESN the last usable number is 2^32-1 (RFC 4303 3.3.3).
        self._seq_max = SEQ64_MAX if esn else SEQ32_MAX
        self.packets = 0
        self.bytes = 0
        self._init_crypto(enc_key, integ_key, iv_mask)

    def _init_crypto(self, enc_key: bytes, integ_key: bytes, iv_mask: int | None) -> None:
        """Suite-specific: build the cipher objects once for the SA's lifetime."""
        raise NotImplementedError

    def seal(self, inner: bytes, next_header: int) -> bytes:
        """Encrypt `inner` (next_header 4 or 41) and return SPI|Seq|IV|ciphertext|ICV.

        Raises SequenceOverflow when the sequence space is used up (rekey first).
        """
        raise NotImplementedError

    def usage(self) -> tuple[int, int]:
        """(packets, inner bytes) sealed so far: the SA's lifetime consumption."""
        return self.packets, self.bytes

    @property
    def seq_remaining(self) -> int:
        """How many more packets may be sealed before SequenceOverflow."""
        return self._seq_max - self.seq

    def _overflow(self) -> SequenceOverflow:
        return SequenceOverflow(f"SPI {self.spi:#010x}: sequence number space exhausted")


class _GcmOutboundSa(OutboundSa):
    """An AEAD: AES-GCM-16 (RFC 4106) or ChaCha20-Poly1305 (RFC 7634 2), which frame
    alike: nonce = salt || IV, AAD = SPI || Seq (|| ESN high bits), 16-byte ICV."""

    __slots__ = ("_encrypt", "_iv_mask", "_salt")

    def _init_crypto(self, enc_key: bytes, integ_key: bytes, iv_mask: int | None) -> None:
        # RFC 4106 8.1, RFC 7634 2: KEYMAT is the key, then a 4-byte salt.
        self._salt = int.from_bytes(enc_key[-4:], "big")
        self._encrypt = _aead_for(self.suite, enc_key).encrypt
        if iv_mask is None:
            iv_mask = int.from_bytes(os.urandom(8), "big")
        self._iv_mask = iv_mask & SEQ64_MAX

    def seal(self, inner: bytes, next_header: int) -> bytes:
        seq = self.seq + 1
        if seq > self._seq_max:
            raise self._overflow()
        self.seq = seq
        n = len(inner)
        iv = seq ^ self._iv_mask
        header = _HEADER_IV64.pack(self.spi, seq & _MASK32, iv)
        # RFC 4106 5: AAD = SPI || Seq, or with ESN SPI || Seq high || Seq low
        aad = _AAD_ESN.pack(self.spi, seq >> 32, seq & _MASK32) if self.esn else header[:8]
        # RFC 4303 2.4: pad so Pad Length and Next Header end on a 4-byte boundary
        ct = self._encrypt(  # join: `inner` may be a memoryview (one copy either way)
            _NONCE.pack(self._salt, iv),
            b"".join((inner, _TRAILERS[-(n + 2) & 3][next_header])),
            aad,
        )
        self.packets += 1
        self.bytes += n
        return header + ct


class _CbcOutboundSa(OutboundSa):
    """AES-CBC (RFC 3602) + HMAC (RFC 2404/4868), encrypt-then-MAC (RFC 4303 3.3.2)."""

    __slots__ = ("_chain", "_encrypt", "_icv_len", "_iv_pool", "_iv_pos", "_mac")

    def _init_crypto(self, enc_key: bytes, integ_key: bytes, iv_mask: int | None) -> None:
        # iv_mask is GCM only: CBC IVs are random and unpredictable (RFC 3602 2.1).
        # One long-lived CBC context: its chaining value is the last ciphertext block it
        # produced (`_chain`). seal() folds IV ^ _chain into the first plaintext block, so
        # the context computes exactly CBC under the packet's random IV.
        cipher = _esp_encr(self.suite.encr, self.suite.key_bits).new_block_cipher(enc_key)
        self._encrypt = Cipher(cipher, modes.CBC(bytes(16))).encryptor().update
        self._chain = 0
        self._mac = _mac_for(self.suite, integ_key)
        self._icv_len = self.suite.icv_len
        self._iv_pool = b""
        self._iv_pos = _IV_POOL_BYTES

    def seal(self, inner: bytes, next_header: int) -> bytes:
        seq = self.seq + 1
        if seq > self._seq_max:
            raise self._overflow()
        self.seq = seq
        n = len(inner)
        # RFC 4303 2.4: block-align; join: `inner` may be a memoryview (the TUN batch)
        pt = b"".join((inner, _TRAILERS[-(n + 2) & 15][next_header]))
        pos = self._iv_pos
        if pos == _IV_POOL_BYTES:
            self._iv_pool = os.urandom(_IV_POOL_BYTES)
            pos = 0
        iv = self._iv_pool[pos : pos + 16]
        self._iv_pos = pos + 16
        first = (int.from_bytes(pt[:16], "big") ^ int.from_bytes(iv, "big") ^ self._chain).to_bytes(
            16, "big"
        )
        ct = self._encrypt(first + pt[16:])
        self._chain = int.from_bytes(ct[-16:], "big")
        body = b"".join((_HEADER.pack(self.spi, seq & _MASK32), iv, ct))
        mac = self._mac.copy()
        mac.update(body)
        if self.esn:  # RFC 4303 3.3.2.1: high bits are authenticated, not sent
            mac.update(_SEQ_HI.pack(seq >> 32))
        self.packets += 1
        self.bytes += n
        return body + mac.finalize()[: self._icv_len]


# --------------------------------------------------------------------------------------
# Inbound


class InboundSa:
    """One inbound Child SA: open() checks and decrypts an ESP packet.

    `InboundSa(...)` returns the subclass for the suite. open() verifies, in this order
    (RFC 4303 3.4): length, SPI, anti-replay check (before the ICV, 3.4.3), ICV and
    decryption (3.4.4), padding (2.4), Next Header (tunnel mode: 4 or 41; 59 is a dummy,
    2.6), then records the sequence number in the window, then checks the inner packet
    against the Child SA's selectors (RFC 4301 5.2: source in `remote_ts`, destination in
    `local_ts`). Every drop raises EspDrop and is counted in `drops`.

    `local_ts`/`remote_ts` None admits any IPv4/IPv6 packet (a 0.0.0.0/0 + ::/0 policy).
    With `peer_flows` (a peer that answered wider selectors, see PeerFlows), a packet
    outside them is still accepted if another of our Child SAs with that peer allows it.
    """

    __slots__ = (
        "_allowed",
        "_hdr_unpack",
        "_local",
        "_min_len",
        "_remote",
        "bytes",
        "drops",
        "esn",
        "other_sa_flows",
        "packets",
        "peer_flows",
        "replay",
        "spi",
        "suite",
    )

    def __new__(cls, spi: int, encr: int, *args: object, **kwargs: object) -> InboundSa:
        if cls is InboundSa:
            cls = _GcmInboundSa if _is_aead(encr) else _CbcInboundSa
        return object.__new__(cls)

    def __init__(
        self,
        spi: int,
        encr: int,
        key_bits: int,
        integ: int,
        enc_key: bytes,
        integ_key: bytes,
        esn: bool = False,
        replay_window: int = 1024,
        local_ts: Sequence[SelectorLike] | None = None,
        remote_ts: Sequence[SelectorLike] | None = None,
        peer_flows: PeerFlows | None = None,
    ) -> None:
        self.suite = suite_of(encr, key_bits, integ)
        _check_keys(self.suite, enc_key, integ_key)
        if not 0 < spi <= SEQ32_MAX:
            raise ValueError("SPI must be a non-zero 32-bit value")
        self.spi = spi
        self.esn = esn
        self.replay = ReplayWindow(replay_window, esn)
        self._local = _compile(ANY_SELECTORS if local_ts is None else local_ts)
        self._remote = _compile(ANY_SELECTORS if remote_ts is None else remote_ts)
        # flow_key()s our own selectors admit (they never change: positives only; what
        # peer_flows admits can change as other SAs come and go, so it is not cached)
        self._allowed: set[bytes | tuple[int, bytes]] = set()
        s = self.suite
        # Smallest packet: header, IV, one block holding at least the 2 trailer bytes, ICV
        self._min_len = ESP_HEADER_LEN + s.iv_len + s.block + s.icv_len
        self._hdr_unpack = _HEADER.unpack_from
        self.peer_flows = peer_flows
        self.other_sa_flows = 0  # packets let in by peer_flows, not by our selectors
        self.packets = 0
        self.bytes = 0
        self.drops: dict[DropReason, int] = dict.fromkeys(DropReason, 0)
        self._init_crypto(enc_key, integ_key)

    def _init_crypto(self, enc_key: bytes, integ_key: bytes) -> None:
        """Suite-specific: build the cipher objects once for the SA's lifetime."""
        raise NotImplementedError

    def open(self, packet: bytes | memoryview) -> tuple[int, bytes | memoryview]:
        """Verify and decrypt an ESP packet; return (next_header, inner packet).

        The inner packet is bytes-like: a memoryview into the decrypted buffer where
        that saves a copy (the AEAD suites). Raises EspDrop (already counted) for
        anything that must be discarded.
        """
        if len(packet) < self._min_len:
            raise self._drop(DropReason.TRUNCATED)
        spi, seq = self._hdr_unpack(packet)
        if spi != self.spi:
            raise self._drop(DropReason.UNKNOWN_SPI)
        replay = self.replay
        if self.esn:
            seq = replay.infer(seq)
        if seq <= replay.top and not replay.check(seq):  # in-order packets skip the call
            raise self._drop(DropReason.REPLAY)
        try:
            nh, inner = self._decrypt(packet, seq)  # type: ignore[arg-type]  # bytes | memoryview (perf)
        except EspDrop as e:
            self.drops[e.reason] += 1
            raise
        if nh != NEXT_HEADER_IPV6 and nh != NEXT_HEADER_IPV4:
            if nh == NEXT_HEADER_DUMMY:
                raise self._drop(DropReason.DUMMY)
            raise self._drop(DropReason.BAD_NEXT_HEADER, f"next header {nh}")
        replay.accept(seq)  # authenticated: it may move the window (RFC 4303 3.4.3)
        # RFC 4301 5.2 selector check: a flow seen before costs one set lookup.
        key = flow_key(inner)
        if key is None or key not in self._allowed or (inner[0] >> 4 == 6) != (nh == 41):
            inner = self._check_selectors(inner, nh, key)  # type: ignore[assignment]  # bytes | memoryview (perf)
        self.packets += 1
        self.bytes += len(inner)
        return nh, inner

    def _check_selectors(
        self, inner: bytes | memoryview, nh: int, key: bytes | tuple[int, bytes] | None
    ) -> bytes | memoryview:
        """The full inner-packet check (slow path of open()); the packet, trimmed."""
        flow = parse_flow(bytes(inner) if isinstance(inner, memoryview) else inner)
        if flow is None or flow[0] != (4 if nh == NEXT_HEADER_IPV4 else 6):
            raise self._drop(DropReason.MALFORMED_INNER)
        if not _flow_allowed(flow, self._remote, self._local):
            if self.peer_flows is None or not self.peer_flows.allows(flow):
                raise self._drop(DropReason.SELECTOR_MISMATCH)
            self.other_sa_flows += 1
        elif key is not None:
            if len(self._allowed) >= _FLOW_CACHE_MAX:
                self._allowed.clear()
            self._allowed.add(key)
        if flow[6] != len(inner):  # TFC padding after the inner packet (RFC 4303 2.7)
            inner = inner[: flow[6]]
        return inner

    def unprotect(self, packet: bytes, seq: int | None = None) -> tuple[int, int, bytes]:
        """Only the cryptographic part of open(): (sequence number, next header, payload).

        Checks length, SPI, ICV and padding; no replay check, no Next Header or selector
        policy, no counters, no state change except the CBC chaining value. For reading
        captures and published vectors. With ESN, `seq` gives the full 64-bit number
        (else it is inferred from the window).
        """
        if len(packet) < self._min_len:
            raise EspDrop(DropReason.TRUNCATED)
        spi, seq_low = self._hdr_unpack(packet)
        if spi != self.spi:
            raise EspDrop(DropReason.UNKNOWN_SPI)
        if seq is None:
            seq = self.replay.infer(seq_low)
        elif seq & _MASK32 != seq_low:
            raise ValueError("seq does not match the packet's sequence number field")
        nh, payload = self._decrypt(packet, seq)
        return seq, nh, bytes(payload)

    def usage(self) -> tuple[int, int]:
        """(packets, inner bytes) delivered so far: the SA's lifetime consumption."""
        return self.packets, self.bytes

    def drop_counts(self) -> dict[str, int]:
        """Drops per reason name, for logs and status output."""
        return {r.name: c for r, c in self.drops.items()}

    def _drop(self, reason: DropReason, detail: str = "") -> EspDrop:
        self.drops[reason] += 1
        return EspDrop(reason, detail)

    def _decrypt(self, packet: bytes, seq: int) -> tuple[int, bytes]:
        """Suite-specific: verify ICV, decrypt, strip padding -> (next header, payload)."""
        raise NotImplementedError


def _strip_trailer(pt: bytes) -> tuple[int, bytes]:
    """Split plaintext into (next header, payload), checking the padding (RFC 4303 2.4)."""
    pad = pt[-2]
    end = len(pt) - TRAILER_LEN - pad
    if end < 0 or pt[end : end + pad] != _PAD[pad]:
        raise EspDrop(DropReason.BAD_PADDING)
    return pt[-1], pt[:end]


class _GcmInboundSa(InboundSa):
    __slots__ = ("_decrypt_aead", "_salt")

    def _init_crypto(self, enc_key: bytes, integ_key: bytes) -> None:
        self._salt = enc_key[-4:]  # RFC 4106 8.1, RFC 7634 2
        self._decrypt_aead = _aead_for(self.suite, enc_key).decrypt

    def _decrypt(self, packet: bytes, seq: int) -> tuple[int, bytes]:
        # Bytes slices, not memoryviews: `cryptography` takes bytes faster (measured).
        aad = _AAD_ESN.pack(self.spi, seq >> 32, seq & _MASK32) if self.esn else packet[:8]
        try:  # RFC 4106 4: nonce = salt || the packet's 8-byte IV
            pt = self._decrypt_aead(self._salt + packet[8:16], packet[16:], aad)
        except InvalidTag:
            raise EspDrop(DropReason.INTEGRITY) from None
        # _strip_trailer, without copying the payload out of the plaintext
        pad = pt[-2]
        end = len(pt) - TRAILER_LEN - pad
        if end < 0 or pt[end : end + pad] != _PAD[pad]:
            raise EspDrop(DropReason.BAD_PADDING)
        return pt[-1], memoryview(pt)[:end]  # type: ignore[return-value]  # bytes | memoryview (perf)


class _CbcInboundSa(InboundSa):
    __slots__ = ("_chain", "_decrypt_cbc", "_icv_len", "_mac")

    def _init_crypto(self, enc_key: bytes, integ_key: bytes) -> None:
        # Long-lived CBC context (see _CbcOutboundSa): it XORs the first block with the
        # last ciphertext block it was fed (`_chain`) instead of the packet's IV, which
        # _decrypt() corrects. Only authenticated ciphertext is ever fed to it.
        cipher = _esp_encr(self.suite.encr, self.suite.key_bits).new_block_cipher(enc_key)
        self._decrypt_cbc = Cipher(cipher, modes.CBC(bytes(16))).decryptor().update
        self._chain = 0
        self._mac = _mac_for(self.suite, integ_key)
        self._icv_len = self.suite.icv_len

    def _decrypt(self, packet: bytes, seq: int) -> tuple[int, bytes]:
        icv_at = len(packet) - self._icv_len
        if (icv_at - ESP_HEADER_LEN) & 15:  # IV + ciphertext: whole 16-byte blocks
            raise EspDrop(DropReason.BAD_LENGTH)
        mac = self._mac.copy()
        mac.update(packet[:icv_at])  # RFC 4303 3.3.2: ICV over SPI .. ciphertext
        if self.esn:
            mac.update(_SEQ_HI.pack(seq >> 32))  # RFC 4303 3.3.2.1
        if not hmac.compare_digest(mac.finalize()[: self._icv_len], packet[icv_at:]):
            raise EspDrop(DropReason.INTEGRITY)
        pt = self._decrypt_cbc(packet[24:icv_at])
        first = (
            int.from_bytes(pt[:16], "big") ^ self._chain ^ int.from_bytes(packet[8:24], "big")
        ).to_bytes(16, "big")
        self._chain = int.from_bytes(packet[icv_at - 16 : icv_at], "big")
        return _strip_trailer(first + pt[16:])


# --------------------------------------------------------------------------------------
# SPD (outbound) and SAD (inbound)


class Spd:
    """Outbound policy lookup: which OutboundSa carries an inner packet (RFC 4301 5.1).

    Ordered like an RFC 4301 SPD: the first entry whose (local TS, remote TS) covers the
    packet wins, entries in the order added, except that an SA added with the very
    selectors of an earlier one goes before it: the newer of two SAs for one policy
    carries the traffic (a replacement IKE SA's Child SA, made because the old one
    stopped answering, takes over at once instead of when the old one is gone). A
    rekeyed SA takes its predecessor's place with replace(). Lookups are cached per flow
    (addresses, protocol, ports), so a bulk flow costs one dict hit after its first
    packet; the cache is dropped whenever the entries change and when it grows past
    _SPD_CACHE_MAX. `no_sa` counts packets that no entry covers (including malformed
    ones).
    """

    __slots__ = ("_cache", "_entries", "_fast", "no_sa")

    def __init__(self) -> None:
        self._entries: list[tuple[OutboundSa, tuple[_Compiled, ...], tuple[_Compiled, ...]]] = []
        self._cache: dict[tuple[object, ...], OutboundSa | None] = {}
        self._fast: dict[bytes | tuple[int, bytes], OutboundSa | None] = {}  # by flow_key()
        self.no_sa = 0

    def add(
        self, sa: OutboundSa, local_ts: Sequence[SelectorLike], remote_ts: Sequence[SelectorLike]
    ) -> None:
        """Route packets from `local_ts` to `remote_ts` through `sa`: after earlier
        entries, but before one with exactly these selectors (the newer SA wins)."""
        entry = (sa, _compile(local_ts), _compile(remote_ts))
        at = next(
            (i for i, e in enumerate(self._entries) if e[1:] == entry[1:]), len(self._entries)
        )
        self._entries.insert(at, entry)
        self._cache.clear()
        self._fast.clear()

    def replace(self, old: OutboundSa, new: OutboundSa) -> None:
        """Rekey: `new` takes over `old`'s selectors and position (KeyError if absent)."""
        for i, (sa, local, remote) in enumerate(self._entries):
            if sa is old:
                self._entries[i] = (new, local, remote)
                self._cache.clear()
                self._fast.clear()
                return
        raise KeyError("SA not in the SPD")

    def remove(self, sa: OutboundSa) -> None:
        self._entries = [e for e in self._entries if e[0] is not sa]
        self._cache.clear()
        self._fast.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def match(self, inner: bytes | memoryview) -> OutboundSa | None:
        """The SA whose (local TS, remote TS) covers the packet's source/destination."""
        key = flow_key(inner)  # the common shapes: one slice and one dict hit
        if key is not None:
            fast = self._fast
            try:
                sa = fast[key]
            except KeyError:
                sa = self._match(bytes(inner))
                if len(fast) >= _SPD_CACHE_MAX:
                    fast.clear()
                fast[key] = sa
                return sa
            if sa is None:
                self.no_sa += 1
            return sa
        return self._match(bytes(inner) if isinstance(inner, memoryview) else inner)

    def _match(self, inner: bytes) -> OutboundSa | None:
        flow = parse_flow(inner)
        if flow is None:
            self.no_sa += 1
            return None
        key = flow[:6]
        cache = self._cache
        try:
            sa = cache[key]
        except KeyError:
            sa = None
            for entry in self._entries:
                if _flow_allowed(flow, entry[1], entry[2]):
                    sa = entry[0]
                    break
            if len(cache) >= _SPD_CACHE_MAX:
                cache.clear()
            cache[key] = sa
        if sa is None:
            self.no_sa += 1
        return sa


_SPD_CACHE_MAX = 4096


class Sad:
    """Inbound SA lookup by SPI (RFC 4301 4.4.2); counts packets for unknown SPIs."""

    __slots__ = ("_by_spi", "unknown_spi")

    def __init__(self) -> None:
        self._by_spi: dict[int, InboundSa] = {}
        self.unknown_spi = 0

    def add(self, sa: InboundSa) -> None:
        self._by_spi[sa.spi] = sa

    def remove(self, spi: int) -> None:
        self._by_spi.pop(spi, None)

    def get(self, spi: int) -> InboundSa | None:
        return self._by_spi.get(spi)

    def open(self, packet: bytes) -> tuple[int, bytes]:
        """Dispatch to the SA named by the packet's SPI and open() it."""
        sa = self._by_spi.get(int.from_bytes(packet[:4], "big")) if len(packet) >= 4 else None
        if sa is None:
            self.unknown_spi += 1
            raise EspDrop(DropReason.UNKNOWN_SPI)
        return sa.open(packet)  # type: ignore[return-value]  # bytes | memoryview (perf)


# --------------------------------------------------------------------------------------
# UDP encapsulation (RFC 3948)


class Udp4500(IntEnum):
    """What a UDP datagram on the NAT-T port carries (RFC 3948 2.2, 2.3)."""

    ESP = 1  # starts with a non-zero SPI
    IKE = 2  # starts with the 4-byte Non-ESP Marker (zero); strip it before IKE parsing
    KEEPALIVE = 3  # the single byte 0xFF
    INVALID = 4


NON_ESP_MARKER = b"\x00\x00\x00\x00"
NAT_KEEPALIVE = b"\xff"


def classify_udp_encap(payload: bytes) -> Udp4500:
    """Classify a NAT-T datagram payload (RFC 3948 2.2: SPI 0 marks IKE; 2.3 keepalive)."""
    if payload == NAT_KEEPALIVE:
        return Udp4500.KEEPALIVE
    if len(payload) < 8:  # an ESP header, or the marker plus an IKE header, needs more
        return Udp4500.INVALID
    return Udp4500.IKE if payload[:4] == NON_ESP_MARKER else Udp4500.ESP
