"""Event watchers: list calls per poll interval for N ``SentinelBatchEventTrigger`` watchers of one connection.

Two ways of running the same N watchers in one event loop, against the emulator in its own process:

* ``shared``: through Airflow 3.3's own ``SharedStreamManager`` (what the triggerer does with watchers whose
  ``shared_stream_key`` is equal): one list poll per interval for the group, each watcher filters it;
* ``standalone``: every watcher's own ``run()`` loop (Airflow 3.0-3.2, which have no shared streams).

The account holds ``--jobs`` v2 requests in five description groups (``aoi-0`` … ``aoi-4``); watcher ``i``
watches group ``i % 5``. After two intervals one job per group is forced to DONE, so every watcher must emit
exactly one event: the run checks that, so the call counts are of watchers that work.

    python benchmarks/bench_watchers.py                       # N = 1, 10, 50; 8 intervals of 2 s; 250 jobs
    python benchmarks/bench_watchers.py --n 1,10,50,200 --json out.json

Not a test; talks to 127.0.0.1 only; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import Emulator, emit, emulator, v2_payload

LIST_ROUTE = "GET /api/v2/batch/process"
GROUPS = 5


def list_calls(emu: Emulator) -> tuple[int, int]:
    stats = emu.stats()
    return int(stats["calls"].get(LIST_ROUTE, 0)), int(stats.get("tokens_issued", 0))


async def run_case(emu: Emulator, *, n: int, mode: str, poll: float, intervals: int) -> dict[str, Any]:
    from airflow.triggers.shared_stream import SharedStreamManager

    from airflow_provider_sentinel_batch.triggers.events import SentinelBatchEventTrigger

    # fresh jobs for this case: one per group will be forced to DONE mid-run
    finishing = []
    for g in range(GROUPS):
        ids = emu.control(
            "POST",
            "/jobs/bulk",
            {
                "api": "v2",
                "payload": v2_payload(description=f"bench aoi-{g}"),
                "count": 1,
                "write_outputs": False,
            },
        )["ids"]
        finishing.append(ids[0])

    watchers = [
        # catch_up=0: earlier cases' finished jobs are not this case's news
        SentinelBatchEventTrigger(
            api_version="v2", search=f"aoi-{i % GROUPS}", poll_interval=poll, catch_up=0
        )
        for i in range(n)
    ]
    events: list[list[dict[str, Any]]] = [[] for _ in range(n)]
    manager = SharedStreamManager()

    async def consume(i: int) -> None:
        w = watchers[i]
        if mode == "shared":
            key = w.shared_stream_key()
            stream = w.filter_shared_stream(manager.subscribe(trigger_id=i, trigger=w, key=key))
        else:
            stream = w.run()
        async for event in stream:
            events[i].append(event.payload)

    calls0, tokens0 = list_calls(emu)
    cpu0, wall0 = time.process_time(), time.monotonic()
    tasks = [asyncio.create_task(consume(i)) for i in range(n)]
    # polls at 0, poll, 2*poll, ...: stop half an interval after the last one of `intervals`
    await asyncio.sleep(poll * 1.5)
    for job_id in finishing:  # between the 2nd and 3rd poll
        emu.control("POST", f"/jobs/{job_id}/force", {"status": "DONE"})
    await asyncio.sleep(poll * (intervals - 1.5) - poll / 2)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await manager.stop_all()
    wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
    calls1, tokens1 = list_calls(emu)
    calls = calls1 - calls0
    expected_ok = all([e["request_id"] for e in ev] == [finishing[i % GROUPS]] for i, ev in enumerate(events))
    return {
        "mode": mode,
        "n": n,
        "intervals": intervals,
        "poll_s": poll,
        "list_calls": calls,
        "list_calls_per_interval": round(calls / intervals, 2),
        "token_fetches": tokens1 - tokens0,
        "events": sum(len(ev) for ev in events),
        "one_event_per_watcher": expected_ok,
        "cpu_seconds": round(cpu, 3),
        "cpu_ms_per_interval": round(1000 * cpu / intervals, 1),
        "wall_seconds": round(wall, 2),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"cases": []}
    with emulator(time_scale=1.0) as emu:
        os.environ["AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT"] = emu.conn_json
        per_group = max(1, args.jobs // GROUPS)
        for g in range(GROUPS):  # the account's history: requests that never finish during the run
            emu.control(
                "POST",
                "/jobs/bulk",
                {
                    "api": "v2",
                    "payload": v2_payload(description=f"bench aoi-{g} history"),
                    "count": per_group,
                    "write_outputs": False,
                },
            )
        results["jobs_in_account"] = per_group * GROUPS
        for n in args.n:
            for mode in ("shared", "standalone"):
                case = await run_case(emu, n=n, mode=mode, poll=args.poll, intervals=args.intervals)
                results["cases"].append(case)
                print(json.dumps(case), flush=True)
    return results


def table(results: dict[str, Any]) -> str:
    rows = [
        "| watchers (N) | mode | list calls / interval | token fetches | events (expected N) | "
        "CPU ms / interval (this process) |",
        "|---|---|---|---|---|---|",
    ]
    for c in results["cases"]:
        ok = "" if c["one_event_per_watcher"] else " **wrong**"
        rows.append(
            f"| {c['n']} | {c['mode']} | {c['list_calls_per_interval']:g} ({c['list_calls']} in "
            f"{c['intervals']}) | {c['token_fetches']} | {c['events']}{ok} | {c['cpu_ms_per_interval']:g} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=lambda s: [int(x) for x in s.split(",")], default=[1, 10, 50])
    parser.add_argument("--poll", type=float, default=2.0, help="poll interval, seconds")
    parser.add_argument("--intervals", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=250, help="requests in the account (100 per list page)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    emit(results)  # the last line, for run_all.py


if __name__ == "__main__":
    main()
