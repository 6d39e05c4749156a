"""C-FIND matching through the local index."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from node.index.records import IndexQuery


class MatchSource(Protocol):
    def find(self, query: IndexQuery) -> Iterator[dict[str, object]]: ...


class QueryService:
    """Streams matches for a query; a seam for per-collection visibility and audit."""

    def __init__(self, index: MatchSource, *, collections: tuple[str, ...] | None = None) -> None:
        self._index = index
        self._collections = collections

    def find(self, query: IndexQuery) -> Iterator[dict[str, object]]:
        if self._collections is not None and query.collections is None:
            query = IndexQuery(
                level=query.level,
                model=query.model,
                filters=query.filters,
                requested=query.requested,
                collections=self._collections,
                limit=query.limit,
            )
        return self._index.find(query)
