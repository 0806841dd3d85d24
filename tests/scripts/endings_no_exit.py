"""Run ``initialize(exit=False)``, then plain MPI work after the cluster.

Usage: ``mpirun -np N python endings_no_exit.py close|at_exit``.

``close``
    The client calls ``send_close_signal()``. Then every rank meets in a
    Barrier and a bcast from rank 0 on COMM_WORLD.
``at_exit``
    The client never calls ``send_close_signal()``, so the cluster closes
    when the client's interpreter exits. The other ranks then run a
    Barrier and a bcast on a communicator of their own, split off before
    ``initialize``.
"""

import sys

from mpi4py import MPI

from dask_mpi import initialize, send_close_signal

world = MPI.COMM_WORLD
mode = sys.argv[1]
# initialize() puts the client on rank 1.
servers = world.Split(color=0 if world.rank == 1 else 1, key=world.rank)

is_client = initialize(exit=False)
print(f"rank {world.rank} initialize returned {is_client}", flush=True)

if is_client:
    from distributed import Client

    with Client() as client:
        print(f"client result {client.submit(sum, [1, 2, 3]).result()}", flush=True)
    if mode == "close":
        send_close_signal()

comm = world if mode == "close" else servers
if mode == "close" or not is_client:
    comm.Barrier()
    value = comm.bcast("sent by rank 0" if comm.rank == 0 else None, root=0)
    print(f"rank {world.rank} bcast {value!r}", flush=True)
