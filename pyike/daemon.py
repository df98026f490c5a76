"""The pyike daemon: iked.conf policies + key files + the IKE core + the driver.

This module turns a parsed policy into what the core negotiates
(:func:`sa_policy`; policies are known by their :class:`~pyike.config.PolicyKey`,
since two may share a name), picks the policy that answers a responder
(pyike.config's rule), and carries out the recovery decisions of the sans-IO
:class:`~pyike.supervisor.Supervisor` (starting active policies, capped backoff,
replacements): it resolves the peer's host name afresh for every attempt, finds
local addresses and routes, and feeds the supervisor the core's events as values.
Also key logging and reload on SIGHUP.

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
from typing import TYPE_CHECKING

from pyike import authn, certs, keylog, keys, proposals, signatures, status, ts
from pyike import config as cfg
from pyike.driver import NATT_KEEPALIVE, Driver
from pyike.ike import (
    Addr,
    ChildSaCreated,
    ChildSaDeleted,
    Endpoint,
    Event,
    IkeKeysDerived,
    IkeSaClosed,
    IkeSaEstablished,
    InitialContact,
    PeerLostSa,
    PeerMoved,
    SaPolicy,
    State,
    mobike,
)
from pyike.limits import DEFAULT_LIMITS, Limits
from pyike.registry import IdType, ProtocolId
from pyike.supervisor import (
    DEFAULT_REPLACE_AFTER,
    CheckAlive,
    Command,
    DeleteSa,
    DropSa,
    Initiate,
    PathChange,
    PollUsage,
    SaPhase,
    SaView,
    SupervisedPolicy,
    Supervisor,
)
from pyike.wire import TrafficSelector

if TYPE_CHECKING:
    from pyike.dataplane import DataPlane

log = logging.getLogger("pyike")

# Liveness defaults: with these a peer that restarts or a path that comes back is
# noticed within about 5 s on an idle tunnel (no traffic generator needed), at the
# cost of one small INFORMATIONAL exchange per IKE SA every 5 s while idle.
DEFAULT_DPD_INTERVAL = 5.0
DEFAULT_RETRANSMIT_CAP = 5.0
GIVE_UP_AFTER = 60.0  # seconds of unanswered retransmissions before an SA is dead
# Recovery (backoff, replacement SAs after DEFAULT_REPLACE_AFTER s without an answer
# to a probe, INVALID_IKE_SPI, network changes) is decided in pyike.supervisor.


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
    fragment_size: int = 0  # RFC 7383 fragments above this IP datagram size (0: 2.5.1)
    limits: Limits = DEFAULT_LIMITS  # --limit NAME=VALUE (pyike/limits.py)


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


def policy_key(policy: SaPolicy) -> cfg.PolicyKey | None:
    """Which configured policy an SA's policy is: two may share a name (iked
    accepts that), so SAs are matched to policies by this key, never by name."""
    return policy.key if isinstance(policy.key, cfg.PolicyKey) else None


def sa_policy(
    policy: cfg.Policy,
    store: keys.KeyStore,
    options: Options,
    global_options: object | None = None,
    key: cfg.PolicyKey | None = None,
    cert_store: certs.CertStore | None = None,
) -> SaPolicy:
    """What the IKE core negotiates for one iked.conf policy."""
    key = key or cfg.PolicyKey(policy.name)
    if policy.srcid is None:
        raise DaemonError(f"policy '{policy.name}': no srcid")
    try:
        local_id = (int(policy.srcid[0]), certs.id_payload_data(*policy.srcid))
    except (certs.CertError, ValueError) as e:
        raise DaemonError(f"policy '{policy.name}': srcid {policy.srcid[1]}: {e}") from e
    peer_id = (int(policy.dstid[0]), certs.id_payload_data(*policy.dstid)) if policy.dstid else None
    method = policy.auth.method if policy.auth else "signature"
    local_key = psk = None
    if method == "psk":
        psk = policy.auth.psk
    elif method in signatures.KEYWORDS:
        try:
            local_key = store.local_private()
            signatures.check_key(local_key, method)
        except keys.KeyFileError as e:
            raise DaemonError(str(e)) from e
        except signatures.CryptoError as e:
            raise DaemonError(f"policy '{policy.name}': {store.private_key_path}: {e}") from e
    else:
        raise DaemonError(
            f"policy '{policy.name}': authentication '{method}' is not "
            f"supported by pyike (use rsa, ecdsa256/384/521, rfc7427 or psk)"
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

    credentials = None
    if local_key is not None:
        # certs/ and ca/ (pyike.certs): our certificate names our srcid, or gives it.
        local_cert, local_id, warnings = authn.local_identity(
            cert_store, local_key, local_id, policy.srcid_from_hostname
        )
        for w in warnings:
            log.warning("policy '%s': %s", policy.name, w)
        credentials = authn.Credentials(
            local_key=local_key,
            keyword=method,
            peer_key=peer_key,
            store=cert_store,
            local_cert=local_cert,
            rfc7427=options.rfc7427,
        )
        if local_cert is not None:
            log.info("policy '%s': certificate %s", policy.name, certs.describe(local_cert))
    local_ts, remote_ts = flows_to_selectors(policy)
    dpd = effective_dpd(options, global_options)
    return SaPolicy(
        key=key,
        name=str(key),  # the name, with "#2" for a second policy of that name
        ike_proposals=proposals.from_specs(policy.ike_proposals, ProtocolId.IKE),
        child_proposals=proposals.from_specs(policy.child_proposals, ProtocolId.ESP),
        local_id=local_id,
        peer_id=peer_id,
        local_key=local_key,
        psk=psk,
        peer_key=peer_key,
        credentials=credentials,
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
        fragmentation=bool(getattr(global_options, "fragmentation", False)),
        fragment_size=options.fragment_size,
        mobike=bool(getattr(global_options, "mobike", True)),
    )


def id_text_or_any(peer_id: tuple[int, bytes] | None) -> str:
    from pyike.ike import id_text

    return id_text(*peer_id) if peer_id else "any peer"


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


_PHASES = {
    State.INIT_SENT: SaPhase.PENDING,
    State.AUTH_SENT: SaPhase.PENDING,
    State.INIT_DONE: SaPhase.PENDING,
    State.ESTABLISHED: SaPhase.ESTABLISHED,
    State.DELETING: SaPhase.DELETING,
    State.CLOSED: SaPhase.CLOSED,
}


def sa_views(endpoint: Endpoint) -> list[SaView]:
    """The supervisor's view of the core: one value snapshot per IKE SA."""
    return [
        SaView(
            spi=sa.our_spi,
            policy=policy_key(sa.policy),
            phase=_PHASES[sa.state],
            initiator=sa.initiator,
            local=sa.local,
            peer=sa.peer,
            peer_id=sa.peer_id,
            policy_peer_id=sa.policy.peer_id,
            last_heard=sa.last_heard(),
            dpd_interval=sa.policy.dpd_interval,
        )
        for sa in endpoint.sas.values()
    ]


def feed_event(supervisor: Supervisor, event: Event, now: float) -> None:
    """Hand one core event to the supervisor, as values."""
    if isinstance(event, IkeSaEstablished):
        supervisor.sa_established(now, event.spi, event.replaces)
    elif isinstance(event, InitialContact):
        supervisor.initial_contact(now, event.spi, event.peer_id)
    elif isinstance(event, PeerLostSa):
        supervisor.peer_lost(now, event.spi)
    elif isinstance(event, IkeSaClosed):
        supervisor.sa_closed(now, event.spi)


def ike_key_record(event: IkeKeysDerived) -> keylog.IkeKeyRecord:
    """The SK_* keys of a new IKE SA as a key-log record (--keylog, pyikectl monitor
    --ladder's decryption inside the daemon)."""
    s, k = event.suite, event.keys
    return keylog.IkeKeyRecord(
        event.spi_i, event.spi_r, s.encr, s.key_bits, s.integ,
        k.sk_ei, k.sk_er, k.sk_ai, k.sk_ar,
    )  # fmt: skip


class Daemon:
    """Owns the Endpoint, the Driver and the policy table; carries out the
    supervisor's recovery decisions (pyike.supervisor)."""

    def __init__(self, options: Options, on_child: Callable[[Event], None] | None = None) -> None:
        self.options = options
        self.on_child = on_child  # the data plane's hook (ChildSaCreated/Deleted, PeerMoved)
        self.dataplane: DataPlane | None = None  # set by pyike.dataplane.attach_dataplane
        self.config: cfg.Config | None = None
        self.policies: dict[cfg.PolicyKey, SaPolicy] = {}
        self.configured: dict[cfg.PolicyKey, cfg.Policy] = {}
        self.endpoint = Endpoint(self._policy_for, limits=options.limits)
        self.driver = Driver(
            self.endpoint, ports=options.ports, on_event=self._on_event, on_reload=self.reload
        )
        # Hooks for pyike.service (control socket, sd_notify): every core event, start
        # (policies loaded, sockets bound), stop, reload ("start" / "done", error).
        self.counters = status.Counters()
        self.driver.on_ike_message = self.counters.ike_message
        self.observers: list[Callable[[Event], None]] = []
        self.on_started: list[Callable[[], None]] = []
        self.on_stopping: list[Callable[[], None]] = []
        self.reload_hooks: list[Callable[..., None]] = []
        self.driver.on_stop = self._stop_hooks
        self.passive = False  # pyikectl passive: initiate nothing until `active`
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
        self.supervisor = Supervisor(
            lambda: sa_views(self.endpoint), replace_after=options.replace_after
        )
        self._supervisor_timer: asyncio.TimerHandle | None = None
        self._carry_out_soon = False
        self.netwatch: object | None = None
        self._netwatch_task: asyncio.Task | None = None
        # pyike.privsep: start-up done as root before the drop (prepare()), and what
        # the unprivileged process does after a reload or a network change.
        self.prepared = False
        self.after_reload: list[Callable[[], None]] = []
        self.after_network_change: list[Callable[[], None]] = []
        if not options.invalid_spi:
            self.endpoint.invalid_spi_burst = 0

    # ------------------------------------------------------------------ config

    def read_config(self) -> cfg.Config:
        """The parsed configuration file (privsep: read by the parent instead)."""
        return cfg.load_config(
            str(self.options.config_file), self.options.macros, refuse_loose_permissions=True
        )

    def key_store(self) -> keys.KeyStore:
        """Where keys come from (privsep: through the parent once unprivileged)."""
        return keys.KeyStore(self.options.keydir)

    def cert_store(self) -> certs.CertStore:
        """ca/, certs/ and crls/ of the key directory (privsep: read by the parent)."""
        return certs.CertStore.load(self.options.keydir)

    def load(self) -> None:
        try:
            self.config = self.read_config()
        except cfg.ConfigError as e:
            raise DaemonError(str(e)) from e
        except OSError as e:
            raise DaemonError(f"{self.options.config_file}: {e.strerror}") from e
        for warning in self.config.warnings:
            log.warning("%s", warning)
        for note in cfg.check_policies(self.config):  # `pyike -n` shows these as warnings
            log.info("note: %s", note)
        store = self.key_store()
        cert_store = self.cert_store()
        for problem in cert_store.problems:
            log.warning("%s", problem)
        table: dict[cfg.PolicyKey, SaPolicy] = {}
        configured: dict[cfg.PolicyKey, cfg.Policy] = {}
        for key, p in zip(cfg.policy_keys(self.config.policies), self.config.policies, strict=True):
            if self.options.force_active:
                p.active = True
            table[key] = sa_policy(p, store, self.options, self.config.options, key, cert_store)
            configured[key] = p
        self.policies, self.configured = table, configured
        self.supervisor.set_policies(
            (SupervisedPolicy(key, p.active, table[key].peer_id) for key, p in configured.items()),
            self.driver.now(),
        )
        log.info(
            "loaded %d polic%s from %s",
            len(table),
            "y" if len(table) == 1 else "ies",
            self.options.config_file,
        )

    def reload(self) -> str | None:
        """SIGHUP or pyikectl reload: re-read the config; SAs of vanished policies are
        deleted, new active ones start. Returns the error if the file is refused."""
        log.info("reloading %s", self.options.config_file)
        for hook in self.reload_hooks:
            hook("start")
        try:
            self.load()  # the supervisor deletes the SAs of policies that are gone
        except DaemonError as e:
            log.error("reload failed, keeping the old configuration: %s", e)
            for hook in self.reload_hooks:
                hook("done", str(e))
            return str(e)
        for hook in self.after_reload:
            hook()
        self.supervisor.start_active(self.driver.now())
        self._carry_out()
        for hook in self.reload_hooks:
            hook("done", None)
        return None

    def _stop_hooks(self) -> None:
        for hook in self.on_stopping:
            hook()

    def set_passive(self, passive: bool) -> None:
        """pyikectl passive/active (as ikectl): passive starts no IKE SA (existing ones
        stay and are answered; attempts due are dropped); active starts the active
        policies again now."""
        self.passive = passive
        if not passive:
            self.supervisor.retry_now(self.driver.now())
            self._carry_out()

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
        if chosen is None:
            return None
        # By identity: the chosen policy object, not the first policy of its name.
        key = next((k for k, p in self.configured.items() if p is chosen), None)
        return self.policies.get(key) if key is not None else None

    # ------------------------------------------------------------------ supervisor commands

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

    def _sync_stopping(self) -> None:
        if self.driver.stopping and not self.supervisor.stopping:
            self.supervisor.stop()

    def _carry_out(self) -> None:
        """Do what the supervisor asked, send what that queued, re-arm its timer."""
        self._carry_out_soon = False
        self._sync_stopping()
        for _ in range(10000):  # carrying out commands may queue more; bounded anyway
            cmd = self.supervisor.next_command()
            if cmd is None:
                break
            self._do(cmd, self.driver.now())
        self.driver.pump()
        self._arm_supervisor_timer()

    def _do(self, cmd: Command, now: float) -> None:
        if isinstance(cmd, Initiate):
            self._initiate(cmd, now)
            return
        if isinstance(cmd, PollUsage):
            self._poll_usage(now)
            return
        assert isinstance(cmd, DropSa | DeleteSa | CheckAlive)
        sa = self.endpoint.sas.get(cmd.spi)
        if sa is None or sa.state == State.CLOSED:
            return  # it went meanwhile
        if isinstance(cmd, DropSa):
            sa.drop(now, cmd.reason)
        elif isinstance(cmd, DeleteSa):
            sa.delete(now, cmd.reason)
        else:
            sa.check_alive(now)

    def _initiate(self, cmd: Initiate, now: float) -> None:
        """Start an IKE SA for the policy, from the address the kernel would use."""
        key = cmd.policy
        p, policy = self.configured.get(key), self.policies.get(key)
        if p is None or policy is None or self.passive:
            self.supervisor.initiate_failed(key, now, retry=False)
            return
        if cmd.replaces is not None:
            self.counters.event("recovery: replacement")
        addresses = self._peer_addresses(p)  # resolved afresh: the peer may move
        if cmd.replaces is not None:
            old = self.endpoint.sas.get(cmd.replaces)
            if not addresses and old is not None:
                addresses = [old.peer[0]]
            port = self.options.ports[0]
        else:
            # -t, like iked -t: start on the NAT-T port (RFC 7296 2.23 allows
            # IKE_SA_INIT on 4500, with the non-ESP marker); a peer running iked -t
            # listens only there.
            port = self.options.ports[1] if self.options.force_encap else self.options.ports[0]
        if not addresses:
            if p.peer_host is None and p.peer is None:
                log.warning("policy '%s' is active but has no peer; it can only answer", key)
                self.supervisor.initiate_failed(key, now, retry=False)
            else:
                self.supervisor.initiate_failed(key, now)
            return
        peer = (addresses[0], port)
        try:
            local = (ip_address(str(p.local[0])), port) if p.local else local_address_for(peer)
        except OSError as e:
            if cmd.replaces is None:  # a replacement is tried again by the next check
                log.warning("policy '%s': no route to peer %s: %s", key, peer[0], e.strerror)
            self.supervisor.initiate_failed(key, now)
            return
        if cmd.replaces is None:
            retrying = self.supervisor.backoff_of(key) > self.supervisor.backoff_start
            (log.debug if retrying else log.info)(  # retries: -v lines (quiet logs)
                "policy '%s': initiating to [%s]:%d from [%s]:%d",
                key,
                peer[0],
                peer[1],
                local[0],
                local[1],
            )
        sa = self.endpoint.connect(
            policy, (local[0], port), peer, now, initial_contact=cmd.initial_contact
        )
        self.supervisor.initiated(key, sa.our_spi, now)

    def _poll_usage(self, now: float) -> None:
        """Feed the data plane's byte counts to the core (iked's ``lifetime ... bytes``):
        only for the Child SAs that carried traffic since the last poll, so an idle
        daemon with many SAs does no per-SA work here."""
        dp = self.dataplane
        if dp is None:
            return
        for spi_in in dp.take_used():
            child = self.endpoint.child_sa(spi_in)
            if child is not None:
                self.endpoint.note_child_usage(spi_in, dp.octets(child), now)

    def _arm_supervisor_timer(self) -> None:
        if self._supervisor_timer is not None:
            self._supervisor_timer.cancel()
            self._supervisor_timer = None
        deadline = self.supervisor.get_timer()
        if deadline is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not running yet: run() arms it
        delay = max(0.0, deadline - self.driver.now())
        self._supervisor_timer = loop.call_later(delay, self._on_supervisor_timer)

    def _on_supervisor_timer(self) -> None:
        self._supervisor_timer = None
        self._sync_stopping()
        self.supervisor.handle_timer(self.driver.now())
        self._carry_out()

    # ------------------------------------------------------------------ events

    def _on_event(self, event: Event) -> None:
        if isinstance(event, IkeKeysDerived) and self.ike_keylog is not None:
            self.ike_keylog.write(ike_key_record(event))
        elif isinstance(event, IkeSaEstablished | InitialContact | PeerLostSa | IkeSaClosed):
            self._sync_stopping()
            feed_event(self.supervisor, event, self.driver.now())
            if not self._carry_out_soon:
                # After the driver's pump has handed out this batch of events.
                self._carry_out_soon = True
                asyncio.get_running_loop().call_soon(self._carry_out)
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
        for observer in self.observers:  # first: a deleted Child SA's counters still exist
            observer(event)
        moved = PeerMoved | mobike.IkeSaMoved
        if isinstance(event, ChildSaCreated | ChildSaDeleted | moved) and self.on_child:
            self.on_child(event)

    def note_esp(self, spi_in: int, now: float) -> None:
        """The data plane authenticated ESP on inbound SPI ``spi_in`` at ``now``: the
        peer is alive, so its IKE SA's liveness check need not probe (RFC 7296 2.4)."""
        self.endpoint.note_alive(spi_in, now)

    # ------------------------------------------------------------------ recovery

    def reestablish(self, peer_id: tuple[int, bytes] | None, reason: str) -> None:
        """Forget every IKE SA with this peer and start the active policies again now."""
        self.counters.event("recovery: re-established")
        self.supervisor.reestablish(self.driver.now(), peer_id, reason)
        self._carry_out()

    def network_changed(self, reason: str) -> None:
        """netwatch: our links, addresses or routes changed (coalesced burst).

        The supervisor decides; this only finds, per SA, whether its local address
        is still the way to the peer (a routing lookup and a bind: I/O)."""
        self._sync_stopping()
        if self.supervisor.stopping:
            return
        log.info("network changed: %s", reason)
        paths: dict[bytes, PathChange] = {}
        for sa in list(self.endpoint.sas.values()):
            if sa.state == State.CLOSED:
                continue
            try:
                source = local_address_for(sa.peer)[0]
            except OSError:
                paths[sa.our_spi] = PathChange.NO_ROUTE  # the next change will tell
                continue
            if not address_is_ours(sa.local[0]) or (sa.initiator and source != sa.local[0]):
                if mobike.move(sa, (source, sa.local[1]), self.driver.now()):
                    # RFC 4555: same SAs, UPDATE_SA_ADDRESSES from the new address.
                    paths[sa.our_spi] = PathChange.MOBIKE
                    continue
                log.info(
                    "%s: local address %s is no longer the way to [%s] (now %s)",
                    sa.label,
                    sa.local[0],
                    sa.peer[0],
                    source,
                )
                paths[sa.our_spi] = PathChange.MOVED
        for hook in self.after_network_change:
            hook()
        self.supervisor.network_changed(self.driver.now(), paths)
        self._carry_out()

    async def _start_netwatch(self) -> None:
        from pyike.netwatch import NetWatch

        dp = self.dataplane
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

    def tun_plan(self) -> tuple[list, list, int, dict]:
        """The TUN device's addresses, routes, the outer address family and the
        routes' source addresses (pyike.dataplane.route_sources)."""
        from pyike.dataplane import local_addresses_and_routes, route_sources

        assert self.config is not None
        policies = self.config.policies
        local, remote = local_addresses_and_routes(policies)
        v6 = any(p.peer is not None and ip_network(p.peer).version == 6 for p in policies)
        family = socket.AF_INET6 if v6 else socket.AF_INET
        return local, remote, family, route_sources(policies)

    def prepare(self) -> None:
        """Start-up that needs root, done before pyike.privsep drops privileges:
        configuration and keys, the UDP sockets, the TUN device and its routes."""
        from pyike.dataplane import DataPlaneError

        self.load()
        self.driver.open()
        dp = self.dataplane
        if dp is not None:
            try:
                dp.open(*self.tun_plan())  # no event loop runs yet: no thread needed
            except DataPlaneError as e:
                raise DaemonError(str(e)) from e
        self.prepared = True

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        # A SIGHUP during start-up (TUN set-up takes a moment) is kept for when the
        # driver runs, instead of killing the daemon (SIGHUP's default action).
        early_hup: list[bool] = []
        loop.add_signal_handler(signal.SIGHUP, early_hup.append, True)
        if not self.prepared:
            self.load()
            self.driver.open()
        dp = self.dataplane

        def started() -> None:  # the driver's signal handlers are in place now
            if early_hup:
                self.reload()
            # Active policies start now; byte-lifetime polls and suspect checks follow.
            self.supervisor.start(self.driver.now())
            self._carry_out()
            if self.options.netwatch:
                self._netwatch_task = loop.create_task(self._start_netwatch())
            for hook in self.on_started:
                hook()

        try:
            if dp is not None and not self.prepared:
                local, remote, family, sources = self.tun_plan()
                from pyike.dataplane import DataPlaneError

                try:
                    # Netlink set-up blocks (and pyroute2 runs its own loop): a thread.
                    await asyncio.to_thread(dp.open, local, remote, family, sources)
                except DataPlaneError as e:
                    raise DaemonError(str(e)) from e
            if dp is not None:
                dp.start(asyncio.get_running_loop())
            if self.options.natt_keepalive > 0:
                asyncio.get_running_loop().call_later(
                    self.options.natt_keepalive, self._send_keepalives
                )
            await self.driver.run(start=started)
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
            if self._supervisor_timer is not None:
                self._supervisor_timer.cancel()
            if self.netwatch is not None:
                self.netwatch.close()  # type: ignore[attr-defined]
            if dp is not None:
                dp.close()
