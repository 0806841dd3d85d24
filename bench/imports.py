"""Import costs of each rank's parts, from ``python -X importtime``.

Each statement below runs in a fresh interpreter with ``-X importtime``.
The table gives, as medians over the repetitions, the import time (the
sum of the cumulative figures of the top-level imports) and the number of
modules loaded, both without the modules Python loads at its own start.
It prints the table and writes it to docs/benchmarks.md under "Imports".

Usage: ``python bench/imports.py [--reps 7] [--output PATH]``
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

from _args import check_output, positive_int
from _report import replace_section

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "benchmarks.md"
MARK = "<!-- imports benchmark -->"

# (what a rank needs it for, the statement timed)
IMPORTS = [
    ("the package (every entry point)", "import dask_mpi"),
    ("MPI (every rank)", "import mpi4py.MPI"),
    ("dask.config (options)", "import dask.config"),
    ("distributed (scheduler, workers, client)", "import distributed"),
    ("the command line", "import dask_mpi.cli"),
    ("the staging tool", "import dask_mpi.stage"),
    (
        "a worker rank's start, all of it",
        "import dask_mpi, mpi4py.MPI, distributed",
    ),
]


def _entries(statement: str) -> list[tuple[int, str]]:
    """Return (cumulative microseconds, indented name) per imported module."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    found = []
    for line in done.stderr.splitlines():
        fields = line.split("|")
        if not line.startswith("import time:") or len(fields) != 3:
            continue
        try:
            found.append((int(fields[1]), fields[2][1:]))
        except ValueError:
            continue  # the header line
    return found


def measure(statement: str, at_start: set[str]) -> tuple[float, int]:
    """Return (seconds, modules) of one import in a fresh interpreter."""
    entries = [
        (us, name) for us, name in _entries(statement) if name.strip() not in at_start
    ]
    top_level = sum(us for us, name in entries if not name.startswith(" "))
    return top_level / 1e6, len(entries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=positive_int, default=7)
    parser.add_argument("--output", type=Path, default=PAGE)
    args = parser.parse_args()
    check_output(parser, args.output)

    at_start = {name.strip() for _, name in _entries("pass")}
    rows = []
    for purpose, statement in IMPORTS:
        samples = [measure(statement, at_start) for _ in range(args.reps)]
        seconds = statistics.median(s for s, _ in samples)
        modules = statistics.median(m for _, m in samples)
        rows.append((purpose, statement, seconds, modules))
        print(f"{statement:45s} {seconds * 1000:7.0f} ms {modules:5.0f} modules")

    table = render(rows, args.reps)
    print(table)
    replace_section(args.output, MARK, "Imports", table)


def render(rows: list[tuple[str, str, float, float]], reps: int) -> str:
    lines = [
        f"Median of {reps} fresh interpreters each, `python -X importtime -c "
        "STATEMENT`, run one after another. The time is the sum of the "
        "cumulative figures of the top-level imports; the modules exclude "
        "those Python loads at its own start.",
        "",
        "| needed for | statement | import time | modules loaded |",
        "|---|---|---:|---:|",
    ]
    for purpose, statement, seconds, modules in rows:
        lines.append(
            f"| {purpose} | `{statement}` | {seconds * 1000:.0f} ms | {modules:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
