"""The event-driven association reactors (node/dicom/reactor.py) against a real C++ SCU.

These pin what the restated pynetdicom loops must keep doing — serve requests, release,
abort, time out idle peers, stop with the server — and that they answer a request without
pynetdicom's 1 ms polls. A pynetdicom upgrade fails ``test_pynetdicom_version_is_supported``
first: re-read its ``dul.py``/``association.py`` run loops against reactor.py, then extend
``SUPPORTED``.
"""

from __future__ import annotations

import copy
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pynetdicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import RequestHandler

from node.config import DicomConfig
from node.dicom import reactor
from node.dicom.server import build_ae, serve
from tests.integration.processes import dcmtk
from tests.integration.rawpeer import COMMAND_LAST, VERIFICATION, RawPeer, echo_rq, p_data, pdv

pytestmark = pytest.mark.timeout(60)


class Server:
    """A C-ECHO SCP served exactly as the node serves its AE (``server.serve``)."""

    def __init__(
        self,
        network_timeout: float = 30,
        request_handler: type[RequestHandler] = reactor.EventDrivenRequestHandler,
    ) -> None:
        self.assocs: list[Any] = []
        self.released = threading.Event()
        self.aborted = threading.Event()
        self.ae = AE(ae_title="REACTOR")
        self.ae.network_timeout = network_timeout
        self.ae.add_supported_context(Verification)
        self.server = serve(
            self.ae,
            ("127.0.0.1", 0),
            [
                (evt.EVT_C_ECHO, self._on_echo),
                (evt.EVT_RELEASED, lambda e: self.released.set()),
                (evt.EVT_ABORTED, lambda e: self.aborted.set()),
            ],
            request_handler=request_handler,
        )
        self.port = int(self.server.server_address[1])

    def _on_echo(self, event: Any) -> int:
        self.assocs.append(event.assoc)
        return 0x0000


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.ae.shutdown()


def _echoscu(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [dcmtk("echoscu"), "-aec", "REACTOR", *args, "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "TCP_NODELAY": "1"},
        check=False,
    )


def test_pynetdicom_version_is_supported() -> None:
    assert reactor.supported(), (
        f"pynetdicom {pynetdicom.__version__} is not one reactor.py was written against "
        f"({reactor.SUPPORTED}): the node runs pynetdicom's polling loops (slow) until the "
        "restated run loops are checked against the new version"
    )
    assert not reactor.supported("4.0.0")


def test_associations_are_event_driven_and_released(server: Server) -> None:
    done = _echoscu(server.port, "--repeat", "3")
    assert done.returncode == 0, done.stderr
    assert len(server.assocs) == 3
    assoc = server.assocs[0]
    assert isinstance(assoc, reactor.EventDrivenAssociation)
    assert isinstance(assoc.dul, reactor.EventDrivenDUL)
    assert assoc.dul._idle_timer.timeout == 30  # the AE's timeouts reached the new DUL
    assert server.released.wait(5)
    assoc.join(5)
    assert not assoc.is_alive() and not assoc.dul.is_alive()
    assert assoc.dul._wake_r.fileno() == -1  # the wake-up pair is closed with the DUL


def _wakeups() -> int:
    """Voluntary context switches (a thread blocked, then woke) of this process's threads
    but the calling one, so far. Involuntary ones are preemptions: they count the machine's
    load, not the threads' polling, and a busy CI machine once pushed them past the bound."""
    me = threading.get_native_id()
    total = 0
    for task in os.listdir("/proc/self/task"):
        if int(task) == me:
            continue
        try:
            status = Path(f"/proc/self/task/{task}/status").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches"):
                total += int(line.split()[1])
    return total


def _idle_wakeups(server: Server, seconds: float = 0.5) -> int:
    """Wake-ups of the server's threads while an association it accepted sits idle (the
    peer is a plain socket in this thread: no SCU threads of its own)."""
    peer = RawPeer("127.0.0.1", server.port, "REACTOR", {1: VERIFICATION})
    try:
        peer.send(p_data(pdv(1, COMMAND_LAST, echo_rq())))
        assert peer.answer(until_responses=1).statuses == [0x0000]
        before = _wakeups()
        time.sleep(seconds)
        return _wakeups() - before
    finally:
        peer.release()
        peer.close()


def test_an_idle_association_does_not_poll_every_millisecond(server: Server) -> None:
    """pynetdicom's loops sleep 1 ms and look again (its DUL and its association thread),
    so each request waits for the next look and an idle association wakes its two threads
    ~1,000 times a second each; these block until something arrives, or at most
    ``MAX_WAIT_S`` (10 ms, the bound on how late a flag set elsewhere is seen). Counted, not
    timed (a timing comparison failed under load on a slower machine): the kernel's context
    switch counts of the server's threads over half a second of idleness, beside
    pynetdicom's own request handler."""
    seconds = 0.5
    stock = Server(request_handler=RequestHandler)
    try:
        stock_wakeups = _idle_wakeups(stock, seconds)
    finally:
        stock.ae.shutdown()
    ours = _idle_wakeups(server, seconds)
    bound = 2 * 1.6 * seconds / reactor.MAX_WAIT_S  # two threads, with slack
    assert ours <= bound, f"{ours} wake-ups in {seconds} s of an idle association"
    assert stock_wakeups > ours, f"the reference polls: {stock_wakeups} vs {ours} wake-ups"


def test_abort_by_peer_ends_the_association(server: Server) -> None:
    done = _echoscu(server.port, "--abort")
    assert done.returncode == 0, done.stderr
    assert server.aborted.wait(5)
    assoc = server.assocs[0]
    assoc.join(5)
    assert not assoc.is_alive()


def test_idle_peer_is_timed_out() -> None:
    s = Server(network_timeout=0.5)
    try:
        scu = AE(ae_title="IDLER")
        scu.add_requested_context(Verification)
        assoc = scu.associate("127.0.0.1", s.port, ae_title="REACTOR")
        assert assoc.is_established
        started = time.monotonic()
        assert s.aborted.wait(10)  # the acceptor's idle timer, checked by its reactor
        assert 0.4 < time.monotonic() - started < 10
        assoc.join(5)
        assert assoc.is_aborted
    finally:
        s.ae.shutdown()


def test_server_shutdown_stops_a_live_association(server: Server) -> None:
    scu = AE(ae_title="HOLDER")
    scu.add_requested_context(Verification)
    assoc = scu.associate("127.0.0.1", server.port, ae_title="REACTOR")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    started = time.monotonic()
    server.ae.shutdown()
    assert time.monotonic() - started < 5
    assert server.assocs[0].is_alive() is False
    assoc.release()


def test_pynetdicom_requestors_never_lose_a_response(server: Server) -> None:
    """Upstream's loop could take an SCU's response for itself (reactor.association_loop);
    with the race closed, thousands of sub-millisecond turns all get their answer."""
    reactor.install_race_free_loop()
    assert Association._run_reactor is reactor.association_loop
    scu = AE(ae_title="RACER")
    scu.dimse_timeout = 5
    scu.add_requested_context(Verification)
    assoc = scu.associate("127.0.0.1", server.port, ae_title="REACTOR")
    assert assoc.is_established
    try:
        statuses = [assoc.send_c_echo().get("Status") for _ in range(2000)]
    finally:
        assoc.release()
    assert statuses.count(0x0000) == 2000, f"{statuses.count(None)} responses lost"


def test_the_nodes_requestor_associations_are_event_driven(server: Server) -> None:
    # A C-MOVE's sub-association and the node's own sends: no 1 ms polls per turn either.
    ae = reactor.RequestorAE(ae_title="REQUESTOR")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="REACTOR")
    try:
        assert assoc.is_established
        assert isinstance(assoc.dul, reactor.EventDrivenDUL)
        replies = [assoc.send_c_echo() for _ in range(20)]
        assert [int(r.Status) for r in replies] == [0x0000] * 20
    finally:
        assoc.release()
        ae.shutdown()
    assoc.join(5)
    assert not assoc.dul.is_alive()


def _min_ms(work: Callable[[], object], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best * 1000


def test_the_nodes_supported_contexts_are_copied_cheaply_for_each_association() -> None:
    # pynetdicom deep-copies the server's supported contexts for every association it
    # accepts: the node's 177 contexts hold ~8,000 UIDs, each rebuilt and validated.
    ae = build_ae(DicomConfig())
    running = serve(ae, ("127.0.0.1", 0), [])
    try:
        served, plain = running.contexts, ae.supported_contexts
        copied = copy.deepcopy(served)
        assert [(c.abstract_syntax, c.transfer_syntax) for c in copied] == [
            (c.abstract_syntax, c.transfer_syntax) for c in plain
        ]
        assert copied[0]._transfer_syntax is not served[0]._transfer_syntax  # negotiation's own
        assert copied[0].transfer_syntax[0] is served[0].transfer_syntax[0]  # UIDs shared
        assert 10 * _min_ms(lambda: copy.deepcopy(served)) < _min_ms(lambda: copy.deepcopy(plain))
        done = _echoscu(int(running.server_address[1]), "-aec", ae.ae_title)
        assert done.returncode == 0, done.stderr
    finally:
        ae.shutdown()
