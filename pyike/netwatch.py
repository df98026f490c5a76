"""Watch this host's links, addresses and routes, so the daemon reacts at once.

The home side of the guide's tunnel has a dynamic address: when its link comes
back or its address changes, waiting for liveness timeouts (tens of seconds)
is what made the guide's author run ``ping -i 5`` across the tunnel. pyroute2
listens on the rtnetlink multicast groups of the daemon's network namespace
(links, IPv4/IPv6 addresses, IPv4/IPv6 routes) through its asyncio API, in the
daemon's own event loop; the IKE core never sees netlink.

Bursts of kernel messages (a link coming up produces a dozen) are coalesced:
``on_change(reason)`` runs once, ``settle`` seconds after the first relevant
message of a burst. Messages about ignored interfaces (pyike's own TUN
device), IPv6 link-local and multicast routes, the local routing table, and
link messages that do not change a link's up/running state are not relevant.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterable

log = logging.getLogger("pyike.netwatch")

# rtnetlink multicast groups (linux/rtnetlink.h RTMGRP_*).
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
GROUPS = (
    RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE
)

IFF_UP = 0x1
IFF_RUNNING = 0x40
IFF_LOWER_UP = 0x10000
LINK_STATE_FLAGS = IFF_UP | IFF_RUNNING | IFF_LOWER_UP
RT_TABLE_MAIN = 254
DEFAULT_SETTLE = 0.3  # seconds: a link coming up sends its messages within ~10 ms here


def _index_of(name: str) -> int | None:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None


class LinkStates:
    """Last known up/running flags per interface index, to skip no-op link messages."""

    def __init__(self) -> None:
        self._flags: dict[int, int] = {}

    def changed(self, index: int, flags: int, deleted: bool = False) -> bool:
        if deleted:
            return self._flags.pop(index, None) is not None
        state = flags & LINK_STATE_FLAGS
        old = self._flags.get(index)
        self._flags[index] = state
        return old != state


def describe(msg: object, links: LinkStates, ignored: set[int]) -> str | None:
    """A short reason if this rtnetlink message matters to IKE SAs, else None.

    ``msg`` is a pyroute2 message (``.get()`` gives its fields and attributes).
    """
    get = msg.get  # type: ignore[attr-defined]
    event = get("event") or ""
    if event in ("RTM_NEWLINK", "RTM_DELLINK"):
        index = get("index")
        if index in ignored:
            return None
        flags = get("flags") or 0
        if not links.changed(index, flags, deleted=event == "RTM_DELLINK"):
            return None
        if event == "RTM_DELLINK":
            return f"link {get('ifname')} removed"
        up = flags & LINK_STATE_FLAGS == LINK_STATE_FLAGS
        return f"link {get('ifname')} {'up' if up else 'down'}"
    if event in ("RTM_NEWADDR", "RTM_DELADDR"):
        if get("index") in ignored:
            return None
        address = get("address") or get("local") or "?"
        if str(address).lower().startswith("fe80:"):
            return None  # link-local addresses never carry IKE to the peer
        verb = "added" if event == "RTM_NEWADDR" else "removed"
        return f"address {address}/{get('prefixlen')} {verb}"
    if event in ("RTM_NEWROUTE", "RTM_DELROUTE"):
        if get("table") not in (None, RT_TABLE_MAIN) or get("oif") in ignored:
            return None
        dst = get("dst")
        if dst and str(dst).lower().startswith(("fe80:", "ff00:")):
            return None
        dst_text = f"{dst}/{get('dst_len')}" if dst else "default"
        return f"route {dst_text} {'added' if event == 'RTM_NEWROUTE' else 'removed'}"
    return None


class NetWatch:
    """rtnetlink listener in the running asyncio loop; see the module docstring."""

    def __init__(
        self,
        on_change: Callable[[str], None],
        *,
        ignore_ifnames: Iterable[str] = (),
        settle: float = DEFAULT_SETTLE,
    ) -> None:
        self.on_change = on_change
        self.ignore_ifnames = tuple(ignore_ifnames)
        self.settle = settle
        self.changes = 0  # times on_change ran (tests and logs)
        self._links = LinkStates()
        self._reasons: list[str] = []
        self._pending: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None
        self._ipr: object | None = None

    async def start(self) -> None:
        """Subscribe now (so nothing after this call is missed), then listen."""
        from pyroute2 import AsyncIPRoute

        nl_log = logging.getLogger("pyroute2")
        if nl_log.level == logging.NOTSET:
            # pyroute2 dumps every netlink message at DEBUG: it would drown -vv logs.
            nl_log.setLevel(logging.INFO)
        ipr = AsyncIPRoute()
        try:
            await ipr.bind(groups=GROUPS)
            # Current link states, so the first message about a link is judged
            # against what it was, not reported as a change.
            async for link in await ipr.link("dump"):
                self._links.changed(link.get("index"), link.get("flags") or 0)
        except Exception:
            ipr.close()
            raise
        self._ipr = ipr
        self._task = asyncio.get_running_loop().create_task(self._listen(ipr))
        log.debug("watching links, addresses and routes")

    async def _listen(self, ipr: object) -> None:
        while True:
            try:
                async for msg in ipr.get():  # type: ignore[attr-defined]
                    self._message(msg)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a parse problem must not end the watch
                log.warning("netlink message ignored: %s", e)
                await asyncio.sleep(0.1)

    def _ignored(self) -> set[int]:
        return {i for name in self.ignore_ifnames if (i := _index_of(name)) is not None}

    def _message(self, msg: object) -> None:
        reason = describe(msg, self._links, self._ignored())
        if reason is None:
            return
        log.debug("netlink: %s", reason)
        self._reasons.append(reason)
        if self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(self.settle, self._fire)

    def _fire(self) -> None:
        self._pending = None
        reasons, self._reasons = self._reasons, []
        self.changes += 1
        shown = ", ".join(dict.fromkeys(reasons))  # in order, without repeats
        try:
            self.on_change(shown)
        except Exception:  # the daemon's reaction failing must not stop the watch
            log.exception("reacting to a network change failed")

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._ipr is not None:
            with contextlib.suppress(Exception):
                self._ipr.close()  # type: ignore[attr-defined]
            self._ipr = None
