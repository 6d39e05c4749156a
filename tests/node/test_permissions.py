"""``[dicom.permissions]``: what the configuration accepts and what each AE title gets
(the services refused on the wire: tests/integration/test_permissions.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import load_config
from node.errors import ConfigError
from node.permissions import EVERY_SERVICE, Permissions, Service


def _config(tmp_path: Path, **dicom: object) -> dict[str, object]:
    return {"data_dir": str(tmp_path), "dicom": dicom}


def test_ae_titles_not_listed_may_do_everything_unless_a_default_is_set(tmp_path: Path) -> None:
    cfg = load_config(None, _config(tmp_path, permissions={"CT1": ["store", "commit"]}))
    open_default = Permissions.from_config(cfg.dicom.permissions)
    assert open_default.allows("CT1", Service.STORE)
    assert not open_default.allows("CT1 ", Service.FIND)  # padded as it comes off the wire
    assert all(open_default.allows("WS9", service) for service in EVERY_SERVICE)

    cfg = load_config(None, _config(tmp_path, permissions={"WS1": ["find"], "*": []}))
    closed = Permissions.from_config(cfg.dicom.permissions)
    assert closed.allows("WS1", Service.FIND) and not closed.allows("WS1", Service.MOVE)
    assert not any(closed.allows("WS9", service) for service in EVERY_SERVICE)


@pytest.mark.parametrize(
    ("permissions", "allowed", "message"),
    [
        ({"CT1": ["store", "delete"]}, [], "'delete' is not one of store, find, move, get"),
        ({"A\\B": ["store"]}, [], "not a valid AE title"),
        ({"CT2": ["store"]}, ["CT1"], "permissions name CT2, which allowed_calling_aes"),
    ],
)
def test_mistakes_are_refused_at_start(
    tmp_path: Path, permissions: dict[str, list[str]], allowed: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("\\", "\\\\")):
        load_config(None, _config(tmp_path, permissions=permissions, allowed_calling_aes=allowed))
