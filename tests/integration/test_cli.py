"""The ``dask-mpi`` command under a real ``mpirun``: options, ending, bad input.

The cluster serves a ``distributed.Client`` in the test process, which finds
it through the scheduler file or the address in the start-up log, and ends it
with ``Client.shutdown()`` or a signal to mpirun.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cluster_report import describe_cluster, worker_names
from distributed import Client
from mpirun import (
    MPIJob,
    Result,
    assert_clean,
    assert_no_leftover_processes,
    process_ended,
)

pytestmark = pytest.mark.mpi

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
TIMEOUT = 60
# describe_cluster sums the squares of 0..9.
SUM_OF_SQUARES = 285
# Logged by the scheduler rank when every worker registered, or with the
# missing ranks when the start-up timeout passed first.
WORKERS_JOINED = r"Workers joined \d+/\d+"
EXIT_SIGTERM = 128 + signal.SIGTERM
USAGE_ERROR_PREFIX = "dask-mpi: error: "
# Open MPI 5.0.11's prterun sometimes prints this while it tears down a job
# whose rank exited non-zero; the line comes from the launcher.
OPENMPI_TEARDOWN_ERROR = r"PMIX ERROR: PMIX_ERR_UNREACH"


def assert_job_ended(result: Result, code: int = 0, ignore=()) -> None:
    assert result.returncode == code, result.describe()
    assert_clean(result, ignore)
    assert_no_leftover_processes(result)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_cluster(
    start_mpi, scheduler_file: Path, *options: str, np: int = 3
) -> MPIJob:
    """Start ``dask-mpi --scheduler-file FILE OPTIONS`` and wait for its workers."""
    job = start_mpi(
        ["dask-mpi", "--scheduler-file", str(scheduler_file), *options], np=np
    )
    job.wait_for_output(WORKERS_JOINED, timeout=TIMEOUT)
    return job


def report_and_shut_down(scheduler_file: Path) -> dict[str, Any]:
    """Describe the cluster in ``scheduler_file``, then shut it down."""
    with Client(scheduler_file=str(scheduler_file), timeout=TIMEOUT) as client:
        report = describe_cluster(client)
        client.shutdown()
    return report


def names_in(client: Client) -> list[str]:
    workers = client.scheduler_info()["workers"].values()
    return sorted(worker["name"] for worker in workers)


# ---------------------------------------------------------------- serving


def test_cli_serves_outside_client(start_mpi, tmp_path):
    scheduler_file = tmp_path / "scheduler.json"
    job = start_cluster(start_mpi, scheduler_file, np=4)
    # Read the file's mode now, because the shutdown removes the file.
    mode = stat.S_IMODE(os.stat(scheduler_file).st_mode)

    report = report_and_shut_down(scheduler_file)
    result = job.wait(TIMEOUT)

    assert_job_ended(result)
    assert mode == 0o600
    assert worker_names(report) == ["dask_mpi-1", "dask_mpi-2", "dask_mpi-3"]
    # distributed.Nanny is the CLI's default worker class.
    for worker in report["workers"]:
        assert worker["nanny"] is not None, worker
    assert report["dashboard_status"] == 200
    assert report["sum_of_squares"] == SUM_OF_SQUARES
    assert not scheduler_file.exists()


def test_cli_without_scheduler_file(start_mpi, launcher):
    job = start_mpi(["dask-mpi"], np=2, launcher=launcher)
    address = job.wait_for_output(r"Scheduler at (\S+)", timeout=TIMEOUT).group(1)
    job.wait_for_output(WORKERS_JOINED, timeout=TIMEOUT)

    with Client(address, timeout=TIMEOUT) as client:
        report = describe_cluster(client)
    result = job.stop(signal.SIGTERM, timeout=TIMEOUT)

    assert worker_names(report) == ["dask_mpi-1"]
    assert report["sum_of_squares"] == SUM_OF_SQUARES
    if launcher == "mpich":
        # MPICH's mpirun forwards SIGTERM to the ranks and passes on their
        # exit code, which dask-mpi sets to 128 + SIGTERM.
        assert_job_ended(result, code=EXIT_SIGTERM)
    else:
        # Open MPI 5.0's mpirun sends the ranks SIGTERM, kills them shortly
        # after, and exits with a code of its own (1 in Open MPI 5.0.11), so
        # only "non-zero" is portable.
        assert result.returncode != 0, result.describe()
        assert_clean(result, ignore=[OPENMPI_TEARDOWN_ERROR])
        assert_no_leftover_processes(result)


# ---------------------------------------------------------------- options


def check_names(*names: str) -> Callable[[dict[str, Any]], None]:
    def check(report: dict[str, Any]) -> None:
        assert worker_names(report) == list(names)

    return check


def check_workers(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def check(report: dict[str, Any]) -> None:
        for worker in report["workers"]:
            assert worker[field] == value, worker

    return check


def check_local_directory(tmp_path: Path) -> Callable[[dict[str, Any]], None]:
    def check(report: dict[str, Any]) -> None:
        for worker in report["workers"]:
            # distributed makes a directory of its own inside the given one.
            assert Path(worker["local_directory"]).is_relative_to(tmp_path), worker

    return check


def check_rank_directory(tmp_path: Path) -> Callable[[dict[str, Any]], None]:
    def check(report: dict[str, Any]) -> None:
        # Several workers of one rank share a scratch directory of the rank.
        for worker in report["workers"]:
            directory = Path(worker["local_directory"])
            assert directory.is_relative_to(tmp_path / "dask-mpi-rank-1"), worker

    return check


def check_dashboard_off(report: dict[str, Any]) -> None:
    # The scheduler's HTTP server stays up, without the dashboard pages.
    assert report["dashboard_status"] == 404


def check_loopback(report: dict[str, Any]) -> None:
    assert report["scheduler_address"].startswith("tcp://127.0.0.1:")


# Each case: world size, options, and a check of the cluster report that
# takes the test's tmp_path. "{tmp_path}" in an option is replaced by it.
OPTION_CASES = [
    pytest.param(
        2,
        ["--inclusive-workers"],
        lambda tmp: check_names("dask_mpi-0", "dask_mpi-1"),
        id="inclusive_workers",
    ),
    pytest.param(
        3,
        ["--scheduler-rank", "1"],
        lambda tmp: check_names("dask_mpi-0", "dask_mpi-2"),
        id="scheduler_rank_1",
    ),
    pytest.param(
        3,
        ["--name", "cli"],
        lambda tmp: check_names("cli-1", "cli-2"),
        id="name",
    ),
    pytest.param(
        2,
        ["--workers-per-rank", "2"],
        lambda tmp: check_names("dask_mpi-1-0", "dask_mpi-1-1"),
        id="workers_per_rank",
    ),
    pytest.param(
        3,
        ["--nthreads", "2"],
        lambda tmp: check_workers("nthreads", 2),
        id="nthreads",
    ),
    pytest.param(
        3,
        ["--memory-limit", "1GB"],
        lambda tmp: check_workers("memory_limit", 1_000_000_000),
        id="memory_limit",
    ),
    pytest.param(
        3,
        ["--worker-class", "distributed.Worker"],
        lambda tmp: check_workers("nanny", None),
        id="worker_class",
    ),
    pytest.param(
        3,
        ["--worker-options", '{"resources": {"GPU": 1}}'],
        lambda tmp: check_workers("resources", {"GPU": 1}),
        id="worker_options",
    ),
    pytest.param(
        3,
        ["--no-dashboard"],
        lambda tmp: check_dashboard_off,
        id="no_dashboard",
    ),
    pytest.param(
        3,
        ["--interface", "lo"],
        lambda tmp: check_loopback,
        id="interface",
    ),
    pytest.param(
        3,
        ["--local-directory", "{tmp_path}"],
        check_local_directory,
        id="local_directory",
    ),
    pytest.param(
        2,
        ["--local-directory", "{tmp_path}", "--workers-per-rank", "2"],
        check_rank_directory,
        id="local_directory_per_rank",
    ),
]


@pytest.mark.parametrize("np, options, make_check", OPTION_CASES)
def test_cli_option(start_mpi, tmp_path, np, options, make_check):
    scheduler_file = tmp_path / "scheduler.json"
    options = [option.replace("{tmp_path}", str(tmp_path)) for option in options]
    job = start_cluster(start_mpi, scheduler_file, *options, np=np)

    report = report_and_shut_down(scheduler_file)
    result = job.wait(TIMEOUT)

    assert_job_ended(result)
    assert report["sum_of_squares"] == SUM_OF_SQUARES
    make_check(tmp_path)(report)
    assert not scheduler_file.exists()


def test_cli_no_nanny_warns(start_mpi, tmp_path):
    scheduler_file = tmp_path / "scheduler.json"
    job = start_cluster(start_mpi, scheduler_file, "--no-nanny")

    report = report_and_shut_down(scheduler_file)
    result = job.wait(TIMEOUT)

    assert_job_ended(result)
    warnings = re.findall(r"FutureWarning: --no-nanny is deprecated", result.stderr)
    assert len(warnings) == 1, result.describe()
    assert worker_names(report) == ["dask_mpi-1", "dask_mpi-2"]
    check_workers("nanny", None)(report)
    assert report["sum_of_squares"] == SUM_OF_SQUARES


def test_cli_dashboard_address(start_mpi, tmp_path):
    scheduler_file = tmp_path / "scheduler.json"
    port = free_port()
    job = start_cluster(
        start_mpi, scheduler_file, "--dashboard-address", f"127.0.0.1:{port}"
    )

    report = report_and_shut_down(scheduler_file)
    result = job.wait(TIMEOUT)

    assert_job_ended(result)
    assert report["services"]["dashboard"] == port
    assert report["dashboard_status"] == 200
    assert report["sum_of_squares"] == SUM_OF_SQUARES


def test_cli_scheduler_port(start_mpi, tmp_path):
    scheduler_file = tmp_path / "scheduler.json"
    port = free_port()
    job = start_cluster(start_mpi, scheduler_file, "--scheduler-port", str(port))

    report = report_and_shut_down(scheduler_file)
    result = job.wait(TIMEOUT)

    assert_job_ended(result)
    assert report["scheduler_address"].endswith(f":{port}")
    assert report["sum_of_squares"] == SUM_OF_SQUARES


# ---------------------------------------------------------------- joining

# Logged by a --no-scheduler rank each time its workers have started.
JOINED = "Joined the scheduler at"
# Printed by slow_preload.py in a worker process that is still starting.
PRELOAD_DELAYING = "slow preload: delaying the worker start"
SLOW_PRELOAD_OPTIONS = json.dumps({"preload": [str(SCRIPTS / "slow_preload.py")]})


def start_joining_job(start_mpi, scheduler_file: Path, *options: str) -> MPIJob:
    return start_mpi(
        [
            "dask-mpi",
            "--no-scheduler",
            "--scheduler-file",
            str(scheduler_file),
            *options,
        ],
        np=1,
    )


def shut_down(scheduler_file: Path) -> None:
    with Client(scheduler_file=str(scheduler_file), timeout=TIMEOUT) as client:
        client.shutdown()


def test_cli_no_scheduler_rejoins(start_mpi, tmp_path):
    scheduler_file = tmp_path / "scheduler.json"
    first = start_cluster(start_mpi, scheduler_file, np=4)
    joined = start_joining_job(start_mpi, scheduler_file)
    joined.wait_for_output(JOINED, timeout=TIMEOUT)

    with Client(scheduler_file=str(scheduler_file), timeout=TIMEOUT) as client:
        client.wait_for_workers(4, timeout=TIMEOUT)
        first_names = names_in(client)
        client.shutdown()
    first_result = first.wait(TIMEOUT)

    # A new cluster on the same file; the joined worker finds it there.
    second = start_cluster(start_mpi, scheduler_file, np=2)
    joined.wait_for_output(f"(?s){JOINED}.*{JOINED}", timeout=TIMEOUT)
    with Client(scheduler_file=str(scheduler_file), timeout=TIMEOUT) as client:
        client.wait_for_workers(2, timeout=TIMEOUT)
        second_names = names_in(client)
        total = client.submit(sum, [1, 2, 3]).result(timeout=TIMEOUT)
        joined_result = joined.stop(signal.SIGTERM, timeout=TIMEOUT)
        client.shutdown()
    second_result = second.wait(TIMEOUT)

    own_names = ["dask_mpi-1", "dask_mpi-2", "dask_mpi-3"]
    joined_names = [name for name in first_names if name not in own_names]
    assert len(joined_names) == 1, first_names
    joined_name = joined_names[0]
    # The joining rank 0 is named apart from any name the cluster could use.
    assert re.fullmatch(r"dask_mpi-0-\w+", joined_name), first_names
    assert sorted(own_names + [joined_name]) == first_names
    assert_job_ended(first_result)

    assert second_names == sorted(["dask_mpi-1", joined_name])
    assert total == 6
    assert_job_ended(second_result)
    assert_job_ended(joined_result, code=EXIT_SIGTERM)
    assert not scheduler_file.exists()


def test_cli_no_scheduler_sigterm_during_join(start_mpi, tmp_path):
    scheduler_file = tmp_path / "scheduler.json"
    cluster = start_cluster(start_mpi, scheduler_file, np=2)
    joined = start_joining_job(
        start_mpi, scheduler_file, "--worker-options", SLOW_PRELOAD_OPTIONS
    )
    joined.wait_for_output(PRELOAD_DELAYING, timeout=TIMEOUT)

    joined_result = joined.stop(signal.SIGTERM, timeout=TIMEOUT)
    shut_down(scheduler_file)
    cluster_result = cluster.wait(TIMEOUT)

    assert_job_ended(cluster_result)
    assert_job_ended(joined_result, code=EXIT_SIGTERM)


def test_cli_no_scheduler_rejoins_after_early_loss(start_mpi, tmp_path):
    scheduler_file = tmp_path / "scheduler.json"
    first = start_cluster(start_mpi, scheduler_file, np=2)
    joined = start_joining_job(
        start_mpi, scheduler_file, "--worker-options", SLOW_PRELOAD_OPTIONS
    )
    joined.wait_for_output(PRELOAD_DELAYING, timeout=TIMEOUT)

    # The first scheduler goes away before the joining worker registered.
    shut_down(scheduler_file)
    first_result = first.wait(TIMEOUT)
    second = start_cluster(start_mpi, scheduler_file, np=2)
    with Client(scheduler_file=str(scheduler_file), timeout=TIMEOUT) as client:
        second_address = client.scheduler.address
        # Two preload delays of 2 s and two worker starts fit in 20 s.
        client.wait_for_workers(2, timeout=20)
        second_names = names_in(client)
        joined.wait_for_output(f"{JOINED} {second_address}", timeout=TIMEOUT)
        joined_result = joined.stop(signal.SIGTERM, timeout=TIMEOUT)
        client.shutdown()
    second_result = second.wait(TIMEOUT)

    assert_job_ended(first_result)
    assert len(second_names) == 2
    assert_job_ended(second_result)
    assert_job_ended(joined_result, code=EXIT_SIGTERM)


# ---------------------------------------------------------------- bad input


def assert_usage_error(result: Result, fragment: str) -> None:
    """Assert exit code 2 and one ``dask-mpi: error:`` line containing ``fragment``."""
    assert result.returncode == 2, result.describe()
    errors = [
        line
        for line in result.stderr.splitlines()
        if line.startswith(USAGE_ERROR_PREFIX)
    ]
    assert len(errors) == 1, result.describe()
    assert fragment in errors[0], result.describe()
    assert USAGE_ERROR_PREFIX not in result.stdout, result.describe()
    assert "Traceback" not in result.output, result.describe()
    assert_clean(result)
    assert_no_leftover_processes(result)


# Each case: world size, options, and text the error line must contain.
BAD_INPUTS = [
    pytest.param(1, [], "needs at least 2", id="too_few_ranks"),
    pytest.param(
        2,
        ["--scheduler-rank", "2"],
        "--scheduler-rank=2",
        id="scheduler_rank",
    ),
    pytest.param(
        2,
        ["--worker-options", "{bad"],
        "--worker-options=",
        id="worker_options_json",
    ),
    pytest.param(
        2,
        ["--worker-options", "[1]"],
        "--worker-options=",
        id="worker_options_list",
    ),
    pytest.param(
        2,
        ["--worker-class", "nosuch.Worker"],
        "--worker-class=",
        id="worker_class",
    ),
    pytest.param(2, ["--interface", "nosuch0"], "--interface=", id="interface"),
    pytest.param(
        2,
        ["--scheduler-file", "{tmp_path}/missing/scheduler.json"],
        "--scheduler-file=",
        id="scheduler_file_directory",
    ),
    pytest.param(2, ["--no-scheduler"], "--no-scheduler", id="no_scheduler"),
    pytest.param(2, ["--memory-limit", "lots"], "--memory-limit=", id="memory_limit"),
]


@pytest.mark.parametrize("np, options, fragment", BAD_INPUTS)
def test_cli_bad_input(start_mpi, tmp_path, np, options, fragment):
    options = [option.replace("{tmp_path}", str(tmp_path)) for option in options]

    result = start_mpi(["dask-mpi", *options], np=np).wait(TIMEOUT)

    assert_usage_error(result, fragment)


def test_cli_scheduler_port_taken(start_mpi):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        result = start_mpi(["dask-mpi", "--scheduler-port", str(port)], np=2).wait(
            TIMEOUT
        )

    assert_usage_error(result, f"--scheduler-port={port}")


def test_cli_shutdown_reruns_no_tasks(start_mpi, tmp_path):
    """Tasks of a worker that left are not run again while the job ends.

    Before, a task run again on a closing worker started its ``sleep``
    after that rank looked for leftover processes, and mpirun waited for it.
    """
    scheduler_file = tmp_path / "scheduler.json"
    job = start_cluster(start_mpi, scheduler_file)

    with Client(scheduler_file=str(scheduler_file), timeout=TIMEOUT) as client:
        # A lambda travels by value: workers cannot import the test module.
        start_sleep = lambda: __import__("subprocess").Popen(["sleep", "120"]).pid  # noqa: E731
        futures = [client.submit(start_sleep, pure=False) for _ in range(3)]
        pids = client.gather(futures)
        client.shutdown()
    result = job.wait(TIMEOUT)

    assert result.elapsed < 20, result.describe()
    assert_job_ended(result)
    assert "recomputed elsewhere" not in result.stderr
    for pid in pids:
        assert process_ended(pid), result.describe()

