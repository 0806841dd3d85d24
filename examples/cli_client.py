"""Connect to a cluster started by the dask-mpi command and run the carrier analysis.

Start the cluster in the background: rank 0 runs the scheduler and writes its
address to sched.json, and the other 3 ranks run workers.

    mpirun -np 4 dask-mpi --scheduler-file sched.json &

Then run this client. It waits for sched.json to appear, so it may start
before the cluster is up. --shutdown stops the scheduler and workers when the
analysis is done, which also ends the mpirun job.

    python examples/cli_client.py sched.json --workers 3 --shutdown

The analysis functions come from flights.py in this directory.
"""

import argparse
import os
import time

from distributed import Client

from flights import carrier_delay_stats, find_data_dir, format_carrier_stats
from flights import load_airlines, load_flights


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "scheduler_file", help="scheduler file written by dask-mpi --scheduler-file"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="number of workers to wait for before the analysis starts (default: 1)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds to wait for each of the scheduler file, the connection to "
        "the scheduler and the workers (default: 60)",
    )
    parser.add_argument(
        "--shutdown",
        action="store_true",
        help="shut down the scheduler and workers after the analysis",
    )
    return parser.parse_args()


def wait_for_file(path: str, timeout: float) -> None:
    """Poll until path exists, or exit with an error after timeout seconds."""
    # Client(scheduler_file=...) polls for the file too, but without a time limit.
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise SystemExit(
                f"Scheduler file {path} not found after {timeout:g} s: "
                "start the cluster with mpirun -np 4 dask-mpi --scheduler-file "
                f"{path}"
            )
        time.sleep(0.1)


def main() -> None:
    args = parse_args()
    wait_for_file(args.scheduler_file, args.timeout)
    client = Client(scheduler_file=args.scheduler_file, timeout=args.timeout)
    client.wait_for_workers(args.workers, timeout=args.timeout)
    nthreads = client.nthreads()
    print(f"Cluster: {len(nthreads)} workers, {sum(nthreads.values())} threads")

    start = time.perf_counter()
    data_dir = find_data_dir()
    stats = carrier_delay_stats(load_flights(data_dir), load_airlines(data_dir))
    seconds = time.perf_counter() - start
    print("\nDelays per carrier in minutes, worst mean arrival delay first:")
    print(format_carrier_stats(stats))
    print(f"\nLoad and per-carrier analysis took {seconds:.2f} s")

    if args.shutdown:
        client.shutdown()
    else:
        client.close()


if __name__ == "__main__":
    main()
