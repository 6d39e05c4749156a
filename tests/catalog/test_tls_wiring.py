"""Replicas with mTLS and authentication on: hosts publish and replicate, researchers query."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from catalog.app import CatalogApp, build_app
from catalog.client import GrpcCatalogClient
from catalog.config import CatalogConfig, PeerConfig, SecurityConfig, TlsConfig
from catalog.errors import CatalogRejected, CatalogUnavailable
from catalog.records import QueryFilter
from catalog.security import TokenStore, channel_credentials, init_ca, issue, load_pepper
from catalog.security.tokens import write_pepper
from tests.catalog.builders import Outbox, StudyBuilder
from tests.catalog.processes import free_port

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def grid(tmp_path: Path) -> Iterator[tuple[CatalogApp, CatalogApp, Path]]:
    init_ca(tmp_path / "ca", "testgrid")
    pepper = write_pepper(tmp_path / "pepper")
    ports = {"a": free_port(), "b": free_port()}
    apps = {}
    for name, other in (("a", "b"), ("b", "a")):
        files = issue(tmp_path / "ca", tmp_path / name, "127.0.0.1")
        apps[name] = build_app(
            CatalogConfig(
                name=f"cat-{name}",
                port=ports[name],
                db_url=f"sqlite:///{tmp_path / name}.sqlite",
                peers=(PeerConfig(name=f"cat-{other}", address=f"127.0.0.1:{ports[other]}"),),
                tls=TlsConfig(cert=files.cert, key=files.key, ca=files.ca_cert),
                security=SecurityConfig(pepper_file=pepper),
                replication={"interval_s": 0.1},  # type: ignore[arg-type]
            )
        )
    for app in apps.values():
        app.start()
    try:
        yield apps["a"], apps["b"], tmp_path
    finally:
        for app in apps.values():
            app.stop(grace=0)


def test_hosts_replicate_over_mtls_and_researchers_need_tokens(
    grid: tuple[CatalogApp, CatalogApp, Path],
) -> None:
    a, b, tmp = grid
    node = issue(tmp / "ca", tmp / "node", "127.0.0.1")
    host_creds = channel_credentials(node.cert, node.key, node.ca_cert)
    with GrpcCatalogClient([f"127.0.0.1:{a.port}"], credentials=host_creds) as publisher:
        publisher.publish_changes("site-a", Outbox("site-a").added(StudyBuilder().instances(4)))
    deadline = time.monotonic() + 15
    while b.service.high_water_mark("site-a") < 4:
        assert time.monotonic() < deadline, "b did not replicate from a over mTLS"
        time.sleep(0.05)

    no_cert = channel_credentials(None, None, node.ca_cert)
    stranger = GrpcCatalogClient([f"127.0.0.1:{b.port}"], credentials=no_cert, timeout=2)
    with stranger, pytest.raises(CatalogUnavailable):  # the handshake wants a client cert
        stranger.get_watermarks()

    user = issue(tmp / "ca", tmp / "alice", "alice", roles=("client",))
    user_creds = channel_credentials(user.cert, user.key, user.ca_cert)
    assert b.config.security is not None
    token = TokenStore(b.engine, load_pepper(b.config.security.pepper_file))
    secret = token.create("alice", {"clinical": "reader"}, None).plaintext
    user_only = GrpcCatalogClient([f"127.0.0.1:{b.port}"], credentials=user_creds)
    with user_only, pytest.raises(CatalogRejected):  # a user certificate is no host certificate
        user_only.publish_changes("site-a", [])
    address = [f"127.0.0.1:{b.port}"]
    with GrpcCatalogClient(address, credentials=user_creds, token=secret) as researcher:
        [study] = researcher.query_studies(QueryFilter())
        assert study.number_of_instances == 4
