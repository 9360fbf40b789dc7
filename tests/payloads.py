"""Batch request bodies for tests and benchmarks: Sentinel Hub's Corsica max-NDVI example, v1 and v2.

The evalscript is ``dags_examples/include/max_ndvi.js`` (one copy, shared with the example DAGs). The v1 body is
the one of Sentinel Hub's "Batch processing workflow examples" (a 60 m max-NDVI mosaic of Corsica, April-June
2019, on tiling grid 0); the v2 body is the same job in v2's shape (``input`` tiling grid, ``output`` raster with
S3 delivery).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "dags_examples"
INCLUDE = EXAMPLES / "include"
EVALSCRIPT = (INCLUDE / "max_ndvi.js").read_text()

CORSICA_BBOX = [8.44, 41.31, 9.66, 43.1]
SMALL_BBOX = [9.0, 42.0, 9.1, 42.1]  # 1-4 tiles on grid 0: quick jobs
CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"

# The evalscript as printed on Sentinel Hub's workflow examples page, whose text lost the newlines (JavaScript
# needs one after //VERSION=3); the same script as EVALSCRIPT once white space is ignored.
PUBLISHED_EVALSCRIPT_FLAT = (
    '//VERSION=3function setup() {return {input: [{bands: ["B04", "B08"]}],output: [{id: "default",bands: 3}],'
    "mosaicking: Mosaicking.ORBIT}}function calcNDVI(sample) {var denom = sample.B04 + sample.B08return "
    "((denom != 0) ? (sample.B08 - sample.B04) / denom : 0.0)}const maxNDVIcolors = [[-0.2, 0xbfbfbf],"
    "[0, 0xebebeb],[0.1, 0xc8c682],[0.2, 0x91bf52],[0.4, 0x4f8a2e],[0.6, 0x0f540c]]const visualizer = new "
    "ColorRampVisualizer(maxNDVIcolors);function evaluatePixel(samples) {var max = 0for (var i = 0; i < "
    "samples.length; i++) {var ndvi = calcNDVI(samples[i])max = ndvi > max ? ndvi : max}ndvi = maxreturn "
    "visualizer.process(ndvi)}"
)


def process_request(
    bbox: list[float] | None = None,
    *,
    data_type: str = "S2L2A",
    max_cloud_coverage: float | None = 70.0,
    evalscript: str = EVALSCRIPT,
) -> dict[str, Any]:
    """The ``processRequest`` of the Corsica job (``bbox`` defaults to Corsica)."""
    data_filter: dict[str, Any] = {
        "timeRange": {"from": "2019-04-01T00:00:00Z", "to": "2019-06-30T00:00:00Z"}
    }
    if max_cloud_coverage is not None:
        data_filter["maxCloudCoverage"] = max_cloud_coverage
    return {
        "input": {
            "bounds": {"bbox": list(bbox or CORSICA_BBOX), "properties": {"crs": CRS84}},
            "data": [{"dataFilter": data_filter, "type": data_type}],
        },
        "output": {"responses": [{"identifier": "default", "format": {"type": "image/tiff"}}]},
        "evalscript": evalscript,
    }


def corsica_v1(
    bucket: str = "<MyBucket>",
    *,
    description: str = "Max NDVI over Corsica",
    **request: Any,
) -> dict[str, Any]:
    """The v1 create body of the Corsica job; ``request`` goes to :func:`process_request`."""
    return {
        "processRequest": process_request(**request),
        "tilingGrid": {"id": 0, "resolution": 60.0},
        "bucketName": bucket,
        "description": description,
    }


def corsica_v2(
    url: str,
    *,
    description: str = "Max NDVI over Corsica",
    delivery: dict[str, Any] | None = None,
    **request: Any,
) -> dict[str, Any]:
    """The v2 create body of the Corsica job, delivered to ``url`` (plus ``delivery`` fields such as keys)."""
    return {
        "processRequest": process_request(**request),
        "description": description,
        "input": {"type": "tiling-grid", "id": 0, "resolution": 60.0},
        "output": {"type": "raster", "delivery": {"s3": {"url": url, **(delivery or {})}}},
    }
