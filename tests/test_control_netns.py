"""The control socket and pyikectl against running daemons (pyike <-> pyike, the
guide's files): ``show sa`` agrees with the peer's, ``reload`` of a changed file
takes effect, ``monitor`` streams establishes and rekeys, ``reset all`` makes the
peer see DELETEs and new SAs come up, and a non-root user cannot use the socket.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import stat
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.netns import TwoHosts, ping, wait_until
from tests.pyike_proc import CONF, PYIKECTL, REPO, PyikeProc, write_keydir

pytestmark = [pytest.mark.netns]

HOME_ID, VM_ID = "carinho.lan", "namorar.example.com"
VPN1 = "2001:db8:c1da::2"  # the VM's inner address (conf/vm-iked.conf)


def _keys(tmp: Path) -> tuple[Path, Path]:
    hk, vk = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    return (
        write_keydir(tmp / "home-keys", hk, {VM_ID: vk.public_key()}),
        write_keydir(tmp / "vm-keys", vk, {HOME_ID: hk.public_key()}),
    )


def _home_conf(path: Path, policies: list[str], child_lifetime: int | None = None) -> Path:
    """The guide's home file restricted to ``policies`` (a reload adds the others)."""
    text = (CONF / "home-iked.conf").read_text()
    blocks = text.split("\n\n")
    kept = [b for b in blocks if "ikev2" not in b or any(f'"{p}"' in b for p in policies)]
    out = "\n\n".join(kept)
    if child_lifetime is not None:
        out = out.replace("\tecdsa384", f"\tlifetime {child_lifetime} ecdsa384")
    path.write_text(out)
    return path


def _spi_pairs(rows: list[dict]) -> set[tuple[str, str]]:
    return {(c["spi_in"], c["spi_out"]) for r in rows for c in r["children"]}


def _established(p: PyikeProc, n: int) -> list[dict]:
    rows: list[dict] = []

    def ok() -> bool:
        nonlocal rows
        if p.socket_path is None or not p.socket_path.exists():
            return False  # not serving yet
        rows = p.ctl_json("show", "sa")
        return sum(r["state"] == "established" and bool(r["children"]) for r in rows) >= n

    wait_until(ok, timeout=25, interval=0.2, what=f"{n} established IKE SAs with children")
    return [r for r in rows if r["state"] == "established"]


class Monitor:
    """``pyikectl monitor --json`` in the background, its lines in a file."""

    def __init__(self, p: PyikeProc, out: Path, flag: str = "--json") -> None:
        self.out = out
        self.f = out.open("wb")
        assert p.socket_path is not None
        self.proc = subprocess.Popen(
            [*PYIKECTL, "-s", str(p.socket_path), flag, "monitor"],
            stdout=self.f, stderr=subprocess.STDOUT, cwd=str(REPO),
        )  # fmt: skip

    def events(self) -> list[dict]:
        out = []
        for line in self.out.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                out.append({"event": "garbage", "line": line})
        return out

    def wait(self, kind: str, count: int = 1, timeout: float = 30.0) -> list[dict]:
        found: list[dict] = []

        def ok() -> bool:
            nonlocal found
            found = [e for e in self.events() if e.get("event") == kind]
            return len(found) >= count

        wait_until(ok, timeout=timeout, interval=0.2, what=f"{count} monitor {kind} events")
        return found

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        self.f.close()


def test_pyikectl_pyike_pair(two_hosts: TwoHosts, tmp_path: Path) -> None:
    home_keys, vm_keys = _keys(tmp_path)
    home_conf = _home_conf(tmp_path / "home.conf", ["icmp6"], child_lifetime=12)
    vm = PyikeProc(
        two_hosts.vm, tmp_path, CONF / "vm-iked.conf", vm_keys, ["-D", "ext=192.0.2.2"]
    ).start()
    vm.wait_log(r"listening on IPv4 UDP port 4500", timeout=15)
    home = PyikeProc(
        two_hosts.home, tmp_path, home_conf, home_keys, ["-D", "vm_host=192.0.2.2"]
    ).start()
    mon = None
    try:
        assert home.socket_path is not None
        wait_until(home.socket_path.exists, timeout=10, what="home's control socket")
        # Root's, 0600: created before anything else could connect.
        st = os.lstat(home.socket_path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == 0
        mon = Monitor(home, tmp_path / "monitor.jsonl")
        ladder = Monitor(home, tmp_path / "ladder.txt", "--ladder")

        # show sa: both daemons list the same Child SA, SPIs mirrored.
        rows = _established(home, 1)
        vm_rows = _established(vm, 1)
        assert len(rows) == 1 and rows[0]["policy"] == "icmp6"
        assert rows[0]["peer_id"] == f"fqdn/{VM_ID}" and rows[0]["local_id"] == f"fqdn/{HOME_ID}"
        ours = _spi_pairs(rows)
        theirs = {(o, i) for i, o in _spi_pairs(vm_rows)}
        assert ours == theirs and len(ours) == 1
        assert {rows[0]["spi_i"], rows[0]["spi_r"]} == {vm_rows[0]["spi_i"], vm_rows[0]["spi_r"]}
        text = home.ctl("show", "sa")
        for spi_in, spi_out in ours:
            assert f"Child SA in {spi_in} out {spi_out}" in text
        assert "enc aes-256-gcm" in text or "enc " in text

        # monitor: the Child SA rekey (lifetime 12 s: at 10-11 s); establishes below.
        rekeyed = mon.wait("child-rekeyed", timeout=25)
        new_in = rekeyed[0]["spi_in"]
        # monitor --ladder drew that rekey as RFC 7296 1.3.3 does, decrypted in the daemon.
        wait_until(
            lambda: "<--  HDR, SK {SA, Nr, TSi, TSr}" in ladder.out.read_text(),
            timeout=10,
            what="the rekey's response in monitor --ladder",
        )
        drawn = ladder.out.read_text()
        assert "HDR, SK {N(REKEY_SA), SA, Ni, TSi, TSr}  -->" in drawn, drawn
        assert "CREATE_CHILD_SA request" in drawn and "{encrypted}" not in drawn, drawn
        ladder.close()
        wait_until(
            lambda: new_in in {spi for spi, _ in _spi_pairs(home.ctl_json("show", "sa"))},
            timeout=10,
            what="the rekeyed Child SA in show sa",
        )

        # reload with a changed file: the other two policies come up.
        _home_conf(home_conf, ["smtp-in", "smtp-out", "icmp6"])
        assert "reloaded: 3 policies" in home.ctl("reload")
        rows = _established(home, 3)
        assert {r["policy"] for r in rows} == {"smtp-in", "smtp-out", "icmp6"}
        flows = home.ctl_json("show", "flows")
        assert {f["policy"] for f in flows} == {"smtp-in", "smtp-out", "icmp6"}
        assert mon.wait("reload")[0]["error"] is None
        established = mon.wait("ike-established", count=2)
        assert {e["policy"] for e in established} >= {"smtp-in", "smtp-out"}
        assert {e["sa"] for e in established} <= {r["our_spi"] for r in rows}
        # A broken file is refused with a clear error; the old configuration stays.
        home_conf.write_text(home_conf.read_text() + "\nikev2 broken nonsense here\n")
        bad = subprocess.run(
            [*PYIKECTL, "-s", str(home.socket_path), "reload"],
            capture_output=True, text=True, timeout=20, cwd=str(REPO),
        )  # fmt: skip
        assert bad.returncode == 1 and "reload failed" in bad.stderr, bad.stderr
        assert len(_established(home, 3)) >= 3

        # Traffic shows in the Child SA's counters, and stays counted in show stats
        # after the SA is gone (reset below).
        assert ping(two_hosts.home, VPN1, count=3) >= 2
        icmp = next(c for r in home.ctl_json("show", "sa") for c in r["children"]
                    if any("icmp" in t for t in c["local_ts"]))  # fmt: skip
        assert icmp["packets_out"] >= 2 and icmp["packets_in"] >= 2, icmp
        assert icmp["bytes_out"] >= 2 * 48, icmp

        # reset all: the VM sees a DELETE for each IKE SA, new ones come up.
        before = {r["our_spi"] for r in home.ctl_json("show", "sa")}
        deletes_before = vm.log().count("peer deleted the IKE SA")
        assert "deleting 3 IKE SA(s)" in home.ctl("reset", "all")
        vm.wait_log(r"peer deleted the IKE SA", count=deletes_before + 3, timeout=15)

        def renewed() -> bool:
            rows = [r for r in home.ctl_json("show", "sa") if r["state"] == "established"]
            return len(rows) == 3 and not ({r["our_spi"] for r in rows} & before)

        wait_until(renewed, timeout=30, interval=0.3, what="three new IKE SAs after reset all")
        assert len(mon.wait("ike-closed", count=3)) >= 3

        # passive: reset policy icmp6 deletes its SA and nothing comes back; active
        # brings it back.
        assert "passive" in home.ctl("passive")
        assert "deleting 1 IKE SA(s)" in home.ctl("reset", "policy", "icmp6")
        time.sleep(3.0)  # well past the first retry (1 s)
        rows = home.ctl_json("show", "sa")
        assert {r["policy"] for r in rows} == {"smtp-in", "smtp-out"}, rows
        assert "active" in home.ctl("active")
        rows = _established(home, 3)
        assert {r["policy"] for r in rows} == {"smtp-in", "smtp-out", "icmp6"}
        bad = subprocess.run(
            [*PYIKECTL, "-s", str(home.socket_path), "reset", "policy", "nonesuch"],
            capture_output=True, text=True, timeout=20, cwd=str(REPO),
        )  # fmt: skip
        assert bad.returncode == 1 and "no policy 'nonesuch'" in bad.stderr, bad.stderr

        # show stats counts what happened, the deleted SAs' traffic included.
        stats = home.ctl_json("show", "stats")
        assert stats["esp"]["packets_out"] >= icmp["packets_out"], stats["esp"]
        assert stats["esp"]["packets_in"] >= icmp["packets_in"], stats["esp"]
        assert stats["ike_sas"] == 3
        assert stats["ike_messages"].get("IKE_AUTH request out", 0) >= 4
        assert (
            stats["ike_messages"].get("CREATE_CHILD_SA request out", 0)
            + stats["ike_messages"].get("CREATE_CHILD_SA request in", 0)
            >= 1
        )
        assert "IKE messages:" in home.ctl("show", "stats")
        # A garbage datagram on UDP 500 is counted as a drop, with its reason.
        two_hosts.vm.run(
            ["python3", "-c", "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
             "s.sendto(b'not an IKE message at all, no', ('192.0.2.1', 500))"]
        )  # fmt: skip
        wait_until(
            lambda: home.ctl_json("show", "stats")["ike_dropped_total"] >= 1, timeout=10,
            what="the drop counted",
        )  # fmt: skip
        drops = home.ctl_json("show", "stats")["ike_drops"]
        assert drops.get("ike_malformed", 0) >= 1, drops

        # A non-root user cannot use the socket (its mode, not the directory, refuses).
        nobody = pwd.getpwnam("nobody")
        probe = subprocess.run(
            ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
             *PYIKECTL, "-s", str(home.socket_path), "show", "sa"],
            capture_output=True, text=True, timeout=20, cwd=str(REPO),
        )  # fmt: skip
        assert probe.returncode == 1, probe
        assert "permission denied" in probe.stderr, probe.stderr

        # Malformed requests get clear errors; the daemon keeps serving.
        for raw, expect in (
            (b"not json\n", b"not JSON"),
            (b'{"verb": "rm -rf"}\n', b"unknown verb"),
            (b'{"verb": "show sa", "arg": "x"}\n', b"takes no argument"),
            (b'{"verb": "reset policy"}\n', b"needs one printable argument"),
            (b'{"verb": "show sa", "sudo": 1}\n', b"unknown request field"),
            (b"x" * 5000 + b"\n", b"longer than"),
        ):
            assert _raw_request(home.socket_path, raw).find(expect) >= 0, raw[:40]
        assert len(home.ctl_json("show", "sa")) >= 3
    finally:
        if mon is not None:
            mon.close()
        home.stop()
        vm.stop()
    assert "Traceback" not in home.log() + vm.log()


def _raw_request(path: Path, raw: bytes) -> bytes:
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        with contextlib.suppress(BrokenPipeError):
            s.sendall(raw)
        data = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                b = s.recv(65536)
            except ConnectionResetError:
                break
            if not b:
                break
            data += b
        return data


@pytest.mark.interop
def test_pyikectl_against_charon(two_hosts: TwoHosts, tmp_path: Path) -> None:
    """``show sa`` lists exactly the SPIs ``swanctl --list-sas`` reports; ``reset all``
    makes charon see a DELETE and a new IKE SA comes up, again listed alike."""
    from tests import test_interop_strongswan as ss

    ss._need_tools()
    home, vm = two_hosts
    k = ss._keys()
    ss._add_inner(vm, ss.VM_INNER)
    home_keys = write_keydir(tmp_path / "home-keys", k.home, {VM_ID: k.vm.public_key()})
    conf = ss._home_conf(tmp_path / "home-iked.conf", ss.GCM.pyike)
    charon = ss._charon(
        vm,
        tmp_path / "charon",
        home=False,
        own=k.vm,
        peer_public=k.home.public_key(),
        suite=ss.GCM,
        rfc7427=True,
    )

    def agree() -> tuple[str, str]:
        """Both sides list one IKE SA with one Child SA, the same SPIs."""
        sa = charon.wait_established(timeout=20)
        rows = _established(pyike, 1)
        assert len(rows) == 1, rows
        (listed,) = charon.list_sas()
        children = list(listed["child-sas"].values())
        assert {listed["initiator-spi"], listed["responder-spi"]} == {
            rows[0]["spi_i"],
            rows[0]["spi_r"],
        }, (listed, rows)
        theirs = {(f"0x{c['spi-out']}", f"0x{c['spi-in']}") for c in children}
        assert _spi_pairs(rows) == theirs, (rows, children)
        text = pyike.ctl("show", "sa")
        for spi_in, spi_out in theirs:
            assert f"Child SA in {spi_in} out {spi_out}" in text
        return sa["initiator-spi"], rows[0]["our_spi"]

    with charon:
        charon.load()
        pyike = PyikeProc(home, tmp_path, conf, home_keys).start()
        try:
            first, _ours = agree()
            assert "deleting 1 IKE SA(s)" in pyike.ctl("reset", "all")
            wait_until(
                lambda: "received DELETE for IKE_SA" in charon.log_text(),
                timeout=15,
                what="charon receiving the DELETE",
            )

            def renewed() -> bool:
                sas = charon.list_sas()
                return bool(sas) and all(s.get("initiator-spi") != first for s in sas)

            wait_until(renewed, timeout=30, interval=0.3, what="a new IKE SA at charon")
            second, _ = agree()
            assert second != first
        finally:
            pyike.stop()
    assert "Traceback" not in pyike.log()
