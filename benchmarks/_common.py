"""Helpers shared by the benchmark scripts: the emulator in its own process, stats, machine facts.

Not a test and not part of the package. Everything here talks to 127.0.0.1 only and every loop is bounded.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the shared request bodies live in tests/payloads.py
    sys.path.insert(0, str(ROOT))

from airflow_provider_sentinel_batch.emulator.process import EmulatorProcess  # noqa: E402
from tests.payloads import CORSICA_BBOX, SMALL_BBOX, corsica_v1, corsica_v2  # noqa: E402

__all__ = ["CORSICA_BBOX", "SMALL_BBOX", "Emulator", "corsica_v1", "emulator", "v2_payload"]


def v2_payload(bbox: Sequence[float] = SMALL_BBOX, description: str = "benchmark") -> dict[str, Any]:
    """A valid Batch v2 create body (grid 0 at 60 m; the small box is 1-4 tiles, Corsica 72)."""
    return corsica_v2(
        "s3://bench/<tileName>/<outputId>.tiff",
        description=description,
        bbox=list(bbox),
        data_type="sentinel-2-l2a",
        max_cloud_coverage=None,
    )


class Emulator(EmulatorProcess):
    """The package's emulator process, plus what the benchmark scripts share: the hand-over to child scripts,
    jobs that wait in PROCESSING, and the emulator's CPU time."""

    @property
    def conn_json(self) -> str:
        return self.airflow_conn

    def control(self, method: str, path: str, body: Any = None, timeout: float = 300.0) -> Any:
        """One ``/_emulator`` call; bulk job creation can take minutes, hence the long default timeout."""
        return super().control(method, path, body, timeout)

    @property
    def client_id(self) -> str:
        return str(self.conn()["login"])

    @property
    def client_secret(self) -> str:
        return str(self.conn()["password"])

    @classmethod
    def from_env(cls) -> Emulator:
        """In a child script: the emulator the orchestrator started (see :meth:`env`)."""
        handle = cls.attach(
            os.environ["AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT"], int(os.environ["BENCH_EMULATOR_PID"])
        )
        assert isinstance(handle, Emulator)
        return handle

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT": self.conn_json,
            "BENCH_EMULATOR_PID": str(self.pid),
        }

    def waiting_jobs(self, count: int, *, bbox: Sequence[float] = SMALL_BBOX) -> list[str]:
        """``count`` v2 jobs that sit in PROCESSING at 0 % for as long as the clock stays frozen."""
        self.set_time_scale(1e-6)  # frozen: only /advance moves it
        ids = self.control(
            "POST",
            "/jobs/bulk",
            {
                "api": "v2",
                "payload": v2_payload(bbox),
                "count": count,
                "action": "start",
                "write_outputs": False,
            },
            timeout=300.0,
        )["ids"]
        # start lag 5 s + analysis ~31 s + queue 20 s + pickup 2 s: PROCESSING, no tile finished yet
        self.advance(60)
        return list(ids)

    def cpu_seconds(self) -> float:
        import psutil

        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)


@contextmanager
def emulator(
    time_scale: float = 1000.0, extra: Sequence[str] = (), python: str | None = None
) -> Iterator[Emulator]:
    """An emulator process on 127.0.0.1 for the block, stopped after it."""
    with Emulator(time_scale=time_scale, args=extra, python=python, cwd=ROOT) as emu:
        yield emu


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 100]); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return float(ordered[rank - 1])


def _version(dist: str, python: str) -> str | None:
    code = f"import importlib.metadata as m\ntry: print(m.version({dist!r}))\nexcept Exception: print('')"
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.strip() or None


def machine(pythons: dict[str, str]) -> dict[str, Any]:
    """nproc, CPU model, RAM, OS, load, and Python/Airflow/httpx versions of each venv."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    envs = {}
    for name, python in pythons.items():
        if not Path(python).exists():
            continue
        version = subprocess.run(
            [python, "-c", "import platform; print(platform.python_version())"],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()
        envs[name] = {
            "python": version,
            **{
                dist: _version(dist, python)
                for dist in ("apache-airflow", "apache-airflow-task-sdk", "httpx", "aiohttp", "uvicorn")
            },
        }
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": ram_gib,
        "os": f"{platform.system()} {platform.release()}",
        "loadavg_at_start": list(os.getloadavg()),
        "envs": envs,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def emit(result: Any) -> None:
    """Child scripts print one JSON document as their last stdout line."""
    print("RESULT " + json.dumps(result), flush=True)


def run_child(cmd: Sequence[str], env: dict[str, str] | None = None, timeout: float = 900.0) -> Any:
    """Run a benchmark script in a fresh process and return the JSON it emitted."""
    proc = subprocess.run(
        list(cmd), capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT, check=False
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(
        f"{' '.join(cmd)} exited {proc.returncode} without a result\n--- stdout\n{proc.stdout[-3000:]}"
        f"\n--- stderr\n{proc.stderr[-3000:]}"
    )
