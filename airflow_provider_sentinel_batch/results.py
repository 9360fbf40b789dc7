"""What a waiting task does once the job is DONE: the result manifest, and the failure thresholds it enforces.

The manifest (see :mod:`~airflow_provider_sentinel_batch.manifest`) is added to the waiting task's summary
(XCom). v1 lists tiles from the API; v2 reads the execution database through fsspec only when a results location
is configured (``results_url``, ``results_conn_id`` or ``results_storage_options``): the bucket itself
(``s3://``, needs ``s3fs``) or a mirror/mount of it, e.g. the emulator's data directory
(``results_url="file:///.../data"`` maps ``s3://bucket/key`` to ``file:///.../data/bucket/key``).

``max_failed_features`` / ``max_failed_fraction`` turn too many failed tiles (v1, with
``partial_policy="succeed_with_warning"``) or failed features (v2, a DONE job can still have FAILED features) into
a task failure.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_sentinel_batch.exceptions import SentinelBatchConfigError, SentinelBatchJobError
from airflow_provider_sentinel_batch.manifest import DEFAULT_LIMIT, TILES_SOURCE, v1_manifest, v2_manifest

if TYPE_CHECKING:
    from airflow_provider_sentinel_batch.hooks.sentinel_batch import SentinelBatchHook

RESULTS_KEY = "results"


# ------------------------------------------------------------------------------------------------ options
@dataclass(frozen=True)
class ResultOptions:
    """What the waiting task does once the job is DONE: manifest or not, where the bucket is, thresholds.

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
        """A failure threshold is set."""
        return self.max_failed_features is not None or self.max_failed_fraction is not None

    @property
    def bucket_configured(self) -> bool:
        """Where the bucket can be read was said (a URL, a connection or fsspec options)."""
        return bool(self.results_url or self.results_conn_id or self.results_storage_options)

    def wants_manifest(self, api_version: str) -> bool:
        """A manifest is built for a DONE job of this API version."""
        if self.result_manifest is False:
            return False
        if api_version == "v1" or self.result_manifest is True or self.has_thresholds:
            return True
        return self.bucket_configured

    @property
    def strict(self) -> bool:
        """A manifest that cannot be read fails the task (it was asked for explicitly, or thresholds need it)."""
        return self.result_manifest is True or self.has_thresholds


# -------------------------------------------------------------------------------------------- thresholds
def check_thresholds(manifest: Mapping[str, Any], options: ResultOptions, request_id: str) -> None:
    """Raise :class:`SentinelBatchJobError` when failures pass ``max_failed_features`` / ``max_failed_fraction``."""
    if not options.has_thresholds:
        return
    counts = manifest.get("counts") or {}
    shown = manifest.get("failed") or []
    raise_if_too_many_failed(
        what=f"Batch request {request_id}",
        request_id=request_id,
        failed=int(counts.get("failed", 0)),
        total=int(counts.get("total", 0)),
        unit="tiles" if manifest.get("source") == TILES_SOURCE else "features",
        samples=[
            f"{f.get('name')}" + (f" ({f['error']})" if f.get("error") else "") for f in list(shown)[:10]
        ],
        max_failed_features=options.max_failed_features,
        max_failed_fraction=options.max_failed_fraction,
    )


def raise_if_too_many_failed(
    *,
    what: str,
    request_id: str,
    failed: int,
    total: int,
    unit: str,
    samples: list[str],
    max_failed_features: int | None,
    max_failed_fraction: float | None,
) -> None:
    """The failure-threshold rule shared by Batch manifests and Batch Statistical tables: raise
    :class:`SentinelBatchJobError` naming the limits passed and up to ten failed items (``samples``)."""
    over = []
    if max_failed_features is not None and failed > max_failed_features:
        over.append(f"max_failed_features={max_failed_features}")
    if max_failed_fraction is not None and total and failed / total > max_failed_fraction:
        over.append(f"max_failed_fraction={max_failed_fraction:g} ({failed / total:.1%} failed)")
    if not over:
        return
    more = f" and {failed - 10} more" if failed > 10 else ""
    raise SentinelBatchJobError(
        f"{what}: {failed} of {total} {unit} failed, over {' and '.join(over)}. Failed: {', '.join(samples[:10])}{more}",
        request_id=request_id,
        status="FAILED_FEATURES",
    )


# ------------------------------------------------------------------------------------------- collection
def build_manifest(
    hook: SentinelBatchHook,
    api_version: str,
    request_id: str,
    request: Mapping[str, Any],
    options: ResultOptions,
) -> dict[str, Any]:
    """The result manifest of a DONE request: v1 from the tiles endpoint, v2 and statistical from the bucket."""
    if api_version == "v1":
        return v1_manifest(hook, request_id, request, options.manifest_limit)
    from airflow_provider_sentinel_batch.bucket import BucketReader, storage_options_from_connection

    storage_options = dict(options.results_storage_options or {})
    if options.results_conn_id:
        from airflow.providers.common.compat.sdk import BaseHook, mask_secret

        conn = BaseHook.get_connection(options.results_conn_id)
        if conn.password:
            mask_secret(conn.password)
        storage_options = {**storage_options_from_connection(conn), **storage_options}
    reader = BucketReader(options.results_url, storage_options)
    if api_version == "statistical":
        from airflow_provider_sentinel_batch.statistical_results import statistical_manifest

        return statistical_manifest(request_id, request, reader, options.manifest_limit)
    return v2_manifest(request_id, request, reader, options.manifest_limit)


def collect(
    *,
    hook: SentinelBatchHook,
    api_version: str,
    request_id: str,
    request: Mapping[str, Any] | None,
    status: Any,
    options: ResultOptions,
    log: logging.Logger | Any,
) -> dict[str, Any] | None:
    """The manifest of a DONE request as ``options`` ask (``None``: not wanted or not readable), thresholds checked.

    ``request`` is the request object read after the wait (``None`` when it could not be read). Raises
    :class:`SentinelBatchJobError` when failures pass a threshold or a required manifest cannot be read.
    """
    if request is None or not options.wants_manifest(api_version):
        if options.has_thresholds:
            raise SentinelBatchConfigError(
                f"max_failed_features / max_failed_fraction are set but the failures of {request_id} could not "
                "be counted (Batch v2 needs results_url, results_conn_id or results_storage_options to read the "
                "execution database)"
            )
        return None
    try:
        manifest = build_manifest(hook, api_version, request_id, request, options)
    except SentinelBatchJobError:
        raise
    except Exception as exc:
        if options.strict:
            raise SentinelBatchJobError(
                f"Batch request {request_id} is {status} but its result manifest could not be read: {exc}",
                request_id=request_id,
                status=str(status),
            ) from exc
        log.warning("No result manifest for batch request %s: %s", request_id, exc)
        return None
    counts = manifest["counts"]
    log.info(
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
        log.warning(
            "%d of %d failed in batch request %s (set max_failed_features / max_failed_fraction to fail the task "
            "on this)",
            counts["failed"],
            counts["total"],
            request_id,
        )
    check_thresholds(manifest, options, request_id)
    return manifest
