"""The guide's mail path with real MTAs: OpenSMTPD at both ends of the tunnel.

Two network namespaces, ``home`` (carinho.lan, 192.0.2.1, active) and ``vm``
(namorar.example.com, 192.0.2.2, passive), joined by veth. OpenSMTPD 6.8 runs in
each (pyike.mta: private spool and /run per instance): the VM accepts a message
for example.com submitted with ``swaks`` and relays it to ``[2001:db8:c1da::1]``
(vpn0) through the tunnel; home delivers it to a Maildir owned by ``nobody``.

Cases (the IKE/ESP ends):

- ``pyike-pyike``: pyike at both ends, conf/home-iked.conf (the guide's three
  policies: smtp-in, smtp-out, icmp6) and conf/vm-iked.conf;
- ``pyike-charon``: pyike at home with the guide's policies, strongSwan charon
  (kernel-libipsec, ``encap = yes``) on the VM, AES-GCM-16 ESP;
- ``charon-pyike``: charon at home with the guide's three policies as children of
  one IKE SA (the second and third by CREATE_CHILD_SA), pyike on the VM with
  conf/vm-iked.conf, AES-CBC + HMAC-SHA2-256 ESP.

Each case: ping6 both ways over the inner addresses, a TCP connection from the VM to
home's port 25 (the real smtpd's banner), the mail delivered (smtpd's mda and mta log
lines, the Maildir file with the subject and a random token). The outer link is
captured (IPv4 only, the link's IPv6 switched off): it carries only IKE and
ESP-in-UDP (plus ARP), never an inner packet, TCP or any ICMPv6, and the token is
nowhere in the captured bytes. tshark then decrypts that capture with the ``esp_sa`` table
pyike wrote (``--keylog``): the ICMPv6 echoes and the SMTP session, the mail's
subject included, with no malformed packet.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from interop.strongswan import CHARON_BIN, DEBIAN_PACKAGES, Charon
from pyike import keys, mta
from pyike.keylog import ESP_TABLE_NAME
from tests.netns import HarnessError, Netns, TwoHosts, capture, ping, require_binary, wait_until
from tests.pyike_proc import CONF, PyikeProc, write_keydir

pytestmark = [pytest.mark.netns, pytest.mark.interop, pytest.mark.slow]

HOME_ID, VM_ID = "carinho.lan", "namorar.example.com"
HOME_ADDR, VM_ADDR = "192.0.2.1", "192.0.2.2"
VPN0, VPN1 = "2001:db8:c1da::1", "2001:db8:c1da::2"
INNER_PREFIX = bytes.fromhex("20010db8c1da")  # 2001:db8:c1da::/48, the inner addresses
TIMEOUT_S = 30.0
_CHARON_CHILD = re.compile(r"CHILD_SA \S+ established with SPIs")


@dataclass
class Tunnel:
    keylog: Path  # the pyike end's --keylog directory
    pyike: PyikeProc  # the pyike end that writes it
    charon: Charon | None = None
    peer_pyike: PyikeProc | None = None  # the other end, when it is pyike too

    def logs(self) -> str:
        return self.pyike.log() + (self.charon.log_text() if self.charon else "")


def _charon(
    ns: Netns,
    tmp: Path,
    *,
    home: bool,
    own: ec.EllipticCurvePrivateKey,
    peer: ec.EllipticCurvePublicKey,
    ike: str,
    esp: str,
) -> Charon:
    local, remote = (HOME_ADDR, VM_ADDR) if home else (VM_ADDR, HOME_ADDR)
    local_in, remote_in = (VPN0, VPN1) if home else (VPN1, VPN0)
    # libipsec's TUN has no address: the inner address lives on lo.
    ns.run(["ip", "-6", "addr", "add", f"{local_in}/128", "dev", "lo", "nodad"])
    return Charon(
        ns,
        tmp / "charon",
        name="mail",
        local_addr=local,
        remote_addr=remote,
        local_id=HOME_ID if home else VM_ID,
        remote_id=VM_ID if home else HOME_ID,
        private_key_pem=keys.private_key_pem(own, pkcs8=True),
        peer_public_pem=keys.public_key_pem(peer),
        ike_proposals=ike,
        esp_proposals=esp,
        local_ts=f"{local_in}/128",
        remote_ts=f"{remote_in}/128",
        encap=True,
        # charon at home with the guide's policies: one IKE SA, a child per
        # policy (the first in IKE_AUTH, the others by CREATE_CHILD_SA, 1.3.1).
        children=GUIDE_CHILDREN if home else None,
    )


# The guide's three home policies (conf/home-iked.conf) as charon children.
GUIDE_CHILDREN = {
    "smtp-in": (f"{VPN0}/128[tcp/25]", f"{VPN1}/128[tcp]"),
    "smtp-out": (f"{VPN0}/128[tcp]", f"{VPN1}/128[tcp/25]"),
    "icmp6": (f"{VPN0}/128[ipv6-icmp]", f"{VPN1}/128[ipv6-icmp]"),
}


@contextmanager
def tunnel(kind: str, hosts: TwoHosts, tmp: Path) -> Iterator[Tunnel]:
    """Bring the tunnel up (both ends report their Child SAs); stop both ends after."""
    hk, vk = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    keylog = tmp / "keylog"
    keylog.mkdir()
    with ExitStack() as stack:
        if kind == "pyike-pyike":
            vm_keys = write_keydir(tmp / "vm-keys", vk, {HOME_ID: hk.public_key()})
            vm = PyikeProc(
                hosts.vm, tmp, CONF / "vm-iked.conf", vm_keys, ["-D", f"ext={VM_ADDR}"]
            ).start()
            stack.callback(vm.stop)
            vm.wait_log(r"listening on IPv4 UDP port 4500", timeout=15)
        elif kind == "pyike-charon":
            charon = _charon(
                hosts.vm,
                tmp,
                home=False,
                own=vk,
                peer=hk.public_key(),
                ike="aes256gcm16-prfsha384-x25519",
                esp="aes256gcm16",
            )
            stack.enter_context(charon)
            charon.load()
        if kind in ("pyike-pyike", "pyike-charon"):
            home_keys = write_keydir(tmp / "home-keys", hk, {VM_ID: vk.public_key()})
            home = PyikeProc(
                hosts.home,
                tmp,
                CONF / "home-iked.conf",
                home_keys,
                ["-D", f"vm_host={VM_ADDR}", "--keylog", str(keylog)],
            ).start()
            stack.callback(home.stop)
            # The guide's three policies: one IKE SA and Child SA each.
            home.wait_log(r"created Child SA", count=3, timeout=TIMEOUT_S)
            if kind == "pyike-pyike":
                vm.wait_log(r"created Child SA", count=3, timeout=TIMEOUT_S)
                t = Tunnel(keylog, home, peer_pyike=vm)
            else:
                t = Tunnel(keylog, home, charon)
        else:  # charon-pyike: charon initiates from home, pyike answers on the VM
            vm_keys = write_keydir(tmp / "vm-keys", vk, {HOME_ID: hk.public_key()})
            vm = PyikeProc(
                hosts.vm,
                tmp,
                CONF / "vm-iked.conf",
                vm_keys,
                ["-D", f"ext={VM_ADDR}", "--keylog", str(keylog)],
            ).start()
            stack.callback(vm.stop)
            vm.wait_log(r"listening on IPv4 UDP port 4500", timeout=15)
            charon = _charon(
                hosts.home,
                tmp,
                home=True,
                own=hk,
                peer=vk.public_key(),
                ike="aes256-sha384-ecp384",
                esp="aes256-sha256",
            )
            stack.enter_context(charon)
            charon.load()
            for child in GUIDE_CHILDREN:
                charon.initiate(child, timeout=TIMEOUT_S)
            vm.wait_log(r"created Child SA", count=3, timeout=TIMEOUT_S)
            t = Tunnel(keylog, vm, charon)
        if t.charon is not None:
            # (swanctl --list-sas --raw with [proto] selectors is beyond parse_list_sas)
            want, c = 3, t.charon
            wait_until(
                lambda: len(_CHARON_CHILD.findall(c.log_text())) >= want,
                TIMEOUT_S,
                what=f"{want} CHILD_SA(s) established in charon's log",
            )
        yield t


# --- the mail ---------------------------------------------------------------------------


@dataclass
class Mail:
    subject: str
    token: str
    message: object  # email.message.Message
    home_log: str
    vm_log: str


def _wait_listening(ns: Netns, port: int, proc: subprocess.Popen, inst: mta.SmtpdInstance) -> None:
    def up() -> bool:
        if proc.poll() is not None:
            raise HarnessError(f"smtpd in {ns.name} exited: {inst.log_text()[-2000:]}")
        out = ns.run(["ss", "-Hltn", f"sport = :{port}"], check=False).stdout
        return bool(out.strip())

    wait_until(up, 15, interval=0.1, what=f"smtpd listening on port {port} in {ns.name}")


def banner_over_tunnel(vm: Netns) -> str:
    """A plain TCP connection from the VM to home's port 25: the server's greeting."""
    script = (
        "import socket\n"
        f"c = socket.create_connection(('{VPN0}', 25), timeout=15)\n"
        "print(c.recv(512).decode(errors='replace').strip()); c.sendall(b'QUIT\\r\\n')\n"
        "c.recv(512); c.close()\n"
    )
    return vm.run(["python3", "-c", script], timeout=30).stdout.strip()


def deliver_mail(hosts: TwoHosts, tmp: Path, label: str) -> Mail:
    """smtpd at both ends; swaks submits at the VM; wait for the Maildir file."""
    token = secrets.token_hex(16)
    subject = f"pyike {label} {token[:8]}"
    box_root, aliases = mta.make_mailbox()
    try:
        maildir = box_root / "box" / "Maildir"
        home_i = mta.SmtpdInstance(
            tmp / "smtpd-home", mta.home_conf(VPN0, VPN1, maildir, aliases)
        ).prepare()
        vm_i = mta.SmtpdInstance(tmp / "smtpd-vm", mta.vm_conf(VPN0)).prepare()
        procs = []
        for ns, inst in ((hosts.home, home_i), (hosts.vm, vm_i)):
            with inst.log.open("wb") as log:
                procs.append(ns.popen(inst.command(), stdout=log, stderr=subprocess.STDOUT))
        try:
            _wait_listening(hosts.home, 25, procs[0], home_i)
            _wait_listening(hosts.vm, 25, procs[1], vm_i)
            greeting = banner_over_tunnel(hosts.vm)
            assert greeting.startswith("220 ") and "OpenSMTPD" in greeting, greeting
            r = hosts.vm.run(
                mta.swaks_command("127.0.0.1", subject, f"token {token}\n"), timeout=40
            )
            assert "250 2.0.0" in r.stdout and "Message accepted" in r.stdout, r.stdout
            try:
                wait_until(
                    lambda: mta.delivered(maildir),
                    TIMEOUT_S,
                    interval=0.1,
                    what="the mail in home's Maildir",
                )
            except HarnessError as e:
                raise HarnessError(
                    f"{e}\nhome smtpd:\n{home_i.log_text()[-2000:]}\n"
                    f"vm smtpd:\n{vm_i.log_text()[-2000:]}"
                ) from e
            (msg,) = mta.delivered(maildir)
            # The mda line comes with the delivery; the VM's mta line right after the 250.
            wait_until(
                lambda: mta.MTA_DELIVERED.search(vm_i.log_text()),
                10,
                what="the VM's mta delivery line",
            )
        finally:
            for ns, p in zip((hosts.home, hosts.vm), procs, strict=True):
                ns.stop(p)  # by PID (its process group): SIGTERM, then SIGKILL
        return Mail(subject, token, msg, home_i.log_text(), vm_i.log_text())
    finally:
        shutil.rmtree(box_root, ignore_errors=True)


def check_mail(mail: Mail) -> None:
    assert mail.message["Subject"] == mail.subject
    assert mail.message["To"] == mta.RECIPIENT
    body = mail.message.get_payload()
    assert f"token {mail.token}" in body, body
    assert mta.MDA_DELIVERED.search(mail.home_log), mail.home_log
    assert "user=nobody" in mail.home_log, mail.home_log
    m = mta.MTA_DELIVERED.search(mail.vm_log)
    assert m and m["relay"] == VPN0, mail.vm_log
    # The VM's smtpd connected from its tunnel address.
    assert f"smtp connected address=[{VPN1}]" in mail.home_log, mail.home_log


# --- the outer link ---------------------------------------------------------------------


def check_outer(pcap_path: Path, token: str) -> dict[str, int]:
    """Only IKE and ESP-in-UDP on the outer link; returns counts of what was seen."""
    from scapy.layers.inet import ICMP, IP, UDP, UDPerror
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import ARP
    from scapy.utils import rdpcap

    raw = pcap_path.read_bytes()
    assert token.encode() not in raw and token[:8].encode() not in raw
    seen = {"ike": 0, "esp": 0, "link": 0}
    for pkt in rdpcap(str(pcap_path)):
        data = bytes(pkt)
        assert INNER_PREFIX not in data, pkt.summary()  # no inner address, even nested
        if ARP in pkt:
            seen["link"] += 1
            continue
        # No IPv6 at all: the outer link has IPv6 switched off (see the test), so any
        # IPv6 frame here would be an inner packet that escaped the tunnel.
        assert IPv6 not in pkt, pkt.summary()
        if ICMP in pkt:
            # Port unreachable for an IKE message to a peer already stopped at teardown
            # (the DELETE of the one stopped last); it quotes the encrypted datagram.
            quoted = pkt[ICMP].payload
            assert pkt[ICMP].type == 3 and UDPerror in quoted, pkt.summary()
            assert {quoted[UDPerror].sport, quoted[UDPerror].dport} <= {500, 4500}
            seen["link"] += 1
            continue
        assert IP in pkt and UDP in pkt, pkt.summary()
        udp = pkt[UDP]
        assert {udp.sport, udp.dport} <= {500, 4500}, pkt.summary()
        payload = bytes(udp.payload)
        if udp.dport == 500 or payload[:4] == b"\0\0\0\0" or payload == b"\xff":
            seen["ike"] += 1
        else:
            seen["esp"] += 1
    return seen


# --- tshark with pyike's esp_sa ---------------------------------------------------------


def tshark_decrypt(pcap_path: Path, keylog: Path, tmp: Path) -> list[list[str]]:
    """tshark with the keylog's esp_sa in a throwaway profile; one row per ESP frame:
    spi, inner source, inner destination, ICMPv6 type, TCP ports, SMTP command, subject."""
    tshark = require_binary("tshark", "tshark")
    root = tmp / "wsconfig"
    profile = root / "wireshark" / "profiles" / "pyike"
    profile.mkdir(parents=True)
    shutil.copy(keylog / ESP_TABLE_NAME, profile / ESP_TABLE_NAME)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(root), "XDG_CONFIG_HOME": str(root)}
    base = [
        tshark,
        "-C",
        "pyike",
        "-r",
        str(pcap_path),
        "-o",
        "esp.enable_encryption_decode:TRUE",
        "-o",
        "esp.enable_authentication_check:TRUE",
    ]
    r = subprocess.run(
        [
            *base,
            "-Y",
            "esp",
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-e",
            "esp.spi",
            "-e",
            "ipv6.src",
            "-e",
            "ipv6.dst",
            "-e",
            "icmpv6.type",
            "-e",
            "tcp.srcport",
            "-e",
            "tcp.dstport",
            "-e",
            "smtp.req.command",
            "-e",
            "imf.subject",
            "-e",
            "esp.icv_good",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert "Error loading table" not in r.stderr, r.stderr
    bad = subprocess.run(
        [*base, "-Y", "_ws.malformed || _ws.expert.severity >= error"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 0 and bad.stdout.strip() == "", bad.stdout[-3000:]
    return [line.split("|") for line in r.stdout.splitlines()]


_CHILD = re.compile(
    r"created Child SA spi in 0x(?P<i>[0-9a-f]+) out 0x(?P<o>[0-9a-f]+) "
    r"\((?P<suite>[^)]*)\)"
)


def esn_spis(pyike_log: str) -> set[int]:
    """SPIs of the Child SAs that use extended sequence numbers (pyike's log)."""
    return {
        int(m[k], 16)
        for m in _CHILD.finditer(pyike_log)
        if " esn" in m["suite"]
        for k in ("i", "o")
    }


def check_decrypted(rows: list[list[str]], mail: Mail, esn: set[int]) -> None:
    assert rows, "no ESP frame in the capture"
    # Every ESP frame decrypted to an inner IPv6 packet between vpn0 and vpn1.
    undecrypted = [r for r in rows if {r[1], r[2]} != {VPN0, VPN1}]
    assert not undecrypted, undecrypted[:5]
    # ICMPv6 echo request and reply both ways (types 128/129).
    echoes = {(r[1], r[3]) for r in rows if r[3] in ("128", "129")}
    assert echoes >= {(VPN0, "128"), (VPN1, "129"), (VPN1, "128"), (VPN0, "129")}, echoes
    # The SMTP session, VM -> home port 25, with the mail's subject in the DATA.
    commands = {c for r in rows if r[5] == "25" for c in r[6].split(",") if c}
    assert {"EHLO", "MAIL", "RCPT", "DATA"} <= commands, commands
    assert mail.subject in {r[7] for r in rows}, [r for r in rows if r[7]]
    # tshark verified the ICV of every packet, except on SAs with extended sequence
    # numbers: Wireshark 4.0's esp_sa table cannot say an SA uses ESN, so it leaves the
    # high 32 bits out of the AAD / ICV input (RFC 4303 2.2.1) and reports the ICV as
    # bad, while decryption (which does not depend on them) works.
    icv = {(int(r[0], 16) in esn, r[8]) for r in rows}
    assert {good for is_esn, good in icv if not is_esn} <= {"1"}, icv


# --- the cases --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["pyike-pyike", "pyike-charon", "charon-pyike"])
def test_mail_over_tunnel(two_hosts: TwoHosts, tmp_path: Path, kind: str) -> None:
    require_binary("smtpd", "opensmtpd")
    require_binary("swaks", "swaks")
    require_binary("tcpdump", "tcpdump")
    require_binary("ss", "iproute2")
    if "charon" in kind:
        require_binary(CHARON_BIN, DEBIAN_PACKAGES)
        require_binary("swanctl", "strongswan-swanctl")
    home, vm = two_hosts
    # The outer link is IPv4 only (192.0.2.0/24): with its IPv6 off, not even neighbour
    # discovery is on it, so "no ICMPv6 on the outer link" can be checked exactly.
    for ns in (home, vm):
        ns.run(["sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1"])
        # pyike sends ESP in UDP GSO batches; a veth hands such a batch to the peer
        # unsegmented, so tcpdump there would see several ESP packets in one UDP
        # datagram. Segmenting at the sender, as a NIC without USO does, gives the
        # capture the datagrams a real wire carries.
        ns.run(["ethtool", "-K", "eth0", "tx-udp-segmentation", "off"])
    pcap_path = tmp_path / "outer.pcap"
    with capture(vm, "eth0", pcap_path), tunnel(kind, two_hosts, tmp_path) as t:
        assert ping(home, VPN1, count=3) >= 2, t.logs()[-3000:]
        assert ping(vm, VPN0, count=3) >= 2, t.logs()[-3000:]
        mail = deliver_mail(two_hosts, tmp_path, kind)
    check_mail(mail)
    seen = check_outer(pcap_path, mail.token)
    assert seen["ike"] >= 4 and seen["esp"] >= 20, seen
    check_decrypted(tshark_decrypt(pcap_path, t.keylog, tmp_path), mail, esn_spis(t.pyike.log()))
    for proc in (t.pyike, t.peer_pyike):
        assert proc is None or "Traceback" not in proc.log()
