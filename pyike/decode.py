"""``pyike decode``: print IKE messages from a capture (or hex) as payload trees.

With a key log (Wireshark's ``ikev2_decryption_table`` format, which
``pyike --keylog`` writes) the SK payloads are decrypted and their inner
payloads printed too. This is a teaching tool first: every message of an
exchange, as the peers saw it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pyike import crypto, keylog, pcap, wire
from pyike.registry import HeaderFlag


@dataclass(slots=True)
class Decoded:
    """One IKE message: where it came from, the parse, and its decrypted payloads."""

    where: str
    data: bytes
    message: wire.Message | None
    inner: list[wire.Payload] | None
    error: str = ""

    def render(self) -> str:
        head = f"--- {self.where}, {len(self.data)} bytes"
        if self.message is None:
            return f"{head}\n  (not an IKE message: {self.error})"
        text = wire.format_message(self.message, self.inner)
        if self.error:
            text += f"\n  ({self.error})"
        return f"{head}\n{text}"


def ike_ciphers(
    records: Iterable[keylog.IkeKeyRecord],
) -> dict[tuple[bytes, bytes], tuple[crypto.SkCipher, crypto.SkCipher]]:
    """(SPIi, SPIr) -> (initiator's cipher, responder's cipher)."""
    out = {}
    for r in records:
        out[(r.spi_i, r.spi_r)] = (
            crypto.SkCipher(r.encr, r.key_bits, r.integ, r.sk_ei, r.sk_ai),
            crypto.SkCipher(r.encr, r.key_bits, r.integ, r.sk_er, r.sk_ar),
        )
    return out


def decode_message(data: bytes, where: str, ciphers: dict) -> Decoded:
    try:
        msg = wire.parse_message(data)
    except wire.WireError as e:
        return Decoded(where, data, None, None, str(e))
    sk = msg.payloads[-1] if msg.payloads else None
    if not isinstance(sk, wire.SkPayload):
        return Decoded(where, data, msg, None)
    pair = ciphers.get((msg.spi_i, msg.spi_r))
    if pair is None:
        return Decoded(where, data, msg, None, "no key for these SPIs: pass --keylog")
    # The I flag says whether the original initiator sent it (RFC 7296 3.1):
    # that decides SK_ei/SK_ai versus SK_er/SK_ar.
    cipher = pair[0] if msg.flags & HeaderFlag.INITIATOR else pair[1]
    aad = data[: len(data) - len(sk.data)]
    try:
        inner = wire.parse_payloads(sk.first_inner, cipher.open(aad, sk.data))
    except crypto.IntegrityError as e:
        return Decoded(where, data, msg, None, f"integrity check failed: {e}")
    except wire.WireError as e:
        return Decoded(where, data, msg, None, f"decrypted payloads malformed: {e}")
    return Decoded(where, data, msg, inner)


def decode_capture(path: Path, keylog_text: str = "") -> Iterator[Decoded]:
    ciphers = ike_ciphers(keylog.parse_ike_records(keylog_text)) if keylog_text else {}
    for n, d in enumerate(pcap.read_capture(path), start=1):
        data = pcap.ike_payload(d)
        if data is None:
            continue
        where = f"#{n} {d.timestamp:.6f} [{d.src}]:{d.sport} -> [{d.dst}]:{d.dport}"
        yield decode_message(data, where, ciphers)


def decode_hex(text: str, keylog_text: str = "") -> Iterator[Decoded]:
    ciphers = ike_ciphers(keylog.parse_ike_records(keylog_text)) if keylog_text else {}
    for n, data in enumerate(pcap.read_hex(text), start=1):
        yield decode_message(data, f"message {n}", ciphers)
