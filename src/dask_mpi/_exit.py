"""Faster interpreter exit for the processes of a dask-mpi job.

When Python exits it clears every module and runs the cyclic garbage
collector over everything that is still alive. With distributed, numpy
and tornado imported, that takes about 0.1 s of CPU per process (an
estimate from the measurement below). Where
ranks share cores, it is most of the time from "the cluster closed" to
"the launcher returned". Measured here on 2 cores with
``mpirun -np 4 python -c "import distributed, mpi4py.MPI"``: 0.31 s from
the last statement to the launcher's exit, and 0.07 s with ``gc.freeze()``.

``gc.freeze()`` moves every object that exists at that moment into the
permanent generation, which the collector skips, so the exit becomes a
plain release of memory. Objects still alive then are freed by reference
counting as modules are cleared, as before. Only objects kept alive by
reference cycles are left to the operating system, and Python never
promised to call ``__del__`` on those at exit. Open files are still
flushed: the standard streams by the interpreter, other files by
``close()`` or by reference counting.
"""

from __future__ import annotations

import atexit
import gc

_armed = False


def _freeze() -> None:
    gc.freeze()


def arm() -> None:
    """Freeze the heap after the other exit handlers ran; safe to call twice.

    Exit handlers run in reverse order of registration. This one is
    registered before the package's others, so it runs after them.
    """
    global _armed
    if not _armed:
        _armed = True
        atexit.register(_freeze)
