"""Every object's own logged path: the route of an object that is not the ego.

The ego has a route (`Scenario.route`, built from its log and the lanes). Every other
object gets its logged trajectory as its path: the polyline of its valid logged
positions in time order. A real log has gaps (an occluded object is invalid for a few
steps, one that enters the scene late is invalid before it): the path bridges an
interior gap with a straight segment from the last valid point before it to the first
after it, and the arc length counts that segment, so the arc position past a gap is
where the object really is along its route. Invalid steps carry the last valid
position (the first valid one before it is seen), so no consumer ever reads the
placeholder coordinates a log stores at an invalid step. Progress
along it, the distance to its goal (the last valid logged position) and the completion
of its route are what self-play rewards and per-agent evaluation read, as GPUDrive does
for its goal-reaching agents:

    s_i(t)        = arc position of object i's position at t projected on its own path
    progress_i    = s_i(end) - s_i(start)
    log_progress_i = s_i at its last valid logged point - s_i(start of the episode, logged)
    completion_i  = clip(progress_i / log_progress_i, 0, 1), 1 when log_progress_i <= MIN_PATH (a parked car)
    goal_reached_i = some step within GOAL_RADIUS of the goal
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxloop.sim import geometry as geo
from jaxloop.sim.datatypes import Scenario

GOAL_RADIUS = 2.0  # m: an object this close to its last valid logged position has reached its goal
MIN_PATH = 5.0  # m: an object whose log moves less than this (after the start) has nothing to complete


@struct.dataclass
class LogPaths:
    """The logged path of every object `[N, T]` (time on the last axis)."""

    xy: jax.Array  # [N, T, 2] logged positions; an invalid step holds the last valid one (before any: the first)
    arc_length: jax.Array  # [N, T] metres from the first valid logged point along the valid points in order
    valid: jax.Array  # [N, T] bool: the log's validity
    span: jax.Array  # [N, T] bool: the polyline's points, first to last valid step (a gap's points repeat the one before)
    goal: jax.Array  # [N, 2] the last valid logged position (0 where the object is never valid)
    goal_s: jax.Array  # [N] its arc position
    has_path: jax.Array  # [N] bool: at least two valid logged points


def log_paths(scenario: Scenario) -> LogPaths:
    """The `LogPaths` of a scenario's log (unbatched)."""
    traj = scenario.log_trajectory
    valid = traj.valid
    steps = jnp.arange(valid.shape[-1])
    seen = jax.lax.cummax(jnp.where(valid, steps, -1), axis=valid.ndim - 1)  # last valid step <= t, -1 before any
    first = jnp.argmax(valid, -1)
    source = jnp.where(seen >= 0, seen, first[..., None])
    xy = jnp.take_along_axis(jnp.stack([traj.x, traj.y], -1), source[..., None], -2)
    # segment t -> t+1 of the path of valid points: it ends at a valid point after a valid one (across a gap,
    # xy[t] is the last valid point before it)
    seg_valid = valid[:, 1:] & (seen[:, :-1] >= 0)
    seg_len = jnp.where(seg_valid, jnp.sqrt(jnp.sum((xy[:, 1:] - xy[:, :-1]) ** 2, -1) + 1e-12), 0.0)
    arc = jnp.concatenate([jnp.zeros_like(seg_len[:, :1]), jnp.cumsum(seg_len, -1)], -1)
    last = jnp.max(jnp.where(valid, steps, -1), -1)  # [N], -1 if never valid
    idx = jnp.maximum(last, 0)
    goal = jnp.where((last >= 0)[:, None], jnp.take_along_axis(xy, idx[:, None, None], 1)[:, 0], 0.0)
    goal_s = jnp.take_along_axis(arc, idx[:, None], 1)[:, 0]
    span = (seen >= 0) & (steps <= last[:, None])
    return LogPaths(xy=xy, arc_length=arc, valid=valid, span=span, goal=goal, goal_s=goal_s,
                    has_path=jnp.sum(valid, -1) >= 2)


def path_progress(paths: LogPaths, xy: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(arc position `[N]`, lateral distance `[N]`) of each object's position `[N, 2]` on its own path.

    Differentiable in `xy`; 0 / 0 for an object without a path.
    """
    s, lateral, _ = geo.project_to_polyline(xy, paths.xy, paths.arc_length, paths.span)
    return jnp.where(paths.has_path, s, 0.0), jnp.where(paths.has_path, lateral, 0.0)


def goal_distance(paths: LogPaths, xy: jax.Array) -> jax.Array:
    """Distance `[N]` (m) of each object's position `[N, 2]` to its goal (inf without a path)."""
    d = jnp.sqrt(jnp.sum((xy - paths.goal) ** 2, -1) + 1e-12)
    return jnp.where(paths.has_path, d, jnp.inf)


def completion(progress: jax.Array, log_progress: jax.Array) -> jax.Array:
    """Route completion `[...]` in [0, 1]: progress over the log's, 1 when the log moves less than `MIN_PATH`."""
    return jnp.where(log_progress > MIN_PATH, jnp.clip(progress / jnp.maximum(log_progress, 1e-6), 0.0, 1.0), 1.0)


def goal_far(scenario: Scenario, xy: jax.Array) -> jax.Array:
    """`[N]` bool: each object has a logged path and its position `[N, 2]` is farther than GOAL_RADIUS from its goal.

    The self-play agents GPUDrive and PufferDrive control are the vehicles valid at the
    start whose initial position is more than a minimum distance from their goal: an
    object that starts at its goal (a parked car, an object seen at one step) has nothing
    to drive and follows its log instead (`jaxloop.sim.env.controlled_mask`).
    """
    paths = log_paths(scenario)
    return paths.has_path & (goal_distance(paths, xy) > GOAL_RADIUS)
