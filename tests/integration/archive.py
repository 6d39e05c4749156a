"""Putting data into a node and comparing what comes back with what went in."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom.dsutils import split_dataset

from tests.factories import StudySpec, make_dataset
from tests.integration.corpus import dataset_bytes
from tests.integration.processes import HOST, Node, describe, gridpacs_cli, run_dcmtk
from tests.integration.scu import association, store


def write_study(directory: Path, patient_id: str, count: int) -> tuple[str, list[Path]]:
    """``count`` instances of one new study of ``patient_id`` as Part 10 files named by SOP
    Instance UID (for DCMTK's tools); the Study Instance UID and the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    spec, paths, study_uid = StudySpec(patient_id=patient_id), [], ""
    for n in range(count):
        ds = make_dataset(spec, instance_number=n)
        path = directory / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
        study_uid = str(ds.StudyInstanceUID)
    return study_uid, paths


def load(node: Node, datasets: Iterable[Dataset], calling_ae: str = "LOADER") -> None:
    """C-STORE every dataset on one association; each must succeed with 0x0000."""
    with association(node, calling_ae=calling_ae) as assoc:
        for ds in datasets:
            status = store(assoc, ds)
            assert status == 0x0000, (
                f"C-STORE of {ds.SOPInstanceUID} answered 0x{status:04X}, expected 0x0000"
            )


def file_dataset_bytes(path: Path) -> bytes:
    """The dataset part of a Part 10 file (everything after the file meta)."""
    _meta, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def assert_files_match(files: list[Path], expected: Iterable[Dataset]) -> None:
    """The files are exactly the expected instances, byte-for-byte in the dataset part."""
    want = {str(ds.SOPInstanceUID): ds for ds in expected}
    got = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in files}
    assert sorted(got) == sorted(want), (
        f"received {len(got)} instances, expected {len(want)}; "
        f"missing={sorted(set(want) - set(got))} unexpected={sorted(set(got) - set(want))}"
    )
    for uid, path in got.items():
        received = dcmread(path)
        assert received.PixelData == want[uid].PixelData, f"pixel data differs for {uid}"
        syntax = received.file_meta.get("TransferSyntaxUID", "?")
        assert file_dataset_bytes(path) == dataset_bytes(want[uid]), (
            f"dataset bytes of {uid} differ from what was stored ({path}): received in "
            f"{getattr(syntax, 'name', syntax)}, stored as Explicit VR Little Endian"
        )


def dcmtk_findscu(
    node: Node, model: str, keys: list[str], out_dir: Path, calling_ae: str = "FINDSCU"
) -> list[Dataset]:
    """Run DCMTK ``findscu -X``; the identifiers of the pending responses, as datasets.

    Fails the test unless the final response is Success.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("rsp*.dcm"):
        old.unlink()
    args = [f"-{model}", "-v", "-aet", calling_ae, "-aec", node.called_ae]
    for key in keys:
        args += ["-k", key]
    result = run_dcmtk("findscu", *args, "-X", "-od", str(out_dir), HOST, str(node.port))
    output = result.stdout + result.stderr
    assert result.returncode == 0, describe(result)
    assert "Received Final Find Response (Success)" in output, describe(result)
    return [dcmread(p) for p in sorted(out_dir.glob("rsp*.dcm"))]


_STATUS_RE = re.compile(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})")


def dimse_statuses(output: str) -> list[int]:
    """Every ``DIMSE Status`` a DCMTK tool printed in debug mode (``-d``), in order."""
    return [int(m, 16) for m in _STATUS_RE.findall(output)]


def node_status(data_dir: Path, db_url: str | None = None) -> dict[str, Any]:
    """``python -m gridpacs node status --data-dir D [--db-url U] --json``, parsed."""
    extra = ["--db-url", db_url] if db_url else []
    result = gridpacs_cli("node", "status", "--data-dir", str(data_dir), *extra, "--json")
    assert result.returncode == 0, describe(result)
    try:
        parsed = json.loads(result.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(
            f"node status --json is not JSON ({exc}):\n{describe(result)}"
        ) from exc
    assert isinstance(parsed, dict), f"node status --json is not an object: {parsed!r}"
    return parsed


def status_counts(status: dict[str, Any]) -> dict[str, int]:
    """The four counts from ``node status --json``, at top level or under ``counts``.

    The contract names the counts (patients/studies/series/instances) but not the JSON shape;
    these two shapes are the ones an admin would expect.
    """
    source = status.get("counts", status)
    assert isinstance(source, dict), f"'counts' is not an object: {status!r}"
    out = {}
    for key in ("patients", "studies", "series", "instances"):
        assert key in source, f"node status --json has no {key!r} count: {status!r}"
        out[key] = int(source[key])
    return out
