"""The at-fault layer: who is blamed for a contact, which offroad corners are the log's, each pair once."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxloop.data.toy import make_toy_scenario, make_track_scenario
from jaxloop.sim import metrics as m
from jaxloop.sim.datatypes import DT, ObjectState
from jaxloop.sim.env import Env
from jaxloop.sim.rollout import constant_action_policy, log_replay_policy, rollout

T = 91
TIME = np.arange(T) * DT


def _objs(rows):
    """ObjectState from rows (x, y, yaw, speed[, length, width]); velocity along the heading (speed < 0: reversing)."""
    rows = [tuple(r) + (4.0, 2.0)[len(r) - 4:] for r in rows]
    x, y, yaw, v, length, width = np.asarray(rows, np.float64).T
    c = lambda z: jnp.asarray(z, jnp.float32)
    return ObjectState(x=c(x), y=c(y), z=c(0 * x), vel_x=c(v * np.cos(yaw)), vel_y=c(v * np.sin(yaw)), yaw=c(yaw),
                       length=c(length), width=c(width), height=c(0 * x + 1.5), valid=jnp.ones(len(rows), bool))


classes = jax.jit(m.contact_classes)
FAR_LOG = _objs([(0.0, 0.0, 0.0, 0.0), (-30.0, 10.0, 0.0, 0.0)])  # a log where the ego (0) touches nothing


RECORDED = jnp.ones(2, bool)  # both objects of these two-object states come from the log


def _cls(state, log=FAR_LOG, in_lane=True, recorded=RECORDED):
    return int(classes(state, log, 0, jnp.asarray(in_lane), recorded)[1])


# ---------------------------------------------------------------- collisions, one step


def test_stopped_or_forward_ego_hit_from_behind_is_not_at_fault():
    # Ego 4 m long at x = 0 (rear bumper at x = -2); the other's front at -3.9 + 2 = -1.9: 0.1 m into the ego.
    assert _cls(_objs([(0, 0, 0, 0.0), (-3.9, 0, 0, 5.0)])) == m.CONTACT_STOPPED_EGO
    # Moving forward at 2 m/s and hit from behind: a rear collision.
    assert _cls(_objs([(0, 0, 0, 2.0), (-3.9, 0, 0, 5.0)])) == m.CONTACT_REAR
    # Reversing into it (2 m/s backwards): the ego's doing.
    assert _cls(_objs([(0, 0, 0, -2.0), (-3.9, 0, 0, 5.0)])) == m.CONTACT_AT_FAULT
    # Backing into a stopped car while moving forward is impossible; a stopped car at the
    # rear of a moving ego is still the ego's (nuPlan: a stopped track is at fault).
    assert _cls(_objs([(0, 0, 0, 2.0), (-3.9, 0, 0, 0.0)])) == m.CONTACT_AT_FAULT


def test_ego_driving_into_a_car_ahead_is_at_fault():
    # Front bumper at x = 2; the other's rear at 3.9 - 2 = 1.9.
    assert _cls(_objs([(0, 0, 0, 10.0), (3.9, 0, 0, 0.0)])) == m.CONTACT_AT_FAULT  # stopped car
    assert _cls(_objs([(0, 0, 0, 10.0), (3.9, 0, 0, 5.0)])) == m.CONTACT_AT_FAULT  # slower car
    assert _cls(_objs([(0, 0, 0, 10.0), (4.1, 0, 0, 5.0)])) == m.CONTACT_NONE  # 0.1 m clear


def test_logged_overlap_is_inherited_only_near_the_logged_pose():
    # The log: ego at x = 0, the other (moving) at 3.9, 0.1 m into each other.
    log = _objs([(0, 0, 0, 10.0), (3.9, 0, 0, 5.0)])
    # Replaying the log: the overlap is the log's.
    assert _cls(log, log) == m.CONTACT_LOGGED
    assert bool(m.inherited_contacts(log, log, 0, RECORDED)[1])
    # The same overlap with an injected road user (its "log" is the path it was given): the policy's.
    injected = jnp.array([True, False])
    assert not bool(m.inherited_contacts(log, log, 0, injected)[1])
    assert _cls(log, log, recorded=injected) == m.CONTACT_AT_FAULT
    # 0.5 m ahead of its logged pose (within 1 m): still the log's overlap.
    assert _cls(_objs([(0.5, 0, 0, 10.0), (3.9, 0, 0, 5.0)]), log) == m.CONTACT_LOGGED
    # 1.5 m ahead of its logged pose, 1.6 m deep in the same car: the policy drove there.
    assert _cls(_objs([(1.5, 0, 0, 10.0), (3.9, 0, 0, 5.0)]), log) == m.CONTACT_AT_FAULT
    # At the logged position but turned 20 degrees (over 15): not the log's pose either.
    turned = _objs([(0, 0, math.radians(20.0), 10.0), (3.9, 0, 0, 5.0)])
    assert _cls(turned, log) == m.CONTACT_AT_FAULT
    # The other object off its logged pose (a reactive agent elsewhere): not inherited.
    assert _cls(_objs([(0, 0, 0, 10.0), (2.5, 0, 0, 5.0)]), log) == m.CONTACT_AT_FAULT


def test_lateral_contact_depends_on_keeping_to_the_lane():
    # A 3 m car alongside, 0.1 m into the ego's left side (y: ego up to 1, it from 0.9);
    # x from -1.5 to 1.5, so neither bumper (x = +-2) meets it.
    s = _objs([(0, 0, 0, 10.0), (0, 1.9, 0, 10.0, 3.0, 2.0)])
    assert _cls(s, in_lane=True) == m.CONTACT_LATERAL
    assert _cls(s, in_lane=False) == m.CONTACT_AT_FAULT
    # A parked car the ego sideswipes in its own lane: at fault.
    parked = _objs([(0, 0, 0, 10.0), (0, 1.9, 0, 0.0, 3.0, 2.0)])
    assert _cls(parked, in_lane=True) == m.CONTACT_AT_FAULT
    # In its lane = within 1 m of the route (the toy route runs along y = 0).
    route = make_toy_scenario().route
    assert bool(m.ego_in_lane(jnp.asarray(0.5), route)) and not bool(m.ego_in_lane(jnp.asarray(1.5), route))
    assert not bool(m.ego_in_lane(jnp.asarray(0.0), route.replace(valid=jnp.zeros_like(route.valid))))


def test_classes_batch_over_leading_dims():
    rows = [[(0, 0, 0, 0.0), (-3.9, 0, 0, 5.0)], [(0, 0, 0, 10.0), (3.9, 0, 0, 0.0)],
            [(0, 0, 0, 10.0), (0, 1.9, 0, 10.0, 3.0, 2.0)], [(0, 0, 0, 10.0), (10.0, 0, 0, 5.0)],
            [(0, 0, 0, 2.0), (-3.9, 0, 0, 5.0)], [(0, 0, 0, 10.0), (0, 1.9, 0, 10.0, 3.0, 2.0)]]
    states = [_objs(r) for r in rows]
    want = np.array([_cls(s) for s in states]).reshape(2, 3)
    batch = jax.tree.map(lambda *a: jnp.stack(a).reshape((2, 3) + a[0].shape), *states)
    log = jax.tree.map(lambda a: jnp.broadcast_to(a, (2, 3) + a.shape), FAR_LOG)
    fn = jax.jit(jax.vmap(jax.vmap(lambda s, lg: m.contact_classes(s, lg, 0, jnp.asarray(True), RECORDED))))
    got = np.asarray(fn(batch, log))[..., 1]
    np.testing.assert_array_equal(got, want)
    assert want.reshape(-1).tolist() == [m.CONTACT_STOPPED_EGO, m.CONTACT_AT_FAULT, m.CONTACT_LATERAL,
                                         m.CONTACT_NONE, m.CONTACT_REAR, m.CONTACT_LATERAL]


# ---------------------------------------------------------------- episodes


def _crash_scenario(braking_log: bool):
    """Ego log at 10 m/s from x = 0 towards a stopped car at x = 40; with `braking_log`
    it brakes at 5 m/s^2 from t = 2 s and stops at x = 30."""
    stopped = dict(x=np.full(T, 40.0), y=np.zeros(T), yaw=np.zeros(T), vel_x=np.zeros(T), vel_y=np.zeros(T))
    tb = np.clip(TIME - 2.0, 0.0, 2.0)
    x = np.where(TIME < 2.0, 10.0 * TIME, 20.0 + 10.0 * tb - 2.5 * tb ** 2) if braking_log else 10.0 * TIME
    v = np.where(TIME < 2.0, 10.0, 10.0 - 5.0 * tb) if braking_log else np.full(T, 10.0)
    ego = dict(x=x, y=np.zeros(T), yaw=np.zeros(T), vel_x=v, vel_y=np.zeros(T))
    route = np.stack([np.linspace(0.0, 120.0, 32), np.zeros(32)], -1)
    return make_track_scenario([ego, stopped], num_objects=8, route_xy=route)


def _run(sc, policy_name):
    env = Env()

    @jax.jit
    def go(sc):
        policy = log_replay_policy(env) if policy_name == "expert" else constant_action_policy(jnp.zeros(2))
        state = env.reset(sc, jax.random.key(0))
        _, out = rollout(env, sc, state, policy, sc.num_steps - 11, extras_fn=m.step_metrics)
        return m.episode_metrics(sc, out), out

    return go(sc)


def test_driving_into_a_stopped_car_counts_the_pair_once():
    # The log stops at x = 30; the ego coasts on at 10 m/s (x = t at step t) into the car at
    # x = 40: boxes 4.5 m long overlap while |t - 40| < 4.5, steps 36 .. 44 (9 steps).
    ep, out = _run(_crash_scenario(braking_log=True), "coast")
    codes = np.asarray(out.extras["ego_contact"])[:, 1]
    assert int(np.sum(codes == m.CONTACT_AT_FAULT)) == 9
    assert float(ep["collision_pairs"]) == 1 and float(ep["collision"]) == 1 and float(ep["failure"]) == 1
    assert float(ep["raw_collision"]) == 1 and float(ep["score"]) == 0
    # The expert replays its braking log: no contact at all.
    ep, _ = _run(_crash_scenario(braking_log=True), "expert")
    assert float(ep["raw_collision"]) == 0 and float(ep["collision"]) == 0
    # A log that drives into the car itself, replayed: raw collision, inherited, not at fault.
    ep, out = _run(_crash_scenario(braking_log=False), "expert")
    assert float(ep["raw_collision"]) == 1 and float(ep["collision"]) == 0 and float(ep["failure"]) == 0
    assert float(ep["exempt_logged_pairs"]) == 1 and float(ep["collision_pairs"]) == 0
    # Score multipliers all 1; TTC (not attributed) reads the crash: (5 * 1 + 5 * 0 + 2 * 1) / 12.
    np.testing.assert_allclose(ep["score"], 7.0 / 12.0, atol=1e-3)


def test_each_contact_is_judged_where_it_starts():
    sc = make_toy_scenario()
    _, out = _run(sc, "expert")
    h, n = out.extras["ego_contact"].shape
    codes = np.zeros((h, n), np.int32)
    codes[5, 1] = m.CONTACT_STOPPED_EGO  # hit while stopped, then the ego moves on inside it: one contact
    codes[6:10, 1] = m.CONTACT_AT_FAULT
    codes[40, 3] = m.CONTACT_LOGGED  # the log's overlap ...
    codes[60, 3] = m.CONTACT_AT_FAULT  # ... and later a new contact with the same object, the ego's own
    codes[20:30, 2] = m.CONTACT_AT_FAULT  # one at-fault collision lasting 10 steps
    codes[50, 4] = m.CONTACT_REAR
    codes[55, 5] = m.CONTACT_LATERAL
    codes[70:73, 6] = m.CONTACT_LOGGED  # begins as the log's overlap, then the ego leaves its logged pose
    codes[73:75, 6] = m.CONTACT_AT_FAULT  # while still in contact: the exemption is gone
    codes[76:79, 7] = m.CONTACT_LOGGED  # the log's overlap throughout
    extras = dict(out.extras, ego_contact=jnp.asarray(codes))
    ep = m.episode_metrics(sc, out, extras)
    assert float(ep["collision_pairs"]) == 3 and float(ep["collision"]) == 1  # pairs 2, 3 and 6
    assert [float(ep[f"exempt_{k}_pairs"]) for k in ("stopped_ego", "logged", "rear", "lateral")] == [1, 1, 1, 1]
    codes[:, 2:4] = m.CONTACT_NONE
    codes[:, 6] = m.CONTACT_NONE
    ep = m.episode_metrics(sc, out, dict(out.extras, ego_contact=jnp.asarray(codes)))
    assert float(ep["collision_pairs"]) == 0 and float(ep["collision"]) == 0


def test_a_fast_ego_that_swallows_a_pedestrian_between_samples_is_at_fault():
    # At 15 m/s the ego's front moves 1.5 m a step. A 0.5 m pedestrian walking across at
    # 1.4 m/s is 0.56 m ahead of the front bumper (x = 2) at the previous step (ego at
    # x = -1.5: its centre at 1.06 + 1.5 = 2.56 in the ego frame, its back at 2.31 >= 2),
    # and at this step wholly inside the ego's box (centre 1.2: 0.95 .. 1.45 < 2), past the
    # front edge: the front ran into it.
    now = _objs([(0, 0, 0, 15.0), (1.2, 0, math.pi / 2, 1.4, 0.5, 0.5)])
    before = _objs([(-1.5, 0, 0, 15.0), (1.2, -0.14, math.pi / 2, 1.4, 0.5, 0.5)])
    assert _cls(now) == m.CONTACT_LATERAL  # the bumpers alone would read a side contact
    got = int(classes(now, FAR_LOG, 0, jnp.asarray(True), RECORDED, prev=before)[1])
    assert got == m.CONTACT_AT_FAULT
    # A car alongside at the previous step (not ahead) that comes into the ego's side: still lateral.
    side_now = _objs([(0, 0, 0, 10.0), (0, 1.9, 0, 10.0, 3.0, 2.0)])
    side_before = _objs([(-1.0, 0, 0, 10.0), (-1.0, 2.3, 0, 10.0, 3.0, 2.0)])
    assert int(classes(side_now, FAR_LOG, 0, jnp.asarray(True), RECORDED, prev=side_before)[1]) == m.CONTACT_LATERAL


# ---------------------------------------------------------------- offroad


def test_offroad_artefact_exempt_near_the_log_only():
    rm = make_toy_scenario().roadmap  # road edges at y = -1.75 (directed -x) and y = 5.25
    corners = jax.jit(m.ego_offroad_corners, static_argnums=4)
    # The logged ego at y = -1.0: its right corners at y = -2.0, 0.25 m beyond the lower edge.
    log = _objs([(10.0, -1.0, 0.0, 5.0)])

    def judge(ego_row, edge_cull=0):
        valid, off, artefact = corners(_objs([ego_row]), log, rm, 0, edge_cull)
        return bool(valid & jnp.any(off)), bool(valid & jnp.any(off & ~artefact))  # (raw, at fault)

    for cull in (0, 1):
        assert judge((10.0, -1.0, 0.0, 5.0), cull) == (True, False)  # the log's own pose: artefact
        assert judge((10.5, -1.2, 0.0, 5.0), cull) == (True, False)  # 0.54 m from it: still the log's
        assert judge((12.5, -1.0, 0.0, 5.0), cull) == (True, True)  # 2.5 m ahead of its log: at fault
        assert judge((10.0, -0.5, 0.0, 5.0), cull) == (False, False)  # on the road
    # Same corners as `offroad_artefacts` (the surrogate's exemption).
    np.testing.assert_array_equal(m.offroad_artefacts(_objs([(10.0, -1.0, 0.0, 5.0)]), log, rm, 0),
                                  [False, False, True, True])  # FL, RL, RR, FR
    # The log itself on the road: nothing is exempt.
    on_road = _objs([(10.0, -0.5, 0.0, 5.0)])
    assert not np.any(m.offroad_artefacts(_objs([(10.0, -1.0, 0.0, 5.0)]), on_road, rm, 0))


def test_surrogates_skip_only_what_the_log_holds():
    rm = make_toy_scenario().roadmap
    ego_off = _objs([(10.0, -1.0, 0.0, 5.0)])
    art = m.offroad_artefacts(ego_off, ego_off, rm, 0)
    full = float(m.offroad_surrogate(ego_off, rm, 0))
    kept = float(m.offroad_surrogate(ego_off, rm, 0, exempt=art))
    # Left corners (y = 0) 1.75 m inside the lower edge: tau * softplus((-1.75 + 0.5) / 0.1) =
    # 0.1 * softplus(-12.5) each; the right ones (0.25 m off) would add 0.1 * softplus(7.5) ~ 0.75 each.
    np.testing.assert_allclose(kept, 2 * 0.1 * np.log1p(np.exp(-12.5)), rtol=1e-3)
    np.testing.assert_allclose(full - kept, 2 * 0.1 * np.log1p(np.exp(7.5)), rtol=1e-4)
    log = _objs([(0, 0, 0, 10.0), (3.9, 0, 0, 5.0)])
    pen = lambda s: float(m.overlap_surrogate(s, 0, exempt=m.inherited_contacts(s, log, 0, RECORDED)))
    assert pen(log) == 0.0  # replaying the logged overlap: no push
    assert pen(_objs([(1.5, 0, 0, 10.0), (3.9, 0, 0, 5.0)])) > 1.0  # 1.6 m deep, off the log: pushed


# ---------------------------------------------------------------- offroad: objects that start off the mapped road

OFF_H = 30  # closed-loop steps
ONROAD, DRIVEWAY, LEAVES, REJOINS = range(4)


def _start_off_tracks():
    """Logs and planned (simulated) poses `[T]` of four cars on the toy road (edges at y = -1.75 and 5.25, so a
    2 m wide car is wholly on the road for y in [-0.75, 4.25] and wholly off it below y = -2.75). Logs: ONROAD
    at 10 m/s on y = 0; DRIVEWAY and REJOINS at 2 m/s on y = -5 (a driveway outside the mapped edges); LEAVES
    at 10 m/s on y = 3.5. Plans, k = t - 10 closed-loop steps: DRIVEWAY drifts 0.1 m/step to y = -7 (2 m off its
    log, still off the road); LEAVES drifts 0.1 m/step to y = 6 (its top corners off from y = 4.25, 1 m from its
    log at k = 10); REJOINS drives onto the road (y = -5 + 0.55 k to y = 0.5 at k = 10), stays there to k = 20,
    then leaves for y = -6.5 (k = 26 on: 1.5 m from its log, wholly off)."""
    t = np.arange(11 + OFF_H, dtype=np.float64)
    k = np.maximum(t - 10, 0)
    log = {ONROAD: (10.0 * t * DT, np.zeros_like(t)), DRIVEWAY: (60.0 + 2.0 * t * DT, np.full_like(t, -5.0)),
           LEAVES: (120.0 + 10.0 * t * DT, np.full_like(t, 3.5)), REJOINS: (180.0 + 2.0 * t * DT, np.full_like(t, -5.0))}
    plan = dict(log)
    plan[DRIVEWAY] = (log[DRIVEWAY][0], -5.0 - np.minimum(0.1 * k, 2.0))
    plan[LEAVES] = (log[LEAVES][0], 3.5 + np.minimum(0.1 * k, 2.5))
    y = np.where(k <= 10, -5.0 + 0.55 * k, np.where(k <= 20, 0.5, np.maximum(0.5 - 1.4 * (k - 20), -6.5)))
    plan[REJOINS] = (log[REJOINS][0], y)
    return log, plan


def _start_off_episodes():
    """The four cars in three scenes, the SDC (object 0) in turn ONROAD, DRIVEWAY and REJOINS, every car driven
    along its plan (`StateDynamics`: the action is the next pose); ego and per-agent episode metrics."""
    from jaxloop.sim.datatypes import stack_scenarios
    from jaxloop.sim.dynamics import StateDynamics
    from jaxloop.sim.env import EnvConfig
    log, plan = _start_off_tracks()
    orders = [[ONROAD, DRIVEWAY, LEAVES, REJOINS], [DRIVEWAY, ONROAD, LEAVES, REJOINS],
              [REJOINS, ONROAD, DRIVEWAY, LEAVES]]
    track = lambda xy: dict(x=xy[0], y=xy[1], yaw=np.zeros_like(xy[0]))
    scenes = stack_scenarios([make_track_scenario([track(log[i]) for i in order]) for order in orders])

    def poses(i):  # [T, 5] next-pose actions: x, y, yaw, vel_x, vel_y
        x, y = plan[i]
        return np.stack([x, y, 0 * x, np.gradient(x, DT), np.gradient(y, DT)], -1)

    plans = jnp.asarray(np.stack([np.stack([poses(i) for i in order], 1) for order in orders]), jnp.float32)
    env = Env(EnvConfig(controlled="vehicles", dynamics=StateDynamics(), non_ego_agent="log"))
    config = m.MetricsConfig(per_agent=True)

    @jax.jit
    @jax.vmap
    def go(sc, table):
        policy = lambda scenario, state, key: table[state.timestep + 1]
        _, out = rollout(env, sc, env.reset(sc, jax.random.key(0)), policy, OFF_H,
                         extras_fn=lambda s, p, n, i: m.step_metrics(s, p, n, i, config=config))
        return m.episode_metrics(sc, out), out.extras

    return orders, jax.device_get(go(scenes, plans))


def test_offroad_of_objects_that_start_off_the_mapped_road():
    orders, (ep, extras) = _start_off_episodes()
    for b, order in enumerate(orders):
        by_car = lambda v: {car: float(np.asarray(v)[b][j]) for j, car in enumerate(order)}
        raw, at_fault = by_car(ep["agent_raw_offroad"]), by_car(ep["agent_offroad"])
        # Raw offroad is Waymax's: every car but ONROAD has a corner off the road.
        assert raw == {ONROAD: 0.0, DRIVEWAY: 1.0, LEAVES: 1.0, REJOINS: 1.0}
        # DRIVEWAY is 2 m from its log, off the road, at fault step by step, but never on the road: not charged.
        # LEAVES started on the road and left it; REJOINS joined the road (k = 11 .. 20) and left it again.
        assert at_fault == {ONROAD: 0.0, DRIVEWAY: 0.0, LEAVES: 1.0, REJOINS: 1.0}
        step_fault = np.asarray(extras["agent_offroad_at_fault"])[b]  # [H, N]
        assert step_fault[:, order.index(DRIVEWAY)].sum() >= 10  # the per-step rule alone would charge it
        # REJOINS: at fault from the step it is wholly off again (y <= -2.75 at k = 23), not while pulling out.
        assert np.flatnonzero(step_fault[:, order.index(REJOINS)] & (np.arange(OFF_H) >= 10)).min() + 1 >= 21
        # The ego (object 0) by the same rule: its episode offroad is its per-agent row.
        assert float(ep["offroad"][b]) == at_fault[order[0]] and float(ep["raw_offroad"][b]) == raw[order[0]]
    # The steps the start rule exempts (the ego's diagnostic): the whole drift of DRIVEWAY as the ego; none on the
    # road; for REJOINS as the ego only those before it joined the road (pulling out, k = 1 .. 10).
    exempt = np.asarray(ep["offroad_start_exempt_steps"])
    ego_steps = np.asarray(extras["ego_offroad_at_fault"]).sum(-1)
    assert exempt[0] == 0 and exempt[1] == ego_steps[1] >= 10 and 0 < exempt[2] <= 10 < ego_steps[2]
