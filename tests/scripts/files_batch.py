"""A batch job that talks through files: initialize() with a scheduler file."""

import json
import sys

from dask_mpi import initialize

initialize(scheduler_file=sys.argv[1])

from distributed import Client  # noqa: E402

with Client() as client:
    workers = client.scheduler_info()["workers"].values()
    report = {
        "sum": client.submit(sum, [4, 5]).result(),
        "workers": sorted(w["name"] for w in workers),
        "mpi4py": "mpi4py.MPI" in sys.modules,
    }
    print("REPORT " + json.dumps(report), flush=True)
