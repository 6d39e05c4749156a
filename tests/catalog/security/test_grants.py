"""Retrieve grants: what the catalog signs, a node accepts exactly as long as it should."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from catalog.security.errors import PermissionDenied
from catalog.security.grants import (
    GrantError,
    GrantKeyError,
    GrantSigner,
    GrantVerifier,
    load_public_key,
    load_signing_key,
    write_grant_key,
)

NOW = 1_800_000_000.0


@pytest.fixture
def keys(tmp_path: Path) -> tuple[GrantSigner, GrantVerifier, Path]:
    files = write_grant_key(tmp_path)
    assert stat.S_IMODE(files.private.stat().st_mode) == 0o600
    signer = GrantSigner(load_signing_key(files.private), ttl_s=60)
    return signer, GrantVerifier([load_public_key(files.public)]), tmp_path


def _sign(signer: GrantSigner, **extra: object) -> str:
    args: dict[str, object] = {
        "user": "alice",
        "token_id": "abc",
        "studies": ["1.2.3"],
        "collections": {"lung": False, "local": True},
        "now": NOW,
    }
    args.update(extra)
    return signer.sign(**args)[0]  # type: ignore[arg-type]


def test_a_signed_grant_covers_exactly_its_studies_and_collections(keys) -> None:
    signer, verifier, _ = keys
    grant = verifier.verify(_sign(signer), client_fingerprint=None, now=NOW + 10)
    assert (grant.user, grant.token_id) == ("alice", "abc")
    assert grant.allows("1.2.3", "lung", identified=False) is None
    assert grant.allows("1.2.3", "lung", identified=True) is not None  # reader: no identified
    assert grant.allows("1.2.3", "local", identified=True) is None  # admin on local
    assert grant.allows("9.9.9", "lung", identified=False) == "study not in grant"
    assert grant.allows("1.2.3", "brain", identified=False) is not None


def test_expired_tampered_foreign_and_garbage_grants_are_refused(keys, tmp_path: Path) -> None:
    signer, verifier, _ = keys
    text = _sign(signer)
    with pytest.raises(GrantError, match="expired"):
        verifier.verify(text, client_fingerprint=None, now=NOW + 60 + 31)
    body, _, sig = text.rpartition(".")
    prefix, _, payload = body.partition(".")
    forged = f"{prefix}.{payload[:-2]}{'A' if payload[-2] != 'A' else 'B'}{payload[-1]}.{sig}"
    with pytest.raises(GrantError):
        verifier.verify(forged, client_fingerprint=None, now=NOW)
    other = GrantSigner(load_signing_key(write_grant_key(tmp_path / "other").private))
    with pytest.raises(GrantError, match="unknown key"):
        verifier.verify(_sign(other), client_fingerprint=None, now=NOW)
    for garbage in ("", "gpg1", "gpg1.e30.AAAA", "x" * 7000):
        with pytest.raises(GrantError):
            verifier.verify(garbage, client_fingerprint=None, now=NOW)


def test_a_grant_bound_to_a_certificate_needs_that_certificate(keys) -> None:
    signer, verifier, _ = keys
    text = _sign(signer, client_fingerprint="aa" * 32)
    assert verifier.verify(text, client_fingerprint="aa" * 32, now=NOW).user == "alice"
    with pytest.raises(PermissionDenied):
        verifier.verify(text, client_fingerprint="bb" * 32, now=NOW)
    with pytest.raises(PermissionDenied):
        verifier.verify(text, client_fingerprint=None, now=NOW)


def test_key_files_are_checked(tmp_path: Path) -> None:
    files = write_grant_key(tmp_path)
    with pytest.raises(Exception, match="overwrite"):
        write_grant_key(tmp_path)
    files.private.chmod(0o644)
    with pytest.raises(GrantKeyError, match="chmod 600"):
        load_signing_key(files.private)
    with pytest.raises(GrantKeyError, match="not found"):
        load_public_key(tmp_path / "missing.pub")
    with pytest.raises(GrantKeyError):
        load_public_key(files.private)
