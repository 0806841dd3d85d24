"""Call ``execute(nanny=True)`` at top level, without a ``__main__`` guard.

A Nanny starts its worker process with multiprocessing's spawn method, which
imports the main script again in the child unless dask-mpi prevents it. Each
import prints a ``script started`` line, so the test counts them.
"""

from mpi4py import MPI

from dask_mpi import execute

print(f"script started on rank {MPI.COMM_WORLD.rank}", flush=True)


def run_tasks():
    from distributed import Client
    from endings_actions import increment

    with Client() as client:
        total = sum(client.gather(client.map(increment, range(100))))
        print(f"tasks sum {total}", flush=True)
        nannies = [w["nanny"] for w in client.scheduler_info()["workers"].values()]
        print(f"workers under a Nanny: {sum(map(bool, nannies))}", flush=True)


execute(run_tasks, nanny=True)
