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

Self-play (`Experiment.env.controlled` "vehicles" or "all"): one shared-weight policy
drives every controlled object (the agents: `agent_mask`, narrowed by an optional
`controlled_fn(scenario) -> [N] bool` given to `make_context`, and valid at the start;
objects appearing later keep the non-ego model), each from its own
ego-centric observation (`jaxloop.io.policies.agent_features`: its own logged path is
its route). Reward functions then return `[N]` per object (defaults
`rewards.agent_step_reward` / `agent_step_surrogate_loss`), and transitions are `[H, N]`
with a mask `valid` `[H, N]`: agent i's transition t counts while i is controlled, valid
before and after the step with a valid log, and its episode has not ended at an earlier
step. Agent i's episode ends (`agent_step_events`) at the end of its logged route (its
goal, the last valid logged position, within `paths.GOAL_RADIUS` when it started farther
away, or its log ends; `EnvSettings.done_at_goal=False` drops the goal end), and, with
`EnvSettings.done_on_collision` / `done_on_offroad` (default on), at a collision or offroad
step (`rewards.agent_collision`, `rewards.agent_offroad`). The step that ends it still
counts. A finished agent keeps driving under the policy and is still an obstacle to the
others (`EnvSettings.goal_behavior="remove"`: one at its goal leaves the scene); only its
later transitions are masked out of losses, rewards and advantages.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from jaxloop.config import GRPO, Experiment, Params, params_of
from jaxloop.io.policies import agent_features, build_model, make_actor
from jaxloop.policy import networks
from jaxloop.policy.observation import Features, features
from jaxloop.sim import agents as agents_lib
from jaxloop.sim import rewards
from jaxloop.sim.actor import policy_controlled
from jaxloop.sim.datatypes import ObjectState, Scenario, SimState, trajectory_at
from jaxloop.sim.env import Env, controlled_mask
from jaxloop.sim.metrics import paths as paths_lib
from jaxloop.sim.rollout import over_batch, rollout
from jaxloop.train import state as state_lib

StepFn = Callable[[Scenario, SimState, SimState, rewards.RewardWeights], jax.Array]
ControlledFn = Callable[[Scenario], jax.Array]  # scenario -> [N] bool: the objects self-play may drive


@dataclasses.dataclass(frozen=True)
class Context:
    config: Experiment
    env: Env
    graphdef: nnx.GraphDef
    optimizer: optax.GradientTransformation
    reward_fn: StepFn = rewards.step_reward  # the RL reward of a transition under the traced weights
    surrogate_fn: StepFn = rewards.step_surrogate_loss  # the APG loss of a transition
    controlled_fn: ControlledFn | None = None  # self-play: narrows the agents within `env.controlled`

    @property
    def selfplay(self) -> bool:
        """One policy drives every controlled object (`env.controlled` "vehicles" or "all")."""
        return self.config.selfplay

    @property
    def params(self) -> Params:
        """The experiment's default traced parameters."""
        return params_of(self.config)

    def reward(self, params: Params, scenario: Scenario, prev: SimState, state: SimState) -> jax.Array:
        """The RL reward `[]` (self-play: `[N]`) of a transition under `params.reward`."""
        return self.reward_fn(scenario, prev, state, params.reward)

    def surrogate(self, params: Params, scenario: Scenario, prev: SimState, state: SimState) -> jax.Array:
        """The APG loss `[]` (self-play: `[N]`) of a transition under `params.reward`."""
        return self.surrogate_fn(scenario, prev, state, params.reward)


def make_context(config: Experiment, reward_fn: StepFn | None = None, surrogate_fn: StepFn | None = None,
                 controlled_fn: ControlledFn | None = None) -> Context:
    """The trainer context of `config`; `reward_fn` / `surrogate_fn` replace the default reward / APG loss
    (self-play: per object `[N]`), `controlled_fn(scenario) -> [N] bool` narrows the self-play agents."""
    if controlled_fn is not None and not config.selfplay:
        raise ValueError("make_context: controlled_fn narrows the self-play agents; it needs "
                         f"Experiment.env.controlled 'vehicles' or 'all', got {config.env.controlled!r}")
    default_reward = rewards.agent_step_reward if config.selfplay else rewards.step_reward
    default_surrogate = rewards.agent_step_surrogate_loss if config.selfplay else rewards.step_surrogate_loss
    env = Env(config.env_config())
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: build_model(config, jax.random.PRNGKey(0))))
    return Context(config=config, env=env, graphdef=graphdef,
                   optimizer=state_lib.make_optimizer(config.learning_rate, config.max_grad_norm,
                                                      config.lr_decay_steps),
                   reward_fn=reward_fn or default_reward, surrogate_fn=surrogate_fn or default_surrogate,
                   controlled_fn=controlled_fn)


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
    """On-policy samples of one episode; leading axis H (self-play: `[H, N]`, one column per object)."""

    feats: Features  # [H, ...] observation before each action
    u: jax.Array  # [H, A] pre-tanh action sample
    log_prob: jax.Array  # [H] log-prob of the action under the behaviour policy
    value: jax.Array  # [H] value estimate (zeros without a value head)
    reward: jax.Array  # [H]
    valid: jax.Array  # [H] bool: the ego exists before and after the step (self-play: `agent_valid`)


def collect(ctx: Context, params: nnx.State, p: Params, scenario: Scenario, key: jax.Array,
            num_steps: int, key_aug: jax.Array | None = None) -> tuple[Transitions, jax.Array, SimState]:
    """Samples one episode with the tanh-Gaussian policy: (transitions, value of the final state, final state).

    `params` are the network's, `p` the traced experiment parameters; `key_aug` draws the
    episode's augmentation (see `start_episode`). The episode is a `rollout` of the
    policy's actor (`jaxloop.io.policies.make_actor`, features recorded); its aux gives the
    samples, log-probs and values, an extras hook the rewards and validity.
    """
    env = ctx.env
    ego = scenario.object_metadata.sdc_index
    key_reset, key_run = jax.random.split(key)
    scenario, state = start_episode(ctx, env, scenario, key_reset, key_aug)
    state = state.replace(key=key_run)
    actor = make_actor(ctx.graphdef, ctx.config.obs, deterministic=False, record_features=True)

    def extras_fn(sc: Scenario, prev: SimState, new: SimState, info) -> dict:
        valid = prev.current.valid[ego] & new.current.valid[ego]
        return {"reward": jnp.where(valid, ctx.reward(p, sc, prev, new), 0.0), "valid": valid}

    with jax.named_scope("train.collect"):
        final, out = rollout(env, scenario, state, actor, num_steps, extras_fn=extras_fn, params=p.env,
                             actor_params=params)
        last_value = apply_model(ctx, params, ego_features(ctx, scenario, final)).value
    traj = Transitions(feats=out.aux["feats"], u=out.aux["u"], log_prob=out.aux["log_prob"],
                       value=out.aux["value"], reward=out.extras["reward"], valid=out.extras["valid"])
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
    def batch_loss(net_params, params: Params, batch: Scenario, key: jax.Array):
        return reduce(*over_batch(lambda s, k: loss_fn(ctx, net_params, params, s, k), batch, key))

    def step_fn(state, batch: Scenario, key: jax.Array, params: Params):
        with jax.named_scope(scope):
            (loss, metrics), grads = jax.value_and_grad(lambda w: batch_loss(w, params, batch, key), has_aux=True)(
                state.params)
            state, upd = state_lib.apply_update(state, grads, loss, ctx.optimizer)
            return state.replace(step=state.step + 1), {**metrics, **upd}

    return step_fn


# ----------------------------------------------------------------------------- self-play


def agent_mask(ctx: Context, scenario: Scenario, current: ObjectState | None = None) -> jax.Array:
    """The self-play agents `[N]` bool: the objects of `env.controlled`, narrowed by `ctx.controlled_fn`.

    Given the episode's initial state `current`, those that start at their goal are left
    out (`controlled_mask`, unless `env.control_parked`); behaviour cloning, which samples
    log steps, passes none."""
    mask = controlled_mask(scenario, ctx.config.env.controlled, current, ctx.config.env.control_parked)
    if ctx.controlled_fn is not None:
        extra = jnp.asarray(ctx.controlled_fn(scenario))
        if extra.shape != mask.shape or extra.dtype != jnp.bool_:
            raise ValueError(f"controlled_fn must return a bool mask of shape {mask.shape} (one per object), "
                             f"got {extra.dtype} {extra.shape}")
        mask = mask & extra
    return mask


def start_agents(ctx: Context, env: Env, scenario: Scenario, key: jax.Array,
                 key_aug: jax.Array | None = None) -> tuple[Scenario, SimState]:
    """`start_episode` for self-play: the agents are the objects of `agent_mask` valid at the start; the
    other objects of `env.controlled` (left out by `controlled_fn`, or appearing later in the log) get the
    configured non-ego agent model instead of the policy, as every other object has."""
    scenario, state = start_episode(ctx, env, scenario, key, key_aug)
    default = agents_lib.AGENT_NAMES[ctx.config.env.non_ego_agent]
    free = policy_controlled(state) & ~(agent_mask(ctx, scenario, state.current) & state.current.valid)
    return scenario, state.replace(agent_kind=jnp.where(free, default, state.agent_kind).astype(jnp.int32))


def route_goals(scenario: Scenario, state: SimState) -> tuple[paths_lib.LogPaths, jax.Array]:
    """Every object's logged path and whether its goal is farther than `GOAL_RADIUS` at the episode start `[N]`."""
    paths = paths_lib.log_paths(scenario)
    return paths, paths_lib.goal_distance(paths, state.current.xy) > paths_lib.GOAL_RADIUS


def agent_step_events(ctx: Context, scenario: Scenario, prev: SimState, new: SimState,
                      paths: paths_lib.LogPaths, goal_far: jax.Array) -> dict[str, jax.Array]:
    """Per-object flags `[N]` of one transition (discrete, no gradient): `agent_end` (the step ends the
    object's episode: goal reached, log ended, or a collision / offroad where configured) and `agent_step_ok`
    (valid before and after the step, with a valid log at the new step)."""
    cfg = ctx.config.env
    prev, new = jax.lax.stop_gradient((prev, new))  # flags only: no tangent reaches the metrics' loops
    log_state = trajectory_at(scenario.log_trajectory, new.timestep)
    goal = goal_far & (paths_lib.goal_distance(paths, new.current.xy) < paths_lib.GOAL_RADIUS)
    end = (goal if cfg.done_at_goal else jnp.zeros_like(goal)) | ~log_state.valid
    if cfg.done_on_collision:
        end = end | rewards.agent_collision(new, log_state)
    if cfg.done_on_offroad:
        end = end | rewards.agent_offroad(scenario, new, log_state)
    ok = prev.current.valid & new.current.valid & log_state.valid
    return {"agent_end": end, "agent_step_ok": ok}


def agent_valid(agents: jax.Array, end: jax.Array, step_ok: jax.Array) -> jax.Array:
    """Transitions `[H, N]` that count: agent, step ok, and no earlier step `[H, N]` ended its episode."""
    ended_before = (jnp.cumsum(end.astype(jnp.int32), 0) - end.astype(jnp.int32)) > 0
    return agents[None, :] & step_ok & ~ended_before


def agent_policy_features(ctx: Context, scenario: Scenario, state: SimState) -> Features:
    """Every object's observation `[N, ...]` (`agent_features`)."""
    return agent_features(scenario, state, jnp.arange(state.current.x.shape[-1]), ctx.config.obs)


def collect_agents(ctx: Context, params: nnx.State, p: Params, scenario: Scenario, key: jax.Array,
                   num_steps: int, key_aug: jax.Array | None = None) -> tuple[Transitions, jax.Array, SimState]:
    """`collect` for self-play: transitions `[H, N]` of every object (masked by `valid` `[H, N]`), the value
    of the final state `[N]` and the final state. One rollout of the shared policy's actor drives all agents."""
    env = ctx.env
    key_reset, key_run = jax.random.split(key)
    scenario, state = start_agents(ctx, env, scenario, key_reset, key_aug)
    state = state.replace(key=key_run)
    agents = policy_controlled(state)
    paths, goal_far = route_goals(scenario, state)
    actor = make_actor(ctx.graphdef, ctx.config.obs, deterministic=False, controlled=ctx.config.env.controlled,
                       record_features=True)

    def extras_fn(sc: Scenario, prev: SimState, new: SimState, info) -> dict:
        return {"reward": ctx.reward(p, sc, prev, new), **agent_step_events(ctx, sc, prev, new, paths, goal_far)}

    with jax.named_scope("train.collect_agents"):
        final, out = rollout(env, scenario, state, actor, num_steps, extras_fn=extras_fn, params=p.env,
                             actor_params=params)
        last_value = apply_model(ctx, params, agent_policy_features(ctx, scenario, final)).value
    valid = agent_valid(agents, out.extras["agent_end"], out.extras["agent_step_ok"])
    traj = Transitions(feats=out.aux["feats"], u=out.aux["u"], log_prob=out.aux["log_prob"],
                       value=out.aux["value"], reward=jnp.where(valid, out.extras["reward"], 0.0), valid=valid)
    return traj, last_value, final
