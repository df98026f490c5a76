"""Liveness pieces of the IKE core, two-party on a fake wire (no sockets).

What the fault tests in namespaces rely on: a restarted peer answers our
probe with INVALID_IKE_SPI (RFC 7296 2.21.4) and we hear about it at once;
retransmissions wait at most ``retransmit_cap``; ``check_alive`` probes (or
retransmits) right away when the network changed.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from pyike import wire
from pyike.ike import (
    ChildSaCreated,
    ChildSaInfo,
    Endpoint,
    IkeSaClosed,
    IkeSaEstablished,
    PeerLostSa,
    PeerMoved,
    State,
    Transmit,
)
from pyike.limits import Limits
from pyike.registry import ExchangeType, NotifyType
from tests.ike_pair import HOME, VM, default_pair


def sent(p, direction: str) -> list[tuple[str, int, bool, list[int]]]:
    """(exchange, message ID, is response, top-level notify types) of each datagram."""
    out = []
    for name, t in p.wire_log:
        if name != direction:
            continue
        msg = wire.parse_message(t.data)
        notifies = [x.type for x in msg.payloads if isinstance(x, wire.NotifyPayload)]
        out.append((ExchangeType.name_of(msg.exchange), msg.message_id, msg.is_response, notifies))
    return out


def established_pair(**home_kw: object):
    p = default_pair(home_kw={"dpd_interval": 5.0, **home_kw}, vm_kw={"dpd_interval": 0.0})
    p.connect()
    p.run()
    (sa,) = p.home.sas.values()
    assert sa.state == State.ESTABLISHED
    return p, sa


def restart_vm(p) -> None:
    """The VM daemon restarts: a fresh Endpoint with the same policy, no SAs."""
    p.vm = Endpoint(lambda *_: p.vm_policy)


def test_restarted_peer_answers_invalid_ike_spi_and_we_hear_it() -> None:
    p, sa = established_pair()
    restart_vm(p)
    p.wire_log.clear()
    p.advance(5.5)  # the idle probe is due after 5 s of silence
    probes = sent(p, "home->vm")
    answers = sent(p, "vm->home")
    assert probes[0][:3] == ("INFORMATIONAL", 2, False)
    # Same message ID, marked as a response, carrying only INVALID_IKE_SPI (2.21.4).
    assert answers == [("INFORMATIONAL", 2, True, [NotifyType.INVALID_IKE_SPI])]
    raw = next(t.data for name, t in p.wire_log if name == "vm->home")
    msg = wire.parse_message(raw)
    assert (msg.spi_i, msg.spi_r) == (sa.spi_i, sa.spi_r)
    assert not msg.is_initiator  # the VM answers as the original responder
    (lost,) = p.events("home", PeerLostSa)
    assert lost.spi == sa.our_spi
    # Unauthenticated: the SA is kept (the daemon decides), and the hint comes once.
    assert sa.state == State.ESTABLISHED
    p.advance(3.0)
    assert len(p.events("home", PeerLostSa)) == 1


def test_invalid_ike_spi_answering_our_delete_ends_the_sa_at_once() -> None:
    """The peer took our DELETE but its answer was lost (or it restarted): our
    retransmission gets INVALID_IKE_SPI. The SA, already being deleted, closes then,
    instead of after a minute of retransmissions with its Child SAs still in use."""
    p, sa = established_pair()
    restart_vm(p)
    p.wire_log.clear()
    sa.delete(p.now, "replaced")
    p.run()
    assert sa.state == State.CLOSED
    assert sa.close_reason == "replaced (the peer no longer knew it)"
    (closed,) = p.events("home", IkeSaClosed)
    assert closed.spi == sa.our_spi and not closed.error
    requests = [x for x in sent(p, "home->vm") if not x[2]]
    assert len(requests) == 1  # one DELETE, no retransmissions
    assert not p.events("home", PeerLostSa)


def test_invalid_ike_spi_outside_a_delete_does_not_close_the_sa() -> None:
    """Unauthenticated, so an INVALID_IKE_SPI answer to a liveness check is only a hint
    (PeerLostSa, for the daemon to weigh); the SA stays."""
    p, sa = established_pair()
    restart_vm(p)
    p.advance(5.5)
    assert sa.state == State.ESTABLISHED and not p.events("home", IkeSaClosed)


def test_invalid_ike_spi_is_rate_limited_and_never_answers_a_response() -> None:
    p, sa = established_pair(retransmit_base=0.25, retransmit_cap=0.25, retransmit_tries=20)
    restart_vm(p)
    p.wire_log.clear()
    p.advance(5.0 + 2.0)  # probe, then a retransmission every 0.25 s for 2 s
    requests = [x for x in sent(p, "home->vm") if not x[2]]
    answers = sent(p, "vm->home")
    assert len(requests) >= 6
    assert len(answers) == len(requests)  # under the limit: every request answered
    # Over the limit (invalid_spi_burst per second per source): the rest is dropped.
    p.vm.invalid_spi_burst = 2
    p.wire_log.clear()
    p.advance(2.0)
    requests = [x for x in sent(p, "home->vm") if not x[2]]
    answers = sent(p, "vm->home")
    assert len(requests) >= 7 and 3 <= len(answers) <= 6
    # A stray response for an unknown SPI is dropped silently (2.21.4: MUST NOT respond).
    raw = next(t for name, t in p.wire_log if name == "vm->home")
    before = len(p.home.datagrams_to_send())
    p.home.receive(raw.data.replace(sa.spi_i, b"\x01" * 8, 1), raw.local, raw.remote, p.now)
    assert len(p.home.datagrams_to_send()) == before == 0


def test_unprotected_request_for_unknown_spi_gets_no_answer() -> None:
    """Only protected requests (larger than the answer) are answered: no amplification."""
    p, sa = established_pair()
    restart_vm(p)
    bare = wire.build_message(
        wire.Message(
            sa.spi_i, sa.spi_r, ExchangeType.INFORMATIONAL, wire.HeaderFlag.INITIATOR, 5, []
        )
    )
    p.vm.receive(bare, sa.local, sa.peer, p.now)
    assert p.vm.datagrams_to_send() == []
    p.wire_log.clear()
    p.advance(5.5)  # the real (protected) probe is answered
    (answer,) = [t for name, t in p.wire_log if name == "vm->home"]
    probe = next(t for name, t in p.wire_log if name == "home->vm")
    assert len(answer.data) == 36 < len(probe.data)


def test_forged_unprotected_answer_without_the_notify_is_ignored() -> None:
    p, sa = established_pair()
    p.hook = lambda t: []  # the VM hears nothing: our probe stays outstanding
    p.advance(5.5)
    assert sa.window.outstanding is not None
    mid = sa.window.outstanding.message_id
    fake = wire.build_message(
        wire.Message(
            sa.spi_i,
            sa.spi_r,
            ExchangeType.INFORMATIONAL,
            wire.HeaderFlag.RESPONSE,
            mid,
            [wire.NotifyPayload(0, b"", NotifyType.AUTHENTICATION_FAILED)],
        )
    )
    p.home.receive(fake, sa.peer, sa.local, p.now)
    assert not p.events("home", PeerLostSa)
    assert sa.state == State.ESTABLISHED and sa.window.outstanding is not None


def test_retransmissions_are_capped() -> None:
    p, _sa = established_pair(retransmit_cap=5.0, retransmit_tries=13)
    start = p.now
    times: list[float] = []
    p.hook = lambda t: times.append(round(p.now - start, 1)) or []  # the peer is gone
    for _ in range(800):
        p.advance(0.1)
        if p.events("home", IkeSaClosed):
            break
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(times)]
    # 2, 4, then never more than the cap; given up after 13 sends (2+4+11*5 = 61 s).
    assert gaps[:2] == [2.0, 4.0] and max(gaps) == 5.0, gaps
    assert len(times) == 13
    (closed,) = p.events("home", IkeSaClosed)
    assert "sent 13 times" in closed.reason
    assert 60.0 <= p.now - start - times[0] <= 62.0


def test_uncapped_schedule_is_unchanged() -> None:
    p, _sa = established_pair()
    p.hook = lambda t: []
    p.advance(5.0 + 2 + 4 + 8 + 16 + 32 + 1)
    (closed,) = p.events("home", IkeSaClosed)
    assert "sent 5 times" in closed.reason


def test_check_alive_probes_now_and_restarts_the_backoff() -> None:
    p, sa = established_pair()
    p.wire_log.clear()
    sa.check_alive(p.now)  # idle SA: a probe goes out at once, not after 5 s
    p.run()
    assert sent(p, "home->vm") == [("INFORMATIONAL", 2, False, [])]
    assert sent(p, "vm->home") == [("INFORMATIONAL", 2, True, [])]
    # With a request outstanding for a while, it is resent now and the backoff restarts.
    p.hook = lambda t: []
    p.advance(5.0 + 2.0 + 4.0 + 1.0)  # probe #3 sent, retransmitted twice, next in 8 s
    assert sa.window.outstanding is not None and sa.window.outstanding.tries == 3
    p.hook = lambda t: [t]
    p.wire_log.clear()
    sa.check_alive(p.now)
    p.run()
    assert sent(p, "home->vm") == [("INFORMATIONAL", 3, False, [])]
    assert sent(p, "vm->home") == [("INFORMATIONAL", 3, True, [])]
    assert sa.window.outstanding is None and sa.state == State.ESTABLISHED


def test_esp_from_the_peer_counts_as_alive() -> None:
    """The data plane reports authenticated ESP by Child SA SPI (Endpoint.note_alive):
    an SA that receives ESP needs no probe; one that receives nothing is probed."""
    p, sa = established_pair()
    (spi_in,) = sa.children
    p.wire_log.clear()
    for _ in range(6):  # 12 s, more than twice the 5 s interval
        p.home.note_alive(spi_in, p.now)
        p.advance(2.0)
    assert sent(p, "home->vm") == []
    p.home.note_alive(0x1234, p.now)  # an SPI the core does not know: ignored
    p.advance(6.0)
    assert sent(p, "home->vm") == [("INFORMATIONAL", 2, False, [])]


def _liveness_requests(p, direction: str) -> int:
    return sum(1 for ex, _mid, resp, _n in sent(p, direction) if ex == "INFORMATIONAL" and not resp)


def test_only_one_end_checks_an_idle_sa() -> None:
    """Both ends at 5 s: the initiator checks every 5 s and the responder only answers
    (its interval runs 20 % longer and restarts on each check it hears)."""
    p = default_pair(home_kw={"dpd_interval": 5.0}, vm_kw={"dpd_interval": 5.0})
    p.connect()
    p.run()
    p.wire_log.clear()
    p.advance(60.0)
    assert _liveness_requests(p, "home->vm") == 12
    assert _liveness_requests(p, "vm->home") == 0


def test_responder_checks_when_the_initiator_waits_longer() -> None:
    """An initiator at iked's 60 s: the responder at 5 s checks every 6 s itself."""
    p = default_pair(home_kw={"dpd_interval": 60.0}, vm_kw={"dpd_interval": 5.0})
    p.connect()
    p.run()
    p.wire_log.clear()
    p.advance(59.0)
    assert _liveness_requests(p, "vm->home") == 9  # at 6, 12, ... 54 s
    assert _liveness_requests(p, "home->vm") == 0


def test_peer_moving_is_reported_with_its_children() -> None:
    """A NAT rebinding: the peer's authenticated request comes from a new port. The
    core answers there and reports the move as a value the data plane can follow.
    (Without MOBIKE: with it, only UPDATE_SA_ADDRESSES moves an SA, tests/test_mobike.py.)"""
    p = default_pair(
        home_kw={"dpd_interval": 5.0, "mobike": False}, vm_kw={"dpd_interval": 0.0, "mobike": False}
    )
    p.connect()
    p.run()
    (sa,) = p.home.sas.values()
    (vm_sa,) = p.vm.sas.values()
    moved = (VM[0], 4501)
    p.hook = lambda t: [Transmit(t.data, moved, t.remote) if t.local == VM else t]
    vm_sa.check_alive(p.now)
    p.run()
    (event,) = p.events("home", PeerMoved)
    assert event.ike_spi == sa.our_spi and event.peer == moved
    (child,) = event.children
    assert child.spi_in in sa.children and child.remote == moved
    assert sa.peer == moved
    assert [name for name, t in p.wire_log if name == "home->vm" and t.remote == moved]


def test_events_are_values() -> None:
    """Consumers get frozen values, not the core's objects; queries go by SPI."""
    p, sa = established_pair()
    (created,) = p.events("home", ChildSaCreated)
    (established,) = p.events("home", IkeSaEstablished)
    assert isinstance(created.child, ChildSaInfo) and created.ike_spi == sa.our_spi
    assert established.spi == sa.our_spi and established.policy == sa.policy.name
    assert established.peer_id == sa.peer_id and established.initiator
    with pytest.raises(dataclasses.FrozenInstanceError):
        created.child.remote = VM  # type: ignore[misc]
    assert p.home.child_sas() == [created.child]
    assert p.home.ike_sa(established.spi) is sa


# --------------------------------------------------------------------------- netwatch


class Msg(dict):
    """An rtnetlink message as pyroute2 presents it (fields and attributes by name)."""


def test_netwatch_relevance() -> None:
    from pyike.netwatch import IFF_LOWER_UP, IFF_RUNNING, IFF_UP, LinkStates, describe

    links = LinkStates()
    up = IFF_UP | IFF_RUNNING | IFF_LOWER_UP
    ignored = {7}  # pyike's TUN device
    # The first message about a link is judged against nothing: reported once, then
    # repeats with the same state are noise (statistics, promiscuity changes...).
    assert (
        describe(Msg(event="RTM_NEWLINK", index=2, ifname="eth0", flags=up), links, ignored)
        == "link eth0 up"
    )
    assert (
        describe(Msg(event="RTM_NEWLINK", index=2, ifname="eth0", flags=up), links, ignored) is None
    )
    assert (
        describe(Msg(event="RTM_NEWLINK", index=2, ifname="eth0", flags=IFF_UP), links, ignored)
        == "link eth0 down"
    )
    assert (
        describe(Msg(event="RTM_NEWLINK", index=7, ifname="pyike0", flags=0), links, ignored)
        is None
    )
    assert (
        describe(
            Msg(event="RTM_DELADDR", index=2, address="192.0.2.1", prefixlen=24), links, ignored
        )
        == "address 192.0.2.1/24 removed"
    )
    assert (
        describe(Msg(event="RTM_NEWADDR", index=2, address="fe80::1", prefixlen=64), links, ignored)
        is None
    )
    assert (
        describe(
            Msg(event="RTM_NEWADDR", index=7, address="2001:db8:c1da::1", prefixlen=128),
            links,
            ignored,
        )
        is None
    )
    assert (
        describe(Msg(event="RTM_NEWROUTE", table=254, dst=None, oif=2), links, ignored)
        == "route default added"
    )
    assert (
        describe(
            Msg(event="RTM_DELROUTE", table=254, dst="192.0.2.0", dst_len=24, oif=2), links, ignored
        )
        == "route 192.0.2.0/24 removed"
    )
    assert (
        describe(
            Msg(event="RTM_NEWROUTE", table=255, dst="192.0.2.1", dst_len=32, oif=2), links, ignored
        )
        is None
    )  # the local table
    assert (
        describe(
            Msg(event="RTM_NEWROUTE", table=254, dst="ff00::", dst_len=8, oif=2), links, ignored
        )
        is None
    )
    assert (
        describe(
            Msg(event="RTM_NEWROUTE", table=254, dst="2001:db8:c1da::2", dst_len=128, oif=7),
            links,
            ignored,
        )
        is None
    )
    assert describe(Msg(event="RTM_NEWNEIGH"), links, ignored) is None


def test_retransmit_tries_last_about_a_minute() -> None:
    from pyike.daemon import retransmit_tries

    assert retransmit_tries(2.0, 5.0) == 13  # 2+4+11*5 = 61 s
    assert retransmit_tries(2.0, 0.0) == 5  # iked's 2/4/8/16/32
    assert retransmit_tries(2.0, 60.0) == 5  # 2+4+8+16+32 = 62 s


def test_dpd_default_and_overrides() -> None:
    from pyike.config import GlobalOptions
    from pyike.daemon import DEFAULT_DPD_INTERVAL, Options, effective_dpd

    assert effective_dpd(Options(), GlobalOptions()) == DEFAULT_DPD_INTERVAL == 5.0
    assert effective_dpd(Options(), GlobalOptions(dpd_check_interval=30)) == 30.0
    assert effective_dpd(Options(), GlobalOptions(dpd_check_interval=0)) == 0.0
    assert effective_dpd(Options(dpd_interval=60.0), GlobalOptions(dpd_check_interval=30)) == 60.0


def test_many_sas_each_probed_at_its_own_deadline_and_closed_ones_forgotten() -> None:
    """The Endpoint keeps deadlines in a heap and only revisits SAs something happened
    to: each of several SAs, set up half a second apart, must still be probed when its own
    5 s of silence are up (not earlier, not later), and a deleted one must be gone."""
    # One peer identity for all six: lift the per-peer limit (4 by default).
    p = default_pair(
        home_kw={"dpd_interval": 5.0},
        vm_kw={"dpd_interval": 0.0},
        limits=Limits(ike_sas_per_peer=10, auth_per_source_per_s=100.0, auth_burst=100),
    )
    started: dict[bytes, float] = {}
    for _ in range(6):
        sa = p.home.connect(p.home_policy, HOME, VM, p.now)
        p.run()
        assert sa.state == State.ESTABLISHED
        started[sa.spi_i] = p.now
        p.advance(0.5)
    probed: dict[bytes, float] = {}
    for _ in range(60):  # 6 s in 0.1 s steps: every SA's first probe falls in there
        p.wire_log.clear()
        p.advance(0.1)
        for name, t in p.wire_log:
            msg = wire.parse_message(t.data)
            if name == "home->vm" and msg.exchange == ExchangeType.INFORMATIONAL:
                probed.setdefault(msg.spi_i, p.now)
    assert set(probed) == set(started)
    for spi, t0 in started.items():
        assert t0 + 5.0 <= probed[spi] <= t0 + 5.0 + 0.11, (t0, probed[spi])
    victim = next(iter(p.home.sas.values()))
    victim.delete(p.now, "test")
    p.run()
    assert victim.spi_i not in p.home.sas and len(p.home.sas) == 5
    assert victim.spi_r not in p.vm.sas and len(p.vm.sas) == 5
