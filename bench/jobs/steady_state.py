"""Time tiny tasks and a dask.array reduction on a running cluster.

Usage:
  ``mpirun -np 6 python steady_state.py mpi TASKS SIZE [KWARGS_JSON]``
      ``initialize(**KWARGS)``: scheduler on rank 0, client on rank 1,
      workers on ranks 2 to 5.
  ``python steady_state.py local TASKS SIZE``
      ``LocalCluster(n_workers=4, threads_per_worker=1)`` for comparison.

Both warm the cluster up first with a few tasks and a small array. Then
they print ``BENCH-RESULT tasks SECONDS`` for ``client.map`` plus
``client.gather`` of TASKS tiny tasks. Last they print ``BENCH-RESULT array
SECONDS`` for ``(x + x.T).sum()`` of a SIZE x SIZE random array in 500 x 500
chunks (the median of 3 runs, each on a new random array).
"""

import json
import statistics
import sys
import time

WORKERS = 4
CHUNK = 500
ARRAY_REPEATS = 3


def increment(x):
    return x + 1


def measure(client, tasks, size):
    import dask.array as da

    client.wait_for_workers(WORKERS, timeout=60)
    warm_keys = [f"warm-{i}" for i in range(200)]
    client.gather(client.map(increment, range(200), key=warm_keys))
    warm = da.random.random((2 * CHUNK, 2 * CHUNK), chunks=CHUNK)
    (warm + warm.T).sum().compute()

    start = time.perf_counter()
    futures = client.map(increment, range(tasks))
    results = client.gather(futures)
    elapsed = time.perf_counter() - start
    if results[-1] != tasks:
        raise SystemExit("steady_state.py: the tasks returned wrong results")
    print(f"BENCH-RESULT tasks {elapsed:.6f}", flush=True)
    del futures, results

    # One reduction takes about a second, so a single run is at the mercy
    # of the scheduler's timing; the median of a few is steadier.
    durations = []
    for _ in range(ARRAY_REPEATS):
        x = da.random.random((size, size), chunks=CHUNK)
        start = time.perf_counter()
        (x + x.T).sum().compute()
        durations.append(time.perf_counter() - start)
    print(f"BENCH-RESULT array {statistics.median(durations):.6f}", flush=True)


def main():
    mode, tasks, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if mode == "mpi":
        from dask_mpi import initialize

        kwargs = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
        initialize(**kwargs)
        from distributed import Client

        with Client() as client:
            measure(client, tasks, size)
    elif mode == "local":
        from distributed import Client, LocalCluster

        with (
            LocalCluster(n_workers=WORKERS, threads_per_worker=1) as cluster,
            Client(cluster) as client,
        ):
            measure(client, tasks, size)
    else:
        raise SystemExit(
            f"steady_state.py: invalid mode {mode!r}: expected mpi or local"
        )


if __name__ == "__main__":
    main()
