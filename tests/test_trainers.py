"""Trainers on tiny problems: one compile per step, learning, gradients, GRPO groups, safety."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _train_utils import ego_log_distance, forward_progress, scenarios, tiny_config
from jaxloop.config import APG, GRPO, Experiment, params_of
from jaxloop.train.grpo import group_advantages
from jaxloop.train.ppo import gae
from jaxloop.train.state import apply_update, create, make_optimizer
from jaxloop.train.trainer import make_train, make_trainer


def final_step_distance(scenario, prev_state, state, weights=None):
    """Distance to the log counted only at the last step of a 20-step episode (init_steps 11 -> t = 30)."""
    return jnp.where(state.timestep == 30, ego_log_distance(scenario, prev_state, state), 0.0)


CASES = {
    "bc": dict(config=tiny_config("bc"), reward_fn=None, surrogate_fn=None),
    "apg": dict(config=tiny_config("apg", horizon=20, learning_rate=1e-3), reward_fn=None,
                surrogate_fn=final_step_distance),
    "ppo": dict(config=tiny_config("ppo"), reward_fn=forward_progress, surrogate_fn=None),
    "grpo": dict(config=tiny_config("grpo"), reward_fn=forward_progress, surrogate_fn=None),
}
METRIC = {"bc": ("loss", -1), "apg": ("loss", -1), "ppo": ("episode_return", 1), "grpo": ("episode_return", 1)}


@pytest.fixture(scope="module")
def data():
    return scenarios()


@pytest.mark.parametrize("algo", list(CASES))
def test_step_compiles_once_and_learns(algo, data):
    case = CASES[algo]
    trainer = make_trainer(case["config"], reward_fn=case["reward_fn"], surrogate_fn=case["surrogate_fn"])
    state = trainer.init(jax.random.PRNGKey(0))
    batch = trainer.shard(data)
    history = []
    for i in range(30):
        state, metrics = trainer.train_step(state, batch, jax.random.PRNGKey(i), trainer.params)
        history.append(metrics)
    history = jax.device_get(history)
    assert trainer.train_step._cache_size() == 1  # 30 steps, one trace / compile
    name, sign = METRIC[algo]
    values = np.array([m[name] for m in history])
    assert np.all(np.isfinite(values)) and int(state.skipped) == 0 and int(state.step) == 30
    if algo == "apg":
        # The APG loss counts the distance to the log at step 20 only, so a finite, non-zero
        # gradient on the first step reached the policy through 20 steps of dynamics.
        assert np.isfinite(history[0]["grad_norm"]) and history[0]["grad_norm"] > 1e-6
    first, last = values[:5].mean(), values[-5:].mean()
    # Lower loss (sign -1) or higher return (sign +1) after 30 steps on the same 8 scenarios.
    assert sign * (last - first) > 0.05 * abs(first), (algo, first, last)


def test_grpo_advantages_zero_mean_per_group():
    returns = jax.random.normal(jax.random.PRNGKey(0), (5, 4)) * jnp.arange(1.0, 6.0)[:, None] + 3.0
    adv = group_advantages(returns)
    np.testing.assert_allclose(np.asarray(adv.mean(-1)), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(adv.std(-1)), 1.0, atol=1e-4)
    # By hand for returns (1, 2, 3, 6): mean 3, std sqrt((4 + 1 + 0 + 9) / 4) = sqrt(3.5).
    np.testing.assert_allclose(group_advantages(jnp.array([[1.0, 2.0, 3.0, 6.0]]), eps=0.0),
                               [[-2 / 3.5 ** 0.5, -1 / 3.5 ** 0.5, 0.0, 3 / 3.5 ** 0.5]], rtol=1e-5)


def test_gae_by_hand():
    # gamma = 0.5, lambda = 1, zero values: A_1 = r_1 = 1, A_0 = r_0 + 0.5 * A_1 = 1.5.
    adv, ret = gae(jnp.array([1.0, 1.0]), jnp.zeros(2), jnp.zeros(()), jnp.array([True, True]), 0.5, 1.0)
    np.testing.assert_allclose(adv, [1.5, 1.0])
    # Bootstrapped tail: last value 4 adds 0.5 * 4 to A_1 and 0.25 * 4 to A_0.
    adv, _ = gae(jnp.array([1.0, 1.0]), jnp.zeros(2), jnp.asarray(4.0), jnp.array([True, True]), 0.5, 1.0)
    np.testing.assert_allclose(adv, [2.5, 3.0])


def test_same_seed_same_params_and_vmapped_seeds(data):
    # make_train: the whole run (batch sampling, 3 steps) is one compiled function, vmapped over seeds.
    config = tiny_config("bc")
    train = jax.jit(jax.vmap(make_train(config, data, num_steps=3), in_axes=(0, None)))
    keys = jnp.stack([jax.random.PRNGKey(7), jax.random.PRNGKey(8)])
    a, metrics = train(keys, params_of(config))
    b, _ = train(keys, params_of(config))
    assert metrics["loss"].shape == (2, 3)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # same seed, same parameters
        assert not np.allclose(np.asarray(x[0]), np.asarray(x[1]))  # another seed, other parameters


def test_nan_gradient_is_skipped_and_counted(data):
    trainer = make_trainer(CASES["bc"]["config"])
    state = trainer.init(jax.random.PRNGKey(0))
    # A NaN in the logged ego positions makes the loss and the gradient NaN.
    bad = jax.tree.map(np.copy, data)
    bad.log_trajectory.x[:, 0, :] = np.nan
    bad_batch, good_batch = trainer.shard(bad), trainer.shard(data)
    before = jax.device_get(state.params)
    for i in range(2):
        state, metrics = trainer.train_step(state, bad_batch, jax.random.PRNGKey(i), trainer.params)
        assert float(metrics["update_skipped"]) == 1.0
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(jax.device_get(state.params))):
        np.testing.assert_array_equal(x, y)
    assert (int(state.skipped), int(state.consecutive_skipped), int(state.step)) == (2, 2, 2)
    state, metrics = trainer.train_step(state, good_batch, jax.random.PRNGKey(5), trainer.params)
    assert (int(state.skipped), int(state.consecutive_skipped)) == (2, 0)
    assert not all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(before),
                                                         jax.tree.leaves(jax.device_get(state.params))))


def test_apply_update_guard_directly():
    params = {"w": jnp.ones(3)}
    opt = make_optimizer(0.1, 1.0)
    state = create(params, opt)
    new, info = apply_update(state, {"w": jnp.array([1.0, jnp.nan, 0.0])}, jnp.asarray(1.0), opt)
    np.testing.assert_array_equal(new.params["w"], params["w"])
    assert int(new.skipped) == 1 and float(info["update_skipped"]) == 1.0
    new, _ = apply_update(new, {"w": jnp.ones(3)}, jnp.asarray(1.0), opt)
    # Adam's first step moves every coordinate by the learning rate: 1 - 0.1.
    np.testing.assert_allclose(new.params["w"], 0.9, rtol=1e-5)
    assert int(new.consecutive_skipped) == 0 and int(new.skipped) == 1


def test_cosine_learning_rate_decay_steps():
    # Adam moves each coordinate by the current learning rate per step (unit gradients):
    # 0.1 * (0.1 + 0.9 * (1 + cos(pi * k / 4)) / 2) at k = 0..3, then 0.01 from step 4 on.
    opt = make_optimizer(0.1, 10.0, decay_steps=4)
    state = create({"w": jnp.zeros(())}, opt)
    moves = []
    for _ in range(6):
        new, _ = apply_update(state, {"w": jnp.ones(())}, jnp.asarray(1.0), opt)
        moves.append(float(state.params["w"] - new.params["w"]))
        state = new
    expected = [0.1 * (0.1 + 0.9 * (1 + np.cos(np.pi * min(k, 4) / 4)) / 2) for k in range(6)]
    np.testing.assert_allclose(moves, expected, rtol=1e-4)


def test_real_reward_preset_runs(data):
    # The default reward comes from jaxloop.sim.rewards (progress_safety) when none is injected.
    config = tiny_config("grpo", horizon=2, batch_size=2, algo=GRPO(group_size=2))
    trainer = make_trainer(config)
    state = trainer.init(jax.random.PRNGKey(0))
    batch = trainer.shard(jax.tree.map(lambda a: a[:2], data))
    state, metrics = trainer.train_step(state, batch, jax.random.PRNGKey(0), trainer.params)
    assert np.isfinite(float(metrics["episode_return"])) and float(metrics["group_adv_mean"]) < 1e-4
    assert int(state.skipped) == 0


def test_bad_config_messages(data):
    with pytest.raises(ValueError, match="algo"):
        Experiment(algo="dqn")
    with pytest.raises(ValueError, match="divide"):
        tiny_config("apg", horizon=10, algo=APG(truncate_every=3))
    trainer = make_trainer(tiny_config("ppo", horizon=36, batch_size=2))
    with pytest.raises(ValueError, match="horizon 36 exceeds"):
        trainer.train_step(trainer.init(jax.random.PRNGKey(0)), trainer.shard(jax.tree.map(lambda a: a[:2], data)),
                           jax.random.PRNGKey(0), trainer.params)


def test_logged_state_matches_reset(data):
    # The BC observation state at log step init_steps - 1 (a traced start step) is exactly the env's initial state.
    from jaxloop.sim.env import Env
    config = tiny_config("bc")
    env = Env(config.env_config())
    scenario = jax.tree.map(lambda a: a[1], data)
    key = jax.random.PRNGKey(3)
    a = jax.jit(lambda s: env.reset(s, key))(scenario)
    b = jax.jit(lambda s, t: env.reset(s, key, timestep=t))(scenario, jnp.asarray(config.data.init_steps - 1))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_crosser_augmentation_adds_a_crossing_road_user_and_makes_traffic_reactive(data):
    from jaxloop.sim import agents
    from jaxloop.sim.datatypes import TYPE_CYCLIST, TYPE_PEDESTRIAN
    from jaxloop.train.common import make_context, start_episode

    sc = jax.tree.map(lambda a: a[0], data)  # 4 cars in 8 slots: slot 4 is the first free one
    on = make_context(tiny_config("apg", horizon=10, crosser_prob=1.0))
    off = make_context(tiny_config("apg", horizon=10, crosser_prob=0.0))
    aug, state = start_episode(on, on.env, sc, jax.random.PRNGKey(3))
    assert int(aug.object_metadata.object_types[4]) in (TYPE_PEDESTRIAN, TYPE_CYCLIST)
    assert bool(aug.object_metadata.is_valid[4]) and not bool(sc.object_metadata.is_valid[4])
    kinds = np.asarray(state.agent_kind)
    assert kinds[4] == agents.AGENT_LOG and np.all(kinds[1:4] == agents.AGENT_IDM)  # crosser walks, cars react
    same, state_off = start_episode(off, off.env, sc, jax.random.PRNGKey(3))
    assert same is sc and np.all(np.asarray(state_off.agent_kind)[1:4] == agents.AGENT_LOG)
    # Start noise moves the ego (only) off its logged start state.
    noisy = make_context(tiny_config("apg", horizon=10, start_noise=1.0))
    _, state_noisy = start_episode(noisy, noisy.env, sc, jax.random.PRNGKey(3))
    moved = np.hypot(np.asarray(state_noisy.current.x - state_off.current.x),
                     np.asarray(state_noisy.current.y - state_off.current.y))
    assert moved[0] > 1e-3 and np.all(moved[1:] == 0.0)
    # The APG step runs with augmentation and gives finite, non-zero gradients.
    trainer = make_trainer(tiny_config("apg", horizon=10, crosser_prob=0.5, start_noise=1.0))
    st, metrics = trainer.train_step(trainer.init(jax.random.PRNGKey(0)), trainer.shard(data), jax.random.PRNGKey(1),
                                     trainer.params)
    assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0


@pytest.mark.parametrize("through", [True, False])
def test_apg_grad_through_agents_reaches_the_policy_through_an_idm_follower(through):
    # The ego (policy) ahead of an IDM follower in its lane; the loss is only the follower's
    # distance travelled, so the policy's gradient is the follower's response to the ego
    # (its lead): non-zero with apg.grad_through_agents, exactly zero without.
    from jaxloop.data.toy import make_track_scenario
    from jaxloop.sim.datatypes import stack_scenarios

    t = np.arange(40) * 0.1
    track = lambda x: dict(x=np.asarray(x, np.float64), y=np.zeros(40))
    scenario = make_track_scenario([track(20.0 + 6.0 * t), track(8.0 * t)], num_objects=3)
    config = tiny_config("apg", horizon=15, batch_size=2, non_ego_agent="idm",
                         algo=APG(grad_through_agents=through))
    assert config.env_config().grad_through_agents is through
    follower_progress = lambda sc, prev, new, weights: -(new.current.x[1] - prev.current.x[1])
    trainer = make_trainer(config, surrogate_fn=follower_progress)
    state = trainer.init(jax.random.PRNGKey(0))
    batch = trainer.shard(stack_scenarios([scenario, scenario]))
    _, metrics = trainer.train_step(state, batch, jax.random.PRNGKey(1), trainer.params)
    grad_norm = float(metrics["grad_norm"])
    assert (grad_norm > 1e-4) if through else (grad_norm == 0.0)


def test_make_train_vmaps_over_seeds_and_reward_weightings(data):
    # Two reward weightings x two seeds in one compiled, vmapped make_train call; each member equals its own
    # run, and the weighting changes what APG learns: the loss reads the traced `Params.reward` weights.
    from jaxloop.config import stack_params
    from jaxloop.sim.rewards import RewardWeights

    def surrogate(scenario, prev, state, weights):
        return (weights.log_divergence * ego_log_distance(scenario, prev, state)
                - weights.progress * forward_progress(scenario, prev, state))

    config = tiny_config("apg", horizon=3, batch_size=2, learning_rate=1e-2)
    train = make_train(config, jax.tree.map(lambda a: a[:4], data), num_steps=2, surrogate_fn=surrogate)
    tracking = params_of(config, reward=RewardWeights(progress=0.0, log_divergence=1.0))
    progress = params_of(config, reward=RewardWeights(progress=1.0, log_divergence=0.0))
    keys = jnp.stack([jax.random.PRNGKey(1), jax.random.PRNGKey(2)])
    sweep = jax.jit(jax.vmap(jax.vmap(train, in_axes=(0, None)), in_axes=(None, 0)))  # [weighting, seed]
    states, metrics = sweep(keys, stack_params(tracking, progress))
    assert metrics["loss"].shape == (2, 2, 2) and sweep._cache_size() == 1
    single = jax.jit(train)
    for i, p in enumerate((tracking, progress)):
        for j in range(2):
            alone, _ = single(keys[j], p)
            for x, y in zip(jax.tree.leaves(alone.params), jax.tree.leaves(states.params)):
                np.testing.assert_allclose(np.asarray(y[i, j]), np.asarray(x), rtol=2e-4, atol=1e-6)
    assert single._cache_size() == 1  # another weighting is another input, not another compile
    moved = [float(np.max(np.abs(np.asarray(x[0, 0]) - np.asarray(x[1, 0])))) for x in jax.tree.leaves(states.params)]
    assert max(moved) > 1e-4  # same seed, other weights: other parameters
