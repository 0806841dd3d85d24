"""Print each worker's host, threads and memory limit from the client rank."""

import json
import socket

from dask_mpi import initialize

initialize()

from distributed import Client  # noqa: E402

with Client() as client:
    workers = client.scheduler_info()["workers"].values()
    report = {
        "client_host": socket.gethostname(),
        "scheduler": client.scheduler.address,
        "workers": sorted(
            (w["name"], w["host"], w["nthreads"], w["memory_limit"]) for w in workers
        ),
        "node_memory": client.run(lambda: __import__("psutil").virtual_memory().total),
    }
    print("REPORT " + json.dumps(report), flush=True)
