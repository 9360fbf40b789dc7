"""7. One account, many waits: 1,000 concurrent trigger waits against an emulator limited to 600 requests/minute.

The emulator (its own process) enforces a ``--limit``/60 rate-limit policy (default 600/60) in emulated time and
runs ``--scale``
times faster than real time, so an emulated minute lasts ``60 / scale`` s; the triggers poll every 60 emulated
seconds (``poll_interval = 60 / scale``, fixed intervals: 1,000 waits ask for 1,000 requests a minute, more than
the account allows). The budget's own time constants (window, burst, recovery) are scaled the same way. Each variant runs
in a fresh process on fresh jobs (v2, started together, finishing at different times): ``without`` (no budget:
every trigger meets its 429s alone) and ``with`` (``requests_per_minute`` = the account's limit). Per variant:
API calls the emulator counted, 429 answers, outcomes, and per job the detection delay (the event's wall time
minus the job's ``lastUpdated`` at DONE), in emulated seconds, and how many were seen within two budget-implied
intervals (the budget looks at each of N waits every N x its full-pace step, and never more often than the poll
interval).

    python benchmarks/bench_rate.py --n 1000 --limit 600 --scale 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
_HOME = tempfile.mkdtemp(prefix="bench-airflow-home-")
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "ERROR")
os.environ.setdefault("AIRFLOW_HOME", _HOME)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{_HOME}/airflow.db")

from _common import SMALL_BBOX, emit, emulator, percentile, v2_payload  # noqa: E402


def child(args: argparse.Namespace) -> None:
    """One variant in this process: ``args.n`` trigger waits in one event loop."""
    from airflow_provider_sentinel_batch import budget
    from airflow_provider_sentinel_batch.triggers.batch import SentinelBatchTrigger

    budget.WINDOW_S /= args.scale
    budget.BURST_S /= args.scale
    budget.RECOVERY_S /= args.scale
    ids = json.loads(os.environ["BENCH_IDS"])
    interval = 60.0 / args.scale

    async def one(rid: str, start: float) -> tuple[str, float, str | None]:
        await asyncio.sleep(start)  # deferrals arrive over one interval
        trigger = SentinelBatchTrigger(
            request_id=rid,
            conn_id="sentinel_batch_default",
            api_version="v2",
            poll_interval=interval,
            analysis_poll_interval=interval,
            adaptive=False,
            deadline=time.time() + args.deadline,
        )
        async for event in trigger.run():
            payload = event.payload
            return payload["outcome"], time.time(), (payload.get("summary") or {}).get("lastUpdated")
        raise RuntimeError("no event")

    async def main() -> list[tuple[str, float, str | None]]:
        step = interval / len(ids)
        return await asyncio.gather(*(one(rid, i * step) for i, rid in enumerate(ids)))

    started = time.time()
    results = asyncio.run(main())
    paced = budget.RequestBudget(args.budget_rpm * args.scale) if args.child == "with" else None
    delays = []
    outcomes: dict[str, int] = {}
    for outcome, seen, updated in results:
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if outcome == "success" and updated:
            done = datetime.fromisoformat(updated.replace("Z", "+00:00")).timestamp()
            delays.append(max(0.0, seen - done) * args.scale)
    emit(
        {
            "outcomes": outcomes,
            "delays_emulated_s": delays,
            "wall_s": time.time() - started,
            # seconds between two polls of the budget at full pace, in emulated seconds
            "budget_step_emulated_s": paced.interval * args.scale if paced else None,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=600, help="the account's requests per emulated minute")
    parser.add_argument("--scale", type=float, default=10.0, help="emulator time_scale")
    parser.add_argument("--deadline", type=float, default=50.0, help="wall seconds each wait may last")
    parser.add_argument("--variants", default="without,with", help="comma-separated: without, with")
    parser.add_argument(
        "--budget-rpm", type=float, default=None, help="the budget's requests_per_minute (default: --limit)"
    )
    parser.add_argument("--child", choices=["with", "without"])
    args = parser.parse_args()
    if args.budget_rpm is None:
        args.budget_rpm = float(args.limit)
    if args.child:
        child(args)
        return
    rows = []
    for variant in args.variants.split(","):
        with emulator(time_scale=args.scale, extra=["--rate-limit", f"{args.limit}/60"]) as emu:
            ids = emu.control(
                "POST",
                "/jobs/bulk",
                {
                    "api": "v2",
                    "payload": v2_payload(SMALL_BBOX),
                    "count": args.n,
                    "action": "start",
                    "write_outputs": False,
                },
            )["ids"]
            conn = json.loads(emu.conn_json)
            conn["extra"]["requests_per_minute"] = args.budget_rpm * args.scale if variant == "with" else 0
            env = {
                **os.environ,
                "AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT": json.dumps(conn),
                "BENCH_IDS": json.dumps(ids),
            }
            cmd = [
                sys.executable,
                __file__,
                "--child",
                variant,
                "--scale",
                str(args.scale),
                "--deadline",
                str(args.deadline),
                "--budget-rpm",
                str(args.budget_rpm),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
            line = next((x for x in reversed(proc.stdout.splitlines()) if x.startswith("RESULT ")), None)
            if line is None:
                raise RuntimeError(f"{variant} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
            result = json.loads(line[len("RESULT ") :])
            stats = emu.stats()
        api_calls = sum(v for k, v in stats["calls"].items() if "/api/" in k)
        limited = stats["rate_limits"]["answered_429"]
        delays = result["delays_emulated_s"]
        step = result["budget_step_emulated_s"]
        # how often the budget lets each wait be looked at: every N x step, never more often than the poll interval
        implied = max(60.0, args.n * step) if step else None
        rows.append(
            {
                "variant": variant,
                "waits": args.n,
                "api_calls": api_calls,
                "answered_429": limited,
                "share_429": limited / api_calls if api_calls else 0.0,
                "outcomes": result["outcomes"],
                "detected": len(delays),
                "delay_p50_s": percentile(delays, 50),
                "delay_p95_s": percentile(delays, 95),
                "delay_max_s": max(delays) if delays else 0.0,
                "wall_s": result["wall_s"],
                "budget_rpm": args.budget_rpm if variant == "with" else None,
                "implied_interval_s": implied,
                "detected_within_two_intervals": sum(1 for d in delays if d <= 2 * implied)
                if implied
                else None,
            }
        )
    emit({"scale": args.scale, "limit": f"{args.limit}/60", "n": args.n, "rows": rows})


if __name__ == "__main__":
    main()
