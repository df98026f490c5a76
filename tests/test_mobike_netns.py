"""MOBIKE (RFC 4555) against strongSwan's charon (MOBIKE on by default there) in
namespaces: home's outer address changes, pyike learns it from netlink and moves
the IKE SA with UPDATE_SA_ADDRESSES; charon keeps the same IKE SA (same SPIs) and
the tunnel carries ping again within 5 s."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.netns import TwoHosts, ping
from tests.pyike_proc import PyikeProc, write_keydir
from tests.test_interop_strongswan import (
    GCM,
    HOME_ADDR,
    HOME_ID,
    HOME_INNER,
    TIMEOUT_S,
    VM_ADDR,
    VM_ID,
    VM_INNER,
    _add_inner,
    _charon,
    _keys,
    _need_tools,
)

pytestmark = [pytest.mark.interop, pytest.mark.netns]

NEW_HOME_ADDR = "192.0.2.11"
MOVE_LIMIT = 5.0  # seconds from the address change to a ping through the tunnel


def _home_conf(path: Path, sets: str = "") -> Path:
    path.write_text(
        sets + f'ikev2 "tun" active esp from {HOME_INNER} to {VM_INNER} \\\n'
        f"\tpeer {VM_ADDR} \\\n"
        f"\t{GCM.pyike} \\\n"
        f"\tsrcid {HOME_ID} dstid {VM_ID} \\\n"
        "\tecdsa384\n"
    )
    return path


def _settle(pyike: PyikeProc, limit: float = 4.0) -> None:
    """Give charon (up to ``limit`` s) to send its MOBIKE address list, which it does
    once its namespace's IPv6 link-local addresses settle: a request of charon's in
    flight on the old path holds back its Child SA rekey after a move until charon
    retransmits it (its behaviour, seconds, not pyike's)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and "send INFORMATIONAL res 0 " not in pyike.log():
        time.sleep(0.1)


def _ping_within(ns, addr: str, deadline: float) -> float | None:
    """Ping until one answer or ``deadline`` (monotonic); when the answer came."""
    while time.monotonic() < deadline:
        if ping(ns, addr, count=1, timeout=0.5) >= 1:
            return time.monotonic()
    return None


def test_address_change_moves_sa_with_charon(two_hosts: TwoHosts, tmp_path: Path) -> None:
    _need_tools()
    home, vm = two_hosts
    k = _keys()
    _add_inner(vm, VM_INNER)
    home_keys = write_keydir(tmp_path / "home-keys", k.home, {VM_ID: k.vm.public_key()})
    conf = _home_conf(tmp_path / "home-iked.conf")
    charon = _charon(
        vm,
        tmp_path / "charon",
        home=False,
        own=k.vm,
        peer_public=k.home.public_key(),
        suite=GCM,
        rfc7427=True,
    )
    charon.remote_addr = "%any"  # home may come from any address (MOBIKE moves it)
    with charon:
        charon.load()
        pyike = PyikeProc(home, tmp_path, conf, home_keys).start()
        try:
            pyike.wait_log(r"created Child SA", timeout=TIMEOUT_S)
            charon.wait_established(timeout=TIMEOUT_S)
            (before,) = charon.list_sas()
            assert ping(home, VM_INNER, count=2) >= 1, pyike.log()[-3000:]
            spis = (before["initiator-spi"], before["responder-spi"])
            assert before["remote-host"] == HOME_ADDR
            _settle(pyike)
            # (Deleting the primary address first: it would take a secondary with it.)
            home.run(["ip", "addr", "del", f"{HOME_ADDR}/24", "dev", "eth0"])
            home.run(["ip", "addr", "add", f"{NEW_HOME_ADDR}/24", "dev", "eth0"])
            changed = time.monotonic()
            answered = _ping_within(home, VM_INNER, changed + MOVE_LIMIT)
            log = pyike.log()
            assert answered is not None, log[-4000:] + charon.log_text()[-3000:]
            print(f"\nMOBIKE move to a ping through the tunnel: {answered - changed:.2f} s")
            assert re.search(r"moved to local \[192\.0\.2\.11\]:4500 .*MOBIKE", log), log[-3000:]
            sas = charon.list_sas()
            assert len(sas) == 1, sas
            (after,) = sas
            assert (after["initiator-spi"], after["responder-spi"]) == spis, after
            assert after["remote-host"] == NEW_HOME_ADDR, after
            assert "re-establishing" not in log
            # The way back too (charon may have rekeyed its Child SA after the move).
            assert ping(vm, HOME_INNER, count=3) >= 2, charon.log_text()[-3000:]
            installed = [c for c in after["child-sas"].values() if c["state"] == "INSTALLED"]
            assert installed, after
        finally:
            pyike.stop()
    assert "Traceback" not in pyike.log()


def test_charon_moves_pyike_responder_follows(two_hosts: TwoHosts, tmp_path: Path) -> None:
    """charon at home initiates; home's address changes; charon sends
    UPDATE_SA_ADDRESSES; pyike (the VM, the guide's vm-iked.conf) lets the IKE SA follow
    and moves its ESP after charon answered the return routability check."""
    from tests.pyike_proc import CONF

    _need_tools()
    home, vm = two_hosts
    k = _keys()
    _add_inner(home, HOME_INNER)
    vm_keys = write_keydir(tmp_path / "vm-keys", k.vm, {HOME_ID: k.home.public_key()})
    charon = _charon(
        home,
        tmp_path / "charon",
        home=True,
        own=k.home,
        peer_public=k.vm.public_key(),
        suite=GCM,
        rfc7427=True,
    )
    charon.local_addr = "%any"  # charon may move to any of home's addresses
    pyike = PyikeProc(vm, tmp_path, CONF / "vm-iked.conf", vm_keys, ["-D", f"ext={VM_ADDR}"])
    pyike.start()
    try:
        pyike.wait_log(r"listening on IPv4 UDP port 4500", timeout=15)
        with charon:
            charon.load()
            charon.initiate(timeout=TIMEOUT_S)
            charon.wait_established(timeout=TIMEOUT_S)
            pyike.wait_log(r"created Child SA", timeout=TIMEOUT_S)
            (before,) = charon.list_sas()
            assert ping(vm, HOME_INNER, count=2) >= 1, pyike.log()[-3000:]
            home.run(["ip", "addr", "del", f"{HOME_ADDR}/24", "dev", "eth0"])
            home.run(["ip", "addr", "add", f"{NEW_HOME_ADDR}/24", "dev", "eth0"])
            changed = time.monotonic()
            pyike.wait_log(
                r"return routability to \[192\.0\.2\.11\]:4500 confirmed", timeout=MOVE_LIMIT
            )
            answered = _ping_within(vm, HOME_INNER, changed + MOVE_LIMIT)
            log = pyike.log()
            assert answered is not None, log[-4000:] + charon.log_text()[-3000:]
            print(f"\ncharon's MOBIKE move to a ping from pyike's side: {answered - changed:.2f} s")
            (after,) = charon.list_sas()
            assert (after["initiator-spi"], after["responder-spi"]) == (
                before["initiator-spi"],
                before["responder-spi"],
            ), after
            assert after["local-host"] == NEW_HOME_ADDR, after
            assert re.search(r"peer moves from \[192\.0\.2\.1\]:4500 to \[192\.0\.2\.11\]", log)
    finally:
        pyike.stop()
    assert "Traceback" not in pyike.log()


def test_address_change_moves_sa_with_iked(two_hosts: TwoHosts, tmp_path: Path) -> None:
    """The guide's files, iked (MOBIKE on by default) at the VM under the PF_KEY
    stand-in: home's address changes, pyike moves its three IKE SAs with
    UPDATE_SA_ADDRESSES, iked moves them too (no new IKE SA, no new Child SA keys)."""
    from tests.test_interop_iked import pair

    home, _vm = two_hosts
    with pair(two_hosts, tmp_path, pyike_home=True) as p:
        p.wait_up()
        established = len(p.iked_established())
        home.run(["ip", "addr", "del", f"{HOME_ADDR}/24", "dev", "eth0"])
        home.run(["ip", "addr", "add", f"{NEW_HOME_ADDR}/24", "dev", "eth0"])
        p.pyike.wait_log(
            r"moved to local \[192\.0\.2\.11\]:4500 .*MOBIKE", timeout=MOVE_LIMIT, count=3
        )
        log = p.pyike.log()
        iked_log = p.iked.log_text()
        assert "re-establishing" not in log, log[-3000:]
        assert len(p.iked_established()) == established, iked_log[-3000:]
        moves = re.findall(
            r"ikev2_update_sa_addresses: old 192\.0\.2\.1:4500 new 192\.0\.2\.11:4500", iked_log
        )
        assert len(moves) == 3, iked_log[-3000:]
        # iked re-installs its three inbound SAs with the new source (SADB_UPDATE). Its
        # outbound SAs get no PF_KEY message towards 192.0.2.11 under the stand-in:
        # whether iked's kernel ESP then follows needs the qemu VM (not tested yet).
        updated = [
            sa
            for sa in p.iked.installed_sas()
            if sa["type"] == "SADB_UPDATE" and sa["src"] == NEW_HOME_ADDR
        ]
        assert len(updated) == 3, p.iked.installed_sas()
    assert "Traceback" not in p.pyike.log()


def test_mail_after_mobike_move_with_charon(two_hosts: TwoHosts, tmp_path: Path) -> None:
    """The guide's mail path across a MOBIKE move: home's address changes, pyike
    moves the IKE SA, then OpenSMTPD on the VM relays a mail (submitted with swaks
    after the move) through the tunnel to home's smtpd, which delivers it."""
    from tests.netns import require_binary
    from tests.test_smtp_netns import check_mail, deliver_mail

    _need_tools()
    for binary, package in (("smtpd", "opensmtpd"), ("swaks", "swaks"), ("ss", "iproute2")):
        require_binary(binary, package)
    home, vm = two_hosts
    k = _keys()
    _add_inner(vm, VM_INNER)
    home_keys = write_keydir(tmp_path / "home-keys", k.home, {VM_ID: k.vm.public_key()})
    conf = _home_conf(tmp_path / "home-iked.conf")
    charon = _charon(
        vm,
        tmp_path / "charon",
        home=False,
        own=k.vm,
        peer_public=k.home.public_key(),
        suite=GCM,
        rfc7427=True,
    )
    charon.remote_addr = "%any"
    with charon:
        charon.load()
        pyike = PyikeProc(home, tmp_path, conf, home_keys).start()
        try:
            pyike.wait_log(r"created Child SA", timeout=TIMEOUT_S)
            charon.wait_established(timeout=TIMEOUT_S)
            (before,) = charon.list_sas()
            _settle(pyike)
            home.run(["ip", "addr", "del", f"{HOME_ADDR}/24", "dev", "eth0"])
            home.run(["ip", "addr", "add", f"{NEW_HOME_ADDR}/24", "dev", "eth0"])
            changed = time.monotonic()
            # No ping from home first: the mail is the first traffic after the move.
            mail = deliver_mail(two_hosts, tmp_path, "mobike")
            print(
                f"\nMOBIKE move to the mail in home's Maildir: {time.monotonic() - changed:.2f} s"
            )
            check_mail(mail)
            log = pyike.log()
            assert re.search(r"moved to local \[192\.0\.2\.11\]:4500 .*MOBIKE", log), log[-3000:]
            (after,) = charon.list_sas()
            assert (after["initiator-spi"], after["responder-spi"]) == (
                before["initiator-spi"],
                before["responder-spi"],
            ), after
            assert after["remote-host"] == NEW_HOME_ADDR, after
            assert "re-establishing" not in log
        finally:
            pyike.stop()
    assert "Traceback" not in pyike.log()
