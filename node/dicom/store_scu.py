"""C-STOREs the node sends (C-MOVE and C-GET sub-operations): stored bytes go out as stored.

pynetdicom's ``Association.send_c_store`` encodes the data set it is given with pydicom's
writer. A :class:`~node.services.retrieve.StoredDataset` already holds its data set's
bytes, so when the accepted transfer syntax encodes as the stored one (the same VR
encoding and byte order, not deflated) those bytes are sent as they are: the instance is
never parsed, and what the workstation receives is byte for byte what the modality sent.
Any other encoding is pydicom's, from the whole parsed data set.

pynetdicom has no hook for this: its ``association`` module's ``encode`` is wrapped, once,
for the pynetdicom versions :mod:`node.dicom.reactor` supports.
"""

from __future__ import annotations

from typing import Any

import pynetdicom.association
from pydicom.dataset import Dataset

from node.dicom.reactor import supported
from node.services.retrieve import StoredDataset

_original_encode = pynetdicom.association.encode


def encode(
    ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False
) -> bytes | None:
    """pynetdicom's ``encode``, passing a stored data set's own bytes through."""
    if isinstance(ds, StoredDataset):
        syntax = ds.file_meta.TransferSyntaxUID
        same = (syntax.is_implicit_VR, syntax.is_little_endian) == (
            is_implicit_vr,
            is_little_endian,
        )
        if same and not deflated and not syntax.is_deflated and ds.encoded is not None:
            return bytes(ds.encoded)
        ds = ds.parsed()
    result: Any = _original_encode(ds, is_implicit_vr, is_little_endian, deflated)
    return result


def install_stored_bytes_pass_through() -> None:
    """Make this process's C-STOREs send stored data sets' bytes as they are."""
    if supported():
        pynetdicom.association.encode = encode
