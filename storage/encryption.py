"""Encryption at rest: AES-256-GCM per blob, and the key file it needs.

On-disk format of an encrypted blob (all integers unsigned, big-endian)::

    offset  size  field
    0       4     magic  b"GPBE"  (gridpacs blob, encrypted)
    4       1     format version (1)
    5       12    nonce, random per write
    17      n     AES-256-GCM ciphertext of the plaintext
    17+n    16    GCM authentication tag

The additional authenticated data is the blob's key (its ASCII hex address), so a file
copied or renamed to another address fails authentication instead of returning the wrong
instance. Key files hold exactly 32 random bytes, mode 0600. We use ``cryptography``'s
AESGCM; no cryptography of our own.
"""

from __future__ import annotations

import hashlib
import os
import stat
import warnings
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from storage.durable import fsync_dir
from storage.errors import EncryptionError, KeyFileError

KEY_SIZE = 32
MAGIC = b"GPBE"
VERSION = 1
NONCE_SIZE = 12
TAG_SIZE = 16
HEADER_SIZE = len(MAGIC) + 1 + NONCE_SIZE
OVERHEAD = HEADER_SIZE + TAG_SIZE
"""Bytes an encrypted file has beyond its plaintext."""


class InsecureKeyFileWarning(UserWarning):
    """A key file is readable or writable by group or others."""


def generate_key_file(path: Path) -> Path:
    """Write a new random 256-bit key to *path* (mode 0600), refusing to overwrite.

    Raises
    ------
    KeyFileError
        If *path* exists or cannot be written.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise KeyFileError(f"key file {path} already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise KeyFileError(f"cannot create key file {path}: {exc.strerror}") from exc
    try:
        os.fchmod(fd, 0o600)  # the umask can only narrow the mode; make it exact
        os.write(fd, os.urandom(KEY_SIZE))
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent.resolve())
    return path


def load_key(path: Path) -> bytes:
    """Read a 32-byte key from *path*.

    Warns with :class:`InsecureKeyFileWarning` when group or others may access the file.

    Raises
    ------
    KeyFileError
        If the file is missing, unreadable or not exactly 32 bytes.
    """
    path = Path(path)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"key file {path} is not a regular file")
        key = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from exc
    if len(key) != KEY_SIZE:
        raise KeyFileError(
            f"key file {path} must hold exactly {KEY_SIZE} bytes, it holds {len(key)} "
            "(create one with `gridpacs storage keygen`)"
        )
    if info.st_mode & 0o077:
        warnings.warn(
            f"key file {path} has mode {stat.S_IMODE(info.st_mode):04o}; "
            "it should be 0600 (chmod 600)",
            InsecureKeyFileWarning,
            stacklevel=2,
        )
    return key


def key_id(key: bytes) -> str:
    """A short public fingerprint of *key*, recorded by stores to detect the wrong key."""
    return hashlib.sha256(b"gridpacs blob key id\x00" + key).hexdigest()[:16]


class BlobCipher:
    """Seals and opens blobs in the format described in the module docstring."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise KeyFileError(f"an AES-256 key is {KEY_SIZE} bytes, got {len(key)}")
        self._aead = AESGCM(key)
        self.key_id = key_id(key)

    def seal(self, address: str, plaintext: bytes) -> tuple[bytes, bytes]:
        """Encrypt *plaintext* bound to *address*; returns (header, ciphertext+tag).

        Two pieces, so the writer can hand them to the file without joining them.
        """
        nonce = os.urandom(NONCE_SIZE)
        header = MAGIC + bytes((VERSION,)) + nonce
        return header, self._aead.encrypt(nonce, plaintext, address.encode("ascii"))

    def open(self, address: str, blob: bytes) -> bytes:
        """Decrypt a sealed *blob* stored under *address*, or raise :class:`EncryptionError`."""
        if len(blob) < OVERHEAD:
            raise EncryptionError(f"blob {address}: file truncated ({len(blob)} bytes)")
        if blob[: len(MAGIC)] != MAGIC:
            raise EncryptionError(f"blob {address}: not an encrypted gridpacs blob (bad magic)")
        if blob[len(MAGIC)] != VERSION:
            raise EncryptionError(f"blob {address}: unsupported format version {blob[len(MAGIC)]}")
        nonce = blob[len(MAGIC) + 1 : HEADER_SIZE]
        try:
            return self._aead.decrypt(
                nonce, memoryview(blob)[HEADER_SIZE:], address.encode("ascii")
            )
        except InvalidTag:
            raise EncryptionError(
                f"blob {address}: authentication failed (wrong key, or the file was "
                "tampered with or moved from another address)"
            ) from None
