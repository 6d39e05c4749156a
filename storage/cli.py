"""``gridpacs storage``: verify the blob store, give back deleted blobs' space, create key files.

The boundary where storage errors become exit codes and one-line messages:

* ``0`` every blob verified (or the space was reclaimed, or the key file was written);
* ``1`` scrub found corrupt or unreadable blobs, or keygen refused to overwrite;
* ``2`` the store could not be opened (missing, wrong or missing key, bad marker; for
  ``reclaim``, also: a running node holds the packs).
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from storage import BlobStore, FilesystemBlobStore, ScrubFinding, StorageError, open_store
from storage.encryption import generate_key_file, key_id, load_key
from storage.filesystem import MARKER_NAME

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_CANNOT_OPEN = 2

app = typer.Typer(
    help="Verify and inspect the blob store.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


RootOpt = Annotated[Path, typer.Option("--root", help="Directory of the blob store.")]
KeyFileOpt = Annotated[
    Path | None, typer.Option("--key-file", help="Key file of an encrypted store.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document for machines.")]


def _fail(message: str, code: int) -> typer.Exit:
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def _open(root: Path, key_file: Path | None, *, writable: bool) -> FilesystemBlobStore:
    """An existing store (never created here); key-file warnings shown on stderr."""
    if not (root / MARKER_NAME).is_file():
        raise _fail(f"{root} is not a gridpacs blob store (no {MARKER_NAME})", EXIT_CANNOT_OPEN)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            store = open_store(root, key_file, create=writable)
        except StorageError as exc:
            raise _fail(str(exc), EXIT_CANNOT_OPEN) from None
    for warning in caught:
        Console(stderr=True).print(f"[yellow]warning:[/] {warning.message}", highlight=False)
    return store


def _scrub_with_progress(store: BlobStore, total: int, show: bool) -> list[ScrubFinding]:
    console = Console(stderr=True)
    columns = (
        TextColumn("scrub"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, disable=not show) as progress:
        task = progress.add_task("scrub", total=total)
        return list(store.scrub(progress=lambda _key: progress.advance(task)))


def _report_table(summary: dict[str, Any], findings: list[ScrubFinding]) -> None:
    console = Console(highlight=False)
    overview = Table(title="Scrub", show_header=False)
    overview.add_column(style="bold")
    overview.add_column(justify="right")
    for label in ("root", "checked", "ok", "corrupt", "unreadable"):
        overview.add_row(label, str(summary[label]))
    overview.add_row("seconds", f"{summary['seconds']:.2f}")
    console.print(overview)
    if not findings:
        console.print("[green]all blobs verified[/]")
        return
    # Two columns, the key on its own line: a 64-digit key must stay whole (people copy
    # it) and still fit an 80-column terminal.
    table = Table(title="Problems", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column("kind", no_wrap=True, style="bold red")
    table.add_column("blob / problem", overflow="fold")
    for finding in findings:
        table.add_row(finding.kind, f"{finding.key}\n[dim]{escape(finding.problem)}[/]")
    console.print(table)


@app.command()
def scrub(
    root: RootOpt,
    key_file: KeyFileOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Read and verify every blob; exit 1 if any is corrupt or unreadable."""
    store = _open(root, key_file, writable=False)
    started = time.monotonic()
    total = sum(1 for _ in store.keys())  # noqa: SIM118 - a BlobStore, not a dict
    findings = _scrub_with_progress(store, total, show=sys.stderr.isatty() and not json_output)
    corrupt = sum(1 for f in findings if f.kind == "corrupt")
    summary: dict[str, Any] = {
        "root": str(root),
        "checked": total,
        "ok": total - len(findings),
        "corrupt": corrupt,
        "unreadable": len(findings) - corrupt,
        "seconds": round(time.monotonic() - started, 3),
    }
    if json_output:
        summary["findings"] = [
            {"key": f.key, "kind": f.kind, "problem": f.problem} for f in findings
        ]
        typer.echo(json.dumps(summary, indent=2))
    else:
        _report_table(summary, findings)
    raise typer.Exit(EXIT_FINDINGS if findings else EXIT_OK)


@app.command()
def reclaim(
    root: RootOpt,
    key_file: KeyFileOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Give back the disk space of deleted packed blobs (run with the node stopped).

    Deletes free their space as they happen; this finds what older deletes (before
    they punched holes) and torn, superseded records still hold. Safe to run again.
    """
    store = _open(root, key_file, writable=True)
    started = time.monotonic()
    before = store.packed_bytes()
    show = sys.stderr.isatty() and not json_output
    columns = (TextColumn("reclaim"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=Console(stderr=True), disable=not show) as progress:
            task = progress.add_task("reclaim", total=None)
            report = store.reclaim(lambda done, total: progress.update(task, completed=done,
                                                                       total=total))  # fmt: skip
    except StorageError as exc:
        raise _fail(str(exc), EXIT_CANNOT_OPEN) from None
    finally:
        store.close()
    summary: dict[str, Any] = {
        "root": str(root),
        "packs": report.packs,
        "dead_records": report.dead_records,
        "released": report.released,
        "bytes_freed": report.bytes_freed,
        "packed_bytes_before": before,
        "packed_bytes_after": before - report.bytes_freed,
        "seconds": round(time.monotonic() - started, 3),
    }
    if json_output:
        typer.echo(json.dumps(summary, indent=2))
        return
    table = Table(title="Reclaim", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for label in ("root", "packs", "dead_records", "released"):
        table.add_row(label.replace("_", " "), str(summary[label]))
    for label in ("bytes_freed", "packed_bytes_before", "packed_bytes_after"):
        table.add_row(label.replace("_", " "), _mib(summary[label]))
    table.add_row("seconds", f"{summary['seconds']:.2f}")
    Console(highlight=False).print(table)


def _mib(size: int) -> str:
    return f"{size / 2**20:,.1f} MiB"


@app.command()
def keygen(
    path: Annotated[Path, typer.Argument(help="Where to write the new key (must not exist).")],
) -> None:
    """Write a new random AES-256 key file (mode 0600) for encryption at rest."""
    try:
        generate_key_file(path)
        fingerprint = key_id(load_key(path))
    except StorageError as exc:
        raise _fail(str(exc), EXIT_FINDINGS) from None
    typer.echo(f"wrote {path} (key id {fingerprint}); back it up: without it the blobs are lost")
