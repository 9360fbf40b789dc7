"""``SentinelBatchSensor``: wait for a batch request to be analysed or done, deferrable or on the worker."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseOperator, BaseSensorOperator, PokeReturnValue

from airflow_provider_sentinel_batch import lineage
from airflow_provider_sentinel_batch.operators.batch import (
    DEFAULT_CONN_ID,
    PARTIAL,
    SUCCESS,
    WAIT,
    SentinelBatchDashboardLink,
    SentinelBatchOutputLink,
    _WaitsForBatch,
    push_links,
)
from airflow_provider_sentinel_batch.waiting import describe, summarize

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

    from airflow_provider_sentinel_batch.hooks.sentinel_batch import SentinelBatchHook


class SentinelBatchSensor(_WaitsForBatch, BaseSensorOperator):
    """Wait until a batch request reaches ``wait_for`` (``ANALYSIS_DONE`` or ``DONE``).

    Fails fast on FAILED / CANCELED (v1) or FAILED / STOPPED (v2) quoting the service's ``error`` and
    ``stoppedStatusReason``; fails clearly when waiting for DONE on a job nobody started. v1 PARTIAL follows
    ``partial_policy`` (``fail``, ``succeed_with_warning``, ``restart`` up to ``max_partial_restarts``).
    Deferrable mode checks once, then waits on the triggerer with status-aware intervals (``analysis_poll_interval``
    while analysing, ``poll_interval`` while processing). ``timeout`` is enforced by the trigger on the wall
    clock; ``cancel_on_timeout`` stops the job then. ``soft_fail`` skips on timeouts only.

    :return: a summary dict (request id, status, cost, tiles, output location, dashboard URL).
    """

    template_fields: Sequence[str] = (
        "request_id",
        "created_at",
        "max_cost_pu",
        "sentinel_batch_conn_id",
        "api_version",
    )
    operator_extra_links = (SentinelBatchDashboardLink(), SentinelBatchOutputLink())
    _is_sensor = True
    get_openlineage_facets_on_complete = lineage.get_openlineage_facets_on_complete

    def __init__(
        self,
        *,
        request_id: str,
        wait_for: str = "DONE",
        sentinel_batch_conn_id: str = DEFAULT_CONN_ID,
        api_version: str | None = None,
        poll_interval: float = 60.0,
        analysis_poll_interval: float = 10.0,
        **kwargs: Any,
    ) -> None:
        # poke/reschedule mode polls at the same status-aware pace as the trigger
        kwargs.setdefault(
            "poke_interval", analysis_poll_interval if wait_for == "ANALYSIS_DONE" else poll_interval
        )
        super().__init__(poll_interval=poll_interval, analysis_poll_interval=analysis_poll_interval, **kwargs)
        self.request_id = request_id
        self.wait_for = wait_for
        self.sentinel_batch_conn_id = sentinel_batch_conn_id
        self.api_version = api_version
        self._links_pushed = False
        self._restarts = 0
        self._stale: str | None = None
        self._stale_until = 0.0
        self._last_status: str | None = None

    @cached_property
    def hook(self) -> SentinelBatchHook:
        from airflow_provider_sentinel_batch.hooks.sentinel_batch import SentinelBatchHook

        return SentinelBatchHook(
            sentinel_batch_conn_id=self.sentinel_batch_conn_id, api_version=self.api_version
        )

    @property
    def version(self) -> str:
        return self.hook.api_version

    def execute(self, context: Context) -> Any:
        if self.wait_timeout is None and self.timeout:
            self.wait_timeout = float(self.timeout)
        if self.deferrable:
            return self.wait_for_status(context, self.request_id, self.wait_for)
        return super().execute(context)

    def poke(self, context: Context) -> bool | PokeReturnValue:
        import time

        self._note_created(self.request_id)
        request = self.hook.get_request(self.request_id)
        if not self._links_pushed:
            push_links(self, context, self.request_id, request)
            self._links_pushed = True
        if request.get("status") != self._last_status:
            self.log.info("Batch request %s: %s", self.request_id, describe(self.version, request))
            self._last_status = request.get("status")
        verdict = self._verdict(request, self.wait_for, self._stale, self._stale_until)
        if self._stale is not None and request.get("status") != self._stale:
            self._stale = None  # the service has caught up after restartpartial
        if verdict.outcome == WAIT:
            return False
        event: dict[str, Any] = {
            "status": verdict.outcome,
            "request_id": self.request_id,
            "api_version": self.version,
            "message": verdict.message,
            "summary": summarize(self.version, request),
        }
        if (
            verdict.outcome == PARTIAL
            and self.partial_policy == "restart"
            and self._restarts < self.max_partial_restarts
        ):
            self._restarts += 1
            self.log.warning(
                "%s; restarting failed tiles (%d of %d)",
                verdict.message,
                self._restarts,
                self.max_partial_restarts,
            )
            self.hook.restart_partial(self.request_id)
            self._stale, self._stale_until = "PARTIAL", time.time() + self.stale_timeout
            return False
        if verdict.outcome == SUCCESS and self.version == "v1" and request.get("status") == "DONE":
            event["summary"]["tiles"] = self._count_tiles(self.request_id)
        result = self._complete(context, event, self.wait_for, self.max_partial_restarts)
        return PokeReturnValue(is_done=True, xcom_value=result)

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        # BaseSensorOperator turns *any* error after deferral into a skip when soft_fail is set; here only a
        # timeout may skip (handled in _complete), a FAILED job must fail.
        return BaseOperator.resume_execution(self, next_method, next_kwargs, context)

    def on_kill(self) -> None:
        self._kill_remote(self.request_id)
