"""The Batch Statistical table written as CSV and Parquet and read back (pyarrow comes with the test extra)."""

from __future__ import annotations

import csv
from pathlib import Path

from airflow_provider_sentinel_batch.emulator.statistical import feature_statistics
from airflow_provider_sentinel_batch.statistical_results import parquet_available, read_table, write_table

MONTHS = [(f"2024-{m:02d}-01T00:00:00Z", f"2024-{m + 1:02d}-01T00:00:00Z") for m in range(4, 10)]
PERCENTILES = {"ndvi": {"statistics": {"default": {"percentiles": {"k": [0.1, 0.5, 0.9]}}}}}


def documents(count: int = 12) -> list[tuple[str, dict]]:
    """Per-feature files in the documented response shape (the emulator's synthetic statistics: some intervals
    cloudy, so ``"NaN"``), the last feature failed."""
    docs = []
    for fid in range(1, count + 1):
        response = {
            "status": "OK",
            "data": feature_statistics(
                seed=5,
                feature_id=fid,
                samples=40,
                intervals=MONTHS,
                outputs=[("ndvi", ["B0"])],
                calculations=PERCENTILES,
            ),
        }
        if fid == count:
            response = {"status": "FAILED", "data": None}
        docs.append((f"{fid}.json", {"id": fid, "identifier": f"FIELD-{fid}", "response": response}))
    return docs


def test_parquet_and_csv_hold_the_same_rows(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    assert parquet_available()
    table = read_table(request_id="R", output_url="s3://b/p", documents=documents())
    rows = table.rows
    assert len(rows) > 11 and [f["id"] for f in table.failed] == [12]
    assert any(r["mean"] is None for r in rows) and any(
        r["mean"] is not None for r in rows
    )  # NaN and numbers
    assert table.columns[-3:] == ["p10", "p50", "p90"]

    written = write_table(table, str(tmp_path / "out" / "stats.parquet"))  # the extension is cut, then both
    assert written == [str(tmp_path / "out" / "stats.csv"), str(tmp_path / "out" / "stats.parquet")]
    back = pq.read_table(written[1])
    assert back.column_names == table.columns
    assert back.to_pylist() == [{c: row.get(c) for c in table.columns} for row in rows]
    with open(written[0], newline="") as handle:
        text_rows = list(csv.DictReader(handle))
    assert text_rows == [
        {c: "" if row.get(c) is None else str(row[c]) for c in table.columns} for row in rows
    ]


def test_csv_only_when_asked(tmp_path: Path) -> None:
    table = read_table(request_id="R", output_url="s3://b/p", documents=documents(2))
    assert write_table(table, str(tmp_path / "t"), parquet=False) == [str(tmp_path / "t.csv")]
    assert not (tmp_path / "t.parquet").exists()
