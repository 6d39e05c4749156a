"""How a reconciliation reads: rich tables for people (UIDs truncated), JSON for machines."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

from catalog.reconcile import Held, NodeReport, Reconciliation
from gridpacs.reconcile.run import RepairOutcome


def as_json(result: Reconciliation, repaired: RepairOutcome | None) -> str:
    data: dict[str, Any] = result.to_dict()
    if repaired is not None:
        data["repair"] = repaired.to_dict()
    return json.dumps(data, indent=2)


def _status(report: NodeReport) -> str:
    if report.error:
        return f"[red]{report.error}[/red]"
    if report.discrepancies:
        return "[yellow]differs[/yellow]"
    return "[green]ok[/green]"


def counts_table(result: Reconciliation) -> Table:
    table = Table(title=f"gridpacs reconcile {result.period.label}: instances per node")
    table.add_column("Node")
    for column in ("Catalog\nby StudyDate", "Node\nby StudyDate", "Catalog\nby received",
                   "Node\nby received", "Missing in\ncatalog", "Missing on\nnode"):  # fmt: skip
        table.add_column(column, justify="right")
    table.add_column("Status")
    for r in result.reports:
        held = r.held
        table.add_row(
            r.node,
            str(r.catalog.by_study_date),
            "?" if held is None else str(held.by_study_date),
            str(r.catalog.by_received),
            "?" if held is None else str(held.by_received),
            str(len(r.unpublished)),
            str(len(r.lost)),
            _status(r),
        )
    return table


def missing_table(result: Reconciliation, show: int) -> tuple[Table, int]:
    """The missing instances, at most ``show`` per node and side; and how many were left out."""
    table = Table(title="Missing instances")
    for column in ("Node", "Missing", "Collection", "StudyDate", "StudyInstanceUID",
                   "SOPInstanceUID"):  # fmt: skip
        table.add_column(column, overflow="fold")
    left_out = 0
    for r in result.reports:
        for side, items in (("in catalog", r.unpublished), ("on node", r.lost)):
            for held in items[:show]:
                table.add_row(r.node, side, *_cells(held))
            left_out += max(0, len(items) - show)
    return table, left_out


def _cells(held: Held) -> tuple[str, str, str, str]:
    return (held.collection, held.study_date, held.study_instance_uid, held.sop_instance_uid)


def print_report(console: Console, result: Reconciliation, show: int) -> None:
    console.print(counts_table(result))
    if any(r.unpublished or r.lost for r in result.reports):
        table, left_out = missing_table(result, show)
        console.print(table)
        if left_out:
            console.print(f"… and {left_out} more (all of them with --json)")
    if result.under_replicated:
        console.print(
            f"[yellow]{len(result.under_replicated)} instance(s) held by fewer nodes than "
            f"their replication factor[/yellow]"
        )
        for short in result.under_replicated[:show]:
            holders = ", ".join(short.holders) or "no node"
            console.print(f"  {short.item.sop_instance_uid} ({short.item.collection}): "
                          f"held by {holders}, factor {short.factor}")  # fmt: skip
    verdict = "no discrepancies" if not result.discrepancies else (
        f"{result.discrepancies} discrepancy(ies)")  # fmt: skip
    console.print(f"{result.period.label}: {verdict}")


def print_repair(console: Console, outcome: RepairOutcome) -> None:
    console.print(
        f"repaired: {outcome.republished} republished, {outcome.pulled} copied, "
        f"{outcome.retracted} stale holding(s) retracted, {len(outcome.failures)} failure(s)"
    )
    for failure in outcome.failures:
        console.print(f"  [red]{failure}[/red]")
