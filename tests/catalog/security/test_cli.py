"""``gridpacs pki|token|audit`` as a user runs them.

One ``python -m gridpacs`` subprocess per sub-command proves the mount and the exit codes;
the many variations run the same Typer apps in-process (``CliRunner``), because each
interpreter start costs about two seconds on the shared test machine.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
import typer
from typer.testing import CliRunner, Result

from catalog.security.audit import AuditLog
from catalog.security.cli import audit_app, pki_app, token_app
from catalog.security.models import AUDIT_TABLE

ROOT = Path(__file__).resolve().parents[3]


def gridpacs(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``python -m gridpacs ARGS`` from the repository root."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    env.pop("GRIDPACS_DB_URL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "gridpacs", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr}{proc.stdout}")
    return proc


_APP = typer.Typer()
_APP.add_typer(pki_app, name="pki")
_APP.add_typer(token_app, name="token")
_APP.add_typer(audit_app, name="audit")


def run(*args: str | Path, code: int = 0) -> Result:
    """The same commands in-process; asserts the exit code."""
    env = {"GRIDPACS_DB_URL": None, "COLUMNS": "200"}
    result = CliRunner().invoke(_APP, [str(a) for a in args], env=env)
    assert result.exit_code == code, f"{result.exit_code}: {result.stderr}{result.stdout}"
    return result


def test_pki_init_issue_show_and_refuse_overwrite(tmp_path: Path) -> None:
    run("pki", "init-ca", "--dir", tmp_path / "ca", "--name", "lungs")
    assert (tmp_path / "ca" / "ca.key").stat().st_mode & 0o777 == 0o600
    gridpacs(  # the one subprocess: the sub-app is mounted in `python -m gridpacs`
        "pki",
        "issue",
        "--ca",
        tmp_path / "ca",
        "--out",
        tmp_path / "c1",
        "--name",
        "catalog1",
        "--dns",
        "localhost",
        "--ip",
        "127.0.0.1",
    )
    shown = json.loads(run("pki", "show", tmp_path / "c1" / "catalog1.crt", "--json").stdout)
    assert shown["common_name"] == "catalog1" and shown["organizational_unit"] == "host"
    assert shown["dns_names"] == ["catalog1", "localhost"]
    assert shown["ip_addresses"] == ["127.0.0.1"]
    assert shown["extended_key_usage"] == ["serverAuth", "clientAuth"]
    assert shown["issuer"] == "CN=lungs CA,O=lungs"
    table = run("pki", "show", tmp_path / "c1" / "catalog1.crt").stdout
    assert "catalog1" in table and "127.0.0.1" in table and "days_left" in table

    key_before = (tmp_path / "c1" / "catalog1.key").read_bytes()
    again = run(
        "pki",
        "issue",
        "--ca",
        tmp_path / "ca",
        "--out",
        tmp_path / "c1",
        "--name",
        "catalog1",
        code=2,
    )
    assert "--force" in again.stderr
    assert (tmp_path / "c1" / "catalog1.key").read_bytes() == key_before
    run(
        "pki",
        "issue",
        "--ca",
        tmp_path / "ca",
        "--out",
        tmp_path / "c1",
        "--name",
        "catalog1",
        "--force",
    )
    assert (tmp_path / "c1" / "catalog1.key").read_bytes() != key_before
    user = json.loads(
        run(
            "pki",
            "issue",
            "--ca",
            tmp_path / "ca",
            "--out",
            tmp_path / "u",
            "--name",
            "alice",
            "--client-only",
        ).stdout
        and run("pki", "show", tmp_path / "u" / "alice.crt", "--json").stdout
    )
    assert user["organizational_unit"] == "user"


def test_token_and_audit_commands_as_processes(tmp_path: Path, sqlite_url: str) -> None:
    pepper = tmp_path / "pepper"
    run("token", "init-pepper", "--out", pepper)
    created = json.loads(
        gridpacs(
            "token",
            "create",
            "--db-url",
            sqlite_url,
            "--pepper-file",
            pepper,
            "--user",
            "alice",
            "--grant",
            "lung=reader",
            "--json",
        ).stdout
    )
    assert created["token"].startswith(f"gpt_{created['id']}_")
    engine = sa.create_engine(sqlite_url)
    try:
        with engine.begin() as conn:  # an attacker with DDL rights
            conn.exec_driver_sql(f"DROP TRIGGER {AUDIT_TABLE}_no_update")
            conn.exec_driver_sql(f"UPDATE {AUDIT_TABLE} SET actor = 'nobody' WHERE seq = 1")
    finally:
        engine.dispose()
    broken = gridpacs("audit", "verify", "--db-url", sqlite_url, check=False)
    assert broken.returncode == 1 and "BROKEN seq 1: row hash mismatch" in broken.stdout


def test_token_lifecycle_and_audit_commands(tmp_path: Path, db_url: str) -> None:
    pepper = tmp_path / "pepper"
    run("token", "init-pepper", "--out", pepper)
    common: list[str | Path] = ["--db-url", db_url, "--pepper-file", pepper]
    created = json.loads(
        run(
            "token",
            "create",
            *common,
            "--user",
            "alice",
            "--grant",
            "lung=reader",
            "--grant",
            "*=admin",
            "--json",
        ).stdout
    )
    assert created["token"].startswith(f"gpt_{created['id']}_")
    assert created["grants"] == {"*": "admin", "lung": "reader"}
    listed = json.loads(run("token", "list", *common, "--json").stdout)
    assert [t["id"] for t in listed] == [created["id"]] and "token" not in listed[0]
    table = run("token", "list", *common).stdout
    assert created["id"] in table and created["token"] not in table
    revoked = json.loads(run("token", "revoke", created["id"], *common, "--json").stdout)
    assert revoked["status"] == "revoked"
    bad = run("token", "create", *common, "--user", "bob", "--grant", "lung=writer", code=2)
    assert "unknown role" in bad.stderr
    run("token", "create", *common, "--user", "bob", "--grant", "lung", code=2)
    run(
        "token",
        "create",
        *common,
        "--user",
        "bob",
        "--grant",
        "x=reader",
        "--expires-in",
        "soon",
        code=2,
    )

    rows = json.loads(run("audit", "--db-url", db_url, "--json").stdout)
    assert [r["action"] for r in rows] == ["token.create", "token.revoke"]
    assert rows[0]["actor"].startswith("local:")
    only_revoke = json.loads(
        run(
            "audit", "--db-url", db_url, "--action", "token.revoke", "--since", "1h", "--json"
        ).stdout
    )
    assert [r["seq"] for r in only_revoke] == [2]
    assert "token.create" in run("audit", "--db-url", db_url).stdout
    assert run("audit", "verify", "--db-url", db_url).stdout.startswith("ok: 2 entries")
    head = run("audit", "head", "--db-url", db_url).stdout.strip()

    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as conn:  # an attacker with DDL rights removes the newest row
            trigger = (
                f"{AUDIT_TABLE}_no_delete"
                if engine.dialect.name == "sqlite"
                else f"{AUDIT_TABLE}_no_change ON {AUDIT_TABLE}"
            )
            conn.exec_driver_sql(f"DROP TRIGGER {trigger}")
            conn.exec_driver_sql(f"DELETE FROM {AUDIT_TABLE} WHERE seq = 2")
        assert AuditLog(engine).verify() == []  # invisible to the chain alone
    finally:
        engine.dispose()
    cut = json.loads(
        run("audit", "verify", "--db-url", db_url, "--head", head, "--json", code=1).stdout
    )
    assert cut["ok"] is False and "seq 2 was recorded earlier" in cut["problems"][0]


def test_audit_on_a_database_without_the_log_says_so(tmp_path: Path) -> None:
    proc = run("audit", "--db-url", f"sqlite:///{tmp_path}/empty.sqlite", code=2)
    assert "no audit log" in proc.stderr
    assert "--db-url" in run("audit", code=2).stderr
    assert "not found" in run("pki", "show", tmp_path / "nope.crt", code=2).stderr
    assert (
        "SEQ:SHA256HEX"
        in run("audit", "verify", "--db-url", "sqlite://", "--head", "x", code=2).stderr
    )


def test_audit_prune_keeps_what_an_export_still_owes_and_records_itself(tmp_path: Path) -> None:
    from catalog.security.audit_export import write_cursor
    from node.audit import open_audit

    db_url = f"sqlite:///{tmp_path / 'audit.sqlite'}"
    log = open_audit(db_url)  # a node's trail
    for n in range(5):
        log.record("WS1", "dicom.find", {"n": n}, "10.0.0.1:1", "served")
    write_cursor(log.engine, "tls://arr:6514", 2)  # the repository has rows 1-2 only
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)).isoformat()

    kept = json.loads(run("audit", "prune", "--db-url", db_url, "--older-than", future,
                          "--json").stdout)  # fmt: skip
    assert kept["rows_removed"] == 2 and kept["kept_for_export_from"] == 3
    assert kept["anchor"].startswith("2:")
    forced = json.loads(run("audit", "prune", "--db-url", db_url, "--older-than", future,
                            "--force", "--json").stdout)  # fmt: skip
    assert forced["rows_removed"] == 4  # rows 3-5 and the first prune's own row
    rows = json.loads(run("audit", "--db-url", db_url, "--json").stdout)
    assert [(r["seq"], r["action"]) for r in rows] == [(7, "audit.prune")]
    assert rows[0]["target"]["forced"] is True and rows[0]["actor"].startswith("local:")
    verified = run("audit", "verify", "--db-url", db_url).stdout
    assert verified.startswith("ok: entries 7..7, chain intact from the anchor (1..6 pruned)")
    assert "365d" in run("audit", "prune", "--help").stdout
