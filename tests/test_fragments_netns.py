"""IKE fragmentation (RFC 7383) against strongSwan's charon in namespaces: with a
small fragment size on both sides, IKE_AUTH goes as SKF fragments both ways, the
tunnel comes up and carries ping. The capture is the proof that both fragment."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyike import pcap, wire
from tests.netns import TwoHosts, capture, ping
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

FRAGMENT_SIZE = 300  # IP datagram bytes: both IKE_AUTH messages (ECDSA-384 signatures) are bigger


def fragments_by_sender(pcap_path: Path) -> dict[str, list[tuple[int, int, int, int]]]:
    """Source address -> (message ID, fragment number, total, datagram size) of each
    SKF message in the capture."""
    out: dict[str, list[tuple[int, int, int, int]]] = {}
    for d in pcap.read_capture(pcap_path):
        data = pcap.ike_payload(d)
        if data is None:
            continue
        msg = wire.parse_message(data)
        last = msg.payloads[-1] if msg.payloads else None
        if isinstance(last, wire.SkfPayload):
            out.setdefault(str(d.src), []).append(
                (msg.message_id, last.number, last.total, len(data))
            )
    return out


def test_fragmentation_with_charon(two_hosts: TwoHosts, tmp_path: Path) -> None:
    _need_tools()
    home, vm = two_hosts
    k = _keys()
    _add_inner(vm, VM_INNER)
    home_keys = write_keydir(tmp_path / "home-keys", k.home, {VM_ID: k.vm.public_key()})
    conf = tmp_path / "home-iked.conf"
    conf.write_text(
        "set fragmentation\n"
        f'ikev2 "tun" active esp from {HOME_INNER} to {VM_INNER} \\\n'
        f"\tpeer {VM_ADDR} \\\n"
        f"\t{GCM.pyike} \\\n"
        f"\tsrcid {HOME_ID} dstid {VM_ID} \\\n"
        "\tecdsa384\n"
    )
    charon = _charon(
        vm,
        tmp_path / "charon",
        home=False,
        own=k.vm,
        peer_public=k.home.public_key(),
        suite=GCM,
        rfc7427=True,
    )
    charon.extra_conf = f"fragment_size = {FRAGMENT_SIZE}"
    pcap_path = tmp_path / "outer.pcap"
    with charon, capture(vm, "eth0", pcap_path, "udp"):
        charon.load()
        pyike = PyikeProc(
            home, tmp_path, conf, home_keys, ["--fragment-size", str(FRAGMENT_SIZE)]
        ).start()
        try:
            pyike.wait_log(r"created Child SA", timeout=TIMEOUT_S)
            charon.wait_established(timeout=TIMEOUT_S)
            assert ping(home, VM_INNER, count=3) >= 2, pyike.log()[-3000:]
            assert ping(vm, HOME_INNER, count=3) >= 2, charon.log_text()[-3000:]
        finally:
            pyike.stop()
    frags = fragments_by_sender(pcap_path)
    ours, theirs = frags.get(HOME_ADDR, []), frags.get(VM_ADDR, [])
    # IKE_AUTH (message ID 1) goes fragmented in both directions, every fragment of a
    # message present and no IKE message over the limit (IPv4, UDP, non-ESP marker).
    for sent in (ours, theirs):
        auth = [f for f in sent if f[0] == 1]
        assert auth, frags
        assert {n for _, n, _, _ in auth} == set(range(1, auth[0][2] + 1)), auth
    assert all(size <= FRAGMENT_SIZE - 20 - 8 - 4 for *_, size in ours), ours
    log = pyike.log()
    assert "drop fragment" not in log and "Traceback" not in log


@pytest.mark.parametrize("pyike_home", [True, False], ids=["pyike-initiator", "iked-initiator"])
def test_fragmentation_with_iked(two_hosts: TwoHosts, tmp_path: Path, pyike_home: bool) -> None:
    """``set fragmentation`` on both: pyike's IKE_AUTH messages (above --fragment-size)
    go as SKF fragments, iked reassembles them and the guide's three SAs come up.
    iked has no fragment size setting: it fragments only above 576 bytes (IPv4), which
    its messages here stay below; the check is that nothing it sends is dropped."""
    from tests.test_interop_iked import check_children, pair

    sets = "set fragmentation\n"
    with pair(
        two_hosts,
        tmp_path,
        pyike_home=pyike_home,
        pyike_sets=sets,
        iked_sets=sets,
        pyike_args=("--fragment-size", str(FRAGMENT_SIZE)),
        with_capture=True,
    ) as p:
        check_children(p, p.wait_up())
        log = p.pyike.log()
    assert p.pcap is not None
    frags = fragments_by_sender(p.pcap)
    ours = frags.get(p.pyike_addr, [])
    assert {mid for mid, *_ in ours} >= {1}, frags  # IKE_AUTH, at least the first SA's
    assert all(size <= FRAGMENT_SIZE - 20 - 8 - 4 for *_, size in ours), ours
    assert "drop fragment" not in log and "Traceback" not in log
