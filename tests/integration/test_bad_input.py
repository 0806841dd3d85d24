"""Bad input that test_cli.py does not cover: clear errors, and every rank ends.

Covered here: the MPI library mismatch (mpi4py reports one rank while the
launcher's environment announces more), a ``--no-scheduler`` job whose
scheduler file never appears or whose address has no scheduler, and the
API's world-size check.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mpirun import Result, assert_no_leftover_processes

pytestmark = pytest.mark.mpi

TIMEOUT = 60
TRACEBACK_LINE = r"^Traceback \(most recent call last\):$"
USAGE_ERROR_PREFIX = "dask-mpi: error: "


def run_without_mpirun(
    args: list[str], env: dict[str, str]
) -> subprocess.CompletedProcess:
    """Run ``args`` as a single process, without a launcher.

    The process runs in a session of its own, which is killed if it outlives
    TIMEOUT.
    """
    environment = {**os.environ, **env}
    environment["PATH"] = os.pathsep.join(
        [str(Path(sys.executable).parent), environment.get("PATH", "")]
    )
    process = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environment,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"timed out after {TIMEOUT} s\n{stdout}\n{stderr}")
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


# Open MPI's mpirun sets this variable, and the singleton start of MPICH,
# which mpi4py uses here, ignores it.
MISMATCH_ENV = {"OMPI_COMM_WORLD_SIZE": "4"}


def check_mismatch_message(text: str) -> None:
    assert "mpi4py sees a world of 1 rank" in text
    assert "the launcher started 4 processes (OMPI_COMM_WORLD_SIZE=4)" in text
    assert "mpi4py.get_config()" in text
    assert "mpirun --version" in text


def test_cli_mpi_mismatch():
    result = run_without_mpirun(["dask-mpi"], MISMATCH_ENV)

    assert result.returncode == 2, result.stderr
    errors = [
        line
        for line in result.stderr.splitlines()
        if line.startswith(USAGE_ERROR_PREFIX)
    ]
    assert len(errors) == 1, result.stderr
    check_mismatch_message(errors[0])
    assert "Traceback" not in result.stderr


def test_initialize_mpi_mismatch():
    script = "from dask_mpi import initialize\ninitialize()\n"

    result = run_without_mpirun([sys.executable, "-c", script], MISMATCH_ENV)

    assert result.returncode == 1, result.stderr
    tracebacks = re.findall(TRACEBACK_LINE, result.stderr, re.MULTILINE)
    assert len(tracebacks) == 1, result.stderr
    assert "dask_mpi.exceptions.MPIMismatchError: " in result.stderr
    check_mismatch_message(result.stderr)


def assert_one_rank_reports(result: Result, message: str) -> None:
    reports = [line for line in result.stderr.splitlines() if message in line]
    assert len(reports) == 1, result.describe()
    assert " rank 0 ERROR " in reports[0]


def test_no_scheduler_file_never_appears(start_mpi, tmp_path):
    scheduler_file = tmp_path / "scheduler.json"
    job = start_mpi(
        [
            "dask-mpi",
            "--no-scheduler",
            "--scheduler-file",
            str(scheduler_file),
            "--startup-timeout",
            "2",
        ],
        np=2,
    )

    result = job.wait(TIMEOUT)

    assert result.returncode == 1, result.describe()
    assert_one_rank_reports(
        result,
        f"Timed out after 2 s: scheduler file {scheduler_file} did not name a "
        "live scheduler. Start the scheduler first, check the address, or raise "
        "the timeout.",
    )
    assert "Traceback" not in result.output
    assert_no_leftover_processes(result)


def test_no_scheduler_dead_address(start_mpi):
    # Nothing listens on port 9 (discard) on this machine.
    address = "tcp://127.0.0.1:9"
    job = start_mpi(
        ["dask-mpi", "--no-scheduler", address, "--startup-timeout", "2"], np=2
    )

    result = job.wait(TIMEOUT)

    assert result.returncode == 1, result.describe()
    assert_one_rank_reports(
        result, f"Timed out after 2 s: no scheduler answered at {address}."
    )
    assert "Traceback" not in result.output
    assert_no_leftover_processes(result)


@pytest.mark.parametrize(
    "call, needed, why",
    [
        pytest.param(
            "initialize()",
            3,
            "initialize() needs a scheduler, a client and a worker rank",
            id="initialize",
        ),
        pytest.param(
            "execute(lambda: None)",
            3,
            (
                "the scheduler runs on rank 0, the client on rank 1, and at least "
                "one other rank must run a worker"
            ),
            id="execute",
        ),
    ],
)
def test_api_world_too_small(start_mpi, call, needed, why):
    script = f"from dask_mpi import execute, initialize\n{call}\n"

    result = start_mpi(["python", "-c", script], np=2).wait(TIMEOUT)

    assert result.returncode == 1, result.describe()
    # Every rank raises the same error, and only rank 0 prints it.
    tracebacks = re.findall(TRACEBACK_LINE, result.stderr, re.MULTILINE)
    assert len(tracebacks) == 1, result.describe()
    assert (
        "dask_mpi.exceptions.WorldTooSmallException: The MPI world has 2 rank(s) "
        f"but this layout needs at least {needed}: {why}" in result.stderr
    ), result.describe()
    assert_no_leftover_processes(result)
