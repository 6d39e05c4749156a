"""A small grid for replication tests: catalog replicas and nodes as separate processes,
configured by TOML files the way an operator writes them, plus a network namespace to cut
one node off the others."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from catalog import GrpcCatalogClient, QueryFilter
from tests.catalog.processes import ReplicaProcess
from tests.factories import StudySpec, write_study
from tests.integration.processes import Node, dcmtk, free_port, run_dcmtk, subprocess_env

NODE_HOST = "127.0.0.1"


class NetNs:
    """A network namespace joined to the host by a veth pair; :meth:`cut` / :meth:`heal`
    take the host end down and up, so nothing crosses while it is cut."""

    def __init__(self, tag: str) -> None:
        self.name = f"gprepl{tag}"
        self.host_if, self.ns_if = f"gph{tag}", f"gpn{tag}"
        self.host_ip = self.ns_ip = ""

    def _ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)

    def create(self) -> NetNs:
        self.destroy()
        self._ip("netns", "add", self.name)
        self._ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        self._ip("link", "set", self.ns_if, "netns", self.name)
        seed = os.getpid()
        for attempt in range(20):  # a /30 nobody else on this machine uses
            third = (seed + attempt * 7) % 250 + 1
            host, ns = f"10.213.{third}.1", f"10.213.{third}.2"
            taken = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
            if f" {host}/" in taken:
                continue
            self._ip("addr", "add", f"{host}/30", "dev", self.host_if)
            self.host_ip, self.ns_ip = host, ns
            break
        else:
            raise RuntimeError("no free 10.213.x.0/30 for the test namespace")
        self._ip("link", "set", self.host_if, "up")
        self.exec_ip("addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
        self.exec_ip("link", "set", self.ns_if, "up")
        self.exec_ip("link", "set", "lo", "up")
        return self

    def exec_ip(self, *args: str) -> None:
        self._ip("netns", "exec", self.name, "ip", *args)

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def cut(self) -> None:
        self._ip("link", "set", self.host_if, "down")

    def heal(self) -> None:
        self._ip("link", "set", self.host_if, "up")

    def destroy(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, timeout=20)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=20)


@dataclass
class NsNode(Node):
    """A node started inside a network namespace."""

    netns: NetNs | None = None

    def argv(self) -> list[str]:
        assert self.netns is not None
        return [*self.netns.prefix(), *super().argv()]


@dataclass
class Grid:
    """Two catalog replicas pulling each other and nodes configured to use both."""

    workdir: Path
    policy: str
    replicas: list[ReplicaProcess] = field(default_factory=list)
    nodes: dict[str, Node] = field(default_factory=dict)
    listen_host: str = "127.0.0.1"

    def start_catalog(self) -> None:
        config = self.workdir / "catalog.toml"
        config.write_text(f'listen_host = "{self.listen_host}"\n{self.policy}')
        first, second = ReplicaProcess("c1", self.workdir), ReplicaProcess("c2", self.workdir)
        first.config = second.config = config
        first.peers = {"c2": second.address}
        second.peers = {"c1": first.address}
        self.replicas = [first, second]
        for replica in self.replicas:
            replica.start(wait=False)
        for replica in self.replicas:
            replica.wait_serving()

    def catalog_addresses(self, host: str = "127.0.0.1") -> list[str]:
        return [f"{host}:{r.port}" for r in self.replicas]

    def add_node(
        self,
        name: str,
        *,
        publish_identified: bool = True,
        peer_host: str = NODE_HOST,
        catalog_host: str = "127.0.0.1",
        netns: NetNs | None = None,
        start: bool = True,
        reverse_catalogs: bool = False,
        dicom_extra: str = "",
    ) -> Node:
        port = free_port()
        data_dir = self.workdir / f"{name}-data"
        addresses = self.catalog_addresses(catalog_host)
        if reverse_catalogs:
            addresses.reverse()
        config = self.workdir / f"{name}.toml"
        config.write_text(
            f'name = "{name}"\ndata_dir = "{data_dir}"\n'
            f'[dicom]\nae_title = "{name.upper()}"\nhost = "{NODE_HOST}"\nport = {port}\n'
            f"{dicom_extra}"
            f"[catalog]\naddresses = {addresses!r}\ninsecure = true\n"
            f"publish_identified = {str(publish_identified).lower()}\n"
            f'peer_host = "{peer_host}"\npublish_interval = 0.2\ntimeout = 2.0\n'
            "[catalog.replication]\ninterval = 0.5\nconcurrency = 4\nmax_backoff = 2.0\n"
        )
        kwargs = dict(
            name=name,
            log_path=self.workdir / f"{name}.log",
            data_dir=data_dir,
            port=port,
            ae_title=name.upper(),
            config_file=config,
        )
        node: Node = NsNode(**kwargs, netns=netns) if netns else Node(**kwargs)  # type: ignore[arg-type]
        self.nodes[name] = node
        if start:
            node.start()
        return node

    def holders(self, patient_id: str, replica: int = 0) -> dict[str, set[str]]:
        """SOP Instance UID -> nodes holding it, as one replica sees it."""
        with GrpcCatalogClient([self.replicas[replica].address], timeout=10) as client:
            found = client.query_instances(QueryFilter(patient_id=patient_id))
            return {m.sop_instance_uid: {h.node for h in m.holders} for m in found}

    def mark(self, node: str, replica: int = 0) -> int:
        """The replica's high-water mark of ``node`` (what it applied of its changes)."""
        with GrpcCatalogClient([self.replicas[replica].address], timeout=10) as client:
            return client.get_watermarks().marks.get(node, 0)

    def start_nodes(self, *nodes: Node) -> None:
        """Start nodes side by side (each takes seconds of imports on a loaded machine)."""
        with ThreadPoolExecutor(len(nodes)) as pool:
            list(pool.map(lambda n: n.start(), nodes))

    def stop(self) -> None:
        with ThreadPoolExecutor(len(self.nodes) + len(self.replicas) or 1) as pool:
            list(pool.map(lambda n: n.terminate(), self.nodes.values()))
            list(pool.map(lambda r: r.stop(), self.replicas))


def store_study(
    node: Node, directory: Path, count: int, patient_id: str, *, prefix: Sequence[str] = ()
) -> list[str]:
    """storescu ``count`` small instances to ``node``; the acknowledged SOP Instance UIDs."""
    directory.mkdir(parents=True, exist_ok=True)
    datasets = write_study(str(directory), count, StudySpec(patient_id=patient_id), rows=8,
                           columns=8)  # fmt: skip
    argv = [*prefix, dcmtk("storescu"), "-aec", node.called_ae, NODE_HOST, str(node.port),
            *sorted(str(p) for p in directory.glob("*.dcm"))]  # fmt: skip
    if prefix:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                                env=subprocess_env())  # fmt: skip
    else:
        result = run_dcmtk("storescu", *argv[1:])
    assert result.returncode == 0, result.stderr[-2000:]
    return [str(ds.SOPInstanceUID) for ds in datasets]
