"""Packing, targets, markers and extraction of ``dask_mpi.stage``, without MPI."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from dask_mpi import stage
from dask_mpi.stage import (
    EXIT_USAGE,
    MARKER_NAME,
    ArchiveIdentity,
    MemberChecker,
    NodeResult,
    StageError,
    StageTimeout,
    UnsafeMemberError,
)


def make_tree(root: Path) -> Path:
    """Create a small directory shaped like a virtual environment."""
    package = root / "lib" / "python3.11" / "site-packages" / "sample"
    (package / "__pycache__").mkdir(parents=True)
    (package / "__init__.py").write_text("VALUE = 42\n")
    (package / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"\x00pyc")
    (root / "bin").mkdir()
    script = root / "bin" / "tool"
    script.write_text("#!/bin/sh\necho tool\n")
    script.chmod(0o755)
    (root / "bin" / "python").symlink_to("/usr/bin/python3")
    (root / "lib64").symlink_to("lib")
    (root / "empty").mkdir()
    (root / "pyvenv.cfg").write_text("home = /usr/bin\n")
    return root


def tree_listing(root: Path) -> dict[str, tuple[str, int, str]]:
    """Map each path below ``root`` to its kind, permission bits and content."""
    listing = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_symlink():
            listing[name] = ("link", 0, os.readlink(path))
        elif path.is_dir():
            listing[name] = ("dir", 0, "")
        else:
            mode = stat.S_IMODE(path.stat().st_mode)
            listing[name] = ("file", mode, path.read_bytes().hex())
    return listing


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "venv")


@pytest.fixture
def archive(tree: Path, tmp_path: Path) -> Path:
    path = tmp_path / "venv.tar"
    stage.pack_directory(tree, path)
    return path


# ---------------------------------------------------------------------------
# pack


def test_pack_round_trip(tree, archive, tmp_path):
    destination = tmp_path / "out"
    destination.mkdir()

    members = stage.extract_archive(archive, destination)

    assert tree_listing(destination) == tree_listing(tree)
    assert members == len(tree_listing(tree))
    pyc = "lib/python3.11/site-packages/sample/__pycache__/__init__.cpython-311.pyc"
    assert (destination / pyc).read_bytes() == b"\x00pyc"
    assert os.readlink(destination / "bin" / "python") == "/usr/bin/python3"


def test_pack_summary_counts(tree, tmp_path):
    summary = stage.pack_directory(tree, tmp_path / "a.tar")

    assert summary.members == len(tree_listing(tree))
    assert summary.content_bytes == sum(
        path.stat().st_size
        for path in tree.rglob("*")
        if path.is_file() and not path.is_symlink()
    )
    assert summary.archive_bytes == (tmp_path / "a.tar").stat().st_size


def test_pack_is_deterministic(tree, tmp_path):
    stage.pack_directory(tree, tmp_path / "a.tar")
    stage.pack_directory(tree, tmp_path / "b.tar")

    assert sha256_of(tmp_path / "a.tar") == sha256_of(tmp_path / "b.tar")


def test_pack_normalizes_owner_and_mtime(tree, tmp_path):
    source = tree / "pyvenv.cfg"
    os.utime(source, (1_700_000_000.75, 1_700_000_000.75))
    stage.pack_directory(tree, tmp_path / "a.tar")

    with tarfile.open(tmp_path / "a.tar") as tar:
        member = tar.getmember("pyvenv.cfg")
        owners = {(m.uid, m.gid, m.uname, m.gname) for m in tar.getmembers()}

    # A .pyc compares the integer part of its source's mtime.
    assert member.mtime == 1_700_000_000
    assert owners == {(0, 0, "", "")}


def test_pack_gzip(tree, tmp_path):
    summary = stage.pack_directory(tree, tmp_path / "a.tgz", compresslevel=1)

    with open(summary.archive, "rb") as stream:
        assert stream.read(2) == b"\x1f\x8b"
    with gzip.open(summary.archive) as stream, tarfile.open(fileobj=stream) as tar:
        names = set(tar.getnames())
    assert names == set(tree_listing(tree))


def test_pack_leaves_no_temporary_file(tree, tmp_path):
    stage.pack_directory(tree, tmp_path / "a.tar")

    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.tar", "venv"]


def test_pack_failure_keeps_old_archive(tree, tmp_path):
    archive = tmp_path / "a.tar"
    archive.write_bytes(b"old archive")
    os.mkfifo(tree / "pipe")

    with pytest.raises(StageError, match="FIFO") as raised:
        stage.pack_directory(tree, archive)

    assert raised.value.exit_code == stage.EXIT_FAILURE
    assert archive.read_bytes() == b"old archive"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.tar", "venv"]


def test_pack_archive_is_readable_by_group(tree, tmp_path):
    old_umask = os.umask(0o022)
    try:
        stage.pack_directory(tree, tmp_path / "a.tar")
    finally:
        os.umask(old_umask)

    assert stat.S_IMODE((tmp_path / "a.tar").stat().st_mode) == 0o644


@pytest.mark.parametrize(
    ("source", "archive", "message"),
    [
        ("missing", "a.tar", "source directory not found"),
        ("venv", "missing/a.tar", "directory of the archive not found"),
        ("venv", "venv/a.tar", "inside the source directory"),
    ],
)
def test_pack_rejects_bad_paths(tree, tmp_path, source, archive, message):
    with pytest.raises(StageError, match=message) as raised:
        stage.pack_directory(tmp_path / source, tmp_path / archive)

    assert raised.value.exit_code == EXIT_USAGE


# ---------------------------------------------------------------------------
# targets and markers


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("/tmp/venv-{host}", "/tmp/venv-node7"),
        ("/tmp/{host}/venv-{host}", "/tmp/node7/venv-node7"),
        ("/tmp/venv", "/tmp/venv"),
        ("/tmp/a/../venv", "/tmp/venv"),
    ],
)
def test_expand_target(template, expected):
    assert stage.expand_target(template, "node7") == Path(expected)


def test_expand_relative_target(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    assert stage.expand_target("venv-{host}", "n1") == tmp_path / "venv-n1"


def test_expand_target_expands_home(monkeypatch):
    monkeypatch.setenv("HOME", "/home/someone")

    assert stage.expand_target("~/venv", "n1") == Path("/home/someone/venv")


def test_marker_round_trip(tmp_path):
    identity = ArchiveIdentity(10240, "ab" * 32)

    stage.write_marker(tmp_path, identity, {"host": "n1", "rank": 3})

    assert stage.read_marker(tmp_path) == identity
    recorded = json.loads((tmp_path / MARKER_NAME).read_text())
    assert recorded["host"] == "n1"
    assert recorded["rank"] == 3


@pytest.mark.parametrize("content", [None, "", "{", "[]", '{"size": 1}'])
def test_read_marker_invalid(tmp_path, content):
    if content is not None:
        (tmp_path / MARKER_NAME).write_text(content)

    assert stage.read_marker(tmp_path) is None


def test_is_staged_compares_size_and_digest(tmp_path):
    identity = ArchiveIdentity(10, "aa")
    stage.write_marker(tmp_path, identity, {})

    assert stage.is_staged(tmp_path, identity)
    assert not stage.is_staged(tmp_path, ArchiveIdentity(11, "aa"))
    assert not stage.is_staged(tmp_path, ArchiveIdentity(10, "bb"))
    assert not stage.is_staged(tmp_path / "missing", identity)


def test_is_staged_rejects_symlink(tmp_path):
    identity = ArchiveIdentity(10, "aa")
    (tmp_path / "real").mkdir()
    stage.write_marker(tmp_path / "real", identity, {})
    (tmp_path / "link").symlink_to("real")

    assert not stage.is_staged(tmp_path / "link", identity)


# ---------------------------------------------------------------------------
# identify_archive


def test_identify_archive(archive):
    identity = stage.identify_archive(archive)

    assert identity.size == archive.stat().st_size
    assert identity.sha256 == sha256_of(archive)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing.tar", "archive not found"),
        ("directory", "not a regular file"),
        ("text.tar", "not a tar file"),
    ],
)
def test_identify_archive_rejects(tmp_path, name, message):
    (tmp_path / "directory").mkdir()
    (tmp_path / "text.tar").write_text("not a tar file at all")

    with pytest.raises(StageError, match=message) as raised:
        stage.identify_archive(tmp_path / name)

    assert raised.value.exit_code == EXIT_USAGE


def test_identify_archive_times_out(archive):
    with pytest.raises(StageTimeout, match="timed out after 3 s") as raised:
        stage.identify_archive(archive, deadline=time.monotonic() - 1, timeout=3)

    assert raised.value.exit_code == stage.EXIT_FAILURE


# ---------------------------------------------------------------------------
# prepare_target and install_target

IDENTITY = ArchiveIdentity(10240, "cd" * 32)


def test_prepare_new_target_creates_staging(tmp_path):
    target = tmp_path / "nodes" / "n1" / "venv"

    preparation = stage.prepare_target(target, IDENTITY)

    assert preparation.error is None
    assert preparation.needs_archive
    assert preparation.staging is not None
    assert preparation.staging.parent == target.parent
    assert preparation.staging.is_dir()
    assert not target.exists()


def test_prepare_skips_same_archive(tmp_path):
    target = tmp_path / "venv"
    target.mkdir()
    stage.write_marker(target, IDENTITY, {})

    preparation = stage.prepare_target(target, IDENTITY)

    assert preparation.error is None
    assert not preparation.needs_archive
    assert sorted(path.name for path in tmp_path.iterdir()) == ["venv"]


def test_prepare_replaces_other_archive(tmp_path):
    target = tmp_path / "venv"
    target.mkdir()
    stage.write_marker(target, ArchiveIdentity(1, "old"), {})

    preparation = stage.prepare_target(target, IDENTITY)

    assert preparation.error is None
    assert preparation.needs_archive


def test_prepare_accepts_empty_directory(tmp_path):
    (tmp_path / "venv").mkdir()

    preparation = stage.prepare_target(tmp_path / "venv", IDENTITY)

    assert preparation.error is None
    assert preparation.needs_archive


def test_prepare_rejects_foreign_directory(tmp_path):
    target = tmp_path / "venv"
    target.mkdir()
    (target / "data.txt").write_text("someone's data")

    preparation = stage.prepare_target(target, IDENTITY)

    assert preparation.error is not None
    assert "has no .dask-mpi-stage.json" in preparation.error
    assert preparation.staging is None
    assert (target / "data.txt").exists()


def test_prepare_rejects_file_at_target(tmp_path):
    (tmp_path / "venv").write_text("a file")

    preparation = stage.prepare_target(tmp_path / "venv", IDENTITY)

    assert preparation.error is not None
    assert "is not a directory" in preparation.error


def test_prepare_reports_unwritable_parent(tmp_path):
    (tmp_path / "file").write_text("a file, so no directory can be made below it")

    preparation = stage.prepare_target(tmp_path / "file" / "venv", IDENTITY)

    assert preparation.error is not None
    assert preparation.error == (
        f"cannot create {tmp_path / 'file'}: it exists and is not a directory"
    )
    assert preparation.staging is None


def install(archive: Path, target: Path) -> int:
    identity = stage.identify_archive(archive)
    preparation = stage.prepare_target(target, identity)
    assert preparation.staging is not None
    copy = preparation.staging / "archive"
    copy.write_bytes(archive.read_bytes())
    return stage.install_target(preparation, copy, identity, {"host": "n1"})


def test_install_target_unpacks_and_marks(tree, archive, tmp_path):
    target = tmp_path / "staged" / "venv"

    members = install(archive, target)

    assert members == len(tree_listing(tree))
    assert stage.is_staged(target, stage.identify_archive(archive))
    listing = tree_listing(target)
    del listing[MARKER_NAME]
    assert listing == tree_listing(tree)
    # Only the target is left: the staging directory is gone.
    assert [path.name for path in target.parent.iterdir()] == ["venv"]


def test_install_replaces_previous_copy(tree, archive, tmp_path):
    target = tmp_path / "staged"
    install(archive, target)
    (tree / "pyvenv.cfg").write_text("home = /other\n")
    newer = tmp_path / "newer.tar"
    stage.pack_directory(tree, newer)

    install(newer, target)

    assert (target / "pyvenv.cfg").read_text() == "home = /other\n"
    assert stage.read_marker(target) == stage.identify_archive(newer)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "newer.tar",
        "staged",
        "venv",
        "venv.tar",
    ]


# ---------------------------------------------------------------------------
# MemberChecker


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = 0o644
    return info


@pytest.mark.parametrize(
    "members",
    [
        [member("/etc/passwd")],
        [member("../outside")],
        [member("lib/../../outside")],
        [member("escape", tarfile.SYMTYPE, "/etc"), member("escape/passwd")],
        [member("escape", tarfile.SYMTYPE, "/etc/passwd"), member("escape")],
        [member("hard", tarfile.LNKTYPE, "../outside")],
        [member("fifo", tarfile.FIFOTYPE)],
        [member("device", tarfile.CHRTYPE)],
    ],
    ids=[
        "absolute",
        "parent",
        "nested-parent",
        "through-link",
        "onto-link",
        "hard-link-outside",
        "fifo",
        "device",
    ],
)
def test_member_checker_rejects(members):
    checker = MemberChecker()

    with pytest.raises(UnsafeMemberError):
        for info in members:
            checker(info, "/destination")


def test_checker_allows_outside_links():
    checker = MemberChecker()

    python = checker(member("bin/python", tarfile.SYMTYPE, "/usr/bin/python3"), "/d")
    lib64 = checker(member("lib64", tarfile.SYMTYPE, "lib"), "/d")
    inner = checker(member("./lib/x.py"), "/d")

    assert python.linkname == "/usr/bin/python3"
    assert lib64.linkname == "lib"
    assert inner.name == "./lib/x.py"


def test_checker_clears_unsafe_bits():
    info = member("bin/tool")
    info.mode = 0o6777

    assert MemberChecker()(info, "/d").mode == 0o755


def test_extract_rejects_unsafe_archive(tmp_path):
    archive = tmp_path / "bad.tar"
    with tarfile.open(archive, "w") as tar:
        link = member("escape", tarfile.SYMTYPE, str(tmp_path / "outside"))
        tar.addfile(link)
        data = member("escape/file")
        tar.addfile(data)
    (tmp_path / "outside").mkdir()
    (tmp_path / "out").mkdir()

    with pytest.raises(UnsafeMemberError, match="symbolic link"):
        stage.extract_archive(archive, tmp_path / "out")

    assert list((tmp_path / "outside").iterdir()) == []


# ---------------------------------------------------------------------------
# messages and helpers


def node_result(rank: int, error: str | None = None) -> NodeResult:
    action = "failed" if error else "unpacked"
    return NodeResult(f"node{rank}", rank, f"/t/node{rank}", action, error=error)


def test_format_failures_lists_first_nodes():
    results = [node_result(rank, f"error {rank}") for rank in range(5)]
    results.append(node_result(5))

    message = stage.format_failures(results)

    assert message.startswith("staging failed on 5 of 6 nodes: ")
    assert "node0 (rank 0): error 0; node1 (rank 1): error 1" in message
    assert "node3" not in message
    assert message.endswith("; and 2 more nodes")


def test_format_failures_single_node():
    message = stage.format_failures([node_result(0, "disk full")])

    assert message == "staging failed on 1 of 1 node: node0 (rank 0): disk full"


def test_format_node_line():
    result = NodeResult("n1", 4, "/t", "unpacked", 2048, 0.5, 7, 0.25)

    assert stage.format_node_line(result) == (
        "n1 (rank 4): transferred 2048 bytes in 0.50 s, unpacked 7 members in "
        "0.25 s into /t"
    )
    result.action = "present"
    assert stage.format_node_line(result) == "n1 (rank 4): already staged in /t"


def test_displacements():
    assert stage._displacements([3, 0, 5, 2]) == [0, 3, 3, 8]
    assert stage._displacements([]) == []


# ---------------------------------------------------------------------------
# command line


def test_main_pack(tree, tmp_path, capsys):
    code = stage.main(["pack", "--gzip", str(tree), str(tmp_path / "a.tgz")])

    out, err = capsys.readouterr()
    assert code == 0
    assert err == ""
    assert out.startswith("packed ")
    assert (tmp_path / "a.tgz").exists()


def test_main_pack_error(tmp_path, capsys):
    code = stage.main(["pack", str(tmp_path / "missing"), str(tmp_path / "a.tar")])

    out, err = capsys.readouterr()
    assert code == EXIT_USAGE
    assert out == ""
    assert err == (
        f"python -m dask_mpi.stage: error: source directory not found: "
        f"{tmp_path / 'missing'}\n"
    )


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["unpack", "archive.tar"],
        ["unpack", "--timeout", "0", "a.tar", "/t"],
        ["unpack", "--chunk-size", "0", "a.tar", "/t"],
        ["pack", "--compresslevel", "10", "src", "a.tar"],
    ],
)
def test_main_usage_errors_exit_2(argv, capsys, monkeypatch):
    for variable in stage.RANK_VARIABLES:
        monkeypatch.delenv(variable, raising=False)

    with pytest.raises(SystemExit) as raised:
        stage.main(argv)

    assert raised.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("error:") == 1


def test_usage_error_silent_on_other_ranks(capsys, monkeypatch):
    monkeypatch.setenv("PMI_RANK", "3")

    with pytest.raises(SystemExit) as raised:
        stage.main(["unpack"])

    assert raised.value.code == EXIT_USAGE
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize(
    ("environment", "rank"),
    [
        ({}, None),
        ({"PMI_RANK": "2"}, 2),
        ({"OMPI_COMM_WORLD_RANK": "0"}, 0),
        ({"SLURM_PROCID": "17"}, 17),
        ({"PMI_RANK": ""}, None),
    ],
)
def test_rank_from_environment(environment, rank, monkeypatch):
    for variable in stage.RANK_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)

    assert stage.rank_from_environment() == rank


STANDALONE_IMPORT = """
import importlib.util, sys
package = importlib.util.find_spec("dask_mpi").submodule_search_locations[0]
spec = importlib.util.spec_from_file_location("stage", package + "/stage.py")
module = importlib.util.module_from_spec(spec)
sys.modules["stage"] = module
spec.loader.exec_module(module)
print(sorted(m for m in ("mpi4py", "dask", "distributed") if m in sys.modules))
"""


def test_import_skips_mpi_and_dask():
    # The module is loaded from its file, because importing dask_mpi.stage
    # runs dask_mpi/__init__.py, which imports dask.
    completed = subprocess.run(
        [sys.executable, "-c", STANDALONE_IMPORT],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""
    assert completed.stdout == "[]\n"
