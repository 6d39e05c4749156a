"""``gridpacs node commitments``: the Storage Commitment requests a node recorded.

Why: when ``commitment_reports_owed`` stays above zero, or a modality's operator says it
never heard back, the administrator needs to see which modality is owed which
transaction, since when, how many tries and the last error (a wrong port in the
destinations, a modality switched off) without reading the logs.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from datetime import datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from node.cli_options import ConfigOpt, DataDirOpt, DbUrlOpt, JsonOpt

STATES = ("pending", "reported", "abandoned")


def commitments(
    state: Annotated[
        list[str] | None,
        typer.Option("--state", help="pending, reported or abandoned (repeatable; default all)."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Newest first, at most.")] = 50,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    db_url: DbUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List Storage Commitment requests: who is owed which report, and why it is late."""
    from node.cli import load_node_config
    from node.index import open_index

    wanted = [s.strip().lower() for s in state or ()]
    unknown = [s for s in wanted if s not in STATES]
    if unknown:
        raise typer.BadParameter(f"{', '.join(unknown)}: one of {', '.join(STATES)}")
    cfg = load_node_config(config, data_dir=data_dir, db_url=db_url)
    index = open_index(cfg.index_url)
    try:
        entries = index.commitments(wanted, limit)
    finally:
        index.close()
    if as_json:
        rows = [
            {**asdict(e), "requested_at": _iso(e.requested_at), "due_at": _iso(e.due_at),
             "reported_at": _iso(e.reported_at)}
            for e in entries
        ]  # fmt: skip
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"Storage Commitment requests ({len(entries)}, newest first)")
    for column in ("from AE", "transaction", "to AE", "instances", "state", "requested",
                   "tries", "result / next try", "last error"):  # fmt: skip
        table.add_column(column, justify="right" if column in ("instances", "tries") else "left")
    for e in entries:
        if e.state == "reported":
            result = f"{e.committed} committed, {e.failed} failed at {_short(e.reported_at)}"
        elif e.state == "pending":
            result = f"next {_short(e.due_at)}"
        else:
            result = "given up"
        table.add_row(e.calling_ae, e.transaction_uid, e.called_ae, str(e.instances), e.state,
                      _short(e.requested_at), str(e.attempts), result,
                      e.last_error or "")  # fmt: skip
    # UIDs are 64 characters: piped into a file or a mail, do not cut them at 80 columns
    Console(width=None if sys.stdout.isatty() else 220).print(table)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _short(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "—"
