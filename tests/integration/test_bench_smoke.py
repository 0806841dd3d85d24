"""Smoke test of the benchmark script ``bench/startup.py`` in its quick mode."""

from __future__ import annotations

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
        [sys.executable, str(SCRIPT), "--quick", "--no-established",
         "--output", str(output), "--raw", str(raw)],
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
        pytest.fail(f"bench/startup.py --quick ran longer than {TIMEOUT} s\n"
                    f"stderr:\n{stderr}", pytrace=False)
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
