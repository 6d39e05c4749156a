"""Storage Commitment (DICOM PS3.4 Annex J): what the node commits to, and when it may.

A modality deletes its own copy once the archive commits to the instances it lists, so a
commitment is a promise about the node's disk, not about what a C-STORE answered long
ago. An instance is committed only when it is indexed here under the SOP Instance UID and
SOP Class UID the sender names, in a collection the called AE title stores into, and (by
default) its stored bytes still match their SHA-256. Anything else is a failure with the
PS3.4 reason, and the sender keeps its copy.

No networking here: the gateway decodes the N-ACTION, this module records and evaluates
it, and the reporter delivers the result (``node.commitment_reporter``).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from catalog.errors import CatalogError
from node.errors import NodeError
from node.index.records import CommitmentRequest, InstanceRecord
from node.routing import Route, Router
from node.structlog import log_event
from storage.errors import BlobNotFound, StorageError

LOG = logging.getLogger("gridpacs.node.commitment")

LOOKUP_CHUNK = 500
"""SOP Instance UIDs looked up per index query."""


class FailureReason(enum.IntEnum):
    """Failure Reason (0008,1197) values of PS3.4 J.3.3.1.1.2."""

    PROCESSING_FAILURE = 0x0110
    NO_SUCH_OBJECT_INSTANCE = 0x0112
    CLASS_INSTANCE_CONFLICT = 0x0119


class CommitmentRefused(NodeError):
    """The request is refused as a whole (the N-ACTION fails with ``status``)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


#: N-ACTION statuses the refusals use (PS3.7 Annex C)
PROCESSING_FAILURE = 0x0110
INVALID_ARGUMENT_VALUE = 0x0115
RESOURCE_LIMITATION = 0x0213


@dataclass(frozen=True, slots=True)
class CommitmentReport:
    """The answer to one request: what is committed, what is not and why, and what is
    held here but not yet at enough sites of the grid (``waiting``)."""

    transaction_uid: str
    committed: tuple[tuple[str, str], ...]
    failed: tuple[tuple[str, str, FailureReason], ...]
    waiting: tuple[tuple[str, str], ...] = ()

    def without_waiting(self) -> CommitmentReport:
        """The report once the wait for copies is over: what still waits has failed."""
        failed = self.failed + tuple(
            (sop_class, uid, FailureReason.PROCESSING_FAILURE) for sop_class, uid in self.waiting
        )
        return CommitmentReport(self.transaction_uid, self.committed, failed)


#: Distinct sites holding a live copy of each instance of a collection (the catalog's
#: ``CountCopies``); raises CatalogError when no replica answers.
CopyCounter = Callable[[str, list[str]], dict[str, int]]


class CommitmentIndex(Protocol):
    def record_commitment(self, request: CommitmentRequest) -> None: ...

    def get_records(self, sop_instance_uids: list[str]) -> dict[str, InstanceRecord]: ...


class BlobReader(Protocol):
    def get(self, key: str) -> bytes: ...


class CommitmentService:
    """Accepts requests durably and evaluates them against the index and the store."""

    def __init__(
        self,
        index: CommitmentIndex,
        store: BlobReader,
        router: Router,
        report_destinations: Mapping[str, object],
        *,
        verify_bytes: bool = True,
        max_references: int = 50_000,
        on_recorded: Callable[[], None] | None = None,
        copies: int = 1,
        count_copies: CopyCounter | None = None,
    ) -> None:
        self._index = index
        self._store = store
        self._router = router
        self._destinations = report_destinations
        self._verify = verify_bytes
        self._max = max_references
        self._copies = copies
        self.count_copies = count_copies
        """Set once the node has joined the grid; required when ``copies`` > 1."""
        self.on_recorded = on_recorded
        """Called after each request is recorded (wakes the reporter)."""

    def accept(self, request: CommitmentRequest) -> None:
        """Record ``request`` so its report is owed even across a crash.

        Raises
        ------
        CommitmentRefused
            Nothing was recorded: the called AE stores nothing, no report could be sent
            to the caller, or the request is too large.
        """
        route = self._router.route_for(request.called_ae)
        if route is None or route.grid:
            raise CommitmentRefused(
                PROCESSING_FAILURE,
                f"{request.called_ae} stores nothing: ask the AE the instances went to",
            )
        if not _collections_of(route):
            raise CommitmentRefused(
                PROCESSING_FAILURE,
                f"{request.called_ae} keeps no originals: nothing to commit",
            )
        if request.calling_ae not in self._destinations:
            raise CommitmentRefused(
                PROCESSING_FAILURE,
                f"{request.calling_ae} is not a configured destination for the report",
            )
        if len(request.references) > self._max:
            raise CommitmentRefused(
                RESOURCE_LIMITATION,
                f"{len(request.references)} instances in one request; at most {self._max}",
            )
        self._index.record_commitment(request)
        log_event(
            LOG,
            "storage_commitment_requested",
            calling_ae=request.calling_ae,
            called_ae=request.called_ae,
            transaction_uid=request.transaction_uid,
            instances=len(request.references),
        )
        if self.on_recorded is not None:
            self.on_recorded()

    @property
    def needs_other_sites(self) -> bool:
        """True when an instance is committed only once other sites hold it too."""
        return self._copies > 1

    def evaluate(
        self, request: CommitmentRequest, *, verify_bytes: bool = True
    ) -> CommitmentReport:
        """What the node commits to now, for each referenced instance. ``verify_bytes``
        False skips reading the blobs back (a look at whether copies have arrived yet; the
        report itself is always evaluated with them read).

        Raises the index's errors when it cannot be read (the report is tried later).
        """
        route = self._router.route_for(request.called_ae)
        collections = _collections_of(route)
        held: dict[str, list[tuple[str, str]]] = {}  # collection -> held here, verified
        failed: list[tuple[str, str, FailureReason]] = []
        for chunk in _chunks(request.references, LOOKUP_CHUNK):
            records = self._index.get_records([uid for _, uid in chunk])
            for sop_class, uid in chunk:
                record = records.get(uid)
                reason = self._check(sop_class, record, collections, verify_bytes)
                if reason is not None:
                    failed.append((sop_class, uid, reason))
                    continue
                assert record is not None  # _check fails an instance not held
                held.setdefault(record.collection, []).append((sop_class, uid))
        committed: list[tuple[str, str]] = []
        waiting: list[tuple[str, str]] = []
        for collection, pairs in held.items():
            enough = self._enough_copies(collection, [uid for _, uid in pairs])
            for pair in pairs:
                (committed if pair[1] in enough else waiting).append(pair)
        order = {pair: n for n, pair in enumerate(request.references)}
        return CommitmentReport(
            request.transaction_uid,
            tuple(sorted(committed, key=order.__getitem__)),
            tuple(failed),
            tuple(sorted(waiting, key=order.__getitem__)),
        )

    def _enough_copies(self, collection: str, uids: list[str]) -> set[str]:
        """Those of ``uids`` held at the sites the policy wants (all of them when one copy,
        this node's, is enough); none when the catalog cannot say."""
        if self._copies <= 1:
            return set(uids)
        if self.count_copies is None:
            return set()
        try:
            counted = self.count_copies(collection, uids)
        except CatalogError as exc:
            log_event(LOG, "storage_commitment_copies_unknown", level=logging.WARNING,
                      collection=collection, error=str(exc))  # fmt: skip
            return set()
        return {uid for uid in uids if counted.get(uid, 0) >= self._copies}

    def _check(
        self,
        sop_class: str,
        record: InstanceRecord | None,
        collections: frozenset[str],
        verify_bytes: bool,
    ) -> FailureReason | None:
        if record is None or record.collection not in collections:
            return FailureReason.NO_SUCH_OBJECT_INSTANCE
        if record.sop_class_uid != sop_class:
            return FailureReason.CLASS_INSTANCE_CONFLICT
        if not (self._verify and verify_bytes):
            return None
        try:
            self._store.get(record.blob_key)  # reads and checks the SHA-256
        except BlobNotFound:
            return self._lost(record, "blob missing")
        except StorageError as exc:
            return self._lost(record, str(exc))
        return None

    @staticmethod
    def _lost(record: InstanceRecord, reason: str) -> FailureReason:
        log_event(
            LOG,
            "storage_commitment_instance_unreadable",
            level=logging.ERROR,
            sop_instance_uid=record.sop_instance_uid,
            blob_key=record.blob_key,
            reason=reason,
        )
        return FailureReason.PROCESSING_FAILURE


def _collections_of(route: Route | None) -> frozenset[str]:
    """The collections whose instances keep the UIDs the sender sent to ``route``: the
    identified archive of a de-identifying route, else the route's own collection when it
    stores what it receives unchanged."""
    if route is None or route.grid:
        return frozenset()
    if route.archive_original_in is not None:
        return frozenset({route.archive_original_in})
    if route.transform is None:
        return frozenset({route.collection})
    return frozenset()


def _chunks(items: Iterable[tuple[str, str]], size: int) -> Iterable[list[tuple[str, str]]]:
    chunk: list[tuple[str, str]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
