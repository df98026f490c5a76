"""The IKEv2 core, sans-IO (RFC 7296). Nothing here touches a socket, a clock or
a thread: an :class:`Endpoint` takes datagrams, the time and API calls and
returns datagrams, a timer deadline and events. docs/architecture.md has the map.

  endpoint.py       Endpoint: demultiplexing, responder creation, INVALID_IKE_SPI, queries
  guard.py          admission control: the cookie fast path, bounded tables, rates
  sa.py             IkeSa: shared SA state, message protection, the state table, timers
  states.py         State, ChildState and the moves allowed between them
  requests.py       Request (one class per kind of our requests) and the RequestWindow
  init.py           IKE_SA_INIT, both roles: cookies, INVALID_KE, NAT detection, SK_*
  auth.py           IKE_AUTH: identities, AUTH (2.15), the first Child SA
  create_child.py   CREATE_CHILD_SA: Child SAs new and rekeyed, IKE SA rekeys
  informational.py  INFORMATIONAL: DELETE, liveness
  mobike.py         MOBIKE (RFC 4555); fragments.py: IKE fragmentation (RFC 7383)
  child_negotiation.py  proposals, selectors and KEYMAT of a Child SA (2.9, 2.17)
  child.py, policy.py, events.py, common.py  ChildSa; SaPolicy; events; shared bits
"""

from pyike.ike.child import ChildSa
from pyike.ike.common import Addr, id_text
from pyike.ike.endpoint import Endpoint
from pyike.ike.events import (
    ChildSaCreated,
    ChildSaDeleted,
    ChildSaInfo,
    Event,
    IkeKeysDerived,
    IkeSaClosed,
    IkeSaEstablished,
    InitialContact,
    PeerLostSa,
    PeerMoved,
    Transmit,
)
from pyike.ike.policy import SaPolicy
from pyike.ike.sa import IkeSa
from pyike.ike.states import ChildState, State, StateError

__all__ = [
    "Addr",
    "ChildSa",
    "ChildSaCreated",
    "ChildSaDeleted",
    "ChildSaInfo",
    "ChildState",
    "Endpoint",
    "Event",
    "IkeKeysDerived",
    "IkeSa",
    "IkeSaClosed",
    "IkeSaEstablished",
    "InitialContact",
    "PeerLostSa",
    "PeerMoved",
    "SaPolicy",
    "State",
    "StateError",
    "Transmit",
    "id_text",
]
