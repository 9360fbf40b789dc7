"""Fault matrix: the Corsica example DAGs (v1 and v2) on real Airflow against a misbehaving emulator.

Every recoverable fault must end with the job DONE, the DAG run successful, exactly one job created and a
bounded number of extra API calls; every unrecoverable one must end in a clear, specific failure (the exact
message is asserted) without a retry storm. The table of rows, how each fault is injected and the results on
both Airflow lines is in ``docs/reliability.md``; rerun with::

    .venv/bin/pytest -m integration tests/integration/test_reliability.py
    AIRFLOW_LINES=2.11.2 bash .ci/test tests/integration/test_reliability.py

Faults come from the emulator (``FaultConfig``: 429/5xx/drops/404 window/token faults/latency, revoked tokens,
restarts with ``state_file``), from Airflow itself (a trigger rebuilt from ``serialize()``, a task retried
after a crash) or, where the emulator cannot reach, from the client side (a response lost after the server
acted on it). Waits use the operators' default ``RetryPolicy`` (not tunable from a DAG): 429 answers carry a
small ``Retry-After`` where the row allows, and the one row without ``Retry-After`` pays the default 10 s once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import importlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest

from airflow_provider_sentinel_batch.emulator import EmulatorServer
from tests.integration import harness
from tests.integration.harness import AIRFLOW_V_3, DagRunResult

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

VERSIONS = ["v1", "v2"]
BUCKET_CONN = json.dumps(
    {"conn_type": "aws", "login": "AKIAEMULATORBUCKET", "password": "emulator-bucket-key"}
)
UNKNOWN_ID = "0b9c3b4e-7f2a-4c1d-9e8f-5a6b7c8d9e0f"

# Upper bounds for the API calls of a fault-free Corsica run per emulator speed (create, the create's list calls
# that find its own job, grids, analyse, start, tiles, and status polls every 0.1-0.2 s while the job runs:
# measured 27-30 / 39-41 for v1 and 23-25 / 33-36 for v2 at time_scale 200 / 100 on both Airflow lines, plus
# headroom for the polling policy and slow machines). A fault row may add one call per injected fault and no more.
CLEAN_CALLS = {("v1", 200): 35, ("v1", 100): 45, ("v2", 200): 30, ("v2", 100): 40}


# ----------------------------------------------------------------------------------------------- helpers
@pytest.fixture(autouse=True)
def _record_emulator_stats(request: pytest.FixtureRequest) -> Iterator[None]:
    """Attach the emulator's counters to the test report (``--junitxml`` keeps them for docs/reliability.md)."""
    if "sentinel_batch_emulator" not in request.fixturenames:
        yield
        return
    server = request.getfixturevalue("sentinel_batch_emulator")  # set up first, so torn down after this
    yield
    stats = server.stats()
    request.node.user_properties += [
        ("api_calls", api_calls(stats)),
        ("jobs_created", stats["jobs_created"]),
        ("tokens_issued", stats["tokens_issued"]),
        ("faults_injected", json.dumps(stats["faults_injected"], sort_keys=True)),
    ]


def run_corsica(
    dag_runner: Callable[..., DagRunResult],
    server: EmulatorServer,
    version: str,
    *,
    conn: str | None = None,
    env: dict[str, str] | None = None,
    disable_retries: bool = True,
) -> DagRunResult:
    """The example DAG ``dags_examples/corsica_max_ndvi_<version>.py`` against ``server``, fast polls."""
    return harness.run_corsica(
        dag_runner,
        server,
        version,
        bucket_conn=BUCKET_CONN,
        conn=conn,
        env=env,
        disable_retries=disable_retries,
    )


def api_calls(stats: dict[str, Any]) -> int:
    return sum(n for route, n in stats["calls"].items() if " /api/" in route)


def errors(stats: dict[str, Any]) -> int:
    """Responses with status >= 400 (dropped connections have no response)."""
    return sum(n for status, n in stats["responses"].items() if int(status) >= 400)


def injected(stats: dict[str, Any], *kinds: str) -> int:
    return sum(n for kind, n in stats["faults_injected"].items() if not kinds or kind in kinds)


def assert_recovered(
    result: DagRunResult, stats: dict[str, Any], version: str, *, extra_calls: int = 0
) -> None:
    """The job is DONE, the run green, one job created, and no more API calls than the faults explain."""
    assert result.succeeded, result.describe()
    summary = result.xcom("wait_for_done")
    assert summary["status"] == "DONE", summary
    assert summary["request_id"] == result.xcom("create")
    assert stats["jobs_created"] == 1, stats
    assert stats["jobs"][version] == {"DONE": 1}, stats["jobs"]
    bound = CLEAN_CALLS[(version, int(stats["time_scale"]))] + extra_calls
    assert api_calls(stats) <= bound, (bound, stats["calls"])


def assert_failed_clearly(
    result: DagRunResult, task_id: str, message: str | re.Pattern[str], stats: dict[str, Any], max_calls: int
) -> str:
    """The run failed at ``task_id`` with exactly ``message`` in its log, without a retry storm."""
    assert not result.succeeded, result.describe()
    assert result.task_states[task_id] == "failed", result.describe()
    log = result.log(task_id)
    if isinstance(message, re.Pattern):
        found = message.search(log)
        assert found, f"no match for {message.pattern!r} in:\n{log}"
        text = found.group(0)
    else:
        assert message in log, f"expected message not in the log of {task_id}:\n{message}\n--- log ---\n{log}"
        text = message
    assert stats["jobs_created"] <= 1, stats
    assert api_calls(stats) <= max_calls, stats["calls"]
    return text


def request_id(result: DagRunResult) -> str:
    rid = result.xcom("create")
    assert rid, result.describe()
    return str(rid)


def any_job(server: EmulatorServer, status: str) -> bool:
    state = server.state
    return any(state.job_status(job_id) == status for job_id in list(state.jobs))


@contextlib.contextmanager
def when(
    condition: Callable[[], bool], action: Callable[[], Any], *, poll: float = 0.02
) -> Iterator[threading.Event]:
    """Run ``action`` once, from a background thread, as soon as ``condition()`` holds (fault mid-run)."""
    fired, stop = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def loop() -> None:
        try:
            while not stop.is_set():
                if condition():
                    action()
                    fired.set()
                    return
                stop.wait(poll)
        except BaseException as exc:  # surfaced below: a broken injection must not look like a pass
            failure.append(exc)

    thread = threading.Thread(target=loop, name="fault-injector", daemon=True)
    thread.start()
    try:
        yield fired
    finally:
        stop.set()
        thread.join(30)
    if failure:
        raise failure[0]


def override_task_kwargs(monkeypatch: pytest.MonkeyPatch, cls: type, task_id: str, **overrides: Any) -> None:
    """Change constructor arguments of one task of an example DAG (e.g. a shorter timeout)."""
    original = cls.__init__

    @functools.wraps(original)
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("task_id") == task_id:
            kwargs.update(overrides)
        original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__init__", init)


def cdse_token_conn(server: EmulatorServer, version: str) -> str:
    conn = json.loads(server.airflow_conn_json(version))
    conn["extra"]["auth_url"] = server.cdse_token_url
    return json.dumps(conn)


# ============================================================================ recoverable faults: end DONE
@pytest.mark.parametrize("sentinel_batch_emulator", [{"time_scale": 200}, {"time_scale": 100}], indirect=True)
@pytest.mark.parametrize("version", VERSIONS)
def test_baseline_no_faults(dag_runner, sentinel_batch_emulator, version):
    result = run_corsica(dag_runner, sentinel_batch_emulator, version)
    stats = sentinel_batch_emulator.stats()
    assert_recovered(result, stats, version)
    assert errors(stats) == 0 and stats["tokens_issued"] == 1


@pytest.mark.sentinel_batch_emulator(time_scale=200, rate_429=0.5, retry_after_ms=100, seed=7)
@pytest.mark.parametrize("version", VERSIONS)
def test_429_storm_with_retry_after(dag_runner, sentinel_batch_emulator, version):
    result = run_corsica(dag_runner, sentinel_batch_emulator, version)
    stats = sentinel_batch_emulator.stats()
    storms = injected(stats, "429")
    assert storms >= 10, stats["faults_injected"]
    assert_recovered(result, stats, version, extra_calls=storms)
    assert errors(stats) == storms  # every error answer was an injected 429: no self-inflicted errors


@pytest.mark.sentinel_batch_emulator(time_scale=200, seed=7)
@pytest.mark.parametrize("version", VERSIONS)
def test_429_storm_without_retry_after_waits_the_default(dag_runner, sentinel_batch_emulator, version):
    """A storm of bare 429s while the job runs: one 429 per waiting caller, then the 10 s default pause."""
    server = sentinel_batch_emulator

    def storm() -> None:
        server.set_faults(rate_429=1.0, no_retry_after=True)
        deadline = time.monotonic() + 30
        while injected(server.stats(), "429") < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(2.0)  # the storm goes on; a client that ignored the missing Retry-After would hammer now
        server.clear_faults()

    started = time.monotonic()
    with when(lambda: any_job(server, "PROCESSING"), storm) as fired:
        result = run_corsica(dag_runner, server, version)
    elapsed = time.monotonic() - started
    assert fired.is_set()
    stats = server.stats()
    assert_recovered(result, stats, version, extra_calls=1)
    assert injected(stats, "429") == 1, stats["faults_injected"]  # no bombardment within the 2 s storm
    assert elapsed >= 10.0  # the default Retry-After (10 s) was honoured


@pytest.mark.sentinel_batch_emulator(time_scale=200, rate_5xx=0.08, burst_5xx=3, seed=5)
@pytest.mark.parametrize("version", VERSIONS)
def test_5xx_bursts(dag_runner, sentinel_batch_emulator, version):
    result = run_corsica(dag_runner, sentinel_batch_emulator, version)
    stats = sentinel_batch_emulator.stats()
    faults = injected(stats, "5xx")
    assert faults >= 3, stats["faults_injected"]
    assert_recovered(result, stats, version, extra_calls=faults)
    assert errors(stats) == faults


@pytest.mark.sentinel_batch_emulator(time_scale=200, drop_rate=0.1, seed=3)
@pytest.mark.parametrize("version", VERSIONS)
def test_dropped_connections(dag_runner, sentinel_batch_emulator, version):
    result = run_corsica(dag_runner, sentinel_batch_emulator, version)
    stats = sentinel_batch_emulator.stats()
    drops = injected(stats, "drop")
    assert drops >= 2, stats["faults_injected"]
    assert_recovered(result, stats, version, extra_calls=drops)
    assert errors(stats) == 0


@pytest.mark.sentinel_batch_emulator(time_scale=200, not_found_after_create=2.0)
@pytest.mark.parametrize("version", VERSIONS)
def test_404_window_after_create(dag_runner, sentinel_batch_emulator, version):
    """A new request is missing from lists and answers 404 for 2 s. The create's check for concurrent executions
    waits until its job is listed, so it meets the lag first; a 404 that still reaches a later call is retried."""
    result = run_corsica(dag_runner, sentinel_batch_emulator, version)
    stats = sentinel_batch_emulator.stats()
    not_found = injected(stats, "404_after_create")
    lag_lists = stats["calls"][f"GET /api/{version}/batch/process"] - 2  # beyond the search and one check
    assert lag_lists >= 1, stats["calls"]  # the create saw its job missing from the list and waited
    assert "is not in the service's list yet" not in result.log("create")  # ... until it was listed
    assert_recovered(result, stats, version, extra_calls=not_found + lag_lists)
    assert errors(stats) == not_found


@pytest.mark.sentinel_batch_emulator(
    time_scale=100, token_lifetime=2.0, token_429_rate=0.3, token_5xx_rate=0.3, retry_after_ms=100, seed=1
)
@pytest.mark.parametrize("version", VERSIONS)
def test_token_endpoint_429_and_5xx(dag_runner, sentinel_batch_emulator, version):
    result = run_corsica(dag_runner, sentinel_batch_emulator, version)
    stats = sentinel_batch_emulator.stats()
    token_faults = injected(stats, "token_429", "token_5xx")
    assert injected(stats, "token_429") >= 1 and injected(stats, "token_5xx") >= 1, stats["faults_injected"]
    assert_recovered(result, stats, version)
    assert stats["token_requests"] == stats["tokens_issued"] + token_faults
    assert stats["responses"].get("401", 0) <= 2  # tokens were refreshed before expiry, not after a 401


@pytest.mark.sentinel_batch_emulator(time_scale=100, token_lifetime=1.0)
@pytest.mark.parametrize("version", VERSIONS)
def test_token_lifetime_shorter_than_the_job(dag_runner, sentinel_batch_emulator, version):
    result = run_corsica(dag_runner, sentinel_batch_emulator, version)
    stats = sentinel_batch_emulator.stats()
    assert_recovered(result, stats, version)
    # refreshed at 3/4 of the lifetime while in use: several tokens, at most ~one per 0.75 s of the run
    assert 3 <= stats["tokens_issued"] <= result.duration / 0.75 + 3, (
        stats["tokens_issued"],
        result.duration,
    )
    assert stats["responses"].get("401", 0) <= 2


@pytest.mark.sentinel_batch_emulator(time_scale=100)
@pytest.mark.parametrize("version", VERSIONS)
def test_token_revoked_mid_wait(dag_runner, sentinel_batch_emulator, version):
    server = sentinel_batch_emulator
    with when(lambda: any_job(server, "PROCESSING"), server.revoke_tokens) as fired:
        result = run_corsica(dag_runner, server, version)
    assert fired.is_set()
    stats = server.stats()
    assert_recovered(result, stats, version, extra_calls=1)
    assert stats["responses"].get("401", 0) >= 1  # the revoked token was used once ...
    assert stats["tokens_issued"] == 2  # ... then replaced once, for every caller (one shared cache)


@pytest.mark.sentinel_batch_emulator(time_scale=200, slow_ms=250)
@pytest.mark.parametrize("version", VERSIONS)
def test_slow_responses(dag_runner, sentinel_batch_emulator, version):
    result = run_corsica(dag_runner, sentinel_batch_emulator, version)
    stats = sentinel_batch_emulator.stats()
    assert injected(stats, "slow") >= 10
    assert_recovered(result, stats, version)
    assert errors(stats) == 0


@pytest.mark.parametrize("version", VERSIONS)
def test_emulator_restarted_mid_job(dag_runner, tmp_path, version, request):
    """The service goes away for 1 s while the job runs and comes back with its state (``state_file``)."""
    from airflow_provider_sentinel_batch.emulator import EmulatorConfig

    config = EmulatorConfig(
        port=0, time_scale=100, data_dir=tmp_path / "data", state_file=tmp_path / "state.json"
    )
    first = EmulatorServer(config).start()
    servers = [first]
    before: dict[str, Any] = {}

    def restart() -> None:
        before.update(first.stats())
        first.stop()
        time.sleep(1.0)
        servers.append(EmulatorServer(dataclasses.replace(config, port=first.port)).start())

    try:
        with when(lambda: any_job(first, "PROCESSING"), restart) as fired:
            result = run_corsica(dag_runner, first, version)
        assert fired.is_set() and len(servers) == 2
        stats = servers[1].stats()  # jobs and the jobs_created counter come back from the state file
        routes = {*before["calls"], *stats["calls"]}
        stats["calls"] = {k: before["calls"].get(k, 0) + stats["calls"].get(k, 0) for k in routes}
        request.node.user_properties += [
            ("api_calls", api_calls(stats)),
            ("jobs_created", stats["jobs_created"]),
        ]
        assert_recovered(result, stats, version)
    finally:
        for server in servers:
            server.stop()


class _RestartedTrigger:
    """Runs a trigger for ``after`` seconds, cancels it (triggerer shutdown), then runs a new instance built
    from its ``serialize()`` output after a JSON round trip, as another triggerer would."""

    def __init__(self, trigger: Any, after: float, restarts: list[str]) -> None:
        self.trigger, self.after, self.restarts = trigger, after, restarts

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return self.trigger.serialize()

    async def run(self) -> Any:
        first = asyncio.ensure_future(anext(self.trigger.run()))
        done, _ = await asyncio.wait({first}, timeout=self.after)
        if first in done:
            yield first.result()
            return
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        classpath, kwargs = self.trigger.serialize()
        module, _, name = classpath.rpartition(".")
        rebuilt = getattr(importlib.import_module(module), name)(**json.loads(json.dumps(kwargs)))
        self.restarts.append(classpath)
        async for event in rebuilt.run():
            yield event
            return


@pytest.mark.sentinel_batch_emulator(time_scale=100)
@pytest.mark.parametrize("version", VERSIONS)
def test_triggerer_restart_mid_wait(dag_runner, sentinel_batch_emulator, version, monkeypatch):
    if AIRFLOW_V_3:
        import airflow.sdk.definitions.dag as dag_module
    else:
        import airflow.models.dag as dag_module

    restarts: list[str] = []
    original = dag_module._run_inline_trigger

    def run_inline_trigger(trigger: Any, *args: Any) -> Any:
        if getattr(trigger, "wait_for", None) == "DONE":
            trigger = _RestartedTrigger(trigger, 1.0, restarts)
        return original(trigger, *args)

    monkeypatch.setattr(dag_module, "_run_inline_trigger", run_inline_trigger)
    result = run_corsica(dag_runner, sentinel_batch_emulator, version)
    stats = sentinel_batch_emulator.stats()
    assert restarts == ["airflow_provider_sentinel_batch.triggers.batch.SentinelBatchTrigger"], (
        result.describe()
    )
    assert_recovered(result, stats, version, extra_calls=1)  # the rebuilt trigger looks once more at once
    assert not any(route.endswith(("/stop", "/cancel")) for route in stats["calls"])  # restart ≠ kill


@pytest.mark.sentinel_batch_emulator(time_scale=200)
@pytest.mark.parametrize("version", VERSIONS)
def test_task_retry_after_worker_crash_right_after_create(
    dag_runner, sentinel_batch_emulator, version, monkeypatch
):
    """The worker dies after the service created the job but before the request id reached XCom."""
    from airflow_provider_sentinel_batch.hooks.sentinel_batch import SentinelBatchHook
    from airflow_provider_sentinel_batch.operators.batch import SentinelBatchCreateOperator

    created: list[str] = []
    original = SentinelBatchHook.create_request

    def create_then_crash(self: Any, *args: Any, **kwargs: Any) -> Any:
        body = original(self, *args, **kwargs)
        created.append(body["id"])
        if len(created) == 1:
            raise RuntimeError("worker lost right after create (injected)")
        return body

    monkeypatch.setattr(SentinelBatchHook, "create_request", create_then_crash)
    override_task_kwargs(monkeypatch, SentinelBatchCreateOperator, "create", retry_delay=timedelta(0))
    result = run_corsica(dag_runner, sentinel_batch_emulator, version, disable_retries=False)
    stats = sentinel_batch_emulator.stats()
    assert result.task("create").try_number == 2, result.describe()
    assert created == [request_id(result)]  # the retry did not create again ...
    assert f"Re-attaching to batch request {created[0]}" in result.log("create")  # ... it re-attached
    assert_recovered(result, stats, version)


@pytest.mark.sentinel_batch_emulator(time_scale=200)
@pytest.mark.parametrize("version", VERSIONS)
def test_create_response_lost_after_the_service_created_the_job(
    dag_runner, sentinel_batch_emulator, version, monkeypatch
):
    """The connection breaks after the service acted on POST /process (the emulator's drop fault hits before)."""
    import requests

    lost: list[str] = []
    original = requests.Session.request

    def request(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        response = original(self, method, url, *args, **kwargs)
        if method == "POST" and url.endswith("/batch/process") and not lost:
            lost.append(response.json()["id"])
            raise requests.ConnectionError("Connection reset by peer after the request was sent (injected)")
        return response

    monkeypatch.setattr(requests.Session, "request", request)
    result = run_corsica(dag_runner, sentinel_batch_emulator, version)
    stats = sentinel_batch_emulator.stats()
    assert lost, "the injection did not fire"
    assert_recovered(result, stats, version)
    assert request_id(result) == lost[0]


# ============================================================================ clear, specific failures
@pytest.mark.parametrize("version", VERSIONS)
def test_wrong_client_secret(dag_runner, sentinel_batch_emulator, version):
    server = sentinel_batch_emulator
    conn = json.loads(server.airflow_conn_json(version))
    conn["password"] = "not-the-secret-8f1e"
    result = run_corsica(dag_runner, server, version, conn=json.dumps(conn))
    stats = server.stats()
    message = (
        f"Token request to {server.token_url} failed: HTTP 401 invalid_client: Invalid client or Invalid client "
        f"credentials. Check the client id ('{server.client_id}') and secret of the connection, and that the token "
        "URL belongs to the same deployment as the base URL (Sentinel Hub vs CDSE)."
    )
    assert_failed_clearly(result, "create", message, stats, max_calls=0)
    assert stats["token_requests"] == 1  # no retry loop; the cancel-on-failure task skips (no request id)
    assert "not-the-secret-8f1e" not in result.log("create")


@pytest.mark.sentinel_batch_emulator(realm="main")
@pytest.mark.parametrize("version", VERSIONS)
def test_wrong_deployment_cdse_token_on_sentinel_hub(dag_runner, sentinel_batch_emulator, version):
    server = sentinel_batch_emulator
    result = run_corsica(dag_runner, server, version, conn=cdse_token_conn(server, version))
    stats = server.stats()
    message = (
        f"Sentinel Hub Batch API GET {server.base_url}/api/{version}/batch/process failed: HTTP 401 "
        "COMMON_UNAUTHORIZED: You are not authorized! Please provide a valid access token within the header "
        "[Authorization: Bearer <accessToken>] of your request. (token issued by realm 'CDSE', this deployment "
        "accepts realm 'main')"
    )
    assert_failed_clearly(result, "create", message, stats, max_calls=2)
    assert stats["calls"].get(f"GET /api/{version}/batch/process") == 2  # refreshed once, then gave up
    assert stats["tokens_issued"] == 2
    assert stats["jobs_created"] == 0


UNKNOWN_ID_DAG = """
from datetime import datetime

from airflow.providers.common.compat.sdk import DAG
from airflow_provider_sentinel_batch.sensors.batch import SentinelBatchSensor

with DAG("{dag_id}", schedule=None, start_date=datetime(2024, 1, 1), catchup=False):
    SentinelBatchSensor(
        task_id="wait", request_id="{request_id}", api_version="{version}", deferrable=True, poll_interval=0.2
    )
"""


@pytest.mark.parametrize("version", VERSIONS)
def test_unknown_request_id(dag_runner, sentinel_batch_emulator, version, monkeypatch):
    server = sentinel_batch_emulator
    monkeypatch.setenv("AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT", server.airflow_conn_json(version))
    dag_id = f"unknown_request_{version}"
    result = dag_runner(UNKNOWN_ID_DAG.format(dag_id=dag_id, request_id=UNKNOWN_ID, version=version), dag_id)
    kind = "Batch request" if version == "v1" else "Batch task"
    message = (
        f"Sentinel Hub Batch API GET {server.base_url}/api/{version}/batch/process/{UNKNOWN_ID} failed: HTTP 404 "
        f"COMMON_NOT_FOUND: {kind} with id {UNKNOWN_ID} not found.\n  The request does not exist here: deleted, "
        "cleaned up by the service, or created on another deployment/API version?"
    )
    assert_failed_clearly(result, "wait", message, server.stats(), max_calls=1)


@pytest.mark.sentinel_batch_emulator(time_scale=200, analysis_failure_rate=1.0)
@pytest.mark.parametrize("version", VERSIONS)
def test_job_failed_during_analysis(dag_runner, sentinel_batch_emulator, version):
    server = sentinel_batch_emulator
    result = run_corsica(dag_runner, server, version)
    rid = request_id(result)
    message = (
        f"Batch request {rid} ended FAILED: Analysis failed: no data could be found for the request "
        "(emulated failure)."
    )
    assert_failed_clearly(result, "wait_for_analysis", message, server.stats(), max_calls=20)
    assert server.state.job_status(rid) == "FAILED"
    assert not any(route.endswith("/start") for route in server.stats()["calls"])  # never started, never paid


@pytest.mark.sentinel_batch_emulator(time_scale=200, tile_failure_rate=0.1, seed=4)
def test_v1_partial_fails_per_default_policy(dag_runner, sentinel_batch_emulator):
    server = sentinel_batch_emulator
    result = run_corsica(dag_runner, server, "v1")
    rid = request_id(result)
    failed = [t["name"] for t in server.state.list_tiles(rid, "FAILED")]
    assert failed
    shown = ", ".join(failed[:20]) + (f" and {len(failed) - 20} more" if len(failed) > 20 else "")
    message = f"Batch request {rid} ended PARTIAL: some tiles failed. {len(failed)} failed tiles: {shown}"
    assert_failed_clearly(result, "wait_for_done", message, server.stats(), max_calls=40)
    assert server.state.job_status(rid) == "PARTIAL"  # left for a restartpartial, not cancelled


@pytest.mark.sentinel_batch_emulator(time_scale=200, tile_failure_rate=0.1, seed=4)
@pytest.mark.parametrize("policy", ["succeed_with_warning", "restart"])
def test_v1_partial_other_policies(dag_runner, sentinel_batch_emulator, policy, monkeypatch):
    from airflow_provider_sentinel_batch.sensors.batch import SentinelBatchSensor

    server = sentinel_batch_emulator
    override_task_kwargs(monkeypatch, SentinelBatchSensor, "wait_for_done", partial_policy=policy)
    result = run_corsica(dag_runner, server, "v1")
    rid = request_id(result)
    assert result.succeeded, result.describe()
    summary = result.xcom("wait_for_done")
    assert server.stats()["jobs_created"] == 1
    if policy == "succeed_with_warning":
        assert summary["partial"] is True and summary["status"] == "PARTIAL"
        assert f"Batch request {rid} ended PARTIAL: some tiles failed; accepted" in result.log(
            "wait_for_done"
        )
        assert server.state.job_status(rid) == "PARTIAL"
    else:
        assert summary["status"] == "DONE" and server.state.job_status(rid) == "DONE"
        assert server.stats()["calls"]["POST /api/v1/batch/process/{id}/restartpartial"] == 1


@pytest.mark.sentinel_batch_emulator(time_scale=200, tile_failure_rate=0.05, seed=4)
def test_v2_failed_features_fail_per_policy(dag_runner, sentinel_batch_emulator, monkeypatch):
    """v2 has no PARTIAL: a DONE job can hold failed features, judged from the execution database."""
    from airflow_provider_sentinel_batch.sensors.batch import SentinelBatchSensor

    server = sentinel_batch_emulator
    override_task_kwargs(
        monkeypatch,
        SentinelBatchSensor,
        "wait_for_done",
        results_url=server.data_dir.as_uri(),
        max_failed_features=0,
    )
    result = run_corsica(dag_runner, server, "v2")
    rid = request_id(result)
    tiles = server.state.jobs[rid].tiles
    failed = [t for t in sorted(tiles, key=lambda t: t.id) if t.fails]
    assert failed and server.state.job_status(rid) == "DONE"
    shown = ", ".join(f"{t.name} (Processing of the feature failed (emulated failure).)" for t in failed[:10])
    more = f" and {len(failed) - 10} more" if len(failed) > 10 else ""
    message = (
        f"Batch request {rid}: {len(failed)} of {len(tiles)} features failed, over max_failed_features=0. "
        f"Failed: {shown}{more}"
    )
    assert_failed_clearly(result, "wait_for_done", message, server.stats(), max_calls=32)


@pytest.mark.sentinel_batch_emulator(time_scale=100)
def test_v2_stopped_out_of_pu(dag_runner, sentinel_batch_emulator):
    server = sentinel_batch_emulator
    # the account passes the 1,000 PU check at create, then runs dry while processing
    with when(lambda: server.state.jobs_created == 1, lambda: server.state.set_pu_budget(5.0)) as fired:
        result = run_corsica(dag_runner, server, "v2")
    assert fired.is_set()
    rid = request_id(result)
    message = f"Batch request {rid} ended STOPPED (stoppedStatusReason OUT_OF_PU)"
    assert_failed_clearly(result, "wait_for_done", message, server.stats(), max_calls=32)
    assert server.state.job_status(rid) == "STOPPED"


@pytest.mark.sentinel_batch_emulator(time_scale=200)
def test_v1_cost_guard_refuses_to_start(dag_runner, sentinel_batch_emulator):
    server = sentinel_batch_emulator
    result = run_corsica(dag_runner, server, "v1", env={"SENTINEL_BATCH_MAX_COST_PU": "1"})
    rid = request_id(result)
    estimate = float(server.state.get_view(1, rid)["valueEstimate"])
    message = (
        f"Not starting batch request {rid}: valueEstimate {estimate:g} PU means about {estimate / 3:.1f} PU "
        "charged (estimate / 3), over max_cost_pu=1."
    )
    assert_failed_clearly(result, "start", message, server.stats(), max_calls=28)
    assert "POST /api/v1/batch/process/{id}/start" not in server.stats()["calls"]
    assert server.state.job_status(rid) == "CANCELED"  # the cancel-on-failure task released the reservation


@pytest.mark.sentinel_batch_emulator(time_scale=50)
def test_v2_cost_guard_stops_the_job(dag_runner, sentinel_batch_emulator):
    server = sentinel_batch_emulator
    result = run_corsica(dag_runner, server, "v2", env={"SENTINEL_BATCH_MAX_COST_PU": "1"})
    rid = request_id(result)
    pattern = re.compile(
        rf"Batch request {rid} has cost (?P<cost>[0-9.]+) PU, over max_cost_pu=1(; the job was asked to stop)?"
    )
    text = assert_failed_clearly(result, "wait_for_done", pattern, server.stats(), max_calls=42)
    assert float(pattern.match(text)["cost"]) > 1
    assert server.state.job_status(rid) == "STOPPED"
    assert server.state.get_view(2, rid).get("stoppedStatusReason") == "USER_ACTION"


@pytest.mark.sentinel_batch_emulator(time_scale=40)
@pytest.mark.parametrize("version", VERSIONS)
def test_deadline_passed_stops_the_job(dag_runner, sentinel_batch_emulator, version, monkeypatch):
    from airflow_provider_sentinel_batch.sensors.batch import SentinelBatchSensor

    server = sentinel_batch_emulator
    override_task_kwargs(monkeypatch, SentinelBatchSensor, "wait_for_done", timeout=1.5)
    result = run_corsica(dag_runner, server, version)
    rid = request_id(result)
    action = "cancel" if version == "v1" else "stop"
    message = f"Batch request {rid} did not reach DONE before the deadline; the job was asked to {action}"
    assert_failed_clearly(result, "wait_for_done", message, server.stats(), max_calls=55)
    assert server.state.job_status(rid) == ("CANCELED" if version == "v1" else "STOPPED")
