"""Fault attribution: which contacts and offroad corners the ego is blamed for (see `jaxloop.sim.metrics`).

Offroad is judged in two layers. Per step, a corner off the road is at fault unless it is
an artefact (`ego_offroad_corners`: the logged box is off the road there too while the
object is near its logged pose). Per episode, an object whose logged box is off the road
at the episode's first step (a car in a driveway or on street parking the map's road edges
do not cover) is not charged until it has been on the road, every corner on it, at some
step of the rollout (`offroad_charged`); from then on every at-fault step counts.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxloop.sim import geometry as geo
from jaxloop.sim.compute import cos_sin, materialize
from jaxloop.sim.datatypes import SYNTHETIC_ID, ObjectState, RoadMap, Route, Scenario
from jaxloop.sim.metrics.boxes import _corners, _separation, ego_separation, select_index, take_object
from jaxloop.sim.metrics.road import _edges_near, edge_offroad, ego_offroad, offroad

STOPPED_SPEED = 0.05  # m/s: below it an object is stopped (nuPlan's threshold)
NEAR_LOG_DISTANCE = 1.0  # m: within it (and NEAR_LOG_YAW) an object is still at its logged pose
NEAR_LOG_YAW = math.radians(15.0)
IN_LANE_LATERAL = 1.0  # m from the route (the logged path on lane centres): the ego keeps to its lane

# What classifies a contact of the ego with another object (`contact_classes`), in the
# order the rules are applied. Everything but CONTACT_AT_FAULT is a contact the ego is
# not blamed for.
CONTACT_NONE = 0
CONTACT_AT_FAULT = 1
CONTACT_LOGGED = 2  # the log holds the same overlap, and both are near their logged poses
CONTACT_STOPPED_EGO = 3  # the ego is stopped
CONTACT_REAR = 4  # the other object meets the ego's rear bumper
CONTACT_LATERAL = 5  # a side contact while the ego keeps to its lane
CONTACT_NAMES = {CONTACT_AT_FAULT: "at_fault", CONTACT_LOGGED: "logged", CONTACT_STOPPED_EGO: "stopped_ego",
                 CONTACT_REAR: "rear", CONTACT_LATERAL: "lateral"}


def near_log(state: ObjectState, log_state: ObjectState) -> jax.Array:
    """`[...]` bool: valid, logged valid, within NEAR_LOG_DISTANCE of the logged position and NEAR_LOG_YAW of its yaw.

    1 m and 15 degrees are well above what replaying the log through the dynamics drifts
    (centimetres) and below what a different manoeuvre needs (a lane change is ~3.5 m),
    so "near its log" means "doing what the log did".
    """
    d2 = (state.x - log_state.x) ** 2 + (state.y - log_state.y) ** 2
    dyaw = jnp.abs(geo.wrap_angle(state.yaw - log_state.yaw))
    return state.valid & log_state.valid & (d2 <= NEAR_LOG_DISTANCE ** 2) & (dyaw <= NEAR_LOG_YAW)


def inherited_contacts(state: ObjectState, log_state: ObjectState, ego: jax.Array, recorded: jax.Array,
                       sep: jax.Array | None = None) -> jax.Array:
    """`[N]` bool: the logged ego overlaps object j at this step, and both are near their logged poses.

    Such an overlap is in the log (label noise: boxes of real logs overlap where the
    vehicles did not touch), not caused by the policy. `recorded` `[N]` marks objects
    whose log is a recording (`recorded_objects`): an injected road user's "log" is the
    path it was given, so an overlap with it is never inherited. `sep` is
    `ego_separation(log_state, ego)` when the caller has it.
    """
    if sep is None:
        sep = ego_separation(log_state, ego)
    near = near_log(state, log_state)
    return (sep < 0.0) & near & select_index(near, ego) & recorded


def recorded_objects(scenario: Scenario) -> jax.Array:
    """`[N]` bool: objects of the source log, i.e. not injected (`SYNTHETIC_ID`)."""
    return scenario.object_metadata.ids != SYNTHETIC_ID


def closed_in_from_behind(prev: ObjectState, ego: jax.Array) -> jax.Array:
    """`[N]` bool: at the previous step the object was wholly ahead of the ego's front bumper and across its width.

    A contact with such an object is the ego's front running into it, even when the
    object is small or the ego fast enough that at the sampled step it is already past
    the front edge, inside the ego's box (15 m/s moves the bumper 1.5 m a step; a
    pedestrian is 0.5 m deep).
    """
    e = take_object(prev, ego)
    c, s = cos_sin(e.yaw)
    corners = _corners(prev)  # [N, 4, 2]
    dx, dy = corners[..., 0] - e.x, corners[..., 1] - e.y
    lon, lat = dx * c + dy * s, -dx * s + dy * c  # [N, 4] in the ego's frame at the previous step
    ahead = jnp.min(lon, -1) >= e.length / 2
    across = (jnp.min(lat, -1) < e.width / 2) & (jnp.max(lat, -1) > -e.width / 2)
    return e.valid & prev.valid & ahead & across


def contact_classes(state: ObjectState, log_state: ObjectState, ego: jax.Array, in_lane: jax.Array,
                    recorded: jax.Array, sep: jax.Array | None = None,
                    prev: ObjectState | None = None) -> jax.Array:
    """Per other object `[N]` int32: `CONTACT_NONE` without contact, else who is blamed (the CONTACT_* codes).

    A contact is an overlap of the valid ego's box with a valid object's. In the spirit
    of nuPlan's at-fault collisions, the first rule that applies decides:

    1. CONTACT_LOGGED: the logged ego overlaps the same object at the same step and
       both are near their logged poses (`near_log`): the overlap is in the log.
    2. CONTACT_STOPPED_EGO: the ego is stopped (speed < STOPPED_SPEED): it was hit.
    3. CONTACT_AT_FAULT: the other object is stopped (the moving ego ran into it), or
       the ego's front bumper meets the other box, or the object was wholly ahead of
       the front bumper and across the ego's width at the previous step
       (`closed_in_from_behind`, with `prev` the previous state: the front swept into
       it between two samples), so the ego ran into it; or the ego's rear bumper meets
       it while the ego reverses.
    4. CONTACT_REAR: the ego's rear bumper meets the other box: it was hit from behind.
    5. CONTACT_LATERAL: a side contact while `in_lane` (the ego keeps to its lane, so
       the other object came into it); out of its lane (a lane change, cutting a
       corner) a side contact is CONTACT_AT_FAULT.

    Bumpers are the box's front and rear edges (zero-width boxes across the ego). None
    of the exemptions is a way out: the log rule needs the ego to stay where the log
    was, the stopped rule a stopped ego (a moving ego cannot reach a contact while
    stopped), the rear rule contact behind a forward-moving ego, the lateral rule an
    ego on its logged lane. `sep` is `ego_separation(state, ego)` when the caller has it.
    """
    with jax.named_scope("metrics.contact_classes"):
        if sep is None:
            sep = ego_separation(state, ego)
        e = take_object(state, ego)
        contact = e.valid & (sep < 0.0)
        logged = inherited_contacts(state, log_state, ego, recorded)
        ce, se = cos_sin(e.yaw)
        co, so = cos_sin(state.yaw)
        hl, hw = e.length / 2, e.width / 2
        bumper = lambda sign: _separation(e.x + sign * hl * ce, e.y + sign * hl * se, -se, ce, hw, 0.0,
                                          state.x, state.y, co, so, state.length / 2, state.width / 2) < 0.0
        front, rear = bumper(1.0), bumper(-1.0)
        speed2 = state.vel_x ** 2 + state.vel_y ** 2
        stopped_ego = select_index(speed2, ego) < STOPPED_SPEED ** 2
        stopped_other = speed2 < STOPPED_SPEED ** 2
        reversing = e.vel_x * ce + e.vel_y * se < -STOPPED_SPEED
        code = jnp.where(in_lane, CONTACT_LATERAL, CONTACT_AT_FAULT)
        code = jnp.where(rear, CONTACT_REAR, code)
        if prev is not None:
            front = front | closed_in_from_behind(prev, ego)
        code = jnp.where(stopped_other | front | (rear & reversing), CONTACT_AT_FAULT, code)
        code = jnp.where(stopped_ego, CONTACT_STOPPED_EGO, code)
        code = jnp.where(logged, CONTACT_LOGGED, code)
        return jnp.where(contact, code, CONTACT_NONE).astype(jnp.int32)


def ego_in_lane(route_lateral: jax.Array, route: Route) -> jax.Array:
    """`[]` bool: the ego keeps to its lane, approximated as within IN_LANE_LATERAL of its route.

    The route is the logged path snapped to lane centres (`jaxloop.data.route`), so it is
    the centre of the lane the log drove in; a 2 m wide ego within 1 m of the centre of a
    3.5-4 m lane has its footprint inside that lane. Without a route, never.
    """
    return jnp.any(route.valid) & (route_lateral <= IN_LANE_LATERAL)


def ego_offroad_corners(state: ObjectState, log_state: ObjectState, roadmap: RoadMap, ego: jax.Array,
                        edge_cull: int = 0) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(valid `[]`, off `[4]`, artefact `[4]`): the ego's corners off the road, and those that are map or label artefacts.

    A corner is an artefact when the same corner of the logged ego box is off the road
    at the same step while the ego is near its logged pose (`near_log`): the road edge
    cuts through where the log drove (a map-compile or labelling artefact), not where
    the policy took the ego. Far from its log, no corner is exempt. The logged corners
    go through the same one-pass test as the ego's (8 points), against the same edges
    (with `edge_cull`, the ones nearest the ego, which is within 1 m of the log when it matters).
    """
    e, log_e = take_object(state, ego), take_object(log_state, ego)
    corners = jnp.concatenate([_corners(e), _corners(log_e)], 0)  # [8, 2]
    corners = jnp.stack(materialize(*jnp.moveaxis(corners, -1, 0)), -1)
    off = edge_offroad(corners, *_edges_near(e, roadmap, edge_cull))
    return e.valid, off[:4], off[4:] & near_log(e, log_e)


def offroad_artefacts(state: ObjectState, log_state: ObjectState, roadmap: RoadMap, ego: jax.Array,
                      edge_cull: int = 0) -> jax.Array:
    """`[4]` bool per ego corner: exempt as a map or label artefact (the third output of `ego_offroad_corners`,
    testing only the four logged corners, for the surrogates)."""
    e, log_e = take_object(state, ego), take_object(log_state, ego)
    return edge_offroad(_corners(log_e), *_edges_near(e, roadmap, edge_cull)) & near_log(e, log_e)


def start_offroad(log_start: ObjectState, roadmap: RoadMap, ego: jax.Array | None = None) -> jax.Array:
    """Whether the logged box is off the road at the episode's first step: `[N]` (or `[]` for `ego`), the raw test.

    `log_start` is every object's logged state at the step the episode starts from (the
    initial state of the rollout). Raw offroad of the logged boxes (`road.offroad`, or
    `road.ego_offroad` for the ego alone: the same corners against the same edges).
    """
    return offroad(log_start, roadmap) if ego is None else ego_offroad(log_start, roadmap, ego)


def offroad_charged(at_fault: jax.Array, on_road: jax.Array, starts_off: jax.Array) -> jax.Array:
    """`[H, ...]` bool: the at-fault offroad steps an object is charged with over one episode.

    at_fault `[H, ...]`: the per-step at-fault offroad (a corner off the road that is not an
    artefact); on_road `[H, ...]`: valid with every corner on the road (raw offroad false);
    starts_off `[...]`: the logged box is off the road at the episode's first step
    (`start_offroad`).

    An object that starts off the mapped road (a driveway, street parking outside the road
    edges: the map does not cover where it is) is not charged until it has been on the
    road at some step of the rollout; from that step on the normal rule applies, so one
    that joins the road and leaves it again is charged, and one that starts on the road
    is charged as before. GPUDrive and PufferDrive count offroad as crossing a road edge,
    so an agent that stays in an unmapped driveway is not offroad there either. The
    exemption ends for good at the first step on the road: it cannot be re-earned.
    """
    joined = jnp.cumsum(on_road.astype(jnp.int32), axis=0) > 0
    return at_fault & (~starts_off | joined)
