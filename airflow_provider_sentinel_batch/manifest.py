"""The result manifest of a finished job: which tiles (v1) or features (v2) were written where, and which failed.

* **v1**: from the tiles endpoint (tile id, name, status) and the request's output path template.
* **v2**: from the execution database ``execution-<requestId>.sqlite`` (table ``features(id, name, status, error,
  delivered)``) and, for exact paths, the feature manifest ``featureManifest-<requestId>.gpkg``, both in the root
  folder of the delivery path.

Lists are capped with complete counts beside them, so XCom stays small; no credentials and no request payload
ever go into a manifest. Import-light: sqlite3 is imported only when a database is read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from airflow_provider_sentinel_batch.exceptions import SentinelBatchConfigError
from airflow_provider_sentinel_batch.layout import OutputLayout, output_layout, strip_userinfo
from airflow_provider_sentinel_batch.models import TileStatus, tile_counts

if TYPE_CHECKING:
    from airflow_provider_sentinel_batch.bucket import BucketReader
    from airflow_provider_sentinel_batch.hooks.sentinel_batch import SentinelBatchHook

DEFAULT_LIMIT = 1000
TILES_SOURCE = "tiles endpoint"
FEATURES_SOURCE = "execution database"


class _Tally:
    """Counts per status, and the first ``limit`` written and failed entries of a tile or feature list."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.by_status: dict[str, int] = {}
        self.outputs: list[dict[str, Any]] = []
        self.failed: list[dict[str, Any]] = []
        self.outputs_total = 0
        self.failed_total = 0

    def count(self, status: str) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1

    def output(self, entry: dict[str, Any]) -> None:
        self.outputs_total += 1
        if len(self.outputs) < self.limit:
            self.outputs.append(entry)

    def failure(self, item_id: Any, name: str, error: Any) -> None:
        self.failed_total += 1
        if len(self.failed) < self.limit:
            self.failed.append(
                {"id": item_id, "name": name, **({"error": str(error)[:500]} if error else {})}
            )

    def manifest(
        self, *, source: str, layout: OutputLayout, counts: dict[str, int], **extra: Any
    ) -> dict[str, Any]:
        total = counts.get("total", 0)
        manifest: dict[str, Any] = {
            "source": source,
            "location": layout.location,
            "output_kind": layout.kind,
            "path_template": layout.template,
            "counts": counts,
            "by_status": self.by_status,
            "failed_fraction": round(counts.get("failed", 0) / total, 6) if total else 0.0,
            "outputs": self.outputs,
            "outputs_truncated": self.outputs_total > len(self.outputs),
            "failed": self.failed,
            "failed_truncated": self.failed_total > len(self.failed),
            "limit": self.limit,
        }
        if layout.kind == "zarr":
            extra["zarr_root"] = layout.location
        manifest.update({k: v for k, v in extra.items() if v is not None})
        return manifest


def v1_manifest(
    hook: SentinelBatchHook, request_id: str, request: Mapping[str, Any], limit: int = DEFAULT_LIMIT
) -> dict[str, Any]:
    """v1: every tile from the tiles endpoint; output paths of PROCESSED tiles from the path template."""
    layout = output_layout("v1", request, request_id)
    return tiles_manifest(hook.iter_tiles(request_id, page_size=100), layout, limit)


def tiles_manifest(tiles: Iterable[Mapping[str, Any]], layout: OutputLayout, limit: int) -> dict[str, Any]:
    """The manifest of v1 tiles (as the tiles endpoint lists them)."""
    tally = _Tally(limit)
    for tile in tiles:
        status = str(tile.get("status"))
        tally.count(status)
        name = str(tile.get("name") or tile.get("id"))
        if status == TileStatus.PROCESSED:
            entry: dict[str, Any] = {"id": tile.get("id"), "name": name}
            if layout.kind == "raster":
                entry["paths"] = layout.paths(name, tile.get("id"))
            tally.output(entry)
        elif status == TileStatus.FAILED:
            tally.failure(tile.get("id"), name, tile.get("error") or tile.get("errorMessage"))
    counts = tile_counts(tally.by_status, done=TileStatus.PROCESSED, failed=frozenset({TileStatus.FAILED}))
    return tally.manifest(source=TILES_SOURCE, layout=layout, counts=counts)


def v2_manifest(
    request_id: str, request: Mapping[str, Any], reader: BucketReader, limit: int = DEFAULT_LIMIT
) -> dict[str, Any]:
    """v2: features from ``execution-<id>.sqlite``; exact paths from ``featureManifest-<id>.gpkg`` when present."""
    layout = output_layout("v2", request, request_id)
    if not layout.template:
        raise SentinelBatchConfigError(f"Batch request {request_id} has no output.delivery.s3.url")
    execution_name, manifest_name = f"execution-{request_id}.sqlite", f"featureManifest-{request_id}.gpkg"
    root = next((r for r in candidate_roots(layout) if reader.exists(r + execution_name)), None)
    if root is None:
        tried = ", ".join(reader.resolve(r + execution_name) for r in candidate_roots(layout))
        gone = reader.missing_bucket(layout.location or layout.template)
        why = f": bucket {gone} does not exist (or these keys cannot see it)" if gone else ""
        raise FileNotFoundError(f"execution database of {request_id} not found (looked at {tried}){why}")
    with reader.local_copy(root + execution_name) as path:
        rows = read_execution_db(path)
    paths: dict[str, list[str]] = {}
    if layout.kind == "raster" and reader.exists(root + manifest_name):
        with reader.local_copy(root + manifest_name) as path:
            paths = read_feature_manifest(path)
    return features_manifest(
        rows,
        layout,
        paths,
        limit,
        execution_db=root + execution_name,
        feature_manifest=root + manifest_name if paths else None,
    )


def candidate_roots(layout: OutputLayout) -> list[str]:
    """Root folder(s) of the delivery path where the service puts the execution database.

    The service's docs say "root folder of the specified output delivery path": the folder above the first
    per-tile placeholder (where the emulator writes it), else the delivery URL's own fixed prefix.
    """
    roots = [layout.location] if layout.location else []
    if layout.template:
        prefix = layout.template.split("<", 1)[0]
        prefix = prefix if prefix.endswith("/") else prefix.rsplit("/", 1)[0] + "/"
        if prefix not in roots:
            roots.append(prefix)
    return [r for r in roots if r]


def features_manifest(
    rows: Iterable[tuple[Any, Any, Any, Any, Any]],
    layout: OutputLayout,
    paths: Mapping[str, list[str]],
    limit: int,
    **extra: Any,
) -> dict[str, Any]:
    """The manifest of v2 features (rows of the execution database), with exact paths where known."""
    tally = _Tally(limit)
    undelivered = 0
    for feature_id, name, status, error, delivered in rows:
        status = str(status)
        tally.count(status)
        label = str(name if name is not None else feature_id)
        if status == TileStatus.FEATURE_DONE:
            entry: dict[str, Any] = {"id": feature_id, "name": label}
            if layout.kind == "raster":
                entry["paths"] = list(paths.get(label) or layout.paths(label, feature_id))
            if not delivered:
                undelivered += 1
                entry["delivered"] = False
            if error:  # "no data" ends DONE with a message
                entry["note"] = str(error)[:500]
            tally.output(entry)
        elif status in TileStatus.FEATURE_FAILED:
            tally.failure(feature_id, label, error)
    counts = tile_counts(tally.by_status, done=TileStatus.FEATURE_DONE, failed=TileStatus.FEATURE_FAILED)
    counts["undelivered"] = undelivered
    return tally.manifest(source=FEATURES_SOURCE, layout=layout, counts=counts, **extra)


def read_execution_db(path: str) -> list[tuple[Any, Any, Any, Any, Any]]:
    """``(id, name, status, error, delivered)`` of every feature in a local copy of the execution database."""
    import sqlite3

    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(con.execute("SELECT id, name, status, error, delivered FROM features ORDER BY id"))
    finally:
        con.close()


def read_feature_manifest(path: str) -> dict[str, list[str]]:
    """``identifier`` → output paths, from every ``feature_<crs>`` table of the feature manifest GeoPackage."""
    import sqlite3

    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [
            r[0]
            for r in con.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name LIKE 'feature_%'"
            )
        ]
        paths: dict[str, list[str]] = {}
        for table in tables:
            quoted = '"' + table.replace('"', '""') + '"'
            for identifier, path_ in con.execute(f"SELECT identifier, path FROM {quoted} ORDER BY fid"):
                if identifier is not None and path_:
                    paths.setdefault(str(identifier), []).append(strip_userinfo(str(path_)))
        return paths
    finally:
        con.close()
