"""No secret ever reaches a log line, at any verbosity.

pyike <-> pyike with the guide's files, both at the highest verbosity (-vvv) and with
``--keylog``, through IKE SA and Child SA rekeys (copies of the guide's files set short
lifetimes). Then every secret that exists is looked for in both logs: each key the key
logs wrote (SK_ei/er/ai/ar, ESP keys, both directions, all SAs), the private keys'
scalars, in several spellings (hex either case, with colons, Python's bytes repr,
base64). Nonces and DH values are public (they travel in clear), but what is derived
from them must not appear; the key log is the complete list of those.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from pyike.keylog import parse_esp_records, parse_ike_records
from tests.netns import TwoHosts, ping
from tests.pyike_proc import CONF, PyikeProc, write_keydir

pytestmark = [pytest.mark.netns]

VPN1 = "2001:db8:c1da::2"


def _spellings(secret: bytes) -> list[str]:
    """The forms a careless log line could give a secret (at least 8 bytes of it)."""
    out = []
    for part in (secret, secret[:8], secret[-8:]):
        out += [
            part.hex(),
            part.hex().upper(),
            part.hex(":"),
            repr(part)[2:-1],
            base64.b64encode(part).decode().rstrip("="),
        ]
    return [s for s in out if len(s) >= 12]


def _with_lifetimes(src: Path, dst: Path) -> Path:
    """The guide's file with short lifetimes (iked.conf(5) puts them before the auth
    keyword), so Child and IKE SA rekeys happen during the test."""
    text = src.read_text().replace("\tecdsa384", "\tikelifetime 12 lifetime 8 ecdsa384")
    assert "lifetime 8" in text
    dst.write_text(text)
    dst.chmod(0o600)
    return dst


def test_no_key_material_in_logs_at_any_verbosity(two_hosts: TwoHosts, tmp_path: Path) -> None:
    hk, vk = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    home_keys = write_keydir(tmp_path / "home-keys", hk, {"namorar.example.com": vk.public_key()})
    vm_keys = write_keydir(tmp_path / "vm-keys", vk, {"carinho.lan": hk.public_key()})
    logs = {}
    for side in ("home", "vm"):
        (tmp_path / f"keylog-{side}").mkdir()
    vm_conf = _with_lifetimes(CONF / "vm-iked.conf", tmp_path / "vm-iked.conf")
    home_conf = _with_lifetimes(CONF / "home-iked.conf", tmp_path / "home-iked.conf")
    vm = PyikeProc(
        two_hosts.vm,
        tmp_path,
        vm_conf,
        vm_keys,
        ["-D", "ext=192.0.2.2", "-vvv", "--keylog", str(tmp_path / "keylog-vm")],
    ).start()
    home = PyikeProc(
        two_hosts.home,
        tmp_path,
        home_conf,
        home_keys,
        ["-D", "vm_host=192.0.2.2", "-vvv", "--keylog", str(tmp_path / "keylog-home")],
    ).start()
    try:
        home.wait_log(r"created Child SA", timeout=30, count=3)
        assert ping(two_hosts.home, VPN1, count=2) >= 1
        # An IKE SA rekey (about 10 s in) and the Child SA rekeys before it (about 7 s).
        home.wait_log(r"rekeyed IKE SA", timeout=40)
        assert ping(two_hosts.home, VPN1, count=2) >= 1
    finally:
        home.stop()
        vm.stop()
    logs = {"home": home.log(), "vm": vm.log()}
    assert all(len(text.splitlines()) > 50 for text in logs.values()), "-vvv logged little"

    secrets: dict[str, bytes] = {}
    for side in ("home", "vm"):
        d = tmp_path / f"keylog-{side}"
        for r in parse_ike_records((d / "ikev2_decryption_table").read_text()):
            for name in ("sk_ei", "sk_er", "sk_ai", "sk_ar"):
                value = getattr(r, name)
                if value:
                    secrets[f"{side} IKE SA {r.spi_i.hex()} {name}"] = value
        for r in parse_esp_records((d / "esp_sa").read_text()):
            secrets[f"{side} ESP {r.spi:#x} enc"] = r.enc_key
            if r.integ_key:
                secrets[f"{side} ESP {r.spi:#x} integ"] = r.integ_key
    for side, key in (("home", hk), ("vm", vk)):
        scalar = key.private_numbers().private_value
        secrets[f"{side} private key"] = scalar.to_bytes((scalar.bit_length() + 7) // 8, "big")
    ike_sas = {k.split()[3] for k in secrets if " IKE SA " in k}
    assert len(ike_sas) >= 4, f"expected rekeyed IKE SAs in the key logs, got {ike_sas}"

    # The search itself works: it finds the keys where they are meant to be.
    table = (tmp_path / "keylog-home" / "esp_sa").read_text()
    esp_keys = [v for k, v in secrets.items() if k.startswith("home ESP")]
    assert esp_keys and all(any(sp in table for sp in _spellings(v)) for v in esp_keys)

    found = []
    for side, text in logs.items():
        for what, value in secrets.items():
            for spelling in _spellings(value):
                if spelling in text:
                    found.append(f"{what} appears in {side}'s log as {spelling!r}")
    assert not found, "\n".join(found[:20])
