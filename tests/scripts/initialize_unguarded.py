"""Run ``initialize(nanny=True)`` at top level, without a ``__main__`` guard.

A Nanny starts its worker process with multiprocessing's spawn method, which
imports the main script again in the child unless dask-mpi prevents it. Each
import prints a ``script started`` line, so the test counts them.
"""

from mpi4py import MPI

print(f"script started on rank {MPI.COMM_WORLD.rank}", flush=True)

from dask_mpi import initialize

initialize(nanny=True)

from cluster_report import print_report
from distributed import Client

with Client() as client:
    print_report(client)
