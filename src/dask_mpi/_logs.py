"""Log lines that carry the rank, and quiet start-up for distributed."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s rank {rank} %(levelname)s %(name)s: %(message)s"

# Loggers whose INFO lines repeat per worker; the scheduler rank's summary
# replaces them. The user's log-level option sets their level.
_CHATTY = ("distributed",)


def configure(rank: int, level: str) -> None:
    """Tag this process's log lines with ``rank`` and set distributed's level.

    distributed installs its own handler on the "distributed" logger when it
    is imported; that handler gets the rank-tagged format as well.
    """
    import distributed  # noqa: F401  (installs distributed's handlers)

    formatter = logging.Formatter(FORMAT.format(rank=rank))
    ours = logging.getLogger("dask_mpi")
    if not any(getattr(h, "_dask_mpi", False) for h in ours.handlers):
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler._dask_mpi = True  # type: ignore[attr-defined]
        ours.addHandler(handler)
        ours.propagate = False
    if ours.level == logging.NOTSET:
        ours.setLevel(logging.INFO)
    for name in ("dask_mpi",) + _CHATTY:
        for existing in logging.getLogger(name).handlers:
            existing.setFormatter(formatter)
    for name in _CHATTY:
        logging.getLogger(name).setLevel(level.upper())
    _configure_children(rank, level)


def _configure_children(rank: int, level: str) -> None:
    """Give worker processes that a Nanny spawns the same format and level.

    A spawned process reads dask's config from the environment when it
    imports distributed; variables the user set are left alone.
    """
    import os

    os.environ.setdefault(
        "DASK_DISTRIBUTED__ADMIN__LOG_FORMAT", FORMAT.format(rank=rank)
    )
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", level)
