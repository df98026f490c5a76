"""Start-up with privilege separation: prepare as root, fork, drop, run.

1. As root, the daemon does what needs privilege once (Daemon.prepare): reads
   the configuration and keys, binds UDP 500/4500, creates the TUN device with
   its addresses and routes. Other root-only handles (the control socket, bound
   root-owned 0600 by the service code) are passed in ``handover``.
2. A SOCK_SEQPACKET socketpair; fork.
3. The child closes the parent's end, drops to the unprivileged user (checked:
   no capability left, not able to read the private key file), points the
   daemon's key store and configuration reads at the parent, and runs the event
   loop: it owns the TUN fd and the UDP sockets (inherited), so packets never
   cross a process boundary.
4. The parent closes everything the child owns (sockets, TUN, handover) and
   serves the child's requests until it exits (pyike.privsep.parent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable, Sequence
from pathlib import Path

from pyike import keys
from pyike.privsep import drop
from pyike.privsep.child import PrivClient, RemoteKeyStore, SwitchableKeyStore, sync_tun
from pyike.privsep.drop import PrivsepError
from pyike.privsep.parent import Parent, certstore_from_wire, policy_for

log = logging.getLogger("pyike.privsep")

PARENT_SNDBUF = 8 * 1024 * 1024  # a RELOAD answer is one SEQPACKET message


def _key_readable(path: Path) -> bool:
    try:
        with path.open("rb"):
            return True
    except OSError:
        return False


def preflight(user_name: str | None) -> drop.RunAs:
    """Root, and a user to drop to: checked before anything is opened."""
    if os.geteuid() != 0:
        raise PrivsepError(
            "must be started as root: it binds UDP 500/4500 and creates the TUN device, "
            "then runs its network process as an unprivileged user"
        )
    return drop.find_user(user_name)


def run_separated(
    daemon: object,
    user_name: str | None = None,
    *,
    handover: Sequence[socket.socket | int] = (),
    child_setup: Callable[[PrivClient], None] | None = None,
) -> int:
    """Run ``daemon`` (a pyike.daemon.Daemon) privilege-separated; its exit status.

    ``handover``: descriptors opened by root before the drop that the unprivileged
    process keeps (the parent closes its copies). ``child_setup`` runs in the child
    after the drop, before its event loop starts (to hook those descriptors in).
    Raises PrivsepError (not root, no such user) or the daemon's start-up errors.
    """
    user = preflight(user_name)
    options = daemon.options  # type: ignore[attr-defined]
    store = SwitchableKeyStore(keys.KeyStore(options.keydir))
    daemon.key_store = lambda: store  # type: ignore[attr-defined]
    from pyike import certs

    cert_store: list = []  # the latest CertStore: read as root now, via RELOAD later

    def read_certs_as_root() -> certs.CertStore:
        cert_store[:] = [certs.CertStore.load(options.keydir)]
        return cert_store[0]

    daemon.cert_store = read_certs_as_root  # type: ignore[attr-defined]
    nl_log = logging.getLogger("pyroute2")
    if nl_log.level == logging.NOTSET:  # its import resets it; -vv would show every message
        nl_log.setLevel(logging.INFO)
    # A SIGHUP during start-up is kept for when the daemon runs (its default kills).
    early_hup: list[int] = []
    signal.signal(signal.SIGHUP, lambda signum, _f: early_hup.append(signum))
    daemon.prepare()  # type: ignore[attr-defined]
    dp = getattr(daemon, "dataplane", None)
    ifname = dp.tun_name if dp is not None else ""
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with contextlib.suppress(OSError):
        parent_sock.setsockopt(socket.SOL_SOCKET, 32, PARENT_SNDBUF)  # SO_SNDBUFFORCE
    parent_pid = os.getpid()
    before_fork = len(early_hup)
    pid = os.fork()
    if pid == 0:  # the child's copy holds the SIGHUPs before the fork, and its own
        parent_sock.close()
        return _child(
            daemon, user, parent_pid, child_sock, store, cert_store, early_hup, child_setup
        )
    child_sock.close()
    # The child owns these now; the parent keeps no handle on the network.
    # Driver.close(), not its socket table: every socket it has (the reuseport pair on
    # port 500 included) must be closed here, or the kernel could steer datagrams to a
    # socket that nobody reads.
    daemon.driver.close()  # type: ignore[attr-defined]
    if dp is not None and dp.tun is not None:
        dp.tun.close()  # the device stays: the child holds its own descriptor
        dp.tun, dp.fd = None, -1
    for h in handover:
        with contextlib.suppress(OSError):
            if isinstance(h, int):
                os.close(h)
            else:
                h.close()  # the object knows it is closed: a later close() is a no-op
    log.info("privsep: network process %d runs as %s (uid %d)", pid, user.name, user.uid)
    parent = Parent(
        parent_sock,
        policy_for(daemon.config, ifname, tuple(options.ports)),  # type: ignore[attr-defined]
        keydir=options.keydir,
        config_file=options.config_file,
        macros=dict(options.macros),
    )
    # SIGHUPs that came to the parent after the fork, before it forwards them.
    return parent.serve(pid, pending_hup=lambda: len(early_hup) > before_fork)


def _child(
    daemon: object,
    user: drop.RunAs,
    parent_pid: int,
    sock: socket.socket,
    store: SwitchableKeyStore,
    cert_store: list,
    early_hup: list[int],
    child_setup: Callable[[PrivClient], None] | None,
) -> int:
    from pyike.daemon import DaemonError

    options = daemon.options  # type: ignore[attr-defined]
    drop.drop_privileges(user, parent_pid)
    private = keys.KeyStore(options.keydir).private_key_path
    if _key_readable(private):
        raise PrivsepError(
            f"{private} is readable by user {user.name!r}: the network process must not "
            f"be able to read the private key (chmod 600, owned by root, under a 0700 "
            f"directory)"
        )
    client = PrivClient(sock)
    remote = RemoteKeyStore(client)
    store.backend = remote

    def read_config() -> object:
        result = client.reload()
        remote.private_pem, remote.private_error = result.key_pem, result.key_error
        if result.config is None:
            raise DaemonError(result.config_error or "configuration not read")
        if result.certs is not None:
            cert_store[0] = certstore_from_wire(result.certs)
        return result.config

    daemon.read_config = read_config  # type: ignore[attr-defined]
    daemon.cert_store = lambda: cert_store[0]  # type: ignore[attr-defined]
    dp = getattr(daemon, "dataplane", None)

    def tun_follows_config() -> None:
        if dp is None or daemon.config is None:  # type: ignore[attr-defined]
            return
        local, remote_nets, _family, sources = daemon.tun_plan()  # type: ignore[attr-defined]
        for problem in sync_tun(client, dp, local, remote_nets, sources):
            log.warning("TUN %s: %s", dp.tun_name, problem)

    daemon.after_reload.append(tun_follows_config)  # type: ignore[attr-defined]
    daemon.after_network_change.append(tun_follows_config)  # type: ignore[attr-defined]
    if child_setup is not None:
        child_setup(client)
    log.info(
        "privsep: running as %s (uid %d, gid %d), no capabilities", user.name, user.uid, user.gid
    )

    def replay_early_hup() -> None:
        if early_hup:  # before the loop's handler was in place: reload now
            os.kill(os.getpid(), signal.SIGHUP)

    async def main() -> None:
        # Runs once daemon.run() first waits, i.e. with its signal handlers installed.
        asyncio.get_running_loop().call_soon(replay_early_hup)
        await daemon.run()  # type: ignore[attr-defined]

    asyncio.run(main())
    return 0
