"""The data plane: a TUN device on one side, ESP in UDP 4500 on the other.

Packets the kernel routes into the TUN device are matched to a Child SA by
the SPD (their addresses, protocol and ports against the negotiated traffic
selectors), sealed by the sans-IO ESP codec (pyike.esp) and sent from the
same UDP 4500 socket IKE uses (RFC 3948). ESP datagrams arriving there are
opened by the SAD (SPI lookup, anti-replay, ICV, selector check) and written
to the TUN device.

The TUN device gets the local flow addresses of the policies (what the guide
puts on OpenBSD's vether0, e.g. 2001:db8:c1da::1) and a route for every
remote selector. pyike's ESP always runs over UDP: the IKE core requests UDP
encapsulation (as iked -t does), since a userspace program cannot receive
raw ESP (IP protocol 50) without raw sockets.

Speed (docs: tools/bench_tunnel.py measures it): a packet's cost is its system
calls, so the hot paths below move many packets per call where Linux allows it
(pyike.offload has the arithmetic): ESP goes out as UDP GSO sends (one sendmsg()
per run of equal-sized packets), comes in as UDP GRO receives (the driver splits
them), and decrypted TCP segments of one flow (and equal-sized UDP datagrams of
one flow) are merged into one GSO write to the TUN device (IFF_VNET_HDR). Each
falls back to one packet per call, logged once, where the kernel refuses it;
PYIKE_OFFLOAD=0 turns all of them off.
Cipher objects are built once per SA (pyike.esp), nothing is looked up by name
per packet that can be bound before the loop.

Where a packet is encrypted: _tun_readable() -> OutboundSa.seal(); decrypted:
on_esp() -> Sad.open() -> InboundSa.open().
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import ip_network
from typing import TYPE_CHECKING, Any

from pyroute2 import IPRoute, NetlinkError

from pyike import esp, offload
from pyike.ike import Addr, ChildSaCreated, ChildSaDeleted, ChildSaInfo, Event, PeerMoved, mobike
from pyike.registry import EncrId, IntegId

if TYPE_CHECKING:
    from pyike.daemon import Daemon

# The data plane's collaborators, given to its constructor:
# which UDP socket sends from a local address (the driver's, shared with IKE: RFC 3948)
SocketFor = Callable[[Addr], socket.socket | None]
# authenticated ESP arrived on this inbound SPI at this time: the peer is alive
NoteAlive = Callable[[int, float], None]

log = logging.getLogger("pyike.dataplane")

DEFAULT_TUN = "pyike0"
PATH_MTU = 1500
TUN_BATCH = 64  # packets per wake-up: bounded so IKE and timers keep their turn
TUN_READ = 65535 + offload.VNET_HDR_LEN
# Refusals of a GSO send that mean "this kernel/device cannot", not "this packet failed".
_GSO_REFUSED = frozenset({errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP})
LOG_EVERY = 10.0  # seconds between repeated drop log lines
# Packets the kernel may queue for us in the TUN device (its default is 500). The TUN
# driver drops, never pushes back, when that queue is full, and a sender's TCP sees
# each drop as a loss. Measured with one iperf3 stream (tools/bench_tunnel.py): 500
# dropped ~1.4 % of the segments, 1000 ~0.2 %, 3000 none; 1000 (Ethernet's default)
# keeps the worst-case queueing delay near 20 ms at 600 Mbit/s.
TUN_TXQUEUELEN = 1000


class DataPlaneError(Exception):
    """The TUN device or its addresses/routes could not be set up."""


@dataclass(slots=True)
class _Tx:
    """One outbound SA with where its packets go."""

    sa: esp.OutboundSa
    child: ChildSaInfo  # replaced when the peer moves (PeerMoved)
    sock: socket.socket
    addr: tuple[str, int]
    remote: object  # the child's remote Addr the cached ``addr`` was built from


class DataPlane:
    """Moves packets between the TUN device and ESP-in-UDP for a Daemon.

    ``socket_for(local)`` gives the UDP socket for a Child SA's local address;
    ``note_alive(spi_in, now)`` is told, once per receive batch and SA, that
    authenticated ESP arrived (the IKE SA's liveness check counts it as a sign of
    life, so an SA carrying traffic needs no probes; RFC 7296 2.4).
    """

    def __init__(
        self, *, socket_for: SocketFor, note_alive: NoteAlive, tun_name: str = DEFAULT_TUN
    ) -> None:
        self.socket_for = socket_for
        self.note_alive = note_alive
        self.tun_name = tun_name
        self.tun: Any = None  # pytun.TunTapDevice once open (pytun has no type hints)
        self.fd = -1
        self.mtu = 0
        self.spd = esp.Spd()
        self.sad = esp.Sad()
        self._tx: dict[int, _Tx] = {}  # outbound SA by its SPI
        # Inbound SPIs of the Child SAs that moved packets (either way) since the last
        # take_used(): the byte-lifetime check looks at these only.
        self._used: set[int] = set()
        # Per peer (IKE identity): the selectors of all its Child SAs (esp.PeerFlows),
        # and each inbound SPI's entry there, removed with its SA.
        self._peer_flows: dict[object, esp.PeerFlows] = {}
        self._flow_keys: dict[int, tuple[object, object]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._routes: set[tuple[str, int]] = set()
        self._addresses: set[tuple[str, int]] = set()
        self.counters = {
            "tun_in": 0,
            "tun_out": 0,
            "no_sa": 0,
            "link_local": 0,
            "esp_drop": 0,
            "send_err": 0,
            "udp_sends": 0,
            "gso_sends": 0,
            "tun_writes": 0,
            "merged_writes": 0,
        }
        self._last_log: dict[str, float] = {}
        # Offloads (module docstring); each is cleared for good at the kernel's first no.
        self.offload = os.environ.get("PYIKE_OFFLOAD", "1") != "0"
        self.vnet = False  # TUN frames carry a virtio-net header
        self.gso = self.offload  # UDP_SEGMENT sends
        self.merge = self.offload  # GSO writes of merged TCP segments to the TUN
        self.merge_udp = self.offload  # ... and of merged UDP datagrams (Linux 6.2)

    # ------------------------------------------------------------------ device

    def open(
        self,
        local_addresses: list,
        remote_networks: list,
        outer_family: int,
        sources: dict | None = None,
    ) -> None:
        """Create the TUN device, give it the local flow addresses and routes.

        ``sources`` (see :func:`route_sources`) gives a route its own source
        address; the others take the first local address of their family.

        Blocking (netlink): call it outside the event loop or in a thread, since
        pyroute2's synchronous IPRoute runs an asyncio loop of its own.
        """
        from pytun import IFF_NO_PI, IFF_TUN, IFF_VNET_HDR, Error, TunTapDevice

        if self.offload:
            try:
                self.tun = TunTapDevice(
                    name=self.tun_name, flags=IFF_TUN | IFF_NO_PI | IFF_VNET_HDR
                )
                self.vnet = True
            except Error as e:
                log.info(
                    "TUN %s: no virtio-net header (%s): one TUN write per packet", self.tun_name, e
                )
        if self.tun is None:
            try:
                self.tun = TunTapDevice(name=self.tun_name, flags=IFF_TUN | IFF_NO_PI)
            except Error as e:  # pytun's error: no /dev/net/tun, not root, name taken
                raise DataPlaneError(f"cannot create TUN device {self.tun_name}: {e}") from e
        self.fd = self.tun.fileno()
        os.set_blocking(self.fd, False)
        # Worst case among what we negotiate: CBC + HMAC-SHA2-512 has the most overhead.
        self.mtu = esp.tunnel_mtu(
            PATH_MTU,
            6 if outer_family == socket.AF_INET6 else 4,
            EncrId.AES_CBC,
            IntegId.HMAC_SHA2_512_256,
        )
        try:
            self._configure(local_addresses, remote_networks, sources or {})
        except (OSError, NetlinkError, DataPlaneError) as e:
            self.close()
            raise DataPlaneError(f"cannot configure {self.tun_name}: {e}") from e
        log.info(
            "TUN %s up, MTU %d, addresses %s, routes %s",
            self.tun_name,
            self.mtu,
            ", ".join(map(str, local_addresses)) or "none",
            ", ".join(map(str, remote_networks)) or "none",
        )

    def _configure(self, local_addresses: list, remote_networks: list, sources: dict) -> None:
        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=self.tun_name)[0]
            _netlink(
                f"set MTU {self.mtu} and up", ipr.link, "set", index=idx, mtu=self.mtu, state="up"
            )
            try:  # only a tuning: the device works without it
                _netlink(
                    f"set txqueuelen {TUN_TXQUEUELEN}",
                    ipr.link,
                    "set",
                    index=idx,
                    txqlen=TUN_TXQUEUELEN,
                )
            except DataPlaneError as e:
                log.info("TUN %s keeps the kernel's queue length: %s", self.tun_name, e)
            for a in local_addresses:
                # A TUN device is NOARP, so IPv6 skips DAD: the address is usable at once.
                prefix = 128 if a.version == 6 else 32
                _netlink(
                    f"add address {a}/{prefix}",
                    ipr.addr,
                    "add",
                    index=idx,
                    address=str(a),
                    prefixlen=prefix,
                )
                self._addresses.add((str(a), prefix))
            for net in remote_networks:
                src = next((str(a) for a in local_addresses if a.version == net.version), None)
                if net in sources:
                    src = str(sources[net])
                _netlink(
                    f"add route {net}",
                    ipr.route,
                    "replace",
                    dst=str(net),
                    oif=idx,
                    **({"prefsrc": src} if src else {}),
                )
                self._routes.add((str(net.network_address), net.prefixlen))

    def close(self) -> None:
        if self.tun is not None:  # the totals, once: drops are otherwise rate-limited
            c = self.counters
            log.info(
                "data plane: %d packets TUN->ESP in %d UDP sends (%d GSO), %d packets "
                "ESP->TUN in %d TUN writes (%d merged); %d without SA, %d ESP drops, "
                "%d send errors",
                c["tun_in"],
                c["udp_sends"],
                c["gso_sends"],
                c["tun_out"],
                c["tun_writes"],
                c["merged_writes"],
                c["no_sa"] + c["link_local"],  # the kernel's link-local ones have none either
                c["esp_drop"],
                c["send_err"],
            )
            log.info("data plane totals: %s", " ".join(f"{k}={v}" for k, v in self.stats().items()))
        if self._loop is not None and self.fd >= 0:
            self._loop.remove_reader(self.fd)
        if self.tun is not None:
            self.tun.close()  # the kernel removes its addresses and routes with it
            self.tun = None
            self.fd = -1

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.fd, self._tun_readable)

    # ------------------------------------------------------------------ SAs

    def on_event(self, event: Event) -> None:
        if isinstance(event, ChildSaCreated):
            self._add(event)
        elif isinstance(event, ChildSaDeleted):
            self._remove(event.child)
        elif isinstance(event, PeerMoved | mobike.IkeSaMoved):
            for c in event.children:
                tx = self._tx.get(c.spi_out)
                if tx is not None:
                    tx.child = c  # _send follows c.remote

    def _add(self, event: ChildSaCreated) -> None:
        c, s = event.child, event.child.suite
        peer = event.peer_id or c.remote[0]
        flows = self._peer_flows.setdefault(peer, esp.PeerFlows())
        self._flow_keys[c.spi_in] = (peer, flows.add(c.ts_local, c.ts_remote))
        if c.peer_ts_wider:
            log.info(
                "Child SA 0x%08x: the peer declared wider selectors (OpenIKED does): "
                "it also accepts traffic of our other Child SAs with this peer",
                c.spi_in,
            )
        inbound = esp.InboundSa(
            c.spi_in,
            s.encr,
            s.key_bits,
            s.integ,
            c.key_in[0],
            c.key_in[1],
            s.esn,
            local_ts=c.ts_local,
            remote_ts=c.ts_remote,
            peer_flows=flows if c.peer_ts_wider else None,
        )
        outbound = esp.OutboundSa(
            c.spi_out, s.encr, s.key_bits, s.integ, c.key_out[0], c.key_out[1], s.esn
        )
        sock = self.socket_for(c.local)
        if sock is None:
            log.error("no UDP %d socket for %s; Child SA unusable", c.local[1], c.remote[0])
            return
        self.sad.add(inbound)
        # New outbound SA first in the SPD: traffic moves to it at once; the old
        # one keeps receiving until the peer deletes it (RFC 7296 2.8).
        self.spd.add(outbound, c.ts_local, c.ts_remote)
        self._tx[c.spi_out] = _Tx(outbound, c, sock, (str(c.remote[0]), c.remote[1]), c.remote)

    def _remove(self, c: ChildSaInfo) -> None:
        peer, key = self._flow_keys.pop(c.spi_in, (None, None))
        if peer in self._peer_flows:
            self._peer_flows[peer].remove(key)  # type: ignore[arg-type]
        self.sad.remove(c.spi_in)
        tx = self._tx.pop(c.spi_out, None)
        if tx is not None:
            self.spd.remove(tx.sa)

    # ------------------------------------------------------------------ packets

    def _tun_readable(self) -> None:
        """Outbound: packets the kernel routed into the TUN -> SPD -> seal -> UDP."""
        fd, match, tx_by_spi, vnet = self.fd, self.spd.match, self._tx, self.vnet
        read, hdr_len = os.read, offload.VNET_HDR_LEN
        run_tx: _Tx | None = None
        run: list[bytes] = []  # sealed packets for run_tx, sent together at the end
        n = 0
        for n in range(1, TUN_BATCH + 1):  # n: reads that returned a packet
            try:
                frame = read(fd, TUN_READ)
            except (BlockingIOError, InterruptedError):
                n -= 1
                break
            except OSError as e:
                n -= 1
                self._rate_log("tun_read", f"TUN read failed: {e.strerror}")
                break
            if vnet:
                # Offloads are never enabled for reads (no TUNSETOFFLOAD), so the header
                # is all zero: a whole, checksummed packet follows. A view, not a copy:
                # seal() copies the packet once, with its trailer.
                if len(frame) > hdr_len and not frame[0] | frame[1]:
                    pkt: bytes | memoryview | None = memoryview(frame)[hdr_len:]
                else:
                    pkt = self._unoffload(frame)
                    if pkt is None:
                        continue
            else:
                pkt = frame
            sa = match(pkt)  # type: ignore[arg-type]  # RFC 4301 5.1: which Child SA's selectors cover it
            if sa is None:
                if _link_scope(pkt):  # type: ignore[arg-type]  # the kernel's own (router solicitations): never ours
                    self.counters["link_local"] += 1
                    continue
                self.counters["no_sa"] += 1
                self._rate_log(
                    "no_sa",
                    f"no Child SA for a packet from the TUN ({self.counters['no_sa']} so far)",
                )
                continue
            tx = tx_by_spi[sa.spi]
            try:
                data = sa.seal(pkt, 41 if pkt[0] >> 4 == 6 else 4)  # type: ignore[arg-type,index]  # encrypt: RFC 4303 3.3
            except esp.SequenceOverflow:
                self._rate_log("seq", f"SA 0x{sa.spi:08x} used up its sequence numbers")
                continue
            if tx is not run_tx:
                if run:
                    self._send(run_tx, run)  # type: ignore[arg-type]
                run_tx, run = tx, []
            run.append(data)
        self.counters["tun_in"] += n
        if run:
            self._send(run_tx, run)  # type: ignore[arg-type]

    def _unoffload(self, frame: bytes) -> bytes | None:
        """A TUN read whose virtio header is not zero: finish its checksum, or drop it."""
        if len(frame) <= offload.VNET_HDR_LEN:
            return None
        flags, gso_type, _hl, _gs, start, off = offload.VNET_HDR.unpack_from(frame)
        pkt = frame[offload.VNET_HDR_LEN :]
        if gso_type != offload.VNET_GSO_NONE:
            self._rate_log(
                "tun_gso", "TUN handed a GSO packet although no offload was enabled; dropped"
            )
            return None
        if flags & offload.VNET_F_NEEDS_CSUM:
            try:
                return offload.complete_checksum(pkt, start, off)
            except ValueError:
                return None
        return pkt

    def _send(self, tx: _Tx, packets: list[bytes]) -> None:
        """Send sealed ESP packets to one peer: UDP GSO runs where possible (RFC 3948)."""
        if tx.child.remote is not tx.remote:  # the peer moved (MOBIKE-less NAT rebind)
            tx.remote = tx.child.remote
            tx.addr = (str(tx.remote[0]), tx.remote[1])
        sock, addr, counters = tx.sock, tx.addr, self.counters
        self._used.add(tx.child.spi_in)
        groups = offload.gso_groups(packets) if self.gso and len(packets) > 1 else [packets]
        for group in groups:
            try:
                if len(group) > 1 and self.gso:
                    # One call, the kernel cuts it at len(group[0]) bytes per datagram.
                    sock.sendmsg(group, offload.gso_cmsg(len(group[0])), 0, addr)
                    counters["gso_sends"] += 1
                    counters["udp_sends"] += 1
                    continue
            except OSError as e:
                if e.errno not in _GSO_REFUSED:
                    self._send_failed(tx, e, len(group))
                    continue
                self.gso = False
                log.info("UDP GSO refused by the kernel (%s): one datagram per send", e.strerror)
            for p in group:
                try:
                    sock.sendto(p, addr)
                    counters["udp_sends"] += 1
                except OSError as e:
                    self._send_failed(tx, e, 1)

    def _send_failed(self, tx: _Tx, e: OSError, packets: int) -> None:
        self.counters["send_err"] += packets
        self._rate_log("send", f"ESP send to {tx.addr[0]} failed: {e.strerror}")

    def on_esp(self, datagrams: list[bytes] | list[memoryview], src: object) -> None:
        """Inbound: ESP datagrams of one receive batch from the driver's 4500 socket
        (bytes, or memoryviews of one GRO receive). One pass: the SA is looked up once
        per run of one SPI, liveness reported once per SA and batch."""
        sad, counters = self.sad, self.counters
        inner: list[bytes | memoryview] = []
        alive: list[int] = []
        spi = -1
        sa: esp.InboundSa | None = None
        for data in datagrams:
            k = int.from_bytes(data[:4], "big")
            if k != spi:
                spi, sa = k, sad.get(k)
            try:
                if sa is None:
                    sad.unknown_spi += 1
                    raise esp.EspDrop(esp.DropReason.UNKNOWN_SPI)
                pkt = sa.open(data)[1]  # anti-replay, ICV, decrypt, selectors (RFC 4303 3.4)
            except esp.EspDrop as e:
                counters["esp_drop"] += 1
                self._rate_log(
                    f"drop{e.reason}",
                    f"ESP from {src[0]} dropped: "  # type: ignore[index]
                    f"{e.reason.name} ({counters['esp_drop']} "
                    f"drops so far)",
                )
                continue
            inner.append(pkt)
            if not alive or alive[-1] != sa.spi:  # type: ignore[union-attr]
                alive.append(sa.spi)  # type: ignore[union-attr]
        if alive:
            self._used.update(alive)
            now = time.monotonic()
            for s in dict.fromkeys(alive):  # authenticated: the peer is alive
                self.note_alive(s, now)
        if inner:
            self._write_tun(inner)

    def _write_tun(self, packets: list[bytes | memoryview]) -> None:
        """Decrypted packets into the TUN: merged TCP segments and UDP datagrams where
        possible."""
        fd, counters = self.fd, self.counters
        if not self.vnet:
            for p in packets:
                self._tun_write(os.write, p, 1)
            return
        if not self.merge:
            for p in packets:
                self._tun_write(os.writev, [offload.PLAIN_VNET_HDR, p], 1)
            return
        for start, end, bufs in offload.coalesce(packets, udp=self.merge_udp):  # type: ignore[arg-type]  # bytes | memoryview (perf)
            if end - start == 1:
                self._tun_write(os.writev, bufs, 1)
                continue
            try:
                os.writev(fd, bufs)
                counters["tun_out"] += end - start
                counters["tun_writes"] += 1
                counters["merged_writes"] += 1
            except OSError as e:
                if e.errno != errno.EINVAL:
                    self._rate_log("tun_write", f"TUN write failed: {e.strerror}")
                    continue
                # The kernel cannot take this kind of GSO write (UDP GSO on TUN
                # writes needs Linux 6.2): from now on, packet by packet.
                if bufs[0][1] == offload.VNET_GSO_UDP_L4:
                    self.merge_udp = False
                    what = "UDP GSO"
                else:
                    self.merge = False
                    what = "GSO"
                log.info(
                    "TUN %s refused a %s write (%s): one write per packet",
                    self.tun_name,
                    what,
                    e.strerror,
                )
                for p in packets[start:end]:
                    self._tun_write(os.writev, [offload.PLAIN_VNET_HDR, p], 1)

    def _tun_write(self, write: object, buf: object, packets: int) -> None:
        try:
            write(self.fd, buf)  # type: ignore[operator]
            self.counters["tun_out"] += packets
            self.counters["tun_writes"] += 1
        except OSError as e:
            self._rate_log("tun_write", f"TUN write failed: {e.strerror}")

    def _rate_log(self, key: str, text: str) -> None:
        now = time.monotonic()
        if now - self._last_log.get(key, -LOG_EVERY) >= LOG_EVERY:
            self._last_log[key] = now
            log.warning("%s", text)

    def take_used(self) -> set[int]:
        """Inbound SPIs of the Child SAs that carried packets since the last call."""
        used, self._used = self._used, set()
        return used

    def octets(self, c: ChildSaInfo) -> int:
        """Inner bytes a Child SA has carried both ways (its byte lifetime, RFC 4301 4.4.2.1)."""
        inbound = self.sad.get(c.spi_in)
        tx = self._tx.get(c.spi_out)
        return (inbound.usage()[1] if inbound is not None else 0) + (
            tx.sa.usage()[1] if tx is not None else 0
        )

    def stats(self) -> dict[str, int]:
        return {**self.counters, "spd_no_sa": self.spd.no_sa, "unknown_spi": self.sad.unknown_spi}


def _link_scope(pkt: bytes) -> bool:
    """An IPv6 packet from a link-local address or to a link-local multicast group
    (ff02::/16): the kernel sends router solicitations and MLD reports on the TUN by
    itself; such packets are never forwarded off the link (RFC 4291 2.5.6, 2.7), so
    no policy can cover them and they are not worth a log line."""
    if len(pkt) < 40 or pkt[0] >> 4 != 6:
        return False
    return (pkt[8] == 0xFE and pkt[9] & 0xC0 == 0x80) or (pkt[24] == 0xFF and pkt[25] & 0x0F == 2)


def _netlink(what: str, call: object, *args: object, **kw: object) -> None:
    """One netlink request, retried briefly on EINVAL: right after a TUN device is
    created (and set up) the kernel sometimes refuses an IPv6 address or route
    for a moment, while the device's IPv6 state is being initialised."""
    for attempt in range(20):
        try:
            call(*args, **kw)  # type: ignore[operator]
            return
        except NetlinkError as e:
            if e.code == errno.EEXIST:
                return
            if e.code != errno.EINVAL or attempt == 19:
                raise DataPlaneError(f"{what}: {os.strerror(e.code)}") from e
            time.sleep(0.05)


def local_addresses_and_routes(policies: list) -> tuple[list, list]:
    """TUN addresses (single-host 'from' addresses) and routes ('to' networks)."""
    local, remote = [], []
    for p in policies:
        for f in p.flows:
            src, dst = ip_network(f.src), ip_network(f.dst)
            if src.num_addresses == 1 and src.network_address not in local:
                local.append(src.network_address)
            if dst not in remote:
                remote.append(dst)
    return local, remote


def route_sources(policies: list) -> dict:
    """Each 'to' network's source address: the single-host 'from' address of the
    (first) policy flow to it. Two policies from different inner addresses (two
    policies of one name included) then send from their own address, which their
    own Child SA's selectors allow."""
    out: dict = {}
    for p in policies:
        for f in p.flows:
            src, dst = ip_network(f.src), ip_network(f.dst)
            if src.num_addresses == 1 and src.version == dst.version and dst not in out:
                out[dst] = src.network_address
    return out


def attach_dataplane(daemon: Daemon, tun_name: str = DEFAULT_TUN) -> DataPlane:
    """Hook a DataPlane into a Daemon: Child SA events, ESP datagrams, start/stop."""
    driver = daemon.driver

    def socket_for(local: Addr) -> socket.socket | None:
        s = driver.socket_for(local)
        return s.sock if s is not None else None

    dp = DataPlane(socket_for=socket_for, note_alive=daemon.note_esp, tun_name=tun_name)
    daemon.on_child = dp.on_event
    driver.on_esp = dp.on_esp
    daemon.dataplane = dp
    return dp
