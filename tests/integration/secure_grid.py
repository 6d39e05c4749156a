"""A grid with mTLS, researcher tokens and retrieve grants, as separate OS processes.

Key material is made with the library the ``gridpacs pki`` / ``gridpacs token`` commands use:
one grid CA, a host certificate per process, a user certificate for the researcher, the token
pepper and the Ed25519 grant key (private half to the catalog, public half to the nodes).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from catalog.security import CertFiles, channel_credentials, init_ca, issue
from catalog.security.grants import GrantKeyFiles, write_grant_key
from catalog.security.tokens import write_pepper
from tests.catalog.processes import free_port, wait_for
from tests.integration.processes import REPO_ROOT, subprocess_env


@dataclass
class GridKeys:
    """Everything secret or public a secure test grid needs."""

    root: Path
    pepper: Path
    grant: GrantKeyFiles
    researcher: CertFiles
    hosts: dict[str, CertFiles] = field(default_factory=dict)

    @classmethod
    def create(cls, root: Path) -> GridKeys:
        init_ca(root / "ca", "testgrid")
        return cls(
            root=root,
            pepper=write_pepper(root / "pepper"),
            grant=write_grant_key(root / "grant"),
            researcher=issue(root / "ca", root / "alice", "alice", roles=("client",)),
        )

    def host(self, name: str) -> CertFiles:
        """A host certificate (OU=host) for 127.0.0.1, kept in its own folder."""
        if name not in self.hosts:
            self.hosts[name] = issue(self.root / "ca", self.root / f"host-{name}", "127.0.0.1")
        return self.hosts[name]

    def researcher_args(self) -> list[str]:
        r = self.researcher
        return ["--ca", str(r.ca_cert), "--cert", str(r.cert), "--key", str(r.key)]


class SecureReplica:
    """``gridpacs catalog serve --config`` with mTLS, tokens, audit and a grant key."""

    def __init__(
        self,
        name: str,
        keys: GridKeys,
        workdir: Path,
        *,
        identified: tuple[str, ...] = (),
        crl: Path | None = None,
    ) -> None:
        self.name = name
        self.port = free_port()
        self.db_url = f"sqlite:///{workdir / f'{name}.sqlite'}"
        self.log_path = workdir / f"{name}.log"
        self.host = keys.host(name)
        self.config = workdir / f"{name}.toml"
        self.config.write_text(
            f'name = "{name}"\nport = {self.port}\ndb_url = "{self.db_url}"\n'
            f"[replication]\ninterval_s = 0.2\n"
            f'[tls]\ncert = "{self.host.cert}"\nkey = "{self.host.key}"\n'
            f'ca = "{self.host.ca_cert}"\n'
            + (f'crl = "{crl}"\n' if crl is not None else "")
            + f'[security]\npepper_file = "{keys.pepper}"\n'
            f'grant_key_file = "{keys.grant.private}"\n'
            f"identified_collections = {list(identified)!r}\n".replace("'", '"')
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> SecureReplica:
        argv = [sys.executable, "-m", "gridpacs", "catalog", "serve", "--config", str(self.config)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, cwd=REPO_ROOT, env=subprocess_env(), stdout=log, stderr=log
            )
        wait_for(self._serving, 30, f"replica {self.name} to serve")
        return self

    def _serving(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"replica {self.name} exited: {self.log_path.read_text()[-2000:]}")
        creds = channel_credentials(self.host.cert, self.host.key, self.host.ca_cert)
        try:
            with grpc.secure_channel(self.address, creds) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=0.5
                )
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
        except grpc.RpcError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def node_config(
    path: Path,
    keys: GridKeys,
    name: str,
    catalogs: list[str],
    *,
    publish_identified: bool = False,
    routes: dict[str, str] | None = None,
    crl: Path | None = None,
    peer_port: int = 0,
) -> Path:
    """A node TOML: mTLS to the catalog and peers, trusting the catalog's grant key."""
    host = keys.host(name)
    addresses = ", ".join(f'"{a}"' for a in catalogs)
    text = (
        f'name = "{name}"\n'
        + "".join(
            f'[[routes]]\nae_title = "{ae}"\ncollection = "{collection}"\n'
            for ae, collection in (routes or {}).items()
        )
        + f"[catalog]\naddresses = [{addresses}]\n"
        f'cert_file = "{host.cert}"\nkey_file = "{host.key}"\nca_file = "{host.ca_cert}"\n'
        f'grant_public_keys = ["{keys.grant.public}"]\n'
        f"publish_identified = {'true' if publish_identified else 'false'}\n"
        "publish_interval = 0.2\n"
        f"peer_port = {peer_port}\n" + (f'crl_file = "{crl}"\n' if crl is not None else "")
    )
    path.write_text(text)
    return path


def health_status(address: str, files: CertFiles) -> grpc.StatusCode:
    """The gRPC status of a health check to ``address`` presenting ``files``' certificate."""
    creds = channel_credentials(files.cert, files.key, files.ca_cert)
    with grpc.secure_channel(address, creds) as channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK
