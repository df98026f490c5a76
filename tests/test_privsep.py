"""The privileged parent's request parser (pure, fuzzed) and the drop's checks.

tests/test_privsep_netns.py sends hostile requests to a real parent process;
here the parser itself is fuzzed with hypothesis: any bytes give a request or a
refusal, never an exception, and a request is only ever one the policy allows.
"""

from __future__ import annotations

import logging
import socket
from ipaddress import ip_address, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyike.privsep import requests as rq
from pyike.privsep.drop import PrivsepError, RunAs, check_dropped, find_user
from pyike.privsep.parent import Parent
from pyike.registry import IdType

POLICY = rq.PrivPolicy(
    ifname="pyike0",
    addresses=frozenset({(ip_address("2001:db8:c1da::1"), 128), (ip_address("192.0.2.1"), 32)}),
    routes=frozenset({ip_network("2001:db8:c1da::2/128"), ip_network("198.51.100.0/24")}),
    ports=frozenset({500, 4500}),
)
VALID: list[rq.Request] = [
    rq.AddressRequest(True, "pyike0", ip_address("2001:db8:c1da::1"), 128),
    rq.AddressRequest(False, "pyike0", ip_address("192.0.2.1"), 32),
    rq.RouteRequest(True, "pyike0", ip_network("198.51.100.0/24"), ip_address("192.0.2.1")),
    rq.RouteRequest(False, "pyike0", ip_network("2001:db8:c1da::2/128"), None),
    rq.UdpOpenRequest(ip_address("0.0.0.0"), 500),
    rq.UdpOpenRequest(ip_address("2001:db8:1::1"), 4500),
    rq.PeerKeyRequest(IdType.ID_FQDN, "peer.example"),
    rq.PeerKeyRequest(IdType.ID_IPV6_ADDR, "2001:db8::1"),
    rq.ReloadRequest(),
]


def allowed(req: rq.Request, policy: rq.PrivPolicy = POLICY) -> bool:
    """The policy, stated again independently of the parser."""
    if isinstance(req, rq.AddressRequest):
        return req.ifname == policy.ifname and (req.address, req.prefixlen) in policy.addresses
    if isinstance(req, rq.RouteRequest):
        src_ok = req.prefsrc is None or any(req.prefsrc == a for a, _ in policy.addresses)
        return req.ifname == policy.ifname and req.network in policy.routes and src_ok
    if isinstance(req, rq.UdpOpenRequest):
        return req.port in policy.ports and not req.address.is_multicast
    if isinstance(req, rq.PeerKeyRequest):
        return "/" not in req.ident and req.ident not in (".", "..") and req.ident.isprintable()
    return isinstance(req, rq.ReloadRequest)


@pytest.mark.parametrize("req", VALID, ids=lambda r: type(r).__name__)
def test_valid_requests_round_trip(req: rq.Request) -> None:
    assert rq.parse_request(rq.encode_request(req), POLICY) == req


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=700))
def test_any_bytes_give_a_request_or_a_refusal(data: bytes) -> None:
    out = rq.parse_request(data, POLICY)
    assert isinstance(out, rq.Refusal) or allowed(out)


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from(VALID), st.data())
def test_mutated_valid_requests_stay_in_policy(req: rq.Request, data: st.DataObject) -> None:
    raw = bytearray(rq.encode_request(req))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw += data.draw(st.binary(max_size=20))
    out = rq.parse_request(bytes(raw), POLICY)
    assert isinstance(out, rq.Refusal) or allowed(out)


def test_removal_after_a_reload_only_of_the_old_configuration() -> None:
    old_route = ip_network("203.0.113.0/24")
    policy = rq.PrivPolicy("pyike0", routes=frozenset(), old_routes=frozenset({old_route}))
    delete = rq.RouteRequest(False, "pyike0", old_route)
    assert rq.parse_request(rq.encode_request(delete), policy) == delete
    add = rq.RouteRequest(True, "pyike0", old_route)
    assert isinstance(rq.parse_request(rq.encode_request(add), policy), rq.Refusal)


def test_parent_refuses_and_logs_without_executing(caplog: pytest.LogCaptureFixture) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        parent = Parent(a, POLICY)
        caplog.set_level(logging.WARNING, "pyike.privsep")
        bad = rq.encode_request(rq.RouteRequest(True, "pyike0", ip_network("0.0.0.0/0")))
        reply, fds = parent.handle(bad)
        assert rq.parse_reply(reply)[0] == rq.Status.REFUSED and fds == []
        reply, _ = parent.handle(rq.encode_request(VALID[0]), socket.MSG_CTRUNC)
        assert rq.parse_reply(reply)[0] == rq.Status.REFUSED
        assert parent.refused == 2 and parent.executed == 0
        assert "route 0.0.0.0/0 is not a configured remote flow" in caplog.text
        assert "carrying descriptors" in caplog.text


def test_drop_check_reads_proc_status_fields() -> None:
    user = RunAs("_pyike", 999, 995)
    good = {
        "Uid": "999\t999\t999\t999",
        "Gid": "995\t995\t995\t995",
        "Groups": "",
        "CapInh": "0000000000000000",
        "CapPrm": "0000000000000000",
        "CapEff": "0000000000000000",
        "CapAmb": "0000000000000000",
    }
    assert check_dropped(user, good) == []
    assert check_dropped(user, {**good, "Uid": "999\t0\t999\t999"})  # a saved root uid
    assert check_dropped(user, {**good, "CapEff": "0000000000001000"})  # CAP_NET_ADMIN
    assert check_dropped(user, {**good, "Groups": "0"})
    root = {k: ("0\t0\t0\t0" if k in ("Uid", "Gid") else v) for k, v in good.items()}
    assert len(check_dropped(user, {**root, "CapEff": "000001ffffffffff"})) == 3


def test_users() -> None:
    with pytest.raises(PrivsepError, match="does not exist"):
        find_user("no_such_user_pyike")
    with pytest.raises(PrivsepError, match="is root"):
        find_user("root")
    assert find_user(None).name in ("_pyike", "nobody")


def test_cert_store_crosses_to_the_child_whole(tmp_path) -> None:
    """A RELOAD answer carries ca/ and certs/ as DER; the child's store is the same."""
    import datetime as dt
    import pickle

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID

    from pyike import certs
    from pyike.privsep.parent import certstore_from_wire, certstore_to_wire

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test ca")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    for sub in (certs.CA_DIR, certs.CERTS_DIR):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "a.crt").write_bytes(cert.public_bytes(Encoding.PEM))
    (tmp_path / certs.CERTS_DIR / "junk.crt").write_bytes(b"not a certificate")
    store = certs.CertStore.load(tmp_path)
    back = certstore_from_wire(pickle.loads(pickle.dumps(certstore_to_wire(store))))
    assert back.cas == store.cas and back.ca_paths == store.ca_paths
    assert back.host_certs == store.host_certs and back.crls == store.crls
    assert back.problems == store.problems and len(store.problems) == 1
