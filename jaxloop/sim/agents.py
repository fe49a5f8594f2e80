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

from jaxloop.sim import geometry as geo
from jaxloop.sim.compute import fused_argmin, materialize
from jaxloop.sim.datatypes import DT, ObjectState, Scenario, at_step, trajectory_at

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

IDM_LOOKAHEAD = 50.0  # m: leads, lights and stop signs farther along the path are ignored
IDM_CURVATURE_BASE = 20.0  # m of path over which the heading change gives the curvature
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


_BLOCK = 8  # arc positions per block of the two-level segment search
_MIN_SEGMENT = 1e-4  # m: shorter logged steps add no arc length


@struct.dataclass
class LoggedPaths:
    """Every object's valid logged positions as a polyline (recomputed from the scenario, never carried).

    A lookup at arc position s finds its segment with a two-level search: a count
    over the first arc value of every block of `_BLOCK` points (`block_arc`, a small
    table of its own), then one gather of a `_BLOCK + 1`-point window of arc per query,
    in which the segment is counted and its two arc values are picked elementwise, and
    a two-point gather each of x and y at the segment. A step so reads `[N, T / _BLOCK]`
    values plus three short windows per query, never the whole `[N, T]` tables.
    Everything here depends on the scenario only: inside a rollout XLA computes it
    once, outside the scan loop.
    """

    x: jax.Array  # [N, T] logged positions
    y: jax.Array  # [N, T]
    arc: jax.Array  # [N, T] cumulative arc length over segments with both ends valid, m
    length: jax.Array  # [N] total arc length, m (a max-reduction, so it is hoisted like `block_arc`)
    max_speed: jax.Array  # [N] largest valid logged speed, m/s
    block_arc: jax.Array  # [N, ceil(T / _BLOCK)] arc at the first point of every block


def _norm(dx: jax.Array, dy: jax.Array) -> jax.Array:
    """`sqrt(dx² + dy²)` elementwise: metre-scale values need none of `jnp.hypot`'s rescaling."""
    return jnp.sqrt(dx * dx + dy * dy)


def max_logged_speed(traj) -> jax.Array:
    """Every object's largest valid logged speed `[N]` (m/s) from a trajectory `[N, T]`: the IDM agents'
    desired speed and the policy's `ObsConfig.target_speed`. A reduction over the scenario only, so inside a
    rollout XLA computes it once, outside the loop."""
    return jnp.max(jnp.where(traj.valid, _norm(traj.vel_x, traj.vel_y), 0.0), -1)


def logged_paths(scenario: Scenario) -> LoggedPaths:
    """The paths `[N, T]` of every object, built from `scenario.log_trajectory` (`[N, T]` elementwise work).

    Only segments between two consecutive valid steps that are longer than
    `_MIN_SEGMENT` have length (a stationary object's jitter adds none), so
    interpolation never touches an invalid point; across a gap in the log the path
    jumps from the last valid point before it to the first one after it.
    """
    traj = scenario.log_trajectory
    valid = traj.valid
    both = valid[..., 1:] & valid[..., :-1]
    seg = _norm(jnp.diff(traj.x, axis=-1), jnp.diff(traj.y, axis=-1))  # [N, T-1]
    seg = jnp.where(both & (seg > _MIN_SEGMENT), seg, 0.0)
    arc = jnp.concatenate([jnp.zeros_like(seg[..., :1]), jnp.cumsum(seg, -1)], -1)
    return LoggedPaths(x=traj.x, y=traj.y, arc=arc, length=jnp.max(arc, -1), max_speed=max_logged_speed(traj),
                       block_arc=_block_firsts(arc))


def _block_firsts(arc: jax.Array) -> jax.Array:
    """`arc[:, ::_BLOCK]` `[N, ceil(T / _BLOCK)]` of the non-decreasing `arc` `[N, T]`, as a min-reduction per block.

    A strided slice would be fused into every lookup and re-read the whole `[N, T]`
    table each step; a reduction is its own op, which XLA hoists out of the rollout loop.
    """
    n, t = arc.shape
    blocks = -(-t // _BLOCK)
    padded = jnp.pad(arc, ((0, 0), (0, blocks * _BLOCK - t)), constant_values=jnp.inf)
    return jnp.min(padded.reshape(n, blocks, _BLOCK), -1)


def _row_slices(a: jax.Array, start: jax.Array, size: int) -> jax.Array:
    """`a[n, start[n, k] : start[n, k] + size]` for rows of `a` `[N, T]` and starts `[N, K]` (in bounds).

    Returns `[N, K, size]`.
    """
    window = lambda row, i: jax.lax.dynamic_slice_in_dim(row, i, size)
    return jax.vmap(jax.vmap(window, in_axes=(None, 0)))(a, start)


def _pick(window: jax.Array, i: jax.Array) -> jax.Array:
    """`window[..., i]` of `window` `[..., W]` at indices `i` `[...]`, as a chain of selects (fuses; no gather)."""
    out = window[..., 0]
    for k in range(1, window.shape[-1]):
        out = jnp.where(i == k, window[..., k], out)
    return out


def path_segments(paths: LoggedPaths, s: jax.Array) -> tuple[jax.Array, ...]:
    """End points of the segment holding each arc position `s` `[N, K]`: x0, y0, a0, x1, y1, a1 `[N, K]`.

    The segment j is the number of path points with arc < s, minus one, clamped to
    the first and last segments of positive length (positions outside extrapolate
    along them). Arc is 0 up to the first and the length from the end of the last,
    so clamping s to [_MIN_SEGMENT / 2, length] first gives the same j. Arc is
    non-decreasing, so with b the last block whose first point is below s, every
    point before block b is below s and the point after the block is not: the
    count is the window's start plus the count inside the `_BLOCK + 1`-point window
    from block b's first point (shifted left to stay inside the array, which keeps
    that true), and the window holds both ends of segment j.
    """
    num_points = paths.arc.shape[-1]
    size = min(_BLOCK + 1, num_points)
    s_c = jnp.minimum(jnp.maximum(s, 0.5 * _MIN_SEGMENT), paths.length[:, None])
    num_before = jnp.sum(paths.block_arc[:, None, :] < s_c[..., None], -1).astype(jnp.int32)  # [N, K]
    start = jnp.clip((num_before - 1) * _BLOCK, 0, num_points - size)
    arc_w = _row_slices(paths.arc, start, size)  # [N, K, size]
    local = jnp.clip(jnp.sum(arc_w < s_c[..., None], -1).astype(jnp.int32) - 1, 0, size - 2)
    # The positions are read at the segment only: two points, not the whole window.
    x_w, y_w = _row_slices(paths.x, start + local, 2), _row_slices(paths.y, start + local, 2)
    return x_w[..., 0], y_w[..., 0], _pick(arc_w, local), x_w[..., 1], y_w[..., 1], _pick(arc_w, local + 1)


def path_points(paths: LoggedPaths, s: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Points x, y and tangent headings at arc positions `s` (`[N]` or `[N, K]`) along each path.

    Positions before the start or past the end extrapolate straight along the first /
    last segment of positive length (an object past its log keeps its final heading).
    """
    x0, y0, a0, x1, y1, a1 = path_segments(paths, s if s.ndim == 2 else s[:, None])
    u = (s.reshape(x0.shape) - a0) / jnp.maximum(a1 - a0, 1e-6)
    px, py, heading = x0 + u * (x1 - x0), y0 + u * (y1 - y0), jnp.arctan2(y1 - y0, x1 - x0)
    return tuple(a.reshape(s.shape) for a in (px, py, heading))


def _path_frame(px: jax.Array, py: jax.Array, x0: jax.Array, y0: jax.Array, c0: jax.Array, s0: jax.Array,
                kappa: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Points (px, py) in the path frames of objects (x0, y0, c0, s0, kappa): (distance ahead, |lateral offset|).

    Elementwise with broadcasting: the caller lays points and objects on two axes
    (`[N, K]` for the lead search, `[K, N]` for the few lights and stop signs, so the
    long object axis is the contiguous one). The path ahead is approximated by the
    parabola of curvature `kappa` tangent at (x0, y0) with heading cosine / sine
    (c0, s0): ~20 flops per pair, so the `[N, N]` lead search stays cheap. Good for the
    gentle curvature of a 50 m look-ahead; sharp turns (radius < ~15 m) widen the
    lateral error towards the end of the window.
    """
    dx, dy = px - x0, py - y0
    lon = dx * c0 + dy * s0
    lat = dy * c0 - dx * s0 - 0.5 * kappa * lon * lon
    return lon, jnp.abs(lat)


def idm_acceleration(v: jax.Array, v0: jax.Array, lead_gap: jax.Array, lead_speed: jax.Array, has_lead: jax.Array,
                     params: AgentParams) -> jax.Array:
    """The intelligent driver model's acceleration (Treiber), elementwise, m/s².

    a = a_max [1 - (v / v0)^delta - (s* / gap)^2],
    s* = s0 + max(0, v T + v (v - v_lead) / (2 sqrt(a_max b))), clipped to [-max_decel, a_max];
    without a lead (`has_lead` False) the gap term is absent. v0 is floored at 0.1 m/s and the
    gap at 0.1 m. Used by the IDM agents (`idm_step`) and the policy's IDM acceleration prior
    (`jaxloop.policy.networks.idm_prior_accel`); `speed_scale` and the desired-speed scale are
    the caller's to apply to v0.
    """
    p = params
    v0 = jnp.maximum(v0, 0.1)
    a_free = p.idm_max_accel * (1.0 - (v / v0) ** p.idm_delta)
    s_star = p.idm_min_gap + jnp.maximum(
        0.0, v * p.idm_time_headway + v * (v - lead_speed) / (2.0 * jnp.sqrt(p.idm_max_accel * p.idm_comfort_decel)))
    safe_gap = jnp.maximum(jnp.where(has_lead, lead_gap, 1.0), 0.1)
    accel = jnp.where(has_lead, a_free - p.idm_max_accel * (s_star / safe_gap) ** 2, a_free)
    return jnp.clip(accel, -p.idm_max_decel, p.idm_max_accel)


def init_agent_state(scenario: Scenario, current: ObjectState, timestep: jax.Array, with_idm: bool = True):
    """Per-object agent memory at reset: an `IdmState` (or `()` when no object can be IDM,
    which skips the IDM computation statically)."""
    if not with_idm:
        return ()
    paths = logged_paths(scenario)
    n = current.x.shape[-1]
    return IdmState(s=at_step(paths.arc, timestep), v=current.speed,
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
    halted at it. Objects with a logged path under 1 m stay put. "Along the path" uses the
    path's tangent and curvature at the object (see `_path_frame`), up to IDM_LOOKAHEAD.
    """
    with jax.named_scope("agents.idm"):
        paths = logged_paths(scenario) if paths is None else paths
        n = current.x.shape[-1]
        # Tangent and curvature of the path from its headings at s and s + 20 m.
        px, py, heading = path_points(paths, jnp.stack([idm.s, idm.s + IDM_CURVATURE_BASE], -1))  # [N, 2]
        x0, y0, yaw0, yaw_ahead = px[:, 0], py[:, 0], heading[:, 0], heading[:, 1]
        kappa = geo.wrap_angle(yaw_ahead - yaw0) / IDM_CURVATURE_BASE
        # Every [N, N] / [N, L] pass below reads these per-object values: computed once.
        c0, s0, x0, y0, kappa = materialize(jnp.cos(yaw0), jnp.sin(yaw0), x0, y0, kappa)
        half_len = current.length / 2

        rows = tuple(a[:, None] for a in (x0, y0, c0, s0, kappa))  # objects on the first axis
        cols = tuple(a[None, :] for a in (x0, y0, c0, s0, kappa))  # objects on the last axis

        # Leads among all valid objects (ego and policy objects included). Every test is a
        # float "violation" that is negative exactly when it passes (`a - b < 0` iff `a < b`
        # in IEEE arithmetic), so the pair loop is one max-chain of 32-bit lanes instead of
        # a chain of byte-wide boolean ands; an invalid object has a lateral band of -1e30
        # and the diagonal (the object itself) a violation of +inf.
        band = jnp.where(current.valid, current.width / 2 + IDM_LATERAL_TOLERANCE, -1e30)
        # Its own `materialize`: joined to the one above (an [N, 6] contraction), the step ran
        # 0.76-0.83x as fast in two paired runs, with identical results.
        (band,) = materialize(band)
        offset, lateral = _path_frame(current.x[None, :], current.y[None, :], *rows)  # [N, N]
        violation = jnp.maximum(jnp.maximum(1e-3 - offset, offset - IDM_LOOKAHEAD), lateral - band[None, :])
        is_lead = jnp.maximum(violation, jnp.where(jnp.eye(n, dtype=bool), jnp.inf, -jnp.inf)) < 0.0
        gap = offset - half_len[:, None] - half_len[None, :]

        # Red lights: stopped leads at the stop point.
        tl = scenario.traffic_lights
        red, light_x, light_y = at_step(tl.is_red, timestep), at_step(tl.x, timestep), at_step(tl.y, timestep)  # [L]
        l_off, l_lat = _path_frame(light_x[:, None], light_y[:, None], *cols)  # [L, N]
        light_lead = red[:, None] & (l_lat < IDM_LIGHT_LATERAL) & (l_off > half_len) & (l_off < IDM_LOOKAHEAD)
        light_gap = l_off - half_len

        # Stop signs: stopped leads until the object has halted at them.
        rm = scenario.roadmap
        s_off, s_lat = _path_frame(rm.stop_sign_xy[:, 0, None], rm.stop_sign_xy[:, 1, None], *cols)  # [S, N]
        sign_s = idm.s + s_off
        sign_lead = (rm.stop_sign_valid[:, None] & (s_lat < IDM_STOP_SIGN_LATERAL)
                     & (s_off > half_len - 1.0) & (s_off < IDM_LOOKAHEAD) & (sign_s > idm.stop_cleared))
        sign_gap = s_off - half_len

        # The nearest object lead from one fused integer reduction over the [N, N] work
        # (`fused_argmin`: near ties take the lowest index), then its exact gap and speed
        # from the lead's own values; the nearest of the three kinds of lead wins.
        lead, found = fused_argmin(jnp.where(is_lead, gap, jnp.inf))  # [N]
        lead_lon = (current.x[lead] - x0) * c0 + (current.y[lead] - y0) * s0
        obj_gap = jnp.where(found, lead_lon - half_len - half_len[lead], jnp.inf)
        obj_speed = c0 * current.vel_x[lead] + s0 * current.vel_y[lead]
        stop_gap = jnp.minimum(jnp.min(jnp.where(light_lead, light_gap, jnp.inf), 0),
                               jnp.min(jnp.where(sign_lead, sign_gap, jnp.inf), 0))
        lead_gap = jnp.minimum(obj_gap, stop_gap)
        lead_speed = jnp.where(stop_gap <= obj_gap, 0.0, obj_speed)
        has_lead = jnp.isfinite(lead_gap)

        p = params
        v = idm.v
        v0 = paths.max_speed * p.idm_desired_speed_scale * p.speed_scale
        accel = idm_acceleration(v, v0, lead_gap, lead_speed, has_lead, p)
        v_next = jnp.maximum(v + accel * dt, 0.0)
        stopping = v + accel * dt < 0.0
        ds = jnp.where(stopping, v ** 2 / (2.0 * jnp.maximum(-accel, 1e-6)), v * dt + 0.5 * accel * dt ** 2)
        # IDM only creeps asymptotically to a halt: a slow object braking for a lead stops.
        v_next = jnp.where(has_lead & (accel < 0.0) & (v_next < IDM_HALT_SPEED), 0.0, v_next)
        parked = paths.length < IDM_MIN_PATH_LENGTH
        s_next = jnp.where(parked, idm.s, idm.s + jnp.maximum(ds, 0.0))
        v_next = jnp.where(parked, 0.0, v_next)

        # A halt in front of a stop sign clears every sign up to it.
        sign_best = jnp.min(jnp.where(sign_lead, sign_gap, jnp.inf), 0)
        sign_best_s = jnp.min(jnp.where(sign_lead, sign_s, jnp.inf), 0)
        halted = (sign_best < IDM_STOP_SIGN_HALT_GAP) & (v_next < IDM_STOP_SIGN_HALT_SPEED)
        stop_cleared = jnp.where(halted, sign_best_s + 0.1, idm.stop_cleared)

        # The step's arc length along the local parabola: within kappa * ds^2 / 2 of the path,
        # and the next step starts again from the exact path point at s (no drift).
        step = s_next - idm.s
        x = jnp.where(parked, current.x, x0 + step * c0 - 0.5 * kappa * step ** 2 * s0)
        y = jnp.where(parked, current.y, y0 + step * s0 + 0.5 * kappa * step ** 2 * c0)
        yaw = geo.wrap_angle(yaw0 + kappa * step)
        yaw = jnp.where(parked, current.yaw, yaw)
        nxt = current.replace(x=x, y=y, yaw=yaw, vel_x=v_next * jnp.cos(yaw), vel_y=v_next * jnp.sin(yaw),
                              valid=current.valid)
        return nxt, IdmState(s=s_next, v=v_next, stop_cleared=stop_cleared)


def step_non_policy(scenario: Scenario, current: ObjectState, timestep: jax.Array, agent_kind: jax.Array,
                    agent_state, params: AgentParams, dt: float = DT,
                    logged: ObjectState | None = None) -> tuple[ObjectState, object]:
    """Next states `[N]` of all objects under their agent model (policy objects: log replay, replaced later).

    IDM runs when the agent state carries an `IdmState` and (unbatched) some object is
    IDM; an IDM object that is not valid at the current step follows the log, and its
    IDM memory restarts from the log, so objects appearing later start from their logged
    state. An IDM object is valid while the log has it at the next step (objects leave
    the scene when the log loses them); one that runs past the end of its logged path
    while still valid goes on straight along the path's last direction. `logged` is
    the log at `timestep + 1` when the caller has read it already.
    """
    logged = log_replay_step(scenario, timestep) if logged is None else logged
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
    # IDM objects exist while the log has them: an object that leaves the log leaves the scene.
    idm_next = idm_next.replace(valid=idm_next.valid & logged.valid)
    nxt = select_objects(is_idm, idm_next, nxt)
    # Objects not driven by IDM this step keep IDM memory that restarts from the log.
    restart_s = at_step(paths.arc, timestep + 1)
    new_state = IdmState(s=jnp.where(is_idm, idm_state.s, restart_s),
                         v=jnp.where(is_idm, idm_state.v, logged.speed),
                         stop_cleared=jnp.where(is_idm, idm_state.stop_cleared, agent_state.stop_cleared))
    return nxt, new_state
