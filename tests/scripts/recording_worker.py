"""A stand-in for a GPU worker class such as dask_cuda.CUDAWorker.

It accepts keyword arguments that ``distributed.Worker`` does not know (as
CUDAWorker accepts ``rmm_pool_size``) and keeps them, so a test can check
that ``--worker-options`` reached the worker class unchanged.
"""

from typing import Any

from distributed import Worker

OWN_OPTIONS = ("rmm_pool_size", "device_memory_limit")


class RecordingWorker(Worker):
    """A Worker that records the options only a GPU worker class would take."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.recorded = {k: kwargs.pop(k) for k in OWN_OPTIONS if k in kwargs}
        super().__init__(*args, **kwargs)
