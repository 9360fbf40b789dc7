"""Local emulator of the Sentinel Hub Batch Processing API (v1 + v2), "moto for Sentinel Hub".

Import-light: only the config dataclasses load here; ``EmulatorServer``, ``create_app`` and
``EmulatorState`` (which need FastAPI/uvicorn, the ``emulator`` extra) load on first access::

    from airflow_provider_sentinel_batch.emulator import EmulatorConfig, EmulatorServer

    with EmulatorServer(EmulatorConfig(port=0, time_scale=1000)) as emu:
        print(emu.base_url, emu.token_url, emu.airflow_conn_json())

See ``docs/emulator.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import DEFAULT_TIME_SCALE, FAST_TIME_SCALE, EmulatorConfig, FaultConfig, S3Delivery

if TYPE_CHECKING:
    from .app import create_app
    from .server import EmulatorServer
    from .state import EmulatorState

__all__ = [
    "DEFAULT_TIME_SCALE",
    "FAST_TIME_SCALE",
    "EmulatorConfig",
    "EmulatorServer",
    "EmulatorState",
    "FaultConfig",
    "S3Delivery",
    "create_app",
]


def __getattr__(name: str) -> Any:
    if name == "EmulatorServer":
        from .server import EmulatorServer

        return EmulatorServer
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "EmulatorState":
        from .state import EmulatorState

        return EmulatorState
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
