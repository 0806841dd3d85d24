"""Security of dask-mpi clusters under a real ``mpirun``.

Batch jobs (``initialize()``) use TLS with throw-away credentials by default,
and a process outside the job that has the addresses cannot use the
cluster. ``dask-mpi --tls`` stores the client's credentials in a scheduler
file readable by its owner only. Certificates and keys appear in no log and
in no scheduler or worker ``dask.config``. A one-node batch job listens on
127.0.0.1 only, and a two-node job on each node's own address.

The outside process is ``tests/scripts/security_attacker.py``, started by the
test on loopback (or, in the two-node test, on the simulated host node1).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mpirun
import pytest
from mpirun import MPIJob, Result, assert_clean, assert_no_leftover_processes

pytestmark = pytest.mark.mpi

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
BATCH_SCRIPT = SCRIPTS / "security_batch.py"
ATTACKER_SCRIPT = SCRIPTS / "security_attacker.py"
CONNECT_SCRIPT = SCRIPTS / "security_connect.py"
# The shared/ folder lies beside the checkout, in CI as in development.
TWO_NODES_TOOL = Path(
    os.environ.get(
        "DASK_MPI_TWO_NODES_TOOL",
        Path(__file__).resolve().parents[3] / "shared" / "tools" / "twonodes.sh",
    )
)

TIMEOUT = 60
# The client scripts sum the squares of 0..9.
SUM_OF_SQUARES = 285
LOOPBACK = "127.0.0.1"
# Addresses that twonodes.sh gives its simulated hosts.
NODE_ADDRESSES = {"node0": "198.51.100.10", "node1": "198.51.100.11"}
# Text that marks a PEM block or a private key.
SECRET_MARKERS = ("-----BEGIN", "BEGIN CERTIFICATE", "PRIVATE KEY")
ATTEMPTS_WITHOUT_CREDENTIALS = (
    "client_tcp",
    "client_foreign_certificate",
    "comm_tcp",
    "comm_foreign_certificate",
    "comm_tls_without_certificate",
)

# Errors of a connection that the server rejected or cut. OSError includes
# distributed's "Timed out trying to connect".
CONNECTION_FAILURES = {
    "CommClosedError",
    "FatalCommClosedError",
    "OSError",
    "SSLError",
    "SSLEOFError",
    "ConnectionResetError",
    "TimeoutError",
}

# ---------------------------------------------------------------- helpers


def parse_line(prefix: str, text: str) -> Any:
    """Return the JSON after ``prefix`` on the one line that starts with it."""
    lines = [
        line[len(prefix) + 1 :]
        for line in text.splitlines()
        if line.startswith(prefix + " ")
    ]
    assert len(lines) == 1, f"expected one {prefix!r} line in:\n{text}"
    return json.loads(lines[0])


def run_attacker(
    targets: dict[str, Any],
    plain_only: bool = False,
    credentials: Path | None = None,
) -> list[dict]:
    """Run the outside process against ``targets`` and return its attempts."""
    command = [sys.executable, str(ATTACKER_SCRIPT), json.dumps(targets)]
    if plain_only:
        command.append("--plain-only")
    if credentials is not None:
        command += ["--credentials", str(credentials)]
    completed = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return parse_line("ATTACK", completed.stdout)


def attempts_named(attack: list[dict], name: str) -> list[dict]:
    """Return the attempts called ``name``, and fail if there are none."""
    found = [outcome for outcome in attack if outcome["attempt"] == name]
    assert found, f"no {name!r} attempt in {attack}"
    return found


def assert_all_rejected(attack: list[dict], name: str) -> None:
    for outcome in attempts_named(attack, name):
        assert not outcome["accepted"], (
            f"outside process without the job's credentials got in: {outcome}"
        )
        # Any other error would be a fault of the attacking script.
        kind = outcome["error"].split(":", 1)[0]
        assert kind in CONNECTION_FAILURES, f"unexpected error: {outcome}"


def key_body_lines(pem: str) -> list[str]:
    """Return the base64 lines of a PEM private key."""
    return [
        line.strip()
        for line in pem.splitlines()
        if line.strip() and not line.startswith("-----")
    ]


def assert_no_secrets(output: str, key_pem: str | None) -> None:
    """Assert that ``output`` contains no PEM block and no line of the key."""
    for marker in SECRET_MARKERS:
        assert marker not in output, f"job output contains {marker!r}:\n{output}"
    if key_pem is None:
        return
    lines = key_body_lines(key_pem)
    assert lines, f"the private key has no base64 body:\n{key_pem}"
    for line in lines:
        assert line not in output, "job output contains a line of the private key"


def dask_listeners(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the listening sockets that dask opened in the job's processes.

    Sockets that a rank already listened on before it called ``initialize()``
    belong to MPI and the launcher, so they are left out.
    """
    listeners = []
    for process in report["processes"]:
        before = report["before_dask"].get(str(process["pid"]), [])
        for ip, port in process["listening"]:
            if [ip, port] in before:
                continue
            listeners.append({**process, "ip": ip, "port": port})
    return listeners


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def assert_servers_found(report: dict[str, Any], listeners: list[dict]) -> None:
    """Assert that the listener check saw the scheduler, dashboard and workers."""
    ports = {listener["port"] for listener in listeners}
    assert port_of(report["scheduler_address"]) in ports, listeners
    assert report["services"]["dashboard"] in ports, listeners
    for address in report["workers"] + report["nannies"]:
        assert port_of(address) in ports, listeners


def read_if_present(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


# ---------------------------------------------------------------- batch jobs


@dataclass
class BatchRun:
    """One finished ``security_batch.py`` job and what the outsider saw."""

    result: Result
    report: dict[str, Any]
    attack: list[dict]
    key_pem: str | None
    # Files left in the job's TMPDIR that contain a PEM block.
    pem_files_left: list[str]


def files_containing_pem(directory: Path) -> list[str]:
    found = []
    for path in directory.rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        if b"-----BEGIN" in path.read_bytes():
            found.append(str(path.relative_to(directory)))
    return found


def run_batch(
    kwargs: dict[str, Any], directory: Path, np: int = 4, plain_only: bool = False
) -> BatchRun:
    """Run a batch job and attack it from outside while its client waits."""
    go_file = directory / "go"
    key_file = directory / "client.key"
    # distributed writes in-memory certificates to a temporary directory
    # while it builds a TLS context. The job's own TMPDIR shows what is left.
    temporary = directory / "tmp"
    temporary.mkdir()
    job = mpirun.start_mpi(
        [
            "python",
            str(BATCH_SCRIPT),
            json.dumps(kwargs),
            "--go-file",
            str(go_file),
            "--key-file",
            str(key_file),
        ],
        np=np,
        env={"TMPDIR": str(temporary)},
    )
    try:
        match = job.wait_for_output(r"^TARGETS (.*)$", timeout=TIMEOUT)
        attack = run_attacker(json.loads(match.group(1)), plain_only)
        go_file.touch()
        result = job.wait(TIMEOUT)
    finally:
        # Let the client go on even when the attack failed, then end the job.
        go_file.touch()
        job.kill()
    report = parse_line("REPORT", result.stdout)
    return BatchRun(
        result,
        report,
        attack,
        read_if_present(key_file),
        files_containing_pem(temporary),
    )


BATCH_CASES = {
    "default": {},
    "nanny_debug_log": {"nanny": True, "log_level": "debug"},
}


@pytest.fixture(scope="module", params=sorted(BATCH_CASES))
def tls_batch(request, tmp_path_factory) -> BatchRun:
    """A 4-rank batch job with the default security (TLS), attacked from outside.

    Runs once for each entry of BATCH_CASES and is shared by the tests below.
    """
    directory = tmp_path_factory.mktemp(f"batch-{request.param}")
    return run_batch(BATCH_CASES[request.param], directory)


def test_batch_job_ends_cleanly(tls_batch):
    result = tls_batch.result

    assert result.returncode == 0, result.describe()
    assert_clean(result)
    assert_no_leftover_processes(result)


def test_batch_client_uses_tls(tls_batch):
    report = tls_batch.report

    assert report["scheduler_address"].startswith("tls://"), report
    assert report["sum_of_squares"] == SUM_OF_SQUARES
    assert len(report["workers"]) == 2, report
    for address in report["workers"]:
        assert address.startswith("tls://"), report


@pytest.mark.parametrize("attempt", ATTEMPTS_WITHOUT_CREDENTIALS)
def test_batch_outsider_rejected(tls_batch, attempt):
    assert_all_rejected(tls_batch.attack, attempt)


def test_batch_config_contains_no_certificate(tls_batch):
    report = tls_batch.report

    assert report["config_with_pem"] == [], report
    # The client rank's config contains its key, so the check can find one.
    assert report["client_config_has_pem"], report


def test_batch_logs_contain_no_secrets(tls_batch):
    assert tls_batch.key_pem is not None, "the client rank wrote no key file"
    assert "PRIVATE KEY" in tls_batch.key_pem

    assert_no_secrets(tls_batch.result.output, tls_batch.key_pem)


def test_batch_temporary_files_contain_no_secrets(tls_batch):
    assert tls_batch.pem_files_left == []


def test_batch_one_node_listens_on_loopback(tls_batch):
    report = tls_batch.report
    listeners = dask_listeners(report)

    assert_servers_found(report, listeners)
    for listener in listeners:
        assert listener["ip"] == LOOPBACK, f"listens beyond loopback: {listener}"


def test_batch_interface_lo_listens_on_loopback(tmp_path):
    run = run_batch({"interface": "lo"}, tmp_path, np=3)
    listeners = dask_listeners(run.report)

    assert run.result.returncode == 0, run.result.describe()
    assert run.report["scheduler_address"].startswith("tls://127.0.0.1:")
    assert_servers_found(run.report, listeners)
    for listener in listeners:
        assert listener["ip"] == LOOPBACK, f"listens beyond lo: {listener}"


@pytest.mark.parametrize(
    "kwargs",
    [{"security": False}, {"protocol": "tcp"}],
    ids=["security_false", "protocol_tcp"],
)
def test_batch_tls_off(kwargs, tmp_path):
    run = run_batch(kwargs, tmp_path, np=3, plain_only=True)

    assert run.result.returncode == 0, run.result.describe()
    assert_clean(run.result)
    assert run.report["scheduler_address"].startswith("tcp://127.0.0.1:")
    assert run.report["sum_of_squares"] == SUM_OF_SQUARES
    assert not run.report["client_config_has_pem"], run.report
    assert run.key_pem is None
    # Without TLS anyone on the node can use the cluster. This also shows
    # that the outside process does get in when nothing stops it.
    for outcome in attempts_named(run.attack, "client_tcp"):
        assert outcome["accepted"], outcome
    for outcome in attempts_named(run.attack, "comm_tcp"):
        assert outcome["accepted"], outcome


# ---------------------------------------------------------------- CLI


def wait_for_file(path: Path, job: MPIJob, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if job.poll() is not None:
            pytest.fail(f"job exited before writing {path}\n{job.wait().describe()}")
        if time.monotonic() > deadline:
            pytest.fail(
                f"{path} not written within {timeout} s\n{job.kill().describe()}"
            )
        time.sleep(0.05)


def world_readable(directory: Path) -> list[str]:
    """Return ``ls -l``-style entries of ``directory`` that others may read."""
    found = []
    for entry in directory.iterdir():
        mode = entry.lstat().st_mode
        if mode & stat.S_IROTH:
            found.append(f"{stat.filemode(mode)} {entry.name}")
    return found


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "no_tls"])
def test_cli_scheduler_file(tls, tmp_path, start_mpi):
    directory = tmp_path / "shared"
    directory.mkdir(mode=0o755)
    scheduler_file = directory / "scheduler.json"
    options = ["--scheduler-file", str(scheduler_file), "--interface", "lo"]
    if tls:
        options += ["--tls", "--log-level", "debug"]
    # umask 000, so that every file the job does not restrict itself would
    # be world-readable.
    job = start_mpi(
        ["sh", "-c", 'umask 000 && exec dask-mpi "$@"', "dask-mpi", *options],
        np=3,
    )

    wait_for_file(scheduler_file, job)
    mode = stat.S_IMODE(scheduler_file.stat().st_mode)
    assert mode == 0o600, f"scheduler file mode is {oct(mode)}"
    assert world_readable(directory) == []
    info = json.loads(scheduler_file.read_text())
    key_pem = None
    if tls:
        assert info["address"].startswith("tls://127.0.0.1:"), info["address"]
        for part in ("ca", "cert", "key"):
            assert "-----BEGIN" in info["tls"][part], part
        key_pem = info["tls"]["key"]
        attack = run_attacker(
            {"scheduler": info["address"], "workers": []},
            credentials=scheduler_file,
        )
        for attempt in ATTEMPTS_WITHOUT_CREDENTIALS:
            assert_all_rejected(attack, attempt)
        # The same attempts get in with the file's credentials.
        for attempt in ("client_job_certificate", "comm_job_certificate"):
            for outcome in attempts_named(attack, attempt):
                assert outcome["accepted"], outcome
    else:
        assert info["address"].startswith("tcp://127.0.0.1:"), info["address"]
        assert "tls" not in info

    connected = subprocess.run(
        [sys.executable, str(CONNECT_SCRIPT), str(scheduler_file)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    result = job.wait(TIMEOUT)

    assert f"CONNECTED {info['address']} RESULT 6" in connected.stdout, (
        connected.stdout + connected.stderr
    )
    assert result.returncode == 0, result.describe()
    assert_clean(result)
    assert_no_leftover_processes(result)
    assert world_readable(directory) == []
    assert_no_secrets(result.output, key_pem)


def test_cli_summary_recommends_tls(tmp_path, start_mpi):
    scheduler_file = tmp_path / "scheduler.json"
    job = start_mpi(
        ["dask-mpi", "--scheduler-file", str(scheduler_file), "--interface", "lo"],
        np=2,
    )
    wait_for_file(scheduler_file, job)
    subprocess.run(
        [sys.executable, str(CONNECT_SCRIPT), str(scheduler_file)],
        capture_output=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    result = job.wait(TIMEOUT)

    assert result.returncode == 0, result.describe()
    assert "--tls" in result.output, result.describe()


# ---------------------------------------------------------------- two hosts

# Runs inside twonodes.sh: starts the batch job with ranks on node0 and
# node1, attacks it from node1 once the client printed its targets, then
# lets the client go on. Arguments: BATCH_SCRIPT KWARGS GO_FILE KEY_FILE
# STDOUT STDERR ATTACKER_SCRIPT ATTACK_OUTPUT.
TWO_NODES_SCRIPT = r"""
mpirun -np 4 "$RANKHOST" python "$1" "$2" --go-file "$3" --key-file "$4" \
    > "$5" 2> "$6" &
job=$!
for _ in $(seq 600); do
  grep -q '^TARGETS ' "$5" && break
  kill -0 "$job" 2>/dev/null || break
  sleep 0.1
done
targets=$(sed -n 's/^TARGETS //p' "$5")
if [ -n "$targets" ]; then
  ip netns exec node1 python "$7" "$targets" > "$8" 2>&1
fi
touch "$3"
wait "$job"
"""


def two_nodes_problem() -> str | None:
    """Return why twonodes.sh cannot run here, or None if it can."""
    if os.geteuid() != 0:
        return "twonodes.sh needs root to build network namespaces"
    for program in ("ip", "unshare"):
        if shutil.which(program) is None:
            return f"twonodes.sh needs {program!r}, which is not installed"
    if not TWO_NODES_TOOL.is_file():
        return f"{TWO_NODES_TOOL} not found: set DASK_MPI_TWO_NODES_TOOL to twonodes.sh"
    try:
        trial = subprocess.run(
            [str(TWO_NODES_TOOL), "true"],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "twonodes.sh did not finish a trial run within 30 s"
    if trial.returncode != 0:
        return f"twonodes.sh failed a trial run: {trial.stderr.strip()}"
    return None


def wait_until_gone(pgid: int, tag: str, timeout: float) -> list[mpirun.ProcessInfo]:
    """Wait until no process of the job is alive, and return those still alive."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = mpirun.find_processes(pgid, tag)
        if not remaining or time.monotonic() >= deadline:
            return remaining
        time.sleep(0.1)


def kill_by_pid(processes: list[mpirun.ProcessInfo]) -> None:
    for info in processes:
        try:
            os.kill(info.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_two_nodes_listen_on_node_addresses(tmp_path):
    problem = two_nodes_problem()
    if problem:
        pytest.skip(problem)
    files = {
        name: tmp_path / name
        for name in ("go", "client.key", "stdout", "stderr", "attack")
    }
    tag = uuid.uuid4().hex
    process = subprocess.Popen(
        [
            str(TWO_NODES_TOOL),
            "bash",
            "-c",
            TWO_NODES_SCRIPT,
            "bash",
            str(BATCH_SCRIPT),
            "{}",
            str(files["go"]),
            str(files["client.key"]),
            str(files["stdout"]),
            str(files["stderr"]),
            str(ATTACKER_SCRIPT),
            str(files["attack"]),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=mpirun.build_environment(None, "mpich", tag),
        start_new_session=True,
        text=True,
    )
    try:
        tool_output, _ = process.communicate(timeout=TIMEOUT + 30)
    except subprocess.TimeoutExpired:
        tool_output = f"twonodes.sh timed out after {TIMEOUT + 30} s"
    finally:
        leftover = wait_until_gone(process.pid, tag, mpirun.EXIT_GRACE)
        kill_by_pid(leftover)
        kill_by_pid(mpirun.find_processes(process.pid, tag))
        if process.poll() is None:
            process.kill()
        process.wait()
    result = Result(
        command=process.args,
        returncode=process.returncode,
        stdout=read_if_present(files["stdout"]) or "",
        stderr=(read_if_present(files["stderr"]) or "") + tool_output,
        elapsed=0.0,
        pgid=process.pid,
        tag=tag,
    )

    assert result.returncode == 0, result.describe()
    assert leftover == [], f"processes outlived the job: {leftover}"
    assert_clean(result)
    report = parse_line("REPORT", result.stdout)
    assert report["client_host"] == "node1"
    assert report["sum_of_squares"] == SUM_OF_SQUARES
    assert report["scheduler_address"].startswith("tls://198.51.100.10:"), report
    worker_hosts = sorted(
        address.split("://")[1].rsplit(":", 1)[0] for address in report["workers"]
    )
    assert worker_hosts == sorted(NODE_ADDRESSES.values()), report

    listeners = dask_listeners(report)
    assert_servers_found(report, listeners)
    for listener in listeners:
        expected = NODE_ADDRESSES[listener["host"]]
        assert listener["ip"] == expected, f"expected {expected}: {listener}"

    attack = parse_line("ATTACK", files["attack"].read_text())
    for attempt in ATTEMPTS_WITHOUT_CREDENTIALS:
        assert_all_rejected(attack, attempt)
    assert report["config_with_pem"] == [], report
    assert_no_secrets(result.output, read_if_present(files["client.key"]))
