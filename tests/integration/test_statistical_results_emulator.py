"""The Batch Statistical results table, read back from what the emulator delivered (local mirror of the bucket)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from airflow_provider_sentinel_batch.emulator import EmulatorServer
from airflow_provider_sentinel_batch.statistical_results import (
    file_pattern,
    parquet_available,
    percentile_column,
    read_table,
    write_table,
)
from tests.emulator.helpers import Api
from tests.emulator.stat_helpers import STAT, stat_payload, write_parcels


def run(emu: EmulatorServer, payload: dict, *, failure_rate: float = 0.0) -> str:
    api = Api(emu)
    response = api.post(STAT, json=payload, headers={"X-Emulator-Tile-Failure-Rate": str(failure_rate)})
    assert response.status_code == 201, response.text
    rid = response.json()["id"]
    api.post(f"{STAT}/{rid}/start")
    emu.advance(10_000)
    assert api.get(f"{STAT}/{rid}/status").json()["status"] == "DONE"
    return rid


@pytest.fixture
def emu(tmp_path: Path):
    with EmulatorServer(port=0, time_scale=1e-6, data_dir=tmp_path / "bucket-mirror", seed=11) as server:
        write_parcels(server.data_dir, count=6)
        yield server


def test_table_rows_failed_features_and_csv(emu: EmulatorServer, tmp_path: Path) -> None:
    rid = run(emu, stat_payload(), failure_rate=0.34)
    table = read_table(request_id=rid, output_url="s3://stat-bucket/stats", results_url=emu.data_dir.as_uri())
    counts = table.counts()
    assert counts["features"] == 6 and counts["failed"] == 2 and counts["ok"] == 4
    assert [f["error"] for f in table.failed] == ["FAILED", "FAILED"]
    assert table.columns[-3:] == ["p10", "p50", "p90"]
    # one row per feature x interval x output x band: ndvi has one band; intervals without data are left out
    files = {
        p.name: json.loads(p.read_text()) for p in (emu.data_dir / "stat-bucket" / "stats" / rid).iterdir()
    }
    expected = sum(len(d["response"]["data"]) for d in files.values() if d["response"]["status"] == "OK")
    assert counts["rows"] == expected > 0
    first = table.rows[0]
    doc = files[f"{first['feature_id']}.json"]
    stats = doc["response"]["data"][0]["outputs"]["ndvi"]["bands"]["B0"]["stats"]
    assert first["interval_from"] == doc["response"]["data"][0]["interval"]["from"]
    assert first["sample_count"] == stats["sampleCount"]
    assert first["mean"] == (None if stats["mean"] == "NaN" else stats["mean"])
    assert first["p50"] == (stats.get("percentiles") or {}).get("50.0")
    assert [r["feature_id"] for r in table.rows] == sorted(r["feature_id"] for r in table.rows)

    written = write_table(table, str(tmp_path / "out" / "ndvi_stats"), parquet=False)
    assert written == [str(tmp_path / "out" / "ndvi_stats.csv")]
    parsed = list(csv.DictReader(io.StringIO(Path(written[0]).read_text())))
    assert len(parsed) == counts["rows"] and list(parsed[0]) == table.columns
    assert parsed[0]["identifier"] == first["identifier"]


def test_only_this_requests_files_are_read(emu: EmulatorServer) -> None:
    template = "s3://stat-bucket/flat/<IDENTIFIER>-<REQUEST_ID>.json"
    payload = stat_payload(**{"output.s3": {"url": template}})
    first, second = run(emu, payload), run(emu, payload)
    assert len(list((emu.data_dir / "stat-bucket" / "flat").iterdir())) == 12
    table = read_table(request_id=second, output_url=template, results_url=emu.data_dir.as_uri())
    assert table.counts()["features"] == 6
    assert first != second


def test_no_results_yet_is_an_empty_table(emu: EmulatorServer) -> None:
    table = read_table(
        request_id="nope", output_url="s3://stat-bucket/stats", results_url=emu.data_dir.as_uri()
    )
    assert table.counts() == {
        "features": 0,
        "ok": 0,
        "failed": 0,
        "features_with_rows": 0,
        "rows": 0,
        "intervals": 0,
        "interval_errors": 0,
    }


def test_documented_shapes_of_failures() -> None:
    """The shapes the service's own client tests use: a failed response, an error instead of a response, and an
    interval with an error next to one with statistics."""
    docs = [
        ("3.json", {"id": 3, "identifier": "A", "response": {"data": None, "status": "FAILED"}}),
        ("4.json", {"id": 4, "identifier": "B", "error": {"type": "EXECUTION_ERROR"}}),
        (
            "5.json",
            {
                "id": 5,
                "identifier": "C",
                "response": {
                    "status": "OK",
                    "data": [
                        {"interval": {"from": "a", "to": "b"}, "error": {"type": "EXECUTION_ERROR"}},
                        {
                            "interval": {"from": "b", "to": "c"},
                            "outputs": {
                                "ndvi": {
                                    "bands": {
                                        "B0": {
                                            "stats": {
                                                "min": 0.1,
                                                "max": 0.9,
                                                "mean": "NaN",
                                                "stDev": 0.2,
                                                "sampleCount": 48,
                                                "noDataCount": 0,
                                                "percentiles": {"2.5": 0.11, "50.0": 0.4},
                                            }
                                        }
                                    }
                                }
                            },
                        },
                    ],
                },
            },
        ),
        ("6.json", "not json"),
    ]
    table = read_table(request_id="R", output_url="s3://b/p", documents=docs)
    assert table.failed == [
        {"id": 3, "identifier": "A", "error": "FAILED"},
        {"id": 4, "identifier": "B", "error": "EXECUTION_ERROR"},
        {"id": None, "identifier": None, "error": "unreadable file 6.json"},
    ]
    assert table.interval_errors == [
        {"id": 5, "identifier": "C", "interval_from": "a", "interval_to": "b", "error": "EXECUTION_ERROR"}
    ]
    assert table.rows == [
        {
            "feature_id": 5,
            "identifier": "C",
            "interval_from": "b",
            "interval_to": "c",
            "output": "ndvi",
            "band": "B0",
            "min": 0.1,
            "max": 0.9,
            "mean": None,
            "stdev": 0.2,
            "sample_count": 48,
            "no_data_count": 0,
            "p2.5": 0.11,
            "p50": 0.4,
        }
    ]
    assert table.to_csv().splitlines()[1] == "5,C,b,c,ndvi,B0,0.1,0.9,,0.2,48,0,0.11,0.4"


def test_helpers() -> None:
    assert percentile_column("50.0") == "p50" and percentile_column("2.5") == "p2.5"
    pattern = file_pattern("s3://b/stats", "R1")
    assert pattern.search("b/stats/R1/7.json") and not pattern.search("b/stats/R2/7.json")
    templated = file_pattern("s3://b/x/<IDENTIFIER>-<REQUEST_ID>.json", "R1")
    assert templated.search("b/x/FIELD-1-R1.json") and not templated.search("b/x/FIELD-1-R2.json")


def test_parquet_holds_the_same_rows_as_the_table(emu: EmulatorServer, tmp_path: Path) -> None:
    """pyarrow comes with the ``parquet`` extra (in the test extra): this runs, it never skips."""
    import pyarrow.parquet as pq

    assert parquet_available()
    rid = run(emu, stat_payload(), failure_rate=0.34)
    table = read_table(request_id=rid, output_url="s3://stat-bucket/stats", results_url=emu.data_dir.as_uri())
    written = write_table(table, str(tmp_path / "t"))
    assert written == [str(tmp_path / "t.csv"), str(tmp_path / "t.parquet")]
    back = pq.read_table(written[-1])
    assert back.column_names == table.columns
    expected = [{c: row.get(c) for c in table.columns} for row in table.rows]
    assert back.to_pylist() == expected and len(expected) == table.counts()["rows"] > 0
