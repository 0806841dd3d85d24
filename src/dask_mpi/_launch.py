"""The launch core under the CLI and every API function.

Each rank runs the same steps: check the options, learn its role, exchange
facts about its node with every other rank, start its part of the cluster,
and serve until the coordinator (the scheduler rank, or rank 0 when the job
joins an outside scheduler) sends the message that ends the job. Ending goes through MPI: the
coordinator tells the worker ranks to close, waits for them, closes the
scheduler with no workers attached, and only then releases the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import _child, _exit, _logs, _nodes, _scale, _scheduler, _security, _worker
from ._layout import Layout, Role, plan
from ._options import Mode, Options, Style, resolve
from ._world import TAG_DATA, TAG_READY, Channel, World, check_launcher
from .exceptions import DaskMPIError, StartupError, UsageError

logger = logging.getLogger(__name__)

# Exit codes besides 0 and 128+signal.
EXIT_FAILURE = 1
EXIT_USAGE = 2


@dataclass
class Job:
    """One rank's view of the job: options, roles, peers and shared secrets."""

    mode: Mode
    style: Style
    options: Options
    world: Channel
    layout: Layout
    infos: list[_nodes.RankInfo] = field(default_factory=list)
    host: str | None = None
    loopback: bool = False
    security: Any = None
    address: str | None = None
    signal_received: int | None = None

    @property
    def join_tag(self) -> str:
        """A short tag, the same on every rank, unique to this job.

        Workers that join an outside scheduler add it to their names, so
        that they never collide with the names of that cluster's workers.
        """
        import hashlib

        first = self.infos[0]
        text = f"{first.host}-{first.pid}"
        return hashlib.sha1(text.encode()).hexdigest()[:6]

    @property
    def rank(self) -> int:
        """This rank's index in the world."""
        return self.world.rank

    @property
    def role(self) -> Role:
        """This rank's roles."""
        return self.layout.role(self.rank)

    @property
    def serves(self) -> bool:
        """True when this rank runs a scheduler or workers."""
        return bool(self.role & (Role.SCHEDULER | Role.WORKER)) or (
            not self.options.scheduler and self.mode is Mode.CLI
        )

    def where(self, rank: int) -> str:
        """Name ``rank`` and its host for messages."""
        host = self.infos[rank].host if self.infos else "?"
        return f"rank {rank} on {host}"


# ---------------------------------------------------------------- start-up


def prepare(
    mode: Mode,
    style: Style,
    given: Mapping[str, Any],
    nanny: bool | None,
    comm: Any,
) -> Job:
    """Check options, assign roles and exchange node facts, on every rank.

    Every check that can fail on one rank only (a missing interface, an
    unwritable scheduler file directory, a taken port) travels through the
    first exchange, so that all ranks fail together instead of some waiting
    for the others forever.
    """
    options = resolve(mode, style, given, nanny)
    _exit.arm()
    world = open_world(options, style, comm)
    layout = plan(world.size, mode, options, style)
    _logs.configure(world.rank, options.log_level)
    if world.rank == 0 and getattr(world, "reason", None):
        logger.info("%s; ranks talk through files in %s", world.reason, world.directory)
    job = Job(mode, style, options, world, layout)

    world.open(options.startup_timeout)
    try:
        problem = _local_problem(job)
    except Exception as error:
        # Reported through the exchange, so that no rank waits for this one.
        problem = (
            "the start-up checks",
            f"{type(error).__name__}: {error}",
            "a check failed unexpectedly",
            "Check the options named in the message, or report this error.",
        )
    mine = _nodes.describe_self(world.rank, problem)
    job.infos = world.allgather(
        mine, options.startup_timeout, "join the start-up exchange"
    )
    for info in job.infos:
        if info.error is not None:
            option, value, text, fix = info.error
            raise UsageError(option, value, f"{text} on {job.where(info.rank)}", fix)

    workers = len(layout.worker_ranks) * options.workers_per_rank
    _scale.prepare_rank(workers, Role.SCHEDULER in job.role, options.workers_per_rank)
    if Role.SCHEDULER in job.role and len({i.environment for i in job.infos}) == 1:
        _scale.deduplicate_version_check()
    job.loopback = (
        mode.batch and not options.interface and (_nodes.single_host(job.infos))
    )
    job.host = _listen_host(job)
    return job


def open_world(options: Options, style: Style, comm: Any) -> Any:
    """Return the channel the ranks talk over: MPI, or files without mpi4py."""
    from ._options import option_name

    messaging = options.messaging
    reason = "--messaging files" if style is Style.CLI else "messaging='files'"
    if messaging == "auto":
        try:
            world = World.of(comm)
        except (ImportError, RuntimeError) as error:
            reason = f"mpi4py is not usable ({error})"
            messaging = "files"
        else:
            check_launcher(world.size)
            return world
    elif messaging == "mpi":
        world = World.of(comm)
        check_launcher(world.size)
        return world

    from ._envworld import FileWorld

    if not options.scheduler_file:
        raise UsageError(
            option_name("messaging", style),
            messaging,
            "launching without mpi4py needs a scheduler file",
            f"Give {option_name('scheduler-file', style)} PATH on a filesystem "
            "that every rank can read.",
        )
    files = FileWorld.for_job(options.scheduler_file)
    files.reason = reason
    return files


def this_rank(comm: Any = None) -> int:
    """Return this process's rank, also before the job's channel is open."""
    import sys

    if "mpi4py.MPI" in sys.modules or comm is not None:
        return World.of(comm).rank
    from ._envworld import rank_and_size

    found = rank_and_size()
    return found[0] if found else 0


def _local_problem(job: Job) -> tuple[str, Any, str, str] | None:
    """Return (option, value, problem, fix) for a check that failed here."""
    from ._options import option_name

    options, role = job.options, job.role

    def name(key: str) -> str:
        return option_name(key, job.style)

    if options.interface and job.serves:
        import psutil

        interfaces = psutil.net_if_addrs()
        if options.interface not in interfaces:
            return (
                name("interface"),
                options.interface,
                "no such network interface",
                f"Give one of: {', '.join(sorted(interfaces))}.",
            )
    if Role.SCHEDULER in role and options.scheduler_file:
        directory = os.path.dirname(options.scheduler_file) or "."
        problem = _worker.writable_directory(directory)
        if problem:
            return (
                name("scheduler-file"),
                options.scheduler_file,
                f"{problem} ({directory})",
                "Create the directory, or give a path in a writable directory.",
            )
    if Role.SCHEDULER in role:
        for key, port in _ports_to_check(options):
            if not _scheduler.port_is_free("", port):
                return (
                    name(key),
                    port,
                    "the port is already in use",
                    "Give a free port, or leave the option out for a free one.",
                )
    if options.local_directory and Role.WORKER in role:
        problem = _worker.writable_directory(options.local_directory)
        if problem:
            return (
                name("local-directory"),
                options.local_directory,
                problem,
                "Give an existing, writable directory on node-local storage.",
            )
    return None


def _ports_to_check(options: Options) -> list[tuple[str, int]]:
    ports = []
    if options.scheduler_port:
        ports.append(("scheduler-port", options.scheduler_port))
    if options.dashboard and options.dashboard_address:
        port = _scheduler.split_host_port(options.dashboard_address)[1]
        if port:
            ports.append(("dashboard-address", port))
    return ports


def _listen_host(job: Job) -> str | None:
    """Return the address servers bind to, or None when an interface is named.

    A batch job on one node listens on loopback, so nothing outside the node
    can connect. Otherwise servers listen on the address of the default
    route's interface, not on every interface.
    """
    if job.options.interface:
        return None
    if job.loopback:
        return "127.0.0.1"
    return _nodes.default_route_address()


def share_failure(job: Job, error: str) -> None:
    """Tell every other rank that the scheduler failed to start, and why."""
    job.world.scatter_same(("error", error), job.options.startup_timeout)


def receive_address(job: Job) -> None:
    """Receive the scheduler address and credentials; raise if it failed."""
    source = job.layout.scheduler_rank
    _, payload = job.world.recv(
        source,
        TAG_DATA,
        job.options.startup_timeout,
        "start the scheduler and send its address",
        brisk=True,
    )
    if payload[0] == "error":
        error = StartupError(payload[1])
        error.reporter = source  # type: ignore[attr-defined]
        raise error
    job.security = payload[2]
    job.address = payload[1]


# ---------------------------------------------------------------- serving


def install_signal_handlers(job: Job, loop: asyncio.AbstractEventLoop) -> list[int]:
    """Record SIGTERM, SIGINT and the shutdown signals in ``job``.

    The handlers only store the signal; the serving loop acts on it. A
    second signal while the job is ending aborts it at once.
    """
    signals = [signal.SIGTERM, signal.SIGINT, *job.options.shutdown_signals]

    def received(number: int) -> None:
        if job.signal_received is not None:
            logger.warning(
                "Second signal %s while the job was ending; aborting it with "
                "exit code %d",
                _signal_name(number),
                128 + number,
            )
            job.world.abort(128 + number)
        job.signal_received = number

    installed = []
    for number in dict.fromkeys(signals):
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            loop.add_signal_handler(number, received, number)
            installed.append(number)
    return installed


def _signal_name(number: int) -> str:
    with contextlib.suppress(ValueError):
        return signal.Signals(number).name
    return str(number)


async def serve(job: Job) -> int:
    """Run this rank's scheduler and workers until the job ends.

    Returns the exit code for this rank: the job's code on the rank that
    decided the outcome and 0 elsewhere.
    """
    from ._coordinator import coordinate, follow, join

    if job.mode is Mode.CLI and not job.options.scheduler:
        return await join(job)
    scheduler = None
    if Role.SCHEDULER in job.role:
        scheduler = await _start_scheduler(job)
    elif not job.options.scheduler:
        await outside_scheduler(job)
    elif job.address is None:
        receive_address(job)

    workers: list[Any] = []
    if Role.WORKER in job.role:
        failure = await _start_workers(job, workers)
        if failure is not None:
            _report_failure(job, failure)
        elif job.layout.scheduler_rank is None and job.layout.client_rank is not None:
            # No scheduler rank watches the registrations, so tell the client.
            job.world.post(("ready", []), job.layout.client_rank, TAG_READY)

    if job.rank == job.layout.coordinator and job.options.scheduler:
        return await coordinate(job, scheduler, workers)
    return await follow(job, workers)


async def outside_scheduler(job: Job) -> None:
    """Find the outside scheduler that an execute(scheduler=False) job joins."""
    options = job.options
    job.address = await _worker.wait_for_scheduler(
        options.scheduler_address, options.scheduler_file, options.startup_timeout
    )
    if options.scheduler_file:
        info = _worker.read_scheduler_info(options.scheduler_file)
        job.security = _security.from_scheduler_file(info) or job.security
    elif options.security not in (None, True, False):
        job.security = options.security


async def _start_scheduler(job: Job) -> Any:
    if job.mode.batch and job.security is None:
        job.security = _security.for_batch(job.options)
    elif job.security is None:
        job.security = _security.for_cli(job.options)
    try:
        scheduler = await _scheduler.start_scheduler(
            job.options, job.host, job.security
        )
    except Exception as error:
        cause = _worker.root_cause(error)
        message = (
            f"The scheduler on {job.where(job.rank)} failed to start: "
            f"{type(cause).__name__}: {cause}"
        )
        share_failure(job, message)
        failure = StartupError(message)
        failure.reporter = job.rank  # type: ignore[attr-defined]
        raise failure from error

    job.address = scheduler.address
    if job.options.scheduler_file:
        identity = _security.file_identity(scheduler, job.security)
        _scheduler.write_scheduler_file(job.options.scheduler_file, identity)
    await _async_share(job, scheduler)
    lines = _scheduler.summary(
        scheduler, job.infos, job.rank, job.loopback, cli=job.mode is Mode.CLI
    )
    for line in lines:
        logger.info("%s", line)
    return scheduler


async def _async_share(job: Job, scheduler: Any) -> None:
    payload = ("address", scheduler.address, job.security)
    requests = [
        job.world.post(payload, r, TAG_DATA)
        for r in range(job.world.size)
        if r != job.rank
    ]
    deadline = time.monotonic() + job.options.startup_timeout
    while not all(r.test()[0] for r in requests):
        if time.monotonic() > deadline:
            raise StartupError("Some ranks did not receive the scheduler address.")
        await asyncio.sleep(0.001)


def names_on(job: Job, rank: int) -> list[str]:
    """Return the worker names of ``rank``."""
    return _scheduler.worker_names(job.options.name, rank, job.options.workers_per_rank)


async def _start_workers(job: Job, workers: list[Any]) -> str | None:
    """Start this rank's workers at once; return a message if one failed."""
    options = job.options
    count = options.workers_per_rank
    nthreads = options.nthreads or _nodes.default_threads(job.infos, job.rank)
    memory = _nodes.memory_limit(options.memory_limit, job.infos, job.rank, count)
    directory = options.local_directory or _nodes.default_local_directory()
    if count > 1:
        # A starting worker locks a file of its scratch space and checks the
        # lock file of every other worker there, so the cost grows with the
        # square of the workers that share the space.
        directory = os.path.join(directory, f"dask-mpi-rank-{job.rank}")

    async def start(name: str) -> Any:
        kwargs = _worker.worker_kwargs(
            options, name, nthreads, memory, directory, job.host, job.security
        )
        return await _worker.start_worker(job.address or "", options, **kwargs)

    names = names_on(job, job.rank)
    if not options.scheduler:
        # Joining an outside scheduler: keep clear of its workers' names.
        names = [f"{name}-{job.join_tag}" for name in names]
    if options.use_nanny:
        _worker.shield_children(job.options.shutdown_signals)
    with _worker.quiet_failed_start():
        results = await asyncio.gather(
            *(start(name) for name in names), return_exceptions=True
        )
    workers.extend(r for r in results if not isinstance(r, BaseException))
    for worker in workers:
        _child.install(worker, joining=False)
    for name, result in zip(names, results, strict=True):
        if isinstance(result, BaseException):
            cause = _worker.root_cause(result)
            return (
                f"Worker {name} ({options.worker_class}) on {job.where(job.rank)} "
                f"failed to start: {type(cause).__name__}: {cause}"
            )
    return None


def _report_failure(job: Job, message: str) -> None:
    """Ask the coordinator to end the job because this rank failed to start.

    The coordinator may be this rank, which then handles its own request.
    """
    if job.signal_received is not None:
        # The signal stopped the start; it, not the failure, ends the job.
        code, message = 128 + job.signal_received, f"signal {signal_text(job)}"
    else:
        code = EXIT_FAILURE
        logger.error("%s", message)
    job.world.post(("stop", code, message, job.rank), job.layout.coordinator)


def run_serving(job: Job, exiting: bool = False) -> int:
    """Run :func:`serve` on this thread's new event loop; return the exit code.

    With ``exiting`` true, the process exits once this returns. The loop's
    signal handlers then give way to ignoring those signals, not to their
    default action, which would kill the rank in its last milliseconds and
    make mpirun report signal 15 instead of the job's code. The outcome is
    decided by then, and an ignored signal stays ignored while Python
    finalizes.
    """

    async def main() -> int:
        loop = asyncio.get_running_loop()
        installed: list[int] = []
        if threading.current_thread() is threading.main_thread():
            installed = install_signal_handlers(job, loop)
        try:
            return await serve(job)
        finally:
            if exiting:
                for number in installed:
                    loop.remove_signal_handler(number)
                    signal.signal(number, signal.SIG_IGN)

    with _worker.hidden_main_script() if job.mode.batch else contextlib.nullcontext():
        try:
            return asyncio.run(main())
        except DaskMPIError:
            raise
        except (SystemExit, KeyboardInterrupt) as error:
            if not _task_stopped_loop(job):
                raise
            return _end_after_task_exit(job, error)
        except Exception:
            logger.exception("Rank %d failed; aborting the job", job.rank)
            job.world.abort(EXIT_FAILURE)
            raise


def _task_stopped_loop(job: Job) -> bool:
    """Return whether a SystemExit out of the serving loop came from a task.

    dask-mpi's serving code returns its exit code instead of raising
    SystemExit. asyncio lets a SystemExit or KeyboardInterrupt that a task
    of a plain Worker raises leave the event loop, which stops the rank's
    workers.
    """
    return (
        Role.WORKER in job.role
        and job.rank != job.layout.coordinator
        and threading.current_thread() is threading.main_thread()
    )


def _end_after_task_exit(job: Job, error: BaseException) -> int:
    """End the job after a task's SystemExit stopped this rank's workers.

    A plain Worker cannot restart, so the job ends through the coordinator
    with the code of ``sys.exit(n)``, or 1 when n is missing, 0 or not a
    number. Otherwise the rank would wait in MPI_Finalize until the
    shutdown deadline aborted the job.
    """
    code = getattr(error, "code", None)
    if not isinstance(code, int) or isinstance(code, bool) or code == 0:
        code = EXIT_FAILURE
    if isinstance(error, SystemExit):
        raised = f"SystemExit({error.code!r})"
    else:
        raised = type(error).__name__
    reason = (
        f"a task raised {raised} on {job.where(job.rank)}, "
        "which stopped the rank's workers"
    )
    logger.error(
        "%s. A plain Worker cannot restart, so the job ends. Run tasks that "
        "may exit under distributed.Nanny (worker_class), which restarts "
        "its worker process.",
        reason[0].upper() + reason[1:],
    )
    job.world.post(("stop", code, reason, job.rank), job.layout.coordinator)
    from ._coordinator import follow

    return asyncio.run(follow(job, []))


def run_coroutine(coroutine: Any) -> Any:
    """Run ``coroutine`` to completion on a new event loop."""
    return asyncio.run(coroutine)


def wait_for_address(job: Job, background: Background) -> None:
    """Wait until the serving thread has the scheduler address."""
    deadline = time.monotonic() + job.options.startup_timeout + 5
    while job.address is None:
        if not background.thread.is_alive():
            background.join(0)
            raise StartupError("The cluster failed to start on this rank.")
        if time.monotonic() > deadline:
            raise StartupError("Timed out waiting for the scheduler address.")
        time.sleep(0.005)


class Background:
    """Serve this rank's scheduler and workers on a thread beside the client."""

    def __init__(self, job: Job):
        self.job = job
        self.code: int | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(
            target=self._run, name="dask-mpi-serve", daemon=True
        )
        self.started = threading.Event()

    def _run(self) -> None:
        try:
            self.code = run_serving(self.job)
        except BaseException as error:  # reported to the main thread
            self.error = error

    def join(self, timeout: float) -> int:
        """Wait for the thread to end; return its exit code."""
        self.thread.join(timeout)
        if self.thread.is_alive():
            logger.error("The cluster did not close within %.0f s", timeout)
            self.job.world.abort(EXIT_FAILURE)
        if self.error is not None:
            raise self.error
        return self.code or 0


def signal_text(job: Job) -> str:
    """Describe the signal this rank received."""
    return f"{_signal_name(job.signal_received or 0)} on {job.where(job.rank)}"


def usage_exit_code(error: BaseException) -> int:
    """Return the CLI exit code for ``error``."""
    from .exceptions import MPIMismatchError, WorldTooSmallException

    if isinstance(error, (UsageError, WorldTooSmallException, MPIMismatchError)):
        return EXIT_USAGE
    return EXIT_FAILURE
