"""The key and certificate set-ups of the iked-vm case (docs/iked-vm.md, "Keys").

Each set-up gives the files for the guest's /etc/iked (in iked's layout, written
into the per-run overlay, never into the cached image), pyike's key directory (the
same layout), the auth keyword both iked.conf files carry, and what pyike must log
when it has authenticated iked that way:

  p384      fresh ECDSA P-384 raw keys, ``ecdsa384`` (the guide's files as they are)
  ikectl-ca a CA and both host certificates made by iked's own ``ikectl ca`` (RSA-2048,
            a dNSName subjectAltName per host, a CRL): ca/ca.crt, certs/<host>.crt,
            crls/ca.crl, private/local.key on both sides, no pubkeys/; no keyword,
            iked's default "any signature" (RFC 7427), as a user switching the guide
            from raw keys to certificates writes it; and ``set fragmentation``: the
            IKE_AUTH with a certificate (1547 bytes of IPv6 payload) would otherwise
            leave as two IP fragments, which real paths often drop (RFC 7383 1);
            both sides must have it (each only offers it then)
  rsa2048   RSA-2048 raw keys (an OpenBSD install older than 7.2 has such a
            local.key), ``rsa``: AUTH method 1, RSA PKCS#1 v1.5 (RFC 7296 3.8)
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pyike import keys
from pyike.registry import IdType

REPO = Path(__file__).resolve().parents[2]
IKECA_CNF = REPO / "interop" / "ikeca.cnf"  # Debian's openiked ships no ikeca.cnf
AUTHS = ("p384", "ikectl-ca", "rsa2048")


@dataclass
class AuthSetup:
    name: str
    vm_files: dict[str, bytes]  # path in the guest -> content
    home_keydir: Path
    keyword: str  # iked.conf auth keyword on both sides; "" is iked's default
    home_log: str  # regex pyike logs once it has authenticated iked this way
    vm_log: str  # regex iked logs once it has authenticated pyike ("" = nothing extra)
    conf_head: str = ""  # lines put before both iked.conf files (global options)


def ikectl_ca(workdir: Path, hosts: tuple[str, ...]) -> Path:
    """``ikectl ca vpn create`` and a certificate per host; returns the CA directory.

    ikectl works under /etc/ssl only: a private mount namespace binds a directory
    holding interop/ikeca.cnf there (tests/test_interop_iked_certs.py uses this too).
    """
    ssl = workdir / "ssl"
    shutil.rmtree(ssl, ignore_errors=True)  # a reused --workdir: a fresh CA each run
    ssl.mkdir(parents=True)
    shutil.copy(IKECA_CNF, ssl / "ikeca.cnf")
    script = 'mount --bind "$1" /etc/ssl && ikectl ca vpn create password test-only'
    for host in hosts:
        script += f" && ikectl ca vpn certificate {host} create"
    r = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", str(ssl)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    if r.returncode != 0:
        raise RuntimeError(f"ikectl ca failed: {(r.stdout + r.stderr)[-500:]}")
    return ssl / "vpn"


def _keydir(root: Path, key_pem: bytes, files: dict[str, bytes], peers: dict[str, bytes]) -> Path:
    shutil.rmtree(root, ignore_errors=True)  # fresh keys every run
    (root / "private").mkdir(parents=True, mode=0o700)
    (root / "private" / "local.key").write_bytes(key_pem)
    (root / "private" / "local.key").chmod(0o600)
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    for ident, pem in peers.items():
        keys.install_peer_key(root, IdType.ID_FQDN, ident, pem)
    return root


def _pub(pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(pem, None)
    return keys.public_key_pem(key.public_key())  # type: ignore[arg-type]


def _raw(
    name: str, workdir: Path, home_pem: bytes, vm_pem: bytes, keyword: str, home_id: str, vm_id: str
) -> AuthSetup:
    return AuthSetup(
        name,
        {
            "etc/iked/private/local.key": vm_pem,
            "etc/iked/local.pub": _pub(vm_pem),
            f"etc/iked/pubkeys/fqdn/{home_id}": _pub(home_pem),
        },
        _keydir(
            workdir / "home-keys", home_pem, {"local.pub": _pub(home_pem)}, {vm_id: _pub(vm_pem)}
        ),
        keyword,
        r"authenticated: .*raw public key",
        "",
    )


def make(name: str, workdir: Path, home_id: str, vm_id: str) -> AuthSetup:
    """Write the set-up ``name`` (one of AUTHS) under ``workdir``."""
    if name == "p384":
        home, vm = (keys.private_key_pem(ec.generate_private_key(ec.SECP384R1())) for _ in "hv")
        return _raw(name, workdir, home, vm, "ecdsa384", home_id, vm_id)
    if name == "rsa2048":
        home, vm = (keys.private_key_pem(rsa.generate_private_key(65537, 2048)) for _ in "hv")
        return _raw(name, workdir, home, vm, "rsa", home_id, vm_id)
    if name != "ikectl-ca":
        raise ValueError(f"unknown auth set-up {name!r}; one of {', '.join(AUTHS)}")
    ca = ikectl_ca(workdir, (home_id, vm_id))

    def files(host: str) -> dict[str, bytes]:
        return {
            "ca/ca.crt": (ca / "ca.crt").read_bytes(),
            "crls/ca.crl": (ca / "ca.crl").read_bytes(),
            f"certs/{host}.crt": (ca / f"{host}.crt").read_bytes(),
        }

    vm_files = {f"etc/iked/{rel}": data for rel, data in files(vm_id).items()}
    vm_files["etc/iked/private/local.key"] = (ca / "private" / f"{vm_id}.key").read_bytes()
    home_pem = (ca / "private" / f"{home_id}.key").read_bytes()
    return AuthSetup(
        name,
        vm_files,
        _keydir(workdir / "home-keys", home_pem, files(home_id), {}),
        "",
        rf"authenticated: .*with the certificate '/CN={vm_id}/O=pyike tests'",
        # iked checked pyike's certificate against its ca/: it has no pubkeys/.
        rf"ca_validate_cert: /CN={home_id}/O=pyike tests ok",
        "set fragmentation\n",
    )
