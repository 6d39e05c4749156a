"""DCMTK's command-line tools against a node, the way a hospital's admin checks a new PACS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import HTJ2KLossless, generate_uid
from pynetdicom import _config, evt

from node.dicom.scu import SendFailed, send_files
from tests.factories import StudySpec, make_dataset, make_ultrasound, to_bytes
from tests.integration.archive import (
    assert_files_match,
    dcmtk_findscu,
    dimse_statuses,
    file_dataset_bytes,
    load,
)
from tests.integration.corpus import Corpus, build_corpus, dataset_bytes
from tests.integration.processes import (
    HOST,
    Node,
    NodeFactory,
    StoreSCP,
    describe,
    free_port,
    run_dcmtk,
)
from tests.integration.scu import (
    ALLOWED_EXTRA_KEYS,
    STORAGE_CLASSES,
    Received,
    association,
    find,
    get,
    make_ae,
    matches,
    query,
    values,
)

pytestmark = [pytest.mark.dcmtk, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return build_corpus("ITD")


@pytest.fixture(scope="module")
def qr_node(module_node_factory: NodeFactory, storescp: StoreSCP, corpus: Corpus) -> Node:
    """A node holding the corpus, with the DCMTK storescp as its only move destination."""
    node = module_node_factory(args=["--destination", storescp.destination])
    load(node, corpus.datasets)
    return node


@pytest.fixture
def received(storescp: StoreSCP) -> Iterator[StoreSCP]:
    storescp.clear()
    yield storescp


def _uids(datasets: list[Dataset]) -> list[str]:
    return sorted(str(ds.SOPInstanceUID) for ds in datasets)


# ------------------------------------------------------------------------------ echo / store


def test_echoscu(qr_node: Node) -> None:
    result = run_dcmtk("echoscu", "-v", "-aec", qr_node.called_ae, HOST, str(qr_node.port))
    assert result.returncode == 0, describe(result)
    assert "Received Echo Response (Success)" in result.stdout + result.stderr, describe(result)


def test_storescu_one_file_is_stored_and_findable(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    node = node_factory()
    corpus = build_corpus("ITS")
    ds = corpus.in_series("C1")[0]
    path = tmp_path / "one.dcm"
    ds.save_as(path, enforce_file_format=True)

    result = run_dcmtk("storescu", "-v", "-aec", node.called_ae, HOST, str(node.port), str(path))
    assert result.returncode == 0, describe(result)
    assert "Received Store Response (Success)" in result.stdout + result.stderr, describe(result)

    found = dcmtk_findscu(
        node,
        "S",
        [
            "QueryRetrieveLevel=IMAGE",
            f"StudyInstanceUID={ds.StudyInstanceUID}",
            f"SeriesInstanceUID={ds.SeriesInstanceUID}",
            "SOPInstanceUID",
        ],
        tmp_path / "find",
    )
    assert _uids(found) == [str(ds.SOPInstanceUID)]


def test_storescu_folder_of_several_series(node_factory: NodeFactory, tmp_path: Path) -> None:
    node = node_factory()
    corpus = build_corpus("ITF")
    corpus.write(tmp_path / "in")

    result = run_dcmtk(
        "storescu",
        "-aec",
        node.called_ae,
        "+sd",
        "+r",
        HOST,
        str(node.port),
        str(tmp_path / "in"),
    )
    assert result.returncode == 0, describe(result)

    for key in corpus.series:
        series = corpus.in_series(key)
        found = dcmtk_findscu(
            node,
            "S",
            [
                "QueryRetrieveLevel=IMAGE",
                f"StudyInstanceUID={series[0].StudyInstanceUID}",
                f"SeriesInstanceUID={corpus.series[key]}",
                "SOPInstanceUID",
            ],
            tmp_path / "find",
        )
        assert _uids(found) == _uids(series), f"series {key}"


# ------------------------------------------------------------------------------------ findscu


def test_findscu_patient_level_by_patient_id(qr_node: Node, tmp_path: Path) -> None:
    found = dcmtk_findscu(
        qr_node,
        "P",
        ["QueryRetrieveLevel=PATIENT", "PatientID=ITD001", "PatientName", "PatientBirthDate"],
        tmp_path,
    )
    assert len(found) == 1, [str(ds.PatientID) for ds in found]
    assert found[0].PatientName == "DOE^JANE"
    assert found[0].PatientBirthDate == "19700101"
    extra = (
        {e.keyword for e in found[0]}
        - ALLOWED_EXTRA_KEYS
        - {"PatientID", "PatientName", "PatientBirthDate"}
    )
    assert not extra, f"keys not requested were returned: {sorted(extra)}"


def test_findscu_patient_level_wildcard_name(qr_node: Node, tmp_path: Path) -> None:
    found = dcmtk_findscu(
        qr_node, "P", ["QueryRetrieveLevel=PATIENT", "PatientName=SM?TH*", "PatientID"], tmp_path
    )
    assert values(found, "PatientID") == ["ITD002"]
    found = dcmtk_findscu(
        qr_node, "P", ["QueryRetrieveLevel=PATIENT", "PatientName=*", "PatientID=ITD*"], tmp_path
    )
    assert values(found, "PatientID") == ["ITD001", "ITD002"]


@pytest.mark.parametrize(
    ("date_range", "studies"),
    [("20240101-20251231", "AC"), ("-20231231", "B"), ("20250301-", "C"), ("20240615", "A")],
)
def test_findscu_study_level_date_range(
    qr_node: Node, corpus: Corpus, tmp_path: Path, date_range: str, studies: str
) -> None:
    found = dcmtk_findscu(
        qr_node,
        "S",
        [
            "QueryRetrieveLevel=STUDY",
            f"StudyDate={date_range}",
            "PatientID=ITD*",
            "StudyInstanceUID",
        ],
        tmp_path,
    )
    expected = sorted(corpus.studies[k].study_uid for k in studies)
    assert values(found, "StudyInstanceUID") == expected


def test_findscu_patient_root_study_level(qr_node: Node, corpus: Corpus, tmp_path: Path) -> None:
    found = dcmtk_findscu(
        qr_node,
        "P",
        [
            "QueryRetrieveLevel=STUDY",
            "PatientID=ITD001",
            "StudyInstanceUID",
            "StudyDate",
            "AccessionNumber",
        ],
        tmp_path,
    )
    assert values(found, "StudyInstanceUID") == sorted(
        [corpus.studies["A"].study_uid, corpus.studies["B"].study_uid]
    )
    assert values(found, "AccessionNumber") == ["ITDA", "ITDB"]


def test_findscu_study_level_uid_list(qr_node: Node, corpus: Corpus, tmp_path: Path) -> None:
    wanted = [corpus.studies["A"].study_uid, corpus.studies["C"].study_uid]
    found = dcmtk_findscu(
        qr_node,
        "S",
        [
            "QueryRetrieveLevel=STUDY",
            f"StudyInstanceUID={wanted[0]}\\{wanted[1]}",
            "StudyDescription",
        ],
        tmp_path,
    )
    assert values(found, "StudyInstanceUID") == sorted(wanted)
    assert values(found, "StudyDescription") == ["CT ABDOMEN", "CT CHEST"]


def test_findscu_series_level_by_modality(qr_node: Node, corpus: Corpus, tmp_path: Path) -> None:
    study_b = corpus.studies["B"].study_uid
    found = dcmtk_findscu(
        qr_node,
        "S",
        [
            "QueryRetrieveLevel=SERIES",
            f"StudyInstanceUID={study_b}",
            "Modality=MR",
            "SeriesInstanceUID",
            "SeriesNumber",
        ],
        tmp_path,
    )
    assert values(found, "SeriesInstanceUID") == [corpus.series["B1"]]
    found = dcmtk_findscu(
        qr_node,
        "S",
        [
            "QueryRetrieveLevel=SERIES",
            f"StudyInstanceUID={corpus.studies['A'].study_uid}",
            "Modality=MR",
            "SeriesInstanceUID",
        ],
        tmp_path,
    )
    assert found == [], "an MR query matched series of a CT-only study"


def test_findscu_series_level_patient_root(qr_node: Node, corpus: Corpus, tmp_path: Path) -> None:
    found = dcmtk_findscu(
        qr_node,
        "P",
        [
            "QueryRetrieveLevel=SERIES",
            "PatientID=ITD001",
            f"StudyInstanceUID={corpus.studies['A'].study_uid}",
            "SeriesInstanceUID",
            "SeriesDescription",
            "Modality",
        ],
        tmp_path,
    )
    assert values(found, "SeriesInstanceUID") == sorted([corpus.series["A1"], corpus.series["A2"]])
    assert values(found, "SeriesDescription") == ["AXIAL", "CORONAL"]
    assert values(found, "Modality") == ["CT", "CT"]


@pytest.mark.parametrize("model", ["S", "P"])
def test_findscu_image_level(qr_node: Node, corpus: Corpus, tmp_path: Path, model: str) -> None:
    series = corpus.in_series("A1")
    keys = [
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={corpus.studies['A'].study_uid}",
        f"SeriesInstanceUID={corpus.series['A1']}",
        "SOPInstanceUID",
        "InstanceNumber",
    ]
    if model == "P":
        keys.insert(1, "PatientID=ITD001")
    found = dcmtk_findscu(qr_node, model, keys, tmp_path)
    assert _uids(found) == _uids(series)
    assert values(found, "InstanceNumber") == ["1", "2", "3"]
    # a UID list at the lowest level
    two = [str(series[0].SOPInstanceUID), str(series[2].SOPInstanceUID)]
    keys[keys.index("SOPInstanceUID")] = f"SOPInstanceUID={two[0]}\\{two[1]}"
    found = dcmtk_findscu(qr_node, model, keys, tmp_path)
    assert _uids(found) == sorted(two)


def test_findscu_returns_only_requested_keys(qr_node: Node, tmp_path: Path) -> None:
    found = dcmtk_findscu(
        qr_node, "S", ["QueryRetrieveLevel=STUDY", "PatientID=ITD002", "StudyDate"], tmp_path
    )
    assert len(found) == 1
    got = {e.keyword for e in found[0]}
    assert {"PatientID", "StudyDate"} <= got
    assert not got - ALLOWED_EXTRA_KEYS - {"PatientID", "StudyDate"}, sorted(got)


# ------------------------------------------------------------------------------ movescu/getscu


def test_movescu_study_root_to_storescp(qr_node: Node, corpus: Corpus, received: StoreSCP) -> None:
    study = corpus.studies["A"].study_uid
    result = run_dcmtk(
        "movescu",
        "-d",
        "-S",
        "-aet",
        "MOVESCU",
        "-aec",
        qr_node.called_ae,
        "-aem",
        received.ae_title,
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study}",
        HOST,
        str(qr_node.port),
    )
    assert result.returncode == 0, describe(result)
    statuses = dimse_statuses(result.stdout + result.stderr)
    assert statuses and statuses[-1] == 0x0000, describe(result)
    assert_files_match(received.received(), corpus.in_study("A"))


def test_movescu_patient_root_to_storescp(
    qr_node: Node, corpus: Corpus, received: StoreSCP
) -> None:
    result = run_dcmtk(
        "movescu",
        "-d",
        "-P",
        "-aet",
        "MOVESCU",
        "-aec",
        qr_node.called_ae,
        "-aem",
        received.ae_title,
        "-k",
        "QueryRetrieveLevel=PATIENT",
        "-k",
        "PatientID=ITD002",
        HOST,
        str(qr_node.port),
    )
    assert result.returncode == 0, describe(result)
    statuses = dimse_statuses(result.stdout + result.stderr)
    assert statuses and statuses[-1] == 0x0000, describe(result)
    assert_files_match(received.received(), corpus.of_patient("ITD002"))


def test_movescu_series_level_to_storescp(
    qr_node: Node, corpus: Corpus, received: StoreSCP
) -> None:
    result = run_dcmtk(
        "movescu",
        "-d",
        "-S",
        "-aec",
        qr_node.called_ae,
        "-aem",
        received.ae_title,
        "-k",
        "QueryRetrieveLevel=SERIES",
        "-k",
        f"StudyInstanceUID={corpus.studies['B'].study_uid}",
        "-k",
        f"SeriesInstanceUID={corpus.series['B1']}",
        HOST,
        str(qr_node.port),
    )
    assert result.returncode == 0, describe(result)
    assert_files_match(received.received(), corpus.in_series("B1"))


def test_movescu_unknown_destination_is_refused_a801(
    qr_node: Node, corpus: Corpus, received: StoreSCP
) -> None:
    result = run_dcmtk(
        "movescu",
        "-d",
        "-S",
        "-aec",
        qr_node.called_ae,
        "-aem",
        "NOWHERE",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={corpus.studies['A'].study_uid}",
        HOST,
        str(qr_node.port),
    )
    statuses = dimse_statuses(result.stdout + result.stderr)
    assert statuses, f"no C-MOVE response status printed\n{describe(result)}"
    assert statuses[-1] == 0xA801, (
        f"final C-MOVE status 0x{statuses[-1]:04X}, expected 0xA801\n{describe(result)}"
    )
    assert result.returncode != 0, describe(result)
    assert received.received() == [], "instances were sent although the destination is unknown"


def test_movescu_identifier_the_model_lacks_is_refused_a900(
    qr_node: Node, storescp: StoreSCP, received: StoreSCP
) -> None:
    # PATIENT level is not part of the Study Root model: the SCU hears 0xA900 (identifier
    # does not match SOP class), not a generic processing failure, and nothing is sent.
    result = run_dcmtk("movescu", "-d", "-S", "-aec", qr_node.called_ae, "-aem",
                       storescp.ae_title, "-k", "QueryRetrieveLevel=PATIENT",
                       "-k", "PatientID=ITD*", HOST, str(qr_node.port))  # fmt: skip
    statuses = dimse_statuses(result.stdout + result.stderr)
    assert statuses and statuses[-1] == 0xA900, describe(result)
    assert received.received() == []
    refused = [line for line in qr_node.log_text().splitlines()
               if "event=retrieve_refused" in line and "Study Root" in line]  # fmt: skip
    assert refused, "the refusal was not logged with its reason"


def test_getscu_study_into_folder(qr_node: Node, corpus: Corpus, tmp_path: Path) -> None:
    out = tmp_path / "get"
    out.mkdir()
    result = run_dcmtk(
        "getscu",
        "-S",
        "+B",
        "-aec",
        qr_node.called_ae,
        "-od",
        str(out),
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={corpus.studies['C'].study_uid}",
        HOST,
        str(qr_node.port),
    )
    assert result.returncode == 0, describe(result)
    assert_files_match(sorted(p for p in out.iterdir() if p.is_file()), corpus.in_study("C"))


def test_getscu_patient_root_mr_study(qr_node: Node, corpus: Corpus, tmp_path: Path) -> None:
    out = tmp_path / "get"
    out.mkdir()
    result = run_dcmtk(
        "getscu",
        "-P",
        "+B",
        "-aec",
        qr_node.called_ae,
        "-od",
        str(out),
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        "PatientID=ITD001",
        "-k",
        f"StudyInstanceUID={corpus.studies['B'].study_uid}",
        HOST,
        str(qr_node.port),
    )
    assert result.returncode == 0, describe(result)
    assert_files_match(sorted(p for p in out.iterdir() if p.is_file()), corpus.in_study("B"))


# ------------------------------------------------------------------------- PostgreSQL index


@pytest.mark.postgres
def test_node_on_postgresql_stores_finds_and_gets(
    node_factory: NodeFactory, pg_url: str, tmp_path: Path
) -> None:
    """The same round trip with the index on PostgreSQL (``--db-url``): a URL, not a code path."""
    node = node_factory(args=["--db-url", pg_url])
    corpus = build_corpus("ITG")
    corpus.write(tmp_path / "in")
    result = run_dcmtk(
        "storescu", "-aec", node.called_ae, "+sd", "+r", HOST, str(node.port), str(tmp_path / "in")
    )
    assert result.returncode == 0, describe(result)
    with association(node) as assoc:
        studies = matches(find(assoc, "S", query("STUDY", PatientID="ITG*", StudyInstanceUID=None)))
    expected = sorted(spec.study_uid for spec in corpus.studies.values())
    assert values(studies, "StudyInstanceUID") == expected
    # fetched back with an SCU that accepts only the stored transfer syntax (the getscu tests
    # above cover DCMTK's own negotiation)
    got = Received()
    with association(
        node, scp_roles=STORAGE_CLASSES, handlers=[(evt.EVT_C_STORE, got.handler)]
    ) as assoc:
        responses = get(assoc, "S", query("STUDY", StudyInstanceUID=corpus.studies["A"].study_uid))
    assert responses[-1].status == 0x0000, f"C-GET final status 0x{responses[-1].status:04X}"
    in_study_a = corpus.in_study("A")
    assert sorted(got.items) == _uids(in_study_a)
    for ds in in_study_a:
        assert got.items[ds.SOPInstanceUID] == dataset_bytes(ds), ds.SOPInstanceUID


# ------------------------------------------------------------------------ compressed pixels


def test_compressed_instances_are_kept_and_moved_as_received(
    node_factory: NodeFactory, storescp: StoreSCP, tmp_path: Path
) -> None:
    """JPEG Baseline and JPEG 2000 instances come back from C-MOVE byte-identical.

    A PACS must never decompress or re-encode what a modality sent; storescp takes every
    transfer syntax (``+xa``), so the node has no reason to transcode.
    """
    node = node_factory(args=["--destination", storescp.destination])
    storescp.clear()
    study_uid = generate_uid()
    paths = []
    for n, name in enumerate(["SC_rgb_jpeg_dcmtk.dcm", "JPEG2000.dcm"], 1):
        ds = dcmread(get_testdata_file(name, download=False))
        ds.PatientID = "ITDJPEG"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = tmp_path / f"{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)

    _store_as_received(node, paths)

    result = run_dcmtk(
        "movescu", "-S", "-aec", node.called_ae, "-aem", storescp.ae_title,
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
        HOST, str(node.port),
    )  # fmt: skip
    assert result.returncode == 0, describe(result)

    sent = {str(dcmread(p).SOPInstanceUID): p for p in paths}
    received = {str(dcmread(p).SOPInstanceUID): p for p in storescp.received()}
    assert sorted(received) == sorted(sent)
    for uid, path in sent.items():
        want_ts = dcmread(path).file_meta.TransferSyntaxUID
        got_ts = dcmread(received[uid]).file_meta.TransferSyntaxUID
        assert got_ts == want_ts, f"{uid}: sent as {want_ts.name}, came back as {got_ts.name}"
        assert file_dataset_bytes(received[uid]) == file_dataset_bytes(path), uid


def _store_as_received(node: Node, paths: list[Path]) -> None:
    """C-STORE ``paths`` with pynetdicom's chunked mode: each file's dataset bytes go out
    untouched, in a context that offers only the file's own transfer syntax."""
    ae = make_ae("JPEGSCU")
    for path in paths:
        header = dcmread(path, stop_before_pixels=True)
        ae.add_requested_context(header.SOPClassUID, header.file_meta.TransferSyntaxUID)
    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    assoc = ae.associate(HOST, node.port, ae_title=node.called_ae)
    try:
        assert assoc.is_established, "association for compressed storage not established"
        for path in paths:
            rsp = assoc.send_c_store(path)
            assert rsp.get("Status") == 0x0000, f"C-STORE of {path.name}: {rsp}"
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = before
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def _compressed_study(folder: Path) -> tuple[list[Path], Path]:
    """(A study as an archive holds it — 12-bit JPEG Lossless written by DCMTK's
    ``dcmcjpeg``, RGB JPEG-LS by ``dcmcjpls``, pydicom's JPEG Baseline and JPEG 2000
    samples — and one HTJ2K instance no decoder here reads.)"""
    folder.mkdir()
    spec = StudySpec(patient_id="ITDTRANS")
    ct = make_dataset(spec, rows=64, columns=80)
    ramp = (np.arange(64 * 80, dtype="<u2") * 37) % 4096  # every 12-bit level, no runs
    ct.PixelData = ramp.tobytes()
    us = make_ultrasound(spec, frames=2)
    paths = []
    for name, ds, tool in (("ct", ct, "dcmcjpeg"), ("us", us, "dcmcjpls")):
        plain = folder / f"{name}-plain.dcm"
        plain.write_bytes(to_bytes(ds))
        result = run_dcmtk(tool, str(plain), str(folder / f"{name}.dcm"))
        assert result.returncode == 0, describe(result)
        paths.append(folder / f"{name}.dcm")
    for n, name in enumerate(["SC_rgb_jpeg_dcmtk.dcm", "JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm"]):
        ds = dcmread(get_testdata_file(name, download=False))
        ds.PatientID = spec.patient_id
        ds.StudyInstanceUID = spec.study_uid
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        if n == 2:  # its JPEG frame, labelled HTJ2K: nothing here decodes that syntax
            ds.file_meta.TransferSyntaxUID = HTJ2KLossless
        ds.save_as(folder / f"sample{n}.dcm", enforce_file_format=True)
        paths.append(folder / f"sample{n}.dcm")
    return paths[:-1], paths[-1]


@pytest.fixture(scope="module")
def workstation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreSCP]:
    """A DCMTK storescp that accepts uncompressed syntaxes only, as a workstation or a
    research tool without codecs does."""
    directory = tmp_path_factory.mktemp("workstation")
    scp = StoreSCP(name="workstation", log_path=directory / "storescp.log", ae_title="WORKSTN",
                   port=free_port(), out_dir=directory / "received",
                   uncompressed_only=True).start()  # fmt: skip
    yield scp
    scp.terminate()


def _assert_decoded_copies(received: list[Path], sent: list[Path]) -> None:
    """Each of ``sent`` arrived once, uncompressed, under its own SOP Instance UID, with
    the pixels its compressed bytes decode to (the lossless ones: the modality's own)."""
    by_uid = {str(dcmread(p).SOPInstanceUID): dcmread(p) for p in received}
    assert sorted(by_uid) == sorted(str(dcmread(p).SOPInstanceUID) for p in sent)
    for path in sent:
        original = dcmread(path)
        copy = by_uid[str(original.SOPInstanceUID)]
        assert not copy.file_meta.TransferSyntaxUID.is_compressed, path.name
        assert (copy.Rows, copy.Columns) == (original.Rows, original.Columns)
        assert np.array_equal(copy.pixel_array, original.pixel_array), path.name
        assert copy.PatientID == original.PatientID


def test_compressed_instances_are_decoded_for_a_peer_that_takes_only_uncompressed(
    node_factory: NodeFactory, workstation: StoreSCP, tmp_path: Path
) -> None:
    """A workstation that accepts only uncompressed syntaxes still gets every image it
    asks for, by C-MOVE and C-GET: the node decodes what the archive holds compressed.

    What cannot be decoded fails its sub-operation alone, with the reason in the log; the
    rest of the study arrives and the final status is a warning (0xB000).
    """
    node = node_factory(args=["--destination", workstation.destination])
    workstation.clear()
    decodable, undecodable = _compressed_study(tmp_path / "study")
    _store_as_received(node, [*decodable, undecodable])
    study_uid = str(dcmread(decodable[0]).StudyInstanceUID)
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}"]

    moved = run_dcmtk("movescu", "-d", "-S", "-aec", node.called_ae, "-aem",
                      workstation.ae_title, *keys, HOST, str(node.port))  # fmt: skip
    statuses = dimse_statuses(moved.stdout + moved.stderr)
    assert statuses and statuses[-1] == 0xB000, describe(moved)
    _assert_decoded_copies(workstation.received(), decodable)
    ct = next(dcmread(p) for p in workstation.received() if dcmread(p).Columns == 80)
    assert ct.pixel_array.ravel().tolist() == [(i * 37) % 4096 for i in range(64 * 80)]
    assert ct.BitsStored == 12  # the modality's own pixels, not just what the JPEG held

    out = tmp_path / "get"
    out.mkdir()
    got = run_dcmtk("getscu", "-d", "-S", "+B", "-aec", node.called_ae, "-od", str(out),
                    *keys, HOST, str(node.port))  # fmt: skip
    statuses = dimse_statuses(got.stdout + got.stderr)
    assert statuses and statuses[-1] == 0xB000, describe(got)
    _assert_decoded_copies(sorted(p for p in out.iterdir() if p.is_file()), decodable)

    refused = str(dcmread(undecodable).SOPInstanceUID)
    failed = [line for line in node.log_text().splitlines()
              if "event=suboperation_failed" in line and refused in line]  # fmt: skip
    assert len(failed) == 2 and all("does not decode" in line for line in failed), failed
    retrieves = [line for line in node.log_text().splitlines() if "event=retrieve " in line]
    assert len(retrieves) == 2 and all("decoded=4" in r for r in retrieves), retrieves
    # and it goes on serving
    assert run_dcmtk("echoscu", "-aec", node.called_ae, HOST, str(node.port)).returncode == 0


def test_results_sent_to_a_destination_are_decoded_when_it_takes_only_uncompressed(
    workstation: StoreSCP, tmp_path: Path
) -> None:
    """A processing stream's results go out through ``send_files``, which fits each file
    to the destination the same way; what cannot be decoded stops the send, named."""
    workstation.clear()
    decodable, undecodable = _compressed_study(tmp_path / "study")
    port = workstation.port
    assert send_files("GRIDPACS", workstation.ae_title, HOST, port, decodable) == len(decodable)
    _assert_decoded_copies(workstation.received(), decodable)
    with pytest.raises(SendFailed, match=f"{undecodable.name}.*does not decode"):
        send_files("GRIDPACS", workstation.ae_title, HOST, port, [undecodable])
