"""End an ``initialize()`` job in the way named on the command line.

Usage: ``mpirun -np N python endings_initialize.py ACTION [KWARGS_JSON]``.
Every rank first prints ``PID <rank> <pid>``, so a test can signal one rank.
The client rank then runs one task, prints ``client ready`` and ends the
script by ACTION (see ``endings_actions.py``).
"""

import json
import os
import sys

from mpi4py import MPI

print(f"PID {MPI.COMM_WORLD.rank} {os.getpid()}", flush=True)

from endings_actions import leave_on_sigusr2, run_action

from dask_mpi import initialize

leave_on_sigusr2()
kwargs = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
initialize(**kwargs)
run_action(sys.argv[1])
