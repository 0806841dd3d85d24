"""``initialize()`` and ``send_close_signal()``: a Dask cluster for a batch script.

A thin layer over the launch core; see ``_launch`` for how ranks start and
how the job ends.
"""

from __future__ import annotations

import atexit
import sys
from typing import Any

from . import _launch
from ._client import ClientSession
from ._layout import Role
from ._options import Mode, Style
from .exceptions import DaskMPIError

_session: ClientSession | None = None


def initialize(
    interface: str | None = None,
    nthreads: int | None = None,
    local_directory: str | None = None,
    memory_limit: str | int | float | None = None,
    nanny: bool | None = None,
    dashboard: bool | None = None,
    dashboard_address: str | None = None,
    protocol: str | None = None,
    worker_class: str | None = None,
    worker_options: dict[str, Any] | None = None,
    comm: Any = None,
    exit: bool = True,
    *,
    security: Any = None,
    **options: Any,
) -> bool:
    """Turn the ranks of this MPI job into a Dask cluster with a client.

    Rank 0 runs the scheduler, rank 1 returns from this call and runs the
    rest of the script as the client, and ranks 2 and up run workers. A
    plain ``distributed.Client()`` on rank 1 connects to the cluster. On
    rank 1 this returns once the workers have registered, or once
    ``mpi.startup-timeout`` passed (the missing ranks are logged).

    Parameters
    ----------
    interface
        Network interface for scheduler and workers, such as ``ib0``. None
        listens on loopback when all ranks share one node (nothing outside
        the node can connect), else on the default route's interface.
    nthreads
        Threads per worker. None: the cores this rank may use divided among
        the ranks that share them, at least 1.
    local_directory
        Worker scratch space. None: ``$TMPDIR``, ``$SLURM_TMPDIR`` or the
        system's temporary directory, which are node-local on HPC systems.
    memory_limit
        Bytes per worker, a fraction of the node's memory, ``"auto"`` (the
        node's memory divided among the ranks on it) or 0 for no limit.
    nanny
        Run each worker under a ``distributed.Nanny`` that restarts it.
        Default False, from ``mpi.worker-class``.
    dashboard, dashboard_address
        The scheduler's web dashboard; the default address ``:8787`` falls
        back to a free port when 8787 is taken.
    protocol
        ``tcp``, ``tls``, ``inproc``, or ``ucx`` with the distributed-ucxx
        package; None means TLS over TCP.
    worker_class
        Dotted name of the worker class; default ``distributed.Worker``.
    worker_options
        Extra keyword arguments for the worker class.
    comm
        The MPI communicator to build the cluster from; COMM_WORLD if None.
    exit
        True: scheduler and worker ranks exit when the client script ends.
        False: they return False once the client called
        :func:`send_close_signal` (or its interpreter exited), and ``comm``
        can be used for further MPI work.
    security
        None or True: TLS with throw-away credentials shared over MPI.
        False: no TLS. A ``distributed.Security`` is used as given.
    **options
        Any other option by its Python name (``startup_timeout``,
        ``shutdown_timeout``, ``scheduler_options``, ``workers_per_rank``,
        ``name``, ``shutdown_signals``, ``log_level``).

    Returns
    -------
    bool
        True on the client rank; False on the others with ``exit=False``.
    """
    global _session
    given = dict(
        interface=interface,
        nthreads=nthreads,
        local_directory=local_directory,
        memory_limit=memory_limit,
        dashboard=dashboard,
        dashboard_address=dashboard_address,
        protocol=protocol,
        worker_class=worker_class,
        worker_options=worker_options,
        security=security,
        **options,
    )
    job = start(Mode.INITIALIZE, given, nanny, comm)
    if Role.CLIENT not in job.role:
        code = _launch.run_serving(job, exiting=exit)
        if exit:
            sys.exit(code)
        job.world.close()
        return False

    _launch.receive_address(job)
    _session = ClientSession(job)
    atexit.register(_end_at_exit)
    _note_uncaught_exceptions(_session)
    _session.wait_until_ready()
    _session.take_signals()
    _session.watch_for_interrupt()
    return True


def _note_uncaught_exceptions(session: ClientSession) -> None:
    """Let the session know that the script died of an exception."""
    previous = sys.excepthook

    def hook(kind: type, value: BaseException, traceback: Any) -> None:
        session.record_exit(value)
        previous(kind, value, traceback)

    sys.excepthook = hook


def start(mode: Mode, given: dict[str, Any], nanny: bool | None, comm: Any) -> Any:
    """Prepare the job for an API function; quiet the error on all but one rank."""
    try:
        return _launch.prepare(mode, Style.API, given, nanny, comm)
    except DaskMPIError as error:
        _quiet_on_other_ranks(error, comm)
        raise


def _quiet_on_other_ranks(error: BaseException, comm: Any) -> None:
    """Print ``error``'s traceback from the lowest rank only.

    Every rank raises the same error at the same time; one traceback on
    stderr is enough.
    """
    if _launch.this_rank(comm) == 0:
        return
    previous = sys.excepthook

    def hook(kind: type, value: BaseException, traceback: Any) -> None:
        if value is not error:
            previous(kind, value, traceback)

    sys.excepthook = hook


def _end_at_exit() -> None:
    if _session is not None and not _session.ended:
        _session.end_at_exit("the client script ended")


def send_close_signal() -> None:
    """Shut the cluster down now, from the client.

    With ``initialize(exit=False)`` the scheduler and worker ranks then
    return from ``initialize()``. Outside a dask-mpi job this asks the
    scheduler of the default ``Client()`` to shut down.
    """
    if _session is not None:
        _session.end("the client called send_close_signal()")
        return
    from distributed import Client

    with Client() as client:
        client.shutdown()
