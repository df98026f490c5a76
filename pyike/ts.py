"""Traffic selector arithmetic (RFC 7296 section 2.9).

A traffic selector says which packets a Child SA carries: an IP protocol
(0 = any), a port range and an address range. Both peers propose lists; the
responder *narrows* (answers with a subset of what was offered), and the
initiator must intersect what comes back with what it wanted, because some
peers (OpenIKED) answer with their whole policy rather than a narrowing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from pyike.registry import IpProto, TsType
from pyike.wire import TrafficSelector, UnknownSelector

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

ANY_PORT = (0, 65535)


def ts_type_for(addr: IPAddress) -> TsType:
    return TsType.TS_IPV4_ADDR_RANGE if addr.version == 4 else TsType.TS_IPV6_ADDR_RANGE


def from_network(
    net: IPNetwork, proto: int | None = None, port: int | None = None
) -> TrafficSelector:
    """A selector for a whole network, one protocol (None = any) and one port (None = any)."""
    lo, hi = (port, port) if port else ANY_PORT
    return TrafficSelector(
        ts_type=ts_type_for(net.network_address),
        ip_proto=proto or IpProto.ANY,
        start_port=lo,
        end_port=hi,
        start_addr=net.network_address,
        end_addr=net.broadcast_address,
    )


def intersect(a: TrafficSelector, b: TrafficSelector) -> TrafficSelector | None:
    """The selector covering exactly what both cover, or None if disjoint."""
    if a.ts_type != b.ts_type:
        return None
    if a.ip_proto and b.ip_proto and a.ip_proto != b.ip_proto:
        return None
    lo_port, hi_port = max(a.start_port, b.start_port), min(a.end_port, b.end_port)
    lo_addr, hi_addr = max(a.start_addr, b.start_addr), min(a.end_addr, b.end_addr)
    # Same ts_type, so the same address family: the comparison is defined.
    if lo_port > hi_port or lo_addr > hi_addr:  # type: ignore[operator]
        return None
    return TrafficSelector(
        ts_type=a.ts_type,
        ip_proto=a.ip_proto or b.ip_proto,
        start_port=lo_port,
        end_port=hi_port,
        start_addr=lo_addr,
        end_addr=hi_addr,
    )


def narrow(
    offered: Sequence[TrafficSelector | UnknownSelector], allowed: Iterable[TrafficSelector]
) -> list[TrafficSelector]:
    """Every non-empty intersection of an offered selector with an allowed one.

    Used both by the responder (offered = the initiator's TS, allowed = the
    policy) and by the initiator (offered = the response, allowed = what it
    asked for). Duplicates are dropped, order follows ``offered``; selectors of a
    type we cannot use (wire.UnknownSelector) overlap nothing.
    """
    allowed = list(allowed)
    out: list[TrafficSelector] = []
    for o in offered:
        if not isinstance(o, TrafficSelector):
            continue
        for a in allowed:
            both = intersect(o, a)
            if both is not None and both not in out:
                out.append(both)
    return out


def covers(ts: TrafficSelector, addr: IPAddress, proto: int, port: int) -> bool:
    """Whether one packet endpoint (address, protocol, port) falls inside ``ts``."""
    return (
        (ts.ip_proto == 0 or ts.ip_proto == proto)
        and ts.start_addr.version == addr.version
        and ts.start_addr <= addr <= ts.end_addr  # type: ignore[operator]  # same family
        and ts.start_port <= port <= ts.end_port
    )


def describe(ts: TrafficSelector | UnknownSelector) -> str:
    """``tcp 2001:db8::1 port 25`` style text for logs, like iked prints flows."""
    if not isinstance(ts, TrafficSelector):  # wire.UnknownSelector: a type we cannot use
        return f"selector type {ts.ts_type}"
    if ts.start_addr == ts.end_addr:
        addr = str(ts.start_addr)
    else:
        try:
            nets = list(ipaddress.summarize_address_range(ts.start_addr, ts.end_addr))
        except (TypeError, ValueError):
            nets = []
        addr = str(nets[0]) if len(nets) == 1 else f"{ts.start_addr}-{ts.end_addr}"
    proto = "" if ts.ip_proto == 0 else IpProto.name_of(ts.ip_proto).lower() + " "
    if (ts.start_port, ts.end_port) == ANY_PORT:
        port = ""
    elif ts.start_port == ts.end_port:
        port = f" port {ts.start_port}"
    else:
        port = f" port {ts.start_port}-{ts.end_port}"
    return f"{proto}{addr}{port}"
