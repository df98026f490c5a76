"""Two-party tests of the sans-IO IKE core: an initiator and a responder
Endpoint exchange real datagrams in memory (tests/ike_pair.py), with drop,
duplicate, reorder and rewrite hooks and a fake clock."""

from __future__ import annotations

import logging
import random

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyike import crypto, proposals, ts, wire
from pyike.ike import (
    ChildSaCreated,
    ChildSaDeleted,
    ChildState,
    IkeSaClosed,
    IkeSaEstablished,
    InitialContact,
    State,
    StateError,
    Transmit,
    child_negotiation,
)
from pyike.registry import (
    AuthMethod,
    DhId,
    EncrId,
    ExchangeType,
    IntegId,
    IpProto,
    NotifyType,
    PrfId,
)
from tests.ike_pair import (
    HOME,
    HOME_ID,
    VM,
    VM_ID,
    Keys,
    Pair,
    default_pair,
    esp_proposal,
    ike_proposal,
    ip_network_of,
    make_policy,
)


def established(p: Pair) -> tuple:
    (h,) = p.events("home", IkeSaEstablished)
    (v,) = p.events("vm", IkeSaEstablished)
    return p.sa("home", h.spi), p.sa("vm", v.spi)


def child_pair(p: Pair) -> tuple:
    (h,) = p.events("home", ChildSaCreated)
    (v,) = p.events("vm", ChildSaCreated)
    return h.child, v.child


def assert_children_match(hc, vc) -> None:
    """Each side's outbound keys and SPI are the other side's inbound ones."""
    assert hc.spi_out == vc.spi_in and hc.spi_in == vc.spi_out
    assert hc.key_out == vc.key_in and hc.key_in == vc.key_out
    assert hc.key_out != hc.key_in
    assert hc.suite == vc.suite


def exchanges(p: Pair, direction: str | None = None) -> list[tuple[str, int, bool]]:
    out = []
    for d, t in p.wire_log:
        if direction and d != direction:
            continue
        h = wire.Header.parse(t.data)
        out.append((ExchangeType.name_of(h.exchange), h.message_id, h.is_response))
    return out


# ----------------------------------------------------------------------------- happy paths


@pytest.mark.parametrize(
    "ike,esp",
    [
        (ike_proposal(), esp_proposal()),
        (
            ike_proposal(
                encr=EncrId.AES_GCM_16, bits=128, prf=PrfId.HMAC_SHA2_256, groups=(DhId.ECP_384,)
            ),
            esp_proposal(bits=128),
        ),
        (
            ike_proposal(
                encr=EncrId.AES_CBC,
                bits=256,
                prf=PrfId.HMAC_SHA2_384,
                integ=IntegId.HMAC_SHA2_384_192,
                groups=(DhId.ECP_384,),
            ),
            esp_proposal(encr=EncrId.AES_CBC, bits=256, integ=IntegId.HMAC_SHA2_256_128),
        ),
        (
            ike_proposal(
                encr=EncrId.AES_CBC,
                bits=128,
                prf=PrfId.HMAC_SHA2_256,
                integ=IntegId.HMAC_SHA2_256_128,
                groups=(DhId.MODP_2048,),
            ),
            esp_proposal(encr=EncrId.AES_CBC, bits=128, integ=IntegId.HMAC_SHA2_512_256),
        ),
    ],
)
def test_establish_and_child_keys_match(ike, esp) -> None:
    p = default_pair(home_kw={"ike": [ike], "esp": [esp]}, vm_kw={"ike": [ike], "esp": [esp]})
    p.connect()
    p.run()
    home, vm = established(p)
    assert home.state == vm.state == State.ESTABLISHED
    assert home.keys == vm.keys  # both derived the same SKEYSEED and SK_*
    assert home.peer_id == VM_ID and vm.peer_id == HOME_ID
    hc, vc = child_pair(p)
    assert_children_match(hc, vc)
    assert exchanges(p) == [
        ("IKE_SA_INIT", 0, False),
        ("IKE_SA_INIT", 0, True),
        ("IKE_AUTH", 1, False),
        ("IKE_AUTH", 1, True),
    ]
    assert p.events("vm", InitialContact)


def test_rfc7427_used_when_both_offer_it() -> None:
    p = default_pair()
    p.connect()
    p.run()
    home, vm = established(p)
    assert home.peer_auth_method == vm.peer_auth_method == AuthMethod.DIGITAL_SIGNATURE


def test_rfc4754_when_peer_sends_no_signature_hashes() -> None:
    """Without SIGNATURE_HASH_ALGORITHMS from the peer, sign with method 10 (RFC 4754)."""
    p = default_pair(vm_kw={"rfc7427": False})
    p.connect()
    p.run()
    home, vm = established(p)
    assert vm.peer_auth_method == AuthMethod.ECDSA_SHA384_P384
    assert home.peer_auth_method == AuthMethod.ECDSA_SHA384_P384


@pytest.mark.parametrize(
    "curve,method",
    [
        (ec.SECP256R1(), AuthMethod.ECDSA_SHA256_P256),
        (ec.SECP521R1(), AuthMethod.ECDSA_SHA512_P521),
    ],
)
def test_other_curves(curve, method) -> None:
    keys = Keys(home=ec.generate_private_key(curve), vm=ec.generate_private_key(curve))
    p = default_pair(keys, home_kw={"rfc7427": False}, vm_kw={"rfc7427": False})
    p.connect()
    p.run()
    home, _vm = established(p)
    assert home.peer_auth_method == method


def test_psk() -> None:
    p = default_pair(home_kw={"psk": b"correct horse"}, vm_kw={"psk": b"correct horse"})
    p.connect()
    p.run()
    home, _vm = established(p)
    assert home.peer_auth_method == AuthMethod.PSK


def test_forced_encapsulation_moves_to_4500() -> None:
    p = default_pair(home_kw={"force_encap": True})
    p.connect()
    p.run()
    ports = [(t.local[1], t.remote[1]) for _, t in p.wire_log]
    assert ports == [(500, 500), (500, 500), (4500, 4500), (4500, 4500)]
    hc, vc = child_pair(p)
    assert hc.encap and vc.encap


# ----------------------------------------------------------------------------- negotiation


def test_invalid_ke_retry_with_requested_group() -> None:
    """The initiator guesses curve25519; the responder only takes ecp384 (RFC 7296 1.2)."""
    both = ike_proposal(groups=(DhId.CURVE25519, DhId.ECP_384))
    only384 = ike_proposal(groups=(DhId.ECP_384,))
    p = default_pair(home_kw={"ike": [both]}, vm_kw={"ike": [only384]})
    p.connect()
    p.run()
    home, _vm = established(p)
    assert home.suite.dh == DhId.ECP_384
    msgs = [wire.parse_message(t.data) for _, t in p.wire_log[:2]]
    n = msgs[1].notify(NotifyType.INVALID_KE_PAYLOAD)
    assert n is not None and int.from_bytes(n.data, "big") == DhId.ECP_384
    assert msgs[1].spi_r == bytes(8)  # stateless answer
    assert exchanges(p)[2] == ("IKE_SA_INIT", 0, False)


def test_cookie_round_trip() -> None:
    p = default_pair(cookie_threshold=0)
    p.connect()
    p.run()
    _home, _vm = established(p)
    first_answer = wire.parse_message(p.wire_log[1][1].data)
    cookie = first_answer.notify(NotifyType.COOKIE)
    assert cookie is not None
    retry = wire.parse_message(p.wire_log[2][1].data)
    assert isinstance(retry.payloads[0], wire.NotifyPayload)
    assert retry.payloads[0].type == NotifyType.COOKIE and retry.payloads[0].data == cookie.data


def test_no_proposal_chosen(caplog) -> None:
    p = default_pair(
        vm_kw={"ike": [ike_proposal(encr=EncrId.AES_CBC, bits=128, integ=IntegId.HMAC_SHA1_96)]}
    )
    with caplog.at_level(logging.WARNING):
        p.connect()
        p.run()
    (closed,) = p.events("home", IkeSaClosed)
    assert "NO_PROPOSAL_CHOSEN" in closed.reason and closed.error
    assert not p.events("vm", IkeSaEstablished) and not p.vm.sas
    assert "no proposal chosen" in caplog.text


def test_wrong_key_gives_authentication_failed(caplog) -> None:
    keys = Keys()
    impostor = ec.generate_private_key(ec.SECP384R1())
    home = make_policy(
        "home",
        local_id=HOME_ID,
        peer_id=VM_ID,
        local_key=impostor,
        peer_public=keys.vm.public_key(),
    )
    vm = make_policy(
        "vm",
        local_id=VM_ID,
        peer_id=HOME_ID,
        local_key=keys.vm,
        peer_public=keys.home.public_key(),
        local_net="2001:db8:c1da::2",
        remote_net="2001:db8:c1da::1",
    )
    p = Pair(home, vm)
    with caplog.at_level(logging.WARNING):
        p.connect()
        p.run()
    (h,) = p.events("home", IkeSaClosed)
    (v,) = p.events("vm", IkeSaClosed)
    assert "AUTHENTICATION_FAILED" in h.reason
    assert "does not verify" in v.reason
    assert not p.events("home", ChildSaCreated) and not p.events("vm", ChildSaCreated)
    assert not p.home.sas and not p.vm.sas


def test_unknown_peer_id_refused() -> None:
    p = default_pair(vm_kw={"peer_id": (VM_ID[0], b"someone.else.example")})
    p.connect()
    p.run()
    (v,) = p.events("vm", IkeSaClosed)
    assert "not the expected" in v.reason
    (h,) = p.events("home", IkeSaClosed)
    assert "AUTHENTICATION_FAILED" in h.reason


def test_ts_unacceptable_keeps_ike_sa() -> None:
    p = default_pair(vm_kw={"local_net": "2001:db8:ffff::/64"})
    p.connect()
    p.run()
    home, vm = established(p)
    assert home.state == vm.state == State.ESTABLISHED
    assert not p.events("home", ChildSaCreated) and not p.events("vm", ChildSaCreated)


def test_ts_narrowed_by_responder() -> None:
    """Home asks for its /64 to the VM's /64, any protocol; the VM allows only
    tcp to port 25 of one address: both end up with the intersection."""
    p = default_pair(
        home_kw={"local_net": "2001:db8:c1da::/64", "remote_net": "2001:db8:c1da::/64"},
        vm_kw={
            "proto": IpProto.TCP,
            "local_net": "2001:db8:c1da::2/128",
            "remote_net": "2001:db8:c1da::1/128",
        },
    )
    p.connect()
    p.run()
    hc, vc = child_pair(p)
    assert [ts.describe(x) for x in hc.ts_local] == ["tcp 2001:db8:c1da::1"]
    assert [ts.describe(x) for x in hc.ts_remote] == ["tcp 2001:db8:c1da::2"]
    assert hc.ts_local == vc.ts_remote and hc.ts_remote == vc.ts_local


def test_initiator_intersects_a_wider_answer(monkeypatch) -> None:
    """iked answers with its whole policy; the initiator keeps only what it asked for,
    and marks the Child SA so the data plane knows the peer may use it more widely."""
    asked = [ts.from_network(ip_network_of("2001:db8:c1da::1/128"), IpProto.TCP, 25)]
    answer = [ts.from_network(ip_network_of("2001:db8:c1da::/48"))]
    assert ts.narrow(answer, asked) == asked
    assert ts.narrow([ts.from_network(ip_network_of("192.0.2.0/24"))], asked) == []

    def whole_policy(sa, sa_p, tsi, tsr):  # the peer plays OpenIKED
        chosen = proposals.select(sa_p.proposals, sa.policy.child_proposals, ignore_dh=True)
        return chosen, sa.policy.ts_local, sa.policy.ts_remote

    p = default_pair(home_kw={"proto": IpProto.TCP})
    p.connect()
    p.run()
    hc, _ = child_pair(p)
    assert not hc.peer_ts_wider  # a narrowing responder
    monkeypatch.setattr(child_negotiation, "answer", whole_policy)
    p = default_pair(home_kw={"proto": IpProto.TCP})
    p.connect()
    p.run()
    hc, vc = child_pair(p)
    assert hc.peer_ts_wider
    assert [ts.describe(x) for x in hc.ts_local] == ["tcp 2001:db8:c1da::1"]
    assert [ts.describe(x) for x in vc.ts_local] == ["2001:db8:c1da::2"]


# ----------------------------------------------------------------------------- reliability


def drop_first(n: int, direction_port: int | None = None):
    left = [n]

    def hook(t: Transmit) -> list[Transmit]:
        if left[0] > 0:
            left[0] -= 1
            return []
        return [t]

    return hook


def test_retransmission_recovers_lost_init() -> None:
    p = default_pair()
    p.hook = drop_first(2)  # the request and its first retransmission
    p.connect()
    p.run()
    assert not p.events("home", IkeSaEstablished)
    p.advance(2.0)
    assert not p.events("home", IkeSaEstablished)
    p.advance(4.0)  # second retransmission at +6 s gets through
    established(p)


def test_lost_response_gets_cached_copy() -> None:
    """RFC 7296 2.1: a retransmitted request is answered with the same bytes,
    and the responder does not process it twice."""
    p = default_pair()
    p.connect()
    p.step()  # IKE_SA_INIT request reaches the VM
    drops = {"n": 0}

    def lose_auth_response(t: Transmit) -> list[Transmit]:
        h = wire.Header.parse(t.data)
        if h.exchange == ExchangeType.IKE_AUTH and h.is_response and drops["n"] == 0:
            drops["n"] += 1
            p.lost = t.data
            return []
        return [t]

    p.hook = lose_auth_response
    p.run()
    assert drops["n"] == 1 and not p.events("home", IkeSaEstablished)
    p.advance(2.5)
    established(p)
    resent = [
        t.data
        for d, t in p.wire_log
        if d == "vm->home" and wire.Header.parse(t.data).exchange == ExchangeType.IKE_AUTH
    ]
    assert resent == [p.lost]
    assert len(p.events("vm", ChildSaCreated)) == 1


def test_duplicates_and_reordering_are_harmless() -> None:
    p = default_pair()
    rnd = random.Random(7)

    def dup_and_shuffle(t: Transmit) -> list[Transmit]:
        out = [t, t] if rnd.random() < 0.7 else [t]
        rnd.shuffle(out)
        return out

    p.hook = dup_and_shuffle
    p.connect()
    p.run()
    established(p)
    hc, vc = child_pair(p)
    assert_children_match(hc, vc)
    assert len(p.vm.sas) == 1 and len(p.home.sas) == 1


def test_dead_peer_detected_after_retransmissions() -> None:
    p = default_pair(home_kw={"dpd_interval": 30.0})
    p.connect()
    p.run()
    established(p)
    lost: list[Transmit] = []
    p.hook = lambda t: lost.append(t) or []  # the link goes dark
    p.advance(29.0)
    assert not p.events("home", IkeSaClosed)
    p.advance(31.0)  # probe at 30 s, retransmits at +2 +4 +8 +16: still trying
    assert not p.events("home", IkeSaClosed)
    p.advance(35.0)  # the 5th try (sent at 30 + 30 s) times out 32 s later
    (closed,) = p.events("home", IkeSaClosed)
    assert "not responding" in closed.reason
    assert [e.reason for e in p.events("home", ChildSaDeleted)] == [closed.reason]
    probes = [
        t
        for t in lost
        if t.local == HOME and wire.Header.parse(t.data).exchange == ExchangeType.INFORMATIONAL
    ]
    assert len(probes) == 5 and len({t.data for t in probes}) == 1


def test_liveness_probe_answered_keeps_sa() -> None:
    p = default_pair(home_kw={"dpd_interval": 20.0}, vm_kw={"dpd_interval": 0.0})
    p.connect()
    p.run()
    p.advance(65.0)
    assert exchanges(p, "home->vm").count(("INFORMATIONAL", 2, False)) == 1
    assert ("INFORMATIONAL", 4, False) in exchanges(p, "home->vm")
    assert not p.events("home", IkeSaClosed)


def test_delete_ike_sa() -> None:
    p = default_pair()
    p.connect()
    p.run()
    p.home.close_all(p.now)
    p.run()
    (h,) = p.events("home", IkeSaClosed)
    (v,) = p.events("vm", IkeSaClosed)
    assert not h.error and not v.error and v.reason == "deleted by peer"
    assert len(p.events("vm", ChildSaDeleted)) == 1
    assert not p.home.sas and not p.vm.sas


def test_delete_child_sa() -> None:
    p = default_pair()
    p.connect()
    p.run()
    home, vm = established(p)
    hc, vc = child_pair(p)
    home.delete_child(hc.spi_in, p.now)
    p.run()
    assert [e.child.spi_in for e in p.events("vm", ChildSaDeleted)] == [vc.spi_in]
    assert [e.child.spi_in for e in p.events("home", ChildSaDeleted)] == [hc.spi_in]
    assert home.state == vm.state == State.ESTABLISHED and not home.children


# ----------------------------------------------------------------------------- robustness


def _valid_messages() -> list[bytes]:
    p = default_pair(home_kw={"force_encap": True})
    p.connect()
    p.run()
    return [t.data for _, t in p.wire_log]


VALID = _valid_messages()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.integers(0, len(VALID) - 1),
    pos=st.integers(0, 10_000),
    flip=st.integers(1, 255),
    cut=st.integers(0, 10_000),
    garbage=st.binary(max_size=64),
)
def test_mutated_datagrams_never_escape(which, pos, flip, cut, garbage) -> None:
    """Bit flips, truncations and junk into live endpoints: logged drops or
    notifies, never an exception, never an internal error."""
    p = default_pair()
    p.connect()
    p.step()  # the VM now has a half-open SA the junk may hit
    data = bytearray(VALID[which])
    data[pos % len(data)] ^= flip
    candidates = [
        bytes(data),
        bytes(data[: cut % (len(data) + 1)]),
        garbage,
        VALID[which] + garbage,
    ]
    errors: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = errors.append  # type: ignore[method-assign]
    logging.getLogger("pyike").addHandler(handler)
    try:
        for c in candidates:
            p.vm.receive(c, HOME, VM, p.now)
            p.home.receive(c, VM, HOME, p.now)
    finally:
        logging.getLogger("pyike").removeHandler(handler)
    assert not errors, [r.getMessage() for r in errors]


def test_tampered_auth_payload_is_dropped_not_fatal() -> None:
    """A corrupted IKE_AUTH request fails the ICV check: dropped, and the
    retransmitted original still establishes the SA."""
    p = default_pair()
    p.connect()
    p.step()
    corrupt = {"done": False}

    def flip_auth(t: Transmit) -> list[Transmit]:
        h = wire.Header.parse(t.data)
        if h.exchange == ExchangeType.IKE_AUTH and not h.is_response and not corrupt["done"]:
            corrupt["done"] = True
            bad = bytearray(t.data)
            bad[-1] ^= 1
            return [Transmit(bytes(bad), t.local, t.remote)]
        return [t]

    p.hook = flip_auth
    p.run()
    assert not p.events("vm", IkeSaEstablished)
    p.advance(2.5)
    established(p)


def test_keys_reported_for_keylog_match_crypto() -> None:
    p = default_pair()
    p.connect()
    p.run()
    home, _ = established(p)
    assert isinstance(home.keys, crypto.IkeKeys) and len(home.keys.sk_d) == 48


def test_state_moves_are_checked_and_logged(caplog) -> None:
    """IkeSa.set_state / set_child_state are the only writers of the states: each move
    is logged at debug level, and a move the tables do not allow is refused."""
    caplog.set_level(logging.DEBUG, logger="pyike.ike")
    p = default_pair()
    p.connect()
    p.run()
    home, _vm = established(p)
    moves = [r.getMessage().split(": ", 1)[1] for r in caplog.records if " -> " in r.getMessage()]
    assert "IKE SA INIT_SENT -> AUTH_SENT" in moves and "IKE SA AUTH_SENT -> ESTABLISHED" in moves
    assert "IKE SA INIT_DONE -> ESTABLISHED" in moves
    with pytest.raises(StateError):
        home.set_state(State.INIT_SENT)
    (child,) = home.children.values()
    home.set_child_state(child, ChildState.DELETING)
    with pytest.raises(StateError):
        home.set_child_state(child, ChildState.ACTIVE)
    assert home.state == State.ESTABLISHED and child.state == ChildState.DELETING
