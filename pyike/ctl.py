"""``pyikectl``: ikectl(8)'s verbs for a running pyike, over its control socket.

    pyikectl [-s socket] [--json] show sa|flows|stats
    pyikectl [-s socket] reload | reset all|sa|policy NAME|id ID
    pyikectl [-s socket] log verbose|brief | monitor [--ladder] | active | passive

Errors (no daemon, no access to the socket, a refused request) are one line on
stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from pyike import __version__
from pyike.control import (
    DEFAULT_SOCKET,
    SERVICE_SOCKET,
    VERBS,
    ClientError,
    monitor,
    request,
)

USAGE_VERBS = (
    "show sa | show flows | show stats | reload | reset all | reset sa | "
    "reset policy NAME | reset id ID | log verbose | log brief | monitor | active | passive"
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pyikectl",
        description="Control a running pyike through its control socket (as ikectl does iked).",
        epilog=f"commands: {USAGE_VERBS}",
    )
    p.add_argument(
        "-s",
        dest="socket",
        type=Path,
        default=None,
        help=f"control socket (default: {DEFAULT_SOCKET}, or the unit's {SERVICE_SOCKET})",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output (show, monitor)")
    p.add_argument(
        "--ladder",
        action="store_true",
        help="monitor: every IKE message as RFC 7296 draws it (HDR, SAi1, KEi, Ni  -->)",
    )
    p.add_argument("--version", action="version", version=f"pyikectl {__version__}")
    p.add_argument("words", nargs="+", metavar="command", help="e.g. show sa")
    return p


def parse_command(words: list[str]) -> tuple[str, str | None]:
    """``["reset", "policy", "icmp6"]`` -> ("reset policy", "icmp6"), or ValueError."""
    for n in (2, 1):
        verb = " ".join(words[:n])
        if len(words) >= n and verb in VERBS:
            rest = words[n:]
            if VERBS[verb]:
                if len(rest) != 1:
                    raise ValueError(f"'{verb}' needs one argument")
                return verb, rest[0]
            if rest:
                raise ValueError(f"'{verb}' takes no argument (got {' '.join(rest)!r})")
            return verb, None
    raise ValueError(f"unknown command {' '.join(words)!r}; commands: {USAGE_VERBS}")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    s = round(seconds)
    if s < 0:
        return "due"
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def render_sas(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no IKE SAs"
    out = []
    for r in rows:
        out.append(
            f"IKE SA {r['our_spi']} policy '{r['policy']}' {r['role']} {r['state']}, "
            f"age {_duration(r['age'])}, rekey in {_duration(r['rekey_in'])}"
        )
        out.append(f"  spi i {r['spi_i']} r {r['spi_r']}  {r['algorithms'] or '-'}")
        out.append(
            f"  local {r['local']} {r['local_id'] or '-'}  peer {r['peer']} "
            f"{r['peer_id'] or '-'}{'  nat-t' if r['nat_t'] else ''}"
        )
        for c in r["children"]:
            flows = "; ".join(
                f"{a} -> {b}" for a in c["local_ts"] for b in c["remote_ts"]
            )  # local -> remote
            out.append(
                f"  Child SA in {c['spi_in']} out {c['spi_out']} {c['state']}  {c['algorithms']}"
            )
            out.append(f"    flows {flows}")
            out.append(
                f"    in {c['bytes_in']} bytes {c['packets_in']} packets, out {c['bytes_out']} "
                f"bytes {c['packets_out']} packets, replay drops {c['replay_drops']}, "
                f"age {_duration(c['age'])}, rekey in {_duration(c['rekey_in'])}"
            )
    return "\n".join(out)


def render_flows(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no flows"
    return "\n".join(
        f"flow esp from {r['from']} to {r['to']} peer {r['peer']} policy '{r['policy']}' "
        f"{r['mode']} {'sa ' + r['sa_out'] if r['sa_out'] else 'no SA'}"
        for r in rows
    )


def render_stats(st: dict[str, Any]) -> str:
    out = [
        f"uptime {_duration(st['uptime'])}, {st['ike_sas']} IKE SAs, {st['child_sas']} Child SAs",
        "IKE messages:",
        *(f"  {k}: {v}" for k, v in st["ike_messages"].items()),
        f"IKE retransmissions of our requests: {st['retransmits']}",
        f"IKE drops: {st.get('ike_dropped_total', 0)} datagrams in the core; by reason:",
        *(f"  {k}: {v}" for k, v in st["ike_drops"].items()),
        "events:",
        *(f"  {k}: {v}" for k, v in st["events"].items()),
    ]
    esp = st.get("esp") or {}
    if esp:
        out.append("ESP:")
        for k, v in esp.items():
            if k == "drops_by_reason":
                for reason, n in v.items():
                    out.append(f"  drops {reason}: {n}")
            else:
                out.append(f"  {k}: {v}")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    p = _parser()
    args = p.parse_intermixed_args(argv)
    try:
        verb, arg = parse_command(args.words)
    except ValueError as e:
        print(f"pyikectl: {e}", file=sys.stderr)
        return 2
    if args.socket is None:
        args.socket = next(
            (p for p in (DEFAULT_SOCKET, SERVICE_SOCKET) if p.exists()), DEFAULT_SOCKET
        )
    try:
        if verb == "monitor":
            for event in monitor(args.socket):
                if (event.get("event") == "message") != args.ladder:
                    continue  # messages only with --ladder, and only messages then
                if args.ladder and not args.json:
                    print(event.get("line", ""), flush=True)
                elif args.json:
                    print(json.dumps(event), flush=True)
                else:
                    stamp = time.strftime("%H:%M:%S", time.localtime(event.get("time", 0)))
                    print(f"{stamp} {event.get('event')}: {event.get('line', '')}", flush=True)
            print("pyikectl: the daemon closed the monitor stream", file=sys.stderr)
            return 0
        data = request(args.socket, verb, arg)
    except ClientError as e:
        print(f"pyikectl: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if args.json:
        print(json.dumps(data, indent=2))
    elif verb == "show sa":
        print(render_sas(data))
    elif verb == "show flows":
        print(render_flows(data))
    elif verb == "show stats":
        print(render_stats(data))
    elif verb == "reload":
        print(f"reloaded: {data['policies']} policies")
    elif verb.startswith("reset"):
        print(f"{verb}: deleting {data['deleted']} IKE SA(s)")
    elif verb.startswith("log"):
        print(f"log verbosity {data['verbosity']}")
    else:
        print(data.get("mode", "ok") if isinstance(data, dict) else "ok")
    return 0
