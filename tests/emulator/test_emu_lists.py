"""Lists: pagination (``links.nextToken``, ``links.next``, ``{}`` at the end), ``search``, ``sort``, grids."""

from __future__ import annotations

import pytest

from tests.emulator.helpers import Api, v1_payload, v2_payload


def _create_many(api: Api, version: int, descriptions: list[str]) -> list[str]:
    ids = []
    for d in descriptions:
        payload = v1_payload(description=d) if version == 1 else v2_payload(description=d)
        ids.append(api.create(version, payload)["id"])
    return ids


@pytest.mark.parametrize("version", [1, 2])
def test_pagination_by_next_token_and_next_url(api: Api, version: int) -> None:
    ids = _create_many(api, version, [f"job {i}" for i in range(7)])
    path = f"/api/v{version}/batch/process"

    seen: list[str] = []
    params: dict[str, str | int] = {"count": 3}
    pages = 0
    while True:
        body = api.get(path, params=params).json()
        pages += 1
        seen += [j["id"] for j in body["data"]]
        if "nextToken" not in body["links"]:
            assert "next" not in body["links"]
            assert body["links"]["previousToken"] == "3"  # the spec's View: previous page links too
            assert body["links"]["previous"].startswith(api.server.base_url)
            break
        assert ("previousToken" in body["links"]) == (pages > 1)
        assert body["links"]["next"].startswith(api.server.base_url)
        params = {"count": 3, "viewtoken": body["links"]["nextToken"]}
    assert pages == 3
    assert seen == ids  # default order: created ascending

    followed: list[str] = []
    url: str | None = api.url(f"{path}?count=2")
    while url:
        body = api.get(url).json()
        followed += [j["id"] for j in body["data"]]
        url = body["links"].get("next")
    assert followed == ids


def test_default_page_size_and_count_cap(api: Api) -> None:
    body = api.get("/api/v1/batch/process").json()
    assert body == {"data": [], "links": {}}
    assert api.get("/api/v1/batch/process", params={"count": 0}).status_code == 400
    response = api.get("/api/v1/batch/process", params={"viewtoken": "garbage"})
    assert response.status_code == 400
    assert response.json()["error"]["errors"][0]["parameter"] == "viewtoken"


def test_search_or_and(api: Api) -> None:
    _create_many(api, 1, ["Max NDVI over Corsica", "NDVI over Sardinia", "Water mask Corsica", "other"])

    def search(q: str) -> list[str]:
        data = api.get("/api/v1/batch/process", params={"search": q}).json()["data"]
        return sorted(j["description"] for j in data)

    assert search("corsica") == ["Max NDVI over Corsica", "Water mask Corsica"]
    assert search("ndvi&corsica") == ["Max NDVI over Corsica"]
    assert search("sardinia|water") == ["NDVI over Sardinia", "Water mask Corsica"]
    assert search("ndvi & sardinia | other") == ["NDVI over Sardinia", "other"]


def test_sort(api: Api) -> None:
    ids = _create_many(api, 2, ["a", "b", "c"])
    api.action(2, ids[1], "analyse")

    def listed(sort: str) -> list[str]:
        return [j["id"] for j in api.get("/api/v2/batch/process", params={"sort": sort}).json()["data"]]

    assert listed("created") == ids
    assert listed("created:desc") == ids[::-1]
    assert listed("status")[0] == ids[1]  # ANALYSING sorts before CREATED
    statuses = [
        j["status"] for j in api.get("/api/v2/batch/process", params={"sort": "status:desc"}).json()["data"]
    ]
    assert statuses == sorted(statuses, reverse=True)
    bad = api.get("/api/v2/batch/process", params={"sort": "name"})
    assert bad.status_code == 400
    assert bad.json()["error"]["errors"][0]["parameter"] == "sort"


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_tiling_grids(api: Api, version: str) -> None:
    body = api.get(f"/api/{version}/batch/tilinggrids").json()
    grids = {g["id"]: g for g in body["data"]}
    assert sorted(grids) == [0, 1, 2, 3, 6, 7]
    assert body["links"] == {}
    assert grids[0] == {
        "id": 0,
        "name": "20km grid",
        "properties": {
            "tileWidth": 20040.0,
            "tileHeight": 20040.0,
            "resolutions": [10.0, 20.0, 30.0, 60.0],
            "unit": "METRE",
        },
    }
    assert grids[3]["properties"]["unit"] == "DEGREE"
    assert grids[6]["properties"]["resolutions"] == [40.0, 50.0, 100.0]
    page = api.get(f"/api/{version}/batch/tilinggrids", params={"count": 4}).json()
    assert len(page["data"]) == 4
    assert page["links"]["nextToken"] == "4"
    assert api.get(f"/api/{version}/batch/tilinggrids/7").json()["name"] == "LAEA 20km grid"
    assert api.get(f"/api/{version}/batch/tilinggrids/5").status_code == 400


def test_collections(api: Api) -> None:
    created = api.post("/api/v1/batch/collections", json={"name": "ndvi", "s3Bucket": "my-bucket"})
    assert created.status_code == 201
    cid = created.json()["data"]["id"]
    assert api.get(f"/api/v1/batch/collections/{cid}").json()["data"]["name"] == "ndvi"
    assert api.put(f"/api/v1/batch/collections/{cid}", json={"name": "ndvi2"}).status_code == 204
    listing = api.get("/api/v1/batch/collections", params={"search": "ndvi2"}).json()
    assert [c["id"] for c in listing["data"]] == [cid]
    assert api.delete(f"/api/v1/batch/collections/{cid}").status_code == 204
    assert api.get(f"/api/v1/batch/collections/{cid}").status_code == 404


def test_collection_tiling_grid_is_an_integer_or_absent(api: Api) -> None:
    """The spec types ``batchData.tilingGridId`` as an integer: never null; set once a request uses it."""
    cid = api.post("/api/v1/batch/collections", json={"name": "c", "s3Bucket": "my-bucket"}).json()["data"][
        "id"
    ]
    assert api.get(f"/api/v1/batch/collections/{cid}").json()["data"]["batchData"] == {}
    payload = v1_payload()
    del payload["bucketName"]
    payload["tilingGrid"] = {"id": 1, "resolution": 10.0}
    payload["output"] = {
        "defaultTilePath": "s3://my-bucket/<tileName>/<outputId>.tif",
        "cogOutput": True,
        "collectionId": cid,
    }
    api.create(1, payload)
    assert api.get(f"/api/v1/batch/collections/{cid}").json()["data"]["batchData"] == {"tilingGridId": 1}
    listed = api.get("/api/v1/batch/collections").json()["data"]
    assert [c["batchData"] for c in listed] == [{"tilingGridId": 1}]
