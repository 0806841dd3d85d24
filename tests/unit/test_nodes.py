"""Per-node defaults from synthetic RankInfo lists: threads, memory, scratch."""

from __future__ import annotations

import tempfile

import pytest

from dask_mpi._nodes import (
    RankInfo,
    default_local_directory,
    default_memory,
    default_threads,
    memory_limit,
    same_node,
    single_host,
)

GiB = 2**30


def ranks(*hosts: tuple[str, frozenset[int] | range, int]) -> list[RankInfo]:
    """Build RankInfo rows from (host, cpus, node memory), ranked in order."""
    return [
        RankInfo(rank, host, 1000 + rank, frozenset(cpus), memory)
        for rank, (host, cpus, memory) in enumerate(hosts)
    ]


def cores(*numbers: int) -> frozenset[int]:
    return frozenset(numbers)


# ---------------------------------------------------------------- threads


def test_threads_four_ranks_two_cores():
    infos = ranks(*[("node0", cores(0, 1), 16 * GiB)] * 4)

    assert [default_threads(infos, rank) for rank in range(4)] == [1, 1, 1, 1]


def test_threads_two_ranks_eight_cores():
    infos = ranks(*[("node0", range(8), 16 * GiB)] * 2)

    assert [default_threads(infos, rank) for rank in range(2)] == [4, 4]


def test_threads_round_down():
    infos = ranks(*[("node0", range(8), 16 * GiB)] * 3)

    assert [default_threads(infos, rank) for rank in range(3)] == [2, 2, 2]


def test_threads_of_bound_ranks():
    infos = ranks(
        ("node0", range(0, 4), 16 * GiB),
        ("node0", range(4, 8), 16 * GiB),
        ("node0", cores(8), 16 * GiB),
    )

    assert [default_threads(infos, rank) for rank in range(3)] == [4, 4, 1]


def test_threads_single_core():
    infos = ranks(("node0", cores(0), 1 * GiB))

    assert default_threads(infos, 0) == 1


def test_threads_counted_per_host():
    """Equal core numbers on different hosts are different cores."""
    infos = ranks(
        ("node0", range(8), 16 * GiB),
        ("node0", range(8), 16 * GiB),
        ("node1", range(8), 16 * GiB),
    )

    assert [default_threads(infos, rank) for rank in range(3)] == [4, 4, 8]


def test_partial_overlap_counts_as_sharing():
    infos = ranks(
        ("node0", range(0, 4), 16 * GiB),
        ("node0", range(2, 6), 16 * GiB),
    )

    assert default_threads(infos, 0) == 2
    assert default_threads(infos, 1) == 2


# ---------------------------------------------------------------- memory


def test_memory_divided_among_ranks_on_node():
    infos = ranks(*[("node0", range(4), 16 * GiB)] * 4)

    assert [default_memory(infos, rank) for rank in range(4)] == [4 * GiB] * 4


def test_memory_share_per_host():
    infos = ranks(
        ("node0", range(4), 12 * GiB),
        ("node0", range(4), 12 * GiB),
        ("node0", range(4), 12 * GiB),
        ("node1", range(4), 8 * GiB),
    )

    assert [default_memory(infos, rank) for rank in range(4)] == [
        4 * GiB, 4 * GiB, 4 * GiB, 8 * GiB,
    ]


def test_memory_limit_none_means_no_limit():
    infos = ranks(("node0", range(4), 16 * GiB))

    assert memory_limit(None, infos, 0, workers_here=1) is None


@pytest.mark.parametrize(
    "workers_here, expected",
    [(0, 8 * GiB), (1, 8 * GiB), (2, 4 * GiB), (4, 2 * GiB)],
)
def test_memory_limit_auto_divides_share(workers_here, expected):
    """'auto' splits the rank's share among the workers it runs (none: one)."""
    infos = ranks(*[("node0", range(4), 16 * GiB)] * 2)

    assert memory_limit("auto", infos, 0, workers_here) == expected


def test_memory_limit_auto_per_host():
    infos = ranks(
        ("node0", range(4), 16 * GiB),
        ("node0", range(4), 16 * GiB),
        ("node1", range(4), 16 * GiB),
    )

    limits = [memory_limit("auto", infos, rank, workers_here=1) for rank in range(3)]
    assert limits == [8 * GiB, 8 * GiB, 16 * GiB]


@pytest.mark.parametrize("workers_here", [1, 2])
def test_memory_limit_fraction_of_node(workers_here):
    """A fraction is of the node's memory per worker, as in distributed."""
    infos = ranks(*[("node0", range(4), 16 * GiB)] * 4)

    assert memory_limit(0.25, infos, 2, workers_here) == 4 * GiB


def test_memory_limit_fraction_uses_own_host():
    infos = ranks(("node0", range(4), 16 * GiB), ("node1", range(4), 8 * GiB))

    assert memory_limit(0.5, infos, 0, workers_here=1) == 8 * GiB
    assert memory_limit(0.5, infos, 1, workers_here=1) == 4 * GiB


@pytest.mark.parametrize("workers_here", [1, 3])
def test_memory_limit_bytes_used_as_given(workers_here):
    infos = ranks(*[("node0", range(4), 16 * GiB)] * 2)

    assert memory_limit(3_000_000_000, infos, 1, workers_here) == 3_000_000_000


# ---------------------------------------------------------------- hosts


def test_same_node_groups_by_host():
    infos = ranks(
        ("node0", range(2), GiB),
        ("node1", range(2), GiB),
        ("node0", range(2), GiB),
    )

    assert [info.rank for info in same_node(infos, 2)] == [0, 2]
    assert [info.rank for info in same_node(infos, 1)] == [1]


def test_single_host():
    assert single_host(ranks(("node0", range(2), GiB), ("node0", range(2), GiB)))
    assert not single_host(ranks(("node0", range(2), GiB), ("node1", range(2), GiB)))


# ---------------------------------------------------------------- scratch


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """Clear TMPDIR and SLURM_TMPDIR and pin the system temp dir to tmp_path."""
    monkeypatch.delenv("TMPDIR", raising=False)
    monkeypatch.delenv("SLURM_TMPDIR", raising=False)
    system = tmp_path / "system"
    system.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system))
    return tmp_path


def make_dir(parent, name: str) -> str:
    path = parent / name
    path.mkdir()
    return str(path)


def test_local_directory_prefers_tmpdir(scratch, monkeypatch):
    monkeypatch.setenv("TMPDIR", make_dir(scratch, "tmpdir"))
    monkeypatch.setenv("SLURM_TMPDIR", make_dir(scratch, "slurm"))

    assert default_local_directory() == str(scratch / "tmpdir")


def test_local_directory_uses_slurm_tmpdir(scratch, monkeypatch):
    monkeypatch.setenv("SLURM_TMPDIR", make_dir(scratch, "slurm"))

    assert default_local_directory() == str(scratch / "slurm")


def test_local_directory_skips_missing_tmpdir(scratch, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(scratch / "missing"))
    monkeypatch.setenv("SLURM_TMPDIR", make_dir(scratch, "slurm"))

    assert default_local_directory() == str(scratch / "slurm")


def test_local_directory_skips_empty_tmpdir(scratch, monkeypatch):
    monkeypatch.setenv("TMPDIR", "")
    monkeypatch.setenv("SLURM_TMPDIR", make_dir(scratch, "slurm"))

    assert default_local_directory() == str(scratch / "slurm")


def test_local_directory_system_fallback(scratch):
    assert default_local_directory() == str(scratch / "system")


def test_local_directory_both_missing(scratch, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(scratch / "missing"))
    monkeypatch.setenv("SLURM_TMPDIR", str(scratch / "also-missing"))

    assert default_local_directory() == str(scratch / "system")
