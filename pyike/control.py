"""The control socket: ``pyikectl`` talks to the daemon over a Unix stream socket.

Two halves, because of privilege separation: :func:`bind_control_socket` runs on the
privileged side before privileges are dropped (the socket is root's, mode 0600, or
0660 with a group); :class:`ControlServer` serves that already-listening socket in
the unprivileged process's event loop (the privileged parent never parses it).

Protocol (one request per connection, like ikectl's imsg socket but JSON):

- the client sends one line: a JSON object ``{"verb": "show sa", "arg": null}``,
  at most :data:`MAX_REQUEST` bytes, ended by ``\\n``;
- the daemon answers one line ``{"ok": true, "data": ...}`` or
  ``{"ok": false, "error": "..."}`` and closes; ``monitor`` instead answers
  ``{"ok": true}`` and then streams one JSON line per event until the client goes.

The parser is strict: unknown keys, unknown verbs, a missing or extra argument, a
non-UTF-8 or oversized line are refused with an error reply, never executed.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyike.limits import DEFAULT_LIMITS, Limits

log = logging.getLogger("pyike.control")

DEFAULT_SOCKET = Path("/run/pyike.sock")  # like iked's /var/run/iked.sock
# conf/pyike.service's (ProtectSystem=strict leaves only its RuntimeDirectory writable)
SERVICE_SOCKET = Path("/run/pyike/pyike.sock")
# Bytes of one request line (the longest valid one is far shorter) and connections served
# at once (monitors included): pyike/limits.py, changed with --limit.
MAX_REQUEST = DEFAULT_LIMITS.control_request_bytes
MAX_ARG = 255  # a policy name or an ID
REQUEST_TIMEOUT = 5.0  # seconds a client may take to send its request
MAX_CLIENTS = DEFAULT_LIMITS.control_clients
MONITOR_QUEUE = 256  # events buffered for one slow monitor before it is cut off

# verb -> whether it takes an argument
VERBS: dict[str, bool] = {
    "show sa": False,
    "show flows": False,
    "show stats": False,
    "reload": False,
    "reset all": False,
    "reset sa": False,
    "reset policy": True,
    "reset id": True,
    "log verbose": False,
    "log brief": False,
    "monitor": False,
    "active": False,
    "passive": False,
}


class ControlError(Exception):
    """A request we refuse, or a socket we cannot create; the text is for the user."""


@dataclass(slots=True)
class Request:
    verb: str
    arg: str | None = None


def parse_request(line: bytes, max_request: int = MAX_REQUEST) -> Request:
    """One request line -> Request; ControlError says exactly what is wrong."""
    if len(line) > max_request:
        raise ControlError(f"request longer than {max_request} bytes")
    try:
        obj = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ControlError("request is not UTF-8") from e
    except json.JSONDecodeError as e:
        raise ControlError(f"request is not JSON: {e.msg}") from e
    if not isinstance(obj, dict):
        raise ControlError("request must be a JSON object")
    extra = set(obj) - {"verb", "arg"}
    if extra:
        raise ControlError(f"unknown request field(s): {', '.join(sorted(map(str, extra)))}")
    verb = obj.get("verb")
    if not isinstance(verb, str) or verb not in VERBS:
        raise ControlError(f"unknown verb {verb!r} (known: {', '.join(VERBS)})")
    arg = obj.get("arg")
    if VERBS[verb]:
        if not isinstance(arg, str) or not arg or len(arg) > MAX_ARG or not arg.isprintable():
            raise ControlError(f"'{verb}' needs one printable argument of 1-{MAX_ARG} characters")
    elif arg is not None:
        raise ControlError(f"'{verb}' takes no argument")
    return Request(verb, arg)


def encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n"


# --------------------------------------------------------------------------- the socket


@dataclass(slots=True)
class ControlSocket:
    """A bound, listening control socket and the path it lives at."""

    sock: socket.socket
    path: Path
    inode: int

    def close(self) -> None:
        """Close, and remove the path (see unlink)."""
        self.sock.close()
        self.unlink()

    def unlink(self) -> None:
        """Remove the path if it is still ours (another daemon may have replaced it;
                removing that one would cut it off from pyike.limits import DEFAULT_LIMITS, Limits
        from pyikectl). With privilege separation
                the root parent, which handed the socket itself to the unprivileged process,
                calls only this at exit (the unprivileged one may not write /run)."""
        with contextlib.suppress(OSError):
            if os.lstat(self.path).st_ino == self.inode:
                os.unlink(self.path)


def _in_use(path: Path) -> bool:
    """A daemon answers on ``path`` (a stale socket from a crash refuses)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def bind_control_socket(path: Path, group: str | None = None) -> ControlSocket:
    """Create the listening socket at ``path``: owned by root (our uid), mode 0600, or
    0660 and group ``group``. Call this with privileges, before dropping them."""
    gid = None
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError as e:
            raise ControlError(f"control socket group '{group}' does not exist") from e
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise ControlError(f"{path}: {e.strerror}") from e
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlError(f"{path} exists and is not a socket")
        if _in_use(path):
            raise ControlError(f"{path} is in use: is another pyike running?")
        os.unlink(path)  # stale: its daemon is gone
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    # The mode is set at bind time through the umask: there is no moment when the
    # socket exists with wider permissions than it will have.
    old = os.umask(0o117 if gid is not None else 0o177)
    try:
        sock.bind(str(path))
    except OSError as e:
        sock.close()
        raise ControlError(f"cannot create control socket {path}: {e.strerror}") from e
    finally:
        os.umask(old)
    try:
        if gid is not None:
            os.chown(path, -1, gid)
            os.chmod(path, 0o660)
        sock.listen(MAX_CLIENTS)
        sock.setblocking(False)
        inode = os.lstat(path).st_ino
    except OSError as e:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise ControlError(f"cannot set up control socket {path}: {e.strerror}") from e
    return ControlSocket(sock, path, inode)


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the connected client (SO_PEERCRED, unix(7))."""
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", data)
    return pid, uid, gid


# --------------------------------------------------------------------------- the server

Handler = Callable[[Request], Any]


class ControlServer:
    """Serves ``pyikectl`` requests on an already-listening socket.

    ``handler(request)`` runs in the event loop (so it may read and change the
    daemon's state) and returns the reply's data, or raises ControlError. Clients
    are accepted when the socket's permissions let them connect and their uid is
    root's, our own, or (with ``allowed_gid``) they are in the socket's group.
    """

    def __init__(
        self,
        sock: socket.socket,
        handler: Handler,
        allowed_gid: int | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.sock = sock
        self.handler = handler
        self.allowed_gid = allowed_gid
        self.max_request = limits.control_request_bytes
        self.max_clients = limits.control_clients
        self._server: asyncio.AbstractServer | None = None
        self._monitors: set[asyncio.Queue[bytes | None]] = set()
        self._clients = 0

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(
            self._serve, sock=self.sock, limit=self.max_request + 2
        )

    def close(self) -> None:
        for q in list(self._monitors):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(None)
        if self._server is not None:
            with contextlib.suppress(RuntimeError):  # its event loop may be gone already
                self._server.close()
            self._server = None

    @property
    def monitors(self) -> int:
        return len(self._monitors)

    def publish(self, event: dict[str, Any]) -> None:
        """One event to every ``monitor`` client (a slow one loses its stream)."""
        if not self._monitors:
            return
        line = encode(event)
        for q in list(self._monitors):
            try:
                q.put_nowait(line)
            except asyncio.QueueFull:
                self._monitors.discard(q)
                with contextlib.suppress(asyncio.QueueFull):
                    q.get_nowait()
                    q.put_nowait(None)

    def _allowed(self, writer: asyncio.StreamWriter) -> tuple[bool, str]:
        sock = writer.get_extra_info("socket")
        try:
            pid, uid, gid = peer_credentials(sock)
        except OSError:
            return False, "unknown peer"
        who = f"pid {pid} uid {uid}"
        if uid in (0, os.geteuid()):
            return True, who
        if self.allowed_gid is not None and gid == self.allowed_gid:
            return True, who
        return False, who

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients += 1
        try:
            await self._serve_one(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:  # a bug in a handler: the daemon stays up, the client is told
            log.exception("control request failed")
            with contextlib.suppress(Exception):
                writer.write(encode({"ok": False, "error": "internal error (see the log)"}))
                await writer.drain()
        finally:
            self._clients -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ok, who = self._allowed(writer)
        if not ok:
            log.warning("control socket: refused %s", who)
            writer.write(encode({"ok": False, "error": "permission denied"}))
            await writer.drain()
            return
        if self._clients > self.max_clients:
            writer.write(encode({"ok": False, "error": "too many control connections"}))
            await writer.drain()
            return
        try:
            line = await asyncio.wait_for(reader.readuntil(b"\n"), REQUEST_TIMEOUT)
        except asyncio.LimitOverrunError:
            reply: dict[str, Any] = {
                "ok": False,
                "error": f"request longer than {self.max_request}",
            }
            writer.write(encode(reply))
            await writer.drain()
            return
        except TimeoutError:
            writer.write(encode({"ok": False, "error": "no request within 5 s"}))
            await writer.drain()
            return
        try:
            request = parse_request(line.rstrip(b"\n"), self.max_request)
        except ControlError as e:
            log.info("control socket: bad request from %s: %s", who, e)
            writer.write(encode({"ok": False, "error": str(e)}))
            await writer.drain()
            return
        log.debug("control: %s %s from %s", request.verb, request.arg or "", who)
        if request.verb == "monitor":
            await self._monitor(reader, writer)
            return
        try:
            data = self.handler(request)
            reply = {"ok": True, "data": data}
        except ControlError as e:
            reply = {"ok": False, "error": str(e)}
        writer.write(encode(reply))
        await writer.drain()

    async def _monitor(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        q: asyncio.Queue[bytes | None] = asyncio.Queue(MONITOR_QUEUE)
        self._monitors.add(q)
        try:
            writer.write(encode({"ok": True, "data": "monitoring"}))
            await writer.drain()
            gone = asyncio.ensure_future(reader.read(1))  # EOF when the client leaves
            try:
                while True:
                    get = asyncio.ensure_future(q.get())
                    done, _ = await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
                    if get not in done:
                        get.cancel()
                        return
                    line = get.result()
                    if line is None:
                        return
                    writer.write(line)
                    await writer.drain()
            finally:
                gone.cancel()
        finally:
            self._monitors.discard(q)


# --------------------------------------------------------------------------- the client


class ClientError(Exception):
    """pyikectl's errors: no daemon, no access, a refused request."""


def request(path: Path, verb: str, arg: str | None = None, timeout: float = 30.0) -> Any:
    """Send one request and return the reply's data (ClientError on failure)."""
    sock = connect(path, timeout)
    with sock:
        sock.sendall(encode({"verb": verb, "arg": arg}))
        reply = _read_reply(sock.makefile("rb"))
    return reply


def connect(path: Path, timeout: float = 30.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except FileNotFoundError as e:
        sock.close()
        raise ClientError(f"{path} does not exist: is pyike running (pyike -s {path})?") from e
    except PermissionError as e:
        sock.close()
        raise ClientError(f"{path}: permission denied (the control socket is root's)") from e
    except ConnectionRefusedError as e:
        sock.close()
        raise ClientError(f"{path}: connection refused: pyike is not running") from e
    except OSError as e:
        sock.close()
        raise ClientError(f"{path}: {e.strerror}") from e
    return sock


def _read_reply(f: Any) -> Any:
    line = f.readline(1 << 24)
    if not line:
        raise ClientError("the daemon closed the connection without a reply")
    try:
        reply = json.loads(line)
    except json.JSONDecodeError as e:
        raise ClientError(f"unreadable reply from the daemon: {e.msg}") from e
    if not isinstance(reply, dict) or not reply.get("ok"):
        error = reply.get("error") if isinstance(reply, dict) else None
        raise ClientError(str(error or "request refused"))
    return reply.get("data")


def monitor(path: Path) -> Any:
    """Yield monitor events (dicts) until the daemon closes the stream."""
    sock = connect(path, timeout=None)  # type: ignore[arg-type]
    with sock:
        sock.sendall(encode({"verb": "monitor", "arg": None}))
        f = sock.makefile("rb")
        _read_reply(f)
        for line in f:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue
