"""Fixtures for the emulator tests: the shared server (reset per test) and an authenticated client.

``sentinel_batch_emulator`` / ``sentinel_batch_emulator_session`` come from the package's own pytest plugin
(``pytest11`` entry point), so these tests also exercise what users get.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from airflow_provider_sentinel_batch.emulator import EmulatorServer
from tests.emulator.helpers import Api


@pytest.fixture
def emu(sentinel_batch_emulator_session: EmulatorServer) -> Iterator[EmulatorServer]:
    """The shared emulator, clean: no jobs, no faults, default (fast) clock."""
    sentinel_batch_emulator_session.reset()
    yield sentinel_batch_emulator_session
    sentinel_batch_emulator_session.reset()


@pytest.fixture
def api(emu: EmulatorServer) -> Api:
    return Api(emu)
