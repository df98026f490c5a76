"""How fast the pyike <-> pyike tunnel comes back after outer-link faults.

Usage (root): python tools/bench_recovery.py [--runs N] [--ref-runs N]
                  [--loss-seconds S] [--down-seconds S]
                  [--faults loss,link,addr,mobike,nat-rebind,restart]

Two network namespaces run the real daemons with the guide's configs (see
tests/recovery.py). For each fault it prints the recovery time: from the fault
ending (loss removed, home link up and carrier back, new home address in
place, restarted VM daemon listening) to the first ICMPv6 echo answered
through the tunnel. No traffic crosses the tunnel during a fault; the prober
starts when the fault ends. Figures are the median (and range) of N runs,
each in a fresh tunnel that was idle for --settle seconds (plus 0-5 s at
random) before the fault. Not in the default list:
"blackhole" drops every packet on the path for --down-seconds, an outage the
home box cannot see in its own links, addresses or routes; "restart-silent"
restarts the VM daemon with INVALID_IKE_SPI answers off, as OpenIKED behaves.

"addr" changes home's outer address with ``set nomobike`` in home's config
(new IKE SAs from the new address); "mobike" is the same change with MOBIKE
(the default), the SAs moved by UPDATE_SA_ADDRESSES (RFC 4555). "nat-rebind"
puts a NAT namespace (nftables masquerade, tests/nat.py) between home and the
VM and changes its mapping on the idle tunnel (new port range, conntrack
flushed); its probe runs from the VM to home, so no traffic from home helps:
only pyike's own liveness check (NAT-D, RFC 4555 3.5) can find the change.

Side by side, the same faults with pyike run with iked's timers as the
reference (--dpd 60 --retransmit-cap 0 --no-netwatch --replace-after 0
--no-invalid-spi: probe after 60 s of silence, retransmit at 2/4/8/16/32 s, no
netlink watching, no replacement SA, no INVALID_IKE_SPI answers), which is roughly
the behaviour the guide's author worked around with ``ping -i 5`` (real iked
is lazier still: it probes an idle SA only after 300 s). Runs are bounded:
a recovery not seen within --limit seconds is reported as "> limit".
Loss uses tc netem, or nftables where the kernel lacks netem.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.pyike_proc import CONF
from tests.recovery import Tunnel

PYIKE: tuple[str, ...] = ()
IKED_TIMERS = (
    "--dpd",
    "60",
    "--retransmit-cap",
    "0",
    "--no-netwatch",
    "--replace-after",
    "0",
    "--no-invalid-spi",
)
FAULTS = ("loss", "link", "addr", "mobike", "nat-rebind", "restart", "blackhole", "restart-silent")
NOMOBIKE_CONF = "set nomobike\n"


def measure(tunnel: Tunnel, fault: str, args: argparse.Namespace) -> float | None:
    tunnel.wait_tunnel(args.limit)  # start from a working tunnel
    if fault == "loss":
        ended = tunnel.loss(30, args.loss_seconds)
    elif fault == "link":
        tunnel.link_down()
        time.sleep(args.down_seconds)
        ended = tunnel.link_up()
    elif fault == "blackhole":  # a path outage home's netlink cannot see
        ended = tunnel.loss(100, args.down_seconds)
    elif fault == "nat-rebind":  # home's public port changes; the VM must follow
        return tunnel.recovery(tunnel.rebind_nat(), args.limit, from_vm=True)
    elif fault in ("addr", "mobike"):
        new = "192.0.2.11/24" if tunnel.home_addr == "192.0.2.1/24" else "192.0.2.1/24"
        ended = tunnel.change_home_address(new)
    elif fault == "restart-silent":  # the restarted VM never answers INVALID_IKE_SPI
        ended = tunnel.restart_vm(down=2.0, extra=("--no-invalid-spi",))
    else:
        ended = tunnel.restart_vm(down=2.0)
    return tunnel.recovery(ended, args.limit)


def run_config(
    label: str, extra: tuple[str, ...], runs: int, args: argparse.Namespace, faults: list[str]
) -> dict[str, list[float | None]]:
    """Every run in a fresh tunnel, so that no run inherits the after-effects of
    another (SAs that die a minute after an outage, say); each fault comes at a
    random point of the probe cycle, after the tunnel has been idle a while."""
    out: dict[str, list[float | None]] = {f: [] for f in faults}
    rng = random.Random(args.seed)
    for fault in faults:
        for i in range(runs):
            with tempfile.TemporaryDirectory(prefix="pyike-bench-recovery-") as tmp:
                home_conf = CONF / "home-iked.conf"
                if fault == "addr":
                    home_conf = Path(tmp) / "home-nomobike.conf"
                    home_conf.write_text(NOMOBIKE_CONF + (CONF / "home-iked.conf").read_text())
                with Tunnel(
                    Path(tmp),
                    home_args=extra,
                    vm_args=extra,
                    nat=fault == "nat-rebind",
                    home_conf=home_conf,
                ) as tunnel:
                    time.sleep(args.settle + rng.uniform(0, 5))
                    took = measure(tunnel, fault, args)
                    method = tunnel.loss_method or how_recovered(tunnel.home.log())
            out[fault].append(took)
            shown = f"{took:.2f} s" if took is not None else f"> {args.limit:.0f} s"
            how = f" ({method})" if method else ""
            print(
                f"  [{label}] {fault} run {i + 1}/{runs}: {shown}{how}", file=sys.stderr, flush=True
            )
    return out


def how_recovered(home_log: str) -> str:
    """What home's pyike did: moved its SAs (MOBIKE) or made new ones."""
    moved = "UPDATE_SA_ADDRESSES" in home_log
    new = "re-establishing" in home_log or "negotiating a replacement" in home_log
    return {(True, False): "moved", (False, True): "new IKE SA", (True, True): "moved+new"}.get(
        (moved, new), ""
    )


def summary(values: list[float | None], limit: float) -> str:
    if not values:
        return "-"
    known = [v if v is not None else float("inf") for v in values]
    med = statistics.median(known)
    text = f"{med:.2f} s" if med != float("inf") else f"> {limit:.0f} s"
    if len(values) > 1:
        lo, hi = min(known), max(known)
        hi_text = f"{hi:.2f}" if hi != float("inf") else f">{limit:.0f}"
        text += f" ({lo:.2f}-{hi_text}, n={len(values)})"
    return text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="runs per fault with pyike's defaults")
    p.add_argument(
        "--ref-runs",
        type=int,
        default=1,
        help="runs per fault with iked's timers (0 = no reference)",
    )
    p.add_argument("--loss-seconds", type=float, default=60.0)
    p.add_argument("--down-seconds", type=float, default=120.0)
    p.add_argument(
        "--limit", type=float, default=150.0, help="give up on one recovery after this many seconds"
    )
    p.add_argument(
        "--settle",
        type=float,
        default=10.0,
        help="idle seconds (plus 0-5 s at random) before each fault",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--faults",
        default=",".join(FAULTS[:6]),
        help=f"comma-separated, from {','.join(FAULTS)} (default: the first six)",
    )
    args = p.parse_args()
    faults = [f for f in args.faults.split(",") if f]
    if not set(faults) <= set(FAULTS):
        p.error(f"faults are {', '.join(FAULTS)}")
    names = {
        "loss": f"30% loss both ways, {args.loss_seconds:.0f} s",
        "link": f"home link down {args.down_seconds:.0f} s",
        "addr": "home outer address changed, nomobike",
        "mobike": "home outer address changed, MOBIKE",
        "nat-rebind": "NAT mapping changed (idle; VM pings)",
        "restart": "VM daemon SIGKILLed, back 2 s later",
        "blackhole": f"all packets dropped {args.down_seconds:.0f} s (path)",
        "restart-silent": "VM restarted, no INVALID_IKE_SPI (as iked)",
    }
    print("pyike defaults:", file=sys.stderr)
    ours = run_config("pyike", PYIKE, args.runs, args, faults)
    ref: dict[str, list[float | None]] = {}
    if args.ref_runs > 0:
        print("reference, pyike with iked's timers:", file=sys.stderr)
        ref = run_config("iked timers", IKED_TIMERS, args.ref_runs, args, faults)
    print(
        f"\nrecovery: fault end -> first echo through the tunnel (no traffic during "
        f"the fault)\n{'fault':44} {'pyike defaults':28} iked's timers (reference)"
    )
    for f in faults:
        print(
            f"{names[f]:44} {summary(ours[f], args.limit):28} {summary(ref.get(f, []), args.limit)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
