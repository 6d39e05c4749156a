"""CatalogService: the catalog's behaviour as plain Python (no gRPC), testable directly.

The servicer (:mod:`catalog.server.servicer`) only translates protobuf to these calls and
back; replication (:mod:`catalog.replication`) applies peers' changes through the same
:meth:`CatalogService.apply_changes` a publishing node uses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence

from catalog.db.filters import Scope, validate
from catalog.db.repository import Repository
from catalog.errors import InvalidFilter
from catalog.reconcile import Held, Period
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

log = logging.getLogger("catalog.service")

DEFAULT_PULL_LIMIT = 5_000
MAX_PULL_LIMIT = 50_000
MAX_PUBLISH_BATCH = 10_000
MAX_HOLDINGS_DAYS = 366
EVERYTHING = Scope()
"""No collection restriction (callers without an auth scope)."""


class CatalogService:
    """One catalog replica: publishing, replication endpoints, queries."""

    def __init__(self, name: str, repository: Repository) -> None:
        self.name = name
        self.repository = repository

    # -- nodes -------------------------------------------------------------------------------

    def register_node(self, node: NodeInfo) -> int:
        """Record how a node is reached; return its high-water mark (where to resume)."""
        if not node.name or not node.ae_title:
            raise InvalidFilter("a node registers with a name and an AE title")
        self.repository.register_node(node)
        log.info(
            "event=register_node node=%s ae_title=%s dicom=%s:%s peer=%s",
            node.name,
            node.ae_title,
            node.dicom_host,
            node.dicom_port,
            node.peer_address,
        )
        return self.repository.high_water_mark(node.name)

    def heartbeat(self, name: str) -> int:
        self.repository.heartbeat(name)
        return self.repository.high_water_mark(name)

    def nodes(self) -> list[NodeInfo]:
        return self.repository.nodes()

    # -- publishing and replication ------------------------------------------------------------

    def apply_changes(
        self, origin: str, changes: Sequence[Change], *, via: str = "publish"
    ) -> PublishResult:
        """Apply an origin's changes; idempotent by (origin, seq)."""
        if len(changes) > MAX_PUBLISH_BATCH:
            raise InvalidFilter(f"at most {MAX_PUBLISH_BATCH} changes per call")
        started = time.perf_counter()
        result = self.repository.apply_changes(origin, changes)
        if changes:
            log.debug(
                "event=apply via=%s origin=%s applied=%d skipped=%d hwm=%d ms=%.1f",
                via,
                origin,
                result.applied,
                result.skipped,
                result.high_water_mark,
                (time.perf_counter() - started) * 1000,
            )
        return result

    def watermarks(self) -> Watermarks:
        return Watermarks(
            replica=self.name,
            marks=self.repository.watermarks(),
            nodes=tuple(self.repository.nodes()),
        )

    def high_water_mark(self, origin: str) -> int:
        return self.repository.high_water_mark(origin)

    def pull_changes(self, origin: str, after_seq: int, limit: int = 0) -> Iterator[Change]:
        """The origin's changes after ``after_seq`` in seq order (what peers replicate)."""
        if after_seq < 0 or limit < 0:
            raise InvalidFilter("after_seq and limit must be >= 0")
        return self.repository.pull_changes(
            origin, after_seq, min(limit or DEFAULT_PULL_LIMIT, MAX_PULL_LIMIT)
        )

    # -- queries -----------------------------------------------------------------------------

    def query_studies(self, query: QueryFilter, scope: Scope = EVERYTHING) -> Iterator[StudyMatch]:
        validate(query)
        return self.repository.query_studies(query, scope)

    def query_series(self, query: QueryFilter, scope: Scope = EVERYTHING) -> Iterator[SeriesMatch]:
        validate(query)
        return self.repository.query_series(query, scope)

    def query_instances(
        self, query: QueryFilter, scope: Scope = EVERYTHING
    ) -> Iterator[InstanceMatch]:
        validate(query)
        return self.repository.query_instances(query, scope)

    def locate_instances(
        self, query: QueryFilter, scope: Scope = EVERYTHING
    ) -> Iterator[InstanceLocation]:
        """Holders of every instance of the given studies / series / instances."""
        if not (query.study_instance_uids or query.series_instance_uids or query.sop_instance_uids):
            raise InvalidFilter("locate needs study, series or SOP instance UIDs")
        validate(query)
        return self.repository.locate_instances(query, scope)

    def list_holdings(
        self,
        period: Period,
        *,
        node: str = "",
        collections: Sequence[str] = (),
        scope: Scope = EVERYTHING,
    ) -> Iterator[tuple[str, Held]]:
        """(node, instance) for everything the catalog believes is held in ``period``
        (by StudyDate or UTC date received): the catalog's side of reconciliation."""
        if (period.end - period.start).days > MAX_HOLDINGS_DAYS:
            raise InvalidFilter(f"a holdings period spans at most {MAX_HOLDINGS_DAYS} days")
        return self.repository.list_holdings(period, node, tuple(collections), scope)
