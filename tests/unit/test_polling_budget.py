"""Adaptive polling never costs more calls than fixed 60 s polling, nor detects the end later, on any job profile.

A property over many generated job profiles (analysis time, START lag, processing time, number of progress
steps, per-step jitter, deferral offset): the real :class:`Watch` (so the real ``next_delay``) looks at a
synthetic Batch v2 job on a virtual clock, and is compared job by job with a poller that looks every 60 s.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest

from airflow_provider_sentinel_batch.waiting import Watch, next_delay

FIXED = 60.0


@dataclass(frozen=True)
class Job:
    """A v2 job as the API shows it: analysing, waiting to be processed, then progress steps, then DONE."""

    analysed_at: float
    processing_at: float
    steps: tuple[float, ...]  # when each progress step lands (completionPercentage = 100 * k / len(steps))
    done_at: float

    def view(self, t: float) -> dict:
        base = {"id": "r", "userAction": "START"}
        if t < self.analysed_at:
            return {**base, "status": "ANALYSING"}
        if t < self.processing_at:
            return {**base, "status": "ANALYSIS_DONE"}
        if t < self.done_at:
            done = sum(1 for s in self.steps if s <= t)
            return {
                **base,
                "status": "PROCESSING",
                "completionPercentage": round(100.0 * done / len(self.steps), 2),
            }
        return {**base, "status": "DONE", "completionPercentage": 100.0}


def make_job(rng: random.Random, *, processing_s: float, steps: int, jitter: float) -> Job:
    analysed = rng.uniform(5, 300)
    processing = analysed + rng.uniform(0, 120)
    nominal = processing_s / steps
    t, marks = processing, []
    for _ in range(steps):
        t += nominal * rng.uniform(1 - jitter, 1 + jitter)
        marks.append(t)
    return Job(analysed, processing, tuple(marks), marks[-1] + rng.uniform(0.5, 15))


def adaptive(job: Job, *, offset: float) -> tuple[int, float]:
    """Calls and detection delay of the provider's adaptive wait (the trigger's defaults)."""
    w = Watch(request_id="r", api_version="v2", wait_for="DONE", adaptive=True, started=offset)
    t, calls = offset, 0
    while True:
        calls += 1
        if w.look(job.view(t), now=t).over:
            return calls, t - job.done_at
        t += w.delay(now=t)


def fixed(job: Job, *, offset: float) -> tuple[int, float]:
    """Calls and detection delay of looking every 60 s from the same start."""
    k = max(0, math.ceil((job.done_at - offset) / FIXED))
    return k + 1, offset + k * FIXED - job.done_at


PROFILES = [
    # (processing seconds, progress steps, per-step jitter)
    (processing, steps, jitter)
    for processing in (30, 120, 300, 600, 1200, 3600, 3 * 3600, 8 * 3600)
    for steps in (1, 2, 9, 18, 72)
    for jitter in (0.0, 0.1, 0.3)
]


@pytest.mark.parametrize(("processing", "steps", "jitter"), PROFILES)
def test_never_more_calls_nor_later_detection_than_fixed_60s(processing, steps, jitter):
    rng = random.Random(f"{processing}-{steps}-{jitter}")
    for _ in range(25):
        job = make_job(rng, processing_s=processing, steps=steps, jitter=jitter)
        offset = rng.uniform(0, 10)
        ours, base = adaptive(job, offset=offset), fixed(job, offset=offset)
        assert ours[0] <= base[0], (job, offset, ours, base)
        assert ours[1] <= base[1] + 1e-6, (job, offset, ours, base)


def test_long_jobs_still_save_most_calls():
    """The rule must not cost the gain: an 8-hour job makes far fewer calls than fixed 60 s."""
    rng = random.Random(7)
    job = make_job(rng, processing_s=8 * 3600, steps=72, jitter=0.1)
    ours, base = adaptive(job, offset=3.0), fixed(job, offset=3.0)
    assert ours[0] < base[0] / 3


def test_next_look_is_never_before_the_fixed_pollers_count_allows():
    kw = {"poll_interval": 60.0, "analysis_poll_interval": 10.0}
    # one look made at 0: the second is not before 60 s, whatever the status
    assert next_delay("ANALYSING", **kw, elapsed=0.0, looks=1) == 60.0
    # three looks made by 130 s (one more than fixed 60 s had made then): the next not before 180 s
    assert next_delay("PROCESSING", **kw, elapsed=130.0, looks=3) == 50.0
    # two looks saved: a look at 100 % may come 10 s later instead of at the next minute
    done = [(1000.0, 0.0), (1060.0, 10.0), (1940.0, 90.0), (2000.0, 100.0)]
    assert next_delay("PROCESSING", **kw, progress=done, now=2000.0, elapsed=2000.0, looks=20) == 10.0
    # no later than the fixed poller's next look (at 180 s) when no stretch is planned
    assert next_delay("PROCESSING", **kw, elapsed=130.0, looks=2) == 50.0
    # a stretch towards a finish far away may skip the fixed poller's looks
    far = [(0.0, 0.0), (60.0, 1.0), (540.0, 9.0), (600.0, 10.0)]
    assert next_delay("PROCESSING", **kw, progress=far, now=600.0, elapsed=600.0, looks=11) == 600.0
