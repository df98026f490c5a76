"""``python -m interop.vm`` (what ``interop/run iked-vm`` runs): the iked-vm case.

Exit status 0 when every check passed, 1 otherwise (also when it cannot run, e.g.
not root). Prints a result table; ``--workdir`` keeps the logs, the console
and the outer capture somewhere known.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m interop.vm",
        description=(
            "pyike (home) <-> OpenIKED in a qemu VM with the guest kernel's ESP: "
            "ping6 and TCP 25 through ESP-in-UDP (see docs/iked-vm.md)"
        ),
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where logs, console and capture go (default: a new temp dir)",
    )
    p.add_argument(
        "--outer4",
        action="store_true",
        help=("IPv4 outer addresses (the guide's 203.0.113.2): shows the Linux PF_KEY limit"),
    )
    p.add_argument(
        "--guide-home",
        action="store_true",
        help=("pyike with conf/home-iked.conf as it is (three policies): TCP replies fail"),
    )
    p.add_argument(
        "--auth",
        choices=("p384", "ikectl-ca", "rsa2048"),
        default="p384",
        help=(
            "keys on both sides: ECDSA P-384 raw keys (the guide's), certificates from "
            "`ikectl ca`, or RSA-2048 raw keys (see interop/vm/auth.py)"
        ),
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no diagnostics on failure")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("iked-vm: needs root (network namespaces, tap devices)", file=sys.stderr)
        return 1
    repo = str(Path(__file__).resolve().parents[2])
    if repo not in sys.path:
        sys.path.insert(0, repo)  # tests.netns, tests.pyike_proc
    from interop.vm.case import run_case

    result = run_case(
        args.workdir,
        verbose=not args.quiet,
        outer4=args.outer4,
        guide_home=args.guide_home,
        auth=args.auth,
    )
    print(result.table())
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
