"""1. Triggerer scale: N concurrent trigger ``run()`` coroutines in one event loop, as the triggerer runs them.

One variant and one N per process (so memory numbers are this run's only). The emulator runs in its own
process; the orchestrator (``run_all.py``) passes its connection as ``AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT``
and its pid as ``BENCH_EMULATOR_PID``. Each trigger waits on its own emulator job, which sits in PROCESSING;
triggers start spread over ``--stagger`` seconds (as deferrals arrive; default one interval) and end at a
shared deadline ``rounds`` intervals after the last start, so the run is bounded in time. "Steady" numbers
cover the window after every trigger has started.

Variants:

* ``shared`` — ``SentinelBatchTrigger`` as shipped (one pooled ``httpx.AsyncClient`` per base URL and event
  loop, shared and reference-counted; one token per process from ``TOKEN_CACHE``);
* ``per_trigger`` — the same trigger with one private ``httpx.AsyncClient`` per ``run()`` (the provider's
  design before the shared pool);
* ``naive`` — what hand-written deferrable DAGs often do: a new ``httpx.AsyncClient`` and a new token on
  every poll.

    python benchmarks/bench_triggerer.py --variant shared --n 1000 --interval 2 --rounds 4
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import math
import os
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

_HOME = tempfile.mkdtemp(prefix="bench-airflow-home-")
# Trigger log lines go to a per-trigger file on a real triggerer; here they would flood the pipe.
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
os.environ.setdefault("AIRFLOW_HOME", _HOME)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{_HOME}/airflow.db")

import httpx  # noqa: E402
import psutil  # noqa: E402
from _common import Emulator, emit, percentile  # noqa: E402
from airflow.providers.common.compat.connection import (  # noqa: E402
    get_async_connection,
    get_async_extra_dejson,
)
from airflow.triggers.base import BaseTrigger, TriggerEvent  # noqa: E402

from airflow_provider_sentinel_batch.auth import TOKEN_CACHE  # noqa: E402
from airflow_provider_sentinel_batch.hooks import async_client  # noqa: E402
from airflow_provider_sentinel_batch.hooks.async_client import SentinelBatchAsyncClient  # noqa: E402
from airflow_provider_sentinel_batch.retry import RetryPolicy  # noqa: E402
from airflow_provider_sentinel_batch.triggers.batch import SentinelBatchTrigger  # noqa: E402

POLLS = [0]  # status GETs made so far (client side; the emulator's stats are the authority)


# ------------------------------------------------------------------------------------------- variants
class PerTriggerClient(SentinelBatchAsyncClient):
    """The async client as it was before the shared pool: a private ``httpx.AsyncClient`` per run."""

    async def __aenter__(self) -> PerTriggerClient:
        self._http = httpx.AsyncClient(
            timeout=self.timeout,
            limits=httpx.Limits(max_connections=4, max_keepalive_connections=2, keepalive_expiry=30.0),
            headers={"User-Agent": "airflow-provider-sentinel-batch"},
        )
        return self

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None


class PerTriggerTrigger(SentinelBatchTrigger):
    def _client(self, settings: Any) -> Any:
        return PerTriggerClient(settings, retry_policy=RetryPolicy.from_dict(self.retry_policy))


class NaiveTrigger(BaseTrigger):
    """A hand-written trigger: new HTTP client, new OAuth token and one GET on every poll."""

    def __init__(self, *, request_id: str, conn_id: str, poll_interval: float, deadline: float) -> None:
        super().__init__()
        self.request_id, self.conn_id = request_id, conn_id
        self.poll_interval, self.deadline = poll_interval, deadline

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{__name__}.NaiveTrigger",
            {
                "request_id": self.request_id,
                "conn_id": self.conn_id,
                "poll_interval": self.poll_interval,
                "deadline": self.deadline,
            },
        )

    async def run(self) -> Any:
        conn = await get_async_connection(self.conn_id)
        extra = await get_async_extra_dejson(conn)
        url = f"{extra['base_url']}/api/v2/batch/process/{self.request_id}"
        form = {"grant_type": "client_credentials", "client_id": conn.login, "client_secret": conn.password}
        token_url = extra.get("auth_url") or extra["token_url"]
        while time.time() < self.deadline:
            async with httpx.AsyncClient(timeout=60) as client:
                token = (await client.post(token_url, data=form)).json()["access_token"]
                response = await client.get(url, headers={"Authorization": f"Bearer {token}"})
                POLLS[0] += 1
                response.raise_for_status()
                status = response.json()["status"]
            if status in ("DONE", "FAILED", "STOPPED"):
                yield TriggerEvent({"status": status, "request_id": self.request_id})
                return
            await asyncio.sleep(max(0.0, min(self.poll_interval, self.deadline - time.time())))
        yield TriggerEvent({"status": "timeout", "request_id": self.request_id})


def make_trigger(variant: str, request_id: str, interval: float, deadline: float) -> BaseTrigger:
    if variant == "naive":
        return NaiveTrigger(
            request_id=request_id, conn_id="sentinel_batch_default", poll_interval=interval, deadline=deadline
        )
    cls = SentinelBatchTrigger if variant == "shared" else PerTriggerTrigger
    return cls(
        request_id=request_id,
        conn_id="sentinel_batch_default",
        api_version="v2",
        poll_interval=interval,
        analysis_poll_interval=interval,
        adaptive=False,
        deadline=deadline,
    )


async def _one_poll(trigger: BaseTrigger) -> None:
    async for _ in trigger.run():
        pass


def _count_polls() -> None:
    original = SentinelBatchAsyncClient.get_request

    async def counted(self: SentinelBatchAsyncClient, request_id: str, api_version: str) -> Any:
        POLLS[0] += 1
        return await original(self, request_id, api_version)

    SentinelBatchAsyncClient.get_request = counted  # type: ignore[method-assign]


# ------------------------------------------------------------------------------------------- the run
async def run_all(args: argparse.Namespace, ids: list[str]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    process = psutil.Process()
    connects = [0]
    original_connect = loop.create_connection

    async def counting_connect(*a: Any, **kw: Any) -> Any:
        connects[0] += 1
        return await original_connect(*a, **kw)

    loop.create_connection = counting_connect  # type: ignore[method-assign]

    interval, n = args.interval, len(ids)
    stagger = args.stagger or interval
    rng = random.Random(args.seed)
    offsets = [rng.uniform(0, stagger) for _ in range(n)]
    t0 = time.time()
    deadline = t0 + stagger + interval * args.rounds
    steady_from, steady_to = t0 + stagger + 0.5, deadline - 0.25
    lags: list[float] = []
    cpu_lags: list[float] = []
    gc_pauses: list[tuple[float, float]] = []  # full collections: (wall, CPU) seconds
    gc_started: list[float] = []

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            gc_started[:] = [time.perf_counter(), time.process_time()]
        elif gc_started:
            gc_pauses.append((time.perf_counter() - gc_started[0], time.process_time() - gc_started[1]))

    gc.callbacks.append(on_gc)
    samples: dict[str, Any] = {"rss_peak": 0, "fds_peak": 0}
    done = asyncio.Event()
    base_fds = process.num_fds()

    async def heartbeat() -> None:
        # Wall-clock lateness of a 20 ms sleep, and the part of it this process spent on the CPU: on a
        # shared machine the OS may also deschedule the whole process, which is not the loop's fault.
        period = 0.02
        while not done.is_set():
            start, cpu = time.perf_counter(), time.process_time()
            await asyncio.sleep(period)
            late = max(0.0, time.perf_counter() - start - period)
            lags.append(late)
            cpu_lags.append(min(late, max(0.0, time.process_time() - cpu - period)))

    async def sampler() -> None:
        while not done.is_set():
            now = time.time()
            rss, fds = process.memory_info().rss, process.num_fds()
            samples["rss_peak"] = max(samples["rss_peak"], rss)
            samples["fds_peak"] = max(samples["fds_peak"], fds)
            if "steady_start" not in samples and now >= steady_from:
                gc.collect()
                samples["steady_start"] = {
                    "cpu": time.process_time(),
                    "wall": time.perf_counter(),
                    "polls": POLLS[0],
                    "rss": process.memory_info().rss,
                    "traced": tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else None,
                    "lags": len(lags),
                }
            if "steady_end" not in samples and now >= steady_to:
                samples["steady_end"] = {
                    "cpu": time.process_time(),
                    "wall": time.perf_counter(),
                    "polls": POLLS[0],
                    "lags": len(lags),
                }
            await asyncio.sleep(0.1)

    events: dict[str, int] = {}

    async def one(i: int) -> None:
        await asyncio.sleep(offsets[i])
        trigger = make_trigger(args.variant, ids[i], interval, deadline)
        async for event in trigger.run():
            status = str(event.payload.get("outcome") or event.payload.get("status"))
            events[status] = events.get(status, 0) + 1

    hb, sp = asyncio.create_task(heartbeat()), asyncio.create_task(sampler())
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    done.set()
    await asyncio.gather(hb, sp)
    gc.callbacks.remove(on_gc)
    pools = getattr(async_client, "_POOLS", None)
    if pools is not None:  # the shared pool closes with its last user
        assert not pools.get(loop), "shared pool still open after every trigger finished"
    return {
        "planned_polls": sum(math.ceil((stagger + interval * args.rounds - o) / interval) for o in offsets),
        "stagger_s": stagger,
        "cpu_s": cpu,
        "wall_s": wall,
        "polls_client": POLLS[0],
        "connects": connects[0],
        "lags": lags,
        "cpu_lags": cpu_lags,
        "gc_pauses": gc_pauses,
        "samples": samples,
        "events": events,
        "base_fds": base_fds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=["shared", "per_trigger", "naive"], required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--interval", type=float, required=True, help="seconds between polls of a trigger")
    parser.add_argument("--rounds", type=int, default=3, help="polling rounds after all triggers started")
    parser.add_argument("--stagger", type=float, help="triggers start spread over this many seconds")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--tracemalloc", action="store_true", help="also trace Python allocations (slower)")
    parser.add_argument("--token-lifetime", type=float, help="emulator token lifetime (s) for this run")
    args = parser.parse_args()

    for name in ("airflow_provider_sentinel_batch", "httpx", "httpcore", "airflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    emu = Emulator.from_env()
    emu.reset()
    ids = emu.waiting_jobs(args.n + 1)
    warm_up, ids = ids[0], ids[1:]
    # A triggerer runs for days: pay the lazy imports and first-call costs once, outside the measurement.
    asyncio.run(_one_poll(make_trigger(args.variant, warm_up, 60.0, time.time() + 0.2)))
    if args.token_lifetime:
        emu.control("POST", "/faults", {"token_lifetime": args.token_lifetime})
    TOKEN_CACHE.clear()
    if args.variant != "naive":
        _count_polls()
    before = emu.stats()
    process = psutil.Process()
    gc.collect()
    rss0 = process.memory_info().rss
    if args.tracemalloc:
        tracemalloc.start()
    traced0 = tracemalloc.get_traced_memory()[0] if args.tracemalloc else None
    emu_cpu0 = emu.cpu_seconds()
    out = asyncio.run(run_all(args, ids))
    emu_cpu = emu.cpu_seconds() - emu_cpu0
    after = emu.stats()

    key = "GET /api/v2/batch/process/{id}"
    polls = after["calls"].get(key, 0) - before["calls"].get(key, 0)
    tokens = after["token_requests"] - before["token_requests"]
    responses = {
        k: v - before["responses"].get(k, 0)
        for k, v in after["responses"].items()
        if v - before["responses"].get(k, 0)
    }
    steady_start, steady_end = out["samples"].get("steady_start"), out["samples"].get("steady_end")
    steady: dict[str, Any] = {}
    if steady_start and steady_end and steady_end["polls"] > steady_start["polls"]:
        steady["cpu_per_poll_us"] = (
            (steady_end["cpu"] - steady_start["cpu"]) / (steady_end["polls"] - steady_start["polls"]) * 1e6
        )
        window = out["lags"][steady_start["lags"] : steady_end["lags"]]
        steady["lag_p99_ms"] = percentile(window, 99) * 1000
        steady["lag_max_ms"] = max(window, default=0.0) * 1000
        cpu_window = out["cpu_lags"][steady_start["lags"] : steady_end["lags"]]
        steady["cpu_lag_p99_ms"] = percentile(cpu_window, 99) * 1000
        steady["cpu_lag_max_ms"] = max(cpu_window, default=0.0) * 1000
        steady["busy_pct"] = (
            (steady_end["cpu"] - steady_start["cpu"]) / (steady_end["wall"] - steady_start["wall"]) * 100
        )
    mem: dict[str, Any] = {}
    if steady_start:
        mem["rss_per_trigger_kib"] = (steady_start["rss"] - rss0) / args.n / 1024
        if steady_start["traced"] is not None and traced0 is not None:
            mem["traced_per_trigger_kib"] = (steady_start["traced"] - traced0) / args.n / 1024
    emit(
        {
            "variant": args.variant,
            "n": args.n,
            "token_lifetime_s": args.token_lifetime,
            "interval_s": args.interval,
            "rounds": args.rounds,
            "tracemalloc": args.tracemalloc,
            "planned_polls": out["planned_polls"],
            "stagger_s": out["stagger_s"],
            "polls": polls,
            "polls_client": out["polls_client"],
            "token_fetches": tokens,
            "tcp_connects": out["connects"],
            "peak_open_fds": out["samples"]["fds_peak"] - out["base_fds"],
            "responses": responses,
            "events": out["events"],
            "wall_s": out["wall_s"],
            "cpu_s": out["cpu_s"],
            "cpu_per_poll_us": out["cpu_s"] / polls * 1e6 if polls else None,
            "emulator_cpu_s": emu_cpu,
            "emulator_cpu_per_poll_us": emu_cpu / polls * 1e6 if polls else None,
            "rss_base_mib": rss0 / 2**20,
            "rss_peak_mib": out["samples"]["rss_peak"] / 2**20,
            "lag_p50_ms": percentile(out["lags"], 50) * 1000,
            "lag_p99_ms": percentile(out["lags"], 99) * 1000,
            "lag_max_ms": max(out["lags"], default=0.0) * 1000,
            "cpu_lag_p99_ms": percentile(out["cpu_lags"], 99) * 1000,
            "cpu_lag_max_ms": max(out["cpu_lags"], default=0.0) * 1000,
            "gc2_count": len(out["gc_pauses"]),
            "gc2_max_ms": max((w for w, _ in out["gc_pauses"]), default=0.0) * 1000,
            "gc2_max_cpu_ms": max((c for _, c in out["gc_pauses"]), default=0.0) * 1000,
            "rss_peak_per_trigger_kib": (out["samples"]["rss_peak"] - rss0) / args.n / 1024,
            "loadavg_1min": os.getloadavg()[0],
            "steady": steady,
            **mem,
        }
    )


if __name__ == "__main__":
    main()
