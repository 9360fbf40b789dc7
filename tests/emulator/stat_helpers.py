"""Helpers for Batch Statistical tests: a GeoPackage of synthetic parcels in the emulator's bucket, payloads."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from airflow_provider_sentinel_batch.emulator.geopackage import synthetic_parcels, write_geopackage

STAT = "/api/v1/statistics/batch"
GPKG_URL = "s3://stat-bucket/input/parcels.gpkg"
OUTPUT_URL = "s3://stat-bucket/stats"
NDVI_EVALSCRIPT = """//VERSION=3
function setup() {
  return {
    input: [{bands: ["B04", "B08", "dataMask"]}],
    output: [{id: "ndvi", bands: 1, sampleType: "FLOAT32"}, {id: "dataMask", bands: 1}]
  }
}
function evaluatePixel(samples) {
  return {ndvi: [index(samples.B08, samples.B04)], dataMask: [samples.dataMask]}
}
"""


def write_parcels(data_dir: Path, count: int = 6, url: str = GPKG_URL) -> Path:
    """Synthetic parcels at ``url`` (mapped into ``data_dir``); returns the local path."""
    path = data_dir.joinpath(*url[len("s3://") :].split("/"))
    write_geopackage(path, synthetic_parcels(count))
    return path


def stat_payload(**changes: Any) -> dict[str, Any]:
    """A valid Batch Statistical payload: monthly NDVI statistics, April to June 2024, at 10 m."""
    payload: dict[str, Any] = {
        "input": {
            "features": {"s3": {"url": GPKG_URL, "accessKey": "AK", "secretAccessKey": "SK-secret"}},
            "data": [{"type": "sentinel-2-l2a", "dataFilter": {"mosaickingOrder": "leastCC"}}],
        },
        "aggregation": {
            "timeRange": {"from": "2024-04-01T00:00:00Z", "to": "2024-07-01T00:00:00Z"},
            "aggregationInterval": {"of": "P1M"},
            "evalscript": NDVI_EVALSCRIPT,
            "resx": 10,
            "resy": 10,
        },
        "calculations": {
            "ndvi": {
                "statistics": {"default": {"percentiles": {"k": [0.1, 0.5, 0.9]}}},
                "histograms": {"default": {"nBins": 4, "lowEdge": -1.0, "highEdge": 1.0}},
            }
        },
        "output": {"s3": {"url": OUTPUT_URL, "accessKey": "AK", "secretAccessKey": "SK-secret"}},
    }
    payload = copy.deepcopy(payload)
    for dotted, value in changes.items():
        target = payload
        *parents, last = dotted.split(".")
        for key in parents:
            target = target[key]
        if value is _DROP:
            target.pop(last, None)
        else:
            target[last] = value
    return payload


class _Drop:
    def __repr__(self) -> str:
        return "DROP"


_DROP = _Drop()
DROP: Any = _DROP
"""``stat_payload(**{"aggregation.evalscript": DROP})`` removes a key."""
