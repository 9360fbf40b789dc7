"""Helpers shared by the benchmark scripts: the emulator in its own process, stats, machine facts.

Not a test and not part of the package. Everything here talks to 127.0.0.1 only and every loop is bounded.
"""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EVALSCRIPT = """//VERSION=3
function setup() { return {input: [{bands: ["B04", "B08"]}], output: [{id: "default", bands: 3}],
  mosaicking: Mosaicking.ORBIT} }
function evaluatePixel(samples) { return [0, 0, 0] }
"""
CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
SMALL_BBOX = [9.0, 42.0, 9.1, 42.1]
CORSICA_BBOX = [8.44, 41.31, 9.66, 43.1]


def v2_payload(bbox: Sequence[float] = SMALL_BBOX, description: str = "benchmark") -> dict[str, Any]:
    """A valid Batch v2 create body (grid 0 at 60 m; the small box is 1-4 tiles, Corsica 72)."""
    return {
        "processRequest": {
            "input": {
                "bounds": {"bbox": list(bbox), "properties": {"crs": CRS84}},
                "data": [
                    {
                        "type": "sentinel-2-l2a",
                        "dataFilter": {
                            "timeRange": {"from": "2019-04-01T00:00:00Z", "to": "2019-06-30T00:00:00Z"}
                        },
                    }
                ],
            },
            "output": {"responses": [{"identifier": "default", "format": {"type": "image/tiff"}}]},
            "evalscript": EVALSCRIPT,
        },
        "input": {"type": "tiling-grid", "id": 0, "resolution": 60.0},
        "output": {
            "type": "raster",
            "delivery": {"s3": {"url": "s3://bench/<tileName>/<outputId>.tiff"}},
        },
        "description": description,
    }


class Emulator:
    """``python -m airflow_provider_sentinel_batch.emulator`` in its own process on 127.0.0.1."""

    def __init__(self, conn_json: str, pid: int) -> None:
        self.pid = pid
        self.conn_json = conn_json
        conn = json.loads(conn_json)
        self.base_url: str = conn["extra"]["base_url"]
        self.token_url: str = conn["extra"]["token_url"]
        self.client_id: str = conn["login"]
        self.client_secret: str = conn["password"]
        if not self.base_url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"emulator is not on loopback: {self.base_url}")

    @classmethod
    def from_ready_line(cls, line: str, pid: int) -> Emulator:
        match = re.search(r"AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT='(.*)'", line)
        if match is None:
            raise RuntimeError(f"unexpected emulator ready line: {line!r}")
        return cls(match.group(1), pid)

    @classmethod
    def from_env(cls) -> Emulator:
        """In a child script: the emulator the orchestrator started (see :meth:`env`)."""
        return cls(os.environ["AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT"], int(os.environ["BENCH_EMULATOR_PID"]))

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT": self.conn_json,
            "BENCH_EMULATOR_PID": str(self.pid),
        }

    def control(self, method: str, path: str, body: Any = None, timeout: float = 300.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.base_url}/_emulator{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")

    def stats(self) -> dict[str, Any]:
        return self.control("GET", "/stats")

    def reset(self) -> None:
        self.control("POST", "/reset")

    def waiting_jobs(self, count: int, *, bbox: Sequence[float] = SMALL_BBOX) -> list[str]:
        """``count`` v2 jobs that sit in PROCESSING at 0 % for as long as the clock stays frozen."""
        self.control("POST", "/time-scale", {"time_scale": 1e-6})  # frozen: only /advance moves it
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
        )["ids"]
        # start lag 5 s + analysis ~31 s + queue 20 s + pickup 2 s: PROCESSING, no tile finished yet
        self.control("POST", "/advance", {"seconds": 60})
        return list(ids)

    def cpu_seconds(self) -> float:
        import psutil

        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)


@contextmanager
def emulator(
    time_scale: float = 1000.0, extra: Sequence[str] = (), python: str | None = None
) -> Iterator[Emulator]:
    proc = subprocess.Popen(
        [
            python or sys.executable,
            "-m",
            "airflow_provider_sentinel_batch.emulator",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--time-scale",
            str(time_scale),
            *extra,
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the emulator exited before it was ready")
        yield Emulator.from_ready_line(line, proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


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
