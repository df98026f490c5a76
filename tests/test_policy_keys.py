"""Policies are known by a key, not by their name (issue 9, item 6).

iked accepts two policies with the same name (check_policies only warns); pyike
used to keep the last one only. Each configured policy now has a PolicyKey
(name, ordinal) from the config file to the core.
"""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path

from pyike import config as cfg
from pyike.daemon import Daemon, Options, policy_key
from pyike.registry import IdType

CONF = """\
ikev2 "vpn" passive esp from 192.0.2.100 to 198.51.100.0/26 peer 192.0.2.2 \\
\tsrcid home.example dstid a.example psk "one"
ikev2 "vpn" passive esp from 192.0.2.100 to 198.51.100.64/26 peer 192.0.2.3 \\
\tsrcid home.example dstid b.example psk "two"
ikev2 "other" passive esp from 192.0.2.100 to 198.51.100.128/26 peer 192.0.2.4 \\
\tsrcid home.example dstid c.example psk "three"
"""


def test_policy_keys_number_repeated_names() -> None:
    conf = cfg.parse_config(CONF, filename="iked.conf")
    keys = cfg.policy_keys(conf.policies)
    assert keys == [cfg.PolicyKey("vpn"), cfg.PolicyKey("vpn", 1), cfg.PolicyKey("other")]
    assert [str(k) for k in keys] == ["vpn", "vpn#2", "other"]


def test_daemon_keeps_both_policies_and_answers_with_the_matching_one(tmp_path: Path) -> None:
    path = tmp_path / "iked.conf"
    path.write_text(CONF)
    path.chmod(0o600)  # the daemon refuses a config others can read, as iked does
    d = Daemon(Options(config_file=path, keydir=tmp_path, netwatch=False))
    d.load()
    assert list(d.policies) == cfg.policy_keys(d.config.policies)  # type: ignore[union-attr]
    assert len(d.policies) == 3
    local = (ip_address("192.0.2.1"), 500)
    for peer, key, psk, dstid in (
        ("192.0.2.2", cfg.PolicyKey("vpn"), b"one", b"a.example"),
        ("192.0.2.3", cfg.PolicyKey("vpn", 1), b"two", b"b.example"),
        ("192.0.2.4", cfg.PolicyKey("other"), b"three", b"c.example"),
    ):
        chosen = d._policy_for((ip_address(peer), 500), local, None)
        assert chosen is not None and policy_key(chosen) == key, peer
        assert chosen is d.policies[key]
        assert chosen.psk == psk and chosen.peer_id == (IdType.ID_FQDN, dstid)
    assert d.policies[cfg.PolicyKey("vpn", 1)].name == "vpn#2"  # what the logs show
    assert [p.key for p in d.supervisor.policies.values()] == list(d.policies)
