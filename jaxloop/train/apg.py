"""Closed-loop analytic policy gradients (backpropagation through the simulator).

The policy drives the ego for H steps through `jaxloop.sim.rollout.rollout`; the loss is
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

from jaxloop.policy import networks
from jaxloop.policy.observation import features
from jaxloop.sim.datatypes import Scenario, SimState
from jaxloop.sim.rollout import rollout
from jaxloop.train.common import Context, check_horizon, gradient_step_fn, start_episode


def _policy(ctx: Context, params):
    from flax import nnx
    model = nnx.merge(ctx.graphdef, params)
    stochastic = ctx.config.apg.stochastic

    def policy(scenario: Scenario, state: SimState, key: jax.Array) -> jax.Array:
        out = model(features(scenario, state, scenario.object_metadata.sdc_index, ctx.config.obs))
        if stochastic:
            return networks.sample(out, key)[0]
        return networks.mode(out)

    return policy


def episode_loss(ctx: Context, params, scenario: Scenario, key: jax.Array) -> tuple[jax.Array, dict]:
    """Mean surrogate loss of one closed-loop episode (unbatched) and diagnostics."""
    cfg = ctx.config
    env = ctx.env  # its config stops gradients through other objects unless apg.grad_through_agents
    policy = _policy(ctx, params)
    extras_fn = lambda s, prev, new, info: {"loss": ctx.surrogate_fn(s, prev, new)}
    scenario, state = start_episode(ctx, env, scenario, key)
    horizon, window = cfg.horizon, cfg.apg.truncate_every or cfg.horizon

    def run_window(carry: SimState, _):
        carry = jax.lax.stop_gradient(carry) if cfg.apg.truncate_every else carry
        return rollout(env, scenario, carry, policy, window, remat=cfg.apg.remat, extras_fn=extras_fn)

    _, out = jax.lax.scan(run_window, state, None, length=horizon // window)
    out = jax.tree.map(lambda a: a.reshape(horizon, *a.shape[2:]), out)  # [H/W, W, ...] -> [H, ...]
    ego = scenario.object_metadata.sdc_index
    err = jnp.hypot(out.states.x[:, ego] - out.log_states.x[:, ego], out.states.y[:, ego] - out.log_states.y[:, ego])
    return jnp.mean(out.extras["loss"]), {"ade": jnp.mean(err), "fde": err[-1]}


def apg_loss(ctx: Context, params, batch: Scenario, key: jax.Array) -> tuple[jax.Array, dict]:
    check_horizon(ctx, batch)
    keys = jax.random.split(key, batch.num_scenarios)
    loss, diag = jax.vmap(lambda s, k: episode_loss(ctx, params, s, k))(batch, keys)
    total = jnp.mean(loss)
    return total, {"loss": total, **{k: jnp.mean(v) for k, v in diag.items()}}


def make_step_fn(ctx: Context):
    return gradient_step_fn(ctx, apg_loss, "apg.step")
