"""Researchers' API tokens: issue, authenticate, revoke; only keyed hashes are stored.

A token reads ``gpt_<id>_<secret>``. The id is public (it names the token in lists, logs and
the audit log); the secret is 32 random bytes (``secrets.token_urlsafe(32)``). The database
keeps ``HMAC-SHA-256(pepper, token)`` where the pepper is a server-side secret read from a
file: a stolen database alone yields neither usable tokens nor a way to test guesses offline.
A slow hash (scrypt, argon2) would add nothing for 256-bit random secrets and would cost a
hash per RPC.
"""

from __future__ import annotations

import builtins
import datetime as dt
import hashlib
import hmac
import os
import re
import secrets
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from catalog.security.errors import (
    InvalidToken,
    PepperError,
    TokenError,
    TokenExpired,
    TokenNotFound,
    TokenRevoked,
    TokenStoreUnavailable,
)
from catalog.security.models import ApiToken, TokenGrant
from catalog.security.principal import ALL_COLLECTIONS, Principal, PrincipalKind, Role

TOKEN_PREFIX = "gpt_"
MIN_PEPPER_BYTES = 32
_ID_BYTES = 6
_TOKEN_RE = re.compile(r"^gpt_([0-9a-f]{12})_([A-Za-z0-9_-]{32,128})$")
_COLLECTION_RE = re.compile(r"^(\*|[A-Za-z0-9][A-Za-z0-9._-]{0,199})$")
# Compared against when the id is unknown, so a miss costs the same as a wrong secret.
_DUMMY_HASH = "0" * 64


@dataclass(frozen=True)
class TokenInfo:
    """A token as listed to an administrator (never includes the secret)."""

    id: str
    user: str
    grants: Mapping[str, Role]
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    description: str

    def status(self, now: dt.datetime | None = None) -> str:
        """``active``, ``expired`` or ``revoked``."""
        now = now or dt.datetime.now(dt.UTC)
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dictionary."""
        return {
            "id": self.id,
            "user": self.user,
            "grants": {c: r.value for c, r in sorted(self.grants.items())},
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "status": self.status(),
            "description": self.description,
        }


@dataclass(frozen=True)
class IssuedToken:
    """A freshly created token: ``plaintext`` is shown once and never stored."""

    plaintext: str
    info: TokenInfo


def load_pepper(path: str | os.PathLike[str]) -> bytes:
    """Read the server-side pepper, refusing a short or group/world-readable file."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
        data = p.read_bytes().strip()
    except FileNotFoundError as exc:
        raise PepperError(f"pepper file not found: {p}") from exc
    except OSError as exc:
        raise PepperError(f"cannot read pepper file {p}: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PepperError(f"pepper file {p} is accessible by group/others; chmod 600 it")
    if len(data) < MIN_PEPPER_BYTES:
        raise PepperError(f"pepper file {p} holds {len(data)} bytes; at least 32 are needed")
    return data


def write_pepper(path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Create a new pepper file (64 hex characters, mode 0600); refuses to overwrite.

    Replacing the pepper invalidates every token issued under the old one.
    """
    p = Path(path)
    if p.exists() and not force:
        raise PepperError(f"refusing to overwrite pepper file {p} (use --force)")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32) + "\n")
    os.replace(tmp, p)
    return p


def parse_grants(items: Mapping[str, str | Role]) -> dict[str, Role]:
    """Validate ``{collection: role}``; ``*`` means every collection."""
    grants: dict[str, Role] = {}
    for collection, role in items.items():
        if not _COLLECTION_RE.match(collection):
            raise TokenError(f"invalid collection name {collection!r}")
        try:
            grants[collection] = role if isinstance(role, Role) else Role.parse(role)
        except ValueError as exc:
            raise TokenError(str(exc)) from exc
    return grants


class TokenStore:
    """Tokens in the catalog database (tables from :mod:`catalog.security.models`).

    Parameters
    ----------
    engine
        The catalog's SQLAlchemy engine; each call opens and closes its own session.
    pepper
        The server-side secret (see :func:`load_pepper`).
    clock
        Returns the current UTC time; tests pass their own to cross an expiry.
    """

    def __init__(
        self,
        engine: sa.Engine,
        pepper: bytes,
        *,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        if len(pepper) < MIN_PEPPER_BYTES:
            raise PepperError(f"the pepper must hold at least {MIN_PEPPER_BYTES} bytes")
        self._engine = engine
        self._pepper = pepper
        self._clock = clock

    def create(
        self,
        user: str,
        grants: Mapping[str, str | Role],
        expires_in: dt.timedelta | None,
        *,
        description: str = "",
    ) -> IssuedToken:
        """Issue a token for ``user`` with ``grants``; the plaintext is returned only here."""
        user = user.strip()
        if not user or len(user) > 200:
            raise TokenError("the user name must be 1 to 200 characters")
        checked = parse_grants(grants)
        if not checked:
            raise TokenError("a token needs at least one grant (collection=role)")
        if expires_in is not None and expires_in <= dt.timedelta(0):
            raise TokenError("expires_in must be positive")
        now = self._clock()
        token_id = secrets.token_hex(_ID_BYTES)
        plaintext = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
        row = ApiToken(
            id=token_id,
            user=user,
            secret_hash=self._hash(plaintext),
            created_at=now,
            expires_at=now + expires_in if expires_in is not None else None,
            revoked_at=None,
            description=description,
            grants=[TokenGrant(collection=c, role=r.value) for c, r in checked.items()],
        )
        with Session(self._engine) as session, session.begin():
            session.add(row)
            session.flush()
            info = _info(row)
        return IssuedToken(plaintext=plaintext, info=info)

    def authenticate(self, token: str) -> Principal:
        """The principal a token stands for.

        Raises
        ------
        InvalidToken
            Malformed, unknown, wrong secret (checked in constant time), or — as the
            subclasses :class:`TokenExpired` / :class:`TokenRevoked` — no longer valid.
        """
        match = _TOKEN_RE.match(token.strip())
        if not match:
            raise InvalidToken("malformed token")
        try:
            with Session(self._engine) as session:
                row = session.get(ApiToken, match.group(1))
                stored = row.secret_hash if row is not None else _DUMMY_HASH
                info = _info(row) if row is not None else None
        except SQLAlchemyError as exc:
            raise TokenStoreUnavailable(f"cannot read tokens: {exc}") from exc
        if not hmac.compare_digest(self._hash(token.strip()), stored) or info is None:
            raise InvalidToken("unknown token or wrong secret")
        if info.revoked_at is not None:
            raise TokenRevoked(f"token {info.id} was revoked")
        if info.expires_at is not None and info.expires_at <= self._clock():
            raise TokenExpired(f"token {info.id} expired")
        return Principal(info.user, info.grants, PrincipalKind.TOKEN, info.id)

    def revoke(self, token_id: str) -> TokenInfo:
        """Revoke a token (idempotent: revoking twice keeps the first time)."""
        with Session(self._engine) as session, session.begin():
            row = session.get(ApiToken, token_id.removeprefix(TOKEN_PREFIX))
            if row is None:
                raise TokenNotFound(f"no token with id {token_id!r}")
            if row.revoked_at is None:
                row.revoked_at = self._clock()
            session.flush()
            return _info(row)

    def list(self, *, user: str | None = None) -> builtins.list[TokenInfo]:
        """Every token (optionally one user's), newest first; secrets are never returned."""
        stmt = sa.select(ApiToken).order_by(ApiToken.created_at.desc(), ApiToken.id)
        if user is not None:
            stmt = stmt.where(ApiToken.user == user)
        with Session(self._engine) as session:
            return [_info(row) for row in session.scalars(stmt)]

    def _hash(self, token: str) -> str:
        return hmac.new(self._pepper, token.encode("utf-8"), hashlib.sha256).hexdigest()


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    # SQLite hands back naive datetimes; everything we store is UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=dt.UTC)


def _info(row: ApiToken) -> TokenInfo:
    created = _utc(row.created_at)
    assert created is not None
    return TokenInfo(
        id=row.id,
        user=row.user,
        grants={g.collection: Role(g.role) for g in row.grants},
        created_at=created,
        expires_at=_utc(row.expires_at),
        revoked_at=_utc(row.revoked_at),
        description=row.description,
    )


__all__ = [
    "ALL_COLLECTIONS",
    "IssuedToken",
    "TokenInfo",
    "TokenStore",
    "load_pepper",
    "parse_grants",
    "write_pepper",
]
