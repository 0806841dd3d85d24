"""Log filters for workers, loaded into Nanny worker processes as a preload.

distributed 2026.8 logs two messages at ERROR, with tracebacks, for events
that are normal in a dask-mpi job:

- "Worker process died unexpectedly", from inside a worker process that
  closes on its own (for example when the scheduler it joined shuts down):
  the process's stop-queue reader breaks while the process exits. The
  worker did not die. The filter drops it once the worker is closing.
- "Failed to communicate with scheduler during heartbeat", when the
  scheduler goes away or a heartbeat is in flight while the worker closes.
  The filter drops it while the worker is closing, and always for workers
  that joined an outside scheduler (``--no-scheduler``), which log their own
  warning and wait for the scheduler to come back.

The preload also makes the worker process ignore SIGINT, SIGTERM and the
job's shutdown signals: MPICH's mpirun signals each rank's whole process
group, and the Nanny, not its worker process, handles them. It also makes
the worker process exit as fast as its rank (see ``_exit``).
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Any

# Set in the environment of ranks whose workers joined an outside scheduler.
JOINING_VARIABLE = "DASK_MPI_JOINING"
# Comma-separated signal numbers that worker processes ignore.
IGNORED_SIGNALS_VARIABLE = "DASK_MPI_CHILD_IGNORES"

# A stream message from the coordinator's scheduler that wakes a worker
# rank's serving loop as soon as the job ends, instead of at its next poll.
WAKE_OP = "dask_mpi_wake"

_CLOSING = ("closing", "closed", "closing_gracefully")

_DIED = "Worker process died unexpectedly"
_HEARTBEAT = "Failed to communicate with scheduler during heartbeat."


class _DropExpectedErrors(logging.Filter):
    """Drops the two messages while a worker of this process is closing.

    One filter serves every worker of the process: a rank that runs 100
    workers would otherwise run 100 filters on every log record.
    """

    def __init__(self) -> None:
        super().__init__()
        self.workers: weakref.WeakSet[Any] = weakref.WeakSet()
        self.joining = False

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage() if record.args else record.msg
        if message not in (_HEARTBEAT, _DIED):
            return True
        if message == _HEARTBEAT and self.joining:
            return False
        return not any(
            getattr(getattr(worker, "status", None), "name", "") in _CLOSING
            for worker in list(self.workers)
        )


_DROP = _DropExpectedErrors()


def install(worker: Any, joining: bool) -> None:
    """Add ``worker`` to the filter on distributed's worker and nanny loggers."""
    _DROP.workers.add(worker)
    _DROP.joining = _DROP.joining or joining
    for name in ("distributed.nanny", "distributed.worker"):
        found = logging.getLogger(name)
        if _DROP not in found.filters:
            found.addFilter(_DROP)


def _disregard(number: int, frame: Any) -> None:
    """Do nothing: the Nanny, not the signal, ends this worker process."""


def ignore_signals(numbers: str) -> None:
    """Disregard the comma-separated signal ``numbers`` in this process.

    It installs a handler that does nothing rather than SIG_IGN. Processes
    that tasks start inherit an ignored signal through exec, so
    ``Popen.terminate()`` on them would do nothing. A handler is reset to
    the default action there.
    """
    import signal

    for number in filter(None, numbers.split(",")):
        signal.signal(int(number), _disregard)


def dask_setup(worker: Any) -> None:
    """Install the filter in this worker process (distributed preload hook)."""
    from . import _exit

    ignore_signals(os.environ.get(IGNORED_SIGNALS_VARIABLE, ""))
    _exit.arm()
    install(worker, os.environ.get(JOINING_VARIABLE) == "1")
    # The rank's loop polls MPI instead, so the wake-up has nothing to do here.
    worker.stream_handlers[WAKE_OP] = ignore_wake


def ignore_wake(**message: Any) -> None:
    """Accept a wake-up message in a worker process."""
