"""The grid AE title: C-FIND answered from the catalog (Conquest's "virtual server"), and
C-MOVE/C-GET served from whichever node holds the data, so a workstation finds and
retrieves a study on any node through its own node.

Each C-FIND match carries RetrieveAETitle = the AE titles of the nodes that hold it.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from pydicom import dcmread
from pydicom.dataset import Dataset

from catalog import CatalogClient, InstanceLocation, QueryFilter, SeriesMatch, StudyMatch
from catalog import InstanceMatch as CatalogInstanceMatch
from node.errors import InvalidIdentifier
from node.index.records import IndexQuery, Level, StoredInstance
from node.peer.client import PeerTransferError
from node.services.retrieve import MAX_SUBOPERATIONS, TooManyMatches
from node.structlog import log_event

LOG = logging.getLogger("gridpacs.node.grid")
DEFAULT_PREFETCH = 4

_SCALAR = {
    "PatientID": "patient_id",
    "PatientName": "patient_name",
    "StudyDate": "study_date",
    "AccessionNumber": "accession_number",
    "StudyDescription": "study_description",
}
_LISTS = {
    "StudyInstanceUID": "study_instance_uids",
    "SeriesInstanceUID": "series_instance_uids",
    "SOPInstanceUID": "sop_instance_uids",
    "ModalitiesInStudy": "modalities",
    "Modality": "modalities",
}


def to_filter(query: IndexQuery) -> QueryFilter:
    """The catalog filter for a C-FIND identifier; unsupported matching keys are refused."""
    values: dict[str, object] = {}
    for keyword, raw in query.filters.items():
        if keyword in _SCALAR:
            values[_SCALAR[keyword]] = raw
        elif keyword in _LISTS:
            values[_LISTS[keyword]] = tuple(v for v in raw.split("\\") if v)
        else:
            raise InvalidIdentifier(f"grid queries cannot match on {keyword}")
    return QueryFilter(**values)  # type: ignore[arg-type]


def _holders(match: StudyMatch | SeriesMatch | CatalogInstanceMatch) -> list[str]:
    return sorted({h.ae_title for h in match.holders})


class GridQueryService:
    """Streams catalog matches as index-shaped dicts for the gateway's C-FIND handler."""

    def __init__(self, catalog: CatalogClient) -> None:
        self._catalog = catalog

    def find(self, query: IndexQuery) -> Iterator[dict[str, object]]:
        flt = to_filter(query)
        if query.level is Level.PATIENT:
            raise InvalidIdentifier("the grid answers STUDY, SERIES and IMAGE level queries")
        if query.level is Level.STUDY:
            for study in self._catalog.query_studies(flt):
                yield {
                    **study.attributes,
                    "StudyInstanceUID": study.study_instance_uid,
                    "ModalitiesInStudy": list(study.modalities_in_study),
                    "NumberOfStudyRelatedSeries": study.number_of_series,
                    "NumberOfStudyRelatedInstances": study.number_of_instances,
                    "RetrieveAETitle": _holders(study),
                }
        elif query.level is Level.SERIES:
            for series in self._catalog.query_series(flt):
                yield {
                    **series.attributes,
                    "StudyInstanceUID": series.study_instance_uid,
                    "SeriesInstanceUID": series.series_instance_uid,
                    "NumberOfSeriesRelatedInstances": series.number_of_instances,
                    "RetrieveAETitle": _holders(series),
                }
        else:
            for inst in self._catalog.query_instances(flt):
                yield {
                    **inst.attributes,
                    "StudyInstanceUID": inst.study_instance_uid,
                    "SeriesInstanceUID": inst.series_instance_uid,
                    "SOPInstanceUID": inst.sop_instance_uid,
                    "SOPClassUID": inst.sop_class_uid,
                    "RetrieveAETitle": _holders(inst),
                }


class LocalCopies(Protocol):
    def get_instance(self, sop_instance_uid: str) -> StoredInstance | None: ...


class PeerFetcher(Protocol):
    def fetch(self, address: str, sop_instance_uid: str) -> bytes: ...


@dataclass(frozen=True, eq=False)
class PlannedInstance:
    """One sub-operation of a grid C-MOVE/C-GET: the catalog location plus its place in the
    plan, so :meth:`GridRetrieveService.load` can fetch the next ones ahead."""

    location: InstanceLocation
    index: int
    window: _Prefetch | None

    @property
    def sop_instance_uid(self) -> str:
        return self.location.sop_instance_uid

    @property
    def sop_class_uid(self) -> str:
        return self.location.sop_class_uid

    @property
    def transfer_syntax_uid(self) -> str:
        return self.location.transfer_syntax_uid


class _Prefetch:
    """Fetches up to ``depth`` instances of one plan ahead of the one being C-STOREd.

    The fetch (network, TLS, SHA-256, parsing) of the next instances overlaps the C-STORE of
    the current one. Bounded: at most ``depth`` instances wait in memory; an abandoned plan
    (cancel, aborted association) wastes at most ``depth`` fetches.
    """

    def __init__(
        self,
        locations: list[InstanceLocation],
        load: Callable[[InstanceLocation], Dataset],
        pool: ThreadPoolExecutor,
        depth: int,
    ) -> None:
        self._locations = locations
        self._load = load
        self._pool = pool
        self._depth = depth
        self._futures: dict[int, Future[Dataset]] = {}
        self._next = 0
        self._lock = threading.Lock()

    def take(self, index: int) -> Dataset:
        with self._lock:
            self._next = max(self._next, index)
            while self._next < min(index + 1 + self._depth, len(self._locations)):
                self._futures[self._next] = self._pool.submit(
                    self._load, self._locations[self._next]
                )
                self._next += 1
            future = self._futures.pop(index, None)
        if future is None:
            return self._load(self._locations[index])
        return future.result()


class GridRetrieveService:
    """Grid C-MOVE/C-GET: locate holders in the catalog, read a local copy when there is
    one, otherwise fetch a verified copy from a holder — the next holder when one fails.

    ``prefetch`` instances are fetched ahead of the current sub-operation (0 turns it off).
    """

    def __init__(
        self,
        catalog: CatalogClient,
        local: LocalCopies,
        read_local: Callable[[StoredInstance], Dataset],
        peers: PeerFetcher,
        *,
        prefetch: int = DEFAULT_PREFETCH,
    ) -> None:
        self._catalog = catalog
        self._local = local
        self._read_local = read_local
        self._peers = peers
        self._depth = prefetch
        self._pool = (
            ThreadPoolExecutor(max_workers=prefetch, thread_name_prefix="grid-prefetch")
            if prefetch > 0
            else None
        )

    def plan(self, query: IndexQuery) -> list[PlannedInstance]:
        """Every instance the identifier selects, grid-wide (at most 65,535)."""
        uids = _unique_keys(query)
        if not any(uids.values()):
            studies = self._catalog.query_studies(to_filter(query))
            uids["study_instance_uids"] = tuple(s.study_instance_uid for s in studies)
            if not uids["study_instance_uids"]:
                return []
        planned = list(self._catalog.locate_instances(**uids))
        if len(planned) > MAX_SUBOPERATIONS:
            raise TooManyMatches(f"more than {MAX_SUBOPERATIONS} instances match")
        window = (
            _Prefetch(planned, self.load_location, self._pool, self._depth)
            if self._pool is not None
            else None
        )
        return [PlannedInstance(loc, i, window) for i, loc in enumerate(planned)]

    def load(self, item: PlannedInstance | InstanceLocation) -> Dataset:
        """The instance as a Dataset (fetched ahead when it came from :meth:`plan`)."""
        if isinstance(item, PlannedInstance):
            if item.window is None:
                return self.load_location(item.location)
            return item.window.take(item.index)
        return self.load_location(item)

    def load_location(self, location: InstanceLocation) -> Dataset:
        """The instance as a Dataset, from here or from the first holder that delivers."""
        local = self._local.get_instance(location.sop_instance_uid)
        if local is not None:
            return self._read_local(local)
        errors: list[str] = []
        for address in location.peer_addresses:
            try:
                data = self._peers.fetch(address, location.sop_instance_uid)
            except PeerTransferError as exc:
                errors.append(str(exc))
                log_event(LOG, "peer_failover", level=logging.WARNING, peer=address,
                          sop_instance_uid=location.sop_instance_uid, reason=str(exc))  # fmt: skip
                continue
            return dcmread(io.BytesIO(data))
        raise PeerTransferError(
            f"no holder delivered {location.sop_instance_uid}: {'; '.join(errors) or 'none known'}"
        )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _unique_keys(query: IndexQuery) -> dict[str, tuple[str, ...]]:
    def split(keyword: str) -> tuple[str, ...]:
        return tuple(v for v in query.filters.get(keyword, "").split("\\") if v)

    return {
        "study_instance_uids": split("StudyInstanceUID"),
        "series_instance_uids": split("SeriesInstanceUID"),
        "sop_instance_uids": split("SOPInstanceUID"),
    }
