"""Hostile traffic against a real pyike responder, while a real charon establishes.

Topology: the two_hosts namespaces. pyike runs on the VM (192.0.2.2) with the guide's
conf/vm-iked.conf at the default log level; charon initiates from home (192.0.2.1), and
tools/ike_flood.py sends from home too, its source addresses spoofed from 203.0.113.0/24
(the VM routes that prefix back to home, where the answers die: nobody owns them).

- a 20 s flood of IKE_SA_INIT from 200 sources at 40,000/s (what a saturated 100 Mbit/s
  uplink carries): charon must establish within 15 s of its first try;
- the same at the highest rate one sender process reaches here;
- then 50,000 mutated IKE datagrams and 20,000 garbage ESP datagrams with the live SPI:
  pyike stays up, no traceback, the tunnel still carries traffic, and the whole test
  writes fewer than 300 log lines.

Every case reports what it measured (flood rate, time to establish, pyike's peak RSS)
on stdout, printed by `pytest -s`, and in the assertion messages.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from interop.strongswan import CHARON_BIN, DEBIAN_PACKAGES, Charon
from pyike import keys
from tests.netns import Netns, TwoHosts, ping, require_binary, wait_until
from tests.pyike_proc import CONF, REPO, private_config, write_keydir

pytestmark = [pytest.mark.interop, pytest.mark.netns, pytest.mark.slow]

HOME_ID, VM_ID = "carinho.lan", "namorar.example.com"
HOME_ADDR, VM_ADDR = "192.0.2.1", "192.0.2.2"
HOME_INNER, VM_INNER = "2001:db8:c1da::1", "2001:db8:c1da::2"
SPOOFED = "203.0.113.0/24"
ESTABLISH_WITHIN_S = 15.0
MAX_LOG_LINES = 300
FLOOD = [sys.executable, str(REPO / "tools" / "ike_flood.py")]


@dataclass
class Setup:
    home: Netns
    vm: Netns
    pyike: subprocess.Popen[bytes]
    log_path: Path
    charon: Charon

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def peak_rss_kib(self) -> int:
        status = Path(f"/proc/{self.pyike.pid}/status").read_text()
        m = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
        return int(m.group(1)) if m else 0


def _start(two_hosts: TwoHosts, tmp_path: Path) -> Setup:
    require_binary(CHARON_BIN, DEBIAN_PACKAGES)
    home, vm = two_hosts
    home_key, vm_key = (
        ec.generate_private_key(ec.SECP384R1()),
        ec.generate_private_key(ec.SECP384R1()),
    )
    home.run(["ip", "-6", "addr", "add", f"{HOME_INNER}/128", "dev", "lo", "nodad"])
    vm.run(["ip", "route", "add", SPOOFED, "via", HOME_ADDR])
    vm_keys = write_keydir(tmp_path / "vm-keys", vm_key, {HOME_ID: home_key.public_key()})
    log_path = tmp_path / "pyike.log"
    with log_path.open("wb") as out:
        proc = vm.popen(
            [
                sys.executable,
                "-m",
                "pyike",
                "-f",
                str(private_config(CONF / "vm-iked.conf", tmp_path)),
                "--keydir",
                str(vm_keys),
                "-D",
                f"ext={VM_ADDR}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(REPO),
        )
    wait_until(
        lambda: ":4500 " in vm.run(["ss", "-uln"]).stdout or proc.poll() is not None,
        15,
        interval=0.1,
    )
    assert proc.poll() is None, log_path.read_text()
    charon = Charon(
        home,
        tmp_path / "charon",
        name="tun",
        local_addr=HOME_ADDR,
        remote_addr=VM_ADDR,
        local_id=HOME_ID,
        remote_id=VM_ID,
        private_key_pem=keys.private_key_pem(home_key, pkcs8=True),
        peer_public_pem=keys.public_key_pem(vm_key.public_key()),
        ike_proposals="aes256gcm16-prfsha384-x25519",
        esp_proposals="aes256-sha256",
        local_ts=f"{HOME_INNER}/128",
        remote_ts=f"{VM_INNER}/128",
        encap=True,
        rfc7427=True,
    )
    return Setup(home, vm, proc, log_path, charon)


def _flood(ns: Netns, args: list[str], timeout: float) -> tuple[subprocess.Popen[bytes], list]:
    """Start the flooder; its summary line is collected by a thread into the list."""
    proc = ns.popen([*FLOOD, *args, "--target", VM_ADDR], stdout=subprocess.PIPE)
    out: list[str] = []

    def collect() -> None:
        assert proc.stdout is not None
        out.append(proc.stdout.read().decode())

    threading.Thread(target=collect, daemon=True).start()
    return proc, out


def _udp_counters(ns: Netns) -> dict[str, int]:
    """The namespace's UDP MIB (/proc/net/snmp): what its sockets took in and dropped."""
    rows = [line.split() for line in ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines()]
    names, values = [r for r in rows if r and r[0] == "Udp:"][:2]
    return dict(zip(names[1:], map(int, values[1:]), strict=True))


def _establish_under(setup: Setup, flood_args: list[str], seconds: float) -> dict[str, object]:
    """Flood for ``seconds``; 2 s in, charon initiates; returns the figures, among them
    how many datagrams pyike read and how many the kernel dropped before it could (its
    socket buffer full: a real initiator's request is then lost with the same odds)."""
    before = _udp_counters(setup.vm)
    flooder, out = _flood(setup.home, [*flood_args, "--seconds", str(seconds)], seconds + 30)
    try:
        time.sleep(2.0)
        setup.charon.load()
        started = time.monotonic()
        setup.charon.initiate(timeout=ESTABLISH_WITHIN_S + 5, check=False)
        setup.charon.wait_established(timeout=ESTABLISH_WITHIN_S, child=True)
        took = time.monotonic() - started
        alive_during = flooder.poll() is None
    finally:
        flooder.wait(timeout=seconds + 30)
    time.sleep(0.5)
    after = _udp_counters(setup.vm)
    return {
        "established_s": round(took, 2),
        "during_flood": alive_during,
        "flood": out[0].strip() if out else "",
        "read": after["InDatagrams"] - before["InDatagrams"],
        "kernel_drops": after["RcvbufErrors"] - before["RcvbufErrors"],
        "peak_rss_mib": round(setup.peak_rss_kib() / 1024, 1),
    }


def _report(name: str, figures: dict[str, object]) -> None:
    print(f"\n[flood] {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


def test_spoofed_init_flood_40k(two_hosts: TwoHosts, tmp_path: Path) -> None:
    setup = _start(two_hosts, tmp_path)
    with setup.charon:
        figures = _establish_under(
            setup, ["init", "--rate", "40000", "--source-count", "200"], 20.0
        )
        _report("IKE_SA_INIT 40k/s from 200 sources", figures)
        assert figures["during_flood"], f"charon established only after the flood: {figures}"
        assert figures["established_s"] <= ESTABLISH_WITHIN_S, figures
        assert setup.pyike.poll() is None, setup.log()[-3000:]
        assert ping(setup.home, VM_INNER, count=3) >= 2
    log = setup.log()
    assert "Traceback" not in log, log[-3000:]
    assert len(log.splitlines()) < MAX_LOG_LINES, log[-3000:]


def test_spoofed_init_flood_max_rate(two_hosts: TwoHosts, tmp_path: Path) -> None:
    setup = _start(two_hosts, tmp_path)
    with setup.charon:
        figures = _establish_under(setup, ["init", "--source-count", "200"], 20.0)
        _report("IKE_SA_INIT at the sender's highest rate from 200 sources", figures)
        assert figures["during_flood"], f"charon established only after the flood: {figures}"
        assert figures["established_s"] <= ESTABLISH_WITHIN_S, figures
        assert setup.pyike.poll() is None, setup.log()[-3000:]
    log = setup.log()
    assert "Traceback" not in log, log[-3000:]
    assert len(log.splitlines()) < MAX_LOG_LINES, log[-3000:]


def _child_spi_in(setup: Setup) -> int:
    """pyike's inbound SPI: what charon sends ESP with (swanctl's spi-out)."""
    (sa,) = setup.charon.list_sas()
    (child,) = sa["child-sas"].values()
    return int(child["spi-out"], 16)


def test_mutated_ike_and_garbage_esp(two_hosts: TwoHosts, tmp_path: Path) -> None:
    setup = _start(two_hosts, tmp_path)
    with setup.charon:
        setup.charon.load()
        setup.charon.initiate(timeout=20)
        setup.charon.wait_established(timeout=20, child=True)
        assert ping(setup.home, VM_INNER, count=2) >= 1
        spi = _child_spi_in(setup)
        for args in (
            ["mutated", "--count", "50000", "--rate", "20000"],
            ["esp", "--spi", hex(spi), "--count", "20000", "--rate", "20000"],
        ):
            flooder, out = _flood(setup.home, args, 60)
            flooder.wait(timeout=60)
            _report(args[0], {"flood": out[0].strip() if out else ""})
        time.sleep(1.0)
        assert setup.pyike.poll() is None, setup.log()[-3000:]
        assert ping(setup.home, VM_INNER, count=3) >= 2, setup.log()[-3000:]
        (sa,) = setup.charon.list_sas()
        assert sa["state"] == "ESTABLISHED", sa
    log = setup.log()
    _report("log", {"lines": len(log.splitlines()), "peak_rss_mib": setup.peak_rss_kib() / 1024})
    assert "Traceback" not in log, log[-3000:]
    assert len(log.splitlines()) < MAX_LOG_LINES, log[-3000:]
