"""The streams folder: every manifest in it, loaded once at start.

A bad manifest never stops the node: it is reported (one log line, and a row in
``gridpacs streams list``) and skipped, and the other streams still load. Two streams with
the same name or AE title are both refused, since either choice would surprise someone.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from node.streams.manifest import StreamManifest
from node.structlog import log_event

LOG = logging.getLogger("gridpacs.node.streams")


@dataclass(frozen=True, slots=True)
class ManifestProblem:
    """A manifest that was skipped, and why."""

    path: Path
    reason: str


@dataclass
class StreamRegistry:
    """Loaded streams by name, plus the manifests that were skipped."""

    streams: dict[str, StreamManifest] = field(default_factory=dict)
    problems: list[ManifestProblem] = field(default_factory=list)

    @property
    def enabled(self) -> list[StreamManifest]:
        return [s for s in self.streams.values() if s.enabled]

    def get(self, name: str) -> StreamManifest | None:
        return self.streams.get(name)

    def by_ae_title(self) -> dict[str, StreamManifest]:
        return {s.ae_title: s for s in self.enabled}


def manifest_paths(folder: Path) -> list[Path]:
    """``folder/*.json`` and MagickBox's ``folder/<stream>/info.json``, sorted."""
    found = [p for p in folder.glob("*.json") if p.is_file()]
    found += [p for p in folder.glob("*/info.json") if p.is_file()]
    return sorted(found)


def _format(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def load_manifest(path: Path) -> StreamManifest:
    """Parse and validate one manifest; ValueError with a readable reason otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read: {exc.strerror or exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("a manifest is a JSON object")
    try:
        return StreamManifest.model_validate({**data, "path": path})
    except ValidationError as exc:
        raise ValueError(_format(exc)) from exc


def load_streams(
    folder: Path | None,
    *,
    reserved_ae_titles: Collection[str] = (),
    destinations: Collection[str] | None = None,
) -> StreamRegistry:
    """Every manifest under ``folder``; problems are logged and kept, never raised.

    ``reserved_ae_titles`` are the node's other AE titles (a stream cannot take them);
    ``destinations`` are the configured destination AE titles, when known, so a stream
    routing to an unknown AE is reported at start rather than at its first job.
    """
    registry = StreamRegistry()
    if folder is None:
        return registry
    if not folder.is_dir():
        _problem(registry, folder, "streams folder does not exist")
        return registry
    loaded: list[StreamManifest] = []
    for path in manifest_paths(folder):
        try:
            manifest = load_manifest(path)
            _check_destination(manifest, destinations)
        except ValueError as exc:
            _problem(registry, path, str(exc))
            continue
        if manifest.enabled and manifest.ae_title in reserved_ae_titles:
            _problem(registry, path, f"AE title {manifest.ae_title!r} is already used by the node")
            continue
        loaded.append(manifest)
    for manifest in _unique(registry, loaded):
        registry.streams[manifest.name] = manifest
    for manifest in registry.streams.values():
        log_event(
            LOG,
            "stream_loaded",
            name=manifest.name,
            version=manifest.version,
            ae_title=manifest.ae_title,
            enabled=manifest.enabled,
            path=str(manifest.path),
        )
    return registry


def _check_destination(manifest: StreamManifest, destinations: Collection[str] | None) -> None:
    if destinations is None or manifest.destination_kind != "ae":
        return
    if manifest.destination not in destinations:
        raise ValueError(
            f"destination {manifest.destination!r} is not one of the node's "
            f"[dicom.destinations] ({', '.join(sorted(destinations)) or 'none configured'})"
        )


def _unique(registry: StreamRegistry, loaded: Iterable[StreamManifest]) -> list[StreamManifest]:
    items = list(loaded)
    names: dict[str, int] = {}
    aes: dict[str, int] = {}
    for m in items:
        names[m.name] = names.get(m.name, 0) + 1
        if m.enabled:
            aes[m.ae_title] = aes.get(m.ae_title, 0) + 1
    kept = []
    for m in items:
        if names[m.name] > 1:
            _problem(registry, m.path, f"stream name {m.name!r} is defined more than once")
        elif m.enabled and aes[m.ae_title] > 1:
            _problem(registry, m.path, f"AE title {m.ae_title!r} is used by more than one stream")
        else:
            kept.append(m)
    return kept


def _problem(registry: StreamRegistry, path: Path, reason: str) -> None:
    registry.problems.append(ManifestProblem(path, reason))
    log_event(LOG, "stream_manifest_invalid", level=logging.ERROR, path=str(path), reason=reason)
