"""Bucket outputs on local disk: ``s3://bucket/key`` → ``<data_dir>/bucket/key``.

Files are tiny placeholders (a valid 1x1 TIFF, ``{}`` for JSON, a zarr group marker) so DAGs
that check "did the outputs land" work without gigabytes. v2 also gets ``execution-<id>.sqlite`` with the
documented ``features`` table and, after analysis, ``featureManifest-<id>.gpkg`` (plain SQLite).
"""

from __future__ import annotations

import json
import re
import sqlite3
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

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


def tile_urls(
    template: str, request_id: str, tile_name: str, tile_id: int, responses: Iterable[Sequence[str]]
) -> list[tuple[str, str]]:
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


def write_placeholder(path: Path, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "application/json":
        path.write_text("{}\n")
    else:
        path.write_bytes(TIFF_BYTES)


def write_zarr_group(root: Path, identifiers: Iterable[str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    for ident in identifiers:
        arr = root / _SAFE.sub("_", ident)
        arr.mkdir(parents=True, exist_ok=True)
        (arr / ".zarray").write_text(json.dumps({"zarr_format": 2, "emulated": True}))


def write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))


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
    ring = geometry.get("coordinates", [[]])[0]
    return "POLYGON ((" + ", ".join(f"{x} {y}" for x, y in ring) + "))"
