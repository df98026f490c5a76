"""Per-packet cost of pyike.esp seal()/open() next to the floor of a bare AESGCM.encrypt.

Usage: python tools/bench_esp.py [packets_per_run] [runs]

For each suite and inner size (64, 512, 1400 bytes of IPv6/UDP) it prints the median
microseconds per packet and packets per second for seal and open, and the floor: one
AESGCM.encrypt call on a buffer of the inner size, with the suite's key size. Each run
measures seal, open and floor back to back; the ratio columns are the median of the
per-run ratios, which holds up better than the raw figures when the machine is busy.
open() includes everything a received packet pays: replay check and update, ICV,
padding, Next Header, inner header parse and a selector check against /64 selectors;
its packets are sealed 256 at a time just before, so they are in cache as a packet
fresh from recv() would be. Figures drift 20-30% between runs: compare within a run.
"""

from __future__ import annotations

import os
import statistics
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pyike.esp import InboundSa, OutboundSa, Selector, suite_of
from pyike.registry import EncrId, IntegId

SUITES = [
    ("aes128gcm16", EncrId.AES_GCM_16, 128, IntegId.NONE),
    ("aes256gcm16", EncrId.AES_GCM_16, 256, IntegId.NONE),
    ("aes128-sha256", EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128),
    ("aes256-sha384", EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_384_192),
    ("aes256-sha512", EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_512_256),
    ("aes128-sha1", EncrId.AES_CBC, 128, IntegId.HMAC_SHA1_96),
]
SIZES = (64, 512, 1400)
SRC = bytes.fromhex("20010db8000200000000000000000007")  # 2001:db8:2::7
DST = bytes.fromhex("20010db8000100000000000000000005")  # 2001:db8:1::5


def ipv6_udp(size: int) -> bytes:
    """An IPv6/UDP packet of exactly `size` bytes (checksum left 0: never delivered)."""
    payload_len = size - 40
    udp = struct.pack(">HHHH", 4000, 443, payload_len, 0) + bytes(payload_len - 8)
    return struct.pack(">IHBB", 0x60000000, payload_len, 17, 64) + SRC + DST + udp


def bench(name: str, encr: int, bits: int, integ: int, size: int, n: int, runs: int) -> str:
    suite = suite_of(encr, bits, integ)
    ek, ik = os.urandom(suite.enc_key_len), os.urandom(suite.integ_key_len)
    spi = 0x01020304
    out = OutboundSa(spi, encr, bits, integ, ek, ik)
    inb = InboundSa(spi, encr, bits, integ, ek, ik,
                    local_ts=[Selector.network("2001:db8:1::/64")],
                    remote_ts=[Selector.network("2001:db8:2::/64")])  # fmt: skip
    inner = ipv6_udp(size)
    seal, open_ = out.seal, inb.open
    floor_encrypt = AESGCM(os.urandom(bits // 8)).encrypt
    nonce, aad = os.urandom(12), os.urandom(8)
    clock = time.perf_counter_ns
    chunk = 256  # packets sealed ahead for open(): small enough to stay in cache

    seal_us, open_us, floor_us = [], [], []
    for _ in range(runs):  # interleaved, so load changes hit all three alike
        t0 = clock()
        for _ in range(n):
            seal(inner, 41)
        seal_us.append((clock() - t0) / n / 1e3)

        spent = 0
        for _ in range(n // chunk):
            batch = [seal(inner, 41) for _ in range(chunk)]
            t0 = clock()
            for p in batch:
                open_(p)
            spent += clock() - t0
        open_us.append(spent / (n // chunk * chunk) / 1e3)

        t0 = clock()
        for _ in range(n):
            floor_encrypt(nonce, inner, aad)
        floor_us.append((clock() - t0) / n / 1e3)

    assert inb.packets == runs * (n // chunk * chunk), "every packet must be accepted"
    med = statistics.median
    s, o, f = med(seal_us), med(open_us), med(floor_us)
    seal_ratio = med(a / b for a, b in zip(seal_us, floor_us, strict=True))
    open_ratio = med(a / b for a, b in zip(open_us, floor_us, strict=True))
    return (f"{name:<14}{size:>6}{s:>9.2f}{1e3 / s:>9.0f}{o:>9.2f}{1e3 / o:>9.0f}"
            f"{f:>9.2f}{seal_ratio:>8.1f}{open_ratio:>8.1f}")  # fmt: skip


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    print(f"pyike.esp per-packet cost, median of {runs} runs x {n} packets, "
          f"Python {sys.version.split()[0]}")  # fmt: skip
    print(f"{'suite':<14}{'bytes':>6}{'seal us':>9}{'kpps':>9}{'open us':>9}{'kpps':>9}"
          f"{'floor us':>9}{'seal/fl':>8}{'open/fl':>8}")  # fmt: skip
    for name, encr, bits, integ in SUITES:
        for size in SIZES:
            print(bench(name, encr, bits, integ, size, n, runs), flush=True)


if __name__ == "__main__":
    main()
