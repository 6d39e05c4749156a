"""Bad data and hostile queries: refused with the right status, quarantined, others unharmed.

Raw bytes go over the wire through pynetdicom's chunked sending
(``_config.STORE_SEND_CHUNKED_DATASET``): given a file path, it sends everything after the
file meta exactly as it is, and takes the request's SOP Class/Instance UIDs from the meta.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)
from pynetdicom import _config
from pynetdicom.sop_class import Verification

from tests.factories import StudySpec, make_dataset
from tests.integration.archive import load
from tests.integration.corpus import dataset_bytes
from tests.integration.processes import HOST, Node, NodeFactory
from tests.integration.scu import (
    association,
    find,
    is_failure,
    matches,
    query,
    series_instance_uids,
    store,
    values,
)

pytestmark = pytest.mark.timeout(120)

CANNOT_UNDERSTAND = range(0xC000, 0xD000)  # 0xC000-0xCFFF
DATASET_MISMATCH = 0xA900


@pytest.fixture(scope="module")
def node(module_node_factory: NodeFactory) -> Node:
    started = module_node_factory()
    load(
        started,
        [
            make_dataset(StudySpec(patient_id=pid, patient_name=f"HOSTILE^{n}"), rows=8, columns=8)
            for n, pid in enumerate(["A%B", "AxB", "A_B", "ITBGOOD"])
        ],
    )
    return started


@pytest.fixture
def chunked() -> Iterator[None]:
    """Send datasets given as file paths as raw bytes (restored afterwards)."""
    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    yield
    _config.STORE_SEND_CHUNKED_DATASET = before


def raw_instance(directory: Path, payload: bytes, sop_class: str = CTImageStorage) -> Path:
    """A Part 10 file whose dataset part is exactly ``payload`` (may be garbage)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    holder = Dataset()
    holder.file_meta = meta
    path = directory / f"{meta.MediaStorageSOPInstanceUID!s}.dcm"
    holder.save_as(path, enforce_file_format=True)
    with path.open("ab") as fh:
        fh.write(payload)
    return path


def quarantine_files(node: Node) -> set[Path]:
    root = node.data_dir / "quarantine"
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def assert_quarantined(node: Node, before: set[Path], payload: bytes) -> None:
    """A new quarantine entry holds the offending bytes and a JSON sidecar with a reason."""
    new = quarantine_files(node) - before
    sidecars = [p for p in new if p.suffix == ".json"]
    blobs = [p for p in new if p.suffix != ".json"]
    assert sidecars, f"no JSON sidecar added under {node.data_dir / 'quarantine'}: {sorted(new)}"
    assert blobs, f"no quarantined bytes added under {node.data_dir / 'quarantine'}: {sorted(new)}"
    assert any(payload in p.read_bytes() for p in blobs), (
        "the quarantined file lacks the bytes sent"
    )
    reasons = []
    for path in sidecars:
        doc = json.loads(path.read_text())
        assert isinstance(doc, dict), f"{path} is not a JSON object"
        reasons += [v for k, v in doc.items() if "reason" in k.lower() and v]
    assert reasons, f"no non-empty 'reason' in {[p.read_text() for p in sidecars]}"


def send_raw(node: Node, path: Path) -> int:
    with association(node, calling_ae="BADSENDER") as assoc:
        return store(assoc, path)


def _encoded_without(keyword: str) -> bytes:
    ds = make_dataset(StudySpec(patient_id="ITBMISSING"), rows=8, columns=8)
    delattr(ds, keyword)
    return dataset_bytes(ds)


def _garbage() -> bytes:
    return bytes(range(256)) * 4 + b"\xde\xad\xbe\xef" * 64


def _truncated() -> bytes:
    ds = make_dataset(StudySpec(patient_id="ITBTRUNC"), rows=16, columns=16)
    raw = dataset_bytes(ds)
    return raw[: len(raw) - 300]  # inside Pixel Data, whose header promises 512 bytes


# ------------------------------------------------------------------------------------- store


@pytest.mark.usefixtures("chunked")
@pytest.mark.parametrize(
    "kind",
    ["garbage", "truncated", "no-SOPInstanceUID", "no-StudyInstanceUID", "no-SeriesInstanceUID"],
)
def test_undecodable_or_incomplete_is_refused_and_quarantined(
    node: Node, tmp_path: Path, kind: str
) -> None:
    if kind == "garbage":
        payload = _garbage()
    elif kind == "truncated":
        payload = _truncated()
    else:
        payload = _encoded_without(kind.split("-", 1)[1])
    before = quarantine_files(node)
    status = send_raw(node, raw_instance(tmp_path, payload))
    assert status in CANNOT_UNDERSTAND, f"{kind}: status 0x{status:04X}, expected 0xC000-0xCFFF"
    assert_quarantined(node, before, payload)
    with association(node, [Verification]) as assoc:
        assert assoc.send_c_echo().Status == 0x0000


@pytest.mark.usefixtures("chunked")
def test_sop_class_mismatch_is_a900_and_quarantined(node: Node, tmp_path: Path) -> None:
    ds = make_dataset(
        StudySpec(patient_id="ITBMISMATCH"), rows=8, columns=8, sop_class_uid=MRImageStorage
    )
    payload = dataset_bytes(ds)
    before = quarantine_files(node)
    # the request (from the file meta) says CT, the dataset says MR
    status = send_raw(node, raw_instance(tmp_path, payload, sop_class=CTImageStorage))
    assert status == DATASET_MISMATCH, f"status 0x{status:04X}, expected 0xA900"
    assert_quarantined(node, before, payload)
    with association(node) as assoc:
        found = matches(find(assoc, "P", query("PATIENT", PatientID="ITBMISMATCH")))
    assert found == [], "a refused instance was indexed"


@pytest.mark.usefixtures("chunked")
def test_bad_data_does_not_disturb_a_concurrent_good_association(
    node: Node, tmp_path: Path
) -> None:
    spec = StudySpec(patient_id="ITBCONC", patient_name="CONCURRENT^CARL")
    good = [make_dataset(spec, instance_number=n, rows=8, columns=8) for n in range(1, 31)]
    statuses: list[int] = []
    errors: list[BaseException] = []
    started = threading.Event()

    def send_good() -> None:
        try:
            with association(node, calling_ae="GOODSENDER") as assoc:
                started.set()
                statuses.extend(store(assoc, ds) for ds in good)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            started.set()

    thread = threading.Thread(target=send_good)
    thread.start()
    started.wait(30)
    bad_statuses = []
    with association(node, calling_ae="BADSENDER") as assoc:
        for n in range(10):
            payload = _garbage() if n % 2 else _truncated()
            bad_statuses.append(store(assoc, raw_instance(tmp_path, payload)))
    thread.join(120)
    assert not thread.is_alive(), "the good association hung"
    assert not errors, errors
    assert statuses == [0x0000] * len(good), [f"0x{s:04X}" for s in statuses]
    assert all(s in CANNOT_UNDERSTAND for s in bad_statuses), [f"0x{s:04X}" for s in bad_statuses]
    assert len(series_instance_uids(node, spec.study_uid, spec.series_uid)) == len(good)


# -------------------------------------------------------------------------------------- find


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("A%B", ["A%B"]),
        ("A_B", ["A_B"]),
        ("AxB", ["AxB"]),
        ("%", []),
        ("_", []),
        ("A%", []),
        ("A*B", ["A%B", "A_B", "AxB"]),
        ("A?B", ["A%B", "A_B", "AxB"]),
        ("A_*", ["A_B"]),
        ("A%*", ["A%B"]),
    ],
)
def test_percent_and_underscore_match_literally(
    node: Node, pattern: str, expected: list[str]
) -> None:
    with association(node) as assoc:
        found = matches(find(assoc, "P", query("PATIENT", PatientID=pattern)))
    assert values(found, "PatientID") == expected


@pytest.mark.parametrize(
    "keys",
    [
        {"PatientID": "' OR 1=1 --"},
        {"PatientName": "' OR 1=1 --"},
        {"PatientName": "*' OR '1'='1"},
        {"PatientID": "x'); DROP TABLE patients; --"},
        {"PatientID": "A%B' OR 'x'='x"},
    ],
)
def test_injection_strings_match_nothing_or_are_refused(node: Node, keys: dict[str, str]) -> None:
    with association(node) as assoc:
        responses = find(assoc, "P", query("PATIENT", **{"PatientID": None, **keys}))
        final = responses[-1].status
        if not is_failure(final):
            assert matches(responses) == [], f"{keys} matched something"
        # the archive is intact and the server answers
        everyone = matches(find(assoc, "P", query("PATIENT", PatientID="A?B")))
        assert len(everyone) == 3
        assert assoc.send_c_echo().Status == 0x0000


def test_absurdly_long_value_is_refused_with_a_failure(node: Node) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns that LO is at most 64 characters
        identifier = query("PATIENT", PatientID="A" * 65536, PatientName=None)
    with association(node) as assoc:
        responses = find(assoc, "P", identifier)
        assert is_failure(responses[-1].status), (
            f"64 KiB PatientID answered 0x{responses[-1].status:04X}, expected a failure status"
        )
        assert len(responses) == 1, "matches were returned for a refused query"
    with association(node, [Verification]) as assoc:
        assert assoc.send_c_echo().Status == 0x0000
    with association(node) as assoc:
        assert len(matches(find(assoc, "P", query("PATIENT", PatientID="ITBGOOD")))) == 1


@pytest.mark.parametrize(
    ("model", "level"),
    [("S", "BOGUS"), ("S", ""), ("P", "BOGUS"), ("S", "PATIENT")],  # Study Root has no PATIENT
)
def test_bad_query_level_is_refused(node: Node, model: str, level: str) -> None:
    with association(node) as assoc:
        responses = find(assoc, model, query(level, PatientID="ITBGOOD"))
        assert len(responses) == 1 and is_failure(responses[0].status), [
            f"0x{r.status:04X}" for r in responses
        ]
        assert assoc.send_c_echo().Status == 0x0000


# ------------------------------------------------------------------------------ raw TCP junk


@pytest.mark.parametrize(
    "junk",
    [
        b"GET / HTTP/1.1\r\nHost: pacs\r\n\r\n",
        bytes(range(256)) * 16,
        b"\x01\x00\xff\xff\xff\xff",  # A-ASSOCIATE-RQ header claiming a 4 GiB PDU, then EOF
        b"\x04\x00\x00\x00\x00\x10" + b"\x00" * 16,  # P-DATA before any association
    ],
    ids=["http", "random", "huge-pdu-length", "pdata-first"],
)
def test_non_dicom_bytes_on_the_port_do_not_hurt_the_node(node: Node, junk: bytes) -> None:
    with socket.create_connection((HOST, node.port), timeout=10) as sock:
        sock.sendall(junk)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10)
        with contextlib.suppress(OSError):
            while sock.recv(4096):  # the node may answer (A-ABORT) and must then close
                pass
    with association(node) as assoc:
        assert assoc.send_c_echo().Status == 0x0000
        ds = make_dataset(StudySpec(patient_id="ITBJUNK"), rows=8, columns=8)
        assert store(assoc, ds) == 0x0000


def test_stalled_clients_do_not_block_others(node: Node) -> None:
    """Half-sent PDUs held open (a hung modality, a port scanner) while others work."""
    stalled = []
    try:
        for header in (b"\x01\x00\xff\xff\xff\xff", b"\x01\x00\x00\x00\x01\x00" + b"\x00" * 10):
            sock = socket.create_connection((HOST, node.port), timeout=10)
            sock.sendall(header)
            stalled.append(sock)
        stalled.append(socket.create_connection((HOST, node.port), timeout=10))  # says nothing
        with association(node) as assoc:
            assert assoc.send_c_echo().Status == 0x0000
            ds = make_dataset(StudySpec(patient_id="ITBSTALL"), rows=8, columns=8)
            assert store(assoc, ds) == 0x0000
    finally:
        for sock in stalled:
            sock.close()
