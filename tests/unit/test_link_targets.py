"""Where the extra links point: pages a browser opens (https, or the loopback emulator), per deployment."""

from __future__ import annotations

import pytest

from airflow_provider_sentinel_batch.deployments import DEPLOYMENTS, ConnectionSettings

RID = "5e1a2b3c-0000-4000-8000-000000000001"
CDSE_TOKEN = DEPLOYMENTS["copernicus-dataspace"].token_url
SH_TOKEN = DEPLOYMENTS["sentinel-hub-eu"].token_url


def settings(
    deployment: str, base_url: str | None = None, token_url: str | None = None
) -> ConnectionSettings:
    preset = DEPLOYMENTS.get(deployment)
    return ConnectionSettings(
        client_id="c",
        client_secret="s",
        base_url=base_url or preset.base_url,  # type: ignore[union-attr]
        token_url=token_url or preset.token_url,  # type: ignore[union-attr]
        deployment=deployment,
    )


@pytest.mark.parametrize(
    ("conn", "dashboard"),
    [
        (settings("sentinel-hub-eu"), "https://apps.sentinel-hub.com/dashboard/#/batch"),
        (settings("sentinel-hub-us"), "https://apps.sentinel-hub.com/dashboard/#/batch"),
        (settings("copernicus-dataspace"), "https://shapps.dataspace.copernicus.eu/dashboard/#/batch"),
        # custom URLs of a known host, or a proxy recognised by its token realm
        (
            settings("custom", "https://services.sentinel-hub.com", SH_TOKEN),
            "https://apps.sentinel-hub.com/dashboard/#/batch",
        ),
        (
            settings("custom", "https://sh-proxy.example.org", CDSE_TOKEN),
            "https://shapps.dataspace.copernicus.eu/dashboard/#/batch",
        ),
        # the emulator serves its own page
        (
            settings(
                "custom",
                "http://127.0.0.1:8787",
                "http://127.0.0.1:8787/auth/realms/main/protocol/openid-connect/token",
            ),
            "http://127.0.0.1:8787/dashboard/batch",
        ),
    ],
)
def test_dashboard_page_per_deployment(conn, dashboard):
    assert conn.dashboard_url == dashboard


def test_unknown_service_has_no_dashboard():
    conn = settings("custom", "https://batch.example.org", "https://login.example.org/oauth2/token")
    assert conn.dashboard_url is None and conn.output_page("s3://b/k/") is None


@pytest.mark.parametrize("deployment", ["sentinel-hub-eu", "sentinel-hub-us"])
def test_sentinel_hub_outputs_open_in_the_aws_console(deployment):
    page = settings(deployment).output_page(f"s3://my-bucket/ndvi/{RID}/")
    assert page == f"https://s3.console.aws.amazon.com/s3/buckets/my-bucket?prefix=ndvi%2F{RID}%2F"


def test_cdse_buckets_have_no_web_console():
    assert settings("copernicus-dataspace").output_page(f"s3://my-bucket/{RID}/") is None


def test_emulator_outputs_open_in_the_emulator():
    conn = settings("custom", "http://127.0.0.1:8787", "http://127.0.0.1:8787/token")
    assert (
        conn.output_page(f"s3://my-bucket/{RID}/")
        == f"http://127.0.0.1:8787/dashboard/outputs/my-bucket/{RID}/"
    )


@pytest.mark.parametrize("location", [None, "", "s3://", "file:///tmp/x", "gs://b/k"])
def test_no_page_for_what_a_browser_cannot_open(location):
    assert settings("sentinel-hub-eu").output_page(location) is None


def test_every_target_is_a_browser_url():
    for name in DEPLOYMENTS:
        conn = settings(name)
        for url in (conn.dashboard_url, conn.output_page("s3://b/k/")):
            assert url is None or url.startswith("https://")
