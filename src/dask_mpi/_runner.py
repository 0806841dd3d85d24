"""``MPIRunner``: the cluster as a context manager, in the runner style.

Every rank runs the same ``with`` statement::

    with MPIRunner() as runner, Client(runner) as client:
        ...  # runs on the client rank only

The scheduler and worker ranks serve inside ``__enter__`` and, when the
cluster closes, leave with ``SystemExit`` (code 0, or the job's code on the
rank that decided it), so the body and the rest of the script run on the
client rank only, as with ``initialize()``.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from . import _launch
from ._client import ClientSession, start_client
from ._layout import Role
from ._options import Mode
from .core import start


class MPIRunner:
    """Run a Dask cluster on the ranks of this job for one ``with`` block.

    Takes the parameters of :func:`dask_mpi.execute` except the client
    function: ``client_rank``, ``scheduler_rank``, ``exclusive_workers``,
    ``worker_class``, ``security`` and so on, plus ``scheduler_options`` and
    ``worker_options``, dictionaries passed to the Scheduler and the worker
    class as keyword arguments.

    Attributes
    ----------
    scheduler_address
        The scheduler's address; ``Client(runner)`` connects to it.
    security
        The credentials of the job (TLS by default), used by ``Client``.
    """

    def __init__(self, *, comm: Any = None, nanny: bool | None = None, **options: Any):
        self._options = options
        self._comm = comm
        self._nanny = nanny
        self._session: ClientSession | None = None

    def __enter__(self) -> MPIRunner:
        job = start(Mode.EXECUTE, self._options, self._nanny, self._comm)
        if Role.CLIENT not in job.role:
            code = _launch.run_serving(job, exiting=True)
            job.world.close()
            raise SystemExit(code)
        self._session = start_client(job)
        return self

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        session = self._session
        if session is None:
            return
        if value is not None:
            session.record_exit(value)
        session.finish("the runner's with block ended")

    # The attributes that ``distributed.Client`` reads from a cluster object.

    @property
    def scheduler_address(self) -> str:
        """The scheduler's address."""
        if self._session is None:
            raise RuntimeError("Use the runner inside its with block.")
        return self._session.job.address

    @property
    def security(self) -> Any:
        """The job's Security, or None without TLS."""
        return None if self._session is None else self._session.job.security

    @property
    def status(self) -> Any:
        """``running`` inside the with block, ``closed`` after it."""
        from distributed.core import Status

        if self._session is None or self._session.ended:
            return Status.closed
        return Status.running

    @property
    def dashboard_link(self) -> str:
        """The dashboard's URL, or an empty string."""
        return ""

    def __await__(self) -> Generator[Any, None, MPIRunner]:
        async def started() -> MPIRunner:
            return self

        return started().__await__()

    async def close(self) -> None:
        """Do nothing: the with block closes the cluster."""

    def __repr__(self) -> str:
        address = self._session.job.address if self._session else None
        return f"<MPIRunner scheduler={address!r}>"
