"""Closed-loop analytic policy gradients (backpropagation through the simulator).

The policy's actor (`jaxloop.io.policies.make_actor`) drives the ego for H steps through
`jaxloop.sim.rollout.rollout`, differentiated with respect to its params; the loss is
the mean over the batch of the per-step smooth surrogate (`rewards.step_surrogate_loss`
by default: weighted distance to the logged state plus smooth safety / progress terms),
averaged over the H steps. Gradients flow through the dynamics into the policy at every
earlier step:

- each step is wrapped in `jax.checkpoint` (`remat`), so the backward pass recomputes
  per-step activations instead of storing them;
- with `truncate_every = W`, the carry is cut with `stop_gradient` every W steps
  (truncated BPTT: the horizon is H/W windows of W steps, each differentiated alone);
- objects not driven by the policy are cut from the graph in `Env.step` unless
  `grad_through_agents` (gradients through reactive agents' response to the ego);
- the update is clipped by global norm (optax) and skipped when non-finite.

Self-play (`env.controlled` "vehicles" / "all"): the shared policy drives every agent in
the same differentiated rollout, each agent's loss is its own `[N]` surrogate
(`rewards.agent_step_surrogate_loss`), masked `[H, N]` by `common.agent_valid`, and the
gradient flows through the dynamics of all of them (`agent_episode_loss`).

With `bc_coef = c > 0` the loss of a batch is

    L = L_apg + c * L_bc,

L_bc the behaviour-cloning action MSE of `jaxloop.train.bc.scenario_loss` on the same batch
(every controlled agent's expert action at `bc_samples` sampled log steps per scenario,
MSE between the policy's mode and the expert action): closed-loop self-play held near the
human logs. The metrics add `apg_loss` and `bc_loss`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxloop.config import BC, Params
from jaxloop.io.policies import make_actor
from jaxloop.sim.actor import INIT_SALT, policy_controlled
from jaxloop.sim.datatypes import Scenario
from jaxloop.sim.rollout import rollout
from jaxloop.train import bc as bc_lib
from jaxloop.train.common import (Context, agent_step_events, agent_valid, check_horizon, gradient_step_fn, mean_over,
                                  route_goals, start_agents, start_episode, weighted_means)


def episode_loss(ctx: Context, net_params, params: Params, scenario: Scenario,
                 key: jax.Array) -> tuple[jax.Array, dict, jax.Array]:
    """Mean surrogate loss `[]` of one closed-loop episode (unbatched), diagnostics and its weight (1).

    Self-play: the mean over the episode's valid agent transitions `[H, N]` of every agent's
    own loss, weighted by their count (so a batch averages over agent-steps).
    """
    if ctx.selfplay:
        return agent_episode_loss(ctx, net_params, params, scenario, key)
    check_horizon(ctx, scenario)
    algo = ctx.config.algo
    env = ctx.env  # its config stops gradients through other objects unless algo.grad_through_agents
    actor = make_actor(ctx.graphdef, ctx.config.obs, deterministic=not algo.stochastic)
    extras_fn = lambda s, prev, new, info: {"loss": ctx.surrogate(params, s, prev, new)}
    scenario, state = start_episode(ctx, env, scenario, key)
    out = _closed_loop(ctx, scenario, state, actor, extras_fn, net_params, params)
    ego = scenario.object_metadata.sdc_index
    err = jnp.hypot(out.states.x[:, ego] - out.log_states.x[:, ego], out.states.y[:, ego] - out.log_states.y[:, ego])
    return jnp.mean(out.extras["loss"]), {"ade": jnp.mean(err), "fde": err[-1]}, jnp.ones(())


def _closed_loop(ctx: Context, scenario: Scenario, state, actor, extras_fn, net_params, params: Params):
    """The differentiated rollout `[H, ...]` of one episode: H/W windows of W steps (`truncate_every`)."""
    algo = ctx.config.algo
    env = ctx.env
    horizon = ctx.config.env.horizon
    window = algo.truncate_every or horizon

    def run_window(carry, _):
        sim, memory = jax.lax.stop_gradient(carry) if algo.truncate_every else carry
        final, out = rollout(env, scenario, sim, actor, window, remat=algo.remat, extras_fn=extras_fn,
                             params=params.env, actor_params=net_params, actor_state=memory)
        return (final, out.actor_state), out.replace(actor_state=())

    memory = actor.init(jax.random.fold_in(state.key, INIT_SALT), scenario)  # one episode across the windows
    _, out = jax.lax.scan(run_window, (state, memory), None, length=horizon // window)
    return jax.tree.map(lambda a: a.reshape(horizon, *a.shape[2:]), out)  # [H/W, W, ...] -> [H, ...]


def agent_episode_loss(ctx: Context, net_params, params: Params, scenario: Scenario,
                       key: jax.Array) -> tuple[jax.Array, dict, jax.Array]:
    """Self-play APG: every agent's surrogate `[H, N]` through one rollout where the shared policy drives them all.

    Gradients reach the policy through the dynamics of every controlled agent: agent j's
    loss depends on agent i's earlier actions through i's state in j's observation (and in
    the pairwise overlap terms), as well as through reactive non-policy objects with
    `grad_through_agents`. Returns (mean loss over valid agent transitions, ade / fde over
    them, their count).
    """
    check_horizon(ctx, scenario)
    algo = ctx.config.algo
    actor = make_actor(ctx.graphdef, ctx.config.obs, deterministic=not algo.stochastic,
                       controlled=ctx.config.env.controlled)
    scenario, state = start_agents(ctx, ctx.env, scenario, key)
    agents = policy_controlled(state)
    paths, goal_far = route_goals(scenario, state)

    def extras_fn(s, prev, new, info):
        return {"loss": ctx.surrogate(params, s, prev, new), **agent_step_events(ctx, s, prev, new, paths, goal_far)}

    out = _closed_loop(ctx, scenario, state, actor, extras_fn, net_params, params)
    valid = agent_valid(agents, out.extras["agent_end"], out.extras["agent_step_ok"])  # [H, N]
    count = jnp.sum(valid).astype(jnp.float32)
    err = jnp.hypot(out.states.x - out.log_states.x, out.states.y - out.log_states.y)  # [H, N]
    last = valid[-1]
    metrics = {"ade": mean_over(err, valid), "fde": mean_over(err[-1], last),
               "agents": jnp.sum(agents).astype(jnp.float32),
               "ended_frac": mean_over(jnp.any(out.extras["agent_end"] & valid, 0).astype(jnp.float32), agents)}
    return mean_over(out.extras["loss"], valid), metrics, count


def _reduce_agents(loss: jax.Array, metrics: dict, count: jax.Array) -> tuple[jax.Array, dict]:
    """Self-play batch reduction: the loss, ade and fde over all valid agent transitions of the batch
    (scenarios weighted by their count), the agent count and ended fraction per scenario."""
    total, out = weighted_means(loss, {k: metrics[k] for k in ("ade", "fde")}, count)
    out.update(agents=jnp.mean(metrics["agents"]), ended_frac=jnp.mean(metrics["ended_frac"]),
               agent_steps=jnp.sum(count))
    return total, out


def make_step_fn(ctx: Context):
    reduce = _reduce_agents if ctx.selfplay else weighted_means
    algo = ctx.config.algo
    if not algo.bc_coef:
        return gradient_step_fn(ctx, episode_loss, "apg.step", reduce)
    bc_ctx = dataclasses.replace(ctx, config=dataclasses.replace(
        ctx.config, algo=BC(samples_per_scenario=algo.bc_samples, loss="mse")))

    def loss_fn(ctx_, net_params, params: Params, scenario: Scenario, key: jax.Array):
        # The episode keeps its key, so L_apg is what bc_coef = 0 computes on the same batch and key.
        apg = episode_loss(ctx_, net_params, params, scenario, key)
        bc = bc_lib.scenario_loss(bc_ctx, net_params, params, scenario, jax.random.fold_in(key, 1))
        return (apg[0], bc[0]), (apg[1], bc[1]), (apg[2], bc[2])

    def reduce_fn(loss, metrics, weight):
        apg_total, out = reduce(loss[0], metrics[0], weight[0])
        bc_total = mean_over(loss[1], weight[1])
        total = apg_total + algo.bc_coef * bc_total
        return total, {**out, "loss": total, "apg_loss": apg_total, "bc_loss": bc_total}

    return gradient_step_fn(ctx, loss_fn, "apg.step", reduce_fn)
