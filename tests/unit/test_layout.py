"""Role assignment by ``plan(size, mode, options, style)``, without MPI.

plan() enforces these minimum world sizes:

| mode                                  | minimum size                          |
|---------------------------------------|---------------------------------------|
| CLI with scheduler, exclusive workers | max(2, scheduler_rank + 1)            |
| CLI with --inclusive-workers          | scheduler_rank + 1                    |
| CLI --no-scheduler                    | 1                                     |
| initialize()                          | 3                                     |
| execute(), exclusive workers          | max(client_rank + 1,                  |
|                                       |     scheduler_rank + 1,               |
|                                       |     2 if both share a rank else 3)    |
| execute(), inclusive workers          | max(client_rank, scheduler_rank) + 1  |
"""

from __future__ import annotations

import dataclasses

import pytest

from dask_mpi._layout import Layout, Role, minimum_size, plan
from dask_mpi._options import Mode, Options, Style
from dask_mpi.exceptions import UsageError, WorldTooSmallException

CLI = Mode.CLI
INITIALIZE = Mode.INITIALIZE
EXECUTE = Mode.EXECUTE

S = Role.SCHEDULER
C = Role.CLIENT
W = Role.WORKER


def make_options(**changes: object) -> Options:
    """Return default Options with ``changes`` applied.

    plan() does not check option values, because resolve() already did.
    """
    return dataclasses.replace(Options(), **changes)


def style_of(mode: Mode) -> Style:
    return Style.CLI if mode is Mode.CLI else Style.API


# (id, mode, size, option changes, scheduler rank, client rank, worker ranks,
#  coordinator)
LAYOUTS = [
    ("cli-exclusive-2", CLI, 2, {}, 0, None, (1,), 0),
    ("cli-exclusive-4", CLI, 4, {}, 0, None, (1, 2, 3), 0),
    ("cli-exclusive-scheduler-last", CLI, 3, {"scheduler_rank": 2}, 2, None, (0, 1), 2),
    ("cli-ignores-client-rank", CLI, 2, {"client_rank": 0}, 0, None, (1,), 0),
    ("cli-inclusive-1", CLI, 1, {"exclusive_workers": False}, 0, None, (0,), 0),
    (
        "cli-inclusive-scheduler-last", CLI, 3,
        {"exclusive_workers": False, "scheduler_rank": 2}, 2, None, (0, 1, 2), 2,
    ),
    ("cli-no-scheduler-1", CLI, 1, {"scheduler": False}, None, None, (0,), 0),
    (
        "cli-no-scheduler-ignores-rank", CLI, 3,
        {"scheduler": False, "scheduler_rank": 7}, None, None, (0, 1, 2), 0,
    ),
    ("initialize-3", INITIALIZE, 3, {}, 0, 1, (2,), 0),
    ("initialize-5", INITIALIZE, 5, {}, 0, 1, (2, 3, 4), 0),
    (
        "initialize-ignores-ranks", INITIALIZE, 3,
        {"scheduler_rank": 7, "client_rank": 7}, 0, 1, (2,), 0,
    ),
    (
        "initialize-ignores-inclusive", INITIALIZE, 3,
        {"exclusive_workers": False}, 0, 1, (2,), 0,
    ),
    ("execute-exclusive-3", EXECUTE, 3, {}, 0, 1, (2,), 0),
    ("execute-exclusive-5", EXECUTE, 5, {}, 0, 1, (2, 3, 4), 0),
    (
        "execute-exclusive-swapped", EXECUTE, 3,
        {"scheduler_rank": 1, "client_rank": 0}, 1, 0, (2,), 1,
    ),
    ("execute-exclusive-client-last", EXECUTE, 4, {"client_rank": 3}, 0, 3, (1, 2), 0),
    ("execute-shared-rank-0", EXECUTE, 2, {"client_rank": 0}, 0, 0, (1,), 0),
    (
        "execute-shared-rank-2", EXECUTE, 3,
        {"scheduler_rank": 2, "client_rank": 2}, 2, 2, (0, 1), 2,
    ),
    (
        "execute-inclusive-1", EXECUTE, 1,
        {"exclusive_workers": False, "client_rank": 0}, 0, 0, (0,), 0,
    ),
    ("execute-inclusive-2", EXECUTE, 2, {"exclusive_workers": False}, 0, 1, (0, 1), 0),
    ("execute-no-scheduler", EXECUTE, 2, {"scheduler": False}, None, 1, (0,), 1),
    (
        "execute-no-scheduler-inclusive", EXECUTE, 1,
        {"scheduler": False, "exclusive_workers": False, "client_rank": 0},
        None, 0, (0,), 0,
    ),
]


@pytest.mark.parametrize(
    "mode, size, changes, scheduler_rank, client_rank, worker_ranks, coordinator",
    [pytest.param(*case[1:], id=case[0]) for case in LAYOUTS],
)
def test_plan_assigns_ranks(
    mode, size, changes, scheduler_rank, client_rank, worker_ranks, coordinator
):
    layout = plan(size, mode, make_options(**changes), style_of(mode))

    assert isinstance(layout, Layout)
    assert layout.size == size
    assert layout.scheduler_rank == scheduler_rank
    assert layout.client_rank == client_rank
    assert layout.worker_ranks == worker_ranks
    assert layout.coordinator == coordinator


@pytest.mark.parametrize(
    "mode, size, changes, scheduler_rank, client_rank, worker_ranks, coordinator",
    [pytest.param(*case[1:], id=case[0]) for case in LAYOUTS],
)
def test_role_agrees_with_layout(
    mode, size, changes, scheduler_rank, client_rank, worker_ranks, coordinator
):
    layout = plan(size, mode, make_options(**changes), style_of(mode))

    for rank in range(size):
        role = layout.role(rank)
        assert (Role.SCHEDULER in role) == (rank == scheduler_rank), rank
        assert (Role.CLIENT in role) == (rank == client_rank), rank
        assert (Role.WORKER in role) == (rank in worker_ranks), rank
        assert role != Role.NONE, f"rank {rank} has no role"


# (id, mode, option changes, the role of each rank in order)
ROLES = [
    ("cli-exclusive", CLI, {}, [S, W, W]),
    ("cli-inclusive", CLI, {"exclusive_workers": False}, [S | W, W]),
    ("cli-scheduler-rank-1", CLI, {"scheduler_rank": 1}, [W, S, W]),
    ("cli-no-scheduler", CLI, {"scheduler": False}, [W, W]),
    ("initialize", INITIALIZE, {}, [S, C, W, W]),
    ("execute-exclusive", EXECUTE, {}, [S, C, W]),
    ("execute-shared-rank", EXECUTE, {"client_rank": 0}, [S | C, W]),
    (
        "execute-inclusive-1", EXECUTE,
        {"exclusive_workers": False, "client_rank": 0}, [S | C | W],
    ),
    ("execute-inclusive-3", EXECUTE, {"exclusive_workers": False}, [S | W, C | W, W]),
    ("execute-no-scheduler", EXECUTE, {"scheduler": False}, [W, C]),
]


@pytest.mark.parametrize(
    "mode, changes, roles",
    [pytest.param(*case[1:], id=case[0]) for case in ROLES],
)
def test_role_of_each_rank(mode, changes, roles):
    layout = plan(len(roles), mode, make_options(**changes), style_of(mode))

    assert [layout.role(rank) for rank in range(len(roles))] == roles


def test_role_outside_world_is_none():
    layout = plan(3, EXECUTE, make_options(), Style.API)

    assert layout.role(3) == Role.NONE
    assert layout.role(-1) == Role.NONE


# One block per row of the minimum-size table in the module docstring.
# (id, mode, option changes, minimum size)
MINIMUM_SIZES = [
    # CLI with scheduler, exclusive workers: max(2, scheduler_rank + 1)
    ("cli-exclusive-rank-0", CLI, {}, 2),
    ("cli-exclusive-rank-1", CLI, {"scheduler_rank": 1}, 2),
    ("cli-exclusive-rank-4", CLI, {"scheduler_rank": 4}, 5),
    # CLI with --inclusive-workers: scheduler_rank + 1
    ("cli-inclusive-rank-0", CLI, {"exclusive_workers": False}, 1),
    ("cli-inclusive-rank-3", CLI, {"exclusive_workers": False, "scheduler_rank": 3}, 4),
    # CLI --no-scheduler: 1, whatever the scheduler rank
    ("cli-no-scheduler", CLI, {"scheduler": False}, 1),
    ("cli-no-scheduler-rank-5", CLI, {"scheduler": False, "scheduler_rank": 5}, 1),
    # initialize(): 3
    ("initialize", INITIALIZE, {}, 3),
    ("initialize-inclusive", INITIALIZE, {"exclusive_workers": False}, 3),
    # execute(), exclusive workers, client and scheduler on distinct ranks
    ("execute-distinct-default", EXECUTE, {}, 3),
    ("execute-distinct-swapped", EXECUTE, {"scheduler_rank": 1, "client_rank": 0}, 3),
    ("execute-distinct-client-4", EXECUTE, {"client_rank": 4}, 5),
    ("execute-distinct-scheduler-3", EXECUTE, {"scheduler_rank": 3}, 4),
    # execute(), exclusive workers, client and scheduler on the same rank
    ("execute-same-rank-0", EXECUTE, {"client_rank": 0}, 2),
    ("execute-same-rank-1", EXECUTE, {"scheduler_rank": 1, "client_rank": 1}, 2),
    ("execute-same-rank-3", EXECUTE, {"scheduler_rank": 3, "client_rank": 3}, 4),
    # execute(), inclusive workers: max(client_rank, scheduler_rank) + 1
    (
        "execute-inclusive-rank-0", EXECUTE,
        {"exclusive_workers": False, "client_rank": 0}, 1,
    ),
    ("execute-inclusive-default", EXECUTE, {"exclusive_workers": False}, 2),
    (
        "execute-inclusive-scheduler-2", EXECUTE,
        {"exclusive_workers": False, "scheduler_rank": 2, "client_rank": 0}, 3,
    ),
]


@pytest.mark.parametrize(
    "mode, changes, needed",
    [pytest.param(*case[1:], id=case[0]) for case in MINIMUM_SIZES],
)
def test_minimum_size_table(mode, changes, needed):
    options = make_options(**changes)

    size, why = minimum_size(mode, options)
    assert size == needed
    assert why

    layout = plan(needed, mode, options, style_of(mode))
    assert layout.size == needed


@pytest.mark.parametrize(
    "mode, changes, needed",
    [pytest.param(*case[1:], id=case[0]) for case in MINIMUM_SIZES if case[3] > 1],
)
def test_one_rank_less_than_minimum_fails(mode, changes, needed):
    """One rank short raises WorldTooSmallException.

    Where the scheduler or client rank is then outside the world, the error
    is a UsageError naming that rank instead.
    """
    options = make_options(**changes)
    size = needed - 1

    with pytest.raises((WorldTooSmallException, UsageError)) as caught:
        plan(size, mode, options, style_of(mode))

    error = caught.value
    if isinstance(error, WorldTooSmallException):
        assert error.size == size
        assert error.needed == needed
    else:
        rank_outside = {options.scheduler_rank, options.client_rank} & {size}
        assert error.value in rank_outside


# (id, mode, size, option changes, needed): the world is too small while the
# scheduler and client ranks still lie inside it.
TOO_SMALL = [
    ("cli-exclusive-alone", CLI, 1, {}, 2),
    ("initialize-1", INITIALIZE, 1, {}, 3),
    ("initialize-2", INITIALIZE, 2, {}, 3),
    ("execute-distinct-2", EXECUTE, 2, {}, 3),
    ("execute-swapped-2", EXECUTE, 2, {"scheduler_rank": 1, "client_rank": 0}, 3),
    ("execute-shared-rank-alone", EXECUTE, 1, {"client_rank": 0}, 2),
    (
        "execute-no-scheduler-alone", EXECUTE, 1,
        {"scheduler": False, "client_rank": 0}, 2,
    ),
]


@pytest.mark.parametrize(
    "mode, size, changes, needed",
    [pytest.param(*case[1:], id=case[0]) for case in TOO_SMALL],
)
def test_world_too_small_raises(mode, size, changes, needed):
    with pytest.raises(WorldTooSmallException) as caught:
        plan(size, mode, make_options(**changes), style_of(mode))

    error = caught.value
    assert isinstance(error, RuntimeError)
    assert error.size == size
    assert error.needed == needed
    assert error.why
    assert f"has {size} rank(s)" in str(error)
    assert f"needs at least {needed}" in str(error)
    assert f"mpirun -np {needed}" in str(error)


def test_world_too_small_reason_suggests_inclusive():
    with pytest.raises(WorldTooSmallException) as caught:
        plan(1, CLI, make_options(), Style.CLI)

    assert "--inclusive-workers" in caught.value.why


def test_execute_too_small_reason_suggests_inclusive():
    with pytest.raises(WorldTooSmallException) as caught:
        plan(2, EXECUTE, make_options(), Style.API)

    assert "exclusive_workers=False" in caught.value.why


# (id, mode, size, option changes, rejected option, rejected rank)
RANKS_OUTSIDE = [
    ("cli-scheduler-rank-2-of-2", CLI, 2, {"scheduler_rank": 2}, "--scheduler-rank", 2),
    ("cli-scheduler-rank-9-of-4", CLI, 4, {"scheduler_rank": 9}, "--scheduler-rank", 9),
    (
        "cli-inclusive-rank-1-of-1", CLI, 1,
        {"scheduler_rank": 1, "exclusive_workers": False}, "--scheduler-rank", 1,
    ),
    (
        "execute-scheduler-rank-5", EXECUTE, 3, {"scheduler_rank": 5},
        "scheduler_rank", 5,
    ),
    ("execute-client-rank-3", EXECUTE, 3, {"client_rank": 3}, "client_rank", 3),
    (
        "execute-inclusive-client-1-of-1", EXECUTE, 1,
        {"exclusive_workers": False}, "client_rank", 1,
    ),
    (
        "execute-no-scheduler-client-4", EXECUTE, 2,
        {"scheduler": False, "client_rank": 4}, "client_rank", 4,
    ),
]


@pytest.mark.parametrize(
    "mode, size, changes, option, rank",
    [pytest.param(*case[1:], id=case[0]) for case in RANKS_OUTSIDE],
)
def test_rank_outside_world_is_usage_error(mode, size, changes, option, rank):
    with pytest.raises(UsageError) as caught:
        plan(size, mode, make_options(**changes), style_of(mode))

    error = caught.value
    assert isinstance(error, ValueError)
    assert error.option == option
    assert error.value == rank
    assert f"{option}={rank}" in str(error)
    assert f"world of {size} rank(s)" in str(error)
    assert f"below {size}" in error.fix


def test_rank_outside_world_uses_cli_spelling():
    with pytest.raises(UsageError) as caught:
        plan(3, EXECUTE, make_options(client_rank=3), Style.CLI)

    assert caught.value.option == "--client-rank"
