"""pyike <-> pyike in two network namespaces, with the guide's iked.conf files.

Real daemons, real UDP sockets, real TUN devices: home (active, three
policies) and vm (one passive policy) bring the tunnel up, and traffic
crosses it. The outer link only ever carries ESP-in-UDP and IKE.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from pyike import pcap
from tests.netns import TwoHosts, capture, ping, require_binary, wait_until
from tests.pyike_proc import CONF, PyikeProc, write_keydir

pytestmark = [pytest.mark.netns]

VPN0 = "2001:db8:c1da::1"
VPN1 = "2001:db8:c1da::2"


def start_pair(
    hosts: TwoHosts, tmp: Path, home_args: tuple = (), vm_args: tuple = ()
) -> tuple[PyikeProc, PyikeProc]:
    hk, vk = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    home_keys = write_keydir(tmp / "home-keys", hk, {"namorar.example.com": vk.public_key()})
    vm_keys = write_keydir(tmp / "vm-keys", vk, {"carinho.lan": hk.public_key()})
    vm = PyikeProc(
        hosts.vm, tmp, CONF / "vm-iked.conf", vm_keys, ["-D", "ext=192.0.2.2", *vm_args]
    ).start()
    vm.wait_log(r"listening on IPv4 UDP port 4500", timeout=15)
    home = PyikeProc(
        hosts.home, tmp, CONF / "home-iked.conf", home_keys, ["-D", "vm_host=192.0.2.2", *home_args]
    ).start()
    return home, vm


def tcp_roundtrip(
    hosts: TwoHosts, server_ns, client_ns, addr: str, port: int, payload: bytes
) -> bytes:
    """Echo ``payload`` through a TCP server in one namespace from the other."""
    server = server_ns.popen(
        [
            "python3",
            "-c",
            (
                "import socket\n"
                "s=socket.socket(socket.AF_INET6)\n"
                "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
                f"s.bind(('{addr}',{port})); s.listen(1); s.settimeout(20)\n"
                "c,_=s.accept(); c.settimeout(20); data=b''\n"
                "while True:\n"
                "    b=c.recv(65536)\n"
                "    if not b: break\n"
                "    data+=b\n"
                "c.sendall(data); c.close()\n"
            ),
        ]
    )
    time.sleep(0.3)
    client = client_ns.run(
        [
            "python3",
            "-c",
            (
                "import socket,sys\n"
                f"c=socket.create_connection(('{addr}',{port}),timeout=20)\n"
                f"c.sendall(bytes.fromhex('{payload.hex()}')); c.shutdown(socket.SHUT_WR)\n"
                "data=b''\n"
                "while True:\n"
                "    b=c.recv(65536)\n"
                "    if not b: break\n"
                "    data+=b\n"
                "sys.stdout.write(data.hex())\n"
            ),
        ],
        timeout=30,
    )
    server_ns.stop(server, grace=2)
    out = client.stdout
    return bytes.fromhex(out.decode() if isinstance(out, bytes) else out)


def test_pyike_pair_tunnel(two_hosts: TwoHosts, tmp_path: Path) -> None:
    require_binary("tcpdump", "tcpdump")
    pcap_path = tmp_path / "outer.pcap"
    with capture(two_hosts.vm, "eth0", pcap_path, "udp"):
        home, vm = start_pair(two_hosts, tmp_path)
        try:
            home.wait_log(r"established .*policy 'smtp-in' as initiator")
            home.wait_log(r"established .*as initiator", count=3)
            vm.wait_log(r"created Child SA", count=3)
            # ICMPv6 both ways through the icmp6 policy's Child SA.
            assert ping(two_hosts.home, VPN1, count=3) >= 2
            assert ping(two_hosts.vm, VPN0, count=3) >= 2
            # TCP from the VM to port 25 at home (the guide's smtp-in flow).
            payload = bytes(range(256)) * 200  # 51 KB: many full-size segments
            assert (
                tcp_roundtrip(two_hosts, two_hosts.home, two_hosts.vm, VPN0, 25, payload) == payload
            )
        finally:
            home_rc = home.stop()
            vm.wait_log(r"deleted by peer|IKE SA closed", timeout=10)
            vm.stop()
    assert home_rc == 0, home.log()[-3000:]
    datagrams = list(pcap.read_capture(pcap_path))
    assert datagrams
    for d in datagrams:
        # Only IKE (500, or 4500 with the non-ESP marker) and ESP-in-UDP: no inner
        # IPv6 packet ever appears in clear on the outer link.
        assert {d.sport, d.dport} <= {500, 4500}, (d.sport, d.dport)
        assert bytes.fromhex(VPN0.replace(":", "").ljust(32, "0"))[:6] not in d.payload[:64]
    assert sum(pcap.is_esp(d) for d in datagrams) > 20
    assert "Traceback" not in home.log() + vm.log()


def test_wrong_key_is_refused_by_both_sides(two_hosts: TwoHosts, tmp_path: Path) -> None:
    hk, vk = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    stranger = ec.generate_private_key(ec.SECP384R1())
    home_keys = write_keydir(tmp_path / "home-keys", hk, {"namorar.example.com": vk.public_key()})
    vm_keys = write_keydir(tmp_path / "vm-keys", vk, {"carinho.lan": stranger.public_key()})
    vm = PyikeProc(
        two_hosts.vm, tmp_path, CONF / "vm-iked.conf", vm_keys, ["-D", "ext=192.0.2.2"]
    ).start()
    vm.wait_log(r"listening on IPv4 UDP port 4500")
    home = PyikeProc(
        two_hosts.home, tmp_path, CONF / "home-iked.conf", home_keys, ["-D", "vm_host=192.0.2.2"]
    ).start()
    try:
        vm.wait_log(r"AUTHENTICATION_FAILED: .*signature of fqdn/carinho.lan does not verify")
        home.wait_log(r"IKE_AUTH refused by peer: AUTHENTICATION_FAILED")
        assert "created Child SA" not in home.log() + vm.log()
    finally:
        home.stop()
        vm.stop()
    assert "Traceback" not in home.log() + vm.log()


def test_config_others_can_read_is_refused_like_iked(tmp_path: Path) -> None:
    """iked's check_file_secrecy(): a config file (it may hold PSKs) that others can
    read is refused, with the remedy; 0600 is accepted."""
    conf = tmp_path / "iked.conf"
    conf.write_text('ikev2 "x" passive esp from 2001:db8::1 to 2001:db8::2 psk "s3cret"\n')
    conf.chmod(0o644)
    r = subprocess.run(
        [__import__("sys").executable, "-m", "pyike", "-n", "-f", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 1, r.stderr
    assert "world read/writable (mode 0644)" in r.stderr and f"chmod 600 {conf}" in r.stderr
    assert "Traceback" not in r.stderr
    conf.chmod(0o600)
    r = subprocess.run(
        [__import__("sys").executable, "-m", "pyike", "-n", "-f", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr


def test_bad_config_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "iked.conf"
    bad.write_text(
        'ikev2 "x" active esp from 2001:db8::1 to 2001:db8::2 peer 192.0.2.9 ikesa enc aes-999\n'
    )
    bad.chmod(0o600)
    r = subprocess.run(
        [__import__("sys").executable, "-m", "pyike", "-n", "-f", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 1
    assert "iked.conf:1:" in r.stderr and "aes-999" in r.stderr
    assert "Traceback" not in r.stderr
    assert socket


def _demo_leftovers(tag: str) -> list[str]:
    """Namespaces of the demo run ``tag`` (its PID) that still exist."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    return [
        line.split()[0]
        for line in out.splitlines()
        if line.endswith(tag) or f"-{tag} " in line + " "
    ]


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args:
            found.append(f"{cmdline.parent.name}: {args}")
    return found


def test_readme_demo_command(stale_netns_swept: None) -> None:
    """The README's first command: `pyike demo` brings the tunnel up, and OpenSMTPD at
    the VM relays a mail through it to home's OpenSMTPD, which delivers it to a Maildir."""
    import sys

    require_binary("smtpd", "opensmtpd")
    require_binary("swaks", "swaks")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyike", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    assert "done: the tunnel carried ICMPv6 and SMTP, OpenSMTPD delivered the mail" in out
    # smtpd's own log lines: the VM relayed over the tunnel, home delivered locally.
    assert re.search(r'vm: +smtpd: mta delivery .*relay="\[2001:db8:c1da::1\].*result="Ok"', out), (
        out
    )
    assert re.search(r"home: smtpd: mda delivery .*user=nobody .*result=Ok stat=Delivered", out), (
        out
    )
    m = re.search(r"home: in the Maildir: (\S+/Maildir/new/\S+)", out)
    assert m, out
    assert re.search(r"\| Subject: delivered through pyike \([0-9a-f]{16}\)", out), out
    assert "| Hello from the VM, over IKEv2/ESP." in out
    assert "Traceback" not in out + err
    # Torn down: namespaces, processes and the mailbox are gone.
    assert _demo_leftovers(str(proc.pid)) == []
    assert not Path(m[1]).exists()


def test_demo_ctrl_c_tears_everything_down(stale_netns_swept: None) -> None:
    """SIGINT while both smtpds run: exit 130, no namespace, no process, no mailbox left."""
    import signal
    import sys

    require_binary("smtpd", "opensmtpd")
    require_binary("swaks", "swaks")
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "pyike", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "vm:   smtpd listening" in line:
                break
        assert any("vm:   smtpd listening" in x for x in lines), "".join(lines)
        maildir = re.search(r"Maildir (/\S+)", "".join(lines))
        assert maildir, "".join(lines)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    out = "".join(lines) + rest
    assert proc.returncode == 130, out[-3000:]
    assert "==> interrupted" in out and "==> tearing down" in out
    assert "Traceback" not in out
    assert _demo_leftovers(str(proc.pid)) == []
    work = re.search(r"logs kept in (\S+)", out)
    assert work, out
    assert _processes_mentioning(work[1]) == []  # no smtpd (or pyike) survived
    assert not Path(maildir[1]).parent.parent.exists()  # the mailbox under /tmp
    import shutil

    shutil.rmtree(work[1], ignore_errors=True)


def _catches(pid: int, sig: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def test_sighup_reloads_and_keeps_old_config_on_error(two_hosts: TwoHosts, tmp_path: Path) -> None:
    import signal

    vk = ec.generate_private_key(ec.SECP384R1())
    keys_dir = write_keydir(tmp_path / "vm-keys", vk, {})
    conf = tmp_path / "iked.conf"
    conf.write_text((CONF / "vm-iked.conf").read_text().replace("203.0.113.2", "192.0.2.2"))
    conf.chmod(0o600)
    vm = PyikeProc(two_hosts.vm, tmp_path, conf, keys_dir).start()
    try:
        vm.wait_log(r"loaded 1 policy")
        # "loaded" is logged before the event loop installs its SIGHUP handler (after the
        # TUN set-up): until then SIGHUP would kill it. Wait until the kernel says the
        # process catches SIGHUP (SigCgt in /proc/PID/status).
        wait_until(lambda: _catches(vm.proc.pid, signal.SIGHUP), 20, what="pyike to catch SIGHUP")
        conf.write_text(
            conf.read_text() + '\nikev2 "second" passive esp from 2001:db8:c1da::2 '
            "to 2001:db8:c1da::3 peer any srcid namorar.example.com ecdsa384\n"
        )
        vm.proc.send_signal(signal.SIGHUP)
        vm.wait_log(r"loaded 2 policies")
        conf.write_text("ikev2 esp from nonsense\n")
        vm.proc.send_signal(signal.SIGHUP)
        vm.wait_log(r"reload failed, keeping the old configuration: .*iked.conf:1:")
        assert vm.proc.poll() is None  # still serving
    finally:
        rc = vm.stop()
    assert rc == 0
    assert "Traceback" not in vm.log()


def test_home_sends_nat_keepalives(two_hosts: TwoHosts, tmp_path: Path) -> None:
    """RFC 3948 2.3: 1-byte 0xFF datagrams from home's UDP 4500 keep a NAT open."""
    require_binary("tcpdump", "tcpdump")
    pcap_path = tmp_path / "keepalive.pcap"
    with capture(two_hosts.vm, "eth0", pcap_path, "udp port 4500"):
        home, vm = start_pair(two_hosts, tmp_path, home_args=("--natt-keepalive", "0.5"))
        try:
            home.wait_log(r"established .*as initiator", count=3)
            time.sleep(2.0)
        finally:
            home.stop()
            vm.stop()
    keepalives = [d for d in pcap.read_capture(pcap_path) if pcap.is_nat_keepalive(d)]
    assert len(keepalives) >= 3
    assert {(str(d.src), d.sport, d.dport) for d in keepalives} == {("192.0.2.1", 4500, 4500)}
    assert "Traceback" not in vm.log()
