"""What the IKE core hands its driver: datagrams to send, and events.

Events are values, not the core's live objects: they carry the facts a consumer
needs (SPIs, addresses, the policy's name, the peer's ID, and for a new Child SA
its selectors, algorithms and keys). An IKE SA is named by our SPI of it (the key
of ``Endpoint.sas``), a Child SA by its inbound SPI; questions and commands go
back through the ``Endpoint`` API with these identifiers.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from pyike import crypto, ts
from pyike.ike.common import Addr
from pyike.ike.states import ChildState
from pyike.proposals import Suite
from pyike.wire import TrafficSelector

PeerId = tuple[int, bytes]


@dataclass(slots=True)
class Transmit:
    """A datagram to send: the IKE message, from our ``local`` to ``remote``.

    The driver prepends the 4-byte non-ESP marker when the local port is 4500
    (RFC 3948 2.2).
    """

    data: bytes
    local: Addr
    remote: Addr


@dataclass(frozen=True, slots=True)
class ChildSaInfo:
    """One negotiated ESP SA pair: everything the data plane needs to install it."""

    policy: str
    spi_in: int
    spi_out: int
    suite: Suite
    key_in: tuple[bytes, bytes]  # (encryption, integrity) for packets we receive
    key_out: tuple[bytes, bytes]  # for packets we send
    ts_local: tuple[TrafficSelector, ...]
    ts_remote: tuple[TrafficSelector, ...]
    lifetime: float
    lifetime_bytes: int
    encap: bool  # ESP in UDP (RFC 3948)
    local: Addr
    remote: Addr
    # The responder answered with wider selectors than we asked for (OpenIKED
    # returns its whole policy, 2.9): it may then send on this SA any traffic of
    # that policy, including what our other Child SAs to it carry.
    peer_ts_wider: bool = False
    # Its state and lifetimes when the event was made (for status and counters).
    state: ChildState = ChildState.ACTIVE
    created: float = 0.0
    rekey_at: float = float("inf")
    expire_at: float = float("inf")

    def describe(self) -> str:
        flows = ", ".join(
            f"{ts.describe(a)} -> {ts.describe(b)}" for a in self.ts_local for b in self.ts_remote
        )
        return (
            f"spi in 0x{self.spi_in:08x} out 0x{self.spi_out:08x} ({self.suite.describe()}) {flows}"
        )


class Event:
    """Base of everything the core reports to its driver."""


@dataclass(frozen=True, slots=True)
class IkeSaEstablished(Event):
    spi: bytes  # ours: the IKE SA's name in Endpoint.sas
    policy: str  # its name, for logs
    policy_key: Hashable | None  # which configured policy (SaPolicy.key)
    peer_id: PeerId | None
    local: Addr
    peer: Addr
    initiator: bool
    replaces: bytes | None = None  # an IKE SA rekey: our SPI of the SA whose children moved
    suite: Suite | None = None


@dataclass(frozen=True, slots=True)
class IkeSaClosed(Event):
    spi: bytes
    policy: str
    policy_key: Hashable | None
    peer_id: PeerId | None
    reason: str
    error: bool = True  # False for an orderly DELETE or a rekey
    peer: Addr | None = None
    spi_i: bytes = b""  # both SPIs, as in its IkeKeysDerived (the key log's index)
    spi_r: bytes = b""


@dataclass(frozen=True, slots=True)
class ChildSaCreated(Event):
    ike_spi: bytes
    peer_id: PeerId | None
    child: ChildSaInfo
    replaces: int | None = None  # a rekey: spi_in of the old SA, which stays until deleted


@dataclass(frozen=True, slots=True)
class ChildSaDeleted(Event):
    ike_spi: bytes
    child: ChildSaInfo
    reason: str
    peer_id: PeerId | None = None


@dataclass(frozen=True, slots=True)
class PeerMoved(Event):
    """The peer's authenticated messages now come from ``peer`` (a NAT rebinding,
    2.23): its Child SAs, with their new ``remote``, send there from now on."""

    ike_spi: bytes
    peer: Addr
    children: tuple[ChildSaInfo, ...]


@dataclass(frozen=True, slots=True)
class IkeKeysDerived(Event):
    """SK_* of a new IKE SA, for an explicitly requested key log only."""

    spi_i: bytes
    spi_r: bytes
    suite: Suite
    keys: crypto.IkeKeys


@dataclass(frozen=True, slots=True)
class PeerLostSa(Event):
    """The peer answered our request with INVALID_IKE_SPI (RFC 7296 2.21.4): it has
    probably restarted and forgotten this SA. The answer is not authenticated, so
    this is a hint for the driver (re-establish), not a reason to trust it blindly."""

    spi: bytes
    policy: str
    policy_key: Hashable | None
    peer_id: PeerId | None
    peer: Addr | None = None


@dataclass(frozen=True, slots=True)
class InitialContact(Event):
    """The peer said it has no other SAs with us (RFC 7296 2.4): drop older ones."""

    spi: bytes
    peer_id: PeerId
    policy: str = ""
    peer: Addr | None = None
