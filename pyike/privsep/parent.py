"""The privileged parent: validate each request, execute it, answer; refuse the rest.

It keeps root (and so CAP_NET_ADMIN, CAP_NET_BIND_SERVICE and the key files)
but parses nothing that came from the network: only the fixed-layout messages
of :mod:`pyike.privsep.requests` from its own unprivileged child, each checked
by the pure :func:`~pyike.privsep.requests.parse_request` against a policy
taken from the configuration file the parent read itself. A refused message
is logged (rate-limited) and answered REFUSED; nothing of it is executed.
Messages that carry file descriptors, are truncated or over the size limit are
refused as well (the kernel closes descriptors that do not fit the empty
ancillary buffer).

Signals (SIGTERM, SIGINT, SIGHUP) are forwarded to the child, which does the
work (DELETEs on the way out, the reload through a RELOAD request); the parent
exits with the child's status once the child has closed its end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import pickle
import select
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pyike import config as cfg
from pyike import keys
from pyike.privsep import requests as rq

log = logging.getLogger("pyike.privsep")

REFUSAL_LOG_BURST = 50  # refusals logged one by one per window, then counted
REFUSAL_LOG_WINDOW = 10.0  # seconds


def policy_for(config: cfg.Config, ifname: str, ports: tuple[int, ...]) -> rq.PrivPolicy:
    """What the child may ask for under this configuration: its flows' addresses
    on our TUN device, its flows' remote networks as routes, our two ports."""
    from pyike.dataplane import local_addresses_and_routes

    local, remote = local_addresses_and_routes(config.policies)
    return rq.PrivPolicy(
        ifname=ifname,
        addresses=frozenset((a, a.max_prefixlen) for a in local),
        routes=frozenset(remote),
        ports=frozenset(ports),
    )


@dataclass(slots=True)
class ReloadResult:
    """A RELOAD's answer, pickled parent -> child (the trusted direction only)."""

    config: cfg.Config | None = None
    config_error: str | None = None
    key_pem: bytes | None = None
    key_error: tuple[str, str, str] | None = None  # KeyFileError(path, problem, remedy)
    certs: dict | None = None  # certstore_to_wire(): ca/, certs/, crls/ as DER


@dataclass
class Parent:
    """Serves one child over ``sock`` (SOCK_SEQPACKET)."""

    sock: socket.socket
    policy: rq.PrivPolicy
    keydir: Path = keys.DEFAULT_KEYDIR
    config_file: Path = Path("/etc/iked.conf")
    macros: dict[str, str] = field(default_factory=dict)
    refused: int = 0
    executed: int = 0
    _window_start: float = 0.0
    _window_count: int = 0
    _window_hidden: int = 0

    # ------------------------------------------------------------------ one message

    def handle(self, data: bytes, flags: int = 0) -> tuple[bytes, list[int]]:
        """The reply (and descriptors to pass) for one received message."""
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            what = "over the size limit" if flags & socket.MSG_TRUNC else "carrying descriptors"
            return self._refuse(f"message {what}"), []
        req = rq.parse_request(data, self.policy)
        if isinstance(req, rq.Refusal):
            return self._refuse(req.reason), []
        try:
            return self._execute(req)
        except Exception as e:  # a bug or a kernel surprise: answer, keep serving
            log.warning("privsep: %s failed: %s", type(req).__name__, e)
            return rq.encode_reply(rq.Status.FAILED, str(e).encode()[:1000]), []

    def _refuse(self, reason: str) -> bytes:
        self.refused += 1
        now = time.monotonic()
        if now - self._window_start >= REFUSAL_LOG_WINDOW:
            if self._window_hidden:
                log.warning("privsep: %d more requests refused", self._window_hidden)
            self._window_start, self._window_count, self._window_hidden = now, 0, 0
        if self._window_count < REFUSAL_LOG_BURST:
            self._window_count += 1
            log.warning("privsep: refused a request from the network process: %s", reason)
        else:
            self._window_hidden += 1
        return rq.encode_reply(rq.Status.REFUSED, reason.encode()[:1000])

    def _execute(self, req: rq.Request) -> tuple[bytes, list[int]]:
        self.executed += 1
        if isinstance(req, rq.AddressRequest | rq.RouteRequest):
            return self._netlink(req), []
        if isinstance(req, rq.UdpOpenRequest):
            return self._udp_open(req)
        if isinstance(req, rq.PeerKeyRequest):
            return self._peer_key(req), []
        return self._reload(), []

    def _netlink(self, req: rq.AddressRequest | rq.RouteRequest) -> bytes:
        from pyroute2 import IPRoute

        from pyike.dataplane import DataPlaneError, _netlink

        verb = "add" if req.add else "del"
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=req.ifname)
            if not found:
                return rq.encode_reply(rq.Status.FAILED, f"no device {req.ifname}".encode())
            idx = found[0]
            try:
                if isinstance(req, rq.AddressRequest):
                    what = f"address {verb} {req.address}/{req.prefixlen} dev {req.ifname}"
                    kw = {"index": idx, "address": str(req.address), "prefixlen": req.prefixlen}
                    _netlink(what, ipr.addr, verb, **kw)
                else:
                    verb = "replace" if req.add else "del"
                    what = f"route {verb} {req.network} dev {req.ifname}"
                    rkw: dict[str, object] = {"dst": str(req.network), "oif": idx}
                    if req.prefsrc is not None:
                        rkw["prefsrc"] = str(req.prefsrc)
                    try:
                        _netlink(what, ipr.route, verb, **rkw)
                    except DataPlaneError as e:
                        if verb == "del" and "No such process" in str(e):
                            pass  # ESRCH: already gone, as wanted
                        else:
                            raise
            except DataPlaneError as e:
                return rq.encode_reply(rq.Status.FAILED, str(e).encode())
        log.info("privsep: %s", what)
        return rq.encode_reply(rq.Status.OK)

    def _udp_open(self, req: rq.UdpOpenRequest) -> tuple[bytes, list[int]]:
        from pyike.driver import enable_gro, open_udp

        family = socket.AF_INET6 if req.address.version == 6 else socket.AF_INET
        try:
            s = open_udp(family, req.port, str(req.address))
        except OSError as e:
            return rq.encode_reply(rq.Status.FAILED, (e.strerror or str(e)).encode()), []
        if req.port != min(self.policy.ports):
            enable_gro(s)  # the NAT-T port carries ESP (Driver.open does the same)
        log.info("privsep: UDP socket on [%s]:%d for the network process", req.address, req.port)
        fd = os.dup(s.sock.fileno())
        s.sock.close()
        return rq.encode_reply(rq.Status.OK), [fd]

    def _peer_key(self, req: rq.PeerKeyRequest) -> bytes:
        try:
            key = keys.KeyStore(self.keydir).peer_public(req.id_type, req.ident)
        except keys.KeyFileError as e:
            body = pickle.dumps((str(e.path), e.problem, e.remedy))
            return rq.encode_reply(rq.Status.FAILED, body)
        return rq.encode_reply(rq.Status.OK, keys.public_key_der(key) if key else b"")

    def _reload(self) -> bytes:
        result = ReloadResult()
        try:
            result.config = cfg.load_config(
                self.config_file, self.macros, refuse_loose_permissions=True
            )
        except cfg.ConfigError as e:
            result.config_error = str(e)
        except OSError as e:
            result.config_error = f"{self.config_file}: {e.strerror}"
        store = keys.KeyStore(self.keydir)
        try:
            result.key_pem = keys.private_key_pem(store.local_private())
        except keys.KeyFileError as e:
            result.key_error = (str(e.path), e.problem, e.remedy)
        from pyike import certs

        result.certs = certstore_to_wire(certs.CertStore.load(self.keydir))
        if result.config is not None:
            old = self.policy
            new = policy_for(result.config, old.ifname, tuple(old.ports))
            self.policy = dataclasses.replace(
                new, old_addresses=old.addresses, old_routes=old.routes
            )
        log.info("privsep: configuration and keys re-read for the network process")
        return rq.encode_reply(rq.Status.OK, pickle.dumps(result))

    # ------------------------------------------------------------------ the loop

    def serve_requests(self) -> None:
        """Answer requests until the other end is closed."""
        while True:
            try:
                data, _anc, flags, _addr = self.sock.recvmsg(rq.MAX_REQUEST + 1, 0)
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
            except OSError as e:
                if e.errno in (errno.ECONNRESET, errno.EPIPE):
                    return
                raise
            if not data and not flags and _peer_closed(self.sock):
                if self._window_hidden:
                    log.warning("privsep: %d more requests refused", self._window_hidden)
                return  # the child closed its end: it is exiting
            reply, fds = self.handle(data, flags)
            try:
                if fds:
                    socket.send_fds(self.sock, [reply], fds)
                else:
                    self.sock.send(reply)
            except OSError as e:
                log.warning("privsep: reply not delivered: %s", e.strerror)
            finally:
                for fd in fds:
                    os.close(fd)

    def serve(self, child_pid: int, pending_hup: Callable[[], bool] | None = None) -> int:
        """Forward signals to the child and serve it until it exits; its exit status.
        ``pending_hup``: whether a SIGHUP came before forwarding was in place."""
        forward = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}

        def pass_on(signum: int, _frame: object) -> None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child_pid, signum)

        for sig in forward:
            signal.signal(sig, pass_on)
        if pending_hup is not None and pending_hup():
            pass_on(signal.SIGHUP, None)
        try:
            self.serve_requests()
            # Still forwarding while the child finishes (a signal now must not kill
            # the parent before it reports the child's status).
            _pid, status = os.waitpid(child_pid, 0)
        finally:
            for sig in forward:
                signal.signal(sig, signal.SIG_DFL if sig != signal.SIGINT else signal.SIG_IGN)
        code = os.waitstatus_to_exitcode(status)
        return 128 - code if code < 0 else code


def _peer_closed(sock: socket.socket) -> bool:
    """An empty read is the peer's close or an empty message: POLLHUP tells which."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return any(events & select.POLLHUP for _fd, events in poller.poll(0))


def certstore_to_wire(store: object) -> dict:
    """A CertStore as plain data (certificates and CRLs as DER) for a RELOAD answer."""
    from cryptography.hazmat.primitives.serialization import Encoding

    return {
        "keydir": str(store.keydir),  # type: ignore[attr-defined]
        "cas": [c.public_bytes(Encoding.DER) for c in store.cas],  # type: ignore[attr-defined]
        "ca_paths": [str(p) for p in store.ca_paths],  # type: ignore[attr-defined]
        "host_certs": [
            (str(p), c.public_bytes(Encoding.DER))
            for p, c in store.host_certs  # type: ignore[attr-defined]
        ],
        "crls": [
            (str(p), c.public_bytes(Encoding.DER))
            for p, c in store.crls  # type: ignore[attr-defined]
        ],
        "problems": list(store.problems),  # type: ignore[attr-defined]
    }


def certstore_from_wire(data: dict) -> object:
    """The CertStore that certstore_to_wire() described (in the child)."""
    from cryptography import x509

    from pyike import certs

    return certs.CertStore(
        Path(data["keydir"]),
        cas=[x509.load_der_x509_certificate(d) for d in data["cas"]],
        ca_paths=[Path(p) for p in data["ca_paths"]],
        host_certs=[(Path(p), x509.load_der_x509_certificate(d)) for p, d in data["host_certs"]],
        crls=[(Path(p), x509.load_der_x509_crl(d)) for p, d in data["crls"]],
        problems=list(data["problems"]),
    )
