"""Seed corpora for tools/fuzz: real captures and pyike's own messages of a whole SA life.

`tools/fuzz seeds` writes them under tests/data/fuzz/<target>/ (committed); a seed is one
input of its target's format (see tests/fuzz_targets.py).
"""

from __future__ import annotations

import hashlib
import ipaddress
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = sorted((ROOT / "tests" / "data" / "charon-sample").glob("*/ike.pcap"))


def _sa_life() -> tuple[list[bytes], list[bytes]]:
    """Datagrams of one pyike<->pyike SA life, and the plaintext payload chains the VM side
    decrypted on the way, in the ike-authenticated target's input format."""
    from pyike.ike import IkeSa
    from pyike.registry import ExchangeType
    from tests.ike_pair import default_pair

    selector = {
        ExchangeType.INFORMATIONAL: 0,
        ExchangeType.CREATE_CHILD_SA: 1,
        ExchangeType.IKE_AUTH: 2,
    }
    inner: list[bytes] = []
    original = IkeSa.unprotect

    def recording(sa: IkeSa, data: bytes, msg: object) -> list:
        payloads = original(sa, data, msg)  # type: ignore[arg-type]
        if sa.endpoint is pair.vm and msg.exchange in selector:  # type: ignore[attr-defined]
            sk = msg.payloads[-1]  # type: ignore[attr-defined]
            plain = sa.cipher_in.open(data[: len(data) - len(sk.data)], sk.data)  # deterministic
            first = selector[msg.exchange] | (0x80 if msg.is_response else 0)  # type: ignore[attr-defined]
            inner.append(bytes([first, sk.first_inner]) + plain)
        return payloads

    pair = default_pair()
    IkeSa.unprotect = recording  # type: ignore[method-assign]
    try:
        pair.connect()
        pair.run()
        (home,) = pair.home.sas.values()
        (child,) = home.children.values()
        home.rekey_child(child.spi_in, pair.now)
        pair.run()
        home.create_child(pair.now)
        pair.run()
        home.rekey(pair.now)
        pair.run()
        (home,) = [sa for sa in pair.home.sas.values() if sa.children]
        home.delete_child(next(iter(home.children)), pair.now)
        pair.run()
        home.delete(pair.now)
        pair.run()
    finally:
        IkeSa.unprotect = original  # type: ignore[method-assign]
    return [t.data for _, t in pair.wire_log], inner


def _esp_seeds() -> list[bytes]:
    """IPv6 and IPv4 inner packets within and outside the target's selectors."""
    import struct

    def ip6(src: str, dst: str, nh: int, payload: bytes) -> bytes:
        return (
            struct.pack("!IHBB", 0x60000000, len(payload), nh, 64)
            + ipaddress.ip_address(src).packed
            + ipaddress.ip_address(dst).packed
            + payload
        )

    tcp = struct.pack("!HHIIBBHHH", 40000, 25, 1, 0, 0x50, 0x02, 65535, 0, 0)
    icmp = bytes([128, 0, 0, 0, 0, 1, 0, 1]) + b"ping"
    good = ip6("2001:db8:c1da::1", "2001:db8:c1da::2", 6, tcp)
    ping = ip6("2001:db8:c1da::1", "2001:db8:c1da::2", 58, icmp)
    stray = ip6("2001:db8::9", "2001:db8:c1da::2", 17, struct.pack("!HHHH", 1, 2, 8, 0))
    v4 = bytes.fromhex("4500001c000040004011") + bytes(2) + bytes([192, 0, 2, 1, 192, 0, 2, 2])
    seeds = []
    for suite in (0, 1):
        for nh, pkt in ((41, good), (41, ping), (41, stray), (4, v4 + bytes(8)), (59, b"")):
            seeds.append(bytes([suite | 2, nh]) + pkt)
        seeds.append(bytes([suite]) + bytes.fromhex("00001234000000010011223344556677") + bytes(40))
    return seeds


def _config_seeds() -> list[bytes]:
    seeds = [p.read_bytes() for p in sorted((ROOT / "conf").glob("*.conf"))]
    seeds.append(
        b'set ocsp "http://192.0.2.1"\nset mobike\nuser "u" "p"\n'
        b"ikev2 x active esp from 192.0.2.0/24 to 198.51.100.0/24 port 25 "
        b"peer 203.0.113.1 ikesa enc aes-256-gcm prf hmac-sha2-384 group curve25519 "
        b"childsa enc aes-128 auth hmac-sha2-256 group ecp384 "
        b'srcid a@example.com dstid "C=US, CN=x" psk "secret" lifetime 3h bytes 1G '
        b"tag foo tap enc0\n"
    )
    return seeds


def _key_seeds() -> list[bytes]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    seeds = []
    for key in (
        ec.generate_private_key(ec.SECP384R1()),
        ec.generate_private_key(ec.SECP256R1()),
        rsa.generate_private_key(65537, 1024),
    ):
        pub = key.public_key()
        seeds.append(
            pub.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        seeds.append(
            pub.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        seeds.append(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return seeds


def _keylog_seeds() -> list[bytes]:
    from pyike import keylog
    from pyike.registry import EncrId, IntegId

    ike = keylog.IkeKeyRecord(
        bytes(range(8)), bytes(range(8, 16)), EncrId.AES_GCM_16, 256, IntegId.NONE,
        bytes(36), bytes(range(36)), b"", b"",
    )  # fmt: skip
    cbc = keylog.IkeKeyRecord(
        bytes(8), bytes(range(8)), EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128,
        bytes(16), bytes(16), bytes(32), bytes(32),
    )  # fmt: skip
    esp = keylog.EspKeyRecord(
        ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("192.0.2.2"), 0xC0FFEE01,
        EncrId.AES_GCM_16, 256, IntegId.NONE, bytes(36), b"",
    )  # fmt: skip
    return [
        (keylog.format_ike_record(ike) + keylog.format_ike_record(cbc)).encode(),
        keylog.format_esp_record(esp).encode(),
    ]


def _cert_seeds() -> list[bytes]:
    """A real CA's certificate, a host certificate and a CRL, as files and as chains."""
    import tempfile

    from cryptography.hazmat.primitives import serialization

    from pyike.ca import Ca

    work = Path(tempfile.mkdtemp(prefix="pyike-seeds-"))
    ca = Ca("fuzz", work / "ssl")
    ca.create(key_type="p256")
    ca.certificate("peer.example.org", key_type="p256")
    ca.revoke("peer.example.org")
    host = ca.host_cert_path("peer.example.org").read_bytes()
    from cryptography import x509

    der = x509.load_pem_x509_certificate(host).public_bytes(serialization.Encoding.DER)
    ca_der = ca.ca_cert().public_bytes(serialization.Encoding.DER)
    crl = ca.crl_path.read_bytes()

    def chain(*items: bytes) -> bytes:
        return b"\x00" + b"".join(len(i).to_bytes(2, "big") + i for i in items)

    return [b"\x01" + ca.cert_path.read_bytes(), b"\x01" + crl, chain(der), chain(der, ca_der)]


def _fragment_seeds() -> list[bytes]:
    """A DELETE-less INFORMATIONAL in one, two and three fragments, plus a duplicate."""
    notify = bytes([0, 0, 0, 8, 0, 0, 0x40, 0x00])  # N(INITIAL_CONTACT)-like body

    def frag(number: int, total: int, piece: bytes) -> bytes:
        return bytes([number, total, len(piece)]) + piece

    return [
        frag(1, 1, notify),
        frag(1, 2, notify[:4]) + frag(2, 2, notify[4:]),
        frag(2, 3, notify[3:6]) + frag(1, 3, notify[:3]) + frag(3, 3, notify[6:]),
        frag(1, 2, notify[:4]) + frag(1, 2, notify[:4]) + frag(2, 2, notify[4:]),
    ]


def _privsep_seeds() -> list[bytes]:
    from ipaddress import ip_address, ip_network

    from pyike.privsep import requests as rq

    return [
        rq.encode_request(r)
        for r in (
            rq.AddressRequest(True, "pyike0", ip_address("2001:db8:c1da::1"), 128),
            rq.RouteRequest(True, "pyike0", ip_network("2001:db8:c1da::2/128"), None),
            rq.UdpOpenRequest(ip_address("0.0.0.0"), 500),
        )
    ]


def seeds_by_target() -> dict[str, list[bytes]]:
    from pyike import pcap

    captured = []
    for path in CAPTURES:
        for d in pcap.read_capture(path):
            if 4500 in (d.sport, d.dport):  # RFC 3948 2.2: IKE behind the non-ESP marker
                if d.payload[:4] != bytes(4):
                    continue  # ESP or a keepalive: not an IKE message
                captured.append(d.payload[4:])
            else:
                captured.append(d.payload)
    datagrams, inner = _sa_life()
    ike = captured + datagrams
    return {
        "ike-decode": ike,
        "ike-endpoint": ike,
        "ike-authenticated": inner,
        "ike-sk-unprotect": [d[28:] for d in datagrams if len(d) > 32][:20],
        "esp-open": _esp_seeds(),
        "esp-flow": [s[2:] for s in _esp_seeds() if s[0] & 2],
        "config": _config_seeds(),
        "keys": _key_seeds(),
        "pcap": [p.read_bytes() for p in CAPTURES] + [b"00 11 22\n" + datagrams[0].hex().encode()],
        "keylog": _keylog_seeds(),
        "certs": _cert_seeds(),
        "ike-fragments": _fragment_seeds(),
        "privsep": _privsep_seeds(),
        "natt-demux": [
            b"\xff",
            bytes(4) + datagrams[0],
            bytes.fromhex("0000123400000001") + bytes(40),
        ],
        "control": [
            b'{"verb": "show sa"}',
            b'{"verb": "show stats"}',
            b'{"verb": "reset policy", "arg": "smtp-in"}',
            b'{"verb": "reset id", "arg": "fqdn/carinho.lan"}',
            b'{"verb": "log verbose"}',
            b'{"verb": "monitor"}',
        ],
    }


def write_all(top: Path) -> dict[str, int]:
    counts = {}
    for target, seeds in seeds_by_target().items():
        d = top / target
        d.mkdir(parents=True, exist_ok=True)
        for old in d.iterdir():
            old.unlink()
        unique = {hashlib.sha1(s).hexdigest()[:16]: s for s in seeds}
        for name, s in unique.items():
            (d / name).write_bytes(s)
        counts[target] = len(unique)
    return counts
