"""Build the boot files for the iked VM: Debian's kernel and a small initramfs.

The host kernel has no PF_KEY and no ESP, so iked's real data plane needs a guest
kernel. Debian's own ``linux-image-*-amd64`` has ``af_key``, ``esp4``/``esp6`` and
the crypto modules. Nothing is installed into the host system:

- the kernel package is fetched with ``apt-get download`` and unpacked with
  ``dpkg-deb -x`` into a cache directory (``/var/cache/pyike-vm`` unless
  ``PYIKE_VM_CACHE`` says otherwise);
- the *base* initramfs (busybox, iked and ``ip`` with their shared libraries, the
  module closure, ``/init``) is written as a gzip'd newc cpio archive, cached under
  a key that hashes every input (kernel version, binaries, init script), so it is
  built once and reused;
- a per-run *overlay* cpio (``/etc/iked.conf``, keys, addresses) is appended to the
  base: the kernel unpacks concatenated archives in order (Documentation/
  driver-api/early-userspace/buffer-format.rst), so keys never enter the cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
INIT_SCRIPT = HERE / "init.sh"
KERNEL_META = "linux-image-amd64"
DEFAULT_CACHE = Path("/var/cache/pyike-vm")
IKED_BIN = "/usr/sbin/iked"
BUSYBOX_BIN = "/bin/busybox"
IP_BIN = "/usr/sbin/ip"
# iked loads OpenSSL 3's legacy provider at start and exits without it.
EXTRA_FILES = ("/usr/lib/x86_64-linux-gnu/ossl-modules/legacy.so",)
DEBIAN_PACKAGES = "qemu-system-x86 busybox-static openiked iproute2"
# What the guest needs; their dependencies are added from each module's .modinfo.
# sha256, hmac, cbc, aes, xfrm tunnel mode and ESP-in-UDP (inside esp4/esp6) are
# built into Debian's kernel; the rest are modules.
ROOT_MODULES = (
    "virtio_pci",
    "virtio_net",  # the NIC qemu gives us
    "af_key",  # PF_KEY v2 (RFC 2367): how iked installs SAs and flows on Linux
    "xfrm_user",  # netlink XFRM, for `ip xfrm state` counters in the guest
    "esp4",
    "esp6",  # the ESP data plane (RFC 4303); UDP encapsulation (RFC 3948)
    "authenc",
    "echainiv",
    "seqiv",
    "sha512_generic",  # cbc(aes)+hmac(sha2) AEAD glue
    # echainiv (the IV generator ESP wraps around authenc) takes its salt from the
    # default "stdrng"; without a DRBG the SA add fails with ENOENT ("Kernel was
    # unable to initialize cryptographic operations").
    "ctr",
    "drbg",
)


class ImageError(RuntimeError):
    """The kernel package or a binary the image needs is missing or unusable."""


def cache_dir() -> Path:
    return Path(os.environ.get("PYIKE_VM_CACHE", DEFAULT_CACHE))


@contextlib.contextmanager
def cache_lock(cache: Path | None = None, timeout: float = 300.0) -> Iterator[Path]:
    """Hold the cache's lock: concurrent runs (other checkouts, other helpers) must not
    unpack the kernel or replace an image under each other. Bounded wait."""
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ImageError(f"{cache}/.lock still held after {timeout:.0f}s") from None
                time.sleep(0.2)
        try:
            yield cache
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(args: list[str], *, cwd: Path | None = None, timeout: float = 300) -> str:
    try:
        proc = subprocess.run(
            args,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ImageError(f"timed out after {timeout}s: {' '.join(args)}") from exc
    if proc.returncode != 0:
        raise ImageError(f"failed ({proc.returncode}): {' '.join(args)}\n{proc.stderr.strip()}")
    return proc.stdout


# --- the kernel ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Kernel:
    version: str  # e.g. "6.1.0-57-amd64"
    root: Path  # the unpacked package
    vmlinuz: Path

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.version


def kernel_package() -> str:
    """The versioned package ``linux-image-amd64`` currently depends on."""
    out = _run(["apt-cache", "depends", KERNEL_META], timeout=60)
    m = re.search(r"Depends:\s*(linux-image-\S+-amd64)\b", out)
    if not m:
        raise ImageError(f"cannot find the kernel package behind {KERNEL_META}:\n{out}")
    return m.group(1)


def fetch_kernel(cache: Path | None = None) -> Kernel:
    """Download and unpack the kernel package once; reuse the unpacked tree after."""
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    for done in sorted(cache.glob("kernel-*/.unpacked")):
        # A finished unpack of any version is good enough: do not ask apt every run.
        root = done.parent
        version = root.name.removeprefix("kernel-")
        return Kernel(version, root, root / "boot" / f"vmlinuz-{version}")
    package = kernel_package()
    version = package.removeprefix("linux-image-")
    debs = list(cache.glob(f"{package}_*.deb"))
    if not debs:
        # The sandbox user _apt may not write into the cache: download as root.
        _run(["apt-get", "download", "-o", "APT::Sandbox::User=root", package], cwd=cache)
        debs = list(cache.glob(f"{package}_*.deb"))
    if not debs:
        raise ImageError(f"apt-get download {package} produced no .deb in {cache}")
    root = cache / f"kernel-{version}"
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=cache))
    try:
        _run(["dpkg-deb", "-x", str(debs[0]), str(tmp)])
        if root.exists():
            shutil.rmtree(root)
        tmp.rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _prune_kernel_tree(root, version)
    (root / ".unpacked").write_text(debs[0].name + "\n")
    debs[0].unlink()  # 70 MB; the unpacked tree is what we use
    return Kernel(version, root, root / "boot" / f"vmlinuz-{version}")


# Module directories the guest's modules and their dependencies come from; the rest
# of the 400 MB tree (sound, GPUs, file systems...) is deleted after unpacking.
KEEP_MODULE_DIRS = ("net", "crypto", "lib", "arch", "drivers/net", "drivers/virtio")
DROP_MODULE_DIRS = ("drivers/net/wireless", "drivers/net/ethernet")  # 60 MB of NICs


def _prune_kernel_tree(root: Path, version: str) -> None:
    kernel = root / "lib" / "modules" / version / "kernel"
    keep = {kernel / d for d in KEEP_MODULE_DIRS}
    for path in sorted(kernel.rglob("*"), key=lambda p: len(p.parts)):
        if not path.is_dir() or not path.exists():
            continue
        if path in keep or any(k.is_relative_to(path) or path.is_relative_to(k) for k in keep):
            continue
        shutil.rmtree(path)
    for d in DROP_MODULE_DIRS:
        shutil.rmtree(kernel / d, ignore_errors=True)
    for extra in ("usr", "etc"):
        shutil.rmtree(root / extra, ignore_errors=True)
    for f in (root / "boot").iterdir():
        if not f.name.startswith(("vmlinuz-", "config-")):
            f.unlink()


def module_depends(ko: Path) -> list[str]:
    """The ``depends=`` entry of a module's .modinfo section (NUL-separated strings)."""
    data = ko.read_bytes()
    m = re.search(rb"\0depends=([^\0]*)\0", data)
    if not m:
        return []
    return [d for d in m.group(1).decode().split(",") if d]


def module_closure(kernel: Kernel, roots: Iterable[str]) -> list[Path]:
    """Module files for ``roots`` and their dependencies, dependencies first
    (the order ``insmod`` needs). Built-in modules are skipped."""
    index: dict[str, Path] = {}
    for ko in kernel.modules.rglob("*.ko"):
        index[ko.stem.replace("-", "_")] = ko
    builtin = {
        Path(line).stem.replace("-", "_")
        for line in (kernel.modules / "modules.builtin").read_text().split()
    }
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen:
            return
        seen.add(name)
        if name not in index:
            if name in builtin:
                return
            raise ImageError(f"module {name} is neither in {kernel.modules} nor built in")
        for dep in module_depends(index[name]):
            visit(dep)
        order.append(index[name])

    for root in roots:
        visit(root)
    return order


# --- shared libraries ---------------------------------------------------------------


def shared_libraries(binary: str) -> list[Path]:
    """Absolute paths ``ldd`` resolves for ``binary`` (including the loader)."""
    proc = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=30, check=False)
    if "not a dynamic executable" in proc.stdout + proc.stderr:
        return []  # busybox-static
    if proc.returncode != 0:
        raise ImageError(f"ldd {binary} failed: {proc.stderr.strip()}")
    out = proc.stdout
    libs: list[Path] = []
    for line in out.splitlines():
        m = re.search(r"(/\S+)\s+\(0x", line)
        if m:
            libs.append(Path(m.group(1)))
    return libs


# --- cpio (newc, what the kernel's initramfs unpacker reads) -----------------------


class Cpio:
    """A minimal writer of the "newc" cpio format (070701 headers, 4-byte aligned)."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1000
        self.dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"") -> None:
        self.ino += 1
        fields = (self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0)
        hdr = b"070701" + b"".join(f"{f:08x}".encode() for f in fields)
        self.buf.write(hdr + name.encode() + b"\0")
        self.buf.write(b"\0" * (-self.buf.tell() % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-self.buf.tell() % 4))

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        path = path.strip("/")
        parts = path.split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub and sub not in self.dirs:
                self.dirs.add(sub)
                self._entry(sub, 0o040000 | (mode if sub == path else 0o755))

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        path = path.strip("/")
        if "/" in path:
            self.mkdir(path.rsplit("/", 1)[0])
        self._entry(path, 0o100000 | mode, data)

    def symlink(self, path: str, target: str) -> None:
        path = path.strip("/")
        if "/" in path:
            self.mkdir(path.rsplit("/", 1)[0])
        self._entry(path, 0o120000 | 0o777, target.encode())

    def copy(self, src: Path, dest: str | None = None) -> None:
        real = src.resolve()
        self.file(dest or str(src), real.read_bytes(), real.stat().st_mode & 0o7777)

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return gzip.compress(self.buf.getvalue(), compresslevel=1, mtime=0)


# --- the images ---------------------------------------------------------------------


def _binaries() -> dict[str, str]:
    found = {}
    for name, path in (("iked", IKED_BIN), ("busybox", BUSYBOX_BIN), ("ip", IP_BIN)):
        real = shutil.which(path) or shutil.which(Path(path).name)
        if real is None:
            raise ImageError(f"{path} is missing: apt-get install {DEBIAN_PACKAGES}")
        found[name] = real
    return found


def _digest(paths: Iterable[Path | str], extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for p in paths:
        p = Path(p).resolve()
        h.update(str(p).encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class BaseImage:
    kernel: Kernel
    initrd: Path  # gzip'd cpio: everything except the per-run overlay
    built: bool  # False when it came from the cache


def base_image(cache: Path | None = None) -> BaseImage:
    """The cached base initramfs for the current kernel and binaries (built if needed)."""
    cache = cache or cache_dir()
    kernel = fetch_kernel(cache)
    bins = _binaries()
    libs = sorted({lib for b in bins.values() for lib in shared_libraries(b)})
    key = _digest(
        [*bins.values(), *libs, *EXTRA_FILES, INIT_SCRIPT, Path(__file__)],
        f"{kernel.version} {' '.join(ROOT_MODULES)}",
    )
    out = cache / f"initrd-{kernel.version}-{key}.cpio.gz"
    if out.exists():
        return BaseImage(kernel, out, built=False)
    cpio = Cpio()
    for d in (
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "var/run",
        "etc/iked/private",
        "etc/iked/pubkeys/fqdn",
        "etc/iked/ca",
        "etc/iked/certs",
        "etc/iked/crls",
        "var/lib/openiked/empty",
        "usr/sbin",
        "usr/bin",
        "sbin",
    ):
        cpio.mkdir(d)
    cpio.mkdir("root", 0o700)
    cpio.copy(Path(bins["busybox"]), "bin/busybox")
    cpio.symlink("bin/sh", "busybox")
    cpio.copy(Path(bins["iked"]), "usr/sbin/iked")
    # iproute2's ip (not busybox's) for `ip xfrm state`: the kernel's own SA counters.
    cpio.copy(Path(bins["ip"]), "usr/sbin/ip-full")
    for lib in libs:
        cpio.copy(lib, str(lib))
    for extra in EXTRA_FILES:
        cpio.copy(Path(extra), extra)
    mods = module_closure(kernel, ROOT_MODULES)
    for ko in mods:
        cpio.copy(ko, f"modules/{ko.name}")
    cpio.file("modules/order", "".join(f"{ko.name}\n" for ko in mods).encode())
    # iked drops privileges to _iked and chroots to its home (privsep).
    cpio.file(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\n"
        b"_iked:x:102:105:OpenIKED:/var/lib/openiked/empty:/bin/false\n",
    )
    cpio.file("etc/group", b"root:x:0:\n_iked:x:105:\n")
    cpio.file("etc/hosts", b"127.0.0.1 localhost\n")
    cpio.copy(INIT_SCRIPT, "init")
    data = cpio.finish()
    for stale in cache.glob("initrd-*.cpio.gz"):
        stale.unlink()  # built from other inputs: never used again
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    tmp.rename(out)
    return BaseImage(kernel, out, built=True)


def overlay(files: Mapping[str, tuple[bytes, int]]) -> bytes:
    """A gzip'd cpio with the per-run files: path -> (content, mode)."""
    cpio = Cpio()
    for path, (data, mode) in sorted(files.items()):
        cpio.file(path, data, mode)
    return cpio.finish()


def boot_initrd(base: BaseImage, files: Mapping[str, tuple[bytes, int]], dest: Path) -> Path:
    """Write base + overlay into ``dest`` (one file qemu's -initrd can load)."""
    with dest.open("wb") as f:
        f.write(base.initrd.read_bytes())
        f.write(overlay(files))
    return dest
