"""``SentinelBatchTrigger``: waits on the triggerer for a batch request to reach a target status.

Cheap (one GET per look, status-aware and progress-adaptive intervals, one shared token), robust (429/5xx/
network errors retried with the shared policy and then tolerated for a bounded number of looks, 404 grace
after create, token refresh on 401), and safe: it never raises out of ``run()`` — every outcome is an event
the task resumes with — and it only stops/cancels the remote job for a deadline, a cost guard, or a user
marking the deferred task failed (``on_kill``, Airflow 3.3+), never because the triggerer restarted or a user
marked the task success or cleared it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.providers.common.compat.sdk import AirflowFailException
from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_sentinel_batch.models import Status
from airflow_provider_sentinel_batch.waiting import TRIGGER_FIELDS, Outcome, Watch, describe, stop_note


class SentinelBatchTrigger(BaseTrigger):
    """Poll one batch request until ``wait_for`` (``ANALYSIS_DONE`` or ``DONE``) or a failure; yield one event.

    All arguments are primitives (they are serialized into the metadata database): no credentials here, the
    connection is resolved asynchronously on the triggerer from ``conn_id``.

    :param deadline: wall-clock epoch seconds; past it the trigger yields ``timeout`` (and stops the job first
        if ``cancel_on_timeout``).
    :param stale_status: a status to treat as "not yet updated" until ``stale_until`` (after ``restartpartial``
        the service keeps showing ``PARTIAL`` for a while).
    :param created_at: epoch seconds of creation, so a 404 right after create is retried, not fatal.
    """

    def __init__(
        self,
        *,
        request_id: str,
        conn_id: str,
        api_version: str,
        wait_for: str = Status.DONE,
        poll_interval: float = 60.0,
        analysis_poll_interval: float = 10.0,
        max_poll_interval: float | None = None,
        adaptive: bool = True,
        deadline: float | None = None,
        cancel_on_timeout: bool = False,
        cancel_on_kill: bool = True,
        max_cost_pu: float | None = None,
        max_poll_failures: int = 10,
        created_at: float | None = None,
        stale_status: str | None = None,
        stale_until: float | None = None,
        retry_policy: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.request_id = request_id
        self.conn_id = conn_id
        self.api_version = api_version
        self.wait_for = wait_for
        self.poll_interval = poll_interval
        self.analysis_poll_interval = analysis_poll_interval
        self.max_poll_interval = max_poll_interval
        self.adaptive = adaptive
        self.deadline = deadline
        self.cancel_on_timeout = cancel_on_timeout
        self.cancel_on_kill = cancel_on_kill
        self.max_cost_pu = max_cost_pu
        self.max_poll_failures = max_poll_failures
        self.created_at = created_at
        self.stale_status = stale_status
        self.stale_until = stale_until
        self.retry_policy = retry_policy

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Class path and primitive kwargs, as stored in the metadata database."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "request_id": self.request_id,
                "conn_id": self.conn_id,
                "api_version": self.api_version,
                "wait_for": self.wait_for,
                "poll_interval": self.poll_interval,
                "analysis_poll_interval": self.analysis_poll_interval,
                "max_poll_interval": self.max_poll_interval,
                "adaptive": self.adaptive,
                "deadline": self.deadline,
                "cancel_on_timeout": self.cancel_on_timeout,
                "cancel_on_kill": self.cancel_on_kill,
                "max_cost_pu": self.max_cost_pu,
                "max_poll_failures": self.max_poll_failures,
                "created_at": self.created_at,
                "stale_status": self.stale_status,
                "stale_until": self.stale_until,
                "retry_policy": self.retry_policy,
            },
        )

    # ------------------------------------------------------------------------------------------------ run
    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Wait, then yield exactly one event; never raises (the task must resume and fail with the reason)."""
        watch = self._new_watch()
        try:
            event = await self._wait(watch)
        except Exception as exc:  # never raise out of run(): the task must resume and fail with the message
            self.log.exception("Waiting for batch request %s failed", self.request_id)
            event = watch.error(f"Waiting for batch request {self.request_id} failed: {exc}")
        yield TriggerEvent(event)

    def _new_watch(self) -> Watch:
        return Watch(**{name: getattr(self, name) for name in TRIGGER_FIELDS}, adaptive=self.adaptive)

    def _client(self, settings: Any) -> Any:
        from airflow_provider_sentinel_batch.hooks.async_client import SentinelBatchAsyncClient
        from airflow_provider_sentinel_batch.retry import RetryPolicy

        return SentinelBatchAsyncClient(settings, retry_policy=RetryPolicy.from_dict(self.retry_policy))

    async def _wait(self, watch: Watch) -> dict[str, Any]:
        from airflow_provider_sentinel_batch.hooks.async_client import settings_for_conn_id
        from airflow_provider_sentinel_batch.retry import RECENT_REQUESTS, retries_ran_out

        settings = await settings_for_conn_id(self.conn_id)
        if self.created_at is not None:
            RECENT_REQUESTS.note(self.request_id, self.created_at)
        failures = 0
        async with self._client(settings) as client:
            while True:
                if watch.expired():
                    note = await self._stop(client, "the deadline") if self.cancel_on_timeout else ""
                    return watch.timeout(note)
                try:
                    request = await client.get_request(self.request_id, self.api_version)
                except Exception as exc:
                    if not retries_ran_out(exc):
                        event = watch.error(str(exc))
                        if isinstance(exc, AirflowFailException):  # credentials, permission: no task retry
                            event["final"] = True
                        return event
                    failures += 1
                    if failures >= self.max_poll_failures:
                        return watch.error(f"{failures} consecutive status checks failed; last error: {exc}")
                    self.log.warning("Status check %d failed (%s); will look again", failures, exc)
                    await asyncio.sleep(watch.bounded(self.poll_interval))
                    continue
                failures = 0
                look = watch.look(request)
                if look.changed:
                    self.log.info(
                        "Batch request %s: %s", self.request_id, describe(self.api_version, request)
                    )
                if look.over:
                    verdict = look.verdict
                    note = (
                        await self._stop(client, "the cost guard")
                        if verdict.outcome == Outcome.COST_EXCEEDED
                        else ""
                    )
                    tiles = await self._tiles(client) if watch.counts_tiles(request) else None
                    return watch.event(verdict, request, tiles=tiles, note=note)
                # Sleep holding only what the next look needs: with thousands of waiting triggers, every
                # response kept across the sleep is a few dozen more objects for each full GC to walk.
                del request, look
                await asyncio.sleep(watch.delay())

    async def _tiles(self, client: Any) -> dict[str, int] | None:
        try:
            return await client.count_tiles(self.request_id)
        except Exception as exc:  # a summary detail: never worth failing the wait for
            self.log.warning("Could not count tiles of %s: %s", self.request_id, exc)
            return None

    async def _stop(self, client: Any, why: str) -> str:
        try:
            await client.stop_or_cancel(self.request_id, self.api_version)
        except Exception as exc:
            return stop_note(self.log, self.api_version, self.request_id, why, exc)
        return stop_note(self.log, self.api_version, self.request_id, why)

    async def on_kill(self) -> None:
        """Airflow 3.3+: the triggerer dropped this trigger on a user's action. Stop the job only if it failed.

        The framework calls this when a user marks the deferred task failed, but also when they mark it success,
        skip it or clear it (and when the trigger is handed to another triggerer). Only a *failed* task means
        "stop the work": a success or skip keeps the job the user accepted, and a clear starts a new try that
        re-attaches to this same job. So the task instance's current state decides; if it cannot be read, the
        documented behaviour stands (a user acted: stop). Bounded by ``[triggerer] on_kill_timeout``; never raises.

        The work runs shielded: Airflow 3.3's triggerer re-sends the cancellation of a trigger with every state
        sync (about once a second) until the trigger has finished, so an unshielded on_kill is cut off silently
        after a second or so (a first state lookup on a fresh triggerer can take longer), and the stop is lost.
        """
        if not self.cancel_on_kill:
            self.log.info(
                "The trigger was removed; cancel_on_kill=False: leaving batch request %s running",
                self.request_id,
            )
            return
        work = asyncio.ensure_future(self._kill(_on_kill_budget()))
        while not work.done():
            try:
                await asyncio.shield(work)
            except asyncio.CancelledError:
                # the repeated cancellation (or a shutdown): finish the bounded work first
                if (task := asyncio.current_task()) is not None:
                    task.uncancel()

    async def _kill(self, budget: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        try:
            state = await asyncio.wait_for(self._task_state(), timeout=_lookup_timeout(budget))
        except Exception as exc:
            self.log.warning(
                "Could not read the state of the task waiting on batch request %s (%s); stopping the job, "
                "as a user acted on the task",
                self.request_id,
                _describe_error(exc),
            )
            why = "the task was killed"
        else:
            if state not in _KILL_STATES:
                self.log.info(
                    "The trigger was removed but the task is %s (marked success or skipped, cleared, or moved "
                    "to another triggerer), not failed: leaving batch request %s running",
                    state or "cleared (no state)",
                    self.request_id,
                )
                return
            why = f"the task was marked {state}"
        from airflow_provider_sentinel_batch.hooks.async_client import settings_for_conn_id

        try:
            async with asyncio.timeout_at(deadline):
                settings = await settings_for_conn_id(self.conn_id)
                async with self._client(settings) as client:
                    outcome = await self._stop(client, why)
            if "not needed" in outcome:
                self.log.info(
                    "Batch request %s was already finished after %s%s", self.request_id, why, outcome
                )
        except Exception as exc:
            self.log.warning(
                "Best-effort stop of %s on kill failed: %s", self.request_id, _describe_error(exc)
            )

    async def _task_state(self) -> str | None:
        """The current state of this trigger's task instance (Airflow 3: through the triggerer's supervisor).

        Raises when it cannot be known: no task instance, no Task SDK (Airflow 2), or the lookup failed.
        """
        ti = self.task_instance
        if ti is None:
            raise LookupError("the trigger has no task instance")
        from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance
        from asgiref.sync import sync_to_async

        dag_id, task_id, run_id = ti.dag_id, ti.task_id, ti.run_id
        map_index = getattr(ti, "map_index", -1)
        map_index = -1 if map_index is None else int(map_index)
        # a blocking call to the supervisor: in a worker thread, not on the event loop (nor on asgiref's one
        # shared thread, where it would queue behind other triggers' calls when many tasks are marked at once)
        states = await sync_to_async(RuntimeTaskInstance.get_task_states, thread_sensitive=False)(
            dag_id=dag_id, task_ids=[task_id], run_ids=[run_id], map_index=map_index
        )
        # {run_id: {task_id: state}}; a mapped task instance is keyed "<task_id>_<map_index>"
        key = task_id if map_index < 0 else f"{task_id}_{map_index}"
        try:
            state = states[run_id][key]
        except (KeyError, TypeError):
            raise LookupError(f"no task instance {dag_id}/{run_id}/{key} in {states!r}") from None
        return None if state is None else str(getattr(state, "value", state))


#: Task-instance states in which a user's action means "stop the work" (the task, or its whole run, marked
#: failed). Anything else (success, skipped, cleared: None/scheduled/queued/running/deferred/up_for_retry/
#: restarting, or still deferred after a move to another triggerer) leaves the job running.
_KILL_STATES = frozenset({"failed"})
#: Of the on_kill time, what the stop keeps for itself (connection, token, one POST with retries); the state
#: lookup gets the rest (the first one on a fresh triggerer builds the supervisor's in-process Execution API:
#: seconds, 15 s on a busy 2-core machine). If the lookup takes longer, stop the job (the documented behaviour).
_STOP_RESERVE = 8.0


def _on_kill_budget() -> float:
    """A little less than ``[triggerer] on_kill_timeout`` (30 s), so a slow stop is logged here, not cut off."""
    try:
        from airflow.configuration import conf

        timeout = float(conf.getint("triggerer", "on_kill_timeout", fallback=30))
    except Exception:
        timeout = 30.0
    return max(1.0, timeout * 0.9)


def _lookup_timeout(budget: float) -> float:
    return max(budget - _STOP_RESERVE, budget / 2)


def _describe_error(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__  # TimeoutError has no message
