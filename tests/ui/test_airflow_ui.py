"""The Airflow 3 UI in a real browser: what a user sees of this provider, checked in headless Chromium.

One deployment for the module (``tests/triggerer/stack.py``: the emulator, the API server, scheduler, DAG
processor and triggerer as separate processes in a fresh ``AIRFLOW_HOME``), the ``corsica_max_ndvi_v2`` example
DAG, and a system Chromium driven by Playwright (never a downloaded browser):

* the connection form shows the provider's labelled fields (deployment presets by name, the preset URLs) and
  hides host, schema and port; a saved connection shows its token URL, not ``***``;
* a Corsica v2 run shows ``wait_for_done`` deferred, then the run succeeds;
* ``wait_for_done`` shows both extra links, and both open a page (the emulator's request and outputs pages);
* a wrong client secret fails ``create`` at its first try, the token URL readable in the task log;
* ``airflow connections test`` succeeds, and fails in plain words for a wrong secret (the UI's Test button is
  broken on Airflow 3.3.2).

Run it with ``bash .ci/ui`` (Airflow 3.3.2). ``SENTINEL_BATCH_UI_TESTS=require`` runs it (a machine without
Chromium or Playwright is then a failure), anything else skips it. ``SENTINEL_BATCH_UI_SCREENSHOTS=<dir>`` keeps
the screenshots there (``docs/ui`` refreshes the documentation's images).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.triggerer.stack import AirflowStack
from tests.ui.browser import (
    DAG_ID,
    FAST,
    check_environment,
    check_extra_links,
    corsica_stack,
    created_request_id,
    screenshot,
)

pytestmark = [pytest.mark.ui, pytest.mark.timeout(420)]

WRONG_SECRET = "not-the-emulator-secret-5d1c"
SLOW = 0.5  # emulated seconds per second: a job that stays PROCESSING while we look


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    """Emulator + Airflow 3 daemons with the Corsica v2 example, and a connection with a wrong secret."""
    check_environment(airflow_3=True)

    def prepare(airflow: AirflowStack) -> None:
        wrong = json.loads(airflow.emulator.airflow_conn)
        wrong["password"] = WRONG_SECRET
        airflow.env["AIRFLOW_CONN_SENTINEL_BATCH_WRONG"] = json.dumps(wrong)
        airflow.env["AIRFLOW__CORE__TEST_CONNECTION"] = "Enabled"

    with corsica_stack(tmp_path_factory.mktemp("ui"), prepare) as airflow:
        yield airflow


def open_ui(page: Any, stack: AirflowStack, path: str, ready_text: str) -> None:
    """Open a UI page and wait until its translated text is there (the UI loads its strings after the page)."""
    page.goto(stack.api_url + path, wait_until="networkidle")
    page.get_by_text(ready_text, exact=True).first.wait_for()


def open_new_connection_form(page: Any, stack: AirflowStack) -> Any:
    open_ui(page, stack, "/connections", "Add Connection")
    page.get_by_role("button", name="Add Connection").click()
    dialog = page.get_by_role("dialog")
    combo = dialog.get_by_role("combobox").first
    combo.click()
    combo.fill("Sentinel Hub")
    page.get_by_role("option", name="Sentinel Hub Batch").click()
    dialog.get_by_text("Standard Fields", exact=True).wait_for()
    return dialog


def labels(dialog: Any) -> list[str]:
    return [" ".join(text.replace("*", "").split()) for text in dialog.locator("label").all_inner_texts()]


# ---------------------------------------------------------------------------------------------- tests
def test_connection_form_shows_the_provider_fields(stack: AirflowStack, page: Any) -> None:
    page.set_viewport_size({"width": 1400, "height": 1100})  # the whole dialog
    dialog = open_new_connection_form(page, stack)
    assert dialog.get_by_placeholder("OAuth client id").count() == 1
    screenshot(page, "connection-form.png")
    dialog.get_by_text("Extra Fields", exact=True).click()
    dialog.get_by_text("Token URL (override)", exact=True).wait_for()
    shown = labels(dialog)
    for label in (
        "Client ID",
        "Client secret",
        "Deployment",
        "Base URL (override)",
        "Token URL (override)",
        "Default Batch API version",
    ):
        assert label in shown, shown
    for hidden in ("Host", "Schema", "Port", "Login", "Password"):
        assert hidden not in shown, shown
    # the deployment select shows the preset by name, and the description the preset URLs
    assert dialog.get_by_text("Sentinel Hub EU (services.sentinel-hub.com)", exact=True).count() == 1
    text = dialog.inner_text()
    assert (
        "https://sh.dataspace.copernicus.eu" in text and "https://services-uswest2.sentinel-hub.com" in text
    )
    assert "Not set: v2" in text  # the API version left empty, not "null"
    screenshot(page, "connection-form-extras.png")
    deployment = dialog.get_by_role("combobox").nth(1)  # after the connection type
    deployment.focus()
    page.keyboard.press("ArrowDown")
    page.get_by_role("option").first.wait_for()
    options = page.get_by_role("option").all_inner_texts()
    assert options == [
        "Sentinel Hub EU (services.sentinel-hub.com)",
        "Sentinel Hub US West (services-uswest2.sentinel-hub.com)",
        "Copernicus Data Space Ecosystem (sh.dataspace.copernicus.eu)",
        "Custom: the two URLs below",
    ], options


def test_the_form_saves_numbers_and_long_names(stack: AirflowStack, page: Any) -> None:
    """What the form writes: no string extra value under 5 characters (Airflow 3 warns in every task log)."""
    page.set_viewport_size({"width": 1400, "height": 1100})
    dialog = open_new_connection_form(page, stack)
    dialog.get_by_label("Connection ID").fill("sentinel_batch_saved")
    dialog.get_by_placeholder("OAuth client id").fill("client-from-the-form")
    dialog.get_by_placeholder("OAuth client secret").fill("secret-from-the-form")
    dialog.get_by_text("Extra Fields", exact=True).click()
    for combo, option in (
        (1, "Copernicus Data Space Ecosystem (sh.dataspace.copernicus.eu)"),
        (2, "v1 (deprecated upstream)"),
    ):
        dialog.get_by_role("combobox").nth(combo).click()
        page.get_by_role("option", name=option, exact=True).click()
    dialog.get_by_role("button", name="Save").click()
    url = f"{stack.api_url}/api/v2/connections/sentinel_batch_saved"
    saved = stack.wait("the saved connection", lambda: stack.http.get(url, timeout=30).ok, timeout=30)
    assert saved
    extra = json.loads(stack.http.get(url, timeout=30).json()["extra"])
    assert extra["deployment"] == "copernicus-dataspace" and extra["api_version"] == 1, extra
    short = {k: v for k, v in extra.items() if isinstance(v, str) and 0 < len(v) < 5}
    assert short == {}, extra


def test_saved_connection_shows_its_urls_not_stars(stack: AirflowStack, page: Any) -> None:
    base, token = (
        stack.emulator.base_url,
        f"{stack.emulator.base_url}/auth/realms/main/protocol/openid-connect/token",
    )
    legacy = f"{base}/legacy-token-url"  # positive control: a key with "token" in it is masked by Airflow
    extra = {"deployment": "custom", "base_url": base, "auth_url": token, "token_url": legacy}
    response = stack.http.post(
        f"{stack.api_url}/api/v2/connections",
        json={
            "connection_id": "sentinel_batch_form",
            "conn_type": "sentinel_batch",
            "login": "emulator-client",
            "password": "emulator-secret",
            "extra": json.dumps(extra),
        },
        timeout=30,
    )
    assert response.status_code == 201, response.text
    page.set_viewport_size({"width": 1400, "height": 1100})
    open_ui(page, stack, "/connections", "sentinel_batch_form")
    row = page.locator("tr", has_text="sentinel_batch_form")
    row.get_by_role("button", name="Edit Connection").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Extra Fields", exact=True).click()
    assert dialog.locator("[name=element_base_url]").input_value() == base
    assert dialog.locator("[name=element_auth_url]").input_value() == token
    assert dialog.get_by_text("Custom: the two URLs below", exact=True).count() == 1
    # what Airflow hides: the secret, and the value of the legacy "token_url" key (positive control)
    hidden = [i.get_attribute("name") for i in dialog.locator("input").all() if i.input_value() == "***"]
    assert sorted(hidden) == ["element_token_url", "password"], hidden
    screenshot(page, "connection-edit.png")


def task_row(page: Any, task_id: str) -> Any:
    """The run page's row of one task (its task id is a link)."""
    return page.locator("tr").filter(has=page.get_by_role("link", name=task_id, exact=True))


def _state(stack: AirflowStack, run_id: str, task_id: str) -> str | None:
    ti = stack.task_instance(DAG_ID, run_id, task_id)
    return ti["state"] if ti else None


def test_corsica_run_defers_succeeds_and_links_open(stack: AirflowStack, page: Any) -> None:
    emulator = stack.emulator
    emulator.set_time_scale(FAST)
    run_id = "ui_corsica_v2"
    stack.trigger(DAG_ID, run_id)
    stack.wait(
        "the analysis to finish",
        lambda: _state(stack, run_id, "wait_for_analysis") == "success",
        timeout=150,
    )
    emulator.set_time_scale(SLOW)  # keep the job PROCESSING while the browser looks
    stack.wait(
        "wait_for_done deferred",
        lambda: _state(stack, run_id, "wait_for_done") == "deferred",
        timeout=90,
    )
    open_ui(page, stack, f"/dags/{DAG_ID}/runs/{run_id}", "Task Instances")
    task_row(page, "wait_for_done").get_by_text("Deferred", exact=True).wait_for()
    screenshot(page, "grid-deferred.png")

    emulator.set_time_scale(FAST)
    stack.wait("the run to succeed", lambda: stack.run_state(DAG_ID, run_id) == "success", timeout=120)
    open_ui(page, stack, f"/dags/{DAG_ID}/runs/{run_id}", "Task Instances")
    for task_id in ("create", "analyse", "wait_for_analysis", "start", "wait_for_done", "summary"):
        task_row(page, task_id).get_by_text("Success", exact=True).wait_for()
    screenshot(page, "grid.png")

    open_ui(page, stack, f"/dags/{DAG_ID}/runs/{run_id}/tasks/wait_for_done/details", "Extra Links")
    hrefs = check_extra_links(page, stack, created_request_id(stack, run_id))
    assert "***" not in json.dumps(hrefs)


def test_wrong_secret_fails_at_once_with_a_readable_token_url(stack: AirflowStack, page: Any) -> None:
    run_id = "ui_wrong_secret"
    response = stack.http.post(
        f"{stack.api_url}/api/v2/dags/{DAG_ID}/dagRuns",
        json={"dag_run_id": run_id, "logical_date": None, "conf": {"conn_id": "sentinel_batch_wrong"}},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    stack.wait("create to fail", lambda: _state(stack, run_id, "create") == "failed", timeout=120)
    ti = stack.task_instance(DAG_ID, run_id, "create")
    assert ti is not None and ti["try_number"] == 1  # the example sets retries=2: none was used
    log = stack.task_log(DAG_ID, run_id, "create")
    expected = (
        f"Token request to {stack.emulator.base_url}/auth/realms/main/protocol/openid-connect/token failed"
    )
    assert expected in log, log[-3000:]
    assert "Token request to *** failed" not in log and WRONG_SECRET not in log
    assert "Skipping masking for a secret as it's too short" not in log
    open_ui(page, stack, f"/dags/{DAG_ID}/runs/{run_id}/tasks/create", "Logs")
    page.get_by_text(expected, exact=False).first.wait_for()


def test_connections_test_command(stack: AirflowStack) -> None:
    """The command line test (the UI's Test button is broken on Airflow 3.3.2): success, and a plain failure."""
    out = stack.airflow("connections", "test", "sentinel_batch_default", timeout=120)
    assert "Connection success!" in out, out
    with pytest.raises(RuntimeError) as failed:
        stack.airflow("connections", "test", "sentinel_batch_wrong", timeout=120)
    token_url = f"{stack.emulator.base_url}/auth/realms/main/protocol/openid-connect/token"
    assert f"Token request to {token_url} failed: HTTP 401 invalid_client" in str(failed.value)
    assert WRONG_SECRET not in str(failed.value)
