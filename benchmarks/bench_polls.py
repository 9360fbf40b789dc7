"""2. Polls per job: API calls and completion-detection delay of fixed intervals vs the provider's policy.

Pure computation, no sockets and no sleeping: the real ``SentinelBatchTrigger.run()`` (so the real
``waiting.next_delay``, status handling and progress bookkeeping) polls a real emulator job state machine
(``EmulatorState``, v2, the Corsica request: 72 tiles on 8 workers) through a fake client, and every
``asyncio.sleep``/``time.time`` of the trigger moves a virtual clock that is also the emulator's clock.

Every policy's jobs are also compared job by job with fixed 60 s on the same job: how many made more calls, how
many saw DONE later.

Policies: fixed 60 s; fixed 120 s (sentinelhub-py's ``monitor_batch_process_job`` default ``sleep_time``);
and ours (the trigger's defaults: 10 s while CREATED/ANALYSING/ANALYSIS_DONE, 60 s while PROCESSING,
stretched towards the predicted finish from ``completionPercentage``, at most 600 s). Job profiles differ by
processing time (tile duration); each profile runs ``--jobs`` jobs with different seeds (tile jitter) and a
random deferral offset, the same jobs for every policy.

    python benchmarks/bench_polls.py --jobs 20
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")

from _common import CORSICA_BBOX, emit, v2_payload

from airflow_provider_sentinel_batch import waiting as waiting_module
from airflow_provider_sentinel_batch.emulator.config import EmulatorConfig
from airflow_provider_sentinel_batch.emulator.state import EmulatorState
from airflow_provider_sentinel_batch.emulator.validation import validate_v2
from airflow_provider_sentinel_batch.hooks import async_client
from airflow_provider_sentinel_batch.triggers import batch as trigger_module
from airflow_provider_sentinel_batch.triggers.batch import SentinelBatchTrigger

#: name -> (workers, emulated seconds per tile). The Corsica request has 72 tiles; the emulator runs them on
#: ``workers`` parallel workers, so ``completionPercentage`` moves in 72 / workers steps. Analysis (~66 s),
#: the START lag and queueing (~25 s) come on top of the processing time in the name.
PROFILES: dict[str, tuple[int, float]] = {
    "5 min, 9 steps": (8, 33.0),
    "20 min, 18 steps": (4, 66.0),
    "1 h, 36 steps": (2, 100.0),
    "3 h, 72 steps": (1, 150.0),
    "8 h, 72 steps": (1, 400.0),
    "8 h, 9 steps": (8, 3200.0),
}
POLICIES: dict[str, dict[str, Any]] = {
    "fixed 60 s": {"poll_interval": 60.0, "analysis_poll_interval": 60.0, "adaptive": False},
    "fixed 120 s": {"poll_interval": 120.0, "analysis_poll_interval": 120.0, "adaptive": False},
    "ours (defaults)": {},
}
EPOCH = 1_800_000_000.0


class VirtualWorld:
    """The emulator state on a virtual clock, and the trigger's view of time and sleep."""

    def __init__(self, data_dir: str, seed: int, profile: tuple[int, float]) -> None:
        # time_scale ~0: wall-clock time does not move the emulated clock, only ``advance`` does
        self.state = EmulatorState(EmulatorConfig(time_scale=1e-9, seed=seed, data_dir=data_dir))
        self.state.timing.workers, self.state.timing.tile_base = profile
        self.state.timing.tile_per_mpx = 0.0
        self.calls = 0

    def now(self) -> float:
        return EPOCH + self.state.clock.now()

    async def sleep(self, seconds: float, *args: Any, **kwargs: Any) -> None:
        self.state.advance(max(0.0, float(seconds)))

    def client(self, job_id: str) -> Any:
        world = self

        class FakeClient:
            async def __aenter__(self) -> FakeClient:
                return self

            async def __aexit__(self, *exc: Any) -> None:
                return None

            async def get_request(self, request_id: str, api_version: str) -> dict[str, Any]:
                world.calls += 1
                return world.state.get_view(2, request_id)

            async def count_tiles(self, request_id: str) -> dict[str, int]:
                return {}

        return FakeClient()


def run_one(
    plan: Any,
    payload: dict[str, Any],
    data_dir: str,
    seed: int,
    profile: tuple[int, float],
    offset: float,
    policy: dict[str, Any],
) -> dict[str, float]:
    world = VirtualWorld(data_dir, seed, profile)
    job_id = world.state.create(2, payload, plan=plan, write_outputs=False)["id"]
    world.state.action(2, job_id, "start")
    world.state.advance(offset)  # the operator defers a few seconds after START

    trigger = SentinelBatchTrigger(request_id=job_id, conn_id="bench", api_version="v2", **policy)
    trigger._client = lambda settings: world.client(job_id)  # type: ignore[method-assign]

    async def settings(conn_id: str) -> Any:
        return None

    saved = (trigger_module.asyncio, async_client.settings_for_conn_id, waiting_module.time)
    trigger_module.asyncio = types.SimpleNamespace(sleep=world.sleep)  # type: ignore[assignment]
    # the watch (waiting.py) reads the clock: every look and every delay is on the virtual clock
    waiting_module.time = types.SimpleNamespace(time=world.now)  # type: ignore[assignment]
    async_client.settings_for_conn_id = settings  # type: ignore[assignment]
    try:
        event = asyncio.run(_first_event(trigger))
    finally:
        trigger_module.asyncio, async_client.settings_for_conn_id, waiting_module.time = saved
    job = world.state.jobs[job_id]
    if event.get("outcome") != "success" or job.status != "DONE":
        raise RuntimeError(f"unexpected end: {event} / {job.status}")
    done_at = job.last_updated_emu  # emulated time the status became DONE
    return {
        "calls": world.calls,
        "delay_s": world.state.clock.now() - done_at,
        "job_s": done_at - job.created_emu,
    }


async def _first_event(trigger: SentinelBatchTrigger) -> dict[str, Any]:
    async for event in trigger.run():
        return dict(event.payload)
    raise RuntimeError("no event")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20, help="jobs per profile")
    parser.add_argument("--seed", type=int, default=2)
    args = parser.parse_args()

    payload = v2_payload(CORSICA_BBOX, "polls per job")
    plan = validate_v2(payload)
    rng = random.Random(args.seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-polls-") as data_dir:
        for profile, shape in PROFILES.items():
            jobs = [(rng.randrange(1 << 30), rng.uniform(0, 10)) for _ in range(args.jobs)]
            fixed: list[dict[str, float]] = []
            for name, policy in POLICIES.items():
                results = [
                    run_one(plan, payload, data_dir, seed, shape, offset, policy) for seed, offset in jobs
                ]
                if name == "fixed 60 s":
                    fixed = results
                delays = [r["delay_s"] for r in results]
                pairs = list(zip(results, fixed, strict=True))
                rows.append(
                    {
                        # the rule, job by job against fixed 60 s on the same job: never more calls, never later
                        "jobs_more_calls_than_fixed60": sum(r["calls"] > f["calls"] for r, f in pairs),
                        "jobs_later_than_fixed60": sum(r["delay_s"] > f["delay_s"] + 1e-6 for r, f in pairs),
                        "profile": profile,
                        "policy": name,
                        "jobs": len(results),
                        "job_minutes": statistics.mean(r["job_s"] for r in results) / 60,
                        "calls_mean": statistics.mean(r["calls"] for r in results),
                        "delay_mean_s": statistics.mean(delays),
                        "delay_p95_s": sorted(delays)[max(0, round(0.95 * len(delays)) - 1)],
                        "delay_max_s": max(delays),
                    }
                )
    emit({"rows": rows})


if __name__ == "__main__":
    main()
