"""A durable holding area for bytes the node refused, kept for a human to inspect.

Each entry is two files named by UTC time and a random id (never by anything inside the
rejected bytes, which may be malformed or hostile)::

    20261123T174650.123456Z-3f9c2a1b7d4e8f60.bin    the offending bytes, untouched
    20261123T174650.123456Z-3f9c2a1b7d4e8f60.json   reason, context, time, size, sha256

Both are written with :func:`storage.durable.write_atomically`; the sidecar is written
second, so an entry is listed only once it is complete.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from storage.durable import make_dirs_durably, remove_stale_temp_files, write_atomically
from storage.errors import StorageError, error_from_os

TMP_DIR_NAME = "tmp"
_TIME_FORMAT = "%Y%m%dT%H%M%S.%fZ"


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """One quarantined item, as described by its sidecar."""

    path: Path
    """The file holding the quarantined bytes."""
    reason: str
    context: dict[str, str]
    quarantined_at: datetime
    size: int
    sha256: str


class Quarantine:
    """Quarantined bytes under *root* (created durably when missing)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self._tmp = str(self.root / TMP_DIR_NAME)
        try:
            make_dirs_durably(self._tmp)
            remove_stale_temp_files(self._tmp)
        except OSError as exc:
            raise error_from_os(exc, f"opening quarantine {self.root}") from exc

    def put(self, data: bytes, reason: str, context: Mapping[str, str]) -> Path:
        """Keep *data* with why it was refused; return the path of the bytes.

        Returns only once both files are durable.
        """
        if not reason:
            raise ValueError("a quarantine reason is required")
        bad = [k for k, v in context.items() if not (isinstance(k, str) and isinstance(v, str))]
        if bad:
            raise TypeError(f"quarantine context must map str to str; bad entries: {bad!r}")
        now = datetime.now(UTC)
        name = f"{now.strftime(_TIME_FORMAT)}-{secrets.token_hex(8)}"
        data_path = self.root / f"{name}.bin"
        sidecar = {
            "reason": reason,
            "context": dict(context),
            "quarantined_at": now.isoformat(),
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "data_file": data_path.name,
        }
        body = json.dumps(sidecar, indent=2, sort_keys=True).encode() + b"\n"
        try:
            write_atomically(str(data_path), [data], self._tmp, mode=0o600)
            write_atomically(str(self.root / f"{name}.json"), [body], self._tmp, mode=0o600)
        except OSError as exc:
            raise error_from_os(exc, "writing to quarantine") from exc
        return data_path

    def count(self) -> int:
        """How many complete entries there are (without reading them)."""
        return sum(1 for _ in self.root.glob("*.json"))

    def list(self) -> list[QuarantineEntry]:
        """Every complete entry, oldest first."""
        entries = []
        for sidecar in sorted(self.root.glob("*.json")):
            entries.append(self._read(sidecar))
        return entries

    def _read(self, sidecar: Path) -> QuarantineEntry:
        try:
            meta = json.loads(sidecar.read_bytes())
            return QuarantineEntry(
                path=sidecar.with_suffix(".bin"),
                reason=str(meta["reason"]),
                context={str(k): str(v) for k, v in meta["context"].items()},
                quarantined_at=datetime.fromisoformat(meta["quarantined_at"]),
                size=int(meta["size"]),
                sha256=str(meta["sha256"]),
            )
        except OSError as exc:
            raise error_from_os(exc, f"reading {sidecar}") from exc
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StorageError(f"{sidecar} is not a valid quarantine sidecar: {exc}") from exc
