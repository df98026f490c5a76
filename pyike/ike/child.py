"""A negotiated Child SA (an ESP SA pair) and its states."""

from __future__ import annotations

from dataclasses import dataclass

from pyike.ike.common import Addr
from pyike.ike.events import ChildSaInfo
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
    last_inbound: float = 0.0  # authenticated ESP arrived (Endpoint.note_alive)
    # The responder answered with wider selectors than we asked for (2.9); see
    # ChildSaInfo. The data plane accepts such packets if another of our Child
    # SAs with this peer allows them.
    peer_ts_wider: bool = False

    def info(self) -> ChildSaInfo:
        """What consumers learn of this SA (events carry values, not this object)."""
        return ChildSaInfo(
            policy=self.policy,
            spi_in=self.spi_in,
            spi_out=self.spi_out,
            suite=self.suite,
            key_in=self.key_in,
            key_out=self.key_out,
            ts_local=tuple(self.ts_local),
            ts_remote=tuple(self.ts_remote),
            lifetime=self.lifetime,
            lifetime_bytes=self.lifetime_bytes,
            encap=self.encap,
            local=self.local,
            remote=self.remote,
            peer_ts_wider=self.peer_ts_wider,
            state=self.state,
            created=self.created,
            rekey_at=self.rekey_at,
            expire_at=self.expire_at,
        )

    def describe(self) -> str:
        return self.info().describe()
