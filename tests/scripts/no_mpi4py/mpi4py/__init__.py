"""Stands in for a site without a usable mpi4py: importing it fails.

Tests put this folder first on PYTHONPATH to launch dask-mpi as on a
machine where mpi4py is missing or was built for another MPI.
"""

raise ImportError("mpi4py is hidden by the test (tests/scripts/no_mpi4py)")
