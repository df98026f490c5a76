"""``pyike ca``: the part of ``ikectl ca`` (ikectl(8)) a home user needs.

Same files and names as ikectl, so either tool can read what the other made and
iked reads what both install:

    <cadir>/<name>/ca.crt               the CA certificate
    <cadir>/<name>/private/ca.key       its key (AES-256 encrypted with the password in
                                        ikeca.passwd, as ikectl does, when a password is set)
    <cadir>/<name>/ikeca.passwd         "password\\npassword\\n", 0600
    <cadir>/<name>/ca.crl               the CRL (re-made on create and revoke)
    <cadir>/<name>/<host>.crt           host certificates; keys in private/<host>.key
    <cadir>/<name>/index.txt, serial.txt  openssl-ca style database and next serial

``install`` writes into a key directory in iked's layout: ca/ca.crt and crls/ca.crl
(CA), private/local.key, local.pub and certs/<host>.crt (host). ``export`` writes
<host>.tgz (ca.tgz for the CA) in the current directory with the same layout,
for ``tar -C /etc/iked -xzpf``.

Differences from ikectl: no PKCS#12 (.pfx) or zip files; the CA export holds only the
CA certificate and CRL (ikectl's tars the whole CA directory, private key included);
keys may be ECDSA (``--type``), RSA-2048 being the default as in ikectl.
"""

from __future__ import annotations

import datetime as dt
import io
import ipaddress
import os
import secrets
import tarfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pyike import keys

DEFAULT_CADIR = Path("/etc/ssl")  # ikectl's SSLDIR
CA_DAYS = 4500  # ikectl: openssl x509 -days 4500
HOST_DAYS = 365  # ikeca.cnf default_days
CRL_DAYS = 365


class CaError(Exception):
    """A ``pyike ca`` failure with a message for the user."""


def _new_key(key_type: str) -> keys.PrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(65537, 2048)
    try:
        return ec.generate_private_key(keys.CURVES[keys.KEY_TYPES[key_type]])
    except KeyError:
        raise CaError(f"unknown key type {key_type!r} (rsa, p256, p384, p521)") from None


def _hash_for(key: keys.PrivateKey) -> hashes.HashAlgorithm:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 384:
        return hashes.SHA512()
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)


def _hier(keydir: Path) -> None:
    """iked's directories (ikeca.c hier[]): private/ 0700, the rest 0755."""
    for sub, mode in (("", 0o755), ("ca", 0o755), ("certs", 0o755), ("crls", 0o755)):
        d = keydir / sub
        if not d.exists():
            d.mkdir(mode=mode, parents=True)
    private = keydir / "private"
    if not private.exists():
        private.mkdir(mode=0o700)
        os.chmod(private, 0o700)


def host_san(host: str) -> x509.GeneralName:
    """ikectl's rule: an IP address gives an iPAddress SAN, anything else a dNSName."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not host or "/" in host or host in (".", "..") or "\0" in host:
        raise CaError(f"{host!r} cannot name a host certificate")
    if "@" in host:
        return x509.RFC822Name(host)
    return x509.DNSName(host)


@dataclass(slots=True)
class Ca:
    """One CA directory (<cadir>/<name>)."""

    name: str
    cadir: Path = DEFAULT_CADIR

    def __post_init__(self) -> None:
        self.cadir = Path(self.cadir)
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise CaError(f"{self.name!r} cannot name a CA")

    @property
    def path(self) -> Path:
        return self.cadir / self.name

    @property
    def cert_path(self) -> Path:
        return self.path / "ca.crt"

    @property
    def key_path(self) -> Path:
        return self.path / "private" / "ca.key"

    @property
    def crl_path(self) -> Path:
        return self.path / "ca.crl"

    def host_cert_path(self, host: str) -> Path:
        return self.path / f"{host}.crt"

    def host_key_path(self, host: str) -> Path:
        return self.path / "private" / f"{host}.key"

    # ------------------------------------------------------------------ reading

    def _password(self) -> bytes | None:
        try:
            return (self.path / "ikeca.passwd").read_bytes().split(b"\n")[0]
        except FileNotFoundError:
            return None

    def ca_cert(self) -> x509.Certificate:
        try:
            return x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        except FileNotFoundError:
            raise CaError(
                f"CA '{self.name}' does not exist ({self.cert_path} is missing)"
            ) from None
        except ValueError as e:
            raise CaError(f"{self.cert_path} is not a PEM certificate ({e})") from None

    def ca_key(self) -> keys.PrivateKey:
        try:
            data = self.key_path.read_bytes()
            key = serialization.load_pem_private_key(data, self._password())
        except FileNotFoundError:
            raise CaError(f"{self.key_path} is missing") from None
        except (ValueError, TypeError) as e:
            raise CaError(f"{self.key_path} cannot be read ({e})") from None
        return key  # type: ignore[return-value]

    def _next_serial(self) -> int:
        path = self.path / "serial.txt"
        try:
            serial = int(path.read_text().strip() or "1", 16)
        except FileNotFoundError:
            serial = 1
        except ValueError:
            raise CaError(f"{path} does not hold a hex serial number") from None
        path.write_text(f"{serial + 1:02X}\n")
        return serial

    # ------------------------------------------------------------------ create

    def create(self, *, password: str | None = None, key_type: str = "rsa") -> Path:
        """A new CA: key, self-signed certificate (CN "VPN CA", as ikectl) and empty CRL."""
        if self.cert_path.exists():
            raise CaError(f"CA '{self.name}' exists already ({self.cert_path})")
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "private").mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.path / "private", 0o700)
        key = _new_key(key_type)
        enc: serialization.KeySerializationEncryption = serialization.NoEncryption()
        if password:
            _write(self.path / "ikeca.passwd", f"{password}\n{password}\n".encode(), 0o600)
            enc = serialization.BestAvailableEncryption(password.encode())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, enc
        )
        _write(self.key_path, pem, 0o600)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "VPN CA")])
        now = dt.datetime.now(dt.UTC)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(secrets.randbits(63) | 1)
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            # ikeca.cnf [x509v3_CA]
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                critical=False,
            )
            .add_extension(ski, critical=False)
            .sign(key, _hash_for(key))  # type: ignore[arg-type]
        )
        _write(self.cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        (self.path / "index.txt").touch()
        self._write_crl()
        return self.cert_path

    def certificate(
        self, host: str, *, days: int = HOST_DAYS, key_type: str = "rsa", usage: str = "both"
    ) -> Path:
        """Create (or reuse) private/<host>.key and sign <host>.crt with a SAN for host."""
        san = host_san(host)
        ca_cert, ca_key = self.ca_cert(), self.ca_key()
        key_path = self.host_key_path(host)
        if key_path.exists():
            key = keys.load_private_key_file(key_path)
        else:
            key = _new_key(key_type)
            _write(key_path, keys.private_key_pem(key), 0o600)
        eku = {
            "both": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            "server": [ExtendedKeyUsageOID.SERVER_AUTH],
            "client": [ExtendedKeyUsageOID.CLIENT_AUTH],
        }[usage]
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())  # type: ignore[arg-type]
            .serial_number(self._next_serial())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(
                x509.KeyUsage(True, False, True, False, False, False, False, False, False),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
            .sign(ca_key, _hash_for(ca_key))  # type: ignore[arg-type]
        )
        out = self.host_cert_path(host)
        _write(out, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        with (self.path / "index.txt").open("a") as index:
            index.write(
                f"V\t{cert.not_valid_after_utc:%y%m%d%H%M%S}Z\t\t{cert.serial_number:02X}"
                f"\tunknown\t/CN={host}\n"
            )
        return out

    def revoke(self, host: str) -> Path:
        """Add <host>.crt to the CRL (index.txt 'R') and re-issue ca.crl."""
        try:
            cert = x509.load_pem_x509_certificate(self.host_cert_path(host).read_bytes())
        except FileNotFoundError:
            raise CaError(f"no certificate for '{host}' in CA '{self.name}'") from None
        index = self.path / "index.txt"
        lines = index.read_text().splitlines() if index.exists() else []
        serial = f"{cert.serial_number:02X}"
        now = dt.datetime.now(dt.UTC)
        out = []
        for line in lines:
            f = line.split("\t")
            if len(f) >= 4 and f[0] == "V" and f[3] == serial:
                f[0], f[2] = "R", f"{now:%y%m%d%H%M%S}Z"
                line = "\t".join(f)
            out.append(line)
        index.write_text("".join(f"{line}\n" for line in out))
        return self._write_crl()

    def _revoked_serials(self) -> list[tuple[int, dt.datetime]]:
        index = self.path / "index.txt"
        out = []
        for line in index.read_text().splitlines() if index.exists() else []:
            f = line.split("\t")
            if len(f) >= 4 and f[0] == "R":
                when = dt.datetime.strptime(f[2], "%y%m%d%H%M%SZ").replace(tzinfo=dt.UTC)
                out.append((int(f[3], 16), when))
        return out

    def _write_crl(self) -> Path:
        ca_cert, ca_key = self.ca_cert(), self.ca_key()
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca_cert.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + dt.timedelta(days=CRL_DAYS))
        )
        # RFC 5280 5.2.1 and 5.2.3: authorityKeyIdentifier (peers such as strongSwan
        # find a CA's CRL by it) and a CRL number that grows with each issue.
        number_path = self.path / "crlnumber"
        try:
            number = int(number_path.read_text().strip() or "0", 16) + 1
        except (FileNotFoundError, ValueError):
            number = 1
        number_path.write_text(f"{number:02X}\n")
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),  # type: ignore[arg-type]
            critical=False,
        ).add_extension(x509.CRLNumber(number), critical=False)
        for serial, when in self._revoked_serials():
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
            )
        crl = builder.sign(ca_key, _hash_for(ca_key))  # type: ignore[arg-type]
        _write(self.crl_path, crl.public_bytes(serialization.Encoding.PEM), 0o644)
        return self.crl_path

    # ------------------------------------------------------------------ install / export

    def _ca_files(self) -> dict[str, tuple[bytes, int]]:
        files = {"ca/ca.crt": (self.cert_path.read_bytes(), 0o644)}
        if self.crl_path.exists():
            files["crls/ca.crl"] = (self.crl_path.read_bytes(), 0o644)
        return files

    def _host_files(self, host: str) -> dict[str, tuple[bytes, int]]:
        try:
            cert = self.host_cert_path(host).read_bytes()
            key_pem = self.host_key_path(host).read_bytes()
        except FileNotFoundError as e:
            raise CaError(
                f"no certificate or key for '{host}' in CA '{self.name}' ({e.filename})"
            ) from None
        key = serialization.load_pem_private_key(key_pem, None)
        return {
            **self._ca_files(),
            f"certs/{host}.crt": (cert, 0o644),
            "private/local.key": (key_pem, 0o600),
            "local.pub": (keys.public_key_pem(key.public_key()), 0o644),  # type: ignore[arg-type]
        }

    def install(self, keydir: Path = keys.DEFAULT_KEYDIR) -> list[Path]:
        """ca/ca.crt and crls/ca.crl into a key directory (ikectl ca NAME install)."""
        return _install(self._ca_files(), keydir)

    def install_host(self, host: str, keydir: Path = keys.DEFAULT_KEYDIR) -> list[Path]:
        """Key, public key and certificate of host into a key directory (plus the CA
        certificate and CRL, so one command makes a working layout)."""
        return _install(self._host_files(host), keydir)

    def export(self, host: str | None = None, outdir: Path = Path(".")) -> Path:
        """<host>.tgz (or ca.tgz) in iked's layout, for tar -C /etc/iked -xzpf."""
        files = self._host_files(host) if host else self._ca_files()
        name = (host or "ca").replace(":", "_")
        out = Path(outdir) / f"{name}.tgz"
        with tarfile.open(out, "w:gz") as tar:
            for d, mode in (("ca", 0o755), ("certs", 0o755), ("crls", 0o755), ("private", 0o700)):
                info = tarfile.TarInfo(d)
                info.type, info.mode = tarfile.DIRTYPE, mode
                tar.addfile(info)
            for rel, (data, mode) in files.items():
                info = tarfile.TarInfo(rel)
                info.size, info.mode = len(data), mode
                tar.addfile(info, io.BytesIO(data))
        return out


def _install(files: dict[str, tuple[bytes, int]], keydir: Path) -> list[Path]:
    keydir = Path(keydir)
    _hier(keydir)
    written = []
    for rel, (data, mode) in files.items():
        path = keydir / rel
        _write(path, data, mode)
        written.append(path)
    return written
