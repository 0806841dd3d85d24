"""Try to use a Dask cluster from outside its job, without its credentials.

Usage: ``python security_attacker.py TARGETS_JSON [--plain-only]``, where
TARGETS_JSON is ``{"scheduler": ADDRESS, "workers": [ADDRESS, ...]}``. Only
the host and port of each address are used: every attempt picks its own
scheme. ``--plain-only`` makes only the plain TCP attempts, for a cluster
without TLS: distributed logs a traceback when a TLS handshake reaches its
plain TCP listener.

Attempts on the scheduler:

``client_tcp``
    ``Client("tcp://HOST:PORT")``, then one task.
``client_foreign_certificate``
    ``Client("tls://HOST:PORT", security=Security.temporary())``, a
    self-made certificate that the cluster's CA did not sign, then one task.

Attempts on the scheduler and on every worker, each sending the ``identity``
request and reading the reply:

``comm_tcp``
    A plain TCP comm.
``comm_foreign_certificate``
    A TLS comm with a self-made certificate.
``comm_tls_without_certificate``
    A TLS comm that presents no certificate and checks none.

Prints one ``ATTACK <json>`` line: a list of
``{"attempt", "target", "accepted", "error"}``. ``accepted`` is true when
the task ran or the identity reply arrived.
"""

import asyncio
import json
import ssl
import sys

from distributed import Client
from distributed.comm import connect
from distributed.security import Security

# Seconds each attempt may take; distributed retries a failed connect until
# its timeout, so a rejected attempt takes about this long.
ATTEMPT_TIMEOUT = 5


def host_port(address: str) -> str:
    return address.split("://", 1)[-1]


def unverified_tls_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def run_task(address: str, security) -> None:
    client = await Client(
        address, security=security, timeout=ATTEMPT_TIMEOUT, asynchronous=True
    )
    try:
        result = await asyncio.wait_for(
            client.submit(sum, [1, 2, 3]), ATTEMPT_TIMEOUT
        )
        assert result == 6, result
    finally:
        await client.close()


async def request_identity(address: str, **connection_args) -> None:
    comm = await connect(address, timeout=ATTEMPT_TIMEOUT, **connection_args)
    try:
        await comm.write({"op": "identity", "reply": True})
        await asyncio.wait_for(comm.read(), ATTEMPT_TIMEOUT)
    finally:
        comm.abort()


async def attempt(name: str, target: str, call) -> dict:
    try:
        await asyncio.wait_for(call, 3 * ATTEMPT_TIMEOUT)
    except Exception as error:
        text = f"{type(error).__name__}: {error}"
        return {"attempt": name, "target": target, "accepted": False, "error": text}
    return {"attempt": name, "target": target, "accepted": True, "error": None}


async def main(targets: dict, plain_only: bool) -> list[dict]:
    foreign = Security.temporary()
    foreign_args = foreign.get_connection_args("client")
    scheduler = host_port(targets["scheduler"])
    calls = [attempt("client_tcp", scheduler, run_task(f"tcp://{scheduler}", None))]
    everyone = [scheduler, *map(host_port, targets["workers"])]
    for target in everyone:
        calls.append(
            attempt("comm_tcp", target, request_identity(f"tcp://{target}"))
        )
    if plain_only:
        return await asyncio.gather(*calls)

    calls.append(
        attempt(
            "client_foreign_certificate", scheduler,
            run_task(f"tls://{scheduler}", foreign),
        )
    )
    for target in everyone:
        calls += [
            attempt(
                "comm_foreign_certificate", target,
                request_identity(f"tls://{target}", **foreign_args),
            ),
            attempt(
                "comm_tls_without_certificate", target,
                request_identity(
                    f"tls://{target}", ssl_context=unverified_tls_context()
                ),
            ),
        ]
    return await asyncio.gather(*calls)


if __name__ == "__main__":
    outcomes = asyncio.run(
        main(json.loads(sys.argv[1]), plain_only="--plain-only" in sys.argv[2:])
    )
    print("ATTACK " + json.dumps(outcomes), flush=True)
