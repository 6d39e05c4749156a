"""Retrieve grants: short-lived, catalog-signed permission for a researcher to fetch studies.

The catalog decides who may read what (tokens, roles, audit); nodes hold the data. A grant
carries that decision to the nodes without the nodes ever seeing a token or the token
database: the catalog signs it with an **Ed25519 grant key**, every node verifies it with the
matching public key. Ed25519 rather than an HMAC shared by catalogs and nodes, so that a
node that can verify grants cannot mint them (a compromised node must not unlock other
sites' data). All catalog replicas sign with the same key (or each with its own; nodes trust
a list of public keys, which is also how the key is rotated).

Wire form: ``gpg1.<base64url(payload JSON)>.<base64url(signature)>``; the signature covers the
text before the last dot. The payload names the user and token, the studies, the
collections with whether identified data may be served from each, the expiry, and — when the
researcher connected to the catalog with a client certificate — that certificate's SHA-256
fingerprint (``cnf``): a grant copied off the researcher's machine is useless without the
key of that certificate.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from catalog.security.errors import FileExistsRefused, PermissionDenied, SecurityError

PREFIX = "gpg1"
METADATA_KEY = "gridpacs-grant"
"""gRPC metadata key under which a researcher's tool presents the grant to a node."""
MAX_GRANT_CHARS = 6000  # stays well below gRPC's default 8 KiB metadata limit
DEFAULT_TTL_S = 900
_CLOCK_SKEW_S = 30


class GrantError(SecurityError):
    """A grant is malformed, forged, expired or signed by an unknown key."""


class GrantKeyError(SecurityError):
    """A grant key file is missing, unreadable, of the wrong type or too open."""


@dataclass(frozen=True)
class Grant:
    """What the catalog allowed: these studies, from these collections, until ``expires_at``.

    ``collections`` maps each collection to whether the principal's role allows identified
    data from it (``admin``); a node serves an identified collection only when it is True.
    """

    user: str
    token_id: str
    studies: frozenset[str]
    collections: Mapping[str, bool]
    issued_at: int
    expires_at: int
    client_fingerprint: str | None = None
    key_id: str = ""
    extra: Mapping[str, object] = field(default_factory=dict)

    def allows(self, study_uid: str, collection: str, *, identified: bool) -> str | None:
        """None when this grant covers the instance; otherwise why not (for the log)."""
        if study_uid not in self.studies:
            return "study not in grant"
        if collection not in self.collections:
            return f"collection {collection!r} not in grant"
        if identified and not self.collections[collection]:
            return f"collection {collection!r} is identified and the role does not allow it"
        return None


def key_id(public: Ed25519PublicKey) -> str:
    """A short, stable name of a public key (first 16 hex digits of its SHA-256)."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class GrantSigner:
    """Signs grants (the catalog side)."""

    def __init__(self, key: Ed25519PrivateKey, *, ttl_s: int = DEFAULT_TTL_S) -> None:
        self._key = key
        self._kid = key_id(key.public_key())
        self.ttl_s = ttl_s

    def sign(
        self,
        *,
        user: str,
        token_id: str,
        studies: Iterable[str],
        collections: Mapping[str, bool],
        client_fingerprint: str | None = None,
        now: float | None = None,
    ) -> tuple[str, int]:
        """The grant text and its expiry (Unix seconds)."""
        issued = int(now if now is not None else time.time())
        payload = {
            "v": 1,
            "kid": self._kid,
            "sub": user,
            "tid": token_id,
            "iat": issued,
            "exp": issued + self.ttl_s,
            "studies": sorted(set(studies)),
            "col": {c: bool(v) for c, v in sorted(collections.items())},
            "cnf": client_fingerprint,
        }
        body = f"{PREFIX}.{_b64(json.dumps(payload, separators=(',', ':')).encode())}"
        grant = f"{body}.{_b64(self._key.sign(body.encode()))}"
        if len(grant) > MAX_GRANT_CHARS:
            raise GrantError("too many studies for one grant; ask for fewer at a time")
        return grant, issued + self.ttl_s


class GrantVerifier:
    """Verifies grants (the node side) against the trusted catalog public keys."""

    def __init__(self, keys: Iterable[Ed25519PublicKey]) -> None:
        self._keys = {key_id(k): k for k in keys}
        if not self._keys:
            raise GrantKeyError("no grant public key to verify with")

    def verify(
        self, text: str, *, client_fingerprint: str | None, now: float | None = None
    ) -> Grant:
        """The grant, or :class:`GrantError` saying what is wrong with it."""
        if len(text) > MAX_GRANT_CHARS:
            raise GrantError("grant too long")
        body, dot, signature = text.strip().rpartition(".")
        prefix, _, encoded = body.partition(".")
        if not dot or prefix != PREFIX or not encoded:
            raise GrantError("malformed grant")
        try:
            payload = json.loads(_unb64(encoded))
            sig = _unb64(signature)
        except (ValueError, binascii.Error) as exc:
            raise GrantError("malformed grant") from exc
        if not isinstance(payload, dict) or payload.get("v") != 1:
            raise GrantError("unsupported grant version")
        key = self._keys.get(str(payload.get("kid")))
        if key is None:
            raise GrantError("grant signed by an unknown key")
        try:
            key.verify(sig, body.encode())
        except InvalidSignature as exc:
            raise GrantError("grant signature does not verify") from exc
        grant = _grant(payload)
        moment = now if now is not None else time.time()
        if grant.expires_at < moment - _CLOCK_SKEW_S:
            raise GrantError("grant expired")
        if grant.issued_at > moment + _CLOCK_SKEW_S:
            raise GrantError("grant issued in the future (clock skew?)")
        if grant.client_fingerprint and grant.client_fingerprint != client_fingerprint:
            raise PermissionDenied("grant is bound to another client certificate")
        return grant


def _grant(payload: Mapping[str, object]) -> Grant:
    try:
        studies = payload["studies"]
        cols = payload["col"]
        assert isinstance(studies, list) and isinstance(cols, dict)
        return Grant(
            user=str(payload["sub"]),
            token_id=str(payload["tid"]),
            studies=frozenset(str(s) for s in studies),
            collections={str(c): bool(v) for c, v in cols.items()},
            issued_at=int(payload["iat"]),  # type: ignore[call-overload]
            expires_at=int(payload["exp"]),  # type: ignore[call-overload]
            client_fingerprint=str(payload["cnf"]) if payload.get("cnf") else None,
            key_id=str(payload["kid"]),
        )
    except (KeyError, TypeError, ValueError, AssertionError) as exc:
        raise GrantError("grant payload incomplete") from exc


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# -- key files -------------------------------------------------------------------------------


@dataclass(frozen=True)
class GrantKeyFiles:
    private: Path
    public: Path


def write_grant_key(directory: Path, *, name: str = "grant", force: bool = False) -> GrantKeyFiles:
    """A new Ed25519 key pair: ``<name>.key`` (0600, catalog replicas only) and ``<name>.pub``
    (every node)."""
    directory.mkdir(parents=True, exist_ok=True)
    files = GrantKeyFiles(directory / f"{name}.key", directory / f"{name}.pub")
    for path in (files.private, files.public):
        if path.exists() and not force:
            raise FileExistsRefused(f"refusing to overwrite {path} (use --force)")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _atomic(files.private, private, 0o600)
    _atomic(files.public, public, 0o644)
    return files


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The catalog's grant key; refuses a group/world-readable file."""
    data = _read(path)
    if path.stat().st_mode & 0o077:
        raise GrantKeyError(f"grant key {path} is accessible by group/others; chmod 600 it")
    try:
        key = serialization.load_pem_private_key(data, None)
    except (ValueError, TypeError) as exc:
        raise GrantKeyError(f"{path}: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise GrantKeyError(f"{path}: not an Ed25519 key (make one with `gridpacs pki grant-key`)")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A catalog grant public key as distributed to nodes."""
    try:
        key = serialization.load_pem_public_key(_read(path))
    except ValueError as exc:
        raise GrantKeyError(f"{path}: not a PEM public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise GrantKeyError(f"{path}: not an Ed25519 public key")
    return key


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise GrantKeyError(f"grant key file not found: {path}") from exc
    except OSError as exc:
        raise GrantKeyError(f"cannot read grant key file {path}: {exc.strerror}") from exc


def _atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)
