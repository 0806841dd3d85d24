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

import dask.config

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


def scaled_timeouts(workers: int) -> dict[str, Any]:
    """Return dask.config settings whose defaults are too short for ``workers``."""
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


def prepare_rank(workers: int, scheduler: bool) -> None:
    """Apply the limits and timeouts for a job of ``workers`` workers."""
    dask.config.set(scaled_timeouts(workers))
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
    """Maps a versions record to a key; records are compared once each."""

    def __init__(self) -> None:
        self._keys: dict[int, tuple[Any, Any]] = {}

    def key(self, record: Any) -> Any:
        cached = self._keys.get(id(record))
        if cached is not None and cached[0] is record:
            return cached[1]
        packages = record.get("packages") if isinstance(record, dict) else record
        if isinstance(packages, dict):
            key: Any = tuple(sorted(packages.items()))
        else:
            key = repr(packages)
        self._keys[id(record)] = (record, key)
        return key

    def forget_missing(self, live: Any) -> None:
        """Drop cached records that no longer belong to a worker."""
        alive = {id(record) for record in live}
        for ident in [i for i in self._keys if i not in alive]:
            del self._keys[ident]


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
        distinct: dict[Any, tuple[str, Any]] = {}
        for name, record in workers.items():
            distinct.setdefault(records.key(record), (name, record))
        if len(records._keys) > 2 * len(workers) + 16:
            records.forget_missing(workers.values())
        return original(scheduler, dict(distinct.values()), source, source_name)

    versions.error_message = error_message
    versions._dask_mpi = True  # type: ignore[attr-defined]
    return True
