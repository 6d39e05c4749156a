"""The C-STORE fast path (node/dicom/store_scp.py, reactor.EventDrivenDUL) on real sockets.

The DUL thread takes plain C-STORE-RQs off the wire and answers them itself; everything
else must still reach pynetdicom. Each case here is a real SCU (DCMTK ``storescu`` or a
pynetdicom AE) against a server built as the node builds its own (``server.serve`` with
``reactor.with_store_sink``), and checks which path served what and that the SCU got the
right answer. The command and response encoders are compared byte for byte with
pynetdicom's.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # generated at import
    CTImageStorage,
    MRImageStorage,
    Verification,
)

from node.dicom import reactor
from node.dicom.server import serve
from node.dicom.store_scp import (
    HANDLER_FAILED,
    StoreCall,
    StoreCommand,
    StoreOutcome,
    decode_store_command,
    store_response,
)
from tests.factories import make_dataset, to_bytes
from tests.integration.processes import dcmtk
from tests.integration.tcp import disable_nagle_for_pynetdicom_clients

pytestmark = pytest.mark.timeout(120)


# -- encoders against pynetdicom ---------------------------------------------------------


def _pynetdicom_store_rq(**fields: Any) -> bytes:
    req = C_STORE()
    req.MessageID = fields.get("message_id", 7)
    req.AffectedSOPClassUID = fields.get("sop_class", CTImageStorage)
    req.AffectedSOPInstanceUID = fields.get("sop_instance", "1.2.3.4.5")
    req.Priority = fields.get("priority", 2)
    if "originator" in fields:
        req.MoveOriginatorApplicationEntityTitle = fields["originator"]
        req.MoveOriginatorMessageID = fields["originator_id"]
    req.DataSet = BytesIO(b"\x08\x00\x60\x00\x02\x00\x00\x00CT")
    message = C_STORE_RQ()
    message.primitive_to_message(req)
    return bytes(encode(message.command_set, True, True))


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"message_id": 65535, "sop_instance": "1.2.826.0.1.3680043.10.1.1234", "priority": 0},
        {"originator": "MOVESCU", "originator_id": 3, "sop_class": MRImageStorage},
    ],
)
def test_store_command_is_decoded_as_pynetdicom_encodes_it(fields: dict[str, Any]) -> None:
    command = decode_store_command(_pynetdicom_store_rq(**fields))
    assert command == StoreCommand(
        message_id=fields.get("message_id", 7),
        sop_class_uid=str(fields.get("sop_class", CTImageStorage)),
        sop_instance_uid=fields.get("sop_instance", "1.2.3.4.5"),
        priority=fields.get("priority", 2),
        move_originator_ae=fields.get("originator", ""),
        move_originator_message_id=fields.get("originator_id"),
    )


def _echo_rq() -> bytes:
    req = C_ECHO()
    req.MessageID = 1
    req.AffectedSOPClassUID = Verification
    message = C_ECHO_RQ()
    message.primitive_to_message(req)
    return bytes(encode(message.command_set, True, True))


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(_echo_rq(), id="c-echo"),
        pytest.param(_pynetdicom_store_rq()[:-3], id="truncated"),
        pytest.param(_pynetdicom_store_rq() + b"\x00\x00\x01\x09\x02\x00\x00\x00\x01\x00",
                     id="unexpected-element"),
        pytest.param(b"\x00\x00\x00\x01", id="short"),
        pytest.param(
            # CommandDataSetType 0x0101: a C-STORE-RQ without a data set
            _pynetdicom_store_rq().replace(b"\x00\x00\x00\x08\x02\x00\x00\x00\x01\x00",
                                           b"\x00\x00\x00\x08\x02\x00\x00\x00\x01\x01"),
            id="no-data-set",
        ),
    ],
)  # fmt: skip
def test_anything_but_a_plain_store_command_is_declined(raw: bytes) -> None:
    assert decode_store_command(raw) is None


@pytest.mark.parametrize(
    ("outcome", "sop_instance"),
    [
        (StoreOutcome(0x0000), "1.2.3.4.5"),  # odd length: NUL-padded
        (StoreOutcome(0xA900, "SOP class does not match"), "1.2.3.4.56"),
        (StoreOutcome(0xC000, "odd comment"), "1.2.3"),  # odd comment: space-padded
        (StoreOutcome(0xA700, "x" * 64), "1.2.3.4"),
    ],
)
def test_store_response_is_pynetdicoms_command_set(
    outcome: StoreOutcome, sop_instance: str
) -> None:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 4242
    rsp.AffectedSOPClassUID = CTImageStorage
    rsp.AffectedSOPInstanceUID = sop_instance
    rsp.Status = outcome.status
    if outcome.comment:
        rsp.ErrorComment = outcome.comment
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    expected = bytes(encode(message.command_set, True, True))
    command = StoreCommand(4242, str(CTImageStorage), sop_instance)
    assert store_response(command, outcome) == expected


# -- a server built as the node's, on real sockets ----------------------------------------


class StoreServer:
    """Storage SCP served through ``serve`` with the fast path; records both paths."""

    def __init__(self, *, max_pdu: int = 16382) -> None:
        self.fast: list[StoreCall] = []
        self.fast_bytes: list[bytes] = []
        self.slow: list[str] = []
        self.echoes = 0
        self.answer: Callable[[StoreCall], StoreOutcome] = lambda call: StoreOutcome(0x0000)
        self.threads: set[str] = set()
        self.ae = AE(ae_title="FASTSCP")
        self.ae.maximum_pdu_size = max_pdu
        self.ae.network_timeout = 30
        for uid in (Verification, CTImageStorage, MRImageStorage):
            self.ae.add_supported_context(uid, [ExplicitVRLittleEndian])
        self.server = serve(
            self.ae,
            ("127.0.0.1", 0),
            [(evt.EVT_C_STORE, self._slow_store), (evt.EVT_C_ECHO, self._echo)],
            request_handler=reactor.with_store_sink(self._fast_store),
        )
        self.port = int(self.server.server_address[1])

    def _fast_store(self, call: StoreCall) -> StoreOutcome:
        self.threads.add(threading.current_thread().name)
        self.fast.append(call)
        self.fast_bytes.append(call.part10())
        return self.answer(call)

    def _slow_store(self, event: Any) -> int:
        self.slow.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def _echo(self, event: Any) -> int:
        self.echoes += 1
        return 0x0000


@pytest.fixture
def server() -> Iterator[StoreServer]:
    s = StoreServer()
    yield s
    s.ae.shutdown()


def _write(directory: Path, count: int, rows: int = 64) -> list[Path]:
    paths = []
    for n in range(1, count + 1):
        path = directory / f"{n:04d}.dcm"
        path.write_bytes(to_bytes(make_dataset(instance_number=n, rows=rows, columns=rows)))
        paths.append(path)
    return paths


def _storescu(port: int, files: list[Path], *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            dcmtk("storescu"),
            "-aec",
            "FASTSCP",
            "-v",
            *options,
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TCP_NODELAY": "1"},
        check=False,
    )


def _same_instance(received: bytes, sent: Path) -> None:
    got, want = dcmread(BytesIO(received)), dcmread(sent)
    assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert got.file_meta.MediaStorageSOPInstanceUID == want.SOPInstanceUID
    assert got == want  # every element, pixel data included


@pytest.mark.parametrize("max_pdu", ["16384", "4096"])
def test_storescu_instances_are_served_by_the_dul_thread(
    server: StoreServer, tmp_path: Path, max_pdu: str
) -> None:
    """Small and multi-PDU data sets (512x512 at 4 KiB PDUs: ~128 PDUs each)."""
    files = _write(tmp_path, 3)
    (tmp_path / "big").mkdir()
    big = tmp_path / "big" / "big.dcm"
    big.write_bytes(to_bytes(make_dataset(instance_number=9, rows=512, columns=512)))
    files.append(big)
    result = _storescu(server.port, files, "--max-pdu", max_pdu)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("Received Store Response (Success)") == len(files)
    assert server.slow == []
    assert len(server.fast) == len(files)
    for call, data, sent in zip(server.fast, server.fast_bytes, files, strict=True):
        assert call.sop_instance_uid == dcmread(sent).SOPInstanceUID
        assert call.calling_ae == "STORESCU" and call.called_ae == "FASTSCP"
        assert call.transfer_syntax == ExplicitVRLittleEndian
        _same_instance(data, sent)
    # served on the association's DUL thread, not on the association thread
    assert not any(name.startswith("AcceptorThread") for name in server.threads)


def _pynetdicom_ae() -> AE:
    disable_nagle_for_pynetdicom_clients()
    ae = AE(ae_title="PYSCU")
    ae.dimse_timeout = ae.network_timeout = ae.acse_timeout = 30
    for uid in (Verification, CTImageStorage, MRImageStorage):
        ae.add_requested_context(uid, [ExplicitVRLittleEndian])
    return ae


def test_failure_statuses_and_comments_reach_the_scu(server: StoreServer) -> None:
    refused = make_dataset(instance_number=2)
    server.answer = lambda call: (
        StoreOutcome(0xA900, "SOP class does not match the data set")
        if call.sop_instance_uid == refused.SOPInstanceUID
        else StoreOutcome(0x0000)
    )
    ae = _pynetdicom_ae()
    assoc = ae.associate("127.0.0.1", server.port, ae_title="FASTSCP")
    try:
        assert assoc.is_established
        ok = assoc.send_c_store(make_dataset(instance_number=1))
        bad = assoc.send_c_store(refused)
        echo = assoc.send_c_echo()
        again = assoc.send_c_store(make_dataset(instance_number=3))
    finally:
        assoc.release()
        ae.shutdown()
    assert ok.Status == 0x0000 and "ErrorComment" not in ok
    assert bad.Status == 0xA900
    assert bad.ErrorComment == "SOP class does not match the data set"
    assert echo.Status == 0x0000 and server.echoes == 1  # C-ECHO: pynetdicom's path
    assert again.Status == 0x0000
    assert len(server.fast) == 3 and server.slow == []


def test_an_exception_in_the_store_function_is_0xC211_and_the_association_goes_on(
    server: StoreServer,
) -> None:
    def explode(call: StoreCall) -> StoreOutcome:
        if call.sop_instance_uid.endswith(".666"):
            raise RuntimeError("disk on fire")
        return StoreOutcome(0x0000)

    server.answer = explode
    ae = _pynetdicom_ae()
    assoc = ae.associate("127.0.0.1", server.port, ae_title="FASTSCP")
    try:
        failed = assoc.send_c_store(make_dataset(sop_uid="1.2.3.666"))
        fine = assoc.send_c_store(make_dataset())
    finally:
        assoc.release()
        ae.shutdown()
    assert failed.Status == HANDLER_FAILED
    assert fine.Status == 0x0000


def test_a_fragmented_command_set_goes_to_pynetdicom() -> None:
    """A server accepting only tiny PDUs makes the SCU split the command set: declined."""
    tiny = StoreServer(max_pdu=64)
    ae = _pynetdicom_ae()
    try:
        assoc = ae.associate("127.0.0.1", tiny.port, ae_title="FASTSCP")
        ds = make_dataset()
        rsp = assoc.send_c_store(ds)
        assoc.release()
    finally:
        ae.shutdown()
        tiny.ae.shutdown()
    assert rsp.Status == 0x0000
    assert tiny.fast == [] and tiny.slow == [ds.SOPInstanceUID]


def test_a_peer_with_small_pdus_is_answered_by_pynetdicom(server: StoreServer) -> None:
    """Our answer must fit the peer's maximum PDU; below MIN_PEER_PDU pynetdicom fragments."""
    ae = _pynetdicom_ae()
    try:
        assoc = ae.associate("127.0.0.1", server.port, ae_title="FASTSCP", max_pdu=256)
        ds = make_dataset()
        rsp = assoc.send_c_store(ds)
        assoc.release()
    finally:
        ae.shutdown()
    assert rsp.Status == 0x0000
    assert server.fast == [] and server.slow == [ds.SOPInstanceUID]


def test_an_abort_mid_data_set_stores_nothing_and_the_server_goes_on(
    server: StoreServer, tmp_path: Path
) -> None:
    """A peer that dies half-way through a data set: no store call, the next peer is served."""
    import socket
    import struct

    ds = make_dataset(rows=512, columns=512)
    ae = _pynetdicom_ae()
    assoc = ae.associate("127.0.0.1", server.port, ae_title="FASTSCP")
    assert assoc.is_established
    context_id = next(
        cx.context_id for cx in assoc.accepted_contexts if cx.abstract_syntax == CTImageStorage
    )
    command = _pynetdicom_store_rq(sop_instance=ds.SOPInstanceUID)
    raw_socket: socket.socket = assoc.dul.socket.socket  # type: ignore[union-attr]
    pdv = struct.pack(">IBB", len(command) + 2, context_id, 0x03) + command
    data = b"\x00" * 1000
    pdv_data = struct.pack(">IBB", len(data) + 2, context_id, 0x00) + data  # not the last
    for item in (pdv, pdv_data):
        raw_socket.sendall(struct.pack(">BBI", 0x04, 0, len(item)) + item)
    assoc.abort()
    ae.shutdown()
    paths = _write(tmp_path, 1)
    result = _storescu(server.port, paths)
    assert result.returncode == 0, result.stderr
    assert [call.sop_instance_uid for call in server.fast] == [dcmread(paths[0]).SOPInstanceUID]
