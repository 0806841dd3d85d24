"""Ways for the client code of an ``initialize()`` or ``execute()`` job to end.

The endings scripts call ``run_action(ACTION)`` on the client rank. Every
action that does not run the task load first prints ``client ready`` after
one task, so the test knows that the cluster worked.

``leave_on_sigusr2()`` makes SIGUSR2 end any rank through ``os._exit(0)``,
without MPI_Finalize. MPICH's ``mpirun -disable-auto-cleanup`` then leaves
the other ranks running, as srun does. A rank killed by a signal makes
MPICH 5.0's mpirun kill the whole job, even with that flag.

Actions:

``tasks``
    Run 3,000 small tasks in a ``with Client()`` block and end normally.
``tasks_open_client``
    The same with a Client that the script never closes.
``end``
    End normally.
``raise``
    Raise ``RuntimeError``.
``interrupt``
    Raise ``KeyboardInterrupt``, as code that catches SIGINT itself may.
``exit:N``
    Call ``sys.exit(N)``.
``kill``
    Send SIGKILL to this process.
``os_exit``
    Leave through ``os._exit(0)``, without MPI_Finalize.
``wait``
    Sleep up to 120 s with the Client open, so that the test can signal a
    rank or mpirun.
``straggler``
    Start a task that holds the GIL for 120 s on the highest-ranked worker,
    so that its rank cannot reply to the close message, then end normally.
``task_exit:N``
    Run a task that calls ``sys.exit(N)`` on a worker and wait for its
    result.
``orphan``
    Run a task that starts ``sleep 120`` and returns without waiting for
    it, print ``orphan PID``, then end normally.
``terminate_child``
    Run a task that starts ``sleep 120``, ends it with
    ``Popen.terminate()`` and waits for it. Prints ``child ended after S s``.
``kill_worker:SIGNAL``
    Send SIGNAL (``KILL`` or ``USR2``) to the process of the highest-ranked
    worker while tasks run, then wait for the results. Under a Nanny that
    is the worker process, which the Nanny restarts; a plain Worker runs in
    the rank process itself.
"""

from __future__ import annotations

import os
import signal
import sys
import time

# The normal-end test runs 3,000 tasks. The sum of 0..2999 plus 3,000 is
# 4,501,500.
TASK_COUNT = 3000
TASK_SUM = 4_501_500
WAIT_SECONDS = 120


def leave_on_sigusr2() -> None:
    """Make SIGUSR2 end this process at once with exit code 0."""
    signal.signal(signal.SIGUSR2, lambda number, frame: os._exit(0))


def increment(x: int) -> int:
    return x + 1


def slow_increment(x: int) -> int:
    time.sleep(0.1)
    return x + 1


def run_tasks(client) -> None:
    futures = client.map(increment, range(TASK_COUNT))
    total = client.submit(sum, futures).result()
    print(f"tasks sum {total}", flush=True)


def worker_pids(client) -> dict[str, int]:
    """Map each worker name to the pid of the process that runs its tasks."""
    pids = client.run(os.getpid)
    names = {
        address: info["name"]
        for address, info in client.scheduler_info()["workers"].items()
    }
    return {str(names[address]): pid for address, pid in pids.items()}


def has_nanny(client, name: str) -> bool:
    """Return whether the worker called ``name`` runs under a Nanny."""
    workers = client.scheduler_info()["workers"].values()
    return any(str(w["name"]) == name and w["nanny"] for w in workers)


def kill_worker_during_tasks(client, number: int) -> None:
    """Send signal ``number`` to the highest-ranked worker while 40 tasks run."""
    before = worker_pids(client)
    name = max(before, key=lambda text: int(text.rsplit("-", 1)[1]))
    nanny = has_nanny(client, name)
    futures = client.map(slow_increment, range(40))
    time.sleep(0.5)
    print(f"signalling worker {name} pid {before[name]}", flush=True)
    os.kill(before[name], number)
    # 1 + 2 + ... + 40 = 820.
    total = sum(client.gather(futures))
    print(f"tasks sum {total}", flush=True)
    if not nanny:
        return
    client.wait_for_workers(len(before), timeout=30)
    after = worker_pids(client)
    print(f"worker {name} restarted {after.get(name) != before[name]}", flush=True)


def hold_gil(seconds: int) -> None:
    """Sleep in C without releasing the GIL, as a stuck extension would."""
    import ctypes

    print("straggler running", flush=True)
    ctypes.PyDLL(None).sleep(seconds)


def start_sleep(wait: bool) -> tuple[int, float]:
    """Start ``sleep``; with ``wait``, terminate it and time its end."""
    import subprocess

    child = subprocess.Popen(["sleep", str(WAIT_SECONDS)])
    if not wait:
        return child.pid, 0.0
    started = time.monotonic()
    child.terminate()
    child.wait()
    return child.pid, time.monotonic() - started


def start_straggler(client) -> None:
    """Start ``hold_gil`` on the highest-ranked worker and return."""
    workers = client.scheduler_info()["workers"]
    address = max(workers, key=lambda a: int(str(workers[a]["name"]).rsplit("-", 1)[1]))
    print(f"straggler on {workers[address]['name']}", flush=True)
    client.submit(hold_gil, WAIT_SECONDS, workers=[address], pure=False)
    # The task prints from the worker's rank once it runs.
    time.sleep(2)


def run_action(action: str) -> None:
    """End the client code in the way ``action`` names."""
    from distributed import Client

    if action == "tasks":
        with Client() as client:
            run_tasks(client)
        return
    if action == "tasks_open_client":
        client = Client()
        run_tasks(client)
        return

    with Client() as client:
        result = client.submit(sum, [1, 2, 3]).result()
        print(f"client ready {result}", flush=True)
        if action.startswith("kill_worker:"):
            name = "SIG" + action.split(":", 1)[1]
            kill_worker_during_tasks(client, signal.Signals[name])
            return
        if action == "straggler":
            start_straggler(client)
            return
        if action == "orphan":
            pid, _ = client.submit(start_sleep, False, pure=False).result()
            print(f"orphan {pid}", flush=True)
            return
        if action == "terminate_child":
            _, seconds = client.submit(start_sleep, True, pure=False).result()
            print(f"child ended after {seconds:.1f} s", flush=True)
            return
        if action.startswith("task_exit:"):
            code = int(action.split(":", 1)[1])
            client.submit(sys.exit, code, pure=False).result()
            print("client got a result from the exiting task", flush=True)
            return
        if action == "wait":
            time.sleep(WAIT_SECONDS)
            print("client waited without a signal", flush=True)
            return

    if action == "end":
        return
    if action == "raise":
        raise RuntimeError("client code failed on purpose")
    if action == "interrupt":
        raise KeyboardInterrupt
    if action.startswith("exit:"):
        sys.exit(int(action.split(":", 1)[1]))
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "os_exit":
        os._exit(0)
    raise ValueError(f"unknown action {action!r}")
