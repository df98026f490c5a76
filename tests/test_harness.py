"""Tests of the namespace harness itself (tests/netns.py, tests/conftest.py).

If these fail, every interop test's result is suspect: namespaces must appear and
disappear, processes must be reaped, the veth link must carry traffic, captures
must record it, and a crashed run must leave nothing that a sweep cannot remove.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.netns import (
    ROOT_SKIP_REASON,
    STATE_DIR,
    HarnessError,
    Netns,
    TwoHosts,
    capture,
    ping,
    requires_root,
    sweep_stale,
    wait_until,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


def namespaces() -> set[str]:
    out = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def alive(pid: int) -> bool:
    """True if the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


# --- no root needed -----------------------------------------------------------------


def test_wait_until_returns_value_and_times_out() -> None:
    calls = iter(range(100))
    assert wait_until(lambda: next(calls) >= 3 and "done", timeout=5, interval=0.001) == "done"
    start = time.monotonic()
    with pytest.raises(HarnessError, match=r"timed out after 0\.2s waiting for never"):
        wait_until(lambda: False, timeout=0.2, interval=0.01, what="never")
    assert time.monotonic() - start < 2


def test_purpose_must_be_a_short_tag() -> None:
    with pytest.raises(ValueError, match="purpose"):
        Netns("Has Spaces")


def _run_pytest(tmp_path: Path, body: str, ci: bool) -> subprocess.CompletedProcess[str]:
    """Run pytest on a one-file suite with our conftest loaded as a plugin."""
    test_file = tmp_path / "test_guarded.py"
    test_file.write_text(textwrap.dedent(body))
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    if ci:
        env["CI"] = "1"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "tests.conftest",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            "-c",
            os.devnull,
            str(test_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env=env,
    )


def test_ci_fails_when_a_root_test_is_skipped(tmp_path: Path) -> None:
    body = f"""
        import pytest

        @pytest.mark.netns
        def test_needs_root():
            pytest.skip({ROOT_SKIP_REASON!r})

        def test_plain_skip():
            pytest.skip("not applicable here")
        """
    outside_ci = _run_pytest(tmp_path, body, ci=False)
    assert outside_ci.returncode == 0, outside_ci.stdout + outside_ci.stderr
    in_ci = _run_pytest(tmp_path, body, ci=True)
    assert in_ci.returncode == pytest.ExitCode.TESTS_FAILED, in_ci.stdout + in_ci.stderr
    assert "tests needing root or a peer were skipped" in in_ci.stdout
    assert "test_needs_root" in in_ci.stdout
    assert "test_plain_skip" not in in_ci.stdout.split("CI:")[-1]


def test_ci_passes_when_only_ordinary_tests_skip(tmp_path: Path) -> None:
    body = """
        import pytest

        def test_ok():
            pass

        def test_plain_skip():
            pytest.skip("not applicable here")
        """
    result = _run_pytest(tmp_path, body, ci=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- root: namespaces ---------------------------------------------------------------


@pytest.mark.usefixtures("stale_netns_swept")
class TestNetns:
    pytestmark = [pytest.mark.netns, requires_root]

    def test_created_then_deleted(self) -> None:
        with Netns("lifecycle") as ns:
            assert ns.name.startswith(f"pyike-lifecycle-{os.getpid()}-")
            assert ns.name in namespaces()
            assert (STATE_DIR / ns.name).exists()
            # lo is up, so loopback works inside.
            assert ping(ns, "127.0.0.1") == 1
        assert ns.name not in namespaces()
        assert not (STATE_DIR / ns.name).exists()

    def test_deleted_when_body_raises(self) -> None:
        name = ""
        with pytest.raises(RuntimeError, match="boom"), Netns("raises") as ns:
            name = ns.name
            proc = ns.popen(["sleep", "600"])
            raise RuntimeError("boom")
        assert name and name not in namespaces()
        assert not alive(proc.pid)

    def test_processes_reaped_with_their_children(self) -> None:
        with Netns("reap", stop_grace=0.5) as ns:
            # A shell that ignores SIGTERM and has a background child: both must go.
            proc = ns.popen(
                ["sh", "-c", "trap '' TERM; sleep 600 & echo $!; wait"], stdout=subprocess.PIPE
            )
            assert proc.stdout is not None
            child = int(proc.stdout.readline())
            assert alive(proc.pid) and alive(child)
            start = time.monotonic()
        assert time.monotonic() - start < 5
        assert not alive(proc.pid)
        wait_until(lambda: not alive(child), 5, what="background child to die")

    def test_stop_one_process_returns_status(self) -> None:
        with Netns("stop") as ns:
            proc = ns.popen(["sleep", "600"])
            assert ns.stop(proc, grace=2) == -signal.SIGTERM
            other = ns.popen(["sleep", "600"])
            assert alive(other.pid)  # stopping one leaves the others alone
        assert not alive(other.pid)

    def test_sweep_removes_namespace_of_killed_run(self) -> None:
        # A child run creates a namespace with a process inside, then dies by SIGKILL
        # (no cleanup possible). Our own live namespace must survive the sweep.
        script = textwrap.dedent("""
            import os, signal, sys
            sys.path.insert(0, sys.argv[1])
            from tests.netns import Netns
            ns = Netns("orphan").create()
            p = ns.popen(["sleep", "600"])
            print(ns.name, p.pid, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
            """)
        with Netns("survivor") as mine:
            result = subprocess.run(
                [sys.executable, "-c", script, str(REPO_ROOT)],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert result.returncode == -signal.SIGKILL, result.stderr
            name, pid = result.stdout.split()
            assert name in namespaces() and alive(int(pid))
            swept = sweep_stale()
            assert name in swept and mine.name not in swept
            assert name not in namespaces() and mine.name in namespaces()
            assert not alive(int(pid))
            assert not (STATE_DIR / name).exists()

    def test_sigterm_to_the_run_cleans_up(self) -> None:
        script = textwrap.dedent("""
            import sys, time
            sys.path.insert(0, sys.argv[1])
            from tests.netns import Netns
            ns = Netns("sigterm").create()
            p = ns.popen(["sleep", "600"])
            print(ns.name, p.pid, flush=True)
            time.sleep(60)
            """)
        proc = subprocess.Popen(
            [sys.executable, "-c", script, str(REPO_ROOT)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None
            name, pid = proc.stdout.readline().split()
            assert name in namespaces()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == -signal.SIGTERM  # still dies of the signal
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        assert name not in namespaces()
        assert not alive(int(pid))


# --- root: link and capture ---------------------------------------------------------


@pytest.mark.netns
@requires_root
def test_veth_carries_ipv4_and_ipv6(two_hosts: TwoHosts) -> None:
    home, vm = two_hosts
    assert ping(home, "192.0.2.2", count=2) == 2
    assert ping(vm, "192.0.2.1", count=2) == 2
    assert ping(home, "2001:db8:1::2", count=2) == 2
    assert ping(vm, "2001:db8:1::1", count=2) == 2
    # Nobody has 192.0.2.3: no reply, so ping() can report failure.
    assert ping(home, "192.0.2.3", count=1, timeout=0.5) == 0


def _pcap_records(path: Path) -> list[bytes]:
    """Packets of a classic pcap file (enough to check the harness, no more)."""
    data = path.read_bytes()
    magic = data[:4]
    assert magic in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4"), magic
    endian = "<" if magic == b"\xd4\xc3\xb2\xa1" else ">"
    records, off = [], 24
    while off + 16 <= len(data):
        incl = struct.unpack_from(endian + "I", data, off + 8)[0]
        records.append(data[off + 16 : off + 16 + incl])
        off += 16 + incl
    return records


@pytest.mark.netns
@requires_root
def test_capture_records_packets(two_hosts: TwoHosts, tmp_path: Path) -> None:
    home, vm = two_hosts
    marker = b"pyike-capture-%d" % os.getpid()
    send = (
        "import socket,sys; s=socket.socket(socket.AF_INET6, socket.SOCK_DGRAM);"
        "[s.sendto(sys.argv[1].encode(), ('2001:db8:1::2', 9)) for _ in range(3)]"
    )
    with capture(vm, "eth0", tmp_path / "cap.pcap", "udp port 9") as pcap:
        home.run([sys.executable, "-c", send, marker.decode()])
        # Captured packets are written as they arrive (-U): wait for all three.
        wait_until(lambda: pcap.read_bytes().count(marker) == 3, 5, what="3 packets on disk")
    records = _pcap_records(pcap)
    assert len(records) == 3
    assert all(marker in r for r in records)
    assert "listening on eth0" in (tmp_path / "cap.pcap.stderr").read_text()
