"""``gridpacs query``: researchers query the grid-wide catalog (table, JSON or CSV).

Results stream from the catalog; ``--json`` and ``--csv`` write each match as it arrives
(bounded memory), the rich table collects them first.
"""

from __future__ import annotations

import csv
import enum
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from catalog.cli import boundary, fail
from catalog.records import Holder, InstanceMatch, QueryFilter, SeriesMatch, StudyMatch


class QueryLevel(enum.StrEnum):
    STUDY = "study"
    SERIES = "series"
    IMAGE = "image"


COLUMNS: dict[QueryLevel, tuple[str, ...]] = {
    QueryLevel.STUDY: (
        "StudyInstanceUID",
        "PatientID",
        "PatientName",
        "StudyDate",
        "AccessionNumber",
        "StudyDescription",
        "ModalitiesInStudy",
        "Series",
        "Instances",
        "Nodes",
    ),
    QueryLevel.SERIES: (
        "SeriesInstanceUID",
        "StudyInstanceUID",
        "PatientID",
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "Instances",
        "Nodes",
    ),
    QueryLevel.IMAGE: (
        "SOPInstanceUID",
        "SeriesInstanceUID",
        "StudyInstanceUID",
        "SOPClassUID",
        "InstanceNumber",
        "Nodes",
    ),
}
Match = StudyMatch | SeriesMatch | InstanceMatch


def holders_text(holders: Iterable[Holder]) -> str:
    """``node(AE)/collection`` per holder, ``; ``-separated."""
    return "; ".join(f"{h.node}({h.ae_title})/{h.collection}" for h in holders)


def flat_row(match: Match) -> dict[str, str]:
    """One match as the printable columns of its level."""
    attrs: dict[str, Any] = dict(match.attributes)
    row = {k: "" if v is None else str(v) for k, v in attrs.items()}
    row["Nodes"] = holders_text(match.holders)
    row["StudyInstanceUID"] = match.study_instance_uid
    if isinstance(match, StudyMatch):
        row["ModalitiesInStudy"] = "\\".join(match.modalities_in_study)
        row["Series"] = str(match.number_of_series)
        row["Instances"] = str(match.number_of_instances)
    elif isinstance(match, SeriesMatch):
        row["SeriesInstanceUID"] = match.series_instance_uid
        row["Instances"] = str(match.number_of_instances)
    else:
        row["SeriesInstanceUID"] = match.series_instance_uid
        row["SOPInstanceUID"] = match.sop_instance_uid
        row["SOPClassUID"] = match.sop_class_uid
    return row


def write_json(matches: Iterator[Match]) -> int:
    count = 0
    sys.stdout.write("[")
    for match in matches:
        sys.stdout.write(("," if count else "") + "\n" + json.dumps(asdict(match), default=str))
        count += 1
    sys.stdout.write("\n]\n")
    return count


def write_csv(matches: Iterator[Match], level: QueryLevel) -> int:
    writer = csv.DictWriter(sys.stdout, fieldnames=COLUMNS[level], extrasaction="ignore")
    writer.writeheader()
    count = 0
    for match in matches:
        writer.writerow(flat_row(match))
        count += 1
    return count


def write_table(matches: Iterator[Match], level: QueryLevel) -> int:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"gridpacs: {level.value}-level matches")
    for column in COLUMNS[level]:
        table.add_column(column, overflow="fold")
    count = 0
    for match in matches:
        row = flat_row(match)
        table.add_row(*(row.get(c, "") for c in COLUMNS[level]))
        count += 1
    console = Console()
    console.print(table)
    console.print(f"{count} match(es)")
    return count


def read_token(token: str | None, token_file: Path | None) -> str | None:
    if token and token_file:
        fail("give --token or --token-file, not both", 2)
    if token_file is not None:
        try:
            return token_file.read_text().strip() or None
        except OSError as exc:
            fail(f"cannot read token file {token_file}: {exc.strerror}", 2)
    return token


def query_cmd(
    catalog: Annotated[
        list[str],
        typer.Option("--catalog", help="Catalog replica HOST:PORT (repeatable: failover)."),
    ],
    level: Annotated[QueryLevel, typer.Option(help="Query level.")] = QueryLevel.STUDY,
    patient_id: Annotated[str, typer.Option(help="PatientID (wildcards * ?).")] = "",
    patient_name: Annotated[str, typer.Option(help="PatientName, e.g. 'SMITH*'.")] = "",
    study_date: Annotated[str, typer.Option(help="YYYYMMDD or YYYYMMDD-YYYYMMDD.")] = "",
    modality: Annotated[list[str] | None, typer.Option(help="Modality (repeatable).")] = None,
    accession: Annotated[str, typer.Option(help="AccessionNumber.")] = "",
    study_uid: Annotated[
        list[str] | None, typer.Option(help="StudyInstanceUID (repeatable).")
    ] = None,
    series_uid: Annotated[
        list[str] | None, typer.Option(help="SeriesInstanceUID (repeatable).")
    ] = None,
    collection: Annotated[list[str] | None, typer.Option(help="Collection (repeatable).")] = None,
    study_description: Annotated[str, typer.Option(help="StudyDescription (wildcards).")] = "",
    limit: Annotated[int, typer.Option(help="At most this many matches (0 = all).")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="JSON array output.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV output.")] = False,
    token: Annotated[str | None, typer.Option(help="API token (prefer --token-file).")] = None,
    token_file: Annotated[Path | None, typer.Option(help="File holding the API token.")] = None,
    ca: Annotated[Path | None, typer.Option(help="Grid CA certificate: use TLS.")] = None,
    cert: Annotated[Path | None, typer.Option(help="Client certificate (mTLS).")] = None,
    key: Annotated[Path | None, typer.Option(help="Client key (mTLS).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds per replica attempt.")] = 10.0,
) -> None:
    """Query the grid-wide catalog; every match says which node(s) hold it."""
    from catalog.client import GrpcCatalogClient

    if as_json and as_csv:
        fail("give --json or --csv, not both", 2)
    query = QueryFilter(
        patient_id=patient_id,
        patient_name=patient_name,
        study_date=study_date,
        modalities=tuple(modality or ()),
        accession_number=accession,
        study_instance_uids=tuple(study_uid or ()),
        series_instance_uids=tuple(series_uid or ()),
        collections=tuple(collection or ()),
        study_description=study_description,
        limit=limit,
    )
    secret = read_token(token, token_file)
    with boundary():
        credentials = None
        if ca is not None:
            from catalog.security import channel_credentials

            credentials = channel_credentials(cert, key, ca)
        with GrpcCatalogClient(
            catalog,
            timeout=timeout,
            stream_timeout=max(timeout, 300.0),
            credentials=credentials,
            token=secret,
        ) as client:
            matches: Iterator[Match]
            if level is QueryLevel.STUDY:
                matches = client.query_studies(query)
            elif level is QueryLevel.SERIES:
                matches = client.query_series(query)
            else:
                matches = client.query_instances(query)
            if as_json:
                write_json(matches)
            elif as_csv:
                write_csv(matches, level)
            else:
                write_table(matches, level)
