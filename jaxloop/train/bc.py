"""Open-loop behaviour cloning on expert actions from inverse dynamics at logged states.

For each scenario of the batch, `samples_per_scenario` log steps t are drawn among
those where the ego's expert action (`jaxloop.sim.env.expert_actions`, log t -> t+1)
is valid and a full history window exists. The policy sees the `SimState` the env
would hold had it replayed the log up to t (`Env.reset(..., timestep=t)`) and is fit to
the normalised expert action:

- deterministic head: MSE between `tanh(mean)` and the expert action;
- Gaussian head: negative log-likelihood of the expert action under the tanh-Gaussian
  (pre-tanh value `atanh(clip(action))`, tanh correction included).

The expert actions are normalised by the traced action limits of `Params.env`.

Self-play (`env.controlled` "vehicles" / "all"): at each sampled step every agent
(`common.agent_mask`) with a valid expert action is a sample, fit from its own
observation (`jaxloop.io.policies.agent_features`); losses are `[S, N]`, masked.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxloop.config import Params
from jaxloop.policy import networks
from jaxloop.sim.datatypes import Scenario
from jaxloop.sim.env import expert_actions
from jaxloop.train.common import (Context, agent_mask, agent_policy_features, apply_model, ego_features,
                                  gradient_step_fn, mean_over)


def scenario_loss(ctx: Context, net_params, params: Params, scenario: Scenario,
                  key: jax.Array) -> tuple[jax.Array, dict, jax.Array]:
    """BC loss `[S]` of one scenario at `samples_per_scenario` sampled log steps, the action MSE `[S]` and
    which samples are valid `[S]`."""
    if ctx.selfplay:
        return agent_scenario_loss(ctx, net_params, params, scenario, key)
    cfg = ctx.config
    use_nll = cfg.algo.loss == "nll" or (cfg.algo.loss == "auto" and cfg.model.head == "gaussian")
    ego = scenario.object_metadata.sdc_index
    actions, valid = expert_actions(scenario, ctx.env.dynamics, params.env.action_limits)  # [N, T-1, A], [N, T-1]
    ego_actions, ego_valid = actions[ego], valid[ego]
    steps = jnp.arange(ego_valid.shape[0])
    eligible = ego_valid & (steps >= cfg.obs.history_length - 1)
    t = jax.random.categorical(key, jnp.where(eligible, 0.0, -1e9), shape=(cfg.algo.samples_per_scenario,))
    ok = eligible[t] & jnp.any(eligible)
    feats = jax.vmap(lambda ti: ego_features(ctx, scenario, ctx.env.reset(scenario, key, timestep=ti)))(t)
    out = apply_model(ctx, net_params, feats)
    target = ego_actions[t]  # [S, A] in [-1, 1]
    mse = jnp.sum((networks.mode(out) - target) ** 2, -1)
    nll = -networks.tanh_log_prob(out, networks.atanh_clipped(target, 1e-3))
    return (nll if use_nll else mse), {"action_mse": mse}, ok


def agent_scenario_loss(ctx: Context, net_params, params: Params, scenario: Scenario,
                        key: jax.Array) -> tuple[jax.Array, dict, jax.Array]:
    """Self-play BC of one scenario: losses `[S, N]` of every agent at `samples_per_scenario` log steps drawn
    among those where some agent has a valid expert action, the action MSE `[S, N]` and the valid samples `[S, N]`."""
    cfg = ctx.config
    use_nll = cfg.algo.loss == "nll" or (cfg.algo.loss == "auto" and cfg.model.head == "gaussian")
    actions, valid = expert_actions(scenario, ctx.env.dynamics, params.env.action_limits)  # [N, T-1, A], [N, T-1]
    usable = valid & agent_mask(ctx, scenario)[:, None]  # [N, T-1]
    steps = jnp.arange(usable.shape[1])
    eligible = jnp.any(usable, 0) & (steps >= cfg.obs.history_length - 1)
    t = jax.random.categorical(key, jnp.where(eligible, 0.0, -1e9), shape=(cfg.algo.samples_per_scenario,))
    ok = usable[:, t].T & eligible[t][:, None]  # [S, N]
    feats = jax.vmap(lambda ti: agent_policy_features(ctx, scenario, ctx.env.reset(scenario, key, timestep=ti)))(t)
    out = apply_model(ctx, net_params, feats)  # [S, N, ...]
    target = jnp.swapaxes(actions[:, t], 0, 1)  # [S, N, A] in [-1, 1]
    mse = jnp.sum((networks.mode(out) - target) ** 2, -1)
    nll = -networks.tanh_log_prob(out, networks.atanh_clipped(target, 1e-3))
    return (nll if use_nll else mse), {"action_mse": mse}, ok


def _reduce(loss: jax.Array, metrics: dict, ok: jax.Array) -> tuple[jax.Array, dict]:
    total = mean_over(loss, ok)
    return total, {"loss": total, "action_mse": mean_over(metrics["action_mse"], ok),
                   "valid_samples": jnp.sum(ok).astype(jnp.float32)}


def make_step_fn(ctx: Context):
    return gradient_step_fn(ctx, scenario_loss, "bc.step", _reduce)
