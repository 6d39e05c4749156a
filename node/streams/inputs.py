"""Gathers a job's input study as DICOM files: local copies first, then holders.

Placement puts a job near its data, so usually every instance is read from this node's
own blob store. Whatever this node does not hold is located in the catalog and fetched
from a holder through the peer service (size and SHA-256 verified), trying the next
holder when one fails — the grid C-MOVE path, writing files instead of sending them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from catalog import CatalogClient, CatalogError, InstanceLocation
from node.errors import NodeError
from node.index.records import IndexQuery, Level, StoredInstance
from node.peer.client import PeerTransferError
from node.structlog import log_event

LOG = logging.getLogger("gridpacs.node.streams.inputs")
_SAFE = re.compile(r"[^0-9.]")


class InputUnavailable(NodeError):
    """The job's study could not be gathered (not found, or a holder failed)."""


class LocalInstances(Protocol):
    def instances(self, query: IndexQuery) -> Iterator[StoredInstance]: ...


class BlobReader(Protocol):
    def get(self, key: str) -> bytes: ...


class PeerFetcher(Protocol):
    def fetch(self, address: str, sop_instance_uid: str) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Gathered:
    files: list[Path]
    local: int
    fetched: int


class InputGatherer:
    def __init__(
        self,
        index: LocalInstances,
        store: BlobReader,
        catalog: CatalogClient | None,
        peers: PeerFetcher | None,
    ) -> None:
        self._index = index
        self._store = store
        self._catalog = catalog
        self._peers = peers

    def gather(
        self, study_instance_uid: str, collection: str, target: Path, *, local_only: bool = False
    ) -> Gathered:
        """Write every instance of the study to ``target/<series>/<sop>.dcm``.

        ``local_only``: the study's collection may not leave the site, so the catalog is
        not asked (the question alone would name the study, and it holds nothing of it).
        """
        query = IndexQuery(
            level=Level.IMAGE,
            filters={"StudyInstanceUID": study_instance_uid},
            collections=(collection,) if collection else None,
        )
        local = {inst.sop_instance_uid: inst for inst in self._index.instances(query)}
        files: list[Path] = []
        for inst in local.values():
            data = self._store.get(inst.blob_key)
            files.append(_write(target, inst.series_instance_uid, inst.sop_instance_uid, data))
        fetched = 0
        seen = set(local)
        remote = [] if local_only else self._remote(study_instance_uid, collection, bool(local))
        for location in remote:
            if location.sop_instance_uid in seen:
                continue
            data = self._fetch(location.sop_instance_uid, location.peer_addresses)
            files.append(
                _write(target, location.series_instance_uid, location.sop_instance_uid, data)
            )
            seen.add(location.sop_instance_uid)
            fetched += 1
        if not files:
            raise InputUnavailable(
                f"study {study_instance_uid} has no instances here"
                + ("" if local_only else " or in the catalog")
                + (f" (collection {collection})" if collection else "")
            )
        log_event(
            LOG,
            "job_input_gathered",
            study_instance_uid=study_instance_uid,
            local=len(files) - fetched,
            fetched=fetched,
        )
        return Gathered(files, len(files) - fetched, fetched)

    def _remote(self, study: str, collection: str, have_local: bool) -> list[InstanceLocation]:
        if self._catalog is None:
            return []
        try:
            return list(
                self._catalog.locate_instances(
                    study_instance_uids=[study], collections=[collection] if collection else []
                )
            )
        except CatalogError as exc:
            if not have_local:
                raise InputUnavailable(f"cannot locate the study in the catalog: {exc}") from exc
            log_event(
                LOG,
                "job_input_local_only",
                level=logging.WARNING,
                study_instance_uid=study,
                reason=str(exc),
            )
            return []

    def _fetch(self, sop_instance_uid: str, addresses: tuple[str, ...]) -> bytes:
        if self._peers is None:
            raise InputUnavailable(f"{sop_instance_uid} is not held here and no peers are known")
        errors = []
        for address in addresses:
            try:
                return self._peers.fetch(address, sop_instance_uid)
            except PeerTransferError as exc:
                errors.append(str(exc))
        raise InputUnavailable(
            f"no holder delivered {sop_instance_uid}: {'; '.join(errors) or 'no holder known'}"
        )


def _write(target: Path, series_uid: str, sop_uid: str, data: bytes) -> Path:
    folder = target / _SAFE.sub("_", series_uid)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{_SAFE.sub('_', sop_uid)}.dcm"
    path.write_bytes(data)
    return path
