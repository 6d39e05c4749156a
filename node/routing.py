"""Called AE title → what happens to what arrives there (MagickBox: the AE selects the stream).

The node's own AE archives into the default collection; further AE titles (anonymizing
research routes, processing streams, the grid AE) are added by their features and validated
at start, so a typo in an AE title fails the start, not the first study.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.services.ingest import Transform


@dataclass(frozen=True, slots=True)
class Route:
    """What the node does with instances sent to one of its AE titles."""

    ae_title: str
    collection: str
    transform: Transform | None = None
    grid: bool = False
    """Queries and retrieves are answered grid-wide from the catalog; storage is refused."""
    archive_original_in: str | None = None
    """Also store the untransformed original in this collection (identified archive)."""
    description: str = "archive"
    stream: str | None = None
    """Processing stream: each study the association delivers becomes one job."""


class Router:
    """Looks up routes by called AE title (exact match after trimming spaces)."""

    def __init__(self, routes: list[Route]) -> None:
        table: dict[str, Route] = {}
        for route in routes:
            key = route.ae_title.strip()
            if key in table:
                raise ValueError(f"AE title {key!r} is routed twice")
            table[key] = route
        self._routes = table

    @property
    def ae_titles(self) -> frozenset[str]:
        return frozenset(self._routes)

    def route_for(self, called_ae: str) -> Route | None:
        return self._routes.get(called_ae.strip())
