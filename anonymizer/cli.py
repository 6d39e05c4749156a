"""``gridpacs anonymize`` and ``gridpacs anonymizer …``: the boundary to the terminal.

Errors become exit codes and one-line messages here, and nowhere below:

* ``0`` every file was de-identified;
* ``1`` at least one file failed (each failure is listed, nothing partial is left);
* ``2`` nothing could start (unknown profile, broken recipe, missing secret).
"""

from __future__ import annotations

import json
import os
import pwd
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from anonymizer.batch import Settings, default_jobs, run_batch
from anonymizer.engine import Deidentifier
from anonymizer.errors import AnonymizationError
from anonymizer.files import FileOutcome, list_inputs
from anonymizer.profiles import OPTIONS, PROFILES
from anonymizer.pseudonyms import generate_secret, load_secret
from anonymizer.reidentification import ReidentificationMap

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_SETUP = 2
SKIPPED_DICOMDIR = "a DICOMDIR (an index of the input files, not an instance); not copied"

group = typer.Typer(
    help="Secrets, profiles and re-identification for de-identification.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def register(app: typer.Typer) -> None:
    """Mount ``anonymize`` and the ``anonymizer`` group on the umbrella CLI."""
    app.command("anonymize", help="De-identify DICOM files or folders.")(anonymize)
    app.add_typer(group, name="anonymizer", help="Secrets, profiles and re-identification.")


def _fail(message: str, code: int = EXIT_SETUP) -> typer.Exit:
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def anonymize(
    source: Annotated[Path, typer.Argument(help="A DICOM file or a folder of them.")],
    output: Annotated[Path, typer.Argument(help="Folder for the de-identified files.")],
    secret_file: Annotated[
        Path, typer.Option("--secret-file", help="The site's HMAC secret (hex file).")
    ],
    profile: Annotated[
        list[str], typer.Option("--profile", "-p", help="Profile name (default basic).")
    ] = [],  # noqa: B006 (typer reads the default, never mutates it)
    option: Annotated[
        list[str], typer.Option("--option", "-o", help="Option name, repeatable.")
    ] = [],  # noqa: B006
    recipe: Annotated[
        list[Path], typer.Option("--recipe", help="Own deid recipe file, applied last.")
    ] = [],  # noqa: B006
    reid_map: Annotated[
        Path | None, typer.Option("--reid-map", help="Re-identification map (SQLite).")
    ] = None,
    reid_key: Annotated[
        Path | None, typer.Option("--reid-key", help="AES key file of the map.")
    ] = None,
    allow_burned_in: Annotated[
        bool, typer.Option("--allow-burned-in", help="Accept BurnedInAnnotation=YES.")
    ] = False,
    allow_documents: Annotated[
        bool,
        typer.Option(
            "--allow-documents", help="Accept encapsulated PDF, CDA and 3D documents as they are."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON report.")] = False,
    jobs: Annotated[
        int | None,
        typer.Option("--jobs", "-j", min=1, help="Worker processes (default: the CPUs)."),
    ] = None,
) -> None:
    """De-identify SOURCE into OUTPUT (files named after their new SOP Instance UID)."""
    settings = Settings(
        secret_file, tuple(profile), tuple(option), tuple(recipe),
        reid_map, reid_key, allow_burned_in, allow_documents,
    )  # fmt: skip
    try:
        # Built here even when workers build their own: setup errors exit 2 before any
        # work starts, and the re-identification map exists before workers open it.
        deid = settings.build()
        inputs = list_inputs(source)
    except AnonymizationError as exc:
        raise _fail(str(exc)) from None
    # A DICOMDIR indexes the input files by their original paths, patient names often among
    # them; it is no instance to de-identify, and an index of the outputs is a new one.
    skipped = [p for p in inputs if p.name.upper() == "DICOMDIR"]
    inputs = [p for p in inputs if p not in skipped]
    started = time.perf_counter()
    outcomes = _run(settings, deid, inputs, output, jobs or default_jobs(), show=not as_json)
    elapsed = time.perf_counter() - started
    failed = [o for o in outcomes if not o.ok]
    if as_json:
        report = _report(deid, outcomes, elapsed)
        report["skipped"] = [{"source": str(p), "reason": SKIPPED_DICOMDIR} for p in skipped]
        print(json.dumps(report, indent=2))
    else:
        _summary(outcomes, elapsed)
        for path in skipped:
            Console().print(f"skipped {path}: {SKIPPED_DICOMDIR}", highlight=False)
    raise typer.Exit(EXIT_FAILED if failed else EXIT_OK)


def _run(
    settings: Settings,
    deid: Deidentifier,
    inputs: list[Path],
    output: Path,
    jobs: int,
    show: bool,
) -> list[FileOutcome]:
    columns = (TextColumn("anonymize"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    # No timer thread (auto_refresh=False): worker processes are forked while it runs.
    progress = Progress(
        *columns, console=Console(stderr=True), disable=not show, auto_refresh=False
    )
    with progress:
        task = progress.add_task("anonymize", total=len(inputs))

        def advance(done: int) -> None:
            progress.advance(task, done)
            progress.refresh()

        return run_batch(settings, inputs, output, jobs, deidentifier=deid, on_progress=advance)


def _report(deid: Deidentifier, outcomes: list[FileOutcome], elapsed: float) -> dict[str, object]:
    written = sum(1 for o in outcomes if o.ok)
    return {
        "profile": list(deid.profile.names),
        "options": list(deid.profile.options),
        "files": len(outcomes),
        "written": written,
        "failed": len(outcomes) - written,
        "seconds": round(elapsed, 3),
        "results": [
            {
                "source": str(o.source),
                "target": str(o.target) if o.target else None,
                "error": o.error,
                "error_kind": o.error_kind,
            }
            for o in outcomes
        ],
    }


def _summary(outcomes: list[FileOutcome], elapsed: float) -> None:
    console = Console()
    written = sum(1 for o in outcomes if o.ok)
    table = Table(title="anonymize")
    table.add_column("files", justify="right")
    table.add_column("written", justify="right")
    table.add_column("failed", justify="right")
    table.add_column("files/s", justify="right")
    rate = len(outcomes) / elapsed if elapsed > 0 else 0.0
    table.add_row(str(len(outcomes)), str(written), str(len(outcomes) - written), f"{rate:.1f}")
    console.print(table)
    failures = [o for o in outcomes if not o.ok]
    if failures:
        errors = Table(title="failures")
        errors.add_column("file")
        errors.add_column("error")
        errors.add_column("message")
        for o in failures:
            errors.add_row(str(o.source), o.error_kind or "", o.error or "")
        console.print(errors)


@group.command("generate-secret")
def generate_secret_cmd(
    path: Annotated[Path, typer.Argument(help="Where to write the new secret (mode 0600).")],
) -> None:
    """Create a site secret or a re-identification key (refuses to overwrite)."""
    try:
        generate_secret(path)
    except AnonymizationError as exc:
        raise _fail(str(exc), EXIT_FAILED) from None
    Console().print(f"wrote {path}")


@group.command("profiles")
def profiles_cmd() -> None:
    """List the profiles and options with their DCM codes."""
    table = Table(title="profiles and options")
    table.add_column("name")
    table.add_column("kind")
    table.add_column("DCM code")
    table.add_column("meaning")
    for kind, catalogue in (("profile", PROFILES), ("option", OPTIONS)):
        for method in catalogue.values():
            table.add_row(method.name, kind, method.code, method.meaning)
    Console().print(table)


@group.command("reidentify")
def reidentify_cmd(
    pseudonym: Annotated[str, typer.Argument(help="A pseudonymous PatientID, name or UID.")],
    reid_map: Annotated[Path, typer.Option("--map", help="Re-identification map (SQLite).")],
    reid_key: Annotated[Path, typer.Option("--key", help="AES key file of the map.")],
    reason: Annotated[
        str,
        typer.Option("--reason", help="Why (e.g. a ticket or an incidental finding); recorded."),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Map a pseudonym back to the original value (authorized staff, at the site only).

    Every lookup is recorded in the map (who, when, why, what, how many found) before
    anything is shown; see ``gridpacs anonymizer lookups``."""
    reid = _open_map(reid_map, reid_key)
    try:
        found = reid.lookup(pseudonym, actor=local_actor(), reason=reason)
    except AnonymizationError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        print(json.dumps([{"kind": m.kind, "original": m.original} for m in found]))
    else:
        for mapping in found:
            Console().print(f"{mapping.kind}\t{mapping.original}", highlight=False)
    if not found:
        raise _fail(f"unknown pseudonym {pseudonym}", EXIT_FAILED)


@group.command("lookups")
def lookups_cmd(
    reid_map: Annotated[Path, typer.Option("--map", help="Re-identification map (SQLite).")],
    reid_key: Annotated[Path, typer.Option("--key", help="AES key file of the map.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List every re-identification lookup and check that none was edited or removed
    (exit 1 when the chain of records is broken)."""
    reid = _open_map(reid_map, reid_key)
    try:
        records, broken = reid.lookups(), reid.verify_lookups()
    except AnonymizationError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        print(json.dumps({"lookups": [vars(r) for r in records], "broken_at": broken}))
    else:
        table = Table(title="re-identification lookups")
        for column in ("seq", "at (UTC)", "actor", "reason", "pseudonym", "found"):
            table.add_column(column)
        for r in records:
            table.add_row(str(r.seq), r.at, r.actor, r.reason, r.pseudonym, str(r.found))
        Console().print(table)
        if broken is None:
            Console().print(f"{len(records)} records, chain intact", highlight=False)
    if broken is not None:
        raise _fail(f"lookup record {broken} does not verify: edited, or one before it removed",
                    EXIT_FAILED)  # fmt: skip


def _open_map(reid_map: Path, reid_key: Path) -> ReidentificationMap:
    if not reid_map.is_file():
        raise _fail(f"no re-identification map at {reid_map}")
    try:
        return ReidentificationMap(reid_map, load_secret(reid_key))
    except AnonymizationError as exc:
        raise _fail(str(exc)) from None


def local_actor() -> str:
    """Who runs this command: the account of the real user ID (not ``$USER``, which anyone
    can set), and the sudo caller's name when run through sudo."""
    name = pwd.getpwuid(os.getuid()).pw_name
    via = os.environ.get("SUDO_USER")
    return f"local:{name}" + (f" (sudo from {via})" if via and os.getuid() == 0 else "")
