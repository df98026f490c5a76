"""IKEv2 message codec: datagram bytes <-> typed payloads (RFC 7296 section 3).

Where things are in this file:
  errors          WireError, UnsupportedCriticalPayload
  header          Header (3.1), payload_header (3.2)
  SA              Transform, Proposal, SaPayload (3.3)
  other payloads  one dataclass per payload type, each with ``body()`` (encode
                  the bytes after the 4-byte generic header) and ``from_body()``
                  (decode them); KE 3.4 ... EAP 3.16, SKF (RFC 7383 2.5)
  chains          _PARSERS (PayloadType -> decoder), parse_payloads, build_payloads
  messages        Message, parse_message, build_message
  printing        format_message (the ``pyike decode`` tree)

Parsing is strict about *structure* and tolerant of *values*: every length,
count and "last substructure" marker must agree with the bytes, otherwise a
WireError names the notify a responder should send (INVALID_SYNTAX, RFC 7296
2.21.2). Algorithm numbers, notify types, ports and the like are kept as they
came (known ones as registry enum members, unknown ones as plain ints) for the
protocol layer to judge. Parsing any byte string either returns a Message or
raises WireError; nothing else escapes.

Reserved fields are sent as zero and ignored on receipt (RFC 7296 3.2), so
build(parse(x)) == x for every x whose reserved bits are zero.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from functools import cache, partial
from ipaddress import IPv4Address, IPv6Address
from typing import ClassVar, Self, TypeVar

from pyike.registry import (
    AuthMethod,
    CertEncoding,
    CfgAttr,
    CfgType,
    DhId,
    EncrId,
    EsnId,
    ExchangeType,
    HashAlgorithm,
    HeaderFlag,
    IdType,
    IntegId,
    IpProto,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformAttr,
    TransformType,
    TsType,
)

# ---------------------------------------------------------------------------
# Errors


class WireError(ValueError):
    """The bytes are not a well-formed IKEv2 message.

    ``notify`` and ``data`` are what a responder puts in its error Notify
    (RFC 7296 2.21.2); ``detail`` says what exactly was wrong, for logs.
    """

    def __init__(
        self,
        detail: str,
        notify: NotifyType = NotifyType.INVALID_SYNTAX,
        data: bytes = b"",
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.notify = notify
        self.data = data


class UnsupportedCriticalPayload(WireError):
    """An unknown payload had its critical bit set (RFC 7296 2.5, 3.2).

    The message MUST be rejected; the notify data is the one-octet type.
    """

    def __init__(self, payload_type: int) -> None:
        super().__init__(
            f"unknown payload type {payload_type} has the critical bit set",
            NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD,
            bytes([payload_type]),
        )
        self.payload_type = payload_type


# ---------------------------------------------------------------------------
# Number -> enum member, for readable reprs. Unknown numbers stay plain ints.


@cache
def _members(enum_cls: type[IntEnum]) -> dict[int, IntEnum]:
    return {member.value: member for member in enum_cls}


def _named(enum_cls: type[IntEnum], value: int) -> int:
    return _members(enum_cls).get(value, value)


# Which registry names the Transform IDs of each Transform Type (RFC 7296 3.3.2).
TRANSFORM_ID_ENUMS: dict[int, type[EncrId | PrfId | IntegId | DhId | EsnId]] = {
    TransformType.ENCR: EncrId,
    TransformType.PRF: PrfId,
    TransformType.INTEG: IntegId,
    TransformType.DH: DhId,
    TransformType.ESN: EsnId,
}


def _transform_id(ttype: int, tid: int) -> int:
    enum_cls = TRANSFORM_ID_ENUMS.get(ttype)
    return tid if enum_cls is None else _named(enum_cls, tid)


# ---------------------------------------------------------------------------
# Fixed-layout pieces, all network byte order.

_HEADER = struct.Struct("!8s8sBBBBII")  # 3.1 IKE header
_GENERIC = struct.Struct("!BBH")  # 3.2 next payload, C+reserved, length
_PROPOSAL = struct.Struct("!BBHBBBB")  # 3.3.1 last, res, len, num, proto, spi size, #tf
_TRANSFORM = struct.Struct("!BBHBBH")  # 3.3.2 last, res, len, type, res, id
_ATTR = struct.Struct("!HH")  # 3.3.5 AF+type, value-or-length
_TYPE_RESERVED3 = struct.Struct("!B3x")  # ID, AUTH, TS, CP: one octet then RESERVED(3)
_KE = struct.Struct("!HH")  # 3.4 group, reserved
_NOTIFY = struct.Struct("!BBH")  # 3.10 protocol, spi size, type
_DELETE = struct.Struct("!BBH")  # 3.11 protocol, spi size, number of spis
_SELECTOR = struct.Struct("!BBHHH")  # 3.13.1 type, proto, length, ports
_SELECTOR_HEAD = struct.Struct("!BBH")  # 3.13.1 type, octet 2, length (any TS type)
_SKF = struct.Struct("!HH")  # RFC 7383 2.5 fragment number, total
_CP_ATTR = struct.Struct("!HH")  # 3.15.1 R+type, length

HEADER_LEN = 28
GENERIC_HEADER_LEN = 4
CRITICAL = 0x80  # the C bit in the generic payload header's second octet (3.2)
_LAST = 0  # "Last Substruc" value for the final proposal/transform (3.3.1, 3.3.2)
_MORE_PROPOSALS = 2
_MORE_TRANSFORMS = 3
_AF_TV = 0x8000  # attribute format bit: 1 = TV (value in the header), 0 = TLV (3.3.5)
MIN_NONCE, MAX_NONCE = 16, 256  # 3.9 Nonce Data size, inclusive
_V4_SELECTOR_LEN, _V6_SELECTOR_LEN = 16, 40  # 3.13.1


# ---------------------------------------------------------------------------
# Header (RFC 7296 3.1)


@dataclass(slots=True)
class Header:
    """The fixed 28-byte IKE header."""

    spi_i: bytes
    spi_r: bytes
    next_payload: int
    exchange: int
    flags: int
    message_id: int
    length: int = 0
    major: int = 2
    minor: int = 0

    @property
    def is_response(self) -> bool:
        return bool(self.flags & HeaderFlag.RESPONSE)

    @property
    def is_initiator(self) -> bool:
        return bool(self.flags & HeaderFlag.INITIATOR)

    def pack(self) -> bytes:
        """Encode as is: ``length`` is written verbatim (the caller computes it)."""
        _check_ike_spis(self.spi_i, self.spi_r)
        version = (self.major << 4) | self.minor
        return _HEADER.pack(
            self.spi_i, self.spi_r, self.next_payload, version,
            self.exchange, self.flags, self.message_id, self.length,
        )  # fmt: skip

    @classmethod
    def parse(cls, data: bytes) -> Header:
        """Decode the first 28 bytes; the length field is not checked here."""
        if len(data) < HEADER_LEN:
            raise WireError(f"{len(data)} bytes is shorter than the {HEADER_LEN}-byte IKE header")
        spi_i, spi_r, nxt, version, exchange, flags, mid, length = _HEADER.unpack_from(data)
        major = version >> 4
        if major != 2:
            # 2.5: a higher major version gets INVALID_MAJOR_VERSION; IKEv1 (1) is
            # not ours to parse either. The notify carries no data (3.10.1).
            raise WireError(
                f"IKE major version {major}, only 2 is supported",
                NotifyType.INVALID_MAJOR_VERSION,
            )
        return cls(
            spi_i, spi_r, nxt, _named(ExchangeType, exchange),
            flags, mid, length, major, version & 0x0F,
        )  # fmt: skip


def _check_ike_spis(spi_i: bytes, spi_r: bytes) -> None:
    if len(spi_i) != 8 or len(spi_r) != 8:
        raise ValueError("IKE SPIs are 8 bytes each (RFC 7296 3.1)")


def payload_header(next_payload: int, length: int, critical: bool = False) -> bytes:
    """The 4-byte generic payload header (3.2); ``length`` includes these 4 bytes."""
    if not GENERIC_HEADER_LEN <= length <= 0xFFFF:
        raise ValueError(f"payload length {length} does not fit the 16-bit field")
    return _GENERIC.pack(next_payload, CRITICAL if critical else 0, length)


# ---------------------------------------------------------------------------
# Payload base


class _Payload:
    """Shared behaviour. Subclasses are slotted dataclasses with ``critical`` last.

    ``critical`` is the C bit as received; for payload types we understand it is
    ignored (3.2) but kept so a message re-encodes to the same bytes.
    """

    __slots__ = ()
    PTYPE: ClassVar[int]
    critical: bool

    @property
    def ptype(self) -> int:
        """The Payload Type number that announces this payload in the chain."""
        return self.PTYPE


def _need(body: bytes, size: int, what: str) -> None:
    if len(body) < size:
        raise WireError(f"{what} body is {len(body)} bytes, needs at least {size}")


# ---------------------------------------------------------------------------
# SA payload with its proposals and transforms (RFC 7296 3.3)


@dataclass(slots=True)
class Transform:
    """One algorithm choice inside a proposal (3.3.2).

    ``key_length`` is the Key Length attribute (3.3.5, TV, type 14) in bits.
    Any other attribute is kept in ``other_attributes`` as (type, value): an int
    value was sent in TV format, a bytes value in TLV format.
    """

    type: int
    id: int
    key_length: int | None = None
    other_attributes: list[tuple[int, int | bytes]] = field(default_factory=list)

    def encode(self, last: bool) -> bytes:
        attrs = bytearray()
        if self.key_length is not None:
            attrs += _ATTR.pack(_AF_TV | TransformAttr.KEY_LENGTH, self.key_length)
        for atype, value in self.other_attributes:
            if isinstance(value, int):
                attrs += _ATTR.pack(_AF_TV | atype, value)
            else:
                attrs += _ATTR.pack(atype, len(value)) + value
        marker = _LAST if last else _MORE_TRANSFORMS
        head = _TRANSFORM.pack(marker, 0, _TRANSFORM.size + len(attrs), self.type, 0, self.id)
        return head + attrs


def _parse_attributes(
    data: bytes, off: int, end: int
) -> tuple[int | None, list[tuple[int, int | bytes]]]:
    """Transform attributes in data[off:end] (3.3.5)."""
    key_length: int | None = None
    others: list[tuple[int, int | bytes]] = []
    while off < end:
        if end - off < _ATTR.size:
            raise WireError(f"transform attribute truncated: {end - off} bytes left")
        af_type, value = _ATTR.unpack_from(data, off)
        off += _ATTR.size
        atype = af_type & 0x7FFF
        if af_type & _AF_TV:
            if atype == TransformAttr.KEY_LENGTH and key_length is None:
                key_length = value
            else:
                others.append((atype, value))
        else:
            if value > end - off:
                raise WireError(f"TLV attribute {atype} claims {value} bytes, {end - off} left")
            others.append((atype, data[off : off + value]))
            off += value
    return key_length, others


def _parse_transforms(data: bytes, off: int, end: int, count: int, pnum: int) -> list[Transform]:
    """Exactly ``count`` transforms filling data[off:end] (3.3.2)."""
    transforms = []
    for index in range(count):
        where = f"proposal {pnum} transform {index + 1}"
        if end - off < _TRANSFORM.size:
            raise WireError(f"{where}: truncated ({count} transforms declared)")
        marker, _, tlen, ttype, _, tid = _TRANSFORM.unpack_from(data, off)
        if not _TRANSFORM.size <= tlen <= end - off:
            raise WireError(f"{where}: length {tlen} outside 8..{end - off}")
        # 3.3.2: 3 means another transform follows, 0 marks the last one; it must
        # agree with Num Transforms.
        expected = _LAST if index == count - 1 else _MORE_TRANSFORMS
        if marker != expected:
            raise WireError(f"{where}: Last Substruc {marker}, expected {expected}")
        key_length, others = _parse_attributes(data, off + _TRANSFORM.size, off + tlen)
        transforms.append(
            Transform(_named(TransformType, ttype), _transform_id(ttype, tid), key_length, others)
        )
        off += tlen
    if off != end:
        raise WireError(f"proposal {pnum}: {end - off} bytes after its {count} transforms")
    return transforms


# 3.3.1: SPI Size is 0 for the initial IKE SA (SPIs are in the header), 8 when
# rekeying an IKE SA, 4 for ESP and AH. Unregistered protocols: left to policy.
_PROPOSAL_SPI_SIZES: dict[int, tuple[int, ...]] = {
    ProtocolId.IKE: (0, 8),
    ProtocolId.AH: (4,),
    ProtocolId.ESP: (4,),
}


@dataclass(slots=True)
class Proposal:
    """One proposal of an SA payload (3.3.1): a protocol, its SPI and transforms."""

    number: int
    protocol: int
    spi: bytes
    transforms: list[Transform]

    def encode(self, last: bool) -> bytes:
        body = b"".join(
            t.encode(last=i == len(self.transforms) - 1) for i, t in enumerate(self.transforms)
        )
        length = _PROPOSAL.size + len(self.spi) + len(body)
        marker = _LAST if last else _MORE_PROPOSALS
        head = _PROPOSAL.pack(
            marker, 0, length, self.number, self.protocol, len(self.spi), len(self.transforms)
        )
        return head + self.spi + body


def _parse_proposal(body: bytes, off: int) -> tuple[Proposal, int, int]:
    """The proposal at body[off:]; returns it, its Last Substruc marker, its end."""
    if len(body) - off < _PROPOSAL.size:
        raise WireError(f"SA proposal truncated: {len(body) - off} bytes left")
    marker, _, plen, num, proto, spi_size, count = _PROPOSAL.unpack_from(body, off)
    if not _PROPOSAL.size + spi_size <= plen <= len(body) - off:
        raise WireError(f"proposal {num}: length {plen} inconsistent with SPI size and SA length")
    allowed = _PROPOSAL_SPI_SIZES.get(proto)
    if allowed is not None and spi_size not in allowed:
        raise WireError(f"proposal {num}: SPI size {spi_size} invalid for protocol {proto}")
    spi_end = off + _PROPOSAL.size + spi_size
    transforms = _parse_transforms(body, spi_end, off + plen, count, num)
    proposal = Proposal(
        num, _named(ProtocolId, proto), body[off + _PROPOSAL.size : spi_end], transforms
    )
    return proposal, marker, off + plen


@dataclass(slots=True)
class SaPayload(_Payload):
    """Security Association payload (3.3): alternative proposals, best first."""

    PTYPE = PayloadType.SA
    proposals: list[Proposal]
    critical: bool = False

    def body(self) -> bytes:
        last = len(self.proposals) - 1
        return b"".join(p.encode(last=i == last) for i, p in enumerate(self.proposals))

    @classmethod
    def from_body(cls, body: bytes) -> Self:
        if not body:
            raise WireError("SA payload without proposals")
        proposals = []
        off = 0
        while True:
            proposal, marker, off = _parse_proposal(body, off)
            proposals.append(proposal)
            if marker == _LAST:
                break
            if marker != _MORE_PROPOSALS:
                raise WireError(f"proposal {proposal.number}: Last Substruc {marker}, expected 0/2")
            if off == len(body):
                raise WireError("proposal says more follow but the SA payload ends")
        if off != len(body):
            raise WireError(f"{len(body) - off} bytes after the last proposal")
        # 3.3.1: the first proposal is number 1 and each next one is one greater.
        # A response carries only the accepted proposal with its original number,
        # so a single proposal may have any number.
        if len(proposals) > 1:
            for expected, proposal in enumerate(proposals, start=1):
                if proposal.number != expected:
                    raise WireError(f"proposal numbered {proposal.number}, expected {expected}")
        return cls(proposals)


# ---------------------------------------------------------------------------
# Simple payloads (RFC 7296 3.4 - 3.12)


@dataclass(slots=True)
class KePayload(_Payload):
    """Key Exchange (3.4): the DH group and our public value."""

    PTYPE = PayloadType.KE
    group: int
    data: bytes
    critical: bool = False

    def body(self) -> bytes:
        return _KE.pack(self.group, 0) + self.data

    @classmethod
    def from_body(cls, body: bytes) -> Self:
        _need(body, _KE.size, "KE")
        group, _ = _KE.unpack_from(body)
        return cls(_named(DhId, group), body[_KE.size :])


@dataclass(slots=True)
class IdPayload(_Payload):
    """Identification, IDi or IDr (3.5).

    ``body()`` is the "RestOfInitIDPayload"/"RestOfRespIDPayload" that AUTH
    signs (2.15). The 3 RESERVED octets are re-encoded as zero, so a peer that
    sent non-zero ones would fail AUTH; none is known to.
    """

    kind: PayloadType
    id_type: int
    data: bytes
    critical: bool = False

    @property
    def ptype(self) -> int:
        return self.kind

    def body(self) -> bytes:
        return _TYPE_RESERVED3.pack(self.id_type) + self.data

    @classmethod
    def from_body(cls, body: bytes, kind: PayloadType = PayloadType.IDi) -> Self:
        _need(body, _TYPE_RESERVED3.size, kind.name)
        return cls(kind, _named(IdType, body[0]), body[_TYPE_RESERVED3.size :])


@dataclass(slots=True)
class CertPayload(_Payload):
    """Certificate (3.6). iked sends encoding 201 with a DER public key."""

    PTYPE = PayloadType.CERT
    encoding: int
    data: bytes
    critical: bool = False

    def body(self) -> bytes:
        return bytes([self.encoding]) + self.data

    @classmethod
    def from_body(cls, body: bytes) -> Self:
        _need(body, 1, "CERT")
        return cls(_named(CertEncoding, body[0]), body[1:])


@dataclass(slots=True)
class CertReqPayload(_Payload):
    """Certificate Request (3.7): encoding plus concatenated CA key hashes."""

    PTYPE = PayloadType.CERTREQ
    encoding: int
    data: bytes
    critical: bool = False

    def body(self) -> bytes:
        return bytes([self.encoding]) + self.data

    @classmethod
    def from_body(cls, body: bytes) -> Self:
        _need(body, 1, "CERTREQ")
        return cls(_named(CertEncoding, body[0]), body[1:])


@dataclass(slots=True)
class AuthPayload(_Payload):
    """Authentication (3.8): method and signature/MAC bytes."""

    PTYPE = PayloadType.AUTH
    method: int
    data: bytes
    critical: bool = False

    def body(self) -> bytes:
        return _TYPE_RESERVED3.pack(self.method) + self.data

    @classmethod
    def from_body(cls, body: bytes) -> Self:
        _need(body, _TYPE_RESERVED3.size, "AUTH")
        return cls(_named(AuthMethod, body[0]), body[_TYPE_RESERVED3.size :])


@dataclass(slots=True)
class NoncePayload(_Payload):
    """Nonce (3.9): 16 to 256 random bytes."""

    PTYPE = PayloadType.NONCE
    data: bytes
    critical: bool = False

    def body(self) -> bytes:
        return self.data

    @classmethod
    def from_body(cls, body: bytes) -> Self:
        # 3.9: "The size of the Nonce Data MUST be between 16 and 256 octets".
        if not MIN_NONCE <= len(body) <= MAX_NONCE:
            raise WireError(f"nonce of {len(body)} bytes, must be {MIN_NONCE}..{MAX_NONCE}")
        return cls(body)


@dataclass(slots=True)
class NotifyPayload(_Payload):
    """Notify (3.10). ``spi`` is empty for notifications about the IKE SA.

    SPI sizes are not checked against the protocol: only the bytes must add up.
    """

    PTYPE = PayloadType.NOTIFY
    protocol: int
    spi: bytes
    type: int
    data: bytes = b""
    critical: bool = False

    def body(self) -> bytes:
        return _NOTIFY.pack(self.protocol, len(self.spi), self.type) + self.spi + self.data

    @classmethod
    def from_body(cls, body: bytes) -> Self:
        _need(body, _NOTIFY.size, "NOTIFY")
        protocol, spi_size, ntype = _NOTIFY.unpack_from(body)
        spi_end = _NOTIFY.size + spi_size
        if spi_end > len(body):
            raise WireError(f"NOTIFY SPI size {spi_size} exceeds the payload")
        return cls(
            _named(ProtocolId, protocol),
            body[_NOTIFY.size : spi_end],
            _named(NotifyType, ntype),
            body[spi_end:],
        )


# 3.11: Delete SPI Size "MUST be zero for IKE ... or four for AH and ESP".
_DELETE_SPI_SIZES: dict[int, int] = {ProtocolId.IKE: 0, ProtocolId.AH: 4, ProtocolId.ESP: 4}


@dataclass(slots=True)
class DeletePayload(_Payload):
    """Delete (3.11): the SPIs (as the receiver knows them) of SAs to remove."""

    PTYPE = PayloadType.DELETE
    protocol: int
    spi_size: int
    spis: list[bytes]
    critical: bool = False

    def body(self) -> bytes:
        if any(len(spi) != self.spi_size for spi in self.spis):
            raise ValueError(f"every Delete SPI must be {self.spi_size} bytes")
        return _DELETE.pack(self.protocol, self.spi_size, len(self.spis)) + b"".join(self.spis)

    @classmethod
    def from_body(cls, body: bytes) -> Self:
        _need(body, _DELETE.size, "DELETE")
        protocol, spi_size, count = _DELETE.unpack_from(body)
        expected_size = _DELETE_SPI_SIZES.get(protocol)
        if expected_size is not None and spi_size != expected_size:
            raise WireError(f"DELETE SPI size {spi_size} invalid for protocol {protocol}")
        if spi_size * count != len(body) - _DELETE.size:
            raise WireError(
                f"DELETE: {count} SPIs of {spi_size} bytes, but {len(body) - _DELETE.size} bytes"
            )
        if spi_size == 0:
            spis = [b""] * count
        else:
            spis = [body[at : at + spi_size] for at in range(_DELETE.size, len(body), spi_size)]
        return cls(_named(ProtocolId, protocol), spi_size, spis)


@dataclass(slots=True)
class VendorPayload(_Payload):
    """Vendor ID (3.12): opaque, e.g. b"OpenIKED-7.2"."""

    PTYPE = PayloadType.VENDOR
    data: bytes
    critical: bool = False

    def body(self) -> bytes:
        return self.data

    @classmethod
    def from_body(cls, body: bytes) -> Self:
        return cls(body)


# ---------------------------------------------------------------------------
# Traffic selectors (RFC 7296 3.13)

IPAddress = IPv4Address | IPv6Address


@dataclass(slots=True)
class TrafficSelector:
    """An address range, IP protocol and port range (3.13.1).

    Ports are kept as sent: 65535-0 means OPAQUE, and for ICMP the "ports" hold
    type and code (3.13.1). Start > end is not rejected here; that is policy.
    """

    ts_type: int
    ip_proto: int
    start_port: int
    end_port: int
    start_addr: IPAddress
    end_addr: IPAddress

    def encode(self) -> bytes:
        family = 4 if self.ts_type == TsType.TS_IPV4_ADDR_RANGE else 6
        if self.start_addr.version != family or self.end_addr.version != family:
            raise ValueError(f"{TsType.name_of(self.ts_type)} needs IPv{family} addresses")
        addrs = self.start_addr.packed + self.end_addr.packed
        return (
            _SELECTOR.pack(
                self.ts_type, self.ip_proto, _SELECTOR.size + len(addrs),
                self.start_port, self.end_port,
            )
            + addrs
        )  # fmt: skip


@dataclass(slots=True)
class UnknownSelector:
    """A selector of a TS Type we do not parse (e.g. TS_SECLABEL, RFC 9478).

    Kept so the policy layer can answer TS_UNACCEPTABLE instead of the whole
    message failing. ``ip_proto`` is whatever its second octet holds; ``data``
    is everything after the Selector Length field.
    """

    ts_type: int
    ip_proto: int
    data: bytes

    def encode(self) -> bytes:
        return _SELECTOR_HEAD.pack(self.ts_type, self.ip_proto, 4 + len(self.data)) + self.data


def _parse_selector(body: bytes, off: int) -> tuple[TrafficSelector | UnknownSelector, int]:
    if len(body) - off < _SELECTOR_HEAD.size:
        raise WireError(f"traffic selector truncated: {len(body) - off} bytes left")
    ts_type, proto, length = _SELECTOR_HEAD.unpack_from(body, off)
    if not _SELECTOR_HEAD.size <= length <= len(body) - off:
        raise WireError(f"traffic selector length {length} outside 4..{len(body) - off}")
    end = off + length
    start: IPAddress
    stop: IPAddress
    if ts_type == TsType.TS_IPV4_ADDR_RANGE:
        if length != _V4_SELECTOR_LEN:
            raise WireError(f"IPv4 traffic selector length {length}, must be 16")
        _, _, _, sport, eport = _SELECTOR.unpack_from(body, off)
        start = IPv4Address(body[off + 8 : off + 12])
        stop = IPv4Address(body[off + 12 : end])
    elif ts_type == TsType.TS_IPV6_ADDR_RANGE:
        if length != _V6_SELECTOR_LEN:
            raise WireError(f"IPv6 traffic selector length {length}, must be 40")
        _, _, _, sport, eport = _SELECTOR.unpack_from(body, off)
        start = IPv6Address(body[off + 8 : off + 24])
        stop = IPv6Address(body[off + 24 : end])
    else:
        return UnknownSelector(ts_type, proto, body[off + 4 : end]), end
    return TrafficSelector(
        _named(TsType, ts_type), _named(IpProto, proto), sport, eport, start, stop
    ), end


@dataclass(slots=True)
class TsPayload(_Payload):
    """Traffic Selector payload, TSi or TSr (3.13)."""

    kind: PayloadType
    selectors: list[TrafficSelector | UnknownSelector]
    critical: bool = False

    @property
    def ptype(self) -> int:
        return self.kind

    def body(self) -> bytes:
        return _TYPE_RESERVED3.pack(len(self.selectors)) + b"".join(
            ts.encode() for ts in self.selectors
        )

    @classmethod
    def from_body(cls, body: bytes, kind: PayloadType = PayloadType.TSi) -> Self:
        _need(body, _TYPE_RESERVED3.size, kind.name)
        count = body[0]
        selectors = []
        off = _TYPE_RESERVED3.size
        for _ in range(count):
            selector, off = _parse_selector(body, off)
            selectors.append(selector)
        if off != len(body):
            raise WireError(f"{kind.name}: {len(body) - off} bytes after its {count} selectors")
        return cls(kind, selectors)


# ---------------------------------------------------------------------------
# Encrypted payloads (RFC 7296 3.14, RFC 7383 2.5)


@dataclass(slots=True)
class SkPayload(_Payload):
    """Encrypted and Authenticated (3.14). Must be the last payload.

    Its Next Payload field names the first *inner* payload: ``first_inner``.
    ``data`` is IV || ciphertext || ICV, opened by pyike.crypto.SkCipher.
    """

    PTYPE = PayloadType.SK
    first_inner: int
    data: bytes
    critical: bool = False

    def body(self) -> bytes:
        return self.data

    @classmethod
    def from_body(cls, body: bytes, first_inner: int = 0) -> Self:
        return cls(_named(PayloadType, first_inner), body)


@dataclass(slots=True)
class SkfPayload(_Payload):
    """Encrypted Fragment (RFC 7383 2.5): fragment ``number`` of ``total``.

    ``first_inner`` is set in fragment 1 only (zero in the others).
    """

    PTYPE = PayloadType.SKF
    first_inner: int
    number: int
    total: int
    data: bytes
    critical: bool = False

    def body(self) -> bytes:
        return _SKF.pack(self.number, self.total) + self.data

    @classmethod
    def from_body(cls, body: bytes, first_inner: int = 0) -> Self:
        _need(body, _SKF.size, "SKF")
        number, total = _SKF.unpack_from(body)
        # RFC 7383 2.5: Fragment Number starts at 1 and is <= Total Fragments,
        # neither may be zero.
        if not 1 <= number <= total:
            raise WireError(f"SKF fragment {number} of {total}")
        return cls(_named(PayloadType, first_inner), number, total, body[_SKF.size :])


# ---------------------------------------------------------------------------
# Configuration and EAP (RFC 7296 3.15, 3.16), unknown payloads


@dataclass(slots=True)
class CpPayload(_Payload):
    """Configuration (3.15): CFG type and (attribute type, value) pairs."""

    PTYPE = PayloadType.CP
    cfg_type: int
    attributes: list[tuple[int, bytes]]
    critical: bool = False

    def body(self) -> bytes:
        parts = [_TYPE_RESERVED3.pack(self.cfg_type)]
        for atype, value in self.attributes:
            parts.append(_CP_ATTR.pack(atype & 0x7FFF, len(value)) + value)
        return b"".join(parts)

    @classmethod
    def from_body(cls, body: bytes) -> Self:
        _need(body, _TYPE_RESERVED3.size, "CP")
        attributes: list[tuple[int, bytes]] = []
        off = _TYPE_RESERVED3.size
        while off < len(body):
            if len(body) - off < _CP_ATTR.size:
                raise WireError(f"CP attribute truncated: {len(body) - off} bytes left")
            rtype, length = _CP_ATTR.unpack_from(body, off)
            off += _CP_ATTR.size
            if length > len(body) - off:
                raise WireError(f"CP attribute {rtype & 0x7FFF} claims {length} bytes")
            # 3.15.1: the top bit is Reserved, ignored on receipt.
            attributes.append((_named(CfgAttr, rtype & 0x7FFF), body[off : off + length]))
            off += length
        return cls(_named(CfgType, body[0]), attributes)


@dataclass(slots=True)
class EapPayload(_Payload):
    """EAP (3.16): one EAP message, opaque here."""

    PTYPE = PayloadType.EAP
    data: bytes
    critical: bool = False

    def body(self) -> bytes:
        return self.data

    @classmethod
    def from_body(cls, body: bytes) -> Self:
        return cls(body)


@dataclass(slots=True)
class UnknownPayload(_Payload):
    """A payload type we do not understand, sent without the critical bit (2.5).

    It is skipped by the protocol but kept, so the message re-encodes intact.
    """

    type: int
    data: bytes
    critical: bool = False

    @property
    def ptype(self) -> int:
        return self.type

    def body(self) -> bytes:
        return self.data

    @classmethod
    def from_body(cls, body: bytes, payload_type: int = 0) -> Self:
        return cls(payload_type, body)


Payload = (
    SaPayload | KePayload | IdPayload | CertPayload | CertReqPayload | AuthPayload
    | NoncePayload | NotifyPayload | DeletePayload | VendorPayload | TsPayload
    | SkPayload | SkfPayload | CpPayload | EapPayload | UnknownPayload
)  # fmt: skip

# ---------------------------------------------------------------------------
# Payload chains (RFC 7296 3.2)

# The dispatch table: Payload Type -> decoder of the body. SK and SKF are not
# here because their Next Payload field means something else (see _parse_chain).
_PARSERS: dict[int, Callable[[bytes], Payload]] = {
    PayloadType.SA: SaPayload.from_body,
    PayloadType.KE: KePayload.from_body,
    PayloadType.IDi: partial(IdPayload.from_body, kind=PayloadType.IDi),
    PayloadType.IDr: partial(IdPayload.from_body, kind=PayloadType.IDr),
    PayloadType.CERT: CertPayload.from_body,
    PayloadType.CERTREQ: CertReqPayload.from_body,
    PayloadType.AUTH: AuthPayload.from_body,
    PayloadType.NONCE: NoncePayload.from_body,
    PayloadType.NOTIFY: NotifyPayload.from_body,
    PayloadType.DELETE: DeletePayload.from_body,
    PayloadType.VENDOR: VendorPayload.from_body,
    PayloadType.TSi: partial(TsPayload.from_body, kind=PayloadType.TSi),
    PayloadType.TSr: partial(TsPayload.from_body, kind=PayloadType.TSr),
    PayloadType.CP: CpPayload.from_body,
    PayloadType.EAP: EapPayload.from_body,
}
_ENCRYPTED: dict[int, Callable[..., Payload]] = {
    PayloadType.SK: SkPayload.from_body,
    PayloadType.SKF: SkfPayload.from_body,
}


def _parse_chain(data: bytes, off: int, first: int, allow_encrypted: bool) -> list[Payload]:
    """Walk the payload chain in data[off:], which it must fill exactly."""
    payloads: list[Payload] = []
    ptype = first
    end = len(data)
    while ptype != PayloadType.NONE:
        if end - off < GENERIC_HEADER_LEN:
            raise WireError(f"payload type {ptype} at offset {off}: truncated header")
        nxt, flags, length = _GENERIC.unpack_from(data, off)
        if not GENERIC_HEADER_LEN <= length <= end - off:
            raise WireError(f"payload type {ptype} at offset {off}: length {length} out of range")
        critical = bool(flags & CRITICAL)
        body = data[off + GENERIC_HEADER_LEN : off + length]
        off += length
        if ptype in _ENCRYPTED:
            # 3.14 / RFC 7383 2.5: the encrypted payload is the last one; its Next
            # Payload field is the type of the first payload inside it.
            if not allow_encrypted:
                raise WireError(f"encrypted payload {ptype} inside an encrypted payload")
            if off != end:
                raise WireError(
                    f"{end - off} bytes after the encrypted payload, which must be last"
                )
            payload = _ENCRYPTED[ptype](body, first_inner=nxt)
            payload.critical = critical
            payloads.append(payload)
            return payloads
        parser = _PARSERS.get(ptype)
        if parser is not None:
            payload = parser(body)
        elif critical:
            raise UnsupportedCriticalPayload(ptype)
        else:
            payload = UnknownPayload.from_body(body, ptype)
        payload.critical = critical
        payloads.append(payload)
        ptype = nxt
    if off != end:
        raise WireError(f"{end - off} bytes after the last payload")
    return payloads


def parse_payloads(first: int, data: bytes) -> list[Payload]:
    """Decode a chain starting with type ``first``, e.g. decrypted SK content."""
    return _parse_chain(bytes(data), 0, first, allow_encrypted=False)


def build_payloads(payloads: list[Payload]) -> tuple[int, bytes]:
    """Chain payloads: returns (type of the first one, the encoded bytes)."""
    parts: list[bytes] = []
    for index, payload in enumerate(payloads):
        if isinstance(payload, SkPayload | SkfPayload):
            if index != len(payloads) - 1:
                raise ValueError("the SK/SKF payload must be the last one (RFC 7296 3.14)")
            nxt = payload.first_inner
        else:
            nxt = payloads[index + 1].ptype if index + 1 < len(payloads) else PayloadType.NONE
        body = payload.body()
        parts.append(payload_header(nxt, GENERIC_HEADER_LEN + len(body), payload.critical))
        parts.append(body)
    first = payloads[0].ptype if payloads else PayloadType.NONE
    return first, b"".join(parts)


# ---------------------------------------------------------------------------
# Messages

P = TypeVar("P")


@dataclass(slots=True)
class Message:
    """A decoded IKE message: the header fields that matter plus its payloads.

    For an encrypted message ``payloads`` ends with the SkPayload/SkfPayload;
    the inner payloads come from parse_payloads() after decryption.
    """

    spi_i: bytes
    spi_r: bytes
    exchange: int
    flags: int
    message_id: int
    payloads: list[Payload]

    @property
    def is_response(self) -> bool:
        return bool(self.flags & HeaderFlag.RESPONSE)

    @property
    def is_initiator(self) -> bool:
        return bool(self.flags & HeaderFlag.INITIATOR)

    def find(self, cls: type[P]) -> P | None:
        """The first payload of this class, or None."""
        return next((p for p in self.payloads if isinstance(p, cls)), None)

    def find_all(self, cls: type[P]) -> list[P]:
        return [p for p in self.payloads if isinstance(p, cls)]

    def notify(self, ntype: int) -> NotifyPayload | None:
        """The first Notify payload of this type, or None."""
        return next(
            (p for p in self.payloads if isinstance(p, NotifyPayload) and p.type == ntype), None
        )


def parse_message(data: bytes) -> Message:
    """Decode one IKE datagram (without the 4-byte non-ESP marker of port 4500)."""
    data = bytes(data)
    header = Header.parse(data)
    if header.length != len(data):
        raise WireError(f"header length field {header.length}, datagram is {len(data)} bytes")
    payloads = _parse_chain(data, HEADER_LEN, header.next_payload, allow_encrypted=True)
    return Message(
        header.spi_i, header.spi_r, header.exchange, header.flags, header.message_id, payloads
    )


def build_message(msg: Message) -> bytes:
    """Encode a message (an SK payload's data must already be sealed)."""
    first, body = build_payloads(msg.payloads)
    header = Header(
        msg.spi_i, msg.spi_r, first, msg.exchange, msg.flags, msg.message_id,
        length=HEADER_LEN + len(body),
    )  # fmt: skip
    return header.pack() + body


# ---------------------------------------------------------------------------
# Pretty printing for `pyike decode`


def _hex(data: bytes) -> str:
    """Hex, cut to 16 bytes for anything longer than a SHA-1 hash (20 bytes)."""
    return data.hex() if len(data) <= 20 else data[:16].hex() + "..."


def _text_or_hex(data: bytes) -> str:
    if data and all(0x20 <= b < 0x7F for b in data):
        return '"' + data.decode("ascii") + '"'
    return _hex(data)


def _sized(data: bytes) -> str:
    """'32 bytes  ab12...' or '0 bytes'."""
    return f"{len(data)} bytes  {_hex(data)}" if data else "0 bytes"


def _format_transform(t: Transform) -> str:
    enum_cls = TRANSFORM_ID_ENUMS.get(t.type)
    name = enum_cls.name_of(t.id) if enum_cls else str(t.id)
    text = f"{TransformType.name_of(t.type)} {name}"
    if t.key_length is not None:
        text += f" keylen={t.key_length}"
    for atype, value in t.other_attributes:
        shown = value if isinstance(value, int) else "0x" + value.hex()
        text += f" attr{atype}={shown}"
    return text


def _fmt_sa(p: SaPayload) -> list[str]:
    lines = ["SA"]
    for prop in p.proposals:
        spi = prop.spi.hex()
        lines.append(f"  proposal {prop.number} {ProtocolId.name_of(prop.protocol)} spi={spi}")
        lines.extend("    " + _format_transform(t) for t in prop.transforms)
    return lines


def _fmt_ke(p: KePayload) -> list[str]:
    return [f"KE group={DhId.name_of(p.group)} {_sized(p.data)}"]


def _format_id_data(id_type: int, data: bytes) -> str:
    if id_type == IdType.ID_IPV4_ADDR and len(data) == 4:
        return str(IPv4Address(data))
    if id_type == IdType.ID_IPV6_ADDR and len(data) == 16:
        return str(IPv6Address(data))
    if id_type in (IdType.ID_FQDN, IdType.ID_RFC822_ADDR):
        return _text_or_hex(data)
    return _sized(data)


def _fmt_id(p: IdPayload) -> list[str]:
    kind = PayloadType.name_of(p.kind)
    return [f"{kind} {IdType.name_of(p.id_type)} {_format_id_data(p.id_type, p.data)}"]


def _fmt_cert(p: CertPayload) -> list[str]:
    return [f"CERT {CertEncoding.name_of(p.encoding)} {_sized(p.data)}"]


def _fmt_certreq(p: CertReqPayload) -> list[str]:
    text = f"CERTREQ {CertEncoding.name_of(p.encoding)} {_sized(p.data)}"
    if p.encoding == CertEncoding.X509_SIGNATURE and p.data and len(p.data) % 20 == 0:
        text += f" ({len(p.data) // 20} CA key hashes)"  # 3.7: SHA-1 of each CA's key
    return [text]


def _fmt_auth(p: AuthPayload) -> list[str]:
    return [f"AUTH {AuthMethod.name_of(p.method)} {_sized(p.data)}"]


def _fmt_nonce(p: NoncePayload) -> list[str]:
    return [f"NONCE {_sized(p.data)}"]


def _format_notify_data(p: NotifyPayload) -> str:
    if p.type == NotifyType.SIGNATURE_HASH_ALGORITHMS and len(p.data) % 2 == 0:
        ids = struct.unpack(f"!{len(p.data) // 2}H", p.data)
        return " ".join(HashAlgorithm.name_of(h) for h in ids)
    if p.type == NotifyType.INVALID_KE_PAYLOAD and len(p.data) == 2:
        return "group=" + DhId.name_of(int.from_bytes(p.data, "big"))
    return _sized(p.data) if p.data else ""


def _fmt_notify(p: NotifyPayload) -> list[str]:
    text = f"NOTIFY {NotifyType.name_of(p.type)}"
    if p.protocol or p.spi:
        text += f" {ProtocolId.name_of(p.protocol)} spi=0x{p.spi.hex()}"
    data = _format_notify_data(p)
    return [f"{text} {data}" if data else text]


def _fmt_delete(p: DeletePayload) -> list[str]:
    spis = ", ".join("0x" + spi.hex() for spi in p.spis)
    text = f"DELETE {ProtocolId.name_of(p.protocol)} {len(p.spis)} SPIs"
    return [f"{text} {spis}" if spis else text]


def _fmt_vendor(p: VendorPayload) -> list[str]:
    return [f"VENDOR {len(p.data)} bytes  {_text_or_hex(p.data)}"]


def format_selector(ts: TrafficSelector | UnknownSelector) -> str:
    """E.g. 'tcp 2001:db8::1-2001:db8::1 port 25-25'."""
    if isinstance(ts, UnknownSelector):
        return f"{TsType.name_of(ts.ts_type)} {_sized(ts.data)}"
    proto = "any" if ts.ip_proto == 0 else IpProto.name_of(ts.ip_proto).lower()
    text = f"{proto} {ts.start_addr}-{ts.end_addr}"
    if ts.ip_proto in (IpProto.ICMP, IpProto.ICMPV6):
        # 3.13.1: for ICMP the port fields carry type (high octet) and code.
        s, e = ts.start_port, ts.end_port
        return f"{text} type/code {s >> 8}/{s & 0xFF}-{e >> 8}/{e & 0xFF}"
    return f"{text} port {ts.start_port}-{ts.end_port}"


def _fmt_ts(p: TsPayload) -> list[str]:
    return [PayloadType.name_of(p.kind)] + ["  " + format_selector(ts) for ts in p.selectors]


def _fmt_sk(p: SkPayload) -> list[str]:
    inner = PayloadType.name_of(p.first_inner)
    return [f"SK (encrypted, first inner payload {inner}) {len(p.data)} bytes"]


def _fmt_skf(p: SkfPayload) -> list[str]:
    inner = PayloadType.name_of(p.first_inner)
    return [
        f"SKF fragment {p.number}/{p.total} (encrypted, first inner payload {inner}) "
        f"{len(p.data)} bytes"
    ]


def _format_cfg_value(atype: int, value: bytes) -> str:
    if len(value) == 4 and atype in (
        CfgAttr.INTERNAL_IP4_ADDRESS, CfgAttr.INTERNAL_IP4_NETMASK, CfgAttr.INTERNAL_IP4_DNS,
        CfgAttr.INTERNAL_IP4_NBNS, CfgAttr.INTERNAL_IP4_DHCP,
    ):  # fmt: skip
        return str(IPv4Address(value))
    if len(value) == 16 and atype in (CfgAttr.INTERNAL_IP6_DNS, CfgAttr.INTERNAL_IP6_DHCP):
        return str(IPv6Address(value))
    if len(value) == 17 and atype in (CfgAttr.INTERNAL_IP6_ADDRESS, CfgAttr.INTERNAL_IP6_SUBNET):
        return f"{IPv6Address(value[:16])}/{value[16]}"  # 3.15.1: address + prefix length
    return _sized(value) if value else "(empty)"


def _fmt_cp(p: CpPayload) -> list[str]:
    lines = [f"CP {CfgType.name_of(p.cfg_type)}"]
    for atype, value in p.attributes:
        lines.append(f"  {CfgAttr.name_of(atype)} {_format_cfg_value(atype, value)}")
    return lines


def _fmt_eap(p: EapPayload) -> list[str]:
    return [f"EAP {_sized(p.data)}"]


def _fmt_unknown(p: UnknownPayload) -> list[str]:
    return [f"UNKNOWN payload type {p.type} {_sized(p.data)}"]


_FORMATTERS: dict[type, Callable[..., list[str]]] = {
    SaPayload: _fmt_sa,
    KePayload: _fmt_ke,
    IdPayload: _fmt_id,
    CertPayload: _fmt_cert,
    CertReqPayload: _fmt_certreq,
    AuthPayload: _fmt_auth,
    NoncePayload: _fmt_nonce,
    NotifyPayload: _fmt_notify,
    DeletePayload: _fmt_delete,
    VendorPayload: _fmt_vendor,
    TsPayload: _fmt_ts,
    SkPayload: _fmt_sk,
    SkfPayload: _fmt_skf,
    CpPayload: _fmt_cp,
    EapPayload: _fmt_eap,
    UnknownPayload: _fmt_unknown,
}


def _format_payload(payload: Payload, depth: int) -> Iterator[str]:
    lines = _FORMATTERS[type(payload)](payload)
    if payload.critical:
        lines[0] += "  (critical)"
    pad = "  " * depth
    return (pad + line for line in lines)


def format_message(msg: Message, inner: list[Payload] | None = None) -> str:
    """A readable payload tree; ``inner`` (decrypted SK content) goes under SK."""
    direction = "response" if msg.is_response else "request"
    role = "initiator" if msg.is_initiator else "responder"
    head = (
        f"{ExchangeType.name_of(msg.exchange)} {direction} #{msg.message_id}  {role}  "
        f"spi_i=0x{msg.spi_i.hex()} spi_r=0x{msg.spi_r.hex()}"
    )
    odd_flags = msg.flags & ~(HeaderFlag.INITIATOR | HeaderFlag.RESPONSE)
    if odd_flags:
        head += f"  flags=0x{msg.flags:02x}"
    lines = [head]
    for payload in msg.payloads:
        lines.extend(_format_payload(payload, 1))
        if inner is not None and isinstance(payload, SkPayload | SkfPayload):
            for inner_payload in inner:
                lines.extend(_format_payload(inner_payload, 2))
    return "\n".join(lines)
