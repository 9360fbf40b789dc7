"""Connection extras as Airflow's secrets masker sees them: none of the provider's keys is hidden."""

from __future__ import annotations

import json

import pytest

from airflow_provider_sentinel_batch.get_provider_info import get_provider_info
from airflow_provider_sentinel_batch.hooks.sentinel_batch import SentinelBatchHook


def _should_hide(key: str) -> bool:
    try:  # Airflow 3 (the same rules as the API server's, in airflow._shared)
        from airflow.sdk._shared.secrets_masker import should_hide_value_for_key
    except ImportError:  # Airflow 2.11
        from airflow.utils.log.secrets_masker import should_hide_value_for_key
    return bool(should_hide_value_for_key(key))


def _conn_fields() -> list[str]:
    (entry,) = get_provider_info()["connection-types"]
    return sorted(entry["conn-fields"])


def test_the_masker_check_works_here():
    # positive controls: the same check hides what it must, including the old token URL key
    assert _should_hide("password") and _should_hide("client_secret") and _should_hide("token_url")


@pytest.mark.parametrize("key", _conn_fields())
def test_no_extra_key_is_treated_as_sensitive(key):
    assert not _should_hide(key)
    assert not _should_hide(f"extra__sentinel_batch__{key}")  # the form's prefixed key (Airflow 2.x, 3.0/3.1)


def test_form_widgets_use_the_same_keys():
    pytest.importorskip("flask_appbuilder", reason="3.2+ builds the form from conn-fields, without Flask")
    assert sorted(SentinelBatchHook.get_connection_form_widgets()) == _conn_fields()


@pytest.mark.parametrize("key", ["auth_url", "token_url", "extra__sentinel_batch__auth_url"])
def test_auth_url_and_its_alias_set_the_token_url(monkeypatch, key):
    token_url = "http://127.0.0.1:8787/auth/realms/main/protocol/openid-connect/token"
    conn = {
        "conn_type": "sentinel_batch",
        "login": "client-1",
        "password": "a-secret-value",
        "extra": {"deployment": "custom", "base_url": "http://127.0.0.1:8787", key: token_url},
    }
    monkeypatch.setenv("AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT", json.dumps(conn))
    assert SentinelBatchHook().settings.token_url == token_url


def test_auth_url_wins_over_the_alias(monkeypatch):
    conn = {
        "conn_type": "sentinel_batch",
        "login": "client-1",
        "password": "a-secret-value",
        "extra": {
            "deployment": "custom",
            "base_url": "http://127.0.0.1:8787",
            "auth_url": "http://127.0.0.1:8787/new",
            "token_url": "http://127.0.0.1:8787/old",
        },
    }
    monkeypatch.setenv("AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT", json.dumps(conn))
    assert SentinelBatchHook().settings.token_url == "http://127.0.0.1:8787/new"


def test_custom_without_urls_names_the_keys(monkeypatch):
    from airflow_provider_sentinel_batch.exceptions import SentinelBatchConfigError

    conn = {
        "conn_type": "sentinel_batch",
        "login": "c",
        "password": "a-secret-value",
        "extra": {"deployment": "custom"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT", json.dumps(conn))
    with pytest.raises(SentinelBatchConfigError, match="'base_url' and 'auth_url'"):
        _ = SentinelBatchHook().settings


def _masker():
    try:  # Airflow 3: what a task's connection lookup and its log lines go through
        from airflow.sdk._shared.secrets_masker import redact
    except ImportError:  # Airflow 2.11
        from airflow.utils.log.secrets_masker import redact
    return redact


@pytest.mark.parametrize(("key", "masked"), [("token_url", True), ("auth_url", False)])
def test_the_token_url_stays_readable_in_log_lines(monkeypatch, key, masked):
    """Airflow registers the values of sensitive extra keys as secrets when a task reads the extras."""
    from airflow.providers.common.compat.sdk import BaseHook

    token_url = f"http://127.0.0.1:{9101 if masked else 9102}/auth/realms/main/protocol/openid-connect/token"
    conn = {
        "conn_type": "sentinel_batch",
        "login": "client-1",
        "password": "a-secret-value",
        "extra": {"deployment": "custom", "base_url": "http://127.0.0.1:8787", key: token_url},
    }
    monkeypatch.setenv("AIRFLOW_CONN_MASKED_OR_NOT", json.dumps(conn))
    _ = BaseHook.get_connection("masked_or_not").extra_dejson  # what Airflow's own lookups do
    line = f"Token request to {token_url} failed: HTTP 401"
    assert (_masker()(line) == "Token request to *** failed: HTTP 401") is masked


def test_the_emulator_connection_logs_no_short_secret_warning(monkeypatch, caplog, tmp_path):
    """Airflow 3 warns once per process for any extra value under 5 characters ("v2") when it loads a
    connection (its own lookup reads ``extra_dejson``); the connection the emulator prints has none."""
    masker = pytest.importorskip("airflow.sdk._shared.secrets_masker.secrets_masker")
    from airflow_provider_sentinel_batch.emulator import EmulatorServer

    conn = json.loads(
        EmulatorServer(data_dir=tmp_path).airflow_conn_json("v2")
    )  # not started: no port needed
    caplog.set_level("WARNING")

    def warned(extra: dict) -> bool:
        monkeypatch.setattr(masker.SecretsMasker, "_has_warned_short_secret", False)
        monkeypatch.setenv("AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT", json.dumps({**conn, "extra": extra}))
        caplog.clear()
        settings = SentinelBatchHook().settings
        assert settings.api_version == extra.get("api_version", "v2")
        return "Skipping masking for a secret as it's too short" in caplog.text

    assert not warned(conn["extra"])
    assert warned({**conn["extra"], "api_version": "v2"})  # positive control: the value that caused it


async def test_the_trigger_reads_the_connection_the_same_way(monkeypatch):
    from airflow_provider_sentinel_batch.hooks.async_client import settings_for_conn_id

    conn = {
        "conn_type": "sentinel_batch",
        "login": "client-1",
        "password": "a-secret-value",
        "extra": {"deployment": "cdse", "api_version": "v1"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT", json.dumps(conn))
    settings = await settings_for_conn_id("sentinel_batch_default")
    assert (settings.deployment, settings.api_version) == ("copernicus-dataspace", "v1")
    assert settings == SentinelBatchHook().settings


def test_an_extra_that_is_not_json_is_a_clear_error(monkeypatch):
    from airflow_provider_sentinel_batch.exceptions import SentinelBatchConfigError

    conn = {
        "conn_type": "sentinel_batch",
        "login": "c",
        "password": "a-secret-value",
        "extra": "deployment=cdse",
    }
    monkeypatch.setenv("AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT", json.dumps(conn))
    with pytest.raises(SentinelBatchConfigError, match="not a JSON object"):
        _ = SentinelBatchHook().settings


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        # what the connection form writes: numbers and names of 5+ characters (nothing for the masker to skip)
        ({"deployment": "copernicus-dataspace", "api_version": 1}, ("copernicus-dataspace", "v1")),
        ({"deployment": "sentinel-hub-us", "api_version": 2}, ("sentinel-hub-us", "v2")),
        ({"api_version": None}, ("sentinel-hub-eu", "v2")),
        # what older connections and URIs hold keeps working
        ({"deployment": "cdse", "api_version": "v1"}, ("copernicus-dataspace", "v1")),
        ({"deployment": "CDSE", "api_version": "V2"}, ("copernicus-dataspace", "v2")),
        ({"api_version": "1"}, ("sentinel-hub-eu", "v1")),
        ({"api_version": ""}, ("sentinel-hub-eu", "v2")),
    ],
)
def test_deployment_and_api_version_spellings(monkeypatch, extra, expected):
    conn = {"conn_type": "sentinel_batch", "login": "client-1", "password": "a-secret-value", "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT", json.dumps(conn))
    settings = SentinelBatchHook().settings
    assert (settings.deployment, settings.api_version) == expected
    if expected[0] == "copernicus-dataspace":
        assert settings.base_url == "https://sh.dataspace.copernicus.eu"


@pytest.mark.parametrize("value", [3, "v3", True, [2], "statistical"])
def test_a_wrong_api_version_names_the_accepted_values(monkeypatch, value):
    from airflow_provider_sentinel_batch.exceptions import SentinelBatchConfigError

    conn = {
        "conn_type": "sentinel_batch",
        "login": "c",
        "password": "a-secret-value",
        "extra": {"api_version": value},
    }
    monkeypatch.setenv("AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT", json.dumps(conn))
    with pytest.raises(SentinelBatchConfigError, match=r"api_version must be 2 or 1 \(or 'v2'/'v1'\)"):
        _ = SentinelBatchHook().settings


def test_the_form_writes_no_value_under_5_characters():
    """Every value the 3.x form can write is a number, empty, or a string Airflow 3's masker does not skip."""
    (entry,) = get_provider_info()["connection-types"]
    for key, field in entry["conn-fields"].items():
        for value in field["schema"].get("enum", []):
            assert value is None or not isinstance(value, str) or len(value) >= 5, (key, value)
    assert 1 in entry["conn-fields"]["api_version"]["schema"]["enum"]  # the check reads the enums it means
