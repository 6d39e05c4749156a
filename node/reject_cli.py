"""``gridpacs node reject``: remove studies, series or instances as an administrator.

Why: the standard way to remove images is an IHE IOCM rejection note sent by C-STORE, and
not every site has a workstation that writes one. An administrator who learns that a
study went to the wrong patient needs to remove it from the node and, through the
catalog, from every other node, with the same guarantees as a note: recorded and refused
from now on, bytes deleted, the grid told. This command builds the same rejection from
UIDs, shows what it will remove, and asks before it does.

It works next to a running node: the rejection is one transaction in the node's index;
the node's packed blobs can only be deleted by the node, whose sweep deletes them within
seconds (with the node stopped, this command deletes them itself).
"""

from __future__ import annotations

import getpass
import json
import sys
from collections import Counter
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from node.cli_options import ConfigOpt, DataDirOpt, DbUrlOpt, JsonOpt

if TYPE_CHECKING:  # the index, pydicom and SQLAlchemy load only when the command runs:
    # every `gridpacs node …` mounts this module
    from node.config import NodeConfig
    from node.index import SqlIndex
    from node.index.records import InstanceRecord

REASONS = {
    "quality": "113001",
    "patient-safety": "113037",
    "worklist": "113038",
    "retention": "113039",
}
"""Names an administrator can type for the CID 7011 titles (the codes work too)."""

EXIT_NOTHING = 1
EXIT_REFUSED = 3

_err = Console(stderr=True)


def _reason_code(value: str) -> str:
    from node.services.rejection import REJECTION_TITLES

    code = REASONS.get(value.strip().lower(), value.strip())
    if code not in REJECTION_TITLES:
        names = ", ".join(f"{n} ({c})" for n, c in REASONS.items())
        raise typer.BadParameter(f"{value!r}: one of {names}")
    return code


def _plan_rows(records: list[InstanceRecord]) -> list[dict[str, Any]]:
    """One row per study and collection: what the rejection removes."""
    instances = Counter((r.collection, r.patient_id, r.study_instance_uid) for r in records)
    series: dict[tuple[str, str, str], set[str]] = {}
    for r in records:
        key = (r.collection, r.patient_id, r.study_instance_uid)
        series.setdefault(key, set()).add(r.series_instance_uid)
    return [
        {"collection": c, "patient_id": p, "study_instance_uid": s,
         "series": len(series[(c, p, s)]), "instances": n}
        for (c, p, s), n in instances.items()
    ]  # fmt: skip


def _show_plan(rows: list[dict[str, Any]], reason: str, missing: list[str]) -> None:
    from node.services.rejection import REJECTION_TITLES

    table = Table(title=f"To reject: {REJECTION_TITLES[reason]} ({reason})")
    for column in ("collection", "patient ID", "study", "series", "instances"):
        table.add_column(column, justify="right" if column in ("series", "instances") else "left")
    for row in rows:
        table.add_row(row["collection"], row["patient_id"], row["study_instance_uid"],
                      str(row["series"]), str(row["instances"]))  # fmt: skip
    _err.print(table)
    for uid in missing:
        _err.print(f"[yellow]not held here:[/] {uid}", highlight=False)


def reject(
    study: Annotated[
        list[str] | None, typer.Option("--study", help="StudyInstanceUID (repeatable).")
    ] = None,
    series: Annotated[
        list[str] | None, typer.Option("--series", help="SeriesInstanceUID (repeatable).")
    ] = None,
    instance: Annotated[
        list[str] | None, typer.Option("--instance", help="SOPInstanceUID (repeatable).")
    ] = None,
    reason: Annotated[
        str,
        typer.Option(
            "--reason",
            help="Why: quality (113001), patient-safety (113037), worklist (113038) or "
            "retention (113039).",
        ),
    ] = "",
    collection: Annotated[
        list[str] | None,
        typer.Option("--collection", help="Only copies held in this collection (repeatable)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be rejected; change nothing.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    db_url: DbUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Reject (remove here and grid-wide, refuse from now on) studies, series or instances.

    Exit codes: 0 rejected (or shown, with --dry-run); 1 nothing held matches; 2 bad
    options or configuration; 3 not confirmed.
    """
    from node.cli import load_node_config
    from node.services.selection import Selection, held, not_held

    if not reason:
        raise typer.BadParameter("say why with --reason", param_hint="--reason")
    code = _reason_code(reason)
    selection = Selection(
        studies=tuple(study or ()),
        series=tuple(series or ()),
        instances=tuple(instance or ()),
        collections=tuple(collection) if collection else None,
    )
    if selection.is_empty():
        raise typer.BadParameter("name at least one --study, --series or --instance")
    cfg = load_node_config(config, data_dir=data_dir, db_url=db_url)

    from node.index import open_index

    index = open_index(cfg.index_url)
    try:
        records = held(index, selection)
        missing = not_held(selection, records)
        rows = _plan_rows(records)
        if not records:
            if as_json:
                typer.echo(json.dumps({"rejected": 0, "not_held": missing, "plan": []}))
            for uid in [] if as_json else missing:
                _err.print(f"[yellow]not held here:[/] {uid}", highlight=False)
            _err.print("nothing held here matches: nothing rejected")
            raise typer.Exit(EXIT_NOTHING)
        if dry_run:
            if as_json:
                typer.echo(json.dumps({"dry_run": True, "plan": rows, "not_held": missing},
                                      indent=2))  # fmt: skip
            else:
                _show_plan(rows, code, missing)
            return
        if not as_json:
            _show_plan(rows, code, missing)
        if not yes:
            if not sys.stdin.isatty():
                _err.print("[red]refused:[/] not confirmed; pass --yes to reject")
                raise typer.Exit(EXIT_REFUSED)
            if not typer.confirm(f"Reject {len(records)} instances?", err=True):
                raise typer.Exit(EXIT_REFUSED)
        summary = _apply(cfg, index, records, code)
    finally:
        index.close()
    summary.update(plan=rows, not_held=missing)
    _report(as_json, summary)


def _apply(
    cfg: NodeConfig, index: SqlIndex, records: list[InstanceRecord], code: str
) -> dict[str, Any]:
    from node.index.records import RejectedInstance
    from node.services.rejection import RejectionService
    from node.structlog import configure_logging
    from storage import open_store

    configure_logging("WARNING")  # the instances_rejected line, on stderr: the audit trail
    store = open_store(cfg.blob_dir, cfg.storage.encryption_key_file,
                       pack_threshold=cfg.storage.pack_threshold)  # fmt: skip
    try:
        who = f"cli:{getpass.getuser()}"
        items = [
            RejectedInstance(
                sop_instance_uid=r.sop_instance_uid,
                collection=r.collection,
                study_instance_uid=r.study_instance_uid,
                series_instance_uid=r.series_instance_uid,
                reason=code,
                rejected_by=who,
            )
            for r in records
        ]
        owns = store.owns_packs
        result = RejectionService(index, store).reject(items, source=who, remove_blobs=owns)
    finally:
        store.close()
    return {
        "rejected": len(result.recorded),
        "removed": len(result.removed),
        "blobs_deleted": len(result.blob_keys) if owns else 0,
        "blobs_queued_for_the_node": 0 if owns else len(result.blob_keys),
        "reason": code,
        "rejected_by": who,
    }


def _report(as_json: bool, summary: dict[str, Any]) -> None:
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    table = Table(title="rejected", show_header=False)
    for key in ("rejected", "removed", "blobs_deleted", "blobs_queued_for_the_node", "reason",
                "rejected_by"):  # fmt: skip
        if key in summary:
            table.add_row(key.replace("_", " "), str(summary[key]))
    Console().print(table)
