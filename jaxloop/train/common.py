"""Pieces every trainer shares: the model / env context, the ego policy, on-policy collection.

A `Context` bundles the static parts of a trainer (experiment, env, the model's graph
definition, the optimiser, injected reward functions). Per-scenario functions here are
unbatched; `over_batch` (`jaxloop.sim.rollout`) adds the batch axis, once per step.

The traced `Params` (`jaxloop.config`) reach every per-scenario function: reward weights
go to the reward, agent constants and action limits to every `env.step`.

Reward functions are injectable components with the signature
`fn(scenario, prev_state, state, weights) -> scalar`, `weights` the traced
`Params.reward` (`RewardWeights`); by default they are `jaxloop.sim.rewards.step_reward`
(RL) and `step_surrogate_loss` (APG).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from jaxloop.config import GRPO, Experiment, Params, params_of
from jaxloop.io.policies import build_model
from jaxloop.policy import networks
from jaxloop.policy.observation import Features, features
from jaxloop.sim import rewards
from jaxloop.sim.datatypes import ObjectState, Scenario, SimState, trajectory_window
from jaxloop.sim.env import Env
from jaxloop.train import state as state_lib

StepFn = Callable[[Scenario, SimState, SimState, rewards.RewardWeights], jax.Array]


@dataclasses.dataclass(frozen=True)
class Context:
    config: Experiment
    env: Env
    graphdef: nnx.GraphDef
    optimizer: optax.GradientTransformation
    reward_fn: StepFn = rewards.step_reward  # the RL reward of a transition under the traced weights
    surrogate_fn: StepFn = rewards.step_surrogate_loss  # the APG loss of a transition

    @property
    def params(self) -> Params:
        """The experiment's default traced parameters."""
        return params_of(self.config)

    def reward(self, params: Params, scenario: Scenario, prev: SimState, state: SimState) -> jax.Array:
        """The RL reward `[]` of a transition under `params.reward`."""
        return self.reward_fn(scenario, prev, state, params.reward)

    def surrogate(self, params: Params, scenario: Scenario, prev: SimState, state: SimState) -> jax.Array:
        """The APG loss `[]` of a transition under `params.reward`."""
        return self.surrogate_fn(scenario, prev, state, params.reward)


def make_context(config: Experiment, reward_fn: StepFn | None = None,
                 surrogate_fn: StepFn | None = None) -> Context:
    env = Env(config.env_config())
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: build_model(config, jax.random.PRNGKey(0))))
    return Context(config=config, env=env, graphdef=graphdef,
                   optimizer=state_lib.make_optimizer(config.learning_rate, config.max_grad_norm,
                                                      config.lr_decay_steps),
                   reward_fn=reward_fn or rewards.step_reward,
                   surrogate_fn=surrogate_fn or rewards.step_surrogate_loss)


def init_state(ctx: Context, key: jax.Array) -> state_lib.TrainState:
    """Fresh parameters and optimiser state; GRPO's reference policy starts as a copy of the parameters."""
    key_model = jax.random.split(key)[0]  # the first half, as always: a seed keeps its initial parameters
    _, params = nnx.split(build_model(ctx.config, key_model))
    ref = jax.tree.map(jnp.copy, params) if isinstance(ctx.config.algo, GRPO) else None
    return state_lib.create(params, ctx.optimizer, ref)


def ego_features(ctx: Context, scenario: Scenario, state: SimState) -> Features:
    return features(scenario, state, scenario.object_metadata.sdc_index, ctx.config.obs)


def apply_model(ctx: Context, params: nnx.State, feats: Features) -> networks.PolicyOutput:
    return nnx.merge(ctx.graphdef, params)(feats)


def check_horizon(ctx: Context, scenario: Scenario) -> None:
    """Static check that the closed-loop horizon fits in the log (called at trace time)."""
    init_steps, horizon = ctx.config.data.init_steps, ctx.config.env.horizon
    available = scenario.log_trajectory.x.shape[-1] - init_steps
    if horizon > available:
        raise ValueError(f"horizon {horizon} exceeds the {available} closed-loop steps of the scenarios "
                         f"(T={scenario.log_trajectory.x.shape[-1]}, init_steps={init_steps})")


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
    cfg = ctx.config.env
    if cfg.crosser_prob <= 0 and cfg.start_noise <= 0:
        return scenario, env.reset(scenario, key)
    from jaxloop.sim.perturb import ego_noise, random_crosser, react_to_crosser
    key_reset = key
    if key_aug is None:
        key_aug, key_reset = jax.random.split(key)
    key_cross, key_scale, key_noise = jax.random.split(key_aug, 3)
    if cfg.crosser_prob > 0:
        scenario, added = random_crosser(scenario, key_cross, cfg.crosser_prob,
                                           init_steps=ctx.config.data.init_steps)
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


def collect(ctx: Context, params: nnx.State, p: Params, scenario: Scenario, key: jax.Array,
            num_steps: int, key_aug: jax.Array | None = None) -> tuple[Transitions, jax.Array, SimState]:
    """Samples one episode with the tanh-Gaussian policy: (transitions, value of the final state, final state).

    `params` are the network's, `p` the traced experiment parameters; `key_aug` draws the
    episode's augmentation (see `start_episode`).
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
        new_state, _ = env.step(scenario, carry, action, p.env, log_next=log_next)
        reward = ctx.reward(p, scenario, carry, new_state)
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


def weighted_means(loss: jax.Array, metrics: dict, weight: jax.Array) -> tuple[jax.Array, dict]:
    """Batch reduction of per-scenario outputs `[B, ...]`: weighted means of the loss and of every metric."""
    total = mean_over(loss, weight)
    return total, {"loss": total, **{k: mean_over(v, weight) for k, v in metrics.items()}}


def gradient_step_fn(ctx: "Context", loss_fn: Callable, scope: str, reduce: Callable = weighted_means):
    """`train_step(state, batch, key, params)` for a per-scenario differentiable
    `loss_fn(ctx, net_params, params, scenario, key) -> (loss, metrics, weight)`: batched once by
    `over_batch`, reduced by `reduce(loss [B, ...], metrics, weight [B, ...]) -> (loss [], metrics)`
    (weighted means), value and gradient, a guarded optimiser update (non-finite updates are
    skipped), step + 1."""
    from jaxloop.sim.rollout import over_batch

    def batch_loss(net_params, params: Params, batch: Scenario, key: jax.Array):
        return reduce(*over_batch(lambda s, k: loss_fn(ctx, net_params, params, s, k), batch, key))

    def step_fn(state, batch: Scenario, key: jax.Array, params: Params):
        with jax.named_scope(scope):
            (loss, metrics), grads = jax.value_and_grad(lambda w: batch_loss(w, params, batch, key), has_aux=True)(
                state.params)
            state, upd = state_lib.apply_update(state, grads, loss, ctx.optimizer)
            return state.replace(step=state.step + 1), {**metrics, **upd}

    return step_fn
