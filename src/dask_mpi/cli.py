"""The ``dask-mpi`` command: a long-lived Dask cluster from an MPI job.

A thin layer over the launch core. Defaults shown in ``--help`` come from
``dask.config`` (``mpi.*``), which ``mpi.yaml`` fills.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from . import _launch
from ._options import Mode, Style, config_value, deprecated
from .exceptions import DaskMPIError


def _shown(key: str, fallback: str | None = None) -> str | None:
    value = config_value(key)
    return fallback if value is None else str(value)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("scheduler_address", required=False)
@click.option(
    "--scheduler-file",
    type=str,
    help="Write the scheduler address "
    "to this JSON file (with --no-scheduler: read it from there).",
)
@click.option(
    "--scheduler-port",
    type=int,
    show_default=_shown("scheduler-port", "random"),
    help="Scheduler port; a port in use is an error.",
)
@click.option(
    "--scheduler-rank",
    type=int,
    show_default=_shown("scheduler-rank"),
    help="Rank that runs the scheduler.",
)
@click.option(
    "--interface",
    type=str,
    help="Network interface for scheduler and workers, e.g. ib0.",
)
@click.option(
    "--protocol",
    type=str,
    help="tcp, tls, inproc, or ucx with distributed-ucxx (default tcp).",
)
@click.option(
    "--nthreads",
    type=int,
    show_default=_shown("nthreads", "the rank's CPU share"),
    help="Threads per worker.",
)
@click.option(
    "--memory-limit",
    type=str,
    show_default=_shown("memory-limit"),
    help="Bytes per worker (4GB), a fraction of the node's memory, "
    "'auto' (the node's memory divided among its ranks) or 0.",
)
@click.option(
    "--local-directory",
    type=str,
    show_default=_shown("local-directory", "$TMPDIR"),
    help="Worker scratch directory.",
)
@click.option(
    "--scheduler/--no-scheduler",
    default=None,
    show_default="scheduler",
    help="--no-scheduler: every rank runs a worker that joins the "
    "scheduler given by SCHEDULER_ADDRESS or --scheduler-file.",
)
@click.option(
    "--nanny/--no-nanny",
    default=None,
    help="Deprecated spelling of "
    "--worker-class distributed.Nanny / distributed.Worker.",
)
@click.option(
    "--exclusive-workers/--inclusive-workers",
    default=None,
    show_default="exclusive",
    help="Whether the scheduler rank also runs a worker.",
)
@click.option(
    "--worker-class",
    type=str,
    show_default=_shown("worker-class", "distributed.Nanny"),
    help="Dotted name of the worker class, e.g. "
    "distributed.Worker or dask_cuda.CUDAWorker.",
)
@click.option(
    "--worker-options",
    type=str,
    show_default="{}",
    help="JSON object of extra keyword arguments for the worker class.",
)
@click.option(
    "--scheduler-options",
    type=str,
    show_default="{}",
    help="JSON object of extra keyword arguments for the Scheduler.",
)
@click.option(
    "--dashboard/--no-dashboard",
    default=None,
    show_default="dashboard",
    help="Run the scheduler's web dashboard.",
)
@click.option(
    "--dashboard-address",
    type=str,
    show_default=":8787",
    help="Dashboard address; 8787 falls back to a free port when it "
    "is taken, a port you give must be free.",
)
@click.option(
    "--name",
    type=str,
    show_default=_shown("name"),
    help="Worker name prefix; names are PREFIX-RANK.",
)
@click.option(
    "--tls/--no-tls",
    "security",
    default=None,
    show_default="no-tls",
    help="TLS with throw-away credentials; the scheduler file then "
    "holds the client's key, and is readable by its owner only.",
)
@click.option(
    "--workers-per-rank",
    type=int,
    show_default=_shown("workers-per-rank"),
    help="Workers started on each worker rank.",
)
@click.option(
    "--startup-timeout",
    type=str,
    show_default=_shown("startup-timeout"),
    help="Wait this long for the scheduler and the workers to start.",
)
@click.option(
    "--shutdown-timeout",
    type=str,
    show_default=_shown("shutdown-timeout"),
    help="After this long the ending job is aborted through MPI.",
)
@click.option(
    "--rejoin-timeout",
    type=str,
    show_default=_shown("rejoin-timeout", "none (wait for ever)"),
    help="With --no-scheduler: how long to wait for a scheduler that went away.",
)
@click.option(
    "--shutdown-signals",
    type=str,
    help="Extra signals that end the "
    "cluster, e.g. USR1 for a Slurm --signal=USR1@60 warning.",
)
@click.option(
    "--log-level",
    type=str,
    show_default=_shown("log-level"),
    help="Level of distributed's own log lines.",
)
@click.option(
    "--messaging",
    type=str,
    show_default=_shown("messaging"),
    help="How ranks talk: mpi, files (without mpi4py, through the "
    "scheduler file's directory), or auto.",
)
@click.version_option(package_name="dask-mpi")
def main(nanny: bool | None, **given: Any) -> None:
    """Run a Dask cluster on the ranks of this MPI job.

    The scheduler runs on --scheduler-rank and every other rank runs a
    worker, for example `mpirun -np 4 dask-mpi --scheduler-file s.json`.
    The cluster runs until a client calls Client.shutdown(), a rank or the
    launcher gets SIGTERM or SIGINT, or the scheduler dies.
    """
    sys.exit(run(given, nanny))


def run(given: dict[str, Any], nanny: bool | None) -> int:
    """Run the CLI cluster on this rank and return the rank's exit code."""
    try:
        job = _launch.prepare(Mode.CLI, Style.CLI, given, nanny, None)
        if nanny is not None and job.rank == 0:
            deprecated(
                f"--{'' if nanny else 'no-'}nanny is deprecated; use --worker-class "
                f"distributed.{'Nanny' if nanny else 'Worker'} instead."
            )
        return _launch.run_serving(job, exiting=True)
    except DaskMPIError as error:
        return _report(error)


def _report(error: DaskMPIError) -> int:
    """Print ``error`` from one rank and return this rank's exit code."""
    rank = _launch.this_rank()
    reporter = getattr(error, "reporter", 0)
    if rank != reporter:
        return 0
    click.echo(f"dask-mpi: error: {error}", err=True)
    return _launch.usage_exit_code(error)


if __name__ == "__main__":
    main()
