"""Exceptions raised by dask-mpi.

The tree, with the standard type each one subclasses so that callers can
catch what they already expect::

    DaskMPIError
     +-- UsageError(ValueError)          bad option value; CLI exit code 2
     +-- WorldTooSmallException(RuntimeError)
     +-- MPIMismatchError(RuntimeError)  mpi4py's MPI is not the launcher's
     +-- StartupError(RuntimeError)      a role could not start
     +-- RankTimeoutError(TimeoutError)  another rank did not respond in time
"""

from __future__ import annotations

__all__ = [
    "DaskMPIError",
    "MPIMismatchError",
    "RankTimeoutError",
    "StartupError",
    "UsageError",
    "WorldTooSmallException",
]


class DaskMPIError(Exception):
    """Base class of every error raised by dask-mpi."""


class UsageError(DaskMPIError, ValueError):
    """An option has a value that cannot work.

    Attributes
    ----------
    option
        The option's name as the user wrote it (``--scheduler-rank`` or
        ``scheduler_rank``).
    value
        The rejected value.
    """

    def __init__(self, option: str, value: object, problem: str, fix: str):
        self.option = option
        self.value = value
        self.problem = problem
        self.fix = fix
        super().__init__(f"{option}={value!r}: {problem}. {fix}")

    def named(self, option: str, fix: str = "") -> UsageError:
        """Return the same error for ``option``, with ``fix`` added to the fix."""
        return UsageError(option, self.value, self.problem, f"{self.fix}{fix}")


class WorldTooSmallException(DaskMPIError, RuntimeError):
    """The MPI world has fewer ranks than the requested layout needs.

    Attributes
    ----------
    size
        The number of ranks found.
    needed
        The minimum number of ranks for the layout.
    """

    def __init__(self, size: int, needed: int, why: str):
        self.size = size
        self.needed = needed
        self.why = why
        super().__init__(
            f"The MPI world has {size} rank(s) but this layout needs at least "
            f"{needed}: {why}. Start the job with `mpirun -np {needed}` or more."
        )


class MPIMismatchError(DaskMPIError, RuntimeError):
    """mpi4py has one rank while the launcher started several."""


class StartupError(DaskMPIError, RuntimeError):
    """A scheduler, worker or client could not start."""


class RankTimeoutError(DaskMPIError, TimeoutError):
    """Another rank did not respond within the configured timeout.

    Attributes
    ----------
    rank
        The rank that was waited for.
    timeout
        The seconds waited.
    """

    def __init__(self, message: str, rank: int | None, timeout: float):
        self.rank = rank
        self.timeout = timeout
        super().__init__(message)
