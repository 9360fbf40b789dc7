"""pytest fixtures running the emulator in the test process (registered by the ``pytest11`` entry point).

Loaded in every pytest run of anyone who installs the package, so it imports nothing but pytest at import
time; FastAPI/uvicorn load only when a test asks for a fixture.

* ``sentinel_batch_emulator`` (function scope): a fresh ``EmulatorServer`` on a free loopback port, fast
  clock, outputs under the test's ``tmp_path``. Configure with
  ``@pytest.mark.sentinel_batch_emulator(time_scale=..., token_lifetime=..., rate_429=..., ...)`` (any
  ``EmulatorConfig`` or ``FaultConfig`` field) or indirect parametrisation with a dict.
* ``sentinel_batch_emulator_session`` (session scope): one shared server; call ``.reset()`` between tests.
  Override the ``sentinel_batch_emulator_session_options`` fixture to configure it.
* ``sentinel_batch_airflow_conn``: the function-scoped server with ``AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT``
  set through ``monkeypatch`` (the only fixture here that touches the environment).
* ``sentinel_batch_s3_server`` (session scope): a real S3-compatible server on loopback (moto in server mode with
  signature checks, see ``s3server.S3Server``; needs moto) with a writer and a reader key pair; give it to the
  emulator with ``EmulatorConfig(s3=server.emulator_delivery())``. ``sentinel_batch_s3_bucket``: a new bucket on
  it for one test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .s3server import S3Server
    from .server import EmulatorServer

MARKER = "sentinel_batch_emulator"


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``sentinel_batch_emulator`` marker, so ``--strict-markers`` runs accept it."""
    config.addinivalue_line(
        "markers",
        f"{MARKER}(**options): options for the sentinel_batch_emulator fixture (EmulatorConfig/FaultConfig "
        "fields, e.g. time_scale=2000, token_lifetime=1, rate_429=0.5, tile_failure_rate=0.1)",
    )


def build_server(options: dict[str, Any], data_dir: Path | None = None) -> EmulatorServer:
    """An unstarted server from options: fault fields go to ``FaultConfig``, the rest to the config."""
    import dataclasses

    from .config import FAST_TIME_SCALE, EmulatorConfig, FaultConfig
    from .server import EmulatorServer

    opts = dict(options)
    config_fields = {f.name for f in dataclasses.fields(EmulatorConfig)}
    fault_fields = FaultConfig.field_names() - config_fields
    faults = opts.pop("faults", None)
    if isinstance(faults, dict):
        faults = FaultConfig(**faults)
    faults = faults or FaultConfig()
    fault_changes = {k: opts.pop(k) for k in list(opts) if k in fault_fields}
    unknown = set(opts) - config_fields
    if unknown:
        raise pytest.UsageError(f"unknown {MARKER} option(s): {', '.join(sorted(unknown))}")
    opts.setdefault("port", 0)
    opts.setdefault("time_scale", FAST_TIME_SCALE)
    if data_dir is not None:
        opts.setdefault("data_dir", data_dir)
    return EmulatorServer(EmulatorConfig(faults=faults.updated(**fault_changes), **opts))


def _options(request: pytest.FixtureRequest) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    marker = request.node.get_closest_marker(MARKER)
    if marker is not None:
        opts.update(marker.kwargs)
    param = getattr(request, "param", None)
    if isinstance(param, dict):
        opts.update(param)
    return opts


@pytest.fixture
def sentinel_batch_emulator(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EmulatorServer]:
    """A running emulator for one test: the ``EmulatorServer`` (base_url, token_url, stats, faults...)."""
    server = build_server(_options(request), tmp_path / "sentinel-batch-emulator")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def sentinel_batch_emulator_session_options() -> dict[str, Any]:
    """Override in your conftest.py to configure ``sentinel_batch_emulator_session``."""
    return {}


@pytest.fixture(scope="session")
def sentinel_batch_emulator_session(
    sentinel_batch_emulator_session_options: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmulatorServer]:
    """One emulator for the whole session; call ``.reset()`` (and ``.clear_faults()``) to isolate tests."""
    server = build_server(
        sentinel_batch_emulator_session_options, tmp_path_factory.mktemp("sentinel-batch-emulator")
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sentinel_batch_airflow_conn(
    sentinel_batch_emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> EmulatorServer:
    """The emulator plus ``AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT`` pointing at it (v2; see docs for v1)."""
    for key, value in sentinel_batch_emulator.airflow_env().items():
        monkeypatch.setenv(key, value)
    return sentinel_batch_emulator


@pytest.fixture(scope="session")
def sentinel_batch_s3_server() -> Iterator[S3Server]:
    """One S3-compatible server on 127.0.0.1 for the session (tests keep apart with their own buckets)."""
    from .s3server import S3Server

    with S3Server() as server:
        yield server


@pytest.fixture
def sentinel_batch_s3_bucket(sentinel_batch_s3_server: S3Server) -> str:
    """A new, empty bucket on the session's S3 server."""
    return sentinel_batch_s3_server.create_bucket()
