"""Pull-based replication between catalog replicas.

Each replica asks every peer for its per-origin high-water marks and pulls, per origin, the
changes after its own mark, applying them through the same idempotent path a publishing node
uses. Origins are nodes, each the only writer of its own records, so replicas never conflict:
they converge to the union of what any of them received. A replica that was down, or a new
empty one, catches up the same way.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from catalog.errors import CatalogError, CatalogUnavailable
from catalog.interfaces import CatalogClient
from catalog.service import CatalogService

log = logging.getLogger("catalog.replication")


@dataclass(frozen=True, slots=True)
class Peer:
    name: str
    address: str


class Replicator:
    """Background loop pulling every peer's changes every ``interval`` seconds.

    Parameters
    ----------
    service
        This replica.
    peers
        The other replicas.
    connect
        Makes a client for one peer address (lets the caller choose credentials).
    """

    def __init__(
        self,
        service: CatalogService,
        peers: Sequence[Peer],
        connect: Callable[[str], CatalogClient],
        *,
        interval: float = 0.5,
        batch_size: int = 2000,
    ) -> None:
        self._service = service
        self._peers = tuple(peers)
        self._clients = {p.name: connect(p.address) for p in self._peers}
        self._interval = interval
        self._batch = batch_size
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._down: set[str] = set()
        self._peer_marks: dict[str, dict[str, int]] = {}
        """Each peer's per-origin marks as it last reported them (they only grow)."""

    def pull_peer(self, peer: Peer) -> int:
        """Catch up with one peer; return how many changes were applied."""
        client = self._clients[peer.name]
        theirs = client.get_watermarks()
        self._peer_marks[peer.name] = dict(theirs.marks)
        self._service.repository.merge_nodes(theirs.nodes)
        mine = self._service.repository.watermarks()
        applied = 0
        for origin, their_seq in sorted(theirs.marks.items()):
            seq = mine.get(origin, 0)
            while seq < their_seq and not self._stop.is_set():
                changes = list(client.pull_changes(origin, seq, self._batch))
                if not changes:
                    break
                result = self._service.apply_changes(origin, changes, via=f"pull:{peer.name}")
                applied += result.applied
                if result.high_water_mark <= seq:
                    break
                seq = result.high_water_mark
        return applied

    def applied_by_every_peer(self) -> dict[str, int] | None:
        """Per origin, the seq every peer has applied (the lowest of their marks; an origin
        a peer lacks: 0); None when there are no peers. Until every peer has answered
        once, nothing is known to be applied everywhere: {}.

        What the change log's compaction may drop delete entries up to: a peer whose mark
        is past an entry has applied it (marks advance only over applied changes).
        """
        if not self._peers:
            return None
        if any(p.name not in self._peer_marks for p in self._peers):
            return {}
        marks = [self._peer_marks[p.name] for p in self._peers]
        origins = set().union(*marks)
        return {origin: min(m.get(origin, 0) for m in marks) for origin in origins}

    def run_once(self) -> int:
        """One round over every peer; unreachable peers are logged once and skipped."""
        total = 0
        for peer in self._peers:
            try:
                applied = self.pull_peer(peer)
            except CatalogUnavailable as exc:
                if peer.name not in self._down:
                    log.warning("event=peer_unreachable peer=%s error=%s", peer.name, exc)
                    self._down.add(peer.name)
                continue
            except CatalogError as exc:
                log.error("event=replication_failed peer=%s error=%s", peer.name, exc)
                continue
            if peer.name in self._down:
                log.info("event=peer_back peer=%s", peer.name)
                self._down.discard(peer.name)
            if applied:
                log.info("event=replicated peer=%s applied=%d", peer.name, applied)
            total += applied
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # the loop must survive anything; log it with its traceback
                log.exception("event=replication_round_failed")
            self._stop.wait(self._interval)

    def start(self) -> None:
        if self._peers and self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name="catalog-replication", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        for client in self._clients.values():
            client.close()
