"""Worker processes that de-identify chunks of files, each with one long group commit.

A worker stages the files of every chunk it is given into one
:class:`~anonymizer.files.GroupCommit`, committing full batches in the background while it
stages the next, exactly as a single process does. A chunk is therefore a unit of work
and of load balancing, not of durability: committing every chunk on its own (as a task of
a process pool must before it returns) cost a ``syncfs``, links and a directory fsync
every dozen files and left the worker idle while the device flushed, so two workers made
CT-size outputs durable more slowly than one process.

Protocol (one duplex pipe per worker, pickled tuples):

* parent → worker: ``(number, paths)`` a chunk to stage; ``None`` no more chunks;
* worker → parent: ``("staged", number)`` the chunk is staged, send another;
  ``("done", [(number, outcome), …])`` outcomes now durable, in each chunk's order;
  ``("failed", message)`` the worker could not start.

The parent keeps :data:`PREFETCH` chunks queued at each worker, so a worker never waits
for its next chunk. A worker that dies (killed, out of memory) or cannot start fails the
files it held and had not reported, each listed; the other workers finish the rest. An
outcome is only ever reported once its output is durable at its name, so a dead worker's
reported files are complete and the others left nothing behind (unnamed files).
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Protocol

from anonymizer.engine import Deidentifier
from anonymizer.files import FileOutcome, GroupCommit, stage_file

#: Chunks queued at a worker at once: the one it stages and the next.
PREFETCH = 2


class _Builds(Protocol):
    def build(self) -> Deidentifier: ...


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection
    held: list[int] = field(default_factory=list)  # chunks sent and not all reported
    closed: bool = False  # None sent: no more chunks
    error: str | None = None  # why it stopped, when it failed


def run_workers(
    settings: _Builds,
    chunks: Sequence[Sequence[Path]],
    output: Path,
    jobs: int,
    advance: Callable[[int], None],
) -> list[FileOutcome]:
    """De-identify ``chunks`` into ``output`` in ``jobs`` forked worker processes; every
    outcome in input order, ``advance(n)`` called as ``n`` more are durable.

    Workers are forked before anything else starts a thread here; callers must not run
    threads of their own meanwhile (the CLI's progress bar refreshes from ``advance``).
    """
    results: list[list[FileOutcome]] = [[] for _ in chunks]
    pending = deque(range(len(chunks)))
    context = multiprocessing.get_context("fork")  # starts in ms, modules already imported
    workers: list[_Worker] = []
    # What this process holds now is shared with the workers until one writes to it; the
    # collector writes to every object it visits, so it must not visit these in either
    # process: each would copy most of the heap, page by page, while it works.
    gc.freeze()
    try:
        for _ in range(jobs):
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=_serve, args=(settings, child_end, output), name="anonymize-worker"
            )
            process.start()
            child_end.close()  # the worker's death is then end-of-file here
            workers.append(_Worker(process, parent_end))
        for worker in workers:
            for _ in range(PREFETCH):
                with contextlib.suppress(OSError):  # died already: its end-of-file comes
                    _assign(worker, pending, chunks)
        live = {w.conn: w for w in workers}
        while live:
            for conn in wait(list(live)):
                worker = live[conn]  # type: ignore[index]
                if not _receive(worker, pending, chunks, results, advance):
                    del live[conn]  # type: ignore[arg-type]
                    _reap(worker, chunks, results)
        for number in pending:  # every worker failed before these were sent
            reason = next((w.error for w in workers if w.error), "no worker left")
            results[number] = [_crashed(s, reason) for s in chunks[number]]
    finally:
        for worker in workers:
            if worker.process.is_alive():  # an error here or Ctrl-C: not left running
                worker.process.terminate()
            worker.process.join()
            worker.conn.close()
        gc.unfreeze()
    return [outcome for chunk in results for outcome in chunk]


def _assign(worker: _Worker, pending: deque[int], chunks: Sequence[Sequence[Path]]) -> None:
    """Send ``worker`` the next chunk, or tell it there are none left (once)."""
    if worker.closed:
        return
    if not pending:
        worker.conn.send(None)
        worker.closed = True
        return
    number = pending.popleft()
    try:
        worker.conn.send((number, list(chunks[number])))
    except OSError:  # it died meanwhile: another worker takes the chunk
        pending.appendleft(number)
        raise
    worker.held.append(number)


def _receive(
    worker: _Worker,
    pending: deque[int],
    chunks: Sequence[Sequence[Path]],
    results: list[list[FileOutcome]],
    advance: Callable[[int], None],
) -> bool:
    """Handle one message from ``worker``; False once it has ended (or died)."""
    try:
        message: Any = worker.conn.recv()
    except (EOFError, OSError):
        return False
    kind, body = message
    if kind == "staged":
        with contextlib.suppress(OSError):  # it died meanwhile: its end-of-file comes next
            _assign(worker, pending, chunks)
    elif kind == "done":
        for number, outcome in body:
            results[number].append(outcome)
        for number in {n for n, _ in body}:
            if len(results[number]) == len(chunks[number]):
                worker.held.remove(number)
        advance(len(body))
    elif kind == "failed":
        worker.error = body
        return False
    return True


def _reap(
    worker: _Worker, chunks: Sequence[Sequence[Path]], results: list[list[FileOutcome]]
) -> None:
    """After ``worker`` ended: the files of its chunks not reported are failures."""
    worker.process.join()
    if worker.error is None and worker.held:
        code = worker.process.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit {code}"
        worker.error = f"the worker process ended ({how})"
    for number in worker.held:
        done = len(results[number])
        results[number] += [_crashed(s, worker.error or "") for s in chunks[number][done:]]
    worker.held = []


def _crashed(source: Path, reason: str) -> FileOutcome:
    return FileOutcome(source, error=f"worker failed: {reason}", error_kind="WorkerFailed")


def _serve(settings: _Builds, conn: Connection, output: Path) -> None:
    """A worker's life: build a Deidentifier, stage every chunk sent into one group commit,
    report outcomes as their batches become durable."""
    try:
        deid = settings.build()
    except Exception as exc:  # the parent built one from the same settings: rare
        conn.send(("failed", f"cannot start: {exc}"))
        return
    # The Deidentifier lives as long as the worker: out of the collector's sight too.
    gc.freeze()
    chunk_of: deque[int] = deque()  # the chunk of each outcome held, in order

    def report(outcomes: list[FileOutcome]) -> None:
        if outcomes:
            conn.send(("done", [(chunk_of.popleft(), outcome) for outcome in outcomes]))

    with GroupCommit() as group:
        while (message := conn.recv()) is not None:
            number, sources = message
            for source in sources:
                chunk_of.append(number)
                report(stage_file(deid, source, output, group))
            conn.send(("staged", number))
        report(group.commit())
    conn.close()
