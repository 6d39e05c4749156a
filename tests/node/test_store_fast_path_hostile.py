"""Hostile P-DATA for the C-STORE fast path (reactor.EventDrivenDUL, store_scp) on real sockets.

A peer negotiates an association by hand (tests/integration/rawpeer.py) and then writes
PDUs no SCU library would: bad PDV lengths, messages out of order, odd command sets, legal
but unusual fragmentations, sockets closed half-way. The product rule under test: bad input
gets a clear answer (a DICOM status, or an A-ABORT for a broken protocol) within a bounded
time, nothing the peer never completed is stored, legal input is stored byte for byte, and
the server goes on serving: after every case the hostile association's threads have ended
and a fresh well-behaved SCU stores an instance.
"""

from __future__ import annotations

import resource
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # generated at import
    CTImageStorage,
    MRImageStorage,
    Verification,
)

from node.dicom.reactor import EventDrivenAssociation, EventDrivenDUL
from node.dicom.store_scp import decode_store_command
from tests.factories import make_dataset
from tests.integration.corpus import dataset_bytes
from tests.integration.rawpeer import (
    COMMAND_LAST,
    DATA,
    DATA_LAST,
    P_DATA_TF,
    Answer,
    RawPeer,
    echo_rq,
    p_data,
    pdu,
    pdv,
    store_rq,
)
from tests.node.test_store_fast_path import StoreServer, _pynetdicom_ae

pytestmark = pytest.mark.timeout(60)

CT, MR, ECHO = 1, 3, 5
NOT_ACCEPTED = 7
CONTEXTS = {CT: str(CTImageStorage), MR: str(MRImageStorage), ECHO: str(Verification)}
ANSWER_WITHIN_S = 10.0
THREADS_END_WITHIN_S = 5.0


@pytest.fixture
def server() -> Iterator[StoreServer]:
    s = StoreServer()
    yield s
    s.ae.shutdown()


class Instance:
    """A small CT instance: its SOP Instance UID and its data set as sent on the wire."""

    def __init__(self, number: int = 1) -> None:
        ds = make_dataset(instance_number=number, rows=8, columns=8)
        self.uid = str(ds.SOPInstanceUID)
        self.data = dataset_bytes(ds)
        self.command = store_rq(str(CTImageStorage), self.uid, message_id=number)


def _server_threads() -> list[threading.Thread]:
    return [
        t
        for t in threading.enumerate()
        if isinstance(t, EventDrivenAssociation | EventDrivenDUL) and t.is_alive()
    ]


def _threads_end() -> None:
    deadline = time.monotonic() + THREADS_END_WITHIN_S
    while _server_threads() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _server_threads() == [], "an association of the server did not end"


def _server_still_serves(server: StoreServer) -> None:
    """A fresh pynetdicom SCU stores an instance through the fast path."""
    ds = make_dataset(instance_number=99, rows=8, columns=8)
    before = len(server.fast)
    ae = _pynetdicom_ae()
    try:
        assoc = ae.associate("127.0.0.1", server.port, ae_title="FASTSCP")
        assert assoc.is_established
        rsp = assoc.send_c_store(ds)
        assoc.release()
    finally:
        ae.shutdown()
    assert rsp.Status == 0x0000
    assert [c.sop_instance_uid for c in server.fast[before:]] == [ds.SOPInstanceUID]
    _threads_end()


def _run(
    server: StoreServer, send: Callable[[RawPeer], None], *, responses: int = 1
) -> Answer:
    """Negotiate, send, read the answer (up to ``responses`` DIMSE responses, an abort or
    a close), hang up; then the server's threads must end and a good SCU be served."""
    peer = RawPeer("127.0.0.1", server.port, "FASTSCP", CONTEXTS)
    try:
        send(peer)
        answer = peer.answer(until_responses=responses, timeout=ANSWER_WITHIN_S)
    finally:
        peer.close()
    _threads_end()
    _server_still_serves(server)
    return answer


def _refused(answer: Answer) -> bool:
    """A broken protocol ends the association (A-ABORT or a close), with no success."""
    return (answer.aborted or answer.closed) and 0x0000 not in answer.statuses


def _command(*elements: tuple[int, bytes]) -> bytes:
    """An Implicit VR Little Endian command set of ``elements`` (group length first)."""
    body = b"".join(struct.pack("<HHI", 0, tag, len(value)) + value for tag, value in elements)
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def _store_elements(instance_uid: bytes, data_set_type: int = 0x0000) -> list[tuple[int, bytes]]:
    sop_class = str(CTImageStorage).encode()
    return [
        (0x0002, sop_class + b"\x00" * (len(sop_class) % 2)),
        (0x0100, struct.pack("<H", 0x0001)),
        (0x0110, struct.pack("<H", 1)),
        (0x0700, struct.pack("<H", 2)),
        (0x0800, struct.pack("<H", data_set_type)),
        (0x1000, instance_uid),
    ]


# -- PDU and PDV framing --------------------------------------------------------------------


def _framing_cases(i: Instance) -> dict[str, bytes]:
    cmd = pdv(CT, COMMAND_LAST, i.command)
    data_last = pdv(CT, DATA_LAST, i.data)
    half = len(i.data) // 2
    first_half = pdv(CT, DATA, i.data[:half])
    return {
        "pdv-length-0": pdu(P_DATA_TF, struct.pack(">I", 0) + cmd + data_last),
        "pdv-length-1": pdu(P_DATA_TF, struct.pack(">IB", 1, CT) + cmd + data_last),
        "pdv-length-0-mid-data-set": p_data(cmd, first_half)
        + pdu(P_DATA_TF, struct.pack(">I", 0) + pdv(CT, DATA_LAST, i.data[half:])),
        "pdv-length-1-mid-data-set": p_data(cmd, first_half)
        + pdu(P_DATA_TF, struct.pack(">IB", 1, CT) + pdv(CT, DATA_LAST, i.data[half:])),
        "pdv-longer-than-pdu": pdu(P_DATA_TF, cmd + struct.pack(">IBB", 100_000, CT, 0x02)
                                   + i.data),
        "pdv-longer-than-pdu-mid-data-set": p_data(cmd, first_half)
        + pdu(P_DATA_TF, struct.pack(">IBB", 100_000, CT, 0x02) + i.data[half:]),
        # the PDU header says 10 bytes less than its items: the tail reads as a new PDU
        "pdu-shorter-than-items": struct.pack(">BBI", P_DATA_TF, 0, len(cmd) + len(data_last)
                                              - 10) + cmd + data_last,
        "trailing-garbage": pdu(P_DATA_TF, cmd + data_last + b"\x00\x01\x02"),
        "trailing-garbage-mid-data-set": p_data(cmd, first_half)
        + pdu(P_DATA_TF, pdv(CT, DATA_LAST, i.data[half:]) + b"\xff" * 5),
    }  # fmt: skip


_FRAMING = list(_framing_cases(Instance()))


@pytest.mark.parametrize("case", _FRAMING)
def test_bad_framing_is_aborted_and_nothing_is_stored(server: StoreServer, case: str) -> None:
    instance = Instance()
    answer = _run(server, lambda peer: peer.send(_framing_cases(instance)[case]))
    assert _refused(answer), answer
    stored = [c.sop_instance_uid for c in server.fast] + server.slow
    assert instance.uid not in stored


# -- messages out of order --------------------------------------------------------------------


def _sequence_cases(i: Instance) -> dict[str, bytes]:
    cmd = pdv(CT, COMMAND_LAST, i.command)
    half = len(i.data) // 2
    return {
        "command-on-unaccepted-context": p_data(pdv(NOT_ACCEPTED, COMMAND_LAST, i.command),
                                                pdv(NOT_ACCEPTED, DATA_LAST, i.data)),
        "data-before-command": p_data(pdv(CT, DATA_LAST, i.data)),
        "second-command-while-data-pending": p_data(cmd, pdv(CT, DATA, i.data[:half]))
        + p_data(cmd, pdv(CT, DATA_LAST, i.data)),
        "second-command-in-the-same-pdu": p_data(cmd, pdv(CT, DATA, i.data[:half]), cmd,
                                                 pdv(CT, DATA_LAST, i.data)),
        "data-on-another-context-mid-data-set": p_data(cmd, pdv(CT, DATA, i.data[:half]))
        + p_data(pdv(MR, DATA_LAST, i.data[half:])),
        "data-on-another-context-same-pdu": p_data(cmd, pdv(CT, DATA, i.data[:half]),
                                                   pdv(MR, DATA_LAST, i.data[half:])),
    }  # fmt: skip


@pytest.mark.parametrize("case", list(_sequence_cases(Instance())))
def test_messages_out_of_order_are_refused_and_nothing_is_stored(
    server: StoreServer, case: str
) -> None:
    instance = Instance()
    answer = _run(server, lambda peer: peer.send(_sequence_cases(instance)[case]))
    assert 0x0000 not in answer.statuses, answer
    assert answer.statuses or answer.aborted or answer.closed
    assert server.fast == [] or instance.uid not in [c.sop_instance_uid for c in server.fast]
    assert instance.uid not in server.slow


# -- command sets the fast path declines: pynetdicom's answer, never a hang -------------------


def _command_cases(i: Instance) -> dict[str, bytes]:
    uid = i.uid.encode() + b"\x00" * (len(i.uid) % 2)
    elements = _store_elements(uid)
    plain = _command(*elements)
    return {
        "truncated-element": plain[:-3],
        "duplicate-element": _command(*elements, (0x0110, struct.pack("<H", 2))),
        "duplicate-instance-uid": _command(*elements, (0x1000, b"1.2.3.4\x00")),
        "huge-element-length": plain[: -len(uid) - 4] + struct.pack("<I", 0xFFFFFFF0) + uid,
        "non-ascii-instance-uid": _command(*_store_elements(b"1.2.3.\xc3\xa9")),
        "non-ascii-instance-uid-latin1": _command(*_store_elements(b"1.2.3.4\xe9")),
        "empty-instance-uid": _command(*_store_elements(b"")),
        "no-data-set": _command(*_store_elements(uid, 0x0101)),
    }


_COMMANDS = list(_command_cases(Instance()))


@pytest.mark.parametrize("case", _COMMANDS)
def test_unusual_command_sets_get_pynetdicoms_answer_not_the_fast_path(
    server: StoreServer, case: str
) -> None:
    instance = Instance()
    command = _command_cases(instance)[case]
    if case == "no-data-set":
        message = p_data(pdv(CT, COMMAND_LAST, command))
    else:
        message = p_data(pdv(CT, COMMAND_LAST, command), pdv(CT, DATA_LAST, instance.data))
    answer = _run(server, lambda peer: peer.send(message))
    assert answer.statuses or answer.aborted or answer.closed, answer
    assert server.fast[:-1] == [], "the fast path took a command set it must decline"
    if case == "empty-instance-uid":  # pynetdicom ignored it: the peer waited forever
        assert answer.aborted, answer


@pytest.mark.parametrize("case", _COMMANDS)
def test_decode_store_command_declines_without_raising(case: str) -> None:
    if case in ("duplicate-element", "duplicate-instance-uid"):
        return  # appended after (0000,1000): decoded up to there, declined for the repeat
    assert decode_store_command(_command_cases(Instance())[case]) is None


@pytest.mark.parametrize(
    "extra",
    [(0x0700, b"\x02\x00\x00\x00"), (0x1031, b"\x01"), (0x1030, b"MOVE\xc9SCU ")],
    ids=["priority-not-US", "originator-id-not-US", "non-ascii-originator"],
)
def test_malformed_optional_elements_are_declined_not_raised(extra: tuple[int, bytes]) -> None:
    elements = [e for e in _store_elements(b"1.2.3.4\x00") if e[0] != extra[0]]
    assert decode_store_command(_command(*elements, extra)) is None


# -- legal but unusual fragmentation: stored byte for byte -----------------------------------


def _stored(server: StoreServer, *instances: Instance) -> None:
    calls = {c.sop_instance_uid: data for c, data in zip(server.fast, server.fast_bytes,
                                                            strict=True)}  # fmt: skip
    for instance in instances:
        assert instance.uid in calls, "not stored through the fast path"
        assert calls[instance.uid].endswith(instance.data), "stored bytes differ"


def test_a_data_set_in_one_byte_pdvs_is_stored(server: StoreServer) -> None:
    instance = Instance()
    ones = [pdv(CT, DATA, instance.data[n : n + 1]) for n in range(len(instance.data) - 1)]
    ones.append(pdv(CT, DATA_LAST, instance.data[-1:]))
    pdus = [p_data(pdv(CT, COMMAND_LAST, instance.command))]
    pdus += [p_data(*ones[n : n + 1000]) for n in range(0, len(ones), 1000)]
    answer = _run(server, lambda peer: peer.send(b"".join(pdus)))
    assert answer.responses == [(0x8001, 0x0000)]
    _stored(server, instance)


def test_command_and_data_in_one_pdu_and_messages_back_to_back(server: StoreServer) -> None:
    """PS3.8 9.3.5: a P-DATA-TF may carry PDVs of several messages (one after another)."""
    a, b, c = Instance(1), Instance(2), Instance(3)
    half = len(b.data) // 2
    stream = (
        # a: command and whole data set in one PDU; b's command follows a's last fragment
        p_data(pdv(CT, COMMAND_LAST, a.command), pdv(CT, DATA_LAST, a.data),
               pdv(CT, COMMAND_LAST, b.command), pdv(CT, DATA, b.data[:half]))
        # b's last fragment, then c whole, then a C-ECHO (pynetdicom's), all in one PDU
        + p_data(pdv(CT, DATA_LAST, b.data[half:]), pdv(CT, COMMAND_LAST, c.command),
                 pdv(CT, DATA_LAST, c.data), pdv(ECHO, COMMAND_LAST, echo_rq(4)))
    )  # fmt: skip

    def send(peer: RawPeer) -> None:
        peer.send(stream)

    answer = _run(server, send, responses=4)
    assert answer.responses == [(0x8001, 0), (0x8001, 0), (0x8001, 0), (0x8030, 0)], answer
    _stored(server, a, b, c)
    assert server.echoes == 1


def test_a_c_echo_right_after_a_stores_last_fragment(server: StoreServer) -> None:
    instance = Instance()
    stream = p_data(pdv(CT, COMMAND_LAST, instance.command), pdv(CT, DATA, instance.data[:10])) + (
        p_data(pdv(CT, DATA_LAST, instance.data[10:]), pdv(ECHO, COMMAND_LAST, echo_rq(2)))
    )
    answer = _run(server, lambda peer: peer.send(stream), responses=2)
    assert answer.responses == [(0x8001, 0x0000), (0x8030, 0x0000)]
    _stored(server, instance)


def test_the_association_goes_on_after_a_declined_message(server: StoreServer) -> None:
    """A store pynetdicom serves (its command set in two fragments), then a fast one."""
    slow, fast = Instance(1), Instance(2)
    cut = len(slow.command) // 2

    def send(peer: RawPeer) -> None:
        peer.send(p_data(pdv(CT, 0x01, slow.command[:cut]), pdv(CT, COMMAND_LAST,
                                                                 slow.command[cut:]),
                         pdv(CT, DATA_LAST, slow.data)))  # fmt: skip
        first = peer.answer(until_responses=1)
        assert first.responses == [(0x8001, 0x0000)], first
        peer.send(p_data(pdv(CT, COMMAND_LAST, fast.command), pdv(CT, DATA_LAST, fast.data)))

    answer = _run(server, send)
    assert answer.responses == [(0x8001, 0x0000)]
    assert server.slow == [slow.uid]
    _stored(server, fast)


# -- the peer goes away ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cut",
    ["mid-data-set", "mid-pdu-header", "mid-pdu-body", "mid-pdu-header-in-a-data-set"],
)
def test_a_peer_closing_half_way_stores_nothing(server: StoreServer, cut: str) -> None:
    instance = Instance()
    cmd = p_data(pdv(CT, COMMAND_LAST, instance.command))
    whole = p_data(pdv(CT, DATA_LAST, instance.data))
    sent = {
        "mid-data-set": cmd + p_data(pdv(CT, DATA, instance.data[:20])),
        "mid-pdu-header": (cmd + whole)[:3],
        "mid-pdu-body": cmd + whole[:-5],
        "mid-pdu-header-in-a-data-set": cmd + whole[:4],
    }[cut]
    peer = RawPeer("127.0.0.1", server.port, "FASTSCP", CONTEXTS)
    peer.send(sent)
    peer.close()
    _threads_end()
    assert server.fast == [] and server.slow == []
    _server_still_serves(server)


def test_a_huge_pdu_length_costs_no_memory_up_front(server: StoreServer) -> None:
    """A P-DATA-TF header claiming 2 GiB, then a close: memory must follow bytes received,
    not the length a peer claims (a few such peers would exhaust the node's memory)."""
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    peer = RawPeer("127.0.0.1", server.port, "FASTSCP", CONTEXTS)
    peer.send(struct.pack(">BBI", P_DATA_TF, 0, 0x7FFF_FFF0) + b"\x00" * 100)
    time.sleep(0.5)  # let the server read what there is
    peer.close()
    _threads_end()
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert grown_mib < 256, f"peak memory grew by {grown_mib:.0f} MiB"
    _server_still_serves(server)
