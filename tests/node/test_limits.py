"""Resource limits at the DICOM edge: associations and PDU size come from configuration."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from node.app import NodeApp
from node.config import load_config
from tests.factories import make_dataset

pytestmark = pytest.mark.timeout(60)


def _node(tmp_path: Path, **dicom: object) -> NodeApp:
    cfg = load_config(None, {"data_dir": str(tmp_path / "n"), "dicom": {"port": 0, **dicom}})
    app = NodeApp(cfg)
    app.start()
    return app


def _associate(port: int):  # type: ignore[no-untyped-def]
    ae = AE(ae_title="SCU")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    return ae.associate("127.0.0.1", port, ae_title="GRIDPACS")


def test_association_limit_rejects_the_extra_one_and_frees_on_release(tmp_path: Path) -> None:
    node = _node(tmp_path, max_associations=1)
    try:
        first = _associate(node.dicom.port)
        assert first.is_established
        second = _associate(node.dicom.port)
        assert second.is_rejected  # transient, local limit exceeded
        first.release()
        # Its association thread ends just after the A-RELEASE-RP the SCU waited for: a
        # request in between is refused as transient, and a retry gets in.
        deadline = time.monotonic() + 5
        third = _associate(node.dicom.port)
        while third.is_rejected and time.monotonic() < deadline:
            time.sleep(0.01)
            third = _associate(node.dicom.port)
        assert third.is_established and third.send_c_echo().Status == 0
        third.release()
    finally:
        node.stop()


def test_small_max_pdu_still_receives_large_instances(tmp_path: Path) -> None:
    node = _node(tmp_path, max_pdu_size=4096)
    try:
        assoc = _associate(node.dicom.port)
        assert assoc.acceptor.maximum_length == 4096  # what the node told the SCU
        ds = make_dataset(rows=128, columns=128)  # 32 KB of pixels: many 4 KB PDUs
        assert assoc.send_c_store(ds).Status == 0
        assoc.release()
        assert node.index.stats()["instances"] == 1
    finally:
        node.stop()
