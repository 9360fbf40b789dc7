"""Tiling grids and the tiles an area of interest gets on them.

Pure Python (no shapely/pyproj) so the emulator stays light: UTM by the Krüger series (Karney 2011, sub-mm
within a zone), LAEA Europe (EPSG:3035) by Snyder's ellipsoidal formulas, Web Mercator for input bboxes.
The real grids are "the Sentinel-2 tiling resized, fully overlapped tiles removed"; here tiles are aligned
on multiples of the tile size in each zone, which gives realistic counts (Corsica, grid 0: 72 tiles).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

# WGS84 / GRS80 (the 0.1 mm difference does not matter here)
_A = 6378137.0
_F = 1 / 298.257223563
_E2 = _F * (2 - _F)
_E = math.sqrt(_E2)

CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
EPSG_PREFIX = "http://www.opengis.net/def/crs/EPSG/0/"

Point = tuple[float, float]
Ring = list[Point]


@dataclass(frozen=True)
class TilingGrid:
    """A grid as ``GET /tilinggrids`` describes it, plus what the emulator needs to cut tiles."""

    id: int
    name: str
    tile_size: float
    resolutions: tuple[float, ...]
    unit: str  # METRE | DEGREE
    kind: str  # utm | laea | wgs84
    max_lat: float

    def descriptor(self) -> dict[str, object]:
        """The grid as ``GET /tilinggrids`` returns it (id, name, tile size, resolutions, unit)."""
        return {
            "id": self.id,
            "name": self.name,
            "properties": {
                "tileWidth": self.tile_size,
                "tileHeight": self.tile_size,
                "resolutions": list(self.resolutions),
                "unit": self.unit,
            },
        }

    def allows_resolution(self, resolution: float) -> bool:
        """True if ``resolution`` (in the grid's unit) is one the grid offers."""
        return any(math.isclose(resolution, r, rel_tol=1e-9, abs_tol=1e-12) for r in self.resolutions)

    def tile_px(self, resolution: float) -> int:
        """Width (= height) of a tile in pixels at ``resolution``."""
        return round(self.tile_size / resolution)

    @property
    def supports_zarr(self) -> bool:
        """Zarr output is only offered on the WGS84 and LAEA grids (3, 6, 7)."""
        return self.kind in {"laea", "wgs84"}


GRIDS: dict[int, TilingGrid] = {
    g.id: g
    for g in (
        TilingGrid(0, "20km grid", 20040.0, (10.0, 20.0, 30.0, 60.0), "METRE", "utm", 80.7),
        TilingGrid(1, "10km grid", 10000.0, (10.0, 20.0), "METRE", "utm", 80.6),
        TilingGrid(2, "100km grid", 100080.0, (30.0, 60.0, 120.0, 240.0, 360.0), "METRE", "utm", 81.0),
        TilingGrid(3, "WGS84 1 degree grid", 1.0, (0.0001, 0.0002), "DEGREE", "wgs84", 90.0),
        TilingGrid(6, "LAEA 100km grid", 100000.0, (40.0, 50.0, 100.0), "METRE", "laea", 90.0),
        TilingGrid(7, "LAEA 20km grid", 20000.0, (10.0, 20.0), "METRE", "laea", 90.0),
    )
}

# LAEA Europe coverage (incl. Turkey, Iceland, Svalbard, Azores, Canaries), as a lon/lat box.
LAEA_COVERAGE = (-35.0, 24.0, 50.0, 85.0)


# --------------------------------------------------------------------------------------------- projections
class Utm:
    """Transverse Mercator for one UTM zone (forward and inverse)."""

    _n = _F / (2 - _F)
    _AA = _A / (1 + _n) * (1 + _n**2 / 4 + _n**4 / 64)
    _alpha = (
        _n / 2 - 2 * _n**2 / 3 + 5 * _n**3 / 16,
        13 * _n**2 / 48 - 3 * _n**3 / 5,
        61 * _n**3 / 240,
    )
    _beta = (
        _n / 2 - 2 * _n**2 / 3 + 37 * _n**3 / 96,
        _n**2 / 48 + _n**3 / 15,
        17 * _n**3 / 480,
    )
    _delta = (
        2 * _n - 2 * _n**2 / 3 - 2 * _n**3,
        7 * _n**2 / 3 - 8 * _n**3 / 5,
        56 * _n**3 / 15,
    )
    _k0 = 0.9996

    def __init__(self, zone: int, south: bool) -> None:
        self.zone = zone
        self.south = south
        self.lon0 = math.radians(zone * 6 - 183)
        self.n0 = 10_000_000.0 if south else 0.0
        self.epsg = (32700 if south else 32600) + zone

    def forward(self, lon: float, lat: float) -> Point:
        """Lon/lat degrees (WGS84) to easting/northing metres in this zone (latitude kept off the poles)."""
        phi = math.radians(max(min(lat, 89.999), -89.999))
        lam = math.radians(lon) - self.lon0
        c = 2 * math.sqrt(self._n) / (1 + self._n)
        t = math.sinh(math.atanh(math.sin(phi)) - c * math.atanh(c * math.sin(phi)))
        xi_p = math.atan2(t, math.cos(lam))
        eta_p = math.atanh(math.sin(lam) / math.sqrt(1 + t * t))
        xi, eta = xi_p, eta_p
        for j, a in enumerate(self._alpha, start=1):
            xi += a * math.sin(2 * j * xi_p) * math.cosh(2 * j * eta_p)
            eta += a * math.cos(2 * j * xi_p) * math.sinh(2 * j * eta_p)
        return 500_000.0 + self._k0 * self._AA * eta, self.n0 + self._k0 * self._AA * xi

    def inverse(self, x: float, y: float) -> Point:
        """Easting/northing metres in this zone to lon/lat degrees."""
        xi = (y - self.n0) / (self._k0 * self._AA)
        eta = (x - 500_000.0) / (self._k0 * self._AA)
        xi_p, eta_p = xi, eta
        for j, b in enumerate(self._beta, start=1):
            xi_p -= b * math.sin(2 * j * xi) * math.cosh(2 * j * eta)
            eta_p -= b * math.cos(2 * j * xi) * math.sinh(2 * j * eta)
        chi = math.asin(math.sin(xi_p) / math.cosh(eta_p))
        phi = chi + sum(d * math.sin(2 * j * chi) for j, d in enumerate(self._delta, start=1))
        lam = self.lon0 + math.atan2(math.sinh(eta_p), math.cos(xi_p))
        return math.degrees(lam), math.degrees(phi)


class Laea:
    """Lambert azimuthal equal-area, ETRS89-LAEA Europe (EPSG:3035)."""

    epsg = 3035

    def __init__(self) -> None:
        self.lat1 = math.radians(52.0)
        self.lon0 = math.radians(10.0)
        self.fe, self.fn = 4_321_000.0, 3_210_000.0
        self.qp = self._q(math.pi / 2)
        self.rq = _A * math.sqrt(self.qp / 2)
        self.beta1 = math.asin(self._q(self.lat1) / self.qp)
        m1 = math.cos(self.lat1) / math.sqrt(1 - _E2 * math.sin(self.lat1) ** 2)
        self.d = _A * m1 / (self.rq * math.cos(self.beta1))

    @staticmethod
    def _q(phi: float) -> float:
        s = math.sin(phi)
        return (1 - _E2) * (s / (1 - _E2 * s * s) - (1 / (2 * _E)) * math.log((1 - _E * s) / (1 + _E * s)))

    def forward(self, lon: float, lat: float) -> Point:
        """Lon/lat degrees (WGS84) to EPSG:3035 x/y metres."""
        phi = math.radians(max(min(lat, 89.9999), -89.9999))
        lam = math.radians(lon) - self.lon0
        beta = math.asin(max(-1.0, min(1.0, self._q(phi) / self.qp)))
        denom = (
            1 + math.sin(self.beta1) * math.sin(beta) + math.cos(self.beta1) * math.cos(beta) * math.cos(lam)
        )
        b = self.rq * math.sqrt(2 / max(denom, 1e-12))
        x = b * self.d * math.cos(beta) * math.sin(lam)
        y = (b / self.d) * (
            math.cos(self.beta1) * math.sin(beta) - math.sin(self.beta1) * math.cos(beta) * math.cos(lam)
        )
        return self.fe + x, self.fn + y

    def inverse(self, x: float, y: float) -> Point:
        """EPSG:3035 x/y metres to lon/lat degrees."""
        x -= self.fe
        y -= self.fn
        rho = math.hypot(x / self.d, self.d * y)
        if rho < 1e-9:
            return math.degrees(self.lon0), math.degrees(self.lat1)
        ce = 2 * math.asin(min(1.0, rho / (2 * self.rq)))
        beta = math.asin(
            math.cos(ce) * math.sin(self.beta1) + self.d * y * math.sin(ce) * math.cos(self.beta1) / rho
        )
        lam = self.lon0 + math.atan2(
            x * math.sin(ce),
            self.d * math.cos(self.beta1) * math.cos(ce) * rho
            - self.d**2 * y * math.sin(self.beta1) * math.sin(ce),
        )
        e4, e6 = _E2**2, _E2**3
        phi = (
            beta
            + (_E2 / 3 + 31 * e4 / 180 + 517 * e6 / 5040) * math.sin(2 * beta)
            + (23 * e4 / 360 + 251 * e6 / 3780) * math.sin(4 * beta)
            + (761 * e6 / 45360) * math.sin(6 * beta)
        )
        return math.degrees(lam), math.degrees(phi)


class LonLat:
    """Identity "projection" for the WGS84 degree grid."""

    epsg = 4326

    def forward(self, lon: float, lat: float) -> Point:
        """Lon/lat unchanged."""
        return lon, lat

    def inverse(self, x: float, y: float) -> Point:
        """Lon/lat unchanged."""
        return x, y


def web_mercator_inverse(x: float, y: float) -> Point:
    """Web Mercator (EPSG:3857) x/y metres to lon/lat degrees."""
    r = 6378137.0
    return math.degrees(x / r), math.degrees(math.atan(math.sinh(y / r)))


# ------------------------------------------------------------------------------------------------- CRS input
def parse_crs(crs: str | None) -> int | None:
    """EPSG code of a Sentinel Hub CRS URL (CRS84 → 4326); ``None`` if the string is not one."""
    if crs is None:
        return 4326
    if not isinstance(crs, str):
        return None
    value = crs.strip().replace("https://", "http://")
    if value in {CRS84, "urn:ogc:def:crs:OGC:1.3:CRS84"}:
        return 4326
    for prefix in (EPSG_PREFIX, "urn:ogc:def:crs:EPSG::"):
        if value.startswith(prefix):
            code = value[len(prefix) :]
            return int(code) if code.isdigit() else None
    return None


def supported_input_epsg(code: int) -> bool:
    """True for the input CRSs the emulator reads: 4326, 4258, 3857, 3035 and the UTM zones (326xx, 327xx)."""
    return code in {4326, 4258, 3857, 3035} or 32601 <= code <= 32660 or 32701 <= code <= 32760


def to_lonlat_func(code: int) -> Callable[[float, float], Point]:
    """Converter from an input CRS to lon/lat (lon/lat axis order for EPSG:4326, as Sentinel Hub reads it)."""
    if code in {4326, 4258}:
        return lambda x, y: (x, y)
    if code == 3857:
        return web_mercator_inverse
    if code == 3035:
        return Laea().inverse
    if 32601 <= code <= 32660:
        return Utm(code - 32600, south=False).inverse
    if 32701 <= code <= 32760:
        return Utm(code - 32700, south=True).inverse
    raise ValueError(f"unsupported CRS EPSG:{code}")


# --------------------------------------------------------------------------------------------- polygon tools
def _clip(ring: Sequence[Point], axis: int, value: float, keep_greater: bool) -> Ring:
    """Sutherland-Hodgman against one axis-parallel half-plane (works for non-convex rings too)."""
    out: Ring = []
    n = len(ring)
    if n == 0:
        return out

    def inside(p: Point) -> bool:
        return p[axis] >= value if keep_greater else p[axis] <= value

    for i in range(n):
        cur, prev = ring[i], ring[i - 1]
        cin, pin = inside(cur), inside(prev)
        if cin != pin:
            t = (value - prev[axis]) / (cur[axis] - prev[axis])
            cross = (prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1]))
            out.append(cross)
        if cin:
            out.append(cur)
    return out


def clip_box(ring: Sequence[Point], x0: float, y0: float, x1: float, y1: float) -> Ring:
    """The part of ``ring`` inside the axis-aligned box (an empty list if none)."""
    r: Ring = list(ring)
    for axis, value, greater in ((0, x0, True), (0, x1, False), (1, y0, True), (1, y1, False)):
        r = _clip(r, axis, value, greater)
        if not r:
            break
    return r


def ring_area(ring: Sequence[Point]) -> float:
    """Area of a ring by the shoelace formula, in its coordinates' units squared (orientation ignored)."""
    return 0.5 * abs(sum(ring[i - 1][0] * ring[i][1] - ring[i][0] * ring[i - 1][1] for i in range(len(ring))))


def densify(ring: Sequence[Point], max_step: float) -> Ring:
    """Extra vertices along edges so straight lon/lat edges stay close to curves after projection."""
    out: Ring = []
    pts = list(ring)
    if len(pts) > 1 and pts[0] == pts[-1]:
        pts = pts[:-1]
    for i, p in enumerate(pts):
        q = pts[(i + 1) % len(pts)]
        steps = max(1, math.ceil(max(abs(q[0] - p[0]), abs(q[1] - p[1])) / max_step))
        out.extend((p[0] + (q[0] - p[0]) * k / steps, p[1] + (q[1] - p[1]) * k / steps) for k in range(steps))
    return out


def bbox_ring(minx: float, miny: float, maxx: float, maxy: float) -> Ring:
    """The four corners of a bounding box as a ring (not closed)."""
    return [(minx, miny), (maxx, miny), (maxx, maxy), (minx, maxy)]


# --------------------------------------------------------------------------------------------------- tiling
@dataclass
class TileSpec:
    """One output tile: enough to serve ``BatchTile`` bodies and write outputs."""

    id: int
    name: str
    epsg: int
    x0: float
    y0: float
    x1: float
    y1: float
    geometry: dict[str, object]

    @property
    def origin(self) -> dict[str, object]:
        """The tile's upper-left corner as a GeoJSON point (sentinelhub-py's BatchSplitter reads it)."""
        return {
            "type": "Point",
            "coordinates": [self.x0, self.y1],
            "crs": {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{self.epsg}"}},
        }


class TooManyTilesError(ValueError):
    """The area of interest needs more tiles than the emulator cuts (``MAX_TILES``); the API answers 400."""

    pass


MAX_TILES = 100_000


def _tile_polygon(proj: Utm | Laea | LonLat, x0: float, y0: float, x1: float, y1: float) -> dict[str, object]:
    corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    ring = [list(map(lambda v: round(v, 7), proj.inverse(x, y))) for x, y in densify(corners, (x1 - x0) / 2)]
    ring.append(ring[0])
    return {"type": "Polygon", "coordinates": [ring]}


def _tiles_in_projection(
    grid: TilingGrid,
    proj: Utm | Laea | LonLat,
    rings_lonlat: Iterable[Ring],
    zone_code: int,
    found: dict[int, TileSpec],
) -> None:
    size = grid.tile_size
    step = 0.02 if grid.kind != "wgs84" else 1.0
    for ring in rings_lonlat:
        projected = [proj.forward(lon, lat) for lon, lat in densify(ring, step)]
        if len(projected) < 3 or ring_area(projected) <= 0:
            continue
        xs = [p[0] for p in projected]
        ys = [p[1] for p in projected]
        c0, c1 = math.floor(min(xs) / size), math.floor(max(xs) / size)
        r0, r1 = math.floor(min(ys) / size), math.floor(max(ys) / size)
        if (c1 - c0 + 1) * (r1 - r0 + 1) > 4 * MAX_TILES:
            raise TooManyTilesError("area of interest is too large for this grid and resolution")
        min_area = (size * 1e-6) ** 2
        for row in range(r0, r1 + 1):
            band = clip_box(projected, -math.inf, row * size, math.inf, (row + 1) * size)
            if len(band) < 3 or ring_area(band) <= min_area:
                continue
            bx = [p[0] for p in band]
            for col in range(math.floor(min(bx) / size), math.floor(max(bx) / size) + 1):
                x0, x1 = col * size, (col + 1) * size
                cell = clip_box(band, x0, row * size, x1, (row + 1) * size)
                if len(cell) < 3 or ring_area(cell) <= min_area:
                    continue
                tile_id = (((grid.id * 1000 + zone_code) * 1000 + (col % 1000)) * 10_000) + (row % 10_000)
                if tile_id in found:
                    continue
                y0, y1 = row * size, (row + 1) * size
                found[tile_id] = TileSpec(
                    id=tile_id,
                    name=_tile_name(grid, proj, col, row),
                    epsg=proj.epsg,
                    x0=x0,
                    y0=y0,
                    x1=x1,
                    y1=y1,
                    geometry=_tile_polygon(proj, x0, y0, x1, y1),
                )
                if len(found) > MAX_TILES:
                    raise TooManyTilesError(f"area of interest needs more than {MAX_TILES} tiles")


def _tile_name(grid: TilingGrid, proj: Utm | Laea | LonLat, col: int, row: int) -> str:
    if isinstance(proj, Utm):
        return f"{proj.zone:02d}{'S' if proj.south else 'N'}-{col:03d}-{row:04d}"
    if isinstance(proj, Laea):
        km = int(grid.tile_size // 1000)
        return f"{km}kmE{col * km // 10:04d}N{row * km // 10:04d}"
    lat = f"{'N' if row >= 0 else 'S'}{abs(row):02d}"
    lon = f"{'E' if col >= 0 else 'W'}{abs(col):03d}"
    return f"{lat}{lon}"


def tiles_for(grid: TilingGrid, rings_lonlat: list[Ring]) -> list[TileSpec]:
    """Tiles of ``grid`` intersecting the (lon/lat) rings, sorted by name (eo-grow sorts by it too)."""
    found: dict[int, TileSpec] = {}
    clipped_lat = [
        clip_box(r, -math.inf, -grid.max_lat, math.inf, grid.max_lat) for r in rings_lonlat if len(r) >= 3
    ]
    clipped_lat = [r for r in clipped_lat if len(r) >= 3]
    if grid.kind == "wgs84":
        _tiles_in_projection(grid, LonLat(), clipped_lat, 0, found)
    elif grid.kind == "laea":
        w, s, e, n = LAEA_COVERAGE
        inside = [clip_box(r, w, s, e, n) for r in clipped_lat]
        _tiles_in_projection(grid, Laea(), [r for r in inside if len(r) >= 3], 0, found)
    else:
        for ring in clipped_lat:
            lons = [p[0] for p in ring]
            lats = [p[1] for p in ring]
            first, last = _utm_zone(min(lons)), _utm_zone(max(lons))
            for zone in range(first, last + 1):
                west = zone * 6 - 186.0
                band = clip_box(ring, west, -90.0, west + 6.0, 90.0)
                if len(band) < 3:
                    continue
                for south in (False, True):
                    part = clip_box(
                        band, -math.inf, -90.0 if south else 0.0, math.inf, 0.0 if south else 90.0
                    )
                    if len(part) >= 3 and ring_area(part) > 0 and (min(lats) < 0 if south else max(lats) > 0):
                        code = zone * 2 + int(south)
                        _tiles_in_projection(grid, Utm(zone, south), [part], code, found)
    return sorted(found.values(), key=lambda t: t.name)


def _utm_zone(lon: float) -> int:
    return min(60, max(1, math.floor((lon + 180.0) / 6.0) + 1))
