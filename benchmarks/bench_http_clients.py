"""Which HTTP library for the async client, by measurement: httpx vs aiohttp for status polls.

N pollers in one event loop poll their own emulator job every ``interval`` seconds for ``rounds + 1`` polls
(start times spread over the first interval, as triggers arrive), with a pre-fetched token, through:

* ``httpx shared client`` — one ``httpx.AsyncClient`` (64 connections, 60 s timeouts) for all pollers;
* ``httpx lanes (ours)`` — the provider's pool (``hooks/async_client._Pool``): single-connection httpx
  clients behind a semaphore;
* ``aiohttp shared session`` — one ``aiohttp.ClientSession`` (``TCPConnector(limit=64)``).

Reported: CPU per poll, event-loop lag, RSS growth, TCP connections; plus the cost of creating one client
(what a per-trigger client pays). Needs a Python with both libraries: Airflow 2.11 ships aiohttp and httpx
(the orchestrator uses ``.venv-airflow2``); Airflow 3.x ships httpx only. aiohttp is never a dependency.

    .venv-airflow2/bin/python benchmarks/bench_http_clients.py --n 100 1000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")

import aiohttp
import httpx
import psutil
from _common import Emulator, emit, percentile

Poll = Callable[[str], Awaitable[Any]]


async def _run(n: int, interval: float, rounds: int, urls: list[str], poll: Poll) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    connects = [0]
    original = loop.create_connection

    async def counting(*a: Any, **kw: Any) -> Any:
        connects[0] += 1
        return await original(*a, **kw)

    loop.create_connection = counting  # type: ignore[method-assign]
    rng = random.Random(5)
    offsets = [rng.uniform(0, interval) for _ in range(n)]
    lags: list[float] = []
    done = asyncio.Event()
    polls = [0]

    async def heartbeat() -> None:
        while not done.is_set():
            start = time.perf_counter()
            await asyncio.sleep(0.02)
            lags.append(max(0.0, time.perf_counter() - start - 0.02))

    async def poller(i: int) -> None:
        await asyncio.sleep(offsets[i])
        for _ in range(rounds + 1):
            await poll(urls[i])
            polls[0] += 1
            await asyncio.sleep(interval)

    hb = asyncio.create_task(heartbeat())
    cpu = time.process_time()
    await asyncio.gather(*(poller(i) for i in range(n)))
    cpu = time.process_time() - cpu
    done.set()
    await hb
    loop.create_connection = original  # type: ignore[method-assign]
    return {
        "polls": polls[0],
        "cpu_per_poll_us": cpu / polls[0] * 1e6,
        "lag_p99_ms": percentile(lags, 99) * 1000,
        "lag_max_ms": max(lags, default=0.0) * 1000,
        "tcp_connects": connects[0],
    }


async def httpx_shared(n: int, interval: float, rounds: int, urls: list[str], token: str) -> Any:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(limits=limits, headers=headers, timeout=60.0) as client:

        async def poll(url: str) -> Any:
            response = await client.get(url)
            response.raise_for_status()
            return response.json()

        return await _run(n, interval, rounds, urls, poll)


async def httpx_lanes(n: int, interval: float, rounds: int, urls: list[str], token: str) -> Any:
    from airflow_provider_sentinel_batch.hooks.async_client import _Pool

    pool = _Pool(60.0)
    headers = {"Authorization": f"Bearer {token}"}

    async def poll(url: str) -> Any:
        lane = await pool.take(60.0)
        try:
            response = await lane.get(url, headers=headers)
        finally:
            pool.give_back(lane)
        response.raise_for_status()
        return response.json()

    try:
        return await _run(n, interval, rounds, urls, poll)
    finally:
        await pool.aclose()


async def aiohttp_shared(n: int, interval: float, rounds: int, urls: list[str], token: str) -> Any:
    connector = aiohttp.TCPConnector(limit=64)
    headers = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=60.0)
    async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as session:

        async def poll(url: str) -> Any:
            async with session.get(url) as response:
                response.raise_for_status()
                return await response.json()

        return await _run(n, interval, rounds, urls, poll)


VARIANTS = {
    "httpx shared client": httpx_shared,
    "httpx lanes (ours)": httpx_lanes,
    "aiohttp shared session": aiohttp_shared,
}


async def _client_cost(kind: str, count: int = 20) -> dict[str, float]:
    """CPU and RSS of creating ``count`` default clients (what one client per trigger costs each)."""
    process = psutil.Process()
    gc.collect()
    rss, cpu = process.memory_info().rss, time.process_time()
    if kind == "httpx":
        clients: list[Any] = [httpx.AsyncClient() for _ in range(count)]
    else:
        clients = [aiohttp.ClientSession() for _ in range(count)]
    cost = {
        "cpu_ms": (time.process_time() - cpu) / count * 1000,
        "rss_kib": (process.memory_info().rss - rss) / count / 1024,
    }
    for client in clients:
        await (client.aclose() if kind == "httpx" else client.close())
    return cost


def _one(variant: str, n: int, rounds: int) -> dict[str, Any]:
    emu = Emulator.from_env()
    emu.reset()
    ids = emu.waiting_jobs(n)
    urls = [f"{emu.base_url}/api/v2/batch/process/{i}" for i in ids]
    form = {
        "grant_type": "client_credentials",
        "client_id": emu.client_id,
        "client_secret": emu.client_secret,
    }
    token = httpx.post(emu.token_url, data=form).json()["access_token"]
    import airflow_provider_sentinel_batch.hooks.async_client  # noqa: F401  (imported outside the run)

    interval = max(1.0, n / 200)  # ~200 polls/s: what 12,000 triggers polling every minute make
    gc.collect()
    rss = psutil.Process().memory_info().rss
    out = asyncio.run(VARIANTS[variant](n, interval, rounds, urls, token))
    gc.collect()
    growth = (psutil.Process().memory_info().rss - rss) / 2**20
    return {"library": variant, "n": n, "interval_s": interval, **out, "rss_growth_mib": growth}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variant", choices=list(VARIANTS), help="run one variant (in this process)")
    args = parser.parse_args()
    if args.variant:
        emit(_one(args.variant, args.n[0], args.rounds))
        return
    from _common import run_child

    rows = [  # one process per run, so memory growth is that run's own
        run_child(
            [sys.executable, __file__, "--variant", variant, "--n", str(n), "--rounds", str(args.rounds)],
            env=dict(os.environ),
        )
        for n in args.n
        for variant in VARIANTS
    ]
    creation = {kind: asyncio.run(_client_cost(kind)) for kind in ("httpx", "aiohttp")}
    emit(
        {
            "versions": {"httpx": httpx.__version__, "aiohttp": aiohttp.__version__},
            "python": sys.version.split()[0],
            "rows": rows,
            "client_creation": creation,
        }
    )


if __name__ == "__main__":
    main()
