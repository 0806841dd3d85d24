"""Facts each rank gathers about its node, and the defaults derived from them.

Ranks are grouped into nodes by host name. Memory and cores of a node are
shared among all ranks on it (scheduler and client ranks included), because
they all compete for the same machine.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RankInfo:
    """Facts one rank gathers about itself before the first collective."""

    rank: int
    host: str
    pid: int
    cpus: frozenset[int]
    memory: int
    error: tuple[str, Any, str, str] | None = None
    environment: str = ""


def _cpus() -> frozenset[int]:
    try:
        return frozenset(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity call
        return frozenset(range(os.cpu_count() or 1))


def _memory() -> int:
    import psutil

    return int(psutil.virtual_memory().total)


def describe_self(
    rank: int, error: tuple[str, Any, str, str] | None = None
) -> RankInfo:
    """Return this rank's RankInfo."""
    from ._scale import environment_key

    return RankInfo(
        rank,
        socket.gethostname(),
        os.getpid(),
        _cpus(),
        _memory(),
        error,
        environment_key(),
    )


def same_node(infos: Sequence[RankInfo], rank: int) -> list[RankInfo]:
    """Return the ranks on the node of ``rank``, itself included."""
    host = infos[rank].host
    return [info for info in infos if info.host == host]


def default_threads(infos: Sequence[RankInfo], rank: int) -> int:
    """Return the cores of ``rank`` divided among the ranks that share them."""
    mine = infos[rank].cpus
    sharing = sum(1 for info in same_node(infos, rank) if info.cpus & mine)
    return max(1, len(mine) // max(sharing, 1))


def default_memory(infos: Sequence[RankInfo], rank: int) -> int:
    """Return the node's memory divided among all ranks on that node."""
    neighbours = same_node(infos, rank)
    return infos[rank].memory // len(neighbours)


def memory_limit(
    setting: str | int | float | None,
    infos: Sequence[RankInfo],
    rank: int,
    workers_here: int,
) -> int | None:
    """Turn the memory-limit option into bytes per worker on ``rank``."""
    if setting is None:
        return None
    if setting == "auto":
        return default_memory(infos, rank) // max(workers_here, 1)
    if isinstance(setting, float):
        return int(infos[rank].memory * setting)
    return int(setting)


def default_local_directory() -> str:
    """Return node-local scratch space: $TMPDIR, $SLURM_TMPDIR or the system's."""
    for variable in ("TMPDIR", "SLURM_TMPDIR"):
        path = os.environ.get(variable)
        if path and os.path.isdir(path):
            return path
    return tempfile.gettempdir()


def single_host(infos: Sequence[RankInfo]) -> bool:
    """True when every rank runs on the same host."""
    return len({info.host for info in infos}) == 1


def default_route_address() -> str:
    """Return this host's address on the interface of the default route.

    Without a default route (a node on a private network only) this falls
    back to the address the host name resolves to, then to loopback.
    """
    import psutil

    interface = _default_route_interface()
    if interface:
        for address in psutil.net_if_addrs().get(interface, ()):
            if address.family == socket.AF_INET:
                return address.address
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def _default_route_interface() -> str | None:
    """Return the interface of the IPv4 default route, from /proc/net/route."""
    try:
        with open("/proc/net/route") as f:
            rows = [line.split() for line in f.readlines()[1:]]
    except OSError:
        return None
    for row in rows:
        if len(row) > 1 and row[1] == "00000000":
            return row[0]
    return None
