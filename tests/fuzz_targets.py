"""Fuzz targets: every entry point of pyike that takes bytes from outside.

Each target is a function ``one_input(data: bytes) -> None`` that feeds ``data`` to a real
pyike entry point, exactly as the daemon does, and lets through only the exception that
entry point documents as "this input is bad" (the caller logs it and drops the input).
Anything else escaping is a bug: ``tools/fuzz`` (atheris, coverage-guided) reports it as a
crash, and ``tests/test_fuzz.py`` replays the committed seeds and regressions.

Targets are built lazily (``TARGETS[name]()`` returns ``one_input``) because some need
set-up: an established IKE SA to attack as an authenticated peer, ESP SAs with keys.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable
from ipaddress import ip_address
from pathlib import Path

OneInput = Callable[[bytes], None]

SEEDS = Path(__file__).parent / "data" / "fuzz"

# The 4500 port's demultiplexing and the IKE header are RFC 3948 2.2 / RFC 7296 3.1.
NOW = 1000.0


def _ike_decode() -> OneInput:
    """wire.parse_message on a whole datagram (what every received IKE message meets first)."""
    from pyike import wire

    def one_input(data: bytes) -> None:
        try:
            msg = wire.parse_message(data)
        except wire.WireError:
            return
        # What parses must re-encode without error (the decoder keeps what it accepted).
        wire.build_message(msg)

    return one_input


def _ike_endpoint() -> OneInput:
    """An unauthenticated sender: any datagram to a responder Endpoint (ports 500 and 4500).

    Nothing may escape Endpoint.receive: a bad datagram is dropped, answered with a notify
    or ignored. The endpoint is long-lived across inputs, as in the daemon, so half-open
    state piles up the way it would under a flood.
    """
    from tests.ike_pair import HOME, VM, default_pair

    pair = default_pair()
    vm = pair.vm
    clock = [NOW]

    def one_input(data: bytes) -> None:
        clock[0] += 0.001
        vm.receive(data, HOME, VM, clock[0])
        vm.datagrams_to_send()
        while vm.next_event() is not None:
            pass
        deadline = vm.get_timer()
        if deadline is not None and deadline <= clock[0]:
            vm.handle_timer(clock[0])

    return one_input


class _Established:
    """An established pair; re-made whenever an input closes or rekeys the SA away."""

    def __init__(self) -> None:
        from tests.ike_pair import default_pair

        self._make = default_pair
        self.renew()

    def renew(self) -> None:
        self.pair = self._make()
        self.pair.connect()
        self.pair.run()
        (self.home_sa,) = self.pair.home.sas.values()
        (self.vm_sa,) = self.pair.vm.sas.values()

    def alive(self) -> bool:
        from pyike.ike import State

        sas = list(self.pair.vm.sas.values())
        return len(sas) == 1 and sas[0] is self.vm_sa and self.vm_sa.state is State.ESTABLISHED


def _ike_authenticated() -> OneInput:
    """An authenticated peer sends garbage inside a valid SK payload.

    The first octet picks the exchange (IKE_AUTH, CREATE_CHILD_SA, INFORMATIONAL) and
    whether it is a request or a response, the second the first inner payload type; the rest
    is the plaintext payload chain. It is sealed with the home side's real keys and message
    ID and delivered to the VM side, so the fuzzer reaches every payload handler behind the
    integrity check (RFC 7296 3.14), as a compromised or buggy peer would.
    """
    from pyike import wire
    from pyike.registry import ExchangeType, HeaderFlag, PayloadType

    exchanges = (ExchangeType.INFORMATIONAL, ExchangeType.CREATE_CHILD_SA, ExchangeType.IKE_AUTH)
    state = _Established()

    def one_input(data: bytes) -> None:
        if len(data) < 2:
            return
        if not state.alive():
            state.renew()
        home, vm, pair = state.home_sa, state.vm_sa, state.pair
        exchange = exchanges[data[0] % len(exchanges)]
        response = bool(data[0] & 0x80)
        # A response answers the VM's last request; a request takes the ID the VM expects.
        message_id = max(0, home.peer_next_id - 1) if response else vm.peer_next_id
        out = home.cipher_out
        assert out is not None
        inner = data[2:]
        body_len = out.sealed_length(len(inner))
        flags = HeaderFlag.INITIATOR | (HeaderFlag.RESPONSE if response else 0)
        header = wire.Header(
            home.spi_i,
            home.spi_r,
            PayloadType.SK,
            exchange,
            flags,
            message_id,
            wire.HEADER_LEN + 4 + body_len,
        ).pack()
        aad = header + wire.payload_header(data[1], 4 + body_len)
        datagram = aad + out.seal(aad, inner)
        pair.now += 0.001
        pair.vm.receive(datagram, home.local, home.peer, pair.now)
        pair.vm.datagrams_to_send()
        while pair.vm.next_event() is not None:
            pass

    return one_input


def _ike_sk_unprotect() -> OneInput:
    """Forged SK payloads for a live IKE SA: right SPIs, random body (integrity must fail)."""
    from pyike.registry import ExchangeType, PayloadType

    state = _Established()

    def one_input(data: bytes) -> None:
        if not state.alive():
            state.renew()
        home, vm, pair = state.home_sa, state.vm_sa, state.pair
        body = data[1:]
        length = 28 + 4 + len(body)
        exchange = ExchangeType.INFORMATIONAL if not data or data[0] & 1 else 36
        header = (
            home.spi_i
            + home.spi_r
            + struct.pack("!BBBBII", PayloadType.SK, 0x20, exchange, 0x08, vm.peer_next_id, length)
        )
        first = data[0] if data else 0
        datagram = header + struct.pack("!BBH", first, 0, 4 + len(body)) + body
        pair.now += 0.001
        pair.vm.receive(datagram, home.local, home.peer, pair.now)
        pair.vm.datagrams_to_send()

    return one_input


def _esp_keys(encr: int, bits: int, integ: int) -> tuple[bytes, bytes]:
    from pyike import esp

    s = esp.suite_of(encr, bits, integ)
    return bytes(range(1, 1 + s.enc_key_len)), bytes(range(2, 2 + s.integ_key_len))


def _esp_open() -> OneInput:
    """ESP open for a live SA: forged packets and, through a real sender, valid ones.

    First octet: bit 0 selects AES-GCM or AES-CBC+HMAC; bit 1 says "seal the rest with the
    sender's keys first" (so the fuzzer reaches trailer, padding, Next Header and selector
    checks behind a good ICV, RFC 4303 3.4.4), and the second octet is then the Next Header.
    """
    from pyike import esp
    from pyike.registry import EncrId, IntegId

    suites = (
        (EncrId.AES_GCM_16, 256, IntegId.NONE),
        (EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128),
    )
    remote = [esp.Selector.network("2001:db8:c1da::1/128")]
    local = [esp.Selector.network("2001:db8:c1da::2/128")]
    pairs = []
    for encr, bits, integ in suites:
        ek, ik = _esp_keys(encr, bits, integ)
        out = esp.OutboundSa(0x1234, encr, bits, integ, ek, ik)
        inb = esp.InboundSa(0x1234, encr, bits, integ, ek, ik, local_ts=local, remote_ts=remote)
        pairs.append((out, inb))

    def one_input(data: bytes) -> None:
        if not data:
            return
        out, inb = pairs[data[0] & 1]
        packet = data[1:]
        if data[0] & 2 and packet:
            packet = out.seal(packet[1:], packet[0])
        with contextlib.suppress(esp.EspDrop):
            inb.open(packet)

    return one_input


def _esp_flow() -> OneInput:
    """The inner-packet parser that selector checks use (esp.parse_flow)."""
    from pyike import esp

    def one_input(data: bytes) -> None:
        esp.parse_flow(data)

    return one_input


def _config() -> OneInput:
    """iked.conf text (a config file is outside input too: a typo must be a clear error)."""
    from pyike import config

    def resolver(host: str) -> list:
        return [ip_address("192.0.2.7")]

    def one_input(data: bytes) -> None:
        text = data.decode("utf-8", "replace")
        with contextlib.suppress(config.ConfigError):
            config.parse_config(text, "fuzz.conf", resolver=resolver, hostname=lambda: "fuzz")

    return one_input


def _keys() -> OneInput:
    """Key files (private/local.key, pubkeys/...) and the peer's CERT 201 DER public key."""
    import os
    import tempfile

    from pyike import keys

    work = Path(tempfile.mkdtemp(prefix="pyike-fuzz-keys-"))
    os.chmod(work, 0o700)
    private, public = work / "local.key", work / "peer.pub"

    def one_input(data: bytes) -> None:
        with contextlib.suppress(keys.KeyFileError, keys.BadPublicKey):
            keys.load_public_key_der(data)
        for path, load in (
            (private, keys.load_private_key_file),
            (public, keys.load_public_key_file),
        ):
            path.write_bytes(data)
            path.chmod(0o600)
            with contextlib.suppress(keys.KeyFileError):
                load(path)

    return one_input


def _pcap() -> OneInput:
    """`pyike decode`'s capture readers: pcap, pcapng and hex dumps."""
    from pyike import pcap

    def one_input(data: bytes) -> None:
        with contextlib.suppress(pcap.CaptureError):
            pcap.parse_capture(data)
        with contextlib.suppress(pcap.HexError):
            pcap.read_hex(data.decode("utf-8", "replace"))

    return one_input


def _keylog() -> OneInput:
    """`--keylog` tables read back by `pyike decode`."""
    from pyike import keylog

    def one_input(data: bytes) -> None:
        text = data.decode("utf-8", "replace")
        for parse in (keylog.parse_ike_records, keylog.parse_esp_records):
            with contextlib.suppress(keylog.KeylogError):
                parse(text)

    return one_input


def _certs() -> OneInput:
    """X.509 from files (ca/, certs/, crls/) and from the peer (CERT payloads, a chain).

    The first octet says how the rest is used: bit 0, a file in ca/ and crls/ that
    CertStore.load reads; otherwise a chain of length-prefixed (2 octets) DER
    certificates that CertStore.validate checks against a real CA (pyike ca), as a
    peer's CERT payloads are.
    """
    import tempfile

    from pyike import certs
    from pyike.ca import Ca
    from pyike.registry import IdType

    work = Path(tempfile.mkdtemp(prefix="pyike-fuzz-certs-"))
    ca = Ca("fuzz", work / "ssl")
    ca.create(key_type="p256")
    ca.certificate("peer.example.org", key_type="p256")
    ca.revoke("peer.example.org")
    keydir = work / "iked"
    ca.install(keydir)
    store = certs.CertStore.load(keydir)
    files = work / "files"
    for sub in ("ca", "crls"):
        (files / sub).mkdir(parents=True)
    peer_id = (IdType.ID_FQDN, b"peer.example.org")

    def one_input(data: bytes) -> None:
        if not data:
            return
        if data[0] & 1:
            (files / "ca" / "x.crt").write_bytes(data[1:])
            (files / "crls" / "x.crl").write_bytes(data[1:])
            certs.CertStore.load(files)
            return
        chain, rest = [], data[1:]
        while len(rest) >= 2 and len(chain) < 12:
            n = int.from_bytes(rest[:2], "big")
            chain.append(rest[2 : 2 + n])
            rest = rest[2 + n :]
        with contextlib.suppress(certs.CertError):
            store.validate(chain, peer_id)

    return one_input


def _control() -> OneInput:
    """One pyikectl request line, as the control socket's server reads it."""
    from pyike import control

    def one_input(data: bytes) -> None:
        with contextlib.suppress(control.ControlError):
            control.parse_request(data)

    return one_input


class _Fragmenting(_Established):
    """An established pair that negotiated IKE fragmentation (RFC 7383)."""

    def renew(self) -> None:
        from tests.ike_pair import default_pair

        small = {"fragmentation": True, "fragment_size": 300}
        self.pair = default_pair(home_kw=small, vm_kw=small)
        self.pair.connect()
        self.pair.run()
        (self.home_sa,) = self.pair.home.sas.values()
        (self.vm_sa,) = self.pair.vm.sas.values()


def _ike_fragments() -> OneInput:
    """Authentic SKF fragments (RFC 7383 2.5) with fuzzed numbering and contents.

    Each input is a sequence of fragments: per fragment 1 octet Fragment Number, 1
    octet Total Fragments, 1 octet length, then that many plaintext octets; all are
    sealed with the home side's real keys under the VM's expected message ID and
    delivered in order, so the fuzzer drives reassembly (limits, duplicates, gaps,
    totals that change) behind the per-fragment integrity check.
    """
    from pyike import wire
    from pyike.registry import ExchangeType, HeaderFlag, PayloadType

    state = _Fragmenting()

    def one_input(data: bytes) -> None:
        if not state.alive():
            state.renew()
        home, vm, pair = state.home_sa, state.vm_sa, state.pair
        out = home.cipher_out
        assert out is not None
        rest = data
        for _ in range(80):
            if len(rest) < 3:
                break
            number, total, n = rest[0], rest[1], rest[2]
            piece, rest = rest[3 : 3 + n], rest[3 + n :]
            body_len = 4 + out.sealed_length(len(piece))
            header = wire.Header(
                home.spi_i,
                home.spi_r,
                PayloadType.SKF,
                ExchangeType.INFORMATIONAL,
                HeaderFlag.INITIATOR,
                vm.peer_next_id,
                wire.HEADER_LEN + 4 + body_len,
            ).pack()
            first = PayloadType.NOTIFY if number == 1 else 0
            aad = (
                header
                + wire.payload_header(first, 4 + body_len)
                + number.to_bytes(2, "big")
                + total.to_bytes(2, "big")
            )
            pair.now += 0.001
            pair.vm.receive(aad + out.seal(aad, piece), home.local, home.peer, pair.now)
        pair.vm.datagrams_to_send()
        while pair.vm.next_event() is not None:
            pass

    return one_input


def _privsep() -> OneInput:
    """The privileged parent's request parser: any bytes from the unprivileged side."""
    from ipaddress import ip_network

    from pyike.privsep import requests as rq

    policy = rq.PrivPolicy(
        ifname="pyike0",
        addresses=frozenset({(ip_address("2001:db8:c1da::1"), 128)}),
        routes=frozenset({ip_network("2001:db8:c1da::2/128")}),
    )

    def one_input(data: bytes) -> None:
        result = rq.parse_request(data, policy)
        assert isinstance(result, rq.Request | rq.Refusal), result  # total, never raises

    return one_input


def _natt_demux() -> OneInput:
    """Port 4500's demultiplexing (RFC 3948 2.2/2.3): ESP, IKE behind the non-ESP
    marker, keepalive or runt, as the driver sorts every datagram."""
    from pyike import driver

    def one_input(data: bytes) -> None:
        kind = driver.natt_kind(data)
        assert kind in driver.NattKind, kind

    return one_input


TARGETS: dict[str, Callable[[], OneInput]] = {
    "ike-decode": _ike_decode,
    "ike-endpoint": _ike_endpoint,
    "ike-authenticated": _ike_authenticated,
    "ike-sk-unprotect": _ike_sk_unprotect,
    "esp-open": _esp_open,
    "esp-flow": _esp_flow,
    "config": _config,
    "keys": _keys,
    "pcap": _pcap,
    "keylog": _keylog,
    "certs": _certs,
    "control": _control,
    "ike-fragments": _ike_fragments,
    "privsep": _privsep,
    "natt-demux": _natt_demux,
}
