"""Settings that keep large jobs healthy: file limits and timeouts.

The scheduler uses about two file descriptors per worker, and a process
started from Python keeps the soft limit it inherited (often 1024), so a
scheduler rank of a large job raises its soft limit towards the hard one.
distributed's connect timeout and worker time-to-live assume small
clusters; they grow with the number of workers unless the user set them.
"""

from __future__ import annotations

import logging
from typing import Any


logger = logging.getLogger(__name__)

# File descriptors per worker on the scheduler, plus a margin for clients,
# the dashboard and the scheduler's own files.
_FDS_PER_WORKER = 2
_FD_MARGIN = 256

# distributed 2026.8 defaults; a value still equal to its default was not
# set by the user, so it may be scaled.
_DEFAULT_CONNECT = "30s"
_DEFAULT_TTL = "5 minutes"
# Workers per extra second of connect timeout, and of worker time-to-live.
_WORKERS_PER_CONNECT_SECOND = 20
_WORKERS_PER_TTL_SECOND = 5


def raise_open_file_limit(workers: int) -> None:
    """Raise this process's soft open-file limit for ``workers`` workers."""
    import resource

    needed = workers * _FDS_PER_WORKER + _FD_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    logger.debug("Raised the open-file limit from %d to %d", soft, target)
    if target < needed:
        logger.warning(
            "The open-file limit (hard limit %d) is too low for %d workers, "
            "which need about %d; raise it with `ulimit -n` in the job script",
            hard,
            workers,
            needed,
        )


def check_listen_backlog(workers: int) -> None:
    """Warn when the kernel's listen backlog may drop simultaneous connects."""
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            backlog = int(f.read().strip())
    except (OSError, ValueError):
        return
    if backlog < workers:
        logger.warning(
            "net.core.somaxconn is %d, below the %d workers that connect at "
            "once; some connections may be retried",
            backlog,
            workers,
        )


# distributed 2026.8's system monitor interval, and the max interval
# this package sets when several workers share a process.
_DEFAULT_MONITOR = "500ms"
_MAX_MONITOR_SECONDS = 5.0


def shared_monitor(per_rank: int) -> dict[str, Any]:
    """Return settings that keep ``per_rank`` workers of one process from
    reading the same process statistics ``per_rank`` times as often.

    Each worker has a system monitor that reads the process's CPU time,
    memory, open files, and the host's disk and network counters every
    500 ms. With 100 workers in one process, these reads took 20 % of the
    rank's CPU time while 1,000 workers registered (py-spy, 2 cores). The
    interval grows with the workers per process, up to 5 s, unless the
    user set it. The memory limit's own monitor is left alone.
    """
    import dask.config
    import distributed  # noqa: F401  (loads distributed's config defaults)
    from dask.utils import parse_timedelta

    key = "distributed.admin.system-monitor.interval"
    interval = dask.config.get(key)
    if per_rank <= 1 or interval != _DEFAULT_MONITOR:
        return {}
    seconds = min(parse_timedelta(interval) * per_rank, _MAX_MONITOR_SECONDS)
    return {key: f"{seconds * 1000:.0f}ms"}


def scaled_timeouts(workers: int) -> dict[str, Any]:
    """Return dask.config settings whose defaults are too short for ``workers``."""
    import dask.config
    import distributed  # noqa: F401  (loads distributed's config defaults)
    from dask.utils import parse_timedelta

    settings: dict[str, Any] = {}
    connect = dask.config.get("distributed.comm.timeouts.connect")
    if connect == _DEFAULT_CONNECT:
        seconds = parse_timedelta(connect) + workers / _WORKERS_PER_CONNECT_SECOND
        settings["distributed.comm.timeouts.connect"] = f"{seconds:.0f}s"
    ttl = dask.config.get("distributed.scheduler.worker-ttl")
    if ttl == _DEFAULT_TTL:
        seconds = parse_timedelta(ttl) + workers / _WORKERS_PER_TTL_SECOND
        settings["distributed.scheduler.worker-ttl"] = f"{seconds:.0f}s"
    return settings


def prepare_rank(workers: int, scheduler: bool, per_rank: int = 1) -> None:
    """Apply the limits and timeouts for a job of ``workers`` workers."""
    import dask.config

    dask.config.set(scaled_timeouts(workers))
    dask.config.set(shared_monitor(per_rank))
    if scheduler:
        raise_open_file_limit(workers)
        check_listen_backlog(workers)


# The distributed releases whose Scheduler.add_worker compares every new
# worker's package versions with every registered worker's, a cost that
# grows with the square of the number of workers.
_PATCHED_RELEASES = ("2026.8.",)
_CHECK_CALL = "version_module.error_message("


def environment_key() -> str:
    """Return a digest of this rank's Python and package versions."""
    import hashlib
    import json

    from distributed.versions import get_versions

    versions = get_versions()
    text = json.dumps(
        [versions["host"]["python"], versions["packages"]], sort_keys=True
    )
    return hashlib.sha1(text.encode()).hexdigest()


def version_check_patchable() -> bool:
    """True when the installed distributed has the version check we replace."""
    import inspect

    import distributed
    from distributed.scheduler import Scheduler

    if not distributed.__version__.startswith(_PATCHED_RELEASES):
        return False
    return _CHECK_CALL in inspect.getsource(Scheduler.add_worker)


class _DistinctRecords:
    """One worker for each distinct versions record, kept up to date cheaply.

    The scheduler calls the check once per registration with every
    registered worker, the new one included, and the new worker's record
    as ``source``. While the representative workers are still registered
    and at most one worker joined since the last call, the only record
    that can be new is ``source``, so a call costs one lookup per distinct
    record. Anything else (a representative left, several joined, the
    first call) rebuilds the table from every worker, as distributed's own
    check would read them.
    """

    def __init__(self) -> None:
        self.representatives: dict[Any, tuple[Any, Any]] = {}
        self.count = 0

    @staticmethod
    def key(record: Any) -> Any:
        packages = record.get("packages") if isinstance(record, dict) else record
        if isinstance(packages, dict):
            return tuple(sorted(packages.items(), key=repr))
        return repr(packages)

    def update(self, workers: dict, source: Any) -> dict:
        """Return one ``{name: record}`` entry for each distinct record."""
        current = all(
            workers.get(name) is record
            for name, record in self.representatives.values()
        )
        if not self.representatives or not current or len(workers) > self.count + 1:
            self.representatives = {}
            for name, record in workers.items():
                self.representatives.setdefault(self.key(record), (name, record))
        elif self.key(source) not in self.representatives:
            for name, record in workers.items():
                if record is source:
                    self.representatives[self.key(source)] = (name, record)
                    break
        self.count = len(workers)
        return dict(self.representatives.values())


def deduplicate_version_check() -> bool:
    """Make the scheduler compare each distinct versions record only once.

    Every rank of the job runs the same environment (checked over MPI
    before this is called), so the workers' records are identical and one
    comparison stands for all. The result is the same as distributed's,
    which reports the set of versions seen among workers. Returns False,
    changing nothing, when the installed distributed is not one this was
    written against.
    """
    from distributed import versions

    if not version_check_patchable() or getattr(versions, "_dask_mpi", False):
        return False
    original = versions.error_message
    records = _DistinctRecords()

    def error_message(
        scheduler: Any, workers: dict, source: Any, source_name: str = "Client"
    ) -> dict:
        distinct = records.update(workers, source)
        return original(scheduler, distinct, source, source_name)

    versions.error_message = error_message
    versions._dask_mpi = True  # type: ignore[attr-defined]
    return True
