"""Call ``execute(**KWARGS)`` with a client function that reports the cluster.

Usage: ``mpirun -np N python execute_report.py [KWARGS_JSON] [raise]``. The
client function prints a ``REPORT`` line (see cluster_report.py) and returns
the sum it computed, or raises after the report when ``raise`` is given.
Every rank then prints what ``execute`` returned to it.
"""

import json
import sys

from mpi4py import MPI

from dask_mpi import execute


def report_cluster(fail: bool) -> int:
    from cluster_report import print_report
    from distributed import Client

    with Client() as client:
        report = print_report(client)
    if fail:
        raise RuntimeError("client function failed on purpose")
    return report["sum_of_squares"]


kwargs = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
fail = sys.argv[2:] == ["raise"]
returned = execute(report_cluster, client_args=(fail,), **kwargs)
print(f"rank {MPI.COMM_WORLD.rank} execute returned {returned!r}", flush=True)
