"""Plan and load the instances a C-MOVE/C-GET sends."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Protocol

from pydicom import dcmread
from pydicom.dataset import Dataset

from node.errors import ArchiveUnavailable
from node.index.records import IndexQuery, StoredInstance

MAX_SUBOPERATIONS = 65_535
"""NumberOf*Suboperations are US: one retrieve cannot announce more (PS3.4 C.4.2.3)."""


class InstanceSource(Protocol):
    def instances(self, query: IndexQuery) -> Iterator[StoredInstance]: ...


class BlobReader(Protocol):
    def get(self, key: str) -> bytes: ...


class TooManyMatches(ArchiveUnavailable):
    """More instances matched than one retrieve can carry."""


class RetrieveService:
    """Turns a retrieve identifier into the instances to send, then their datasets."""

    def __init__(self, index: InstanceSource, store: BlobReader) -> None:
        self._index = index
        self._store = store

    def plan(self, query: IndexQuery) -> list[StoredInstance]:
        """Every instance the query selects, in study/series/instance order."""
        planned: list[StoredInstance] = []
        for inst in self._index.instances(query):
            planned.append(inst)
            if len(planned) > MAX_SUBOPERATIONS:
                raise TooManyMatches(
                    f"more than {MAX_SUBOPERATIONS} instances match; narrow the request"
                )
        return planned

    def load(self, inst: StoredInstance) -> Dataset:
        """The stored dataset, checksum-verified by the blob store."""
        return dcmread(io.BytesIO(self._store.get(inst.blob_key)))

    def read_bytes(self, inst: StoredInstance) -> bytes:
        """The stored Part 10 bytes, checksum-verified."""
        return self._store.get(inst.blob_key)
