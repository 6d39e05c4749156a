"""The grid's certificate authority: create it, issue host certificates, read certificates back.

Every catalog and node of a grid holds a key and a certificate signed by one grid CA, and
trusts only that CA; gRPC between them is mutual TLS (see :mod:`catalog.security.tls`). The
CA is deliberately small: a self-signed root that signs leaf certificates directly
(``pathlen=0``), no intermediate. A certificate is withdrawn by :func:`revoke`, which adds it
to the CA's certificate revocation list (``crl.pem``, signed by the CA); servers given that
file refuse the certificate (:mod:`catalog.security.revocation`). A CRL rather than OCSP:
the grid is a few dozen hosts provisioned by Ansible, which can copy one small signed file
to each of them; an OCSP responder would be one more service every handshake depends on.

Host certificates carry ``OU=host`` in their subject; certificates issued for clients only
(researchers' tools) carry ``OU=user``. The catalog's access policy uses that to tell a grid
host (allowed to publish) from a person holding a client certificate.

Files written (private keys mode 0600, never overwritten unless ``force=True``)::

    <ca_dir>/ca.key  <ca_dir>/ca.crt  <ca_dir>/crl.pem
    <out_dir>/<name>.key  <out_dir>/<name>.crt  <out_dir>/ca.crt
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from catalog.security.errors import FileExistsRefused, PkiError

KeyType = Literal["ec", "rsa"]
Role = Literal["server", "client"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

CA_KEY_FILE = "ca.key"
CA_CERT_FILE = "ca.crt"
CRL_FILE = "crl.pem"
CA_VALID_DAYS = 3650
#: A CRL is re-signed on every revocation and by ``gridpacs pki crl``. Past its next update
#: OpenSSL (DICOM TLS) refuses every client, so it lives long; servers warn when it is stale.
CRL_VALID_DAYS = 180
#: Revocation reasons an operator may give (RFC 5280 5.3.1), by their CLI names.
REVOCATION_REASONS = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key-compromise": x509.ReasonFlags.key_compromise,
    "superseded": x509.ReasonFlags.superseded,
    "cessation-of-operation": x509.ReasonFlags.cessation_of_operation,
    "affiliation-changed": x509.ReasonFlags.affiliation_changed,
}
#: Leaf certificates live one year by default and two at most: short enough that a leaked
#: key expires, long enough that rotation is a yearly chore and not a weekly one.
LEAF_VALID_DAYS = 365
LEAF_MAX_DAYS = 730
UNIT_HOST = "host"
UNIT_USER = "user"
# Clock skew between hosts must not make a fresh certificate "not yet valid".
_BACKDATE = dt.timedelta(minutes=5)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$")
_EKU = {"server": ExtendedKeyUsageOID.SERVER_AUTH, "client": ExtendedKeyUsageOID.CLIENT_AUTH}
_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
}


@dataclass(frozen=True)
class CertFiles:
    """Paths of a key pair on disk (``ca_cert`` is the CA that signed ``cert``)."""

    cert: Path
    key: Path
    ca_cert: Path


@dataclass(frozen=True)
class CertificateInfo:
    """What an operator needs to know about a certificate."""

    subject: str
    issuer: str
    common_name: str
    organizational_unit: str | None
    serial: str
    not_before: dt.datetime
    not_after: dt.datetime
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    is_ca: bool
    extended_key_usage: tuple[str, ...]
    fingerprint_sha256: str

    @property
    def days_left(self) -> int:
        """Whole days until expiry (negative once expired)."""
        return (self.not_after - dt.datetime.now(dt.UTC)).days

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dictionary (times as ISO 8601, UTC)."""
        data = asdict(self)
        data["not_before"] = self.not_before.isoformat()
        data["not_after"] = self.not_after.isoformat()
        data["dns_names"] = list(self.dns_names)
        data["ip_addresses"] = list(self.ip_addresses)
        data["extended_key_usage"] = list(self.extended_key_usage)
        data["days_left"] = self.days_left
        return data


@dataclass(frozen=True)
class RevokedEntry:
    """One revoked certificate, as the CRL lists it."""

    serial: str
    revoked_at: dt.datetime
    reason: str


@dataclass(frozen=True)
class Revocation:
    """What :func:`revoke` did: the entry, the list now in force, whether it was added."""

    entry: RevokedEntry
    crl: CrlInfo
    added: bool


@dataclass(frozen=True)
class CrlInfo:
    """What a CRL says: when it was signed, until when it holds, and what it revokes."""

    path: Path
    number: int
    last_update: dt.datetime
    next_update: dt.datetime
    revoked: tuple[RevokedEntry, ...]

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dictionary (times as ISO 8601, UTC)."""
        return {
            "path": str(self.path),
            "number": self.number,
            "last_update": self.last_update.isoformat(),
            "next_update": self.next_update.isoformat(),
            "revoked": [
                {"serial": e.serial, "revoked_at": e.revoked_at.isoformat(), "reason": e.reason}
                for e in self.revoked
            ],
        }


def init_ca(
    directory: str | os.PathLike[str],
    name: str,
    *,
    key_type: KeyType = "ec",
    valid_days: int = CA_VALID_DAYS,
    force: bool = False,
) -> CertFiles:
    """Create the grid CA: a private key (mode 0600) and a self-signed certificate.

    Parameters
    ----------
    directory
        Where ``ca.key`` and ``ca.crt`` are written (created if missing).
    name
        The grid's name; the CA subject is ``O=<name>, CN=<name> CA`` and every certificate it
        issues carries ``O=<name>``.
    key_type
        ``"ec"`` (P-256, the default: small and fast) or ``"rsa"`` (3072 bits).
    valid_days
        Lifetime of the CA certificate, ten years by default.
    force
        Overwrite an existing CA. Doing so invalidates every certificate it issued.

    Raises
    ------
    FileExistsRefused
        ``ca.key`` or ``ca.crt`` exists and ``force`` is false.
    """
    if not name.strip():
        raise PkiError("the grid name must not be empty")
    if valid_days < 1:
        raise PkiError("valid_days must be at least 1")
    ca_dir = Path(directory)
    key_path, cert_path = ca_dir / CA_KEY_FILE, ca_dir / CA_CERT_FILE
    _refuse_overwrite([key_path, cert_path], force)
    key = _new_key(key_type)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    ca_dir.mkdir(parents=True, exist_ok=True)
    _write_key(key_path, key)
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return CertFiles(cert=cert_path, key=key_path, ca_cert=cert_path)


def issue(
    ca_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    host_name: str,
    *,
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[str] = (),
    roles: Sequence[Role] = ("server", "client"),
    key_type: KeyType = "ec",
    valid_days: int = LEAF_VALID_DAYS,
    force: bool = False,
) -> CertFiles:
    """Issue a key and a certificate for one host (or one client) signed by the grid CA.

    The host name is always a subject alternative name (an IP SAN when it is an address), so
    a client can verify the server by the name it dials. ``roles`` chooses the extended key
    usages; hosts need both because a node is a client of the catalog and a server to peers.
    A certificate with the ``server`` role is a *host* certificate (``OU=host``); a
    client-only one is a *user* certificate (``OU=user``).

    Raises
    ------
    FileExistsRefused
        An output file exists and ``force`` is false.
    PkiError
        Bad name, address, role or lifetime; CA missing or its key not matching its cert.
    """
    name = _check_host_name(host_name)
    if not roles or any(r not in _EKU for r in roles):
        raise PkiError(f"roles must be a non-empty subset of {sorted(_EKU)}, got {list(roles)}")
    if not 1 <= valid_days <= LEAF_MAX_DAYS:
        raise PkiError(f"valid_days must be between 1 and {LEAF_MAX_DAYS}, got {valid_days}")
    ca_cert, ca_key = _load_ca(Path(ca_dir))
    now = dt.datetime.now(dt.UTC)
    not_after = now + dt.timedelta(days=valid_days)
    if not_after > ca_cert.not_valid_after_utc:
        ca_end = f"{ca_cert.not_valid_after_utc:%Y-%m-%d}"
        raise PkiError(
            f"the certificate would outlive the CA (CA expires {ca_end}); "
            "issue a shorter one or rotate the CA"
        )
    out = Path(out_dir)
    key_path, cert_path, ca_copy = out / f"{name}.key", out / f"{name}.crt", out / CA_CERT_FILE
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    same_ca = ca_copy.exists() and ca_copy.read_bytes() == ca_pem
    _refuse_overwrite([key_path, cert_path] + ([] if same_ca else [ca_copy]), force)

    key = _new_key(key_type)
    org = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    unit = UNIT_HOST if "server" in roles else UNIT_USER
    subject = x509.Name(
        [
            *([x509.NameAttribute(NameOID.ORGANIZATION_NAME, str(org[0].value))] if org else []),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False, rsa_key=key_type == "rsa"), critical=True)
        .add_extension(x509.ExtendedKeyUsage([_EKU[r] for r in dict.fromkeys(roles)]), False)
        .add_extension(_san(name, dns_names, ip_addresses), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    _write_key(key_path, key)
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    if not same_ca:
        _write_public(ca_copy, ca_pem)
    return CertFiles(cert=cert_path, key=key_path, ca_cert=ca_copy)


def revoke(
    ca_dir: str | os.PathLike[str],
    certificate: str | os.PathLike[str],
    *,
    reason: str = "unspecified",
    valid_days: int = CRL_VALID_DAYS,
) -> Revocation:
    """Add a certificate to the CA's revocation list and re-sign it (``<ca_dir>/crl.pem``).

    ``certificate`` is the PEM file of the certificate, or its serial number in hex as
    ``gridpacs pki show`` prints it (for a certificate whose file is gone). A file must have
    been issued by this CA. Revoking a revoked certificate changes nothing (the list is not
    re-signed, so provisioning can run it again and again).

    Raises
    ------
    PkiError
        Unknown reason, a certificate of another CA, a serial that is no hex number, CA or
        existing CRL unreadable.
    """
    if reason not in REVOCATION_REASONS:
        raise PkiError(f"reason must be one of {', '.join(REVOCATION_REASONS)}, got {reason!r}")
    ca_cert, ca_key = _load_ca(Path(ca_dir))
    serial = _serial_of(certificate, ca_cert)
    old = _load_crl(Path(ca_dir), ca_cert)
    entries = list(old) if old is not None else []
    existing = next((e for e in entries if e.serial_number == serial), None)
    if existing is not None and old is not None:
        return Revocation(_entry(existing), describe_crl(old, Path(ca_dir) / CRL_FILE), False)
    added = (
        x509.RevokedCertificateBuilder()
        .serial_number(serial)
        .revocation_date(dt.datetime.now(dt.UTC))
        .add_extension(x509.CRLReason(REVOCATION_REASONS[reason]), critical=False)
        .build()
    )
    info = _sign_crl(Path(ca_dir), ca_cert, ca_key, [*entries, added], old, valid_days)
    return Revocation(_entry(added), info, True)


def issue_crl(
    ca_dir: str | os.PathLike[str],
    *,
    valid_days: int = CRL_VALID_DAYS,
    renew_within_days: int | None = None,
) -> tuple[bool, CrlInfo]:
    """Re-sign the CA's revocation list with a new next update (an empty one if none yet);
    with ``renew_within_days``, only when its next update is that close (or past).

    Returns (whether the list was signed anew, the list). Run it before the next update
    passes, and copy the file to every server again."""
    ca_cert, ca_key = _load_ca(Path(ca_dir))
    old = _load_crl(Path(ca_dir), ca_cert)
    if old is not None and renew_within_days is not None:
        info = describe_crl(old, Path(ca_dir) / CRL_FILE)
        if info.next_update - dt.datetime.now(dt.UTC) > dt.timedelta(days=renew_within_days):
            return False, info
    return True, _sign_crl(Path(ca_dir), ca_cert, ca_key, list(old or []), old, valid_days)


def describe_crl(crl: x509.CertificateRevocationList, path: Path) -> CrlInfo:
    """What ``crl`` says, in an operator's terms."""
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = 0
    next_update = crl.next_update_utc
    return CrlInfo(
        path=path,
        number=number,
        last_update=crl.last_update_utc,
        next_update=next_update if next_update is not None else crl.last_update_utc,
        revoked=tuple(_entry(e) for e in crl),
    )


def load_crl(pem: bytes, ca_cert: x509.Certificate) -> x509.CertificateRevocationList:
    """Parse a PEM CRL and check that ``ca_cert`` signed it.

    Raises
    ------
    PkiError
        Not a PEM CRL, or not signed by ``ca_cert`` (another grid's, or tampered with).
    """
    try:
        crl = x509.load_pem_x509_crl(pem)
    except ValueError as exc:
        raise PkiError(f"not a PEM certificate revocation list: {exc}") from exc
    public_key = ca_cert.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise PkiError(f"unsupported CA key type {type(public_key).__name__}")
    if crl.issuer != ca_cert.subject or not crl.is_signature_valid(public_key):
        raise PkiError("the revocation list is not signed by this grid's CA")
    return crl


def inspect(cert: str | os.PathLike[str] | bytes) -> CertificateInfo:
    """Describe a PEM certificate given as a path or as bytes."""
    pem = cert if isinstance(cert, bytes) else _read(Path(cert), "certificate")
    return describe(load_certificate(pem))


def describe(cert: x509.Certificate) -> CertificateInfo:
    """Describe an already-parsed certificate."""
    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
        ips = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        pass
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    try:
        eku_ext = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        eku = tuple(_EKU_NAMES.get(oid, oid.dotted_string) for oid in eku_ext)
    except x509.ExtensionNotFound:
        eku = ()
    return CertificateInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        common_name=_first(cert.subject, NameOID.COMMON_NAME) or "",
        organizational_unit=_first(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME),
        serial=format(cert.serial_number, "x"),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        dns_names=dns,
        ip_addresses=ips,
        is_ca=is_ca,
        extended_key_usage=eku,
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
    )


def load_certificate(pem: bytes) -> x509.Certificate:
    """Parse one PEM certificate, raising :class:`PkiError` on garbage."""
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise PkiError(f"not a PEM certificate: {exc}") from exc


def issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    """True when ``cert`` carries a valid signature of ``ca_cert`` (no time or name checks)."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


# -- internals -------------------------------------------------------------------------------


def _new_key(key_type: KeyType) -> PrivateKey:
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    raise PkiError(f"key type must be 'ec' or 'rsa', got {key_type!r}")


def _key_usage(*, ca: bool, rsa_key: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=rsa_key and not ca,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _check_host_name(host_name: str) -> str:
    # The name becomes a file name and a DNS SAN: keep it to host-name characters.
    if not _NAME_RE.match(host_name) or ".." in host_name:
        raise PkiError(f"invalid host name {host_name!r}: use letters, digits, '.' and '-' only")
    return host_name


def _san(
    host_name: str, dns_names: Iterable[str], ip_addresses: Iterable[str]
) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    seen: set[str] = set()

    def add_ip(text: str) -> None:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError as exc:
            raise PkiError(f"invalid IP address {text!r}") from exc
        if f"ip:{ip}" not in seen:
            seen.add(f"ip:{ip}")
            entries.append(x509.IPAddress(ip))

    def add_dns(text: str) -> None:
        if not text or not _NAME_RE.match(text.removeprefix("*.")):
            raise PkiError(f"invalid DNS name {text!r}")
        if f"dns:{text.lower()}" not in seen:
            seen.add(f"dns:{text.lower()}")
            entries.append(x509.DNSName(text))

    try:
        ipaddress.ip_address(host_name)
        add_ip(host_name)
    except ValueError:
        add_dns(host_name)
    for name in dns_names:
        add_dns(name)
    for text in ip_addresses:
        add_ip(text)
    return x509.SubjectAlternativeName(entries)


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, PrivateKey]:
    cert = load_certificate(_read(ca_dir / CA_CERT_FILE, "CA certificate"))
    try:
        key = serialization.load_pem_private_key(_read(ca_dir / CA_KEY_FILE, "CA key"), None)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"cannot load the CA key in {ca_dir}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PkiError(f"unsupported CA key type {type(key).__name__}")
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if key.public_key().public_bytes(enc, pub) != cert.public_key().public_bytes(enc, pub):
        raise PkiError(f"the CA key in {ca_dir} does not match the CA certificate")
    return cert, key


def _serial_of(certificate: str | os.PathLike[str], ca_cert: x509.Certificate) -> int:
    path = Path(certificate)
    if path.is_file():
        cert = load_certificate(_read(path, "certificate"))
        if not issued_by(cert, ca_cert):
            raise PkiError(f"{path} was not issued by this CA")
        return int(cert.serial_number)
    text = str(certificate).replace(":", "").lower().removeprefix("0x")
    if not text or len(text) > 40 or any(c not in "0123456789abcdef" for c in text):
        raise PkiError(f"{certificate!s} is neither a certificate file nor a serial in hex")
    return int(text, 16)


def _load_crl(ca_dir: Path, ca_cert: x509.Certificate) -> x509.CertificateRevocationList | None:
    path = ca_dir / CRL_FILE
    if not path.exists():
        return None
    return load_crl(_read(path, "revocation list"), ca_cert)


def _sign_crl(
    ca_dir: Path,
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    entries: list[x509.RevokedCertificate],
    old: x509.CertificateRevocationList | None,
    valid_days: int,
) -> CrlInfo:
    if not 1 <= valid_days <= CA_VALID_DAYS:
        raise PkiError(f"valid_days must be between 1 and {CA_VALID_DAYS}, got {valid_days}")
    number = describe_crl(old, ca_dir / CRL_FILE).number + 1 if old is not None else 1
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - _BACKDATE)
        .next_update(now + dt.timedelta(days=valid_days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    for entry in entries:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca_key, hashes.SHA256())
    path = ca_dir / CRL_FILE
    _write_public(path, crl.public_bytes(serialization.Encoding.PEM))
    return describe_crl(crl, path)


def _entry(revoked: x509.RevokedCertificate) -> RevokedEntry:
    try:
        flag = revoked.extensions.get_extension_for_class(x509.CRLReason).value.reason
        reason = next((k for k, v in REVOCATION_REASONS.items() if v == flag), flag.value)
    except x509.ExtensionNotFound:
        reason = "unspecified"
    return RevokedEntry(
        serial=format(revoked.serial_number, "x"),
        revoked_at=revoked.revocation_date_utc,
        reason=reason,
    )


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise PkiError(f"{what} not found: {path}") from exc
    except OSError as exc:
        raise PkiError(f"cannot read {what} {path}: {exc.strerror}") from exc


def _refuse_overwrite(paths: Iterable[Path], force: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise FileExistsRefused(
            f"refusing to overwrite {', '.join(existing)} (use --force to replace)"
        )


def _write_key(path: Path, key: PrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _atomic_write(path, pem, 0o600)


def _write_public(path: Path, data: bytes) -> None:
    _atomic_write(path, data, 0o644)


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    # The temporary file is created with its final mode, so a key is never world-readable,
    # not even for an instant, and a crash never leaves a half-written file under the name.
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # the umask may have removed bits from a public file
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _first(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    attrs = name.get_attributes_for_oid(oid)
    return str(attrs[0].value) if attrs else None
