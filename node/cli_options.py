"""Options shared by the ``gridpacs node`` commands (one definition, so they read alike)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="Node TOML configuration file.")
]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="Where blobs, index and quarantine live.")
]
DbUrlOpt = Annotated[
    str | None, typer.Option("--db-url", help="SQLAlchemy URL of the index (default SQLite).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
