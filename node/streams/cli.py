"""``gridpacs streams …``: what processing streams a node offers, and what is wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from node.cli import load_node_config
from node.streams.registry import StreamRegistry, load_streams

app = typer.Typer(no_args_is_help=True, help="Processing streams of a node.")


def _registry(config: Path | None, streams_dir: Path | None) -> tuple[StreamRegistry, Path]:
    cfg = load_node_config(config, streams_dir=streams_dir)
    from node.app import reserved_ae_titles

    if cfg.streams_dir is None:
        Console(stderr=True).print(
            "[red]error:[/red] no streams folder: give --streams-dir or streams_dir in --config"
        )
        raise typer.Exit(2)
    destinations = set(cfg.dicom.destinations) if config is not None else None
    registry = load_streams(
        cfg.streams_dir, reserved_ae_titles=reserved_ae_titles(cfg), destinations=destinations
    )
    return registry, cfg.streams_dir


@app.command("list")
def list_streams(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Node TOML configuration file.")
    ] = None,
    streams_dir: Annotated[
        Path | None, typer.Option("--streams-dir", help="Folder of stream manifests.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """The streams (name, AE title, command, limits) and every manifest that was skipped.

    Exits 1 when a manifest is invalid, so a deployment check fails loudly.
    """
    registry, folder = _registry(config, streams_dir)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "streams": [
                        {
                            **m.model_dump(mode="json", by_alias=True, exclude={"path"}),
                            "path": str(m.path),
                        }
                        for m in registry.streams.values()
                    ],
                    "problems": [
                        {"path": str(p.path), "reason": p.reason} for p in registry.problems
                    ],
                },
                indent=2,
            )
        )
    else:
        _print(registry, folder)
    raise typer.Exit(1 if registry.problems else 0)


def _print(registry: StreamRegistry, folder: Path) -> None:
    console = Console()
    table = Table(title="processing streams")
    for column in ("name", "AE title", "version", "on", "results to", "tries", "limit", "needs"):
        table.add_column(column, overflow="fold")
    table.add_column("command", overflow="fold", ratio=1)
    for m in sorted(registry.streams.values(), key=lambda m: m.name):
        table.add_row(
            m.name,
            m.ae_title,
            m.version,
            "yes" if m.enabled else "no",
            m.destination or "(keep)",
            str(m.max_attempts),
            f"{m.time_limit_seconds} s",
            f"{m.resources.cpus:g} cpu {m.resources.memory_mb} MB",
            " ".join(m.command),
        )
    console.print(table)
    if registry.problems:
        bad = Table(title=f"skipped manifests in {folder}", title_style="bold red")
        bad.add_column("manifest")
        bad.add_column("problem", style="red")
        for problem in registry.problems:
            path = problem.path
            bad.add_row(
                str(path.relative_to(folder) if path.is_relative_to(folder) else path),
                problem.reason,
            )
        console.print(bad)
