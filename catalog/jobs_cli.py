"""``gridpacs jobs …``: submit studies to a processing stream and follow their jobs.

Same connection options as ``gridpacs query`` (``--catalog``, token, TLS files); a readable
rich table by default, ``--json`` for machines. Errors become one line and an exit code
through :func:`catalog.cli.boundary` (1: catalog unavailable, 2: refused or bad arguments).
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from catalog.cli import boundary, fail
from catalog.jobs.records import Job, JobPriority, JobState
from catalog.query_cli import read_token
from catalog.records import QueryFilter

app = typer.Typer(help="Submit studies to processing streams; list and manage jobs.")

Catalog = Annotated[
    list[str],
    typer.Option(
        "--catalog", envvar="GRIDPACS_CATALOG", help="Catalog HOST:PORT (repeatable: failover)."
    ),
]
Token = Annotated[str | None, typer.Option(help="API token (prefer --token-file).")]
TokenFile = Annotated[Path | None, typer.Option(help="File holding the API token.")]
Ca = Annotated[Path | None, typer.Option(help="Grid CA certificate: use TLS.")]
Cert = Annotated[Path | None, typer.Option(help="Client certificate (mTLS).")]
Key = Annotated[Path | None, typer.Option(help="Client key (mTLS).")]
Timeout = Annotated[float, typer.Option(help="Seconds per replica attempt.")]
AsJson = Annotated[bool, typer.Option("--json", help="JSON output.")]
JobId = Annotated[str, typer.Argument(help="Job id (from `gridpacs jobs list`).")]


@contextmanager
def _client(
    catalog: Sequence[str],
    token: str | None,
    token_file: Path | None,
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
    timeout: float,
) -> Iterator[Any]:
    from catalog.jobs_client import JobsClient

    secret = read_token(token, token_file)
    with boundary():
        credentials = None
        if ca is not None:
            from catalog.security import channel_credentials

            credentials = channel_credentials(cert, key, ca)
        with JobsClient(catalog, timeout=timeout, credentials=credentials, token=secret) as client:
            yield client


def job_dict(job: Job) -> dict[str, Any]:
    """A job as JSON-ready values (times in ISO 8601, enums by name)."""
    data = asdict(job)
    for key, value in data.items():
        if isinstance(value, datetime):
            data[key] = value.isoformat()
        elif isinstance(value, tuple):
            data[key] = list(value)
    data["state"] = job.state.value
    data["priority"] = job.priority.name.lower()
    return data


def _when(value: datetime | None, *, short: bool = False) -> str:
    """Local time; ``short`` drops the year for table columns."""
    if value is None:
        return ""
    return value.astimezone().strftime("%m-%d %H:%M:%S" if short else "%Y-%m-%d %H:%M:%S")


def _last_change(job: Job) -> datetime | None:
    times = [t for t in (job.created_at, job.placed_at, job.started_at, job.finished_at) if t]
    return max(times) if times else None


STATE_STYLE = {
    JobState.QUEUED: "yellow",
    JobState.PLACED: "cyan",
    JobState.RUNNING: "blue",
    JobState.SUCCEEDED: "green",
    JobState.FAILED: "red",
    JobState.CANCELLED: "magenta",
}


def print_jobs(jobs: Sequence[Job], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in ("ID", "State", "Stream"):
        table.add_column(column, no_wrap=True)
    table.add_column("Study", overflow="fold", min_width=24)
    for column in ("Node", "Try", "Changed"):
        table.add_column(column, no_wrap=True)
    for job in jobs:
        table.add_row(
            job.id,
            f"[{STATE_STYLE[job.state]}]{job.state.value}[/]"
            + (" [bold]urgent[/]" if job.priority is JobPriority.URGENT else ""),
            job.stream,
            job.study_instance_uid,
            job.node,
            f"{job.attempt}/{job.max_attempts}",
            _when(_last_change(job), short=True),
        )
    console = Console()
    console.print(table)
    console.print(f"{len(jobs)} job(s)")


def print_job(job: Job) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"job {job.id}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    rows = [
        ("state", f"[{STATE_STYLE[job.state]}]{job.state.value}[/]"),
        ("stream", job.stream),
        ("study", job.study_instance_uid),
        ("collection", job.collection),
        ("priority", job.priority.name.lower()),
        ("node", job.node),
        ("attempt", f"{job.attempt} of {job.max_attempts}"),
        ("input held by", ", ".join(job.input_holders)),
        ("submitted by", job.submitted_by),
        ("origin node", job.origin_node),
        ("reply AE title", job.reply_ae_title),
        ("created", _when(job.created_at)),
        ("placed", _when(job.placed_at)),
        ("started", _when(job.started_at)),
        ("finished", _when(job.finished_at)),
        ("exit code", str(job.exit_code) if job.finished_at or job.error else ""),
        ("error", job.error),
        ("output series", _outputs(job)),
    ]
    for name, value in rows:
        if value:
            table.add_row(name, value)
    Console().print(table)


def _outputs(job: Job) -> str:
    """The derived series' UIDs, or how many there are when their UIDs stayed at the site."""
    listed = "\n".join(job.output_series_instance_uids)
    withheld = job.output_series_count - len(job.output_series_instance_uids)
    if withheld > 0:
        note = f"{withheld} kept at node {job.node or job.origin_node} (the collection stays there)"
        return f"{listed}\n{note}" if listed else note
    return listed


def _emit(jobs: Sequence[Job], as_json: bool, title: str) -> None:
    if as_json:
        json.dump([job_dict(j) for j in jobs], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_jobs(jobs, title)


@app.command("submit")
def submit_cmd(
    catalog: Catalog,
    stream: Annotated[str, typer.Option(help="The processing stream to run.")],
    study: Annotated[
        list[str] | None, typer.Option("--study", help="StudyInstanceUID (repeatable).")
    ] = None,
    patient_id: Annotated[str, typer.Option(help="PatientID (wildcards * ?).")] = "",
    patient_name: Annotated[str, typer.Option(help="PatientName, e.g. 'SMITH*'.")] = "",
    study_date: Annotated[str, typer.Option(help="YYYYMMDD or YYYYMMDD-YYYYMMDD.")] = "",
    modality: Annotated[list[str] | None, typer.Option(help="Modality (repeatable).")] = None,
    accession: Annotated[str, typer.Option(help="AccessionNumber.")] = "",
    collection: Annotated[str, typer.Option(help="Read the input from this collection.")] = "",
    urgent: Annotated[bool, typer.Option("--urgent", help="Place before normal jobs.")] = False,
    all_studies: Annotated[
        bool, typer.Option("--all", help="Every study you can see (no filter given).")
    ] = False,
    as_json: AsJson = False,
    token: Token = None,
    token_file: TokenFile = None,
    ca: Ca = None,
    cert: Cert = None,
    key: Key = None,
    timeout: Timeout = 30.0,
) -> None:
    """One job per study: the --study UIDs, or every study the filters match."""
    query = QueryFilter(
        patient_id=patient_id,
        patient_name=patient_name,
        study_date=study_date,
        modalities=tuple(modality or ()),
        accession_number=accession,
        collections=(collection,) if collection else (),
    )
    if not study and query == QueryFilter(collections=query.collections) and not all_studies:
        fail("give --study or a filter (--patient-id, --study-date …), or --all", 2)
    priority = JobPriority.URGENT if urgent else JobPriority.NORMAL
    with _client(catalog, token, token_file, ca, cert, key, timeout) as client:
        jobs = client.submit_jobs(
            stream,
            study_instance_uids=tuple(study or ()),
            query=None if study else query,
            collection=collection,
            priority=priority,
            request_id=uuid.uuid4().hex,  # a failover resend inside this run queues nothing twice
        )
    _emit(jobs, as_json, f"gridpacs: {len(jobs)} job(s) submitted to {stream}")


@app.command("list")
def list_cmd(
    catalog: Catalog,
    state: Annotated[
        list[JobState] | None, typer.Option("--state", help="Only these states (repeatable).")
    ] = None,
    stream: Annotated[str, typer.Option(help="Only this stream.")] = "",
    node: Annotated[str, typer.Option(help="Only jobs placed on / run by this node.")] = "",
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 100,
    as_json: AsJson = False,
    token: Token = None,
    token_file: TokenFile = None,
    ca: Ca = None,
    cert: Cert = None,
    key: Key = None,
    timeout: Timeout = 10.0,
) -> None:
    """Jobs, newest first."""
    with _client(catalog, token, token_file, ca, cert, key, timeout) as client:
        jobs = client.list_jobs(states=tuple(state or ()), stream=stream, node=node, limit=limit)
    _emit(jobs, as_json, "gridpacs: jobs")


@app.command("show")
def show_cmd(
    catalog: Catalog,
    job_id: JobId,
    as_json: AsJson = False,
    token: Token = None,
    token_file: TokenFile = None,
    ca: Ca = None,
    cert: Cert = None,
    key: Key = None,
    timeout: Timeout = 10.0,
) -> None:
    """One job: state, node, attempts and the time of each step."""
    with _client(catalog, token, token_file, ca, cert, key, timeout) as client:
        job = client.get_job(job_id)
    if as_json:
        json.dump(job_dict(job), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_job(job)


@app.command("logs")
def logs_cmd(
    catalog: Catalog,
    job_id: JobId,
    attempt: Annotated[int, typer.Option(help="Attempt number (0 = the latest).")] = 0,
    as_json: AsJson = False,
    token: Token = None,
    token_file: TokenFile = None,
    ca: Ca = None,
    cert: Cert = None,
    key: Key = None,
    timeout: Timeout = 10.0,
) -> None:
    """The captured output of an attempt (its last MiB), written as it was."""
    with _client(catalog, token, token_file, ca, cert, key, timeout) as client:
        logs = client.get_job_logs(job_id, attempt)
    if as_json:
        text = logs.logs.decode("utf-8", "replace")
        json.dump({"job": job_id, "attempt": logs.attempt, "logs": text}, sys.stdout)
        sys.stdout.write("\n")
        return
    sys.stdout.flush()
    sys.stdout.buffer.write(logs.logs)
    sys.stdout.buffer.flush()
    if not logs.attempt:
        typer.echo(f"job {job_id} has not run yet", err=True)


def _act(
    action: str,
    catalog: Sequence[str],
    job_id: str,
    as_json: bool,
    options: tuple[str | None, Path | None, Path | None, Path | None, Path | None, float],
) -> None:
    token, token_file, ca, cert, key, timeout = options
    with _client(catalog, token, token_file, ca, cert, key, timeout) as client:
        job = client.cancel_job(job_id) if action == "cancel" else client.retry_job(job_id)
    if as_json:
        json.dump(job_dict(job), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    note = ""
    if action == "cancel" and job.state is JobState.RUNNING:
        note = " (its worker stops it at the next lease renewal)"
    typer.echo(f"job {job.id}: {job.state.value}{note}")


@app.command("cancel")
def cancel_cmd(
    catalog: Catalog,
    job_id: JobId,
    as_json: AsJson = False,
    token: Token = None,
    token_file: TokenFile = None,
    ca: Ca = None,
    cert: Cert = None,
    key: Key = None,
    timeout: Timeout = 10.0,
) -> None:
    """Cancel a job: at once if not running yet, else when its worker next renews."""
    _act("cancel", catalog, job_id, as_json, (token, token_file, ca, cert, key, timeout))


@app.command("retry")
def retry_cmd(
    catalog: Catalog,
    job_id: JobId,
    as_json: AsJson = False,
    token: Token = None,
    token_file: TokenFile = None,
    ca: Ca = None,
    cert: Cert = None,
    key: Key = None,
    timeout: Timeout = 10.0,
) -> None:
    """Queue a failed or cancelled job again with a fresh attempt budget."""
    _act("retry", catalog, job_id, as_json, (token, token_file, ca, cert, key, timeout))
