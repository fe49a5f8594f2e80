"""The ego route: where the logged ego went, snapped to lane centres and extended ahead.

`route_from_log` builds it in four steps (host numpy, once per scenario):

1. The valid logged positions, in time order, with near-duplicates (a stopped ego)
   merged.
2. Snap: each logged point within `snap_distance_m` of a lane centre whose direction
   agrees with the ego's direction of travel (within 45 degrees) is moved onto that lane
   centre; points far from every such lane (a lane change, a car park, a gap in the
   map) keep their logged position.
3. Extend past the log's end by `extend_m`: along the lane graph when the last position
   lies on a lane (follow that lane ahead, then at each lane end the successor lane whose
   start is within `connect_m` and whose heading turns least), and straight along the final
   heading for whatever the lane graph does not cover.
4. Resample by arc length to `num_points` points.
"""

from __future__ import annotations

import numpy as np

from jaxloop.data.errors import DataError
from jaxloop.data.mapcompile import nearest_points, thin_polyline
from jaxloop.sim.datatypes import RoadMap, Route


def resample_polyline(xy: np.ndarray, num_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Points `[R, 2]` equally spaced by arc length along `xy` `[K, 2]`, and their arc length `[R]`."""
    seg = np.linalg.norm(np.diff(xy, axis=0), axis=-1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    target = np.linspace(0.0, arc[-1], num_points)
    out = np.stack([np.interp(target, arc, xy[:, 0]), np.interp(target, arc, xy[:, 1])], -1)
    return out, target


def _lane_segments(roadmap: RoadMap):
    lane_xy = np.asarray(roadmap.lane_xy, np.float64)
    lane_valid = np.asarray(roadmap.lane_valid, bool)
    seg_valid = lane_valid[:, 1:] & lane_valid[:, :-1]
    return lane_xy, lane_valid, lane_xy[:, :-1], lane_xy[:, 1:], seg_valid


def _lanes_near(path: np.ndarray, lane_xy: np.ndarray, lane_valid: np.ndarray, radius: float) -> np.ndarray:
    """Indices of lanes with a point within `radius` of the path (a cheap filter before projecting)."""
    pts = lane_xy[lane_valid]
    owner = np.nonzero(lane_valid)[0]
    _, dist = nearest_points(pts, path)
    return np.unique(owner[dist <= radius])


def _project(points: np.ndarray, start: np.ndarray, end: np.ndarray, seg_valid: np.ndarray):
    """Each point `[T, 2]` against each lane segment `[P, S, 2]`: (dist [T, P, S], t [T, P, S]).

    `t` is the clipped fraction along the segment of the nearest point on it (the foot,
    `start + t * (end - start)`). Computed per coordinate: no `[T, P, S, 2]` temporaries.
    """
    seg = end - start  # [P, S, 2]
    len2 = np.maximum(np.sum(seg ** 2, -1), 1e-12)
    sx, sy = seg[..., 0], seg[..., 1]
    x0, y0 = start[..., 0], start[..., 1]
    px, py = points[:, 0, None, None], points[:, 1, None, None]
    t = np.clip(((px - x0) * sx + (py - y0) * sy) / len2, 0.0, 1.0)
    dx = px - (x0 + t * sx)
    dy = py - (y0 + t * sy)
    dist = np.sqrt(dx * dx + dy * dy)
    dist = np.where(seg_valid[None], dist, np.inf)
    return dist, t


def _heading_of_travel(xy: np.ndarray) -> np.ndarray:
    """Unit direction `[K, 2]` of travel at each point (central differences)."""
    if xy.shape[0] < 2:
        return np.zeros_like(xy)
    d = np.gradient(xy, axis=0)
    n = np.linalg.norm(d, axis=-1, keepdims=True)
    return np.where(n > 1e-9, d / np.maximum(n, 1e-12), 0.0)


def route_from_log(ego_xy: np.ndarray, ego_valid: np.ndarray, roadmap: RoadMap | None, num_points: int = 64,
                   extend_m: float = 30.0, ego_yaw: np.ndarray | None = None, snap_distance_m: float = 1.5,
                   connect_m: float = 1.0) -> Route:
    """The ego route `[R]` from its logged positions `ego_xy` `[T, 2]` (valid where `ego_valid` `[T]`).

    See the module docstring for the construction. `ego_yaw` `[T]` (optional) gives the
    final heading when the ego barely moves. Raises `DataError` when the ego is never valid.
    """
    ego_xy = np.asarray(ego_xy, np.float64).reshape(-1, 2)
    ego_valid = np.asarray(ego_valid, bool).reshape(-1)
    if num_points < 2:
        raise ValueError(f"route_from_log: num_points must be >= 2, got {num_points}")
    pts = ego_xy[ego_valid]
    if pts.shape[0] == 0:
        raise DataError("the ego is never valid: no route", field="route")
    if not np.all(np.isfinite(pts)):
        raise DataError("non-finite ego position", field="route")
    path = thin_polyline(pts, 0.1)

    # Final heading: the direction of the last ~2 m travelled; for an ego that moved less
    # than that, its logged yaw (position jitter of a stopped car has no direction).
    heading = None
    back = np.linalg.norm(path[-1] - path, axis=-1)
    far = np.flatnonzero(back >= 2.0)
    if far.size:
        d = path[-1] - path[far[-1]]
        heading = d / np.linalg.norm(d)
    elif ego_yaw is not None:
        yaw = float(np.asarray(ego_yaw, np.float64).reshape(-1)[ego_valid][-1])
        if np.isfinite(yaw):
            heading = np.array([np.cos(yaw), np.sin(yaw)])
    if heading is None and back.max() > 1e-6:
        d = path[-1] - path[int(np.argmax(back))]
        heading = d / np.linalg.norm(d)
    if heading is None:
        heading = np.array([1.0, 0.0])

    lanes_ok = roadmap is not None and np.asarray(roadmap.lane_valid).any()
    extension: list[np.ndarray] = []
    remaining = float(extend_m)
    if lanes_ok:
        lane_xy, lane_valid, start, end, seg_valid = _lane_segments(roadmap)
        travel = _heading_of_travel(path)
        if path.shape[0] < 2:
            travel = heading[None]
        # Only lanes passing near the path can be snapped to: a point of a snapped-to
        # lane lies within the snap distance plus one lane step of the path.
        spacing = np.linalg.norm(np.diff(lane_xy, axis=1), axis=-1)
        step = float(spacing[seg_valid].max()) if seg_valid.any() else 0.0
        near = _lanes_near(thin_polyline(path, 1.0), lane_xy, lane_valid, snap_distance_m + step + 1.0)
        if near.size == 0:
            near = np.zeros(1, np.int64)  # nothing within reach: one (far) lane keeps shapes non-empty
        dist, t = _project(path, start[near], end[near], seg_valid[near])
        near_start, near_seg = start[near], end[near] - start[near]
        seg_dir = near_seg / np.maximum(np.linalg.norm(near_seg, axis=-1, keepdims=True), 1e-12)
        agree = np.einsum("kd,psd->kps", travel, seg_dir) > np.cos(np.deg2rad(45.0))
        cand = np.where(agree, dist, np.inf)
        flat = cand.reshape(cand.shape[0], -1).argmin(axis=1)
        best = cand.reshape(cand.shape[0], -1)[np.arange(cand.shape[0]), flat]
        pick_p, pick_s = np.unravel_index(flat, cand.shape[1:])
        pick_t = t[np.arange(t.shape[0]), pick_p, pick_s]
        snapped = near_start[pick_p, pick_s] + pick_t[:, None] * near_seg[pick_p, pick_s]  # the feet
        on_lane = best <= snap_distance_m
        path = np.where(on_lane[:, None], snapped, path)

        if on_lane[-1] and remaining > 0:
            ps, s = int(pick_p[-1]), int(pick_s[-1])
            p = int(near[ps])
            tail = np.concatenate([snapped[-1][None], lane_xy[p, s + 1:][lane_valid[p, s + 1:]]])
            visited = {int(p)}
            while remaining > 0:
                seg_len = np.linalg.norm(np.diff(tail, axis=0), axis=-1)
                cum = np.concatenate([[0.0], np.cumsum(seg_len)])
                if cum[-1] >= remaining:
                    cut = np.searchsorted(cum, remaining)
                    frac = (remaining - cum[cut - 1]) / max(seg_len[cut - 1], 1e-12)
                    extension.append(np.concatenate([tail[:cut], [tail[cut - 1] + frac * (tail[cut] - tail[cut - 1])]]))
                    remaining = 0.0
                    break
                extension.append(tail)
                remaining -= cum[-1]
                # Successor: a lane starting near this one's end, turning least.
                last_dir = lane_xy[p][lane_valid[p]]
                out_dir = last_dir[-1] - last_dir[-2] if last_dir.shape[0] >= 2 else heading
                out_dir = out_dir / max(np.linalg.norm(out_dir), 1e-12)
                starts = lane_xy[:, 0]
                gap = np.where(lane_valid[:, 0], np.linalg.norm(starts - tail[-1], axis=-1), np.inf)
                first_dir = lane_xy[:, 1] - lane_xy[:, 0]
                first_dir = first_dir / np.maximum(np.linalg.norm(first_dir, axis=-1, keepdims=True), 1e-12)
                turn = np.where(gap <= connect_m, -(first_dir @ out_dir), np.inf)
                turn[list(visited)] = np.inf
                nxt = int(np.argmin(turn))
                if not np.isfinite(turn[nxt]) or turn[nxt] > -np.cos(np.deg2rad(60.0)):
                    heading = out_dir
                    break
                visited.add(nxt)
                p = nxt
                tail = lane_xy[p][lane_valid[p]]
            if extension:
                ext = np.concatenate(extension)
                if ext.shape[0] >= 2 and np.linalg.norm(ext[-1] - ext[-2]) > 1e-9:
                    heading = (ext[-1] - ext[-2]) / np.linalg.norm(ext[-1] - ext[-2])
    full = np.concatenate([path] + extension) if extension else path
    if remaining > 0:
        full = np.concatenate([full, (full[-1] + remaining * heading)[None]])
    full = thin_polyline(full, 1e-3)
    if full.shape[0] == 1:
        full = np.concatenate([full, full])
    xy, arc = resample_polyline(full, num_points)
    return Route(xy=xy.astype(np.float32), arc_length=arc.astype(np.float32), valid=np.ones(num_points, bool))
