"""End an ``initialize()`` client script by ``sys.exit(CODE)`` or an exception.

Usage: ``mpirun -np N python initialize_end.py exit CODE`` or
``... initialize_end.py raise``. The client prints the result of one task
first, so the test can check that the cluster worked before the script ended.
"""

import sys

from dask_mpi import initialize

initialize()

from distributed import Client

with Client() as client:
    print(f"client result {client.submit(sum, [1, 2, 3]).result()}", flush=True)

if sys.argv[1] == "exit":
    sys.exit(int(sys.argv[2]))
raise RuntimeError("client script failed on purpose")
