"""Worker side: start the worker class, watch it, join and re-join."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

from ._options import Options, import_worker_class
from .exceptions import RankTimeoutError

logger = logging.getLogger(__name__)


def worker_kwargs(
    options: Options,
    name: str,
    nthreads: int,
    memory_limit: int | None,
    local_directory: str,
    host: str | None,
    security: Any,
) -> dict[str, Any]:
    """Return the keyword arguments for one worker of the worker class."""
    kwargs: dict[str, Any] = dict(
        name=name,
        nthreads=nthreads,
        memory_limit=memory_limit or 0,
        local_directory=local_directory,
        protocol=options.protocol,
        security=security,
    )
    if options.interface:
        kwargs["interface"] = options.interface
    elif host:
        kwargs["host"] = host
    if options.use_nanny and options.worker_class != "distributed.Nanny":
        kwargs["worker_class"] = import_worker_class(options.worker_class)
    kwargs.update(options.worker_options)
    if options.use_nanny:
        preload = kwargs.get("preload") or []
        preload = [preload] if isinstance(preload, str) else list(preload)
        kwargs["preload"] = [*preload, "dask_mpi._child"]
    return kwargs


async def start_worker(
    address: str, options: Options, started: list[Any] | None = None, **kwargs: Any
) -> Any:
    """Start one worker of the worker class, connected to ``address``.

    The worker joins ``started`` before it starts, so that a caller that
    gives up on the start can still close it.
    """
    dotted = "distributed.Nanny" if options.use_nanny else options.worker_class
    cls = import_worker_class(dotted)
    worker = cls(address, **kwargs)
    share_log_buffer(worker)
    accept_wake_ups(worker)
    if started is not None:
        started.append(worker)
    await worker
    return worker


def accept_wake_ups(server: Any) -> None:
    """Let ``server`` accept the coordinator's wake-up message.

    distributed closes a stream that carries an operation it does not know.
    A follower rank's serving loop replaces this handler with its own.
    """
    from . import _child

    handlers = getattr(server, "stream_handlers", None)
    if handlers is not None:
        handlers.setdefault(_child.WAKE_OP, _child.ignore_wake)


# One buffer of recent log records per logger, shared by the process's workers.
_LOG_BUFFERS: dict[str, logging.Handler] = {}


def share_log_buffer(server: Any) -> None:
    """Make ``server`` keep its recent log records in the process's buffer.

    Each distributed Worker and Nanny adds a handler to its module's logger
    that keeps the records ``get_logs()`` returns. That handler receives
    every record of the logger, whichever worker logged it, so K workers in
    one process keep K copies of the same records, and each record passes
    through K handlers. Sharing one handler keeps one copy.
    """
    own = getattr(server, "_deque_handler", None)
    if own is None:
        return
    for name in ("distributed.worker", "distributed.nanny"):
        found = logging.getLogger(name)
        if own in found.handlers:
            shared = _LOG_BUFFERS.setdefault(name, own)
            if shared is not own:
                found.removeHandler(own)
                server._deque_handler = shared
            # The first owner removes it from the logger when it is freed.
            if shared not in found.handlers:
                found.addHandler(shared)
            return


def shield_children(shutdown_signals: tuple[int, ...]) -> None:
    """Keep signals that mpirun sends to the process group away from children.

    Worker processes ignore SIGINT, SIGTERM and the shutdown signals
    (through the preload in ``_child``): their Nanny stops them through its
    stop queue and, if that fails, with SIGKILL. multiprocessing's resource
    tracker is started now with the shutdown signals ignored, a disposition
    it keeps, so a walltime signal does not kill it under the Nanny.
    """
    import signal
    import threading
    from multiprocessing import resource_tracker

    from . import _child

    numbers = [signal.SIGINT, signal.SIGTERM, *shutdown_signals]
    os.environ[_child.IGNORED_SIGNALS_VARIABLE] = ",".join(map(str, numbers))
    if threading.current_thread() is not threading.main_thread():
        resource_tracker.ensure_running()
        return
    previous = {n: signal.signal(n, signal.SIG_IGN) for n in shutdown_signals}
    try:
        resource_tracker.ensure_running()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def root_cause(error: BaseException) -> BaseException:
    """Return the innermost cause of ``error``; distributed wraps start errors."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


class _DropCloseEventError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "Failed to log closing event"


@contextlib.contextmanager
def quiet_failed_start() -> Iterator[None]:
    """Drop distributed's follow-on error when a worker fails to start.

    distributed 2026.8 logs "Failed to log closing event" with a traceback
    while it closes a worker that never started; the rank reports the real
    cause itself.
    """
    dropper = _DropCloseEventError()
    worker_logger = logging.getLogger("distributed.worker")
    worker_logger.addFilter(dropper)
    try:
        yield
    finally:
        worker_logger.removeFilter(dropper)


# distributed 2026.8's default timeout of Nanny.close, in seconds.
_NANNY_CLOSE_TIMEOUT = 5.0


def _kill_starting_process(nanny: Any) -> None:
    """Kill the worker process of a Nanny that is still starting it.

    distributed 2026.8's Nanny waits for a starting worker process to finish
    its start before it stops it, and a process whose scheduler went away
    keeps trying for the whole ``death_timeout`` (60 s here). The process
    has not registered with any scheduler yet, so nothing is lost. The
    dask-mpi preload makes it ignore SIGTERM (see ``shield_children``), so
    it gets SIGKILL.
    """
    import signal

    process = getattr(nanny, "process", None)
    status = getattr(getattr(process, "status", None), "name", "")
    pid = getattr(process, "pid", None) if status == "starting" else None
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# multiprocessing's helper processes, which exit when the rank exits.
_HELPERS = ("resource_tracker", "forkserver")


def descendants() -> list[Any]:
    """Return the processes below this one, as ``psutil.Process`` objects."""
    import psutil

    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def _left_running(process: Any) -> str | None:
    """Describe ``process`` if a task left it running, else return None.

    Python's multiprocessing helpers (the resource tracker, the forkserver)
    exit by themselves when this process exits, so they are not counted.
    """
    import psutil

    try:
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        command = " ".join(process.cmdline())
    except psutil.Error:
        return None
    if any(f"from multiprocessing.{helper} import" in command for helper in _HELPERS):
        return None
    return f"{process.pid} ({command[:80]})"


def end_left_running(earlier: list[Any], grace: float = 1.0) -> None:
    """End the processes that tasks started and left running.

    Such a process keeps the rank's output pipes open, so MPICH's mpirun
    would wait for it after every rank exited. ``earlier`` contains the
    processes found before the workers closed, because the children of a
    Nanny's worker process are no longer below this process once it exits.
    They get SIGTERM, then SIGKILL after ``grace`` seconds.
    """
    import psutil

    found = {process.pid: process for process in [*earlier, *descendants()]}
    alive = [process for process in found.values() if _left_running(process)]
    if not alive:
        return
    logger.warning(
        "Ending %d process(es) that tasks started and left running: %s",
        len(alive),
        ", ".join(filter(None, map(_left_running, alive))),
    )
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    # A process that exited stays a zombie until its parent collects it
    # (often init, once the worker process exited), so a zombie is ended.
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [process for process in alive if _left_running(process)]
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()


async def close_worker(worker: Any, timeout: float, reason: str) -> None:
    """Close ``worker`` within ``timeout`` seconds; closing twice is harmless."""
    from distributed import Nanny, Worker

    _kill_starting_process(worker)
    kwargs: dict[str, Any] = {"reason": reason}
    if isinstance(worker, Worker):
        # Running tasks are abandoned: the job is ending, and a long task
        # must not hold it.
        kwargs["executor_wait"] = False
    elif isinstance(worker, Nanny):
        # A Nanny waits 0.8 times its timeout for the worker process to
        # stop, then kills it and waits up to the timeout again. Both waits
        # fit within ours, while its default of 5 s outlasts a short one.
        kwargs["timeout"] = min(_NANNY_CLOSE_TIMEOUT, timeout / 2.5)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(worker.close(**kwargs), timeout)


@contextlib.contextmanager
def hidden_main_script() -> Iterator[None]:
    """Keep spawned worker processes from running the user's script again.

    A Nanny starts its worker with multiprocessing's spawn method, which
    imports the parent's main script (as ``__mp_main__``) in the child. A
    batch script that calls initialize() at top level without an
    ``if __name__ == "__main__":`` guard would then start a second cluster
    inside every worker process. Tasks do not need the script in the child,
    because cloudpickle sends functions of ``__main__`` by value.
    """
    main = sys.modules.get("__main__")
    saved = {k: getattr(main, k) for k in ("__file__", "__spec__") if hasattr(main, k)}
    try:
        for attribute in saved:
            if attribute == "__spec__":
                main.__spec__ = None  # type: ignore[union-attr]
            else:
                delattr(main, attribute)
        yield
    finally:
        for attribute, value in saved.items():
            setattr(main, attribute, value)


def scheduler_answers(address: str, timeout: float = 1.0) -> bool:
    """True when a TCP connection to the scheduler's port succeeds."""
    from ._scheduler import split_host_port

    host, port = split_host_port(address)
    if port is None:
        return False
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=timeout):
            return True
    except OSError:
        return False


def read_scheduler_info(path: str) -> dict[str, Any]:
    """Return the contents of the scheduler file, or {} if it is not there."""
    try:
        with open(path) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def read_scheduler_file(path: str) -> str | None:
    """Return the address in the scheduler file, or None if it is not there."""
    return read_scheduler_info(path).get("address")


async def wait_for_scheduler(
    address: str | None,
    scheduler_file: str | None,
    timeout: float | None,
    previous: str | None = None,
) -> str:
    """Wait until a scheduler accepts connections and return its address.

    With a scheduler file, the address is read from it on every try, so a
    new scheduler that rewrote the file is found. ``previous`` is logged as
    the scheduler that went away.
    """
    source = scheduler_file or address
    if previous:
        logger.warning(
            "Scheduler %s went away; waiting for it at %s%s",
            previous,
            source,
            "" if timeout is None else f" for up to {timeout:g} s",
        )
    else:
        logger.info("Waiting for a scheduler at %s", source)
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = 0.05
    while True:
        current = read_scheduler_file(scheduler_file) if scheduler_file else address
        if current and scheduler_answers(current):
            return current
        if deadline is not None and time.monotonic() > deadline:
            what = (
                f"scheduler file {scheduler_file} did not name a live scheduler"
                if scheduler_file
                else f"no scheduler answered at {address}"
            )
            raise RankTimeoutError(
                f"Timed out after {timeout:g} s: {what}. Start the scheduler "
                "first, check the address, or raise the timeout.",
                None,
                timeout or 0.0,
            )
        await asyncio.sleep(pause)
        pause = min(pause * 2, 1.0)


def writable_directory(path: str) -> str | None:
    """Return a problem with using ``path`` as a directory to write in."""
    if not os.path.isdir(path):
        return "the directory does not exist"
    if not os.access(path, os.W_OK | os.X_OK):
        return "the directory is not writable"
    return None
