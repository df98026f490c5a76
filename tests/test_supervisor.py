"""The recovery supervisor (pyike.supervisor) on a fake clock, no sockets.

Two kinds of tests, one per recovery path at least:
- with the real IKE core: a home Endpoint whose supervisor's commands are carried
  out the way pyike.daemon does (connect, drop, delete, probe), against a VM
  Endpoint on the fake wire of tests/ike_pair.py; the VM restarts, goes silent or
  comes back, and the test watches which SAs exist and when;
- with value snapshots only (SaView), for the decisions that need no handshake:
  backoff growth and cap, INITIAL_CONTACT, byte-lifetime polls, keys of policies
  that share a name.
"""

from __future__ import annotations

import dataclasses
from ipaddress import ip_address

import pytest

from pyike.config import PolicyKey
from pyike.daemon import feed_event, sa_views
from pyike.ike import Endpoint, IkeSa, IkeSaClosed, SaPolicy, State
from pyike.supervisor import (
    BACKOFF_CAP,
    CheckAlive,
    Command,
    DeleteSa,
    DropSa,
    Initiate,
    PathChange,
    PolicyStatus,
    PollUsage,
    SaPhase,
    SaView,
    SupervisedPolicy,
    Supervisor,
)
from tests.ike_pair import HOME, VM, VM_ID, Pair, default_pair

KEY = PolicyKey("home")


def keyed(policy: SaPolicy, key: PolicyKey) -> SaPolicy:
    return dataclasses.replace(policy, key=key)


class Home:
    """The home daemon without sockets: its Endpoint, its supervisor, and the
    carrying out of the supervisor's commands (what pyike.daemon.Daemon._do does)."""

    def __init__(self, replace_after: float = 4.0, **home_kw: object) -> None:
        self.p: Pair = default_pair(
            home_kw={"dpd_interval": 5.0, **home_kw}, vm_kw={"dpd_interval": 0.0}
        )
        self.policy = keyed(self.p.home_policy, KEY)
        self.sup = Supervisor(lambda: sa_views(self.p.home), replace_after=replace_after)
        self.sup.set_policies([SupervisedPolicy(KEY, True, VM_ID)], self.p.now)
        self.unreachable = False  # Initiate fails (no route), as the daemon reports it
        self.done: list[tuple[float, Command]] = []  # every command carried out, with its time
        self._seen = 0

    @property
    def now(self) -> float:
        return self.p.now

    def start(self) -> None:
        self.sup.start(self.now)
        self.settle()

    def sa(self) -> IkeSa:
        return self.p.home.sas[self.sup.active[KEY]]

    def restart_vm(self, *, answers_invalid_spi: bool = True) -> None:
        self.p.vm = Endpoint(lambda *_: self.p.vm_policy)
        if not answers_invalid_spi:
            self.p.vm.invalid_spi_burst = 0  # like OpenIKED: silence

    def carry_out(self) -> bool:
        did = False
        while (cmd := self.sup.next_command()) is not None:
            did = True
            self.done.append((self.now, cmd))
            if isinstance(cmd, Initiate):
                if self.unreachable:
                    self.sup.initiate_failed(cmd.policy, self.now)
                    continue
                sa = self.p.home.connect(
                    self.policy, HOME, VM, self.now, initial_contact=cmd.initial_contact
                )
                self.sup.initiated(cmd.policy, sa.our_spi, self.now)
            elif isinstance(cmd, DropSa | DeleteSa | CheckAlive):
                sa = self.p.home.sas.get(cmd.spi)
                if sa is None or sa.state == State.CLOSED:
                    continue
                if isinstance(cmd, DropSa):
                    sa.drop(self.now, cmd.reason)
                elif isinstance(cmd, DeleteSa):
                    sa.delete(self.now, cmd.reason)
                else:
                    sa.check_alive(self.now)
        return did

    def settle(self) -> None:
        for _ in range(100):
            self.p.run()
            new = self.p.home_events[self._seen :]
            self._seen = len(self.p.home_events)
            for event in new:
                feed_event(self.sup, event, self.now)
            if not self.carry_out() and not new:
                return
        raise AssertionError("supervisor and core did not go quiet")

    def advance(self, seconds: float) -> None:
        """Move the clock, firing the core's and the supervisor's timers on the way."""
        end = self.now + seconds
        for _ in range(10000):
            timers = (self.p.home.get_timer(), self.p.vm.get_timer(), self.sup.get_timer())
            due = min((t for t in timers if t is not None), default=None)
            if due is None or due > end:
                break
            self.p.now = max(self.p.now, due)
            self.p.home.handle_timer(self.now)
            self.p.vm.handle_timer(self.now)
            self.sup.handle_timer(self.now)
            self.settle()
        self.p.now = end
        self.settle()

    def commands(self, cls: type, since: float = 0.0) -> list:
        return [c for t, c in self.done if isinstance(c, cls) and t >= since]

    def closed(self, spi: bytes) -> IkeSaClosed:
        return next(e for e in self.p.events("home", IkeSaClosed) if e.spi == spi)


@pytest.fixture
def home() -> Home:
    h = Home()
    h.start()
    assert h.sa().state == State.ESTABLISHED
    h.advance(1.0)  # the faults come later than the start
    return h


# --------------------------------------------------------------------------- with the core


def test_active_policy_starts_with_initial_contact(home: Home) -> None:
    (first,) = home.commands(Initiate)
    assert first == Initiate(KEY, initial_contact=True)
    assert len(home.p.vm.sas) == 1
    assert home.sup.get_timer() is not None  # the periodic checks are armed


def test_peer_restarted_invalid_ike_spi_reestablishes_at_once(home: Home) -> None:
    old = home.sup.active[KEY]
    fault, heard = home.now, home.sa().last_heard()
    home.restart_vm()
    home.advance(5.0)  # the idle probe goes out after 5 s; the new VM says INVALID_IKE_SPI
    assert "INVALID_IKE_SPI" in home.closed(old).reason
    new = home.sup.active[KEY]
    assert new != old and home.sa().state == State.ESTABLISHED
    (again,) = home.commands(Initiate, since=fault)
    # No other SA with the peer is left: the new one says INITIAL_CONTACT (2.4).
    assert again == Initiate(KEY, initial_contact=True)
    started = next(t for t, c in home.done if c is again)
    assert started == heard + 5.0  # at the first probe: its answer is immediate here
    assert len(home.p.vm.sas) == 1  # the restarted VM holds exactly the new SA
    assert not home.sup.retry_at  # no backoff involved


def test_peer_silent_gets_a_replacement_then_the_old_sa_is_dropped(home: Home) -> None:
    old = home.sup.active[KEY]
    fault, heard = home.now, home.sa().last_heard()
    home.restart_vm(answers_invalid_spi=False)  # OpenIKED after a restart: no answer at all
    home.advance(heard + 8.9 - home.now)
    assert not home.commands(Initiate, since=fault)  # dpd 5 + replace_after 4 not reached
    home.advance(1.2)
    (replacement,) = home.commands(Initiate, since=fault)
    assert replacement == Initiate(KEY, initial_contact=False, replaces=old)
    started = next(t for t, c in home.done if c is replacement)
    assert 9.0 <= started - heard <= 10.0  # checked once a second
    new = home.sup.active[KEY]
    assert new != old and home.sa().state == State.ESTABLISHED and not home.sup.replacing
    # Silent for longer than dpd_interval: dropped (no DELETE the peer could not read).
    (drop,) = home.commands(DropSa, since=fault)
    assert drop.spi == old and drop.reason.startswith("replaced by spi=0x" + new.hex())
    assert home.closed(old).reason == drop.reason
    assert old not in home.p.home.sas and not home.commands(DeleteSa)


def test_replacement_of_an_sa_that_answers_again_deletes_the_old_one(home: Home) -> None:
    old = home.sup.active[KEY]
    fault = home.now
    home.p.hook = lambda t: []  # the path is dead both ways
    home.advance(9.5)  # the replacement is out, unanswered
    assert KEY in home.sup.replacing
    home.p.hook = lambda t: [t]
    home.sa().check_alive(home.now)  # the old SA hears from the peer again...
    home.settle()
    home.advance(2.0)  # ...and the replacement's retransmission completes it
    new = home.sup.active[KEY]
    assert new != old
    (delete,) = home.commands(DeleteSa, since=fault)
    assert delete.spi == old  # it answers: a proper DELETE (2.8.3's order)
    assert not home.commands(DropSa, since=fault)


def test_network_changed_moved_address_drops_and_reinitiates(home: Home) -> None:
    old = home.sup.active[KEY]
    now = home.now
    home.sup.network_changed(now, {old: PathChange.MOVED})
    home.settle()
    (drop,) = home.commands(DropSa, since=now)
    assert drop == DropSa(old, "re-establishing: local address changed")
    (again,) = home.commands(Initiate, since=now)
    assert again == Initiate(KEY, initial_contact=True)  # the old one is gone: 2.4
    assert home.sup.active[KEY] != old and home.sa().state == State.ESTABLISHED
    assert not home.sup.retry_at  # dropped on purpose: no backoff


def test_network_changed_same_path_probes_now(home: Home) -> None:
    spi = home.sup.active[KEY]
    home.p.wire_log.clear()
    home.sup.network_changed(home.now, {})
    home.settle()
    assert home.commands(CheckAlive) == [CheckAlive(spi)]
    assert [name for name, _t in home.p.wire_log] == ["home->vm", "vm->home"]  # the probe
    assert home.sup.active[KEY] == spi  # nothing replaced


def test_network_changed_without_route_leaves_the_sa_alone(home: Home) -> None:
    spi = home.sup.active[KEY]
    home.sup.network_changed(home.now, {spi: PathChange.NO_ROUTE})
    home.settle()
    assert not home.commands(CheckAlive) and not home.commands(DropSa)
    assert home.sup.active[KEY] == spi


def test_initiate_failure_retries_with_backoff_and_resets_once_up() -> None:
    h = Home()
    h.unreachable = True  # no route to the peer yet
    h.start()
    assert h.sup.retry_at[KEY] == h.now + 1.0
    h.advance(1.0)
    assert h.sup.retry_at[KEY] == pytest.approx(h.now + 2.0)
    h.unreachable = False  # the route is there now
    h.advance(2.0)
    assert h.sa().state == State.ESTABLISHED
    assert [t - h.done[0][0] for t, _c in h.done if isinstance(_c, Initiate)] == [0, 1.0, 3.0]
    assert h.sup.backoff_of(KEY) == 1.0  # established: the next failure starts at 1 s again


def test_network_change_cuts_a_pending_backoff_short() -> None:
    h = Home()
    h.unreachable = True
    h.start()
    for _ in range(4):  # 1 + 2 + 4 + 8 s of failures: the next wait is 16 s
        h.advance(h.sup.retry_at[KEY] - h.now)
    assert h.sup.retry_at[KEY] - h.now == 16.0
    (waiting,) = h.sup.status()
    assert waiting == PolicyStatus(KEY, True, None, None, h.now + 16.0, BACKOFF_CAP)
    h.unreachable = False
    h.sup.network_changed(h.now, {})
    h.settle()
    assert h.sa().state == State.ESTABLISHED and not h.sup.retry_at
    assert h.sup.status() == [PolicyStatus(KEY, True, h.sup.active[KEY], None, None, 1.0)]


def test_sa_that_dies_is_reinitiated_after_the_backoff() -> None:
    home = Home(replace_after=0.0)  # no replacement: only the retransmission limit
    home.start()
    old = home.sup.active[KEY]
    home.p.hook = lambda t: []  # the peer is gone: the home SA retransmits, then gives up
    home.advance(5.0 + 2 + 4 + 8 + 16 + 32 + 0.5)
    assert "sent 5 times" in home.closed(old).reason
    assert KEY not in home.sup.active and home.sup.retry_at[KEY] == pytest.approx(home.now + 0.5)
    home.p.hook = lambda t: [t]
    home.advance(1.0)
    assert home.sa().state == State.ESTABLISHED


def test_ike_sa_rekey_moves_the_policy_to_the_new_sa() -> None:
    home = Home(ike_lifetime=20.0)
    home.start()
    old = home.sup.active[KEY]
    home.advance(20.0)  # soft lifetime at 85-90 %: rekeyed (RFC 7296 2.8)
    new = home.sup.active[KEY]
    assert new != old and home.sa().state == State.ESTABLISHED
    assert home.closed(old).error is False  # the rekey's orderly DELETE
    # The old SA's end is no failure: no backoff, no new IKE SA from scratch.
    assert len(home.commands(Initiate)) == 1 and not home.sup.retry_at
    assert len(home.p.vm.sas) == 1


def test_stop_ends_retries_and_replacements(home: Home) -> None:
    old = home.sup.active[KEY]
    stopped = home.now
    home.sup.stop()
    home.p.hook = lambda t: []
    home.advance(70.0)
    assert "sent" in home.closed(old).reason
    assert not home.commands(Initiate, since=stopped) and not home.sup.retry_at


def test_reload_without_the_policy_deletes_its_sa(home: Home) -> None:
    spi = home.sup.active[KEY]
    home.sup.set_policies([], home.now)
    home.settle()
    assert home.commands(DeleteSa) == [DeleteSa(spi, "policy removed by reload")]
    assert spi not in home.p.home.sas and not home.sup.retry_at and not home.sup.active


# --------------------------------------------------------------------------- values only

PEER = (2, b"namorar.example.com")
A = (ip_address("192.0.2.1"), 500)
B = (ip_address("192.0.2.2"), 500)


def view(spi: bytes, phase: SaPhase = SaPhase.ESTABLISHED, **kw: object) -> SaView:
    fields: dict[str, object] = {
        "spi": spi,
        "policy": None,
        "phase": phase,
        "initiator": True,
        "local": A,
        "peer": B,
        "peer_id": PEER,
        "policy_peer_id": PEER,
        "last_heard": 0.0,
        "dpd_interval": 5.0,
        **kw,
    }
    return SaView(**fields)  # type: ignore[arg-type]


def drain(sup: Supervisor) -> list[Command]:
    out = []
    while (c := sup.next_command()) is not None:
        out.append(c)
    return out


def test_backoff_doubles_up_to_the_cap() -> None:
    sup = Supervisor(list, replace_after=0)
    sup.set_policies([SupervisedPolicy(KEY, True, PEER)], 0.0)
    now = 100.0
    sup.start(now)
    waits = []
    for _ in range(9):
        (cmd,) = [c for c in drain(sup) if isinstance(c, Initiate)]
        sup.initiate_failed(cmd.policy, now)
        waits.append(sup.retry_at[KEY] - now)
        now = sup.retry_at[KEY]
        sup.handle_timer(now)
    assert waits == [1, 2, 4, 8, 16, BACKOFF_CAP, BACKOFF_CAP, BACKOFF_CAP, BACKOFF_CAP]
    assert BACKOFF_CAP == 30.0


def test_initial_contact_drops_older_sas_of_that_identity_only() -> None:
    other_peer = (2, b"other.example.com")
    sas = [
        view(b"old-one!"),
        view(b"old-two!", SaPhase.PENDING, initiator=False),
        view(b"new-one!", initiator=False),
        view(b"notmine!", peer_id=other_peer, policy_peer_id=other_peer),
        view(b"no-id-ye", SaPhase.PENDING, peer_id=None),  # not authenticated yet
    ]
    sup = Supervisor(lambda: sas)
    sup.initial_contact(10.0, b"new-one!", PEER)
    assert drain(sup) == [
        DropSa(b"old-one!", "peer sent INITIAL_CONTACT on a new SA"),
        DropSa(b"old-two!", "peer sent INITIAL_CONTACT on a new SA"),
    ]


def test_byte_lifetime_polls_every_five_seconds() -> None:
    sup = Supervisor(list, replace_after=0)
    assert sup.get_timer() is None  # nothing before the daemon runs
    sup.start(50.0)
    assert sup.get_timer() == 55.0
    polls = []
    now = 50.0
    while now < 70.0:
        now = sup.get_timer() or now + 1
        sup.handle_timer(now)
        polls += [now for c in drain(sup) if isinstance(c, PollUsage)]
    assert polls == [55.0, 60.0, 65.0, 70.0]


def test_policies_sharing_a_name_each_get_their_sa() -> None:
    """Two policies called "vpn" to one peer: two IKE SAs, the second without
    INITIAL_CONTACT and only once the first is up (RFC 7296 2.4)."""
    first, second = PolicyKey("vpn"), PolicyKey("vpn", 1)
    assert str(second) == "vpn#2" and first != second
    sas: list[SaView] = []
    sup = Supervisor(lambda: sas)
    sup.set_policies(
        [SupervisedPolicy(first, True, PEER), SupervisedPolicy(second, True, PEER)], 0.0
    )
    sup.start(0.0)
    assert drain(sup) == [Initiate(first, initial_contact=True)]
    sup.initiated(first, b"spi-one!", 0.0)
    sas.append(view(b"spi-one!", SaPhase.PENDING, policy=first, peer_id=None))
    sup.start_active(0.5)
    assert drain(sup) == []  # waits for the first IKE SA to the peer
    sas[0] = view(b"spi-one!", policy=first)
    sup.sa_established(1.0, b"spi-one!")
    assert drain(sup) == [Initiate(second, initial_contact=False)]
    sup.initiated(second, b"spi-two!", 1.0)
    assert sup.active == {first: b"spi-one!", second: b"spi-two!"}
    # The first one dies: only its own policy retries.
    sas.pop(0)
    sup.sa_closed(2.0, b"spi-one!")
    assert list(sup.retry_at) == [first] and sup.active == {second: b"spi-two!"}


def test_peer_lost_probes_the_other_sas_with_that_peer() -> None:
    one, two = PolicyKey("one"), PolicyKey("two")
    sas = [view(b"spi-one!", policy=one), view(b"spi-two!", policy=two)]
    sup = Supervisor(lambda: sas)
    sup.set_policies([SupervisedPolicy(one, True, PEER), SupervisedPolicy(two, True, PEER)], 0.0)
    sup.start(0.0)
    drain(sup)
    sup.initiated(one, b"spi-one!", 0.0)
    sup.initiated(two, b"spi-two!", 0.0)
    sup.peer_lost(10.0, b"spi-one!")
    assert drain(sup) == [
        DropSa(b"spi-one!", "the peer does not know it (INVALID_IKE_SPI): it restarted?"),
        CheckAlive(b"spi-two!"),
        # the other SA is still up: no INITIAL_CONTACT, it would make the peer drop it
        Initiate(one, initial_contact=False),
    ]
    sup.peer_lost(10.5, b"spi-one!")  # the hint again (a retransmission): once is enough
    assert drain(sup) == []
