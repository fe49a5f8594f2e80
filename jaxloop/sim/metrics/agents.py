"""Per-agent metrics: every object `[N]` scored as the ego is, for self-play and traffic evaluation.

GPUDrive reports its sim agents per agent, over every controlled agent: collision,
offroad, both, and goal reaching. Here each object is the subject of the ego's own
rules (`jaxloop.sim.metrics.fault`), so the per-agent metric read at the ego's index
is the ego's metric:

- at-fault collision: `contact_classes` with every object as the subject (a vmap over
  subjects: `[N, N]` codes per step, row i the contacts of object i), reduced per
  episode as the ego's are (`pair_at_fault`: a contact is judged where it starts, a
  contact that began as the log's overlap re-checked every step of it). The lateral
  rule needs the subject to keep to its lane: for the ego, within IN_LANE_LATERAL of
  its route (`ego_in_lane`); for another object, within IN_LANE_LATERAL of its own
  logged path (`jaxloop.sim.metrics.paths`), which is the lane the log drove in. A log
  overlap is exempt only between two recorded objects (`recorded_objects`).
- at-fault offroad: a corner off the road that is not an artefact (the same corner of
  the object's logged box is off the road at the same step while the object is near its
  logged pose), as `ego_offroad_corners` for the ego. Every object's 4 + 4 corners go
  through the culled all-object test (`road.offroad`, on zero-size boxes: one per
  corner), which is exactly the brute-force definition the ego's test uses. Per
  episode, as for the ego (`fault.offroad_charged`): an object whose logged box is off
  the road at the episode's first step (a driveway, street parking outside the mapped
  road edges) is not charged until it has been on the road (every corner) at some step;
  from then on every at-fault step counts.
- raw collision / offroad: any contact / any corner off the road (Waymax's metrics).
- route completion and goal reached on the object's own logged path
  (`jaxloop.sim.metrics.paths`): with s_i the arc position on it,

      progress_i     = s_i(simulated position at its last valid step) - s_i(start)
      log_progress_i = s_i(logged position at its last valid step of the episode) - s_i(start)
      goal_reached_i = some valid step within GOAL_RADIUS of the episode's goal
      completion_i   = 1 if goal_reached_i else paths.completion(progress_i, log_progress_i)

  where the episode's goal is the object's last valid logged position within the
  evaluated steps (the log's own goal, `LogPaths.goal`, when the episode runs to the end
  of the log).

An agent whose simulated pose becomes NaN / inf at a valid step is `nonfinite`: it
counts as collided and offroad, with goal not reached and completion 0 (never safe).

`agent_step_metrics` is a `rollout` extras_fn piece (its keys start with `agent_`),
`agent_episode_metrics` reduces one episode to `[N]` values and `agent_rates` averages
them over the controlled agents of a batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxloop.sim.datatypes import ObjectState, Scenario, SimState, trajectory_at
from jaxloop.sim.geometry import segment_projection
from jaxloop.sim.metrics.boxes import _corners
from jaxloop.sim.metrics.fault import (CONTACT_AT_FAULT, CONTACT_LOGGED, CONTACT_NONE, IN_LANE_LATERAL,
                                       contact_classes, ego_in_lane, near_log, offroad_charged, recorded_objects,
                                       start_offroad)
from jaxloop.sim.metrics.paths import GOAL_RADIUS, completion, goal_distance, log_paths, path_progress
from jaxloop.sim.metrics.road import offroad

# Per-agent episode values that are events (0/1): what `agent_rates` reports as rates.
AGENT_EVENTS = ("collision", "offroad", "collision_offroad", "raw_collision", "raw_offroad", "goal_reached")
# `agent_rates` keys: rate name -> per-agent episode value averaged over the controlled agents.
AGENT_RATES = {"collision_rate": "collision", "offroad_rate": "offroad", "collision_offroad_rate": "collision_offroad",
               "raw_collision_rate": "raw_collision", "raw_offroad_rate": "raw_offroad",
               "goal_rate": "goal_reached", "route_completion": "completion", "nonfinite_rate": "nonfinite"}


def subjects_in_lane(scenario: Scenario, state: ObjectState) -> jax.Array:
    """`[N]` bool: each object keeps to its lane (the lateral exemption of `contact_classes`).

    The ego: within IN_LANE_LATERAL of its route (`ego_in_lane`). Another object: within
    IN_LANE_LATERAL of its own logged path (none without one).
    """
    xy = jnp.stack([state.x, state.y], -1)  # [N, 2]
    paths = log_paths(scenario)
    route = scenario.route
    route_lat = polyline_distance(xy, route.xy, route.valid)  # [N] to the ego's route
    path_lat = polyline_distance(xy, paths.xy, paths.span)  # [N] each to its own path
    others = paths.has_path & (path_lat <= IN_LANE_LATERAL)
    return jnp.where(scenario.object_metadata.is_sdc, ego_in_lane(route_lat, route), others)


def polyline_distance(point: jax.Array, xy: jax.Array, valid: jax.Array) -> jax.Array:
    """Distance `[...]` of `point` `[..., 2]` to a polyline `[..., R, 2]` (inf without a valid segment).

    The lateral distance of `geometry.project_to_polyline` (the same `segment_projection`),
    as a plain min-reduction (no argmin and gathers: only the distance is needed).
    """
    seg_valid = valid[..., :-1] & valid[..., 1:]
    _, dist = segment_projection(point[..., None, :], xy[..., :-1, :], xy[..., 1:, :])
    return jnp.min(jnp.where(seg_valid, dist, jnp.inf), -1)


def agent_contacts(scenario: Scenario, state: ObjectState, log_state: ObjectState,
                   prev: ObjectState | None = None) -> jax.Array:
    """`[N, N]` int8 contact codes: row i is `contact_classes` with object i as the subject (the "ego").

    `prev` is the previous step's state (the `closed_in_from_behind` rule). Row i at the
    ego's index is exactly the ego's `ego_contact`.
    """
    with jax.named_scope("metrics.agent_contacts"):
        num = state.x.shape[-1]
        recorded = recorded_objects(scenario)
        in_lane = subjects_in_lane(scenario, state)

        def one(i, lane, rec_i):
            return contact_classes(state, log_state, i, lane, recorded & rec_i, prev=prev)

        return jax.vmap(one)(jnp.arange(num), in_lane, recorded).astype(jnp.int8)


def _corner_points(state: ObjectState, valid: jax.Array) -> ObjectState:
    """Zero-size boxes `[4N]` at the corners of every box (their own four corners are the point)."""
    corners = _corners(state).reshape(-1, 2)  # [4N, 2], object-major
    zero = jnp.zeros_like(corners[:, 0])
    return ObjectState(x=corners[:, 0], y=corners[:, 1], z=zero, vel_x=zero, vel_y=zero, yaw=zero, length=zero,
                       width=zero, height=zero, valid=jnp.repeat(valid, 4))


def agent_offroad_corners(state: ObjectState, log_state: ObjectState, roadmap) -> tuple[jax.Array, jax.Array]:
    """(off `[N, 4]`, artefact `[N, 4]`): each object's corners off the road, and those that are artefacts.

    A corner is an artefact when the same corner of the object's logged box is off the
    road at the same step while the object is near its logged pose (`near_log`), the
    rule of `ego_offroad_corners`. One culled `offroad` pass tests the 8N points.
    """
    with jax.named_scope("metrics.agent_offroad"):
        num = state.x.shape[-1]
        near = near_log(state, log_state)
        points = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), _corner_points(state, state.valid),
                              _corner_points(log_state, near))
        off = offroad(points, roadmap).reshape(2, num, 4)
        return off[0], off[1] & near[:, None]


def agent_step_metrics(scenario: Scenario, prev_state: SimState, state: SimState, info=None) -> dict[str, jax.Array]:
    """Per-agent metrics of one transition, usable as (a piece of) `rollout(..., extras_fn=...)`.

    Returns agent_valid `[N]` (valid after the step), agent_contact `[N, N]` int8
    (`agent_contacts`), agent_offroad `[N]` (raw: some corner off the road) and
    agent_offroad_at_fault `[N]` (some corner off the road that is not an artefact).
    `info` is the env's `StepInfo` (its log at the new step), else the log is read.
    """
    with jax.named_scope("metrics.agent_step"):
        cur, prev = state.current, prev_state.current
        log_state = trajectory_at(scenario.log_trajectory, state.timestep) if info is None else info.log_state
        off, artefact = agent_offroad_corners(cur, log_state, scenario.roadmap)
        return {"agent_valid": cur.valid, "agent_contact": agent_contacts(scenario, cur, log_state, prev),
                "agent_offroad": cur.valid & jnp.any(off, -1),
                "agent_offroad_at_fault": cur.valid & jnp.any(off & ~artefact, -1)}


def pair_at_fault(contact: jax.Array) -> jax.Array:
    """`[M]` bool from one subject's contact codes `[H, M]`: its contact with each object is at fault.

    The ego's episode rule (`episode_metrics`): a contact is classified where it starts;
    one that began as the log's overlap stays exempt only while that holds, so an
    at-fault step later in it is at fault.
    """
    touched = contact != CONTACT_NONE
    onset = touched & ~jnp.concatenate([jnp.zeros_like(touched[:1]), touched[:-1]], 0)

    def logged_run(carry, step):
        touched_t, onset_t, contact_t = step
        started_logged = jnp.where(onset_t, contact_t == CONTACT_LOGGED, carry) & touched_t
        return started_logged, started_logged

    _, from_log = jax.lax.scan(logged_run, jnp.zeros_like(touched[0]), (touched, onset, contact))
    return jnp.any((contact == CONTACT_AT_FAULT) & (onset | from_log), axis=0)


def _last_valid_xy(x: jax.Array, y: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Position `[N, 2]` at each object's last valid step of `[H, N]` arrays, and whether it has one `[N]`."""
    steps = jnp.arange(valid.shape[0])[:, None]
    last = jnp.max(jnp.where(valid, steps, -1), 0)  # [N]
    pick = lambda a: jnp.sum(jnp.where(steps == last[None], a, 0.0), 0)
    return jnp.stack([pick(x), pick(y)], -1), last >= 0


def agent_episode_metrics(scenario: Scenario, rollout_out, extras: dict | None = None) -> dict[str, jax.Array]:
    """Per-agent episode values `[N]` (float) from `agent_step_metrics` outputs `[H, ...]` of one episode.

    `extras` defaults to `rollout_out.extras`. Returns valid (valid at the episode's
    start), collision (at fault), raw_collision, offroad (at fault), raw_offroad,
    collision_offroad (either at-fault event), progress, log_progress, completion,
    goal_reached and nonfinite (see the module docstring).
    """
    with jax.named_scope("metrics.agent_episode"):
        x = rollout_out.extras if extras is None else extras
        contact = x["agent_contact"]  # [H, N, N]
        valid = x["agent_valid"]  # [H, N]
        collision = jax.vmap(lambda c: jnp.any(pair_at_fault(c)), in_axes=1)(contact)
        raw_collision = jnp.any(contact != CONTACT_NONE, axis=(0, 2))
        start = trajectory_at(scenario.log_trajectory, rollout_out.timesteps[0] - 1)  # the initial state's log
        raw_off_steps = x["agent_offroad"] & valid
        off = jnp.any(offroad_charged(x["agent_offroad_at_fault"] & valid, valid & ~raw_off_steps,
                                      start_offroad(start, scenario.roadmap)), 0)
        raw_off = jnp.any(raw_off_steps, 0)
        states, logs = rollout_out.states, rollout_out.log_states
        paths = log_paths(scenario)
        start_xy = jnp.stack([start.x, start.y], -1)
        end_xy, has_end = _last_valid_xy(states.x, states.y, states.valid)
        log_xy = jnp.concatenate([start_xy[None], jnp.stack([logs.x, logs.y], -1)], 0)  # [H + 1, N, 2]
        log_valid = jnp.concatenate([start.valid[None], logs.valid], 0)
        goal, has_goal = _last_valid_xy(log_xy[..., 0], log_xy[..., 1], log_valid)
        s0, _ = path_progress(paths, start_xy)
        s_end, _ = path_progress(paths, end_xy)
        s_goal, _ = path_progress(paths, goal)
        progress = jnp.where(start.valid & has_end, s_end - s0, 0.0)
        log_progress = jnp.where(start.valid & has_goal, s_goal - s0, 0.0)
        goal_paths = paths.replace(goal=goal, has_path=paths.has_path & has_goal)
        dist = jax.vmap(lambda xy: goal_distance(goal_paths, xy))(jnp.stack([states.x, states.y], -1))  # [H, N]
        reached = jnp.any(states.valid & (dist <= GOAL_RADIUS), 0)
        pose = jnp.stack([states.x, states.y, states.yaw], -1)
        nonfinite = jnp.any(valid & ~jnp.all(jnp.isfinite(pose), -1), 0)
        out = {"valid": start.valid, "collision": collision, "raw_collision": raw_collision, "offroad": off,
               "raw_offroad": raw_off, "collision_offroad": collision | off, "goal_reached": reached}
        out = {k: jnp.where(nonfinite, k != "goal_reached", v).astype(jnp.float32) for k, v in out.items()}
        out["valid"] = start.valid.astype(jnp.float32)
        out["progress"], out["log_progress"] = progress, log_progress
        out["completion"] = jnp.where(nonfinite, 0.0, jnp.where(reached, 1.0, completion(progress, log_progress)))
        out["nonfinite"] = nonfinite.astype(jnp.float32)
        return out


def agent_rates(episode: dict, mask) -> dict[str, float]:
    """Rates over the agents in `mask` `[B, N]` (bool) of per-agent episode values `{name: [B, N]}`.

    Returns num_agents and, for each `AGENT_RATES` entry, the mean of its value over the
    masked agents (NaN without any): collision_rate (at fault), offroad_rate (at fault),
    collision_offroad_rate (either), raw_collision_rate, raw_offroad_rate, goal_rate,
    route_completion (mean completion) and nonfinite_rate. Host-side (NumPy).
    """
    mask = np.asarray(mask, bool)
    out: dict[str, float] = {"num_agents": int(mask.sum())}
    for name, key in AGENT_RATES.items():
        vals = np.asarray(episode[key], np.float64)
        if vals.shape != mask.shape:
            raise ValueError(f"agent_rates: {key!r} has shape {vals.shape}, expected the mask's {mask.shape}")
        out[name] = float(vals[mask].mean()) if mask.any() else float("nan")
    return out
