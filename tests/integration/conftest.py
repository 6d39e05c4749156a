"""Fixtures of the integration suite: nodes, a DCMTK storescp, logs of failing tests.

Nodes and peers are separate OS processes on 127.0.0.1; every one started here is stopped in
teardown (SIGTERM, then SIGKILL), and the tail of its log is attached to a failing report.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.integration.processes import (
    DCMTK_TOOLS,
    NODE_AE,
    PROCESSES,
    Node,
    NodeFactory,
    StoreSCP,
    dcmtk,
    free_port,
)

_TEST_STARTED_AT: dict[str, float] = {}


@pytest.fixture(scope="session", autouse=True)
def _dcmtk_present() -> None:
    """Every integration test needs DCMTK: fail early and loudly, never skip."""
    for tool in DCMTK_TOOLS:
        dcmtk(tool)


def _make_node(
    directory: Path,
    name: str,
    *,
    data_dir: Path | None = None,
    ae_title: str | None = NODE_AE,
    args: Sequence[str] = (),
    start: bool = True,
    port: int | None = None,
    config_file: Path | None = None,
) -> Node:
    node = Node(
        name=name,
        log_path=directory / f"{name}.log",
        data_dir=data_dir or directory / f"{name}-data",
        port=port or free_port(),
        ae_title=ae_title,
        extra_args=list(args),
        config_file=config_file,
    )
    if start:
        node.start()
    return node


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[NodeFactory]:
    """Start nodes for one test; every one is stopped (SIGTERM, then SIGKILL) afterwards."""
    nodes: list[Node] = []

    def factory(**kwargs: object) -> Node:
        node = _make_node(tmp_path, f"node{len(nodes) + 1}", **kwargs)  # type: ignore[arg-type]
        nodes.append(node)
        return node

    yield factory
    for node in nodes:
        node.terminate()


@pytest.fixture(scope="module")
def module_node_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeFactory]:
    """Like ``node_factory`` for nodes shared by the tests of one module."""
    directory = tmp_path_factory.mktemp("nodes")
    nodes: list[Node] = []

    def factory(**kwargs: object) -> Node:
        node = _make_node(directory, f"mnode{len(nodes) + 1}", **kwargs)  # type: ignore[arg-type]
        nodes.append(node)
        return node

    yield factory
    for node in nodes:
        node.terminate()


@pytest.fixture(scope="module")
def storescp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreSCP]:
    """A DCMTK storescp on a free port, to be named as a node's ``--destination``."""
    directory = tmp_path_factory.mktemp("storescp")
    scp = StoreSCP(
        name="storescp",
        log_path=directory / "storescp.log",
        port=free_port(),
        out_dir=directory / "received",
    ).start()
    yield scp
    scp.terminate()


# --------------------------------------------------------------------------------------------
# Logs of the processes in the report of a failing test


def pytest_runtest_setup(item: pytest.Item) -> None:
    _TEST_STARTED_AT[item.nodeid] = time.time()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if not report.failed or report.when == "teardown":
        return
    started = _TEST_STARTED_AT.get(item.nodeid, 0.0)
    for proc in PROCESSES:
        if proc.stopped_at is not None and proc.stopped_at < started:
            continue
        tail = "\n".join(proc.log_text().splitlines()[-80:])
        report.sections.append((f"log of {proc.name} ({proc.log_path})", tail))
