"""Closed-loop scorecard: discrete metrics, their smooth surrogates and the episode score.

Every metric is a pure function of `ObjectState`s (plus the static `Scenario`), in two
forms where it matters for cost: per object `[N]` and ego only `[]`. Only objects valid
at the step count: each metric comes with (or is masked by) a validity flag.

Discrete metrics (the reported truth)
- overlap: separating-axis test of oriented boxes among valid objects (self excluded).
- offroad: any box corner on the off-road side of its nearest road edge. Road edges are
  directed segments with the drivable area on their RIGHT, so a positive cross product
  `cross(end - start, corner - start)` means off the road.
- log divergence: L2 distance to the logged position at the same step.
- kinematic infeasibility: the inverse bicycle (DESIGN.md) on the simulated transition,
  unclipped: |a| > 10.4 m/s² or |k| > 0.3 + 1e-3 1/m.
- progress: arc position of the ego on `scenario.route`; the episode reports metres
  travelled along the route and the ratio to the log's.
- off-route: lateral distance to the route > 5 m.
- wrong-way: moving (> 2 m/s) with a heading more than 120 degrees from the direction of
  the nearest lane point (within 3.5 m of a lane centre).
- red light: the object's front point moves from before to past a stop point along the
  governed lane's direction, within 2 m laterally of the stop point, heading with the
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
from jaxloop.sim.datatypes import DT, ObjectState, RoadMap, Route, Scenario, SimState, trajectory_at

ACCEL_LIMIT = 10.4  # m/s², kinematic infeasibility
CURVATURE_LIMIT = 0.3 + 1e-3  # 1/m
OFF_ROUTE_DISTANCE = 5.0  # m
WRONG_WAY_ANGLE = 2.0 * math.pi / 3.0  # 120 degrees
WRONG_WAY_MIN_SPEED = 2.0  # m/s
WRONG_WAY_MAX_LANE_DISTANCE = 3.5  # m
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


def take_object(state: ObjectState, index: jax.Array) -> ObjectState:
    """The state of one object `[]` from `[N]`."""
    return jax.tree.map(lambda a: a[index], state)


def _corners(state: ObjectState) -> jax.Array:  # [..., 4, 2]
    return geo.box_corners(state.x, state.y, state.yaw, state.length, state.width)


def _heading(yaw: jax.Array) -> jax.Array:
    return jnp.stack([jnp.cos(yaw), jnp.sin(yaw)], -1)


# ----------------------------------------------------------------------------- overlap


def overlap(state: ObjectState) -> jax.Array:
    """Per object `[N]` bool: the object is valid and overlaps another valid object (all pairs)."""
    with jax.named_scope("metrics.overlap"):
        pair = geo.pairwise_overlap(object_boxes(state), state.valid)
        return jnp.any(pair, axis=-1)


def ego_separation(state: ObjectState, ego: jax.Array) -> jax.Array:
    """Separation `[N]` of the ego's box to every object; +inf for invalid ones and the ego itself."""
    boxes = object_boxes(state)
    sep = geo.box_separation(boxes[ego], boxes)
    n = state.x.shape[-1]
    others = state.valid & (jnp.arange(n) != ego)
    return jnp.where(others, sep, jnp.inf)


def ego_overlap(state: ObjectState, ego: jax.Array) -> jax.Array:
    """`[]` bool: the valid ego overlaps a valid object (`[N]` work, no all-pairs)."""
    with jax.named_scope("metrics.ego_overlap"):
        return state.valid[ego] & jnp.any(ego_separation(state, ego) < 0.0)


def overlap_surrogate(state: ObjectState, ego: jax.Array, margin: float | jax.Array = 0.5,
                      tau: float | jax.Array = 0.1) -> jax.Array:
    """Smooth overlap penalty `[]` of the ego: `sum_j tau * softplus((margin - sep_j) / tau)`.

    `sep_j` is the smooth separation to each valid other object; the penalty is about
    `margin - sep` when closer than the margin and decays to 0 beyond it.
    """
    with jax.named_scope("metrics.overlap_surrogate"):
        boxes = object_boxes(state)
        sep = geo.smooth_box_separation(boxes[ego], boxes)
        n = state.x.shape[-1]
        others = state.valid & (jnp.arange(n) != ego)
        pen = tau * jax.nn.softplus((margin - sep) / tau)
        return jnp.sum(jnp.where(others, pen, 0.0))


# ----------------------------------------------------------------------------- offroad


def corner_road_distance(corners: jax.Array, roadmap: RoadMap) -> jax.Array:
    """Signed distance `[..., 4]` of box corners `[..., 4, 2]` to the nearest road edge (> 0: off road)."""
    return geo.signed_distance_to_polylines(corners, roadmap.edge_start, roadmap.edge_end, roadmap.edge_valid)


def _culled_edges(center: jax.Array, roadmap: RoadMap, k: int):
    """The `k` road-edge segments `[k, 2]` nearest to `center` `[2]` (a cheap pass over [E])."""
    k = min(k, roadmap.edge_start.shape[-2])
    dist, _ = geo.point_segment_distance(center, roadmap.edge_start, roadmap.edge_end)
    dist = jnp.where(roadmap.edge_valid, dist, jnp.inf)
    _, idx = jax.lax.top_k(-dist, k)
    return roadmap.edge_start[idx], roadmap.edge_end[idx], roadmap.edge_valid[idx]


def ego_corner_road_distance(state: ObjectState, roadmap: RoadMap, ego: jax.Array, edge_cull: int = 0) -> jax.Array:
    """Signed distance `[4]` of the ego's corners to the nearest road edge (> 0: off road)."""
    e = take_object(state, ego)
    corners = _corners(e)
    if edge_cull > 0:
        start, end, valid = _culled_edges(jnp.stack([e.x, e.y]), roadmap, edge_cull)
        return geo.signed_distance_to_polylines(corners, start, end, valid)
    return corner_road_distance(corners, roadmap)


def offroad(state: ObjectState, roadmap: RoadMap) -> jax.Array:
    """Per object `[N]` bool: valid and some corner is off the road (`[N, 4, E]` work)."""
    with jax.named_scope("metrics.offroad"):
        return state.valid & jnp.any(corner_road_distance(_corners(state), roadmap) > 0.0, -1)


def ego_offroad(state: ObjectState, roadmap: RoadMap, ego: jax.Array, edge_cull: int = 0) -> jax.Array:
    """`[]` bool: the valid ego has a corner off the road."""
    with jax.named_scope("metrics.ego_offroad"):
        return state.valid[ego] & jnp.any(ego_corner_road_distance(state, roadmap, ego, edge_cull) > 0.0)


def offroad_surrogate(state: ObjectState, roadmap: RoadMap, ego: jax.Array, margin: float | jax.Array = 0.5,
                      tau: float | jax.Array = 0.1, edge_cull: int = 0) -> jax.Array:
    """Smooth offroad penalty `[]`: `sum_corners tau * softplus((d + margin) / tau)`, d = signed road distance."""
    with jax.named_scope("metrics.offroad_surrogate"):
        d = ego_corner_road_distance(state, roadmap, ego, edge_cull)
        return jnp.sum(tau * jax.nn.softplus((d + margin) / tau))


# ----------------------------------------------------------------------------- log, kinematics


def log_divergence(state: ObjectState, log_state: ObjectState) -> tuple[jax.Array, jax.Array]:
    """L2 distance `[N]` to the logged position and its validity (both valid)."""
    d = jnp.sqrt((state.x - log_state.x) ** 2 + (state.y - log_state.y) ** 2)
    valid = state.valid & log_state.valid
    return jnp.where(valid, d, 0.0), valid


def inverse_bicycle_unclipped(prev: ObjectState, state: ObjectState, dt: float = DT) -> tuple[jax.Array, jax.Array]:
    """(acceleration, curvature) `[...]` of the transition, the inverse bicycle without clipping."""
    v0 = jnp.hypot(prev.vel_x, prev.vel_y)
    v1 = jnp.hypot(state.vel_x, state.vel_y)
    a = (v1 - v0) / dt
    yaw1 = jnp.where(v1 > _SPEED_EPS, jnp.arctan2(state.vel_y, state.vel_x), state.yaw)
    travel = v0 * dt + 0.5 * a * dt ** 2
    moving = (v0 >= _SPEED_EPS) & (v1 >= _SPEED_EPS)
    k = jnp.where(moving, geo.wrap_angle(yaw1 - prev.yaw) / jnp.where(moving, travel, 1.0), 0.0)
    return a, k


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


def wrong_way(obj: ObjectState, roadmap: RoadMap) -> jax.Array:
    """`[]` bool for one object: moving against the nearest lane point's direction (`[P * Q]` work)."""
    xy = jnp.stack([obj.x, obj.y])
    d2 = jnp.sum((roadmap.lane_xy - xy) ** 2, -1)  # [P, Q]
    d2 = jnp.where(roadmap.lane_valid, d2, jnp.inf).reshape(-1)
    i = jnp.argmin(d2)
    lane_dir = roadmap.lane_dir.reshape(-1, 2)[i]
    speed = jnp.hypot(obj.vel_x, obj.vel_y)
    heading = jnp.where(speed > _SPEED_EPS, jnp.arctan2(obj.vel_y, obj.vel_x), obj.yaw)
    angle = jnp.abs(geo.wrap_angle(heading - jnp.arctan2(lane_dir[1], lane_dir[0])))
    near = d2[i] < WRONG_WAY_MAX_LANE_DISTANCE ** 2
    return obj.valid & near & (speed > WRONG_WAY_MIN_SPEED) & (angle > WRONG_WAY_ANGLE)


# ----------------------------------------------------------------------------- red lights


def light_geometry(scenario: Scenario, t: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Stop points `[L, 2]`, governed-lane directions `[L, 2]`, is-red `[L]` and known `[L]` at step `t`.

    The direction is that of the governed lane (`lane_ids`) at its point nearest the stop
    point; `known` is False when the light is invalid or its lane is not in the map.
    """
    tl = scenario.traffic_lights
    tc = jnp.clip(t, 0, tl.state.shape[-1] - 1)
    lights = jax.tree.map(lambda a: a[:, tc], tl)
    red = tl.is_red[:, tc]
    rm = scenario.roadmap
    match = (rm.lane_ids[None, :] == lights.lane_ids[:, None]) & (rm.lane_ids[None, :] >= 0)  # [L, P]
    lane = jnp.argmax(match, -1)  # [L]
    found = jnp.any(match, -1)
    stop = jnp.stack([lights.x, lights.y], -1)  # [L, 2]
    pts = rm.lane_xy[lane]  # [L, Q, 2]
    d2 = jnp.where(rm.lane_valid[lane], jnp.sum((pts - stop[:, None]) ** 2, -1), jnp.inf)
    q = jnp.argmin(d2, -1)
    direction = jnp.take_along_axis(rm.lane_dir[lane], q[:, None, None], 1)[:, 0]  # [L, 2]
    return stop, direction, red, lights.valid & found


def red_light_crossing(scenario: Scenario, prev: ObjectState, state: ObjectState, t: jax.Array) -> jax.Array:
    """`[...]` bool per object (any leading shape): the object's front crossed a red stop line at step `t`."""
    stop, direction, red, known = light_geometry(scenario, t)

    def front(s: ObjectState) -> jax.Array:  # [..., 2]
        return jnp.stack([s.x, s.y], -1) + (s.length / 2)[..., None] * _heading(s.yaw)

    f0 = front(prev)[..., None, :] - stop  # [..., L, 2]
    f1 = front(state)[..., None, :] - stop
    along0 = jnp.sum(f0 * direction, -1)
    along1 = jnp.sum(f1 * direction, -1)
    lateral = jnp.abs(geo.cross2(direction, f1))
    aligned = jnp.sum(_heading(state.yaw)[..., None, :] * direction, -1) > 0.0
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
        corners = geo.to_local(_corners(state), jnp.stack([e.x, e.y]), e.yaw)  # [N, 4, 2]
        min_x, max_x = jnp.min(corners[..., 0], -1), jnp.max(corners[..., 0], -1)
        min_y, max_y = jnp.min(corners[..., 1], -1), jnp.max(corners[..., 1], -1)
        n = state.x.shape[-1]
        others = state.valid & (jnp.arange(n) != ego)
        in_corridor = others & (min_y < e.width / 2) & (max_y > -e.width / 2)
        gap = min_x - e.length / 2
        overlapping = in_corridor & (gap <= 0.0) & (max_x >= -e.length / 2)
        head = _heading(e.yaw)
        closing = jnp.sum(jnp.stack([e.vel_x, e.vel_y]) * head) - (state.vel_x * head[0] + state.vel_y * head[1])
        ttc = jnp.where(in_corridor & (gap > 0.0) & (closing > 1e-3), gap / jnp.maximum(closing, 1e-3), TTC_CAP)
        ttc = jnp.where(overlapping, 0.0, jnp.minimum(ttc, TTC_CAP))
        return jnp.where(e.valid, jnp.min(ttc), TTC_CAP)


# ----------------------------------------------------------------------------- per step, per episode


def step_metrics(scenario: Scenario, prev_state: SimState, state: SimState, info=None, *,
                 config: MetricsConfig = MetricsConfig()) -> dict[str, jax.Array]:
    """Metrics of one transition, usable as `rollout(..., extras_fn=step_metrics)`.

    Ego entries are scalars `[]`: ego_valid, ego_overlap, ego_offroad, ego_log_divergence,
    ego_log_valid, ego_infeasible, ego_route_s, ego_route_s_prev, ego_route_lateral,
    ego_off_route, ego_wrong_way, ego_red_light, ego_comfortable, ego_lon_accel,
    ego_lat_accel, ego_jerk, ego_ttc. Per-object entries `[N]` depending on `config`:
    overlap, offroad, red_light, log_divergence, log_valid, valid.
    """
    del info
    with jax.named_scope("metrics.step"):
        ego = scenario.object_metadata.sdc_index
        cur, prev = state.current, prev_state.current
        e, e_prev = take_object(cur, ego), take_object(prev, ego)
        rm = scenario.roadmap
        out: dict[str, jax.Array] = {"ego_valid": e.valid, "valid": cur.valid}
        if config.per_object_overlap:
            ov = overlap(cur)
            out["overlap"] = ov
            out["ego_overlap"] = ov[ego]
        else:
            out["ego_overlap"] = ego_overlap(cur, ego)
        if config.per_object_offroad:
            off = offroad(cur, rm)
            out["offroad"] = off
            out["ego_offroad"] = off[ego]
        else:
            out["ego_offroad"] = ego_offroad(cur, rm, ego, config.edge_cull)
        log_state = trajectory_at(scenario.log_trajectory, state.timestep)
        if config.per_object_log_divergence:
            div, div_valid = log_divergence(cur, log_state)
            out["log_divergence"], out["log_valid"] = div, div_valid
            out["ego_log_divergence"], out["ego_log_valid"] = div[ego], div_valid[ego]
        else:
            div, div_valid = log_divergence(e, take_object(log_state, ego))
            out["ego_log_divergence"], out["ego_log_valid"] = div, div_valid
        out["ego_infeasible"] = kinematic_infeasibility(e_prev, e)
        xy = jnp.stack([e.x, e.y])
        s, lat = route_progress(xy, scenario.route)
        s_prev, _ = route_progress(jnp.stack([e_prev.x, e_prev.y]), scenario.route)
        has_route = jnp.any(scenario.route.valid)
        out["ego_route_s"], out["ego_route_s_prev"], out["ego_route_lateral"] = s, s_prev, lat
        out["ego_off_route"] = e.valid & has_route & (lat > OFF_ROUTE_DISTANCE)
        out["ego_wrong_way"] = wrong_way(e, rm)
        if config.per_object_red_light:
            rl = red_light_crossing(scenario, prev, cur, state.timestep)
            out["red_light"] = rl
            out["ego_red_light"] = rl[ego]
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

    `extras` defaults to `rollout_out.extras`. Returns collision, offroad, red_light,
    off_route, wrong_way, infeasible (any valid step, float 0/1), failure (collision or
    offroad or red light), progress (m along the route), log_progress, progress_ratio,
    ade, fde (ego log divergence), comfort (fraction of comfortable steps), ttc_min,
    score (see the module docstring); and, when per-object overlap was computed,
    object_collision `[N]`.
    """
    with jax.named_scope("metrics.episode"):
        x = rollout_out.extras if extras is None else extras
        valid = x["ego_valid"]
        f = lambda b: jnp.any(b & valid).astype(jnp.float32)
        out = {k: f(x[f"ego_{k}"]) for k in ("overlap", "offroad", "red_light", "off_route", "wrong_way",
                                                 "infeasible")}
        out["collision"] = out.pop("overlap")
        out["failure"] = jnp.maximum(jnp.maximum(out["collision"], out["offroad"]), out["red_light"])
        progress = jnp.sum(jnp.where(valid, x["ego_route_s"] - x["ego_route_s_prev"], 0.0))
        # The log's progress over the same steps, from the log at the step before the first.
        ego = scenario.object_metadata.sdc_index
        first = rollout_out.timesteps[0] - 1
        log0 = take_object(trajectory_at(scenario.log_trajectory, first), ego)
        log_xy = jnp.stack([rollout_out.log_states.x[:, ego], rollout_out.log_states.y[:, ego]], -1)  # [H, 2]
        log_valid = rollout_out.log_states.valid[:, ego]
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
        return out
