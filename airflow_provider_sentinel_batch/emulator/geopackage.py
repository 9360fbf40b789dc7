"""Reading polygons from a GeoPackage (plain SQLite, no GDAL): feature ids, identifiers, areas, extents.

Enough of the GeoPackage spec for the Batch Statistical input: the first ``features`` table of
``gpkg_contents``, its geometry column from ``gpkg_geometry_columns``, and the standard binary geometry
(``GP`` header, optional envelope, then little- or big-endian WKB Polygon / MultiPolygon).
"""

from __future__ import annotations

import itertools
import math
import sqlite3
import struct
from dataclasses import dataclass
from pathlib import Path

MAX_FEATURES = 700_000


class GeoPackageError(ValueError):
    """The file is missing, not a GeoPackage, or holds no polygon features."""


@dataclass(frozen=True)
class Feature:
    """One input polygon: its id, optional identifier, area and extent in the layer's CRS units."""

    id: int
    identifier: str | None
    area: float
    bbox: tuple[float, float, float, float]


@dataclass(frozen=True)
class Layer:
    """The features of a GeoPackage and the EPSG code of their CRS."""

    epsg: int
    features: list[Feature]


def read_features(path: Path) -> Layer:
    """Every polygon of the first feature table; raises ``GeoPackageError`` with a user-facing reason."""
    if not path.is_file():
        raise GeoPackageError("does not exist")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:  # pragma: no cover - sqlite opens lazily
        raise GeoPackageError(f"cannot be opened ({exc})") from None
    try:
        try:
            row = con.execute(
                "SELECT c.table_name, g.column_name, g.srs_id FROM gpkg_contents c "
                "JOIN gpkg_geometry_columns g ON g.table_name = c.table_name "
                "WHERE c.data_type = 'features' ORDER BY c.table_name LIMIT 1"
            ).fetchone()
        except sqlite3.Error:
            raise GeoPackageError("is not a GeoPackage (no gpkg_contents / gpkg_geometry_columns)") from None
        if row is None:
            raise GeoPackageError("has no feature table")
        table, column, srs_id = str(row[0]), str(row[1]), int(row[2])
        columns = {str(r[1]).lower(): str(r[1]) for r in con.execute(f'PRAGMA table_info("{table}")')}
        id_col = columns.get("id") or columns.get("fid")
        if id_col is None:
            raise GeoPackageError(f"table {table!r} has no 'id' (or 'fid') column")
        ident_col = columns.get("identifier")
        select = f'"{id_col}", ' + (f'"{ident_col}", ' if ident_col else "NULL, ") + f'"{column}"'
        features: list[Feature] = []
        for fid, ident, blob in con.execute(f'SELECT {select} FROM "{table}" ORDER BY "{id_col}"'):
            if len(features) >= MAX_FEATURES:
                raise GeoPackageError(f"has more than {MAX_FEATURES} features")
            if blob is None:
                continue
            rings = parse_geometry(bytes(blob))
            if not rings:
                continue
            xs = [x for ring in rings for x, _ in ring]
            ys = [y for ring in rings for _, y in ring]
            area = sum(_ring_area(ring) for ring in rings)
            features.append(
                Feature(
                    int(fid),
                    None if ident is None else str(ident),
                    area,
                    (min(xs), min(ys), max(xs), max(ys)),
                )
            )
    except sqlite3.Error as exc:
        raise GeoPackageError(f"cannot be read ({exc})") from None
    finally:
        con.close()
    if not features:
        raise GeoPackageError("holds no polygon features")
    return Layer(srs_id, features)


def _ring_area(ring: list[tuple[float, float]]) -> float:
    """Signed shoelace area; exterior rings and holes come back with opposite signs only if oriented so,
    which GeoPackage writers do not guarantee, so holes are handled by ``parse_geometry`` instead."""
    total = 0.0
    for (x1, y1), (x2, y2) in itertools.pairwise(ring):
        total += x1 * y2 - x2 * y1
    return abs(total) / 2


def parse_geometry(blob: bytes) -> list[list[tuple[float, float]]]:
    """Exterior rings of a GeoPackage geometry blob (holes are ignored: statistics need only a size)."""
    if len(blob) < 8 or blob[:2] != b"GP":
        raise GeoPackageError("has a geometry that is not a GeoPackage binary geometry")
    flags = blob[3]
    envelope = (0, 32, 48, 48, 64)[(flags >> 1) & 0x07] if ((flags >> 1) & 0x07) <= 4 else 0
    if flags & 0x10:  # empty geometry
        return []
    return _wkb_rings(blob, 8 + envelope)[0]


def _wkb_rings(data: bytes, pos: int) -> tuple[list[list[tuple[float, float]]], int]:
    order = "<" if data[pos] == 1 else ">"
    (kind,) = struct.unpack_from(order + "I", data, pos + 1)
    pos += 5
    base = kind % 1000
    dims = 3 if kind // 1000 in (1, 2) else 4 if kind // 1000 == 3 else 2
    if base == 3:  # Polygon
        (n_rings,) = struct.unpack_from(order + "I", data, pos)
        pos += 4
        rings = []
        for i in range(n_rings):
            (n_points,) = struct.unpack_from(order + "I", data, pos)
            pos += 4
            points = []
            for _ in range(n_points):
                x, y = struct.unpack_from(order + "dd", data, pos)
                pos += 8 * dims
                points.append((x, y))
            if i == 0:
                rings.append(points)
        return rings, pos
    if base == 6:  # MultiPolygon
        (n_polys,) = struct.unpack_from(order + "I", data, pos)
        pos += 4
        rings = []
        for _ in range(n_polys):
            sub, pos = _wkb_rings(data, pos)
            rings += sub
        return rings, pos
    raise GeoPackageError(f"has a geometry of WKB type {kind}; only Polygon and MultiPolygon are supported")


def geometry_blob(rings: list[list[tuple[float, float]]], srs_id: int) -> bytes:
    """A GeoPackage binary geometry (little-endian, XY envelope) of a Polygon or MultiPolygon."""
    xs = [x for ring in rings for x, _ in ring]
    ys = [y for ring in rings for _, y in ring]
    header = b"GP" + bytes([0, 0b00000011]) + struct.pack("<i", srs_id)
    header += struct.pack("<dddd", min(xs), max(xs), min(ys), max(ys))

    def polygon(ring: list[tuple[float, float]]) -> bytes:
        body = struct.pack("<BII", 1, 3, 1) + struct.pack("<I", len(ring))
        return body + b"".join(struct.pack("<dd", x, y) for x, y in ring)

    if len(rings) == 1:
        return header + polygon(rings[0])
    return header + struct.pack("<BII", 1, 6, len(rings)) + b"".join(polygon(r) for r in rings)


def write_geopackage(
    path: Path,
    features: list[tuple[int, str | None, list[list[tuple[float, float]]]]],
    *,
    srs_id: int = 4326,
    table: str = "features",
) -> None:
    """A minimal valid GeoPackage with one polygon table ``(id, identifier, geometry)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    con = sqlite3.connect(path)
    try:
        with con:
            con.execute("PRAGMA application_id = 1196444487")  # 'GPKG'
            con.execute("PRAGMA user_version = 10300")
            con.execute(
                "CREATE TABLE gpkg_spatial_ref_sys (srs_name TEXT NOT NULL, srs_id INTEGER PRIMARY KEY, "
                "organization TEXT NOT NULL, organization_coordsys_id INTEGER NOT NULL, "
                "definition TEXT NOT NULL, description TEXT)"
            )
            con.executemany(
                "INSERT INTO gpkg_spatial_ref_sys VALUES (?, ?, ?, ?, ?, ?)",
                [
                    ("Undefined cartesian SRS", -1, "NONE", -1, "undefined", None),
                    ("Undefined geographic SRS", 0, "NONE", 0, "undefined", None),
                    ("WGS 84 geodetic", 4326, "EPSG", 4326, _WGS84_WKT, "longitude/latitude"),
                ]
                + ([] if srs_id in (-1, 0, 4326) else [(f"EPSG:{srs_id}", srs_id, "EPSG", srs_id, "", None)]),
            )
            con.execute(
                "CREATE TABLE gpkg_contents (table_name TEXT NOT NULL PRIMARY KEY, data_type TEXT NOT NULL, "
                "identifier TEXT UNIQUE, description TEXT DEFAULT '', last_change DATETIME NOT NULL DEFAULT "
                "(strftime('%Y-%m-%dT%H:%M:%fZ','now')), min_x DOUBLE, min_y DOUBLE, max_x DOUBLE, "
                "max_y DOUBLE, srs_id INTEGER)"
            )
            con.execute(
                "CREATE TABLE gpkg_geometry_columns (table_name TEXT NOT NULL, column_name TEXT NOT NULL, "
                "geometry_type_name TEXT NOT NULL, srs_id INTEGER NOT NULL, z TINYINT NOT NULL, "
                "m TINYINT NOT NULL, CONSTRAINT pk_geom_cols PRIMARY KEY (table_name, column_name))"
            )
            xs = [x for _, _, rings in features for ring in rings for x, _ in ring]
            ys = [y for _, _, rings in features for ring in rings for _, y in ring]
            con.execute(
                "INSERT INTO gpkg_contents (table_name, data_type, identifier, min_x, min_y, max_x, max_y, "
                "srs_id) VALUES (?, 'features', ?, ?, ?, ?, ?, ?)",
                (table, table, min(xs), min(ys), max(xs), max(ys), srs_id),
            )
            con.execute(
                "INSERT INTO gpkg_geometry_columns VALUES (?, 'geometry', 'MULTIPOLYGON', ?, 0, 0)",
                (table, srs_id),
            )
            con.execute(
                f'CREATE TABLE "{table}" (id INTEGER PRIMARY KEY AUTOINCREMENT, identifier TEXT, '
                "geometry MULTIPOLYGON)"
            )
            con.executemany(
                f'INSERT INTO "{table}" (id, identifier, geometry) VALUES (?, ?, ?)',
                [(fid, ident, geometry_blob(rings, srs_id)) for fid, ident, rings in features],
            )
        con.execute("VACUUM")
    finally:
        con.close()


def metres_per_unit(epsg: int, latitude: float) -> tuple[float, float]:
    """Approximate metres per CRS unit (x, y): degrees for geographic CRSs, metres otherwise."""
    if epsg in (4326, 4258, 0):
        return 111_320.0 * math.cos(math.radians(latitude)), 110_574.0
    return 1.0, 1.0


_WGS84_WKT = (
    'GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],PRIMEM["Greenwich",0],'
    'UNIT["degree",0.0174532925199433],AUTHORITY["EPSG","4326"]]'
)


def synthetic_parcels(
    count: int, *, lon: float = 9.25, lat: float = 42.15, seed: int = 0, prefix: str = "FIELD"
) -> list[tuple[int, str | None, list[list[tuple[float, float]]]]]:
    """``count`` made-up field polygons (a few hectares each) on a jittered grid around ``(lon, lat)``.

    Clearly synthetic: regular quadrilaterals with identifiers ``<prefix>-0001``…, for examples and tests.
    """
    import random

    rng = random.Random(f"parcels:{seed}")
    side = max(1, math.ceil(math.sqrt(count)))
    features: list[tuple[int, str | None, list[list[tuple[float, float]]]]] = []
    for i in range(count):
        row, col = divmod(i, side)
        x0 = lon + col * 0.006 + rng.uniform(0, 0.001)
        y0 = lat + row * 0.005 + rng.uniform(0, 0.001)
        w, h = rng.uniform(0.002, 0.004), rng.uniform(0.0015, 0.003)
        skew = rng.uniform(-0.0004, 0.0004)
        ring = [(x0, y0), (x0 + w, y0 + skew), (x0 + w + skew, y0 + h), (x0 + skew, y0 + h), (x0, y0)]
        features.append((i + 1, f"{prefix}-{i + 1:04d}", [[(round(x, 6), round(y, 6)) for x, y in ring]]))
    return features
