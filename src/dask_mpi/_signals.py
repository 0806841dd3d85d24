"""Signals on the client rank: end the script with the job's exit code.

Serving ranks handle signals inside their event loop (see ``_launch``);
the client rank runs the user's code on the main thread, so there a
signal raises ``SystemExit(128 + signal)`` and the script unwinds.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterable
from typing import Any

# The exit code requested by an interrupt from the coordinator, or None
# for a real signal.
_pending_code: int | None = None


# The exit code the last handled signal raised, for the end-of-job line.
last_code: int | None = None


def _raise_exit(number: int, frame: Any) -> None:
    global last_code
    code = _pending_code if _pending_code is not None else 128 + number
    last_code = code
    raise SystemExit(code)


class _AbortJob:
    """A handler that ends the whole job through MPI with 128 + signal."""

    def __init__(self, world: Any):
        self.world = world

    def __call__(self, number: int, frame: Any) -> None:
        code = _pending_code if _pending_code is not None else 128 + number
        logging.getLogger("dask_mpi._client").warning(
            "Signal %s while the cluster was closing; aborting the job with "
            "exit code %d",
            signal.Signals(number).name,
            code,
        )
        self.world.abort(code)


def _ours(handler: Any) -> bool:
    return handler is _raise_exit or isinstance(handler, _AbortJob)


def abort_on_signal(replaced: dict[int, Any], world: Any) -> None:
    """While the client ends the cluster, make a further signal abort the job.

    The first signal already unwound the script. Raising SystemExit again
    inside the exit handler would stop the ordered close halfway and print
    a traceback, so a second signal ends the job at once instead, as on the
    serving ranks.
    """
    handler = _AbortJob(world)
    for number in replaced:
        try:
            if _ours(signal.getsignal(number)):
                signal.signal(number, handler)
        except (ValueError, OSError):  # not on the main thread
            return


def ignore_from_now(replaced: dict[int, Any]) -> None:
    """Ignore the job's signals for the rest of this process's exit.

    The job's outcome is decided and the cluster is closed. Python sets
    its own handlers back to the default when it finalizes. A signal in
    the last milliseconds would then kill the rank, and mpirun would
    report signal 15 rather than the job's code. An ignored signal stays
    ignored.
    """
    for number in replaced:
        try:
            if _ours(signal.getsignal(number)):
                signal.signal(number, signal.SIG_IGN)
        except (ValueError, OSError):
            return


def install(extra: Iterable[int]) -> dict[int, Any]:
    """Make SIGTERM, SIGINT and ``extra`` raise SystemExit on the main thread.

    Handlers the user installed are left alone. Returns the replaced
    handlers, for :func:`restore`.
    """
    defaults = (signal.SIG_DFL, signal.default_int_handler)
    replaced = {}
    for number in dict.fromkeys([signal.SIGTERM, signal.SIGINT, *extra]):
        try:
            previous = signal.getsignal(number)
            if previous in defaults:
                signal.signal(number, _raise_exit)
                replaced[number] = previous
        except (ValueError, OSError):  # not on the main thread
            break
    return replaced


def restore(replaced: dict[int, Any]) -> None:
    """Put back the handlers that :func:`install` replaced."""
    global _pending_code
    for number, handler in replaced.items():
        try:
            if _ours(signal.getsignal(number)):
                signal.signal(number, handler)
        except (ValueError, OSError):
            return
    _pending_code = None


def interrupt_main(code: int) -> None:
    """Make the main thread raise ``SystemExit(code)`` as soon as it can.

    A real SIGTERM aimed at the main thread also wakes it from a blocking
    wait, which a simulated one would not.
    """
    global _pending_code
    _pending_code = code
    if signal.getsignal(signal.SIGTERM) is _raise_exit:
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)
    else:
        import _thread

        _thread.interrupt_main(signal.SIGTERM)
