"""Grid geometry: projections round-trip and tile counts are plausible for real areas."""

from __future__ import annotations

import pytest

from airflow_provider_sentinel_batch.emulator import grids


@pytest.mark.parametrize(("lon", "lat"), [(9.0, 42.0), (8.44, 41.31), (11.9, 60.0), (6.1, 0.2)])
def test_utm_round_trip_and_known_value(lon: float, lat: float) -> None:
    utm = grids.Utm(32, south=False)
    x, y = utm.forward(lon, lat)
    back = utm.inverse(x, y)
    assert back == pytest.approx((lon, lat), abs=1e-7)
    assert utm.forward(9.0, 42.0) == pytest.approx((500000.0, 4649776.22), abs=0.01)


def test_laea_origin_and_round_trip() -> None:
    laea = grids.Laea()
    assert laea.forward(10.0, 52.0) == pytest.approx((4321000.0, 3210000.0))
    for lon, lat in [(-20.0, 65.0), (30.0, 40.0), (9.0, 42.0)]:
        assert laea.inverse(*laea.forward(lon, lat)) == pytest.approx((lon, lat), abs=1e-6)


def test_corsica_tile_count_is_realistic() -> None:
    ring = grids.bbox_ring(8.44, 41.31, 9.66, 43.1)
    tiles = grids.tiles_for(grids.GRIDS[0], [ring])
    assert 60 <= len(tiles) <= 80
    assert {t.epsg for t in tiles} == {32632}
    assert len({t.id for t in tiles}) == len(tiles)
    assert len(grids.tiles_for(grids.GRIDS[1], [ring])) > 3 * len(tiles)  # 10 km tiles
    assert len(grids.tiles_for(grids.GRIDS[2], [ring])) <= 9  # 100 km tiles


def test_multi_zone_and_southern_hemisphere() -> None:
    crossing = grids.tiles_for(grids.GRIDS[0], [grids.bbox_ring(11.5, 45.0, 12.5, 46.0)])
    assert {t.epsg for t in crossing} == {32632, 32633}
    equator = grids.tiles_for(grids.GRIDS[0], [grids.bbox_ring(30.0, -0.5, 30.5, 0.5)])
    assert {t.epsg for t in equator} == {32636, 32736}


def test_wgs84_and_laea_tiles() -> None:
    ring = grids.bbox_ring(8.44, 41.31, 9.66, 43.1)
    wgs = grids.tiles_for(grids.GRIDS[3], [ring])
    assert sorted(t.name for t in wgs) == ["N41E008", "N41E009", "N42E008", "N42E009", "N43E008", "N43E009"]
    laea = grids.tiles_for(grids.GRIDS[7], [ring])
    assert {t.epsg for t in laea} == {3035}
    assert 60 <= len(laea) <= 90
    # Outside Europe there is no LAEA tile.
    assert grids.tiles_for(grids.GRIDS[6], [grids.bbox_ring(100.0, 10.0, 101.0, 11.0)]) == []
