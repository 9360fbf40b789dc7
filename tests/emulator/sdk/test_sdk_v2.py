"""sentinelhub-py's v2 ``BatchProcessClient`` (>= 3.11.2, also present in 3.11.1) against the emulator."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from airflow_provider_sentinel_batch.emulator import EmulatorServer

pytestmark = pytest.mark.sdk
sentinelhub = pytest.importorskip("sentinelhub")

from sentinelhub import (  # noqa: E402
    BatchProcessClient,
    BatchRequestStatus,
    BatchUserAction,
    monitor_batch_process_analysis,
    monitor_batch_process_job,
)
from sentinelhub.api.utils import s3_specification  # noqa: E402


def _create(client: BatchProcessClient, process_request: dict[str, Any], description: str) -> Any:
    delivery = s3_specification(
        url="s3://sdk-bucket/v2/<tileName>/<outputId>.tiff", access_key="a", secret_access_key="b"
    )
    return client.create(
        process_request,
        input=client.tiling_grid_input(grid_id=0, resolution=60.0),
        output=client.raster_output(delivery, overwrite=True),
        description=description,
    )


def test_create_analyse_start_monitor_list_update_stop(
    emu: EmulatorServer, sh_config: Any, corsica_request: dict[str, Any]
) -> None:
    client = BatchProcessClient(config=sh_config)
    request = _create(client, corsica_request, "sdk v2 corsica")
    assert request.status is BatchRequestStatus.CREATED
    assert (
        str(uuid.UUID(request.domain_account_id)) == request.domain_account_id
    )  # a uuid string, as specified
    assert request.created is not None

    client.start_analysis(request)
    analysed = monitor_batch_process_analysis(request, client, sleep_time=5)
    assert analysed.status is BatchRequestStatus.ANALYSIS_DONE
    assert analysed.user_action is BatchUserAction.ANALYSE

    assert client.start_job(request) == ""
    done = monitor_batch_process_job(request, client, sleep_time=60, analysis_sleep_time=5)
    assert done.status is BatchRequestStatus.DONE
    assert done.completion_percentage == 100
    assert done.cost_PU > 0
    assert done.last_updated is not None
    assert list(emu.data_dir.glob(f"sdk-bucket/v2/execution-{request.request_id}.sqlite"))

    client.update_request(request, description="sdk v2 renamed")
    assert client.get_request(request).request["description"] == "sdk v2 renamed"
    assert [r.request_id for r in client.iter_requests(search="renamed")] == [request.request_id]

    other = _create(client, corsica_request, "sdk v2 to stop")
    client.start_job(other)
    emu.advance(200)
    assert client.get_request(other).status is BatchRequestStatus.PROCESSING
    client.stop_job(other)
    stopped = client.get_request(other)
    assert stopped.status is BatchRequestStatus.STOPPED
    assert stopped.stopped_status_reason.value == "USER_ACTION"
    assert stopped.user_action is BatchUserAction.STOP

    listed = list(client.iter_requests(count=1))  # one per page: exercises links.nextToken
    assert {r.request_id for r in listed} == {request.request_id, other.request_id}
    grids = list(client.iter_tiling_grids())
    assert [g["id"] for g in grids] == [0, 1, 2, 3, 6, 7]
    assert client.get_tiling_grid(0)["properties"]["tileWidth"] == 20040.0


def test_sdk_rides_out_429_and_5xx(
    emu: EmulatorServer, sh_config: Any, corsica_request: dict[str, Any]
) -> None:
    client = BatchProcessClient(config=sh_config)
    emu.set_faults(rate_429=0.3, retry_after_ms=1, rate_5xx=0.1, burst_5xx=2)
    request = _create(client, corsica_request, "sdk v2 faults")
    client.start_job(request)
    done = monitor_batch_process_job(request, client, sleep_time=60, analysis_sleep_time=5)
    assert done.status is BatchRequestStatus.DONE
    injected = emu.stats()["faults_injected"]
    assert injected.get("429", 0) + injected.get("5xx", 0) > 0


def test_sdk_sees_failed_analysis(
    emu: EmulatorServer, sh_config: Any, corsica_request: dict[str, Any]
) -> None:
    client = BatchProcessClient(config=sh_config)
    emu.state.queue_job_overrides(analysis_error="no data for the area")
    request = _create(client, corsica_request, "sdk v2 failing")
    client.start_analysis(request)
    with pytest.raises(RuntimeError, match="no data for the area"):
        monitor_batch_process_analysis(request, client, sleep_time=5)
