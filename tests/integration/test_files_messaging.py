"""Launching without mpi4py: ranks from the launcher, messages through files.

Two launchers stand in for sites where mpi4py cannot be used: MPICH's
mpirun with mpi4py hidden from Python, and plain processes started by the
test with the variables Slurm's srun sets (``srun --mpi=none``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from distributed import Client
from mpirun import Result, assert_clean, assert_no_leftover_processes, run_mpi

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
HIDE_MPI4PY = {"PYTHONPATH": str(SCRIPTS / "no_mpi4py")}
TIMEOUT = 60


def report_of(result: Result) -> dict:
    lines = [x for x in result.stdout.splitlines() if x.startswith("REPORT ")]
    assert len(lines) == 1, result.describe()
    return json.loads(lines[0].removeprefix("REPORT "))


def test_batch_job_without_mpi4py(tmp_path):
    scheduler_file = tmp_path / "scheduler.json"
    result = run_mpi(
        ["python", str(SCRIPTS / "files_batch.py"), str(scheduler_file)],
        np=4,
        env=HIDE_MPI4PY,
    )

    assert result.returncode == 0, result.describe()
    assert_clean(result)
    assert_no_leftover_processes(result)
    report = report_of(result)
    assert report["sum"] == 9
    assert report["workers"] == ["dask_mpi-2", "dask_mpi-3"]
    assert report["mpi4py"] is False
    assert "ranks talk through files" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_without_mpi4py(start_mpi, tmp_path):
    scheduler_file = tmp_path / "scheduler.json"
    job = start_mpi(
        ["dask-mpi", "--scheduler-file", str(scheduler_file)], np=3, env=HIDE_MPI4PY
    )
    deadline = time.monotonic() + TIMEOUT
    while not scheduler_file.exists():
        assert time.monotonic() < deadline, "no scheduler file"
        time.sleep(0.1)
    with Client(scheduler_file=str(scheduler_file), timeout=TIMEOUT) as client:
        client.wait_for_workers(2, timeout=TIMEOUT)
        total = client.submit(sum, [1, 2]).result()
        client.shutdown()
    result = job.wait(TIMEOUT)

    assert total == 3
    assert result.returncode == 0, result.describe()
    assert_clean(result)
    assert not scheduler_file.exists()
    assert list(tmp_path.iterdir()) == []


def test_files_messaging_needs_scheduler_file():
    result = run_mpi(["dask-mpi", "--messaging", "files"], np=2)

    assert result.returncode == 2, result.describe()
    errors = [x for x in result.stderr.splitlines() if "dask-mpi: error:" in x]
    assert len(errors) == 1, result.describe()
    assert "--scheduler-file" in errors[0]
    assert "Traceback" not in result.output


def run_as_srun(args: list[str], ntasks: int, tmp_path: Path) -> list[Result]:
    """Start ``ntasks`` processes with the variables srun sets, like srun."""
    processes = []
    for rank in range(ntasks):
        env = dict(
            os.environ,
            SLURM_JOB_ID="4242",
            SLURM_STEP_ID="0",
            SLURM_PROCID=str(rank),
            SLURM_NTASKS=str(ntasks),
            SLURM_STEP_NUM_TASKS=str(ntasks),
            **HIDE_MPI4PY,
        )
        out = open(tmp_path / f"out{rank}.txt", "w+")
        err = open(tmp_path / f"err{rank}.txt", "w+")
        process = subprocess.Popen(
            args, env=env, stdout=out, stderr=err, start_new_session=True
        )
        processes.append((process, out, err))
    results = []
    deadline = time.monotonic() + TIMEOUT
    for process, out, err in processes:
        try:
            process.wait(max(deadline - time.monotonic(), 1))
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            for other, _, _ in processes:
                if other.poll() is None:
                    os.killpg(other.pid, signal.SIGKILL)
            process.wait()
        out.seek(0)
        err.seek(0)
        results.append(
            Result(
                args,
                process.returncode,
                out.read(),
                err.read(),
                0.0,
                process.pid,
                "",
                timed_out,
            )
        )
    return results


def test_synthetic_slurm_batch_job(tmp_path):
    scheduler_file = tmp_path / "shared" / "scheduler.json"
    scheduler_file.parent.mkdir()
    args = [sys.executable, str(SCRIPTS / "files_batch.py"), str(scheduler_file)]

    results = run_as_srun(args, 3, tmp_path)

    for rank, result in enumerate(results):
        assert not result.timed_out, result.describe()
        assert result.returncode == 0, f"rank {rank}: {result.describe()}"
        assert_clean(result)
    report = report_of(results[1])
    assert report["sum"] == 9
    assert report["workers"] == ["dask_mpi-2"]
    assert list(scheduler_file.parent.iterdir()) == []
