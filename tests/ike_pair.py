"""Two sans-IO endpoints wired back to back, for tests of the IKE core.

No sockets: a :class:`Pair` moves the core's Transmit records from one
Endpoint to the other, with optional drop/duplicate/reorder/rewrite hooks,
and a fake clock the test advances.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import ip_address

from cryptography.hazmat.primitives.asymmetric import ec

from pyike import proposals, ts
from pyike.ike import Addr, Endpoint, Event, IkeSa, SaPolicy, Transmit
from pyike.registry import (
    DhId,
    EncrId,
    EsnId,
    IdType,
    IntegId,
    IpProto,
    PrfId,
    ProtocolId,
    TransformType,
)
from pyike.wire import Proposal, Transform

HOME = (ip_address("192.0.2.1"), 500)
VM = (ip_address("192.0.2.2"), 500)
HOME_ID = (IdType.ID_FQDN, b"carinho.lan")
VM_ID = (IdType.ID_FQDN, b"namorar.example.com")
VPN0 = ip_address("2001:db8:c1da::1")
VPN1 = ip_address("2001:db8:c1da::2")


def ike_proposal(
    number: int = 1,
    encr: EncrId = EncrId.AES_GCM_16,
    bits: int = 256,
    prf: PrfId = PrfId.HMAC_SHA2_384,
    integ: IntegId | None = None,
    groups: tuple[DhId, ...] = (DhId.CURVE25519,),
) -> Proposal:
    t = [Transform(TransformType.ENCR, encr, bits), Transform(TransformType.PRF, prf)]
    if integ is not None:
        t.append(Transform(TransformType.INTEG, integ))
    t += [Transform(TransformType.DH, g) for g in groups]
    return Proposal(number, ProtocolId.IKE, b"", t)


def esp_proposal(
    number: int = 1, encr: EncrId = EncrId.AES_GCM_16, bits: int = 256, integ: IntegId | None = None
) -> Proposal:
    t = [Transform(TransformType.ENCR, encr, bits)]
    if integ is not None:
        t.append(Transform(TransformType.INTEG, integ))
    t.append(Transform(TransformType.ESN, EsnId.NO_ESN))
    return Proposal(number, ProtocolId.ESP, b"", t)


@dataclass
class Keys:
    home: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP384R1())
    )
    vm: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP384R1())
    )


def make_policy(
    name: str,
    *,
    local_id: tuple[int, bytes],
    peer_id: tuple[int, bytes],
    local_key: object,
    peer_public: object,
    local_net: object = VPN0,
    remote_net: object = VPN1,
    proto: int = IpProto.ANY,
    ike: list[Proposal] | None = None,
    esp: list[Proposal] | None = None,
    **kw: object,
) -> SaPolicy:
    def lookup(id_type: int, data: bytes) -> object | None:
        return peer_public if (id_type, data) == peer_id else None

    return SaPolicy(
        name=name,
        ike_proposals=ike or [ike_proposal()],
        child_proposals=esp or [esp_proposal()],
        local_id=local_id,
        peer_id=peer_id,
        local_key=local_key,
        peer_key=lookup,
        ts_local=[ts.from_network(ip_network_of(local_net), proto)],
        ts_remote=[ts.from_network(ip_network_of(remote_net), proto)],
        **kw,  # type: ignore[arg-type]
    )


def ip_network_of(a: object):
    from ipaddress import ip_network

    return ip_network(str(a))


Hook = Callable[[Transmit], list[Transmit]]


class Pair:
    """home (initiator side) and vm (responder side) endpoints on a fake wire."""

    def __init__(self, home_policy: SaPolicy, vm_policy: SaPolicy, **endpoint_kw: object) -> None:
        self.now = 1000.0
        self.home = Endpoint(lambda *_: home_policy, **endpoint_kw)  # type: ignore[arg-type]
        self.vm = Endpoint(lambda *_: vm_policy, **endpoint_kw)  # type: ignore[arg-type]
        self.home_policy = home_policy
        self.vm_policy = vm_policy
        self.hook: Hook = lambda t: [t]
        self.wire_log: list[tuple[str, Transmit]] = []
        self.home_events: list[Event] = []
        self.vm_events: list[Event] = []
        # Every IKE SA each side had, by our SPI, also once closed: events name SAs
        # by SPI, the tests look at the core's objects behind them.
        self.seen: dict[str, dict[bytes, IkeSa]] = {"home": {}, "vm": {}}

    def connect(self) -> None:
        self.home.connect(self.home_policy, HOME, VM, self.now)
        self._collect()

    def sa(self, side: str, spi: bytes) -> IkeSa:
        """The IKE SA an event of ``side`` names by ``spi``."""
        return self.seen[side][spi]

    def _deliver(self, t: Transmit, to: Endpoint, name: str) -> None:
        self.wire_log.append((name, t))
        to.receive(t.data, t.local, t.remote, self.now)

    def step(self) -> int:
        """One round: deliver what each side has queued right now."""
        return self.run(max_steps=1, must_settle=False)

    def run(self, max_steps: int = 200, must_settle: bool = True) -> int:
        """Move datagrams until both sides are quiet; returns datagrams moved."""
        moved = 0
        for _ in range(max_steps):
            out_home = [x for t in self.home.datagrams_to_send() for x in self.hook(t)]
            out_vm = [x for t in self.vm.datagrams_to_send() for x in self.hook(t)]
            for t in out_home:
                self._deliver(Transmit(t.data, t.local, t.remote), self.vm, "home->vm")
            for t in out_vm:
                self._deliver(Transmit(t.data, t.local, t.remote), self.home, "vm->home")
            self._collect()
            moved += len(out_home) + len(out_vm)
            if not out_home and not out_vm:
                return moved
        if must_settle:
            raise AssertionError("endpoints did not go quiet")
        return moved

    def _collect(self) -> None:
        self.seen["home"].update(self.home.sas)
        self.seen["vm"].update(self.vm.sas)
        while (e := self.home.next_event()) is not None:
            self.home_events.append(e)
        while (e := self.vm.next_event()) is not None:
            self.vm_events.append(e)

    def advance(self, seconds: float) -> None:
        """Move the clock, firing every timer that falls due on the way."""
        end = self.now + seconds
        for _ in range(10000):
            deadlines = [d for d in (self.home.get_timer(), self.vm.get_timer()) if d is not None]
            nxt = min(deadlines) if deadlines else None
            if nxt is None or nxt > end:
                break
            self.now = max(self.now, nxt)
            self.home.handle_timer(self.now)
            self.vm.handle_timer(self.now)
            self.run()
        self.now = end
        self._collect()

    def events(self, side: str, cls: type) -> list:
        return [
            e
            for e in (self.home_events if side == "home" else self.vm_events)
            if isinstance(e, cls)
        ]


def default_pair(
    keys: Keys | None = None,
    home_kw: dict | None = None,
    vm_kw: dict | None = None,
    **endpoint_kw: object,
) -> Pair:
    keys = keys or Keys()
    home = make_policy(
        "home",
        **{
            "local_id": HOME_ID,
            "peer_id": VM_ID,
            "local_key": keys.home,
            "peer_public": keys.vm.public_key(),
            **(home_kw or {}),
        },
    )
    vm = make_policy(
        "vm",
        **{
            "local_id": VM_ID,
            "peer_id": HOME_ID,
            "local_key": keys.vm,
            "peer_public": keys.home.public_key(),
            "local_net": VPN1,
            "remote_net": VPN0,
            **(vm_kw or {}),
        },
    )
    return Pair(home, vm, **endpoint_kw)


__all__ = [
    "HOME",
    "VM",
    "Addr",
    "Keys",
    "Pair",
    "default_pair",
    "esp_proposal",
    "ike_proposal",
    "make_policy",
    "proposals",
]
