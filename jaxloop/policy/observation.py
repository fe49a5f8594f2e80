"""Ego-centric, fixed-size, masked policy features from `(scenario, SimState, observer)`.

Everything is expressed in the frame of the observer object (its current position and
heading), so one policy can drive any object: `jax.vmap(features, in_axes=(None, None, 0))`
over observer indices gives every controlled object its own view.

Tokens (each with a `valid` mask):

- ego: the observer's own history `[K]` (relative pose, velocity, valid) and box size, and
  with `ObsConfig.target_speed` its target speed: its largest valid logged speed (what the
  IDM along a logged path takes as its desired speed, `jaxloop.sim.agents.idm_step`);
- objects: the `num_objects` nearest other valid objects at the current step
  (relative pose, velocity, size, type one-hot);
- lanes: the `num_lanes` nearest lane polylines, subsampled to `lane_points` points
  (position + unit direction per point);
- edges: the `num_edges` nearest road-edge segments (start, end);
- lights: the `num_lights` nearest valid traffic lights whose lane is one of the
  selected lanes (or with an unknown lane), stop point + state one-hot;
- route: `route_points` waypoints ahead of the observer's projection on the route, at
  `route_spacing` metres of arc length.

Distances are divided by `position_scale` and velocities by `velocity_scale`, so the
features of a typical scene are O(1). `flatten(features)` is the MLP's input vector.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from jaxloop.sim.agents import max_logged_speed
from jaxloop.sim.datatypes import Scenario, SimState, at_step
from jaxloop.sim.geometry import project_to_polyline, rotate, to_local

NUM_OBJECT_TYPES = 5  # unset, vehicle, pedestrian, cyclist, other
NUM_LIGHT_STATES = 9  # TL_UNKNOWN .. TL_FLASHING_CAUTION


BOX_SCALE = 5.0  # metres per feature unit of a box's length and width (ego and object tokens)

@dataclasses.dataclass(frozen=True)
class ObsConfig:
    """Sizes of the observation (static: they decide the shapes)."""

    history_length: int = 5  # K states of every object kept and observed (current included)
    num_objects: int = 8  # nearest other objects
    num_lanes: int = 6  # nearest lane polylines
    lane_points: int = 8  # points kept per lane (uniform subsample of the compiled Q points)
    num_edges: int = 8  # nearest road-edge segments
    num_lights: int = 2  # nearest relevant traffic lights
    route_points: int = 6  # route waypoints ahead
    route_spacing: float = 5.0  # metres of arc length between route waypoints
    max_distance: float = 80.0  # objects / lights farther than this are masked out
    position_scale: float = 20.0  # metres per feature unit (box sizes: BOX_SCALE)
    velocity_scale: float = 10.0  # m/s per feature unit
    # Append the observer's target speed (its largest valid logged speed / velocity_scale) to the ego token:
    # the route's speed, as the route is its path (needed by `ModelConfig.accel_prior="idm"`).
    target_speed: bool = False

    def __post_init__(self):
        for name in ("history_length", "num_objects", "num_lanes", "lane_points", "num_edges", "num_lights", "route_points"):
            if getattr(self, name) < 1:
                raise ValueError(f"ObsConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("route_spacing", "max_distance", "position_scale", "velocity_scale"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ObsConfig.{name} must be positive, got {getattr(self, name)}")

    # Per-token feature widths.
    def ego_dim(self, history_length: int | None = None) -> int:
        return (self.history_length if history_length is None else history_length) * 7 + 2 + int(self.target_speed)

    @property
    def object_dim(self) -> int:
        return 8 + NUM_OBJECT_TYPES

    @property
    def lane_dim(self) -> int:
        return self.lane_points * 5

    @property
    def edge_dim(self) -> int:
        return 4

    @property
    def light_dim(self) -> int:
        return 2 + NUM_LIGHT_STATES

    @property
    def route_dim(self) -> int:
        return 3


@struct.dataclass
class Features:
    """Policy input for one observer (leading batch axes added by vmap)."""

    ego: jax.Array  # [De] observer history (K x (x, y, cos, sin, vx, vy, valid)) + (length, width) [+ target speed]
    objects: jax.Array  # [O, Do] nearest objects
    objects_valid: jax.Array  # [O] bool
    lanes: jax.Array  # [M, Q' * 5] lane points (x, y, dir_x, dir_y, valid) flattened per lane
    lanes_valid: jax.Array  # [M] bool
    edges: jax.Array  # [E', 4] road-edge segments (start, end)
    edges_valid: jax.Array  # [E'] bool
    lights: jax.Array  # [L', 2 + 9] stop point + state one-hot
    lights_valid: jax.Array  # [L'] bool
    route: jax.Array  # [W, 3] waypoints (x, y, valid)
    route_valid: jax.Array  # [W] bool


def _nearest(dist: jax.Array, valid: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Indices `[k]` of the k smallest valid distances and their validity (padded when fewer exist)."""
    n = dist.shape[-1]
    score = jnp.where(valid, -dist, -jnp.inf)
    kk = min(k, n)
    _, idx = jax.lax.top_k(score, kk)
    ok = jnp.take(valid, idx)
    if kk < k:
        idx = jnp.concatenate([idx, jnp.zeros((k - kk,), idx.dtype)])
        ok = jnp.concatenate([ok, jnp.zeros((k - kk,), bool)])
    return idx, ok


def _gather(values: jax.Array, idx: jax.Array) -> jax.Array:
    """`values[idx]` along the leading axis as a one-hot contraction.

    Dense on purpose: the backward pass of a gather is a scatter-add, which is far slower
    than a small matmul on CPU and dominates the cost of differentiating a rollout.
    """
    onehot = jax.nn.one_hot(idx, values.shape[0], dtype=values.dtype)
    return jnp.tensordot(onehot, values, axes=((-1,), (0,)))


def _subsample_indices(num: int, keep: int) -> jax.Array:
    return jnp.round(jnp.linspace(0, num - 1, keep)).astype(jnp.int32)


def route_waypoints(scenario: Scenario, point: jax.Array, num_points: int, spacing: float) -> tuple[jax.Array, jax.Array]:
    """Global route points `[W, 2]` at `spacing` m of arc length ahead of `point`'s projection, and validity `[W]`.

    Waypoints past the end of the route are invalid. The route's valid points, in order,
    are the polyline (arc length non-decreasing along them); invalid points anywhere (a
    padded suffix, the gaps of a logged path) are skipped, never interpolated toward.
    """
    route = jax.tree.map(jnp.asarray, scenario.route)
    s0, _, _ = project_to_polyline(point, route.xy, route.arc_length, route.valid)
    targets = s0 + spacing * jnp.arange(1, num_points + 1, dtype=jnp.float32)
    last = jnp.max(jnp.where(route.valid, route.arc_length, -jnp.inf))
    # Each target arc length lies between the last valid point at or before it (i) and the next valid one (j).
    idx = jnp.arange(route.xy.shape[0])
    first = jnp.argmax(route.valid)
    before = route.valid[None, :] & (route.arc_length[None, :] <= targets[:, None])  # [W, R]
    i = jnp.maximum(jnp.max(jnp.where(before, idx, -1), -1), first)
    after = route.valid[None, :] & (idx[None, :] > i[:, None])
    j = jnp.min(jnp.where(after, idx, route.xy.shape[0]), -1)
    j = jnp.where(j < route.xy.shape[0], j, i)  # past the last valid point: hold it
    a0, a1 = route.arc_length[i], route.arc_length[j]
    frac = jnp.clip((targets - a0) / jnp.maximum(a1 - a0, 1e-6), 0.0, 1.0)
    xy = route.xy[i] + frac[:, None] * (route.xy[j] - route.xy[i])
    valid = (targets <= last) & jnp.any(route.valid)
    return xy, valid


def features(scenario: Scenario, state: SimState, observer: jax.Array | int, config: ObsConfig) -> Features:
    """Features of the scene seen by object `observer` (a traced or static index) at `state`."""
    with jax.named_scope("policy.features"):
        observer = jnp.asarray(observer, jnp.int32)
        scenario, state = jax.tree.map(jnp.asarray, (scenario, state))  # host numpy in, traced indices below
        cur = state.current
        origin = jnp.stack([_gather(cur.x, observer), _gather(cur.y, observer)])
        yaw0 = _gather(cur.yaw, observer)
        ps, vs = config.position_scale, config.velocity_scale

        # Ego: own history in the current frame.
        hist = state.history
        own = lambda a: _gather(a, observer)  # [N, K] -> [K]
        hxy = to_local(jnp.stack([own(hist.x), own(hist.y)], -1), origin, yaw0)  # [K, 2]
        hyaw = own(hist.yaw) - yaw0
        hvel = rotate(jnp.stack([own(hist.vel_x), own(hist.vel_y)], -1), -yaw0)
        hvalid = hist.valid[observer]
        ego_hist = jnp.concatenate([hxy / ps, jnp.cos(hyaw)[:, None], jnp.sin(hyaw)[:, None], hvel / vs,
                                    hvalid[:, None].astype(jnp.float32)], -1)
        ego_hist = jnp.where(hvalid[:, None], ego_hist, 0.0)
        ego = jnp.concatenate([ego_hist.reshape(-1), jnp.stack([own(cur.length), own(cur.width)]) / BOX_SCALE])
        if config.target_speed:
            target = _gather(max_logged_speed(scenario.log_trajectory), observer)  # [N] first, then the observer's
            ego = jnp.concatenate([ego, target[None] / vs])

        # Nearest other objects.
        num_all = cur.x.shape[-1]
        obj_xy = to_local(cur.xy, origin, yaw0)  # [N, 2]
        obj_dist = jnp.linalg.norm(obj_xy, axis=-1)
        others = cur.valid & (jnp.arange(num_all) != observer) & (obj_dist < config.max_distance)
        oidx, ovalid = _nearest(obj_dist, others, config.num_objects)
        oyaw = _gather(cur.yaw, oidx) - yaw0
        ovel = rotate(jnp.stack([_gather(cur.vel_x, oidx), _gather(cur.vel_y, oidx)], -1), -yaw0)
        otype = jax.nn.one_hot(jnp.clip(scenario.object_metadata.object_types[oidx], 0, NUM_OBJECT_TYPES - 1),
                               NUM_OBJECT_TYPES)
        objects = jnp.concatenate([_gather(obj_xy, oidx) / ps, jnp.cos(oyaw)[:, None], jnp.sin(oyaw)[:, None],
                                   ovel / vs, jnp.stack([_gather(cur.length, oidx), _gather(cur.width, oidx)], -1) / BOX_SCALE,
                                   otype], -1)
        objects = jnp.where(ovalid[:, None], objects, 0.0)

        # Nearest lanes, subsampled.
        rm = scenario.roadmap
        lane_local = to_local(rm.lane_xy, origin, yaw0)  # [P, Q, 2]
        lane_pt_dist = jnp.where(rm.lane_valid, jnp.linalg.norm(lane_local, axis=-1), jnp.inf)
        lane_dist = jnp.min(lane_pt_dist, axis=-1)  # [P]
        lidx, lvalid = _nearest(lane_dist, jnp.any(rm.lane_valid, -1), config.num_lanes)
        sub = _subsample_indices(rm.lane_xy.shape[-2], config.lane_points)
        lxy = _gather(lane_local[:, sub], lidx)  # [M, Q', 2]
        ldir = rotate(rm.lane_dir[lidx][:, sub], -yaw0)
        lpv = rm.lane_valid[lidx][:, sub] & lvalid[:, None]
        lanes = jnp.concatenate([lxy / ps, ldir, lpv[..., None].astype(jnp.float32)], -1)
        lanes = jnp.where(lpv[..., None], lanes, 0.0).reshape(config.num_lanes, -1)

        # Nearest road-edge segments.
        es = to_local(rm.edge_start, origin, yaw0)
        ee = to_local(rm.edge_end, origin, yaw0)
        seg = ee - es
        t = jnp.clip(jnp.sum(-es * seg, -1) / jnp.maximum(jnp.sum(seg ** 2, -1), 1e-9), 0.0, 1.0)
        edge_dist = jnp.linalg.norm(es + t[:, None] * seg, axis=-1)
        eidx, evalid = _nearest(edge_dist, rm.edge_valid, config.num_edges)
        edges = jnp.where(evalid[:, None], jnp.concatenate([_gather(es, eidx), _gather(ee, eidx)], -1) / ps, 0.0)

        # Traffic lights governing the selected lanes (or with an unknown lane) near the observer.
        tl = scenario.traffic_lights
        l_state, l_lane, l_valid = (at_step(a, state.timestep) for a in (tl.state, tl.lane_ids, tl.valid))
        l_xy = to_local(jnp.stack([at_step(tl.x, state.timestep), at_step(tl.y, state.timestep)], -1), origin, yaw0)
        l_dist = jnp.linalg.norm(l_xy, axis=-1)
        near_lane_ids = jnp.where(lvalid, rm.lane_ids[lidx], -2)
        governs = jnp.any(l_lane[:, None] == near_lane_ids[None, :], -1) | (l_lane < 0)
        tidx, tvalid = _nearest(l_dist, l_valid & governs & (l_dist < config.max_distance), config.num_lights)
        onehot = jax.nn.one_hot(jnp.clip(l_state[tidx], 0, NUM_LIGHT_STATES - 1), NUM_LIGHT_STATES)
        lights = jnp.where(tvalid[:, None], jnp.concatenate([_gather(l_xy, tidx) / ps, onehot], -1), 0.0)

        # Route waypoints ahead.
        rxy, rvalid = route_waypoints(scenario, origin, config.route_points, config.route_spacing)
        rloc = to_local(rxy, origin, yaw0) / ps
        route = jnp.where(rvalid[:, None], jnp.concatenate([rloc, rvalid[:, None].astype(jnp.float32)], -1), 0.0)

        return Features(ego=ego, objects=objects, objects_valid=ovalid, lanes=lanes, lanes_valid=lvalid,
                        edges=edges, edges_valid=evalid, lights=lights, lights_valid=tvalid, route=route,
                        route_valid=rvalid)


def flatten(feats: Features) -> jax.Array:
    """The flat vector `[..., D]` of a `Features` (masked tokens are already zero; masks appended)."""
    batch = feats.ego.shape[:-1]
    parts = [feats.ego, feats.objects, feats.objects_valid, feats.lanes, feats.lanes_valid, feats.edges,
             feats.edges_valid, feats.lights, feats.lights_valid, feats.route]
    return jnp.concatenate([p.reshape(*batch, -1).astype(jnp.float32) for p in parts], -1)


def scale_target_speed(feats: Features, factor: jax.Array, config: ObsConfig) -> Features:
    """`feats` `[..., ...]` with the observer's target speed (`ObsConfig.target_speed`, the last ego entry)
    multiplied by `factor` `[...]`: a driver who wants to go faster or slower than its log's largest speed."""
    if not config.target_speed:
        raise ValueError("scale_target_speed: the observation has no target speed (ObsConfig.target_speed=False)")
    return feats.replace(ego=feats.ego.at[..., -1].multiply(factor))


def flat_dim(config: ObsConfig, history_length: int | None = None) -> int:
    """Length of `flatten(features(...))` (history length: the config's unless given)."""
    c = config
    return (c.ego_dim(history_length) + c.num_objects * (c.object_dim + 1) + c.num_lanes * (c.lane_dim + 1)
            + c.num_edges * (c.edge_dim + 1) + c.num_lights * (c.light_dim + 1) + c.route_points * c.route_dim)


def observer_features(scenario: Scenario, state: SimState, observers: jax.Array, config: ObsConfig) -> Features:
    """Features `[N_obs, ...]` for several observers at once (one policy driving many objects)."""
    return jax.vmap(features, in_axes=(None, None, 0, None))(scenario, state, observers, config)


def unflatten(flat: jax.Array, config: ObsConfig, history_length: int | None = None) -> Features:
    """Inverse of `flatten`: `Features` from flat vectors `[..., D]` (masks read back as `> 0.5`)."""
    c = config
    batch = flat.shape[:-1]
    sizes = [("ego", (c.ego_dim(history_length),)), ("objects", (c.num_objects, c.object_dim)),
             ("objects_valid", (c.num_objects,)), ("lanes", (c.num_lanes, c.lane_dim)),
             ("lanes_valid", (c.num_lanes,)), ("edges", (c.num_edges, c.edge_dim)), ("edges_valid", (c.num_edges,)),
             ("lights", (c.num_lights, c.light_dim)), ("lights_valid", (c.num_lights,)),
             ("route", (c.route_points, c.route_dim))]
    expected = flat_dim(config, history_length)
    if flat.shape[-1] != expected:
        raise ValueError(f"unflatten: expected a feature vector of length {expected} for this ObsConfig, "
                         f"got {flat.shape[-1]}")
    out, start = {}, 0
    for name, shape in sizes:
        size = 1
        for s in shape:
            size *= s
        part = flat[..., start:start + size].reshape(*batch, *shape)
        out[name] = part > 0.5 if name.endswith("_valid") else part
        start += size
    out["route_valid"] = out["route"][..., 2] > 0.5
    return Features(**out)
