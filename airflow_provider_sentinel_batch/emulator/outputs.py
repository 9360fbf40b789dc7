"""Bucket outputs: on local disk (``s3://bucket/key`` → ``<data_dir>/bucket/key``) or in an S3-compatible server.

Files are tiny placeholders (a valid 1x1 TIFF, ``{}`` for JSON, a zarr group marker) so DAGs
that check "did the outputs land" work without gigabytes. v2 also gets ``execution-<id>.sqlite`` with the
documented ``features`` table and, after analysis, ``featureManifest-<id>.gpkg`` (plain SQLite).

With an S3 endpoint (:class:`S3Delivery`) every object goes through the S3 API, signed with the credentials of
the request (v2 ``output.delivery.s3.accessKey``/``secretAccessKey``) or with the keys standing in for a bucket
policy (v1, and v2 ``iamRoleARN``). No file or object the emulator writes holds a credential
(:func:`without_credentials`).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import struct
import tempfile
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .config import BucketKeys, S3Delivery
from .validation import FORMATS, PLACEHOLDERS

_SAFE = re.compile(r"[^A-Za-z0-9._=+@,-]")


def _tiny_tiff() -> bytes:
    """A valid little-endian baseline TIFF: 1x1 pixel, 8-bit grayscale."""
    entries = [
        (256, 3, 1, 1),  # ImageWidth
        (257, 3, 1, 1),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: BlackIsZero
        (273, 4, 1, 0),  # StripOffsets (patched below)
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 3, 1, 1),  # RowsPerStrip
        (279, 4, 1, 1),  # StripByteCounts
    ]
    data_offset = 8 + 2 + 12 * len(entries) + 4
    ifd = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        if tag == 273:
            value = data_offset
        packed = struct.pack("<HHI", tag, typ, count)
        packed += struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value)
        ifd += packed
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + b"\x00"


TIFF_BYTES = _tiny_tiff()


def local_path(data_dir: Path, url: str) -> Path:
    """Map an ``s3://`` URL into ``data_dir``; every path segment is sanitised so nothing escapes it."""
    rest = url[len("s3://") :] if url.startswith("s3://") else url
    parts = [p for p in rest.split("/") if p not in {"", ".", ".."}]
    safe = [_SAFE.sub("_", p) for p in parts] or ["_"]
    return data_dir.joinpath(*safe)


def expand_template(template: str, request_id: str) -> str:
    """A plain prefix means ``<prefix>/<requestId>/<tileName>/<outputId>.<format>`` (service rule)."""
    if not any(p in template for p in PLACEHOLDERS):
        template = template.rstrip("/") + "/<requestId>/<tileName>/<outputId>.<format>"
    return template.replace("<requestId>", request_id)


def output_root(template: str, request_id: str) -> str:
    """The fixed directory above the first per-tile placeholder (where v2 puts its execution database)."""
    expanded = expand_template(template, request_id)
    cut = min(
        (expanded.find(p) for p in ("<tileName>", "<tileId>", "<outputId>", "<format>") if p in expanded),
        default=len(expanded),
    )
    head = expanded[:cut]
    return head.rsplit("/", 1)[0] if "/" in head[len("s3://") :] else head.rstrip("/")


def zarr_root(template: str, request_id: str) -> str:
    """Where a zarr group goes: ``<url>/<requestId>`` for a plain prefix (a subfolder named after the request,
    as the docs say), else the URL with ``<requestId>`` filled."""
    if "<requestId>" not in template:
        return template.rstrip("/") + "/" + request_id
    return template.replace("<requestId>", request_id)


def tile_urls(
    template: str, request_id: str, tile_name: str, tile_id: int, responses: Iterable[Sequence[str]]
) -> list[tuple[str, str]]:
    """The object URL of each ``(identifier, format)`` response for one tile, with its format."""
    expanded = expand_template(template, request_id)
    urls = []
    for identifier, fmt in responses:
        url = (
            expanded.replace("<tileName>", tile_name)
            .replace("<tileId>", str(tile_id))
            .replace("<outputId>", identifier)
            .replace("<format>", FORMATS.get(fmt, "bin"))
        )
        urls.append((url, fmt))
    return urls


def write_execution_db(path: Path, rows: list[tuple[int, str, str, str | None, bool]]) -> None:
    """``features(id, name, status, error, delivered)``; status PENDING | DONE | FATAL."""
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)
    try:
        with con:
            con.execute(
                "CREATE TABLE IF NOT EXISTS features "
                "(id INTEGER PRIMARY KEY, name TEXT, status TEXT, error TEXT, delivered BOOLEAN)"
            )
            con.execute("DELETE FROM features")
            con.executemany(
                "INSERT INTO features (id, name, status, error, delivered) VALUES (?, ?, ?, ?, ?)",
                [(i, n, s, e, int(d)) for i, n, s, e, d in rows],
            )
    finally:
        con.close()


def write_feature_manifest(path: Path, rows_by_crs: dict[int, list[tuple[Any, ...]]]) -> None:
    """A ``feature_<epsg>`` table per CRS: fid, outputId, identifier, path, width, height, geometry (WKT)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)
    try:
        with con:
            for epsg, rows in rows_by_crs.items():
                table = f"feature_{epsg}"
                con.execute(f'DROP TABLE IF EXISTS "{table}"')
                con.execute(
                    f'CREATE TABLE "{table}" (fid INTEGER PRIMARY KEY, outputId TEXT, identifier TEXT, '
                    "path TEXT, width INTEGER, height INTEGER, geometry TEXT)"
                )
                con.executemany(f'INSERT INTO "{table}" VALUES (?, ?, ?, ?, ?, ?, ?)', rows)
    finally:
        con.close()


def polygon_wkt(geometry: dict[str, Any]) -> str:
    """The exterior ring of a GeoJSON polygon as WKT (holes dropped)."""
    ring = geometry.get("coordinates", [[]])[0]
    return "POLYGON ((" + ", ".join(f"{x} {y}" for x, y in ring) + "))"


# ------------------------------------------------------------------------------------------- credentials
CREDENTIAL_FIELDS = frozenset({"accessKey", "secretAccessKey"})


def without_credentials(value: Any) -> Any:
    """A deep copy of ``value`` with every ``accessKey``/``secretAccessKey`` removed (what files may hold)."""
    if isinstance(value, dict):
        return {k: without_credentials(v) for k, v in value.items() if k not in CREDENTIAL_FIELDS}
    if isinstance(value, list):
        return [without_credentials(v) for v in value]
    return value


def request_keys(body: Any) -> BucketKeys | None:
    """The delivery credentials of a v2 request (``output.delivery.s3``), if it carries a key pair."""
    try:
        s3 = body["output"]["delivery"]["s3"]
        access, secret = s3.get("accessKey"), s3.get("secretAccessKey")
    except (KeyError, TypeError, AttributeError):
        return None
    if isinstance(access, str) and isinstance(secret, str) and access and secret:
        return BucketKeys(access, secret)
    return None


# ----------------------------------------------------------------------------------------- object bytes
def placeholder_bytes(fmt: str) -> bytes:
    """What a tile output of ``fmt`` holds: ``{}`` for JSON, else a 1x1 TIFF."""
    return b"{}\n" if fmt == "application/json" else TIFF_BYTES


def _sqlite_bytes(fill: Any) -> bytes:
    """Build an SQLite database with ``fill(path)`` in a temp file and return its bytes."""
    with tempfile.TemporaryDirectory(prefix="sentinel-batch-emulator-db-") as tmp:
        path = Path(tmp) / "db.sqlite"
        fill(path)
        return path.read_bytes()


def execution_db_bytes(rows: list[tuple[int, str, str, str | None, bool]]) -> bytes:
    """The bytes of a v2 execution database (see :func:`write_execution_db`)."""
    return _sqlite_bytes(lambda path: write_execution_db(path, rows))


def feature_manifest_bytes(rows_by_crs: dict[int, list[tuple[Any, ...]]]) -> bytes:
    """The bytes of a v2 feature manifest (see :func:`write_feature_manifest`)."""
    return _sqlite_bytes(lambda path: write_feature_manifest(path, rows_by_crs))


def zarr_objects(identifiers: Iterable[str]) -> dict[str, bytes]:
    """Relative key → bytes of the zarr group skeleton (``.zgroup`` and one ``.zarray`` per output)."""
    objects = {".zgroup": json.dumps({"zarr_format": 2}).encode()}
    for ident in identifiers:
        objects[f"{_SAFE.sub('_', ident)}/.zarray"] = json.dumps(
            {"zarr_format": 2, "emulated": True}
        ).encode()
    return objects


# --------------------------------------------------------------------------------------------- S3 delivery
def split_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` → (``bucket``, ``a/b``)."""
    rest = url[len("s3://") :] if url.startswith("s3://") else url
    bucket, _, key = rest.partition("/")
    return bucket, key.lstrip("/")


class DeliveryError(Exception):
    """The S3 server refused a write: ``code`` is the S3 error code (``NoSuchBucket``, ``AccessDenied``, ...)."""

    def __init__(self, bucket: str, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.bucket = bucket
        self.code = code
        self.message = message

    def describe(self, action: str = "write to") -> str:
        """What the service says: the bucket, the S3 error code and its message (never a key)."""
        if self.code == "NoSuchBucket":
            return f"Bucket {self.bucket} does not exist."
        if self.code == "NoSuchKey":
            return f"The object does not exist in bucket {self.bucket}."
        if self.code == "NoCredentials":
            return f"No credentials to {action} bucket {self.bucket}: {self.message}"
        return f"Cannot {action} bucket {self.bucket}: access denied ({self.code}: {self.message})"


class S3Writer:
    """Puts objects through the S3 API (botocore, from the ``s3`` extra), one client per key pair."""

    def __init__(self, config: S3Delivery) -> None:
        self.config = config
        self._clients: dict[BucketKeys, Any] = {}
        self._lock = threading.Lock()

    def _client(self, keys: BucketKeys) -> Any:
        with self._lock:
            client = self._clients.get(keys)
            if client is None:
                try:
                    import botocore.session
                    from botocore.config import Config
                except ImportError as exc:  # pragma: no cover - depends on the installed extras
                    raise RuntimeError(
                        "S3 delivery needs botocore: pip install 'airflow-provider-sentinel-batch[emulator,s3]'"
                    ) from exc
                client = botocore.session.get_session().create_client(
                    "s3",
                    endpoint_url=self.config.endpoint_url,
                    region_name=self.config.region,
                    aws_access_key_id=keys.access_key,
                    aws_secret_access_key=keys.secret_key,
                    config=Config(
                        retries={"max_attempts": 2, "mode": "standard"},
                        connect_timeout=5,
                        read_timeout=30,
                        s3={"addressing_style": "path"},
                    ),
                )
                self._clients[keys] = client
            return client

    def _call(self, bucket: str, keys: BucketKeys | None, method: str, **kwargs: Any) -> Any:
        if keys is None:
            raise DeliveryError(
                bucket,
                "NoCredentials",
                "the request has no accessKey/secretAccessKey and no bucket policy applies",
            )
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self._client(keys), method)(Bucket=bucket, **kwargs)
        except ClientError as exc:
            err = exc.response.get("Error") or {}
            code = str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
            if code == "404":
                code = "NoSuchBucket"
            elif code == "403":
                code = "AccessDenied"
            message = str(err.get("Message") or "").replace(keys.secret_key, "***")
            raise DeliveryError(bucket, code, message or code) from None
        except BotoCoreError as exc:
            raise DeliveryError(
                bucket, type(exc).__name__, str(exc).replace(keys.secret_key, "***")
            ) from None

    def put(self, url: str, data: bytes, keys: BucketKeys | None) -> None:
        """PutObject ``data`` at ``url``; :class:`DeliveryError` if the server refuses or ``keys`` is None."""
        bucket, key = split_s3_url(url)
        self._call(bucket, keys, "put_object", Key=key, Body=data)

    def get(self, url: str, keys: BucketKeys | None) -> bytes:
        """GetObject: the bytes of an input object (a GeoPackage, an evalscript)."""
        bucket, key = split_s3_url(url)
        body = self._call(bucket, keys, "get_object", Key=key)["Body"]
        try:
            return bytes(body.read())
        finally:
            body.close()

    def check_bucket(self, url: str, keys: BucketKeys | None) -> None:
        """HeadBucket: the bucket exists and these keys may use it (the bucket-policy check of v1)."""
        bucket, _ = split_s3_url(url)
        self._call(bucket, keys, "head_bucket")


def write_bytes(path: Path, data: bytes) -> None:
    """Write a local object atomically (readers never see half a database)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
