"""Custom OpenLineage facets of this provider.

Imported only from inside ``get_openlineage_facets_on_complete`` (it needs the OpenLineage client, which comes
with the optional ``apache-airflow-providers-openlineage``); never import it at DAG-parse time.
"""

from __future__ import annotations

import functools

import attr
from airflow.providers.common.compat.openlineage.facet import DatasetFacet, RunFacet

SCHEMA_BASE = (
    "https://airflow-provider-sentinel-batch.invalid/spec/facets/1-0-0"  # no public schema registry yet
)


def _schema_url(name: str) -> str:
    return f"{SCHEMA_BASE}/{name}.json#/$defs/{name}"


@attr.define
class SentinelBatchRunFacet(RunFacet):
    """The Sentinel Hub batch request behind this run: id, API version, final status, cost and counts."""

    requestId: str
    apiVersion: str
    status: str | None = attr.field(default=None)
    costPU: float | None = attr.field(default=None)
    deployment: str | None = attr.field(default=None)
    outputLocation: str | None = attr.field(default=None)
    dashboardUrl: str | None = attr.field(default=None)
    tiles: dict[str, int] | None = attr.field(default=None)
    total: int | None = attr.field(default=None)
    done: int | None = attr.field(default=None)
    failed: int | None = attr.field(default=None)

    _get_schema = staticmethod(functools.partial(_schema_url, "SentinelBatchRunFacet"))


@attr.define
class SentinelHubInputDatasetFacet(DatasetFacet):
    """Area and time of interest of a data collection read by a batch request (WGS84 ``bbox`` unless ``crs``)."""

    bbox: list[float] | None = attr.field(default=None)
    crs: str | None = attr.field(default=None)
    timeFrom: str | None = attr.field(default=None)
    timeTo: str | None = attr.field(default=None)
    maxCloudCoverage: float | None = attr.field(default=None)
    mosaickingOrder: str | None = attr.field(default=None)

    _get_schema = staticmethod(functools.partial(_schema_url, "SentinelHubInputDatasetFacet"))
