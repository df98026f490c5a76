"""OpenSMTPD at both ends of the guide's tunnel: configs, private dirs, Maildir checks.

The guide's mail path: the VM (namorar.example.com) accepts mail for example.com
and relays it to ``[2001:db8:c1da::1]`` (vpn0, the home end of the tunnel); the home
machine (carinho.lan) delivers it to a Maildir. Used by ``pyike demo`` and by the
namespace tests; no process handling here, only what to run and what to check.

Several smtpd instances on one machine (one per network namespace) each need a
private ``/var/spool/smtpd`` (mode 0711, smtpd refuses anything else) and a private
``/run`` (the control socket). ``command()`` runs smtpd under ``unshare -m`` with the
instance's own directories bind-mounted over ``/var/spool`` and ``/run``, so nothing
on the host is created or changed (Debian's package does not even create
``/var/spool/smtpd``). smtpd refuses to deliver as root ("not allowed to deliver
to: root"), so the guide's alias table maps the recipient to an unprivileged user
(``nobody`` by default) that owns the Maildir; its parent directories must be
searchable by that user, which a pytest tmp dir (0700) is not: ``make_maildir``
creates it under /tmp.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import tempfile
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message
from pathlib import Path

SMTPD_BIN = "smtpd"
SWAKS_BIN = "swaks"
APT_HINT = "apt-get install opensmtpd swaks"
MAIL_DOMAIN = "example.com"
RECIPIENT = f"you@{MAIL_DOMAIN}"
SENDER = "postmaster@namorar.example.com"
DELIVERY_USER = "nobody"

# smtpd -d logs one line per delivery attempt (mda = local delivery, mta = relaying).
MDA_DELIVERED = re.compile(r"mda delivery .*result=Ok stat=Delivered")
MTA_DELIVERED = re.compile(r'mta delivery .*relay="\[(?P<relay>[0-9a-f:]+)\].*result="Ok"')

# Bind our spool over /var/spool (not /var/spool/smtpd, which need not exist) and our
# run dir over /run; `exec` keeps smtpd's PID the one the caller started.
_SCRIPT = 'mount --bind "$1" /var/spool && mount --bind "$2" /run && exec "$3" -d -f "$4"'


def missing_tools() -> list[str]:
    """The binaries of the mail scenario that are not installed."""
    return [b for b in (SMTPD_BIN, SWAKS_BIN) if shutil.which(b) is None]


def home_conf(listen: str, peer: str, maildir: Path, aliases: Path) -> str:
    """The home side: mail for example.com from the VM's tunnel address -> Maildir."""
    return f"""\
# home (carinho.lan): accept mail for {MAIL_DOMAIN} relayed by the VM over the tunnel
table aliases_example file:{aliases}
table vm_hosts {{ "{peer}" }}
listen on {listen} port 25
action "local_mail" maildir "{maildir}" alias <aliases_example>
match from src <vm_hosts> for domain "{MAIL_DOMAIN}" action "local_mail"
"""


def vm_conf(relay_to: str) -> str:
    """The VM side: local submissions for example.com are relayed to home's vpn0."""
    return f"""\
# VM (namorar.example.com): relay mail for {MAIL_DOMAIN} to home over the tunnel
listen on lo
action "relay_home" relay host "smtp://[{relay_to}]"
match from local for domain "{MAIL_DOMAIN}" action "relay_home"
"""


@dataclass
class SmtpdInstance:
    """One smtpd's files under ``workdir``: config, private spool and run dirs, log."""

    workdir: Path
    conf_text: str

    @property
    def conf(self) -> Path:
        return self.workdir / "smtpd.conf"

    @property
    def log(self) -> Path:
        return self.workdir / "smtpd.log"

    def prepare(self) -> SmtpdInstance:
        spool = self.workdir / "spool" / "smtpd"
        spool.mkdir(parents=True, exist_ok=True)
        spool.chmod(0o711)  # smtpd: "/var/spool/smtpd must be rwx--x--x (711)"
        (self.workdir / "run").mkdir(exist_ok=True)
        self.conf.write_text(self.conf_text)
        self.conf.chmod(0o600)
        return self

    def command(self) -> list[str]:
        """argv to run inside the namespace (e.g. after ``ip netns exec NS``)."""
        smtpd = shutil.which(SMTPD_BIN) or SMTPD_BIN
        return [
            "unshare",
            "-m",
            "sh",
            "-c",
            _SCRIPT,
            "sh",
            str(self.workdir / "spool"),
            str(self.workdir / "run"),
            smtpd,
            str(self.conf),
        ]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def make_mailbox(user: str = DELIVERY_USER) -> tuple[Path, Path]:
    """A directory under /tmp owned by ``user`` and an alias file mapping the recipient
    to it; returns (the directory, the aliases file). ``dir/Maildir`` is the Maildir
    smtpd creates on first delivery. Remove the directory with ``shutil.rmtree``."""
    pw = pwd.getpwnam(user)
    # /tmp itself, not $TMPDIR: every parent must be searchable by ``user``.
    root = Path(tempfile.mkdtemp(prefix="pyike-mail-", dir="/tmp"))
    root.chmod(0o755)
    box = root / "box"
    box.mkdir(mode=0o700)
    os.chown(box, pw.pw_uid, pw.pw_gid)
    aliases = root / "aliases"
    aliases.write_text(f"{RECIPIENT.split('@')[0]}: {user}\n")
    return root, aliases


def delivered(maildir: Path) -> list[Message]:
    """The messages in ``maildir/new`` (delivered, not yet read)."""
    new = maildir / "new"
    if not new.is_dir():
        return []
    return [message_from_bytes(p.read_bytes()) for p in sorted(new.iterdir()) if p.is_file()]


def swaks_command(server: str, subject: str, body: str) -> list[str]:
    """Submit one message for example.com to ``server`` (the VM's own smtpd)."""
    return [
        shutil.which(SWAKS_BIN) or SWAKS_BIN,
        "--server",
        server,
        "--to",
        RECIPIENT,
        "--from",
        SENDER,
        "--header",
        f"Subject: {subject}",
        "--body",
        body,
        "--timeout",
        "20",
    ]
