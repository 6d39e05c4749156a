"""Research routes: a called AE title de-identifies near the source into a collection.

This is where the node meets the anonymizer library (Globus MEDICUS: anonymize before data
leaves the site). Profiles and options are loaded — and so validated — when the node
starts; a bad profile name stops the start with a clear message instead of failing the
first study.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydicom.dataset import Dataset

from anonymizer import (
    AnonymizationError,
    BurnedInAnnotation,
    Deidentifier,
    EncapsulatedDocument,
    ReidentificationMap,
    generate_secret,
    load_profile,
    load_secret,
)
from anonymizer.part10 import write_part10
from node.config import NodeConfig, RouteConfig
from node.errors import ConfigError, DeidentificationRefused
from node.routing import Route
from node.services.ingest import Transform
from node.structlog import log_event

LOG = logging.getLogger("gridpacs.node.routes")


def _secret(path: Path, what: str) -> bytes:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        generate_secret(path)
        log_event(LOG, "secret_generated", what=what, path=str(path))
    return load_secret(path)


def deidentifying_transform(deid: Deidentifier) -> Transform:
    """Wrap a Deidentifier as an ingest transform; its refusals become IngestErrors."""

    def transform(data: bytes, ds: Dataset) -> tuple[bytes, Dataset]:
        try:
            out = deid.deidentify(ds)
        except BurnedInAnnotation as exc:
            raise DeidentificationRefused(f"burned-in annotation not allowed: {exc}") from exc
        except EncapsulatedDocument as exc:
            raise DeidentificationRefused(f"encapsulated document not allowed: {exc}") from exc
        except AnonymizationError as exc:
            raise DeidentificationRefused(f"de-identification failed: {exc}") from exc
        return write_part10(out), out

    return transform


def build_research_routes(config: NodeConfig) -> list[Route]:
    """A :class:`Route` per configured research route, with its Deidentifier ready."""
    if not config.routes:
        return []
    anon = config.anonymizer
    secret = _secret(anon.secret_file or config.secrets_dir / "pseudonym.secret", "pseudonym")
    reid_key = _secret(anon.reid_key_file or config.secrets_dir / "reid.key", "reid_key")
    reid_map = ReidentificationMap(config.data_dir / "reidentification.sqlite", reid_key)
    routes: list[Route] = []
    for rc in config.routes:
        routes.append(_route(rc, config, secret, reid_map))
    return routes


def _route(
    rc: RouteConfig, config: NodeConfig, secret: bytes, reid_map: ReidentificationMap
) -> Route:
    try:
        profile = load_profile(rc.profile, options=rc.options, extra_recipes=rc.recipes)
    except AnonymizationError as exc:
        raise ConfigError(f"routes.{rc.ae_title}: {exc}") from exc
    deid = Deidentifier(
        profile,
        secret,
        reid_map=reid_map,
        allow_burned_in=rc.allow_burned_in,
        allow_documents=rc.allow_documents,
    )
    return Route(
        ae_title=rc.ae_title,
        collection=rc.collection,
        transform=deidentifying_transform(deid),
        archive_original_in=config.default_collection if rc.keep_original else None,
        description=f"de-identify ({'+'.join(rc.profile + rc.options)}) into {rc.collection}",
    )
