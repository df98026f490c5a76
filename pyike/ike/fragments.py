"""IKE fragmentation (RFC 7383): negotiation, sending SKF fragments, reassembly.

An SK-protected message larger than the path allows is sent as several SKF
messages, each encrypted and authenticated on its own (2.5), so that a path
dropping IP fragments still carries IKE_AUTH with certificates. The receiver
checks each fragment's ICV before keeping it (2.6): a forged fragment is
dropped and the set, the SA and its message IDs stay as they were.

Memory per IKE SA is bounded: at most one set in each direction (the peer's
request and the response to our request), ``limits.fragments_per_message``
fragments and ``limits.reassembly_bytes`` of plaintext per set, and a set
older than ``REASSEMBLY_TIMEOUT`` is thrown away when the next fragment comes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from ipaddress import IPv6Address
from typing import TYPE_CHECKING

from pyike import crypto, wire
from pyike.ike.common import NATT_PORT, notify
from pyike.ike.events import Transmit
from pyike.registry import HeaderFlag, NotifyType, PayloadType
from pyike.wire import Message, NotifyPayload

if TYPE_CHECKING:
    from pyike.ike.common import Addr
    from pyike.ike.sa import IkeSa

log = logging.getLogger("pyike.ike")

# RFC 7383 2.5.1: without better knowledge, IP datagrams of at most 1280 octets
# (IPv6) and 576 octets (IPv4) get through.
DEFAULT_IPV6_DATAGRAM = 1280
DEFAULT_IPV4_DATAGRAM = 576
MIN_DATAGRAM = 256  # below this a fragment carries almost nothing but overhead
UDP_HEADER = 8
NON_ESP_MARKER = 4  # RFC 3948 2.2, in front of IKE on port 4500
SKF_FIXED = wire.HEADER_LEN + 4 + 4  # IKE header, SKF payload header, number/total
# A set not complete after this long is dropped: the sender has long
# retransmitted (RFC 7296 2.1) and a stale set only holds memory.
REASSEMBLY_TIMEOUT = 30.0
# The limits pyike.limits.Limits defines; used if the endpoint carries no limits.
DEFAULT_FRAGMENTS_PER_MESSAGE = 64
DEFAULT_REASSEMBLY_BYTES = 64 * 1024


# --------------------------------------------------------------------------- negotiation


def supported_notify() -> NotifyPayload:
    """IKEV2_FRAGMENTATION_SUPPORTED (RFC 7383 2.3), empty, in IKE_SA_INIT."""
    return notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED)


def offered(msg: Message) -> bool:
    return msg.notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED) is not None


# --------------------------------------------------------------------------- sending


def datagram_limit(sa: IkeSa) -> int:
    """Largest IP datagram for one IKE message: ``fragment_size`` or 2.5.1's default."""
    configured = sa.policy.fragment_size
    if configured > 0:
        return max(configured, MIN_DATAGRAM)
    return DEFAULT_IPV6_DATAGRAM if isinstance(sa.peer[0], IPv6Address) else DEFAULT_IPV4_DATAGRAM


def message_limit(sa: IkeSa) -> int:
    """Largest IKE message (what follows the UDP header and non-ESP marker)."""
    ip_header = 40 if isinstance(sa.peer[0], IPv6Address) else 20
    marker = NON_ESP_MARKER if sa.local[1] == NATT_PORT else 0
    return datagram_limit(sa) - ip_header - UDP_HEADER - marker


def split(
    sa: IkeSa,
    exchange: int,
    message_id: int,
    flags: int,
    first: int,
    inner: bytes,
    limit: int,
) -> list[bytes]:
    """The SKF messages carrying ``inner`` (RFC 7383 2.5), each at most ``limit`` bytes.

    Every fragment has the full IKE header with the same message ID; fragment 1
    names the first inner payload, the others 0 (2.5). The ICV of each covers its
    header, the SKF header and the Fragment Number/Total Fragments fields.
    """
    cipher = sa.cipher_out
    assert cipher is not None
    room = limit - SKF_FIXED
    # The largest plaintext chunk whose sealed form (IV, padding, ICV) fits.
    chunk = room
    while chunk > 1 and cipher.sealed_length(chunk) > room:
        chunk -= 1
    if chunk < 1:
        raise ValueError(f"fragment limit {limit} leaves no room for data")
    pieces = [inner[i : i + chunk] for i in range(0, len(inner), chunk)] or [b""]
    total = len(pieces)
    out = []
    for number, piece in enumerate(pieces, start=1):
        body_len = 4 + cipher.sealed_length(len(piece))
        header = wire.Header(
            sa.spi_i,
            sa.spi_r,
            PayloadType.SKF,
            exchange,
            flags,
            message_id,
            wire.HEADER_LEN + 4 + body_len,
        ).pack()
        aad = (
            header
            + wire.payload_header(first if number == 1 else 0, 4 + body_len)
            + number.to_bytes(2, "big")
            + total.to_bytes(2, "big")
        )
        out.append(aad + cipher.seal(aad, piece))
    return out


@dataclass(slots=True)
class Outgoing:
    """The fragments of the last request and the last response we protected, so a
    retransmission sends the very same fragments again (RFC 7383 2.6.1)."""

    by_message: dict[bool, tuple[bytes, list[bytes]]] = field(default_factory=dict)

    def remember(self, response: bool, whole: bytes, parts: list[bytes]) -> None:
        self.by_message[response] = (whole, parts)

    def datagrams(self, data: bytes) -> list[bytes]:
        """What goes on the wire for the protected message ``data``."""
        for whole, parts in self.by_message.values():
            if whole is data or whole == data:
                return parts
        return [data]


def protect(
    sa: IkeSa, exchange: int, message_id: int, flags: int, first: int, inner: bytes, whole: bytes
) -> None:
    """Called for every SK message we build: if fragmentation was negotiated and
    ``whole`` is too big for the path, split it and remember the fragments."""
    if not sa.fragmentation:
        return
    limit = message_limit(sa)
    if len(whole) <= limit:
        return
    parts = split(sa, exchange, message_id, flags, first, inner, limit)
    log.debug(
        "%s: message #%d of %d bytes goes as %d fragments of at most %d bytes",
        sa.label,
        message_id,
        len(whole),
        len(parts),
        limit,
    )
    sa.fragments_out.remember(bool(flags & HeaderFlag.RESPONSE), whole, parts)


def send(sa: IkeSa, data: bytes, local: Addr, remote: Addr) -> None:
    """Queue ``data`` (or its fragments) for the wire."""
    for part in sa.fragments_out.datagrams(data):
        sa.endpoint.transmits.append(Transmit(part, local, remote))


# --------------------------------------------------------------------------- receiving


@dataclass(slots=True)
class Reassembled(wire.SkPayload):
    """An SK payload whose plaintext came from authenticated fragments (2.6):
    ``IkeSa.unprotect`` parses ``plain`` instead of decrypting."""

    plain: bytes = b""


@dataclass(slots=True)
class FragmentSet:
    message_id: int
    exchange: int
    total: int
    started: float
    first_inner: int = 0
    parts: dict[int, bytes] = field(default_factory=dict)
    size: int = 0


@dataclass(slots=True)
class Reassembly:
    """The peer's fragments being collected, one set per direction."""

    sets: dict[bool, FragmentSet] = field(default_factory=dict)

    def held_bytes(self) -> int:
        return sum(s.size for s in self.sets.values())

    def clear(self) -> None:
        self.sets.clear()


def _limits(sa: IkeSa) -> tuple[int, int]:
    limits = getattr(sa.endpoint, "limits", None)
    return (
        getattr(limits, "fragments_per_message", DEFAULT_FRAGMENTS_PER_MESSAGE),
        getattr(limits, "reassembly_bytes", DEFAULT_REASSEMBLY_BYTES),
    )


def _drop(sa: IkeSa, kind: str, now: float, fmt: str, *args: object) -> None:
    guard = getattr(sa.endpoint, "guard", None)
    if guard is not None:
        guard.note(kind, now, "%s: drop fragment: " + fmt, sa.label, *args)
    else:
        log.warning("%s: drop fragment: " + fmt, sa.label, *args)


def receive(
    sa: IkeSa, msg: Message, data: bytes, src: Addr, dst: Addr, now: float
) -> Message | None:
    """One SKF message for ``sa``. Returns the whole message once the last fragment
    is in (its SK payload a :class:`Reassembled`), else None. Never raises."""
    skf = msg.payloads[-1]
    assert isinstance(skf, wire.SkfPayload)
    mid, response = msg.message_id, msg.is_response
    if not sa.fragmentation or sa.cipher_in is None:
        _drop(sa, "fragment_unexpected", now, "#%d: fragmentation was not negotiated", mid)
        return None
    max_count, max_bytes = _limits(sa)
    if skf.total > max_count:
        _drop(
            sa,
            "fragment_limit",
            now,
            "#%d announces %d fragments (limit fragments_per_message %d)",
            mid,
            skf.total,
            max_count,
        )
        return None
    # Cheap relevance checks before spending a decryption on it.
    retransmitted = False
    if response:
        r = sa.window.outstanding
        if r is None or r.message_id != mid or r.exchange != msg.exchange:
            log.debug("%s: drop fragment of unexpected response #%d", sa.label, mid)
            return None
    elif sa.last_response is not None and mid == sa.last_response[0]:
        retransmitted = True
    elif mid != sa.peer_next_id:
        log.debug("%s: drop fragment of request #%d, expected #%d", sa.label, mid, sa.peer_next_id)
        return None
    # 2.6: each fragment is authenticated on its own, before anything is kept.
    aad = data[: len(data) - len(skf.data)]
    try:
        plain = sa.cipher_in.open(aad, skf.data)
    except (crypto.IntegrityError, crypto.CryptoError, ValueError) as e:
        _drop(
            sa, "fragment_integrity", now, "#%d fragment %d/%d: %s", mid, skf.number, skf.total, e
        )
        return None
    if retransmitted:
        # 2.6.1: a retransmitted request's fragment 1 (and only that one) makes us
        # send our response, all its fragments, again.
        if skf.number == 1:
            resp = sa.last_response[1]  # type: ignore[index]
            log.debug("%s: retransmitted request #%d, resending response", sa.label, mid)
            send(sa, resp, dst, src)
        return None
    current = sa.fragments_in.sets.get(response)
    if current is not None and (
        current.message_id != mid
        or current.exchange != msg.exchange
        or now - current.started > REASSEMBLY_TIMEOUT
    ):
        current = None  # an older message's leftovers
    if current is not None and skf.total != current.total:
        if skf.total < current.total:
            # 2.6: fewer fragments than the set we are collecting: ignore this one.
            log.debug("%s: drop fragment %d/%d of #%d", sa.label, skf.number, skf.total, mid)
            return None
        # 2.5.2/2.6: the sender refragmented smaller (PMTU): start over.
        current = None
    if current is None:
        current = FragmentSet(mid, msg.exchange, skf.total, now)
        sa.fragments_in.sets[response] = current
    if skf.number in current.parts:
        log.debug("%s: duplicate fragment %d/%d of #%d", sa.label, skf.number, skf.total, mid)
        return None
    if current.size + len(plain) > max_bytes:
        del sa.fragments_in.sets[response]
        _drop(
            sa,
            "fragment_limit",
            now,
            "#%d reassembles to more than %d bytes (limit reassembly_bytes); set dropped",
            mid,
            max_bytes,
        )
        return None
    current.parts[skf.number] = plain
    current.size += len(plain)
    if skf.number == 1:
        current.first_inner = skf.first_inner
    if len(current.parts) < current.total:
        return None
    del sa.fragments_in.sets[response]
    whole = b"".join(current.parts[n] for n in range(1, current.total + 1))
    log.debug(
        "%s: reassembled #%d from %d fragments, %d bytes", sa.label, mid, current.total, len(whole)
    )
    return Message(
        msg.spi_i,
        msg.spi_r,
        msg.exchange,
        msg.flags,
        mid,
        [Reassembled(current.first_inner, b"", plain=whole)],
    )
