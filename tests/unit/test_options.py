"""Option resolution: dask.config defaults, explicit values and usage errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import dask.config
import pytest

from dask_mpi._options import Mode, Style, option_name, resolve
from dask_mpi.exceptions import UsageError


def resolve_cli(nanny: bool | None = None, **given: object):
    return resolve(Mode.CLI, Style.CLI, given, nanny)


def resolve_api(nanny: bool | None = None, mode: Mode = Mode.EXECUTE, **given: object):
    return resolve(mode, Style.API, given, nanny)


@pytest.fixture
def environment(monkeypatch):
    """Set DASK_MPI__* variables, reload dask.config, and restore both after."""

    def set_variables(**variables: str) -> None:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        dask.config.refresh()

    yield set_variables
    monkeypatch.undo()
    dask.config.refresh()


# ---------------------------------------------------------------- config


def test_config_value_fills_missing_option():
    with dask.config.set({"mpi.scheduler-rank": 2}):
        options = resolve_cli()

    assert options.scheduler_rank == 2


def test_config_set_is_restored():
    with dask.config.set({"mpi.scheduler-rank": 2}):
        pass

    assert resolve_cli().scheduler_rank == 0


@pytest.mark.parametrize(
    "variable, value, field, expected",
    [
        ("DASK_MPI__SCHEDULER_RANK", "3", "scheduler_rank", 3),
        ("DASK_MPI__STARTUP_TIMEOUT", "90s", "startup_timeout", 90.0),
        ("DASK_MPI__SHUTDOWN_TIMEOUT", "2 minutes", "shutdown_timeout", 120.0),
        ("DASK_MPI__MEMORY_LIMIT", "0.25", "memory_limit", 0.25),
        ("DASK_MPI__MEMORY_LIMIT", "4GB", "memory_limit", 4_000_000_000),
        ("DASK_MPI__SHUTDOWN_SIGNALS", "USR1", "shutdown_signals", (signal.SIGUSR1,)),
        (
            "DASK_MPI__SHUTDOWN_SIGNALS", "['USR1', 'SIGUSR2']", "shutdown_signals",
            (signal.SIGUSR1, signal.SIGUSR2),
        ),
        (
            "DASK_MPI__WORKER_OPTIONS", '{"lifetime": "1h"}', "worker_options",
            {"lifetime": "1h"},
        ),
        ("DASK_MPI__DASHBOARD", "False", "dashboard", False),
        ("DASK_MPI__EXCLUSIVE_WORKERS", "false", "exclusive_workers", False),
        ("DASK_MPI__NAME", "job42", "name", "job42"),
        ("DASK_MPI__LOG_LEVEL", "INFO", "log_level", "info"),
    ],
)
def test_environment_variable_fills_option(
    environment, variable, value, field, expected
):
    environment(**{variable: value})

    assert getattr(resolve_cli(), field) == expected


def test_config_refresh_drops_removed_variable(environment, monkeypatch):
    environment(DASK_MPI__SCHEDULER_RANK="3")
    assert resolve_cli().scheduler_rank == 3

    monkeypatch.delenv("DASK_MPI__SCHEDULER_RANK")
    dask.config.refresh()
    assert resolve_cli().scheduler_rank == 0


@pytest.mark.parametrize(
    "key, config, field, explicit",
    [
        ("scheduler-rank", 2, "scheduler_rank", 1),
        ("scheduler-rank", 2, "scheduler_rank", 0),
        ("dashboard", True, "dashboard", False),
        ("dashboard", False, "dashboard", True),
        ("exclusive-workers", True, "exclusive_workers", False),
        ("name", "from-config", "name", "given"),
        ("protocol", "ws", "protocol", "tcp"),
        ("nthreads", 8, "nthreads", 2),
    ],
)
def test_explicit_value_beats_config(key, config, field, explicit):
    with dask.config.set({f"mpi.{key}": config}):
        options = resolve_cli(**{field: explicit})

    assert getattr(options, field) == explicit


def test_explicit_zero_memory_beats_config():
    with dask.config.set({"mpi.memory-limit": "4GB"}):
        options = resolve_cli(memory_limit=0)

    assert options.memory_limit is None


def test_explicit_worker_class_beats_config():
    with dask.config.set({"mpi.worker-class": "distributed.Worker"}):
        options = resolve_cli(worker_class="distributed.Nanny")

    assert options.worker_class == "distributed.Nanny"
    assert options.use_nanny is True


def test_explicit_value_beats_environment(environment):
    environment(DASK_MPI__SCHEDULER_RANK="3")

    assert resolve_cli(scheduler_rank=1).scheduler_rank == 1


@pytest.mark.parametrize("resolve_in", [resolve_cli, resolve_api])
def test_bad_config_value_names_key(resolve_in):
    with dask.config.set({"mpi.scheduler-rank": -1}):
        with pytest.raises(UsageError) as caught:
            resolve_in()

    assert caught.value.option == "mpi.scheduler-rank"
    assert caught.value.value == -1
    assert "dask config" in str(caught.value)


@pytest.mark.parametrize(
    "variable, value",
    [
        ("DASK_MPI__NTHREADS", "abc"),
        ("DASK_MPI__SHUTDOWN_TIMEOUT", "-3"),
        ("DASK_MPI__SCHEDULER_RANK", "-1"),
        ("DASK_MPI__WORKER_CLASS", "no_such_package.Worker"),
    ],
)
def test_bad_environment_value_names_variable(environment, variable, value):
    environment(**{variable: value})

    with pytest.raises(UsageError) as caught:
        resolve_cli()

    assert caught.value.option == variable
    assert str(caught.value).startswith(f"{variable}=")
    assert "environment variable" in str(caught.value)


def test_explicit_bad_value_keeps_option_name(environment):
    environment(DASK_MPI__NTHREADS="abc")

    with pytest.raises(UsageError) as caught:
        resolve_api(nthreads=0)

    assert caught.value.option == "nthreads"
    assert "environment variable" not in str(caught.value)


# ---------------------------------------------------------------- good values


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("memory_limit", "auto", "auto"),
        ("memory_limit", "AUTO", "auto"),
        ("memory_limit", "4GB", 4_000_000_000),
        ("memory_limit", "4 GiB", 4 * 2**30),
        ("memory_limit", 0.5, 0.5),
        ("memory_limit", "0.5", 0.5),
        ("memory_limit", 2_000_000_000, 2_000_000_000),
        ("memory_limit", 0, None),
        ("memory_limit", "0", None),
        ("scheduler_port", 8786, 8786),
        ("scheduler_port", "8786", 8786),
        ("scheduler_port", 0, None),
        ("protocol", "tcp://", "tcp"),
        ("protocol", "ws", "ws"),
        ("startup_timeout", 5, 5.0),
        ("startup_timeout", "5 minutes", 300.0),
        ("rejoin_timeout", "1h", 3600.0),
        ("shutdown_signals", "USR1, SIGUSR2", (signal.SIGUSR1, signal.SIGUSR2)),
        ("shutdown_signals", "term", (signal.SIGTERM,)),
        ("worker_options", '{"resources": {"GPU": 1}}', {"resources": {"GPU": 1}}),
        ("worker_options", {"lifetime": "1h"}, {"lifetime": "1h"}),
        ("nthreads", "4", 4),
        ("dashboard", "no", False),
    ],
)
def test_good_value_is_normalised(field, value, expected):
    assert getattr(resolve_cli(**{field: value}), field) == expected


def test_scheduler_file_expands_home():
    options = resolve_cli(scheduler_file="~/scheduler.json")

    assert options.scheduler_file == os.path.expanduser("~/scheduler.json")
    assert os.path.isabs(options.scheduler_file)


def test_dashboard_address_not_given_by_default():
    options = resolve_cli()

    assert options.dashboard_address is None
    assert options.dashboard_given is False
    assert resolve_cli(dashboard_address=":8787").dashboard_given is True


# ---------------------------------------------------------------- bad values

# (id, Python name of the option, rejected value)
BAD_VALUES = [
    # distributed_ucxx is not installed in the test environments.
    ("protocol-ucx-without-ucxx", "protocol", "ucx"),
    ("worker-options-malformed-json", "worker_options", '{"lifetime": '),
    ("worker-options-json-list", "worker_options", "[1, 2]"),
    ("worker-options-json-number", "worker_options", "42"),
    ("worker-options-python-list", "worker_options", [("lifetime", "1h")]),
    ("scheduler-options-malformed-json", "scheduler_options", "{bad"),
    ("worker-class-unknown-class", "worker_class", "distributed.NoSuchWorker"),
    ("worker-class-unknown-module", "worker_class", "no_such_package.Worker"),
    ("worker-class-not-dotted", "worker_class", "Worker"),
    ("worker-class-not-a-class", "worker_class", "distributed.comm"),
    ("memory-limit-word", "memory_limit", "lots"),
    ("memory-limit-unit", "memory_limit", "4 potatoes"),
    ("memory-limit-negative", "memory_limit", "-1"),
    ("memory-limit-negative-fraction", "memory_limit", -0.5),
    ("memory-limit-nan", "memory_limit", float("nan")),
    ("memory-limit-negative-bytes", "memory_limit", "-4GB"),
    ("memory-limit-empty", "memory_limit", ""),
    ("memory-limit-infinite", "memory_limit", float("inf")),
    ("scheduler-port-negative", "scheduler_port", -1),
    ("scheduler-port-too-large", "scheduler_port", 70000),
    ("scheduler-port-word", "scheduler_port", "http"),
    ("startup-timeout-word", "startup_timeout", "soon"),
    ("startup-timeout-zero", "startup_timeout", "0"),
    ("startup-timeout-negative", "startup_timeout", -5),
    ("shutdown-timeout-negative", "shutdown_timeout", "-1s"),
    ("rejoin-timeout-word", "rejoin_timeout", "forever"),
    ("startup-timeout-empty", "startup_timeout", ""),
    ("protocol-udp", "protocol", "udp"),
    ("protocol-http", "protocol", "http"),
    ("shutdown-signals-unknown", "shutdown_signals", "NOPE"),
    ("shutdown-signals-one-unknown", "shutdown_signals", ["USR1", "BOGUS"]),
    (
        "shutdown-signals-handler-name", "shutdown_signals", "SIG_IGN"),
    (
        "shutdown-signals-number-too-large", "shutdown_signals", "99999"),
    ("scheduler-rank-negative", "scheduler_rank", -1),
    ("scheduler-rank-word", "scheduler_rank", "first"),
    ("scheduler-rank-fraction", "scheduler_rank", 1.5),
    ("client-rank-negative", "client_rank", -2),
    ("nthreads-zero", "nthreads", 0),
    ("workers-per-rank-zero", "workers_per_rank", 0),
    ("dashboard-maybe", "dashboard", "maybe"),
    ("log-level-unknown", "log_level", "loud"),
    ("interface-empty", "interface", ""),
]

STYLES = [
    pytest.param(Style.CLI, Mode.CLI, id="cli"),
    pytest.param(Style.API, Mode.EXECUTE, id="api"),
]


def case_param(case: tuple) -> object:
    """Turn a BAD_VALUES row into a pytest.param whose id is the row's first item."""
    identifier, name, value, *marks = case
    return pytest.param(name, value, id=identifier, marks=marks)


@pytest.mark.parametrize("style, mode", STYLES)
@pytest.mark.parametrize("name, value", [case_param(case) for case in BAD_VALUES])
def test_bad_value_is_usage_error(style, mode, name, value):
    with pytest.raises(UsageError) as caught:
        resolve(mode, style, {name: value})

    error = caught.value
    option = option_name(name.replace("_", "-"), style)
    message = str(error)
    assert isinstance(error, ValueError)
    assert error.option == option
    assert message.startswith(f"{option}=")
    assert str(value) in message or repr(value) in message
    assert error.problem
    assert error.problem in message
    assert error.fix
    assert error.fix in message


def test_cli_spelling_of_bad_worker_options():
    with pytest.raises(UsageError) as caught:
        resolve_cli(worker_options="{not json")

    assert caught.value.option == "--worker-options"
    assert "not valid JSON" in caught.value.problem
    assert "JSON object" in caught.value.fix


def test_api_spelling_of_bad_worker_options():
    with pytest.raises(UsageError) as caught:
        resolve_api(worker_options="{not json")

    assert caught.value.option == "worker_options"
    assert "not valid JSON" in caught.value.problem


def test_unknown_worker_class_suggests_known_classes():
    with pytest.raises(UsageError) as caught:
        resolve_cli(worker_class="no_such_package.Worker")

    assert "no_such_package" in caught.value.problem
    assert "distributed.Worker" in caught.value.fix


@pytest.mark.parametrize("nanny, flag", [(False, "--no-nanny"), (True, "--nanny")])
def test_nanny_flag_with_worker_class(nanny, flag):
    with pytest.raises(UsageError) as caught:
        resolve_cli(nanny=nanny, worker_class="distributed.Worker")

    error = caught.value
    assert error.option == flag
    assert "--worker-class distributed.Worker" in str(error.value)
    assert "--worker-class" in error.fix
    assert str(error).startswith(f"{flag}=")


def test_nanny_flag_beats_configured_worker_class():
    with dask.config.set({"mpi.worker-class": "distributed.Worker"}):
        options = resolve_cli(nanny=True)

    assert options.worker_class == "distributed.Nanny"
    assert options.use_nanny is True


def test_no_scheduler_without_address_cli():
    with pytest.raises(UsageError) as caught:
        resolve_cli(scheduler=False)

    error = caught.value
    assert error.option == "--no-scheduler"
    assert "SCHEDULER_ADDRESS" in str(error.value)
    assert "--scheduler-file" in error.fix


def test_no_scheduler_without_address_api():
    with pytest.raises(UsageError) as caught:
        resolve_api(scheduler=False)

    error = caught.value
    assert error.option == "scheduler"
    assert error.value is False
    assert "scheduler_address" in error.fix
    assert "scheduler_file" in error.fix


@pytest.mark.parametrize(
    "given",
    [
        {"scheduler_address": "tcp://10.0.0.1:8786"},
        {"scheduler_file": "/tmp/scheduler.json"},
    ],
    ids=["address", "file"],
)
def test_no_scheduler_with_address_or_file(given):
    options = resolve_cli(scheduler=False, **given)

    assert options.scheduler is False


# ---------------------------------------------------------------- worker class


@pytest.mark.parametrize(
    "mode, style, nanny, worker_class, use_nanny",
    [
        pytest.param(Mode.CLI, Style.CLI, None, "distributed.Nanny", True, id="cli"),
        pytest.param(
            Mode.CLI, Style.CLI, False, "distributed.Worker", False, id="cli-no-nanny"
        ),
        pytest.param(
            Mode.CLI, Style.CLI, True, "distributed.Nanny", True, id="cli-nanny"
        ),
        pytest.param(
            Mode.INITIALIZE, Style.API, None, "distributed.Worker", False,
            id="initialize",
        ),
        pytest.param(
            Mode.EXECUTE, Style.API, None, "distributed.Worker", False, id="execute"
        ),
        pytest.param(
            Mode.INITIALIZE, Style.API, True, "distributed.Nanny", True,
            id="initialize-nanny",
        ),
        pytest.param(
            Mode.EXECUTE, Style.API, False, "distributed.Worker", False,
            id="execute-no-nanny",
        ),
    ],
)
def test_worker_class_default(mode, style, nanny, worker_class, use_nanny):
    options = resolve(mode, style, {}, nanny)

    assert options.worker_class == worker_class
    assert options.use_nanny is use_nanny


def test_api_nanny_wraps_given_worker_class():
    options = resolve_api(nanny=True, worker_class="distributed.Worker")

    assert options.worker_class == "distributed.Worker"
    assert options.use_nanny is True


def test_configured_worker_class_used_by_cli():
    with dask.config.set({"mpi.worker-class": "distributed.Worker"}):
        options = resolve_cli()

    assert options.worker_class == "distributed.Worker"
    assert options.use_nanny is False


def test_bad_configured_worker_class_is_usage_error():
    with dask.config.set({"mpi.worker-class": "no_such_package.Worker"}):
        with pytest.raises(UsageError) as caught:
            resolve_api()

    assert caught.value.option == "mpi.worker-class"


def test_shutdown_signal_as_number():
    options = resolve_api(shutdown_signals=signal.SIGUSR1)

    assert options.shutdown_signals == (signal.SIGUSR1,)


def test_defaults_survive_early_config_block():
    # Needs a fresh process: the defaults must not be loaded before the block.
    code = (
        "import dask.config\n"
        "from dask_mpi._options import config_value\n"
        "with dask.config.set({'mpi.nthreads': 2}):\n"
        "    assert config_value('nthreads') == 2\n"
        "assert config_value('nthreads') is None\n"
        "assert config_value('scheduler-rank') == 0\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_cli_address_without_no_scheduler_rejected():
    with pytest.raises(UsageError) as caught:
        resolve_cli(scheduler_address="minutes")

    assert caught.value.option == "SCHEDULER_ADDRESS"
    assert "--no-scheduler" in str(caught.value)
    assert "'5 minutes'" in str(caught.value)


def test_api_address_with_scheduler_accepted():
    options = resolve_api(scheduler_address="tcp://127.0.0.1:8786")

    assert options.scheduler_address == "tcp://127.0.0.1:8786"


@pytest.mark.parametrize("value", [":80x", "localhost:99999", "host:-1"])
def test_bad_dashboard_port_rejected(value):
    with pytest.raises(UsageError) as caught:
        resolve_cli(dashboard_address=value)

    assert caught.value.option == "--dashboard-address"
    assert "0 to 65535" in str(caught.value)


@pytest.mark.parametrize(
    "value", [":8787", "127.0.0.1:0", "localhost", "[::1]:8787", "[::1]"]
)
def test_good_dashboard_address_accepted(value):
    assert resolve_cli(dashboard_address=value).dashboard_address == value


@pytest.mark.parametrize("value", [2.5, "100", "500kB"])
def test_tiny_memory_limit_rejected(value):
    with pytest.raises(UsageError) as caught:
        resolve_cli(memory_limit=value)

    assert caught.value.option == "--memory-limit"
    assert "below 1 MB" in str(caught.value)


@pytest.mark.parametrize(
    "variable, value, option",
    [
        ("DASK_MPI__WORKER_OPTIONS", "[1, 2]", "DASK_MPI__WORKER_OPTIONS"),
        ("DASK_MPI__SCHEDULER_OPTIONS", "idle_timeout=5", "DASK_MPI__SCHEDULER_OPTIONS"),
        ("DASK_MPI", "5", "mpi"),
    ],
)
def test_non_mapping_config_rejected(variable, value, option):
    # Needs a fresh process: the check runs when the defaults are first read.
    code = (
        "from dask_mpi._options import Mode, Style, resolve\n"
        "from dask_mpi.exceptions import UsageError\n"
        "try:\n"
        "    resolve(Mode.CLI, Style.CLI, {}, None)\n"
        "except UsageError as error:\n"
        "    print(error.option)\n"
    )
    environment = {**os.environ, variable: value}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == option
