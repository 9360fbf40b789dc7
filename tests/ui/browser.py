"""What both browser tests share: the switch that runs them, the system Chromium and screenshots."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest

from tests.triggerer.stack import AIRFLOW_3

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
