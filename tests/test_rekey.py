"""Two-party tests of rekeying in the sans-IO core (RFC 7296 1.3.2, 1.3.3, 2.8).

Checklist of cases (after pyikev2's test list): Child SA rekey started by
either side, with and without PFS, on time and on bytes; IKE SA rekey started
by either side, children moved, message IDs restarting; simultaneous Child SA
and IKE SA rekeys settled by the nonce rule (2.8.1, 2.8.2); a rekey colliding
with a DELETE (2.25.1); INVALID_KE_PAYLOAD and TEMPORARY_FAILURE answers;
lost rekey messages; hard expiry when the peer never answers.
"""

from __future__ import annotations

from pyike import wire
from pyike.ike import (
    ChildSa,
    ChildSaCreated,
    ChildSaDeleted,
    ChildState,
    IkeSa,
    IkeSaClosed,
    IkeSaEstablished,
    State,
    Transmit,
)
from pyike.registry import DhId, ExchangeType, PayloadType, TransformType
from pyike.wire import Proposal, Transform
from tests.ike_pair import Pair, default_pair, esp_proposal


def up(home_kw: dict | None = None, vm_kw: dict | None = None) -> Pair:
    p = default_pair(home_kw=home_kw, vm_kw=vm_kw)
    p.connect()
    p.run()
    return p


def current(ep_sas: dict) -> IkeSa:
    """The one live IKE SA of an endpoint."""
    (sa,) = [sa for sa in ep_sas.values() if sa.state == State.ESTABLISHED]
    return sa


def only_child(sa: IkeSa) -> ChildSa:
    (c,) = sa.children.values()
    return c


def assert_pair_matches(p: Pair) -> tuple[ChildSa, ChildSa]:
    """Both sides hold exactly one Child SA, and it is the same SA."""
    hc, vc = only_child(current(p.home.sas)), only_child(current(p.vm.sas))
    assert hc.spi_out == vc.spi_in and hc.spi_in == vc.spi_out
    assert hc.key_out == vc.key_in and hc.key_in == vc.key_out
    assert hc.state == vc.state == ChildState.ACTIVE
    return hc, vc


def requests(p: Pair, direction: str, exchange: ExchangeType) -> list[wire.Message]:
    """The parsed headers+payloads of plain requests (SK content is not visible)."""
    out = []
    for d, t in p.wire_log:
        h = wire.Header.parse(t.data)
        if d == direction and h.exchange == exchange and not h.is_response:
            out.append(h)
    return out


def inner_payloads(sa: IkeSa, t: Transmit) -> list[wire.Payload]:
    """Decrypt one of ``sa``'s own outgoing messages with the peer's view of the keys."""
    msg = wire.parse_message(t.data)
    assert sa.keys is not None and sa.suite is not None
    from pyike import crypto

    k, s = sa.keys, sa.suite
    key = (k.sk_ei, k.sk_ai) if sa.initiator else (k.sk_er, k.sk_ar)
    cipher = crypto.SkCipher(s.encr, s.key_bits, s.integ, *key)
    sk = msg.payloads[-1]
    assert isinstance(sk, wire.SkPayload)
    return wire.parse_payloads(
        sk.first_inner, cipher.open(t.data[: len(t.data) - len(sk.data)], sk.data)
    )


# ----------------------------------------------------------------------------- Child SA rekey


def test_child_rekey_on_lifetime_by_initiator() -> None:
    p = up(home_kw={"child_lifetime": 20.0}, vm_kw={"child_lifetime": 40.0})
    hc0, vc0 = assert_pair_matches(p)
    p.advance(16.0)  # soft expiry at 85-90 % of 20 s: 17-18 s
    assert not p.events("home", ChildSaDeleted)
    p.advance(3.0)
    created = p.events("home", ChildSaCreated)
    assert len(created) == 2 and created[1].replaces == hc0.spi_in
    hc, _vc = assert_pair_matches(p)
    assert hc.spi_in != hc0.spi_in and hc.key_in != hc0.key_in
    # The initiator of the rekey deleted the old SA; both sides reported it.
    assert [e.child.spi_in for e in p.events("home", ChildSaDeleted)] == [hc0.spi_in]
    assert [e.child.spi_in for e in p.events("vm", ChildSaDeleted)] == [vc0.spi_in]
    assert len(requests(p, "home->vm", ExchangeType.CREATE_CHILD_SA)) == 1
    assert not requests(p, "vm->home", ExchangeType.CREATE_CHILD_SA)


def test_child_rekey_by_responder_and_repeatedly() -> None:
    p = up(home_kw={"child_lifetime": 100.0}, vm_kw={"child_lifetime": 20.0})
    seen = set()
    for _ in range(5):
        p.advance(20.0)
        hc, _vc = assert_pair_matches(p)
        seen.add(hc.spi_in)
    assert len(seen) == 5  # a new SA every 17-18 s, started by the VM side
    assert len(requests(p, "vm->home", ExchangeType.CREATE_CHILD_SA)) == 5
    assert not p.events("home", IkeSaClosed) and not p.events("vm", IkeSaClosed)


def test_child_rekey_with_pfs_sends_ke_and_changes_keys() -> None:
    pfs = [
        Proposal(
            1,
            esp_proposal().protocol,
            b"",
            [*esp_proposal().transforms, Transform(TransformType.DH, DhId.ECP_384)],
        )
    ]
    p = up(home_kw={"child_lifetime": 20.0, "esp": pfs}, vm_kw={"esp": pfs})
    home = current(p.home.sas)
    home.rekey_child(only_child(home).spi_in, p.now)
    out = p.home.datagrams_to_send()
    (req,) = out
    payloads = inner_payloads(home, req)
    kinds = [type(x).__name__ for x in payloads]
    assert kinds[:3] == ["NotifyPayload", "SaPayload", "NoncePayload"] and "KePayload" in kinds
    (ke,) = [x for x in payloads if isinstance(x, wire.KePayload)]
    assert ke.group == DhId.ECP_384
    p.home.transmits.extend(out)
    p.run()
    hc, _ = assert_pair_matches(p)
    assert hc.suite.dh == DhId.ECP_384


def test_child_rekey_on_bytes() -> None:
    p = up(home_kw={"child_lifetime_bytes": 1_000_000})
    home = current(p.home.sas)
    hc0 = only_child(home)
    home.note_child_usage(hc0.spi_in, 800_000, p.now)
    p.run()
    assert only_child(home) is hc0  # below 90 %
    home.note_child_usage(hc0.spi_in, 950_000, p.now)
    p.run()
    hc, _ = assert_pair_matches(p)
    assert hc is not hc0


def test_byte_counts_by_spi_through_the_endpoint() -> None:
    """The daemon reports byte counts by Child SA SPI (Endpoint.note_child_usage)."""
    p = up(home_kw={"child_lifetime_bytes": 1_000_000})
    hc0 = only_child(current(p.home.sas))
    (info,) = p.home.child_sas()
    p.home.note_child_usage(info.spi_in, 950_000, p.now)
    p.home.note_child_usage(0x1234, 950_000, p.now)  # unknown SPI: ignored
    p.run()
    hc, _ = assert_pair_matches(p)
    assert hc is not hc0


def test_hard_byte_limit_deletes_at_once() -> None:
    p = up(home_kw={"child_lifetime_bytes": 1_000_000})
    home = current(p.home.sas)
    hc0 = only_child(home)
    p.hook = lambda t: []  # the peer hears nothing: the SA must still stop
    home.note_child_usage(hc0.spi_in, 1_000_000, p.now)
    assert [e.child for e in home.endpoint.events if isinstance(e, ChildSaDeleted)] == [hc0.info()]


def test_simultaneous_child_rekey_keeps_exactly_one() -> None:
    for _ in range(8):  # random nonces: either side may win
        p = up()
        home, vm = current(p.home.sas), current(p.vm.sas)
        home.rekey_child(only_child(home).spi_in, p.now)
        vm.rekey_child(only_child(vm).spi_in, p.now)
        p.run()
        _hc, _vc = assert_pair_matches(p)
        assert len(p.events("home", ChildSaCreated)) == 3  # first, and one per rekey
        # the old SA and the redundant new one are gone on both sides
        assert len(p.events("home", ChildSaDeleted)) == len(p.events("vm", ChildSaDeleted)) == 2
        assert not home.child_rekeys and not vm.child_rekeys


def test_rekey_colliding_with_delete() -> None:
    p = up()
    home, vm = current(p.home.sas), current(p.vm.sas)
    home.delete_child(only_child(home).spi_in, p.now)
    vm.rekey_child(only_child(vm).spi_in, p.now)
    p.run()
    # The VM's rekey got TEMPORARY_FAILURE, then the DELETE removed the SA.
    assert not home.children and not vm.children
    assert home.state == vm.state == State.ESTABLISHED
    p.advance(10.0)
    assert not vm.children and not vm.endpoint.transmits


def drop_first_create_child(dropped: list[Transmit], *, response: bool):
    """A wire hook that loses the first CREATE_CHILD_SA request (or response)."""

    def hook(t: Transmit) -> list[Transmit]:
        h = wire.Header.parse(t.data)
        if h.exchange == ExchangeType.CREATE_CHILD_SA and h.is_response == response and not dropped:
            dropped.append(t)
            return []
        return [t]

    return hook


def test_lost_rekey_request_is_retransmitted() -> None:
    p = up(home_kw={"child_lifetime": 20.0})
    dropped: list[Transmit] = []
    p.hook = drop_first_create_child(dropped, response=False)
    p.advance(25.0)
    assert dropped
    assert_pair_matches(p)


def test_lost_rekey_response_gets_cached_copy() -> None:
    p = up(home_kw={"child_lifetime": 20.0})
    dropped: list[Transmit] = []
    p.hook = drop_first_create_child(dropped, response=True)
    p.advance(25.0)
    assert dropped
    assert_pair_matches(p)
    # The responder created one SA only: the retransmission got the cached answer.
    assert len(p.events("vm", ChildSaCreated)) == 2


def test_unanswered_rekey_hard_expires_then_ike_sa_closes() -> None:
    p = up(
        home_kw={"child_lifetime": 20.0, "dpd_interval": 0.0},
        vm_kw={"child_lifetime": 1000.0, "dpd_interval": 0.0},
    )
    hc0 = only_child(current(p.home.sas))
    p.hook = lambda t: []
    p.advance(20.5)
    deleted = p.events("home", ChildSaDeleted)
    assert [e.child for e in deleted] == [hc0.info()] and "hard lifetime" in deleted[0].reason
    p.advance(70.0)
    (closed,) = p.events("home", IkeSaClosed)
    assert "not responding" in closed.reason


def test_invalid_ke_on_child_rekey_retries_with_peers_group() -> None:
    home_esp = [
        Proposal(
            1,
            esp_proposal().protocol,
            b"",
            [
                *esp_proposal().transforms,
                Transform(TransformType.DH, DhId.CURVE25519),
                Transform(TransformType.DH, DhId.ECP_256),
            ],
        )
    ]
    vm_esp = [
        Proposal(
            1,
            esp_proposal().protocol,
            b"",
            [*esp_proposal().transforms, Transform(TransformType.DH, DhId.ECP_256)],
        )
    ]
    p = up(home_kw={"esp": home_esp}, vm_kw={"esp": vm_esp})
    home = current(p.home.sas)
    home.rekey_child(only_child(home).spi_in, p.now)
    p.run()
    # KE curve25519 first, INVALID_KE_PAYLOAD(ecp256), then KE ecp256.
    assert len(requests(p, "home->vm", ExchangeType.CREATE_CHILD_SA)) == 2
    hc, _ = assert_pair_matches(p)
    assert hc.suite.dh == DhId.ECP_256


# ----------------------------------------------------------------------------- IKE SA rekey


def _ike_rekey(p: Pair, side: str) -> tuple[IkeSa, IkeSa]:
    old_home, old_vm = current(p.home.sas), current(p.vm.sas)
    (old_home if side == "home" else old_vm).rekey(p.now)
    p.run()
    return old_home, old_vm


def test_ike_rekey_by_initiator_moves_children() -> None:
    p = up()
    hc0, vc0 = assert_pair_matches(p)
    old_home, old_vm = _ike_rekey(p, "home")
    new_home, new_vm = current(p.home.sas), current(p.vm.sas)
    assert old_home.state == old_vm.state == State.CLOSED
    assert (new_home.spi_i, new_home.spi_r) == (new_vm.spi_i, new_vm.spi_r)
    assert {new_home.spi_i, new_home.spi_r}.isdisjoint({old_home.spi_i, old_home.spi_r})
    assert new_home.keys.sk_d == new_vm.keys.sk_d != old_home.keys.sk_d
    assert new_home.initiator and not new_vm.initiator
    # The same Child SA objects, now under the new IKE SA; nothing was deleted.
    assert only_child(new_home) is hc0 and only_child(new_vm) is vc0
    assert not p.events("home", ChildSaDeleted) and not p.events("vm", ChildSaDeleted)
    assert [e.replaces for e in p.events("home", IkeSaEstablished)] == [None, old_home.our_spi]
    closes = p.events("home", IkeSaClosed) + p.events("vm", IkeSaClosed)
    assert len(closes) == 2 and not any(e.error for e in closes)
    # The new SA works: message IDs restart at 0 and a child rekey goes through.
    new_home.rekey_child(hc0.spi_in, p.now)
    p.run()
    assert_pair_matches(p)
    ids = [wire.Header.parse(t.data).message_id for d, t in p.wire_log[-4:] if d == "home->vm"]
    assert ids[0] == 0


def test_ike_rekey_by_responder_swaps_roles() -> None:
    p = up()
    _ike_rekey(p, "vm")
    new_home, new_vm = current(p.home.sas), current(p.vm.sas)
    # 2.18: whoever rekeyed is the original initiator of the new SA.
    assert new_vm.initiator and not new_home.initiator
    assert new_vm.spi_i == new_home.spi_i
    assert_pair_matches(p)
    new_home.delete(p.now)
    p.run()
    assert not p.home.sas and not p.vm.sas


def test_ike_rekey_on_lifetime_and_liveness_after() -> None:
    p = up(
        home_kw={"ike_lifetime": 60.0, "dpd_interval": 15.0},
        vm_kw={"ike_lifetime": 600.0, "dpd_interval": 0.0},
    )
    first = current(p.home.sas)
    p.advance(55.0)
    second = current(p.home.sas)
    assert second is not first and first.state == State.CLOSED
    p.advance(120.0)  # rekeyed again twice, probes answered on the new SAs
    assert current(p.home.sas) is not second
    assert not [e for e in p.events("home", IkeSaClosed) if e.error]
    assert_pair_matches(p)


def test_simultaneous_ike_rekey_settles_on_one_sa() -> None:
    for _ in range(8):
        p = up()
        hc0, vc0 = assert_pair_matches(p)
        old_home, old_vm = current(p.home.sas), current(p.vm.sas)
        old_home.rekey(p.now)
        old_vm.rekey(p.now)
        p.run()
        p.advance(1.0)
        new_home, new_vm = current(p.home.sas), current(p.vm.sas)
        assert (new_home.spi_i, new_home.spi_r) == (new_vm.spi_i, new_vm.spi_r)
        assert only_child(new_home) is hc0 and only_child(new_vm) is vc0
        assert len(p.home.sas) == len(p.vm.sas) == 1
        assert not [
            e for e in p.events("home", IkeSaClosed) + p.events("vm", IkeSaClosed) if e.error
        ]
        # The daemon follows IkeSaEstablished.replaces: the last one names the survivor.
        assert p.events("home", IkeSaEstablished)[-1].spi == new_home.our_spi


def test_child_rekey_refused_during_ike_delete() -> None:
    p = up()
    home, vm = current(p.home.sas), current(p.vm.sas)
    home.delete(p.now)
    vm.rekey_child(only_child(vm).spi_in, p.now)
    p.run()
    assert not p.home.sas and not p.vm.sas


def test_ike_rekey_answer_carries_new_spi_and_ke() -> None:
    p = up()
    home = current(p.home.sas)
    home.rekey(p.now)
    (req,) = p.home.datagrams_to_send()
    payloads = inner_payloads(home, req)
    (sa,) = [x for x in payloads if isinstance(x, wire.SaPayload)]
    assert all(len(prop.spi) == 8 for prop in sa.proposals)
    assert [type(x).__name__ for x in payloads] == ["SaPayload", "NoncePayload", "KePayload"]
    assert wire.Header.parse(req.data).next_payload == PayloadType.SK


def test_additional_child_sa() -> None:
    p = up()
    home, vm = current(p.home.sas), current(p.vm.sas)
    home.create_child(p.now)
    p.run()
    assert len(home.children) == len(vm.children) == 2
    for hc in home.children.values():
        vc = vm.children[hc.spi_out]
        assert hc.key_out == vc.key_in and hc.key_in == vc.key_out
    assert not p.events("home", ChildSaDeleted)
    # Both rekey independently afterwards.
    for c in list(home.children.values()):
        home.rekey_child(c.spi_in, p.now)
    p.run()
    assert len(home.children) == len(vm.children) == 2
    assert len(p.events("vm", ChildSaDeleted)) == 2
