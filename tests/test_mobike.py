"""MOBIKE (RFC 4555) between two sans-IO endpoints on the fake wire
(pyike/ike/mobike.py): negotiation, the initiator moving with
UPDATE_SA_ADDRESSES, the responder's return routability check, NAT-D in
liveness finding a changed NAT mapping, and bad input that must move nothing."""

from __future__ import annotations

from ipaddress import ip_address

from pyike import wire
from pyike.ike import ChildSaCreated, IkeSaEstablished, Transmit, mobike
from pyike.ike.states import State
from tests.ike_pair import HOME, Pair, default_pair

HOME2 = (ip_address("198.51.100.7"), 500)  # home's new address (4G fallback, say)


def up_pair(home: dict | None = None, vm: dict | None = None) -> Pair:
    p = default_pair(home_kw=home, vm_kw=vm)
    p.connect()
    p.run()
    assert p.events("home", ChildSaCreated) and p.events("vm", ChildSaCreated)
    return p


def sas(p: Pair):
    (h,) = p.home.sas.values()
    (v,) = p.vm.sas.values()
    return h, v


def test_negotiated_by_default_and_off_with_nomobike() -> None:
    h, v = sas(up_pair())
    assert h.mobike.negotiated and v.mobike.negotiated
    for home, vm in (({"mobike": False}, None), (None, {"mobike": False})):
        h, v = sas(up_pair(home, vm))
        assert not h.mobike.negotiated and not v.mobike.negotiated
        assert not mobike.move(h, HOME2, 0.0)  # the caller falls back to a new IKE SA


def test_initiator_moves_same_spis_responder_checks_return_routability() -> None:
    p = up_pair()
    h, v = sas(p)
    spis = (h.spi_i, h.spi_r)
    (hc,), (vc,) = h.children.values(), v.children.values()
    child_spis = (hc.spi_in, hc.spi_out)
    assert mobike.move(h, HOME2, p.now)
    # One round: the UPDATE reaches the VM, whose IKE SA follows at once, but its ESP
    # waits for the return routability check's answer.
    p.step()
    assert v.peer == HOME2 and vc.remote == HOME
    p.run()
    assert vc.remote == HOME2 and hc.local == HOME2
    assert (h.spi_i, h.spi_r) == spis and (hc.spi_in, hc.spi_out) == child_spis
    assert len(p.home.sas) == 1 and len(p.vm.sas) == 1
    assert len(p.events("home", IkeSaEstablished)) == 1  # no new IKE SA
    assert h.mobike.moves == 1 and v.mobike.moves == 1
    assert [e.peer for e in p.events("vm", mobike.IkeSaMoved)] == [HOME2]
    # The event carries the moved Child SA as a value: what the data plane follows.
    (moved,) = p.events("vm", mobike.IkeSaMoved)
    assert [(c.spi_in, c.remote) for c in moved.children] == [(vc.spi_in, HOME2)]
    # Everything after the move goes between the new addresses.
    last = p.wire_log[-1][1]
    assert HOME2 in (last.local, last.remote)
    h.check_alive(p.now)
    p.run()
    assert h.is_established and v.is_established


def test_return_routability_unanswered_keeps_esp() -> None:
    p = up_pair()
    h, v = sas(p)
    (vc,) = v.children.values()

    def lose_vm_requests(t: Transmit) -> list[Transmit]:
        msg = wire.parse_message(t.data)
        from_vm = not msg.is_initiator
        return [] if from_vm and not msg.is_response else [t]

    p.hook = lose_vm_requests
    assert mobike.move(h, HOME2, p.now)
    p.run()
    assert v.peer == HOME2 and vc.remote == HOME  # ESP never pointed at the new address
    assert v.mobike.moves == 0


def test_forged_update_moves_nothing() -> None:
    p = up_pair()
    h, v = sas(p)
    (vc,) = v.children.values()

    def forge(t: Transmit) -> list[Transmit]:
        bad = bytearray(t.data)
        bad[-1] ^= 0x40
        return [Transmit(bytes(bad), t.local, t.remote)]

    p.hook = forge
    mobike.move(h, HOME2, p.now)
    p.step()
    assert v.peer == HOME and vc.remote == HOME and v.peer_next_id == 2
    assert v.mobike.moves == 0


def test_update_from_responder_ignored() -> None:
    """3.4: only the original initiator moves the SA; a responder's (authenticated)
    UPDATE_SA_ADDRESSES is answered and changes nothing."""
    p = up_pair()
    h, v = sas(p)
    before = (h.peer, h.local, [c.remote for c in h.children.values()])
    v.queue_request(mobike.UpdateAddressesRequest(), p.now)
    p.run()
    assert (h.peer, h.local, [c.remote for c in h.children.values()]) == before
    assert h.mobike.dropped == 1 and h.is_established


def test_update_answer_without_cookie2_ignored() -> None:
    p = up_pair()
    h, _ = sas(p)
    (hc,) = h.children.values()
    r = mobike.UpdateAddressesRequest()
    h.queue_request(r, p.now)  # sent at once: the window is idle
    r.cookie = b"\x01" * 16  # not what went out, so the answer's echo cannot match
    p.run()
    assert h.mobike.dropped == 1 and h.mobike.moves == 0
    assert hc.local == HOME


def test_nat_mapping_change_on_idle_tunnel_sends_update() -> None:
    """Home behind a NAT: the NAT's public port changes while the tunnel is idle.
    The liveness check carries NAT-D (RFC 4555 3.5); its answer shows the new
    mapping and home sends UPDATE_SA_ADDRESSES, so the VM's ESP follows."""
    nat_ip = ip_address("203.0.113.9")
    port = [40000]
    inside: dict = {}

    def nat(t: Transmit) -> list[Transmit]:
        if t.local[0] == HOME[0]:  # outbound: source translated
            inside[port[0]] = t.local
            return [Transmit(t.data, (nat_ip, port[0]), t.remote)]
        if t.remote[0] == nat_ip:  # inbound: back to home's own address and port
            return [Transmit(t.data, t.local, inside.get(t.remote[1], HOME))]
        return [t]

    p = default_pair(home_kw={"dpd_interval": 5.0}, vm_kw={"dpd_interval": 0.0})
    p.hook = nat
    p.connect()
    p.run()
    h, v = sas(p)
    (vc,) = v.children.values()
    assert vc.remote == (nat_ip, 40000)
    # Right after IKE_AUTH, behind a (real) NAT, home asked how the VM sees it.
    assert h.mobike.seen_as
    updates_before = h.window.next_id
    port[0] = 40001  # the router rebooted
    p.advance(6)
    assert vc.remote == (nat_ip, 40001)
    assert v.peer == (nat_ip, 40001)
    # Liveness, UPDATE_SA_ADDRESSES (and the VM's return routability request), then
    # the Child SA rekeyed (CREATE_CHILD_SA and the old one's DELETE), so that a peer
    # whose kernel ESP stays on the old port (OpenIKED) installs the new mapping.
    assert h.window.next_id == updates_before + 4
    (hc,) = h.children.values()
    (vc2,) = v.children.values()
    assert hc.remote == v.local
    assert vc2 is not vc and vc2.remote == (nat_ip, 40001)
    assert h.mobike.moves == 1
    assert h.state == State.ESTABLISHED and v.peer == (nat_ip, 40001)


def test_other_requests_from_a_new_address_move_nothing() -> None:
    """3.5: under MOBIKE only UPDATE_SA_ADDRESSES moves an SA; a liveness check from
    elsewhere is answered there and the SA stays (charon probes paths like this)."""
    p = up_pair()
    h, v = sas(p)
    (vc,) = v.children.values()
    h.local = HOME2  # home sends from elsewhere without telling (no UPDATE)
    h.check_alive(p.now)
    p.run()
    assert h.is_established  # answered, at the address it came from
    assert v.peer == HOME and vc.remote == HOME and v.mobike.moves == 0


def test_update_flood_keeps_one_return_routability_check_queued() -> None:
    p = up_pair()
    h, v = sas(p)
    hold: list[Transmit] = []
    p.hook = lambda t: (hold.append(t), [])[1] if wire.parse_message(t.data).is_response else [t]
    for n in range(20):  # 20 UPDATEs from 20 addresses; the answers are held back
        addr = (ip_address(f"198.51.100.{n + 10}"), 500)
        mobike.move(h, addr, p.now)
        h.window.outstanding = None  # let the next one go at once (fake a lost answer)
        h.window.next_id += 1
        h.window.queue.clear()
        p.step()
    waiting = [r for r in v.window.queue if isinstance(r, mobike.ReturnRoutabilityRequest)]
    assert len(waiting) <= 1 and len(v.window.queue) <= 1
    assert v.peer == (ip_address("198.51.100.29"), 500)
