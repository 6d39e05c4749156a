"""Entry point of the ``gridpacs`` console script.

The umbrella is the only place that knows every package: each package owns its
sub-commands (``<package>/cli.py`` exposes a Typer app) and this module mounts them.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="gridpacs",
    help="gridpacs: a grid PACS — DICOM nodes per site, a replicated catalog, "
    "de-identification near the source.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _mount() -> None:
    # Sub-apps are imported lazily so `gridpacs --help` stays fast and a missing optional
    # piece cannot break the others.
    from node.cli import app as node_app
    from storage.cli import app as storage_app

    app.add_typer(node_app, name="node", help="Run and inspect a grid node.")

    app.add_typer(storage_app, name="storage", help="Verify and inspect the blob store.")
    from anonymizer.cli import register as register_anonymizer

    register_anonymizer(app)
    from catalog.security.cli import audit_app, pki_app, token_app

    app.add_typer(pki_app, name="pki", help="The grid CA and host certificates.")
    app.add_typer(token_app, name="token", help="Researchers' API tokens.")
    app.add_typer(audit_app, name="audit", help="Read and verify the audit log.")
    from catalog.cli import app as catalog_app
    from catalog.query_cli import query_cmd

    app.add_typer(catalog_app, name="catalog", help="Run and configure a catalog replica.")
    app.command("query", help="Query the grid-wide catalog.")(query_cmd)


def main() -> None:
    """Run the CLI."""
    _mount()
    app()
