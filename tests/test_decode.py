"""``pyike decode`` on a real strongSwan capture (tests/data/charon-sample), as a user runs it.

The key log is written with pyike.keylog from the keys charon itself logged, so
the decryption is checked against an independent implementation's keys.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pyike import keylog
from pyike.registry import EncrId, IntegId

SAMPLES = Path(__file__).parent / "data" / "charon-sample"
SUITES = {
    "aesgcm": (EncrId.AES_GCM_16, 256, IntegId.NONE),
    "aescbc": (EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_384_192),
}


def charon_keys(case: str) -> dict[str, bytes]:
    out = {}
    for line in (SAMPLES / case / "keys.txt").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            name, _, value = line.partition("=")
            out[name.strip()] = bytes.fromhex(value.strip())
    return out


def run_decode(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pyike", "decode", *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("case", sorted(SUITES))
def test_decode_decrypts_charon_capture(case: str, tmp_path: Path) -> None:
    k = charon_keys(case)
    encr, bits, integ = SUITES[case]
    (tmp_path / keylog.IKE_TABLE_NAME).write_text(
        keylog.format_ike_record(
            keylog.IkeKeyRecord(
                k["spi_i"],
                k["spi_r"],
                encr,
                bits,
                integ,
                k["sk_ei"],
                k["sk_er"],
                k["sk_ai"],
                k["sk_ar"],
            )
        )
        + "\n"
    )
    r = run_decode(str(SAMPLES / case / "ike.pcap"), "--keylog", str(tmp_path))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.count("IKE_SA_INIT") >= 2 and out.count("IKE_AUTH") >= 2
    # Decrypted inner payloads of IKE_AUTH, and no failure anywhere.
    for payload in ("IDi", "IDr", "AUTH", "TSi", "TSr", "carinho.lan", "namorar.example.com"):
        assert payload in out, payload
    assert "integrity check failed" not in out and "no key" not in out
    assert "Traceback" not in r.stderr


def test_decode_without_keys_says_so() -> None:
    r = run_decode(str(SAMPLES / "aesgcm" / "ike.pcap"))
    assert r.returncode == 0
    assert "no key for these SPIs" in r.stdout
    assert "carinho.lan" not in r.stdout  # the IDs are inside the encrypted payloads


def test_decode_bad_input_is_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"this is not a capture file at all")
    r = run_decode(str(junk))
    assert r.returncode == 1
    assert r.stderr.startswith("pyike decode: ") and "Traceback" not in r.stderr
    missing = run_decode(str(tmp_path / "nope.pcap"))
    assert missing.returncode == 1 and "Traceback" not in missing.stderr


def test_decode_hex(tmp_path: Path) -> None:
    from pyike import pcap

    msgs = [pcap.ike_payload(d) for d in pcap.read_capture(SAMPLES / "aesgcm" / "ike.pcap")]
    first = next(m for m in msgs if m)
    hexfile = tmp_path / "m.hex"
    hexfile.write_text(first.hex() + "\n")
    r = run_decode("--hex", str(hexfile))
    assert r.returncode == 0, r.stderr
    assert "IKE_SA_INIT" in r.stdout and "NONCE" in r.stdout.upper()
