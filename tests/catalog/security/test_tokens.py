"""API tokens on SQLite and PostgreSQL: issue, authenticate, revoke, expire, hash-only storage."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
import sqlalchemy as sa

from catalog.security.errors import (
    InvalidToken,
    PepperError,
    TokenError,
    TokenExpired,
    TokenNotFound,
    TokenRevoked,
)
from catalog.security.principal import Principal, PrincipalKind, Role
from catalog.security.tokens import TokenStore, load_pepper, write_pepper
from tests.catalog.security.conftest import PEPPER, FakeClock


def test_a_created_token_authenticates_as_its_user_with_its_grants(engine: sa.Engine) -> None:
    store = TokenStore(engine, PEPPER)
    issued = store.create("alice", {"lung": "reader", "brain": "admin"}, dt.timedelta(days=30))
    assert issued.plaintext.startswith(f"gpt_{issued.info.id}_")
    principal = store.authenticate(issued.plaintext)
    assert principal.name == "alice" and principal.kind is PrincipalKind.TOKEN
    assert principal.token_id == issued.info.id
    assert dict(principal.grants) == {"lung": Role.READER, "brain": Role.ADMIN}


def test_wrong_secret_unknown_id_and_garbage_are_invalid(engine: sa.Engine) -> None:
    store = TokenStore(engine, PEPPER)
    token = store.create("alice", {"lung": "reader"}, None).plaintext
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    unknown = "gpt_000000000000_" + token.split("_", 2)[2]
    for bad in (flipped, unknown, "gpt_nope", "", "Bearer " + token):
        with pytest.raises(InvalidToken):
            store.authenticate(bad)


def test_a_token_is_bound_to_the_pepper(engine: sa.Engine) -> None:
    token = TokenStore(engine, PEPPER).create("alice", {"lung": "reader"}, None).plaintext
    with pytest.raises(InvalidToken):
        TokenStore(engine, b"another-pepper-of-at-least-32-bytes!").authenticate(token)


def test_revoked_tokens_fail_and_revoking_is_idempotent(engine: sa.Engine) -> None:
    store = TokenStore(engine, PEPPER)
    issued = store.create("alice", {"*": "reader"}, None)
    first = store.revoke(issued.info.id)
    assert first.status() == "revoked"
    with pytest.raises(TokenRevoked):
        store.authenticate(issued.plaintext)
    assert store.revoke(issued.info.id).revoked_at == first.revoked_at
    with pytest.raises(TokenNotFound):
        store.revoke("ffffffffffff")


def test_tokens_expire(engine: sa.Engine) -> None:
    clock = FakeClock()
    store = TokenStore(engine, PEPPER, clock=clock)
    issued = store.create("bob", {"lung": "reader"}, dt.timedelta(hours=1))
    clock.now += dt.timedelta(minutes=59)
    assert store.authenticate(issued.plaintext).name == "bob"
    clock.now += dt.timedelta(minutes=1)
    with pytest.raises(TokenExpired):
        store.authenticate(issued.plaintext)


def test_only_a_hash_is_stored(engine: sa.Engine, db_url: str) -> None:
    store = TokenStore(engine, PEPPER)
    token = store.create("alice", {"lung": "reader"}, None).plaintext
    secret = token.split("_", 2)[2]
    with engine.connect() as conn:
        rows = [
            tuple(r)
            for t in ("security_api_token", "security_token_grant")
            for r in conn.execute(sa.text(f"SELECT * FROM {t}"))
        ]
    dump = repr(rows)
    assert rows and secret not in dump and token not in dump
    if db_url.startswith("sqlite:///"):
        engine.dispose()
        raw = Path(db_url.removeprefix("sqlite:///")).read_bytes()
        wal = Path(db_url.removeprefix("sqlite:///") + "-wal")
        raw += wal.read_bytes() if wal.exists() else b""
        assert secret.encode() not in raw and b"alice" in raw


def test_list_shows_status_and_never_secrets(engine: sa.Engine) -> None:
    clock = FakeClock()
    store = TokenStore(engine, PEPPER, clock=clock)
    a = store.create("alice", {"lung": "reader"}, dt.timedelta(days=1))
    clock.now += dt.timedelta(seconds=1)
    b = store.create("bob", {"*": "admin"}, None)
    store.revoke(b.info.id)
    listed = store.list()
    assert [t.id for t in listed] == [b.info.id, a.info.id]
    assert [t.to_dict()["status"] for t in listed] == ["revoked", "active"]
    assert [t.id for t in store.list(user="alice")] == [a.info.id]
    assert "secret" not in repr(listed[0].to_dict()) and a.plaintext not in repr(listed)


@pytest.mark.parametrize(
    ("user", "grants", "message"),
    [
        ("alice", {}, "at least one grant"),
        ("alice", {"lung": "writer"}, "unknown role"),
        ("alice", {"bad name": "reader"}, "invalid collection"),
        ("", {"lung": "reader"}, "user name"),
    ],
)
def test_create_validates(
    sqlite_engine: sa.Engine, user: str, grants: dict[str, str], message: str
) -> None:
    with pytest.raises(TokenError, match=message):
        TokenStore(sqlite_engine, PEPPER).create(user, grants, None)


def test_roles_are_per_collection_and_admin_includes_reader() -> None:
    p = Principal("alice", {"lung": Role.READER, "brain": Role.ADMIN})
    assert p.can_read("lung") and not p.is_admin("lung")
    assert p.can_read("brain") and p.is_admin("brain")
    assert not p.can_read("heart") and not p.is_admin("heart")
    assert p.readable_collections() == frozenset({"lung", "brain"})
    assert p.filter_readable(["heart", "lung", "brain"]) == ["lung", "brain"]
    assert not p.reads_all


def test_the_star_grant_covers_every_collection() -> None:
    reader_everywhere = Principal("r", {"*": Role.READER, "lung": Role.ADMIN})
    assert reader_everywhere.can_read("anything") and reader_everywhere.reads_all
    assert not reader_everywhere.is_admin("anything") and reader_everywhere.is_admin("lung")
    assert Principal("a", {"*": Role.ADMIN}).is_admin("brain")


def test_require_raises_permission_denied() -> None:
    from catalog.security.errors import PermissionDenied

    p = Principal("alice", {"lung": Role.READER})
    p.require_read("lung")
    with pytest.raises(PermissionDenied, match="heart"):
        p.require_read("heart")
    with pytest.raises(PermissionDenied, match="admin"):
        p.require_admin("lung")


def test_pepper_file_is_created_private_and_checked(tmp_path: Path) -> None:
    path = write_pepper(tmp_path / "pepper")
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert len(load_pepper(path)) == 64
    with pytest.raises(PepperError, match="refusing"):
        write_pepper(path)
    os.chmod(path, 0o644)
    with pytest.raises(PepperError, match="group/others"):
        load_pepper(path)
    short = tmp_path / "short"
    short.write_text("abc")
    os.chmod(short, 0o600)
    with pytest.raises(PepperError, match="at least 32"):
        load_pepper(short)
    with pytest.raises(PepperError, match="not found"):
        load_pepper(tmp_path / "missing")
