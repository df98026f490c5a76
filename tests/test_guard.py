"""Admission control (pyike/ike/guard.py) and resource limits (pyike/limits.py), sans-IO.

Two real Endpoints on a fake wire (tests/ike_pair.py); the attacker's datagrams are
pyike's own IKE_SA_INIT requests with other SPIs and sources, or bytes off a fuzzer.
"""

from __future__ import annotations

import logging
import os
from ipaddress import ip_address

import pytest

from pyike import wire
from pyike.ike import Endpoint, IkeSaEstablished, State
from pyike.ike.guard import cookie_reply, cookie_value, scan_init_request
from pyike.limits import Limits
from pyike.registry import ExchangeType, NotifyType
from tests.ike_pair import HOME, VM, default_pair


def _init_request() -> bytes:
    p = default_pair()
    p.connect()
    (t,) = p.home.datagrams_to_send()
    return t.data


def _source(n: int) -> tuple:
    return (ip_address(f"203.0.113.{n % 250 + 1}"), 500)


def _spoof(data: bytes, n: int) -> bytes:
    return n.to_bytes(8, "big") + data[8:]


def test_scan_finds_spi_nonce_and_cookie_without_a_full_parse() -> None:
    data = _init_request()
    msg = wire.parse_message(data)
    scan = scan_init_request(data)
    assert scan is not None
    assert scan.spi_i == msg.spi_i
    assert scan.nonce == msg.find(wire.NoncePayload).data  # type: ignore[union-attr]
    assert scan.cookie is None
    # The same request with a COOKIE notify in front (2.6), as an initiator retries it.
    p = default_pair(cookie_threshold=0)
    p.connect()
    p.run()
    retry = p.wire_log[2][1].data
    sent = wire.parse_message(retry).notify(NotifyType.COOKIE)
    assert sent is not None and scan_init_request(retry).cookie == sent.data  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: d[:27],  # shorter than a header
        lambda d: d[:-1],  # length field disagrees
        lambda d: d[:18] + b"\x23" + d[19:],  # IKE_AUTH, not IKE_SA_INIT
        lambda d: d[:19] + b"\x20" + d[20:],  # a response
        lambda d: d[:17] + b"\x10" + d[18:],  # IKE major version 1
        lambda d: d[:30] + b"\x00\x02" + d[32:],  # first payload length 2 < 4
    ],
)
def test_scan_refuses_what_is_not_a_well_framed_init_request(mangle) -> None:
    assert scan_init_request(mangle(_init_request())) is None


def test_scan_never_raises_on_random_bytes() -> None:
    data = _init_request()
    for n in range(3000):
        cut = bytearray(data[: n % len(data) + 1])
        cut[n % len(cut)] ^= 1 << (n % 8)
        scan_init_request(bytes(cut))
        scan_init_request(os.urandom(n % 600))


def test_cookie_reply_is_what_the_full_parser_reads() -> None:
    cookie = cookie_value(b"s" * 32, b"n" * 32, ip_address("192.0.2.1"), b"i" * 8)
    msg = wire.parse_message(cookie_reply(b"i" * 8, cookie))
    assert msg.exchange == ExchangeType.IKE_SA_INIT and msg.is_response
    assert msg.spi_i == b"i" * 8 and msg.spi_r == bytes(8) and msg.message_id == 0
    n = msg.notify(NotifyType.COOKIE)
    assert n is not None and n.data == cookie and len(msg.payloads) == 1


def test_spoofed_flood_keeps_no_state_and_a_real_initiator_gets_in(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Past the threshold every spoofed request gets a COOKIE (each of the 250 sources
    up to its burst, then nothing) and no SA; the table stays at the threshold; a real
    initiator (which echoes the cookie) still establishes; and 10,000 datagrams write
    at most a handful of log lines."""
    limits = Limits(cookie_threshold=8)
    p = default_pair(limits=limits)
    data = _init_request()
    with caplog.at_level(logging.INFO, logger="pyike"):
        for n in range(10_000):
            if n == 8:  # the first 8 are answered in full (and logged at -v as such)
                caplog.clear()
            p.vm.receive(_spoof(data, n + 1), _source(n), VM, p.now)
        replies = p.vm.datagrams_to_send()
    assert len(p.vm.half_open) == 8
    assert len(p.vm.sas) == 8
    answered = 250 * limits.cookie_burst  # the first 8, answered in full, took none
    cookies = [wire.parse_message(t.data).notify(NotifyType.COOKIE) for t in replies[8:]]
    assert len(cookies) == answered and all(c is not None for c in cookies)
    assert p.vm.guard.counters["cookie_sent"] == answered
    assert p.vm.guard.counters["cookie_limited"] == 10_000 - 8 - answered
    assert len(caplog.records) <= 2, [r.getMessage() for r in caplog.records]
    p.connect()
    p.run()
    assert p.events("home", IkeSaEstablished) and p.events("vm", IkeSaEstablished)


def test_cookie_answers_per_source_refill_with_time() -> None:
    """A source past its budget is answered again once its bucket refills, and a valid
    COOKIE is never refused for want of a token: it costs no answer."""
    limits = Limits(cookie_threshold=0, cookies_per_source_per_s=2.0, cookie_burst=3)
    p = default_pair(limits=limits)
    data, src = _init_request(), _source(0)
    for n in range(10):
        p.vm.receive(_spoof(data, n + 1), src, VM, p.now)
    assert len(p.vm.datagrams_to_send()) == 3
    p.now += 1.0  # two tokens back
    for n in range(10):
        p.vm.receive(_spoof(data, n + 100), src, VM, p.now)
    assert len(p.vm.datagrams_to_send()) == 2
    p.connect()  # the real initiator, from another address, echoes its cookie
    p.run()
    assert p.events("vm", IkeSaEstablished)


def test_half_open_table_is_bounded_oldest_goes() -> None:
    """Initiators that pass the cookie but never authenticate: the table stays at its
    limit and the oldest make room."""
    p = default_pair(limits=Limits(cookie_threshold=1000, half_open=5))
    data = _init_request()
    for n in range(12):
        p.vm.receive(_spoof(data, n + 1), _source(n), VM, p.now)
    assert len(p.vm.half_open) == 5
    assert p.vm.guard.counters["half_open_evicted"] == 7
    kept = sorted(int.from_bytes(spi_i, "big") for spi_i, _ in p.vm.half_open)
    assert kept == [8, 9, 10, 11, 12]
    assert len(p.vm.sas) == 5  # the evicted ones are gone from the SA table too


def test_total_ike_sa_limit_drops_new_initiators() -> None:
    p = default_pair(limits=Limits(cookie_threshold=1000, ike_sas=3))
    data = _init_request()
    for n in range(6):
        p.vm.receive(_spoof(data, n + 1), _source(n), VM, p.now)
    assert len(p.vm.sas) == 3
    assert p.vm.guard.counters["limit_ike_sas"] == 3


def test_signature_checks_are_rate_limited_per_source() -> None:
    """With a budget of one verification, a second initiator from the same address waits
    for a token: its IKE_AUTH is dropped unanswered, then its retransmission gets in."""
    limits = Limits(auth_burst=1, auth_per_source_per_s=0.1)
    p = default_pair(limits=limits)
    p.connect()
    p.run()
    assert len(p.events("vm", IkeSaEstablished)) == 1
    # A second home endpoint, same address, new IKE SA.
    second = Endpoint(lambda *_: p.home_policy, limits=limits)  # type: ignore[arg-type]
    sa = second.connect(p.home_policy, HOME, VM, p.now)
    for _ in range(10):  # IKE_SA_INIT there and back, then IKE_AUTH
        for t in second.datagrams_to_send():
            p.vm.receive(t.data, t.local, t.remote, p.now)
        for t in p.vm.datagrams_to_send():
            second.receive(t.data, t.local, t.remote, p.now)
    assert sa.state == State.AUTH_SENT
    assert p.vm.guard.counters["auth_rate_limited"] >= 1
    # 10 s later a token is back: the retransmitted IKE_AUTH is verified and answered.
    now = p.now + 11.0
    second.handle_timer(now)
    for _ in range(5):
        for t in second.datagrams_to_send():
            p.vm.receive(t.data, t.local, t.remote, now)
        for t in p.vm.datagrams_to_send():
            second.receive(t.data, t.local, t.remote, now)
    assert sa.state == State.ESTABLISHED


def test_child_sa_limit_answers_no_additional_sas() -> None:
    p = default_pair(limits=Limits(child_sas_per_ike_sa=1))
    p.connect()
    p.run()
    (home,) = p.home.sas.values()
    (vm,) = p.vm.sas.values()
    home.create_child(p.now)
    p.run()
    assert len(vm.children) == 1 and len(home.children) == 1
    answers = [wire.parse_message(t.data) for name, t in p.wire_log if name == "vm->home"]
    last = answers[-1]
    assert last.exchange == ExchangeType.CREATE_CHILD_SA and last.is_response
    # The answer is encrypted: decrypt it with the home side's keys to read the notify.
    plain = home.unprotect(p.wire_log[-1][1].data, last)
    assert any(
        isinstance(x, wire.NotifyPayload) and x.type == NotifyType.NO_ADDITIONAL_SAS for x in plain
    ), plain
    # A rekey of the one Child SA is still allowed (it replaces, not adds).
    (child,) = home.children.values()
    home.rekey_child(child.spi_in, p.now)
    p.run()
    assert len(vm.children) == 1 and next(iter(home.children)) != child.spi_in


def test_ike_sas_per_peer_identity_oldest_deleted() -> None:
    p = default_pair(limits=Limits(ike_sas_per_peer=2))
    for _ in range(4):
        p.connect()
        p.run()
        p.now += 1.0
    live = [sa for sa in p.vm.sas.values() if sa.state == State.ESTABLISHED]
    assert len(live) == 2
    assert p.vm.guard.counters["limit_ike_sas_per_peer"] == 2


def test_repeated_drops_log_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    ep = Endpoint()
    with caplog.at_level(logging.INFO, logger="pyike"):
        for n in range(5000):
            ep.receive(b"\x00" * (n % 27), HOME, VM, 1000.0 + n * 0.01)  # 50 s of garbage
        assert len(caplog.records) == 1
        ep.receive(b"junk", HOME, VM, 1000.0 + 61.0)
        assert len(caplog.records) == 2
    assert "more like this in the last minute" in caplog.records[-1].getMessage()
    assert ep.guard.counters["ike_malformed"] == 5001


def test_limit_overrides_parse_and_refuse_nonsense() -> None:
    limits = Limits().with_overrides(["half_open=64", "auth-per-source-per-s=2.5"])
    assert limits.half_open == 64 and limits.auth_per_source_per_s == 2.5
    for bad, words in (
        ("half_open", "unknown limit"),
        ("nonsense=3", "unknown limit"),
        ("half_open=many", "is not a whole number"),
        ("half_open=0", "must be positive"),
    ):
        with pytest.raises(ValueError, match=words):
            Limits().with_overrides([bad])


def test_reuseport_steering_sends_notify_first_messages_to_the_priority_socket() -> None:
    """The kernel runs driver._STEER_COOKIES: a COOKIE retry (Notify first) lands on the
    priority socket, any other IKE message on socket 0 (loopback only)."""
    import socket

    from pyike import driver

    main = driver.open_udp(socket.AF_INET, 0, "127.0.0.1", reuseport=True)
    port = main.sock.getsockname()[1]
    try:
        assert driver.attach_cookie_steering(main)
        prio = driver.open_udp(socket.AF_INET, port, "127.0.0.1", reuseport=True)
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        plain = _init_request()
        p = default_pair(cookie_threshold=0)
        p.connect()
        p.run()
        with_cookie = p.wire_log[2][1].data
        assert with_cookie[16] == 41 and plain[16] != 41
        for d in (plain, with_cookie, plain, with_cookie, b"short"):
            client.sendto(d, ("127.0.0.1", port))
        got: dict[str, list[bytes]] = {"main": [], "prio": []}
        for name, s in (("main", main), ("prio", prio)):
            s.sock.settimeout(1.0)
            for _ in range(5):
                try:
                    got[name].append(s.sock.recv(65536))
                except TimeoutError:
                    break
        assert got["prio"] == [with_cookie, with_cookie]
        assert got["main"] == [plain, plain, b"short"]
    finally:
        main.sock.close()
        if "prio" in locals():
            prio.sock.close()
        if "client" in locals():
            client.close()


def test_flooding_sources_are_blocked_for_a_while_then_freed() -> None:
    """A source refused HEAVY_REFUSALS COOKIE answers within a window is handed to the
    kernel's drop list (guard.flooding_sources) for BLOCK_S; a source within a few
    times its budget never is; IPv6 sources are left to the budget (IPv4 filter)."""
    from pyike.ike import guard as g

    limits = Limits(cookie_threshold=0, cookies_per_source_per_s=2.0, cookie_burst=4)
    p = default_pair(limits=limits)
    data = _init_request()
    flood, mild = _source(1), _source(2)
    six = (ip_address("2001:db8:ff::1"), 500)
    for n in range(g.HEAVY_REFUSALS + 10):
        p.vm.receive(_spoof(data, n + 1), flood, VM, p.now)
        p.vm.receive(_spoof(data, n + 1), six, VM, p.now)
    for n in range(8):  # twice its burst: refused a few times, not a flood
        p.vm.receive(_spoof(data, n + 500), mild, VM, p.now)
    p.now += g.HEAVY_WINDOW_S
    blocked = p.vm.guard.flooding_sources(p.now)
    assert blocked == frozenset({int(flood[0])})
    assert p.vm.guard.flooding_sources(p.now + 0.01) is None  # not due yet
    p.now += g.HEAVY_WINDOW_S
    assert p.vm.guard.flooding_sources(p.now) is None  # unchanged: nothing to install
    p.now += g.BLOCK_S
    assert p.vm.guard.flooding_sources(p.now) == frozenset()  # expired, no new refusals


def test_blocklist_filter_drops_only_the_listed_sources_in_the_kernel() -> None:
    """driver.blocklist_program run by the kernel on a loopback socket: datagrams from a
    listed source never reach the socket, others do; detaching restores them."""
    import socket

    from pyike import driver

    rx = driver.open_udp(socket.AF_INET, 0, "127.0.0.1")
    port = rx.sock.getsockname()[1]
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.sock.settimeout(0.3)

    def arrives(payload: bytes) -> bool:
        tx.sendto(payload, ("127.0.0.1", port))
        try:
            return rx.sock.recv(100) == payload
        except TimeoutError:
            return False

    loopback = int(ip_address("127.0.0.1"))
    others = [int(ip_address(f"203.0.113.{i}")) for i in range(1, 200)]
    try:
        assert arrives(b"before")
        assert driver.attach_blocklist(rx, others)
        assert arrives(b"not listed")
        assert driver.attach_blocklist(rx, [*others, loopback])
        assert not arrives(b"listed")
        assert driver.attach_blocklist(rx, frozenset())
        assert arrives(b"detached")
        assert driver.attach_blocklist(rx, frozenset())  # detaching twice is fine
        with pytest.raises(ValueError):
            driver.blocklist_program(range(256))
    finally:
        rx.sock.close()
        tx.close()
