"""Sustained status-GET throughput and latency of the emulator (not a test).

Starts ``sentinel-batch-emulator`` in its own process (so client and server do not share a GIL), creates
the Corsica v1 job, starts it, then hammers ``GET /api/v1/batch/process/{id}`` from N keep-alive clients
for D seconds and prints requests/s and latency percentiles. ``--in-process`` runs the server in a thread
of this process instead (what the pytest fixture does).

    python benchmarks/emulator_throughput.py --clients 4 --duration 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from typing import Any

import requests
from _common import corsica_v1, emulator

PAYLOAD = corsica_v1("bench", description="Max NDVI over Corsica (benchmark)", max_cloud_coverage=None)


def _token(token_url: str) -> str:
    form = {
        "grant_type": "client_credentials",
        "client_id": "emulator-client",
        "client_secret": "emulator-secret",
    }
    return str(requests.post(token_url, data=form, timeout=10).json()["access_token"])


def run(base_url: str, token_url: str, clients: int, duration: float) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {_token(token_url)}"}
    job = requests.post(f"{base_url}/api/v1/batch/process", json=PAYLOAD, headers=headers, timeout=10).json()
    url = f"{base_url}/api/v1/batch/process/{job['id']}"
    requests.post(f"{url}/start", headers=headers, timeout=10)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    stop_at = time.perf_counter() + duration

    def worker(i: int) -> None:
        session = requests.Session()
        session.headers.update(headers)
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            response = session.get(url, timeout=10)
            latencies[i].append(time.perf_counter() - t0)
            if response.status_code != 200:
                errors[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    flat = sorted(x for lat in latencies for x in lat)
    q = statistics.quantiles(flat, n=100)
    final = requests.get(url, headers=headers, timeout=10).json()["status"]
    return {
        "clients": clients,
        "duration_s": round(elapsed, 2),
        "requests": len(flat),
        "errors": sum(errors),
        "requests_per_s": round(len(flat) / elapsed, 1),
        "latency_ms": {
            "p50": round(q[49] * 1000, 2),
            "p95": round(q[94] * 1000, 2),
            "p99": round(q[98] * 1000, 2),
            "max": round(flat[-1] * 1000, 2),
        },
        "job_status_at_end": final,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--time-scale", type=float, default=15.0)
    parser.add_argument("--in-process", action="store_true", help="serve from a thread of this process")
    args = parser.parse_args()
    if args.in_process:
        from airflow_provider_sentinel_batch.emulator import EmulatorConfig, EmulatorServer

        with EmulatorServer(EmulatorConfig(port=0, time_scale=args.time_scale)) as server:
            result = run(server.base_url, server.token_url, args.clients, args.duration)
    else:
        with emulator(time_scale=args.time_scale) as emu:
            result = run(emu.base_url, emu.token_url, args.clients, args.duration)
    result["mode"] = "in-process" if args.in_process else "subprocess"
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
