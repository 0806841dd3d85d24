"""The one definition of every option: its config key, its check, its help.

Default values live in ``mpi.yaml`` beside this file, which is read into
``dask.config`` under ``mpi``. The CLI, the API functions and the config
schema all go through :func:`resolve`, so a default is written once.
"""

from __future__ import annotations

import enum
import importlib
import importlib.util
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any


from .exceptions import UsageError

_YAML = os.path.join(os.path.dirname(__file__), "mpi.yaml")


_defaults: dict[str, Any] | None = None


def load_defaults() -> None:
    """Read ``mpi.yaml`` into ``dask.config`` as defaults, once per process.

    It runs on first use rather than on import: importing dask takes 0.15
    to 0.2 s, and ``import dask_mpi`` stays at the standard library, so a
    rank, or the staging tool, can start MPI before the heavy imports.
    """
    global _defaults
    if _defaults is not None:
        return
    import dask.config
    import yaml

    with open(_YAML) as f:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        _defaults = yaml.load(f, Loader=loader)  # noqa: S506 (a safe loader)
    _note_replaced(dask.config.config.get("mpi"), _defaults.get("mpi", {}))
    dask.config.update_defaults(_defaults)


# Values the user set that dask.config.update_defaults replaced, because it
# puts a mapping default in place of a value that is not a mapping. Keyed by
# the config key, "" for the whole mpi section.
# NOTE: recorded when the defaults are first read. A bad value that a later
# dask.config.refresh() collects is replaced again without a message.
_replaced: dict[str, Any] = {}


def _note_replaced(current: Any, defaults: Mapping[str, Any]) -> None:
    """Record the user's values that a mapping default will replace."""
    if current is None:
        return
    if not isinstance(current, Mapping):
        _replaced[""] = current
        return
    for key, default in defaults.items():
        if not isinstance(default, Mapping):
            continue
        for spelling in (key, key.replace("-", "_")):
            value = current.get(spelling)
            if value is not None and not isinstance(value, Mapping):
                _replaced[key] = value


def _restore_defaults() -> None:
    """Put back the ``mpi`` defaults that a ``dask.config.set`` block removed.

    A ``dask.config.set({"mpi.KEY": ...})`` block entered before the first
    ``load_defaults`` deletes the whole ``mpi`` section when it exits,
    because the section did not exist when it started.
    """
    import dask.config

    assert _defaults is not None
    dask.config.update(dask.config.config, _defaults, priority="old")


class Mode(enum.Enum):
    """The entry point that starts the cluster."""

    CLI = "cli"
    INITIALIZE = "initialize"
    EXECUTE = "execute"

    @property
    def batch(self) -> bool:
        """True where the client runs inside the job."""
        return self is not Mode.CLI


class Style(enum.Enum):
    """The spelling of option names in messages."""

    CLI = "cli"
    API = "api"


def deprecated(message: str) -> None:
    """Warn about a deprecated spelling; deprecations never raise."""
    import warnings

    warnings.warn(message, FutureWarning, stacklevel=2)


def option_name(key: str, style: Style) -> str:
    """Spell the config key ``key`` as the user wrote it."""
    if style is Style.CLI:
        return "--" + key
    return key.replace("-", "_")


@dataclass(frozen=True)
class Options:
    """Every option after config defaults were applied and values checked."""

    scheduler_address: str | None = None
    scheduler_file: str | None = None
    scheduler_port: int | None = None
    scheduler_rank: int = 0
    client_rank: int = 1
    scheduler: bool = True
    interface: str | None = None
    protocol: str | None = None
    nthreads: int | None = None
    memory_limit: str | int | float | None = "auto"
    local_directory: str | None = None
    worker_class: str = "distributed.Worker"
    worker_options: Mapping[str, Any] = field(default_factory=dict)
    scheduler_options: Mapping[str, Any] = field(default_factory=dict)
    exclusive_workers: bool = True
    workers_per_rank: int = 1
    dashboard: bool = True
    dashboard_address: str | None = None
    name: str = "dask_mpi"
    security: Any = None
    startup_timeout: float = 60.0
    shutdown_timeout: float = 10.0
    rejoin_timeout: float | None = None
    shutdown_signals: tuple[int, ...] = ()
    log_level: str = "warning"
    messaging: str = "auto"
    use_nanny: bool = False

    @property
    def dashboard_given(self) -> bool:
        """True when the user chose the dashboard address."""
        return self.dashboard_address is not None


# Keys whose value is handled by hand in ``resolve`` rather than by a checker.
_SPECIAL = {"worker-class", "security"}


def _key(name: str) -> str:
    return name.replace("_", "-")


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _check_int(minimum: int) -> Callable[[str, Any, Style], int]:
    def check(key: str, value: Any, style: Style) -> int:
        number = _as_int(value)
        if number is None or number < minimum:
            raise UsageError(
                option_name(key, style),
                value,
                "not a whole number" if number is None else "too small",
                f"Give a whole number of at least {minimum}.",
            )
        return number

    return check


def _check_port(key: str, value: Any, style: Style) -> int | None:
    if value is None:
        return None
    port = _check_int(0)(key, value, style)
    if port > 65535:
        raise UsageError(
            option_name(key, style),
            value,
            "not a TCP port",
            "Give a port from 1 to 65535, or leave it out for a free port.",
        )
    return port or None


def _check_timeout(key: str, value: Any, style: Style) -> float | None:
    from dask.utils import parse_timedelta

    if value is None:
        return None
    try:
        seconds = parse_timedelta(value, default="seconds")
    except (TypeError, ValueError, KeyError, IndexError):
        seconds = None
    if seconds is None or seconds <= 0:
        raise UsageError(
            option_name(key, style),
            value,
            "not a positive duration",
            "Give seconds or a duration such as '90s' or '5 minutes'.",
        )
    return float(seconds)


def _check_bool(key: str, value: Any, style: Style) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise UsageError(
        option_name(key, style),
        value,
        "not true or false",
        "Give true or false.",
    )


def _check_text(key: str, value: Any, style: Style) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise UsageError(
            option_name(key, style),
            value,
            "not a non-empty string",
            "Give a non-empty string or leave the option out.",
        )
    return value


def _check_listen_address(key: str, value: Any, style: Style) -> str | None:
    """Accept ``HOST:PORT``, ``:PORT`` or ``HOST``, with a port up to 65535."""
    text = _check_text(key, value, style)
    if text is None:
        return None
    address = text.split("://", 1)[-1]
    if address.endswith("]"):
        return text  # a bracketed IPv6 address without a port
    _, colon, port = address.rpartition(":")
    if colon and port and (not port.isdigit() or int(port) > 65535):
        raise UsageError(
            option_name(key, style),
            value,
            f"the port {port!r} is not a number from 0 to 65535",
            "Give HOST:PORT, :PORT or HOST, for example :8787 or 127.0.0.1:8787.",
        )
    return text


def _check_path(key: str, value: Any, style: Style) -> str | None:
    text = _check_text(key, value, style)
    return None if text is None else os.path.abspath(os.path.expanduser(text))


def _check_mapping(key: str, value: Any, style: Style) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise UsageError(
                option_name(key, style),
                value,
                f"not valid JSON ({error})",
                'Give a JSON object, for example \'{"resources": {"GPU": 1}}\'.',
            ) from None
    if not isinstance(value, Mapping):
        raise UsageError(
            option_name(key, style),
            value,
            "not a JSON object",
            'Give a JSON object of keyword arguments, for example \'{"lifetime": '
            '"1h"}\'.',
        )
    return dict(value)


# A memory limit above 1 counts bytes. One below this is a mistake, such as
# 2.5 meant as a fraction or as gigabytes.
_MIN_MEMORY_BYTES = 1_000_000


def _check_memory(key: str, value: Any, style: Style) -> str | int | float | None:
    import math

    from dask.utils import parse_bytes

    if value is None or value == 0 or value == "0":
        return None
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    number: float | None
    try:
        number = float(value)
    except (TypeError, ValueError):
        try:
            number = float(parse_bytes(value)) if str(value).strip() else None
        except (TypeError, ValueError):
            number = None
    if number is not None and 1 < number < _MIN_MEMORY_BYTES:
        raise UsageError(
            option_name(key, style),
            value,
            "below 1 MB: a number above 1 is a count of bytes",
            "Give a fraction of the node's memory up to 1, such as 0.5, or a "
            "size such as 4GB.",
        )
    if number is not None and math.isfinite(number) and number > 0:
        return number if number <= 1 else int(number)
    raise UsageError(
        option_name(key, style),
        value,
        "not a memory size",
        "Give 'auto', a byte count such as 4GB or 4000000000, a fraction of "
        "the node's memory such as 0.5, or 0 for no limit.",
    )


def _check_protocol(key: str, value: Any, style: Style) -> str | None:
    known = ("tcp", "tls", "ucx", "inproc", "ws", "wss")
    if value is None:
        return None
    protocol = str(value).removesuffix("://")
    if protocol not in known:
        raise UsageError(
            option_name(key, style),
            value,
            "unknown protocol",
            f"Give one of {', '.join(known)}.",
        )
    if protocol == "ucx" and importlib.util.find_spec("distributed_ucxx") is None:
        raise UsageError(
            option_name(key, style),
            value,
            "UCX needs the distributed-ucxx package, which is not installed",
            "Install distributed-ucxx (conda-forge) or distributed-ucxx-cu12 or "
            "-cu13 (PyPI, by CUDA version), or give tcp or tls.",
        )
    return protocol


def _check_signals(key: str, value: Any, style: Style) -> tuple[int, ...]:
    import signal

    if value is None:
        return ()
    if isinstance(value, (int, str)):
        value = str(value).replace(",", " ").split()
    numbers = []
    for name in value:
        text = str(name).strip().upper()
        if not text.isdigit() and not text.startswith("SIG"):
            text = "SIG" + text
        try:
            number = signal.Signals(
                int(text) if text.isdigit() else signal.Signals[text]
            )
        except (KeyError, ValueError):
            number = None
        if number is None or number in (signal.SIGKILL, signal.SIGSTOP):
            raise UsageError(
                option_name(key, style),
                value,
                f"not a signal to catch: {name!r}",
                "Give signal names such as SIGUSR1 or USR1.",
            )
        numbers.append(int(number))
    return tuple(numbers)


def _check_log_level(key: str, value: Any, style: Style) -> str:
    levels = ("debug", "info", "warning", "error", "critical")
    text = str(value).lower()
    if text not in levels:
        raise UsageError(
            option_name(key, style),
            value,
            "unknown log level",
            f"Give one of {', '.join(levels)}.",
        )
    return text


def _check_messaging(key: str, value: Any, style: Style) -> str:
    choices = ("auto", "mpi", "files")
    text = str(value).lower()
    if text not in choices:
        raise UsageError(
            option_name(key, style),
            value,
            "unknown messaging",
            "Give mpi, files (launch without mpi4py, through the scheduler "
            "file's directory) or auto.",
        )
    return text


_CHECKS: dict[str, Callable[[str, Any, Style], Any]] = {
    "scheduler-address": _check_text,
    "scheduler-file": _check_path,
    "scheduler-port": _check_port,
    "scheduler-rank": _check_int(0),
    "client-rank": _check_int(0),
    "scheduler": _check_bool,
    "interface": _check_text,
    "protocol": _check_protocol,
    "nthreads": lambda k, v, s: None if v is None else _check_int(1)(k, v, s),
    "memory-limit": _check_memory,
    "local-directory": _check_path,
    "worker-options": _check_mapping,
    "scheduler-options": _check_mapping,
    "exclusive-workers": _check_bool,
    "workers-per-rank": _check_int(1),
    "dashboard": _check_bool,
    "dashboard-address": _check_listen_address,
    "name": lambda k, v, s: _check_text(k, v, s) or "dask_mpi",
    "startup-timeout": _check_timeout,
    "shutdown-timeout": _check_timeout,
    "rejoin-timeout": _check_timeout,
    "shutdown-signals": _check_signals,
    "log-level": _check_log_level,
    "messaging": _check_messaging,
}

# Every config key under "mpi".
KEYS: tuple[str, ...] = tuple(_CHECKS) + tuple(sorted(_SPECIAL))


def config_value(key: str) -> Any:
    """Return the value of ``mpi.<key>`` from dask.config."""
    import dask.config

    load_defaults()
    try:
        return dask.config.get(f"mpi.{key}")
    except KeyError:
        _restore_defaults()
        return dask.config.get(f"mpi.{key}")


def config_source(key: str) -> tuple[str, str]:
    """Return the name under which ``mpi.<key>`` was set, and where to change it.

    An environment variable (``DASK_MPI__NTHREADS``) takes precedence over
    YAML files in dask.config, so it is named when one is set.
    """
    config_key = f"mpi.{key}"
    for variable in sorted(os.environ):
        if not variable.startswith("DASK_"):
            continue
        dotted = variable[len("DASK_") :].lower().replace("__", ".")
        if dotted.replace("_", "-") == config_key:
            return variable, " Change or unset the environment variable."
    return config_key, (
        " The value comes from the dask config: a YAML file in ~/.config/dask "
        "or $DASK_CONFIG, or dask.config.set()."
    )


def _from_config(error: UsageError, key: str) -> UsageError:
    """Return ``error`` under the config key or environment variable that set it."""
    option, fix = config_source(key)
    return error.named(option, fix)


def _check_worker_class(
    value: Any, nanny: bool | None, mode: Mode, style: Style
) -> tuple[str, bool]:
    """Return the dotted worker class and whether it runs under a Nanny."""
    if nanny is not None and value is not None and style is Style.CLI:
        raise UsageError(
            "--nanny" if nanny else "--no-nanny",
            f"--worker-class {value}",
            "the deprecated flag cannot be combined with --worker-class",
            "Drop --nanny/--no-nanny and give only --worker-class "
            "(distributed.Nanny or distributed.Worker).",
        )
    if value is None:
        if nanny is not None:
            value = "distributed.Nanny" if nanny else "distributed.Worker"
        elif mode is Mode.CLI:
            value = "distributed.Nanny"
        else:
            value = "distributed.Worker"
    import_worker_class(value, style)
    use_nanny = value == "distributed.Nanny" or (nanny is True and style is Style.API)
    return value, use_nanny


def import_worker_class(dotted: str, style: Style = Style.CLI) -> type:
    """Import the class named by ``dotted``, raising UsageError if it fails."""
    module_name, _, attribute = str(dotted).rpartition(".")
    option = option_name("worker-class", style)
    if not module_name:
        raise UsageError(
            option,
            dotted,
            "not a dotted name",
            "Give module and class, for example distributed.Worker.",
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UsageError(
            option,
            dotted,
            f"module {module_name!r} cannot be imported ({error})",
            "Install the package that provides it, or give distributed.Nanny "
            "or distributed.Worker.",
        ) from None
    cls = getattr(module, attribute, None)
    if not isinstance(cls, type):
        raise UsageError(
            option,
            dotted,
            f"module {module_name!r} has no class {attribute!r}",
            "Check the spelling; for example distributed.Worker.",
        )
    return cls


def resolve(
    mode: Mode, style: Style, given: Mapping[str, Any], nanny: bool | None = None
) -> Options:
    """Fill the options the caller left as None from dask.config and check all.

    Parameters
    ----------
    mode
        The entry point, which picks the default worker class and security.
    style
        How option names are spelled in errors.
    given
        Values by Python name (``scheduler_rank``); None means "not given".
    nanny
        The deprecated nanny switch, None when not given.
    """
    unknown = set(given) - api_names()
    if unknown:
        raise TypeError(
            f"unknown option(s) {', '.join(sorted(unknown))}; the options are "
            f"{', '.join(sorted(api_names()))}"
        )
    load_defaults()
    for key, value in _replaced.items():
        option, fix = (
            config_source(key)
            if key
            else ("mpi", " Check the DASK_MPI variable and the dask config files.")
        )
        raise UsageError(
            option,
            value,
            "not a mapping" if key else "not a mapping of mpi.* keys",
            'Give a mapping of names to values, such as {"lifetime": "1h"}.' + fix,
        )
    values: dict[str, Any] = {}
    for key, check in _CHECKS.items():
        name = key.replace("-", "_")
        value = given.get(name)
        if value is not None:
            values[name] = check(key, value, style)
            continue
        try:
            values[name] = check(key, config_value(key), style)
        except UsageError as error:
            raise _from_config(error, key) from None

    worker_class = given.get("worker_class")
    configured = worker_class is None and nanny is None
    if configured:
        worker_class = config_value("worker-class")
    try:
        values["worker_class"], values["use_nanny"] = _check_worker_class(
            worker_class, nanny, mode, style
        )
    except UsageError as error:
        if not configured or worker_class is None:
            raise
        raise _from_config(error, "worker-class") from None
    security = given.get("security")
    values["security"] = config_value("security") if security is None else security
    options = Options(**values)
    _check_join(options, mode, style)
    _check_stray_address(options, style, given)
    return options


def _check_stray_address(
    options: Options, style: Style, given: Mapping[str, Any]
) -> None:
    """Reject a command-line SCHEDULER_ADDRESS that a job with a scheduler ignores.

    It is most often the second word of an unquoted value, as in
    ``--shutdown-timeout 5 minutes``.
    """
    address = given.get("scheduler_address")
    if style is Style.CLI and options.scheduler and address is not None:
        raise UsageError(
            "SCHEDULER_ADDRESS",
            address,
            "an address to join is used only with --no-scheduler",
            "Add --no-scheduler to join that scheduler, or drop the argument. "
            "Quote a value that contains spaces: --shutdown-timeout '5 minutes'.",
        )


def _check_join(options: Options, mode: Mode, style: Style) -> None:
    """Reject a job that joins an outside scheduler without saying where."""
    if options.scheduler or options.scheduler_address or options.scheduler_file:
        return
    if style is Style.CLI:
        raise UsageError(
            "--no-scheduler",
            "without SCHEDULER_ADDRESS or --scheduler-file",
            "the workers cannot know which scheduler to join",
            "Give the address (dask-mpi --no-scheduler tcp://HOST:PORT) or "
            "--scheduler-file PATH.",
        )
    raise UsageError(
        "scheduler",
        False,
        "no scheduler_address or scheduler_file given",
        "Give scheduler_address='tcp://HOST:PORT' or scheduler_file=PATH.",
    )


def api_names() -> set[str]:
    """Return the Python names of all options, for the consistency test."""
    return {f.name for f in fields(Options)} - {"use_nanny"}
