"""The service pieces without a network: the control request parser, the control
socket's creation (mode, stale and live sockets), sd_notify to an abstract socket,
the quiet log filter and journald's format, pyikectl's errors and command parsing."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pyike import control, logs
from pyike.ctl import parse_command
from pyike.sdnotify import Notifier
from tests.pyike_proc import PYIKECTL, REPO

# --- the request parser ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"", "not JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[1, 2]", "JSON object"),
        (b'{"verb": "show sa", "arg": null, "x": 1}', "unknown request field"),
        (b'{"verb": "shutdown"}', "unknown verb"),
        (b'{"verb": 7}', "unknown verb"),
        (b'{"verb": "show sa", "arg": "all"}', "takes no argument"),
        (b'{"verb": "reset policy"}', "needs one printable argument"),
        (b'{"verb": "reset policy", "arg": ""}', "needs one printable argument"),
        (b'{"verb": "reset id", "arg": "a\\nb"}', "needs one printable argument"),
        (b'{"verb": "reset id", "arg": "' + b"x" * 300 + b'"}', "needs one printable argument"),
        (b'{"verb": "show sa", "pad": "' + b"x" * 2000 + b'"}', "longer than"),
    ],
)
def test_parse_request_refuses(line: bytes, error: str) -> None:
    with pytest.raises(control.ControlError, match=error):
        control.parse_request(line)


def test_parse_request_accepts_every_verb() -> None:
    for verb, takes_arg in control.VERBS.items():
        arg = "icmp6" if takes_arg else None
        req = control.parse_request(json.dumps({"verb": verb, "arg": arg}).encode())
        assert (req.verb, req.arg) == (verb, arg)


def test_pyikectl_command_words() -> None:
    assert parse_command(["show", "sa"]) == ("show sa", None)
    assert parse_command(["reset", "policy", "smtp-in"]) == ("reset policy", "smtp-in")
    assert parse_command(["monitor"]) == ("monitor", None)
    for bad in (["show"], ["reset", "policy"], ["show", "sa", "x"], ["frobnicate"]):
        with pytest.raises(ValueError):
            parse_command(bad)


# --- the socket ---------------------------------------------------------------------------


def test_control_socket_mode_stale_and_live(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    first = control.bind_control_socket(path)
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()
    # A second daemon on the same path is refused while the first listens.
    with pytest.raises(control.ControlError, match="in use"):
        control.bind_control_socket(path)
    # Closing removes the path; a stale socket (its daemon crashed) is replaced.
    first.close()
    assert not path.exists()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    again = control.bind_control_socket(path)
    again.close()
    # Not a socket: refused, left alone.
    path.write_text("keep me")
    with pytest.raises(control.ControlError, match="not a socket"):
        control.bind_control_socket(path)
    assert path.read_text() == "keep me"


def test_control_socket_group_mode(tmp_path: Path) -> None:
    import grp

    group = grp.getgrgid(os.getegid()).gr_name
    s = control.bind_control_socket(tmp_path / "g.sock", group)
    try:
        assert stat.S_IMODE(os.lstat(tmp_path / "g.sock").st_mode) == 0o660
    finally:
        s.close()
    with pytest.raises(control.ControlError, match="does not exist"):
        control.bind_control_socket(tmp_path / "h.sock", "no-such-group-pyike")


def _pyikectl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PYIKECTL, *args],
        capture_output=True, text=True, timeout=30, cwd=str(REPO),
    )  # fmt: skip


def test_pyikectl_without_daemon(tmp_path: Path) -> None:
    r = _pyikectl("-s", str(tmp_path / "none.sock"), "show", "sa")
    assert r.returncode == 1 and "does not exist: is pyike running" in r.stderr
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "stale.sock"))
    stale.close()
    r = _pyikectl("-s", str(tmp_path / "stale.sock"), "show", "sa")
    assert r.returncode == 1 and "pyike is not running" in r.stderr
    r = _pyikectl("-s", str(tmp_path / "none.sock"), "show")
    assert r.returncode == 2 and "unknown command" in r.stderr
    assert "Traceback" not in r.stderr


# --- sd_notify ------------------------------------------------------------------------------


def test_sd_notify_abstract_socket() -> None:
    name = f"pyike-test-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(b"\0" + name.encode())
    server.settimeout(2)
    try:
        n = Notifier({"NOTIFY_SOCKET": f"@{name}", "WATCHDOG_USEC": "2000000"})
        assert n.enabled and n.watchdog_interval == 2.0
        n.ready("1 IKE SA, 2 Child SAs")
        assert server.recv(4096) == b"READY=1\nSTATUS=1 IKE SA, 2 Child SAs"
        n.reloading()
        msg = server.recv(4096).decode().split("\n")
        assert msg[0] == "RELOADING=1" and msg[1].startswith("MONOTONIC_USEC=")
        n.stopping()
        assert server.recv(4096) == b"STOPPING=1"
        n.close()
    finally:
        server.close()
    # Not under systemd: nothing is sent, nothing fails.
    quiet = Notifier({})
    assert not quiet.enabled and quiet.notify("READY=1") is False
    # A watchdog meant for another process is not ours (sd_watchdog_enabled(3)).
    other = Notifier({"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval == 0.0
    other.close()


# --- logs ------------------------------------------------------------------------------------


def _record(msg: str, *args: object, level: int = logging.INFO, name: str = "pyike.ike") -> object:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_quiet_filter_levels_and_drop_limit() -> None:
    now = [0.0]
    f = logs.QuietFilter(0, clock=lambda: now[0])
    send = _record("%s: send %s peer [%s]:%d local [%s]:%d, %d bytes", "spi", "x", 1, 2, 3, 4, 5)
    assert not f.filter(send)  # per-message line: -v only
    assert f.filter(_record("%s: established %s", "spi=0x1", "peer ..."))
    drop = "drop %s %s #%d from [%s]:%d: unknown SPI %s"
    first = _record(drop, "INFORMATIONAL", "req", 1, "192.0.2.9", 500, "0x1", level=logging.INFO)
    assert f.filter(first)
    for i in range(30):  # the same kind of drop for 59 s: silent
        now[0] += 59 / 30
        assert not f.filter(_record(drop, "INFORMATIONAL", "req", i, "192.0.2.9", 500, "0x2"))
    now[0] += 2  # a minute later: one line, saying how many were left out
    later = _record(drop, "IKE_AUTH", "req", 1, "192.0.2.9", 500, "0x3", level=logging.WARNING)
    assert f.filter(later)
    assert "30 similar suppressed" in later.getMessage()
    # Pre-formatted drop lines (the data plane's) are grouped by their words.
    esp = "ESP from 192.0.2.9 dropped: REPLAY (%d drops so far)"
    assert f.filter(_record("%s", esp % 1, level=logging.WARNING, name="pyike.dataplane"))
    assert not f.filter(_record("%s", esp % 2, level=logging.WARNING, name="pyike.dataplane"))
    # Errors always pass; -v lets everything through.
    assert f.filter(_record(drop, "x", "y", 1, "z", 1, "w", level=logging.ERROR))
    f.verbose = 1
    assert f.filter(send) and f.filter(_record(drop, "x", "y", 1, "z", 1, "w"))


def test_journal_format() -> None:
    fmt = logs.JournalFormatter()
    assert fmt.format(_record("hello %s", "world", level=logging.ERROR)) == (
        "<3>pyike.ike: hello world"
    )
    assert fmt.format(_record("x", level=logging.WARNING)).startswith("<4>")
    assert fmt.format(_record("x", level=logging.INFO)).startswith("<6>")
    assert fmt.format(_record("x", level=logging.DEBUG)).startswith("<7>")


def test_journald_detection(tmp_path: Path) -> None:
    """JOURNAL_STREAM names our stderr: journald format (no time, <N>); else times."""
    code = (
        "import logging; from pyike import logs; logs.setup(0); "
        "logging.getLogger('pyike').warning('peer gone')"
    )
    err = tmp_path / "err"
    with err.open("wb") as f:
        st = os.fstat(f.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        subprocess.run([sys.executable, "-c", code], stderr=f, env=env, cwd=str(REPO), timeout=30)
    assert err.read_text() == "<4>pyike: peer gone\n"
    env = {**os.environ, "JOURNAL_STREAM": "1:2"}  # someone else's stream: plain lines
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(REPO)
    )
    assert r.stderr.endswith(" pyike: peer gone\n") and not r.stderr.startswith("<")


# --- the unit file ----------------------------------------------------------------------------


def test_unit_file_verifies(tmp_path: Path) -> None:
    """conf/pyike.service: Type=notify, reload through pyikectl, the hardening the
    issue asks for; ``systemd-analyze verify`` finds nothing to complain about (with
    the paths pointed at this checkout's interpreter, since /opt/pyike is not here)."""
    import shutil

    text = (REPO / "conf" / "pyike.service").read_text()
    for line in (
        "Type=notify",
        "ExecReload=/opt/pyike/bin/pyikectl -s /run/pyike/pyike.sock reload",
        "Restart=on-failure",
        "WatchdogSec=",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE CAP_SETUID CAP_SETGID",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "RuntimeDirectory=pyike",
    ):
        assert line in text, line
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    bindir = Path(sys.executable).parent
    for name in ("pyike", "pyikectl"):
        if not (bindir / name).exists():
            pytest.skip(f"{name} entry point not installed in {bindir}")
    unit = tmp_path / "pyike.service"
    unit.write_text(text.replace("/opt/pyike/bin/", f"{bindir}/"))
    r = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


# --- show stats' message counters -------------------------------------------------------------


def _ike_header(exchange: int, flags: int, message_id: int, spi_r: bytes = b"\x22" * 8) -> bytes:
    """A bare IKEv2 header (RFC 7296 3.1), no payloads: what the counters look at."""
    import struct

    return b"\x11" * 8 + spi_r + struct.pack("!BBBBII", 0, 0x20, exchange, flags, message_id, 28)


def test_counters_messages_and_retransmissions() -> None:
    from pyike.status import Counters

    c = Counters()
    req = _ike_header(37, 0x08, 5)  # INFORMATIONAL request from the original initiator
    c.ike_message(req, outbound=True)
    c.ike_message(req, outbound=True)  # the same bytes again: a retransmission (2.1)
    c.ike_message(_ike_header(37, 0x08, 6), outbound=True)  # the next request: not one
    c.ike_message(_ike_header(37, 0x20, 5), outbound=False)  # its response
    c.ike_message(b"\x00" * 5, outbound=False)
    assert c.messages == {"INFORMATIONAL request out": 3, "INFORMATIONAL response in": 1}
    c.ike_message(_ike_header(37, 0x20, 5), outbound=True)  # a response resent: not ours
    c.ike_message(_ike_header(37, 0x20, 5), outbound=True)
    assert c.retransmits == 1
    assert c.messages["INFORMATIONAL response out"] == 2
    assert c.drops == {"shorter than an IKE header": 1}


def test_quiet_filter_repeated_failures_once_per_ten_minutes() -> None:
    now = [0.0]
    f = logs.QuietFilter(0, clock=lambda: now[0])
    closed = "%s: IKE SA closed: %s"

    def failure(spi: str) -> logging.LogRecord:
        reason = "peer not responding (IKE_SA_INIT req 0 sent 13 times)"
        return _record(closed, spi, reason, level=logging.WARNING)  # type: ignore[return-value]

    assert f.filter(failure("spi=0x01"))
    for i in range(9):  # one attempt a minute for nine minutes
        now[0] += 62
        assert not f.filter(failure(f"spi=0x{i + 2:02x}"))
    # Another kind of closing is news at once.
    assert f.filter(_record(closed, "spi=0x99", "deleted by peer", level=logging.WARNING))
    now[0] += 62
    last = failure("spi=0x0b")
    assert f.filter(last) and "9 similar suppressed in the last 10 minutes" in last.getMessage()
