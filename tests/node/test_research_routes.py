"""Near-source de-identification through a called AE title, end to end over DICOM."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments
from pydicom.uid import JPEGBaseline8Bit
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, KeyObjectSelectionDocumentStorage

from node.app import NodeApp
from node.config import load_config
from node.errors import ConfigError
from node.index.records import IndexQuery, Level
from tests.anonymizer.jpeg_streams import PLANTED, frames_of, instance_of, jpeg_with_text
from tests.anonymizer.video_streams import H264_MPEG, SERVICE_TEXT, decoded_ts, in_transport_stream
from tests.anonymizer.video_streams import PLANTED as VIDEO_PLANTED
from tests.anonymizer.video_streams import instance_of as video_instance
from tests.anonymizer.video_streams import with_text as video_with_text
from tests.factories import StudySpec, make_dataset, make_pdf_document, make_rejection_note

pytestmark = pytest.mark.timeout(60)

PHI_NAME = "SECRETNAME^PATIENT"
PHI_ID = "MRN-998877"


def _node(tmp_path: Path, **route: object) -> NodeApp:
    cfg = load_config(
        None,
        {
            "data_dir": str(tmp_path / "node"),
            "dicom": {"port": 0},
            "routes": [{"ae_title": "LUNG_STUDY", "collection": "lung", **route}],
        },
    )
    return NodeApp(cfg)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeApp]:
    app = _node(tmp_path)
    app.start()
    yield app
    app.stop()


def _send(node: NodeApp, called: str, datasets: list) -> list[int]:  # type: ignore[type-arg]
    return _send_as(node, "MODALITY", called, datasets)


def _all_instances(node: NodeApp) -> list[dict[str, object]]:
    query = IndexQuery(
        level=Level.IMAGE,
        filters={},
        requested=("PatientID", "PatientName", "SOPInstanceUID", "StudyInstanceUID"),
    )
    return list(node.index.find(query))


def test_route_stores_only_deidentified_data(node: NodeApp) -> None:
    spec = StudySpec(patient_id=PHI_ID, patient_name=PHI_NAME)
    sent = [make_dataset(spec, instance_number=n) for n in (1, 2)]
    assert _send(node, "LUNG_STUDY", sent) == [0, 0]
    stored = _all_instances(node)
    assert len(stored) == 2
    for row in stored:
        assert row["PatientID"] != PHI_ID and row["PatientName"] != PHI_NAME
        assert row["SOPInstanceUID"] not in {d.SOPInstanceUID for d in sent}
    # one consistent pseudonymous study, and no PHI anywhere in the stored bytes
    assert len({row["StudyInstanceUID"] for row in stored}) == 1
    for key in node.store.keys():  # noqa: SIM118 - a BlobStore, not a dict
        blob = node.store.get(key)
        assert PHI_NAME.encode() not in blob and PHI_ID.encode() not in blob
    # re-sending maps to the same pseudonyms: nothing new is stored
    assert _send(node, "LUNG_STUDY", sent[:1]) == [0]
    assert len(_all_instances(node)) == 2


def test_burned_in_annotation_is_refused_and_quarantined(node: NodeApp) -> None:
    ds = make_dataset(StudySpec(patient_id=PHI_ID))
    ds.BurnedInAnnotation = "YES"
    assert _send(node, "LUNG_STUDY", [ds]) == [0xC004]
    assert _all_instances(node) == []
    [entry] = node.quarantine.list()
    assert "burned-in" in entry.reason


def test_an_encapsulated_pdf_is_refused_unless_the_route_allows_documents(
    node: NodeApp, tmp_path: Path
) -> None:
    request = make_pdf_document(StudySpec(patient_id=PHI_ID), text=PHI_NAME)
    assert _send_one(node, request) == 0xC004
    assert _all_instances(node) == []
    [entry] = node.quarantine.list()
    assert "encapsulated document" in entry.reason
    allowing = _node(tmp_path / "allowing", allow_documents=True)
    allowing.start()
    try:
        assert _send_one(allowing, request) == 0
        [row] = _all_instances(allowing)
        assert row["PatientID"] != PHI_ID
    finally:
        allowing.stop()


def _send_one(node: NodeApp, ds: Dataset, syntax: str | None = None) -> int:
    """C-STORE ``ds`` to the route over a context of its own SOP class (and ``syntax``)."""
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, [syntax] if syntax else None)
    assoc = ae.associate("127.0.0.1", node.dicom.port, ae_title="LUNG_STUDY")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


def test_keep_original_archives_both(tmp_path: Path) -> None:
    app = _node(tmp_path, keep_original=True)
    app.start()
    try:
        ds = make_dataset(StudySpec(patient_id=PHI_ID))
        assert _send(app, "LUNG_STUDY", [ds]) == [0]
        ids = sorted(str(r["PatientID"]) for r in _all_instances(app))
        assert len(ids) == 2 and PHI_ID in ids
    finally:
        app.stop()


def test_bad_profile_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="LUNG_STUDY"):
        _node(tmp_path, profile=["no-such-profile"])


def test_route_into_identified_collection_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="identified default collection"):
        load_config(None, {"routes": [{"ae_title": "X", "collection": "local"}]})


def test_text_inside_jpeg_pixel_data_is_blanked_before_it_is_stored(node: NodeApp) -> None:
    # A photograph's EXIF (description, artist) and a JPEG comment, sent over JPEG Baseline.
    ds = dcmread(io.BytesIO(instance_of([jpeg_with_text()], JPEGBaseline8Bit)))
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, [JPEGBaseline8Bit])
    assoc = ae.associate("127.0.0.1", node.dicom.port, ae_title="LUNG_STUDY")
    assert assoc.is_established
    try:
        assert int(assoc.send_c_store(ds).Status) == 0
    finally:
        assoc.release()
    [key] = list(node.store.keys())
    stored = node.store.get(key)
    assert [text for text in PLANTED if text in stored] == []
    out = dcmread(io.BytesIO(stored))
    assert out.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    [sent_frame], [stored_frame] = (
        frames_of(instance_of([jpeg_with_text()], JPEGBaseline8Bit)),
        frames_of(stored),
    )
    assert Image.open(io.BytesIO(stored_frame)).tobytes() == (
        Image.open(io.BytesIO(sent_frame)).tobytes()
    )


def test_pixel_data_whose_headers_cannot_be_checked_is_quarantined(node: NodeApp) -> None:
    garbled = bytearray(jpeg_with_text())
    garbled[2:4] = b"??"  # no marker after SOI: its text cannot be looked for
    ds = dcmread(io.BytesIO(instance_of([bytes(garbled)], JPEGBaseline8Bit)))
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, [JPEGBaseline8Bit])
    assoc = ae.associate("127.0.0.1", node.dicom.port, ae_title="LUNG_STUDY")
    assert assoc.is_established
    try:
        status = int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()
    assert status == 0xC004 and _all_instances(node) == []
    [entry] = node.quarantine.list()
    assert "cannot check it for text" in entry.reason


VIDEO_ENDOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.1.1"


def _send_video(node: NodeApp, data: bytes) -> int:
    ds = dcmread(io.BytesIO(data))
    ds.SOPClassUID = VIDEO_ENDOSCOPIC
    return _send_one(node, ds, H264_MPEG)


def test_text_inside_an_h264_video_is_overwritten_before_it_is_stored(node: NodeApp) -> None:
    # An endoscopy clip from x264 in a transport stream, as DICOM asks: a recorder's SEI user
    # data, captions and an unspecified NAL unit name the patient, the service table the room.
    stream = in_transport_stream(video_with_text("H.264"), "H.264")
    assert _send_video(node, video_instance(stream, H264_MPEG)) == 0
    [key] = list(node.store.keys())
    stored = node.store.get(key)
    assert [text for text in VIDEO_PLANTED + SERVICE_TEXT if text in stored] == []
    assert b"x264 - core" not in stored
    out = dcmread(io.BytesIO(stored))
    assert out.file_meta.TransferSyntaxUID == H264_MPEG
    stored_stream = b"".join(list(generate_fragments(out.PixelData))[1:])
    assert decoded_ts(stored_stream) == decoded_ts(stream)


def test_video_with_sound_is_quarantined(node: NodeApp) -> None:
    # A voice can name the patient, and nothing here can check it.
    stream = in_transport_stream(video_with_text("H.264"), "H.264", audio=True)
    assert _send_video(node, video_instance(stream, H264_MPEG)) == 0xC004
    assert _all_instances(node) == []
    [entry] = node.quarantine.list()
    assert "not video" in entry.reason and "cannot check it for text" in entry.reason


def test_a_scanner_banner_is_blanked_and_an_unknown_screen_is_quarantined(
    tmp_path: Path,
) -> None:
    from tests.factories import BANNER_TEXT, make_ultrasound

    app = _node(tmp_path, options=["clean-pixel-data"])
    app.start()
    try:
        known = make_ultrasound(StudySpec(patient_id=PHI_ID), rows=600, columns=800,
                                frames=1, banner_rows=59)  # fmt: skip
        assert _send_one(app, known) == 0
        [key] = list(app.store.keys())
        blob = app.store.get(key)
        assert BANNER_TEXT[:12] not in blob and PHI_ID.encode() not in blob
        stored = dcmread(io.BytesIO(blob))
        assert stored.BurnedInAnnotation == "NO"
        assert not stored.pixel_array[:59].any() and stored.pixel_array[59:].all()
        unknown = make_ultrasound(StudySpec(patient_id=PHI_ID), manufacturer="Nobody")
        del unknown.ImageType
        assert _send_one(app, unknown) == 0xC004
        assert len(_all_instances(app)) == 1
        [entry] = app.quarantine.list()
        assert "Missing ImageType" in entry.reason
    finally:
        app.stop()


def test_a_rejection_note_through_the_route_removes_both_copies(tmp_path: Path) -> None:
    """Sent to the de-identifying AE title, a note listing the *identified* UIDs (all the
    sender knows) rejects the pseudonymized copies in the route's collection, through the
    same keyed mapping, and with keep_original the identified originals too."""
    cfg = load_config(
        None,
        {
            "data_dir": str(tmp_path / "node"),
            "dicom": {"port": 0, "rejecting_aes": ["PACSADMIN"]},
            "routes": [{"ae_title": "LUNG_STUDY", "collection": "lung", "keep_original": True}],
        },
    )
    app = NodeApp(cfg)
    app.start()
    try:
        spec = StudySpec(patient_id=PHI_ID)
        study = [make_dataset(spec, instance_number=n + 1) for n in range(3)]
        for n, ds in enumerate(study):
            ds.ImageComments = f"ORIGINAL-SECRET-{n}"  # kept only in the identified copy
        assert _send(app, "LUNG_STUDY", study) == [0, 0, 0]
        held = _by_copy(app)
        assert sorted(held["identified"]) == sorted(held["pseudonymized"]) == [1, 2, 3]

        note = make_rejection_note(study[:2], code="113039")  # data retention expired
        assert _send_as(app, "PACSADMIN", "LUNG_STUDY", [note]) == [0]
        held = _by_copy(app)
        assert held["identified"] == {3: 1, 1: 1}  # instance 3, and the note (number 1)
        assert held["pseudonymized"] == {3: 1, 1: 1}
        assert all(app.index.rejection(str(ds.SOPInstanceUID)) for ds in study[:2])
        blobs = [p.read_bytes() for p in (tmp_path / "node").rglob("*") if p.is_file()]
        for n in range(2):
            assert not any(f"ORIGINAL-SECRET-{n}".encode() in raw for raw in blobs)
        assert any(b"ORIGINAL-SECRET-2" in raw for raw in blobs)
        # sent again: refused before either copy is stored
        assert _send(app, "LUNG_STUDY", study[:1]) == [0xC005]
        assert _by_copy(app) == held
    finally:
        app.stop()


def _send_as(node: NodeApp, calling: str, called: str, datasets: list[Dataset]) -> list[int]:
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(KeyObjectSelectionDocumentStorage)
    assoc = ae.associate("127.0.0.1", node.dicom.port, ae_title=called)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def _by_copy(node: NodeApp) -> dict[str, dict[int, int]]:
    """Instance numbers held (with their counts), identified copies apart from the
    pseudonymized ones (told apart by the planted PatientID)."""
    query = IndexQuery(
        level=Level.IMAGE, filters={}, requested=("PatientID", "InstanceNumber", "SOPInstanceUID")
    )
    held: dict[str, dict[int, int]] = {"identified": {}, "pseudonymized": {}}
    for row in node.index.find(query):
        copy = held["identified" if row["PatientID"] == PHI_ID else "pseudonymized"]
        number = int(str(row["InstanceNumber"]))
        copy[number] = copy.get(number, 0) + 1
    return held


def test_storage_commitment_through_a_route_commits_the_kept_original_only(
    tmp_path: Path,
) -> None:
    """A modality sending to a de-identifying AE title may ask that AE for commitment only
    when the identified original is kept: that copy, under the UIDs the modality sent, is
    what the node commits to; without it there is nothing to commit."""
    from node.index.records import CommitmentRequest
    from node.services.commitment import CommitmentRefused

    def node_with(keep_original: bool) -> NodeApp:
        route = {"ae_title": "LUNG_STUDY", "collection": "lung", "keep_original": keep_original}
        return NodeApp(load_config(None, {
            "data_dir": str(tmp_path / str(keep_original)),
            "dicom": {"port": 0, "destinations": {"MODALITY": {"host": "127.0.0.1", "port": 104}}},
            "routes": [route],
        }))  # fmt: skip

    sent = [make_dataset(StudySpec(patient_id=PHI_ID), instance_number=n) for n in (1, 2)]
    refs = tuple((str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in sent)
    request = CommitmentRequest("MODALITY", "1.2", "LUNG_STUDY", refs)
    kept = node_with(keep_original=True)
    kept.start()
    try:
        assert _send(kept, "LUNG_STUDY", sent) == [0, 0]
        assert kept.commitments is not None
        report = kept.commitments.evaluate(request)
        assert report.committed == refs and report.failed == ()
    finally:
        kept.stop()

    plain = node_with(keep_original=False)
    assert plain.commitments is not None
    with pytest.raises(CommitmentRefused, match="LUNG_STUDY keeps no originals") as refused:
        plain.commitments.accept(request)
    assert refused.value.status == 0x0110
