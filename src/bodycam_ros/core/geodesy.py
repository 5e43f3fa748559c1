"""Distances on the WGS-84 ellipsoid, for "is the officer within a mile of the dispatch".

A sphere is off by up to 0.5 % (more at high latitude along meridians), which at a one-mile
radius moves the line by ~8 m; Vincenty's inverse formula on the ellipsoid is good to a
millimetre. Vincenty does not converge for nearly antipodal points; there the distance is the
shortest way through a waypoint (two non-antipodal halves, each solved by Vincenty, with the
waypoint moved until their sum stops shrinking: the triangle inequality makes that minimum
the geodesic). It is slow (tens of ms) but only a dispatch on the far side of the planet
ever takes that path.
"""
from __future__ import annotations

import math

#: WGS-84 semi-major axis [m] and flattening.
WGS84_A = 6_378_137.0
WGS84_F = 1.0 / 298.257223563
WGS84_B = WGS84_A * (1.0 - WGS84_F)

_MAX_ITER = 200
_TOL = 1e-12


class GeodesyError(ValueError):
    """A coordinate outside the valid range (the message names it)."""


def _check(lat: float, lon: float) -> None:
    if not (math.isfinite(lat) and -90.0 <= lat <= 90.0):
        raise GeodesyError(f'latitude {lat!r} outside [-90, 90]')
    if not (math.isfinite(lon) and -540.0 <= lon <= 540.0):
        raise GeodesyError(f'longitude {lon!r} outside [-540, 540]')


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Geodesic distance [m] between two WGS-84 points given in degrees.

    Raises:
        GeodesyError: a latitude outside [-90, 90] or a non-finite coordinate.
    """
    _check(lat1, lon1)
    _check(lat2, lon2)
    if lat1 == lat2 and (lon1 - lon2) % 360.0 == 0.0:
        return 0.0
    d = _vincenty(lat1, lon1, lat2, lon2)
    return d if d is not None else _via_waypoint(lat1, lon1, lat2, lon2)


def _vincenty(lat1: float, lon1: float, lat2: float, lon2: float) -> float | None:
    """Vincenty (1975) inverse; None when it does not converge (nearly antipodal)."""
    f, a, b = WGS84_F, WGS84_A, WGS84_B
    u1 = math.atan((1.0 - f) * math.tan(math.radians(lat1)))
    u2 = math.atan((1.0 - f) * math.tan(math.radians(lat2)))
    big_l = math.radians(_wrap180(lon2 - lon1))
    sin_u1, cos_u1 = math.sin(u1), math.cos(u1)
    sin_u2, cos_u2 = math.sin(u2), math.cos(u2)
    lam = big_l
    for _ in range(_MAX_ITER):
        sin_lam, cos_lam = math.sin(lam), math.cos(lam)
        sin_sigma = math.hypot(cos_u2 * sin_lam, cos_u1 * sin_u2 - sin_u1 * cos_u2 * cos_lam)
        if sin_sigma == 0.0:
            return 0.0
        cos_sigma = sin_u1 * sin_u2 + cos_u1 * cos_u2 * cos_lam
        sigma = math.atan2(sin_sigma, cos_sigma)
        sin_alpha = cos_u1 * cos_u2 * sin_lam / sin_sigma
        cos2_alpha = 1.0 - sin_alpha * sin_alpha
        cos_2sm = cos_sigma - 2.0 * sin_u1 * sin_u2 / cos2_alpha if cos2_alpha != 0.0 else 0.0
        c = f / 16.0 * cos2_alpha * (4.0 + f * (4.0 - 3.0 * cos2_alpha))
        lam_prev = lam
        lam = big_l + (1.0 - c) * f * sin_alpha * (
            sigma + c * sin_sigma * (cos_2sm + c * cos_sigma * (-1.0 + 2.0 * cos_2sm ** 2)))
        if abs(lam - lam_prev) < _TOL:
            break
        if abs(lam) > math.pi:   # diverging: the antipodal case
            return None
    else:
        return None
    u_sq = cos2_alpha * (a * a - b * b) / (b * b)
    big_a = 1.0 + u_sq / 16384.0 * (4096.0 + u_sq * (-768.0 + u_sq * (320.0 - 175.0 * u_sq)))
    big_b = u_sq / 1024.0 * (256.0 + u_sq * (-128.0 + u_sq * (74.0 - 47.0 * u_sq)))
    d_sigma = big_b * sin_sigma * (cos_2sm + big_b / 4.0 * (
        cos_sigma * (-1.0 + 2.0 * cos_2sm ** 2)
        - big_b / 6.0 * cos_2sm * (-3.0 + 4.0 * sin_sigma ** 2) * (-3.0 + 4.0 * cos_2sm ** 2)))
    return b * big_a * (sigma - d_sigma)


def _via_waypoint(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Geodesic length as min over a waypoint M of d(A, M) + d(M, B) (pattern search)."""
    def cost(lat: float, lon: float) -> float:
        lat = max(-90.0, min(90.0, lat))
        d1 = _vincenty(lat1, lon1, lat, lon)
        d2 = _vincenty(lat, lon, lat2, lon2)
        return math.inf if d1 is None or d2 is None else d1 + d2

    mid_lon = lon1 + _wrap180(lon2 - lon1) / 2.0
    starts = [(0.5 * (lat1 + lat2), mid_lon), (0.5 * (lat1 + lat2), mid_lon + 180.0),
              (89.999, mid_lon), (-89.999, mid_lon), (0.0, mid_lon + 90.0), (0.0, mid_lon - 90.0)]
    best = min(((cost(a, b), a, b) for a, b in starts), key=lambda c: c[0])
    f, lat, lon = best
    step = 10.0
    while step > 1e-9:
        moved = False
        for dlat, dlon in ((step, 0.0), (-step, 0.0), (0.0, step), (0.0, -step)):
            c = cost(lat + dlat, lon + dlon)
            if c < f:
                f, lat, lon, moved = c, max(-90.0, min(90.0, lat + dlat)), lon + dlon, True
                break
        if not moved:
            step /= 2.0
    return f


def _wrap180(deg: float) -> float:
    return (deg + 180.0) % 360.0 - 180.0


def offset(lat: float, lon: float, north_m: float, east_m: float) -> tuple[float, float]:
    """A point ``north_m``/``east_m`` away on the ellipsoid (local radii; fine below ~10 km)."""
    _check(lat, lon)
    phi = math.radians(lat)
    e2 = WGS84_F * (2.0 - WGS84_F)
    w = math.sqrt(1.0 - e2 * math.sin(phi) ** 2)
    meridional = WGS84_A * (1.0 - e2) / w ** 3
    normal = WGS84_A / w
    dlat = math.degrees(north_m / meridional)
    dlon = math.degrees(east_m / (normal * math.cos(phi))) if abs(lat) < 90.0 else 0.0
    return lat + dlat, _wrap180(lon + dlon)
