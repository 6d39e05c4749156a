"""The audit log on SQLite and PostgreSQL: append, query, append-only, tamper evidence."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from catalog.security.audit import GENESIS_HASH, AuditLog, Pruned
from catalog.security.errors import AuditError
from catalog.security.models import ANCHOR_TABLE, AUDIT_TABLE, append_only_ddl, create_all

Q = "/gridpacs.catalog.v1.CatalogService/QueryStudies"
R = "/gridpacs.catalog.v1.CatalogService/FetchInstances"


def _fill(log: AuditLog) -> None:
    log.record("alice", Q, {"collection": "lung"}, "ipv4:10.0.0.1:5000", "OK")
    log.record("bob", R, {"study": "1.2.3", "count": 2}, "ipv4:10.0.0.2:5001", "OK")
    log.record("alice", R, {"study": "1.2.4"}, "ipv4:10.0.0.1:5002", "PERMISSION_DENIED")


def _drop_triggers(engine: sa.Engine) -> None:
    """What an attacker with DDL rights on the database does first."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql(f"DROP TRIGGER {AUDIT_TABLE}_no_update")
            conn.exec_driver_sql(f"DROP TRIGGER {AUDIT_TABLE}_no_delete")
        else:
            conn.exec_driver_sql(f"DROP TRIGGER {AUDIT_TABLE}_no_change ON {AUDIT_TABLE}")


def test_records_are_chained_and_read_back(engine: sa.Engine) -> None:
    log = AuditLog(engine)
    _fill(log)
    rows = log.query()
    assert [(r.seq, r.actor, r.action, r.outcome) for r in rows] == [
        (1, "alice", Q, "OK"),
        (2, "bob", R, "OK"),
        (3, "alice", R, "PERMISSION_DENIED"),
    ]
    assert rows[0].prev_hash == GENESIS_HASH
    assert rows[1].prev_hash == rows[0].row_hash and rows[2].prev_hash == rows[1].row_hash
    assert rows[1].target == {"study": "1.2.3", "count": 2}
    assert rows[0].peer == "ipv4:10.0.0.1:5000"
    assert rows[0].at.tzinfo is not None
    assert log.verify() == []
    assert log.head() == (3, rows[2].row_hash)


def test_query_filters_by_actor_action_since_and_limit(engine: sa.Engine) -> None:
    log = AuditLog(engine)
    _fill(log)
    assert [r.seq for r in log.query(actor="alice")] == [1, 3]
    assert [r.seq for r in log.query(action=R)] == [2, 3]
    assert [r.seq for r in log.query(action="/gridpacs.catalog.v1.CatalogService/Fetch*")] == [
        2,
        3,
    ]
    assert log.query(action="/gridpacs%") == []  # LIKE metacharacters are literal
    assert [r.seq for r in log.query(limit=2)] == [2, 3]  # the newest two
    cut = log.query()[1].at
    assert [r.seq for r in log.query(since=cut)] == [2, 3]
    assert [r.seq for r in log.query(since=cut, limit=1)] == [2]
    future = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    assert log.query(since=future) == []


def test_update_and_delete_are_rejected_by_the_database(engine: sa.Engine) -> None:
    log = AuditLog(engine)
    _fill(log)
    for statement in (
        f"UPDATE {AUDIT_TABLE} SET actor = 'mallory' WHERE seq = 2",
        f"DELETE FROM {AUDIT_TABLE} WHERE seq = 2",
        f"DELETE FROM {AUDIT_TABLE}",
    ):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
            conn.exec_driver_sql(statement)
    assert [r.actor for r in log.query()] == ["alice", "bob", "alice"]
    assert log.verify() == []


def test_truncate_is_rejected_on_postgresql(pg_url: str) -> None:
    engine = sa.create_engine(pg_url)
    try:
        create_all(engine)
        AuditLog(engine).record("a", Q, {}, "p", "OK")
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
            conn.exec_driver_sql(f"TRUNCATE {AUDIT_TABLE}")
        assert len(AuditLog(engine).query()) == 1
    finally:
        engine.dispose()


def test_verify_detects_a_row_altered_in_place(engine: sa.Engine) -> None:
    log = AuditLog(engine)
    _fill(log)
    _drop_triggers(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE {AUDIT_TABLE} SET actor = 'mallory' WHERE seq = 2")
    assert log.verify() == ["seq 2: row hash mismatch (row altered)"]


def test_verify_detects_a_rewritten_row_even_with_a_recomputed_hash(engine: sa.Engine) -> None:
    log = AuditLog(engine)
    _fill(log)
    _drop_triggers(engine)
    # The attacker fixes row 2's own hash, but row 3 still points at the old one.
    from catalog.security.audit import canonical, chain_hash

    row = log.query()[1]
    forged = chain_hash(
        row.prev_hash,
        canonical(row.seq, row.at, "mallory", row.action, row.target, row.peer, row.outcome),
    )
    with engine.begin() as conn:
        conn.execute(
            sa.text(f"UPDATE {AUDIT_TABLE} SET actor = 'mallory', row_hash = :h WHERE seq = 2"),
            {"h": forged},
        )
    assert log.verify() == ["seq 3: prev_hash does not match the row before"]


def test_verify_detects_deleted_rows_and_a_cut_tail(engine: sa.Engine) -> None:
    log = AuditLog(engine)
    _fill(log)
    log.record("carol", Q, {}, "p", "OK")
    head = log.head()
    _drop_triggers(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DELETE FROM {AUDIT_TABLE} WHERE seq = 2")
    problems = log.verify()
    assert "seq 3: rows 2..2 are missing" in problems
    assert "seq 3: prev_hash does not match the row before" in problems
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DELETE FROM {AUDIT_TABLE} WHERE seq = 4")
    # Without a recorded head a cut tail is invisible; with one it is not.
    assert "seq 4" not in " ".join(log.verify())
    assert "log ends at seq 3 but seq 4 was recorded earlier" in log.verify(expected_head=head)


def test_concurrent_writers_keep_one_unbroken_chain(engine: sa.Engine) -> None:
    log = AuditLog(engine)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(10):
                AuditLog(engine).record(f"user{n}", Q, {"i": i}, "p", "OK")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert log.head()[0] == 40 and log.verify() == []


def test_a_huge_target_is_replaced_by_its_digest(sqlite_engine: sa.Engine) -> None:
    rec = AuditLog(sqlite_engine).record("a", Q, {"blob": "x" * 20000}, "p", "OK")
    assert rec.target["truncated"] is True and len(rec.target["sha256"]) == 64
    assert AuditLog(sqlite_engine).verify() == []


def test_a_missing_table_is_an_audit_error(sqlite_url: str) -> None:
    engine = sa.create_engine(sqlite_url)
    with pytest.raises(AuditError):
        AuditLog(engine).record("a", Q, {}, "p", "OK")
    engine.dispose()


def test_create_all_is_idempotent_and_unknown_dialects_get_no_silent_default(
    engine: sa.Engine,
) -> None:
    create_all(engine)
    create_all(engine)
    AuditLog(engine).record("a", Q, {}, "p", "OK")
    with pytest.raises(ValueError, match="no append-only triggers"):
        append_only_ddl("mysql")


_WRITER = """
import sys, time
from pathlib import Path
import sqlalchemy as sa
from catalog.security.audit import AuditLog
url, name, ready, go = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
log = AuditLog(sa.create_engine(url, connect_args={"timeout": 30}))
ready.touch()
deadline = time.monotonic() + 30
while not go.exists() and time.monotonic() < deadline:  # start together
    time.sleep(0.005)
for i in range(60):
    log.record(name, "/x/Write", {"i": i}, "p", "OK")
"""


def test_writers_in_separate_processes_never_fork_the_chain(
    sqlite_url: str, tmp_path: Path
) -> None:
    # Both processes read the same head now and then; the unique seq makes the loser retry.
    engine = sa.create_engine(sqlite_url)
    create_all(engine)
    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(root)}
    go = tmp_path / "go"
    ready = [tmp_path / f"ready{n}" for n in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, sqlite_url, f"w{n}", str(ready[n]), str(go)],
            env=env,
            cwd=root,
        )
        for n in range(2)
    ]
    try:
        deadline = time.monotonic() + 30
        while not all(r.exists() for r in ready) and time.monotonic() < deadline:
            time.sleep(0.01)
        go.touch()
        assert [p.wait(timeout=60) for p in procs] == [0, 0]
    finally:
        for p in procs:
            p.kill()
    log = AuditLog(engine)
    assert log.head()[0] == 120 and log.verify() == []
    assert {r.actor for r in log.query(limit=120)} == {"w0", "w1"}
    engine.dispose()


def test_pruning_keeps_the_chain_verifiable_from_its_anchor(engine: sa.Engine) -> None:
    log = AuditLog(engine)
    for n in range(6):
        log.record(f"u{n}", Q, {"n": n}, "p", "OK")
    rows = log.query()
    cut = rows[4].at  # rows 1-4 are older than the fifth
    assert log.prune(before=cut, up_to_seq=3) == Pruned(3, 3)  # an export still owes row 4
    assert [r.seq for r in log.query()] == [4, 5, 6]
    assert log.anchor() == (3, rows[2].row_hash)
    assert log.verify() == []
    assert log.verify(expected_head=(2, rows[1].row_hash)) == []  # recorded before pruning
    assert log.verify(expected_head=(3, "f" * 64)) == ["seq 3: hash differs from the recorded head"]
    assert log.prune(before=cut) == Pruned(1, 4)
    assert log.prune(before=cut) == Pruned(0, 4)  # nothing older left
    log.record("after", Q, {}, "p", "OK")
    assert log.verify() == []
    assert [r.seq for r in log.query()] == [5, 6, 7]


def test_a_fully_pruned_log_goes_on_from_its_anchor(engine: sa.Engine) -> None:
    log = AuditLog(engine)
    _fill(log)
    last = log.head()
    future = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    assert log.prune(before=future) == Pruned(3, 3)
    assert log.query() == [] and log.head() == last  # the anchor is the head
    record = log.record("next", Q, {}, "p", "OK")
    assert (record.seq, record.prev_hash) == (4, last[1])
    assert log.verify() == []


def test_only_rows_at_or_below_the_anchor_can_be_deleted(engine: sa.Engine) -> None:
    log = AuditLog(engine)
    _fill(log)
    log.prune(before=log.query()[1].at)  # row 1
    statements = [
        f"DELETE FROM {AUDIT_TABLE} WHERE seq = 3",  # above the anchor
        f"UPDATE {ANCHOR_TABLE} SET seq = 0",  # the anchor backwards
        f"DELETE FROM {ANCHOR_TABLE}",
    ]
    for statement in statements:
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
            conn.exec_driver_sql(statement)
    assert [r.seq for r in log.query()] == [2, 3] and log.anchor()[0] == 1
    assert log.verify() == []
