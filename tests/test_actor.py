"""The actor contract (`jaxloop.sim.actor`): memory carried and reset per episode, controlled masks,
baselines and the learned policy as actors, PPO collection as a rollout of the policy's actor."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxloop.data.toy import make_toy_scenario
from jaxloop.io.policies import make_actor, make_policy_fn
from jaxloop.policy import networks
from jaxloop.policy.observation import features
from jaxloop.sim import agents
from jaxloop.sim.actor import (Actor, ActorOutput, Observation, as_actor, baseline_actor, map_policy,
                               with_agent_kind)
from jaxloop.sim.datatypes import trajectory_window
from jaxloop.sim.env import Env, EnvConfig
from jaxloop.sim.rollout import constant_action_policy, rollout
from jaxloop.train.common import Transitions, collect, init_state, make_context, start_episode
from tests._train_utils import scenarios, tiny_config

H = 6


@pytest.fixture(scope="module")
def scenario():
    return make_toy_scenario(num_objects=6, num_steps=30, num_cars=4)


def counter_actor(step_accel: float = 0.5) -> Actor:
    """A recurrent toy: the ego's acceleration grows with the steps its memory has counted."""

    def init(key, scenario):
        del key, scenario
        return jnp.zeros((), jnp.int32)

    def select_action(params, obs: Observation, count, key):
        del params, key
        num = obs.state.current.x.shape[-1]
        ego = obs.scenario.object_metadata.sdc_index
        accel = step_accel * count.astype(jnp.float32)
        action = jnp.zeros((num, 2)).at[ego, 0].set(accel)
        return ActorOutput(action=action, controlled=jnp.arange(num) == ego, actor_state=count + 1,
                           aux={"count": count})

    return Actor(init=init, select_action=select_action, name="counter")


def test_recurrent_actor_state_carried_and_reset_per_episode(scenario):
    env = Env()
    actor = counter_actor()
    state = env.reset(scenario, jax.random.key(0))
    run = jax.jit(lambda st, mem: rollout(env, scenario, st, actor, H, actor_state=mem))
    final, out = run(state, None)
    # Carried step to step: the memory counts, and the action it drives follows it.
    np.testing.assert_array_equal(out.aux["count"], np.arange(H))
    assert int(out.actor_state) == H
    np.testing.assert_allclose(out.actions[:, 0, 0], 0.5 * np.arange(H), atol=1e-6)
    # A new episode (actor_state=None) starts from `init` again, whatever ran before.
    _, again = run(env.reset(scenario, jax.random.key(1)), None)
    np.testing.assert_array_equal(again.aux["count"], np.arange(H))
    # Passing the memory on continues the same episode: two halves equal one unroll.
    _, whole = jax.jit(lambda st: rollout(env, scenario, st, actor, 2 * H))(state)
    _, second = run(final, out.actor_state)
    np.testing.assert_array_equal(second.aux["count"], np.arange(H, 2 * H))
    np.testing.assert_array_equal(np.concatenate([out.states.x, second.states.x]), whole.states.x)
    # Memory changes the behaviour: the ego ends further ahead than with a memoryless coast.
    _, coast = rollout(env, scenario, state, constant_action_policy(jnp.zeros(2)), 2 * H)
    ego = int(scenario.object_metadata.sdc_index)
    assert float(whole.states.x[-1, ego]) > float(coast.states.x[-1, ego]) + 0.5


def test_actor_state_resets_per_episode_over_a_batch():
    env = Env()
    batch = scenarios(count=3, num_objects=6, num_steps=30)
    episode = lambda sc, k: rollout(env, sc, env.reset(sc, k), counter_actor(), H)[1].aux["count"]
    counts = jax.jit(jax.vmap(episode))(batch, jax.random.split(jax.random.key(0), 3))
    np.testing.assert_array_equal(counts, np.tile(np.arange(H), (3, 1)))


def mask_actor(mask: np.ndarray, accel: float = 3.0) -> Actor:
    """Drives the objects of `mask` with a hard acceleration and a turn; zero actions elsewhere."""

    def select_action(params, obs, memory, key):
        num = obs.state.current.x.shape[-1]
        action = jnp.where(jnp.asarray(mask)[:, None], jnp.array([accel, 0.05]), 0.0) * jnp.ones((num, 2))
        return ActorOutput(action=action, controlled=jnp.asarray(mask), actor_state=memory, aux={})

    return Actor(init=lambda k, s: (), select_action=select_action)


def assert_objects_equal(a, b, objects):
    for field in ("x", "y", "yaw", "vel_x", "vel_y", "valid"):
        np.testing.assert_array_equal(np.asarray(getattr(a, field))[:, objects],
                                      np.asarray(getattr(b, field))[:, objects], err_msg=field)


def test_controlled_mask_leaves_uncontrolled_objects_untouched(scenario):
    env = Env(EnvConfig(controlled="vehicles"))
    state = env.reset(scenario, jax.random.key(0))
    policy_objects = np.asarray(state.agent_kind == agents.AGENT_POLICY)
    assert policy_objects.sum() >= 3
    drive = policy_objects & (np.arange(scenario.num_objects) % 2 == 0)  # every other vehicle
    _, none = rollout(env, scenario, state, mask_actor(np.zeros_like(drive)), H)  # the no-actor rollout
    _, out = rollout(env, scenario, state, mask_actor(drive), H)
    # Uncontrolled objects (vehicles left alone included) are bit for bit the no-actor rollout ...
    assert_objects_equal(out.states, none.states, ~drive)
    # ... which replays the log for them; their recorded actions are zero.
    assert_objects_equal(out.states, out.log_states, ~drive)
    np.testing.assert_array_equal(np.asarray(out.actions)[:, ~drive], 0.0)
    # The controlled ones did move under the action.
    assert np.abs(np.asarray(out.states.x)[-1, drive] - np.asarray(none.states.x)[-1, drive]).min() > 0.1


def test_uncontrolled_ego_follows_the_log_with_idm_traffic(scenario):
    """An actor that leaves the ego alone equals today's rollout with the ego on log replay, IDM around it."""
    env = Env(EnvConfig(non_ego_agent="idm"))
    state = env.reset(scenario, jax.random.key(0))
    nobody = np.zeros(scenario.num_objects, bool)
    _, out = rollout(env, scenario, state, mask_actor(nobody), H)
    ego = scenario.object_metadata.sdc_index
    logged = env.reset(scenario, jax.random.key(0), agent_kind=state.agent_kind.at[ego].set(agents.AGENT_LOG))
    _, ref = rollout(env, scenario, logged, constant_action_policy(jnp.zeros(2)), H)
    assert_objects_equal(out.states, ref.states, np.ones(scenario.num_objects, bool))


@pytest.mark.parametrize("name", ["expert", "constant_velocity", "idm"])
def test_baseline_actors_reproduce_todays_baselines(scenario, name):
    env = Env(EnvConfig(non_ego_agent="idm"))
    ego = scenario.object_metadata.sdc_index
    kind = {"expert": agents.AGENT_LOG, "constant_velocity": agents.AGENT_CONSTANT_VELOCITY,
            "idm": agents.AGENT_IDM}[name]
    state = env.reset(scenario, jax.random.key(0))
    # Today's baseline: the ego's agent kind set at reset, any action ignored.
    ref_state = env.reset(scenario, jax.random.key(0), agent_kind=state.agent_kind.at[ego].set(kind), with_idm=True)
    _, ref = rollout(env, scenario, ref_state, constant_action_policy(jnp.zeros(2)), H)
    actor = baseline_actor(name, env.config.action_dim)
    act_state = env.reset(scenario, jax.random.key(0), agent_kind=with_agent_kind(actor, scenario, state.agent_kind),
                          with_idm=True)
    _, out = rollout(env, scenario, act_state, actor, H)
    assert_objects_equal(out.states, ref.states, np.ones(scenario.num_objects, bool))
    np.testing.assert_array_equal(out.actions, ref.actions)
    if name != "expert":  # the baseline really drives the ego, not the log
        assert np.abs(np.asarray(out.states.x)[:, ego] - np.asarray(out.log_states.x)[:, ego]).max() > 1e-3


def test_policy_fn_and_learned_actor_agree(scenario):
    config = tiny_config("ppo")
    ctx = make_context(config)
    params = init_state(ctx, jax.random.key(0)).params
    env = Env(config.env_config())
    state = env.reset(scenario, jax.random.key(3))
    for deterministic in (True, False):
        policy = make_policy_fn(ctx.graphdef, params, config.obs, deterministic)
        actor = make_actor(ctx.graphdef, config.obs, deterministic)
        _, ref = rollout(env, scenario, state, policy, H)
        _, out = rollout(env, scenario, state, actor, H, actor_params=params)
        np.testing.assert_array_equal(out.states.x, ref.states.x)
        np.testing.assert_array_equal(out.actions, ref.actions)
        if deterministic:  # a PolicyFn wrapped explicitly is the PolicyFn
            _, adapted = rollout(env, scenario, state, as_actor(policy), H)
            np.testing.assert_array_equal(adapted.states.x, ref.states.x)
        assert out.aux["value"].shape == (H,)
        if not deterministic:  # the Gaussian head reports its log-prob
            assert out.aux["log_prob"].shape == (H,) and np.all(np.isfinite(out.aux["log_prob"]))


def test_map_policy_wraps_an_actor(scenario):
    env = Env()
    state = env.reset(scenario, jax.random.key(0))
    negate = lambda inner: (lambda sc, st, k: -inner(sc, st, k))
    _, out = rollout(env, scenario, state, map_policy(negate, counter_actor(-0.5)), H)
    _, ref = rollout(env, scenario, state, counter_actor(0.5), H)
    np.testing.assert_array_equal(out.states.x, ref.states.x)
    np.testing.assert_array_equal(out.aux["count"], np.arange(H))


def reference_collect(ctx, params, p, scenario, key, num_steps, key_aug=None):
    """PPO / GRPO collection as its own scan (before it became a rollout of the policy's actor)."""
    env = ctx.env
    model = nnx.merge(ctx.graphdef, params)
    ego = scenario.object_metadata.sdc_index
    key_reset, key_run = jax.random.split(key)
    scenario, state = start_episode(ctx, env, scenario, key_reset, key_aug)
    state = state.replace(key=key_run)

    def body(carry, log_next):
        key, key_policy = jax.random.split(carry.key)
        carry = carry.replace(key=key)
        feats = features(scenario, carry, ego, ctx.config.obs)
        out = model(feats)
        action, u, log_prob = networks.sample(out, key_policy)
        new_state, _ = env.step(scenario, carry, action, p.env, log_next=log_next)
        reward = ctx.reward(p, scenario, carry, new_state)
        valid = carry.current.valid[ego] & new_state.current.valid[ego]
        return new_state, Transitions(feats=feats, u=u, log_prob=log_prob, value=out.value,
                                      reward=jnp.where(valid, reward, 0.0), valid=valid)

    logs = trajectory_window(scenario.log_trajectory, state.timestep + 1, num_steps)
    final, traj = jax.lax.scan(body, state, logs, length=num_steps)
    last_value = model(features(scenario, final, ego, ctx.config.obs)).value
    return traj, last_value, final


def test_ppo_collection_through_rollout_equals_its_own_scan(scenario):
    ctx = make_context(tiny_config("ppo"))
    params = init_state(ctx, jax.random.key(0)).params
    key = jax.random.key(7)
    new = jax.jit(lambda w, sc: collect(ctx, w, ctx.params, sc, key, H))(params, scenario)
    old = jax.jit(lambda w, sc: reference_collect(ctx, w, ctx.params, sc, key, H))(params, scenario)
    data = lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x
    assert jax.tree.structure(new) == jax.tree.structure(old)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(old)):  # transitions, last value, final state
        np.testing.assert_array_equal(np.asarray(data(a)), np.asarray(data(b)))
    traj = new[0]
    assert traj.log_prob.shape == (H,) and traj.value.shape == (H,) and bool(traj.valid.all())


def test_log_tracking_actor_drives_every_agent_along_its_feasible_log():
    # A toy log within the bicycle's limits: tracked closed loop, every policy-driven vehicle stays on its log
    # (the inverse reproduces each logged step from the simulated state); a drift-free reference.
    from jaxloop.sim.actor import log_tracking_actor
    from jaxloop.sim.datatypes import trajectory_at
    from jaxloop.sim.dynamics import InvertibleBicycle
    sc = make_toy_scenario(num_objects=6, num_cars=4, num_steps=30, seed=2)
    env = Env(EnvConfig(controlled="vehicles", dynamics=InvertibleBicycle(normalize_actions=True)))
    state = env.reset(sc, jax.random.key(0))
    actor = log_tracking_actor(env.config.dynamics)
    _, out = jax.jit(lambda s: rollout(env, sc, s, actor, 15))(state)
    driven = np.asarray(state.agent_kind == agents.AGENT_POLICY)
    assert driven.sum() >= 3
    log_x = np.stack([np.asarray(trajectory_at(sc.log_trajectory, t).x) for t in np.asarray(out.timesteps)])
    err = np.abs(np.asarray(out.states.x) - log_x)[:, driven]
    assert err.max() < 1e-2
    # The same objects driven at a constant zero action leave their logs: the test can fail.
    _, still = jax.jit(lambda s: rollout(env, sc, s, constant_action_policy(jnp.zeros(2)), 15))(state)
    assert np.abs(np.asarray(still.states.x) - log_x)[:, driven].max() > 0.1
