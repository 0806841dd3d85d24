"""Build a cluster on 3 ranks of a 5-rank world and run plain MPI on the rest.

``COMM_WORLD.Split`` puts world ranks 0-2 into one communicator, which is
passed to ``initialize(comm=...)``, and world ranks 3-4 into another, on which
they run an allreduce while the cluster works.
"""

from mpi4py import MPI

from dask_mpi import initialize

world = MPI.COMM_WORLD
in_cluster = world.rank < 3
sub = world.Split(color=0 if in_cluster else 1, key=world.rank)

if in_cluster:
    initialize(comm=sub)

    from cluster_report import print_report
    from distributed import Client

    with Client() as client:
        print_report(client)
else:
    total = sub.allreduce(world.rank)
    print(
        f"plain MPI on world rank {world.rank}: sub size {sub.size}, allreduce {total}",
        flush=True,
    )
