"""Keyed pseudonyms: HMAC-SHA-256 with a per-site secret.

The same input and secret always give the same pseudonym (re-sends, other series, later
studies of the same patient line up); without the secret nobody can compute or invert
them, and another site's secret gives unrelated values (unlinkable across sites).
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from pathlib import Path

from anonymizer.errors import AnonymizationError

SECRET_BYTES = 32
#: Largest backwards shift applied to dates, in days (about ten years).
MAX_SHIFT_DAYS = 3650
_MEMO_SIZE = 4096


class Pseudonymizer:
    """Derives every pseudonym of one site from its secret."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < SECRET_BYTES:
            raise AnonymizationError(f"the site secret must be at least {SECRET_BYTES} bytes")
        self._secret = secret
        # The instances of a series repeat their patient, study and series values: a
        # small memo saves most HMACs of a folder (cleared when full; dict operations
        # are atomic, so threads may share it).
        self._memo: dict[tuple[str, str], bytes] = {}

    def _digest(self, domain: str, value: str) -> bytes:
        key = (domain, value)
        digest = self._memo.get(key)
        if digest is None:
            message = domain.encode("ascii") + b"\x00" + value.encode("utf-8")
            digest = hmac.digest(self._secret, message, "sha256")
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.clear()
            self._memo[key] = digest
        return digest

    def uid(self, value: str) -> str:
        """A UID under the ``2.25.`` root (128-bit integer, at most 44 characters)."""
        number = int.from_bytes(self._digest("uid", value.strip())[:16], "big")
        return f"2.25.{number}"

    def patient_id(self, value: str) -> str:
        """Pseudonymous PatientID: 16 upper-case hex digits after a ``GP`` prefix."""
        return "GP" + self._digest("patient-id", value.strip()).hex()[:16].upper()

    def patient_name(self, pseudonymous_id: str) -> str:
        """Pseudonymous PatientName, derived from the pseudonymous ID (one per patient)."""
        return f"ANON^{pseudonymous_id}"

    def text(self, domain: str, value: str) -> str:
        """A keyed pseudonym for any other text attribute (16 hex digits)."""
        return self._digest(domain, value.strip()).hex()[:16].upper()

    def date_shift_days(self, patient_key: str) -> int:
        """One shift per patient, in days, always backwards and never zero."""
        number = int.from_bytes(self._digest("date-shift", patient_key.strip())[:4], "big")
        return -(1 + number % MAX_SHIFT_DAYS)


def generate_secret(path: Path) -> bytes:
    """Create a new random secret file (hex, mode 0600); refuse to overwrite one."""
    secret = secrets.token_bytes(SECRET_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise AnonymizationError(f"{path} already exists; not overwriting a secret") from None
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(secret.hex() + "\n")
    return secret


def load_secret(path: Path) -> bytes:
    """Read a secret written by :func:`generate_secret` (hex text).

    Refuses a file that group or others may access, as the catalog refuses such a pepper:
    whoever reads a site secret computes every pseudonym of the site, and patient IDs are
    few enough to try them all (a re-identification key file decrypts the map outright).
    """
    try:
        mode = os.stat(path).st_mode
        text = Path(path).read_text(encoding="ascii").strip()
        secret = bytes.fromhex(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise AnonymizationError(f"cannot read secret file {path}: {exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AnonymizationError(
            f"secret file {path} is accessible by group/others "
            f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it"
        )
    if len(secret) < SECRET_BYTES:
        raise AnonymizationError(f"{path}: a secret needs at least {SECRET_BYTES} bytes")
    return secret
