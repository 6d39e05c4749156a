"""The roles' variable documentation stays complete (no Ansible run: YAML only, < 1 s).

``defaults/main.yml`` is each role's reference and ``meta/argument_specs.yml`` is what
Ansible validates at role start; a variable in one and not the other is either undocumented
or never checked.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROLES = Path(__file__).resolve().parents[2] / "ansible" / "roles"


def _roles() -> list[str]:
    return sorted(p.name for p in ROLES.iterdir() if (p / "defaults" / "main.yml").is_file())


def test_every_role_is_there() -> None:
    assert _roles() == [
        "gridpacs_catalog",
        "gridpacs_common",
        "gridpacs_node",
        "gridpacs_pki",
        "gridpacs_postgresql",
    ]


@pytest.mark.parametrize("role", _roles())
def test_argument_specs_list_exactly_the_defaults(role: str) -> None:
    defaults = yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((ROLES / role / "meta" / "argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    assert sorted(options) == sorted(defaults)
    for name, option in options.items():
        assert option.get("description"), f"{role}: {name} has no description"
        if "choices" in option:
            assert defaults[name] in option["choices"], name


@pytest.mark.parametrize("role", _roles())
def test_a_role_has_the_parts_a_kept_role_has(role: str) -> None:
    for part in ("defaults", "handlers", "meta", "tasks"):
        assert (ROLES / role / part / "main.yml").is_file(), f"{role}: no {part}/main.yml"
    meta = yaml.safe_load((ROLES / role / "meta" / "main.yml").read_text())
    assert meta["galaxy_info"]["role_name"] == role
