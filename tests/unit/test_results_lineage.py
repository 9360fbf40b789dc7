"""Result manifest, thresholds, asset-event extra and lineage facts: the pure parts, no Airflow run needed."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest

from airflow_provider_sentinel_batch import lineage, results
from airflow_provider_sentinel_batch.bucket import BucketReader, storage_options_from_connection
from airflow_provider_sentinel_batch.exceptions import SentinelBatchConfigError, SentinelBatchJobError
from airflow_provider_sentinel_batch.layout import output_layout
from airflow_provider_sentinel_batch.manifest import features_manifest, read_execution_db, tiles_manifest
from tests.payloads import corsica_v1

RID = "4f1d2c3b-aaaa-4bbb-8ccc-000000000042"


# ------------------------------------------------------------------------------------------ layouts
@pytest.mark.parametrize(
    ("version", "request_body", "template", "location"),
    [
        ("v1", {"bucketName": "b"}, f"s3://b/{RID}/<tileName>/<outputId>.<format>", f"s3://b/{RID}/"),
        (
            "v1",
            {"output": {"defaultTilePath": "s3://b/ndvi/<tileName>/<outputId>.<format>"}},
            "s3://b/ndvi/<tileName>/<outputId>.<format>",
            "s3://b/ndvi/",
        ),
        (
            "v1",
            {"output": {"defaultTilePath": "s3://b/x/<requestId>/<tileId>-<outputId>.<format>"}},
            f"s3://b/x/{RID}/<tileId>-<outputId>.<format>",
            f"s3://b/x/{RID}/",
        ),
        (
            "v2",
            {"request": {"output": {"type": "raster", "delivery": {"s3": {"url": "s3://b/v2"}}}}},
            f"s3://b/v2/{RID}/<tileName>/<outputId>.<format>",
            f"s3://b/v2/{RID}/",
        ),
        (
            "v2",
            {"output": {"type": "raster", "delivery": {"s3": {"url": "s3://b/<tileName>.<format>"}}}},
            "s3://b/<tileName>.<format>",
            "s3://b/",
        ),
    ],
)
def test_output_layout(version, request_body, template, location):
    layout = output_layout(version, request_body, RID)
    assert layout.template == template and layout.location == location


def test_paths_follow_the_template_per_response():
    body = corsica_v1("b")
    body["processRequest"]["output"]["responses"].append(
        {"identifier": "userdata", "format": {"type": "application/json"}}
    )
    layout = output_layout("v1", body, RID)
    assert layout.paths("31TNJ_0_1", 7) == [
        f"s3://b/{RID}/31TNJ_0_1/default.tif",
        f"s3://b/{RID}/31TNJ_0_1/userdata.json",
    ]


def test_credentials_in_a_url_never_reach_the_manifest():
    layout = output_layout(
        "v2", {"output": {"delivery": {"s3": {"url": "s3://AKIA:secret@b/p", "secretAccessKey": "s"}}}}, RID
    )
    assert "secret" not in repr(layout) and layout.location == f"s3://b/p/{RID}/"


# --------------------------------------------------------------------------------------- manifests
def tiles(statuses):
    return [{"id": i, "name": f"T{i}", "status": s} for i, s in enumerate(statuses)]


def test_tiles_manifest_counts_caps_and_failed_list():
    layout = output_layout("v1", {"bucketName": "b"}, RID)
    manifest = tiles_manifest(tiles(["PROCESSED"] * 5 + ["FAILED"] * 2 + ["PENDING"]), layout, 3)
    assert manifest["counts"] == {"total": 8, "done": 5, "failed": 2, "pending": 1}
    assert manifest["by_status"] == {"PROCESSED": 5, "FAILED": 2, "PENDING": 1}
    assert len(manifest["outputs"]) == 3 and manifest["outputs_truncated"]
    assert [f["name"] for f in manifest["failed"]] == ["T5", "T6"] and not manifest["failed_truncated"]
    assert manifest["failed_fraction"] == 0.25


def test_features_manifest_from_an_execution_database(tmp_path):
    db = tmp_path / f"execution-{RID}.sqlite"
    con = sqlite3.connect(db)
    con.execute(
        "CREATE TABLE features (id INTEGER PRIMARY KEY, name TEXT, status TEXT, error TEXT, delivered BOOLEAN)"
    )
    con.executemany(
        "INSERT INTO features VALUES (?, ?, ?, ?, ?)",
        [
            (1, "F1", "DONE", None, 1),
            (2, "F2", "FATAL", "boom", 0),
            (3, "F3", "FAILED", "bad", 0),
            (4, "F4", "DONE", "No data", 0),
            (5, "F5", "PENDING", None, 0),
        ],
    )
    con.commit()
    con.close()
    layout = output_layout("v2", {"output": {"delivery": {"s3": {"url": "s3://b/v2"}}}}, RID)
    manifest = features_manifest(read_execution_db(str(db)), layout, {"F1": ["s3://b/exact/F1.tif"]}, 100)
    assert manifest["counts"] == {"total": 5, "done": 2, "failed": 2, "pending": 1, "undelivered": 1}
    assert manifest["outputs"][0] == {"id": 1, "name": "F1", "paths": ["s3://b/exact/F1.tif"]}
    assert manifest["outputs"][1]["paths"] == [f"s3://b/v2/{RID}/F4/default.tif"]
    assert manifest["outputs"][1]["note"] == "No data" and manifest["outputs"][1]["delivered"] is False
    assert manifest["failed"] == [
        {"id": 2, "name": "F2", "error": "boom"},
        {"id": 3, "name": "F3", "error": "bad"},
    ]


def test_bucket_reader_maps_s3_onto_a_mirror(tmp_path):
    (tmp_path / "b" / "p").mkdir(parents=True)
    (tmp_path / "b" / "p" / "x.txt").write_text("hello")
    reader = BucketReader(tmp_path.as_uri())
    assert reader.resolve("s3://b/p/x.txt") == f"{tmp_path.as_uri()}/b/p/x.txt"
    assert reader.exists("s3://b/p/x.txt") and not reader.exists("s3://b/p/y.txt")
    with reader.local_copy("s3://b/p/x.txt") as path:
        assert Path(path).read_text() == "hello"


def test_storage_options_from_an_aws_style_connection():
    conn = SimpleNamespace(
        login="AKIA",
        password="s3cr3t",
        extra_dejson={
            "endpoint_url": "https://s3.example.eu",
            "region_name": "eu-1",
            "storage_options": {"anon": False},
        },
    )
    assert storage_options_from_connection(conn) == {
        "anon": False,
        "key": "AKIA",
        "secret": "s3cr3t",
        "client_kwargs": {"endpoint_url": "https://s3.example.eu", "region_name": "eu-1"},
    }


# -------------------------------------------------------------------------------------- thresholds
def manifest_with(failed, total, source="execution database"):
    return {
        "source": source,
        "counts": {"failed": failed, "total": total},
        "failed": [{"name": f"F{i}", "error": "x"} for i in range(failed)],
    }


@pytest.mark.parametrize(
    ("options", "failed", "raises"),
    [
        ({"max_failed_features": 2}, 2, False),
        ({"max_failed_features": 2}, 3, True),
        ({"max_failed_fraction": 0.1}, 10, False),
        ({"max_failed_fraction": 0.1}, 11, True),
        ({"max_failed_features": 0, "max_failed_fraction": 1.0}, 1, True),
        ({}, 100, False),
    ],
)
def test_thresholds(options, failed, raises):
    opts = results.ResultOptions(**options)
    if raises:
        with pytest.raises(SentinelBatchJobError, match="features failed, over max_failed_") as exc:
            results.check_thresholds(manifest_with(failed, 100), opts, RID)
        assert exc.value.request_id == RID
    else:
        results.check_thresholds(manifest_with(failed, 100), opts, RID)


@pytest.mark.parametrize(
    "bad",
    [
        {"max_failed_features": -1},
        {"max_failed_features": 1.5},
        {"max_failed_fraction": 1.5},
        {"manifest_limit": -1},
        {"result_manifest": "yes"},
        {"result_manifest": False, "max_failed_features": 0},
        {"results_storage_options": "anon=true"},
    ],
)
def test_bad_options_fail_at_parse_time(bad):
    with pytest.raises(SentinelBatchConfigError):
        results.ResultOptions(**bad)


def test_operators_and_sensor_take_the_options():
    from airflow_provider_sentinel_batch.operators.batch import SentinelBatchStartOperator
    from airflow_provider_sentinel_batch.sensors.batch import SentinelBatchSensor

    sensor = SentinelBatchSensor(task_id="w", request_id=RID, max_failed_fraction=0.1, manifest_limit=10)
    assert sensor.result_options == results.ResultOptions(max_failed_fraction=0.1, manifest_limit=10)
    start = SentinelBatchStartOperator(task_id="s", request_id=RID, results_url="file:///mirror")
    assert start.result_options.results_url == "file:///mirror"
    with pytest.raises(SentinelBatchConfigError):
        SentinelBatchSensor(task_id="w2", request_id=RID, max_failed_fraction=2)


def test_wants_manifest():
    assert results.ResultOptions().wants_manifest("v1")
    assert not results.ResultOptions().wants_manifest("v2")
    assert results.ResultOptions(results_url="file:///m").wants_manifest("v2")
    assert results.ResultOptions(max_failed_features=1).wants_manifest("v2")
    assert not results.ResultOptions(result_manifest=False).wants_manifest("v1")


# --------------------------------------------------------------------------------- assets / lineage
def test_asset_extra_is_small_and_has_the_request_facts():
    summary = {
        "request_id": RID,
        "api_version": "v2",
        "status": "DONE",
        "cost_pu": 12.5,
        "dashboard_url": "https://d/" + RID,
        "location": f"s3://b/v2/{RID}/",
        "description": "x" * 10_000,
        "results": {
            "source": "execution database",
            "location": f"s3://b/v2/{RID}/",
            "counts": {"total": 3, "done": 3, "failed": 0, "pending": 0},
            "outputs": [{"name": "F"}] * 1000,
            "execution_db": f"s3://b/v2/{RID}/execution-{RID}.sqlite",
        },
    }
    extra = lineage.asset_extra(summary)
    assert extra == {
        "request_id": RID,
        "api_version": "v2",
        "status": "DONE",
        "cost_pu": 12.5,
        "dashboard_url": "https://d/" + RID,
        "location": f"s3://b/v2/{RID}/",
        "unit": "features",
        "total": 3,
        "done": 3,
        "failed": 0,
        "pending": 0,
        "execution_db": f"s3://b/v2/{RID}/execution-{RID}.sqlite",
    }
    assert all(not isinstance(v, dict | list) for v in extra.values())  # 2.11 hashes alias-event extras
    assert lineage.asset_extra({"request_id": RID, "tiles": {"PROCESSED": 4, "FAILED": 1}}) == {
        "request_id": RID,
        "unit": "tiles",
        "total": 5,
        "done": 4,
        "failed": 1,
        "pending": 0,
    }


class FakeAccessor:
    def __init__(self):
        self.extra = {}
        self.added = []

    def add(self, asset, extra=None):
        self.added.append((asset, extra))


class FakeEvents(dict):
    def __missing__(self, key):
        self[key] = FakeAccessor()
        return self[key]


def test_emit_asset_events_fills_assets_and_adds_to_aliases():
    from airflow.providers.common.compat.sdk import Asset, AssetAlias

    product, alias = Asset("s3://b/ndvi"), AssetAlias("sentinel-batch")
    task_log = SimpleNamespace(info=print, warning=print)
    events = FakeEvents()
    done = lineage.emit_asset_events(
        [product, alias],
        {"outlet_events": events},
        {"request_id": RID, "location": "s3://b/ndvi/x/"},
        task_log,
    )
    assert len(done) == 2
    assert events[product].extra == {"request_id": RID, "location": "s3://b/ndvi/x/"}
    ((added, extra),) = events[alias].added
    assert added.uri.startswith("s3://b/ndvi/x") and extra["request_id"] == RID


def test_request_facts_whitelist_nothing_secret():
    body = {
        "id": RID,
        "status": "DONE",
        "costPU": 3.0,
        "request": {
            "processRequest": {
                "input": {
                    "bounds": {
                        "geometry": {"type": "Polygon", "coordinates": [[[1, 2], [3, 2], [3, 5], [1, 2]]]}
                    },
                    "data": [
                        {"type": "sentinel-2-l2a", "dataFilter": {"timeRange": {"from": "a", "to": "b"}}}
                    ],
                },
                "evalscript": "//VERSION=3 secret sauce",
            },
            "output": {
                "delivery": {"s3": {"url": "s3://b/p", "accessKey": "AKIA", "secretAccessKey": "SECRET"}}
            },
        },
    }
    facts = lineage.request_facts("v2", body, RID)
    assert facts["bbox"] == [1.0, 2.0, 3.0, 5.0]
    assert facts["collections"][0]["type"] == "sentinel-2-l2a" and facts["collections"][0]["time_to"] == "b"
    assert facts["location"] == f"s3://b/p/{RID}/" and facts["cost_pu"] == 3.0
    assert "SECRET" not in repr(facts) and "AKIA" not in repr(facts) and "sauce" not in repr(facts)


def test_openlineage_names():
    assert (
        lineage.namespace_for("https://services.sentinel-hub.com")
        == "sentinelhub://services.sentinel-hub.com"
    )
    assert lineage.namespace_for("http://127.0.0.1:8787") == "sentinelhub://127.0.0.1:8787"
    assert lineage.s3_dataset_name(f"s3://b/v2/{RID}/") == ("s3://b", f"v2/{RID}")
    assert lineage.s3_dataset_name("s3://b/") == ("s3://b", "/")


def test_lineage_module_is_import_light():
    """Operators and sensor add no OpenLineage, fsspec or sqlite import to DAG parsing (beyond Airflow's own)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from airflow.providers.common.compat.sdk import BaseOperator, BaseSensorOperator\n"
        "before = set(sys.modules)\n"
        "import airflow_provider_sentinel_batch.operators.batch, airflow_provider_sentinel_batch.sensors.batch\n"
        "heavy = ('openlineage', 'airflow.providers.openlineage', 'fsspec', 'sqlite3', 'attr', 'requests')\n"
        "print('NEW', sorted(m for m in set(sys.modules) - before if m.startswith(heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "NEW []" in out, out


def test_reading_s3_without_s3fs_says_what_to_install():
    try:
        import s3fs  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("s3fs is installed here")
    with pytest.raises(SentinelBatchConfigError, match=r"airflow-provider-sentinel-batch\[s3\]"):
        BucketReader(None).exists("s3://b/execution-x.sqlite")
