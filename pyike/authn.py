"""What the IKE core calls for signature authentication (RFC 7296 2.15, 3.6-3.8).

One ``Credentials`` object per policy holds our key, our certificate, the trusted CAs
(pyike.certs) and the raw-key lookup (pyike.keys, iked's pubkeys/). The core asks it for:

* ``certreqs()``   CERTREQ payloads to send (responder: IKE_SA_INIT response;
                   initiator: IKE_AUTH request).
* ``certs(reqs)``  our CERT payloads, given the peer's CERTREQs.
* ``sign(..)``     our AUTH payload (method chosen by pyike.signatures).
* ``verify(..)``   the peer's key from its certificate chain or from pubkeys/, then its
                   AUTH; raises ``AuthFailure`` with a message fit for the log.

Nothing here logs key or certificate bytes: subjects, serials, file names and CA hashes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pyike import certs, keys, signatures
from pyike.crypto import AuthenticationError, CryptoError
from pyike.registry import AuthMethod, CertEncoding
from pyike.wire import AuthPayload, CertPayload, CertReqPayload

log = logging.getLogger("pyike.authn")


class AuthFailure(Exception):
    """The peer's identity could not be verified (AUTHENTICATION_FAILED).

    ``names_peer``: the message already names the peer's ID (else the core adds it)."""

    def __init__(self, message: str, *, names_peer: bool = False) -> None:
        super().__init__(message)
        self.names_peer = names_peer


def _no_key(_t: int, _d: bytes) -> object | None:
    return None


@dataclass(slots=True)
class Credentials:
    """Our side's signing material and what we trust; see the module docstring."""

    local_key: keys.PrivateKey | None = None
    keyword: str = "signature"  # iked.conf ikeauth (pyike.signatures.KEYWORDS)
    peer_key: Callable[[int, bytes], object | None] = _no_key  # pubkeys/ lookup by ID
    store: certs.CertStore | None = None
    local_cert: x509.Certificate | None = None
    rfc7427: bool = True
    pss: bool = False  # RSA keys sign method 14 with RSASSA-PSS
    # Wall clock for certificate validity (the core's clock is monotonic).
    clock: Callable[[], float] = field(default=time.time)

    # ------------------------------------------------------------------ ours

    def certreqs(self) -> list[CertReqPayload]:
        """CERTREQ(X.509) listing our trusted CAs; none without a ca/ directory."""
        if self.store is None or not self.store.cas:
            return []
        return [CertReqPayload(CertEncoding.X509_SIGNATURE, self.store.ca_hashes())]

    def certs(self, peer_reqs: Sequence[CertReqPayload] = ()) -> list[CertPayload]:
        """Our certificate (and intermediates up to a CA the peer asked for)."""
        if self.local_cert is None or self.store is None:
            return []
        requested = b"".join(r.data for r in peer_reqs if r.encoding == CertEncoding.X509_SIGNATURE)
        if len(requested) % certs.SHA1_LEN:
            log.info(
                "peer's CERTREQ data is %d octets, not a list of SHA-1 hashes: ignored",
                len(requested),
            )
            requested = b""
        if requested and not self.store.chains_to_requested(self.local_cert, requested):
            asked = ", ".join(h.hex() for h in certs.split_hashes(requested)[:4])
            log.info(
                "peer asks for CA(s) %s, which our certificate %s does not chain to; "
                "sending it anyway",
                asked,
                certs.describe(self.local_cert),
            )
        chain = self.store.chain(self.local_cert, requested)
        return [
            CertPayload(CertEncoding.X509_SIGNATURE, c.public_bytes(serialization.Encoding.DER))
            for c in chain
        ]

    def sign(self, octets: bytes, peer_hashes: set[int] | frozenset[int]) -> AuthPayload:
        """Our AUTH payload; raises AuthFailure when there is nothing to sign with."""
        if self.local_key is None:
            raise AuthFailure("no local key configured")
        try:
            choice = signatures.choose(
                self.local_key, self.keyword, peer_hashes, rfc7427=self.rfc7427, pss=self.pss
            )
            return AuthPayload(choice.method, signatures.sign(self.local_key, choice, octets))
        except CryptoError as e:
            raise AuthFailure(f"cannot sign AUTH: {e}") from None

    # ------------------------------------------------------------------ the peer's

    def peer_public_key(
        self, peer_id: tuple[int, bytes], cert_payloads: Sequence[CertPayload]
    ) -> tuple[object, str]:
        """(public key, where it came from) for the peer; raises AuthFailure."""
        x509_ders = [c.data for c in cert_payloads if c.encoding == CertEncoding.X509_SIGNATURE]
        if x509_ders and self.store is not None and self.store.cas:
            try:
                leaf = self.store.validate(x509_ders, peer_id, self.clock())
            except certs.CertError as e:
                raise AuthFailure(str(e)) from None
            return leaf.public_key(), f"certificate {certs.describe(leaf)}"
        key = self.peer_key(*peer_id)
        if key is None:
            if x509_ders:
                raise AuthFailure(
                    "the peer sent a certificate but no CA is trusted (ca/ is empty) and "
                    "there is no raw public key for its ID"
                )
            raise AuthFailure("no public key for the peer's ID (and no certificate from it)")
        bare = [c.data for c in cert_payloads if c.encoding == CertEncoding.IKED_BARE_PUBKEY]
        if bare and bare[0] != keys.public_key_der(key):  # type: ignore[arg-type]
            # iked's CERT(201) carries its key: a different one means a different peer.
            raise AuthFailure("the key in the peer's CERT(201) is not the one in pubkeys/")
        return key, "raw public key"

    def verify(
        self,
        peer_id: tuple[int, bytes],
        auth: AuthPayload,
        cert_payloads: Sequence[CertPayload],
        octets: bytes,
    ) -> str:
        """Check the peer's AUTH; returns how it was authenticated, raises AuthFailure."""
        if auth.method not in signatures.SIGNATURE_METHODS:
            raise AuthFailure(f"AUTH method {AuthMethod.name_of(auth.method)} is not a signature")
        key, source = self.peer_public_key(peer_id, cert_payloads)
        try:
            signatures.verify(key, auth.method, octets, auth.data, self.keyword)
        except AuthenticationError as e:
            raise AuthFailure(
                f"{AuthMethod.name_of(auth.method)} signature of {_id_text(peer_id)} does not "
                f"verify with the {source} ({signatures.describe_key(key)}): {e}",
                names_peer=True,
            ) from None
        return f"{AuthMethod.name_of(auth.method)} with the {source}"


# --------------------------------------------------------------------------- set-up


def local_identity(
    store: certs.CertStore | None,
    local_key: keys.PrivateKey,
    local_id: tuple[int, bytes],
    id_from_hostname: bool,
) -> tuple[x509.Certificate | None, tuple[int, bytes], list[str]]:
    """(our certificate, our ID, warnings) for a policy.

    The certificate is the one in certs/ that holds our public key and names our ID.
    Without a configured srcid (iked then uses the host name) the ID comes from our
    certificate instead: its first subjectAltName, else its subject.
    """
    if store is None or not store.host_certs:
        return None, local_id, []
    public_der = keys.public_key_der(local_key.public_key())  # type: ignore[arg-type]
    mine = store.certs_for_key(public_der)
    if not mine:
        names = ", ".join(p.name for p, _c in store.host_certs)
        return (
            None,
            local_id,
            [
                f"no certificate in {store.keydir / certs.CERTS_DIR}/ ({names}) holds the public "
                f"key of {store.keydir / keys.PRIVATE_KEY_NAME}: authenticating with the raw key"
            ],
        )
    if id_from_hostname:
        id_type, text = certs.id_of_cert(mine[0][1])
        local_id = (int(id_type), certs.id_payload_data(id_type, text))
    cert = store.local_cert(*local_id, public_der)
    if cert is None:
        ids = ", ".join(f"{p.name}: {certs.id_of_cert(c)[1]}" for p, c in mine)
        return (
            None,
            local_id,
            [
                f"srcid {_id_text(local_id)} matches no certificate in "
                f"{store.keydir / certs.CERTS_DIR}/ ({ids}): authenticating with the raw key"
            ],
        )
    return cert, local_id, []


def _id_text(ident: tuple[int, bytes]) -> str:
    from pyike.ike import id_text

    return id_text(*ident)


def check_keydir(keydir: object, policies: Sequence[object]) -> list[str]:
    """``pyike -n``: problems with the key and certificate files the policies need.

    Each names the file: unreadable or unparsable files in ca/, certs/ and crls/, a
    missing or unusable private/local.key, a srcid no certificate matches, and
    certificates out of their validity period.
    """
    from pathlib import Path

    keydir = Path(str(keydir))
    store = certs.CertStore.load(keydir)
    out = list(store.problems)
    signing = [p for p in policies if (getattr(p, "auth", None) is None or p.auth.method != "psk")]  # type: ignore[attr-defined]
    if not signing:
        return out
    now = certs._utc(None)
    for path, cert in [*store.host_certs, *zip(store.ca_paths, store.cas, strict=True)]:
        if now > cert.not_valid_after_utc:
            out.append(
                f"{path}: certificate {certs.describe(cert)} expired on "
                f"{cert.not_valid_after_utc:%Y-%m-%d}"
            )
    if store.cas and not store.host_certs:
        out.append(
            f"{keydir / certs.CERTS_DIR}/ holds no certificate (ca/ has "
            f"{len(store.cas)}): pyike will authenticate with its raw key"
        )
    if store.host_certs and not store.cas:
        out.append(
            f"{keydir / certs.CA_DIR}/ holds no CA certificate: peers' certificates "
            "cannot be verified"
        )
    try:
        local_key = keys.KeyStore(keydir).local_private()
    except keys.KeyFileError as e:
        return [*out, str(e)]
    for p in signing:
        keyword = p.auth.method if p.auth is not None else "signature"  # type: ignore[attr-defined]
        try:
            signatures.check_key(local_key, keyword)
        except CryptoError as e:
            out.append(f"policy '{p.name}': {keys.KeyStore(keydir).private_key_path}: {e}")  # type: ignore[attr-defined]
        srcid = p.srcid  # type: ignore[attr-defined]
        if srcid is None:
            continue
        try:
            local_id = (int(srcid[0]), certs.id_payload_data(*srcid))
        except (certs.CertError, ValueError) as e:
            out.append(f"policy '{p.name}': srcid {srcid[1]}: {e}")  # type: ignore[attr-defined]
            continue
        _cert, _id, warnings = local_identity(
            store, local_key, local_id, bool(getattr(p, "srcid_from_hostname", False))
        )
        out += [f"policy '{p.name}': {w}" for w in warnings]  # type: ignore[attr-defined]
    return out
