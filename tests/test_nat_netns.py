"""A NAT mapping that changes while the tunnel is idle (router reboot, CGNAT
timeout), against strongSwan's charon with MOBIKE, in three namespaces:

    home 192.0.2.1 --- 192.0.2.254 nat 203.0.113.254 --- 203.0.113.2 vm (charon)
                       (nftables masquerade to a port range)

After the tunnel is up and idle, the NAT's port range changes and its conntrack
table is flushed: home's next packets leave from a new public port. pyike's
liveness check carries NAT_DETECTION_*_IP (RFC 4555 3.5); charon's answer shows
the new mapping, pyike sends UPDATE_SA_ADDRESSES and charon's ESP follows. The
proof: a ping from the VM (no traffic from home meanwhile) gets through within
10 s of the change, and charon still has the same IKE SA.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from interop.strongswan import Charon
from pyike import keys
from tests.nat import PORTS_A, PORTS_B, VM_ADDR, change_mapping, wire_nat
from tests.netns import Netns, ping, require_binary, requires_root, wait_until
from tests.pyike_proc import PyikeProc, write_keydir
from tests.test_interop_strongswan import (
    GCM,
    HOME_ID,
    HOME_INNER,
    TIMEOUT_S,
    VM_ID,
    VM_INNER,
    _add_inner,
    _keys,
    _need_tools,
)

pytestmark = [pytest.mark.interop, pytest.mark.netns, requires_root]

RECOVERY_LIMIT = 10.0
DPD = 2  # pyike's idle probe interval here (s)


@pytest.fixture
def three_hosts() -> Iterator[tuple[Netns, Netns, Netns]]:
    require_binary("nft", "nftables")
    with Netns("home") as home, Netns("nat") as nat, Netns("vm") as vm:
        wire_nat(home, nat, vm, PORTS_A)
        yield home, nat, vm


def test_nat_rebind_on_idle_tunnel_charon(three_hosts, tmp_path: Path) -> None:
    _need_tools()
    home, nat, vm = three_hosts
    k = _keys()
    _add_inner(vm, VM_INNER)
    home_keys = write_keydir(tmp_path / "home-keys", k.home, {VM_ID: k.vm.public_key()})
    conf = tmp_path / "home-iked.conf"
    conf.write_text(
        f'ikev2 "tun" active esp from {HOME_INNER} to {VM_INNER} \\\n'
        f"\tpeer {VM_ADDR} \\\n"
        f"\t{GCM.pyike} \\\n"
        f"\tsrcid {HOME_ID} dstid {VM_ID} \\\n"
        "\tecdsa384\n"
    )
    charon = Charon(
        vm,
        tmp_path / "charon",
        name="tun",
        local_addr=VM_ADDR,
        remote_addr="%any",
        local_id=VM_ID,
        remote_id=HOME_ID,
        private_key_pem=keys.private_key_pem(k.vm, pkcs8=True),
        peer_public_pem=keys.public_key_pem(k.home.public_key()),
        ike_proposals=GCM.charon,
        esp_proposals=GCM.esp,
        local_ts=f"{VM_INNER}/128",
        remote_ts=f"{HOME_INNER}/128",
        encap=True,
        rfc7427=True,
    )
    with charon:
        charon.load()
        pyike = PyikeProc(
            home, tmp_path, conf, home_keys, ["--dpd", str(DPD), "--natt-keepalive", "0"]
        ).start()
        try:
            pyike.wait_log(r"created Child SA", timeout=TIMEOUT_S)
            charon.wait_established(timeout=TIMEOUT_S)
            assert ping(vm, HOME_INNER, count=2) >= 1, charon.log_text()[-3000:]
            (before,) = charon.list_sas()
            old_port = int(before["remote-port"])
            assert 40000 <= old_port <= 40099, before
            # Idle until liveness checks have told pyike how charon sees it, and charon
            # has sent its MOBIKE address list (once its namespace's IPv6 link-local
            # addresses settle, about 2 s in): a request of charon's still in flight
            # to the old mapping would hold back its Child SA rekey after the move
            # until its own retransmission (charon's behaviour, not the NAT's).
            pyike.wait_log(r"recv INFORMATIONAL res \d+ peer", timeout=3 * DPD + 5, count=3)
            time.sleep(0.5)
            change_mapping(nat, PORTS_B)
            changed = time.monotonic()
            answered = None
            while time.monotonic() < changed + RECOVERY_LIMIT:
                if ping(vm, HOME_INNER, count=1, timeout=0.5) >= 1:
                    answered = time.monotonic()
                    break
            log = pyike.log()
            assert answered is not None, log[-4000:] + charon.log_text()[-4000:]
            print(f"\nNAT mapping change to a ping from the VM: {answered - changed:.2f} s")
            assert re.search(r"NAT mapping changed", log), log[-3000:]
            wait_until(
                lambda: 41000 <= int(charon.list_sas()[0]["remote-port"]) <= 41099,
                5,
                what="charon's IKE SA on the new mapping",
            )
            (after,) = charon.list_sas()
            assert (after["initiator-spi"], after["responder-spi"]) == (
                before["initiator-spi"],
                before["responder-spi"],
            ), after
            assert "re-establishing" not in log and "negotiating a replacement" not in log
        finally:
            pyike.stop()
    assert "Traceback" not in pyike.log()
