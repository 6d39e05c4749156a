"""``gridpacs retrieve``: a researcher's grid retrieve into a folder.

What the GRID AE's C-MOVE does for a hospital workstation, for a researcher's token: the
catalog authorizes per collection (and audits), signs a short-lived grant, and the holding
nodes serve the instances to that grant over their peer service. Files land in
``OUT/<StudyUID>/<SeriesUID>/<SOPUID>.dcm``; running it again fetches only what is missing.
Exit code 0 when every instance is there, 1 when anything failed or nothing was authorized,
2 for usage errors.
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, NoReturn

import grpc
import typer
from rich.console import Console

from gridpacs.retrieve_fetch import (
    AccessError,
    Authorizer,
    Fetcher,
    Outcome,
    Result,
    batches,
    is_uid,
)


def _fail(message: str, code: int) -> NoReturn:
    Console(stderr=True).print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def retrieve_cmd(
    catalog: Annotated[
        list[str],
        typer.Option("--catalog", help="Catalog replica HOST:PORT (repeatable: failover)."),
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the studies into.")],
    study: Annotated[
        list[str] | None, typer.Option("--study", help="StudyInstanceUID (repeatable).")
    ] = None,
    patient_id: Annotated[str, typer.Option(help="PatientID (wildcards * ?).")] = "",
    patient_name: Annotated[str, typer.Option(help="PatientName, e.g. 'SMITH*'.")] = "",
    study_date: Annotated[str, typer.Option(help="YYYYMMDD or YYYYMMDD-YYYYMMDD.")] = "",
    modality: Annotated[list[str] | None, typer.Option(help="Modality (repeatable).")] = None,
    accession: Annotated[str, typer.Option(help="AccessionNumber.")] = "",
    collection: Annotated[
        list[str] | None, typer.Option("--collection", help="Only this collection (repeatable).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON summary on stdout.")] = False,
    token: Annotated[str | None, typer.Option(help="API token (prefer --token-file).")] = None,
    token_file: Annotated[Path | None, typer.Option(help="File holding the API token.")] = None,
    ca: Annotated[Path | None, typer.Option(help="Grid CA certificate: use TLS.")] = None,
    cert: Annotated[Path | None, typer.Option(help="Your client certificate (OU=user).")] = None,
    key: Annotated[Path | None, typer.Option(help="Your client key.")] = None,
    workers: Annotated[int, typer.Option(min=1, max=32, help="Parallel fetches.")] = 4,
    timeout: Annotated[float, typer.Option(help="Seconds per catalog or node call.")] = 60.0,
) -> None:
    """Retrieve studies you may read from whichever nodes hold them, into a folder."""
    from catalog.query_cli import read_token

    studies = list(dict.fromkeys(study or ()))
    bad = [s for s in studies if not is_uid(s)]
    if bad:
        _fail(f"--study {bad[0]!r} is not a DICOM UID", 2)
    filters: dict[str, Any] = {
        "patient_id": patient_id,
        "patient_name": patient_name,
        "study_date": study_date,
        "modalities": tuple(modality or ()),
        "accession_number": accession,
    }
    if not studies and not any(filters.values()):
        _fail("name studies (--study) or give a query filter (--patient-id, --study-date …)", 2)
    secret = read_token(token, token_file)
    credentials = _credentials(ca, cert, key)
    collections = tuple(collection or ())
    if not studies:
        studies = _query(catalog, credentials, secret, timeout, filters, collections)
        if not studies:
            _fail("no study matches in the collections your token may read", 1)
    results = _run(catalog, credentials, secret, timeout, studies, collections, out, workers,
                   quiet=as_json)  # fmt: skip
    failed = [r for r in results if r.outcome is Outcome.FAILED]
    if as_json:
        json.dump(_json_summary(out, results), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_summary(out, results)
    if failed:
        raise typer.Exit(1)


def _credentials(
    ca: Path | None, cert: Path | None, key: Path | None
) -> grpc.ChannelCredentials | None:
    if ca is None:
        return None
    from catalog.security import TlsConfigError, channel_credentials

    try:
        return channel_credentials(cert, key, ca)
    except TlsConfigError as exc:
        _fail(str(exc), 2)


def _query(
    catalog: list[str],
    credentials: grpc.ChannelCredentials | None,
    secret: str | None,
    timeout: float,
    filters: dict[str, Any],
    collections: tuple[str, ...],
) -> list[str]:
    from catalog.client import GrpcCatalogClient
    from catalog.errors import CatalogError
    from catalog.records import QueryFilter

    query = QueryFilter(**filters, collections=collections)
    try:
        with GrpcCatalogClient(
            catalog, timeout=timeout, credentials=credentials, token=secret
        ) as client:
            return [s.study_instance_uid for s in client.query_studies(query)]
    except CatalogError as exc:
        _fail(f"query failed: {exc}", 1)


def _run(
    catalog: list[str],
    credentials: grpc.ChannelCredentials | None,
    secret: str | None,
    timeout: float,
    studies: list[str],
    collections: tuple[str, ...],
    out: Path,
    workers: int,
    *,
    quiet: bool,
) -> list[Result]:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from node.peer.client import PeerClient

    authorizer = Authorizer(catalog, credentials, secret, timeout=timeout)
    peers = PeerClient(credentials, timeout=timeout)
    fetcher = Fetcher(out, peers)
    results: list[Result] = []
    progress = Progress(
        TextColumn("[bold]retrieve"),
        BarColumn(),
        MofNCompleteColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=quiet,
    )
    try:
        with progress, ThreadPoolExecutor(max_workers=workers) as pool:
            task = progress.add_task("retrieve", total=None)
            done = 0
            for group in batches(studies):
                try:
                    auth = authorizer.authorize(group, collections)
                except AccessError as exc:
                    progress.stop()
                    if exc.code == "UNAVAILABLE":
                        _fail(f"cannot reach the catalog: {exc}", 1)
                    _fail(f"the catalog refused the retrieve: {exc}", 1)
                done += len(auth.items)
                progress.update(task, total=done)
                batch: list[Result] = []
                for result in pool.map(fetcher.retrieve, auth.items):
                    batch.append(result)
                    progress.advance(task)
                results.extend(renew_expired(batch, group, collections, authorizer, fetcher, pool))
    finally:
        peers.close()
    return results


def renew_expired(
    batch: list[Result],
    group: list[str],
    collections: tuple[str, ...],
    authorizer: Authorizer,
    fetcher: Fetcher,
    pool: ThreadPoolExecutor,
) -> list[Result]:
    """A batch that outlived its grant: fetch what failed for that reason with a fresh one."""
    expired = {r.item.sop_uid for r in batch if "grant expired" in r.error}
    if not expired:
        return batch
    try:
        renewed = authorizer.authorize(group, collections)
    except AccessError:
        return batch  # reported as failed, with the node's reason
    again = [item for item in renewed.items if item.sop_uid in expired]
    redone = {r.item.sop_uid: r for r in pool.map(fetcher.retrieve, again)}
    return [redone.get(r.item.sop_uid, r) for r in batch]


def _per_study(results: list[Result]) -> dict[str, Counter[str]]:
    table: dict[str, Counter[str]] = defaultdict(Counter)
    for r in results:
        row = table[r.item.study_uid]
        row["instances"] += 1
        row[r.outcome.value] += 1
        row["bytes"] += r.size
    return table


def _print_summary(out: Path, results: list[Result]) -> None:
    from rich.table import Table

    console = Console()
    table = Table(title=f"gridpacs retrieve → {out}")
    for column in ("StudyInstanceUID", "Instances", "Fetched", "Already present", "Failed", "MB"):
        table.add_column(column, overflow="fold")
    for study_uid, row in _per_study(results).items():
        table.add_row(
            study_uid,
            str(row["instances"]),
            str(row["fetched"]),
            str(row["present"]),
            f"[red]{row['failed']}[/red]" if row["failed"] else "0",
            f"{row['bytes'] / 1e6:.1f}",
        )
    console.print(table)
    failed = [r for r in results if r.outcome is Outcome.FAILED]
    for r in failed[:20]:
        console.print(f"[red]failed[/red] {r.item.sop_uid}: {r.error}", highlight=False)
    if len(failed) > 20:
        console.print(f"… and {len(failed) - 20} more failures")
    counts = Counter(r.outcome.value for r in results)
    console.print(
        f"{len(results)} instance(s): {counts['fetched']} fetched, "
        f"{counts['present']} already present, {counts['failed']} failed"
    )


def _json_summary(out: Path, results: list[Result]) -> dict[str, object]:
    counts = Counter(r.outcome.value for r in results)
    return {
        "out": str(out),
        "instances": len(results),
        "fetched": counts["fetched"],
        "present": counts["present"],
        "failed": counts["failed"],
        "studies": {uid: dict(row) for uid, row in _per_study(results).items()},
        "failures": [
            {
                "sop_instance_uid": r.item.sop_uid,
                "study_instance_uid": r.item.study_uid,
                "error": r.error,
            }
            for r in results
            if r.outcome is Outcome.FAILED
        ],
        "sources": dict(Counter(r.source for r in results if r.source)),
    }
