"""Start-up and shutdown of large clusters: 100 to 1,000 workers on one machine.

Two measurements, each for every worker count given:

1. The product: ``mpirun -np R dask-mpi --workers-per-rank K`` with plain
   ``distributed.Worker`` objects (several per rank), timed by an outside
   client from the launch to "all N workers registered", and from
   ``Client.shutdown()`` to the launcher's exit.
2. The baseline, in one process: a Scheduler and N Workers started with
   distributed alone, then closed the way the established dask-mpi package
   closes a cluster (``Scheduler.close()`` with every worker attached),
   against closing the workers first. Registration is timed with
   distributed's own version check and with dask-mpi's replacement.

Run it inside a loopback-only network namespace (as root)::

    unshare -n bash -c 'ip link set lo up; python bench/scale.py'

It prints a table and writes it to docs/benchmarks.md under "Scale",
replacing the table of an earlier run and keeping the notes below it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _args import (
    check_output,
    non_negative_seconds,
    positive_int,
    positive_ints,
    positive_seconds,
)
from _report import replace_section
from _runner import byte_compile

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "benchmarks.md"
MARK = "<!-- scale benchmark -->"


def run_product(
    workers: int, per_rank: int, timeout: float, settle: float
) -> dict[str, float]:
    """Time one dask-mpi CLI job of ``workers`` workers; return the phases."""
    from distributed import Client

    ranks = 1 + math.ceil(workers / per_rank)
    directory = tempfile.mkdtemp(prefix="dask-mpi-scale-")
    scheduler_file = os.path.join(directory, "scheduler.json")
    mpirun = Path(sys.executable).parent / "mpirun"
    command = [
        str(mpirun),
        "-np",
        str(ranks),
        str(mpirun.parent / "dask-mpi"),
        "--scheduler-file",
        scheduler_file,
        "--workers-per-rank",
        str(per_rank),
        "--worker-class",
        "distributed.Worker",
        "--nthreads",
        "1",
        "--memory-limit",
        "0",
        "--no-dashboard",
        "--startup-timeout",
        str(int(timeout)),
    ]
    started = time.monotonic()
    job = subprocess.Popen(
        command,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(directory, "stderr.txt"), "w"),
    )
    try:
        while not os.path.exists(scheduler_file):
            if time.monotonic() - started > timeout or job.poll() is not None:
                raise RuntimeError(
                    f"the job of {workers} workers did not start within "
                    f"{timeout} s (exit code {job.poll()}); the end of its "
                    f"stderr ({directory}/stderr.txt):\n{_tail(directory)}"
                )
            time.sleep(0.05)
        expected = (ranks - 1) * per_rank
        with Client(scheduler_file=scheduler_file, timeout=timeout) as client:
            client.wait_for_workers(expected, timeout=timeout)
            registered = time.monotonic() - started
            count = len(client.nthreads())
            # Right after the last registration the ranks still send
            # heartbeats and the scheduler still records the last workers.
            time.sleep(settle)
            ending = time.monotonic()
            client.shutdown()
        job.wait(timeout)
        ended = time.monotonic() - ending
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    # The scheduler rank starts after every rank reached the start-up
    # exchange, so its own count runs from the last rank's start.
    if job.returncode != 0:
        raise RuntimeError(
            f"the job of {workers} workers ended with exit code {job.returncode}; "
            f"the end of its stderr ({directory}/stderr.txt):\n{_tail(directory)}"
        )
    log = Path(directory, "stderr.txt").read_text()
    shutil.rmtree(directory, ignore_errors=True)
    joined = re.search(r"Workers joined \d+/\d+ in ([\d.]+) s", log)
    return {
        "workers": count,
        "ranks": ranks,
        "registered": registered,
        "joined": float(joined.group(1)) if joined else math.nan,
        "shutdown": ended,
        "exit": job.returncode,
    }


def _tail(directory: str, lines: int = 20) -> str:
    """Return the last ``lines`` lines of a job's stderr.txt."""
    path = Path(directory, "stderr.txt")
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


async def _baseline(workers: int, deduplicate: bool, leave_first: bool) -> dict:
    from distributed import Scheduler, Worker

    from dask_mpi import _scale

    if deduplicate:
        _scale.deduplicate_version_check()
    async with Scheduler(host="127.0.0.1", port=0, dashboard=False) as scheduler:
        started = time.monotonic()
        servers = [
            Worker(scheduler.address, nthreads=1, memory_limit=0, host="127.0.0.1")
            for _ in range(workers)
        ]
        await asyncio.gather(*servers)
        registered = time.monotonic() - started
        started = time.monotonic()
        if leave_first:
            await asyncio.gather(
                *(w.close(executor_wait=False, nanny=False) for w in servers)
            )
        await scheduler.close()
        closed = time.monotonic() - started
        await asyncio.gather(*(w.close(executor_wait=False) for w in servers))
    return {"registered": registered, "close": closed}


def run_baseline(workers: int, deduplicate: bool, leave_first: bool) -> dict:
    """Run the in-process baseline in a fresh interpreter, so patches stay there."""
    code = (
        "import asyncio, json, sys; sys.path.insert(0, %r); import scale; "
        "print(json.dumps(asyncio.run(scale._baseline(%d, %r, %r))))"
        % (str(Path(__file__).parent), workers, deduplicate, leave_first)
    )
    output = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    return json.loads(output.stdout.strip().splitlines()[-1])


def describe_machine() -> str:
    import distributed

    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{datetime.date.today()}, {cpu}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, distributed {distributed.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workers",
        type=positive_ints,
        default="100,300,1000",
        help="comma-separated worker counts",
    )
    parser.add_argument(
        "--per-rank",
        type=positive_int,
        default=100,
        help="workers started on each worker rank",
    )
    parser.add_argument("--timeout", type=positive_seconds, default=600)
    parser.add_argument(
        "--settle",
        type=non_negative_seconds,
        default=2.0,
        help="seconds between all workers registered and Client.shutdown()",
    )
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--output", type=Path, default=PAGE)
    args = parser.parse_args()
    check_output(parser, args.output)
    counts = args.workers
    for count in counts:
        if count > args.per_rank and count % args.per_rank:
            parser.error(
                f"argument --workers: {count} is not a multiple of --per-rank "
                f"{args.per_rank}; give a multiple, or a count up to it"
            )
    # SystemExit runs the cleanup that ends a running job's processes.
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))

    byte_compile(sys.executable)
    rows = []
    for count in counts:
        product = run_product(
            count, min(args.per_rank, count), args.timeout, args.settle
        )
        row = {"n": count, **{f"ours_{k}": v for k, v in product.items()}}
        if not args.no_baseline:
            plain = run_baseline(count, deduplicate=False, leave_first=False)
            ours = run_baseline(count, deduplicate=True, leave_first=True)
            row.update(
                base_registered=plain["registered"],
                base_close=plain["close"],
                dedup_registered=ours["registered"],
                first_close=ours["close"],
            )
        rows.append(row)
        print(json.dumps(row), flush=True)

    table = render(rows, args.per_rank, args.settle)
    print(table)
    replace_section(args.output, MARK, "Scale", table)


def render(rows: list[dict], per_rank: int, settle: float) -> str:
    lines = [
        f"Machine: {describe_machine()}. Workers are plain `distributed.Worker`"
        f" objects, {per_rank} per rank, 1 thread each, on loopback. The client"
        f" calls `shutdown()` {settle:g} s after the last worker registered.",
        "",
        "| workers | ranks | dask-mpi: launch -> all registered (s) | "
        "dask-mpi: scheduler start -> all registered (s) | "
        "dask-mpi: shutdown() -> launcher exit (s) | in-process register, "
        "distributed's check (s) | same, dask-mpi's check (s) | "
        "Scheduler.close() with workers attached (s) | workers leave first (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:

        def cell(key: str) -> str:
            return f"{r[key]:.2f}" if key in r else "-"

        lines.append(
            f"| {r['ours_workers']} | {r['ours_ranks']} | {cell('ours_registered')}"
            f" | {cell('ours_joined')} | {cell('ours_shutdown')} | "
            f"{cell('base_registered')} | "
            f"{cell('dedup_registered')} | {cell('base_close')} | "
            f"{cell('first_close')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
