"""Benchmark dask-mpi's start-up, shutdown and steady state on one machine.

Run it from the repository root after ``pip install -e '.[mpich]'``, inside
a network namespace that has only the loopback interface, so that every
MPI and Dask socket stays on this machine::

    unshare -n bash -c 'ip link set lo up; python bench/startup.py'

``unshare -n`` needs root. Run as root outside such a namespace, the script
first prepares the established package's environment, because pip needs the
network, and then re-executes itself that way. Run as another user outside
a namespace, it stops with an error.
Inside a namespace it needs that environment ready: ``python bench/startup.py
--prepare-only`` creates it. The namespace
check looks for interfaces other than ``lo`` in ``/proc/self/net/dev``.

In one run it measures the following, with ``--reps`` repetitions of each
figure. The report gives the median, minimum and maximum, and one unrecorded
warm-up run of each kind comes first.

- the floor: ``mpirun -np N python -c "import distributed, mpi4py.MPI"``,
  its wall time, start-up (launch to the last rank's stamp after the
  imports) and exit (that stamp to launcher exit);
- a tiny batch job (``bench/jobs/batch_tiny.py``: ``initialize()``,
  ``Client()``, one task): launch to first result, client end to launcher
  exit, and wall time, for this repository's package (TLS on, its default,
  and ``security=False``) and the established package from PyPI;
- the ``dask-mpi`` command: launch to an outside client (this process) seeing
  all N-1 workers, and ``Client.shutdown()`` to launcher exit;
- steady state on 6 ranks (4 workers of 1 thread), tiny tasks and a
  dask.array reduction (``bench/jobs/steady_state.py``), against a
  ``LocalCluster(n_workers=4, threads_per_worker=1)``;
- start-up growth from a few ranks to 32 (oversubscribed), as the
  least-squares slope in seconds per extra rank, next to the floor's.

The established package (``dask-mpi==2026.3.0`` by default) has the same
import name, so it is installed into ``bench/.venv-established``, a virtual
environment of the same Python with the same ``distributed`` and numpy
versions, and reused while those versions match. numpy matters because
``import distributed`` loads it whenever it is installed.

The tables are printed and written to ``docs/benchmarks.md`` (``--output``)
with a machine description, between marker comments: the rest of that
file is kept. ``--quick`` runs one repetition of the smallest sizes as a smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import _report
import _runner
from _args import non_negative_int, positive_int, positive_seconds
from _report import Summary, cell, median_of, ratio, ratio_cell, slope, table

BENCH_DIR = Path(__file__).resolve().parent
REPOSITORY = BENCH_DIR.parent
JOBS_DIR = BENCH_DIR / "jobs"
BATCH_SCRIPT = JOBS_DIR / "batch_tiny.py"
STEADY_SCRIPT = JOBS_DIR / "steady_state.py"
DEFAULT_OUTPUT = REPOSITORY / "docs" / "benchmarks.md"
DEFAULT_ESTABLISHED_VENV = BENCH_DIR / ".venv-established"
DEFAULT_RAW = BENCH_DIR / "results" / "last-run.json"
ESTABLISHED_VERSION = "2026.3.0"

FLOOR_CODE = (
    "import distributed, mpi4py.MPI, time; "
    "print(f'BENCH-STAMP imported {time.time():.6f}', flush=True)"
)
STEADY_RANKS = 6

# Targets, reported as pass or fail and never asserted.
TARGET_COST_OVER_FLOOR = 0.8  # times the established package's
TARGET_EXIT_OVER_FLOOR = 0.1  # seconds over the floor's own exit time
TARGET_CLI_SHUTDOWN = 0.5  # seconds
TARGET_STEADY_STATE = 0.95  # times LocalCluster's throughput
TARGET_RANK_SLOPE = 1.2  # times the floor's seconds per extra rank

PAGE_TITLE = "# Benchmarks"
BEGIN_MARK = "<!-- begin: written by bench/startup.py -->"
END_MARK = "<!-- end: written by bench/startup.py -->"


# ------------------------------------------------------------ environments


@dataclass(frozen=True)
class Environment:
    """A virtual environment with mpirun, python and dask-mpi."""

    name: str
    bin_dir: Path

    @property
    def mpirun(self) -> str:
        return str(self.bin_dir / "mpirun")

    @property
    def python(self) -> str:
        return str(self.bin_dir / "python")

    @property
    def dask_mpi(self) -> str:
        return str(self.bin_dir / "dask-mpi")

    def env(self) -> dict[str, str]:
        return _runner.job_environment(self.bin_dir)


def own_environment() -> Environment:
    """Return the environment of this interpreter, which must have mpirun."""
    # Do not resolve the symlink: its target lies outside the virtual environment.
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "mpirun").is_file():
        raise SystemExit(
            f"startup.py: mpirun not found in {bin_dir}; install the package "
            "with `pip install -e '.[mpich]'` into this environment"
        )
    return Environment("ours", bin_dir)


# Packages that ``import distributed`` loads whenever they are installed, so
# the established environment needs them too for the same import cost: with
# distributed 2026.8, numpy adds 0.12 s to each rank's import (`python -X
# importtime` on the 2-core machine of docs/benchmarks.md).
OPTIONAL_IMPORTS = ("numpy",)


def _installed_versions(python: Path) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, platform\n"
        "def version(name):\n"
        "    try:\n"
        "        return m.version(name)\n"
        "    except m.PackageNotFoundError:\n"
        "        return None\n"
        "names = ['dask-mpi', 'distributed', 'mpich', 'mpi4py', "
        f"{', '.join(repr(name) for name in OPTIONAL_IMPORTS)}]\n"
        "found = {name: version(name) for name in names}\n"
        "found['python'] = platform.python_version()\n"
        "print(json.dumps(found))\n"
    )
    output = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(output)


def established_environment(venv: Path, version: str, offline: bool) -> Environment:
    """Create or reuse the established package's virtual environment.

    It has the same Python, ``distributed`` and OPTIONAL_IMPORTS as this
    interpreter. An environment that differs in any of them, or in the
    dask-mpi version, is created anew.
    """
    import platform
    import shutil

    own = _installed_versions(Path(sys.executable))
    expected = {
        "python": platform.python_version(),
        "dask-mpi": version,
        "distributed": own["distributed"],
    }
    extras = {name: own[name] for name in OPTIONAL_IMPORTS if own.get(name)}
    expected.update(extras)
    python = venv / "bin" / "python"
    if python.exists():
        try:
            found = _installed_versions(python)
        except (subprocess.CalledProcessError, json.JSONDecodeError):
            found = {}
        if all(found.get(key) == value for key, value in expected.items()):
            return Environment("established", venv / "bin")
        if not offline:
            progress(f"recreating {venv}: found {found}, expected {expected}")
            shutil.rmtree(venv)

    if offline:
        raise SystemExit(
            f"startup.py: {venv} is missing or out of date, and pip cannot reach "
            "the package index from a loopback-only namespace. Create it first "
            "outside the namespace with `python bench/startup.py --prepare-only`, "
            "or run the script as root outside a namespace, so that it prepares "
            "the environment and then enters one itself.")
    progress(f"creating {venv} with dask-mpi=={version}")
    # sys.executable of a virtual environment creates one on the same base Python.
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [
            str(python), "-m", "pip", "install", "--quiet",
            f"dask-mpi=={version}", "mpich", "mpi4py",
            f"distributed=={expected['distributed']}",
            *(f"{name}=={extra}" for name, extra in extras.items()),
        ],
        check=True,
    )
    found = _installed_versions(python)
    if any(found.get(key) != value for key, value in expected.items()):
        raise SystemExit(
            f"startup.py: {venv} has {found} after pip install, expected {expected}"
        )
    return Environment("established", venv / "bin")


def established_description(environment: Environment | None) -> str | None:
    if environment is None:
        return None
    versions = _installed_versions(environment.bin_dir / "python")
    extras = "".join(f", {name} {versions[name]}" for name in OPTIONAL_IMPORTS
                     if versions.get(name))
    return (
        f"{versions['dask-mpi']} (with distributed {versions['distributed']}, "
        f"mpi4py {versions['mpi4py']}, MPICH {versions['mpich']}{extras})"
    )


# ------------------------------------------------------------ measurements


def progress(message: str) -> None:
    print(f"[startup.py {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr,
          flush=True)


def measure_floor(environment: Environment, ranks: int, timeout: float) -> dict:
    command = [environment.mpirun, "-np", str(ranks), environment.python, "-c",
               FLOOR_CODE]
    result = _runner.run_job(command, timeout, environment.env()).check()
    imported = result.last_stamp("imported")
    if len(result.stamps("imported")) != ranks:
        raise _runner.JobFailed(f"expected {ranks} stamps\n{result.describe()}")
    return {
        "wall": result.wall,
        "startup": imported - result.launched,
        "exit": result.exited - imported,
        "leftovers": result.leftover_processes,
        "foreign": result.foreign_load,
    }


def measure_batch(
    environment: Environment, ranks: int, kwargs: dict, timeout: float
) -> dict:
    command = [environment.mpirun, "-np", str(ranks), environment.python,
               str(BATCH_SCRIPT)]
    if kwargs:
        command.append(json.dumps(kwargs))
    result = _runner.run_job(command, timeout, environment.env()).check()
    return {
        "wall": result.wall,
        "startup": result.last_stamp("first-result") - result.launched,
        "exit": result.exited - result.last_stamp("client-end"),
        "leftovers": result.leftover_processes,
        "foreign": result.foreign_load,
    }


def _cli_observer(
    scheduler_file: Path, workers: int, timeout: float
) -> Callable[[Callable[[], bool]], dict[str, float]]:
    """Build an observer that connects once all workers joined, then shuts down."""

    def observe(launcher_exited: Callable[[], bool]) -> dict[str, float]:
        from distributed import Client

        deadline = time.monotonic() + timeout
        while True:
            try:
                if "address" in json.loads(scheduler_file.read_text()):
                    break
            except (FileNotFoundError, json.JSONDecodeError):
                pass
            if launcher_exited():
                raise RuntimeError("the launcher exited before writing "
                                   f"{scheduler_file}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{scheduler_file} not written in {timeout} s")
            time.sleep(0.005)

        remaining = max(1.0, deadline - time.monotonic())
        client = Client(scheduler_file=str(scheduler_file), timeout=remaining,
                        set_as_default=False)
        try:
            client.wait_for_workers(workers, timeout=max(1.0, deadline - time.monotonic()))
            ready = time.time()
            shutdown = time.time()
            client.shutdown()
        finally:
            client.close()
        return {"ready": ready, "shutdown": shutdown}

    return observe


def measure_cli(environment: Environment, ranks: int, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as directory:
        scheduler_file = Path(directory) / "scheduler.json"
        command = [environment.mpirun, "-np", str(ranks), environment.dask_mpi,
                   "--scheduler-file", str(scheduler_file)]
        observe = _cli_observer(scheduler_file, ranks - 1, timeout)
        result = _runner.run_job(command, timeout, environment.env(), observe)
    # A CLI job that ends on Client.shutdown() exits 0 in both packages.
    result.check()
    return {
        "wall": result.wall,
        "startup": result.observed["ready"] - result.launched,
        "exit": result.exited - result.observed["shutdown"],
        "leftovers": result.leftover_processes,
        "foreign": result.foreign_load,
    }


def measure_steady(
    environment: Environment, variant: str, tasks: int, size: int, timeout: float
) -> dict:
    arguments = [str(STEADY_SCRIPT)]
    if variant == "local":
        command = [environment.python, *arguments, "local", str(tasks), str(size)]
    else:
        kwargs = {"nthreads": 1}
        if variant == "ours-notls":
            kwargs["security"] = False
        command = [environment.mpirun, "-np", str(STEADY_RANKS), environment.python,
                   *arguments, "mpi", str(tasks), str(size), json.dumps(kwargs)]
    result = _runner.run_job(command, timeout, environment.env()).check()
    return {
        "tasks": result.result("tasks"),
        "array": result.result("array"),
        "leftovers": result.leftover_processes,
        "foreign": result.foreign_load,
    }


# ------------------------------------------------------------ plan and run


@dataclass(frozen=True)
class Run:
    """One job of the plan; repetition 0 is an unrecorded warm-up."""

    phase: str
    variant: str
    ranks: int
    repetition: int

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.phase, self.variant, self.ranks)


VARIANT_LABELS = {
    "floor": "floor (import only)",
    "ours": "ours (TLS, its default)",
    "ours-notls": "ours (security=False)",
    "established": "established",
    "local": "LocalCluster",
}


def build_plan(args: argparse.Namespace) -> list[Run]:
    """List every job in run order; repetitions are interleaved across variants."""
    batch_variants = ["ours", "ours-notls"]
    cli_variants = ["ours"]
    if args.established:
        batch_variants.append("established")
        cli_variants.append("established")
    first = 1 if args.no_warmup else 0
    plan: list[Run] = []

    if "batch" in args.phases:
        for repetition in range(first, args.reps + 1):
            sizes = args.batch_sizes[:1] if repetition == 0 else args.batch_sizes
            for ranks in sizes:
                plan.append(Run("floor", "floor", ranks, repetition))
                plan += [Run("batch", v, ranks, repetition) for v in batch_variants]
    if "cli" in args.phases:
        for repetition in range(first, args.reps + 1):
            sizes = args.cli_sizes[:1] if repetition == 0 else args.cli_sizes
            for ranks in sizes:
                plan += [Run("cli", v, ranks, repetition) for v in cli_variants]
    if "steady" in args.phases:
        for repetition in range(first, args.reps + 1):
            for variant in ("local", "ours", "ours-notls"):
                plan.append(Run("steady", variant, STEADY_RANKS, repetition))
    if "growth" in args.phases:
        for repetition in range(first, args.reps + 1):
            sizes = args.growth_sizes[:1] if repetition == 0 else args.growth_sizes
            for ranks in sizes:
                plan.append(Run("growth-floor", "floor", ranks, repetition))
                plan.append(Run(f"growth-{args.growth_job}", "ours", ranks, repetition))
    return plan


def execute(run: Run, args: argparse.Namespace, environments: dict) -> dict:
    """Run one job of the plan and return its figures in seconds."""
    ours = environments["ours"]
    environment = environments.get(run.variant, ours)
    if run.phase in ("floor", "growth-floor"):
        return measure_floor(ours, run.ranks, args.timeout)
    if run.phase in ("batch", "growth-batch"):
        kwargs = {"security": False} if run.variant == "ours-notls" else {}
        return measure_batch(environment, run.ranks, kwargs, args.timeout)
    if run.phase in ("cli", "growth-cli"):
        return measure_cli(environment, run.ranks, args.timeout)
    if run.phase == "steady":
        return measure_steady(ours, run.variant, args.steady_tasks, args.steady_size,
                              args.timeout)
    raise ValueError(f"invalid phase {run.phase!r}")


class Samples:
    """Figures of every recorded run, by (phase, variant, ranks) and figure name."""

    def __init__(self) -> None:
        self.values: dict[tuple, dict[str, list[float]]] = defaultdict(
            lambda: defaultdict(list))
        self.attempts: dict[tuple, int] = defaultdict(int)
        self.failures: dict[tuple, int] = defaultdict(int)

    def add(self, key: tuple, figures: dict) -> None:
        self.attempts[key] += 1
        for name, value in figures.items():
            self.values[key][name].append(value)

    def fail(self, key: tuple) -> None:
        self.attempts[key] += 1
        self.failures[key] += 1

    def summary(self, key: tuple, figure: str) -> Summary | None:
        return Summary.of(self.values.get(key, {}).get(figure, []))

    def median(self, key: tuple, figure: str) -> float | None:
        return median_of(self.summary(key, figure))

    def points(self, key_of: Callable[[int], tuple], sizes: list[int],
               figure: str) -> list[tuple[float, float]]:
        return [(ranks, value) for ranks in sizes
                for value in self.values.get(key_of(ranks), {}).get(figure, [])]

    def count(self, key: tuple) -> str:
        """Format successful runs over attempts, e.g. ``5/5``."""
        attempts = self.attempts.get(key, 0)
        return f"{attempts - self.failures.get(key, 0)}/{attempts}"

    def all_values(self, figure: str) -> list[float]:
        return [value for figures in self.values.values()
                for value in figures.get(figure, [])]

    def to_json(self) -> dict:
        """Return the samples as JSON-ready data, keyed ``phase|variant|ranks``."""

        def name(key: tuple) -> str:
            return "|".join(map(str, key))

        return {
            "values": {name(key): dict(figures) for key, figures in self.values.items()},
            "attempts": {name(key): count for key, count in self.attempts.items()},
            "failures": {name(key): count for key, count in self.failures.items()},
        }

    @classmethod
    def from_json(cls, data: dict) -> Samples:
        """Rebuild samples written by :meth:`to_json`."""

        def key(name: str) -> tuple:
            phase, variant, ranks = name.split("|")
            return (phase, variant, int(ranks))

        samples = cls()
        for name, figures in data["values"].items():
            for figure, values in figures.items():
                samples.values[key(name)][figure] = list(values)
        samples.attempts.update({key(n): c for n, c in data["attempts"].items()})
        samples.failures.update({key(n): c for n, c in data["failures"].items()})
        return samples

    def leftovers(self) -> int:
        return int(sum(sum(figures.get("leftovers", [])) for figures in
                       self.values.values()))


def run_when_quiet(run: Run, label: str, args: argparse.Namespace,
                   environments: dict) -> dict | None:
    """Run one job on a quiet machine; return its figures, or None if it failed.

    Before each try this waits up to ``--idle-timeout`` s for other processes
    to use at most ``--max-load`` cores. A job during which they used more is
    run again, up to ``--load-retries`` times, and the last try is kept.
    """
    for attempt in range(args.load_retries + 1):
        if args.idle_timeout > 0:
            load = _runner.wait_for_idle(args.max_load, 0.5, args.idle_timeout)
            if load > args.max_load:
                progress(f"{label}: the machine is still busy ({load:.2f} cores) "
                         f"after {args.idle_timeout:.0f} s; running anyway")
        try:
            figures = execute(run, args, environments)
        except (_runner.JobFailed, subprocess.SubprocessError, OSError) as error:
            progress(f"{label}: FAILED\n{error}")
            return None
        if figures["foreign"] <= args.max_load or attempt == args.load_retries:
            return figures
        progress(f"{label}: other processes used {figures['foreign']:.2f} cores "
                 "during the job; running it again")
    raise AssertionError("unreachable")


def run_plan(
    plan: list[Run],
    args: argparse.Namespace,
    environments: dict,
    save: Callable[[Samples, int], None],
) -> Samples:
    """Run every job of ``plan``; ``save`` gets the samples after each job."""
    samples = Samples()
    for index, run in enumerate(plan, start=1):
        label = (f"[{index}/{len(plan)}] {run.phase} {run.variant} N={run.ranks} "
                 f"{'warm-up' if run.repetition == 0 else f'rep {run.repetition}'}")
        figures = run_when_quiet(run, label, args, environments)
        if figures is None:
            if run.repetition:
                samples.fail(run.key)
            save(samples, index)
            continue
        figures_text = ", ".join(f"{name} {value:.2f}" for name, value in
                                 figures.items() if name != "leftovers")
        progress(f"{label}: {figures_text}")
        if figures.get("leftovers"):
            progress(f"{label}: {figures['leftovers']} process(es) outlived the "
                     "launcher and were killed")
        if run.repetition:
            samples.add(run.key, figures)
        save(samples, index)
    return samples


# ------------------------------------------------------------ report


def floor_table(samples: Samples, sizes: list[int]) -> str:
    rows = []
    for ranks in sizes:
        key = ("floor", "floor", ranks)
        rows.append([str(ranks), cell(samples.summary(key, "wall")),
                     cell(samples.summary(key, "startup")),
                     cell(samples.summary(key, "exit")), samples.count(key)])
    return table(["N", "wall time", "launch → last rank imported",
                  "last stamp → launcher exit", "runs ok"], rows)


def _with_ratio(summary: Summary | None, reference: float | None) -> str:
    if reference is None:
        return cell(summary)
    return f"{cell(summary)} {ratio_cell(ratio(median_of(summary), reference))}"


def batch_table(samples: Samples, sizes: list[int], variants: list[str]) -> str:
    rows = []
    for ranks in sizes:
        floor_wall = samples.median(("floor", "floor", ranks), "wall")
        reference_key = ("batch", "established", ranks)
        reference_over = _over(samples.median(reference_key, "wall"), floor_wall)
        for variant in variants:
            key = ("batch", variant, ranks)
            compare = variant != "established" and reference_key in samples.attempts
            figures = []
            for figure in ("startup", "exit", "wall"):
                reference = samples.median(reference_key, figure) if compare else None
                figures.append(_with_ratio(samples.summary(key, figure), reference))
            over = _over(samples.median(key, "wall"), floor_wall)
            over_cell = "n/a" if over is None else f"{over:.2f} s"
            if compare and over is not None:
                over_cell += f" {ratio_cell(ratio(over, reference_over))}"
            rows.append([str(ranks), VARIANT_LABELS[variant], *figures, over_cell,
                         samples.count(key)])
    return table(["N", "package", "launch → first result", "client end → launcher exit",
                  "wall time", "wall time over floor (medians)", "runs ok"], rows)


def _over(value: float | None, floor: float | None) -> float | None:
    return None if value is None or floor is None else value - floor


def cli_table(samples: Samples, sizes: list[int], variants: list[str]) -> str:
    rows = []
    for ranks in sizes:
        reference_key = ("cli", "established", ranks)
        for variant in variants:
            key = ("cli", variant, ranks)
            compare = variant != "established" and reference_key in samples.attempts
            figures = []
            for figure in ("startup", "exit"):
                reference = samples.median(reference_key, figure) if compare else None
                figures.append(_with_ratio(samples.summary(key, figure), reference))
            label = "ours" if variant == "ours" else VARIANT_LABELS[variant]
            rows.append([str(ranks), label, *figures, samples.count(key)])
    return table(["N", "package", "launch → client sees N-1 workers",
                  "Client.shutdown() → launcher exit", "runs ok"], rows)


def steady_table(samples: Samples, tasks: int, size: int) -> str:
    local = ("steady", "local", STEADY_RANKS)
    rows = []
    for variant in ("local", "ours", "ours-notls"):
        key = ("steady", variant, STEADY_RANKS)
        row = [VARIANT_LABELS[variant]]
        for figure in ("tasks", "array"):
            summary = samples.summary(key, figure)
            speed = ratio(samples.median(local, figure), median_of(summary))
            row += [cell(summary), "1.00" if variant == "local" else
                    ratio_cell(speed).lstrip("×")]
        row.append(samples.count(key))
        rows.append(row)
    return table(["cluster", f"{tasks:,} tiny tasks", "throughput vs LocalCluster",
                  f"({size}×{size} random + transpose).sum()",
                  "throughput vs LocalCluster", "runs ok"], rows)


def growth_figures(samples: Samples, args: argparse.Namespace) -> dict:
    sizes = args.growth_sizes
    phase = f"growth-{args.growth_job}"

    def floor(ranks: int) -> tuple:
        return ("growth-floor", "floor", ranks)

    def job(ranks: int) -> tuple:
        return (phase, "ours", ranks)

    return {
        "floor_startup": slope(samples.points(floor, sizes, "startup")),
        "floor_wall": slope(samples.points(floor, sizes, "wall")),
        "job_startup": slope(samples.points(job, sizes, "startup")),
        "job_wall": slope(samples.points(job, sizes, "wall")),
    }


def growth_table(samples: Samples, args: argparse.Namespace) -> str:
    phase = f"growth-{args.growth_job}"
    startup_name = ("launch → first result" if args.growth_job == "batch"
                    else "launch → client sees N-1 workers")
    rows = []
    for ranks in args.growth_sizes:
        floor = ("growth-floor", "floor", ranks)
        job = (phase, "ours", ranks)
        rows.append([str(ranks), cell(samples.summary(floor, "startup")),
                     cell(samples.summary(job, "startup")),
                     cell(samples.summary(floor, "wall")),
                     cell(samples.summary(job, "wall")), samples.count(job)])
    slopes = growth_figures(samples, args)

    def per_rank(value: float | None) -> str:
        return "n/a" if value is None else f"**{value * 1000:.0f} ms/rank**"

    rows.append([
        "slope", per_rank(slopes["floor_startup"]),
        (f"{per_rank(slopes['job_startup'])} "
         f"{ratio_cell(ratio(slopes['job_startup'], slopes['floor_startup']))}"),
        per_rank(slopes["floor_wall"]),
        (f"{per_rank(slopes['job_wall'])} "
         f"{ratio_cell(ratio(slopes['job_wall'], slopes['floor_wall']))}"),
        "",
    ])
    return table(["N", "floor: launch → last rank imported",
                  f"{args.growth_job} job: {startup_name}", "floor: wall time",
                  f"{args.growth_job} job: wall time", "runs ok"], rows)


def _verdict(passed: bool | None) -> str:
    if passed is None:
        return "not measured"
    if passed:
        return "pass"
    return "**FAIL**"


def target_rows(samples: Samples, args: argparse.Namespace) -> list[list[str]]:
    rows = []
    if "batch" in args.phases:
        for ranks in (4, 8):
            if ranks not in args.batch_sizes:
                continue
            floor = samples.median(("floor", "floor", ranks), "wall")
            ours = _over(samples.median(("batch", "ours", ranks), "wall"), floor)
            theirs = _over(samples.median(("batch", "established", ranks), "wall"),
                           floor)
            # Compared as ours <= 0.8 x theirs, not as a ratio, because the
            # established job can end within the floor's time (theirs <= 0).
            passed = None
            measured = "n/a"
            if ours is not None and theirs is not None:
                passed = ours <= TARGET_COST_OVER_FLOOR * theirs
                shown = (ratio_cell(ratio(ours, theirs)) if theirs > 0 else
                         "established at or below the floor")
                measured = f"{ours:.2f} s vs {theirs:.2f} s: {shown}"
            rows.append([f"batch job wall time over floor, N={ranks}",
                         f"≤ {TARGET_COST_OVER_FLOOR}× established", measured,
                         _verdict(passed)])
        for ranks in args.batch_sizes:
            floor_exit = samples.median(("floor", "floor", ranks), "exit")
            ours = samples.median(("batch", "ours", ranks), "exit")
            known = ours is not None and floor_exit is not None
            limit = "n/a" if floor_exit is None else (
                f"≤ {floor_exit + TARGET_EXIT_OVER_FLOOR:.2f} s "
                f"(floor exit {floor_exit:.2f} + {TARGET_EXIT_OVER_FLOOR})")
            rows.append([f"batch client end → launcher exit, N={ranks}", limit,
                         "n/a" if ours is None else f"{ours:.2f} s",
                         _verdict(ours <= floor_exit + TARGET_EXIT_OVER_FLOOR
                                  if known else None)])
    if "cli" in args.phases:
        for ranks in args.cli_sizes:
            ours = samples.median(("cli", "ours", ranks), "exit")
            rows.append([f"CLI Client.shutdown() → launcher exit, N={ranks}",
                         f"≤ {TARGET_CLI_SHUTDOWN} s",
                         "n/a" if ours is None else f"{ours:.2f} s",
                         _verdict(None if ours is None else
                                  ours <= TARGET_CLI_SHUTDOWN)])
    if "steady" in args.phases:
        local = ("steady", "local", STEADY_RANKS)
        for variant in ("ours", "ours-notls"):
            for figure, name in (("tasks", "tiny tasks"), ("array", "array reduction")):
                speed = ratio(samples.median(local, figure),
                              samples.median(("steady", variant, STEADY_RANKS), figure))
                rows.append([f"steady state {name}, {VARIANT_LABELS[variant]}",
                             f"≥ {TARGET_STEADY_STATE}× LocalCluster",
                             ratio_cell(speed),
                             _verdict(None if speed is None else
                                      speed >= TARGET_STEADY_STATE)])
    if "growth" in args.phases:
        slopes = growth_figures(samples, args)
        value = ratio(slopes["job_startup"], slopes["floor_startup"])
        measured = "n/a" if value is None else (
            f"{slopes['job_startup'] * 1000:.0f} vs "
            f"{slopes['floor_startup'] * 1000:.0f} ms/rank: {ratio_cell(value)}")
        rows.append([f"start-up cost per extra rank ({args.growth_job} job)",
                     f"≤ {TARGET_RANK_SLOPE}× floor's", measured,
                     _verdict(None if value is None else value <= TARGET_RANK_SLOPE)])
    return rows


def _section(title: str, text: str, body: str) -> str:
    return f"\n### {title}\n\n{text}\n\n{body}"


def build_report(samples: Samples, args: argparse.Namespace,
                 machine: list[tuple[str, str]], argv: list[str],
                 elapsed: float, origins: list[str] | None = None) -> str:
    variants = ["ours", "ours-notls"] + (["established"] if args.established else [])
    cli_variants = ["ours"] + (["established"] if args.established else [])
    command = " ".join(["python", "bench/startup.py", *argv])
    warmup = (
        "No unrecorded warm-up run came first (--no-warmup or --quick)."
        if args.no_warmup
        else "One unrecorded warm-up run of each kind comes first."
    )
    if origins:
        written = (
            "Rebuilt from the saved figures of these runs, each inside "
            "`unshare -n` with only the loopback interface up:\n\n"
            + "\n".join(f"- {origin}." for origin in origins) + "\n\n"
        )
    else:
        written = (
            f"Written by `{command}` (run inside `unshare -n` with only the "
            f"loopback interface up) in {elapsed / 60:.1f} minutes."
        )
    introduction = (
        f"{written}{'' if origins else ' '}Each cell is the median of the "
        "recorded runs (`runs ok`), "
        "with the minimum and maximum in brackets. A `×` figure is the ratio "
        "of medians to the established package's from the same run; for "
        "steady state it is LocalCluster's time over ours, so above 1 means "
        "faster. Times are `time.time()` stamps: launch is taken just before the "
        "launcher starts, launcher exit when `waitpid` returns, and the other "
        f"stamps are printed by the job (see `bench/jobs/`). {warmup}"
    )
    leftovers = (
        f"Processes that outlived their launcher (killed after "
        f"{_runner.EXIT_GRACE:.0f} s): {samples.leftovers()}."
    )
    machine_table = table(["", ""], [[name, value] for name, value in machine])
    parts = [
        "## Start-up, shutdown and steady state\n\n" + introduction,
        _section("Machine", machine_table,
                 leftovers + "\n\n" + load_sentence(samples, args, bool(origins))),
    ]
    if "batch" in args.phases:
        parts.append(_section(
            'Floor: `mpirun -np N python -c "import distributed, mpi4py.MPI"`',
            "The job prints a stamp after the imports on every rank; start-up "
            "and exit are measured from the last rank's. These runs alternate "
            "with the batch jobs; the growth section has floor runs of its own.",
            floor_table(samples, args.batch_sizes),
        ))
    if "batch" in args.phases:
        parts.append(_section(
            "Tiny batch job",
            "`initialize()`, `Client()`, one task (`bench/jobs/batch_tiny.py`). "
            "Client end is the script's last statement, after `client.close()`. "
            "Wall time over floor is the job's median wall time less the "
            "floor's at the same N.",
            batch_table(samples, args.batch_sizes, variants),
        ))
    if "cli" in args.phases:
        parts.append(_section(
            "`dask-mpi` command",
            "`mpirun -np N dask-mpi --scheduler-file F` with default options; "
            "the benchmark process connects as the outside client.",
            cli_table(samples, args.cli_sizes, cli_variants),
        ))
    if "steady" in args.phases:
        parts.append(_section(
            "Steady state",
            f"`mpirun -np {STEADY_RANKS}` with `initialize(nthreads=1)`: 4 "
            "workers of 1 thread, the scheduler and the client in processes of "
            "their own. LocalCluster runs its scheduler in the client's process "
            "and its 4 workers under nannies. Each job warms up first; only the "
            "timed calls count, and the array figure is the median of 3 "
            "reductions within the job.",
            steady_table(samples, args.steady_tasks, args.steady_size),
        ))
    if "growth" in args.phases:
        parts.append(_section(
            "Start-up growth",
            f"Ranks oversubscribe the {os.cpu_count()} cores. The slope is a "
            "least-squares fit over every run, in milliseconds per extra rank, "
            "with its ratio to the floor's slope.",
            growth_table(samples, args),
        ))
    targets = table(["target", "limit", "measured", "result"],
                    target_rows(samples, args))
    parts.append(_section("Targets", "Reported, not asserted; medians.", targets))
    return "\n".join(parts) + "\n"


def load_policy(settings: argparse.Namespace | dict) -> str:
    """Describe how a run waited for a quiet machine."""
    if isinstance(settings, dict):
        settings = argparse.Namespace(**settings)
    waited = (f"each job waited for other processes to use at most "
              f"{settings.max_load} cores")
    if settings.load_retries == 0:
        return f"{waited}, and no job ran again"
    return (
        f"{waited} and ran again, up to {settings.load_retries} times, when "
        "they used more during it"
    )


def load_sentence(samples: Samples, args: argparse.Namespace,
                  merged: bool = False) -> str:
    """Describe how busy other processes kept the machine during the jobs."""
    loads = samples.all_values("foreign")
    if not loads:
        return "No job succeeded, so no load of other processes was recorded."
    summary = Summary.of(loads)
    busy = sum(load > args.max_load for load in loads)
    sentence = (
        "Other processes on the machine (from `/proc/stat` less the jobs' own "
        f"CPU time) kept {summary.median:.2f} cores busy on median during the "
        f"recorded jobs, at most {summary.maximum:.2f}; {busy} of {len(loads)} "
        f"recorded jobs saw more than {args.max_load} cores."
    )
    if merged:
        return sentence
    return f"{sentence} In this run {load_policy(args)}."


def write_report(path: Path, report: str) -> None:
    """Write ``report`` into ``path`` between this script's markers.

    Text outside the markers, such as notes or other scripts' sections, is
    kept. A file without the markers gets the section after its title.
    """
    section = f"{BEGIN_MARK}\n{report.rstrip()}\n{END_MARK}\n"
    text = path.read_text() if path.exists() else f"{PAGE_TITLE}\n"
    if BEGIN_MARK in text and END_MARK in text:
        before, _, rest = text.partition(BEGIN_MARK)
        _, _, after = rest.partition(END_MARK)
        after = after.lstrip("\n")
        text = before + section + (f"\n{after}" if after else "")
    elif text.startswith("# "):
        title, _, rest = text.partition("\n")
        text = f"{title}\n\n{section}" + (f"\n{rest.lstrip()}" if rest.strip() else "")
    else:
        text = f"{PAGE_TITLE}\n\n{section}" + (f"\n{text}" if text.strip() else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)


# ------------------------------------------------------------ command line


def sizes(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid size list {text!r}: expected integers separated by commas"
        ) from None
    if not values or min(values) < 2:
        raise argparse.ArgumentTypeError(
            f"invalid size list {text!r}: expected rank counts of at least 2")
    return values


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark dask-mpi's start-up, shutdown and steady state "
        "against the floor (mpirun and the imports), the established dask-mpi "
        "package and LocalCluster. Run inside `unshare -n` (see the docstring).")
    parser.add_argument("--reps", type=int, help="Recorded repetitions of each "
                        "figure (default 5, 1 with --quick).")
    parser.add_argument("--quick", action="store_true", help="Smoke test: 1 "
                        "repetition, no warm-up, the smallest sizes and a smaller "
                        "steady-state load.")
    parser.add_argument("--batch-sizes", type=sizes, help="Ranks of the tiny batch "
                        "job and its floor (default 3,4,6,8; --quick: 3). Minimum 3.")
    parser.add_argument("--cli-sizes", type=sizes, help="Ranks of the dask-mpi "
                        "command (default 4,8; --quick: 4).")
    parser.add_argument("--growth-sizes", type=sizes, help="Ranks of the growth "
                        "fit (default 3,4,8,16,24,32 for the batch job and "
                        "2,4,8,16,24,32 for the CLI; --quick: up to 8).")
    parser.add_argument("--growth-job", choices=("batch", "cli"), default="batch",
                        help="Job whose start-up growth is fitted (default batch).")
    parser.add_argument("--steady-tasks", type=positive_int, help="Tiny tasks in the steady "
                        "state (default 20000; --quick: 2000).")
    parser.add_argument("--steady-size", type=positive_int, help="Side of the square random "
                        "array in the steady state (default 4000; --quick: 1000).")
    parser.add_argument("--phases", default="batch,cli,steady,growth",
                        help="Comma-separated phases to run (default "
                        "batch,cli,steady,growth).")
    parser.add_argument("--no-established", dest="established",
                        action="store_false", help="Leave out the established "
                        "package and its virtual environment.")
    parser.add_argument("--established-version", default=ESTABLISHED_VERSION,
                        help=f"dask-mpi version from PyPI to compare with (default "
                        f"{ESTABLISHED_VERSION}).")
    parser.add_argument("--established-venv", type=Path,
                        default=DEFAULT_ESTABLISHED_VENV, help="Virtual environment "
                        "of the established package; created if missing (default "
                        "bench/.venv-established).")
    parser.add_argument("--prepare-only", action="store_true", help="Create or "
                        "check the established package's virtual environment, "
                        "which needs the network, and run no job.")
    parser.add_argument("--no-warmup", action="store_true", help="Skip the "
                        "unrecorded warm-up runs (implied by --quick).")
    parser.add_argument("--max-load", type=float, default=0.3, help="Cores that "
                        "other processes may keep busy before and during a job "
                        "(default 0.3).")
    parser.add_argument("--idle-timeout", type=float, help="Seconds to wait for "
                        "the machine to fall to --max-load before each job; 0 "
                        "skips the wait (default 120; --quick: 0).")
    parser.add_argument("--load-retries", type=non_negative_int, help="Extra runs of a job "
                        "during which other processes exceeded --max-load "
                        "(default 2; --quick: 0).")
    parser.add_argument("--timeout", type=positive_seconds, default=180.0, help="Seconds "
                        "before one job's processes are killed (default 180).")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help="Markdown file for the tables (default "
                        "docs/benchmarks.md).")
    parser.add_argument("--raw", type=Path, default=DEFAULT_RAW, help="JSON file "
                        "for every recorded figure and the machine description "
                        "(default bench/results/last-run.json).")
    parser.add_argument("--report-from", nargs="+", metavar="PATH[:PHASES]",
                        help="Rebuild --output from JSON files of --raw figures "
                        "and run no job. PHASES (comma-separated) picks the "
                        "phases taken from that file; a later file wins.")
    args = parser.parse_args(argv)

    phases = [phase.strip() for phase in args.phases.split(",") if phase.strip()]
    unknown = set(phases) - {"batch", "cli", "steady", "growth"}
    if unknown or not phases:
        parser.error(f"invalid --phases {args.phases!r}: expected a comma-separated "
                     "subset of batch,cli,steady,growth")
    args.phases = phases

    quick = args.quick
    if args.reps is None:
        args.reps = 1 if quick else 5
    if args.reps < 1:
        parser.error(f"invalid --reps {args.reps}: expected at least 1")
    args.no_warmup = args.no_warmup or quick
    if args.batch_sizes is None:
        args.batch_sizes = [3] if quick else [3, 4, 6, 8]
    if min(args.batch_sizes) < 3:
        parser.error(f"invalid --batch-sizes {args.batch_sizes}: initialize() needs "
                     "at least 3 ranks (scheduler, client, worker)")
    if args.cli_sizes is None:
        args.cli_sizes = [4] if quick else [4, 8]
    if args.growth_sizes is None:
        smallest = 3 if args.growth_job == "batch" else 2
        args.growth_sizes = [smallest, 4, 6] if quick else [smallest, 4, 8, 16, 24, 32]
    if args.growth_job == "batch" and min(args.growth_sizes) < 3:
        parser.error(f"invalid --growth-sizes {args.growth_sizes}: the batch job "
                     "needs at least 3 ranks; use --growth-job cli for 2")
    if len(set(args.growth_sizes)) < 2 and "growth" in args.phases:
        parser.error("invalid --growth-sizes: a slope needs at least 2 sizes")
    if args.idle_timeout is None:
        args.idle_timeout = 0.0 if quick else 120.0
    if args.load_retries is None:
        args.load_retries = 0 if quick else 2
    if args.steady_tasks is None:
        args.steady_tasks = 2000 if quick else 20_000
    if args.steady_size is None:
        args.steady_size = 1000 if quick else 4000
    return args


# Settings that the report needs, kept in the raw record for --report-from.
REPORT_SETTINGS = (
    "reps", "phases", "batch_sizes", "cli_sizes", "growth_sizes", "growth_job",
    "steady_tasks", "steady_size", "established", "no_warmup", "max_load",
    "load_retries",
)


# Sample key phases and settings that belong to each phase of the plan.
PHASE_KEYS = {
    "batch": ("floor", "batch"),
    "cli": ("cli",),
    "steady": ("steady",),
    "growth": ("growth-floor", "growth-batch", "growth-cli"),
}
PHASE_SETTINGS = {
    "batch": ("batch_sizes", "established"),
    "cli": ("cli_sizes", "established"),
    "steady": ("steady_tasks", "steady_size"),
    "growth": ("growth_sizes", "growth_job"),
}


def _describe_record(record: dict, phases: list[str]) -> str:
    facts = dict(record["machine"])
    command = " ".join(["python", "bench/startup.py", *record["argv"]])
    done, planned = record.get("jobs_done"), record.get("jobs_planned")
    stopped = ""
    if done is not None and done < planned:
        stopped = f", stopped after {done} of {planned} jobs"
    return (
        f"{', '.join(phases)}: `{command}`, saved {facts.get('date')}, "
        f"{record['settings']['reps']} repetitions{stopped}, dask-mpi "
        f"{facts.get('dask-mpi (this repository)', 'unknown')}. There "
        f"{load_policy(record['settings'])}"
    )


def report_from(sources: list[str], output: Path) -> int:
    """Rebuild the report from raw records, without running any job.

    Each source is ``PATH`` or ``PATH:PHASES``. With several sources, each
    phase's figures and settings come from the last source that names it.
    """
    selected: dict[str, tuple[dict, Path]] = {}
    records = []
    for source in sources:
        path_text, _, phase_text = source.partition(":")
        try:
            record = json.loads(Path(path_text).read_text())
        except (OSError, ValueError) as error:
            raise SystemExit(
                f"startup.py: invalid --report-from {path_text!r}: {error}; give "
                "a JSON file that --raw wrote"
            ) from None
        phases = [p for p in phase_text.split(",") if p] or record["settings"]["phases"]
        unknown = set(phases) - PHASE_KEYS.keys()
        if unknown:
            raise SystemExit(f"startup.py: invalid phases {sorted(unknown)} in "
                             f"{source!r}: expected some of {', '.join(PHASE_KEYS)}")
        records.append((record, path_text))
        for phase in phases:
            selected[phase] = (record, Path(path_text))

    last_record = records[-1][0]
    settings = dict(last_record["settings"])
    settings["phases"] = [p for p in PHASE_KEYS if p in selected]
    settings["established"] = False
    samples = Samples()
    for phase, (record, _) in selected.items():
        for name in PHASE_SETTINGS[phase]:
            if name == "established":
                settings[name] = settings[name] or record["settings"][name]
            else:
                settings[name] = record["settings"][name]
        part = Samples.from_json(record["samples"])
        for key in set(part.attempts) | set(part.values):
            if key[0] in PHASE_KEYS[phase]:
                samples.attempts[key] = part.attempts.get(key, 0)
                samples.failures[key] = part.failures.get(key, 0)
                samples.values[key] = part.values[key]
    args = argparse.Namespace(**settings)

    by_record: dict[int, list[str]] = defaultdict(list)
    for phase, (record, _) in selected.items():
        by_record[id(record)].append(phase)
    origins = [_describe_record(record, by_record[id(record)])
               for record, _ in records if id(record) in by_record]
    machine = [tuple(fact) for fact in last_record["machine"]]
    report = build_report(samples, args, machine, last_record["argv"],
                          last_record["elapsed"], origins=origins)
    print(report)
    write_report(output, report)
    progress(f"wrote {output} from {', '.join(sources)}")
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # SystemExit lets the running job's cleanup kill its ranks.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.report_from is not None:
        return report_from(args.report_from, args.output)

    # pip needs the network, so the established environment is prepared
    # before this process enters a loopback-only namespace.
    problem = _runner.namespace_problem()
    established_venv = None
    if args.established and ({"batch", "cli"} & set(args.phases)):
        established_venv = established_environment(
            args.established_venv.resolve(), args.established_version,
            offline=problem is None)
    if args.prepare_only:
        return 0
    if problem is not None:
        if os.geteuid() != 0:
            raise SystemExit(
                f"startup.py: not in a loopback-only network namespace ({problem}). "
                "Run it as: unshare -n bash -c 'ip link set lo up; python "
                "bench/startup.py ...' (needs root)")
        progress(f"{problem}; re-executing under unshare -n")
        _runner.reexec_in_namespace([sys.executable, str(Path(__file__).resolve()),
                                     *argv])

    environments = {"ours": own_environment()}
    compiled = _runner.byte_compile(environments["ours"].python)
    progress(f"wrote the bytecode of {compiled}")
    if established_venv is not None:
        environments["established"] = established_venv
    else:
        args.established = False

    plan = build_plan(args)
    progress(f"{len(plan)} jobs planned")
    commit_at_start = _report.git_commit(REPOSITORY)
    established = established_description(environments.get("established"))
    started = time.monotonic()

    def save(samples: Samples, jobs_done: int) -> None:
        # Written after every job, so that a run stopped early keeps its figures.
        record = {
            "argv": argv,
            "elapsed": time.monotonic() - started,
            "jobs_done": jobs_done,
            "jobs_planned": len(plan),
            "machine": _report.machine_description(
                REPOSITORY, established, commit_at_start),
            "settings": {name: getattr(args, name) for name in REPORT_SETTINGS},
            "samples": samples.to_json(),
        }
        args.raw.parent.mkdir(parents=True, exist_ok=True)
        temporary = args.raw.with_name(args.raw.name + ".tmp")
        temporary.write_text(json.dumps(record, indent=1) + "\n")
        temporary.replace(args.raw)

    samples = run_plan(plan, args, environments, save)
    elapsed = time.monotonic() - started
    progress(f"wrote the raw figures to {args.raw}")
    machine = _report.machine_description(REPOSITORY, established, commit_at_start)

    report = build_report(samples, args, machine, argv, elapsed)
    print(report)
    write_report(args.output, report)
    progress(f"wrote {args.output}")
    failed = sum(samples.failures.values())
    if failed:
        progress(f"{failed} recorded job(s) failed; see the messages above")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
