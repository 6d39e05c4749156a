"""Content-addressed blobs in a directory tree, written durably, verified on every read.

Layout under ``root`` (nothing in a path ever comes from DICOM content)::

    gridpacs-store.json       format marker: version, layout, encryption + key id
    tmp/                      temp files being written (same file system as the blobs)
    ab/cd/abcd…(64 hex)       one file per blob, fanned out by the first two hex pairs
                              (the 256 ``ab/`` exist from the start; ``cd/`` on demand)
    packs/                    small blobs appended to pack files (:mod:`storage.packs`),
                              when the store is opened with a ``pack_threshold``

A plaintext blob file holds exactly the stored bytes, so ``sha256sum`` of a file equals
its name; an encrypted one uses the format of :mod:`storage.encryption` (so does the
payload of a packed record).
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from storage.addressing import check_key, is_key
from storage.durable import (
    fsync_dir,
    make_dirs_durably,
    remove_stale_temp_files,
    write_atomically,
)
from storage.encryption import OVERHEAD, BlobCipher
from storage.errors import (
    BlobNotFound,
    ChecksumMismatch,
    DamagedRecord,
    EncryptionError,
    StorageError,
    error_from_os,
)
from storage.interfaces import BlobInfo, ScrubFinding, ScrubProgress
from storage.packs import DEFAULT_PACK_SIZE, FIRST_PACK_SIZE, PackStore, ReclaimReport

MARKER_NAME = "gridpacs-store.json"
TMP_DIR_NAME = "tmp"
FORMAT_NAME = "gridpacs-blobstore"
FORMAT_VERSION = 1
PACKED_FORMAT_VERSION = 2
"""A store that has (or may have) packs: older code, blind to packs, refuses to open it."""
PACKS_DIR_NAME = "packs"
LAYOUT = "sha256/2/2"
RECENT_WRITE_SECONDS = 60.0
"""A duplicate put of a file younger than this fsyncs its directory before returning."""
_HEX = frozenset("0123456789abcdef")


def _is_fanout_name(name: str) -> bool:
    return len(name) == 2 and name[0] in _HEX and name[1] in _HEX


class FilesystemBlobStore:
    """A :class:`~storage.interfaces.BlobStore` on a local (POSIX) file system.

    Parameters
    ----------
    root
        Directory of the store; created (durably) unless *create* is false.
    cipher
        Encrypts blobs at rest when given. A store remembers whether it is encrypted and
        with which key (by fingerprint), and refuses to open with a mismatching setting.
    create
        When false, a missing store is an error instead of being created (``scrub``).
    pack_threshold
        Blobs of at most this many bytes are appended to pack files (one ``fdatasync`` per
        put instead of ~3 journal commits); 0 keeps one file per blob. Packs already in the
        store are read (and their blobs deleted) whatever the threshold.
    pack_size
        Size of the preallocated pack files (the first ones are smaller, see
        :data:`storage.packs.FIRST_PACK_SIZE`).

    Raises
    ------
    StorageError
        The root is missing (``create=False``) or not a store of a known format.
    EncryptionError
        The key (or its absence) does not match the store.
    """

    def __init__(
        self,
        root: Path,
        cipher: BlobCipher | None = None,
        create: bool = True,
        *,
        pack_threshold: int = 0,
        pack_size: int = DEFAULT_PACK_SIZE,
    ) -> None:
        if pack_threshold < 0 or pack_threshold > pack_size // 4:
            raise ValueError(f"pack_threshold must be from 0 to pack_size / 4 ({pack_size // 4})")
        self.root = Path(root).absolute()
        self._root = str(self.root)
        self._cipher = cipher
        self._overhead = OVERHEAD if cipher is not None else 0
        self._tmp = os.path.join(self._root, TMP_DIR_NAME)
        self._pack_threshold = pack_threshold
        self._packs: PackStore | None = None
        try:
            self._open(create)
            self._open_packs(create, pack_size)
        except OSError as exc:
            raise error_from_os(exc, f"opening blob store {self.root}") from exc

    def _open_packs(self, create: bool, pack_size: int) -> None:
        directory = os.path.join(self._root, PACKS_DIR_NAME)
        wanted = self._pack_threshold > 0 and create
        if not wanted and not os.path.isdir(directory):
            return
        if wanted:
            self._upgrade_marker()
        self._packs = PackStore(
            directory,
            self._tmp,
            writable=create,
            pack_size=pack_size,
            first_pack_size=max(FIRST_PACK_SIZE, 4 * self._pack_threshold),  # fits any record
        )
        if wanted:
            self._packs.prepare_ahead()  # the first small put should not make the pack

    def _upgrade_marker(self) -> None:
        marker = self.root / MARKER_NAME
        found = json.loads(marker.read_bytes())
        if found["version"] != PACKED_FORMAT_VERSION:
            body = json.dumps({**found, "version": PACKED_FORMAT_VERSION}, indent=2).encode()
            write_atomically(str(marker), [body + b"\n"], self._tmp, mode=0o644)

    def close(self) -> None:
        """Finish background pack work and release the packs (and their writer lock).

        Optional: dropping the store does the same, less promptly.
        """
        if self._packs is not None:
            self._packs.close()

    @property
    def encrypted(self) -> bool:
        """Whether blobs are encrypted at rest."""
        return self._cipher is not None

    # -- opening -------------------------------------------------------------------------

    def _open(self, create: bool) -> None:
        marker = self.root / MARKER_NAME
        if not marker.exists():
            if not create:
                raise StorageError(f"{self.root} is not a gridpacs blob store (no {MARKER_NAME})")
            make_dirs_durably(self._tmp)
            body = json.dumps(self._marker(), indent=2).encode() + b"\n"
            # Another process may create the store meanwhile: then check its marker.
            with contextlib.suppress(FileExistsError):
                write_atomically(str(marker), [body], self._tmp, mode=0o644, overwrite=False)
        self._check_marker(marker)
        make_dirs_durably(self._tmp)
        if create:  # a store opened to inspect it (scrub) is not written to
            self._make_first_level()
        remove_stale_temp_files(self._tmp)

    def _make_first_level(self) -> None:
        """Create the 256 first-level fan-out directories, with one fsync of the root.

        Created on demand, the first blobs of a new store would each pay an extra fsync
        (of the root, for its new ``ab/``): ~1 in 4 of the first thousand writes.
        """
        created = False
        for n in range(256):
            with contextlib.suppress(FileExistsError):
                os.mkdir(os.path.join(self._root, f"{n:02x}"))
                created = True
        if created:
            fsync_dir(self._root)

    def _marker(self) -> dict[str, Any]:
        encryption = None
        if self._cipher is not None:
            encryption = {"algorithm": "AES-256-GCM", "key_id": self._cipher.key_id}
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "layout": LAYOUT,
            "encryption": encryption,
        }

    def _check_marker(self, marker: Path) -> None:
        try:
            found = json.loads(marker.read_bytes())
            ok = found["format"] == FORMAT_NAME and found["layout"] == LAYOUT
            version, encryption = found["version"], found["encryption"]
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError(f"{marker} is not a valid store marker: {exc}") from exc
        if not isinstance(encryption, dict | None):
            raise StorageError(f"{marker}: 'encryption' must be an object or null")
        if not ok or version not in (FORMAT_VERSION, PACKED_FORMAT_VERSION):
            raise StorageError(f"{marker}: unsupported store format or version {version!r}")
        self._check_encryption(None if encryption is None else encryption.get("key_id"))

    def _check_encryption(self, store_key_id: object) -> None:
        """*store_key_id* is None for a plaintext store."""
        if store_key_id is not None and self._cipher is None:
            raise EncryptionError(
                f"blob store {self.root} is encrypted (key id {store_key_id}); "
                "a key file is required"
            )
        if store_key_id is None and self._cipher is not None:
            raise EncryptionError(f"blob store {self.root} is not encrypted, but a key was given")
        if self._cipher is not None and store_key_id != self._cipher.key_id:
            raise EncryptionError(
                f"wrong key for blob store {self.root}: key id {self._cipher.key_id}, "
                f"the store was created with key id {store_key_id}"
            )

    # -- the BlobStore protocol ----------------------------------------------------------

    def _path(self, key: str) -> str:
        return f"{self._root}/{key[:2]}/{key[2:4]}/{key}"

    def put(self, data: bytes, digest: bytes | None = None) -> BlobInfo:
        """Store *data* durably and return its address; a no-op when already present.

        ``digest``: the SHA-256 of *data* when the caller has it (see ``BlobStore``).
        """
        if digest is None:
            digest = hashlib.sha256(data).digest()
        key = digest.hex()
        info = BlobInfo(key=key, size=len(data))
        path = self._path(key)
        packs = self._packs
        if packs is not None:
            if len(data) <= self._pack_threshold and packs.writable:
                # packs.put is itself a no-op for a held digest: one lookup per new blob
                if not self._present(path, len(data), key):
                    chunks = (data,) if self._cipher is None else self._cipher.seal(key, data)
                    try:
                        packs.put(digest, chunks)
                    except OSError as exc:
                        raise error_from_os(exc, f"writing blob {key} to a pack") from exc
                return info
            if packs.contains(digest):  # packed earlier (a higher threshold, or by the writer)
                return info
        if self._present(path, len(data), key):
            return info
        chunks = (data,) if self._cipher is None else self._cipher.seal(key, data)
        try:
            write_atomically(path, chunks, self._tmp)
        except OSError as exc:
            raise error_from_os(exc, f"writing blob {key}") from exc
        return info

    def _present(self, path: str, size: int, key: str) -> bool:
        """Whether the blob's file is present and whole (then durably so on return)."""
        try:
            # Present with the right size: trust it (cheap); scrub checks content. A
            # wrong size (e.g. a truncated file) is healed by rewriting.
            found = os.stat(path)
            if found.st_size == size + self._overhead:
                if time.time() - found.st_mtime < RECENT_WRITE_SECONDS:
                    # Its writer (another thread, or a process that just died) may not
                    # have fsynced the directory entry yet; the data itself was fsynced
                    # before the rename made it visible.
                    fsync_dir(os.path.dirname(path))
                return True
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise error_from_os(exc, f"checking blob {key}") from exc
        return False

    def get(self, key: str) -> bytes:
        """Return the blob's bytes, verified against *key*."""
        try:
            raw = self._read_packed(key, suspects=False)
            if raw is None:
                raw = self._read_file(key)
        except BlobNotFound:
            # A suspect record (payload failed its CRC at open) is read last: a whole file
            # of the same blob, if one was written since, wins; else get reports it corrupt.
            raw = self._read_packed(key, suspects=True)
            if raw is None:
                raise
        data = raw if self._cipher is None else self._cipher.open(key, raw)
        actual = hashlib.sha256(data).hexdigest()
        if actual != key:
            raise ChecksumMismatch(key, actual)
        return data

    def _read_packed(self, key: str, *, suspects: bool) -> bytes | None:
        if self._packs is None:
            return None
        digest = bytes.fromhex(check_key(key))
        where = self._packs.locate(digest, suspects=suspects)
        if where is None:
            return None
        try:
            return self._packs.read(digest, where)
        except ValueError as exc:
            raise DamagedRecord(key, str(exc)) from None
        except OSError as exc:
            raise error_from_os(exc, f"reading blob {key} from pack {where.pack}") from exc

    def _read_file(self, key: str) -> bytes:
        path = self._path(check_key(key))
        try:
            with open(path, "rb", buffering=0) as file:
                return file.readall()
        except FileNotFoundError:
            raise BlobNotFound(key) from None
        except OSError as exc:
            raise error_from_os(exc, f"reading blob {key}") from exc

    def exists(self, key: str) -> bool:
        """Whether a blob is stored under *key* (not verified)."""
        path = self._path(check_key(key))
        if self._packs is not None and self._packs.locate(bytes.fromhex(key)) is not None:
            return True
        return os.path.isfile(path)

    def delete(self, key: str) -> None:
        """Remove the blob durably; :class:`BlobNotFound` when absent."""
        if self.delete_many([key]):
            raise BlobNotFound(key)

    def delete_many(self, keys: Iterable[str]) -> list[str]:
        """Remove these blobs durably; the keys that were absent.

        Packed blobs' blocks are punched out of their packs (free at once), then durable
        tombstones appended, a sync per pack for all of them (:meth:`PackStore.delete_many`);
        blob files are unlinked, then each directory synced once.
        """
        wanted = list(dict.fromkeys(check_key(k) for k in keys))
        packed: set[str] = set()
        if self._packs is not None:
            held = [k for k in wanted if self._packs.locate(bytes.fromhex(k)) is not None]
            if held and not self._packs.writable:
                raise StorageError(f"blob {held[0]} is packed and another process owns the packs")
            try:
                packed = {d.hex() for d in self._packs.delete_many(bytes.fromhex(k) for k in held)}
            except OSError as exc:
                raise error_from_os(exc, f"deleting {len(held)} blobs from their packs") from exc
        absent: list[str] = []
        directories: set[str] = set()
        for key in wanted:
            path = self._path(key)
            try:
                os.unlink(path)
                directories.add(os.path.dirname(path))
            except FileNotFoundError:
                if key not in packed:
                    absent.append(key)
            except OSError as exc:
                raise error_from_os(exc, f"deleting blob {key}") from exc
        try:
            for directory in sorted(directories):
                fsync_dir(directory)
        except OSError as exc:
            raise error_from_os(exc, "syncing the directories of deleted blobs") from exc
        return absent

    def keys(self) -> Iterator[str]:
        """Every stored key (sorted); temp files and strays are ignored."""
        if self._packs is None:
            yield from self._file_keys()
            return
        packed = sorted(d.hex() for d in self._packs.digests())
        previous = None
        for key in heapq.merge(self._file_keys(), packed):
            if key != previous:
                yield key
            previous = key

    def _file_keys(self) -> Iterator[str]:
        for first in self._subdirs(self._root):
            for second in self._subdirs(os.path.join(self._root, first)):
                prefix = first + second
                directory = os.path.join(self._root, first, second)
                try:
                    names = sorted(os.listdir(directory))
                except FileNotFoundError:
                    continue
                for name in names:
                    if is_key(name) and name.startswith(prefix):
                        yield name

    @staticmethod
    def _subdirs(path: str) -> list[str]:
        try:
            with os.scandir(path) as entries:
                return sorted(e.name for e in entries if _is_fanout_name(e.name) and e.is_dir())
        except FileNotFoundError:
            return []

    def reclaim(self, progress: Callable[[int, int], None] | None = None) -> ReclaimReport:
        """Give back the blocks of dead packed records (see :meth:`PackStore.reclaim`).

        Raises :class:`StorageError` when another process (a running node) appends to the
        packs: only the writer knows which records are dead.
        """
        if self._packs is None:
            return ReclaimReport()
        if not self._packs.writable:
            raise StorageError(
                f"{self.root}: another process (a running node?) holds the packs' writer "
                "lock; stop it, then reclaim"
            )
        try:
            return self._packs.reclaim(progress)
        except OSError as exc:
            raise error_from_os(exc, f"reclaiming space in {self.root}") from exc

    @property
    def owns_packs(self) -> bool:
        """Whether this process may delete packed blobs (no packs, or it holds their
        writer lock); False next to a running node, which does its own deletes."""
        return self._packs is None or self._packs.writable

    def packed_bytes(self) -> int:
        """Disk space the pack files occupy (0 for a store without packs)."""
        return 0 if self._packs is None else self._packs.allocated()

    def scrub(self, progress: ScrubProgress | None = None) -> Iterator[ScrubFinding]:
        """Read and verify every blob; yield a finding for each bad one."""
        for key in self.keys():
            finding = self._verify(key)
            if finding is not None:
                yield finding
            if progress is not None:
                progress(key)

    def _verify(self, key: str) -> ScrubFinding | None:
        try:
            self.get(key)
        except BlobNotFound:
            return None  # deleted while we were scrubbing: not a fault
        except (ChecksumMismatch, EncryptionError) as exc:
            return ScrubFinding(key=key, problem=str(exc), kind="corrupt")
        except StorageError as exc:
            return ScrubFinding(key=key, problem=str(exc), kind="unreadable")
        return None
