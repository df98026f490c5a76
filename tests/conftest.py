"""Shared fixtures: throwaway hosts in network namespaces, and the CI skip guard.

Topology of ``two_hosts`` (documentation addresses, RFC 5737 / RFC 3849)::

    home (eth0) 192.0.2.1/24 2001:db8:1::1/64 <--veth--> 192.0.2.2/24 2001:db8:1::2/64 (eth0) vm

"home" is the Linux box that initiates, "vm" the remote peer (iked or charon).

CI guard: CI runs as root with every tool installed, so a test that needs root or
a peer binary and is skipped there means the set-up is broken, not that the test
does not apply. With the environment variable ``CI`` set, such skips make the
session fail with a message naming them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Make ``tests.netns`` and ``interop`` importable however pytest was started
# (``pytest`` puts only this directory on sys.path, not the repository root).
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.netns import (  # noqa: E402 - needs the sys.path fix above
    BINARY_SKIP_PREFIX,
    ROOT_SKIP_REASON,
    Netns,
    TwoHosts,
    require_root,
    sweep_stale,
    veth_pair,
)

HOME_ADDRS = ("192.0.2.1/24", "2001:db8:1::1/64")
VM_ADDRS = ("192.0.2.2/24", "2001:db8:1::2/64")


@pytest.fixture(scope="session", autouse=False)
def stale_netns_swept() -> None:
    """Delete namespaces left by earlier runs that were killed (SIGKILL, OOM)."""
    require_root()
    sweep_stale()


@pytest.fixture
def two_hosts(stale_netns_swept: None) -> Iterator[TwoHosts]:
    """(home, vm) namespaces joined by veth ``eth0``<->``eth0``, MTU 1500."""
    with Netns("home") as home, Netns("vm") as vm:
        link = veth_pair(home, vm, HOME_ADDRS, VM_ADDRS)
        yield TwoHosts(home, vm, link)


# --- CI guard: a skipped root/interop test under CI fails the session ----------------

_GUARDED_MARKERS = ("netns", "interop")
_ci_skips: list[str] = []


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not os.environ.get("CI") or not report.skipped:
        return
    reason = _skip_reason(report)
    guarded = any(m in report.keywords for m in _GUARDED_MARKERS)
    if guarded or ROOT_SKIP_REASON in reason or BINARY_SKIP_PREFIX in reason:
        _ci_skips.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _ci_skips and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _ci_skips:
        return
    terminalreporter.section("CI: tests needing root or a peer were skipped", red=True)
    terminalreporter.line(
        "CI is set and runs as root with every peer installed, so these skips mean the "
        "set-up is broken (not root? package missing?); failing the run:",
        red=True,
    )
    for line in _ci_skips:
        terminalreporter.line(f"  {line}", red=True)
