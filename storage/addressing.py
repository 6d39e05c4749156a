"""Content addresses: the SHA-256 of a blob's plaintext, as 64 lower-case hex digits."""

from __future__ import annotations

import hashlib
import re

from storage.errors import InvalidKey

KEY_LENGTH = 64
_KEY_RE = re.compile(r"[0-9a-f]{64}")


def key_of(data: bytes | bytearray | memoryview) -> str:
    """Return the content address of *data*."""
    return hashlib.sha256(data).hexdigest()


def is_key(name: str) -> bool:
    """Whether *name* is a well-formed content address."""
    return _KEY_RE.fullmatch(name) is not None


def check_key(key: str) -> str:
    """Return *key* unchanged, or raise :class:`InvalidKey`.

    Every public method that turns a caller's key into a path calls this first, so a key
    like ``"../../etc/passwd"`` can never reach the file system.
    """
    if not isinstance(key, str) or _KEY_RE.fullmatch(key) is None:
        raise InvalidKey(f"not a blob key (64 lower-case hex digits): {key!r}")
    return key
