"""A userspace PF_KEY v2 "kernel" for OpenIKED on a kernel without PF_KEY (stdlib only).

Run as a script (``python pfkey_standin.py --sock S --ctl C --log L``). iked, started
with ``pfkey_shim.so`` preloaded, gets an AF_UNIX SOCK_SEQPACKET connection to ``S``
instead of ``socket(PF_KEY, SOCK_RAW, PF_KEY_V2)``; this process answers every
SADB message the way Linux's af_key does (RFC 2367 framing, Linux numbering from
<linux/pfkeyv2.h> and <linux/ipsec.h>, because Debian's openiked is built against
those headers), keeps a small SAD and SPD, and records every request as one JSON
line in ``L`` for the tests to read. Nothing is installed anywhere: there is no
data plane, only the record.

What iked (openiked-portable iked/pfkey.c, Linux branch) sends and expects:

- start-up: SADB_FLUSH, then SADB_REGISTER for ESP and AH. Only ``sadb_msg_errno``
  of the reply is looked at (the supported-algorithm lists are ignored), but we
  send the lists a Linux kernel would.
- every request is written, then iked poll()s 1 ms for the reply whose
  ``sadb_msg_seq`` and ``sadb_msg_pid`` equal its own; anything else with pid 0
  (our SADB_EXPIRE) is queued and processed after. So replies are sent at once,
  before the record is written.
- Child SA set-up: SADB_GETSPI (spirange 0x100..0xffffffff) for the inbound SA,
  SADB_UPDATE to fill it, SADB_ADD for the outbound SA, both with sadb_x_sa2
  (mode), keys, soft/hard lifetimes; SADB_X_SPDADD (iked's "ADDFLOW") per flow and
  direction with a sadb_x_policy + one sadb_x_ipsecrequest (tunnel end points).
  SADB_DELETE / SADB_X_SPDDELETE on tear-down; SADB_GET to check an SA exists.
- SADB_EXPIRE from the kernel with a SOFT lifetime makes iked rekey the Child SA
  (CREATE_CHILD_SA), with a HARD one it drops it. iked looks for the SOFT
  extension first, so a hard expire must not carry one.

Expiry: each SA with lifetimes gets a soft and a hard SADB_EXPIRE at the
``addtime`` iked set (``--no-auto-expire`` turns that off). The control socket
``C`` (SOCK_SEQPACKET, one JSON object per message) takes ``{"cmd": "ping"}``,
``{"cmd": "expire", "spi": N, "hard": false}``, ``{"cmd": "sad"}`` and
``{"cmd": "spd"}``.

Record format (one object per line): ``time``, ``conn`` (connection number),
``dir`` ("from_iked" for a request, "to_iked" for our EXPIRE), ``type``
("SADB_UPDATE"...), ``satype`` ("esp"...), ``seq``, ``pid``, ``errno`` (of our
reply), then the decoded extensions: for SA messages ``spi``, ``src``, ``dst``,
``mode``, ``reqid``, ``enc_alg``, ``enc_key`` (hex), ``auth_alg``, ``auth_key``,
``lifetime_soft``/``lifetime_hard`` (dicts), ``natt``; for policies ``policy_dir``,
``policy_type``, ``src``/``src_prefixlen``/``src_port``, ``dst``..., ``proto``
(None for any) and ``requests`` (proto, mode, level, reqid, tunnel_src, tunnel_dst).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import heapq
import ipaddress
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any

# --- numbers: RFC 2367 section 2.3 / <linux/pfkeyv2.h>, <linux/ipsec.h> -------------

PF_KEY_V2 = 2
CHUNK = 8  # every length in PF_KEY is in 64-bit words (RFC 2367 section 2.1)

MSG_TYPES = {
    1: "SADB_GETSPI",
    2: "SADB_UPDATE",
    3: "SADB_ADD",
    4: "SADB_DELETE",
    5: "SADB_GET",
    6: "SADB_ACQUIRE",
    7: "SADB_REGISTER",
    8: "SADB_EXPIRE",
    9: "SADB_FLUSH",
    10: "SADB_DUMP",
    11: "SADB_X_PROMISC",
    12: "SADB_X_PCHANGE",
    13: "SADB_X_SPDUPDATE",
    14: "SADB_X_SPDADD",
    15: "SADB_X_SPDDELETE",
    16: "SADB_X_SPDGET",
    17: "SADB_X_SPDACQUIRE",
    18: "SADB_X_SPDDUMP",
    19: "SADB_X_SPDFLUSH",
    20: "SADB_X_SPDSETIDX",
    21: "SADB_X_SPDEXPIRE",
    22: "SADB_X_SPDDELETE2",
    23: "SADB_X_NAT_T_NEW_MAPPING",
    24: "SADB_X_MIGRATE",
}
T = {name: num for num, name in MSG_TYPES.items()}

SATYPES = {0: "unspec", 2: "ah", 3: "esp", 9: "ipcomp"}
SATYPE_ESP = 3
SATYPE_AH = 2

EXT_SA = 1
EXT_LIFETIME_CURRENT = 2
EXT_LIFETIME_HARD = 3
EXT_LIFETIME_SOFT = 4
EXT_ADDRESS_SRC = 5
EXT_ADDRESS_DST = 6
EXT_ADDRESS_PROXY = 7
EXT_KEY_AUTH = 8
EXT_KEY_ENCRYPT = 9
EXT_IDENTITY_SRC = 10
EXT_IDENTITY_DST = 11
EXT_SUPPORTED_AUTH = 14
EXT_SUPPORTED_ENCRYPT = 15
EXT_SPIRANGE = 16
EXT_X_POLICY = 18
EXT_X_SA2 = 19
EXT_X_NAT_T_TYPE = 20
EXT_X_NAT_T_SPORT = 21
EXT_X_NAT_T_DPORT = 22

SASTATE_MATURE = 1
SASTATE_DYING = 2
SASTATE_DEAD = 3

# sadb_sa_auth / sadb_sa_encrypt values (Linux numbering)
AUTH_ALGS = {
    0: "none",
    2: "hmac-md5",
    3: "hmac-sha1",
    5: "hmac-sha2-256",
    6: "hmac-sha2-384",
    7: "hmac-sha2-512",
    8: "hmac-ripemd160",
    9: "aes-xcbc-mac",
    251: "null",
}
ENC_ALGS = {
    0: "none",
    2: "des-cbc",
    3: "3des-cbc",
    6: "cast-cbc",
    7: "blowfish-cbc",
    11: "null",
    12: "aes-cbc",
    13: "aes-ctr",
    14: "aes-ccm-8",
    15: "aes-ccm-12",
    16: "aes-ccm-16",
    18: "aes-gcm-8",
    19: "aes-gcm-12",
    20: "aes-gcm-16",
    22: "camellia-cbc",
    23: "null-aes-gmac",
}
# What SADB_REGISTER answers (id, ivlen, minbits, maxbits), as a Linux kernel with
# the usual crypto modules would. iked ignores it, other PF_KEY users may not.
SUPPORTED_AUTH = [
    (2, 0, 128, 128),
    (3, 0, 160, 160),
    (5, 0, 256, 256),
    (6, 0, 384, 384),
    (7, 0, 512, 512),
]
SUPPORTED_ENC = [
    (3, 8, 192, 192),
    (11, 0, 0, 0),
    (12, 16, 128, 256),
    (13, 8, 160, 288),
    (20, 8, 160, 288),
]

MODES = {0: "any", 1: "transport", 2: "tunnel", 3: "beet"}
POLICY_DIRS = {0: "any", 1: "in", 2: "out", 3: "fwd"}
POLICY_TYPES = {0: "discard", 1: "none", 2: "ipsec", 3: "entrust", 4: "bypass"}
LEVELS = {0: "default", 1: "use", 2: "require", 3: "unique"}
IPPROTO_ESP = 50
IPPROTO_AH = 51
ULPROTO_ANY = 255

AF_INET = socket.AF_INET
AF_INET6 = socket.AF_INET6

_MSG = struct.Struct("=BBBBHHII")  # struct sadb_msg (16 bytes)
_EXT = struct.Struct("=HH")  # struct sadb_ext
_SA = struct.Struct("=HH4sBBBBI")  # struct sadb_sa, SPI in network order
_LIFETIME = struct.Struct("=HHIQQQ")  # struct sadb_lifetime (32)
_ADDRESS = struct.Struct("=HHBBH")  # struct sadb_address (8) + sockaddr
_KEY = struct.Struct("=HHHH")  # struct sadb_key (8) + key bits
_SPIRANGE = struct.Struct("=HHIII")  # struct sadb_spirange (16), host order
_POLICY = struct.Struct("=HHHBBII")  # struct sadb_x_policy (16)
_IPSECREQ = struct.Struct("=HHBBHII")  # struct sadb_x_ipsecrequest (16)
_SA2 = struct.Struct("=HHBBHII")  # struct sadb_x_sa2 (16)
_NATT_TYPE = struct.Struct("=HHB3x")  # struct sadb_x_nat_t_type (8)
_NATT_PORT = struct.Struct("=HH2sH")  # struct sadb_x_nat_t_port (8), port big-endian
_IDENT = struct.Struct("=HHHHQ")  # struct sadb_ident (16) + string
_SUPPORTED = struct.Struct("=HHI")  # struct sadb_supported (8) + sadb_alg[]
_ALG = struct.Struct("=BBHHH")  # struct sadb_alg (8)


class PfkeyError(ValueError):
    """A message from iked (or a control command) could not be parsed."""


# --- parsing ------------------------------------------------------------------------


@dataclass(slots=True)
class SadbMsg:
    """One PF_KEY message: the sadb_msg header and its raw extensions in order."""

    version: int
    type: int
    errno: int
    satype: int
    seq: int
    pid: int
    exts: list[tuple[int, bytes]] = field(default_factory=list)  # (exttype, whole ext)

    def ext(self, exttype: int) -> bytes | None:
        return next((data for t, data in self.exts if t == exttype), None)


def parse_msg(data: bytes) -> SadbMsg:
    """Split a PF_KEY message into header and extensions (RFC 2367 section 2.1-2.3)."""
    if len(data) < _MSG.size:
        raise PfkeyError(f"message of {len(data)} bytes is shorter than sadb_msg")
    version, mtype, err, satype, length, _res, seq, pid = _MSG.unpack_from(data)
    if version != PF_KEY_V2:
        raise PfkeyError(f"sadb_msg_version {version}, expected {PF_KEY_V2}")
    if length * CHUNK != len(data):
        raise PfkeyError(f"sadb_msg_len {length} words but {len(data)} bytes received")
    msg = SadbMsg(version, mtype, err, satype, seq, pid)
    pos = _MSG.size
    while pos < len(data):
        if len(data) - pos < _EXT.size:
            raise PfkeyError(f"truncated extension header at offset {pos}")
        elen, etype = _EXT.unpack_from(data, pos)
        if elen == 0 or pos + elen * CHUNK > len(data):
            raise PfkeyError(f"extension type {etype} at {pos} has bad length {elen}")
        msg.exts.append((etype, data[pos : pos + elen * CHUNK]))
        pos += elen * CHUNK
    return msg


def _unpack(st: struct.Struct, data: bytes, what: str) -> tuple[Any, ...]:
    if len(data) < st.size:
        raise PfkeyError(f"{what}: {len(data)} bytes, need {st.size}")
    return st.unpack_from(data)


def parse_sockaddr(data: bytes) -> tuple[str, int]:
    """Linux sockaddr_in / sockaddr_in6 (family in host order, port big-endian)."""
    if len(data) < 4:
        raise PfkeyError("truncated sockaddr")
    family = struct.unpack_from("=H", data)[0]
    port = struct.unpack_from("!H", data, 2)[0]
    if family == AF_INET and len(data) >= 8:
        return str(ipaddress.IPv4Address(data[4:8])), port
    if family == AF_INET6 and len(data) >= 24:
        return str(ipaddress.IPv6Address(data[8:24])), port
    raise PfkeyError(f"unsupported sockaddr family {family} ({len(data)} bytes)")


def sockaddr_len(data: bytes) -> int:
    family = struct.unpack_from("=H", data)[0] if len(data) >= 2 else 0
    return {AF_INET: 16, AF_INET6: 28}.get(family, 0)


def parse_address(ext: bytes) -> dict[str, Any]:
    _len, _t, proto, prefixlen, _r = _unpack(_ADDRESS, ext, "sadb_address")
    addr, port = parse_sockaddr(ext[_ADDRESS.size :])
    return {
        "addr": addr,
        "port": port,
        "prefixlen": prefixlen,
        "proto": None if proto in (0, ULPROTO_ANY) else proto,
    }


def parse_lifetime(ext: bytes) -> dict[str, int]:
    _len, _t, allocations, nbytes, addtime, usetime = _unpack(_LIFETIME, ext, "sadb_lifetime")
    return {"allocations": allocations, "bytes": nbytes, "addtime": addtime, "usetime": usetime}


def parse_key(ext: bytes) -> bytes:
    _len, _t, bits, _r = _unpack(_KEY, ext, "sadb_key")
    key = ext[_KEY.size : _KEY.size + (bits + 7) // 8]
    if len(key) * 8 < bits:
        raise PfkeyError(f"sadb_key says {bits} bits, carries {len(key)} bytes")
    return key


def parse_policy(ext: bytes) -> dict[str, Any]:
    """sadb_x_policy followed by sadb_x_ipsecrequest records (Linux/KAME layout)."""
    _len, _t, ptype, pdir, _r, pid, priority = _unpack(_POLICY, ext, "sadb_x_policy")
    requests = []
    pos = _POLICY.size
    while pos + _IPSECREQ.size <= len(ext):
        rlen, proto, mode, level, _r1, reqid, _r2 = _IPSECREQ.unpack_from(ext, pos)
        if rlen < _IPSECREQ.size or pos + rlen > len(ext):
            break  # trailing padding, not a request
        req: dict[str, Any] = {
            "proto": {IPPROTO_ESP: "esp", IPPROTO_AH: "ah"}.get(proto, proto),
            "mode": MODES.get(mode, mode),
            "level": LEVELS.get(level, level),
            "reqid": reqid,
        }
        tail = ext[pos + _IPSECREQ.size : pos + rlen]
        if tail and (n := sockaddr_len(tail)) and len(tail) >= n:
            req["tunnel_src"] = parse_sockaddr(tail[:n])[0]
            if (m := sockaddr_len(tail[n:])) and len(tail) >= n + m:
                req["tunnel_dst"] = parse_sockaddr(tail[n : n + m])[0]
        requests.append(req)
        pos += rlen
    return {
        "policy_type": POLICY_TYPES.get(ptype, ptype),
        "policy_dir": POLICY_DIRS.get(pdir, pdir),
        "policy_id": pid,
        "priority": priority,
        "requests": requests,
    }


def decode(msg: SadbMsg) -> dict[str, Any]:
    """Every extension of ``msg`` as JSON-friendly fields (see the module docstring)."""
    out: dict[str, Any] = {}
    for etype, ext in msg.exts:
        if etype == EXT_SA:
            _l, _t, spi, replay, state, auth, enc, flags = _unpack(_SA, ext, "sadb_sa")
            out.update(
                spi=int.from_bytes(spi, "big"),
                replay=replay,
                state=state,
                auth_alg=AUTH_ALGS.get(auth, auth),
                auth_alg_id=auth,
                enc_alg=ENC_ALGS.get(enc, enc),
                enc_alg_id=enc,
                flags=flags,
            )
        elif etype in (EXT_LIFETIME_CURRENT, EXT_LIFETIME_HARD, EXT_LIFETIME_SOFT):
            name = {
                EXT_LIFETIME_CURRENT: "current",
                EXT_LIFETIME_HARD: "hard",
                EXT_LIFETIME_SOFT: "soft",
            }[etype]
            out[f"lifetime_{name}"] = parse_lifetime(ext)
        elif etype in (EXT_ADDRESS_SRC, EXT_ADDRESS_DST, EXT_ADDRESS_PROXY):
            name = {EXT_ADDRESS_SRC: "src", EXT_ADDRESS_DST: "dst", EXT_ADDRESS_PROXY: "proxy"}[
                etype
            ]
            a = parse_address(ext)
            out[name] = a["addr"]
            out[f"{name}_port"] = a["port"]
            out[f"{name}_prefixlen"] = a["prefixlen"]
            out["proto"] = a["proto"]
        elif etype == EXT_KEY_ENCRYPT:
            out["enc_key"] = parse_key(ext).hex()
        elif etype == EXT_KEY_AUTH:
            out["auth_key"] = parse_key(ext).hex()
        elif etype in (EXT_IDENTITY_SRC, EXT_IDENTITY_DST):
            _l, _t, _itype, _r, _id = _unpack(_IDENT, ext, "sadb_ident")
            name = "identity_src" if etype == EXT_IDENTITY_SRC else "identity_dst"
            out[name] = ext[_IDENT.size :].split(b"\0", 1)[0].decode(errors="replace")
        elif etype == EXT_SPIRANGE:
            _l, _t, lo, hi, _r = _unpack(_SPIRANGE, ext, "sadb_spirange")
            out["spirange"] = [lo, hi]
        elif etype == EXT_X_POLICY:
            out.update(parse_policy(ext))
        elif etype == EXT_X_SA2:
            _l, _t, mode, _r1, _r2, _seq, reqid = _unpack(_SA2, ext, "sadb_x_sa2")
            out.update(mode=MODES.get(mode, mode), reqid=reqid)
        elif etype == EXT_X_NAT_T_TYPE:
            out.setdefault("natt", {})["type"] = _unpack(_NATT_TYPE, ext, "nat_t_type")[2]
        elif etype in (EXT_X_NAT_T_SPORT, EXT_X_NAT_T_DPORT):
            port = int.from_bytes(_unpack(_NATT_PORT, ext, "nat_t_port")[2], "big")
            out.setdefault("natt", {})["sport" if etype == EXT_X_NAT_T_SPORT else "dport"] = port
        else:
            out.setdefault("unknown_exts", []).append(etype)
    return out


# --- building replies ---------------------------------------------------------------


def build_msg(
    mtype: int, satype: int, seq: int, pid: int, exts: list[bytes], err: int = 0
) -> bytes:
    body = b"".join(exts)
    if len(body) % CHUNK:
        raise PfkeyError("extensions must be multiples of 8 bytes")
    return (
        _MSG.pack(PF_KEY_V2, mtype, err, satype, (_MSG.size + len(body)) // CHUNK, 0, seq, pid)
        + body
    )


def sa_ext(
    spi: int,
    state: int = SASTATE_MATURE,
    auth: int = 0,
    enc: int = 0,
    replay: int = 0,
    flags: int = 0,
) -> bytes:
    return _SA.pack(
        _SA.size // CHUNK, EXT_SA, spi.to_bytes(4, "big"), replay, state, auth, enc, flags
    )


def lifetime_ext(
    exttype: int, allocations: int = 0, nbytes: int = 0, addtime: int = 0, usetime: int = 0
) -> bytes:
    return _LIFETIME.pack(_LIFETIME.size // CHUNK, exttype, allocations, nbytes, addtime, usetime)


def sockaddr(addr: str, port: int = 0) -> bytes:
    ip = ipaddress.ip_address(addr)
    if ip.version == 4:
        return struct.pack("=H", AF_INET) + struct.pack("!H", port) + ip.packed + bytes(8)
    return struct.pack("=H", AF_INET6) + struct.pack("!HI", port, 0) + ip.packed + bytes(4)


def address_ext(
    exttype: int, addr: str, port: int = 0, prefixlen: int = 0, proto: int = 0
) -> bytes:
    sa = sockaddr(addr, port)
    sa += bytes(-len(sa) % CHUNK)
    return _ADDRESS.pack((_ADDRESS.size + len(sa)) // CHUNK, exttype, proto, prefixlen, 0) + sa


def supported_ext(exttype: int, algs: list[tuple[int, int, int, int]]) -> bytes:
    body = b"".join(_ALG.pack(i, iv, lo, hi, 0) for i, iv, lo, hi in algs)
    return _SUPPORTED.pack((_SUPPORTED.size + len(body)) // CHUNK, exttype, 0) + body


# --- the SAD and SPD ----------------------------------------------------------------


@dataclass(slots=True)
class SaEntry:
    """One SA as the kernel would hold it (keyed by satype, dst, SPI: RFC 2367 2.1)."""

    satype: int
    spi: int
    src: str
    dst: str
    state: int = SASTATE_MATURE
    larval: bool = False  # made by GETSPI, not yet UPDATEd
    info: dict[str, Any] = field(default_factory=dict)  # decoded ADD/UPDATE fields
    added: float = 0.0
    auth: int = 0
    enc: int = 0

    def public(self) -> dict[str, Any]:
        return {
            "satype": SATYPES.get(self.satype, self.satype),
            "spi": self.spi,
            "src": self.src,
            "dst": self.dst,
            "larval": self.larval,
            "state": self.state,
            **{k: v for k, v in self.info.items() if k not in ("spi", "src", "dst", "state")},
        }


def policy_key(info: dict[str, Any]) -> tuple[Any, ...]:
    """What identifies a Linux policy: direction and selector (not the templates)."""
    return (
        info.get("policy_dir"),
        info.get("src"),
        info.get("src_prefixlen"),
        info.get("src_port"),
        info.get("dst"),
        info.get("dst_prefixlen"),
        info.get("dst_port"),
        info.get("proto"),
    )


@dataclass(eq=False)
class Conn:
    num: int
    sock: socket.socket
    registered: set[int] = field(default_factory=set)


class Kernel:
    """The SAD/SPD logic: one request in, one reply (and a record) out. No I/O."""

    def __init__(self, auto_expire: bool = True) -> None:
        self.sad: dict[tuple[int, str, int], SaEntry] = {}
        self.spd: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.auto_expire = auto_expire
        self.timers: list[tuple[float, int, bool, tuple[int, str, int]]] = []

    # each handler returns (errno, reply extensions)
    def handle(
        self, msg: SadbMsg, info: dict[str, Any], now: float, conn: Conn
    ) -> tuple[int, list[bytes]]:
        name = MSG_TYPES.get(msg.type, str(msg.type))
        handler = getattr(self, "_on_" + name.removeprefix("SADB_").lower(), None)
        if handler is None:
            return errno.EOPNOTSUPP, []
        return handler(msg, info, now, conn)

    def _on_register(
        self, msg: SadbMsg, info: dict[str, Any], now: float, conn: Conn
    ) -> tuple[int, list[bytes]]:
        conn.registered.add(msg.satype)
        return 0, [
            supported_ext(EXT_SUPPORTED_AUTH, SUPPORTED_AUTH),
            supported_ext(EXT_SUPPORTED_ENCRYPT, SUPPORTED_ENC),
        ]

    def _on_flush(
        self, msg: SadbMsg, info: dict[str, Any], now: float, conn: Conn
    ) -> tuple[int, list[bytes]]:
        for key in [k for k in self.sad if msg.satype in (0, k[0])]:
            del self.sad[key]
        return 0, []

    def _on_x_spdflush(
        self, msg: SadbMsg, info: dict[str, Any], now: float, conn: Conn
    ) -> tuple[int, list[bytes]]:
        self.spd.clear()
        return 0, []

    def _on_getspi(
        self, msg: SadbMsg, info: dict[str, Any], now: float, conn: Conn
    ) -> tuple[int, list[bytes]]:
        lo, hi = info.get("spirange", [0x100, 0xFFFFFFFF])
        if "src" not in info or "dst" not in info or lo > hi:
            return errno.EINVAL, []
        for _ in range(1000):  # bounded: a free SPI in a 2^32 range is found at once
            spi = lo + int.from_bytes(os.urandom(4), "big") % (hi - lo + 1)
            if (msg.satype, info["dst"], spi) not in self.sad:
                break
        else:
            return errno.EAGAIN, []
        self.sad[(msg.satype, info["dst"], spi)] = SaEntry(
            msg.satype, spi, info["src"], info["dst"], larval=True, added=now
        )
        info["spi"] = spi  # recorded: the SPI we handed out
        return 0, [
            sa_ext(spi, state=0),
            address_ext(EXT_ADDRESS_SRC, info["src"]),
            address_ext(EXT_ADDRESS_DST, info["dst"]),
        ]

    def _store(
        self, msg: SadbMsg, info: dict[str, Any], now: float, update: bool
    ) -> tuple[int, list[bytes]]:
        if "spi" not in info or "dst" not in info or "src" not in info:
            return errno.EINVAL, []
        key = (msg.satype, info["dst"], info["spi"])
        old = self.sad.get(key)
        if update and old is None:
            return errno.ESRCH, []  # RFC 2367 2.3.3.2: UPDATE needs an existing SA
        if not update and old is not None:
            return errno.EEXIST, []
        entry = SaEntry(
            msg.satype,
            info["spi"],
            info["src"],
            info["dst"],
            info=dict(info),
            added=now,
            auth=info.get("auth_alg_id", 0),
            enc=info.get("enc_alg_id", 0),
        )
        self.sad[key] = entry
        if self.auto_expire:
            for hard in (False, True):
                lt = info.get("lifetime_hard" if hard else "lifetime_soft")
                if lt and lt["addtime"]:
                    heapq.heappush(self.timers, (now + lt["addtime"], id(entry), hard, key))
        # The reply echoes the SA without its keys (RFC 2367 section 2.3.3.2/2.3.3.3).
        return 0, [ext for t, ext in msg.exts if t not in (EXT_KEY_AUTH, EXT_KEY_ENCRYPT)]

    def _on_update(
        self, msg: SadbMsg, info: dict[str, Any], now: float, conn: Conn
    ) -> tuple[int, list[bytes]]:
        return self._store(msg, info, now, update=True)

    def _on_add(
        self, msg: SadbMsg, info: dict[str, Any], now: float, conn: Conn
    ) -> tuple[int, list[bytes]]:
        return self._store(msg, info, now, update=False)

    def _on_delete(
        self, msg: SadbMsg, info: dict[str, Any], now: float, conn: Conn
    ) -> tuple[int, list[bytes]]:
        key = (msg.satype, info.get("dst"), info.get("spi"))
        if self.sad.pop(key, None) is None:  # type: ignore[arg-type]
            return errno.ESRCH, []
        return 0, [ext for t, ext in msg.exts if t in (EXT_SA, EXT_ADDRESS_SRC, EXT_ADDRESS_DST)]

    def _on_get(
        self, msg: SadbMsg, info: dict[str, Any], now: float, conn: Conn
    ) -> tuple[int, list[bytes]]:
        entry = self.sad.get((msg.satype, info.get("dst"), info.get("spi")))  # type: ignore[arg-type]
        if entry is None or entry.larval:
            return errno.ESRCH, []
        return 0, [
            sa_ext(entry.spi, entry.state, entry.auth, entry.enc),
            lifetime_ext(EXT_LIFETIME_CURRENT, addtime=int(entry.added)),
            address_ext(EXT_ADDRESS_SRC, entry.src),
            address_ext(EXT_ADDRESS_DST, entry.dst),
        ]

    def _on_x_spdadd(
        self, msg: SadbMsg, info: dict[str, Any], now: float, conn: Conn
    ) -> tuple[int, list[bytes]]:
        key = policy_key(info)
        if key in self.spd:
            return errno.EEXIST, []
        self.spd[key] = dict(info)
        return 0, [ext for _t, ext in msg.exts]

    def _on_x_spdupdate(
        self, msg: SadbMsg, info: dict[str, Any], now: float, conn: Conn
    ) -> tuple[int, list[bytes]]:
        self.spd[policy_key(info)] = dict(info)
        return 0, [ext for _t, ext in msg.exts]

    def _on_x_spddelete(
        self, msg: SadbMsg, info: dict[str, Any], now: float, conn: Conn
    ) -> tuple[int, list[bytes]]:
        if self.spd.pop(policy_key(info), None) is None:
            return errno.ENOENT, []
        return 0, [ext for _t, ext in msg.exts]

    # expiry ------------------------------------------------------------------------
    def expire_msg(self, key: tuple[int, str, int], hard: bool, now: float) -> bytes | None:
        """SADB_EXPIRE as Linux af_key builds it: SA, the one lifetime that ran out
        (SOFT or HARD, never both), CURRENT, src and dst; seq and pid 0. A hard
        expiry also removes the SA, as the kernel does."""
        entry = self.sad.get(key)
        if entry is None or entry.larval:
            return None
        which = "lifetime_hard" if hard else "lifetime_soft"
        lt = entry.info.get(which) or {}
        if hard:
            del self.sad[key]
        else:
            entry.state = SASTATE_DYING
        return build_msg(
            T["SADB_EXPIRE"],
            entry.satype,
            0,
            0,
            [
                sa_ext(entry.spi, SASTATE_DEAD if hard else SASTATE_DYING, entry.auth, entry.enc),
                lifetime_ext(
                    EXT_LIFETIME_HARD if hard else EXT_LIFETIME_SOFT,
                    lt.get("allocations", 0),
                    lt.get("bytes", 0),
                    lt.get("addtime", 0),
                    lt.get("usetime", 0),
                ),
                lifetime_ext(EXT_LIFETIME_CURRENT, addtime=int(entry.added), usetime=int(now)),
                address_ext(EXT_ADDRESS_SRC, entry.src),
                address_ext(EXT_ADDRESS_DST, entry.dst),
            ],
        )

    def find_spi(self, spi: int, dst: str | None = None) -> tuple[int, str, int] | None:
        for key, entry in self.sad.items():
            if entry.spi == spi and not entry.larval and dst in (None, entry.dst):
                return key
        return None


# --- the server ---------------------------------------------------------------------


class Server:
    """The event loop: PF_KEY connections, control connections, expiry timers."""

    def __init__(
        self,
        sock_path: str,
        ctl_path: str,
        log_path: str,
        kernel: Kernel,
        raw: bool = False,
        delay: float = 0.0,
    ) -> None:
        self.kernel = kernel
        self.raw = raw
        self.delay = delay  # seconds before each reply (tests iked's patience)
        self.sel = selectors.DefaultSelector()
        self.log = open(log_path, "a", buffering=1)  # noqa: SIM115 - lives as long as we do
        self.conns: dict[int, Conn] = {}
        self._next_conn = 1
        self.paths = [sock_path, ctl_path]
        self.listener = self._listen(sock_path)
        self.ctl_listener = self._listen(ctl_path)

    def _listen(self, path: str) -> socket.socket:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.bind(path)
        os.chmod(path, 0o600)
        s.listen(16)
        self.sel.register(s, selectors.EVENT_READ)
        return s

    def record(self, rec: dict[str, Any]) -> None:
        self.log.write(json.dumps(rec, sort_keys=True) + "\n")

    def serve(self) -> None:
        while True:
            timeout = None
            if self.kernel.timers:
                timeout = max(0.0, self.kernel.timers[0][0] - time.monotonic())
            for key, _ in self.sel.select(timeout):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self.listener:
                    self._accept(sock, control=False)
                elif sock is self.ctl_listener:
                    self._accept(sock, control=True)
                elif key.data == "ctl":
                    self._control(sock)
                else:
                    self._pfkey(self.conns[sock.fileno()])
            self._run_timers()

    def close(self) -> None:
        for path in self.paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self.log.close()

    def _accept(self, listener: socket.socket, control: bool) -> None:
        s, _ = listener.accept()
        if control:
            self.sel.register(s, selectors.EVENT_READ, "ctl")
            return
        conn = Conn(self._next_conn, s)
        self._next_conn += 1
        self.conns[s.fileno()] = conn
        self.sel.register(s, selectors.EVENT_READ, "pfkey")
        self.record({"time": time.time(), "conn": conn.num, "dir": "connect"})

    def _drop(self, sock: socket.socket) -> None:
        self.sel.unregister(sock)
        conn = self.conns.pop(sock.fileno(), None)
        if conn is not None:
            self.record({"time": time.time(), "conn": conn.num, "dir": "disconnect"})
        sock.close()

    def _pfkey(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop(conn.sock)
            return
        now = time.monotonic()
        rec: dict[str, Any] = {"time": time.time(), "conn": conn.num, "dir": "from_iked"}
        try:
            msg = parse_msg(data)
            info = decode(msg)
        except PfkeyError as exc:
            rec.update(error=str(exc), raw=data.hex())
            self.record(rec)
            return  # the kernel drops what it cannot parse; iked times out
        err, exts = self.kernel.handle(msg, info, now, conn)
        # Reply first (iked is waiting), then write the record.
        reply = build_msg(msg.type, msg.satype, msg.seq, msg.pid, exts if err == 0 else [], err)
        if self.delay:
            time.sleep(self.delay)
        with contextlib.suppress(OSError):
            conn.sock.send(reply)
        rec.update(
            type=MSG_TYPES.get(msg.type, msg.type),
            satype=SATYPES.get(msg.satype, msg.satype),
            seq=msg.seq,
            pid=msg.pid,
            errno=err,
            **info,
        )
        if self.raw:
            rec["raw"] = data.hex()
        self.record(rec)

    def send_expire(self, key: tuple[int, str, int], hard: bool, why: str) -> int:
        entry = self.kernel.sad.get(key)
        data = self.kernel.expire_msg(key, hard, time.monotonic())
        if data is None or entry is None:
            return 0
        sent = 0
        for conn in list(self.conns.values()):
            if key[0] in conn.registered:  # af_key: BROADCAST_REGISTERED
                with contextlib.suppress(OSError):
                    conn.sock.send(data)
                    sent += 1
        self.record(
            {
                "time": time.time(),
                "dir": "to_iked",
                "type": "SADB_EXPIRE",
                "satype": SATYPES.get(key[0], key[0]),
                "spi": entry.spi,
                "src": entry.src,
                "dst": entry.dst,
                "hard": hard,
                "why": why,
                "sent": sent,
            }
        )
        return sent

    def _run_timers(self) -> None:
        timers = self.kernel.timers
        now = time.monotonic()
        for _ in range(len(timers)):  # bounded by the number of timers
            if not timers or timers[0][0] > now:
                break
            _when, ident, hard, key = heapq.heappop(timers)
            entry = self.kernel.sad.get(key)
            current = entry is not None and id(entry) == ident  # not replaced since
            if current and (hard or entry.state == SASTATE_MATURE):
                self.send_expire(key, hard, "lifetime")

    def _control(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self.sel.unregister(sock)
            sock.close()
            return
        try:
            answer = self._command(json.loads(data))
        except (ValueError, KeyError, TypeError) as exc:
            answer = {"ok": False, "error": f"bad command: {exc}"}
        with contextlib.suppress(OSError):
            sock.send(json.dumps(answer).encode())

    def _command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        name = cmd["cmd"]
        if name == "ping":
            return {"ok": True, "pid": os.getpid(), "conns": len(self.conns)}
        if name == "expire":
            key = self.kernel.find_spi(int(cmd["spi"]), cmd.get("dst"))
            if key is None:
                return {"ok": False, "error": f"no SA with SPI {int(cmd['spi']):#010x}"}
            sent = self.send_expire(key, bool(cmd.get("hard", False)), "control")
            return {
                "ok": sent > 0,
                "sent": sent,
                **({} if sent else {"error": "no registered PF_KEY socket"}),
            }
        if name == "sad":
            return {"ok": True, "sas": [e.public() for e in self.kernel.sad.values()]}
        if name == "spd":
            return {"ok": True, "policies": list(self.kernel.spd.values())}
        return {"ok": False, "error": f"unknown command {name!r}"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sock", required=True, help="PF_KEY socket path (PYIKE_PFKEY_SOCK)")
    p.add_argument("--ctl", required=True, help="control socket path")
    p.add_argument("--log", required=True, help="JSON-lines record of every message")
    p.add_argument(
        "--no-auto-expire",
        action="store_true",
        help="never send SADB_EXPIRE on our own (only on a control command)",
    )
    p.add_argument("--raw", action="store_true", help="also record each message in hex")
    p.add_argument(
        "--delay-ms",
        type=float,
        default=0.0,
        help="wait this long before each reply (a slow kernel, for tests)",
    )
    args = p.parse_args(argv)
    server = Server(
        args.sock,
        args.ctl,
        args.log,
        Kernel(not args.no_auto_expire),
        args.raw,
        args.delay_ms / 1000,
    )

    def stop(signum: int, frame: object) -> None:
        # Raising interrupts select() (which PEP 475 would otherwise resume).
        raise _Stop

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve()
    except _Stop:
        server.close()
    return 0


class _Stop(Exception):
    """SIGTERM/SIGINT: leave the event loop."""


if __name__ == "__main__":
    sys.exit(main())
