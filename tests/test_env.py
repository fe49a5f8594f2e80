import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxloop.data.toy import make_toy_scenario
from jaxloop.sim import agents
from jaxloop.sim.datatypes import ShapeError, stack_scenarios, trajectory_at, trajectory_window
from jaxloop.sim.env import Env, EnvConfig
from jaxloop.sim.rollout import constant_action_policy, log_replay_policy, rollout


def test_reset_initialises_from_log(toy_scenario):
    env = Env(EnvConfig(init_steps=11, history_length=4))
    state = env.reset(toy_scenario, jax.random.key(0)).validate()
    assert int(state.timestep) == 10
    np.testing.assert_array_equal(state.current.x, toy_scenario.log_trajectory.x[:, 10])
    np.testing.assert_array_equal(state.history.x, toy_scenario.log_trajectory.x[:, 7:11])
    assert int(state.agent_kind[0]) == agents.AGENT_POLICY and int(state.agent_kind[1]) == agents.AGENT_LOG


def test_step_traces_once():
    env = Env()
    scenario = make_toy_scenario()
    step = chex.assert_max_traces(env.step, n=1)
    jstep = jax.jit(step)
    state = env.reset(scenario, jax.random.key(0))
    for i in range(3):
        state, _ = jstep(scenario, state, jnp.full((2,), 0.1 * i, jnp.float32))
    other = make_toy_scenario(seed=5)
    jstep(other, env.reset(other, jax.random.key(1)), jnp.zeros(2))  # new values, same shapes: no retrace
    assert int(state.timestep) == 13


@pytest.mark.parametrize("batch_shape", [(), (2, 3)])
def test_vmap_batch_shapes_match_per_scenario(batch_shape):
    env = Env()
    size = int(np.prod(batch_shape)) if batch_shape else 1
    flat = [make_toy_scenario(seed=s) for s in range(size)]
    actions = jnp.linspace(-1, 1, size * 2).reshape(size, 2) * jnp.array([1.0, 0.05])

    def episode(scenario, action):
        state = env.reset(scenario, jax.random.key(0))
        state, out = rollout(env, scenario, state, constant_action_policy(action), 20)
        return state.current.x, out.states.y

    expected = [jax.jit(episode)(s, a) for s, a in zip(flat, actions)]
    batched = stack_scenarios(flat)
    batched = jax.tree.map(lambda a: a.reshape(batch_shape + a.shape[1:]), batched)
    fn = episode
    for _ in batch_shape:
        fn = jax.vmap(fn)
    got = jax.jit(fn)(batched, actions.reshape(batch_shape + (2,)))
    for i in range(size):
        idx = np.unravel_index(i, batch_shape) if batch_shape else ()
        np.testing.assert_allclose(got[0][idx], expected[i][0], rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose(got[1][idx], expected[i][1], rtol=1e-6, atol=1e-5)


def test_log_replay_of_uncontrolled_objects_is_exact(toy_scenario):
    env = Env()
    state = env.reset(toy_scenario, jax.random.key(0))
    _, out = jax.jit(lambda s, st: rollout(env, s, st, constant_action_policy(jnp.array([3.0, 0.2])), 80))(
        toy_scenario, state)
    log = toy_scenario.log_trajectory
    others = np.arange(1, toy_scenario.num_objects)
    for f in ("x", "y", "yaw", "vel_x", "vel_y"):
        np.testing.assert_array_equal(np.asarray(getattr(out.states, f))[:, others],
                                      np.asarray(getattr(log, f))[others, 11:91].T)
    # The ego drove its own way: it left the log.
    assert float(jnp.abs(out.states.y[-1, 0] - log.y[0, 90])) > 1.0
    assert out.states.x.shape == (80, toy_scenario.num_objects)


def test_expert_policy_tracks_log_closed_loop(toy_scenario):
    env = Env()
    state = env.reset(toy_scenario, jax.random.key(0))
    _, out = jax.jit(lambda s, st: rollout(env, s, st, log_replay_policy(env), 80, remat=True))(toy_scenario, state)
    err = jnp.hypot(out.states.x[:, 0] - out.log_states.x[:, 0], out.states.y[:, 0] - out.log_states.y[:, 0])
    assert float(err.max()) < 1e-3


def test_constant_velocity_agents():
    scenario = make_toy_scenario()
    env = Env(EnvConfig(non_ego_agent="constant_velocity"))
    state = env.reset(scenario, jax.random.key(0))
    nxt, _ = env.step(scenario, state, jnp.zeros(2))
    np.testing.assert_allclose(nxt.current.x[1], state.current.x[1] + 0.1 * state.current.vel_x[1], rtol=1e-6)
    np.testing.assert_allclose(nxt.current.yaw[1], state.current.yaw[1])


def test_multi_agent_control_moves_every_vehicle():
    scenario = make_toy_scenario(num_cars=3)
    env = Env(EnvConfig(controlled="vehicles"))
    state = env.reset(scenario, jax.random.key(0))
    assert int((state.agent_kind == agents.AGENT_POLICY).sum()) == 3
    nxt, info = env.step(scenario, state, jnp.array([-6.0, 0.0]))
    speed0 = jnp.hypot(state.current.vel_x, state.current.vel_y)[:3]
    speed1 = jnp.hypot(nxt.current.vel_x, nxt.current.vel_y)[:3]
    np.testing.assert_allclose(speed1, speed0 - 0.6, rtol=1e-4)
    np.testing.assert_allclose(info.action[3:], 0.0)
    assert info.action.shape == (scenario.num_objects, 2)


def test_parked_vehicles_follow_their_log_unless_controlled():
    # Car 2 parks: every logged position of it is its start, so it starts 0 m from its goal
    # (<= GOAL_RADIUS 2 m) and, as in GPUDrive, is no self-play agent; the moving cars and the
    # SDC (object 0) are. control_parked=True drives it too.
    scenario = make_toy_scenario(num_cars=3)
    traj = scenario.log_trajectory
    x, y = jnp.asarray(traj.x), jnp.asarray(traj.y)
    parked = traj.replace(x=x.at[2].set(x[2, 0]), y=y.at[2].set(y[2, 0]),
                          vel_x=jnp.asarray(traj.vel_x).at[2].set(0.0), vel_y=jnp.asarray(traj.vel_y).at[2].set(0.0))
    scenario = scenario.replace(log_trajectory=parked)
    kinds = {}
    for control_parked in (False, True):
        state = Env(EnvConfig(controlled="vehicles", control_parked=control_parked)).reset(scenario, jax.random.key(0))
        kinds[control_parked] = np.asarray(state.agent_kind[:3])
    np.testing.assert_array_equal(kinds[False], [agents.AGENT_POLICY, agents.AGENT_POLICY, agents.AGENT_LOG])
    np.testing.assert_array_equal(kinds[True], [agents.AGENT_POLICY] * 3)


def test_validate_names_field():
    s = make_toy_scenario()
    bad = s.replace(log_trajectory=s.log_trajectory.replace(yaw=s.log_trajectory.yaw[:, :50]))
    with pytest.raises(ShapeError, match=r"Scenario.log_trajectory.yaw: expected dimension T=91"):
        bad.validate()
    with pytest.raises(ValueError, match="controlled"):
        EnvConfig(controlled="ego")


def test_trajectory_at_past_end_is_invalid(toy_scenario):
    s = trajectory_at(toy_scenario.log_trajectory, 91)
    assert not bool(s.valid.any())


def test_trajectory_window_is_trajectory_at_per_step(toy_scenario):
    # The rollout's time-major log window: each row equals trajectory_at, with steps
    # before 0 clamped (valid as step 0) and steps past the end invalid.
    log = toy_scenario.log_trajectory
    window = jax.jit(trajectory_window, static_argnums=2)(log, jnp.int32(-2), 5)
    assert window.x.shape == (5, toy_scenario.num_objects)
    for i, t in enumerate(range(-2, 3)):
        want = trajectory_at(log, t)
        for f in ("x", "y", "yaw", "vel_x", "length", "valid"):
            np.testing.assert_array_equal(np.asarray(getattr(window, f))[i], np.asarray(getattr(want, f)))
    late = trajectory_window(log, jnp.int32(89), 4)
    assert bool(late.valid[:2].any()) and not bool(late.valid[2:].any())


def test_step_with_and_without_the_prefetched_log_agree(toy_scenario):
    env = Env(EnvConfig(non_ego_agent="idm"))
    state = env.reset(toy_scenario, jax.random.key(0))
    step = jax.jit(env.step)
    a, info_a = step(toy_scenario, state, jnp.array([1.0, 0.05]))
    b, info_b = step(toy_scenario, state, jnp.array([1.0, 0.05]), None,
                     trajectory_at(toy_scenario.log_trajectory, state.timestep + 1))
    strip = lambda s, info: (s.replace(key=jax.random.key_data(s.key)), info)
    for u, v in zip(jax.tree.leaves(strip(a, info_a)), jax.tree.leaves(strip(b, info_b))):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
