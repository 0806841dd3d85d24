"""Stage a packed Python environment onto the node-local disk of every node.

Thousands of ranks that import ``distributed`` and ``mpi4py`` from a parallel
filesystem each make thousands of metadata calls, and the filesystem serves
them one by one. This tool replaces that with one read of one archive::

    python -m dask_mpi.stage pack /shared/venv /shared/venv.tar
    mpirun -np N python -m dask_mpi.stage unpack /shared/venv.tar /tmp/venv
    mpirun -np N /tmp/venv/bin/python -m dask_mpi.cli ...

``unpack`` groups the ranks by node. Rank 0 alone reads the archive and sends
it over MPI to the lowest rank of every other node. That rank (the node's
leader) unpacks it into the target directory, and every rank of the node waits
for it. A marker file in the target records the archive's size and SHA-256
digest, so running ``unpack`` again on a node that has the same archive skips
the transfer and the unpacking.

The module imports only the standard library at import time and mpi4py inside
``unpack``, because it runs before the staged environment exists.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import itertools
import json
import os
import queue
import shutil
import socket
import stat
import sys
import tarfile
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, NoReturn, TextIO

if TYPE_CHECKING:
    from _typeshed import SupportsWrite
    from mpi4py import MPI

PROG = "python -m dask_mpi.stage"

# Name of the file in a staged target that records which archive it came from.
MARKER_NAME = ".dask-mpi-stage.json"
# Replaced in TARGET by the host name of the node, e.g. /tmp/venv-{host}.
HOST_PLACEHOLDER = "{host}"

EXIT_FAILURE = 1
EXIT_USAGE = 2

# Bytes per broadcast message. Large enough that the per-message latency is
# negligible, small enough that the few chunks a leader keeps in memory (see
# WRITER_QUEUE_CHUNKS) cost little.
DEFAULT_CHUNK_SIZE = 64 * 1024 * 1024
# Chunks stay well below 2 GiB, the largest count that MPI-3 calls take as a C int.
MAX_CHUNK_SIZE = 1024 * 1024 * 1024
# Seconds that the whole unpack step may take on rank 0. Ten minutes are enough
# to move and unpack a few gigabytes at tens of MB/s.
DEFAULT_TIMEOUT = 600.0
# Extra seconds that leaders and the other ranks wait past rank 0's deadline,
# so that rank 0 times out first and its message is the one that is printed.
LEADER_GRACE = 5.0
MEMBER_GRACE = 10.0
# Seconds between two tests of a pending request. The sleep grows from the
# minimum to the maximum while a request stays pending, so that a broadcast
# in progress is driven often and an idle wait costs little CPU.
POLL_MIN = 0.0001
POLL_MAX = 0.02
# MPICH moves a large message only while a rank is inside an MPI call, so the
# waits of a chunk broadcast sleep at most this long.
TRANSFER_POLL_MAX = 0.001
# Chunks queued for the writer thread, beyond the one it is writing. Each
# leader keeps at most this many chunks plus two in memory.
WRITER_QUEUE_CHUNKS = 2
# Bytes read at a time when computing an archive's digest.
DIGEST_BLOCK = 4 * 1024 * 1024
# Failed nodes listed by name in one error message.
MAX_LISTED_FAILURES = 3

# Environment variables that launchers set to the rank of each process:
# MPICH Hydra, Open MPI, PMIx, Slurm's srun, Cray PALS and Flux.
RANK_VARIABLES = (
    "PMI_RANK",
    "OMPI_COMM_WORLD_RANK",
    "PMIX_RANK",
    "SLURM_PROCID",
    "PALS_RANKID",
    "FLUX_TASK_RANK",
)


class StageError(RuntimeError):
    """A failure with a message for the user and the exit code to end with."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class StageTimeout(StageError, TimeoutError):
    """Raised when a wait on other ranks passes the deadline of the unpack step.

    NOTE: TimeoutError is a subclass of OSError, so an ``except OSError`` around
    code that can raise this must come after an ``except StageTimeout``.
    """

    def __init__(self, activity: str, timeout: float) -> None:
        super().__init__(
            f"timed out after {timeout:g} s while {activity}; raise --timeout "
            f"if the archive or the job is large",
            EXIT_FAILURE,
        )
        self.activity = activity
        self.timeout = timeout


# ---------------------------------------------------------------------------
# Packing


@dataclass(frozen=True)
class PackSummary:
    """Summary of one archive written by ``pack_directory``."""

    archive: Path
    members: int
    content_bytes: int
    archive_bytes: int
    seconds: float


def _normalize_member(member: tarfile.TarInfo) -> tarfile.TarInfo:
    # Whole seconds keep .pyc files valid, because a timestamp .pyc stores the
    # source's mtime as an integer. Integer mtimes also avoid one PAX header per
    # member. Owner fields are cleared, so the files belong to the user who
    # unpacks them.
    member.mtime = int(member.mtime)
    member.uid = member.gid = 0
    member.uname = member.gname = ""
    return member


def _walk_sorted(source: Path) -> Iterator[Path]:
    """Yield every entry below ``source``, directories before their contents.

    Symbolic links to directories are yielded but not followed.
    """
    for directory, dirnames, filenames in os.walk(source):
        dirnames.sort()
        for name in [*dirnames, *sorted(filenames)]:
            yield Path(directory, name)


def _check_pack_paths(source: Path, archive: Path) -> None:
    if not source.is_dir():
        raise StageError(f"source directory not found: {source}", EXIT_USAGE)
    if not archive.parent.is_dir():
        raise StageError(
            f"directory of the archive not found: {archive.parent}", EXIT_USAGE
        )
    if archive.resolve().is_relative_to(source.resolve()):
        raise StageError(
            f"archive {archive} is inside the source directory {source}: "
            f"write it somewhere else",
            EXIT_USAGE,
        )


def _open_tar(raw: IO[bytes], compresslevel: int | None) -> tarfile.TarFile:
    if compresslevel is None:
        return tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT)
    return tarfile.open(
        fileobj=raw,
        mode="w:gz",
        format=tarfile.PAX_FORMAT,
        compresslevel=compresslevel,
    )


def _write_tar(
    raw: IO[bytes], source: Path, compresslevel: int | None
) -> tuple[int, int]:
    """Write the tree below ``source`` as a tar stream; return members and bytes."""
    members = 0
    content_bytes = 0
    with _open_tar(raw, compresslevel) as tar:
        for path in _walk_sorted(source):
            member = tar.gettarinfo(path, str(path.relative_to(source)))
            supported = member is not None and (
                member.isreg() or member.isdir() or member.issym() or member.islnk()
            )
            if member is None or not supported:
                raise StageError(
                    f"cannot pack {path}: it is a socket, FIFO or device, and "
                    f"only files, directories and links are supported"
                )
            member = _normalize_member(member)
            if member.isreg():
                with open(path, "rb") as content:
                    tar.addfile(member, content)
                content_bytes += member.size
            else:
                tar.addfile(member)
            members += 1
    return members, content_bytes


def pack_directory(
    source: str | os.PathLike[str],
    archive: str | os.PathLike[str],
    compresslevel: int | None = None,
) -> PackSummary:
    """Write every file, link and directory below ``source`` to a tar archive.

    Member names are relative to ``source``. Nothing is left out, because
    ``__pycache__`` directories make imports faster. Symbolic links are stored
    as links. The archive is gzip-compressed when ``compresslevel`` (1 to 9) is
    given. It is written to a temporary file next to ``archive`` and renamed,
    so ``archive`` is either the old file or the complete new one.

    Raises StageError when ``source`` is missing, the archive's directory is
    missing or unwritable, or a file cannot be read.
    """
    started = time.monotonic()
    source_path = Path(source)
    archive_path = Path(archive)
    _check_pack_paths(source_path, archive_path)
    try:
        descriptor, temporary = tempfile.mkstemp(
            prefix=f".{archive_path.name}.", suffix=".tmp", dir=archive_path.parent
        )
    except OSError as error:
        raise StageError(
            f"cannot write to {archive_path.parent}: {error.strerror}", EXIT_USAGE
        ) from None

    try:
        with os.fdopen(descriptor, "wb") as raw:
            members, content_bytes = _write_tar(raw, source_path, compresslevel)
        # mkstemp creates the file readable by its owner only.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, archive_path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        where = error.filename or archive_path
        raise StageError(f"cannot pack {where}: {error.strerror}") from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise

    return PackSummary(
        archive_path,
        members,
        content_bytes,
        archive_path.stat().st_size,
        time.monotonic() - started,
    )


# ---------------------------------------------------------------------------
# Targets and markers


@dataclass(frozen=True)
class ArchiveIdentity:
    """Size and SHA-256 digest of an archive, as stored in the marker file."""

    size: int
    sha256: str


def expand_target(template: str, host: str) -> Path:
    """Replace ``{host}`` in ``template`` by ``host`` and make the path absolute."""
    expanded = os.path.expanduser(template.replace(HOST_PLACEHOLDER, host))
    return Path(os.path.abspath(expanded))


def read_marker(target: Path) -> ArchiveIdentity | None:
    """Return the identity recorded in ``target``'s marker, or None if unreadable."""
    try:
        recorded = json.loads((target / MARKER_NAME).read_text())
        return ArchiveIdentity(int(recorded["size"]), str(recorded["sha256"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_marker(
    directory: Path, identity: ArchiveIdentity, details: dict[str, Any]
) -> None:
    """Write the marker that records ``identity`` into ``directory``.

    ``details`` (the archive's path, the host and rank that unpacked it) are
    stored for people reading the marker, and ignored by ``read_marker``.
    """
    record = {**asdict(identity), **details, "staged_at": time.time()}
    (directory / MARKER_NAME).write_text(json.dumps(record, indent=2) + "\n")


def is_staged(target: Path, identity: ArchiveIdentity) -> bool:
    """Return whether ``target`` is a directory unpacked from the same archive."""
    return (
        target.is_dir() and not target.is_symlink() and read_marker(target) == identity
    )


def identify_archive(
    archive: Path, deadline: float = float("inf"), timeout: float = 0.0
) -> ArchiveIdentity:
    """Read ``archive`` once and return its size and SHA-256 digest.

    Raises StageError with exit code 2 when the archive is missing, is not a
    regular file, cannot be read or is not a tar archive, and StageTimeout when
    reading passes ``deadline`` (a ``time.monotonic`` value).
    """
    if not archive.exists():
        raise StageError(f"archive not found: {archive}", EXIT_USAGE)
    if not archive.is_file():
        raise StageError(f"archive is not a regular file: {archive}", EXIT_USAGE)

    digest = hashlib.sha256()
    size = 0
    try:
        if not tarfile.is_tarfile(archive):
            raise StageError(f"archive is not a tar file: {archive}", EXIT_USAGE)
        with open(archive, "rb") as stream:
            while block := stream.read(DIGEST_BLOCK):
                digest.update(block)
                size += len(block)
                if time.monotonic() > deadline:
                    break
    except OSError as error:
        raise StageError(
            f"cannot read archive {archive}: {error.strerror}", EXIT_USAGE
        ) from None
    if time.monotonic() > deadline:
        raise StageTimeout(f"reading {archive}", timeout)
    return ArchiveIdentity(size, digest.hexdigest())


# ---------------------------------------------------------------------------
# Node-local work of a leader


@dataclass
class Preparation:
    """State of one node's target before the transfer."""

    target: Path
    staging: Path | None = None
    error: str | None = None

    @property
    def needs_archive(self) -> bool:
        return self.staging is not None


def _check_replaceable(target: Path) -> None:
    if target.is_symlink() or not target.is_dir():
        raise StageError(
            f"TARGET {target} exists and is not a directory: remove it or "
            f"choose another TARGET",
            EXIT_USAGE,
        )
    if read_marker(target) is None and any(target.iterdir()):
        raise StageError(
            f"TARGET {target} is not empty and has no {MARKER_NAME}, so it was "
            f"not made by this tool: remove it or choose another TARGET",
            EXIT_USAGE,
        )


def prepare_target(target: Path, identity: ArchiveIdentity) -> Preparation:
    """Check ``target`` and create an empty staging directory next to it.

    Returns a Preparation without a staging directory when ``target`` already
    contains this archive, and one with an error message when ``target`` cannot
    be written or is a directory that this tool did not make.
    """
    try:
        if is_staged(target, identity):
            return Preparation(target)
        if os.path.lexists(target):
            _check_replaceable(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent)
    except StageError as error:
        return Preparation(target, error=error.message)
    except FileExistsError as error:
        # mkdir(exist_ok=True) raises this when a parent is not a directory.
        message = f"cannot create {error.filename}: it exists and is not a directory"
        return Preparation(target, error=message)
    except OSError as error:
        where = error.filename or target
        return Preparation(target, error=f"cannot write {where}: {error.strerror}")
    return Preparation(target, staging=Path(staging))


class UnsafeMemberError(tarfile.TarError):
    """Raised for an archive member that would be written outside the target."""


class MemberChecker:
    """Tar extraction filter for archives unpacked into a new, empty directory.

    It rejects absolute member names, names with "..", and names that lead
    through or onto a symbolic link of the archive. Symbolic links may point
    anywhere, because a virtual environment's ``bin/python`` is an absolute link
    to the base interpreter. Set-user-ID, set-group-ID and sticky bits and group
    and other write bits are cleared.

    Unlike the standard library's "tar" filter it makes no system call per
    member. That filter resolves the path of every member with realpath, which
    took about a third of the extraction time of a 14,000-member archive.
    """

    UNSAFE_MODE_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | 0o022

    def __init__(self) -> None:
        self.links: set[PurePosixPath] = set()

    def _check_name(self, name: str, member: str) -> PurePosixPath:
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts:
            raise UnsafeMemberError(f"member {member!r} has an unsafe path {name!r}")
        for parent in [path, *path.parents]:
            if parent in self.links:
                raise UnsafeMemberError(
                    f"member {member!r} leads through the symbolic link {str(parent)!r}"
                )
        return path

    def __call__(self, member: tarfile.TarInfo, destination: str) -> tarfile.TarInfo:
        path = self._check_name(member.name, member.name)
        if member.islnk():
            self._check_name(member.linkname, member.name)
        elif member.issym():
            self.links.add(path)
        elif not (member.isreg() or member.isdir()):
            raise UnsafeMemberError(
                f"member {member.name!r} is a device or FIFO, which a Python "
                f"environment does not contain"
            )
        member.mode &= ~self.UNSAFE_MODE_BITS
        return member


def extract_archive(archive_file: Path, destination: Path) -> int:
    """Unpack a tar archive, compressed or not, and return its number of members.

    Raises UnsafeMemberError for a member rejected by MemberChecker.
    """
    checker = MemberChecker()
    with tarfile.open(archive_file, "r:*") as tar:
        if hasattr(tarfile, "fully_trusted_filter"):
            # Python 3.10.12, 3.11.4 and later call the filter on each member
            # while extracting, so a compressed archive is read only once.
            tar.extractall(destination, numeric_owner=True, filter=checker)
        else:
            members = [checker(member, str(destination)) for member in tar]
            tar.extractall(destination, members=members, numeric_owner=True)
        return len(tar.getmembers())


def install_target(
    preparation: Preparation,
    archive_file: Path,
    identity: ArchiveIdentity,
    details: dict[str, Any],
) -> int:
    """Unpack ``archive_file`` and rename the result to the target.

    The tree is unpacked into the staging directory, gets its marker and then
    replaces the target by rename, so the target is never half unpacked. A
    previous target is moved into the staging directory first and removed with
    it. Returns the number of members unpacked.
    """
    assert preparation.staging is not None
    target = preparation.target
    tree = preparation.staging / "tree"
    tree.mkdir()
    members = extract_archive(archive_file, tree)
    write_marker(tree, identity, details)
    archive_file.unlink()

    previous = preparation.staging / "previous"
    if os.path.lexists(target):
        os.rename(target, previous)
    try:
        os.rename(tree, target)
    except OSError:
        if os.path.lexists(previous):
            os.rename(previous, target)
        raise
    shutil.rmtree(preparation.staging, ignore_errors=True)
    return members


def discard_staging(preparation: Preparation) -> None:
    """Remove the staging directory of ``preparation``, if it has one."""
    if preparation.staging is not None:
        shutil.rmtree(preparation.staging, ignore_errors=True)


# ---------------------------------------------------------------------------
# Non-blocking collectives with a deadline
#
# A rank blocked in MPI_Bcast or MPI_Barrier spins a core and cannot notice a
# deadline, so every wait here starts a non-blocking operation and tests it.


class Clock:
    """Deadline of this rank, with the timeout reported when it passes."""

    def __init__(self, started: float, timeout: float, grace: float = 0.0) -> None:
        self.timeout = timeout + grace
        self.deadline = started + self.timeout

    def check(self, activity: str) -> None:
        """Raise StageTimeout if the deadline has passed."""
        if time.monotonic() > self.deadline:
            raise StageTimeout(activity, self.timeout)

    def wait(
        self, request: MPI.Request, activity: str, poll_max: float = POLL_MAX
    ) -> None:
        """Test ``request`` until it completes, sleeping between the tests.

        Raises StageTimeout when the deadline passes first.
        """
        delay = POLL_MIN
        while not request.Test():
            self.check(activity)
            time.sleep(delay)
            delay = min(delay * 2, poll_max)


def _int_buffer(value: int = 0) -> bytearray:
    return bytearray(value.to_bytes(8, "little", signed=True))


def _buffer_ints(buffer: bytes | bytearray) -> list[int]:
    return [
        int.from_bytes(buffer[start : start + 8], "little", signed=True)
        for start in range(0, len(buffer), 8)
    ]


def _displacements(counts: list[int]) -> list[int]:
    return [0, *itertools.accumulate(counts)][:-1]


def _split_payloads(data: bytearray, counts: list[int]) -> list[bytearray]:
    return [
        data[start : start + count]
        for start, count in zip(_displacements(counts), counts)
    ]


def bcast_int(
    comm: MPI.Comm, value: int, clock: Clock, activity: str, root: int = 0
) -> int:
    """Broadcast one integer from ``root`` and return it on every rank."""
    from mpi4py import MPI

    buffer = _int_buffer(value)
    clock.wait(comm.Ibcast([buffer, MPI.BYTE], root), activity)
    return _buffer_ints(buffer)[0]


def bcast_json(
    comm: MPI.Comm, value: Any, clock: Clock, activity: str, root: int = 0
) -> Any:
    """Broadcast a JSON-serializable value from ``root`` and return it."""
    from mpi4py import MPI

    is_root = comm.Get_rank() == root
    payload = json.dumps(value).encode() if is_root else b""
    size = bcast_int(comm, len(payload), clock, activity, root)
    buffer = bytearray(payload) if is_root else bytearray(size)
    clock.wait(comm.Ibcast([buffer, MPI.BYTE], root), activity)
    return json.loads(buffer)


def gather_json(
    comm: MPI.Comm, value: Any, clock: Clock, activity: str, root: int = 0
) -> list[Any] | None:
    """Gather a JSON-serializable value of every rank on ``root``.

    Returns the values in rank order on ``root`` and None on the other ranks.
    """
    from mpi4py import MPI

    payload = bytearray(json.dumps(value).encode())
    if comm.Get_rank() != root:
        request = comm.Igather([_int_buffer(len(payload)), MPI.BYTE], None, root)
        clock.wait(request, activity)
        clock.wait(comm.Igatherv([payload, MPI.BYTE], None, root), activity)
        return None

    sizes = bytearray(8 * comm.Get_size())
    request = comm.Igather(
        [_int_buffer(len(payload)), MPI.BYTE], [sizes, MPI.BYTE], root
    )
    clock.wait(request, activity)
    counts = _buffer_ints(sizes)
    received = bytearray(sum(counts))
    request = comm.Igatherv(
        [payload, MPI.BYTE],
        [received, (counts, _displacements(counts)), MPI.BYTE],
        root,
    )
    clock.wait(request, activity)
    return [json.loads(part) for part in _split_payloads(received, counts)]


def allgather_strings(
    comm: MPI.Comm, value: str, clock: Clock, activity: str
) -> list[str]:
    """Return the ``value`` of every rank of ``comm``, in rank order."""
    from mpi4py import MPI

    payload = bytearray(value.encode())
    sizes = bytearray(8 * comm.Get_size())
    request = comm.Iallgather([_int_buffer(len(payload)), MPI.BYTE], [sizes, MPI.BYTE])
    clock.wait(request, activity)
    counts = _buffer_ints(sizes)
    received = bytearray(sum(counts))
    request = comm.Iallgatherv(
        [payload, MPI.BYTE], [received, (counts, _displacements(counts)), MPI.BYTE]
    )
    clock.wait(request, activity)
    return [part.decode() for part in _split_payloads(received, counts)]


# ---------------------------------------------------------------------------
# Unpacking on every node


@dataclass
class NodeResult:
    """Outcome of staging on one node, as gathered on rank 0."""

    host: str
    rank: int
    target: str
    action: str  # "unpacked", "present" or "failed"
    received_bytes: int = 0
    receive_seconds: float = 0.0
    members: int = 0
    unpack_seconds: float = 0.0
    error: str | None = None
    exit_code: int = 0


def split_nodes(world: MPI.Comm, host: str, clock: Clock) -> tuple[MPI.Comm, MPI.Comm]:
    """Return the communicator of this node's ranks and the leaders' one.

    Ranks are grouped by shared memory and then by host name. The second split
    matters when processes of one machine run in separate UTS namespaces
    that simulate several hosts, which MPI still treats as one node. Each node's
    lowest world rank is its leader and rank 0 of the node communicator. The
    leaders' communicator is MPI.COMM_NULL on every other rank.
    """
    from mpi4py import MPI

    rank = world.Get_rank()
    shared = world.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
    hosts = sorted(set(allgather_strings(shared, host, clock, "exchanging host names")))
    node = shared.Split(hosts.index(host), key=rank)
    shared.Free()
    leaders = world.Split(0 if node.Get_rank() == 0 else MPI.UNDEFINED, key=rank)
    return node, leaders


def format_failures(results: Sequence[NodeResult]) -> str:
    """Return one message naming the first failed nodes and their errors."""
    failed = [result for result in results if result.error is not None]
    listed = "; ".join(
        f"{result.host} (rank {result.rank}): {result.error}"
        for result in failed[:MAX_LISTED_FAILURES]
    )
    more = len(failed) - MAX_LISTED_FAILURES
    if more > 0:
        listed += f"; and {_count(more, 'more node')}"
    return (
        f"staging failed on {len(failed)} of {_count(len(results), 'node')}: {listed}"
    )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def format_node_line(result: NodeResult) -> str:
    """Return the report line of one node."""
    node = f"{result.host} (rank {result.rank})"
    if result.action == "present":
        return f"{node}: already staged in {result.target}"
    if result.action == "failed":
        return f"{node}: failed: {result.error}"
    return (
        f"{node}: transferred {result.received_bytes} bytes in "
        f"{result.receive_seconds:.2f} s, unpacked {result.members} members in "
        f"{result.unpack_seconds:.2f} s into {result.target}"
    )


def _print(line: str, stream: TextIO | None = None) -> None:
    # One write per line, so mpirun does not interleave the lines of ranks.
    target = stream or sys.stdout
    target.write(line + "\n")
    target.flush()


def print_error(message: str) -> None:
    """Print ``message`` as this tool's error message on standard error."""
    _print(f"{PROG}: error: {message}", sys.stderr)


class ChunkWriter:
    """Thread that hashes the archive's chunks and writes them to a file.

    Hashing and writing release the GIL, so the main thread can drive the
    next broadcast meanwhile. A write error is recorded and later chunks are
    only hashed, because the broadcast must go on.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.digest = hashlib.sha256()
        self.size = 0
        self.error: str | None = None
        self._queue: queue.Queue[bytearray | None] = queue.Queue(WRITER_QUEUE_CHUNKS)
        self._thread = threading.Thread(
            target=self._run, name="dask-mpi-stage-writer", daemon=True
        )
        self._thread.start()

    def put(self, chunk: bytearray, clock: Clock, activity: str) -> None:
        """Queue ``chunk``, waiting while the queue is full."""
        self._put(chunk, clock, activity)

    def close(self, clock: Clock, activity: str) -> None:
        """Wait until every queued chunk is written and the file is closed."""
        self._put(None, clock, activity)
        while self._thread.is_alive():
            self._thread.join(POLL_MAX)
            clock.check(activity)

    def _put(self, chunk: bytearray | None, clock: Clock, activity: str) -> None:
        while True:
            try:
                self._queue.put(chunk, timeout=POLL_MAX)
                return
            except queue.Full:
                clock.check(activity)

    def _run(self) -> None:
        with contextlib.ExitStack() as stack:
            output: IO[bytes] | None = None
            try:
                if self.path is not None:
                    output = stack.enter_context(open(self.path, "wb"))
            except OSError as error:
                self.error = f"cannot write {self.path}: {error.strerror}"
            while (chunk := self._queue.get()) is not None:
                self.digest.update(chunk)
                self.size += len(chunk)
                if output is None or self.error is not None:
                    continue
                try:
                    output.write(chunk)
                except OSError as error:
                    self.error = f"cannot write {self.path}: {error.strerror}"


class Transfer:
    """Broadcast of the archive from rank 0 of ``comm`` to its other ranks.

    The archive goes in chunks of ``chunk_size`` bytes. Their lengths follow
    from the archive's size, which every rank received before, so only data
    is sent.
    """

    def __init__(
        self,
        comm: MPI.Comm,
        identity: ArchiveIdentity,
        chunk_size: int,
        clock: Clock,
    ) -> None:
        self.comm = comm
        self.identity = identity
        self.chunk_size = chunk_size
        self.clock = clock
        self.error: str | None = None
        self.writer: ChunkWriter | None = None

    def _lengths(self) -> Iterator[int]:
        for offset in range(0, self.identity.size, self.chunk_size):
            yield min(self.chunk_size, self.identity.size - offset)

    def _bcast(self, chunk: bytearray, activity: str) -> None:
        from mpi4py import MPI

        request = self.comm.Ibcast([chunk, MPI.BYTE], 0)
        self.clock.wait(request, activity, poll_max=TRANSFER_POLL_MAX)

    def send(self, archive: Path, sink: Path | None) -> None:
        """Broadcast ``archive`` from this rank, also writing it to ``sink``.

        If reading fails, the rest is sent as zeros so that the receivers'
        broadcasts still complete, and their digest check fails.
        """
        self.writer = ChunkWriter(sink)
        with contextlib.ExitStack() as stack:
            stream: io.BufferedReader | None = None
            try:
                stream = stack.enter_context(open(archive, "rb"))
            except OSError as error:
                self.error = f"cannot read archive {archive}: {error.strerror}"
            for length in self._lengths():
                chunk = bytearray(length)
                if stream is not None and self.error is None:
                    self._read_into(stream, chunk, archive)
                self._bcast(chunk, "sending the archive")
                self.writer.put(chunk, self.clock, "sending the archive")
        self.writer.close(self.clock, "writing the archive")

    def _read_into(
        self, stream: io.BufferedReader, chunk: bytearray, archive: Path
    ) -> None:
        view = memoryview(chunk)
        filled = 0
        try:
            while filled < len(chunk):
                count = stream.readinto(view[filled:])
                if not count:
                    self.error = f"archive {archive} became shorter while staging"
                    return
                filled += count
        except OSError as error:
            self.error = f"cannot read archive {archive}: {error.strerror}"

    def receive(self, sink: Path) -> None:
        """Receive the archive from rank 0 of ``comm`` and write it to ``sink``."""
        self.writer = ChunkWriter(sink)
        for length in self._lengths():
            chunk = bytearray(length)
            self._bcast(chunk, "receiving the archive")
            self.writer.put(chunk, self.clock, "receiving the archive")
        self.writer.close(self.clock, "writing the archive")

    @property
    def transferred(self) -> int:
        """Bytes sent or received so far."""
        return self.writer.size if self.writer is not None else 0

    def check(self) -> None:
        """Raise StageError if the transfer failed or the bytes do not match."""
        assert self.writer is not None
        error = self.error or self.writer.error
        if error is not None:
            raise StageError(error)
        received = ArchiveIdentity(self.writer.size, self.writer.digest.hexdigest())
        if received != self.identity:
            raise StageError(
                f"received {received.size} bytes with SHA-256 {received.sha256}, "
                f"expected {self.identity.size} bytes with SHA-256 "
                f"{self.identity.sha256}: the archive changed during staging"
            )


@dataclass(frozen=True)
class UnpackRequest:
    """Arguments of the unpack step, the same on every rank."""

    archive: Path
    target: str
    timeout: float = DEFAULT_TIMEOUT
    chunk_size: int = DEFAULT_CHUNK_SIZE


def _read_header(
    leaders: MPI.Comm, request: UnpackRequest, clock: Clock
) -> dict[str, Any]:
    header: dict[str, Any] = {}
    if leaders.Get_rank() == 0:
        try:
            header = asdict(
                identify_archive(request.archive, clock.deadline, clock.timeout)
            )
        except StageTimeout:
            raise  # unpack() aborts the job
        except StageError as error:
            # Every leader learns of the error, so that all ranks exit with it.
            header = {"error": error.message, "exit_code": error.exit_code}
    result: dict[str, Any] = bcast_json(leaders, header, clock, "reading the archive")
    return result


def _check_preparations(
    leaders: MPI.Comm, preparation: Preparation, result: NodeResult, clock: Clock
) -> str | None:
    """Return the message that lists every node whose target is unusable, if any."""
    summary = {"host": result.host, "rank": result.rank, "error": preparation.error}
    gathered = gather_json(leaders, summary, clock, "checking the targets")
    message: str | None = None
    if gathered is not None:
        results = [
            NodeResult(item["host"], item["rank"], "", "failed", error=item["error"])
            for item in gathered
        ]
        if any(result.error for result in results):
            message = format_failures(results)
    verdict: str | None = bcast_json(leaders, message, clock, "checking the targets")
    return verdict


def _transfer(
    leaders: MPI.Comm,
    request: UnpackRequest,
    identity: ArchiveIdentity,
    preparation: Preparation,
    clock: Clock,
) -> Transfer | None:
    """Send the archive from rank 0 to every leader that needs it."""
    from mpi4py import MPI

    is_sender = leaders.Get_rank() == 0
    needs = preparation.needs_archive
    color = 0 if needs or is_sender else MPI.UNDEFINED
    comm = leaders.Split(color, key=leaders.Get_rank())
    if comm == MPI.COMM_NULL:
        return None
    try:
        if comm.Get_size() == 1 and not needs:
            return None
        transfer = Transfer(comm, identity, request.chunk_size, clock)
        sink = preparation.staging / "archive" if preparation.staging else None
        if is_sender:
            transfer.send(request.archive, sink)
        else:
            assert sink is not None
            transfer.receive(sink)
        return transfer
    finally:
        comm.Free()


def _install(
    request: UnpackRequest,
    identity: ArchiveIdentity,
    preparation: Preparation,
    transfer: Transfer | None,
    result: NodeResult,
    started: float,
) -> None:
    if transfer is None or not preparation.needs_archive:
        result.action = "present"
        return
    assert preparation.staging is not None
    result.received_bytes = transfer.transferred
    result.receive_seconds = time.monotonic() - started
    unpack_started = time.monotonic()
    marker = {"archive": str(request.archive), "host": result.host, "rank": result.rank}
    try:
        transfer.check()
        archive_file = preparation.staging / "archive"
        result.members = install_target(preparation, archive_file, identity, marker)
        result.action = "unpacked"
    except (OSError, tarfile.TarError, StageError) as error:
        discard_staging(preparation)
        result.action = "failed"
        result.exit_code = EXIT_FAILURE
        result.error = _describe_install_error(error, request, preparation)
    result.unpack_seconds = time.monotonic() - unpack_started


def _describe_install_error(
    error: Exception, request: UnpackRequest, preparation: Preparation
) -> str:
    if isinstance(error, StageError):
        return error.message
    if isinstance(error, OSError):
        where = error.filename or preparation.target
        return f"cannot unpack into {where}: {error.strerror}"
    return f"cannot unpack {request.archive}: {error}"


def _report(
    results: Sequence[NodeResult],
    request: UnpackRequest,
    identity: ArchiveIdentity,
    started: float,
) -> int:
    for result in results:
        _print(format_node_line(result))
    unpacked = sum(1 for result in results if result.action == "unpacked")
    present = sum(1 for result in results if result.action == "present")
    if any(result.error for result in results):
        print_error(format_failures(results))
        return max(result.exit_code for result in results)
    _print(
        f"staged {request.archive} ({identity.size} bytes) on "
        f"{_count(len(results), 'node')} ({unpacked} unpacked, {present} already "
        f"staged) in {time.monotonic() - started:.2f} s"
    )
    return 0


def lead_node(
    leaders: MPI.Comm, request: UnpackRequest, host: str, rank: int, clock: Clock
) -> int:
    """Stage the archive on this leader's node and return the job's exit code.

    Every leader calls this, rank 0 first among them. Rank 0 prints the
    report and the error messages.
    """
    started = time.monotonic()
    is_first = leaders.Get_rank() == 0
    header = _read_header(leaders, request, clock)
    if "error" in header:
        if is_first:
            print_error(header["error"])
        return int(header["exit_code"])
    identity = ArchiveIdentity(header["size"], header["sha256"])

    preparation = prepare_target(expand_target(request.target, host), identity)
    result = NodeResult(host, rank, str(preparation.target), "present")
    verdict = _check_preparations(leaders, preparation, result, clock)
    if verdict is not None:
        discard_staging(preparation)
        if is_first:
            print_error(verdict)
        return EXIT_USAGE

    transfer_started = time.monotonic()
    transfer = _transfer(leaders, request, identity, preparation, clock)
    _install(request, identity, preparation, transfer, result, transfer_started)

    gathered = gather_json(leaders, asdict(result), clock, "collecting the results")
    code = 0
    if gathered is not None:
        results = [NodeResult(**item) for item in gathered]
        code = _report(results, request, identity, started)
    return bcast_int(leaders, code, clock, "collecting the results")


def unpack(request: UnpackRequest) -> int:
    """Stage ``request.archive`` on every node of the MPI job; return the exit code.

    Every rank of ``MPI.COMM_WORLD`` must call this. Every rank returns the
    same exit code, except that a rank whose wait passes the deadline prints
    a message and aborts the whole job with exit code 1.
    """
    from mpi4py import MPI

    started = time.monotonic()
    world = MPI.COMM_WORLD
    rank = world.Get_rank()
    host = socket.gethostname()
    clock = Clock(started, request.timeout, MEMBER_GRACE)
    try:
        node, leaders = split_nodes(world, host, clock)
        is_leader = node.Get_rank() == 0
        if rank == 0:
            clock = Clock(started, request.timeout)
        elif is_leader:
            clock = Clock(started, request.timeout, LEADER_GRACE)
        code = 0
        if is_leader:
            code = lead_node(leaders, request, host, rank, clock)
        return bcast_int(node, code, clock, "waiting for the node's leader")
    except StageTimeout as error:
        print_error(f"rank {rank} on {host}: {error.message}; aborting the job")
        world.Abort(error.exit_code)
    except Exception:  # noqa: BLE001 - any other failure must end every rank
        print_error(
            f"rank {rank} on {host}: unexpected failure; aborting the job\n"
            f"{traceback.format_exc()}"
        )
        world.Abort(EXIT_FAILURE)
    return EXIT_FAILURE  # not reached: Abort ends the process


# ---------------------------------------------------------------------------
# Command line


def rank_from_environment() -> int | None:
    """Return this process's rank as set by the launcher, or None outside MPI."""
    for variable in RANK_VARIABLES:
        value = os.environ.get(variable, "")
        if value.isdigit():
            return int(value)
    return None


class _RankZeroParser(argparse.ArgumentParser):
    """Parser that prints help and errors on rank 0 only, but exits on all ranks."""

    def _should_print(self) -> bool:
        return rank_from_environment() in (None, 0)

    def print_usage(self, file: SupportsWrite[str] | None = None) -> None:
        if self._should_print():
            super().print_usage(file)

    def print_help(self, file: SupportsWrite[str] | None = None) -> None:
        if self._should_print():
            super().print_help(file)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message and self._should_print():
            sys.stderr.write(message)
        sys.exit(status)


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"invalid value {text}: expected > 0")
    return value


def _chunk_size(text: str) -> int:
    value = int(text)
    if not 0 < value <= MAX_CHUNK_SIZE:
        raise argparse.ArgumentTypeError(
            f"invalid chunk size {text}: expected 1 to {MAX_CHUNK_SIZE} bytes"
        )
    return value


def _compresslevel(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 9:
        raise argparse.ArgumentTypeError(f"invalid level {text}: expected 1 to 9")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Build the parser of the ``pack`` and ``unpack`` commands."""
    parser = _RankZeroParser(prog=PROG, description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    pack = commands.add_parser(
        "pack", help="pack a directory into a tar archive (no MPI needed)"
    )
    pack.add_argument("source", metavar="VENV", help="directory to pack")
    pack.add_argument("archive", metavar="ARCHIVE", help="tar file to write")
    pack.add_argument(
        "--gzip", action="store_true", help="compress the archive with gzip"
    )
    pack.add_argument(
        "--compresslevel",
        type=_compresslevel,
        default=1,
        help="gzip level from 1 (fastest) to 9 (smallest) (default: %(default)s)",
    )

    unpack_command = commands.add_parser(
        "unpack", help="unpack an archive on every node of the MPI job"
    )
    unpack_command.add_argument("archive", metavar="ARCHIVE", help="tar file to stage")
    unpack_command.add_argument(
        "target",
        metavar="TARGET",
        help=f"directory on node-local disk; {HOST_PLACEHOLDER} is replaced by "
        f"the host name",
    )
    unpack_command.add_argument(
        "--timeout",
        type=_positive_float,
        default=DEFAULT_TIMEOUT,
        help="seconds the whole step may take before the job is aborted "
        "(default: %(default)g)",
    )
    unpack_command.add_argument(
        "--chunk-size",
        type=_chunk_size,
        default=DEFAULT_CHUNK_SIZE,
        help="bytes per broadcast message (default: %(default)s)",
    )
    return parser


def _run_pack(arguments: argparse.Namespace) -> int:
    level = arguments.compresslevel if arguments.gzip else None
    try:
        summary = pack_directory(arguments.source, arguments.archive, level)
    except StageError as error:
        print_error(error.message)
        return error.exit_code
    _print(
        f"packed {summary.members} members ({summary.content_bytes} bytes) into "
        f"{summary.archive} ({summary.archive_bytes} bytes) in "
        f"{summary.seconds:.2f} s"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pack`` or ``unpack`` command and return the exit code."""
    arguments = build_parser().parse_args(argv)
    if arguments.command == "pack":
        return _run_pack(arguments)
    request = UnpackRequest(
        Path(arguments.archive).absolute(),
        arguments.target,
        arguments.timeout,
        arguments.chunk_size,
    )
    return unpack(request)


if __name__ == "__main__":
    sys.exit(main())
