"""Batch jobs and their time-driven state machines (v1 requests and v2 tasks).

Nothing runs in the background: a job stores *when* things happen (in emulated seconds) and ``advance(now)``
applies every transition that is due whenever someone looks at it. That keeps the emulator deterministic
(same seed + same calls → same outcome), cheap when idle, and lets tests jump the clock forward.
"""

from __future__ import annotations

import heapq
import logging
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import bad_payload, conflict

if TYPE_CHECKING:
    from .state import EmulatorState

log = logging.getLogger("airflow_provider_sentinel_batch.emulator")

V1_STATUSES = ("CREATED", "ANALYSING", "ANALYSIS_DONE", "PROCESSING", "DONE", "PARTIAL", "FAILED", "CANCELED")
V2_STATUSES = ("CREATED", "ANALYSING", "ANALYSIS_DONE", "PROCESSING", "DONE", "FAILED", "STOPPED")
TILE_STATUSES = ("PENDING", "SCHEDULED", "QUEUED", "PROCESSING", "PROCESSED", "FAILED")

PARTIAL_RESTART_ONLY = "Only requests with status PARTIAL can be restarted."


@dataclass
class Timing:
    """Model durations in *emulated* seconds (divided by ``time_scale`` to get wall-clock time)."""

    analysis_base: float = 30.0
    analysis_per_tile: float = 0.5
    start_lag: float = 5.0
    """v2: after START on a CREATED task the status stays CREATED this long (STOP then is illegal)."""
    queue: float = 20.0
    """START accepted → PROCESSING (PUs are reserved, workers found)."""
    workers: int = 8
    pickup: float = 2.0
    stagger: float = 0.5
    tile_base: float = 30.0
    tile_per_mpx: float = 10.0
    tile_jitter: float = 0.2
    finalize: float = 10.0
    """Last tile finished → final status: the request status lags its tiles, as on the real service."""
    restart_lag: float = 15.0
    """v1: status stays PARTIAL this long after ``restartpartial``."""
    stop_block: float = 1800.0
    """v2: no restart within 30 minutes of a STOP."""


def failure_count(rate: float, n: int) -> int:
    """How many of ``n`` tiles fail: at least one for any positive rate, all only for rate 1."""
    if rate <= 0 or n == 0:
        return 0
    if rate >= 1:
        return n
    return min(max(1, round(rate * n)), max(n - 1, 1) if n > 1 else 1)


@dataclass
class Tile:
    """One tile (v1) or feature (v2) of a job: its schedule (emulated seconds) and whether this attempt fails."""

    id: int
    name: str
    epsg: int
    geometry: dict[str, Any]
    origin: dict[str, Any]
    cost: float
    attempt: int = 0
    sched_at: float | None = None
    start_at: float | None = None
    end_at: float | None = None
    fails: bool = False
    written: bool = False

    def status(self, now: float) -> str:
        """The tile status at ``now``, read from its schedule (``PENDING`` while unscheduled)."""
        if self.start_at is None or self.end_at is None or self.sched_at is None:
            return "PENDING"
        if now >= self.end_at:
            return "FAILED" if self.fails else "PROCESSED"
        if now >= self.start_at:
            return "PROCESSING"
        if now >= self.sched_at:
            return "SCHEDULED"
        return "PENDING"

    def finished(self, now: float) -> bool:
        """True once this attempt has ended by ``now``, processed or failed."""
        return self.end_at is not None and now >= self.end_at

    def unschedule(self) -> None:
        """Back to ``PENDING`` with nothing drawn or written (stopped, canceled or to be retried)."""
        self.sched_at = self.start_at = self.end_at = None
        self.fails = False
        self.written = False


@dataclass
class Job:
    """One batch request (``api == 1``) or task (``api == 2``); times are emulated seconds."""

    id: str
    api: int
    body: dict[str, Any]
    user_id: str
    seed: int
    created_emu: float
    created_wall: float
    created_mono: float
    tiles: list[Tile]
    grid_id: int
    resolution: float
    tile_px: list[int]
    responses: list[list[str]]
    output_kind: str
    output_url: str
    tile_failure_rate: float = 0.0
    retry_tile_failure_rate: float = 0.0
    analysis_error: str | None = None
    status: str = "CREATED"
    user_action: str = "NONE"
    user_action_emu: float = 0.0
    last_updated_emu: float = 0.0
    error: str | None = None
    analysed: bool = False
    start_lag_until: float | None = None
    analysis_end: float | None = None
    processing_start: float | None = None
    finish_at: float | None = None
    restart_at: float | None = None
    cancel_pending: bool = False
    stop_pending: bool = False
    stopped_at: float | None = None
    stopped_reason: str | None = None
    oop_at: float | None = None
    schedule_round: int = 0
    db_signature: str = ""
    value_estimate_pu: float | None = None
    output_check_at: float = -1e18
    """Emulated time of the next tile output to write; lets status polls skip scanning every tile."""
    extra_outputs_written: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------------------------------ derived
    @property
    def description(self) -> str:
        """The request's ``description``, ``""`` when it has none."""
        d = self.body.get("description")
        return d if isinstance(d, str) else ""

    @property
    def value_estimate(self) -> float:
        """Estimated PUs of the whole job (at least 100), before the batch discount; computed once."""
        if self.value_estimate_pu is None:
            self.value_estimate_pu = max(100.0, sum(t.cost for t in self.tiles))
        return self.value_estimate_pu

    @property
    def discount(self) -> float:
        """Batch bills 1/3 for tiles of at least 10,000 px; ``valueEstimate`` is before that factor."""
        return 1 / 3 if self.tile_px[0] * self.tile_px[1] >= 10_000 else 1.0

    def cost_pu(self, now: float) -> float:
        """PUs billed by ``now`` (batch discount applied): tiles processed, none after the account ran out."""
        cutoff = now if self.oop_at is None else min(now, self.oop_at)
        return sum(
            t.cost for t in self.tiles if t.end_at is not None and t.end_at <= cutoff and not t.fails
        ) * (self.discount)

    def finished_tiles(self, now: float) -> int:
        """How many tiles have ended (processed or failed) by ``now``."""
        return sum(1 for t in self.tiles if t.finished(now))

    def completion(self, now: float) -> float:
        """Percentage of tiles ended by ``now`` (one decimal), 100 once the job is ``DONE``."""
        if self.status == "DONE":
            return 100.0
        return round(100.0 * self.finished_tiles(now) / len(self.tiles), 1) if self.tiles else 0.0

    def waiting_to_process(self) -> bool:
        """True if the user started the job and it has not reached ``PROCESSING`` yet."""
        return self.user_action == "START" and self.status in {"CREATED", "ANALYSING", "ANALYSIS_DONE"}

    # ------------------------------------------------------------------------------------------ transitions
    def _set_status(self, status: str, t: float) -> None:
        if status != self.status:
            log.info("job %s (v%d): %s -> %s", self.id, self.api, self.status, status)
        self.status = status
        self.last_updated_emu = t

    def _set_action(self, action: str, now: float) -> None:
        self.user_action = action
        self.user_action_emu = now

    def _begin_analysis(self, st: EmulatorState, t: float) -> None:
        self._set_status("ANALYSING", t)
        self.analysis_end = t + st.timing.analysis_base + st.timing.analysis_per_tile * len(self.tiles)

    def advance(self, st: EmulatorState, now: float) -> None:
        """Apply every transition due by ``now``, then bring outputs on disk up to date."""
        for _ in range(16):
            if not self._step(st, now):
                break
        st.outputs.sync(self, now)

    def _due(self, name: str, now: float) -> float | None:
        """The time of the scheduled transition ``name`` when it is due by ``now`` (then cleared), else None."""
        at: float | None = getattr(self, name)
        if at is None or now < at:
            return None
        setattr(self, name, None)
        return at

    def _step(self, st: EmulatorState, now: float) -> bool:
        s = self.status
        if s == "CREATED" and (t := self._due("start_lag_until", now)) is not None:
            self._begin_analysis(st, t)
            return True
        if s == "ANALYSING" and (t := self._due("analysis_end", now)) is not None:
            if self.analysis_error:
                self.error = self.analysis_error
                self._set_status("FAILED", t)
                return False
            self.analysed = True
            self._set_status("ANALYSIS_DONE", t)
            st.outputs.analysis_done(self)
            if self.cancel_pending:
                self.cancel_pending = False
                self._set_status("CANCELED", t)
                return False
            if self.stop_pending:
                self._stop(t, "USER_ACTION")
                return False
            if self.user_action == "START":
                self.processing_start = t + st.timing.queue
            return True
        if (s == "ANALYSIS_DONE" and (t := self._due("processing_start", now)) is not None) or (
            s == "PARTIAL" and (t := self._due("restart_at", now)) is not None
        ):
            self._enter_processing(st, t)
            return True
        if s == "PROCESSING":
            if (
                self.oop_at is not None
                and now >= self.oop_at
                and (self.finish_at is None or self.oop_at < self.finish_at)
            ):
                self._stop(self.oop_at, "OUT_OF_PU")
                return False
            if self.finish_at is not None and now >= self.finish_at:
                self._finish(self.finish_at)
                return False
        return False

    def _schedule(self, st: EmulatorState, t0: float, tiles: list[Tile]) -> None:
        """Assign tiles to a pool of workers from ``t0``; which tiles fail is drawn here, seeded."""
        rng = random.Random(f"{self.seed}:{self.schedule_round}")
        self.schedule_round += 1
        self.output_check_at = -1e18
        tm = st.timing
        self._draw_failures(rng, tiles)
        base = tm.tile_base + tm.tile_per_mpx * self.tile_px[0] * self.tile_px[1] / 1e6
        free = [t0 + tm.pickup + i * tm.stagger for i in range(max(1, tm.workers))]
        heapq.heapify(free)
        for tile in tiles:
            start = heapq.heappop(free)
            tile.start_at = start
            tile.end_at = start + base * (1 + rng.uniform(-tm.tile_jitter, tm.tile_jitter))
            tile.sched_at = max(t0, start - base)
            tile.written = False
            heapq.heappush(free, tile.end_at)

    def _draw_failures(self, rng: random.Random, tiles: list[Tile]) -> None:
        first = [t for t in tiles if t.attempt == 0]
        retry = [t for t in tiles if t.attempt > 0]
        for group, rate in ((first, self.tile_failure_rate), (retry, self.retry_tile_failure_rate)):
            failing = {t.id for t in rng.sample(group, failure_count(rate, len(group)))}
            for t in group:
                t.fails = t.id in failing

    def redraw_failures(self, now: float) -> None:
        """After the failure rate changed mid-run: re-decide tiles that have not finished yet."""
        rng = random.Random(f"{self.seed}:redraw:{self.schedule_round}")
        self.schedule_round += 1
        self.output_check_at = -1e18
        self._draw_failures(rng, [t for t in self.tiles if not t.finished(now)])

    def _enter_processing(self, st: EmulatorState, t: float) -> None:
        self._set_status("PROCESSING", t)
        self._schedule(st, t, [x for x in self.tiles if x.start_at is None])
        self.finish_at = (
            max([x.end_at for x in self.tiles if x.end_at is not None] + [t]) + st.timing.finalize
        )
        self.oop_at = None
        if self.api == 2 and st.pu_budget is not None:
            available = st.pu_budget - st.pu_spent(now=t)
            if available <= 0:
                self.oop_at = t
            else:
                total = 0.0
                for tile in sorted(
                    (x for x in self.tiles if x.end_at and x.end_at > t), key=lambda x: x.end_at or 0
                ):
                    if not tile.fails:
                        total += tile.cost * self.discount
                        if total > available:
                            self.oop_at = tile.end_at
                            break

    def _freeze_after(self, t: float, *, abort_running: bool = False) -> None:
        """Tiles not yet started at ``t`` go back to PENDING; running ones finish (and are charged),
        unless ``abort_running`` (out of PUs: nothing more can be billed)."""
        for tile in self.tiles:
            if tile.start_at is not None and (
                tile.start_at > t or (abort_running and (tile.end_at or 0) > t)
            ):
                tile.unschedule()

    def _stop(self, t: float, reason: str) -> None:
        self._freeze_after(t, abort_running=reason == "OUT_OF_PU")
        self.stop_pending = False
        self.processing_start = self.finish_at = self.oop_at = None
        self.stopped_at = t
        self.stopped_reason = reason
        self._set_status("STOPPED", t)

    def _finish(self, t: float) -> None:
        n = len(self.tiles)
        failed = sum(1 for x in self.tiles if x.fails)
        self.finish_at = None
        if failed == n:
            self.error = (
                "Processing failed for all tiles." if self.api == 1 else "Processing failed for all features."
            )
            self._set_status("FAILED", t)
        elif failed and self.api == 1:
            self._set_status("PARTIAL", t)
        else:
            self._set_status("DONE", t)

    # ------------------------------------------------------------------------------------------ v1 actions
    def v1_analyse(self, st: EmulatorState, now: float) -> None:
        """ANALYSE a v1 request; only a ``CREATED`` one (else 400)."""
        if self.status != "CREATED":
            raise bad_payload(f"Only requests with status CREATED can be analysed (status is {self.status}).")
        self._set_action("ANALYSE", now)
        self._begin_analysis(st, now)

    def v1_start(self, st: EmulatorState, now: float) -> None:
        """START a v1 request: a ``CREATED`` one is analysed first, one being analysed goes on to process after.

        Raises 400 for other statuses and for a cancel pending.
        """
        if self.status == "CREATED":
            self._set_action("START", now)
            self._begin_analysis(st, now)
        elif self.status == "ANALYSING" and not self.cancel_pending:
            self._set_action("START", now)
        elif self.status == "ANALYSIS_DONE":
            if self.processing_start is None:
                self.processing_start = now + st.timing.queue
            self._set_action("START", now)
        else:
            raise bad_payload(
                "Only requests with status CREATED, ANALYSING or ANALYSIS_DONE can be started "
                f"(status is {self.status}{', cancel pending' if self.cancel_pending else ''})."
            )

    def v1_cancel(self, st: EmulatorState, now: float) -> None:
        """CANCEL a v1 request: a running analysis completes first; unstarted tiles go back to ``PENDING``.

        A request that has ended is left as it is (the call still succeeds).
        """
        s = self.status
        if s == "ANALYSING":
            self.cancel_pending = True  # a running analysis completes first
        elif s in {"CREATED", "ANALYSIS_DONE", "PROCESSING"} or (
            s == "PARTIAL" and self.restart_at is not None
        ):
            self._freeze_after(now)
            self.processing_start = self.finish_at = self.restart_at = None
            self._set_status("CANCELED", now)
        else:
            return  # "may cancel at any time": a finished request has nothing left to cancel (204, no change)
        self._set_action("CANCEL", now)

    def v1_restart(self, st: EmulatorState, now: float) -> None:
        """``restartpartial``: the failed tiles of a ``PARTIAL`` request (else 400) run again, after a lag."""
        if self.status != "PARTIAL":
            raise bad_payload(PARTIAL_RESTART_ONLY)
        if self.restart_at is not None:
            return  # already restarting; the status just has not caught up yet
        for tile in self.tiles:
            if tile.fails and tile.finished(now):
                tile.unschedule()
                tile.attempt += 1
        self.restart_at = now + st.timing.restart_lag
        self._set_action("START", now)

    def v1_check_update(self) -> None:
        """Raise 409 if the request is processing, started and about to process, or restarting."""
        if self.status == "PROCESSING" or self.waiting_to_process() or self.restart_at is not None:
            raise conflict(f"A request with status {self.status} that is being processed cannot be updated.")

    def v1_check_delete(self, now: float) -> None:
        """Raise 409 unless the request is ``CREATED``, ``ANALYSIS_DONE``, ``FAILED`` or ``CANCELED`` (and not
        about to process) with no processed tile."""
        processed = any(t.finished(now) and not t.fails for t in self.tiles)
        if self.status not in {"CREATED", "ANALYSIS_DONE", "FAILED", "CANCELED"} or self.waiting_to_process():
            raise conflict(
                f"A request with status {self.status} cannot be deleted; cancel it or wait until it ends."
            )
        if processed:
            raise conflict("A request with processed tiles cannot be deleted.")

    # ------------------------------------------------------------------------------------------ v2 actions
    def _illegal(self, action: str) -> Exception:
        return bad_payload(
            f"Illegal to change userAction from {self.user_action} to {action} with task status {self.status}"
        )

    def v2_analyse(self, st: EmulatorState, now: float) -> None:
        """ANALYSE a v2 task; only a ``CREATED`` one with no user action yet (else a 400 "Illegal to change")."""
        if self.status != "CREATED" or self.user_action != "NONE":
            raise self._illegal("ANALYSE")
        self._set_action("ANALYSE", now)
        self._begin_analysis(st, now)

    def v2_start(self, st: EmulatorState, now: float) -> None:
        """START a v2 task: a ``CREATED`` one stays so for ``Timing.start_lag``, then is analysed and processed.

        A ``STOPPED`` task restarts only 30 emulated minutes after the stop (else 400) and with PUs left on
        the account (else 403). Other statuses are a 400 "Illegal to change userAction".
        """
        s = self.status
        if s == "CREATED":
            if self.user_action != "START":
                self.start_lag_until = now + st.timing.start_lag
                self._set_action("START", now)
        elif s == "ANALYSING" and not self.stop_pending:
            self._set_action("START", now)
        elif s == "ANALYSIS_DONE":
            if self.processing_start is None:
                self.processing_start = now + st.timing.queue
            self._set_action("START", now)
        elif s == "STOPPED":
            assert self.stopped_at is not None
            if now < self.stopped_at + st.timing.stop_block:
                wait = (self.stopped_at + st.timing.stop_block - now) / st.clock.scale
                raise bad_payload(
                    "A stopped task cannot be restarted within 30 minutes of being stopped "
                    f"(emulated; {wait:.1f} s of wall-clock time left)."
                )
            st.check_pu_balance()
            self.stopped_reason = None
            self.analysed = True
            self._set_status("ANALYSIS_DONE", now)
            self.processing_start = now + st.timing.queue
            self._set_action("START", now)
        else:
            raise self._illegal("START")

    def v2_stop(self, st: EmulatorState, now: float) -> None:
        """STOP a v2 task (one being analysed stops once analysed); tiles not started go back to ``PENDING``.

        Only ``ANALYSING``, ``ANALYSIS_DONE`` and ``PROCESSING`` tasks can be stopped (else 400).
        """
        s = self.status
        if s == "ANALYSING":
            self.stop_pending = True  # the analysis completes, then the task stops
        elif s in {"ANALYSIS_DONE", "PROCESSING"}:
            self._stop(now, "USER_ACTION")
        else:
            raise self._illegal("STOP")
        self._set_action("STOP", now)

    def v2_check_update(self) -> None:
        """Raise 409 if the task is processing or started and about to process."""
        if self.status == "PROCESSING" or self.waiting_to_process():
            raise conflict(f"A task with status {self.status} that is being processed cannot be updated.")

    # ------------------------------------------------------------------------------------------ forcing
    def force(
        self, st: EmulatorState, now: float, status: str, error: str | None, reason: str | None
    ) -> None:
        """Put the job in ``status`` now (tests of failure paths); later transitions continue from there."""
        allowed = V1_STATUSES if self.api == 1 else V2_STATUSES
        if status not in allowed:
            raise bad_payload(f"status must be one of {', '.join(allowed)} for a v{self.api} job")
        self.start_lag_until = self.analysis_end = self.processing_start = None
        self.finish_at = self.restart_at = self.oop_at = None
        self.cancel_pending = self.stop_pending = False
        self.error = None
        if status in {"DONE", "PARTIAL", "FAILED"}:
            self.analysed = True
            for tile in self.tiles:
                if not tile.finished(now):
                    tile.sched_at = tile.start_at = tile.end_at = now
                    tile.fails = status == "FAILED"
            if status == "DONE":
                for tile in self.tiles:
                    tile.fails = False
            if status == "PARTIAL" and not any(t.fails for t in self.tiles):
                self.tiles[-1].fails = True
                self.tiles[-1].written = False
            if status == "FAILED":
                self.error = error or "Forced failure (emulator)."
        elif status in {"CANCELED", "STOPPED"}:
            self._freeze_after(now)
            if status == "STOPPED":
                self.stopped_at = now
                self.stopped_reason = reason or "USER_ACTION"
        elif status == "ANALYSING":
            self.analysed = False
            self.analysis_end = now + st.timing.analysis_base + st.timing.analysis_per_tile * len(self.tiles)
        elif status == "ANALYSIS_DONE":
            self.analysed = True
        elif status == "PROCESSING":
            self.analysed = True
            self._enter_processing(st, now)
        elif status == "CREATED":
            self.analysed = False
            for tile in self.tiles:
                tile.unschedule()
        if error and status != "FAILED":
            self.error = error
        if status != "STOPPED":
            self.stopped_reason = None
        self.status = status
        self.last_updated_emu = now
        self.output_check_at = -1e18
        log.info("job %s forced to %s", self.id, status)
