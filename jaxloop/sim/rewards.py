"""Rewards (discrete metrics, for RL) and surrogate losses (smooth, for analytic gradients).

The ego's are `step_reward` / `step_surrogate_loss` (below); self-play gives every object
its own, `agent_step_reward` / `agent_step_surrogate_loss` `[N]` (progress along its own
logged path, collision, offroad and log divergence; equations in their docstrings).

Both are weighted sums over the ego's metrics on one transition `prev_state -> state`
(see `jaxloop.sim.metrics`), with the weights a traced `RewardWeights` pytree so they
can be vmapped, swept or annealed without recompiling. The reward's metric terms are the
entries of the metric registry that name a weight (`Metric.reward_weight`), in its order:

    step_reward = progress * (metres along the route this step)
                - collision * at-fault overlap - offroad * at-fault offroad
                - red_light * red-light crossing
                - off_route * off-route - wrong_way * wrong-way - infeasible * kinematic infeasibility
                - discomfort * (not comfortable) - log_divergence * (distance to the log, m)

                - headway * headway_shortfall (m, below)
                - conflict * predicted_conflict (m, below)

    step_surrogate_loss = log_divergence * (distance to the log, m)
                        + collision * overlap_surrogate(margin=overlap_margin, without logged overlaps)
                        + offroad * offroad_surrogate(margin=offroad_margin, without artefact corners)
                        + red_light * red_light_surrogate (m, below)
                        + headway * headway_shortfall (m, below)
                        + conflict * predicted_conflict (m, below)
                        - progress * (metres along the route this step)

The two anticipation terms are smooth (softplus with `temperature`) and warn before the
discrete event, so analytic gradients slow the ego down in time:

    red_light_surrogate = sum over red lights ahead in the ego's lane of
        softplus(v^2 / (2 brake_decel) + stop_margin - (distance from the front to the stop line))
    headway_shortfall = sum over objects ahead in the ego's corridor of
        softplus(headway_gap + headway_time v + max(v^2 - v_lead^2, 0) / (2 brake_decel) - bumper gap)

with `v` the ego's speed and `v_lead` the other object's speed along the ego's heading:
how far the ego is from being able to stop before the line, or behind the other object
with a time gap to spare. A third one looks sideways as well as ahead:

    predicted_conflict = mean over tau in conflict_time * (1/4, 2/4, 3/4, 1) of
        the overlap surrogate (margin overlap_margin) with every box moved on at
        its current velocity for tau seconds

so an object about to cross the ego's path (a pedestrian stepping off the kerb, a car
pulling out) is felt before it is in the lane, and the gradient through the ego's
velocity says to slow down (or to clear the conflict point) in time.

All three are 0 on a step where the ego is invalid. "Distance to the log" is to the
nearest logged ego position of the last `log_lag` seconds (0: the current one), so with
a lag the ego may wait (for a crossing pedestrian, at a merge) without it counting as
divergence, while running ahead of the log or off its path still does.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import struct

from jaxloop.sim import geometry as geo
from jaxloop.sim import metrics as m
from jaxloop.sim.datatypes import DT, Scenario, SimState, trajectory_at
from jaxloop.sim.metrics.paths import LogPaths, log_paths, path_progress


@struct.dataclass
class RewardWeights:
    """Weights of the reward terms and margins of the smooth surrogates (traced)."""

    progress: float | jax.Array = 1.0  # per metre along the route
    collision: float | jax.Array = 10.0
    offroad: float | jax.Array = 5.0
    red_light: float | jax.Array = 0.0
    off_route: float | jax.Array = 0.0
    wrong_way: float | jax.Array = 0.0
    infeasible: float | jax.Array = 0.0
    discomfort: float | jax.Array = 0.0
    log_divergence: float | jax.Array = 0.01  # per metre from the logged position
    log_lag: float | jax.Array = 0.0  # s: the logged position may be up to this old (yielding is not divergence)
    overlap_margin: float | jax.Array = 0.5  # m, surrogate: clearance below which overlap is penalised
    offroad_margin: float | jax.Array = 0.5  # m, surrogate: distance inside the road edge that is penalised
    temperature: float | jax.Array = 0.1  # m, softplus sharpness of the surrogates
    headway: float | jax.Array = 0.0  # per metre of headway shortfall (reward and surrogate)
    headway_time: float | jax.Array = 0.6  # s, time gap kept to an object ahead
    headway_gap: float | jax.Array = 1.0  # m, bumper gap kept when stopped
    brake_decel: float | jax.Array = 4.0  # m/s^2, braking the anticipation terms assume
    stop_margin: float | jax.Array = 1.0  # m, stop this far before a red stop line
    conflict: float | jax.Array = 0.0  # per metre of predicted overlap (reward and surrogate)
    conflict_time: float | jax.Array = 2.0  # s, how far ahead boxes are extrapolated
    # self-play only: the per-agent anticipation terms (red light, headway, conflict: each object read as
    # the ego, at the weights above) are multiplied by `anticipate` (0: self-play has none of them)
    anticipate: float | jax.Array = 0.0
    # self-play only: per metre an agent is behind (along its own logged path) where its log was
    # `behind_lag` s earlier (surrogate, smooth): falling behind the log costs whatever the progress weight
    behind_log: float | jax.Array = 0.0
    behind_lag: float | jax.Array = 0.5  # s


PRESETS: dict[str, RewardWeights] = {
    # Make progress, do not crash or leave the road, stay loosely near the log.
    "progress_safety": RewardWeights(),
    # Safety dominates progress; traffic rules and comfort count too.
    "safety_first": RewardWeights(progress=0.2, collision=50.0, offroad=20.0, red_light=20.0, off_route=2.0,
                                  wrong_way=5.0, infeasible=1.0, discomfort=0.1, log_divergence=0.01),
    # Imitation: stay on the log, with light safety terms.
    "imitation": RewardWeights(progress=0.0, collision=1.0, offroad=1.0, red_light=0.0, log_divergence=1.0),
    # Closed-loop post-training by analytic gradients: track the log, keep clear of others
    # and of the road edge; a little progress so stopping short is not free.
    # Wider surrogate margins give a warning well before contact.
    "closed_loop_tracking": RewardWeights(progress=0.1, collision=10.0, offroad=5.0, log_divergence=1.0,
                                          overlap_margin=1.5, offroad_margin=0.5, temperature=0.3),
    # Closed-loop tracking plus anticipation: slow down in time for red lights, for
    # whatever is ahead in the lane, and for whatever is about to cross the ego's path;
    # falling up to 2 s behind the log (yielding) is not divergence.
    "closed_loop_safety": RewardWeights(progress=0.3, collision=10.0, offroad=5.0, red_light=2.0, headway=2.0,
                                        conflict=4.0, conflict_time=2.0, log_divergence=1.0, log_lag=2.0,
                                        overlap_margin=1.5, offroad_margin=0.5, temperature=0.3),
    # closed_loop_safety with more weight on progress and less room to lag the log (1 s):
    # in dense, slow urban traffic the anticipation terms otherwise teach the ego to hang back.
    "closed_loop_progress": RewardWeights(progress=0.6, collision=10.0, offroad=5.0, red_light=2.0, headway=1.0,
                                          conflict=4.0, conflict_time=2.0, log_divergence=1.0, log_lag=1.0,
                                          overlap_margin=1.5, offroad_margin=0.5, temperature=0.3),
    # Self-play: closed_loop_safety with its anticipation terms per agent (anticipate=1) plus a floor at where each
    # agent's log was 0.5 s earlier along its own path (behind_log), so the safety terms cannot buy
    # clearance by every agent trailing its log (2 s of log_lag alone cost ~16% route completion).
    "selfplay_keep_up": RewardWeights(progress=0.3, collision=10.0, offroad=5.0, red_light=2.0, headway=2.0,
                                      conflict=4.0, conflict_time=2.0, log_divergence=1.0, log_lag=2.0,
                                      anticipate=1.0, behind_log=2.0, behind_lag=0.5, overlap_margin=1.5, offroad_margin=0.5,
                                      temperature=0.3),
    # Self-play on schedule: `selfplay_keep_up` with the floor at the log 0.25 s earlier, for a loss that runs on
    # past each agent's goal (`EnvSettings.done_at_goal=False`): the agent learns to arrive when its log does
    # instead of overtaking its log and driving on unguided past its route's end.
    "selfplay_on_schedule": RewardWeights(progress=0.3, collision=10.0, offroad=5.0, red_light=2.0, headway=2.0,
                                          conflict=4.0, conflict_time=2.0, log_divergence=1.0, log_lag=2.0,
                                          anticipate=1.0, behind_log=2.0, behind_lag=0.25, overlap_margin=1.5,
                                          offroad_margin=0.5, temperature=0.3),
    # Everything the scorecard counts, moderately weighted.
    "scorecard": RewardWeights(progress=0.5, collision=10.0, offroad=5.0, red_light=5.0, off_route=1.0,
                               wrong_way=2.0, infeasible=0.5, discomfort=0.05, log_divergence=0.01),
}


def get_preset(name: str) -> RewardWeights:
    """The named `RewardWeights`; raises `ValueError` listing the presets for an unknown name."""
    if name not in PRESETS:
        raise ValueError(f"unknown reward preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name]


def _ego_log_distance(scenario: Scenario, state: SimState, ego: jax.Array,
                      lag: float | jax.Array = 0.0) -> jax.Array:
    """Distance `[]` (m) of the ego to its logged position now or up to `lag` seconds earlier (the nearest).

    With a lag the ego may fall behind its log (wait for a crossing pedestrian, yield at
    a merge) without diverging, as long as it stays on the logged path; running ahead of
    the log or off its path still counts. 0 where the log is invalid.
    """
    traj, i = scenario.log_trajectory, scenario.object_metadata.sdc_index
    # The ego's row of the log `[T]` (a row slice, not an `[N, T]` masked sum).
    lx, ly, lv = (jax.lax.dynamic_index_in_dim(a, i, 0, keepdims=False) for a in (traj.x, traj.y, traj.valid))
    e = m.take_object(state.current, ego)
    steps_back = state.timestep - jnp.arange(lx.shape[-1])  # [T]
    window = lv & (steps_back >= 0) & (steps_back * DT <= jnp.maximum(lag, 0.0) + 1e-3)
    # The epsilon keeps the gradient finite when the ego sits exactly on the log.
    d2 = jnp.where(window, (e.x - lx) ** 2 + (e.y - ly) ** 2, jnp.inf)
    valid_now = jnp.any(lv & (steps_back == 0))
    return jnp.where(valid_now, jnp.sqrt(jnp.min(d2) + 1e-6), 0.0)


def _weighted(weight: float | jax.Array, term: Callable[[], jax.Array]) -> jax.Array | float:
    """`weight * term()`, without tracing `term` when the weight is a concrete 0 (a preset that does not use it).

    A traced weight (swept, vmapped) computes the term under `lax.cond` only when it is
    non-zero at run time; under `vmap` the two branches become a select, so a term any
    sweep member uses is computed for all.
    """
    if isinstance(weight, (int, float)):
        return 0.0 if weight == 0 else weight * term()
    shape = jax.eval_shape(term).shape  # [] for the ego's terms, [N] for self-play's
    return jax.lax.cond(weight != 0, lambda: (weight * term()).astype(jnp.float32),
                        lambda: jnp.zeros(shape, jnp.float32))


def _route_step(scenario: Scenario, prev_state: SimState, state: SimState, ego: jax.Array) -> jax.Array:
    e, e_prev = m.take_object(state.current, ego), m.take_object(prev_state.current, ego)
    s, _ = m.route_progress(jnp.stack([e.x, e.y]), scenario.route)
    s_prev, _ = m.route_progress(jnp.stack([e_prev.x, e_prev.y]), scenario.route)
    return s - s_prev


def _heading(yaw: jax.Array) -> jax.Array:
    return jnp.stack([jnp.cos(yaw), jnp.sin(yaw)], -1)


def _softplus(x: jax.Array, temperature: float | jax.Array) -> jax.Array:
    return temperature * jax.nn.softplus(x / temperature)


def red_light_surrogate(scenario: Scenario, state: SimState, ego: jax.Array, weights: RewardWeights) -> jax.Array:
    """Smooth `[]` (m): how far the ego is from being able to stop before a red stop line ahead of it.

    A light counts while it is red, governs a lane heading the ego's way, its stop point is
    within `metrics.RED_LIGHT_LATERAL` of the ego's front sideways, and the front is before
    the line (up to 50 m) or less than 0.5 m past it.
    """
    e = m.take_object(state.current, ego)
    stop, direction, red, known = m.light_geometry(scenario, state.timestep)  # [L, 2], [L, 2], [L], [L]
    heading = _heading(e.yaw)
    front = jnp.stack([e.x, e.y]) + e.length / 2 * heading
    rel = front[None, :] - stop
    along = jnp.sum(rel * direction, -1)  # < 0 before the line
    lateral = jnp.abs(geo.cross2(direction, rel))
    aligned = direction @ heading > 0.5
    active = red & known & aligned & (lateral < m.RED_LIGHT_LATERAL) & (along < 0.5) & (along > -50.0)
    v2 = e.vel_x ** 2 + e.vel_y ** 2
    need = v2 / (2 * weights.brake_decel) + weights.stop_margin + along
    return jnp.sum(jnp.where(active, _softplus(need, weights.temperature), 0.0))


def headway_shortfall(state: SimState, ego: jax.Array, weights: RewardWeights) -> jax.Array:
    """Smooth `[]` (m): the shortfall of the bumper gap to objects ahead in the ego's corridor.

    An object is ahead when its centre is in front of the ego's centre; its weight in the
    corridor falls off smoothly (sigmoid, 0.25 m) beyond the half widths plus 0.5 m
    sideways. Its extent along the ego's heading is half its box's diagonal projection.
    """
    cur = state.current
    e = m.take_object(cur, ego)
    heading = _heading(e.yaw)
    rel = jnp.stack([cur.x - e.x, cur.y - e.y], -1)  # [N, 2]
    lon = rel @ heading
    lat = geo.cross2(heading, rel)
    rel_yaw = cur.yaw - e.yaw
    # Half extents of the other box along and across the ego's heading.
    other_lon = (jnp.abs(jnp.cos(rel_yaw)) * cur.length + jnp.abs(jnp.sin(rel_yaw)) * cur.width) / 2
    other_lat = (jnp.abs(jnp.sin(rel_yaw)) * cur.length + jnp.abs(jnp.cos(rel_yaw)) * cur.width) / 2
    in_lane = jax.nn.sigmoid((e.width / 2 + other_lat + 0.5 - jnp.abs(lat)) / 0.25)
    gap = lon - e.length / 2 - other_lon
    v2 = e.vel_x ** 2 + e.vel_y ** 2
    v = jnp.sqrt(v2 + 1e-6)
    v_lead = jnp.maximum(jnp.stack([cur.vel_x, cur.vel_y], -1) @ heading, 0.0)
    closing = jnp.maximum(v2 - v_lead ** 2, 0.0) / (2 * weights.brake_decel)
    need = weights.headway_gap + weights.headway_time * v + closing - gap
    ahead = cur.valid & ~m.object_mask(ego, cur.x.shape[-1]) & (lon > 0.0) & (lon < 80.0)
    return jnp.sum(jnp.where(ahead, in_lane * _softplus(need, weights.temperature), 0.0))


def predicted_conflict(state: SimState, ego: jax.Array, weights: RewardWeights,
                       exempt: jax.Array | None = None) -> jax.Array:
    """Smooth `[]` (m): the overlap surrogate of the ego over the next `conflict_time` seconds
    under constant velocity (every object, the ego included), averaged over 4 look-ahead times.
    Objects where `exempt` `[N]` is True are left out (see `metrics.overlap_surrogate`).
    """
    cur = state.current
    taus = weights.conflict_time * jnp.arange(1, 5, dtype=jnp.float32) / 4  # [4]
    moved = lambda tau: cur.replace(x=cur.x + tau * cur.vel_x, y=cur.y + tau * cur.vel_y)
    pen = jax.vmap(lambda tau: m.overlap_surrogate(moved(tau), ego, weights.overlap_margin, weights.temperature,
                                                        exempt))
    return jnp.mean(pen(taus))


# The metrics' cheap ego-only forms: a reward reads the ego's values only.
REWARD_METRICS = m.MetricsConfig(per_object_overlap=False, per_object_red_light=False, per_object_log_divergence=False)


def step_reward(scenario: Scenario, prev_state: SimState, state: SimState, weights: RewardWeights, *,
                registry: m.Registry = m.DEFAULT) -> jax.Array:
    """The RL reward `[]` of the transition `prev_state -> state` (discrete metrics, ego only).

    The metric terms are the entries of `registry` that name a reward weight
    (`Metric.reward_weight`), in registry order: `- weight * penalty` with the entry's
    per-step ego penalty (`Metric.penalty`: progress counts as a negative penalty); then
    the log-divergence, headway and conflict terms. The collision and offroad terms are the
    at-fault ones of `metrics` on this step (`contact_classes`, `ego_offroad_corners`), so a
    logged overlap or a map artefact the ego replays is not punished. A reward has no
    memory of earlier steps, so a contact is judged anew on every step it lasts (the
    episode's collision counts each pair once).
    """
    with jax.named_scope("rewards.step_reward"):
        for metric in registry.rewarded:
            if not hasattr(weights, metric.reward_weight):
                raise ValueError(f"Metric {metric.name!r}: reward_weight {metric.reward_weight!r} is not a "
                                 f"RewardWeights field")
        ego = scenario.object_metadata.is_sdc
        inputs = m.StepInputs(scenario, prev_state, state, config=REWARD_METRICS)
        r = 0.0
        for metric in registry.rewarded:
            penalty = metric.penalty(inputs)
            if penalty is not None:
                r -= getattr(weights, metric.reward_weight) * penalty
        r -= weights.log_divergence * _ego_log_distance(scenario, state, ego, weights.log_lag)
        r -= _weighted(weights.headway, lambda: headway_shortfall(state, ego, weights))
        r -= _weighted(weights.conflict, lambda: predicted_conflict(
            state, ego, weights, m.inherited_contacts(inputs.cur, inputs.log_state, ego, m.recorded_objects(scenario))))
        return jnp.where(inputs.e.valid, r, 0.0)


def step_surrogate_loss(scenario: Scenario, prev_state: SimState, state: SimState,
                        weights: RewardWeights) -> jax.Array:
    """The smooth, differentiable loss `[]` of the transition (lower is better).

    The overlap, offroad and conflict surrogates leave out what the log itself holds
    while the ego is near its logged pose: objects the logged ego overlaps at this step
    (`metrics.inherited_contacts`) and corners where the logged ego is off the road
    (`metrics.offroad_artefacts`). Near the log the log-divergence term pulls the ego
    onto the log; a penalty on the log's own overlap or artefact edge would push it off
    again, towards whatever is beside the noisy box. Away from the log (over 1 m or
    15 degrees) every object and corner counts. The nuPlan exemptions (stopped ego,
    rear, lateral) are about blame and are not applied here: keeping clearance from a
    car closing in from behind or the side is still wanted.
    """
    with jax.named_scope("rewards.step_surrogate_loss"):
        ego = scenario.object_metadata.is_sdc
        cur = state.current
        log_state = trajectory_at(scenario.log_trajectory, state.timestep)
        logged = m.inherited_contacts(cur, log_state, ego, m.recorded_objects(scenario))
        artefact = m.offroad_artefacts(cur, log_state, scenario.roadmap, ego)
        loss = weights.log_divergence * _ego_log_distance(scenario, state, ego, weights.log_lag)
        loss += weights.collision * m.overlap_surrogate(cur, ego, weights.overlap_margin, weights.temperature,
                                                        exempt=logged)
        loss += weights.offroad * m.offroad_surrogate(cur, scenario.roadmap, ego, weights.offroad_margin,
                                                      weights.temperature, exempt=artefact)
        loss += _weighted(weights.red_light, lambda: red_light_surrogate(scenario, state, ego, weights))
        loss += _weighted(weights.headway, lambda: headway_shortfall(state, ego, weights))
        loss += _weighted(weights.conflict, lambda: predicted_conflict(state, ego, weights, logged))
        loss -= weights.progress * _route_step(scenario, prev_state, state, ego)
        return jnp.where(m.select_index(cur.valid, ego), loss, 0.0)


# ----------------------------------------------------------------------------- self-play: every object's own


def agent_log_distance(scenario: Scenario, state: SimState, lag: float | jax.Array = 0.0) -> jax.Array:
    """`_ego_log_distance` of every object `[N]` (m): to its logged position now or up to `lag` s earlier.

    Smooth (an epsilon under the square root keeps the gradient finite on the log); 0 where
    the object's log is invalid at this step.
    """
    traj = scenario.log_trajectory
    cur = state.current
    steps_back = state.timestep - jnp.arange(traj.x.shape[-1])  # [T]
    window = traj.valid & ((steps_back >= 0) & (steps_back * DT <= jnp.maximum(lag, 0.0) + 1e-3))[None, :]
    d2 = jnp.where(window, (cur.x[:, None] - traj.x) ** 2 + (cur.y[:, None] - traj.y) ** 2, jnp.inf)  # [N, T]
    valid_now = jnp.any(traj.valid & (steps_back == 0)[None, :], -1)
    return jnp.where(valid_now, jnp.sqrt(jnp.min(d2, -1) + 1e-6), 0.0)


def agent_path_step(scenario: Scenario, prev_state: SimState, state: SimState,
                    paths: LogPaths | None = None) -> jax.Array:
    """Metres `[N]` each object moved along its own logged path this step (`metrics.paths`). Differentiable."""
    paths = log_paths(scenario) if paths is None else paths
    s, _ = path_progress(paths, state.current.xy)
    s_prev, _ = path_progress(paths, prev_state.current.xy)
    return s - s_prev


def _logged_overlap(log_state) -> jax.Array:
    """Pairs `[N, N]` whose logged boxes overlap at this step (label noise the simulation inherits)."""
    return m.pairwise_separation(log_state) < 0.0


def agent_collision(state: SimState, log_state) -> jax.Array:
    """`[N]` bool: the valid object overlaps a valid object whose logged box it does not overlap at this step."""
    hit = m.pairwise_separation(state.current) < 0.0
    return jnp.any(hit & ~_logged_overlap(log_state), -1)


def agent_offroad(scenario: Scenario, state: SimState, log_state) -> jax.Array:
    """`[N]` bool: the valid object has a corner off the road and its logged box at this step has none."""
    return m.offroad(state.current, scenario.roadmap) & ~m.offroad(log_state, scenario.roadmap)


def agent_overlap_surrogate(state: SimState, log_state, margin: float | jax.Array,
                            tau: float | jax.Array) -> jax.Array:
    """Smooth `[N]`: `sum_j tau * softplus((margin - sep_ij) / tau)` over valid others j, all pairs.

    `sep_ij` is `geometry.smooth_box_separation`; pairs whose logged boxes overlap at this
    step are left out.
    """
    cur = state.current
    boxes = m.object_boxes(cur)
    sep = geo.smooth_box_separation(boxes[:, None, :], boxes[None, :, :])  # [N, N]
    n = cur.x.shape[-1]
    pair = cur.valid[:, None] & cur.valid[None, :] & ~jnp.eye(n, dtype=bool) & ~_logged_overlap(log_state)
    return jnp.sum(jnp.where(pair, _softplus(margin - sep, tau), 0.0), -1)


def agent_offroad_surrogate(scenario: Scenario, state: SimState, log_state, margin: float | jax.Array,
                            tau: float | jax.Array) -> jax.Array:
    """Smooth `[N]`: `sum_corners tau * softplus((d + margin) / tau)`, d the corner's signed road distance.

    Corners whose logged counterpart is off the road at this step are left out (a map or
    label artefact the log holds).
    """
    def corners(s):
        return geo.box_corners(s.x, s.y, s.yaw, s.length, s.width)  # [N, 4, 2]

    d = m.corner_road_distance(corners(state.current), scenario.roadmap)  # [N, 4]
    d_log = m.corner_road_distance(corners(log_state), scenario.roadmap)
    exempt = log_state.valid[:, None] & (d_log > 0.0)
    return jnp.sum(jnp.where(exempt, 0.0, _softplus(d + margin, tau)), -1)


def _agent_terms(n: int, fn: Callable[[jax.Array], jax.Array]) -> jax.Array:
    """`[N]`: an ego term `fn(index) -> []` read with every object as the ego (a vmap over subjects)."""
    return jax.vmap(fn)(jnp.arange(n))


def agent_headway_shortfall(state: SimState, weights: RewardWeights) -> jax.Array:
    """`headway_shortfall` of every object `[N]` (m): the shortfall of its bumper gap to whatever is ahead
    in its own corridor (its heading), so a follower closing in on a lead is warned before contact."""
    return _agent_terms(state.current.x.shape[-1], lambda i: headway_shortfall(state, i, weights))


def agent_red_light_surrogate(scenario: Scenario, state: SimState, weights: RewardWeights) -> jax.Array:
    """`red_light_surrogate` of every object `[N]` (m): how far it is from being able to stop before a red
    stop line ahead of it in a lane heading its way."""
    return _agent_terms(state.current.x.shape[-1], lambda i: red_light_surrogate(scenario, state, i, weights))


def agent_predicted_conflict(state: SimState, log_state, weights: RewardWeights) -> jax.Array:
    """`predicted_conflict` of every object `[N]` (m): its overlap surrogate over the next `conflict_time`
    seconds under constant velocity, pairs whose logged boxes overlap at this step left out."""
    logged = _logged_overlap(log_state)
    return _agent_terms(state.current.x.shape[-1], lambda i: predicted_conflict(state, i, weights, logged[i]))


def agent_behind_log(scenario: Scenario, state: SimState, weights: RewardWeights,
                     paths: LogPaths | None = None) -> jax.Array:
    """Smooth `[N]` (m): how far each object is behind, along its own logged path, the arc position its log
    had `behind_lag` s earlier: `tau softplus((s_log(t - lag) - s_i) / tau)`. 0 where the log is invalid now.

    The log's position `lag` s ago is a floor, not a target: an agent may run ahead or wait
    up to `lag` s (yield) for free, and each metre it falls farther behind costs
    `behind_log`, whatever the progress weight, which a raw metres term does not do.
    """
    paths = log_paths(scenario) if paths is None else paths
    s, _ = path_progress(paths, state.current.xy)
    t = state.timestep
    steps = paths.arc_length.shape[-1]
    back = jnp.clip(t - jnp.round(jnp.maximum(weights.behind_lag, 0.0) / DT).astype(jnp.int32), 0, steps - 1)
    s_log = jax.lax.dynamic_index_in_dim(paths.arc_length, back, 1, keepdims=False)
    valid_now = jax.lax.dynamic_index_in_dim(paths.valid, jnp.clip(t, 0, steps - 1), 1, keepdims=False)
    return jnp.where(valid_now & paths.has_path, _softplus(s_log - s, weights.temperature), 0.0)


def agent_step_reward(scenario: Scenario, prev_state: SimState, state: SimState,
                      weights: RewardWeights) -> jax.Array:
    """The self-play RL reward `[N]` of every object on the transition (discrete metrics, 0 where invalid):

        r_i = progress * (metres along i's own logged path this step)
            - collision * [i overlaps an object it does not overlap in the log at this step]
            - offroad * [a corner of i is off the road while its logged box is not]
            - log_divergence * (distance of i to its logged position, up to `log_lag` s old)
            - anticipate * headway * agent_headway_shortfall_i

    The path is the object's logged trajectory (`metrics.paths`; for the ego too). The
    red-light, conflict and behind-log weights are surrogate-only here.
    """
    with jax.named_scope("rewards.agent_step_reward"):
        log_state = trajectory_at(scenario.log_trajectory, state.timestep)
        f = lambda b: b.astype(jnp.float32)
        r = weights.progress * agent_path_step(scenario, prev_state, state)
        r -= weights.collision * f(agent_collision(state, log_state))
        r -= weights.offroad * f(agent_offroad(scenario, state, log_state))
        r -= weights.log_divergence * agent_log_distance(scenario, state, weights.log_lag)
        r -= _weighted(weights.anticipate * weights.headway, lambda: agent_headway_shortfall(state, weights))
        return jnp.where(state.current.valid, r, 0.0)


def agent_step_surrogate_loss(scenario: Scenario, prev_state: SimState, state: SimState,
                              weights: RewardWeights) -> jax.Array:
    """The smooth self-play loss `[N]` of every object on the transition (lower is better, 0 where invalid):

        l_i = log_divergence * (distance of i to its logged position, up to `log_lag` s old)
            + collision * sum_j tau softplus((overlap_margin - sep_ij) / tau)   (pairs not overlapping in the log)
            + offroad * sum_corners tau softplus((d_ic + offroad_margin) / tau)  (corners on the road in the log)
            + anticipate * (red_light * agent_red_light_surrogate_i + headway * agent_headway_shortfall_i
                            + conflict * agent_predicted_conflict_i)
            + behind_log * agent_behind_log_i
            - progress * (metres along i's own logged path this step)

    with `tau = temperature`, `sep_ij` the smooth box separation and `d_ic` the signed road
    distance of corner c (> 0 off the road); the anticipation terms are the ego's
    (`red_light_surrogate`, `headway_shortfall`, `predicted_conflict`) with each object as
    the ego, so at the ego's index they equal the ego's. Differentiable in every object's
    state, so a loss of object i reaches the actions of every object it interacts with.
    """
    with jax.named_scope("rewards.agent_step_surrogate_loss"):
        log_state = trajectory_at(scenario.log_trajectory, state.timestep)
        loss = weights.log_divergence * agent_log_distance(scenario, state, weights.log_lag)
        loss += weights.collision * agent_overlap_surrogate(state, log_state, weights.overlap_margin,
                                                            weights.temperature)
        loss += weights.offroad * agent_offroad_surrogate(scenario, state, log_state, weights.offroad_margin,
                                                          weights.temperature)
        a = weights.anticipate
        loss += _weighted(a * weights.red_light, lambda: agent_red_light_surrogate(scenario, state, weights))
        loss += _weighted(a * weights.headway, lambda: agent_headway_shortfall(state, weights))
        loss += _weighted(a * weights.conflict, lambda: agent_predicted_conflict(state, log_state, weights))
        loss += _weighted(weights.behind_log, lambda: agent_behind_log(scenario, state, weights))
        loss -= weights.progress * agent_path_step(scenario, prev_state, state)
        return jnp.where(state.current.valid, loss, 0.0)
