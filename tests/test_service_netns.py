"""pyike as a systemd service, with real daemons in namespaces.

One test, two things at once (the quiet-log claim needs a minute of idle time, so
the sd_notify checks run on a third daemon during that minute):

- a pyike pair (the guide's files) at the default log level, established and then
  left idle for 60 s with 5 s liveness probes going on: neither daemon logs a line;
- a lone pyike started with ``NOTIFY_SOCKET`` (a datagram socket the test binds) and
  ``WATCHDOG_USEC``: READY=1 with STATUS=, WATCHDOG=1 every half interval, none
  while the process is stopped (SIGSTOP: its event loop cannot run), again after
  SIGCONT; RELOADING=1 then READY=1 around ``pyikectl reload``; STOPPING=1 on SIGTERM.

Then ``pyikectl log verbose`` makes the pair's probes visible, ``log brief`` quiet again.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.netns import Netns, TwoHosts, wait_until
from tests.pyike_proc import CONF, PyikeProc
from tests.test_control_netns import _established, _keys, _spi_pairs

pytestmark = [pytest.mark.netns, pytest.mark.slow]

IDLE_SECONDS = 60.0
WATCHDOG_USEC = 400_000  # pings every 0.2 s


class NotifySocket:
    """The service manager's end of sd_notify: a bound AF_UNIX datagram socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        # As systemd's /run/systemd/notify: anyone may send (the daemon's network
        # process runs unprivileged under privilege separation).
        path.chmod(0o777)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, dict[str, str]]] = []

    def collect(self, seconds: float) -> list[tuple[float, dict[str, str]]]:
        """Receive for ``seconds``; return what arrived in that time."""
        got = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.partition("=")[::2] for line in data.decode().split("\n"))
            got.append((time.monotonic(), fields))
        self.messages += got
        return got

    def wait_for(self, key: str, value: str | None = None, timeout: float = 20.0) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for _t, m in self.collect(0.1):
                if key in m and (value is None or m[key] == value):
                    return m
        raise AssertionError(f"no {key}={value} in {timeout} s; got {self.messages[-10:]}")

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


def _watchdogs(msgs: list[tuple[float, dict[str, str]]]) -> int:
    return sum(1 for _t, m in msgs if m.get("WATCHDOG") == "1")


def test_sd_notify_and_quiet_idle_tunnel(two_hosts: TwoHosts, tmp_path: Path) -> None:
    home_keys, vm_keys = _keys(tmp_path)
    quiet: list[str] = []  # the default level: no -v
    vm = PyikeProc(
        two_hosts.vm,
        tmp_path,
        CONF / "vm-iked.conf",
        vm_keys,
        ["-D", "ext=192.0.2.2"],
        verbosity=quiet,
    ).start()
    wait_until(lambda: vm.socket_path and vm.socket_path.exists(), timeout=15, what="vm socket")
    home = PyikeProc(
        two_hosts.home,
        tmp_path,
        CONF / "home-iked.conf",
        home_keys,
        ["-D", "vm_host=192.0.2.2"],
        verbosity=quiet,
    ).start()
    notify = NotifySocket(Path(f"/tmp/pyike-notify-{os.getpid()}.sock"))
    with Netns("notify") as lone_ns:
        lone = PyikeProc(
            lone_ns,
            tmp_path,
            CONF / "vm-iked.conf",
            vm_keys,
            ["-D", "ext=192.0.2.2"],
            env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)},
        )
        try:
            rows = _established(home, 3)
            spis = _spi_pairs(rows)
            _established(vm, 3)
            time.sleep(1.0)  # the last Child SA's lines are written
            marks = (len(home.log()), len(vm.log()))
            idle_start = time.monotonic()

            # --- sd_notify, while the pair idles --------------------------------------
            lone.start()
            ready = notify.wait_for("READY", "1")
            assert ready.get("STATUS") == "0 IKE SAs, 0 Child SAs", ready
            assert _watchdogs(notify.collect(2.0)) >= 6  # ~10 expected at 0.2 s
            assert lone.proc is not None
            # Stop the daemon's whole process group: with privilege separation the
            # event loop runs in a child of the process we started.
            group = os.getpgid(lone.proc.pid)
            os.killpg(group, signal.SIGSTOP)
            try:
                notify.collect(0.3)  # anything sent just before the stop
                assert _watchdogs(notify.collect(1.5)) == 0
            finally:
                os.killpg(group, signal.SIGCONT)
            assert _watchdogs(notify.collect(1.5)) >= 4
            assert "reloaded" in lone.ctl("reload")
            seen = [m for _t, m in notify.messages[-50:]] + [m for _t, m in notify.collect(1.0)]
            keys = [k for m in seen for k in m if k in ("RELOADING", "READY")]
            assert "RELOADING" in keys and "READY" in keys[keys.index("RELOADING") :], seen
            assert lone.stop() == 0
            assert any(m.get("STOPPING") == "1" for _t, m in notify.messages + notify.collect(0.5))

            # --- the rest of the idle minute --------------------------------------------
            time.sleep(max(0.0, IDLE_SECONDS - (time.monotonic() - idle_start)))
            new_home, new_vm = home.log()[marks[0] :], vm.log()[marks[1] :]
            assert new_home == "", new_home[:3000]
            assert new_vm == "", new_vm[:3000]
            # Still the same SAs, and liveness probes did go on meanwhile.
            assert _spi_pairs(_established(home, 3)) == spis
            stats = home.ctl_json("show", "stats")
            msgs = stats["ike_messages"]
            probes = msgs.get("INFORMATIONAL request out", 0) + msgs.get(
                "INFORMATIONAL request in", 0
            )
            assert probes >= 3 * IDLE_SECONDS / 5 / 2, msgs  # 5 s probes on 3 SAs

            # pyikectl log verbose shows the probes (iked's -v), brief hides them again.
            assert "verbosity 1" in home.ctl("log", "verbose")
            home.wait_log(r"send INFORMATIONAL req", timeout=12)
            assert "verbosity 0" in home.ctl("log", "brief")
            time.sleep(0.5)
            mark = len(home.log())
            time.sleep(6.0)  # more than one probe interval
            assert home.log()[mark:] == "", home.log()[mark:][:2000]
        finally:
            lone.stop()
            notify.close()
            home.stop()
            vm.stop()
