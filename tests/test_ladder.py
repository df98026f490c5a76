"""``pyike decode --ladder/--svg/--html`` on stored real captures (tests/data/charon-sample).

The expected ladders are written from RFC 7296 section 1.2 (and 1.4 for the
INFORMATIONAL DELETE), not from pyike's output: the RFC's part of each message
(``HDR, SAi1, KEi, Ni``, ``[IDr,]``, ``SAi2``, ...) with the notifies charon adds,
spelled ``N(TYPE)`` as the RFC spells them, in the order charon sends them
(/work/shared/notes/interop-facts.md lists them).

The SVG and HTML are opened in a real headless Chromium: the screenshot must show
the drawing (non-white pixels, the exchange colours), the HTML page's script must run.
"""

from __future__ import annotations

import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
import zlib
from dataclasses import replace
from pathlib import Path

import pytest

from pyike import decode, keylog, ladder, ladder_svg, pcap, wire
from pyike.registry import ExchangeType, HeaderFlag, PayloadType
from tests.netns import require_binary
from tests.test_decode import SAMPLES, SUITES, charon_keys

REPO = Path(__file__).resolve().parent.parent

# --- expected notation, from RFC 7296 ---------------------------------------------------

# Section 1.2, IKE_SA_INIT, then the notifies charon sends (2.23 NAT detection, RFC 7383
# fragmentation, RFC 7427 hash algorithms, RFC 5685 redirect, RFC 6023, RFC 4739).
NAT_D = "N(NAT_DETECTION_SOURCE_IP), N(NAT_DETECTION_DESTINATION_IP)"
RFC_INIT_REQ = "HDR, SAi1, KEi, Ni"
RFC_INIT_RESP = "HDR, SAr1, KEr, Nr"
# 1.2, IKE_AUTH: "HDR, SK {IDi, [CERT,] [CERTREQ,] [IDr,] AUTH, SAi2, TSi, TSr}" with
# charon's N(INITIAL_CONTACT) after IDi; no CERT/CERTREQ (raw public keys).
AUTH_REQ_TAIL = (
    "N(MOBIKE_SUPPORTED), N(ADDITIONAL_IP6_ADDRESS), N(MULTIPLE_AUTH_SUPPORTED), "
    "N(EAP_ONLY_AUTHENTICATION), N(IKEV2_MESSAGE_ID_SYNC_SUPPORTED)"
)


REKEY_SAMPLE = Path(__file__).parent / "data" / "pyike-charon-rekey"
R = " " * 32 + "<--  "
# The pyike <-> charon run of tests/test_ladder_netns.py (Child SA and IKE SA rekeys, DELETEs),
# stored in REKEY_SAMPLE: RFC 7296 1.2 + the notifies pyike and charon send.
EXPECTED = [
    "HDR, SAi1, KEi, Ni, N(NAT_DETECTION_SOURCE_IP), N(NAT_DETECTION_DESTINATION_IP), "
    "N(SIGNATURE_HASH_ALGORITHMS)  -->",
    R + "HDR, SAr1, KEr, Nr, N(NAT_DETECTION_SOURCE_IP), N(NAT_DETECTION_DESTINATION_IP), "
    "N(SIGNATURE_HASH_ALGORITHMS), N(CHILDLESS_IKEV2_SUPPORTED), N(MULTIPLE_AUTH_SUPPORTED)",
    # 1.2: HDR, SK {IDi, [CERT,] [CERTREQ,] [IDr,] AUTH, SAi2, TSi, TSr}
    "HDR, SK {IDi, N(INITIAL_CONTACT), [IDr,] AUTH, SAi2, TSi, TSr}  -->",
    # 1.2: HDR, SK {IDr, [CERT,] AUTH, SAr2, TSi, TSr}
    R + "HDR, SK {IDr, AUTH, SAr2, TSi, TSr}",
    # 1.3.3: HDR, SK {N(REKEY_SA), SA, Ni, [KEi,] TSi, TSr}
    "HDR, SK {N(REKEY_SA), SA, Ni, TSi, TSr}  -->",
    R + "HDR, SK {SA, Nr, TSi, TSr}",
    # 1.4.1: the old Child SA's DELETE, answered by the other direction's.
    "HDR, SK {D}  -->",
    R + "HDR, SK {D}",
    # 1.3.2: HDR, SK {SA, Ni, KEi}
    "HDR, SK {SA, Ni, KEi}  -->",
    R + "HDR, SK {SA, Nr, KEr}",
    # 1.4.1: deleting an IKE SA; the answer is empty. First the old one, then at
    # SIGTERM the new one.
    "HDR, SK {D}  -->",
    R + "HDR, SK {}",
    "HDR, SK {D}  -->",
    R + "HDR, SK {}",
]
EXCHANGES = [
    ("IKE_SA_INIT", 0, ""),
    ("IKE_AUTH", 1, ""),
    ("CREATE_CHILD_SA", 2, ": rekey Child SA"),
    ("INFORMATIONAL", 3, ": delete Child SA"),
    ("CREATE_CHILD_SA", 4, ": rekey IKE SA"),
    ("INFORMATIONAL", 5, ": delete IKE SA"),  # on the old IKE SA
    ("INFORMATIONAL", 0, ": delete IKE SA"),  # the new SA's message IDs restart at 0 (2.18)
]


def expected_ladder(case: str, decrypted: bool) -> list[str]:
    """The six messages of a charon-sample capture, arrows as in RFC 7296 1.2."""
    sha = ", N(SIGNATURE_HASH_ALGORITHMS)" if case == "aesgcm" else ""
    init_req = (
        f"{RFC_INIT_REQ}, {NAT_D}, N(IKEV2_FRAGMENTATION_SUPPORTED){sha}, N(REDIRECT_SUPPORTED)"
    )
    init_resp = (
        f"{RFC_INIT_RESP}, {NAT_D}, N(IKEV2_FRAGMENTATION_SUPPORTED){sha}, "
        "N(CHILDLESS_IKEV2_SUPPORTED), N(MULTIPLE_AUTH_SUPPORTED)"
    )
    if decrypted:
        auth_req = (
            f"HDR, SK {{IDi, N(INITIAL_CONTACT), [IDr,] AUTH, SAi2, TSi, TSr, {AUTH_REQ_TAIL}}}"
        )
        # 1.2: "HDR, SK {IDr, [CERT,] AUTH, SAr2, TSi, TSr}"
        auth_resp = (
            "HDR, SK {IDr, AUTH, SAr2, TSi, TSr, N(MOBIKE_SUPPORTED), N(ADDITIONAL_IP6_ADDRESS)}"
        )
        # 1.4: "HDR, SK {[N,] [D,] [CP,] ...}", answered by an empty SK (1.4.1).
        delete_req, delete_resp = "HDR, SK {D}", "HDR, SK {}"
    else:
        auth_req = auth_resp = delete_req = delete_resp = "HDR, SK {encrypted}"
    return [
        f"{init_req}  -->",
        f"{' ' * 32}<--  {init_resp}",
        f"{auth_req}  -->",
        f"{' ' * 32}<--  {auth_resp}",
        f"{delete_req}  -->",
        f"{' ' * 32}<--  {delete_resp}",
    ]


def run_decode(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pyike", "decode", *args],
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
        cwd=str(REPO),
    )


def write_keylog(case: str, directory: Path) -> Path:
    k = charon_keys(case)
    encr, bits, integ = SUITES[case]
    record = keylog.IkeKeyRecord(
        k["spi_i"], k["spi_r"], encr, bits, integ, k["sk_ei"], k["sk_er"], k["sk_ai"], k["sk_ar"]
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / keylog.IKE_TABLE_NAME).write_text(keylog.format_ike_record(record) + "\n")
    return directory


def arrow_lines(out: str) -> list[str]:
    """The notation lines (with their arrows) of `--ladder --width 0` output."""
    return [line for line in out.splitlines() if line.endswith("  -->") or "<--  " in line]


def headings(out: str) -> list[str]:
    return [line.strip() for line in out.splitlines() if line.strip().startswith("#")]


# --- the text ladder --------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(SUITES))
@pytest.mark.parametrize("decrypted", [True, False], ids=["keylog", "no-keys"])
def test_ladder_matches_rfc_notation(case: str, decrypted: bool, tmp_path: Path) -> None:
    args = ["--ladder", "--width", "0", str(SAMPLES / case / "ike.pcap")]
    if decrypted:
        args += ["--keylog", str(write_keylog(case, tmp_path / "kl"))]
    r = run_decode(*args)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert arrow_lines(r.stdout) == expected_ladder(case, decrypted), r.stdout
    lines = r.stdout.splitlines()
    # RFC 7296 1.2's heading: initiator on the left, responder on the right.
    assert lines[0].split() == ["Initiator", "192.0.2.1", "Responder", "192.0.2.2"]
    heads = headings(r.stdout)
    assert [h.split("  ", 2)[2] for h in heads] == [
        "IKE_SA_INIT request, message ID 0",
        "IKE_SA_INIT response, message ID 0",
        "IKE_AUTH request, message ID 1",
        "IKE_AUTH response, message ID 1",
        "INFORMATIONAL request, message ID 2" + (": delete IKE SA" if decrypted else ""),
        "INFORMATIONAL response, message ID 2" + (": delete IKE SA" if decrypted else ""),
    ]
    # Time offsets from the first message, increasing.
    times = [float(h.split()[1].lstrip("+").rstrip("s")) for h in heads]
    assert times[0] == 0.0 and times == sorted(times) and times[-1] < 1.0


def test_ladder_wraps_like_the_rfc(tmp_path: Path) -> None:
    """Wrapped at 80 columns the lines still read back to the same notation, with
    RFC 1.2's indentation: initiator continuations by 4, responder ones under its text."""
    kl = write_keylog("aesgcm", tmp_path / "kl")
    r = run_decode(
        "--ladder", "--width", "80", str(SAMPLES / "aesgcm" / "ike.pcap"), "--keylog", str(kl)
    )
    assert r.returncode == 0, r.stderr
    assert max(len(line) for line in r.stdout.splitlines()) <= 80
    blocks = r.stdout.split("\n\n")[1:]
    joined = []
    for block in blocks:
        lines = block.splitlines()[1:]
        if lines[0].startswith(" " * 32 + "<--  "):
            assert all(line.startswith(" " * 41) for line in lines[1:]), block
        else:
            assert all(line.startswith("    ") for line in lines[1:]), block
        joined.append(" ".join(" ".join(lines).split()))
    expected = [" ".join(line.split()) for line in expected_ladder("aesgcm", True)]
    assert joined == expected


def test_retransmission_is_marked(tmp_path: Path) -> None:
    """A datagram seen again (RFC 7296 2.1: a retransmission is the same bytes) is
    marked as a retransmission of the first one, and keeps its direction."""
    grams = list(pcap.read_capture(SAMPLES / "aesgcm" / "ike.pcap"))
    auth = grams[2]
    again = replace(auth, timestamp=auth.timestamp + 2.0)
    path = tmp_path / "retransmit.pcap"
    pcap.write_pcap(path, [*grams[:3], again, *grams[3:4]])
    r = run_decode("--ladder", "--width", "0", str(path))
    assert r.returncode == 0, r.stderr
    heads = headings(r.stdout)
    assert heads[3].endswith("IKE_AUTH request, message ID 1 (retransmission of #3)"), heads
    assert "retransmission" not in " ".join(heads[:3] + heads[4:])
    assert arrow_lines(r.stdout)[3] == "HDR, SK {encrypted}  -->"
    svg = ET.fromstring(ladder_svg.render_svg(ladder_svg.steps_of(decode.decode_capture(path))))
    lines = svg.findall(f".//{{{ladder_svg.SVG_NS}}}g/{{{ladder_svg.SVG_NS}}}line")
    dashed = [line for line in lines if line.get("stroke-dasharray")]
    assert len(lines) == 5 and len(dashed) == 1


def _fragments(case: str, parts: int) -> list[bytes]:
    """The sample's IKE_AUTH request re-sent as RFC 7383 fragments (SKF), sealed with
    charon's own keys: each fragment encrypted on its own, the first naming IDi."""
    k = charon_keys(case)
    encr, bits, integ = SUITES[case]
    record = keylog.IkeKeyRecord(
        k["spi_i"], k["spi_r"], encr, bits, integ, k["sk_ei"], k["sk_er"], k["sk_ai"], k["sk_ar"]
    )
    ((cipher_i, _),) = decode.ike_ciphers([record]).values()
    data = [pcap.ike_payload(d) for d in pcap.read_capture(SAMPLES / case / "ike.pcap")][2]
    assert data is not None
    msg = wire.parse_message(data)
    sk = msg.payloads[-1]
    assert isinstance(sk, wire.SkPayload)
    plain = cipher_i.open(data[: len(data) - len(sk.data)], sk.data)
    size = -(-len(plain) // parts)
    out = []
    for number in range(1, parts + 1):
        chunk = plain[(number - 1) * size : number * size]
        first = sk.first_inner if number == 1 else PayloadType.NONE
        body_len = 4 + cipher_i.sealed_length(len(chunk))
        header = wire.Header(
            msg.spi_i, msg.spi_r, PayloadType.SKF, ExchangeType.IKE_AUTH,
            HeaderFlag.INITIATOR, msg.message_id, length=28 + 4 + body_len,
        ).pack()  # fmt: skip
        aad = header + wire.payload_header(first, 4 + body_len) + struct.pack("!HH", number, parts)
        out.append(aad + cipher_i.seal(aad, chunk))
    return out


def test_fragments_are_marked_and_reassembled(tmp_path: Path) -> None:
    frags = _fragments("aesgcm", 3)
    hexfile = tmp_path / "frags.hex"
    hexfile.write_text("\n".join(f.hex() for f in frags) + "\n")
    kl = write_keylog("aesgcm", tmp_path / "kl")
    r = run_decode("--ladder", "--width", "0", "--hex", str(hexfile), "--keylog", str(kl))
    assert r.returncode == 0, r.stderr
    heads = headings(r.stdout)
    assert heads == [
        "#1  IKE_AUTH request, message ID 1 (fragment 1/3)",
        "#2  IKE_AUTH request, message ID 1 (fragment 2/3)",
        "#3  IKE_AUTH request, message ID 1 (fragment 3/3; reassembled: #1, #2, #3)",
    ]
    assert arrow_lines(r.stdout) == [
        "HDR, SKF {fragment 1/3}  -->",
        "HDR, SKF {fragment 2/3}  -->",
        f"HDR, SKF {{IDi, N(INITIAL_CONTACT), [IDr,] AUTH, SAi2, TSi, TSr, {AUTH_REQ_TAIL}}}  -->",
    ]
    plain = run_decode("--ladder", "--hex", str(hexfile))
    assert arrow_lines(plain.stdout) == ["HDR, SKF {encrypted}  -->"] * 3


def test_render_message_for_a_monitor() -> None:
    """The one-message entry point a live monitor calls: bytes (with or without keys)
    or a parsed Message with its decrypted payloads, a direction, a time."""
    k = charon_keys("aesgcm")
    encr, bits, integ = SUITES["aesgcm"]
    record = keylog.IkeKeyRecord(
        k["spi_i"], k["spi_r"], encr, bits, integ, k["sk_ei"], k["sk_er"], k["sk_ai"], k["sk_ar"]
    )
    keys = decode.ike_ciphers([record])
    datagrams = [pcap.ike_payload(d) for d in pcap.read_capture(SAMPLES / "aesgcm" / "ike.pcap")]
    first, auth_resp = datagrams[0], datagrams[3]
    assert first is not None and auth_resp is not None
    text = ladder.render_message(first, "-->", 0.0, width=0)
    assert text.splitlines() == [
        "+0.000s  IKE_SA_INIT request, message ID 0",
        expected_ladder("aesgcm", False)[0],
    ]
    text = ladder.render_message(auth_resp, "<--", 12.5, keys=keys, number=7, width=0)
    assert text.splitlines() == [
        " " * 37 + "#7  +12.500s  IKE_AUTH response, message ID 1",
        expected_ladder("aesgcm", True)[3],
    ]
    # A daemon has the parsed message and its plaintext payloads already.
    item = decode.decode_message(auth_resp, "x", keys)
    assert item.message is not None and item.inner is not None
    text = ladder.render_message(item.message, "<--", inner=item.inner, width=0)
    assert text.splitlines()[1] == expected_ladder("aesgcm", True)[3]
    assert ladder.render_message(auth_resp, "<--", width=0).endswith("<--  HDR, SK {encrypted}")
    assert "not an IKE message" in ladder.render_message(b"\x01\x02", "-->")
    with pytest.raises(ValueError, match="direction"):
        ladder.render_message(first, "->")


# --- bad input ----------------------------------------------------------------------------


def test_truncated_capture_gives_what_it_can(tmp_path: Path) -> None:
    raw = (SAMPLES / "aesgcm" / "ike.pcap").read_bytes()
    grams = list(pcap.read_capture(SAMPLES / "aesgcm" / "ike.pcap"))
    whole = tmp_path / "whole.pcap"
    pcap.write_pcap(whole, grams)
    data = whole.read_bytes()
    # Cut in the middle of the fourth packet: 24-byte file header, 16-byte records.
    offset = 24
    for d in grams[:3]:
        offset += 16 + len(pcap.build_ip_udp(d))
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: offset + 16 + 30])
    for mode in (["--ladder"], [], ["--svg", str(tmp_path / "cut.svg")]):
        r = run_decode(*mode, str(cut))
        assert r.returncode == 0, r.stderr
        assert "capture ends in the middle of a packet" in r.stderr
        assert "Traceback" not in r.stderr
        if mode == ["--ladder"]:
            assert len(headings(r.stdout)) == 3
    assert (
        len(ET.parse(tmp_path / "cut.svg").getroot().findall(f".//{{{ladder_svg.SVG_NS}}}g")) == 3
    )
    # Cut inside the file header: one clear line, nothing else.
    head = tmp_path / "head.pcap"
    head.write_bytes(raw[:10])
    r = run_decode("--ladder", str(head))
    assert r.returncode == 1 and r.stderr.startswith("pyike decode: ") and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1


def test_non_ike_capture(tmp_path: Path) -> None:
    """DNS only: nothing to draw, said in one line. Garbage on port 500 is drawn as
    what it is, between messages that do decode."""
    from ipaddress import ip_address

    dns = pcap.Datagram(1.0, ip_address("192.0.2.1"), 5353, ip_address("192.0.2.2"), 53, b"x" * 40)
    path = tmp_path / "dns.pcap"
    pcap.write_pcap(path, [dns])
    for mode in (["--ladder"], ["--svg", str(tmp_path / "x.svg")], []):
        r = run_decode(*mode, str(path))
        assert r.returncode == 1 and r.stderr == "pyike decode: no IKE messages found\n", r
    grams = list(pcap.read_capture(SAMPLES / "aesgcm" / "ike.pcap"))
    junk = replace(grams[0], payload=b"\x00garbage, not IKE", timestamp=grams[0].timestamp + 0.001)
    mixed = tmp_path / "mixed.pcap"
    pcap.write_pcap(mixed, [grams[0], junk, grams[1]])
    r = run_decode("--ladder", "--width", "0", str(mixed), "--html", str(tmp_path / "m.html"))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    heads = headings(r.stdout)
    assert heads[1].endswith("not an IKE message") and len(heads) == 3
    assert "17 bytes, not an IKE message" in r.stdout
    assert arrow_lines(r.stdout)[2].endswith(
        "<--  " + expected_ladder("aesgcm", False)[1].split("<--  ")[1]
    )


@pytest.mark.parametrize("mode", [["--ladder"], []], ids=["ladder", "tree"])
def test_pipe_into_head_is_quiet(mode: list[str], tmp_path: Path) -> None:
    """`pyike decode FILE | head -1`: no BrokenPipeError. The capture is big enough
    (about a megabyte of output) that the pipe fills and breaks mid-way."""
    grams = list(pcap.read_capture(SAMPLES / "aesgcm" / "ike.pcap"))
    big = tmp_path / "big.pcap"
    pcap.write_pcap(big, [replace(d, timestamp=d.timestamp + i) for i in range(400) for d in grams])
    cmd = " ".join([sys.executable, "-m", "pyike", "decode", *mode, str(big)])
    r = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {cmd} | head -1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(REPO),
    )
    assert len(r.stdout.splitlines()) == 1
    assert r.stderr == "", r.stderr
    assert r.returncode == 141  # like a C tool killed by SIGPIPE


# --- SVG and HTML, in a real browser -------------------------------------------------------


def png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB/RGBA PNG (what Chromium writes): width, height, rows of
    pixels (bytes per pixel 3 or 4). Undoes the five PNG row filters."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    width = height = bpp = 0
    while pos < len(data):
        (length,) = struct.unpack_from("!I", data, pos)
        ctype = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if ctype == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack("!IIBBBBB", body)
            assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
            bpp = 3 if colour == 2 else 4
        elif ctype == b"IDAT":
            idat += body
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, [bytes(r) for r in rows]


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    exe = require_binary("chromium", "chromium")
    profile = tmp_path / "chromium-profile"
    return subprocess.run(
        [
            exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def _sample_drawings(tmp_path: Path) -> tuple[Path, Path]:
    kl = write_keylog("aesgcm", tmp_path / "kl")
    svg, html = tmp_path / "ladder.svg", tmp_path / "ladder.html"
    r = run_decode(
        str(SAMPLES / "aesgcm" / "ike.pcap"),
        "--keylog",
        str(kl),
        "--svg",
        str(svg),
        "--html",
        str(html),
    )
    assert r.returncode == 0 and r.stdout == "", (r.stdout, r.stderr)
    return svg, html


def test_svg_structure(tmp_path: Path) -> None:
    svg_path, _ = _sample_drawings(tmp_path)
    root = ET.parse(svg_path).getroot()
    ns = {"s": ladder_svg.SVG_NS}
    assert root.tag == f"{{{ladder_svg.SVG_NS}}}svg"
    groups = root.findall(".//s:g[@class='msg']", ns)
    assert len(groups) == 6  # one arrow per message
    lifelines = root.findall("s:line[@class='life']", ns)
    assert sorted({line.get("x1") for line in lifelines}) == sorted(
        {str(ladder_svg.LEFT_X), str(ladder_svg.RIGHT_X)}
    )
    expected = expected_ladder("aesgcm", True)
    for g, notation in zip(groups, expected, strict=True):
        (arrow,) = g.findall("s:line", ns)
        rightward = float(arrow.get("x2", 0)) > float(arrow.get("x1", 0))
        assert rightward == notation.endswith("-->")
        label = " ".join(
            "".join(span.itertext()).strip()
            for span in g.findall("s:text[@class='mono']/s:tspan", ns)
        )
        assert label == notation.replace("-->", "").replace("<--", "").strip()
        # The tooltip: the whole payload tree, decrypted payloads included.
        title = g.find("s:title", ns)
        assert title is not None and title.text is not None
        assert "spi_i=0x" in title.text
    auth_title = groups[2].find("s:title", ns)
    assert auth_title is not None and auth_title.text is not None
    assert 'IDi ID_FQDN "carinho.lan"' in auth_title.text and "ENCR AES_GCM_16" in auth_title.text
    times = [t.text for t in root.findall("s:text[@class='time mono']", ns)]
    assert len(times) == 6 and times[0] == "+0.000 s"


def test_svg_renders_in_chromium(tmp_path: Path) -> None:
    svg_path, _ = _sample_drawings(tmp_path)
    shot = tmp_path / "ladder.png"
    height = int(ET.parse(svg_path).getroot().get("height", "0"))
    r = chromium(
        tmp_path,
        f"--screenshot={shot}",
        f"--window-size={ladder_svg.WIDTH},{height}",
        svg_path.as_uri(),
    )
    assert shot.exists(), r.stderr[-2000:]
    width, h, rows = png_pixels(shot)
    assert (width, h) == (ladder_svg.WIDTH, height)
    bpp = len(rows[0]) // width
    ink = coloured = 0
    init_blue = bytes.fromhex(ladder_svg.COLOURS["IKE_SA_INIT"][1:])
    auth_green = bytes.fromhex(ladder_svg.COLOURS["IKE_AUTH"][1:])
    seen = set()
    for row in rows:
        for x in range(0, len(row), bpp):
            px = row[x : x + 3]
            if px != b"\xff\xff\xff":
                ink += 1
            for colour in (init_blue, auth_green):
                if all(abs(px[i] - colour[i]) < 24 for i in range(3)):
                    coloured += 1
                    seen.add(colour)
    assert ink > 0.02 * width * h, f"only {ink} non-white pixels: blank?"
    assert seen == {init_blue, auth_green} and coloured > 1000, (seen, coloured)


def test_html_opens_without_errors(tmp_path: Path) -> None:
    _, html = _sample_drawings(tmp_path)
    r = chromium(tmp_path, "--enable-logging=stderr", "--v=0", "--dump-dom", html.as_uri())
    assert r.returncode == 0, r.stderr[-2000:]
    dom = r.stdout
    assert 'data-ready="1"' in dom, "the page's script did not run to its end"
    assert "Uncaught" not in r.stderr and "CONSOLE" not in r.stderr, r.stderr[-2000:]
    for n in range(1, 7):
        assert f'<details id="m{n}"' in dom and f'href="#m{n}"' in dom
    assert "<svg" in dom and 'IDi ID_FQDN "carinho.lan"' in dom.replace("&quot;", '"')
    assert not re.search(r'<details id="m3"[^>]*open', dom)
    # Following an arrow's link (#m3) opens that message's payload tree.
    r = chromium(tmp_path, "--dump-dom", html.as_uri() + "#m3")
    assert re.search(r'<details id="m3"[^>]*open', r.stdout), r.stdout[:2000]


@pytest.mark.parametrize("decrypted", [True, False], ids=["keylog", "no-keys"])
def test_stored_rekey_capture(decrypted: bool) -> None:
    """pyike <-> charon with a Child SA rekey, an IKE SA rekey and three DELETEs: every
    message in RFC 7296 notation (1.2, 1.3.2, 1.3.3, 1.4), with its exchange's purpose."""
    args = ["--ladder", "--width", "0", str(REKEY_SAMPLE / "ike.pcap")]
    if decrypted:
        args += ["--keylog", str(REKEY_SAMPLE / keylog.IKE_TABLE_NAME)]
    r = run_decode(*args)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    if decrypted:
        assert arrow_lines(r.stdout) == EXPECTED, r.stdout
    else:
        assert (
            arrow_lines(r.stdout)
            == EXPECTED[:2]
            + [
                "HDR, SK {encrypted}  -->",
                R + "HDR, SK {encrypted}",
            ]
            * 6
        )
    heads = [h.split("  ", 2)[2] for h in headings(r.stdout)]
    expected = []
    for exchange, mid, what in EXCHANGES:
        for kind in ("request", "response"):
            expected.append(f"{exchange} {kind}, message ID {mid}{what if decrypted else ''}")
    assert heads == expected, r.stdout


def test_two_host_pairs_get_their_own_lifelines(tmp_path: Path) -> None:
    """A capture with two tunnels (other hosts, started by the other side): each pair
    of hosts gets its own heading, initiator on the left as its first message says."""
    from ipaddress import ip_address

    grams = list(pcap.read_capture(SAMPLES / "aesgcm" / "ike.pcap"))
    # The second tunnel: 198.51.100.2 initiates to 198.51.100.1 (addresses swapped).
    a, b = ip_address("198.51.100.1"), ip_address("198.51.100.2")
    other = [
        replace(
            d, src=b if str(d.src) == "192.0.2.1" else a, dst=b if str(d.dst) == "192.0.2.1" else a
        )
        for d in grams[:2]
    ]
    path = tmp_path / "two.pcap"
    pcap.write_pcap(path, [grams[0], other[0], other[1], grams[1]])
    r = run_decode("--ladder", "--width", "0", str(path), "--svg", str(tmp_path / "two.svg"))
    assert r.returncode == 0, r.stderr
    headers = [line.split() for line in r.stdout.splitlines() if line.startswith("Initiator")]
    assert headers == [
        ["Initiator", "192.0.2.1", "Responder", "192.0.2.2"],
        ["Initiator", "198.51.100.2", "Responder", "198.51.100.1"],
        ["Initiator", "192.0.2.1", "Responder", "192.0.2.2"],
    ]
    assert [line.endswith("-->") for line in arrow_lines(r.stdout)] == [True, True, False, False]
    assert "retransmission" not in r.stdout  # the same bytes, but between other hosts
    root = ET.parse(tmp_path / "two.svg").getroot()
    heads = [
        t.text for t in root.iter(f"{{{ladder_svg.SVG_NS}}}text") if t.get("class") == "addr mono"
    ]
    # One pair of header boxes per section: the first tunnel, the second, the first again.
    assert heads == [
        "192.0.2.1",
        "192.0.2.2",
        "198.51.100.2",
        "198.51.100.1",
        "192.0.2.1",
        "192.0.2.2",
    ]
