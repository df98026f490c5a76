"""IKE messages as the ladder diagrams of RFC 7296 section 1.2.

RFC 7296 draws every exchange with the initiator on the left and the responder
on the right, one message per arrow::

    HDR, SAi1, KEi, Ni  -->
                                    <--  HDR, SAr1, KEr, Nr, [CERTREQ]

This module turns real messages (from a capture, hex, or a running daemon) into
that notation. The rules, all from RFC 7296:

* ``SAi1``/``SAr1`` in IKE_SA_INIT and ``SAi2``/``SAr2`` in IKE_AUTH (1.2); plain
  ``SA`` in CREATE_CHILD_SA (1.3). ``KEi``/``Ni`` in requests, ``KEr``/``Nr`` in
  responses: in CREATE_CHILD_SA "initiator" means the exchange's, either end (1.3).
* ``IDi``, ``IDr``, ``TSi``, ``TSr`` are distinct payload types (3.5, 3.13).
* ``N(TYPE)`` for a Notify (2.6's ``N(COOKIE)``, 1.3.3's ``N(REKEY_SA)``), ``D`` for a
  Delete, ``V`` for a Vendor ID, ``CP(TYPE)`` (2.19), ``SK {...}`` for the Encrypted
  payload with its contents, ``SK {encrypted}`` when there is no key for it.
* Payloads the RFC's template for that message marks optional are bracketed when
  present, as the RFC writes them: ``[CERTREQ]`` in the IKE_SA_INIT response,
  ``[CERT,] [CERTREQ,] [IDr,]`` in the IKE_AUTH request, ``[KEi,]`` in
  CREATE_CHILD_SA. Notifies and Vendor IDs appear as sent, in wire order.

Left and right are the two hosts: the left one is the original initiator of the
first IKE SA seen between them, so after an IKE SA rekey started by the other end
(whose I flag then flips, 2.18) arrows still point the way the message travelled.
Retransmissions (a datagram identical to an earlier one, 2.1) and IKE
fragments (RFC 7383) are marked.

Entry points: ``LadderBuilder`` (a stream of ``decode.Decoded`` to ``Step`` objects),
``format_step`` (one step as text), ``render_message`` (one message, for the live
monitor), ``render_text`` (a whole capture).
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from pyike import crypto, decode, wire
from pyike.registry import CfgType, ExchangeType, NotifyType, PayloadType, ProtocolId

LEFT = "-->"  # from the left lifeline (initiator) to the right one
RIGHT = "<--"
# RFC 7296 1.2's columns: responder messages start after "<--" at column 32, their
# continuation lines 4 further in; initiator continuation lines are indented 4.
RESPONDER_ARROW_COLUMN = 32
RESPONDER_TEXT_COLUMN = RESPONDER_ARROW_COLUMN + len(RIGHT) + 2
CONTINUATION = 4
DEFAULT_WIDTH = 100

# (exchange, is_response) -> labels the RFC's template brackets as optional.
_OPTIONAL: dict[tuple[int, bool], frozenset[str]] = {
    (ExchangeType.IKE_SA_INIT, True): frozenset({"CERTREQ"}),  # 1.2
    (ExchangeType.IKE_AUTH, False): frozenset({"CERT", "CERTREQ", "IDr", "CP"}),  # 1.2, 2.19
    (ExchangeType.IKE_AUTH, True): frozenset({"CERT", "CP"}),
    (ExchangeType.CREATE_CHILD_SA, False): frozenset({"KEi"}),  # 1.3.1, 1.3.3
    (ExchangeType.CREATE_CHILD_SA, True): frozenset({"KEr"}),
}


def _label(p: wire.Payload, exchange: int, response: bool) -> str:
    """The RFC 7296 name of one (non-encrypted) payload in this message."""
    side = "r" if response else "i"
    if isinstance(p, wire.SaPayload):
        if exchange == ExchangeType.IKE_SA_INIT:
            return f"SA{side}1"
        if exchange == ExchangeType.IKE_AUTH:
            return f"SA{side}2"
        return "SA"
    if isinstance(p, wire.KePayload):
        return f"KE{side}"
    if isinstance(p, wire.NoncePayload):
        return f"N{side}"
    if isinstance(p, wire.IdPayload | wire.TsPayload):
        return PayloadType.name_of(p.kind)
    if isinstance(p, wire.NotifyPayload):
        return f"N({NotifyType.name_of(p.type)})"
    if isinstance(p, wire.DeletePayload):
        return "D"
    if isinstance(p, wire.VendorPayload):
        return "V"
    if isinstance(p, wire.CpPayload):
        return f"CP({CfgType.name_of(p.cfg_type)})"
    if isinstance(p, wire.CertPayload):
        return "CERT"
    if isinstance(p, wire.CertReqPayload):
        return "CERTREQ"
    if isinstance(p, wire.AuthPayload):
        return "AUTH"
    if isinstance(p, wire.EapPayload):
        return "EAP"
    if isinstance(p, wire.UnknownPayload):
        return PayloadType.name_of(p.type)
    return PayloadType.name_of(p.ptype)


def _join(labels: list[str], optional: frozenset[str]) -> str:
    """Comma-separated, optional ones as ``[X,]`` (or ``[X]`` when last), as in 1.2."""
    out = []
    for i, label in enumerate(labels):
        last = i == len(labels) - 1
        if label in optional or label.split("(")[0] in optional:
            out.append(f"[{label}]" if last else f"[{label},] ")
        else:
            out.append(label if last else f"{label}, ")
    return "".join(out)


def _rekeys_ike_sa(payloads: list[wire.Payload]) -> bool:
    """A CREATE_CHILD_SA whose SA proposes protocol IKE creates a new IKE SA (1.3.2)."""
    return any(
        prop.protocol == ProtocolId.IKE
        for p in payloads
        if isinstance(p, wire.SaPayload)
        for prop in p.proposals
    )


def notation(
    msg: wire.Message, inner: list[wire.Payload] | None = None, *, fragment_note: str = ""
) -> str:
    """``HDR, SAi1, KEi, Ni`` or ``HDR, SK {IDi, AUTH, ...}`` for one message.

    ``inner`` is the decrypted content of its SK payload (or of the reassembled SKF
    fragments); without it an encrypted payload reads ``SK {encrypted}``.
    """
    optional = _OPTIONAL.get((msg.exchange, msg.is_response), frozenset())
    if msg.exchange == ExchangeType.CREATE_CHILD_SA and _rekeys_ike_sa(
        [*msg.payloads, *(inner or [])]
    ):
        optional = frozenset()  # 1.3.2: "HDR, SK {SA, Ni, KEi}": KE is required for an IKE SA
    labels = ["HDR"]
    for p in msg.payloads:
        if isinstance(p, wire.SkPayload | wire.SkfPayload):
            name = "SK" if isinstance(p, wire.SkPayload) else "SKF"
            if inner is not None:
                content = _join([_label(q, msg.exchange, msg.is_response) for q in inner], optional)
            elif fragment_note:
                content = fragment_note
            else:
                content = "encrypted"
            labels.append(f"{name} {{{content}}}")
        else:
            labels.append(_label(p, msg.exchange, msg.is_response))
    return _join(labels, optional)


@dataclass(slots=True)
class Step:
    """One message of a ladder, ready to draw."""

    number: int  # position among the IKE messages, from 1
    time: float | None  # seconds since the first message (None: not known)
    arrow: str  # LEFT ("-->", left to right) or RIGHT ("<--")
    left: str  # lifeline labels: the initiator's and the responder's host
    right: str
    exchange: str  # "IKE_SA_INIT", ... or "?" when not an IKE message
    message_id: int | None
    response: bool
    notation: str  # "HDR, SAi1, KEi, Ni"
    marks: list[str] = field(default_factory=list)  # "retransmission of #3", ...
    tree: str = ""  # the full payload tree, as `pyike decode` prints it
    src: str = ""  # "192.0.2.1:500" when known
    dst: str = ""
    size: int = 0
    error: str = ""  # not decodable / not decryptable: why
    purpose: str = ""  # what the exchange does, when the payloads say: "rekey Child SA"

    @property
    def title(self) -> str:
        """``CREATE_CHILD_SA request, message ID 2: rekey Child SA`` (plus marks)."""
        if self.message_id is None:
            text = "not an IKE message"
        else:
            kind = "response" if self.response else "request"
            text = f"{self.exchange} {kind}, message ID {self.message_id}"
        if self.purpose:
            text += f": {self.purpose}"
        if self.marks:
            text += " (" + "; ".join(self.marks) + ")"
        return text


# Notify types below 16384 are errors (RFC 7296 3.10.1).
_LAST_ERROR_NOTIFY = 16383


def purpose(msg: wire.Message, inner: list[wire.Payload] | None) -> str:
    """What a request asks for, or what an answer refuses, in a few words; "" when the
    payloads do not say (or are encrypted without a key)."""
    payloads = [*msg.payloads, *(inner or [])]
    for p in payloads:
        if isinstance(p, wire.NotifyPayload) and p.type <= _LAST_ERROR_NOTIFY:
            return NotifyType.name_of(p.type)
        if isinstance(p, wire.NotifyPayload) and p.type == NotifyType.COOKIE:
            return "cookie" if msg.is_response else "with cookie"  # 2.6
    encrypted = any(isinstance(p, wire.SkPayload | wire.SkfPayload) for p in msg.payloads)
    if encrypted and inner is None:
        return ""
    if msg.exchange == ExchangeType.CREATE_CHILD_SA and not msg.is_response:
        if _rekeys_ike_sa(payloads):
            return "rekey IKE SA"  # 1.3.2
        if any(
            isinstance(p, wire.NotifyPayload) and p.type == NotifyType.REKEY_SA for p in payloads
        ):
            return "rekey Child SA"  # 1.3.3
        return "new Child SA"  # 1.3.1
    if msg.exchange == ExchangeType.INFORMATIONAL:
        deletes = [p for p in payloads if isinstance(p, wire.DeletePayload)]
        if deletes:
            ike = any(d.protocol == ProtocolId.IKE for d in deletes)
            return "delete IKE SA" if ike else "delete Child SA"  # 1.4.1
        if not msg.is_response and not inner:
            return "liveness check"  # 2.4: an empty INFORMATIONAL request
    return ""


class LadderBuilder:
    """Turns decoded messages, in capture order, into Steps.

    Keeps what the marks need: the first time, which host of each pair initiated,
    the datagrams seen (for retransmissions).
    """

    def __init__(self) -> None:
        self._count = 0
        self._t0: float | None = None
        self._sides: dict[frozenset[str], tuple[str, str]] = {}
        self._seen: dict[tuple[str, str, bytes], int] = {}
        self._purposes: dict[tuple[bytes, int, int], str] = {}

    def add(self, item: decode.Decoded) -> Step:
        self._count += 1
        n = self._count
        msg, d = item.message, item.datagram
        time = None
        src = dst = ""
        if d is not None:
            if self._t0 is None:
                self._t0 = d.timestamp
            time = d.timestamp - self._t0
            src_host, dst_host = str(d.src), str(d.dst)
            fmt = "[{}]:{}" if d.src.version == 6 else "{}:{}"
            src, dst = fmt.format(d.src, d.sport), fmt.format(d.dst, d.dport)
            pair = frozenset((src_host, dst_host))
            if pair not in self._sides:
                # The I flag names the original initiator (RFC 7296 3.1).
                sent_by_initiator = msg is None or msg.is_initiator
                self._sides[pair] = (
                    (src_host, dst_host) if sent_by_initiator else (dst_host, src_host)
                )
            left, right = self._sides[pair]
            arrow = LEFT if src_host == left else RIGHT
        else:
            left, right = "Initiator", "Responder"
            arrow = LEFT if msg is None or msg.is_initiator else RIGHT
        marks = []
        # The same bytes between the same hosts (RFC 7296 2.1: a retransmission
        # is the message unchanged; ports may differ after a move to 4500).
        first = self._seen.setdefault(
            (src.rpartition(":")[0], dst.rpartition(":")[0], item.data), n
        )
        if first != n:
            marks.append(f"retransmission of #{first}")
        step = _step(n, time, arrow, left, right, item, marks)
        step.src, step.dst = src, dst
        if msg is not None:
            # A response answers its request: it inherits the request's purpose
            # unless it says something of its own (an error notify).
            key = (msg.spi_i, msg.message_id, msg.exchange)
            if not msg.is_response:
                self._purposes[key] = step.purpose
            elif not step.purpose:
                step.purpose = self._purposes.get(key, "")
        return step


def _step(
    n: int,
    time: float | None,
    arrow: str,
    left: str,
    right: str,
    item: decode.Decoded,
    marks: list[str],
) -> Step:
    msg = item.message
    if msg is None:
        return Step(
            n, time, arrow, left, right, "?", None, False,
            f"({len(item.data)} bytes, not an IKE message: {item.error})",
            marks, item.render(), size=len(item.data), error=item.error,
        )  # fmt: skip
    last = msg.payloads[-1] if msg.payloads else None
    fragment_note = ""
    if isinstance(last, wire.SkfPayload):
        marks.append(f"fragment {last.number}/{last.total}")
        if item.reassembled:
            marks.append("reassembled: " + ", ".join(f"#{k}" for k in item.reassembled))
        elif item.fragment_plain is not None:
            fragment_note = f"fragment {last.number}/{last.total}"
    tree = item.render().split("\n", 1)[-1]
    return Step(
        n,
        time,
        arrow,
        left,
        right,
        ExchangeType.name_of(msg.exchange),
        msg.message_id,
        msg.is_response,
        notation(msg, item.inner, fragment_note=fragment_note),
        marks,
        tree,
        size=len(item.data),
        error=item.error,
        purpose=purpose(msg, item.inner),
    )


def _wrap(text: str, width: int, first: str, rest: str) -> list[str]:
    if width <= 0:
        return [first + text]
    return textwrap.wrap(
        text,
        width=width,
        initial_indent=first,
        subsequent_indent=rest,
        break_long_words=False,
        break_on_hyphens=False,
    ) or [first]


def format_step(step: Step, width: int = DEFAULT_WIDTH) -> list[str]:
    """The lines of one message: a heading (number, time, exchange, message ID,
    marks), then the RFC notation with its arrow, wrapped at ``width`` (0: never)."""
    parts = [f"#{step.number}"] if step.number else []
    if step.time is not None:
        parts.append(f"+{step.time:.3f}s")
    heading = "  ".join([*parts, step.title])
    if step.arrow == LEFT:
        # Leave room for the arrow on the last line.
        body = _wrap(step.notation, width - 5 if width else 0, "", " " * CONTINUATION)
        body[-1] += f"  {LEFT}"
        return [heading, *body]
    pad = " " * RESPONDER_TEXT_COLUMN
    body = _wrap(
        step.notation,
        width,
        " " * RESPONDER_ARROW_COLUMN + f"{RIGHT}  ",
        pad + " " * CONTINUATION,
    )
    # The heading goes over the responder's column, moved left if it would not fit.
    indent = RESPONDER_TEXT_COLUMN
    if width > 0:
        indent = max(0, min(indent, width - len(heading)))
    return [" " * indent + heading, *body]


def format_header(left: str, right: str) -> list[str]:
    """``Initiator 192.0.2.1 ... Responder 192.0.2.2`` over a rule, as in 1.2."""
    head = f"Initiator {left}" if left != "Initiator" else "Initiator"
    tail = f"Responder {right}" if right != "Responder" else "Responder"
    line = head.ljust(RESPONDER_TEXT_COLUMN - 1) + " " + tail
    return [line, "-" * max(len(line), 67)]


def render_text(items: Iterable[decode.Decoded], width: int = DEFAULT_WIDTH) -> Iterator[str]:
    """The whole ladder as lines, produced as the messages come (so a pipe into
    ``head`` sees output at once). A new header starts when the host pair changes."""
    builder = LadderBuilder()
    pair: tuple[str, str] | None = None
    for item in items:
        step = builder.add(item)
        if (step.left, step.right) != pair:
            if pair is not None:
                yield ""
            pair = (step.left, step.right)
            yield from format_header(*pair)
        yield ""
        yield from format_step(step, width)


def render_message(
    message: bytes | wire.Message,
    direction: str,
    time: float | None = None,
    *,
    keys: Mapping[tuple[bytes, bytes], tuple[crypto.SkCipher, crypto.SkCipher]] | None = None,
    inner: list[wire.Payload] | None = None,
    number: int = 0,
    width: int = DEFAULT_WIDTH,
) -> str:
    """One message in ladder notation, for a live monitor.

    ``message``: the datagram (without port 4500's non-ESP marker) or a parsed
    ``wire.Message``. ``direction``: ``"-->"`` if it travels from the IKE SA's
    original initiator to its responder, ``"<--"`` the other way (a daemon knows
    this as ``sent == we_are_original_initiator``). ``time``: seconds to show
    (e.g. since the daemon started), or None. ``keys``: (SPIi, SPIr) -> the
    initiator's and responder's SkCipher, as ``decode.ike_ciphers`` builds them,
    to show SK contents of raw bytes; or pass ``inner``, the decrypted payloads,
    which a daemon already has. ``number`` > 0 is shown as ``#number``.
    Returns the lines joined by newlines, without a trailing one.
    """
    if direction not in (LEFT, RIGHT):
        raise ValueError(f"direction must be {LEFT!r} or {RIGHT!r}, not {direction!r}")
    if isinstance(message, wire.Message):
        item = decode.Decoded("live", b"", message, inner)
    else:
        item = decode.decode_message(bytes(message), "live", keys or {})
        if inner is not None and item.message is not None:
            item.inner, item.error = inner, ""
    step = _step(number, time, direction, "Initiator", "Responder", item, [])
    return "\n".join(format_step(step, width))
