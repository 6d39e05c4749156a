"""``gridpacs catalog …`` sub-commands: run a replica, check and print its configuration.

The one place catalog errors become exit codes and one-line messages (1: unavailable,
2: bad configuration or arguments).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Annotated, NoReturn

import typer

from catalog.config import DEFAULT_CONFIG, load_config, parse_peer
from catalog.errors import CatalogError, CatalogUnavailable, ConfigError

app = typer.Typer(help="Run and configure a catalog replica.", no_args_is_help=True)


def fail(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def boundary() -> Iterator[None]:
    """Catalog errors -> exit code + one line (never a traceback for expected failures)."""
    try:
        yield
    except ConfigError as exc:
        fail(str(exc), 2)
    except CatalogUnavailable as exc:
        fail(str(exc), 1)
    except CatalogError as exc:
        fail(str(exc), 2)
    except _security_errors() as exc:
        fail(f"{type(exc).__name__}: {exc}", 2)


def _security_errors() -> tuple[type[Exception], ...]:
    try:
        from catalog.security import SecurityError
    except ImportError:  # pragma: no cover - security is part of the catalog package
        return ()
    return (SecurityError,)


ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML configuration file.")
]


@app.command("serve")
def serve_cmd(
    config: ConfigOption = None,
    port: Annotated[int | None, typer.Option(help="gRPC port (0 = any free port).")] = None,
    db_url: Annotated[str | None, typer.Option(help="sqlite:///… or postgresql://… URL.")] = None,
    name: Annotated[str | None, typer.Option(help="This replica's name.")] = None,
    listen_host: Annotated[str | None, typer.Option(help="Address to bind.")] = None,
    peer: Annotated[
        list[str] | None, typer.Option(help="Peer replica NAME=HOST:PORT (repeatable).")
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Plaintext gRPC (local development only).")
    ] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option("--metrics-port", help="Serve Prometheus /metrics here (0: any free port)."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING …")] = "INFO",
) -> None:
    """Run a catalog replica until SIGTERM or SIGINT."""
    from catalog.app import build_app

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    with boundary():
        overrides: dict[str, object] = {
            "port": port,
            "db_url": db_url,
            "name": name,
            "listen_host": listen_host,
            "insecure": True if insecure else None,
            "peers": [parse_peer(p) for p in peer] if peer else None,
        }
        cfg = load_config(config, overrides)
        if metrics_port is not None:
            metrics = cfg.metrics.model_copy(update={"enabled": True, "port": metrics_port})
            cfg = cfg.model_copy(update={"metrics": metrics})
        catalog_app = build_app(cfg)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    catalog_app.start()
    print(f"catalog {cfg.name} listening on {cfg.listen_host}:{catalog_app.port}", flush=True)
    while not stopping.wait(1.0):
        pass
    catalog_app.stop(grace=2.0)


@app.command("check-config")
def check_config_cmd(path: Annotated[Path, typer.Argument(help="TOML file to validate.")]) -> None:
    """Validate a configuration file; exit 2 naming every bad field."""
    with boundary():
        cfg = load_config(path, {})
    typer.echo(f"ok: catalog {cfg.name} on {cfg.listen_host}:{cfg.port}, {len(cfg.peers)} peer(s)")


@app.command("print-default-config")
def print_default_config_cmd() -> None:
    """Print a commented configuration with every default."""
    sys.stdout.write(DEFAULT_CONFIG)


def main() -> None:
    app()


__all__ = ["ConfigError", "app", "boundary", "fail", "main"]
