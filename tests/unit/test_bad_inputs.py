"""Bad inputs: each mistake ends in one specific error whose full text is asserted here.

Local checks (``validation.py``) run before any call that could cost processing units; what only the service
knows (data collection types, its own validation) comes back verbatim through the hook's error. The table in
``docs/reliability.md`` lists every row with the test that covers it (some rows point at existing tests in
``test_validation.py``, ``test_hook.py`` and ``test_trigger.py``).
"""

from __future__ import annotations

import copy
import json
import logging
from functools import partial

import httpx
import pytest
import requests
import respx

from airflow_provider_sentinel_batch.exceptions import (
    SentinelBatchAPIError,
    SentinelBatchAuthError,
    SentinelBatchConfigError,
    SentinelBatchError,
    SentinelBatchValidationError,
)
from airflow_provider_sentinel_batch.hooks.sentinel_batch import SentinelBatchHook
from airflow_provider_sentinel_batch.operators.batch import SentinelBatchCreateOperator
from airflow_provider_sentinel_batch.sensors.batch import SentinelBatchSensor
from airflow_provider_sentinel_batch.triggers.batch import SentinelBatchTrigger
from airflow_provider_sentinel_batch.validation import MIGRATION, validate_payload
from airflow_provider_sentinel_batch.waiting import describe, judge
from tests.payloads import corsica_v1, corsica_v2

from .conftest import BASE, TOKEN_URL

RID = "7d3c2b1a-0000-4000-8000-00000000bad1"
V1 = f"{BASE}/api/v1/batch"
V2 = f"{BASE}/api/v2/batch"
CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
EMULATOR_GRIDS = "0, 1, 2, 3, 6, 7"


v1_payload = partial(corsica_v1, "corsica-bucket")
v2_payload = partial(corsica_v2, "s3://corsica-bucket/v2", data_type="sentinel-2-l2a")


PAYLOADS = {"v1": v1_payload, "v2": v2_payload}


def changed(version: str, path: str, value: object) -> dict:
    """The Corsica payload of ``version`` with ``path`` (dotted) set to ``value``, or removed for ``KeyError``."""
    payload = copy.deepcopy(PAYLOADS[version]())
    *parents, last = path.split(".")
    node = payload
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return payload


def invalid(version: str, *problems: str) -> str:
    """The full text of a local validation error."""
    head = f"The Batch {version} request payload is not valid (nothing was sent):"
    return head + "".join(f"\n  - {p}" for p in problems)


def local_error(payload: dict, version: str, grids: list | None = None) -> str:
    with pytest.raises(SentinelBatchValidationError) as exc:
        validate_payload(payload, version, grids=grids)
    return str(exc.value)


# ---------------------------------------------------------------------------------- local validation
LOCAL = [
    (
        "bbox min > max",
        "processRequest.input.bounds.bbox",
        [9.66, 41.31, 8.44, 43.1],
        "processRequest.input.bounds.bbox [9.66, 41.31, 8.44, 43.1] has min >= max; order is [minX, minY, maxX, maxY]",
    ),
    (
        "bbox out of range (lon)",
        "processRequest.input.bounds.bbox",
        [8.44, 41.31, 190.0, 43.1],
        "processRequest.input.bounds.bbox [8.44, 41.31, 190.0, 43.1] is outside lon -180..180 / lat -90..90 (CRS84)",
    ),
    (
        "bbox out of range (lat)",
        "processRequest.input.bounds.bbox",
        [8.44, -95.0, 9.66, 43.1],
        "processRequest.input.bounds.bbox [8.44, -95.0, 9.66, 43.1] is outside lon -180..180 / lat -90..90 (CRS84)",
    ),
    (
        "unknown CRS",
        "processRequest.input.bounds.properties.crs",
        "EPSG:4326",
        "processRequest.input.bounds.properties.crs 'EPSG:4326' is not a CRS Sentinel Hub accepts; use "
        f"'{CRS84}' or 'http://www.opengis.net/def/crs/EPSG/0/<code>'",
    ),
    (
        "missing evalscript",
        "processRequest.evalscript",
        KeyError,
        "processRequest.evalscript is missing or empty",
    ),
    (
        "blank evalscript",
        "processRequest.evalscript",
        "\n  ",
        "processRequest.evalscript is missing or empty",
    ),
    (
        "empty data list",
        "processRequest.input.data",
        [],
        "processRequest.input.data must list at least one data collection",
    ),
]


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize(("case", "path", "value", "problem"), LOCAL, ids=[row[0] for row in LOCAL])
def test_local_validation_exact_text(version, case, path, value, problem):
    assert local_error(changed(version, path, value), version) == invalid(version, problem)


def test_zarr_output_on_a_utm_grid():
    v1 = v1_payload()
    del v1["bucketName"]
    v1["zarrOutput"] = {"path": "s3://corsica-bucket/zarr/<requestId>"}
    assert local_error(v1, "v1") == invalid(
        "v1", "zarrOutput needs a WGS84 or LAEA grid (3, 6 or 7), not grid 0 (UTM)"
    )
    v2 = changed("v2", "output.type", "zarr")
    assert local_error(v2, "v2") == invalid(
        "v2", "zarr output needs a WGS84 or LAEA grid (3, 6 or 7), not grid 0 (UTM)"
    )


def test_v1_fields_in_a_v2_payload_and_the_reverse():
    v2_with_v1_fields = v2_payload() | {"tilingGrid": {"id": 0, "resolution": 60.0}, "bucketName": "b"}
    assert local_error(v2_with_v1_fields, "v2") == invalid(
        "v2",
        "tilingGrid, bucketName belong to Batch v1; in v2 use input={'type': 'tiling-grid', 'id', 'resolution'} "
        "and output={'type': 'raster', 'delivery': {'s3': {'url': ...}}}, or set api_version='v1'. "
        f"See {MIGRATION}",
    )
    v1_with_v2_fields = v1_payload() | {"input": {"type": "tiling-grid", "id": 0, "resolution": 60.0}}
    assert local_error(v1_with_v2_fields, "v1") == invalid(
        "v1",
        "input belong to Batch v2; this is a v1 request (use tilingGrid and bucketName or output.defaultTilePath), "
        f"or set api_version='v2'. See {MIGRATION}",
    )


def test_missing_bucket_or_delivery():
    assert local_error(changed("v1", "bucketName", KeyError), "v1") == invalid(
        "v1", "no output location: set 'bucketName', 'output.defaultTilePath' or 'zarrOutput'"
    )
    assert local_error(changed("v2", "output.delivery", KeyError), "v2") == invalid(
        "v2", "output.delivery.s3.url is missing: the bucket/prefix the results go to"
    )


# ----------------------------------------------------------------------------------------- time range
TIME_RANGE = "processRequest.input.data.0.dataFilter.timeRange"
WHERE = "processRequest.input.data[0].dataFilter.timeRange"
TIME_RANGES = [
    (
        "from after to",
        {"from": "2019-06-30T00:00:00Z", "to": "2019-04-01T00:00:00Z"},
        [f"{WHERE}.from '2019-06-30T00:00:00Z' is not before to '2019-04-01T00:00:00Z'"],
    ),
    (
        "empty range",
        {"from": "2019-04-01T00:00:00Z", "to": "2019-04-01T00:00:00+00:00"},
        [f"{WHERE}.from '2019-04-01T00:00:00Z' is not before to '2019-04-01T00:00:00+00:00'"],
    ),
    (
        "not ISO 8601",
        {"from": "01/04/2019", "to": "2019-13-30T00:00:00Z"},
        [
            f"{WHERE}.from '01/04/2019' is not an ISO 8601 date-time (e.g. '2019-04-01T00:00:00Z')",
            f"{WHERE}.to '2019-13-30T00:00:00Z' is not an ISO 8601 date-time (e.g. '2019-04-01T00:00:00Z')",
        ],
    ),
    (
        "unrendered template",
        {"from": "{{ data_interval_start | ts }}", "to": "2019-06-30T00:00:00Z"},
        [
            f"{WHERE}.from '{{{{ data_interval_start | ts }}}}' is not an ISO 8601 date-time "
            "(e.g. '2019-04-01T00:00:00Z') (an unrendered template?)"
        ],
    ),
    (
        "time zone on one side only",
        {"from": "2019-04-01T00:00:00", "to": "2019-06-30T00:00:00Z"},
        [f"{WHERE}: 'from' and 'to' must both have a time zone (e.g. 'Z') or both lack one"],
    ),
    ("missing end", {"from": "2019-04-01T00:00:00Z"}, [f"{WHERE}.to is missing"]),
    (
        "not an object",
        "2019-04-01/2019-06-30",
        [f"{WHERE} must be {{'from': <ISO 8601 date-time>, 'to': <ISO 8601 date-time>}}"],
    ),
]


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize(("case", "time_range", "problems"), TIME_RANGES, ids=[r[0] for r in TIME_RANGES])
def test_invalid_time_range(version, case, time_range, problems):
    assert local_error(changed(version, TIME_RANGE, time_range), version) == invalid(version, *problems)


def test_valid_time_ranges_pass():
    for time_range in (
        {"from": "2019-04-01T00:00:00Z", "to": "2019-06-30T00:00:00Z"},
        {"from": "2019-04-01T00:00:00+00:00", "to": "2019-04-01T00:00:01+00:00"},  # Airflow's "| ts"
        {"from": "2019-04-01", "to": "2019-06-30"},
    ):
        validate_payload(changed("v2", TIME_RANGE, time_range), "v2")


def test_templated_time_range_is_checked_after_rendering(sentinel_batch_emulator, monkeypatch):
    """The create operator renders the payload, then validates: a bad range fails before any request exists."""
    monkeypatch.setenv("AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT", sentinel_batch_emulator.airflow_conn_json("v2"))
    payload = changed("v2", TIME_RANGE, {"from": "{{ params.start }}", "to": "{{ params.end }}"})
    op = SentinelBatchCreateOperator(task_id="create", payload=payload, api_version="v2")
    params = {"start": "2019-06-30T00:00:00Z", "end": "2019-04-01T00:00:00Z"}
    op.payload = op.render_template(op.payload, {"params": params})
    with pytest.raises(SentinelBatchValidationError) as exc:
        op.execute(context())
    assert str(exc.value) == invalid(
        "v2", f"{WHERE}.from '2019-06-30T00:00:00Z' is not before to '2019-04-01T00:00:00Z'"
    )
    assert sentinel_batch_emulator.stats()["jobs_created"] == 0


# ----------------------------------------------------------------------- what only the service knows
@pytest.fixture
def emulator_hook(sentinel_batch_emulator, monkeypatch):
    def make(version: str) -> SentinelBatchHook:
        monkeypatch.setenv(
            "AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT", sentinel_batch_emulator.airflow_conn_json(version)
        )
        return SentinelBatchHook()

    return make


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_unknown_data_type_comes_back_verbatim_from_the_service(
    sentinel_batch_emulator, emulator_hook, version
):
    server = sentinel_batch_emulator
    payload = changed(version, "processRequest.input.data.0.type", "sentinel-2-l9z")
    validate_payload(payload, version)  # local validation does not know the data types
    direct = requests.post(
        f"{server.base_url}/api/{version}/batch/process",
        json=payload,
        headers={"Authorization": f"Bearer {server.access_token()}"},
        timeout=10,
    ).json()["error"]
    with pytest.raises(SentinelBatchAPIError) as exc:
        emulator_hook(version).create_request(payload)
    err = exc.value
    violation = (
        "unknown data collection type 'sentinel-2-l9z'; use e.g. sentinel-2-l2a, sentinel-2-l1c, sentinel-1-grd, "
        "landsat-ot-l2, dem or byoc-<collection id>"
    )
    param = "processRequest->input->data[0]->type"
    assert str(err) == (
        f"Sentinel Hub Batch API POST {server.base_url}/api/{version}/batch/process failed: HTTP 400 "
        f"COMMON_BAD_PAYLOAD: Invalid request payload: {param}: {violation}\n  - {param}: {violation}"
    )
    assert (err.status, err.code, err.message, err.errors) == (
        400,
        direct["code"],
        direct["message"],
        direct["errors"],
    )
    assert server.stats()["calls"][f"POST /api/{version}/batch/process"] == 2  # ours once (no retry) + direct
    assert server.stats()["jobs_created"] == 0


@pytest.mark.parametrize(("version", "key"), [("v1", "tilingGrid"), ("v2", "input")], ids=["v1", "v2"])
def test_grid_id_and_resolution_checked_against_the_deployment(
    sentinel_batch_emulator, emulator_hook, version, key
):
    hook = emulator_hook(version)
    missing_grid = changed(version, f"{key}.id", 42)
    with pytest.raises(SentinelBatchValidationError) as exc:
        hook.create_request(missing_grid)
    assert str(exc.value) == invalid(
        version, f"{key}.id 42 is not a tiling grid of this deployment (known: {EMULATOR_GRIDS})"
    )
    with pytest.raises(SentinelBatchValidationError) as exc:
        hook.create_request(changed(version, f"{key}.resolution", 25.0))
    assert str(exc.value) == invalid(
        version,
        f"{key}.resolution 25.0 is not offered by '20km grid' (id 0); choose one of 10.0, 20.0, 30.0, 60.0",
    )
    stats = sentinel_batch_emulator.stats()
    assert stats["calls"] == {
        f"GET /api/{version}/batch/tilinggrids": 1,  # grids read once (cached), nothing created
        "POST /auth/realms/main/protocol/openid-connect/token": 1,
    }
    # without local validation the service refuses too, in its own words
    with pytest.raises(SentinelBatchAPIError) as exc:
        hook.create_request(missing_grid, validate=False)
    param = f"{key}->id"
    violation = f"unknown tiling grid 42; available: {EMULATOR_GRIDS}"
    assert str(exc.value) == (
        f"Sentinel Hub Batch API POST {sentinel_batch_emulator.base_url}/api/{version}/batch/process failed: "
        f"HTTP 400 COMMON_BAD_PAYLOAD: Invalid request payload: {param}: {violation}\n  - {param}: {violation}"
    )


# --------------------------------------------------------------------------------- bucket credentials
class _TI:
    dag_id, task_id, run_id, map_index, try_number = "bad_inputs", "create", "manual__1", -1, 1

    def __init__(self) -> None:
        self.xcoms: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.xcoms[key] = value


def context() -> dict:
    ti = _TI()
    return {"ti": ti, "run_id": ti.run_id}


def test_bucket_connection_without_keys(sentinel_batch_emulator, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT", sentinel_batch_emulator.airflow_conn_json("v2"))
    monkeypatch.setenv("AIRFLOW_CONN_BUCKET", json.dumps({"conn_type": "aws", "login": "AKIAONLY"}))
    op = SentinelBatchCreateOperator(
        task_id="create", payload=v2_payload(), api_version="v2", bucket_conn_id="bucket"
    )
    with pytest.raises(SentinelBatchConfigError) as exc:
        op.execute(context())
    assert str(exc.value) == (
        "bucket connection 'bucket' needs the access key as login and secret key as password"
    )
    v1 = SentinelBatchCreateOperator(
        task_id="create", payload=v1_payload(), api_version="v1", bucket_conn_id="bucket"
    )
    with pytest.raises(SentinelBatchConfigError) as exc:
        v1.execute(context())
    assert str(exc.value) == "bucket_conn_id is for Batch v2 (v1 writes with a bucket policy)."
    assert sentinel_batch_emulator.stats()["jobs_created"] == 0


# ------------------------------------------------------------------------------- odd response bodies
def test_html_instead_of_json(hook, requests_mock):
    requests_mock.get(f"{V1}/process/{RID}", text="<html>proxy login</html>")
    with pytest.raises(SentinelBatchAPIError) as exc:
        hook.get_request(RID)
    assert str(exc.value) == (
        f"Sentinel Hub Batch API GET {V1}/process/{RID} failed: HTTP 200 NON_JSON_RESPONSE: expected a JSON body, "
        "got: '<html>proxy login</html>'"
    )


def test_gateway_error_page_is_retried_then_quoted(hook, requests_mock):
    route = requests_mock.get(
        f"{V1}/process/{RID}",
        status_code=502,
        text="<html><body>502 Bad Gateway</body></html>",
        reason="Bad Gateway",
    )
    with pytest.raises(SentinelBatchAPIError) as exc:
        hook.get_request(RID)
    assert str(exc.value) == (
        f"Sentinel Hub Batch API GET {V1}/process/{RID} failed: HTTP 502: <html><body>502 Bad Gateway</body></html>"
    )
    assert route.call_count == hook.retry_policy.max_attempts


def test_empty_error_body_uses_the_reason_phrase(hook, requests_mock):
    requests_mock.post(f"{V1}/process/{RID}/start", status_code=400, text="", reason="Bad Request")
    with pytest.raises(SentinelBatchAPIError) as exc:
        hook.start(RID)
    assert (
        str(exc.value)
        == f"Sentinel Hub Batch API POST {V1}/process/{RID}/start failed: HTTP 400: Bad Request"
    )


def test_create_answered_without_a_body(hook, requests_mock):
    requests_mock.post(f"{V1}/process", status_code=201, text="")
    with pytest.raises(SentinelBatchError) as exc:
        hook.create_request(v1_payload(), validate=False)
    assert str(exc.value) == "Create answered without a request id: None"


def test_list_page_that_is_not_a_page(hook, requests_mock):
    requests_mock.get(f"{V1}/process", text="[]")
    with pytest.raises(SentinelBatchAPIError) as exc:
        hook.list_requests()
    assert str(exc.value) == (
        f"Sentinel Hub Batch API GET {V1}/process failed: HTTP 200: expected a list page {{'data': [...]}}, got []"
    )


@pytest.mark.parametrize("body", ["<html>login</html>", ""], ids=["html", "empty"])
def test_token_endpoint_without_a_token(conn_env, requests_mock, body):
    requests_mock.post(TOKEN_URL, text=body)
    with pytest.raises(SentinelBatchAuthError) as exc:
        SentinelBatchHook().get_token()
    assert str(exc.value) == (
        f"Token response from {TOKEN_URL} could not be used: MissingTokenError: (missing_token) Missing access "
        "token parameter."
    )


@pytest.mark.parametrize("body", ["", "[1, 2]"], ids=["empty", "json-list"])
def test_status_answer_that_is_not_a_request_object(hook, requests_mock, body):
    requests_mock.get(f"{V1}/process/{RID}", text=body)
    with pytest.raises(SentinelBatchAPIError, match="expected a JSON object"):
        hook.get_request(RID)


async def test_trigger_reports_a_non_json_answer_as_an_error_event(conn_env):
    conn_env(api_version="v2")
    with respx.mock(assert_all_called=False) as router:
        router.post(TOKEN_URL).respond(json={"access_token": "tok", "expires_in": 3600})
        router.get(f"{V2}/process/{RID}").respond(200, text="<html>maintenance</html>")
        trigger = SentinelBatchTrigger(request_id=RID, conn_id="sentinel_batch_default", api_version="v2")
        event = (await trigger.run().__anext__()).payload
    assert event["outcome"] == "error"
    assert event["message"] == (
        f"Sentinel Hub Batch API GET {V2}/process/{RID} failed: HTTP 200 NON_JSON_RESPONSE: expected a JSON body, "
        "got: '<html>maintenance</html>'"
    )


# ------------------------------------------------------------------------- enum values from the future
def test_unknown_status_is_waited_through_and_logged(
    conn_env, token_mock, requests_mock, caplog, monkeypatch
):
    conn_env(api_version="v2")
    requests_mock.get(
        f"{V2}/process/{RID}",
        [
            {"json": {"id": RID, "status": "QUEUED_FOR_REVIEW", "userAction": "START"}},
            {"json": {"id": RID, "status": "DONE", "userAction": "START", "costPU": 12.5}},
        ],
    )
    sensor = SentinelBatchSensor(task_id="wait", request_id=RID, api_version="v2", deferrable=False)
    # the task logger is structlog on Airflow 3: route it to a stdlib logger that caplog sees, on both lines
    monkeypatch.setattr(
        SentinelBatchSensor, "log", property(lambda _: logging.getLogger("bad_inputs.sensor"))
    )
    caplog.set_level(logging.INFO)
    assert sensor.poke(context()) is False  # keep waiting: a newer API may add states
    assert (
        judge("v2", "DONE", {"id": RID, "status": "QUEUED_FOR_REVIEW"}).message
        == "unknown status 'QUEUED_FOR_REVIEW'"
    )
    done = sensor.poke(context())
    assert done.is_done and done.xcom_value["status"] == "DONE"
    assert f"Batch request {RID}: status QUEUED_FOR_REVIEW, user action START" in caplog.text


async def test_trigger_waits_through_an_unknown_status(conn_env, monkeypatch):
    conn_env(api_version="v2")
    monkeypatch.setattr("asyncio.sleep", _no_sleep)
    with respx.mock(assert_all_called=False) as router:
        router.post(TOKEN_URL).respond(json={"access_token": "tok", "expires_in": 3600})
        router.get(f"{V2}/process/{RID}").mock(
            side_effect=[
                httpx.Response(200, json={"id": RID, "status": "REPLICATING", "userAction": "START"}),
                httpx.Response(200, json={"id": RID, "status": "DONE", "userAction": "START"}),
            ]
        )
        trigger = SentinelBatchTrigger(request_id=RID, conn_id="sentinel_batch_default", api_version="v2")
        event = (await trigger.run().__anext__()).payload
    assert event["outcome"] == "success" and event["summary"]["status"] == "DONE"


async def _no_sleep(*_: object, **__: object) -> None:
    return None


def test_unknown_stop_reason_user_action_and_tile_status_are_passed_through():
    stopped = {"id": RID, "status": "STOPPED", "stoppedStatusReason": "BUDGET_RULE", "userAction": "STOP"}
    verdict = judge("v2", "DONE", stopped)
    assert (verdict.outcome, verdict.message) == (
        "failed",
        f"Batch request {RID} ended STOPPED (stoppedStatusReason BUDGET_RULE)",
    )
    assert (
        describe("v2", {"status": "PROCESSING", "userAction": "PAUSE"})
        == "status PROCESSING, user action PAUSE"
    )
    created = judge("v1", "DONE", {"id": RID, "status": "CREATED", "userAction": "PAUSE"})
    assert created.message == (
        f"Batch request {RID} is CREATED with user action PAUSE: nobody started this job (START it, e.g. with "
        "SentinelBatchStartOperator, before waiting for DONE)"
    )


async def test_unknown_tile_status_is_counted_not_fatal(conn_env, monkeypatch):
    conn_env(api_version="v1")
    monkeypatch.setattr("asyncio.sleep", _no_sleep)
    with respx.mock(assert_all_called=False) as router:
        router.post(TOKEN_URL).respond(json={"access_token": "tok", "expires_in": 3600})
        router.get(f"{V1}/process/{RID}").respond(
            200, json={"id": RID, "status": "DONE", "userAction": "START"}
        )
        router.get(f"{V1}/process/{RID}/tiles").respond(
            200,
            json={"data": [{"id": 1, "status": "PROCESSED"}, {"id": 2, "status": "ARCHIVED"}], "links": {}},
        )
        trigger = SentinelBatchTrigger(request_id=RID, conn_id="sentinel_batch_default", api_version="v1")
        event = (await trigger.run().__anext__()).payload
    assert event["outcome"] == "success"
    assert event["summary"]["tiles"] == {"PROCESSED": 1, "ARCHIVED": 1}
