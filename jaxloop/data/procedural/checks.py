"""Checks of a simulated log (per scenario): box overlaps, red-light crossings, lateral deviation."""

from __future__ import annotations

import numpy as np

from jaxloop.data.procedural.driver import _Batch
from jaxloop.sim.datatypes import TYPE_PEDESTRIAN


def _box_overlap(xa, ya, ha, la, wa, xb, yb, hb, lb, wb) -> np.ndarray:
    """Separating-axis overlap test of oriented boxes (broadcast arrays)."""
    dx, dy = xb - xa, yb - ya
    sep = np.full(np.broadcast(xa, xb).shape, -np.inf)
    for ang in (ha, ha + np.pi / 2, hb, hb + np.pi / 2):
        cx, cy = np.cos(ang), np.sin(ang)
        ra = 0.5 * la * np.abs(np.cos(ang - ha)) + 0.5 * wa * np.abs(np.sin(ang - ha))
        rb = 0.5 * lb * np.abs(np.cos(ang - hb)) + 0.5 * wb * np.abs(np.sin(ang - hb))
        sep = np.maximum(sep, np.abs(dx * cx + dy * cy) - ra - rb)
    return sep < 0.05  # a 5 cm safety margin on top of the exact test


def _violations(b: _Batch, out: dict) -> np.ndarray:
    """Agents `[G]` whose log overlaps another agent's, runs a red light or leaves its lane (all scenarios at once)."""
    x, y, yaw, valid = out["x"], out["y"], out["yaw"], out["valid"]
    L, W = b.length, b.width
    G = len(L)
    bad = np.zeros(G, bool)
    # Agent pairs of the same scenario (not two pedestrians).
    sizes = np.diff(np.append(b.base, G))
    ii, jj = [], []
    for base, n in zip(b.base, sizes):
        i, j = np.triu_indices(n, 1)
        ii.append(i + base)
        jj.append(j + base)
    ii, jj = np.concatenate(ii), np.concatenate(jj)
    ped = b.kind == TYPE_PEDESTRIAN
    keep = ~(ped[ii] & ped[jj])
    ii, jj = ii[keep], jj[keep]
    diag = np.hypot(L, W)
    reach2 = ((0.5 * (diag[ii] + diag[jj]) + 0.1) ** 2).astype(np.float32)
    # Candidates (centres closer than the half diagonals): a float32 prefilter, the margin dwarfs its rounding.
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    dx, dy = x32[ii] - x32[jj], y32[ii] - y32[jj]
    near = (dx * dx + dy * dy < reach2[:, None]) & valid[ii] & valid[jj]
    pi, ti = np.nonzero(near)
    if pi.size:
        a, c = ii[pi], jj[pi]
        ov = _box_overlap(x[a, ti], y[a, ti], yaw[a, ti], L[a], W[a], x[c, ti], y[c, ti], yaw[c, ti], L[c], W[c])
        bad[a[ov]] = True
        bad[c[ov]] = True
    # Red lights: the front crosses the stop point while the governing light is red.
    front = out["s"] + L[:, None] / 2
    stop = b.stop_s[:, None]
    crossed = (front[:, :-1] < stop) & (front[:, 1:] >= stop) & valid[:, 1:]
    red = b.sig_red[b.sig] & b.has_light[:, None]
    veh = ~ped
    bad |= veh & np.any(crossed & (red[:, 1:] | red[:, :-1]), axis=1)
    bad |= veh & (out["lat_err"] > 0.35)
    return bad
