"""Call ``initialize(**KWARGS)``, let an outside process try the cluster, report.

Usage: ``mpirun -np N python security_batch.py KWARGS_JSON [--go-file PATH]
[--key-file PATH]``.

Every rank first records the sockets it listens on after MPI started and
before dask_mpi runs. Those belong to the MPI library and the launcher, so the
test leaves them out when it checks dask's listeners. MPICH 5.0 opens one per
rank, and its mpirun leaks its own listening socket to every rank.

The client rank prints ``TARGETS <json>`` with the scheduler and worker
addresses. With ``--go-file`` it then waits until that file exists, so the
test can attack the running cluster first. Last it prints one ``REPORT <json>``
line. With ``--key-file`` it writes the client's private key there (mode
0600), so the test can look for the key's text in the job's output.
"""

import argparse
import json
import os
import socket
import sys
import time

import psutil
from mpi4py import MPI

# Seconds the client rank waits for the go file.
GO_FILE_TIMEOUT = 90


def listening_sockets() -> list[list]:
    """Return [ip, port] of every socket this process listens on."""
    connections = psutil.Process(os.getpid()).net_connections(kind="inet")
    return sorted(
        [connection.laddr.ip, connection.laddr.port]
        for connection in connections
        if connection.status == psutil.CONN_LISTEN
    )


def describe_process(role: str) -> dict:
    """Return this process's role, PID, host name and listening sockets."""
    return {
        "role": role,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "listening": listening_sockets(),
    }


def config_text() -> str:
    """Return this process's whole dask.config as text."""
    import dask.config

    return str(dask.config.config)


def wait_for_file(path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"go file {path} not created within {timeout} s")
        time.sleep(0.05)


def write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


parser = argparse.ArgumentParser()
parser.add_argument("kwargs", nargs="?", default="{}")
parser.add_argument("--go-file")
parser.add_argument("--key-file")
arguments = parser.parse_args()

# Sockets opened by MPI and the launcher, keyed by PID, from every rank.
before_dask = dict(MPI.COMM_WORLD.allgather((os.getpid(), listening_sockets())))

from dask_mpi import initialize

initialize(**json.loads(arguments.kwargs))

import dask.config
from distributed import Client

with Client() as client:
    info = client.scheduler_info()
    workers = sorted(info["workers"])
    nannies = [w["nanny"] for w in info["workers"].values() if w.get("nanny")]
    targets = {"scheduler": client.scheduler.address, "workers": workers}
    print("TARGETS " + json.dumps(targets), flush=True)
    if arguments.go_file:
        wait_for_file(arguments.go_file, GO_FILE_TIMEOUT)

    # The squares of 0..9 add up to 285.
    futures = client.map(lambda x: x * x, range(10))
    total = client.submit(sum, futures).result()

    processes = [describe_process("client")]
    processes.append(client.run_on_scheduler(describe_process, "scheduler"))
    processes += client.run(describe_process, "worker").values()
    if nannies:
        processes += client.run(describe_process, "nanny", nanny=True).values()

    configs = {"scheduler": client.run_on_scheduler(config_text)}
    for address, text in client.run(config_text).items():
        configs[f"worker {address}"] = text
    if nannies:
        for address, text in client.run(config_text, nanny=True).items():
            configs[f"nanny {address}"] = text

    report = {
        "scheduler_address": client.scheduler.address,
        "services": info["services"],
        "workers": workers,
        "nannies": nannies,
        "sum_of_squares": total,
        "processes": processes,
        "before_dask": {str(pid): sockets for pid, sockets in before_dask.items()},
        "config_with_pem": sorted(
            name for name, text in configs.items() if "BEGIN" in text
        ),
        "client_config_has_pem": "BEGIN" in config_text(),
        "client_host": socket.gethostname(),
    }
    print("REPORT " + json.dumps(report), flush=True)

    key = dask.config.get("distributed.comm.tls.client.key", None)
    if arguments.key_file and key:
        write_private(arguments.key_file, key)

sys.stdout.flush()
