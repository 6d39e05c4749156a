"""Serves this node's instances to other nodes, in chunks, with the checksum last."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from node.index.records import InstanceRecord
from node.structlog import log_event
from node.v1 import inventory_pb2_grpc, peer_pb2, peer_pb2_grpc

LOG = logging.getLogger("gridpacs.node.peer")
CHUNK_BYTES = 256 * 1024


class InstanceLookup(Protocol):
    def get_record(self, sop_instance_uid: str) -> InstanceRecord | None: ...


class BlobReader(Protocol):
    def get(self, key: str) -> bytes: ...


class PeerServicer(peer_pb2_grpc.PeerServiceServicer):
    """FetchInstance: NOT_FOUND for unknown UIDs and for collections that may not leave the
    site (the publisher's policy: identified data only in one trust domain), DATA_LOSS when
    our copy is corrupt. A grid certificate alone never unlocks identified data."""

    def __init__(
        self, index: InstanceLookup, store: BlobReader, *, servable: Callable[[str], bool]
    ) -> None:
        self._index = index
        self._store = store
        self._servable = servable

    def FetchInstance(
        self, request: peer_pb2.FetchInstanceRequest, context: grpc.ServicerContext
    ) -> Iterator[peer_pb2.InstanceChunk]:
        inst = self._index.get_record(request.sop_instance_uid)
        if inst is None or not self._servable(inst.collection):
            if inst is not None:
                log_event(LOG, "peer_fetch_refused", level=logging.WARNING,
                          sop_instance_uid=inst.sop_instance_uid, peer=context.peer(),
                          reason="collection may not leave the site")  # fmt: skip
            context.abort(grpc.StatusCode.NOT_FOUND, "instance not held here")
        assert inst is not None
        try:
            data = self._store.get(inst.blob_key)  # verified against its content key
        except Exception as exc:
            log_event(LOG, "peer_fetch_failed", level=logging.ERROR,
                      sop_instance_uid=inst.sop_instance_uid, reason=str(exc))  # fmt: skip
            context.abort(grpc.StatusCode.DATA_LOSS, f"stored copy unreadable: {exc}")
        digest = hashlib.sha256(data).hexdigest()
        total = len(data)
        for offset in range(0, max(total, 1), CHUNK_BYTES):
            last = offset + CHUNK_BYTES >= total
            yield peer_pb2.InstanceChunk(
                data=data[offset : offset + CHUNK_BYTES],
                offset=offset,
                size=total if offset == 0 else 0,
                transfer_syntax_uid=inst.transfer_syntax_uid if offset == 0 else "",
                sha256=digest if last else "",
                last=last,
            )


class PeerServer:
    """The gRPC server other nodes fetch from (plus the standard health service)."""

    def __init__(
        self,
        servicer: PeerServicer,
        host: str,
        port: int,
        credentials: grpc.ServerCredentials | None,
        inventory: inventory_pb2_grpc.InventoryServiceServicer | None = None,
    ) -> None:
        self._server = grpc.server(ThreadPoolExecutor(max_workers=8))
        peer_pb2_grpc.add_PeerServiceServicer_to_server(servicer, self._server)
        checker = health.HealthServicer()
        checker.set("gridpacs.node.v1.PeerService", health_pb2.HealthCheckResponse.SERVING)
        if inventory is not None:  # reconciliation, same port and mTLS
            inventory_pb2_grpc.add_InventoryServiceServicer_to_server(inventory, self._server)
            checker.set("gridpacs.node.v1.InventoryService", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(checker, self._server)
        address = f"{host}:{port}"
        if credentials is None:
            self.port = self._server.add_insecure_port(address)
        else:
            self.port = self._server.add_secure_port(address, credentials)
        self.host = host

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        self._server.start()

    def stop(self, grace: float = 2.0) -> None:
        self._server.stop(grace).wait()
