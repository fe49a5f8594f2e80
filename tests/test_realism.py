"""WOSAC-style realism: each feature on hand-built trajectories, the estimators' arithmetic, log vs shifted
rollout sets, determinism by seed."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxloop.data.toy import make_track_scenario
from jaxloop.realism import features as feats
from jaxloop.realism import likelihood as lk
from jaxloop.realism.evaluate import RealismConfig, RealismRunner, sample_idm_params, IdmSpread
from jaxloop.sim.agents import AgentParams
from jaxloop.sim.datatypes import TL_STOP, stack_scenarios

T = 61
INIT = 11


def _scene():
    """Ego (object 0) at 10 m/s along y = 0 from x = 0; a lead at 5 m/s from x = 40; a red light at x = 50."""
    t = np.arange(T, dtype=np.float64)
    ego = dict(x=t * 1.0, y=np.zeros(T))
    lead = dict(x=40.0 + 0.5 * t, y=np.zeros(T))
    light = dict(x=50.0, y=0.0, lane_id=0, state=np.full(T, TL_STOP))
    return make_track_scenario([ego, lead], lights=[light])


_compute = jax.jit(feats.compute_features, static_argnums=(5,))


def _features(scenario, future=None):
    """Features of the ego (the only evaluated slot) for the log or the given future `[N, H]`."""
    index, _ = (jnp.asarray(a) for a in feats.evaluated_objects(scenario, INIT, 2))
    in_scene = jnp.asarray(scenario.log_trajectory.valid[:, INIT - 1])
    sc = jax.tree.map(jnp.asarray, scenario)
    poses = feats.log_poses(sc, INIT, T - INIT) if future is None else feats.with_future(sc, INIT, future)
    poses = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32) if a.dtype != jnp.bool_ else a, poses)
    return _compute(sc, poses, index, jnp.asarray([True, False]), in_scene, INIT)


def test_kinematics_central_differences():
    # x = 0, 1, 3, 6, 10 (dt 0.1): speed(1) = |3 - 0| / 0.2 = 15, speed(2) = |6 - 1| / 0.2 = 25,
    # speed(3) = |10 - 3| / 0.2 = 35; accel(2) = (35 - 15) / 0.2 = 100.
    # yaw = 0, 0.1, 0.3, 0.6, 1.0: per-step change w(1) = 0.3 / 2 = 0.15, w(2) = 0.25, w(3) = 0.35;
    # angular speed(2) = 0.25 / 0.1 = 2.5; angular accel(2) = (0.35 - 0.15) / 2 / 0.1² = 10.
    x = jnp.array([[0.0, 1.0, 3.0, 6.0, 10.0]])
    yaw = jnp.array([[0.0, 0.1, 0.3, 0.6, 1.0]])
    poses = feats.Poses(x=x, y=jnp.zeros_like(x), yaw=yaw, valid=jnp.ones_like(x, bool))
    speed, accel, ang, ang_acc, speed_ok, accel_ok = feats.kinematics(poses)
    np.testing.assert_allclose(speed[0, 1:4], [15.0, 25.0, 35.0], rtol=1e-5)
    np.testing.assert_allclose(accel[0, 2], 100.0, rtol=1e-4)
    np.testing.assert_allclose(ang[0, 1:4], [1.5, 2.5, 3.5], rtol=1e-5)
    np.testing.assert_allclose(ang_acc[0, 2], 10.0, rtol=1e-4)
    assert speed_ok[0].tolist() == [False, True, True, True, False]
    assert accel_ok[0].tolist() == [False, False, True, False, False]


def test_angular_speed_wraps():
    # yaw crosses +pi: pi - 0.05, then -pi + 0.05: the change is +0.1 over two steps, so 0.05 / 0.1 = 0.5 rad/s.
    yaw = jnp.array([[math.pi - 0.05, math.pi, -math.pi + 0.05]])
    poses = feats.Poses(x=jnp.zeros((1, 3)), y=jnp.zeros((1, 3)), yaw=yaw, valid=jnp.ones((1, 3), bool))
    np.testing.assert_allclose(feats.kinematics(poses)[2][0, 1], 0.5, rtol=1e-4)


def test_box_distances_rounded_corners():
    # 4 m x 2 m boxes; corner radius 0.7 * 2 / 2 = 0.7, inner half sizes 1.3 x 0.3.
    def dist(bx, by):
        x, y = jnp.array([[0.0], [bx]]), jnp.array([[0.0], [by]])
        return float(feats.nearest_object_distance(x, y, jnp.zeros((2, 1)), jnp.array([4.0, 4.0]),
                                                   jnp.array([2.0, 2.0]), jnp.ones((2, 1), bool),
                                                   jnp.array([0]), jnp.array([True]))[0, 0])
    # Face to face 10 m apart: 10 - 2 * 1.3 - 2 * 0.7 = 6 (the boxes' own gap).
    assert dist(10.0, 0.0) == pytest.approx(6.0, abs=1e-4)
    # Diagonal: inner corners (1.3, 0.3) and (8.7, 9.7), sqrt(7.4² + 9.4²) = 11.9633, minus 1.4 = 10.5633.
    assert dist(10.0, 10.0) == pytest.approx(math.hypot(7.4, 9.4) - 1.4, abs=1e-4)
    # Overlapping by 1 m (centres 3 m apart): inner gap 3 - 2.6 = 0.4, minus 1.4 = -1.0.
    assert dist(3.0, 0.0) == pytest.approx(-1.0, abs=1e-4)


def test_scene_features_by_hand():
    f = _features(_scene())
    ego = lambda a: np.asarray(a)[0]
    # Step index j is log step 11 + j. The ego moves 1 m per step: 10 m/s, no acceleration or turning.
    np.testing.assert_allclose(ego(f.linear_speed)[:-1], 10.0, rtol=1e-4)
    np.testing.assert_allclose(ego(f.linear_acceleration)[1:-2], 0.0, atol=1e-3)
    np.testing.assert_allclose(ego(f.angular_speed)[:-1], 0.0, atol=1e-6)
    # Lead 4.5 m boxes face to face: gap = (40 + 0.5 t) - t - 4.5 = 35.5 - 0.5 t; at t = 31 (j = 20): 20 m.
    assert ego(f.distance_to_nearest_object)[20] == pytest.approx(20.0, abs=1e-3)
    assert not ego(f.collision).any()
    # TTC = gap / closing speed (10 - 5): t = 11 -> 30 / 5 = 6 s, capped at 5; t = 31 -> 20 / 5 = 4 s.
    assert ego(f.time_to_collision)[0] == pytest.approx(5.0)
    assert ego(f.time_to_collision)[20] == pytest.approx(4.0, abs=1e-3)
    # Road edges at y = -1.75 and 5.25; the box spans y in [-1, 1]: the nearest corner distance is -0.75.
    np.testing.assert_allclose(ego(f.distance_to_road_edge), -0.75, atol=1e-4)
    assert not ego(f.offroad).any()
    # The front (x + 2.25) reaches the red stop line at x = 50 between t = 47 (49.25) and t = 48 (50.25): j = 37.
    assert np.flatnonzero(ego(f.traffic_light_violation)).tolist() == [37]


def test_offroad_and_collision_indicators():
    scenario = _scene()
    h = T - INIT
    # A future where the ego drifts 4 m left (corner at y = 5 + 1 > 5.25 from y = 4.5) into the lead's lane.
    t = np.arange(INIT, T, dtype=np.float32)
    log = scenario.log_trajectory
    ego_y = np.minimum(0.5 * (t - INIT), 4.5)
    future = feats.Poses(x=jnp.asarray(log.x[:, INIT:]), y=jnp.asarray(np.stack([ego_y, log.y[1, INIT:]])),
                         yaw=jnp.zeros((2, h)), valid=jnp.ones((2, h), bool))
    f = _features(scenario, future)
    # Corner y = ego_y + 1 > 5.25 once ego_y > 4.25, i.e. from t = 20 (ego_y = 4.5): j = 9.
    assert np.asarray(f.offroad)[0, 9] and not np.asarray(f.offroad)[0, 8]
    assert np.asarray(f.distance_to_road_edge)[0, 9] == pytest.approx(0.25, abs=1e-4)
    # A future where the ego drives through the lead: x = lead x at t = 40.
    ego_x = np.where(t >= 40, 40.0 + 0.5 * t, t)
    future = future.replace(x=jnp.asarray(np.stack([ego_x, log.x[1, INIT:]])), y=jnp.zeros((2, h)))
    f = _features(scenario, future)
    assert np.asarray(f.collision)[0, 40 - INIT] and np.asarray(f.distance_to_nearest_object)[0, 40 - INIT] < 0


def test_bernoulli_events_count_only_where_the_log_has_the_object():
    scenario = _scene()
    h = T - INIT
    log = scenario.log_trajectory
    t = np.arange(INIT, T, dtype=np.float32)

    def offroad_from(step):  # the ego jumps 4.5 m left (a corner 0.25 m past the edge at y = 5.25) at `step`
        y = np.where(t >= step, 4.5, 0.0).astype(np.float32)
        return feats.Poses(x=jnp.asarray(log.x[:, INIT:]), y=jnp.asarray(np.stack([y, log.y[1, INIT:]])),
                           yaw=jnp.zeros((2, h)), valid=jnp.ones((2, h), bool))

    # The log loses the ego after j = 14 (step 25); the rollouts keep it.
    keep = jnp.arange(h) < 15
    log_f = _features(scenario)
    log_f = log_f.replace(valid=log_f.valid & keep, speed_valid=log_f.speed_valid & keep,
                          accel_valid=log_f.accel_valid & keep)
    stack = lambda f: jax.tree.map(lambda *a: jnp.stack(a), *([f] * 4))
    offroad = lambda step: float(lk.scene_log_likelihoods(log_f, stack(_features(scenario, offroad_from(step))))
                                 ["offroad"]["per_object"][0])
    # Off the road from step 31 (j = 20), after the log ends: no rollout has the event, p = 0.001 / 4.002,
    # and the logged "never offroad" scores log(1 - p).
    assert offroad(31) == pytest.approx(math.log1p(-0.001 / 4.002), abs=1e-6)
    # Off the road from step 20 (j = 9), while the log has the ego: all 4 rollouts, log(1 - 4.001 / 4.002).
    assert offroad(20) == pytest.approx(math.log(0.001 / 4.002), rel=1e-4)


def test_histogram_and_bernoulli_arithmetic():
    spec = lk.BY_NAME["linear_speed"]  # [0, 25], 10 bins of 2.5 m/s, pseudocount 0.1
    sim = jnp.array([[[0.0, 1.0]], [[2.0, 30.0]]])  # [R=2, E=1, H=2]: bin 0 three times, 30 -> clipped to bin 9
    lp = lk.histogram_log_prob(jnp.array([[0.5, 24.0]]), jnp.ones((1, 2), bool), sim, jnp.ones_like(sim, bool), spec)
    # counts + 0.1: bin 0 -> 3.1, bin 9 -> 1.1, eight bins -> 0.1; total 5.0.
    np.testing.assert_allclose(lp[0], [math.log(3.1 / 5.0), math.log(1.1 / 5.0)], rtol=1e-5)
    # Bernoulli: 3 of 4 rollouts collide, pseudocount 0.001: p = 3.001 / 4.002.
    spec = lk.BY_NAME["collision"]
    event = jnp.array([[True], [True], [True], [False]])
    p = 3.001 / 4.002
    np.testing.assert_allclose(lk.bernoulli_log_prob(jnp.array([True]), event, spec), [math.log(p)], rtol=1e-5)
    np.testing.assert_allclose(lk.bernoulli_log_prob(jnp.array([False]), event, spec), [math.log(1 - p)], rtol=1e-4)
    # Weights sum to 1; equal likelihoods give that likelihood as the meta-metric.
    assert sum(f.weight for f in lk.FEATURES) == pytest.approx(1.0)
    assert lk.combine({f.name: 0.5 for f in lk.FEATURES})["realism_meta_metric"] == pytest.approx(0.5)


def test_log_rollouts_score_higher_than_shifted():
    scenario = _scene()
    log_f = _features(scenario)
    log = scenario.log_trajectory
    same = feats.Poses(x=jnp.asarray(log.x[:, INIT:]), y=jnp.asarray(log.y[:, INIT:]),
                       yaw=jnp.asarray(log.yaw[:, INIT:]), valid=jnp.asarray(log.valid[:, INIT:]))
    # Shifted: the ego 50 % faster from the current step on.
    t = np.arange(INIT, T, dtype=np.float32)
    shifted = same.replace(x=same.x.at[0].set(jnp.asarray(INIT - 1 + 1.5 * (t - INIT + 1))))
    stack = lambda f: jax.tree.map(lambda *a: jnp.stack(a), *([f] * 4))
    score = lambda future: lk.scene_scores(lk.scene_log_likelihoods(log_f, stack(_features(scenario, future))))
    a, b = score(same), score(shifted)
    assert a["realism_meta_metric"] > b["realism_meta_metric"]
    assert a["linear_speed"] > b["linear_speed"]
    assert a["kinematic"] > b["kinematic"]


def test_sampled_idm_params_per_object():
    p = sample_idm_params(jax.random.key(0), AgentParams(), IdmSpread(), 5)
    assert p.idm_time_headway.shape == (5,) and len(set(np.asarray(p.idm_time_headway).tolist())) == 5
    q = sample_idm_params(jax.random.key(0), AgentParams(), IdmSpread(0, 0, 0, 0, 0), 5)
    np.testing.assert_allclose(q.idm_time_headway, 1.5)


@pytest.mark.parametrize("agents", ["idm"])
def test_determinism_by_seed(agents):
    scenarios = stack_scenarios([_scene(), _scene()])
    config = RealismConfig(agents=agents, rollouts=4, horizon=20, batch_size=2, max_evaluated=2)
    runner = RealismRunner(scenarios, None, config)
    a, b, c = runner.run(seed=3), runner.run(seed=3), runner.run(seed=4)
    assert a.aggregate == b.aggregate
    assert np.isfinite(a.aggregate["realism_meta_metric"]) and 0 < a.aggregate["realism_meta_metric"] <= 1
    raw_a, raw_c = runner.raw(seed=3), runner.raw(seed=4)
    assert any(float(x["min_ade"]) != float(y["min_ade"]) for x, y in zip(raw_a, raw_c))
    assert c.aggregate["num_evaluated_objects"] == 4


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="agents"):
        RealismConfig(agents="random")
    with pytest.raises(ValueError, match="rollouts"):
        RealismConfig(rollouts=0)
    with pytest.raises(ValueError, match="policy_target_spread"):
        RealismConfig(policy_target_spread=-0.1)


def test_idm_fit_lowers_its_loss():
    from jaxloop.realism.fit import FitConfig, fit_idm
    scenarios = stack_scenarios([_scene()])
    params, info = fit_idm(scenarios, FitConfig(horizon=20, steps=4, learning_rate=0.1, accel_weight=1.0), log=None)
    losses = [h["loss"] for h in info["history"]]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert params.idm_time_headway != AgentParams().idm_time_headway


def test_parked_vehicle_is_not_policy_driven():
    # Ego moves 1 m/step; object 1 is parked 5 m away (never moves: 0 m from its goal < GOAL_RADIUS = 2 m);
    # object 2 moves 0.5 m/step from 30 m away (25 m from its goal at step 10). With 2 policy slots the policy
    # drives the ego and object 2, the nearest vehicle with somewhere to go; the old rule picked the parked one.
    from jaxloop.realism.evaluate import policy_slots
    t = np.arange(T, dtype=np.float64)
    tracks = [dict(x=t * 1.0, y=np.zeros(T)), dict(x=np.full(T, 5.0), y=np.full(T, 3.5)),
              dict(x=30.0 + 0.5 * t, y=np.full(T, 3.5))]
    sc = make_track_scenario(tracks)
    slots, driven = policy_slots(sc, INIT, 2)
    assert slots.tolist() == [0, 2] and driven.tolist() == [True, True]
    slots, driven = policy_slots(sc, INIT, 3)
    assert slots.tolist()[:2] == [0, 2] and driven.tolist() == [True, True, False]
    slots, _ = policy_slots(sc, INIT, 2, control_parked=True)
    assert slots.tolist() == [0, 1]


def test_policy_slots_can_leave_a_reversing_vehicle_to_idm():
    # Object 1 backs up at 5 m/s (0.5 m/step toward -x) while heading +x: its velocity is 180 degrees off its
    # heading, so the forward-only bicycle cannot follow it; object 2 drives forward at the same speed.
    from jaxloop.realism.evaluate import policy_slots, reverses
    t = np.arange(T, dtype=np.float64)
    fwd = lambda x0, y0, v: dict(x=x0 + v * 0.1 * t, y=np.full(T, y0), yaw=np.zeros(T), vel_x=np.full(T, v),
                                 vel_y=np.zeros(T))
    tracks = [fwd(0.0, 0.0, 10.0), fwd(40.0, 3.5, -5.0) | {"yaw": np.zeros(T)}, fwd(60.0, -3.5, 5.0)]
    sc = make_track_scenario(tracks)
    assert reverses(sc)[:3].tolist() == [False, True, False]
    slots, driven = policy_slots(sc, INIT, 3, skip_reversing=True)
    assert slots.tolist() == [0, 1, 2] and driven.tolist() == [True, False, True]
    _, driven = policy_slots(sc, INIT, 3)
    assert driven.tolist() == [True, True, True]


def test_policy_view_is_the_training_view():
    # Ego: 1 m/step, stopping at x = 22 (its goal); object 1: 1 m/step from x = 30, stopping at x = 52, one lane
    # over. At the current step (t = 10) both are 12 m from their goals, so on their own logged paths the route
    # waypoints at 5 and 10 m ahead are valid and the four beyond (15 .. 30 m) are not: 2 of 6 (a route
    # extended 20 m past the goal would give all 6). An ego-only run's ego sees the scenario's route (its log
    # extended 30 m: 42 m left, all 6 valid), as in its training.
    from jaxloop.io.policies import agent_features, ego_features
    from jaxloop.policy.observation import ObsConfig
    from jaxloop.realism.evaluate import policy_slots, policy_view
    from jaxloop.sim.env import Env, EnvConfig
    t = np.arange(T, dtype=np.float64)
    tracks = [dict(x=np.minimum(t, 22.0), y=np.zeros(T)), dict(x=30.0 + np.minimum(t, 22.0), y=np.full(T, 3.5))]
    route = np.stack([np.arange(53.0), np.zeros(53)], -1)  # the ego's logged path, then 30 m on
    sc = jax.tree.map(jnp.asarray, make_track_scenario(tracks, route_xy=route))
    slots, driven = policy_slots(sc, INIT, 2)
    assert slots.tolist() == [0, 1] and driven.all()
    state = Env(EnvConfig(init_steps=INIT, controlled="sdc", non_ego_agent="log")).reset(sc, jax.random.key(0))
    obs = ObsConfig()

    @jax.jit
    def views(sc, state, slots):  # one compile: both views and the training functions they must equal
        return (policy_view(sc, state, slots, obs, True), policy_view(sc, state, slots, obs, False),
                agent_features(sc, state, slots, obs), ego_features(sc, state, obs, own_path=False))

    selfplay, ego_only, agents, ego = views(sc, state, jnp.asarray(slots))
    assert np.sum(selfplay.route_valid, -1).tolist() == [2, 2]
    assert np.sum(ego_only.route_valid, -1).tolist() == [6, 2]
    same = lambda a, b: jax.tree.map(np.testing.assert_array_equal, a, b)
    same(selfplay, agents)
    same(jax.tree.map(lambda a: a[0], ego_only), ego)
    same(jax.tree.map(lambda a: a[1:], ego_only), jax.tree.map(lambda a: a[1:], agents))
