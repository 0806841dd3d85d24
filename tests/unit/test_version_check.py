"""The scheduler's version check, replaced so each distinct record counts once."""

from __future__ import annotations

import inspect

import distributed
import pytest
from distributed import versions
from distributed.scheduler import Scheduler

from dask_mpi import _scale


def _record(**packages: str) -> dict:
    return {"host": {}, "packages": {"python": "3.11.7", **packages}}


def test_installed_distributed_is_the_patched_release():
    """Fails when distributed changes: re-check add_worker, then the list."""
    assert distributed.__version__.startswith(_scale._PATCHED_RELEASES)
    assert _scale._CHECK_CALL in inspect.getsource(Scheduler.add_worker)


def test_patchable_on_this_release():
    assert _scale.version_check_patchable() is True


@pytest.fixture
def patched(monkeypatch):
    original = versions.error_message
    monkeypatch.setattr(versions, "_dask_mpi", False, raising=False)
    monkeypatch.setattr(versions, "error_message", original)
    assert _scale.deduplicate_version_check() is True
    return original


def test_same_result_as_distributed_on_mismatch(patched):
    scheduler = _record(dask="1", numpy="2")
    workers = {f"w{i}": _record(dask="1", numpy="2") for i in range(50)}
    workers["odd"] = _record(dask="1", numpy="3")
    source = _record(dask="1", numpy="2")

    ours = versions.error_message(scheduler, workers, source, "worker-x")
    theirs = patched(scheduler, workers, source, "worker-x")

    assert ours == theirs
    assert "numpy" in ours["warning"]


def test_same_result_when_all_agree(patched):
    record = _record(dask="1")
    workers = {f"w{i}": _record(dask="1") for i in range(100)}

    assert versions.error_message(record, workers, record) == patched(
        record, workers, record
    )


def test_patch_applies_once(patched):
    assert _scale.deduplicate_version_check() is False


def test_same_result_through_joins_and_leaves(patched):
    scheduler = _record(dask="1", numpy="2")
    workers: dict[str, dict] = {}
    steps = [f"w{i}" for i in range(20)] + ["odd"] + [f"v{i}" for i in range(5)]
    for name in steps:
        numpy = "3" if name == "odd" else "2"
        workers[name] = _record(dask="1", numpy=numpy)
        ours = versions.error_message(scheduler, dict(workers), workers[name], name)
        theirs = patched(scheduler, dict(workers), workers[name], name)
        assert ours == theirs, name

    del workers["odd"]
    workers["late"] = _record(dask="1", numpy="2")
    ours = versions.error_message(scheduler, dict(workers), workers["late"], "late")
    theirs = patched(scheduler, dict(workers), workers["late"], "late")

    assert ours == theirs
    assert "numpy" not in ours.get("warning", "")


def test_same_result_after_several_join_at_once(patched):
    scheduler = _record(dask="1")
    first = {"a": _record(dask="1")}
    versions.error_message(scheduler, first, first["a"], "a")
    both = {**first, "b": _record(dask="2"), "c": _record(dask="1")}

    ours = versions.error_message(scheduler, both, both["c"], "c")

    assert ours == patched(scheduler, both, both["c"], "c")
    assert "dask" in ours["warning"]
