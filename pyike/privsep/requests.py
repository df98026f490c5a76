"""The privileged parent's request set: typed requests, wire format, pure parser.

Everything the unprivileged (network-facing) process may ask of the root parent
is one of the requests below, one per SOCK_SEQPACKET message. The parent runs
:func:`parse_request` on every message: a pure function (bytes and a policy in,
a typed request or a :class:`Refusal` out; no I/O, no globals) so it can be
fuzzed. A compromised child can send any bytes; the parser therefore checks
every field against the fixed layout and the configured policy, and anything
that does not fit exactly is refused (the parent logs it and executes nothing).

Wire format (network byte order): a 4-byte header ``version(1) type(1)
body_length(2)``, then a fixed-size body per type:

===========  ==========================================================
ADDR_ADD/DEL ifname[16] family(1: 4|6) prefixlen(1) address[16]
ROUTE_ADD/DEL ifname[16] family(1) prefixlen(1) dst[16] src_family(1: 0|4|6)
             src[16]
UDP_OPEN     family(1) port(2) address[16]
PEER_KEY     id_type(1) length(1) ident[length]
RELOAD       (empty)
===========  ==========================================================

Addresses are 16 bytes; an IPv4 address uses the first 4 and the rest must be
zero, and an interface name is NUL-padded with nothing after the first NUL
(no two encodings of one request). Replies (parent to child) are ``version(1)
status(1) reserved(2) body_length(4)`` and a body; UDP_OPEN's socket travels
as SCM_RIGHTS ancillary data.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)

from pyike.registry import IdType

VERSION = 1
MAX_REQUEST = 512  # bytes; the largest valid request (PEER_KEY) is 4 + 2 + 255
MAX_REPLY = 4 * 1024 * 1024  # a reload's configuration, pickled
IFNAMSIZ = 16  # linux/if.h, NUL included
MAX_IDENT = 255

HEADER = struct.Struct("!BBH")
REPLY_HEADER = struct.Struct("!BBHI")
_ADDR = struct.Struct("!16sBB16s")
_ROUTE = struct.Struct("!16sBB16sB16s")
_UDP = struct.Struct("!BH16s")
_PEER_KEY = struct.Struct("!BB")

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network


class RequestType(enum.IntEnum):
    ADDR_ADD = 1
    ADDR_DEL = 2
    ROUTE_ADD = 3  # a "route replace": idempotent, also restores a changed route
    ROUTE_DEL = 4
    UDP_OPEN = 5
    PEER_KEY = 6
    RELOAD = 7


class Status(enum.IntEnum):
    OK = 0
    REFUSED = 1  # not parsed or not allowed: nothing was executed
    FAILED = 2  # allowed, executed, and the kernel or the file system said no


# Raw public keys are looked up for these ID types only (pyike.keys.PEER_KEY_DIRS).
PEER_KEY_ID_TYPES = frozenset(
    {IdType.ID_FQDN, IdType.ID_RFC822_ADDR, IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR}
)


@dataclass(frozen=True, slots=True)
class AddressRequest:
    """Add or remove an address on our TUN device."""

    add: bool
    ifname: str
    address: Address
    prefixlen: int


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """Add (replace) or remove a route through our TUN device."""

    add: bool
    ifname: str
    network: Network
    prefsrc: Address | None = None


@dataclass(frozen=True, slots=True)
class UdpOpenRequest:
    """Open a UDP socket bound to ``address``:``port`` (a new local address after a
    netlink change; ports below 1024 need privilege). Answered with the socket."""

    address: Address
    port: int


@dataclass(frozen=True, slots=True)
class PeerKeyRequest:
    """A peer's raw public key from the key directory (the child cannot read it)."""

    id_type: IdType
    ident: str


@dataclass(frozen=True, slots=True)
class ReloadRequest:
    """Re-read the configuration and our private key (SIGHUP)."""


Request = AddressRequest | RouteRequest | UdpOpenRequest | PeerKeyRequest | ReloadRequest


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a message was refused (for the log; the child only learns 'refused')."""

    reason: str


@dataclass(frozen=True, slots=True)
class PrivPolicy:
    """What the parent allows: taken from the configuration it read itself."""

    ifname: str
    addresses: frozenset[tuple[Address, int]] = frozenset()  # TUN (address, prefixlen)
    routes: frozenset[Network] = frozenset()  # remote flow networks via the TUN
    ports: frozenset[int] = frozenset({500, 4500})
    id_types: frozenset[int] = field(default=PEER_KEY_ID_TYPES)
    # The previous configuration's, after a reload: these may still be removed.
    old_addresses: frozenset[tuple[Address, int]] = frozenset()
    old_routes: frozenset[Network] = frozenset()


# ---------------------------------------------------------------------------
# Encoding (the child's side, and tests)


def _pack_ifname(name: str) -> bytes:
    raw = name.encode("ascii")
    if not raw or len(raw) >= IFNAMSIZ:
        raise ValueError(f"interface name {name!r}: 1 to {IFNAMSIZ - 1} characters")
    return raw


def _frame(kind: RequestType, body: bytes) -> bytes:
    return HEADER.pack(VERSION, kind, len(body)) + body


def encode_request(req: Request) -> bytes:
    """The wire form of a request (what :func:`parse_request` reads back)."""
    if isinstance(req, AddressRequest):
        kind = RequestType.ADDR_ADD if req.add else RequestType.ADDR_DEL
        body = _ADDR.pack(
            _pack_ifname(req.ifname), req.address.version, req.prefixlen, req.address.packed
        )
    elif isinstance(req, RouteRequest):
        kind = RequestType.ROUTE_ADD if req.add else RequestType.ROUTE_DEL
        src = req.prefsrc
        body = _ROUTE.pack(
            _pack_ifname(req.ifname),
            req.network.version,
            req.network.prefixlen,
            req.network.network_address.packed,
            src.version if src is not None else 0,
            src.packed if src is not None else b"",
        )
    elif isinstance(req, UdpOpenRequest):
        kind = RequestType.UDP_OPEN
        body = _UDP.pack(req.address.version, req.port, req.address.packed)
    elif isinstance(req, PeerKeyRequest):
        kind = RequestType.PEER_KEY
        ident = req.ident.encode()
        if not 0 < len(ident) <= MAX_IDENT:
            raise ValueError(f"ID {req.ident!r}: 1 to {MAX_IDENT} bytes")
        body = _PEER_KEY.pack(int(req.id_type), len(ident)) + ident
    elif isinstance(req, ReloadRequest):
        kind, body = RequestType.RELOAD, b""
    else:
        raise TypeError(f"not a privsep request: {req!r}")
    return _frame(kind, body)


def encode_reply(status: Status, body: bytes = b"") -> bytes:
    return REPLY_HEADER.pack(VERSION, status, 0, len(body)) + body


def parse_reply(data: bytes) -> tuple[Status, bytes]:
    """(status, body) of a parent's reply; ValueError if it is not one."""
    if len(data) < REPLY_HEADER.size:
        raise ValueError(f"privsep reply of {len(data)} bytes")
    version, status, _reserved, length = REPLY_HEADER.unpack_from(data)
    if version != VERSION or length != len(data) - REPLY_HEADER.size:
        raise ValueError("malformed privsep reply")
    return Status(status), data[REPLY_HEADER.size :]


# ---------------------------------------------------------------------------
# Parsing (the parent's side): pure, total, strict


class _Bad(Exception):
    pass


def _ifname(raw: bytes, policy: PrivPolicy) -> str:
    name, _, rest = raw.partition(b"\0")
    if rest.strip(b"\0") or not name:
        raise _Bad("interface name not NUL-padded")
    try:
        text = name.decode("ascii")
    except UnicodeDecodeError:
        raise _Bad("interface name not ASCII") from None
    if text != policy.ifname:
        raise _Bad(f"interface {text!r} is not ours ({policy.ifname})")
    return text


def _address(version: int, raw: bytes) -> Address:
    if version == 4:
        if raw[4:] != bytes(12):
            raise _Bad("IPv4 address with trailing bytes")
        return IPv4Address(raw[:4])
    if version == 6:
        return IPv6Address(raw)
    raise _Bad(f"address family {version}")


def _prefixlen(address: Address, prefixlen: int) -> int:
    if prefixlen > address.max_prefixlen:
        raise _Bad(f"prefix length {prefixlen} for IPv{address.version}")
    return prefixlen


def _body(kind: RequestType, body: bytes, policy: PrivPolicy) -> Request:
    if kind in (RequestType.ADDR_ADD, RequestType.ADDR_DEL):
        if len(body) != _ADDR.size:
            raise _Bad(f"{kind.name} body of {len(body)} bytes, not {_ADDR.size}")
        raw_if, version, plen, raw = _ADDR.unpack(body)
        ifname = _ifname(raw_if, policy)
        addr = _address(version, raw)
        plen = _prefixlen(addr, plen)
        add = kind == RequestType.ADDR_ADD
        allowed = policy.addresses if add else policy.addresses | policy.old_addresses
        if (addr, plen) not in allowed:
            raise _Bad(f"address {addr}/{plen} is not a configured flow address")
        return AddressRequest(add, ifname, addr, plen)
    if kind in (RequestType.ROUTE_ADD, RequestType.ROUTE_DEL):
        if len(body) != _ROUTE.size:
            raise _Bad(f"{kind.name} body of {len(body)} bytes, not {_ROUTE.size}")
        raw_if, version, plen, raw, src_version, raw_src = _ROUTE.unpack(body)
        ifname = _ifname(raw_if, policy)
        dst = _address(version, raw)
        try:
            net = ip_network(f"{dst}/{_prefixlen(dst, plen)}", strict=True)
        except ValueError:
            raise _Bad(f"route {dst}/{plen} has host bits set") from None
        add = kind == RequestType.ROUTE_ADD
        if net not in (policy.routes if add else policy.routes | policy.old_routes):
            raise _Bad(f"route {net} is not a configured remote flow")
        src: Address | None = None
        if src_version:
            src = _address(src_version, raw_src)
            if src.version != net.version or not any(src == a for a, _ in policy.addresses):
                raise _Bad(f"route source {src} is not a configured flow address")
        elif raw_src != bytes(16):
            raise _Bad("route without source has source bytes")
        return RouteRequest(add, ifname, net, src)
    if kind == RequestType.UDP_OPEN:
        if len(body) != _UDP.size:
            raise _Bad(f"UDP_OPEN body of {len(body)} bytes, not {_UDP.size}")
        version, port, raw = _UDP.unpack(body)
        addr = _address(version, raw)
        if port not in policy.ports:
            raise _Bad(f"UDP port {port} is not one of ours {sorted(policy.ports)}")
        if addr.is_multicast or addr.is_loopback or addr.is_link_local:
            raise _Bad(f"UDP address {addr} cannot carry IKE")
        return UdpOpenRequest(addr, port)
    if kind == RequestType.PEER_KEY:
        if len(body) < _PEER_KEY.size:
            raise _Bad("PEER_KEY body too short")
        id_type, length = _PEER_KEY.unpack_from(body)
        ident_raw = body[_PEER_KEY.size :]
        if length == 0 or length != len(ident_raw):
            raise _Bad(f"PEER_KEY ID length {length} for {len(ident_raw)} bytes")
        if id_type not in policy.id_types:
            raise _Bad(f"no raw public keys for ID type {IdType.name_of(id_type)}")
        try:
            ident = ident_raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _Bad("PEER_KEY ID not UTF-8") from None
        if not ident.isprintable() or "/" in ident or ident in (".", ".."):
            raise _Bad(f"PEER_KEY ID {ident!r} cannot name a key file")
        if id_type in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR):
            try:
                a = ip_address(ident)
            except ValueError:
                raise _Bad(f"PEER_KEY ID {ident!r} is not an address") from None
            if (a.version == 4) != (id_type == IdType.ID_IPV4_ADDR):
                raise _Bad(f"PEER_KEY ID {ident!r}: wrong family for its type")
        return PeerKeyRequest(IdType(id_type), ident)
    if kind == RequestType.RELOAD:
        if body:
            raise _Bad(f"RELOAD with a {len(body)}-byte body")
        return ReloadRequest()
    raise _Bad(f"request type {kind}")  # pragma: no cover - every type is handled


def parse_request(data: bytes, policy: PrivPolicy) -> Request | Refusal:
    """Parse and check one message from the unprivileged process.

    Total: any bytes give a request or a Refusal (never an exception), and a request
    is returned only if every field is well-formed and allowed by ``policy``."""
    if len(data) < HEADER.size:
        return Refusal(f"message of {len(data)} bytes is shorter than a header")
    if len(data) > MAX_REQUEST:
        return Refusal(f"message of {len(data)} bytes is over the {MAX_REQUEST}-byte limit")
    version, kind, length = HEADER.unpack_from(data)
    if version != VERSION:
        return Refusal(f"version {version}, not {VERSION}")
    if length != len(data) - HEADER.size:
        return Refusal(f"header says {length} body bytes, message has {len(data) - HEADER.size}")
    try:
        rtype = RequestType(kind)
    except ValueError:
        return Refusal(f"unknown request type {kind}")
    try:
        return _body(rtype, data[HEADER.size :], policy)
    except _Bad as e:
        return Refusal(f"{rtype.name}: {e}")
