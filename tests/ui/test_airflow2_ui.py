"""The Airflow 2.11 UI in a real browser: the connection form and the extra links, checked in headless Chromium.

Airflow 2.11's UI is another application (Flask-AppBuilder pages and a React grid served by ``airflow
webserver``), so it has its own, smaller test; the Airflow 3 one is ``test_airflow_ui.py``. One deployment for
the module: the emulator, ``airflow webserver`` (127.0.0.1, one worker, anonymous users are admins: loopback
only), the scheduler and the triggerer (``tests/triggerer/stack.py``), the ``corsica_max_ndvi_v2`` example DAG:

* the connection form shows the provider's fields (its ``StringField`` widgets: deployment, the URL overrides,
  the API version) with the preset URLs, relabels login/password and hides host, schema and port;
* a Corsica v2 run reaches success, and ``wait_for_done`` shows both extra links in the grid's task details,
  each opening a page (the emulator's request and outputs pages).

Run it with ``bash .ci/ui`` (it runs both Airflow lines); ``SENTINEL_BATCH_UI_TESTS=require`` as for the Airflow 3
test. ``SENTINEL_BATCH_UI_SCREENSHOTS=<dir>`` keeps the screenshots (``airflow2-*.png``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.triggerer.stack import AirflowStack, free_port
from tests.ui import browser as ui

pytestmark = [pytest.mark.ui, pytest.mark.timeout(420)]

# anonymous visitors get the Admin role: acceptable only because the webserver listens on 127.0.0.1
WEBSERVER_CONFIG = """\
from flask_appbuilder.security.manager import AUTH_DB

AUTH_TYPE = AUTH_DB
AUTH_ROLE_PUBLIC = "Admin"
"""
PROVIDER_FIELDS = {
    "extra__sentinel_batch__deployment": "Deployment",
    "extra__sentinel_batch__base_url": "Base URL (override)",
    "extra__sentinel_batch__auth_url": "Token URL (override)",
    "extra__sentinel_batch__api_version": "Default Batch API version",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    """Emulator + Airflow 2.11 webserver, scheduler and triggerer with the Corsica v2 example."""
    ui.check_environment(airflow_3=False)
    port = free_port()

    def prepare(airflow: AirflowStack) -> None:
        (airflow.home / "webserver_config.py").write_text(WEBSERVER_CONFIG)
        airflow.api_url = f"http://127.0.0.1:{port}"
        airflow._spawn(
            "webserver", "webserver", "--hostname", "127.0.0.1", "--port", str(port), "--workers", "1"
        )

    with ui.corsica_stack(tmp_path_factory.mktemp("ui2"), prepare) as airflow:
        airflow.wait("the webserver", lambda: airflow._api_ok("/health"), timeout=180)
        yield airflow


def row_label(page: Any, field: str) -> str:
    """The label text of a form field (the form is a table: one row per field)."""
    return " ".join(page.locator(f"label[for={field}]").inner_text().replace("*", "").split())


def test_connection_form_shows_the_provider_fields(stack: AirflowStack, page: Any) -> None:
    page.set_viewport_size({"width": 1400, "height": 1300})
    page.goto(f"{stack.api_url}/connection/add", wait_until="networkidle")
    page.locator("#conn_type").wait_for(state="attached")
    page.evaluate("() => $('#conn_type').val('sentinel_batch').trigger('change')")
    page.locator("#extra__sentinel_batch__deployment").wait_for(state="visible")
    for field, label in PROVIDER_FIELDS.items():
        assert page.locator(f"#{field}").is_visible(), field
        assert row_label(page, field) == label
    assert page.locator("#extra__sentinel_batch__deployment").input_value() == "sentinel-hub-eu"
    assert row_label(page, "login") == "Client ID" and row_label(page, "password") == "Client secret"
    for hidden in ("host", "schema", "port", "extra"):
        assert not page.locator(f"#{hidden}").is_visible(), hidden
    text = page.inner_text("body")
    for url in ("https://services.sentinel-hub.com", "https://sh.dataspace.copernicus.eu"):
        assert url in text
    assert "copernicus-dataspace" in text and "1 = v1" in text
    ui.screenshot(page, "airflow2-connection-form.png", full_page=True)


def test_corsica_run_succeeds_and_links_open(stack: AirflowStack, page: Any) -> None:
    run_id = "ui2_corsica_v2"
    stack.trigger(ui.DAG_ID, run_id)
    stack.wait("the run to succeed", lambda: stack.run_state(ui.DAG_ID, run_id) == "success", timeout=240)
    page.goto(
        f"{stack.api_url}/dags/{ui.DAG_ID}/grid?dag_run_id={run_id}&task_id=wait_for_done",
        wait_until="networkidle",
    )
    page.get_by_text("Extra Links", exact=True).wait_for()
    ui.check_extra_links(page, stack, ui.created_request_id(stack, run_id), prefix="airflow2-")
