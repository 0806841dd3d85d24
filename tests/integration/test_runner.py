"""MPIRunner: the cluster as a context manager run by every rank."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mpirun import Result, assert_clean, assert_no_leftover_processes, run_mpi

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "runner_report.py"


def report_of(result: Result) -> dict:
    lines = [x for x in result.stdout.splitlines() if x.startswith("REPORT ")]
    assert len(lines) == 1, result.describe()
    return json.loads(lines[0].removeprefix("REPORT "))


@pytest.mark.parametrize(
    "np, options, workers",
    [
        (4, {}, ["dask_mpi-2", "dask_mpi-3"]),
        (1, {"client_rank": 0, "exclusive_workers": False}, ["dask_mpi-0"]),
        (3, {"client_rank": 0, "scheduler_rank": 2}, ["dask_mpi-1"]),
    ],
)
def test_runner_body_runs_on_client(np, options, workers):
    result = run_mpi(["python", str(SCRIPT), json.dumps(options)], np=np)

    assert result.returncode == 0, result.describe()
    assert_clean(result)
    assert_no_leftover_processes(result)
    report = report_of(result)
    assert report["sum"] == 6
    assert report["workers"] == workers
    assert report["address"].startswith("tls://127.0.0.1:")
    assert result.stdout.count("after the block") == 1


def test_runner_exception_fails_job():
    result = run_mpi(["python", str(SCRIPT), json.dumps({"name": "raise"})], np=3)

    assert result.returncode == 1, result.describe()
    assert result.stderr.count("Traceback") == 1, result.describe()
    assert "failure inside the runner block" in result.stderr
    assert "after the block" not in result.stdout
    assert_no_leftover_processes(result)


def test_runner_security_off_gives_tcp():
    options = {"security": False}
    result = run_mpi(["python", str(SCRIPT), json.dumps(options)], np=3)

    assert result.returncode == 0, result.describe()
    assert_clean(result)
    assert report_of(result)["address"].startswith("tcp://127.0.0.1:")
