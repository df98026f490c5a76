"""What the IKE core hands its driver: datagrams to send and events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyike import crypto
from pyike.ike.common import Addr

if TYPE_CHECKING:
    from pyike.ike.child import ChildSa
    from pyike.ike.sa import IkeSa


@dataclass(slots=True)
class Transmit:
    """A datagram to send: the IKE message, from our ``local`` to ``remote``.

    The driver prepends the 4-byte non-ESP marker when the local port is 4500
    (RFC 3948 2.2).
    """

    data: bytes
    local: Addr
    remote: Addr


class Event:
    """Base of everything the core reports to its driver."""


@dataclass(slots=True)
class IkeSaEstablished(Event):
    sa: IkeSa
    replaces: IkeSa | None = None  # set for an IKE SA rekey: the SA whose children moved


@dataclass(slots=True)
class IkeSaClosed(Event):
    sa: IkeSa
    reason: str
    error: bool = True  # False for an orderly DELETE or a rekey


@dataclass(slots=True)
class ChildSaCreated(Event):
    sa: IkeSa
    child: ChildSa
    replaces: ChildSa | None = None  # set for a rekey: old SA stays until deleted


@dataclass(slots=True)
class ChildSaDeleted(Event):
    sa: IkeSa
    child: ChildSa
    reason: str


@dataclass(slots=True)
class IkeKeysDerived(Event):
    """SK_* of a new IKE SA, for an explicitly requested key log only."""

    sa: IkeSa
    keys: crypto.IkeKeys


@dataclass(slots=True)
class PeerLostSa(Event):
    """The peer answered our request with INVALID_IKE_SPI (RFC 7296 2.21.4): it has
    probably restarted and forgotten this SA. The answer is not authenticated, so
    this is a hint for the driver (re-establish), not a reason to trust it blindly."""

    sa: IkeSa


@dataclass(slots=True)
class InitialContact(Event):
    """The peer said it has no other SAs with us (RFC 7296 2.4): drop older ones."""

    sa: IkeSa
    peer_id: tuple[int, bytes]
