"""The Batch Statistical table written as CSV and Parquet and read back (pyarrow comes with the test extra)."""

from __future__ import annotations

import csv
from pathlib import Path

from airflow_provider_sentinel_batch.statistical_results import parquet_available, read_table, write_table


def feature(fid: int, *, status: str = "OK", mean: object = 0.5) -> tuple[str, dict]:
    """One per-feature file in the documented response shape: two intervals, one output, one band."""
    data = [
        {
            "interval": {"from": f"2024-0{month}-01T00:00:00Z", "to": f"2024-0{month}-11T00:00:00Z"},
            "outputs": {
                "ndvi": {
                    "bands": {
                        "B0": {
                            "stats": {
                                "min": 0.1,
                                "max": 1,
                                "mean": mean,
                                "stDev": 0.2,
                                "sampleCount": 48,
                                "noDataCount": 3,
                                "percentiles": {"10.0": 0.2, "50.0": 0.45},
                            }
                        }
                    }
                }
            },
        }
        for month in (5, 6)
    ]
    return f"{fid}.json", {
        "id": fid,
        "identifier": f"FIELD-{fid}",
        "response": {"status": status, "data": data},
    }


def test_parquet_and_csv_hold_the_same_rows(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    assert parquet_available()
    docs = [feature(2, mean="NaN"), feature(1), feature(3, status="FAILED")]
    table = read_table(request_id="R", output_url="s3://b/p", documents=docs)
    assert table.counts()["rows"] == 4 and [f["id"] for f in table.failed] == [3]

    written = write_table(table, str(tmp_path / "out" / "stats.parquet"))  # the extension is cut, then both
    assert written == [str(tmp_path / "out" / "stats.csv"), str(tmp_path / "out" / "stats.parquet")]
    back = pq.read_table(written[1])
    assert back.column_names == table.columns
    assert back.to_pylist() == [{c: row.get(c) for c in table.columns} for row in table.rows]
    assert [(r["feature_id"], r["mean"], r["p50"]) for r in back.to_pylist()] == [
        (1, 0.5, 0.45),
        (1, 0.5, 0.45),
        (2, None, 0.45),
        (2, None, 0.45),
    ]
    with open(written[0], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["feature_id"], r["mean"], r["max"]) for r in rows] == [
        ("1", "0.5", "1"),
        ("1", "0.5", "1"),
        ("2", "", "1"),
        ("2", "", "1"),
    ]


def test_csv_only_when_asked(tmp_path: Path) -> None:
    table = read_table(request_id="R", output_url="s3://b/p", documents=[feature(1)])
    assert write_table(table, str(tmp_path / "t"), parquet=False) == [str(tmp_path / "t.csv")]
    assert not (tmp_path / "t.parquet").exists()
