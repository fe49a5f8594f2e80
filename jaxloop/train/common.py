"""Pieces every trainer shares: the model / env context, the ego policy, on-policy collection.

A `Context` bundles the static parts of a trainer (config, env, the model's graph
definition, the optimiser, the reward functions). Per-scenario functions here are
unbatched; the algorithms vmap them over the batch.

Reward functions are injectable components with the signature
`fn(scenario, prev_state, state) -> scalar`; by default they come from the reward
presets of `jaxloop.sim.rewards` (`step_reward` for RL, `step_surrogate_loss` for APG).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from jaxloop.io.policies import build_model
from jaxloop.policy import networks
from jaxloop.policy.observation import Features, features
from jaxloop.sim.datatypes import ObjectState, Scenario, SimState, trajectory_window
from jaxloop.sim.env import Env
from jaxloop.train import state as state_lib
from jaxloop.train.config import TrainConfig

StepFn = Callable[[Scenario, SimState, SimState], jax.Array]


def default_reward_fn(preset: str) -> StepFn:
    """`rewards.step_reward` under the named preset (the RL reward)."""
    from jaxloop.sim import rewards
    weights = rewards.get_preset(preset)
    return lambda scenario, prev, state: rewards.step_reward(scenario, prev, state, weights)


def default_surrogate_fn(preset: str) -> StepFn:
    """`rewards.step_surrogate_loss` under the named preset (the APG loss per step)."""
    from jaxloop.sim import rewards
    weights = rewards.get_preset(preset)
    return lambda scenario, prev, state: rewards.step_surrogate_loss(scenario, prev, state, weights)


@dataclasses.dataclass(frozen=True)
class Context:
    config: TrainConfig
    env: Env
    graphdef: nnx.GraphDef
    optimizer: optax.GradientTransformation
    reward_fn: StepFn | None = None
    surrogate_fn: StepFn | None = None


def make_context(config: TrainConfig, reward_fn: StepFn | None = None,
                 surrogate_fn: StepFn | None = None) -> Context:
    env = Env(config.env_config())
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: build_model(config, jax.random.PRNGKey(0))))
    if config.algo in ("ppo", "grpo") and reward_fn is None:
        reward_fn = default_reward_fn(config.reward_preset)
    if config.algo == "apg" and surrogate_fn is None:
        surrogate_fn = default_surrogate_fn(config.reward_preset)
    return Context(config=config, env=env, graphdef=graphdef,
                   optimizer=state_lib.make_optimizer(config.learning_rate, config.max_grad_norm,
                                                      config.lr_decay_steps),
                   reward_fn=reward_fn, surrogate_fn=surrogate_fn)


def init_state(ctx: Context, key: jax.Array) -> state_lib.TrainState:
    """Fresh parameters and optimiser state; GRPO's reference policy starts as a copy of the parameters."""
    key_model = jax.random.split(key)[0]  # the first half, as always: a seed keeps its initial parameters
    _, params = nnx.split(build_model(ctx.config, key_model))
    ref = jax.tree.map(jnp.copy, params) if ctx.config.algo == "grpo" else None
    return state_lib.create(params, ctx.optimizer, ref)


def ego_features(ctx: Context, scenario: Scenario, state: SimState) -> Features:
    return features(scenario, state, scenario.object_metadata.sdc_index, ctx.config.obs)


def apply_model(ctx: Context, params: nnx.State, feats: Features) -> networks.PolicyOutput:
    return nnx.merge(ctx.graphdef, params)(feats)


def check_horizon(ctx: Context, scenario: Scenario) -> None:
    """Static check that the closed-loop horizon fits in the log (called at trace time)."""
    available = scenario.log_trajectory.x.shape[-1] - ctx.config.init_steps
    if ctx.config.horizon > available:
        raise ValueError(f"horizon {ctx.config.horizon} exceeds the {available} closed-loop steps of the scenarios "
                         f"(T={scenario.log_trajectory.x.shape[-1]}, init_steps={ctx.config.init_steps})")


def start_episode(ctx: Context, env: Env, scenario: Scenario, key: jax.Array,
                  key_aug: jax.Array | None = None) -> tuple[Scenario, SimState]:
    """The (possibly augmented) scenario and its initial state for one closed-loop episode.

    With `config.crosser_prob > 0`, a random crossing pedestrian or cyclist drawn with
    `key_aug` (default: from `key`) is added (`jaxloop.sim.perturb.random_crosser`) and
    then every other non-policy object is IDM (episodes without one keep the configured
    traffic). With `config.start_noise > 0`, the ego starts off its logged state by
    `jaxloop.sim.perturb.ego_noise` at a random fraction (uniform in [0, start_noise]) of
    1 m, 0.1 rad and 1 m/s standard deviations. Episodes sharing `key_aug` share both.
    """
    cfg = ctx.config
    if cfg.crosser_prob <= 0 and cfg.start_noise <= 0:
        return scenario, env.reset(scenario, key)
    from jaxloop.sim.perturb import ego_noise, random_crosser, react_to_crosser
    key_reset = key
    if key_aug is None:
        key_aug, key_reset = jax.random.split(key)
    key_cross, key_scale, key_noise = jax.random.split(key_aug, 3)
    if cfg.crosser_prob > 0:
        scenario, added = random_crosser(scenario, key_cross, cfg.crosser_prob, cfg.init_steps)
        state = env.reset(scenario, key_reset)
        kind = jnp.where(added, react_to_crosser(scenario, state.agent_kind), state.agent_kind)
        state = env.reset(scenario, key_reset, agent_kind=kind, with_idm=True)
    else:
        state = env.reset(scenario, key_reset)
    if cfg.start_noise > 0:
        scale = cfg.start_noise * jax.random.uniform(key_scale)
        state = ego_noise(scale, 0.1 * scale, scale).state_fn(scenario, state, key_noise)
    return scenario, state


@struct.dataclass
class Transitions:
    """On-policy samples of one episode; leading axis H."""

    feats: Features  # [H, ...] observation before each action
    u: jax.Array  # [H, A] pre-tanh action sample
    log_prob: jax.Array  # [H] log-prob of the action under the behaviour policy
    value: jax.Array  # [H] value estimate (zeros without a value head)
    reward: jax.Array  # [H]
    valid: jax.Array  # [H] bool: the ego exists before and after the step


def collect(ctx: Context, params: nnx.State, scenario: Scenario, key: jax.Array,
            num_steps: int, key_aug: jax.Array | None = None) -> tuple[Transitions, jax.Array, SimState]:
    """Samples one episode with the tanh-Gaussian policy: (transitions, value of the final state, final state).

    `key_aug` draws the episode's augmentation (see `start_episode`).
    """
    env = ctx.env
    model = nnx.merge(ctx.graphdef, params)
    ego = scenario.object_metadata.sdc_index
    key_reset, key_run = jax.random.split(key)
    scenario, state = start_episode(ctx, env, scenario, key_reset, key_aug)
    state = state.replace(key=key_run)

    def body(carry: SimState, log_next: ObjectState):
        key, key_policy = jax.random.split(carry.key)
        carry = carry.replace(key=key)
        feats = features(scenario, carry, ego, ctx.config.obs)
        out = model(feats)
        action, u, log_prob = networks.sample(out, key_policy)
        new_state, _ = env.step(scenario, carry, action, log_next=log_next)
        reward = ctx.reward_fn(scenario, carry, new_state)
        valid = carry.current.valid[ego] & new_state.current.valid[ego]
        return new_state, Transitions(feats=feats, u=u, log_prob=log_prob, value=out.value,
                                      reward=jnp.where(valid, reward, 0.0), valid=valid)

    with jax.named_scope("train.collect"):
        # The horizon's log read once, time-major, as in `rollout`.
        logs = trajectory_window(scenario.log_trajectory, state.timestep + 1, num_steps)
        final, traj = jax.lax.scan(body, state, logs, length=num_steps)
        last_value = model(features(scenario, final, ego, ctx.config.obs)).value
    return traj, last_value, final


def mean_over(x: jax.Array, mask: jax.Array) -> jax.Array:
    mask = mask.astype(x.dtype)
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def gradient_step_fn(ctx: "Context", loss_fn: Callable, scope: str):
    """`train_step(state, batch, key)` for a differentiable `loss_fn(ctx, params, batch, key) -> (loss, metrics)`:
    value and gradient, a guarded optimiser update (non-finite updates are skipped), step + 1."""

    def step_fn(state, batch: Scenario, key: jax.Array):
        with jax.named_scope(scope):
            (loss, metrics), grads = jax.value_and_grad(lambda p: loss_fn(ctx, p, batch, key), has_aux=True)(
                state.params)
            state, upd = state_lib.apply_update(state, grads, loss, ctx.optimizer)
            return state.replace(step=state.step + 1), {**metrics, **upd}

    return step_fn
