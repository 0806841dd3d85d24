"""The pieces that make start-up and shutdown quick: exit, credentials, polls."""

from __future__ import annotations

import asyncio
import datetime
import logging
import subprocess
import sys
import time

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from dask_mpi import _coordinator, _security

FREEZE_AT_EXIT = """
import atexit, gc
atexit.register(lambda: print("frozen", gc.get_freeze_count() > 0))
from dask_mpi import _exit
_exit.arm()
_exit.arm()
print("before", gc.get_freeze_count())
"""


def run_python(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter; return the finished process."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_exit_freezes_heap_after_handlers():
    done = run_python(FREEZE_AT_EXIT)

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.split("\n")[:2] == ["before 0", "frozen True"]


def test_credentials_use_p256_and_allow_clock_skew():
    security = _security.temporary()
    certificate = x509.load_pem_x509_certificate(security.tls_ca_file.encode())
    now = datetime.datetime.now(datetime.timezone.utc)

    assert isinstance(certificate.public_key(), ec.EllipticCurvePublicKey)
    assert certificate.public_key().curve.name == "secp256r1"
    assert certificate.not_valid_before_utc < now - datetime.timedelta(minutes=30)
    assert certificate.not_valid_after_utc > now + datetime.timedelta(days=300)
    assert security.require_encryption is True
    assert security.tls_worker_cert == security.tls_ca_file
    assert security.tls_scheduler_key == security.tls_client_key


def test_credentials_differ_each_call():
    first, second = _security.temporary(), _security.temporary()

    assert first.tls_client_key != second.tls_client_key


def test_ticker_wakes_early_then_polls_briskly(monkeypatch):
    monkeypatch.setattr(_coordinator, "_TICK", 0.5)

    async def run() -> tuple[float, float, bool]:
        ticker = _coordinator._Ticker()
        started = time.monotonic()
        await ticker.pause()
        idle = time.monotonic() - started

        asyncio.get_running_loop().call_later(0.002, ticker.wake.set)
        started = time.monotonic()
        await ticker.pause()
        woken = time.monotonic() - started
        return idle, woken, ticker.brisk_until > time.monotonic()

    idle, woken, brisk = asyncio.run(run())

    assert idle >= 0.45
    assert woken < 0.4
    assert brisk


HEAVY_MODULES = """
import sys
import dask_mpi
print(sorted(m for m in ("dask", "distributed", "mpi4py", "click", "yaml") if m in sys.modules))
"""


def test_package_import_stays_light():
    done = run_python(HEAVY_MODULES)

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.strip() == "[]"


def test_late_heartbeat_warning_muted_once_ending(caplog):
    scheduler_logger = logging.getLogger("distributed.scheduler")
    late = "Received heartbeat from unregistered worker 'tls://127.0.0.1:1'."
    try:
        _coordinator._mute_ending_warnings()
        _coordinator._mute_ending_warnings()
        with caplog.at_level(logging.WARNING, logger="distributed.scheduler"):
            scheduler_logger.warning(late)
            scheduler_logger.warning(
                "Removing worker 'tls://127.0.0.1:2' caused the cluster to lose "
                "already computed task(s), which will be recomputed elsewhere: {'x'}"
            )
            scheduler_logger.warning("Another warning")
    finally:
        scheduler_logger.removeFilter(_coordinator._drop_ending_warning)

    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["Another warning"]
    assert scheduler_logger.filters.count(_coordinator._drop_ending_warning) == 0
