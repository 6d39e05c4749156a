"""The grid AE title: C-FIND answered from the catalog (Conquest's "virtual server"), and
C-MOVE/C-GET served from whichever node holds the data, so a workstation finds and
retrieves a study on any node through its own node.

Each C-FIND match carries RetrieveAETitle = the AE titles of the nodes that hold it.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from pydicom.dataset import Dataset

from catalog import CatalogClient, InstanceLocation, QueryFilter, SeriesMatch, StudyMatch
from catalog import InstanceMatch as CatalogInstanceMatch
from node.errors import InvalidIdentifier
from node.index.records import IndexQuery, Level, StoredInstance
from node.peer.client import PeerTransferError
from node.services.retrieve import MAX_SUBOPERATIONS, StoredDataset, TooManyMatches
from node.structlog import log_event

LOG = logging.getLogger("gridpacs.node.grid")
DEFAULT_PREFETCH = 4
DEFAULT_BATCH = 32

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

    def get_records(self, sop_instance_uids: Sequence[str]) -> Mapping[str, object]: ...


class PeerFetcher(Protocol):
    def fetch(self, address: str, sop_instance_uid: str) -> bytes: ...

    def fetch_many(
        self, address: str, sop_instance_uids: Sequence[str]
    ) -> Iterator[tuple[str, bytes | PeerTransferError]]: ...


@dataclass(frozen=True, eq=False)
class PlannedInstance:
    """One sub-operation of a grid C-MOVE/C-GET: the catalog location plus its place in the
    plan, so :meth:`GridRetrieveService.load` can take it from the instances fetched ahead."""

    location: InstanceLocation
    index: int
    window: _Prefetch | None

    @property
    def sop_instance_uid(self) -> str:
        return self.location.sop_instance_uid

    @property
    def study_instance_uid(self) -> str:
        return self.location.study_instance_uid

    @property
    def sop_class_uid(self) -> str:
        return self.location.sop_class_uid

    @property
    def transfer_syntax_uid(self) -> str:
        return self.location.transfer_syntax_uid


_HERE = object()  # marks a sub-operation the prefetch thread leaves to the sub-operation


class _Ahead:
    """What the prefetch thread and the sub-operations share (the thread holds this, not the
    window, so a window nobody references any more is collected and stops the thread)."""

    def __init__(self, depth: int) -> None:
        self.cond = threading.Condition()
        self.ready: dict[int, Dataset | Exception | object] = {}
        self.taking = 0  # index of the sub-operation in progress
        self.depth = depth
        self.stopped = False
        self.finished = False

    def here(self, index: int) -> None:
        """The sub-operation reads this one itself (held here, or no holder known)."""
        with self.cond:
            self.ready[index] = _HERE
            self.cond.notify_all()

    def put(self, index: int, value: Dataset | Exception) -> bool:
        """Hand one instance over once the sub-operations are near; False once abandoned."""
        with self.cond:
            while not self.stopped and index > self.taking + self.depth:
                self.cond.wait()
            if self.stopped:
                return False
            self.ready[index] = value
            self.cond.notify_all()
            return True

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()


class _Prefetch:
    """Fetches a plan's remote instances ahead of the C-STORE in progress, several per peer
    call (``FetchInstances``): per instance, a call of its own cost more CPU on both nodes
    than moving the bytes (docs/performance.md, "Grid C-MOVE").

    One thread per plan walks it in order: instances held here are left to the
    sub-operation; runs of remote instances with the same first holder go in one call of at
    most ``batch``. An instance that holder cannot serve, and the rest of a call that broke,
    are fetched one by one from the other holders (fail-over). Bounded: at most ``depth``
    decoded instances wait ahead of the sub-operation in progress, and the peer's stream is
    held back by gRPC flow control meanwhile. An abandoned plan (cancel, aborted
    association) stops the thread when its window is collected.
    """

    def __init__(
        self,
        locations: list[InstanceLocation],
        retriever: GridRetrieveService,
        depth: int,
        batch: int,
    ) -> None:
        self._locations = locations
        self._retriever = retriever
        self._shared = _Ahead(depth)
        self._batch = batch
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        weakref.finalize(self, self._shared.stop)

    def take(self, index: int) -> Dataset:
        shared = self._shared
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=_prefetch_plan,
                    args=(shared, self._locations, self._retriever, self._batch),
                    name="grid-prefetch",
                    daemon=True,
                )
                self._thread.start()
        with shared.cond:
            shared.taking = max(shared.taking, index)
            shared.cond.notify_all()
            while index not in shared.ready and not shared.finished:
                shared.cond.wait()
            value = shared.ready.pop(index, _HERE)
        if value is _HERE:  # held here, or the thread gave up: load it now
            return self._retriever.load_location(self._locations[index])
        if isinstance(value, Exception):
            raise value
        assert isinstance(value, Dataset)
        return value


def _prefetch_plan(
    shared: _Ahead,
    locations: list[InstanceLocation],
    retriever: GridRetrieveService,
    batch: int,
) -> None:
    try:
        index = 0
        while index < len(locations) and not shared.stopped:
            end = min(index + batch, len(locations))
            # one index statement per window, not one per instance
            here = retriever.held_here([loc.sop_instance_uid for loc in locations[index:end]])
            while index < end:
                if not _remote(locations[index], here):
                    shared.here(index)  # the sub-operation reads (or reports) it itself
                    index += 1
                    continue
                address = locations[index].peer_addresses[0]
                run = [index]
                while (
                    run[-1] + 1 < end
                    and locations[run[-1] + 1].peer_addresses[:1] == (address,)
                    and _remote(locations[run[-1] + 1], here)
                ):
                    run.append(run[-1] + 1)
                if not _fetch_run(shared, locations, retriever, address, run):
                    return
                index = run[-1] + 1
    except Exception as exc:  # never leave a sub-operation waiting on a dead thread
        log_event(LOG, "grid_prefetch_failed", level=logging.ERROR, reason=repr(exc))
    finally:
        with shared.cond:
            shared.finished = True
            shared.cond.notify_all()


def _remote(location: InstanceLocation, here: set[str]) -> bool:
    """Fetched ahead: not held here, and some holder is known."""
    return bool(location.peer_addresses) and location.sop_instance_uid not in here


def _fetch_run(
    shared: _Ahead,
    locations: list[InstanceLocation],
    retriever: GridRetrieveService,
    address: str,
    run: list[int],
) -> bool:
    """One batch call for ``run``; fail-over for what it did not deliver. False = abandoned."""
    uids = [locations[i].sop_instance_uid for i in run]
    done = 0
    stream = retriever.peers.fetch_many(address, uids)
    try:
        for _uid, result in stream:  # in request order (the client checks)
            i = run[done]
            done += 1
            if isinstance(result, bytes):
                value: Dataset | Exception = _decode(result)
            else:
                value = retriever.fail_over(locations[i], result, skip=address)
            if not shared.put(i, value):
                return False
    except PeerTransferError as exc:  # the call broke: the rest from the other holders
        for i in run[done:]:
            if not shared.put(i, retriever.fail_over(locations[i], exc, skip=address)):
                return False
    finally:
        stream.close()  # type: ignore[attr-defined]  # a generator: cancels the call
    return True


def _decode(data: bytes) -> Dataset | Exception:
    try:
        return StoredDataset(data)
    except Exception as exc:  # verified bytes that do not parse: that sub-operation fails
        return exc


class GridRetrieveService:
    """Grid C-MOVE/C-GET: locate holders in the catalog, read a local copy when there is
    one, otherwise fetch a verified copy from a holder — the next holder when one fails.

    ``prefetch`` instances are fetched ahead of the current sub-operation (0 turns it off),
    up to ``batch`` per peer call.
    """

    def __init__(
        self,
        catalog: CatalogClient,
        local: LocalCopies,
        read_local: Callable[[StoredInstance], Dataset],
        peers: PeerFetcher,
        *,
        prefetch: int = DEFAULT_PREFETCH,
        batch: int = DEFAULT_BATCH,
    ) -> None:
        self._catalog = catalog
        self._local = local
        self._read_local = read_local
        self.peers = peers
        self._depth = prefetch
        self._batch = max(1, batch)

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
        return self.plan_locations(planned)

    def plan_locations(self, locations: Sequence[InstanceLocation]) -> list[PlannedInstance]:
        """Sub-operations for instances already located (prefetched unless turned off)."""
        planned = list(locations)
        window = _Prefetch(planned, self, self._depth, self._batch) if self._depth > 0 else None
        return [PlannedInstance(loc, i, window) for i, loc in enumerate(planned)]

    def load(self, item: PlannedInstance | InstanceLocation) -> Dataset:
        """The instance as a Dataset (fetched ahead when it came from :meth:`plan`)."""
        if isinstance(item, PlannedInstance):
            if item.window is None:
                return self.load_location(item.location)
            return item.window.take(item.index)
        return self.load_location(item)

    def held_here(self, sop_instance_uids: Sequence[str]) -> set[str]:
        """Which of these instances this node holds itself."""
        return set(self._local.get_records(sop_instance_uids))

    def load_location(self, location: InstanceLocation) -> Dataset:
        """The instance as a Dataset, from here or from the first holder that delivers."""
        local = self._local.get_instance(location.sop_instance_uid)
        if local is not None:
            return self._read_local(local)
        return self._from_peers(location, location.peer_addresses, [])

    def fail_over(
        self, location: InstanceLocation, error: PeerTransferError, *, skip: str
    ) -> Dataset | Exception:
        """After ``skip`` failed to deliver: the other holders, then ``skip`` once more."""
        log_event(LOG, "peer_failover", level=logging.WARNING, peer=skip,
                  sop_instance_uid=location.sop_instance_uid, reason=str(error))  # fmt: skip
        others = [a for a in location.peer_addresses if a != skip]
        try:
            return self._from_peers(location, [*others, skip], [str(error)])
        except PeerTransferError as exc:
            return exc

    def _from_peers(
        self, location: InstanceLocation, addresses: Sequence[str], errors: list[str]
    ) -> Dataset:
        for address in addresses:
            try:
                data = self.peers.fetch(address, location.sop_instance_uid)
            except PeerTransferError as exc:
                errors.append(str(exc))
                log_event(LOG, "peer_failover", level=logging.WARNING, peer=address,
                          sop_instance_uid=location.sop_instance_uid, reason=str(exc))  # fmt: skip
                continue
            return StoredDataset(data)
        raise PeerTransferError(
            f"no holder delivered {location.sop_instance_uid}: {'; '.join(errors) or 'none known'}"
        )

    def close(self) -> None:
        """Nothing to release: each plan's prefetch thread ends with its plan."""


def _unique_keys(query: IndexQuery) -> dict[str, tuple[str, ...]]:
    def split(keyword: str) -> tuple[str, ...]:
        return tuple(v for v in query.filters.get(keyword, "").split("\\") if v)

    return {
        "study_instance_uids": split("StudyInstanceUID"),
        "series_instance_uids": split("SeriesInstanceUID"),
        "sop_instance_uids": split("SOPInstanceUID"),
    }
