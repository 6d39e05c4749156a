"""Plan and load the instances a C-MOVE/C-GET sends."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Protocol

from pydicom import dcmread
from pydicom.dataset import Dataset

from node.errors import ArchiveUnavailable
from node.index.records import IndexQuery, StoredInstance

MAX_SUBOPERATIONS = 65_535
"""NumberOf*Suboperations are US: one retrieve cannot announce more (PS3.4 C.4.2.3)."""


class InstanceSource(Protocol):
    def instances(self, query: IndexQuery) -> Iterator[StoredInstance]: ...


class BlobReader(Protocol):
    def get(self, key: str) -> bytes: ...


class StoredDataset(Dataset):
    """An instance as stored, for sending: the elements the DIMSE layer reads (SOP class,
    SOP instance, the file meta's transfer syntax) and the data set's bytes as they lie
    in the Part 10 file.

    A C-MOVE or C-GET sends what the archive holds, so parsing a CT image into a pydicom
    data set only for pynetdicom to encode it back into the same bytes cost a millisecond
    per image. ``node.dicom.store_scu`` sends :attr:`encoded` as it is whenever the
    accepted transfer syntax encodes as the stored one; :meth:`parsed` gives the whole
    data set where it must change (decoding for a peer without codecs, VR conversion).
    """

    def __init__(self, part10: bytes) -> None:
        head = dcmread(io.BytesIO(part10), stop_before_pixels=True,
                       specific_tags=[_SOP_CLASS_UID, _SOP_INSTANCE_UID])  # fmt: skip
        super().__init__()
        self.file_meta = head.file_meta
        self.SOPClassUID = head.SOPClassUID
        self.SOPInstanceUID = head.SOPInstanceUID
        self._part10 = part10
        self.encoded: memoryview | None = None
        """The data set's bytes; None when the file meta has no group length to skip by."""
        if part10[128:140] == _META_LENGTH_HEADER:
            meta_length = int.from_bytes(part10[140:144], "little")
            self.encoded = memoryview(part10)[144 + meta_length :]

    def parsed(self) -> Dataset:
        """The whole stored data set, parsed."""
        return dcmread(io.BytesIO(self._part10))


_SOP_CLASS_UID, _SOP_INSTANCE_UID = 0x00080016, 0x00080018
#: "DICM", then (0002,0000) File Meta Information Group Length, UL, 4 bytes long
_META_LENGTH_HEADER = b"DICM\x02\x00\x00\x00UL\x04\x00"


class TooManyMatches(ArchiveUnavailable):
    """More instances matched than one retrieve can carry."""


class RetrieveService:
    """Turns a retrieve identifier into the instances to send, then their datasets."""

    def __init__(self, index: InstanceSource, store: BlobReader) -> None:
        self._index = index
        self._store = store

    def plan(self, query: IndexQuery) -> list[StoredInstance]:
        """Every instance the query selects, in study/series/instance order."""
        planned: list[StoredInstance] = []
        for inst in self._index.instances(query):
            planned.append(inst)
            if len(planned) > MAX_SUBOPERATIONS:
                raise TooManyMatches(
                    f"more than {MAX_SUBOPERATIONS} instances match; narrow the request"
                )
        return planned

    def load(self, inst: StoredInstance) -> StoredDataset:
        """The stored instance, checksum-verified by the blob store, ready to send."""
        return StoredDataset(self._store.get(inst.blob_key))

    def read_bytes(self, inst: StoredInstance) -> bytes:
        """The stored Part 10 bytes, checksum-verified."""
        return self._store.get(inst.blob_key)
