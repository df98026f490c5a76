"""The unprivileged side's view of the parent: requests, keys and reloads.

Requests are rare (a reload, a peer's public key at IKE_AUTH, a route after a
change) and the parent answers within milliseconds, so they are plain blocking
request/answer pairs on the socketpair, bounded by a timeout; the data plane
never goes through here.
"""

from __future__ import annotations

import logging
import pickle
import socket
from ipaddress import ip_network

from pyike import keys
from pyike.privsep import requests as rq
from pyike.privsep.drop import PrivsepError
from pyike.privsep.parent import ReloadResult
from pyike.registry import IdType

log = logging.getLogger("pyike.privsep")

REQUEST_TIMEOUT = 10.0  # seconds; the parent answers in milliseconds


class PrivClient:
    """Sends typed requests to the privileged parent and reads its answers."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.settimeout(REQUEST_TIMEOUT)

    def request(self, req: rq.Request) -> tuple[rq.Status, bytes, list[int]]:
        try:
            self.sock.send(rq.encode_request(req))
            msg, fds, _flags, _addr = socket.recv_fds(self.sock, rq.MAX_REPLY, 1)
        except OSError as e:
            raise PrivsepError(f"privileged parent unreachable: {e}") from e
        if not msg:
            raise PrivsepError("privileged parent unreachable: it closed the socket")
        try:
            status, body = rq.parse_reply(msg)
        except ValueError as e:
            for fd in fds:
                socket.close(fd)
            raise PrivsepError(str(e)) from e
        return status, body, fds

    def _simple(self, req: rq.Request) -> None:
        status, body, _ = self.request(req)
        if status != rq.Status.OK:
            raise PrivsepError(f"{status.name.lower()}: {body.decode(errors='replace')}")

    # ------------------------------------------------------------------ requests

    def address(self, add: bool, ifname: str, address: rq.Address) -> None:
        self._simple(rq.AddressRequest(add, ifname, address, address.max_prefixlen))

    def route(
        self, add: bool, ifname: str, network: rq.Network, prefsrc: rq.Address | None
    ) -> None:
        self._simple(rq.RouteRequest(add, ifname, network, prefsrc))

    def open_udp(self, address: rq.Address, port: int) -> socket.socket:
        status, body, fds = self.request(rq.UdpOpenRequest(address, port))
        if status != rq.Status.OK or len(fds) != 1:
            for fd in fds:
                socket.close(fd)
            raise PrivsepError(f"UDP [{address}]:{port}: {body.decode(errors='replace')}")
        return socket.socket(fileno=fds[0])

    def peer_public(self, id_type: IdType | int, ident: object) -> keys.PublicKey | None:
        status, body, _ = self.request(rq.PeerKeyRequest(IdType(id_type), str(ident)))
        if status == rq.Status.FAILED:
            path, problem, remedy = pickle.loads(body)  # from our parent: trusted
            raise keys.KeyFileError(path, problem, remedy)
        if status != rq.Status.OK:
            raise keys.KeyFileError("pubkeys/", f"lookup refused: {body.decode(errors='replace')}")
        return keys.load_public_key_der(body) if body else None

    def reload(self) -> ReloadResult:
        status, body, _ = self.request(rq.ReloadRequest())
        if status != rq.Status.OK:
            raise PrivsepError(f"reload: {body.decode(errors='replace')}")
        result = pickle.loads(body)  # the parent is the trusted side
        assert isinstance(result, ReloadResult)
        return result


class RemoteKeyStore:
    """A KeyStore for the unprivileged process: our private key as the parent last
    read it, peers' public keys looked up by the parent (the key directory may be
    unreadable to us, as iked's is)."""

    def __init__(self, client: PrivClient, private_pem: bytes | None = None) -> None:
        self.client = client
        self.private_pem = private_pem
        self.private_error: tuple[str, str, str] | None = None

    def local_private(self) -> keys.PrivateKey:
        if self.private_pem is None:
            raise keys.KeyFileError(*(self.private_error or ("private/local.key", "not read", "")))
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        return load_pem_private_key(self.private_pem, None)  # type: ignore[return-value]

    def peer_public(self, id_type: IdType | int, ident: object) -> keys.PublicKey | None:
        try:
            return self.client.peer_public(id_type, ident)
        except PrivsepError as e:
            raise keys.KeyFileError("pubkeys/", str(e)) from e


class SwitchableKeyStore:
    """What the daemon's policies hold: a real KeyStore while root at start-up, the
    RemoteKeyStore once the process dropped privileges (same policies, no reload)."""

    def __init__(self, backend: object) -> None:
        self.backend = backend

    def local_private(self) -> keys.PrivateKey:
        return self.backend.local_private()  # type: ignore[attr-defined]

    def peer_public(self, id_type: IdType | int, ident: object) -> keys.PublicKey | None:
        return self.backend.peer_public(id_type, ident)  # type: ignore[attr-defined]


def sync_tun(
    client: PrivClient, dp: object, local: list, remote: list, sources: dict | None = None
) -> list[str]:
    """Make the TUN device's addresses and routes those of ``local``/``remote``
    (a reload changed the flows, or a network change may have lost a route): add
    and replace through the parent, remove what no policy has any more. Returns
    what failed, for the log."""
    failed = []
    ifname = dp.tun_name  # type: ignore[attr-defined]
    have_addr: set = dp._addresses  # type: ignore[attr-defined]
    have_route: set = dp._routes  # type: ignore[attr-defined]
    want_addr = {(str(a), a.max_prefixlen): a for a in local}
    want_route = {(str(n.network_address), n.prefixlen): n for n in remote}
    for key, a in want_addr.items():
        try:
            client.address(True, ifname, a)
            have_addr.add(key)
        except PrivsepError as e:
            failed.append(f"address {a}: {e}")
    for key, net in want_route.items():
        src = (sources or {}).get(net) or next((a for a in local if a.version == net.version), None)
        try:
            client.route(True, ifname, net, src)
            have_route.add(key)
        except PrivsepError as e:
            failed.append(f"route {net}: {e}")
    for key in sorted(have_route - set(want_route)):
        try:
            client.route(False, ifname, ip_network(f"{key[0]}/{key[1]}"), None)
            have_route.discard(key)
        except PrivsepError as e:
            failed.append(f"route {key[0]}/{key[1]}: {e}")
    for key in sorted(have_addr - set(want_addr)):
        try:
            from ipaddress import ip_address

            client.address(False, ifname, ip_address(key[0]))
            have_addr.discard(key)
        except PrivsepError as e:
            failed.append(f"address {key[0]}: {e}")
    return failed
