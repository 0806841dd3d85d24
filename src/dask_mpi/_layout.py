"""Role assignment: a pure function of (size, options).

Nothing here touches MPI, so the rules are tested with tables of cases.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ._options import Mode, Options, Style, option_name
from .exceptions import UsageError, WorldTooSmallException


class Role(enum.Flag):
    """The work of one rank. A rank can combine roles with inclusive workers."""

    NONE = 0
    SCHEDULER = enum.auto()
    CLIENT = enum.auto()
    WORKER = enum.auto()


@dataclass(frozen=True)
class Layout:
    """The roles of all ranks of one world.

    ``coordinator`` is the rank that decides how the job ends: the
    scheduler rank, or rank 0 when the job joins an outside scheduler.
    """

    size: int
    scheduler_rank: int | None
    client_rank: int | None
    worker_ranks: tuple[int, ...]

    @property
    def coordinator(self) -> int:
        """The rank that decides how the job ends."""
        if self.scheduler_rank is not None:
            return self.scheduler_rank
        return 0 if self.client_rank is None else self.client_rank

    def role(self, rank: int) -> Role:
        """Return the roles of ``rank``."""
        role = Role.NONE
        if rank == self.scheduler_rank:
            role |= Role.SCHEDULER
        if rank == self.client_rank:
            role |= Role.CLIENT
        if rank in self.worker_ranks:
            role |= Role.WORKER
        return role


def _check_rank(key: str, rank: int, size: int, style: Style) -> None:
    if rank >= size:
        raise UsageError(
            option_name(key, style),
            rank,
            f"outside the MPI world of {size} rank(s) (0 to {size - 1})",
            f"Give a rank below {size}, or start the job with more ranks.",
        )


def minimum_size(mode: Mode, options: Options) -> tuple[int, str]:
    """Return the smallest world for ``mode`` and the reason, as a sentence."""
    s_rank, c_rank = options.scheduler_rank, options.client_rank
    if mode is Mode.INITIALIZE:
        return 3, "initialize() needs a scheduler, a client and a worker rank"
    if mode is Mode.CLI:
        if not options.scheduler:
            return 1, "--no-scheduler needs one worker rank"
        if not options.exclusive_workers:
            return s_rank + 1, f"the scheduler runs on rank {s_rank}"
        return max(2, s_rank + 1), (
            f"the scheduler runs on rank {s_rank} and at least one other rank "
            "must run a worker (or pass --inclusive-workers)"
        )
    if not options.scheduler:
        if not options.exclusive_workers:
            return c_rank + 1, f"the client runs on rank {c_rank}"
        return max(c_rank + 1, 2), (
            f"the client runs on rank {c_rank} and another rank must run a worker"
        )
    if not options.exclusive_workers:
        return max(c_rank, s_rank) + 1, (
            f"the scheduler runs on rank {s_rank} and the client on rank {c_rank}"
        )
    shared = c_rank == s_rank
    return max(c_rank + 1, s_rank + 1, 2 if shared else 3), (
        f"the scheduler runs on rank {s_rank}, the client on rank {c_rank}, "
        "and at least one other rank must run a worker "
        "(or pass exclusive_workers=False)"
    )


def plan(size: int, mode: Mode, options: Options, style: Style) -> Layout:
    """Assign roles to the ranks of a world of ``size``.

    Raises
    ------
    UsageError
        A scheduler or client rank lies outside the world.
    WorldTooSmallException
        The world has fewer ranks than the layout needs.
    """
    has_scheduler = options.scheduler
    s_rank = options.scheduler_rank if has_scheduler else None
    c_rank = None
    if mode is Mode.INITIALIZE:
        s_rank, c_rank = 0, 1
    elif mode is Mode.EXECUTE:
        c_rank = options.client_rank

    needed, why = minimum_size(mode, options)
    if s_rank is not None and mode is not Mode.INITIALIZE:
        _check_rank("scheduler-rank", s_rank, max(size, 1), style)
    if c_rank is not None and mode is not Mode.INITIALIZE:
        _check_rank("client-rank", c_rank, max(size, 1), style)
    if size < needed:
        raise WorldTooSmallException(size, needed, why)

    special = {s_rank, c_rank}
    if options.exclusive_workers and mode is not Mode.INITIALIZE:
        workers = tuple(r for r in range(size) if r not in special)
    elif mode is Mode.INITIALIZE:
        workers = tuple(range(2, size))
    else:
        workers = tuple(range(size))
    return Layout(size, s_rank, c_rank, workers)
