"""The NAT mapping changes on an idle tunnel, against real OpenIKED 7.2 with the
guest kernel's ESP (the qemu VM of tests/test_iked_vm.py, docs/iked-vm.md):

    home 2001:db8:2::1 --- 2001:db8:2::fe [nat, tap0] 2001:db8:1::1 === 2001:db8:1::2 VM (iked)
                           (nftables ip6 masquerade to a UDP port range)

After the tunnel is up and idle, the NAT's port range changes and its conntrack
table is flushed, so home's next packets leave from a new public port. Nothing is
sent from home but pyike's own liveness checks; the proof is the guest's ping6
to home getting through within 10 s of the change (the guide's issue: iked's
outbound ESP black-holed on the old port while every liveness check succeeds),
then an SMTP dialogue from the guest to home's port 25, and iked's kernel SAs
sending to the new port.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from interop.vm.case import CONF, HOME_CONF_ONE_POLICY, HOME_ID, HOME_INNER, IKE_TIMEOUT_S, VM_ID
from interop.vm.runner import IkedVM, VMError
from pyike import keys
from tests.nat import PORTS_A, PORTS_B, change_mapping, masquerade
from tests.netns import Netns, require_binary, requires_root, veth_pair
from tests.pyike_proc import PyikeProc, write_keydir
from tests.recovery import SMTP_SERVER

pytestmark = [pytest.mark.interop, pytest.mark.netns, pytest.mark.slow, requires_root]

HOME_OUTER, NAT_IN = "2001:db8:2::1", "2001:db8:2::fe"
NAT_OUT, VM_OUTER = "2001:db8:1::1", "2001:db8:1::2"
RECOVERY_LIMIT = 10.0
DPD = 2  # pyike's idle probe interval here (s)


def _guest_ping(vm: IkedVM, count: int = 1, wait: int = 1) -> int:
    out = vm.run(f"ping -6 -c {count} -W {wait} {HOME_INNER}", timeout=10 + count * wait)
    m = re.search(r"(\d+) packets received", out)
    return int(m.group(1)) if m else 0


def test_nat_rebind_on_idle_tunnel_iked_vm(tmp_path: Path) -> None:
    require_binary("nft", "nftables")
    home_key = ec.generate_private_key(ec.SECP384R1())
    vm_key = ec.generate_private_key(ec.SECP384R1())
    vm_keys = {
        "etc/iked/private/local.key": keys.private_key_pem(vm_key),
        "etc/iked/local.pub": keys.public_key_pem(vm_key.public_key()),
        f"etc/iked/pubkeys/fqdn/{HOME_ID}": keys.public_key_pem(home_key.public_key()),
    }
    home_keys = write_keydir(tmp_path / "home-keys", home_key, {VM_ID: vm_key.public_key()})
    home_conf = tmp_path / "home-iked.conf"
    home_conf.write_text(HOME_CONF_ONE_POLICY)
    home_conf.chmod(0o600)
    with Netns("home") as home, Netns("ikedvm") as nat:
        veth_pair(home, nat, f"{HOME_OUTER}/64", f"{NAT_IN}/64")
        home.run(["ip", "-6", "route", "add", "default", "via", NAT_IN])
        nat.run(["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"])
        masquerade(nat, PORTS_A, family="ip6", oif="tap0")
        vm = IkedVM(
            nat,
            tmp_path / "vm",
            (CONF / "vm-iked.conf").read_text(),
            vm_keys,
            host_addr=f"{NAT_OUT}/64",
            vm_addr=f"{VM_OUTER}/64",
        )
        pyike = smtp = None
        try:
            try:
                vm.start()
            except VMError as e:
                pytest.fail(f"the iked VM did not boot: {e}\n{vm.diagnostics(60)}")
            pyike = PyikeProc(
                home,
                tmp_path,
                home_conf,
                home_keys,
                ["-D", f"vm_host={VM_OUTER}", "--dpd", str(DPD), "--natt-keepalive", "0"],
            ).start()
            pyike.wait_log(r"created Child SA", timeout=IKE_TIMEOUT_S)
            assert _guest_ping(vm, count=3, wait=3) >= 2, vm.diagnostics(60) + pyike.log()
            before = vm.run("ip-full xfrm state")
            # Idle until pyike's NAT-D liveness checks know how iked sees it.
            pyike.wait_log(r"recv INFORMATIONAL res \d+ peer", timeout=3 * DPD + 10, count=2)
            (tmp_path / "mail").mkdir()
            smtp = home.popen(
                [sys.executable, "-c", SMTP_SERVER, HOME_INNER, str(tmp_path / "mail")]
            )
            change_mapping(nat, PORTS_B, family="ip6", oif="tap0")
            changed = time.monotonic()
            answered = None
            while time.monotonic() < changed + RECOVERY_LIMIT:
                if _guest_ping(vm) >= 1:
                    answered = time.monotonic()
                    break
            log = pyike.log()
            after = vm.run("ip-full xfrm state")
            assert answered is not None, (
                f"no echo from home within {RECOVERY_LIMIT} s\nxfrm before:\n{before}\n"
                f"after:\n{after}\n{vm.diagnostics(80)}\n{log[-5000:]}"
            )
            print(f"\nNAT mapping change to a ping6 from the iked VM: {answered - changed:.2f} s")
            smtp_out = vm.run(
                f"printf 'EHLO namorar.example.com\\r\\nQUIT\\r\\n' | nc -w 5 {HOME_INNER} 25",
                timeout=20,
            )
            assert "220 home ESMTP" in smtp_out and "221 bye" in smtp_out, smtp_out
            print(f"SMTP from the VM to home: {time.monotonic() - changed:.2f} s after the change")
            print(f"xfrm after:\n{after}")
            assert "NAT mapping changed" in log, log[-3000:]
            # iked's kernel sends ESP to the new mapping (the old SAs are gone).
            out_ports = re.findall(
                rf"src {VM_OUTER} dst {NAT_OUT}\n(?:\t.*\n)*?\tencap type espinudp sport 4500 "
                r"dport (\d+)",
                after,
            )
            lo, hi = (int(p) for p in PORTS_B.split("-"))
            assert out_ports and all(lo <= int(p) <= hi for p in out_ports), after
            assert re.search(r"rekeying Child SA", log), log[-3000:]
            assert "re-establishing" not in log and "negotiating a replacement" not in log
        finally:
            if smtp is not None:
                home.stop(smtp)
            if pyike is not None:
                pyike.stop()
            vm.stop()
    assert pyike is not None and "Traceback" not in pyike.log()
