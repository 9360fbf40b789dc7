"""Local payload validation: each mistake gets a message that says what to change."""

from __future__ import annotations

import copy
from functools import partial

import pytest

from airflow_provider_sentinel_batch.exceptions import SentinelBatchValidationError
from airflow_provider_sentinel_batch.validation import validate_payload
from tests.payloads import corsica_v1, corsica_v2

from .conftest import GRIDS

v2_payload = partial(corsica_v2, "s3://bucket/corsica")


def _mutate(payload, path, value):
    payload = copy.deepcopy(payload)
    *parents, last = path.split(".")
    node = payload
    for part in parents:
        node = node[part]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return payload


BAD_V1 = [
    ("processRequest.input.bounds.bbox", [9.66, 41.31, 8.44, 43.1], "has min >= max"),
    ("processRequest.input.bounds.bbox", [8.44, 41.31, 190.0, 43.1], "outside lon -180..180"),
    ("processRequest.input.bounds.bbox", [1, 2, 3], "must be [minX, minY, maxX, maxY]"),
    ("processRequest.input.bounds.properties.crs", "EPSG:4326", "is not a CRS Sentinel Hub accepts"),
    ("processRequest.evalscript", KeyError, "processRequest.evalscript is missing or empty"),
    ("processRequest.evalscript", "   ", "processRequest.evalscript is missing or empty"),
    ("processRequest.input.data", [], "must list at least one data collection"),
    ("processRequest.input.data", [{"dataFilter": {}}], "processRequest.input.data[0].type is missing"),
    ("processRequest", KeyError, "'processRequest' is missing"),
    ("tilingGrid", KeyError, "'tilingGrid' is missing"),
    ("tilingGrid.id", KeyError, "tilingGrid.id is missing"),
    ("tilingGrid.resolution", -5, "must be a positive number"),
    ("bucketName", KeyError, "no output location"),
    ("input", {"type": "tiling-grid", "id": 0, "resolution": 60}, "belong to Batch v2"),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD_V1)
def test_v1_mistakes(path, value, message):
    with pytest.raises(SentinelBatchValidationError) as exc:
        validate_payload(_mutate(corsica_v1(), path, value), "v1")
    assert message in str(exc.value)
    assert "nothing was sent" in str(exc.value)


BAD_V2 = [
    ("tilingGrid", {"id": 0, "resolution": 60.0}, "tilingGrid belong to Batch v1"),
    ("bucketName", "b", "bucketName belong to Batch v1"),
    ("output.delivery", KeyError, "output.delivery.s3.url is missing"),
    ("output", KeyError, "'output' must be"),
    ("input", KeyError, "'input' must be"),
    ("input", {"type": "geopackage"}, "input.features.s3 is missing"),
    ("output.type", "zarr", "zarr output needs a WGS84 or LAEA grid (3, 6 or 7), not grid 0"),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD_V2)
def test_v2_mistakes(path, value, message):
    with pytest.raises(SentinelBatchValidationError, match=None) as exc:
        validate_payload(_mutate(v2_payload(), path, value), "v2")
    assert message in str(exc.value)


def test_grid_zero_is_a_real_grid():
    validate_payload(corsica_v1(), "v1", grids=GRIDS["data"])
    validate_payload(v2_payload(), "v2", grids=GRIDS["data"])


def test_v1_zarr_on_utm_grid_rejected():
    payload = corsica_v1()
    del payload["bucketName"]
    payload["zarrOutput"] = {"path": "s3://b/zarr"}
    with pytest.raises(SentinelBatchValidationError, match=r"zarrOutput needs a WGS84 or LAEA grid"):
        validate_payload(payload, "v1")
    payload["tilingGrid"] = {"id": 6, "resolution": 100.0}
    validate_payload(payload, "v1", grids=GRIDS["data"])


def test_all_problems_reported_at_once():
    payload = _mutate(_mutate(corsica_v1(), "bucketName", KeyError), "processRequest.evalscript", KeyError)
    with pytest.raises(SentinelBatchValidationError) as exc:
        validate_payload(payload, "v1")
    assert len(exc.value.problems) == 2


def test_non_dict_payload():
    with pytest.raises(SentinelBatchValidationError, match="must be a JSON object"):
        validate_payload("[]", "v1")
