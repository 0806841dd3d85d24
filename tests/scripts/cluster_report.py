"""Describe a running Dask cluster as one JSON line that tests parse.

The scripts in this folder print ``REPORT <json>`` from the client rank, and
the integration tests read that line from mpirun's standard output.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

REPORT_PREFIX = "REPORT "


def dashboard_status(port: int | None) -> int | None:
    """Return the HTTP status of the scheduler's ``/status`` page, or None.

    distributed's scheduler serves HTTP (``/health``, ``/metrics``) even with
    ``dashboard=False``, so the dashboard is off when ``/status`` is 404. The
    tests run every rank on one host, so the page is fetched from loopback.
    """
    if port is None:
        return None
    url = f"http://127.0.0.1:{port}/status"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def describe_cluster(client: Any) -> dict[str, Any]:
    """Return the scheduler's and workers' settings and the result of a task."""
    info = client.scheduler_info()
    worker_types = client.run(lambda dask_worker: type(dask_worker).__name__)
    workers = []
    for address, worker in info["workers"].items():
        workers.append(
            {
                "name": worker["name"],
                "nthreads": worker["nthreads"],
                "memory_limit": worker["memory_limit"],
                "local_directory": worker["local_directory"],
                "resources": worker["resources"],
                "nanny": worker["nanny"],
                "type": worker_types[address],
            }
        )
    workers.sort(key=lambda worker: str(worker["name"]))

    # The squares of 0..9 add up to 285.
    futures = client.map(lambda x: x * x, range(10))
    total = client.submit(sum, futures).result()
    return {
        "scheduler_address": info["address"],
        "services": info["services"],
        "dashboard_status": dashboard_status(info["services"].get("dashboard")),
        "workers": workers,
        "sum_of_squares": total,
    }


def print_report(client: Any) -> dict[str, Any]:
    """Print the cluster description as one ``REPORT`` line and return it."""
    report = describe_cluster(client)
    print(REPORT_PREFIX + json.dumps(report), flush=True)
    return report


def parse_report(stdout: str) -> dict[str, Any]:
    """Return the one ``REPORT`` line in ``stdout``, decoded.

    Raises AssertionError, quoting the output, unless exactly one such line
    is found.
    """
    lines = [
        line[len(REPORT_PREFIX) :]
        for line in stdout.splitlines()
        if line.startswith(REPORT_PREFIX)
    ]
    assert len(lines) == 1, f"expected one {REPORT_PREFIX!r} line in:\n{stdout}"
    return json.loads(lines[0])


def worker_names(report: dict[str, Any]) -> list[str]:
    """Return the sorted worker names of a decoded report."""
    return [worker["name"] for worker in report["workers"]]
