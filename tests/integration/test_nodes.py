"""Node-aware defaults on one host and on two simulated hosts.

Threads and ``auto`` memory are shared among the ranks of each host, so the
same job gets twice the memory per worker when its ranks are spread over two
hosts. The two-host tests use the two network namespaces of
``shared/tools/twonodes.sh`` (even ranks on node0, odd ranks on node1).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mpirun import Result, assert_clean, run_mpi

HERE = Path(__file__).resolve().parent
SCRIPTS = HERE.parent / "scripts"
REPO = HERE.parent.parent
TWO_NODES = REPO.parent / "shared" / "tools" / "twonodes.sh"


def report_of(result: Result) -> dict:
    lines = [x for x in result.stdout.splitlines() if x.startswith("REPORT ")]
    assert len(lines) == 1, result.describe()
    return json.loads(lines[0].removeprefix("REPORT "))


def run_on_two_nodes(script: Path, np: int, timeout: float = 90) -> Result:
    """Run ``mpirun -np NP RANKHOST python SCRIPT`` inside twonodes.sh."""
    mpirun = Path(sys.executable).parent / "mpirun"
    command = [
        str(TWO_NODES), "bash", "-c",
        f'exec "{mpirun}" -np {np} "$RANKHOST" "{sys.executable}" "{script}"',
    ]
    env = dict(os.environ, PATH=f"{mpirun.parent}:{os.environ['PATH']}")
    started = time.monotonic()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, env=env,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        timed_out = True
    result = Result(
        command, process.returncode, stdout, stderr, time.monotonic() - started,
        process.pid, "", timed_out,
    )
    assert not timed_out, result.describe()
    return result


def two_nodes_available() -> bool:
    return (
        os.geteuid() == 0 and TWO_NODES.exists() and shutil.which("ip") is not None
    )


def test_memory_shared_by_ranks_of_one_host():
    result = run_mpi(["python", str(SCRIPTS / "nodes_report.py")], np=5)

    assert result.returncode == 0, result.describe()
    assert_clean(result)
    report = report_of(result)
    total = psutil.virtual_memory().total
    assert len(report["workers"]) == 3
    for _, host, nthreads, memory in report["workers"]:
        assert host == "127.0.0.1"
        assert nthreads == max(1, len(os.sched_getaffinity(0)) // 5)
        assert memory == total // 5


@pytest.mark.skipif(not two_nodes_available(), reason="needs root and twonodes.sh")
def test_each_host_gets_its_own_share():
    result = run_on_two_nodes(SCRIPTS / "nodes_report.py", np=6)

    assert result.returncode == 0, result.describe()
    assert_clean(result)
    report = report_of(result)
    total = psutil.virtual_memory().total
    hosts = {host for _, host, _, _ in report["workers"]}
    assert hosts == {"198.51.100.10", "198.51.100.11"}
    for _, _, nthreads, memory in report["workers"]:
        assert nthreads == 1
        assert memory == total // 3
    assert report["scheduler"].startswith("tls://198.51.100.10:")
    assert report["client_host"] == "node1"


def test_stand_in_gpu_worker_class_gets_its_options(start_mpi, tmp_path):
    scheduler_file = tmp_path / "s.json"
    options = '{"rmm_pool_size": "1GB", "device_memory_limit": 0.8}'
    job = start_mpi(
        [
            "dask-mpi", "--scheduler-file", str(scheduler_file),
            "--worker-class", "recording_worker.RecordingWorker",
            "--worker-options", options,
        ],
        np=3, env={"PYTHONPATH": str(SCRIPTS)},
    )
    from distributed import Client

    deadline = time.monotonic() + 60
    while not scheduler_file.exists():
        assert time.monotonic() < deadline, "no scheduler file after 60 s"
        time.sleep(0.1)
    with Client(scheduler_file=str(scheduler_file), timeout=30) as client:
        client.wait_for_workers(2, timeout=30)
        recorded = client.run(lambda dask_worker: dask_worker.recorded)
        kinds = client.run(lambda dask_worker: type(dask_worker).__name__)
        client.shutdown()
    result = job.wait(30)

    assert list(recorded.values()) == [
        {"rmm_pool_size": "1GB", "device_memory_limit": 0.8}
    ] * 2
    assert set(kinds.values()) == {"RecordingWorker"}
    assert result.returncode == 0, result.describe()
    assert_clean(result)
