"""Make the modules of ``tests/scripts`` importable from the integration tests.

The scripts that MPI ranks run share ``cluster_report`` with the tests, which
read its ``REPORT`` lines.
"""

from __future__ import annotations

import sys
from pathlib import Path

SCRIPTS_DIR = str(Path(__file__).resolve().parent.parent / "scripts")
if SCRIPTS_DIR not in sys.path:
    sys.path.insert(0, SCRIPTS_DIR)
