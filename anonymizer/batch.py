"""Many files at once: de-identify a list of files in one process or in worker processes.

Per-file I/O (read, unnamed file, commit) costs more than the engine itself, so a folder
goes faster on several cores. Outputs are made durable in group commits
(:func:`~anonymizer.files.anonymize_tree`): in this process for ``jobs=1``; in each worker
for ``jobs>1`` (:mod:`anonymizer.workers`), one group commit spanning every chunk it is
given, so an outcome comes back only once its output is durable. Work is sent to the
workers in chunks of files (a few dozen round trips instead of one per file, and a slow
chunk does not leave a core idle); each worker builds its own
:class:`~anonymizer.engine.Deidentifier` once, from the same :class:`Settings`, so every
worker computes the same pseudonyms and the outputs are byte-identical to a
single-process run. The re-identification map is a SQLite file in WAL mode written in
short ``BEGIN IMMEDIATE`` transactions with a busy timeout, so several worker processes
can record into it at once; the parent opens it first, so it exists (and is in WAL mode)
before any worker starts.

Outcomes come back in input order whatever the completion order; a crash of a worker
process is reported as a failure of the files it held, never as a lost file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from anonymizer.engine import Deidentifier
from anonymizer.errors import AnonymizationError
from anonymizer.files import FileOutcome, anonymize_tree, make_output_dir
from anonymizer.profiles import load_profile
from anonymizer.pseudonyms import load_secret
from anonymizer.reidentification import ReidentificationMap
from anonymizer.workers import run_workers

#: At most this many files per chunk (progress stays smooth on large folders) …
MAX_CHUNK = 32
#: … and at least this many chunks per worker (a slow chunk does not leave cores idle).
CHUNKS_PER_WORKER = 8


@dataclass(frozen=True)
class Settings:
    """Everything needed to build a Deidentifier: plain paths and names, so it pickles."""

    secret_file: Path
    profile: tuple[str, ...] = ("basic",)
    options: tuple[str, ...] = ()
    recipes: tuple[Path, ...] = ()
    reid_map: Path | None = None
    reid_key: Path | None = None
    allow_burned_in: bool = False
    allow_documents: bool = False

    def build(self) -> Deidentifier:
        """A Deidentifier for these settings (raises :class:`AnonymizationError`)."""
        if (self.reid_map is None) != (self.reid_key is None):
            raise AnonymizationError("--reid-map and --reid-key go together")
        # Everything that can be refused is read before the map is opened (which creates it).
        secret = load_secret(self.secret_file)
        key = None if self.reid_key is None else load_secret(self.reid_key)
        loaded = load_profile(list(self.profile) or ["basic"], list(self.options),
                              list(self.recipes))  # fmt: skip
        reid = None
        if self.reid_map is not None and key is not None:
            reid = ReidentificationMap(self.reid_map, key)
        return Deidentifier(loaded, secret, reid, self.allow_burned_in, self.allow_documents)


def default_jobs() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _chunks(inputs: Sequence[Path], jobs: int) -> list[list[Path]]:
    size = max(1, min(MAX_CHUNK, math.ceil(len(inputs) / (jobs * CHUNKS_PER_WORKER))))
    return [list(inputs[i : i + size]) for i in range(0, len(inputs), size)]


def run_batch(
    settings: Settings,
    inputs: Sequence[Path],
    output: Path,
    jobs: int = 1,
    *,
    deidentifier: Deidentifier | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> list[FileOutcome]:
    """De-identify ``inputs`` into ``output`` with ``jobs`` processes; outcomes in input order.

    ``jobs=1`` (or a single chunk of work) runs in this process, with ``deidentifier`` when
    given (else one built from ``settings``). ``on_progress(n)`` is called in this process
    as each group of ``n`` files is done; every output reported ok is durable by then.
    """
    advance = on_progress or (lambda _n: None)
    if inputs:
        try:
            make_output_dir(output)
        except OSError as exc:  # every file fails the same way, each one listed
            return [
                FileOutcome(s, error=f"cannot write: {exc}", error_kind="OSError") for s in inputs
            ]
    chunks = _chunks(inputs, max(1, jobs))
    jobs = min(max(1, jobs), len(chunks))
    if jobs <= 1:
        deid = deidentifier or settings.build()
        outcomes = []
        for outcome in anonymize_tree(deid, inputs, output):  # its fsync threads end with it
            outcomes.append(outcome)
            advance(1)
        return outcomes
    return run_workers(settings, chunks, output, jobs, advance)
