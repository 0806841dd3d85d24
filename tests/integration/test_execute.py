"""``execute()`` under a real ``mpirun``: every placement of the roles.

Every job runs ``tests/scripts/execute_report.py``, whose client function
prints a ``REPORT`` line describing the cluster and returns the sum it
computed. Each rank then prints what ``execute`` returned to it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from cluster_report import parse_report, worker_names
from distributed import Client
from mpirun import Result, assert_clean, assert_no_leftover_processes, run_mpi

pytestmark = pytest.mark.mpi

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "execute_report.py"
TIMEOUT = 60
# The client function sums the squares of 0..9.
SUM_OF_SQUARES = 285
TRACEBACK_LINE = r"^Traceback \(most recent call last\):$"


def run_execute(kwargs: dict[str, Any], np: int, *args: str) -> Result:
    return run_mpi(
        ["python", str(SCRIPT), json.dumps(kwargs), *args], np=np, timeout=TIMEOUT
    )


def assert_job_ended(result: Result, code: int = 0, ignore=()) -> None:
    assert result.returncode == code, result.describe()
    assert_clean(result, ignore)
    assert_no_leftover_processes(result)


def returned_values(result: Result) -> dict[int, str]:
    """Map each rank to the repr of what ``execute`` returned to it."""
    found = re.findall(
        r"^rank (\d) execute returned (.+)$", result.stdout, re.MULTILINE
    )
    return {int(rank): value for rank, value in found}


# Each case: world size, execute() arguments, expected worker names and the
# client rank.
PLACEMENTS = [
    pytest.param(
        6,
        {},
        ["dask_mpi-2", "dask_mpi-3", "dask_mpi-4", "dask_mpi-5"],
        1,
        id="scheduler_0_client_1",
    ),
    pytest.param(
        4,
        {"scheduler_rank": 1, "client_rank": 0},
        ["dask_mpi-2", "dask_mpi-3"],
        0,
        id="scheduler_1_client_0",
    ),
    pytest.param(
        2,
        {"scheduler_rank": 0, "client_rank": 0},
        ["dask_mpi-1"],
        0,
        id="shared_rank_0",
    ),
    pytest.param(
        3,
        {"scheduler_rank": 2, "client_rank": 2},
        ["dask_mpi-0", "dask_mpi-1"],
        2,
        id="shared_rank_2",
    ),
    pytest.param(
        3,
        {"exclusive_workers": False},
        ["dask_mpi-0", "dask_mpi-1", "dask_mpi-2"],
        1,
        id="inclusive_workers",
    ),
    pytest.param(
        1,
        {"exclusive_workers": False, "client_rank": 0},
        ["dask_mpi-0"],
        0,
        id="one_rank_cluster",
    ),
]


@pytest.mark.parametrize("np, kwargs, names, client_rank", PLACEMENTS)
def test_execute_placement(np, kwargs, names, client_rank):
    result = run_execute(kwargs, np)

    assert_job_ended(result)
    report = parse_report(result.stdout)
    assert worker_names(report) == names
    assert report["sum_of_squares"] == SUM_OF_SQUARES
    # The client rank gets the function's result, every other rank None.
    expected = {rank: "None" for rank in range(np)}
    expected[client_rank] = repr(SUM_OF_SQUARES)
    assert returned_values(result) == expected, result.describe()


def test_execute_client_function_raises():
    result = run_execute({}, 3, "raise")

    assert_job_ended(result, code=1, ignore=[TRACEBACK_LINE])
    report = parse_report(result.stdout)
    assert report["sum_of_squares"] == SUM_OF_SQUARES
    tracebacks = re.findall(TRACEBACK_LINE, result.stderr, re.MULTILINE)
    assert len(tracebacks) == 1, result.describe()
    assert "RuntimeError: client function failed on purpose" in result.stderr
    # The exception leaves execute() on the client rank, so it prints nothing.
    assert returned_values(result) == {0: "None", 2: "None"}, result.describe()


def test_execute_worker_name_prefix():
    result = run_execute({"worker_name": "batch"}, 4)

    assert_job_ended(result)
    report = parse_report(result.stdout)
    assert worker_names(report) == ["batch-2", "batch-3"]
    assert report["sum_of_squares"] == SUM_OF_SQUARES


def names_in(client: Client) -> list[str]:
    workers = client.scheduler_info()["workers"].values()
    return sorted(worker["name"] for worker in workers)


def run_joining_job(start_mpi, tmp_path: Path, cli_np: int, execute_np: int):
    """Start a CLI cluster, run an execute(scheduler=False) job that joins it.

    Returns the joining job's result, the worker names the CLI cluster has
    afterwards, and the CLI job's result after Client.shutdown().
    """
    scheduler_file = tmp_path / "scheduler.json"
    cluster = start_mpi(
        ["dask-mpi", "--scheduler-file", str(scheduler_file)], np=cli_np
    )
    cluster.wait_for_output(r"Workers joined \d+/\d+", timeout=TIMEOUT)

    kwargs = {"scheduler": False, "scheduler_file": str(scheduler_file)}
    joined = run_execute(kwargs, execute_np)

    with Client(scheduler_file=str(scheduler_file), timeout=TIMEOUT) as client:
        names_after = names_in(client)
        client.shutdown()
    return joined, names_after, cluster.wait(TIMEOUT)


def test_execute_joins_cli_scheduler(start_mpi, tmp_path):
    joined, names_after, cluster = run_joining_job(start_mpi, tmp_path, 2, 2)

    assert_job_ended(joined)
    report = parse_report(joined.stdout)
    # dask_mpi-1 belongs to the CLI cluster. The joining job's worker on rank
    # 0 carries a tag of its job, so it never collides with a cluster's name.
    own, joining = worker_names(report)[1], worker_names(report)[0]
    assert own == "dask_mpi-1"
    assert re.fullmatch(r"dask_mpi-0-[0-9a-f]{6}", joining), joining
    assert report["scheduler_address"].startswith("tcp://")
    assert report["sum_of_squares"] == SUM_OF_SQUARES
    assert returned_values(joined) == {0: "None", 1: repr(SUM_OF_SQUARES)}
    # The joining job's worker left with it; the CLI cluster kept its own.
    assert names_after == ["dask_mpi-1"]
    assert_job_ended(cluster)


def test_execute_join_names_distinct(start_mpi, tmp_path):
    joined, names_after, cluster = run_joining_job(start_mpi, tmp_path, 3, 3)

    assert_job_ended(joined)
    report = parse_report(joined.stdout)
    # The CLI cluster's 2 workers and the joining job's 2 (ranks 0 and 2).
    assert len(worker_names(report)) == 4
    assert names_after == ["dask_mpi-1", "dask_mpi-2"]
    assert_job_ended(cluster)
