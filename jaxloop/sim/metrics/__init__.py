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
  1 m / 15 degrees of its logged pose. Per episode (`offroad_charged`), an ego or object
  whose logged box is off the road at the episode's first step (a driveway, street
  parking outside the mapped road edges) is not charged until it has been on the road
  (every corner) at some step; from then on every at-fault step counts.
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

The registry (`jaxloop.sim.metrics.registry`)
Every metric above is one `Metric` entry of `DEFAULT`: its per-step function (per object
`[N]` where it has that form, the ego's value being its row), its episode reduction, which
direction is better, its at-fault variant, whether it is a failure event, what the gate
checks and the reward weight of its term. `step_metrics`, `episode_metrics`,
`nonfinite_episode` and `mark_nonfinite` iterate a registry (`registry=`), and so do
evaluation, perturbation deltas, the gate and `jaxloop.sim.rewards.step_reward`: a metric
added to a registry (`DEFAULT.register(Metric(...))`) is computed, reduced, reported,
compared and gated without another change.
"""

from __future__ import annotations

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
                                       offroad_charged, recorded_objects, start_offroad)
from jaxloop.sim.metrics.motion import (ACCEL_LIMIT, CURVATURE_LIMIT, OFF_ROUTE_DISTANCE, RED_LIGHT_LATERAL, TTC_CAP,
                                        TTC_THRESHOLD, WRONG_WAY_ANGLE, WRONG_WAY_LANE_RADIUS, WRONG_WAY_MIN_SPEED,
                                        ComfortLimits, comfort, inverse_bicycle_unclipped, kinematic_infeasibility,
                                        lane_start_directions, light_geometry, log_divergence, off_route,
                                        red_light_crossing, route_progress, time_to_collision, wrong_way)
from jaxloop.sim.metrics.registry import (DEFAULT, MIN_LOG_PROGRESS, MIN_PROGRESS_RATIO, REDUCTIONS, EpisodeInputs,
                                          GateSpec, Metric, MetricsConfig, Registry, StepInputs, _last_valid,
                                          ego_value, reduce_steps)
from jaxloop.sim.metrics.road import (EDGE_TIE_TOLERANCE, corner_road_distance, edge_offroad, ego_corner_road_distance,
                                      ego_offroad, offroad, offroad_surrogate, signed_edge_distance)


# ----------------------------------------------------------------------------- per step, per episode


def step_metrics(scenario: Scenario, prev_state: SimState, state: SimState, info=None, *,
                 config: MetricsConfig = MetricsConfig(), registry: Registry = DEFAULT) -> dict[str, jax.Array]:
    """Metrics of one transition, usable as `rollout(..., extras_fn=step_metrics)`.

    Every step entry of `registry` with key `k` gives `ego_{k}` (the ego's value) and, while
    its per-object form is on (`Metric.per_object_on(config)`), `{k}` `[N]` whose row at the
    ego is `ego_{k}`. With `DEFAULT`, the ego entries are scalars `[]`: ego_valid,
    ego_overlap, ego_overlap_at_fault, ego_offroad, ego_offroad_at_fault, ego_log_divergence,
    ego_log_valid, ego_infeasible, ego_route_s, ego_route_s_prev, ego_route_lateral,
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
        inputs = StepInputs(scenario, prev_state, state, info, config)
        out: dict[str, jax.Array] = {}
        for metric in registry.step_entries:
            key = metric.step_key
            if metric.per_object_on(config):
                value = metric.step(inputs)
                out[metric.objects_key] = value
                out[f"ego_{key}"] = select_index(value, inputs.ego)
            else:
                out[f"ego_{key}"] = ego_value(metric, inputs)
        return out


def episode_metrics(scenario: Scenario, rollout_out, extras: dict | None = None, *,
                    registry: Registry = DEFAULT) -> dict[str, jax.Array]:
    """Aggregates per-step `step_metrics` outputs `[H, ...]` of one episode into scalars.

    `extras` defaults to `rollout_out.extras`. Every episode entry of `registry` gives its
    `name` (`Metric.reduce` over the valid ego steps), and a per-object entry with an
    `object_name` that too, `[N]`, when its `[N]` step form was computed (reduced over the
    steps each object is valid; "any" gives bool). With `DEFAULT`: red_light, off_route,
    wrong_way, infeasible (any valid step, float 0/1); raw_collision, raw_offroad (the raw metrics
    on any valid step) and raw_failure (either, or red light); the at-fault collision
    (some contact is at fault where it starts, or at a later step of a contact that began
    as the log's overlap) and offroad (a corner off the road
    that is not an artefact, on a valid step, once the ego has been on the road if its log
    starts off it: `offroad_charged`) and failure (either, or red light);
    collision_pairs (pairs with an at-fault contact), exempt_{logged, stopped_ego,
    rear, lateral}_pairs (the other touched pairs, by the rule of their first contact),
    offroad_artefact_steps (raw offroad steps that are all artefact),
    offroad_start_exempt_steps (at-fault offroad steps before an ego that starts off the
    road has been on it); progress (m along the route), log_progress, progress_ratio,
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
        ep = EpisodeInputs(scenario, rollout_out, x, registry)
        out = {metric.name: ep.value(metric.name) for metric in registry.episode_entries}
        for metric in registry:
            if metric.object_name is None:
                continue
            if metric.object_reduce is not None:
                value = metric.object_reduce(ep)
            elif metric.objects_key in x:
                mask = x["valid"] if metric.valid is None else x["valid"] & x[metric.valid]
                value = reduce_steps(metric.reduce, x[metric.objects_key], mask, metric.empty)
                value = value > 0 if metric.reduce == "any" else value
            else:
                value = None
            if value is not None:
                out[metric.object_name] = value
        return mark_nonfinite(out, nonfinite_episode(scenario, rollout_out, x, registry=registry), registry=registry)


# The simulated ego state fields whose NaN / inf at a valid ego step makes the whole episode
# non-finite; so does one in a floating-point ego step output of the registry (where its
# `Metric.valid` flag, if any, is set): e.g. route_s, ttc, lon_accel, log_divergence.
_EGO_STATE_FIELDS = ("x", "y", "yaw", "vel_x", "vel_y", "length", "width")
# Discrete events a non-finite episode counts as happened: with a NaN pose, comparisons are
# False and every test would otherwise read "no collision, on the road" -- a success.
NONFINITE_EVENTS = tuple(m.name for m in DEFAULT.episode_entries if m.nonfinite == "one")
# Continuous aggregates with no meaning once the state is non-finite: NaN, never a number.
NONFINITE_UNDEFINED = tuple(m.name for m in DEFAULT.episode_entries if m.nonfinite == "nan")


def nonfinite_episode(scenario: Scenario, rollout_out, extras: dict, *, registry: Registry = DEFAULT) -> jax.Array:
    """`[]` float 0/1: the simulated ego state or one of its metrics is NaN / inf at some valid step."""
    ego = scenario.object_metadata.is_sdc
    valid = extras["ego_valid"]
    states = rollout_out.states
    bad = jnp.zeros_like(valid)
    for f in _EGO_STATE_FIELDS:
        bad = bad | ~jnp.isfinite(select_index(getattr(states, f), ego, 1))
    for metric in registry.step_entries:
        k = f"ego_{metric.step_key}"
        if k not in extras or not jnp.issubdtype(extras[k].dtype, jnp.floating):
            continue
        v = extras[k]
        nonfinite = jnp.any(~jnp.isfinite(v.reshape(v.shape[0], -1)), -1)  # [H]
        bad = bad | (nonfinite if metric.valid is None else extras[f"ego_{metric.valid}"] & nonfinite)
    return jnp.any(bad & valid).astype(jnp.float32)


def mark_nonfinite(out: dict[str, jax.Array], nonfinite: jax.Array, *,
                   registry: Registry = DEFAULT) -> dict[str, jax.Array]:
    """Adds `nonfinite` and makes such an episode a failure: every scalar entry of `registry` as its
    `Metric.nonfinite` says (events 1, the score 0, the continuous aggregates NaN; also any other
    scalar `*collision` / `*offroad` / `*failure` entry reads 1). A finite episode is returned unchanged."""
    bad = nonfinite > 0
    out = dict(out, nonfinite=nonfinite)
    for k, v in out.items():
        if jnp.ndim(v) != 0 or k == "nonfinite":
            continue
        rule = registry[k].nonfinite if k in registry else "one" if k.endswith(("collision", "offroad",
                                                                                  "failure")) else "keep"
        if rule == "one":
            out[k] = jnp.where(bad, jnp.ones_like(v), v)
        elif rule == "nan":
            out[k] = jnp.where(bad, jnp.full_like(v, jnp.nan), v)
        elif rule == "zero":
            out[k] = jnp.where(bad, jnp.zeros_like(v), v)
    return out
