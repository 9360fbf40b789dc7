"""Where a finished batch job's outputs are: the result manifest added to the waiting task's summary (XCom).

* **v1**: from the tiles endpoint (tile id, name, status) and the request's output path template
  (``bucketName`` → ``s3://<bucket>/<requestId>/<tileName>/<outputId>.<ext>``, or ``output.defaultTilePath`` with
  its placeholders).
* **v2**: from the execution database ``execution-<requestId>.sqlite`` (table ``features(id, name, status, error,
  delivered)``) and, for exact paths, the feature manifest ``featureManifest-<requestId>.gpkg``, both in the root
  folder of the delivery path. They are read through fsspec only when a results location is configured
  (``results_url``, ``results_conn_id`` or ``results_storage_options``): the bucket itself (``s3://``, needs
  ``s3fs``) or a mirror/mount of it, e.g. the emulator's data directory (``results_url="file:///.../data"``
  maps ``s3://bucket/key`` to ``file:///.../data/bucket/key``).

``max_failed_features`` / ``max_failed_fraction`` turn too many failed tiles (v1, with
``partial_policy="succeed_with_warning"``) or failed features (v2, a DONE job can still have FAILED features) into
a task failure. Lists are capped (``manifest_limit``, 1000 by default) with counts beside them, so XCom stays small;
no credentials and no request payload ever go into the manifest.

Import-light: fsspec and sqlite3 are imported only when a manifest is built.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_sentinel_batch.exceptions import SentinelBatchConfigError, SentinelBatchJobError
from airflow_provider_sentinel_batch.models import request_payload

if TYPE_CHECKING:
    from airflow_provider_sentinel_batch.hooks.sentinel_batch import SentinelBatchHook

DEFAULT_LIMIT = 1000
RESULTS_KEY = "results"

PLACEHOLDERS = ("<requestId>", "<tileName>", "<tileId>", "<outputId>", "<format>")
PER_TILE = ("<tileName>", "<tileId>", "<outputId>", "<format>")
DEFAULT_LAYOUT = "<requestId>/<tileName>/<outputId>.<format>"
FORMAT_EXTENSIONS = {"image/tiff": "tif", "application/json": "json", "zarr/array": "zarr"}

# v2 feature statuses: docs say PENDING, DONE, FAILED "etc."; the reference and emulator use FATAL for failures
FAILED_FEATURE = frozenset({"FAILED", "FATAL"})
# v1 tile statuses
DONE_TILE = "PROCESSED"
FAILED_TILE = "FAILED"


# ------------------------------------------------------------------------------------------------ options
@dataclass(frozen=True)
class ResultOptions:
    """What the waiting task does once the job is DONE (see the module docstring).

    :param result_manifest: ``None`` (default): v1 lists tiles from the API; v2 reads the execution database
        when a results location is configured; a read problem is logged, not fatal. ``True``: the manifest is
        required (v2 reads the bucket even without explicit options, e.g. with ambient S3 credentials) and a read
        problem fails the task. ``False``: no manifest (the summary as before).
    :param results_url: fsspec URL under which the bucket is readable: ``s3://bucket/key`` is read from
        ``<results_url>/bucket/key``. Unset: ``s3://`` URLs are read as they are (needs ``s3fs``).
    :param results_conn_id: Airflow connection with read access to the bucket: login = access key id, password =
        secret key; extras ``endpoint_url`` (e.g. a CDSE or other S3-compatible endpoint), ``region_name`` and an
        optional ``storage_options`` dict. Turned into fsspec options at run time; never logged nor returned.
    :param results_storage_options: extra fsspec ``storage_options`` (not templated; keep secrets in a connection).
    :param max_failed_features: fail the task when more tiles/features than this failed.
    :param max_failed_fraction: fail the task when the failed share of all tiles/features is above this (0-1).
    :param manifest_limit: at most this many entries in each list of the manifest (counts are always complete).
    """

    result_manifest: bool | None = None
    results_url: str | None = None
    results_conn_id: str | None = None
    results_storage_options: Mapping[str, Any] | None = field(default=None, repr=False)
    max_failed_features: int | None = None
    max_failed_fraction: float | None = None
    manifest_limit: int = DEFAULT_LIMIT

    def __post_init__(self) -> None:
        if self.result_manifest not in (None, True, False):
            raise SentinelBatchConfigError("result_manifest must be None, True or False")
        if self.max_failed_features is not None and (
            isinstance(self.max_failed_features, bool)
            or not isinstance(self.max_failed_features, int)
            or self.max_failed_features < 0
        ):
            raise SentinelBatchConfigError("max_failed_features must be a whole number >= 0")
        if self.max_failed_fraction is not None and not (
            isinstance(self.max_failed_fraction, int | float)
            and 0.0 <= float(self.max_failed_fraction) <= 1.0
        ):
            raise SentinelBatchConfigError("max_failed_fraction must be a number between 0 and 1")
        if (
            isinstance(self.manifest_limit, bool)
            or not isinstance(self.manifest_limit, int)
            or self.manifest_limit < 0
        ):
            raise SentinelBatchConfigError("manifest_limit must be a whole number >= 0")
        if self.results_storage_options is not None and not isinstance(self.results_storage_options, Mapping):
            raise SentinelBatchConfigError("results_storage_options must be a dict of fsspec options")
        if self.result_manifest is False and self.has_thresholds:
            raise SentinelBatchConfigError(
                "max_failed_features / max_failed_fraction need the result manifest; drop result_manifest=False"
            )

    @property
    def has_thresholds(self) -> bool:
        return self.max_failed_features is not None or self.max_failed_fraction is not None

    @property
    def bucket_configured(self) -> bool:
        return bool(self.results_url or self.results_conn_id or self.results_storage_options)

    def wants_manifest(self, api_version: str) -> bool:
        if self.result_manifest is False:
            return False
        if api_version == "v1" or self.result_manifest is True or self.has_thresholds:
            return True
        return self.bucket_configured

    @property
    def strict(self) -> bool:
        """A manifest that cannot be read fails the task (it was asked for explicitly, or thresholds need it)."""
        return self.result_manifest is True or self.has_thresholds


# ------------------------------------------------------------------------------------------ path templates
@dataclass(frozen=True)
class OutputLayout:
    """Where a request writes: ``kind`` raster | zarr, the path template (``<requestId>`` filled) and its root."""

    kind: str
    template: str | None
    responses: tuple[tuple[str, str], ...] = ()

    @property
    def location(self) -> str | None:
        """The request's own folder: the fixed part of the template above the first per-tile placeholder."""
        return root_of(self.template) if self.template else None

    def paths(self, tile_name: str, tile_id: Any) -> list[str]:
        if self.kind != "raster" or not self.template:
            return []
        return [
            self.template.replace("<tileName>", str(tile_name))
            .replace("<tileId>", str(tile_id))
            .replace("<outputId>", identifier)
            .replace("<format>", FORMAT_EXTENSIONS.get(fmt, "bin"))
            for identifier, fmt in self.responses
        ]


def _strip_userinfo(url: str) -> str:
    """``s3://key:secret@bucket/x`` → ``s3://bucket/x``: a URL with credentials must never reach XCom or lineage."""
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@", r"\1", url)


def expand(template: str, request_id: str) -> str:
    """A plain prefix means ``<prefix>/<requestId>/<tileName>/<outputId>.<format>`` (the service's rule)."""
    template = _strip_userinfo(str(template))
    if not any(p in template for p in PLACEHOLDERS):
        template = template.rstrip("/") + "/" + DEFAULT_LAYOUT
    return template.replace("<requestId>", str(request_id))


def root_of(expanded: str) -> str:
    """The directory above the first per-tile placeholder, with a trailing ``/``."""
    cut = min((expanded.find(p) for p in PER_TILE if p in expanded), default=len(expanded))
    head = expanded[:cut]
    scheme_end = head.find("://") + 3 if "://" in head else 0
    if "/" in head[scheme_end:]:
        head = head.rsplit("/", 1)[0]
    return head.rstrip("/") + "/"


def responses_of(payload: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    process = payload.get("processRequest") or {}
    responses = ((process.get("output") or {}).get("responses")) or []
    found = []
    for response in responses:
        if isinstance(response, dict) and response.get("identifier"):
            fmt = (response.get("format") or {}).get("type") or "image/tiff"
            found.append((str(response["identifier"]), str(fmt)))
    return tuple(found) or (("default", "image/tiff"),)


def output_layout(api_version: str, request: Mapping[str, Any], request_id: str) -> OutputLayout:
    """The output layout of a request object (GET) or create payload, v1 or v2."""
    payload = request_payload(api_version, dict(request)) if "request" in request else dict(request)
    responses = responses_of(payload)
    if api_version == "v2":
        output = payload.get("output") or {}
        url = ((output.get("delivery") or {}).get("s3") or {}).get("url")
        kind = "zarr" if output.get("type") == "zarr" else "raster"
        return OutputLayout(kind, expand(url, request_id) if url else None, responses)
    if payload.get("bucketName"):
        return OutputLayout("raster", expand(f"s3://{payload['bucketName']}", request_id), responses)
    zarr = (payload.get("zarrOutput") or {}).get("path")
    if zarr:
        return OutputLayout("zarr", expand(zarr, request_id), responses)
    template = (payload.get("output") or {}).get("defaultTilePath")
    return OutputLayout("raster", expand(template, request_id) if template else None, responses)


# --------------------------------------------------------------------------------------------- manifests
class _Capped:
    """A list that keeps the first ``limit`` items and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: list[dict[str, Any]] = []
        self.total = 0

    def add(self, item: dict[str, Any]) -> None:
        self.total += 1
        if len(self.items) < self.limit:
            self.items.append(item)

    @property
    def truncated(self) -> bool:
        return self.total > len(self.items)


def _manifest(
    *,
    source: str,
    layout: OutputLayout,
    counts: dict[str, int],
    by_status: dict[str, int],
    outputs: _Capped,
    failed: _Capped,
    **extra: Any,
) -> dict[str, Any]:
    total = counts.get("total", 0)
    manifest: dict[str, Any] = {
        "source": source,
        "location": layout.location,
        "output_kind": layout.kind,
        "path_template": layout.template,
        "counts": counts,
        "by_status": by_status,
        "failed_fraction": round(counts.get("failed", 0) / total, 6) if total else 0.0,
        "outputs": outputs.items,
        "outputs_truncated": outputs.truncated,
        "failed": failed.items,
        "failed_truncated": failed.truncated,
        "limit": outputs.limit,
    }
    manifest.update({k: v for k, v in extra.items() if v is not None})
    return manifest


def v1_manifest(
    hook: SentinelBatchHook, request_id: str, request: Mapping[str, Any], limit: int = DEFAULT_LIMIT
) -> dict[str, Any]:
    """v1: every tile from the tiles endpoint; output paths of PROCESSED tiles from the path template."""
    layout = output_layout("v1", request, request_id)
    return tiles_manifest(hook.iter_tiles(request_id, page_size=100), layout, limit)


def tiles_manifest(tiles: Iterable[Mapping[str, Any]], layout: OutputLayout, limit: int) -> dict[str, Any]:
    by_status: dict[str, int] = {}
    outputs, failed = _Capped(limit), _Capped(limit)
    for tile in tiles:
        status = str(tile.get("status"))
        by_status[status] = by_status.get(status, 0) + 1
        name = str(tile.get("name") or tile.get("id"))
        if status == DONE_TILE:
            entry: dict[str, Any] = {"id": tile.get("id"), "name": name}
            if layout.kind == "raster":
                entry["paths"] = layout.paths(name, tile.get("id"))
            outputs.add(entry)
        elif status == FAILED_TILE:
            error = tile.get("error") or tile.get("errorMessage")
            failed.add({"id": tile.get("id"), "name": name, **({"error": str(error)[:500]} if error else {})})
    total = sum(by_status.values())
    counts = {
        "total": total,
        "done": by_status.get(DONE_TILE, 0),
        "failed": by_status.get(FAILED_TILE, 0),
        "pending": total - by_status.get(DONE_TILE, 0) - by_status.get(FAILED_TILE, 0),
    }
    extra = {"zarr_root": layout.location} if layout.kind == "zarr" else {}
    return _manifest(
        source="tiles endpoint",
        layout=layout,
        counts=counts,
        by_status=by_status,
        outputs=outputs,
        failed=failed,
        **extra,
    )


def v2_manifest(
    request_id: str,
    request: Mapping[str, Any],
    options: ResultOptions,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """v2: features from ``execution-<id>.sqlite``; exact paths from ``featureManifest-<id>.gpkg`` when present."""
    layout = output_layout("v2", request, request_id)
    if not layout.template:
        raise SentinelBatchConfigError(f"Batch request {request_id} has no output.delivery.s3.url")
    reader = BucketReader(options.results_url, storage_options)
    execution_name, manifest_name = f"execution-{request_id}.sqlite", f"featureManifest-{request_id}.gpkg"
    root = next((r for r in candidate_roots(layout) if reader.exists(r + execution_name)), None)
    if root is None:
        tried = ", ".join(reader.resolve(r + execution_name) for r in candidate_roots(layout))
        raise FileNotFoundError(f"execution database of {request_id} not found (looked at {tried})")
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
        options.manifest_limit,
        execution_db=root + execution_name,
        feature_manifest=root + manifest_name if paths else None,
    )


def candidate_roots(layout: OutputLayout) -> list[str]:
    """Root folder(s) of the delivery path where the service puts the execution database.

    The docs say "root folder of the specified output delivery path": the folder above the first per-tile
    placeholder (where the emulator writes it), else the delivery URL's own fixed prefix.
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
    by_status: dict[str, int] = {}
    outputs, failed = _Capped(limit), _Capped(limit)
    undelivered = 0
    for feature_id, name, status, error, delivered in rows:
        status = str(status)
        by_status[status] = by_status.get(status, 0) + 1
        label = str(name if name is not None else feature_id)
        if status == "DONE":
            entry: dict[str, Any] = {"id": feature_id, "name": label}
            if layout.kind == "raster":
                entry["paths"] = list(paths.get(label) or layout.paths(label, feature_id))
            if not delivered:
                undelivered += 1
                entry["delivered"] = False
            if error:  # "no data" ends DONE with a message
                entry["note"] = str(error)[:500]
            outputs.add(entry)
        elif status in FAILED_FEATURE:
            failed.add({"id": feature_id, "name": label, **({"error": str(error)[:500]} if error else {})})
    total = sum(by_status.values())
    n_failed = sum(v for k, v in by_status.items() if k in FAILED_FEATURE)
    counts = {
        "total": total,
        "done": by_status.get("DONE", 0),
        "failed": n_failed,
        "pending": total - by_status.get("DONE", 0) - n_failed,
        "undelivered": undelivered,
    }
    if layout.kind == "zarr":
        extra["zarr_root"] = layout.location
    return _manifest(
        source="execution database",
        layout=layout,
        counts=counts,
        by_status=by_status,
        outputs=outputs,
        failed=failed,
        **extra,
    )


def read_execution_db(path: str) -> list[tuple[Any, Any, Any, Any, Any]]:
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
                    paths.setdefault(str(identifier), []).append(_strip_userinfo(str(path_)))
        return paths
    finally:
        con.close()


# ------------------------------------------------------------------------------------------ bucket access
class BucketReader:
    """Reads ``s3://`` objects through fsspec, optionally from a mirror (``results_url``) of the bucket."""

    def __init__(self, results_url: str | None, storage_options: Mapping[str, Any] | None = None) -> None:
        self.results_url = results_url.rstrip("/") if results_url else None
        self.storage_options = dict(storage_options or {})

    def resolve(self, url: str) -> str:
        if self.results_url and url.startswith("s3://"):
            return f"{self.results_url}/{url[len('s3://') :]}"
        return url

    def _fs(self, url: str) -> tuple[Any, str]:
        import fsspec

        resolved = self.resolve(url)
        try:
            return fsspec.core.url_to_fs(resolved, **self.storage_options)
        except ImportError as exc:  # e.g. s3:// without s3fs
            raise SentinelBatchConfigError(
                f"cannot read {resolved}: {exc}. Install the filesystem for it (S3: "
                "pip install 'airflow-provider-sentinel-batch[s3]'), or set results_url to a mirror of the bucket"
            ) from None

    def exists(self, url: str) -> bool:
        fs, path = self._fs(url)
        return bool(fs.exists(path))

    @contextlib.contextmanager
    def local_copy(self, url: str) -> Iterator[str]:
        """A local file with the object's bytes (sqlite needs a real file)."""
        import os
        import tempfile

        fs, path = self._fs(url)
        with tempfile.TemporaryDirectory(prefix="sentinel-batch-results-") as tmp:
            local = os.path.join(tmp, os.path.basename(path.rstrip("/")) or "object")
            fs.get_file(path, local)
            yield local


def storage_options_from_connection(conn: Any) -> dict[str, Any]:
    """fsspec/s3fs options from an Airflow connection (an ``aws`` connection works as it is)."""
    extra = dict(getattr(conn, "extra_dejson", None) or {})
    options: dict[str, Any] = dict(extra.get("storage_options") or {})
    if conn.login:
        options["key"] = conn.login
    if conn.password:
        options["secret"] = conn.password
    if extra.get("aws_session_token"):
        options["token"] = extra["aws_session_token"]
    client_kwargs = dict(options.get("client_kwargs") or {})
    endpoint = extra.get("endpoint_url") or ((extra.get("service_config") or {}).get("s3") or {}).get(
        "endpoint_url"
    )
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    region = extra.get("region_name") or extra.get("region")
    if region:
        client_kwargs["region_name"] = region
    if client_kwargs:
        options["client_kwargs"] = client_kwargs
    return options


# -------------------------------------------------------------------------------------------- thresholds
def check_thresholds(manifest: Mapping[str, Any], options: ResultOptions, request_id: str) -> None:
    """Raise :class:`SentinelBatchJobError` when failures pass ``max_failed_features`` / ``max_failed_fraction``."""
    if not options.has_thresholds:
        return
    counts = manifest.get("counts") or {}
    failed, total = int(counts.get("failed", 0)), int(counts.get("total", 0))
    over = []
    if options.max_failed_features is not None and failed > options.max_failed_features:
        over.append(f"max_failed_features={options.max_failed_features}")
    if options.max_failed_fraction is not None and total and failed / total > options.max_failed_fraction:
        over.append(f"max_failed_fraction={options.max_failed_fraction:g} ({failed / total:.1%} failed)")
    if not over:
        return
    unit = "tiles" if manifest.get("source") == "tiles endpoint" else "features"
    shown = manifest.get("failed") or []
    sample = ", ".join(
        f"{f.get('name')}" + (f" ({f['error']})" if f.get("error") else "") for f in list(shown)[:10]
    )
    more = f" and {failed - 10} more" if failed > 10 else ""
    raise SentinelBatchJobError(
        f"Batch request {request_id}: {failed} of {total} {unit} failed, over {' and '.join(over)}. "
        f"Failed: {sample}{more}",
        request_id=request_id,
        status="FAILED_FEATURES",
    )


# ------------------------------------------------------------------------------------------- completion
def finish(op: Any, context: Any, summary: dict[str, Any], wait_for: str) -> dict[str, Any]:
    """What a waiting task does after the wait succeeded, before it returns its summary.

    Called from ``_WaitsForBatch._complete`` (sensor and operators): adds the result manifest (DONE only),
    enforces the failure thresholds, attaches request details to the task's asset events and keeps lineage
    facts for OpenLineage. Returns the (possibly extended) summary.
    """
    from airflow_provider_sentinel_batch import lineage

    if wait_for != "DONE":
        lineage.warn_outlets_before_done(op, wait_for)
        lineage.remember_result(op, summary, None)
        return summary
    options: ResultOptions = getattr(op, "result_options", None) or ResultOptions()
    request_id = str(summary.get("request_id"))
    version = op.version
    request: dict[str, Any] | None = None
    try:
        request = op.hook.get_request(request_id)
    except Exception as exc:
        if options.strict:
            raise
        op.log.warning("Could not read batch request %s for its result manifest: %s", request_id, exc)
    if request is not None:
        layout = output_layout(version, request, request_id)
        if layout.location:
            summary["location"] = layout.location
    if request is not None and options.wants_manifest(version):
        try:
            manifest = build_manifest(op, version, request_id, request, options)
        except SentinelBatchJobError:
            raise
        except Exception as exc:
            if options.strict:
                raise SentinelBatchJobError(
                    f"Batch request {request_id} is {summary.get('status')} but its result manifest could not be "
                    f"read: {exc}",
                    request_id=request_id,
                    status=str(summary.get("status")),
                ) from exc
            op.log.warning("No result manifest for batch request %s: %s", request_id, exc)
        else:
            summary[RESULTS_KEY] = manifest
            counts = manifest["counts"]
            op.log.info(
                "Results of %s (%s): %d done, %d failed, %d pending of %d; outputs under %s",
                request_id,
                manifest["source"],
                counts["done"],
                counts["failed"],
                counts["pending"],
                counts["total"],
                manifest.get("location"),
            )
            if counts["failed"] and not options.has_thresholds:
                op.log.warning(
                    "%d of %d failed in batch request %s (set max_failed_features / max_failed_fraction to fail "
                    "the task on this)",
                    counts["failed"],
                    counts["total"],
                    request_id,
                )
            check_thresholds(manifest, options, request_id)
    elif options.has_thresholds:
        raise SentinelBatchConfigError(
            f"max_failed_features / max_failed_fraction are set but the failures of {request_id} could not be "
            "counted (Batch v2 needs results_url, results_conn_id or results_storage_options to read the "
            "execution database)"
        )
    lineage.emit_asset_events(op, context, lineage.asset_extra(summary))
    lineage.remember_result(op, summary, request)
    return summary


def build_manifest(
    op: Any, version: str, request_id: str, request: Mapping[str, Any], options: ResultOptions
) -> dict[str, Any]:
    if version == "v1":
        return v1_manifest(op.hook, request_id, request, options.manifest_limit)
    storage_options = dict(options.results_storage_options or {})
    if options.results_conn_id:
        from airflow.providers.common.compat.sdk import BaseHook, mask_secret

        conn = BaseHook.get_connection(options.results_conn_id)
        if conn.password:
            mask_secret(conn.password)
        storage_options = {**storage_options_from_connection(conn), **storage_options}
    return v2_manifest(request_id, request, options, storage_options)
