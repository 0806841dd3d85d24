"""Launch without mpi4py: ranks from the launcher, messages through files.

Where mpi4py cannot be used (a site MPI it was not built against, or
``srun --mpi=none``), each process learns its rank and the job's size from
the variables its launcher sets, and the ranks exchange the package's
messages as files in a private directory beside the scheduler file, on a
filesystem every rank can read. The launch core runs unchanged on top.

Limits of this mode: there is no MPI_Abort, so a rank that must end the
job early can only end itself (the others notice that the scheduler is
gone and follow), and polling a directory on a shared filesystem is slower
than MPI, so ranks poll it at most four times a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import shutil
import socket
import time
import uuid
from typing import Any

from ._world import TAG_CONTROL, Channel

# (rank variable, size variable) of each launcher, most specific first.
_RANK_VARIABLES = (
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
    ("PMI_RANK", "PMI_SIZE"),
    ("PMIX_RANK", "OMPI_COMM_WORLD_SIZE"),
    ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS"),
    ("SLURM_PROCID", "SLURM_NTASKS"),
    ("FLUX_TASK_RANK", "FLUX_JOB_SIZE"),
)

# Variables that name the job (or job step) uniquely, by launcher.
_JOB_VARIABLES = (
    ("SLURM_JOB_ID", "SLURM_STEP_ID"),
    ("PMIX_NAMESPACE",),
    ("OMPI_MCA_ess_base_jobid",),
    ("FLUX_JOB_ID",),
    ("PBS_JOBID",),
    ("LSB_JOBID",),
    ("DASK_MPI_JOB_ID",),
)


def rank_and_size() -> tuple[int, int] | None:
    """Return (rank, size) from the launcher's variables, or None."""
    for rank_name, size_name in _RANK_VARIABLES:
        rank, size = os.environ.get(rank_name), os.environ.get(size_name)
        if rank and size and rank.isdigit() and size.isdigit():
            return int(rank), int(size)
    return None


def _hydra_job_name() -> str | None:
    """Ask MPICH's Hydra for the job's key-value space name over PMI-1.

    Hydra sets no job id variable, but every process of a job shares one
    KVS name. The PMI session is finalized right away, so Hydra treats a
    normal exit of this process as normal.
    """
    fd = os.environ.get("PMI_FD")
    if not fd or not fd.isdigit():
        return None
    try:
        with socket.socket(fileno=int(fd)) as connection:
            stream = connection.makefile("rw")
            replies = []
            for command in (
                "init pmi_version=1 pmi_subversion=1",
                "get_my_kvsname",
                "finalize",
            ):
                stream.write(f"cmd={command}\n")
                stream.flush()
                replies.append(stream.readline())
            connection.detach()
    except OSError:
        return None
    for field in replies[1].split():
        if field.startswith("kvsname="):
            return field.split("=", 1)[1]
    return None


def job_id() -> str | None:
    """Return an identifier shared by all ranks of this job, or None."""
    for names in _JOB_VARIABLES:
        values = [os.environ.get(name) for name in names]
        if values[0]:
            return ".".join(v for v in values if v)
    return _hydra_job_name()


class _Sent:
    """A completed send; files are written before :meth:`post` returns."""

    @staticmethod
    def test() -> tuple[bool, None]:
        return True, None


class FileWorld(Channel):
    """Messages as files in a directory that every rank can read.

    Parameters
    ----------
    directory
        Private to the job: created with mode 0700, since messages carry
        the job's TLS credentials.
    rank, size
        This process's rank and the job's size, from the launcher.
    """

    poll_first = 0.005
    poll_max = 0.25
    poll_brisk = 0.02

    def __init__(self, directory: str, rank: int, size: int):
        self.directory = directory
        self.rank = rank
        self.size = size
        self.comm = None
        self._sequence = 0
        # Why the job talks through files, for the start-up log.
        self.reason = ""

    @classmethod
    def for_job(cls, scheduler_file: str) -> FileWorld:
        """Return the FileWorld of this job, beside ``scheduler_file``."""
        found = rank_and_size()
        rank, size = found if found else (0, 1)
        name = job_id() or "single"
        tag = hashlib.sha1(name.encode()).hexdigest()[:12]
        directory = f"{scheduler_file}.dask-mpi-{tag}"
        return cls(directory, rank, size)

    def _inbox(self, rank: int) -> str:
        return os.path.join(self.directory, f"to-{rank}")

    def open(self, timeout: float) -> None:
        """Create this rank's inbox in the job's private directory."""
        import atexit

        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        os.makedirs(self._inbox(self.rank), mode=0o700, exist_ok=True)
        atexit.register(self.close)

    def close(self) -> None:
        """Remove this rank's inbox, and the directory once it is empty."""
        shutil.rmtree(self._inbox(self.rank), ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(self.directory)

    def post(self, obj: Any, dest: int, tag: int = TAG_CONTROL) -> Any:
        """Write ``obj`` into the inbox of ``dest`` atomically."""
        self._sequence += 1
        inbox = self._inbox(dest)
        os.makedirs(inbox, mode=0o700, exist_ok=True)
        name = f"{time.time_ns():020d}-{self._sequence:08d}-{self.rank}-{tag}"
        temporary = os.path.join(inbox, f".{uuid.uuid4().hex}")
        with open(temporary, "wb") as f:
            pickle.dump(obj, f)
        os.replace(temporary, os.path.join(inbox, name))
        return _Sent()

    def poll(self, source: int | None = None, tag: int = TAG_CONTROL) -> Any:
        """Return and remove the oldest matching message, or None."""
        try:
            names = sorted(os.listdir(self._inbox(self.rank)))
        except FileNotFoundError:
            return None
        for name in names:
            if name.startswith("."):
                continue
            _, _, sender, message_tag = name.split("-")
            if int(message_tag) != tag or source not in (None, int(sender)):
                continue
            path = os.path.join(self._inbox(self.rank), name)
            with open(path, "rb") as f:
                obj = pickle.load(f)
            os.unlink(path)
            return int(sender), obj
        return None

    def abort(self, code: int) -> None:
        """End this rank; without MPI it cannot end the others."""
        from ._world import flush_output

        flush_output()
        raise SystemExit(code)
