"""Catalog replicas as separate OS processes, started through the CLI a user runs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from catalog.client import GrpcCatalogClient
from catalog.records import QueryFilter

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class ReplicaProcess:
    """``python -m gridpacs catalog serve`` on a free port with a SQLite file."""

    def __init__(self, name: str, workdir: Path, *, port: int | None = None) -> None:
        self.name = name
        self.port = port or free_port()
        self.db_url = f"sqlite:///{workdir / f'{name}.sqlite'}"
        self.log_path = workdir / f"{name}.log"
        self.peers: dict[str, str] = {}
        self.config: Path | None = None
        """A TOML file for what the command line cannot say (e.g. the ``[jobs]`` timings)."""
        self.extra_args: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0, *, wait: bool = True) -> None:
        args = [
            sys.executable,
            "-m",
            "gridpacs",
            "catalog",
            "serve",
            "--name",
            self.name,
            "--port",
            str(self.port),
            "--db-url",
            self.db_url,
            "--insecure",
        ]
        for peer, address in self.peers.items():
            args += ["--peer", f"{peer}={address}"]
        if self.config is not None:
            args += ["--config", str(self.config)]
        args += self.extra_args
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=log)
        if wait:
            self.wait_serving(timeout)

    def wait_serving(self, timeout: float = 20.0) -> None:
        wait_for(self.serving, timeout, f"replica {self.name} to serve")

    def serving(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"replica {self.name} exited: {self.log_path.read_text()[-2000:]}")
        try:
            with grpc.insecure_channel(self.address) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=0.5
                )
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
        except grpc.RpcError:
            return False

    def signal(self, signum: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        """SIGCONT (in case it is stopped), SIGTERM, then SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def contents(address: str) -> dict[str, object]:
    """A replica's watermarks, change log and instances, compared across replicas."""
    with GrpcCatalogClient([address], timeout=5) as client:
        marks = client.get_watermarks().marks
        log = {o: list(client.pull_changes(o, 0, 50_000)) for o in sorted(marks)}
        instances = sorted(
            (m.sop_instance_uid, m.holders, sorted(m.attributes.items(), key=str))
            for m in client.query_instances(QueryFilter())
        )
    return {"marks": marks, "log": log, "instances": instances}
