"""The fault harness shared by tests/test_faults_netns.py and tools/bench_recovery.py.

Two namespaces (home 192.0.2.1, vm 192.0.2.2 on one veth) run the real pyike
daemons with the guide's configs. Faults are applied to the outer link only:
``tc netem`` loss, the home link down and up, the home outer address changed,
the VM daemon killed (SIGKILL) and started again. With ``nat=True`` a third
namespace (tests/nat.py: nftables masquerade) sits between home and the VM, and
the fault is the NAT's mapping changing on the idle tunnel. Recovery is the time from
the moment the fault ends (link usable again, new address in place, VM daemon
listening again) to the first ICMPv6 echo answered through the tunnel; the
prober starts only when the fault ends, so no traffic helps the tunnel come
back. Times come from CLOCK_MONOTONIC, which all processes share.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from tests import nat as natns
from tests.netns import Netns, veth_pair, wait_until
from tests.pyike_proc import CONF, PyikeProc, write_keydir

HOME_ADDRS = ("192.0.2.1/24", "2001:db8:1::1/64")
VM_ADDRS = ("192.0.2.2/24", "2001:db8:1::2/64")
VM_OUTER = "192.0.2.2"
VPN0 = "2001:db8:c1da::1"  # home, inside the tunnel
VPN1 = "2001:db8:c1da::2"  # vm

# Echo requests every 0.1 s until the first reply; prints its CLOCK_MONOTONIC time.
_PROBE = r"""
import os, select, socket, struct, sys, time
dst, limit = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
ident, seq, end = os.getpid() & 0xFFFF, 0, time.monotonic() + limit
while time.monotonic() < end:
    seq = (seq + 1) & 0xFFFF
    try:
        s.sendto(struct.pack("!BBHHH", 128, 0, 0, ident, seq) + b"pyike-recovery", (dst, 0))
    except OSError:
        pass  # no route yet
    stop = time.monotonic() + 0.1
    while (left := stop - time.monotonic()) > 0:
        if not select.select([s], [], [], left)[0]:
            break
        pkt = s.recv(2048)
        if pkt[0] == 129 and struct.unpack_from("!H", pkt, 4)[0] == ident:
            print(f"{time.monotonic():.6f}", flush=True)
            sys.exit(0)
sys.exit(1)
"""


@dataclass
class Tunnel:
    """home and vm namespaces with pyike running at both ends."""

    workdir: Path
    home_args: tuple[str, ...] = ()
    vm_args: tuple[str, ...] = ()
    nat: bool = False  # home behind a NAT namespace (tests/nat.py)
    home_conf: Path = CONF / "home-iked.conf"
    nat_ns: Netns | None = field(init=False, default=None)
    vm_outer: str = field(init=False, default=VM_OUTER)
    nat_ports: str = field(init=False, default=natns.PORTS_A)
    home_ns: Netns = field(init=False)
    vm_ns: Netns = field(init=False)
    home: PyikeProc = field(init=False)
    vm: PyikeProc = field(init=False)
    home_addr: str = field(init=False, default="192.0.2.1/24")
    _vm_starts: int = field(init=False, default=0)
    loss_method: str = field(init=False, default="")

    # ------------------------------------------------------------ set-up

    def __enter__(self) -> Tunnel:
        self.home_ns = Netns("home").create()
        try:
            self.vm_ns = Netns("vm").create()
            if self.nat:
                self.nat_ns = Netns("nat").create()
                natns.wire_nat(self.home_ns, self.nat_ns, self.vm_ns, self.nat_ports)
                self.vm_outer = natns.VM_ADDR
            else:
                veth_pair(self.home_ns, self.vm_ns, HOME_ADDRS, VM_ADDRS)
            hk, vk = (
                ec.generate_private_key(ec.SECP384R1()),
                ec.generate_private_key(ec.SECP384R1()),
            )
            self._home_keys = write_keydir(
                self.workdir / "home-keys", hk, {"namorar.example.com": vk.public_key()}
            )
            self._vm_keys = write_keydir(
                self.workdir / "vm-keys", vk, {"carinho.lan": hk.public_key()}
            )
            self.start_vm()
            self.home = PyikeProc(
                self.home_ns,
                self.workdir,
                self.home_conf,
                self._home_keys,
                ["-D", f"vm_host={self.vm_outer}", *self.home_args],
            ).start()
            self.home.wait_log(r"established .*as initiator", timeout=30, count=3)
            self.wait_tunnel(30)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in (getattr(self, "home", None), getattr(self, "vm", None)):
            if proc is not None:
                proc.stop()
        for ns in (getattr(self, "vm_ns", None), self.nat_ns, self.home_ns):
            if ns is not None:
                ns.close()

    def start_vm(self, extra: tuple[str, ...] = ()) -> float:
        """Start the VM daemon; returns the time it is listening again."""
        self._vm_starts += 1
        workdir = self.workdir / f"vm-{self._vm_starts}"
        workdir.mkdir(exist_ok=True)
        self.vm = PyikeProc(
            self.vm_ns,
            workdir,
            CONF / "vm-iked.conf",
            self._vm_keys,
            ["-D", f"ext={self.vm_outer}", *self.vm_args, *extra],
        ).start()
        self.vm.wait_log(r"listening on IPv4 UDP port 4500", timeout=30)
        return time.monotonic()

    # ------------------------------------------------------------ probing

    def tunnel_back_at(self, limit: float, from_vm: bool = False) -> float | None:
        """CLOCK_MONOTONIC time of the first echo answered through the tunnel
        (sent from home, or with ``from_vm`` from the VM to home)."""
        ns, dst = (self.vm_ns, VPN0) if from_vm else (self.home_ns, VPN1)
        r = ns.run([sys.executable, "-c", _PROBE, dst, str(limit)], check=False, timeout=limit + 15)
        return float(r.stdout.strip()) if r.returncode == 0 and r.stdout.strip() else None

    def wait_tunnel(self, limit: float) -> float:
        back = self.tunnel_back_at(limit)
        if back is None:
            raise AssertionError(
                f"tunnel not carrying traffic within {limit} s\nhome:\n"
                f"{self.home.log()[-3000:]}\nvm:\n{self.vm.log()[-3000:]}"
            )
        return back

    def recovery(self, since: float, limit: float = 40.0, from_vm: bool = False) -> float | None:
        """Seconds from ``since`` until the tunnel carried an echo (None: not in limit)."""
        back = self.tunnel_back_at(limit, from_vm)
        return None if back is None else max(0.0, back - since)

    # ------------------------------------------------------------ faults

    def loss(self, percent: int, seconds: float) -> float:
        """Random loss on both ends' egress for ``seconds``; returns when removed."""
        undo = [self._add_loss(ns, percent) for ns in (self.home_ns, self.vm_ns)]
        try:
            time.sleep(seconds)
        finally:
            for ns, args in zip((self.home_ns, self.vm_ns), undo, strict=True):
                ns.run(args, check=False)
        return time.monotonic()

    def _add_loss(self, ns: Netns, percent: int) -> list[str]:
        """``tc netem loss``; where the kernel lacks netem (CONFIG_NET_SCH_NETEM is off
        on this project's machines) the same random drop in nftables. Returns the
        command that removes it."""
        r = ns.run(
            ["tc", "qdisc", "add", "dev", "eth0", "root", "netem", "loss", f"{percent}%"],
            check=False,
        )
        if r.returncode == 0:
            self.loss_method = "tc netem"
            return ["tc", "qdisc", "del", "dev", "eth0", "root"]
        self.loss_method = "nftables numgen"
        match = f"numgen random mod 100 < {percent} " if percent < 100 else ""
        ns.run(
            [
                "nft",
                "add table inet pyikeloss; add chain inet pyikeloss out "
                "{ type filter hook output priority 0; }; add rule inet pyikeloss out "
                f'oifname "eth0" {match}drop',
            ]
        )
        return ["nft", "delete table inet pyikeloss"]

    def link_down(self) -> None:
        self.home_ns.run(["ip", "link", "set", "eth0", "down"])

    def link_up(self) -> float:
        """Bring the home link up; returns when it is usable (carrier on both ends)."""
        self.home_ns.run(["ip", "link", "set", "eth0", "up"])
        for ns in (self.home_ns, self.vm_ns):
            wait_until(
                lambda ns=ns: "LOWER_UP" in ns.run(["ip", "-o", "link", "show", "eth0"]).stdout,
                10,
                0.02,
                "eth0 carrier",
            )
        return time.monotonic()

    def change_home_address(self, new: str) -> float:
        """Replace home's outer IPv4 address (the subnet route stays the same)."""
        old, self.home_addr = self.home_addr, new
        self.home_ns.run(["ip", "addr", "del", old, "dev", "eth0"])
        self.home_ns.run(["ip", "addr", "add", new, "dev", "eth0"])
        return time.monotonic()

    def rebind_nat(self) -> float:
        """The NAT's mapping changes (new port range, conntrack flushed), as after a
        router reboot or a CGNAT timeout; returns when done."""
        assert self.nat_ns is not None, "Tunnel(nat=True) only"
        self.nat_ports = natns.PORTS_B if self.nat_ports == natns.PORTS_A else natns.PORTS_A
        natns.change_mapping(self.nat_ns, self.nat_ports)
        return time.monotonic()

    def kill_vm(self) -> None:
        assert self.vm.proc is not None
        os.kill(self.vm.proc.pid, signal.SIGKILL)
        self.vm.proc.wait(10)
        # Its TUN device goes with the process; wait so the new one can take the name.
        wait_until(
            lambda: "pyike0" not in self.vm_ns.run(["ip", "-o", "link"]).stdout,
            10,
            what="the killed daemon's TUN device to go",
        )

    def restart_vm(self, down: float = 0.0, extra: tuple[str, ...] = ()) -> float:
        """SIGKILL the VM daemon, wait ``down`` s, start it; returns when listening."""
        self.kill_vm()
        time.sleep(down)
        return self.start_vm(extra)


def popen_logged(ns: Netns, args: list[str], log: Path) -> subprocess.Popen:
    with log.open("wb") as f:
        return ns.popen(args, stdout=f, stderr=subprocess.STDOUT)


# --------------------------------------------------------------------------- SMTP

# A minimal SMTP server (RFC 5321 subset) at home: every message into DIR/<n>.eml.
SMTP_SERVER = r"""
import socketserver, sys, pathlib, itertools
out = pathlib.Path(sys.argv[2]); counter = itertools.count(1)
class H(socketserver.StreamRequestHandler):
    def handle(self):
        w = lambda s: (self.wfile.write(s.encode() + b"\r\n"), self.wfile.flush())
        w("220 home ESMTP test")
        while True:
            line = self.rfile.readline(4096)
            if not line:
                return
            cmd = line.decode(errors="replace").strip().upper()
            if cmd.startswith(("EHLO", "HELO")):
                w("250 home")
            elif cmd.startswith(("MAIL", "RCPT", "RSET", "NOOP")):
                w("250 ok")
            elif cmd == "DATA":
                w("354 go on")
                body = []
                while (l := self.rfile.readline(65536)) not in (b".\r\n", b""):
                    body.append(l[1:] if l.startswith(b"..") else l)
                n = next(counter)
                (out / f"{n}.tmp").write_bytes(b"".join(body))
                (out / f"{n}.tmp").rename(out / f"{n}.eml")
                w("250 queued")
            elif cmd == "QUIT":
                w("221 bye"); return
            else:
                w("502 no")
class S(socketserver.ThreadingTCPServer):
    address_family = __import__("socket").AF_INET6
    allow_reuse_address = True
    daemon_threads = True
S((sys.argv[1], 25), H).serve_forever()
"""

# The VM's queue: every file in SPOOL is retried every second until the server
# takes it (250 after DATA), then removed: what an MTA's queue does, in small.
SMTP_QUEUE = r"""
import pathlib, smtplib, sys, time
host, spool, limit = sys.argv[1], pathlib.Path(sys.argv[2]), float(sys.argv[3])
end = time.monotonic() + limit
while time.monotonic() < end:
    pending = sorted(spool.glob("*.eml"))
    if not pending:
        print("queue empty", flush=True); sys.exit(0)
    for f in pending:
        try:
            with smtplib.SMTP(host, 25, timeout=3) as s:
                s.sendmail("relay@namorar.example.com", ["user@carinho.lan"], f.read_bytes())
            f.unlink()
            print(f"delivered {f.name}", flush=True)
        except (OSError, smtplib.SMTPException) as e:
            print(f"deferred {f.name}: {e}", flush=True)
            break
    time.sleep(1)
sys.exit(1)
"""


def queue_mail(spool: Path, count: int) -> list[bytes]:
    """Write ``count`` distinct messages into the VM's spool; returns their bodies."""
    spool.mkdir(parents=True, exist_ok=True)
    bodies = []
    for i in range(count):
        body = (
            f"From: relay@namorar.example.com\r\nTo: user@carinho.lan\r\n"
            f"Subject: queued {i}\r\nMessage-ID: <queued-{i}@namorar.example.com>\r\n\r\n"
            f"message {i} queued at the VM while the link was down\r\n"
        ).encode()
        (spool / f"{i:03d}.eml").write_bytes(body)
        bodies.append(body)
    return bodies
