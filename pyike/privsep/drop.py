"""Dropping root for good, and proving it: the user, the drop, the checks.

The order matters (setuid(2), credentials(7)): supplementary groups and the
group first, while we may still change them, then the user ids (real, effective
and saved, so nothing can switch back). A setuid from root to another user
clears the permitted, effective and ambient capability sets; PR_SET_NO_NEW_PRIVS
makes sure no exec can bring any back. The result is then read back from
/proc/self/status: an unexpected capability or id refuses to continue.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pwd
import signal
from dataclasses import dataclass
from pathlib import Path

DEFAULT_USER = "_pyike"  # a dedicated system user: useradd --system _pyike
FALLBACK_USER = "nobody"
PR_SET_PDEATHSIG = 1  # linux/prctl.h
PR_SET_NO_NEW_PRIVS = 38


class PrivsepError(Exception):
    """Privilege separation cannot be set up; the message is for the user."""


@dataclass(frozen=True, slots=True)
class RunAs:
    name: str
    uid: int
    gid: int


def find_user(name: str | None) -> RunAs:
    """``--user NAME``, else ``_pyike`` if it exists, else ``nobody``."""
    candidates = [name] if name else [DEFAULT_USER, FALLBACK_USER]
    for candidate in candidates:
        try:
            pw = pwd.getpwnam(candidate)
        except KeyError:
            continue
        if pw.pw_uid == 0 or pw.pw_gid == 0:
            raise PrivsepError(f"user {candidate!r} is root (uid/gid 0): pick an unprivileged one")
        return RunAs(candidate, pw.pw_uid, pw.pw_gid)
    if name:
        raise PrivsepError(
            f"user {name!r} does not exist (create it with: useradd --system "
            f"--no-create-home --shell /usr/sbin/nologin {name})"
        )
    raise PrivsepError(
        f"neither {DEFAULT_USER!r} nor {FALLBACK_USER!r} exists to run the network "
        f"process as (create one with: useradd --system --no-create-home "
        f"--shell /usr/sbin/nologin {DEFAULT_USER})"
    )


def _prctl(option: int, arg: int) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def read_status(pid: int | str = "self") -> dict[str, str]:
    """The fields of /proc/PID/status (Uid, Gid, Groups, CapEff, NoNewPrivs...)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def check_dropped(user: RunAs, status: dict[str, str]) -> list[str]:
    """What is wrong with a process status that should be ``user`` with no privilege."""
    problems = []
    for key, want in (("Uid", user.uid), ("Gid", user.gid)):
        ids = [int(x) for x in status.get(key, "").split()]
        if not ids or any(i != want for i in ids):
            problems.append(f"{key} is {status.get(key)!r}, not {want} throughout")
    if status.get("Groups", ""):
        problems.append(f"supplementary groups {status['Groups']!r} remain")
    for cap in ("CapEff", "CapPrm", "CapInh", "CapAmb"):
        value = status.get(cap)
        if value is not None and int(value, 16) != 0:
            problems.append(f"{cap} is {value}, not 0")
    if "CapEff" not in status:
        problems.append("no CapEff line in /proc/self/status")
    return problems


def drop_privileges(user: RunAs, parent_pid: int) -> None:
    """Become ``user`` with no capabilities, or raise PrivsepError.

    Also: die with the parent (a parent gone means no privileged helper, and a
    SIGKILLed daemon must vanish whole), and no new privileges through exec."""
    try:
        os.setgroups([])
        os.setresgid(user.gid, user.gid, user.gid)
        os.setresuid(user.uid, user.uid, user.uid)
    except OSError as e:
        raise PrivsepError(f"cannot switch to user {user.name!r}: {e.strerror}") from e
    try:
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        # Set after the uid change, which clears it (prctl(2), PR_SET_PDEATHSIG).
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError as e:
        raise PrivsepError(str(e)) from e
    if os.getppid() != parent_pid:  # the parent died before PDEATHSIG was armed
        raise PrivsepError("the privileged parent is gone")
    problems = check_dropped(user, read_status())
    try:
        os.setuid(0)
        problems.append("setuid(0) succeeded after the drop")
    except PermissionError:
        pass
    if problems:
        raise PrivsepError("privileges not dropped: " + "; ".join(problems))
