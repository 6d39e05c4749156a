"""The work behind ``gridpacs retrieve``: authorize at the catalog, fetch from the holders.

* :class:`Authorizer` asks a catalog replica (failing over between them) for the locations of
  some studies and a signed retrieve grant (``gridpacs.catalog.v1.AccessService``).
* :class:`Fetcher` gets one instance from the first holder that delivers a verified copy
  (size and SHA-256 checked by the peer client, and against the catalog's content key of
  that holder's copy), and writes it atomically to
  ``<out>/<StudyUID>/<SeriesUID>/<SOPUID>.dcm``. A file already there with a known content
  key is kept (resume).

UIDs become path parts only after they match the UID grammar (digits and dots), so a hostile
catalog entry cannot write outside the output folder.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import grpc

from catalog.client import CHANNEL_OPTIONS
from catalog.records import Holder
from catalog.v1 import access_pb2, access_pb2_grpc
from node.peer.client import PeerClient, PeerTransferError

UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
MAX_STUDIES_PER_GRANT = 100
_FAILOVER = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def is_uid(text: str) -> bool:
    """True for a DICOM UID: 1-64 characters, digits separated by single dots."""
    return 0 < len(text) <= 64 and UID_RE.match(text) is not None


class AccessError(Exception):
    """The catalog refused or could not authorize the retrieve (``code``: gRPC status)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Item:
    """One instance to retrieve, with where to get it and how to recognise a good copy."""

    study_uid: str
    series_uid: str
    sop_uid: str
    size: int
    holders: tuple[Holder, ...]
    addresses: tuple[str, ...]
    sha256: tuple[str, ...]  # per holder; "" when the catalog does not know it
    grant: str

    def path(self, out: Path) -> Path | None:
        """Where the file goes, or None when a UID is not safe to use as a path part."""
        parts = (self.study_uid, self.series_uid, self.sop_uid)
        if not all(is_uid(p) for p in parts):
            return None
        return out / self.study_uid / self.series_uid / f"{self.sop_uid}.dcm"


@dataclass(frozen=True)
class Authorization:
    grant: str
    expires_at: int
    collections: dict[str, bool]
    items: list[Item]


class Authorizer:
    """``AuthorizeRetrieve`` on the first catalog replica that answers."""

    def __init__(
        self,
        addresses: Sequence[str],
        credentials: grpc.ChannelCredentials | None,
        token: str | None,
        *,
        timeout: float = 60.0,
    ) -> None:
        self._addresses = tuple(addresses)
        self._credentials = credentials
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._timeout = timeout

    def authorize(
        self, study_uids: Sequence[str], collections: Sequence[str] = ()
    ) -> Authorization:
        request = access_pb2.AuthorizeRetrieveRequest(
            study_instance_uids=list(study_uids), collections=list(collections)
        )
        errors: list[str] = []
        for address in self._addresses:
            channel = self._channel(address)
            try:
                stub = access_pb2_grpc.AccessServiceStub(channel)
                responses = list(
                    stub.AuthorizeRetrieve(request, timeout=self._timeout, metadata=self._metadata)
                )
            except grpc.RpcError as exc:
                if exc.code() in _FAILOVER:
                    errors.append(f"{address}: {exc.code().name}")
                    continue
                raise AccessError(f"{exc.code().name}: {exc.details()}", exc.code().name) from exc
            finally:
                channel.close()
            return _authorization(responses)
        raise AccessError(
            f"no catalog replica answered: {'; '.join(errors) or 'none given'}", "UNAVAILABLE"
        )

    def _channel(self, address: str) -> grpc.Channel:
        if self._credentials is None:
            return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        return grpc.secure_channel(address, self._credentials, options=CHANNEL_OPTIONS)


def _authorization(responses: list[access_pb2.AuthorizeRetrieveResponse]) -> Authorization:
    if not responses or not responses[0].grant:
        raise AccessError("the catalog answered without a grant", "INTERNAL")
    first = responses[0]
    items = [
        Item(
            study_uid=r.location.study_instance_uid,
            series_uid=r.location.series_instance_uid,
            sop_uid=r.location.sop_instance_uid,
            size=r.location.size,
            holders=tuple(
                Holder(node=h.node, ae_title=h.ae_title, collection=h.collection)
                for h in r.location.holders
            ),
            addresses=tuple(r.location.peer_addresses),
            sha256=tuple(r.sha256),
            grant=first.grant,
        )
        for response in responses
        for r in response.locations
    ]
    return Authorization(
        grant=first.grant,
        expires_at=first.expires_at,
        collections={c.collection: c.identified_allowed for c in first.collections},
        items=items,
    )


class Outcome(StrEnum):
    FETCHED = "fetched"
    PRESENT = "present"  # already there with the right content: skipped (resume)
    FAILED = "failed"


@dataclass(frozen=True)
class Result:
    item: Item
    outcome: Outcome
    size: int = 0
    source: str = ""
    error: str = ""


class Fetcher:
    """Fetches items into ``out`` with failover between holders."""

    def __init__(self, out: Path, peers: PeerClient) -> None:
        self._out = out
        self._peers = peers

    def retrieve(self, item: Item) -> Result:
        path = item.path(self._out)
        if path is None:
            return Result(item, Outcome.FAILED, error="UID is not a valid DICOM UID; not written")
        known = {s for s in item.sha256 if s}
        if path.exists() and _sha256_file(path) in known:
            return Result(item, Outcome.PRESENT, size=path.stat().st_size)
        errors: list[str] = []
        for index, address in enumerate(item.addresses):
            holder = item.holders[index] if index < len(item.holders) else None
            label = holder.node if holder else address
            if not address:
                errors.append(f"{label}: no peer address registered")
                continue
            try:
                data = self._peers.fetch(address, item.sop_uid, grant=item.grant)
            except PeerTransferError as exc:
                errors.append(f"{label}: {exc}")
                continue
            expected = item.sha256[index] if index < len(item.sha256) else ""
            if expected and hashlib.sha256(data).hexdigest() != expected:
                errors.append(f"{label}: copy differs from the catalog's content key")
                continue
            _write_atomically(path, data)
            return Result(item, Outcome.FETCHED, size=len(data), source=label)
        return Result(item, Outcome.FAILED, error="; ".join(errors) or "no holder known")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, fsync, rename: never a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def batches(items: Sequence[str], size: int = MAX_STUDIES_PER_GRANT) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
