"""``gridpacs node echo``: C-ECHO the configured destinations as the node reaches them.

Why: after adding a workstation, a modality that asks for Storage Commitment, or a TLS
certificate, the administrator checks each destination before a user depends on it,
with the node's own AE title, address book and TLS settings, and reads why one fails.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from node.cli_options import ConfigOpt, JsonOpt


def echo_destinations(
    destinations: Annotated[
        list[str] | None,
        typer.Argument(help="AE titles of [dicom.destinations] (default: every one)."),
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds each.")] = 10.0,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """C-ECHO destinations as the node would reach them; exit 1 when any fails."""
    from node.cli import load_node_config
    from node.dicom.client_tls import destination_tls
    from node.dicom.echo import echo
    from node.errors import ConfigError

    cfg = load_node_config(config)
    known = cfg.dicom.destinations
    names = [n.strip() for n in destinations or sorted(known)]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise typer.BadParameter(f"not in [dicom.destinations]: {', '.join(unknown)}")
    try:
        tls = destination_tls({n: known[n] for n in names}, cfg.dicom.tls)
    except ConfigError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    rows = []
    for name in names:
        where = known[name]
        result = echo(cfg.dicom.ae_title, name, where.host, where.port,
                      tls=tls.get(name), timeout=timeout)  # fmt: skip
        rows.append({"destination": name, "address": f"{where.host}:{where.port}",
                     "tls": where.tls, **asdict(result)})  # fmt: skip
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        table = Table(title=f"C-ECHO from {cfg.dicom.ae_title}")
        for column in ("destination", "address", "TLS", "result", "ms", "why"):
            table.add_column(column, justify="right" if column == "ms" else "left")
        for row in rows:
            table.add_row(str(row["destination"]), str(row["address"]),
                          "yes" if row["tls"] else "no",
                          "[green]ok[/green]" if row["ok"] else "[red]failed[/red]",
                          f"{row['ms']:.1f}", str(row["reason"]))  # fmt: skip
        # reasons are long: piped into a file or a mail, do not cut them at 80 columns
        Console(width=None if sys.stdout.isatty() else 200).print(table)
    if not all(row["ok"] for row in rows):
        raise typer.Exit(1)
