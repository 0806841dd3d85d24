"""The configuration reference lists every key of mpi.yaml with its default."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from dask_mpi import _options

ROOT = Path(__file__).resolve().parents[2]
PAGE = (ROOT / "docs" / "configuration.md").read_text()
DEFAULTS = yaml.safe_load(Path(_options._YAML).read_text())["mpi"]


def _shown(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if value == {}:
        return "{}"
    if value == []:
        return "[]"
    return str(value)


@pytest.mark.parametrize("key", sorted(DEFAULTS))
def test_page_lists_key_with_default(key):
    row = re.search(rf"^\| `mpi\.{re.escape(key)}` \| `([^`]*)` \|", PAGE, re.M)

    assert row is not None, f"docs/configuration.md has no row for mpi.{key}"
    assert row.group(1) == _shown(DEFAULTS[key])


def test_page_lists_no_unknown_key():
    listed = set(re.findall(r"^\| `mpi\.([a-z-]+)` \|", PAGE, re.M))

    assert listed == set(DEFAULTS)
