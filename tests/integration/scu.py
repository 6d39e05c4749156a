"""pynetdicom as a peer of the node: associations and the DIMSE calls the tests make.

Everything here is a plain client a modality or a viewer could be; nothing reaches into the
node. Responses are returned whole (status + identifier) so tests assert on what was said.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.status import code_to_category

from tests.integration.processes import HOST, Node
from tests.integration.tcp import disable_nagle_for_pynetdicom_clients

STORAGE_CLASSES = (CTImageStorage, MRImageStorage)
FIND = {
    "P": PatientRootQueryRetrieveInformationModelFind,
    "S": StudyRootQueryRetrieveInformationModelFind,
}
MOVE = {
    "P": PatientRootQueryRetrieveInformationModelMove,
    "S": StudyRootQueryRetrieveInformationModelMove,
}
GET = {
    "P": PatientRootQueryRetrieveInformationModelGet,
    "S": StudyRootQueryRetrieveInformationModelGet,
}
QR_CLASSES = (*FIND.values(), *MOVE.values(), *GET.values())
# Keys a C-FIND response may carry besides the requested ones (PS3.4 C.4.1.1.3.2).
ALLOWED_EXTRA_KEYS = frozenset(
    {
        "QueryRetrieveLevel",
        "SpecificCharacterSet",
        "RetrieveAETitle",
        "InstanceAvailability",
        "StorageMediaFileSetID",
        "StorageMediaFileSetUID",
        "TimezoneOffsetFromUTC",
    }
)


def is_failure(status: int) -> bool:
    """A DIMSE status in a failure category (refused, failure, cannot understand …)."""
    return code_to_category(status) == "Failure"


def make_ae(calling_ae: str = "ITSCU") -> AE:
    disable_nagle_for_pynetdicom_clients()
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = 20
    ae.dimse_timeout = 120
    ae.network_timeout = 120
    return ae


@contextmanager
def association(
    node: Node,
    contexts: Sequence[str] = (Verification, *STORAGE_CLASSES, *QR_CLASSES),
    *,
    calling_ae: str = "ITSCU",
    called_ae: str | None = None,
    scp_roles: Sequence[str] = (),
    handlers: Sequence[tuple[Any, Any]] = (),
) -> Iterator[Association]:
    """An established association with the node (the test fails when it is not)."""
    ae = make_ae(calling_ae)
    for uid in contexts:
        # Storage in the encoding the data was made in, so bytes can be compared unchanged.
        syntaxes = (
            [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
            if uid in (Verification, *QR_CLASSES)
            else [ExplicitVRLittleEndian]
        )
        ae.add_requested_context(uid, syntaxes)
    for uid in scp_roles:
        if uid not in contexts:
            ae.add_requested_context(uid, [ExplicitVRLittleEndian])
    roles: list[Any] = [build_role(uid, scp_role=True) for uid in scp_roles]
    assoc = ae.associate(
        HOST,
        node.port,
        ae_title=called_ae or node.called_ae,
        ext_neg=roles or None,
        evt_handlers=list(handlers),
    )
    try:
        if not assoc.is_established:
            pytest.fail(
                f"association {calling_ae} -> {called_ae or node.called_ae} @ {node.port} "
                f"not established (rejected={assoc.is_rejected}, aborted={assoc.is_aborted})",
                False,
            )
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def store(assoc: Association, ds: Dataset | Path) -> int:
    """C-STORE ``ds`` (a dataset, or a file sent as it is when chunked sending is on);
    the response status (fails the test when there is no response)."""
    rsp = assoc.send_c_store(ds)
    label = ds if isinstance(ds, Path) else ds.SOPInstanceUID
    assert "Status" in rsp, f"no C-STORE response for {label}"
    return int(rsp.Status)


@dataclass
class Response:
    """One DIMSE response: its status and the identifier it carried (if any)."""

    status: int
    identifier: Dataset | None
    counts: dict[str, int | None] = field(default_factory=dict)


_COUNT_KEYS = (
    "NumberOfRemainingSuboperations",
    "NumberOfCompletedSuboperations",
    "NumberOfFailedSuboperations",
    "NumberOfWarningSuboperations",
)


def _collect(responses: Iterator[tuple[Dataset, Dataset | None]]) -> list[Response]:
    out = []
    for status_ds, identifier in responses:
        assert "Status" in status_ds, "the node sent no response (timeout or abort)"
        counts = {key: status_ds.get(key) for key in _COUNT_KEYS}
        out.append(Response(int(status_ds.Status), identifier, counts))
    return out


def find(assoc: Association, model: str, query: Dataset) -> list[Response]:
    """C-FIND with the Patient (``"P"``) or Study (``"S"``) Root model; every response."""
    return _collect(assoc.send_c_find(query, FIND[model]))


def move(assoc: Association, model: str, query: Dataset, destination: str) -> list[Response]:
    return _collect(assoc.send_c_move(query, destination, MOVE[model]))


def get(assoc: Association, model: str, query: Dataset) -> list[Response]:
    return _collect(assoc.send_c_get(query, GET[model]))


def query(level: str, **keys: Any) -> Dataset:
    """An identifier: ``QueryRetrieveLevel`` plus keywords (``None`` = return key)."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, "" if value is None else value)
    return ds


def series_instance_uids(node: Node, study_uid: str, series_uid: str) -> list[str]:
    """The SOP Instance UIDs the node's C-FIND finds in one series (a sane response)."""
    with association(node) as assoc:
        found = matches(
            find(
                assoc,
                "S",
                query(
                    "IMAGE",
                    StudyInstanceUID=study_uid,
                    SeriesInstanceUID=series_uid,
                    SOPInstanceUID=None,
                ),
            )
        )
    return [str(ds.SOPInstanceUID) for ds in found]


def matches(responses: list[Response]) -> list[Dataset]:
    """Identifiers of the pending responses, after checking the response sequence is sane:
    zero or more pending (0xFF00/0xFF01) then exactly one final success."""
    assert responses, "no C-FIND response"
    *pending, final = responses
    assert final.status == 0x0000, f"final C-FIND status 0x{final.status:04X}, expected 0x0000"
    bad = [f"0x{r.status:04X}" for r in pending if r.status not in (0xFF00, 0xFF01)]
    assert not bad, f"non-pending statuses before the final one: {bad}"
    assert all(r.identifier is not None for r in pending), "pending response without identifier"
    return [r.identifier for r in pending if r.identifier is not None]


def values(identifiers: list[Dataset], keyword: str) -> list[str]:
    return sorted(str(ds.get(keyword, "")) for ds in identifiers)


def keywords(ds: Dataset) -> set[str]:
    return {elem.keyword for elem in ds}


def assert_only_requested(identifiers: list[Dataset], request: Dataset) -> None:
    """Every requested key is returned and nothing else but the allowed extras."""
    wanted = keywords(request)
    for ds in identifiers:
        got = keywords(ds)
        missing = wanted - got - {"SpecificCharacterSet"}
        extra = got - wanted - ALLOWED_EXTRA_KEYS
        assert not missing, f"requested keys missing from a response: {sorted(missing)}"
        assert not extra, f"keys returned that were not requested: {sorted(extra)}"


@dataclass
class Received:
    """Instances a C-GET (or a storage SCP) received: SOPInstanceUID -> dataset bytes."""

    items: dict[str, bytes] = field(default_factory=dict)
    statuses: list[int] = field(default_factory=list)

    def handler(self, event: Any) -> int:
        raw = event.encoded_dataset(include_meta=False)
        ds = event.dataset
        self.items[str(ds.SOPInstanceUID)] = bytes(raw)
        return 0x0000
