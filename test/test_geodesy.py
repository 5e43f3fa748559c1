"""WGS-84 distances against GeographicLib (Karney), the reference implementation."""
from __future__ import annotations

import math
import random

import pytest
from geographiclib.geodesic import Geodesic

from bodycam_ros.core.geodesy import GeodesyError, distance_m, offset

WGS84 = Geodesic.WGS84


def ref(lat1, lon1, lat2, lon2) -> float:
    return WGS84.Inverse(lat1, lon1, lat2, lon2)['s12']


@pytest.mark.parametrize('p1,p2', [
    ((38.5816, -121.4944), (38.5960, -121.4944)),     # ~1.6 km north, Sacramento
    ((52.85, 5.31), (52.86, 5.33)),                   # IJsselmeer
    ((-27.21, 153.05), (-27.2105, 153.0497)),         # tens of metres
    ((0.0, 0.0), (0.0, 1.0)),                         # along the equator
    ((89.9, 0.0), (89.9, 180.0)),                     # across the pole
    ((40.0, 179.999), (40.0, -179.999)),              # across the antimeridian
    ((0.0, 0.0), (0.5, 179.7)),                       # nearly antipodal: Vincenty fails
    ((-30.0, 10.0), (30.0, -170.0)),                  # exactly antipodal
])
def test_matches_geographiclib_to_0_1_percent(p1, p2):
    d, r = distance_m(*p1, *p2), ref(*p1, *p2)
    assert d == pytest.approx(r, rel=1e-3), (d, r)


def test_random_pairs_match_geographiclib():
    rng = random.Random(7)
    worst = 0.0
    for _ in range(2000):
        lat1, lat2 = rng.uniform(-90, 90), rng.uniform(-90, 90)
        lon1, lon2 = rng.uniform(-180, 180), rng.uniform(-180, 180)
        r = ref(lat1, lon1, lat2, lon2)
        if r > 1.0:
            worst = max(worst, abs(distance_m(lat1, lon1, lat2, lon2) - r) / r)
    assert worst < 1e-3


def test_one_mile_is_one_mile_to_a_millimetre():
    lat, lon = 38.5816, -121.4944
    line = WGS84.Direct(lat, lon, 37.0, 1609.344)
    assert distance_m(lat, lon, line['lat2'], line['lon2']) == pytest.approx(1609.344, abs=1e-3)


def test_zero_distance_and_symmetry():
    assert distance_m(10.0, 20.0, 10.0, 20.0) == 0.0
    assert distance_m(10.0, 20.0, 10.0, 380.0) == 0.0
    assert distance_m(1.0, 2.0, 3.0, 4.0) == pytest.approx(distance_m(3.0, 4.0, 1.0, 2.0))


def test_offset_moves_by_the_asked_distance():
    lat, lon = offset(38.5816, -121.4944, 1200.0, -500.0)
    assert distance_m(38.5816, -121.4944, lat, lon) == pytest.approx(math.hypot(1200, 500),
                                                                      rel=1e-4)


@pytest.mark.parametrize('bad', [(91.0, 0.0), (math.nan, 0.0), (0.0, math.inf)])
def test_bad_coordinates_are_named(bad):
    with pytest.raises(GeodesyError, match='latitude|longitude'):
        distance_m(*bad, 0.0, 0.0)
