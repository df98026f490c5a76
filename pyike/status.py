"""What a running daemon is doing, as plain data: ``pyikectl show sa|flows|stats``.

This is the one place that reads the IKE core's and the data plane's state for
the control socket (so a change of the core's internals is adapted here only).
Everything returned is JSON-ready: str, int, float, bool, lists and dicts.

:class:`Counters` is fed by the driver (every IKE datagram in and out) and by the
daemon (events, recoveries): ``show stats``'s IKE messages by exchange and
direction, retransmissions, SAs established and rekeyed; drops by reason are the
core's own counts (``Endpoint.guard.counters``).
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from typing import Any

from pyike import ts
from pyike.registry import ExchangeType

_RETRANSMIT_MEMORY = 1024  # recent outbound requests remembered to spot resends
_HEADER_LEN = 28  # RFC 7296 3.1
_RESPONSE_FLAG = 0x20  # the header's R bit


def _ex_name(exchange: int) -> str:
    return ExchangeType.name_of(exchange)


class Counters:
    """Event and message counts since start-up (iked's ``show stats`` and ours)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._by_kind: Counter[tuple[int, bool, bool]] = Counter()  # exchange, resp, out
        self.retransmits = 0  # our requests sent again (no answer yet)
        self.drops: Counter[str] = Counter()  # reason -> n
        self.events: Counter[str] = Counter()
        # ESP counters of Child SAs already gone, so show stats counts since start-up.
        self.esp_retired: Counter[str] = Counter()
        self._recent: dict[tuple[bytes, bytes], bytes] = {}  # (SPIs, message ID) -> digest

    def ike_message(self, data: bytes, outbound: bool) -> None:
        """One IKE message (without the non-ESP marker) was sent or received.

        Runs for every IKE datagram, a flood's included: two header bytes read and one
        counter bumped; only our own requests (few) are hashed, to spot resends."""
        if len(data) < _HEADER_LEN:
            self.drops["shorter than an IKE header"] += 1
            return
        exchange, flags = data[18], data[19]
        response = flags & _RESPONSE_FLAG
        self._by_kind[(exchange, bool(response), outbound)] += 1
        if not outbound or response:
            return
        # A retransmission is the same request again, byte for byte (RFC 7296 2.1).
        key = (data[:16], data[20:24])  # SPIs, message ID
        digest = hashlib.blake2s(data, digest_size=8).digest()
        if self._recent.get(key) == digest:
            self.retransmits += 1
        else:
            if len(self._recent) >= _RETRANSMIT_MEMORY:
                self._recent.clear()
            self._recent[key] = digest

    @property
    def messages(self) -> Counter[str]:
        """``IKE_AUTH request in`` -> count."""
        out: Counter[str] = Counter()
        for (exchange, response, outbound), n in self._by_kind.items():
            kind = "response" if response else "request"
            out[f"{_ex_name(exchange)} {kind} {'out' if outbound else 'in'}"] += n
        return out

    def retire_child(self, row: dict[str, Any]) -> None:
        """A Child SA is about to go: keep its traffic and drop counts."""
        for key in ("packets_in", "bytes_in", "packets_out", "bytes_out", "replay_drops"):
            self.esp_retired[key] += row.get(key, 0)
        for reason, n in row.get("drops_by_reason", {}).items():
            self.esp_retired[f"drop {reason}"] += n

    def drop(self, reason: str) -> None:
        self.drops[reason] += 1

    def event(self, name: str) -> None:
        self.events[name] += 1


# --------------------------------------------------------------------------- SAs


def _addr(addr: tuple) -> str:
    return f"[{addr[0]}]:{addr[1]}"


def _when(deadline: float | None, now: float) -> float | None:
    """Seconds from now to a monotonic deadline; None for never."""
    if deadline is None or deadline == float("inf"):
        return None
    return round(deadline - now, 1)


def _id_text(ident: tuple[int, bytes] | None) -> str | None:
    from pyike.ike import id_text

    return id_text(*ident) if ident else None


def _selectors(items: list) -> list[str]:
    return [ts.describe(s) for s in items]


def child_row(child: Any, dataplane: Any, now: float) -> dict[str, Any]:
    row: dict[str, Any] = {
        "spi_in": f"0x{child.spi_in:08x}",
        "spi_out": f"0x{child.spi_out:08x}",
        "state": child.state.name.lower(),
        "local_ts": _selectors(child.ts_local),
        "remote_ts": _selectors(child.ts_remote),
        "algorithms": child.suite.describe(),
        "encap": bool(child.encap),
        "local": _addr(child.local),
        "peer": _addr(child.remote),
        "age": round(now - child.created, 1),
        "rekey_in": _when(child.rekey_at, now),
        "expire_in": _when(child.expire_at, now),
        "bytes_in": 0,
        "packets_in": 0,
        "bytes_out": 0,
        "packets_out": 0,
        "replay_drops": 0,
        "drops_in": 0,
    }
    if dataplane is not None:
        inbound = dataplane.sad.get(child.spi_in)
        if inbound is not None:
            row["packets_in"], row["bytes_in"] = inbound.usage()
            counts = inbound.drop_counts()
            row["replay_drops"] = counts.get("REPLAY", 0)
            row["drops_in"] = sum(counts.values())
            row["drops_by_reason"] = {k: v for k, v in counts.items() if v}
        tx = dataplane._tx.get(child.spi_out)
        if tx is not None:
            row["packets_out"], row["bytes_out"] = tx.sa.usage()
    return row


def ike_row(sa: Any, dataplane: Any, now: float) -> dict[str, Any]:
    established = sa.established_at
    return {
        "spi_i": sa.spi_i.hex(),
        "spi_r": sa.spi_r.hex(),
        "our_spi": sa.our_spi.hex(),
        "role": "initiator" if sa.initiator else "responder",
        "policy": sa.policy.name,
        "state": sa.state.name.lower(),
        "local": _addr(sa.local),
        "peer": _addr(sa.peer),
        "local_id": _id_text(sa.policy.local_id),
        "peer_id": _id_text(sa.peer_id) or _id_text(sa.policy.peer_id),
        "algorithms": sa.suite.describe() if sa.suite is not None else None,
        "nat_t": bool(sa.nat_detected),
        "age": round(now - sa.created, 1),
        "established_for": round(now - established, 1) if established is not None else None,
        "rekey_in": _when(sa.rekey_at, now),
        "last_heard": round(now - sa.last_heard(), 1),
        "children": [
            child_row(c, dataplane, now) for c in sorted(sa.children.values(), key=_child_key)
        ],
    }


def _child_key(child: Any) -> tuple:
    return (child.created, child.spi_in)


def sas(daemon: Any, now: float | None = None) -> list[dict[str, Any]]:
    """Every IKE SA the endpoint knows, oldest first, with its Child SAs."""
    now = daemon.driver.now() if now is None else now
    dp = getattr(daemon, "dataplane", None)
    rows = [ike_row(sa, dp, now) for sa in daemon.endpoint.sas.values()]
    rows.sort(key=lambda r: -r["age"])
    return rows


def counts(daemon: Any) -> tuple[int, int]:
    """(established IKE SAs, Child SAs on them): for sd_notify's STATUS."""
    from pyike.ike import State

    ike = [sa for sa in daemon.endpoint.sas.values() if sa.state == State.ESTABLISHED]
    return len(ike), sum(len(sa.children) for sa in ike)


def flows(daemon: Any) -> list[dict[str, Any]]:
    """The configured flows of every policy, and which Child SA carries each now."""
    out: list[dict[str, Any]] = []
    config = daemon.config
    if config is None:
        return out
    carried: dict[tuple[str, str, str], str] = {}
    for sa in daemon.endpoint.sas.values():
        for c in sa.children.values():
            if c.state.name.lower() in ("active", "rekeying"):
                for a in c.ts_local:
                    for b in c.ts_remote:
                        carried[(sa.policy.name, ts.describe(a), ts.describe(b))] = (
                            f"0x{c.spi_out:08x}"
                        )
    from pyike.daemon import flows_to_selectors

    for p in config.policies:
        local, remote = flows_to_selectors(p)
        for a in local:
            for b in remote:
                la, rb = ts.describe(a), ts.describe(b)
                out.append(
                    {
                        "policy": p.name,
                        "mode": "active" if p.active else "passive",
                        "from": la,
                        "to": rb,
                        "peer": p.peer_host or (str(p.peer) if p.peer is not None else "any"),
                        "sa_out": carried.get((p.name, la, rb)),
                    }
                )
    return out


def _guard_counts(daemon: Any) -> Counter[str]:
    guard = getattr(daemon.endpoint, "guard", None)
    return Counter(getattr(guard, "counters", {}))


def stats(daemon: Any) -> dict[str, Any]:
    c: Counters = daemon.counters
    dp = getattr(daemon, "dataplane", None)
    esp: dict[str, Any] = {}
    if dp is not None:
        esp = dict(dp.stats())
        retired = c.esp_retired
        live_drops: Counter[str] = Counter(
            {k[5:]: v for k, v in retired.items() if k.startswith("drop ")}
        )
        packets_in, bytes_in = retired["packets_in"], retired["bytes_in"]
        packets_out, bytes_out = retired["packets_out"], retired["bytes_out"]
        for sa in daemon.endpoint.sas.values():
            for child in sa.children.values():
                inbound = dp.sad.get(child.spi_in)
                if inbound is not None:
                    p, b = inbound.usage()
                    packets_in, bytes_in = packets_in + p, bytes_in + b
                    live_drops.update(inbound.drop_counts())
                tx = dp._tx.get(child.spi_out)
                if tx is not None:
                    p, b = tx.sa.usage()
                    packets_out, bytes_out = packets_out + p, bytes_out + b
        replays = live_drops.get("REPLAY", 0)  # the retired SAs' are in live_drops too
        esp.update(
            packets_in=packets_in,
            bytes_in=bytes_in,
            packets_out=packets_out,
            bytes_out=bytes_out,
            replay_drops=replays,
            drops_by_reason={k: v for k, v in live_drops.items() if v},
        )
    ike_sas, child_sas = counts(daemon)
    return {
        "uptime": round(time.monotonic() - c.started, 1),
        "ike_sas": ike_sas,
        "child_sas": child_sas,
        "ike_messages": dict(sorted(c.messages.items())),
        "retransmits": c.retransmits,
        # The core counts every refusal by kind (pyike.ike.guard); ours are the driver's.
        "ike_drops": dict(sorted((_guard_counts(daemon) + c.drops).items())),
        "ike_dropped_total": int(getattr(daemon.endpoint, "dropped", 0)),
        "events": dict(sorted(c.events.items())),
        "esp": esp,
        "esp_note": "inner packets and bytes, drops by reason: every Child SA since start-up",
    }
