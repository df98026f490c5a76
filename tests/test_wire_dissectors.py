"""Cross-checks of pyike.wire against two independent IKEv2 dissectors.

pyike builds representative messages; (a) scapy's contrib IKEv2 layer and
(b) Wireshark's dissector (through tshark, from a pcap) decode the bytes, and
every field they report must equal what pyike put in.

Limits of scapy.contrib.ikev2 (scapy 2.8), worked around here:
- Transform attributes: it decodes only one 4-byte TV attribute per transform,
  as "key_length"; so the messages use no other attributes.
- CERT with encoding 4 is parsed as an X.509 packet: we compare its bytes and
  therefore send a real DER certificate.
- Notify REDIRECT / REDIRECTED_FROM get special parsing: not used here.
- EAP is not dissected (raw ``load`` only); SK is raw ``load``.
Wireshark likewise tries to decode CERT data as X.509 (it flags iked's private
encoding 201 with a BER warning), so the CERT here is a real certificate.
"""

from __future__ import annotations

import datetime
import random
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from functools import cache
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from asn1crypto import algos
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pyike.registry import (
    AuthMethod,
    CertEncoding,
    CfgAttr,
    CfgType,
    DhId,
    EncrId,
    EsnId,
    ExchangeType,
    IdType,
    IntegId,
    IpProto,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformType,
    TsType,
)
from pyike.wire import (
    AuthPayload,
    CertPayload,
    CertReqPayload,
    CpPayload,
    DeletePayload,
    EapPayload,
    IdPayload,
    KePayload,
    Message,
    NoncePayload,
    NotifyPayload,
    Payload,
    Proposal,
    SaPayload,
    SkfPayload,
    SkPayload,
    TrafficSelector,
    Transform,
    TsPayload,
    VendorPayload,
    build_message,
    parse_message,
)

# ---------------------------------------------------------------------------
# Representative messages (random bytes from a fixed seed; documentation IPs)


def _random(seed: int) -> random.Random:
    return random.Random(seed)


@cache
def _certificate_and_auth() -> tuple[bytes, bytes]:
    """A real self-signed P-384 certificate and an RFC 7427 method-14 AUTH blob."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "home.example.org")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7296)
        .not_valid_before(datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(datetime.datetime(2034, 1, 1, tzinfo=datetime.UTC))
        .sign(key, hashes.SHA384())
    )
    # RFC 7427 3: ASN.1 length octet, AlgorithmIdentifier, DER signature.
    algorithm = algos.SignedDigestAlgorithm({"algorithm": "sha384_ecdsa"}).dump()
    signature = key.sign(b"signed octets", ec.ECDSA(hashes.SHA384()))
    return cert.public_bytes(serialization.Encoding.DER), bytes(
        [len(algorithm)]
    ) + algorithm + signature


@cache
def messages() -> SimpleNamespace:
    rng = _random(7296)
    spi_i, spi_r = rng.randbytes(8), rng.randbytes(8)
    cert, auth = _certificate_and_auth()
    sa_init = Message(
        spi_i,
        bytes(8),
        ExchangeType.IKE_SA_INIT,
        0x08,
        0,
        [
            SaPayload(
                [
                    Proposal(
                        1,
                        ProtocolId.IKE,
                        b"",
                        [
                            Transform(TransformType.ENCR, EncrId.AES_GCM_16, 256),
                            Transform(TransformType.ENCR, EncrId.AES_GCM_16, 128),
                            Transform(TransformType.PRF, PrfId.HMAC_SHA2_384),
                            Transform(TransformType.PRF, PrfId.HMAC_SHA2_256),
                            Transform(TransformType.DH, DhId.CURVE25519),
                            Transform(TransformType.DH, DhId.ECP_384),
                        ],
                    ),
                    Proposal(
                        2,
                        ProtocolId.IKE,
                        b"",
                        [
                            Transform(TransformType.ENCR, EncrId.AES_CBC, 256),
                            Transform(TransformType.INTEG, IntegId.HMAC_SHA2_384_192),
                            Transform(TransformType.PRF, PrfId.HMAC_SHA2_384),
                            Transform(TransformType.DH, DhId.CURVE25519),
                        ],
                    ),
                ]
            ),
            KePayload(DhId.CURVE25519, rng.randbytes(32)),
            NoncePayload(rng.randbytes(32)),
            NotifyPayload(0, b"", NotifyType.NAT_DETECTION_SOURCE_IP, rng.randbytes(20)),
            NotifyPayload(0, b"", NotifyType.NAT_DETECTION_DESTINATION_IP, rng.randbytes(20)),
            NotifyPayload(0, b"", NotifyType.IKEV2_FRAGMENTATION_SUPPORTED),
            NotifyPayload(
                0, b"", NotifyType.SIGNATURE_HASH_ALGORITHMS, bytes.fromhex("000200030004")
            ),
        ],
    )
    # IKE_AUTH-shaped but unencrypted, so both dissectors see every payload kind.
    ike_auth = Message(
        spi_i,
        spi_r,
        ExchangeType.IKE_AUTH,
        0x08,
        1,
        [
            IdPayload(PayloadType.IDi, IdType.ID_FQDN, b"home.example.org"),
            CertPayload(CertEncoding.X509_SIGNATURE, cert),
            CertReqPayload(CertEncoding.X509_SIGNATURE, rng.randbytes(20)),
            NotifyPayload(0, b"", NotifyType.INITIAL_CONTACT),
            IdPayload(PayloadType.IDr, IdType.ID_IPV4_ADDR, IPv4Address("198.51.100.1").packed),
            AuthPayload(AuthMethod.DIGITAL_SIGNATURE, auth),
            CpPayload(
                CfgType.CFG_REQUEST,
                [(CfgAttr.INTERNAL_IP4_ADDRESS, b""), (CfgAttr.INTERNAL_IP6_ADDRESS, b"")],
            ),
            SaPayload(
                [
                    Proposal(
                        1,
                        ProtocolId.ESP,
                        rng.randbytes(4),
                        [
                            Transform(TransformType.ENCR, EncrId.AES_CBC, 256),
                            Transform(TransformType.INTEG, IntegId.HMAC_SHA2_384_192),
                            Transform(TransformType.ESN, EsnId.NO_ESN),
                        ],
                    )
                ]
            ),
            TsPayload(
                PayloadType.TSi,
                [
                    TrafficSelector(
                        TsType.TS_IPV4_ADDR_RANGE,
                        IpProto.ANY,
                        0,
                        65535,
                        IPv4Address("192.0.2.0"),
                        IPv4Address("192.0.2.255"),
                    ),
                    TrafficSelector(
                        TsType.TS_IPV6_ADDR_RANGE,
                        IpProto.TCP,
                        25,
                        25,
                        IPv6Address("2001:db8::1"),
                        IPv6Address("2001:db8::1"),
                    ),
                ],
            ),
            TsPayload(
                PayloadType.TSr,
                [
                    TrafficSelector(
                        TsType.TS_IPV4_ADDR_RANGE,
                        IpProto.UDP,
                        53,
                        53,
                        IPv4Address("203.0.113.5"),
                        IPv4Address("203.0.113.5"),
                    ),
                    TrafficSelector(
                        TsType.TS_IPV6_ADDR_RANGE,
                        IpProto.ANY,
                        0,
                        65535,
                        IPv6Address("2001:db8:1::"),
                        IPv6Address("2001:db8:1::ffff"),
                    ),
                ],
            ),
            NotifyPayload(ProtocolId.ESP, rng.randbytes(4), NotifyType.REKEY_SA),
            DeletePayload(ProtocolId.ESP, 4, [rng.randbytes(4), rng.randbytes(4)]),
            VendorPayload(b"OpenIKED-7.2"),
            # RFC 3748 4.1: Response, identifier 7, length 9, type 1 (Identity), "home".
            EapPayload(bytes([2, 7, 0, 9, 1]) + b"home"),
        ],
    )
    sk = Message(
        spi_i,
        spi_r,
        ExchangeType.IKE_AUTH,
        0x08,
        1,
        [SkPayload(PayloadType.IDi, rng.randbytes(240))],
    )
    skf = Message(
        spi_i,
        spi_r,
        ExchangeType.IKE_AUTH,
        0x08,
        1,
        [SkfPayload(PayloadType.IDi, 1, 2, rng.randbytes(200))],
    )
    return SimpleNamespace(sa_init=sa_init, ike_auth=ike_auth, sk=sk, skf=skf)


def test_messages_round_trip_in_pyike() -> None:
    """Sanity: the cross-checked messages are what pyike itself reads back."""
    for msg in vars(messages()).values():
        assert parse_message(build_message(msg)) == msg


# ---------------------------------------------------------------------------
# (a) scapy


@pytest.fixture(scope="module")
def scapy_ikev2() -> Any:
    scapy_main = pytest.importorskip("scapy.main")
    scapy_main.load_contrib("ikev2")
    from scapy.contrib import ikev2

    return ikev2


def _scapy_chain(ikev2: Any, packet: Any) -> list[Any]:
    """The top-level payload layers, checking nothing is left undissected."""
    layers = []
    layer = packet.payload
    while isinstance(layer, ikev2.IKEv2_Payload):
        layers.append(layer)
        layer = layer.payload
    assert not bytes(layer), "scapy left bytes undissected"
    return layers


def _scapy_linked(first: Any, cls: type) -> Iterator[Any]:
    """Proposals (and transforms) are chained as scapy payloads of each other."""
    layer = first
    while isinstance(layer, cls):
        yield layer
        layer = layer.payload


def _check_scapy_sa(ikev2: Any, ours: SaPayload, theirs: Any) -> None:
    proposals = list(_scapy_linked(theirs.prop, ikev2.IKEv2_Proposal))
    assert len(proposals) == len(ours.proposals)
    for prop, sprop in zip(ours.proposals, proposals, strict=True):
        assert (sprop.proposal, sprop.proto, sprop.SPI) == (prop.number, prop.protocol, prop.spi)
        assert sprop.trans_nb == len(prop.transforms)
        transforms = list(_scapy_linked(sprop.trans, ikev2.IKEv2_Transform))
        got = [
            (t.transform_type, t.transform_id, t.key_length if t.length > 8 else None)
            for t in transforms
        ]
        assert got == [(t.type, t.id, t.key_length) for t in prop.transforms]


def _check_scapy_payload(ikev2: Any, ours: Payload, theirs: Any) -> None:
    match ours:
        case SaPayload():
            _check_scapy_sa(ikev2, ours, theirs)
        case KePayload():
            assert (theirs.group, theirs.ke) == (ours.group, ours.data)
        case NoncePayload():
            assert theirs.nonce == ours.data
        case NotifyPayload():
            got = (theirs.proto, theirs.SPIsize, theirs.SPI, theirs.type, theirs.notify)
            assert got == (ours.protocol, len(ours.spi), ours.spi, ours.type, ours.data)
        case IdPayload():
            assert theirs.IDtype == ours.id_type
            scapy_id = theirs.getfieldval("ID")
            if ours.id_type == IdType.ID_IPV4_ADDR:
                assert scapy_id == str(IPv4Address(ours.data))  # scapy decodes the address
            else:
                assert scapy_id == ours.data
        case CertPayload():
            assert theirs.cert_encoding == ours.encoding
            assert bytes(theirs.cert_data) == ours.data
        case CertReqPayload():
            assert (theirs.cert_encoding, theirs.cert_authority) == (ours.encoding, ours.data)
        case AuthPayload():
            assert (theirs.auth_type, theirs.load) == (ours.method, ours.data)
        case CpPayload():
            assert theirs.CFGType == ours.cfg_type
            got = [(a.type, a.length, a.value) for a in theirs.attributes]
            assert got == [(t, len(v), v) for t, v in ours.attributes]
        case TsPayload():
            assert theirs.number_of_TSs == len(ours.selectors)
            for ts, sts in zip(ours.selectors, theirs.traffic_selector, strict=True):
                assert isinstance(ts, TrafficSelector)
                family = "v4" if ts.ts_type == TsType.TS_IPV4_ADDR_RANGE else "v6"
                got = (
                    sts.TS_type,
                    sts.IP_protocol_ID,
                    sts.start_port,
                    sts.end_port,
                    getattr(sts, f"starting_address_{family}"),
                    getattr(sts, f"ending_address_{family}"),
                )
                assert got == (
                    ts.ts_type,
                    ts.ip_proto,
                    ts.start_port,
                    ts.end_port,
                    str(ts.start_addr),
                    str(ts.end_addr),
                )
        case DeletePayload():
            got = (theirs.proto, theirs.SPIsize, theirs.SPInum, theirs.SPI)
            assert got == (ours.protocol, ours.spi_size, len(ours.spis), ours.spis)
        case VendorPayload():
            assert theirs.vendorID == ours.data
        case EapPayload():
            assert theirs.load == ours.data  # scapy does not dissect EAP inside IKEv2
        case SkPayload():
            assert (theirs.next_payload, theirs.load) == (ours.first_inner, ours.data)
        case SkfPayload():
            got = (theirs.next_payload, theirs.frag_number, theirs.frag_total, theirs.load)
            assert got == (ours.first_inner, ours.number, ours.total, ours.data)
        case _:
            raise AssertionError(f"no scapy comparison for {type(ours).__name__}")


@pytest.mark.parametrize("name", ["sa_init", "ike_auth", "sk", "skf"])
def test_scapy_decodes_what_pyike_builds(scapy_ikev2: Any, name: str) -> None:
    msg = getattr(messages(), name)
    data = build_message(msg)
    packet = scapy_ikev2.IKEv2(data)
    header = (
        packet.init_SPI,
        packet.resp_SPI,
        packet.exch_type,
        int(packet.flags),
        packet.id,
        packet.length,
    )
    assert header == (msg.spi_i, msg.spi_r, msg.exchange, msg.flags, msg.message_id, len(data))
    layers = _scapy_chain(scapy_ikev2, packet)
    # Payload types in order: the header's Next Payload, then each payload's.
    types = [packet.next_payload] + [layer.next_payload for layer in layers[:-1]]
    assert types == [p.ptype for p in msg.payloads]
    for ours, theirs in zip(msg.payloads, layers, strict=True):
        assert theirs.length == 4 + len(ours.body())
        _check_scapy_payload(scapy_ikev2, ours, theirs)


# ---------------------------------------------------------------------------
# (b) tshark

TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(
    TSHARK is None, reason="tshark (Wireshark CLI) is not installed; CI installs it"
)

LINKTYPE_RAW = 101  # the packet is a bare IPv4/IPv6 datagram
NON_ESP_MARKER = bytes(4)  # RFC 3948 2.2: IKE on port 4500 is prefixed by four zeros
# Wireshark expert severities (epan/proto.h): PI_WARN 0x00600000, PI_ERROR 0x00800000.
PI_WARN = 0x00600000


def _ipv4_checksum(header: bytes) -> int:
    """RFC 791 / RFC 1071: one's complement of the one's complement sum."""
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _udp_ipv4(payload: bytes, port: int) -> bytes:
    """192.0.2.1:port -> 198.51.100.1:port; UDP checksum 0 = none (RFC 768)."""
    udp = struct.pack("!HHHH", port, port, 8 + len(payload), 0) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,  # version 4, IHL 5
        0,
        20 + len(udp),
        1,  # identification
        0,  # flags, fragment offset
        64,  # TTL
        17,  # UDP
        0,  # checksum, filled in below
        IPv4Address("192.0.2.1").packed,
        IPv4Address("198.51.100.1").packed,
    )
    header = header[:10] + struct.pack("!H", _ipv4_checksum(header)) + header[12:]
    return header + udp


def _write_pcap(path: Path, packets: list[bytes]) -> None:
    """Classic libpcap format: global header, then a record header per packet."""
    with path.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_RAW))
        for second, packet in enumerate(packets):
            out.write(struct.pack("<IIII", second, 0, len(packet), len(packet)) + packet)


# (message name, UDP port): SA_INIT and the plain IKE_AUTH on 500, the
# encrypted ones on 4500 behind the non-ESP marker.
CAPTURE = [("sa_init", 500), ("ike_auth", 500), ("sk", 4500), ("skf", 4500)]


@pytest.fixture(scope="module")
def pdml(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ET.Element]:
    """tshark's PDML tree per message name."""
    assert TSHARK is not None
    packets = []
    for name, port in CAPTURE:
        ike = build_message(getattr(messages(), name))
        packets.append(_udp_ipv4((NON_ESP_MARKER if port == 4500 else b"") + ike, port))
    pcap = tmp_path_factory.mktemp("tshark") / "ike.pcap"
    _write_pcap(pcap, packets)
    result = subprocess.run(
        [TSHARK, "-n", "-o", "ip.check_checksum:TRUE", "-r", str(pcap), "-T", "pdml"],
        capture_output=True,
        check=True,
        timeout=120,
    )
    tree = ET.fromstring(result.stdout)
    found = tree.findall("packet")
    assert len(found) == len(CAPTURE)
    return {name: packet for (name, _), packet in zip(CAPTURE, found, strict=True)}


def _field(element: ET.Element, name: str) -> ET.Element:
    found = element.find(f".//field[@name='{name}']")
    assert found is not None, f"tshark shows no {name}"
    return found


def _show(element: ET.Element, name: str) -> str:
    return _field(element, name).get("show", "")


def _value(element: ET.Element, name: str) -> bytes:
    """The raw bytes of a field (PDML 'value' is hex; absent when empty)."""
    return bytes.fromhex(_field(element, name).get("value", ""))


def _children(element: ET.Element, name: str, show: str | None = None) -> list[ET.Element]:
    """Direct child fields called ``name`` (optionally with that 'show')."""
    return [
        child
        for child in element.findall("field")
        if child.get("name") == name and (show is None or child.get("show") == show)
    ]


def _check_tshark_sa(ours: SaPayload, theirs: ET.Element) -> None:
    proposals = _children(theirs, "isakmp.typepayload", "2")
    assert len(proposals) == len(ours.proposals)
    for prop, tprop in zip(ours.proposals, proposals, strict=True):
        assert int(_show(tprop, "isakmp.prop.number")) == prop.number
        assert int(_show(tprop, "isakmp.prop.protoid")) == prop.protocol
        assert int(_show(tprop, "isakmp.prop.transforms")) == len(prop.transforms)
        if prop.spi:
            assert _value(tprop, "isakmp.spi") == prop.spi
        transforms = _children(tprop, "isakmp.typepayload", "3")
        got = []
        for tf in transforms:
            # The ID field is named after the type: isakmp.tf.id.encr, .prf, ...
            (tf_id,) = [
                f for f in tf.findall("field") if f.get("name", "").startswith("isakmp.tf.id.")
            ]
            key_length = tf.find(".//field[@name='isakmp.ike2.attr.key_length']")
            got.append(
                (
                    int(_show(tf, "isakmp.tf.type")),
                    int(tf_id.get("show", "")),
                    None if key_length is None else int(key_length.get("show", "")),
                )
            )
        assert got == [(t.type, t.id, t.key_length) for t in prop.transforms]


def _check_tshark_payload(ours: Payload, theirs: ET.Element) -> None:
    match ours:
        case SaPayload():
            _check_tshark_sa(ours, theirs)
        case KePayload():
            assert int(_show(theirs, "isakmp.key_exchange.dh_group")) == ours.group
            assert _value(theirs, "isakmp.key_exchange.data") == ours.data
        case NoncePayload():
            assert _value(theirs, "isakmp.nonce") == ours.data
        case NotifyPayload():
            assert int(_show(theirs, "isakmp.notify.protoid")) == ours.protocol
            assert int(_show(theirs, "isakmp.notify.msgtype")) == ours.type
            assert _value(theirs, "isakmp.notify.data") == ours.data
            if ours.spi:
                assert _value(theirs, "isakmp.spi") == ours.spi
        case IdPayload():
            assert int(_show(theirs, "isakmp.id.type")) == ours.id_type
            if ours.id_type == IdType.ID_IPV4_ADDR:
                assert _show(theirs, "isakmp.id.data.ipv4_addr") == str(IPv4Address(ours.data))
            else:
                assert _show(theirs, "isakmp.id.data.fqdn") == ours.data.decode()
        case CertPayload():
            assert int(_show(theirs, "isakmp.cert.encoding")) == ours.encoding
            assert _field(theirs, "isakmp.cert.data").get("size") == str(len(ours.data))
            # Wireshark decoded the DER: the serial number (shown in hex) is ours.
            assert int(_show(theirs, "x509af.serialNumber").replace(":", ""), 16) == 7296
        case CertReqPayload():
            assert int(_show(theirs, "isakmp.certreq.type")) == ours.encoding
            assert _value(theirs, "isakmp.ike.certreq.authority") == ours.data
        case AuthPayload():
            assert int(_show(theirs, "isakmp.auth.method")) == ours.method
            assert _value(theirs, "isakmp.auth.data") == ours.data
            # RFC 7427 3: Wireshark finds the AlgorithmIdentifier after the length octet.
            algorithm = _value(theirs, "isakmp.auth.data.sig.asn1.data")
            assert ours.data[1 : 1 + ours.data[0]] == algorithm
        case CpPayload():
            assert int(_show(theirs, "isakmp.cfg.type")) == ours.cfg_type
            attrs = _children(theirs, "isakmp.cfg.attr")
            got = [
                (int(_show(a, "isakmp.cfg.attr.type")), int(_show(a, "isakmp.cfg.attr.length")))
                for a in attrs
            ]
            assert got == [(t, len(v)) for t, v in ours.attributes]
        case TsPayload():
            assert int(_show(theirs, "isakmp.ts.number")) == len(ours.selectors)
            selectors = _children(theirs, "isakmp.ts.data")
            for ts, tts in zip(ours.selectors, selectors, strict=True):
                assert isinstance(ts, TrafficSelector)
                family = "ipv4" if ts.ts_type == TsType.TS_IPV4_ADDR_RANGE else "ipv6"
                got = (
                    int(_show(tts, "isakmp.ts.type")),
                    int(_show(tts, "isakmp.ts.protoid")),
                    int(_show(tts, "isakmp.ts.start_port")),
                    int(_show(tts, "isakmp.ts.end_port")),
                    _show(tts, f"isakmp.ts.start_{family}"),
                    _show(tts, f"isakmp.ts.end_{family}"),
                )
                assert got == (
                    ts.ts_type,
                    ts.ip_proto,
                    ts.start_port,
                    ts.end_port,
                    str(ts.start_addr),
                    str(ts.end_addr),
                )
        case DeletePayload():
            assert int(_show(theirs, "isakmp.delete.protoid")) == ours.protocol
            assert int(_show(theirs, "isakmp.spinum")) == len(ours.spis)
            spis = [
                bytes.fromhex(f.get("value", "")) for f in _children(theirs, "isakmp.delete.spi")
            ]
            assert spis == ours.spis
        case VendorPayload():
            assert _value(theirs, "isakmp.vid_bytes") == ours.data
        case EapPayload():
            # Wireshark hands the payload to its EAP dissector (RFC 3748 4.1).
            assert int(_show(theirs, "eap.code")) == ours.data[0]
            assert int(_show(theirs, "eap.id")) == ours.data[1]
            assert int(_show(theirs, "eap.len")) == len(ours.data)
            assert int(_show(theirs, "eap.type")) == ours.data[4]
        case SkPayload():
            pass  # opaque to Wireshark without keys; type, chain and length checked by caller
        case SkfPayload():
            assert int(_show(theirs, "isakmp.frag.number")) == ours.number
            assert int(_show(theirs, "isakmp.frag.total")) == ours.total
        case _:
            raise AssertionError(f"no tshark comparison for {type(ours).__name__}")


def _expert_problems(packet: ET.Element) -> list[str]:
    """Malformed-packet markers and expert items of warning level or worse."""
    problems = []
    for element in packet.iter():
        name = element.get("name", "")
        if name.startswith("_ws.malformed"):
            problems.append(element.get("showname", name))
        if name == "_ws.expert":
            severity = element.find("field[@name='_ws.expert.severity']")
            if severity is not None and int(severity.get("show", "0")) >= PI_WARN:
                problems.append(element.get("showname", name))
    return problems


@needs_tshark
@pytest.mark.parametrize(("name", "port"), CAPTURE)
def test_tshark_decodes_what_pyike_builds(
    pdml: dict[str, ET.Element], name: str, port: int
) -> None:
    msg: Message = getattr(messages(), name)
    packet = pdml[name]
    assert _expert_problems(packet) == []
    assert _show(packet, "ip.checksum.status") == "1"  # "Good": our pcap writer is right
    if port == 4500:
        assert packet.find("proto[@name='udpencap']") is not None
    isakmp = packet.find("proto[@name='isakmp']")
    assert isakmp is not None

    assert _value(isakmp, "isakmp.ispi") == msg.spi_i
    assert _value(isakmp, "isakmp.rspi") == msg.spi_r
    assert int(_show(isakmp, "isakmp.exchangetype")) == msg.exchange
    assert int(_show(isakmp, "isakmp.flags"), 16) == msg.flags
    assert int(_show(isakmp, "isakmp.messageid"), 16) == msg.message_id
    assert int(_show(isakmp, "isakmp.length")) == len(build_message(msg))
    assert int(_children(isakmp, "isakmp.nextpayload")[0].get("show", "")) == msg.payloads[0].ptype

    payloads = _children(isakmp, "isakmp.typepayload")
    assert [int(p.get("show", "")) for p in payloads] == [p.ptype for p in msg.payloads]
    for index, (ours, theirs) in enumerate(zip(msg.payloads, payloads, strict=True)):
        # The Next Payload chain; SK's points at its first inner payload.
        if isinstance(ours, SkPayload | SkfPayload):
            expected_next = ours.first_inner
        else:
            expected_next = msg.payloads[index + 1].ptype if index + 1 < len(msg.payloads) else 0
        assert int(_show(theirs, "isakmp.nextpayload")) == expected_next
        assert int(_show(theirs, "isakmp.payloadlength")) == 4 + len(ours.body())
        _check_tshark_payload(ours, theirs)


@needs_tshark
def test_tshark_flags_a_broken_message(tmp_path: Path) -> None:
    """The check can fail: a payload length past the end is reported as malformed."""
    data = bytearray(build_message(messages().sa_init))
    data[30:32] = (0xFFF0).to_bytes(2, "big")  # the SA payload's length field
    pcap = tmp_path / "broken.pcap"
    _write_pcap(pcap, [_udp_ipv4(bytes(data), 500)])
    assert TSHARK is not None
    result = subprocess.run(
        [TSHARK, "-n", "-r", str(pcap), "-T", "pdml"], capture_output=True, check=True, timeout=120
    )
    (packet,) = ET.fromstring(result.stdout).findall("packet")
    assert _expert_problems(packet) != []
