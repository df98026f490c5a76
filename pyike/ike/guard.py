"""Admission control for what anyone on the internet can send: cookies, limits, rates.

An unauthenticated sender can make a responder do three expensive things: keep state
(a half-open IKE SA), compute a Diffie-Hellman shared secret, and verify a signature.
RFC 7296 2.6 answers the first two with cookies: above a threshold of half-open SAs,
a responder keeps no state and does no DH for an initiator until it echoes a COOKIE
that proves it receives at its claimed address. This module makes that answer cheap
(``cookie_fast_path``: no full parse, no log line, one hash, one small datagram),
answers each source address at most a few times a second (sending is what costs most:
a flood from a few hundred addresses is then read and dropped, so the kernel does not
drop a real initiator's request before pyike sees it), bounds the tables that remain,
and limits signature checks per source address (a flood with real addresses passes
cookies).

Every refusal is counted in ``Guard.counters`` and logged at most once a minute per kind
(``Guard.note``), so a flood cannot fill the journal.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import struct
from collections import Counter
from dataclasses import dataclass

from pyike.ike.common import Addr, IPAddress
from pyike.limits import Limits
from pyike.registry import ExchangeType, HeaderFlag, NotifyType, PayloadType

log = logging.getLogger("pyike.ike")

_HDR = struct.Struct("!8s8sBBBBII")
_GENERIC = struct.Struct("!BBH")
_NOTIFY_FIXED = struct.Struct("!BBH")  # protocol, SPI size, type (3.10)
HEADER_LEN = 28
COOKIE_NOTIFY = int(NotifyType.COOKIE)
# Plain ints: enum operators cost microseconds, and this runs for every flood datagram.
_IKE_SA_INIT = int(ExchangeType.IKE_SA_INIT)
_RESPONSE = int(HeaderFlag.RESPONSE)
_NONE, _NONCE, _NOTIFY = int(PayloadType.NONE), int(PayloadType.NONCE), int(PayloadType.NOTIFY)
LOG_WINDOW_S = 60.0
MAX_BUCKETS = 4096  # per-source rate state kept; beyond, the table starts afresh
# Sources refused this many COOKIE answers within one HEAVY_WINDOW_S (about 50 times
# their budget) are flooding: the driver has the kernel drop their datagrams to the
# main port-500 socket for BLOCK_S (a socket filter), so that reading them no longer
# crowds out a real initiator's first IKE_SA_INIT (which the kernel would otherwise
# drop from a full buffer). At most MAX_BLOCKED (classic BPF jumps are 8 bits).
HEAVY_REFUSALS = 25
HEAVY_WINDOW_S = 0.25
BLOCK_S = 10.0
MAX_BLOCKED = 240


@dataclass(frozen=True, slots=True)
class InitScan:
    """What the cookie check needs from an IKE_SA_INIT request, found by walking the
    generic payload headers only (3.2), without decoding any payload body."""

    spi_i: bytes
    nonce: bytes
    cookie: bytes | None  # the COOKIE notify's data, if the first payload is one (2.6)


def scan_init_request(data: bytes) -> InitScan | None:
    """The SPIi, Ni and COOKIE of a well-framed IKE_SA_INIT request; None otherwise
    (the full parser then decides what is wrong with it)."""
    if len(data) < HEADER_LEN:
        return None
    spi_i, _spi_r, nxt, version, exchange, flags, message_id, length = _HDR.unpack_from(data)
    if (
        exchange != _IKE_SA_INIT
        or flags & _RESPONSE
        or version >> 4 != 2
        or length != len(data)
        or message_id != 0
    ):
        return None
    off, nonce, cookie, first = HEADER_LEN, None, None, True
    for _ in range(64):  # bounded walk: no real IKE_SA_INIT has more payloads
        if nxt == _NONE:
            break
        if off + 4 > length:
            return None
        following, _critical, plen = _GENERIC.unpack_from(data, off)
        if plen < 4 or off + plen > length:
            return None
        if nxt == _NONCE:
            nonce = data[off + 4 : off + plen]
            break  # the COOKIE, if any, came first (2.6): nothing after Ni matters here
        if nxt == _NOTIFY and first and plen >= 8:
            _proto, spi_size, ntype = _NOTIFY_FIXED.unpack_from(data, off + 4)
            if ntype == COOKIE_NOTIFY:
                cookie = data[off + 8 + spi_size : off + plen]
        first = False
        nxt, off = following, off + plen
    if nonce is None or not 16 <= len(nonce) <= 256:  # 2.10: 16..256 octets
        return None
    return InitScan(spi_i, nonce, cookie)


def cookie_value(secret: bytes, nonce: bytes, src: IPAddress, spi_i: bytes) -> bytes:
    """2.6: <VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>)."""
    return b"\x00" + hashlib.sha256(nonce + src.packed + spi_i + secret).digest()


def _cookie_reply_middle(cookie_len: int) -> bytes:
    """The octets of HDR(SPIi, 0), N(COOKIE) between SPIi and the cookie (3.1, 3.10)."""
    notify_len = 8 + cookie_len
    return (
        _HDR.pack(
            bytes(8),
            bytes(8),
            PayloadType.NOTIFY,
            0x20,
            ExchangeType.IKE_SA_INIT,
            HeaderFlag.RESPONSE,
            0,
            HEADER_LEN + notify_len,
        )[8:]
        + _GENERIC.pack(PayloadType.NONE, 0, notify_len)
        + _NOTIFY_FIXED.pack(0, 0, COOKIE_NOTIFY)
    )


_OUR_COOKIE_MIDDLE = _cookie_reply_middle(33)  # cookie_value(): 1 + SHA-256


def cookie_reply(spi_i: bytes, cookie: bytes) -> bytes:
    """HDR(SPIi, 0), N(COOKIE): the responder's stateless answer (2.6, figure in 1.2)."""
    middle = _OUR_COOKIE_MIDDLE if len(cookie) == 33 else _cookie_reply_middle(len(cookie))
    return spi_i + middle + cookie


class Guard:
    """Counters, rate-limited logging and per-source budgets of one Endpoint."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.counters: Counter[str] = Counter()
        self._logged: dict[str, tuple[float, int]] = {}  # kind -> (window start, lines)
        self._suppressed: Counter[str] = Counter()
        # Token buckets keyed by the address as an int: ipaddress's own hash costs a
        # microsecond, paid twice per flood datagram. (An IPv4 address and the IPv6
        # address ::a.b.c.d share a bucket; nobody sends from the latter.)
        self._auth_buckets: dict[int, tuple[float, float]] = {}  # tokens, at
        self._cookie_buckets: dict[int, tuple[float, float]] = {}
        self._refused: Counter[int] = Counter()  # COOKIE answers refused, this window
        self._window_start = 0.0
        self.blocked: dict[int, float] = {}  # IPv4 address as int -> blocked until

    def note(
        self, kind: str, now: float, fmt: str, *args: object, level: int = logging.WARNING
    ) -> None:
        """Count one ``kind`` event; log it unless this minute's lines for it are used."""
        self.counters[kind] += 1
        start, lines = self._logged.get(kind, (now, 0))
        if now - start >= LOG_WINDOW_S:
            start, lines = now, 0
        if lines >= self.limits.log_repeats_per_minute:
            self._suppressed[kind] += 1
            self._logged[kind] = (start, lines)
            return
        more = self._suppressed.pop(kind, 0)
        suffix = f" ({more} more like this in the last minute)" if more else ""
        log.log(level, fmt + suffix, *args)
        self._logged[kind] = (start, lines + 1)

    def cookie_fast_path(self, data: bytes, src: Addr, secret: bytes, now: float) -> bytes | None:
        """Under load (2.6): the COOKIE answer to a request without the right cookie, or
        None when the request must go on to the full parser (it has the right cookie,
        or it is not a well-framed IKE_SA_INIT request), or ``b""``: drop it unanswered,
        its source had its share of answers this second."""
        # Only a request whose first payload is a Notify can carry a COOKIE (2.6): for
        # the rest the per-source budget is checked first, the cheapest refusal.
        if data[16] != _NOTIFY and not self._may_answer(src, now):
            return b""
        scan = scan_init_request(data)
        if scan is None:
            return None
        expected = cookie_value(secret, scan.nonce, src[0], scan.spi_i)
        if scan.cookie is not None:
            if hmac.compare_digest(scan.cookie, expected):
                return None
            if not self._may_answer(src, now):
                return b""
        self.note(
            "cookie_sent",
            now,
            "under load: answering IKE_SA_INIT with a COOKIE (2.6), e.g. to [%s]:%d",
            src[0],
            src[1],
        )
        return cookie_reply(scan.spi_i, expected)

    def _may_answer(self, src: Addr, now: float) -> bool:
        """Whether ``src`` may have one more COOKIE answer this second."""
        if _take(
            self._cookie_buckets,
            int(src[0]),
            self.limits.cookies_per_source_per_s,
            self.limits.cookie_burst,
            now,
        ):
            return True
        if len(self._refused) < MAX_BUCKETS:
            self._refused[int(src[0])] += 1
        self.note(
            "cookie_limited",
            now,
            "under load: not answering [%s] more than %g times a second",
            src[0],
            self.limits.cookies_per_source_per_s,
        )
        return False

    def flooding_sources(self, now: float) -> frozenset[int] | None:
        """The IPv4 sources (as ints) whose datagrams the kernel should drop now, or
        None when that set has not changed since the last call. Called by the driver
        after each read batch; cheap when nothing is due."""
        if now - self._window_start < HEAVY_WINDOW_S:
            return None
        self._window_start = now
        before = set(self.blocked)
        for src, n in self._refused.items():
            if n >= HEAVY_REFUSALS and src < 1 << 32:
                self.blocked[src] = now + BLOCK_S
        self._refused.clear()
        for src in [a for a, until in self.blocked.items() if until <= now]:
            del self.blocked[src]
        if len(self.blocked) > MAX_BLOCKED:  # keep the newest
            newest = sorted(self.blocked.items(), key=lambda kv: kv[1])[-MAX_BLOCKED:]
            self.blocked = dict(newest)
        if set(self.blocked) == before:
            return None
        if len(self.blocked) > len(before):
            self.note(
                "flood_blocked",
                now,
                "under a flood: the kernel drops IKE_SA_INIT from %d sources that exceeded "
                "their COOKIE budget %d-fold (each for %g s)",
                len(self.blocked),
                int(HEAVY_REFUSALS / HEAVY_WINDOW_S / self.limits.cookies_per_source_per_s),
                BLOCK_S,
            )
        return frozenset(self.blocked)

    def allow_auth(self, src: IPAddress, now: float) -> bool:
        """A token for one signature verification from ``src`` (bucket per address)."""
        return _take(
            self._auth_buckets,
            int(src),
            self.limits.auth_per_source_per_s,
            self.limits.auth_burst,
            now,
        )


def _take(
    buckets: dict[int, tuple[float, float]],
    src: int,
    rate: float,
    burst: int,
    now: float,
) -> bool:
    """One token from ``src``'s bucket (``rate`` a second, up to ``burst``), if it has
    one. The table is bounded: beyond MAX_BUCKETS sources it starts afresh."""
    entry = buckets.get(src)
    if entry is None:
        if len(buckets) >= MAX_BUCKETS:
            buckets.clear()
        tokens = float(burst)
    else:
        tokens = min(float(burst), entry[0] + (now - entry[1]) * rate)
    if tokens < 1.0:
        buckets[src] = (tokens, now)
        return False
    buckets[src] = (tokens - 1.0, now)
    return True
