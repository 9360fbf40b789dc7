"""``SentinelBatchSensor``: wait for a batch request to be analysed or done, deferrable or on the worker."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import (
    AirflowSensorTimeout,
    BaseOperator,
    BaseSensorOperator,
    PokeReturnValue,
)

from airflow_provider_sentinel_batch.links import SentinelBatchDashboardLink, SentinelBatchOutputLink
from airflow_provider_sentinel_batch.models import Status
from airflow_provider_sentinel_batch.waiting import Outcome, Watch
from airflow_provider_sentinel_batch.waiting_task import (
    DEFAULT_CONN_ID,
    REQUEST_TEMPLATE_FIELDS,
    ReportsLineage,
    WaitsForBatch,
)

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context


class SentinelBatchSensor(ReportsLineage, WaitsForBatch, BaseSensorOperator):
    """Wait until a batch request reaches ``wait_for`` (``ANALYSIS_DONE`` or ``DONE``).

    Fails fast on FAILED / CANCELED (v1) or FAILED / STOPPED (v2) quoting the service's ``error`` and
    ``stoppedStatusReason``; fails clearly when waiting for DONE on a job nobody started. v1 PARTIAL follows
    ``partial_policy`` (``fail``, ``succeed_with_warning``, ``restart`` up to ``max_partial_restarts``).
    Deferrable mode checks once, then waits on the triggerer with status-aware intervals: waiting for
    ``ANALYSIS_DONE``, ``analysis_poll_interval``; waiting for ``DONE``, never more looks than a fixed
    ``poll_interval`` poller nor a later look at the end, with fewer looks on long jobs (stretched from the rate of
    ``completionPercentage``, up to ``max_poll_interval``). ``timeout`` is enforced by the trigger on the wall
    clock; ``cancel_on_timeout`` stops the job then. ``soft_fail`` skips on timeouts only.

    :return: a summary dict (request id, status, cost, tiles, output location, dashboard URL).
    """

    template_fields: Sequence[str] = REQUEST_TEMPLATE_FIELDS
    operator_extra_links = (SentinelBatchDashboardLink(), SentinelBatchOutputLink())

    def __init__(
        self,
        *,
        request_id: str,
        wait_for: str = Status.DONE,
        sentinel_batch_conn_id: str = DEFAULT_CONN_ID,
        api_version: str | None = None,
        poll_interval: float = 60.0,
        analysis_poll_interval: float = 10.0,
        **kwargs: Any,
    ) -> None:
        # poke/reschedule mode polls at the same status-aware pace as the trigger
        kwargs.setdefault(
            "poke_interval", analysis_poll_interval if wait_for == Status.ANALYSIS_DONE else poll_interval
        )
        super().__init__(
            sentinel_batch_conn_id=sentinel_batch_conn_id,
            api_version=api_version,
            poll_interval=poll_interval,
            analysis_poll_interval=analysis_poll_interval,
            **kwargs,
        )
        self.request_id = request_id
        self.wait_for = wait_for
        self._watch: Watch | None = None
        self._restarts = 0

    def execute(self, context: Context) -> Any:
        """Deferrable: one look, then the trigger. Otherwise the sensor's own poke loop."""
        if self.wait_timeout is None and self.timeout:
            self.wait_timeout = float(self.timeout)
        if self.deferrable:
            self._note_created(self.request_id)
            request = self.hook.get_request(self.request_id)
            self.record_request(context, self.request_id, request)
            return self.wait_for_status(context, self.request_id, self.wait_for, request=request)
        return super().execute(context)

    def poke(self, context: Context) -> bool | PokeReturnValue:
        """One look on the worker (poke/reschedule mode); Airflow's sensor loop enforces ``timeout``."""
        self._note_created(self.request_id)
        request = self.hook.get_request(self.request_id)
        if self._watch is None:
            self._watch = self.new_watch(self.request_id, self.wait_for)
            self.record_request(context, self.request_id, request)
        look = self._look(self._watch, request)
        if not look.over:
            return False
        if look.verdict.outcome == Outcome.PARTIAL and self.may_restart_partial(self._restarts):
            self.restart_partial(self.request_id, look.verdict.message, self._restarts)
            self._restarts += 1
            self._watch.expect_stale(Status.PARTIAL, time.time() + self.stale_timeout)
            return False
        event = self._end_event(self._watch, look.verdict, request)
        result = self.execute_complete(context, event, self.wait_for, self.max_partial_restarts)
        return PokeReturnValue(is_done=True, xcom_value=result)

    def timeout_error(self, message: str, request_id: str) -> Exception:
        """A sensor's deadline is a sensor timeout (``soft_fail`` skips it)."""
        return AirflowSensorTimeout(message)

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        """Resume after deferral without the sensor's "any error skips under soft_fail" rule."""
        # BaseSensorOperator turns *any* error after deferral into a skip when soft_fail is set; here only a
        # timeout may skip (handled in execute_complete), a FAILED job must fail.
        return BaseOperator.resume_execution(self, next_method, next_kwargs, context)

    def on_kill(self) -> None:
        """Stop/cancel the job when the task is killed (``cancel_on_kill``)."""
        self._kill_remote(self.request_id)
