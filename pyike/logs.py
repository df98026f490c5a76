"""Logging set-up: levels people can live with, journald's format, drop rate limits.

Levels follow iked(8)'s ``-v``:

- default: start-up, established/closed/rekeyed SAs, recoveries, errors; repeated drops
  at most one line a minute per kind (with the number suppressed meanwhile), a peer
  that stays unreachable one line per ten minutes (retries are ``-v`` lines). An idle
  established tunnel logs nothing: liveness probes, NAT keepalives and the per-message
  send/recv lines are below this level.
- ``-v``: also every IKE message sent and received, probes, keepalives, every drop.
- ``-vv``: debug (internal decisions, tracebacks of internal errors).

``pyikectl log verbose|brief`` switches between ``-v`` and the default at run time.

Under systemd-journald (``JOURNAL_STREAM`` set, see systemd.exec(5)) lines carry no
timestamp (the journal adds one) and start with the syslog priority ``<N>``
(sd-daemon(3)), so ``journalctl -p err`` finds the errors.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time

# Per-message lines of the core (RFC 7296 exchanges, one line per datagram): with
# 5 s liveness probes on three IKE SAs they are most of what an idle tunnel would log.
# Matched on the record's format string, so arguments do not matter.
CHATTY_TEMPLATES = (
    re.compile(r"^%s: send %s "),  # IKE message out (request, retransmit, response)
    re.compile(r"^recv %s "),  # the driver's inbound line
    re.compile(r"^send INVALID_IKE_SPI "),
    re.compile(r"^%s: nothing received for "),  # liveness probe
    re.compile(r"keepalive"),
    re.compile(r"^listening on "),
)
DROP_WORDS = re.compile(r"\bdrop(s|ped)?\b|\bno Child SA for\b", re.IGNORECASE)
RATE_WINDOW = 60.0  # seconds: at most one line per kind of drop in this window
# A peer that stays unreachable fails one attempt after another: the first failure
# is news, the same failure again is shown once every ten minutes.
REPEATED_FAILURES = re.compile(r"IKE SA closed: peer not responding|: next attempt in ")
FAILURE_WINDOW = 600.0
_NUMBERS = re.compile(r"0x[0-9a-f]+|[0-9a-f]*\d[0-9a-f:.]*", re.IGNORECASE)

# syslog priorities (RFC 5424 6.2.1) for journald's <N> prefix.
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def syslog_priority(levelno: int) -> int:
    for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= level:
            return _PRIORITY[level]
    return 7


class JournalFormatter(logging.Formatter):
    """``<6>pyike.ike: ...``: no time (journald stamps), a syslog priority prefix."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        prio = syslog_priority(record.levelno)
        # Every line of a multi-line record (a traceback) keeps the record's priority.
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


class QuietFilter(logging.Filter):
    """At the default level: hides per-message lines, limits repeated drops to one a
    minute per kind. ``verbose`` (``-v`` or ``pyikectl log verbose``) lets all pass."""

    def __init__(self, verbose: int = 0, clock: object = time.monotonic) -> None:
        super().__init__()
        self.verbose = verbose
        self.clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbose >= 1 or record.levelno >= logging.ERROR:
            return True
        template = str(record.msg)
        if record.levelno <= logging.INFO and any(rx.search(template) for rx in CHATTY_TEMPLATES):
            return False
        message = record.getMessage()
        if REPEATED_FAILURES.search(message):
            kind, window = _NUMBERS.sub("#", message), FAILURE_WINDOW
        elif DROP_WORDS.search(template if template != "%s" else message):
            # One kind of drop: the same format string, or for pre-formatted text the
            # same words once addresses, SPIs and counts are blanked out.
            kind = template if "%" in template else _NUMBERS.sub("#", message)
            window = RATE_WINDOW
        else:
            return True
        key = (record.name, kind)
        now = self.clock()  # type: ignore[operator]
        last = self._last.get(key)
        if last is not None and now - last < window:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        skipped = self._suppressed.pop(key, 0)
        if skipped:
            span = "minute" if window == RATE_WINDOW else f"{window / 60:.0f} minutes"
            record.msg = f"{message} ({skipped} similar suppressed in the last {span})"
            record.args = None
        if len(self._last) > 4096:  # bounded: forget kinds not seen for a window
            self._last = {k: t for k, t in self._last.items() if now - t < FAILURE_WINDOW}
        return True


_filter: QuietFilter | None = None
_handler: logging.Handler | None = None


def under_journald() -> bool:
    """systemd connected stderr to the journal (systemd.exec(5), $JOURNAL_STREAM is
    ``device:inode`` of that stream): check it is still our stderr."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def setup(verbose: int = 0, journald: bool | None = None) -> None:
    """Configure the ``pyike`` loggers on stderr (idempotent)."""
    global _filter, _handler
    journald = under_journald() if journald is None else journald
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    handler = logging.StreamHandler(sys.stderr)
    if journald:
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
        )
    _filter = QuietFilter(verbose)
    handler.addFilter(_filter)
    root.addHandler(handler)
    _handler = handler
    set_verbosity(verbose)
    for noisy in ("pyroute2", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def set_verbosity(verbose: int) -> None:
    """-v levels at run time (pyikectl log verbose = 1, brief = 0)."""
    logging.getLogger().setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
    # The driver's per-datagram lines are INFO; its own logger keeps them out by default.
    logging.getLogger("pyike.driver").setLevel(
        logging.DEBUG if verbose >= 2 else logging.INFO if verbose else logging.WARNING
    )
    if _filter is not None:
        _filter.verbose = verbose


def verbosity() -> int:
    return _filter.verbose if _filter is not None else 0
