"""One stream manifest: MagickBox's ``info.json`` plus what a worker needs to run it.

```json
{"name": "invert", "description": "…", "version": "1.0.0", "AETitle": "INVERT",
 "enabled": 1, "command": ["{python}", "{stream_dir}/invert.py"],
 "resources": {"cpus": 1, "memory_mb": 256}, "time_limit_seconds": 600,
 "destination": "sender", "max_attempts": 2}
```

The MagickBox keys keep their spelling (``AETitle``, ``enabled`` as 0/1 or a boolean) so
existing stream folders load unchanged once a ``command`` is added.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

SENDER = "sender"
"""Destination keyword: results go back to the AE title that sent the study."""


class Resources(BaseModel):
    """What one run needs; reported to the catalog for placement."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpus: Annotated[float, Field(gt=0, le=1024)] = 1.0
    memory_mb: Annotated[int, Field(ge=0)] = 256


class StreamManifest(BaseModel):
    """A validated manifest; ``path`` is the file it came from."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str
    description: str = ""
    version: str = "0.0.0"
    ae_title: str = Field(alias="AETitle")
    license: str = ""
    enabled: bool = True
    command: tuple[str, ...]
    """argv; ``{stream_dir}`` is the manifest's folder, ``{python}`` the node's Python."""
    resources: Resources = Field(default_factory=Resources)
    time_limit_seconds: Annotated[int, Field(ge=1, le=7 * 24 * 3600)] = 3600
    destination: str = ""
    """``"sender"``, an AE title of the node's ``[dicom.destinations]``, or ``""`` (keep)."""
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 1
    """Attempts in all (1 = no retry)."""
    collection: str = ""
    """Collection the triggering study is stored in ("" = the node's default collection)."""
    path: Path = Path()

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(f"{value!r}: use letters, digits, '-', '_' or '.' (max 64)")
        return value

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, value: str) -> str:
        stripped = value.strip()
        if not _AE_RE.match(stripped):
            raise ValueError(f"{value!r} is not a valid AE title (1-16 characters, no '\\')")
        return stripped

    @field_validator("enabled", mode="before")
    @classmethod
    def _enabled(cls, value: object) -> object:
        return bool(value) if isinstance(value, int) else value

    @field_validator("command")
    @classmethod
    def _command(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or not value[0].strip():
            raise ValueError("give the command as a non-empty list of arguments")
        return value

    @field_validator("destination")
    @classmethod
    def _destination(cls, value: str) -> str:
        stripped = value.strip()
        if stripped and stripped.lower() == SENDER:
            return SENDER
        if stripped and not _AE_RE.match(stripped):
            raise ValueError(f"{value!r}: use 'sender', a destination AE title or ''")
        return stripped

    @property
    def stream_dir(self) -> Path:
        return self.path.parent

    @property
    def destination_kind(self) -> Literal["sender", "ae", "none"]:
        if self.destination == SENDER:
            return "sender"
        return "ae" if self.destination else "none"

    def argv(self) -> list[str]:
        """The command with its placeholders filled in."""
        values = {"stream_dir": str(self.stream_dir.resolve()), "python": sys.executable}
        return [
            arg.replace("{stream_dir}", values["stream_dir"]).replace("{python}", values["python"])
            for arg in self.command
        ]
