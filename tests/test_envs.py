"""The gymnax-style environment of `jaxloop.envs` against the simulator it wraps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxloop.data.toy import make_toy_scenario
from jaxloop.envs import Box, DrivingEnv, EnvParams
from jaxloop.policy.observation import features, flatten
from jaxloop.sim import rewards
from jaxloop.sim.datatypes import index_batch, stack_scenarios
from jaxloop.sim.env import EnvConfig
from jaxloop.sim.rollout import rollout

NUM_SCENARIOS = 3
HORIZON = 6
NUM_ENVS = 2  # one batch size: one compiled step for the module


@pytest.fixture(scope="module")
def bank():
    return stack_scenarios([make_toy_scenario(seed=s) for s in range(NUM_SCENARIOS)])


@pytest.fixture(scope="module")
def env(bank):
    return DrivingEnv(bank, reward_weights="scorecard", max_steps_in_episode=HORIZON, terminate_on=("offroad",))


@pytest.fixture(scope="module")
def batched(env):
    """reset and step vmapped over environments and jitted once for the module (the bank is traced)."""
    traces = {"step": 0}

    def step(key, state, action, params):
        traces["step"] += 1
        return env.step(key, state, action, params)

    return {"reset": jax.jit(jax.vmap(env.reset, in_axes=(0, None))),
            "step": jax.jit(jax.vmap(step, in_axes=(0, 0, 0, None))), "traces": traces}


def test_episode_equals_rollout(env, bank, batched):
    # One step more than the episode: no auto-reset within the compared steps.
    params = env.default_params.replace(max_steps_in_episode=HORIZON + 1)
    actions = jax.random.uniform(jax.random.key(7), (HORIZON, 2), minval=-1.0, maxval=1.0) * jnp.array([1.0, 0.1])

    # Env 0 is compared with `rollout` on the scenario its reset drew; env 1 runs beside it.
    obs0, state = batched["reset"](jax.random.split(jax.random.key(3), NUM_ENVS), params)
    index, sim_key = int(state.scenario_index[0]), state.sim.key[0]
    got = []
    for t in range(HORIZON):
        both = jnp.stack([actions[t], -actions[t]])
        obs, state, reward, done, info = batched["step"](jax.random.split(jax.random.key(20 + t), NUM_ENVS), state,
                                                         both, params)
        got.append((state.sim.current, obs, reward, done, info["timestep"]))
    states, obs, reward, done, timestep = jax.tree.map(lambda *a: jnp.stack(a)[:, 0], *got)

    def through_rollout():
        scenario = index_batch(bank, index)
        sim_env = env.sim_env
        t0 = sim_env.config.init_steps - 1
        policy = lambda sc, st, k: actions[st.timestep - t0]
        extras = lambda sc, prev, new, info: {
            "reward": rewards.step_reward(sc, prev, new, rewards.get_preset("scorecard")),
            "obs": flatten(features(sc, new, sc.object_metadata.sdc_index, env.obs_config))}
        start = sim_env.reset(scenario, sim_key)
        obs0 = flatten(features(scenario, start, scenario.object_metadata.sdc_index, env.obs_config))
        _, out = rollout(sim_env, scenario, start, policy, HORIZON, extras_fn=extras)
        return obs0, out

    ref_obs0, ref = jax.jit(through_rollout)()
    for name in ("x", "y", "yaw", "vel_x", "vel_y", "valid"):
        np.testing.assert_allclose(getattr(states, name), getattr(ref.states, name), rtol=1e-5, atol=1e-5,
                                   err_msg=name)
    np.testing.assert_allclose(reward, ref.extras["reward"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(obs, ref.extras["obs"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(obs0[0], ref_obs0, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(timestep, ref.timesteps)
    assert not bool(done.any())
    # The ego left its log (the actions are not the log's): the comparison is not log replay.
    assert np.abs(np.asarray(states.x[:, 0]) - np.asarray(ref.log_states.x[:, 0])).max() > 0.01


def test_auto_reset_starts_a_fresh_episode(env, batched):
    params = env.default_params
    num_envs = NUM_ENVS
    obs, state = batched["reset"](jax.random.split(jax.random.key(0), num_envs), params)
    t0 = env.config.init_steps - 1
    total = np.zeros(num_envs)
    for i in range(HORIZON):
        keys = jax.random.split(jax.random.key(100 + i), num_envs)
        last_state = state
        obs, state, reward, done, info = batched["step"](keys, state, jnp.tile(jnp.array([0.2, 0.0]), (num_envs, 1)),
                                                         params)
        total += np.asarray(reward)
        np.testing.assert_array_equal(done, i == HORIZON - 1)
    # The info of the final step reports the finished episodes.
    np.testing.assert_array_equal(info["episode_step"], HORIZON)
    np.testing.assert_array_equal(info["timestep"], t0 + HORIZON)
    assert bool(info["truncated"].all()) and not bool(info["terminated"].any())
    np.testing.assert_array_equal(info["discount"], 1.0)
    np.testing.assert_array_equal(info["scenario_index"], last_state.scenario_index)
    np.testing.assert_allclose(info["episode_return"], total, rtol=1e-5)
    # ... while obs and state are the fresh episodes that `reset` draws with each step's reset key.
    np.testing.assert_array_equal(state.episode_step, 0)
    np.testing.assert_array_equal(state.sim.timestep, t0)
    np.testing.assert_array_equal(state.episode_return, 0.0)
    assert bool(((state.scenario_index >= 0) & (state.scenario_index < NUM_SCENARIOS)).all())
    key_reset = jax.vmap(lambda k: jax.random.split(k)[1])(keys)
    fresh_obs, fresh = batched["reset"](key_reset, params)
    np.testing.assert_allclose(obs, fresh_obs, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(state.sim.current.x, fresh.sim.current.x)
    np.testing.assert_array_equal(state.scenario_index, fresh.scenario_index)


def test_termination_on_offroad(env, batched):
    params = env.default_params.replace(max_steps_in_episode=40)  # traced: the same compiled step as above
    obs, state = batched["reset"](jax.random.split(jax.random.key(0), NUM_ENVS), params)
    # Env 0 steers full right and leaves the two-lane road within a few metres; env 1 keeps straight.
    actions = jnp.array([[0.0, -1.0], [0.0, 0.0]])
    for i in range(40):
        obs, state, reward, done, info = batched["step"](jax.random.split(jax.random.key(i), NUM_ENVS), state, actions,
                                                         params)
        if bool(done[0]):
            break
    assert bool(done[0]) and i < 39, "the ego never left the road"
    assert bool(info["terminated"][0]) and bool(info["offroad"][0]) and not bool(info["truncated"][0])
    assert float(info["discount"][0]) == 0.0 and int(info["episode_step"][0]) == i + 1
    assert int(state.episode_step[0]) == 0
    assert not bool(done[1]) and int(state.episode_step[1]) == i + 1 and float(info["discount"][1]) == 1.0


def test_jit_vmap_over_keys_and_spaces(env, batched):
    params = env.default_params
    num_envs = NUM_ENVS
    obs, state = batched["reset"](jax.random.split(jax.random.key(1), num_envs), params)
    obs_space, act_space = env.observation_space(params), env.action_space(params)
    assert isinstance(obs_space, Box) and isinstance(act_space, Box)
    assert obs.shape == (num_envs, *obs_space.shape) and obs.dtype == obs_space.dtype == jnp.float32
    assert act_space.shape == (env.num_actions,) == (2,)
    np.testing.assert_array_equal(act_space.low, [-1.0, -1.0])  # normalised bicycle actions
    actions = jax.vmap(act_space.sample)(jax.random.split(jax.random.key(2), num_envs))
    assert bool(jnp.all(jax.vmap(act_space.contains)(actions)))
    obs, state, reward, done, info = batched["step"](jax.random.split(jax.random.key(3), num_envs), state, actions,
                                                     params)
    assert obs.shape == (num_envs, env.obs_dim) and reward.shape == done.shape == (num_envs,)
    assert state.sim.timestep.shape == (num_envs,) and info["episode_step"].shape == (num_envs,)
    assert bool(jax.vmap(obs_space.contains)(obs).all())
    # Every episode limit, scenario and state so far went through one trace.
    assert batched["traces"]["step"] == 1
    # Physical actions: the space is the dynamics' limits.
    raw = DrivingEnv(params.scenarios, EnvConfig())
    np.testing.assert_allclose(raw.action_space().high, [6.0, 0.3], rtol=1e-6)


def test_wrong_action_shape_is_a_clear_error(env, batched):
    params = env.default_params
    _, state = batched["reset"](jax.random.split(jax.random.key(0), NUM_ENVS), params)
    state = index_batch(state, 0)
    with pytest.raises(ValueError, match=r"action must have shape \(2,\).*acceleration, curvature.*got \(3,\)"):
        jax.jit(env.step)(jax.random.key(1), state, jnp.zeros(3), params)
    # A batch of actions for one environment is refused too, with the way to batch.
    with pytest.raises(ValueError, match=r"got \(4, 2\).*jax.vmap"):
        env.step(jax.random.key(1), state, jnp.zeros((4, 2)), params)


def test_construction_errors(bank):
    with pytest.raises(ValueError, match="controlled must be 'sdc'"):
        DrivingEnv(bank, EnvConfig(controlled="vehicles"))
    with pytest.raises(ValueError, match=r"max_steps_in_episode must be in \[1, 80\]"):
        DrivingEnv(bank, max_steps_in_episode=81)
    with pytest.raises(ValueError, match="terminate_on"):
        DrivingEnv(bank, terminate_on=("speeding",))
    with pytest.raises(ValueError, match="init_steps=11.*init_steps=5"):
        DrivingEnv.from_source("toy:2", env_config=EnvConfig(init_steps=5))
    with pytest.raises(ValueError, match=r"one leading axis \(\[S, N, T\]\); got .*\[1, 3, 8, 91\]"):
        DrivingEnv(jax.tree.map(lambda a: a[None], bank))
    one = DrivingEnv(make_toy_scenario())  # an unbatched scenario is a bank of one
    assert isinstance(one.default_params, EnvParams) and one.default_params.num_scenarios == 1


def test_gymnax_box():
    spaces = pytest.importorskip("gymnax.environments.spaces")
    box = Box(-1.0, 1.0, (2,)).to_gymnax()
    assert isinstance(box, spaces.Box) and box.shape == (2,)
    np.testing.assert_array_equal(box.high, [1.0, 1.0])
