"""pyike (home) <-> real OpenIKED 7.2 in a qemu VM whose kernel does the ESP.

The host kernel has no PF_KEY and no ESP, so the VM (Debian's 6.1 kernel under
TCG, a small initramfs with busybox and iked; see docs/iked-vm.md) is the only way
to see iked's real data plane here. The slow test runs the whole case of
``python -m interop.vm`` and requires every check of its table to pass: IKE SA and
an AES-CBC + HMAC-SHA2 Child SA (iked's only child transforms on Linux), kernel ESP
SAs in tunnel mode with UDP encapsulation, ping6 both ways and a TCP port 25
exchange through them, the guest kernel's ESP counters, and a capture of the link
with only IKE and ESP-in-UDP on it.

The fast tests check the pieces a pass depends on and that could hide a failure:
the capture classifier (it must flag cleartext inner packets) and the cpio writer
(the kernel must be able to unpack what it writes).
"""

from __future__ import annotations

import gzip
import struct
import subprocess
from ipaddress import IPv6Address
from pathlib import Path

import pytest

from interop.vm import image
from interop.vm.case import CONF, OUTER6, classify_frames, run_case, with_auth_keyword
from interop.vm.runner import IkedVM, VMError
from tests.netns import Netns, require_binary, require_root

HOME, VM, _ = OUTER6
INNER_HOME, INNER_VM = "2001:db8:c1da::1", "2001:db8:c1da::2"
MAC = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02"


def _ipv6(src: str, dst: str, nh: int, payload: bytes) -> bytes:
    hdr = struct.pack("!IHBB", 0x60000000, len(payload), nh, 64)
    return MAC + b"\x86\xdd" + hdr + IPv6Address(src).packed + IPv6Address(dst).packed + payload


def _udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def _pcap(path: Path, frames: list[bytes]) -> Path:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i, f in enumerate(frames):
        out.append(struct.pack("<IIII", i, 0, len(f), len(f)) + f)
    path.write_bytes(b"".join(out))
    return path


def test_classify_frames_flags_cleartext(tmp_path: Path) -> None:
    frames = [
        _ipv6(HOME, VM, 17, _udp(500, 500, b"\x11" * 40)),  # IKE_SA_INIT
        _ipv6(HOME, VM, 17, _udp(4500, 4500, b"\0\0\0\0" + b"\x11" * 40)),  # IKE on 4500
        _ipv6(HOME, VM, 17, _udp(4500, 4500, b"\x0e\x97\x52\x06" + b"\x22" * 60)),  # ESP
        _ipv6(HOME, VM, 17, _udp(4500, 4500, b"\xff")),  # NAT-T keepalive
        _ipv6(HOME, "ff02::1:ff00:2", 58, b"\x87\0\0\0" + b"\0" * 20),  # neighbour sol.
        _ipv6(INNER_HOME, INNER_VM, 58, b"\x80\0\0\0"),  # an echo request in the clear
        _ipv6(HOME, VM, 41, _ipv6(INNER_HOME, INNER_VM, 58, b"\x80\0\0\0")[14:]),  # 6in6
        _ipv6(HOME, VM, 6, b"\0" * 20),  # TCP between the outer addresses
    ]
    counts = classify_frames(_pcap(tmp_path / "x.pcap", frames), HOME, VM)
    assert counts == {
        "ike": 2,
        "esp-in-udp": 1,
        "keepalive": 1,
        "nd": 1,
        "cleartext-inner": 2,
        "other": 1,
    }


def test_cpio_unpacks(tmp_path: Path) -> None:
    busybox = require_binary("busybox", "busybox-static")
    data = image.overlay(
        {
            "etc/iked.conf": (b"ikev2 x\n", 0o600),
            "etc/iked/private/local.key": (b"KEY", 0o600),
            "etc/pyike-vm.env": (b"A=1\n", 0o644),
        }
    )
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(
        [busybox, "cpio", "-id"],
        input=gzip.decompress(data),
        cwd=root,
        check=True,
        capture_output=True,
        timeout=30,
    )
    assert (root / "etc/iked.conf").read_bytes() == b"ikev2 x\n"
    assert (root / "etc/iked/private/local.key").stat().st_mode & 0o777 == 0o600
    assert (root / "etc/pyike-vm.env").read_text() == "A=1\n"


def test_with_auth_keyword() -> None:
    """The guide's files with another auth keyword: every ecdsa384 line replaced, the
    policy lines still joined (a dangling backslash would swallow the next policy)."""
    home = (CONF / "home-iked.conf").read_text()
    vm = (CONF / "vm-iked.conf").read_text()
    rsa = with_auth_keyword(home, "rsa")
    assert "ecdsa384" not in rsa and rsa.count("\\\n\trsa\n") == home.count("ecdsa384") == 3
    none = with_auth_keyword(vm, "")
    assert "ecdsa384" not in none
    assert none.endswith("srcid namorar.example.com dstid carinho.lan\n"), none[-80:]
    with pytest.raises(ValueError):
        with_auth_keyword(none, "rsa")


@pytest.mark.netns
@pytest.mark.interop
@pytest.mark.slow
@pytest.mark.parametrize(
    "guide_home,auth",
    [(True, "p384"), (False, "p384"), (False, "ikectl-ca"), (False, "rsa2048")],
    ids=["guide-home", "one-policy", "ikectl-ca", "rsa2048"],
)
def test_pyike_iked_vm_kernel_esp(tmp_path: Path, guide_home: bool, auth: str) -> None:
    """The guide's files at both ends (three home policies against iked's one, which
    sends everything on one Child SA: esp.PeerFlows), and a one-policy home with the
    guide's P-384 raw keys, with certificates from ``ikectl ca`` on both sides (iked
    validates pyike's against its ca/), and with RSA-2048 raw keys (interop/vm/auth.py)."""
    require_root()
    for binary in ("qemu-system-x86_64", "busybox", "/usr/sbin/iked", "tcpdump"):
        require_binary(binary, image.DEBIAN_PACKAGES + " tcpdump")
    if auth == "ikectl-ca":
        require_binary("ikectl", "openiked")
        require_binary("unshare", "util-linux")
    result = run_case(tmp_path, guide_home=guide_home, auth=auth)
    table = result.table()
    print(table)
    names = [c.name for c in result.checks]
    assert result.passed, f"{table}\n{result.error}"
    ike_sa = result.checks[names.index("ike sa")].detail
    how = {"ikectl-ca": "with the certificate '/CN=namorar.example.com"}.get(auth, "raw public key")
    assert how in ike_sa, table
    bulk = "tcp bulk to 25" if guide_home else "tcp bulk"
    assert names == [
        "boot",
        "kernel esp",
        "ike sa",
        "child sas",
        "xfrm state",
        "ping6",
        "ping6 from vm",
        "tcp 25",
        bulk,
        "esp counters",
        "capture",
    ], table


@pytest.mark.netns
@pytest.mark.interop
@pytest.mark.slow
def test_vm_failure_cleans_up(tmp_path: Path) -> None:
    """iked refusing its configuration is reported as such, fast, and qemu, the tap
    device and the namespace are all gone afterwards."""
    require_root()
    require_binary("qemu-system-x86_64", image.DEBIAN_PACKAGES)
    with Netns("ikedvm-fail") as ns:
        vm = IkedVM(ns, tmp_path / "vm", "this is not an iked.conf\n", {})
        with pytest.raises(VMError, match="iked exited"):
            vm.__enter__()
        assert vm.proc is not None and vm.proc.poll() is not None
        links = ns.run(["ip", "-o", "link", "show"]).stdout
        assert vm.tap not in links, links
        name = ns.name
    assert (
        name
        not in subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, timeout=10
        ).stdout
    )
    assert "PYIKE-VM: modules" in vm.console()
