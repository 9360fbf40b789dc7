"""Payload validation: precise ``errors`` entries, v1/v2 shape rules, grids, resolutions, CRS, data types."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests.emulator.helpers import Api, v1_payload, v2_payload

Payload = dict[str, Any]


def _set(path: str, value: Any) -> Callable[[Payload], object]:
    def apply(p: Payload) -> None:
        *parents, last = path.split(".")
        node: Any = p
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value

    return apply


_DELETE = object()

V1_CASES: list[tuple[str, Callable[[Payload], object], str, str]] = [
    ("no evalscript", _set("processRequest.evalscript", _DELETE), "processRequest->evalscript", "required"),
    ("empty evalscript", _set("processRequest.evalscript", "  "), "processRequest->evalscript", "non-empty"),
    ("no bounds", _set("processRequest.input.bounds", _DELETE), "processRequest->input->bounds", "required"),
    (
        "bbox min > max",
        _set("processRequest.input.bounds.bbox", [9.66, 41.31, 8.44, 43.1]),
        "processRequest->input->bounds->bbox",
        "minX",
    ),
    (
        "bbox latitude out of range",
        _set("processRequest.input.bounds.bbox", [8.0, 41.0, 9.0, 95.0]),
        "processRequest->input->bounds->bbox",
        "latitudes",
    ),
    (
        "bbox wrong arity",
        _set("processRequest.input.bounds.bbox", [1, 2, 3]),
        "processRequest->input->bounds->bbox",
        "4 numbers",
    ),
    (
        "unknown CRS",
        _set("processRequest.input.bounds.properties.crs", "EPSG:4326"),
        "processRequest->input->bounds->properties->crs",
        "CRS84",
    ),
    (
        "unsupported EPSG",
        _set("processRequest.input.bounds.properties.crs", "http://www.opengis.net/def/crs/EPSG/0/2193"),
        "processRequest->input->bounds->properties->crs",
        "not supported",
    ),
    (
        "unknown data type",
        _set("processRequest.input.data.0.type", "sentinel-9"),
        "processRequest->input->data[0]->type",
        "unknown data collection",
    ),
    (
        "byoc without uuid",
        _set("processRequest.input.data.0.type", "byoc-not-a-uuid"),
        "processRequest->input->data[0]->type",
        "unknown data collection",
    ),
    (
        "bad time range",
        _set(
            "processRequest.input.data.0.dataFilter.timeRange",
            {"from": "2019-07-01T00:00:00Z", "to": "2019-06-01T00:00:00Z"},
        ),
        "processRequest->input->data[0]->dataFilter->timeRange",
        "after",
    ),
    ("no data", _set("processRequest.input.data", []), "processRequest->input->data", "non-empty"),
    (
        "width in output",
        _set("processRequest.output.width", 512),
        "processRequest->output->width",
        "only responses",
    ),
    (
        "bad format",
        _set("processRequest.output.responses.0.format.type", "image/webp"),
        "processRequest->output->responses[0]->format->type",
        "image/tiff",
    ),
    ("no output at all", _set("bucketName", _DELETE), "output", "one of output, bucketName or zarrOutput"),
    ("no tiling grid", _set("tilingGrid", _DELETE), "tilingGrid", "required"),
    (
        "unknown grid",
        _set("tilingGrid", {"id": 5, "resolution": 10.0}),
        "tilingGrid->id",
        "unknown tiling grid 5",
    ),
    (
        "resolution not allowed",
        _set("tilingGrid", {"id": 0, "resolution": 15.0}),
        "tilingGrid->resolution",
        "not allowed for tiling grid 0",
    ),
    (
        "negative buffer",
        _set("tilingGrid", {"id": 0, "resolution": 60.0, "bufferX": -1}),
        "tilingGrid->bufferX",
        "integer",
    ),
    (
        "v2 field in v1",
        _set("input", {"type": "tiling-grid", "id": 0, "resolution": 60.0}),
        "input",
        "Batch v2",
    ),
    (
        "output and bucketName",
        _set("output", {"defaultTilePath": "s3://b/<tileName>/<outputId>.<format>"}),
        "bucketName",
        "output and bucketName are mutually exclusive",
    ),
    (
        "zarr on a UTM grid",
        lambda p: (
            p.pop("bucketName"),
            p.update(zarrOutput={"path": "s3://b/zarr", "arrayParameters": {"dtype": "uint16"}}),
            p["processRequest"]["output"]["responses"][0]["format"].update(type="zarr/array"),
        ),
        "zarrOutput",
        "only supported on tiling grids 3, 6 and 7",
    ),
]


@pytest.mark.parametrize(("name", "mutate", "parameter", "violation"), V1_CASES, ids=[c[0] for c in V1_CASES])
def test_v1_validation_errors(
    api: Api, name: str, mutate: Callable[[Payload], object], parameter: str, violation: str
) -> None:
    payload = copy.deepcopy(v1_payload())
    mutate(payload)
    response = api.post("/api/v1/batch/process", json=payload)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["status"] == 400
    assert error["reason"] == "Bad Request"
    assert error["code"] == "COMMON_BAD_PAYLOAD"
    matching = [e for e in error["errors"] if e["parameter"] == parameter]
    assert matching, error["errors"]
    assert violation in matching[0]["violation"]


def test_v1_reports_all_violations_at_once(api: Api) -> None:
    payload = v1_payload()
    del payload["processRequest"]["evalscript"]
    payload["tilingGrid"] = {"id": 9, "resolution": 1.0}
    errors = api.post("/api/v1/batch/process", json=payload).json()["error"]["errors"]
    assert {e["parameter"] for e in errors} == {"processRequest->evalscript", "tilingGrid->id"}


V2_CASES: list[tuple[str, Callable[[Payload], object], str, str]] = [
    ("no input", _set("input", _DELETE), "input", "required"),
    ("v1 tilingGrid in v2", _set("tilingGrid", {"id": 0, "resolution": 60.0}), "tilingGrid", "Batch v2 uses"),
    ("v1 bucketName in v2", _set("bucketName", "b"), "bucketName", "not a Batch v2 field"),
    (
        "defaultTilePath in v2",
        _set("output.defaultTilePath", "s3://b/x"),
        "output->defaultTilePath",
        "delivery",
    ),
    ("no output", _set("output", _DELETE), "output", "required"),
    ("no delivery url", _set("output.delivery.s3.url", "https://b"), "output->delivery->s3->url", "s3://"),
    ("bad input type", _set("input.type", "shapefile"), "input->type", "tiling-grid, geopackage"),
    ("resolution not allowed", _set("input.resolution", 100.0), "input->resolution", "not allowed"),
    ("bad instance type", _set("instanceType", "huge"), "instanceType", "normal, large"),
    (
        "template without tile",
        _set("output.delivery.s3.url", "s3://b/<outputId>.tif"),
        "output->delivery->s3->url",
        "<tileName> or <tileId>",
    ),
    (
        "zarr on grid 0",
        lambda p: (
            p.update(output={"type": "zarr", "delivery": {"s3": {"url": "s3://b/z"}}, "arrayParameters": {}}),
            p["processRequest"]["output"]["responses"][0]["format"].update(type="zarr/array"),
        ),
        "output",
        "only supported on tiling grids 3, 6 and 7",
    ),
]


@pytest.mark.parametrize(("name", "mutate", "parameter", "violation"), V2_CASES, ids=[c[0] for c in V2_CASES])
def test_v2_validation_errors(
    api: Api, name: str, mutate: Callable[[Payload], object], parameter: str, violation: str
) -> None:
    payload = copy.deepcopy(v2_payload())
    mutate(payload)
    response = api.post("/api/v2/batch/process", json=payload)
    assert response.status_code == 400, response.text
    matching = [e for e in response.json()["error"]["errors"] if e["parameter"] == parameter]
    assert matching, response.json()
    assert violation in matching[0]["violation"]


@pytest.mark.parametrize(
    "data_type",
    [
        "S2L2A",
        "S2L1C",
        "sentinel-2-l2a",
        "sentinel-2-l1c",
        "sentinel-1-grd",
        "landsat-ot-l2",
        "dem",
        "byoc-3b2e1c3a-6a0e-4b8f-9c55-1a2b3c4d5e6f",
    ],
)
def test_accepted_data_types(api: Api, data_type: str) -> None:
    payload = v1_payload()
    payload["processRequest"]["input"]["data"][0]["type"] = data_type
    assert api.post("/api/v1/batch/process", json=payload).status_code == 201


def test_zarr_on_laea_and_wgs84_grids_and_geometry_in_utm(api: Api) -> None:
    payload = v2_payload([9.0, 42.0, 9.5, 42.5])
    payload["input"] = {"type": "tiling-grid", "id": 6, "resolution": 100.0}
    payload["output"] = {"type": "zarr", "delivery": {"s3": {"url": "s3://b/zarr"}}, "arrayParameters": {}}
    payload["processRequest"]["output"]["responses"][0]["format"]["type"] = "zarr/array"
    assert api.post("/api/v2/batch/process", json=payload).status_code == 201
    v1 = v1_payload(tilingGrid={"id": 3, "resolution": 0.0001})
    v1.pop("bucketName")
    v1["zarrOutput"] = {"path": "s3://b/zarr/<requestId>", "arrayParameters": {}}
    v1["processRequest"]["output"]["responses"][0]["format"]["type"] = "zarr/array"
    assert api.post("/api/v1/batch/process", json=v1).status_code == 201
    utm = v1_payload()
    utm["processRequest"]["input"]["bounds"] = {
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[500000, 4650000], [530000, 4650000], [515000, 4680000], [500000, 4650000]]],
        },
        "properties": {"crs": "http://www.opengis.net/def/crs/EPSG/0/32632"},
    }
    body = api.post("/api/v1/batch/process", json=utm).json()
    assert 2 <= body["tileCount"] <= 6


def test_geometry_errors_and_empty_bodies(api: Api) -> None:
    payload = v1_payload()
    payload["processRequest"]["input"]["bounds"] = {
        "geometry": {"type": "Polygon", "coordinates": [[[9, 42], [9.1, 42], [9.1, 42.1]]]}
    }
    errors = api.post("/api/v1/batch/process", json=payload).json()["error"]["errors"]
    assert errors[0]["parameter"] == "processRequest->input->bounds->geometry->coordinates[0]"
    assert "at least 4 positions" in errors[0]["violation"]
    empty = api.post("/api/v1/batch/process", data=b"", headers={"Content-Type": "application/json"})
    assert empty.status_code == 400
    assert empty.json()["error"]["message"] == "Request body should be non-empty."
    garbage = api.post(
        "/api/v1/batch/process", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert garbage.status_code == 400
    assert (
        api.post("/api/v1/batch/process", json={}).json()["error"]["message"]
        == "Request body should be non-empty."
    )


def test_aoi_outside_the_grid(api: Api) -> None:
    payload = v1_payload([-30.0, 85.0, -29.0, 86.0])  # beyond grid 0's 80.7 deg coverage
    response = api.post("/api/v1/batch/process", json=payload)
    assert response.status_code == 400
    assert "does not intersect tiling grid 0" in response.json()["error"]["errors"][0]["violation"]
