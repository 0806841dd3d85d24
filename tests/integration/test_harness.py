"""Tests of the mpirun helper itself, without dask_mpi."""

from __future__ import annotations

import os
import signal

import pytest

from mpirun import (
    MPIRunTimeout,
    Result,
    assert_clean,
    assert_no_leftover_processes,
    find_processes,
    run_mpi,
)

LIBRARY_NAMES = {"mpich": "MPICH", "openmpi": "Open MPI"}

PRINT_RANK = (
    "from mpi4py import MPI\n"
    "comm = MPI.COMM_WORLD\n"
    "print(comm.rank, comm.size, MPI.Get_library_version().splitlines()[0])\n"
)

# A rank that ignores SIGTERM, so only SIGKILL ends it.
IGNORE_SIGTERM_AND_SLEEP = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('sleeping', flush=True)\n"
    "time.sleep(600)\n"
)

# A rank that starts a detached process in a session of its own and exits.
# The process must not keep the rank's output pipes open, because mpirun waits
# for them to close.
SPAWN_DETACHED_AND_EXIT = (
    "import subprocess, sys\n"
    "subprocess.Popen(\n"
    "    [sys.executable, '-c', 'import time; time.sleep(600)'],\n"
    "    stdin=subprocess.DEVNULL,\n"
    "    stdout=subprocess.DEVNULL,\n"
    "    stderr=subprocess.DEVNULL,\n"
    "    start_new_session=True,\n"
    ")\n"
)


def make_result(stdout: str = "", stderr: str = "") -> Result:
    return Result(
        command=["mpirun"],
        returncode=0,
        stdout=stdout,
        stderr=stderr,
        elapsed=0.0,
        pgid=0,
        tag="none",
    )


def network_interfaces() -> list[str]:
    # /proc/self/net follows the reader's network namespace. /sys/class/net
    # does not, because it shows the namespace that mounted sysfs.
    with open("/proc/self/net/dev") as dev:
        lines = dev.read().splitlines()[2:]
    return sorted(line.split(":")[0].strip() for line in lines)


@pytest.mark.skipif(
    os.environ.get("CI") != "true", reason="only .ci/run sets up the namespace"
)
def test_suite_runs_in_loopback_namespace():
    assert network_interfaces() == ["lo"]


@pytest.mark.mpi
def test_ranks_form_one_world(launcher):
    result = run_mpi(["python", "-c", PRINT_RANK], np=3, launcher=launcher)

    assert result.returncode == 0, result.describe()
    lines = sorted(result.stdout.splitlines())
    assert [line.split()[:2] for line in lines] == [
        ["0", "3"],
        ["1", "3"],
        ["2", "3"],
    ], result.describe()
    for line in lines:
        assert LIBRARY_NAMES[launcher] in line, result.describe()
    assert_clean(result)
    assert_no_leftover_processes(result)


@pytest.mark.mpi
@pytest.mark.openmpi
def test_openmpi_library_version():
    result = run_mpi(
        ["python", "-c", "from mpi4py import MPI; print(MPI.Get_library_version())"],
        np=3,
        launcher="openmpi",
    )

    assert result.returncode == 0, result.describe()
    versions = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(versions) == 3, result.describe()
    for version in versions:
        assert version.startswith("Open MPI v5."), result.describe()
    assert_clean(result)


@pytest.mark.mpi
def test_timeout_kills_process_group(launcher):
    with pytest.raises(MPIRunTimeout) as excinfo:
        run_mpi(
            ["python", "-c", IGNORE_SIGTERM_AND_SLEEP],
            np=2,
            timeout=5,
            launcher=launcher,
        )

    result = excinfo.value.result
    message = str(excinfo.value)
    assert result.timed_out
    assert "timed out after 5 s" in message
    assert "sleeping" in result.stdout
    assert "sleeping" in message
    assert result.elapsed < 30, result.describe()
    assert find_processes(result.pgid, result.tag) == []
    assert_no_leftover_processes(result)


@pytest.mark.mpi
def test_background_job_stops_on_signal(start_mpi, launcher):
    job = start_mpi(
        ["python", "-c", "import time; print('ready', flush=True); time.sleep(600)"],
        np=2,
        launcher=launcher,
    )
    job.wait_for_output(r"(?ms)^ready$.*^ready$", timeout=60)
    commands = [info.cmdline for info in job.processes()]
    assert sum("time.sleep(600)" in command for command in commands) >= 2, commands

    result = job.stop(signal.SIGINT, timeout=30)

    assert not result.timed_out, result.describe()
    assert result.returncode != 0, result.describe()
    assert_no_leftover_processes(job)


@pytest.mark.mpi
def test_leftover_process_is_reported(launcher):
    result = run_mpi(
        ["python", "-c", SPAWN_DETACHED_AND_EXIT], np=1, launcher=launcher
    )

    assert result.returncode == 0, result.describe()
    commands = [info.cmdline for info in result.leftover_processes]
    assert len(commands) == 1, commands
    assert "time.sleep(600)" in commands[0]
    with pytest.raises(pytest.fail.Exception, match="outlived mpirun"):
        assert_no_leftover_processes(result)
    # run_mpi kills the leftover process after recording it.
    assert find_processes(result.pgid, result.tag) == []


@pytest.mark.parametrize(
    "line",
    [
        "Traceback (most recent call last):",
        "2026-01-01 00:00:00 - distributed.worker - ERROR - failed",
        "ERROR:root:failed",
        "CRITICAL:root:failed",
        "distributed.comm.core.CommClosedError: in <TCP (closed)>",
    ],
)
def test_assert_clean_rejects_error_line(line):
    result = make_result(stdout="starting\n", stderr=f"{line}\nstopping\n")

    with pytest.raises(pytest.fail.Exception, match="stderr:1: "):
        assert_clean(result)


def test_assert_clean_accepts_clean_output():
    result = make_result(
        stdout="INFO - scheduler at tcp://127.0.0.1:8786\n",
        stderr="distributed.worker - WARNING - slow\nMPI_ERRORS_RETURN set\n",
    )

    assert_clean(result)


def test_assert_clean_skips_ignored_line():
    result = make_result(stderr="distributed.worker - ERROR - expected\n")

    assert_clean(result, ignore=[r"ERROR - expected$"])
