"""The Batch Statistical example DAG (``ndvi_statistics_per_field``) runs to success with ``dag.test()`` against
the emulator, as shipped: staging the synthetic Corsica fields, create → analyse → start → wait → table."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from airflow_provider_sentinel_batch.emulator.geopackage import read_features

pytestmark = [pytest.mark.integration, pytest.mark.sentinel_batch_emulator(time_scale=100)]

ROOT = Path(__file__).resolve().parents[2]
DAG_FILE = ROOT / "dags_examples" / "ndvi_statistics_per_field.py"
INCLUDE = ROOT / "dags_examples" / "include"
BUCKET_SECRET = "canary-stat-example-secret-91c4"


def test_shipped_fields_are_small_synthetic_polygons() -> None:
    path = INCLUDE / "corsica_parcels_synthetic.gpkg"
    assert path.stat().st_size < 100_000
    layer = read_features(path)
    assert layer.epsg == 4326 and len(layer.features) == 24
    assert all(f.identifier and f.identifier.startswith("SYNTHETIC-CORSICA-") for f in layer.features)
    for f in layer.features:  # on the eastern plain of Corsica
        assert 9.4 < f.bbox[0] < f.bbox[2] < 9.6 and 42.0 < f.bbox[1] < f.bbox[3] < 42.2


def test_example_dag_end_to_end(dag_runner, sentinel_batch_emulator, tmp_path: Path) -> None:
    emu = sentinel_batch_emulator
    env = {
        "AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT": emu.airflow_conn_json("v2"),
        "AIRFLOW_CONN_SENTINEL_BATCH_BUCKET": json.dumps(
            {"conn_type": "aws", "login": "example-access-key", "password": BUCKET_SECRET}
        ),
        "AIRFLOW_VAR_SENTINEL_BATCH_BUCKET": "stat-example",
        "AIRFLOW_VAR_SENTINEL_BATCH_RESULTS_URL": emu.data_dir.as_uri(),
        "AIRFLOW_VAR_SENTINEL_BATCH_TABLE_DIR": str(tmp_path / "tables"),
        "SENTINEL_BATCH_POLL_INTERVAL": "0.2",
        "SENTINEL_BATCH_ANALYSIS_POLL_INTERVAL": "0.1",
    }
    result = dag_runner(
        DAG_FILE,
        "ndvi_statistics_per_field",
        support_files=[INCLUDE],
        env=env,
        logical_date=datetime(2025, 6, 1, tzinfo=UTC),
    )
    assert result.succeeded, result.describe()
    assert result.task_states["stop_on_failure"] == "skipped"
    rid = result.xcom("create")
    assert (emu.data_dir / "stat-example" / "fields" / "corsica_parcels_synthetic.gpkg").exists()
    request = emu.state.stat_requests[rid].body
    assert request["aggregation"]["evalscript"].startswith("//VERSION=3")
    interval = request["aggregation"]["timeRange"]
    assert interval["from"].startswith("2025-05-01") and interval["to"].startswith("2025-06-01")
    done = result.xcom("wait_for_done")
    assert done["status"] == "DONE" and done["api_version"] == "statistical"
    table = result.xcom("table")
    assert table["counts"]["features"] == 24 and table["counts"]["failed"] == 0
    assert table["counts"]["intervals"] >= 3  # 10-day intervals of May
    csv_path = tmp_path / "tables" / "ndvi_per_field_2025-05.csv"
    assert table["tables"][0] == str(csv_path)
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == table["counts"]["rows"]
    assert {r["identifier"] for r in rows} <= {f"SYNTHETIC-CORSICA-{i:04d}" for i in range(1, 25)}
    line = result.xcom("summary")
    assert line["output_location"] == f"s3://stat-example/ndvi-statistics/2025-05/{rid}/"
    assert (line["fields"], line["failed_fields"], line["rows"]) == (24, 0, table["counts"]["rows"])
    assert emu.stats()["jobs_created"] == 1
    for task in result.tasks.values():
        assert BUCKET_SECRET not in task.log, task.task_id
        assert BUCKET_SECRET not in json.dumps(task.xcom, default=str), task.task_id
