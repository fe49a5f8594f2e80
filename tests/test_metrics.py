import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxloop.data.toy import make_toy_scenario, make_track_scenario
from jaxloop.sim import metrics as m
from jaxloop.sim import rewards
from jaxloop.sim.datatypes import DT, TL_GO, TL_STOP, ObjectState, RoadMap, trajectory_at
from jaxloop.sim.env import Env, EnvConfig
from jaxloop.sim.rollout import log_replay_policy, rollout

T = 91
TIME = np.arange(T) * DT


def _objs(rows, dtype=jnp.float32):
    """ObjectState from rows (x, y, yaw, speed[, length, width]); velocity along the heading."""
    rows = [tuple(r) + (4.0, 2.0)[len(r) - 4:] for r in rows]
    a = np.asarray(rows, np.float64)
    x, y, yaw, v, length, width = a.T
    c = lambda z: jnp.asarray(z, dtype)
    return ObjectState(x=c(x), y=c(y), z=c(0 * x), vel_x=c(v * np.cos(yaw)), vel_y=c(v * np.sin(yaw)), yaw=c(yaw),
                       length=c(length), width=c(width), height=c(0 * x + 1.5), valid=jnp.ones(len(rows), bool))


def _straight_track(x, y=0.0, **kw):
    return dict(x=np.broadcast_to(np.asarray(x, np.float64), (T,)).copy(),
                y=np.broadcast_to(np.asarray(y, np.float64), (T,)).copy(), **kw)


# ---------------------------------------------------------------- hand-built geometry


def test_overlap_touching_separated_rotated():
    # 4 x 2 boxes. 0 and 1 touch (centres 4 apart = 2 + 2): not an overlap. 2 is far.
    # 3 is a 2 x 2 square rotated 45 deg whose corner reaches 0.1 into box 4 (same as the
    # geometry test: centre at 2 + sqrt(2) - 0.1 from box 4's centre).
    s = _objs([(0, 0, 0, 0), (4, 0, 0, 0), (0, 20, 0, 0), (52 + np.sqrt(2) - 0.1, 0, np.pi / 4, 0, 2, 2),
               (50, 0, 0, 0)])
    np.testing.assert_array_equal(m.overlap(s), [False, False, False, True, True])
    assert not bool(m.ego_overlap(s, 0)) and bool(m.ego_overlap(s, 4))
    # An invalid object never overlaps.
    s2 = s.replace(valid=jnp.array([True, True, True, False, True]))
    np.testing.assert_array_equal(m.overlap(s2), [False] * 5)


def test_closed_form_separation_matches_geometry():
    # The fused all-pairs SAT equals geometry.box_separation on random boxes (both signs).
    rng = np.random.default_rng(0)
    rows = np.stack([rng.uniform(-6, 6, 12), rng.uniform(-6, 6, 12), rng.uniform(-np.pi, np.pi, 12),
                     rng.uniform(0, 0, 12), rng.uniform(1, 6, 12), rng.uniform(0.5, 2.5, 12)], -1)
    s = _objs(rows)
    got = np.asarray(jax.jit(m.pairwise_separation)(s))
    from jaxloop.sim.geometry import box_separation
    boxes = m.object_boxes(s)
    want = np.asarray(box_separation(boxes[:, None], boxes[None, :]))
    off_diag = ~np.eye(12, dtype=bool)
    np.testing.assert_allclose(got[off_diag], want[off_diag], atol=1e-5)
    assert (want[off_diag] < 0).any() and (want[off_diag] > 0).any()


def test_half_pair_overlap_equals_all_pairs():
    # `overlap` tests each unordered pair once (cyclic shifts 1..N/2); it must equal the
    # all-pairs answer for odd and even N, with invalid objects, in dense random scenes.
    rng = np.random.default_rng(1)
    for n in (2, 3, 8, 17):
        rows = np.stack([rng.uniform(-n, n, n), rng.uniform(-n, n, n), rng.uniform(-np.pi, np.pi, n),
                         np.zeros(n), rng.uniform(1, 6, n), rng.uniform(0.5, 2.5, n)], -1)
        s = _objs(rows).replace(valid=jnp.asarray(rng.uniform(size=n) < 0.8))
        want = np.asarray(jnp.min(m.pairwise_separation(s), -1) < 0.0)
        got = np.asarray(jax.jit(m.overlap)(s))
        np.testing.assert_array_equal(got, want)
        assert n < 8 or 0 < want.sum() < n  # dense enough to have both answers


def test_offroad_corner_across_edge():
    sc = make_toy_scenario()  # road edges at y = -1.75 (directed -x) and y = 5.25 (+x)
    rm = sc.roadmap
    # Centre y = -0.5, half width 1: right corners at y = -1.5, on the road (0.25 m inside).
    # Centre y = -1.0: right corners at y = -2.0, 0.25 m beyond the lower edge.
    s = _objs([(10, -0.5, 0, 5), (10, -1.0, 0, 5), (10, 4.0, 0, 5), (10, 4.5, 0, 5)])
    np.testing.assert_array_equal(jax.jit(m.offroad)(s, rm), [False, True, False, True])
    d = jax.jit(m.ego_corner_road_distance)(s, rm, 1)  # corners FL, RL, RR, FR
    # Left corners at y = 0: 1.75 m inside the lower edge; right corners 0.25 m beyond it.
    np.testing.assert_allclose(d, [-1.75, -1.75, 0.25, 0.25], atol=1e-5)
    ego_offroad = jax.jit(m.ego_offroad, static_argnums=3)
    for i, expected in enumerate([False, True, False, True]):
        assert bool(ego_offroad(s, rm, i, 0)) == expected
        assert bool(ego_offroad(s, rm, i, 1)) == expected


def test_red_light_crossed_vs_stopped():
    light = dict(x=25.0, y=0.0, lane_id=0, state=np.where(np.arange(T) < 50, TL_STOP, TL_GO))
    sc = make_track_scenario([_straight_track(0.0)], lights=[light])
    # Fronts (x + 2) before -> after: crosses 25; stops at 24.9; crosses 3 m beside the
    # stop point (another lane); crosses while heading against the lane.
    prev = _objs([(22.5, 0, 0, 10), (22.0, 0, 0, 1), (22.5, 3.0, 0, 10), (27.5, 0, np.pi, 10)])
    cur = _objs([(23.5, 0, 0, 10), (22.9, 0, 0, 0), (23.5, 3.0, 0, 10), (26.5, 0, np.pi, 10)])
    np.testing.assert_array_equal(m.red_light_crossing(sc, prev, cur, jnp.int32(20)), [True, False, False, False])
    # Same crossing on green (step 60) is fine.
    np.testing.assert_array_equal(m.red_light_crossing(sc, prev, cur, jnp.int32(60)), [False] * 4)


def test_progress_and_off_route_on_curved_route():
    # Quarter circle of radius 20 in 16 chords; each chord 2 * 20 * sin(pi / 64).
    ang = np.linspace(0, np.pi / 2, 17)
    route_xy = np.stack([20 * np.sin(ang), 20 - 20 * np.cos(ang)], -1)
    sc = make_track_scenario([_straight_track(0.0)], route_xy=route_xy)
    chord = 2 * 20 * np.sin(np.pi / 64)
    s, lat = m.route_progress(jnp.asarray(route_xy[6], jnp.float32), sc.route)
    np.testing.assert_allclose(s, 6 * chord, rtol=1e-5)
    np.testing.assert_allclose(lat, 0.0, atol=1e-3)
    # Radially outward from vertex 8 by 4 m and 6 m: on / off route (5 m threshold).
    centre = np.array([0.0, 20.0])
    out_dir = (route_xy[8] - centre) / 20.0
    for dist, off in ((4.0, False), (6.0, True)):
        p = jnp.asarray(route_xy[8] + dist * out_dir, jnp.float32)
        np.testing.assert_allclose(m.route_progress(p, sc.route)[0], 8 * chord, rtol=1e-4)
        assert bool(m.off_route(p, sc.route)) == off


def test_kinematics_wrong_way_comfort_ttc():
    # Speed 10 -> 11.2 in 0.1 s: a = 12 > 10.4. Speed 10 -> 10.5: a = 5, feasible.
    prev = _objs([(0, 0, 0, 10), (0, 0, 0, 10)])
    nxt = _objs([(1, 0, 0, 11.2), (1, 0, 0, 10.5)])
    np.testing.assert_array_equal(m.kinematic_infeasibility(prev, nxt), [True, False])
    # Yaw 0 -> 0.4 over travel 10 * 0.1 = 1 m: k = 0.4 > 0.301.
    turn = _objs([(1, 0, 0.4, 10), (1, 0, 0.2, 10)])
    np.testing.assert_array_equal(m.kinematic_infeasibility(prev, turn), [True, False])

    rm = make_toy_scenario().roadmap  # lanes along +x
    wrong = _objs([(10, 0, np.pi, 5), (10, 0, 0, 5), (10, 0, np.pi, 1), (10, 20, np.pi, 5)])
    got = np.asarray(jax.jit(jax.vmap(m.wrong_way, in_axes=(0, None)))(wrong, rm)).tolist()
    assert got == [True, False, False, False]  # slow and far from any lane do not count

    # Two full lanes along +x, far apart: (-40..-20, 0) and (20..40, 10). The lanes are
    # scanned as one flat point sequence; nothing may join the first lane's last point to
    # the second lane's first, a segment through (0, 5).
    xs = np.linspace(0.0, 20.0, 5, dtype=np.float32)
    lane_xy = np.stack([np.stack([xs - 40.0, np.zeros(5, np.float32)], -1),
                        np.stack([xs + 20.0, np.full(5, 10.0, np.float32)], -1)])
    lane_dir = np.zeros_like(lane_xy)
    lane_dir[..., 0] = 1.0
    two = RoadMap.empty(num_lanes=2, lane_points=5).replace(
        lane_xy=jnp.asarray(lane_xy), lane_dir=jnp.asarray(lane_dir), lane_valid=jnp.ones((2, 5), bool))
    objs = _objs([(0, 5, np.pi, 5), (30, 10, np.pi, 5), (-30, 0, np.pi, 5), (-20, 0, 0, 5)])
    got = np.asarray(jax.jit(jax.vmap(m.wrong_way, in_axes=(0, None)))(objs, two)).tolist()
    assert got == [False, True, True, False]

    # Comfort over a 3-state history: speeds 10, 10.1, 10.2 (a = 1) vs 10, 10.3, 10.6 (a = 3 > 2.4).
    def hist(speeds):
        xs = np.cumsum([0.0] + list(speeds[:-1])) * DT
        rows = [(x, 0, 0, v) for x, v in zip(xs, speeds)]
        s = _objs(rows)
        return jax.tree.map(lambda a: a[None], s)  # [1, K]
    c1 = m.comfort(hist([10.0, 10.1, 10.2]))
    np.testing.assert_allclose(c1["lon_accel"], [1.0], atol=1e-3)
    assert bool(c1["comfortable"][0])
    assert not bool(m.comfort(hist([10.0, 10.3, 10.6]))["comfortable"][0])

    # TTC: ego at x = 0, 10 m/s; stopped car ahead at x = 20 (gap 20 - 2 - 2 = 16 m):
    # 16 / 10 = 1.6 s. A faster car in the next lane and one behind do not count.
    s = _objs([(0, 0, 0, 10), (20, 0, 0, 0), (8, 3.5, 0, 0), (-10, 0, 0, 20)])
    np.testing.assert_allclose(m.time_to_collision(s, 0), 1.6, rtol=1e-5)
    s_far = _objs([(0, 0, 0, 10), (20, 0, 0, 12)])  # the lead pulls away: no collision course
    np.testing.assert_allclose(m.time_to_collision(s_far, 0), m.TTC_CAP)


# ---------------------------------------------------------------- rollout-level


@jax.jit
def _episode(sc):
    env = Env()
    state = env.reset(sc, jax.random.key(0))
    _, out = rollout(env, sc, state, log_replay_policy(env), sc.num_steps - 11, extras_fn=m.step_metrics)
    return m.episode_metrics(sc, out), out


def _crash_scenario(braking_log: bool = False):
    """The ego's log drives at 10 m/s from x = 0 into a stopped car at x = 40 (same shapes as the toy).

    With `braking_log`, the log brakes at 5 m/s^2 from t = 2 s and stops at x = 30 instead.
    """
    stopped = _straight_track(40.0, yaw=np.zeros(T), vel_x=np.zeros(T), vel_y=np.zeros(T))
    route = np.stack([np.linspace(0.0, 120.0, 32), np.zeros(32)], -1)
    tb = np.clip(TIME - 2.0, 0.0, 2.0)
    x = np.where(TIME < 2.0, 10.0 * TIME, 20.0 + 10.0 * tb - 2.5 * tb ** 2) if braking_log else 10.0 * TIME
    v = np.where(TIME < 2.0, 10.0, 10.0 - 5.0 * tb) if braking_log else np.full(T, 10.0)
    ego = _straight_track(x, yaw=np.zeros(T), vel_x=v, vel_y=np.zeros(T))
    return make_track_scenario([ego, stopped], num_objects=8, route_xy=route)


def test_log_replay_scores_clean_and_crash_fails():
    ep, out = _episode(make_toy_scenario())
    assert float(ep["ade"]) < 1e-3 and float(ep["fde"]) < 1e-3
    assert float(ep["collision"]) == 0 and float(ep["offroad"]) == 0 and float(ep["failure"]) == 0
    np.testing.assert_allclose(ep["progress_ratio"], 1.0, atol=1e-3)
    np.testing.assert_allclose(ep["score"], 1.0, atol=1e-3)  # all safety multipliers 1, all terms 1
    assert out.extras["overlap"].shape == (80, 8)
    # An ego whose log drives into a stopped car at x = 40 (10 m/s from x = 0): the raw
    # metric sees the crash; replaying it is not the policy's fault (the log holds the
    # same overlap while the ego is on its log), so the at-fault layer does not.
    ep, out = _episode(_crash_scenario())
    assert float(ep["raw_collision"]) == 1 and float(ep["raw_failure"]) == 1
    assert float(ep["collision"]) == 0 and float(ep["failure"]) == 0 and float(ep["exempt_logged_pairs"]) == 1
    # Overlap starts when the fronts meet: 10 t + 2.25 >= 40 - 2.25 -> t = 3.55 s, step 36.
    first = int(out.timesteps[np.argmax(np.asarray(out.extras["ego_overlap"]))])
    assert first == 36
    assert np.asarray(ep["object_collision"])[:2].tolist() == [True, True]


def test_womd_log_replay_is_clean(shared_data):
    from jaxloop.data.womd import load_womd

    scenario, _ = next(load_womd(shared_data / "womd" / "motion_data_one_example.tfrecord"))
    env = Env(EnvConfig(non_ego_agent="log"))

    @jax.jit
    def go(sc):
        state = env.reset(sc, jax.random.key(0))
        # The ego itself replays the log exactly: every object is log replay.
        kinds = jnp.zeros_like(state.agent_kind)
        state = state.replace(agent_kind=kinds)
        _, out = rollout(env, sc, state, log_replay_policy(env), sc.num_steps - 11, extras_fn=m.step_metrics)
        return m.episode_metrics(sc, out), out.extras

    ep, ex = go(scenario)
    assert float(ep["ade"]) == 0.0 and float(ep["fde"]) == 0.0
    assert float(ep["collision"]) == 0.0 and float(ep["offroad"]) == 0.0
    assert float(ep["wrong_way"]) == 0.0  # step_metrics judges the ego with its route (see below)


def _real_fixtures(shared_data):
    from jaxloop.data.av2 import load_av2
    from jaxloop.data.womd import load_womd

    yield "womd_tf_example", next(load_womd(shared_data / "womd" / "motion_data_one_example.tfrecord"))[0]
    yield "womd_scenario", next(load_womd(shared_data / "womd" / "motion_data_one_scenario.tfrecord"))[0]
    av2 = shared_data / "av2" / "scenario_0a1e6f0a-1817-4a98-b02e-db8c9327d151.parquet"
    yield "av2", load_av2(av2)[0]


def test_logged_sdc_never_drives_the_wrong_way(shared_data):
    # The logged SDC of every real fixture, step by step through the ego wrong-way test.
    def per_step(sc, use_route):
        traj = sc.log_trajectory
        ego = sc.object_metadata.is_sdc
        states = jax.vmap(lambda t: m.take_object(trajectory_at(traj, t), ego))(jnp.arange(traj.num_steps))
        route = sc.route if use_route else None
        return jax.vmap(lambda e: m.wrong_way(e, sc.roadmap, route))(states)

    for name, sc in _real_fixtures(shared_data):
        flagged = np.flatnonzero(np.asarray(jax.jit(per_step, static_argnums=1)(sc, True)))
        assert flagged.size == 0, f"{name}: logged SDC flagged wrong-way at steps {flagged.tolist()}"
        if name == "womd_tf_example":
            # Without the route the left turn from step 40 on is flagged: the lanes within
            # 2 m are the oncoming ones it crosses (heading ~150 deg vs the SDC's ~-60 deg),
            # its own turn lane is not in the 20,000-sample roadgraph.
            without = np.flatnonzero(np.asarray(jax.jit(per_step, static_argnums=1)(sc, False)))
            assert without.size > 0 and 40 <= without.min() <= without.max() <= 55, without


# ---------------------------------------------------------------- surrogates and rewards


def _fd(fn, x, eps=1e-6):
    return np.array([(fn(x + eps * e) - fn(x - eps * e)) / (2 * eps) for e in np.eye(len(x))])


def test_surrogate_gradients_match_finite_differences_and_point_away():
    sc = make_toy_scenario()
    with jax.enable_x64(True):
        def state_at(p):  # ego at (p[0], p[1]) yaw p[2]; another car 5.5 m ahead, slightly offset
            base = _objs([(0, 0, 0, 10), (5.0, 0.8, 0.1, 8)], dtype=jnp.float64)
            return base.replace(x=base.x.at[0].set(p[0]), y=base.y.at[0].set(p[1]), yaw=base.yaw.at[0].set(p[2]))

        ov = lambda p: m.overlap_surrogate(state_at(p), 0, 0.5, 0.1)
        off = lambda p: m.offroad_surrogate(state_at(p), jax.tree.map(lambda a: jnp.asarray(a, jnp.float64)
                                                                      if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating)
                                                                      else jnp.asarray(a), sc.roadmap), 0, 0.5, 0.1)
        ov, off = jax.jit(ov), jax.jit(off)
        for fn, p in ((ov, np.array([0.3, 0.1, 0.05])), (off, np.array([3.0, -0.6, 0.1]))):
            g = np.asarray(jax.jit(jax.grad(fn))(jnp.asarray(p)))
            np.testing.assert_allclose(g, _fd(lambda q: float(fn(jnp.asarray(q))), p), rtol=1e-4, atol=1e-6)
            assert float(fn(jnp.asarray(p))) > 1e-3  # the penalty is active here
        # Right direction: backing away from the car (-x) lowers the overlap penalty, and
        # moving towards the road centre (+y, the lower edge is at y = -1.75) lowers offroad.
        assert float(jax.grad(ov)(jnp.array([0.3, 0.1, 0.05]))[0]) > 0
        assert float(jax.grad(off)(jnp.array([3.0, -0.6, 0.1]))[1]) < 0
        # Clearance itself grows moving away from the box.
        box = lambda x: jnp.asarray(x)
        from jaxloop.sim.geometry import smooth_box_separation
        sep = lambda x: smooth_box_separation(jnp.array([0.0, 0.0, 0.0, 4.0, 2.0]), jnp.stack(
            [x, jnp.asarray(0.5), jnp.asarray(0.2), jnp.asarray(4.0), jnp.asarray(2.0)]))
        assert float(jax.grad(sep)(box(5.0))) > 0

        # Progress along a curved route: d s / d p is the route tangent.
        ang = np.linspace(0, np.pi / 2, 17)
        route_xy = np.stack([20 * np.sin(ang), 20 - 20 * np.cos(ang)], -1)
        route = make_track_scenario([_straight_track(0.0)], route_xy=route_xy).route
        route = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) if a.dtype.kind == "f" else jnp.asarray(a), route)
        prog = jax.jit(lambda p: m.route_progress(p, route)[0])
        p = jnp.asarray(route_xy[5] * 0.6 + route_xy[6] * 0.4 + np.array([0.3, -0.2]))
        g = np.asarray(jax.grad(prog)(p))
        np.testing.assert_allclose(g, _fd(lambda q: float(prog(jnp.asarray(q))), np.asarray(p)), rtol=1e-5)
        tangent = (route_xy[6] - route_xy[5]) / np.linalg.norm(route_xy[6] - route_xy[5])
        np.testing.assert_allclose(g, tangent, atol=1e-6)


def test_rewards_presets_and_signs():
    with pytest.raises(ValueError, match="unknown reward preset 'nope'.*progress_safety"):
        rewards.get_preset("nope")
    w = rewards.get_preset("progress_safety")
    assert float(w.collision) == 10 and float(w.offroad) == 5 and float(w.log_divergence) == 0.01
    assert float(rewards.get_preset("safety_first").red_light) > 0

    # The ego's log brakes from t = 2 s (x = 20) at 5 m/s^2 and stops at x = 30 before the
    # stopped car at x = 40; the ego coasts at 10 m/s into it: an at-fault crash.
    crash = _crash_scenario(braking_log=True)
    logged_crash = _crash_scenario()  # the log itself drives into the car
    env = Env()
    s0 = env.reset(crash, jax.random.key(0))
    step = jax.jit(env.step)
    states = [s0]
    for _ in range(26):
        states.append(step(crash, states[-1], jnp.zeros(2))[0])  # ego coasts at 10 m/s
    at = lambda t: states[t - 10]
    early0, early1 = at(20), at(21)  # ego front at 22.25 / 23.25: clear
    # Step 36: front at 36 + 2.25 = 38.25, 0.5 m into the stopped car (rear at 37.75).
    late0, late1 = at(35), at(36)
    reward = jax.jit(rewards.step_reward)
    loss = jax.jit(rewards.step_surrogate_loss)
    r_clear = float(reward(crash, early0, early1, w))
    r_crash = float(reward(crash, late0, late1, w))
    # Clear step: 1 m of progress (10 m/s * 0.1 s) and no penalty (the log is 2.5 cm behind).
    np.testing.assert_allclose(r_clear, 1.0, atol=1e-2)
    # Crash step: progress 1, collision -10, log divergence -0.01 * (36 - 29.6) with the
    # log at 20 + 10 * 1.6 - 2.5 * 1.6^2 = 29.6 m.
    np.testing.assert_allclose(r_crash, 1.0 - 10.0 - 0.064, atol=1e-2)
    # The same contact replayed from a log that holds it: no collision penalty.
    np.testing.assert_allclose(float(reward(logged_crash, late0, late1, w)), 1.0, atol=1e-2)
    l_clear = loss(crash, early0, early1, w)
    l_crash = loss(crash, late0, late1, w)
    assert float(l_crash) > float(l_clear) + 5.0
    # Nor is the logged overlap in the surrogate (the ego is on its log there).
    assert float(loss(logged_crash, late0, late1, w)) < float(l_clear) + 1.0
    # The loss is differentiable w.r.t. the ego state.
    g = jax.jit(jax.grad(lambda x: rewards.step_surrogate_loss(
        crash, late0, late1.replace(current=late1.current.replace(x=late1.current.x.at[0].set(x))), w)))(
        late1.current.x[0])
    # Penetration along x: d(penalty)/dx ~ +10, progress -1: backing off lowers the loss.
    assert np.isfinite(float(g)) and float(g) > 5.0


def test_anticipation_surrogates_hand_values_gradients_and_gates():
    light = dict(x=25.0, y=0.0, lane_id=0, state=np.where(np.arange(T) < 50, TL_STOP, TL_GO))
    sc = make_track_scenario([_straight_track(0.0), _straight_track(20.0)], lights=[light])
    w = rewards.get_preset("closed_loop_safety")  # T = 0.3, brake 4, stop margin 1, headway 0.6 s + 1 m
    with jax.enable_x64(True):
        s0 = Env().reset(sc, jax.random.key(0))

        def at(p, other, t):  # ego at (p[0], p[1]) heading +x at speed p[2]
            o = _objs([(0.0, 0.0, 0.0, 0.0), other], dtype=jnp.float64)
            o = o.replace(x=o.x.at[0].set(p[0]), y=o.y.at[0].set(p[1]), vel_x=o.vel_x.at[0].set(p[2]))
            return s0.replace(current=o, timestep=jnp.int32(t))

        red = jax.jit(lambda p, t: rewards.red_light_surrogate(sc, at(p, (60.0, 0, 0, 0), t), 0, w))
        # Front at 12, 13 m before the line: need = 10^2 / (2 * 4) + 1 - 13 = 0.5;
        # penalty 0.3 * softplus(0.5 / 0.3) = 0.552; d/dv = sigmoid(0.5 / 0.3) * v / 4 = 2.102.
        p = jnp.array([10.0, 0.0, 10.0])
        np.testing.assert_allclose(float(red(p, 20)), 0.3 * np.log1p(np.exp(0.5 / 0.3)), rtol=1e-6)
        g = np.asarray(jax.grad(red)(p, 20))
        np.testing.assert_allclose(g, _fd(lambda q: float(red(jnp.asarray(q), 20)), np.asarray(p)), rtol=1e-5)
        np.testing.assert_allclose(g[2], 2.5 / (1 + np.exp(-0.5 / 0.3)), rtol=1e-6)
        assert g[0] > 0  # closer to the line is worse
        assert float(red(p, 60)) == 0.0  # green
        assert float(red(jnp.array([10.0, 3.5, 10.0]), 20)) == 0.0  # beside the stop point: another lane
        assert float(red(jnp.array([25.0, 0.0, 10.0]), 20)) == 0.0  # already 2 m past the line

        head = lambda p, lead: rewards.headway_shortfall(at(p, lead, 20), 0, w)
        # Car 20 m ahead at 5 m/s: bumper gap 16; need = 1 + 0.6 * 10 + (100 - 25) / 8 - 16 = 0.375.
        lead = (20.0, 0.0, 0.0, 5.0)
        p = jnp.array([0.0, 0.3, 10.0])  # 0.3 m beside the lead's centre line
        in_lane = 1 / (1 + np.exp(-(2.5 - 0.3) / 0.25))
        np.testing.assert_allclose(float(head(p, lead)), in_lane * 0.3 * np.log1p(np.exp(0.375 / 0.3)), rtol=1e-6)
        g = np.asarray(jax.grad(head)(p, lead))
        np.testing.assert_allclose(g, _fd(lambda q: float(head(jnp.asarray(q), lead)), np.asarray(p)), rtol=1e-5)
        assert g[0] > 0 and g[2] > 0  # closer or faster is worse
        assert float(head(p, (-20.0, 0.0, 0.0, 5.0))) == 0.0  # behind the ego
        assert float(head(p, (20.0, 4.0, 0.0, 5.0))) < 0.02 * float(head(p, lead))  # next lane: 3.7 m beside the ego
        # A pedestrian crossing 8 m ahead (its long axis across) counts like a stopped object.
        assert float(head(p, (8.0, 0.5, np.pi / 2, 1.0, 0.8, 0.8))) > 10.0


def test_predicted_conflict_feels_a_crossing_pedestrian_before_it_is_in_the_lane():
    sc = make_track_scenario([_straight_track(0.0), _straight_track(20.0)])
    w = rewards.get_preset("closed_loop_safety")  # margin 1.5 m, T = 0.3, look-ahead 2 s
    with jax.enable_x64(True):
        s0 = Env().reset(sc, jax.random.key(0))

        def at(v, ped):  # ego (4 x 2) at the origin heading +x at speed v; a 0.8 x 0.8 pedestrian
            o = _objs([(0.0, 0.0, 0.0, 0.0), ped + (0.8, 0.8)], dtype=jnp.float64)
            return s0.replace(current=o.replace(vel_x=o.vel_x.at[0].set(v)))

        conflict = jax.jit(lambda v, ped: rewards.predicted_conflict(at(v, ped), 0, w), static_argnums=1)
        now = jax.jit(lambda v, ped: m.overlap_surrogate(at(v, ped).current, 0, 1.5, 0.3), static_argnums=1)
        # Walking towards the ego's path at 1.5 m/s from 3 m to its right, 15 m ahead: after
        # 1.5 s the ego (10 m/s) is at x = 15 and the pedestrian at y = -0.75, inside the
        # ego's half width + its own (1.4 m): a predicted overlap, while today's gap is 12.6 m.
        crossing = (15.0, -3.0, np.pi / 2, 1.5)
        assert float(now(10.0, crossing)) < 1e-6
        assert float(conflict(10.0, crossing)) > 0.5
        # Standing still 3 m to the side (1.6 m of clearance at the closest), walking away,
        # or an ego slow enough to arrive after the pedestrian has crossed: little or nothing.
        assert float(conflict(10.0, (15.0, -3.0, np.pi / 2, 0.0))) < 0.1 * float(conflict(10.0, crossing))
        assert float(conflict(10.0, (15.0, -3.0, -np.pi / 2, 1.5))) < 1e-3
        assert float(conflict(4.0, crossing)) < 1e-3
        g = float(jax.grad(conflict)(10.0, crossing))
        np.testing.assert_allclose(g, (float(conflict(10.0 + 1e-5, crossing)) - float(conflict(10.0 - 1e-5, crossing)))
                                   / 2e-5, rtol=1e-4)
        # Off by default: the other presets do not change.
        assert rewards.get_preset("progress_safety").conflict == 0.0


def test_log_lag_lets_the_ego_fall_behind_its_log_but_not_run_ahead_or_leave_its_path():
    sc = make_track_scenario([_straight_track(np.arange(T) * 1.0)])  # logged ego: x = t m (10 m/s)
    s0 = Env().reset(sc, jax.random.key(0))

    def dist(x, y, lag, t=50):
        cur = s0.current.replace(x=s0.current.x.at[0].set(x), y=s0.current.y.at[0].set(y))
        return float(rewards._ego_log_distance(sc, s0.replace(current=cur, timestep=jnp.int32(t)), 0, lag))

    # At step 50 the log is at x = 50. An ego at x = 30 is where the log was 2 s ago.
    np.testing.assert_allclose(dist(30.0, 0.0, 0.0), 20.0, atol=1e-3)
    np.testing.assert_allclose(dist(30.0, 0.0, 3.0), 0.0, atol=2e-3)
    np.testing.assert_allclose(dist(15.0, 0.0, 3.0), 5.0, atol=1e-3)  # 3.5 s behind: 5 m past the oldest allowed (x = 20)
    np.testing.assert_allclose(dist(55.0, 0.0, 3.0), 5.0, atol=1e-3)  # ahead of the log: no allowance
    np.testing.assert_allclose(dist(30.0, 1.5, 3.0), 1.5, atol=1e-3)  # off the path: still divergence
    # The ego's log is invalid at this step: no term (as without a lag).
    gone = make_track_scenario([dict(_straight_track(np.arange(T) * 1.0), valid=np.arange(T) < 40)])
    s1 = Env().reset(gone, jax.random.key(0)).replace(timestep=jnp.int32(50))
    assert float(rewards._ego_log_distance(gone, s1, 0, 3.0)) == 0.0


def test_one_pass_offroad_matches_the_signed_distance_including_shared_vertices():
    # A convex corner of the road: edges (0,0)->(10,0) and (10,0)->(10,10), road on their
    # right (below the first, right of the second... as directed segments). Points at the
    # shared vertex's distance from both edges exercise the tie rule.
    start = jnp.array([[0.0, 0.0], [10.0, 0.0], [50.0, 50.0]])
    end = jnp.array([[10.0, 0.0], [10.0, 10.0], [60.0, 50.0]])
    valid = jnp.array([True, True, False])
    rng = np.random.default_rng(2)
    pts = np.concatenate([rng.uniform(-5, 15, size=(400, 2)),
                          [[12.0, -2.0], [8.0, 2.0], [10.0, 0.0], [11.0, 5.0], [5.0, -1.0], [55.0, 51.0]]])
    pts = jnp.asarray(pts, jnp.float32)
    want = m.signed_edge_distance(pts, start, end, valid) > 0.0
    np.testing.assert_array_equal(m.edge_offroad(pts, start, end, valid), want)
    assert bool(want[-6]) != bool(want[-5])  # both sides of the corner occur
    # No valid segment: never off the road (signed distance -1e3).
    assert not np.any(m.edge_offroad(pts, start, end, jnp.zeros(3, bool)))


def test_lane_start_direction_of_a_split_lane_and_missing_ids():
    rm = make_toy_scenario(num_lanes=4).roadmap
    # Lane 5 split in two pieces (rows 0 and 1), lane 7 in one piece (row 3), one padding row.
    ids = np.array([5, 5, -1, 7], np.int32)
    lane_dir = np.asarray(rm.lane_dir).copy()
    lane_dir[0, 0], lane_dir[1, 0], lane_dir[3, 0] = [1.0, 0.0], [0.0, 1.0], [0.6, -0.8]
    rm = rm.replace(lane_ids=jnp.asarray(ids), lane_dir=jnp.asarray(lane_dir))
    d, found = jax.jit(m.lane_start_directions)(rm, jnp.asarray([5, 7, 6, -1], jnp.int32))
    np.testing.assert_array_equal(found, [True, True, False, False])
    np.testing.assert_allclose(d[0], [np.sqrt(0.5), np.sqrt(0.5)], atol=1e-6)  # normalised sum of both pieces
    np.testing.assert_allclose(d[1], [0.6, -0.8], atol=1e-6)
    np.testing.assert_array_equal(d[2:], 0.0)


def test_sharp_road_edge_corner_both_turns_and_both_sides():
    # Two edge segments meeting at V = (10, 3) with a 120-degree turn, road on their right.
    # Points 0.5-5 m from V all around it; the truth from the wedge: turning left (towards
    # the off-road side) the off-road region is the 60-degree wedge left of both
    # segments; turning right it is everything left of either.
    for turn in (120.0, -120.0):
        th = math.radians(turn)
        v = np.array([10.0, 3.0])
        d1, d2 = np.array([1.0, 0.0]), np.array([math.cos(th), math.sin(th)])
        start = jnp.asarray([v - 8 * d1, v], jnp.float32)
        end = jnp.asarray([v, v + 8 * d2], jnp.float32)
        valid = jnp.ones(2, bool)
        rng = np.random.default_rng(0)
        r, phi = rng.uniform(0.5, 5.0, 2000), rng.uniform(-np.pi, np.pi, 2000)
        u = np.stack([r * np.cos(phi), r * np.sin(phi)], -1)
        left1, left2 = u[:, 1] > 0, d2[0] * u[:, 1] - d2[1] * u[:, 0] > 0
        truth = (left1 & left2) if turn > 0 else (left1 | left2)
        pts = jnp.asarray(v + u, jnp.float32)
        np.testing.assert_array_equal(m.edge_offroad(pts, start, end, valid), truth)
        np.testing.assert_array_equal(m.signed_edge_distance(pts, start, end, valid) > 0.0, truth)
        # Behind the vertex, inside and outside: 2 m from V along the outward bisector of the
        # vertex region (at angle (turn -+ 180) / 2 from d1: -30 / +30 degrees) and along its opposite.
        bis = math.radians((turn - math.copysign(180.0, turn)) / 2.0)
        behind = jnp.asarray([v + 2 * np.array([math.cos(bis), math.sin(bis)]),
                              v - 2 * np.array([math.cos(bis), math.sin(bis)])], jnp.float32)
        # Left turn: behind the vertex is the road (the old "any nearest says off" read it
        # off-road); in front, between the segments, off. Right turn: behind off, in front on.
        want = [False, True] if turn > 0 else [True, False]
        np.testing.assert_array_equal(m.edge_offroad(behind, start, end, valid), want)
        # Distances: behind, the vertex itself (2 m; both segments nearest there, equal up to
        # rounding); in front, on the bisector of the 60-degree wedge, 2 * sin(30 deg) = 1 m.
        d = m.signed_edge_distance(behind, start, end, valid)
        np.testing.assert_allclose(np.abs(np.asarray(d)), [2.0, 1.0], rtol=1e-5)
