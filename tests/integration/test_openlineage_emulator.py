"""OpenLineage facets of the create/start operators and the sensor, through the OpenLineage provider's own
``ExtractorManager`` (what its listener calls when a task finishes), against the emulator; the facets must also
serialize into a valid-looking OpenLineage event and never carry bucket keys or the evalscript.

Runs only where ``apache-airflow-providers-openlineage`` is installed (the ``openlineage`` extra).
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime
from functools import partial
from types import SimpleNamespace

import pytest

pytest.importorskip("airflow.providers.openlineage")

from airflow.providers.common.compat.sdk import DAG

from airflow_provider_sentinel_batch.hooks.sentinel_batch import SentinelBatchHook
from airflow_provider_sentinel_batch.operators.batch import (
    SentinelBatchCreateOperator,
    SentinelBatchStartOperator,
)
from airflow_provider_sentinel_batch.sensors.batch import SentinelBatchSensor
from tests.fakes import FakeTI
from tests.payloads import corsica_v2

pytestmark = pytest.mark.integration
BUCKET_SECRET = "ol-canary-secret-77aa"


v2_payload = partial(corsica_v2, "s3://ol-bucket/ndvi")


def extract(task, ti):
    from airflow.providers.openlineage.extractors.manager import ExtractorManager
    from airflow.utils.state import TaskInstanceState

    return ExtractorManager().extract_metadata(
        dagrun=SimpleNamespace(run_id=ti.run_id),
        task=task,
        task_instance_state=TaskInstanceState.SUCCESS,
        task_instance=ti,
    )


def as_event_json(metadata) -> dict:
    from openlineage.client.event_v2 import Job, Run, RunEvent, RunState
    from openlineage.client.serde import Serde

    event = RunEvent(
        eventType=RunState.COMPLETE,
        eventTime=datetime.now().astimezone().isoformat(),
        run=Run(runId=str(uuid.uuid4()), facets=metadata.run_facets),
        job=Job(namespace="default", name="ol.task"),
        inputs=metadata.inputs,
        outputs=metadata.outputs,
        producer="https://example.invalid/test",
    )
    return json.loads(Serde.to_json(event))


@pytest.fixture
def server(emulator):
    return emulator("v2", bucket_keys=("AKIAOL", BUCKET_SECRET), bucket_conn_id="ol_bucket")


def test_create_start_and_sensor_report_inputs_outputs_and_the_request(server):
    host = server.base_url.split("://", 1)[1]
    with DAG("ol", schedule=None, start_date=datetime(2024, 1, 1)):
        create = SentinelBatchCreateOperator(
            task_id="create", payload=v2_payload(), bucket_conn_id="ol_bucket"
        )
    ti = FakeTI("create", dag_id="ol", run_id="manual__ol")
    rid = create.execute({"ti": ti, "run_id": ti.run_id})

    created = extract(create, ti)
    assert [(d.namespace, d.name) for d in created.inputs] == [(f"sentinelhub://{host}", "S2L2A")]
    facet = created.inputs[0].facets["sentinelHubInput"]
    assert facet.bbox == [8.44, 41.31, 9.66, 43.1] and facet.timeFrom == "2019-04-01T00:00:00Z"
    assert [(d.namespace, d.name) for d in created.outputs] == [("s3://ol-bucket", f"ndvi/{rid}")]
    assert created.run_facets["externalQuery"].externalQueryId == rid
    assert created.run_facets["sentinelBatch"].apiVersion == "v2"

    with DAG("ol2", schedule=None, start_date=datetime(2024, 1, 1)):
        start = SentinelBatchStartOperator(task_id="start", request_id=rid)
        wait = SentinelBatchSensor(
            task_id="wait", request_id=rid, deferrable=False, results_url=server.data_dir.as_uri()
        )
    start.execute({"ti": FakeTI("start"), "run_id": "manual__ol"})
    assert extract(start, FakeTI("start")).run_facets["sentinelBatch"].requestId == rid

    hook = SentinelBatchHook()
    deadline = time.monotonic() + 60
    while hook.get_status(rid) != "DONE":
        assert time.monotonic() < deadline, hook.get_status(rid)
        time.sleep(0.1)
    done = wait.poke({"ti": FakeTI("wait"), "run_id": "manual__ol"})
    summary = done.xcom_value
    metadata = extract(wait, FakeTI("wait"))
    run = metadata.run_facets["sentinelBatch"]
    assert run.status == "DONE" and run.costPU == summary["cost_pu"] > 0
    assert run.done == summary["results"]["counts"]["done"] == run.total and run.failed == 0
    assert metadata.outputs[0].outputFacets["outputStatistics"].fileCount == run.done
    assert metadata.outputs[0].name == f"ndvi/{rid}"

    for item in (created, metadata):
        document = as_event_json(item)
        text = json.dumps(document)
        assert BUCKET_SECRET not in text and "AKIAOL" not in text and "evaluatePixel" not in text
        assert document["run"]["facets"]["sentinelBatch"]["requestId"] == rid
        assert document["run"]["facets"]["sentinelBatch"]["_schemaURL"].endswith("SentinelBatchRunFacet")
        assert document["inputs"][0]["facets"]["sentinelHubInput"]["bbox"] == [8.44, 41.31, 9.66, 43.1]


def test_a_sensor_that_never_finished_reads_the_request_for_lineage(server):
    rid = SentinelBatchHook().create_request(v2_payload())["id"]
    with DAG("ol3", schedule=None, start_date=datetime(2024, 1, 1)):
        wait = SentinelBatchSensor(task_id="wait", request_id=rid)
    metadata = extract(wait, FakeTI("wait"))
    assert [d.name for d in metadata.inputs] == ["S2L2A"]
    assert metadata.run_facets["sentinelBatch"].status == "CREATED"
