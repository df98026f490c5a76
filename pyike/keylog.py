"""Key logs in Wireshark's formats, so that captures of pyike's traffic can be decrypted.

pyike writes them only when explicitly asked (never by default): the files hold the
keys of live SAs, so anyone who reads them can decrypt the traffic they protect.

Two tables, each a Wireshark "UAT" file (one record a line, comma-separated; lines
starting with ``#`` are comments). The column orders and
algorithm names below are those of Wireshark's dissectors (checked against tshark 4.0):

``ikev2_decryption_table`` (epan/dissectors/packet-isakmp.c, ``ikev2_uat_flds``)::

    <SPIi>,<SPIr>,<SK_ei>,<SK_er>,"<encryption>",<SK_ai>,<SK_ar>,"<integrity>"

  SPIs and keys in bare hex: these are byte-buffer columns, and Wireshark reads a
  quoted value there as text (tshark then rejects the SPI as 16 bytes long).
  For AES-GCM and AES-CTR, SK_e includes the 4-byte salt or nonce (RFC 5282, RFC 5930);
  combined modes have integrity "NONE [RFC4306]" and empty SK_a.

``esp_sa`` (epan/dissectors/packet-ipsec.c, ``esp_uat_flds``)::

    "<IPv4|IPv6>","<src>","<dst>","0x<SPI>","<encryption>","0x<key>","<authentication>","0x<key>"

  One line per direction; the SPI is the one in the ESP header of packets from src to
  dst. For AES-GCM the key includes the 4-byte salt (RFC 4106 section 8.1); the
  authentication is "NULL" with key "0x". The table has no column for extended
  sequence numbers: on an ESN SA Wireshark (4.0 here) decrypts every packet, UDP-
  encapsulated or not, but leaves the high 32 bits out of the ICV input (RFC 4303
  section 2.2.1) and so reports the ICV as wrong (tests/test_smtp_netns.py).

To use them, put the files in a Wireshark profile directory (e.g.
``~/.config/wireshark/profiles/pyike/``) and run ``tshark -C pyike -o
esp.enable_encryption_decode:TRUE ...`` (or the GUI's Edit > Configuration Profiles).
"""

from __future__ import annotations

import csv
import io
import ipaddress
import logging
import os
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import TypeVar

from pyike.registry import EncrId, IntegId

_T = TypeVar("_T")
log = logging.getLogger(__name__)

IKE_TABLE_NAME = "ikev2_decryption_table"
ESP_TABLE_NAME = "esp_sa"


class KeylogError(ValueError):
    """A record that cannot be written in, or read from, Wireshark's key tables."""


# ---------------------------------------------------------------------------
# Algorithm names (Wireshark's value strings)

# IKEv2 table: packet-isakmp.c vs_ikev2_encr_algs, keyed by (transform, key bits).
_IKE_ENCR_NAMES: dict[tuple[EncrId, int], str] = {
    (EncrId.DES3, 192): "3DES [RFC2451]",
    (EncrId.NULL, 0): "NULL [RFC2410]",
}
for _bits in (128, 192, 256):
    _IKE_ENCR_NAMES[(EncrId.AES_CBC, _bits)] = f"AES-CBC-{_bits} [RFC3602]"
    _IKE_ENCR_NAMES[(EncrId.AES_CTR, _bits)] = f"AES-CTR-{_bits} [RFC5930]"
    for _encr, _icv in ((EncrId.AES_GCM_8, 8), (EncrId.AES_GCM_12, 12), (EncrId.AES_GCM_16, 16)):
        _IKE_ENCR_NAMES[(_encr, _bits)] = f"AES-GCM-{_bits} with {_icv} octet ICV [RFC5282]"
    for _encr, _icv in ((EncrId.AES_CCM_8, 8), (EncrId.AES_CCM_12, 12), (EncrId.AES_CCM_16, 16)):
        _IKE_ENCR_NAMES[(_encr, _bits)] = f"AES-CCM-{_bits} with {_icv} octet ICV [RFC5282]"

# packet-isakmp.c vs_ikev2_auth_algs
_IKE_INTEG_NAMES: dict[IntegId, str] = {
    IntegId.NONE: "NONE [RFC4306]",
    IntegId.HMAC_MD5_96: "HMAC_MD5_96 [RFC2403]",
    IntegId.HMAC_SHA1_96: "HMAC_SHA1_96 [RFC2404]",
    IntegId.HMAC_SHA1_160: "HMAC_SHA1_160 [RFC4595]",
    IntegId.HMAC_SHA2_256_128: "HMAC_SHA2_256_128 [RFC4868]",
    IntegId.HMAC_SHA2_384_192: "HMAC_SHA2_384_192 [RFC4868]",
    IntegId.HMAC_SHA2_512_256: "HMAC_SHA2_512_256 [RFC4868]",
}

# ESP table: packet-ipsec.c esp_encryption_type_vals (the key size comes from the key).
_ESP_ENCR_NAMES: dict[EncrId, str] = {
    EncrId.NULL: "NULL",
    EncrId.DES3: "TripleDES-CBC [RFC2451]",
    EncrId.AES_CBC: "AES-CBC [RFC3602]",
    EncrId.AES_CTR: "AES-CTR [RFC3686]",
    EncrId.AES_GCM_8: "AES-GCM with 8 octet ICV [RFC4106]",
    EncrId.AES_GCM_12: "AES-GCM with 12 octet ICV [RFC4106]",
    EncrId.AES_GCM_16: "AES-GCM with 16 octet ICV [RFC4106]",
}
# Read but never written: Wireshark's deprecated name without an ICV length, which
# strongSwan's save-keys plugin writes for every GCM variant; IKEv2 peers use 16.
_ESP_ENCR_ALIASES = {"aes-gcm [rfc4106]": EncrId.AES_GCM_16}

# packet-ipsec.c esp_authentication_type_vals
_ESP_INTEG_NAMES: dict[IntegId, str] = {
    IntegId.NONE: "NULL",
    IntegId.HMAC_SHA1_96: "HMAC-SHA-1-96 [RFC2404]",
    IntegId.HMAC_SHA2_256_128: "HMAC-SHA-256-128 [RFC4868]",
    IntegId.HMAC_SHA2_384_192: "HMAC-SHA-384-192 [RFC4868]",
    IntegId.HMAC_SHA2_512_256: "HMAC-SHA-512-256 [RFC4868]",
    IntegId.HMAC_MD5_96: "HMAC-MD5-96 [RFC2403]",
}

# Bytes of keying material beyond the cipher key: the GCM salt (RFC 4106 section 8.1,
# RFC 5282), the CTR nonce (RFC 3686, RFC 5930) and the CCM salt (RFC 4309, RFC 5282).
_SALT = {
    EncrId.AES_GCM_8: 4, EncrId.AES_GCM_12: 4, EncrId.AES_GCM_16: 4,
    EncrId.AES_CTR: 4,
    EncrId.AES_CCM_8: 3, EncrId.AES_CCM_12: 3, EncrId.AES_CCM_16: 3,
}  # fmt: skip
_COMBINED = {
    EncrId.AES_GCM_8, EncrId.AES_GCM_12, EncrId.AES_GCM_16,
    EncrId.AES_CCM_8, EncrId.AES_CCM_12, EncrId.AES_CCM_16,
}  # fmt: skip
# Integrity key lengths (RFC 4868 section 2.1.1, RFC 2404, RFC 2403, RFC 4595).
_INTEG_KEY_LEN = {
    IntegId.NONE: 0,
    IntegId.HMAC_MD5_96: 16,
    IntegId.HMAC_SHA1_96: 20,
    IntegId.HMAC_SHA1_160: 20,
    IntegId.HMAC_SHA2_256_128: 32,
    IntegId.HMAC_SHA2_384_192: 48,
    IntegId.HMAC_SHA2_512_256: 64,
}


def _encr_key_len(encr: EncrId, key_bits: int) -> int:
    if encr == EncrId.NULL:
        return 0
    if encr == EncrId.DES3:
        return 24
    return key_bits // 8 + _SALT.get(encr, 0)


def _check_lengths(
    encr: EncrId, key_bits: int, integ: IntegId, enc_keys: list[bytes], integ_keys: list[bytes]
) -> None:
    if encr in _COMBINED and integ != IntegId.NONE:
        raise KeylogError(f"{encr.name} is a combined mode; integrity must be NONE")
    want = _encr_key_len(encr, key_bits)
    for k in enc_keys:
        if len(k) != want:
            raise KeylogError(
                f"{encr.name} with {key_bits}-bit keys needs {want}-byte encryption keys "
                f"(salt included), got {len(k)}"
            )
    want = _INTEG_KEY_LEN[integ]
    for k in integ_keys:
        if len(k) != want:
            raise KeylogError(f"{integ.name} needs {want}-byte keys, got {len(k)}")


# ---------------------------------------------------------------------------
# Records


@dataclass(slots=True)
class IkeKeyRecord:
    """The keys of one IKE SA (RFC 7296 section 2.14), as Wireshark's IKEv2 table holds them.

    ``sk_ei``/``sk_er`` include the salt for AES-GCM; ``sk_ai``/``sk_ar`` are empty for
    combined-mode ciphers (integ NONE).
    """

    spi_i: bytes
    spi_r: bytes
    encr: EncrId
    key_bits: int
    integ: IntegId
    sk_ei: bytes
    sk_er: bytes
    sk_ai: bytes
    sk_ar: bytes


@dataclass(slots=True)
class EspKeyRecord:
    """The keys of one direction of an ESP SA, as Wireshark's ``esp_sa`` table holds them.

    ``spi`` is the SPI in the ESP header of packets going from ``src`` to ``dst`` (the
    outer addresses, as the capture shows them); ``enc_key`` includes the salt for AES-GCM.
    """

    src: IPv4Address | IPv6Address
    dst: IPv4Address | IPv6Address
    spi: int
    encr: EncrId
    key_bits: int
    integ: IntegId
    enc_key: bytes
    integ_key: bytes


def _quote(field: str) -> str:
    # Wireshark UAT files: a double-quoted field is text; a bare field of a byte-buffer
    # column is hex (a quoted one would be taken as the ASCII bytes of the digits).
    # None of our texts contains a quote or a backslash (hex, addresses, fixed names).
    return f'"{field}"'


def format_ike_record(r: IkeKeyRecord) -> str:
    """One line (without newline) of an ``ikev2_decryption_table`` file."""
    try:
        encr = EncrId(r.encr)
        integ = IntegId(r.integ)
        bits = 0 if encr == EncrId.NULL else 192 if encr == EncrId.DES3 else r.key_bits
        encr_name = _IKE_ENCR_NAMES[(encr, bits)]
        integ_name = _IKE_INTEG_NAMES[integ]
    except (ValueError, KeyError):
        raise KeylogError(
            f"Wireshark cannot decrypt IKE SAs using {EncrId.name_of(r.encr)} "
            f"({r.key_bits} bits) with {IntegId.name_of(r.integ)}"
        ) from None
    if len(r.spi_i) != 8 or len(r.spi_r) != 8:
        raise KeylogError("IKE SPIs are 8 bytes (RFC 7296 section 3.1)")
    _check_lengths(encr, bits, integ, [r.sk_ei, r.sk_er], [r.sk_ai, r.sk_ar])
    return ",".join([
        r.spi_i.hex(), r.spi_r.hex(), r.sk_ei.hex(), r.sk_er.hex(), _quote(encr_name),
        r.sk_ai.hex(), r.sk_ar.hex(), _quote(integ_name),
    ])  # fmt: skip


def format_esp_record(r: EspKeyRecord) -> str:
    """One line (without newline) of an ``esp_sa`` file."""
    try:
        encr = EncrId(r.encr)
        integ = IntegId(r.integ)
        encr_name = _ESP_ENCR_NAMES[encr]
        integ_name = _ESP_INTEG_NAMES[integ]
    except (ValueError, KeyError):
        raise KeylogError(
            f"Wireshark cannot decrypt ESP SAs using {EncrId.name_of(r.encr)} "
            f"with {IntegId.name_of(r.integ)}"
        ) from None
    if r.src.version != r.dst.version:
        raise KeylogError(f"address families differ: {r.src} -> {r.dst}")
    if not 0 < r.spi <= 0xFFFFFFFF:
        raise KeylogError(f"ESP SPI {r.spi:#x} is not a non-zero 32-bit value")
    bits = 192 if encr == EncrId.DES3 else r.key_bits
    _check_lengths(encr, bits, integ, [r.enc_key], [r.integ_key])
    # Every esp_sa column is text (Wireshark parses the 0x keys itself).
    return ",".join(_quote(f) for f in [
        f"IPv{r.src.version}", str(r.src), str(r.dst), f"0x{r.spi:08x}", encr_name,
        "0x" + r.enc_key.hex(), integ_name, "0x" + r.integ_key.hex(),
    ])  # fmt: skip


# ---------------------------------------------------------------------------
# Parsing


def _rows(text: str, ncols: int, table: str) -> list[tuple[int, list[str]]]:
    """(line number, fields) for each record line; comments and blank lines skipped."""
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            fields = next(csv.reader(io.StringIO(stripped), skipinitialspace=True))
        except (csv.Error, StopIteration) as e:
            raise KeylogError(f"line {lineno}: not a {table} record ({e})") from None
        if len(fields) != ncols:
            raise KeylogError(
                f"line {lineno}: a {table} record has {ncols} fields, this line {len(fields)}"
            )
        rows.append((lineno, [f.strip() for f in fields]))
    return rows


def _hex(lineno: int, what: str, text: str, prefix: bool = False) -> bytes:
    if text[:2].lower() == "0x":
        text = text[2:]
    elif prefix and text:
        # Wireshark reads an ESP key without 0x as ASCII text; pyike writes hex only.
        raise KeylogError(f"line {lineno}: {what} must be hex with a 0x prefix")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise KeylogError(f"line {lineno}: {what} is not hex: {text!r}") from None


def _lookup(lineno: int, what: str, name: str, table: dict[str, _T]) -> _T:
    try:
        return table[name.lower()]
    except KeyError:
        raise KeylogError(f"line {lineno}: unknown {what} {name!r}") from None


_IKE_ENCR_BY_NAME = {v.lower(): k for k, v in _IKE_ENCR_NAMES.items()}
_IKE_INTEG_BY_NAME = {v.lower(): k for k, v in _IKE_INTEG_NAMES.items()}
_ESP_ENCR_BY_NAME = {v.lower(): k for k, v in _ESP_ENCR_NAMES.items()} | _ESP_ENCR_ALIASES
_ESP_INTEG_BY_NAME = {v.lower(): k for k, v in _ESP_INTEG_NAMES.items()}


def parse_ike_records(text: str) -> list[IkeKeyRecord]:
    """Records of an ``ikev2_decryption_table`` file (ours, strongSwan's or Wireshark's)."""
    records = []
    for n, f in _rows(text, 8, IKE_TABLE_NAME):
        encr, bits = _lookup(n, "IKE encryption algorithm", f[4], _IKE_ENCR_BY_NAME)
        integ = _lookup(n, "IKE integrity algorithm", f[7], _IKE_INTEG_BY_NAME)
        r = IkeKeyRecord(
            spi_i=_hex(n, "SPIi", f[0]), spi_r=_hex(n, "SPIr", f[1]),
            encr=encr, key_bits=bits, integ=integ,
            sk_ei=_hex(n, "SK_ei", f[2]), sk_er=_hex(n, "SK_er", f[3]),
            sk_ai=_hex(n, "SK_ai", f[5]), sk_ar=_hex(n, "SK_ar", f[6]),
        )  # fmt: skip
        if len(r.spi_i) != 8 or len(r.spi_r) != 8:
            raise KeylogError(f"line {n}: IKE SPIs are 8 bytes (16 hex digits)")
        try:
            _check_lengths(encr, bits, integ, [r.sk_ei, r.sk_er], [r.sk_ai, r.sk_ar])
        except KeylogError as e:
            raise KeylogError(f"line {n}: {e}") from None
        records.append(r)
    return records


def parse_esp_records(text: str) -> list[EspKeyRecord]:
    """Records of an ``esp_sa`` file. Wildcard ("*") addresses and SPIs are refused."""
    records = []
    for n, f in _rows(text, 8, ESP_TABLE_NAME):
        proto, src_text, dst_text, spi_text = f[0], f[1], f[2], f[3]
        try:
            src = ipaddress.ip_address(src_text)
            dst = ipaddress.ip_address(dst_text)
        except ValueError:
            raise KeylogError(
                f"line {n}: addresses must be single IP addresses, got {src_text!r} -> {dst_text!r}"
            ) from None
        if proto.lower() != f"ipv{src.version}" or src.version != dst.version:
            raise KeylogError(f"line {n}: protocol {proto!r} does not match {src} -> {dst}")
        try:
            spi = int(spi_text, 16)
        except ValueError:
            raise KeylogError(f"line {n}: SPI {spi_text!r} is not a hex number") from None
        encr = _lookup(n, "ESP encryption algorithm", f[4], _ESP_ENCR_BY_NAME)
        integ = _lookup(n, "ESP authentication algorithm", f[6], _ESP_INTEG_BY_NAME)
        enc_key = _hex(n, "encryption key", f[5], prefix=True)
        integ_key = _hex(n, "authentication key", f[7], prefix=True)
        key_len = len(enc_key) - _SALT.get(encr, 0)  # key bits follow from the key length
        bits = 192 if encr == EncrId.DES3 else max(0, key_len) * 8
        if not 0 < spi <= 0xFFFFFFFF:
            raise KeylogError(f"line {n}: SPI {spi_text!r} is not a non-zero 32-bit value")
        if encr not in (EncrId.NULL, EncrId.DES3) and bits not in (128, 192, 256):
            raise KeylogError(f"line {n}: a {len(enc_key)}-byte key does not fit {encr.name}")
        try:
            _check_lengths(encr, bits, integ, [enc_key], [integ_key])
        except KeylogError as e:
            raise KeylogError(f"line {n}: {e}") from None
        records.append(EspKeyRecord(src, dst, spi, encr, bits, integ, enc_key, integ_key))
    return records


# ---------------------------------------------------------------------------
# Writing


_HEADER = "# Written by pyike. SECRET: these keys decrypt the traffic of the SAs listed here.\n"


class KeyLogWriter:
    """Appends records to one Wireshark key table file and flushes after each.

    WARNING: the file holds the secret keys of live SAs. It is created with mode 0600
    (and set to 0600 if it already exists); write it only where nobody else can read,
    and only when asked to. One file holds one table: IKE records go to a file named
    ``ikev2_decryption_table``, ESP records to one named ``esp_sa`` (the names
    Wireshark looks for in a profile directory); mixing them in one writer is refused.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.fchmod(fd, 0o600)
        except BaseException:
            os.close(fd)
            raise
        self._file = os.fdopen(fd, "a", encoding="ascii", newline="\n")
        self._kind: type | None = None
        if os.fstat(fd).st_size == 0:
            self._file.write(_HEADER)
            self._file.flush()

    def write(self, record: IkeKeyRecord | EspKeyRecord) -> bool:
        """Append one record; returns False (and logs a warning, and leaves a comment
        line in the file) for an SA that Wireshark's tables cannot describe, such as
        ChaCha20-Poly1305, so that key logging never disturbs the daemon."""
        if self._kind is not None and type(record) is not self._kind:
            raise KeylogError(
                f"{self.path} already holds {self._kind.__name__}s; IKE and ESP keys "
                f"go to separate files ({IKE_TABLE_NAME}, {ESP_TABLE_NAME})"
            )
        if not isinstance(record, IkeKeyRecord | EspKeyRecord):
            raise TypeError(f"not a key record: {record!r}")
        self._kind = type(record)
        try:
            if isinstance(record, IkeKeyRecord):
                line = format_ike_record(record)
            else:
                line = format_esp_record(record)
        except KeylogError as e:
            log.warning("key log %s: record skipped: %s", self.path, e)
            line = f"# record skipped: {e}"
            self._file.write(line + "\n")
            self._file.flush()
            return False
        self._file.write(line + "\n")
        self._file.flush()
        return True

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> KeyLogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
