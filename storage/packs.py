"""Small blobs appended to preallocated pack files: one data-only sync per put.

Why: a blob in its own file costs a temp file, an fsync, a rename and an fsync of the
directory, each forcing a journal commit on ext4 (~3 per put). A record written into
blocks that are already allocated *and written* (the pack was zero-filled and fsynced when
it was created) changes no metadata that ``fdatasync`` must persist (only timestamps), so
the sync is a data flush without a journal commit (measured: bench/storage_put.py).

Layout under ``<root>/packs/``::

    00000001.pack     created zero-filled and durable (temp+fsync+link); 1 MiB, each
                      next one twice the size of the previous, up to 32 MiB
    00000001.idx      sidecar index, written once the pack is full and quiet ("sealed")
    writer.lock       flock'ed by the one process that may append
    locations.sqlite  where the records of sealed packs are (derived; rebuilt if lost)

A pack starts with one block holding a pack header; records start on 4096-byte
boundaries, so an append never rewrites a block holding an earlier acknowledged record::

    offset  size  field (integers unsigned, big-endian)
    0       4     magic b"GPBR"
    4       1     format version (1)
    5       1     kind: 1 blob, 2 tombstone (the key was deleted)
    6       2     reserved (0)
    8       32    SHA-256 key (raw)
    40      8     payload length (as stored: ciphertext when the store is encrypted)
    48      4     CRC-32 of the payload
    52      4     CRC-32 of bytes 0..51 (the header)
    56      n     payload

The payload is written first and the header after it, then one ``fdatasync``: a process
killed mid-put leaves no header, so no record. A header whose payload fails its CRC (a
power loss tore an unacknowledged append, or the bytes rotted since) makes the key a
*suspect*: listed and reported by scrub, never trusted by a put's de-duplication.

Where each record is: for sealed packs, in a SQLite table derived from their sidecars
(``storage/pack_locations.py``), so memory does not grow with the number of blobs; for the
packs still appended to, in memory, from a scan at open. A deleted record's blocks are
punched out of its pack (``storage/holes.py``): the file keeps its size and every other
record its offset, and the disk space is free at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import mmap
import os
import re
import struct
import threading
import weakref
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from storage.durable import Chunk, make_dirs_durably, write_atomically
from storage.holes import allocated_bytes, holds_data, punch_hole
from storage.pack_locations import Locations, packed, unpacked

LOG = logging.getLogger("gridpacs.storage")
BLOCK = 4096
DEFAULT_PACK_SIZE = 32 * 1024 * 1024
FIRST_PACK_SIZE = 1024 * 1024
"""Packs grow from this size, doubling per pack up to the pack size: a small store (a test,
a new node) does not write 64 MiB of zeros before its first instance."""
RECORD_MAGIC = b"GPBR"
PACK_MAGIC = b"GPPK"
INDEX_MAGIC = b"GPPI"
VERSION = 1
KIND_BLOB = 1
KIND_TOMBSTONE = 2
_HEAD = struct.Struct(">4sBBH32sQI")  # everything up to the header CRC
_HEADER = struct.Struct(">4sBBH32sQII")
HEADER_SIZE = _HEADER.size
_PACK_HEAD = struct.Struct(">4sBxxxIQ")  # magic, version, pack id, pack size
_INDEX_HEAD = struct.Struct(">4sBxxxII")  # magic, version, pack id, entry count
_ENTRY = struct.Struct(">BB32sQI")  # kind, payload ok, key, offset, length
_PACK_NAME = re.compile(r"(\d{8})\.pack")
_SPARE_AT = 0.5
"""The next pack is prepared (off the hot path) once the open one is this full."""


def _aligned(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _header(kind: int, digest: bytes, length: int, payload_crc: int) -> bytes:
    head = _HEAD.pack(RECORD_MAGIC, VERSION, kind, 0, digest, length, payload_crc)
    return head + struct.pack(">I", zlib.crc32(head))


class Record(NamedTuple):
    """One record found in a pack (by a scan or in a sidecar); a tuple: cheap by the million."""

    kind: int
    ok: bool
    """The payload matches its CRC (False: torn by a crash, or corrupted since)."""
    digest: bytes
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class Location:
    """Where a packed payload lives."""

    pack: int
    offset: int
    """Of the record's header."""
    length: int
    """Of the payload as stored."""


def scan(buf: bytes | mmap.mmap, size: int) -> list[Record]:
    """Every record with a valid header in a pack's bytes, in offset order.

    Not stopping at the first gap matters: concurrent appends complete out of order, so
    an acknowledged record may follow the hole of one a crash interrupted.
    """
    records: list[Record] = []
    pos = BLOCK
    while pos + HEADER_SIZE <= size:
        found = buf.find(RECORD_MAGIC, pos)
        if found < 0:
            break
        if found % BLOCK:
            pos = _aligned(found)
            continue
        _, version, kind, _, digest, length, pcrc, hcrc = _HEADER.unpack_from(buf, found)
        end = found + HEADER_SIZE + length
        head_ok = version == VERSION and zlib.crc32(buf[found : found + _HEAD.size]) == hcrc
        if not head_ok or kind not in (KIND_BLOB, KIND_TOMBSTONE) or end > size:
            pos = found + BLOCK
            continue
        ok = zlib.crc32(buf[found + HEADER_SIZE : end]) == pcrc
        records.append(Record(kind, ok, digest, found, length))
        # A bad payload's length is not trusted to skip: step one block instead.
        pos = _aligned(end) if ok else found + BLOCK
    return records


def encode_index(pack_id: int, records: Sequence[Record]) -> bytes:
    """The sidecar of a sealed pack: its records, then a SHA-256 of all that precedes."""
    body = bytearray(_INDEX_HEAD.pack(INDEX_MAGIC, VERSION, pack_id, len(records)))
    for r in records:
        body += _ENTRY.pack(r.kind, r.ok, r.digest, r.offset, r.length)
    return bytes(body + hashlib.sha256(body).digest())


def decode_index(raw: bytes, pack_id: int) -> list[Record] | None:
    """The records of a sidecar, or None when it is damaged or not this pack's."""
    if len(raw) < _INDEX_HEAD.size + 32 or hashlib.sha256(raw[:-32]).digest() != raw[-32:]:
        return None
    magic, version, found_id, count = _INDEX_HEAD.unpack_from(raw)
    body = raw[_INDEX_HEAD.size : -32]
    if (magic, version, found_id) != (INDEX_MAGIC, VERSION, pack_id):
        return None
    if len(body) != count * _ENTRY.size:
        return None
    return list(map(Record._make, _ENTRY.iter_unpack(body)))


@dataclass
class ReclaimReport:
    """What :meth:`PackStore.reclaim` found and gave back."""

    packs: int = 0
    dead_records: int = 0
    """Blob records no longer current (deleted, or superseded by a later put)."""
    released: int = 0
    """Of those, the ones whose blocks were still allocated (now punched)."""
    bytes_freed: int = 0


@dataclass(eq=False)
class _Pack:
    id: int
    path: str
    fd: int
    size: int
    next: int = BLOCK
    """Offset of the next record (appends only)."""
    inflight: int = 0
    """Appends allocated but not finished; a pack is sealed only at zero."""
    full: bool = False


class PackStore:
    """The packed half of a blob store: opaque payloads keyed by a 32-byte digest.

    Knows nothing of encryption or hashing of content (the caller seals and verifies);
    it guarantees that a record is durable when :meth:`put` returns and that its bytes
    come back from :meth:`read` exactly, or a damaged header is reported.

    Only one process appends (``writer.lock``); a second one opening the same store
    (``gridpacs storage scrub`` next to a running node) reads a snapshot taken at open.
    """

    def __init__(
        self,
        directory: str,
        tmp_dir: str,
        *,
        writable: bool,
        pack_size: int = DEFAULT_PACK_SIZE,
        first_pack_size: int = FIRST_PACK_SIZE,
    ) -> None:
        if pack_size < 4 * BLOCK or pack_size % BLOCK or pack_size >= 1 << 32:
            raise ValueError(f"pack size must be a multiple of {BLOCK}, >= {4 * BLOCK}, < 4 GiB")
        self._first_pack_size = min(pack_size, max(first_pack_size, 4 * BLOCK))
        self._dir = directory
        self._tmp = tmp_dir
        self._pack_size = pack_size
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._prep_lock = threading.Lock()
        self._packs: dict[int, _Pack] = {}
        self._open: _Pack | None = None
        self._spares: list[_Pack] = []
        self._next_id = 1
        self._pending: dict[bytes, threading.Event] = {}
        self._merged: set[int] = set()
        """Packs whose records are in the locations table (storage/pack_locations.py)."""
        self._merge_lock = threading.Lock()
        self._lock_fd: int | None = None
        self._fds: list[int] = []
        self._tasks: list[threading.Thread] = []
        self._preparing = False
        # Closes the descriptors (releasing the writer lock) when the store is dropped
        # without close(): no thread keeps a reference to an idle store.
        self._finalizer = weakref.finalize(self, _close_all, self._fds)
        if writable:
            make_dirs_durably(directory)
            self._lock_fd = self._take_writer_lock()
        self._locations = Locations(
            os.path.join(directory, "locations.sqlite"), writable=self._lock_fd is not None
        )
        self._load()

    @property
    def writable(self) -> bool:
        """Whether this process may append (it holds the writer lock)."""
        return self._lock_fd is not None

    def _take_writer_lock(self) -> int | None:
        fd = os.open(os.path.join(self._dir, "writer.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            # another process appends; we read (and put small blobs as files)
            LOG.info("event=packs_read_only dir=%s reason=writer_lock_held", self._dir)
            return None
        self._fds.append(fd)
        return fd

    # -- opening ---------------------------------------------------------------------

    def _load(self) -> None:
        try:
            names = sorted(n for n in os.listdir(self._dir) if _PACK_NAME.fullmatch(n))
        except FileNotFoundError:
            return
        last_used: _Pack | None = None
        self._merged = self._locations.merged_packs()
        merging = self._lock_fd is not None  # while every earlier pack is merged
        for name in names:
            pack = self._open_pack(int(name[:8]))
            self._packs[pack.id] = pack
            self._next_id = pack.id + 1
            if pack.id in self._merged:
                pack.full = True
                last_used = pack
                continue
            records = self._read_index(pack)
            pack.full = records is not None
            if records is None:
                records = self._scan(pack)
            if merging and pack.full:
                self._locations.merge(pack.id, records)  # sealed before a crash, or old store
                self._merged.add(pack.id)
            else:
                merging = False  # later packs' records must not go under this one's
                self._locations.apply(pack.id, records)
            if records:
                pack.next = max(_aligned(r.offset + HEADER_SIZE + r.length) for r in records)
            if records or pack.full:
                last_used = pack
        if self._lock_fd is not None:
            self._arrange(last_used)

    def _arrange(self, last_used: _Pack | None) -> None:
        """After opening as the writer: which pack is open, which are spares, which are done."""
        for pack in self._packs.values():
            if pack.full:
                continue
            if pack is last_used:
                self._open = pack
            elif last_used is not None and pack.id < last_used.id:
                self._retire(pack)  # a later pack was appended to: this one is done
            else:
                self._spares.append(pack)  # empty, prepared ahead of need

    def _open_pack(self, pack_id: int) -> _Pack:
        path = os.path.join(self._dir, f"{pack_id:08d}.pack")
        flags = os.O_RDWR if self._lock_fd is not None else os.O_RDONLY
        fd = os.open(path, flags | os.O_CLOEXEC)
        self._fds.append(fd)
        return _Pack(pack_id, path, fd, os.fstat(fd).st_size)

    def _read_index(self, pack: _Pack) -> list[Record] | None:
        try:
            with open(pack.path[: -len(".pack")] + ".idx", "rb") as file:
                return decode_index(file.read(), pack.id)
        except FileNotFoundError:
            return None

    def _scan(self, pack: _Pack) -> list[Record]:
        if pack.size <= BLOCK:
            return []
        with mmap.mmap(pack.fd, pack.size, prot=mmap.PROT_READ) as buf:
            return scan(buf, pack.size)

    # -- reading ---------------------------------------------------------------------

    def locate(self, digest: bytes, *, suspects: bool = True) -> Location | None:
        """Where a record of *digest* lives (an intact one first), or None."""
        found = self._locations.get(digest)
        if found is None and suspects:
            found = self._locations.suspect(digest)
        return None if found is None else Location(*unpacked(found))

    def contains(self, digest: bytes) -> bool:
        """Whether a durable, intact-at-open record of *digest* is held (not suspects)."""
        return self._locations.get(digest) is not None

    def digests(self) -> list[bytes]:
        """Every key held, suspects included (scrub must see them)."""
        return self._locations.digests()

    def read(self, digest: bytes, where: Location) -> bytes:
        """The payload at *where*; :class:`ValueError` when its header is not *digest*'s.

        The header is read and checked too, so scrub finds damage that would make the
        record invisible at the next open, not only damage to the payload.
        """
        pack = self._packs[where.pack]
        raw = os.pread(pack.fd, HEADER_SIZE + where.length, where.offset)
        if len(raw) != HEADER_SIZE + where.length:
            raise ValueError(f"pack {where.pack}: record at {where.offset} is truncated")
        magic, _, kind, _, found, length, _, hcrc = _HEADER.unpack_from(raw)
        intact = zlib.crc32(raw[: _HEAD.size]) == hcrc and magic == RECORD_MAGIC
        if not intact or (kind, found, length) != (KIND_BLOB, digest, where.length):
            raise ValueError(f"pack {where.pack}: the header at {where.offset} is damaged")
        return raw[HEADER_SIZE:]

    # -- writing ---------------------------------------------------------------------

    def put(self, digest: bytes, chunks: Sequence[Chunk]) -> None:
        """Append *chunks* as the record of *digest*; durable on return; no-op if held."""
        payload = b"".join(chunks)
        header = _header(KIND_BLOB, digest, len(payload), zlib.crc32(payload))
        while True:
            with self._lock:
                # pending first: a delete of these bytes under way must finish before the
                # held record can be trusted (else this put would return on a record that
                # is being removed)
                waiter = self._pending.get(digest)
                if waiter is None:
                    if self._locations.get(digest) is not None:
                        return
                    pack, offset = self._allocate(HEADER_SIZE + len(payload))
                    self._pending[digest] = threading.Event()
                    break
            waiter.wait()  # the same bytes are being written or deleted: done soon
        done = False
        try:
            self._write(pack, offset, header, payload)
            done = True
        finally:
            with self._lock:
                if done:
                    self._locations.put(digest, packed(pack.id, offset, len(payload)))
                self._pending.pop(digest).set()
                self._finished(pack)

    def delete(self, digest: bytes) -> bool:
        """Delete the record of *digest* (see :meth:`delete_many`); False when none is held."""
        return bool(self.delete_many([digest]))

    def delete_many(self, digests: Iterable[bytes]) -> set[bytes]:
        """Give the records of *digests* back to the file system, then append durable
        tombstones; the digests that had a record (the others are ignored).

        Bytes first, for privacy: a deleted (e.g. rejected) instance must not stay readable
        in its pack, whatever happens next. The records' blocks are punched out (they read
        as zeros and the disk space is free at once; zeros are written where the file
        system cannot punch) and made durable before any tombstone is written. A crash in
        between leaves records that read as damaged until the caller's retry (the node
        retries queued removals at start) finishes the delete; never readable bytes.

        One sync per pack touched for the releases and one per pack for the tombstones,
        however many records: removing a study costs a handful of syncs, not two per image.
        """
        claimed = self._claim(digests)
        if not claimed:
            return set()
        try:
            self._release_all(list(claimed.values()))
            self._append_tombstones(list(claimed))
        finally:
            with self._lock:
                for digest in claimed:
                    self._pending.pop(digest).set()
        return set(claimed)

    def _claim(self, digests: Iterable[bytes]) -> dict[bytes, Location]:
        """Mark the held ones among *digests* as being deleted (puts and other deletes of
        them wait), after waiting out any put or delete of them already under way."""
        claimed: dict[bytes, Location] = {}
        todo = list(dict.fromkeys(digests))
        while todo:
            busy: list[tuple[bytes, threading.Event]] = []
            with self._lock:
                if self._lock_fd is None:
                    raise OSError(0, "the packs are appended to by another process")
                for digest in todo:
                    waiter = self._pending.get(digest)
                    if waiter is not None:
                        busy.append((digest, waiter))
                        continue
                    where = self.locate(digest)
                    if where is not None:
                        self._pending[digest] = threading.Event()
                        claimed[digest] = where
            for _, waiter in busy:
                waiter.wait()
            todo = [digest for digest, _ in busy]
        return claimed

    def _release_all(self, records: Sequence[Location], fds: dict[int, int] | None = None) -> int:
        """Punch out (or zero) the blocks of *records*, then sync each pack once; the bytes
        freed. Records start on block boundaries and own their aligned length, so no
        other record shares a block with one of these."""
        fds = fds or {r.pack: self._packs[r.pack].fd for r in records}
        before = {pack: allocated_bytes(fd) for pack, fd in fds.items()}
        for where in records:
            fd, length = fds[where.pack], _aligned(HEADER_SIZE + where.length)
            if not punch_hole(fd, where.offset, length):
                _pwrite_all(fd, bytes(length), where.offset)
        for fd in fds.values():
            os.fsync(fd)  # fsync, not fdatasync: a punched hole changes the extent map
        return sum(max(0, before[pack] - allocated_bytes(fd)) for pack, fd in fds.items())

    def _append_tombstones(self, digests: Sequence[bytes]) -> None:
        with self._lock:
            slots = [(d, *self._allocate(HEADER_SIZE)) for d in digests]
        synced = False
        try:
            for digest, pack, offset in slots:
                _pwrite_all(pack.fd, _header(KIND_TOMBSTONE, digest, 0, 0), offset)
            for pack in {p for _, p, _ in slots}:
                os.fdatasync(pack.fd)
            synced = True
        finally:
            with self._lock:
                for digest, pack, _ in slots:
                    if synced:
                        self._locations.remove(digest, pack.id)
                    self._finished(pack)

    def reclaim(self, progress: Callable[[int, int], None] | None = None) -> ReclaimReport:
        """Give back the blocks of every record no longer anyone's: blobs deleted before
        deletes punched holes, and torn records a later put superseded.

        Only the writer may (it alone sees every record it has written); dead records
        already punched are skipped (``SEEK_DATA``), so a second run frees nothing.
        *progress* is called with (packs done, packs in all).
        """
        if self._lock_fd is None:
            raise OSError(0, "the packs are appended to by another process")
        report = ReclaimReport()
        with self._lock:
            packs = [self._packs[i] for i in sorted(self._packs)]
        for done, pack in enumerate(packs, 1):
            records = (self._read_index(pack) if pack.full else None) or self._scan(pack)
            report.packs += 1
            dead: list[Location] = []
            for record in records:
                if record.kind != KIND_BLOB:
                    continue
                if not self._is_dead(pack.id, record):
                    continue
                report.dead_records += 1
                if holds_data(pack.fd, record.offset, _aligned(HEADER_SIZE + record.length)):
                    dead.append(Location(pack.id, record.offset, record.length))
            if dead:
                report.bytes_freed += self._release_all(dead, {pack.id: pack.fd})
                report.released += len(dead)
            if progress is not None:
                progress(done, len(packs))
        LOG.info(
            "event=packs_reclaimed dir=%s packs=%d dead=%d released=%d bytes=%d",
            self._dir, report.packs, report.dead_records, report.released, report.bytes_freed,
        )  # fmt: skip
        return report

    def _is_dead(self, pack_id: int, record: Record) -> bool:
        """Whether *record* is no longer its key's record. Under the lock, with keys being
        put or deleted left alone: a record whose put is in flight is not in the locations
        yet, and must not look dead. A dead record never comes back (a put writes anew)."""
        with self._lock:
            if record.digest in self._pending:
                return False
            current = self._locations.get(record.digest)
            if current is None:
                current = self._locations.suspect(record.digest)
            return current != packed(pack_id, record.offset, record.length)

    def allocated(self) -> int:
        """Disk space the pack files occupy (blocks, not sizes: punched holes are free)."""
        with self._lock:
            return sum(allocated_bytes(p.fd) for p in self._packs.values())

    def _write(self, pack: _Pack, offset: int, header: bytes, payload: bytes) -> None:
        # Payload first, header last: a process killed in between leaves no record.
        if payload:
            _pwrite_all(pack.fd, payload, offset + HEADER_SIZE)
        _pwrite_all(pack.fd, header, offset)
        os.fdatasync(pack.fd)

    def _allocate(self, size: int) -> tuple[_Pack, int]:
        """Reserve the aligned space for a record (called with the lock held)."""
        if self._lock_fd is None:
            raise OSError(0, "the packs are appended to by another process")
        need = _aligned(size)
        if need > self._pack_size - BLOCK:
            raise ValueError(f"a record of {size} bytes does not fit a pack")
        pack = self._open
        # A loop, not an if: a spare made before the threshold was raised may be too small
        # for this record (packs grow, so one will fit).
        while pack is None or pack.next + need > pack.size:
            if pack is not None:
                self._retire(pack)
            pack = self._open = self._take_spare()
        offset = pack.next
        pack.next += need
        pack.inflight += 1
        if pack.next >= pack.size * _SPARE_AT:
            self.prepare_ahead()
        return pack, offset

    def _finished(self, pack: _Pack) -> None:
        pack.inflight -= 1
        if pack.inflight == 0:
            self._idle.notify_all()

    def _retire(self, pack: _Pack) -> None:
        pack.full = True
        if self._lock_fd is not None:
            self._background(self._seal, pack)  # write its sidecar once its appends are done

    def _take_spare(self) -> _Pack:
        if not self._spares:
            self._prepare()  # the background worker lagged: make one now
        return self._spares.pop(0)

    def _prepare(self) -> None:
        """Create the next pack, zero-filled and durable, unless a spare is ready."""
        with self._prep_lock:
            if self._spares:
                return
            pack_id = self._next_id
            path = os.path.join(self._dir, f"{pack_id:08d}.pack")
            size = min(self._pack_size, self._first_pack_size << min(pack_id - 1, 32))
            head = _PACK_HEAD.pack(PACK_MAGIC, VERSION, pack_id, size)
            zeros = memoryview(bytes(1 << 20))
            chunks: list[Chunk] = [head.ljust(BLOCK, b"\0")]
            left = size - BLOCK
            while left:
                chunks.append(zeros[: min(left, len(zeros))])
                left -= len(chunks[-1])
            write_atomically(path, chunks, self._tmp, overwrite=False)
            pack = self._open_pack(pack_id)
            self._packs[pack_id] = pack
            self._next_id = pack_id + 1
            self._spares.append(pack)

    def _seal(self, pack: _Pack) -> None:
        with self._lock:
            while pack.inflight:
                self._idle.wait()
        records = self._scan(pack)
        write_atomically(pack.path[: -len(".pack")] + ".idx", [encode_index(pack.id, records)],
                         self._tmp)  # fmt: skip
        self._merge_sealed({pack.id: records})

    def _merge_sealed(self, just_sealed: dict[int, list[Record]]) -> None:
        """Merge sealed packs into the locations table, lowest id first, up to the first
        one not sealed yet (seals finish out of order; later records must win).

        ``just_sealed``: records a seal has at hand (the others are read from sidecars).
        """
        with self._merge_lock:
            for pack_id in sorted(self._packs):
                if pack_id in self._merged:
                    continue
                pack = self._packs[pack_id]
                records = just_sealed.get(pack_id)
                if records is None and pack.full:
                    records = self._read_index(pack)
                if records is None:
                    return
                self._locations.merge(pack_id, records)
                self._merged.add(pack_id)

    def prepare_ahead(self) -> None:
        """Have a spare pack made in the background unless one is ready or under way."""
        if self._lock_fd is None or self._spares or self._preparing:
            return
        self._preparing = True
        self._background(self._prepare_spare)

    def _prepare_spare(self) -> None:
        try:
            self._prepare()
        finally:
            self._preparing = False

    def _background(self, task: Callable[..., None], *args: object) -> None:
        """Run *task* on a short-lived thread (errors are left for the hot path to meet:
        a missing spare is made on demand, a missing sidecar means a scan at open)."""

        def run() -> None:
            with contextlib.suppress(OSError):
                task(*args)

        thread = threading.Thread(target=run, name="packs", daemon=True)
        self._tasks = [t for t in self._tasks if t.is_alive()] + [thread]
        thread.start()

    def sync_background(self) -> None:
        """Wait until background preparing and sealing is done (tests, benchmarks)."""
        for thread in list(self._tasks):
            thread.join()

    def close(self) -> None:
        """Finish background work, close the packs and release the writer lock."""
        self.sync_background()
        self._locations.close()
        self._finalizer()


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
