"""INFORMATIONAL (RFC 7296 1.4): DELETE of IKE and Child SAs (1.4.1), liveness
checks (2.4: an empty request, an empty answer) and error notifies.

Our requests are :class:`LivenessRequest`, :class:`DeleteIkeRequest` and
:class:`DeleteChildRequest`; the peer's are answered by :func:`on_request`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyike import wire
from pyike.ike.common import FIRST_STATUS_NOTIFY
from pyike.ike.requests import Request, Response
from pyike.ike.states import State
from pyike.registry import ExchangeType, NotifyType, ProtocolId
from pyike.wire import DeletePayload, Message, NotifyPayload

if TYPE_CHECKING:
    from pyike.ike.sa import IkeSa

log = logging.getLogger("pyike.ike")


@dataclass(eq=False)
class LivenessRequest(Request):
    """An empty INFORMATIONAL (2.4): any authenticated answer proves the peer is there."""

    exchange = ExchangeType.INFORMATIONAL

    def start(self, sa: IkeSa, now: float) -> None:
        sa.send_request(self, [], now)


@dataclass(eq=False)
class DeleteIkeRequest(Request):
    """DELETE of the IKE SA and so all its Child SAs (1.4.1)."""

    exchange = ExchangeType.INFORMATIONAL

    def start(self, sa: IkeSa, now: float) -> None:
        sa.set_state(State.DELETING)
        sa.send_request(self, [DeletePayload(ProtocolId.IKE, 0, [])], now)

    def on_response(self, sa: IkeSa, response: Response, now: float) -> None:
        sa.close(sa.close_reason or "deleted", now, error=False)


@dataclass(eq=False)
class DeleteChildRequest(Request):
    """DELETE of one Child SA (1.4.1)."""

    spi_in: int
    exchange = ExchangeType.INFORMATIONAL
    moves_with_children = True

    def start(self, sa: IkeSa, now: float) -> None:
        # A DELETE names the SPI of the SA as its sender receives it (3.11).
        sa.send_request(
            self, [DeletePayload(ProtocolId.ESP, 4, [self.spi_in.to_bytes(4, "big")])], now
        )

    def on_response(self, sa: IkeSa, response: Response, now: float) -> None:
        child = sa.forget_child(self.spi_in)
        if child is not None:
            sa.child_deleted(child, "deleted by us")


def on_request(
    sa: IkeSa, msg: Message, payloads: list[wire.Payload], now: float
) -> list[wire.Payload]:
    """DELETE (1.4.1), liveness (2.4: empty request, empty answer), status notifies."""
    reply: list[wire.Payload] = []
    for p in payloads:
        if isinstance(p, DeletePayload):
            if p.protocol == ProtocolId.IKE:
                log.info("%s: peer deleted the IKE SA", sa.label)
                sa.close_after_response = "deleted by peer"
                return []
            if p.protocol in (ProtocolId.ESP, ProtocolId.AH):
                ours = []
                for spi in p.spis:
                    child = sa.child_by_out_spi(int.from_bytes(spi, "big"))
                    if child is None:
                        continue
                    sa.forget_child(child.spi_in)
                    ours.append(child.spi_in.to_bytes(4, "big"))
                    log.info("%s: peer deleted Child SA %s", sa.label, child.describe())
                    sa.child_deleted(child, "deleted by peer")
                if ours:
                    reply.append(DeletePayload(p.protocol, 4, ours))
        elif isinstance(p, NotifyPayload) and p.type == NotifyType.AUTHENTICATION_FAILED:
            # 2.21.2: the initiator did not accept our AUTH (or certificate) and tells
            # us so in a separate INFORMATIONAL: the IKE SA and its children are void.
            log.warning("%s: peer refused our authentication (AUTHENTICATION_FAILED)", sa.label)
            sa.close_after_response = "peer refused our authentication: AUTHENTICATION_FAILED"
            return []
        elif isinstance(p, NotifyPayload) and p.type < FIRST_STATUS_NOTIFY:
            log.warning("%s: peer reports %s", sa.label, NotifyType.name_of(p.type))
    return reply
