"""Smoke tests of the benchmark scripts in ``bench/`` at their smallest sizes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.mpi

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "bench" / "startup.py"
# The quick mode runs 15 jobs: 30 s on 2 idle cores, 2 minutes or more when busy.
TIMEOUT = 600


@pytest.mark.timeout(TIMEOUT + 60)
def test_bench_quick_writes_tables(tmp_path):
    output = tmp_path / "benchmarks.md"
    raw = tmp_path / "raw.json"
    # On timeout the script gets SIGTERM, on which it kills its running job.
    process = subprocess.Popen(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--no-established",
            "--output",
            str(output),
            "--raw",
            str(raw),
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            stdout, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        pytest.fail(
            f"bench/startup.py --quick ran longer than {TIMEOUT} s\nstderr:\n{stderr}",
            pytrace=False,
        )
    details = f"stdout:\n{stdout}\nstderr:\n{stderr}"

    assert process.returncode == 0, details
    assert output.is_file(), details
    assert raw.is_file(), details
    report = output.read_text()
    assert "## Machine" in report
    assert "| N | package | launch → first result |" in report
    assert "| N | package | launch → client sees N-1 workers |" in report
    assert "| LocalCluster |" in report
    assert "| slope |" in report
    assert "## Targets" in report
    assert "failed" not in report, report


def _run_bench(args: list[str], timeout: float) -> None:
    """Run a benchmark script in its own process group and check it succeeded.

    On timeout the whole group is killed and the test fails.
    """
    process = subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{args[0]} ran longer than {timeout} s\n{stderr}", pytrace=False)

    details = f"stdout:\n{stdout}\nstderr:\n{stderr}"
    assert process.returncode == 0, details
    assert stderr == "", details


@pytest.mark.timeout(300)
def test_scale_bench_smallest_size(tmp_path):
    output = tmp_path / "benchmarks.md"
    script = str(REPO_ROOT / "bench" / "scale.py")

    _run_bench(
        [
            script,
            "--workers",
            "6",
            "--per-rank",
            "3",
            "--no-baseline",
            "--timeout",
            "120",
            "--output",
            str(output),
        ],
        timeout=240,
    )
    report = output.read_text()
    assert "## Scale" in report
    assert "| 6 | 3 |" in report, report
    assert "| nan |" not in report, report


@pytest.mark.timeout(300)
def test_imports_bench_writes_table(tmp_path):
    output = tmp_path / "benchmarks.md"

    _run_bench(
        [
            str(REPO_ROOT / "bench" / "imports.py"),
            "--reps",
            "1",
            "--output",
            str(output),
        ],
        timeout=240,
    )
    report = output.read_text()
    assert "## Imports" in report
    assert "| the package (every entry point) | `import dask_mpi` |" in report


@pytest.mark.timeout(300)
def test_tls_bench_writes_table(tmp_path):
    output = tmp_path / "benchmarks.md"

    _run_bench(
        [
            str(REPO_ROOT / "bench" / "tls.py"),
            "--reps",
            "1",
            "--mib",
            "4",
            "--output",
            str(output),
        ],
        timeout=240,
    )
    report = output.read_text()
    assert "## TLS" in report
    assert "TLSv1" in report, report
    rows = [line for line in report.splitlines() if line.startswith("| distributed")]
    assert len(rows) == 3, report
    assert "nan" not in report, report
    assert "×inf" not in report, report
