"""The CLI: one ready line, flags applied, loopback-only by default, clean shutdown, --state-file."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import requests

from airflow_provider_sentinel_batch.emulator import EmulatorConfig, EmulatorServer
from tests.emulator.helpers import Api, v2_payload

MODULE = [sys.executable, "-m", "airflow_provider_sentinel_batch.emulator"]


def _start(*args: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    proc = subprocess.Popen(
        [*MODULE, "--port", "0", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.stderr.read() if proc.stderr else ""
    fields = dict(re.findall(r"(\w+)=(\S+)", line.split(" AIRFLOW_CONN_")[0]))
    conn = line.split("AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT='", 1)[1].rsplit("'", 1)[0]
    fields["conn"] = conn
    return proc, fields


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=10)


def _token(fields: dict[str, str]) -> str:
    form = {
        "grant_type": "client_credentials",
        "client_id": fields["client_id"],
        "client_secret": fields["client_secret"],
    }
    return requests.post(fields["token_url"], data=form, timeout=5).json()["access_token"]


def test_cli_ready_line_flags_and_sigterm(tmp_path: Path) -> None:
    proc, fields = _start(
        "--client-id",
        "cli-id",
        "--client-secret",
        "cli-secret",
        "--fault-429-rate",
        "1",
        "--data-dir",
        str(tmp_path),
        "--time-scale",
        "1000",
    )
    try:
        assert fields["base_url"].startswith("http://127.0.0.1:")
        assert fields["token_url"] == fields["base_url"] + "/auth/realms/main/protocol/openid-connect/token"
        assert (fields["client_id"], fields["client_secret"]) == ("cli-id", "cli-secret")
        conn = json.loads(fields["conn"])
        assert conn["extra"]["base_url"] == fields["base_url"]
        assert conn["login"] == "cli-id"
        token = _token(fields)
        response = requests.get(
            fields["base_url"] + "/api/v1/batch/process",
            headers={"Authorization": f"Bearer {token}"},
            timeout=5,
        )
        assert response.status_code == 429
        stats = requests.get(fields["base_url"] + "/_emulator/stats", timeout=5).json()
        assert stats["time_scale"] == 1000
        assert stats["data_dir"] == str(tmp_path.resolve())
    finally:
        assert _stop(proc) == 0


def test_cli_refuses_non_loopback_host() -> None:
    result = subprocess.run(
        [*MODULE, "--host", "0.0.0.0", "--port", "0"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "--allow-remote" in result.stderr
    assert result.stdout == ""


def test_state_file_survives_restart(tmp_path: Path) -> None:
    """``--state-file`` (``EmulatorConfig.state_file``): jobs and tokens survive a restart."""
    config = EmulatorConfig(port=0, time_scale=1.0, state_file=tmp_path / "state.json", data_dir=tmp_path)
    with EmulatorServer(config) as first:
        api = Api(first)
        task_id = api.create(2, v2_payload())["id"]
        assert api.action(2, task_id, "analyse").status_code == 204
    assert config.state_file is not None
    assert Path(config.state_file).exists()
    with EmulatorServer(config) as second:
        api.server = second  # same credentials and seed: the old token is still valid
        task = api.job(2, task_id)
        assert task["status"] == "ANALYSING"
        assert task["userAction"] == "ANALYSE"
        assert second.stats()["jobs_created"] == 1
