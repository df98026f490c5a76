"""iked.conf(5) parser and policy model.

pyike reads the same configuration file as OpenBSD's iked, so users keep their
``iked.conf``.  The specification is iked.conf(5) of OpenIKED 7.2 together with
the behaviour of iked's own parser (``parse.y``), measured against Debian's
``iked -n -v``.  Where iked's behaviour is surprising we follow iked and say so
in a comment; where pyike differs on purpose the comment says ``pyike:``.

Where things are:
  _Lexer                    characters -> tokens (comments, ``\\`` continuation,
                            quotes, ``$macro`` expansion), as iked's yylex()
  _Parser                   tokens -> statements (``set``, ``user``, ``include``,
                            macro definitions, ``ikev2`` rules), strict iked order
  _PolicyBuilder            one parsed ``ikev2`` rule -> Policy: host resolution,
                            flow expansion, local/peer derivation, proposals
  _ike_proposals / _child_proposals   iked's default and configured proposals
  format_policy             a Policy printed as ``iked -n -v`` prints it
  check_policies            semantic warnings (responder policy shadowing, ...)
  select_responder_policy   iked's responder policy choice (last match wins)

Nothing here opens a socket: host names go through an injectable resolver.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import stat
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, NoReturn

from pyike import algorithms
from pyike.algorithms import (  # noqa: F401 (kept importable from here)
    DH_BRAINPOOL_P224R1,
    DH_BRAINPOOL_P256R1,
    DH_BRAINPOOL_P384R1,
    DH_BRAINPOOL_P512R1,
    DH_ECP_192,
    DH_ECP_224,
    DH_SNTRUP761X25519,
    ENCR_BLOWFISH,
    ENCR_CAST,
)
from pyike.registry import (
    CfgAttr,
    DhId,
    EncrId,
    EsnId,
    IdType,
    IntegId,
    PrfId,
    ProtocolId,
    TransformType,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Resolver = Callable[[str], Sequence[IPAddress]]
Platform = Literal["openbsd", "linux"]

# A transform as configured: (type, transform id, key length in bits or None).
TransformSpec = tuple[TransformType, int, int | None]

CFG_INTERNAL_IP6_NBNS = 11  # RFC 4306 section 3.15.1 (reserved by RFC 7296)
CFG_INTERNAL_IP4_SERVER = 23456  # MS-IKEE private use, iked's "access-server"
CFG_INTERNAL_IP6_SERVER = 23457  # MS-IKEE private use, iked's "access-server"

# iked's defaults (iked.conf(5) "lifetime", iked.h IKED_LIFETIME_*): Child SAs
# rekey after 3 hours or 4 GiB; the IKE SA is not rekeyed unless ikelifetime
# is set ("A zero value disables active IKE SA rekeying. This is the default.").
DEFAULT_LIFETIME = 10800
DEFAULT_LIFETIME_BYTES = 4 * 1024 * 1024 * 1024
DEFAULT_IKELIFETIME = 0
DEFAULT_DPD_CHECK_INTERVAL = 60  # iked.conf(5) "set dpd_check_interval"

_MAX_TOKEN = 8095  # iked's lexer buffer is 8096 bytes including the NUL
_MAX_PSK = 1024  # iked's auth_data buffer
_MAX_INCLUDE_DEPTH = 16  # pyike: iked has no limit (and loops on self-includes)
_MAX_INCLUDE_SIZE = 16 * 1024 * 1024


# ---------------------------------------------------------------------------
# Errors


@dataclass(frozen=True, slots=True)
class Position:
    """Where a token starts: file name as given, 1-based line and column."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    pos: Position
    message: str

    def __str__(self) -> str:
        return f"{self.pos}: {self.message}"


class ConfigError(Exception):
    """One or more errors in a configuration; str() gives file:line:col lines."""

    def __init__(self, diagnostics: Sequence[Diagnostic]) -> None:
        self.diagnostics = list(diagnostics)
        super().__init__("\n".join(str(d) for d in self.diagnostics))


class _ParseError(Exception):
    """Internal: one error at one position; the parser records and resyncs."""

    def __init__(self, pos: Position, message: str) -> None:
        super().__init__(message)
        self.pos = pos
        self.message = message


def _fail(pos: Position, message: str) -> NoReturn:
    raise _ParseError(pos, message)


# ---------------------------------------------------------------------------
# The policy model (wire-independent)


@dataclass(slots=True)
class ProposalSpec:
    """One SA proposal: a protocol and its transforms, most preferred first."""

    protocol: ProtocolId
    transforms: list[TransformSpec]

    def of_type(self, ttype: TransformType) -> list[TransformSpec]:
        return [t for t in self.transforms if t[0] == ttype]


@dataclass(slots=True)
class Flow:
    """One traffic selector pair, after expanding lists, ``any`` and names.

    ``proto`` None means any protocol; ports None mean any port.  ``*_is_net``
    records whether the address was written as a network (``/len`` or
    ``any``), which only changes how iked prints it.  ``*_dynamic`` marks the
    ``dynamic`` keyword (the address assigned through a config payload).
    """

    proto: int | None
    src: IPNetwork
    src_port: int | None
    dst: IPNetwork
    dst_port: int | None
    src_nat: IPNetwork | None = None
    src_is_net: bool = False
    dst_is_net: bool = False
    src_dynamic: bool = False
    dst_dynamic: bool = False


@dataclass(slots=True)
class AuthSpec:
    """How the peer authenticates (iked.conf(5) "ikeauth").

    method: "signature" (iked's default: any signature method), "rsa",
    "ecdsa256", "ecdsa384", "ecdsa521", "rfc7427", "psk" or "eap".
    """

    method: str = "signature"
    psk: bytes | None = None
    eap: str | None = None  # iked's EAP type name, e.g. "MSCHAP_V2"


@dataclass(slots=True)
class CfgSpec:
    """A ``config``/``request`` configuration payload attribute."""

    action: Literal["config", "request"]
    option: str  # the iked.conf name, e.g. "address", "name-server"
    attr: int  # configuration attribute type (RFC 7296 section 3.15.1)
    address: IPInterface | None  # None for "any" (request without a value)


@dataclass(slots=True)
class User:
    name: str
    password: str


@dataclass(slots=True)
class Policy:
    name: str
    active: bool
    quick: bool
    skip: bool
    tunnel: bool
    encap: ProtocolId
    af: int | None  # 4 or 6 (inet/inet6), None when neither given nor implied
    flows: list[Flow]
    local: list[IPNetwork] | None  # None means any
    peer: IPNetwork | None  # None means any
    peer_host: str | None  # host name as written, re-resolved by the daemon
    ike_proposals: list[ProposalSpec]
    child_proposals: list[ProposalSpec]
    srcid: tuple[IdType, str] | None
    dstid: tuple[IdType, str] | None
    ikelifetime: int = DEFAULT_IKELIFETIME
    lifetime: int = DEFAULT_LIFETIME
    lifetime_bytes: int = DEFAULT_LIFETIME_BYTES
    auth: AuthSpec = field(default_factory=AuthSpec)
    default: bool = False
    ipcomp: bool = False
    protocols: list[int] = field(default_factory=list)  # "proto" as written
    local_host: str | None = None
    local_is_net: bool = False
    peer_is_net: bool = False
    srcid_from_hostname: bool = False  # srcid not configured: hostname as FQDN
    config: list[CfgSpec] = field(default_factory=list)
    iface: str | None = None
    tag: str | None = None
    tap: int | None = None  # enc(4) unit
    source: Position | None = None


@dataclass(slots=True)
class GlobalOptions:
    """``set`` options.  Man-page options pyike does not use go to ``generic``."""

    passive: bool = False
    dpd_check_interval: int = DEFAULT_DPD_CHECK_INTERVAL
    fragmentation: bool = False
    mobike: bool = True
    enforcesingleikesa: bool = False
    vendorid: bool = True
    generic: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Config:
    options: GlobalOptions
    policies: list[Policy]
    macros: dict[str, str]
    users: list[User] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True, order=True)
class PolicyKey:
    """Which configured policy: its name and, because iked accepts a name twice
    (check_policies only warns), which policy of that name (0: the first in the
    file). Stable across a reload as long as the file keeps its names."""

    name: str
    ordinal: int = 0

    def __str__(self) -> str:
        return self.name if self.ordinal == 0 else f"{self.name}#{self.ordinal + 1}"


def policy_keys(policies: Sequence[Policy]) -> list[PolicyKey]:
    """One key per policy, in file order (the nth policy of a name gets ordinal n-1)."""
    seen: dict[str, int] = {}
    keys: list[PolicyKey] = []
    for pol in policies:
        keys.append(PolicyKey(pol.name, seen.get(pol.name, 0)))
        seen[pol.name] = seen.get(pol.name, 0) + 1
    return keys


# ---------------------------------------------------------------------------
# Transform, protocol and service tables (iked parse.y order: the order
# matters, because iked accepts any prefix of a name and takes the first match)
#
# The transform names come from pyike.algorithms, the one table that also says
# what pyike can serve; a configured transform it cannot serve is refused here.


@dataclass(frozen=True, slots=True)
class _Xf:
    name: str
    id: int
    length: int = 0  # iked's "length" column in bytes, used when printing
    key_bits: int | None = None  # Key Length attribute (RFC 7296 3.3.5)
    aead: bool = False  # integrity is implicit (RFC 5282, RFC 7634)
    ike: bool = True  # pyike can serve it for an IKE SA (pyike.algorithms)
    esp: bool = True  # ... for a Child SA


def _xfs(rows: Sequence[algorithms.EncrAlg | algorithms.IntegAlg | algorithms.PrfAlg
                        | algorithms.GroupAlg]) -> tuple[_Xf, ...]:  # fmt: skip
    out: list[_Xf] = []
    for row in rows:
        for name in row.names:
            if isinstance(row, algorithms.EncrAlg):
                out.append(_Xf(name, row.id, row.iked_length, row.key_bits, row.aead,
                               row.ike, row.esp))  # fmt: skip
            else:
                use_ike, use_esp = row.serves(algorithms.Use.IKE), row.serves(algorithms.Use.ESP)
                out.append(_Xf(name, row.id, ike=use_ike, esp=use_esp))
    return tuple(out)


_ENC_IKE = _xfs([r for r in algorithms.ENCRS if r.in_ikesa])
_ENC_ESP = _xfs([r for r in algorithms.ENCRS if r.in_childsa])
_AUTH = _xfs([r for r in algorithms.INTEGS if r.names])
_PRF = _xfs([r for r in algorithms.PRFS if r.names])
_GROUP = _xfs([r for r in algorithms.GROUPS if r.names])

_ESN: tuple[_Xf, ...] = (_Xf("esn", EsnId.ESN), _Xf("noesn", EsnId.NO_ESN))

# iked's "ikeauth" method words; "none" is in iked's table but rejected.
_METHODS = ("none", "rsa", "ecdsa256", "ecdsa384", "ecdsa521", "rfc7427", "signature")

# iked's config payload options: (name, attribute, IP version) in parse.y order.
_CFG_OPTIONS: tuple[tuple[str, int, int], ...] = (
    ("address", CfgAttr.INTERNAL_IP4_ADDRESS, 4),
    ("netmask", CfgAttr.INTERNAL_IP4_NETMASK, 4),
    ("name-server", CfgAttr.INTERNAL_IP4_DNS, 4),
    ("netbios-server", CfgAttr.INTERNAL_IP4_NBNS, 4),
    ("dhcp-server", CfgAttr.INTERNAL_IP4_DHCP, 4),
    ("address", CfgAttr.INTERNAL_IP6_ADDRESS, 6),
    ("name-server", CfgAttr.INTERNAL_IP6_DNS, 6),
    ("netbios-server", CFG_INTERNAL_IP6_NBNS, 6),
    ("dhcp-server", CfgAttr.INTERNAL_IP6_DHCP, 6),
    ("protected-subnet", CfgAttr.INTERNAL_IP4_SUBNET, 4),
    ("protected-subnet", CfgAttr.INTERNAL_IP6_SUBNET, 6),
    ("access-server", CFG_INTERNAL_IP4_SERVER, 4),
    ("access-server", CFG_INTERNAL_IP6_SERVER, 6),
)

# IP protocol names (iked uses getprotobyname(3)).  The first name of each
# number is the one /etc/protocols lists first, which is what iked prints.
# "icmp6" is OpenBSD's alias; Debian's /etc/protocols lacks it.
_PROTOCOLS: dict[str, int] = {
    "ip": 0,
    "hopopt": 0,
    "icmp": 1,
    "igmp": 2,
    "ggp": 3,
    "ipencap": 4,
    "ipip": 4,
    "ipv4": 4,
    "st": 5,
    "tcp": 6,
    "egp": 8,
    "igp": 9,
    "pup": 12,
    "udp": 17,
    "hmp": 20,
    "xns-idp": 22,
    "rdp": 27,
    "iso-tp4": 29,
    "dccp": 33,
    "xtp": 36,
    "ddp": 37,
    "idpr-cmtp": 38,
    "ipv6": 41,
    "ipv6-route": 43,
    "ipv6-frag": 44,
    "idrp": 45,
    "rsvp": 46,
    "gre": 47,
    "esp": 50,
    "ah": 51,
    "skip": 57,
    "ipv6-icmp": 58,
    "icmp6": 58,
    "icmpv6": 58,
    "ipv6-nonxt": 59,
    "ipv6-opts": 60,
    "rspf": 73,
    "vmtp": 81,
    "eigrp": 88,
    "ospf": 89,
    "ax.25": 93,
    "ipip-old": 94,
    "etherip": 97,
    "encap": 98,
    "pim": 103,
    "ipcomp": 108,
    "vrrp": 112,
    "carp": 112,
    "l2tp": 115,
    "isis": 124,
    "sctp": 132,
    "fc": 133,
    "mobility-header": 135,
    "udplite": 136,
    "mpls-in-ip": 137,
    "manet": 138,
    "hip": 139,
    "shim6": 140,
    "wesp": 141,
    "rohc": 142,
    "ethernet": 143,
    "pfsync": 240,
}
_PROTOCOL_NAMES: dict[int, str] = {}
for _pname, _pnum in _PROTOCOLS.items():
    _PROTOCOL_NAMES.setdefault(_pnum, _pname)

# Service names (iked uses getservbyname(3), "tcp" then "udp").  The common
# ones are built in so results do not depend on the host's /etc/services.
_SERVICES: dict[str, int] = {
    "ftp-data": 20,
    "ftp": 21,
    "ssh": 22,
    "telnet": 23,
    "smtp": 25,
    "time": 37,
    "domain": 53,
    "bootps": 67,
    "bootpc": 68,
    "tftp": 69,
    "gopher": 70,
    "finger": 79,
    "http": 80,
    "www": 80,
    "kerberos": 88,
    "pop3": 110,
    "sunrpc": 111,
    "auth": 113,
    "nntp": 119,
    "ntp": 123,
    "netbios-ns": 137,
    "netbios-dgm": 138,
    "netbios-ssn": 139,
    "imap": 143,
    "imap2": 143,
    "snmp": 161,
    "snmp-trap": 162,
    "bgp": 179,
    "ldap": 389,
    "https": 443,
    "microsoft-ds": 445,
    "isakmp": 500,
    "syslog": 514,
    "submission": 587,
    "ldaps": 636,
    "rsync": 873,
    "imaps": 993,
    "pop3s": 995,
    "openvpn": 1194,
    "l2tp": 1701,
    "radius": 1812,
    "nfs": 2049,
    "mysql": 3306,
    "ipsec-nat-t": 4500,
    "sip": 5060,
    "postgresql": 5432,
    "x11": 6000,
}


def _lookup_protocol(name: str) -> int | None:
    if name in _PROTOCOLS:
        return _PROTOCOLS[name]
    try:  # the host's /etc/protocols, as iked would use it
        return socket.getprotobyname(name)
    except (OSError, UnicodeError, ValueError):
        return None


def _lookup_service(name: str) -> int | None:
    if name in _SERVICES:
        return _SERVICES[name]
    for proto in ("tcp", "udp"):
        try:  # the host's /etc/services, as iked would use it
            return socket.getservbyname(name, proto)
        except (OSError, UnicodeError, ValueError):
            continue
    return None


def protocol_name(number: int) -> str:
    """The name iked prints for an IP protocol number (its number if unknown)."""
    return _PROTOCOL_NAMES.get(number, str(number))


def _prefix_match(word: str, table: Sequence[_Xf]) -> _Xf | None:
    """iked's parse_xf(): the first entry whose name starts with ``word``."""
    for xf in table:
        if xf.name.startswith(word):
            return xf
    return None


def _names(table: Sequence[_Xf]) -> str:
    seen: list[str] = []
    for xf in table:
        if xf.name not in seen:
            seen.append(xf.name)
    return ", ".join(seen)


# ---------------------------------------------------------------------------
# Default proposals
#
# These are iked 7.2's (parse.y ikev2_default_*_transforms and create_ike()).
# IKE: proposal 1 is AES-GCM (integrity implicit), proposal 2 AES-CBC/3DES with
# HMAC integrity; both with PRF SHA2-256/384/512/SHA1 and the same groups.
# Child: on OpenBSD, proposal 1 is AES-GCM and proposal 2 AES-CBC with
# HMAC-SHA2-256/384/512/SHA1, both with ESN and no-ESN.  iked built for Linux
# (Debian's openiked, HAVE_LINUX_PFKEY_H, no SADB_X_SAFLAGS_ESN) drops the GCM
# child proposal, HMAC-SHA2-256 and ESN, as measured with `iked -n -v`
# (shared/notes/interop-facts.md).  pyike's data plane is not bound by Linux
# PF_KEY, so it defaults to the OpenBSD set; platform="linux" reproduces the
# Debian build (used to compare with the local iked binary).

_DEFAULT_GROUPS: tuple[int, ...] = (
    DhId.CURVE25519,
    DhId.ECP_521,
    DhId.ECP_384,
    DhId.ECP_256,
    DhId.MODP_4096,
    DhId.MODP_3072,
    DhId.MODP_2048,
    DhId.MODP_1536,
    DhId.MODP_1024,
)
_DEFAULT_PRFS: tuple[int, ...] = (
    PrfId.HMAC_SHA2_256,
    PrfId.HMAC_SHA2_384,
    PrfId.HMAC_SHA2_512,
    PrfId.HMAC_SHA1,
)
_DEFAULT_IKE_INTEG: tuple[int, ...] = (
    IntegId.HMAC_SHA2_256_128,
    IntegId.HMAC_SHA2_384_192,
    IntegId.HMAC_SHA2_512_256,
    IntegId.HMAC_SHA1_96,
)


def _t(ttype: TransformType, tid: int, bits: int | None = None) -> TransformSpec:
    return (ttype, tid, bits)


_ENCR = TransformType.ENCR
_PRFT = TransformType.PRF
_INTEG = TransformType.INTEG
_DH = TransformType.DH
_ESNT = TransformType.ESN
_TYPE_ORDER = (_ENCR, _PRFT, _INTEG, _DH, _ESNT)  # iked's print order


def _defaults_ike_aead() -> dict[TransformType, list[TransformSpec]]:
    return {
        _ENCR: [_t(_ENCR, EncrId.AES_GCM_16, 128), _t(_ENCR, EncrId.AES_GCM_16, 256)],
        _PRFT: [_t(_PRFT, p) for p in _DEFAULT_PRFS],
        _DH: [_t(_DH, g) for g in _DEFAULT_GROUPS],
    }


def _defaults_ike_auth() -> dict[TransformType, list[TransformSpec]]:
    return {
        _ENCR: [
            _t(_ENCR, EncrId.AES_CBC, 256),
            _t(_ENCR, EncrId.AES_CBC, 192),
            _t(_ENCR, EncrId.AES_CBC, 128),
            _t(_ENCR, EncrId.DES3),
        ],
        _PRFT: [_t(_PRFT, p) for p in _DEFAULT_PRFS],
        _INTEG: [_t(_INTEG, i) for i in _DEFAULT_IKE_INTEG],
        _DH: [_t(_DH, g) for g in _DEFAULT_GROUPS],
    }


def _esn_defaults(platform: Platform) -> list[TransformSpec]:
    if platform == "linux":
        return [_t(_ESNT, EsnId.NO_ESN)]
    return [_t(_ESNT, EsnId.ESN), _t(_ESNT, EsnId.NO_ESN)]


def _defaults_esp_aead(platform: Platform) -> dict[TransformType, list[TransformSpec]]:
    return {
        _ENCR: [_t(_ENCR, EncrId.AES_GCM_16, 128), _t(_ENCR, EncrId.AES_GCM_16, 256)],
        _DH: [_t(_DH, DhId.NONE)],
        _ESNT: _esn_defaults(platform),
    }


def _defaults_esp_auth(platform: Platform) -> dict[TransformType, list[TransformSpec]]:
    integ = [_t(_INTEG, i) for i in _DEFAULT_IKE_INTEG]
    if platform == "linux":  # iked: "Linux uses a non-standard truncated SHA256"
        integ = integ[1:]
    return {
        _ENCR: [
            _t(_ENCR, EncrId.AES_CBC, 256),
            _t(_ENCR, EncrId.AES_CBC, 192),
            _t(_ENCR, EncrId.AES_CBC, 128),
        ],
        _INTEG: integ,
        _DH: [_t(_DH, DhId.NONE)],
        _ESNT: _esn_defaults(platform),
    }


def _proposal(
    protocol: ProtocolId,
    given: dict[TransformType, list[TransformSpec]],
    defaults: dict[TransformType, list[TransformSpec]],
    types: Sequence[TransformType],
) -> ProposalSpec:
    """iked's copy_transforms(): configured transforms, else the defaults."""
    transforms: list[TransformSpec] = []
    for ttype in _TYPE_ORDER:
        if ttype in types:
            transforms.extend(given.get(ttype) or defaults.get(ttype, []))
    return ProposalSpec(protocol, transforms)


def default_ike_proposals() -> list[ProposalSpec]:
    """iked's IKE SA proposals when no ``ikesa`` is configured."""
    return [
        _proposal(ProtocolId.IKE, {}, _defaults_ike_aead(), (_ENCR, _PRFT, _DH)),
        _proposal(ProtocolId.IKE, {}, _defaults_ike_auth(), (_ENCR, _PRFT, _INTEG, _DH)),
    ]


def default_child_proposals(
    encap: ProtocolId = ProtocolId.ESP, platform: Platform = "openbsd"
) -> list[ProposalSpec]:
    """iked's Child SA proposals when no ``childsa`` is configured."""
    props: list[ProposalSpec] = []
    if platform == "openbsd":
        props.append(_proposal(encap, {}, _defaults_esp_aead(platform), (_ENCR, _DH, _ESNT)))
    props.append(_proposal(encap, {}, _defaults_esp_auth(platform), (_ENCR, _INTEG, _DH, _ESNT)))
    return props


# ---------------------------------------------------------------------------
# IDs


def parse_id(text: str) -> tuple[IdType, str]:
    """iked's get_id_type(): infer the ID type of a srcid/dstid string.

    iked.conf(5): "/..." is an ASN.1 DN, an IPv4 or compressed IPv6 address
    gives IPV4/IPV6, "user@host" gives UFQDN (RFC822), anything else is FQDN.
    """
    if text.startswith("/"):
        return IdType.ID_DER_ASN1_DN, text
    if _is_ip(text, 4):
        return IdType.ID_IPV4_ADDR, text
    if _is_ip(text, 6):
        return IdType.ID_IPV6_ADDR, text
    if "@" in text:
        return IdType.ID_RFC822_ADDR, text
    return IdType.ID_FQDN, text


def _is_ip(text: str, version: int) -> bool:
    """inet_pton(3) acceptance: no zone index, no surrounding text."""
    if "%" in text:
        return False
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return False
    return addr.version == version


def parse_define(text: str) -> tuple[str, str]:
    """Split a ``-D name=value`` argument at its last ``=``, as iked does."""
    name, sep, value = text.rpartition("=")
    if not sep or not name:
        raise ValueError(f"-D expects name=value, got {text!r}")
    return name, value


# ---------------------------------------------------------------------------
# Lexer (iked's yylex/lgetc/igetc, character for character where it matters)

_KEYWORDS = frozenset(
    {
        "active", "ah", "any", "auth", "bytes", "cert_partial_chain", "childsa",
        "config", "couple", "decouple", "default", "dpd_check_interval", "dstid",
        "dynamic", "eap", "enc", "enforcesingleikesa", "esn", "esp", "file",
        "flow", "fragmentation", "from", "group", "iface", "ike", "ikelifetime",
        "ikesa", "ikev2", "include", "inet", "inet6", "ipcomp", "lifetime",
        "local", "maxage", "mobike", "name", "noenforcesingleikesa", "noesn",
        "nofragmentation", "nomobike", "nostickyaddress", "novendorid", "ocsp",
        "passive", "peer", "port", "prf", "proto", "psk", "quick", "rdomain",
        "request", "sa", "set", "skip", "srcid", "stickyaddress", "tag", "tap",
        "tcpmd5", "to", "tolerate", "transport", "tunnel", "user", "vendorid",
    }
)  # fmt: skip

_PUNCT = frozenset(string.punctuation)
_NOT_IN_STRING = frozenset("(){}<>!=/#,")
_ENDS_NUMBER = frozenset(" \t\n\r\v\f),/}=")
_START = "<start-expand>"  # pushback markers: longer than one char, so never
_DONE = "<done-expand>"  # confused with input characters


def _alnum(c: str) -> bool:
    return len(c) == 1 and c.isascii() and c.isalnum()


def _digit(c: str) -> bool:
    return len(c) == 1 and "0" <= c <= "9"


def _in_string(c: str) -> bool:
    return _alnum(c) or (c in _PUNCT and c not in _NOT_IN_STRING)


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: Literal["STRING", "NUMBER", "KW", "PUNCT", "NL", "EOF"]
    value: str
    pos: Position
    quoted: bool = False
    number: int = 0

    def describe(self) -> str:
        if self.kind == "NL":
            return "end of line"
        if self.kind == "EOF":
            return "end of file"
        if self.kind == "NUMBER":
            return f"number {self.value}"
        if self.kind == "STRING" and self.quoted:
            return f'string "{self.value}"'
        if self.kind == "PUNCT" and self.value == "\r":
            return "carriage return (DOS line endings?)"
        return f'"{self.value}"'


class _Lexer:
    def __init__(self, text: str, filename: str, macros: _Macros) -> None:
        self.text = text
        self.filename = filename
        self.macros = macros
        self.i = 0
        self.line = 1
        self.col = 1
        self.unget: list[tuple[str, Position]] = []
        self.expanding = False
        self.eof_reached = False

    def _raw(self) -> tuple[str, Position]:
        if self.unget:
            return self.unget.pop()
        pos = Position(self.filename, self.line, self.col)
        if self.i >= len(self.text):
            return "", pos
        c = self.text[self.i]
        self.i += 1
        if c == "\n":
            self.line += 1
            self.col = 1
        else:
            self.col += 1
        return c, pos

    def _igetc(self) -> tuple[str, Position]:
        while True:
            c, pos = self._raw()
            if c == _START:
                self.expanding = True
            elif c == _DONE:
                self.expanding = False
            else:
                return c, pos

    def _lgetc(self) -> tuple[str, Position]:
        """Next character outside quotes: backslash-newline joins lines."""
        c, pos = self._igetc()
        while c == "\\":
            nxt, _ = self._igetc()
            if nxt != "\n":
                c = nxt  # iked: a backslash escapes any other character
                break
            c, pos = self._igetc()
        if c == "" and not self.eof_reached:
            # iked fakes one end-of-line at end of file, so a last line
            # without a newline still ends its statement.
            self.eof_reached = True
            return "\n", pos
        return c, pos

    def _ungetc(self, c: str, pos: Position) -> None:
        if c != "":
            self.unget.append((c, pos))

    def next_token(self) -> _Tok:
        while True:
            c, pos = self._lgetc()
            while c in (" ", "\t"):
                c, pos = self._lgetc()
            if c == "#":
                while c not in ("\n", ""):
                    c, pos = self._lgetc()
            if c == "$" and not self.expanding:
                self._expand_macro(pos)
                continue
            break

        if c in ("'", '"'):
            return self._quoted(c, pos)
        if c == "-" or _digit(c):
            tok = self._number(c, pos)
            if tok is not None:
                return tok
            # not a number: c (a digit) starts a string, e.g. "192.0.2.1", "30m"
        if _alnum(c) or c in (":", "_", "*"):
            return self._word(c, pos)
        if c == "\n":
            return _Tok("NL", "\n", pos)
        if c == "":
            return _Tok("EOF", "", pos)
        return _Tok("PUNCT", c, pos)

    def _expand_macro(self, pos: Position) -> None:
        """``$name`` outside quotes: push the value back to be lexed again."""
        name: list[str] = []
        while True:
            c, cpos = self._lgetc()
            if _alnum(c) or c == "_":
                name.append(c)
                if len(name) > _MAX_TOKEN:
                    _fail(pos, "string too long")
                continue
            self._ungetc(c, cpos)
            break
        key = "".join(name)
        value = self.macros.get(key)
        if value is None:
            _fail(pos, f"macro '{key}' not defined" if key else "'$' without a macro name")
        # Every character of the value gets the position of the "$", so
        # errors inside an expansion point at the macro reference.
        self.unget.append((_DONE, pos))
        self.unget.extend((ch, pos) for ch in reversed(value))
        self.unget.append((_START, pos))

    def _quoted(self, quote: str, pos: Position) -> _Tok:
        # iked: no macro expansion inside quotes; a newline inside quotes is
        # dropped; backslash escapes the quote, space, tab or a newline.
        buf: list[str] = []
        while True:
            c, _ = self._igetc()
            if c == "":
                _fail(pos, "reached end of file while parsing quoted string")
            if c == "\n":
                continue
            if c == "\\":
                nxt, npos = self._igetc()
                if nxt == "":
                    _fail(pos, "reached end of file while parsing quoted string")
                if nxt == quote or nxt in (" ", "\t"):
                    c = nxt
                elif nxt == "\n":
                    continue
                else:
                    self._ungetc(nxt, npos)
            elif c == quote:
                return _Tok("STRING", "".join(buf), pos, quoted=True)
            elif c == "\0":
                _fail(pos, "NUL character in quoted string")
            if len(buf) >= _MAX_TOKEN - 1:
                _fail(pos, "string too long")
            buf.append(c)

    def _number(self, first: str, pos: Position) -> _Tok | None:
        """A NUMBER token, a lone "-", or None if the digits start a string."""
        chars: list[tuple[str, Position]] = [(first, pos)]
        while True:
            c, cpos = self._lgetc()
            if not _digit(c):
                break
            chars.append((c, cpos))
            if len(chars) > _MAX_TOKEN:
                _fail(pos, "string too long")
        self._ungetc(c, cpos)
        text = "".join(ch for ch, _ in chars)
        if text != "-" and (c == "" or c in _ENDS_NUMBER):
            value = int(text)
            if not -(2**63) <= value < 2**63:
                _fail(pos, f'"{text}" invalid number: too large')
            return _Tok("NUMBER", text, pos, number=value)
        # iked: push back everything after the first character, then lex a
        # string starting with it (or return the "-" on its own).
        self.unget.extend(reversed(chars[1:]))
        if first == "-":
            return _Tok("PUNCT", "-", pos)
        return None

    def _word(self, first: str, pos: Position) -> _Tok:
        buf = [first]
        while True:
            c, cpos = self._lgetc()
            if c == "" or not _in_string(c):
                break
            buf.append(c)
            if len(buf) > _MAX_TOKEN:
                _fail(pos, "string too long")
        self._ungetc(c, cpos)
        word = "".join(buf)
        if word in _KEYWORDS:
            return _Tok("KW", word, pos)
        return _Tok("STRING", word, pos)


class _Macros:
    """iked's symbol table: ``-D`` definitions persist over file definitions."""

    def __init__(self, cmdline: dict[str, str]) -> None:
        self.values: dict[str, str] = dict(cmdline)
        self.persistent = set(cmdline)
        self.used: set[str] = set()
        self.defined_at: dict[str, Position] = {}

    def get(self, name: str) -> str | None:
        if name in self.values:
            self.used.add(name)
            return self.values[name]
        return None

    def set(self, name: str, value: str, pos: Position) -> None:
        if name in self.persistent:
            return
        self.values[name] = value
        self.defined_at[name] = pos


# ---------------------------------------------------------------------------
# Parser


@dataclass(slots=True)
class _HostAst:
    kind: Literal["addr", "any", "dynamic"]
    pos: Position
    text: str = ""
    prefix: int | None = None
    nat: _HostAst | None = None


@dataclass(slots=True)
class _HostsAst:
    src: _HostAst
    src_port: int | None
    dst: _HostAst
    dst_port: int | None


@dataclass(slots=True)
class _XfAst:
    kind: str  # "auth", "enc", "prf", "group" or "esn"
    word: str
    pos: Position


@dataclass(slots=True)
class _SaAst:
    pos: Position
    transforms: list[_XfAst]


@dataclass(slots=True)
class _RuleAst:
    pos: Position
    name: str | None = None
    quick: bool = False
    skip: bool = False
    default: bool = False
    active: bool = False
    ipcomp: bool = False
    transport: bool = False
    encap: ProtocolId = ProtocolId.ESP
    af: int | None = None
    protos: list[int] = field(default_factory=list)
    hosts: list[_HostsAst] = field(default_factory=list)
    peer: _HostAst | None = None
    local: _HostAst | None = None
    ikesa: list[_SaAst] = field(default_factory=list)
    childsa: list[_SaAst] = field(default_factory=list)
    srcid: str | None = None
    dstid: str | None = None
    ikelifetime: int | None = None
    lifetime: int | None = None
    lifetime_bytes: int | None = None
    auth: AuthSpec = field(default_factory=AuthSpec)
    auth_pos: Position | None = None
    cfg: list[tuple[Literal["config", "request"], str, _HostAst, Position]] = field(
        default_factory=list
    )
    iface: str | None = None
    tag: str | None = None
    tap: int | None = None


# The clauses of an ikev2 rule in the only order iked accepts them.
_RULE_ORDER = (
    "name, quick|skip|default, passive|active, ipcomp, tunnel|transport, esp|ah, "
    "inet|inet6, proto, from/to, peer/local, ikesa, childsa, srcid, dstid, "
    "ikelifetime, lifetime/bytes, psk|eap|<method>, config/request, iface, tag/tap"
)
_RULE_KEYWORDS = frozenset(
    {
        "quick", "skip", "default", "passive", "active", "ipcomp", "tunnel",
        "transport", "esp", "ah", "inet", "inet6", "proto", "rdomain", "from", "to",
        "peer", "local", "ikesa", "childsa", "srcid", "dstid", "ikelifetime",
        "lifetime", "bytes", "psk", "eap", "config", "request", "iface", "tag", "tap",
        "port", "enc", "auth", "prf", "group", "esn", "noesn",
    }
)  # fmt: skip

# Lines iked ignores silently (ipsec.conf(5) rules shared with ipsecctl).
_IGNORED_RULES = frozenset({"ike", "flow", "tcpmd5", "sa", "from", "to", "tunnel", "transport"})

_SET_FLAGS: dict[str, tuple[str, bool]] = {
    "active": ("passive", False),
    "passive": ("passive", True),
    "fragmentation": ("fragmentation", True),
    "nofragmentation": ("fragmentation", False),
    "mobike": ("mobike", True),
    "nomobike": ("mobike", False),
    "vendorid": ("vendorid", True),
    "novendorid": ("vendorid", False),
    "enforcesingleikesa": ("enforcesingleikesa", True),
    "noenforcesingleikesa": ("enforcesingleikesa", False),
}
# Man-page options pyike parses but does not act on.
_SET_GENERIC = ("couple", "decouple", "stickyaddress", "nostickyaddress", "cert_partial_chain")


@dataclass(slots=True)
class _State:
    """Everything shared by the top file and its includes."""

    macros: _Macros
    resolver: Resolver
    hostname: Callable[[], str]
    platform: Platform
    refuse_unservable: bool = True
    # iked's check_file_secrecy() refuses such files; the daemon and `pyike -n` do too
    # (the file can hold PSKs), library callers get a warning.
    refuse_loose_permissions: bool = False
    options: GlobalOptions = field(default_factory=GlobalOptions)
    policies: list[Policy] = field(default_factory=list)
    users: list[User] = field(default_factory=list)
    errors: list[Diagnostic] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    include_stack: list[str] = field(default_factory=list)
    policy_counter: int = 0
    _hostname: str | None = None

    def warn(self, pos: Position, message: str) -> None:
        self.warnings.append(f"{pos}: warning: {message}")

    def local_hostname(self) -> str:
        if self._hostname is None:
            self._hostname = self.hostname()
        return self._hostname


class _Parser:
    def __init__(self, state: _State, lexer: _Lexer) -> None:
        self.state = state
        self.lx = lexer
        self.tok: _Tok | None = None  # one token of lookahead
        self.last: _Tok | None = None  # the token taken last

    # -- token helpers ------------------------------------------------------

    def peek(self) -> _Tok:
        if self.tok is None:
            self.tok = self.lx.next_token()
        return self.tok

    def take(self) -> _Tok:
        tok = self.peek()
        self.tok = None
        self.last = tok
        return tok

    def at_kw(self, *words: str) -> bool:
        tok = self.peek()
        return tok.kind == "KW" and tok.value in words

    def expect_kw(self, word: str, context: str) -> _Tok:
        tok = self.take()
        if tok.kind != "KW" or tok.value != word:
            _fail(tok.pos, f'expected "{word}" {context}, got {tok.describe()}')
        return tok

    def expect_string(self, what: str) -> _Tok:
        tok = self.take()
        if tok.kind != "STRING":
            hint = ""
            if tok.kind == "KW":
                hint = f' ("{tok.value}" is a keyword; quote it to use it as a value)'
            _fail(tok.pos, f"expected {what}, got {tok.describe()}{hint}")
        return tok

    def expect_number(self, what: str) -> _Tok:
        tok = self.take()
        if tok.kind != "NUMBER":
            _fail(tok.pos, f"expected {what}, got {tok.describe()}")
        return tok

    def expect_eol(self, context: str) -> None:
        tok = self.peek()
        if tok.kind in ("NL", "EOF"):
            self.take()
            return
        if context == "ikev2" and tok.kind == "KW" and tok.value in _RULE_KEYWORDS:
            _fail(
                tok.pos,
                f'"{tok.value}" is out of place: iked requires the parts of an ikev2 '
                f"rule in this order: {_RULE_ORDER}",
            )
        _fail(tok.pos, f"unexpected {tok.describe()} (expected end of {context} line)")

    def skip_line(self) -> None:
        """Error recovery: drop the rest of the line (unless already at its end)."""
        tok, self.tok = self.tok, None
        if tok is None and self.last is not None and self.last.kind in ("NL", "EOF"):
            return
        while tok is None or tok.kind not in ("NL", "EOF"):
            try:  # every call consumes input, so this ends at the next newline
                tok = self.lx.next_token()
            except _ParseError:
                tok = None

    # -- statements ---------------------------------------------------------

    def parse(self) -> None:
        while True:
            try:
                tok = self.peek()
                if tok.kind == "EOF":
                    return
                if tok.kind == "NL":
                    self.take()
                    continue
                self.statement()
            except _ParseError as exc:
                self.state.errors.append(Diagnostic(exc.pos, exc.message))
                self.skip_line()

    def statement(self) -> None:
        tok = self.peek()
        if tok.kind == "KW":
            if tok.value == "include":
                self.include()
                return
            if tok.value == "set":
                self.set_option()
                return
            if tok.value == "user":
                self.user()
                return
            if tok.value == "ikev2":
                self.ikev2()
                return
            self.take()
            if tok.value in _IGNORED_RULES:
                self.state.warn(
                    tok.pos, f'ignoring ipsec.conf(5) rule "{tok.value} ..." as iked does'
                )
                self.skip_line()
                return
            nxt = self.peek()
            if nxt.kind == "PUNCT" and nxt.value == "=":
                # iked.conf(5): "Macro names may not be reserved words".
                _fail(tok.pos, f'"{tok.value}" is a reserved word and cannot be a macro name')
        if tok.kind == "STRING":
            self.take()
            if self.peek().kind == "PUNCT" and self.peek().value == "=":
                self.macro_definition(tok)
                return
            _fail(
                tok.pos,
                f"unexpected {tok.describe()}: a line starts with ikev2, set, user, "
                'include or a macro definition (name = "value")',
            )
        _fail(
            tok.pos,
            f"unexpected {tok.describe()}: a line starts with ikev2, set, user, include "
            'or a macro definition (name = "value")',
        )

    def macro_definition(self, name_tok: _Tok) -> None:
        self.take()  # "="
        parts: list[str] = []
        while self.peek().kind == "STRING":
            parts.append(self.take().value)
        if not parts:
            tok = self.peek()
            hint = ' (iked needs numbers quoted here: name = "25")' if tok.kind == "NUMBER" else ""
            _fail(tok.pos, f"expected the macro value, got {tok.describe()}{hint}")
        name = name_tok.value
        if any(c.isspace() for c in name):
            _fail(name_tok.pos, "macro name cannot contain whitespace")
        self.expect_eol("macro definition")
        self.state.macros.set(name, " ".join(parts), name_tok.pos)

    def include(self) -> None:
        kw = self.take()
        path_tok = self.expect_string('a file name after "include"')
        self.expect_eol("include")
        # iked opens the path as written (relative to the working directory).
        path = path_tok.value
        state = self.state
        if len(state.include_stack) >= _MAX_INCLUDE_DEPTH:
            _fail(kw.pos, f'includes nested more than {_MAX_INCLUDE_DEPTH} deep at "{path}"')
        if os.path.abspath(path) in (os.path.abspath(p) for p in state.include_stack):
            _fail(kw.pos, f'"{path}" includes itself')
        text = _read_config_file(path, kw.pos, state)
        _parse_text(text, path, state)

    def user(self) -> None:
        kw = self.take()
        name = self.expect_string('a user name after "user"')
        password = self.expect_string("a password after the user name")
        self.expect_eol("user")
        if not name.value:
            _fail(name.pos, "invalid user name")
        if not password.value:
            _fail(password.pos, "invalid password")
        self.state.users.append(User(name.value, password.value))
        self.state.warn(kw.pos, "user lines are parsed, but pyike does not implement EAP")

    def set_option(self) -> None:
        kw = self.take()
        tok = self.take()
        opts = self.state.options
        word = tok.value if tok.kind == "KW" else ""
        if word in _SET_FLAGS:
            attr, value = _SET_FLAGS[word]
            setattr(opts, attr, value)
        elif word == "dpd_check_interval":
            num = self.expect_number("seconds after dpd_check_interval")
            if num.number < 0:
                _fail(num.pos, "timeout outside range")
            opts.dpd_check_interval = num.number
        elif word in _SET_GENERIC:
            opts.generic[word] = ""
            self.state.warn(tok.pos, f'"set {word}" is parsed but has no effect in pyike')
        elif word == "ocsp":
            url = self.expect_string("the OCSP responder URL")
            ocsp = url.value
            if self.at_kw("tolerate"):
                self.take()
                ocsp += f" tolerate {self.time_spec()}"
                if self.at_kw("maxage"):
                    self.take()
                    ocsp += f" maxage {self.time_spec()}"
            opts.generic["ocsp"] = ocsp
            self.state.warn(tok.pos, '"set ocsp" is parsed but has no effect in pyike')
        else:
            known = sorted([*_SET_FLAGS, "dpd_check_interval", "ocsp", *_SET_GENERIC])
            _fail(
                tok.pos,
                f'unknown option {tok.describe()} after "set" (expected one of {", ".join(known)})',
            )
        del kw
        self.expect_eol("set")

    # -- the ikev2 rule -----------------------------------------------------

    def ikev2(self) -> None:
        kw = self.take()
        rule = _RuleAst(pos=kw.pos)
        if self.peek().kind == "STRING":
            rule.name = self.take().value
        # ikeflags: [quick|skip|default] [passive|active] [ipcomp] [tunnel|transport]
        if self.at_kw("quick", "skip", "default"):
            setattr(rule, self.take().value, True)
        if self.at_kw("passive", "active"):
            rule.active = self.take().value == "active"
        if self.at_kw("ipcomp"):
            self.take()
            rule.ipcomp = True
        if self.at_kw("tunnel", "transport"):
            rule.transport = self.take().value == "transport"
        if self.at_kw("esp", "ah"):
            rule.encap = ProtocolId.ESP if self.take().value == "esp" else ProtocolId.AH
        if self.at_kw("inet", "inet6"):
            rule.af = 4 if self.take().value == "inet" else 6
        if self.at_kw("proto"):
            self.take()
            rule.protos = self.proto_list()
        if self.at_kw("rdomain"):
            _fail(self.peek().pos, "'rdomain' is not supported on this platform (as iked on Linux)")
        self.hosts_list(rule)
        self.peers(rule)
        while self.at_kw("ikesa"):
            rule.ikesa.append(self.sa_transforms())
        while self.at_kw("childsa"):
            rule.childsa.append(self.sa_transforms())
        if self.at_kw("srcid"):
            self.take()
            rule.srcid = self.expect_string('an ID after "srcid"').value
        if self.at_kw("dstid"):
            self.take()
            rule.dstid = self.expect_string('an ID after "dstid"').value
        if self.at_kw("ikelifetime"):
            self.take()
            rule.ikelifetime = self.time_spec()
        if self.at_kw("lifetime"):
            self.take()
            rule.lifetime = self.time_spec()
            if self.at_kw("bytes"):
                self.take()
                rule.lifetime_bytes = self.byte_spec()
        self.ikeauth(rule)
        while self.at_kw("config", "request"):
            action = self.take()
            option = self.expect_string(f'a configuration option after "{action.value}"')
            host = self.host_spec() if action.value == "config" else self.any_host()
            kind: Literal["config", "request"] = "config" if action.value == "config" else "request"
            rule.cfg.append((kind, option.value, host, option.pos))
        if self.at_kw("iface"):
            self.take()
            rule.iface = self.expect_string('an interface name after "iface"').value
        while self.at_kw("tag", "tap"):
            which = self.take()
            value = self.expect_string(f'a string after "{which.value}"')
            if which.value == "tag":
                rule.tag = value.value
            else:
                match = re.fullmatch(r"enc([0-9]+)", value.value)
                if match is None or int(match.group(1)) > 0xFFFFFFFF:
                    _fail(value.pos, f"invalid tap interface name: {value.value}")
                rule.tap = int(match.group(1))
        self.expect_eol("ikev2")
        # iked numbers every rule that parsed ("policy%d"), named or not.
        self.state.policy_counter += 1
        _PolicyBuilder(self.state, rule, self.state.policy_counter).build()

    def proto_list(self) -> list[int]:
        if self.peek().kind == "PUNCT" and self.peek().value == "{":
            open_tok = self.take()
            protos = [self.protoval()]
            while True:
                tok = self.peek()
                if tok.kind == "PUNCT" and tok.value == "}":
                    self.take()
                    return protos
                if tok.kind == "PUNCT" and tok.value == ",":
                    self.take()
                if tok.kind in ("NL", "EOF"):
                    _fail(open_tok.pos, 'unclosed "{" in proto list')
                protos.append(self.protoval())
        return [self.protoval()]

    def protoval(self) -> int:
        tok = self.take()
        if tok.kind == "NUMBER":
            if not 0 <= tok.number <= 255:
                _fail(tok.pos, "protocol outside range (0-255)")
            return tok.number
        if tok.kind == "STRING":
            number = _lookup_protocol(tok.value)
            if number is None:
                _fail(tok.pos, f"unknown protocol: {tok.value}")
            return number
        if tok.kind == "KW" and tok.value in ("esp", "ah"):
            _fail(
                tok.pos,
                f'"{tok.value}" is a keyword here; write the protocol number '
                f"({_PROTOCOLS[tok.value]})",
            )
        _fail(tok.pos, f"expected a protocol name or number, got {tok.describe()}")

    def hosts_list(self, rule: _RuleAst) -> None:
        if not self.at_kw("from", "to"):
            tok = self.peek()
            _fail(tok.pos, f'expected "from" or "to" (the traffic selectors), got {tok.describe()}')
        while True:
            first = self.take().value
            a, a_port = self.host(), self.port()
            second = "to" if first == "from" else "from"
            self.expect_kw(second, f'after "{first} ..."')
            b, b_port = self.host(), self.port()
            src, src_port, dst, dst_port = (
                (a, a_port, b, b_port) if first == "from" else (b, b_port, a, a_port)
            )
            if dst.nat is not None:
                _fail(dst.nat.pos, f"no flow NAT support for destination network: {dst.text}")
            rule.hosts.append(_HostsAst(src, src_port, dst, dst_port))
            tok = self.peek()
            if tok.kind == "PUNCT" and tok.value == ",":
                self.take()
                if not self.at_kw("from", "to"):
                    t = self.peek()
                    _fail(t.pos, f'expected "from" or "to" after ",", got {t.describe()}')
                continue
            if not self.at_kw("from", "to"):
                return

    def host(self) -> _HostAst:
        tok = self.peek()
        if tok.kind == "KW" and tok.value in ("any", "dynamic"):
            self.take()
            return _HostAst("any" if tok.value == "any" else "dynamic", tok.pos)
        spec = self.host_spec()
        nxt = self.peek()
        if nxt.kind == "PUNCT" and nxt.value == "(":
            self.take()
            spec.nat = self.host_spec()
            close = self.take()
            if close.kind != "PUNCT" or close.value != ")":
                _fail(close.pos, f'expected ")" after the NAT address, got {close.describe()}')
        return spec

    def host_spec(self) -> _HostAst:
        tok = self.take()
        if tok.kind != "STRING":
            _fail(tok.pos, f"expected an address, network or host name, got {tok.describe()}")
        spec = _HostAst("addr", tok.pos, tok.value)
        nxt = self.peek()
        if nxt.kind == "PUNCT" and nxt.value == "/":
            self.take()
            spec.prefix = self.expect_number('a prefix length after "/"').number
        return spec

    def any_host(self) -> _HostAst:
        if self.at_kw("any"):
            return _HostAst("any", self.take().pos)
        return self.host_spec()

    def port(self) -> int | None:
        if not self.at_kw("port"):
            return None
        self.take()
        tok = self.take()
        if tok.kind == "NUMBER":
            if not 0 <= tok.number <= 65535:
                _fail(tok.pos, "port outside range (0-65535)")
            return tok.number or None  # iked: port 0 means any port
        if tok.kind == "STRING":
            number = _lookup_service(tok.value)
            if number is None:
                _fail(tok.pos, f"unknown port: {tok.value}")
            return number
        _fail(tok.pos, f'expected a port number or service name after "port", got {tok.describe()}')

    def peers(self, rule: _RuleAst) -> None:
        for _ in range(2):
            if self.at_kw("peer") and rule.peer is None:
                self.take()
                rule.peer = self.any_host()
            elif self.at_kw("local") and rule.local is None:
                self.take()
                rule.local = self.any_host()

    def sa_transforms(self) -> _SaAst:
        kw = self.take()
        sa = _SaAst(kw.pos, [])
        while True:
            tok = self.peek()
            if tok.kind != "KW":
                break
            if tok.value in ("auth", "enc", "prf", "group"):
                self.take()
                arg = self.take()
                if arg.kind != "STRING":
                    _fail(
                        arg.pos,
                        f'expected a transform name after "{tok.value}", got {arg.describe()}',
                    )
                sa.transforms.append(_XfAst(tok.value, arg.value, arg.pos))
            elif tok.value in ("esn", "noesn"):
                self.take()
                sa.transforms.append(_XfAst("esn", tok.value, tok.pos))
            else:
                break
        if not sa.transforms:
            # iked 7.2 crashes on an empty proposal; pyike refuses it.
            _fail(kw.pos, f'"{kw.value}" needs at least one of enc, auth, prf, group, esn, noesn')
        return sa

    def time_spec(self) -> int:
        return self._unit_spec("time", {"m": 60, "h": 3600}, str.lower)

    def byte_spec(self) -> int:
        units = {"K": 1024, "M": 1024**2, "G": 1024**3}
        return self._unit_spec("byte", units, str.upper)

    def _unit_spec(self, what: str, units: dict[str, int], fold: Callable[[str], str]) -> int:
        tok = self.take()
        if tok.kind == "NUMBER":
            if tok.number < 0:
                _fail(tok.pos, f"{what} value must not be negative")
            return tok.number
        if tok.kind != "STRING":
            _fail(tok.pos, f"expected a {what} value, got {tok.describe()}")
        # iked: sscanf("%llu%c") -- digits, then one unit character.
        match = re.match(r"([0-9]+)(.)", tok.value, re.DOTALL)
        if match is None:
            _fail(tok.pos, f"invalid {what} specification: {tok.value}")
        unit = fold(match.group(2))
        if unit not in units:
            names = "/".join(units)
            _fail(tok.pos, f'invalid {what} unit "{match.group(2)}" (expected {names})')
        value = int(match.group(1)) * units[unit]
        if value >= 2**64:
            _fail(tok.pos, f"{what} value too large")
        return value

    def ikeauth(self, rule: _RuleAst) -> None:
        tok = self.peek()
        if tok.kind == "KW" and tok.value == "psk":
            self.take()
            rule.auth_pos = tok.pos
            rule.auth = AuthSpec("psk", psk=self.keyspec())
        elif tok.kind == "KW" and tok.value == "eap":
            self.take()
            rule.auth_pos = tok.pos
            arg = self.expect_string('an EAP type after "eap"')
            if arg.value.replace("-", "_").lower() != "mschap_v2":
                _fail(arg.pos, f"unsupported EAP method: {arg.value} (iked supports mschap-v2)")
            rule.auth = AuthSpec("eap", eap="MSCHAP_V2")
        elif tok.kind == "STRING":
            self.take()
            rule.auth_pos = tok.pos
            method = next((m for m in _METHODS if m.startswith(tok.value)), None)
            if method is None or method == "none":
                _fail(
                    tok.pos,
                    f'not a valid authentication mode: "{tok.value}" (expected psk, eap, '
                    f"{', '.join(_METHODS[1:])})",
                )
            if method != tok.value:
                self.state.warn(tok.pos, f'"{tok.value}" taken as "{method}" (iked abbreviation)')
            rule.auth = AuthSpec(method)

    def keyspec(self) -> bytes:
        if self.at_kw("file"):
            self.take()
            name = self.expect_string('a file name after "psk file"')
            key_text = _read_config_file(name.value, name.pos, self.state, secret_only=True)
            return _parse_hex_key(key_text, name.pos)
        tok = self.expect_string('a pre-shared key after "psk"')
        if tok.value.startswith("0x"):
            return _parse_hex_key(tok.value[2:], tok.pos)
        if not tok.value:
            _fail(tok.pos, "empty pre-shared key")
        if len(tok.value) > _MAX_PSK:
            _fail(tok.pos, "psk too long")
        return tok.value.encode("latin-1")


def _parse_hex_key(text: str, pos: Position) -> bytes:
    """iked's parsekey(): pairs of hex digits (an odd last digit is ignored)."""
    pairs = len(text) // 2
    if pairs == 0:
        _fail(pos, "empty pre-shared key")
    if pairs > _MAX_PSK:
        _fail(pos, "psk too long")
    chunk = text[: pairs * 2]
    if not all(c in string.hexdigits for c in chunk):
        _fail(pos, "keys need to be specified in hex digits")
    return bytes.fromhex(chunk)


def _read_config_file(
    path: str, pos: Position | None, state: _State, secret_only: bool = False
) -> str:
    """Read an included file or key file; iked's pushfile() secrecy check.

    iked refuses files not owned by root or the current user and files that
    are group-writable or world-accessible; pyike warns instead.
    """
    where = pos or Position(path, 1, 1)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            _fail(where, f"failed to read {path}: not a regular file")
        if st.st_size > _MAX_INCLUDE_SIZE:
            _fail(where, f"failed to read {path}: larger than {_MAX_INCLUDE_SIZE} bytes")
        with open(path, "rb") as fh:
            data = fh.read(_MAX_INCLUDE_SIZE + 1)
    except OSError as exc:
        what = "read key file" if secret_only else "include file" if pos else "read"
        _fail(where, f"failed to {what} {path}: {exc.strerror or exc}")
    problem = ""
    if st.st_uid not in (0, os.getuid()):
        problem = "owner not root or current user"
    elif st.st_mode & (stat.S_IWGRP | stat.S_IXGRP | stat.S_IRWXO):
        problem = f"group writable or world read/writable (mode {stat.S_IMODE(st.st_mode):04o})"
    if problem and state.refuse_loose_permissions:
        _fail(where, f"{path}: {problem}: iked refuses this file too (run: chmod 600 {path})")
    if problem:
        state.warn(where, f"{path}: {problem} (iked refuses this file)")
    return data.decode("latin-1")


# ---------------------------------------------------------------------------
# Building a Policy from a parsed rule (iked's create_ike and expand_flows)


@dataclass(slots=True)
class _Addr:
    """One resolved host: iked's ipsec_addr_wrap."""

    kind: Literal["addr", "any", "dynamic"]
    network: IPNetwork | None  # None for any/dynamic
    is_net: bool
    name: str | None  # the host name as written, if it was one
    port: int | None = None
    nat: IPNetwork | None = None

    @property
    def version(self) -> int | None:
        return None if self.network is None else self.network.version


class _PolicyBuilder:
    def __init__(self, state: _State, rule: _RuleAst, number: int) -> None:
        self.state = state
        self.rule = rule
        self.number = number

    def build(self) -> None:
        rule = self.rule
        flows, srcs, dsts = self.flows()
        locals_, peer = self.endpoints(srcs, dsts)
        local = locals_[0] if locals_ else None
        af = rule.af
        versions = {ep.version for ep in (local, peer) if ep is not None and ep.version}
        if len(versions) > 1:
            _fail(rule.pos, "peer address family mismatch: local and peer are IPv4 and IPv6")
        if af is not None and versions and versions != {af}:
            # iked checks inet/inet6 only against a local/peer written in the
            # rule; one derived from the flows is accepted (and never matches).
            if rule.local is not None or rule.peer is not None:
                _fail(
                    rule.pos, "policy address family mismatch: inet/inet6 differs from local/peer"
                )
            self.state.warn(
                rule.pos,
                "inet/inet6 differs from the family of the flow addresses used as local/peer; "
                "this policy cannot match any connection",
            )
        if af is None:
            af = next((ep.version for ep in (local, peer) if ep and ep.version), None)
        if rule.active and (
            peer is None
            or peer.is_net
            or peer.network is None
            or (local is not None and local.is_net)
        ):
            _fail(
                (rule.peer or rule.local or _HostAst("any", rule.pos)).pos,
                "active mode requires local/peer address: an active policy needs a single peer "
                'address or host name (not a network or "any"), and local, if given, must be '
                "a single address",
            )

        srcid = parse_id(rule.srcid) if rule.srcid is not None else None
        from_hostname = srcid is None
        if srcid is None:
            # iked's ikev2_policy2id(): the local host name, always as FQDN.
            srcid = (IdType.ID_FQDN, self.state.local_hostname())
        if rule.ikelifetime is not None and rule.ikelifetime >= 2**32:
            _fail(rule.pos, "ikelifetime too large")

        policy = Policy(
            name=rule.name if rule.name is not None else f"policy{self.number}",
            active=rule.active,
            quick=rule.quick,
            skip=rule.skip,
            tunnel=not rule.transport,
            encap=rule.encap,
            af=af,
            flows=flows,
            local=[a.network for a in locals_ if a.network is not None] or None,
            peer=peer.network if peer is not None else None,
            peer_host=peer.name if peer is not None else None,
            ike_proposals=self.ike_proposals(),
            child_proposals=self.child_proposals(),
            srcid=srcid,
            dstid=parse_id(rule.dstid) if rule.dstid is not None else None,
            ikelifetime=rule.ikelifetime or DEFAULT_IKELIFETIME,
            lifetime=rule.lifetime if rule.lifetime is not None else DEFAULT_LIFETIME,
            lifetime_bytes=(
                rule.lifetime_bytes if rule.lifetime_bytes is not None else DEFAULT_LIFETIME_BYTES
            ),
            auth=rule.auth,
            default=rule.default,
            ipcomp=rule.ipcomp,
            protocols=list(rule.protos),
            local_host=local.name if local is not None else None,
            local_is_net=local.is_net if local is not None and local.network else False,
            peer_is_net=peer.is_net if peer is not None and peer.network else False,
            srcid_from_hostname=from_hostname,
            config=self.cfg(),
            iface=rule.iface,
            tag=rule.tag,
            tap=rule.tap,
            source=rule.pos,
        )
        if rule.encap == ProtocolId.AH:
            self.state.warn(rule.pos, "pyike implements ESP only; this ah policy cannot be used")
        if rule.ipcomp:
            self.state.warn(rule.pos, "pyike does not implement ipcomp; it will not be negotiated")
        self.state.policies.append(policy)

    # -- hosts --------------------------------------------------------------

    def resolve(self, host: _HostAst) -> list[_Addr]:
        if host.kind != "addr":
            return [_Addr(host.kind, None, host.kind == "any", None)]
        text, prefix = host.text, host.prefix
        if prefix is not None and not 0 <= prefix <= 128:
            _fail(host.pos, f"netmask is out of range: {prefix}")
        if _is_ip(text, 4) or _is_ip(text, 6):
            ip = ipaddress.ip_address(text)
            if prefix is not None and prefix > ip.max_prefixlen:
                _fail(host.pos, f"prefix length /{prefix} too long for {text}")
            plen = ip.max_prefixlen if prefix is None else prefix
            net = ipaddress.ip_network(f"{ip}/{plen}", strict=False)
            if net.network_address != ip:
                # iked keeps the host bits (and prints them); pyike masks them.
                self.state.warn(host.pos, f"{text}/{plen} has host bits set; using {net}")
            return [_Addr("addr", net, prefix is not None, None)]
        addrs = self.lookup(text, host.pos)
        out: list[_Addr] = []
        for ip in addrs:
            if prefix is not None and (ip.version == 6 or prefix > 32):
                # iked: "cannot apply netmask on non-IPv4 address" (fatal)
                _fail(host.pos, f"cannot apply netmask /{prefix} to the address {ip} of {text}")
            plen = ip.max_prefixlen if prefix is None else prefix
            net = ipaddress.ip_network(f"{ip}/{plen}", strict=False)
            out.append(_Addr("addr", net, False, text))
        return out

    def lookup(self, name: str, pos: Position) -> list[IPAddress]:
        """Resolve a host name with the injected resolver, deduplicated."""
        try:
            raw = list(self.state.resolver(name))
        except (OSError, UnicodeError, ValueError):
            raw = []
        addrs: list[IPAddress] = []
        for item in raw:
            try:
                ip = ipaddress.ip_address(str(item))
            except ValueError:
                continue
            if ip not in addrs:
                addrs.append(ip)
        if not addrs:
            _fail(
                pos,
                f'could not parse host specification: "{name}" is not an address and does '
                "not resolve (pyike does not read interface names)",
            )
        return addrs

    def flows(self) -> tuple[list[Flow], list[_Addr], list[_Addr]]:
        # iked appends the src and dst lists of every from/to pair and then
        # walks both lists in step (a host name may give several addresses).
        srcs: list[_Addr] = []
        dsts: list[_Addr] = []
        for pair in self.rule.hosts:
            s_list = self.resolve(pair.src)
            d_list = self.resolve(pair.dst)
            nat = None
            if pair.src.nat is not None:
                nat_addrs = self.resolve(pair.src.nat)
                nat = nat_addrs[0].network
            for a in s_list:
                a.port, a.nat = pair.src_port, nat
            for a in d_list:
                a.port = pair.dst_port
            for host, port in ((pair.src, pair.src_port), (pair.dst, pair.dst_port)):
                if port and host.kind != "addr":
                    # iked's expand_keyword() builds a new address for any
                    # and dynamic and loses the port; pyike keeps it.
                    self.state.warn(
                        host.pos,
                        f"iked 7.2 ignores the port on {host.kind!r} (pyike keeps port {port}); "
                        "the peer may negotiate all ports",
                    )
            if len(s_list) != len(d_list):
                self.state.warn(
                    pair.src.pos,
                    f"source gives {len(s_list)} address(es) and destination {len(d_list)}; "
                    "iked pairs them in order, so flows may be lost or mismatched",
                )
            srcs.extend(s_list)
            dsts.extend(d_list)

        flows: list[Flow] = []
        seen: set[tuple[object, ...]] = set()
        protos: list[int | None] = list(self.rule.protos) or [None]
        for src, dst in zip(srcs, dsts, strict=False):
            for proto in protos:
                for flow in self.expand(proto, src, dst):
                    # iked's flow_cmp(): protocol, addresses, prefixes, ports
                    # ("192.0.2.1" and "192.0.2.1/32" are the same flow).
                    key = (flow.proto, flow.src, flow.src_port, flow.dst, flow.dst_port)
                    if key in seen:
                        self.state.warn(self.rule.pos, "duplicate flow dropped (as iked does)")
                        continue
                    seen.add(key)
                    flows.append(flow)
        for flow in flows:
            if (flow.src_port or flow.dst_port) and flow.proto not in (6, 17):
                self.state.warn(
                    self.rule.pos,
                    "ports are only valid with tcp or udp (iked.conf(5)); "
                    f"proto {protocol_name(flow.proto) if flow.proto is not None else 'any'} "
                    "has a port",
                )
                break
        return flows, srcs, dsts

    def expand(self, proto: int | None, src: _Addr, dst: _Addr) -> list[Flow]:
        """iked's expand_flows(): ``any``/``dynamic`` take the other side's family."""
        if src.version is not None and dst.version is not None and src.version != dst.version:
            _fail(
                self.rule.pos,
                f"cannot mix different address families in a flow: {src.network} to {dst.network}",
            )
        known = src.version or dst.version
        versions = [4, 6] if known is None else [known]
        out: list[Flow] = []
        for version in versions:
            s_net, s_is_net = _concrete(src, version)
            d_net, d_is_net = _concrete(dst, version)
            out.append(
                Flow(
                    proto=proto,
                    src=s_net,
                    src_port=src.port,
                    dst=d_net,
                    dst_port=dst.port,
                    src_nat=src.nat,
                    src_is_net=s_is_net,
                    dst_is_net=d_is_net,
                    src_dynamic=src.kind == "dynamic",
                    dst_dynamic=dst.kind == "dynamic",
                )
            )
        return out

    def endpoints(self, srcs: list[_Addr], dsts: list[_Addr]) -> tuple[list[_Addr], _Addr | None]:
        """iked's create_ike(): local/peer as given, else from a single flow.

        A local host name may give several addresses (all kept, iked uses the
        first); for the peer the first address is used and the name is kept
        in Policy.peer_host so the daemon can resolve it again.
        """
        rule = self.rule
        locals_ = self.resolve(rule.local) if rule.local is not None else []
        peer = self.resolve(rule.peer)[0] if rule.peer is not None else None
        if rule.local is None and rule.peer is None:
            # iked.conf(5): "For host-to-host connections where dst is
            # identical to remote, this option is generally not needed".
            if len(srcs) == 1:
                locals_ = [srcs[0]]
            if len(dsts) == 1:
                peer = dsts[0]
            if not locals_ and peer is None:
                _fail(
                    rule.pos,
                    "could not get local/peer specification: with several from/to pairs, "
                    'give "peer ADDRESS" (and "local ADDRESS" if needed)',
                )
        return locals_, peer

    # -- proposals ----------------------------------------------------------

    def transforms(
        self, sa: _SaAst, ike: bool
    ) -> tuple[dict[TransformType, list[TransformSpec]], int, int]:
        """Configured names -> transforms, plus iked's (noauth, auth) counts:
        AEAD ciphers, and non-AEAD ciphers plus one if "auth" was given."""
        given: dict[TransformType, list[TransformSpec]] = {}
        aead = plain = 0
        has_auth = False
        for xf in sa.transforms:
            if xf.kind == "enc":
                found = self.enc(xf, ike)
                self.served(xf, found, _ENC_IKE if ike else _ENC_ESP, ike, "encryption")
                given.setdefault(_ENCR, []).append(_t(_ENCR, found.id, found.key_bits))
                if found.aead:
                    aead += 1
                else:
                    plain += 1
            elif xf.kind == "auth":
                found = self.find(xf, _AUTH, "authentication")
                self.served(xf, found, _AUTH, ike, "authentication")
                has_auth = True
                given.setdefault(_INTEG, []).append(_t(_INTEG, found.id))
            elif xf.kind == "prf":
                found = self.find(xf, _PRF, "prf")
                if not ike:
                    self.state.warn(xf.pos, "prf has no meaning in childsa and is ignored")
                else:
                    self.served(xf, found, _PRF, ike, "prf")
                given.setdefault(_PRFT, []).append(_t(_PRFT, found.id))
            elif xf.kind == "group":
                found = self.find(xf, _GROUP, "group")
                if ike and found.id == DhId.NONE:
                    _fail(xf.pos, 'IKE group can not be "none"')
                self.served(xf, found, _GROUP, ike, "group")
                given.setdefault(_DH, []).append(_t(_DH, found.id))
            else:
                if ike:
                    _fail(xf.pos, "cannot use ESN with ikesa")
                tid = EsnId.ESN if xf.word == "esn" else EsnId.NO_ESN
                given.setdefault(_ESNT, []).append(_t(_ESNT, tid))
        if aead and plain:
            _fail(
                sa.pos,
                "cannot mix encryption transforms with implicit and non-implicit "
                "authentication (AEAD ciphers such as aes-128-gcm and others) in one proposal",
            )
        if aead and has_auth:
            _fail(
                sa.pos,
                "authentication is implicit for given encryption transforms: "
                'drop "auth" from a proposal with an AEAD cipher',
            )
        return given, aead, plain + (1 if has_auth else 0)

    def served(self, xf: _XfAst, found: _Xf, table: Sequence[_Xf], ike: bool, what: str) -> None:
        """pyike: refuse what pyike cannot serve where it is written, rather than offer it
        and fail once a peer accepts it (iked.conf(5) names more than pyike implements)."""
        if not self.state.refuse_unservable or (found.ike if ike else found.esp):
            return
        where = "ikesa" if ike else "childsa"
        usable = [x.name for x in table if (x.ike if ike else x.esp) and x.name != "none"]
        usable = [n for n in usable if not re.fullmatch(r"grp\d+", n)]
        _fail(
            xf.pos,
            f'pyike cannot serve {what} transform "{found.name}" in {where} '
            f"(pyike serves {', '.join(usable)})",
        )

    def find(self, xf: _XfAst, table: Sequence[_Xf], what: str) -> _Xf:
        found = _prefix_match(xf.word, table)
        if found is None:
            _fail(xf.pos, f'unknown {what} transform "{xf.word}" (expected one of {_names(table)})')
        if found.name != xf.word:
            self.state.warn(xf.pos, f'"{xf.word}" taken as "{found.name}" (iked abbreviation)')
        return found

    def enc(self, xf: _XfAst, ike: bool) -> _Xf:
        """Encryption names differ for ikesa and childsa (iked.conf(5) tables)."""
        table, other = (_ENC_IKE, _ENC_ESP) if ike else (_ENC_ESP, _ENC_IKE)
        if _prefix_match(xf.word, table) is None and _prefix_match(xf.word, other) is not None:
            only = "[ESP only], for childsa" if ike else "[IKE only], for ikesa"
            _fail(xf.pos, f'encryption transform "{xf.word}" is {only}')
        return self.find(xf, table, "encryption")

    def ike_proposals(self) -> list[ProposalSpec]:
        if not self.rule.ikesa:
            return default_ike_proposals()
        props: list[ProposalSpec] = []
        for sa in self.rule.ikesa:
            given, aead, auth = self.transforms(sa, ike=True)
            # create_ike(): without plain ciphers/auth, an AEAD proposal;
            # without AEAD ciphers, an integrity-protected proposal (so a
            # proposal naming only a group yields both).
            if not auth:
                props.append(
                    _proposal(ProtocolId.IKE, given, _defaults_ike_aead(), (_ENCR, _PRFT, _DH))
                )
            if not aead:
                props.append(
                    _proposal(
                        ProtocolId.IKE, given, _defaults_ike_auth(), (_ENCR, _PRFT, _INTEG, _DH)
                    )
                )
        return props

    def child_proposals(self) -> list[ProposalSpec]:
        platform = self.state.platform
        encap = self.rule.encap
        if not self.rule.childsa:
            return default_child_proposals(encap, platform)
        props: list[ProposalSpec] = []
        for sa in self.rule.childsa:
            given, aead, auth = self.transforms(sa, ike=False)
            if not auth:
                if platform == "linux":
                    # iked on Linux drops AEAD child proposals (PF_KEY).
                    self.state.warn(
                        sa.pos,
                        'iked built for Linux drops this AEAD childsa proposal (platform="linux")',
                    )
                else:
                    props.append(
                        _proposal(encap, given, _defaults_esp_aead(platform), (_ENCR, _DH, _ESNT))
                    )
            if not aead:
                props.append(
                    _proposal(
                        encap, given, _defaults_esp_auth(platform), (_ENCR, _INTEG, _DH, _ESNT)
                    )
                )
        return props

    def cfg(self) -> list[CfgSpec]:
        out: list[CfgSpec] = []
        for action, option, host, pos in self.rule.cfg:
            address = self.cfg_address(host)
            version = None if address is None else address.version
            # iked's parse_xf(option, af, cpxfs): prefix match, same family.
            entry = next(
                (
                    (name, attr)
                    for name, attr, v in _CFG_OPTIONS
                    if name.startswith(option) and (version is None or v == version)
                ),
                None,
            )
            if entry is None:
                names = ", ".join(dict.fromkeys(n for n, _, _ in _CFG_OPTIONS))
                _fail(pos, f'not a valid ikecfg option: "{option}" (expected one of {names})')
            out.append(CfgSpec(action, entry[0], entry[1], address))
        return out

    def cfg_address(self, host: _HostAst) -> IPInterface | None:
        """A config payload address keeps its host bits (pool start/size)."""
        if host.kind != "addr":
            return None
        if _is_ip(host.text, 4) or _is_ip(host.text, 6):
            ip = ipaddress.ip_address(host.text)
            plen = ip.max_prefixlen if host.prefix is None else host.prefix
            if not 0 <= plen <= ip.max_prefixlen:
                _fail(host.pos, f"prefix length /{plen} out of range for {ip}")
            return ipaddress.ip_interface(f"{ip}/{plen}")
        ip = self.lookup(host.text, host.pos)[0]
        return ipaddress.ip_interface(ip)


def _concrete(addr: _Addr, version: int) -> tuple[IPNetwork, bool]:
    """iked's expand_keyword(): any -> 0.0.0.0/0 or ::/0, dynamic -> 0.0.0.0 or ::."""
    if addr.network is not None:
        return addr.network, addr.is_net
    zero = "0.0.0.0" if version == 4 else "::"
    if addr.kind == "any":
        return ipaddress.ip_network(f"{zero}/0"), True
    return ipaddress.ip_network(zero), False


# ---------------------------------------------------------------------------
# Entry points


def _default_resolver(name: str) -> list[IPAddress]:
    """iked's host_dns(): getaddrinfo with AI_ADDRCONFIG, IPv4 and IPv6."""
    infos = socket.getaddrinfo(
        name, None, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_ADDRCONFIG
    )
    out: list[IPAddress] = []
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if ip not in out:
                out.append(ip)
    return out


def _parse_text(text: str, filename: str, state: _State) -> None:
    state.files.append(filename)
    state.include_stack.append(filename)
    try:
        _Parser(state, _Lexer(text, filename, state.macros)).parse()
    finally:
        state.include_stack.pop()


def _finish(state: _State) -> Config:
    for name, pos in state.macros.defined_at.items():
        if name not in state.macros.used:
            state.warn(pos, f"macro '{name}' not used")
    if state.errors:
        raise ConfigError(state.errors)
    return Config(
        options=state.options,
        policies=state.policies,
        macros=dict(state.macros.values),
        users=state.users,
        warnings=state.warnings,
        files=state.files,
    )


def _new_state(
    macros: dict[str, str] | None,
    resolver: Resolver | None,
    hostname: Callable[[], str] | None,
    platform: Platform,
    refuse_unservable: bool = True,
) -> _State:
    if platform not in ("openbsd", "linux"):
        raise ValueError(f"platform must be 'openbsd' or 'linux', not {platform!r}")
    return _State(
        macros=_Macros(dict(macros or {})),
        resolver=resolver or _default_resolver,
        hostname=hostname or socket.gethostname,
        platform=platform,
        refuse_unservable=refuse_unservable,
    )


def parse_config(
    text: str,
    filename: str = "<string>",
    macros: dict[str, str] | None = None,
    resolver: Resolver | None = None,
    hostname: Callable[[], str] | None = None,
    platform: Platform = "openbsd",
    refuse_unservable: bool = True,
) -> Config:
    """Parse iked.conf text.  ``macros`` are ``-D`` definitions (they win).

    Raises ConfigError listing every error found (file:line:col: message). A transform
    pyike cannot serve (pyike.algorithms) is such an error unless ``refuse_unservable``
    is False, which parses exactly what iked accepts (to compare with ``iked -n``).
    """
    state = _new_state(macros, resolver, hostname, platform, refuse_unservable)
    _parse_text(text, filename, state)
    return _finish(state)


def load_config(
    path: str | os.PathLike[str],
    macros: dict[str, str] | None = None,
    resolver: Resolver | None = None,
    hostname: Callable[[], str] | None = None,
    platform: Platform = "openbsd",
    refuse_unservable: bool = True,
    refuse_loose_permissions: bool = False,
) -> Config:
    """Read and parse an iked.conf file (and the files it includes); see parse_config.

    ``refuse_loose_permissions``: as iked, a file others may read or write (or owned by
    someone else) is an error rather than a warning (the daemon and `pyike -n`)."""
    path = os.fspath(path)
    state = _new_state(macros, resolver, hostname, platform, refuse_unservable)
    state.refuse_loose_permissions = refuse_loose_permissions
    try:
        text = _read_config_file(path, None, state)
    except _ParseError as exc:
        raise ConfigError([Diagnostic(exc.pos, exc.message)]) from None
    _parse_text(text, path, state)
    return _finish(state)


# ---------------------------------------------------------------------------
# Printing, exactly as iked's print_policy() (iked -n -v)


def _xf_name(ttype: TransformType, tid: int, bits: int | None, ike: bool) -> str:
    """iked's print_xf(): first table entry with this id (and key length)."""
    tables: dict[TransformType, Sequence[_Xf]] = {
        _ENCR: _ENC_IKE if ike else _ENC_ESP,
        _PRFT: _PRF,
        _INTEG: _AUTH,
        _DH: _GROUP,
        _ESNT: _ESN,
    }
    length = (bits or 0) // 8
    for xf in tables[ttype]:
        if xf.id == tid and (length == 0 or length == xf.length):
            return xf.name
    return "unknown"


def _print_net(net: IPNetwork, is_net: bool) -> str:
    return f"{net.network_address}/{net.prefixlen}" if is_net else str(net.network_address)


def _sockaddr_key(net: IPNetwork) -> tuple[int, ...]:
    """iked's sockaddr_cmp() on this little-endian host: family, then the
    address as 32-bit words read in host byte order (IPv6: last word first)."""
    packed = net.network_address.packed
    words = [int.from_bytes(packed[i : i + 4], "little") for i in range(0, len(packed), 4)]
    return (0 if net.version == 4 else 1, *reversed(words))


def _addr_key(net: IPNetwork, port: int | None) -> tuple[int, ...]:
    port_host_order = int.from_bytes((port or 0).to_bytes(2, "big"), "little")
    return (*_sockaddr_key(net), net.prefixlen, port_host_order)


def _flow_key(flow: Flow) -> tuple[int, ...]:
    """iked keeps flows in a red-black tree ordered by flow_cmp(): protocol,
    then destination, then source (address, prefix length, port)."""
    return (
        flow.proto or 0,
        *_addr_key(flow.dst, flow.dst_port),
        *_addr_key(flow.src, flow.src_port),
    )


def format_policy(policy: Policy) -> str:
    """One line, as ``iked -n -v`` prints the policy (print_policy())."""
    out = ["ikev2", f'"{policy.name}"']
    if policy.default:
        out.append("default")
    elif policy.quick:
        out.append("quick")
    elif policy.skip:
        out.append("skip")
    out.append("active" if policy.active else "passive")
    if policy.ipcomp:
        out.append("ipcomp")
    out.append("tunnel" if policy.tunnel else "transport")
    out.append("esp" if policy.encap == ProtocolId.ESP else "ah")
    if policy.protocols:
        out.append("proto { " + ", ".join(protocol_name(p) for p in policy.protocols) + " }")
    if policy.af is not None:
        out.append("inet" if policy.af == 4 else "inet6")
    for flow in sorted(policy.flows, key=_flow_key):
        out.append(f"from {_print_net(flow.src, flow.src_is_net)}")
        if flow.src_port:
            out.append(f"port {flow.src_port}")
        out.append(f"to {_print_net(flow.dst, flow.dst_is_net)}")
        if flow.dst_port:
            out.append(f"port {flow.dst_port}")
    if not policy.default:
        local = "any" if not policy.local else _print_net(policy.local[0], policy.local_is_net)
        peer = "any" if policy.peer is None else _print_net(policy.peer, policy.peer_is_net)
        out.append(f"local {local} peer {peer}")
    for prop in [*policy.ike_proposals, *policy.child_proposals]:
        ike = prop.protocol == ProtocolId.IKE
        words = ["ikesa" if ike else "childsa"]
        for ttype in _TYPE_ORDER:
            for _, tid, bits in prop.of_type(ttype):
                name = _xf_name(ttype, tid, bits, ike)
                keyword = {_ENCR: "enc", _PRFT: "prf", _INTEG: "auth", _DH: "group"}.get(ttype)
                words.append(f"{keyword} {name}" if keyword else name)
        if len(words) > 1:
            out.append(" ".join(words))
    if policy.srcid is not None and not policy.srcid_from_hostname:
        out.append(f"srcid {policy.srcid[1]}")
    if policy.dstid is not None:
        out.append(f"dstid {policy.dstid[1]}")
    if policy.ikelifetime:
        out.append(f"ikelifetime {policy.ikelifetime}")
    out.append(f"lifetime {policy.lifetime} bytes {policy.lifetime_bytes}")
    auth = policy.auth
    if auth.method == "psk":
        out.append("psk 0x" + (auth.psk or b"").hex())
    elif auth.method == "eap":
        out.append(f'eap "{auth.eap}"')
    else:
        out.append(auth.method)
    for cfg in policy.config:
        addr = "any" if cfg.address is None else str(cfg.address.ip)
        out.append(f"config {cfg.option} {addr}")
    if policy.iface:
        out.append(f"iface {policy.iface}")
    if policy.tag:
        out.append(f'tag "{policy.tag}"')
    if policy.tap:
        out.append(f'tap "enc{policy.tap}"')
    return " ".join(out)


# ---------------------------------------------------------------------------
# Responder policy selection and semantic checks


def _net_contains(outer: IPNetwork | None, inner: IPNetwork | None) -> bool:
    """Does a policy address ``outer`` (None = any) match everything ``inner`` does?"""
    if outer is None:
        return True
    if inner is None or inner.version != outer.version:
        return False
    return inner.network_address in outer and inner.prefixlen >= outer.prefixlen


def _addr_matches(addr: IPAddress, net: IPNetwork | None) -> bool:
    return net is None or (net.version == addr.version and addr in net)


def select_responder_policy(
    config: Config,
    peer_addr: str | IPAddress,
    local_addr: str | IPAddress,
    peer_id: tuple[IdType | int, str] | None = None,
    local_id: tuple[IdType | int, str] | None = None,
) -> Policy | None:
    """The policy iked would use for a connection the peer initiates.

    iked's policy_test(): walk the policies in order, skipping ``skip``
    policies and those whose address family, peer or local address does not
    match (and, once IDs are known, whose dstid/srcid differ); the last match
    wins unless a matching policy is ``quick``.  Active policies take part
    too.  Without a match, the ``default`` policy (if any) is used.  Traffic
    selectors play no part, which is why policies that differ only in their
    flows shadow each other (see check_policies).
    """
    peer = ipaddress.ip_address(str(peer_addr))
    local = ipaddress.ip_address(str(local_addr))
    chosen: Policy | None = None
    for pol in config.policies:
        if pol.skip:
            continue
        if pol.af is not None and pol.af != peer.version:
            continue
        if not _addr_matches(peer, pol.peer):
            continue
        if pol.local and not any(_addr_matches(local, net) for net in pol.local):
            continue
        if peer_id is not None and pol.dstid is not None and pol.dstid != peer_id:
            continue
        if (
            local_id is not None
            and pol.srcid is not None
            and not pol.srcid_from_hostname
            and pol.srcid != local_id
        ):
            continue
        chosen = pol
        if pol.quick:
            break
    if chosen is None:
        defaults = [p for p in config.policies if p.default]
        chosen = defaults[-1] if defaults else None
    return chosen


def _covers(later: Policy, earlier: Policy) -> bool:
    """Does ``later`` match every connection that ``earlier`` matches?"""
    if later.af is not None and later.af != earlier.af:
        return False
    if not _net_contains(later.peer, earlier.peer):
        return False
    later_local = later.local[0] if later.local else None
    earlier_local = earlier.local[0] if earlier.local else None
    return _net_contains(later_local, earlier_local)


def _where(policy: Policy) -> str:
    return f'policy "{policy.name}"' + (f" ({policy.source})" if policy.source else "")


def check_policies(config: Config) -> list[str]:
    """Warnings about policies that parse but will not behave as meant."""
    warnings: list[str] = []
    pols = [p for p in config.policies if not p.skip]

    # The responder trap: iked chooses a policy when IKE_SA_INIT arrives,
    # from the addresses alone (policy_test), before it sees IDs or traffic
    # selectors; the last match wins.  An earlier policy that a later one
    # covers is never chosen for incoming connections.
    for i, earlier in enumerate(pols):
        shadow: Policy | None = None
        for k in range(i):  # an earlier quick policy that covers it wins first
            if pols[k].quick and _covers(pols[k], earlier):
                shadow = pols[k]
                break
        if shadow is None and not earlier.quick:
            for later in pols[i + 1 :]:
                if _covers(later, earlier):
                    shadow = later
        if shadow is None:
            continue
        if earlier.active and shadow.active:
            # Both initiate: this side starts its SAs itself (the guide's home side),
            # and the peer's policy for them is passive, so the responder choice
            # never comes into play. A note here would only be noise.
            continue
        role = (
            "it can never be selected when the peer connects"
            if not earlier.active
            else "it is still used when pyike initiates, but never when the peer connects"
        )
        same = "the same" if earlier.flows == shadow.flows else "different"
        warnings.append(
            f"{_where(earlier)} is shadowed by {_where(shadow)}: both match the same "
            f"peer/local addresses ({same} traffic selectors), and a responder chooses its "
            "policy from the addresses alone, before it sees traffic selectors, taking the "
            f'last match unless one is "quick"; {role}. Merge them into one policy: list '
            "the protocols (proto { tcp icmp6 }) or give several from/to pairs in one rule"
        )

    names: dict[str, Policy] = {}
    for pol in config.policies:
        if pol.name in names:
            warnings.append(
                f"{_where(pol)} has the same name as {_where(names[pol.name])} "
                "(iked.conf(5): a name should only occur once)"
            )
        names.setdefault(pol.name, pol)

    for pol in config.policies:
        if pol.lifetime == 0 or pol.lifetime_bytes == 0:
            warnings.append(
                f"{_where(pol)}: a zero lifetime disables Child SA rekeying (iked.conf(5): "
                "rekeying must happen at least several times a day)"
            )
        if not pol.child_proposals:
            warnings.append(f"{_where(pol)} has no usable childsa proposal")
    return warnings
