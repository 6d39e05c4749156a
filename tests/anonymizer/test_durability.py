"""Group commit: outputs are durable before they are reported, never partial at their name.

Real processes, real files: the CLI is killed with SIGKILL mid-run, traced with strace
(fsync before rename, directory fsync before the report), and made to fail for real
(a non-empty directory in the way of a rename, a file size limit while writing).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom import dcmread

from anonymizer import Deidentifier, generate_secret, load_profile
from anonymizer.batch import Settings, _chunks, run_batch
from anonymizer.files import GroupCommit, anonymize_file, anonymize_tree, list_inputs
from anonymizer.uncached import file_system_type
from tests.anonymizer.conftest import SITE_A
from tests.anonymizer.test_cli import ROOT, _gridpacs
from tests.factories import StudySpec, write_study

pytestmark = pytest.mark.timeout(180)

STRACE = shutil.which("strace") or "/usr/bin/strace"


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "site.secret"
    generate_secret(path)
    return path


def _corpus(directory: Path, studies: int, per_study: int, size: int = 64) -> Path:
    for n in range(studies):
        study = directory / f"S{n:03d}"
        study.mkdir(parents=True)
        spec = StudySpec(patient_id=f"MRN-{n % 5}", patient_name=f"DOE^P{n % 5}")
        write_study(str(study), per_study, spec, rows=size, columns=size)
    return directory


def _contents(directory: Path) -> dict[str, bytes]:
    """The outputs at their final names (hidden temporary files left out)."""
    return {
        p.name: p.read_bytes()
        for p in sorted(directory.iterdir())
        if p.is_file() and not p.name.startswith(".")
    }


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize(("size", "studies"), [(256, 40), (512, 20)])
@pytest.mark.parametrize("jobs", [1, 2])
def test_kill_9_mid_run_leaves_only_complete_outputs(
    tmp_path: Path, secret: Path, jobs: int, size: int, studies: int
) -> None:
    """SIGKILL while outputs are being committed: every name present holds the complete
    file (byte-identical to an uninterrupted run); only hidden temporary files may remain
    (none where outputs are unnamed files until their commit). 400 files of ~130 kB or 200
    of ~0.5 MB."""
    source = _corpus(tmp_path / "in", studies, 10, size=size)
    ref = tmp_path / "ref"
    done = _gridpacs("anonymize", str(source), str(ref), "--secret-file", str(secret),
                     "--jobs", str(jobs), "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    reference = _contents(ref)
    assert len(reference) == studies * 10

    # A run whose commits all land between two polls (a loaded machine) proves nothing
    # about a kill mid-commit, though every name it left is still checked: tried again.
    for attempt in range(3):
        out = tmp_path / f"out-{attempt}"
        final = _kill_once(source, out, secret, jobs)
        for name in final:
            data = (out / name).read_bytes()
            assert data == reference[name], f"{name} is not the complete output"
            assert dcmread(out / name).PatientID != ""
        names = os.listdir(out)
        assert all(re.fullmatch(r"\..+\.part", n) for n in names if n.startswith("."))
        if 0 < len(final) < len(reference):
            return
    pytest.fail(f"never killed mid-commit in 3 runs (last: {len(final)} of {len(reference)})")


def _kill_once(source: Path, out: Path, secret: Path, jobs: int) -> list[str]:
    """Start an anonymize run, SIGKILL it as soon as a first output has its name, and
    return the names it left (hidden temporary files aside)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "gridpacs", "anonymize", str(source), str(out),
               "--secret-file", str(secret), "--jobs", str(jobs), "--json"]  # fmt: skip
    proc = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.is_dir() and any(not n.startswith(".") for n in os.listdir(out)):
                break  # the first commit is renaming outputs into place: kill it now
            time.sleep(0.001)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    return sorted(n for n in os.listdir(out) if not n.startswith("."))


def _trace(log: Path, out: Path) -> list[tuple[str, str]]:
    """In order: ("data", "") for a write of an output's bytes, ("direct", "") for O_DIRECT
    set on a file, ("syncfs", ""), ("fsync",
    path of its descriptor), ("publish", name) for an output put at its name in ``out`` (a
    link of an unnamed file or a rename, at its start), ("report", "") for a write to
    stdout."""
    simple = [
        ("data", r"\b(writev|copy_file_range|pwrite64)\(\d+<" + re.escape(str(out))),
        ("direct", r"\bfcntl\(\d+<[^>]*>(?:\(deleted\))?, F_SETFL, [A-Z_|]*O_DIRECT"),
        ("report", r"\bwrite\(1<"),
    ]
    events = []
    pending: dict[str, str] = {}  # tid -> fsync/syncfs path while unfinished
    for line in log.read_text().splitlines():
        tid = line.split(" ", 1)[0]
        if m := re.search(r"\b(fsync|syncfs)\(\d+<([^>]*)>\) += 0", line):
            events.append(("fsync", m.group(2)) if m.group(1) == "fsync" else ("syncfs", ""))
        elif m := re.search(r"\b(fsync|syncfs)\(\d+<([^>]*)> <unfinished", line):
            pending[tid] = m.group(1) + " " + m.group(2)
        elif m := re.search(r"<\.\.\. (fsync|syncfs) resumed>.*\) += 0", line):
            call, path = pending.pop(tid).split(" ", 1)
            events.append(("fsync", path) if call == "fsync" else ("syncfs", ""))
        elif "= -1" in line or "resumed>" in line:
            continue
        elif m := re.search(rf"link(?:at)?\(.*\d+<{re.escape(str(out))}>, \"([^\"/]+)\"", line):
            events.append(("publish", m.group(1)))
        elif m := re.search(r"rename(?:at2?)?\(.*?\"[^\"]+\".*?\"([^\"]+)\"", line):
            if Path(m.group(1)).parent == out:
                events.append(("publish", Path(m.group(1)).name))
        else:
            events.extend((kind, "") for kind, pattern in simple if re.search(pattern, line))
    return events


@pytest.mark.parametrize("size", [64, 512])
@pytest.mark.parametrize("jobs", [1, 2])
def test_every_output_is_written_out_before_its_name_and_its_directory_before_the_report(
    tmp_path: Path, secret: Path, jobs: int, size: int
) -> None:
    """Each output is written with O_DIRECT (CT-size, on a disk) or through the page cache
    (the rest); a batch's outputs get
    their names only after a ``syncfs`` (or their own fsyncs) that came after their bytes,
    and the directory is fsynced after the last name and before the report."""
    source = _corpus(tmp_path / "in", 3, 10, size=size)
    out = tmp_path / "out" / "nested"  # two new directories: their parents need an fsync
    log = tmp_path / "strace.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [STRACE, "-f", "-y", "-qq", "-e",
               "trace=fsync,syncfs,rename,renameat,renameat2,link,linkat,write,writev,"
               "copy_file_range,pwrite64,fcntl",
               "-e", "signal=none", "-o", str(log), sys.executable, "-m", "gridpacs",
               "anonymize", str(source), str(out), "--secret-file", str(secret),
               "--jobs", str(jobs), "--json"]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["written"] == 30
    events = _trace(log, out)
    report = next(i for i, (kind, _) in enumerate(events) if kind == "report")
    published = [(i, name) for i, (kind, name) in enumerate(events) if kind == "publish"]
    assert len(published) == 30 and all(i < report for i, _ in published)
    assert {name for _, name in published} == set(_contents(out))
    direct = sum(1 for kind, _ in events if kind == "direct")
    if size == 512 and _on_disk(tmp_path):  # CT-size on a disk: around the page cache
        assert direct == 30, "every CT-size output written with O_DIRECT"
    else:
        assert direct == 0
    for i, _name in published:
        synced = max(j for j, (kind, _) in enumerate(events[:i]) if kind in ("syncfs", "fsync"))
        if jobs == 1:  # one process: nothing else writes outputs meanwhile
            assert all(kind != "data" for kind, _ in events[synced:i]), "named before written out"
    last = max(i for i, _ in published)
    assert ("fsync", str(out)) in events[last:report]
    if jobs == 1:  # the linked files' link counts written out before the directory's fsync
        directory = events.index(("fsync", str(out)), last)
        assert ("syncfs", "") in events[last:directory]
    first = min(i for i, _ in published)  # the new directories, made before any output
    assert {("fsync", str(out.parent)), ("fsync", str(tmp_path))} <= set(events[:first])
    # Grouped: one directory fsync per commit; a worker's commits span its chunks, so 30
    # files (under one batch) take one commit per process, not one per chunk of work.
    assert len(_chunks(list_inputs(source), jobs)) > jobs
    assert sum(1 for event in events if event == ("fsync", str(out))) == jobs


def _on_disk(path: Path) -> bool:
    """True when ``path`` is on a file system the CLI writes large outputs to directly."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return file_system_type(fd) in (0xEF53, 0x58465342)  # ext4, XFS
    finally:
        os.close(fd)


def test_a_rename_that_fails_at_commit_is_a_failure_and_leaves_nothing(
    tmp_path: Path, secret: Path
) -> None:
    source = _corpus(tmp_path / "in", 1, 6)
    inputs = list_inputs(source)
    settings = Settings(secret)
    ref = run_batch(settings, inputs, tmp_path / "ref")
    names = [o.target.name for o in ref if o.target is not None]
    out = tmp_path / "out"
    (out / names[2] / "inside").mkdir(parents=True)  # a non-empty directory in the way

    outcomes = run_batch(settings, inputs, out)

    assert [o.ok for o in outcomes] == [True, True, False, True, True, True]
    assert outcomes[2].error_kind == "OSError" and outcomes[2].target is None
    assert "cannot write" in (outcomes[2].error or "")
    assert _leftovers(out) == []
    assert (out / names[2] / "inside").is_dir()
    ok = {n: b for n, b in _contents(tmp_path / "ref").items() if n != names[2]}
    assert _contents(out) == ok


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


@pytest.mark.parametrize("large", [256, 512])
@pytest.mark.parametrize("jobs", [1, 2])
def test_a_write_that_fails_while_staging_leaves_no_temporary_file(
    tmp_path: Path, secret: Path, jobs: int, large: int
) -> None:
    """Under a 64 KiB file size limit the 256x256 or 512x512 outputs fail to write (EFBIG,
    for real, in the writer threads); the small
    ones in the same batches are committed."""
    source = tmp_path / "in"
    _corpus(source / "small", 2, 10, size=64)
    _corpus(source / "large", 1, 5, size=large)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "gridpacs", "anonymize", str(source), str(out),
         "--secret-file", str(secret), "--jobs", str(jobs), "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        preexec_fn=_limit_file_size,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert (report["written"], report["failed"]) == (20, 5)
    failed = [r for r in report["results"] if r["error"]]
    assert all("/large/" in r["source"] and r["error_kind"] == "OSError" for r in failed)
    assert all("File too large" in r["error"] for r in failed)
    assert _leftovers(out) == []
    assert len(_contents(out)) == 20


def test_outcomes_are_yielded_in_input_order_after_their_group_is_durable(
    tmp_path: Path,
) -> None:
    source = _corpus(tmp_path / "in", 1, 10)
    inputs = list_inputs(source)
    inputs.insert(4, tmp_path / "missing.dcm")
    deid = Deidentifier(load_profile(), SITE_A)
    out = tmp_path / "out"
    seen = []
    with GroupCommit(max_files=3) as group:
        for outcome in anonymize_tree(deid, inputs, out, group):
            seen.append(outcome.source)
            assert outcome.ok == (outcome.source.name != "missing.dcm")
            if outcome.ok:
                assert outcome.target is not None and outcome.target.is_file()
            # Groups of 3 staged files are put at their names as a whole, then yielded; the
            # next group may be committing meanwhile (in the background), never a third.
            named = len(_contents(out))
            written = sum(1 for n in seen if n.name != "missing.dcm")
            batches = min(10, -(-written // 3) * 3)  # the groups yielded from, whole
            assert batches <= named <= min(10, batches + 3) and _leftovers(out) == []
    assert seen == inputs
    assert len(_contents(out)) == 10 and _leftovers(out) == []


def test_what_is_staged_and_not_committed_is_removed(tmp_path: Path) -> None:
    inputs = list_inputs(_corpus(tmp_path / "in", 1, 3))
    deid = Deidentifier(load_profile(), SITE_A)
    out = tmp_path / "out"
    with GroupCommit() as group:
        for source in inputs:
            group.hold(anonymize_file(deid, source, out, group.writer(source)))
        group.direct.close()  # every staged file written
        assert _contents(out) == {}  # written, not committed: at no name
        assert len(_held_outputs(out)) == 3
        held = sorted(os.fstat(fd).st_size for fd in _held_outputs(out))
        assert held == sorted(len(deid.deidentify_part10(p.read_bytes()).data) for p in inputs)
    assert _leftovers(out) == [] and _contents(out) == {} and _held_outputs(out) == []


def _held_outputs(directory: Path) -> list[int]:
    """Descriptors of this process on staged outputs in ``directory``: unnamed files
    ("#<inode> (deleted)") or hidden temporary files."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if Path(target).parent == directory and Path(target).name.startswith(("#", ".")):
            held.append(int(fd))
    return held


def test_a_batch_commits_in_the_background_while_the_next_is_staged(tmp_path: Path) -> None:
    """commit_in_background hands back the batch committed before (durable at its names);
    wait() the last one; a batch left committing when the run is abandoned finishes, whole."""
    inputs = list_inputs(_corpus(tmp_path / "in", 1, 9))
    deid = Deidentifier(load_profile(), SITE_A)
    out = tmp_path / "out"

    def stage(group: GroupCommit, sources: list[Path]) -> None:
        for source in sources:
            group.hold(anonymize_file(deid, source, out, group.writer(source)))

    with GroupCommit() as group:
        stage(group, inputs[:3])
        assert group.commit_in_background() == []  # nothing committed before it
        stage(group, inputs[3:6])
        first = group.commit_in_background()
        assert [o.source for o in first] == inputs[:3]
        assert all(o.target is not None and o.target.is_file() for o in first)
        second = group.wait()
        assert [o.source for o in second] == inputs[3:6] and group.wait() == []
        stage(group, inputs[6:])
        assert group.commit_in_background() == []
    # Left committing at close: it finishes, every output complete at its name.
    assert len(_contents(out)) == 9 and _leftovers(out) == []
    assert _contents(out) == _contents(_reference(tmp_path, inputs))


def _reference(tmp_path: Path, inputs: list[Path]) -> Path:
    ref = tmp_path / "ref"
    outcomes = run_batch(Settings(_secret_of(SITE_A, tmp_path)), inputs, ref)
    assert all(o.ok for o in outcomes)
    return ref


def _secret_of(secret: bytes, tmp_path: Path) -> Path:
    path = tmp_path / "site-a.secret"
    path.write_text(secret.hex())
    path.chmod(0o600)  # load_secret refuses anything wider
    return path


def test_an_output_already_at_its_name_is_replaced(tmp_path: Path, secret: Path) -> None:
    """An unnamed file cannot be linked over a name: it goes through a temporary name and a
    rename, and nothing is left beside it."""
    inputs = list_inputs(_corpus(tmp_path / "in", 1, 4))
    settings = Settings(secret)
    ref = tmp_path / "ref"
    assert all(o.ok for o in run_batch(settings, inputs, ref))
    out = tmp_path / "out"
    out.mkdir()
    for name in _contents(ref):
        (out / name).write_bytes(b"an older output")
    outcomes = run_batch(settings, inputs, out)
    assert all(o.ok for o in outcomes)
    assert _contents(out) == _contents(ref) and _leftovers(out) == []


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def test_a_killed_worker_fails_only_the_files_it_held_and_the_others_finish(
    tmp_path: Path, secret: Path
) -> None:
    """``--jobs 2``: both workers are stopped as soon as they exist; once the parent has
    sent them their first chunks (it waits in ``poll``), one is killed with SIGKILL and the
    other let go. The run goes on without the dead one: the files the dead
    worker held and had not reported are listed failures (``WorkerFailed``, with the
    signal), every other file is written by the survivor, byte-identical to an
    uninterrupted run, and nothing else is left in the output folder."""
    source = _corpus(tmp_path / "in", 60, 10)  # 600 small files
    inputs = list_inputs(source)
    ref = tmp_path / "ref"
    assert all(o.ok for o in run_batch(Settings(secret), inputs, ref))
    reference = _contents(ref)

    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "gridpacs", "anonymize", str(source), str(out),
               "--secret-file", str(secret), "--jobs", "2", "--json"]  # fmt: skip
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        workers: list[int] = []
        while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
            workers = _children(proc.pid)
            for pid in workers:
                os.kill(pid, signal.SIGSTOP)
        assert len(workers) == 2, "the two workers never appeared"
        # The parent waits in poll() once it has sent both workers their first chunks.
        while "poll" not in Path(f"/proc/{proc.pid}/wchan").read_text():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.001)
        os.kill(workers[0], signal.SIGKILL)
        os.kill(workers[1], signal.SIGCONT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert proc.returncode == 1, stderr
    report = json.loads(stdout)
    failed = [r for r in report["results"] if r["error"]]
    assert report["files"] == len(inputs) == report["written"] + report["failed"]
    assert failed and all(r["error_kind"] == "WorkerFailed" for r in failed)
    assert all("killed by signal 9" in r["error"] for r in failed)
    assert report["written"] > len(inputs) // 2, "the surviving worker took the rest"
    written = _contents(out)
    assert len(written) == report["written"]
    assert all(reference[name] == data for name, data in written.items())
    assert sorted(os.listdir(out)) == sorted(written)  # no temporary file left either
