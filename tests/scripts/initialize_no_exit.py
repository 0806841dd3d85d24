"""Run ``initialize(exit=False)`` and go on with plain MPI after the cluster.

Every rank prints what ``initialize`` returned, then all ranks meet in a
Barrier and an allreduce on COMM_WORLD.
"""

from mpi4py import MPI

from dask_mpi import initialize, send_close_signal

world = MPI.COMM_WORLD
is_client = initialize(exit=False)
print(f"rank {world.rank} initialize returned {is_client}", flush=True)

if is_client:
    from distributed import Client

    with Client() as client:
        print(f"client result {client.submit(sum, [1, 2, 3]).result()}", flush=True)
    send_close_signal()

world.Barrier()
total = world.allreduce(world.rank)
print(f"rank {world.rank} allreduce {total}", flush=True)
