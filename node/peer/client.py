"""Fetches one instance from a peer node, verifying size and SHA-256 before use."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator, Sequence

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

    def fetch_many(
        self, address: str, sop_instance_uids: Sequence[str]
    ) -> Iterator[tuple[str, bytes | PeerTransferError]]:
        """Several instances from one peer in one call, in order, each verified (size and
        SHA-256) as it completes: ``(uid, bytes)``, or ``(uid, PeerTransferError)`` for one
        the peer could not serve or that failed verification.

        A broken call raises :class:`PeerTransferError` after the instances that arrived;
        the caller fetches the rest elsewhere. Closing the iterator early cancels the call.
        """
        call = self._stub(address).FetchInstances(
            peer_pb2.FetchInstancesRequest(sop_instance_uids=list(sop_instance_uids))
        )
        stall = _StallWatch(call, self._timeout)
        chunks = iter(call)
        expected_uids = iter(sop_instance_uids)
        parts: list[bytes] = []
        uid, expected = "", -1
        digest = hashlib.sha256()
        try:
            while True:
                stall.waiting()
                try:
                    chunk = next(chunks)
                except StopIteration:
                    break
                finally:
                    stall.got()
                if chunk.offset == 0:
                    uid = next(expected_uids, "")
                    if chunk.sop_instance_uid != uid:
                        raise PeerTransferError(
                            f"{address}: sent {chunk.sop_instance_uid or '?'} for {uid or '?'}"
                        )
                    parts, expected, digest = [], chunk.size, hashlib.sha256()
                if chunk.error_code:
                    yield (
                        uid,
                        PeerTransferError(
                            f"{address}: {chunk.error_code} {chunk.error}", code=chunk.error_code
                        ),
                    )
                    continue
                parts.append(chunk.data)
                digest.update(chunk.data)
                if chunk.last:
                    data = b"".join(parts) if len(parts) > 1 else parts[0]
                    parts = []
                    if len(data) != expected or digest.hexdigest() != chunk.sha256:
                        yield (
                            uid,
                            PeerTransferError(
                                f"{address}: copy of {uid} failed verification ({len(data)}/"
                                f"{expected} bytes, sha256 "
                                f"{'ok' if digest.hexdigest() == chunk.sha256 else 'bad'})"
                            ),
                        )
                    else:
                        yield uid, data
        except grpc.RpcError as exc:
            if stall.fired:
                raise PeerTransferError(
                    f"{address}: nothing received for {self._timeout:g} s", code="DEADLINE_EXCEEDED"
                ) from exc
            raise PeerTransferError(
                f"{address}: {exc.code().name} {exc.details()}", code=exc.code().name
            ) from exc
        finally:
            stall.stop()
            call.cancel()  # no-op once the call completed; frees the peer when abandoned
        missing = next(expected_uids, None)
        if missing is not None:
            raise PeerTransferError(f"{address}: the stream ended before {missing}")

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()


class _StallWatch:
    """Cancels a batch call that delivers nothing for ``timeout`` seconds while it is awaited.

    A whole-call deadline would not do: the call rightly stays open while the consumer is
    slow (a slow C-STORE destination holds the stream back), and a peer that stalls must
    still be given up on after the same ``timeout`` as a single fetch.
    """

    def __init__(self, call: grpc.Future, timeout: float) -> None:
        self._call = call
        self._timeout = timeout
        self._cond = threading.Condition()
        self._since: float | None = None
        self._done = False
        self.fired = False
        threading.Thread(target=self._watch, name="peer-stall-watch", daemon=True).start()

    def waiting(self) -> None:
        self._since = time.monotonic()  # a plain store: the watcher reads it when it wakes

    def got(self) -> None:
        self._since = None

    def stop(self) -> None:
        with self._cond:
            self._done = True
            self._cond.notify()

    def _watch(self) -> None:
        poll = max(self._timeout / 4, 0.05)
        with self._cond:
            while not self._done:
                since = self._since
                if since is not None and time.monotonic() - since >= self._timeout:
                    self.fired = True
                    self._call.cancel()
                    return
                self._cond.wait(poll)
