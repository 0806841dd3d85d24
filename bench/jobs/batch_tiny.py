"""A tiny batch job: ``initialize()``, ``Client()`` and one task.

Usage: ``mpirun -np N python batch_tiny.py [KWARGS_JSON]``. Runs under our
package and the established one alike, so it uses only ``initialize()``.
The client rank prints two ``BENCH-STAMP`` lines: after the first result,
and as the script's last statement, after the client closed.
"""

import json
import operator
import sys
import time

from dask_mpi import initialize

kwargs = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
initialize(**kwargs)

from distributed import Client

client = Client()
if client.submit(operator.add, 1, 2).result() != 3:
    raise SystemExit("batch_tiny.py: the task returned a wrong result")
print(f"BENCH-STAMP first-result {time.time():.6f}", flush=True)
client.close()
print(f"BENCH-STAMP client-end {time.time():.6f}", flush=True)
