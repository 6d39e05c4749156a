"""The BlobStore contract, run against memory, filesystem and encrypted filesystem stores."""

from __future__ import annotations

import hashlib
import threading

import pytest

from storage import BlobInfo, BlobNotFound, BlobStore, InvalidKey, StorageError
from tests.storage.conftest import StoreFactory


def test_implements_the_protocol(store: BlobStore) -> None:
    assert isinstance(store, BlobStore)


def test_put_returns_sha256_of_plaintext_and_get_round_trips(store: BlobStore) -> None:
    data = b"DICM" + bytes(range(256)) * 50
    info = store.put(data)
    assert info == BlobInfo(key=hashlib.sha256(data).hexdigest(), size=len(data))
    assert info.key == info.key.lower() and len(info.key) == 64
    assert store.get(info.key) == data
    assert store.exists(info.key)


def test_a_caller_supplied_digest_files_the_bytes_under_it(store: BlobStore) -> None:
    data = b"hashed by the caller" * 100
    digest = hashlib.sha256(data).digest()
    assert store.put(data, digest) == BlobInfo(key=digest.hex(), size=len(data))
    assert store.get(digest.hex()) == data
    # a wrong digest is the caller's bug, and reading it back says so
    wrong = hashlib.sha256(b"other bytes").digest()
    store.put(data + b"!", wrong)
    with pytest.raises(StorageError):
        store.get(wrong.hex())


def test_empty_blob(store: BlobStore) -> None:
    info = store.put(b"")
    assert info.size == 0
    assert store.get(info.key) == b""


def test_put_of_present_bytes_returns_the_same_info(store: BlobStore) -> None:
    first = store.put(b"same bytes")
    again = store.put(b"same bytes")
    assert again == first
    assert list(store.keys()) == [first.key]


def test_absent_key(store: BlobStore) -> None:
    missing = hashlib.sha256(b"never stored").hexdigest()
    assert not store.exists(missing)
    with pytest.raises(BlobNotFound) as caught:
        store.get(missing)
    assert caught.value.key == missing
    with pytest.raises(BlobNotFound):
        store.delete(missing)


def test_delete_removes(store: BlobStore) -> None:
    keep, gone = store.put(b"keep"), store.put(b"gone")
    store.delete(gone.key)
    assert not store.exists(gone.key)
    assert list(store.keys()) == [keep.key]
    with pytest.raises(BlobNotFound):
        store.get(gone.key)


def test_delete_many_removes_together_and_names_the_absent(
    store_factory: StoreFactory,
) -> None:
    store = store_factory()
    kept = [store.put(b"keep %d" % n).key for n in range(3)]
    gone = [store.put(b"gone %d" % n * 700).key for n in range(40)]  # packed where packs are
    gone.append(store.put(b"big" * 30_000).key)  # over the pack threshold: a file
    never = hashlib.sha256(b"never stored").hexdigest()
    assert store.delete_many([*gone, never, gone[0]]) == [never]
    assert sorted(store.keys()) == sorted(kept)
    assert store.delete_many(gone) == gone  # a second time: all absent
    reopened = store_factory()
    assert sorted(reopened.keys()) == sorted(kept)
    with pytest.raises(InvalidKey):
        reopened.delete_many([kept[0], "../../etc/passwd"])
    assert reopened.exists(kept[0])  # a bad key refuses the whole call


@pytest.mark.parametrize(
    "bad", ["", "../../etc/passwd", "A" * 64, "g" * 64, "a" * 63, "a" * 65, "ab/cd/" + "a" * 58]
)
def test_malformed_keys_are_refused_everywhere(store: BlobStore, bad: str) -> None:
    for call in (store.get, store.exists, store.delete):
        with pytest.raises(InvalidKey):
            call(bad)
    assert issubclass(InvalidKey, StorageError)


def test_keys_lists_every_blob_once(store: BlobStore) -> None:
    infos = {store.put(f"blob {i}".encode()).key for i in range(40)}
    listed = list(store.keys())
    assert sorted(listed) == sorted(infos)


def test_scrub_of_a_healthy_store_finds_nothing_and_reports_progress(store: BlobStore) -> None:
    keys = {store.put(bytes([i]) * (i + 1)).key for i in range(20)}
    seen: list[str] = []
    assert list(store.scrub(progress=seen.append)) == []
    assert sorted(seen) == sorted(keys)


def test_survives_reopening(store_factory: StoreFactory) -> None:
    info = store_factory().put(b"persisted")
    assert store_factory().get(info.key) == b"persisted"


def test_concurrent_puts_of_the_same_and_different_bytes(store: BlobStore) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(25):
                store.put(b"shared" * 100)
                store.put(f"own {n} {i}".encode())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert len(list(store.keys())) == 1 + 4 * 25
    assert list(store.scrub()) == []
