"""Batch Statistical results as one tidy table: the per-feature JSON files of a request, read back and flattened.

One row per feature, interval, output and band, with the band's statistics as columns (``min``, ``max``,
``mean``, ``stdev``, ``sample_count``, ``no_data_count`` and one ``p<k>`` column per requested percentile,
e.g. ``p50``); a statistic the service reports as ``"NaN"`` (no valid pixel) is empty. Features whose file
says they failed go to a separate list, as do intervals the service reports an error for.

Files are read through fsspec, like the Batch v2 result manifest: ``s3://`` with the ``s3`` extra (and
``storage_options`` from an Airflow connection), or a local mirror of the bucket (``results_url``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_sentinel_batch.statistical import OUTPUT_PLACEHOLDERS, output_root

BASE_COLUMNS = (
    "feature_id",
    "identifier",
    "interval_from",
    "interval_to",
    "output",
    "band",
    "min",
    "max",
    "mean",
    "stdev",
    "sample_count",
    "no_data_count",
)
_STATS = (("min", "min"), ("max", "max"), ("mean", "mean"), ("stDev", "stdev"))


def file_pattern(output_url: str, request_id: str) -> re.Pattern[str]:
    """Matches the object paths (without scheme) of one request's per-feature files."""
    template = output_url
    if not any(p in template for p in OUTPUT_PLACEHOLDERS):
        template = template.rstrip("/") + "/<REQUEST_ID>/<ID>.json"
    template = template.split("://", 1)[-1]
    parts = re.split(r"(<REQUEST_ID>|<ID>|<IDENTIFIER>)", template)
    regex = ""
    for part in parts:
        if part == "<REQUEST_ID>":
            regex += re.escape(request_id)
        elif part in ("<ID>", "<IDENTIFIER>"):
            regex += "[^/]+"
        else:
            regex += re.escape(part)
    return re.compile(regex + "$")


def percentile_column(key: str) -> str:
    """``"50.0"`` → ``p50``, ``"2.5"`` → ``p2.5`` (the service keys percentiles by 100 k)."""
    try:
        value = float(key)
    except ValueError:
        return f"p{key}"
    return f"p{value:g}"


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return None if isinstance(value, float) and math.isnan(value) else value
    if isinstance(value, str):
        try:
            parsed = float(value)
        except ValueError:
            return None
        return None if math.isnan(parsed) else parsed
    return None


@dataclass
class StatisticsTable:
    """The flattened results of one request: ``rows``, ``failed`` features, ``interval_errors``."""

    request_id: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    interval_errors: list[dict[str, Any]] = field(default_factory=list)
    features: int = 0
    percentile_columns: list[str] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        """The table's column names: the fixed ones, then one per percentile found."""
        return [*BASE_COLUMNS, *self.percentile_columns]

    def counts(self) -> dict[str, int]:
        """Figures for the task summary: features read, ok and failed, rows, intervals, interval errors."""
        ok_ids = {r["feature_id"] for r in self.rows}
        return {
            "features": self.features,
            "ok": self.features - len(self.failed),
            "failed": len(self.failed),
            "features_with_rows": len(ok_ids),
            "rows": len(self.rows),
            "intervals": len({(r["interval_from"], r["interval_to"]) for r in self.rows}),
            "interval_errors": len(self.interval_errors),
        }

    def add_feature(self, doc: Any, source: str) -> None:
        """Flatten one per-feature document (the documented response shape) into rows, or note a failure."""
        self.features += 1
        if not isinstance(doc, Mapping):
            self.failed.append({"id": None, "identifier": None, "error": f"unreadable file {source}"})
            return
        fid, ident = doc.get("id"), doc.get("identifier")
        response = doc.get("response")
        error = doc.get("error")
        if (
            error is not None
            or not isinstance(response, Mapping)
            or response.get("status") not in (None, "OK")
        ):
            reason = (
                (error.get("type") or error.get("message")) if isinstance(error, Mapping) else error
            ) or (response.get("status") if isinstance(response, Mapping) else None)
            self.failed.append({"id": fid, "identifier": ident, "error": str(reason or "FAILED")})
            return
        for item in response.get("data") or []:
            interval = item.get("interval") or {}
            start, end = interval.get("from"), interval.get("to")
            if item.get("error") is not None:
                err = item["error"]
                kind = err.get("type") if isinstance(err, Mapping) else err
                self.interval_errors.append(
                    {
                        "id": fid,
                        "identifier": ident,
                        "interval_from": start,
                        "interval_to": end,
                        "error": kind,
                    }
                )
                continue
            for output, out in (item.get("outputs") or {}).items():
                for band, values in ((out or {}).get("bands") or {}).items():
                    stats = (values or {}).get("stats") or {}
                    row: dict[str, Any] = {
                        "feature_id": fid,
                        "identifier": ident,
                        "interval_from": start,
                        "interval_to": end,
                        "output": output,
                        "band": band,
                    }
                    for key, column in _STATS:
                        row[column] = _number(stats.get(key))
                    row["sample_count"] = _number(stats.get("sampleCount"))
                    row["no_data_count"] = _number(stats.get("noDataCount"))
                    for key, value in (stats.get("percentiles") or {}).items():
                        column = percentile_column(str(key))
                        if column not in self.percentile_columns:
                            self.percentile_columns.append(column)
                        row[column] = _number(value)
                    self.rows.append(row)

    def sort(self) -> None:
        """Order the rows by feature, interval and output, so a table reads the same every time."""

        def key(row: Mapping[str, Any]) -> tuple[Any, ...]:
            fid = row["feature_id"]
            return (
                (0, fid, "") if isinstance(fid, int) else (1, 0, str(fid)),
                str(row["interval_from"]),
                str(row["output"]),
                str(row["band"]),
            )

        self.rows.sort(key=key)
        self.failed.sort(
            key=lambda f: (
                f["id"] is None,
                not isinstance(f["id"], int),
                f["id"] if f["id"] is not None else 0,
            )
        )
        self.percentile_columns.sort(key=lambda c: _number(c[1:]) or 0.0)

    def to_csv(self) -> str:
        """The table as CSV text (header first; empty cells for missing values)."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in self.columns})
        return buffer.getvalue()

    def to_parquet_bytes(self) -> bytes:
        """The table as Parquet (needs pyarrow)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = {c: [row.get(c) for row in self.rows] for c in self.columns}
        table = pa.table(columns)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        return bytes(sink.getvalue().to_pybytes())


def parquet_available() -> bool:
    """Whether pyarrow is installed (Parquet output needs it)."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


def read_table(
    *,
    request_id: str,
    output_url: str,
    results_url: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    documents: Iterable[tuple[str, Any]] | None = None,
) -> StatisticsTable:
    """Read every per-feature file of ``request_id`` (under ``output_url``'s root) into a table.

    ``documents`` (``(name, parsed JSON)`` pairs) skips the bucket, for tests and callers that have the files.
    """
    table = StatisticsTable(request_id=request_id)
    if documents is None:
        documents = _read_documents(request_id, output_url, results_url, storage_options)
    for name, doc in documents:
        table.add_feature(doc, name)
    table.sort()
    return table


def statistical_manifest(
    request_id: str, request: Mapping[str, Any], reader: Any, limit: int
) -> dict[str, Any]:
    """The result manifest of a DONE Batch Statistical request, from its per-feature files in the bucket.

    Same keys as the Batch v2 manifest (``counts`` ``total``/``done``/``failed``/``pending``, ``failed`` with
    ``id``/``name``/``error``), so failure thresholds, asset extras and lineage read it alike; plus ``rows``.
    """
    from airflow_provider_sentinel_batch.statistical import output_url

    url = output_url(request)
    if not url:
        raise ValueError(f"Batch Statistical request {request_id} has no output.s3.url")
    table = read_table(request_id=request_id, output_url=url, documents=_documents(reader, request_id, url))
    counts = table.counts()
    failed = [
        {"id": f.get("id"), "name": str(f.get("identifier") or f.get("id")), "error": f.get("error")}
        for f in table.failed
    ]
    return {
        "source": "per-feature files",
        "location": output_root(url, request_id),
        "path_template": file_pattern(url, request_id).pattern,
        "counts": {
            "total": counts["features"],
            "done": counts["ok"],
            "failed": counts["failed"],
            "pending": 0,
        },
        "rows": counts["rows"],
        "intervals": counts["intervals"],
        "interval_errors": counts["interval_errors"],
        "failed": failed[:limit],
        "failed_truncated": len(failed) > limit,
        "outputs": [],
        "limit": limit,
    }


def _read_documents(
    request_id: str, output_url: str, results_url: str | None, storage_options: Mapping[str, Any] | None
) -> Iterable[tuple[str, Any]]:
    from airflow_provider_sentinel_batch.bucket import BucketReader

    return _documents(BucketReader(results_url, storage_options), request_id, output_url)


def _documents(reader: Any, request_id: str, output_url: str) -> list[tuple[str, Any]]:
    root = output_root(output_url, request_id)
    fs, path = reader._fs(root)
    pattern = file_pattern(output_url, request_id)
    if not fs.exists(path):
        return []
    prefix = root.split("://", 1)[-1]
    found = []
    for entry in sorted(fs.find(path)):
        relative = str(entry)[len(str(path).rstrip("/")) :].lstrip("/")
        candidate = prefix.rstrip("/") + "/" + relative
        if not pattern.search(candidate):
            continue
        with fs.open(entry, "rb") as handle:
            raw = handle.read()
        try:
            doc: Any = json.loads(raw)
        except ValueError:
            doc = None
        found.append((candidate, doc))
    return found


def write_table(
    table: StatisticsTable,
    path: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    parquet: bool | None = None,
) -> list[str]:
    """Write ``<path>.csv`` (and ``<path>.parquet`` when pyarrow is installed, or ``parquet=True``).

    ``path`` is a local path or an fsspec URL without extension (``.csv``/``.parquet`` are appended; a path
    that already ends in one of them is cut first). Returns the written locations.
    """
    import fsspec

    base = re.sub(r"\.(csv|parquet)$", "", path)
    options = dict(storage_options or {})
    written = []
    outputs: list[tuple[str, bytes]] = [(base + ".csv", table.to_csv().encode("utf-8"))]
    if parquet or (parquet is None and parquet_available()):
        outputs.append((base + ".parquet", table.to_parquet_bytes()))
    for location, data in outputs:
        fs, target = fsspec.core.url_to_fs(location, **options)
        parent = fs._parent(target)
        if parent:
            fs.makedirs(parent, exist_ok=True)
        with fs.open(target, "wb") as handle:
            handle.write(data)
        written.append(location)
    return written
