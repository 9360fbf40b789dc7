"""The emulator's in-memory world: jobs, collections, tokens, faults, stats, the clock, persistence.

``EmulatorServer.state`` is this object, so in-process tests can look inside and steer it (force a status,
change a job's tile failure rate, jump the clock). Every public method takes the lock: the web app runs in
the server thread while tests poke from theirs.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import random
import shutil
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from ..models import search_matches
from . import outputs as out
from .auth import TokenIssuer
from .config import BucketKeys, EmulatorConfig, FaultConfig, S3Delivery
from .errors import ApiError, bad_payload, not_found
from .faults import FaultInjector
from .grids import GRIDS
from .jobs import TILE_STATUSES, V1_STATUSES, V2_STATUSES, Job, Tile, Timing
from .ratelimit import RateLimiter, parse_limits
from .validation import Plan, validate_v1, validate_v2

log = logging.getLogger("airflow_provider_sentinel_batch.emulator")

SORTS = ("created", "created:desc", "status", "status:desc")
_J = TypeVar("_J", bound=Job)
MIN_PU_BALANCE = 1000.0
_NS = uuid.UUID("6f1d1a52-36b4-4ad4-9a35-7c0e39c1e5a1")


class Clock:
    """Emulated seconds: wall-clock time times ``scale``, plus whatever tests added with ``advance``."""

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self._wall0 = time.monotonic()
        self._emu0 = 0.0

    def now(self) -> float:
        """Emulated seconds now."""
        return self._emu0 + (time.monotonic() - self._wall0) * self.scale

    def set_scale(self, scale: float) -> None:
        """Run at ``scale`` from now on without a jump in emulated time; ``ValueError`` unless positive."""
        if scale <= 0:
            raise ValueError("time_scale must be positive")
        self._emu0, self._wall0, self.scale = self.now(), time.monotonic(), scale

    def advance(self, seconds: float) -> None:
        """Add ``seconds`` of emulated time at once."""
        self._emu0 += seconds

    def set_now(self, emu: float) -> None:
        """Make ``emu`` the emulated time now (a state file read back at start)."""
        self._emu0, self._wall0 = emu, time.monotonic()

    def epoch(self, emu: float) -> float:
        """Wall-clock epoch seconds at which emulated time ``emu`` happened (approximate after advances)."""
        return time.time() - (self.now() - emu) / self.scale


def iso(epoch: float) -> str:
    """ISO-8601 UTC with milliseconds and ``Z`` (what sentinelhub-py's ``datetime_config`` parses)."""
    return _iso_ms(int(epoch * 1000))


@functools.lru_cache(maxsize=8192)
def _iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class OutputWriter:
    """Writes a job's bucket outputs as the job progresses: under ``data_dir``, or over the S3 API when the
    emulator has an S3 endpoint (then with the request's own keys, or the bucket-policy stand-in keys)."""

    def __init__(self, data_dir: Path, s3: S3Delivery | None = None) -> None:
        self.data_dir = data_dir
        self.created_buckets: set[Path] = set()
        self.s3 = out.S3Writer(s3) if s3 is not None else None
        self.keys: dict[str, BucketKeys | None] = {}  # job id -> delivery keys; memory only, never saved
        self._warned: set[tuple[str, str]] = set()

    def local(self, url: str) -> Path:
        """Local path of an ``s3://`` URL; remembers bucket dirs this emulator created (reset removes them)."""
        path = out.local_path(self.data_dir, url)
        bucket = self.data_dir / path.relative_to(self.data_dir).parts[0]
        if bucket not in self.created_buckets and not bucket.exists():
            self.created_buckets.add(bucket)
        return path

    def remove_created(self) -> None:
        """Delete the bucket directories this writer created (reset, when the data dir is the user's)."""
        for bucket in self.created_buckets:
            shutil.rmtree(bucket, ignore_errors=True)
        self.created_buckets.clear()

    def _root_url(self, job: Job) -> str:
        if job.output_kind == "zarr":
            root = out.zarr_root(job.output_url, job.id)
        else:
            root = out.output_root(job.output_url, job.id)
        return root.rstrip("/") + "/"

    def _put(self, job: Job, url: str, data: bytes) -> None:
        if self.s3 is None:
            out.write_bytes(self.local(url), data)
        else:
            self.s3.put(url, data, self.keys.get(job.id))

    def input_file(self, url: str, keys: BucketKeys | None, scratch: Path) -> Path:
        """A local file with the input object at ``url``: its place in the data dir, or (with S3) a download
        into ``scratch`` signed with ``keys`` (else the bucket-policy stand-in). Raises
        :class:`outputs.DeliveryError` when the S3 server refuses."""
        if self.s3 is None:
            return out.local_path(self.data_dir, url)
        target = scratch / (url.rstrip("/").rsplit("/", 1)[-1] or "object")
        target.write_bytes(self.s3.get(url, keys or self.s3.config.policy_keys))
        return target

    def _deliver(self, job: Job, url: str, data: bytes) -> bool:
        """Put one object; a refusal while the job runs is logged (once per job and error), not raised."""
        try:
            self._put(job, url, data)
            return True
        except out.DeliveryError as exc:
            if (job.id, exc.code) not in self._warned:
                self._warned.add((job.id, exc.code))
                log.warning("job %s: output not delivered: %s", job.id, exc.describe())
            return False

    def created(self, job: Job) -> None:
        """At create: check the bucket (S3) and write the request copy (v2), without credentials.

        Raises :class:`outputs.DeliveryError` when the bucket cannot be written; the job is then not created.
        """
        if not job.output_url:
            return
        if self.s3 is not None:
            keys = out.request_keys(job.body) if job.api == 2 else None
            self.keys[job.id] = keys or self.s3.config.policy_keys
        try:
            if self.s3 is not None and job.api == 1:
                self.s3.check_bucket(self._root_url(job), self.keys.get(job.id))
            if job.api == 2:
                copy_ = json.dumps(out.without_credentials(job.body), indent=2).encode()
                self._put(job, self._root_url(job) + f"request-{job.id}.json", copy_)
        except out.DeliveryError:
            self.keys.pop(job.id, None)
            raise

    def analysis_done(self, job: Job) -> None:
        """v2 with an output: deliver ``featureManifest-<id>.gpkg``, one row per tile and response, by CRS."""
        if job.api != 2 or not job.output_url:
            return
        rows: dict[int, list[tuple[Any, ...]]] = {}
        fid = 0
        for tile in job.tiles:
            for identifier, fmt in job.responses:
                fid += 1
                url = out.tile_urls(job.output_url, job.id, tile.name, tile.id, [(identifier, fmt)])[0][0]
                rows.setdefault(tile.epsg, []).append(
                    (
                        fid,
                        identifier,
                        tile.name,
                        url,
                        job.tile_px[0],
                        job.tile_px[1],
                        out.polygon_wkt(tile.geometry),
                    )
                )
        name = f"featureManifest-{job.id}.gpkg"
        self._deliver(job, self._root_url(job) + name, out.feature_manifest_bytes(rows))

    def sync(self, job: Job, now: float) -> None:
        """Deliver the outputs due by ``now``: raster tiles as they finish, a Zarr once ``DONE`` or
        ``PARTIAL``, and (v2) the execution database whenever feature statuses change."""
        if not job.output_url:
            return
        if job.output_kind == "raster" and now >= job.output_check_at:
            upcoming = float("inf")
            for tile in job.tiles:
                if tile.written or tile.fails or tile.end_at is None:
                    continue
                if tile.end_at <= now:
                    for url, fmt in out.tile_urls(job.output_url, job.id, tile.name, tile.id, job.responses):
                        self._deliver(job, url, out.placeholder_bytes(fmt))
                    tile.written = True
                else:
                    upcoming = min(upcoming, tile.end_at)
            job.output_check_at = upcoming
        elif (
            job.output_kind == "zarr"
            and job.status in {"DONE", "PARTIAL"}
            and "zarr" not in job.extra_outputs_written
        ):
            root = self._root_url(job)
            for rel, data in out.zarr_objects(r[0] for r in job.responses).items():
                self._deliver(job, root + rel, data)
            job.extra_outputs_written.append("zarr")
        if job.api == 2 and job.analysed:
            finished = job.finished_tiles(now)
            signature = f"{job.status}:{finished}:{sum(1 for t in job.tiles if t.start_at is not None)}"
            if signature != job.db_signature and job.status in {"PROCESSING", "DONE", "FAILED", "STOPPED"}:
                rows = []
                for tile in job.tiles:
                    status = tile.status(now)
                    feature = (
                        "DONE" if status == "PROCESSED" else "FATAL" if status == "FAILED" else "PENDING"
                    )
                    error = (
                        "Processing of the feature failed (emulated failure)." if feature == "FATAL" else None
                    )
                    rows.append((tile.id, tile.name, feature, error, feature == "DONE"))
                name = f"execution-{job.id}.sqlite"
                self._deliver(job, self._root_url(job) + name, out.execution_db_bytes(rows))
                job.db_signature = signature


class EmulatorState:
    """All mutable emulator state behind one re-entrant lock."""

    def __init__(self, config: EmulatorConfig) -> None:
        config.validate()
        self.config = config
        self.lock = threading.RLock()
        self.timing = Timing()
        self.clock = Clock(config.time_scale)
        if config.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="sentinel-batch-emulator-"))
            self.owns_data_dir = True
        else:
            self.data_dir = Path(config.data_dir).expanduser().resolve()
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.owns_data_dir = False
        self.outputs = OutputWriter(self.data_dir, config.s3)
        self.tokens = TokenIssuer(config.client_id, config.client_secret, config.seed)
        self.faults = FaultInjector(config.faults, config.seed)
        self._new_rate_limiters()
        self.user_id = str(uuid.uuid5(_NS, f"user:{config.client_id}"))
        self.account_id = str(uuid.uuid5(_NS, f"account:{config.client_id}"))
        self._init_world()
        self.state_file = Path(config.state_file).expanduser() if config.state_file else None
        if self.state_file is not None and self.state_file.exists():
            self.load(self.state_file)

    def _init_world(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.stat_requests: dict[str, Any] = {}  # Batch Statistical requests (statistical.StatRequest)
        self.collections: dict[str, dict[str, Any]] = {}
        self.pu_budget: float | None = self.config.pu_budget
        self.token_requests = 0
        self.tokens_issued = 0
        self.jobs_created = 0
        self.calls: Counter[str] = Counter()
        self.responses: Counter[str] = Counter()
        self.job_overrides: list[dict[str, Any]] = []
        self._ids = random.Random(f"{self.config.seed}:ids")
        self._analysis_rng = random.Random(f"{self.config.seed}:analysis")

    # --------------------------------------------------------------------------------------- control plane
    def reset(self) -> None:
        """Forget jobs, collections, stats and runtime faults; tokens stay valid (for session fixtures)."""
        with self.lock:
            self._init_world()
            self.faults.set(self.config.faults)
            self.faults.injected.clear()
            self.faults.reseed()
            self.clock = Clock(self.config.time_scale)
            self._new_rate_limiters()
            if self.owns_data_dir:
                for child in self.data_dir.iterdir():
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            else:
                self.outputs.remove_created()  # never touch files the emulator did not create
            self.save()

    def set_faults(self, **changes: Any) -> FaultConfig:
        """Change the named fault settings from the next request on; unknown names raise ``ValueError``."""
        with self.lock:
            self.faults.set(self.faults.faults.updated(**changes))
            return self.faults.faults

    def clear_faults(self) -> FaultConfig:
        """Turn every fault off (not back to the configured ones: ``reset`` does that)."""
        with self.lock:
            self.faults.set(FaultConfig())
            return self.faults.faults

    def _new_rate_limiters(self) -> None:
        """The configured policies of API calls and of token requests, with nothing counted yet."""
        scale = self.config.time_scale
        self.rate_limiter = RateLimiter(parse_limits(self.config.rate_limits), scale)
        self.token_rate_limiter = RateLimiter(parse_limits(self.config.token_rate_limits), scale)

    def set_rate_limits(self, values: Any, *, tokens: bool = False) -> list[dict[str, Any]]:
        """Replace the account's rate-limit policies of API calls (``tokens``: of token requests; ``[]``:
        none); counts of 429s so far are kept."""
        limits = parse_limits(values)
        with self.lock:
            (self.token_rate_limiter if tokens else self.rate_limiter).set(limits)
        return [limit.to_dict() for limit in limits]

    def rate_limit_stats(self) -> dict[str, Any]:
        """Policies and counts of API calls, with those of token requests under ``"token"``."""
        return {**self.rate_limiter.stats(), "token": self.token_rate_limiter.stats()}

    def revoke_tokens(self) -> None:
        """Invalidate every token issued so far (the next API call with one gets 401)."""
        with self.lock:
            self.tokens.revoke_all()

    def advance(self, seconds: float) -> float:
        """Jump the emulated clock forward (no waiting in tests); returns the new emulated time."""
        if seconds < 0:
            raise ValueError("cannot go back in time")
        with self.lock:
            self.clock.advance(seconds)
            return self.clock.now()

    def set_time_scale(self, time_scale: float) -> None:
        """Emulated seconds per wall-clock second from now on, for the clock and the rate limits."""
        with self.lock:
            self.clock.set_scale(time_scale)
            self.rate_limiter.time_scale = time_scale
            self.token_rate_limiter.time_scale = time_scale

    def set_pu_budget(self, budget: float | None) -> None:
        """The account's PU budget (``None``: unlimited); spending so far is kept."""
        with self.lock:
            self.pu_budget = budget

    def queue_job_overrides(self, count: int = 1, **overrides: Any) -> None:
        """Per-job settings for the next created jobs (tile failure rates, analysis error)."""
        unknown = set(overrides) - {"tile_failure_rate", "retry_tile_failure_rate", "analysis_error"}
        if unknown:
            raise ValueError(f"unknown job override(s): {', '.join(sorted(unknown))}")
        with self.lock:
            self.job_overrides.extend(dict(overrides) for _ in range(max(1, count)))

    def next_job_settings(self, overrides: dict[str, Any] | None, emulated_failure: str) -> dict[str, Any]:
        """The settings of a job being created: the faults' tile failure rate, then the next queued overrides,
        then the create call's own; ``analysis_error`` is ``emulated_failure`` at the analysis failure rate
        unless one was set."""
        with self.lock:
            settings: dict[str, Any] = {"tile_failure_rate": self.faults.faults.tile_failure_rate}
            if self.job_overrides:
                settings.update(self.job_overrides.pop(0))
            settings.update(overrides or {})
            if (
                settings.get("analysis_error") is None
                and self._analysis_rng.random() < self.faults.faults.analysis_failure_rate
            ):
                settings["analysis_error"] = emulated_failure
            return settings

    def configure_job(
        self,
        job_id: str,
        *,
        tile_failure_rate: float | None = None,
        retry_tile_failure_rate: float | None = None,
        analysis_error: str | None = None,
    ) -> Job:
        """Change one job's tile failure rates or analysis error (``""``: none); a ``PROCESSING`` job
        redraws its unfinished tiles. ``KeyError`` for an unknown id, ``ValueError`` for a rate outside
        [0, 1]."""
        with self.lock:
            job = self.get_job(job_id)
            now = self.clock.now()
            if tile_failure_rate is not None:
                _check_rate("tile_failure_rate", tile_failure_rate)
                job.tile_failure_rate = tile_failure_rate
            if retry_tile_failure_rate is not None:
                _check_rate("retry_tile_failure_rate", retry_tile_failure_rate)
                job.retry_tile_failure_rate = retry_tile_failure_rate
            if analysis_error is not None:
                job.analysis_error = analysis_error or None
            if job.status == "PROCESSING" and (
                tile_failure_rate is not None or retry_tile_failure_rate is not None
            ):
                job.redraw_failures(now)
            self.save()
            return job

    def force(
        self, job_id: str, status: str, error: str | None = None, stopped_status_reason: str | None = None
    ) -> Job:
        """Put a v1/v2 job in ``status`` now (control plane, failure-path tests); ``KeyError`` for an
        unknown id, 400 for a status its API does not have."""
        with self.lock:
            job = self.get_job(job_id)
            now = self.clock.now()
            job.force(self, now, status, error, stopped_status_reason)
            job.advance(self, now)
            self.save()
            return job

    def get_job(self, job_id: str) -> Job:
        """The job, advanced to now, ignoring the 404 fault window (for tests and the control plane)."""
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None:
                raise KeyError(job_id)
            job.advance(self, self.clock.now())
            return job

    def job_status(self, job_id: str) -> str:
        """The job's status now (``KeyError`` if unknown)."""
        return self.get_job(job_id).status

    def pu_spent(self, now: float | None = None) -> float:
        """PUs billed by ``now`` (default: now) to v2 tasks and statistical requests; v1 is not counted."""
        with self.lock:
            t = self.clock.now() if now is None else now
            return sum(j.cost_pu(t) for j in self.jobs.values() if j.api == 2) + sum(
                r.cost_pu(t) for r in self.stat_requests.values()
            )

    def check_pu_balance(self, needs: str = "batch processing needs") -> None:
        """The service's 403 when the account holds less than 1000 PU (``needs`` names what asked)."""
        if self.pu_budget is None:
            return
        left = self.pu_budget - self.pu_spent()
        if left < MIN_PU_BALANCE:
            raise ApiError(
                403,
                f"Insufficient processing units: {needs} at least {MIN_PU_BALANCE:.0f} PU "
                f"on the account ({max(left, 0):.1f} PU left).",
                "COMMON_INSUFFICIENT_PERMISSIONS",
            )

    def stats(self) -> dict[str, Any]:
        """The control plane's counters: tokens, calls, responses, faults, jobs by status, PUs, clock."""
        with self.lock:
            now = self.clock.now()
            by_status: dict[str, Counter[str]] = {"v1": Counter(), "v2": Counter()}
            for job in self.jobs.values():
                job.advance(self, now)
                by_status[f"v{job.api}"][job.status] += 1
            return {
                "token_requests": self.token_requests,
                "tokens_issued": self.tokens_issued,
                "jobs_created": self.jobs_created,
                "calls": dict(sorted(self.calls.items())),
                "responses": dict(sorted(self.responses.items())),
                "faults_injected": dict(sorted(self.faults.injected.items())),
                "rate_limits": self.rate_limit_stats(),
                "jobs": {k: dict(v) for k, v in by_status.items()},
                "time_scale": self.clock.scale,
                "emulated_seconds": round(now, 3),
                "pu_spent": round(self.pu_spent(now), 3),
                "pu_budget": self.pu_budget,
                "faults": self.faults.faults.to_dict(),
                "data_dir": str(self.data_dir),
            }

    # ----------------------------------------------------------------------------------------------- jobs
    def _lookup(self, api: int, job_id: str) -> Job:
        """A job as the API sees it: unknown, other-version and freshly created (404 fault) ids are 404."""
        job = self.jobs.get(job_id)
        kind = "Batch request" if api == 1 else "Batch task"
        if job is None or job.api != api:
            raise not_found(f"{kind} with id {job_id} not found.")
        window = self.faults.faults.not_found_after_create
        if window and time.monotonic() - job.created_mono < window:
            self.faults.count("404_after_create")
            raise not_found(f"{kind} with id {job_id} not found.")
        job.advance(self, self.clock.now())
        return job

    def create(
        self,
        api: int,
        payload: Any,
        overrides: dict[str, Any] | None = None,
        *,
        plan: Plan | None = None,
        write_outputs: bool = True,
    ) -> dict[str, Any]:
        """POST a v1 request or v2 task: the service's 400 for a bad payload or an unwritable bucket,
        403 (v2) under 1000 PU; returns the new job's view."""
        plan = plan or (validate_v1(payload) if api == 1 else validate_v2(payload))
        with self.lock:
            if api == 2:
                self.check_pu_balance()
            now = self.clock.now()
            settings = self.next_job_settings(
                overrides, "Analysis failed: no data could be found for the request (emulated failure)."
            )
            analysis_error = settings.get("analysis_error")
            if analysis_error is None and "evaluatePixel" not in plan.evalscript:
                analysis_error = (
                    "Failed to evaluate script!\nevalscript.js: ReferenceError: evaluatePixel is not defined"
                )
            job_id = str(uuid.UUID(int=self._ids.getrandbits(128), version=4))
            job = Job(
                id=job_id,
                api=api,
                body=_normalized_body(api, payload),
                user_id=self.user_id,
                seed=self._ids.getrandbits(32),
                created_emu=now,
                created_wall=time.time(),
                created_mono=time.monotonic(),
                tiles=_tiles(plan),
                grid_id=plan.grid.id if plan.grid else 0,
                resolution=plan.resolution,
                tile_px=list(plan.tile_px),
                responses=[list(r) for r in plan.responses],
                output_kind=plan.output_kind,
                output_url=plan.output_url if write_outputs else "",
                tile_failure_rate=float(settings.get("tile_failure_rate") or 0.0),
                retry_tile_failure_rate=float(settings.get("retry_tile_failure_rate") or 0.0),
                analysis_error=analysis_error,
                user_action_emu=now,
                last_updated_emu=now,
            )
            try:
                self.outputs.created(job)
            except out.DeliveryError as exc:
                raise _bucket_refused(api, job.body, exc) from None
            self.jobs[job_id] = job
            self.jobs_created += 1
            log.info("created v%d job %s with %d tiles", api, job_id, len(job.tiles))
            self.save()
            return self.view(job)

    def create_many(
        self, api: int, payload: Any, count: int, *, action: str | None = None, write_outputs: bool = True
    ) -> list[str]:
        """``count`` jobs from one payload, validated once, optionally analysed/started (load tests).

        ``write_outputs=False`` keeps the API view unchanged but writes no bucket files for these jobs, so
        10,000 waiting jobs cost memory only.
        """
        if not 1 <= count <= 100_000:
            raise ValueError("count must be within [1, 100000]")
        if action not in (None, "analyse", "start"):
            raise ValueError("action must be analyse, start or null")
        plan = validate_v1(payload) if api == 1 else validate_v2(payload)
        ids: list[str] = []
        with self.lock:
            state_file, self.state_file = self.state_file, None  # save once at the end, not per job
            try:
                for _ in range(count):
                    job_id = self.create(api, payload, plan=plan, write_outputs=write_outputs)["id"]
                    if action is not None:
                        self.action(api, job_id, action)
                    ids.append(job_id)
            finally:
                self.state_file = state_file
            self.save()
        return ids

    def view(self, job: Job) -> dict[str, Any]:
        """The API body (v1 ``BatchProcessRequest`` / v2 task) at the current time."""
        now = self.clock.now()
        created = iso(job.created_wall)

        def when(emu: float) -> str:
            return iso(min(time.time(), max(job.created_wall, self.clock.epoch(emu))))

        if job.api == 1:
            body: dict[str, Any] = {
                "id": job.id,
                "userId": job.user_id,
                "accountId": self.account_id,
                "created": created,
            }
            body.update(_shallow(job.body))
            body.update(
                {
                    "tileCount": len(job.tiles),
                    "tileWidthPx": job.tile_px[0],
                    "tileHeightPx": job.tile_px[1],
                    "status": job.status,
                    "userAction": job.user_action,
                    "userActionUpdated": when(job.user_action_emu),
                }
            )
            if job.analysed:
                body["valueEstimate"] = round(job.value_estimate, 3)
            if job.error:
                body["error"] = job.error
            return body
        task: dict[str, Any] = {
            "id": job.id,
            "request": _shallow(job.body),
            "domainAccountId": self.account_id,
            "status": job.status,
            "userAction": job.user_action,
            "userActionUpdated": when(job.user_action_emu),
            "created": created,
            "lastUpdated": when(max(job.last_updated_emu, _last_tile_event(job, now))),
            "completionPercentage": job.completion(now),
            "costPU": round(job.cost_pu(now), 3),
        }
        if job.error:
            task["error"] = job.error
        if job.status == "STOPPED" and job.stopped_reason:
            task["stoppedStatusReason"] = job.stopped_reason
        return task

    def get_view(self, api: int, job_id: str) -> dict[str, Any]:
        """GET one job as the API sees it (404 for unknown ids, the other API's ids, the not-found window)."""
        with self.lock:
            return self.view(self._lookup(api, job_id))

    def action(self, api: int, job_id: str, action: str) -> None:
        """POST an action (``analyse``, ``start``, ``cancel``, ``restart``, ``stop``) to a job."""
        with self.lock:
            job = self._lookup(api, job_id)
            now = self.clock.now()
            handler = getattr(job, f"v{api}_{action}")
            handler(self, now)
            job.advance(self, now)
            self.save()

    def update(self, api: int, job_id: str, payload: Any) -> dict[str, Any]:
        """PUT ``description`` (and v1 ``output.collectionId``); other fields are a 400, a job processing
        or about to process a 409. Returns the updated view."""
        with self.lock:
            job = self._lookup(api, job_id)
            if not isinstance(payload, dict):
                raise bad_payload("Request body should be a JSON object.")
            allowed = {"description", "output"} if api == 1 else {"description"}
            errors = [
                {
                    "parameter": key,
                    "violation": f"cannot be updated; updatable fields: {', '.join(sorted(allowed))}",
                }
                for key in sorted(set(payload) - allowed)
            ]
            if (
                "description" in payload
                and payload["description"] is not None
                and not isinstance(payload["description"], str)
            ):
                errors.append({"parameter": "description", "violation": "must be a string"})
            if api == 1 and "output" in payload:
                o = payload["output"]
                if not isinstance(o, dict) or set(o) - {"collectionId"}:
                    errors.append(
                        {"parameter": "output", "violation": "only output->collectionId can be updated"}
                    )
            if errors:
                raise bad_payload(
                    f"Invalid request payload: {errors[0]['parameter']}: {errors[0]['violation']}", errors
                )
            job.v1_check_update() if api == 1 else job.v2_check_update()
            if "description" in payload:
                job.body["description"] = payload["description"]
            if api == 1 and "output" in payload:
                job.body.setdefault("output", {})
                if isinstance(job.body["output"], dict):
                    job.body["output"]["collectionId"] = payload["output"].get("collectionId")
            self.save()
            return self.view(job)

    def delete(self, api: int, job_id: str) -> None:
        """DELETE a v1 request; 409 unless ``CREATED``, ``ANALYSIS_DONE``, ``FAILED`` or ``CANCELED`` with no
        processed tile."""
        with self.lock:
            job = self._lookup(api, job_id)
            job.v1_check_delete(self.clock.now())
            del self.jobs[job_id]
            self.save()

    def list_jobs(
        self,
        api: int,
        *,
        search: str | None = None,
        sort: str | None = None,
        user_id: str | None = None,
        collection_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """The list call's views of one API's jobs, filtered by ``search`` (description), user, collection."""

        def keep(job: Job) -> bool:
            return (
                job.api == api
                and (not user_id or user_id == job.user_id)
                and (not collection_id or (job.body.get("output") or {}).get("collectionId") == collection_id)
                and search_matches(job.description, search)
            )

        with self.lock:
            return [self.view(j) for j in self.listed(self.jobs.values(), sort, keep)]

    def listed(
        self, jobs: Iterable[_J], sort: str | None, keep: Callable[[_J], bool] | None = None
    ) -> list[_J]:
        """What a list call shows of ``jobs`` (v1/v2 jobs or Batch Statistical requests): those past the
        not-yet-visible window after create and kept by ``keep``, advanced to now, in ``sort`` order (``created``
        by default; ``status``; ``:desc``). An unknown ``sort`` is the service's 400."""
        if sort is not None and sort not in SORTS:
            raise bad_payload(
                f"Invalid sort {sort!r}.",
                [{"parameter": "sort", "violation": f"must be one of {', '.join(SORTS)}"}],
            )
        with self.lock:
            now = self.clock.now()
            window = self.faults.faults.not_found_after_create
            shown = []
            for job in jobs:
                if window and time.monotonic() - job.created_mono < window:
                    continue  # not yet visible: the database has not synced
                if keep is not None and not keep(job):
                    continue
                job.advance(self, now)
                shown.append(job)
            field_, _, order = (sort or "created").partition(":")
            if field_ == "status":
                shown.sort(key=lambda j: (j.status, j.created_emu), reverse=order == "desc")
            else:
                shown.sort(key=lambda j: j.created_emu, reverse=order == "desc")
            return shown

    # ----------------------------------------------------------------------------------------------- tiles
    def tile_view(self, job: Job, tile: Tile, now: float) -> dict[str, Any]:
        """One v1 tile as the tiles endpoints show it; its cost counts only once ``PROCESSED``."""
        status = tile.status(now)
        return {
            "id": tile.id,
            "requestId": job.id,
            "name": tile.name,
            "geometry": tile.geometry,
            "origin": tile.origin,
            "status": status,
            "cost": round(tile.cost, 4) if status == "PROCESSED" else 0.0,
        }

    def list_tiles(self, job_id: str, status: str | None = None) -> list[dict[str, Any]]:
        """The tiles of a v1 request, optionally of one ``status`` (else 400); none before analysis."""
        if status is not None and status not in TILE_STATUSES:
            raise bad_payload(
                f"Invalid tile status {status!r}.",
                [{"parameter": "status", "violation": f"must be one of {', '.join(TILE_STATUSES)}"}],
            )
        with self.lock:
            job = self._lookup(1, job_id)
            if not job.analysed:
                return []  # tiles exist only after analysis
            now = self.clock.now()
            views = [self.tile_view(job, t, now) for t in job.tiles]
            return [v for v in views if status is None or v["status"] == status]

    def get_tile(self, job_id: str, tile_id: int) -> dict[str, Any]:
        """One tile of a v1 request; 404 for an unknown tile or before analysis."""
        with self.lock:
            job = self._lookup(1, job_id)
            for tile in job.tiles if job.analysed else []:
                if tile.id == tile_id:
                    return self.tile_view(job, tile, self.clock.now())
            raise not_found(f"Tile {tile_id} of batch request {job_id} not found.")

    # ------------------------------------------------------------------------------------------ collections
    def create_collection(self, payload: Any) -> dict[str, Any]:
        """POST a batch collection (``name`` and ``s3Bucket`` required, else 400); returns it."""
        errors = []
        if not isinstance(payload, dict):
            raise bad_payload("Request body should be a JSON object.")
        for key in ("name", "s3Bucket"):
            if not isinstance(payload.get(key), str) or not payload[key]:
                errors.append({"parameter": key, "violation": "is required and must be a non-empty string"})
        if errors:
            raise bad_payload(
                f"Invalid request payload: {errors[0]['parameter']}: {errors[0]['violation']}", errors
            )
        with self.lock:
            cid = str(uuid.UUID(int=self._ids.getrandbits(128), version=4))
            collection = {
                "id": cid,
                "accountId": self.account_id,
                "name": payload["name"],
                "s3Bucket": payload["s3Bucket"],
                "batchData": {},
                "additionalData": {"bands": {}},
                "created": iso(time.time()),
            }
            self.collections[cid] = collection
            self.save()
            return dict(collection)

    def get_collection(self, cid: str) -> dict[str, Any]:
        """One batch collection (404 if unknown)."""
        with self.lock:
            if cid not in self.collections:
                raise not_found(f"Batch collection with id {cid} not found.")
            return self._collection_view(self.collections[cid])

    def list_collections(self, search: str | None = None) -> list[dict[str, Any]]:
        """The batch collections whose name matches ``search``."""
        with self.lock:
            return [
                self._collection_view(c)
                for c in self.collections.values()
                if search_matches(c["name"], search)
            ]

    def _collection_view(self, collection: dict[str, Any]) -> dict[str, Any]:
        """``batchData.tilingGridId`` (an integer) is the grid of the first request that delivers into the
        collection; a collection no request has used yet has none, so the key is absent rather than null."""
        view = dict(collection)
        for job in self.jobs.values():
            if job.api == 1 and (job.body.get("output") or {}).get("collectionId") == collection["id"]:
                view["batchData"] = {"tilingGridId": job.grid_id}
                break
        return view

    def update_collection(self, cid: str, payload: Any) -> None:
        """Rename a batch collection (``name`` required, else 400; 404 if unknown)."""
        with self.lock:
            self.get_collection(cid)
            if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
                raise bad_payload(
                    "Invalid request payload: name: is required",
                    [{"parameter": "name", "violation": "is required"}],
                )
            self.collections[cid]["name"] = payload["name"]
            self.save()

    def delete_collection(self, cid: str) -> None:
        """DELETE a batch collection; 409 while a v1 request that is not FAILED or CANCELED uses it."""
        with self.lock:
            self.get_collection(cid)
            now = self.clock.now()
            for job in self.jobs.values():
                if job.api == 1 and (job.body.get("output") or {}).get("collectionId") == cid:
                    job.advance(self, now)
                    if job.status not in {"FAILED", "CANCELED"}:
                        raise ApiError(
                            409, f"Collection {cid} is used by batch request {job.id}.", "COMMON_BAD_PAYLOAD"
                        )
            del self.collections[cid]
            self.save()

    # ------------------------------------------------------------------------------------------ persistence
    def save(self) -> None:
        """Write jobs to the state file (atomically) so a restarted emulator continues where it was."""
        if self.state_file is None:
            return
        with self.lock:
            data = {
                "version": 1,
                "emulated_seconds": self.clock.now(),
                "wall": time.time(),
                "token_generation": self.tokens.generation,
                "jobs_created": self.jobs_created,
                # bucket keys stay in memory: no file the emulator writes holds a credential
                "jobs": [_stored(j) for j in self.jobs.values()],
                "stat_requests": [_stored(r) for r in self.stat_requests.values()],
                "collections": self.collections,
                "pu_budget": self.pu_budget,
            }
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.state_file.with_name(self.state_file.name + ".tmp")
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.state_file)

    def load(self, path: Path) -> None:
        """Read back a state file written by ``save``; the clock moves on by the downtime, since the
        service kept working while the emulator was down."""
        data = json.loads(path.read_text())
        with self.lock:
            # The service kept working while the emulator was down.
            downtime = max(0.0, time.time() - float(data["wall"]))
            self.clock.set_now(float(data["emulated_seconds"]) + downtime * self.clock.scale)
            self.tokens.generation = int(data.get("token_generation", 0))
            self.jobs_created = int(data.get("jobs_created", 0))
            from .statistical import StatRequest

            for raw in data.get("jobs", []):
                job = Job(**_revived(raw))
                self.jobs[job.id] = job
            for raw in data.get("stat_requests", []):
                request = StatRequest(**_revived(raw))
                self.stat_requests[request.id] = request
            self.collections = dict(data.get("collections", {}))
            self.pu_budget = data.get("pu_budget", self.pu_budget)
            loaded = len(self.jobs) + len(self.stat_requests)
            self._ids = random.Random(f"{self.config.seed}:ids:{loaded}:{data['wall']}")
            log.info(
                "loaded %d jobs and %d statistical requests from %s",
                len(self.jobs),
                len(self.stat_requests),
                path,
            )

    def cleanup(self) -> None:
        """Called at server stop: persist, and remove the temp data dir if the emulator made it."""
        with self.lock:
            self.save()
            if self.owns_data_dir:
                shutil.rmtree(self.data_dir, ignore_errors=True)


def _stored(job: Job) -> dict[str, Any]:
    """A job or statistical request as the state file keeps it: every field, the body without bucket keys."""
    return {**asdict(job), "body": out.without_credentials(job.body)}


def _revived(raw: dict[str, Any]) -> dict[str, Any]:
    """The constructor arguments of a job or statistical request read back from the state file."""
    return {**raw, "tiles": [Tile(**t) for t in raw["tiles"]], "created_mono": float("-inf")}


def _bucket_refused(api: int, body: dict[str, Any], exc: out.DeliveryError) -> ApiError:
    """The service's 400 for a delivery bucket it cannot write (the text names the bucket, never a key)."""
    if api == 2:
        parameter = "output->delivery->s3"
    elif body.get("bucketName") is not None:
        parameter = "bucketName"
    elif body.get("zarrOutput") is not None:
        parameter = "zarrOutput->path"
    else:
        parameter = "output->defaultTilePath"
    message = exc.describe()
    return bad_payload(message, [{"parameter": parameter, "violation": message}])


def _check_rate(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be within [0, 1]")


def _tiles(plan: Plan) -> list[Tile]:
    return [
        Tile(id=t.id, name=t.name, epsg=t.epsg, geometry=t.geometry, origin=t.origin, cost=plan.pu_per_tile)
        for t in plan.tiles
    ]


def _normalized_body(api: int, payload: dict[str, Any]) -> dict[str, Any]:
    body = copy.deepcopy(payload)
    if api == 1:
        if "tilingGrid" not in body and "tilingGridId" in body:
            body["tilingGrid"] = {"id": body["tilingGridId"], "resolution": body.get("resolution")}
        return body
    request = {
        "processRequest": body.get("processRequest"),
        "input": body.get("input"),
        "output": body.get("output"),
        "instanceType": body.get("instanceType", "normal"),
    }
    if body.get("description") is not None:
        request["description"] = body["description"]
    return request


def _shallow(body: dict[str, Any]) -> dict[str, Any]:
    """Copy of the parts the API may change later (deep copies of big process requests are slow); the
    rest is never mutated after create."""
    copied = dict(body)
    if isinstance(copied.get("output"), dict):
        copied["output"] = dict(copied["output"])
    return copied


def _last_tile_event(job: Job, now: float) -> float:
    ends = [t.end_at for t in job.tiles if t.end_at is not None and t.end_at <= now]
    return max(ends) if ends else job.last_updated_emu


__all__ = ["GRIDS", "V1_STATUSES", "V2_STATUSES", "Clock", "EmulatorState", "iso"]
