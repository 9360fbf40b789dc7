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
        """Whether the object is there."""
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
