"""Browser fixtures of the UI tests; each test module provides its own ``stack`` (the deployment it drives)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from tests.ui.browser import CHROMIUM, CHROMIUM_FLAGS, UI_TIMEOUT_MS


@pytest.fixture(scope="module")
def browser(stack: Any) -> Iterator[Any]:
    """Headless system Chromium with a fresh profile (Playwright drives it; nothing is downloaded)."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="ui-chromium-")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 900},
        )
        context.set_default_timeout(UI_TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh tab, closed after the test."""
    page = browser.new_page()
    try:
        yield page
    finally:
        page.close()
