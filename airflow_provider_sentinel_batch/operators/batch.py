"""Operators for Sentinel Hub batch jobs: create, analyse, start, cancel/stop, restart-partial.

Every operator reads the job's status before acting (never a blind call), accepts "already there" states, and
is safe to retry: the create operator tags its request and re-attaches to it on a retry or rerun instead of
paying for a second job. Import-light: hooks and triggers are imported when a task runs, not when a DAG parses.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowSkipException

from airflow_provider_sentinel_batch import identity
from airflow_provider_sentinel_batch.exceptions import (
    SentinelBatchAPIError,
    SentinelBatchConfigError,
    SentinelBatchCostExceededError,
    SentinelBatchError,
    SentinelBatchJobError,
)
from airflow_provider_sentinel_batch.links import SentinelBatchDashboardLink, SentinelBatchOutputLink
from airflow_provider_sentinel_batch.models import (
    CAN_ANALYSE,
    CAN_START,
    FAILURE,
    STARTED_OR_LATER,
    TERMINAL,
    Status,
    UserAction,
    nobody_asked,
)
from airflow_provider_sentinel_batch.waiting import describe, failure_message, summarize
from airflow_provider_sentinel_batch.waiting_task import (
    REQUEST_TEMPLATE_FIELDS,
    ReportsLineage,
    SentinelBatchTask,
    WaitsForBatch,
)

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context


class SentinelBatchBaseOperator(SentinelBatchTask):
    """Base of the operators: connection, API version, hook, and the dashboard/output extra links."""

    operator_extra_links = (SentinelBatchDashboardLink(), SentinelBatchOutputLink())
    ui_color = "#d9ead3"


# ---------------------------------------------------------------------------------------------- create
def idempotency_tag(context: Context) -> str:
    """Same value on every try and rerun of one task instance (dag, task, run, map index), different otherwise."""
    return identity.task_tag(context)


class SentinelBatchCreateOperator(ReportsLineage, SentinelBatchBaseOperator):
    """Create a batch request (v1, v2 or Batch Statistical) from a payload; retries and reruns re-attach instead
    of paying twice.

    A job belongs to a task instance (tag) *and* a payload (fingerprint of the credential-free payload), both in
    its ``description``: a retry or rerun with the same payload re-attaches to a live or DONE job, a changed
    payload gets a new job, and concurrent executions of one task instance converge on one job (see
    :mod:`airflow_provider_sentinel_batch.identity`). On Airflow 3.3+ the request is also kept in the task state
    store, so a retry usually needs one GET instead of a search.

    :param payload: the request body, a dict or a JSON string, or a ``.json`` template file.
    :param evalscript: optional evalscript (or ``.js`` template file) put into ``processRequest.evalscript``
        (Batch Statistical: ``aggregation.evalscript``).
    :param description: put before the identity label in the request's ``description``. Batch Statistical
        requests have no description: their identity is the payload alone (credentials aside), so a request with
        the same payload is re-attached to whichever task made it, and ``stop_superseded`` cannot find an older
        payload's request.
    :param bucket_conn_id: v2 and Batch Statistical: an Airflow connection (login = access key, password = secret
        key) whose keys are added at run time (v2: ``output.delivery.s3``; statistical: ``output.s3``,
        ``input.features.s3`` and ``aggregation.evalscriptReference.s3`` unless they carry keys), so they never
        sit in the DAG or in rendered templates.
    :param reuse_existing: look for this task instance's request before creating, and converge with concurrent
        executions after creating; ``False`` always creates a new job.
    :param stop_superseded: stop (v2) / cancel (v1) a still-running job of this task instance that was made from
        a different payload. Off by default: such a job is left running and named in the log.
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
        stop_superseded: bool = False,
        validate: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.payload = payload
        self.evalscript = evalscript
        self.description = description
        self.bucket_conn_id = bucket_conn_id
        self.reuse_existing = reuse_existing
        self.stop_superseded = stop_superseded
        self.validate = validate

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
        if self.version == "statistical":
            if self.evalscript:
                payload.setdefault("aggregation", {})["evalscript"] = self.evalscript
            if self.description is not None:
                self.log.info(
                    "Batch Statistical requests have no description: %r is not sent", self.description
                )
            return payload
        if self.evalscript:
            payload.setdefault("processRequest", {})["evalscript"] = self.evalscript
        base = self.description if self.description is not None else payload.get("description")
        if self.version == "v2" and base is None:
            base = (payload.get("processRequest") or {}).get("description")
        payload["description"] = identity.labelled_description(
            base, tag, identity.payload_fingerprint(payload)
        )
        return payload

    def _with_bucket_credentials(self, payload: dict[str, Any]) -> dict[str, Any]:
        if not self.bucket_conn_id:
            return payload
        if self.version not in ("v2", "statistical"):
            raise SentinelBatchConfigError("bucket_conn_id is for Batch v2 (v1 writes with a bucket policy).")
        from airflow.providers.common.compat.sdk import mask_secret

        conn = self.hook.get_connection(self.bucket_conn_id)
        if not conn.login or not conn.password:
            raise SentinelBatchConfigError(
                f"bucket connection {self.bucket_conn_id!r} needs the access key as login and secret key as password"
            )
        mask_secret(conn.password)
        sent = copy.deepcopy(payload)
        region = conn.extra_dejson.get("region_name") or conn.extra_dejson.get("region")
        if self.version == "statistical":
            # the results, the GeoPackage and a stored evalscript: every bucket location without its own keys
            places = [sent.setdefault("output", {}).setdefault("s3", {})]
            for parent in (
                (sent.get("input") or {}).get("features"),
                (sent.get("aggregation") or {}).get("evalscriptReference"),
            ):
                if isinstance(parent, dict) and isinstance(parent.get("s3"), dict):
                    places.append(parent["s3"])
            for s3 in places:
                if not s3.get("accessKey") and not s3.get("iamRoleARN"):
                    s3.update({"accessKey": conn.login, "secretAccessKey": conn.password})
            if region:
                places[0].setdefault("region", region)
            return sent
        s3 = sent.setdefault("output", {}).setdefault("delivery", {}).setdefault("s3", {})
        s3.update({"accessKey": conn.login, "secretAccessKey": conn.password})
        if region:
            s3.setdefault("region", region)
        return sent

    def _created_despite(self, exc: SentinelBatchError, jobs: identity.TaskJobs) -> dict[str, Any]:
        """After an ambiguous create failure (answer lost, 5xx), the job may exist: find it by its tag."""
        from airflow_provider_sentinel_batch.retry import retries_ran_out

        if not (self.reuse_existing and retries_ran_out(exc)):
            raise exc
        for pause in (0.0, 5.0, 15.0):  # the service's list lags its writes by a few seconds
            time.sleep(pause)
            decision = identity.decide(self.version, jobs.tagged(), jobs.fingerprint)
            if decision.job is not None and not decision.unverified:
                self.log.warning(
                    "Create failed ambiguously (%s) but the service had created request %s: using it",
                    exc,
                    decision.job.id,
                )
                return dict(decision.job.request)
        raise exc

    def execute(self, context: Context) -> str:
        """Re-attach to this task instance's request, or create it; returns the request id."""
        tag = idempotency_tag(context)
        payload = self._build_payload(tag)
        jobs = identity.TaskJobs(
            hook=self.hook,
            api_version=self.version,
            tag=tag,
            fingerprint=identity.fingerprint(self.version, payload),
            log=self.log,
        )
        if self.reuse_existing:
            existing = jobs.find(context, payload)
            if self.stop_superseded:
                jobs.stop_superseded()
            if existing is not None:
                request_id = str(existing["id"])
                if jobs.found_in != "store":
                    jobs.remember(context, request_id)
                self.record_request(context, request_id, existing)
                context["ti"].xcom_push(key="created_at", value=None)
                return request_id
        if self.validate:
            self.hook.validate_payload(payload)
        try:
            created = self.hook.create_request(self._with_bucket_credentials(payload), validate=False)
        except SentinelBatchError as exc:
            created = self._created_despite(exc, jobs)
        request_id = str(created["id"])
        # record before anything else can fail: a retry must be able to find this job
        jobs.remember(context, request_id)
        context["ti"].xcom_push(key="created_at", value=time.time())
        self.record_request(context, request_id, payload | {"id": request_id})
        self.log.info("Batch request %s created: %s", request_id, describe(self.version, created))
        if self.reuse_existing:
            used = jobs.converge(created)
            if str(used["id"]) != request_id:
                request_id = str(used["id"])
                jobs.remember(context, request_id)
                self.record_request(context, request_id, used)
        superseded = jobs.decision.superseded if jobs.decision else ()
        if superseded:
            self.log.warning(
                "Batch request %s supersedes %s (made from a different payload); %s",
                request_id,
                ", ".join(f"{j.id} ({j.status})" for j in superseded),
                "stop_superseded=True: the running ones were asked to stop"
                if self.stop_superseded
                else "left as they are (stop_superseded=True would stop the running ones)",
            )
        return request_id


# ---------------------------------------------------------------------------------------------- actions
class _RequestOperator(WaitsForBatch, SentinelBatchBaseOperator):
    """An operator on an existing request (by id) that can also wait for it (``wait_for_completion``)."""

    template_fields: Sequence[str] = REQUEST_TEMPLATE_FIELDS

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
        """Stop/cancel the job when a waiting task is killed (``cancel_on_kill``)."""
        if self.wait_for_completion:
            self._kill_remote(self.request_id)


class SentinelBatchAnalyseOperator(_RequestOperator):
    """Ask for analysis (free: tile list and, on v1, the PU estimate); optionally wait for ANALYSIS_DONE."""

    def execute(self, context: Context) -> Any:
        """Send ANALYSE unless analysis was asked or done; optionally wait for ANALYSIS_DONE."""
        request = self._read()
        status, action = request.get("status"), request.get("userAction")
        self.record_request(context, self.request_id, request)
        if status in FAILURE[self.version]:
            raise SentinelBatchJobError(failure_message(request), request_id=self.request_id)
        if status in CAN_ANALYSE and nobody_asked(action):
            self.hook.analyse(self.request_id)
        else:
            self.log.info(
                "Not sending ANALYSE: status %s, user action %s (analysis asked or done)", status, action
            )
        if self.wait_for_completion:
            return self.wait_for_status(context, self.request_id, Status.ANALYSIS_DONE)
        return self.request_id


class SentinelBatchStartOperator(ReportsLineage, _RequestOperator):
    """Start processing (this costs PU). Refuses on v1 when ``valueEstimate / 3`` exceeds ``max_cost_pu``."""

    def execute(self, context: Context) -> Any:
        """Send START unless started (cost guard first); optionally wait for DONE."""
        request = self._read()
        status, action = request.get("status"), request.get("userAction")
        self.record_request(context, self.request_id, request)
        if status in STARTED_OR_LATER or (status == Status.ANALYSING and action == UserAction.START):
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
            return self.wait_for_status(context, self.request_id, Status.DONE)
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
        """Cancel/stop an unfinished job; returns the status after."""
        request = self._read()
        self.record_request(context, self.request_id, request)  # its links (the UI looks them up)
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


class SentinelBatchStopOperator(SentinelBatchCancelOperator):
    """The same as :class:`SentinelBatchCancelOperator`, named after v2's STOP (and shown so in the UI)."""


class SentinelBatchRestartPartialOperator(_RequestOperator):
    """v1: re-run the failed tiles of a PARTIAL request, then wait until the status has left PARTIAL."""

    def __init__(self, *, api_version: str | None = "v1", **kwargs: Any) -> None:
        super().__init__(api_version=api_version, **kwargs)

    def execute(self, context: Context) -> Any:
        """Restart the failed tiles of a PARTIAL job; then wait for DONE or until it left PARTIAL."""
        if self.version != "v1":
            raise SentinelBatchConfigError(
                "restartpartial exists only in Batch v1 (v2 has no PARTIAL status)."
            )
        request = self._read()
        status = request.get("status")
        if status == Status.DONE:
            self.log.info("Batch request %s is DONE: nothing to restart", self.request_id)
            return summarize(self.version, request)
        if status != Status.PARTIAL:
            raise SentinelBatchJobError(
                f"Only requests with status PARTIAL can be restarted; {self.request_id} is {status}",
                request_id=self.request_id,
                status=str(status),
            )
        self.hook.restart_partial(self.request_id)
        if self.wait_for_completion:
            return self.wait_for_status(context, self.request_id, Status.DONE, stale_status=Status.PARTIAL)
        deadline = time.time() + self.stale_timeout
        while time.time() < deadline:
            status = self.hook.get_status(self.request_id)
            if status != Status.PARTIAL:
                self.log.info("Batch request %s left PARTIAL: now %s", self.request_id, status)
                return status
            time.sleep(min(self.analysis_poll_interval, max(0.0, deadline - time.time())))
        raise SentinelBatchJobError(
            f"Batch request {self.request_id} still shows PARTIAL {self.stale_timeout:g} s after restartpartial",
            request_id=self.request_id,
            status=Status.PARTIAL,
        )
