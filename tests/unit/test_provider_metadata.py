"""Provider metadata as Airflow itself loads it, on 2.11 and 3.x.

A schema violation, a wrong ``package-name`` or an Airflow import in ``get_provider_info.py`` breaks every
``airflow`` command; a connection form widget Airflow 2.11 does not accept silently drops the whole
``sentinel_batch`` connection type (``Connection.get_hook()`` then fails). These tests catch both.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import subprocess
import sys
from argparse import Namespace
from importlib import metadata, resources
from pathlib import Path
from urllib.parse import quote

import jsonschema
import pytest

import airflow_provider_sentinel_batch.get_provider_info as provider_info_module
from airflow_provider_sentinel_batch.get_provider_info import get_provider_info
from airflow_provider_sentinel_batch.hooks.sentinel_batch import SentinelBatchHook

DIST = "airflow-provider-sentinel-batch"
HOOK_CLASS = "airflow_provider_sentinel_batch.hooks.sentinel_batch.SentinelBatchHook"
AIRFLOW_2 = metadata.version("apache-airflow").startswith("2.")
CONN_FIELDS = {"deployment", "base_url", "auth_url", "api_version"}


def _conn_type_entry() -> dict:
    (entry,) = [
        c for c in get_provider_info()["connection-types"] if c["connection-type"] == "sentinel_batch"
    ]
    return entry


def _airflow_schema(name: str) -> dict:
    return json.loads((resources.files("airflow") / name).read_text())


# ------------------------------------------------------------------------------------ the dict itself
def test_provider_info_validates_against_airflow_schema():
    jsonschema.validate(get_provider_info(), _airflow_schema("provider_info.schema.json"))


def test_package_name_and_entry_point_match_the_distribution():
    info = get_provider_info()
    assert info["package-name"] == metadata.distribution(DIST).metadata["Name"].lower().replace("_", "-")
    (entry_point,) = [
        ep for ep in metadata.entry_points(group="apache_airflow_provider") if ep.dist.name == DIST
    ]
    assert entry_point.load() is get_provider_info


def test_get_provider_info_module_does_not_import_airflow():
    # imported during provider discovery, i.e. while airflow itself is importing: no circular imports
    tree = ast.parse(Path(provider_info_module.__file__).read_text())
    modules = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in modules if m.split(".")[0] in ("airflow", "airflow_provider_sentinel_batch")]


def test_declared_ui_behaviour_matches_the_hook_methods():
    entry = _conn_type_entry()
    assert entry["hook-class-name"] == HOOK_CLASS
    assert entry["hook-name"] == SentinelBatchHook.hook_name
    assert set(entry["conn-fields"]) == CONN_FIELDS
    legacy = SentinelBatchHook.get_ui_field_behaviour()
    jsonschema.validate(legacy, _airflow_schema("customized_form_field_behaviours.schema.json"))
    assert {k.replace("_", "-"): v for k, v in legacy.items()} == entry["ui-field-behaviour"]


def test_connection_form_widgets_are_ones_airflow_2_accepts():
    """2.11 (and 3.0/3.1) build the form from these; any field class beyond four drops the connection type."""
    if not AIRFLOW_2:
        pytest.importorskip("flask_appbuilder", reason="3.2+ builds the form from conn-fields, without Flask")
    from wtforms import BooleanField, IntegerField, PasswordField, StringField

    widgets = SentinelBatchHook.get_connection_form_widgets()
    assert set(widgets) == CONN_FIELDS
    allowed = {StringField, PasswordField, IntegerField, BooleanField}
    assert {name: w.field_class for name, w in widgets.items() if w.field_class not in allowed} == {}


# --------------------------------------------------------------------- as Airflow's providers manager
@pytest.fixture(scope="module")
def providers_manager():
    from airflow.providers_manager import ProvidersManager

    return ProvidersManager()


def test_providers_manager_lists_the_provider(providers_manager):
    provider = providers_manager.providers[DIST]
    assert provider.version == metadata.version(DIST)
    assert provider.data["package-name"] == DIST


def test_sentinel_batch_connection_type_resolves_to_the_hook(providers_manager):
    if AIRFLOW_2:
        hooks = providers_manager.hooks
    else:  # 3.x: the task-side registry; ProvidersManager.hooks is deprecated there
        from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

        hooks = ProvidersManagerTaskRuntime().hooks
    info = hooks["sentinel_batch"]
    assert info is not None, "the providers manager dropped the hook (see its warnings)"
    assert (info.hook_class_name, info.connection_id_attribute_name) == (HOOK_CLASS, "sentinel_batch_conn_id")
    assert (info.package_name, info.hook_name, info.connection_testable) == (DIST, "Sentinel Hub Batch", True)


def test_connection_form_fields_and_behaviour_are_registered(providers_manager):
    # 2.11 reads them from the hook methods, 3.2+ from conn-fields / ui-field-behaviour in the provider info
    widgets = {
        k for k in providers_manager.connection_form_widgets if k.startswith("extra__sentinel_batch__")
    }
    assert widgets == {f"extra__sentinel_batch__{name}" for name in CONN_FIELDS}
    behaviour = providers_manager.field_behaviours["sentinel_batch"]
    assert behaviour["relabeling"] == {"login": "Client ID", "password": "Client secret"}
    assert set(behaviour["hidden_fields"]) == {"schema", "port", "host", "extra"}


def test_connection_get_hook_builds_the_hook(monkeypatch):
    from airflow.providers.common.compat.sdk import BaseHook

    monkeypatch.setenv(
        "AIRFLOW_CONN_MY_SENTINEL", json.dumps({"conn_type": "sentinel_batch", "login": "c", "password": "s"})
    )
    hook = BaseHook.get_hook("my_sentinel")
    assert isinstance(hook, SentinelBatchHook)
    assert hook.sentinel_batch_conn_id == "my_sentinel"


def _cli_json(command: str) -> list[dict]:
    from airflow.cli.commands import provider_command

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        getattr(provider_command, command)(Namespace(output="json", verbose=False))
    return json.loads(out.getvalue())


def test_cli_providers_list_and_hooks_show_the_provider(providers_manager):
    """What ``airflow providers list`` / ``airflow providers hooks`` print, via their command functions."""
    assert {"package_name": DIST, "version": metadata.version(DIST)}.items() <= next(
        p for p in _cli_json("providers_list") if p["package_name"] == DIST
    ).items()
    (row,) = [h for h in _cli_json("hooks_list") if h["connection_type"] == "sentinel_batch"]
    assert (row["class"], row["package_name"], row["conn_id_attribute_name"]) == (
        HOOK_CLASS,
        DIST,
        "sentinel_batch_conn_id",
    )


@pytest.mark.integration
def test_airflow_cli_in_a_fresh_process_lists_the_provider(tmp_path):
    """The real ``airflow`` command in a fresh AIRFLOW_HOME: discovery by entry point, schema check, no crash."""
    env = {"PATH": str(Path(sys.executable).parent), "AIRFLOW_HOME": str(tmp_path)}
    env["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    done = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "list", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    listed = {p["package_name"]: p["version"] for p in json.loads(done.stdout[done.stdout.index("[") :])}
    assert listed[DIST] == metadata.version(DIST)


# ----------------------------------------------------------------- AIRFLOW_CONN_* forms, JSON and URI
SECRET = "s3cr/et:with@odd+chars?&="  # CDSE-style secrets may contain URI-reserved characters
EMULATOR = {"base_url": "http://127.0.0.1:8787", "token_url": "http://127.0.0.1:8787/oauth/token"}


def _uri(query: str) -> str:
    # "sentinel-batch://": "_" is not legal in a URI scheme; Airflow maps "-" back to the "sentinel_batch" type
    return f"sentinel-batch://client-1:{quote(SECRET, safe='')}@/?{query}"


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(
            json.dumps(
                {
                    "conn_type": "sentinel_batch",
                    "login": "client-1",
                    "password": SECRET,
                    "extra": {"deployment": "custom", "api_version": "v1", **EMULATOR},
                }
            ),
            id="json-extra-object",
        ),
        pytest.param(  # what `airflow connections get -o json` / exports produce: extra as a JSON string
            json.dumps(
                {
                    "conn_type": "sentinel_batch",
                    "login": "client-1",
                    "password": SECRET,
                    "extra": json.dumps({"deployment": "custom", "api_version": "v1", **EMULATOR}),
                }
            ),
            id="json-extra-string",
        ),
        pytest.param(  # Airflow 2.x UI form keys
            json.dumps(
                {
                    "conn_type": "sentinel_batch",
                    "login": "client-1",
                    "password": SECRET,
                    "extra": {
                        "extra__sentinel_batch__deployment": "custom",
                        "extra__sentinel_batch__api_version": "v1",
                        **{f"extra__sentinel_batch__{k}": v for k, v in EMULATOR.items()},
                    },
                }
            ),
            id="json-ui-prefixed",
        ),
        pytest.param(
            _uri(
                "deployment=custom&api_version=v1&base_url="
                + quote(EMULATOR["base_url"], safe="")
                + "&token_url="
                + quote(EMULATOR["token_url"], safe="")
            ),
            id="uri-query",
        ),
        pytest.param(
            _uri(
                "__extra__="
                + quote(json.dumps({"deployment": "custom", "api_version": "v1", **EMULATOR}), safe="")
            ),
            id="uri-__extra__",
        ),
    ],
)
def test_env_connection_forms_resolve_to_the_same_settings(monkeypatch, value):
    monkeypatch.setenv("AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT", value)
    s = SentinelBatchHook().settings
    assert (s.client_id, s.client_secret, s.deployment, s.api_version) == ("client-1", SECRET, "custom", "v1")
    assert (s.base_url, s.token_url) == (EMULATOR["base_url"], EMULATOR["token_url"])


def test_connection_get_uri_round_trips_through_the_environment(monkeypatch):
    from airflow.providers.common.compat.sdk import Connection

    conn = Connection(
        conn_id="x",
        conn_type="sentinel_batch",
        login="client-1",
        password=SECRET,
        extra=json.dumps({"deployment": "cdse", "api_version": "v1"}),
    )
    monkeypatch.setenv("AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT", conn.get_uri())
    s = SentinelBatchHook().settings
    assert (s.client_secret, s.deployment, s.api_version) == (SECRET, "copernicus-dataspace", "v1")
    assert s.base_url == "https://sh.dataspace.copernicus.eu"
