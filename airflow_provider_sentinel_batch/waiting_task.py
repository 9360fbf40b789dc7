"""The task side of waiting on a batch job, shared by the operators and the sensor.

:class:`SentinelBatchTask` is what every task of this provider has: the connection, the API version, the hook,
and :meth:`~SentinelBatchTask.record_request` (request id, link targets and lineage facts, before anything can
fail). :class:`WaitsForBatch` adds the wait: check once on the worker, then defer to
:class:`~airflow_provider_sentinel_batch.triggers.batch.SentinelBatchTrigger` or poll on the worker; both modes
end in :meth:`~WaitsForBatch.execute_complete`, which applies the partial policy and, on success, adds the result
manifest, checks the thresholds and attaches the request to asset events. What each look means is decided by
:class:`~airflow_provider_sentinel_batch.waiting.Watch`; this module does the I/O around it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowSkipException, BaseOperator, conf

from airflow_provider_sentinel_batch import lineage, results
from airflow_provider_sentinel_batch.exceptions import (
    SentinelBatchConfigError,
    SentinelBatchCostExceededError,
    SentinelBatchError,
    SentinelBatchJobError,
    SentinelBatchRefusedError,
)
from airflow_provider_sentinel_batch.layout import location_of
from airflow_provider_sentinel_batch.links import LINKS_KEY
from airflow_provider_sentinel_batch.manifest import DEFAULT_LIMIT
from airflow_provider_sentinel_batch.models import WAIT_TARGETS, Status, TileStatus
from airflow_provider_sentinel_batch.waiting import (
    OUTCOME_KEY,
    PACE_FIELDS,
    Look,
    Outcome,
    Verdict,
    Watch,
    describe,
    stop_note,
)

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

    from airflow_provider_sentinel_batch.hooks.sentinel_batch import SentinelBatchHook

DEFAULT_CONN_ID = "sentinel_batch_default"
#: Templated fields of every task on an existing request (the sensor and the request operators).
REQUEST_TEMPLATE_FIELDS = ("request_id", "created_at", "max_cost_pu", "sentinel_batch_conn_id", "api_version")
PARTIAL_POLICIES = ("fail", "succeed_with_warning", "restart")


class SentinelBatchTask(BaseOperator):
    """Connection, API version and hook of a task on one batch request, and the request facts it records."""

    def __init__(
        self,
        *,
        sentinel_batch_conn_id: str = DEFAULT_CONN_ID,
        api_version: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.sentinel_batch_conn_id = sentinel_batch_conn_id
        self.api_version = api_version

    @cached_property
    def hook(self) -> SentinelBatchHook:
        """The sync hook of this task's connection and API version."""
        from airflow_provider_sentinel_batch.hooks.sentinel_batch import SentinelBatchHook

        return SentinelBatchHook(
            sentinel_batch_conn_id=self.sentinel_batch_conn_id, api_version=self.api_version
        )

    @property
    def version(self) -> str:
        """The API version in use (``v1`` | ``v2``): the task's, else the connection's."""
        return self.hook.api_version

    def record_request(
        self, context: Context, request_id: str, request: dict[str, Any] | None = None
    ) -> None:
        """Push the request id and link targets to XCom and keep its lineage facts, before anything can fail.

        Links then work while the task is deferred, and a retry finds the job.
        """
        ti = context["ti"]
        ti.xcom_push(key="request_id", value=request_id)
        location = location_of(self.version, request, request_id) if request else None
        # web pages only: the UI drops links that are not http(s) (an s3:// location would not show)
        links = {"dashboard": self.hook.dashboard_url(request_id), "output": self.hook.output_page(location)}
        ti.xcom_push(key=LINKS_KEY, value=links)
        self.lineage_notes.remember_request(
            self.version, request_id, request
        )  # credential-free, for OpenLineage

    @cached_property
    def lineage_notes(self) -> lineage.LineageNotes:
        """What this task learnt of its request and result, for OpenLineage at completion."""
        return lineage.LineageNotes()


class ReportsLineage(SentinelBatchTask):
    """A task whose completion reports its request's lineage to OpenLineage (create, start, the sensor)."""

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage facets of the batch request this task created, started or waited for."""
        notes = self.lineage_notes
        request_id = (
            notes.request.get("request_id")
            or notes.result.get("request_id")
            or getattr(self, "request_id", None)
        )
        if not request_id and task_instance is not None:
            try:
                request_id = task_instance.xcom_pull(task_ids=self.task_id, key="request_id")
            except Exception:
                request_id = None
        try:
            api_version, base_url = self.version, self.hook.settings.base_url
        except Exception:  # lineage never fails a task: an unreadable connection gives what the notes hold
            api_version, base_url = self.api_version or "", None
        return lineage.operator_lineage(
            notes,
            api_version=api_version,
            base_url=base_url,
            request_id=request_id,
            read_request=lambda rid: self.hook.get_request(rid),
        )


class WaitsForBatch(SentinelBatchTask):
    """Waiting for a batch request's status, for the sensor and the operators' ``wait_for_completion``.

    Checks once on the worker; if not done, defers to :class:`SentinelBatchTrigger` (or polls on the worker
    when ``deferrable=False``). Outcomes come back through :meth:`execute_complete` in both modes. The
    parameters are explicit keyword-only arguments (not ``**kwargs``) so ``.partial()``/``.expand()`` accept them.

    :param deferrable: wait on the triggerer (default: ``[operators] default_deferrable``).
    :param poll_interval: seconds between status checks while PROCESSING (longer when progress allows).
    :param analysis_poll_interval: seconds between checks while CREATED/ANALYSING/ANALYSIS_DONE.
    :param max_poll_interval: cap of the adaptive interval (default 10x ``poll_interval``).
    :param wait_timeout: wall-clock seconds to wait before giving up (enforced in the trigger).
    :param cancel_on_timeout: stop/cancel the job when the wait times out.
    :param cancel_on_kill: stop/cancel the job when a user kills the task.
    :param max_cost_pu: cost guard (v1: refuse START over ``valueEstimate / 3``; v2: STOP when ``costPU`` passes).
    :param partial_policy: v1 PARTIAL: ``fail``, ``succeed_with_warning`` or ``restart``.
    :param max_partial_restarts: how many ``restartpartial`` rounds ``restart`` may do.
    :param created_at: epoch seconds of creation (XCom ``created_at`` of the create task): 404 grace.
    :param stale_timeout: seconds a PARTIAL shown after ``restartpartial`` is taken as not yet updated.
    :param result_manifest: see :class:`~airflow_provider_sentinel_batch.results.ResultOptions` (and the
        ``results_*``, ``max_failed_*`` and ``manifest_limit`` parameters).
    """

    template_fields: Sequence[str] = ("max_cost_pu", "created_at")

    def __init__(
        self,
        *,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float = 60.0,
        analysis_poll_interval: float = 10.0,
        max_poll_interval: float | None = None,
        wait_timeout: float | None = None,
        cancel_on_timeout: bool = False,
        cancel_on_kill: bool = True,
        max_cost_pu: float | str | None = None,
        partial_policy: str = "fail",
        max_partial_restarts: int = 1,
        created_at: Any = None,
        stale_timeout: float = 900.0,
        result_manifest: bool | None = None,
        results_url: str | None = None,
        results_conn_id: str | None = None,
        results_storage_options: dict[str, Any] | None = None,
        max_failed_features: int | None = None,
        max_failed_fraction: float | None = None,
        manifest_limit: int = DEFAULT_LIMIT,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if partial_policy not in PARTIAL_POLICIES:
            raise SentinelBatchConfigError(
                f"partial_policy must be one of {', '.join(PARTIAL_POLICIES)}, got {partial_policy!r}"
            )
        if poll_interval <= 0 or analysis_poll_interval <= 0:
            raise SentinelBatchConfigError("poll intervals must be positive numbers of seconds")
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.analysis_poll_interval = analysis_poll_interval
        self.max_poll_interval = max_poll_interval
        self.wait_timeout = wait_timeout
        self.cancel_on_timeout = cancel_on_timeout
        self.cancel_on_kill = cancel_on_kill
        self.max_cost_pu = max_cost_pu
        self.partial_policy = partial_policy
        self.max_partial_restarts = max_partial_restarts
        self.created_at = created_at
        self.stale_timeout = stale_timeout
        self.result_options = results.ResultOptions(
            result_manifest=result_manifest,
            results_url=results_url,
            results_conn_id=results_conn_id,
            results_storage_options=results_storage_options,
            max_failed_features=max_failed_features,
            max_failed_fraction=max_failed_fraction,
            manifest_limit=manifest_limit,
        )

    @property
    def cost_budget(self) -> float | None:
        """``max_cost_pu`` as a number (it is templated, so it may arrive as a string)."""
        if self.max_cost_pu in (None, "", "None"):
            return None
        try:
            return float(self.max_cost_pu)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise SentinelBatchConfigError(
                f"max_cost_pu must be a number of PU, got {self.max_cost_pu!r}"
            ) from None

    def _note_created(self, request_id: str) -> float | None:
        from airflow_provider_sentinel_batch.retry import RECENT_REQUESTS

        try:
            created = float(self.created_at) if self.created_at not in (None, "", "None") else None
        except (TypeError, ValueError):
            created = None
        if created is not None:
            RECENT_REQUESTS.note(request_id, created)
        return created

    # ------------------------------------------------------------------------------------------ the watch
    def new_watch(self, request_id: str, wait_for: str, *, deadline: float | None = None) -> Watch:
        """A :class:`Watch` with this task's intervals and cost budget (worker looks use fixed intervals)."""
        if wait_for not in WAIT_TARGETS:
            raise SentinelBatchConfigError(
                f"wait_for must be one of {', '.join(WAIT_TARGETS)}, got {wait_for!r}"
            )
        pace = {name: getattr(self, name) for name in PACE_FIELDS}
        watch = Watch(request_id=request_id, api_version=self.version, wait_for=wait_for, **pace)
        watch.max_cost_pu, watch.deadline = self.cost_budget, deadline
        return watch

    def _look(self, watch: Watch, request: dict[str, Any]) -> Look:
        look = watch.look(request)
        if look.changed:
            self.log.info("Batch request %s: %s", watch.request_id, describe(self.version, request))
        return look

    def _stop(self, request_id: str, why: str) -> str:
        """Ask the service to stop/cancel the job; never raises. Returns the note for the task's message."""
        try:
            self.hook.stop_or_cancel(request_id)
        except Exception as exc:
            return stop_note(self.log, self.version, request_id, why, exc)
        return stop_note(self.log, self.version, request_id, why)

    def _count_tiles(self, request_id: str) -> dict[str, int] | None:
        try:
            return self.hook.count_tiles(request_id)
        except Exception as exc:  # a summary detail: never worth failing the wait for
            self.log.warning("Could not count tiles of %s: %s", request_id, exc)
            return None

    def _end_event(self, watch: Watch, verdict: Verdict, request: dict[str, Any]) -> dict[str, Any]:
        """The event a wait on the worker ends with: the job stopped on the cost guard, tiles counted if due."""
        note = (
            self._stop(watch.request_id, "the cost guard") if verdict.outcome == Outcome.COST_EXCEEDED else ""
        )
        tiles = self._count_tiles(watch.request_id) if watch.counts_tiles(request) else None
        return watch.event(verdict, request, tiles=tiles, note=note)

    # ------------------------------------------------------------------------------------------- the wait
    def wait_for_status(
        self,
        context: Context,
        request_id: str,
        wait_for: str,
        *,
        restarts: int = 0,
        stale_status: str | None = None,
        request: dict[str, Any] | None = None,
    ) -> Any:
        """Wait until the request reaches ``wait_for``: one look here, then defer or poll; returns the summary.

        ``request`` is a request object just read (the first look), ``stale_status`` a status to ignore for
        ``stale_timeout`` seconds (``PARTIAL`` right after a restart).
        """
        now = time.time()
        watch = self.new_watch(
            request_id, wait_for, deadline=now + self.wait_timeout if self.wait_timeout else None
        )
        if stale_status is not None:
            watch.expect_stale(stale_status, now + self.stale_timeout)
        created_at = self._note_created(request_id)
        if request is None:
            request = self.hook.get_request(request_id)
        look = self._look(watch, request)
        if not look.over and self.deferrable:
            self._defer(watch, restarts, created_at)
        while not look.over:
            if watch.expired():
                note = self._stop(request_id, "the deadline") if self.cancel_on_timeout else ""
                return self.execute_complete(context, watch.timeout(note), wait_for, restarts)
            time.sleep(watch.delay())
            request = self.hook.get_request(request_id)
            look = self._look(watch, request)
        return self.execute_complete(
            context, self._end_event(watch, look.verdict, request), wait_for, restarts
        )

    def _defer(self, watch: Watch, restarts: int, created_at: float | None) -> None:
        from airflow_provider_sentinel_batch.triggers.batch import SentinelBatchTrigger

        trigger = SentinelBatchTrigger(
            **watch.trigger_kwargs(),
            conn_id=self.sentinel_batch_conn_id,
            cancel_on_timeout=self.cancel_on_timeout,
            cancel_on_kill=self.cancel_on_kill,
            created_at=created_at,
            retry_policy=self.hook.retry_policy.to_dict(),
        )
        # The trigger enforces the deadline itself; the framework timeout is only a backstop.
        backstop = timedelta(seconds=watch.deadline - time.time() + 600) if watch.deadline else None
        self.defer(
            trigger=trigger,
            method_name="execute_complete",
            kwargs={"wait_for": watch.wait_for, "restarts": restarts},
            timeout=backstop,
        )

    # ------------------------------------------------------------------------------------ the end of the wait
    def execute_complete(
        self, context: Context, event: dict[str, Any], wait_for: str = Status.DONE, restarts: int = 0
    ) -> Any:
        """End of the wait in both modes: success returns the summary; anything else raises with the reason."""
        outcome = event.get(OUTCOME_KEY)
        request_id = str(event.get("request_id"))
        summary = dict(event.get("summary") or {"request_id": request_id, "api_version": self.version})
        summary["dashboard_url"] = self.hook.dashboard_url(request_id)
        message = str(event.get("message") or outcome)
        if outcome == Outcome.SUCCESS:
            self.log.info("%s", message)
            return self._deliver(context, summary, wait_for)
        if outcome == Outcome.PARTIAL:
            failed = self._failed_tiles(request_id)
            if self.may_restart_partial(restarts):
                self.restart_partial(request_id, message, restarts)
                return self.wait_for_status(
                    context, request_id, wait_for, restarts=restarts + 1, stale_status=Status.PARTIAL
                )
            if self.partial_policy == "succeed_with_warning":
                self.log.warning("%s; accepted (partial_policy='succeed_with_warning'). %s", message, failed)
                summary["partial"] = True
                return self._deliver(context, summary, wait_for)
            raise SentinelBatchJobError(f"{message}. {failed}", request_id=request_id, status=Status.PARTIAL)
        if outcome == Outcome.TIMEOUT:
            if getattr(self, "soft_fail", False):
                raise AirflowSkipException(message)
            raise self.timeout_error(message, request_id)
        if outcome == Outcome.COST_EXCEEDED:
            raise SentinelBatchCostExceededError(message, request_id=request_id, status=summary.get("status"))
        if outcome == Outcome.ERROR:
            if event.get(
                "final"
            ):  # refused credentials or permission, a broken connection: retrying cannot help
                raise SentinelBatchRefusedError(message)
            # the wait itself broke (service unreachable, rate limited for too long): a task retry may succeed
            raise SentinelBatchError(message)
        raise SentinelBatchJobError(message, request_id=request_id, status=summary.get("status"))

    def timeout_error(self, message: str, request_id: str) -> Exception:
        """The error a wait past its deadline fails the task with."""
        return SentinelBatchJobError(message, request_id=request_id, status=Outcome.TIMEOUT.value)

    def may_restart_partial(self, restarts: int) -> bool:
        """``partial_policy="restart"`` and rounds left after ``restarts`` restarts."""
        return self.partial_policy == "restart" and restarts < self.max_partial_restarts

    def restart_partial(self, request_id: str, message: str, restarts: int) -> None:
        """Re-run the failed tiles of a PARTIAL job (round ``restarts + 1``)."""
        self.log.warning(
            "%s; restarting the failed tiles (restart %d of %d)",
            message,
            restarts + 1,
            self.max_partial_restarts,
        )
        self.hook.restart_partial(request_id)

    def _deliver(self, context: Context, summary: dict[str, Any], wait_for: str) -> dict[str, Any]:
        """After a successful wait: the result manifest and thresholds (DONE only), asset events, lineage facts."""
        if wait_for != Status.DONE:
            lineage.warn_outlets_before_done(self.outlets, wait_for, self.log)
            self.lineage_notes.remember_result(self.version, summary, None)
            return summary
        options = self.result_options
        request_id = str(summary.get("request_id"))
        request: dict[str, Any] | None = None
        try:
            request = self.hook.get_request(request_id)
        except Exception as exc:
            if options.strict:
                raise
            self.log.warning("Could not read batch request %s for its result manifest: %s", request_id, exc)
        else:
            summary["location"] = location_of(self.version, request, request_id) or summary.get("location")
        manifest = results.collect(
            hook=self.hook,
            api_version=self.version,
            request_id=request_id,
            request=request,
            status=summary.get("status"),
            options=options,
            log=self.log,
        )
        if manifest is not None:
            summary[results.RESULTS_KEY] = manifest
        lineage.emit_asset_events(self.outlets, context, lineage.asset_extra(summary), self.log)
        self.lineage_notes.remember_result(self.version, summary, request)
        return summary

    def _failed_tiles(self, request_id: str, limit: int = 20) -> str:
        if self.version != "v1":
            return ""
        try:
            failed = self.hook.list_tiles(request_id, status=TileStatus.FAILED)
        except Exception as exc:
            return f"(could not list failed tiles: {exc})"
        shown = ", ".join(str(t.get("name") or t.get("id")) for t in failed[:limit])
        more = f" and {len(failed) - limit} more" if len(failed) > limit else ""
        return f"{len(failed)} failed tiles: {shown}{more}"

    def _kill_remote(self, request_id: str | None) -> None:
        if request_id and self.cancel_on_kill:
            self._stop(request_id, "the task was killed")
