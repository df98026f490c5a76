"""The thin driver: sockets, timers and signals around the sans-IO core.

Everything protocol-related is decided in :mod:`pyike.ike`; this module only
moves datagrams between UDP sockets and an :class:`~pyike.ike.Endpoint`,
keeps one timer armed at the endpoint's next deadline, and turns signals into
API calls (SIGHUP reload, SIGTERM/SIGINT orderly shutdown with DELETEs).

Sockets: UDP 500 and 4500, IPv4 and IPv6, bound to the wildcard address with
IP_PKTINFO / IPV6_RECVPKTINFO so that the core learns which local address a
datagram arrived on (it needs it for NAT detection and replies), and replies
leave from that same address.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
import errno
import functools
import logging
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

from pyike import offload, wire
from pyike.ike import Addr, Endpoint, Event, Transmit
from pyike.registry import ExchangeType

log = logging.getLogger("pyike.driver")

NON_ESP_MARKER = b"\x00\x00\x00\x00"  # RFC 3948 2.2


class NattKind(enum.Enum):
    """What a datagram on port 4500 is (RFC 3948 2.2, 2.3)."""

    ESP = "esp"  # a non-zero SPI, and at least SPI + sequence number
    IKE = "ike"  # behind the 4-octet non-ESP marker
    OTHER = "other"  # a NAT-T keepalive (one 0xFF octet) or a runt: ignored


ESP, IKE = NattKind.ESP, NattKind.IKE


def natt_kind(d: bytes | memoryview) -> NattKind:
    """Sort one port-4500 datagram (every one goes through here: kept to two tests)."""
    if d[:4] == NON_ESP_MARKER:
        return IKE
    return ESP if len(d) >= 8 else NattKind.OTHER


NATT_KEEPALIVE = b"\xff"  # RFC 3948 2.3
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_IN_PKTINFO = struct.Struct("=I4s4s")  # ifindex, spec_dst, addr
_IN6_PKTINFO = struct.Struct("=16sI")  # addr, ifindex
RECV_BUFFER = 4 * 1024 * 1024  # the interop notes: small buffers lose IKE under load
# One receive: a whole UDP datagram, or with GRO up to 64 KiB of coalesced ones.
RECV_SIZE = 65536
RECV_BATCH = 64  # receives per wake-up: bounded so one busy socket cannot starve timers
# ESP datagrams handed to the data plane at once: enough for one full merged TUN write
# (pyike.offload.COALESCE_MAX_SEGMENTS), small enough to keep latency and memory low.
ESP_BATCH = 64


@dataclass(slots=True)
class UdpSocket:
    sock: socket.socket
    family: int
    port: int


def open_udp(
    family: int, port: int, bind: str | None = None, *, reuseport: bool = False
) -> UdpSocket:
    """A non-blocking UDP socket with packet info enabled, ready for IKE/ESP."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # FORCE (root) may exceed net.core.[rw]mem_max, whose defaults are too small
        # for a data plane burst; unprivileged, the capped value is still better.
        for force, opt in (
            (offload.SO_RCVBUFFORCE, socket.SO_RCVBUF),
            (offload.SO_SNDBUFFORCE, socket.SO_SNDBUF),
        ):
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, RECV_BUFFER)
            except OSError:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, opt, RECV_BUFFER)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
            sock.bind((bind or "::", port))
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            sock.bind((bind or "0.0.0.0", port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return UdpSocket(sock, family, port)


# Classic BPF for SO_ATTACH_REUSEPORT_CBPF on port 500 (ip(7), socket(7)): the program
# sees the UDP payload and returns the index of the socket in the reuseport group.
# An IKE message whose first payload is a Notify (next payload 41 at octet 16 of the
# header, RFC 7296 3.1) goes to socket 1: that is how an initiator that echoes a COOKIE
# (2.6) sends its IKE_SA_INIT, and how stateless error answers come. Everything else
# goes to socket 0. Under a flood socket 0's buffer overflows, socket 1's does not, and
# the driver serves socket 1 first: a real initiator that got a cookie gets in.
_BPF_LD_B_ABS, _BPF_JEQ_K, _BPF_RET_K = 0x30, 0x15, 0x06
_STEER_COOKIES = [
    (_BPF_LD_B_ABS, 0, 0, 16),  # A = payload[16] (the IKE header's Next Payload)
    (_BPF_JEQ_K, 0, 1, 41),  # A == NOTIFY ? fall through : skip one
    (_BPF_RET_K, 0, 0, 1),  # socket 1: the priority socket
    (_BPF_RET_K, 0, 0, 0),  # socket 0
]
SO_ATTACH_REUSEPORT_CBPF = 51  # not in Python's socket module
SO_ATTACH_FILTER, SO_DETACH_FILTER = 26, 27
_BPF_LD_W_ABS = 0x20
_SKF_NET_OFF = -0x100000  # linux/filter.h: offsets from the network header


def _attach_bpf(s: UdpSocket, option: int, prog: list[tuple[int, int, int, int]]) -> None:
    """setsockopt(``option``) with a classic BPF program: a struct sock_fprog pointing
    at the struct sock_filter array (linux/filter.h), kept alive for the call."""
    buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *insn) for insn in prog))
    fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
    s.sock.setsockopt(socket.SOL_SOCKET, option, fprog)


def blocklist_program(sources: Iterable[int]) -> list[tuple[int, int, int, int]]:
    """A classic BPF socket filter (socket(7) SO_ATTACH_FILTER) for an IPv4 UDP socket:
    drop datagrams from ``sources`` (IPv4 addresses as ints, at most 255), accept the
    rest. The source address is at octet 12 of the IPv4 header (RFC 791)."""
    addrs = sorted(sources)
    n = len(addrs)
    if n > 255:
        raise ValueError("at most 255 sources: a classic BPF jump is 8 bits")
    prog = [(_BPF_LD_W_ABS, 0, 0, (_SKF_NET_OFF + 12) & 0xFFFFFFFF)]  # A = source
    for i, a in enumerate(addrs):
        prog.append((_BPF_JEQ_K, n - i, 0, a))  # A == a ? to the drop at the end
    prog.append((_BPF_RET_K, 0, 0, 0xFFFFFFFF))  # accept whole
    prog.append((_BPF_RET_K, 0, 0, 0))  # drop
    return prog


def attach_blocklist(s: UdpSocket, sources: Iterable[int]) -> bool:
    """Have the kernel drop ``s``'s datagrams from ``sources`` (none: the filter goes)."""
    try:
        if not sources:
            s.sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
            return True
        _attach_bpf(s, SO_ATTACH_FILTER, blocklist_program(sources))
        return True
    except OSError as e:
        if e.errno == errno.ENOENT:  # detaching when no filter is attached
            return True
        _log_once("blocklist", "socket filter refused by the kernel (%s)", e.strerror)
        return False


# A plain int: socket.MSG_TRUNC is an IntFlag, and `flags & IntFlag` builds an enum member
# (about a microsecond) for every datagram received.
_MSG_TRUNC = int(socket.MSG_TRUNC)
PRIORITY_EVERY = 8  # while draining socket 0, look at the priority socket this often


def attach_cookie_steering(s: UdpSocket) -> bool:
    """Attach the steering program to ``s``'s reuseport group (logged once if refused)."""
    try:
        _attach_bpf(s, SO_ATTACH_REUSEPORT_CBPF, _STEER_COOKIES)
        return True
    except OSError as e:
        _log_once(
            "steer", "reuseport steering refused by the kernel (%s): one IKE socket", e.strerror
        )
        return False


def enable_gro(s: UdpSocket) -> bool:
    """Ask for UDP GRO (Linux 5.0+): one receive may return many ESP datagrams of a
    flow glued together; the driver splits them (pyike.offload.split_gro). Logged
    once and skipped where the kernel refuses."""
    try:
        s.sock.setsockopt(offload.SOL_UDP, offload.UDP_GRO, 1)
        return True
    except OSError as e:
        _log_once("gro", "UDP GRO refused by the kernel (%s): one datagram per receive", e.strerror)
        return False


_logged_once: set[str] = set()


def _log_once(key: str, fmt: str, *args: object) -> None:
    if key not in _logged_once:
        _logged_once.add(key)
        log.info(fmt, *args)


# Address objects from the socket API's text and packed forms, and back: a flood from a
# few thousand sources (spoofed or not) then costs a dict look-up per datagram, not a
# parse (ipaddress is pure Python). Bounded LRU caches.
_ip_from_text = functools.lru_cache(maxsize=4096)(lambda text: ip_address(text.split("%")[0]))
_ipv4_from_packed = functools.lru_cache(maxsize=256)(IPv4Address)
_ipv6_from_packed = functools.lru_cache(maxsize=256)(IPv6Address)
_text_of = functools.lru_cache(maxsize=4096)(str)


@functools.lru_cache(maxsize=256)
def _pktinfo(family: int, local: IPv4Address | IPv6Address) -> list[tuple[int, int, bytes]]:
    """The ancillary data that sends from ``local`` (RFC 3542 / ip(7) packet info)."""
    if family == socket.AF_INET6:
        return [(socket.IPPROTO_IPV6, IPV6_PKTINFO, _IN6_PKTINFO.pack(local.packed, 0))]
    return [(socket.IPPROTO_IP, IP_PKTINFO, _IN_PKTINFO.pack(0, local.packed, b"\0" * 4))]


def datagram_addresses(s: UdpSocket, anc: list, src: tuple) -> tuple[Addr, Addr]:
    """(source, local address it arrived on) of a datagram, from recvmsg()'s results."""
    local_ip: IPv4Address | IPv6Address | None = None
    for level, kind, value in anc:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(value) >= _IN_PKTINFO.size:
            local_ip = _ipv4_from_packed(_IN_PKTINFO.unpack_from(value)[1])
        elif (
            level == socket.IPPROTO_IPV6
            and kind == IPV6_PKTINFO
            and len(value) >= _IN6_PKTINFO.size
        ):
            local_ip = _ipv6_from_packed(_IN6_PKTINFO.unpack_from(value)[0])
    src_ip = _ip_from_text(src[0])
    if local_ip is None:
        local_ip = ip_address(s.sock.getsockname()[0].split("%")[0])
    return (src_ip, src[1]), (local_ip, s.port)


def send_datagram(s: UdpSocket, data: bytes, local: Addr, remote: Addr) -> None:
    """Send from a chosen local address (packet info), to ``remote``."""
    try:
        s.sock.sendmsg([data], _pktinfo(s.family, local[0]), 0, (_text_of(remote[0]), remote[1]))
    except OSError as e:
        if e.errno == errno.EINVAL and not local[0].is_unspecified:
            # Our address went away (dynamic IP): let the kernel choose one.
            s.sock.sendto(data, (str(remote[0]), remote[1]))
        else:
            raise


def describe_ike(data: bytes) -> str:
    """``IKE_AUTH req 1`` for a log line, from the header alone."""
    try:
        h = wire.Header.parse(data)
    except wire.WireError:
        return f"{len(data)} bytes (unparseable)"
    kind = "res" if h.is_response else "req"
    return f"{ExchangeType.name_of(h.exchange)} {kind} {h.message_id}"


class Driver:
    """Runs an Endpoint on real sockets until stopped.

    ``on_event`` sees every core event (after the driver's own handling);
    ``on_esp`` receives ESP datagrams from port 4500 (the data plane hooks in
    there): a list of datagrams of one receive batch from one source, in order, and
    that source's socket address; ``on_reload`` is called on SIGHUP.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        ports: tuple[int, int] = (500, 4500),
        families: tuple[int, ...] = (socket.AF_INET, socket.AF_INET6),
        on_event: Callable[[Event], None] | None = None,
        on_esp: Callable[[list[bytes], object], None] | None = None,
        on_reload: Callable[[], object] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.ports = ports
        self.families = families
        self.on_event = on_event
        self.on_esp = on_esp
        self.on_reload = on_reload
        self.sockets: dict[tuple[int, int], UdpSocket] = {}
        # Port 500's second socket per family, fed by attach_cookie_steering.
        self.priority: dict[int, UdpSocket] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._block_timer = False  # a _block_tick is scheduled
        self._timer: asyncio.TimerHandle | None = None
        self._stopping: asyncio.Event | None = None
        self._stop_deadline = 0.0
        # Counting hooks (pyike.status): every IKE message in/out; the stop starting.
        self.on_ike_message: Callable[[bytes, bool], None] | None = None
        self.on_stop: Callable[[], object] | None = None

    @property
    def stopping(self) -> bool:
        return bool(self._stop_deadline)

    @staticmethod
    def now() -> float:
        return time.monotonic()

    # ------------------------------------------------------------------ sockets

    def open(self) -> None:
        for family in self.families:
            for port in self.ports:
                try:
                    if port == self.ports[0]:
                        self._open_steered(family, port)
                    else:
                        self.sockets[(family, port)] = open_udp(family, port)
                        enable_gro(self.sockets[(family, port)])
                except OSError as e:
                    name = "IPv6" if family == socket.AF_INET6 else "IPv4"
                    if family == socket.AF_INET6 and e.errno == errno.EAFNOSUPPORT:
                        log.info("no IPv6 on this host; not listening on [::]:%d", port)
                        continue
                    raise OSError(
                        e.errno, f"cannot listen on {name} UDP port {port}: {e.strerror}"
                    ) from e
        for s in self.sockets.values():
            log.debug(
                "listening on %s UDP port %d",
                "IPv6" if s.family == socket.AF_INET6 else "IPv4",
                s.port,
            )

    def _open_steered(self, family: int, port: int) -> None:
        """Port 500 as a reuseport pair: socket 0 for everything, socket 1 for the
        Notify-first messages the steering program picks (see _STEER_COOKIES)."""
        main = open_udp(family, port, reuseport=True)
        self.sockets[(family, port)] = main
        if not attach_cookie_steering(main):
            return
        try:
            self.priority[family] = open_udp(family, port, reuseport=True)
        except OSError as e:
            _log_once("steer-open", "no priority IKE socket (%s)", e.strerror)

    def close(self) -> None:
        for s in [*self.sockets.values(), *self.priority.values()]:
            if self._loop is not None:
                self._loop.remove_reader(s.sock.fileno())
            s.sock.close()
        self.sockets.clear()
        self.priority.clear()

    def socket_for(self, local: Addr) -> UdpSocket | None:
        family = socket.AF_INET6 if local[0].version == 6 else socket.AF_INET
        return self.sockets.get((family, local[1]))

    # ------------------------------------------------------------------ data flow

    def _readable(self, s: UdpSocket) -> None:
        natt = s.port == self.ports[1]
        priority = self.priority.get(s.family) if s.port == self.ports[0] else None
        if priority is s:
            priority = None
        esp: list[bytes] = []  # ESP datagrams in arrival order, for the data plane
        esp_src: object = None
        for n in range(RECV_BATCH):
            if priority is not None and n % PRIORITY_EVERY == 0:
                self._drain(priority)
            try:
                data, anc, flags, src = s.sock.recvmsg(RECV_SIZE, 256)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:  # e.g. a queued ICMP error: not fatal for the socket
                log.debug("receive on UDP %d: %s", s.port, e.strerror)
                break
            if flags & _MSG_TRUNC:
                log.warning("dropped a datagram larger than %d bytes on UDP %d", RECV_SIZE, s.port)
                continue
            if not natt:
                self._receive_ike(s, data, anc, src)
                continue
            seg = offload.gro_segment_size(anc)  # > 0: several datagrams in `data`
            for d in offload.split_gro(data, seg) if seg else (data,):
                kind = natt_kind(d)
                if kind is ESP:
                    if src != esp_src and esp:
                        self._deliver_esp(esp, esp_src)
                        esp = []
                    esp_src = src
                    esp.append(d)  # type: ignore[arg-type]  # bytes | memoryview (perf)
                    if len(esp) >= ESP_BATCH:
                        self._deliver_esp(esp, esp_src)
                        esp = []
                elif kind is IKE:  # keep the order with the ESP around it
                    if esp:
                        self._deliver_esp(esp, esp_src)
                        esp = []
                    self._receive_ike(s, bytes(d[4:]), anc, src)
                # else a NAT-T keepalive (RFC 3948 2.3) or a runt: ignored
        if esp:
            self._deliver_esp(esp, esp_src)
        if not natt:
            self._refresh_blocklist()
        self.pump()

    def _refresh_blocklist(self) -> None:
        """Install the guard's set of flooding sources as the kernel's drop list on the
        main IPv4 port-500 socket (guard.flooding_sources). While it is not empty this
        runs every second from a timer too: the kernel now drops those sources'
        datagrams, so their blocks must expire without a datagram to wake us."""
        blocked = self.endpoint.guard.flooding_sources(self.now())
        if blocked is not None:
            main = self.sockets.get((socket.AF_INET, self.ports[0]))
            if main is not None:
                attach_blocklist(main, blocked)
        if self.endpoint.guard.blocked and self._loop is not None and not self._block_timer:
            self._block_timer = True
            self._loop.call_later(1.0, self._block_tick)

    def _block_tick(self) -> None:
        self._block_timer = False
        self._refresh_blocklist()

    def _drain(self, s: UdpSocket) -> None:
        """Whatever waits on the priority socket, now (it only carries IKE)."""
        for _ in range(RECV_BATCH):
            try:
                data, anc, flags, src = s.sock.recvmsg(RECV_SIZE, 256)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if not flags & _MSG_TRUNC:
                self._receive_ike(s, data, anc, src)

    def _deliver_esp(self, datagrams: list[bytes], src: object) -> None:
        if self.on_esp is not None:
            self.on_esp(datagrams, src)

    def _receive_ike(self, s: UdpSocket, data: bytes, anc: list, src: tuple) -> None:
        peer, local = datagram_addresses(s, anc, src)
        if self.on_ike_message is not None:
            self.on_ike_message(data, False)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "recv %s peer [%s]:%d local [%s]:%d, %d bytes",
                describe_ike(data),
                peer[0],
                peer[1],
                local[0],
                local[1],
                len(data),
            )
        self.endpoint.receive(data, peer, local, self.now())

    def send(self, t: Transmit) -> None:
        s = self.socket_for(t.local)
        if s is None:
            log.warning(
                "no socket for local [%s]:%d; dropping %s",
                t.local[0],
                t.local[1],
                describe_ike(t.data),
            )
            return
        if self.on_ike_message is not None:
            self.on_ike_message(t.data, True)
        data = NON_ESP_MARKER + t.data if t.local[1] == self.ports[1] else t.data
        try:
            send_datagram(s, data, t.local, t.remote)
        except OSError as e:
            # Network down or address gone: the core retransmits, nothing is lost.
            log.warning("send to [%s]:%d failed: %s", t.remote[0], t.remote[1], e.strerror)

    def pump(self) -> None:
        """Send what the core queued, hand events out, re-arm the timer."""
        ep = self.endpoint
        for _ in range(1000):  # events may queue more output; bounded anyway
            transmits = ep.datagrams_to_send()
            for t in transmits:
                self.send(t)
            event = ep.next_event()
            if event is not None and self.on_event is not None:
                self.on_event(event)
            if not transmits and event is None:
                break
        self._arm_timer()

    def _arm_timer(self) -> None:
        if self._loop is None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.endpoint.get_timer()
        if deadline is not None:
            delay = max(0.0, deadline - self.now())
            self._timer = self._loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.endpoint.handle_timer(self.now())
        self.pump()
        if (
            self._stopping is not None
            and self._stopping.is_set() is False
            and self._stop_deadline
            and (not self.endpoint.sas or self.now() >= self._stop_deadline)
        ):
            self._stopping.set()

    # ------------------------------------------------------------------ run

    def stop(self, reason: str = "shutting down", grace: float = 3.0) -> None:
        """Send DELETEs for every IKE SA, then stop once answered (or after ``grace``)."""
        if self._stopping is None or self._stop_deadline:
            return
        if self.on_stop is not None:
            self.on_stop()
        log.info("%s: deleting %d IKE SA(s)", reason, len(self.endpoint.sas))
        self.endpoint.close_all(self.now(), reason)
        self._stop_deadline = self.now() + grace
        self.pump()
        assert self._loop is not None
        self._loop.call_later(grace, self._stopping.set)
        self._loop.call_soon(self._check_stopped)

    def _check_stopped(self) -> None:
        if self._stopping is None:
            return
        if not self.endpoint.sas:
            self._stopping.set()
        elif not self._stopping.is_set():
            assert self._loop is not None
            self._loop.call_later(0.05, self._check_stopped)

    async def run(self, start: Callable[[], None] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        if not self.sockets:
            self.open()
        for s in [*self.sockets.values(), *self.priority.values()]:
            self._loop.add_reader(s.sock.fileno(), self._readable, s)
        self._loop.add_signal_handler(signal.SIGTERM, self.stop, "SIGTERM")
        self._loop.add_signal_handler(signal.SIGINT, self.stop, "SIGINT")
        if self.on_reload is not None:
            self._loop.add_signal_handler(signal.SIGHUP, self.on_reload)
        try:
            if start is not None:
                start()
            self.pump()
            await self._stopping.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                self._loop.remove_signal_handler(sig)
            if self._timer is not None:
                self._timer.cancel()
            self.close()
