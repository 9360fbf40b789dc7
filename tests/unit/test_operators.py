"""Operators and sensor, unit level: status read first, idempotent create, cost guard, deferral, outcomes."""

from __future__ import annotations

import json

import pytest
from airflow.providers.common.compat.sdk import AirflowSensorTimeout, AirflowSkipException, TaskDeferred

from airflow_provider_sentinel_batch.exceptions import (
    SentinelBatchCostExceededError,
    SentinelBatchError,
    SentinelBatchJobError,
    SentinelBatchValidationError,
)
from airflow_provider_sentinel_batch.identity import payload_fingerprint
from airflow_provider_sentinel_batch.operators.batch import (
    SentinelBatchAnalyseOperator,
    SentinelBatchCancelOperator,
    SentinelBatchCreateOperator,
    SentinelBatchRestartPartialOperator,
    SentinelBatchStartOperator,
    idempotency_tag,
)
from airflow_provider_sentinel_batch.sensors.batch import SentinelBatchSensor
from airflow_provider_sentinel_batch.triggers.batch import SentinelBatchTrigger
from tests.fakes import FakeTI
from tests.payloads import corsica_v1

from .conftest import BASE, GRIDS

RID = "4f1d2c3b-aaaa-4bbb-8ccc-000000000042"
V1 = f"{BASE}/api/v1/batch"
V2 = f"{BASE}/api/v2/batch"


def ctx(task_id="create", map_index=-1):
    ti = FakeTI(task_id, map_index)
    return {"ti": ti, "run_id": ti.run_id}


@pytest.fixture
def v1(conn_env, token_mock, requests_mock):
    requests_mock.get(f"{V1}/tilinggrids", json=GRIDS)
    return requests_mock


def request_body(**fields):
    return {"id": RID, "status": "CREATED", "userAction": "NONE", "tileCount": 72, **fields}


def service(mock, url, answer, earlier=()):
    """POST and list routes that behave like the service: a created request is listed (with the description
    it was created with) next to ``earlier`` ones, so the operator's check for concurrent executions sees it."""
    listed = list(earlier)

    def create(request, context):
        sent = request.json()
        body = dict(answer)
        if "request" in body:  # v2 keeps the payload under "request"
            body["request"] = {**body["request"], "description": sent["description"]}
        else:
            body["description"] = sent["description"]
        listed.append(body)
        return body

    return (
        mock.post(url, status_code=201, json=create),
        mock.get(url, json=lambda request, context: {"data": list(listed), "links": {}}),
    )


# ------------------------------------------------------------------------------------------------ create
def test_create_tags_pushes_and_returns_id(v1):
    create, listing = service(v1, f"{V1}/process", request_body())
    context = ctx()
    op = SentinelBatchCreateOperator(task_id="create", payload=corsica_v1("bucket"), api_version="v1")
    assert op.execute(context) == RID
    sent = create.last_request.json()
    tag = idempotency_tag(context)
    fingerprint = payload_fingerprint(corsica_v1("bucket"))
    assert sent["description"] == f"Max NDVI over Corsica [{tag} payload-{fingerprint}]"
    assert listing.call_count == 2  # the search before, the concurrency check after
    assert sent["processRequest"] == corsica_v1("bucket")["processRequest"]
    xcoms = context["ti"].xcoms
    assert xcoms["request_id"] == RID and isinstance(xcoms["created_at"], float)
    # a page a browser opens (the UI drops s3:// links): the bucket prefix in the AWS S3 console
    assert xcoms["sentinel_batch_links"]["output"] == (
        f"https://s3.console.aws.amazon.com/s3/buckets/bucket?prefix={RID}%2F"
    )
    assert xcoms["sentinel_batch_links"]["dashboard"].endswith(f"/{RID}")


def test_create_reattaches_on_retry_instead_of_paying_twice(v1):
    context = ctx()
    tag = idempotency_tag(context)
    search = v1.get(
        f"{V1}/process",
        json={
            "data": [
                request_body(description=f"Max NDVI over Corsica [{tag}]", status="PROCESSING"),
            ],
            "links": {},
        },
    )
    create = v1.post(f"{V1}/process", status_code=201, json=request_body())
    op = SentinelBatchCreateOperator(task_id="create", payload=corsica_v1("bucket"), api_version="v1")
    assert op.execute(context) == RID
    assert create.call_count == 0
    assert search.last_request.qs["search"] == [tag]


def test_create_does_not_reuse_a_failed_job(v1):
    context = ctx()
    tag = idempotency_tag(context)
    old = request_body(id="old", description=f"x [{tag}]", status="FAILED")
    create, _ = service(v1, f"{V1}/process", request_body(), earlier=[old])
    assert (
        SentinelBatchCreateOperator(task_id="create", payload=corsica_v1(), api_version="v1").execute(context)
        == RID
    )
    assert create.call_count == 1


def test_tag_differs_per_map_index_and_task():
    assert idempotency_tag(ctx(map_index=0)) != idempotency_tag(ctx(map_index=1))
    assert idempotency_tag(ctx("a")) != idempotency_tag(ctx("b"))
    assert idempotency_tag(ctx()) == idempotency_tag(ctx())


def test_create_rejects_bad_payload_before_any_paid_call(v1):
    v1.get(f"{V1}/process", json={"data": [], "links": {}})
    create = v1.post(f"{V1}/process", status_code=201, json=request_body())
    payload = corsica_v1()
    payload["tilingGrid"]["resolution"] = 15.0
    with pytest.raises(SentinelBatchValidationError, match=r"resolution 15\.0 is not offered"):
        SentinelBatchCreateOperator(task_id="create", payload=payload, api_version="v1").execute(ctx())
    assert create.call_count == 0


def test_create_from_json_string_and_evalscript(v1):
    create, _ = service(v1, f"{V1}/process", request_body())
    payload = corsica_v1()
    del payload["processRequest"]["evalscript"]
    op = SentinelBatchCreateOperator(
        task_id="create",
        payload=json.dumps(payload),
        evalscript="//VERSION=3\n...",
        description="Season 2019",
        api_version="v1",
    )
    op.execute(ctx())
    sent = create.last_request.json()
    assert sent["processRequest"]["evalscript"] == "//VERSION=3\n..."
    assert sent["description"].startswith("Season 2019 [airflow-")


def test_v2_bucket_credentials_come_from_a_connection(conn_env, token_mock, requests_mock, monkeypatch):
    conn_env(api_version="v2")
    monkeypatch.setenv(
        "AIRFLOW_CONN_RESULTS_BUCKET",
        json.dumps({"conn_type": "aws", "login": "AKIAEXAMPLE", "password": "bucket-secret-42"}),
    )
    requests_mock.get(f"{V2}/tilinggrids", json=GRIDS)
    create, _ = service(requests_mock, f"{V2}/process", {"id": RID, "status": "CREATED", "request": {}})
    payload = corsica_v1()
    del payload["tilingGrid"], payload["bucketName"]
    payload["input"] = {"type": "tiling-grid", "id": 0, "resolution": 60.0}
    payload["output"] = {"type": "raster", "delivery": {"s3": {"url": "s3://bucket/corsica"}}}
    op = SentinelBatchCreateOperator(task_id="create", payload=payload, bucket_conn_id="results_bucket")
    context = ctx()
    op.execute(context)
    assert create.last_request.json()["output"]["delivery"]["s3"] == {
        "url": "s3://bucket/corsica",
        "accessKey": "AKIAEXAMPLE",
        "secretAccessKey": "bucket-secret-42",
    }
    assert "bucket-secret-42" not in json.dumps(op.payload)  # the templated field stays key-free
    assert "bucket-secret-42" not in json.dumps(context["ti"].xcoms)


# ------------------------------------------------------------------------------------------------ actions
def test_analyse_only_when_created(v1):
    v1.get(
        f"{V1}/process/{RID}",
        [{"json": request_body()}, {"json": request_body(status="ANALYSING", userAction="ANALYSE")}],
    )
    analyse = v1.post(f"{V1}/process/{RID}/analyse", status_code=204)
    op = SentinelBatchAnalyseOperator(task_id="analyse", request_id=RID)
    assert op.execute(ctx("analyse")) == RID
    op.execute(ctx("analyse"))  # a retry: already analysing, no second ANALYSE
    assert analyse.call_count == 1


def test_start_reads_status_and_guards_cost(v1):
    v1.get(f"{V1}/process/{RID}", json=request_body(status="ANALYSIS_DONE", valueEstimate=3000.0))
    start = v1.post(f"{V1}/process/{RID}/start", status_code=204)
    with pytest.raises(
        SentinelBatchCostExceededError,
        match=r"valueEstimate 3000 PU means about 1000.0 PU charged .* max_cost_pu=500",
    ):
        SentinelBatchStartOperator(task_id="start", request_id=RID, max_cost_pu=500).execute(ctx("start"))
    assert start.call_count == 0
    SentinelBatchStartOperator(task_id="start", request_id=RID, max_cost_pu=1500).execute(ctx("start"))
    assert start.call_count == 1


def test_start_cost_guard_needs_an_estimate(v1):
    v1.get(f"{V1}/process/{RID}", json=request_body())
    with pytest.raises(SentinelBatchCostExceededError, match="run the analysis first"):
        SentinelBatchStartOperator(task_id="start", request_id=RID, max_cost_pu=10).execute(ctx("start"))


def test_start_is_not_sent_twice(v1):
    v1.get(f"{V1}/process/{RID}", json=request_body(status="PROCESSING", userAction="START"))
    start = v1.post(f"{V1}/process/{RID}/start", status_code=204)
    SentinelBatchStartOperator(task_id="start", request_id=RID).execute(ctx("start"))
    assert start.call_count == 0


def test_start_refuses_a_failed_job(v1):
    v1.get(f"{V1}/process/{RID}", json=request_body(status="FAILED", error="No data"))
    with pytest.raises(SentinelBatchJobError, match="cannot be started from status FAILED: No data"):
        SentinelBatchStartOperator(task_id="start", request_id=RID).execute(ctx("start"))


def test_cancel_accepts_terminal_jobs(v1):
    v1.get(f"{V1}/process/{RID}", json=request_body(status="DONE"))
    cancel = v1.post(f"{V1}/process/{RID}/cancel", status_code=204)
    assert SentinelBatchCancelOperator(task_id="cancel", request_id=RID).execute(ctx()) == "DONE"
    assert cancel.call_count == 0


def test_cancel_v2_stops(conn_env, token_mock, requests_mock):
    conn_env(api_version="v2")
    requests_mock.get(
        f"{V2}/process/{RID}",
        [{"json": {"id": RID, "status": "PROCESSING"}}, {"json": {"id": RID, "status": "STOPPED"}}],
    )
    stop = requests_mock.post(f"{V2}/process/{RID}/stop", status_code=204)
    assert SentinelBatchCancelOperator(task_id="cancel", request_id=RID).execute(ctx()) == "STOPPED"
    assert stop.call_count == 1


def test_restart_partial_only_from_partial(v1):
    v1.get(
        f"{V1}/process/{RID}",
        [
            {"json": request_body(status="PARTIAL")},
            {"json": request_body(status="PARTIAL")},
            {"json": request_body(status="PROCESSING")},
        ],
    )
    restart = v1.post(f"{V1}/process/{RID}/restartpartial", status_code=204)
    op = SentinelBatchRestartPartialOperator(task_id="restart", request_id=RID, analysis_poll_interval=0.01)
    assert op.execute(ctx()) == "PROCESSING"
    assert restart.call_count == 1
    v1.get(f"{V1}/process/{RID}", json=request_body(status="FAILED"))
    with pytest.raises(SentinelBatchJobError, match="Only requests with status PARTIAL can be restarted"):
        op.execute(ctx())


# ------------------------------------------------------------------------------------------------ waiting
def test_start_and_wait_defers_with_primitive_trigger(v1):
    v1.get(
        f"{V1}/process/{RID}",
        [
            {"json": request_body(status="ANALYSIS_DONE", valueEstimate=30.0)},
            {"json": request_body(status="PROCESSING", userAction="START")},
        ],
    )
    v1.post(f"{V1}/process/{RID}/start", status_code=204)
    op = SentinelBatchStartOperator(
        task_id="start",
        request_id=RID,
        wait_for_completion=True,
        deferrable=True,
        wait_timeout=3600,
        cancel_on_timeout=True,
        created_at="1700000000.5",
    )
    with pytest.raises(TaskDeferred) as exc:
        op.execute(ctx("start"))
    trigger = exc.value.trigger
    assert isinstance(trigger, SentinelBatchTrigger)
    kwargs = trigger.serialize()[1]
    assert kwargs["request_id"] == RID and kwargs["api_version"] == "v1" and kwargs["wait_for"] == "DONE"
    assert kwargs["cancel_on_timeout"] is True and kwargs["created_at"] == 1700000000.5
    assert exc.value.method_name == "execute_complete"
    assert kwargs["deadline"] is not None


def test_already_done_does_not_defer(v1):
    v1.get(f"{V1}/process/{RID}", json=request_body(status="DONE", valueEstimate=30.0))
    v1.get(f"{V1}/process/{RID}/tiles", json={"data": [{"id": 1, "status": "PROCESSED"}], "links": {}})
    sensor = SentinelBatchSensor(task_id="wait", request_id=RID, deferrable=True)
    summary = sensor.execute(ctx("wait"))
    assert summary["status"] == "DONE" and summary["tiles"] == {"PROCESSED": 1} and summary["cost_pu"] == 10.0


@pytest.mark.parametrize(
    ("event", "error", "match"),
    [
        ({"outcome": "failed", "message": "ended FAILED: boom"}, SentinelBatchJobError, "boom"),
        (
            {"outcome": "not_started", "message": "nobody started this job"},
            SentinelBatchJobError,
            "nobody started",
        ),
        (
            {"outcome": "cost_exceeded", "message": "over max_cost_pu"},
            SentinelBatchCostExceededError,
            "max_cost_pu",
        ),
        (
            {"outcome": "error", "message": "5 consecutive status checks failed"},
            SentinelBatchError,
            "consecutive",
        ),
        ({"outcome": "timeout", "message": "deadline"}, AirflowSensorTimeout, "deadline"),
    ],
)
def test_sensor_execute_complete_raises(v1, event, error, match):
    sensor = SentinelBatchSensor(task_id="wait", request_id=RID, deferrable=True)
    with pytest.raises(error, match=match):
        sensor.execute_complete(ctx("wait"), {"request_id": RID, **event})


def test_soft_fail_skips_only_timeouts(v1):
    sensor = SentinelBatchSensor(task_id="wait", request_id=RID, deferrable=True, soft_fail=True)
    with pytest.raises(AirflowSkipException):
        sensor.execute_complete(ctx("wait"), {"request_id": RID, "outcome": "timeout", "message": "late"})
    with pytest.raises(SentinelBatchJobError):
        sensor.execute_complete(ctx("wait"), {"request_id": RID, "outcome": "failed", "message": "FAILED"})


def test_partial_policies(v1):
    v1.get(
        f"{V1}/process/{RID}/tiles",
        json={"data": [{"id": 7, "name": "32TNN_1", "status": "FAILED"}], "links": {}},
    )
    event = {
        "request_id": RID,
        "outcome": "partial",
        "message": "ended PARTIAL",
        "summary": {"status": "PARTIAL"},
    }
    with pytest.raises(SentinelBatchJobError, match="1 failed tiles: 32TNN_1"):
        SentinelBatchSensor(task_id="w", request_id=RID).execute_complete(ctx(), event)
    summary = SentinelBatchSensor(
        task_id="w", request_id=RID, partial_policy="succeed_with_warning"
    ).execute_complete(ctx(), event)
    assert summary["partial"] is True
    restart = v1.post(f"{V1}/process/{RID}/restartpartial", status_code=204)
    v1.get(f"{V1}/process/{RID}", json=request_body(status="PARTIAL"))  # stale right after the restart
    sensor = SentinelBatchSensor(task_id="w", request_id=RID, partial_policy="restart", deferrable=True)
    with pytest.raises(TaskDeferred) as exc:
        sensor.execute_complete(ctx(), event)
    assert restart.call_count == 1
    kwargs = exc.value.trigger.serialize()[1]
    assert kwargs["stale_status"] == "PARTIAL" and exc.value.kwargs["restarts"] == 1
    with pytest.raises(SentinelBatchJobError):  # restarts exhausted
        sensor.execute_complete(ctx(), event, restarts=1)


def test_poke_mode_without_triggerer(v1):
    v1.get(
        f"{V1}/process/{RID}",
        [
            {"json": request_body(status="PROCESSING", userAction="START")},
            {"json": request_body(status="DONE")},
        ],
    )
    v1.get(f"{V1}/process/{RID}/tiles", json={"data": [], "links": {}})
    sensor = SentinelBatchSensor(task_id="wait", request_id=RID, deferrable=False)
    assert sensor.poke(ctx()) is False
    result = sensor.poke(ctx())
    assert result.is_done and result.xcom_value["status"] == "DONE"


def test_on_kill_cancels_remote_job(v1):
    cancel = v1.post(f"{V1}/process/{RID}/cancel", status_code=204)
    SentinelBatchSensor(task_id="wait", request_id=RID).on_kill()
    assert cancel.call_count == 1
    SentinelBatchSensor(task_id="wait", request_id=RID, cancel_on_kill=False).on_kill()
    assert cancel.call_count == 1


def test_bad_arguments_fail_at_parse_time():
    with pytest.raises(ValueError, match="partial_policy must be one of"):
        SentinelBatchSensor(task_id="w", request_id=RID, partial_policy="retry")


def test_final_outcomes_do_not_retry_but_a_broken_wait_does(v1):
    from airflow.providers.common.compat.sdk import AirflowFailException

    sensor = SentinelBatchSensor(task_id="wait", request_id=RID, deferrable=True)
    with pytest.raises(AirflowFailException):  # FAILED job: retrying the wait cannot change it
        sensor.execute_complete(ctx("wait"), {"request_id": RID, "outcome": "failed", "message": "FAILED"})
    with pytest.raises(SentinelBatchError) as exc:  # service unreachable for too long: a retry may succeed
        sensor.execute_complete(
            ctx("wait"), {"request_id": RID, "outcome": "error", "message": "unreachable"}
        )
    assert not isinstance(exc.value, AirflowFailException)


def test_wait_arguments_work_with_partial_and_expand():
    from datetime import datetime

    from airflow.providers.common.compat.sdk import DAG

    with DAG("mapped", schedule=None, start_date=datetime(2024, 1, 1)):
        SentinelBatchStartOperator.partial(
            task_id="start",
            wait_for_completion=True,
            deferrable=True,
            poll_interval=5,
            max_cost_pu=100,
            created_at="1",
            partial_policy="restart",
            max_failed_fraction=0.1,
        ).expand(request_id=["a", "b"])
        SentinelBatchSensor.partial(
            task_id="wait", wait_for="DONE", poll_interval=5, cancel_on_timeout=True
        ).expand(request_id=["a", "b"])


def test_templated_cost_budget_is_a_number(v1):
    v1.get(f"{V1}/process/{RID}", json=request_body(status="ANALYSIS_DONE", valueEstimate=3000.0))
    op = SentinelBatchStartOperator(task_id="start", request_id=RID, max_cost_pu="500")
    assert "max_cost_pu" in op.template_fields
    with pytest.raises(SentinelBatchCostExceededError, match="over max_cost_pu=500"):
        op.execute(ctx("start"))


def test_cancel_without_a_request_id_skips(v1):
    with pytest.raises(AirflowSkipException, match="nothing to do"):
        SentinelBatchCancelOperator(task_id="cancel", request_id="None").execute(ctx())


def test_sensor_pushes_its_links(v1):
    v1.get(f"{V1}/process/{RID}", json=request_body(status="PROCESSING", userAction="START"))
    context = ctx("wait")
    assert SentinelBatchSensor(task_id="wait", request_id=RID, deferrable=False).poke(context) is False
    assert context["ti"].xcoms["sentinel_batch_links"]["dashboard"].endswith(RID)
