"""sentinelhub-py 3.11.1's v1 ``SentinelHubBatch`` (the last release with Batch v1) against the emulator."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_sentinel_batch.emulator import EmulatorServer

pytestmark = pytest.mark.sdk
sentinelhub = pytest.importorskip("sentinelhub")
if not hasattr(sentinelhub, "SentinelHubBatch"):
    pytest.skip("Batch v1 was removed from sentinelhub-py in 3.11.2; pin 3.11.1", allow_module_level=True)

from sentinelhub import (  # noqa: E402
    BatchRequestStatus,
    BatchTileStatus,
    BatchUserAction,
    SentinelHubBatch,
    monitor_batch_analysis,
    monitor_batch_job,
)


def _create(client: SentinelHubBatch, process_request: dict[str, Any], description: str) -> Any:
    return client.create(
        process_request,
        tiling_grid=SentinelHubBatch.tiling_grid(grid_id=0, resolution=60.0, buffer=(0, 0)),
        bucket_name="sdk-bucket",
        description=description,
    )


def test_create_analyse_tiles_start_monitor(
    emu: EmulatorServer, sh_config: Any, corsica_request: dict[str, Any]
) -> None:
    client = SentinelHubBatch(config=sh_config)
    request = _create(client, corsica_request, "sdk v1 corsica")
    assert request.status is BatchRequestStatus.CREATED
    assert 60 <= request.tile_count <= 80
    assert request.tile_width_px == 334
    assert request.bbox is not None

    client.start_analysis(request)
    analysed = monitor_batch_analysis(request, config=sh_config, sleep_time=5)
    assert analysed.status is BatchRequestStatus.ANALYSIS_DONE
    assert analysed.value_estimate > 0
    tiles = list(client.iter_tiles(request))
    assert len(tiles) == request.tile_count
    assert client.get_tile(request, tiles[0]["id"])["status"] == "PENDING"

    client.start_job(request)
    results = monitor_batch_job(request, config=sh_config, sleep_time=60, analysis_sleep_time=5)
    assert len(results[BatchTileStatus.PROCESSED]) == request.tile_count
    final = client.get_request(request)
    assert final.status is BatchRequestStatus.DONE
    assert final.user_action is BatchUserAction.START
    assert (
        len(list(emu.data_dir.glob(f"sdk-bucket/{request.request_id}/*/default.tif"))) == request.tile_count
    )


def test_partial_restart_cancel_list_update_delete(
    emu: EmulatorServer, sh_config: Any, corsica_request: dict[str, Any]
) -> None:
    client = SentinelHubBatch(config=sh_config)
    request = _create(client, corsica_request, "sdk v1 partial")
    emu.state.configure_job(request.request_id, tile_failure_rate=0.1)
    client.start_job(request)
    results = monitor_batch_job(request, config=sh_config, sleep_time=60, analysis_sleep_time=5)
    assert results[BatchTileStatus.FAILED]
    assert client.get_request(request).status is BatchRequestStatus.PARTIAL

    client.restart_job(request)
    assert client.get_request(request).status is BatchRequestStatus.PARTIAL  # status lag
    emu.advance(30)
    results = monitor_batch_job(request, config=sh_config, sleep_time=60, analysis_sleep_time=5)
    assert not results[BatchTileStatus.FAILED]
    assert client.get_request(request).status is BatchRequestStatus.DONE

    with pytest.raises(
        sentinelhub.exceptions.DownloadFailedException, match="Only requests with status PARTIAL"
    ):
        client.restart_job(request)

    to_cancel = _create(client, corsica_request, "sdk v1 cancel")
    client.start_job(to_cancel)
    emu.advance(100)
    client.cancel_job(to_cancel)
    canceled = client.get_request(to_cancel)
    assert canceled.status is BatchRequestStatus.CANCELED
    assert canceled.user_action is BatchUserAction.CANCEL

    client.update_request(to_cancel, description="sdk v1 canceled")
    assert [r.request_id for r in client.iter_requests(search="canceled")] == [to_cancel.request_id]
    assert client.get_latest_request().request_id == to_cancel.request_id
    assert len(list(client.iter_requests(count=1))) == 2

    to_delete = _create(client, corsica_request, "sdk v1 delete")
    client.delete_request(to_delete)
    assert {r.request_id for r in client.iter_requests()} == {request.request_id, to_cancel.request_id}
    assert [g["id"] for g in client.iter_tiling_grids()] == [0, 1, 2, 3, 6, 7]
    assert client.get_tiling_grid(3)["properties"]["unit"] == "DEGREE"
