"""Log divergence, kinematics, route progress, wrong way, red lights, comfort and time to collision."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jaxloop.sim import geometry as geo
from jaxloop.sim.compute import cos_sin, materialize
from jaxloop.sim.dynamics import bicycle_inverse_unclipped
from jaxloop.sim.datatypes import DT, ObjectState, RoadMap, Route, Scenario, at_step
from jaxloop.sim.metrics.boxes import _corners, _heading, object_mask, take_object
from jaxloop.sim.metrics.road import _segment_d2

ACCEL_LIMIT = 10.4  # m/s², kinematic infeasibility
CURVATURE_LIMIT = 0.3 + 1e-3  # 1/m
OFF_ROUTE_DISTANCE = 5.0  # m
WRONG_WAY_ANGLE = 2.0 * math.pi / 3.0  # 120 degrees
WRONG_WAY_MIN_SPEED = 2.0  # m/s
WRONG_WAY_LANE_RADIUS = 2.0  # m from a lane centre line: inside that lane
RED_LIGHT_LATERAL = 2.0  # m, how far beside the stop point a crossing counts
TTC_CAP = 10.0  # s
TTC_THRESHOLD = 0.95  # s
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
