"""``initialize()`` under a real ``mpirun``: world sizes, parameters, endings.

Every job runs a script from ``tests/scripts``. Rank 0 runs the scheduler,
rank 1 the client, which prints a ``REPORT`` line describing the cluster, and
ranks 2 and up run workers.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cluster_report import parse_report, worker_names
from mpirun import Result, assert_clean, assert_no_leftover_processes, run_mpi

pytestmark = pytest.mark.mpi

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
TIMEOUT = 60
# The client scripts sum the squares of 0..9.
SUM_OF_SQUARES = 285
TRACEBACK_LINE = r"^Traceback \(most recent call last\):$"
# Open MPI 5.0.11's prterun sometimes prints this while it tears down a job
# whose rank exited non-zero; the line comes from the launcher.
OPENMPI_TEARDOWN_ERROR = r"PMIX ERROR: PMIX_ERR_UNREACH"


def run_script(script: str, *args: str, np: int, launcher: str = "mpich") -> Result:
    return run_mpi(
        ["python", str(SCRIPTS / script), *args],
        np=np,
        timeout=TIMEOUT,
        launcher=launcher,
    )


def run_initialize(kwargs: dict[str, Any], np: int = 3) -> Result:
    return run_script("initialize_report.py", json.dumps(kwargs), np=np)


def assert_job_ended(result: Result, code: int = 0, ignore=()) -> None:
    assert result.returncode == code, result.describe()
    assert_clean(result, ignore)
    assert_no_leftover_processes(result)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------- world sizes


@pytest.mark.parametrize("np", [3, 6])
def test_initialize_world_size(np):
    result = run_initialize({}, np=np)

    assert_job_ended(result)
    report = parse_report(result.stdout)
    assert worker_names(report) == [f"dask_mpi-{rank}" for rank in range(2, np)]
    assert report["sum_of_squares"] == SUM_OF_SQUARES
    # Batch jobs use TLS with throw-away credentials by default.
    assert report["scheduler_address"].startswith("tls://")
    assert report["dashboard_status"] == 200


def test_initialize_basic_launchers(launcher):
    # The world size 4 of the size test above, under MPICH and Open MPI.
    result = run_script("initialize_report.py", np=4, launcher=launcher)

    assert_job_ended(result)
    report = parse_report(result.stdout)
    assert worker_names(report) == ["dask_mpi-2", "dask_mpi-3"]
    assert report["sum_of_squares"] == SUM_OF_SQUARES


# ---------------------------------------------------------------- parameters


def check_nthreads(report: dict[str, Any]) -> None:
    assert [worker["nthreads"] for worker in report["workers"]] == [2, 2]


def check_memory_limit(report: dict[str, Any]) -> None:
    limits = [worker["memory_limit"] for worker in report["workers"]]
    assert limits == [1_000_000_000, 1_000_000_000]


def check_nanny(report: dict[str, Any]) -> None:
    for worker in report["workers"]:
        assert worker["nanny"] is not None, worker
        assert worker["type"] == "Worker", worker


def check_no_dashboard(report: dict[str, Any]) -> None:
    # The scheduler's HTTP server stays up, without the dashboard pages.
    assert report["dashboard_status"] == 404


def check_plain_tcp(report: dict[str, Any]) -> None:
    assert report["scheduler_address"].startswith("tcp://127.0.0.1:")


def check_loopback_interface(report: dict[str, Any]) -> None:
    assert "://127.0.0.1:" in report["scheduler_address"]


def check_tagged_worker(report: dict[str, Any]) -> None:
    for worker in report["workers"]:
        assert worker["type"] == "TaggedWorker", worker
        assert worker["nanny"] is None, worker


def check_gpu_resource(report: dict[str, Any]) -> None:
    for worker in report["workers"]:
        assert worker["resources"] == {"GPU": 1}, worker


PARAMETER_CASES: list[tuple[str, dict[str, Any], Callable[[dict], None]]] = [
    ("nthreads", {"nthreads": 2}, check_nthreads),
    ("memory_limit", {"memory_limit": "1GB"}, check_memory_limit),
    ("nanny", {"nanny": True}, check_nanny),
    ("worker_class_nanny", {"worker_class": "distributed.Nanny"}, check_nanny),
    ("dashboard_off", {"dashboard": False}, check_no_dashboard),
    ("protocol_tcp", {"protocol": "tcp"}, check_plain_tcp),
    ("interface_lo", {"interface": "lo"}, check_loopback_interface),
    # tests/scripts is sys.path[0] of the ranks, so its modules import.
    (
        "worker_class_custom",
        {"worker_class": "tagged_worker.TaggedWorker"},
        check_tagged_worker,
    ),
    (
        "worker_options",
        {"worker_options": {"resources": {"GPU": 1}}},
        check_gpu_resource,
    ),
]


@pytest.mark.parametrize(
    "kwargs, check",
    [pytest.param(kwargs, check, id=name) for name, kwargs, check in PARAMETER_CASES],
)
def test_initialize_parameter(kwargs, check):
    result = run_initialize(kwargs, np=4)

    assert_job_ended(result)
    report = parse_report(result.stdout)
    assert worker_names(report) == ["dask_mpi-2", "dask_mpi-3"]
    assert report["sum_of_squares"] == SUM_OF_SQUARES
    check(report)


def test_initialize_local_directory(tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    result = run_initialize({"local_directory": str(scratch)})

    assert_job_ended(result)
    report = parse_report(result.stdout)
    assert worker_names(report) == ["dask_mpi-2"]
    # distributed makes a directory of its own inside the one it was given.
    directory = Path(report["workers"][0]["local_directory"])
    assert directory.is_relative_to(scratch)


def test_initialize_dashboard_address():
    port = free_port()

    result = run_initialize({"dashboard_address": f"127.0.0.1:{port}"})

    assert_job_ended(result)
    report = parse_report(result.stdout)
    assert report["services"]["dashboard"] == port
    assert report["dashboard_status"] == 200
    assert report["sum_of_squares"] == SUM_OF_SQUARES


# ---------------------------------------------------------------- communicators


def test_initialize_sub_communicator():
    result = run_script("initialize_split.py", np=5)

    assert_job_ended(result)
    report = parse_report(result.stdout)
    # Rank 2 of the 3-rank communicator runs the only worker.
    assert worker_names(report) == ["dask_mpi-2"]
    assert report["sum_of_squares"] == SUM_OF_SQUARES
    # World ranks 3 and 4 form the other communicator: 3 + 4 = 7.
    plain = re.findall(
        r"plain MPI on world rank (\d): sub size 2, allreduce 7", result.stdout
    )
    assert sorted(plain) == ["3", "4"], result.describe()


def test_initialize_no_exit_keeps_comm():
    result = run_script("initialize_no_exit.py", np=4)

    assert_job_ended(result)
    returned = dict(re.findall(r"rank (\d) initialize returned (\w+)", result.stdout))
    assert returned == {"0": "False", "1": "True", "2": "False", "3": "False"}
    assert "client result 6" in result.stdout
    # Barrier and allreduce on COMM_WORLD after the cluster: 0+1+2+3 = 6.
    reduced = re.findall(r"rank (\d) allreduce 6", result.stdout)
    assert sorted(reduced) == ["0", "1", "2", "3"], result.describe()


def test_initialize_unguarded_script_nanny():
    result = run_script("initialize_unguarded.py", np=4)

    assert_job_ended(result)
    # One line per rank: no worker process ran the script again.
    started = re.findall(r"script started on rank (\d)", result.stdout)
    assert sorted(started) == ["0", "1", "2", "3"], result.describe()
    report = parse_report(result.stdout)
    assert worker_names(report) == ["dask_mpi-2", "dask_mpi-3"]
    check_nanny(report)
    assert report["sum_of_squares"] == SUM_OF_SQUARES


# ---------------------------------------------------------------- endings


def test_initialize_client_sys_exit():
    result = run_script("initialize_end.py", "exit", "3", np=3)

    assert_job_ended(result, code=3)
    assert "client result 6" in result.stdout


def test_initialize_client_exception(launcher):
    result = run_script("initialize_end.py", "raise", np=3, launcher=launcher)

    # dask-mpi exits 1 on the client rank and 0 on the others. So both
    # launchers return 1: Open MPI's mpirun reports the first non-zero code
    # of a rank, and MPICH's mpirun the bitwise OR of all codes.
    ignore = [TRACEBACK_LINE]
    if launcher == "openmpi":
        ignore.append(OPENMPI_TEARDOWN_ERROR)
    assert_job_ended(result, code=1, ignore=ignore)
    assert "client result 6" in result.stdout
    tracebacks = re.findall(TRACEBACK_LINE, result.stderr, re.MULTILINE)
    assert len(tracebacks) == 1, result.describe()
    assert "RuntimeError: client script failed on purpose" in result.stderr
