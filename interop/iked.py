"""Run OpenBSD's ``iked`` (Debian openiked 7.2) as a test peer, at the IKE level.

Stock iked exits on this kernel: it installs SAs and flows only through PF_KEY,
which the kernel lacks (see /work/shared/notes/interop-facts.md). So each
instance runs with two helpers from ``interop/iked/``:

- ``pfkey_shim.c``, built here with gcc once per process and preloaded into iked
  (and the processes it re-executes): ``socket(PF_KEY, ...)`` becomes a connection
  to the stand-in, the IPsec-bypass setsockopt on the IKE sockets succeeds, and
  iked's 1 ms wait for a PF_KEY reply is stretched (``PYIKE_PFKEY_REPLY_MS``).
- ``pfkey_standin.py``, a userspace PF_KEY v2 server: it answers iked like Linux
  af_key would and records every SA and flow iked installs as JSON lines, so a test
  can compare keys and SPIs. It can send SADB_EXPIRE (soft: iked rekeys the Child
  SA; hard: iked drops it), on its own at the lifetimes iked set or on demand.

No ESP is carried: this is IKE only. iked has no option to move ``/etc/iked``, so it
runs under ``unshare -m`` with ``workdir/etc`` bind-mounted on ``/etc/iked`` and
``workdir/run`` on ``/run`` (its control socket ``/var/run/iked.sock``).

Typical use (root; see tests/test_iked_harness.py)::

    with Netns("home") as home, Netns("vm") as vm:
        veth_pair(home, vm, "192.0.2.1/24", "192.0.2.2/24")
        key, pub = iked_keypair()
        with Iked(vm, workdir / "vm", "vm", CONF, key, {"carinho.lan": home_pub}) as v:
            ...  # start pyike (or another Iked) in `home`
            v.wait_established(timeout=20)
            sa = v.wait_for_sa(lambda sa: sa["type"] == "SADB_UPDATE")  # inbound + keys
            v.expire(sa["spi"])  # soft SADB_EXPIRE: iked rekeys the Child SA

To put pyike in the other namespace, write its key directory with
``write_key_layout`` (iked's layout, which pyike's ``--keydir`` reads too).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

if TYPE_CHECKING:
    from tests.netns import Netns

IKED_BIN = "/usr/sbin/iked"
IKECTL_BIN = "/usr/sbin/ikectl"
DEBIAN_PACKAGES = "openiked gcc libc6-dev"
HERE = Path(__file__).resolve().parent / "iked"
SHIM_SOURCE = HERE / "pfkey_shim.c"
STANDIN_SCRIPT = HERE / "pfkey_standin.py"
MAX_UNIX_PATH = 107  # sun_path is 108 bytes including the NUL
PFKEY_REPLY_MS = 2000  # how long iked waits for a PF_KEY reply under the shim
_T = TypeVar("_T")
ID_TYPES = ("fqdn", "ufqdn", "ipv4", "ipv6")  # /etc/iked/pubkeys/<type>/<id>

# Lines of iked's log that mean the shim or the stand-in did not do their job.
FATAL_LOG = re.compile(
    r"pfkey_socket: failed|failed to bypass IPsec|pfkey_reply: no reply|"
    r"pfkey_init: failed|fatal in|pfkey_shim: cannot|PYIKE_PFKEY_SOCK unset"
)


class IkedError(RuntimeError):
    """iked or its PF_KEY stand-in failed to start or to reach the expected state."""


# --- keys in iked's layout ----------------------------------------------------------


def iked_keypair() -> tuple[bytes, bytes]:
    """A fresh secp384r1 pair: ("EC PRIVATE KEY" PEM as ikectl writes it, SPKI PEM)."""
    key = ec.generate_private_key(ec.SECP384R1())
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return private_pem, public_pem_of(private_pem)


def public_pem_of(private_pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(private_pem, None)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def pubkey_relpath(ident: str) -> str:
    """``"fqdn/x"`` stays; a bare ID gets the type iked.conf(5) would give ``srcid``
    (IPv4/IPv6 literal, ``user@host`` UFQDN, otherwise FQDN)."""
    kind, _, rest = ident.partition("/")
    if rest and kind in ID_TYPES:
        return ident
    if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", ident):
        return f"ipv4/{ident}"
    if ":" in ident:
        return f"ipv6/{ident}"
    return f"{'ufqdn' if '@' in ident else 'fqdn'}/{ident}"


def write_key_layout(
    etc_dir: Path, local_key_pem: bytes, peer_pubkeys: Mapping[str, bytes]
) -> None:
    """iked(8)'s FILES layout under ``etc_dir`` (what is bind-mounted on /etc/iked):
    ``private/local.key`` (0600), ``local.pub``, ``pubkeys/<type>/<id>``, and the
    empty ``ca``, ``certs``, ``crls`` it scans at start-up."""
    for sub in ("private", "ca", "certs", "crls", *(f"pubkeys/{t}" for t in ID_TYPES)):
        (etc_dir / sub).mkdir(parents=True, exist_ok=True)
    (etc_dir / "private").chmod(0o700)
    private = etc_dir / "private" / "local.key"
    private.write_bytes(local_key_pem)
    private.chmod(0o600)
    (etc_dir / "local.pub").write_bytes(public_pem_of(local_key_pem))
    for ident, pem in peer_pubkeys.items():
        (etc_dir / "pubkeys" / pubkey_relpath(ident)).write_bytes(pem)


# --- the preload shim ---------------------------------------------------------------

_shim_lock = threading.Lock()
_shim_path: Path | None = None


def build_shim() -> Path:
    """Compile pfkey_shim.c once per process into a private temp dir (removed at exit)."""
    global _shim_path
    with _shim_lock:
        if _shim_path is not None and _shim_path.exists():
            return _shim_path
        gcc = shutil.which("gcc")
        if gcc is None:
            raise IkedError("gcc not found: apt-get install gcc libc6-dev")
        out_dir = Path(tempfile.mkdtemp(prefix="pyike-iked-shim-"))
        atexit.register(shutil.rmtree, out_dir, True)
        out = out_dir / "pfkey_shim.so"
        proc = subprocess.run(
            [
                gcc,
                "-O2",
                "-Wall",
                "-Wextra",
                "-shared",
                "-fPIC",
                "-o",
                str(out),
                str(SHIM_SOURCE),
                "-ldl",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if proc.returncode != 0:
            raise IkedError(f"building the PF_KEY shim failed:\n{proc.stderr}")
        out_dir.chmod(0o755)  # iked's re-exec'd children load it too
        _shim_path = out
        return out


# --- one iked instance --------------------------------------------------------------


@dataclass(eq=False)
class Iked:
    """One iked in ``ns`` with its own /etc/iked, /run and PF_KEY stand-in.

    ``conf_text`` is the whole iked.conf; ``local_key_pem`` the private key
    (written as ``private/local.key``); ``peer_pubkeys`` maps a peer ID (bare, or
    ``"fqdn/<id>"``...) to its public key PEM. ``natt`` passes ``-t`` (IKE on 4500
    only). ``auto_expire=False`` makes the stand-in send SADB_EXPIRE only when
    asked (``expire()``); otherwise it sends them at the lifetimes iked set.
    """

    ns: Netns
    workdir: Path
    name: str
    conf_text: str
    local_key_pem: bytes
    peer_pubkeys: Mapping[str, bytes] = field(default_factory=dict)
    natt: bool = False
    extra_args: Sequence[str] = ()
    auto_expire: bool = True
    verbose: int = 2  # -dvv: exchanges, payloads, pfkey calls; 3 adds keys and hex dumps
    standin_delay_ms: float = 0.0  # a slow "kernel": each PF_KEY reply waits this long
    # More files under /etc/iked (relative path -> contents), e.g. ca/ca.crt,
    # certs/<host>.crt, crls/ca.crl: written after the key layout.
    extra_files: Mapping[str, bytes] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = field(init=False, default=None)
    standin: subprocess.Popen[bytes] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        for path in (self.pfkey_sock, self.ctl_sock):
            if len(str(path)) > MAX_UNIX_PATH:
                raise IkedError(f"socket path too long for AF_UNIX: {path}")

    # --- paths --------------------------------------------------------------------
    @property
    def etc_dir(self) -> Path:
        """Bind-mounted on /etc/iked."""
        return self.workdir / "etc"

    @property
    def run_dir(self) -> Path:
        """Bind-mounted on /run (iked's control socket is /var/run/iked.sock)."""
        return self.workdir / "run"

    @property
    def conf_path(self) -> Path:
        return self.workdir / "iked.conf"

    @property
    def log_path(self) -> Path:
        """iked's stderr (``-d``) and stdout."""
        return self.workdir / "iked.log"

    @property
    def record_path(self) -> Path:
        """The stand-in's JSON lines: every PF_KEY message."""
        return self.workdir / "pfkey.jsonl"

    @property
    def pfkey_sock(self) -> Path:
        return self.workdir / "pfkey.sock"

    @property
    def ctl_sock(self) -> Path:
        return self.workdir / "pfkey-ctl.sock"

    @property
    def control_socket(self) -> Path:
        """iked's own control socket, as seen from outside its mount namespace."""
        return self.run_dir / "iked.sock"

    @property
    def udp_port(self) -> int:
        return 4500 if self.natt else 500

    # --- configuration ------------------------------------------------------------
    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(exist_ok=True)
        write_key_layout(self.etc_dir, self.local_key_pem, self.peer_pubkeys)
        for rel, data in self.extra_files.items():
            (self.etc_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.etc_dir / rel).write_bytes(data)
        # iked refuses a config file that is not owned by root or is readable by
        # group/others (parse.y check_file_secrecy).
        self.conf_path.write_text(self.conf_text)
        self.conf_path.chmod(0o600)

    def argv(self) -> list[str]:
        flags = "-d" + "v" * self.verbose
        return [
            IKED_BIN,
            flags,
            *(["-t"] if self.natt else []),
            "-f",
            str(self.conf_path),
            *self.extra_args,
        ]

    # --- lifecycle ----------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> None:
        """Build the shim, start the stand-in, then iked; return once iked has
        registered with PF_KEY and listens on UDP 500 (4500 with ``natt``)."""
        if self.proc is not None:
            raise IkedError(f"{self.name}: already started")
        shim = build_shim()
        self.write_config()
        for path in (self.pfkey_sock, self.ctl_sock, self.record_path, self.log_path):
            path.unlink(missing_ok=True)
        deadline = time.monotonic() + timeout
        try:
            self._start_standin(deadline)
            self._start_iked(shim)
            self._wait_ready(deadline, timeout)
        except BaseException:
            self.stop()  # __exit__ does not run when __enter__ raises
            raise

    def _start_standin(self, deadline: float) -> None:
        args = [
            sys.executable,
            str(STANDIN_SCRIPT),
            "--sock",
            str(self.pfkey_sock),
            "--ctl",
            str(self.ctl_sock),
            "--log",
            str(self.record_path),
        ]
        if not self.auto_expire:
            args.append("--no-auto-expire")
        if self.standin_delay_ms:
            args += ["--delay-ms", str(self.standin_delay_ms)]
        with (self.workdir / "standin.stderr").open("wb") as err:
            self.standin = self.ns.popen(args, stderr=err)
        while True:
            if self.standin.poll() is not None:
                raise IkedError(
                    f"{self.name}: PF_KEY stand-in exited "
                    f"({self.standin.returncode})\n{self._diagnostics()}"
                )
            with contextlib.suppress(OSError, IkedError):
                if self.control({"cmd": "ping"}, timeout=1.0).get("ok"):
                    return
            if time.monotonic() >= deadline:
                raise IkedError(
                    f"{self.name}: PF_KEY stand-in did not answer\n{self._diagnostics()}"
                )
            time.sleep(0.05)

    def _start_iked(self, shim: Path) -> None:
        # Private mount namespace: our etc/run hide the host's. `exec` keeps iked's
        # PID = the popen PID, so Netns stops it (and its children) by PID.
        script = 'mount --bind "$1" /etc/iked && mount --bind "$2" /run && shift 2 && exec "$@"'
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LD_PRELOAD": str(shim),
            "PYIKE_PFKEY_SOCK": str(self.pfkey_sock),
            "PYIKE_PFKEY_REPLY_MS": str(PFKEY_REPLY_MS),
        }
        with self.log_path.open("wb") as out:
            self.proc = self.ns.popen(
                [
                    "unshare",
                    "-m",
                    "sh",
                    "-c",
                    script,
                    "sh",
                    str(self.etc_dir),
                    str(self.run_dir),
                    *self.argv(),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def _wait_ready(self, deadline: float, timeout: float) -> None:
        while True:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise IkedError(f"{self.name}: iked exited with {code}\n{self._diagnostics()}")
            if (m := FATAL_LOG.search(self.log_text())) is not None:
                raise IkedError(f"{self.name}: iked logged {m.group(0)!r}\n{self._diagnostics()}")
            registered = {
                r.get("satype")
                for r in self.records()
                if r.get("type") == "SADB_REGISTER" and r.get("errno") == 0
            }
            if {"esp", "ah"} <= registered and self.udp_port in self.listening_udp_ports():
                return
            if time.monotonic() >= deadline:
                raise IkedError(
                    f"{self.name}: iked not ready within {timeout}s "
                    f"(registered {sorted(registered)})\n{self._diagnostics()}"
                )
            time.sleep(0.1)

    def stop(self, grace: float | None = None) -> None:
        """Stop iked, then the stand-in (SIGTERM, then SIGKILL, by PID). Idempotent."""
        for proc in (self.proc, self.standin):
            if proc is not None:
                self.ns.stop(proc, grace)

    def __enter__(self) -> Iked:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # --- state inside the namespace ---------------------------------------------
    def listening_udp_ports(self) -> set[int]:
        """Local UDP ports with a socket in ``ns`` (from /proc/net/udp{,6})."""
        out = self.ns.run(
            ["cat", "/proc/net/udp", "/proc/net/udp6"], check=False, timeout=10
        ).stdout
        ports = set()
        for line in out.splitlines():
            fields = line.split()
            if len(fields) > 2 and ":" in fields[1] and fields[0].endswith(":"):
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        return ports

    def ikectl(self, *args: str, timeout: float = 10.0) -> str:
        """``ikectl -s <our socket> <args>`` (e.g. ``"show", "sa"``)."""
        proc = self.ns.run(
            [IKECTL_BIN, "-s", str(self.control_socket), *args], check=False, timeout=timeout
        )
        if proc.returncode != 0:
            raise IkedError(f"{self.name}: ikectl {' '.join(args)} failed: {proc.stderr}")
        return proc.stdout

    # --- the stand-in's record and control ----------------------------------------
    def records(self) -> list[dict[str, Any]]:
        """Every record the stand-in wrote so far (a torn last line is skipped)."""
        try:
            text = self.record_path.read_text()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def events(self, *types: str) -> list[dict[str, Any]]:
        """Records of iked's requests of the given SADB types (all types if none)."""
        return [
            r
            for r in self.records()
            if r.get("dir") == "from_iked" and (not types or r.get("type") in types)
        ]

    def installed_sas(self) -> list[dict[str, Any]]:
        """Every SA iked installed (SADB_ADD: outbound, SADB_UPDATE: inbound after
        GETSPI) and the stand-in accepted, oldest first; deleted ones included."""
        return [r for r in self.events("SADB_ADD", "SADB_UPDATE") if r.get("errno") == 0]

    def deleted_sas(self) -> list[dict[str, Any]]:
        return [r for r in self.events("SADB_DELETE") if r.get("errno") == 0]

    def flows(self) -> list[dict[str, Any]]:
        """Every flow (policy) iked installed, oldest first."""
        return [r for r in self.events("SADB_X_SPDADD", "SADB_X_SPDUPDATE") if r.get("errno") == 0]

    def current_sas(self) -> list[dict[str, Any]]:
        """The stand-in's SAD right now (larval GETSPI entries included)."""
        return list(self.control({"cmd": "sad"})["sas"])

    def current_flows(self) -> list[dict[str, Any]]:
        return list(self.control({"cmd": "spd"})["policies"])

    def expire(self, spi: int, hard: bool = False) -> None:
        """Send iked a SADB_EXPIRE for ``spi``: soft -> it rekeys the Child SA
        (CREATE_CHILD_SA), hard -> it deletes it."""
        answer = self.control({"cmd": "expire", "spi": spi, "hard": hard})
        if not answer.get("ok"):
            raise IkedError(f"{self.name}: expire {spi:#010x} failed: {answer.get('error')}")

    def control(self, cmd: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        """One request/answer on the stand-in's control socket."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            s.settimeout(timeout)
            s.connect(str(self.ctl_sock))
            s.send(json.dumps(cmd).encode())
            data = s.recv(1 << 20)
        try:
            answer = json.loads(data)
        except ValueError as exc:
            raise IkedError(f"{self.name}: bad answer from the stand-in: {data[:200]!r}") from exc
        if not isinstance(answer, dict):
            raise IkedError(f"{self.name}: bad answer from the stand-in: {answer!r}")
        return answer

    # --- waiting ------------------------------------------------------------------
    def wait_for_sa(
        self, predicate: Callable[[dict[str, Any]], object], timeout: float = 20.0
    ) -> dict[str, Any]:
        """Poll ``installed_sas()`` until one satisfies ``predicate``; return it."""
        return self.wait_for(
            lambda: next((sa for sa in self.installed_sas() if predicate(sa)), None),
            timeout,
            "an installed SA matching the predicate",
        )

    def wait_established(self, timeout: float = 20.0) -> re.Match[str]:
        """Wait for iked's "established peer ... policy 'x' as initiator|responder"
        line (its IKE SA and first Child SA are up); the match has ``peer``,
        ``policy`` and ``role``."""
        return self.wait_for_log(
            r"established peer (?P<peer>\S+)\[.*?policy '(?P<policy>[^']*)' "
            r"as (?P<role>initiator|responder)",
            timeout,
        )

    def wait_for_log(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        rx = re.compile(pattern)
        return self.wait_for(
            lambda: rx.search(self.log_text()), timeout, f"log line matching {pattern!r}"
        )

    def wait_for(self, probe: Callable[[], _T | None], timeout: float, what: str) -> _T:
        """Poll ``probe`` (bounded); fail early if iked died."""
        deadline = time.monotonic() + timeout
        while True:
            value = probe()
            if value:
                return value
            if not self.running():
                raise IkedError(
                    f"{self.name}: iked died while waiting for {what}\n{self._diagnostics()}"
                )
            if time.monotonic() >= deadline:
                raise IkedError(f"{self.name}: no {what} within {timeout}s\n{self._diagnostics()}")
            time.sleep(0.1)

    # --- logs ---------------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _diagnostics(self, lines: int = 40) -> str:
        parts = []
        for path in (self.log_path, self.workdir / "standin.stderr", self.record_path):
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path} (last {lines} lines)\n" + "\n".join(tail))
        return "\n".join(parts)
