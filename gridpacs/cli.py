"""Entry point of the ``gridpacs`` console script.

The umbrella is the only place that knows every package: each package owns its
sub-commands (``<package>/cli.py`` exposes a Typer app) and this module mounts them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="gridpacs",
    help="gridpacs: a grid PACS — DICOM nodes per site, a replicated catalog, "
    "de-identification near the source.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _group() -> None:
    """gridpacs: a grid PACS — DICOM nodes per site, a replicated catalog."""


@app.command("up")
def up(
    directory: Annotated[Path, typer.Option("--dir", help="Where the grid keeps data.")] = Path(
        "var/grid"
    ),
    base_port: Annotated[int, typer.Option("--base-port", help="First node's DICOM port.")] = 11112,
    catalog_port: Annotated[int, typer.Option("--catalog-port", help="Catalog gRPC port.")] = 50051,
    plaintext: Annotated[bool, typer.Option("--plaintext", help="No mTLS (debug only).")] = False,
) -> None:
    """Start a catalog and two nodes on this machine and print their AE titles and ports."""
    from rich.console import Console

    from gridpacs.up import run_grid

    raise typer.Exit(
        run_grid(directory.resolve(), base_port, catalog_port, not plaintext, Console())
    )


def _mount_node() -> None:
    from node.cli import app as node_app

    app.add_typer(node_app, name="node", help="Run and inspect a grid node.")


def _mount_catalog() -> None:
    from catalog.cli import app as catalog_app

    app.add_typer(catalog_app, name="catalog", help="Run and configure a catalog replica.")


def _mount_query() -> None:
    from catalog.query_cli import query_cmd

    app.command("query", help="Query the grid-wide catalog.")(query_cmd)


def _mount_streams() -> None:
    from node.streams.cli import app as streams_app

    app.add_typer(streams_app, name="streams", help="Processing streams of a node.")


def _mount_jobs() -> None:
    from catalog.jobs_cli import app as jobs_app

    app.add_typer(jobs_app, name="jobs", help="Submit studies to processing streams; follow jobs.")


def _mount_retrieve() -> None:
    from gridpacs.retrieve import retrieve_cmd

    app.command("retrieve", help="Retrieve studies you may read into a folder.")(retrieve_cmd)


def _mount_reconcile() -> None:
    from gridpacs.reconcile.cli import RECONCILE_HELP, reconcile_cmd

    app.command("reconcile", help=RECONCILE_HELP)(reconcile_cmd)


def _mount_storage() -> None:
    from storage.cli import app as storage_app

    app.add_typer(storage_app, name="storage", help="Verify and inspect the blob store.")


def _mount_anonymizer() -> None:
    from anonymizer.cli import register as register_anonymizer

    register_anonymizer(app)


def _mount_security() -> None:
    from catalog.security.cli import audit_app, pki_app, token_app

    app.add_typer(pki_app, name="pki", help="The grid CA and host certificates.")
    app.add_typer(token_app, name="token", help="Researchers' API tokens.")
    app.add_typer(audit_app, name="audit", help="Read and verify the audit log.")


_MOUNTS = {
    "node": _mount_node,
    "catalog": _mount_catalog,
    "query": _mount_query,
    "jobs": _mount_jobs,
    "retrieve": _mount_retrieve,
    "reconcile": _mount_reconcile,
    "storage": _mount_storage,
    "streams": _mount_streams,
    "anonymize": _mount_anonymizer,
    "anonymizer": _mount_anonymizer,
    "pki": _mount_security,
    "token": _mount_security,
    "audit": _mount_security,
}


def _mount(argv: list[str]) -> None:
    """Mount the sub-command being run, or all of them for help.

    Each package owns its CLI; importing only the one in use keeps `gridpacs node serve`
    from loading the catalog, alembic and deid on every start (≈1 s each time).
    """
    first = next((arg for arg in argv if not arg.startswith("-")), None)
    if first == "up":
        return
    chosen = _MOUNTS.get(first or "")
    if chosen is not None:
        chosen()
        return
    for mount in dict.fromkeys(_MOUNTS.values()):
        mount()


def main() -> None:
    """Run the CLI."""
    _mount(sys.argv[1:])
    app()
