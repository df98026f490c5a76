"""The pyike daemon: iked.conf policies + key files + the IKE core + the driver.

This module holds the decisions iked makes outside the protocol itself:
turning a parsed policy into what the core negotiates (:func:`sa_policy`),
which policy answers a responder (pyike.config's rule), starting active
policies, re-initiating with capped backoff when an SA dies (re-resolving
the peer's host name every time), key logging, and reload on SIGHUP.

Staying up by itself (the guide's home side needed ``ping -i 5`` and 30-minute
rekeys with iked): an idle IKE SA is probed after ``dpd_interval`` seconds
without anything received (default 5 s), requests are retransmitted at 2, 4,
then every 5 s for about a minute; a restarted peer answers a probe with
INVALID_IKE_SPI and the SAs are re-established at once; netlink
(pyike.netwatch) reports link, address and route changes, upon which SAs whose
address is gone are replaced and the others probed, and pending retries start
now instead of at the end of their backoff.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network
from pathlib import Path

from pyike import config as cfg
from pyike import keylog, keys, proposals, ts
from pyike.driver import NATT_KEEPALIVE, Driver
from pyike.ike import (
    Addr,
    ChildSaCreated,
    ChildSaDeleted,
    Endpoint,
    Event,
    IkeKeysDerived,
    IkeSa,
    IkeSaClosed,
    IkeSaEstablished,
    InitialContact,
    PeerLostSa,
    PeerMoved,
    SaPolicy,
    State,
)
from pyike.registry import IdType, ProtocolId
from pyike.wire import TrafficSelector

log = logging.getLogger("pyike")

BACKOFF_START = 1.0
BACKOFF_CAP = 30.0  # re-initiation backoff ceiling (seconds)
USAGE_CHECK_INTERVAL = 5.0  # seconds between byte-lifetime checks
# Liveness defaults: with these a peer that restarts or a path that comes back is
# noticed within about 5 s on an idle tunnel (no traffic generator needed), at the
# cost of one small INFORMATIONAL exchange per IKE SA every 5 s while idle.
DEFAULT_DPD_INTERVAL = 5.0
DEFAULT_RETRANSMIT_CAP = 5.0
GIVE_UP_AFTER = 60.0  # seconds of unanswered retransmissions before an SA is dead
# An active SA whose liveness probe has gone unanswered this long (two sends) gets a
# replacement IKE SA negotiated next to it: a restarted peer that does not answer
# INVALID_IKE_SPI (OpenIKED does not) is back in service in seconds, not after the
# minute of retransmissions. A lossy path costs at most an extra handshake.
DEFAULT_REPLACE_AFTER = 4.0
SUSPECT_CHECK_EVERY = 1.0


class DaemonError(Exception):
    """A start-up problem with a message for the user (bad config, missing key...)."""


@dataclass(slots=True)
class Options:
    config_file: Path = Path("/etc/iked.conf")
    macros: dict[str, str] = field(default_factory=dict)
    keydir: Path = keys.DEFAULT_KEYDIR
    force_active: bool = False
    force_encap: bool = False  # -t
    keylog_dir: Path | None = None  # a Wireshark profile dir: ikev2_decryption_table, esp_sa
    ports: tuple[int, int] = (500, 4500)
    socket_path: Path | None = None
    natt_keepalive: float = 20.0  # seconds; 0 = never (RFC 3948 2.3)
    rfc7427: bool = True  # --no-rfc7427: RFC 4754 AUTH only (iked then signs with it too)
    # Probe an idle SA after this many seconds without anything received; None:
    # `set dpd_check_interval N` if the config gives one other than iked's 60, else 5.
    dpd_interval: float | None = None
    retransmit_cap: float = DEFAULT_RETRANSMIT_CAP  # 0: iked's 2/4/8/16/32 s schedule
    netwatch: bool = True  # react to link/address/route changes (pyroute2)
    replace_after: float = DEFAULT_REPLACE_AFTER  # 0: never negotiate a replacement
    invalid_spi: bool = True  # answer requests for unknown SAs (off: behave like iked)


def retransmit_tries(base: float, cap: float, give_up: float = GIVE_UP_AFTER) -> int:
    """How many sends make the retransmission schedule last about ``give_up`` s."""
    if cap <= 0:
        return 5  # 2+4+8+16+32: iked's and RFC 7296's usual schedule
    total, tries = 0.0, 0
    while total < give_up and tries < 100:
        total += min(base * 2**tries, cap)
        tries += 1
    return tries


def effective_dpd(options: Options, global_options: object | None) -> float:
    if options.dpd_interval is not None:
        return options.dpd_interval
    configured = getattr(global_options, "dpd_check_interval", cfg.DEFAULT_DPD_CHECK_INTERVAL)
    if configured != cfg.DEFAULT_DPD_CHECK_INTERVAL:
        return float(configured)  # 0 turns probing off, as in iked
    return DEFAULT_DPD_INTERVAL


def id_bytes(id_type: int, text: str) -> bytes:
    """ID payload data for an iked.conf srcid/dstid (RFC 7296 3.5)."""
    if id_type in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR):
        return ip_address(text).packed
    return text.encode()


def flows_to_selectors(policy: cfg.Policy) -> tuple[list, list]:
    """Local and remote traffic selectors of a policy's from/to flows."""
    local: list[TrafficSelector] = []
    remote: list[TrafficSelector] = []
    for f in policy.flows:
        for sel, net, port in ((local, f.src, f.src_port), (remote, f.dst, f.dst_port)):
            s = ts.from_network(ip_network(net), f.proto, port)
            if s not in sel:
                sel.append(s)
    return local, remote


def sa_policy(
    policy: cfg.Policy, store: keys.KeyStore, options: Options, global_options: object | None = None
) -> SaPolicy:
    """What the IKE core negotiates for one iked.conf policy."""
    if policy.srcid is None:
        raise DaemonError(f"policy '{policy.name}': no srcid")
    local_id = (int(policy.srcid[0]), id_bytes(*policy.srcid))
    peer_id = (int(policy.dstid[0]), id_bytes(*policy.dstid)) if policy.dstid else None
    method = policy.auth.method if policy.auth else "signature"
    local_key = psk = None
    if method == "psk":
        psk = policy.auth.psk
    elif method.startswith("ecdsa") or method in ("signature", "rfc7427"):
        try:
            local_key = store.local_private()
        except keys.KeyFileError as e:
            raise DaemonError(str(e)) from e
    else:
        raise DaemonError(
            f"policy '{policy.name}': authentication '{method}' is not "
            f"supported by pyike (use ecdsa256/384/521, rfc7427 or psk)"
        )

    def peer_key(id_type: int, data: bytes) -> object | None:
        try:
            ident = (
                str(ip_address(data))
                if id_type in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR)
                else data.decode()
            )
            return store.peer_public(IdType(id_type), ident)
        except (keys.KeyFileError, ValueError, UnicodeDecodeError) as e:
            log.warning("peer key lookup failed: %s", e)
            return None

    local_ts, remote_ts = flows_to_selectors(policy)
    dpd = effective_dpd(options, global_options)
    return SaPolicy(
        name=policy.name,
        ike_proposals=proposals.from_specs(policy.ike_proposals, ProtocolId.IKE),
        child_proposals=proposals.from_specs(policy.child_proposals, ProtocolId.ESP),
        local_id=local_id,
        peer_id=peer_id,
        local_key=local_key,
        psk=psk,
        peer_key=peer_key,
        ts_local=local_ts,
        ts_remote=remote_ts,
        # pyike's ESP runs in userspace over UDP 4500 only (no raw IP protocol 50),
        # so it always asks for UDP encapsulation, as iked -t does.
        force_encap=True,
        rfc7427=options.rfc7427,
        ike_lifetime=float(policy.ikelifetime),  # 0: never rekeyed (iked's default)
        child_lifetime=float(policy.lifetime),
        child_lifetime_bytes=int(policy.lifetime_bytes),
        dpd_interval=float(dpd),
        retransmit_cap=options.retransmit_cap,
        retransmit_tries=retransmit_tries(2.0, options.retransmit_cap),
    )


def id_text_or_any(peer_id: tuple[int, bytes] | None) -> str:
    from pyike.ike import id_text

    return id_text(*peer_id) if peer_id else "any peer"


def _spi_of(sa: IkeSa | None) -> bytes | None:
    return sa.our_spi if sa is not None else None


def local_address_for(peer: Addr) -> Addr:
    """The source address the kernel would use towards ``peer`` (no packet is sent:
    connecting a UDP socket only consults the routing table)."""
    family = socket.AF_INET6 if peer[0].version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((str(peer[0]), peer[1]))
        return ip_address(s.getsockname()[0].split("%")[0]), 500


def address_is_ours(addr: object) -> bool:
    """Whether ``addr`` is still assigned here (binding to it only works then)."""
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET  # type: ignore[attr-defined]
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((str(addr), 0))
        except OSError:
            return False
    return True


def resolve(host: str, family_hint: int | None = None) -> list:
    """Every address of ``host`` (fresh lookup each time: the peer may move)."""
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    out = []
    for info in infos:
        a = ip_address(str(info[4][0]).split("%")[0])
        if a not in out and (family_hint is None or a.version == family_hint):
            out.append(a)
    return out


class Daemon:
    """Owns the Endpoint, the Driver and the policy table; reacts to core events."""

    def __init__(self, options: Options, on_child: Callable[[Event], None] | None = None) -> None:
        self.options = options
        self.on_child = on_child  # the data plane's hook (ChildSaCreated/Deleted, PeerMoved)
        self.config: cfg.Config | None = None
        self.policies: dict[str, SaPolicy] = {}
        self.endpoint = Endpoint(self._policy_for)
        self.driver = Driver(
            self.endpoint, ports=options.ports, on_event=self._on_event, on_reload=self.reload
        )
        self.ike_keylog = self.esp_keylog = None
        if options.keylog_dir is not None:
            # Only on explicit request: these files let anyone decrypt the traffic.
            options.keylog_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.ike_keylog = keylog.KeyLogWriter(options.keylog_dir / keylog.IKE_TABLE_NAME)
            self.esp_keylog = keylog.KeyLogWriter(options.keylog_dir / keylog.ESP_TABLE_NAME)
            log.warning(
                "writing SA keys to %s (anyone who reads them can decrypt the traffic)",
                options.keylog_dir,
            )
        self._active_sa: dict[str, IkeSa] = {}  # policy name -> its current IKE SA
        self._backoff: dict[str, float] = {}
        self._retry: dict[str, asyncio.TimerHandle] = {}
        self._replacing: dict[str, IkeSa] = {}  # policy name -> replacement in flight
        self.netwatch: object | None = None
        self._netwatch_task: asyncio.Task | None = None
        if not options.invalid_spi:
            self.endpoint.invalid_spi_burst = 0

    # ------------------------------------------------------------------ config

    def load(self) -> None:
        try:
            self.config = cfg.load_config(str(self.options.config_file), self.options.macros)
        except cfg.ConfigError as e:
            raise DaemonError(str(e)) from e
        except OSError as e:
            raise DaemonError(f"{self.options.config_file}: {e.strerror}") from e
        for warning in self.config.warnings:
            log.warning("%s", warning)
        for note in cfg.check_policies(self.config):  # `pyike -n` shows these as warnings
            log.info("note: %s", note)
        store = keys.KeyStore(self.options.keydir)
        table = {}
        for p in self.config.policies:
            if self.options.force_active:
                p.active = True
            table[p.name] = sa_policy(p, store, self.options, self.config.options)
        self.policies = table
        log.info(
            "loaded %d polic%s from %s",
            len(table),
            "y" if len(table) == 1 else "ies",
            self.options.config_file,
        )

    def reload(self) -> None:
        """SIGHUP: re-read the config; SAs of vanished policies are deleted."""
        log.info("SIGHUP: reloading %s", self.options.config_file)
        try:
            self.load()
        except DaemonError as e:
            log.error("reload failed, keeping the old configuration: %s", e)
            return
        now = self.driver.now()
        for name, sa in list(self._active_sa.items()):
            if name not in self.policies:
                sa.delete(now, "policy removed by reload")
        self.start_active()
        self.driver.pump()

    def _policy_for(
        self, peer: Addr, local: Addr, peer_id: tuple[int, bytes] | None
    ) -> SaPolicy | None:
        if self.config is None:
            return None
        ident = None
        if peer_id is not None:
            id_type, data = peer_id
            try:
                text = (
                    str(ip_address(data))
                    if id_type in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR)
                    else data.decode()
                )
            except (ValueError, UnicodeDecodeError):
                text = data.hex()
            ident = (IdType.lookup(id_type), text)
        chosen = cfg.select_responder_policy(self.config, peer[0], local[0], ident)
        return self.policies.get(chosen.name) if chosen is not None else None

    # ------------------------------------------------------------------ active policies

    def start_active(self) -> None:
        if self.config is None:
            return
        for p in self.config.policies:
            if (
                p.active
                and p.name not in self._active_sa
                and p.name not in self._retry
                and p.name not in self._replacing
            ):
                self.initiate(p.name)

    def _peer_state(self, peer_id: tuple[int, bytes] | None) -> str:
        """'established', 'pending' or '' for our IKE SAs with this peer identity."""
        states = {
            sa.state
            for sa in self.endpoint.sas.values()
            if sa.policy.peer_id == peer_id or sa.peer_id == peer_id
        }
        if State.ESTABLISHED in states:
            return "established"
        return "pending" if states - {State.CLOSED, State.DELETING} else ""

    def _peer_addresses(self, p: cfg.Policy) -> list:
        if p.peer_host:
            try:
                return resolve(p.peer_host)
            except OSError as e:
                log.warning("policy '%s': cannot resolve peer %s: %s", p.name, p.peer_host, e)
                return []
        if p.peer is not None and ip_network(p.peer).num_addresses == 1:
            return [ip_network(p.peer).network_address]
        return []

    def initiate(self, name: str) -> None:
        assert self.config is not None
        self._retry.pop(name, None)
        p = next((x for x in self.config.policies if x.name == name), None)
        policy = self.policies.get(name)
        if p is None or policy is None:
            return
        # Several policies to one peer (the guide has three) make several IKE SAs.
        # INITIAL_CONTACT goes only on the first (RFC 7296 2.4): the others start
        # once it is established, without it, so the peer keeps them all.
        peer_state = self._peer_state(policy.peer_id)
        if peer_state == "pending":
            log.debug("policy '%s': waiting for the first IKE SA to this peer", name)
            return
        addresses = self._peer_addresses(p)
        if not addresses:
            if p.peer_host is None and p.peer is None:
                log.warning("policy '%s' is active but has no peer; it can only answer", name)
                return
            self._schedule_retry(name)
            return
        # -t, like iked -t: start on the NAT-T port (RFC 7296 2.23 allows IKE_SA_INIT
        # on 4500, with the non-ESP marker); a peer running iked -t listens only there.
        port = self.options.ports[1] if self.options.force_encap else self.options.ports[0]
        peer = (addresses[0], port)
        try:
            local = (ip_address(str(p.local[0])), port) if p.local else local_address_for(peer)
        except OSError as e:
            log.warning("policy '%s': no route to peer %s: %s", name, peer[0], e.strerror)
            self._schedule_retry(name)
            return
        log.info(
            "policy '%s': initiating to [%s]:%d from [%s]:%d",
            name,
            peer[0],
            peer[1],
            local[0],
            local[1],
        )
        sa = self.endpoint.connect(
            policy,
            (local[0], port),
            peer,
            self.driver.now(),
            initial_contact=peer_state != "established",
        )
        self._active_sa[name] = sa
        self.driver.pump()

    def _schedule_retry(self, name: str) -> None:
        """Capped exponential backoff before the next attempt (issue: dynamic IP)."""
        delay = self._backoff.get(name, BACKOFF_START)
        self._backoff[name] = min(delay * 2, BACKOFF_CAP)
        loop = asyncio.get_event_loop()
        log.info("policy '%s': next attempt in %.0f s", name, delay)
        self._retry[name] = loop.call_later(delay, self.initiate, name)

    # ------------------------------------------------------------------ events

    def _on_event(self, event: Event) -> None:
        if isinstance(event, IkeKeysDerived) and self.ike_keylog is not None:
            s, k = event.suite, event.keys
            self.ike_keylog.write(
                keylog.IkeKeyRecord(
                    event.spi_i,
                    event.spi_r,
                    s.encr,
                    s.key_bits,
                    s.integ,
                    k.sk_ei,
                    k.sk_er,
                    k.sk_ai,
                    k.sk_ar,
                )
            )
        elif isinstance(event, IkeSaEstablished):
            new = self.endpoint.ike_sa(event.spi)
            if event.replaces is not None and new is not None:  # an IKE SA rekey: follow
                for name, sa in list(self._active_sa.items()):  # the children
                    if sa.our_spi == event.replaces:
                        self._active_sa[name] = new
            self._backoff.pop(event.policy, None)
            if new is not None:
                self._replacement_done(new)
            asyncio.get_running_loop().call_soon(self.start_active)
        elif isinstance(event, InitialContact):
            if (found := self.endpoint.ike_sa(event.spi)) is not None:
                self._drop_older_sas(found, event.peer_id)
        elif isinstance(event, PeerLostSa):
            if (found := self.endpoint.ike_sa(event.spi)) is not None:
                asyncio.get_running_loop().call_soon(self._peer_lost, found)
        elif isinstance(event, IkeSaClosed):
            name = event.policy
            if _spi_of(self._replacing.get(name)) == event.spi:
                del self._replacing[name]  # the replacement failed; the suspect check
                if name not in self._active_sa and not self.driver.stopping:  # tries
                    self._schedule_retry(name)  # again while the old one lives
            elif _spi_of(self._active_sa.get(name)) == event.spi:
                del self._active_sa[name]
                if name in self._replacing:
                    pass  # its replacement is already being negotiated
                elif (
                    not self.driver.stopping
                    and self.config is not None
                    and any(p.name == name and p.active for p in self.config.policies)
                ):
                    self._schedule_retry(name)
        elif isinstance(event, ChildSaCreated) and self.esp_keylog is not None:
            c = event.child
            for spi, (src, dst), key in (
                (c.spi_out, (c.local, c.remote), c.key_out),
                (c.spi_in, (c.remote, c.local), c.key_in),
            ):
                self.esp_keylog.write(
                    keylog.EspKeyRecord(
                        src[0],
                        dst[0],
                        spi,
                        c.suite.encr,
                        c.suite.key_bits,
                        c.suite.integ,
                        key[0],
                        key[1],
                    )
                )
        if isinstance(event, ChildSaCreated | ChildSaDeleted | PeerMoved) and self.on_child:
            self.on_child(event)

    def _drop_older_sas(self, sa: IkeSa, peer_id: tuple[int, bytes]) -> None:
        """INITIAL_CONTACT (RFC 7296 2.4): the peer lost its state; ours is stale."""
        for other in list(self.endpoint.sas.values()):
            if other is not sa and other.peer_id == peer_id:
                log.info("%s: replaced by %s after INITIAL_CONTACT", other.label, sa.label)
                other.drop(self.driver.now(), "peer sent INITIAL_CONTACT on a new SA")

    # ------------------------------------------------------------------ byte lifetimes

    def _check_usage(self) -> None:
        """Feed the data plane's byte counts to the core (iked's ``lifetime ... bytes``)."""
        dp = getattr(self, "dataplane", None)
        if dp is not None:
            now = self.driver.now()
            for child in self.endpoint.child_sas():
                self.endpoint.note_child_usage(child.spi_in, dp.octets(child), now)
            self.driver.pump()
        asyncio.get_running_loop().call_later(USAGE_CHECK_INTERVAL, self._check_usage)

    # ------------------------------------------------------------------ recovery

    def reestablish(self, peer_id: tuple[int, bytes] | None, reason: str) -> None:
        """Forget every IKE SA with this peer and start the active policies again now.

        No DELETE is sent: the peer has lost these SAs, or we cannot reach it from
        their address any more. The first new IKE SA carries INITIAL_CONTACT, so a
        peer that still holds the old ones drops them (RFC 7296 2.4)."""
        now = self.driver.now()
        dropped = 0
        for sa in list(self.endpoint.sas.values()):
            if sa.state in (State.CLOSED,) or (sa.peer_id or sa.policy.peer_id) != peer_id:
                continue
            self._forget(sa)  # no backoff retry for this one
            sa.drop(now, f"re-establishing: {reason}")
            dropped += 1
        if dropped:
            log.info(
                "re-establishing %d IKE SA(s) with %s: %s", dropped, id_text_or_any(peer_id), reason
            )
        self._retry_now()

    def _peer_lost(self, sa: IkeSa) -> None:
        """The peer answered INVALID_IKE_SPI for ``sa`` (it restarted, most likely).

        Only that SA is dropped (the hint names it, and a newer SA with the same
        peer may be fine), its policy starts again now, and the other SAs with
        this peer are probed at once: after a restart they are all gone."""
        if sa.state == State.CLOSED:
            return
        now = self.driver.now()
        self._forget(sa)
        sa.drop(now, "the peer does not know it (INVALID_IKE_SPI): it restarted?")
        peer_id = sa.peer_id or sa.policy.peer_id
        for other in list(self.endpoint.sas.values()):
            if (
                other is not sa
                and other.state == State.ESTABLISHED
                and (other.peer_id or other.policy.peer_id) == peer_id
            ):
                other.check_alive(now)
        self._retry_now()

    def _check_suspects(self) -> None:
        """Start a replacement for each active SA whose probe went unanswered."""
        loop = asyncio.get_running_loop()
        loop.call_later(SUSPECT_CHECK_EVERY, self._check_suspects)
        if self.driver.stopping:
            return
        now = self.driver.now()
        started = False
        for name, sa in list(self._active_sa.items()):
            dpd = sa.policy.dpd_interval
            if (
                name in self._replacing
                or sa.state != State.ESTABLISHED
                or dpd <= 0
                or now - sa.last_heard() < dpd + self.options.replace_after
            ):
                continue
            p = (
                next((x for x in self.config.policies if x.name == name), None)
                if self.config is not None
                else None
            )
            addresses = self._peer_addresses(p) if p is not None else []  # the peer may
            peer = (addresses[0] if addresses else sa.peer[0], self.options.ports[0])  # move
            try:
                local = (
                    (ip_address(str(p.local[0])), self.options.ports[0])
                    if p is not None and p.local
                    else local_address_for(peer)
                )
            except OSError:
                continue  # no route to the peer: netwatch calls when there is one
            log.info(
                "%s: no answer for %.0f s; negotiating a replacement next to it",
                sa.label,
                now - sa.last_heard(),
            )
            # Fresh SPIs; no INITIAL_CONTACT: the other policies' SAs with this peer
            # may be fine (RFC 7296 2.4).
            self._replacing[name] = self.endpoint.connect(
                sa.policy, (local[0], self.options.ports[0]), peer, now, initial_contact=False
            )
            started = True
        if started:
            self.driver.pump()

    def _replacement_done(self, new: IkeSa) -> None:
        """A replacement is up: it takes over; the old SA goes (2.8.3's reauthentication
        order: the new SA first, then the old one is deleted)."""
        name = new.policy.name
        if self._replacing.get(name) is not new:
            return
        del self._replacing[name]
        old = self._active_sa.get(name)
        self._active_sa[name] = new
        if old is None or old.state == State.CLOSED:
            return
        now = self.driver.now()
        if now - old.last_heard() < old.policy.dpd_interval:
            old.delete(now, "replaced by " + new.label)  # it answers again: tell the peer
        else:
            old.drop(now, "replaced by " + new.label)  # silent: the peer forgot it

    def _forget(self, sa: IkeSa) -> None:
        """Take ``sa`` out of the policy table, so that closing it starts no backoff."""
        for table in (self._active_sa, self._replacing):
            for name, known in list(table.items()):
                if known is sa:
                    del table[name]

    def _retry_now(self) -> None:
        """Policies waiting out their backoff try again now (the network changed)."""
        for name in list(self._retry):
            self._retry.pop(name).cancel()
            self._backoff.pop(name, None)
        self.start_active()
        self.driver.pump()

    def network_changed(self, reason: str) -> None:
        """netwatch: our links, addresses or routes changed (coalesced burst)."""
        if self.driver.stopping:
            return
        log.info("network changed: %s", reason)
        now = self.driver.now()
        moved: set = set()
        for sa in list(self.endpoint.sas.values()):
            if sa.state == State.CLOSED:
                continue
            try:
                source = local_address_for(sa.peer)[0]
            except OSError:
                continue  # no route to the peer right now: the next change will tell
            if not address_is_ours(sa.local[0]) or (sa.initiator and source != sa.local[0]):
                # Without MOBIKE (RFC 4555) an SA cannot move to another address:
                # replace it from the address the kernel now uses towards the peer.
                log.info(
                    "%s: local address %s is no longer the way to [%s] (now %s)",
                    sa.label,
                    sa.local[0],
                    sa.peer[0],
                    source,
                )
                moved.add(sa.peer_id or sa.policy.peer_id)
            else:
                sa.check_alive(now)  # probe (or retransmit) now: is the path back?
        for peer_id in moved:
            self.reestablish(peer_id, "local address changed")
        self._retry_now()

    async def _start_netwatch(self) -> None:
        from pyike.netwatch import NetWatch

        dp = getattr(self, "dataplane", None)
        watch = NetWatch(
            self.network_changed, ignore_ifnames=[dp.tun_name] if dp is not None else []
        )
        try:
            await watch.start()
        except Exception as e:  # no netlink (not Linux?): run without, say so
            log.warning("not watching network changes: %s", e)
            return
        self.netwatch = watch

    # ------------------------------------------------------------------ NAT keepalives

    def _send_keepalives(self) -> None:
        """RFC 3948 2.3: a 1-byte 0xFF datagram keeps the NAT mapping of the home
        side alive (iked only sends these when it is itself behind a NAT, so the
        home side must). Sent by the original initiator on every UDP-encapsulated
        established SA; the peer's driver ignores them."""
        for sa in list(self.endpoint.sas.values()):
            if (
                sa.state == State.ESTABLISHED
                and sa.initiator
                and sa.local[1] == self.options.ports[1]
            ):
                s = self.driver.socket_for(sa.local)
                if s is not None:
                    try:
                        s.sock.sendto(NATT_KEEPALIVE, (str(sa.peer[0]), sa.peer[1]))
                    except OSError as e:
                        log.debug("%s: keepalive not sent: %s", sa.label, e.strerror)
        asyncio.get_running_loop().call_later(self.options.natt_keepalive, self._send_keepalives)

    # ------------------------------------------------------------------ run

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        # A SIGHUP during start-up (TUN set-up takes a moment) is kept for when the
        # driver runs, instead of killing the daemon (SIGHUP's default action).
        early_hup: list[bool] = []
        loop.add_signal_handler(signal.SIGHUP, early_hup.append, True)
        self.load()
        self.driver.open()
        dp = getattr(self, "dataplane", None)

        def started() -> None:  # the driver's signal handlers are in place now
            if early_hup:
                self.reload()
            self.start_active()
            if self.options.netwatch:
                self._netwatch_task = loop.create_task(self._start_netwatch())

        try:
            if dp is not None:
                from pyike.dataplane import local_addresses_and_routes

                assert self.config is not None
                local, remote = local_addresses_and_routes(self.config.policies)
                family = (
                    socket.AF_INET6
                    if any(
                        p.peer is not None and ip_network(p.peer).version == 6
                        for p in self.config.policies
                    )
                    else socket.AF_INET
                )
                from pyike.dataplane import DataPlaneError

                try:
                    # Netlink set-up blocks (and pyroute2 runs its own loop): a thread.
                    await asyncio.to_thread(dp.open, local, remote, family)
                except DataPlaneError as e:
                    raise DaemonError(str(e)) from e
                dp.start(asyncio.get_running_loop())
            asyncio.get_running_loop().call_later(USAGE_CHECK_INTERVAL, self._check_usage)
            if self.options.natt_keepalive > 0:
                asyncio.get_running_loop().call_later(
                    self.options.natt_keepalive, self._send_keepalives
                )
            if self.options.replace_after > 0:
                loop.call_later(SUSPECT_CHECK_EVERY, self._check_suspects)
            await self.driver.run(start=started)
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
            for handle in self._retry.values():
                handle.cancel()
            if self.netwatch is not None:
                self.netwatch.close()  # type: ignore[attr-defined]
            if dp is not None:
                dp.close()
