"""A NAT namespace between home and the VM: nftables masquerade to a UDP port
range, and the mapping change that a router reboot or a CGNAT timeout causes
(a new port range and a flushed conntrack table). Shared by
tests/test_nat_netns.py and tools/bench_recovery.py (via tests/recovery.py).

    home 192.0.2.1 --- 192.0.2.254 nat 203.0.113.254 --- 203.0.113.2 vm
"""

from __future__ import annotations

import sys

from tests.netns import Netns, veth_pair

HOME_ADDR, NAT_IN, NAT_OUT, VM_ADDR = "192.0.2.1", "192.0.2.254", "203.0.113.254", "203.0.113.2"
PORTS_A, PORTS_B = "40000-40099", "41000-41099"

_FLUSH = "from pyroute2 import Conntrack\nConntrack().flush()\n"


def masquerade(nat: Netns, ports: str, family: str = "ip", oif: str = "eth1") -> None:
    """UDP leaving the NAT's public side ``oif`` is masqueraded to ``ports``
    (``family`` "ip6" for NAT66, as the qemu iked case needs IPv6 outer addresses)."""
    nat.run(["nft", "flush ruleset"])
    nat.run(
        [
            "nft",
            f"add table {family} pyikenat; add chain {family} pyikenat post "
            f"{{ type nat hook postrouting priority 100; }}; add rule {family} pyikenat post "
            f'oifname "{oif}" meta l4proto udp masquerade to :{ports}',
        ]
    )


def wire_nat(home: Netns, nat: Netns, vm: Netns, ports: str = PORTS_A) -> None:
    """Join home -- nat -- vm (addresses above), home's default route via the NAT."""
    veth_pair(home, nat, f"{HOME_ADDR}/24", f"{NAT_IN}/24", if_a="eth0", if_b="eth0")
    veth_pair(nat, vm, f"{NAT_OUT}/24", f"{VM_ADDR}/24", if_a="eth1", if_b="eth0")
    home.run(["ip", "route", "add", "default", "via", NAT_IN])
    nat.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
    masquerade(nat, ports)


def change_mapping(nat: Netns, ports: str, family: str = "ip", oif: str = "eth1") -> None:
    """The NAT forgets its mappings; new ones come from ``ports``."""
    masquerade(nat, ports, family, oif)
    nat.run([sys.executable, "-c", _FLUSH])
