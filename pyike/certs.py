"""X.509 certificates in OpenBSD iked's layout (iked(8) FILES, ikectl(8) "ca").

    <keydir>/ca/ca.crt, ca/*.crt   trusted CA certificates (PEM or DER; a file may hold several)
    <keydir>/certs/*.crt           our certificate (the one matching srcid) and intermediates
    <keydir>/crls/*.crl            certificate revocation lists (PEM or DER)
    <keydir>/private/local.key     our private key (pyike.keys)

What IKE needs from it (RFC 7296 3.6, 3.7; RFC 4945 for the PKI profile):

* CERTREQ data: the SHA-1 hashes of the trusted CAs' SubjectPublicKeyInfo (3.7).
* Our CERT payloads: the certificate whose subjectAltName (or subject) is our ID,
  encoding 4 (X.509 signature), plus the intermediates up to a CA the peer asked for.
* The peer's public key, after its chain verifies against ca/ (``cryptography``'s
  x509.verification with the web-PKI rules relaxed to what IKE certificates carry:
  no extendedKeyUsage or subjectAltName required), its dates, key usage and the CRLs
  in crls/ are checked, and its IKE ID matches the certificate (RFC 4945 3.1:
  FQDN as a dNSName, UFQDN as an rfc822Name, IPV4/IPV6 as an iPAddress, DER_ASN1_DN
  as the subject).

Problems are ``CertError`` (the message names the file or the certificate subject, never
any key or certificate bytes); ``CertStore.problems`` lists files that did not load, for
``pyike -n``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import itertools
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from pyike.registry import IdType

CA_DIR, CERTS_DIR, CRLS_DIR = "ca", "certs", "crls"
# Bounds on what a peer may send (RFC 7296 does not limit it; these keep a hostile
# peer from making us parse or search without end).
MAX_PEER_CERTS = 8
MAX_PEER_CERT_BYTES = 64 * 1024
MAX_CHAIN_DEPTH = 6
SHA1_LEN = 20

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.*?-----END CERTIFICATE-----", re.S)
_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----\r?\n.*?-----END X509 CRL-----", re.S)

# OpenSSL's "/C=DE/O=OpenBSD/CN=host" short names (what iked.conf srcid "/..." uses).
_DN_NAMES = {
    "C": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "CN": NameOID.COMMON_NAME,
    "emailAddress": NameOID.EMAIL_ADDRESS,
    "serialNumber": NameOID.SERIAL_NUMBER,
    "DC": NameOID.DOMAIN_COMPONENT,
    "UID": NameOID.USER_ID,
}
_DN_SHORT = {oid: name for name, oid in _DN_NAMES.items()}


class CertError(Exception):
    """A certificate problem; the message is safe to log (names, never key material)."""


# --------------------------------------------------------------------------- names and IDs


def dn_from_text(text: str) -> x509.Name:
    """x509.Name from OpenSSL's slash form ("/C=DE/O=OpenBSD/CN=host"); CertError if bad."""
    parts = [p for p in text.split("/") if p]
    attrs = []
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or key not in _DN_NAMES or not value:
            raise CertError(f"cannot read {part!r} in the DN {text!r} (expected e.g. /CN=host)")
        attrs.append(x509.NameAttribute(_DN_NAMES[key], value))
    if not attrs:
        raise CertError(f"the DN {text!r} is empty")
    return x509.Name(attrs)


def dn_text(name: x509.Name) -> str:
    """The slash form of a Name, as iked and ``openssl x509 -subject`` print it."""
    out = []
    for attr in name:
        key = _DN_SHORT.get(attr.oid, attr.oid.dotted_string)
        out.append(f"/{key}={attr.value!s}")
    return "".join(out) or "/"


def describe(cert: x509.Certificate) -> str:
    """A short, safe description for logs: the subject and the serial number."""
    return f"'{dn_text(cert.subject)}' (serial {cert.serial_number:x})"


def spki_sha1(cert: x509.Certificate) -> bytes:
    """SHA-1 of the SubjectPublicKeyInfo: the CA identifier in CERTREQ (RFC 7296 3.7)."""
    der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha1(der).digest()


def _sans(cert: x509.Certificate) -> x509.SubjectAlternativeName | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    except ValueError as e:  # a malformed extension
        raise CertError(f"certificate {describe(cert)} has a bad subjectAltName: {e}") from None


def id_matches(cert: x509.Certificate, id_type: int, data: bytes) -> bool:
    """Whether the IKE ID (type, payload data) names this certificate (RFC 4945 3.1)."""
    if id_type == IdType.ID_DER_ASN1_DN:
        return _der_name_equal(cert.subject, data)
    sans = _sans(cert)
    if sans is None:
        return False
    try:
        if id_type == IdType.ID_FQDN:
            want = data.decode("ascii").lower().rstrip(".")
            return any(
                n.lower().rstrip(".") == want for n in sans.get_values_for_type(x509.DNSName)
            )
        if id_type == IdType.ID_RFC822_ADDR:
            want = data.decode("ascii").lower()
            return any(n.lower() == want for n in sans.get_values_for_type(x509.RFC822Name))
        if id_type in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR):
            addr = ipaddress.ip_address(data)
            return addr in sans.get_values_for_type(x509.IPAddress)
    except (UnicodeDecodeError, ValueError):
        return False
    return False


def _der_name_equal(name: x509.Name, der: bytes) -> bool:
    if name.public_bytes() == der:
        return True
    # Same attributes, other string types (PrintableString vs UTF8String): RFC 5280 7.1
    # compares names after normalising; asn1crypto's Name equality does that.
    from asn1crypto import x509 as ax509

    try:
        return ax509.Name.load(name.public_bytes()) == ax509.Name.load(der, strict=True)
    except (ValueError, TypeError):
        return False


def id_of_cert(cert: x509.Certificate) -> tuple[IdType, str]:
    """The IKE ID a certificate stands for: its first subjectAltName, else its subject
    (how iked picks a srcid from its certificate)."""
    sans = _sans(cert)
    if sans is not None:
        for general in sans:
            if isinstance(general, x509.DNSName):
                return IdType.ID_FQDN, general.value
            if isinstance(general, x509.RFC822Name):
                return IdType.ID_RFC822_ADDR, general.value
            if isinstance(general, x509.IPAddress) and isinstance(
                general.value, ipaddress.IPv4Address | ipaddress.IPv6Address
            ):
                kind = IdType.ID_IPV4_ADDR if general.value.version == 4 else IdType.ID_IPV6_ADDR
                return kind, str(general.value)
    return IdType.ID_DER_ASN1_DN, dn_text(cert.subject)


def id_payload_data(id_type: int, text: str) -> bytes:
    """ID payload data for an ID in text form, including "/C=../CN=.." DNs."""
    if id_type in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR):
        return ipaddress.ip_address(text).packed
    if id_type == IdType.ID_DER_ASN1_DN:
        return dn_from_text(text).public_bytes()
    return text.encode()


# --------------------------------------------------------------------------- reading files


def _checked(cert: x509.Certificate) -> x509.Certificate:
    """``cert`` once every field pyike reads has parsed: cryptography parses names,
    dates and extensions lazily, so a malformed issuer would otherwise raise later,
    in a log line (found by tools/fuzz)."""
    cert.subject.rfc4514_string()
    cert.issuer.rfc4514_string()
    _ = cert.not_valid_before_utc, cert.not_valid_after_utc, cert.serial_number
    list(cert.extensions)
    cert.public_key()
    return cert


def _parse_cert(load: Callable[[bytes], x509.Certificate], data: bytes) -> x509.Certificate:
    """One certificate from outside (a file or the peer); ValueError if it is unreadable.

    The peer's bytes are untrusted and cryptography reports malformed ones with several
    exception types (ValueError, TypeError for a bad name attribute, InvalidVersion,
    UnsupportedAlgorithm, DuplicateExtension: all found by tools/fuzz), so at this one
    boundary every exception from parsing means "not a usable certificate".
    """
    try:
        return _checked(load(data))
    except Exception as e:  # every parse failure, see the docstring
        raise ValueError(f"{type(e).__name__}: {e}") from None


def _der_cert(der: bytes) -> x509.Certificate:
    return _parse_cert(x509.load_der_x509_certificate, der)


def _load_certs(data: bytes) -> list[x509.Certificate]:
    if b"-----BEGIN" in data:
        blocks = _PEM_CERT.findall(data)
        if not blocks:
            raise ValueError("no PEM 'CERTIFICATE' block")
        return [_parse_cert(x509.load_pem_x509_certificate, b) for b in blocks]
    return [_der_cert(data)]


def _parse_crl(
    load: Callable[[bytes], x509.CertificateRevocationList], data: bytes
) -> x509.CertificateRevocationList:
    """One CRL from crls/, every field pyike reads parsed; ValueError if unreadable
    (as for certificates, cryptography parses lazily and raises several types)."""
    try:
        crl = load(data)
        crl.issuer.rfc4514_string()
        _ = crl.last_update_utc, crl.next_update_utc
        list(crl.extensions)
        for revoked in crl:
            _ = revoked.serial_number, revoked.revocation_date_utc
        return crl
    except Exception as e:  # every parse failure, see _parse_cert
        raise ValueError(f"{type(e).__name__}: {e}") from None


def _load_crls(data: bytes) -> list[x509.CertificateRevocationList]:
    if b"-----BEGIN" in data:
        blocks = _PEM_CRL.findall(data)
        if not blocks:
            raise ValueError("no PEM 'X509 CRL' block")
        return [_parse_crl(x509.load_pem_x509_crl, b) for b in blocks]
    return [_parse_crl(x509.load_der_x509_crl, data)]


def _is_self_issued(cert: x509.Certificate) -> bool:
    if cert.subject != cert.issuer:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, Exception):  # InvalidSignature or unsupported key
        return False
    return True


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:  # InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except (x509.ExtensionNotFound, ValueError):
        return False


def _utc(when: float | dt.datetime | None) -> dt.datetime:
    if when is None:
        return dt.datetime.now(dt.UTC)
    if isinstance(when, dt.datetime):
        return when
    return dt.datetime.fromtimestamp(when, dt.UTC)


@dataclass(slots=True)
class CertStore:
    """What ca/, certs/ and crls/ in a key directory hold; load() reads them."""

    keydir: Path
    cas: list[x509.Certificate] = field(default_factory=list)
    ca_paths: list[Path] = field(default_factory=list)  # the file of each entry in cas
    host_certs: list[tuple[Path, x509.Certificate]] = field(default_factory=list)
    crls: list[tuple[Path, x509.CertificateRevocationList]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, keydir: Path) -> CertStore:
        store = cls(Path(keydir))
        for path in store._files(CA_DIR, (".crt", ".pem", ".der", ".cer")):
            for cert in store._read(path, _load_certs, "CA certificate"):
                store.cas.append(cert)
                store.ca_paths.append(path)
        for path in store._files(CERTS_DIR, (".crt", ".pem", ".der", ".cer")):
            for cert in store._read(path, _load_certs, "certificate"):
                store.host_certs.append((path, cert))
        for path in store._files(CRLS_DIR, (".crl", ".pem", ".der")):
            for crl in store._read(path, _load_crls, "CRL"):
                store.crls.append((path, crl))
        return store

    def _files(self, sub: str, suffixes: tuple[str, ...]) -> list[Path]:
        d = self.keydir / sub
        try:
            return sorted(p for p in d.iterdir() if p.suffix.lower() in suffixes)
        except FileNotFoundError:
            return []
        except OSError as e:
            self.problems.append(f"{d}: cannot be read ({e.strerror})")
            return []

    def _read(self, path: Path, loader, what: str) -> list:
        try:
            data = path.read_bytes()
        except OSError as e:
            self.problems.append(f"{path}: cannot be read ({e.strerror})")
            return []
        try:
            return loader(data)
        except ValueError as e:
            self.problems.append(f"{path}: not a {what} in PEM or DER ({e})")
            return []

    @property
    def empty(self) -> bool:
        return not (self.cas or self.host_certs)

    # ------------------------------------------------------------------ our side

    def ca_hashes(self) -> bytes:
        """CERTREQ data (encoding 4): SHA-1 of each trusted CA's SubjectPublicKeyInfo."""
        seen: list[bytes] = []
        for ca in self.cas:
            h = spki_sha1(ca)
            if h not in seen:
                seen.append(h)
        return b"".join(seen)

    def local_cert(
        self, id_type: int, data: bytes, public_der: bytes | None = None
    ) -> x509.Certificate | None:
        """Our certificate in certs/: the one naming this ID (and holding our public key
        when ``public_der`` is given); None if there is none."""
        for _path, cert in self.host_certs:
            if id_matches(cert, id_type, data) and (
                public_der is None or _public_der(cert) == public_der
            ):
                return cert
        return None

    def certs_for_key(self, public_der: bytes) -> list[tuple[Path, x509.Certificate]]:
        return [(p, c) for p, c in self.host_certs if _public_der(c) == public_der]

    def chain(self, leaf: x509.Certificate, requested: bytes = b"") -> list[x509.Certificate]:
        """``leaf`` and the intermediates above it, up to (not including) a CA whose
        SPKI hash is in ``requested`` (concatenated CERTREQ hashes) or the root.
        Only the leaf when the peer asked for none of the CAs we chain to."""
        wanted = {requested[i : i + SHA1_LEN] for i in range(0, len(requested), SHA1_LEN)}
        pool = [c for _p, c in self.host_certs if c != leaf] + self.cas
        path: list[x509.Certificate] = [leaf]
        cur = leaf
        for _ in range(MAX_CHAIN_DEPTH):
            if _is_self_issued(cur):
                break
            issuer = next((c for c in pool if c not in path and _issued_by(cur, c)), None)
            if issuer is None:
                break
            if spki_sha1(issuer) in wanted:
                return path
            path.append(issuer)
            cur = issuer
        # The peer asked for no CA on our path: the leaf alone (it may know the rest).
        return [leaf]

    def chains_to_requested(self, leaf: x509.Certificate, requested: bytes) -> bool:
        """Whether a CA the peer asked for is on our certificate's path."""
        if not requested:
            return False
        wanted = {requested[i : i + SHA1_LEN] for i in range(0, len(requested), SHA1_LEN)}
        pool = [c for _p, c in self.host_certs if c != leaf] + self.cas
        cur, seen = leaf, [leaf]
        for _ in range(MAX_CHAIN_DEPTH):
            issuer = next((c for c in pool if c not in seen and _issued_by(cur, c)), None)
            if issuer is None:
                return False
            if spki_sha1(issuer) in wanted:
                return True
            seen.append(issuer)
            cur = issuer
        return False

    # ------------------------------------------------------------------ the peer

    def validate(
        self,
        der_certs: Sequence[bytes],
        peer_id: tuple[int, bytes] | None,
        now: float | dt.datetime | None = None,
    ) -> x509.Certificate:
        """Verify the peer's CERT payloads (leaf first); returns the leaf certificate.

        Raises CertError saying what failed: unparsable, too many, untrusted issuer,
        not yet or no longer valid, wrong key usage, revoked, or not naming ``peer_id``.
        """
        if not der_certs:
            raise CertError("the peer sent no certificate")
        if len(der_certs) > MAX_PEER_CERTS:
            raise CertError(
                f"the peer sent {len(der_certs)} certificates (more than {MAX_PEER_CERTS})"
            )
        total = sum(len(d) for d in der_certs)
        if total > MAX_PEER_CERT_BYTES:
            raise CertError(f"the peer's certificates total {total} octets (too many)")
        certs = []
        for i, der in enumerate(der_certs, 1):
            try:
                certs.append(_der_cert(bytes(der)))
            except ValueError:
                raise CertError(
                    f"CERT payload {i} of {len(der_certs)} is not a DER X.509 certificate"
                ) from None
        if not self.cas:
            raise CertError(f"no trusted CA certificates in {self.keydir / CA_DIR}/")
        leaf, intermediates = certs[0], certs[1:]
        when = _utc(now)
        for cert in certs:
            if when < cert.not_valid_before_utc:
                raise CertError(
                    f"certificate {describe(cert)} is not valid before "
                    f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC"
                )
            if when > cert.not_valid_after_utc:
                raise CertError(
                    f"certificate {describe(cert)} expired on "
                    f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
                )
        try:
            verifier = (
                PolicyBuilder()
                .store(Store(self.cas))
                .time(when)
                .max_chain_depth(MAX_CHAIN_DEPTH)
                .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
                .build_client_verifier()
            )
            chain = verifier.verify(leaf, intermediates).chain
        except VerificationError as e:
            raise CertError(
                f"certificate {describe(leaf)} issued by '{dn_text(leaf.issuer)}' does not "
                f"chain to a trusted CA in {self.keydir / CA_DIR}/ ({_short(e)})"
            ) from None
        except (ValueError, TypeError) as e:
            raise CertError(f"certificate {describe(leaf)} cannot be verified ({e})") from None
        _check_key_usage(leaf)
        for cert in chain[1:]:
            _check_ca_key_usage(cert)
        self._check_revocation(chain, when)
        if peer_id is not None and not id_matches(leaf, *peer_id):
            raise CertError(f"certificate {describe(leaf)} does not name the peer's ID")
        return leaf

    def _check_revocation(self, chain: list[x509.Certificate], when: dt.datetime) -> None:
        for cert, issuer in itertools.pairwise(chain):
            for path, crl in self.crls:
                if crl.issuer != issuer.subject:
                    continue
                try:
                    if not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
                        continue
                except (TypeError, ValueError):
                    continue
                revoked = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
                if revoked is not None:
                    raise CertError(
                        f"certificate {describe(cert)} is revoked "
                        f"(since {revoked.revocation_date_utc:%Y-%m-%d}, by {path.name})"
                    )


def _public_der(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _short(e: Exception) -> str:
    text = str(e)
    return text.split(" (encountered")[0][:200]


def _check_key_usage(cert: x509.Certificate) -> None:
    """RFC 4945 5.1.3.2: digitalSignature or nonRepudiation, if keyUsage is there."""
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not (ku.digital_signature or ku.content_commitment):
        raise CertError(f"certificate {describe(cert)} may not sign (keyUsage)")


def _check_ca_key_usage(cert: x509.Certificate) -> None:
    """RFC 5280 4.2.1.3: a CA with keyUsage must have keyCertSign."""
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not ku.key_cert_sign:
        raise CertError(f"CA certificate {describe(cert)} may not sign certificates (keyUsage)")


def _relaxed(policy: ExtensionPolicy, exts: Iterable[type]) -> ExtensionPolicy:
    for ext in exts:
        policy = policy.may_be_present(ext, Criticality.AGNOSTIC, None)  # type: ignore[arg-type]
    return policy


# The web-PKI profile wants things IKE certificates do not carry (ikectl's have no
# authorityKeyIdentifier, openssl's test CAs no keyUsage, many peers no EKU or SAN);
# basicConstraints on CAs stays required. Key usage is checked above instead.
_EE_POLICY = _relaxed(
    ExtensionPolicy.webpki_defaults_ee(),
    (
        x509.SubjectAlternativeName,
        x509.ExtendedKeyUsage,
        x509.KeyUsage,
        x509.BasicConstraints,
        x509.AuthorityKeyIdentifier,
        x509.SubjectKeyIdentifier,
    ),
)
_CA_POLICY = _relaxed(
    ExtensionPolicy.webpki_defaults_ca(),
    (
        x509.ExtendedKeyUsage,
        x509.KeyUsage,
        x509.AuthorityKeyIdentifier,
        x509.SubjectKeyIdentifier,
    ),
)


def split_hashes(data: bytes) -> list[bytes]:
    """CERTREQ data (encoding 4) as its 20-octet CA hashes; a ragged tail is dropped."""
    return [data[i : i + SHA1_LEN] for i in range(0, len(data) - SHA1_LEN + 1, SHA1_LEN)]


__all__ = [
    "MAX_PEER_CERTS",
    "CertError",
    "CertStore",
    "describe",
    "dn_from_text",
    "dn_text",
    "id_matches",
    "id_of_cert",
    "id_payload_data",
    "spki_sha1",
    "split_hashes",
]
