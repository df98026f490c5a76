"""``pyike demo``: the guide's tunnel on this one machine, in two namespaces.

    home (carinho.lan)  192.0.2.1 --veth-- 192.0.2.2  vm (namorar.example.com)
    TUN 2001:db8:c1da::1                              TUN 2001:db8:c1da::2

pyike runs at both ends with the guide's iked.conf policies (three active
policies at home, one passive on the VM) and ECDSA P-384 raw keys in iked's
layout. Once the tunnel is up, the VM pings home, then mail goes the guide's
way: OpenSMTPD runs at both ends (private spool and /run each, pyike.mta), a
message submitted at the VM with swaks is relayed to [2001:db8:c1da::1]:25 through
the tunnel, and home's smtpd delivers it to a Maildir. Without smtpd and swaks
(apt-get install opensmtpd swaks) a minimal SMTP server stands in, and the demo
says so. Everything it creates (namespaces, processes, files) is removed at the
end, also on Ctrl-C. Documentation addresses only; nothing leaves this machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pyike import keys, mta
from pyike.registry import IdType

VPN0, VPN1 = "2001:db8:c1da::1", "2001:db8:c1da::2"
HOME_IP, VM_IP = "192.0.2.1", "192.0.2.2"

HOME_CONF = f"""\
vpn0 = "{VPN0}"
vpn1 = "{VPN1}"
vm = "{VM_IP}"
ikev2 "smtp-in" active esp proto tcp from $vpn0 port 25 to $vpn1 \\
\tpeer $vm srcid carinho.lan dstid namorar.example.com ecdsa384
ikev2 "smtp-out" active esp proto tcp from $vpn0 to $vpn1 port 25 \\
\tpeer $vm srcid carinho.lan dstid namorar.example.com ecdsa384
ikev2 "icmp6" active esp proto icmp6 from $vpn0 to $vpn1 \\
\tpeer $vm srcid carinho.lan dstid namorar.example.com ecdsa384
"""

VM_CONF = f"""\
vpn0 = "{VPN0}"
vpn1 = "{VPN1}"
ikev2 "carinho" passive esp from $vpn1 to $vpn0 local {VM_IP} peer any \\
\tsrcid namorar.example.com dstid carinho.lan ecdsa384
"""

# A tiny SMTP server for the home side: accepts one message and prints it.
SMTP_SINK = f"""
import asyncio, sys
async def session(r, w):
    w.write(b"220 carinho.lan pyike demo ESMTP\\r\\n")
    data, in_data = [], False
    while line := await r.readline():
        if in_data:
            if line == b".\\r\\n":
                in_data = False
                w.write(b"250 queued\\r\\n")
                print("".join(data), end="", flush=True)
            else:
                data.append(line.decode(errors="replace").replace("\\r\\n", "\\n"))
            continue
        cmd = line[:4].upper()
        if cmd == b"DATA":
            in_data = True
            w.write(b"354 go ahead\\r\\n")
        elif cmd == b"QUIT":
            w.write(b"221 bye\\r\\n"); await w.drain(); w.close(); asyncio.get_running_loop().stop()
            return
        else:
            w.write(b"250 ok\\r\\n")
        await w.drain()
loop = asyncio.new_event_loop()
loop.run_until_complete(asyncio.start_server(session, "{VPN0}", 25))
print("smtp server listening on [{VPN0}]:25", flush=True)
loop.call_later(60, loop.stop)
loop.run_forever()
"""

SMTP_CLIENT = f"""
import smtplib
with smtplib.SMTP("{VPN0}", 25, timeout=20) as s:
    s.sendmail("postmaster@namorar.example.com", ["you@carinho.lan"],
               "Subject: delivered through pyike\\r\\n\\r\\n"
               "Hello from the VM, over IKEv2/ESP.\\r\\n")
print("mail accepted by [{VPN0}]:25")
"""


def say(text: str) -> None:
    print(f"\033[1m==> {text}\033[0m" if sys.stdout.isatty() else f"==> {text}", flush=True)


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=20)


def write_keys(
    root: Path, private: ec.EllipticCurvePrivateKey, peer_id: str, peer: ec.EllipticCurvePublicKey
) -> None:
    (root / "private").mkdir(parents=True, mode=0o700)
    key = root / "private" / "local.key"
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    key.chmod(0o600)
    (root / "local.pub").write_bytes(keys.public_key_pem(private.public_key()))
    keys.install_peer_key(root, IdType.ID_FQDN, peer_id, keys.public_key_pem(peer))


def wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.1)
    return False


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group we started (each in its own session), by its PID;
    SIGKILL if it does not go within 5 s. smtpd's helpers share the group."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            continue
    if proc.poll() is None:
        proc.wait(5)


def wait_listening(ns: str, port: int, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        r = subprocess.run(
            ["ip", "netns", "exec", ns, "ss", "-Hltn", f"sport = :{port}"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if r.stdout.strip():
            return True
        time.sleep(0.1)
    return False


def opensmtpd_mail(
    work: Path, home_ns: str, vm_ns: str, procs: list[subprocess.Popen], mailboxes: list[Path]
) -> bool:
    """The guide's mail path with real OpenSMTPD at both ends; True if it arrived."""
    say(
        f"OpenSMTPD at both ends: the VM relays mail for {mta.MAIL_DOMAIN} to "
        f"[{VPN0}], home delivers it to a Maildir (as user {mta.DELIVERY_USER})"
    )
    box_root, aliases = mta.make_mailbox()
    mailboxes.append(box_root)
    maildir = box_root / "box" / "Maildir"
    home = mta.SmtpdInstance(work / "smtpd-home", mta.home_conf(VPN0, VPN1, maildir, aliases))
    vm = mta.SmtpdInstance(work / "smtpd-vm", mta.vm_conf(VPN0))
    for ns, inst in ((home_ns, home.prepare()), (vm_ns, vm.prepare())):
        with inst.log.open("wb") as log:
            procs.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", ns, *inst.command()],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        if not wait_listening(ns, 25, procs[-1], 15):
            print(inst.log_text(), file=sys.stderr)
            say(f"smtpd did not start in {ns} (its log above)")
            return False
    print(f"   home: smtpd listening on [{VPN0}]:25, Maildir {maildir}")
    print(f"   vm:   smtpd listening on 127.0.0.1:25, relay host smtp://[{VPN0}]")

    token = os.urandom(8).hex()
    subject = f"delivered through pyike ({token})"
    say("the VM submits a mail with swaks; its smtpd relays it over the tunnel")
    r = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            vm_ns,
            *mta.swaks_command("127.0.0.1", subject, "Hello from the VM, over IKEv2/ESP.\n"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    accepted = [x for x in r.stdout.splitlines() if "Message accepted" in x]
    print("   vm:   swaks: " + (accepted[0].strip() if accepted else r.stdout[-500:]))
    deadline = time.monotonic() + 30
    while not mta.delivered(maildir) and time.monotonic() < deadline:
        time.sleep(0.1)
    for inst, side in ((vm, "vm"), (home, "home")):
        for line in inst.log_text().splitlines():
            if " mta delivery " in line or " mda delivery " in line:
                print(f"   {side + ':':5} smtpd: {line.split(' ', 1)[1]}")
    messages = mta.delivered(maildir)
    if not messages:
        print(home.log_text()[-2000:] + vm.log_text()[-2000:], file=sys.stderr)
        return False
    files = sorted((maildir / "new").iterdir())
    print(f"   home: in the Maildir: {files[0]}")
    text = files[0].read_text(errors="replace")
    print(
        "".join(
            f"     | {x}\n" for x in text.splitlines() if not x.startswith(("Received:", "\t", " "))
        ),
        end="",
    )
    msg = messages[0]
    return msg["Subject"] == subject and "Hello from the VM" in str(msg.get_payload())


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="pyike demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--keep", action="store_true", help="leave the logs in a temp dir")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print(
            "pyike demo: needs root (network namespaces, TUN devices); run: sudo tools/demo",
            file=sys.stderr,
        )
        return 1
    if shutil.which("ip") is None:
        print("pyike demo: needs the 'ip' command: apt-get install iproute2", file=sys.stderr)
        return 1
    tag = f"{os.getpid()}"
    home_ns, vm_ns = f"pyike-demo-home-{tag}", f"pyike-demo-vm-{tag}"
    work = Path(tempfile.mkdtemp(prefix="pyike-demo-"))
    procs: list[subprocess.Popen] = []
    mailboxes: list[Path] = []
    ok = False
    try:
        say(f"network namespaces {home_ns} and {vm_ns}, veth 192.0.2.1 <-> 192.0.2.2")
        for ns in (home_ns, vm_ns):
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip(
            "link",
            "add",
            "pyd-h" + tag[-6:],
            "netns",
            home_ns,
            "type",
            "veth",
            "peer",
            "name",
            "pyd-v" + tag[-6:],
            "netns",
            vm_ns,
        )
        for ns, dev, addr in ((home_ns, "pyd-h", HOME_IP), (vm_ns, "pyd-v", VM_IP)):
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev + tag[-6:])
            ip("-n", ns, "link", "set", dev + tag[-6:], "up")

        say("ECDSA P-384 keys in iked's layout; the guide's iked.conf on each side")
        hk, vk = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
        write_keys(work / "home", hk, "namorar.example.com", vk.public_key())
        write_keys(work / "vm", vk, "carinho.lan", hk.public_key())
        for name, text in (("home.conf", HOME_CONF), ("vm.conf", VM_CONF)):
            (work / name).write_text(text)
            (work / name).chmod(0o600)
        print(HOME_CONF, end="")

        def pyike(ns: str, side: str) -> tuple[subprocess.Popen, Path]:
            log = work / f"{side}.log"
            with log.open("wb") as f:
                proc = subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        ns,
                        sys.executable,
                        "-m",
                        "pyike",
                        "-f",
                        str(work / f"{side}.conf"),
                        "--keydir",
                        str(work / side),
                        "-s",  # each its own control socket (not the host's /run/pyike.sock)
                        str(work / f"{side}.sock"),
                        "-v",
                    ],
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            procs.append(proc)
            return proc, log

        say("starting pyike on the VM (passive) and at home (active)")
        vm_proc, vm_log = pyike(vm_ns, "vm")
        if not wait_for(vm_log, "loaded 1 policy", vm_proc, 15):
            print(vm_log.read_text(), file=sys.stderr)
            return 1
        time.sleep(0.5)
        home_proc, home_log = pyike(home_ns, "home")
        deadline = time.monotonic() + 30
        while home_log.read_text().count("created Child SA") < 3:
            if time.monotonic() > deadline or home_proc.poll() is not None:
                print(home_log.read_text(), file=sys.stderr)
                say("the tunnel did not come up (logs above)")
                return 1
            time.sleep(0.1)
        for line in home_log.read_text().splitlines():
            if "established" in line or "created Child SA" in line:
                print("   " + line)

        say(f"ping6 from the VM to home ({VPN0}) through the tunnel")
        r = subprocess.run(
            ["ip", "netns", "exec", vm_ns, "ping", "-6", "-c", "3", "-W", "2", VPN0],
            capture_output=True,
            text=True,
            timeout=20,
        )
        if r.returncode != 0 and shutil.which("ping") is None:
            print("   (no ping command: apt-get install iputils-ping)")
        else:
            print("   " + "\n   ".join(r.stdout.strip().splitlines()[-2:]))

        missing = mta.missing_tools()
        if not missing:
            ok = opensmtpd_mail(work, home_ns, vm_ns, procs, mailboxes)
            say(
                "done: the tunnel carried ICMPv6 and SMTP, OpenSMTPD delivered the mail"
                if ok
                else "the mail did not arrive"
            )
            return 0 if ok else 1
        say(
            f"{' and '.join(missing)} not installed ({mta.APT_HINT}): using a minimal "
            "SMTP server at home instead of OpenSMTPD"
        )
        say(f"the VM delivers a mail to [{VPN0}]:25 at home, over the tunnel")
        sink = subprocess.Popen(
            ["ip", "netns", "exec", home_ns, sys.executable, "-c", SMTP_SINK],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        procs.append(sink)
        assert sink.stdout is not None
        print("   home: " + sink.stdout.readline().strip())
        r = subprocess.run(
            ["ip", "netns", "exec", vm_ns, sys.executable, "-c", SMTP_CLIENT],
            capture_output=True,
            text=True,
            timeout=30,
        )
        print("   vm:   " + (r.stdout.strip() or r.stderr.strip()))
        body = sink.communicate(timeout=20)[0]
        print("   home received:\n" + "".join(f"     | {x}\n" for x in body.splitlines()), end="")
        ok = r.returncode == 0 and "Hello from the VM" in body
        say("done: the tunnel carried ICMPv6 and SMTP" if ok else "the mail did not arrive")
        return 0 if ok else 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    except (OSError, subprocess.SubprocessError) as e:
        print(f"pyike demo: {e}", file=sys.stderr)
        return 1
    finally:
        say("tearing down")
        for proc in reversed(procs):
            stop(proc)
        for ns in (home_ns, vm_ns):
            ip("netns", "del", ns, check=False)
        for box in mailboxes:
            shutil.rmtree(box, ignore_errors=True)
        if args.keep or not ok:
            print(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
