"""The only module that touches mpi4py.

Every wait on another rank polls a non-blocking call with short sleeps and
has a deadline, because a rank blocked inside MPI spins a core and cannot
notice that its peer is gone. mpi4py is imported on first use, so importing
dask_mpi starts no MPI.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

from .exceptions import MPIMismatchError, RankTimeoutError

# Message tags on the package's private communicator.
TAG_CONTROL = 17
TAG_DATA = 18
TAG_READY = 19
TAG_INTERRUPT = 20

# Sleeps between polls grow from the first to the last value; the last one
# bounds how late a rank notices a message while it idles.
_POLL_FIRST = 0.0005
_POLL_MAX = 0.02

# Environment variables through which launchers announce the job's size.
_LAUNCHER_SIZE_VARIABLES = (
    "PMI_SIZE",
    "OMPI_COMM_WORLD_SIZE",
    "PMIX_SIZE",
    "MPI_LOCALNRANKS",
    "SLURM_STEP_NUM_TASKS",
    "FLUX_JOB_SIZE",
)


def mpi() -> Any:
    """Import and return ``mpi4py.MPI``, which initializes MPI."""
    from mpi4py import MPI

    return MPI


def check_launcher(size: int) -> None:
    """Raise MPIMismatchError if mpi4py has one rank but the launcher started more.

    A singleton world inside a multi-process launch means mpi4py loaded an
    MPI library other than the launcher's, so every process thinks it is
    alone and would start its own scheduler.
    """
    if size != 1:
        return
    for variable in _LAUNCHER_SIZE_VARIABLES:
        value = os.environ.get(variable, "")
        if value.isdigit() and int(value) > 1:
            break
    else:
        return
    library = mpi().Get_library_version().strip().splitlines()[0]
    raise MPIMismatchError(
        f"mpi4py sees a world of 1 rank, but the launcher started {value} "
        f"processes ({variable}={value}). mpi4py uses {library!r}, which is "
        "not the MPI library of the launcher. Compare "
        '`python -c "import mpi4py; print(mpi4py.get_config())"` and '
        '`python -c "from mpi4py import MPI; print(MPI.Get_library_version())"` '
        "with `mpirun --version`, then start the job with the mpirun that "
        "belongs to mpi4py's MPI (with the mpich wheel: the mpirun in the "
        "same environment's bin folder) or rebuild mpi4py against the site MPI."
    )


def flush_output() -> None:
    """Flush log handlers and standard streams before this process ends.

    The launcher stops reading a rank's output once the job aborts, so a
    short pause lets it collect the last lines.
    """
    import logging
    import sys

    for name in ("dask_mpi", "distributed", ""):
        for handler in logging.getLogger(name).handlers:
            handler.flush()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    time.sleep(0.2)


def _deadline(timeout: float | None) -> float:
    return float("inf") if timeout is None else time.monotonic() + timeout


class Channel:
    """Messaging between the ranks of one job, with deadlines on every wait.

    Subclasses provide :meth:`post` (start a send, return an object with a
    ``test()`` method) and :meth:`poll` (return a pending message or None);
    everything else is built on those two.
    """

    rank: int
    size: int

    # Sleeps between polls grow from the first to the last value; the last
    # one bounds how late a rank notices a message while it idles.
    poll_first = _POLL_FIRST
    poll_max = _POLL_MAX
    # The bound for short waits on the critical path of start-up and
    # shutdown, such as the scheduler address. They begin after every rank
    # finished importing, so frequent polls take no core from a slow rank.
    poll_brisk = 0.002

    def post(self, obj: Any, dest: int, tag: int = TAG_CONTROL) -> Any:
        raise NotImplementedError

    def poll(self, source: int | None = None, tag: int = TAG_CONTROL) -> Any:
        raise NotImplementedError

    def open(self, timeout: float) -> None:
        """Prepare the channel; a collective step on every rank."""

    def close(self) -> None:
        """Release what :meth:`open` created."""

    def abort(self, code: int) -> None:
        raise NotImplementedError

    def _wait(
        self,
        ready: Callable[[], Any],
        timeout: float | None,
        rank: int | None,
        what: str,
        brisk: bool = False,
    ) -> Any:
        deadline, pause = _deadline(timeout), self.poll_first
        longest = self.poll_brisk if brisk else self.poll_max
        while True:
            result = ready()
            if result:
                return result
            if time.monotonic() > deadline:
                who = "any rank" if rank is None else f"rank {rank}"
                raise RankTimeoutError(
                    f"Timed out after {timeout:g} s waiting for {who} to {what}.",
                    rank,
                    timeout or 0.0,
                )
            time.sleep(pause)
            pause = min(pause * 2, longest)

    def send(
        self, obj: Any, dest: int, tag: int = TAG_DATA, timeout: float | None = None
    ) -> None:
        """Send ``obj`` to ``dest``, waiting until the send buffer is free."""
        request = self.post(obj, dest, tag)
        self._wait(lambda: request.test()[0], timeout, dest, "receive a message")

    def recv(
        self,
        source: int | None = None,
        tag: int = TAG_DATA,
        timeout: float | None = None,
        what: str = "send a message",
        brisk: bool = False,
    ) -> Any:
        """Wait for a message and return ``(source, obj)``.

        ``brisk`` polls more often, for short waits on the critical path.
        """
        return self._wait(lambda: self.poll(source, tag), timeout, source, what, brisk)

    async def arecv(
        self,
        source: int | None = None,
        tag: int = TAG_CONTROL,
        timeout: float | None = None,
    ) -> Any:
        """Wait for a message without blocking the event loop."""
        deadline, pause = _deadline(timeout), self.poll_first
        while True:
            found = self.poll(source, tag)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise RankTimeoutError(
                    f"Timed out after {timeout:g} s waiting for a message.",
                    source,
                    timeout or 0.0,
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, self.poll_max)

    def allgather(self, obj: Any, timeout: float, what: str) -> list[Any]:
        """Collect one object from every rank on every rank."""
        if self.rank != 0:
            self.send(obj, 0, TAG_DATA, timeout)
            return self.recv(0, TAG_DATA, timeout, what)[1]
        items: list[Any] = [None] * self.size
        items[0] = obj
        missing = set(range(1, self.size))
        deadline = _deadline(timeout)
        while missing:
            remaining = max(deadline - time.monotonic(), 0.0)
            try:
                source, item = self.recv(None, TAG_DATA, remaining, what)
            except RankTimeoutError:
                raise RankTimeoutError(
                    f"Timed out after {timeout:g} s: rank(s) "
                    f"{', '.join(map(str, sorted(missing)))} did not {what}.",
                    min(missing),
                    timeout,
                ) from None
            items[source] = item
            missing.discard(source)
        self.scatter_same(items, timeout)
        return items

    def scatter_same(self, obj: Any, timeout: float) -> None:
        """Send ``obj`` from this rank to every other rank."""
        requests = [
            self.post(obj, r, TAG_DATA) for r in range(self.size) if r != self.rank
        ]
        self._wait(
            lambda: all(r.test()[0] for r in requests),
            timeout,
            None,
            "receive a message",
        )


class World(Channel):
    """Point-to-point messaging on a private duplicate of a communicator.

    Parameters
    ----------
    comm
        The communicator the cluster is built from. A private duplicate
        carries this package's messages, so that they never match receives
        of the user's own code on ``comm``.
    """

    def __init__(self, comm: Any):
        self.comm = comm
        self.rank: int = comm.Get_rank()
        self.size: int = comm.Get_size()
        self.private: Any = None

    @classmethod
    def of(cls, comm: Any = None) -> World:
        """Wrap ``comm``, or COMM_WORLD when None."""
        return cls(mpi().COMM_WORLD if comm is None else comm)

    def open(self, timeout: float) -> None:
        """Create the private communicator (collective, with a deadline)."""
        private, request = self.comm.Idup()
        self._wait(request.Test, timeout, None, "create a private communicator")
        self.private = private

    def close(self) -> None:
        """Free the private communicator; the caller's one stays usable."""
        if self.private is not None:
            self.private.Free()
            self.private = None

    def post(self, obj: Any, dest: int, tag: int = TAG_CONTROL) -> Any:
        """Start sending ``obj`` to ``dest`` and return the request."""
        return self.private.isend(obj, dest=dest, tag=tag)

    def poll(self, source: int | None = None, tag: int = TAG_CONTROL) -> Any:
        """Return ``(source, obj)`` of a pending message, or None."""
        MPI = mpi()
        status = MPI.Status()
        message = self.private.improbe(
            source=MPI.ANY_SOURCE if source is None else source,
            tag=tag,
            status=status,
        )
        if message is None:
            return None
        return status.Get_source(), message.recv()

    def abort(self, code: int) -> None:
        """End every rank of the job now with ``code``."""
        flush_output()
        mpi().COMM_WORLD.Abort(code)
