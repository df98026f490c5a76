"""IKE fragmentation (RFC 7383) between two sans-IO endpoints on the fake wire:
negotiation, SKF fragments both ways, loss, reordering, duplicates, forged
fragments and the reassembly limits (pyike/ike/fragments.py)."""

from __future__ import annotations

import dataclasses

from pyike import wire
from pyike.ike import ChildSaCreated, IkeSaEstablished, Transmit, fragments
from pyike.limits import DEFAULT_LIMITS
from pyike.registry import ExchangeType, NotifyType, PayloadType
from tests.ike_pair import Pair, default_pair

SMALL = {"fragmentation": True, "fragment_size": 300}


def fragmenting_pair(home: dict | None = None, vm: dict | None = None, **kw: object) -> Pair:
    return default_pair(home_kw=home if home is not None else SMALL, vm_kw=vm or SMALL, **kw)


def skf(t: Transmit) -> wire.SkfPayload | None:
    last = wire.parse_message(t.data).payloads[-1]
    return last if isinstance(last, wire.SkfPayload) else None


def fragments_on_wire(p: Pair, direction: str) -> list[wire.SkfPayload]:
    return [f for d, t in p.wire_log if d == direction and (f := skf(t)) is not None]


def up(p: Pair) -> bool:
    return bool(p.events("home", ChildSaCreated)) and bool(p.events("vm", ChildSaCreated))


def the_sa(endpoint):
    (sa,) = endpoint.sas.values()
    return sa


def test_negotiated_and_both_directions_fragment() -> None:
    p = fragmenting_pair()
    p.connect()
    p.run()
    assert up(p)
    init_req = wire.parse_message(p.wire_log[0][1].data)
    assert init_req.notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED) is not None
    out, back = fragments_on_wire(p, "home->vm"), fragments_on_wire(p, "vm->home")
    assert len(out) >= 2 and len(back) >= 2  # IKE_AUTH request and response
    assert [f.number for f in out] == list(range(1, out[0].total + 1))
    # 2.5: fragment 1 names the first inner payload, the others carry 0.
    assert out[0].first_inner == PayloadType.IDi and all(f.first_inner == 0 for f in out[1:])
    limit = fragments.message_limit(the_sa(p.home))
    assert limit == 300 - 20 - 8  # IPv4 and UDP headers (port 500: no non-ESP marker)
    assert all(len(t.data) <= limit for d, t in p.wire_log if skf(t) is not None)
    assert the_sa(p.home).fragmentation and the_sa(p.vm).fragmentation


def test_not_used_unless_both_offer() -> None:
    for home, vm in ((SMALL, {}), ({"fragment_size": 300}, SMALL)):
        p = fragmenting_pair(home, vm or {"fragment_size": 300})
        p.connect()
        p.run()
        assert up(p)
        assert not fragments_on_wire(p, "home->vm") and not fragments_on_wire(p, "vm->home")
        assert not the_sa(p.home).fragmentation


def test_lost_fragment_retransmits_all_fragments() -> None:
    p = fragmenting_pair()
    dropped: list[int] = []

    def lose_second(t: Transmit) -> list[Transmit]:
        f = skf(t)
        if (
            f is not None
            and f.number == 2
            and not dropped
            and not wire.parse_message(t.data).is_response
        ):
            dropped.append(f.total)
            return []
        return [t]

    p.hook = lose_second
    p.connect()
    p.run()
    assert not up(p) and dropped
    vm_sa = the_sa(p.vm)
    assert vm_sa.fragments_in.held_bytes() > 0  # the incomplete set waits
    p.advance(3)  # the retransmission (2 s) carries every fragment again
    assert up(p)
    sent = fragments_on_wire(p, "home->vm")  # what arrived: all but the lost one
    assert len(sent) == 2 * dropped[0] - 1
    assert vm_sa.fragments_in.held_bytes() == 0


def test_lost_response_fragment_answered_on_fragment_one_only() -> None:
    p = fragmenting_pair()
    lost: list[int] = []

    def lose_response_fragment(t: Transmit) -> list[Transmit]:
        f = skf(t)
        if f is not None and f.number == 1 and not lost and wire.parse_message(t.data).is_response:
            lost.append(1)
            return []
        return [t]

    p.hook = lose_response_fragment
    p.connect()
    p.run()
    assert not up(p)
    responses_before = len(fragments_on_wire(p, "vm->home"))
    p.advance(3)  # home retransmits all request fragments; vm answers once (2.6.1)
    assert up(p)
    resent = len(fragments_on_wire(p, "vm->home")) - responses_before
    assert resent == responses_before + 1  # the whole response once more, not per fragment


def test_reordered_and_duplicated_fragments() -> None:
    p = fragmenting_pair()
    for ep in (p.home, p.vm):
        original = ep.datagrams_to_send
        ep.datagrams_to_send = lambda original=original: list(reversed(original()))  # type: ignore[method-assign]
    p.hook = lambda t: [t, t]
    p.connect()
    p.run()
    assert up(p)
    (h,) = p.events("home", IkeSaEstablished)
    assert p.home.sas[h.spi].is_established


def test_forged_fragment_dropped_sa_untouched() -> None:
    p = fragmenting_pair()
    forged: list[bytes] = []

    def forge_first(t: Transmit) -> list[Transmit]:
        f = skf(t)
        if f is not None and f.number == 1 and not forged:
            bad = bytearray(t.data)
            bad[-1] ^= 1  # ICV no longer matches
            forged.append(bytes(bad))
            # The forgery comes first; the real fragment follows.
            return [Transmit(bytes(bad), t.local, t.remote), t]
        return [t]

    p.hook = forge_first
    p.connect()
    p.run()
    assert up(p)
    assert p.vm.guard.counters["fragment_integrity"] == 1
    # Once established, a forged fragment with a huge Total Fragments must not
    # reset anything either: it fails authentication before it counts.
    vm_sa = the_sa(p.vm)
    msg = wire.parse_message(forged[0])
    forged_skf = msg.payloads[-1]
    assert isinstance(forged_skf, wire.SkfPayload)
    before = (vm_sa.peer_next_id, vm_sa.state, vm_sa.peer)
    p.vm.receive(forged[0], p.wire_log[0][1].local, p.wire_log[0][1].remote, p.now)
    assert (vm_sa.peer_next_id, vm_sa.state, vm_sa.peer) == before
    assert vm_sa.fragments_in.held_bytes() == 0
    p.hook = lambda t: [t]
    the_sa(p.home).check_alive(p.now)
    p.run()
    assert vm_sa.peer_next_id == before[0] + 1


def test_fragment_count_limit() -> None:
    limits = dataclasses.replace(DEFAULT_LIMITS, fragments_per_message=1)
    p = fragmenting_pair(limits=limits)
    p.connect()
    p.run()
    assert not up(p)
    assert p.vm.guard.counters["fragment_limit"] >= 1
    assert the_sa(p.vm).fragments_in.held_bytes() == 0


def test_reassembly_bytes_limit() -> None:
    limits = dataclasses.replace(DEFAULT_LIMITS, reassembly_bytes=200)
    p = fragmenting_pair(limits=limits)
    p.connect()
    p.run()
    assert not up(p)
    assert p.vm.guard.counters["fragment_limit"] >= 1
    assert the_sa(p.vm).fragments_in.held_bytes() <= 200


def test_unnegotiated_fragment_dropped() -> None:
    p = fragmenting_pair()
    p.connect()
    p.run()
    vm_sa = the_sa(p.vm)
    vm_sa.fragmentation = False
    first = next(t for d, t in p.wire_log if d == "home->vm" and skf(t) is not None)
    p.vm.receive(first.data, first.local, first.remote, p.now)
    assert p.vm.guard.counters["fragment_unexpected"] == 1


def test_larger_total_restarts_set_smaller_ignored() -> None:
    """RFC 7383 2.6: a retransmission refragmented for a smaller PMTU (more
    fragments) replaces the set being collected."""
    p = fragmenting_pair()
    p.connect()
    p.run()
    home_sa, vm_sa = the_sa(p.home), the_sa(p.vm)
    payloads: list[wire.Payload] = [wire.VendorPayload(b"x" * 900)]
    first, inner = wire.build_payloads(payloads)
    mid = home_sa.window.next_id
    flags = home_sa.flags(False)
    few = fragments.split(home_sa, ExchangeType.INFORMATIONAL, mid, flags, first, inner, 500)
    many = fragments.split(home_sa, ExchangeType.INFORMATIONAL, mid, flags, first, inner, 300)
    assert len(many) > len(few)
    src, dst = home_sa.local, home_sa.peer
    p.vm.receive(few[0], src, dst, p.now)
    assert vm_sa.fragments_in.sets[False].total == len(few)
    p.vm.receive(many[0], src, dst, p.now)
    assert vm_sa.fragments_in.sets[False].total == len(many)
    p.vm.receive(few[1], src, dst, p.now)  # fewer fragments: ignored
    assert vm_sa.fragments_in.sets[False].total == len(many)
    for part in many[1:]:
        p.vm.receive(part, src, dst, p.now)
    assert False not in vm_sa.fragments_in.sets
    assert vm_sa.peer_next_id == mid + 1  # reassembled and answered
    reply = p.vm.datagrams_to_send()
    assert reply and wire.parse_message(reply[-1].data).is_response


def test_default_limits_by_family() -> None:
    p = default_pair(home_kw={"fragmentation": True}, vm_kw={"fragmentation": True})
    p.connect()
    p.run()
    sa = the_sa(p.home)
    assert fragments.datagram_limit(sa) == fragments.DEFAULT_IPV4_DATAGRAM
    assert not fragments_on_wire(p, "home->vm")  # IKE_AUTH fits in 576 bytes
