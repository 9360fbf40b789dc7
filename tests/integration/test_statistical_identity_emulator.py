"""Batch Statistical create identity against the emulator: re-attach by the task state store or the payload, a
changed payload is a new request, a lost create answer finds its request, concurrent executions converge, and a
real Airflow retry after a crash. Batch Statistical requests have no description: the payload is the identity."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from airflow_provider_sentinel_batch import identity
from airflow_provider_sentinel_batch.emulator import EmulatorServer
from airflow_provider_sentinel_batch.operators.batch import SentinelBatchCreateOperator
from tests.emulator.helpers import Api
from tests.emulator.stat_helpers import STAT, stat_payload, write_parcels
from tests.integration.test_identity_emulator import (
    LOGGER,
    MemoryStore,
    _has_task_state_store,
    context,
    crash_dag_source,
)

pytestmark = [pytest.mark.integration, pytest.mark.sentinel_batch_emulator(time_scale=1.0)]

LIST = f"GET {STAT}"
GET = f"GET {STAT}/{{id}}"


@pytest.fixture(autouse=True)
def _stdlib_task_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """The task logger is structlog on Airflow 3: route it to a stdlib logger that caplog sees, on both lines."""
    monkeypatch.setattr(SentinelBatchCreateOperator, "log", property(lambda _: logging.getLogger(LOGGER)))


@pytest.fixture
def emu(sentinel_batch_emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> EmulatorServer:
    monkeypatch.setenv("AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT", sentinel_batch_emulator.airflow_conn_json("v2"))
    write_parcels(sentinel_batch_emulator.data_dir, count=4)
    return sentinel_batch_emulator


def create(ctx: dict[str, Any], **kwargs: Any) -> str:
    payload = kwargs.pop("payload", None) or stat_payload()
    op = SentinelBatchCreateOperator(task_id="create", payload=payload, api_version="statistical", **kwargs)
    return op.execute(ctx)


def force(server: EmulatorServer, rid: str, status: str, **extra: Any) -> None:
    answer = Api(server).post(f"/_emulator/statistical/{rid}/force", json={"status": status, **extra})
    assert answer.status_code == 200, answer.text


def statuses(server: EmulatorServer) -> dict[str, str]:
    with server.state.lock:
        return {rid: r.status for rid, r in server.state.stat_requests.items()}


def calls(server: EmulatorServer, route: str) -> int:
    return int(server.stats()["calls"].get(route, 0))


@pytest.mark.parametrize("status", ["CREATED", "ANALYSIS_DONE", "PROCESSING", "DONE"])
def test_retry_with_the_same_payload_reattaches(emu, status, caplog):
    first = create(context())
    force(emu, first, status)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert create(context()) == first
    assert emu.stats()["jobs_created"] == 1
    assert f"Re-attaching to batch request {first} ({status}) created by an earlier try" in caplog.text


def test_rotated_bucket_keys_and_a_region_are_the_same_request(emu, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_STAT_BUCKET",
        json.dumps(
            {"conn_type": "aws", "login": "AK1", "password": "secret-1", "extra": {"region_name": "eu"}}
        ),
    )
    keyless = stat_payload()
    for place in (keyless["input"]["features"]["s3"], keyless["output"]["s3"]):
        place.pop("accessKey"), place.pop("secretAccessKey")
    first = create(context(), payload=keyless, bucket_conn_id="stat_bucket")
    assert emu.state.stat_requests[first].body["output"]["s3"]["region"] == "eu"  # sent with the region
    monkeypatch.setenv(
        "AIRFLOW_CONN_STAT_BUCKET", json.dumps({"conn_type": "aws", "login": "AK2", "password": "s2"})
    )
    assert create(context(), payload=keyless, bucket_conn_id="stat_bucket") == first
    assert create(context(), payload=stat_payload()) == first  # the same payload with keys written in
    assert emu.stats()["jobs_created"] == 1


@pytest.mark.parametrize(("status", "extra"), [("FAILED", {"error": "boom (forced)"}), ("STOPPED", {})])
def test_a_failed_or_stopped_request_gets_a_new_one(emu, status, extra, caplog):
    first = create(context())
    force(emu, first, status, **extra)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        again = create(context())
    assert again != first and emu.stats()["jobs_created"] == 2
    assert f"Earlier batch request {first} of this task instance ended {status}" in caplog.text
    assert create(context()) == again  # and the new one is the task's request from now on


def test_a_changed_payload_is_a_new_request(emu):
    first = create(context())
    force(emu, first, "PROCESSING")
    changed = stat_payload(
        **{"aggregation.timeRange": {"from": "2024-05-01T00:00:00Z", "to": "2024-07-01T00:00:00Z"}}
    )
    again = create(context(), payload=changed)
    assert again != first and emu.stats()["jobs_created"] == 2
    assert statuses(emu)[first] == "PROCESSING"  # left alone
    assert create(context(), payload=changed) == again
    assert create(context()) == first  # the first payload still finds its own request
    assert emu.stats()["jobs_created"] == 2


def test_the_task_state_store_makes_a_retry_one_get(emu, caplog):
    store = MemoryStore()
    first = create(context(store=store))
    assert store.data[identity.STATE_KEY] == {
        "request_id": first,
        "fingerprint": identity.statistical_fingerprint(stat_payload()),
        "api_version": "statistical",
    }
    lists, gets = calls(emu, LIST), calls(emu, GET)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert create(context(store=store)) == first
    assert calls(emu, LIST) == lists and calls(emu, GET) == gets + 1  # no listing: one GET
    assert "recorded by an earlier try in Airflow's task state store" in caplog.text


def test_a_stored_request_of_another_payload_is_not_used(emu, caplog):
    store = MemoryStore()
    first = create(context(store=store))
    changed = stat_payload(**{"output.s3.url": "s3://stat-bucket/other"})
    with caplog.at_level(logging.INFO, logger=LOGGER):
        again = create(context(store=store), payload=changed)
    assert again != first and store.data[identity.STATE_KEY]["request_id"] == again
    assert "it was made from a different payload" in caplog.text


def test_death_between_create_and_store_write_is_closed_by_the_payload_search(emu):
    store = MemoryStore()
    first = create(context(store=store))
    store.data.clear()  # as if the worker died before the write
    assert create(context(store=store)) == first
    assert emu.stats()["jobs_created"] == 1 and store.data[identity.STATE_KEY]["request_id"] == first


def test_a_lost_create_answer_finds_the_request_the_service_made(emu, monkeypatch, caplog):
    """The connection breaks after the emulator created the request: no second request, the task gets the first."""
    import requests

    lost: list[str] = []
    original = requests.Session.request

    def request(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        response = original(self, method, url, *args, **kwargs)
        if method == "POST" and url.endswith(STAT) and not lost:
            lost.append(response.json()["id"])
            raise requests.ConnectionError("Connection reset by peer after the request was sent (injected)")
        return response

    monkeypatch.setattr(requests.Session, "request", request)
    store = MemoryStore()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        rid = create(context(store=store))
    assert lost and rid == lost[0]
    assert emu.stats()["jobs_created"] == 1 and calls(emu, f"POST {STAT}") == 1
    assert "Create failed ambiguously" in caplog.text and f"had created request {rid}" in caplog.text
    assert store.data[identity.STATE_KEY]["request_id"] == rid
    assert create(context(store=store)) == rid and emu.stats()["jobs_created"] == 1


def test_concurrent_executions_converge_on_the_oldest_request(emu, monkeypatch, caplog):
    import tests.integration.test_identity_emulator as batch_identity

    monkeypatch.setattr(batch_identity, "create", lambda version, ctx: create(ctx))
    emu.set_faults(create_delay_ms=300)  # both look before either request exists
    trials = 3
    for trial in range(trials):
        before = set(statuses(emu))
        with caplog.at_level(logging.INFO, logger=LOGGER):
            ids = batch_identity.race("statistical", f"manual__race_{trial}")
        made = sorted(set(statuses(emu)) - before)
        assert len(made) == 2, (trial, made)  # the race really happened: both executions created a request
        assert len(set(ids)) == 1, (trial, ids)
        # the oldest by the service's ``created`` (ties by id), as every execution ranks them
        listed = {r["id"]: r for r in Api(emu).get(STAT).json()["data"]}
        oldest = min(made, key=lambda rid: identity.Job(rid, "", listed[rid]["created"], None).order)
        assert ids[0] == oldest
        assert all(statuses(emu)[rid] == "CREATED" for rid in made)
        # the loser's request cannot be deleted or renamed: every later try still chooses the oldest
        assert create(context(f"manual__race_{trial}")) == oldest
        force(emu, oldest, "DONE")  # the next trial's payload is the same: it re-attaches unless this is gone
        force(emu, oldest, "FAILED")
        for rid in made:
            force(emu, rid, "FAILED")
    assert "stays CREATED (the API can neither delete nor rename it)" in caplog.text


def test_airflow_retry_reattaches_through_the_task_state_store_or_the_payload(dag_runner, emu):
    """Real task runs (dag.test): Airflow 3.3 hands the task its state store, 2.11 has none and lists."""
    from tests.integration.harness import AIRFLOW_V_3

    source = crash_dag_source("statistical", "stat_identity_retry", stat_payload())
    result = dag_runner(source, "stat_identity_retry", disable_retries=False)
    assert result.succeeded, result.describe()
    assert result.task("create").try_number == 2
    assert emu.stats()["jobs_created"] == 1
    log = result.log("create")
    if AIRFLOW_V_3 and _has_task_state_store():
        assert "recorded by an earlier try in Airflow's task state store" in log, log
        assert calls(emu, LIST) == 2  # the first try's look-up and concurrency check; none on the retry
    else:
        assert "created by an earlier try of this task" in log, log
        assert calls(emu, LIST) == 3
