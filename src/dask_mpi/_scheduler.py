"""Scheduler side: start the scheduler, publish its address, watch workers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterable, Sequence
from typing import Any

from ._nodes import RankInfo
from ._options import Options

logger = logging.getLogger(__name__)

DEFAULT_DASHBOARD_PORT = 8787


def port_is_free(host: str, port: int) -> bool:
    """True when ``port`` can be bound on ``host`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host or "", port))
        except OSError:
            return False
    return True


def split_host_port(address: str) -> tuple[str, int | None]:
    """Split ``host:port`` (either part may be empty) into its parts."""
    text = address.split("://", 1)[-1]
    host, _, port = text.rpartition(":")
    if not _:
        return text, None
    return host, int(port) if port else None


def dashboard_address(options: Options, host: str | None) -> str | None:
    """Return the dashboard address to ask the scheduler for, or None if off.

    The default port 8787 is used when it is free; a second job on the same
    node gets a free port instead, which the start-up summary reports. A port
    the user chose is used as given, and start-up checks that it is free.
    """
    if not options.dashboard:
        return None
    if options.dashboard_given:
        return options.dashboard_address
    bind_host = host or ""
    if port_is_free(bind_host, DEFAULT_DASHBOARD_PORT):
        return f"{bind_host}:{DEFAULT_DASHBOARD_PORT}"
    return f"{bind_host}:0"


def _interface_ip(options: Options) -> str | None:
    """Return the address of the named interface, so the dashboard binds there."""
    if not options.interface:
        return None
    from distributed.utils import get_ip_interface

    return get_ip_interface(options.interface)


async def start_scheduler(options: Options, host: str | None, security: Any) -> Any:
    """Start a distributed Scheduler and return it once it listens."""
    from distributed import Scheduler

    kwargs: dict[str, Any] = dict(
        port=options.scheduler_port or 0,
        protocol=options.protocol,
        dashboard=options.dashboard,
        dashboard_address=dashboard_address(options, host or _interface_ip(options)),
        security=security,
    )
    if options.interface:
        kwargs["interface"] = options.interface
    else:
        kwargs["host"] = host
    kwargs.update(options.scheduler_options)
    scheduler = Scheduler(**kwargs)
    await scheduler
    return scheduler


def write_scheduler_file(path: str, identity: dict[str, Any]) -> None:
    """Write ``identity`` as JSON to ``path`` atomically, readable by the owner.

    The file appears complete or not at all, so a client polling for it never
    reads half of it.
    """
    directory = os.path.dirname(path) or "."
    fd, temporary = tempfile.mkstemp(prefix=".dask-mpi-", suffix=".json", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(identity, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def remove_scheduler_file(path: str, address: str) -> None:
    """Delete ``path`` if it still names ``address``; another job may own it."""
    try:
        with open(path) as f:
            owner = json.load(f).get("address")
    except (OSError, ValueError):
        return
    if owner == address:
        with contextlib.suppress(OSError):
            os.unlink(path)


def dashboard_link(scheduler: Any, host_name: str) -> tuple[str, int] | None:
    """Return the dashboard URL on the real host name and its port."""
    server = scheduler.services.get("dashboard")
    if server is None:
        return None
    port = server.port
    return f"http://{host_name}:{port}/status", port


def summary(
    scheduler: Any,
    infos: Sequence[RankInfo],
    rank: int,
    loopback: bool,
    cli: bool = False,
) -> list[str]:
    """Return the start-up summary lines of the scheduler rank."""
    host = infos[rank].host
    lines = [f"Scheduler at {scheduler.address} (rank {rank} on {host})"]
    link = dashboard_link(scheduler, "localhost" if loopback else host)
    if link is not None:
        url, port = link
        lines.append(f"Dashboard at {url}")
        if loopback:
            lines.append(
                f"From a login node: ssh -J LOGIN_NODE -L {port}:localhost:{port} "
                f"{host}, then open http://localhost:{port}/status"
            )
        else:
            lines.append(
                f"From a login node: ssh -L {port}:{host}:{port} LOGIN_NODE, "
                f"then open http://localhost:{port}/status"
            )
    if not scheduler.address.startswith(("tls://", "wss://")):
        advice = "restart with --tls" if cli else "leave security at its default"
        lines.append(
            "The transport is unauthenticated: anyone who can reach the "
            f"scheduler's port can run code as you; {advice} to require TLS."
        )
    return lines


def expected_names(
    prefix: str, worker_ranks: Sequence[int], workers_per_rank: int
) -> dict[str, int]:
    """Map every expected worker name to its rank."""
    return {
        name: rank
        for rank in worker_ranks
        for name in worker_names(prefix, rank, workers_per_rank)
    }


def worker_names(prefix: str, rank: int, workers_per_rank: int) -> list[str]:
    """Return the names of the workers of ``rank``: PREFIX-RANK[-INDEX]."""
    if workers_per_rank == 1:
        return [f"{prefix}-{rank}"]
    return [f"{prefix}-{rank}-{index}" for index in range(workers_per_rank)]


def rank_ranges(ranks: Iterable[int]) -> str:
    """Write sorted ranks compactly: 1-4,7,9-10."""
    parts: list[str] = []
    for rank in sorted(set(ranks)):
        if parts and parts[-1].split("-")[-1] == str(rank - 1):
            parts[-1] = parts[-1].split("-")[0] + f"-{rank}"
        else:
            parts.append(str(rank))
    return ",".join(parts)


def placement(ranks: Iterable[int], infos: Sequence[RankInfo]) -> str:
    """Describe where ``ranks`` run: host, then ranks, per host."""
    by_host: dict[str, list[int]] = {}
    for rank in ranks:
        by_host.setdefault(infos[rank].host, []).append(rank)
    return "; ".join(
        f"{host} rank {rank_ranges(found)}" for host, found in sorted(by_host.items())
    )


# Seconds between "joined so far" lines while a large job starts.
_PROGRESS_PERIOD = 10.0


class _JoinSignal:
    """Wakes :func:`wait_for_workers` when a worker registers.

    Registrations arrive in bursts (one per worker rank, or hundreds with
    several workers per rank), so the waiter looks at the scheduler's
    worker table once per wake-up rather than once per registration.
    """

    name = "dask-mpi-wait-for-workers"

    def __init__(self, scheduler: Any):
        from distributed.diagnostics.plugin import SchedulerPlugin

        event = self.event = asyncio.Event()

        class Plugin(SchedulerPlugin):
            def add_worker(self, scheduler: Any, worker: str) -> None:
                event.set()

        self.scheduler = scheduler
        scheduler.add_plugin(Plugin(), name=self.name)

    async def wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), max(timeout, 0.0))
        self.event.clear()

    def remove(self) -> None:
        with contextlib.suppress(Exception):
            self.scheduler.remove_plugin(name=self.name)


async def wait_for_workers(
    scheduler: Any,
    names: dict[str, int],
    infos: Sequence[RankInfo],
    timeout: float,
) -> list[int]:
    """Wait until the workers called ``names`` registered; return missing ranks.

    Logs each worker as it joins at DEBUG, the count so far every ten
    seconds, then one INFO line with the count, the time and where the
    workers run, or a WARNING naming the ranks and hosts that are missing.
    """
    started = time.monotonic()
    deadline = started + timeout
    next_progress = started + _PROGRESS_PERIOD
    seen: set[str] = set()
    joined = _JoinSignal(scheduler)
    try:
        while True:
            present = {ws.name for ws in scheduler.workers.values()}
            for name in sorted(present & names.keys() - seen):
                logger.debug("Worker %s of rank %d joined", name, names[name])
            seen |= present & names.keys()
            now = time.monotonic()
            if len(seen) == len(names) or now > deadline:
                break
            if now > next_progress:
                logger.info("Workers joined %d/%d so far", len(seen), len(names))
                next_progress = now + _PROGRESS_PERIOD
            await joined.wait(min(deadline, next_progress) - now)
    finally:
        joined.remove()

    elapsed = time.monotonic() - started
    missing = sorted({rank for name, rank in names.items() if name not in seen})
    if not missing:
        logger.info(
            "Workers joined %d/%d in %.1f s: %s",
            len(seen),
            len(names),
            elapsed,
            placement(set(names.values()), infos),
        )
        return []
    logger.warning(
        "Workers joined %d/%d; after %.0f s (mpi.startup-timeout) none from %s. "
        "The cluster goes on with the workers that joined.",
        len(seen),
        len(names),
        timeout,
        placement(missing, infos),
    )
    return missing
