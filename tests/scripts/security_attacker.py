"""Try to use a Dask cluster from outside its job, without its credentials.

Usage: ``python security_attacker.py TARGETS_JSON [--plain-only]
[--credentials SCHEDULER_FILE]``, where TARGETS_JSON is
``{"scheduler": ADDRESS, "workers": [ADDRESS, ...]}``. Only the host and port
of each address are used: every attempt picks its own scheme.
``--plain-only`` makes only the plain TCP attempts, for a cluster without
TLS: distributed logs a traceback when a TLS handshake reaches its plain TCP
listener.

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

With ``--credentials``, two more attempts use the cluster's own credentials
from a ``dask-mpi --tls`` scheduler file, and they must succeed. They show
that the TLS attempts above fail for want of credentials, not by a fault in
this script:

``client_job_certificate``
    ``Client("tls://HOST:PORT")`` with the file's credentials, then one task.
``comm_job_certificate``
    A TLS comm with the file's credentials, on every target.

Prints one ``ATTACK <json>`` line: a list of
``{"attempt", "target", "accepted", "error"}``. ``accepted`` is true when
the task ran or the identity reply arrived.
"""

import argparse
import asyncio
import json
import ssl

from distributed import Client
from distributed.comm import connect
from distributed.security import Security

# Seconds each attempt may take. distributed retries a connect that fails
# with OSError until this timeout, but a rejected TLS handshake usually
# fails at once.
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
        result = await asyncio.wait_for(client.submit(sum, [1, 2, 3]), ATTEMPT_TIMEOUT)
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


def job_security(scheduler_file: str) -> Security:
    """Return a Security with the credentials of a ``--tls`` scheduler file."""
    with open(scheduler_file) as f:
        tls = json.load(f)["tls"]
    roles = {
        f"tls_{role}_{part}": tls[part]
        for role in ("client", "worker", "scheduler")
        for part in ("cert", "key")
    }
    return Security(require_encryption=True, tls_ca_file=tls["ca"], **roles)


async def attempt(name: str, target: str, call) -> dict:
    try:
        await asyncio.wait_for(call, 3 * ATTEMPT_TIMEOUT)
    # Any failure counts as rejected, and the test checks the error's type.
    except Exception as error:  # noqa: BLE001
        text = f"{type(error).__name__}: {error}"
        return {"attempt": name, "target": target, "accepted": False, "error": text}
    return {"attempt": name, "target": target, "accepted": True, "error": None}


async def main(targets: dict, plain_only: bool, credentials: str | None) -> list[dict]:
    foreign = Security.temporary()
    foreign_args = foreign.get_connection_args("client")
    scheduler = host_port(targets["scheduler"])
    calls = [attempt("client_tcp", scheduler, run_task(f"tcp://{scheduler}", None))]
    everyone = [scheduler, *map(host_port, targets["workers"])]
    for target in everyone:
        calls.append(attempt("comm_tcp", target, request_identity(f"tcp://{target}")))
    if plain_only:
        return await asyncio.gather(*calls)

    calls.append(
        attempt(
            "client_foreign_certificate",
            scheduler,
            run_task(f"tls://{scheduler}", foreign),
        )
    )
    for target in everyone:
        calls += [
            attempt(
                "comm_foreign_certificate",
                target,
                request_identity(f"tls://{target}", **foreign_args),
            ),
            attempt(
                "comm_tls_without_certificate",
                target,
                request_identity(
                    f"tls://{target}", ssl_context=unverified_tls_context()
                ),
            ),
        ]
    if credentials:
        security = job_security(credentials)
        job_args = security.get_connection_args("client")
        calls.append(
            attempt(
                "client_job_certificate",
                scheduler,
                run_task(f"tls://{scheduler}", security),
            )
        )
        for target in everyone:
            calls.append(
                attempt(
                    "comm_job_certificate",
                    target,
                    request_identity(f"tls://{target}", **job_args),
                )
            )
    return await asyncio.gather(*calls)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("targets")
    parser.add_argument("--plain-only", action="store_true")
    parser.add_argument("--credentials")
    arguments = parser.parse_args()
    outcomes = asyncio.run(
        main(
            json.loads(arguments.targets),
            arguments.plain_only,
            arguments.credentials,
        )
    )
    print("ATTACK " + json.dumps(outcomes), flush=True)
