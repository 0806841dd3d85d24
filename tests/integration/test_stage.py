"""``python -m dask_mpi.stage unpack`` under real ``mpirun`` jobs.

The archives here hold a few files, so each job takes about a second. The
two-host tests run the ranks in two network namespaces with their own host
names, even ranks on node0 and odd ranks on node1, built by the script in
``TWO_NODES``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mpirun import Result, assert_clean, run_mpi

from dask_mpi import stage

pytestmark = pytest.mark.mpi

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TWO_NODES = REPO.parent / "shared" / "tools" / "twonodes.sh"
STAGE = ["python", "-m", "dask_mpi.stage"]
ERROR_PREFIX = "python -m dask_mpi.stage: error: "
# MPICH's own line when a rank calls MPI_Abort.
MPICH_ABORT = r"application called MPI_Abort"


def make_tree(root: Path, version: str = "1") -> Path:
    """Create a small directory with a module, a .pyc and links."""
    package = root / "lib" / "site-packages" / "sample"
    (package / "__pycache__").mkdir(parents=True)
    (package / "__init__.py").write_text(f"VERSION = {version!r}\n")
    (package / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"\x00pyc")
    (root / "bin").mkdir()
    (root / "bin" / "python").symlink_to("/usr/bin/python3")
    (root / "lib64").symlink_to("lib")
    return root


def listing(root: Path) -> dict[str, str]:
    """Map each path below ``root`` to a link target, "dir" or file content."""
    entries = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_symlink():
            entries[name] = "-> " + os.readlink(path)
        elif path.is_dir():
            entries[name] = "dir"
        else:
            entries[name] = path.read_bytes().hex()
    return entries


def marker(target: Path) -> dict:
    return json.loads((target / stage.MARKER_NAME).read_text())


def node_lines(result: Result) -> list[str]:
    return [line for line in result.stdout.splitlines() if " (rank " in line]


def error_lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if "error:" in line]


def assert_staged(target: Path, tree: Path) -> None:
    entries = listing(target)
    assert entries.pop(stage.MARKER_NAME)
    assert entries == listing(tree)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "tree")


@pytest.fixture
def archive(tree: Path, tmp_path: Path) -> Path:
    path = tmp_path / "tree.tar"
    stage.pack_directory(tree, path)
    return path


def unpack(archive: Path, target: str, *options: str, np: int = 4) -> Result:
    return run_mpi([*STAGE, "unpack", *options, str(archive), target], np=np)


def test_unpack_on_four_ranks(tree, archive, tmp_path):
    target = tmp_path / "nodes" / "venv"

    result = unpack(archive, str(target))

    assert result.returncode == 0, result.describe()
    assert_clean(result)
    assert result.stderr == ""
    host = socket.gethostname()
    lines = node_lines(result)
    assert len(lines) == 1, result.describe()
    assert lines[0].startswith(f"{host} (rank 0): transferred ")
    assert f"into {target}" in lines[0]
    assert "on 1 node (1 unpacked, 0 already staged)" in result.stdout
    assert_staged(target, tree)
    assert marker(target)["host"] == host
    assert marker(target)["rank"] == 0
    # The staging directory next to the target is gone.
    assert [path.name for path in target.parent.iterdir()] == ["venv"]


def test_rerun_skips_staged_target(tree, archive, tmp_path):
    target = tmp_path / "venv"
    first = unpack(archive, str(target))
    assert first.returncode == 0, first.describe()
    (target / "sentinel").write_text("left by the first run")

    second = unpack(archive, str(target))

    assert second.returncode == 0, second.describe()
    assert_clean(second)
    assert second.stderr == ""
    assert node_lines(second) == [
        f"{socket.gethostname()} (rank 0): already staged in {target}"
    ]
    assert "(0 unpacked, 1 already staged)" in second.stdout
    assert (target / "sentinel").exists()


def test_changed_archive_replaces_target(archive, tmp_path):
    target = tmp_path / "venv"
    first = unpack(archive, str(target))
    assert first.returncode == 0, first.describe()
    newer_tree = make_tree(tmp_path / "newer", version="2")
    newer = tmp_path / "newer.tgz"
    stage.pack_directory(newer_tree, newer, compresslevel=1)

    # Chunks of 100 bytes make the broadcast take several messages.
    result = unpack(newer, str(target), "--chunk-size", "100")

    assert result.returncode == 0, result.describe()
    assert_clean(result)
    assert result.stderr == ""
    assert "(1 unpacked, 0 already staged)" in result.stdout
    assert_staged(target, newer_tree)
    assert marker(target)["size"] == newer.stat().st_size


def test_missing_archive_exits_2(tmp_path):
    missing = tmp_path / "missing.tar"

    result = unpack(missing, str(tmp_path / "venv"))

    assert result.returncode == 2, result.describe()
    assert_clean(result)
    assert result.stderr == f"{ERROR_PREFIX}archive not found: {missing}\n"
    assert result.stdout == ""
    assert not (tmp_path / "venv").exists()


def test_unwritable_target_exits_2(archive, tmp_path):
    (tmp_path / "file").write_text("a file where a directory is expected")
    target = tmp_path / "file" / "venv"

    result = unpack(archive, str(target))

    assert result.returncode == 2, result.describe()
    assert_clean(result)
    assert len(error_lines(result)) == 1, result.describe()
    assert result.stderr.startswith(
        f"{ERROR_PREFIX}staging failed on 1 of 1 node: {socket.gethostname()} "
        f"(rank 0): cannot create {tmp_path / 'file'}: it exists and is not a "
        f"directory"
    )
    assert result.stdout == ""


def test_foreign_target_is_left_alone(archive, tmp_path):
    target = tmp_path / "data"
    target.mkdir()
    (target / "results.csv").write_text("1,2,3\n")

    result = unpack(archive, str(target))

    assert result.returncode == 2, result.describe()
    assert_clean(result)
    assert len(error_lines(result)) == 1, result.describe()
    assert "not made by this tool" in result.stderr
    assert listing(target) == {"results.csv": b"1,2,3\n".hex()}
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "data",
        "tree",
        "tree.tar",
    ]


def test_timeout_aborts_job(archive, tmp_path):
    result = unpack(archive, str(tmp_path / "venv"), "--timeout", "0.000001")

    assert result.returncode == 1, result.describe()
    assert_clean(result)
    assert len(error_lines(result)) == 1, result.describe()
    assert result.stderr.startswith(
        f"{ERROR_PREFIX}rank 0 on {socket.gethostname()}: timed out after 1e-06 s "
        f"while reading {archive}"
    )
    assert "aborting the job" in result.stderr
    other_lines = [
        line
        for line in result.stderr.splitlines()
        if "error:" not in line and MPICH_ABORT not in line
    ]
    assert other_lines == [], result.describe()
    assert not (tmp_path / "venv").exists()


def test_usage_error_printed_once(archive):
    result = run_mpi([*STAGE, "unpack", str(archive)], np=4)

    assert result.returncode == 2, result.describe()
    assert_clean(result)
    assert len(error_lines(result)) == 1, result.describe()
    assert result.stderr.count("usage:") == 1
    assert "the following arguments are required: TARGET" in result.stderr
    assert result.stdout == ""


def test_staged_venv_runs_from_new_place(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)],
        check=True,
        timeout=120,
    )
    site_packages = next(venv.glob("lib/python*/site-packages"))
    (site_packages / "stage_probe.py").write_text("NAME = 'probe'\n")
    archive = tmp_path / "venv.tar"
    stage.pack_directory(venv, archive)
    shutil.rmtree(venv)
    target = tmp_path / "staged"

    result = unpack(archive, str(target), np=2)
    assert result.returncode == 0, result.describe()
    probe = subprocess.run(
        [
            str(target / "bin" / "python"),
            "-c",
            "import sys, stage_probe; print(sys.prefix); print(stage_probe.__file__)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert probe.returncode == 0, probe.stderr
    assert probe.stderr == ""
    prefix, module = probe.stdout.splitlines()
    assert prefix == str(target)
    assert module.startswith(str(target / "lib"))


# ---------------------------------------------------------------------------
# two simulated hosts


def two_nodes_available() -> bool:
    return os.geteuid() == 0 and TWO_NODES.exists() and shutil.which("ip") is not None


def unpack_on_two_nodes(archive: Path, target: str, timeout: float = 90) -> Result:
    """Run the unpack step on 4 ranks, 2 on each simulated host."""
    mpirun = Path(sys.executable).parent / "mpirun"
    job = (
        f'exec "{mpirun}" -np 4 "$RANKHOST" "{sys.executable}" -m dask_mpi.stage '
        f'unpack "{archive}" "{target}"'
    )
    command = [str(TWO_NODES), "bash", "-c", job]
    env = dict(os.environ, PATH=f"{mpirun.parent}:{os.environ['PATH']}")
    # Unbuffered output would let mpirun interleave the lines of two ranks.
    env.pop("PYTHONUNBUFFERED", None)

    started = time.monotonic()
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=env,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        timed_out = True

    result = Result(
        command,
        process.returncode,
        stdout,
        stderr,
        time.monotonic() - started,
        process.pid,
        "",
        timed_out,
    )
    assert not timed_out, result.describe()
    return result


@pytest.mark.skipif(not two_nodes_available(), reason="needs root and twonodes.sh")
def test_each_host_gets_its_own_copy(tree, archive, tmp_path):
    template = str(tmp_path / "local" / "{host}" / "venv")

    result = unpack_on_two_nodes(archive, template)

    assert result.returncode == 0, result.describe()
    assert_clean(result)
    assert result.stderr == ""
    lines = node_lines(result)
    assert len(lines) == 2, result.describe()
    assert lines[0].startswith("node0 (rank 0): transferred ")
    assert lines[1].startswith("node1 (rank 1): transferred ")
    assert "on 2 nodes (2 unpacked, 0 already staged)" in result.stdout
    for rank, host in enumerate(["node0", "node1"]):
        target = tmp_path / "local" / host / "venv"
        assert_staged(target, tree)
        assert marker(target)["host"] == host
        assert marker(target)["rank"] == rank
    assert sorted(path.name for path in (tmp_path / "local").iterdir()) == [
        "node0",
        "node1",
    ]


@pytest.mark.skipif(not two_nodes_available(), reason="needs root and twonodes.sh")
def test_rerun_on_two_hosts_skips_both(archive, tmp_path):
    template = str(tmp_path / "{host}")
    first = unpack_on_two_nodes(archive, template)
    assert first.returncode == 0, first.describe()

    second = unpack_on_two_nodes(archive, template)

    assert second.returncode == 0, second.describe()
    assert_clean(second)
    assert second.stderr == ""
    assert node_lines(second) == [
        f"node0 (rank 0): already staged in {tmp_path / 'node0'}",
        f"node1 (rank 1): already staged in {tmp_path / 'node1'}",
    ]


@pytest.mark.skipif(not two_nodes_available(), reason="needs root and twonodes.sh")
def test_one_bad_host_fails_all(archive, tmp_path):
    # node1's target cannot be created, so neither node unpacks anything.
    (tmp_path / "node1").write_text("a file where a directory is expected")
    template = str(tmp_path / "{host}" / "venv")

    result = unpack_on_two_nodes(archive, template)

    assert result.returncode == 2, result.describe()
    assert_clean(result)
    assert len(error_lines(result)) == 1, result.describe()
    assert f"{ERROR_PREFIX}staging failed on 1 of 2 nodes: node1 (rank 1)" in (
        result.stderr
    )
    assert not (tmp_path / "node0" / "venv").exists()
    assert list((tmp_path / "node0").iterdir()) == []
