"""Per-object, per-step realism features of a trajectory set (logged or simulated), WOSAC-style.

The features and their definitions follow the Waymo Open Sim Agents Challenge (WOSAC)
realism metrics: Montali et al., "The Waymo Open Sim Agents Challenge", NeurIPS 2023
Datasets and Benchmarks (arXiv:2305.12032), and the feature definitions published with
the challenge (waymo-open-dataset, `sim_agents_metrics`: metric features, trajectory,
interaction and map features; the 2025 challenge configuration adds the traffic-light
violation). The code here is written from those definitions; it is not the official
implementation and its numbers are not official WOSAC scores.

All features are computed on the full timeline (the logged history, then the H
simulated or logged future steps) and returned for the future steps only, for the
evaluated objects `[E]` (see `evaluated_objects`):

kinematic (central differences at dt = 0.1 s, so step t reads t - 1 and t + 1):
- linear_speed: |p(t+1) - p(t-1)| / (2 dt), m/s; valid where both neighbours are.
- linear_acceleration: (v(t+1) - v(t-1)) / (2 dt), m/s²; valid where both speeds are.
- angular_speed: wrap(yaw(t+1) - yaw(t-1)) / 2 / dt, rad/s.
- angular_acceleration: wrap(w(t+1) - w(t-1)) / 2 / dt with w the per-step heading
  change above, rad/s².
interactive (against every other object of the scene valid at that step):
- distance_to_nearest_object: signed distance between boxes with rounded corners
  (corner radius 0.7 * min(length, width) / 2; negative = penetration), m.
- collision: distance_to_nearest_object < 0.
- time_to_collision: with the object ahead it follows (centre ahead of its front, lateral
  overlap of the boxes, heading within 75 degrees, or within 10 degrees when the lateral
  overlap is under 0.5 m): gap / (own speed - its speed) when closing, capped at 5 s, and
  5 s when nothing is followed or it is not closing. Speeds are the linear_speed above.
map-based:
- distance_to_road_edge: the largest signed distance of the four box corners to the
  nearest road edge (positive = off the road; `jaxloop.sim.metrics.corner_road_distance`), m.
- offroad: distance_to_road_edge > 0.
- traffic_light_violation: the front crossed a red stop line at that step
  (`jaxloop.sim.metrics.red_light_crossing`).

Objects that are not valid at the current step (not simulated by any agent model, as in
WOSAC) are left out of the interactive features of the log and of the rollouts alike.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxloop.sim import geometry as geo
from jaxloop.sim import metrics
from jaxloop.sim.metrics.boxes import _separation  # closed-form separating-axis gap of box parameters
from jaxloop.sim.metrics.road import _segment_d2  # squared point-segment distances
from jaxloop.sim.datatypes import DT, ObjectState, Scenario

CORNER_ROUNDING_FACTOR = 0.7
TTC_MAX_HEADING_DIFF = math.radians(75.0)
TTC_MAX_HEADING_DIFF_SMALL_OVERLAP = math.radians(10.0)
TTC_SMALL_OVERLAP = 0.5  # m
MAX_TIME_TO_COLLISION = 5.0  # s
FAR_DISTANCE = 1e3  # m: no other object at that step
NEAREST_CANDIDATES = 4  # exact rounded-box distances are computed for the 4 nearest by the SAT bound
DEFAULT_MAX_EVALUATED = 9  # the SDC and up to 8 tracks to predict (WOMD lists at most 8)
EDGE_CANDIDATES = 32  # road-edge segments nearest to a box centre that its corners are measured against
FALLBACK_EVALUATED = 8  # evaluated objects of a scene that lists no tracks to predict

FEATURE_NAMES = ("linear_speed", "linear_acceleration", "angular_speed", "angular_acceleration",
                 "distance_to_nearest_object", "collision", "time_to_collision", "distance_to_road_edge",
                 "offroad", "traffic_light_violation")


@struct.dataclass
class Poses:
    """Object poses over a timeline: every field `[N, T]` (the logged history followed by the future)."""

    x: jax.Array
    y: jax.Array
    yaw: jax.Array
    valid: jax.Array  # bool


@struct.dataclass
class Features:
    """Features of the evaluated objects over the future: every field `[E, H]` (bools for the indicators)."""

    linear_speed: jax.Array
    linear_acceleration: jax.Array
    angular_speed: jax.Array
    angular_acceleration: jax.Array
    distance_to_nearest_object: jax.Array
    collision: jax.Array
    time_to_collision: jax.Array
    distance_to_road_edge: jax.Array
    offroad: jax.Array
    traffic_light_violation: jax.Array
    valid: jax.Array  # [E, H] the object is valid at the step
    speed_valid: jax.Array  # [E, H] both neighbours of the step valid
    accel_valid: jax.Array  # [E, H] both neighbouring speeds valid


def evaluated_objects(scenario: Scenario, init_steps: int, max_evaluated: int = DEFAULT_MAX_EVALUATED
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Indices `[E]` (E = `max_evaluated`) and validity `[E]` of the objects a scene is scored on (host numpy).

    As in WOSAC: the SDC and the tracks to predict (`is_modeled`) valid at the current step
    (`init_steps - 1`). A scene that lists no track to predict (GPUDrive JSON files without
    metadata) is scored on the SDC and the objects nearest to it valid at the current step,
    `FALLBACK_EVALUATED` in all. The SDC comes first; unused slots repeat it and are invalid.
    """
    meta, log = scenario.object_metadata, scenario.log_trajectory
    t0 = init_steps - 1
    valid0 = np.asarray(log.valid)[:, t0]
    sdc = int(np.argmax(np.asarray(meta.is_sdc)))
    modeled = np.asarray(meta.is_modeled) & valid0
    modeled[sdc] = False
    if modeled.any():
        others = list(np.flatnonzero(modeled))
    else:
        x, y = np.asarray(log.x)[:, t0], np.asarray(log.y)[:, t0]
        dist = np.hypot(x - x[sdc], y - y[sdc])
        dist = np.where(valid0, dist, np.inf)
        dist[sdc] = np.inf
        order = [int(i) for i in np.argsort(dist, kind="stable") if np.isfinite(dist[i])]
        others = order[:FALLBACK_EVALUATED - 1]
    chosen = ([sdc] if valid0[sdc] else []) + others
    chosen = chosen[:max_evaluated]
    index = np.full((max_evaluated,), sdc, np.int32)
    index[:len(chosen)] = chosen
    mask = np.zeros((max_evaluated,), bool)
    mask[:len(chosen)] = True
    return index, mask


def _central_diff(a: jax.Array) -> jax.Array:
    """`(a[t+1] - a[t-1]) / 2` over the last axis, zero at both ends `[..., T]`."""
    d = (a[..., 2:] - a[..., :-2]) / 2.0
    pad = jnp.zeros_like(a[..., :1])
    return jnp.concatenate([pad, d, pad], -1)


def _central_valid(v: jax.Array) -> jax.Array:
    pad = jnp.zeros_like(v[..., :1])
    return jnp.concatenate([pad, v[..., 2:] & v[..., :-2], pad], -1)


def kinematics(poses: Poses, dt: float = DT) -> tuple[jax.Array, ...]:
    """Linear speed, linear acceleration, angular speed, angular acceleration `[N, T]` and the
    speed / acceleration validity `[N, T]` of `poses` (central differences; see the module docstring)."""
    dx, dy = _central_diff(poses.x), _central_diff(poses.y)
    speed = jnp.sqrt(dx * dx + dy * dy + 1e-12) / dt
    accel = _central_diff(speed) / dt
    # wrap(yaw(t+1) - yaw(t-1)) / 2: the heading change per step, wrapped on the full difference.
    dh_step = geo.wrap_angle(_central_diff(poses.yaw) * 2.0) / 2.0
    d2h_step = geo.wrap_angle(_central_diff(dh_step) * 2.0) / 2.0
    speed_valid = _central_valid(poses.valid)
    accel_valid = _central_valid(speed_valid)
    return speed, accel, dh_step / dt, d2h_step / dt ** 2, speed_valid, accel_valid


def _shrunk(length: jax.Array, width: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Half length, half width of the inner box and the corner radius of a rounded box."""
    r = jnp.minimum(length, width) * CORNER_ROUNDING_FACTOR / 2.0
    return length / 2 - r, width / 2 - r, r


def _point_box_distance(px, py, bx, by, c, s, hl, hw):
    """Distance of points to (filled) oriented boxes, 0 inside (broadcast, elementwise)."""
    dx, dy = px - bx, py - by
    lx, ly = jnp.abs(dx * c + dy * s), jnp.abs(dy * c - dx * s)
    ex, ey = jnp.maximum(lx - hl, 0.0), jnp.maximum(ly - hw, 0.0)
    return jnp.sqrt(ex * ex + ey * ey + 1e-12)


def _box_distance(a: tuple, b: tuple) -> jax.Array:
    """Signed distance between oriented boxes a, b = (x, y, cos, sin, half_l, half_w) (broadcast).

    Negative (the separating-axis penetration depth) when they overlap; otherwise the
    exact Euclidean distance, the smallest of the corner-to-box distances both ways
    (for two convex boxes apart, the nearest points include a corner of one of them).
    """
    xa, ya, ca, sa, hla, hwa = a
    xb, yb, cb, sb, hlb, hwb = b
    sep = _separation(xa, ya, ca, sa, hla, hwa, xb, yb, cb, sb, hlb, hwb)
    best = jnp.inf
    for sl, sw in ((1.0, 1.0), (1.0, -1.0), (-1.0, 1.0), (-1.0, -1.0)):
        pxa = xa + sl * hla * ca - sw * hwa * sa
        pya = ya + sl * hla * sa + sw * hwa * ca
        pxb = xb + sl * hlb * cb - sw * hwb * sb
        pyb = yb + sl * hlb * sb + sw * hwb * cb
        best = jnp.minimum(best, _point_box_distance(pxa, pya, xb, yb, cb, sb, hlb, hwb))
        best = jnp.minimum(best, _point_box_distance(pxb, pyb, xa, ya, ca, sa, hla, hwa))
    return jnp.where(sep < 0.0, sep, best)


def nearest_object_distance(x, y, yaw, length, width, valid, index, index_valid) -> jax.Array:
    """Signed distance `[E, T]` of the rounded boxes of objects `index` `[E]` to the nearest other valid one.

    Inputs `[N, T]` (length, width `[N]`). `FAR_DISTANCE` where no other object is valid.
    The exact distance is computed for the `NEAREST_CANDIDATES` objects nearest by the
    separating-axis bound (a lower bound of the box distance, exact between faces).
    """
    n = x.shape[0]
    hl, hw, r = _shrunk(length, width)
    c, s = jnp.cos(yaw), jnp.sin(yaw)
    full = (x, y, c, s, jnp.broadcast_to(hl[:, None], x.shape), jnp.broadcast_to(hw[:, None], x.shape))
    rows = tuple(f[index][:, None] for f in full)  # [E, 1, T]
    cols = tuple(f[None] for f in full)  # [1, N, T]
    sep = _separation(*rows, *cols) - r[index][:, None, None] - r[None, :, None]  # [E, N, T]
    others = valid[None] & valid[index][:, None] & (index[:, None, None] != jnp.arange(n)[None, :, None])
    sep = jnp.where(others, sep, jnp.inf)
    k = min(NEAREST_CANDIDATES, n)
    _, cand = jax.lax.top_k(-jnp.moveaxis(sep, 1, -1), k)  # [E, T, k]
    cand_ok = jnp.take_along_axis(jnp.moveaxis(others, 1, -1), cand, -1)
    pick = lambda f: jnp.take_along_axis(jnp.broadcast_to(jnp.moveaxis(f, 0, -1)[None], cand.shape[:2] + (n,)),
                                         cand, -1)  # [N, T] -> [E, T, k]
    b = tuple(pick(f) for f in full)
    a = tuple(f[index][:, :, None] for f in full)
    d = _box_distance(a, b) - r[index][:, None, None] - r[cand]
    d = jnp.where(cand_ok, d, jnp.inf)
    d = jnp.min(d, -1)
    return jnp.where(jnp.isfinite(d), d, FAR_DISTANCE)


def time_to_collision(x, y, yaw, speed, length, width, valid, index) -> jax.Array:
    """Time-to-collision `[E, T]` of objects `index` with the object each follows (see the module docstring)."""
    n = x.shape[0]
    ex, ey, eyaw, espeed = x[index][:, None], y[index][:, None], yaw[index][:, None], speed[index][:, None]
    el, ew = length[index][:, None, None], width[index][:, None, None]
    c, s = jnp.cos(eyaw), jnp.sin(eyaw)  # [E, 1, T]
    dx, dy = x[None] - ex, y[None] - ey  # [E, N, T]
    lon, lat = dx * c + dy * s, dy * c - dx * s
    diff = jnp.abs(geo.wrap_angle(yaw[None] - eyaw))
    cd, sd = jnp.abs(jnp.cos(diff)), jnp.abs(jnp.sin(diff))
    ol, ow = length[None, :, None] / 2, width[None, :, None] / 2
    gap = lon - el / 2 - (ol * cd + ow * sd)
    overlap = jnp.abs(lat) - ew / 2 - (ol * sd + ow * cd)  # < 0: the boxes overlap laterally
    follows = ((gap > 0.0) & (diff <= TTC_MAX_HEADING_DIFF) & (overlap < 0.0)
               & ((overlap < -TTC_SMALL_OVERLAP) | (diff <= TTC_MAX_HEADING_DIFF_SMALL_OVERLAP)))
    follows = follows & valid[None] & valid[index][:, None] & (index[:, None, None] != jnp.arange(n)[None, :, None])
    gap = jnp.where(follows, gap, jnp.inf)
    ahead = jnp.argmin(gap, 1)  # [E, T]
    ahead_gap = jnp.min(gap, 1)
    ahead_speed = jnp.take_along_axis(speed, ahead, 0)  # speed [N, T] at the followed object
    closing = espeed[:, 0] - ahead_speed
    ttc = jnp.where(jnp.isfinite(ahead_gap) & (closing > 0.0),
                    jnp.minimum(ahead_gap / jnp.maximum(closing, 1e-6), MAX_TIME_TO_COLLISION), MAX_TIME_TO_COLLISION)
    return ttc


def road_edge_distance(scenario: Scenario, x, y, yaw, length, width) -> jax.Array:
    """Largest signed corner distance `[E, T]` to the nearest road edge (> 0: off the road) of boxes `[E, T]`.

    Each box's corners are measured against the `EDGE_CANDIDATES` segments nearest to its
    centre (`jaxloop.sim.metrics.signed_edge_distance` on them): a corner lies within half
    a box diagonal of the centre, so its nearest segment is among those.
    """
    rm = scenario.roadmap
    shape = x.shape
    corners = geo.box_corners(x, y, yaw, jnp.broadcast_to(length, shape), jnp.broadcast_to(width, shape))
    k = min(EDGE_CANDIDATES, rm.edge_start.shape[0])
    centres = jnp.stack([x, y], -1).reshape(-1, 2)
    d2, _ = _segment_d2(centres[:, None, 0], centres[:, None, 1], rm.edge_start[None, :, 0],
                                rm.edge_start[None, :, 1], rm.edge_end[None, :, 0], rm.edge_end[None, :, 1])
    _, idx = jax.lax.top_k(-jnp.where(rm.edge_valid[None], d2, jnp.inf), k)  # [E*T, k]

    def one(c, i):
        return metrics.signed_edge_distance(c, rm.edge_start[i], rm.edge_end[i], rm.edge_valid[i])

    d = jax.vmap(one)(corners.reshape(-1, 4, 2), idx)  # [E*T, 4]
    return jnp.max(d, -1).reshape(shape)


def light_violations(scenario: Scenario, x, y, yaw, length, width, valid, start_step: int) -> jax.Array:
    """`[E, H]` bool: the object's front crossed a red stop line into each step of `x` ... `[E, H + 1]`
    (column 0 is the step before the first scored one, at log step `start_step`)."""

    def one(t):
        prev = _state(x[:, t], y[:, t], yaw[:, t], length, width, valid[:, t])
        cur = _state(x[:, t + 1], y[:, t + 1], yaw[:, t + 1], length, width, valid[:, t + 1])
        return metrics.red_light_crossing(scenario, prev, cur, start_step + t + 1)

    return jax.vmap(one, out_axes=1)(jnp.arange(x.shape[1] - 1))


def _state(x, y, yaw, length, width, valid) -> ObjectState:
    z = jnp.zeros_like(x)
    return ObjectState(x=x, y=y, z=z, vel_x=z, vel_y=z, yaw=yaw, length=length, width=width, height=z, valid=valid)


def compute_features(scenario: Scenario, poses: Poses, index: jax.Array, index_valid: jax.Array,
                     in_scene: jax.Array, init_steps: int, dt: float = DT) -> Features:
    """Features `[E, H]` of objects `index` `[E]` (valid `index_valid` `[E]`) over the future of `poses`.

    `poses` `[N, init_steps + H]` holds the logged history followed by the H future
    steps (logged or simulated); `in_scene` `[N]` marks the objects that take part (valid
    at the current step). Box sizes are the log's at the current step.
    """
    t0 = init_steps - 1
    scenario, poses = jax.tree.map(jnp.asarray, (scenario, poses))
    log = scenario.log_trajectory
    length, width = log.length[:, t0], log.width[:, t0]
    valid = poses.valid & in_scene[:, None]
    poses = poses.replace(valid=valid)
    speed, accel, ang, ang_acc, speed_ok, accel_ok = kinematics(poses, dt)
    future = slice(init_steps, None)
    fut = lambda a: a[index][:, future]
    dist = nearest_object_distance(poses.x, poses.y, poses.yaw, length, width, valid, index, index_valid)[:, future]
    ttc = time_to_collision(poses.x, poses.y, poses.yaw, jnp.where(speed_ok, speed, 0.0), length, width, valid,
                            index)[:, future]
    ex, ey, eyaw = fut(poses.x), fut(poses.y), fut(poses.yaw)
    el, ew = length[index][:, None], width[index][:, None]
    edge = road_edge_distance(scenario, ex, ey, eyaw, el, ew)
    window = slice(t0, None)
    lights = light_violations(scenario, poses.x[index][:, window], poses.y[index][:, window],
                              poses.yaw[index][:, window], length[index], width[index], valid[index][:, window], t0)
    obj_valid = fut(valid) & index_valid[:, None]
    return Features(linear_speed=fut(speed), linear_acceleration=fut(accel), angular_speed=fut(ang),
                    angular_acceleration=fut(ang_acc), distance_to_nearest_object=dist, collision=dist < 0.0,
                    time_to_collision=ttc, distance_to_road_edge=edge, offroad=edge > 0.0,
                    traffic_light_violation=lights, valid=obj_valid, speed_valid=fut(speed_ok) & obj_valid,
                    accel_valid=fut(accel_ok) & obj_valid)


def log_poses(scenario: Scenario, init_steps: int, horizon: int) -> Poses:
    """The logged poses `[N, init_steps + horizon]` of steps 0 ... init_steps + horizon - 1."""
    log = scenario.log_trajectory
    end = init_steps + horizon
    return Poses(x=log.x[:, :end], y=log.y[:, :end], yaw=log.yaw[:, :end], valid=log.valid[:, :end])


def with_future(scenario: Scenario, init_steps: int, future: Poses) -> Poses:
    """The logged history (steps 0 ... init_steps - 1) followed by `future` `[N, H]`."""
    log = scenario.log_trajectory
    hist = lambda a: a[:, :init_steps]
    return Poses(x=jnp.concatenate([hist(log.x), future.x], 1), y=jnp.concatenate([hist(log.y), future.y], 1),
                 yaw=jnp.concatenate([hist(log.yaw), future.yaw], 1),
                 valid=jnp.concatenate([hist(log.valid), future.valid], 1))
