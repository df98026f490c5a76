"""Run strongSwan ``charon`` (Debian strongswan-charon 5.9.8) as a test peer.

Many instances can run on one machine, one per network namespace. Each gets its
own ``strongswan.conf`` (via ``STRONGSWAN_CONF``), vici socket, swanctl directory
(via ``SWANCTL_DIR``) and a private ``/run``: charon hard-codes its pid file as
``/var/run/charon.pid``, so it starts under ``unshare -m`` with ``workdir/run``
bind-mounted on ``/run`` (see /work/shared/notes/interop-facts.md).

Authentication is by raw ECDSA public keys (swanctl ``pubkeys``) with FQDN IDs.
Key material is logged (filelog ``ike = 4``, ``chd = 4``) so tests can check
pyike's key derivation against charon's: ``parse_charon_keys(log_text)``.
"""

from __future__ import annotations

import os
import re
import subprocess
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

if TYPE_CHECKING:
    from tests.netns import Netns

CHARON_BIN = "/usr/lib/ipsec/charon"
SWANCTL_BIN = "swanctl"
DEBIAN_PACKAGES = (
    "strongswan-charon strongswan-swanctl libcharon-extra-plugins libstrongswan-standard-plugins"
)

# Explicit plugin lists (interop facts): kdf is needed for the PRF+ of 5.9.8,
# kernel-libipsec (userspace ESP on a TUN) must load before kernel-netlink.
PLUGINS_LIBIPSEC = (
    "random nonce openssl pem pkcs1 pkcs8 pubkey sha2 hmac gcm aes kdf "
    "kernel-libipsec kernel-netlink socket-default vici"
)
# IKE only: CHILD_SAs still negotiate, but installing them into the kernel fails
# here (no kernel ESP), so use this only when no child must come up.
PLUGINS_IKE_ONLY = PLUGINS_LIBIPSEC.replace("kernel-libipsec ", "")
# swanctl parses the key files itself before handing them to charon.
SWANCTL_PLUGINS = "pem pkcs1 pkcs8 openssl pubkey random nonce"
# With certificates: X.509 parsing, CRL checks (from the CRLs swanctl loads) and
# path constraints; sha1 for the CERTREQ key identifiers.
PLUGINS_X509 = "x509 revocation constraints sha1"

MAX_UNIX_PATH = 107  # sun_path is 108 bytes including the NUL


class CharonError(RuntimeError):
    """charon failed to start, to load, or to reach the expected state."""


def ecdsa_p384_keypair() -> tuple[bytes, bytes]:
    """A fresh secp384r1 key pair as (PKCS#8 private PEM, SubjectPublicKeyInfo PEM)."""
    key = ec.generate_private_key(ec.SECP384R1())
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


@dataclass(eq=False)
class Charon:
    """One charon instance in ``ns``, configured for one connection ``name``.

    ``local_ts``/``remote_ts`` are swanctl traffic selectors (comma separated);
    ``encap`` forces UDP encapsulation (required by kernel-libipsec);
    ``rfc7427=False`` sets ``charon.signature_authentication = no`` so AUTH uses
    the plain RFC 4754 method (10 for ECDSA-384) and no SIGNATURE_HASH_ALGORITHMS
    notify is sent; ``libipsec=False`` drops kernel-libipsec (IKE only).
    """

    ns: Netns
    workdir: Path
    name: str
    local_addr: str
    remote_addr: str
    local_id: str
    remote_id: str
    private_key_pem: bytes
    peer_public_pem: bytes
    ike_proposals: str = "default"
    esp_proposals: str = "default"
    local_ts: str = "dynamic"
    remote_ts: str = "dynamic"
    encap: bool = True
    rfc7427: bool = True
    libipsec: bool = True
    child_name: str = "net"
    start_action: str = "none"  # "start" initiates as soon as the config is loaded
    extra_conf: str = ""  # appended inside the charon { } section
    conn_extra: str = ""  # lines inside the connection (e.g. "rekey_time = 25s")
    child_extra: str = ""  # lines inside the child (e.g. "rekey_time = 8s")
    # Several children under one IKE SA, name -> (local_ts, remote_ts); None: the one
    # child ``child_name`` with ``local_ts``/``remote_ts``.
    children: dict[str, tuple[str, str]] | None = None
    # Certificates (PEM): ours (then the local side authenticates with it instead of
    # ``pubkeys``), the CAs we trust for the peer (then the remote side needs a
    # certificate chaining to one of them instead of ``peer_public_pem``), CRLs.
    cert_pem: bytes | None = None
    ca_pems: tuple[bytes, ...] = ()
    crl_pems: tuple[bytes, ...] = ()
    proc: subprocess.Popen[bytes] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        if len(str(self.vici_path)) > MAX_UNIX_PATH:
            raise CharonError(f"vici socket path too long for AF_UNIX: {self.vici_path}")

    # --- paths --------------------------------------------------------------------
    @property
    def conf_path(self) -> Path:
        return self.workdir / "strongswan.conf"

    @property
    def swanctl_dir(self) -> Path:
        return self.workdir / "swanctl"

    @property
    def run_dir(self) -> Path:
        return self.workdir / "run"

    @property
    def vici_path(self) -> Path:
        return self.workdir / "charon.vici"

    @property
    def uri(self) -> str:
        return f"unix://{self.vici_path}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "charon.log"

    @property
    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "STRONGSWAN_CONF": str(self.conf_path),
            "SWANCTL_DIR": str(self.swanctl_dir),
        }

    # --- configuration ------------------------------------------------------------
    def strongswan_conf(self) -> str:
        plugins = PLUGINS_LIBIPSEC if self.libipsec else PLUGINS_IKE_ONLY
        if self.uses_x509:
            plugins = f"{PLUGINS_X509} {plugins}"
        conf = f"""\
            charon {{
                load_modular = no
                load = {plugins}
                port = 500
                port_nat_t = 4500
                signature_authentication = {"yes" if self.rfc7427 else "no"}
                # nothing but the test's own files: no syslog, no stderr chatter
                syslog {{
                }}
                filelog {{
                    keys {{
                        path = {self.log_path}
                        append = no
                        flush_line = yes
                        ike_name = yes
                        time_format = %T
                        default = 1
                        # level 4 dumps key material (SKEYSEED, SK_*, DH secret,
                        # CHILD_SA keys): the whole point of this peer in tests
                        ike = 4
                        chd = 4
                        cfg = 1
                    }}
                }}
                plugins {{
                    vici {{
                        socket = {self.uri}
                    }}
                }}
            {textwrap.indent(self.extra_conf, "    ")}
            }}
            swanctl {{
                load = {SWANCTL_PLUGINS}{" x509" if self.uses_x509 else ""}
                socket = {self.uri}
            }}
            """
        return textwrap.dedent(conf)

    def swanctl_conf(self) -> str:
        conf = f"""\
            connections {{
                {self.name} {{
                    version = 2
                    local_addrs = {self.local_addr}
                    remote_addrs = {self.remote_addr}
                    proposals = {self.ike_proposals}
                    encap = {"yes" if self.encap else "no"}
                    {self.conn_extra}
                    local {{
                        auth = pubkey
                        id = {self.local_id}
                        {"certs = local.pem" if self.cert_pem else "pubkeys = local.pem"}
                    }}
                    remote {{
                        auth = pubkey
                        id = {self.remote_id}
                        {self._remote_trust()}
                    }}
                    children {{
{{children}}
                    }}
                }}
            }}
            """
        children = self.children or {self.child_name: (self.local_ts, self.remote_ts)}
        blocks = "".join(
            f"""\
                        {name} {{
                            local_ts = {local}
                            remote_ts = {remote}
                            esp_proposals = {self.esp_proposals}
                            start_action = {self.start_action}
                            {self.child_extra}
                        }}
"""
            for name, (local, remote) in children.items()
        )
        return textwrap.dedent(conf.replace("{children}\n", blocks))

    @property
    def uses_x509(self) -> bool:
        return bool(self.cert_pem or self.ca_pems)

    def _remote_trust(self) -> str:
        if self.ca_pems:
            return "cacerts = " + ",".join(f"ca{i}.pem" for i in range(len(self.ca_pems)))
        return "pubkeys = peer.pem"

    def write_config(self) -> None:
        """Write strongswan.conf, swanctl.conf and the keys under ``workdir``."""
        for d in (
            self.workdir,
            self.run_dir,
            self.swanctl_dir / "private",
            self.swanctl_dir / "pubkey",
        ):
            d.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(self.strongswan_conf())
        (self.swanctl_dir / "swanctl.conf").write_text(self.swanctl_conf())
        local_public = (
            serialization.load_pem_private_key(self.private_key_pem, None)
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        private = self.swanctl_dir / "private" / "local.pem"
        private.write_bytes(self.private_key_pem)
        private.chmod(0o600)
        (self.swanctl_dir / "pubkey" / "local.pem").write_bytes(local_public)
        (self.swanctl_dir / "pubkey" / "peer.pem").write_bytes(self.peer_public_pem)
        for sub, pems in (
            ("x509", (self.cert_pem,) if self.cert_pem else ()),
            ("x509ca", self.ca_pems),
            ("x509crl", self.crl_pems),
        ):
            (self.swanctl_dir / sub).mkdir(parents=True, exist_ok=True)
            for i, pem in enumerate(pems):
                name = "local.pem" if sub == "x509" else f"{sub[4:] or 'ca'}{i}.pem"
                (self.swanctl_dir / sub / name).write_bytes(pem)

    # --- lifecycle ----------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> None:
        """Write the config and start charon; return once its vici socket answers."""
        if self.proc is not None:
            raise CharonError(f"{self.name}: already started")
        self.write_config()
        self.vici_path.unlink(missing_ok=True)
        # Private mount namespace: our run dir hides /run, so /var/run/charon.pid
        # (hard-coded) is per instance. `exec` keeps charon's PID = the popen PID.
        script = 'mount --bind "$1" /run && exec "$2"'
        with (self.workdir / "charon.stdout").open("wb") as out:
            self.proc = self.ns.popen(
                ["unshare", "-m", "sh", "-c", script, "sh", str(self.run_dir), CHARON_BIN],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise CharonError(
                    f"{self.name}: charon exited with {self.proc.returncode}\n{self._diagnostics()}"
                )
            if (
                self.vici_path.exists()
                and self.swanctl("--stats", check=False, timeout=5).returncode == 0
            ):
                return
            if time.monotonic() >= deadline:
                self.stop()  # __exit__ does not run when __enter__ raises
                raise CharonError(
                    f"{self.name}: vici did not answer within {timeout}s\n{self._diagnostics()}"
                )
            time.sleep(0.1)

    def stop(self, grace: float | None = None) -> None:
        """Stop charon (SIGTERM, then SIGKILL) by its PID. Idempotent."""
        if self.proc is not None:
            self.ns.stop(self.proc, grace)

    def __enter__(self) -> Charon:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- swanctl ------------------------------------------------------------------
    def swanctl(
        self, command: str, *args: str, check: bool = True, timeout: float = 20.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``swanctl <command> <args> --uri <ours>`` inside the namespace."""
        argv = [SWANCTL_BIN, command, *args, "--uri", self.uri]
        proc = self.ns.run(argv, check=False, timeout=timeout, env=self.env)
        if check and proc.returncode != 0:
            raise CharonError(
                f"{self.name}: {' '.join(argv)} failed ({proc.returncode})\n"
                f"{proc.stdout}{proc.stderr}\n{self._diagnostics()}"
            )
        return proc

    def load(self, timeout: float = 20.0) -> None:
        """Load connections and keys (``swanctl --load-all``)."""
        self.swanctl(
            "--load-all",
            "--noprompt",
            "--file",
            str(self.swanctl_dir / "swanctl.conf"),
            timeout=timeout,
        )

    def initiate(self, child: str | None = None, timeout: float = 20.0, check: bool = True) -> str:
        """Initiate the IKE SA with ``child`` (``swanctl --initiate``, bounded).

        Returns swanctl's output (charon's log of the exchange). With
        ``check=False`` a failed CHILD_SA (e.g. without kernel-libipsec) does not
        raise; ``wait_established(child=False)`` then finds the IKE SA.
        """
        secs = max(1, int(timeout))
        proc = self.swanctl(
            "--initiate",
            "--child",
            child or self.child_name,
            "--timeout",
            str(secs),
            check=check,
            timeout=timeout + 10,
        )
        return proc.stdout

    def list_sas(self) -> list[dict[str, Any]]:
        """``swanctl --list-sas --raw`` parsed: one dict per IKE SA (with 'name')."""
        out = self.swanctl("--list-sas", "--raw", timeout=10).stdout
        return parse_list_sas(out)

    def wait_established(self, timeout: float = 20.0, child: bool = True) -> dict[str, Any]:
        """Poll until an IKE SA is ESTABLISHED (and, if ``child``, has an INSTALLED
        CHILD_SA); returns that SA. Raises CharonError with the log tail on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            for sa in self.list_sas():
                if sa.get("state") != "ESTABLISHED":
                    continue
                children = sa.get("child-sas", {})
                if not child or any(c.get("state") == "INSTALLED" for c in children.values()):
                    return sa
            if self.proc is not None and self.proc.poll() is not None:
                raise CharonError(f"{self.name}: charon died\n{self._diagnostics()}")
            if time.monotonic() >= deadline:
                raise CharonError(
                    f"{self.name}: no established SA within {timeout}s\n{self._diagnostics()}"
                )
            time.sleep(0.1)

    # --- logs ---------------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _diagnostics(self, lines: int = 40) -> str:
        parts = []
        for path in (self.workdir / "charon.stdout", self.log_path):
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path} (last {lines} lines)\n" + "\n".join(tail))
        return "\n".join(parts)


# --- swanctl --raw output ---------------------------------------------------------------

# Tokens of swanctl's --raw dump: "}", "]", "key {", "key=[", "key=value", or a bare
# list item. Values never contain spaces for what these tests configure.
_RAW_TOKEN = re.compile(
    r"\s*(?:(?P<close>[}\]])|(?P<sec>[^\s={}\[\]]+)\s*\{|(?P<list>[^\s={}\[\]]+)=\["
    r"|(?P<key>[^\s={}\[\]]+)=(?P<value>[^\s{}\[\]]*)|(?P<item>[^\s={}\[\]]+))"
)


def parse_list_sas(text: str) -> list[dict[str, Any]]:
    """Parse ``swanctl --list-sas --raw``: ``list-sa event {name {k=v child-sas {..}}}``.

    Returns one dict per IKE SA with its fields plus ``name``; sections become
    dicts, ``[..]`` lists become lists of strings.
    """
    sas: list[dict[str, Any]] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("list-sa event"):
            tree = parse_raw_message(line[len("list-sa event") :])
            sas.extend({"name": name, **sa} for name, sa in tree.items() if isinstance(sa, dict))
    return sas


def parse_raw_message(text: str) -> dict[str, Any]:
    """Parse one vici message as swanctl --raw prints it: ``{k=v sec {..} l=[a b]}``."""
    text = text.strip()
    if not (text.startswith("{") and text.endswith("}")):
        raise CharonError(f"not a raw vici message: {text[:80]!r}")
    root: dict[str, Any] = {}
    stack: list[dict[str, Any] | list[str]] = [root]
    pos, body = 0, text[1:-1]
    while pos < len(body) and body[pos:].strip():
        m = _RAW_TOKEN.match(body, pos)
        if m is None:
            raise CharonError(f"cannot parse raw vici output at {body[pos : pos + 40]!r}")
        pos = m.end()
        top = stack[-1]
        if m["close"]:
            if len(stack) == 1:
                raise CharonError("unbalanced raw vici output")
            stack.pop()
        elif m["sec"] or m["list"]:
            child: dict[str, Any] | list[str] = {} if m["sec"] else []
            if not isinstance(top, dict):
                raise CharonError("section inside a list in raw vici output")
            top[m["sec"] or m["list"]] = child
            stack.append(child)
        elif m["key"] is not None and isinstance(top, dict):
            top[m["key"]] = m["value"]
        elif m["item"] is not None and isinstance(top, list):
            top.append(m["item"])
        else:
            raise CharonError(f"unexpected token {m.group(0)!r} in raw vici output")
    if len(stack) != 1:
        raise CharonError("unbalanced raw vici output")
    return root


# --- key material from charon's log ---------------------------------------------------

# A log line: optional time, "NN[SUB] ", optional "<conn|N> " or "<N> ", message.
# (Before a responder has picked a config the prefix is just "<N>".)
_LINE = re.compile(
    r"(?P<thread>\d{2})\[(?P<subsys>[A-Z]{3})\] "
    r"(?:<(?:(?P<conn>[^|>]*)\|)?(?P<sa>\d+)> )?(?P<msg>.*)$"
)
# First line of a hex dump: "Sk_d secret => 48 bytes @ 0x7f..."
_DUMP_HEAD = re.compile(r"^(?P<label>.*?) => (?P<len>\d+) bytes @ (?:0x)?[0-9a-fA-F]+\s*$")
# A hex dump row: "   0: 9B 2D 1F ...  ascii" (offset, then up to 16 bytes, then ASCII)
_DUMP_ROW = re.compile(r"^\s*(?P<off>\d+): (?P<hex>(?:[0-9A-F]{2} ?){1,16})")
_CHILD_SPIS = re.compile(
    r"CHILD_SA \S+ established with SPIs (?P<i>[0-9a-f]{8})_i "
    r"(?P<o>[0-9a-f]{8})_o"
)


@dataclass(slots=True)
class LogEvent:
    """One logical charon log entry; ``data`` is set for a (completed) hex dump."""

    sa: int | None
    conn: str | None
    subsys: str
    msg: str  # for a dump: its label, e.g. "Sk_d secret"
    data: bytes | None = None


def iter_log_events(log_text: str) -> list[LogEvent]:
    """Split a charon filelog into entries, joining each multi-line hex dump.

    Dump rows are matched to their head by thread and SA prefix (other threads
    may interleave), and a dump's rows must add up to its announced length.
    """
    events: list[LogEvent] = []
    open_dumps: dict[tuple[str, int | None], tuple[LogEvent, int, bytearray]] = {}

    def finish(k: tuple[str, int | None]) -> None:
        ev, length, data = open_dumps.pop(k)
        if len(data) != length:
            raise CharonError(f"hex dump {ev.msg!r}: got {len(data)} of {length} bytes")
        ev.data = bytes(data)

    for raw in log_text.splitlines():
        m = _LINE.search(raw)
        if not m:
            continue
        sa = int(m["sa"]) if m["sa"] else None
        k = (m["thread"], sa)
        msg = m["msg"]
        row = _DUMP_ROW.match(msg)
        if row and k in open_dumps:
            ev, length, data = open_dumps[k]
            if int(row["off"]) != len(data):
                raise CharonError(f"hex dump {ev.msg!r}: row at {row['off']}, expected {len(data)}")
            data += bytes.fromhex(row["hex"])
            if len(data) >= length:
                finish(k)
            continue
        if k in open_dumps:
            finish(k)
        ev = LogEvent(sa, m["conn"] or None, m["subsys"], msg)
        head = _DUMP_HEAD.match(msg)
        if head:
            ev.msg = head["label"].strip()
            open_dumps[k] = (ev, int(head["len"]), bytearray())
            if int(head["len"]) == 0:
                finish(k)
        events.append(ev)
    for k in list(open_dumps):
        finish(k)
    return events


# Labels of charon 5.9.8's DBG4 dumps (keymat_v2.c, child keymat): our key names.
IKE_KEY_LABELS = {
    "SKEYSEED": "skeyseed",
    "Sk_d secret": "sk_d",
    "Sk_ai secret": "sk_ai",
    "Sk_ar secret": "sk_ar",
    "Sk_ei secret": "sk_ei",
    "Sk_er secret": "sk_er",
    "Sk_pi secret": "sk_pi",
    "Sk_pr secret": "sk_pr",
}
CHILD_KEY_LABELS = {
    "seed": "seed",  # Ni | Nr (| g^ir with PFS): the prf+ seed of RFC 7296 2.17
    "encryption initiator key": "encr_i",
    "encryption responder key": "encr_r",
    "integrity initiator key": "integ_i",
    "integrity responder key": "integ_r",
}
AUTH_LABELS = {
    "IDx'": "id_body",
    "SK_p": "sk_p",
    "octets = message + nonce + prf(Sk_px, IDx')": "octets",
}
DH_LABEL = "shared Diffie Hellman secret"


def parse_charon_keys(log_text: str) -> list[dict[str, Any]]:
    """Key material charon logged (``ike = 4``, ``chd = 4``), one dict per IKE key set.

    Each dict, in log order: ``sa`` (charon's IKE SA unique id), ``conn``,
    ``dh_secret``, ``skeyseed``, ``sk_d``, ``sk_ai``, ``sk_ar`` (absent for AEAD),
    ``sk_ei``, ``sk_er``, ``sk_pi``, ``sk_pr`` (bytes); ``auth``: a list of
    ``{"id_body", "sk_p", "octets"}`` (the signed/verified AUTH input, RFC 7296
    2.15, ours and the peer's); ``children``: a list of ``{"seed", "encr_i",
    "encr_r", "integ_i", "integ_r", "spi_in", "spi_out"}`` (integ_* absent for
    AEAD; SPIs as 4 bytes, from the "established with SPIs" line). An IKE rekey
    logs a new key set under the old SA's id: it becomes the next dict.
    IKE SPIs and nonces are not logged: take them from the capture.
    """
    sets: list[dict[str, Any]] = []
    latest: dict[int | None, dict[str, Any]] = {}
    pending_dh: dict[int | None, bytes] = {}

    def current(sa: int | None) -> dict[str, Any]:
        if sa not in latest:
            latest[sa] = {"sa": sa, "conn": None, "auth": [], "children": []}
            sets.append(latest[sa])
        return latest[sa]

    for ev in iter_log_events(log_text):
        if ev.conn and ev.sa in latest:
            latest[ev.sa]["conn"] = ev.conn
        if ev.data is None:
            m = _CHILD_SPIS.search(ev.msg)
            if m and ev.sa in latest and latest[ev.sa]["children"]:
                child = latest[ev.sa]["children"][-1]
                child["spi_in"], child["spi_out"] = bytes.fromhex(m["i"]), bytes.fromhex(m["o"])
            continue
        if ev.msg == DH_LABEL:
            pending_dh[ev.sa] = ev.data
        elif ev.msg == "SKEYSEED":
            # A new IKE key set (initial or rekeyed) starts with its SKEYSEED.
            entry = {"sa": ev.sa, "conn": ev.conn, "auth": [], "children": [], "skeyseed": ev.data}
            if ev.sa in pending_dh:
                entry["dh_secret"] = pending_dh.pop(ev.sa)
            latest[ev.sa] = entry
            sets.append(entry)
        elif ev.msg in IKE_KEY_LABELS:
            current(ev.sa)[IKE_KEY_LABELS[ev.msg]] = ev.data
        elif ev.subsys == "CHD" and ev.msg in CHILD_KEY_LABELS:
            children = current(ev.sa)["children"]
            key = CHILD_KEY_LABELS[ev.msg]
            if key == "seed" or not children or key in children[-1]:
                children.append({})
                if ev.sa in pending_dh:  # CREATE_CHILD_SA with PFS
                    children[-1]["dh_secret"] = pending_dh.pop(ev.sa)
            children[-1][key] = ev.data
        elif ev.msg in AUTH_LABELS:
            auth = current(ev.sa)["auth"]
            key = AUTH_LABELS[ev.msg]
            if key == "id_body" or not auth or key in auth[-1]:
                auth.append({})
            auth[-1][key] = ev.data
    return sets


def key_log_excerpt(log_text: str) -> str:
    """Only the log lines ``parse_charon_keys`` needs (key dumps, CHILD_SA SPIs).

    Small enough to keep beside a sample capture in the repository.
    """
    wanted = {DH_LABEL, *IKE_KEY_LABELS, *CHILD_KEY_LABELS, *AUTH_LABELS}
    kept: list[str] = []
    in_dump: set[tuple[str, str | None]] = set()
    for raw in log_text.splitlines():
        m = _LINE.search(raw)
        if not m:
            continue
        k = (m["thread"], m["sa"])
        if k in in_dump and _DUMP_ROW.match(m["msg"]):
            kept.append(raw)
            continue
        in_dump.discard(k)
        head = _DUMP_HEAD.match(m["msg"])
        if head and head["label"].strip() in wanted:
            in_dump.add(k)
            kept.append(raw)
        elif _CHILD_SPIS.search(m["msg"]):
            kept.append(raw)
    return "\n".join(kept) + "\n"
