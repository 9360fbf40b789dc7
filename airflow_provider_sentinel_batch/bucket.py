"""Reading objects a batch job delivered: through fsspec, from the bucket itself or from a mirror of it.

Import-light: fsspec is imported only when an object is read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from airflow_provider_sentinel_batch.exceptions import SentinelBatchConfigError


class BucketReader:
    """Reads ``s3://`` objects through fsspec, optionally from a mirror (``results_url``) of the bucket."""

    def __init__(self, results_url: str | None, storage_options: Mapping[str, Any] | None = None) -> None:
        self.results_url = results_url.rstrip("/") if results_url else None
        self.storage_options = dict(storage_options or {})

    def resolve(self, url: str) -> str:
        """The URL actually read for ``url``: ``s3://bucket/key`` → ``<results_url>/bucket/key`` with a mirror."""
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
        """Whether the object is there (a refusal raises ``PermissionError`` with the store's reason)."""
        fs, path = self._fs(url)
        try:
            return bool(fs.exists(path))
        except PermissionError as exc:
            raise PermissionError(self._refused(fs, path, url, exc)) from None

    @contextlib.contextmanager
    def local_copy(self, url: str) -> Iterator[str]:
        """A local file with the object's bytes (sqlite needs a real file)."""
        import os
        import tempfile

        fs, path = self._fs(url)
        with tempfile.TemporaryDirectory(prefix="sentinel-batch-results-") as tmp:
            local = os.path.join(tmp, os.path.basename(path.rstrip("/")) or "object")
            try:
                fs.get_file(path, local)
            except PermissionError as exc:
                raise PermissionError(self._refused(fs, path, url, exc)) from None
            yield local

    def missing_bucket(self, url: str) -> str | None:
        """The bucket of an ``s3://`` URL read directly (no mirror) when the store says it is not there."""
        if self.results_url or not url.startswith("s3://"):
            return None
        fs, path = self._fs(url)
        bucket = path.split("/", 1)[0]
        try:
            return None if fs.exists(bucket) else bucket
        except Exception:
            return None

    def _refused(self, fs: Any, path: str, url: str, exc: Exception) -> str:
        """Why the store refused. A HEAD answer has no body (s3fs says just "Forbidden"): list the folder once to
        get the store's own reason (unknown access key, wrong secret, no permission) and quote it, never a key."""
        reason = str(exc) or type(exc).__name__
        try:
            fs.ls(path.rsplit("/", 1)[0], refresh=True)
        except Exception as listing:
            reason = str(listing) or reason
        secret = self.storage_options.get("secret")
        if secret:
            reason = reason.replace(str(secret), "***")
        return (
            f"access to {self.resolve(url)} refused: {reason} (check the access key, secret and endpoint_url of the "
            "results connection, and that it may read the bucket)"
        )


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
