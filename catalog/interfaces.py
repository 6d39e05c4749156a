"""The role a catalog client plays for its users (node publisher, grid C-FIND, researchers)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from catalog.records import (
    Change,
    InstanceLocation,
    InstanceMatch,
    NodeInfo,
    PublishResult,
    QueryFilter,
    SeriesMatch,
    StudyMatch,
    Watermarks,
)


class CatalogClient(Protocol):
    """What callers need from the catalog; :class:`catalog.client.GrpcCatalogClient` is it.

    Every method raises :class:`~catalog.errors.CatalogUnavailable` when no replica
    answers and :class:`~catalog.errors.CatalogRejected` when one refuses the call.
    """

    def register_node(self, node: NodeInfo) -> int:
        """Announce the node; return the catalog's high-water mark for it."""
        ...

    def heartbeat(self, name: str) -> int: ...

    def publish_changes(self, origin: str, changes: Sequence[Change]) -> PublishResult:
        """Publish in seq order; idempotent by (origin, seq)."""
        ...

    def get_watermarks(self) -> Watermarks: ...

    def pull_changes(self, origin: str, after_seq: int, limit: int = 0) -> Iterator[Change]:
        """One origin's changes after ``after_seq`` (replicas use it to catch up)."""
        ...

    def query_studies(self, query: QueryFilter) -> Iterator[StudyMatch]: ...

    def query_series(self, query: QueryFilter) -> Iterator[SeriesMatch]: ...

    def query_instances(self, query: QueryFilter) -> Iterator[InstanceMatch]: ...

    def locate_instances(
        self,
        *,
        study_instance_uids: Sequence[str] = (),
        series_instance_uids: Sequence[str] = (),
        sop_instance_uids: Sequence[str] = (),
        collections: Sequence[str] = (),
    ) -> Iterator[InstanceLocation]: ...

    def close(self) -> None: ...
