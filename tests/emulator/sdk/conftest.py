"""Shared setup for driving the emulator with the official sentinelhub-py client (own throwaway venv).

The SDK's monitors sleep 5-60 s between polls; here ``time.sleep`` inside ``sentinelhub.api.batch.utils``
advances the emulator's (frozen) clock instead, so a monitored Corsica job takes milliseconds.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from airflow_provider_sentinel_batch.emulator import EmulatorServer
from tests.emulator.helpers import freeze, process_request

sentinelhub = pytest.importorskip(
    "sentinelhub", reason="sentinelhub-py is only installed by run_sdk_compat.sh"
)


@pytest.fixture
def sh_config(emu: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    from sentinelhub.api.batch import utils as batch_utils

    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # plain http on loopback
    freeze(emu)
    monkeypatch.setattr(batch_utils, "time", SimpleNamespace(sleep=emu.advance))
    config = sentinelhub.SHConfig(**emu.sh_config_kwargs())
    config.download_sleep_time = 0.01  # the SDK's own 5xx/connection retry pause (default 5 s, x3 each time)
    config.max_download_attempts = 6
    return config


@pytest.fixture
def corsica_request() -> dict[str, Any]:
    return process_request([8.44, 41.31, 9.66, 43.1], data_type="sentinel-2-l2a")
