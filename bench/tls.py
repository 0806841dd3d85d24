"""Cost of TLS per byte and per message, below the scheduler and workers.

The steady-state rows of docs/benchmarks.md run the same cluster with TLS
on and off. This script measures the layers underneath, in one process on
127.0.0.1, each with TLS off and on:

1. distributed's comm (``distributed.comm.connect`` and ``listen``, as
   workers use it): round trips of a 2 MiB message and of a small message;
2. Python's ``ssl`` alone: a one-way stream of 2 MiB ``sendall`` calls,
   read with ``recv_into``, against the same stream over a plain socket;
3. AES-256-GCM alone (``cryptography``), in 16 KiB records, the record
   size of TLS.

CPU time is the process's, so it counts both ends of each connection. The
TLS credentials are dask-mpi's own (``dask_mpi._security.temporary``).
It prints a table and writes it to docs/benchmarks.md under "TLS".

Usage: ``python bench/tls.py [--reps 5] [--mib 64] [--output PATH]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from _args import check_output, positive_int
from _report import replace_section

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "benchmarks.md"
MARK = "<!-- tls benchmark -->"
MIB = 1 << 20
LARGE = 2 * MIB
SMALL_TRIPS = 2000


def credentials():
    from dask_mpi._security import temporary

    return temporary()


async def comm_round_trips(security, payload: bytes, trips: int) -> dict:
    """Echo ``payload`` ``trips`` times; return seconds per trip and CPU per MiB."""
    from distributed.comm import CommClosedError, connect, listen
    from distributed.protocol import to_serialize

    scheme = "tls" if security else "tcp"
    listen_args = security.get_listen_args("worker") if security else {}
    connect_args = security.get_connection_args("worker") if security else {}

    async def echo(comm):
        while True:
            try:
                message = await comm.read()
            except CommClosedError:
                return
            await comm.write(message)

    listener = listen(f"{scheme}://127.0.0.1:0", echo, **listen_args)
    await listener.start()
    comm = await connect(listener.contact_address, **connect_args)
    message = {"op": "echo", "data": to_serialize(payload)}
    for _ in range(min(trips, 20)):
        await comm.write(message)
        await comm.read()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(trips):
        await comm.write(message)
        await comm.read()
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    cipher = comm.extra_info.get("cipher") if security else None
    await comm.close()
    listener.stop()
    moved = 2 * len(payload) * trips / MIB
    return {"trip": wall / trips, "cpu_per_mib": cpu / moved, "cipher": cipher}


def ssl_contexts(security) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Build a server and a client context from the PEM text of ``security``."""
    with tempfile.TemporaryDirectory() as directory:
        cert = os.path.join(directory, "cert.pem")
        key = os.path.join(directory, "key.pem")
        Path(cert).write_text(security.tls_worker_cert)
        Path(key).write_text(security.tls_worker_key)
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(cert, key)
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.load_verify_locations(cert)
        client.check_hostname = False
    return server, client


def raw_stream(contexts, total: int) -> dict:
    """Send ``total`` bytes one way; return MiB/s, CPU per MiB and reads."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    reads = []

    def receive() -> None:
        connection, _ = listener.accept()
        if contexts:
            connection = contexts[0].wrap_socket(connection, server_side=True)
        buffer = memoryview(bytearray(LARGE))
        got = calls = 0
        while got < total:
            got += connection.recv_into(buffer, len(buffer))
            calls += 1
        connection.sendall(b"k")
        reads.append(calls)
        connection.close()

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    sender = socket.create_connection(listener.getsockname())
    if contexts:
        sender = contexts[1].wrap_socket(sender)
    chunk = memoryview(bytearray(LARGE))
    cpu, wall = time.process_time(), time.perf_counter()
    for start in range(0, total, LARGE):
        sender.sendall(chunk[: min(LARGE, total - start)])
    sender.recv(1)
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    thread.join()
    sender.close()
    listener.close()
    mib = total / MIB
    return {"rate": mib / wall, "cpu_per_mib": cpu / mib, "reads": reads[0]}


def aes_gcm(total: int) -> dict:
    """Encrypt ``total`` bytes in 16 KiB records; return MiB/s and CPU per MiB."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    cipher = AESGCM(AESGCM.generate_key(bit_length=256))
    record = os.urandom(16 * 1024)
    nonce = os.urandom(12)
    count = total // len(record)
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(count):
        cipher.encrypt(nonce, record, None)
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    mib = total / MIB
    return {"rate": mib / wall, "cpu_per_mib": cpu / mib}


def median(samples: list[dict], key: str) -> float:
    return statistics.median(sample[key] for sample in samples)


def measure(reps: int, mib: int) -> dict:
    security = credentials()
    contexts = ssl_contexts(security)
    large_trips = max(1, mib * MIB // (2 * LARGE))
    figures: dict = {}
    for name, sec in (("tcp", None), ("tls", security)):
        large = [
            asyncio.run(comm_round_trips(sec, os.urandom(LARGE), large_trips))
            for _ in range(reps)
        ]
        small = [
            asyncio.run(comm_round_trips(sec, b"x" * 100, SMALL_TRIPS))
            for _ in range(reps)
        ]
        raw = [raw_stream(contexts if sec else None, mib * MIB) for _ in range(reps)]
        figures[name] = {
            "large_trip": median(large, "trip"),
            "large_cpu": median(large, "cpu_per_mib"),
            "small_trip": median(small, "trip"),
            "raw_rate": median(raw, "rate"),
            "raw_cpu": median(raw, "cpu_per_mib"),
            "raw_reads": median(raw, "reads"),
            "cipher": large[0]["cipher"],
        }
        print(name, figures[name], flush=True)
    crypto = [aes_gcm(mib * MIB) for _ in range(reps)]
    figures["aes"] = {
        "rate": median(crypto, "rate"),
        "cpu": median(crypto, "cpu_per_mib"),
    }
    return figures


def render(figures: dict, reps: int, mib: int) -> str:
    tcp, tls, aes = figures["tcp"], figures["tls"], figures["aes"]
    cipher = tls["cipher"]
    cipher_text = f"{cipher[0]} over {cipher[1]}" if cipher else "unknown"

    def row(label: str, unit: str, a: float, b: float, scale: float = 1.0) -> str:
        return (
            f"| {label} | {a * scale:.2f} {unit} | {b * scale:.2f} {unit} "
            f"| ×{b / a:.2f} |"
        )

    lines = [
        (
            f"Written by `python bench/tls.py --reps {reps} --mib {mib}`, one "
            "process on 127.0.0.1, with dask-mpi's credentials (P-256). The "
            f"connections negotiated {cipher_text}. Medians of {reps} "
            "repetitions. CPU time counts both ends of each connection."
        ),
        "",
        "| layer and figure | TLS off | TLS on | on / off |",
        "|---|---:|---:|---:|",
        row(
            "distributed comm: round trip of a 2 MiB message",
            "ms",
            tcp["large_trip"],
            tls["large_trip"],
            1e3,
        ),
        row(
            "distributed comm: CPU time per MiB moved",
            "ms",
            tcp["large_cpu"],
            tls["large_cpu"],
            1e3,
        ),
        row(
            "distributed comm: round trip of a 100-byte message",
            "µs",
            tcp["small_trip"],
            tls["small_trip"],
            1e6,
        ),
        row("Python socket, one way: MiB/s", "MiB/s", tcp["raw_rate"], tls["raw_rate"]),
        row(
            "Python socket, one way: CPU time per MiB",
            "ms",
            tcp["raw_cpu"],
            tls["raw_cpu"],
            1e3,
        ),
        row(
            "Python socket, one way: `recv_into` calls per MiB",
            "",
            tcp["raw_reads"] / mib,
            tls["raw_reads"] / mib,
        ),
        "",
        (
            f"AES-256-GCM alone, 16 KiB records: {aes['rate']:.0f} MiB/s, "
            f"{aes['cpu'] * 1e3:.2f} ms of CPU time per MiB encrypted."
        ),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=positive_int, default=5)
    parser.add_argument(
        "--mib",
        type=positive_int,
        default=64,
        help="MiB sent by each stream and each echo test",
    )
    parser.add_argument("--output", type=Path, default=PAGE)
    args = parser.parse_args()
    check_output(parser, args.output)
    figures = measure(args.reps, args.mib)
    table = render(figures, args.reps, args.mib)
    print(table)
    replace_section(args.output, MARK, "TLS", table)


if __name__ == "__main__":
    sys.exit(main())
