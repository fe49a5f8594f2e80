"""Polyline geometry of the generator (numpy, float64): resampling, offsets, cubic connectors."""

from __future__ import annotations

import numpy as np

from jaxloop.data.procedural.config import _PATH_DS


def _wrap(a):
    return (a + np.pi) % (2 * np.pi) - np.pi


def _arc(xy: np.ndarray) -> np.ndarray:
    """Cumulative arc length `[K]` of a polyline `[K, 2]`."""
    d = xy[1:] - xy[:-1]
    out = np.empty(len(xy))
    out[0] = 0.0
    np.cumsum(np.hypot(d[:, 0], d[:, 1]), out=out[1:])
    return out


def _resample(xy: np.ndarray, spacing: float = _PATH_DS) -> np.ndarray:
    """Evenly spaced points (endpoints kept) at about `spacing` metres."""
    xy = np.asarray(xy, np.float64)
    if len(xy) == 2:  # a straight segment: no interpolation table needed
        return _straight_many(xy[:1], xy[1:], spacing)[0]
    s = _arc(xy)
    n = max(int(np.ceil(s[-1] / spacing)), 1) + 1
    t = np.arange(n) * (s[-1] / (n - 1))
    t[-1] = s[-1]
    out = np.empty((n, 2))
    out[:, 0] = np.interp(t, s, xy[:, 0])
    out[:, 1] = np.interp(t, s, xy[:, 1])
    return out


def _resample_many(polys: list[np.ndarray], spacing: float = _PATH_DS) -> list[np.ndarray]:
    """`_resample` of many polylines at once (one interpolation on a shared increasing arc key)."""
    pts, n = _resample_flat(np.concatenate(polys), np.array([len(p) for p in polys]), spacing)
    return np.split(pts, np.cumsum(n)[:-1])


def _resample_flat(xy: np.ndarray, lens: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """`_resample_many` of the polylines of `lens [M]` points stored one after another in `xy [sum lens, 2]`;
    returns the resampled polylines stored the same way (points, counts `[M]`)."""
    d = xy[1:] - xy[:-1]
    step = np.hypot(d[:, 0], d[:, 1])
    first = np.cumsum(lens) - lens
    step[first[1:] - 1] = 1.0  # 1 m between polylines on the key
    key = np.concatenate([[0.0], np.cumsum(step)])
    length = key[first + lens - 1] - key[first]
    n = np.maximum(np.ceil(length / spacing).astype(np.int64), 1) + 1
    owner = np.repeat(np.arange(len(lens)), n)
    j = np.arange(len(owner)) - np.repeat(np.cumsum(n) - n, n)
    t = key[first][owner] + np.minimum(j / (n - 1)[owner], 1.0) * length[owner]
    pts = np.empty((len(t), 2))
    pts[:, 0] = np.interp(t, key, xy[:, 0])
    pts[:, 1] = np.interp(t, key, xy[:, 1])
    return pts, n


def _straight_many(a: np.ndarray, b: np.ndarray, spacing: float = _PATH_DS) -> list[np.ndarray]:
    """`_resample` of many straight segments at once: from `a [M, 2]` to `b [M, 2]`, M polylines."""
    d = b - a
    n = np.maximum(np.ceil(np.hypot(d[:, 0], d[:, 1]) / spacing).astype(np.int64), 1) + 1
    owner = np.repeat(np.arange(len(n)), n)
    f = (np.arange(len(owner)) - np.repeat(np.cumsum(n) - n, n)) / (n - 1)[owner]
    pts = np.empty((len(owner), 2))
    for c in (0, 1):  # per coordinate: [M, 2] -> [sum n, 2] broadcasts are slow in numpy
        pts[:, c] = np.repeat(a[:, c], n) + f * np.repeat(d[:, c], n)
    return np.split(pts, np.cumsum(n)[:-1])


def _tangent(xy: np.ndarray) -> np.ndarray:
    """Unit tangents `[K, 2]` (central differences inside, one-sided at the ends)."""
    d = np.empty_like(xy)
    d[1:-1] = xy[2:] - xy[:-2]
    d[0] = xy[1] - xy[0]
    d[-1] = xy[-1] - xy[-2]
    norm = np.maximum(np.hypot(d[:, 0], d[:, 1]), 1e-9)
    d[:, 0] /= norm
    d[:, 1] /= norm
    return d


def _wrap_near(a: np.ndarray) -> np.ndarray:
    """`_wrap` of angles within one turn of [-pi, pi) (cheaper than the modulo)."""
    return np.where(a >= np.pi, a - 2 * np.pi, np.where(a < -np.pi, a + 2 * np.pi, a))


def _left(d: np.ndarray) -> np.ndarray:
    out = np.empty_like(d)
    np.negative(d[..., 1], out=out[..., 0])
    out[..., 1] = d[..., 0]
    return out


def _offset(xy: np.ndarray, dist) -> np.ndarray:
    """The polyline shifted `dist` metres (a number or one per point) to its left (negative: right)."""
    t = _tangent(xy)
    out = np.empty(xy.shape)
    out[:, 0] = xy[:, 0] + dist * -t[:, 1]
    out[:, 1] = xy[:, 1] + dist * t[:, 0]
    return out


def _unit(angle) -> np.ndarray:
    return np.array([np.cos(angle), np.sin(angle)])


# Derivative weights of a cubic at 33 parameters in [0, 1]: d1 = _W1 . (p1 - p0, p2 - p1, p3 - p2),
# d2 = _W2 . (p2 - 2 p1 + p0, p3 - 2 p2 + p1).
_BT = np.linspace(0.0, 1.0, 33)
_W1 = (3 * (1 - _BT) ** 2, 6 * (1 - _BT) * _BT, 3 * _BT ** 2)
_W2 = (6 * (1 - _BT), 6 * _BT)


def _bezier_handles(p0, d0, p3, d3):
    """Chord lengths `[M]` and inner control points `[M, 2]` of the cubics of `_bezier_many`."""
    chord = np.hypot(p3[:, 0] - p0[:, 0], p3[:, 1] - p0[:, 1])
    phi = np.abs(_wrap(np.arctan2(d3[:, 1], d3[:, 0]) - np.arctan2(d0[:, 1], d0[:, 0])))
    ratio = np.where(phi < 1e-3, 1.0 / 3.0, (4.0 / 3.0) * np.tan(phi / 4) / (2 * np.sin(np.maximum(phi, 1e-3) / 2)))
    h = ratio * chord
    p1, p2 = np.empty_like(p0), np.empty_like(p3)
    for c in (0, 1):  # per coordinate (numpy broadcasts over a last axis of 2 are slow)
        p1[:, c] = p0[:, c] + d0[:, c] * h
        p2[:, c] = p3[:, c] - d3[:, c] * h
    return chord, p1, p2


def _bezier_kmax_many(p0, d0, p3, d3) -> np.ndarray:
    """The largest curvature `[M]` (sampled at 33 parameters) of the cubics of `_bezier_many`."""
    _, p1, p2 = _bezier_handles(p0, d0, p3, d3)
    d1, d2 = [], []
    for c in (0, 1):  # [M, 33] per coordinate
        q0, q1, q2, q3 = p0[:, c, None], p1[:, c, None], p2[:, c, None], p3[:, c, None]
        d1.append(_W1[0] * (q1 - q0) + _W1[1] * (q2 - q1) + _W1[2] * (q3 - q2))
        d2.append(_W2[0] * (q2 - 2 * q1 + q0) + _W2[1] * (q3 - 2 * q2 + q1))
    cr = np.abs(d1[0] * d2[1] - d1[1] * d2[0])
    return np.max(cr / np.maximum(np.hypot(d1[0], d1[1]) ** 3, 1e-9), axis=1)


def _bezier_many(p0, d0, p3, d3, spacing: float = _PATH_DS) -> list[np.ndarray]:
    """Cubics from `p0` heading `d0` to `p3` heading `d3` (handles sized to approximate circular arcs),
    resampled every `spacing` metres; many at once: endpoints and unit headings `[M, 2]` -> M polylines."""
    pts, n = _bezier_flat(p0, d0, p3, d3, spacing)
    return np.split(pts, np.cumsum(n)[:-1])


def _bezier_flat(p0, d0, p3, d3, spacing: float = _PATH_DS) -> tuple[np.ndarray, np.ndarray]:
    """`_bezier_many` with the polylines stored one after another: (points `[sum n, 2]`, counts `n [M]`)."""
    chord, p1, p2 = _bezier_handles(p0, d0, p3, d3)
    n = np.maximum((chord / spacing).astype(np.int64) * 3, 16)
    owner = np.repeat(np.arange(len(n)), n)
    t = (np.arange(len(owner)) - np.repeat(np.cumsum(n) - n, n)) / (n - 1)[owner]
    pts = np.empty((len(t), 2))
    for c in (0, 1):  # power basis, per coordinate
        q0, q1, q2, q3 = p0[:, c], p1[:, c], p2[:, c], p3[:, c]
        c1, c2, c3 = 3 * (q1 - q0), 3 * (q2 - 2 * q1 + q0), q3 - 3 * q2 + 3 * q1 - q0
        pts[:, c] = np.repeat(q0, n) + t * (np.repeat(c1, n) + t * (np.repeat(c2, n) + t * np.repeat(c3, n)))
    return _resample_flat(pts, n, spacing)


def _integrate_heading(heading0: float, start: np.ndarray, curvature: np.ndarray, ds: float) -> np.ndarray:
    """Polyline from a curvature profile `[K]` sampled every `ds` metres."""
    h = heading0 + np.concatenate([[0.0], np.cumsum(curvature[:-1] * ds)])
    steps = np.stack([np.cos(h), np.sin(h)], -1) * ds
    return start + np.concatenate([[np.zeros(2)], np.cumsum(steps[:-1], axis=0)])
