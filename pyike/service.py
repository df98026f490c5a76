"""The daemon as a service: control socket verbs, monitor events, sd_notify.

:class:`Service` hangs on a :class:`pyike.daemon.Daemon` through its hooks (events,
start, stop, reload) and adds what an operator needs: ``pyikectl``'s verbs on the
control socket (pyike.control), a ``monitor`` stream with one line per event, and
the systemd notifications (pyike.sdnotify). The SA facts come from pyike.status.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pyike import decode, ladder, logs, status
from pyike.control import ControlError, ControlServer, ControlSocket, Request
from pyike.daemon import ike_key_record
from pyike.ike import (
    Addr,
    ChildSaCreated,
    ChildSaDeleted,
    Event,
    IkeKeysDerived,
    IkeSaClosed,
    IkeSaEstablished,
    InitialContact,
    PeerLostSa,
    State,
    id_text,
)
from pyike.registry import HeaderFlag
from pyike.sdnotify import Notifier

MAX_LADDER_KEYS = 4096  # IKE SAs whose messages the ladder monitor can decrypt

log = logging.getLogger("pyike")


def _sa_facts(
    spi: bytes, policy: str, peer: Addr | None, peer_id: tuple[int, bytes] | None
) -> dict[str, Any]:
    """The IKE SA facts of a monitor record, from an event's values."""
    return {
        "sa": spi.hex(),
        "policy": policy,
        "peer": f"[{peer[0]}]:{peer[1]}" if peer is not None else None,
        "peer_id": id_text(*peer_id) if peer_id else None,
    }


def event_record(event: Event) -> dict[str, Any] | None:
    """A core event as a monitor record: ``event`` (its kind), facts, ``line`` (text)."""
    if isinstance(event, IkeSaEstablished):
        kind = "ike-rekeyed" if event.replaces is not None else "ike-established"
        rec = {"event": kind, **_sa_facts(event.spi, event.policy, event.peer, event.peer_id)}
        alg = event.suite.describe() if event.suite else ""
        rec["line"] = (
            f"IKE SA {rec['sa']} {'rekeyed' if event.replaces else 'established'}: policy "
            f"'{rec['policy']}' peer {rec['peer']} {rec['peer_id'] or ''} ({alg})"
        )
        if event.replaces is not None:
            rec["replaces"] = event.replaces.hex()
            rec["line"] += f", replaces {rec['replaces']}"
        return rec
    if isinstance(event, IkeSaClosed):
        facts = _sa_facts(event.spi, event.policy, event.peer, event.peer_id)
        rec = {"event": "ike-closed", **facts, "reason": event.reason}
        rec["line"] = f"IKE SA {rec['sa']} closed: policy '{rec['policy']}': {event.reason}"
        return rec
    if isinstance(event, ChildSaCreated):
        c = event.child
        kind = "child-rekeyed" if event.replaces is not None else "child-created"
        rec = {
            "event": kind,
            **_sa_facts(event.ike_spi, c.policy, c.remote, event.peer_id),
            "spi_in": f"0x{c.spi_in:08x}",
            "spi_out": f"0x{c.spi_out:08x}",
        }
        rec["line"] = (
            f"Child SA in {rec['spi_in']} out {rec['spi_out']} "
            f"{'rekeyed' if event.replaces else 'created'}: policy '{rec['policy']}' "
            f"({c.suite.describe()})"
        )
        if event.replaces is not None:
            rec["replaces"] = f"0x{event.replaces:08x}"
            rec["line"] += f", replaces in {rec['replaces']}"
        return rec
    if isinstance(event, ChildSaDeleted):
        c = event.child
        rec = {
            "event": "child-deleted",
            **_sa_facts(event.ike_spi, c.policy, c.remote, event.peer_id),
            "spi_in": f"0x{c.spi_in:08x}",
            "spi_out": f"0x{c.spi_out:08x}",
            "reason": event.reason,
        }
        rec["line"] = f"Child SA in {rec['spi_in']} out {rec['spi_out']} deleted: {event.reason}"
        return rec
    if isinstance(event, PeerLostSa):
        facts = _sa_facts(event.spi, event.policy, event.peer, event.peer_id)
        rec = {"event": "peer-lost-sa", **facts}
        rec["line"] = f"IKE SA {rec['sa']}: the peer answered INVALID_IKE_SPI"
        return rec
    if isinstance(event, InitialContact):
        facts = _sa_facts(event.spi, event.policy, event.peer, event.peer_id)
        rec = {"event": "initial-contact", **facts}
        rec["line"] = f"IKE SA {rec['sa']}: INITIAL_CONTACT from {id_text(*event.peer_id)}"
        return rec
    return None


class Service:
    """Control socket, monitor and sd_notify around one Daemon."""

    def __init__(
        self,
        daemon: Any,
        control_socket: ControlSocket | None = None,
        notifier: Notifier | None = None,
        allowed_gid: int | None = None,
    ) -> None:
        self.daemon = daemon
        self.notifier = notifier if notifier is not None else Notifier()
        self.control = (
            ControlServer(control_socket.sock, self.handle, allowed_gid, daemon.options.limits)
            if control_socket is not None
            else None
        )
        daemon.observers.append(self.on_event)
        # pyikectl monitor --ladder: every IKE message sent or received, drawn in RFC 7296
        # notation here in the daemon (decrypted with the SAs' keys, which never leave it).
        self._ladder_keys: dict[tuple[bytes, bytes], Any] = {}
        self._count_message = daemon.driver.on_ike_message
        daemon.driver.on_ike_message = self.on_ike_message
        daemon.on_started.append(self.started)
        daemon.on_stopping.append(self.stopping)
        daemon.reload_hooks.append(self.reload_hook)
        self._last_status = ""
        self._serving: object | None = None

    # ------------------------------------------------------------------ lifecycle

    def started(self) -> None:
        """Policies loaded, sockets bound, active policies started: serve the control
        socket (already listening: clients that came early wait in its backlog), READY.

        This runs in the daemon's event loop, in whichever process runs it: with
        privilege separation the unprivileged one, which inherited the socket and the
        notifier (made before the fork, so $WATCHDOG_PID still names us)."""
        import asyncio

        loop = asyncio.get_running_loop()
        if self.control is not None:
            task = loop.create_task(self.control.start())
            task.add_done_callback(_log_failure)
            self._serving = task
        self.notifier.ready(self.status_line())
        self.notifier.start_watchdog(loop)
        self.publish({"event": "started", "line": "pyike started"})

    def stopping(self) -> None:
        self.notifier.stopping()
        self.publish({"event": "stopping", "line": "pyike stopping"})

    def close(self) -> None:
        if self.control is not None:
            self.control.close()
        self.notifier.close()

    def reload_hook(self, phase: str, error: str | None = None) -> None:
        """The daemon reloads (``start``) or has reloaded (``done``), from SIGHUP or us."""
        if phase == "start":
            self.notifier.reloading()
            return
        self.notifier.ready(self.status_line())
        line = f"reload failed: {error}" if error else "configuration reloaded"
        self.publish({"event": "reload", "error": error, "line": line})

    # ------------------------------------------------------------------ events

    def status_line(self) -> str:
        ike, child = status.counts(self.daemon)
        return f"{ike} IKE SA{'s' if ike != 1 else ''}, {child} Child SA{'s' if child != 1 else ''}"

    def on_event(self, event: Event) -> None:
        self._note_keys(event)
        rec = event_record(event)
        if rec is None:
            return
        self.daemon.counters.event(rec["event"])
        if isinstance(event, ChildSaDeleted):
            dp = getattr(self.daemon, "dataplane", None)
            self.daemon.counters.retire_child(status.child_row(event.child, dp, 0.0))
        self.publish(rec)
        line = self.status_line()
        if line != self._last_status:
            self._last_status = line
            self.notifier.status(line)

    def on_ike_message(self, data: bytes, outbound: bool) -> None:
        if self._count_message is not None:
            self._count_message(data, outbound)
        if self.control is None or not self.control.monitors or len(data) < 28:
            return
        # The I flag says the sender is the IKE SA's original initiator (RFC 7296 3.1):
        # the ladder's left lifeline, whatever our role.
        direction = "-->" if data[19] & HeaderFlag.INITIATOR else "<--"
        try:
            text = ladder.render_message(data, direction, keys=self._ladder_keys)
        except Exception as e:  # a drawing for a watcher must never stop the daemon
            text = f"{direction} ({len(data)} bytes, not drawn: {e})"
        self.publish({"event": "message", "outbound": outbound, "line": text})

    def _note_keys(self, event: Event) -> None:
        if isinstance(event, IkeKeysDerived):
            if len(self._ladder_keys) >= MAX_LADDER_KEYS:
                self._ladder_keys.pop(next(iter(self._ladder_keys)))
            self._ladder_keys.update(decode.ike_ciphers([ike_key_record(event)]))
        elif isinstance(event, IkeSaClosed):
            self._ladder_keys.pop((event.spi_i, event.spi_r), None)

    def publish(self, rec: dict[str, Any]) -> None:
        if self.control is not None:
            self.control.publish({"time": time.time(), **rec})

    # ------------------------------------------------------------------ verbs

    def handle(self, request: Request) -> Any:
        d = self.daemon
        verb, arg = request.verb, request.arg
        if verb == "show sa":
            return status.sas(d)
        if verb == "show flows":
            return status.flows(d)
        if verb == "show stats":
            return status.stats(d)
        if verb == "reload":
            error = d.reload()
            if error:
                raise ControlError(f"reload failed, the old configuration stays: {error}")
            return {"policies": len(d.policies)}
        if verb in ("reset all", "reset sa"):
            return {"deleted": self.reset(lambda sa: True, verb)}
        if verb == "reset policy":
            if arg not in {str(key) for key in d.policies}:
                raise ControlError(f"no policy '{arg}' (pyikectl show flows lists them)")
            return {"deleted": self.reset(lambda sa: _policy_name(sa) == arg, f"{verb} {arg}")}
        if verb == "reset id":
            return {"deleted": self.reset(lambda sa: _id_matches(sa, arg or ""), f"{verb} {arg}")}
        if verb == "log verbose":
            logs.set_verbosity(max(1, logs.verbosity()))
            return {"verbosity": logs.verbosity()}
        if verb == "log brief":
            logs.set_verbosity(0)
            return {"verbosity": 0}
        if verb == "passive":
            d.set_passive(True)
            self.publish({"event": "passive", "line": "passive: no new initiations"})
            return {"mode": "passive"}
        if verb == "active":
            d.set_passive(False)
            self.publish({"event": "active", "line": "active: active policies start"})
            return {"mode": "active"}
        raise ControlError(f"verb '{verb}' is not handled")  # parse_request knows more

    def reset(self, which: Any, what: str) -> int:
        """DELETE (RFC 7296 1.4.1) every IKE SA ``which`` picks; the daemon's backoff
        then starts the active policies again (their first retry is 1 s later)."""
        d = self.daemon
        now = d.driver.now()
        n = 0
        for sa in list(d.endpoint.sas.values()):
            if sa.state == State.CLOSED or not which(sa):
                continue
            n += 1
            if sa.state == State.ESTABLISHED:
                sa.delete(now, f"pyikectl {what}")
            else:
                sa.drop(now, f"pyikectl {what}")
        log.info("pyikectl %s: deleting %d IKE SA(s)", what, n)
        d.driver.pump()
        return n


def _policy_name(sa: Any) -> str:
    """The policy as pyikectl names it: its key (``name``, ``name#2`` for a second
    policy of the same name), or the plain name."""
    key = getattr(sa.policy, "key", None)
    return str(key) if key is not None else sa.policy.name


def _log_failure(task: Any) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("control socket not served: %s", task.exception())


def _id_matches(sa: Any, wanted: str) -> bool:
    ident = sa.peer_id or sa.policy.peer_id
    if ident is None:
        return False
    text = id_text(*ident)  # fqdn/namorar.example.com
    return wanted in (text, text.partition("/")[2])
