"""Key logs in Wireshark's table formats, checked by letting tshark decrypt with them.

ESP packets are made by scapy's SecurityAssociation (an independent ESP implementation);
IKE SK payloads are sealed here with the ``cryptography`` primitives following RFC 5282
section 5.1 (AES-GCM) and RFC 7296 section 3.14 (AES-CBC with HMAC), so these tests do
not depend on pyike's own crypto code.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import stat
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pyike.keylog import (
    ESP_TABLE_NAME,
    IKE_TABLE_NAME,
    EspKeyRecord,
    IkeKeyRecord,
    KeylogError,
    KeyLogWriter,
    format_esp_record,
    format_ike_record,
    parse_esp_records,
    parse_ike_records,
)
from pyike.pcap import Datagram, write_pcap
from pyike.registry import EncrId, IntegId

TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")

OUTER_I = ipaddress.ip_address("198.51.100.1")
OUTER_R = ipaddress.ip_address("203.0.113.2")
SPI_I = bytes.fromhex("0102030405060708")
SPI_R = bytes.fromhex("1112131415161718")


def ike_record(encr: EncrId, bits: int, integ: IntegId) -> IkeKeyRecord:
    n = bits // 8 + (4 if encr == EncrId.AES_GCM_16 else 0)
    ilen = {IntegId.NONE: 0, IntegId.HMAC_SHA2_256_128: 32, IntegId.HMAC_SHA2_384_192: 48,
            IntegId.HMAC_SHA2_512_256: 64, IntegId.HMAC_SHA1_96: 20}[integ]  # fmt: skip
    return IkeKeyRecord(
        SPI_I, SPI_R, encr, bits, integ,
        sk_ei=os.urandom(n), sk_er=os.urandom(n), sk_ai=os.urandom(ilen), sk_ar=os.urandom(ilen),
    )  # fmt: skip


# ---------------------------------------------------------------------------
# Formats and round trips


@pytest.mark.parametrize(
    ("encr", "bits", "integ"),
    [
        (EncrId.AES_GCM_16, 256, IntegId.NONE),
        (EncrId.AES_GCM_16, 128, IntegId.NONE),
        (EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_256_128),
        (EncrId.AES_CBC, 192, IntegId.HMAC_SHA2_384_192),
        (EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_512_256),
        (EncrId.AES_CBC, 128, IntegId.HMAC_SHA1_96),
    ],
)
def test_ike_round_trip(encr: EncrId, bits: int, integ: IntegId) -> None:
    r = ike_record(encr, bits, integ)
    line = format_ike_record(r)
    assert "\n" not in line
    assert parse_ike_records(line) == [r]


def test_ike_line_layout() -> None:
    # Column order of Wireshark's ikev2_uat_flds (epan/dissectors/packet-isakmp.c):
    # SPIi, SPIr, SK_ei, SK_er, encryption, SK_ai, SK_ar, integrity.
    r = ike_record(EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_256_128)
    fields = format_ike_record(r).split(",")
    assert fields == [
        SPI_I.hex(), SPI_R.hex(), r.sk_ei.hex(), r.sk_er.hex(), '"AES-CBC-256 [RFC3602]"',
        r.sk_ai.hex(), r.sk_ar.hex(), '"HMAC_SHA2_256_128 [RFC4868]"',
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("src", "dst", "encr", "key_len", "bits", "integ", "integ_len"),
    [
        ("198.51.100.1", "203.0.113.2", EncrId.AES_GCM_16, 36, 256, IntegId.NONE, 0),
        ("2001:db8::1", "2001:db8::2", EncrId.AES_GCM_16, 20, 128, IntegId.NONE, 0),
        ("198.51.100.1", "203.0.113.2", EncrId.AES_CBC, 32, 256, IntegId.HMAC_SHA2_256_128, 32),
        ("2001:db8::1", "2001:db8::2", EncrId.AES_CBC, 16, 128, IntegId.HMAC_SHA1_96, 20),
    ],
)
def test_esp_round_trip(
    src: str, dst: str, encr: EncrId, key_len: int, bits: int, integ: IntegId, integ_len: int
) -> None:
    r = EspKeyRecord(ipaddress.ip_address(src), ipaddress.ip_address(dst), 0xC0FFEE01, encr, bits,
                     integ, os.urandom(key_len), os.urandom(integ_len))  # fmt: skip
    line = format_esp_record(r)
    assert line.startswith(f'"IPv{r.src.version}","{src}","{dst}","0xc0ffee01",')
    assert parse_esp_records(line) == [r]


def wireshark_strings() -> bytes:
    """The text of the installed libwireshark, where its algorithm names live."""
    if TSHARK is None:
        pytest.skip("tshark is not installed")
    ldd = subprocess.run(["ldd", TSHARK], capture_output=True, text=True, check=False, timeout=30)
    for line in ldd.stdout.splitlines():
        if "libwireshark.so" in line and "=>" in line:
            return Path(line.split("=>")[1].split()[0]).read_bytes()
    pytest.skip("libwireshark not found")


def test_every_name_we_write_is_one_wireshark_knows() -> None:
    lib = wireshark_strings()
    from pyike import keylog

    names = [
        *keylog._IKE_ENCR_NAMES.values(), *keylog._IKE_INTEG_NAMES.values(),
        *keylog._ESP_ENCR_NAMES.values(), *keylog._ESP_INTEG_NAMES.values(),
    ]  # fmt: skip
    # (the linker may merge a short string into the tail of a longer one: match the end)
    missing = [n for n in names if n.encode() + b"\0" not in lib]
    assert missing == []


def test_parse_tolerates_comments_blank_lines_and_strongswan_format() -> None:
    # strongSwan's save-keys plugin writes SPIs and keys bare and names quoted, and the
    # ESP GCM name without ICV length (src/libcharon/plugins/save_keys/save_keys_listener.c).
    ike = (
        "# comment\n\n"
        "0102030405060708,1112131415161718,"
        + "00" * 36 + "," + "11" * 36
        + ',"AES-GCM-256 with 16 octet ICV [RFC5282]",,,"NONE [RFC4306]"\n'
    )  # fmt: skip
    (r,) = parse_ike_records(ike)
    assert (r.encr, r.key_bits, r.integ) == (EncrId.AES_GCM_16, 256, IntegId.NONE)
    assert r.sk_er == b"\x11" * 36 and r.sk_ai == b""
    esp = (
        '"IPv4","192.0.2.1","192.0.2.2","0xc1a2b3c4","AES-GCM [RFC4106]","0x' + "22" * 20
        + '","ANY 128 bit authentication [no checking]","0x"\n'
    )  # fmt: skip
    with pytest.raises(KeylogError, match="line 1: unknown ESP authentication algorithm"):
        parse_esp_records(esp)
    (e,) = parse_esp_records(esp.replace("ANY 128 bit authentication [no checking]", "NULL"))
    assert (e.encr, e.key_bits, e.spi) == (EncrId.AES_GCM_16, 128, 0xC1A2B3C4)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b\n", "line 1: a ikev2_decryption_table record has 8 fields, this line 2"),
        ("# c\n" + "00" * 8 + ",zz" + ',"","","AES-CBC-128 [RFC3602]","","","NONE [RFC4306]"',
         "line 2: SPIr is not hex"),
        ("00" * 8 + "," + "00" * 8 + ",00,00,\"Rot13\",,,\"NONE [RFC4306]\"",
         "line 1: unknown IKE encryption algorithm 'Rot13'"),
        ("00" * 8 + "," + "00" * 8 + ",00,00,\"AES-CBC-128 [RFC3602]\",,,\"NONE [RFC4306]\"",
         "line 1: AES_CBC with 128-bit keys needs 16-byte encryption keys"),
        ("00" * 4 + "," + "00" * 8 + ",00,00,\"AES-CBC-128 [RFC3602]\",,,\"NONE [RFC4306]\"",
         "line 1: IKE SPIs are 8 bytes"),
    ],
)  # fmt: skip
def test_ike_parse_errors(text: str, message: str) -> None:
    with pytest.raises(KeylogError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_ike_records(text)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('"IPv4","*","192.0.2.2","0x1","NULL","0x","NULL","0x"', "single IP addresses"),
        ('"IPv6","192.0.2.1","192.0.2.2","0x1","NULL","0x","NULL","0x"', "does not match"),
        ('"IPv4","192.0.2.1","192.0.2.2","0x0","NULL","0x","NULL","0x"', "non-zero 32-bit"),
        ('"IPv4","192.0.2.1","192.0.2.2","0x1","AES-CBC [RFC3602]","0x0011","NULL","0x"',
         "does not fit AES_CBC"),
        ('"IPv4","192.0.2.1","192.0.2.2","0x1","AES-CBC [RFC3602]","' + "k" * 16 + '","NULL","0x"',
         "must be hex with a 0x prefix"),
    ],
)  # fmt: skip
def test_esp_parse_errors(line: str, message: str) -> None:
    with pytest.raises(KeylogError, match=f"line 1: .*{message}"):
        parse_esp_records(line)


def test_unsupported_algorithms_are_refused() -> None:
    r = ike_record(EncrId.AES_GCM_16, 256, IntegId.NONE)
    r.encr = EncrId.CHACHA20_POLY1305
    with pytest.raises(KeylogError, match="Wireshark cannot decrypt IKE SAs using CHACHA20"):
        format_ike_record(r)
    r = ike_record(EncrId.AES_GCM_16, 256, IntegId.NONE)
    r.integ = IntegId.HMAC_SHA2_256_128
    with pytest.raises(KeylogError, match="combined mode"):
        format_ike_record(r)


# ---------------------------------------------------------------------------
# The writer


def test_writer_mode_append_flush_and_header(tmp_path: Path) -> None:
    path = tmp_path / IKE_TABLE_NAME
    old = os.umask(0)
    try:
        w = KeyLogWriter(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    r1 = ike_record(EncrId.AES_GCM_16, 256, IntegId.NONE)
    w.write(r1)
    # flushed: readable before close
    assert parse_ike_records(path.read_text()) == [r1]
    assert path.read_text().startswith("# Written by pyike. SECRET")
    with pytest.raises(KeylogError, match="IKE and ESP keys go to separate files"):
        w.write(EspKeyRecord(OUTER_I, OUTER_R, 1, EncrId.NULL, 0, IntegId.NONE, b"", b""))
    w.close()
    os.chmod(path, 0o644)
    r2 = ike_record(EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128)
    with KeyLogWriter(path) as w2:
        w2.write(r2)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # tightened again
    assert parse_ike_records(path.read_text()) == [r1, r2]
    assert path.read_text().count("# Written by pyike") == 1


def test_writer_skips_what_wireshark_cannot_describe(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    r = ike_record(EncrId.AES_GCM_16, 256, IntegId.NONE)
    r.encr = EncrId.CHACHA20_POLY1305
    with KeyLogWriter(tmp_path / IKE_TABLE_NAME) as w:
        assert w.write(r) is False
        assert w.write(ike_record(EncrId.AES_GCM_16, 128, IntegId.NONE)) is True
    text = (tmp_path / IKE_TABLE_NAME).read_text()
    assert "# record skipped: Wireshark cannot decrypt IKE SAs using CHACHA20_POLY1305" in text
    assert "record skipped" in caplog.text
    assert len(parse_ike_records(text)) == 1


# ---------------------------------------------------------------------------
# tshark decrypts with files we wrote


def tshark(profile_root: Path, pcap: Path, *args: str) -> str:
    """Run tshark with the Wireshark profile "pyike" under profile_root."""
    assert TSHARK is not None
    env = dict(os.environ, XDG_CONFIG_HOME=str(profile_root))
    proc = subprocess.run(
        [TSHARK, "-C", "pyike", "-r", str(pcap), *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Error loading table" not in proc.stderr, proc.stderr
    return proc.stdout


def profile(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "config"
    d = root / "wireshark" / "profiles" / "pyike"
    d.mkdir(parents=True)
    return root, d


def esp_packets(sa_algos: dict, records: tuple[EspKeyRecord, EspKeyRecord]) -> list[Datagram]:
    """One tunnel-mode ESP packet per direction, carrying ICMPv6 echo, in UDP 4500."""
    from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
    from scapy.layers.ipsec import ESP, SecurityAssociation

    out = []
    for i, r in enumerate(records):
        sa = SecurityAssociation(ESP, spi=r.spi, tunnel_header=IPv6(src="::1", dst="::2"),
                                 **sa_algos, crypt_key=r.enc_key,
                                 **({"auth_key": r.integ_key} if r.integ_key else {}))  # fmt: skip
        inner = IPv6(src="2001:db8:1::1", dst="2001:db8:2::1") / ICMPv6EchoRequest(id=0x77, seq=i)
        esp = bytes(sa.encrypt(inner)[ESP])
        out.append(Datagram(1.0 + i, r.src, 4500, r.dst, 4500, esp))
    return out


@needs_tshark
@pytest.mark.parametrize(
    ("sa_algos", "encr", "key_len", "integ", "integ_len"),
    [
        ({"crypt_algo": "AES-GCM"}, EncrId.AES_GCM_16, 36, IntegId.NONE, 0),
        ({"crypt_algo": "AES-CBC", "auth_algo": "SHA2-256-128"}, EncrId.AES_CBC, 32,
         IntegId.HMAC_SHA2_256_128, 32),
    ],
)  # fmt: skip
def test_tshark_decrypts_esp_with_our_esp_sa(
    tmp_path: Path, sa_algos: dict, encr: EncrId, key_len: int, integ: IntegId, integ_len: int
) -> None:
    bits = (key_len - (4 if encr == EncrId.AES_GCM_16 else 0)) * 8
    out_r = EspKeyRecord(OUTER_I, OUTER_R, 0xC0000001, encr, bits, integ, os.urandom(key_len),
                         os.urandom(integ_len))  # fmt: skip
    back = EspKeyRecord(OUTER_R, OUTER_I, 0xC0000002, encr, bits, integ, os.urandom(key_len),
                        os.urandom(integ_len))  # fmt: skip
    pcap = tmp_path / "esp.pcap"
    write_pcap(pcap, esp_packets(sa_algos, (out_r, back)))
    root, prof = profile(tmp_path)
    with KeyLogWriter(prof / ESP_TABLE_NAME) as w:
        w.write(out_r)
        w.write(back)
    opts = ["-o", "esp.enable_encryption_decode:TRUE", "-o", "esp.enable_authentication_check:TRUE"]
    fields = tshark(root, pcap, *opts, "-T", "fields", "-e", "esp.spi",
                    "-e", "icmpv6.echo.sequence_number", "-e", "esp.icv_good")  # fmt: skip
    assert fields.splitlines() == ["0xc0000001\t0\t1", "0xc0000002\t1\t1"]

    # A wrong key: nothing decrypts (the test can fail).
    (prof / ESP_TABLE_NAME).unlink()
    with KeyLogWriter(prof / ESP_TABLE_NAME) as w:
        w.write(EspKeyRecord(OUTER_I, OUTER_R, 0xC0000001, encr, bits, integ,
                             os.urandom(key_len), os.urandom(integ_len)))  # fmt: skip
    fields = tshark(root, pcap, *opts, "-T", "fields", "-e", "icmpv6.echo.sequence_number")
    assert fields.splitlines() == ["", ""]


def seal_gcm(key: bytes, aad: bytes, plain: bytes) -> bytes:
    """RFC 5282 section 5.1 (and RFC 4106): nonce = salt || IV, AAD = IKE header and the
    SK generic payload header; returns IV || ciphertext || 16-byte ICV."""
    iv = os.urandom(8)
    return iv + AESGCM(key[:-4]).encrypt(key[-4:] + iv, plain, aad)


def seal_cbc_hmac(key: bytes, integ_key: bytes, aad: bytes, plain: bytes) -> bytes:
    """RFC 7296 section 3.14: pad to the block size, IV || ciphertext, then an ICV of
    HMAC-SHA2-256 truncated to 128 bits over header..ciphertext (RFC 4868)."""
    pad = -(len(plain) + 1) % 16
    plain = plain + bytes(pad) + bytes([pad])
    iv = os.urandom(16)
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    body = iv + enc.update(plain) + enc.finalize()
    mac = hmac.HMAC(integ_key, hashes.SHA256())
    mac.update(aad + body)
    return body + mac.finalize()[:16]


def ike_message(flags: int, seal: Callable[[bytes, bytes], bytes]) -> bytes:
    """An IKE_AUTH message whose SK payload holds one Notify (INITIAL_CONTACT, 16384)."""
    inner = struct.pack("!BBHBBH", 0, 0, 8, 0, 0, 16384)
    sealed_len = len(seal(b"\0" * 32, inner + b"\0"))
    length = 28 + 4 + sealed_len
    hdr = SPI_I + SPI_R + struct.pack("!BBBBII", 46, 0x20, 35, flags, 1, length)
    sk = struct.pack("!BBH", 41, 0, 4 + sealed_len)  # SK: next payload = Notify (41)
    return hdr + sk + seal(hdr + sk, inner + b"\0")  # pad length 0


@needs_tshark
@pytest.mark.parametrize("suite", ["gcm", "cbc"])
def test_tshark_decrypts_ike_with_our_ikev2_table(tmp_path: Path, suite: str) -> None:
    if suite == "gcm":
        r = ike_record(EncrId.AES_GCM_16, 256, IntegId.NONE)
        seal_i = lambda aad, p: seal_gcm(r.sk_ei, aad, p)  # noqa: E731
        seal_r = lambda aad, p: seal_gcm(r.sk_er, aad, p)  # noqa: E731
    else:
        r = ike_record(EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_256_128)
        seal_i = lambda aad, p: seal_cbc_hmac(r.sk_ei, r.sk_ai, aad, p)  # noqa: E731
        seal_r = lambda aad, p: seal_cbc_hmac(r.sk_er, r.sk_ar, aad, p)  # noqa: E731
    request = ike_message(0x08, seal_i)  # initiator's request: SK_ei / SK_ai
    response = ike_message(0x20, seal_r)  # responder's response: SK_er / SK_ar
    pcap = tmp_path / "ike.pcap"
    write_pcap(pcap, [
        Datagram(1.0, OUTER_I, 500, OUTER_R, 500, request),
        Datagram(2.0, OUTER_R, 4500, OUTER_I, 4500, b"\0\0\0\0" + response),
    ])  # fmt: skip
    root, prof = profile(tmp_path)
    with KeyLogWriter(prof / IKE_TABLE_NAME) as w:
        w.write(r)
    fields = tshark(root, pcap, "-T", "fields", "-e", "isakmp.notify.msgtype")
    assert fields.splitlines() == ["16384", "16384"]
    text = tshark(root, pcap, "-V")
    assert text.count("Integrity Checksum Data") == 2
    assert "[incorrect" not in text and text.count("[correct]") >= 2

    # Swapped directions must not decrypt: the columns really are SK_ei then SK_er.
    (prof / IKE_TABLE_NAME).unlink()
    swapped = IkeKeyRecord(r.spi_i, r.spi_r, r.encr, r.key_bits, r.integ, r.sk_er, r.sk_ei,
                           r.sk_ar, r.sk_ai)  # fmt: skip
    with KeyLogWriter(prof / IKE_TABLE_NAME) as w:
        w.write(swapped)
    fields = tshark(root, pcap, "-T", "fields", "-e", "isakmp.notify.msgtype")
    assert fields.splitlines() == ["", ""]
