"""Forged and damaged ESP sent into a running pyike <-> pyike tunnel is dropped and counted.

The tunnel is the guide's (conf/home-iked.conf at home, conf/vm-iked.conf on the VM).
Home runs with ``--keylog``, so the test knows the real keys of the VM -> home Child
SA of the ``icmp6`` policy. From the vm namespace, a raw socket sends ESP-in-UDP
datagrams to home's UDP 4500 *as if* from the VM's pyike (source 192.0.2.2:4500),
sealed by pyike.esp with those keys:

- a valid ICMPv6 echo request (the control: it must reach home's TUN), then
- the same datagram again (replay, RFC 4303 3.4.3),
- a datagram cut to 20 bytes (shorter than any ESP packet of the suite),
- a fresh packet with one ciphertext bit flipped, and one with its ICV cut short
  (integrity, RFC 4303 3.4.4),
- a fresh packet under an SPI no SA has,
- two authentic packets outside the SA's selectors (RFC 4301 5.2): TCP to port 25
  inside the icmp6 SA, and ICMPv6 from an address that is not the VM's,
- an authentic packet whose Next Header is UDP (17: not tunnel mode),
- a second valid echo request (the SA still accepts fresh packets).

pyike logs the first drop of each kind with the running total of ESP drops
(rate-limited per reason), so the expected totals are exact. A capture on home's TUN
shows exactly the two valid echo requests and nothing else of what was injected; the
tunnel keeps working (ping both ways afterwards) and nobody logs a traceback. At exit
pyike logs its data plane totals (DataPlane.stats()): nine ESP drops, one unknown SPI.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from scapy.layers.inet import TCP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6

from pyike import esp
from pyike.keylog import ESP_TABLE_NAME, parse_esp_records
from tests.netns import TwoHosts, capture, ping, require_binary
from tests.test_tunnel_netns import VPN0, VPN1, start_pair

pytestmark = [pytest.mark.netns]

HOME_ADDR, VM_ADDR = "192.0.2.1", "192.0.2.2"
ECHO_ID = 0xBEEF
# Far enough above what the VM's pyike has sent on the SA (a few pings), close enough
# that its own next packets stay inside the 1024-packet window: they are not replays.
SEQ_BASE = 200

_SENDER = r"""
import socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
for h in sys.argv[2:]:
    p = bytes.fromhex(h)
    # UDP 4500 -> 4500, checksum 0 (none, allowed for IPv4 UDP): RFC 3948 2.1
    s.sendto(struct.pack("!HHHH", 4500, 4500, 8 + len(p), 0) + p, (sys.argv[1], 0))
    time.sleep(0.05)
"""

_CHILD = re.compile(
    r"created Child SA spi in 0x(?P<i>[0-9a-f]+) out 0x[0-9a-f]+ "
    r"\((?P<suite>[^)]*)\) icmpv6 "
)


def echo(seq: int, src: str = VPN1) -> bytes:
    return bytes(
        IPv6(src=src, dst=VPN0) / ICMPv6EchoRequest(id=ECHO_ID, seq=seq, data=b"pyike-inject")
    )


def flip_bit(packet: bytes, offset: int) -> bytes:
    return packet[:offset] + bytes([packet[offset] ^ 0x01]) + packet[offset + 1 :]


def test_forged_esp_is_dropped_and_counted(two_hosts: TwoHosts, tmp_path: Path) -> None:
    require_binary("tcpdump", "tcpdump")
    keylog = tmp_path / "keylog"
    home, vm = start_pair(two_hosts, tmp_path, home_args=("--keylog", str(keylog)))
    try:
        home.wait_log(r"created Child SA", count=3)
        vm.wait_log(r"created Child SA", count=3)
        assert ping(two_hosts.vm, VPN0, count=2) >= 1

        # The icmp6 Child SA's inbound SPI at home = the VM's outbound one.
        (m,) = [m for m in _CHILD.finditer(home.log())]
        spi = int(m["i"], 16)
        (rec,) = [
            r for r in parse_esp_records((keylog / ESP_TABLE_NAME).read_text()) if r.spi == spi
        ]
        assert (str(rec.src), str(rec.dst)) == (VM_ADDR, HOME_ADDR)
        forger = esp.OutboundSa(
            rec.spi,
            rec.encr,
            rec.key_bits,
            rec.integ,
            rec.enc_key,
            rec.integ_key,
            " esn" in m["suite"],
        )
        forger.seq = SEQ_BASE
        stranger = esp.OutboundSa(
            0xDEADBEEF,
            rec.encr,
            rec.key_bits,
            rec.integ,
            rec.enc_key,
            rec.integ_key,
            " esn" in m["suite"],
        )

        valid1 = forger.seal(echo(1), 41)
        flipped = flip_bit(forger.seal(echo(2), 41), 8 + 16)  # inside the ciphertext
        short_icv = forger.seal(echo(3), 41)[:-4]
        tcp_in_icmp6_sa = forger.seal(
            bytes(IPv6(src=VPN1, dst=VPN0) / TCP(sport=40000, dport=25, flags="S")), 41
        )
        spoofed_src = forger.seal(echo(4, src="2001:db8:c1da::99"), 41)
        udp_next_header = forger.seal(echo(5), 17)
        valid2 = forger.seal(echo(6), 41)
        # (packet, dropped?, the reason pyike logs with the running total of drops, if
        # this is the first drop of that reason: later ones are counted, not logged)
        plan: list[tuple[bytes, bool, str | None]] = [
            (valid1, False, None),
            (valid1, True, "REPLAY"),
            (valid1[:20], True, "TRUNCATED"),
            (flipped, True, "INTEGRITY"),
            (stranger.seal(echo(7), 41), True, "UNKNOWN_SPI"),
            (tcp_in_icmp6_sa, True, "SELECTOR_MISMATCH"),
            (spoofed_src, True, None),  # SELECTOR_MISMATCH again
            (short_icv, True, None),  # INTEGRITY again
            (valid1, True, None),  # REPLAY again
            (udp_next_header, True, "BAD_NEXT_HEADER"),
            (valid2, False, None),
        ]
        tun_pcap = tmp_path / "home-tun.pcap"
        with capture(two_hosts.home, "pyike0", tun_pcap, "ip6"):
            two_hosts.vm.run(
                [sys.executable, "-c", _SENDER, HOME_ADDR, *(p.hex() for p, _, _ in plan)],
                timeout=30,
            )
            drops = 0
            for _, dropped, reason in plan:
                drops += dropped
                if reason is not None:
                    home.wait_log(
                        rf"ESP from {VM_ADDR} dropped: {reason} "
                        rf"\({drops} drops so far\)",
                        timeout=10,
                    )
            # After all that, the tunnel still carries traffic both ways.
            assert ping(two_hosts.vm, VPN0, count=3) >= 2
            assert ping(two_hosts.home, VPN1, count=3) >= 2
        assert drops == 9
    finally:
        home.stop()
        vm.stop()

    from scapy.layers.inet6 import ICMPv6EchoRequest as Echo
    from scapy.utils import rdpcap

    seen = [p for p in rdpcap(str(tun_pcap)) if IPv6 in p]
    injected = [(p[IPv6].src, p[Echo].seq) for p in seen if Echo in p and p[Echo].id == ECHO_ID]
    assert injected == [(VPN1, 1), (VPN1, 6)], injected  # once each, nothing else
    assert not [p for p in seen if TCP in p], "a TCP packet outside the SA got through"
    assert not [p for p in seen if p[IPv6].src == "2001:db8:c1da::99"]
    dropped = {
        line.split("dropped: ")[1].split()[0]
        for line in home.log().splitlines()
        if "dropped: " in line
    }
    assert dropped == {
        "REPLAY",
        "TRUNCATED",
        "INTEGRITY",
        "UNKNOWN_SPI",
        "SELECTOR_MISMATCH",
        "BAD_NEXT_HEADER",
    }, dropped
    # At exit pyike logs its data plane totals: the nine drops, one of them for an SPI
    # no SA has, and at least the two valid echo requests written to the TUN.
    (totals,) = re.findall(r"data plane totals: (.*)", home.log())
    counts = dict(kv.split("=") for kv in totals.split())
    assert counts["esp_drop"] == "9" and counts["unknown_spi"] == "1", totals
    assert int(counts["tun_out"]) >= 2 + 3 + 3, totals  # + the pings after the attack
    assert "Traceback" not in home.log() + vm.log()
