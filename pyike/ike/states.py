"""The states of an IKE SA and of a Child SA, and the moves between them.

``IkeSa.set_state`` and ``IkeSa.set_child_state`` are the only places a state
changes; they refuse a move these tables do not list (a bug, :class:`StateError`)
and log every move at debug level (-vv).
"""

from __future__ import annotations

from enum import Enum, auto


class State(Enum):
    INIT_SENT = auto()  # initiator: IKE_SA_INIT request out
    AUTH_SENT = auto()  # initiator: IKE_AUTH request out
    INIT_DONE = auto()  # responder: IKE_SA_INIT answered, waiting for IKE_AUTH
    ESTABLISHED = auto()
    DELETING = auto()  # our DELETE of the IKE SA is out
    CLOSED = auto()


IKE_MOVES: dict[State, frozenset[State]] = {
    State.INIT_SENT: frozenset({State.AUTH_SENT, State.CLOSED}),
    # AUTH accepted; or the responder's AUTH rejected and we say so (2.21.2)
    State.AUTH_SENT: frozenset({State.ESTABLISHED, State.DELETING, State.CLOSED}),
    State.INIT_DONE: frozenset({State.ESTABLISHED, State.CLOSED}),
    State.ESTABLISHED: frozenset({State.DELETING, State.CLOSED}),
    State.DELETING: frozenset({State.CLOSED}),
    State.CLOSED: frozenset(),
}


class ChildState(Enum):
    ACTIVE = auto()
    REKEYING = auto()  # our CREATE_CHILD_SA(REKEY_SA) for it is queued or out
    REKEYED = auto()  # replaced by a new SA; waiting for its DELETE
    DELETING = auto()  # our DELETE for it is queued or out


CHILD_MOVES: dict[ChildState, frozenset[ChildState]] = {
    # we rekey it (1.3.3); the peer rekeyed it; we delete it (1.4.1)
    ChildState.ACTIVE: frozenset({ChildState.REKEYING, ChildState.REKEYED, ChildState.DELETING}),
    # the peer refused, try later; the peer's simultaneous rekey won (2.8.1); ours is done
    ChildState.REKEYING: frozenset({ChildState.ACTIVE, ChildState.REKEYED, ChildState.DELETING}),
    # the other exchange of a simultaneous rekey was ours after all: we delete it
    ChildState.REKEYED: frozenset({ChildState.DELETING}),
    ChildState.DELETING: frozenset(),
}


class StateError(RuntimeError):
    """A state move the tables do not allow: a bug in the core."""
