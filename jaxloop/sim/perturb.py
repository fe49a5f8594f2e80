"""Perturbations of an episode: pure hooks on the scenario, the initial state, the agent models or
the policy's inputs, applied inside the jitted, vmapped rollout.

They serve two callers: training augmentation (`jaxloop.train.common.start_episode` draws a
random crosser and a noisy ego start) and the evaluation suite (`jaxloop.eval.perturb.run_suite`
evaluates a policy clean and under each of `default_suite`).

- `ego_noise`: the ego's initial pose and speed get Gaussian noise.
- `agents_idm` / `agents_log`: every non-ego object switches to IDM (reactive) / log replay.
- `speed_scale`: the other agents replay their logs faster or slower (time-warped).
- `add_crosser` / `random_crosser` / `inject_crossing`: a pedestrian or cyclist crosses the
  ego's logged path ahead of it.
- `lane_geometry`: the whole scene (map and logs together) is widened laterally and bent
  into a curve around the ego's start, changing lane width and curvature.
- `observation_noise`: the policy sees other objects' positions with Gaussian noise.
- `action_latency`: the policy acts on the state as it was `steps` steps ago.

Those that read the log from the episode's start take `init_steps` (keyword, no default):
a property of the data source (`formats.init_steps_of`; WOMD 11, AV2 50), never a guess.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from jaxloop.sim import agents as agents_lib
from jaxloop.sim.datatypes import SYNTHETIC_ID, TYPE_CYCLIST, TYPE_PEDESTRIAN, ObjectState, Scenario, SimState
from jaxloop.sim.geometry import polyline_arc_length, rotate, to_global, to_local, wrap_angle
from jaxloop.sim.rollout import PolicyFn


@dataclasses.dataclass(frozen=True)
class Perturbation:
    """A change to an episode (an evaluation perturbation or a training augmentation). Every hook is pure
    and runs inside `vmap`.

    scenario_fn(scenario, key) -> scenario     before reset (map / log changes)
    state_fn(scenario, state, key) -> state    right after reset
    agent_kind_fn(scenario, kind) -> kind      per-object agent models `[N]`
    uses_idm: whether agent_kind_fn may make objects IDM (static)
    policy_fn(policy) -> policy                what the policy sees / when it acts
    params: AgentParams or None                traced agent constants
    """

    name: str
    scenario_fn: Callable[[Scenario, jax.Array], Scenario] | None = None
    state_fn: Callable[[Scenario, SimState, jax.Array], SimState] | None = None
    agent_kind_fn: Callable[[Scenario, jax.Array], jax.Array] | None = None
    uses_idm: bool = False
    policy_fn: Callable[[PolicyFn], PolicyFn] | None = None
    params: agents_lib.AgentParams | None = None
    description: str = ""


# ----------------------------------------------------------------------------- initial state


def ego_noise(pos_std: float = 1.0, yaw_std: float = 0.1, speed_std: float = 1.0) -> Perturbation:
    def state_fn(scenario: Scenario, state: SimState, key: jax.Array) -> SimState:
        ego = scenario.object_metadata.sdc_index
        k1, k2, k3 = jax.random.split(key, 3)
        dxy = pos_std * jax.random.normal(k1, (2,))
        dyaw = yaw_std * jax.random.normal(k2)
        cur = state.current
        speed = jnp.maximum(jnp.hypot(cur.vel_x[ego], cur.vel_y[ego]) + speed_std * jax.random.normal(k3), 0.0)
        yaw = wrap_angle(cur.yaw[ego] + dyaw)
        new = dict(x=cur.x[ego] + dxy[0], y=cur.y[ego] + dxy[1], yaw=yaw, vel_x=speed * jnp.cos(yaw),
                   vel_y=speed * jnp.sin(yaw))
        current = cur.replace(**{f: getattr(cur, f).at[ego].set(v) for f, v in new.items()})
        history = state.history.replace(**{f: getattr(state.history, f).at[ego, -1].set(v) for f, v in new.items()})
        return state.replace(current=current, history=history)

    return Perturbation("ego_noise", state_fn=state_fn,
                        description=f"ego start: position sd {pos_std} m, yaw sd {yaw_std} rad, speed sd {speed_std} m/s")


# ----------------------------------------------------------------------------- agents


def _non_ego_switch(kind_value: int, name: str) -> Perturbation:
    uses_idm = kind_value == agents_lib.AGENT_IDM

    def agent_kind_fn(scenario: Scenario, kind: jax.Array) -> jax.Array:
        switch = (kind != agents_lib.AGENT_POLICY) & ~scenario.object_metadata.is_sdc
        return jnp.where(switch, kind_value, kind)

    return Perturbation(name, agent_kind_fn=agent_kind_fn, uses_idm=uses_idm, description=f"non-ego objects: {name.split('_')[1]}")


def agents_idm() -> Perturbation:
    return _non_ego_switch(agents_lib.AGENT_IDM, "agents_idm")


def agents_log() -> Perturbation:
    return _non_ego_switch(agents_lib.AGENT_LOG, "agents_log")


def speed_scale(scale: float = 1.3, *, init_steps: int) -> Perturbation:
    """Non-ego objects replay their logs `scale` times as fast from the current step on."""

    def scenario_fn(scenario: Scenario, key: jax.Array) -> Scenario:
        del key
        traj = scenario.log_trajectory
        num_steps = traj.num_steps
        t0 = init_steps - 1
        t = jnp.arange(num_steps, dtype=jnp.float32)
        tau = jnp.where(t > t0, t0 + (t - t0) * scale, t)
        lo = jnp.clip(jnp.floor(tau).astype(jnp.int32), 0, num_steps - 1)
        hi = jnp.clip(lo + 1, 0, num_steps - 1)
        w = tau - jnp.floor(tau)
        in_log = tau <= num_steps - 1
        lerp = lambda a: a[:, lo] * (1 - w) + a[:, hi] * w
        yaw = traj.yaw[:, lo] + w * wrap_angle(traj.yaw[:, hi] - traj.yaw[:, lo])
        speed_factor = jnp.where(t > t0, scale, 1.0)
        warped = traj.replace(x=lerp(traj.x), y=lerp(traj.y), z=lerp(traj.z), yaw=wrap_angle(yaw),
                              vel_x=lerp(traj.vel_x) * speed_factor, vel_y=lerp(traj.vel_y) * speed_factor,
                              valid=traj.valid[:, lo] & traj.valid[:, hi] & in_log)
        ego = scenario.object_metadata.is_sdc[:, None]
        new = jax.tree.map(lambda a, b: jnp.where(ego, a, b), traj, warped)
        return scenario.replace(log_trajectory=new)

    return Perturbation(f"speed_scale_{scale:g}", scenario_fn=scenario_fn,
                        params=agents_lib.AgentParams(speed_scale=scale),
                        description=f"other agents {scale:g}x their logged speed")


PEDESTRIAN_SIZE = (0.8, 0.8, 1.8)  # length, width, height (m)
CYCLIST_SIZE = (1.8, 0.8, 1.6)


def add_crosser(scenario: Scenario, key: jax.Array, object_type: int | jax.Array = TYPE_PEDESTRIAN,
                ahead_steps: int | jax.Array = 40, speed: float | jax.Array = 1.0, lead_s: float | jax.Array = 0.5,
                min_distance: float = 20.0, *, init_steps: int, enabled: bool | jax.Array = True) -> Scenario:
    """The scenario with a pedestrian or cyclist crossing the ego's logged path (every
    argument but `min_distance` and `init_steps` may be traced; see `inject_crossing`).

    The crosser takes a padding slot (or the object farthest from the ego) and gets the
    largest object id. With `enabled` False the scenario comes back unchanged.
    """
    traj, meta = scenario.log_trajectory, scenario.object_metadata
    ego = meta.sdc_index
    num_steps = traj.num_steps
    t0 = init_steps - 1
    # The crossing point: where the logged ego is `ahead_steps` after the start, but at
    # least `min_distance` along its path (a slow or waiting ego is not walked into).
    ev = traj.valid[ego]
    step = jnp.where(ev[1:] & ev[:-1], jnp.hypot(jnp.diff(traj.x[ego]), jnp.diff(traj.y[ego])), 0.0)
    s = jnp.concatenate([jnp.zeros(1), jnp.cumsum(step)])
    s = s - s[t0]
    t_nominal = jnp.minimum(t0 + jnp.asarray(ahead_steps, jnp.int32), num_steps - 1)
    steps = jnp.arange(num_steps)
    reached = (steps >= t0) & ev & (s >= jnp.maximum(s[t_nominal], min_distance))
    last_valid = num_steps - 1 - jnp.argmax(ev[::-1])
    at = jnp.where(jnp.any(reached), jnp.argmax(reached), last_valid)
    # When the logged ego gets there (the nominal time if it never does).
    t_cross = jnp.where(jnp.any(reached), at, t_nominal).astype(jnp.float32)
    cx, cy, cyaw = traj.x[ego, at], traj.y[ego, at], traj.yaw[ego, at]
    side = jnp.where(jax.random.bernoulli(key), 1.0, -1.0)
    normal = jnp.stack([-jnp.sin(cyaw), jnp.cos(cyaw)]) * side  # from the path towards the start side
    heading = jnp.arctan2(-normal[1], -normal[0])
    t = jnp.arange(num_steps, dtype=jnp.float32)
    # Standing until t0, then walking across: on the logged path `lead_s` before the logged ego.
    offset = speed * 0.1 * (t_cross - lead_s / 0.1 - jnp.maximum(t, t0))
    xy = jnp.stack([cx, cy]) + offset[:, None] * normal
    moving = t >= t0
    is_ped = jnp.asarray(object_type) == TYPE_PEDESTRIAN
    size = jnp.where(is_ped, jnp.asarray(PEDESTRIAN_SIZE), jnp.asarray(CYCLIST_SIZE))
    # The slot: the first never-valid object, else the one farthest from the ego at t0.
    free = ~meta.is_valid & ~meta.is_sdc
    dist = jnp.hypot(traj.x[:, t0] - traj.x[ego, t0], traj.y[:, t0] - traj.y[ego, t0])
    dist = jnp.where(meta.is_sdc, -1.0, jnp.where(traj.valid[:, t0], dist, 1e9))
    slot = jnp.where(jnp.any(free), jnp.argmax(free), jnp.argmax(dist))
    row = dict(x=xy[:, 0], y=xy[:, 1], z=jnp.zeros(num_steps), yaw=jnp.full(num_steps, heading),
               vel_x=jnp.where(moving, speed * jnp.cos(heading), 0.0),
               vel_y=jnp.where(moving, speed * jnp.sin(heading), 0.0),
               length=jnp.full(num_steps, size[0]), width=jnp.full(num_steps, size[1]),
               height=jnp.full(num_steps, size[2]), valid=jnp.ones(num_steps, bool))
    slot = jnp.where(enabled, slot, traj.x.shape[0])  # out of range: the update is dropped
    put = lambda a, v: jnp.asarray(a).at[slot].set(v.astype(jnp.asarray(a).dtype), mode="drop")
    new_traj = traj.replace(**{f: put(getattr(traj, f), v) for f, v in row.items()})
    new_meta = meta.replace(object_types=put(meta.object_types, jnp.asarray(object_type)),
                            is_valid=put(meta.is_valid, jnp.asarray(True)),
                            ids=put(meta.ids, jnp.asarray(SYNTHETIC_ID, meta.ids.dtype)))
    return scenario.replace(log_trajectory=new_traj, object_metadata=new_meta)


def random_crosser(scenario: Scenario, key: jax.Array, prob: float | jax.Array = 0.5, *,
                   init_steps: int) -> tuple[Scenario, jax.Array]:
    """With probability `prob`, a crosser of random type, side, timing and speed (training
    augmentation): pedestrians at 0.8-1.6 m/s, cyclists at 2-4 m/s, on the path 2.5-6 s
    after the start and 0-1 s before the logged ego. Returns the scenario and whether a
    crosser was added `[]`."""
    k_on, k_type, k_ahead, k_speed, k_lead, k_side = jax.random.split(key, 6)
    is_ped = jax.random.bernoulli(k_type, 0.6)
    u = jax.random.uniform(k_speed)
    enabled = jax.random.bernoulli(k_on, prob)
    out = add_crosser(scenario, k_side, jnp.where(is_ped, TYPE_PEDESTRIAN, TYPE_CYCLIST),
                      ahead_steps=jax.random.randint(k_ahead, (), 25, 61),
                      speed=jnp.where(is_ped, 0.8 + 0.8 * u, 2.0 + 2.0 * u),
                      lead_s=jax.random.uniform(k_lead), init_steps=init_steps, enabled=enabled)
    return out, enabled


def react_to_crosser(scenario: Scenario, kind: jax.Array) -> jax.Array:
    """Agent kinds `[N]` with every non-policy object but the injected crosser IDM."""
    meta = scenario.object_metadata
    switch = (kind != agents_lib.AGENT_POLICY) & ~meta.is_sdc & (meta.ids != SYNTHETIC_ID)
    return jnp.where(switch, agents_lib.AGENT_IDM, kind)


def inject_crossing(object_type: int = TYPE_PEDESTRIAN, ahead_steps: int = 40, speed: float | None = None,
                    lead_s: float | None = None, min_distance: float = 20.0, reactive: bool = True, *,
                    init_steps: int) -> Perturbation:
    """A pedestrian (or cyclist) crosses the ego's logged path at the point the logged ego
    reaches `ahead_steps` steps after the start (or `min_distance` metres along its path,
    whichever is farther), getting there `lead_s` seconds before the logged ego.
    It takes a padding slot (or the object farthest from the ego).

    Log replay of the ego runs into it by construction; a driver that yields to a road
    user in its lane can stop in time: the crosser enters the lane (within ~1.4 m of the
    path) `1.4 / speed + lead_s` seconds before the logged ego arrives, 1.9 s at the
    defaults (slow walker 1.0 m/s, lead 0.5 s; cyclist 2.5 m/s, lead 0.6 s), and stays in
    it for about as long.
    With `reactive`, the other objects are IDM agents, so a follower stops behind a
    yielding ego instead of replaying a log that drives through it.
    """
    speed = speed if speed is not None else (1.0 if object_type == TYPE_PEDESTRIAN else 2.5)
    lead_s = lead_s if lead_s is not None else (0.5 if object_type == TYPE_PEDESTRIAN else 0.6)

    def scenario_fn(scenario: Scenario, key: jax.Array) -> Scenario:
        return add_crosser(scenario, key, object_type, ahead_steps, speed, lead_s, min_distance, init_steps=init_steps)

    name = "inject_pedestrian" if object_type == TYPE_PEDESTRIAN else "inject_cyclist"
    extra = dict(agent_kind_fn=react_to_crosser, uses_idm=True) if reactive else {}
    return Perturbation(name, scenario_fn=scenario_fn, **extra,
                        description=f"{name.split('_')[1]} crossing the ego's path"
                                    + (", other traffic IDM" if reactive else ""))


# ----------------------------------------------------------------------------- geometry


def _warp(local_xy: jax.Array, width_scale: float, curvature: float) -> jax.Array:
    """Widens laterally, then bends the +u axis into an arc of the given curvature (left > 0)."""
    u, v = local_xy[..., 0], local_xy[..., 1] * width_scale
    if curvature == 0.0:
        return jnp.stack([u, v], -1)
    r = 1.0 / curvature
    theta = u / r
    return jnp.stack([(r - v) * jnp.sin(theta), r - (r - v) * jnp.cos(theta)], -1)


def _warp_vector(local_xy: jax.Array, local_vec: jax.Array, width_scale: float, curvature: float) -> jax.Array:
    """The warp's Jacobian at `local_xy` applied to vectors `local_vec` (velocities, tangents)."""
    vu, vv = local_vec[..., 0], local_vec[..., 1] * width_scale
    if curvature == 0.0:
        return jnp.stack([vu, vv], -1)
    r = 1.0 / curvature
    theta = local_xy[..., 0] / r
    v = local_xy[..., 1] * width_scale
    stretch = (r - v) / r
    c, s = jnp.cos(theta), jnp.sin(theta)
    return jnp.stack([stretch * vu * c - vv * s, stretch * vu * s + vv * c], -1)


def lane_geometry(width_scale: float = 1.15, curvature: float = 0.004, *, init_steps: int) -> Perturbation:
    """Warps map and logs together in the ego's start frame: lateral distances times
    `width_scale` (lane width), then the scene bent with `curvature` 1/m."""

    def scenario_fn(scenario: Scenario, key: jax.Array) -> Scenario:
        del key
        traj = scenario.log_trajectory
        ego = scenario.object_metadata.sdc_index
        t0 = init_steps - 1
        origin = jnp.stack([traj.x[ego, t0], traj.y[ego, t0]])
        yaw0 = traj.yaw[ego, t0]

        def points(xy):
            return to_global(_warp(to_local(xy, origin, yaw0), width_scale, curvature), origin, yaw0)

        def vectors(xy, vec):
            local = _warp_vector(to_local(xy, origin, yaw0), rotate(vec, -yaw0), width_scale, curvature)
            return rotate(local, yaw0)

        xy = jnp.stack([traj.x, traj.y], -1)
        new_xy = points(xy)
        vel = vectors(xy, jnp.stack([traj.vel_x, traj.vel_y], -1))
        heading = vectors(xy, jnp.stack([jnp.cos(traj.yaw), jnp.sin(traj.yaw)], -1))
        keep = traj.valid
        new_traj = traj.replace(x=jnp.where(keep, new_xy[..., 0], traj.x), y=jnp.where(keep, new_xy[..., 1], traj.y),
                                vel_x=jnp.where(keep, vel[..., 0], traj.vel_x),
                                vel_y=jnp.where(keep, vel[..., 1], traj.vel_y),
                                yaw=jnp.where(keep, jnp.arctan2(heading[..., 1], heading[..., 0]), traj.yaw))
        rm = scenario.roadmap
        lane_dir = vectors(rm.lane_xy, rm.lane_dir)
        lane_dir = lane_dir / jnp.maximum(jnp.linalg.norm(lane_dir, axis=-1, keepdims=True), 1e-6)
        new_rm = rm.replace(lane_xy=points(rm.lane_xy), lane_dir=lane_dir, edge_start=points(rm.edge_start),
                            edge_end=points(rm.edge_end), crosswalk_xy=points(rm.crosswalk_xy),
                            stop_sign_xy=points(rm.stop_sign_xy))
        tl = scenario.traffic_lights
        light_xy = points(jnp.stack([tl.x, tl.y], -1))
        new_tl = tl.replace(x=light_xy[..., 0], y=light_xy[..., 1])
        route = scenario.route
        route_xy = points(route.xy)
        new_route = route.replace(xy=route_xy, arc_length=polyline_arc_length(route_xy, route.valid))
        return scenario.replace(log_trajectory=new_traj, roadmap=new_rm, traffic_lights=new_tl, route=new_route)

    return Perturbation(f"lane_geometry_w{width_scale:g}_k{curvature:g}", scenario_fn=scenario_fn,
                        description=f"lanes {width_scale:g}x as wide, scene bent to curvature {curvature:g} 1/m")


# ----------------------------------------------------------------------------- what the policy sees


def observation_noise(std: float = 0.5) -> Perturbation:
    def wrap(policy: PolicyFn) -> PolicyFn:
        def noisy(scenario: Scenario, state: SimState, key: jax.Array):
            key_noise, key_policy = jax.random.split(key)
            others = ~scenario.object_metadata.is_sdc
            kc, kh = jax.random.split(key_noise)

            def add(obj: ObjectState, k: jax.Array) -> ObjectState:
                n = std * jax.random.normal(k, obj.x.shape + (2,))
                mask = others.reshape(others.shape + (1,) * (obj.x.ndim - 1))
                return obj.replace(x=obj.x + jnp.where(mask, n[..., 0], 0.0), y=obj.y + jnp.where(mask, n[..., 1], 0.0))

            seen = state.replace(current=add(state.current, kc), history=add(state.history, kh))
            return policy(scenario, seen, key_policy)
        return noisy

    return Perturbation(f"observation_noise_{std:g}", policy_fn=wrap,
                        description=f"other objects' positions seen with {std:g} m noise")


def action_latency(steps: int = 2) -> Perturbation:
    if steps < 1:
        raise ValueError(f"action_latency: steps must be >= 1, got {steps}")

    def wrap(policy: PolicyFn) -> PolicyFn:
        def delayed(scenario: Scenario, state: SimState, key: jax.Array):
            k = state.history.x.shape[-1]
            lag = min(steps, k - 1)
            pick = lambda a: a[..., k - 1 - lag]
            shift = lambda a: jnp.concatenate([jnp.repeat(a[..., :1], lag, axis=-1), a[..., : k - lag]], -1)
            stale = state.replace(timestep=state.timestep - lag, current=jax.tree.map(pick, state.history),
                                  history=jax.tree.map(shift, state.history))
            return policy(scenario, stale, key)
        return delayed

    return Perturbation(f"action_latency_{steps}", policy_fn=wrap,
                        description=f"the policy acts on the state of {steps} steps ago")


def default_suite(init_steps: int) -> list[Perturbation]:
    """The evaluation suite for scenarios whose episodes start after `init_steps` log steps."""
    return [ego_noise(), agents_idm(), speed_scale(1.3, init_steps=init_steps),
            inject_crossing(TYPE_PEDESTRIAN, init_steps=init_steps),
            inject_crossing(TYPE_CYCLIST, init_steps=init_steps), lane_geometry(init_steps=init_steps),
            observation_noise(), action_latency()]
