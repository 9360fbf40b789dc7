"""Local checks of Batch Statistical payloads (nothing is sent when they fail) and the shared helpers."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_sentinel_batch.exceptions import SentinelBatchValidationError
from airflow_provider_sentinel_batch.statistical import (
    cost_pu,
    normalised,
    output_root,
    output_url,
    statistical_payload_problems,
    validate_statistical_payload,
)
from tests.emulator.stat_helpers import DROP, stat_payload

BAD = [
    pytest.param(
        {"aggregation.evalscript": DROP},
        [
            "aggregation.evalscript is missing: give the evalscript inline, or its location as "
            "aggregation.evalscriptReference {'s3': {'url': ...}}"
        ],
        id="no-evalscript",
    ),
    pytest.param(
        {"aggregation.evalscriptReference": {"s3": {"url": "s3://b/script.js"}}},
        ["aggregation.evalscript and aggregation.evalscriptReference are mutually exclusive; keep one"],
        id="evalscript-twice",
    ),
    pytest.param(
        {"aggregation.evalscript": "//VERSION=3\nfunction setup() {}"},
        ["aggregation.evalscript has no evaluatePixel function: the analysis would fail"],
        id="no-evaluatePixel",
    ),
    pytest.param(
        {"aggregation.evalscript": "function evaluatePixel() {}" + "x" * 33_000},
        [
            "aggregation.evalscript has 33027 bytes; inline evalscripts are limited to 32 KB: store it in a "
            "bucket and use aggregation.evalscriptReference"
        ],
        id="evalscript-too-big",
    ),
    pytest.param(
        {"input.features": DROP},
        ["input.features.s3.url is missing: where the GeoPackage of polygons is"],
        id="no-features",
    ),
    pytest.param(
        {"input.features": {"s3": {"url": "https://bucket/parcels.gpkg"}}},
        ["input.features.s3.url 'https://bucket/parcels.gpkg' is not an s3:// URL"],
        id="features-not-s3",
    ),
    pytest.param({"input.data": []}, ["input.data must list at least one data collection"], id="no-data"),
    pytest.param(
        {"aggregation.timeRange": {"from": "2024-07-01T00:00:00Z", "to": "2024-04-01T00:00:00Z"}},
        ["aggregation.timeRange.from '2024-07-01T00:00:00Z' is not before to '2024-04-01T00:00:00Z'"],
        id="time-reversed",
    ),
    pytest.param(
        {"aggregation.timeRange": {"from": "{{ ds }}", "to": "2024-04-01T00:00:00Z"}},
        [
            "aggregation.timeRange.from '{{ ds }}' is not an ISO 8601 date-time (e.g. '2024-04-01T00:00:00Z') "
            "(an unrendered template?)"
        ],
        id="time-template",
    ),
    pytest.param(
        {"aggregation.aggregationInterval": {"of": "30 days"}},
        [
            "aggregation.aggregationInterval.of '30 days' is not an ISO 8601 duration of days, weeks, months or "
            "years (e.g. 'P1D', 'P30D', 'P1M')"
        ],
        id="interval",
    ),
    pytest.param(
        {"aggregation.aggregationInterval": {"of": "P1M", "lastIntervalBehavior": "DROP"}},
        ["aggregation.aggregationInterval.lastIntervalBehavior 'DROP' is not one of SKIP, SHORTEN, EXTEND"],
        id="interval-behaviour",
    ),
    pytest.param(
        {"aggregation.width": 512, "aggregation.height": 512},
        ["aggregation has both resx/resy and width/height; set only one pair"],
        id="both-sampling",
    ),
    pytest.param(
        {"aggregation.resy": DROP},
        ["aggregation.resy is missing (resx and resy go together)"],
        id="half-resolution",
    ),
    pytest.param(
        {
            "aggregation.resx": DROP,
            "aggregation.resy": DROP,
            "aggregation.width": 5000,
            "aggregation.height": 10,
        },
        ["aggregation.width must be an integer from 1 to 2500, got 5000"],
        id="width-range",
    ),
    pytest.param(
        {"calculations.ndvi": {"statistics": {"default": {"percentiles": {"k": [50, 90]}}}}},
        [
            "calculations.ndvi.statistics.default.percentiles.k must be a list of numbers between 0 and 1, got [50, 90]"
        ],
        id="percentiles",
    ),
    pytest.param(
        {"calculations.ndvi": {"histograms": {"default": {"nBins": 10, "binWidth": 0.1}}}},
        ["calculations.ndvi.histograms.default needs exactly one of nBins, binWidth or bins"],
        id="histogram",
    ),
    pytest.param(
        {"output.s3": {"url": "s3://bucket/stats/<REQUEST_ID>/result.json"}},
        [
            "output.s3.url 's3://bucket/stats/<REQUEST_ID>/result.json' is a template without <ID> or "
            "<IDENTIFIER>: every feature would be written to the same file"
        ],
        id="template-without-id",
    ),
    pytest.param(
        {"output.s3": {"url": "s3://bucket/stats/<requestId>/<ID>.json"}},
        ["output.s3.url has unknown placeholder(s) <requestId>; allowed: <REQUEST_ID>, <ID>, <IDENTIFIER>"],
        id="batch-placeholder",
    ),
    pytest.param(
        {"output.s3": {"url": "s3://bucket/stats", "accessKey": "AK"}},
        ["output.s3 needs both accessKey and secretAccessKey (or neither)"],
        id="half-credentials",
    ),
    pytest.param(
        {"processRequest": {"evalscript": "x"}},
        [
            "processRequest belongs to Batch Processing; a Batch Statistical request has input, aggregation, "
            "calculations and output"
        ],
        id="batch-shape",
    ),
]


@pytest.mark.parametrize(("changes", "expected"), BAD)
def test_bad_payloads_are_refused_with_exact_messages(changes: dict[str, Any], expected: list[str]) -> None:
    payload = stat_payload(**changes)
    assert statistical_payload_problems(payload) == expected
    with pytest.raises(SentinelBatchValidationError) as info:
        validate_statistical_payload(payload)
    assert str(
        info.value
    ) == "The Batch Statistical request payload is not valid (nothing was sent):\n" + "\n".join(
        f"  - {p}" for p in expected
    )
    assert "SK-secret" not in str(info.value)


def test_valid_payloads_pass() -> None:
    validate_statistical_payload(stat_payload())
    validate_statistical_payload(
        stat_payload(
            **{
                "aggregation.evalscript": DROP,
                "aggregation.evalscriptReference": {"s3": {"url": "s3://b/script.js"}},
                "aggregation.resx": DROP,
                "aggregation.resy": DROP,
                "aggregation.width": 256,
                "aggregation.height": 256,
                "calculations": DROP,
                "output.s3": {"url": "s3://b/stats/<REQUEST_ID>/<IDENTIFIER>.json", "iamRoleARN": "arn:x"},
            }
        )
    )


def test_everything_missing_is_reported_at_once() -> None:
    assert statistical_payload_problems({}) == [
        "'input' is missing: {'features': {'s3': {'url': 's3://<bucket>/<key>.gpkg'}}, 'data': [...]}",
        "'aggregation' is missing: timeRange, aggregationInterval, evalscript (or evalscriptReference) and "
        "resx/resy or width/height",
        "output.s3.url is missing: the bucket/prefix the per-feature JSON files go to",
    ]
    assert statistical_payload_problems([1]) == ["the payload must be a JSON object (dict), got list"]


def test_cost_spellings_and_output_locations() -> None:
    assert cost_pu({"costPu": 12.5}) == 12.5
    assert cost_pu({"costPU": 3, "costPu": 4}) == 3.0
    assert cost_pu({"status": "CREATED"}) is None
    assert normalised({"costPu": 2.0}) == {"costPu": 2.0, "costPU": 2.0}
    assert output_root("s3://b/stats", "R") == "s3://b/stats/R/"
    assert output_root("s3://b/stats/", "R") == "s3://b/stats/R/"
    assert output_root("s3://b/stats/<REQUEST_ID>/<ID>.json", "R") == "s3://b/stats/R/"
    assert output_root("s3://b/x/<IDENTIFIER>-<REQUEST_ID>.json", "R") == "s3://b/x/"
    assert output_url({"request": {"output": {"s3": {"url": "s3://b/p"}}}}) == "s3://b/p"
    assert output_url(stat_payload()) == "s3://stat-bucket/stats"
