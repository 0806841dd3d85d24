"""A worker preload that delays the worker's start-up by ``DELAY`` seconds.

distributed runs a preload's ``dask_setup`` before the worker registers with
the scheduler, so a test that passes this file in ``preload`` can act while a
Nanny is still starting its worker. The printed line tells the test when.
"""

import time

# Seconds the worker waits before it registers.
DELAY = 2.0


def dask_setup(worker):
    print("slow preload: delaying the worker start", flush=True)
    time.sleep(DELAY)
