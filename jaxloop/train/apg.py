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
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxloop.config import Params
from jaxloop.io.policies import make_actor
from jaxloop.sim.actor import INIT_SALT
from jaxloop.sim.datatypes import Scenario
from jaxloop.sim.rollout import rollout
from jaxloop.train.common import Context, check_horizon, gradient_step_fn, start_episode


def episode_loss(ctx: Context, net_params, params: Params, scenario: Scenario,
                 key: jax.Array) -> tuple[jax.Array, dict, jax.Array]:
    """Mean surrogate loss `[]` of one closed-loop episode (unbatched), diagnostics and its weight (1)."""
    check_horizon(ctx, scenario)
    algo = ctx.config.algo
    env = ctx.env  # its config stops gradients through other objects unless algo.grad_through_agents
    actor = make_actor(ctx.graphdef, ctx.config.obs, deterministic=not algo.stochastic)
    extras_fn = lambda s, prev, new, info: {"loss": ctx.surrogate(params, s, prev, new)}
    scenario, state = start_episode(ctx, env, scenario, key)
    horizon = ctx.config.env.horizon
    window = algo.truncate_every or horizon

    def run_window(carry, _):
        sim, memory = jax.lax.stop_gradient(carry) if algo.truncate_every else carry
        final, out = rollout(env, scenario, sim, actor, window, remat=algo.remat, extras_fn=extras_fn,
                             params=params.env, actor_params=net_params, actor_state=memory)
        return (final, out.actor_state), out.replace(actor_state=())

    memory = actor.init(jax.random.fold_in(state.key, INIT_SALT), scenario)  # one episode across the windows
    _, out = jax.lax.scan(run_window, (state, memory), None, length=horizon // window)
    out = jax.tree.map(lambda a: a.reshape(horizon, *a.shape[2:]), out)  # [H/W, W, ...] -> [H, ...]
    ego = scenario.object_metadata.sdc_index
    err = jnp.hypot(out.states.x[:, ego] - out.log_states.x[:, ego], out.states.y[:, ego] - out.log_states.y[:, ego])
    return jnp.mean(out.extras["loss"]), {"ade": jnp.mean(err), "fde": err[-1]}, jnp.ones(())


def make_step_fn(ctx: Context):
    return gradient_step_fn(ctx, episode_loss, "apg.step")
