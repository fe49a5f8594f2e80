"""Closed-loop scorecard: discrete metrics, their smooth surrogates and the episode score.

Every metric is a pure function of `ObjectState`s (plus the static `Scenario`), in two
forms where it matters for cost: per object `[N]` and ego only `[]`. Only objects valid
at the step count: each metric comes with (or is masked by) a validity flag.

Discrete metrics (the reported truth)
- overlap: separating-axis test of oriented boxes among valid objects (self excluded).
- offroad: any box corner on the off-road side of its nearest road edge. Road edges are
  directed segments with the drivable area on their RIGHT, so a positive cross product
  `cross(end - start, corner - start)` means off the road. Where several segments are
  equally near (a shared vertex), the one whose supporting line is farthest decides
  (`signed_edge_distance`), which is right on both sides of sharp corners.
- log divergence: L2 distance to the logged position at the same step.
- kinematic infeasibility: the inverse bicycle (DESIGN.md) on the simulated transition,
  unclipped: |a| > 10.4 m/s² or |k| > 0.3 + 1e-3 1/m.
- progress: arc position of the ego on `scenario.route`; the episode reports metres
  travelled along the route and the ratio to the log's.
- off-route: lateral distance to the route > 5 m.
- wrong-way: moving (> 2 m/s), within 2 m of some lane centre line, and heading more
  than 120 degrees away from every lane that close (overlapping lanes in intersections
  do not count against it).
- red light: the object's front point moves from before to past a stop point along the
  governed lane's direction (at the lane's start, where WOMD puts the stop point), within 2 m laterally of the stop point, heading with the
  lane, while `TrafficLights.is_red` at the new step. Lights whose lane is not in the
  map are ignored.
- comfort: finite differences of the last three history states against nuPlan-style
  bounds (longitudinal acceleration in [-4.05, 2.40], |lateral acceleration| <= 4.89,
  |longitudinal jerk| <= 4.13, |jerk| <= 8.37, |yaw rate| <= 0.95, |yaw acceleration|
  <= 1.93); needs a history of at least 3 states, else only acceleration bounds apply
  with jerk and yaw acceleration taken as zero.
- time to collision: forward TTC under constant velocity: the time until the ego's front
  reaches the nearest point of a valid object inside its lateral corridor (its box
  projected on the ego's heading), at the closing speed along the ego's heading; capped
  at `TTC_CAP` seconds, 0 while overlapping.

Fault attribution (what the policy is blamed for; drives `failure`, the gate, rewards)
The raw overlap and offroad above stay Waymax-compatible and are reported as
raw_collision / raw_offroad / raw_failure. Real logs already hold overlaps (label noise
of the boxes) and offroad corners (map-compile or labelling artefacts), and not every
contact is the ego's doing, so the at-fault layer leaves out:
- collisions (`contact_classes`, after nuPlan's at-fault collisions), per pair of the
  ego and another object, each contact classified where it starts (a log-overlap
  exemption re-checked every step of it), a pair counted once per episode: not at
  fault when the logged ego overlaps the same object at the same step while both are
  within 1 m / 15 degrees of their logged poses (the overlap is the log's), when the
  ego is stopped (< 0.05 m/s), when the other object meets the ego's
  rear bumper (while the ego is not reversing and the other is not stopped), or when it
  is a side contact while the ego keeps to its lane (within 1 m of its route, the
  logged path on lane centres). Running into a stopped object, a front-bumper contact
  (or one with an object wholly ahead of the front a step before), and a side contact
  out of the lane are at fault.
- offroad (`ego_offroad_corners`): a corner off the road is an artefact when the same
  corner of the logged ego box is off the road at the same step and the ego is within
  1 m / 15 degrees of its logged pose.
Every exemption needs the ego to be where the log was, or stopped, or hit from behind
or from the side in its lane: a policy that leaves the log to drive into something, or
off the road, is at fault even where the log itself was noisy.

Smooth surrogates (for analytic gradients; see `jaxloop.sim.rewards`)
- `overlap_surrogate`: sum over valid others of `tau * softplus((margin - sep) / tau)`
  with `sep` = `geometry.smooth_box_separation` (clearance; negative = penetration).
- `offroad_surrogate`: sum over the four corners of `tau * softplus((d + margin) / tau)`
  with `d` the signed distance to the nearest road edge (positive = off the road).
- `route_progress` itself: arc position from `geometry.project_to_polyline`.

Episode score (`episode_metrics["score"]`, in [0, 1], in the spirit of nuPlan)

    score = no_collision * no_offroad * no_red_light * wrong_way_factor * making_progress
            * (5 * progress_term + 5 * ttc_term + 2 * comfort_term) / 12

with no_* = 1 when the event never happens on a valid ego step (else 0),
wrong_way_factor = 0.5 if the ego ever drives the wrong way (else 1), making_progress =
1 when progress_ratio >= 0.2, progress_term = clip(progress_ratio, 0, 1), ttc_term = 1
when the minimum TTC over the episode is above 0.95 s (else 0), comfort_term = the
fraction of valid steps that are comfortable. progress_ratio = ego progress / log
progress, and 1 when the log progresses less than 5 m.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jaxloop.sim import geometry as geo
from jaxloop.sim.compute import cos_sin, materialize
from jaxloop.sim.dynamics import bicycle_inverse_unclipped
from jaxloop.sim.datatypes import (DT, SYNTHETIC_ID, ObjectState, RoadMap, Route, Scenario, SimState, at_step,
                                   trajectory_at)

ACCEL_LIMIT = 10.4  # m/s², kinematic infeasibility
CURVATURE_LIMIT = 0.3 + 1e-3  # 1/m
OFF_ROUTE_DISTANCE = 5.0  # m
WRONG_WAY_ANGLE = 2.0 * math.pi / 3.0  # 120 degrees
WRONG_WAY_MIN_SPEED = 2.0  # m/s
WRONG_WAY_LANE_RADIUS = 2.0  # m from a lane centre line: inside that lane
RED_LIGHT_LATERAL = 2.0  # m, how far beside the stop point a crossing counts
TTC_CAP = 10.0  # s
TTC_THRESHOLD = 0.95  # s
MIN_LOG_PROGRESS = 5.0  # m
MIN_PROGRESS_RATIO = 0.2
_SPEED_EPS = 0.6  # m/s, as in the inverse bicycle


@dataclasses.dataclass(frozen=True)
class ComfortLimits:
    max_lon_accel: float = 2.40
    min_lon_accel: float = -4.05
    max_abs_lat_accel: float = 4.89
    max_abs_lon_jerk: float = 4.13
    max_abs_jerk: float = 8.37
    max_abs_yaw_rate: float = 0.95
    max_abs_yaw_accel: float = 1.93


@dataclasses.dataclass(frozen=True)
class MetricsConfig:
    """What `step_metrics` computes (static). Ego metrics are always on.

    per_object_overlap: all-pairs SAT `[N, N]` -> `overlap` `[N]` (the ego's comes from it).
    per_object_offroad: every object's corners against every edge `[N, 4, E]` (heavy on
      real maps: off by default).
    per_object_red_light: `[N, L]` stop-line crossings (cheap).
    per_object_log_divergence: `[N]` distances to the log (cheap).
    edge_cull: if > 0, the ego offroad test only looks at the `edge_cull` road-edge
      segments nearest to the ego's centre (a cheap `[E]` pass, then `[4, edge_cull]`).
      The nearest edge to every corner is among them unless more than `edge_cull`
      segments are closer to the centre than the box's half diagonal plus the corner's
      distance to its nearest edge.
    """

    per_object_overlap: bool = True
    per_object_offroad: bool = False
    per_object_red_light: bool = True
    per_object_log_divergence: bool = True
    edge_cull: int = 0
    comfort: ComfortLimits = ComfortLimits()

    def __post_init__(self):
        if self.edge_cull < 0:
            raise ValueError(f"MetricsConfig.edge_cull must be >= 0, got {self.edge_cull}")


# ----------------------------------------------------------------------------- helpers


def object_boxes(state: ObjectState) -> jax.Array:
    """Boxes `[..., N, 5]` = (x, y, yaw, length, width)."""
    return jnp.stack([state.x, state.y, state.yaw, state.length, state.width], -1)


def object_mask(index: jax.Array | int, num_objects: int) -> jax.Array:
    """`[N]` bool selecting one object: `index` is an object index or already an `[N]` bool mask
    (e.g. `ObjectMetadata.is_sdc`, which avoids an argmax: variadic reductions are slow on CPU)."""
    index = jnp.asarray(index)
    if index.dtype == jnp.bool_ and index.ndim == 1:
        return index
    return jnp.arange(num_objects) == index


def select_index(a: jax.Array, index: jax.Array | int, axis: int = 0) -> jax.Array:
    """`a` at a traced `index` (or one-hot bool mask) along `axis`, as a masked reduction.

    A one-hot sum vectorises under `vmap`, where a gather with a batched index is slow
    on CPU.
    """
    axis = axis % a.ndim
    shape = [1] * a.ndim
    shape[axis] = a.shape[axis]
    hit = object_mask(index, a.shape[axis]).reshape(shape)
    if a.dtype == jnp.bool_:
        return jnp.any(hit & a, axis=axis)
    return jnp.sum(jnp.where(hit, a, jnp.zeros((), a.dtype)), axis=axis)


def take_object(state: ObjectState, index: jax.Array | int) -> ObjectState:
    """The state of one object `[...]` from `[N, ...]`; `index` is an index or an `[N]` bool mask."""
    return jax.tree.map(lambda a: select_index(a, index, 0), state)


_CORNER_SIGN_L = (1.0, -1.0, -1.0, 1.0)  # front-left, rear-left, rear-right, front-right (CCW)
_CORNER_SIGN_W = (1.0, 1.0, -1.0, -1.0)


def _corners(state: ObjectState) -> jax.Array:  # [..., 4, 2]
    """Box corners as `geometry.box_corners`, with the trigonometry computed once per box (not per corner)."""
    c, s = cos_sin(state.yaw)
    dl = (state.length / 2)[..., None] * jnp.array(_CORNER_SIGN_L)
    dw = (state.width / 2)[..., None] * jnp.array(_CORNER_SIGN_W)
    cx = state.x[..., None] + dl * c[..., None] - dw * s[..., None]
    cy = state.y[..., None] + dl * s[..., None] + dw * c[..., None]
    return jnp.stack([cx, cy], -1)


def _heading(yaw: jax.Array) -> jax.Array:
    return jnp.stack([jnp.cos(yaw), jnp.sin(yaw)], -1)


# ----------------------------------------------------------------------------- overlap


def pair_separation(a: ObjectState, b: ObjectState) -> jax.Array:
    """Separating-axis gap between the boxes of `a` and `b` (broadcast), elementwise.

    The same quantity as `geometry.box_separation` (positive: apart, negative: minus the
    penetration depth along the best axis), written with the four face-normal
    projections in closed form so all-pairs work fuses into one loop (no small matmuls).
    The trigonometry is computed once per box (`a` and `b` as given, before
    broadcasting), not once per pair.
    """
    ca, sa = cos_sin(a.yaw)
    cb, sb = cos_sin(b.yaw)
    return _separation(a.x, a.y, ca, sa, a.length / 2, a.width / 2, b.x, b.y, cb, sb, b.length / 2, b.width / 2)


def _separation(xa, ya, ca, sa, hla, hwa, xb, yb, cb, sb, hlb, hwb) -> jax.Array:
    """`pair_separation` from box centres, heading cosines / sines and half sizes (broadcast)."""
    dx, dy = xb - xa, yb - ya
    cd = jnp.abs(ca * cb + sa * sb)  # |cos(yaw_b - yaw_a)|
    sd = jnp.abs(ca * sb - sa * cb)  # |sin(yaw_b - yaw_a)|
    g1 = jnp.abs(dx * ca + dy * sa) - hla - (hlb * cd + hwb * sd)
    g2 = jnp.abs(dy * ca - dx * sa) - hwa - (hlb * sd + hwb * cd)
    g3 = jnp.abs(dx * cb + dy * sb) - hlb - (hla * cd + hwa * sd)
    g4 = jnp.abs(dy * cb - dx * sb) - hwb - (hla * sd + hwa * cd)
    return jnp.maximum(jnp.maximum(g1, g2), jnp.maximum(g3, g4))


def pairwise_separation(state: ObjectState) -> jax.Array:
    """All-pairs separation `[N, N]`; +inf on the diagonal and for pairs with an invalid member."""
    a = jax.tree.map(lambda v: v[:, None], state)
    b = jax.tree.map(lambda v: v[None, :], state)
    n = state.x.shape[-1]
    mask = state.valid[:, None] & state.valid[None, :] & ~jnp.eye(n, dtype=bool)
    return jnp.where(mask, pair_separation(a, b), jnp.inf)


def _shifted_rows(v: jax.Array, rows: int) -> jax.Array:
    """`out[r, i] = v[(i + r + 1) % N]` `[rows, N]` for `v` `[N]`: every row a cyclic shift, by static slicing.

    Row r of the tiled `[v, v]` read from offset r + 1 is row r of a `[rows, 2N + 1]`
    reshape of the flattened tiles (skewed rows), so no gather is needed.
    """
    n = v.shape[-1]
    flat = jnp.broadcast_to(jnp.concatenate([v, v]), (rows, 2 * n)).reshape(-1)
    flat = jnp.concatenate([flat, jnp.zeros((rows + 1,), v.dtype)])
    return flat[1:1 + rows * (2 * n + 1)].reshape(rows, 2 * n + 1)[:, :n]


def _unshifted_rows(a: jax.Array) -> jax.Array:
    """Inverse of `_shifted_rows` on `[rows, N]`: `out[r, j] = a[r, (j - r - 1) % N]`."""
    rows, n = a.shape
    flat = jnp.concatenate([a, a], -1).reshape(-1)
    flat = jnp.concatenate([flat, jnp.zeros((n,), a.dtype)])
    return flat[n - 1:n - 1 + rows * (2 * n - 1)].reshape(rows, 2 * n - 1)[:, :n]


def overlap(state: ObjectState) -> jax.Array:
    """Per object `[N]` bool: the object is valid and overlaps another valid object (all pairs).

    Exactly the all-pairs test of `pairwise_separation`, evaluated once per unordered
    pair: the separation is symmetric, so object i is tested against i + 1 ... i + N/2
    (cyclically), which covers every pair (the N/2 shift twice for even N), and each
    pair's result goes to both members. Half the `[N, N]` work.
    """
    with jax.named_scope("metrics.overlap"):
        n = state.x.shape[-1]
        rows = n // 2
        if rows == 0:
            return jnp.zeros((n,), bool)
        c, s = cos_sin(state.yaw)
        boxes = (state.x, state.y, c, s, state.length / 2, state.width / 2)
        partners = [_shifted_rows(f, rows) for f in boxes]  # [N/2, N]: object (i + r + 1) % N
        sep = _separation(*[f[None, :] for f in boxes], *partners)
        hit = (sep < 0.0) & state.valid[None, :] & _shifted_rows(state.valid, rows)  # pair (i, i + r + 1)
        return jnp.any(hit, 0) | jnp.any(_unshifted_rows(hit), 0)


def ego_separation(state: ObjectState, ego: jax.Array) -> jax.Array:
    """Separation `[N]` of the ego's box to every object; +inf for invalid ones and the ego itself."""
    sep = pair_separation(take_object(state, ego), state)
    others = state.valid & ~object_mask(ego, state.x.shape[-1])
    return jnp.where(others, sep, jnp.inf)


def ego_overlap(state: ObjectState, ego: jax.Array) -> jax.Array:
    """`[]` bool: the valid ego overlaps a valid object (`[N]` work, no all-pairs)."""
    with jax.named_scope("metrics.ego_overlap"):
        return select_index(state.valid, ego) & jnp.any(ego_separation(state, ego) < 0.0)


def overlap_surrogate(state: ObjectState, ego: jax.Array, margin: float | jax.Array = 0.5,
                      tau: float | jax.Array = 0.1, exempt: jax.Array | None = None) -> jax.Array:
    """Smooth overlap penalty `[]` of the ego: `sum_j tau * softplus((margin - sep_j) / tau)`.

    `sep_j` is the smooth separation to each valid other object; the penalty is about
    `margin - sep` when closer than the margin and decays to 0 beyond it. Objects where
    `exempt` `[N]` is True are left out (`inherited_contacts`: an overlap the log holds
    while the ego is near its log must not push the policy off the log).
    """
    with jax.named_scope("metrics.overlap_surrogate"):
        boxes = object_boxes(state)
        sep = geo.smooth_box_separation(select_index(boxes, ego, 0), boxes)
        others = state.valid & ~object_mask(ego, state.x.shape[-1])
        if exempt is not None:
            others = others & ~exempt
        pen = tau * jax.nn.softplus((margin - sep) / tau)
        return jnp.sum(jnp.where(others, pen, 0.0))


# ----------------------------------------------------------------------------- offroad


def _segment_d2(px, py, ax, ay, bx, by):
    """Squared distance from points to segments (broadcast, elementwise) and the side cross product."""
    sx, sy = bx - ax, by - ay
    rx, ry = px - ax, py - ay
    t = jnp.clip((rx * sx + ry * sy) / jnp.maximum(sx * sx + sy * sy, 1e-12), 0.0, 1.0)
    ex, ey = rx - t * sx, ry - t * sy
    return ex * ex + ey * ey, sx * ry - sy * rx


EDGE_TIE_TOLERANCE = 1e-4  # relative, on squared distances: segments this close are "equally nearest"


def _edge_terms(points: jax.Array, start: jax.Array, end: jax.Array, valid: jax.Array):
    """Squared distance `[M, E]`, its tie-broken ordering key `[M, E]` and the side cross product `[M, E]`.

    The key is `d2 - EDGE_TIE_TOLERANCE * p2`, with `p2` the squared distance to the
    segment's supporting line (`p2 <= d2`): among segments equally near (within the
    tolerance), the one whose line the point is farther from orders first. Invalid
    segments get an infinite key.
    """
    d2, side = _segment_d2(points[:, None, 0], points[:, None, 1], start[None, :, 0], start[None, :, 1],
                           end[None, :, 0], end[None, :, 1])
    sx, sy = end[:, 0] - start[:, 0], end[:, 1] - start[:, 1]
    inv_len2 = 1.0 / jnp.maximum(sx * sx + sy * sy, 1e-12)  # [E], once per segment
    # Clamped at 0: float noise must not make a key negative (its bit pattern would then sort last).
    key = jnp.maximum(d2 - EDGE_TIE_TOLERANCE * (side * side * inv_len2[None, :]), 0.0)
    return d2, jnp.where(valid[None, :], key, jnp.inf), side


def signed_edge_distance(points: jax.Array, start: jax.Array, end: jax.Array, valid: jax.Array) -> jax.Array:
    """Signed distance `[M]` of points `[M, 2]` to the nearest valid segment `[E, 2]` (> 0: on its left).

    Same convention as `geometry.signed_distance_to_polylines` (-1e3 with no valid
    segment), written as elementwise work plus reductions (no gathers).

    Which side: that of the nearest segment; among segments equally near (squared
    distances within `EDGE_TIE_TOLERANCE`, relative), the one whose supporting line the
    point is farthest from decides, and on an exact tie the point is off the road if any
    of them says so. Why: behind a shared vertex both segments are nearest at the vertex
    itself, so their distances agree up to float rounding (16.0 vs 16.000002), and at a
    sharp vertex (a turn of more than 90 degrees) their sides can disagree. The true
    side there is the one of the segment whose line is farther: for a corner turning
    left (towards the off-road side, a reflex vertex of the road) that makes the point
    on the road unless both say off; for a corner turning right (a convex vertex of the
    road) off the road if either says so. Between distinct segments, which are equally
    near only by coincidence, the rule changes nothing but a tie's winner. On straight
    polylines the segments meeting at a vertex share a line and agree.
    """
    d2, key, side = _edge_terms(points, start, end, valid)
    d2_min = jnp.min(jnp.where(valid[None, :], d2, jnp.inf), -1)
    key_min = jnp.min(key, -1)
    # "The first segment in key order has the point on its left", as float min-reductions
    # (boolean any-reductions are slow on CPU).
    off = jnp.min(jnp.where(side > 0.0, key, jnp.inf), -1) <= key_min
    dist = jnp.sqrt(jnp.where(jnp.isfinite(d2_min), d2_min, 0.0) + 1e-12)
    return jnp.where(jnp.any(valid), jnp.where(off, dist, -dist), -1e3)


def _nearest_side_key(d2: jax.Array, left: jax.Array) -> jax.Array:
    """uint32 keys whose minimum is the nearest segment, ties broken towards `left` (elementwise).

    A non-negative float32's bit pattern orders like its value, and its top (sign) bit
    is 0, so `bits(d2) << 1 | not left` keeps d2 exactly and puts, among segments at
    the same distance, one with the point on its left first. One integer min-reduction
    then answers both "how far" and "is some nearest segment's left side the point's".
    `d2` may be any non-negative ordering key (`_edge_terms`); +inf sorts last.
    """
    bits = jax.lax.bitcast_convert_type(d2, jnp.uint32)
    return (bits << 1) | (~left).astype(jnp.uint32)


def edge_offroad(points: jax.Array, start: jax.Array, end: jax.Array, valid: jax.Array) -> jax.Array:
    """`[M]` bool: `signed_edge_distance(points, start, end, valid) > 0`, in one reduction pass (not differentiable).

    A point is off the road when the first segment in the tie-broken order of
    `signed_edge_distance` has it on its left; with no valid segment it is not.
    """
    _, key, side = _edge_terms(points, start, end, valid)
    key = jnp.where(valid[None, :], _nearest_side_key(key, side > 0.0), jnp.uint32(0xFFFFFFFF))
    return (jnp.min(key, -1) & 1) == 0


def corner_road_distance(corners: jax.Array, roadmap: RoadMap) -> jax.Array:
    """Signed distance `[..., 4]` of box corners `[..., 4, 2]` to the nearest road edge (> 0: off road)."""
    flat = corners.reshape(-1, 2)
    d = signed_edge_distance(flat, roadmap.edge_start, roadmap.edge_end, roadmap.edge_valid)
    return d.reshape(corners.shape[:-1])


def _culled_edges(center: jax.Array, roadmap: RoadMap, k: int):
    """The `k` road-edge segments `[k, 2]` nearest to `center` `[2]` (a cheap pass over [E])."""
    k = min(k, roadmap.edge_start.shape[-2])
    d2, _ = _segment_d2(center[0], center[1], roadmap.edge_start[:, 0], roadmap.edge_start[:, 1],
                        roadmap.edge_end[:, 0], roadmap.edge_end[:, 1])
    d2 = jnp.where(roadmap.edge_valid, d2, jnp.inf)
    _, idx = jax.lax.top_k(-d2, k)
    return roadmap.edge_start[idx], roadmap.edge_end[idx], roadmap.edge_valid[idx]


def _ego_corners_and_edges(state: ObjectState, roadmap: RoadMap, ego: jax.Array, edge_cull: int):
    """The valid flag `[]` and corners `[4, 2]` of the ego, and the road edges to test them against
    (start `[E', 2]`, end `[E', 2]`, valid `[E']`: all of them, or the `edge_cull` nearest)."""
    e = take_object(state, ego)
    # The four corners meet every edge: computed once, not per (corner, edge) pair.
    corners = jnp.stack(materialize(*jnp.moveaxis(_corners(e), -1, 0)), -1)
    if edge_cull > 0:
        edges = _culled_edges(jnp.stack([e.x, e.y]), roadmap, edge_cull)
    else:
        edges = roadmap.edge_start, roadmap.edge_end, roadmap.edge_valid
    return e.valid, corners, edges


def ego_corner_road_distance(state: ObjectState, roadmap: RoadMap, ego: jax.Array, edge_cull: int = 0) -> jax.Array:
    """Signed distance `[4]` of the ego's corners to the nearest road edge (> 0: off road)."""
    _, corners, edges = _ego_corners_and_edges(state, roadmap, ego, edge_cull)
    return signed_edge_distance(corners, *edges)


def offroad(state: ObjectState, roadmap: RoadMap) -> jax.Array:
    """Per object `[N]` bool: valid and some corner is off the road (`[N, 4, E]` work)."""
    with jax.named_scope("metrics.offroad"):
        return state.valid & jnp.any(corner_road_distance(_corners(state), roadmap) > 0.0, -1)


def ego_offroad(state: ObjectState, roadmap: RoadMap, ego: jax.Array, edge_cull: int = 0) -> jax.Array:
    """`[]` bool: the valid ego has a corner off the road (`ego_corner_road_distance > 0`, one pass)."""
    with jax.named_scope("metrics.ego_offroad"):
        valid, corners, edges = _ego_corners_and_edges(state, roadmap, ego, edge_cull)
        return valid & jnp.any(edge_offroad(corners, *edges))


def offroad_surrogate(state: ObjectState, roadmap: RoadMap, ego: jax.Array, margin: float | jax.Array = 0.5,
                      tau: float | jax.Array = 0.1, edge_cull: int = 0, exempt: jax.Array | None = None) -> jax.Array:
    """Smooth offroad penalty `[]`: `sum_corners tau * softplus((d + margin) / tau)`, d = signed road distance.

    Corners where `exempt` `[4]` is True are left out (`offroad_artefacts`: where the
    logged ego is off the road too while the ego is near its log, the edge is a map or
    label artefact, and pushing away from it would push the policy off the log).
    """
    with jax.named_scope("metrics.offroad_surrogate"):
        d = ego_corner_road_distance(state, roadmap, ego, edge_cull)
        pen = tau * jax.nn.softplus((d + margin) / tau)
        if exempt is not None:
            pen = jnp.where(exempt, 0.0, pen)
        return jnp.sum(pen)


# ----------------------------------------------------------------------------- fault attribution

STOPPED_SPEED = 0.05  # m/s: below it an object is stopped (nuPlan's threshold)
NEAR_LOG_DISTANCE = 1.0  # m: within it (and NEAR_LOG_YAW) an object is still at its logged pose
NEAR_LOG_YAW = math.radians(15.0)
IN_LANE_LATERAL = 1.0  # m from the route (the logged path on lane centres): the ego keeps to its lane

# What classifies a contact of the ego with another object (`contact_classes`), in the
# order the rules are applied. Everything but CONTACT_AT_FAULT is a contact the ego is
# not blamed for.
CONTACT_NONE = 0
CONTACT_AT_FAULT = 1
CONTACT_LOGGED = 2  # the log holds the same overlap, and both are near their logged poses
CONTACT_STOPPED_EGO = 3  # the ego is stopped
CONTACT_REAR = 4  # the other object meets the ego's rear bumper
CONTACT_LATERAL = 5  # a side contact while the ego keeps to its lane
CONTACT_NAMES = {CONTACT_AT_FAULT: "at_fault", CONTACT_LOGGED: "logged", CONTACT_STOPPED_EGO: "stopped_ego",
                 CONTACT_REAR: "rear", CONTACT_LATERAL: "lateral"}


def near_log(state: ObjectState, log_state: ObjectState) -> jax.Array:
    """`[...]` bool: valid, logged valid, within NEAR_LOG_DISTANCE of the logged position and NEAR_LOG_YAW of its yaw.

    1 m and 15 degrees are well above what replaying the log through the dynamics drifts
    (centimetres) and below what a different manoeuvre needs (a lane change is ~3.5 m),
    so "near its log" means "doing what the log did".
    """
    d2 = (state.x - log_state.x) ** 2 + (state.y - log_state.y) ** 2
    dyaw = jnp.abs(geo.wrap_angle(state.yaw - log_state.yaw))
    return state.valid & log_state.valid & (d2 <= NEAR_LOG_DISTANCE ** 2) & (dyaw <= NEAR_LOG_YAW)


def inherited_contacts(state: ObjectState, log_state: ObjectState, ego: jax.Array, recorded: jax.Array,
                       sep: jax.Array | None = None) -> jax.Array:
    """`[N]` bool: the logged ego overlaps object j at this step, and both are near their logged poses.

    Such an overlap is in the log (label noise: boxes of real logs overlap where the
    vehicles did not touch), not caused by the policy. `recorded` `[N]` marks objects
    whose log is a recording (`recorded_objects`): an injected road user's "log" is the
    path it was given, so an overlap with it is never inherited. `sep` is
    `ego_separation(log_state, ego)` when the caller has it.
    """
    if sep is None:
        sep = ego_separation(log_state, ego)
    near = near_log(state, log_state)
    return (sep < 0.0) & near & select_index(near, ego) & recorded


def recorded_objects(scenario: Scenario) -> jax.Array:
    """`[N]` bool: objects of the source log, i.e. not injected (`SYNTHETIC_ID`)."""
    return scenario.object_metadata.ids != SYNTHETIC_ID


def closed_in_from_behind(prev: ObjectState, ego: jax.Array) -> jax.Array:
    """`[N]` bool: at the previous step the object was wholly ahead of the ego's front bumper and across its width.

    A contact with such an object is the ego's front running into it, even when the
    object is small or the ego fast enough that at the sampled step it is already past
    the front edge, inside the ego's box (15 m/s moves the bumper 1.5 m a step; a
    pedestrian is 0.5 m deep).
    """
    e = take_object(prev, ego)
    c, s = cos_sin(e.yaw)
    corners = _corners(prev)  # [N, 4, 2]
    dx, dy = corners[..., 0] - e.x, corners[..., 1] - e.y
    lon, lat = dx * c + dy * s, -dx * s + dy * c  # [N, 4] in the ego's frame at the previous step
    ahead = jnp.min(lon, -1) >= e.length / 2
    across = (jnp.min(lat, -1) < e.width / 2) & (jnp.max(lat, -1) > -e.width / 2)
    return e.valid & prev.valid & ahead & across


def contact_classes(state: ObjectState, log_state: ObjectState, ego: jax.Array, in_lane: jax.Array,
                    recorded: jax.Array, sep: jax.Array | None = None,
                    prev: ObjectState | None = None) -> jax.Array:
    """Per other object `[N]` int32: `CONTACT_NONE` without contact, else who is blamed (the CONTACT_* codes).

    A contact is an overlap of the valid ego's box with a valid object's. In the spirit
    of nuPlan's at-fault collisions, the first rule that applies decides:

    1. CONTACT_LOGGED: the logged ego overlaps the same object at the same step and
       both are near their logged poses (`near_log`): the overlap is in the log.
    2. CONTACT_STOPPED_EGO: the ego is stopped (speed < STOPPED_SPEED): it was hit.
    3. CONTACT_AT_FAULT: the other object is stopped (the moving ego ran into it), or
       the ego's front bumper meets the other box, or the object was wholly ahead of
       the front bumper and across the ego's width at the previous step
       (`closed_in_from_behind`, with `prev` the previous state: the front swept into
       it between two samples), so the ego ran into it; or the ego's rear bumper meets
       it while the ego reverses.
    4. CONTACT_REAR: the ego's rear bumper meets the other box: it was hit from behind.
    5. CONTACT_LATERAL: a side contact while `in_lane` (the ego keeps to its lane, so
       the other object came into it); out of its lane (a lane change, cutting a
       corner) a side contact is CONTACT_AT_FAULT.

    Bumpers are the box's front and rear edges (zero-width boxes across the ego). None
    of the exemptions is a way out: the log rule needs the ego to stay where the log
    was, the stopped rule a stopped ego (a moving ego cannot reach a contact while
    stopped), the rear rule contact behind a forward-moving ego, the lateral rule an
    ego on its logged lane. `sep` is `ego_separation(state, ego)` when the caller has it.
    """
    with jax.named_scope("metrics.contact_classes"):
        if sep is None:
            sep = ego_separation(state, ego)
        e = take_object(state, ego)
        contact = e.valid & (sep < 0.0)
        logged = inherited_contacts(state, log_state, ego, recorded)
        ce, se = cos_sin(e.yaw)
        co, so = cos_sin(state.yaw)
        hl, hw = e.length / 2, e.width / 2
        bumper = lambda sign: _separation(e.x + sign * hl * ce, e.y + sign * hl * se, -se, ce, hw, 0.0,
                                          state.x, state.y, co, so, state.length / 2, state.width / 2) < 0.0
        front, rear = bumper(1.0), bumper(-1.0)
        speed2 = state.vel_x ** 2 + state.vel_y ** 2
        stopped_ego = select_index(speed2, ego) < STOPPED_SPEED ** 2
        stopped_other = speed2 < STOPPED_SPEED ** 2
        reversing = e.vel_x * ce + e.vel_y * se < -STOPPED_SPEED
        code = jnp.where(in_lane, CONTACT_LATERAL, CONTACT_AT_FAULT)
        code = jnp.where(rear, CONTACT_REAR, code)
        if prev is not None:
            front = front | closed_in_from_behind(prev, ego)
        code = jnp.where(stopped_other | front | (rear & reversing), CONTACT_AT_FAULT, code)
        code = jnp.where(stopped_ego, CONTACT_STOPPED_EGO, code)
        code = jnp.where(logged, CONTACT_LOGGED, code)
        return jnp.where(contact, code, CONTACT_NONE).astype(jnp.int32)


def ego_in_lane(route_lateral: jax.Array, route: Route) -> jax.Array:
    """`[]` bool: the ego keeps to its lane, approximated as within IN_LANE_LATERAL of its route.

    The route is the logged path snapped to lane centres (`jaxloop.data.route`), so it is
    the centre of the lane the log drove in; a 2 m wide ego within 1 m of the centre of a
    3.5-4 m lane has its footprint inside that lane. Without a route, never.
    """
    return jnp.any(route.valid) & (route_lateral <= IN_LANE_LATERAL)


def ego_offroad_corners(state: ObjectState, log_state: ObjectState, roadmap: RoadMap, ego: jax.Array,
                        edge_cull: int = 0) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(valid `[]`, off `[4]`, artefact `[4]`): the ego's corners off the road, and those that are map or label artefacts.

    A corner is an artefact when the same corner of the logged ego box is off the road
    at the same step while the ego is near its logged pose (`near_log`): the road edge
    cuts through where the log drove (a map-compile or labelling artefact), not where
    the policy took the ego. Far from its log, no corner is exempt. The logged corners
    go through the same one-pass test as the ego's (8 points), against the same edges
    (with `edge_cull`, the ones nearest the ego, which is within 1 m of the log when it matters).
    """
    e, log_e = take_object(state, ego), take_object(log_state, ego)
    corners = jnp.concatenate([_corners(e), _corners(log_e)], 0)  # [8, 2]
    corners = jnp.stack(materialize(*jnp.moveaxis(corners, -1, 0)), -1)
    off = edge_offroad(corners, *_edges_near(e, roadmap, edge_cull))
    return e.valid, off[:4], off[4:] & near_log(e, log_e)


def _edges_near(e: ObjectState, roadmap: RoadMap, edge_cull: int):
    """(start, end, valid) of the road-edge segments the ego's corners are tested against."""
    if edge_cull > 0:
        return _culled_edges(jnp.stack([e.x, e.y]), roadmap, edge_cull)
    return roadmap.edge_start, roadmap.edge_end, roadmap.edge_valid


def offroad_artefacts(state: ObjectState, log_state: ObjectState, roadmap: RoadMap, ego: jax.Array,
                      edge_cull: int = 0) -> jax.Array:
    """`[4]` bool per ego corner: exempt as a map or label artefact (the third output of `ego_offroad_corners`,
    testing only the four logged corners, for the surrogates)."""
    e, log_e = take_object(state, ego), take_object(log_state, ego)
    return edge_offroad(_corners(log_e), *_edges_near(e, roadmap, edge_cull)) & near_log(e, log_e)


# ----------------------------------------------------------------------------- log, kinematics


def log_divergence(state: ObjectState, log_state: ObjectState) -> tuple[jax.Array, jax.Array]:
    """L2 distance `[N]` to the logged position and its validity (both valid)."""
    d = jnp.sqrt((state.x - log_state.x) ** 2 + (state.y - log_state.y) ** 2)
    valid = state.valid & log_state.valid
    return jnp.where(valid, d, 0.0), valid


def inverse_bicycle_unclipped(prev: ObjectState, state: ObjectState, dt: float = DT) -> tuple[jax.Array, jax.Array]:
    """(acceleration, curvature) `[...]` of the transition, the inverse bicycle without clipping."""
    return bicycle_inverse_unclipped(prev, state, dt)


def kinematic_infeasibility(prev: ObjectState, state: ObjectState, dt: float = DT) -> jax.Array:
    """`[...]` bool: the valid transition needs |a| > 10.4 or |k| > 0.301."""
    a, k = inverse_bicycle_unclipped(prev, state, dt)
    return prev.valid & state.valid & ((jnp.abs(a) > ACCEL_LIMIT) | (jnp.abs(k) > CURVATURE_LIMIT))


# ----------------------------------------------------------------------------- route, lanes


def route_progress(xy: jax.Array, route: Route) -> tuple[jax.Array, jax.Array]:
    """(arc position `[...]`, lateral distance `[...]`) of points `[..., 2]` on the route. Differentiable."""
    fn = lambda p: geo.project_to_polyline(p, route.xy, route.arc_length, route.valid)[:2]
    for _ in range(xy.ndim - 1):
        fn = jax.vmap(fn)
    return fn(xy)


def off_route(xy: jax.Array, route: Route) -> jax.Array:
    """`[...]` bool: farther than 5 m from the route polyline (False without a valid route)."""
    _, lat = route_progress(xy, route)
    return jnp.any(route.valid) & (lat > OFF_ROUTE_DISTANCE)


def wrong_way(obj: ObjectState, roadmap: RoadMap, route: Route | None = None) -> jax.Array:
    """`[]` bool for one object: moving, inside some lane, and against every lane it is inside.

    "Inside a lane" is within WRONG_WAY_LANE_RADIUS of its centre-line segments
    (`[P * Q - 1]` elementwise work over the flattened lanes). Where lanes overlap
    (intersections, merges) one lane in the direction of travel is enough to be right.
    With `route` (the ego's), the route counts as such a lane too: it follows the logged
    path, which is legal, and it covers turns whose own lane is missing from the map,
    where the only lanes near the object are the ones it crosses (a left turn across
    oncoming lanes in the WOMD tf.Example fixture, whose roadgraph is capped at 20,000
    samples).
    """
    # The lanes as one sequence of P * Q points, x and y apart: segment k joins points k
    # and k + 1 unless k ends a lane. Long contiguous rows vectorize; `[P, Q - 1]` rows
    # of interleaved x, y did not (1.5x slower on CPU).
    num_lanes, num_points = roadmap.lane_valid.shape
    flat = lambda a: a.reshape(-1)  # [P, Q] -> [P * Q]
    xs, ys = flat(roadmap.lane_xy[..., 0]), flat(roadmap.lane_xy[..., 1])
    dir_x, dir_y = flat(roadmap.lane_dir[..., 0]), flat(roadmap.lane_dir[..., 1])
    valid = flat(roadmap.lane_valid)
    joined = jnp.arange(num_lanes * num_points - 1) % num_points != num_points - 1
    d2, _ = _segment_d2(obj.x, obj.y, xs[:-1], ys[:-1], xs[1:], ys[1:])  # [P * Q - 1]
    d2 = jnp.where(valid[:-1] & valid[1:] & joined, d2, jnp.inf)
    speed = jnp.hypot(obj.vel_x, obj.vel_y)
    heading = jnp.where(speed > _SPEED_EPS, jnp.arctan2(obj.vel_y, obj.vel_x), obj.yaw)
    ch, sh = cos_sin(heading)
    cos_lane = dir_x[:-1] * ch + dir_y[:-1] * sh
    radius2 = WRONG_WAY_LANE_RADIUS ** 2
    # One integer max-reduction: 0 outside every lane, 1 inside one against it, 2 inside one along it.
    inside = jnp.where(d2 < radius2, 1 + (cos_lane > math.cos(WRONG_WAY_ANGLE)), 0).astype(jnp.int32)
    best = jnp.max(inside)
    in_lane, aligned = best >= 1, best == 2
    if route is not None:
        ra, rb = route.xy[:-1], route.xy[1:]
        rd2, _ = _segment_d2(obj.x, obj.y, ra[:, 0], ra[:, 1], rb[:, 0], rb[:, 1])
        rx, ry = rb[:, 0] - ra[:, 0], rb[:, 1] - ra[:, 1]
        length = jnp.sqrt(rx * rx + ry * ry)
        along = (rx * ch + ry * sh) > math.cos(WRONG_WAY_ANGLE) * length
        use = route.valid[:-1] & route.valid[1:] & (length > 1e-6) & along
        aligned = aligned | (jnp.min(jnp.where(use, rd2, jnp.inf)) < radius2)
    return obj.valid & (speed > WRONG_WAY_MIN_SPEED) & in_lane & ~aligned


# ----------------------------------------------------------------------------- red lights


def light_geometry(scenario: Scenario, t: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Stop points `[L, 2]`, governed-lane directions `[L, 2]`, is-red `[L]` and known `[L]` at step `t`.

    The direction is that of the governed lane (`lane_ids`) at its first point (WOMD stop
    points are where the governed lane starts); `known` is False when the light is
    invalid or its lane is not in the map.
    """
    stop_x, stop_y, dir_x, dir_y, red, known = _light_terms(scenario, t)
    return jnp.stack([stop_x, stop_y], -1), jnp.stack([dir_x, dir_y], -1), red, known


def lane_start_directions(roadmap: RoadMap, lane_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Direction `[K, 2]` at the start of the lane with each id `[K]`, and whether it is in the map `[K]`.

    A lane split into pieces by `mapcompile` has every piece under its id; the
    direction is the normalised sum of the pieces' first tangents. The per-map part (the
    ids sorted, and that sum per id: a segment sum over `[P]`) depends on the map only,
    so inside a rollout XLA computes it once; each query is a binary search over the
    `P` sorted ids and a gather of `[K]` values.
    """
    ids = jnp.asarray(roadmap.lane_ids)
    num = ids.shape[-1]
    order = jnp.argsort(ids, stable=True)
    sorted_ids = ids[order]
    run = jnp.cumsum(jnp.concatenate([jnp.zeros((1,), jnp.int32),
                                      (sorted_ids[1:] != sorted_ids[:-1]).astype(jnp.int32)]))  # [P]
    summed = jax.ops.segment_sum(jnp.asarray(roadmap.lane_dir)[order, 0], run, num_segments=num,
                                 indices_are_sorted=True)
    pos = jnp.clip(jnp.searchsorted(sorted_ids, lane_ids, method="scan_unrolled"), 0, num - 1)
    found = (sorted_ids[pos] == lane_ids) & (lane_ids >= 0)
    d = summed[run[pos]]
    norm = jnp.maximum(jnp.sqrt(jnp.sum(d * d, -1, keepdims=True)), 1e-6)
    return jnp.where(found[:, None], d / norm, 0.0), found


def _light_terms(scenario: Scenario, t: jax.Array):
    """`light_geometry` as separate components `[L]`: stop x, y, direction x, y, red, known."""
    tl = scenario.traffic_lights
    # WOMD stop points sit where the governed lane starts: its direction there.
    direction, found = lane_start_directions(scenario.roadmap, at_step(tl.lane_ids, t))
    known = at_step(tl.valid, t) & found
    return at_step(tl.x, t), at_step(tl.y, t), direction[:, 0], direction[:, 1], at_step(tl.is_red, t), known


def red_light_crossing(scenario: Scenario, prev: ObjectState, state: ObjectState, t: jax.Array) -> jax.Array:
    """`[...]` bool per object (any leading shape): the object's front crossed a red stop line at step `t`."""
    # The [L] terms end in reductions, so they are computed once, not per object.
    stop_x, stop_y, dir_x, dir_y, red, known = _light_terms(scenario, t)

    c0, s0, c1, s1 = jnp.cos(prev.yaw), jnp.sin(prev.yaw), jnp.cos(state.yaw), jnp.sin(state.yaw)
    # Fronts and headings `[..., 1]`, computed once per object (not per light) in one op.
    fx0, fy0, fx1, fy1, c1, s1 = (a[..., None] for a in materialize(
        prev.x + prev.length / 2 * c0, prev.y + prev.length / 2 * s0,
        state.x + state.length / 2 * c1, state.y + state.length / 2 * s1, c1, s1))
    along0 = (fx0 - stop_x) * dir_x + (fy0 - stop_y) * dir_y  # [..., L]
    along1 = (fx1 - stop_x) * dir_x + (fy1 - stop_y) * dir_y
    lateral = jnp.abs(dir_x * (fy1 - stop_y) - dir_y * (fx1 - stop_x))
    aligned = c1 * dir_x + s1 * dir_y > 0.0
    crossed = (along0 < 0.0) & (along1 >= 0.0) & (lateral < RED_LIGHT_LATERAL) & aligned & red & known
    return prev.valid & state.valid & jnp.any(crossed, -1)


# ----------------------------------------------------------------------------- comfort, TTC


def comfort(history: ObjectState, limits: ComfortLimits = ComfortLimits(), dt: float = DT) -> dict[str, jax.Array]:
    """Accelerations, jerks and yaw rates of the last history states `[..., K]` and an `is_comfortable` flag.

    Returns a dict of `[...]` arrays: lon_accel, lat_accel, lon_jerk, jerk, yaw_rate,
    yaw_accel, comfortable (bool), valid (bool: the states used are valid).
    """
    k = history.x.shape[-1]
    if k < 2:
        raise ValueError(f"comfort needs a history of at least 2 states, got {k}")
    at = lambda a, i: a[..., k + i]
    vel = jnp.stack([history.vel_x, history.vel_y], -1)  # [..., K, 2]

    def accel(i):  # acceleration vector between states i-1 and i (negative indices), in frame of i
        acc = (vel[..., k + i, :] - vel[..., k + i - 1, :]) / dt
        head = _heading(at(history.yaw, i))
        return jnp.sum(acc * head, -1), geo.cross2(head, acc), acc

    lon1, lat1, acc1 = accel(-1)
    yaw_rate1 = geo.wrap_angle(at(history.yaw, -1) - at(history.yaw, -2)) / dt
    valid = at(history.valid, -1) & at(history.valid, -2)
    if k >= 3:
        lon0, _, acc0 = accel(-2)
        yaw_rate0 = geo.wrap_angle(at(history.yaw, -2) - at(history.yaw, -3)) / dt
        lon_jerk = (lon1 - lon0) / dt
        jerk = jnp.linalg.norm((acc1 - acc0) / dt, axis=-1)
        yaw_accel = (yaw_rate1 - yaw_rate0) / dt
        valid = valid & at(history.valid, -3)
    else:
        lon_jerk = jerk = yaw_accel = jnp.zeros_like(lon1)
    ok = ((lon1 <= limits.max_lon_accel) & (lon1 >= limits.min_lon_accel)
          & (jnp.abs(lat1) <= limits.max_abs_lat_accel) & (jnp.abs(lon_jerk) <= limits.max_abs_lon_jerk)
          & (jerk <= limits.max_abs_jerk) & (jnp.abs(yaw_rate1) <= limits.max_abs_yaw_rate)
          & (jnp.abs(yaw_accel) <= limits.max_abs_yaw_accel))
    return dict(lon_accel=lon1, lat_accel=lat1, lon_jerk=lon_jerk, jerk=jerk, yaw_rate=yaw_rate1,
                yaw_accel=yaw_accel, comfortable=ok | ~valid, valid=valid)


def time_to_collision(state: ObjectState, ego: jax.Array) -> jax.Array:
    """Forward TTC `[]` of the ego under constant velocity, capped at `TTC_CAP`; 0 while overlapping.

    Every valid other object's box is put in the ego's frame; it is in the corridor when
    its lateral extent meets the ego's width. TTC = (its nearest longitudinal point - the
    ego's half length) / (ego speed - its velocity along the ego's heading).
    """
    with jax.named_scope("metrics.ttc"):
        e = take_object(state, ego)
        ce, se = cos_sin(e.yaw)
        corners = _corners(state)  # [N, 4, 2]
        dx, dy = corners[..., 0] - e.x, corners[..., 1] - e.y
        local_x, local_y = ce * dx + se * dy, ce * dy - se * dx  # in the ego's frame
        min_x, max_x = jnp.min(local_x, -1), jnp.max(local_x, -1)
        min_y, max_y = jnp.min(local_y, -1), jnp.max(local_y, -1)
        others = state.valid & ~object_mask(ego, state.x.shape[-1])
        in_corridor = others & (min_y < e.width / 2) & (max_y > -e.width / 2)
        gap = min_x - e.length / 2
        overlapping = in_corridor & (gap <= 0.0) & (max_x >= -e.length / 2)
        closing = (e.vel_x * ce + e.vel_y * se) - (state.vel_x * ce + state.vel_y * se)
        ttc = jnp.where(in_corridor & (gap > 0.0) & (closing > 1e-3), gap / jnp.maximum(closing, 1e-3), TTC_CAP)
        ttc = jnp.where(overlapping, 0.0, jnp.minimum(ttc, TTC_CAP))
        return jnp.where(e.valid, jnp.min(ttc), TTC_CAP)


# ----------------------------------------------------------------------------- per step, per episode


def step_metrics(scenario: Scenario, prev_state: SimState, state: SimState, info=None, *,
                 config: MetricsConfig = MetricsConfig()) -> dict[str, jax.Array]:
    """Metrics of one transition, usable as `rollout(..., extras_fn=step_metrics)`.

    Ego entries are scalars `[]`: ego_valid, ego_overlap, ego_overlap_at_fault, ego_offroad,
    ego_offroad_at_fault, ego_log_divergence, ego_log_valid, ego_infeasible, ego_route_s, ego_route_s_prev, ego_route_lateral,
    ego_off_route, ego_wrong_way, ego_red_light, ego_comfortable, ego_lon_accel,
    ego_lat_accel, ego_jerk, ego_ttc. `ego_contact` `[N]` int32 is the class of the ego's
    contact with each object (`contact_classes`; CONTACT_NONE without one), which
    `episode_metrics` reads where each contact starts. ego_overlap and ego_offroad are
    the raw (Waymax-compatible) metrics; the `_at_fault` ones leave out what the log
    already holds and, for contacts, what nuPlan does not blame the ego for (see the
    module docstring). Per-object entries `[N]` depending on `config`: overlap, offroad,
    red_light, log_divergence, log_valid, valid (all raw).
    """
    with jax.named_scope("metrics.step"):
        ego = scenario.object_metadata.is_sdc
        cur, prev = state.current, prev_state.current
        e, e_prev = take_object(cur, ego), take_object(prev, ego)
        rm = scenario.roadmap
        # The env's StepInfo already holds the log at the new step.
        log_state = (trajectory_at(scenario.log_trajectory, state.timestep) if info is None
                     else info.log_state)
        xy = jnp.stack([e.x, e.y])
        s, lat = route_progress(xy, scenario.route)
        out: dict[str, jax.Array] = {"ego_valid": e.valid, "valid": cur.valid}
        sep = ego_separation(cur, ego)
        if config.per_object_overlap:
            ov = overlap(cur)
            out["overlap"] = ov
            out["ego_overlap"] = select_index(ov, ego)
        else:
            out["ego_overlap"] = e.valid & jnp.any(sep < 0.0)
        contact = contact_classes(cur, log_state, ego, ego_in_lane(lat, scenario.route), recorded_objects(scenario),
                                  sep, prev=prev)
        out["ego_contact"] = contact
        out["ego_overlap_at_fault"] = jnp.any(contact == CONTACT_AT_FAULT)
        valid, off, artefact = ego_offroad_corners(cur, log_state, rm, ego, config.edge_cull)
        if config.per_object_offroad:
            off_all = offroad(cur, rm)
            out["offroad"] = off_all
            out["ego_offroad"] = select_index(off_all, ego)
        else:
            out["ego_offroad"] = valid & jnp.any(off)
        out["ego_offroad_at_fault"] = valid & jnp.any(off & ~artefact)
        if config.per_object_log_divergence:
            div, div_valid = log_divergence(cur, log_state)
            out["log_divergence"], out["log_valid"] = div, div_valid
            out["ego_log_divergence"], out["ego_log_valid"] = select_index(div, ego), select_index(div_valid, ego)
        else:
            div, div_valid = log_divergence(e, take_object(log_state, ego))
            out["ego_log_divergence"], out["ego_log_valid"] = div, div_valid
        out["ego_infeasible"] = kinematic_infeasibility(e_prev, e)
        s_prev, _ = route_progress(jnp.stack([e_prev.x, e_prev.y]), scenario.route)
        has_route = jnp.any(scenario.route.valid)
        out["ego_route_s"], out["ego_route_s_prev"], out["ego_route_lateral"] = s, s_prev, lat
        out["ego_off_route"] = e.valid & has_route & (lat > OFF_ROUTE_DISTANCE)
        out["ego_wrong_way"] = wrong_way(e, rm, scenario.route)
        if config.per_object_red_light:
            rl = red_light_crossing(scenario, prev, cur, state.timestep)
            out["red_light"] = rl
            out["ego_red_light"] = select_index(rl, ego)
        else:
            out["ego_red_light"] = red_light_crossing(scenario, e_prev, e, state.timestep)
        hist = take_object(state.history, ego)
        c = comfort(hist, config.comfort)
        out["ego_comfortable"] = c["comfortable"]
        out["ego_lon_accel"], out["ego_lat_accel"], out["ego_jerk"] = c["lon_accel"], c["lat_accel"], c["jerk"]
        out["ego_ttc"] = time_to_collision(cur, ego)
        return out


def _last_valid(values: jax.Array, valid: jax.Array) -> jax.Array:
    idx = jnp.where(jnp.any(valid), jnp.max(jnp.where(valid, jnp.arange(valid.shape[0]), -1)), 0)
    return values[idx]


def episode_metrics(scenario: Scenario, rollout_out, extras: dict | None = None) -> dict[str, jax.Array]:
    """Aggregates per-step `step_metrics` outputs `[H, ...]` of one episode into scalars.

    `extras` defaults to `rollout_out.extras`. Returns red_light, off_route, wrong_way,
    infeasible (any valid step, float 0/1); raw_collision, raw_offroad (the raw metrics
    on any valid step) and raw_failure (either, or red light); the at-fault collision
    (some contact is at fault where it starts, or at a later step of a contact that began
    as the log's overlap) and offroad (a corner off the road
    that is not an artefact, on a valid step) and failure (either, or red light);
    collision_pairs (pairs with an at-fault contact), exempt_{logged, stopped_ego,
    rear, lateral}_pairs (the other touched pairs, by the rule of their first contact),
    offroad_artefact_steps (raw offroad steps that are all artefact); progress (m along the route), log_progress, progress_ratio,
    ade, fde (ego log divergence), comfort (fraction of comfortable steps), ttc_min,
    score (see the module docstring; its multipliers use the at-fault collision and
    offroad); nonfinite (see below); and, when per-object overlap was computed,
    object_collision `[N]` (raw).

    An episode whose simulated ego state or ego metrics are NaN / inf at any valid step
    has nonfinite = 1 and is a failure: every discrete event reads 1, score 0, and the
    continuous aggregates (progress, ade, ...) NaN (`mark_nonfinite`).
    """
    with jax.named_scope("metrics.episode"):
        x = rollout_out.extras if extras is None else extras
        valid = x["ego_valid"]
        f = lambda b: jnp.any(b & valid).astype(jnp.float32)
        out = {k: f(x[f"ego_{k}"]) for k in ("red_light", "off_route", "wrong_way", "infeasible")}
        out["raw_collision"] = f(x["ego_overlap"])
        out["raw_offroad"] = f(x["ego_offroad"])
        out["raw_failure"] = jnp.maximum(jnp.maximum(out["raw_collision"], out["raw_offroad"]), out["red_light"])
        # Each pair counts once. A contact is classified where it starts (a contact lasting
        # several steps is one event, judged by how it began, as in nuPlan), and every new
        # contact of the pair is judged again. A contact that began as the log's own overlap
        # stays exempt only while that holds: once the ego leaves its logged pose during it,
        # an at-fault step is at fault.
        contact = x["ego_contact"]  # [H, N]
        touched = contact != CONTACT_NONE
        onset = touched & ~jnp.concatenate([jnp.zeros_like(touched[:1]), touched[:-1]], 0)

        def logged_run(carry, step):
            touched_t, onset_t, contact_t = step
            started_logged = jnp.where(onset_t, contact_t == CONTACT_LOGGED, carry) & touched_t
            return started_logged, started_logged

        _, from_log = jax.lax.scan(logged_run, jnp.zeros_like(touched[0]), (touched, onset, contact))
        at_fault = contact == CONTACT_AT_FAULT
        pair_at_fault = jnp.any(at_fault & (onset | from_log), axis=0)  # [N]
        first = jnp.argmax(touched, axis=0)  # [N]
        first_class = jnp.where(jnp.any(touched, 0), jnp.take_along_axis(contact, first[None], 0)[0], CONTACT_NONE)
        pair_class = jnp.where(pair_at_fault, CONTACT_AT_FAULT, first_class)  # exempt pairs: by their first rule
        count = lambda code: jnp.sum(pair_class == code).astype(jnp.float32)
        out["collision_pairs"] = count(CONTACT_AT_FAULT)
        for code, name in CONTACT_NAMES.items():
            if code != CONTACT_AT_FAULT:
                out[f"exempt_{name}_pairs"] = count(code)
        out["collision"] = (out["collision_pairs"] > 0).astype(jnp.float32)
        out["offroad"] = f(x["ego_offroad_at_fault"])
        out["offroad_artefact_steps"] = jnp.sum(x["ego_offroad"] & ~x["ego_offroad_at_fault"] & valid).astype(jnp.float32)
        out["failure"] = jnp.maximum(jnp.maximum(out["collision"], out["offroad"]), out["red_light"])
        progress = jnp.sum(jnp.where(valid, x["ego_route_s"] - x["ego_route_s_prev"], 0.0))
        # The log's progress over the same steps, from the log at the step before the first.
        ego = scenario.object_metadata.is_sdc
        first = rollout_out.timesteps[0] - 1
        log0 = take_object(trajectory_at(scenario.log_trajectory, first), ego)
        ls = rollout_out.log_states
        log_xy = jnp.stack([select_index(ls.x, ego, 1), select_index(ls.y, ego, 1)], -1)  # [H, 2]
        log_valid = select_index(ls.valid, ego, 1)
        log_s, _ = route_progress(log_xy, scenario.route)
        log_s0, _ = route_progress(jnp.stack([log0.x, log0.y]), scenario.route)
        log_progress = jnp.where(jnp.any(log_valid) & log0.valid, _last_valid(log_s, log_valid) - log_s0, 0.0)
        ratio = jnp.where(log_progress > MIN_LOG_PROGRESS, progress / jnp.maximum(log_progress, 1e-6), 1.0)
        out.update(progress=progress, log_progress=log_progress, progress_ratio=ratio)
        dv = x["ego_log_valid"] & valid
        n_dv = jnp.sum(dv)
        out["ade"] = jnp.sum(jnp.where(dv, x["ego_log_divergence"], 0.0)) / jnp.maximum(n_dv, 1)
        out["fde"] = jnp.where(n_dv > 0, _last_valid(x["ego_log_divergence"], dv), 0.0)
        n_valid = jnp.sum(valid)
        out["comfort"] = jnp.where(n_valid > 0, jnp.sum(x["ego_comfortable"] & valid) / jnp.maximum(n_valid, 1), 1.0)
        out["ttc_min"] = jnp.min(jnp.where(valid, x["ego_ttc"], TTC_CAP))
        multiplier = ((1.0 - out["collision"]) * (1.0 - out["offroad"]) * (1.0 - out["red_light"])
                      * (1.0 - 0.5 * out["wrong_way"]) * (ratio >= MIN_PROGRESS_RATIO))
        weighted = (5.0 * jnp.clip(ratio, 0.0, 1.0) + 5.0 * (out["ttc_min"] > TTC_THRESHOLD)
                    + 2.0 * out["comfort"]) / 12.0
        out["score"] = multiplier * weighted
        if "overlap" in x:
            out["object_collision"] = jnp.any(x["overlap"] & x["valid"], axis=0)
        return mark_nonfinite(out, nonfinite_episode(scenario, rollout_out, x))


# The simulated ego state fields and the per-step ego metrics the episode aggregates read:
# a NaN / inf in any of them at a valid ego step makes the whole episode non-finite.
_EGO_STATE_FIELDS = ("x", "y", "yaw", "vel_x", "vel_y", "length", "width")
_EGO_FLOAT_EXTRAS = ("ego_route_s", "ego_route_s_prev", "ego_route_lateral", "ego_ttc", "ego_lon_accel",
                     "ego_lat_accel", "ego_jerk")
# Discrete events a non-finite episode counts as happened: with a NaN pose, comparisons are
# False and every test would otherwise read "no collision, on the road" -- a success.
NONFINITE_EVENTS = ("failure", "collision", "offroad", "red_light", "off_route", "wrong_way", "infeasible")
# Continuous aggregates with no meaning once the state is non-finite: NaN, never a number.
NONFINITE_UNDEFINED = ("progress", "progress_ratio", "ade", "fde", "comfort", "ttc_min")


def nonfinite_episode(scenario: Scenario, rollout_out, extras: dict) -> jax.Array:
    """`[]` float 0/1: the simulated ego state or one of its metrics is NaN / inf at some valid step."""
    ego = scenario.object_metadata.is_sdc
    valid = extras["ego_valid"]
    states = rollout_out.states
    bad = jnp.zeros_like(valid)
    for f in _EGO_STATE_FIELDS:
        bad = bad | ~jnp.isfinite(select_index(getattr(states, f), ego, 1))
    for k in _EGO_FLOAT_EXTRAS:
        if k in extras:
            bad = bad | ~jnp.isfinite(extras[k])
    bad = bad | (extras["ego_log_valid"] & ~jnp.isfinite(extras["ego_log_divergence"]))
    return jnp.any(bad & valid).astype(jnp.float32)


def mark_nonfinite(out: dict[str, jax.Array], nonfinite: jax.Array) -> dict[str, jax.Array]:
    """Adds `nonfinite` and makes such an episode a failure: every discrete event 1 (also any
    other scalar `*collision` / `*offroad` / `*failure` entry, e.g. the raw ones), score 0, the
    continuous aggregates NaN. A finite episode is returned unchanged."""
    bad = nonfinite > 0
    out = dict(out, nonfinite=nonfinite)
    for k, v in out.items():
        if jnp.ndim(v) != 0 or k == "nonfinite":
            continue
        if k in NONFINITE_EVENTS or k.endswith(("collision", "offroad", "failure")):
            out[k] = jnp.where(bad, jnp.ones_like(v), v)
        elif k in NONFINITE_UNDEFINED:
            out[k] = jnp.where(bad, jnp.full_like(v, jnp.nan), v)
    out["score"] = jnp.where(bad, jnp.zeros_like(out["score"]), out["score"])
    return out
