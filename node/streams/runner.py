"""One attempt of a job, start to end: input, command, derived series, storage, routing.

Every failure becomes an :class:`~node.streams.jobs.Outcome` with a clear error and the
command's logs (with the node's own notes appended), never an exception: the worker
always has something to report to the scheduler.

A job on a collection that may not leave the site reports nothing identifying: its study
arrives as a reference only this node resolves (:mod:`node.streams.references`), its input
is read from this node only (asking the catalog would name the study), its logs stay
here, its derived series are counted but not named, and UIDs in its error are masked.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from io import BytesIO
from pathlib import Path

from pydicom import dcmread

from catalog.jobs.records import Job, Outcome, is_study_reference
from node.config import Destination
from node.errors import NodeError
from node.services.ingest import IngestService, StoreRequest
from node.streams.derived import (
    DerivedSeries,
    SourceStudy,
    derivation_prefix,
    derive,
    drop_own_outputs,
)
from node.streams.executor import RunResult, Workspace, run_command
from node.streams.inputs import InputGatherer
from node.streams.manifest import StreamManifest
from node.streams.registry import StreamRegistry
from node.structlog import log_event

LOG = logging.getLogger("gridpacs.node.streams.runner")

SendFiles = Callable[[str, Destination, list[Path]], int]
"""(called AE, where, Part 10 files) → instances sent; raises on any refusal."""


class AttemptFailed(Exception):
    """An attempt ends unsuccessfully with this reason (and an exit code when known)."""

    def __init__(self, reason: str, exit_code: int = -1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_code = exit_code


@dataclass
class RunnerSettings:
    node_name: str
    node_ae_title: str
    default_collection: str
    work_dir: Path
    kill_grace: float = 2.0
    keep_work_dirs: bool = False
    may_leave_site: Callable[[str], bool] = lambda _collection: True
    """The node's publish policy: a job on a collection that may not leave the site keeps
    its logs here (a command's output can quote patient data) and tells the catalog where."""
    resolve_study: Callable[[str], str | None] = lambda _reference: None
    """Maps a study reference this node's trigger made back to its StudyInstanceUID."""


class JobRunner:
    def __init__(
        self,
        settings: RunnerSettings,
        registry: StreamRegistry,
        inputs: InputGatherer,
        ingest: IngestService,
        destinations: Mapping[str, Destination],
        send: SendFiles,
        on_stored: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self._registry = registry
        self._inputs = inputs
        self._ingest = ingest
        self._destinations = destinations
        self._send = send
        self._on_stored = on_stored

    def run(self, job: Job, cancel: threading.Event) -> Outcome:
        """Run ``job`` once; ``cancel`` stops it (cancellation, lost lease, shutdown)."""
        ws: Workspace | None = None
        study = job.study_instance_uid
        home = is_study_reference(study) or not self.settings.may_leave_site(self._collection(job))
        try:
            manifest = self._manifest(job)
            route = self._route(manifest, job)
            study = self._study(job)
            ws = Workspace.create(self.settings.work_dir, job.id, job.attempt)
            named = "" if study == job.study_instance_uid else f" ({job.study_instance_uid})"
            _note(
                ws,
                f"job {job.id} attempt {job.attempt}/{job.max_attempts} on node "
                f"{self.settings.node_name}: stream {manifest.name} {manifest.version}, "
                f"study {study}{named}",
            )
            step = time.perf_counter()
            gathered = self._inputs.gather(study, job.collection, ws.input, local_only=home)
            _note(
                ws,
                f"input: {len(gathered.files)} instances ({gathered.local} local, "
                f"{gathered.fetched} fetched from holders) in {_since(step)}",
            )
            own = drop_own_outputs(gathered.files, manifest.name)
            if own:
                _note(ws, f"left out {own} instances this stream derived earlier")
            if cancel.is_set():
                raise AttemptFailed("cancelled")
            result = run_command(
                manifest.argv(),
                ws,
                env=self._env(job, study, manifest, ws),
                time_limit=manifest.time_limit_seconds,
                cancel=cancel,
                kill_grace=self.settings.kill_grace,
            )
            _note(
                ws,
                f"command ended ({result.describe(manifest.time_limit_seconds)}) in "
                f"{result.seconds:.2f} s",
            )
            if not result.succeeded:
                raise AttemptFailed(result.describe(manifest.time_limit_seconds), _code(result))
            series = self._store_outputs(job, manifest, ws)
            if route is not None and series.files:
                self._route_results(ws, route, series.files)
            outcome = Outcome(
                True,
                0,
                "",
                ws.log_tail(),
                tuple(series.series_instance_uids),
                len(series.series_instance_uids),
            )
        except AttemptFailed as exc:
            outcome = self._failed(ws, exc.reason, exc.exit_code)
        except NodeError as exc:
            outcome = self._failed(ws, str(exc), -1)
        except Exception as exc:  # a bug must still end the attempt with a report
            LOG.exception("event=job_attempt_crashed job=%s", job.id)
            outcome = self._failed(ws, f"internal error: {type(exc).__name__}: {exc}", -1)
        if home:
            outcome = self._nothing_identifying(outcome, ws, job, study)
        self._cleanup(ws, outcome)
        return outcome

    def _study(self, job: Job) -> str:
        """The job's StudyInstanceUID, resolving a study reference this node made."""
        if not is_study_reference(job.study_instance_uid):
            return job.study_instance_uid
        found = self.settings.resolve_study(job.study_instance_uid)
        if found is None:
            raise AttemptFailed(
                f"study reference {job.study_instance_uid} is not known on node "
                f"{self.settings.node_name}: only its origin node "
                f"{job.origin_node or '(unknown)'} can resolve it"
            )
        return found

    def _nothing_identifying(
        self, outcome: Outcome, ws: Workspace | None, job: Job, study: str
    ) -> Outcome:
        """The outcome as a collection that stays home may report it: logs kept here,
        derived series counted not named, UIDs in the error masked."""
        error = _mask_uids(outcome.error, study, job.study_instance_uid)
        logs = self._keep_logs_here(ws, job) if ws is not None else error.encode()
        return replace(outcome, error=error, logs=logs, output_series_instance_uids=())

    def _collection(self, job: Job) -> str:
        manifest = self._registry.streams.get(job.stream)
        return (
            job.collection
            or (manifest.collection if manifest is not None else "")
            or self.settings.default_collection
        )

    def _keep_logs_here(self, ws: Workspace, job: Job) -> bytes:
        """Move the attempt's logs out of the work folder (which cleanup may remove) and
        return the note the catalog gets instead of them."""
        kept = self.settings.work_dir / "logs" / f"{ws.root.name}.txt"
        try:
            kept.parent.mkdir(mode=0o700, exist_ok=True)
            shutil.copyfile(ws.log_file, kept)
        except OSError as exc:
            LOG.warning("event=job_logs_not_kept job=%s error=%s", job.id, exc)
        return (
            f"logs kept at node {self.settings.node_name} in {kept}: collection "
            f"{self._collection(job)!r} does not leave the site (nor do the UIDs of its "
            "study and derived series)\n"
        ).encode()

    # -- steps -------------------------------------------------------------------------------
    def _manifest(self, job: Job) -> StreamManifest:
        manifest = self._registry.get(job.stream)
        if manifest is None or not manifest.enabled:
            raise AttemptFailed(
                f"stream {job.stream!r} is not defined (or disabled) on node "
                f"{self.settings.node_name}"
            )
        return manifest

    def _route(self, manifest: StreamManifest, job: Job) -> tuple[str, Destination] | None:
        """Where results go, checked before any work is done."""
        kind = manifest.destination_kind
        if kind == "none":
            return None
        ae = job.reply_ae_title if kind == "sender" else manifest.destination
        if kind == "sender" and not ae:
            raise AttemptFailed("results go to the sender, but the job has no reply AE title")
        where = self._destinations.get(ae)
        if where is None:
            what = "the sender" if kind == "sender" else "the stream's destination"
            raise AttemptFailed(
                f"results go to {what} {ae!r}, which is not a configured destination of node "
                f"{self.settings.node_name} ([dicom.destinations])"
            )
        return ae, where

    def _env(self, job: Job, study: str, manifest: StreamManifest, ws: Workspace) -> dict[str, str]:
        return {
            "GRIDPACS_JOB_ID": job.id,
            "GRIDPACS_ATTEMPT": str(job.attempt),
            "GRIDPACS_STREAM": manifest.name,
            "GRIDPACS_STREAM_VERSION": manifest.version,
            "GRIDPACS_STREAM_DIR": str(manifest.stream_dir.resolve()),
            "GRIDPACS_STUDY_INSTANCE_UID": study,
            "GRIDPACS_NODE": self.settings.node_name,
            "GRIDPACS_WORK_DIR": str(ws.root.resolve()),
            "GRIDPACS_INPUT_DIR": str(ws.input.resolve()),
            "GRIDPACS_OUTPUT_DIR": str(ws.output.resolve()),
            "GRIDPACS_TIME_LIMIT_SECONDS": str(manifest.time_limit_seconds),
            "GRIDPACS_CPUS": f"{manifest.resources.cpus:g}",
            "GRIDPACS_MEMORY_MB": str(manifest.resources.memory_mb),
        }

    def _store_outputs(self, job: Job, manifest: StreamManifest, ws: Workspace) -> DerivedSeries:
        outputs = ws.outputs()
        if not outputs:
            _note(ws, "the command wrote no output files")
            return derive([], SourceStudy.from_files([]), ws.derived, description="")
        step = time.perf_counter()
        source = SourceStudy.from_files(sorted(ws.input.rglob("*.dcm")))
        description = (
            f"{derivation_prefix(manifest.name)}{manifest.version}, job {job.id} "
            f"attempt {job.attempt}"
        )
        series = derive(outputs, source, ws.derived, description=description)
        for path, reason in series.skipped:
            _note(ws, f"skipped output {path.name}: {reason}")
        _note(ws, f"derived series made in {_since(step)}")
        step = time.perf_counter()
        collection = job.collection or manifest.collection or self.settings.default_collection
        for path in series.files:
            self._ingest.store(_request(path, self.settings.node_ae_title), collection=collection)
        if series.files:
            self._on_stored()
        _note(
            ws,
            f"stored {len(series.files)} derived instances in {collection} in {_since(step)}: "
            f"series {', '.join(series.series_instance_uids)}",
        )
        return series

    def _route_results(
        self, ws: Workspace, route: tuple[str, Destination], files: list[Path]
    ) -> None:
        """C-STORE the derived series; one more association if the first one fails (a
        receiver that stalls or drops a connection), then the attempt fails."""
        step = time.perf_counter()
        try:
            sent = self._send(route[0], route[1], files)
        except NodeError as exc:
            _note(ws, f"routing to {route[0]} failed ({exc}); trying once more")
            sent = self._send(route[0], route[1], files)
        _note(ws, f"routed {sent} instances to {route[0]} in {_since(step)}")

    def _failed(self, ws: Workspace | None, reason: str, exit_code: int) -> Outcome:
        if ws is not None:
            _note(ws, f"attempt failed: {reason}")
        return Outcome(False, exit_code, reason, ws.log_tail() if ws else reason.encode())

    def _cleanup(self, ws: Workspace | None, outcome: Outcome) -> None:
        if ws is None or self.settings.keep_work_dirs or not outcome.succeeded:
            return
        shutil.rmtree(ws.root, ignore_errors=True)


_UID_TEXT = re.compile(r"(?<![0-9.])[0-9]+(?:\.[0-9]+){2,}(?![0-9.])")


def _mask_uids(text: str, study: str, known_as: str) -> str:
    """``text`` with the study named as the catalog knows it and any other UID masked.

    UID-shaped: three or more dot-separated numbers, longer than 15 characters or of five
    parts or more, so an IPv4 address (a destination in a routing error) stays readable.
    """
    if study and study != known_as:
        text = text.replace(study, known_as)

    def masked(match: re.Match[str]) -> str:
        value = match.group(0)
        if value == known_as or (len(value) <= 15 and value.count(".") < 4):
            return value
        return "<uid>"

    return _UID_TEXT.sub(masked, text)


def _request(path: Path, node_ae: str) -> StoreRequest:
    data = path.read_bytes()  # read once: the header comes from the same bytes
    ds = dcmread(BytesIO(data), stop_before_pixels=True)
    return StoreRequest(
        data=data,
        calling_ae=node_ae,
        called_ae=node_ae,
        affected_sop_class_uid=str(ds.SOPClassUID),
        affected_sop_instance_uid=str(ds.SOPInstanceUID),
    )


def _code(result: RunResult) -> int:
    return result.exit_code if result.exit_code is not None else -1


def _since(started: float) -> str:
    return f"{time.perf_counter() - started:.2f} s"


def _note(ws: Workspace, text: str) -> None:
    with ws.log_file.open("ab") as fh:
        fh.write(f"gridpacs: {text}\n".encode())
    log_event(LOG, "job_note", workspace=ws.root.name, note=text)
