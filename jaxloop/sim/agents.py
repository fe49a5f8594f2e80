"""Behaviour of the objects the policy does not drive.

Each object has an agent kind (`SimState.agent_kind` `[N]`, traced so perturbations
and multi-agent masks can change it per scenario):

- `AGENT_LOG`: log replay, copies the log at t+1.
- `AGENT_CONSTANT_VELOCITY`: keeps its velocity and heading from the current step.
- `AGENT_IDM`: reactive car following along its own logged path (see `idm_step`).
- `AGENT_POLICY`: moved by the policy's action through the env's dynamics.

Every model is computed for all objects and selected per object with `where`, so the
mix is free to change without recompiling.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxloop.sim.datatypes import DT, ObjectState, Scenario, trajectory_at

AGENT_LOG = 0
AGENT_CONSTANT_VELOCITY = 1
AGENT_IDM = 2
AGENT_POLICY = 3

AGENT_NAMES = {"log": AGENT_LOG, "constant_velocity": AGENT_CONSTANT_VELOCITY, "idm": AGENT_IDM,
               "policy": AGENT_POLICY}


@struct.dataclass
class AgentParams:
    """Traced constants of the agent models (vmappable, differentiable)."""

    idm_desired_speed_scale: float = 1.0  # times the object's logged speed limit / max logged speed
    idm_min_gap: float = 2.0  # s0, metres
    idm_time_headway: float = 1.5  # T, seconds
    idm_max_accel: float = 2.0  # a, m/s²
    idm_comfort_decel: float = 3.0  # b, m/s²
    idm_max_decel: float = 8.0  # hard braking limit, m/s²
    idm_delta: float = 4.0  # acceleration exponent
    speed_scale: float = 1.0  # scales log-replay / IDM speeds for non-ego objects (perturbations)


def constant_velocity_step(state: ObjectState, dt: float = DT) -> ObjectState:
    """Moves every object `[N]` one step at its current velocity."""
    return state.replace(x=state.x + state.vel_x * dt, y=state.y + state.vel_y * dt)


def log_replay_step(scenario: Scenario, timestep: jax.Array) -> ObjectState:
    """The log at `timestep + 1` for every object `[N]` (invalid past the end of the log)."""
    return trajectory_at(scenario.log_trajectory, timestep + 1)


def select_objects(mask: jax.Array, a: ObjectState, b: ObjectState) -> ObjectState:
    """`a` where `mask` `[N]` else `b`, field by field."""
    return jax.tree.map(lambda u, v: jnp.where(mask, u, v), a, b)


# ----------------------------------------------------------------------------- IDM

IDM_LOOKAHEAD_POINTS = 6  # M: points of the look-ahead window along each object's path
IDM_LOOKAHEAD_SPACING = 10.0  # m between window points (window length 50 m)
IDM_LATERAL_TOLERANCE = 1.0  # m: a lead's centre within its half width + this of the path
IDM_LIGHT_LATERAL = 2.0  # m: a stop point this close to the path governs the object
IDM_STOP_SIGN_LATERAL = 3.0  # m: stop signs stand beside the lane
IDM_STOP_SIGN_HALT_SPEED = 0.2  # m/s: below this within IDM_STOP_SIGN_HALT_GAP the stop is done
IDM_STOP_SIGN_HALT_GAP = 4.0  # m from the front to the sign
IDM_HALT_SPEED = 0.5  # m/s: braking for a lead below this speed halts
IDM_MIN_PATH_LENGTH = 1.0  # m: objects whose logged path is shorter stay where they are
_NO_STOP_CLEARED = -1e9


@struct.dataclass
class IdmState:
    """IDM memory per object (small: nothing `[N, T]`)."""

    s: jax.Array  # [N] arc position along the object's own logged path, m
    v: jax.Array  # [N] speed along the path, m/s
    stop_cleared: jax.Array  # [N] arc position up to which stop signs have been obeyed


@struct.dataclass
class LoggedPaths:
    """Every object's valid logged positions as a polyline (recomputed from the scenario, never carried)."""

    xy: jax.Array  # [N, T, 2] logged positions, invalid steps filled with the nearest earlier valid one
    arc: jax.Array  # [N, T] cumulative arc length, m
    first_seg: jax.Array  # [N] int32, first segment of positive length
    last_seg: jax.Array  # [N] int32, last segment of positive length
    max_speed: jax.Array  # [N] largest valid logged speed, m/s

    @property
    def length(self) -> jax.Array:  # [N]
        return self.arc[..., -1]


def logged_paths(scenario: Scenario) -> LoggedPaths:
    """The paths `[N, T]` of every object, built from `scenario.log_trajectory` (`[N, T]` elementwise work)."""
    traj = scenario.log_trajectory
    valid = traj.valid
    steps = jnp.arange(valid.shape[-1], dtype=jnp.int32)
    last = jax.lax.cummax(jnp.where(valid, steps, -1), axis=valid.ndim - 1)
    first = jnp.argmax(valid, axis=-1).astype(jnp.int32)
    idx = jnp.where(last >= 0, last, first[..., None])
    xy = jnp.stack([jnp.take_along_axis(traj.x, idx, -1), jnp.take_along_axis(traj.y, idx, -1)], -1)
    seg = jnp.linalg.norm(jnp.diff(xy, axis=-2), axis=-1)  # [N, T-1]
    arc = jnp.concatenate([jnp.zeros_like(seg[..., :1]), jnp.cumsum(seg, -1)], -1)
    positive = seg > 1e-4
    seg_idx = jnp.arange(seg.shape[-1], dtype=jnp.int32)
    first_seg = jnp.argmax(positive, -1).astype(jnp.int32)
    last_seg = jnp.max(jnp.where(positive, seg_idx, 0), -1).astype(jnp.int32)
    max_speed = jnp.max(jnp.where(valid, traj.speed, 0.0), -1)
    return LoggedPaths(xy=xy, arc=arc, first_seg=first_seg, last_seg=last_seg, max_speed=max_speed)


def path_points(paths: LoggedPaths, s: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Points `[N, M, 2]` and tangent headings `[N, M]` at arc positions `s` `[N, M]` along each path.

    Positions before the start or past the end extrapolate straight along the first /
    last segment of positive length (an object past its log keeps its final heading).
    """

    def one(xy, arc, first_seg, last_seg, q):  # [T, 2], [T], [], [], [M]
        j = jnp.clip(jnp.searchsorted(arc, q, side="left") - 1, first_seg, last_seg)
        p0, p1 = xy[j], xy[j + 1]
        seg = p1 - p0
        seg_len = jnp.maximum(arc[j + 1] - arc[j], 1e-6)
        u = (q - arc[j]) / seg_len
        return p0 + u[:, None] * seg, jnp.arctan2(seg[:, 1], seg[:, 0])

    return jax.vmap(one)(paths.xy, paths.arc, paths.first_seg, paths.last_seg, s)


def _project_on_window(points: jax.Array, window: jax.Array, window_s: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Projects points `[K, 2]` onto every object's window polyline `[N, M, 2]`.

    Returns (arc offset from the window start `[N, K]`, lateral distance `[N, K]`); a
    point behind the window start gets offset 0.
    """
    start, end = window[:, None, :-1], window[:, None, 1:]  # [N, 1, M-1, 2]
    seg = end - start
    seg_len2 = jnp.maximum(jnp.sum(seg ** 2, -1), 1e-9)
    rel = points[None, :, None, :] - start  # [N, K, M-1, 2]
    t = jnp.clip(jnp.sum(rel * seg, -1) / seg_len2, 0.0, 1.0)
    d2 = jnp.sum((rel - t[..., None] * seg) ** 2, -1)
    k = jnp.argmin(d2, -1)  # [N, K]
    pick = lambda a: jnp.take_along_axis(a, k[..., None], -1)[..., 0]
    seg_arc = (window_s[:, 1:] - window_s[:, :-1])[:, None, :]  # [N, 1, M-1]
    offset = pick(jnp.broadcast_to(window_s[:, None, :-1] - window_s[:, None, :1], t.shape)) + pick(t * seg_arc)
    return offset, jnp.sqrt(pick(d2) + 1e-12)


def init_agent_state(scenario: Scenario, current: ObjectState, timestep: jax.Array, with_idm: bool = True):
    """Per-object agent memory at reset: an `IdmState` (or `()` when no object can be IDM,
    which skips the IDM computation statically)."""
    if not with_idm:
        return ()
    paths = logged_paths(scenario)
    t = jnp.clip(timestep, 0, paths.arc.shape[-1] - 1)
    n = current.x.shape[-1]
    return IdmState(s=paths.arc[:, t], v=current.speed,
                    stop_cleared=jnp.full((n,), _NO_STOP_CLEARED, jnp.float32))


def idm_step(scenario: Scenario, current: ObjectState, timestep: jax.Array, idm: IdmState, params: AgentParams,
             dt: float = DT, paths: LoggedPaths | None = None) -> tuple[ObjectState, IdmState]:
    """Every object `[N]` advanced one step by the intelligent driver model along its own logged path.

    Acceleration (Treiber):  a = a_max [1 - (v / v0)^delta - (s* / gap)^2],
    s* = s0 + max(0, v T + v (v - v_lead) / (2 sqrt(a_max b))), clipped to
    [-max_decel, a_max]; without a lead the gap term is absent. v0 is the object's
    largest logged speed times `idm_desired_speed_scale * speed_scale`. The lead is
    the nearest of: any valid object whose centre projects onto the path ahead within
    its half width + IDM_LATERAL_TOLERANCE of it (speed: its velocity along the path),
    a red light's stop point on the path (a stopped lead of zero length, unless the
    front is already past it), and a stop sign beside the path until the object has
    halted at it. Objects with a logged path under 1 m stay put.
    """
    with jax.named_scope("agents.idm"):
        paths = logged_paths(scenario) if paths is None else paths
        n = current.x.shape[-1]
        m = IDM_LOOKAHEAD_POINTS
        window_s = idm.s[:, None] + IDM_LOOKAHEAD_SPACING * jnp.arange(m, dtype=jnp.float32)  # [N, M]
        window, window_yaw = path_points(paths, window_s)  # [N, M, 2], [N, M]
        half_len = current.length / 2

        # Leads among all valid objects (ego and policy objects included).
        xy = jnp.stack([current.x, current.y], -1)
        offset, lateral = _project_on_window(xy, window, window_s)  # [N, N]
        others = current.valid[None, :] & ~jnp.eye(n, dtype=bool)
        is_lead = others & (offset > 1e-3) & (lateral < current.width[None, :] / 2 + IDM_LATERAL_TOLERANCE)
        gap = offset - half_len[:, None] - half_len[None, :]
        path_dir = jnp.stack([jnp.cos(window_yaw[:, 0]), jnp.sin(window_yaw[:, 0])], -1)  # [N, 2]
        lead_v = path_dir[:, 0:1] * current.vel_x[None, :] + path_dir[:, 1:2] * current.vel_y[None, :]  # [N, N]

        # Red lights: stopped leads at the stop point.
        tl = scenario.traffic_lights
        tc = jnp.clip(timestep, 0, tl.state.shape[-1] - 1)
        stop_xy = jnp.stack([tl.x[:, tc], tl.y[:, tc]], -1)  # [L, 2]
        red = tl.is_red[:, tc]
        l_off, l_lat = _project_on_window(stop_xy, window, window_s)  # [N, L]
        light_lead = red[None, :] & (l_lat < IDM_LIGHT_LATERAL) & (l_off > half_len[:, None])
        light_gap = l_off - half_len[:, None]

        # Stop signs: stopped leads until the object has halted at them.
        rm = scenario.roadmap
        s_off, s_lat = _project_on_window(rm.stop_sign_xy, window, window_s)  # [N, S]
        sign_s = idm.s[:, None] + s_off
        sign_lead = (rm.stop_sign_valid[None, :] & (s_lat < IDM_STOP_SIGN_LATERAL)
                     & (s_off > half_len[:, None] - 1.0) & (sign_s > idm.stop_cleared[:, None]))
        sign_gap = s_off - half_len[:, None]

        gaps = jnp.concatenate([jnp.where(is_lead, gap, jnp.inf), jnp.where(light_lead, light_gap, jnp.inf),
                                jnp.where(sign_lead, sign_gap, jnp.inf)], -1)
        speeds = jnp.concatenate([lead_v, jnp.zeros_like(light_gap), jnp.zeros_like(sign_gap)], -1)
        best = jnp.argmin(gaps, -1)
        lead_gap = jnp.take_along_axis(gaps, best[:, None], -1)[:, 0]
        lead_speed = jnp.take_along_axis(speeds, best[:, None], -1)[:, 0]
        has_lead = jnp.isfinite(lead_gap)

        p = params
        v = idm.v
        v0 = jnp.maximum(paths.max_speed * p.idm_desired_speed_scale * p.speed_scale, 0.1)
        a_free = p.idm_max_accel * (1.0 - (v / v0) ** p.idm_delta)
        s_star = p.idm_min_gap + jnp.maximum(
            0.0, v * p.idm_time_headway + v * (v - lead_speed) / (2.0 * jnp.sqrt(p.idm_max_accel * p.idm_comfort_decel)))
        safe_gap = jnp.maximum(jnp.where(has_lead, lead_gap, 1.0), 0.1)
        accel = jnp.where(has_lead, a_free - p.idm_max_accel * (s_star / safe_gap) ** 2, a_free)
        accel = jnp.clip(accel, -p.idm_max_decel, p.idm_max_accel)
        v_next = jnp.maximum(v + accel * dt, 0.0)
        stopping = v + accel * dt < 0.0
        ds = jnp.where(stopping, v ** 2 / (2.0 * jnp.maximum(-accel, 1e-6)), v * dt + 0.5 * accel * dt ** 2)
        # IDM only creeps asymptotically to a halt: a slow object braking for a lead stops.
        v_next = jnp.where(has_lead & (accel < 0.0) & (v_next < IDM_HALT_SPEED), 0.0, v_next)
        parked = paths.length < IDM_MIN_PATH_LENGTH
        s_next = jnp.where(parked, idm.s, idm.s + jnp.maximum(ds, 0.0))
        v_next = jnp.where(parked, 0.0, v_next)

        # A halt in front of a stop sign clears every sign up to it.
        sign_best = jnp.min(jnp.where(sign_lead, sign_gap, jnp.inf), -1)
        sign_best_s = jnp.min(jnp.where(sign_lead, sign_s, jnp.inf), -1)
        halted = (sign_best < IDM_STOP_SIGN_HALT_GAP) & (v_next < IDM_STOP_SIGN_HALT_SPEED)
        stop_cleared = jnp.where(halted, sign_best_s + 0.1, idm.stop_cleared)

        pos, yaw = path_points(paths, s_next[:, None])
        pos, yaw = pos[:, 0], yaw[:, 0]
        x = jnp.where(parked, current.x, pos[:, 0])
        y = jnp.where(parked, current.y, pos[:, 1])
        yaw = jnp.where(parked, current.yaw, yaw)
        nxt = current.replace(x=x, y=y, yaw=yaw, vel_x=v_next * jnp.cos(yaw), vel_y=v_next * jnp.sin(yaw),
                              valid=current.valid)
        return nxt, IdmState(s=s_next, v=v_next, stop_cleared=stop_cleared)


def step_non_policy(scenario: Scenario, current: ObjectState, timestep: jax.Array, agent_kind: jax.Array,
                    agent_state, params: AgentParams, dt: float = DT) -> tuple[ObjectState, object]:
    """Next states `[N]` of all objects under their agent model (policy objects: log replay, replaced later).

    IDM runs when the agent state carries an `IdmState` and (unbatched) some object is
    IDM; an IDM object that is not valid at the current step follows the log, and its
    IDM memory restarts from the log, so objects appearing later start from their logged
    state.
    """
    logged = log_replay_step(scenario, timestep)
    cv = constant_velocity_step(current, dt)
    # A constant-velocity object stays valid as long as it was valid when it started moving.
    cv = cv.replace(valid=current.valid)
    nxt = select_objects(agent_kind == AGENT_CONSTANT_VELOCITY, cv, logged)
    if not isinstance(agent_state, IdmState):
        return nxt, agent_state
    is_idm = (agent_kind == AGENT_IDM) & current.valid
    paths = logged_paths(scenario)

    def run(_):
        return idm_step(scenario, current, timestep, agent_state, params, dt, paths)

    def skip(_):
        return current, agent_state

    idm_next, idm_state = jax.lax.cond(jnp.any(is_idm), run, skip, None)
    nxt = select_objects(is_idm, idm_next, nxt)
    # Objects not driven by IDM this step keep IDM memory that restarts from the log.
    t1 = jnp.clip(timestep + 1, 0, paths.arc.shape[-1] - 1)
    restart_s = paths.arc[:, t1]
    new_state = IdmState(s=jnp.where(is_idm, idm_state.s, restart_s),
                         v=jnp.where(is_idm, idm_state.v, logged.speed),
                         stop_cleared=jnp.where(is_idm, idm_state.stop_cleared, agent_state.stop_cleared))
    return nxt, new_state
