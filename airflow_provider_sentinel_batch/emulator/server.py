"""Run the emulator in a background thread of the current process (tests, demos, the CLI)."""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

from .config import EmulatorConfig, FaultConfig
from .service import Service
from .state import EmulatorState


class EmulatorServer(Service):
    """uvicorn serving ``create_app`` on ``config.host:config.port`` (port 0 = a free port).

    ``start()`` returns once the socket accepts connections; ``stop()`` shuts down and, if the emulator made
    its own temp data dir, removes it. Also a context manager.
    """

    def __init__(self, config: EmulatorConfig | None = None, **overrides: Any) -> None:
        config = config or EmulatorConfig()
        if overrides:
            if isinstance(overrides.get("faults"), dict):
                overrides["faults"] = FaultConfig(**overrides["faults"])
            config = dataclasses.replace(config, **overrides)
        config.validate()
        self.config = config
        self.state = EmulatorState(config)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._port: int | None = None

    # ----------------------------------------------------------------------------------------------- life
    def start(self, timeout: float = 15.0) -> EmulatorServer:
        """Bind the socket and serve in a daemon thread; returns once the server has started (no-op if running).

        Raises ``OSError`` if the address is taken, ``TimeoutError`` after ``timeout`` seconds.
        """
        if self._thread is not None:
            return self
        import uvicorn

        from .app import create_app

        family = socket.AF_INET6 if ":" in self.config.host.strip("[]") else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.config.host.strip("[]"), int(self.config.port)))
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._port = sock.getsockname()[1]
        app = create_app(state=self.state)
        uconfig = uvicorn.Config(
            app,
            log_level=self.config.log_level,
            access_log=self.config.access_log,
            lifespan="off",
            timeout_keep_alive=30,
            server_header=False,
        )
        self._server = uvicorn.Server(uconfig)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [sock]},
            name=f"sentinel-batch-emulator:{self._port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                self._thread = None
                raise RuntimeError("the emulator's uvicorn server failed to start (see the log above)")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"emulator did not start within {timeout} s")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down, save the state file (if set) and remove the temp data dir if the emulator made it."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._server = None
        self.state.cleanup()

    @property
    def running(self) -> bool:
        """True while the server thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------------------------------ addresses
    @property
    def port(self) -> int:
        """The port listened on (the one picked, after a start with port 0)."""
        return self._port if self._port is not None else int(self.config.port)

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the API (a wildcard bind address is reached on 127.0.0.1)."""
        host = self.config.host.strip("[]")
        if host in {"0.0.0.0", "::"}:
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def token_url(self) -> str:
        """The Sentinel Hub "main" realm token endpoint (sentinelhub-py's default path)."""
        return f"{self.base_url}/auth/realms/main/protocol/openid-connect/token"

    @property
    def cdse_token_url(self) -> str:
        """The CDSE realm token endpoint."""
        return f"{self.base_url}/auth/realms/CDSE/protocol/openid-connect/token"

    @property
    def legacy_token_url(self) -> str:
        """The legacy Sentinel Hub token endpoint ``/oauth/token`` (issues "main" realm tokens)."""
        return f"{self.base_url}/oauth/token"

    @property
    def client_id(self) -> str:
        """The OAuth client id the emulator accepts."""
        return self.config.client_id

    @property
    def client_secret(self) -> str:
        """The OAuth client secret the emulator accepts."""
        return self.config.client_secret

    @property
    def data_dir(self) -> Path:
        """Where outputs are written without S3 delivery (``s3://bucket/key`` → ``<data_dir>/bucket/key``)."""
        return self.state.data_dir

    def airflow_conn_json(self, api_version: str = "v2") -> str:
        """Value for ``AIRFLOW_CONN_<CONN_ID>``: a ``sentinel_batch`` connection pointing here.

        ``api_version`` is left out when it is the default (v2), and written as a number otherwise (``1``), as the
        connection form does: Airflow 3 logs "Skipping masking for a secret as it's too short" for any string
        extra value under 5 characters.
        """
        extra: dict[str, Any] = {
            "deployment": "custom",
            "base_url": self.base_url,
            "auth_url": self.token_url,
        }
        if api_version != "v2":
            extra["api_version"] = int(api_version.removeprefix("v"))
        return json.dumps(
            {
                "conn_type": "sentinel_batch",
                "login": self.client_id,
                "password": self.client_secret,
                "extra": extra,
            }
        )

    def airflow_env(self, conn_id: str = "sentinel_batch_default", api_version: str = "v2") -> dict[str, str]:
        """``{"AIRFLOW_CONN_<CONN_ID>": ...}`` ready for ``monkeypatch.setenv`` or a subprocess env."""
        return {f"AIRFLOW_CONN_{conn_id.upper()}": self.airflow_conn_json(api_version)}

    def sh_config_kwargs(self) -> dict[str, str]:
        """Settings for ``sentinelhub.SHConfig(**kwargs)`` (the official SDK)."""
        return {
            "sh_client_id": self.client_id,
            "sh_client_secret": self.client_secret,
            "sh_base_url": self.base_url,
            "sh_token_url": self.token_url,
        }

    # -------------------------------------------------------------------------------------------- control
    def stats(self) -> dict[str, Any]:
        """Counts of calls, responses, tokens, injected faults and jobs by status; the clock and PU figures."""
        return self.state.stats()

    def set_faults(self, **changes: Any) -> FaultConfig:
        """Change fault settings (``FaultConfig`` field names) from the next request on; returns them all."""
        return self.state.set_faults(**changes)

    def clear_faults(self) -> FaultConfig:
        """Switch every fault off (the configured ones too); returns the settings now in force."""
        return self.state.clear_faults()

    def set_rate_limits(self, policies: Any, *, tokens: bool = False) -> list[dict[str, Any]]:
        """Replace the account's rate-limit policies (``["600/60"]``; ``[]``: none) of API calls, or with
        ``tokens=True`` of token requests."""
        return self.state.set_rate_limits(policies, tokens=tokens)

    def reset(self) -> None:
        """Start afresh: no jobs, stats or outputs; configured faults and clock again. Tokens stay valid."""
        self.state.reset()

    def revoke_tokens(self) -> None:
        """Invalidate every token issued so far: the next API call with one gets 401."""
        self.state.revoke_tokens()

    def advance(self, seconds: float) -> float:
        """Jump emulated time forward by ``seconds`` (emulated seconds, not divided by the time scale)."""
        return self.state.advance(seconds)

    def access_token(self) -> str:
        """A fresh bearer token (no faults bypassed: uses the real token endpoint)."""
        import requests

        response = requests.post(
            self.token_url,
            data={
                "grant_type": "client_credentials",
                "client_id": self.client_id,
                "client_secret": self.client_secret,
            },
            timeout=10,
        )
        response.raise_for_status()
        return str(response.json()["access_token"])

    def ready_line(self) -> str:
        """The one line the CLI prints at start."""
        return (
            f"Sentinel Hub Batch emulator ready: base_url={self.base_url} token_url={self.token_url} "
            f"client_id={self.client_id} client_secret={self.client_secret} {self._outputs_at()} "
            f"AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT='{self.airflow_conn_json()}'"
        )

    def _outputs_at(self) -> str:
        s3 = self.state.config.s3
        return f"s3_endpoint_url={s3.endpoint_url}" if s3 is not None else f"data_dir={self.data_dir}"
