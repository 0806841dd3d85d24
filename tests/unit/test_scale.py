"""Limits and timeouts that grow with the number of workers."""

from __future__ import annotations

import subprocess
import sys

import dask.config

from dask_mpi import _scale

RAISE_FROM_256 = """
import resource
from dask_mpi import _scale
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
_scale.raise_open_file_limit(1000)
print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def test_open_file_limit_raised_for_workers():
    done = subprocess.run(
        [sys.executable, "-c", RAISE_FROM_256],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert int(done.stdout) == 1000 * 2 + 256


def test_timeouts_grow_with_workers():
    settings = _scale.scaled_timeouts(1000)

    assert settings["distributed.comm.timeouts.connect"] == "80s"
    assert settings["distributed.scheduler.worker-ttl"] == "500s"


def test_user_timeouts_kept():
    with dask.config.set({"distributed.comm.timeouts.connect": "45s"}):
        settings = _scale.scaled_timeouts(1000)

    assert "distributed.comm.timeouts.connect" not in settings


def test_monitor_interval_grows_with_workers_per_rank():
    assert _scale.shared_monitor(1) == {}
    assert _scale.shared_monitor(4) == {
        "distributed.admin.system-monitor.interval": "2000ms"
    }
    assert _scale.shared_monitor(100) == {
        "distributed.admin.system-monitor.interval": "5000ms"
    }


def test_monitor_interval_set_by_user_kept():
    with dask.config.set({"distributed.admin.system-monitor.interval": "1s"}):
        assert _scale.shared_monitor(100) == {}
