"""Connect with ``dask_mpi.connect(SCHEDULER_FILE)``, run a task, shut down.

Usage: ``python security_connect.py SCHEDULER_FILE``. Prints
``CONNECTED <address> RESULT <sum>`` and then shuts the cluster down, which
ends the ``dask-mpi`` job.
"""

import sys

import dask_mpi

client = dask_mpi.connect(sys.argv[1], timeout=10)
result = client.submit(sum, [1, 2, 3]).result()
print(f"CONNECTED {client.scheduler.address} RESULT {result}", flush=True)
client.shutdown()
client.close()
