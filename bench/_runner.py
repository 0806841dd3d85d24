"""Run benchmark jobs as process groups with a timeout, and check the namespace.

Every job starts in a new session, so the launcher leads its own process
group. MPICH 5.0's Hydra gives every rank a session of its own, so each job
also exports a unique ``DASK_MPI_BENCH_JOB`` variable and cleanup finds the
ranks by that variable in ``/proc/PID/environ`` as well as by process group.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

JOB_TAG_VARIABLE = "DASK_MPI_BENCH_JOB"

# Seconds between SIGTERM and SIGKILL when a job is killed.
KILL_GRACE = 5.0
# Seconds that ranks may take to exit after the launcher itself has exited.
EXIT_GRACE = 5.0

# Lines that jobs print: "BENCH-STAMP NAME UNIX_TIME" for a moment and
# "BENCH-RESULT NAME SECONDS" for a duration measured inside the job.
STAMP_LINE = re.compile(r"^BENCH-STAMP (\S+) ([0-9.]+)$", re.MULTILINE)
RESULT_LINE = re.compile(r"^BENCH-RESULT (\S+) ([0-9.]+)$", re.MULTILINE)


class JobFailed(RuntimeError):
    """A benchmark job exited non-zero, timed out or printed no stamp."""


@dataclass
class JobResult:
    """Outcome of one job, with ``time.time()`` stamps of launch and exit."""

    command: list[str]
    launched: float
    exited: float
    returncode: int | None
    stdout: str
    stderr: str
    # True when the job ran past its timeout or the observer failed, and the
    # job was killed.
    killed: bool
    # Processes of the job still alive EXIT_GRACE seconds after the launcher
    # exited; they were killed.
    leftover_processes: int
    observed: dict[str, float] = field(default_factory=dict)
    # The exception that the observer raised; the job was then killed.
    observer_error: str | None = None
    # CPU seconds of the job's processes (reaped descendants included) and of
    # the whole machine, from launch to launcher exit.
    job_cpu: float = 0.0
    machine_cpu: float = 0.0

    @property
    def foreign_load(self) -> float:
        """Cores kept busy by other processes while the job ran, on average."""
        if self.wall <= 0:
            return 0.0
        return max(0.0, self.machine_cpu - self.job_cpu) / self.wall

    @property
    def wall(self) -> float:
        """Seconds from launch to launcher exit."""
        return self.exited - self.launched

    def stamps(self, name: str) -> list[float]:
        """Return the times of every ``BENCH-STAMP name`` line, in print order."""
        return [float(t) for n, t in STAMP_LINE.findall(self.stdout) if n == name]

    def last_stamp(self, name: str) -> float:
        """Return the latest ``name`` stamp of any rank, or raise JobFailed."""
        found = self.stamps(name)
        if not found:
            raise JobFailed(f"no BENCH-STAMP {name} line\n{self.describe()}")
        return max(found)

    def result(self, name: str) -> float:
        """Return the duration printed as ``BENCH-RESULT name``."""
        for found, seconds in RESULT_LINE.findall(self.stdout):
            if found == name:
                return float(seconds)
        raise JobFailed(f"no BENCH-RESULT {name} line\n{self.describe()}")

    def describe(self, tail: int = 3000) -> str:
        """Describe the command, exit status and the end of both streams."""
        return (
            f"command: {' '.join(self.command)}\n"
            f"returncode: {self.returncode}, wall: {self.wall:.2f} s, "
            f"killed: {self.killed}, observer error: {self.observer_error}\n"
            f"----- stdout (last {tail} characters) -----\n{self.stdout[-tail:]}\n"
            f"----- stderr (last {tail} characters) -----\n{self.stderr[-tail:]}"
        )

    def check(self) -> JobResult:
        """Return self, or raise JobFailed if the job failed or was killed."""
        if self.killed or self.observer_error or self.returncode != 0:
            raise JobFailed(self.describe())
        return self


def _tagged_processes(pgid: int, tag: str) -> list[int]:
    """Find live processes in process group or session ``pgid`` or tagged ``tag``."""
    entry = f"{JOB_TAG_VARIABLE}={tag}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        proc = Path("/proc", name)
        try:
            stat = (proc / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] == "Z":
                continue
            if pgid in (int(fields[2]), int(fields[3])):
                found.append(int(name))
                continue
            if entry in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(name))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


def _signal_job(pgid: int, tag: str, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    for pid in _tagged_processes(pgid, tag):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _wait_until_gone(pgid: int, tag: str, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        remaining = _tagged_processes(pgid, tag)
        if not remaining or time.monotonic() >= deadline:
            return remaining
        time.sleep(0.05)


def run_job(
    command: Sequence[str],
    timeout: float,
    env: Mapping[str, str],
    observe: Callable[[Callable[[], bool]], dict[str, float]] | None = None,
) -> JobResult:
    """Run ``command`` to its end, killing its process group after ``timeout`` s.

    A thread blocks in ``waitpid``, so the exit time is taken within
    microseconds of the launcher's exit, not at a polling interval.
    ``observe``, if given, runs in this thread while the job runs. It gets a
    function that returns whether the launcher has exited, and it returns
    named ``time.time()`` stamps, which land in ``JobResult.observed``.
    """
    tag = uuid.uuid4().hex
    environment = dict(env)
    environment[JOB_TAG_VARIABLE] = tag
    exit_time: list[float] = []

    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        machine_before = machine_cpu_seconds()
        own_before = _own_cpu_seconds()
        launched = time.time()
        popen = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=environment,
            start_new_session=True,
        )

        job_cpu: list[float] = []

        def wait_for_exit() -> None:
            # wait4 instead of Popen.wait, for the rusage of the launcher and
            # of every descendant it reaped.
            _, status, usage = os.wait4(popen.pid, 0)
            exit_time.append(time.time())
            popen.returncode = os.waitstatus_to_exitcode(status)
            job_cpu.append(usage.ru_utime + usage.ru_stime)

        waiter = threading.Thread(target=wait_for_exit, daemon=True)
        waiter.start()
        observed: dict[str, float] = {}
        observer_error = None
        try:
            try:
                if observe is not None:
                    observed = observe(lambda: bool(exit_time))
            except Exception as error:  # noqa: BLE001 - reported in the result
                observer_error = f"{type(error).__name__}: {error}"
            if observer_error is None:
                waiter.join(max(0.0, launched + timeout - time.time()))
        except BaseException:
            # KeyboardInterrupt or SystemExit from a signal handler: leave no
            # rank behind.
            _signal_job(popen.pid, tag, signal.SIGKILL)
            raise
        killed = waiter.is_alive()
        if killed:
            _signal_job(popen.pid, tag, signal.SIGTERM)
            if _wait_until_gone(popen.pid, tag, KILL_GRACE):
                _signal_job(popen.pid, tag, signal.SIGKILL)
            waiter.join()

        machine_cpu = machine_cpu_seconds() - machine_before
        # The observer's work in this process, such as the outside client,
        # belongs to the job too.
        own_cpu = _own_cpu_seconds() - own_before
        leftover = _wait_until_gone(popen.pid, tag, EXIT_GRACE)
        if leftover:
            _signal_job(popen.pid, tag, signal.SIGKILL)
            _wait_until_gone(popen.pid, tag, KILL_GRACE)

        stdout.seek(0)
        stderr.seek(0)
        return JobResult(
            command=list(command),
            launched=launched,
            exited=exit_time[0],
            returncode=popen.returncode,
            stdout=stdout.read().decode(errors="replace"),
            stderr=stderr.read().decode(errors="replace"),
            killed=killed,
            leftover_processes=len(leftover),
            observed=observed,
            observer_error=observer_error,
            job_cpu=job_cpu[0] + own_cpu,
            machine_cpu=machine_cpu,
        )


# ------------------------------------------------------------ machine load


def machine_cpu_seconds() -> float:
    """Return the CPU seconds all cores spent busy since boot (``/proc/stat``).

    Busy is user, nice, system, irq, softirq and steal time; idle and iowait
    are left out. ``/proc/stat`` is not namespaced, so this counts every
    process on the machine.
    """
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    ticks = user + nice + system + irq + softirq + steal
    return ticks / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def wait_for_idle(max_load: float, window: float, timeout: float) -> float:
    """Wait until the machine's busy cores, over ``window`` s, are <= ``max_load``.

    Returns the last load seen, which is above ``max_load`` when ``timeout``
    seconds passed first. Other sessions' jobs on a shared machine would
    otherwise land in the figures.
    """
    deadline = time.monotonic() + timeout
    while True:
        before = machine_cpu_seconds()
        time.sleep(window)
        load = (machine_cpu_seconds() - before) / window
        if load <= max_load or time.monotonic() >= deadline:
            return load


def job_environment(bin_dir: Path) -> dict[str, str]:
    """Build a job's environment with ``bin_dir`` first on ``PATH``."""
    environment = dict(os.environ)
    environment["PATH"] = os.pathsep.join([str(bin_dir), environment.get("PATH", "")])
    # Unbuffered output lets MPICH's mpirun interleave the lines of two ranks;
    # the job scripts flush each stamp line themselves.
    environment.pop("PYTHONUNBUFFERED", None)
    return environment


def byte_compile(python: str, package: str = "dask_mpi") -> str:
    """Write the bytecode of ``package`` for ``python``; return its directory.

    A regular pip install writes bytecode for every module, so the floor's
    distributed and the established dask-mpi load theirs. An editable
    install writes it on first import, unless ``PYTHONDONTWRITEBYTECODE`` is
    set (as on the machines of docs/benchmarks.md): then every rank of every
    job compiles the package again: 26 ms of CPU time per rank here,
    against 8 ms from bytecode.
    """
    code = (
        f"import compileall, os, sys, {package}; "
        f"directory = os.path.dirname({package}.__file__); "
        "print(directory); "
        "sys.exit(0 if compileall.compile_dir(directory, quiet=1) else 1)"
    )
    completed = subprocess.run(
        [python, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    if completed.returncode != 0:
        raise JobFailed(
            f"byte-compiling {package} failed:\n{completed.stdout}{completed.stderr}"
        )
    return completed.stdout.strip()


# ------------------------------------------------------------ network namespace

NAMESPACE_VARIABLE = "DASK_MPI_BENCH_IN_NAMESPACE"


def network_interfaces() -> list[str]:
    """Return the names of the network interfaces visible to this process."""
    lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    return [line.split(":", 1)[0].strip() for line in lines]


def loopback_is_up() -> bool:
    """Return whether ``lo`` has the IFF_UP flag."""
    try:
        flags = int(Path("/sys/class/net/lo/flags").read_text().strip(), 16)
    except FileNotFoundError:
        return False
    return bool(flags & 0x1)


def namespace_problem() -> str | None:
    """Describe why this process is not in a loopback-only namespace, or None."""
    others = [name for name in network_interfaces() if name != "lo"]
    if others:
        return f"network interfaces other than lo are visible: {', '.join(others)}"
    if not loopback_is_up():
        return "the loopback interface lo is down"
    return None


def reexec_in_namespace(argv: Sequence[str]) -> None:
    """Replace this process by ``argv`` inside a new loopback-only namespace.

    ``unshare -n`` needs root. The variable guards against a loop if the new
    namespace still shows other interfaces.
    """
    if os.environ.get(NAMESPACE_VARIABLE) == "1":
        raise SystemExit(
            "startup.py: re-executed under unshare -n, but the namespace is "
            f"still not loopback-only: {namespace_problem()}"
        )
    os.environ[NAMESPACE_VARIABLE] = "1"
    script = 'ip link set lo up && exec "$@"'
    os.execvp("unshare", ["unshare", "-n", "bash", "-c", script, "bash", *argv])
