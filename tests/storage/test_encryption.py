"""Key files and the per-blob AES-256-GCM format."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from storage import (
    BlobCipher,
    EncryptionError,
    InsecureKeyFileWarning,
    KeyFileError,
    generate_key_file,
    key_of,
    load_key,
)
from storage.encryption import HEADER_SIZE, MAGIC, OVERHEAD


def test_generated_key_file_is_32_random_bytes_mode_0600(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # a permissive umask must not widen the mode
    try:
        a = generate_key_file(tmp_path / "a.key")
    finally:
        os.umask(old_umask)
    b = generate_key_file(tmp_path / "b.key")
    assert stat.S_IMODE(a.stat().st_mode) == 0o600
    assert len(load_key(a)) == 32
    assert load_key(a) != load_key(b)


def test_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    path = generate_key_file(tmp_path / "k")
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        generate_key_file(path)
    assert path.read_bytes() == before


def test_load_key_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        load_key(tmp_path / "missing.key")
    short = tmp_path / "short.key"
    short.write_bytes(b"0123456789abcdef0123456789abcdef\n")  # 33 bytes: a hex-ish text file
    short.chmod(0o600)
    with pytest.raises(KeyFileError, match="exactly 32 bytes, it holds 33"):
        load_key(short)
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_key(tmp_path)


def test_too_open_key_file_warns(tmp_path: Path) -> None:
    path = generate_key_file(tmp_path / "k")
    path.chmod(0o644)
    with pytest.warns(InsecureKeyFileWarning, match="0644"):
        assert len(load_key(path)) == 32


def _cipher() -> BlobCipher:
    return BlobCipher(os.urandom(32))


def test_seal_open_round_trip_with_fresh_nonces() -> None:
    cipher = _cipher()
    data = b"plaintext" * 100
    address = key_of(data)
    first = b"".join(cipher.seal(address, data))
    second = b"".join(cipher.seal(address, data))
    assert first[:4] == MAGIC and first[4] == 1
    assert len(first) == len(data) + OVERHEAD
    assert first[5:HEADER_SIZE] != second[5:HEADER_SIZE], "nonce must be random per blob"
    assert cipher.open(address, first) == cipher.open(address, second) == data


def test_wrong_key_is_an_error_not_garbage() -> None:
    data = b"secret"
    sealed = b"".join(_cipher().seal(key_of(data), data))
    with pytest.raises(EncryptionError, match="wrong key"):
        _cipher().open(key_of(data), sealed)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[:20], "truncated"),
        (lambda b: b"XXXX" + b[4:], "bad magic"),
        (lambda b: b[:4] + b"\x02" + b[5:], "version 2"),
        (lambda b: b[:10] + bytes([b[10] ^ 1]) + b[11:], "authentication failed"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "authentication failed"),
    ],
    ids=["truncated", "magic", "version", "nonce", "tag"],
)
def test_tampering_is_detected(mutate: object, message: str) -> None:
    cipher = _cipher()
    data = b"x" * 1000
    sealed = b"".join(cipher.seal(key_of(data), data))
    with pytest.raises(EncryptionError, match=message):
        cipher.open(key_of(data), mutate(sealed))  # type: ignore[operator]


def test_address_is_authenticated() -> None:
    cipher = _cipher()
    sealed = b"".join(cipher.seal(key_of(b"a"), b"a"))
    with pytest.raises(EncryptionError):
        cipher.open(key_of(b"b"), sealed)


def test_cipher_refuses_a_short_key() -> None:
    with pytest.raises(KeyFileError):
        BlobCipher(b"too short")
