"""Raw roadgraph points -> a compact, fixed-size `RoadMap` (DESIGN.md "Conventions of the data").

A raw WOMD map is 20,000-30,000 points (`roadgraph_samples`). The simulator never sees
them: `compile_roadmap` turns them once, on the host, into

- lanes: lane-centre polylines (types 1-3), split into pieces of at most
  `max_lane_length_m` arc length, each resampled by arc length to `lane_points` points
  with unit tangents;
- road edges: directed segments (types 15, 16) of about `edge_segment_m`, each polyline
  directed so the drivable area is on its RIGHT (the RoadMap convention). Raw directions
  are not trusted: in the WOMD fixtures most raw edge polylines have the lanes on their
  left, so with `orient_edges="lanes"` (default) a polyline is reversed when its nearby
  lane centres lie on its left; sources that orient edges themselves (AV2's drivable-area
  rings) pass "keep". Sharp corners of an edge stay vertices so resampling does not cut them;
- crosswalks: the oriented (minimum-area) bounding box of each polygon, 4 corners CCW;
- stop signs: one point per (sign, governed lane) pair.

Only features within `cull_radius_m` of `focus_xy` (the ego's reachable area, e.g. its
logged path) are kept, nearest first; what did not fit is counted in a `CompileReport`
and, when any of it lay within the cull radius, a warning names the source.

Sources that already hold their map as polylines (the procedural generator) call
`compile_polylines` with a `PolylineMap`: the same resampling, edge splitting, culling
and packing (`_compile`), without the raw-point decoding, crosswalk hulls and focus
thinning. Every map is compiled on its own, so a result never depends on the others
compiled beside it.

Everything is vectorised over points; Python loops run only over polylines where
a per-polyline computation is unavoidable (crosswalk hulls, a handful per map).
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from jaxloop.data.errors import DataError
from jaxloop.sim.datatypes import (RG_BIKE_LANE, RG_CROSSWALK, RG_FREEWAY_LANE, RG_ROAD_EDGE_BOUNDARY,
                                   RG_ROAD_EDGE_MEDIAN, RG_STOP_SIGN, RG_SURFACE_LANE, RoadMap)

LANE_TYPES = (RG_FREEWAY_LANE, RG_SURFACE_LANE, RG_BIKE_LANE)
EDGE_TYPES = (RG_ROAD_EDGE_BOUNDARY, RG_ROAD_EDGE_MEDIAN)


@dataclasses.dataclass(frozen=True)
class MapConfig:
    """Static sizes of the compiled map (they decide array shapes) and culling.

    max_lanes: P, lane pieces kept.
    lane_points: Q, points per lane piece.
    max_lane_length_m: lanes longer than this are split into equal pieces no longer than it.
    max_edges: E, directed road-edge segments kept.
    edge_segment_m: target length of a road-edge segment after resampling.
    edge_corner_deg: heading change at a raw edge vertex above which it is kept as a vertex.
    max_crosswalks: C.
    max_stop_signs: S (one entry per sign and governed lane).
    cull_radius_m: features farther than this from every focus point are culled.
    focus_spacing_m: focus points closer than this to the previous kept one are merged.
    orient_edges: "lanes" reverses road-edge polylines whose nearby lane centres (within
      `orient_radius_m`) lie on their left, so every edge has the road on its right;
      "keep" trusts the source's direction.
    lane_piece_ids: False: every piece of a lane keeps the lane's id (a WOMD lane id names
      the whole lane); True: pieces are numbered 1, 2, ... in lane order, each its own id
      (stop signs then name the last piece of their lane, the one ending at the stop line).
    lane_probe_stride: a lane piece's distance to the focus is that of every k-th of its points.
    edge_min_step_m: edge vertices closer than this to the previous vertex are left out
      first (a near-zero segment has no reliable side); 0 keeps every vertex.
    """

    max_lanes: int = 256
    lane_points: int = 20
    max_lane_length_m: float = 30.0
    max_edges: int = 1024
    edge_segment_m: float = 3.0
    edge_corner_deg: float = 25.0
    max_crosswalks: int = 16
    max_stop_signs: int = 16
    cull_radius_m: float = 60.0
    focus_spacing_m: float = 2.0
    orient_edges: str = "lanes"
    orient_radius_m: float = 10.0
    lane_piece_ids: bool = False
    lane_probe_stride: int = 1
    edge_min_step_m: float = 0.0

    def __post_init__(self):
        for name in ("max_lanes", "max_edges", "max_crosswalks", "max_stop_signs"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"MapConfig.{name} must be an int >= 1, got {getattr(self, name)!r}")
        if not isinstance(self.lane_points, int) or self.lane_points < 2:
            raise ValueError(f"MapConfig.lane_points must be an int >= 2, got {self.lane_points!r}")
        for name in ("max_lane_length_m", "edge_segment_m", "cull_radius_m", "focus_spacing_m", "orient_radius_m"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise ValueError(f"MapConfig.{name} must be a positive finite number, got {v!r}")
        if self.orient_edges not in ("lanes", "keep"):
            raise ValueError(f"MapConfig.orient_edges must be 'lanes' or 'keep', got {self.orient_edges!r}")
        if not isinstance(self.lane_probe_stride, int) or self.lane_probe_stride < 1:
            raise ValueError(f"MapConfig.lane_probe_stride must be an int >= 1, got {self.lane_probe_stride!r}")
        if not (np.isfinite(self.edge_min_step_m) and self.edge_min_step_m >= 0):
            raise ValueError(f"MapConfig.edge_min_step_m must be a finite number >= 0, got {self.edge_min_step_m!r}")
        if not 0 < self.edge_corner_deg < 180:
            raise ValueError(f"MapConfig.edge_corner_deg must be in (0, 180), got {self.edge_corner_deg!r}")


@dataclasses.dataclass
class RawRoadgraph:
    """Raw roadgraph points in the WOMD `roadgraph_samples` layout (numpy, host).

    Points of one polyline are consecutive and in order; `dir` is the vector to the
    next point of the same polyline.
    """

    xyz: np.ndarray  # [M, 3] float32
    dir: np.ndarray  # [M, 3] float32
    types: np.ndarray  # [M] int32, RG_*
    ids: np.ndarray  # [M] int32, polyline id
    valid: np.ndarray  # [M] bool
    speed_limits: dict[int, float] = dataclasses.field(default_factory=dict)  # lane id -> m/s
    stop_sign_lanes: dict[int, list[int]] = dataclasses.field(default_factory=dict)  # sign id -> lane ids

    def __post_init__(self):
        self.xyz = np.asarray(self.xyz, np.float32).reshape(-1, 3)
        m = self.xyz.shape[0]
        self.dir = np.asarray(self.dir, np.float32).reshape(-1, 3)
        self.types = np.asarray(self.types, np.int32).reshape(-1)
        self.ids = np.asarray(self.ids, np.int32).reshape(-1)
        self.valid = np.asarray(self.valid, bool).reshape(-1)
        for name in ("dir", "types", "ids", "valid"):
            if getattr(self, name).shape[0] != m:
                raise DataError(f"has {getattr(self, name).shape[0]} points, xyz has {m}",
                                field=f"roadgraph.{name}")

    @property
    def num_points(self) -> int:
        return self.xyz.shape[0]


@dataclasses.dataclass
class FeatureCount:
    """Per kind: features found, kept, culled (beyond the radius), dropped (within it, over capacity)."""

    total: int = 0
    kept: int = 0
    culled: int = 0
    dropped: int = 0


@dataclasses.dataclass
class CompileReport:
    """What `compile_roadmap` kept and left out, per kind of feature."""

    source: str = ""
    lanes: FeatureCount = dataclasses.field(default_factory=FeatureCount)
    edges: FeatureCount = dataclasses.field(default_factory=FeatureCount)
    crosswalks: FeatureCount = dataclasses.field(default_factory=FeatureCount)
    stop_signs: FeatureCount = dataclasses.field(default_factory=FeatureCount)
    invalid_points: int = 0
    edges_reversed: int = 0  # edge polylines reversed to put the road on their right
    ignored_polylines: dict[str, int] = dataclasses.field(default_factory=dict)  # kinds RoadMap does not hold

    KINDS = ("lanes", "edges", "crosswalks", "stop_signs")

    @property
    def dropped_any(self) -> bool:
        """True if anything within the cull radius did not fit the configured capacity."""
        return any(getattr(self, k).dropped > 0 for k in self.KINDS)

    def __str__(self) -> str:
        parts = []
        for k in self.KINDS:
            c = getattr(self, k)
            parts.append(f"{k}: kept {c.kept}/{c.total} (culled {c.culled}, dropped for capacity {c.dropped})")
        head = f"map {self.source!r}" if self.source else "map"
        extra = f"; invalid points {self.invalid_points}; edge polylines reversed {self.edges_reversed}"
        if self.ignored_polylines:
            extra += "; not represented: " + ", ".join(f"{k} {v}" for k, v in sorted(self.ignored_polylines.items()))
        return f"{head}: " + "; ".join(parts) + extra


# ----------------------------------------------------------------------------- helpers


def _runs(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) indices `[R]` of runs of equal consecutive ids."""
    n = ids.shape[0]
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    change = np.ones(n, bool)
    change[1:] = ids[1:] != ids[:-1]
    starts = np.flatnonzero(change)
    return starts, np.append(starts[1:], n)


def _run_arc(xy: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arc length within each run for every point `[M]`, run lengths `[R]`, run index per point `[M]`."""
    m = xy.shape[0]
    run_of = np.repeat(np.arange(starts.shape[0]), ends - starts)
    seg = np.zeros(m, np.float64)
    if m > 1:
        seg[1:] = np.linalg.norm(np.diff(xy.astype(np.float64), axis=0), axis=-1)
    seg[starts] = 0.0  # no length across polyline boundaries
    cum = np.cumsum(seg)
    arc = cum - cum[starts][run_of]
    lengths = arc[ends - 1] if starts.shape[0] else np.zeros(0)
    return arc, lengths, run_of


def _interp_runs(xy: np.ndarray, arc: np.ndarray, lengths: np.ndarray, run_of: np.ndarray,
                 query_run: np.ndarray, query_arc: np.ndarray) -> np.ndarray:
    """Points `[K, 2]` at arc positions `query_arc` of runs `query_run`, all runs in one `np.interp`.

    Runs are laid end to end on one increasing key (each offset by its length + 1 m), so
    a single interpolation serves every polyline without a Python loop.
    """
    if query_run.shape[0] == 0:
        return np.zeros((0, 2), np.float64)
    offsets = np.concatenate([[0.0], np.cumsum(lengths + 1.0)[:-1]])
    key = arc + offsets[run_of]
    q = offsets[query_run] + np.clip(query_arc, 0.0, lengths[query_run])
    return np.stack([np.interp(q, key, xy[:, 0]), np.interp(q, key, xy[:, 1])], -1)


def thin_polyline(xy: np.ndarray, spacing: float) -> np.ndarray:
    """The points of `xy` `[K, 2]` at least `spacing` (straight-line) from the previously kept one.

    The first point is kept; the last replaces the final kept point when closer than
    `spacing` to it (so the polyline still ends where `xy` ends), unless that is the first
    point: a path that never leaves `spacing` of its start (a stopped car's jitter)
    collapses to one point. A sequential scan in plain Python floats (K is a log length).
    """
    if xy.shape[0] <= 1:
        return xy
    pts = xy.tolist()
    keep = [0]
    lx, ly = pts[0]
    s2 = spacing * spacing
    for i in range(1, len(pts)):
        x, y = pts[i]
        if (x - lx) ** 2 + (y - ly) ** 2 >= s2:
            keep.append(i)
            lx, ly = x, y
    last = len(pts) - 1
    if keep[-1] != last and len(keep) > 1:
        keep[-1] = last
    return xy[keep]


def nearest_points(points: np.ndarray, refs: np.ndarray, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Index `[M]` of the nearest of `refs` `[K, 2]` to each point `[M, 2]`, and the distance `[M]`.

    Brute force in float32 about a common origin (maps span a few hundred metres, so the
    squared distances keep millimetre precision); chunked to bound the `[chunk, K]` temporaries.
    """
    m = points.shape[0]
    idx = np.zeros(m, np.int64)
    dist = np.full(m, np.inf)
    if m == 0 or refs.shape[0] == 0:
        return idx, dist
    origin = refs.mean(axis=0)
    rx = (refs[:, 0] - origin[0]).astype(np.float32)
    ry = (refs[:, 1] - origin[1]).astype(np.float32)
    for i in range(0, m, chunk):
        px = (points[i:i + chunk, 0] - origin[0]).astype(np.float32)
        py = (points[i:i + chunk, 1] - origin[1]).astype(np.float32)
        dx = np.subtract.outer(px, rx)
        dx *= dx
        dy = np.subtract.outer(py, ry)
        dy *= dy
        dx += dy
        j = np.argmin(dx, axis=1)
        idx[i:i + chunk] = j
        dist[i:i + chunk] = np.sqrt(dx[np.arange(j.shape[0]), j])
    return idx, dist


def exact_min_dist(points: np.ndarray, focus: np.ndarray) -> np.ndarray:
    """Distance `[M]` of each point `[M, 2]` to the nearest focus point `[F, 2]`, exact per pair in float64."""
    if points.shape[0] == 0:
        return np.zeros(0)
    dx = points[:, 0, None] - focus[None, :, 0]
    dy = points[:, 1, None] - focus[None, :, 1]
    dx *= dx
    dy *= dy
    dx += dy
    return np.sqrt(np.min(dx, axis=1))


def _min_dist(points: np.ndarray, focus: np.ndarray, radius: float | None = None, exact: bool = False) -> np.ndarray:
    """Distance `[M]` of each point `[M, 2]` to the nearest focus point `[K, 2]`.

    `exact`: float64 per pair (`exact_min_dist`); else `nearest_points` (float32 about a
    common origin: millimetre precision, for the many points of raw maps). With `radius`,
    points outside the focus bounding box grown by it are beyond the radius anyway: they
    get +inf without a distance computation.
    """
    nearest = exact_min_dist if exact else lambda p, f: nearest_points(p, f)[1]
    if radius is None or points.shape[0] == 0:
        return nearest(points, focus)
    lo, hi = focus.min(axis=0) - radius, focus.max(axis=0) + radius
    inside = np.all((points >= lo) & (points <= hi), axis=1)
    out = np.full(points.shape[0], np.inf)
    out[inside] = nearest(points[inside], focus)
    return out


def _select(dist: np.ndarray, radius: float, capacity: int, count: FeatureCount) -> np.ndarray:
    """Indices of the features to keep: within `radius`, nearest first, at most `capacity`."""
    count.total = int(dist.shape[0])
    inside = np.flatnonzero(dist <= radius)
    count.culled = count.total - int(inside.shape[0])
    order = inside[np.argsort(dist[inside], kind="stable")]
    keep = order[:capacity]
    count.kept = int(keep.shape[0])
    count.dropped = int(inside.shape[0]) - count.kept
    return keep


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Counter-clockwise convex hull `[H, 2]` (monotone chain) of a few points."""
    pts = points.astype(np.float64).reshape(-1, 2)
    pts = pts[np.lexsort((pts[:, 1], pts[:, 0]))]  # by x, then y
    if pts.shape[0] > 1:
        pts = pts[np.concatenate([[True], np.any(pts[1:] != pts[:-1], axis=1)])]  # the distinct points
    if pts.shape[0] <= 2:
        return pts

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    rows = pts.tolist()  # Python floats: the same float64 arithmetic without numpy scalar overhead
    lower: list = []
    for p in rows:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list = []
    for p in reversed(rows):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.array(lower[:-1] + upper[:-1], np.float64)


def oriented_bounding_box(points: np.ndarray) -> np.ndarray:
    """Minimum-area oriented rectangle `[4, 2]` (CCW corners) around points `[K, 2]`.

    The minimum-area rectangle has a side along an edge of the convex hull, so every
    hull-edge direction is tried.
    """
    hull = _convex_hull(points)
    if hull.shape[0] == 0:
        return np.zeros((4, 2), np.float32)
    if hull.shape[0] == 1:
        return np.repeat(hull, 4, axis=0).astype(np.float32)
    edges = np.roll(hull, -1, axis=0) - hull
    angles = np.arctan2(edges[:, 1], edges[:, 0])
    best, best_area = None, np.inf
    for a in angles:
        c, s = np.cos(a), np.sin(a)
        rot = hull @ np.array([[c, -s], [s, c]])  # into the frame with +x along the edge
        lo, hi = rot.min(0), rot.max(0)
        area = float(np.prod(hi - lo))
        if area < best_area - 1e-9:
            box = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]])
            best, best_area = box @ np.array([[c, s], [-s, c]]), area
    return best.astype(np.float32)


# ----------------------------------------------------------------------------- compile


def _lanes(xy, starts, ends, run_types, run_ids, run_dir, run_speed, config: MapConfig, focus, report, exact):
    """Lane polylines (runs `[R]` of `xy`) -> lane fields; and the id of each run's last piece `[R]`."""
    q = config.lane_points
    arc, lengths, run_of = _run_arc(xy, starts, ends)
    num_pieces = np.maximum(1, np.ceil(lengths / config.max_lane_length_m - 1e-9)).astype(np.int64)
    piece_run = np.repeat(np.arange(starts.shape[0]), num_pieces)
    first_piece = np.concatenate([[0], np.cumsum(num_pieces)[:-1]])
    piece_index = np.arange(piece_run.shape[0]) - first_piece[piece_run]
    piece_len = lengths[piece_run] / num_pieces[piece_run]
    frac = np.linspace(0.0, 1.0, q)
    query_arc = (piece_index[:, None] + frac[None, :]) * piece_len[:, None]  # [K, Q]
    query_run = np.repeat(piece_run, q)
    pts = _interp_runs(xy, arc, lengths, run_of, query_run, query_arc.reshape(-1)).reshape(-1, q, 2)

    # Unit tangents: central differences of the resampled points; where a piece has no
    # length (a single raw point) fall back to the raw direction vectors.
    tangent = np.empty_like(pts)
    tangent[:, 1:-1] = pts[:, 2:] - pts[:, :-2]
    tangent[:, 0] = pts[:, 1] - pts[:, 0]
    tangent[:, -1] = pts[:, -1] - pts[:, -2]
    norm = np.linalg.norm(tangent, axis=-1, keepdims=True)
    raw_dir = run_dir[piece_run].astype(np.float64)
    raw_norm = np.linalg.norm(raw_dir, axis=-1, keepdims=True)
    fallback = np.where(raw_norm > 1e-9, raw_dir / np.maximum(raw_norm, 1e-9), np.array([1.0, 0.0]))
    tangent = np.where(norm > 1e-6, tangent / np.maximum(norm, 1e-12), fallback[:, None, :])

    probe = pts[:, ::config.lane_probe_stride]
    dist = (_min_dist(probe.reshape(-1, 2), focus, config.cull_radius_m, exact).reshape(probe.shape[:2]).min(axis=1)
            if pts.shape[0] else np.zeros(0))
    keep = _select(dist, config.cull_radius_m, config.max_lanes, report.lanes)
    p = config.max_lanes
    k = keep.shape[0]
    lane_xy = np.zeros((p, q, 2), np.float32)
    lane_dir = np.zeros((p, q, 2), np.float32)
    lane_valid = np.zeros((p, q), bool)
    lane_ids = np.full((p,), -1, np.int32)
    lane_types = np.zeros((p,), np.int32)
    lane_speed = np.zeros((p,), np.float32)
    lane_xy[:k] = pts[keep]
    lane_dir[:k] = tangent[keep]
    lane_valid[:k] = True
    if config.lane_piece_ids:  # pieces numbered 1, 2, ... in lane order
        lane_ids[:k] = keep + 1
        last_ids = np.cumsum(num_pieces)
    else:
        lane_ids[:k] = run_ids[piece_run[keep]]
        last_ids = np.asarray(run_ids, np.int64)
    lane_types[:k] = run_types[piece_run[keep]]
    if run_speed is not None:
        lane_speed[:k] = run_speed[piece_run[keep]]
    return dict(lane_xy=lane_xy, lane_dir=lane_dir, lane_valid=lane_valid, lane_ids=lane_ids,
                lane_types=lane_types, lane_speed_limit=lane_speed), last_ids


def _orient_edges(e0, e1, polyline, lane_xy, config: MapConfig, report) -> tuple[np.ndarray, np.ndarray]:
    """Reverses edge polylines whose nearby lanes lie on their left, so the road is on their right.

    Each segment votes with the side of its nearest lane-centre point (within
    `orient_radius_m`); a polyline is reversed when most of its votes say "left". Polylines
    without a nearby lane follow the majority of the voting ones (raw direction if none
    voted).
    """
    if e0.shape[0] == 0 or lane_xy.shape[0] == 0:
        return e0, e1
    mid = 0.5 * (e0 + e1)
    d = e1 - e0
    lanes = lane_xy.astype(np.float64)[::2]  # every other lane point: votes need sides, not precision
    nearest, best = nearest_points(mid, lanes)
    rel = lanes[nearest] - mid
    side = np.sign(d[:, 0] * rel[:, 1] - d[:, 1] * rel[:, 0])  # +1: lane on the left
    vote = np.where(best <= config.orient_radius_m, side, 0.0)
    uniq, inv = np.unique(polyline, return_inverse=True)
    score = np.bincount(inv, weights=vote, minlength=uniq.shape[0])
    voted = score != 0
    default = 1.0 if voted.any() and np.sum(np.sign(score[voted])) > 0 else -1.0
    flip_poly = np.where(voted, score > 0, default > 0)
    flip = flip_poly[inv]
    report.edges_reversed = int(flip_poly.sum())
    return np.where(flip[:, None], e1, e0), np.where(flip[:, None], e0, e1)


def _edges(xy, starts, ends, run_types, config: MapConfig, focus, report, exact, lane_xy=None):
    """Edge polylines (runs `[R]` of `xy`) -> directed segments of about `edge_segment_m`."""
    n = xy.shape[0]
    run_of = np.repeat(np.arange(starts.shape[0]), ends - starts)
    if config.edge_min_step_m > 0 and n > 1:  # vertices this close to the previous one carry no reliable side
        d = np.diff(xy, axis=0)
        keep = np.concatenate([[True], np.hypot(d[:, 0], d[:, 1]) >= config.edge_min_step_m])
        keep[starts] = True
        xy, run_of = xy[keep], run_of[keep]
        n = xy.shape[0]
        starts = np.flatnonzero(np.concatenate([[True], run_of[1:] != run_of[:-1]])) if n else starts[:0]
        run_types = run_types[run_of[starts]]
        run_of = np.repeat(np.arange(starts.shape[0]), np.diff(np.append(starts, n)))
    # Split every edge polyline at sharp raw vertices (duplicating the vertex) so that
    # uniform resampling keeps corners.
    is_corner = np.zeros(n, bool)
    if n > 2:
        d = np.diff(xy.astype(np.float64), axis=0)  # d[i] = xy[i+1] - xy[i]
        a_in, a_out = d[:-1], d[1:]  # at interior point i+1
        norm = np.linalg.norm(d, axis=-1)
        n_in, n_out = norm[:-1], norm[1:]
        same = (run_of[:-2] == run_of[1:-1]) & (run_of[1:-1] == run_of[2:])
        cos = np.sum(a_in * a_out, -1) / np.maximum(n_in * n_out, 1e-12)
        long_enough = (n_in > 1e-6) & (n_out > 1e-6)
        is_corner[1:-1] = same & long_enough & (cos < np.cos(np.deg2rad(config.edge_corner_deg)))
    src = np.repeat(np.arange(n), 1 + is_corner)
    # A new piece starts at each polyline start and at the second copy of a corner.
    dup_second = np.zeros(src.shape[0], bool)
    dup_second[1:] = src[1:] == src[:-1]
    new_piece = dup_second.copy()
    first_copy = np.ones(src.shape[0], bool)
    first_copy[1:] = ~dup_second[1:]
    is_run_start = np.zeros(n, bool)
    is_run_start[starts] = True
    new_piece |= is_run_start[src] & first_copy
    piece_id = np.cumsum(new_piece) - 1
    pxy = xy[src]
    pstarts, pends = _runs(piece_id)
    porig = run_of[src[pstarts]] if pstarts.shape[0] else np.zeros(0, np.int64)
    ptypes = run_types[porig]
    arc, lengths, prun = _run_arc(pxy, pstarts, pends)
    usable = lengths > 1e-6  # single-point edges carry no direction
    if (~usable).any():
        report.ignored_polylines["degenerate edges"] = int((~usable).sum())
    num_seg = np.where(usable, np.maximum(1, np.ceil(lengths / config.edge_segment_m - 1e-9)), 0).astype(np.int64)
    seg_run = np.repeat(np.arange(pstarts.shape[0]), num_seg)
    first = np.concatenate([[0], np.cumsum(num_seg)[:-1]])
    seg_index = np.arange(seg_run.shape[0]) - first[seg_run]
    seg_len = lengths[seg_run] / np.maximum(num_seg[seg_run], 1)
    a0 = seg_index * seg_len
    ends_xy = _interp_runs(pxy, arc, lengths, prun, np.concatenate([seg_run, seg_run]),
                           np.concatenate([a0, a0 + seg_len]))
    e0, e1 = ends_xy[:seg_run.shape[0]], ends_xy[seg_run.shape[0]:]
    probe = np.concatenate([e0, e1, 0.5 * (e0 + e1)])
    dist = (_min_dist(probe, focus, config.cull_radius_m, exact).reshape(3, -1).min(axis=0) if seg_run.shape[0]
            else np.zeros(0))
    keep = _select(dist, config.cull_radius_m, config.max_edges, report.edges)
    e = config.max_edges
    k = keep.shape[0]
    edge_start = np.zeros((e, 2), np.float32)
    edge_end = np.zeros((e, 2), np.float32)
    edge_types = np.zeros((e,), np.int32)
    edge_valid = np.zeros((e,), bool)
    k0, k1 = e0[keep], e1[keep]
    if config.orient_edges == "lanes" and lane_xy is not None:
        k0, k1 = _orient_edges(k0, k1, porig[seg_run[keep]], lane_xy, config, report)
    edge_start[:k], edge_end[:k] = k0, k1
    edge_types[:k] = ptypes[seg_run[keep]]
    edge_valid[:k] = True
    return dict(edge_start=edge_start, edge_end=edge_end, edge_types=edge_types, edge_valid=edge_valid)


def _crosswalks(boxes, config: MapConfig, focus, report, exact):
    """Crosswalk boxes `[C, 4, 2]` -> crosswalk fields."""
    dist = (_min_dist(boxes.reshape(-1, 2), focus, config.cull_radius_m, exact).reshape(-1, 4).min(axis=1)
            if boxes.shape[0] else np.zeros(0))
    keep = _select(dist, config.cull_radius_m, config.max_crosswalks, report.crosswalks)
    c = config.max_crosswalks
    out = np.zeros((c, 4, 2), np.float32)
    valid = np.zeros((c,), bool)
    out[:keep.shape[0]] = boxes[keep]
    valid[:keep.shape[0]] = True
    return dict(crosswalk_xy=out, crosswalk_valid=valid)


def _stop_signs(pos, lanes, config: MapConfig, focus, report, exact):
    """Stop-sign entries (point `[S, 2]`, governed lane id `[S]`, -1: none) -> stop-sign fields."""
    dist = _min_dist(pos, focus, config.cull_radius_m, exact) if pos.shape[0] else np.zeros(0)
    keep = _select(dist, config.cull_radius_m, config.max_stop_signs, report.stop_signs)
    s = config.max_stop_signs
    out = np.zeros((s, 2), np.float32)
    lane_ids = np.full((s,), -1, np.int32)
    valid = np.zeros((s,), bool)
    out[:keep.shape[0]] = pos[keep]
    lane_ids[:keep.shape[0]] = lanes[keep]
    valid[:keep.shape[0]] = True
    return dict(stop_sign_xy=out, stop_sign_lane_ids=lane_ids, stop_sign_valid=valid)


def _compile(lane_xy, lane_starts, lane_ends, lane_types, lane_ids, lane_dir, lane_speed, edge_xy, edge_starts,
             edge_ends, edge_types, boxes, sign_xy, sign_lanes, focus, config: MapConfig, report: CompileReport,
             exact: bool = False):
    """The compiler every map goes through: polylines per kind -> RoadMap fields, and each lane's last-piece id.

    Lanes and edges are runs `[starts, ends)` of their point arrays with per-run types /
    ids / directions / speeds; crosswalks are boxes `[C, 4, 2]`; stop signs one entry per
    governed lane (`sign_lanes`: lane ids, or lane indices with `config.lane_piece_ids`).
    `exact`: culling distances in float64 per pair (see `_min_dist`).
    """
    fields, last_ids = _lanes(lane_xy, lane_starts, lane_ends, lane_types, lane_ids, lane_dir, lane_speed, config,
                              focus, report, exact)
    fields.update(_edges(edge_xy, edge_starts, edge_ends, edge_types, config, focus, report, exact,
                         lane_xy=fields["lane_xy"][fields["lane_valid"]]))
    fields.update(_crosswalks(boxes, config, focus, report, exact))
    if config.lane_piece_ids:
        sign_lanes = np.where(sign_lanes >= 0, last_ids[np.maximum(sign_lanes, 0)] if last_ids.shape[0] else -1, -1)
    fields.update(_stop_signs(sign_xy, np.asarray(sign_lanes, np.int64), config, focus, report, exact))
    return fields, last_ids


def compile_roadmap(raw: RawRoadgraph, focus_xy: np.ndarray, config: MapConfig = MapConfig(),
                    source: str = "") -> tuple[RoadMap, CompileReport]:
    """Compiles raw roadgraph points into a `RoadMap` of the sizes in `config`.

    Args:
      raw: the points (WOMD `roadgraph_samples` layout).
      focus_xy: `[K, 2]` points of the ego's reachable area (its valid logged positions,
        optionally its route); features farther than `config.cull_radius_m` from all
        of them are culled.
      config: sizes and culling.
      source: names the map in the report and in warnings (file and record).

    Returns:
      (RoadMap with numpy leaves, CompileReport). Raises `DataError` on non-finite
      coordinates of valid points or an empty focus.
    """
    report = CompileReport(source=source)
    focus = np.asarray(focus_xy, np.float64).reshape(-1, 2)
    focus = focus[np.all(np.isfinite(focus), axis=-1)]
    if focus.shape[0] == 0:
        raise DataError("no finite focus point to cull the map around (is the ego ever valid?)",
                        file=source or None, field="focus_xy")
    focus = thin_polyline(focus, config.focus_spacing_m)

    valid = raw.valid
    report.invalid_points = int((~valid).sum())
    every = report.invalid_points == 0  # the usual case: no copies for the mask
    xyz = raw.xyz if every else raw.xyz[valid]
    bad = ~np.all(np.isfinite(xyz), axis=-1)
    if bad.any():
        i = int(np.flatnonzero(valid)[np.flatnonzero(bad)[0]])
        raise DataError(f"{int(bad.sum())} valid point(s) with non-finite coordinates (first: point {i}, "
                        f"{raw.xyz[i].tolist()})", file=source or None, field="roadgraph_samples/xyz")
    xy = xyz[:, :2]
    dir_xy = raw.dir[:, :2] if every else raw.dir[valid][:, :2]
    if not np.isfinite(dir_xy).all():
        dir_xy = np.nan_to_num(dir_xy)
    types = raw.types if every else raw.types[valid]
    ids = raw.ids if every else raw.ids[valid]
    # A polyline is a run of consecutive points with the same id and type.
    key = ids.astype(np.int64) * 64 + types
    starts, ends = _runs(key)
    run_type = types[starts] if starts.shape[0] else np.zeros(0, np.int32)

    def subset(kinds):
        sel = np.any(run_type[:, None] == np.asarray(kinds)[None], axis=1)  # a few kinds: cheaper than np.isin
        idx = np.flatnonzero(np.repeat(sel, ends - starts))
        lens = (ends - starts)[sel]
        new_starts = (np.cumsum(lens) - lens).astype(np.int64)
        return idx, new_starts, new_starts + lens

    lane_idx, lane_s, lane_e = subset(LANE_TYPES)
    lane_ids = ids[lane_idx][lane_s]
    speed = (np.array([float(raw.speed_limits.get(int(i), 0.0)) for i in lane_ids]) if raw.speed_limits
             else None)
    edge_idx, edge_s, edge_e = subset(EDGE_TYPES)
    cw_idx, cw_s, cw_e = subset([RG_CROSSWALK])
    cw_xy = xy[cw_idx]
    boxes = [oriented_bounding_box(cw_xy[s:e]) for s, e in zip(cw_s, cw_e)]
    boxes = np.stack(boxes) if boxes else np.zeros((0, 4, 2), np.float32)
    sign_idx, sign_s, sign_e = subset([RG_STOP_SIGN])
    sign_xy, sign_lanes = _stop_sign_entries(xy[sign_idx], ids[sign_idx], sign_s, sign_e, raw.stop_sign_lanes)
    fields, _ = _compile(xy[lane_idx], lane_s, lane_e, types[lane_idx][lane_s], lane_ids, dir_xy[lane_idx][lane_s],
                         speed, xy[edge_idx], edge_s, edge_e, types[edge_idx][edge_s], boxes, sign_xy, sign_lanes,
                         focus, config, report)

    known = set(LANE_TYPES) | set(EDGE_TYPES) | {RG_CROSSWALK, RG_STOP_SIGN}
    for t in np.unique(run_type):
        if int(t) not in known:
            name = {19: "speed bumps"}.get(int(t), "road lines" if 6 <= t <= 13 else f"type {int(t)}")
            report.ignored_polylines[name] = report.ignored_polylines.get(name, 0) + int((run_type == t).sum())

    if report.dropped_any:
        warnings.warn(f"{source or 'map'}: map features within the cull radius did not fit the MapConfig "
                      f"capacity and were dropped (nearest kept): {report}", stacklevel=2)
    return RoadMap(**fields), report


def _stop_sign_entries(xy, ids, starts, ends, stop_sign_lanes) -> tuple[np.ndarray, np.ndarray]:
    """One (centre `[2]`, lane id) entry per stop sign (its points' mean) and governed lane (-1: none known)."""
    sums = np.add.reduceat(xy.astype(np.float64), starts, axis=0) if starts.shape[0] else np.zeros((0, 2))
    centres = sums / np.maximum(ends - starts, 1)[:, None]
    pos, lanes = [], []
    for c, sid in zip(centres, ids[starts]):
        governed = list(stop_sign_lanes.get(int(sid), [])) or [-1]
        for lane in governed:
            pos.append(c)
            lanes.append(int(lane))
    return np.array(pos, np.float64).reshape(-1, 2), np.array(lanes, np.int64)


@dataclasses.dataclass
class PolylineMap:
    """A map already held as polylines (numpy, host): the input of `compile_polylines`.

    The polylines of a kind are stored one after another (`lane_xy` holds lane 0's points,
    then lane 1's, ...; `lane_counts` says how many each has). Lanes' points should be
    dense enough to resample by arc length; edges are directed as they should be kept
    when `MapConfig.orient_edges="keep"`.
    """

    lane_xy: np.ndarray  # [K, 2] float64
    lane_counts: np.ndarray  # [A] int, >= 1
    lane_types: np.ndarray  # [A] int32, RG_*_LANE
    lane_speed: np.ndarray  # [A] float, speed limit m/s (0: unknown)
    edge_xy: np.ndarray  # [M, 2] float64
    edge_counts: np.ndarray  # [B] int, >= 1
    edge_types: np.ndarray  # [B] int32, RG_ROAD_EDGE_*
    crosswalks: np.ndarray  # [C, 4, 2] corner boxes, kept as they are
    stop_sign_xy: np.ndarray  # [S, 2], one entry per (sign, governed lane)
    stop_sign_lanes: np.ndarray  # [S] int: the governed lane's id (with MapConfig.lane_piece_ids its index), -1 none
    lane_ids: np.ndarray | None = None  # [A] int32 (None: 0, 1, ...); unused with MapConfig.lane_piece_ids


def compile_polylines(polylines: PolylineMap, focus_xy: np.ndarray, config: MapConfig = MapConfig(),
                      source: str = "") -> tuple[RoadMap, CompileReport, np.ndarray]:
    """Compiles a map held as polylines into a `RoadMap`, through the same steps as `compile_roadmap`.

    `focus_xy` `[F, 2]` are used as given (no thinning), and culling distances are exact
    (float64 per pair: a polyline map has few points, so nearest-first order never rests
    on float32 rounding). Returns (RoadMap, CompileReport,
    the id of each lane's last piece `[A]`, which with `config.lane_piece_ids` is the id
    that traffic lights at the lane's end name). Nothing is warned: the report says what
    was dropped.
    """
    pm = polylines
    report = CompileReport(source=source)
    focus = np.asarray(focus_xy, np.float64).reshape(-1, 2)
    if focus.shape[0] == 0 or not np.all(np.isfinite(focus)):
        raise DataError("compile_polylines needs finite focus points", file=source or None, field="focus_xy")
    lane_counts = np.asarray(pm.lane_counts, np.int64)
    lane_ends = np.cumsum(lane_counts)
    edge_counts = np.asarray(pm.edge_counts, np.int64)
    edge_ends = np.cumsum(edge_counts)
    num_lanes = lane_counts.shape[0]
    lane_ids = np.arange(num_lanes) if pm.lane_ids is None else np.asarray(pm.lane_ids, np.int64)
    fields, last_ids = _compile(
        np.asarray(pm.lane_xy, np.float64).reshape(-1, 2), lane_ends - lane_counts, lane_ends,
        np.asarray(pm.lane_types, np.int32), lane_ids, np.zeros((num_lanes, 2)), np.asarray(pm.lane_speed, np.float64),
        np.asarray(pm.edge_xy, np.float64).reshape(-1, 2), edge_ends - edge_counts, edge_ends,
        np.asarray(pm.edge_types, np.int32), np.asarray(pm.crosswalks, np.float64).reshape(-1, 4, 2),
        np.asarray(pm.stop_sign_xy, np.float64).reshape(-1, 2), np.asarray(pm.stop_sign_lanes, np.int64), focus,
        config, report, exact=True)
    return RoadMap(**fields), report, last_ids
