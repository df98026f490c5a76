"""A real privileged parent for tests/test_privsep_netns.py's hostile requests.

Run as root inside a test namespace: creates the TUN device named by --ifname
(as pyike's start-up would), then serves pyike.privsep.parent.Parent on the
socketpair end passed as --fd with a policy built from the arguments, until the
test closes its end. Logs go to stderr; the last line is the totals.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from ipaddress import ip_address, ip_network
from pathlib import Path

from pyroute2 import IPRoute
from pytun import IFF_NO_PI, IFF_TUN, TunTapDevice

from pyike.privsep import requests as rq
from pyike.privsep.parent import Parent


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--ifname", default="pyike0")
    p.add_argument("--address", action="append", default=[])
    p.add_argument("--route", action="append", default=[])
    p.add_argument("--port", type=int, action="append", default=[])
    p.add_argument("--keydir", type=Path, required=True)
    p.add_argument("--config", type=Path, required=True)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    tun = TunTapDevice(name=args.ifname, flags=IFF_TUN | IFF_NO_PI)
    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=args.ifname)[0], state="up")
    addresses = [ip_address(a) for a in args.address]
    policy = rq.PrivPolicy(
        ifname=args.ifname,
        addresses=frozenset((a, a.max_prefixlen) for a in addresses),
        routes=frozenset(ip_network(r) for r in args.route),
        ports=frozenset(args.port),
    )
    sock = socket.socket(fileno=args.fd)
    parent = Parent(sock, policy, keydir=args.keydir, config_file=args.config)
    print("ready", file=sys.stderr, flush=True)
    parent.serve_requests()
    print(f"totals: refused {parent.refused} executed {parent.executed}", file=sys.stderr)
    tun.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
