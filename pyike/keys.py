"""Key files in OpenBSD iked's layout (iked(8), sections FILES and PUBLIC KEY AUTHENTICATION).

    <keydir>/private/local.key      our private key, PEM (0600, directory 0700)
    <keydir>/local.pub              our public key, PEM "PUBLIC KEY" (give it to the peer)
    <keydir>/pubkeys/fqdn/<ID>      a peer's public key for ID_FQDN
    <keydir>/pubkeys/ufqdn/<ID>     ... for ID_RFC822_ADDR (iked calls it UFQDN)
    <keydir>/pubkeys/ipv4/<ADDR>    ... for ID_IPV4_ADDR
    <keydir>/pubkeys/ipv6/<ADDR>    ... for ID_IPV6_ADDR

``keydir`` defaults to /etc/iked, so one set of files serves both iked and pyike.

Key types: ECDSA (P-256, P-384, P-521), RSA (2048 bits and up) and Ed25519; which AUTH
method each key signs with is pyike.signatures' business.

Permission rule for the private key (what iked's own layout gives: 0600 files in a
0700 directory): refuse it when group or others have any access to it, except mode 0640
(group read only) when its directory gives others no access. Symbolic links are
followed and the rule is applied to the file they point at and that file's directory;
nothing more is checked about the link itself (who owns it, where it points), nor
who owns the files.
A peer key file that anyone may write is refused too: whoever can rewrite it can
impersonate the peer.

Errors are ``KeyFileError``: the message names the file, the problem and what to do.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from pyike.registry import IdType

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey

DEFAULT_KEYDIR = Path("/etc/iked")
PRIVATE_KEY_NAME = "private/local.key"
PUBLIC_KEY_NAME = "local.pub"

# iked's directory name under pubkeys/ for each ID type it can look keys up by
# (iked's parse.y set_policy() and ca.c ca_validate_pubkey()).
PEER_KEY_DIRS: dict[IdType, str] = {
    IdType.ID_IPV4_ADDR: "ipv4",
    IdType.ID_IPV6_ADDR: "ipv6",
    IdType.ID_FQDN: "fqdn",
    IdType.ID_RFC822_ADDR: "ufqdn",
}

CURVES: dict[str, ec.EllipticCurve] = {
    "secp256r1": ec.SECP256R1(),
    "prime256v1": ec.SECP256R1(),  # OpenSSL's name for the same curve
    "secp384r1": ec.SECP384R1(),
    "secp521r1": ec.SECP521R1(),
}

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL)
_PRIVATE_LABELS = (b"EC PRIVATE KEY", b"PRIVATE KEY", b"RSA PRIVATE KEY")
_PUBLIC_LABELS = (b"PUBLIC KEY", b"RSA PUBLIC KEY")


class KeyFileError(Exception):
    """A key file is missing, unreadable, badly protected or not a usable key."""

    def __init__(self, path: Path | str, problem: str, remedy: str = "") -> None:
        self.path = Path(path)
        self.problem = problem
        self.remedy = remedy
        text = f"{path} {problem}"
        if remedy:
            text += f"; {remedy}"
        super().__init__(text)


class BadPublicKey(ValueError):
    """DER bytes (e.g. from a CERT payload) that are not a usable public key."""


# ---------------------------------------------------------------------------
# Reading PEM files


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


def _read_file(path: Path, what: str, remedy_missing: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(
            path, f"does not exist (looked for {what} in {path.parent}/)", remedy_missing
        ) from None
    except IsADirectoryError:
        raise KeyFileError(path, f"is a directory, not {what}") from None
    except PermissionError:
        raise KeyFileError(
            path, "cannot be read (permission denied)", "run pyike as root"
        ) from None
    except OSError as e:
        raise KeyFileError(path, f"cannot be read ({e.strerror})") from None
    if not data.strip():
        raise KeyFileError(path, f"is empty (expected {what} in PEM format)", remedy_missing)
    return data


def _pem_blocks(path: Path, data: bytes, expected: str) -> list[tuple[bytes, bytes]]:
    """(label, whole block) for each PEM block; KeyFileError if there is none."""
    blocks = [(m.group(1), m.group(0)) for m in _PEM_BLOCK.finditer(data)]
    if not blocks:
        raise KeyFileError(
            path,
            f"is not a PEM file (expected a line '-----BEGIN {expected}-----')",
        )
    return blocks


def check_private_key_mode(path: Path) -> None:
    """Refuse a private key others could read (see the module docstring for the rule)."""
    try:
        st = path.stat()  # follows a symlink: the target's mode is what protects the key
        dir_st = path.resolve().parent.stat()
    except OSError as e:
        raise KeyFileError(path, f"cannot be examined ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(path, "is not a regular file")
    loose = st.st_mode & 0o077
    if loose == 0:
        return
    fix = f"run: chmod 600 {path}"
    if loose == 0o040:
        if dir_st.st_mode & 0o007 == 0:
            return  # iked's 0640 key in a 0700 (or 0750) directory
        parent = path.resolve().parent
        raise KeyFileError(
            path,
            f"is readable by its group (mode {_mode(st)}) and its directory {parent} "
            f"is open to others (mode {_mode(dir_st)})",
            f"run: chmod 600 {path} (or chmod 700 {parent})",
        )
    if st.st_mode & 0o044:
        raise KeyFileError(path, f"is readable by group or others (mode {_mode(st)})", fix)
    raise KeyFileError(path, f"is writable by group or others (mode {_mode(st)})", fix)


def load_private_key_file(path: Path) -> PrivateKey:
    """Load a PEM private key: SEC1 "EC PRIVATE KEY", PKCS#8 "PRIVATE KEY" (or PKCS#1 RSA).

    ``openssl ecparam -genkey`` without ``-noout`` writes an "EC PARAMETERS" block before
    the key; such extra blocks are skipped.
    """
    remedy = (
        f"create one with: openssl ecparam -genkey -name secp384r1 -noout -out {path} "
        f"&& chmod 600 {path}"
    )
    data = _read_file(path, "a private key", remedy)
    check_private_key_mode(path)
    blocks = _pem_blocks(path, data, "EC PRIVATE KEY")
    labels = [label for label, _ in blocks]
    if b"ENCRYPTED PRIVATE KEY" in labels or any(
        b"Proc-Type: 4,ENCRYPTED" in block for _, block in blocks
    ):
        raise KeyFileError(
            path,
            "is encrypted with a passphrase, which pyike does not support",
            f"store it unencrypted with: openssl pkey -in {path} -out {path}.new "
            f"&& chmod 600 {path}.new && mv {path}.new {path}",
        )
    chosen = [block for label, block in blocks if label in _PRIVATE_LABELS]
    if not chosen:
        found = ", ".join(repr(label.decode()) for label in labels)
        raise KeyFileError(
            path,
            f"holds no private key (found PEM blocks: {found}; expected 'EC PRIVATE KEY' "
            "or 'PRIVATE KEY')",
        )
    try:
        key = serialization.load_pem_private_key(chosen[0], password=None)
    except TypeError:  # cryptography: "Password was not given but private key is encrypted"
        raise KeyFileError(
            path, "is encrypted with a passphrase, which pyike does not support"
        ) from None
    except UnsupportedAlgorithm as e:
        raise KeyFileError(path, f"holds a key type pyike does not support ({e})") from None
    except ValueError as e:
        raise KeyFileError(path, f"holds a private key that cannot be parsed ({e})") from None
    if not isinstance(key, PrivateKey):
        raise KeyFileError(
            path,
            f"holds a {type(key).__name__.lstrip('_')}; pyike supports ECDSA keys "
            "(P-256, P-384, P-521), RSA keys (2048 bits and up) and Ed25519 keys",
        )
    return key


def load_public_key_file(path: Path, remedy_missing: str = "") -> PublicKey:
    """Load a PEM "PUBLIC KEY" (SubjectPublicKeyInfo) or PKCS#1 "RSA PUBLIC KEY" file."""
    data = _read_file(path, "a public key", remedy_missing)
    blocks = _pem_blocks(path, data, "PUBLIC KEY")
    chosen = [block for label, block in blocks if label in _PUBLIC_LABELS]
    if not chosen:
        found = ", ".join(repr(label.decode()) for label, _ in blocks)
        hint = (
            " (a private key must never be given out as a peer key)"
            if any(label in _PRIVATE_LABELS for label, _ in blocks)
            else ""
        )
        raise KeyFileError(
            path,
            f"holds no public key (found PEM blocks: {found}; expected 'PUBLIC KEY'){hint}",
        )
    try:
        key = serialization.load_pem_public_key(chosen[0])
    except UnsupportedAlgorithm as e:
        raise KeyFileError(path, f"holds a key type pyike does not support ({e})") from None
    except ValueError as e:
        raise KeyFileError(path, f"holds a public key that cannot be parsed ({e})") from None
    if not isinstance(key, PublicKey):
        raise KeyFileError(
            path,
            f"holds a {type(key).__name__.lstrip('_')}; pyike supports ECDSA keys "
            "(P-256, P-384, P-521), RSA keys (2048 bits and up) and Ed25519 keys",
        )
    return key


# ---------------------------------------------------------------------------
# The key store


def _normalize_ident(
    id_type: IdType | int, ident: str | ipaddress.IPv4Address | ipaddress.IPv6Address
) -> tuple[str, str]:
    """(pubkeys sub-directory, file name) for an ID, as iked names it.

    iked prints the ID and lower-cases it (parse.y ``lc_string``); addresses are in
    their canonical text form (RFC 5952 for IPv6). The ID usually comes from the
    peer's ID payload, so anything that could leave the directory is refused.
    """
    try:
        kind = IdType(id_type)
        subdir = PEER_KEY_DIRS[kind]
    except (ValueError, KeyError):
        raise KeyFileError(
            "pubkeys/",
            f"has no directory for ID type {IdType.name_of(int(id_type))}",
            "iked (and pyike) look up raw public keys only for "
            "ID_FQDN, ID_RFC822_ADDR, ID_IPV4_ADDR and ID_IPV6_ADDR",
        ) from None
    text = str(ident)
    if kind in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR):
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            raise KeyFileError(
                f"pubkeys/{subdir}/", f"cannot hold a key for {text!r}: not an IP address"
            ) from None
        if (addr.version == 4) != (kind == IdType.ID_IPV4_ADDR):
            raise KeyFileError(
                f"pubkeys/{subdir}/",
                f"cannot hold a key for {text!r}: wrong address family for {kind.name}",
            )
        return subdir, str(addr)
    name = text.lower()
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise KeyFileError(
            f"pubkeys/{subdir}/", f"cannot hold a key for ID {text!r}: not usable as a file name"
        )
    return subdir, name


class KeyStore:
    """Our key pair and the peers' public keys, in iked's directory layout."""

    def __init__(self, keydir: Path = DEFAULT_KEYDIR) -> None:
        self.keydir = Path(keydir)

    @property
    def private_key_path(self) -> Path:
        return self.keydir / PRIVATE_KEY_NAME

    @property
    def public_key_path(self) -> Path:
        return self.keydir / PUBLIC_KEY_NAME

    def local_private(self) -> PrivateKey:
        """Our private key (private/local.key), after the permission check."""
        return load_private_key_file(self.private_key_path)

    def local_public(self) -> PublicKey:
        """Our public key (local.pub), the file a peer installs under its pubkeys/."""
        path = self.public_key_path
        remedy = f"create it with: openssl ec -in {self.private_key_path} -pubout -out {path}"
        return load_public_key_file(path, remedy)

    def check_local_pair(self) -> None:
        """Raise KeyFileError if local.pub is not the public half of private/local.key."""
        private = self.local_private()
        if public_key_der(private.public_key()) != public_key_der(self.local_public()):
            raise KeyFileError(
                self.public_key_path,
                f"does not match {self.private_key_path} (peers holding it will reject us)",
                f"recreate it with: openssl ec -in {self.private_key_path} -pubout "
                f"-out {self.public_key_path}",
            )

    def peer_key_path(
        self, id_type: IdType | int, ident: str | ipaddress.IPv4Address | ipaddress.IPv6Address
    ) -> Path:
        """Where iked (and pyike) look for the public key of the peer with this ID."""
        subdir, name = _normalize_ident(id_type, ident)
        return self.keydir / "pubkeys" / subdir / name

    def peer_public(
        self, id_type: IdType | int, ident: str | ipaddress.IPv4Address | ipaddress.IPv6Address
    ) -> PublicKey | None:
        """The peer's public key, or None when no file exists for this ID.

        Raises KeyFileError for an ID that cannot name a key file, or for a file that
        exists but is not a usable public key or that anyone may write.
        """
        path = self.peer_key_path(id_type, ident)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise KeyFileError(path, f"cannot be examined ({e.strerror})") from None
        if st.st_mode & 0o002:
            raise KeyFileError(
                path,
                f"is writable by anyone (mode {_mode(st)}), so it cannot be trusted",
                f"run: chmod 644 {path}",
            )
        return load_public_key_file(path)


# ---------------------------------------------------------------------------
# Writing keys


def _write_new(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Write a file with exactly ``mode`` (not subject to umask), atomically via rename."""
    if path.exists() and not force:
        raise KeyFileError(path, "already exists", "refusing to overwrite it without force")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # os.open's mode is filtered by the umask
        os.write(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)


# `pyike keygen --type`: what each type makes.
KEY_TYPES: dict[str, str] = {
    "p256": "secp256r1",  # what OpenBSD 7.2 and later create at first boot
    "p384": "secp384r1",
    "p521": "secp521r1",
    "rsa": "rsa",  # what older OpenBSD installs and ikectl ca create (2048 bits)
}


def keygen(
    keydir: Path,
    curve: str = "secp384r1",
    force: bool = False,
    *,
    key_type: str | None = None,
    rsa_bits: int = 2048,
) -> list[Path]:
    """Create a key pair the way iked's documentation does with openssl.

    Writes private/local.key (0600) in a 0700 private/ directory: for ECDSA a SEC1
    "EC PRIVATE KEY" PEM with the named curve (``openssl ecparam -genkey -name secp384r1
    -noout``), for RSA (``key_type="rsa"``) a PKCS#1 "RSA PRIVATE KEY" (``openssl genrsa``);
    and local.pub (0644, "PUBLIC KEY" PEM, as ``openssl pkey -pubout``).
    Refuses to replace existing files unless ``force``. Returns the paths written.
    """
    if key_type is not None:
        if key_type not in KEY_TYPES:
            raise ValueError(
                f"unsupported key type {key_type!r}; choose one of {', '.join(KEY_TYPES)}"
            )
        curve = KEY_TYPES[key_type]
    if curve != "rsa" and curve not in CURVES:
        raise ValueError(f"unsupported curve {curve!r}; choose one of {', '.join(CURVES)}")
    if curve == "rsa" and rsa_bits < 2048:
        raise ValueError(f"RSA keys need at least 2048 bits, not {rsa_bits}")
    keydir = Path(keydir)
    store = KeyStore(keydir)
    key_path, pub_path = store.private_key_path, store.public_key_path
    if not force:
        for path in (key_path, pub_path):
            if path.exists():
                raise KeyFileError(path, "already exists", "refusing to overwrite it without force")
    keydir.mkdir(mode=0o755, parents=True, exist_ok=True)
    if not key_path.parent.exists():
        key_path.parent.mkdir(mode=0o700)
        os.chmod(key_path.parent, 0o700)  # mkdir's mode is filtered by the umask
    key: PrivateKey = (
        rsa.generate_private_key(65537, rsa_bits)
        if curve == "rsa"
        else ec.generate_private_key(CURVES[curve])
    )
    _write_new(key_path, private_key_pem(key), 0o600, force)
    _write_new(pub_path, public_key_pem(key.public_key()), 0o644, force)
    return [key_path, pub_path]


def install_peer_key(
    keydir: Path, id_type: IdType | int, ident: str, pem: bytes, *, force: bool = False
) -> Path:
    """Install a peer's PEM public key as pubkeys/<type>/<ID>; returns its path.

    The key is checked and written back as a "PUBLIC KEY" PEM block (0644).
    """
    store = KeyStore(keydir)
    path = store.peer_key_path(id_type, ident)
    blocks = [m.group(0) for m in _PEM_BLOCK.finditer(pem) if m.group(1) in _PUBLIC_LABELS]
    if not blocks:
        raise KeyFileError(path, "was not written: the given data holds no PEM 'PUBLIC KEY'")
    try:
        key = serialization.load_pem_public_key(blocks[0])
    except (ValueError, UnsupportedAlgorithm) as e:
        raise KeyFileError(
            path, f"was not written: the public key cannot be parsed ({e})"
        ) from None
    if not isinstance(key, PublicKey):
        raise KeyFileError(path, f"was not written: pyike cannot use a {type(key).__name__}")
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    _write_new(path, public_key_pem(key), 0o644, force)
    return path


# ---------------------------------------------------------------------------
# Encodings used on the wire


def private_key_pem(key: PrivateKey, *, pkcs8: bool = False) -> bytes:
    """Unencrypted PEM: SEC1 "EC PRIVATE KEY" as iked's guides make local.key, or
    PKCS#8 "PRIVATE KEY" (what strongSwan's swanctl/private/ takes)."""
    fmt = (
        serialization.PrivateFormat.PKCS8
        if pkcs8
        else serialization.PrivateFormat.TraditionalOpenSSL
    )
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def public_key_pem(key: PublicKey) -> bytes:
    """PEM "PUBLIC KEY" (SubjectPublicKeyInfo), the format of local.pub and pubkeys/."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_key_der(key: PublicKey) -> bytes:
    """SubjectPublicKeyInfo DER: what iked sends in CERT encoding 201 (IKED_BARE_PUBKEY)."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key_der(der: bytes) -> PublicKey:
    """Parse SubjectPublicKeyInfo DER from the wire; raises BadPublicKey."""
    try:
        key = serialization.load_der_public_key(bytes(der))
    except (ValueError, UnsupportedAlgorithm, TypeError) as e:
        raise BadPublicKey(f"not a DER SubjectPublicKeyInfo public key: {e}") from None
    if not isinstance(key, PublicKey):
        raise BadPublicKey(f"unsupported public key type {type(key).__name__.lstrip('_')}")
    return key
