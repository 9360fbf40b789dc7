"""4. Hook overhead: ``SentinelBatchHook.get_request`` vs a bare ``OAuth2Session.get`` against the emulator.

Both keep one keep-alive session and one token; both decode the JSON body. Calls alternate in blocks
(hook, bare, bare, hook, ...) so that machine noise hits both sides alike; the ratio is of medians of the
per-block mean latency (wall) and CPU time per call. The emulator runs in its own process
(``AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT`` / ``BENCH_EMULATOR_PID`` from the orchestrator).

    python benchmarks/bench_hook.py --blocks 10 --calls 100
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
_HOME = tempfile.mkdtemp(prefix="bench-airflow-home-")
os.environ.setdefault("AIRFLOW_HOME", _HOME)
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
os.environ.setdefault("OAUTHLIB_INSECURE_TRANSPORT", "1")  # the emulator speaks http on 127.0.0.1

from _common import Emulator, emit  # noqa: E402
from oauthlib.oauth2 import BackendApplicationClient  # noqa: E402
from requests_oauthlib import OAuth2Session  # noqa: E402

from airflow_provider_sentinel_batch.hooks.sentinel_batch import SentinelBatchHook  # noqa: E402


def _block(call: Callable[[], Any], n: int) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - wall) / n, (time.process_time() - cpu) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=10, help="blocks per side")
    parser.add_argument("--calls", type=int, default=100, help="calls per block")
    args = parser.parse_args()

    emu = Emulator.from_env()
    emu.reset()
    request_id = emu.waiting_jobs(1)[0]
    url = f"{emu.base_url}/api/v2/batch/process/{request_id}"

    hook = SentinelBatchHook(sentinel_batch_conn_id="sentinel_batch_default")
    oauth = OAuth2Session(client=BackendApplicationClient(client_id=emu.client_id))
    oauth.fetch_token(token_url=emu.token_url, client_secret=emu.client_secret, include_client_id=True)

    def via_hook() -> Any:
        return hook.get_request(request_id, api_version="v2")

    def bare() -> Any:
        response = oauth.get(url, timeout=60)
        response.raise_for_status()
        return response.json()

    assert via_hook()["id"] == bare()["id"] == request_id  # warm: token, sessions, imports
    for _ in range(20):
        via_hook()
        bare()
    hook_runs, bare_runs = [], []
    for i in range(args.blocks):
        order = (via_hook, bare) if i % 2 == 0 else (bare, via_hook)
        for call in order:
            (hook_runs if call is via_hook else bare_runs).append(_block(call, args.calls))
    hook_wall = statistics.median(w for w, _ in hook_runs)
    bare_wall = statistics.median(w for w, _ in bare_runs)
    hook_cpu = statistics.median(c for _, c in hook_runs)
    bare_cpu = statistics.median(c for _, c in bare_runs)
    emit(
        {
            "calls": args.blocks * args.calls,
            "hook_ms": hook_wall * 1000,
            "bare_ms": bare_wall * 1000,
            "ratio_wall": hook_wall / bare_wall,
            "hook_cpu_us": hook_cpu * 1e6,
            "bare_cpu_us": bare_cpu * 1e6,
            "ratio_cpu": hook_cpu / bare_cpu,
            "token_requests": emu.stats()["token_requests"],
        }
    )


if __name__ == "__main__":
    main()
