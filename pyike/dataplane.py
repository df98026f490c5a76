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
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import time
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network, summarize_address_range

from pyroute2 import IPRoute, NetlinkError

from pyike import esp
from pyike.ike import ChildSa, ChildSaCreated, ChildSaDeleted, Event, IkeSa
from pyike.registry import EncrId, IntegId

log = logging.getLogger("pyike.dataplane")

DEFAULT_TUN = "pyike0"
PATH_MTU = 1500
TUN_BATCH = 64  # packets per wake-up: bounded so IKE and timers keep their turn
LOG_EVERY = 10.0  # seconds between repeated drop log lines


def selector_networks(selectors: list) -> list[IPv4Network | IPv6Network]:
    """The address ranges of traffic selectors as CIDR networks (for routes)."""
    out: list[IPv4Network | IPv6Network] = []
    for s in selectors:
        for net in summarize_address_range(s.start_addr, s.end_addr):
            if net not in out:
                out.append(net)
    return out


class DataPlaneError(Exception):
    """The TUN device or its addresses/routes could not be set up."""


@dataclass(slots=True)
class _Tx:
    """One outbound SA with where its packets go."""

    sa: esp.OutboundSa
    child: ChildSa
    ike: IkeSa
    sock: socket.socket
    addr: tuple[str, int]
    remote: object  # the child's remote Addr the cached ``addr`` was built from


class DataPlane:
    """Moves packets between the TUN device and ESP-in-UDP for a Daemon."""

    def __init__(self, daemon: object, tun_name: str = DEFAULT_TUN) -> None:
        self.daemon = daemon
        self.tun_name = tun_name
        self.tun = None
        self.fd = -1
        self.mtu = 0
        self.spd = esp.Spd()
        self.sad = esp.Sad()
        self._tx: dict[int, _Tx] = {}  # outbound SA by its SPI
        # Inbound SPI -> its ChildSa, whose last_inbound feeds the IKE SA's liveness
        # check (the ChildSa moves with its children when the IKE SA is rekeyed).
        self._child_by_spi_in: dict[int, ChildSa] = {}
        # Per peer (IKE identity): the selectors of all its Child SAs (esp.PeerFlows),
        # and each inbound SPI's entry there, removed with its SA.
        self._peer_flows: dict[object, esp.PeerFlows] = {}
        self._flow_keys: dict[int, tuple[object, object]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._routes: set[tuple[str, int]] = set()
        self._addresses: set[tuple[str, int]] = set()
        self.counters = {"tun_in": 0, "tun_out": 0, "no_sa": 0, "esp_drop": 0, "send_err": 0}
        self._last_log: dict[str, float] = {}

    # ------------------------------------------------------------------ device

    def open(self, local_addresses: list, remote_networks: list, outer_family: int) -> None:
        """Create the TUN device, give it the local flow addresses and routes.

        Blocking (netlink): call it outside the event loop or in a thread, since
        pyroute2's synchronous IPRoute runs an asyncio loop of its own.
        """
        from pytun import IFF_NO_PI, IFF_TUN, Error, TunTapDevice
        try:
            self.tun = TunTapDevice(name=self.tun_name, flags=IFF_TUN | IFF_NO_PI)
        except Error as e:  # pytun's error: no /dev/net/tun, not root, name taken
            raise DataPlaneError(f"cannot create TUN device {self.tun_name}: {e}") from e
        self.fd = self.tun.fileno()
        os.set_blocking(self.fd, False)
        # Worst case among what we negotiate: CBC + HMAC-SHA2-512 has the most overhead.
        self.mtu = esp.tunnel_mtu(PATH_MTU, 6 if outer_family == socket.AF_INET6 else 4,
                                  EncrId.AES_CBC, IntegId.HMAC_SHA2_512_256)
        try:
            self._configure(local_addresses, remote_networks)
        except (OSError, NetlinkError, DataPlaneError) as e:
            self.close()
            raise DataPlaneError(f"cannot configure {self.tun_name}: {e}") from e
        log.info("TUN %s up, MTU %d, addresses %s, routes %s", self.tun_name, self.mtu,
                 ", ".join(map(str, local_addresses)) or "none",
                 ", ".join(map(str, remote_networks)) or "none")

    def _configure(self, local_addresses: list, remote_networks: list) -> None:
        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=self.tun_name)[0]
            _netlink(f"set MTU {self.mtu} and up", ipr.link, "set", index=idx, mtu=self.mtu,
                     state="up")
            for a in local_addresses:
                # A TUN device is NOARP, so IPv6 skips DAD: the address is usable at once.
                prefix = 128 if a.version == 6 else 32
                _netlink(f"add address {a}/{prefix}", ipr.addr, "add", index=idx,
                         address=str(a), prefixlen=prefix)
                self._addresses.add((str(a), prefix))
            for net in remote_networks:
                src = next((str(a) for a in local_addresses if a.version == net.version), None)
                _netlink(f"add route {net}", ipr.route, "replace", dst=str(net), oif=idx,
                         **({"prefsrc": src} if src else {}))
                self._routes.add((str(net.network_address), net.prefixlen))

    def close(self) -> None:
        if self.tun is not None:  # the totals, once: drops are otherwise rate-limited
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

    def _add(self, event: ChildSaCreated) -> None:
        c, s = event.child, event.child.suite
        peer = event.sa.peer_id or event.sa.peer[0]
        flows = self._peer_flows.setdefault(peer, esp.PeerFlows())
        self._flow_keys[c.spi_in] = (peer, flows.add(c.ts_local, c.ts_remote))
        if c.peer_ts_wider:
            log.info("Child SA 0x%08x: the peer declared wider selectors (OpenIKED does): "
                     "it also accepts traffic of our other Child SAs with this peer", c.spi_in)
        inbound = esp.InboundSa(c.spi_in, s.encr, s.key_bits, s.integ, c.key_in[0],
                                c.key_in[1], s.esn, local_ts=c.ts_local, remote_ts=c.ts_remote,
                                peer_flows=flows if c.peer_ts_wider else None)
        outbound = esp.OutboundSa(c.spi_out, s.encr, s.key_bits, s.integ, c.key_out[0],
                                  c.key_out[1], s.esn)
        sock = self._socket_for(c)
        if sock is None:
            log.error("no UDP %d socket for %s; Child SA unusable", c.local[1], c.remote[0])
            return
        self.sad.add(inbound)
        self._child_by_spi_in[c.spi_in] = c
        # New outbound SA first in the SPD: traffic moves to it at once; the old
        # one keeps receiving until the peer deletes it (RFC 7296 2.8).
        self.spd.add(outbound, c.ts_local, c.ts_remote)
        self._tx[c.spi_out] = _Tx(outbound, c, event.sa, sock, (str(c.remote[0]), c.remote[1]),
                                  c.remote)

    def _remove(self, c: ChildSa) -> None:
        peer, key = self._flow_keys.pop(c.spi_in, (None, None))
        if peer in self._peer_flows:
            self._peer_flows[peer].remove(key)  # type: ignore[arg-type]
        self.sad.remove(c.spi_in)
        self._child_by_spi_in.pop(c.spi_in, None)
        tx = self._tx.pop(c.spi_out, None)
        if tx is not None:
            self.spd.remove(tx.sa)

    def _socket_for(self, c: ChildSa) -> socket.socket | None:
        driver = self.daemon.driver  # type: ignore[attr-defined]
        s = driver.socket_for(c.local)
        return s.sock if s is not None else None

    # ------------------------------------------------------------------ packets

    def _tun_readable(self) -> None:
        fd, spd, tx_by_spi = self.fd, self.spd, self._tx
        for _ in range(TUN_BATCH):
            try:
                pkt = os.read(fd, 65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._rate_log("tun_read", f"TUN read failed: {e.strerror}")
                return
            self.counters["tun_in"] += 1
            sa = spd.match(pkt)
            if sa is None:
                self.counters["no_sa"] += 1
                self._rate_log("no_sa", f"no Child SA for a packet from the TUN "
                                        f"({self.counters['no_sa']} so far)")
                continue
            tx = tx_by_spi[sa.spi]
            try:
                data = sa.seal(pkt, 41 if pkt[0] >> 4 == 6 else 4)
            except esp.SequenceOverflow:
                self._rate_log("seq", f"SA 0x{sa.spi:08x} used up its sequence numbers")
                continue
            if tx.child.remote is not tx.remote:  # the peer moved (MOBIKE-less NAT rebind)
                tx.remote = tx.child.remote
                tx.addr = (str(tx.remote[0]), tx.remote[1])
            try:
                tx.sock.sendto(data, tx.addr)
            except OSError as e:
                self.counters["send_err"] += 1
                self._rate_log("send", f"ESP send to {tx.addr[0]} failed: {e.strerror}")

    def on_esp(self, data: bytes, src: object, dst: object) -> None:
        """An ESP datagram from the driver's 4500 socket."""
        try:
            _nh, inner = self.sad.open(data)
        except esp.EspDrop as e:
            self.counters["esp_drop"] += 1
            self._rate_log(f"drop{e.reason}", f"ESP from {src[0]} dropped: "  # type: ignore[index]
                                              f"{e.reason.name} ({self.counters['esp_drop']} "
                                              f"drops so far)")
            return
        child = self._child_by_spi_in.get(int.from_bytes(data[:4], "big"))
        if child is not None:
            child.last_inbound = time.monotonic()  # authenticated traffic: peer is alive
        try:
            os.write(self.fd, inner)
            self.counters["tun_out"] += 1
        except OSError as e:
            self._rate_log("tun_write", f"TUN write failed: {e.strerror}")

    def _rate_log(self, key: str, text: str) -> None:
        now = time.monotonic()
        if now - self._last_log.get(key, -LOG_EVERY) >= LOG_EVERY:
            self._last_log[key] = now
            log.warning("%s", text)

    def octets(self, c: ChildSa) -> int:
        """Inner bytes a Child SA has carried both ways (its byte lifetime, RFC 4301 4.4.2.1)."""
        inbound = self.sad.get(c.spi_in)
        tx = self._tx.get(c.spi_out)
        return ((inbound.usage()[1] if inbound is not None else 0)
                + (tx.sa.usage()[1] if tx is not None else 0))

    def stats(self) -> dict[str, int]:
        return {**self.counters, "spd_no_sa": self.spd.no_sa,
                "unknown_spi": self.sad.unknown_spi}


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


def attach_dataplane(daemon: object, tun_name: str = DEFAULT_TUN) -> DataPlane:
    """Hook a DataPlane into a Daemon: Child SA events, ESP datagrams, start/stop."""
    dp = DataPlane(daemon, tun_name)
    daemon.on_child = dp.on_event  # type: ignore[attr-defined]
    daemon.driver.on_esp = dp.on_esp  # type: ignore[attr-defined]
    daemon.dataplane = dp  # type: ignore[attr-defined]
    return dp
