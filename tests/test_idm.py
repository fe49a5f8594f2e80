import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxloop.data.toy import make_toy_scenario, make_track_scenario
from jaxloop.sim import agents
from jaxloop.sim import metrics as m
from jaxloop.sim.datatypes import DT, TL_GO, TL_STOP
from jaxloop.sim.env import Env, EnvConfig
from jaxloop.sim.rollout import constant_action_policy, rollout

T = 91
STEPS = 80
TIME = np.arange(T) * DT


def _track(x, y, **kw):
    return dict(x=np.broadcast_to(np.asarray(x, np.float64), (T,)).copy(),
                y=np.broadcast_to(np.asarray(y, np.float64), (T,)).copy(), **kw)


def _parked_ego():
    # The ego waits far behind in the other lane; it drives with a zero action (stays put).
    return _track(-40.0, 3.5, yaw=np.zeros(T), vel_x=np.zeros(T), vel_y=np.zeros(T))


ENV = Env(EnvConfig())


@functools.partial(jax.jit, static_argnums=2)
def _go(scenario, kinds, steps):
    state = ENV.reset(scenario, jax.random.key(0), agent_kind=kinds)
    extras = lambda s, p, n, i: {"red_light": m.red_light_crossing(s, p.current, n.current, n.timestep)}
    return rollout(ENV, scenario, state, constant_action_policy(jnp.zeros(2)), steps, extras_fn=extras)


def _run(scenario, kinds, steps=STEPS):
    return _go(scenario, jnp.asarray(kinds, jnp.int32), steps)


P, L, I = agents.AGENT_POLICY, agents.AGENT_LOG, agents.AGENT_IDM


def test_follower_never_hits_stopped_lead():
    lead = _track(60.0, 0.0, yaw=np.zeros(T), vel_x=np.zeros(T), vel_y=np.zeros(T))
    follower = _track(12.0 * TIME, 0.0)  # its log drives straight through the stopped car
    scenario = make_track_scenario([_parked_ego(), lead, follower])
    _, out = _run(scenario, [P, L, I])
    boxes = m.object_boxes(out.states)  # [H, N, 5]
    from jaxloop.sim.geometry import box_separation
    sep = np.asarray(box_separation(boxes[:, 2], boxes[:, 1]))
    assert sep.min() > 0.5, sep.min()  # IDM keeps at least most of its 2 m minimum gap
    speed = np.asarray(out.states.speed[:, 2])
    assert speed[-1] < 0.5 and out.states.x[-1, 2] > 45.0  # it drove up and (almost) stopped behind the lead
    # Log replay of the same follower would have hit it: the log passes through x = 60.
    _, log_out = _run(scenario, [P, L, L])
    assert np.any(np.asarray(box_separation(m.object_boxes(log_out.states)[:, 2],
                                            m.object_boxes(log_out.states)[:, 1])) < 0)


def _light_scenario(green_from: int):
    car = _track(6.0 * TIME, 0.0)  # at step 10 it is at x = 6, 6 m/s
    state = np.where(np.arange(T) < green_from, TL_STOP, TL_GO)
    light = dict(x=25.0, y=0.0, lane_id=0, state=state)
    return make_track_scenario([_parked_ego(), car], num_objects=3, lights=[light])


def test_idm_stops_at_red_light_and_goes_on_green():
    scenario = _light_scenario(green_from=65)
    _, out = _run(scenario, [P, I, L])
    front = np.asarray(out.states.x[:, 1] + 2.25)
    t = np.asarray(out.timesteps)
    red = t < 65
    assert front[red].max() < 25.0  # never past the stop point while red
    assert np.asarray(out.states.speed[:, 1])[red].min() < 0.1  # it came to a halt
    assert front[-1] > 28.0  # and drove on after the green
    assert not np.any(np.asarray(out.extras["red_light"])[:, 1])
    # Log replay runs the red light: the metric flags exactly one crossing.
    _, log_out = _run(scenario, [P, L, L])
    crossed = np.asarray(log_out.extras["red_light"])[:, 1]
    # The log's front (6 t + 2.25) passes 25 at t = 3.79 s: between steps 37 and 38.
    assert crossed.sum() == 1 and int(log_out.timesteps[np.argmax(crossed)]) == 38


def test_idm_stops_at_stop_sign_then_goes():
    car = _track(6.0 * TIME, 0.0)
    scenario = make_track_scenario([_parked_ego(), car], num_objects=3, stop_signs=[(25.0, -2.5)])
    _, out = _run(scenario, [P, I, L])
    speed = np.asarray(out.states.speed[:, 1])
    front = np.asarray(out.states.x[:, 1] + 2.25)
    halt = int(np.argmax(speed < agents.IDM_STOP_SIGN_HALT_SPEED))
    assert speed[halt] < agents.IDM_STOP_SIGN_HALT_SPEED and front[halt] < 25.0
    assert front[-1] > 30.0 and speed[-1] > 2.0  # went on after the stop


def _cut_in_scenario(cut_in: bool):
    ego_x = 18.0 + 9.0 * TIME
    # Lane change from y = 3.5 to y = 0 between 1.0 s and 3.0 s (smooth cosine blend).
    blend = np.clip((TIME - 1.0) / 2.0, 0.0, 1.0)
    ego_y = 3.5 * (0.5 + 0.5 * np.cos(np.pi * blend)) if cut_in else np.full(T, 3.5)
    ego = _track(ego_x, ego_y)
    car = _track(12.0 * TIME, 0.0)
    return make_track_scenario([ego, car], num_objects=3)


def test_idm_brakes_for_ego_cut_in():
    accel = {}
    for cut_in in (False, True):
        _, out = _run(_cut_in_scenario(cut_in), [L, I, L])
        speed = np.asarray(out.states.speed[:, 1])
        accel[cut_in] = np.diff(speed[:40]) / DT
        sep = np.asarray(m.ego_separation(jax.tree.map(lambda a: a[-1], out.states), 0))[1]
        assert sep > 0.0
    # Without the cut-in the car only settles to its desired speed (12 m/s): mild.
    assert accel[False].min() > -1.0
    assert accel[True].min() < accel[False].min() - 1.0


def test_env_idm_config_on_toy_scenario():
    scenario = make_toy_scenario(num_objects=8, num_cars=4)
    env = Env(EnvConfig(non_ego_agent="idm"))
    state = env.reset(scenario, jax.random.key(0))
    assert isinstance(state.agent_state, agents.IdmState)
    assert int(state.agent_kind[1]) == agents.AGENT_IDM
    final, out = jax.jit(lambda s, st: rollout(env, s, st, constant_action_policy(jnp.zeros(2)), 20))(scenario, state)
    xs = np.asarray(out.states.x[:, 1:4])
    assert np.all(np.isfinite(xs)) and np.all(np.diff(xs, axis=0) >= -1e-4)  # forward along +x paths
    # The IDM cars stay on their logged paths: y within 0.1 m of the log's y at the same x.
    log = scenario.log_trajectory
    for i in (1, 2, 3):
        y_on_path = np.interp(np.asarray(out.states.x[:, i]), np.asarray(log.x[i]), np.asarray(log.y[i]))
        np.testing.assert_allclose(np.asarray(out.states.y[:, i]), y_on_path, atol=0.1)
    # A log-replay config carries no IDM memory.
    assert Env(EnvConfig()).reset(scenario, jax.random.key(0)).agent_state == ()


def test_path_lookup_matches_full_count_with_gaps_and_extrapolation():
    # The two-level segment search must equal the count over every path point, including
    # a gap in the log (a jump at one arc position), stationary stretches (zero-length
    # segments), positions before the start and past the end (extrapolation along the
    # first / last segment of positive length), and a path shorter than one block.
    rng = np.random.default_rng(0)
    x = np.cumsum(rng.uniform(0.0, 2.0, T))
    x[30:40] = x[30] + 3e-5 * (np.arange(10) % 2)  # stationary, with sub-0.1 mm jitter: no arc length
    y = np.sin(x / 7.0) * 3.0
    valid = np.ones(T, bool)
    valid[60:64] = False  # a gap: the path jumps from step 59 to step 64
    short = np.zeros(T, bool)
    short[5:9] = True  # four valid points
    scenario = make_track_scenario([_track(x, y, valid=valid), _track(x + 1.0, y, valid=short)], num_objects=2)
    paths = agents.logged_paths(scenario)
    arc = np.asarray(paths.arc)
    # First and last segments of positive length, where lookups outside the path clamp.
    moves = np.diff(arc, axis=1) > 0
    assert not moves[0, 30:39].any() and moves[0, 29] and moves[0, 40]
    first, last = moves.argmax(1), moves.shape[1] - 1 - moves[:, ::-1].argmax(1)
    xs, ys = np.asarray(paths.x), np.asarray(paths.y)
    queries = np.concatenate([[-5.0, 0.0], np.sort(rng.uniform(0.0, arc[0, -1], 200)), arc[0, 28:36],
                              [arc[0, -1], arc[0, -1] + 7.5]]).astype(np.float32)
    lookup = jax.jit(jax.vmap(agents.path_points, in_axes=(None, 1), out_axes=1))
    px, py, heading = (np.asarray(a) for a in lookup(paths, jnp.stack([queries, queries], 0)))
    # Many queries per object in one call ([N, K]) give the same answers.
    batched = jax.jit(agents.path_points)(paths, jnp.stack([queries, queries], 0))
    for got, want in zip(batched, (px, py, heading)):
        np.testing.assert_array_equal(np.asarray(got), want)
    for n in range(2):
        for q, s in enumerate(queries):
            j = int(np.clip(np.sum(arc[n] < s) - 1, first[n], last[n]))  # the full count, clamped
            u = (s - arc[n, j]) / max(arc[n, j + 1] - arc[n, j], 1e-6)
            np.testing.assert_allclose(px[n, q], xs[n, j] + u * (xs[n, j + 1] - xs[n, j]), rtol=1e-6, atol=1e-4)
            np.testing.assert_allclose(py[n, q], ys[n, j] + u * (ys[n, j + 1] - ys[n, j]), rtol=1e-6, atol=1e-4)
            want_heading = np.arctan2(ys[n, j + 1] - ys[n, j], xs[n, j + 1] - xs[n, j])
            np.testing.assert_allclose(heading[n, q], want_heading, atol=1e-5)
    assert (first[1], last[1]) == (5, 7)  # the short path's three segments


def test_idm_follower_is_differentiable_through_its_lead_with_grad_through_agents():
    # A policy-driven ego ahead of an IDM follower: the harder the ego accelerates, the
    # farther the follower gets. With `grad_through_agents` the gradient reaches the
    # ego's action through the lead's gap and speed and matches finite differences;
    # without it the follower is a constant of the backward pass.
    scenario = make_track_scenario([_track(30.0 + 5.0 * TIME, 0.0), _track(12.0 * TIME, 0.0)], num_objects=2)

    @functools.partial(jax.jit, static_argnums=1)
    def follower_x(accel, through):
        env = Env(EnvConfig(grad_through_agents=through))
        state = env.reset(scenario, jax.random.key(0), agent_kind=jnp.array([P, I], jnp.int32))
        final, _ = rollout(env, scenario, state, constant_action_policy(jnp.stack([accel, 0.0])), 40)
        return final.current.x[1]

    grad = float(jax.grad(follower_x)(0.5, True))
    fd = float(follower_x(0.55, True) - follower_x(0.45, True)) / 0.1
    assert grad > 0.1
    np.testing.assert_allclose(grad, fd, rtol=0.05)
    assert float(jax.grad(follower_x)(0.5, False)) == 0.0
