"""End an ``execute()`` job in the way named on the command line.

Usage: ``mpirun -np N python endings_execute.py ACTION [KWARGS_JSON]``. Every
rank first prints ``PID <rank> <pid>``, so a test can signal one rank. The
client function runs ``run_action(ACTION)`` (see ``endings_actions.py``);
every rank that returns from ``execute`` prints ``rank <rank> returned``.
"""

import json
import os
import sys

from mpi4py import MPI

print(f"PID {MPI.COMM_WORLD.rank} {os.getpid()}", flush=True)

from endings_actions import leave_on_sigusr2, run_action

from dask_mpi import execute

leave_on_sigusr2()
kwargs = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
execute(run_action, client_args=(sys.argv[1],), **kwargs)
print(f"rank {MPI.COMM_WORLD.rank} returned", flush=True)
