"""What one IKE SA should negotiate: the core's view of an iked.conf policy."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

from pyike.authn import Credentials
from pyike.wire import Proposal, TrafficSelector


@dataclass(slots=True)
class SaPolicy:
    """What one IKE SA should negotiate: the core's view of an iked.conf policy."""

    name: str  # for logs; two configured policies may share a name (iked accepts it)
    ike_proposals: list[Proposal]
    child_proposals: list[Proposal]
    local_id: tuple[int, bytes]
    ts_local: list[TrafficSelector]
    ts_remote: list[TrafficSelector]
    peer_id: tuple[int, bytes] | None = None  # dstid; None accepts any ID with a known key
    local_key: object | None = None  # private key (ECDSA, RSA, Ed25519)
    psk: bytes | None = None
    # Looks up the peer's public key by (ID type, ID data): iked's pubkeys/ layout.
    peer_key: Callable[[int, bytes], object | None] = lambda _t, _d: None
    rfc7427: bool = True  # offer/use RFC 7427 signatures (method 14)
    # Certificates, ikeauth and signature AUTH (pyike.authn); None: made from
    # local_key/peer_key/rfc7427 (raw keys, any signature method).
    credentials: Credentials | None = None
    force_encap: bool = False  # fake NAT detection so ESP goes in UDP (iked -t, encap=yes)
    initial_contact: bool = True
    ike_lifetime: float = 86400.0
    child_lifetime: float = 10800.0
    child_lifetime_bytes: int = 4294967296
    dpd_interval: float = 60.0  # probe when nothing was received for this long (0 = off)
    retransmit_base: float = 2.0  # RFC 7296 2.1: exponential backoff, like iked
    retransmit_tries: int = 5
    # Longest wait between two retransmissions (0 = none): a capped backoff finds a
    # peer that came back within this many seconds instead of up to 32 s later.
    retransmit_cap: float = 0.0
    # RFC 7383 (`set fragmentation`): offer IKE fragmentation; fragment_size is the
    # largest IP datagram of an IKE message (0: 1280 for IPv6, 576 for IPv4, 2.5.1).
    fragmentation: bool = False
    fragment_size: int = 0
    mobike: bool = True  # RFC 4555 (`set mobike`, iked's default; `set nomobike`)
    # Which configured policy this is (pyike.config.PolicyKey), for the driver's
    # bookkeeping; the core only carries it.
    key: Hashable | None = None
