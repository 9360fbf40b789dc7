"""SentinelBatchStatisticalTableOperator against the emulator: the table, thresholds, status check, lineage."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from airflow_provider_sentinel_batch.exceptions import SentinelBatchConfigError, SentinelBatchJobError
from airflow_provider_sentinel_batch.hooks.sentinel_batch import SentinelBatchHook
from airflow_provider_sentinel_batch.operators.statistical import SentinelBatchStatisticalTableOperator
from tests.emulator.stat_helpers import stat_payload, write_parcels


@pytest.fixture
def done_request(sentinel_batch_emulator, monkeypatch):
    """A DONE Batch Statistical request over 10 parcels, 3 of which failed."""
    emu = sentinel_batch_emulator
    monkeypatch.setenv("AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT", emu.airflow_conn_json("v2"))
    write_parcels(emu.data_dir, count=10)
    emu.state.set_time_scale(1e-6)
    emu.state.queue_job_overrides(tile_failure_rate=0.3)
    hook = SentinelBatchHook()
    rid = hook.create_statistical_request(stat_payload())["id"]
    hook.start_statistical(rid)
    emu.advance(10_000)
    assert hook.get_statistical_status(rid)["status"] == "DONE"
    return rid


def operator(emu, rid: str, **kwargs) -> SentinelBatchStatisticalTableOperator:
    return SentinelBatchStatisticalTableOperator(
        task_id="table", request_id=rid, results_url=emu.data_dir.as_uri(), **kwargs
    )


def test_writes_the_table_and_reports_counts(sentinel_batch_emulator, done_request, tmp_path: Path) -> None:
    op = operator(sentinel_batch_emulator, done_request, table_path=str(tmp_path / "ndvi"), parquet=False)
    summary = op.execute({})
    counts = summary["counts"]
    assert (counts["features"], counts["ok"], counts["failed"]) == (10, 7, 3)
    assert summary["tables"] == [str(tmp_path / "ndvi.csv")]
    assert summary["location"] == f"s3://stat-bucket/stats/{done_request}/"
    assert summary["cost_pu"] >= 100 and summary["api_version"] == "statistical"
    assert [f["error"] for f in summary["failed"]] == ["FAILED"] * 3
    rows = list(csv.DictReader((tmp_path / "ndvi.csv").open()))
    assert len(rows) == counts["rows"] > 0
    assert {r["identifier"] for r in rows} <= {f"FIELD-{i:04d}" for i in range(1, 11)}
    assert "SK-secret" not in str(summary)

    lineage = op.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [("s3://stat-bucket", f"stats/{done_request}")]
    assert [(d.namespace, d.name) for d in lineage.outputs] == [("file", str(tmp_path / "ndvi.csv"))]
    assert lineage.outputs[0].outputFacets["outputStatistics"].rowCount == counts["rows"]
    facet = lineage.run_facets["sentinelBatch"]
    assert (facet.requestId, facet.apiVersion, facet.total, facet.failed) == (
        done_request,
        "statistical",
        10,
        3,
    )


def test_writes_parquet_with_the_same_rows_as_the_csv(sentinel_batch_emulator, done_request, tmp_path: Path):
    """pyarrow comes with the ``parquet`` extra (in the test extra): the default writes both files."""
    import pyarrow.parquet as pq

    summary = operator(sentinel_batch_emulator, done_request, table_path=str(tmp_path / "ndvi")).execute({})
    assert summary["tables"] == [str(tmp_path / "ndvi.csv"), str(tmp_path / "ndvi.parquet")]
    back = pq.read_table(tmp_path / "ndvi.parquet")
    rows = list(csv.DictReader((tmp_path / "ndvi.csv").open()))
    assert back.num_rows == len(rows) == summary["counts"]["rows"] > 0
    assert back.column_names == list(rows[0])
    # the CSV writes empty cells for missing values and text for numbers: compare in the CSV's spelling
    as_text = [{k: "" if v is None else str(v) for k, v in row.items()} for row in back.to_pylist()]
    numeric = {"min", "max", "mean", "stdev"} | {c for c in back.column_names if c.startswith("p")}
    for parquet_row, csv_row in zip(as_text, rows, strict=True):
        for column, value in csv_row.items():
            if column in numeric and value:
                assert float(parquet_row[column]) == float(value), column
            else:
                assert parquet_row[column] == value, column


def test_parquet_true_without_pyarrow_is_a_clear_error(sentinel_batch_emulator, done_request, monkeypatch):
    from airflow_provider_sentinel_batch import statistical_results

    monkeypatch.setattr(statistical_results, "parquet_available", lambda: False)
    op = operator(sentinel_batch_emulator, done_request, table_path="/nonexistent/t", parquet=True)
    with pytest.raises(SentinelBatchConfigError) as info:
        op.execute({})
    assert str(info.value) == (
        'parquet=True needs pyarrow: pip install "airflow-provider-sentinel-batch[parquet]" (or pyarrow)'
    )


def test_failure_thresholds(sentinel_batch_emulator, done_request) -> None:
    operator(sentinel_batch_emulator, done_request, max_failed_features=3).execute({})  # exactly at the limit
    with pytest.raises(SentinelBatchJobError) as info:
        operator(sentinel_batch_emulator, done_request, max_failed_fraction=0.2).execute({})
    message = str(info.value)
    assert message.startswith(
        f"Batch Statistical request {done_request}: 3 of 10 features failed, over max_failed_fraction=0.2 "
        "(30.0% failed). Failed: FIELD-"
    )
    with pytest.raises(SentinelBatchConfigError, match="within"):
        SentinelBatchStatisticalTableOperator(task_id="t", request_id="x", max_failed_fraction=5)


def test_refuses_a_request_that_is_not_done(sentinel_batch_emulator, monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT", sentinel_batch_emulator.airflow_conn_json("v2"))
    rid = SentinelBatchHook().create_statistical_request(stat_payload())["id"]
    with pytest.raises(SentinelBatchJobError, match="is CREATED, not DONE"):
        operator(sentinel_batch_emulator, rid).execute({})
