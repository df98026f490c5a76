"""``pyike decode``: print IKE messages from a capture (or hex) as payload trees.

With a key log (Wireshark's ``ikev2_decryption_table`` format, which
``pyike --keylog`` writes) the SK payloads are decrypted and their inner
payloads printed too. This is a teaching tool first: every message of an
exchange, as the peers saw it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
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
    # Where and when it was captured (None for hex input): the ladder needs both.
    datagram: pcap.Datagram | None = None
    # A decrypted SKF fragment's plaintext (RFC 7383 2.5): inner payloads only
    # parse once every fragment is in, see reassemble().
    fragment_plain: bytes | None = None
    # Set on the message whose fragment completed a reassembly: the positions (1-based,
    # among the IKE messages decoded) of the fragments, in fragment order.
    reassembled: tuple[int, ...] = ()

    def render(self) -> str:
        head = f"--- {self.where}, {len(self.data)} bytes"
        if self.message is None:
            return f"{head}\n  (not an IKE message: {self.error})"
        text = wire.format_message(self.message, self.inner)
        if self.reassembled:
            text += f"\n  (reassembled from {len(self.reassembled)} fragments)"
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


Ciphers = Mapping[tuple[bytes, bytes], tuple[crypto.SkCipher, crypto.SkCipher]]


def decode_message(data: bytes, where: str, ciphers: Ciphers) -> Decoded:
    """Parse one IKE message and, with a key for its SPIs, decrypt its SK payload
    (or SKF fragment). Never raises: problems end up in ``Decoded.error``."""
    try:
        msg = wire.parse_message(data)
    except wire.WireError as e:
        return Decoded(where, data, None, None, str(e))
    sk = msg.payloads[-1] if msg.payloads else None
    if not isinstance(sk, wire.SkPayload | wire.SkfPayload):
        return Decoded(where, data, msg, None)
    pair = ciphers.get((msg.spi_i, msg.spi_r))
    if pair is None:
        return Decoded(where, data, msg, None, "no key for these SPIs: pass --keylog")
    # The I flag says whether the original initiator sent it (RFC 7296 3.1):
    # that decides SK_ei/SK_ai versus SK_er/SK_ar.
    cipher = pair[0] if msg.flags & HeaderFlag.INITIATOR else pair[1]
    # Everything before the IV is authenticated: for SKF that includes the
    # Fragment Number and Total Fragments fields (RFC 7383 2.5.3).
    aad = data[: len(data) - len(sk.data)]
    try:
        plain = cipher.open(aad, sk.data)
    except crypto.IntegrityError as e:
        return Decoded(where, data, msg, None, f"integrity check failed: {e}")
    except (crypto.CryptoError, ValueError) as e:
        return Decoded(where, data, msg, None, f"cannot decrypt: {e}")
    if isinstance(sk, wire.SkfPayload) and sk.total > 1:
        return Decoded(where, data, msg, None, fragment_plain=plain)
    try:
        inner = wire.parse_payloads(sk.first_inner, plain)
    except wire.WireError as e:
        return Decoded(where, data, msg, None, f"decrypted payloads malformed: {e}")
    return Decoded(where, data, msg, inner)


def reassemble(items: Iterable[Decoded]) -> Iterator[Decoded]:
    """Pass messages through; when the last missing fragment of a fragmented message
    arrives (RFC 7383 2.6), give that fragment the reassembled inner payloads.

    Fragments belong together when they share SPIs, message ID, exchange and
    flags; a retransmitted fragment replaces the earlier copy. The first inner
    payload type comes from fragment 1 (RFC 7383 2.5: zero in the others).
    """
    pending: dict[tuple, dict[int, tuple[int, Decoded]]] = {}
    for n, item in enumerate(items, start=1):
        msg, plain = item.message, item.fragment_plain
        skf = msg.payloads[-1] if msg is not None and msg.payloads else None
        if msg is not None and plain is not None and isinstance(skf, wire.SkfPayload):
            key = (msg.spi_i, msg.spi_r, msg.message_id, msg.exchange, msg.flags, skf.total)
            parts = pending.setdefault(key, {})
            parts[skf.number] = (n, item)
            if len(parts) == skf.total:
                del pending[key]
                first = parts[1][1].message
                assert first is not None
                first_skf = first.payloads[-1]
                assert isinstance(first_skf, wire.SkfPayload)
                data = b"".join(parts[i][1].fragment_plain or b"" for i in range(1, skf.total + 1))
                item.reassembled = tuple(parts[i][0] for i in range(1, skf.total + 1))
                try:
                    item.inner = wire.parse_payloads(first_skf.first_inner, data)
                except wire.WireError as e:
                    item.error = f"reassembled payloads malformed: {e}"
        yield item


def decode_capture(path: Path, keylog_text: str = "") -> Iterator[Decoded]:
    """IKE messages of a pcap/pcapng file. Raises pcap.CaptureError at once if the
    file is not a capture; a capture cut short ends with a logged warning."""
    ciphers = ike_ciphers(keylog.parse_ike_records(keylog_text)) if keylog_text else {}
    return reassemble(_capture_messages(pcap.read_capture(path), ciphers))


def _capture_messages(datagrams: Iterable[pcap.Datagram], ciphers: Ciphers) -> Iterator[Decoded]:
    for n, d in enumerate(datagrams, start=1):
        data = pcap.ike_payload(d)
        if data is None:
            continue
        where = f"#{n} {d.timestamp:.6f} [{d.src}]:{d.sport} -> [{d.dst}]:{d.dport}"
        item = decode_message(data, where, ciphers)
        item.datagram = d
        yield item


def decode_hex(text: str, keylog_text: str = "") -> Iterator[Decoded]:
    ciphers = ike_ciphers(keylog.parse_ike_records(keylog_text)) if keylog_text else {}
    messages = pcap.read_hex(text)
    return reassemble(
        decode_message(data, f"message {n}", ciphers) for n, data in enumerate(messages, start=1)
    )
