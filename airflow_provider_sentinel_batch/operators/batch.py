"""Operators for Sentinel Hub batch jobs: create, analyse, start, cancel/stop, restart-partial.

Every operator reads the job's status before acting (never a blind call), accepts "already there" states, and
is safe to retry: the create operator tags its request and re-attaches to it on a retry or rerun instead of
paying for a second job. Import-light: hooks and triggers are imported when a task runs, not when a DAG parses.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import (
    AirflowSensorTimeout,
    AirflowSkipException,
    BaseOperator,
    BaseOperatorLink,
    XCom,
    conf,
)

from airflow_provider_sentinel_batch import lineage, results
from airflow_provider_sentinel_batch.exceptions import (
    SentinelBatchAPIError,
    SentinelBatchConfigError,
    SentinelBatchCostExceededError,
    SentinelBatchError,
    SentinelBatchJobError,
)
from airflow_provider_sentinel_batch.models import (
    CAN_START,
    FAILURE,
    STARTED_OR_LATER,
    TERMINAL,
    output_location,
)
from airflow_provider_sentinel_batch.waiting import (
    COST_EXCEEDED,
    ERROR,
    PARTIAL,
    SUCCESS,
    TIMEOUT,
    WAIT,
    WAIT_TARGETS,
    Verdict,
    describe,
    judge,
    next_delay,
    summarize,
)

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

    from airflow_provider_sentinel_batch.hooks.sentinel_batch import SentinelBatchHook

LINKS_KEY = "sentinel_batch_links"
PARTIAL_POLICIES = ("fail", "succeed_with_warning", "restart")
DEFAULT_CONN_ID = "sentinel_batch_default"


def _default_deferrable() -> bool:
    return conf.getboolean("operators", "default_deferrable", fallback=False)


# ---------------------------------------------------------------------------------------------- links
class _LinkFromXCom(BaseOperatorLink):
    key = ""

    def get_link(self, operator: BaseOperator, *, ti_key: Any) -> str:
        links = XCom.get_value(ti_key=ti_key, key=LINKS_KEY) or {}
        return str(links.get(self.key) or "")


class SentinelBatchDashboardLink(_LinkFromXCom):
    """The request's page in the Sentinel Hub / CDSE dashboard."""

    name = "Sentinel Hub batch request"
    key = "dashboard"


class SentinelBatchOutputLink(_LinkFromXCom):
    """Where the outputs are delivered (bucket prefix)."""

    name = "Batch output location"
    key = "output"


# ---------------------------------------------------------------------------------------------- base
class SentinelBatchBaseOperator(BaseOperator):
    """Connection, API version and the shared "push links before anything can fail" step."""

    operator_extra_links = (SentinelBatchDashboardLink(), SentinelBatchOutputLink())
    ui_color = "#d9ead3"

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
        from airflow_provider_sentinel_batch.hooks.sentinel_batch import SentinelBatchHook

        return SentinelBatchHook(
            sentinel_batch_conn_id=self.sentinel_batch_conn_id, api_version=self.api_version
        )

    @property
    def version(self) -> str:
        return self.hook.api_version

    def _push_links(self, context: Context, request_id: str, request: dict[str, Any] | None = None) -> None:
        push_links(self, context, request_id, request)


def push_links(op: Any, context: Context, request_id: str, request: dict[str, Any] | None = None) -> None:
    """Request id and link targets to XCom at once, so links work while deferred and a retry finds the job."""
    ti = context["ti"]
    ti.xcom_push(key="request_id", value=request_id)
    location = output_location(op.version, request or {}, request_id) if request else None
    ti.xcom_push(key=LINKS_KEY, value={"dashboard": op.hook.dashboard_url(request_id), "output": location})
    lineage.remember_request(op, request_id, request)  # credential-free facts for OpenLineage


class _WaitsForBatch(BaseOperator):
    """Wait-for-status behaviour shared by the sensor and the operators' ``wait_for_completion``.

    Checks once on the worker; if not done, defers to :class:`SentinelBatchTrigger` (or polls on the worker
    when ``deferrable=False``). Outcomes come back through :meth:`execute_complete` in both modes. The
    parameters are explicit keyword-only arguments (not ``**kwargs``) so ``.partial()``/``.expand()`` accept them.

    :param deferrable: wait on the triggerer (default: ``[operators] default_deferrable``).
    :param poll_interval: seconds between status checks while PROCESSING (longer when progress allows).
    :param analysis_poll_interval: seconds between checks while CREATED/ANALYSING.
    :param max_poll_interval: cap of the adaptive interval (default 10x ``poll_interval``).
    :param wait_timeout: wall-clock seconds to wait before giving up (enforced in the trigger).
    :param cancel_on_timeout: stop/cancel the job when the wait times out.
    :param cancel_on_kill: stop/cancel the job when a user kills the task.
    :param max_cost_pu: cost guard (v1: refuse START over ``valueEstimate / 3``; v2: STOP when ``costPU`` passes).
    :param partial_policy: v1 PARTIAL: ``fail``, ``succeed_with_warning`` or ``restart``.
    :param max_partial_restarts: how many ``restartpartial`` rounds ``restart`` may do.
    :param created_at: epoch seconds of creation (XCom ``created_at`` of the create task): 404 grace.
    :param result_manifest: see :class:`~airflow_provider_sentinel_batch.results.ResultOptions` (and the
        ``results_*``, ``max_failed_*`` and ``manifest_limit`` parameters).
    """

    template_fields: Sequence[str] = ("max_cost_pu", "created_at")
    _is_sensor = False

    if TYPE_CHECKING:

        @property
        def hook(self) -> SentinelBatchHook: ...

        @property
        def version(self) -> str: ...

        sentinel_batch_conn_id: str

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
        manifest_limit: int = results.DEFAULT_LIMIT,
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

    def _verdict(
        self, request: dict[str, Any], wait_for: str, stale_status: str | None, stale_until: float
    ) -> Verdict:
        verdict = judge(self.version, wait_for, request, max_cost_pu=self.cost_budget)
        if stale_status is not None and request.get("status") == stale_status and time.time() < stale_until:
            return Verdict(WAIT, f"still {stale_status} (not updated yet)")
        return verdict

    def wait_for_status(
        self,
        context: Context,
        request_id: str,
        wait_for: str,
        *,
        restarts: int = 0,
        stale_status: str | None = None,
    ) -> Any:
        if wait_for not in WAIT_TARGETS:
            raise SentinelBatchConfigError(
                f"wait_for must be one of {', '.join(WAIT_TARGETS)}, got {wait_for!r}"
            )
        created_at = self._note_created(request_id)
        stale_until = time.time() + self.stale_timeout
        deadline = time.time() + self.wait_timeout if self.wait_timeout else None
        request = self.hook.get_request(request_id)
        if self._is_sensor and restarts == 0:
            push_links(self, context, request_id, request)  # operators pushed theirs before acting
        self.log.info("Batch request %s: %s", request_id, describe(self.version, request))
        verdict = self._verdict(request, wait_for, stale_status, stale_until)
        if verdict.outcome == WAIT and self.deferrable:
            from airflow_provider_sentinel_batch.triggers.batch import SentinelBatchTrigger

            trigger = SentinelBatchTrigger(
                request_id=request_id,
                conn_id=self.sentinel_batch_conn_id,
                api_version=self.version,
                wait_for=wait_for,
                poll_interval=self.poll_interval,
                analysis_poll_interval=self.analysis_poll_interval,
                max_poll_interval=self.max_poll_interval,
                deadline=deadline,
                cancel_on_timeout=self.cancel_on_timeout,
                cancel_on_kill=self.cancel_on_kill,
                max_cost_pu=self.cost_budget,
                created_at=created_at,
                stale_status=stale_status,
                stale_until=stale_until if stale_status else None,
                retry_policy=self.hook.retry_policy.to_dict(),
            )
            # The trigger enforces the deadline itself; the framework timeout is only a backstop.
            backstop = timedelta(seconds=deadline - time.time() + 600) if deadline else None
            self.defer(  # type: ignore[attr-defined]
                trigger=trigger,
                method_name="execute_complete",
                kwargs={"wait_for": wait_for, "restarts": restarts},
                timeout=backstop,
            )
        last_status = request.get("status")
        while verdict.outcome == WAIT:
            if deadline is not None and time.time() >= deadline:
                return self._complete(context, self._timeout_event(request_id, wait_for), wait_for, restarts)
            delay = next_delay(
                request.get("status"),
                poll_interval=self.poll_interval,
                analysis_poll_interval=self.analysis_poll_interval,
                max_poll_interval=self.max_poll_interval,
            )
            time.sleep(delay if deadline is None else max(0.0, min(delay, deadline - time.time())))
            request = self.hook.get_request(request_id)
            if request.get("status") != last_status:
                self.log.info("Batch request %s: %s", request_id, describe(self.version, request))
                last_status = request.get("status")
            verdict = self._verdict(request, wait_for, stale_status, stale_until)
        if verdict.outcome == COST_EXCEEDED:
            self._stop_quietly(request_id, "the cost guard")
        event: dict[str, Any] = {
            "status": verdict.outcome,
            "request_id": request_id,
            "api_version": self.version,
            "message": verdict.message,
            "summary": summarize(self.version, request),
        }
        if self.version == "v1" and request.get("status") in ("DONE", "PARTIAL", "FAILED"):
            event["summary"]["tiles"] = self._count_tiles(request_id)
        return self._complete(context, event, wait_for, restarts)

    def _timeout_event(self, request_id: str, wait_for: str) -> dict[str, Any]:
        message = f"Batch request {request_id} did not reach {wait_for} before the deadline"
        if self.cancel_on_timeout:
            self._stop_quietly(request_id, "the deadline")
            message += "; the job was asked to stop"
        return {"status": TIMEOUT, "request_id": request_id, "api_version": self.version, "message": message}

    def _count_tiles(self, request_id: str) -> dict[str, int] | None:
        try:
            return self.hook.count_tiles(request_id)
        except Exception as exc:
            self.log.warning("Could not count tiles of %s: %s", request_id, exc)
            return None

    def _stop_quietly(self, request_id: str, why: str) -> None:
        try:
            self.hook.stop_or_cancel(request_id)
            self.log.warning("Asked the service to stop batch request %s (%s)", request_id, why)
        except SentinelBatchAPIError as exc:
            if exc.status not in (400, 409):
                self.log.warning("Could not stop %s after %s: %s", request_id, why, exc)
        except Exception as exc:
            self.log.warning("Could not stop %s after %s: %s", request_id, why, exc)

    def execute_complete(
        self, context: Context, event: dict[str, Any], wait_for: str = "DONE", restarts: int = 0
    ) -> Any:
        """Resume after the trigger: success returns the summary; anything else raises with the reason."""
        return self._complete(context, event, wait_for, restarts)

    def _complete(self, context: Context, event: dict[str, Any], wait_for: str, restarts: int) -> Any:
        status = event.get("status")
        request_id = str(event.get("request_id"))
        summary = dict(event.get("summary") or {"request_id": request_id, "api_version": self.version})
        summary["dashboard_url"] = self.hook.dashboard_url(request_id)
        message = str(event.get("message") or status)
        if status == SUCCESS:
            self.log.info("%s", message)
            return results.finish(self, context, summary, wait_for)  # manifest, thresholds, asset events
        if status == PARTIAL:
            failed = self._failed_tiles(request_id)
            if self.partial_policy == "restart" and restarts < self.max_partial_restarts:
                self.log.warning(
                    "%s; restarting the failed tiles (restart %d of %d)",
                    message,
                    restarts + 1,
                    self.max_partial_restarts,
                )
                self.hook.restart_partial(request_id)
                return self.wait_for_status(
                    context, request_id, wait_for, restarts=restarts + 1, stale_status="PARTIAL"
                )
            if self.partial_policy == "succeed_with_warning":
                self.log.warning("%s; accepted (partial_policy='succeed_with_warning'). %s", message, failed)
                summary["partial"] = True
                return results.finish(self, context, summary, wait_for)
            raise SentinelBatchJobError(f"{message}. {failed}", request_id=request_id, status="PARTIAL")
        if status == TIMEOUT:
            if getattr(self, "soft_fail", False):
                raise AirflowSkipException(message)
            if self._is_sensor:
                raise AirflowSensorTimeout(message)
            raise SentinelBatchJobError(message, request_id=request_id, status=str(status))
        if status == COST_EXCEEDED:
            raise SentinelBatchCostExceededError(message, request_id=request_id, status=summary.get("status"))
        if status == ERROR:
            # the wait itself broke (service unreachable, rate limited for too long): a task retry may succeed
            raise SentinelBatchError(message)
        raise SentinelBatchJobError(message, request_id=request_id, status=summary.get("status"))

    def _failed_tiles(self, request_id: str, limit: int = 20) -> str:
        if self.version != "v1":
            return ""
        try:
            failed = self.hook.list_tiles(request_id, status="FAILED")
        except Exception as exc:
            return f"(could not list failed tiles: {exc})"
        shown = ", ".join(str(t.get("name") or t.get("id")) for t in failed[:limit])
        more = f" and {len(failed) - limit} more" if len(failed) > limit else ""
        return f"{len(failed)} failed tiles: {shown}{more}"

    def _kill_remote(self, request_id: str | None) -> None:
        if request_id and self.cancel_on_kill:
            self._stop_quietly(request_id, "the task was killed")


# ---------------------------------------------------------------------------------------------- create
def idempotency_tag(context: Context) -> str:
    """Same value on every try and rerun of one task instance (dag, task, run, map index), different otherwise."""
    ti = context["ti"]
    run_id = context.get("run_id") or getattr(ti, "run_id", "")
    key = f"{ti.dag_id}|{ti.task_id}|{run_id}|{getattr(ti, 'map_index', -1)}"
    return "airflow-" + hashlib.sha256(key.encode()).hexdigest()[:16]


class SentinelBatchCreateOperator(SentinelBatchBaseOperator):
    """Create a batch request (v1 or v2) from a payload; retries and reruns re-attach instead of paying twice.

    :param payload: the request body, a dict or a JSON string, or a ``.json`` template file.
    :param evalscript: optional evalscript (or ``.js`` template file) put into ``processRequest.evalscript``.
    :param description: put before the idempotency tag in the request's ``description``.
    :param bucket_conn_id: v2 only: an Airflow connection (login = access key, password = secret key) whose keys
        are added to ``output.delivery.s3`` at run time, so they never sit in the DAG or in rendered templates.
    :param reuse_existing: look for this task instance's request (tag in the description) before creating.
    :param validate: check the payload locally (shape, grid, resolution) before the create call.
    :return: the request id (also pushed as XCom ``request_id``, with ``created_at`` and links).
    """

    template_fields: Sequence[str] = (
        "payload",
        "evalscript",
        "description",
        "sentinel_batch_conn_id",
        "api_version",
    )
    template_ext: Sequence[str] = (".json", ".js")
    template_fields_renderers = {"payload": "json"}

    def __init__(
        self,
        *,
        payload: dict[str, Any] | str,
        evalscript: str | None = None,
        description: str | None = None,
        bucket_conn_id: str | None = None,
        reuse_existing: bool = True,
        validate: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.payload = payload
        self.evalscript = evalscript
        self.description = description
        self.bucket_conn_id = bucket_conn_id
        self.reuse_existing = reuse_existing
        self.validate = validate

    get_openlineage_facets_on_complete = lineage.get_openlineage_facets_on_complete

    def _build_payload(self, tag: str) -> dict[str, Any]:
        payload = self.payload
        if isinstance(payload, str):
            try:
                payload = json.loads(payload)
            except ValueError as exc:
                raise SentinelBatchConfigError(f"payload is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise SentinelBatchConfigError(f"payload must be a JSON object, got {type(payload).__name__}")
        payload = copy.deepcopy(payload)
        if self.evalscript:
            payload.setdefault("processRequest", {})["evalscript"] = self.evalscript
        base = self.description if self.description is not None else payload.get("description")
        if self.version == "v2" and base is None:
            base = (payload.get("processRequest") or {}).get("description")
        payload["description"] = f"{base} [{tag}]" if base else f"[{tag}]"
        return payload

    def _with_bucket_credentials(self, payload: dict[str, Any]) -> dict[str, Any]:
        if not self.bucket_conn_id:
            return payload
        if self.version != "v2":
            raise SentinelBatchConfigError("bucket_conn_id is for Batch v2 (v1 writes with a bucket policy).")
        from airflow.providers.common.compat.sdk import mask_secret

        conn = self.hook.get_connection(self.bucket_conn_id)
        if not conn.login or not conn.password:
            raise SentinelBatchConfigError(
                f"bucket connection {self.bucket_conn_id!r} needs the access key as login and secret key as password"
            )
        mask_secret(conn.password)
        sent = copy.deepcopy(payload)
        s3 = sent.setdefault("output", {}).setdefault("delivery", {}).setdefault("s3", {})
        s3.update({"accessKey": conn.login, "secretAccessKey": conn.password})
        region = conn.extra_dejson.get("region_name") or conn.extra_dejson.get("region")
        if region:
            s3.setdefault("region", region)
        return sent

    def _find_existing(self, tag: str) -> dict[str, Any] | None:
        found = [
            r
            for r in self.hook.iter_requests(search=tag, sort="created:desc")
            if tag in str(r.get("description") or (r.get("request") or {}).get("description") or "")
        ]
        usable = [r for r in found if r.get("status") not in FAILURE[self.version]]
        if len(usable) > 1:
            self.log.warning(
                "Several requests carry tag %s: %s; using the newest", tag, [r.get("id") for r in usable]
            )
        for r in found:
            if r not in usable:
                self.log.info(
                    "Previous request %s of this task ended %s; not reusing it", r.get("id"), r.get("status")
                )
        return usable[0] if usable else None

    def _created_despite(self, exc: SentinelBatchError, tag: str) -> dict[str, Any]:
        """After an ambiguous create failure (answer lost, 5xx), the job may exist: find it by its tag."""
        from airflow_provider_sentinel_batch.retry import is_transient

        if not (self.reuse_existing and is_transient(exc)):
            raise exc
        for pause in (0.0, 5.0, 15.0):  # the service's list lags its writes by a few seconds
            time.sleep(pause)
            existing = self._find_existing(tag)
            if existing is not None:
                self.log.warning(
                    "Create failed ambiguously (%s) but the service had created request %s: using it",
                    exc,
                    existing.get("id"),
                )
                return existing
        raise exc

    def execute(self, context: Context) -> str:
        tag = idempotency_tag(context)
        payload = self._build_payload(tag)
        if self.reuse_existing:
            existing = self._find_existing(tag)
            if existing is not None:
                request_id = str(existing["id"])
                self.log.info(
                    "Re-attaching to batch request %s (%s) created by an earlier try of this task; not creating "
                    "a new one",
                    request_id,
                    existing.get("status"),
                )
                self._push_links(context, request_id, existing)
                context["ti"].xcom_push(key="created_at", value=None)
                return request_id
        if self.validate:
            self.hook.validate_payload(payload)
        try:
            created = self.hook.create_request(self._with_bucket_credentials(payload), validate=False)
        except SentinelBatchError as exc:
            created = self._created_despite(exc, tag)
        request_id = str(created["id"])
        # push before anything else can fail: a retry must be able to find this job
        context["ti"].xcom_push(key="created_at", value=time.time())
        self._push_links(context, request_id, payload | {"id": request_id})
        self.log.info("Batch request %s created: %s", request_id, describe(self.version, created))
        return request_id


# ---------------------------------------------------------------------------------------------- actions
class _RequestOperator(_WaitsForBatch, SentinelBatchBaseOperator):
    template_fields: Sequence[str] = (
        "request_id",
        "created_at",
        "max_cost_pu",
        "sentinel_batch_conn_id",
        "api_version",
    )

    def __init__(self, *, request_id: str, wait_for_completion: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.request_id = request_id
        self.wait_for_completion = wait_for_completion

    def _read(self) -> dict[str, Any]:
        if self.request_id in (None, "", "None"):
            # e.g. a cancel-on-failure task whose create step itself failed: there is no job to act on
            raise AirflowSkipException(
                "No batch request id (the create step did not produce one): nothing to do."
            )
        self._note_created(self.request_id)
        request = self.hook.get_request(self.request_id)
        self.log.info("Batch request %s: %s", self.request_id, describe(self.version, request))
        return request

    def on_kill(self) -> None:
        if self.wait_for_completion:
            self._kill_remote(self.request_id)


class SentinelBatchAnalyseOperator(_RequestOperator):
    """Ask for analysis (free: tile list and, on v1, the PU estimate); optionally wait for ANALYSIS_DONE."""

    def execute(self, context: Context) -> Any:
        request = self._read()
        status, action = request.get("status"), request.get("userAction")
        self._push_links(context, self.request_id, request)
        if status in FAILURE[self.version]:
            raise SentinelBatchJobError(
                judge(self.version, "DONE", request).message, request_id=self.request_id
            )
        if status == "CREATED" and action in (None, "NONE"):
            self.hook.analyse(self.request_id)
        else:
            self.log.info(
                "Not sending ANALYSE: status %s, user action %s (analysis asked or done)", status, action
            )
        if self.wait_for_completion:
            return self.wait_for_status(context, self.request_id, "ANALYSIS_DONE")
        return self.request_id


class SentinelBatchStartOperator(_RequestOperator):
    """Start processing (this costs PU). Refuses on v1 when ``valueEstimate / 3`` exceeds ``max_cost_pu``."""

    get_openlineage_facets_on_complete = lineage.get_openlineage_facets_on_complete

    def execute(self, context: Context) -> Any:
        request = self._read()
        status, action = request.get("status"), request.get("userAction")
        self._push_links(context, self.request_id, request)
        if status in STARTED_OR_LATER or (status == "ANALYSING" and action == "START"):
            self.log.info("Not sending START: already started (status %s, user action %s)", status, action)
        elif status in CAN_START[self.version]:
            self._check_cost(request)
            self.hook.start(self.request_id)
        else:
            raise SentinelBatchJobError(
                f"Batch request {self.request_id} cannot be started from status {status}"
                + (f": {request['error']}" if request.get("error") else ""),
                request_id=self.request_id,
                status=str(status),
            )
        if self.wait_for_completion:
            return self.wait_for_status(context, self.request_id, "DONE")
        return self.request_id

    def _check_cost(self, request: dict[str, Any]) -> None:
        budget = self.cost_budget
        if budget is None or self.version != "v1":
            return  # v2 has no estimate: its trigger watches costPU while processing instead
        estimate = request.get("valueEstimate")
        if estimate is None:
            raise SentinelBatchCostExceededError(
                f"max_cost_pu={budget:g} is set but batch request {self.request_id} has no valueEstimate "
                f"(status {request.get('status')}): run the analysis first (SentinelBatchAnalyseOperator with "
                "wait_for_completion=True), then start.",
                request_id=self.request_id,
            )
        charged = float(estimate) / 3.0
        if charged > budget:
            raise SentinelBatchCostExceededError(
                f"Not starting batch request {self.request_id}: valueEstimate {float(estimate):g} PU means about "
                f"{charged:.1f} PU charged (estimate / 3), over max_cost_pu={budget:g}.",
                request_id=self.request_id,
            )
        self.log.info(
            "Cost guard: ~%.1f PU (valueEstimate %g / 3) within max_cost_pu=%g",
            charged,
            float(estimate),
            budget,
        )


class SentinelBatchCancelOperator(_RequestOperator):
    """Cancel (v1) or stop (v2) a job; an already finished job is fine. v2: no restart for 30 min after STOP."""

    def execute(self, context: Context) -> str:
        request = self._read()
        status = request.get("status")
        if status in TERMINAL[self.version]:
            self.log.info("Batch request %s is already %s: nothing to stop", self.request_id, status)
            return str(status)
        try:
            self.hook.stop_or_cancel(self.request_id)
        except SentinelBatchAPIError as exc:
            if exc.status != 400:
                raise
            self.log.info("The service refused to stop %s: %s", self.request_id, exc.message)
        return str(self.hook.get_status(self.request_id))


SentinelBatchStopOperator = SentinelBatchCancelOperator


class SentinelBatchRestartPartialOperator(_RequestOperator):
    """v1: re-run the failed tiles of a PARTIAL request, then wait until the status has left PARTIAL."""

    def __init__(self, *, api_version: str | None = "v1", **kwargs: Any) -> None:
        super().__init__(api_version=api_version, **kwargs)

    def execute(self, context: Context) -> Any:
        if self.version != "v1":
            raise SentinelBatchConfigError(
                "restartpartial exists only in Batch v1 (v2 has no PARTIAL status)."
            )
        request = self._read()
        status = request.get("status")
        if status == "DONE":
            self.log.info("Batch request %s is DONE: nothing to restart", self.request_id)
            return summarize(self.version, request)
        if status != "PARTIAL":
            raise SentinelBatchJobError(
                f"Only requests with status PARTIAL can be restarted; {self.request_id} is {status}",
                request_id=self.request_id,
                status=str(status),
            )
        self.hook.restart_partial(self.request_id)
        if self.wait_for_completion:
            return self.wait_for_status(context, self.request_id, "DONE", stale_status="PARTIAL")
        deadline = time.time() + self.stale_timeout
        while time.time() < deadline:
            status = self.hook.get_status(self.request_id)
            if status != "PARTIAL":
                self.log.info("Batch request %s left PARTIAL: now %s", self.request_id, status)
                return status
            time.sleep(min(self.analysis_poll_interval, max(0.0, deadline - time.time())))
        raise SentinelBatchJobError(
            f"Batch request {self.request_id} still shows PARTIAL {self.stale_timeout:g} s after restartpartial",
            request_id=self.request_id,
            status="PARTIAL",
        )
