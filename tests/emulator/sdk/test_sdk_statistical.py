"""sentinelhub-py's ``SentinelHubBatchStatistical`` (3.12) against the emulator's Batch Statistical API."""

from __future__ import annotations

import json
from typing import Any

import pytest

from airflow_provider_sentinel_batch.emulator import EmulatorServer
from tests.emulator.stat_helpers import GPKG_URL, NDVI_EVALSCRIPT, write_parcels

pytestmark = pytest.mark.sdk
sentinelhub = pytest.importorskip("sentinelhub")

from sentinelhub import (  # noqa: E402
    BatchRequestStatus,
    BatchStatisticalRequest,
    BatchUserAction,
    DataCollection,
    SentinelHubBatchStatistical,
    SentinelHubStatistical,
    monitor_batch_statistical_analysis,
    monitor_batch_statistical_job,
)
from sentinelhub.api.batch import utils as batch_utils  # noqa: E402


def _create(client: SentinelHubBatchStatistical, bucket_folder: str) -> BatchStatisticalRequest:
    aggregation = SentinelHubStatistical.aggregation(
        evalscript=NDVI_EVALSCRIPT,
        time_interval=("2024-04-01", "2024-06-30"),
        aggregation_interval="P1M",
        resolution=(10, 10),
    )
    calculations = {"ndvi": {"histograms": {"default": {"nBins": 5, "lowEdge": -1.0, "highEdge": 1.0}}}}
    return client.create(
        input_features=client.s3_specification(GPKG_URL, "AK", "SK"),
        input_data=[SentinelHubStatistical.input_data(DataCollection.SENTINEL2_L2A)],
        aggregation=aggregation,
        calculations=calculations,
        output=client.s3_specification(f"s3://stat-bucket/{bucket_folder}", "AK", "SK"),
    )


def test_create_analyse_start_monitor_stop(emu: EmulatorServer, sh_config: Any) -> None:
    write_parcels(emu.data_dir, count=4)
    client = SentinelHubBatchStatistical(config=sh_config)
    request = _create(client, "sdk")
    assert isinstance(request, BatchStatisticalRequest)
    assert request.status is BatchRequestStatus.CREATED
    assert request.user_action is BatchUserAction.NONE
    assert request.completion_percentage == 0 and request.cost_pu == 0  # read from costPU
    assert request.created is not None
    assert request.request["aggregation"]["aggregationInterval"] == {"of": "P1M"}

    status = client.get_status(request)
    assert status["status"] == "CREATED" and status["costPu"] == 0

    assert client.start_analysis(request) == ""  # 204
    analysed = monitor_batch_statistical_analysis(request, sh_config, sleep_time=5)
    assert analysed.status is BatchRequestStatus.ANALYSIS_DONE
    assert analysed.user_action is BatchUserAction.ANALYSE

    assert client.start_job(request) == ""
    final = monitor_batch_statistical_job(request, sh_config, sleep_time=15, analysis_sleep_time=5)
    assert final["completionPercentage"] == 100
    # the monitor returns at 100 %, which may come before the status says DONE (it lags its features)
    assert final["status"] in ("PROCESSING", "DONE")
    emu.advance(15)
    done = client.get_request(request)
    assert done.status is BatchRequestStatus.DONE and done.cost_pu and done.cost_pu >= 100
    files = sorted((emu.data_dir / "stat-bucket" / "sdk" / request.request_id).glob("*.json"))
    assert [f.name for f in files] == ["1.json", "2.json", "3.json", "4.json"]
    assert json.loads(files[0].read_text())["response"]["status"] == "OK"

    other = _create(client, "sdk-stop")
    client.start_job(other)
    emu.advance(70)
    assert client.get_request(other).status is BatchRequestStatus.PROCESSING
    assert client.stop_job(other) == ""
    stopped = client.get_request(other)
    assert stopped.status is BatchRequestStatus.STOPPED
    assert stopped.user_action is BatchUserAction.STOP
    assert stopped.other_data["stoppedStatusReason"] == "USER_ACTION"
    with pytest.warns(Warning, match="stop_job"):
        assert client.cancel_job(other) == ""  # the deprecated /cancel: 204, nothing changes
    assert client.get_request(other).status is BatchRequestStatus.STOPPED


def test_sdk_analysis_monitor_raises_on_failed(emu: EmulatorServer, sh_config: Any) -> None:
    client = SentinelHubBatchStatistical(config=sh_config)
    emu.state.queue_job_overrides(analysis_error="the GeoPackage is empty")
    request = _create(client, "sdk-failed")
    client.start_analysis(request)
    with pytest.raises(RuntimeError, match="the GeoPackage is empty"):
        monitor_batch_statistical_analysis(request, sh_config, sleep_time=5)


class _TooManyPolls(Exception):
    pass


def test_sdk_job_monitor_never_ends_for_a_request_stopped_while_processing(
    emu: EmulatorServer, sh_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reason this provider has its own waiting: the SDK's monitor polls until 100 % complete, so a request
    stopped mid-way (user STOP, OUT_OF_PU, UNHEALTHY) keeps it polling forever."""
    write_parcels(emu.data_dir, count=30)
    client = SentinelHubBatchStatistical(config=sh_config)
    request = _create(client, "sdk-forever")
    client.start_job(request)
    emu.advance(70)
    assert client.get_request(request).status is BatchRequestStatus.PROCESSING
    polls = []

    def sleep(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) == 1:
            client.stop_job(request)  # someone stops it (the same happens on OUT_OF_PU or UNHEALTHY)
        if len(polls) > 40:
            raise _TooManyPolls
        emu.advance(seconds)

    monkeypatch.setattr(batch_utils, "time", type("T", (), {"sleep": staticmethod(sleep)}))
    with pytest.raises(_TooManyPolls):
        monitor_batch_statistical_job(request, sh_config, sleep_time=15, analysis_sleep_time=5)
    status = client.get_status(request)
    assert (status["status"], status["stoppedStatusReason"]) == ("STOPPED", "USER_ACTION")
    assert status["completionPercentage"] < 100
