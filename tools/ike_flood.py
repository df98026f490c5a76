#!/usr/bin/env python3
"""A hostile sender for pyike's flood tests: spoofed IKE_SA_INIT, mutated IKE, garbage ESP.

Runs inside a test network namespace (never in the root namespace) and sends to one
target address only, for a bounded time. Source addresses are spoofed from a
documentation prefix with a raw socket (IP_HDRINCL), so each datagram looks like a
different initiator to the target, as a botnet's or a spoofing scanner's would.

Modes:
  init     genuine IKE_SA_INIT requests (pyike's own, SPIi varied) from --sources addresses
  mutated  IKE datagrams from the fuzz seed corpus with random bit flips and truncations
  esp      garbage ESP-in-UDP with a live SPI (--spi) on port 4500

Prints one line: `sent N datagrams in S s (R/s)`.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import os
import random
import socket
import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BATCH_INTERVAL = 0.005  # pacing granularity: send rate*5 ms datagrams, then sleep


def _udp_ip(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    """IPv4 + UDP headers (RFC 791, RFC 768). The kernel fills in the IP checksum and ID;
    a zero UDP checksum means "none" over IPv4."""
    total = 20 + 8 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, 17, 0, src, dst)
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    return ip + udp + payload


def _init_requests(count: int) -> list[bytes]:
    """Genuine IKE_SA_INIT requests from pyike's own initiator, each with its own SPIi."""
    from tests.ike_pair import default_pair

    pair = default_pair()
    pair.connect()
    (t,) = pair.home.datagrams_to_send()
    rng = random.Random(7)
    return [rng.randbytes(8) + t.data[8:] for _ in range(count)]


def _mutated(count: int) -> list[bytes]:
    seeds = [p.read_bytes() for p in sorted((ROOT / "tests/data/fuzz/ike-decode").iterdir())]
    rng = random.Random(11)
    out = []
    for _ in range(count):
        d = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 8)):
            op = rng.randrange(3)
            if op == 0 and d:
                d[rng.randrange(len(d))] ^= 1 << rng.randrange(8)
            elif op == 1 and d:
                del d[rng.randrange(len(d)) :]
            else:
                d[rng.randrange(len(d) + 1) : 0] = rng.randbytes(rng.randint(1, 16))
        out.append(bytes(d))
    return out


def _esp(count: int, spi: int) -> list[bytes]:
    rng = random.Random(13)
    return [
        struct.pack("!II", spi, rng.randrange(1, 1 << 32)) + rng.randbytes(rng.randint(0, 200))
        for _ in range(count)
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("init", "mutated", "esp"))
    ap.add_argument("--target", required=True, help="IPv4 address of the pyike under test")
    ap.add_argument("--sources", default="203.0.113.0/24", help="spoofed source prefix")
    ap.add_argument("--source-count", type=int, default=200)
    ap.add_argument("--rate", type=float, default=0, help="datagrams/s (0: as fast as possible)")
    ap.add_argument("--seconds", type=float, default=0, help="stop after this long")
    ap.add_argument("--count", type=int, default=0, help="stop after this many datagrams")
    ap.add_argument("--spi", type=lambda s: int(s, 0), default=0, help="ESP SPI (mode esp)")
    args = ap.parse_args()
    if not args.seconds and not args.count:
        ap.error("give --seconds or --count (the flood must stop by itself)")
    target = ipaddress.IPv4Address(args.target)
    net = ipaddress.IPv4Network(args.sources)
    if not (net.subnet_of(ipaddress.IPv4Network("203.0.113.0/24"))
            or net.subnet_of(ipaddress.IPv4Network("198.51.100.0/24"))
            or net.subnet_of(ipaddress.IPv4Network("192.0.2.0/24"))):  # fmt: skip
        ap.error("spoofed sources must be a documentation prefix (RFC 5737)")
    sources = [a.packed for a, _ in zip(net.hosts(), range(args.source_count), strict=False)]
    variety = 4096
    if args.mode == "init":
        payloads, dport = _init_requests(variety), 500
    elif args.mode == "mutated":
        payloads, dport = _mutated(variety), 500
    else:
        payloads, dport = _esp(variety, args.spi), 4500
    packets = [
        _udp_ip(sources[i % len(sources)], target.packed, 500 + (i % 2) * 4000, dport, p)
        if args.mode != "esp"
        else _udp_ip(sources[i % len(sources)], target.packed, 4500, dport, p)
        for i, p in enumerate(payloads)
    ]
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    dest = (str(target), 0)
    send = s.sendto
    sent = 0
    limit = args.count or (1 << 62)
    start = time.monotonic()
    end = start + args.seconds if args.seconds else float("inf")
    n = len(packets)
    per_batch = max(1, int(args.rate * BATCH_INTERVAL)) if args.rate else 256
    while sent < limit:
        now = time.monotonic()
        if now >= end:
            break
        for _ in range(min(per_batch, limit - sent)):
            try:
                send(packets[sent % n], dest)
            except OSError as e:  # the local queue is full: lost, as on a wire
                if e.errno not in (errno.ENOBUFS, errno.EAGAIN):
                    raise
            sent += 1
        if args.rate:
            ahead = sent / args.rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
    took = time.monotonic() - start
    print(f"sent {sent} datagrams in {took:.1f} s ({sent / took:.0f}/s)", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
