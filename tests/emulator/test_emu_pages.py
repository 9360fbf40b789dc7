"""The emulator's read-only pages: one per request (the dashboard's stand-in) and one per output location."""

from __future__ import annotations

import re

import requests

from tests.emulator.helpers import v1_payload, v2_payload


def page(emu, path: str) -> requests.Response:
    return requests.get(emu.base_url + path, timeout=10)  # no Authorization header: pages need none


def field(html: str, element_id: str) -> str:
    found = re.search(rf"id='{element_id}'[^>]*>([^<]*)<", html)
    assert found, f"no #{element_id} in {html}"
    return found.group(1)


def test_v2_request_page_shows_status_progress_cost_and_files(emu, api):
    rid = api.create(2, v2_payload())["id"]
    assert api.action(2, rid, "start").status_code == 204
    body, _ = api.wait(2, rid, {"DONE"}, timeout=30)
    response = page(emu, f"/dashboard/batch/{rid}")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert rid in html and "emulator test v2" in html and "Batch v2" in html
    assert field(html, "status") == "DONE" and field(html, "progress") == "100 %"
    assert field(html, "cost") == f"{body['costPU']:.2f} PU"
    assert "s3://my-bucket/v2/" in html
    tiff = re.findall(r"<code>([^<]+\.tiff)</code>", html)
    assert tiff and all("/" in name for name in tiff)  # <tileName>/default.tiff under the request folder
    assert "execution-" in html  # the v2 execution database sits in the same folder


def test_outputs_page_lists_what_the_emulator_wrote(emu, api):
    rid = api.create(1, v1_payload())["id"]
    assert api.action(1, rid, "start").status_code == 204
    api.wait(1, rid, {"DONE"}, timeout=30)
    html = page(emu, f"/dashboard/batch/{rid}").text
    link = re.search(r"<a id='outputs' href='([^']+)'", html)
    assert link and link.group(1) == f"/dashboard/outputs/my-bucket/{rid}/"
    listing = page(emu, link.group(1))
    assert listing.status_code == 200 and f"s3://my-bucket/{rid}/" in listing.text
    files = re.findall(r"<code>([^<]+\.tiff?)</code>", listing.text)
    written = sorted(
        str(p.relative_to(emu.data_dir / "my-bucket" / rid))
        for p in (emu.data_dir / "my-bucket" / rid).rglob("*")
        if p.is_file()
    )
    assert files and sorted(files) == [w for w in written if w.endswith((".tif", ".tiff"))]


def test_pages_escape_user_text(emu, api):
    rid = api.create(2, v2_payload(description="<script>alert(1)</script>"))["id"]
    html = page(emu, f"/dashboard/batch/{rid}").text
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_unknown_request_is_a_404_page(emu):
    response = page(emu, "/dashboard/batch/00000000-0000-4000-8000-000000000000")
    assert response.status_code == 404 and "No request" in response.text


def test_outputs_page_stays_inside_the_data_dir(emu):
    from airflow_provider_sentinel_batch.emulator import outputs, pages

    (emu.data_dir / "bucket-a" / "x").mkdir(parents=True, exist_ok=True)
    (emu.data_dir / "bucket-a" / "x" / "f.tif").write_bytes(b"1")
    assert pages._files(outputs.local_path(emu.data_dir, "s3://bucket-a/x/"), emu.data_dir)[1] == 1
    for location in ("s3://../../etc", "s3://%2e%2e/etc"):
        assert pages._files(outputs.local_path(emu.data_dir, location), emu.data_dir) == ([], 0)
    # dot segments are dropped: this is bucket-a itself, never a parent of the data dir
    assert pages._files(outputs.local_path(emu.data_dir, "s3://bucket-a/../../.."), emu.data_dir)[1] == 1
    for path in (
        "/dashboard/outputs/../../etc",
        "/dashboard/outputs/%2e%2e/%2e%2e/etc",
        "/dashboard/outputs/..",
    ):
        response = page(emu, path)
        assert response.status_code in (200, 404)
        assert "passwd" not in response.text and "outside-secret" not in response.text


def test_pages_are_not_api_calls(emu, api):
    rid = api.create(2, v2_payload())["id"]
    before = emu.stats()
    emu.set_faults(rate_5xx=1.0)  # pages are never faulted and need no token
    try:
        assert page(emu, f"/dashboard/batch/{rid}").status_code == 200
    finally:
        emu.clear_faults()
    after = emu.stats()
    assert after["calls"] == before["calls"]
