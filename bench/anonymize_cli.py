"""The ``cli`` sides of ``bench/anonymize.py``, in a process of their own, as light as the CLI's.

``gridpacs anonymize`` forks its ``--jobs`` workers from a process that has imported the
anonymizer and little else; forked from the benchmark's own process (deid imported, its
pipeline run, corpora built) they would copy a heap several times larger at every fork and
exit. This process imports what the CLI imports and serves one request per stdin line
(JSON: ``secret``, ``files``, ``out``, ``jobs``), answering a JSON line with the run's wall
and CPU seconds (its own and its reaped workers') and its failures.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anonymizer.batch import Settings, run_batch


def _cpu() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def main() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        files = [Path(f) for f in request["files"]]
        started, cpu_started = time.perf_counter(), _cpu()
        outcomes = run_batch(Settings(Path(request["secret"])), files, Path(request["out"]),
                             request["jobs"])  # fmt: skip
        wall, cpu = time.perf_counter() - started, _cpu() - cpu_started
        failed = [o.error for o in outcomes if not o.ok]
        print(json.dumps({"wall": wall, "cpu": cpu, "failed": failed[:1], "n_failed": len(failed)}),
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
