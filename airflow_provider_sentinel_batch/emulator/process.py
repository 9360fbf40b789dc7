"""The emulator as a child process on a free loopback port: start it, wait until it is ready, stop it by PID.

For tests and benchmarks that want the server out of their own process (its own GIL, a real restart, a
deployment of Airflow daemons talking to it)::

    from airflow_provider_sentinel_batch.emulator.process import EmulatorProcess

    with EmulatorProcess(time_scale=1000) as emu:  # python -m airflow_provider_sentinel_batch.emulator --port 0
        print(emu.base_url, emu.airflow_conn, emu.stats()["jobs_created"])

The child prints one ready line (``base_url=... token_url=... AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT='...'``) once it
listens; :meth:`EmulatorProcess.wait_ready` reads it, checks that the address is on loopback and that
``/_emulator/health`` answers. :meth:`EmulatorProcess.stop` sends SIGTERM to the child's PID (the CLI shuts down
cleanly on it) and SIGKILL after a grace period. On Linux the child also gets SIGTERM if this process dies first.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import DEFAULT_TIME_SCALE
from .service import Service

READY_LINE = re.compile(
    r"base_url=(?P<base>\S+) token_url=(?P<token>\S+) .*AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT='(?P<conn>.*)'\s*$"
)


def _terminate_when_orphaned() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: SIGTERM the emulator if its parent dies without stopping it (a killed test run, say)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
    except Exception:
        pass


class EmulatorProcess(Service):
    """``python -m airflow_provider_sentinel_batch.emulator`` on 127.0.0.1 in a child process, with its control plane.

    :param time_scale: emulated seconds per real second.
    :param data_dir: where the emulator writes bucket outputs (default: its own temporary folder).
    :param args: more CLI flags (``--fault-429-rate 0.2``, ``--state-file ...``; see ``sentinel-batch-emulator -h``).
    :param python: the interpreter to run (default: this one).
    :param env: the child's environment (default: this process's).
    :param cwd: the child's working directory.
    :param log_path: a file for the child's stderr (default: inherited).
    """

    name = "emulator"

    def __init__(
        self,
        *,
        time_scale: float = DEFAULT_TIME_SCALE,
        data_dir: str | Path | None = None,
        args: Sequence[str] = (),
        python: str | None = None,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        log_path: str | Path | None = None,
    ) -> None:
        self.argv = [
            python or sys.executable,
            "-m",
            "airflow_provider_sentinel_batch.emulator",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--time-scale",
            f"{time_scale:g}",
            *(["--data-dir", str(data_dir)] if data_dir is not None else []),
            *args,
        ]
        self._env = env
        self._cwd = cwd
        self.log_path = Path(log_path) if log_path is not None else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.base_url = ""
        self.token_url = ""
        self.airflow_conn = ""  # the AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT value (Batch v2)
        self.ready_seconds = 0.0
        self.stopped = False  # stop() was called: the child's end is expected
        self._launched = 0.0
        self._session: Any = None
        self._attached_pid: int | None = None

    @classmethod
    def attach(cls, airflow_conn: str, pid: int) -> EmulatorProcess:
        """A handle on an emulator another process started (its connection JSON and PID): control plane only,
        :meth:`stop` leaves it running."""
        handle = cls()
        extra = json.loads(airflow_conn)["extra"]
        handle.base_url, handle.token_url, handle.airflow_conn = (
            extra["base_url"],
            extra.get("auth_url") or extra["token_url"],  # the connection's token URL key (older: token_url)
            airflow_conn,
        )
        if not handle.base_url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"the emulator must listen on loopback, got {handle.base_url}")
        handle._attached_pid = pid
        return handle

    # ------------------------------------------------------------------------------------------ lifecycle
    def launch(self) -> EmulatorProcess:
        """Start the child; :meth:`wait_ready` reads its ready line (do other work in between)."""
        if self.proc is not None:
            return self
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        stderr = open(self.log_path, "ab") if self.log_path is not None else None  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                self.argv,
                env=self._env,
                cwd=self._cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                preexec_fn=_terminate_when_orphaned if sys.platform == "linux" else None,
            )
        finally:
            if stderr is not None:
                stderr.close()
        self._launched = time.monotonic()
        return self

    def wait_ready(self, timeout: float = 60.0) -> EmulatorProcess:
        """Read the ready line (within ``timeout`` s), check the address is loopback and the server answers."""
        line = self._first_line(timeout)
        match = READY_LINE.search(line)
        if match is None:
            raise RuntimeError(f"unexpected ready line from the emulator: {line!r}")
        self.base_url, self.token_url, self.airflow_conn = match["base"], match["token"], match["conn"]
        if not self.base_url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"the emulator must listen on loopback, got {self.base_url}")
        self.control("GET", "/health")
        self.ready_seconds = time.monotonic() - self._launched
        return self

    def start(self, timeout: float = 60.0) -> EmulatorProcess:
        """:meth:`launch` and :meth:`wait_ready`."""
        return self.launch().wait_ready(timeout)

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the child, wait up to ``grace`` s, then SIGKILL it; safe to call twice."""
        self.stopped = True
        if self._session is not None:
            self._session.close()
            self._session = None
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    @property
    def pid(self) -> int:
        """The child's process id."""
        if self.proc is None and self._attached_pid is not None:
            return self._attached_pid
        if self.proc is None:
            raise RuntimeError("the emulator process was not launched")
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        """The child's exit code, or None while it runs (or before launch)."""
        return None if self.proc is None else self.proc.poll()

    def alive(self) -> bool:
        """Whether the child runs."""
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        """What the child wrote to ``log_path`` ("" without one)."""
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 25) -> str:
        """The last ``lines`` lines of :meth:`log`."""
        return "\n".join(self.log().splitlines()[-lines:])

    def _first_line(self, timeout: float) -> str:
        if self.proc is None or self.proc.stdout is None:
            raise RuntimeError("launch() the emulator process first")
        deadline = time.monotonic() + timeout
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            while b"\n" not in buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"the emulator printed no ready line within {timeout:g} s:\n{self.tail()}"
                    )
                if not selector.select(min(remaining, 0.5)):
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"the emulator exited ({self.proc.returncode}):\n{self.tail()}")
                    continue
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    raise RuntimeError(f"the emulator closed its output ({self.proc.poll()}):\n{self.tail()}")
                buffer += chunk
        return buffer.split(b"\n", 1)[0].decode(errors="replace")

    # -------------------------------------------------------------------------------------- control plane
    @property
    def http(self) -> Any:
        """A ``requests.Session`` for loopback calls (never through a proxy from the environment)."""
        if self._session is None:
            import requests

            self._session = requests.Session()
            self._session.trust_env = False
        return self._session

    def control(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        """One ``/_emulator`` call (``path`` such as ``/stats``); its JSON answer."""
        response = self.http.request(method, f"{self.base_url}/_emulator{path}", json=body, timeout=timeout)
        response.raise_for_status()
        return response.json() if response.content else None

    def stats(self) -> dict[str, Any]:
        """Counters: calls per route, responses per status, jobs created, tokens issued, faults injected."""
        return dict(self.control("GET", "/stats"))

    def jobs(self) -> list[dict[str, Any]]:
        """Every job, as the control plane lists them."""
        return list(self.control("GET", "/jobs"))

    def job(self, job_id: str) -> dict[str, Any]:
        """One job, as the control plane shows it."""
        return dict(self.control("GET", f"/jobs/{job_id}"))

    def reset(self) -> None:
        """Forget every job and counter."""
        self.control("POST", "/reset")

    def set_time_scale(self, scale: float) -> None:
        """Emulated seconds per real second from now on."""
        self.control("POST", "/time-scale", {"time_scale": scale})

    def advance(self, seconds: float) -> None:
        """Jump the emulated clock forward by ``seconds``."""
        self.control("POST", "/advance", {"seconds": seconds})

    def conn(self) -> dict[str, Any]:
        """The ``sentinel_batch`` connection from the ready line, as a dict (client id and secret included)."""
        return dict(json.loads(self.airflow_conn))
