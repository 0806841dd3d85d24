"""Preload module for worker processes that a Nanny starts.

distributed 2026.8 logs "Worker process died unexpectedly" with a traceback
from inside a worker process that closes on its own (for example when the
scheduler it joined shuts down), because the process's stop-queue reader
breaks while the process exits. The worker did not die; this filter drops
that one message once the worker is closing, and nothing else.
"""

from __future__ import annotations

import logging
from typing import Any

_MESSAGE = "Worker process died unexpectedly"


class _DropClosingNoise(logging.Filter):
    def __init__(self, worker: Any):
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage() != _MESSAGE:
            return True
        status = getattr(getattr(self.worker, "status", None), "name", "")
        return status not in ("closing", "closed", "closing_gracefully")


def dask_setup(worker: Any) -> None:
    """Install the filter in this worker process (distributed preload hook)."""
    logging.getLogger("distributed.nanny").addFilter(_DropClosingNoise(worker))
