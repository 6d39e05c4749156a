"""``gridpacs pki``, ``gridpacs token`` and ``gridpacs audit``: the operator's commands.

The boundary of the package: security errors become one line on stderr and exit code 2,
a failed audit verification exit code 1. Tables by default, ``--json`` for scripts.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn, cast

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from catalog.security import pki
from catalog.security.audit import AuditLog
from catalog.security.errors import SecurityError
from catalog.security.models import AUDIT_TABLE, create_all
from catalog.security.retention import prune_once
from catalog.security.tokens import TokenInfo, TokenStore, load_pepper, write_pepper

pki_app = typer.Typer(help="The grid CA and host certificates.", no_args_is_help=True)
token_app = typer.Typer(help="Researchers' API tokens.", no_args_is_help=True)
audit_app = typer.Typer(
    help="Read and verify the audit log (no sub-command: list entries).",
    invoke_without_command=True,
)

_DURATION = re.compile(r"^(\d+)\s*([smhdwy])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}

DbUrl = Annotated[
    str, typer.Option("--db-url", envvar="GRIDPACS_DB_URL", help="Catalog database URL.")
]
JsonOut = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def _boundary() -> Iterator[None]:
    """Turn expected failures into one line and a non-zero exit code."""
    try:
        yield
    except SecurityError as exc:
        _fail(str(exc))
    except ArgumentError as exc:
        _fail(f"bad database URL: {exc}")
    except SQLAlchemyError as exc:
        _fail(f"database error: {str(exc).splitlines()[0]}")


def _engine(db_url: str) -> sa.Engine:
    return sa.create_engine(db_url)


def parse_duration(text: str) -> dt.timedelta | None:
    """``90d``, ``12h``, ``30m``, ``2w``, ``1y`` → timedelta; ``never`` → None."""
    if text.strip().lower() == "never":
        return None
    match = _DURATION.match(text.strip().lower())
    if not match or int(match.group(1)) == 0:
        raise typer.BadParameter(f"{text!r}: use a positive number with s/m/h/d/w/y, or never")
    return dt.timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def parse_since(text: str) -> dt.datetime:
    """An ISO 8601 time (UTC if no offset) or a duration back from now (``24h``)."""
    if _DURATION.match(text.strip().lower()):
        delta = parse_duration(text)
        assert delta is not None
        return dt.datetime.now(dt.UTC) - delta
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r}: use ISO 8601 (2026-01-31T12:00) or 24h/7d") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    Console().print(table)  # made per call so COLUMNS is read when printing


# -- gridpacs pki ----------------------------------------------------------------------------


@pki_app.command("init-ca")
def init_ca_cmd(
    directory: Annotated[Path, typer.Option("--dir", help="Directory for ca.key and ca.crt.")],
    name: Annotated[str, typer.Option("--name", help="The grid's name.")] = "gridpacs",
    key_type: Annotated[str, typer.Option("--key-type", help="ec (P-256) or rsa (3072).")] = "ec",
    days: Annotated[int, typer.Option("--days", help="CA lifetime in days.")] = pki.CA_VALID_DAYS,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing CA.")] = False,
) -> None:
    """Create the grid CA (keep ca.key offline; only ca.crt is distributed)."""
    with _boundary():
        files = pki.init_ca(
            directory, name, key_type=_key_type(key_type), valid_days=days, force=force
        )
    typer.echo(f"CA key:  {files.key} (mode 0600)\nCA cert: {files.cert}")


@pki_app.command("grant-key")
def grant_key_cmd(
    directory: Annotated[Path, typer.Option("--dir", help="Directory for grant.key/grant.pub.")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing key.")] = False,
) -> None:
    """Create the Ed25519 key that signs retrieve grants: grant.key to every catalog replica
    (security.grant_key_file), grant.pub to every node (catalog.grant_public_keys)."""
    from catalog.security.grants import write_grant_key

    with _boundary():
        files = write_grant_key(directory, force=force)
    typer.echo(f"grant key:        {files.private} (mode 0600, catalog replicas)")
    typer.echo(f"grant public key: {files.public} (nodes)")


@pki_app.command("issue")
def issue_cmd(
    ca: Annotated[Path, typer.Option("--ca", help="The CA directory (from init-ca).")],
    out: Annotated[Path, typer.Option("--out", help="Directory for <name>.key/.crt, ca.crt.")],
    name: Annotated[str, typer.Option("--name", help="Host name; always a SAN.")],
    dns: Annotated[list[str] | None, typer.Option("--dns", help="Extra DNS SAN.")] = None,
    ip: Annotated[list[str] | None, typer.Option("--ip", help="IP SAN (e.g. 127.0.0.1).")] = None,
    client_only: Annotated[
        bool, typer.Option("--client-only", help="A user certificate (clientAuth, OU=user).")
    ] = False,
    key_type: Annotated[str, typer.Option("--key-type", help="ec or rsa.")] = "ec",
    days: Annotated[int, typer.Option("--days", help="Lifetime, 1..730 days.")] = (
        pki.LEAF_VALID_DAYS
    ),
    force: Annotated[bool, typer.Option("--force", help="Replace existing files.")] = False,
) -> None:
    """Issue a key and a certificate signed by the grid CA."""
    roles: tuple[pki.Role, ...] = ("client",) if client_only else ("server", "client")
    with _boundary():
        files = pki.issue(
            ca,
            out,
            name,
            dns_names=dns or (),
            ip_addresses=ip or (),
            roles=roles,
            key_type=_key_type(key_type),
            valid_days=days,
            force=force,
        )
        info = pki.inspect(files.cert)
    typer.echo(f"key:  {files.key} (mode 0600)\ncert: {files.cert}\nca:   {files.ca_cert}")
    typer.echo(
        f"expires {info.not_after:%Y-%m-%d}; SANs: "
        + ", ".join([*info.dns_names, *info.ip_addresses])
    )


@pki_app.command("show")
def show_cmd(
    cert: Annotated[Path, typer.Argument(help="A PEM certificate.")],
    as_json: JsonOut = False,
) -> None:
    """Show a certificate's subject, SANs, usages and expiry."""
    with _boundary():
        info = pki.inspect(cert)
    if as_json:
        _print_json(info.to_dict())
        return
    rows = [[k, ", ".join(v) if isinstance(v, list) else str(v)] for k, v in info.to_dict().items()]
    _table(str(cert), ["field", "value"], rows)


CrlDays = Annotated[
    int, typer.Option("--days", help="Days until the list's next update (re-sign before).")
]


@pki_app.command("revoke")
def revoke_cert_cmd(
    ca: Annotated[Path, typer.Option("--ca", help="The CA directory (from init-ca).")],
    cert: Annotated[
        str, typer.Argument(help="The certificate's PEM file, or its serial in hex (`show`).")
    ],
    reason: Annotated[
        str, typer.Option("--reason", help=", ".join(pki.REVOCATION_REASONS))
    ] = "unspecified",
    days: CrlDays = pki.CRL_VALID_DAYS,
    as_json: JsonOut = False,
) -> None:
    """Revoke a certificate: add it to the CA's crl.pem and re-sign the list. Copy crl.pem
    to every catalog and node (catalog [tls] crl, node catalog.crl_file); they re-read it."""
    with _boundary():
        done = pki.revoke(ca, cert, reason=reason, valid_days=days)
    entry = done.entry
    if as_json:
        revoked = {"serial": entry.serial, "reason": entry.reason, "added": done.added}
        _print_json({"revoked": revoked, "crl": done.crl.to_dict()})
        return
    state = "revoked" if done.added else "already revoked"
    typer.echo(
        f"{state} {entry.serial} ({entry.reason}) since {entry.revoked_at:%Y-%m-%d %H:%M} UTC"
    )
    _crl_table(done.crl)


@pki_app.command("crl")
def crl_cmd(
    ca: Annotated[Path, typer.Option("--ca", help="The CA directory (from init-ca).")],
    days: CrlDays = pki.CRL_VALID_DAYS,
    renew_within: Annotated[
        int | None,
        typer.Option(
            "--renew-within",
            help="Only re-sign when the next update is this many "
            "days away or less (for provisioning: unchanged otherwise).",
        ),
    ] = None,
    as_json: JsonOut = False,
) -> None:
    """Re-sign the CA's revocation list with a new next update (create an empty one if none)
    and list what it revokes. Run it before the next update passes."""
    with _boundary():
        renewed, info = pki.issue_crl(ca, valid_days=days, renew_within_days=renew_within)
    if as_json:
        _print_json({**info.to_dict(), "renewed": renewed})
        return
    typer.echo("signed anew" if renewed else "unchanged: its next update is not near")
    _crl_table(info)


def _crl_table(info: pki.CrlInfo) -> None:
    rows = [[e.serial, f"{e.revoked_at:%Y-%m-%d %H:%M}", e.reason] for e in info.revoked]
    title = (f"{info.path} (#{info.number}, next update {info.next_update:%Y-%m-%d}): "
             f"{len(rows)} revoked")  # fmt: skip
    _table(title, ["serial", "revoked (UTC)", "reason"], rows)


def _key_type(text: str) -> pki.KeyType:
    if text == "ec":
        return "ec"
    if text == "rsa":
        return "rsa"
    raise typer.BadParameter(f"--key-type must be ec or rsa, not {text!r}")


# -- gridpacs token --------------------------------------------------------------------------

PepperFile = Annotated[
    Path,
    typer.Option(
        "--pepper-file", envvar="GRIDPACS_PEPPER_FILE", help="Server-side secret file (mode 0600)."
    ),
]


def _store(db_url: str, pepper_file: Path) -> tuple[TokenStore, AuditLog]:
    pepper = load_pepper(pepper_file)
    engine = _engine(db_url)
    create_all(engine)  # no-op on a migrated catalog database (migration 0003)
    return TokenStore(engine, pepper), AuditLog(engine)


def _audit_admin(log: AuditLog, action: str, target: dict[str, Any]) -> None:
    # Token administration is audited like any call: who ran it on which machine.
    log.record(f"local:{getpass.getuser()}", action, target, f"local:{socket.gethostname()}", "OK")


@token_app.command("init-pepper")
def init_pepper_cmd(
    out: Annotated[Path, typer.Option("--out", help="Where to write the pepper.")],
    force: Annotated[bool, typer.Option("--force", help="Replace (invalidates tokens).")] = False,
) -> None:
    """Create the server-side pepper file (random, mode 0600)."""
    with _boundary():
        path = write_pepper(out, force=force)
    typer.echo(f"pepper: {path} (mode 0600)")


@token_app.command("create")
def create_cmd(
    db_url: DbUrl,
    pepper_file: PepperFile,
    user: Annotated[str, typer.Option("--user", help="Who the token is for.")],
    grant: Annotated[
        list[str], typer.Option("--grant", help="collection=reader|admin; '*' = all. Repeatable.")
    ],
    expires_in: Annotated[
        str, typer.Option("--expires-in", help="e.g. 90d, 12h, or never.")
    ] = "90d",
    description: Annotated[str, typer.Option("--description", help="A note.")] = "",
    as_json: JsonOut = False,
) -> None:
    """Create a token; its plaintext is printed once and never stored."""
    grants: dict[str, str] = {}
    for item in grant:
        collection, sep, role = item.partition("=")
        if not sep or not collection or not role:
            raise typer.BadParameter(f"--grant {item!r}: expected collection=role")
        grants[collection.strip()] = role.strip()
    lifetime = parse_duration(expires_in)
    with _boundary():
        store, log = _store(db_url, pepper_file)
        issued = store.create(user, grants, lifetime, description=description)
        _audit_admin(
            log,
            "token.create",
            {
                "token_id": issued.info.id,
                "user": issued.info.user,
                "grants": {c: r.value for c, r in issued.info.grants.items()},
            },
        )
    if as_json:
        _print_json({"token": issued.plaintext, **issued.info.to_dict()})
        return
    typer.echo(
        f"token id {issued.info.id} for {issued.info.user} "
        f"(expires {issued.info.expires_at or 'never'})"
    )
    typer.echo("store this token now; it cannot be shown again:")
    typer.echo(issued.plaintext)


@token_app.command("list")
def list_cmd(
    db_url: DbUrl,
    pepper_file: PepperFile,
    user: Annotated[str | None, typer.Option("--user", help="Only this user's tokens.")] = None,
    as_json: JsonOut = False,
) -> None:
    """List tokens (ids, users, grants, status; never secrets)."""
    with _boundary():
        tokens = _store(db_url, pepper_file)[0].list(user=user)
    if as_json:
        _print_json([t.to_dict() for t in tokens])
        return
    _table(
        "API tokens",
        ["id", "user", "grants", "status", "expires", "created"],
        [_token_row(t) for t in tokens],
    )


@token_app.command("revoke")
def revoke_cmd(
    token_id: Annotated[str, typer.Argument(help="The token id (from list).")],
    db_url: DbUrl,
    pepper_file: PepperFile,
    as_json: JsonOut = False,
) -> None:
    """Revoke a token; it fails authentication from now on."""
    with _boundary():
        store, log = _store(db_url, pepper_file)
        info = store.revoke(token_id)
        _audit_admin(log, "token.revoke", {"token_id": info.id, "user": info.user})
    if as_json:
        _print_json(info.to_dict())
        return
    typer.echo(f"revoked {info.id} ({info.user}) at {info.revoked_at:%Y-%m-%d %H:%M:%S} UTC")


def _token_row(t: TokenInfo) -> list[str]:
    grants = ", ".join(f"{c}={r.value}" for c, r in sorted(t.grants.items()))
    expires = f"{t.expires_at:%Y-%m-%d %H:%M}" if t.expires_at else "never"
    return [t.id, t.user, grants, t.status(), expires, f"{t.created_at:%Y-%m-%d %H:%M}"]


# -- gridpacs audit --------------------------------------------------------------------------


def _audit_log(db_url: str) -> AuditLog:
    engine = _engine(db_url)
    if not sa.inspect(engine).has_table(AUDIT_TABLE):
        raise SecurityError(f"no audit log in this database (table {AUDIT_TABLE} is missing)")
    return AuditLog(engine)


@audit_app.callback()
def audit_cmd(
    ctx: typer.Context,
    db_url: Annotated[
        str | None,
        typer.Option("--db-url", envvar="GRIDPACS_DB_URL", help="Catalog database URL."),
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="ISO time or 24h/7d back from now.")
    ] = None,
    actor: Annotated[str | None, typer.Option("--actor", help="Only this actor.")] = None,
    action: Annotated[
        str | None, typer.Option("--action", help="Method name; trailing * = prefix.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many rows.")] = 100,
    as_json: JsonOut = False,
) -> None:
    """List audit entries (newest last): who, what, when, from where, outcome."""
    if ctx.invoked_subcommand is not None:
        return
    if db_url is None:
        _fail("--db-url (or GRIDPACS_DB_URL) is required")
    since_at = parse_since(since) if since else None
    with _boundary():
        rows = _audit_log(db_url).query(since=since_at, actor=actor, action=action, limit=limit)
    if as_json:
        _print_json([r.to_dict() for r in rows])
        return
    _table(
        "audit log",
        ["seq", "at (UTC)", "actor", "action", "target", "peer", "outcome"],
        [
            [
                str(r.seq),
                f"{r.at:%Y-%m-%d %H:%M:%S}",
                r.actor,
                r.action,
                json.dumps(dict(r.target), sort_keys=True),
                r.peer,
                r.outcome,
            ]
            for r in rows
        ],
    )


@audit_app.command("verify")
def verify_cmd(
    db_url: DbUrl,
    head: Annotated[
        str | None,
        typer.Option("--head", help="SEQ:HASH recorded earlier (from `audit head`)."),
    ] = None,
    as_json: JsonOut = False,
) -> None:
    """Recompute the hash chain; exit 1 and list the breaks if any row was tampered with."""
    expected = _parse_head(head) if head else None
    with _boundary():
        log = _audit_log(db_url)
        problems = log.verify(expected_head=expected)
        seq, digest = log.head()
        pruned_through, _ = log.anchor()
    if as_json:
        _print_json({"ok": not problems, "problems": problems, "head": f"{seq}:{digest}",
                     "pruned_through": pruned_through})  # fmt: skip
    elif problems:
        for problem in problems:
            typer.echo(f"BROKEN {problem}")
    elif pruned_through:
        typer.echo(f"ok: entries {pruned_through + 1}..{seq}, chain intact from the anchor "
                   f"(1..{pruned_through} pruned), head {seq}:{digest}")  # fmt: skip
    else:
        typer.echo(f"ok: {seq} entries, chain intact, head {seq}:{digest}")
    if problems:
        raise typer.Exit(1)


@audit_app.command("prune")
def prune_cmd(
    db_url: DbUrl,
    older_than: Annotated[
        str,
        typer.Option("--older-than", help="Remove rows written before this: 365d, or an ISO time."),
    ],
    force: Annotated[
        bool,
        typer.Option("--force", help="Also remove rows an audit export has not sent yet."),
    ] = False,
    as_json: JsonOut = False,
) -> None:
    """Remove old rows (a retention period); the chain stays verifiable from its anchor.

    Rows an export (``[audit.export]``) still owes its repository are kept unless --force.
    The pruning is itself recorded as a row (``audit.prune``): who ran it on which host. An
    export cursor left by a repository no longer configured holds rows back: use --force.
    """
    before = parse_since(older_than)
    with _boundary():
        log = _audit_log(db_url)
        owed_from = None if force else _lowest_export_cursor(log)
        pruned = prune_once(log, before, owed_from=owed_from,
                            actor=f"local:{getpass.getuser()}", note={"forced": force})  # fmt: skip
        anchor_seq, anchor_hash = log.anchor()
    anchor = f"{anchor_seq}:{anchor_hash}"
    result = {
        "rows_removed": pruned.rows,
        "anchor": anchor,
        "before": before.isoformat(),
        "kept_for_export_from": None if owed_from is None else owed_from + 1,
    }
    if as_json:
        _print_json(result)
        return
    _table("audit prune", ["rows removed", "anchor (SEQ:HASH)", "older than", "kept for export"],
           [[str(pruned.rows), anchor, f"{before:%Y-%m-%d %H:%M:%S}",
             "-" if owed_from is None else f"seq > {owed_from}"]])  # fmt: skip


def _lowest_export_cursor(log: AuditLog) -> int | None:
    """The smallest ``seq`` any collector has been sent (None: nothing is exported)."""
    from catalog.security.models import AuditExportCursor

    table = cast(sa.Table, AuditExportCursor.__table__)
    with log.engine.connect() as conn:
        if not sa.inspect(conn).has_table(table.name):
            return None
        lowest = conn.execute(sa.select(sa.func.min(table.c.seq))).scalar_one_or_none()
    return None if lowest is None else int(lowest)


@audit_app.command("head")
def head_cmd(db_url: DbUrl) -> None:
    """Print SEQ:HASH of the newest entry, to keep outside the database."""
    with _boundary():
        seq, digest = _audit_log(db_url).head()
    typer.echo(f"{seq}:{digest}")


def _parse_head(text: str) -> tuple[int, str]:
    seq, sep, digest = text.partition(":")
    if not sep or not seq.isdigit() or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise typer.BadParameter(f"--head {text!r}: expected SEQ:SHA256HEX")
    return int(seq), digest
