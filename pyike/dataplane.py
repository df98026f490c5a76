"""The data plane: Child SAs -> ESP codec <-> TUN device (filled in by the ESP work)."""

from __future__ import annotations

import logging

from pyike.ike import ChildSaCreated, ChildSaDeleted, Event

log = logging.getLogger("pyike.dataplane")


def attach_dataplane(daemon: object) -> None:
    """Hook the data plane into a Daemon's Child SA events."""

    def on_child(event: Event) -> None:
        if isinstance(event, ChildSaCreated):
            log.info("Child SA ready: %s", event.child.describe())
        elif isinstance(event, ChildSaDeleted):
            log.info("Child SA gone: spi in 0x%08x (%s)", event.child.spi_in, event.reason)

    daemon.on_child = on_child  # type: ignore[attr-defined]
