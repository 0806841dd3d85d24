"""How the job ends: the coordinator decides, every other rank follows.

Messages on the control tag, all tuples:

``("stop", code, reason, decider)``
    any rank -> coordinator: end the job. ``decider`` is the rank whose exit
    code is the job's; every other rank exits 0, because MPICH's mpirun ORs
    the ranks' codes and Open MPI's reports the first non-zero one.
``("close", code, reason, decider)``
    coordinator -> other ranks: close your workers now.
``("closed", rank)``
    other rank -> coordinator: my workers are closed.
``("lost", rank, reason)``
    worker rank -> coordinator: my workers ended on their own.
``("retired", rank)``
    joining rank -> rank 0: the scheduler retired my workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

from . import _child, _scheduler, _worker
from ._client import LIFELINE_OP
from ._launch import EXIT_FAILURE, Job, names_on, signal_text
from ._layout import Role
from ._world import TAG_CONTROL, TAG_INTERRUPT, TAG_READY

logger = logging.getLogger(__name__)

_TICK = 0.02
_BRISK = 0.05
_LIVENESS_PERIOD = 1.0
_LIVENESS_FAILURES = 3


def _finished(server: Any) -> bool:
    status = getattr(server, "status", None)
    return getattr(status, "name", "") in ("closed", "closing", "failed")


async def _close_all(workers: list[Any], timeout: float, reason: str) -> None:
    """Close ``workers``, then end the processes their tasks left running."""
    if not workers:
        return
    earlier = _worker.descendants()
    await asyncio.gather(*(_worker.close_worker(w, timeout, reason) for w in workers))
    _worker.end_left_running(earlier)


class _Ticker:
    """The pace of a serving loop's MPI polls: slow while idle, fast once woken.

    Serving loops poll MPI every ``_TICK``. Polling more often costs every
    idle rank CPU time (2 % of a core at 5 ms, against 0.6 % at 20 ms), so
    the events that end a job also arrive over a socket and set
    :attr:`wake`. A message sent just before the wake-up can take another
    poll to show up, so after a wake-up the loop polls every millisecond
    for ``_BRISK`` seconds.
    """

    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.brisk_until = 0.0

    async def pause(self) -> None:
        if time.monotonic() < self.brisk_until:
            await asyncio.sleep(0.001)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), _TICK)
        if self.wake.is_set():
            self.wake.clear()
            self.brisk_until = time.monotonic() + _BRISK


# ------------------------------------------------------------ coordinator


def _intercept_terminate(scheduler: Any, ticker: _Ticker) -> asyncio.Event:
    """Make a client's ``shutdown()`` start the ordered close, not a raw one.

    ``Scheduler.close`` with every worker still attached costs time that
    grows with the square of the number of workers; the ordered close lets
    the workers leave first.
    """
    requested = asyncio.Event()

    async def terminate(**kwargs: Any) -> None:
        requested.set()
        ticker.wake.set()

    scheduler.handlers["terminate"] = terminate
    return requested


class _Lifeline:
    """Notices when the client rank's lifeline connection drops."""

    # Seconds a dropped lifeline may precede the client's stop message.
    GRACE = 2.0

    def __init__(self, scheduler: Any, ticker: _Ticker):
        self.lost_at: float | None = None
        self.ticker = ticker
        scheduler.handlers[LIFELINE_OP] = self.hold

    async def hold(self, comm: Any, rank: int | None = None) -> None:
        with contextlib.suppress(Exception):
            await comm.read()
        self.lost_at = time.monotonic()
        # The client drops the lifeline right after its stop message.
        self.ticker.wake.set()

    def client_died(self) -> bool:
        return self.lost_at is not None and time.monotonic() - self.lost_at > self.GRACE


async def _announce_ready(job: Job, scheduler: Any) -> list[int]:
    """Wait for the workers, then tell the client rank the cluster is ready."""
    names = _scheduler.expected_names(
        job.options.name, job.layout.worker_ranks, job.options.workers_per_rank
    )
    missing = await _scheduler.wait_for_workers(
        scheduler, names, job.infos, job.options.startup_timeout
    )
    if job.layout.client_rank is not None:
        job.world.post(("ready", missing), job.layout.client_rank, TAG_READY)
    return missing


async def _wait_for_end(
    job: Job,
    scheduler: Any,
    terminate: asyncio.Event,
    ready: asyncio.Task,
    lifeline: _Lifeline,
    ticker: _Ticker,
) -> tuple[int, str, int]:
    """Return (code, reason, decider) of the first event that ends the job."""
    while True:
        found = job.world.poll(None, TAG_CONTROL)
        if found is not None:
            message = found[1]
            if message[0] == "stop":
                return message[1], message[2], message[3]
            if message[0] == "lost":
                logger.warning(
                    "The workers of %s ended: %s", job.where(message[1]), message[2]
                )
        if job.signal_received is not None:
            return 128 + job.signal_received, f"signal {signal_text(job)}", job.rank
        if terminate.is_set():
            return 0, "a client asked the scheduler to shut down", job.rank
        if lifeline.client_died():
            where = job.where(job.layout.client_rank or 0)
            return (
                EXIT_FAILURE,
                f"the client on {where} died without ending the job",
                job.rank,
            )
        if _finished(scheduler):
            return EXIT_FAILURE, "the scheduler closed on its own", job.rank
        if ready.done() and not ready.cancelled() and ready.exception() is None:
            if set(ready.result()) >= set(job.layout.worker_ranks):
                return (
                    EXIT_FAILURE,
                    "no worker registered within mpi.startup-timeout",
                    job.rank,
                )
        await ticker.pause()


async def coordinate(job: Job, scheduler: Any, workers: list[Any]) -> int:
    """Serve as the coordinator until the job ends; return this rank's code."""
    ticker = _Ticker()
    terminate = _intercept_terminate(scheduler, ticker)
    lifeline = _Lifeline(scheduler, ticker)
    ready = asyncio.create_task(_announce_ready(job, scheduler))
    try:
        code, reason, decider = await _wait_for_end(
            job, scheduler, terminate, ready, lifeline, ticker
        )
    finally:
        ready.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await ready
    client_dead = lifeline.client_died()
    await close_cluster(
        job, scheduler, workers, code, reason, decider, interrupt=not client_dead
    )
    if client_dead:
        # MPI_Finalize would wait for the dead rank for ever.
        job.world.abort(code)
    return (code or 0) if decider == job.rank else 0


async def close_cluster(
    job: Job,
    scheduler: Any,
    workers: list[Any],
    code: int,
    reason: str,
    decider: int,
    interrupt: bool = True,
) -> None:
    """Close the workers, then the scheduler, then release the client ranks."""
    timeout = job.options.shutdown_timeout
    started = time.monotonic()
    if job.options.scheduler_file and job.address:
        _scheduler.remove_scheduler_file(job.options.scheduler_file, job.address)
    if interrupt:
        await _interrupt_client(job, code, reason, decider)
    deadline = time.monotonic() + timeout
    others = [r for r in range(job.world.size) if r != job.rank]
    followers = [r for r in others if _serves(job, r)]
    message = ("close", code, reason, decider)
    for rank in followers:
        job.world.post(message, rank)
    if scheduler is not None:
        _stop_assigning_tasks(scheduler)
        _mute_departure_notices(scheduler)
        _mute_ending_warnings()
        _wake_worker_ranks(job, scheduler)

    await _close_all(workers, timeout, reason)
    missing = await _collect_closed(job, followers, deadline)
    logger.debug("Workers closed after %.3f s", time.monotonic() - started)
    if missing:
        listed = ", ".join(job.where(r) for r in missing)
        logger.error(
            "No response from %s within %.0f s (mpi.shutdown-timeout); aborting "
            "the job with exit code %d. A rank that died, or whose worker runs "
            "a task that holds the GIL, cannot reply.",
            listed,
            timeout,
            code or EXIT_FAILURE,
        )
        job.world.abort(code or EXIT_FAILURE)

    if scheduler is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(scheduler.close(reason=reason), timeout)
    logger.debug("Scheduler closed after %.3f s", time.monotonic() - started)

    clients = [r for r in others if r not in followers]
    requests = [job.world.post(message, r) for r in clients]
    await _wait_sent(requests, 1.0)
    if code is None:
        logger.info("Cluster closed: %s", reason)
    else:
        logger.info("Cluster closed: %s; exit code %d", reason, code)


def _mute_departure_notices(scheduler: Any) -> None:
    """Stop telling the remaining workers about each worker that leaves.

    distributed 2026.8's ``Scheduler.remove_worker`` sends a
    "remove-worker" message to every remaining worker, so when all N
    workers leave, the scheduler sends about N^2/2 messages (half a million
    at 1,000 workers). Muting them cut the shutdown of 1,000 workers on 2
    cores from 2.6 s to 1.8 s. Every worker is closing here, so none of
    them needs to hear that a peer left.
    """
    send = scheduler.worker_send

    def worker_send(worker: str, message: Any) -> None:
        if not (isinstance(message, dict) and message.get("op") == "remove-worker"):
            send(worker, message)

    scheduler.worker_send = worker_send


def _stop_assigning_tasks(scheduler: Any) -> None:
    """Keep the scheduler from giving tasks to workers once the job ends.

    Workers leave one rank after another, and the scheduler would run the
    tasks of each worker that left on the workers still closing. Processes
    that such a task starts after its rank looked for them outlive the
    rank, and MPICH's mpirun waits for them. A worker that is not
    "running" gets no new task.
    """
    for state in list(scheduler.workers.values()):
        scheduler.handle_worker_status_change(
            "closing_gracefully", state, stimulus_id="dask-mpi-job-ends"
        )


_LATE_HEARTBEAT = "Received heartbeat from unregistered worker"
_LOST_RESULTS = "caused the cluster to lose already computed task"


def _drop_ending_warning(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not (message.startswith(_LATE_HEARTBEAT) or _LOST_RESULTS in message)


def _mute_ending_warnings() -> None:
    """Drop two scheduler warnings that describe the job's own end.

    A heartbeat that a worker sent before it closed can reach the scheduler
    after the worker was removed. With 1,000 workers leaving at once, a few
    such WARNING lines appeared at every shutdown. The reply still makes
    the worker close. A worker that leaves with results still held by a
    client makes the scheduler warn that they "will be recomputed
    elsewhere", which no longer happens once the job ends.
    """
    found = logging.getLogger("distributed.scheduler")
    if _drop_ending_warning not in found.filters:
        found.addFilter(_drop_ending_warning)


def _wake_worker_ranks(job: Job, scheduler: Any) -> None:
    """Make this job's worker ranks look for the close message now.

    Only workers started by this job know the message; a worker that
    joined from elsewhere would log it as unknown.
    """
    ours = _scheduler.expected_names(
        job.options.name, job.layout.worker_ranks, job.options.workers_per_rank
    )
    for state in list(scheduler.workers.values()):
        stream = scheduler.stream_comms.get(state.address)
        if stream is not None and state.name in ours:
            with contextlib.suppress(Exception):
                stream.send({"op": _child.WAKE_OP})


async def _interrupt_client(job: Job, code: int, reason: str, decider: int) -> None:
    """End the client script first when the job fails or gets a signal.

    The client then closes its Client objects while the scheduler is still
    up, and its rank exits with the job's code. A job ended by the client,
    or by a shutdown request (code 0), leaves the client script running.
    """
    client = job.layout.client_rank
    if client is None or decider == client or code == 0:
        return
    job.world.post(("interrupt", code, reason), client, TAG_INTERRUPT)
    deadline = time.monotonic() + job.options.shutdown_timeout / 2
    while time.monotonic() < deadline:
        found = job.world.poll(client, TAG_CONTROL)
        if found is not None and found[1][0] == "stop":
            return
        await asyncio.sleep(0.005)
    logger.warning("The client on %s did not end in time", job.where(client))


def _serves(job: Job, rank: int) -> bool:
    return bool(job.layout.role(rank) & (Role.SCHEDULER | Role.WORKER))


async def _collect_closed(job: Job, ranks: list[int], deadline: float) -> list[int]:
    waiting = set(ranks)
    while waiting and time.monotonic() < deadline:
        found = job.world.poll(None, TAG_CONTROL)
        if found is None:
            await asyncio.sleep(0.002)
            continue
        message = found[1]
        if message[0] == "closed":
            waiting.discard(message[1])
    return sorted(waiting)


async def _wait_sent(requests: list[Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(r.test()[0] for r in requests) and time.monotonic() < deadline:
        await asyncio.sleep(0.002)


# ------------------------------------------------------------ followers


async def follow(job: Job, workers: list[Any]) -> int:
    """Serve this rank's workers until the coordinator sends ``close``."""
    coordinator = job.layout.coordinator
    watch = _Watch(job, workers)
    ticker = _Ticker()
    for worker in workers:
        # A Nanny's worker runs in a process of its own, which ignores it.
        handlers = getattr(worker, "stream_handlers", None)
        if handlers is not None:
            handlers[_child.WAKE_OP] = lambda **_: ticker.wake.set()
    while True:
        found = job.world.poll(coordinator, TAG_CONTROL)
        if found is not None and found[1][0] == "close":
            _, code, reason, decider = found[1]
            break
        await watch.check()
        await ticker.pause()

    await _close_all(workers, job.options.shutdown_timeout, reason)
    request = job.world.post(("closed", job.rank), coordinator)
    await _wait_sent([request], job.options.shutdown_timeout)
    return code if decider == job.rank else 0


class _Watch:
    """Notices signals, ended workers and a lost scheduler on a follower."""

    def __init__(self, job: Job, workers: list[Any]):
        self.job = job
        self.workers = workers
        self.signalled_at: float | None = None
        self.lost = False
        self.failures = 0
        self.next_check = 0.0

    async def check(self) -> None:
        job = self.job
        now = time.monotonic()
        if job.signal_received is not None and self.signalled_at is None:
            self.signalled_at = now
            code = 128 + job.signal_received
            job.world.post(
                ("stop", code, f"signal {signal_text(job)}", job.rank),
                job.layout.coordinator,
            )
        if self.signalled_at is not None:
            if now - self.signalled_at > job.options.shutdown_timeout + 5:
                logger.error(
                    "The coordinator (%s) did not end the job after a signal; "
                    "aborting it",
                    job.where(job.layout.coordinator),
                )
                job.world.abort(128 + (job.signal_received or 0))
        if self.workers and not self.lost and all(map(_finished, self.workers)):
            self.lost = True
            job.world.post(
                ("lost", job.rank, "the worker closed"), job.layout.coordinator
            )
        if self.lost and now >= self.next_check and job.address:
            self.next_check = now + _LIVENESS_PERIOD
            await self._check_scheduler()

    async def _check_scheduler(self) -> None:
        job = self.job
        alive = await asyncio.to_thread(_worker.scheduler_answers, job.address or "")
        self.failures = 0 if alive else self.failures + 1
        if self.failures >= _LIVENESS_FAILURES:
            logger.error(
                "The scheduler on %s (%s) is gone; ending the job with exit code %d",
                job.where(job.layout.scheduler_rank or 0),
                job.address,
                EXIT_FAILURE,
            )
            job.world.abort(EXIT_FAILURE)


# ------------------------------------------------------------ joining


async def join(job: Job) -> int:
    """Run workers that join an outside scheduler, re-joining when it returns.

    Every rank runs this. Rank 0 also collects the other ranks' reports and
    ends the job when all workers were retired or a rank requests a stop.
    Waiting for the scheduler and starting the workers both give way to a
    signal or a close message at once.
    """
    options = job.options
    state = _JoinState(job)
    previous: str | None = None
    timeout: float | None = options.startup_timeout
    while True:
        waiting = _worker.wait_for_scheduler(
            options.scheduler_address, options.scheduler_file, timeout, previous
        )
        try:
            ended, address = await state.race(waiting)
        except TimeoutError as error:
            if job.rank != 0:
                return 0
            logger.error("%s", error)
            return EXIT_FAILURE
        if ended:
            return address

        workers: list[Any] = []
        try:
            ended, outcome = await state.race(
                _start_joined(job, address, workers),
                give_up=lambda: _scheduler_moved(options.scheduler_file, address),
            )
        except Exception as error:
            await _close_all(workers, options.shutdown_timeout, "start failed")
            cause = _worker.root_cause(error)
            logger.warning(
                "Joining %s failed (%s: %s); waiting for the scheduler again",
                address,
                type(cause).__name__,
                cause,
            )
            previous = address
            continue
        if ended:
            await _close_all(workers, options.shutdown_timeout, "dask-mpi job ends")
            return outcome

        outcome = await state.watch(workers)
        await _close_all(workers, options.shutdown_timeout, "dask-mpi job ends")
        if outcome is not None:
            return outcome
        if await asyncio.to_thread(_worker.scheduler_answers, address):
            await state.retired()
            outcome = await state.watch([])
            return outcome or 0
        previous, timeout = address, options.rejoin_timeout


async def _start_joined(job: Job, address: str, workers: list[Any]) -> None:
    """Start this rank's workers for ``address``, adding each to ``workers``.

    A worker that cannot reach the scheduler gives up after
    ``mpi.startup-timeout`` (distributed's ``death_timeout``), so a
    scheduler that went away during the start does not hold the rank.
    """
    from . import _nodes, _security

    options = job.options
    if options.scheduler_file:
        info = _worker.read_scheduler_info(options.scheduler_file)
        job.security = _security.from_scheduler_file(info) or job.security
    nthreads = options.nthreads or _nodes.default_threads(job.infos, job.rank)
    count = options.workers_per_rank
    memory = _nodes.memory_limit(options.memory_limit, job.infos, job.rank, count)
    directory = options.local_directory or _nodes.default_local_directory()
    os.environ[_child.JOINING_VARIABLE] = "1"
    if options.use_nanny:
        _worker.shield_children(options.shutdown_signals)
    for name in names_on(job, job.rank):
        kwargs = _worker.worker_kwargs(
            options,
            f"{name}-{job.join_tag}",
            nthreads,
            memory,
            directory,
            job.host,
            job.security,
        )
        kwargs.setdefault("death_timeout", options.startup_timeout)
        worker = await _worker.start_worker(address, options, workers, **kwargs)
        _child.install(worker, joining=True)
    logger.info("Joined the scheduler at %s", address)


def _scheduler_moved(scheduler_file: str | None, address: str) -> str | None:
    """Return why ``address`` is no longer the scheduler to join, or None."""
    if scheduler_file:
        current = _worker.read_scheduler_file(scheduler_file)
        if current and current != address:
            return f"the scheduler file now names {current}"
    if not _worker.scheduler_answers(address):
        return f"no scheduler answers at {address}"
    return None


class _JoinState:
    """Control messages of a joining job; rank 0 keeps the count."""

    def __init__(self, job: Job):
        self.job = job
        self.retired_ranks: set[int] = set()

    async def retired(self) -> None:
        logger.info("The scheduler retired this rank's workers")
        self.job.world.post(("retired", self.job.rank), 0)

    async def watch(self, workers: list[Any]) -> int | None:
        """Wait until the workers end (None) or the job ends (exit code)."""
        while True:
            outcome = self._check()
            if outcome is not None:
                return outcome
            if workers and all(map(_finished, workers)):
                return None
            await asyncio.sleep(_TICK)

    async def race(self, work: Any, give_up: Any = None) -> tuple[bool, Any]:
        """Run ``work`` until it finishes or the job ends.

        Returns ``(False, result)`` when ``work`` finished first, and
        ``(True, exit code)`` when the job ended first; ``work`` is then
        cancelled. Exceptions of ``work`` propagate. ``give_up``, checked
        about once a second, cancels ``work`` with a ConnectionError when it
        returns a reason.
        """
        task = asyncio.ensure_future(work)
        next_check = time.monotonic() + 1.0
        try:
            while not task.done():
                outcome = self._check()
                if outcome is not None:
                    return True, outcome
                if give_up is not None and time.monotonic() > next_check:
                    next_check = time.monotonic() + 1.0
                    reason = await asyncio.to_thread(give_up)
                    if reason:
                        raise ConnectionError(reason)
                await asyncio.sleep(_TICK)
            return False, task.result()
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    def _check(self) -> int | None:
        """Handle pending control messages and signals; return an exit code."""
        job = self.job
        found = job.world.poll(None, TAG_CONTROL)
        if found is not None:
            outcome = self._handle(found[1])
            if outcome is not None:
                return outcome
        if job.signal_received is not None:
            code = 128 + job.signal_received
            if job.rank == 0:
                return self._end(code, f"signal {signal_text(job)}", job.rank)
            job.world.post(("stop", code, signal_text(job), job.rank), 0)
            job.signal_received = None
        return None

    def _handle(self, message: tuple) -> int | None:
        job = self.job
        kind = message[0]
        if kind == "close":
            return message[1] if message[3] == job.rank else 0
        if kind == "stop" and job.rank == 0:
            return self._end(message[1], message[2], message[3])
        if kind == "retired" and job.rank == 0:
            self.retired_ranks.add(message[1])
            if len(self.retired_ranks) == job.world.size:
                return self._end(0, "the scheduler retired every worker", 0)
        return None

    def _end(self, code: int, reason: str, decider: int) -> int:
        job = self.job
        for rank in range(1, job.world.size):
            job.world.post(("close", code, reason, decider), rank)
        logger.info("Workers closed: %s; exit code %d", reason, code)
        return code if decider == job.rank else 0
