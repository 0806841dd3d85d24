"""Deploy a Dask distributed cluster from the ranks of one MPI job.

Importing this package starts no MPI and installs no signal handler; the
entry points do that when called.
"""

from ._client import connect
from ._runner import MPIRunner
from .core import initialize, send_close_signal
from .exceptions import WorldTooSmallException
from .execute import execute

__all__ = [
    "MPIRunner",
    "WorldTooSmallException",
    "connect",
    "execute",
    "initialize",
    "send_close_signal",
]
__version__ = "0.1.0"
