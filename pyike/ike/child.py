"""A negotiated Child SA (an ESP SA pair) and its states."""

from __future__ import annotations

from dataclasses import dataclass

from pyike import ts
from pyike.ike.common import Addr
from pyike.ike.states import ChildState
from pyike.proposals import Suite
from pyike.wire import TrafficSelector


@dataclass(slots=True)
class ChildSa:
    """A negotiated ESP SA pair, everything the data plane needs."""

    policy: str
    spi_in: int
    spi_out: int
    suite: Suite
    key_in: tuple[bytes, bytes]  # (encryption, integrity) for packets we receive
    key_out: tuple[bytes, bytes]  # for packets we send
    ts_local: list[TrafficSelector]
    ts_remote: list[TrafficSelector]
    lifetime: float
    lifetime_bytes: int
    encap: bool  # ESP in UDP (RFC 3948)
    local: Addr
    remote: Addr
    created: float = 0.0
    # Lifetimes (RFC 7296 2.8): at ``rekey_at`` (soft, with jitter) the side that
    # notices first rekeys; at ``expire_at`` (hard) an unrekeyed SA is deleted.
    rekey_at: float = float("inf")
    expire_at: float = float("inf")
    state: ChildState = ChildState.ACTIVE
    last_inbound: float = 0.0  # set by the data plane: authenticated ESP arrived
    # The responder answered with wider selectors than we asked for (OpenIKED
    # returns its whole policy, 2.9): it may then send on this SA any traffic of
    # that policy, including what our other Child SAs to it carry. The data plane
    # accepts such packets if another of our Child SAs with this peer allows them.
    peer_ts_wider: bool = False

    def describe(self) -> str:
        flows = ", ".join(
            f"{ts.describe(a)} -> {ts.describe(b)}" for a in self.ts_local for b in self.ts_remote
        )
        return (
            f"spi in 0x{self.spi_in:08x} out 0x{self.spi_out:08x} ({self.suite.describe()}) {flows}"
        )
