"""The pytest plugin: fixtures, marker/param configuration, the session fixture, import lightness."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import requests

from airflow_provider_sentinel_batch.emulator import FAST_TIME_SCALE, EmulatorServer

PLUGIN = "airflow_provider_sentinel_batch.emulator.pytest_plugin"


def test_function_fixture_defaults(sentinel_batch_emulator: EmulatorServer, tmp_path: Path) -> None:
    emu = sentinel_batch_emulator
    assert emu.running
    assert emu.base_url.startswith("http://127.0.0.1:")
    assert emu.port not in (0, 8787)
    assert emu.token_url == emu.base_url + "/auth/realms/main/protocol/openid-connect/token"
    assert emu.state.clock.scale == FAST_TIME_SCALE
    assert emu.data_dir == (tmp_path / "sentinel-batch-emulator").resolve()
    conn = json.loads(emu.airflow_conn_json())
    assert conn == {
        "conn_type": "sentinel_batch",
        "login": "emulator-client",
        "password": "emulator-secret",
        "extra": {
            "deployment": "custom",
            "base_url": emu.base_url,
            "auth_url": emu.token_url,
        },
    }
    # the number the connection form writes (a short string like "v1" would be masked by Airflow 3 with a warning)
    assert json.loads(emu.airflow_conn_json(api_version="v1"))["extra"]["api_version"] == 1
    assert list(emu.airflow_env("my_conn")) == ["AIRFLOW_CONN_MY_CONN"]
    assert emu.sh_config_kwargs()["sh_base_url"] == emu.base_url
    assert "AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT" not in os.environ  # the fixture sets nothing global


@pytest.mark.sentinel_batch_emulator(time_scale=5.0, client_id="me", rate_429=1.0, seed=7)
def test_marker_configures_the_fixture(sentinel_batch_emulator: EmulatorServer) -> None:
    emu = sentinel_batch_emulator
    assert emu.state.clock.scale == 5.0
    assert emu.client_id == "me"
    assert emu.config.seed == 7
    token = emu.access_token()  # token endpoint is not hit by rate_429
    response = requests.get(
        emu.base_url + "/api/v1/batch/process", headers={"Authorization": f"Bearer {token}"}, timeout=5
    )
    assert response.status_code == 429


@pytest.mark.parametrize("sentinel_batch_emulator", [{"token_lifetime": 42}], indirect=True)
def test_indirect_parametrisation(sentinel_batch_emulator: EmulatorServer) -> None:
    body = requests.post(
        sentinel_batch_emulator.token_url,
        data={
            "grant_type": "client_credentials",
            "client_id": sentinel_batch_emulator.client_id,
            "client_secret": sentinel_batch_emulator.client_secret,
        },
        timeout=5,
    ).json()
    assert body["expires_in"] == 42


def test_session_fixture_is_shared_and_resettable(sentinel_batch_emulator_session: EmulatorServer) -> None:
    emu = sentinel_batch_emulator_session
    emu.reset()
    emu.set_faults(rate_429=0.25)
    assert emu.stats()["faults"]["rate_429"] == 0.25
    emu.reset()
    assert emu.stats()["faults"]["rate_429"] == 0.0
    assert emu.stats()["jobs_created"] == 0


def test_airflow_conn_fixture_sets_env(sentinel_batch_airflow_conn: EmulatorServer) -> None:
    value = json.loads(os.environ["AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT"])
    assert value["extra"]["base_url"] == sentinel_batch_airflow_conn.base_url


def test_unknown_marker_option_is_a_usage_error() -> None:
    from airflow_provider_sentinel_batch.emulator.pytest_plugin import build_server

    with pytest.raises(pytest.UsageError, match="unknown sentinel_batch_emulator option"):
        build_server({"colour": "blue"})


def test_plugin_works_for_a_users_test_suite(tmp_path: Path) -> None:
    """What docs/emulator.md shows, in a separate pytest; also proves plugin and package import nothing heavy."""
    (tmp_path / "test_user_dag.py").write_text(
        textwrap.dedent(
            """
            import sys
            import requests, pytest
            import airflow_provider_sentinel_batch.emulator as emulator

            # The plugin is loaded and the package imported, yet nothing heavy came with them.
            HEAVY = sorted(m for m in ("fastapi", "uvicorn", "starlette", "airflow") if m in sys.modules)

            def test_imports_are_light():
                assert HEAVY == []
                assert emulator.EmulatorServer is not None
                assert "airflow" not in sys.modules

            @pytest.mark.sentinel_batch_emulator(time_scale=2000)
            def test_it(sentinel_batch_emulator, monkeypatch):
                emu = sentinel_batch_emulator
                monkeypatch.setenv("AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT", emu.airflow_conn_json())
                token = emu.access_token()
                r = requests.get(emu.base_url + "/api/v2/batch/tilinggrids",
                                 headers={"Authorization": "Bearer " + token})
                assert r.status_code == 200
                assert emu.stats()["calls"]["GET /api/v2/batch/tilinggrids"] == 1
            """
        )
    )
    # Autoloading every plugin of this venv (Airflow's included) is slow; load ours explicitly instead.
    # That the entry point exists is checked in test_pytest11_entry_point.
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", PLUGIN, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_pytest11_entry_point() -> None:
    from importlib.metadata import entry_points

    assert PLUGIN in {ep.value for ep in entry_points(group="pytest11")}
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts["sentinel-batch-emulator"] == "airflow_provider_sentinel_batch.emulator.__main__:main"
