"""Recovery policy, sans-IO: which IKE SAs the daemon wants, and what it does when one dies.

The IKE core (pyike.ike) runs each SA by the RFC; deciding *that* an SA must
exist, and what to do when it fails, is iked's daemon policy, kept here in the
core's style: no sockets, clocks or asyncio. Inputs are method calls carrying an
explicit ``now`` and plain values (policy keys, our IKE SPIs, peer IDs); outputs
are a queue of :class:`Command` records (:meth:`Supervisor.next_command`) that the
driver (pyike.daemon) carries out, and a deadline (:meth:`get_timer` /
:meth:`handle_timer`). What the supervisor knows about live SAs comes from a
view callable that returns :class:`SaView` snapshots (values, not IkeSa objects).

What it decides:
- active policies are initiated; one IKE SA per policy. Several policies to one
  peer make several IKE SAs: only the first carries INITIAL_CONTACT (RFC 7296
  2.4), the others wait until it is established, so the peer keeps them all;
- a policy whose attempt fails or whose SA dies retries after a capped
  exponential backoff (1, 2, 4 ... 30 s);
- an active SA whose liveness probe has gone unanswered for ``dpd_interval +
  replace_after`` gets a replacement IKE SA next to it (a restarted peer that does
  not answer INVALID_IKE_SPI, like OpenIKED, is back in seconds, not after a
  minute of retransmissions); once the replacement is up the old SA goes, in
  2.8.3's reauthentication order;
- INVALID_IKE_SPI for one of our SAs (2.21.4, :meth:`peer_lost`) drops that SA,
  probes the other SAs with the peer and starts its policy again now;
- INITIAL_CONTACT from the peer (2.4) drops our older SAs with that identity;
- a network change (:meth:`network_changed`) replaces SAs whose local address is
  gone, probes the others and cuts pending backoffs short;
- every ``usage_interval`` it asks for the data plane's byte counts
  (:class:`PollUsage`), which drive ``lifetime ... bytes``.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum, auto
from ipaddress import IPv4Address, IPv6Address

from pyike.config import PolicyKey
from pyike.registry import IdType

log = logging.getLogger("pyike.supervisor")

Addr = tuple[IPv4Address | IPv6Address, int]
PeerId = tuple[int, bytes]  # (ID type, ID data), as in the ID payload (RFC 7296 3.5)

BACKOFF_START = 1.0
BACKOFF_CAP = 30.0  # re-initiation backoff ceiling (seconds)
USAGE_CHECK_INTERVAL = 5.0  # seconds between byte-lifetime polls
SUSPECT_CHECK_EVERY = 1.0  # seconds between checks for unanswered active SAs
# An active SA whose probe has gone unanswered this long past its dpd_interval
# (two sends) gets a replacement negotiated next to it. A lossy path costs at most
# an extra handshake.
DEFAULT_REPLACE_AFTER = 4.0


def spi_label(spi: bytes) -> str:
    """How the core names an IKE SA in its log lines (IkeSa.label)."""
    return f"spi=0x{spi.hex()}"


# --------------------------------------------------------------------------- inputs


class SaPhase(Enum):
    PENDING = auto()  # IKE_SA_INIT or IKE_AUTH under way
    ESTABLISHED = auto()
    DELETING = auto()  # our DELETE is out
    CLOSED = auto()


@dataclass(frozen=True, slots=True)
class SaView:
    """What the supervisor needs to know about one IKE SA of the core."""

    spi: bytes  # ours: the Endpoint's key for it
    policy: PolicyKey | None  # None for an SA of a policy not from the configuration
    phase: SaPhase
    initiator: bool
    local: Addr
    peer: Addr
    peer_id: PeerId | None  # authenticated ID; None until IKE_AUTH
    policy_peer_id: PeerId | None  # the policy's dstid (None: any peer)
    last_heard: float  # when the peer last proved it is alive (IKE or ESP)
    dpd_interval: float  # probe after this long without news (0: no probes)

    @property
    def peer_identity(self) -> PeerId | None:
        return self.peer_id or self.policy_peer_id


@dataclass(frozen=True, slots=True)
class SupervisedPolicy:
    """A configured policy as far as recovery is concerned."""

    key: PolicyKey
    active: bool  # we initiate it (and re-initiate it when its SA dies)
    peer_id: PeerId | None  # its dstid (None: any peer)


class PathChange(Enum):
    """What the driver found for one SA after a network change."""

    SAME = auto()  # its local address is still the way to the peer: probe it
    MOVED = auto()  # its local address is gone or no longer the source: replace it
    NO_ROUTE = auto()  # no route to the peer at all: wait for the next change
    MOBIKE = auto()  # moved by UPDATE_SA_ADDRESSES (RFC 4555, pyike.ike.mobike): nothing more


# --------------------------------------------------------------------------- outputs


class Command:
    """Base of what the supervisor asks its driver to do."""


@dataclass(frozen=True, slots=True)
class Initiate(Command):
    """Start an IKE SA for ``policy``; the driver picks the addresses (a fresh DNS
    lookup each time: the peer may move) and answers with
    :meth:`Supervisor.initiated` or :meth:`Supervisor.initiate_failed`."""

    policy: PolicyKey
    initial_contact: bool  # send INITIAL_CONTACT (2.4): no other SA with the peer
    replaces: bytes | None = None  # a replacement next to this unanswered SA


@dataclass(frozen=True, slots=True)
class DropSa(Command):
    """Forget the SA without a DELETE: the peer lost it, or cannot be reached from it."""

    spi: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class DeleteSa(Command):
    """Delete the SA with an INFORMATIONAL DELETE (the peer still answers)."""

    spi: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class CheckAlive(Command):
    """Probe the SA now (or retransmit now): is the path back?"""

    spi: bytes


@dataclass(frozen=True, slots=True)
class PollUsage(Command):
    """Hand the data plane's byte counts of every Child SA to the core."""


@dataclass(frozen=True, slots=True)
class PolicyStatus:
    """One policy as the supervisor sees it (for a control socket, logs, tests)."""

    key: PolicyKey
    active: bool
    sa: bytes | None  # the SPI of its current IKE SA
    replacement: bytes | None  # a replacement being negotiated next to it
    next_attempt: float | None  # when it tries again (backoff), if waiting
    backoff: float  # the wait after the next failure


# --------------------------------------------------------------------------- supervisor


class Supervisor:
    """Recovery policy for one daemon's IKE SAs; see the module docstring."""

    def __init__(
        self,
        view: Callable[[], Iterable[SaView]],
        *,
        replace_after: float = DEFAULT_REPLACE_AFTER,
        backoff_start: float = BACKOFF_START,
        backoff_cap: float = BACKOFF_CAP,
        usage_interval: float = USAGE_CHECK_INTERVAL,
        suspect_every: float = SUSPECT_CHECK_EVERY,
    ) -> None:
        self._view = view
        self.replace_after = replace_after  # 0: never negotiate a replacement
        self.backoff_start = backoff_start
        self.backoff_cap = backoff_cap
        self.usage_interval = usage_interval
        self.suspect_every = suspect_every
        self.policies: dict[PolicyKey, SupervisedPolicy] = {}
        self.active: dict[PolicyKey, bytes] = {}  # policy -> the SPI of its IKE SA
        self.replacing: dict[PolicyKey, bytes] = {}  # policy -> replacement in flight
        self.retry_at: dict[PolicyKey, float] = {}  # policy -> next attempt
        self._backoff: dict[PolicyKey, float] = {}  # policy -> the wait after the next failure
        self._starting: dict[PolicyKey, Initiate] = {}  # sent, not yet answered by the driver
        self._closing: set[bytes] = set()  # SPIs we asked to drop or delete
        self._commands: deque[Command] = deque()
        self._next_usage = math.inf
        self._next_suspect_check = math.inf
        self.started = False
        self.stopping = False

    # ------------------------------------------------------------------ outputs

    def next_command(self) -> Command | None:
        return self._commands.popleft() if self._commands else None

    def get_timer(self) -> float | None:
        if not self.started:
            return None
        deadline = min([self._next_usage, self._next_suspect_check, *self.retry_at.values()])
        return None if deadline == math.inf else deadline

    def handle_timer(self, now: float) -> None:
        if not self.started:
            return
        for key, at in sorted(self.retry_at.items(), key=lambda item: item[1]):
            if now >= at:
                self._initiate(key, now)
        if now >= self._next_usage:
            self._next_usage = now + self.usage_interval
            self._commands.append(PollUsage())
        if now >= self._next_suspect_check:
            self._next_suspect_check = now + self.suspect_every
            if not self.stopping:
                self._check_suspects(now)

    # ------------------------------------------------------------------ configuration

    def set_policies(self, policies: Iterable[SupervisedPolicy], now: float) -> None:
        """A (re)loaded configuration; the SAs of policies that are gone are deleted."""
        self.policies = {p.key: p for p in policies}
        for key, spi in list(self.active.items()):
            if key not in self.policies:
                self._close(spi, "policy removed by reload", delete=True)
        for key in [k for k in self.retry_at if k not in self.policies]:
            del self.retry_at[key]

    def start(self, now: float) -> None:
        """The driver runs: start the active policies and the periodic checks."""
        self.started = True
        self._next_usage = now + self.usage_interval
        if self.replace_after > 0:
            self._next_suspect_check = now + self.suspect_every
        self.start_active(now)

    def stop(self) -> None:
        """The daemon shuts down: no more attempts, no replacements."""
        self.stopping = True
        self.retry_at.clear()

    def start_active(self, now: float) -> None:
        """Initiate every active policy that has no SA, attempt or replacement yet."""
        if not self.started or self.stopping:
            return
        for key, p in self.policies.items():
            if (
                p.active
                and key not in self.active
                and key not in self.retry_at
                and key not in self.replacing
                and key not in self._starting
            ):
                self._initiate(key, now)

    # ------------------------------------------------------------------ driver answers

    def initiated(self, key: PolicyKey, spi: bytes, now: float) -> None:
        """The driver started the IKE SA ``spi`` for an :class:`Initiate`."""
        cmd = self._starting.pop(key, None)
        if cmd is not None and cmd.replaces is not None:
            self.replacing[key] = spi
        else:
            self.active[key] = spi

    def initiate_failed(self, key: PolicyKey, now: float, *, retry: bool = True) -> None:
        """The driver could not start it (no address, no route...). A replacement is
        tried again at the next check while the old SA lives; a first attempt backs
        off unless ``retry`` is False (the policy has no peer to initiate to)."""
        cmd = self._starting.pop(key, None)
        if cmd is not None and cmd.replaces is not None:
            return
        if retry and not self.stopping:
            self._schedule_retry(key, now)

    # ------------------------------------------------------------------ core events

    def sa_established(self, now: float, spi: bytes, replaces: bytes | None = None) -> None:
        """IkeSaEstablished; ``replaces`` is set for an IKE SA rekey (2.8: the
        children moved to ``spi``, which takes over the old SA's place)."""
        if replaces is not None:
            for key, known in list(self.active.items()):
                if known == replaces:
                    self.active[key] = spi
        sa = self._views().get(spi)
        if sa is not None and sa.policy is not None:  # ours or the peer's: its policy works
            self._backoff.pop(sa.policy, None)
        self._replacement_done(spi, now)
        self.start_active(now)

    def sa_closed(self, now: float, spi: bytes) -> None:
        """IkeSaClosed: a policy whose SA died tries again after its backoff."""
        self._closing.discard(spi)
        replaced = self._policy_of(spi, self.replacing)
        if replaced is not None:
            # The replacement failed; the suspect check tries again while the old one lives.
            del self.replacing[replaced]
            if replaced not in self.active and not self.stopping:
                self._schedule_retry(replaced, now)
            return
        key = self._policy_of(spi, self.active)
        if key is None:
            return
        del self.active[key]
        if key in self.replacing:
            return  # its replacement is already being negotiated
        p = self.policies.get(key)
        if not self.stopping and p is not None and p.active:
            self._schedule_retry(key, now)

    def peer_lost(self, now: float, spi: bytes) -> None:
        """PeerLostSa: the peer answered INVALID_IKE_SPI for ``spi`` (2.21.4); it
        restarted, most likely. Only that SA is dropped (the hint names it, and a
        newer SA with the same peer may be fine), its policy starts again now, and
        the other SAs with this peer are probed at once: after a restart they are
        all gone."""
        views = self._views()
        sa = views.get(spi)
        if sa is None or sa.phase == SaPhase.CLOSED or spi in self._closing:
            return
        self._forget(spi)
        self._close(spi, "the peer does not know it (INVALID_IKE_SPI): it restarted?")
        for other in views.values():
            if (
                other.spi != spi
                and other.phase == SaPhase.ESTABLISHED
                and other.spi not in self._closing
                and other.peer_identity == sa.peer_identity
            ):
                self._commands.append(CheckAlive(other.spi))
        self.retry_now(now)

    def initial_contact(self, now: float, spi: bytes, peer_id: PeerId) -> None:
        """InitialContact (2.4): the peer lost its state; our older SAs with it are stale."""
        for other in self._views().values():
            if other.spi != spi and other.peer_id == peer_id and other.phase != SaPhase.CLOSED:
                log.info(
                    "%s: replaced by %s after INITIAL_CONTACT", spi_label(other.spi), spi_label(spi)
                )
                self._close(other.spi, "peer sent INITIAL_CONTACT on a new SA")

    # ------------------------------------------------------------------ the network

    def network_changed(self, now: float, paths: Mapping[bytes, PathChange]) -> None:
        """Our links, addresses or routes changed. ``paths`` says, per SPI, what the
        driver found (SAs not listed: :attr:`PathChange.SAME`). Without MOBIKE (RFC
        4555) an SA cannot move to another address: SAs whose address is gone are
        replaced, with every other SA to that peer; the rest are probed now."""
        if self.stopping:
            return
        moved: list[PeerId | None] = []
        for sa in self._views().values():
            if sa.phase == SaPhase.CLOSED or sa.spi in self._closing:
                continue
            change = paths.get(sa.spi, PathChange.SAME)
            if change == PathChange.MOVED:
                if sa.peer_identity not in moved:
                    moved.append(sa.peer_identity)
            elif change == PathChange.SAME:
                self._commands.append(CheckAlive(sa.spi))
        for peer_id in moved:
            self.reestablish(now, peer_id, "local address changed")
        self.retry_now(now)

    def reestablish(self, now: float, peer_id: PeerId | None, reason: str) -> None:
        """Forget every IKE SA with this peer and start the active policies again now.

        No DELETE is sent: the peer has lost these SAs, or we cannot reach it from
        their address any more. The first new IKE SA carries INITIAL_CONTACT, so a
        peer that still holds the old ones drops them (RFC 7296 2.4)."""
        dropped = 0
        for sa in self._views().values():
            if sa.phase == SaPhase.CLOSED or sa.peer_identity != peer_id:
                continue
            self._forget(sa.spi)  # no backoff retry for this one
            self._close(sa.spi, f"re-establishing: {reason}")
            dropped += 1
        if dropped:
            log.info("re-establishing %d IKE SA(s) with %s: %s", dropped, _id_text(peer_id), reason)
        self.retry_now(now)

    def retry_now(self, now: float) -> None:
        """Policies waiting out their backoff try again now (the network changed)."""
        for key in list(self.retry_at):
            del self.retry_at[key]
            self._backoff.pop(key, None)
        self.start_active(now)

    # ------------------------------------------------------------------ questions

    def backoff_of(self, key: PolicyKey) -> float:
        """The wait before the attempt after the next failure of ``key``."""
        return self._backoff.get(key, self.backoff_start)

    def status(self) -> list[PolicyStatus]:
        """Every configured policy, in configuration order."""
        return [
            PolicyStatus(
                key,
                p.active,
                self.active.get(key),
                self.replacing.get(key),
                self.retry_at.get(key),
                self.backoff_of(key),
            )
            for key, p in self.policies.items()
        ]

    # ------------------------------------------------------------------ internals

    def _views(self) -> dict[bytes, SaView]:
        return {sa.spi: sa for sa in self._view()}

    def _initiate(self, key: PolicyKey, now: float) -> None:
        self.retry_at.pop(key, None)
        p = self.policies.get(key)
        if p is None or self.stopping:
            return
        # INITIAL_CONTACT goes only on the first IKE SA to a peer (2.4): the others
        # start once it is established, without it, so the peer keeps them all.
        peer_state = self._peer_state(p.peer_id)
        if peer_state == SaPhase.PENDING:
            log.debug("policy '%s': waiting for the first IKE SA to this peer", key)
            return
        cmd = Initiate(key, initial_contact=peer_state != SaPhase.ESTABLISHED)
        self._starting[key] = cmd
        self._commands.append(cmd)

    def _schedule_retry(self, key: PolicyKey, now: float) -> None:
        """Capped exponential backoff before the next attempt (a dynamic IP, a peer
        that is down): 1, 2, 4 ... ``backoff_cap`` seconds."""
        delay = self._backoff.get(key, self.backoff_start)
        self._backoff[key] = min(delay * 2, self.backoff_cap)
        log.info("policy '%s': next attempt in %.0f s", key, delay)
        self.retry_at[key] = now + delay

    def _peer_state(self, peer_id: PeerId | None) -> SaPhase | None:
        """ESTABLISHED, PENDING or None for our IKE SAs with this peer identity."""
        states = {
            sa.phase
            for sa in self._views().values()
            if sa.spi not in self._closing
            and (sa.policy_peer_id == peer_id or sa.peer_id == peer_id)
        }
        if SaPhase.ESTABLISHED in states:
            return SaPhase.ESTABLISHED
        starting = any(
            (p := self.policies.get(k)) is not None and p.peer_id == peer_id for k in self._starting
        )
        if starting or states - {SaPhase.CLOSED, SaPhase.DELETING}:
            return SaPhase.PENDING
        return None

    def _check_suspects(self, now: float) -> None:
        """Start a replacement for each active SA whose probe went unanswered."""
        views = self._views()
        for key, spi in list(self.active.items()):
            sa = views.get(spi)
            if (
                sa is None
                or key in self.replacing
                or key in self._starting
                or sa.phase != SaPhase.ESTABLISHED
                or spi in self._closing
                or sa.dpd_interval <= 0
                or now - sa.last_heard < sa.dpd_interval + self.replace_after
            ):
                continue
            log.info(
                "%s: no answer for %.0f s; negotiating a replacement next to it",
                spi_label(spi),
                now - sa.last_heard,
            )
            # Fresh SPIs; no INITIAL_CONTACT: the other policies' SAs with this peer
            # may be fine (RFC 7296 2.4).
            cmd = Initiate(key, initial_contact=False, replaces=spi)
            self._starting[key] = cmd
            self._commands.append(cmd)

    def _replacement_done(self, spi: bytes, now: float) -> None:
        """A replacement is up: it takes over; the old SA goes (2.8.3's
        reauthentication order: the new SA first, then the old one is deleted)."""
        key = self._policy_of(spi, self.replacing)
        if key is None:
            return
        del self.replacing[key]
        old = self.active.get(key)
        self.active[key] = spi
        sa = self._views().get(old) if old is not None else None
        if sa is None or old is None or sa.phase == SaPhase.CLOSED:
            return
        reason = "replaced by " + spi_label(spi)
        # It answers again: tell the peer. Silent: the peer forgot it.
        self._close(old, reason, delete=now - sa.last_heard < sa.dpd_interval)

    def _close(self, spi: bytes, reason: str, *, delete: bool = False) -> None:
        self._closing.add(spi)
        self._commands.append(DeleteSa(spi, reason) if delete else DropSa(spi, reason))

    def _forget(self, spi: bytes) -> None:
        """Take ``spi`` out of the policy tables, so that closing it starts no backoff."""
        for table in (self.active, self.replacing):
            for key, known in list(table.items()):
                if known == spi:
                    del table[key]

    @staticmethod
    def _policy_of(spi: bytes, table: Mapping[PolicyKey, bytes]) -> PolicyKey | None:
        return next((key for key, known in table.items() if known == spi), None)


def _id_text(peer_id: PeerId | None) -> str:
    """``fqdn/namorar.example.com``, ``ipv4/192.0.2.2``, as the core writes IDs."""
    if peer_id is None:
        return "any peer"
    id_type, data = peer_id
    try:
        if id_type == IdType.ID_IPV4_ADDR:
            return f"ipv4/{IPv4Address(data)}"
        if id_type == IdType.ID_IPV6_ADDR:
            return f"ipv6/{IPv6Address(data)}"
    except ValueError:
        pass
    if id_type in (IdType.ID_FQDN, IdType.ID_RFC822_ADDR):
        kind = "fqdn" if id_type == IdType.ID_FQDN else "ufqdn"
        return f"{kind}/{data.decode('ascii', 'replace')}"
    return f"{IdType.name_of(id_type)}/{data.hex()}"


__all__ = [
    "Addr",
    "CheckAlive",
    "Command",
    "DeleteSa",
    "DropSa",
    "Initiate",
    "PathChange",
    "PeerId",
    "PolicyStatus",
    "PollUsage",
    "SaPhase",
    "SaView",
    "SupervisedPolicy",
    "Supervisor",
    "spi_label",
]
