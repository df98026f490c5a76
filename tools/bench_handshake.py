"""IKE handshake cost and memory per SA of pyike's responder, next to its own floor.

Usage: .venv/bin/python tools/bench_handshake.py [--sas 1000,10000] [--floor-reps N]
                 [--net N] [--rounds R]

A sans-IO, in-process measurement (no sockets, no namespaces, no root): one responder
``Endpoint`` (the vm role) takes IKE_SA_INIT + IKE_AUTH from a fresh initiator
``Endpoint`` per handshake, both in this process, with the suites of
tools/bench_tunnel.py (IKE AES-256-GCM, PRF HMAC-SHA2-384, x25519; ESP AES-256-GCM;
ECDSA P-384 raw public keys, RFC 7427 signatures). The initiator is dropped once its
SA is up, so the process holds only the responder's state, as a responder daemon
does; each Child SA also gets the data plane's ESP objects (esp.InboundSa and
OutboundSa in a Sad and Spd, as pyike.dataplane builds them).

Reported, each a median over the handshakes (or repetitions) of this run:
- responder CPU per handshake (process time spent in the responder's receive and
  send calls, both messages) and the initiator's, for scale;
- the floor: what the responder cannot avoid per handshake, measured now in the
  same process: one x25519 key pair + shared secret, one ECDSA P-384 signature and
  one verification (SHA-384), and the ratio responder / floor;
- resident memory (RSS growth, after gc) per established IKE SA + Child SA at each
  of ``--sas`` (cumulative: 10000 includes the first 1000), and the projection for
  10,000;
- the cost of one timer wake-up with nothing due (``get_timer()`` + ``handle_timer()``),
  at each size: it should not grow with the number of SAs (issue 14 item 3).

With ``--idle N`` the idle cost of many peers is measured instead (sans-IO too): one
initiator ``Endpoint`` brings up N IKE SAs (each with its Child SA, each under its own
ID) with one responder ``Endpoint``; both stay alive, carry no traffic, and a fake
clock runs ``--idle-seconds`` through every timer either side sets (liveness probes,
their answers) at each ``--dpd`` interval. Reported: the responder's datagrams per
second, its core CPU per second (process time in its calls: receive, timers, sends,
events), the cost of the system calls per datagram measured now on a loopback UDP
socket (``recvmsg`` and ``sendmsg`` with packet info, as pyike.driver makes them), and
the sum as a share of one core: what an idle responder daemon for N peers spends,
besides the event loop's own wake-ups (counted, not costed).

With ``--net N`` (root), the network version runs first: in two namespaces joined by
veth, one charon initiator with N connections (same keys and proposals, started all
at once by ``start_action = start``, each from its own address and ID, ``unique =
never`` so no INITIAL_CONTACT makes a responder drop the earlier ones) loads a
pyike responder and then a charon responder (kernel-libipsec, logging off),
``--rounds`` times, interleaved. Reported per responder, medians: IKE SAs (each
with its Child SA) established per second (from loading the initiator until N are
up, polled every 0.5 s: the initiator is usually the bottleneck), and the
responder's CPU (utime + stime) per handshake.

The machine is shared: figures are noisy; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import os
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from pyike import esp
from pyike.ike import ChildSaCreated, Endpoint, IkeSaEstablished, SaPolicy, State
from pyike.limits import Limits
from pyike.registry import IdType
from tests.ike_pair import HOME, HOME_ID, VM, VM_ID, VPN0, VPN1, make_policy

PAGE = os.sysconf("SC_PAGE_SIZE")
_PEER_N = itertools.count()
BENCH_LIMITS = Limits(
    ike_sas=1_000_000,
    ike_sas_per_peer=1_000_000,
    auth_per_source_per_s=1e9,
    auth_burst=1_000_000,
    half_open=1_000_000,
)
AUTH_OCTETS = 600  # about what RFC 7296 2.15 signs here: message 1 or 2 + nonce + prf(ID)


def rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE


def floor_us(reps: int) -> dict[str, float]:
    """Median microseconds of each operation the responder must do per handshake."""
    own = ec.generate_private_key(ec.SECP384R1())
    peer = ec.generate_private_key(ec.SECP384R1())
    data = os.urandom(AUTH_OCTETS)
    peer_sig = peer.sign(data, ec.ECDSA(hashes.SHA384()))
    peer_pub = peer.public_key()
    theirs = x25519.X25519PrivateKey.generate().public_key()
    times: dict[str, list[float]] = {"x25519": [], "sign": [], "verify": []}
    for _ in range(reps):
        t0 = time.process_time()
        x25519.X25519PrivateKey.generate().exchange(theirs)
        t1 = time.process_time()
        own.sign(data, ec.ECDSA(hashes.SHA384()))
        t2 = time.process_time()
        peer_pub.verify(peer_sig, data, ec.ECDSA(hashes.SHA384()))
        t3 = time.process_time()
        times["x25519"].append(t1 - t0)
        times["sign"].append(t2 - t1)
        times["verify"].append(t3 - t2)
    out = {k: 1e6 * statistics.median(v) for k, v in times.items()}
    out["total"] = sum(out.values())
    return out


class Responder:
    """The vm side: one Endpoint and the data plane's SA tables."""

    def __init__(self, policy: SaPolicy) -> None:
        # One source address and one identity for every handshake, and 10,000 SAs: the
        # flood limits (pyike.limits) would rightly stop that; lift them.
        self.endpoint = Endpoint(lambda *_: policy, cookie_threshold=1 << 30, limits=BENCH_LIMITS)
        self.sad = esp.Sad()
        self.spd = esp.Spd()
        self.established = 0

    def take(self, data: bytes, now: float) -> list[bytes]:
        self.endpoint.receive(data, HOME, VM, now)
        out = [t.data for t in self.endpoint.datagrams_to_send()]
        while (e := self.endpoint.next_event()) is not None:
            if isinstance(e, IkeSaEstablished):
                self.established += 1
            elif isinstance(e, ChildSaCreated):
                c, s = e.child, e.child.suite
                self.sad.add(
                    esp.InboundSa(
                        c.spi_in,
                        s.encr,
                        s.key_bits,
                        s.integ,
                        *c.key_in,
                        s.esn,
                        local_ts=c.ts_local,
                        remote_ts=c.ts_remote,
                    )
                )
                self.spd.add(
                    esp.OutboundSa(c.spi_out, s.encr, s.key_bits, s.integ, *c.key_out, s.esn),
                    c.ts_local,
                    c.ts_remote,
                )
        return out


def handshake(resp: Responder, home_policy: SaPolicy, now: float) -> tuple[float, float]:
    """One IKE SA + Child SA with a fresh initiator: (responder s, initiator s) of CPU.
    Each initiator has its own ID (c<n>.carinho.lan), as many peers would."""
    home_policy = dataclasses.replace(
        home_policy, local_id=(IdType.ID_FQDN, f"c{next(_PEER_N)}.carinho.lan".encode())
    )
    t0 = time.process_time()
    home = Endpoint(lambda *_: home_policy)
    home.connect(home_policy, HOME, VM, now)
    to_vm = [t.data for t in home.datagrams_to_send()]
    t_home = time.process_time() - t0
    t_vm = 0.0
    for _ in range(4):  # IKE_SA_INIT, IKE_AUTH: two round trips
        if not to_vm:
            break
        to_home: list[bytes] = []
        t0 = time.process_time()
        for d in to_vm:
            to_home += resp.take(d, now)
        t_vm += time.process_time() - t0
        t0 = time.process_time()
        for d in to_home:
            home.receive(d, VM, HOME, now)
        to_vm = [t.data for t in home.datagrams_to_send()]
        while home.next_event() is not None:
            pass
        t_home += time.process_time() - t0
    return t_vm, t_home


def timer_wakeup_us(endpoint: Endpoint, now: float, reps: int = 20) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        endpoint.get_timer()
        endpoint.handle_timer(now)
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


# --- idle peers ------------------------------------------------------------------------


def syscall_us(reps: int = 20000) -> float:
    """One datagram's system calls in a daemon, on loopback: the receiver's recvmsg()
    with ancillary space and the sender's sendmsg() with packet info, per datagram."""
    import socket
    from ipaddress import ip_address

    from pyike.driver import IP_PKTINFO, _pktinfo

    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        rx.bind(("127.0.0.1", 0))
        dst = rx.getsockname()
        cmsg = _pktinfo(socket.AF_INET, ip_address("127.0.0.1"))  # what Driver.send passes
        data = bytes(80)  # a liveness probe is about this size
        best = float("inf")
        for _ in range(5):
            t0 = time.process_time()
            for _ in range(reps // 5):
                tx.sendmsg([data], cmsg, 0, dst)
                rx.recvmsg(65535, 256)
            best = min(best, (time.process_time() - t0) / (reps // 5))
        return 1e6 * best
    finally:
        rx.close()
        tx.close()


class _Timed:
    """Process time spent in one Endpoint's calls."""

    def __init__(self) -> None:
        self.cpu = 0.0

    def __enter__(self) -> None:
        self._t0 = time.process_time()

    def __exit__(self, *exc: object) -> None:
        self.cpu += time.process_time() - self._t0


def idle_bench(
    n: int,
    seconds: float,
    dpd: float,
    home_policy: SaPolicy,
    vm_policy: SaPolicy,
    datagram_us: float,
) -> str:
    """N live, idle SA pairs for ``seconds`` of fake time: one line of figures;
    ``datagram_us``: the system calls' cost per datagram (syscall_us())."""
    home_policy = dataclasses.replace(home_policy, dpd_interval=dpd)
    vm_policy = dataclasses.replace(vm_policy, dpd_interval=dpd)
    resp = Responder(vm_policy)
    home = Endpoint(lambda *_: home_policy, limits=BENCH_LIMITS)
    now = 1000.0
    timed = _Timed()
    datagrams = [0]  # into and out of the responder during the idle phase

    def shuttle(count: bool) -> None:
        for _ in range(20):  # request/response chains end within a few rounds
            to_vm = [t.data for t in home.datagrams_to_send()]
            while home.next_event() is not None:
                pass
            if not to_vm:
                return
            to_home: list[bytes] = []
            with timed:
                for d in to_vm:
                    to_home += resp.take(d, now)
            if count:
                datagrams[0] += len(to_vm) + len(to_home)
            for d in to_home:
                home.receive(d, VM, HOME, now)

    for i in range(n):
        policy = dataclasses.replace(
            home_policy, local_id=(IdType.ID_FQDN, f"i{i}.carinho.lan".encode())
        )
        home.connect(policy, HOME, VM, now)
        shuttle(False)
    if resp.established < n:
        raise SystemExit(f"bench_handshake: only {resp.established} of {n} SAs came up")
    # Start the clock where the last handshake left it; run every timer of either side.
    timed.cpu, wakeups, end = 0.0, 0, now + seconds
    while True:
        deadlines = [t for t in (home.get_timer(), resp.endpoint.get_timer()) if t is not None]
        if not deadlines or min(deadlines) > end:
            break
        now = max(now, min(deadlines))
        home.handle_timer(now)
        with timed:
            due = resp.endpoint.get_timer()
            if due is not None and due <= now:
                wakeups += 1
                resp.endpoint.handle_timer(now)
                out = resp.endpoint.datagrams_to_send()
                while resp.endpoint.next_event() is not None:
                    pass
            else:
                out = []
        datagrams[0] += len(out)
        for t in out:
            home.receive(t.data, VM, HOME, now)
        shuttle(True)
    alive = sum(1 for sa in resp.endpoint.sas.values() if sa.state == State.ESTABLISHED)
    per_s = datagrams[0] / seconds
    core = 100 * timed.cpu / seconds
    sys_pct = 100 * per_s * datagram_us / 1e6
    return (
        f"{n:>6} {dpd:>6.0f} {alive:>7} {per_s:>12.0f} {wakeups / seconds:>10.1f} "
        f"{core:>9.2f} {sys_pct:>10.2f} {core + sys_pct:>8.2f}"
    )


# --- the network version -------------------------------------------------------------


def net_bench(n: int, rounds: int) -> list[str]:
    """pyike and charon responders loaded by one charon initiator with n connections."""
    import contextlib
    import tempfile

    from interop.strongswan import Charon, CharonError
    from pyike import keys
    from tests.netns import HarnessError, wait_until
    from tests.pyike_proc import write_keydir
    from tools.bench_tunnel import (
        CHARON_ESP,
        CHARON_IKE,
        CLK_TCK,
        HOME_ADDR,
        HOME_INNER,
        PYIKE_SUITES,
        VM_ADDR,
        VM_INNER,
        QuietPyike,
        cpu_ticks,
        two_hosts,
    )
    from tools.bench_tunnel import HOME_ID as B_HOME
    from tools.bench_tunnel import VM_ID as B_VM

    class QuietCharon(Charon):
        """Charon without key dumps (they cost per SA) and, as initiator, n connections."""

        conns: int = 0
        vary: str = "local"  # whose ID differs per connection: c<i>.<id>

        def strongswan_conf(self) -> str:
            conf = super().strongswan_conf()
            for old, new in (("ike = 4", "ike = 0"), ("chd = 4", "chd = 0"),
                             ("default = 1", "default = 0"), ("cfg = 1", "cfg = 0")):  # fmt: skip
                conf = conf.replace(old, new)
            return conf

        def swanctl_conf(self) -> str:
            one = super().swanctl_conf()
            if not self.conns:
                return one
            # Distinct IDs: charon would otherwise put every child into the first IKE
            # SA (identical peer configs share one), and the point is n IKE SAs.
            body = one.split("connections {", 1)[1].rsplit("}", 1)[0]
            ident = self.local_id if self.vary == "local" else self.remote_id
            conns = [
                body.replace(f" {self.name} {{", f" {self.name}{i} {{", 1)
                .replace(f" {self.child_name} {{", f" {self.child_name}{i} {{", 1)
                .replace(f"id = {ident}\n", f"id = c{i}.{ident}\n", 1)
                .replace(  # the initiator: one source address per connection
                    f"local_addrs = {self.local_addr}\n",
                    f"local_addrs = {source_addr(i)}\n" if self.vary == "local" else "",
                    self.vary == "local",
                )
                for i in range(self.conns)
            ]
            return "connections {\n" + "".join(conns) + "}\n"

    hk, vk = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    work = Path(tempfile.mkdtemp(prefix="pyike-hs-"))

    def source_addr(i: int) -> str:
        # Many peers, as a responder for many homes sees them (and pyike's per-source
        # limit on IKE_AUTH verifications, pyike.limits, applies per address)
        return f"192.0.2.{10 + i}"

    if not 1 <= n <= 240:
        return ["network version: --net takes 1..240 (one source address each)"]

    def initiator(home: object, tag: str) -> QuietCharon:
        c = QuietCharon(
            home, work / f"init-{tag}", name="hs", local_addr=HOME_ADDR, remote_addr=VM_ADDR,
            local_id=B_HOME, remote_id=B_VM,
            private_key_pem=keys.private_key_pem(hk, pkcs8=True),
            peer_public_pem=keys.public_key_pem(vk.public_key()),
            ike_proposals=CHARON_IKE, esp_proposals=CHARON_ESP,
            local_ts=f"{HOME_INNER}/128", remote_ts=f"{VM_INNER}/128", encap=True,
            start_action="start", conn_extra="unique = never",
            extra_conf="retransmit_timeout = 10.0\nretransmit_tries = 3",
        )  # fmt: skip
        c.conns = n
        return c

    @contextlib.contextmanager
    def pyike_responder(vm: object, tag: str):  # type: ignore[no-untyped-def]
        peers = {f"c{i}.{B_HOME}": hk.public_key() for i in range(n)}
        keydir = write_keydir(work / f"vm-keys-{tag}", vk, peers)
        conf = work / f"vm-{tag}.conf"
        conf.write_text(  # no dstid: any ID with a key in pubkeys/ (one per connection)
            f'ikev2 "hs" passive esp from {VM_INNER} to {HOME_INNER} local {VM_ADDR} '
            f"peer any {PYIKE_SUITES} srcid {B_VM} ecdsa384\n"
        )
        conf.chmod(0o600)
        proc = QuietPyike(vm, work, conf, keydir)  # type: ignore[arg-type]
        proc.start()
        try:
            proc.wait_log(r"TUN \S+ up", timeout=15)
            assert proc.proc is not None
            yield proc.proc.pid
        finally:
            proc.stop()

    @contextlib.contextmanager
    def charon_responder(vm: object, tag: str):  # type: ignore[no-untyped-def]
        c = QuietCharon(
            vm, work / f"resp-{tag}", name="hs", local_addr=VM_ADDR, remote_addr="%any",
            local_id=B_VM, remote_id=B_HOME,
            private_key_pem=keys.private_key_pem(vk, pkcs8=True),
            peer_public_pem=keys.public_key_pem(hk.public_key()),
            ike_proposals=CHARON_IKE, esp_proposals=CHARON_ESP,
            local_ts=f"{VM_INNER}/128", remote_ts=f"{HOME_INNER}/128", encap=True,
            conn_extra="unique = never",
            # charon drops IKE_SA_INITs beyond 5 half-open SAs per peer address by
            # default (block_threshold): the whole load comes from one address here
            extra_conf="block_threshold = 1000000",
        )  # fmt: skip
        c.conns, c.vary = n, "remote"
        with c:
            c.load()
            assert c.proc is not None
            yield c.proc.pid

    def established(c: QuietCharon) -> int:
        out = c.swanctl("--stats", check=False, timeout=10).stdout
        m = re.search(r"IKE_SAs: (\d+) total, (\d+) half-open", out)
        return int(m.group(1)) - int(m.group(2)) if m else 0

    results: dict[str, list[tuple[float, float]]] = {"pyike": [], "charon": []}
    try:
        for r in range(rounds):
            for kind, responder in (("pyike", pyike_responder), ("charon", charon_responder)):
                print(f"  net round {r + 1}/{rounds}: {kind} ...", file=sys.stderr, flush=True)
                with two_hosts() as (home, vm), responder(vm, f"{kind}{r}") as pid:
                    for i in range(n):
                        home.run(["ip", "addr", "add", f"{source_addr(i)}/24", "dev", "eth0"])
                    init = initiator(home, f"{kind}{r}")
                    with init:
                        before = cpu_ticks(pid)
                        t0 = time.monotonic()
                        init.load(timeout=60)
                        wait_until(lambda i=init: established(i) >= n, 180, what="SAs up")
                        wall = time.monotonic() - t0
                        cpu = (cpu_ticks(pid) - before) / CLK_TCK
                    results[kind].append((n / wall, 1e6 * cpu / n))
    except (CharonError, HarnessError, AssertionError) as e:
        return [f"network version failed: {e}"[:2000], f"  (logs in {work})"]
    med = statistics.median
    lines = [
        f"network: one charon initiator, {n} connections at once, {rounds} round(s), medians",
        f"{'responder':<10} {'IKE SAs/s':>10} {'CPU us/handshake':>17}",
    ]
    for kind, vals in results.items():
        lines.append(
            f"{kind:<10} {med([v[0] for v in vals]):>10.0f} {med([v[1] for v in vals]):>17.0f}"
        )
    p_cpu = med([v[1] for v in results["pyike"]])
    c_cpu = med([v[1] for v in results["charon"]])
    lines.append(f"ratio pyike / charon CPU per handshake: {p_cpu / c_cpu:.2f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sas", default="1000,10000", help="sizes to report, ascending")
    ap.add_argument("--floor-reps", type=int, default=200)
    ap.add_argument("--net", type=int, default=0, metavar="N", help="network version, N SAs")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--idle", type=int, default=0, metavar="N", help="idle cost of N peers")
    ap.add_argument("--idle-seconds", type=float, default=120.0)
    ap.add_argument("--dpd", default="5,60", help="liveness intervals for --idle, seconds")
    args = ap.parse_args(argv)
    net_lines = net_bench(args.net, args.rounds) if args.net else []
    sizes = sorted(int(x) for x in args.sas.split(","))
    home_key, vm_key = (
        ec.generate_private_key(ec.SECP384R1()),
        ec.generate_private_key(ec.SECP384R1()),
    )
    home_policy = make_policy(
        "home",
        local_id=HOME_ID,
        peer_id=VM_ID,
        local_key=home_key,
        peer_public=vm_key.public_key(),
        force_encap=True,
    )
    vm_policy = make_policy(
        "vm",
        local_id=VM_ID,
        peer_id=HOME_ID,
        local_key=vm_key,
        peer_public=home_key.public_key(),
        local_net=VPN1,
        remote_net=VPN0,
        force_encap=True,
    )
    home_public = home_key.public_key()
    # Any initiator ID (each handshake has its own), all with home's key.
    vm_policy = dataclasses.replace(vm_policy, peer_id=None, peer_key=lambda _t, _d: home_public)
    if args.idle:
        datagram_us = syscall_us()
        print(
            f"idle responder with {args.idle} live peers, sans-IO, {args.idle_seconds:.0f} s "
            f"of fake time; system calls measured on loopback ({datagram_us:.1f} us a "
            f"datagram); machine load {os.getloadavg()[0]:.1f}"
        )
        print(
            f"{'SAs':>6} {'dpd s':>6} {'up at end':>7} {'datagrams/s':>12} {'wakeups/s':>10} "
            f"{'core %':>9} {'syscall %':>10} {'total %':>8}"
        )
        for dpd in (float(x) for x in args.dpd.split(",")):
            line = idle_bench(
                args.idle, args.idle_seconds, dpd, home_policy, vm_policy, datagram_us
            )
            print(line, flush=True)
        print("%: of one core; wakeups: responder timer firings (each also an event-loop turn)")
        return 0
    floor_before = floor_us(args.floor_reps)
    resp = Responder(vm_policy)
    now = 1000.0
    gc.collect()
    base = rss()
    vm_cpu: list[float] = []
    home_cpu: list[float] = []
    rows = []
    t_start = time.monotonic()
    for size in sizes:
        while resp.established < size:
            v, h = handshake(resp, home_policy, now)
            vm_cpu.append(v)
            home_cpu.append(h)
            if len(vm_cpu) > size + 100:
                print("bench_handshake: handshakes are failing", file=sys.stderr)
                return 1
        gc.collect()
        grown = rss() - base
        rows.append((size, grown, timer_wakeup_us(resp.endpoint, now)))
        print(
            f"  {size} SAs up after {time.monotonic() - t_start:.0f} s", file=sys.stderr, flush=True
        )
    floor_after = floor_us(args.floor_reps)
    floor = {k: statistics.median([floor_before[k], floor_after[k]]) for k in floor_before}
    vm_us = 1e6 * statistics.median(vm_cpu)
    home_us = 1e6 * statistics.median(home_cpu)
    print(
        "IKE handshakes into one pyike responder, sans-IO in one process (no sockets), "
        f"{len(vm_cpu)} handshakes; machine shared (load {os.getloadavg()[0]:.1f})"
    )
    print("suites: IKE aes-256-gcm/prf-sha384/x25519, ESP aes-256-gcm, ECDSA P-384 RFC 7427")
    print(f"{'what':<44} {'median':>10}")
    print(f"{'responder CPU per handshake':<44} {vm_us:>7.0f} us")
    print(f"{'initiator CPU per handshake (for scale)':<44} {home_us:>7.0f} us")
    print(
        f"{'floor: x25519 + P-384 sign + verify':<44} {floor['total']:>7.0f} us "
        f"(x25519 {floor['x25519']:.0f}, sign {floor['sign']:.0f}, "
        f"verify {floor['verify']:.0f})"
    )
    print(f"{'':<44} {'SAs':>6} {'RSS MB':>8} {'KB/SA':>7} {'timer wake us':>14}")
    for size, grown, wake in rows:
        print(
            f"{'memory and timer wake-up':<44} {size:>6} {grown / 1e6:>8.1f} "
            f"{grown / size / 1e3:>7.1f} {wake:>14.0f}"
        )
    per_sa = rows[-1][1] / rows[-1][0]
    print(f"projected for 10,000 IKE SA + Child SA: {per_sa * 10000 / 1e6:.0f} MB")
    print(f"ratio responder / floor: {vm_us / floor['total']:.2f}")
    for line in net_lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
