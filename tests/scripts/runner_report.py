"""Run MPIRunner with the options given as JSON in argv[1]; report from the client.

Every rank runs the same ``with`` statement. Ranks other than the client
leave inside ``__enter__`` with SystemExit, so "after the block" is printed
by the client rank only.
"""

import json
import sys

from distributed import Client

from dask_mpi import MPIRunner

options = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
with MPIRunner(**options) as runner, Client(runner) as client:
    workers = client.scheduler_info()["workers"].values()
    report = {
        "sum": client.submit(sum, [1, 2, 3]).result(),
        "workers": sorted(w["name"] for w in workers),
        "address": client.scheduler.address,
    }
    print("REPORT " + json.dumps(report), flush=True)
    if options.get("name") == "raise":
        raise RuntimeError("failure inside the runner block")
print("after the block", flush=True)
