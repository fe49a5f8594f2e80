"""Open-loop behaviour cloning on expert actions from inverse dynamics at logged states.

For each scenario of the batch, `samples_per_scenario` log steps t are drawn among
those where the ego's expert action (`jaxloop.sim.env.expert_actions`, log t -> t+1)
is valid and a full history window exists. The policy sees the `SimState` built from
the log at t (`logged_state`) and is fit to the normalised expert action:

- deterministic head: MSE between `tanh(mean)` and the expert action;
- Gaussian head: negative log-likelihood of the expert action under the tanh-Gaussian
  (pre-tanh value `atanh(clip(action))`, tanh correction included).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxloop.policy import networks
from jaxloop.sim import agents as agents_lib
from jaxloop.sim.datatypes import Scenario, SimState, trajectory_at
from jaxloop.sim.env import Env, controlled_mask, controlled_slots, expert_actions
from jaxloop.train.common import Context, gradient_step_fn, apply_model, ego_features, mean_over


def logged_state(env: Env, scenario: Scenario, t: jax.Array, key: jax.Array) -> SimState:
    """The `SimState` the simulator would hold had it replayed the log up to step `t` (traced)."""
    cfg = env.config
    t = jnp.asarray(t, jnp.int32)
    steps = t - cfg.history_length + 1 + jnp.arange(cfg.history_length)
    history = jax.vmap(lambda s: trajectory_at(scenario.log_trajectory, s), out_axes=-1)(steps)
    current = trajectory_at(scenario.log_trajectory, t)
    policy = controlled_mask(scenario, cfg.controlled)
    kind = jnp.where(policy, agents_lib.AGENT_POLICY, agents_lib.AGENT_NAMES[cfg.non_ego_agent]).astype(jnp.int32)
    return SimState(timestep=t, current=current, history=history, agent_kind=kind,
                    controlled=controlled_slots(scenario, cfg.controlled),
                    agent_state=agents_lib.init_agent_state(scenario, current, t, cfg.non_ego_agent == "idm"),
                    key=key)


def bc_loss(ctx: Context, params, batch: Scenario, key: jax.Array) -> tuple[jax.Array, dict]:
    cfg = ctx.config
    use_nll = cfg.bc.loss == "nll" or (cfg.bc.loss == "auto" and cfg.model.head == "gaussian")
    samples = cfg.bc.samples_per_scenario

    def per_scenario(scenario: Scenario, key: jax.Array):
        ego = scenario.object_metadata.sdc_index
        actions, valid = expert_actions(scenario, ctx.env.dynamics)  # [N, T-1, A], [N, T-1]
        ego_actions, ego_valid = actions[ego], valid[ego]
        steps = jnp.arange(ego_valid.shape[0])
        eligible = ego_valid & (steps >= cfg.history_length - 1)
        t = jax.random.categorical(key, jnp.where(eligible, 0.0, -1e9), shape=(samples,))
        ok = eligible[t] & jnp.any(eligible)
        feats = jax.vmap(lambda ti: ego_features(ctx, scenario, logged_state(ctx.env, scenario, ti, key)))(t)
        out = apply_model(ctx, params, feats)
        target = ego_actions[t]  # [S, A] in [-1, 1]
        mse = jnp.sum((networks.mode(out) - target) ** 2, -1)
        nll = -networks.tanh_log_prob(out, networks.atanh_clipped(target, 1e-3))
        return (nll if use_nll else mse), mse, ok

    keys = jax.random.split(key, batch.num_scenarios)
    loss, mse, ok = jax.vmap(per_scenario)(batch, keys)
    total = mean_over(loss, ok)
    return total, {"loss": total, "action_mse": mean_over(mse, ok), "valid_samples": jnp.sum(ok).astype(jnp.float32)}


def make_step_fn(ctx: Context):
    return gradient_step_fn(ctx, bc_loss, "bc.step")
