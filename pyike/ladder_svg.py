"""The RFC 7296 ladder as a picture: an SVG sequence diagram and an HTML page.

``pyike decode --svg OUT`` draws two lifelines (initiator left, responder right,
as in RFC 7296 section 1.2), one arrow per message labelled with its RFC notation,
and a time axis on the left. Hovering an arrow shows the message's whole payload
tree (an SVG ``<title>``). ``--html OUT`` puts the same drawing on a page, each
arrow linking to the message's expandable payload tree (``<details>``).

Built with xml.etree.ElementTree, so every text is escaped; standard library only.
"""

from __future__ import annotations

import textwrap
import xml.etree.ElementTree as ET
from collections.abc import Iterable

from pyike import decode
from pyike.ladder import LEFT, LadderBuilder, Step

SVG_NS = "http://www.w3.org/2000/svg"

# Geometry, in px. The notation is monospace: CHAR_W is DejaVu Sans Mono's advance
# at FONT_PX (0.602 em), which sizes the wrapping to the space between lifelines.
FONT_PX = 12
CHAR_W = FONT_PX * 0.602
LINE_H = 15
AXIS_X = 78  # the time axis
LEFT_X = 200  # initiator lifeline
SPAN = 660  # between the lifelines
RIGHT_X = LEFT_X + SPAN
WIDTH = RIGHT_X + 150
HEAD_H = 54  # a lifeline's header box
TOP = 46  # the title above the header boxes
ROW_GAP = 18  # between one arrow and the next message's labels
WRAP = int((SPAN - 24) / CHAR_W)

# One colour per exchange (RFC 7296 1.2-1.4), the same in the legend.
COLOURS = {
    "IKE_SA_INIT": "#1f5fbf",
    "IKE_AUTH": "#1e8a4c",
    "CREATE_CHILD_SA": "#c26a00",
    "INFORMATIONAL": "#7b3fa8",
}
OTHER_COLOUR = "#555555"
ERROR_COLOUR = "#b00020"

_STYLE = """
text { font-family: 'DejaVu Sans', 'Helvetica Neue', Arial, sans-serif; font-size: 12px; }
.mono { font-family: 'DejaVu Sans Mono', Menlo, Consolas, monospace; }
.title { font-size: 16px; font-weight: bold; }
.head { font-weight: bold; font-size: 13px; }
.addr { font-size: 12px; fill: #333; }
.meta { font-size: 11px; }
.time { font-size: 11px; fill: #444; }
.life { stroke: #888; stroke-width: 1.5; stroke-dasharray: 6 4; pointer-events: none; }
.axis { stroke: #444; stroke-width: 1; }
.msg .band { fill: #ffffff; fill-opacity: 0; }
.msg .band.shade { fill: #f3f5f9; fill-opacity: 1; }
.msg:hover .band { fill: #fff3c4; fill-opacity: 1; }
.gap { font-size: 11px; font-style: italic; fill: #666; }
"""
GAP_S = 1.0  # a pause this long between two messages is written out


def steps_of(items: Iterable[decode.Decoded]) -> list[Step]:
    """The ladder steps of decoded messages, in order."""
    builder = LadderBuilder()
    return [builder.add(item) for item in items]


def _colour(step: Step) -> str:
    if step.error and step.message_id is None:
        return ERROR_COLOUR
    return COLOURS.get(step.exchange, OTHER_COLOUR)


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: object) -> ET.Element:
    el = ET.SubElement(
        parent, tag, {k.rstrip("_").replace("_", "-"): str(v) for k, v in attrs.items()}
    )
    if text is not None:
        el.text = text
    return el


def _time_label(step: Step) -> str:
    return f"+{step.time:.3f} s" if step.time is not None else f"#{step.number}"


def _defs(svg: ET.Element) -> None:
    defs = _sub(svg, "defs")
    for name, colour in [*COLOURS.items(), ("other", OTHER_COLOUR), ("error", ERROR_COLOUR)]:
        marker = _sub(
            defs,
            "marker",
            id=f"head-{name}",
            viewBox="0 0 10 10",
            refX=9,
            refY=5,
            markerWidth=9,
            markerHeight=9,
            orient="auto-start-reverse",
            markerUnits="userSpaceOnUse",
        )
        _sub(marker, "path", d="M 0 0 L 10 5 L 0 10 z", fill=colour)
    style = _sub(svg, "style")
    style.text = _STYLE


def _marker_name(step: Step) -> str:
    if step.error and step.message_id is None:
        return "error"
    return step.exchange if step.exchange in COLOURS else "other"


def _header(svg: ET.Element, y: float, step: Step) -> float:
    for x, role, host in ((LEFT_X, "Initiator", step.left), (RIGHT_X, "Responder", step.right)):
        _sub(
            svg, "rect", x=x - 95, y=y, width=190, height=HEAD_H - 8, rx=6,
            fill="#eef2f8", stroke="#5a6b86", stroke_width=1.2,
        )  # fmt: skip
        _sub(svg, "text", role, x=x, y=y + 19, text_anchor="middle", class_="head")
        if host != role:
            _sub(svg, "text", host, x=x, y=y + 36, text_anchor="middle", class_="addr mono")
    return y + HEAD_H


def _row(svg: ET.Element, y: float, step: Step, link: str | None, shade: bool) -> float:
    """One message: its labels, its arrow, its time tick. Returns the next row's y."""
    colour = _colour(step)
    parent: ET.Element = svg
    if link is not None:
        parent = _sub(svg, "a", href=link)
    g = _sub(parent, "g", class_="msg")
    _sub(g, "title", f"#{step.number}  {step.title}\n{step.notation}\n\n{step.tree}")
    lines = textwrap.wrap(
        step.notation, WRAP, subsequent_indent="    ", break_long_words=False,
        break_on_hyphens=False,
    ) or [""]  # fmt: skip
    height = LINE_H * (len(lines) + 1) + 12
    # The band behind a row reaches the next row's, so an exchange (a request and
    # its response) reads as one shaded block; alternate exchanges are unshaded.
    _sub(g, "rect", x=AXIS_X + 6, y=y - 8, width=WIDTH - AXIS_X - 16, height=height + ROW_GAP,
         class_="band shade" if shade else "band")  # fmt: skip
    meta = f"#{step.number}  {step.title}"
    if step.src:
        meta += f"  \u00b7  {step.src} \u2192 {step.dst}, {step.size} bytes"
    _sub(g, "text", meta, x=LEFT_X + 12, y=y + 11, fill=colour, class_="meta")
    text = _sub(g, "text", x=LEFT_X + 12, y=y + 11 + LINE_H, class_="mono", fill="#111")
    for i, line in enumerate(lines):
        span = _sub(text, "tspan", line, x=LEFT_X + 12, dy=0 if i == 0 else LINE_H)
        span.set("xml:space", "preserve")
    arrow_y = y + height
    x1, x2 = (LEFT_X, RIGHT_X) if step.arrow == LEFT else (RIGHT_X, LEFT_X)
    retransmitted = any(m.startswith("retransmission") for m in step.marks)
    _sub(
        g, "line", x1=x1, y1=arrow_y, x2=x2 + (-3 if x2 > x1 else 3), y2=arrow_y,
        stroke=colour, stroke_width=2.2, marker_end=f"url(#head-{_marker_name(step)})",
        **({"stroke_dasharray": "8 5"} if retransmitted or step.message_id is None else {}),
    )  # fmt: skip
    _sub(svg, "line", x1=AXIS_X - 4, y1=arrow_y, x2=AXIS_X + 4, y2=arrow_y, class_="axis")
    _sub(svg, "text", _time_label(step), x=AXIS_X - 8, y=arrow_y + 4, text_anchor="end",
         class_="time mono")  # fmt: skip
    return arrow_y + ROW_GAP


def _legend(svg: ET.Element, y: float) -> float:
    x: float = AXIS_X + 10
    for name, colour in COLOURS.items():
        _sub(svg, "line", x1=x, y1=y, x2=x + 26, y2=y, stroke=colour, stroke_width=2.2,
             marker_end=f"url(#head-{name})")  # fmt: skip
        _sub(svg, "text", name, x=x + 34, y=y + 4, fill=colour)
        x += 34 + len(name) * 7.5 + 24
    _sub(svg, "line", x1=x, y1=y, x2=x + 26, y2=y, stroke=OTHER_COLOUR, stroke_width=2.2,
         stroke_dasharray="8 5")  # fmt: skip
    _sub(svg, "text", "retransmission", x=x + 34, y=y + 4, fill=OTHER_COLOUR)
    return y + 20


def build_svg(steps: list[Step], title: str = "", link_prefix: str | None = None) -> ET.Element:
    """The diagram as an element tree. ``link_prefix`` makes each arrow a link to
    ``#<prefix><number>`` (the HTML page's payload trees)."""
    svg = ET.Element("svg", {"xmlns": SVG_NS, "version": "1.1"})
    _defs(svg)
    background = _sub(svg, "rect", x=0, y=0, width=WIDTH, height=0, fill="#ffffff")
    heading = "IKEv2 exchange, drawn as in RFC 7296 section 1.2"
    _sub(svg, "text", f"{heading}: {title}" if title else heading, x=AXIS_X - 60, y=26,
         class_="title")  # fmt: skip
    y: float = TOP
    pair: tuple[str, str] | None = None
    section_top = y
    axis_top = y
    exchanges = 0
    last_time: float | None = None
    for step in steps:
        if (step.left, step.right) != pair:
            if pair is not None:
                _lifelines(svg, section_top, y)
                y += 12
            pair = (step.left, step.right)
            section_top = y + HEAD_H - 8
            y = _header(svg, y, step) + 6
            if axis_top == TOP:
                axis_top = y - 6
        if not step.response:
            exchanges += 1
        if step.time is not None and last_time is not None and step.time - last_time >= GAP_S:
            _sub(svg, "text", f"\u22ef  {step.time - last_time:.3f} s later  \u22ef",
                 x=(LEFT_X + RIGHT_X) / 2, y=y + 6, text_anchor="middle", class_="gap")  # fmt: skip
            _sub(svg, "path", d=f"M {AXIS_X - 6} {y + 2} l 12 -4 M {AXIS_X - 6} {y + 7} l 12 -4",
                 class_="axis")  # fmt: skip
            y += 22
        last_time = step.time
        link = f"#{link_prefix}{step.number}" if link_prefix is not None else None
        y = _row(svg, y, step, link, shade=exchanges % 2 == 1)
    if pair is not None:
        _lifelines(svg, section_top, y)
    _sub(svg, "line", x1=AXIS_X, y1=axis_top, x2=AXIS_X, y2=y, class_="axis")
    _sub(svg, "text", "time", x=AXIS_X - 8, y=axis_top + 4, text_anchor="end", class_="time")
    if not steps:
        _sub(svg, "text", "no IKE messages", x=WIDTH / 2, y=y + 20, text_anchor="middle")
        y += 30
    y = _legend(svg, y + 16)
    height = int(y + 10)
    background.set("height", str(height))
    svg.set("width", str(WIDTH))
    svg.set("height", str(height))
    svg.set("viewBox", f"0 0 {WIDTH} {height}")
    return svg


def _lifelines(svg: ET.Element, top: float, bottom: float) -> None:
    """Drawn after the rows, so the exchanges' shading does not hide them."""
    for x in (LEFT_X, RIGHT_X):
        _sub(svg, "line", x1=x, y1=top, x2=x, y2=bottom, class_="life")


def render_svg(steps: list[Step], title: str = "") -> str:
    """A standalone SVG document."""
    svg = build_svg(steps, title)
    ET.indent(svg)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(svg, encoding="unicode") + "\n"


# ---------------------------------------------------------------------------
# HTML

_CSS = """
body { font-family: 'DejaVu Sans', Arial, sans-serif; margin: 1.5em; color: #111; }
h1 { font-size: 1.3em; }
.diagram { overflow-x: auto; border: 1px solid #ddd; padding: 0.5em; background: #fff; }
.messages details { margin: 0.15em 0 0.15em 1.2em; }
.messages > details { margin: 0.6em 0; border-left: 4px solid var(--c); padding-left: 0.6em; }
summary { cursor: pointer; font-family: 'DejaVu Sans Mono', monospace; font-size: 0.9em; }
.leaf { margin-left: 2.4em; font-family: 'DejaVu Sans Mono', monospace; font-size: 0.9em; }
.note { color: #555; font-size: 0.9em; }
.messages > details:target { background: #fff6d5; }
"""

_SCRIPT = """
document.querySelectorAll('button[data-open]').forEach(function (b) {
  b.addEventListener('click', function () {
    var open = b.getAttribute('data-open') === '1';
    document.querySelectorAll('.messages details').forEach(function (d) { d.open = open; });
  });
});
function openTarget() {  // an arrow's link opens that message's payloads
  var d = document.getElementById(location.hash.slice(1));
  if (d && d.tagName === 'DETAILS') { d.open = true; }
}
window.addEventListener('hashchange', openTarget);
openTarget();
document.body.setAttribute('data-ready', '1');  // the tests check the script ran
"""


def _tree(parent: ET.Element, lines: list[str], depth: int = 0) -> None:
    """Indented text (two spaces a level) as nested <details>, leaves as <div>. The
    message header and the SK payload start open: the payload list shows at once."""
    i = 0
    while i < len(lines):
        depth = len(lines[i]) - len(lines[i].lstrip(" "))
        j = i + 1
        while j < len(lines) and len(lines[j]) - len(lines[j].lstrip(" ")) > depth:
            j += 1
        if j > i + 1:
            summary = lines[i].strip()
            d = _sub(parent, "details")
            if depth == 0 or summary.startswith(("SK ", "SKF ")):
                d.set("open", "open")
            _sub(d, "summary", summary)
            _tree(d, lines[i + 1 : j], depth + 1)
        else:
            _sub(parent, "div", lines[i].strip(), class_="leaf")
        i = j


def render_html(steps: list[Step], title: str = "") -> str:
    """A page: the SVG (arrows link to their message) and every message's payload tree."""
    html = ET.Element("html", lang="en")
    head = _sub(html, "head")
    _sub(head, "meta", charset="utf-8")
    _sub(head, "title", f"IKEv2 ladder: {title}" if title else "IKEv2 ladder")
    _sub(head, "style", _CSS)
    body = _sub(html, "body")
    _sub(body, "h1", f"IKEv2 ladder: {title}" if title else "IKEv2 ladder")
    _sub(
        body,
        "p",
        "Initiator on the left, responder on the right, one arrow per message in the "
        "notation of RFC 7296 section 1.2. Click an arrow for its payloads.",
        class_="note",
    )
    diagram = _sub(body, "div", class_="diagram")
    diagram.append(build_svg(steps, title, link_prefix="m"))
    controls = _sub(body, "p")
    _sub(controls, "button", "expand all", type="button", data_open="1")
    _sub(controls, "button", "collapse all", type="button", data_open="0")
    messages = _sub(body, "div", class_="messages")
    for step in steps:
        d = _sub(messages, "details", id=f"m{step.number}", style=f"--c: {_colour(step)}")
        when = f"  {_time_label(step)}" if step.time is not None else ""
        _sub(d, "summary", f"#{step.number}{when}  {step.arrow}  {step.title}: {step.notation}")
        if step.src:
            _sub(d, "div", f"{step.src} \u2192 {step.dst}, {step.size} bytes", class_="leaf")
        _tree(d, step.tree.splitlines())
    _sub(body, "script", _SCRIPT)
    ET.indent(html)
    return "<!DOCTYPE html>\n" + ET.tostring(html, encoding="unicode", method="html") + "\n"
