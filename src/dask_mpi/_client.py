"""Client side: point a plain ``Client()`` at the cluster, and let go of it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import Any


logger = logging.getLogger(__name__)

# The scheduler-side handler of the client rank's lifeline connection.
LIFELINE_OP = "dask_mpi_lifeline"


def client_config(address: str, security: Any) -> dict[str, Any]:
    """Return the dask.config entries that make ``Client()`` find the cluster.

    The client's key and certificate go into the client rank's config only;
    scheduler and worker ranks never hold them in config, because a worker's
    state dump includes its config.
    """
    config: dict[str, Any] = {"scheduler-address": address}
    if security is not None and getattr(security, "require_encryption", False):
        config.update(
            {
                "distributed.comm.require-encryption": True,
                "distributed.comm.tls.ca-file": security.tls_ca_file,
                "distributed.comm.tls.client.cert": security.tls_client_cert,
                "distributed.comm.tls.client.key": security.tls_client_key,
            }
        )
    return config


class ClientConfig:
    """Sets the client rank's dask.config and restores it when the job ends."""

    def __init__(self, address: str, security: Any):
        import dask.config

        self._config: Any = dask.config.set(client_config(address, security))

    def restore(self) -> None:
        """Put back the config that was there before; safe to call twice."""
        if self._config is not None:
            self._config.__exit__(None, None, None)
            self._config = None


def close_open_clients(timeout: float) -> None:
    """Close the Client objects still open in this process.

    They would otherwise see the scheduler go away under them and log
    connection errors on the way out.
    """
    from distributed.client import Client

    clients = list(getattr(Client, "_instances", ()))
    for client in clients:
        if client.status in ("closed", "closing"):
            continue
        with contextlib.suppress(Exception):
            client.close(timeout=timeout)


def start_client(job: Any) -> ClientSession:
    """Start the client side of an execute() or MPIRunner job on this rank.

    A rank that also runs the scheduler or workers serves them on a thread,
    so that the client code keeps the main thread and its signals.
    """
    from . import _launch

    background = None
    if job.serves:
        background = _launch.Background(job)
        background.thread.start()
        _launch.wait_for_address(job, background)
    elif job.options.scheduler:
        _launch.receive_address(job)
    else:
        _launch.run_coroutine(_launch.outside_scheduler(job))

    session = ClientSession(job)
    session.background = background
    try:
        session.wait_until_ready()
    except BaseException:
        session.finish("the client failed to start")
        raise
    session.take_signals()
    session.watch_for_interrupt()
    return session


class ClientSession:
    """The client rank's part of a batch job: start-up wait and the end.

    Parameters
    ----------
    job
        The client rank's Job, with the scheduler address received.
    """

    def __init__(self, job: Any):
        self.job = job
        self.config = ClientConfig(job.address, job.security)
        self.ended = False
        self.background: Any = None
        self.failed = False
        self.code: int | None = None
        self.interrupted = False
        self._watching = threading.Event()
        self._stop_sent = threading.Event()
        self._watcher: threading.Thread | None = None

    def wait_until_ready(self) -> None:
        """Return once the scheduler rank reports that the workers joined.

        If the job fails while starting, the coordinator sends an interrupt
        instead; then this rank leaves with the job's exit code, because the
        failing rank has already logged the reason.
        """
        from ._world import TAG_INTERRUPT, TAG_READY

        job = self.job
        source = job.layout.scheduler_rank
        if source is None:
            self._wait_for_worker_ranks()
            return

        def ready_or_interrupt() -> Any:
            return job.world.poll(source, TAG_READY) or job.world.poll(
                source, TAG_INTERRUPT
            )

        _, message = job.world._wait(
            ready_or_interrupt,
            job.options.startup_timeout + 30,
            source,
            "report that the workers joined",
            brisk=True,
        )
        if message[0] == "interrupt":
            self.end(message[2])
            raise SystemExit(message[1])
        if message[1]:
            logger.warning(
                "Starting without the workers of rank(s) %s",
                ", ".join(map(str, message[1])),
            )

    def take_signals(self) -> None:
        """Make signals end the client code; :meth:`finish` puts them back."""
        from . import _signals

        self._signals = _signals.install(self.job.options.shutdown_signals)

    def end_at_exit(self, reason: str) -> None:
        """End the cluster as the interpreter exits; then ignore signals."""
        from . import _signals

        self.end(reason)
        _signals.ignore_from_now(getattr(self, "_signals", {}))

    def finish(self, reason: str) -> None:
        """End the cluster, restore signal handlers and free the communicator."""
        from . import _signals

        try:
            self.end(reason)
        finally:
            _signals.restore(getattr(self, "_signals", {}))
            self.job.world.close()

    def _wait_for_worker_ranks(self) -> None:
        """Wait until every worker rank started its workers (no scheduler rank)."""
        from ._world import TAG_READY

        job = self.job
        waiting = set(job.layout.worker_ranks)
        deadline = time.monotonic() + job.options.startup_timeout + 30
        while waiting:
            remaining = max(deadline - time.monotonic(), 0.0)
            source, _ = job.world.recv(
                None, TAG_READY, remaining, "report that its workers started"
            )
            waiting.discard(source)

    def watch_for_interrupt(self) -> None:
        """Start a thread that ends the client script when the job ends.

        When the job ends for a reason other than the client (a signal on
        another rank, a failed rank), the coordinator sends an interrupt.
        The thread then raises ``SystemExit`` in the main thread through
        the SIGTERM handler, so the script unwinds and closes its clients
        while the scheduler is still up.
        """
        self._watching.set()
        self._watcher = threading.Thread(
            target=self._watch, name="dask-mpi-client-watch", daemon=True
        )
        self._watcher.start()

    def _watch(self) -> None:
        asyncio.run(self._watch_async())

    async def _watch_async(self) -> None:
        from . import _signals
        from ._world import TAG_INTERRUPT

        job = self.job
        lifeline = await self._open_lifeline()
        try:
            while self._watching.is_set():
                found = job.world.poll(job.layout.coordinator, TAG_INTERRUPT)
                if found is not None:
                    _, code, reason = found[1]
                    logger.warning("Ending the client script: %s", reason)
                    _signals.interrupt_main(code)
                    break
                await asyncio.sleep(0.02)
            while not self._stop_sent.is_set():
                # Dropping the lifeline right after the stop message wakes
                # the coordinator.
                await asyncio.sleep(0.002)
        finally:
            if lifeline is not None:
                with contextlib.suppress(Exception):
                    await lifeline.close()

    async def _open_lifeline(self) -> Any:
        """Open a connection whose loss shows the scheduler rank that we died.

        The operating system closes it when this process dies, however it
        dies, so the scheduler rank notices a killed client at once even
        where the launcher leaves the other ranks running.
        """
        from distributed.comm import connect

        job = self.job
        if job.layout.scheduler_rank is None:
            return None
        args = job.security.get_connection_args("client") if job.security else {}
        try:
            comm = await connect(job.address, timeout=10, **args)
            await comm.write({"op": LIFELINE_OP, "rank": job.rank, "reply": False})
        except Exception as error:
            logger.debug("No lifeline to the scheduler: %s", error)
            return None
        return comm

    def end(self, reason: str) -> None:
        """End the cluster and wait until it is closed; safe to call twice."""
        if self.ended:
            return
        self.ended = True
        if self.interrupted:
            reason += " by KeyboardInterrupt; Python ends the client rank with SIGINT"
        self._watching.clear()
        job = self.job
        from . import _signals

        _signals.abort_on_signal(getattr(self, "_signals", {}), job.world)
        close_open_clients(timeout=2)
        if job.layout.scheduler_rank is None:
            self._close_workers(reason)
        else:
            self._ask_coordinator(reason)
        self._stop_sent.set()
        if (
            self._watcher is not None
            and self._watcher is not threading.current_thread()
        ):
            self._watcher.join(1.0)
        if self.background is not None:
            self.background.join(job.options.shutdown_timeout + 5)
        self.config.restore()

    def _ask_coordinator(self, reason: str) -> None:
        from ._world import TAG_CONTROL

        job = self.job
        coordinator = job.layout.coordinator
        code = self.exit_code()
        own = self.background is not None
        if own or job.world.poll(coordinator, TAG_CONTROL) is None:
            job.world.send(
                ("stop", code, reason, job.rank),
                coordinator,
                TAG_CONTROL,
                job.options.shutdown_timeout,
            )
            self._stop_sent.set()
            if not own:
                job.world.recv(
                    coordinator,
                    TAG_CONTROL,
                    job.options.shutdown_timeout + 5,
                    "close the cluster",
                    brisk=True,
                )

    def record_exit(self, error: BaseException) -> None:
        """Note the exit code that ``error``, leaving the client code, gives."""
        if isinstance(error, SystemExit):
            code = error.code
            if isinstance(code, int):
                self.code = code
            elif code is None:
                self.code = 0
            else:
                self.code = 1
        elif isinstance(error, KeyboardInterrupt):
            # Python ends the process by sending itself SIGINT, which
            # MPICH's mpirun reports as exit code 2, so no code is stated.
            self.interrupted = True
            self.failed = True
            return
        else:
            self.code = 1
        self.failed = self.code != 0

    def exit_code(self) -> int | None:
        """Return the client's exit code where this process has it, else None.

        A signal or an exception in the client code is known; the argument
        of a ``sys.exit()`` in an ``initialize()`` script is not, because
        Python does not show it to exit handlers.
        """
        from . import _signals

        if self.interrupted:
            return None
        if self.code is not None:
            return self.code
        if _signals.last_code is not None:
            return _signals.last_code
        return 1 if self.failed else None

    def _close_workers(self, reason: str) -> None:
        """Close the workers of a job that joined an outside scheduler."""
        from ._world import TAG_CONTROL

        job = self.job
        message = ("close", 0, reason, job.rank)
        ranks = list(job.layout.worker_ranks)
        for rank in ranks:
            job.world.post(message, rank)
        waiting = set(ranks)
        deadline = job.options.shutdown_timeout
        while waiting:
            _, answer = job.world.recv(None, TAG_CONTROL, deadline, "close")
            if answer[0] == "closed":
                waiting.discard(answer[1])


def connect(scheduler_file: str, **kwargs: Any) -> Any:
    """Return a ``distributed.Client`` for the cluster in ``scheduler_file``.

    Works with and without ``dask-mpi --tls``: with TLS the file carries
    the client's credentials, which this passes to the Client. Other keyword
    arguments go to ``Client`` as given.
    """
    import os

    from distributed import Client

    from . import _security, _worker

    path = os.path.expanduser(scheduler_file)
    info = _worker.read_scheduler_info(path)
    if not info.get("address"):
        raise FileNotFoundError(
            f"No scheduler address in {path}: start the cluster with "
            f"`dask-mpi --scheduler-file {scheduler_file}` first."
        )
    security = _security.from_scheduler_file(info)
    if security is not None:
        kwargs.setdefault("security", security)
    return Client(info["address"], **kwargs)
