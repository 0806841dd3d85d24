"""Worker classes whose start is slow or fails on one rank, by dotted name.

``ENDINGS_WORKER_RANK`` names the rank whose worker misbehaves; workers of
every other rank start as plain ``distributed.Worker``. The rank is read
from the worker name, which dask-mpi makes ``PREFIX-RANK``.
"""

from __future__ import annotations

import asyncio
import os

from distributed import Worker

RANK_VARIABLE = "ENDINGS_WORKER_RANK"
SLOW_START_SECONDS_VARIABLE = "ENDINGS_SLOW_START_SECONDS"


def _is_chosen(worker: Worker) -> bool:
    rank = str(worker.name).rsplit("-", 1)[-1]
    return rank == os.environ.get(RANK_VARIABLE)


class SlowStartWorker(Worker):
    """Sleeps ``ENDINGS_SLOW_START_SECONDS`` before starting on the chosen rank."""

    async def start_unsafe(self):
        if _is_chosen(self):
            await asyncio.sleep(float(os.environ[SLOW_START_SECONDS_VARIABLE]))
        return await super().start_unsafe()


class FailingStartWorker(Worker):
    """Raises ``RuntimeError`` from its start on the chosen rank."""

    async def start_unsafe(self):
        if _is_chosen(self):
            raise RuntimeError("worker start failed on purpose")
        return await super().start_unsafe()
