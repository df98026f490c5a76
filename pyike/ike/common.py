"""Small pieces every part of the IKE core shares: addresses, constants, the
error a request handler raises to refuse, IDs as text, payload look-ups."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from typing import TypeVar

from pyike import wire
from pyike.registry import HashAlgorithm, IdType, NotifyType, PayloadType, ProtocolId
from pyike.wire import NotifyPayload, TsPayload

IPAddress = IPv4Address | IPv6Address
Addr = tuple[IPAddress, int]
IKE_PORT = 500
NATT_PORT = 4500
NONCE_LEN = 32
ZERO_SPI = bytes(8)
# RFC 7427 section 4: the hashes we can verify and produce.
OUR_SIG_HASHES = (HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512)
# Notify types below this are errors (RFC 7296 3.10.1).
FIRST_STATUS_NOTIFY = 16384


class ProtocolError(Exception):
    """A request we refuse; ``notify`` goes back to the peer in the response."""

    def __init__(self, detail: str, notify: NotifyType, data: bytes = b"") -> None:
        super().__init__(detail)
        self.detail = detail
        self.notify = notify
        self.data = data


def id_text(id_type: int, data: bytes) -> str:
    """An ID for humans: ``fqdn/namorar.example.com``, ``ipv6/2001:db8::1``."""
    try:
        if id_type == IdType.ID_IPV4_ADDR:
            return f"ipv4/{IPv4Address(data)}"
        if id_type == IdType.ID_IPV6_ADDR:
            return f"ipv6/{IPv6Address(data)}"
        if id_type in (IdType.ID_FQDN, IdType.ID_RFC822_ADDR):
            kind = "fqdn" if id_type == IdType.ID_FQDN else "ufqdn"
            return f"{kind}/{data.decode('ascii', 'replace')}"
    except ValueError:
        pass
    return f"{IdType.name_of(id_type)}/{data.hex()}"


def spi_text(spi: bytes) -> str:
    return f"0x{spi.hex()}"


def notify(kind: NotifyType, data: bytes = b"") -> NotifyPayload:
    """A notify about the IKE SA itself (protocol NONE, no SPI)."""
    return NotifyPayload(ProtocolId.NONE, b"", kind, data)


def sig_hash_notify() -> NotifyPayload:
    """RFC 7427 section 4: the hashes we accept in method-14 signatures."""
    return notify(
        NotifyType.SIGNATURE_HASH_ALGORITHMS,
        b"".join(h.to_bytes(2, "big") for h in OUR_SIG_HASHES),
    )


def hash_list(data: bytes) -> set[int]:
    return {int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data) - 1, 2)}


P = TypeVar("P", bound=wire.Payload)


def find(payloads: list[wire.Payload], cls: type[P]) -> P | None:
    return next((p for p in payloads if isinstance(p, cls)), None)


def find_ts(payloads: list[wire.Payload], kind: PayloadType) -> TsPayload | None:
    return next((p for p in payloads if isinstance(p, TsPayload) and p.kind == kind), None)


def error_notifies(payloads: list[wire.Payload]) -> list[NotifyPayload]:
    return [p for p in payloads if isinstance(p, NotifyPayload) and p.type < FIRST_STATUS_NOTIFY]


def has_notify(payloads: list[wire.Payload], kind: NotifyType) -> bool:
    return any(isinstance(p, NotifyPayload) and p.type == kind for p in payloads)
