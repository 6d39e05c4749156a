"""Fetches one instance from a peer node, verifying size and SHA-256 before use."""

from __future__ import annotations

import hashlib
import threading

import grpc

from node.errors import NodeError
from node.v1 import peer_pb2, peer_pb2_grpc

# Not ("SingleThreadedUnaryStream", 1): it saves ~0.8 ms CPU per sequential fetch, but with
# concurrent fetches on one channel (prefetch, gridpacs retrieve --workers) a grid C-MOVE of
# 200 CT instances took 62 s instead of 3 s (measured, docs/performance.md "Grid C-MOVE").
CHANNEL_OPTIONS: list[tuple[str, int]] = []


class PeerTransferError(NodeError):
    """A peer could not deliver a verified copy (unreachable, not held, corrupt).

    ``code`` names the gRPC status when the peer answered with one (``PERMISSION_DENIED`` …).
    """

    def __init__(self, message: str, *, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class PeerClient:
    """One channel per peer address for the life of the node (gRPC multiplexes calls)."""

    def __init__(
        self, credentials: grpc.ChannelCredentials | None, *, timeout: float = 60.0
    ) -> None:
        self._credentials = credentials
        self._timeout = timeout
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

    def _stub(self, address: str) -> peer_pb2_grpc.PeerServiceStub:
        with self._lock:
            channel = self._channels.get(address)
            if channel is None:
                if self._credentials is None:
                    channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
                else:
                    channel = grpc.secure_channel(
                        address, self._credentials, options=CHANNEL_OPTIONS
                    )
                self._channels[address] = channel
        return peer_pb2_grpc.PeerServiceStub(channel)

    def fetch(self, address: str, sop_instance_uid: str, *, grant: str | None = None) -> bytes:
        """The instance's Part 10 bytes, or :class:`PeerTransferError`.

        ``grant``: a researcher's retrieve grant from the catalog, sent as metadata."""
        request = peer_pb2.FetchInstanceRequest(sop_instance_uid=sop_instance_uid)
        metadata = (("gridpacs-grant", grant),) if grant else None
        parts: list[bytes] = []
        digest = hashlib.sha256()
        size = expected = -1
        sha = ""
        try:
            for chunk in self._stub(address).FetchInstance(
                request, timeout=self._timeout, metadata=metadata
            ):
                if chunk.offset == 0:
                    expected = chunk.size
                parts.append(chunk.data)
                digest.update(chunk.data)
                if chunk.last:
                    sha = chunk.sha256
        except grpc.RpcError as exc:
            raise PeerTransferError(
                f"{address}: {exc.code().name} {exc.details()}", code=exc.code().name
            ) from exc
        data = b"".join(parts)
        size = len(data)
        if size != expected or digest.hexdigest() != sha:
            raise PeerTransferError(
                f"{address}: copy of {sop_instance_uid} failed verification "
                f"({size}/{expected} bytes, sha256 {'ok' if digest.hexdigest() == sha else 'bad'})"
            )
        return data

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()
