"""Network-namespace test harness: throwaway hosts joined by veth, with captures.

Used by the tests (``from tests.netns import Netns, veth_pair, capture``) and by
demos. Everything here is bounded in time and cleans up after itself:

- ``Netns`` creates ``pyike-<purpose>-<pid>-<n>``, runs commands in it, starts
  background processes in their own process group, and on exit stops exactly
  those processes (SIGTERM, then SIGKILL) and deletes the namespace, also when
  the body raises.
- A module registry tears down every live ``Netns`` at interpreter exit and on
  SIGTERM/SIGHUP, so a crashed or killed test run leaves nothing behind.
- ``sweep_stale()`` deletes ``pyike-*`` namespaces whose creating process is
  gone (a run killed with SIGKILL cannot clean up after itself).

Addresses are documentation ranges only (RFC 5737 IPv4, RFC 3849 IPv6); the
harness never sends from the root namespace.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

try:  # pytest helpers are optional: demos import this module without pytest.
    import pytest
except ImportError:  # pragma: no cover - pytest is a test dependency
    pytest = None  # type: ignore[assignment]

NAME_PREFIX = "pyike-"
NETNS_DIR = Path("/run/netns")
# One small file per namespace: creator pid, its start time and pid namespace, so
# the sweeper never mistakes a live creator (or a recycled pid) for a dead one.
STATE_DIR = Path("/run/pyike-netns")
ROOT_SKIP_REASON = "needs root to create network namespaces"
BINARY_SKIP_PREFIX = "needs binary"
STOP_GRACE_S = 5.0  # SIGTERM -> SIGKILL wait per process group
DEFAULT_TIMEOUT_S = 30.0

_NAME_RE = re.compile(r"^pyike-(?P<purpose>[a-z0-9-]+)-(?P<pid>\d+)-(?P<n>\d+)$")


class HarnessError(RuntimeError):
    """A harness step failed (command error, timeout, missing readiness line)."""


# --- skip helpers -------------------------------------------------------------------


def is_root() -> bool:
    return os.geteuid() == 0


if pytest is not None:
    #: ``@requires_root`` (or in ``pytestmark``): skip unless root.
    requires_root = pytest.mark.skipif(not is_root(), reason=ROOT_SKIP_REASON)
else:  # pragma: no cover
    requires_root = None


def find_binary(name: str) -> str | None:
    """Path of ``name``: an absolute path if it exists, else a PATH lookup."""
    if os.path.isabs(name):
        return name if os.access(name, os.X_OK) else None
    return shutil.which(name)


def require_binary(name: str, package: str) -> str:
    """Return the binary's path, or skip the calling test naming the Debian package."""
    path = find_binary(name)
    if path is None:
        reason = f"{BINARY_SKIP_PREFIX} {name}: apt-get install {package}"
        if pytest is None:  # pragma: no cover
            raise HarnessError(reason)
        pytest.skip(reason)
    return path


def require_root() -> None:
    """Skip the calling test unless running as root (for use inside fixtures)."""
    if not is_root():
        if pytest is None:  # pragma: no cover
            raise HarnessError(ROOT_SKIP_REASON)
        pytest.skip(ROOT_SKIP_REASON)


# --- bounded waiting ----------------------------------------------------------------


def wait_until(
    predicate: Callable[[], object],
    timeout: float,
    interval: float = 0.05,
    what: str = "condition",
) -> object:
    """Poll ``predicate`` until it returns something truthy; raise after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise HarnessError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


# --- running commands ---------------------------------------------------------------


def _run(
    args: Sequence[str], *, check: bool, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"timed out after {timeout}s: {' '.join(args)}") from exc
    if check and proc.returncode != 0:
        raise HarnessError(
            f"command failed ({proc.returncode}): {' '.join(args)}\n"
            f"stdout: {proc.stdout.strip()}\nstderr: {proc.stderr.strip()}"
        )
    return proc


def _proc_start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks), or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and ')': split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def _pid_namespace() -> str:
    return os.readlink("/proc/self/ns/pid")


def _stop_group(proc: subprocess.Popen[bytes], grace: float = STOP_GRACE_S) -> None:
    """Stop a process we started in its own session: SIGTERM the group, then SIGKILL."""
    pgid = proc.pid  # start_new_session=True made the child its own group leader
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
    # Children the leader left behind in its group (the leader is reaped already).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


# --- the namespace ------------------------------------------------------------------

_counter = itertools.count(1)
_live: dict[str, Netns] = {}
_live_lock = threading.RLock()
_handlers_installed = False


@dataclass(eq=False)
class Netns:
    """A throwaway network namespace; use as a context manager.

    ``purpose`` is a short lowercase tag (it becomes part of the name).
    """

    purpose: str = "test"
    stop_grace: float = STOP_GRACE_S  # SIGTERM -> SIGKILL wait when closing
    name: str = field(init=False, default="")
    processes: list[subprocess.Popen[bytes]] = field(init=False, default_factory=list)
    _owner_pid: int = field(init=False, default=0)
    _open: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9-]{1,24}", self.purpose):
            raise ValueError(f"purpose must be short lowercase [a-z0-9-]: {self.purpose!r}")

    # lifecycle
    def create(self) -> Netns:
        if self._open:
            return self
        _install_handlers()
        self._owner_pid = os.getpid()
        self.name = f"{NAME_PREFIX}{self.purpose}-{self._owner_pid}-{next(_counter)}"
        with _live_lock:
            # Record state before creating, so even a crash between the two is swept.
            _write_state(self.name)
            _live[self.name] = self
            try:
                _run(["ip", "netns", "add", self.name], check=True, timeout=10)
            except BaseException:
                _live.pop(self.name, None)
                _remove_state(self.name)
                raise
            self._open = True
        try:
            self.run(["ip", "link", "set", "lo", "up"])
        except BaseException:
            self.close()  # __exit__ does not run when __enter__ raises
            raise
        return self

    def close(self) -> None:
        """Stop our processes, delete the namespace. Idempotent; never raises."""
        if not self._open or os.getpid() != self._owner_pid:
            return  # a forked child must not tear down its parent's namespaces
        self._open = False
        for proc in reversed(self.processes):
            with contextlib.suppress(Exception):
                _stop_group(proc, self.stop_grace)
        _delete_namespace(self.name)
        with _live_lock:
            _live.pop(self.name, None)

    def __enter__(self) -> Netns:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # commands
    def exec_args(self, args: Sequence[str]) -> list[str]:
        """The argv that runs ``args`` inside this namespace."""
        return ["ip", "netns", "exec", self.name, *args]

    def run(
        self,
        args: Sequence[str],
        check: bool = True,
        timeout: float = DEFAULT_TIMEOUT_S,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace and wait (bounded) for it."""
        self._require_open()
        return _run(self.exec_args(args), check=check, timeout=timeout, env=env)

    def popen(
        self,
        args: Sequence[str],
        *,
        stdout: object = subprocess.DEVNULL,
        stderr: object = subprocess.DEVNULL,
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a background process inside; it is stopped when the namespace closes.

        ``ip netns exec`` execs the command, so the PID is the command's own; the
        process gets its own session so stopping it also stops its children.
        """
        self._require_open()
        proc = subprocess.Popen(
            self.exec_args(args),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        self.processes.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float | None = None) -> int | None:
        """Stop one process started by ``popen`` now; returns its exit status."""
        _stop_group(proc, self.stop_grace if grace is None else grace)
        return proc.returncode

    def pids(self) -> list[int]:
        """Every PID currently inside the namespace (ours or not)."""
        out = _run(["ip", "netns", "pids", self.name], check=False, timeout=10).stdout
        return [int(p) for p in out.split()]

    def _require_open(self) -> None:
        if not self._open:
            raise HarnessError("namespace is not open (use `with Netns(...) as ns:`)")


def _delete_namespace(name: str) -> None:
    """Kill what is left inside (by PID), then delete the namespace.

    A process still inside would keep the namespace alive after ``ip netns del``.
    A ``pyike-<purpose>-<pid>-<n>`` namespace is private to the run that made it,
    so what is left inside was started by that run (e.g. a daemon that left its
    process group); ``close()`` has already stopped its own groups gracefully.
    """
    for _ in range(3):
        out = _run(["ip", "netns", "pids", name], check=False, timeout=10).stdout
        pids = [int(p) for p in out.split()]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    _run(["ip", "netns", "del", name], check=False, timeout=10)
    _remove_state(name)


def _write_state(name: str) -> None:
    STATE_DIR.mkdir(mode=0o755, exist_ok=True)
    pid = os.getpid()
    (STATE_DIR / name).write_text(f"{pid} {_proc_start_time(pid)} {_pid_namespace()}\n")


def _remove_state(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        (STATE_DIR / name).unlink()


def cleanup_all() -> None:
    """Close every namespace this process still holds (atexit and signal path)."""
    with _live_lock:
        live = list(_live.values())
    for ns in live:
        ns.close()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    cleanup_all()
    # Then die of the same signal, as if we had not caught it.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_handlers() -> None:
    """atexit always; SIGTERM/SIGHUP only if nobody else handles them (main thread)."""
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(cleanup_all)
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _on_signal)


def sweep_stale() -> list[str]:
    """Delete ``pyike-*`` namespaces whose creator process no longer exists.

    A namespace counts as stale only if its state file says it was made in our pid
    namespace and that pid is gone or now belongs to another process (start time
    differs); namespaces without a state file are stale only if their name's pid is
    gone. Returns the names deleted.
    """
    swept: list[str] = []
    if not NETNS_DIR.is_dir():
        return swept
    my_pidns = _pid_namespace()
    for entry in sorted(NETNS_DIR.iterdir()):
        m = _NAME_RE.match(entry.name)
        if not m or entry.name in _live:
            continue
        pid = int(m["pid"])
        try:
            state_pid, start, pidns = (STATE_DIR / entry.name).read_text().split()
        except (OSError, ValueError):
            state_pid, start, pidns = str(pid), None, my_pidns
        if pidns != my_pidns or int(state_pid) != pid:
            continue  # not ours to judge
        current = _proc_start_time(pid)
        if current is not None and (start is None or current == start):
            continue  # creator still alive
        _delete_namespace(entry.name)
        swept.append(entry.name)
    # State files whose namespace is already gone.
    if STATE_DIR.is_dir():
        for state in STATE_DIR.iterdir():
            m = _NAME_RE.match(state.name)
            if (
                m
                and not (NETNS_DIR / state.name).exists()
                and (_proc_start_time(int(m["pid"])) is None)
            ):
                _remove_state(state.name)
    return swept


# --- links --------------------------------------------------------------------------


@dataclass(slots=True)
class VethPair:
    ns_a: Netns
    ns_b: Netns
    if_a: str
    if_b: str
    addrs_a: list[str]
    addrs_b: list[str]

    @staticmethod
    def host(addr: str) -> str:
        """'192.0.2.1/24' -> '192.0.2.1'."""
        return addr.split("/", 1)[0]


def veth_pair(
    ns_a: Netns,
    ns_b: Netns,
    addr_a: Sequence[str] | str,
    addr_b: Sequence[str] | str,
    *,
    if_a: str = "eth0",
    if_b: str = "eth0",
    mtu: int = 1500,
    timeout: float = 10.0,
) -> VethPair:
    """Join two namespaces by a veth pair and address both ends.

    Both ends are created directly inside their namespaces (never in the root
    namespace, where names could clash with other runs). IPv6 addresses get
    ``nodad`` so they are usable at once instead of after duplicate detection.
    """
    addrs_a = [addr_a] if isinstance(addr_a, str) else list(addr_a)
    addrs_b = [addr_b] if isinstance(addr_b, str) else list(addr_b)
    _run(
        [
            "ip",
            "link",
            "add",
            if_a,
            "netns",
            ns_a.name,
            "mtu",
            str(mtu),
            "type",
            "veth",
            "peer",
            "name",
            if_b,
            "netns",
            ns_b.name,
            "mtu",
            str(mtu),
        ],
        check=True,
        timeout=10,
    )
    for ns, ifname, addrs in ((ns_a, if_a, addrs_a), (ns_b, if_b, addrs_b)):
        for addr in addrs:
            extra = ["nodad"] if ":" in addr else []
            ns.run(["ip", "addr", "add", addr, "dev", ifname, *extra])
        ns.run(["ip", "link", "set", ifname, "up"])
    for ns, ifname in ((ns_a, if_a), (ns_b, if_b)):
        wait_until(
            lambda ns=ns, ifname=ifname: (
                "LOWER_UP" in ns.run(["ip", "-o", "link", "show", ifname]).stdout
            ),
            timeout,
            what=f"{ifname} up in {ns.name}",
        )
    return VethPair(ns_a, ns_b, if_a, if_b, addrs_a, addrs_b)


@dataclass(slots=True)
class TwoHosts:
    """What the ``two_hosts`` fixture yields; unpacks as ``home, vm = two_hosts``."""

    home: Netns
    vm: Netns
    link: VethPair

    def __iter__(self) -> Iterator[Netns]:
        return iter((self.home, self.vm))


# --- ping (the machine has no iputils-ping: a raw-socket echo in Python) ------------

_PING_SCRIPT = r"""
import ipaddress, os, select, socket, struct, sys, time
dst, count, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
v6 = ipaddress.ip_address(dst).version == 6
fam, proto, req, rep = ((socket.AF_INET6, socket.IPPROTO_ICMPV6, 128, 129) if v6
                        else (socket.AF_INET, socket.IPPROTO_ICMP, 8, 0))
s = socket.socket(fam, socket.SOCK_RAW, proto)
ident = os.getpid() & 0xFFFF
def csum(b):
    b += b"\0" * (len(b) & 1)
    t = sum(struct.unpack(f"!{len(b)//2}H", b))
    t = (t >> 16) + (t & 0xFFFF); t += t >> 16
    return ~t & 0xFFFF
got = 0
for seq in range(count):
    body = struct.pack("!HH", ident, seq) + b"pyike-netns-ping"
    hdr = struct.pack("!BBH", req, 0, 0)
    if not v6:  # the kernel fills in the ICMPv6 checksum, not the ICMP one
        hdr = struct.pack("!BBH", req, 0, csum(hdr + body))
    s.sendto(hdr + body, (dst, 0))
    end = time.monotonic() + timeout
    while (left := end - time.monotonic()) > 0:
        if not select.select([s], [], [], left)[0]:
            break
        pkt = s.recv(2048)
        icmp = pkt if v6 else pkt[(pkt[0] & 15) * 4:]
        if icmp[0] == rep and icmp[4:8] == body[:4]:
            got += 1
            break
print(got)
"""


def ping(ns: Netns, addr: str, count: int = 1, timeout: float = 2.0) -> int:
    """Send ``count`` ICMP/ICMPv6 echo requests from ``ns``; return replies received."""
    out = ns.run(
        [sys.executable, "-c", _PING_SCRIPT, addr, str(count), str(timeout)],
        timeout=count * timeout + 10,
    ).stdout
    return int(out.strip() or 0)


# --- packet capture -----------------------------------------------------------------


@contextlib.contextmanager
def capture(
    ns: Netns,
    iface: str,
    path: str | os.PathLike[str],
    bpf_filter: str = "",
    *,
    timeout: float = 10.0,
) -> Iterator[Path]:
    """Run tcpdump in ``ns`` on ``iface`` writing a pcap to ``path``.

    Yields only once tcpdump reports "listening on" (so no packet is missed), and
    on exit stops it by PID with SIGTERM, which makes tcpdump flush and close the
    file. ``-U`` writes each packet as it arrives; ``-Z root`` keeps tcpdump from
    dropping to a user that could not write ``path``.
    """
    path = Path(path)
    err_path = path.with_name(path.name + ".stderr")
    args = [
        "tcpdump",
        "-i",
        iface,
        "-n",
        "-U",
        "-s",
        "0",
        "-Z",
        "root",
        "--immediate-mode",
        "-w",
        str(path),
    ]
    if bpf_filter:
        args.append(bpf_filter)
    with err_path.open("wb") as err:
        proc = ns.popen(args, stderr=err)

    def ready() -> bool:
        if proc.poll() is not None:
            raise HarnessError(f"tcpdump exited: {err_path.read_text(errors='replace')}")
        return "listening on" in err_path.read_text(errors="replace")

    try:
        wait_until(ready, timeout, what="tcpdump to listen")
        yield path
    finally:
        ns.stop(proc)
