"""Run the real ``pyike`` daemon in a test namespace: keys, config, log access.

Used by the namespace tests and by ``pyike demo``'s sibling in tests: it
writes a key directory in iked's layout, starts ``python -m pyike -f CONF``
inside a Netns with its stderr in a file, and offers bounded waits on the log.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pyike import keys
from pyike.registry import IdType
from tests.netns import Netns

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
# pyikectl from this checkout (the entry point may not be installed)
PYIKECTL = [
    sys.executable,
    "-c",
    "import sys; from pyike.ctl import main; sys.exit(main(sys.argv[1:]))",
]


def write_keydir(
    root: Path, private: ec.EllipticCurvePrivateKey, peers: dict[str, ec.EllipticCurvePublicKey]
) -> Path:
    """iked's layout: private/local.key (0600 under 0700), local.pub, pubkeys/fqdn/<id>."""
    (root / "private").mkdir(parents=True, mode=0o700, exist_ok=True)
    key = root / "private" / "local.key"
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    key.chmod(0o600)
    (root / "local.pub").write_bytes(keys.public_key_pem(private.public_key()))
    for ident, pub in peers.items():
        keys.install_peer_key(root, IdType.ID_FQDN, ident, keys.public_key_pem(pub))
    return root


def charon_vm(
    hosts: Any, tmp: Path, name: str, remote_addr: str = "192.0.2.1", **extra: str
) -> tuple[Path, Any]:
    """The guide's VM played by strongSwan's charon (kernel-libipsec) on ``hosts.vm``,
    started with its connection loaded, and the home key directory that trusts it:
    P-384 raw keys, AES-GCM, ``2001:db8:c1da::2`` <-> ``::1``. ``extra``: more
    ``interop.strongswan.Charon`` fields (conn_extra, child_extra, ...)."""
    from interop.strongswan import Charon

    home_id, vm_id, home_inner, vm_inner = (
        "carinho.lan",
        "namorar.example.com",
        "2001:db8:c1da::1",
        "2001:db8:c1da::2",
    )
    hk, vk = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    home_keys = write_keydir(tmp / "home-keys", hk, {vm_id: vk.public_key()})
    hosts.vm.run(["ip", "-6", "addr", "add", f"{vm_inner}/128", "dev", "lo", "nodad"])
    charon = Charon(
        hosts.vm,
        tmp / "charon",
        name=name,
        local_addr="192.0.2.2",
        remote_addr=remote_addr,
        local_id=vm_id,
        remote_id=home_id,
        private_key_pem=keys.private_key_pem(vk, pkcs8=True),
        peer_public_pem=keys.public_key_pem(hk.public_key()),
        ike_proposals="aes256gcm16-prfsha384-x25519",
        esp_proposals="aes256gcm16",
        local_ts=f"{vm_inner}/128",
        remote_ts=f"{home_inner}/128",
        **extra,  # type: ignore[arg-type]
    )
    charon.start()
    charon.load()
    return home_keys, charon


def private_config(conf: Path, workdir: Path) -> Path:
    """``conf`` as pyike (and iked) accept it: mode 0600. A file of this checkout (the
    guide's, 0644 in git) is copied into ``workdir``; a test's own file is chmod-ed where
    it is, so that the test can still rewrite it for a reload."""
    if conf.resolve().is_relative_to(REPO):
        copy = workdir / f"private-{conf.name}"
        copy.write_bytes(conf.read_bytes())
        conf = copy
    conf.chmod(0o600)
    return conf


@dataclass
class PyikeProc:
    """One pyike daemon in a namespace."""

    ns: Netns
    workdir: Path
    conf: Path
    keydir: Path
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    verbosity: list[str] = field(default_factory=lambda: ["-vv"])
    env: dict[str, str] | None = None  # extra environment (NOTIFY_SOCKET...)
    # Each daemon gets its own control socket (short path: sun_path has 108 bytes).
    socket_path: Path | None = None

    def start(self) -> PyikeProc:
        self.conf = private_config(self.conf, self.workdir)
        self.log_path = self.workdir / f"pyike-{self.ns.name}.log"
        if self.socket_path is None:
            self.socket_path = Path(f"/tmp/pyike-{self.ns.name}.sock")
        log = self.log_path.open("wb")
        cmd = [
            sys.executable,
            "-m",
            "pyike",
            "-f",
            str(self.conf),
            "--keydir",
            str(self.keydir),
            "-s",
            str(self.socket_path),
            *self.verbosity,
            *self.args,
        ]
        env = {**os.environ, **self.env} if self.env else None
        self.proc = self.ns.popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO), env=env)
        log.close()
        return self

    def ctl(self, *words: str, check: bool = True, timeout: float = 20.0) -> str:
        """Run ``pyikectl -s OUR_SOCKET words...`` (from the root namespace: the
        socket is a file) and return its stdout."""
        assert self.socket_path is not None
        r = subprocess.run(
            [*PYIKECTL, "-s", str(self.socket_path), *words],
            capture_output=True, text=True, timeout=timeout, cwd=str(REPO),
        )  # fmt: skip
        if check and r.returncode != 0:
            raise AssertionError(f"pyikectl {' '.join(words)}: {r.returncode} {r.stderr}")
        return r.stdout

    def ctl_json(self, *words: str) -> Any:
        return json.loads(self.ctl(*words, "--json"))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def wait_log(self, pattern: str, timeout: float = 20.0, count: int = 1) -> list[str]:
        """Wait (bounded) until ``pattern`` matched ``count`` log lines."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while True:
            found = [line for line in self.log().splitlines() if rx.search(line)]
            if len(found) >= count:
                return found
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"pyike in {self.ns.name} exited "
                    f"({self.proc.returncode}):\n{self.log()[-4000:]}"
                )
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"no {count}x /{pattern}/ in {timeout} s; log:\n{self.log()[-4000:]}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (pyike sends DELETEs), then wait; the namespace kills leftovers."""
        try:
            if self.proc is None or self.proc.poll() is not None:
                return self.proc.returncode if self.proc else None
            self.proc.terminate()
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait(5)
        finally:
            if (
                self.socket_path is not None
                and self.proc is not None
                and self.proc.poll() is not None
            ):
                with contextlib.suppress(OSError):
                    self.socket_path.unlink()  # left over only if the daemon was killed
