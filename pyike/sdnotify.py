"""The sd_notify protocol, spoken directly (no libsystemd): sd_notify(3).

systemd passes ``$NOTIFY_SOCKET``, an AF_UNIX datagram socket: a path, or an
abstract name written with a leading ``@`` (sent with a leading NUL byte). Each
datagram is newline-separated ``KEY=VALUE`` assignments: ``READY=1`` once we serve,
``STATUS=...`` free text for ``systemctl status``, ``RELOADING=1`` (with
``MONOTONIC_USEC``, which Type=notify-reload requires) and ``READY=1`` around a
reload, ``STOPPING=1`` on the way out, ``WATCHDOG=1`` keep-alives.

The watchdog (``$WATCHDOG_USEC``, for our PID if ``$WATCHDOG_PID`` says so) is fed
every half interval by a timer of the event loop itself: a loop that is stuck
sends nothing, and systemd restarts the service (``WatchdogSec=`` in the unit).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

log = logging.getLogger("pyike")


class Notifier:
    """Sends sd_notify datagrams; does nothing when not started by systemd."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval = _watchdog_seconds(env)
        self._sock: socket.socket | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.sent = 0
        if self.address is not None:
            try:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            except OSError as e:
                log.warning("cannot notify the service manager: %s", e.strerror)
                self._sock = None

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; False if it could not be sent."""
        if self._sock is None or self.address is None:
            return False
        data = "\n".join(a.replace("\n", " ") for a in assignments).encode()
        try:
            self._sock.sendto(data, self.address)
        except OSError as e:
            # The manager went away or is busy: nothing to do but say so once a while.
            log.debug("sd_notify %r not sent: %s", assignments, e.strerror)
            return False
        self.sent += 1
        return True

    def ready(self, status: str = "") -> None:
        self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def start_watchdog(self, loop: asyncio.AbstractEventLoop) -> None:
        """WATCHDOG=1 every half interval, from ``loop`` (so a stuck loop stops them)."""
        if self._sock is None or not self.watchdog_interval:
            return
        half = self.watchdog_interval / 2

        def ping() -> None:
            self.notify("WATCHDOG=1")
            self._timer = loop.call_later(half, ping)

        ping()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()  # abstract namespace (unix(7))
    if value.startswith("/"):
        return value
    return None  # vsock: and others are not for us


def _watchdog_seconds(env: os._Environ[str] | dict[str, str]) -> float:
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return 0.0
    pid = env.get("WATCHDOG_PID", "")
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return 0.0  # meant for another process (sd_watchdog_enabled(3))
    return int(usec) / 1e6
