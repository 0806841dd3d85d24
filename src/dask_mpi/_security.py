"""TLS with throw-away credentials, created on the scheduler rank.

In the batch modes every party is inside the MPI job, so the scheduler rank
creates a key and a self-signed certificate in memory and the other ranks
receive them over MPI. Nothing is written to a shared filesystem, and every
connection is mutually authenticated: a process outside the job that knows
the scheduler address cannot submit work.
"""

from __future__ import annotations

from typing import Any

from ._options import Options

_TLS_PROTOCOLS = (None, "tls", "wss")


def temporary() -> Any:
    """Return a Security object containing a new in-memory key and certificate.

    Like ``distributed.Security.temporary()``, but with an elliptic-curve
    key (P-256). An RSA key of 2048 bits took 0.05 s to 0.7 s to make here,
    and every other rank waits for it at start-up. A P-256 key takes well
    under a millisecond, and its TLS handshakes cost less too. The
    certificate is valid from an hour ago, so that nodes whose clocks run
    a little behind the scheduler's accept it.
    """
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    from distributed.security import Security

    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    ).decode()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dask-mpi")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
    return Security(
        require_encryption=True,
        tls_ca_file=cert_pem,
        **{
            f"tls_{role}_{part}": value
            for role in ("client", "scheduler", "worker")
            for part, value in (("cert", cert_pem), ("key", key_pem))
        },
    )


def for_batch(options: Options) -> Any:
    """Return the Security of a batch job: TLS unless the user opted out.

    An explicit ``security=False``, or a transport other than TLS (an explicit
    tcp, ucx or inproc), turns it off. A Security object is used as given.
    """
    setting = options.security
    if setting is False or options.protocol not in _TLS_PROTOCOLS:
        return None
    if setting is None or setting is True:
        return temporary()
    return setting


def for_cli(options: Options) -> Any:
    """Return the Security of a CLI cluster: TLS only with ``--tls``."""
    setting = options.security
    if setting is True:
        return temporary()
    if setting in (None, False):
        return None
    return setting


def file_identity(scheduler: Any, security: Any) -> dict[str, Any]:
    """Return the scheduler file's contents.

    The format is the one ``Client(scheduler_file=...)`` reads; with TLS it
    also carries the client's credentials, which is why the file is created
    readable by its owner only.
    """
    identity = dict(scheduler.identity(n_workers=0))
    identity.pop("workers", None)
    identity["workers"] = {}
    if security is not None and getattr(security, "require_encryption", False):
        identity["tls"] = {
            "ca": security.tls_ca_file,
            "cert": security.tls_client_cert,
            "key": security.tls_client_key,
        }
    return identity


def from_scheduler_file(info: dict[str, Any]) -> Any:
    """Return the Security stored in a scheduler file, or None without TLS.

    The file contains one key and certificate, valid for every role, so the
    same object serves a client and workers that join the cluster.
    """
    tls = info.get("tls")
    if not tls:
        return None
    from distributed.security import Security

    pair = {"cert": tls["cert"], "key": tls["key"]}
    roles = ("client", "worker", "scheduler")
    return Security(
        require_encryption=True,
        tls_ca_file=tls["ca"],
        **{
            f"tls_{role}_{part}": value
            for role in roles
            for part, value in pair.items()
        },
    )
