"""Data-pipeline citizenship: asset events for finished jobs, and OpenLineage facets.

**Assets (Airflow 3) / Datasets (Airflow 2.11).** The waiting task (the sensor, or an operator with
``wait_for_completion=True``) declares the *stable* data product as an outlet, e.g.
``outlets=[Asset("s3://my-bucket/ndvi/")]``; a request id is only known at run time, so it cannot be part of a
URI written in the DAG. When the job reaches DONE (and passes the result checks) the task attaches the
request-specific facts to the event's ``extra``: ``request_id``, ``api_version``, ``status``, ``location`` (the
request's own folder, e.g. ``s3://my-bucket/ndvi/<requestId>/``), ``cost_pu``, tile/feature counts. A downstream
DAG with ``schedule=[Asset("s3://my-bucket/ndvi/")]`` reads them from ``triggering_asset_events``
(``triggering_dataset_events`` on 2.11). An ``AssetAlias`` (``DatasetAlias``) outlet instead gets one event for a
*new* asset per request, ``Asset(<location>)``, with the same extra.

**OpenLineage.** :func:`operator_lineage` (the create/start operators' and the sensor's ``get_openlineage_facets_on_complete``):
inputs are the request's data collections (namespace ``sentinelhub://<deployment host>``, name = collection type)
with area and time range in a ``sentinelHubInput`` dataset facet; the output is the delivery location
(namespace ``s3://<bucket>``, name = the key prefix); run facets carry the request id (standard
``externalQuery``) and a ``sentinelBatch`` facet with API version, status, cost and counts. OpenLineage classes
are imported inside the method: the provider works without ``apache-airflow-providers-openlineage``.

Nothing here puts a request payload, bucket key or token into events, facets or XCom: only whitelisted fields.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlparse

from airflow_provider_sentinel_batch.layout import output_layout
from airflow_provider_sentinel_batch.manifest import TILES_SOURCE
from airflow_provider_sentinel_batch.models import cost_of, request_payload, v1_tile_counts

NAMESPACE_SCHEME = "sentinelhub"
log = logging.getLogger(__name__)


class TaskLog(Protocol):
    """The part of a task's logger this module writes to (Airflow 2's ``logging.Logger``, Airflow 3's logger)."""

    def info(self, msg: Any, /, *args: Any) -> Any:
        """Log ``msg % args`` at INFO level."""

    def warning(self, msg: Any, /, *args: Any) -> Any:
        """Log ``msg % args`` at WARNING level."""


_EXTRA_KEYS = ("request_id", "api_version", "status", "location", "cost_pu", "partial", "dashboard_url")


# ----------------------------------------------------------------------------------- request facts
def _bbox_of(coordinates: Any) -> list[float] | None:
    xs: list[float] = []
    ys: list[float] = []

    def walk(node: Any) -> None:
        if (
            isinstance(node, list | tuple)
            and len(node) >= 2
            and all(isinstance(v, int | float) for v in node[:2])
        ):
            xs.append(float(node[0]))
            ys.append(float(node[1]))
        elif isinstance(node, list | tuple):
            for child in node:
                walk(child)

    walk(coordinates)
    return [min(xs), min(ys), max(xs), max(ys)] if xs else None


def request_facts(
    api_version: str, request: Mapping[str, Any] | None, request_id: str | None
) -> dict[str, Any]:
    """The lineage-relevant, credential-free facts of a request object or create payload."""
    facts: dict[str, Any] = {"request_id": request_id, "api_version": api_version}
    if not request:
        return facts
    request = dict(request)
    payload = request_payload(api_version, request) if "request" in request else request
    process = payload.get("processRequest") or {}
    data_input = process.get("input") or {}
    if api_version == "statistical":  # polygons from a GeoPackage; one time range for every collection
        data_input = {"data": _with_time_range(payload)}
    bounds = data_input.get("bounds") or {}
    bbox = bounds.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4):
        bbox = _bbox_of((bounds.get("geometry") or {}).get("coordinates"))
    facts["bbox"] = [float(v) for v in bbox] if bbox else None
    facts["crs"] = (bounds.get("properties") or {}).get("crs")
    collections = []
    for item in data_input.get("data") or []:
        if not isinstance(item, dict) or not item.get("type"):
            continue
        data_filter = item.get("dataFilter") or {}
        time_range = data_filter.get("timeRange") or {}
        collections.append(
            {
                "type": str(item["type"]),
                "id": item.get("id"),
                "time_from": time_range.get("from"),
                "time_to": time_range.get("to"),
                "max_cloud_coverage": data_filter.get("maxCloudCoverage"),
                "mosaicking_order": data_filter.get("mosaickingOrder"),
            }
        )
    facts["collections"] = collections
    rid = request_id or request.get("id")
    if rid:
        layout = output_layout(api_version, request, str(rid))
        facts["location"] = layout.location
        facts["output_kind"] = layout.kind
    if request.get("status"):
        facts["status"] = request["status"]
    facts["cost_pu"] = cost_of(api_version, request)
    return facts


def _with_time_range(payload: Mapping[str, Any]) -> list[Any]:
    """Batch Statistical data collections with ``aggregation.timeRange`` as their time range."""
    time_range = (payload.get("aggregation") or {}).get("timeRange") or {}
    items = []
    for item in (payload.get("input") or {}).get("data") or []:
        if isinstance(item, dict):
            data_filter = dict(item.get("dataFilter") or {})
            data_filter.setdefault("timeRange", time_range)
            item = {**item, "dataFilter": data_filter}
        items.append(item)
    return items


@dataclass
class LineageNotes:
    """What a task learnt of its request (credential-free facts) and of its result, kept for OpenLineage."""

    request: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)

    def remember_request(self, api_version: str, request_id: str, request: Mapping[str, Any] | None) -> None:
        """Keep the credential-free facts of the request."""
        try:
            self.request = request_facts(api_version, request, request_id)
        except Exception as exc:  # lineage is a by-product: never fail a task for it
            log.debug("Could not keep lineage facts of %s: %s", request_id, exc)

    def remember_result(
        self, api_version: str, summary: Mapping[str, Any], request: Mapping[str, Any] | None
    ) -> None:
        """Keep the summary a waiting task returns (and the facts of its request, when it read the request)."""
        try:
            facts = request_facts(api_version, request, str(summary.get("request_id"))) if request else {}
            self.request = facts or self.request
            self.result = dict(summary)
        except Exception as exc:
            log.debug("Could not keep lineage facts: %s", exc)


# ------------------------------------------------------------------------------------------ assets
def asset_extra(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The asset event's ``extra``: small, flat (scalar values only), JSON-safe, no credentials, no lists.

    Flat because Airflow 2.11 hashes the extra of alias events (``frozenset(extra.items())``): a nested dict
    there makes the task fail after it succeeded. Counts: ``unit`` (``tiles`` | ``features``), ``total``,
    ``done``, ``failed``, ``pending``.
    """
    extra: dict[str, Any] = {k: summary[k] for k in _EXTRA_KEYS if summary.get(k) is not None}
    results = summary.get("results") if isinstance(summary.get("results"), Mapping) else None
    counts: Mapping[str, Any] = {}
    if results and results.get("counts"):
        extra["unit"] = "tiles" if results.get("source") == TILES_SOURCE else "features"
        counts = results["counts"]
        if results.get("execution_db"):
            extra["execution_db"] = results["execution_db"]
    elif isinstance(summary.get("tiles"), Mapping):  # v1 tile counts by status, no manifest
        extra["unit"] = "tiles"
        counts = v1_tile_counts({str(k): int(v) for k, v in summary["tiles"].items()})
    for key in ("total", "done", "failed", "pending"):
        if isinstance(counts.get(key), int):
            extra[key] = counts[key]
    return extra


def _asset_classes() -> tuple[Any, Any]:
    from airflow.providers.common.compat.sdk import Asset, AssetAlias

    return Asset, AssetAlias


def emit_asset_events(
    outlets: Sequence[Any], context: Any, extra: Mapping[str, Any], task_log: TaskLog
) -> list[str]:
    """Attach ``extra`` to the events of a task's asset ``outlets``; add a per-request asset to alias outlets.

    Returns a description of what was attached (for logs and tests).
    """
    if not outlets:
        return []
    events = context.get("outlet_events") if hasattr(context, "get") else None
    if events is None:
        task_log.warning("No outlet_events in the task context: asset events carry no request details")
        return []
    asset_cls, alias_cls = _asset_classes()
    done = []
    for outlet in outlets:
        if isinstance(outlet, alias_cls):
            location = extra.get("location")
            if not location:
                task_log.warning("No output location known: nothing to add to asset alias %s", outlet.name)
                continue
            events[outlet].add(asset_cls(str(location)), extra=dict(extra))
            done.append(f"alias {outlet.name} -> {location}")
        elif isinstance(outlet, asset_cls):
            events[outlet].extra.update(dict(extra))
            done.append(f"asset {outlet.uri}")
    if done:
        task_log.info("Asset events with request %s: %s", extra.get("request_id"), "; ".join(done))
    return done


def warn_outlets_before_done(outlets: Sequence[Any], wait_for: str, task_log: TaskLog) -> None:
    """Warn that outlets on a task that waited for less than DONE get Airflow's plain event, without details."""
    if outlets:
        task_log.warning(
            "This task has outlets but waited for %s, not DONE: Airflow emits its asset events anyway, "
            "without request details. Put outlets on the task that waits for DONE.",
            wait_for,
        )


# -------------------------------------------------------------------------------------- OpenLineage
def namespace_for(base_url: str | None) -> str:
    """``sentinelhub://services.sentinel-hub.com`` (host and port of the deployment's base URL)."""
    netloc = urlparse(base_url or "").netloc or "unknown"
    return f"{NAMESPACE_SCHEME}://{netloc.rsplit('@', 1)[-1]}"


def s3_dataset_name(location: str) -> tuple[str, str]:
    """OpenLineage naming for object storage: namespace ``s3://<bucket>``, name = key prefix (``/`` for root)."""
    parsed = urlparse(location)
    bucket = parsed.netloc.rsplit("@", 1)[-1]
    name = parsed.path.strip("/") or "/"
    return f"{parsed.scheme}://{bucket}", name


def _completed_facts(
    notes: LineageNotes,
    api_version: str,
    request_id: str | None,
    read_request: Callable[[str], Mapping[str, Any]],
) -> dict[str, Any]:
    facts = dict(notes.request)
    request_id = facts.get("request_id") or notes.result.get("request_id") or request_id
    if not facts.get("collections") and request_id:
        try:  # the task ended before it read the request (e.g. failed early): one GET, never fatal
            facts = request_facts(api_version, read_request(str(request_id)), str(request_id))
        except Exception as exc:
            log.debug("OpenLineage: could not read request %s: %s", request_id, exc)
    if request_id and not facts.get("request_id"):
        facts["request_id"] = str(request_id)
    return facts


def operator_lineage(
    notes: LineageNotes,
    *,
    api_version: str,
    base_url: str | None,
    request_id: str | None,
    read_request: Callable[[str], Mapping[str, Any]],
) -> Any:
    """OpenLineage facets of a task's batch request: an ``OperatorLineage``.

    Inputs: the data collections (with area and time); output: the delivery location; run facets:
    ``externalQuery`` (request id) and ``sentinelBatch`` (API version, status, cost, tile/feature counts, dashboard
    URL). ``request_id`` is the task's own when the notes have none; ``read_request`` is called at most once, when
    the notes lack the request's facts.
    """
    from airflow.providers.common.compat.openlineage.facet import (
        ExternalQueryRunFacet,
        InputDataset,
        OutputDataset,
        OutputStatisticsOutputDatasetFacet,
    )
    from airflow.providers.openlineage.extractors import OperatorLineage

    from airflow_provider_sentinel_batch._openlineage_facets import (
        SentinelBatchRunFacet,
        SentinelHubInputDatasetFacet,
    )

    facts, result = _completed_facts(notes, api_version, request_id, read_request), notes.result
    request_id = facts.get("request_id")
    if not request_id:
        return OperatorLineage()
    namespace = namespace_for(base_url)

    inputs = []
    for coll in facts.get("collections") or []:
        facet = SentinelHubInputDatasetFacet(
            bbox=facts.get("bbox"),
            crs=facts.get("crs"),
            timeFrom=coll.get("time_from"),
            timeTo=coll.get("time_to"),
            maxCloudCoverage=coll.get("max_cloud_coverage"),
            mosaickingOrder=coll.get("mosaicking_order"),
        )
        inputs.append(
            InputDataset(namespace=namespace, name=coll["type"], facets={"sentinelHubInput": facet})
        )

    outputs = []
    results = result.get("results") if isinstance(result.get("results"), Mapping) else {}
    location = result.get("location") or facts.get("location")
    if location and "://" in str(location):
        out_namespace, out_name = s3_dataset_name(str(location))
        output_facets: dict[str, Any] = {}
        counts = (results or {}).get("counts") or {}
        if counts.get("done") is not None:
            listed = (results or {}).get("outputs") or []
            per_feature = len(listed[0].get("paths") or []) if listed else 0
            if per_feature:
                output_facets["outputStatistics"] = OutputStatisticsOutputDatasetFacet(
                    fileCount=int(counts["done"]) * per_feature
                )
        outputs.append(OutputDataset(namespace=out_namespace, name=out_name, outputFacets=output_facets))

    counts = (results or {}).get("counts") or {}
    run_facet = SentinelBatchRunFacet(
        requestId=str(request_id),
        apiVersion=str(facts.get("api_version") or api_version),
        status=result.get("status") or facts.get("status"),
        costPU=result.get("cost_pu") if result.get("cost_pu") is not None else facts.get("cost_pu"),
        deployment=namespace,
        outputLocation=location,
        dashboardUrl=result.get("dashboard_url"),
        tiles=dict(result["tiles"]) if isinstance(result.get("tiles"), Mapping) else None,
        total=counts.get("total"),
        done=counts.get("done"),
        failed=counts.get("failed"),
    )
    run_facets = {
        "externalQuery": ExternalQueryRunFacet(externalQueryId=str(request_id), source=namespace),
        "sentinelBatch": run_facet,
    }
    return OperatorLineage(inputs=inputs, outputs=outputs, run_facets=run_facets)
