"""``gridpacs node …``: serve, status, check-config, reject, commitments, echo."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from node.cli_options import ConfigOpt, DataDirOpt, DbUrlOpt, JsonOpt
from node.config import Destination, NodeConfig, load_config
from node.errors import ConfigError
from node.structlog import configure_logging

app = typer.Typer(no_args_is_help=True, help="Run and inspect a grid node.")
_err = Console(stderr=True)



def _destinations(items: list[str]) -> dict[str, Any]:
    dests: dict[str, Any] = {}
    for item in items:
        name, sep, address = item.partition("=")
        if not sep:
            raise ConfigError(f"--destination {item!r}: expected AET=HOST:PORT")
        try:
            dests[name.strip()] = Destination.parse(address).model_dump()
        except ValueError as exc:
            raise ConfigError(f"--destination {item!r}: {exc}") from exc
    return dests


def _catalog_link(values: dict[str, Any]) -> dict[str, Any]:
    link: dict[str, Any] = {}
    if values.get("catalog"):
        link["addresses"] = tuple(values["catalog"])
    if values.get("insecure_catalog"):
        link["insecure"] = True
    if values.get("publish_identified"):
        link["publish_identified"] = True
    return link


def _overrides(**values: Any) -> dict[str, Any]:
    """CLI options as a nested dict shaped like the TOML file (only options given)."""
    dicom: dict[str, Any] = {
        k: values[k] for k in ("ae_title", "host", "port") if values.get(k) is not None
    }
    if values.get("allow_ae"):
        dicom["allowed_calling_aes"] = values["allow_ae"]
    if values.get("destination"):
        dicom["destinations"] = _destinations(values["destination"])
    if values.get("rejecting_ae"):
        dicom["rejecting_aes"] = values["rejecting_ae"]
    top: dict[str, Any] = {
        key: str(values[key])
        for key in ("data_dir", "db_url", "name", "streams_dir")
        if values.get(key)
    }
    if dicom:
        top["dicom"] = dicom
    if values.get("metrics_port") is not None:
        top["metrics"] = {"enabled": True, "port": values["metrics_port"]}
    link = _catalog_link(values)
    if link:
        top["catalog"] = link
    return top


def load_node_config(config: Path | None, **overrides: Any) -> NodeConfig:
    """The node configuration from ``--config`` plus CLI overrides; exit 2 when invalid."""
    return _load(config, **overrides)


def _load(config: Path | None, **overrides: Any) -> NodeConfig:
    try:
        return load_config(config, _overrides(**overrides))
    except ConfigError as exc:
        _err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


@app.command()
def serve(
    config: ConfigOpt = None,
    ae_title: Annotated[str | None, typer.Option("--ae-title", help="Default GRIDPACS.")] = None,
    host: Annotated[str | None, typer.Option("--host", help="Default 127.0.0.1.")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Default 11112.")] = None,
    data_dir: DataDirOpt = None,
    db_url: DbUrlOpt = None,
    name: Annotated[str | None, typer.Option("--name", help="Node name in the grid.")] = None,
    destination: Annotated[
        list[str] | None,
        typer.Option("--destination", help="C-MOVE destination AET=HOST:PORT (repeatable)."),
    ] = None,
    allow_ae: Annotated[
        list[str] | None,
        typer.Option("--allow-ae", help="Calling AE allowed to associate (repeatable)."),
    ] = None,
    rejecting_ae: Annotated[
        list[str] | None,
        typer.Option(
            "--rejecting-ae",
            help="Calling AE whose IHE IOCM rejection notes remove instances (repeatable).",
        ),
    ] = None,
    catalog: Annotated[
        list[str] | None,
        typer.Option("--catalog", help="Catalog replica HOST:PORT (repeatable, fail-over order)."),
    ] = None,
    insecure_catalog: Annotated[
        bool, typer.Option("--insecure-catalog", help="Plaintext gRPC to the catalog (dev only).")
    ] = False,
    publish_identified: Annotated[
        bool,
        typer.Option("--publish-identified", help="One trust domain: publish identified data."),
    ] = False,
    streams_dir: Annotated[
        Path | None,
        typer.Option("--streams-dir", help="Folder of processing stream manifests."),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option("--metrics-port", help="Serve Prometheus /metrics here (0: any free port)."),
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "INFO",
) -> None:
    """Run the node until SIGTERM/SIGINT."""
    cfg = _load(
        config,
        ae_title=ae_title,
        host=host,
        port=port,
        data_dir=data_dir,
        db_url=db_url,
        name=name,
        destination=destination,
        allow_ae=allow_ae,
        rejecting_ae=rejecting_ae,
        catalog=catalog,
        insecure_catalog=insecure_catalog,
        publish_identified=publish_identified,
        streams_dir=streams_dir,
        metrics_port=metrics_port,
    )
    configure_logging(log_level.upper())
    from node.app import NodeApp  # heavy imports only when serving

    try:
        node = NodeApp(cfg)
        node.start()
    except ConfigError as exc:
        _err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    except OSError as exc:
        _err.print(f"[red]error:[/red] cannot start the node: {exc}", highlight=False)
        raise typer.Exit(1) from None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    node.stop()


@app.command("check-config")
def check_config(path: Annotated[Path, typer.Argument(help="Node TOML file.")]) -> None:
    """Validate a configuration file; exit 2 listing every problem."""
    cfg = _load(path)
    typer.echo(f"{path}: valid (node {cfg.name}, AE {cfg.dicom.ae_title}, port {cfg.dicom.port})")


@app.command("print-default-config")
def print_default_config() -> None:
    """Print the defaults as a JSON document (every setting with its default value)."""
    typer.echo(NodeConfig().model_dump_json(indent=2))


@app.command()
def status(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    db_url: DbUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Counts of what the node holds and where it lives."""
    cfg = _load(config, data_dir=data_dir, db_url=db_url)
    from node.index import open_index
    from storage import Quarantine

    index = open_index(cfg.index_url)
    try:
        commitments = index.commitment_counts()
        counts = {
            **index.stats(),
            **index.removal_counts(),
            "commitment_reports_owed": commitments["pending"],
            "commitment_reports_abandoned": commitments["abandoned"],
        }
    finally:
        index.close()
    quarantined = Quarantine(cfg.quarantine_dir).count() if cfg.quarantine_dir.exists() else 0
    from node.replicator import read_replication_status, replication_status_file

    replication = read_replication_status(replication_status_file(cfg)) or {}
    report = {
        "name": cfg.name,
        "ae_title": cfg.dicom.ae_title,
        "port": cfg.dicom.port,
        "data_dir": str(cfg.data_dir.resolve()),
        "index": _redact(cfg.index_url),
        "audit": _redact(cfg.audit_url) if cfg.audit.enabled else "off",
        **counts,
        "quarantined": quarantined,
        **{f"replication_{k}": v for k, v in replication.items() if k != "last_round"},
        **_audit_export_report(cfg),
    }
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    table = Table(title=f"gridpacs node {cfg.name}", show_header=False)
    for key, value in report.items():
        table.add_row(key, str(value))
    Console().print(table)


def _audit_export_report(cfg: NodeConfig) -> dict[str, object]:
    """Where the audit trail is sent and how many rows the repository is still owed."""
    export = cfg.audit.export
    if export is None or not cfg.audit.enabled:
        return {}
    from catalog.security.audit import AuditLog
    from catalog.security.audit_export import read_cursor
    from storage.sql import engine_from_url

    collector = export.collector
    engine = engine_from_url(cfg.audit_url)
    try:
        behind: object = AuditLog(engine).head()[0] - read_cursor(engine, collector)
    except Exception as exc:  # no trail yet, or unreadable: say so, do not fail the status
        behind = f"unknown ({type(exc).__name__})"
    finally:
        engine.dispose()
    return {"audit_export": collector, "audit_export_behind": behind}


def _redact(url: str) -> str:
    """Hide a password in a database URL before printing it."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _mount_reject() -> None:
    from node.commitment_cli import commitments
    from node.echo_cli import echo_destinations
    from node.reject_cli import reject

    app.command("reject")(reject)
    app.command("commitments")(commitments)
    app.command("echo")(echo_destinations)


_mount_reject()
