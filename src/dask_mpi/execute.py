"""``execute()``: run a function as the client of a cluster made of the job."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import _launch
from ._client import start_client
from ._layout import Role
from ._options import Mode
from .core import start


def execute(
    client_function: Callable[..., Any] | None = None,
    client_args: tuple[Any, ...] = (),
    client_kwargs: dict[str, Any] | None = None,
    client_rank: int | None = None,
    scheduler: bool | None = None,
    scheduler_rank: int | None = None,
    scheduler_address: str | None = None,
    scheduler_port: int | None = None,
    scheduler_file: str | None = None,
    interface: str | None = None,
    nthreads: int | None = None,
    local_directory: str | None = None,
    memory_limit: str | int | float | None = None,
    nanny: bool | None = None,
    dashboard: bool | None = None,
    dashboard_address: str | None = None,
    protocol: str | None = None,
    exclusive_workers: bool | None = None,
    worker_class: str | None = None,
    worker_options: dict[str, Any] | None = None,
    worker_name: str | None = None,
    comm: Any = None,
    *,
    security: Any = None,
    **options: Any,
) -> Any:
    """Run a Dask cluster on the ranks of this job and call a function as its client.

    Every rank calls ``execute``. The scheduler runs on ``scheduler_rank``
    (default 0), ``client_function(*client_args, **client_kwargs)`` runs on
    ``client_rank`` (default 1), and the other ranks run workers. When the
    function returns or raises, the cluster shuts down and every rank
    returns; the client rank returns the function's result or re-raises
    its exception, so the job's exit code reports it.

    Parameters
    ----------
    client_function
        Called on the client rank; a plain ``Client()`` inside it connects.
        None: the client rank only waits for the workers and ends the job.
    scheduler
        False: join the scheduler at ``scheduler_address`` or in
        ``scheduler_file`` instead of starting one.
    exclusive_workers
        False: workers run on the scheduler and client ranks too, so one
        rank is a complete cluster.
    worker_name
        Prefix of the worker names, which are PREFIX-RANK.

    The other parameters are those of :func:`dask_mpi.initialize`, and any
    option can be given by its Python name in ``**options``.
    """
    given = dict(
        client_rank=client_rank,
        scheduler=scheduler,
        scheduler_rank=scheduler_rank,
        scheduler_address=scheduler_address,
        scheduler_port=scheduler_port,
        scheduler_file=scheduler_file,
        interface=interface,
        nthreads=nthreads,
        local_directory=local_directory,
        memory_limit=memory_limit,
        dashboard=dashboard,
        dashboard_address=dashboard_address,
        protocol=protocol,
        exclusive_workers=exclusive_workers,
        worker_class=worker_class,
        worker_options=worker_options,
        security=security,
        **options,
    )
    if worker_name is not None:
        given["name"] = worker_name
    job = start(Mode.EXECUTE, given, nanny, comm)
    if Role.CLIENT not in job.role:
        _launch.run_serving(job)
        job.world.close()
        return None
    return _run_client(job, client_function, client_args, client_kwargs or {})


def _run_client(
    job: Any,
    function: Callable[..., Any] | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    session = start_client(job)
    try:
        result = function(*args, **kwargs) if function is not None else None
        session.code = 0
        return result
    except BaseException as error:
        session.record_exit(error)
        raise
    finally:
        session.finish("the client function ended")
