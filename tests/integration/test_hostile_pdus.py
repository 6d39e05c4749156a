"""Hand-built PDUs against a real node process: the C-STORE fast path under hostile input.

tests/node/test_store_fast_path_hostile.py covers the cases one by one in-process; here a
few of them go to ``gridpacs node serve`` itself, whose store function is the real ingest:
a broken protocol is aborted and nothing of it is indexed, legal odd fragmentation is
stored and indexed, and afterwards DCMTK ``storescu`` is served as usual.
"""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage
from pynetdicom.sop_class import Verification

from tests.factories import StudySpec, make_dataset, to_bytes
from tests.integration.corpus import dataset_bytes
from tests.integration.processes import HOST, Node, NodeFactory, dcmtk
from tests.integration.rawpeer import (
    COMMAND_LAST,
    DATA,
    DATA_LAST,
    P_DATA_TF,
    RawPeer,
    echo_rq,
    p_data,
    pdu,
    pdv,
    store_rq,
)
from tests.integration.scu import association, series_instance_uids

pytestmark = pytest.mark.timeout(120)

CT, ECHO = 1, 3
SPEC = StudySpec(patient_id="ITHOSTILEPDU")


@pytest.fixture(scope="module")
def node(module_node_factory: NodeFactory) -> Node:
    return module_node_factory()


def _instance(number: int) -> tuple[str, bytes, bytes]:
    ds = make_dataset(SPEC, instance_number=number, rows=8, columns=8)
    uid = str(ds.SOPInstanceUID)
    return uid, store_rq(str(CTImageStorage), uid, number), dataset_bytes(ds)


def _indexed(node: Node) -> set[str]:
    return set(series_instance_uids(node, SPEC.study_uid, SPEC.series_uid))


def _storescu_works(node: Node, directory: Path, number: int) -> str:
    ds = make_dataset(SPEC, instance_number=number, rows=8, columns=8)
    path = directory / f"good{number}.dcm"
    path.write_bytes(to_bytes(ds))
    result = subprocess.run(
        [dcmtk("storescu"), "-aec", node.called_ae, HOST, str(node.port), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TCP_NODELAY": "1"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return str(ds.SOPInstanceUID)


def _peer(node: Node) -> RawPeer:
    return RawPeer(HOST, node.port, node.called_ae, {CT: str(CTImageStorage), ECHO: Verification})


def test_broken_pdus_are_aborted_and_nothing_of_them_is_indexed(node: Node, tmp_path: Path) -> None:
    cases = []
    for number in range(1, 5):
        uid, command, data = _instance(number)
        cmd = pdv(CT, COMMAND_LAST, command)
        cases.append(
            (
                uid,
                [
                    pdu(P_DATA_TF, cmd + pdv(CT, DATA_LAST, data) + b"\x00\x01\x02"),  # garbage
                    pdu(P_DATA_TF, cmd + struct.pack(">IB", 1, CT) + pdv(CT, DATA_LAST, data)),
                    p_data(cmd, pdv(CT, DATA, data[:50])) + p_data(cmd, pdv(CT, DATA_LAST, data)),
                    p_data(cmd, pdv(CT, DATA, data[:50]), pdv(ECHO, DATA_LAST, data[50:])),
                ][number - 1],
            )
        )
    refused = set()
    for uid, stream in cases:
        peer = _peer(node)
        try:
            peer.send(stream)
            answer = peer.answer(until_responses=1, timeout=10)
        finally:
            peer.close()
        assert answer.aborted and answer.statuses == [], (uid, answer)
        refused.add(uid)
    good = _storescu_works(node, tmp_path, 10)
    indexed = _indexed(node)
    assert good in indexed
    assert not refused & indexed, "an instance from a broken PDU was indexed"


def test_one_byte_pdvs_and_messages_sharing_pdus_are_stored(node: Node, tmp_path: Path) -> None:
    (a, a_cmd, a_data), (b, b_cmd, b_data) = _instance(20), _instance(21)
    ones = [pdv(CT, DATA, a_data[n : n + 1]) for n in range(len(a_data) - 1)]
    ones.append(pdv(CT, DATA_LAST, a_data[-1:]))
    stream = p_data(pdv(CT, COMMAND_LAST, a_cmd), *ones[:-1])
    # a's last byte, b whole and a C-ECHO, all in one PDU
    stream += p_data(ones[-1], pdv(CT, COMMAND_LAST, b_cmd), pdv(CT, DATA_LAST, b_data),
                     pdv(ECHO, COMMAND_LAST, echo_rq(3)))  # fmt: skip
    peer = _peer(node)
    try:
        peer.send(stream)
        answer = peer.answer(until_responses=3, timeout=20)
        peer.release()
    finally:
        peer.close()
    assert answer.responses == [(0x8001, 0), (0x8001, 0), (0x8030, 0)], answer
    assert {a, b} <= _indexed(node)


def test_unusual_command_sets_and_a_peer_gone_mid_data_set(node: Node, tmp_path: Path) -> None:
    uid, command, data = _instance(30)
    at = command.index(uid.encode()) + len(uid) - 2
    non_ascii = command[:at] + b"\xc3\xa9" + command[at + 2 :]  # same length, not ASCII
    peer = _peer(node)
    try:
        peer.send(p_data(pdv(CT, COMMAND_LAST, non_ascii), pdv(CT, DATA_LAST, data)))
        answer = peer.answer(until_responses=1, timeout=10)
    finally:
        peer.close()
    # pynetdicom's path and the node's checks: a failure status or an abort, never success
    assert answer.aborted or (answer.statuses and answer.statuses[0] != 0x0000), answer

    gone_uid, gone_command, gone_data = _instance(31)
    peer = _peer(node)
    peer.send(p_data(pdv(CT, COMMAND_LAST, gone_command), pdv(CT, DATA, gone_data[:40])))
    peer.close()
    good = _storescu_works(node, tmp_path, 32)
    with association(node, [Verification]) as assoc:
        assert assoc.send_c_echo().Status == 0x0000
    indexed = _indexed(node)
    assert good in indexed and gone_uid not in indexed
