"""Call ``initialize(**KWARGS)`` and print a report of the cluster.

Usage: ``mpirun -np N python initialize_report.py [KWARGS_JSON]``. The client
rank prints one ``REPORT`` line (see cluster_report.py).
"""

import json
import sys

from dask_mpi import initialize

kwargs = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
initialize(**kwargs)

from cluster_report import print_report
from distributed import Client

with Client() as client:
    print_report(client)
