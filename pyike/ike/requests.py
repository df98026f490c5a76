"""Our outstanding requests and the request window (RFC 7296 2.1-2.3).

Each kind of request we send is a small :class:`Request` subclass that says what
it sends (``start``), what its answer does (``on_response``) and what happens if
the answer never comes (``on_timeout``). They live next to their exchange:

  IKE_SA_INIT      init.InitRequest
  IKE_AUTH         auth.AuthRequest, auth.AuthFailedNotice (we reject the responder)
  CREATE_CHILD_SA  create_child.CreateChildRequest (new or rekeyed Child SA),
                   create_child.IkeRekeyRequest
  INFORMATIONAL    informational.LivenessRequest, DeleteIkeRequest, DeleteChildRequest

The :class:`RequestWindow` keeps our message IDs, the one request in flight
(window size 1) and those waiting for it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from pyike import wire
from pyike.ike.common import Addr
from pyike.registry import ExchangeType

if TYPE_CHECKING:
    from pyike.ike.policy import SaPolicy
    from pyike.ike.sa import IkeSa


@dataclass(slots=True, frozen=True)
class Response:
    """The peer's answer to our request, as it arrived."""

    msg: wire.Message
    data: bytes  # the datagram (IKE_SA_INIT keeps it for AUTH, 2.15)
    payloads: list[wire.Payload]  # decrypted; the plain ones for IKE_SA_INIT
    src: Addr
    dst: Addr


class Request:
    """One request of ours. ``message_id``, ``data``, ``sent_at`` and ``tries`` are
    filled in by :meth:`IkeSa.send_request` when it goes out."""

    exchange: ClassVar[ExchangeType]
    # Requests about Child SAs follow them to the new IKE SA of a rekey (2.18).
    moves_with_children: ClassVar[bool] = False

    message_id: int = -1
    data: bytes = b""
    sent_at: float = 0.0
    tries: int = 1

    def start(self, sa: IkeSa, now: float) -> None:
        """Build and send the request (``sa.send_request``), or nothing if it has
        become pointless while it waited in the queue."""
        raise NotImplementedError

    def on_response(self, sa: IkeSa, response: Response, now: float) -> None:
        """The peer answered (authenticated, except for IKE_SA_INIT)."""

    def on_timeout(self, sa: IkeSa, now: float) -> None:
        """All retransmissions went unanswered: the peer is gone (2.4)."""
        sa.close(
            f"peer not responding ({ExchangeType.name_of(self.exchange)} "
            f"req {self.message_id} sent {self.tries} times)",
            now,
        )

    def retransmit_at(self, policy: SaPolicy) -> float:
        """2.1: exponential backoff from retransmit_base, capped at retransmit_cap."""
        wait = policy.retransmit_base * (1 << (self.tries - 1))
        if policy.retransmit_cap > 0:
            wait = min(wait, policy.retransmit_cap)
        return self.sent_at + wait

    def describe(self) -> str:
        return f"{ExchangeType.name_of(self.exchange)} req {self.message_id}"


class RequestWindow:
    """Our message IDs (2.2), the request in flight and the queue (window size 1, 2.3)."""

    def __init__(self) -> None:
        self.next_id = 0
        self.outstanding: Request | None = None
        self.queue: deque[Request] = deque()

    def add(self, sa: IkeSa, request: Request, now: float) -> None:
        """Start now if idle, else after the current exchange."""
        if self.outstanding is None and sa.is_established:
            request.start(sa, now)
        else:
            self.queue.append(request)

    def done(self, sa: IkeSa, now: float) -> None:
        """The outstanding request is answered: start the next that still applies."""
        self.outstanding = None
        while self.queue and sa.is_established and self.outstanding is None:
            self.queue.popleft().start(sa, now)

    def clear(self) -> None:
        self.outstanding = None
        self.queue.clear()

    def take_child_requests(self) -> list[Request]:
        """Remove and return the queued requests that belong to Child SAs."""
        moved = [r for r in self.queue if r.moves_with_children]
        self.queue = deque(r for r in self.queue if not r.moves_with_children)
        return moved
