"""Decide whether received bytes are a complete, decodable DICOM dataset.

pydicom reads truncated input without complaint (a short last value is simply short), so
ingest checks the structure itself before anything is acknowledged.
"""

from __future__ import annotations

import io
from typing import Any

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from node.errors import UndecodableDataset

_SEQ_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_UNDEFINED = 0xFFFFFFFF


def read_complete(data: bytes) -> Dataset:
    """Parse Part 10 ``data`` and prove it is complete.

    Raises :class:`UndecodableDataset` with a human-readable reason otherwise.
    """
    try:
        ds = dcmread(io.BytesIO(data))
    except Exception as exc:  # pydicom raises a wide variety on hostile input
        raise UndecodableDataset(f"not a decodable DICOM dataset: {exc}") from exc
    if len(ds) == 0:
        raise UndecodableDataset("dataset is empty")
    _check_last_element(ds, len(data))
    return ds


def _check_last_element(ds: Dataset, total: int) -> None:
    """The last top-level element must end exactly where the bytes end.

    A truncated defined-length value is short; a truncated undefined-length value (encapsulated
    pixel data) is dropped by pydicom, which leaves the previous element ending early.
    """
    last_tag = max(ds.keys())
    elem: Any = ds.get_item(last_tag)
    if not isinstance(elem, RawDataElement) or elem.value_tell is None:
        return  # already decoded (e.g. a sequence): pydicom consumed it whole
    value = elem.value or b""
    if elem.length == _UNDEFINED:
        end = elem.value_tell + len(value) + len(_SEQ_DELIMITER)
    else:
        if len(value) < elem.length:
            raise UndecodableDataset(
                f"dataset truncated: element {last_tag} declares {elem.length} bytes, "
                f"{len(value)} present"
            )
        end = elem.value_tell + elem.length
    if end != total:
        raise UndecodableDataset(
            f"dataset truncated or corrupt: {total - end} bytes after element {last_tag} "
            "could not be decoded"
        )
