"""Serves this node's instances to other nodes, in chunks, with the checksum last."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NoReturn, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from catalog.security.errors import AuditError, SecurityError
from catalog.security.grants import METADATA_KEY, Grant, GrantError, GrantVerifier
from catalog.security.pki import UNIT_HOST
from catalog.security.tls import PeerIdentity, peer_identity
from node.audit import DicomAudit
from node.index.records import InstanceRecord
from node.structlog import log_event
from node.v1 import inventory_pb2_grpc, peer_pb2, peer_pb2_grpc

LOG = logging.getLogger("gridpacs.node.peer")
#: The node's audit row of a researcher's fetch (a grant from the catalog, ``gridpacs retrieve``).
FETCH_ACTION = "grid.researcher_fetch"
CHUNK_BYTES = 1024 * 1024  # a CT slice in one message; well under gRPC's 4 MiB limit
MAX_BATCH = 256  # UIDs per FetchInstances call: one index statement, a bounded request


class InstanceLookup(Protocol):
    def get_record(self, sop_instance_uid: str) -> InstanceRecord | None: ...

    def get_records(self, sop_instance_uids: Sequence[str]) -> dict[str, InstanceRecord]: ...


class BlobReader(Protocol):
    def get(self, key: str) -> bytes: ...


class PeerServicer(peer_pb2_grpc.PeerServiceServicer):
    """FetchInstance for two kinds of callers.

    * Another node (a grid host certificate, ``OU=host``; or anyone on an explicitly insecure
      grid): NOT_FOUND for unknown UIDs and for collections that may not leave the site (the
      publisher's policy: identified data only in one trust domain). A grid certificate alone
      never unlocks identified data.
    * A researcher's tool (any other client certificate, or a request carrying a grant): only
      with a retrieve grant signed by the catalog (metadata ``gridpacs-grant``) that names the
      instance's study and collection; an identified collection only when the grant says the
      role allows it. UNAUTHENTICATED without a valid grant, PERMISSION_DENIED when the grant
      does not cover the instance. Every refusal is logged with the grant's user and token id.

    DATA_LOSS when our copy is corrupt.

    FetchInstances (several instances per call) serves grid nodes only; per instance it
    answers as FetchInstance would, but inside the stream, so one missing instance does not
    end the others.
    """

    def __init__(
        self,
        index: InstanceLookup,
        store: BlobReader,
        *,
        servable: Callable[[str], bool],
        identified: Callable[[str], bool] = lambda _collection: True,
        grants: GrantVerifier | None = None,
        audit: DicomAudit | None = None,
    ) -> None:
        self._index = index
        self._store = store
        self._servable = servable
        self._identified = identified
        self._grants = grants
        self._audit = audit or DicomAudit(None)

    def FetchInstance(
        self, request: peer_pb2.FetchInstanceRequest, context: grpc.ServicerContext
    ) -> Iterator[peer_pb2.InstanceChunk]:
        inst = self._index.get_record(request.sop_instance_uid)
        peer = peer_identity(context)
        grant_text = _metadata(context, METADATA_KEY)
        if grant_text is not None or (peer is not None and peer.organizational_unit != UNIT_HOST):
            self._check_researcher(inst, grant_text, peer, context)
        elif inst is None or not self._servable(inst.collection):
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
        # the store verified the bytes against their content key, which is their SHA-256
        yield from _chunks(data, inst.transfer_syntax_uid, inst.blob_key)

    def FetchInstances(
        self, request: peer_pb2.FetchInstancesRequest, context: grpc.ServicerContext
    ) -> Iterator[peer_pb2.InstanceChunk]:
        peer = peer_identity(context)
        if _metadata(context, METADATA_KEY) is not None or (
            peer is not None and peer.organizational_unit != UNIT_HOST
        ):
            why = "batch fetch is for grid nodes; researchers fetch one instance at a time"
            self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, None, None, why)
        uids = list(request.sop_instance_uids)
        if len(uids) > MAX_BATCH:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_BATCH} instances per call"
            )
        records = self._index.get_records(uids)  # one statement for the whole batch
        for uid in uids:
            inst = records.get(uid)
            if inst is None or not self._servable(inst.collection):
                if inst is not None:
                    log_event(LOG, "peer_fetch_refused", level=logging.WARNING,
                              sop_instance_uid=uid, peer=context.peer(),
                              reason="collection may not leave the site")  # fmt: skip
                yield peer_pb2.InstanceChunk(
                    sop_instance_uid=uid, last=True, error_code="NOT_FOUND",
                    error="instance not held here",
                )  # fmt: skip
                continue
            try:
                data = self._store.get(inst.blob_key)  # verified against its content key
            except Exception as exc:
                log_event(LOG, "peer_fetch_failed", level=logging.ERROR,
                          sop_instance_uid=uid, reason=str(exc))  # fmt: skip
                yield peer_pb2.InstanceChunk(
                    sop_instance_uid=uid, last=True, error_code="DATA_LOSS",
                    error=f"stored copy unreadable: {exc}",
                )  # fmt: skip
                continue
            yield from _chunks(data, inst.transfer_syntax_uid, inst.blob_key, uid)

    def _check_researcher(
        self,
        inst: InstanceRecord | None,
        grant_text: str | None,
        peer: PeerIdentity | None,
        context: grpc.ServicerContext,
    ) -> None:
        """Return when the grant covers ``inst``; abort the call otherwise."""
        if grant_text is None:
            why = "researchers need a retrieve grant from the catalog (gridpacs retrieve)"
            self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, inst, None, why)
        if self._grants is None:
            why = "this node accepts no retrieve grants (catalog.grant_public_keys unset)"
            self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, inst, None, why)
        assert grant_text is not None and self._grants is not None
        fingerprint = peer.fingerprint_sha256 if peer is not None and peer.pem else None
        try:
            grant = self._grants.verify(grant_text, client_fingerprint=fingerprint)
        except GrantError as exc:
            self._refuse(
                context, grpc.StatusCode.UNAUTHENTICATED, inst, None, f"grant rejected: {exc}"
            )
        except SecurityError as exc:
            self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, inst, None, str(exc))
        if inst is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "instance not held here")
        assert inst is not None
        if not self._servable(inst.collection):
            self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, inst, grant,
                         f"collection {inst.collection!r} may not leave the site")  # fmt: skip
        reason = grant.allows(
            inst.study_instance_uid, inst.collection, identified=self._identified(inst.collection)
        )
        if reason is not None:
            self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, inst, grant, reason)
        try:  # a person takes data off the node: recorded before it is sent, or not sent
            self._audit.read(FETCH_ACTION, grant.user, context.peer(),
                             _fetch_target(inst, grant), "served")  # fmt: skip
        except AuditError:
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          "not served: the audit log cannot be written")  # fmt: skip
        log_event(LOG, "researcher_fetch", sop_instance_uid=inst.sop_instance_uid,
                  collection=inst.collection, user=grant.user, token_id=grant.token_id,
                  peer=context.peer())  # fmt: skip

    def _refuse(
        self,
        context: grpc.ServicerContext,
        code: grpc.StatusCode,
        inst: InstanceRecord | None,
        grant: Grant | None,
        reason: str,
    ) -> NoReturn:
        log_event(LOG, "researcher_fetch_refused", level=logging.WARNING, code=code.name,
                  sop_instance_uid=inst.sop_instance_uid if inst else "",
                  user=grant.user if grant else "", token_id=grant.token_id if grant else "",
                  peer=context.peer(), reason=reason)  # fmt: skip
        target = {**(_fetch_target(inst, grant) if inst else {}), "reason": reason}
        self._audit.event(FETCH_ACTION, grant.user if grant else "-", context.peer(), target,
                          code.name)  # fmt: skip
        context.abort(code, reason)
        raise AssertionError("unreachable")  # pragma: no cover - abort raises


def _fetch_target(inst: InstanceRecord, grant: Grant | None) -> dict[str, str]:
    """A researcher fetch's audit row: what left, from which collection, under which token."""
    target = {"study": inst.study_instance_uid, "sop_instance_uid": inst.sop_instance_uid,
              "collection": inst.collection}  # fmt: skip
    if grant is not None:
        target["token_id"] = grant.token_id
    return target


def _metadata(context: grpc.ServicerContext, key: str) -> str | None:
    for item in context.invocation_metadata() or ():
        if item.key == key:
            value = item.value
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return None


def _chunks(
    data: bytes, transfer_syntax_uid: str, digest: str, sop_instance_uid: str = ""
) -> Iterator[peer_pb2.InstanceChunk]:
    total = len(data)
    for offset in range(0, max(total, 1), CHUNK_BYTES):
        last = offset + CHUNK_BYTES >= total
        first = offset == 0
        yield peer_pb2.InstanceChunk(
            data=data[offset : offset + CHUNK_BYTES],
            offset=offset,
            size=total if first else 0,
            transfer_syntax_uid=transfer_syntax_uid if first else "",
            sop_instance_uid=sop_instance_uid if first else "",
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
        interceptors: Sequence[grpc.ServerInterceptor] = (),
    ) -> None:
        # a batch call holds its thread while the fetching node C-STOREs what it got
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=32), interceptors=list(interceptors)
        )
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
