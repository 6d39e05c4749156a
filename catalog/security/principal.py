"""Who is calling, and what they may do: the principal and its per-collection roles.

Authentication (a token, a host certificate) produces a :class:`Principal`; the catalog's
servicer asks it questions (``can_read``, ``is_admin``) with the collection named in the
request. Roles are ordered: ``admin`` includes ``reader``. The collection ``*`` grants a role
on every collection, present and future.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from catalog.security.errors import PermissionDenied

ALL_COLLECTIONS = "*"


class Role(StrEnum):
    """A role on one collection."""

    READER = "reader"
    ADMIN = "admin"

    @classmethod
    def parse(cls, text: str) -> Role:
        """The role named ``text``, or ``ValueError`` naming the allowed ones."""
        try:
            return cls(text.strip().lower())
        except ValueError:
            allowed = ", ".join(r.value for r in cls)
            raise ValueError(f"unknown role {text!r} (allowed: {allowed})") from None


_RANK = {Role.READER: 1, Role.ADMIN: 2}


class PrincipalKind(StrEnum):
    """How the principal was authenticated."""

    TOKEN = "token"  # a researcher's bearer token
    HOST = "host"  # a grid host's mTLS client certificate


@dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    ``name`` is the user a token was issued to, or ``cert:<CN>`` for a host. Hosts carry no
    collection grants: what they may call is decided per method by the access policy.
    """

    name: str
    grants: Mapping[str, Role] = field(default_factory=dict)
    kind: PrincipalKind = PrincipalKind.TOKEN
    token_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "grants", MappingProxyType(dict(self.grants)))

    def role_on(self, collection: str) -> Role | None:
        """The strongest role held on ``collection`` (directly or through ``*``)."""
        roles = [r for c in (collection, ALL_COLLECTIONS) if (r := self.grants.get(c))]
        return max(roles, key=_RANK.__getitem__, default=None)

    def can_read(self, collection: str) -> bool:
        """True when the principal may query and retrieve from ``collection``."""
        return self.role_on(collection) is not None

    def is_admin(self, collection: str) -> bool:
        """True when the principal administers ``collection``."""
        return self.role_on(collection) is Role.ADMIN

    @property
    def reads_all(self) -> bool:
        """True when a ``*`` grant makes every collection readable."""
        return ALL_COLLECTIONS in self.grants

    def readable_collections(self) -> frozenset[str]:
        """Collections named in the grants; contains ``*`` when all are readable."""
        return frozenset(self.grants)

    def filter_readable(self, collections: Iterable[str]) -> list[str]:
        """The subset of ``collections`` this principal may read, order kept."""
        return [c for c in collections if self.can_read(c)]

    def require_read(self, collection: str) -> None:
        """Raise :class:`PermissionDenied` unless ``collection`` is readable."""
        if not self.can_read(collection):
            raise PermissionDenied(f"{self.name} may not read collection {collection!r}")

    def require_admin(self, collection: str) -> None:
        """Raise :class:`PermissionDenied` unless the principal administers ``collection``."""
        if not self.is_admin(collection):
            raise PermissionDenied(f"{self.name} is not an admin of collection {collection!r}")
