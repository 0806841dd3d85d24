"""Statistics, Markdown tables and the machine description of the benchmark."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Summary:
    """Median, minimum, maximum and count of one figure's samples."""

    median: float
    minimum: float
    maximum: float
    count: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary | None:
        """Summarize ``samples``, or return None when there are none."""
        if not samples:
            return None
        return cls(statistics.median(samples), min(samples), max(samples), len(samples))

    def cell(self, unit: str = "s") -> str:
        """Format as ``median (min–max)`` with a unit."""
        return f"{self.median:.2f} {unit} ({self.minimum:.2f}–{self.maximum:.2f})"


def cell(summary: Summary | None, unit: str = "s") -> str:
    """Format a summary, or ``failed`` when no sample succeeded."""
    return "failed" if summary is None else summary.cell(unit)


def ratio(ours: float | None, reference: float | None) -> float | None:
    """Return ``ours / reference``, or None if either is missing or not positive."""
    if ours is None or reference is None or reference <= 0:
        return None
    return ours / reference


def ratio_cell(value: float | None) -> str:
    """Format a ratio as ``×0.85``, or ``n/a``."""
    return "n/a" if value is None else f"×{value:.2f}"


def median_of(summary: Summary | None) -> float | None:
    """Return the summary's median, or None."""
    return None if summary is None else summary.median


def slope(points: Sequence[tuple[float, float]]) -> float | None:
    """Return the least-squares slope of y over x, or None with fewer than 2 x."""
    if len({x for x, _ in points}) < 2:
        return None
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    return statistics.linear_regression(xs, ys).slope


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Render a Markdown table."""
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# ------------------------------------------------------------ machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except FileNotFoundError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                kib = int(line.split()[1])
                return f"{kib / 1024**2:.1f} GiB"
    except FileNotFoundError:
        pass
    return "unknown"


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git_commit(repository: Path) -> str:
    try:
        commit = subprocess.run(
            ["git", "-C", str(repository), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repository), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit} (src/ has uncommitted changes)" if dirty else commit


def git_commit(repository: Path) -> str:
    """Return the short commit of ``repository``, marked when src/ has changes."""
    return _git_commit(repository)


def machine_description(
    repository: Path, established: str | None, commit_at_start: str
) -> list[tuple[str, str]]:
    """Describe the machine and software versions as (name, value) pairs.

    ``commit_at_start`` is the repository's commit when the jobs started; a
    different commit at the end means the package changed during the run.
    """
    usable = len(os.sched_getaffinity(0))
    commit = _git_commit(repository)
    if commit != commit_at_start:
        commit = f"{commit_at_start} at the start of the run, {commit} at its end"
    facts = [
        (
            "date",
            datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        ),
        ("CPU", _cpu_model()),
        ("cores", f"{os.cpu_count()} ({usable} usable by this process)"),
        ("memory", _memory()),
        ("kernel", platform.release()),
        ("Python", platform.python_version()),
        ("MPICH (mpich wheel)", _version("mpich")),
        ("mpi4py", _version("mpi4py")),
        ("distributed", _version("distributed")),
        ("dask", _version("dask")),
        ("dask-mpi (this repository)", f"{_version('dask-mpi')}, commit {commit}"),
        ("dask-mpi (established, PyPI)", established or "not measured"),
        ("network", "loopback only (unshare -n)"),
    ]
    return facts


def replace_section(path: Path, mark: str, title: str, body: str) -> None:
    """Replace the text between two ``mark`` lines of ``path``, or append it.

    Text outside the marks, such as notes written by hand, is kept. The
    page is replaced in one rename, so a failed run leaves it whole.
    """
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"{mark}\n## {title}\n\n{body}\n{mark}\n"
    if mark in text:
        before, _, rest = text.partition(mark)
        _, _, after = rest.partition(mark)
        text = before + section + after.lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    temporary.replace(path)
