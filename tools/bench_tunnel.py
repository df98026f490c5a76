"""Data-plane throughput of pyike next to strongSwan and bare veth, in one run.

Usage (root): .venv/bin/python tools/bench_tunnel.py [--seconds N] [--runs K]
                 [--only pyike|pyike3|pyike100|noprivsep|wireguard|strongswan|veth|baseline]
                 [--baseline DIR] [--profile S [--profile-test tcp|udp64]]
                 [--no-veth-gro] [--keep]

The set-ups, each in a fresh pair of network namespaces joined by veth
(outer 192.0.2.1 home <-> 192.0.2.2 vm, RFC 5737; inner 2001:db8:c1da::1 <-> ::2,
RFC 3849):

- ``pyike``: pyike <-> pyike (home active, vm passive; one policy, no proto
  restriction, so iperf3's port 5201 is covered), ESP-in-UDP 4500, no ``-v``;
- ``pyike3``, ``pyike100``: the same with 3 or 100 Child SAs (one IKE SA each, the
  home side under distinct IDs; the traffic rides the first), so SPD/SAD lookups
  and timers run with many SAs present;
- ``wireguard``: wireguard-go <-> wireguard-go (Debian ``wireguard-go``, userspace
  WireGuard, what a reader of the guide would pick instead; UDP 51820, MTU 1420);
- ``strongswan``: charon <-> charon with kernel-libipsec (userspace ESP on a
  TUN, ``encap = yes``), the C reference for "userspace ESP on one core";
- ``veth``: the inner addresses straight on the veth, no tunnel (the ceiling);
- ``noprivsep``: as ``pyike``, both daemons with ``--no-privsep`` (one root
  process): the cost of privilege separation, same run (``pyike`` runs
  separated; CPU figures are the network process's);
- ``baseline`` (with ``--baseline DIR``): pyike <-> pyike as in ``pyike``, but the
  pyike package of another tree (e.g. ``git archive <commit> | tar -x -C DIR``),
  for before/after figures in one run.

GRO is switched on on both veth ends for every set-up (``--no-veth-gro`` leaves
the veth default, off): real NICs do GRO, and without it a UDP GRO socket gets
one datagram per receive.

Both tunnels negotiate AES-256-GCM-16 for ESP. In each, iperf3 runs from home
(client, sender) to the vm (server): one TCP stream for N seconds (with a ping
every 0.2 s through the loaded tunnel: latency under load), then UDP with
1300-byte datagrams at ``--udp-rate`` (default 0 = unlimited), then UDP with
64-byte datagrams (the packet-rate test). From iperf3's JSON
the table reports TCP Mbit/s, its retransmits and the tunnel devices' drops meanwhile,
the median ping RTT under load, UDP Mbit/s received, received packets/s and loss,
the CPU % of each daemon process over each test (utime+stime deltas of
/proc/<pid>/stat, all threads; 100 % = one core) and each daemon's CPU time per
packet it moved (us/pkt: TCP segments both ways counted at home; for UDP what
home read from its tunnel device and the inner datagrams the vm's kernel took, so
home's figure is the encryption direction and the vm's the decryption direction).
With ``--runs K`` each figure is the median of K runs (the set-ups are
interleaved run by run, so drift hits all of them alike). The last columns give pyike/strongSwan.

``--profile S`` samples both pyike daemons with py-spy (if on PATH) for S seconds
during an extra TCP test (``--profile-test udp64``: 64-byte UDP) and prints the
top functions by own time (leaf samples) and by total time. Figures are noisy
(+-20-30 %): compare within one run.

Everything is bounded in time and cleaned up (processes by PID, namespaces
deleted) on exit, error, Ctrl-C or SIGTERM, by tests/netns.py's Netns.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric import ec

from interop.strongswan import CHARON_BIN, Charon, CharonError
from pyike import keys
from tests.netns import (
    HarnessError,
    Netns,
    ping,
    sweep_stale,
    veth_pair,
    wait_until,
)
from tests.pyike_proc import REPO, PyikeProc, private_config, write_keydir

HOME_ID, VM_ID = "carinho.lan", "namorar.example.com"
HOME_ADDR, VM_ADDR = "192.0.2.1", "192.0.2.2"
HOME_INNER, VM_INNER = "2001:db8:c1da::1", "2001:db8:c1da::2"
IPERF_PORT = 5201
UDP_LEN = 1300
SMALL_LEN = 64  # the packet-rate test: 64-byte UDP payloads
PING_EVERY = 0.2  # seconds between pings during the TCP test (latency under load)
WG_PORT = 51820
WG_MTU = 1420  # wireguard-go's default
SETUP_TIMEOUT_S = 30.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
SCENARIOS = (
    "pyike", "pyike3", "pyike100", "noprivsep", "wireguard", "strongswan", "veth", "baseline",
)  # fmt: skip
DEFAULT_SCENARIOS = ("pyike", "wireguard", "strongswan", "veth", "baseline")

# The same suites on both tunnels: the data plane is AES-256-GCM-16 either way.
PYIKE_SUITES = (
    "ikesa enc aes-256-gcm prf hmac-sha2-384 group curve25519 childsa enc aes-256-gcm noesn"
)
CHARON_IKE = "aes256gcm16-prfsha384-x25519"
CHARON_ESP = "aes256gcm16"


class BenchError(RuntimeError):
    """A set-up step or a measurement failed."""


# --- measurements ---------------------------------------------------------------------


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, all its threads (fields 14 and 15 of /proc/pid/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()  # the name (field 2) may hold spaces
    return int(fields[11]) + int(fields[12])


@dataclass(slots=True)
class Sample:
    """One iperf3 test: its figures and the daemons' CPU % over it."""

    mbps: float
    pps: float = 0.0
    loss_pct: float = 0.0
    retransmits: int = 0  # TCP: segments the sender retransmitted
    rtt_ms: float = float("nan")  # TCP: median ping RTT through the loaded tunnel
    drops: dict[str, int] = field(default_factory=dict)  # where packets were lost
    cpu: dict[str, float] = field(default_factory=dict)  # daemon label -> % of one core
    # daemon label -> its CPU microseconds per packet it moved (TUN reads + writes)
    us_per_pkt: dict[str, float] = field(default_factory=dict)


def tcp_segments(ns: Netns) -> int:
    """TCP segments the namespace sent plus received (Tcp OutSegs + InSegs). Taken at
    home (the sender) for both daemons, since both move the same segments: the data
    out and the ACKs back. Home counts OutSegs per segment, even for TSO skbs, and
    its ACKs arrive one by one; the vm's InSegs would count a merged GSO write (or a
    GRO skb) once, and so would the TUN device counters."""
    lines = [
        ln.split()
        for ln in ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines()
        if ln.startswith("Tcp:")
    ]
    row = dict(zip(lines[0][1:], lines[1][1:], strict=True))
    return int(row["InSegs"]) + int(row["OutSegs"])


def drop_counters(ns: Netns, side: str) -> dict[str, int]:
    """Every drop counter that explains TCP retransmits: per device rx/tx drops (a full
    TUN queue shows as tx drops on the tunnel device) and UDP receive-buffer errors."""
    out: dict[str, int] = {}
    for line in ns.run(["cat", "/proc/net/dev"]).stdout.splitlines()[2:]:
        name, _, rest = line.partition(":")
        f = rest.split()
        out[f"{side} {name.strip()} rx drop"] = int(f[3])
        out[f"{side} {name.strip()} tx drop"] = int(f[11])
    for path, prefix in (("/proc/net/snmp", "Udp:"), ("/proc/net/snmp6", "Udp6RcvbufErrors")):
        text = ns.run(["cat", path]).stdout.splitlines()
        if prefix == "Udp:":
            rows = [ln.split() for ln in text if ln.startswith("Udp:")]
            out[f"{side} udp rcvbuf err"] = int(
                dict(zip(rows[0], rows[1], strict=True))["RcvbufErrors"]
            )
        else:
            for ln in text:
                if ln.startswith(prefix):
                    out[f"{side} udp6 rcvbuf err"] = int(ln.split()[1])
    return out


def tunnel_drops(drops: dict[str, int]) -> int:
    """Packets dropped at the tunnel devices (rx or tx, both ends): a full TUN queue."""
    return sum(v for k, v in drops.items() if " drop" in k and k.split()[1] not in ("lo", "eth0"))


def tunnel_packets(ns: Netns) -> int:
    """Inner packets the daemon in the namespace moved in a UDP test: what it read from
    its tunnel device (the device's tx counter: the kernel hands each packet to the
    daemon once) plus the inner IPv6 datagrams the kernel took after the daemon wrote
    them (Udp6 InDatagrams, and RcvbufErrors for those a full iperf3 socket dropped;
    the outer ESP is IPv4). Not the device's rx counter:
    a merged UDP GSO write (pyike.offload) counts there as one packet. The tunnel
    device is whichever is not lo or the veth (pyike0, charon's ipsec0, wg*)."""
    total = 0
    for line in ns.run(["cat", "/proc/net/dev"]).stdout.splitlines()[2:]:
        name, _, rest = line.partition(":")
        if name.strip() in ("lo", "eth0"):
            continue
        total += int(rest.split()[9])  # tx packets: the kernel -> the daemon
    for line in ns.run(["cat", "/proc/net/snmp6"]).stdout.splitlines():
        if line.startswith(("Udp6InDatagrams ", "Udp6RcvbufErrors ")):
            total += int(line.split()[1])
    return total


def machine_busy(interval: float = 1.0) -> float:
    """Busy share of all cores over ``interval`` (from /proc/stat), in % of one core."""

    def snap() -> tuple[int, int]:
        vals = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(vals), vals[3] + vals[4]  # total, idle + iowait

    (t0, i0), _ = snap(), time.sleep(interval)
    t1, i1 = snap()
    return 100.0 * os.cpu_count() * (1 - (i1 - i0) / max(1, t1 - t0))  # type: ignore[operator]


def with_cpu(s: Setup, measure: Callable[[], Sample], packets: Callable[[Netns], int]) -> Sample:
    """Run ``measure``; attach each daemon's CPU % meanwhile and its CPU time per packet
    it moved (``packets`` counts them in its namespace)."""
    nss = {"home": s.home, "vm": s.home if packets is tcp_segments else s.vm}
    before = {k: cpu_ticks(p) for k, p in s.daemons.items()}
    pkts = {k: packets(nss[k]) for k in s.daemons}
    drops = {**drop_counters(s.home, "home"), **drop_counters(s.vm, "vm")}
    t0 = time.monotonic()
    sample = measure()
    wall = time.monotonic() - t0
    after = {**drop_counters(s.home, "home"), **drop_counters(s.vm, "vm")}
    sample.drops = {k: v - drops.get(k, 0) for k, v in after.items() if v - drops.get(k, 0)}
    for k, p in s.daemons.items():
        cpu_s = (cpu_ticks(p) - before[k]) / CLK_TCK
        sample.cpu[k] = 100.0 * cpu_s / wall
        moved = packets(nss[k]) - pkts[k]
        sample.us_per_pkt[k] = 1e6 * cpu_s / moved if moved else float("nan")
    return sample


def iperf(ns: Netns, args: list[str], seconds: int) -> dict:
    """One iperf3 client run in ``ns`` (bounded), its JSON report."""
    argv = [
        "iperf3",
        "-c",
        VM_INNER,
        "-p",
        str(IPERF_PORT),
        "-t",
        str(seconds),
        "-J",
        "--connect-timeout",
        "5000",
        *args,
    ]
    r = ns.run(argv, check=False, timeout=seconds + 30)
    try:
        report = json.loads(r.stdout)
    except json.JSONDecodeError as e:
        raise BenchError(f"iperf3 gave no JSON ({r.returncode}): {r.stderr[-500:]}") from e
    if "error" in report:
        raise BenchError(f"iperf3: {report['error']}")
    return report


def iperf_tcp(ns: Netns, seconds: int, rtt: bool = False) -> Sample:
    """One TCP stream; with ``rtt``, pings through the loaded tunnel meanwhile (they
    start a second after the stream, when its window has opened)."""
    pinger = None
    if rtt:
        count = max(1, int((seconds - 2) / PING_EVERY))
        pinger = ns.popen(
            ["sh", "-c", f"sleep 1; exec ping -6 -n -c {count} -i {PING_EVERY} -W 2 {VM_INNER}"],
            stdout=subprocess.PIPE,
        )
    try:
        end = iperf(ns, [], seconds)["end"]
    finally:
        out = b""
        if pinger is not None:
            try:
                out, _ = pinger.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                ns.stop(pinger)
    times = [float(m) for m in re.findall(rb"time=([0-9.]+) ms", out)]
    return Sample(
        mbps=end["sum_received"]["bits_per_second"] / 1e6,
        retransmits=int(end["sum_sent"].get("retransmits", 0)),
        rtt_ms=med(times),
    )


def iperf_udp(ns: Netns, seconds: int, rate: str, length: int = UDP_LEN) -> Sample:
    """UDP: what the server received (iperf3 3.12 puts the server's counts in end.sum)."""
    report = iperf(ns, ["-u", "-b", rate, "-l", str(length)], seconds)
    s = report["end"]["sum"]
    received = s["packets"] - s["lost_packets"]
    secs = s["seconds"] or seconds
    return Sample(
        mbps=received * length * 8 / secs / 1e6, pps=received / secs, loss_pct=s["lost_percent"]
    )


# --- set-ups --------------------------------------------------------------------------


@dataclass(slots=True)
class Setup:
    """A ready path from home to the vm's inner address."""

    home: Netns
    vm: Netns
    daemons: dict[str, int]  # label -> PID whose CPU counts
    note: str = ""


VETH_GRO = True  # --no-veth-gro clears it


@contextlib.contextmanager
def two_hosts() -> Iterator[tuple[Netns, Netns]]:
    with Netns("bench-home") as home, Netns("bench-vm") as vm:
        veth_pair(home, vm, f"{HOME_ADDR}/24", f"{VM_ADDR}/24")
        if VETH_GRO:
            # A veth does no GRO unless asked (real NICs do by default): without it a
            # UDP GRO socket still gets one datagram per receive. Same for every set-up.
            for ns in (home, vm):
                r = ns.run(["ethtool", "-K", "eth0", "gro", "on"], check=False)
                if r.returncode != 0:
                    raise BenchError(
                        f"ethtool -K eth0 gro on: {r.stderr.strip()} "
                        "(apt-get install ethtool, or --no-veth-gro)"
                    )
        yield home, vm


def _keys() -> tuple[ec.EllipticCurvePrivateKey, ec.EllipticCurvePrivateKey]:
    return ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())


class QuietPyike(PyikeProc):
    """PyikeProc without ``-vv``: INFO logging only, nothing per packet or message.
    ``src`` is the source tree whose pyike runs (another checkout for --baseline)."""

    src: Path = REPO

    def start(self) -> QuietPyike:
        self.conf = private_config(self.conf, self.workdir)
        self.log_path = self.workdir / f"pyike-{self.ns.name}.log"
        cmd = [
            sys.executable,
            "-m",
            "pyike",
            "-f",
            str(self.conf),
            "--keydir",
            str(self.keydir),
            *self.args,
        ]
        env = {**os.environ, "PYTHONPATH": str(self.src)}
        with self.log_path.open("wb") as log:
            self.proc = self.ns.popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(self.src), env=env
            )
        return self


BASELINE_SRC: Path | None = None  # --baseline DIR


def network_pid(pid: int) -> int:
    """The process that moves the packets: pyike's unprivileged child under privilege
    separation (the root parent only serves requests), else ``pid`` itself."""
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return pid
    return int(kids[0]) if len(kids) == 1 else pid


def _extra_inner(i: int) -> str:
    """The vm's inner address of the i-th extra Child SA (pyike3, pyike100)."""
    return f"2001:db8:c1da:1::{i:x}"


@contextlib.contextmanager
def pyike_setup(
    work: Path, src: Path = REPO, children: int = 1, args: tuple[str, ...] = ()
) -> Iterator[Setup]:
    """pyike <-> pyike; with ``children`` > 1, that many policies (each its own IKE SA
    and Child SA: home uses a distinct ID per policy, which is how the vm's responder
    tells them apart, RFC 7296 2.9 leaving the choice of policy to it). The first one
    carries the traffic; the others cover extra vm addresses nobody sends to."""
    hk, vk = _keys()
    home_ids = [HOME_ID] + [f"c{i}.{HOME_ID}" for i in range(1, children)]
    # The vm under as many IDs: pyike allows only a few IKE SAs per peer identity
    # (pyike.limits ike_sas_per_peer), and here each policy is its own IKE SA.
    vm_ids = [VM_ID] + [f"c{i}.{VM_ID}" for i in range(1, children)]
    vm_inner = [VM_INNER] + [_extra_inner(i) for i in range(1, children)]
    home_keys = write_keydir(work / "home-keys", hk, {i: vk.public_key() for i in vm_ids})
    vm_keys = write_keydir(work / "vm-keys", vk, {i: hk.public_key() for i in home_ids})
    home_conf, vm_conf = work / "home-bench.conf", work / "vm-bench.conf"
    home_conf.write_text(
        "".join(
            f'ikev2 "bench{i}" active esp from {HOME_INNER} to {inner} '
            f"peer {VM_ADDR} {PYIKE_SUITES} "
            f"srcid {hid} dstid {vid} ecdsa384\n"
            for i, (hid, vid, inner) in enumerate(zip(home_ids, vm_ids, vm_inner, strict=True))
        )
    )
    vm_conf.write_text(
        "".join(
            f'ikev2 "bench{i}" passive esp from {inner} to {HOME_INNER} '
            f"local {VM_ADDR} peer any {PYIKE_SUITES} "
            f"srcid {vid} dstid {hid} ecdsa384\n"
            for i, (hid, vid, inner) in enumerate(zip(home_ids, vm_ids, vm_inner, strict=True))
        )
    )
    for conf in (home_conf, vm_conf):
        conf.chmod(0o600)  # as iked wants (pyike warns otherwise)
    with two_hosts() as (home, vm):
        vm_p = QuietPyike(vm, work, vm_conf, vm_keys, list(args))
        vm_p.src = src
        vm_p.start()
        home_p = None
        try:
            # Without -v the driver's "listening" line is not logged; the TUN line
            # comes after the sockets are bound.
            vm_p.wait_log(r"TUN \S+ up", timeout=15)
            home_p = QuietPyike(home, work, home_conf, home_keys, list(args))
            home_p.src = src
            home_p.start()
            wait = SETUP_TIMEOUT_S + children * 0.5
            home_p.wait_log(r"created Child SA", timeout=wait, count=children)
            vm_p.wait_log(r"created Child SA", timeout=wait, count=children)
            child = home_p.wait_log(r"created Child SA")[0].split("created Child SA", 1)[1]
            assert home_p.proc is not None and vm_p.proc is not None
            yield Setup(
                home,
                vm,
                {"home": network_pid(home_p.proc.pid), "vm": network_pid(vm_p.proc.pid)},
                note=f"{src}: {children} child SA(s), first{child}",
            )
        except AssertionError as e:
            raise BenchError(str(e)) from e
        finally:
            for p in (home_p, vm_p):
                if p is not None:
                    p.stop()


@contextlib.contextmanager
def pyike3_setup(work: Path) -> Iterator[Setup]:
    with pyike_setup(work, children=3) as s:
        yield s


@contextlib.contextmanager
def pyike100_setup(work: Path) -> Iterator[Setup]:
    with pyike_setup(work, children=100) as s:
        yield s


@contextlib.contextmanager
def wireguard_setup(work: Path) -> Iterator[Setup]:
    """wireguard-go on both ends. Its UAPI sockets all live in /var/run/wireguard
    (not per namespace), so each daemon needs its own interface name; the name also
    carries our PID so that concurrent runs do not collide."""
    if shutil.which("wireguard-go") is None or shutil.which("wg") is None:
        raise BenchError("wireguard-go/wg missing: apt-get install wireguard-go wireguard-tools")
    tag = f"{os.getpid() % 100000}"
    names = {"home": f"wgh{tag}", "vm": f"wgv{tag}"}
    keys_: dict[str, tuple[str, str]] = {}
    for side in names:
        priv = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout
        pub = subprocess.run(
            ["wg", "pubkey"], input=priv, capture_output=True, text=True, check=True
        ).stdout
        (work / f"wg-{side}.key").write_text(priv)
        (work / f"wg-{side}.key").chmod(0o600)
        keys_[side] = (str(work / f"wg-{side}.key"), pub.strip())
    with two_hosts() as (home, vm):
        procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            for side, ns, peer_side, peer_addr, inner, peer_inner in (
                ("home", home, "vm", VM_ADDR, HOME_INNER, VM_INNER),
                ("vm", vm, "home", HOME_ADDR, VM_INNER, HOME_INNER),
            ):
                ifname = names[side]
                log = (work / f"wireguard-{side}.log").open("wb")
                procs[side] = ns.popen(
                    ["wireguard-go", ifname],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error"},
                )
                log.close()
                wait_until(
                    lambda ns=ns, ifname=ifname: (
                        ns.run(["ip", "link", "show", ifname], check=False).returncode == 0
                        and Path(f"/var/run/wireguard/{ifname}.sock").exists()
                    ),
                    10,
                    what=f"wireguard-go {ifname}",
                )
                ns.run(
                    [
                        "wg",
                        "set",
                        ifname,
                        "listen-port",
                        str(WG_PORT),
                        "private-key",
                        keys_[side][0],
                        "peer",
                        keys_[peer_side][1],
                        "endpoint",
                        f"{peer_addr}:{WG_PORT}",
                        "allowed-ips",
                        f"{peer_inner}/128",
                    ]
                )
                ns.run(["ip", "link", "set", ifname, "mtu", str(WG_MTU), "up"])
                ns.run(["ip", "-6", "addr", "add", f"{inner}/128", "dev", ifname, "nodad"])
                ns.run(["ip", "-6", "route", "add", f"{peer_inner}/128", "dev", ifname])
            version = (
                subprocess.run(
                    ["wireguard-go", "--version"], capture_output=True, text=True, check=False
                )
                .stdout.strip()
                .split("\n", 1)[0]
            )
            yield Setup(
                home,
                vm,
                {"home": procs["home"].pid, "vm": procs["vm"].pid},
                note=f"{version or 'wireguard-go'}, {names['home']}/{names['vm']} MTU {WG_MTU}",
            )
        finally:
            for side, proc in procs.items():
                (home if side == "home" else vm).stop(proc, grace=3)


def _charon(
    ns: Netns,
    work: Path,
    *,
    home: bool,
    own: ec.EllipticCurvePrivateKey,
    peer: ec.EllipticCurvePublicKey,
) -> Charon:
    local, remote = (HOME_ADDR, VM_ADDR) if home else (VM_ADDR, HOME_ADDR)
    local_in, remote_in = (HOME_INNER, VM_INNER) if home else (VM_INNER, HOME_INNER)
    # Level-4 key dumps only happen at SA set-up: they cost nothing during the test.
    return Charon(
        ns,
        work,
        name="bench",
        local_addr=local,
        remote_addr=remote,
        local_id=HOME_ID if home else VM_ID,
        remote_id=VM_ID if home else HOME_ID,
        private_key_pem=keys.private_key_pem(own, pkcs8=True),
        peer_public_pem=keys.public_key_pem(peer),
        ike_proposals=CHARON_IKE,
        esp_proposals=CHARON_ESP,
        local_ts=f"{local_in}/128",
        remote_ts=f"{remote_in}/128",
        encap=True,
    )


@contextlib.contextmanager
def strongswan_setup(work: Path) -> Iterator[Setup]:
    if shutil.which(CHARON_BIN) is None and not os.access(CHARON_BIN, os.X_OK):
        raise BenchError(
            f"{CHARON_BIN} missing: apt-get install strongswan-charon "
            "strongswan-swanctl libcharon-extra-plugins"
        )
    hk, vk = _keys()
    with two_hosts() as (home, vm):
        # libipsec's TUN has no address: the inner addresses live on lo.
        for ns, addr in ((home, HOME_INNER), (vm, VM_INNER)):
            ns.run(["ip", "-6", "addr", "add", f"{addr}/128", "dev", "lo", "nodad"])
        c_vm = _charon(vm, work / "charon-vm", home=False, own=vk, peer=hk.public_key())
        c_home = _charon(home, work / "charon-home", home=True, own=hk, peer=vk.public_key())
        try:
            with c_vm, c_home:
                c_vm.load()
                c_home.load()
                c_home.initiate(timeout=SETUP_TIMEOUT_S)
                c_home.wait_established(timeout=SETUP_TIMEOUT_S)
                c_vm.wait_established(timeout=SETUP_TIMEOUT_S)
                assert c_home.proc is not None and c_vm.proc is not None
                (sa,) = c_home.list_sas()
                (child,) = sa["child-sas"].values()
                yield Setup(
                    home,
                    vm,
                    {"home": c_home.proc.pid, "vm": c_vm.proc.pid},
                    note=f"charon child SA {child.get('encr-alg')}-"
                    f"{child.get('encr-keysize')} encap={child.get('encap')}",
                )
        except CharonError as e:
            raise BenchError(str(e)) from e


@contextlib.contextmanager
def veth_setup(work: Path) -> Iterator[Setup]:
    with two_hosts() as (home, vm):
        for ns, addr in ((home, HOME_INNER), (vm, VM_INNER)):
            ns.run(["ip", "-6", "addr", "add", f"{addr}/64", "dev", "eth0", "nodad"])
        yield Setup(home, vm, {}, note="veth MTU 1500, no tunnel")


@contextlib.contextmanager
def baseline_setup(work: Path) -> Iterator[Setup]:
    assert BASELINE_SRC is not None
    with pyike_setup(work, BASELINE_SRC) as s:
        yield s


@contextlib.contextmanager
def noprivsep_setup(work: Path) -> Iterator[Setup]:
    with pyike_setup(work, REPO, args=("--no-privsep",)) as s:
        yield s


SETUPS = {
    "pyike": pyike_setup,
    "noprivsep": noprivsep_setup,
    "pyike3": pyike3_setup,
    "pyike100": pyike100_setup,
    "wireguard": wireguard_setup,
    "strongswan": strongswan_setup,
    "veth": veth_setup,
    "baseline": baseline_setup,
}


# --- one scenario ---------------------------------------------------------------------


@contextlib.contextmanager
def iperf_server(vm: Netns) -> Iterator[None]:
    proc = vm.popen(["iperf3", "-s", "-B", VM_INNER, "-p", str(IPERF_PORT)])
    try:
        wait_until(
            lambda: f":{IPERF_PORT} " in vm.run(["ss", "-Htln"]).stdout,
            10,
            what="iperf3 server to listen",
        )
        yield
    finally:
        vm.stop(proc, grace=3)


def measure(
    name: str, work: Path, seconds: int, udp_rate: str, profile_s: int, profile_test: str = "tcp"
) -> tuple[Sample, Sample, Sample, str, str]:
    """Bring ``name`` up, run TCP, UDP and small UDP, tear it down:
    (tcp, udp, udp64, note, profile)."""
    work.mkdir(parents=True, exist_ok=True)
    with SETUPS[name](work) as s:
        if ping(s.home, VM_INNER, count=3) < 1:
            raise BenchError(f"{name}: no ping reply from {VM_INNER} through the path")
        with iperf_server(s.vm):
            tcp = with_cpu(s, lambda: iperf_tcp(s.home, seconds, rtt=True), tcp_segments)
            udp = with_cpu(s, lambda: iperf_udp(s.home, seconds, udp_rate), tunnel_packets)
            small = with_cpu(
                s, lambda: iperf_udp(s.home, seconds, udp_rate, SMALL_LEN), tunnel_packets
            )
            load: Callable[[int], object] = (
                (lambda t: iperf_tcp(s.home, t))
                if profile_test == "tcp"
                else (lambda t: iperf_udp(s.home, t, udp_rate, SMALL_LEN))
            )
            prof = profile(s, work, profile_s, load, profile_test) if profile_s else ""
    lost = ", ".join(f"{k} {v}" for k, v in tcp.drops.items()) or "none"
    s.note += f"; drops during TCP: {lost}"
    return tcp, udp, small, s.note, prof


# --- profile hint ---------------------------------------------------------------------


def profile(
    s: Setup,
    work: Path,
    seconds: int,
    load: Callable[[int], object],
    test: str,
    top: int = 10,
) -> str:
    """py-spy both daemons during an extra test (``load``); top functions per daemon."""
    spy = shutil.which("py-spy")
    if spy is None:
        return "profile: py-spy not on PATH (pip install py-spy), skipped"
    procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    for label, pid in s.daemons.items():
        out = work / f"pyspy-{label}.txt"
        procs[label] = (
            subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(pid),
                    "--duration",
                    str(seconds),
                    "--rate",
                    "250",
                    "--format",
                    "raw",
                    "--output",
                    str(out),
                    "--nonblocking",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            ),
            out,
        )
    try:
        load(seconds + 1)
    finally:
        for p, _ in procs.values():
            try:
                p.wait(timeout=seconds + 20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
    lines = []
    for label, (p, out) in procs.items():
        side = "sender (TUN->ESP)" if label == "home" else "receiver (ESP->TUN)"
        if p.returncode != 0 or not out.exists():
            err = p.stderr.read().decode(errors="replace")[-300:] if p.stderr else ""
            lines.append(f"profile {label}: py-spy failed ({p.returncode}) {err}")
            continue
        lines.append(f"profile pyike {label} = {side}, {test}, {seconds} s, py-spy:")
        lines.extend(collapsed_top(out.read_text(), top))
    return "\n".join(lines)


IDLE_LEAVES = ("EpollSelector.select", "select (selectors.py)")
FRAMEWORK = ("<frozen", "asyncio/", "pyike/cli.py", "pyike/__main__.py", "runpy")


def collapsed_top(text: str, top: int) -> list[str]:
    """Top functions and lines of py-spy's collapsed stacks.

    Without ``--native`` a C call's time (os.read, sendto, AESGCM.encrypt) lands on
    the Python line that made it, so the top *lines* show which system call or
    crypto call dominates. Samples whose leaf is the event loop's epoll wait are
    idle time: the percentages are of busy samples.
    """
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    lines: collections.Counter[str] = collections.Counter()
    n = idle = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        if frames[-1].startswith(IDLE_LEAVES):
            idle += c
            continue
        n += c
        own[_short(frames[-1])] += c
        lines[_short(frames[-1], keep_line=True)] += c
        for f in {_short(f) for f in frames}:
            total[f] += c
    if not n:
        return ["  (no busy samples)"]
    out = [
        f"  busy {n} samples, idle (epoll wait) {idle}; % of busy samples",
        f"  {'own %':>6} {'total %':>7}  function",
    ]
    out += [f"  {100 * c / n:6.1f} {100 * total[f] / n:7.1f}  {f}" for f, c in own.most_common(top)]
    out.append("  by total, pyike functions:")
    inner = [(f, c) for f, c in total.most_common() if not any(x in f for x in FRAMEWORK)]
    out += [f"  {100 * own[f] / n:6.1f} {100 * c / n:7.1f}  {f}" for f, c in inner[:top]]
    out.append("  hottest lines (own %):")
    out += [f"  {100 * c / n:6.1f}  {f}" for f, c in lines.most_common(top)]
    return out


def _short(frame: str, keep_line: bool = False) -> str:
    """'seal (pyike/esp.py:123)' -> 'seal (pyike/esp.py)', so lines of one function add
    up (or 'seal (pyike/esp.py:123)' with ``keep_line``)."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path, _, lineno = where.rpartition(":") if ":" in where else (where, "", "")
    path = "/".join(path.split("/")[-2:])
    if keep_line and lineno:
        return f"{name} ({path}:{lineno})"
    return f"{name} ({path})" if path else name


# --- report ---------------------------------------------------------------------------


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(
    results: dict[str, list[tuple[Sample, Sample, Sample]]], seconds: int, runs: int, udp_rate: str
) -> str:
    head = (
        f"{'set-up':<10} {'TCP Mbit/s':>10} {'retr':>5} {'tun drop':>8} {'rtt ms':>6} "
        f"{'cpu home/vm %':>13} {'us/pkt h/vm':>11} "
        f"{'UDP Mbit/s':>10} {'kpps':>6} {'loss%':>5} {'us/pkt e/d':>10} "
        f"{'64B kpps':>8} {'loss%':>5} {'us/pkt e/d':>10}"
    )
    lines = [
        f"iperf3 home -> vm, {seconds} s per test, TCP 1 stream (+ ping every {PING_EVERY} s), "
        f"UDP {UDP_LEN} B and {SMALL_LEN} B -b {udp_rate}; median of {runs} run(s); veth GRO "
        f"{'on' if VETH_GRO else 'off'}",
        head,
        "-" * len(head),
    ]

    def per_daemon(samples: list[Sample], attr: str, fmt: str) -> str:
        if not samples or not getattr(samples[0], attr):
            return "-"
        return "/".join(
            format(med([getattr(s, attr)[k] for s in samples]), fmt)
            for k in getattr(samples[0], attr)
        )

    figures: dict[str, dict[str, float]] = {}
    for name, triples in results.items():
        tcps, udps, smalls = ([t[i] for t in triples] for i in range(3))
        f = figures[name] = {
            "tcp": med([t.mbps for t in tcps]),
            "retr": med([t.retransmits for t in tcps]),
            "tun_drop": med([tunnel_drops(t.drops) for t in tcps]),
            "rtt": med([t.rtt_ms for t in tcps]),
            "udp": med([u.mbps for u in udps]),
            "pps": med([u.pps for u in udps]),
            "loss": med([u.loss_pct for u in udps]),
            "pps64": med([u.pps for u in smalls]),
            "loss64": med([u.loss_pct for u in smalls]),
        }
        lines.append(
            f"{name:<10} {f['tcp']:>10.0f} {f['retr']:>5.0f} {f['tun_drop']:>8.0f} "
            f"{f['rtt']:>6.2f} {per_daemon(tcps, 'cpu', '.0f'):>13} "
            f"{per_daemon(tcps, 'us_per_pkt', '.1f'):>11} {f['udp']:>10.0f} "
            f"{f['pps'] / 1e3:>6.1f} {f['loss']:>5.1f} "
            f"{per_daemon(udps, 'us_per_pkt', '.1f'):>10} "
            f"{f['pps64'] / 1e3:>8.1f} {f['loss64']:>5.1f} "
            f"{per_daemon(smalls, 'us_per_pkt', '.1f'):>10}"
        )
    lines.append(
        "retr: TCP retransmits; tun drop: packets dropped at the tunnel devices during "
        "TCP; rtt: median ping RTT through the loaded tunnel; cpu: daemon % of one core; "
        "us/pkt: daemon CPU time per packet it moved (TCP: data + ACKs; UDP: home only "
        "encrypts, vm only decrypts); kpps: packets received per second"
    )
    for ours in [n for n in figures if n.startswith("pyike")]:
        for other in ("noprivsep", "wireguard", "strongswan", "baseline"):
            if other in figures:
                p, c = figures[ours], figures[other]

                def ratio(k: str, c: dict[str, float] = c, p: dict[str, float] = p) -> str:
                    return f"{p[k] / c[k]:.2f}" if c[k] else "n/a"

                lines.append(
                    f"{ours}/{other}: TCP {ratio('tcp')}  UDP rx {ratio('udp')}  "
                    f"pps {ratio('pps')}  64B pps {ratio('pps64')}"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=10, help="length of each iperf3 test")
    ap.add_argument("--runs", type=int, default=1, help="runs per set-up; medians reported")
    ap.add_argument(
        "--only", choices=SCENARIOS, action="append", help="only this set-up (repeatable)"
    )
    ap.add_argument("--udp-rate", default="0", help="iperf3 -b for UDP (0 = unlimited)")
    ap.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="S",
        help="py-spy both pyike daemons for S s in an extra test",
    )
    ap.add_argument(
        "--profile-test",
        choices=("tcp", "udp64"),
        default="tcp",
        help="the extra test --profile runs: one TCP stream, or 64-byte UDP",
    )
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    ap.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also run the pyike of another source tree (e.g. an older commit's "
        "`git archive`) as set-up 'baseline'",
    )
    ap.add_argument(
        "--no-veth-gro",
        action="store_true",
        help="leave GRO off on the veth (the kernel default for veth)",
    )
    args = ap.parse_args(argv)
    global BASELINE_SRC, VETH_GRO
    BASELINE_SRC = args.baseline.resolve() if args.baseline else None
    VETH_GRO = not args.no_veth_gro
    if BASELINE_SRC is not None and not (BASELINE_SRC / "pyike" / "__main__.py").exists():
        print(f"bench_tunnel: {BASELINE_SRC} holds no pyike package", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("bench_tunnel: needs root (network namespaces)", file=sys.stderr)
        return 2
    if shutil.which("iperf3") is None:
        print("bench_tunnel: needs iperf3 (apt-get install iperf3)", file=sys.stderr)
        return 2
    if not 1 <= args.seconds <= 300 or not 1 <= args.runs <= 20:
        print("bench_tunnel: --seconds 1..300, --runs 1..20", file=sys.stderr)
        return 2
    # Ctrl-C already raises KeyboardInterrupt; make SIGTERM unwind the same way so
    # every `with` (processes by PID, namespaces) runs its cleanup.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    sweep_stale()
    busy = machine_busy()
    if busy > 20:
        print(
            f"bench_tunnel: warning: the machine is already busy ({busy:.0f} % of one core "
            f"of {os.cpu_count()}) before the benchmark: figures will be low",
            file=sys.stderr,
        )
    names = [
        n
        for n in SCENARIOS
        if (n in args.only if args.only else n in DEFAULT_SCENARIOS)
        and (n != "baseline" or BASELINE_SRC is not None)
    ]
    work = Path(tempfile.mkdtemp(prefix="pyike-bench-"))
    results: dict[str, list[tuple[Sample, Sample, Sample]]] = {n: [] for n in names}
    notes: dict[str, str] = {}
    profiles: list[str] = []
    try:
        for run in range(args.runs):
            for name in names:
                prof_s = args.profile if name == "pyike" and run == args.runs - 1 else 0
                print(f"run {run + 1}/{args.runs}: {name} ...", file=sys.stderr, flush=True)
                tcp, udp, small, notes[name], prof = measure(
                    name,
                    work / f"{name}-{run}",
                    args.seconds,
                    args.udp_rate,
                    prof_s,
                    args.profile_test,
                )
                results[name].append((tcp, udp, small))
                if prof:
                    profiles.append(prof)
    except (BenchError, HarnessError) as e:
        print(f"bench_tunnel: {e}", file=sys.stderr)
        print(f"bench_tunnel: logs in {work}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench_tunnel: interrupted; cleaned up", file=sys.stderr)
        return 130
    print(table({k: v for k, v in results.items() if v}, args.seconds, args.runs, args.udp_rate))
    for name, note in notes.items():
        print(f"  {name}: {note}")
    print(f"  machine load before start: {busy:.0f} % of one core ({os.cpu_count()} cores)")
    for prof in profiles:
        print(prof)
    if args.keep:
        print(f"logs in {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
