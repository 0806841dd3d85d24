"""Log filters for workers, loaded into Nanny worker processes as a preload.

distributed 2026.8 logs two messages at ERROR, with tracebacks, for events
that are normal in a dask-mpi job:

- "Worker process died unexpectedly", from inside a worker process that
  closes on its own (for example when the scheduler it joined shuts down):
  the process's stop-queue reader breaks while the process exits. The
  worker did not die. The filter drops it once the worker is closing.
- "Failed to communicate with scheduler during heartbeat", when the
  scheduler goes away. For workers that joined an outside scheduler
  (``--no-scheduler``) that is expected: they log their own warning and wait
  for the scheduler to come back. The filter drops it only for them.
"""

from __future__ import annotations

import logging
import os
from typing import Any

# Set in the environment of ranks whose workers joined an outside scheduler.
JOINING_VARIABLE = "DASK_MPI_JOINING"

_DIED = "Worker process died unexpectedly"
_HEARTBEAT = "Failed to communicate with scheduler during heartbeat."


class _DropExpectedErrors(logging.Filter):
    def __init__(self, worker: Any, joining: bool):
        super().__init__()
        self.worker = worker
        self.joining = joining

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message == _HEARTBEAT:
            return not self.joining
        if message != _DIED:
            return True
        status = getattr(getattr(self.worker, "status", None), "name", "")
        return status not in ("closing", "closed", "closing_gracefully")


def install(worker: Any, joining: bool) -> None:
    """Add the filter to distributed's worker and nanny loggers."""
    drop = _DropExpectedErrors(worker, joining)
    for name in ("distributed.nanny", "distributed.worker"):
        logging.getLogger(name).addFilter(drop)


def dask_setup(worker: Any) -> None:
    """Install the filter in this worker process (distributed preload hook)."""
    install(worker, os.environ.get(JOINING_VARIABLE) == "1")
