"""Boot the iked VM under qemu (TCG) on a tap device inside a test namespace.

``IkedVM`` writes the per-run overlay (iked.conf, keys, addresses), creates a tap
device inside the caller's ``Netns``, starts ``qemu-system-x86_64`` there through
``Netns.popen`` (so the namespace stops it by PID whatever happens), and offers
bounded waits on the serial console and a command channel on the second serial
port. ``/dev/kvm`` exists on this machine but a Linux guest hangs under it, so the
accelerator is always TCG (software emulation).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from interop.vm import image

if TYPE_CHECKING:
    from tests.netns import Netns

QEMU_BIN = "qemu-system-x86_64"
BOOT_TIMEOUT_S = 90.0  # TCG boots in ~10 s to iked; 35 s seen on the loaded, shared machine
READY = re.compile(r"PYIKE-VM: READY iked (\d+)")
# iked's control socket exists before its IKE process has its configuration: an
# IKE_SA_INIT that arrives earlier is answered, then freed by the configuration's
# final "reload", and the IKE_AUTH after it is dropped in silence (seen under load).
# The last static setting iked 7.2 logs at -v (config_getstatic) marks the end.
IKED_CONFIGURED = re.compile(r"config_getstatic: (no )?stickyaddress")
GUEST_FAILED = re.compile(r"PYIKE-VM: (iked exited|insmod \S+ failed)|Kernel panic")


class VMError(RuntimeError):
    """The VM did not boot, iked did not start, or a guest command failed."""


@dataclass
class IkedVM:
    """One VM running iked, reachable from ``ns`` through tap ``tap``.

    ``host_addr``/``vm_addr`` are the outer (documentation) addresses with prefix;
    ``iked_conf`` is the text of /etc/iked.conf in the guest; ``keys`` maps
    guest paths (``etc/iked/private/local.key``...) to PEM bytes.
    """

    ns: Netns
    workdir: Path
    iked_conf: str
    keys: Mapping[str, bytes]
    host_addr: str = "2001:db8:1::1/64"
    vm_addr: str = "2001:db8:1::2/64"
    vm_inner: str = "2001:db8:c1da::2"
    home_inner: str = "2001:db8:c1da::1"
    iked_args: str = "-d -vv"  # plus -D ext=<vm address>, see overlay_files
    bulk_bytes: int = 1 << 20  # what the guest's port 27 sends
    tap: str = "tap0"
    memory_mb: int = 256
    proc: subprocess.Popen[bytes] | None = field(init=False, default=None)
    base: image.BaseImage | None = field(init=False, default=None)
    boot_seconds: float = field(init=False, default=0.0)  # qemu start -> iked ready
    build_seconds: float = field(init=False, default=0.0)  # kernel fetch + image
    _ctl: socket.socket | None = field(init=False, default=None)
    _ctl_buf: bytes = field(init=False, default=b"")
    _ctl_n: int = field(init=False, default=0)

    @property
    def console_path(self) -> Path:
        return self.workdir / "console.log"

    @property
    def ctl_path(self) -> Path:
        return self.workdir / "ctl.sock"

    @property
    def vm_host(self) -> str:
        return self.vm_addr.split("/", 1)[0]

    def overlay_files(self) -> dict[str, tuple[bytes, int]]:
        env = (
            f"VM_ADDR={self.vm_addr}\nVM_INNER={self.vm_inner}\n"
            f"HOME_INNER={self.home_inner}\nBULK_BYTES={self.bulk_bytes}\n"
            # conf/vm-iked.conf names its public address $ext: point it at ours.
            f"IKED_ARGS='{self.iked_args} -D ext={self.vm_host}'\n"
        )
        files = {
            "etc/pyike-vm.env": (env.encode(), 0o644),
            "etc/iked.conf": (self.iked_conf.encode(), 0o600),
        }
        for path, pem in self.keys.items():
            files[path] = (pem, 0o600 if "private" in path else 0o644)
        return files

    def argv(self, initrd: Path) -> list[str]:
        assert self.base is not None
        return [
            QEMU_BIN,
            "-accel",
            "tcg",
            "-m",
            str(self.memory_mb),
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-kernel",
            str(self.base.kernel.vmlinuz),
            "-initrd",
            str(initrd),
            # panic=-1 with -no-reboot: a guest panic ends qemu instead of hanging.
            "-append",
            "console=ttyS0 panic=-1 loglevel=4 ipv6.disable=0",
            "-serial",
            f"file:{self.console_path}",
            "-serial",
            f"unix:{self.ctl_path},server=on,wait=off",
            "-netdev",
            f"tap,id=n0,ifname={self.tap},script=no,downscript=no",
            # romfile= skips the iPXE option ROM: we boot with -kernel, not from the NIC.
            "-device",
            "virtio-net-pci,netdev=n0,romfile=",
        ]

    def start(self, timeout: float = BOOT_TIMEOUT_S) -> IkedVM:
        if shutil.which(QEMU_BIN) is None:
            raise VMError(f"{QEMU_BIN} missing: apt-get install {image.DEBIAN_PACKAGES}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        with image.cache_lock():
            self.base = image.base_image()
            initrd = image.boot_initrd(self.base, self.overlay_files(), self.workdir / "initrd.gz")
        self.build_seconds = time.monotonic() - t0
        self.ns.run(["ip", "tuntap", "add", "dev", self.tap, "mode", "tap"])
        nodad = ["nodad"] if ":" in self.host_addr else []
        self.ns.run(["ip", "addr", "add", self.host_addr, "dev", self.tap, *nodad])
        self.ns.run(["ip", "link", "set", self.tap, "up"])
        self.console_path.write_bytes(b"")
        log = (self.workdir / "qemu.log").open("wb")
        t0 = time.monotonic()
        self.proc = self.ns.popen(self.argv(initrd), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.wait_console(READY, timeout, "iked to start in the VM")
        if "-v" in self.iked_args:
            self.wait_console(IKED_CONFIGURED, timeout, "iked to finish configuring")
        self.boot_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Stop qemu by PID (the namespace would too) and remove the tap device."""
        if self._ctl is not None:
            with contextlib.suppress(OSError):
                self._ctl.close()
            self._ctl = None
        if self.proc is not None:
            self.ns.stop(self.proc, grace=3.0)
        with contextlib.suppress(Exception):
            self.ns.run(["ip", "link", "del", self.tap], check=False, timeout=10)

    def __enter__(self) -> IkedVM:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # the console
    def console(self) -> str:
        try:
            return self.console_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_console(
        self, pattern: re.Pattern[str] | str, timeout: float, what: str
    ) -> re.Match[str]:
        """Bounded wait for ``pattern`` on the console; fail early if qemu or iked died."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            text = self.console()
            m = rx.search(text)
            if m:
                return m
            bad = GUEST_FAILED.search(text)
            if bad and not rx.search(bad.group(0)):
                raise VMError(
                    f"guest failed ({bad.group(0)}) waiting for {what}:\n{self.diagnostics()}"
                )
            if self.proc is not None and self.proc.poll() is not None:
                raise VMError(
                    f"qemu exited ({self.proc.returncode}) waiting for {what}:\n"
                    f"{self.diagnostics()}"
                )
            if time.monotonic() >= deadline:
                raise VMError(
                    f"timed out after {timeout:.0f}s waiting for {what}:\n{self.diagnostics()}"
                )
            time.sleep(0.1)

    def diagnostics(self, lines: int = 40) -> str:
        qemu = self.workdir / "qemu.log"
        qtext = qemu.read_text(errors="replace") if qemu.exists() else ""
        tail = "\n".join(self.console().splitlines()[-lines:])
        return f"--- console (last {lines} lines) ---\n{tail}\n--- qemu ---\n{qtext[-2000:]}"

    # the command channel (second serial port: a shell in the guest)
    def run(self, command: str, timeout: float = 20.0) -> str:
        """Run a shell command in the guest; return its output (stdout + stderr)."""
        if self._ctl is None:
            self._ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._ctl.connect(str(self.ctl_path))
        self._ctl_n += 1
        n = self._ctl_n
        begin, end = f"__PYIKE_VM_BEGIN_{n}__", f"__PYIKE_VM_END_{n}__"
        # The markers are printed by `echo` from quoted text, so an echo of the command
        # itself could never match them; `{ }` keeps the command's output between them.
        self._ctl.sendall(
            f'echo __PYIKE_VM_BEGIN_"{n}"__; {{ {command}; }} 2>&1; '
            f'echo __PYIKE_VM_END_"{n}"__\n'.encode()
        )
        deadline = time.monotonic() + timeout
        while end.encode() not in self._ctl_buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise VMError(f"guest command timed out after {timeout}s: {command}")
            self._ctl.settimeout(left)
            try:
                chunk = self._ctl.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise VMError(f"guest command channel closed during: {command}")
            self._ctl_buf += chunk
        out, _, self._ctl_buf = self._ctl_buf.partition(end.encode())
        out = out.partition(begin.encode())[2]
        return out.decode(errors="replace").replace("\r\n", "\n").strip("\n")
