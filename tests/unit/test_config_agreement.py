"""The CLI, the API functions and mpi.yaml agree on every option and default.

Every option has one dask.config key under ``mpi``, with its default in the
packaged ``mpi.yaml``. These tests fail when an option is added to one of
the CLI, the API or the config without the others.
"""

from __future__ import annotations

import importlib.resources
import inspect
import json
import signal
import subprocess
import sys
import textwrap

import click
import pytest
import yaml

from dask_mpi import _launch, execute, initialize
from dask_mpi._options import KEYS, Mode, Options, Style, api_names, resolve
from dask_mpi.cli import main
from dask_mpi.exceptions import UsageError

DEFAULTS: dict = yaml.safe_load(
    (importlib.resources.files("dask_mpi") / "mpi.yaml").read_text()
)["mpi"]

# API parameters that are not options: the communicator, the client function
# and its arguments, what to do on return, and the deprecated nanny switch.
API_EXCEPTIONS = {"comm", "exit", "client_function", "client_args", "client_kwargs",
                  "nanny"}

# API parameters whose Python name differs from the option's.
API_RENAMES = {"worker_name": "name"}

# CLI parameters that are not options: the deprecated --nanny/--no-nanny
# switch and --version.
CLI_EXCEPTIONS = {"nanny", "version"}

# Keys with no CLI option, because they only make sense in batch modes.
KEYS_WITHOUT_CLI = {"client-rank"}

# Keys whose mpi.yaml default is null, and the text `dask-mpi --help` shows
# for that default instead.
CLI_SHOWN_FOR_NULL = {
    "scheduler-port": "random",
    "nthreads": "the rank's CPU share",
    "local-directory": "$TMPDIR",
    "worker-class": "distributed.Nanny",
    "dashboard-address": ":8787",
    "rejoin-timeout": "none (wait for ever)",
    "security": "no-tls",
}


def config_key(python_name: str) -> str:
    return python_name.replace("_", "-")


def api_parameters(function) -> list[str]:
    """Return the named parameters of ``function``, without ``**options``."""
    return [
        parameter.name
        for parameter in inspect.signature(function).parameters.values()
        if parameter.kind is not inspect.Parameter.VAR_KEYWORD
    ]


def cli_options() -> list[click.Parameter]:
    return [param for param in main.params if param.name not in CLI_EXCEPTIONS]


# ---------------------------------------------------------------- mpi.yaml


def test_yaml_keys_match_option_keys():
    assert set(DEFAULTS) == set(KEYS)


def test_option_keys_are_unique():
    assert len(KEYS) == len(set(KEYS))


def test_every_key_has_options_field():
    assert {config_key(name) for name in api_names()} == set(KEYS)


def test_options_fields_are_keys_plus_nanny_flag():
    field_names = {field.name for field in Options.__dataclass_fields__.values()}

    assert field_names - {key.replace("-", "_") for key in KEYS} == {"use_nanny"}


def test_yaml_defaults_equal_options_defaults():
    """Resolving nothing in a batch mode gives the dataclass defaults."""
    assert resolve(Mode.EXECUTE, Style.API, {}) == Options()


@pytest.mark.parametrize("key", [key for key in KEYS if DEFAULTS[key] is not None])
def test_yaml_default_passes_its_check(key):
    """Passing a non-null default explicitly gives a value, not an error."""
    python_name = key.replace("-", "_")
    value = DEFAULTS[key]

    options = resolve(Mode.CLI, Style.CLI, {python_name: value})
    assert getattr(options, python_name) is not None


# ---------------------------------------------------------------- CLI


def test_every_cli_option_has_config_key():
    for param in cli_options():
        assert config_key(param.name) in KEYS, param.name


def test_every_config_key_has_cli_option():
    cli_keys = {config_key(param.name) for param in cli_options()}

    assert set(KEYS) - cli_keys == KEYS_WITHOUT_CLI


def test_cli_leaves_unset_options_to_config():
    """No option has a click default, or it would hide the dask.config value."""
    context = main.make_context("dask-mpi", [])

    for name, value in context.params.items():
        assert value is None, f"--{config_key(name)} defaults to {value!r}"


@pytest.mark.parametrize(
    "param", cli_options(), ids=[param.name for param in cli_options()]
)
def test_cli_help_default_agrees_with_yaml(param):
    key = config_key(param.name)
    default = DEFAULTS[key]
    show_default = getattr(param, "show_default", None)
    help_default = show_default if isinstance(show_default, str) else None

    if isinstance(default, bool):
        chosen = param.opts if default else param.secondary_opts
        other = param.secondary_opts if default else param.opts
        assert help_default is not None
        prefix = f"--{help_default}"
        assert any(flag.startswith(prefix) for flag in chosen), help_default
        assert not any(flag.startswith(prefix) for flag in other), help_default
    elif default is None:
        assert help_default == CLI_SHOWN_FOR_NULL.get(key)
    elif default in ({}, []):
        assert help_default in (None, json.dumps(default))
    else:
        assert help_default == str(default)

    if help_default is not None:
        _, help_text = param.get_help_record(click.Context(main))
        assert help_default in help_text


def test_cli_null_fallbacks_are_null_in_yaml():
    for key in CLI_SHOWN_FOR_NULL:
        assert DEFAULTS[key] is None, key


def test_cli_shown_worker_class_is_cli_default():
    options = resolve(Mode.CLI, Style.CLI, {})

    assert options.worker_class == CLI_SHOWN_FOR_NULL["worker-class"]


def test_cli_shown_tls_default_is_off():
    assert resolve(Mode.CLI, Style.CLI, {}).security is None


# (CLI parameter, command line, Options field, expected value)
CLI_VALUES = [
    ("scheduler_address", ["--no-scheduler", "tcp://10.0.0.1:8786"],
     "scheduler_address", "tcp://10.0.0.1:8786"),
    ("scheduler_file", ["--scheduler-file", "/tmp/s.json"], "scheduler_file",
     "/tmp/s.json"),
    ("scheduler_port", ["--scheduler-port", "8786"], "scheduler_port", 8786),
    ("scheduler_rank", ["--scheduler-rank", "2"], "scheduler_rank", 2),
    ("interface", ["--interface", "ib0"], "interface", "ib0"),
    ("protocol", ["--protocol", "ws"], "protocol", "ws"),
    ("nthreads", ["--nthreads", "3"], "nthreads", 3),
    ("memory_limit", ["--memory-limit", "4GB"], "memory_limit", 4_000_000_000),
    ("local_directory", ["--local-directory", "/scratch"], "local_directory",
     "/scratch"),
    ("scheduler", ["--no-scheduler", "tcp://10.0.0.1:8786"], "scheduler", False),
    ("exclusive_workers", ["--inclusive-workers"], "exclusive_workers", False),
    ("worker_class", ["--worker-class", "distributed.Worker"], "worker_class",
     "distributed.Worker"),
    ("worker_options", ["--worker-options", '{"lifetime": "1h"}'], "worker_options",
     {"lifetime": "1h"}),
    ("scheduler_options", ["--scheduler-options", '{"idle_timeout": "1h"}'],
     "scheduler_options", {"idle_timeout": "1h"}),
    ("dashboard", ["--no-dashboard"], "dashboard", False),
    ("dashboard_address", ["--dashboard-address", ":9999"], "dashboard_address",
     ":9999"),
    ("name", ["--name", "job"], "name", "job"),
    ("security", ["--tls"], "security", True),
    ("workers_per_rank", ["--workers-per-rank", "2"], "workers_per_rank", 2),
    ("startup_timeout", ["--startup-timeout", "90s"], "startup_timeout", 90.0),
    ("shutdown_timeout", ["--shutdown-timeout", "5s"], "shutdown_timeout", 5.0),
    ("rejoin_timeout", ["--rejoin-timeout", "1h"], "rejoin_timeout", 3600.0),
    ("shutdown_signals", ["--shutdown-signals", "USR1"], "shutdown_signals",
     (signal.SIGUSR1,)),
    ("log_level", ["--log-level", "info"], "log_level", "info"),
    ("messaging", ["--messaging", "files"], "messaging", "files"),
    ("nanny", ["--no-nanny"], "worker_class", "distributed.Worker"),
]


def test_cli_value_table_covers_every_parameter():
    covered = {row[0] for row in CLI_VALUES}

    assert covered == {param.name for param in main.params} - {"version"}


@pytest.mark.parametrize(
    "args, field, expected",
    [pytest.param(*row[1:], id=row[0]) for row in CLI_VALUES],
)
def test_cli_argument_reaches_option(args, field, expected):
    parsed = main.make_context("dask-mpi", list(args)).params
    nanny = parsed.pop("nanny")

    options = resolve(Mode.CLI, Style.CLI, parsed, nanny)
    assert getattr(options, field) == expected


# ---------------------------------------------------------------- API


@pytest.mark.parametrize("function", [initialize, execute])
def test_every_api_parameter_maps_to_option(function):
    for name in api_parameters(function):
        if name in API_EXCEPTIONS:
            continue
        assert API_RENAMES.get(name, name) in api_names(), name


@pytest.mark.parametrize("function", [initialize, execute])
def test_api_option_parameters_default_to_none(function):
    """A non-None default in the signature would hide the dask.config value."""
    for parameter in inspect.signature(function).parameters.values():
        if parameter.name in API_EXCEPTIONS - {"nanny"}:
            continue
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            continue
        assert parameter.default is None, parameter.name


def test_execute_client_parameter_defaults():
    parameters = inspect.signature(execute).parameters

    assert parameters["client_function"].default is None
    assert parameters["client_args"].default == ()
    assert parameters["client_kwargs"].default is None


def test_initialize_exit_defaults_to_true():
    assert inspect.signature(initialize).parameters["exit"].default is True


@pytest.mark.parametrize(
    "mode, field, expected",
    [
        (Mode.INITIALIZE, "memory_limit", "auto"),
        (Mode.INITIALIZE, "use_nanny", False),
        (Mode.INITIALIZE, "dashboard", True),
        (Mode.INITIALIZE, "dashboard_address", None),
        (Mode.INITIALIZE, "worker_class", "distributed.Worker"),
        (Mode.EXECUTE, "client_rank", 1),
        (Mode.EXECUTE, "scheduler", True),
        (Mode.EXECUTE, "scheduler_rank", 0),
        (Mode.EXECUTE, "exclusive_workers", True),
        (Mode.EXECUTE, "worker_class", "distributed.Worker"),
        (Mode.EXECUTE, "name", "dask_mpi"),
    ],
)
def test_effective_api_default(mode, field, expected):
    """The defaults of the established dask-mpi API come out of mpi.yaml."""
    assert getattr(resolve(mode, Style.API, {}), field) == expected


class PrepareReached(Exception):
    """Raised by the stand-in for ``_launch.prepare`` once options resolved."""


class SingleRankComm:
    """Stands in for an MPI communicator of one rank."""

    def Get_rank(self) -> int:
        return 0

    def Get_size(self) -> int:
        return 1


@pytest.fixture
def resolved(monkeypatch):
    """Replace the launch core so that API calls stop after resolving options.

    The returned dict receives ``mode`` and ``options``; no MPI is started.
    """
    record: dict = {}

    def prepare(mode, style, given, nanny, comm):
        record["mode"] = mode
        record["options"] = resolve(mode, style, given, nanny)
        raise PrepareReached

    monkeypatch.setattr(_launch, "prepare", prepare)
    return record


def call_api(function, record: dict, **keywords) -> Options:
    with pytest.raises(PrepareReached):
        function(comm=SingleRankComm(), **keywords)
    return record["options"]


# Python name -> (value to pass, expected Options value, other keywords needed)
API_VALUES = {
    "scheduler_address": ("tcp://10.0.0.1:8786", "tcp://10.0.0.1:8786", {}),
    "scheduler_file": ("/scratch/s.json", "/scratch/s.json", {}),
    "scheduler_port": (8786, 8786, {}),
    "scheduler_rank": (3, 3, {}),
    "client_rank": (2, 2, {}),
    "scheduler": (False, False, {"scheduler_address": "tcp://10.0.0.1:8786"}),
    "interface": ("ib0", "ib0", {}),
    "protocol": ("ws", "ws", {}),
    "nthreads": (3, 3, {}),
    "memory_limit": ("4GB", 4_000_000_000, {}),
    "local_directory": ("/scratch", "/scratch", {}),
    "worker_class": ("distributed.Nanny", "distributed.Nanny", {}),
    "worker_options": ({"lifetime": "1h"}, {"lifetime": "1h"}, {}),
    "scheduler_options": ({"idle_timeout": "1h"}, {"idle_timeout": "1h"}, {}),
    "exclusive_workers": (False, False, {}),
    "workers_per_rank": (2, 2, {}),
    "dashboard": (False, False, {}),
    "dashboard_address": (":9999", ":9999", {}),
    "name": ("job", "job", {}),
    "security": (False, False, {}),
    "startup_timeout": ("90s", 90.0, {}),
    "shutdown_timeout": ("5s", 5.0, {}),
    "rejoin_timeout": ("1h", 3600.0, {}),
    "shutdown_signals": ("USR1", (signal.SIGUSR1,), {}),
    "log_level": ("info", "info", {}),
    "messaging": ("mpi", "mpi", {}),
}

def api_keyword_cases():
    """Yield (function, keyword, option) for every option of both functions."""
    cases = []
    for function in (initialize, execute):
        parameters = set(api_parameters(function)) - API_EXCEPTIONS
        for keyword in sorted(parameters):
            option = API_RENAMES.get(keyword, keyword)
            cases.append(pytest.param(
                function, keyword, option, id=f"{function.__name__}-{keyword}"
            ))
        through_options = api_names() - {API_RENAMES.get(p, p) for p in parameters}
        for option in sorted(through_options):
            cases.append(pytest.param(
                function, option, option, id=f"{function.__name__}-options-{option}"
            ))
    return cases


def test_api_value_table_covers_every_option():
    assert set(API_VALUES) == api_names()


def test_api_value_table_differs_from_defaults():
    """A keyword that never reached resolve() would leave the default."""
    defaults = Options()

    for option, (_, expected, _) in API_VALUES.items():
        assert getattr(defaults, option) != expected, option


@pytest.mark.parametrize("function, keyword, option", api_keyword_cases())
def test_api_keyword_reaches_option(resolved, function, keyword, option):
    value, expected, needed = API_VALUES[option]

    options = call_api(function, resolved, **{keyword: value}, **needed)
    assert getattr(options, option) == expected


@pytest.mark.parametrize(
    "function, mode", [(initialize, Mode.INITIALIZE), (execute, Mode.EXECUTE)]
)
def test_api_nanny_runs_nanny(resolved, function, mode):
    options = call_api(function, resolved, nanny=True)

    assert resolved["mode"] is mode
    assert options.worker_class == "distributed.Nanny"
    assert options.use_nanny is True


def test_execute_accepts_name_option(resolved):
    """The docstring of execute() promises every option by its Python name."""
    options = call_api(execute, resolved, name="job")

    assert options.name == "job"


@pytest.mark.parametrize("function", [initialize, execute])
def test_api_unknown_keyword_is_rejected(resolved, function):
    with pytest.raises((TypeError, UsageError)):
        call_api(function, resolved, startup_timout=5)


# ---------------------------------------------------------------- import


IMPORT_CHECK = textwrap.dedent(
    """
    import signal
    import sys

    def handlers():
        result = {}
        for number in sorted(signal.valid_signals()):
            try:
                result[number] = signal.getsignal(number)
            except (OSError, ValueError):
                pass
        return result

    before = handlers()
    excepthook = sys.excepthook
    import dask_mpi
    import dask_mpi.cli
    assert "mpi4py.MPI" not in sys.modules, "importing dask_mpi imported mpi4py.MPI"
    changed = [n for n, handler in handlers().items() if before.get(n) != handler]
    assert not changed, f"importing dask_mpi changed signal handlers: {changed}"
    assert sys.excepthook is excepthook, "importing dask_mpi replaced sys.excepthook"
    print("imported")
    """
)


def test_import_starts_no_mpi_and_no_handlers():
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK],
        capture_output=True, text=True, timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.strip() == "imported"
