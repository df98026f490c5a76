"""A peer that declared wider selectors (OpenIKED) may use any of our Child SAs with it.

The guide's home config has three policies to the VM (tcp from port 25, tcp to port
25, icmp6). OpenIKED answers each with its whole policy and sends all classes of
traffic on its newest Child SA; esp.PeerFlows lets those packets in when another
of our Child SAs with that peer allows them, and nothing else.
"""

from __future__ import annotations

import struct
from ipaddress import ip_address, ip_network

import pytest

from pyike import esp, ts
from pyike.registry import EncrId, IntegId, IpProto

VPN0, VPN1 = ip_address("2001:db8:c1da::1"), ip_address("2001:db8:c1da::2")
KEY, SALT = bytes(range(32)), b"salt"


def sel(addr, proto: int = 0, port: int | None = None):
    return ts.from_network(ip_network(f"{addr}/128"), proto, port)


# The guide's three policies, from home's side: (local, remote).
SMTP_IN = ([sel(VPN0, IpProto.TCP, 25)], [sel(VPN1, IpProto.TCP)])
SMTP_OUT = ([sel(VPN0, IpProto.TCP)], [sel(VPN1, IpProto.TCP, 25)])
ICMP6 = ([sel(VPN0, IpProto.ICMPV6)], [sel(VPN1, IpProto.ICMPV6)])


def ipv6(src, dst, proto: int, body: bytes) -> bytes:
    return struct.pack("!IHBB", 6 << 28, len(body), proto, 64) + src.packed + dst.packed + body


def tcp(sport: int, dport: int) -> bytes:
    return ipv6(
        VPN1, VPN0, 6, struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 5 << 4, 2, 65535, 0, 0)
    )


def echo() -> bytes:
    return ipv6(VPN1, VPN0, 58, struct.pack("!BBHHH", 128, 0, 0, 1, 1))


def pair(policy: tuple, flows: esp.PeerFlows | None) -> tuple[esp.OutboundSa, esp.InboundSa]:
    out = esp.OutboundSa(0x1000, EncrId.AES_GCM_16, 256, IntegId.NONE, KEY + SALT, b"")
    inb = esp.InboundSa(
        0x1000,
        EncrId.AES_GCM_16,
        256,
        IntegId.NONE,
        KEY + SALT,
        b"",
        local_ts=policy[0],
        remote_ts=policy[1],
        peer_flows=flows,
    )
    return out, inb


@pytest.mark.parametrize("wider", [False, True])
def test_other_classes_on_the_icmp6_sa(wider: bool) -> None:
    flows = esp.PeerFlows()
    for local, remote in (SMTP_IN, SMTP_OUT, ICMP6):
        flows.add(local, remote)
    out, inb = pair(ICMP6, flows if wider else None)
    assert inb.open(out.seal(echo(), 41))[1] == echo()  # its own class, always
    for pkt in (tcp(40000, 25), tcp(25, 40000)):  # the VM's SMTP client / server
        if wider:
            assert inb.open(out.seal(pkt, 41))[1] == pkt
        else:
            with pytest.raises(esp.EspDrop) as e:
                inb.open(out.seal(pkt, 41))
            assert e.value.reason == esp.DropReason.SELECTOR_MISMATCH
    assert inb.other_sa_flows == (2 if wider else 0)
    # TCP between two ephemeral ports matches none of the three policies.
    with pytest.raises(esp.EspDrop) as e:
        inb.open(out.seal(tcp(40000, 40001), 41))
    assert e.value.reason == esp.DropReason.SELECTOR_MISMATCH


def test_removed_child_takes_its_flows_along() -> None:
    flows = esp.PeerFlows()
    keys = [flows.add(*ICMP6), flows.add(*SMTP_IN), flows.add(*SMTP_IN)]  # and a rekey
    out, inb = pair(ICMP6, flows)
    flows.remove(keys[1])
    assert inb.open(out.seal(tcp(40000, 25), 41))  # the rekeyed SMTP SA still counts
    flows.remove(keys[2])
    with pytest.raises(esp.EspDrop):
        inb.open(out.seal(tcp(40001, 25), 41))
