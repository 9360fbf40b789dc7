"""What both browser tests share: the switch that runs them, the system Chromium, the deployment, screenshots."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.triggerer.stack import AIRFLOW_3, AirflowStack, StackEmulator, clean_environment

EXAMPLES = Path(__file__).resolve().parents[2] / "dags_examples"
DAG_ID = "corsica_max_ndvi_v2"
BUCKET = "sentinel-batch-demo"  # the example's default bucket
FAST = 100.0  # emulated seconds per second: a quick job

SWITCH = "SENTINEL_BATCH_UI_TESTS"
CHROMIUM = os.environ.get("SENTINEL_BATCH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UI_TIMEOUT_MS = 30_000


def check_environment(*, airflow_3: bool) -> None:
    """Skip unless asked for and on the Airflow line this test covers; fail clearly when Chromium is missing."""
    if os.environ.get(SWITCH, "").strip().lower() not in {"require", "1", "on", "true", "yes"}:
        pytest.skip(f"the browser test runs with `bash .ci/ui` ({SWITCH}=require)")
    if airflow_3 != AIRFLOW_3:
        pytest.skip(f"this browser test covers the Airflow {'3' if airflow_3 else '2.11'} UI")
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{SWITCH}=require but there is no Chromium at {CHROMIUM}. Install it from the OS packages "
            "(Debian/Ubuntu: `sudo apt-get install -y chromium chromium-driver`) or point "
            "SENTINEL_BATCH_CHROMIUM at one; `bash .ci/ui` installs it itself when run as root."
        )
    if importlib.util.find_spec("playwright") is None:
        pytest.fail(f"{SWITCH}=require but Playwright for Python is missing: pip install playwright")


def screenshot(page: Any, name: str, **kwargs: Any) -> None:
    """Keep a screenshot when SENTINEL_BATCH_UI_SCREENSHOTS names a folder (docs/ui for the documentation)."""
    folder = os.environ.get("SENTINEL_BATCH_UI_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / name), **kwargs)


@contextmanager
def corsica_stack(root: Path, prepare: Callable[[AirflowStack], None]) -> Iterator[AirflowStack]:
    """The emulator and Airflow's daemons with the Corsica v2 example; every process stopped, even on failure.

    ``prepare`` runs once the DB is migrated and the emulator answers, before the daemons start (settings, extra
    connections, more daemons).
    """
    emulator = StackEmulator(root, time_scale=FAST, env=clean_environment())
    airflow: AirflowStack | None = None
    try:
        emulator.launch()
        airflow = AirflowStack(root, emulator)
        airflow.dags_folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(EXAMPLES / f"{DAG_ID}.py", airflow.dags_folder)
        shutil.copytree(EXAMPLES / "include", airflow.dags_folder / "include")
        airflow.migrate()
        emulator.wait_ready()
        airflow.env.update(
            {
                "AIRFLOW_CONN_SENTINEL_BATCH_BUCKET": json.dumps(
                    {"conn_type": "aws", "login": "demo-access-key", "password": "demo-secret-key"}
                ),
                "SENTINEL_BATCH_POLL_INTERVAL": "1",
                "SENTINEL_BATCH_ANALYSIS_POLL_INTERVAL": "0.5",
            }
        )
        prepare(airflow)
        airflow.start()
        airflow.wait_ready([DAG_ID], timeout=240)
        yield airflow
    finally:
        if airflow is not None:
            airflow.stop()
        emulator.stop()


def created_request_id(stack: AirflowStack, run_id: str) -> str:
    """The request id the ``create`` task of a run pushed (read from the metadata DB)."""
    (row,) = stack.query(
        "SELECT value FROM xcom WHERE dag_id = ? AND run_id = ? AND task_id = 'create' AND key = 'request_id'",
        DAG_ID,
        run_id,
    )
    value = row["value"]  # JSON text (Airflow 3) or bytes (Airflow 2.11)
    return str(json.loads(value.decode() if isinstance(value, bytes) else value))


def check_extra_links(page: Any, stack: AirflowStack, request_id: str, prefix: str = "") -> dict[str, Any]:
    """The task page open in ``page`` shows both extra links with the emulator's pages as targets, and both open.

    Screenshots ``<prefix>extra-links.png`` and ``<prefix>emulator-request-page.png``; returns the two hrefs.
    """
    base = stack.emulator.base_url
    dashboard = page.get_by_role("link", name="Sentinel Hub batch request")
    output = page.get_by_role("link", name="Batch output location")
    dashboard.wait_for()
    output.wait_for()
    screenshot(page, f"{prefix}extra-links.png")
    hrefs = {"dashboard": dashboard.get_attribute("href"), "output": output.get_attribute("href")}
    assert hrefs == {
        "dashboard": f"{base}/dashboard/batch/{request_id}",
        "output": f"{base}/dashboard/outputs/{BUCKET}/{request_id}/",
    }, hrefs
    # both targets open: the request page (status, progress, cost) and the list of delivered files
    page.goto(hrefs["dashboard"])
    assert page.locator("#status").inner_text() == "DONE"
    assert page.locator("#progress").inner_text() == "100 %"
    assert re.fullmatch(r"\d+\.\d\d PU", page.locator("#cost").inner_text())
    screenshot(page, f"{prefix}emulator-request-page.png")
    page.goto(hrefs["output"])
    assert re.findall(r"\S+\.tiff?\b", page.inner_text("body")), page.inner_text("body")
    return hrefs
