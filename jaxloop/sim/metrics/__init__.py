"""Closed-loop scorecard: discrete metrics, their smooth surrogates and the episode score.

Every metric is a pure function of `ObjectState`s (plus the static `Scenario`), in two
forms where it matters for cost: per object `[N]` and ego only `[]`. Only objects valid
at the step count: each metric comes with (or is masked by) a validity flag.

Discrete metrics (the reported truth)
- overlap: separating-axis test of oriented boxes among valid objects (self excluded).
- offroad: any box corner on the off-road side of its nearest road edge (per object, the
  edges culled to the chunks nearest each object, with an exact guard: `road.offroad`).
  Road edges are directed segments with the drivable area on their RIGHT, so a positive cross product
  `cross(end - start, corner - start)` means off the road. Where several segments are
  equally near (a shared vertex), the one whose supporting line is farthest decides
  (`signed_edge_distance`), which is right on both sides of sharp corners.
- log divergence: L2 distance to the logged position at the same step.
- kinematic infeasibility: the inverse bicycle (DESIGN.md) on the simulated transition,
  unclipped: |a| > 10.4 m/s² or |k| > 0.3 + 1e-3 1/m.
- progress: arc position of the ego on `scenario.route`; the episode reports metres
  travelled along the route and the ratio to the log's.
- off-route: lateral distance to the route > 5 m.
- wrong-way: moving (> 2 m/s), within 2 m of some lane centre line, and heading more
  than 120 degrees away from every lane that close (overlapping lanes in intersections
  do not count against it).
- red light: the object's front point moves from before to past a stop point along the
  governed lane's direction (at the lane's start, where WOMD puts the stop point), within 2 m laterally of the stop point, heading with the
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

Fault attribution (what the policy is blamed for; drives `failure`, the gate, rewards)
The raw overlap and offroad above stay Waymax-compatible and are reported as
raw_collision / raw_offroad / raw_failure. Real logs already hold overlaps (label noise
of the boxes) and offroad corners (map-compile or labelling artefacts), and not every
contact is the ego's doing, so the at-fault layer leaves out:
- collisions (`contact_classes`, after nuPlan's at-fault collisions), per pair of the
  ego and another object, each contact classified where it starts (a log-overlap
  exemption re-checked every step of it), a pair counted once per episode: not at
  fault when the logged ego overlaps the same object at the same step while both are
  within 1 m / 15 degrees of their logged poses (the overlap is the log's), when the
  ego is stopped (< 0.05 m/s), when the other object meets the ego's
  rear bumper (while the ego is not reversing and the other is not stopped), or when it
  is a side contact while the ego keeps to its lane (within 1 m of its route, the
  logged path on lane centres). Running into a stopped object, a front-bumper contact
  (or one with an object wholly ahead of the front a step before), and a side contact
  out of the lane are at fault.
- offroad (`ego_offroad_corners`): a corner off the road is an artefact when the same
  corner of the logged ego box is off the road at the same step and the ego is within
  1 m / 15 degrees of its logged pose.
Every exemption needs the ego to be where the log was, or stopped, or hit from behind
or from the side in its lane: a policy that leaves the log to drive into something, or
off the road, is at fault even where the log itself was noisy.

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

import jax
import jax.numpy as jnp

from jaxloop.sim.datatypes import Scenario, SimState, trajectory_at
from jaxloop.sim.metrics.boxes import (ego_overlap, ego_separation, object_boxes, object_mask, overlap,
                                       overlap_surrogate, pair_separation, pairwise_separation, select_index,
                                       take_object)
from jaxloop.sim.metrics.fault import (CONTACT_AT_FAULT, CONTACT_LATERAL, CONTACT_LOGGED, CONTACT_NAMES, CONTACT_NONE,
                                       CONTACT_REAR, CONTACT_STOPPED_EGO, IN_LANE_LATERAL, NEAR_LOG_DISTANCE,
                                       NEAR_LOG_YAW, STOPPED_SPEED, closed_in_from_behind, contact_classes, ego_in_lane,
                                       ego_offroad_corners, inherited_contacts, near_log, offroad_artefacts,
                                       recorded_objects)
from jaxloop.sim.metrics.motion import (ACCEL_LIMIT, CURVATURE_LIMIT, OFF_ROUTE_DISTANCE, RED_LIGHT_LATERAL, TTC_CAP,
                                        TTC_THRESHOLD, WRONG_WAY_ANGLE, WRONG_WAY_LANE_RADIUS, WRONG_WAY_MIN_SPEED,
                                        ComfortLimits, comfort, inverse_bicycle_unclipped, kinematic_infeasibility,
                                        lane_start_directions, light_geometry, log_divergence, off_route,
                                        red_light_crossing, route_progress, time_to_collision, wrong_way)
from jaxloop.sim.metrics.road import (EDGE_TIE_TOLERANCE, corner_road_distance, edge_offroad, ego_corner_road_distance,
                                      ego_offroad, offroad, offroad_surrogate, signed_edge_distance)

MIN_LOG_PROGRESS = 5.0  # m
MIN_PROGRESS_RATIO = 0.2


@dataclasses.dataclass(frozen=True)
class MetricsConfig:
    """What `step_metrics` computes (static). Ego metrics are always on.

    per_object_overlap: all-pairs SAT `[N, N]` -> `overlap` `[N]` (the ego's comes from it).
    per_object_offroad: every object's corners against the road edges near it (`offroad`:
      `[N, C]` chunk distances, then `[N, 4, K * G]` segment terms; exactly the all-edges
      answer; off by default).
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


# ----------------------------------------------------------------------------- per step, per episode


def step_metrics(scenario: Scenario, prev_state: SimState, state: SimState, info=None, *,
                 config: MetricsConfig = MetricsConfig()) -> dict[str, jax.Array]:
    """Metrics of one transition, usable as `rollout(..., extras_fn=step_metrics)`.

    Ego entries are scalars `[]`: ego_valid, ego_overlap, ego_overlap_at_fault, ego_offroad,
    ego_offroad_at_fault, ego_log_divergence, ego_log_valid, ego_infeasible, ego_route_s, ego_route_s_prev, ego_route_lateral,
    ego_off_route, ego_wrong_way, ego_red_light, ego_comfortable, ego_lon_accel,
    ego_lat_accel, ego_jerk, ego_ttc. `ego_contact` `[N]` int32 is the class of the ego's
    contact with each object (`contact_classes`; CONTACT_NONE without one), which
    `episode_metrics` reads where each contact starts. ego_overlap and ego_offroad are
    the raw (Waymax-compatible) metrics; the `_at_fault` ones leave out what the log
    already holds and, for contacts, what nuPlan does not blame the ego for (see the
    module docstring). Per-object entries `[N]` depending on `config`: overlap, offroad,
    red_light, log_divergence, log_valid, valid (all raw).
    """
    with jax.named_scope("metrics.step"):
        ego = scenario.object_metadata.is_sdc
        cur, prev = state.current, prev_state.current
        e, e_prev = take_object(cur, ego), take_object(prev, ego)
        rm = scenario.roadmap
        # The env's StepInfo already holds the log at the new step.
        log_state = (trajectory_at(scenario.log_trajectory, state.timestep) if info is None
                     else info.log_state)
        xy = jnp.stack([e.x, e.y])
        s, lat = route_progress(xy, scenario.route)
        out: dict[str, jax.Array] = {"ego_valid": e.valid, "valid": cur.valid}
        sep = ego_separation(cur, ego)
        if config.per_object_overlap:
            ov = overlap(cur)
            out["overlap"] = ov
            out["ego_overlap"] = select_index(ov, ego)
        else:
            out["ego_overlap"] = e.valid & jnp.any(sep < 0.0)
        contact = contact_classes(cur, log_state, ego, ego_in_lane(lat, scenario.route), recorded_objects(scenario),
                                  sep, prev=prev)
        out["ego_contact"] = contact
        out["ego_overlap_at_fault"] = jnp.any(contact == CONTACT_AT_FAULT)
        valid, off, artefact = ego_offroad_corners(cur, log_state, rm, ego, config.edge_cull)
        if config.per_object_offroad:
            off_all = offroad(cur, rm)
            out["offroad"] = off_all
            out["ego_offroad"] = select_index(off_all, ego)
        else:
            out["ego_offroad"] = valid & jnp.any(off)
        out["ego_offroad_at_fault"] = valid & jnp.any(off & ~artefact)
        if config.per_object_log_divergence:
            div, div_valid = log_divergence(cur, log_state)
            out["log_divergence"], out["log_valid"] = div, div_valid
            out["ego_log_divergence"], out["ego_log_valid"] = select_index(div, ego), select_index(div_valid, ego)
        else:
            div, div_valid = log_divergence(e, take_object(log_state, ego))
            out["ego_log_divergence"], out["ego_log_valid"] = div, div_valid
        out["ego_infeasible"] = kinematic_infeasibility(e_prev, e)
        s_prev, _ = route_progress(jnp.stack([e_prev.x, e_prev.y]), scenario.route)
        has_route = jnp.any(scenario.route.valid)
        out["ego_route_s"], out["ego_route_s_prev"], out["ego_route_lateral"] = s, s_prev, lat
        out["ego_off_route"] = e.valid & has_route & (lat > OFF_ROUTE_DISTANCE)
        out["ego_wrong_way"] = wrong_way(e, rm, scenario.route)
        if config.per_object_red_light:
            rl = red_light_crossing(scenario, prev, cur, state.timestep)
            out["red_light"] = rl
            out["ego_red_light"] = select_index(rl, ego)
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

    `extras` defaults to `rollout_out.extras`. Returns red_light, off_route, wrong_way,
    infeasible (any valid step, float 0/1); raw_collision, raw_offroad (the raw metrics
    on any valid step) and raw_failure (either, or red light); the at-fault collision
    (some contact is at fault where it starts, or at a later step of a contact that began
    as the log's overlap) and offroad (a corner off the road
    that is not an artefact, on a valid step) and failure (either, or red light);
    collision_pairs (pairs with an at-fault contact), exempt_{logged, stopped_ego,
    rear, lateral}_pairs (the other touched pairs, by the rule of their first contact),
    offroad_artefact_steps (raw offroad steps that are all artefact); progress (m along the route), log_progress, progress_ratio,
    ade, fde (ego log divergence), comfort (fraction of comfortable steps), ttc_min,
    score (see the module docstring; its multipliers use the at-fault collision and
    offroad); nonfinite (see below); and, when per-object overlap was computed,
    object_collision `[N]` (raw).

    An episode whose simulated ego state or ego metrics are NaN / inf at any valid step
    has nonfinite = 1 and is a failure: every discrete event reads 1, score 0, and the
    continuous aggregates (progress, ade, ...) NaN (`mark_nonfinite`).
    """
    with jax.named_scope("metrics.episode"):
        x = rollout_out.extras if extras is None else extras
        valid = x["ego_valid"]
        f = lambda b: jnp.any(b & valid).astype(jnp.float32)
        out = {k: f(x[f"ego_{k}"]) for k in ("red_light", "off_route", "wrong_way", "infeasible")}
        out["raw_collision"] = f(x["ego_overlap"])
        out["raw_offroad"] = f(x["ego_offroad"])
        out["raw_failure"] = jnp.maximum(jnp.maximum(out["raw_collision"], out["raw_offroad"]), out["red_light"])
        # Each pair counts once. A contact is classified where it starts (a contact lasting
        # several steps is one event, judged by how it began, as in nuPlan), and every new
        # contact of the pair is judged again. A contact that began as the log's own overlap
        # stays exempt only while that holds: once the ego leaves its logged pose during it,
        # an at-fault step is at fault.
        contact = x["ego_contact"]  # [H, N]
        touched = contact != CONTACT_NONE
        onset = touched & ~jnp.concatenate([jnp.zeros_like(touched[:1]), touched[:-1]], 0)

        def logged_run(carry, step):
            touched_t, onset_t, contact_t = step
            started_logged = jnp.where(onset_t, contact_t == CONTACT_LOGGED, carry) & touched_t
            return started_logged, started_logged

        _, from_log = jax.lax.scan(logged_run, jnp.zeros_like(touched[0]), (touched, onset, contact))
        at_fault = contact == CONTACT_AT_FAULT
        pair_at_fault = jnp.any(at_fault & (onset | from_log), axis=0)  # [N]
        first = jnp.argmax(touched, axis=0)  # [N]
        first_class = jnp.where(jnp.any(touched, 0), jnp.take_along_axis(contact, first[None], 0)[0], CONTACT_NONE)
        pair_class = jnp.where(pair_at_fault, CONTACT_AT_FAULT, first_class)  # exempt pairs: by their first rule
        count = lambda code: jnp.sum(pair_class == code).astype(jnp.float32)
        out["collision_pairs"] = count(CONTACT_AT_FAULT)
        for code, name in CONTACT_NAMES.items():
            if code != CONTACT_AT_FAULT:
                out[f"exempt_{name}_pairs"] = count(code)
        out["collision"] = (out["collision_pairs"] > 0).astype(jnp.float32)
        out["offroad"] = f(x["ego_offroad_at_fault"])
        out["offroad_artefact_steps"] = jnp.sum(x["ego_offroad"] & ~x["ego_offroad_at_fault"] & valid).astype(jnp.float32)
        out["failure"] = jnp.maximum(jnp.maximum(out["collision"], out["offroad"]), out["red_light"])
        progress = jnp.sum(jnp.where(valid, x["ego_route_s"] - x["ego_route_s_prev"], 0.0))
        # The log's progress over the same steps, from the log at the step before the first.
        ego = scenario.object_metadata.is_sdc
        first = rollout_out.timesteps[0] - 1
        log0 = take_object(trajectory_at(scenario.log_trajectory, first), ego)
        ls = rollout_out.log_states
        log_xy = jnp.stack([select_index(ls.x, ego, 1), select_index(ls.y, ego, 1)], -1)  # [H, 2]
        log_valid = select_index(ls.valid, ego, 1)
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
        return mark_nonfinite(out, nonfinite_episode(scenario, rollout_out, x))


# The simulated ego state fields and the per-step ego metrics the episode aggregates read:
# a NaN / inf in any of them at a valid ego step makes the whole episode non-finite.
_EGO_STATE_FIELDS = ("x", "y", "yaw", "vel_x", "vel_y", "length", "width")
_EGO_FLOAT_EXTRAS = ("ego_route_s", "ego_route_s_prev", "ego_route_lateral", "ego_ttc", "ego_lon_accel",
                     "ego_lat_accel", "ego_jerk")
# Discrete events a non-finite episode counts as happened: with a NaN pose, comparisons are
# False and every test would otherwise read "no collision, on the road" -- a success.
NONFINITE_EVENTS = ("failure", "collision", "offroad", "red_light", "off_route", "wrong_way", "infeasible")
# Continuous aggregates with no meaning once the state is non-finite: NaN, never a number.
NONFINITE_UNDEFINED = ("progress", "progress_ratio", "ade", "fde", "comfort", "ttc_min")


def nonfinite_episode(scenario: Scenario, rollout_out, extras: dict) -> jax.Array:
    """`[]` float 0/1: the simulated ego state or one of its metrics is NaN / inf at some valid step."""
    ego = scenario.object_metadata.is_sdc
    valid = extras["ego_valid"]
    states = rollout_out.states
    bad = jnp.zeros_like(valid)
    for f in _EGO_STATE_FIELDS:
        bad = bad | ~jnp.isfinite(select_index(getattr(states, f), ego, 1))
    for k in _EGO_FLOAT_EXTRAS:
        if k in extras:
            bad = bad | ~jnp.isfinite(extras[k])
    bad = bad | (extras["ego_log_valid"] & ~jnp.isfinite(extras["ego_log_divergence"]))
    return jnp.any(bad & valid).astype(jnp.float32)


def mark_nonfinite(out: dict[str, jax.Array], nonfinite: jax.Array) -> dict[str, jax.Array]:
    """Adds `nonfinite` and makes such an episode a failure: every discrete event 1 (also any
    other scalar `*collision` / `*offroad` / `*failure` entry, e.g. the raw ones), score 0, the
    continuous aggregates NaN. A finite episode is returned unchanged."""
    bad = nonfinite > 0
    out = dict(out, nonfinite=nonfinite)
    for k, v in out.items():
        if jnp.ndim(v) != 0 or k == "nonfinite":
            continue
        if k in NONFINITE_EVENTS or k.endswith(("collision", "offroad", "failure")):
            out[k] = jnp.where(bad, jnp.ones_like(v), v)
        elif k in NONFINITE_UNDEFINED:
            out[k] = jnp.where(bad, jnp.full_like(v, jnp.nan), v)
    out["score"] = jnp.where(bad, jnp.zeros_like(out["score"]), out["score"])
    return out
