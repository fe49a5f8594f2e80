"""GRPO: group-relative policy optimisation for closed-loop post-training.

For each scenario of the batch, G episodes are rolled out from the same initial state
with different keys (vmapped). Each episode's return is compared within its group:
`A = (R - mean_G(R)) / (std_G(R) + eps)`, so advantages have zero mean per group and no
value function is needed. Every step of an episode carries the episode's advantage.
The loss is the clipped ratio surrogate against the sampling policy plus `kl_coef` times
a KL penalty to a frozen reference policy (`TrainState.ref_params`, e.g. the BC
checkpoint), estimated per step with the non-negative estimator
`exp(ref - logp) - (ref - logp) - 1`. `num_epochs` full-batch updates per step.

Self-play (`env.controlled` "vehicles" / "all"): each of the G rollouts holds every
agent's transitions `[H, N]` (`common.collect_agents`); agent i's return in rollout g is
the sum of its own masked rewards, and its advantage is normalised within its group: the
same agent of the same scenario across the G rollouts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxloop.config import Params
from jaxloop.policy import networks
from jaxloop.sim.datatypes import Scenario
from jaxloop.sim.rollout import over_batch
from jaxloop.train import state as state_lib
from jaxloop.train.common import Context, apply_model, check_horizon, collect, collect_agents, mean_over


def group_advantages(returns: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Advantages `[B, G]` of returns `[B, G]`, normalised within each group (row)."""
    mean = jnp.mean(returns, axis=-1, keepdims=True)
    std = jnp.std(returns, axis=-1, keepdims=True)
    return (returns - mean) / (std + eps)


def grpo_loss(ctx: Context, params, ref_params, data: dict) -> tuple[jax.Array, dict]:
    cfg = ctx.config.algo
    out = apply_model(ctx, params, data["feats"])
    log_prob = networks.tanh_log_prob(out, data["u"])
    ref_log_prob = jax.lax.stop_gradient(networks.tanh_log_prob(apply_model(ctx, ref_params, data["feats"]), data["u"]))
    ratio = jnp.exp(log_prob - data["log_prob"])
    adv = data["adv"]
    surrogate = jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - cfg.clip_eps, 1 + cfg.clip_eps) * adv)
    mask = data["valid"]
    diff = ref_log_prob - log_prob
    kl = jnp.exp(diff) - diff - 1.0
    policy_loss = -mean_over(surrogate, mask)
    kl_mean = mean_over(kl, mask)
    loss = policy_loss + cfg.kl_coef * kl_mean
    return loss, {"policy_loss": policy_loss, "kl_ref": kl_mean,
                  "clip_frac": mean_over((jnp.abs(ratio - 1) > cfg.clip_eps).astype(jnp.float32), mask)}


def group_rollout(ctx: Context, net_params, params: Params, scenario: Scenario, keys: jax.Array):
    """G episodes `[G, H, ...]` of one scenario (unbatched) from the same augmented start, one per key `[G]`."""
    check_horizon(ctx, scenario)
    # One augmentation per group: advantages compare rollouts of the same episode.
    key_aug = jax.random.fold_in(keys[0], 1)
    collect_fn = collect_agents if ctx.selfplay else collect
    return jax.vmap(lambda k: collect_fn(ctx, net_params, params, scenario, k, ctx.config.env.horizon, key_aug)[0])(
        keys)


def make_step_fn(ctx: Context):
    gcfg = ctx.config.algo

    def step_fn(state: state_lib.TrainState, batch: Scenario, key: jax.Array, params: Params):
        with jax.named_scope("grpo.step"):
            num, group = jax.tree.leaves(batch)[0].shape[0], gcfg.group_size
            keys = jax.random.split(key, num * group).reshape(num, group, -1)
            traj = over_batch(lambda s, ks: group_rollout(ctx, state.params, params, s, ks), batch, key,
                              keys=keys)  # leaves [B, G, H, ...]
            returns = jnp.sum(traj.reward, 2)  # [B, G] (self-play: [B, G, N])
            if ctx.selfplay:  # each agent against itself across the group
                adv = jnp.swapaxes(group_advantages(jnp.swapaxes(returns, 1, 2), gcfg.eps), 1, 2)
                step_adv = adv[:, :, None, :]
            else:
                adv = group_advantages(returns, gcfg.eps)
                step_adv = adv[..., None]
            data = {"feats": traj.feats, "u": traj.u, "log_prob": traj.log_prob,
                    "adv": jnp.broadcast_to(step_adv, traj.reward.shape), "valid": traj.valid}

            def epoch(st, _):
                (loss, aux), grads = jax.value_and_grad(
                    lambda p: grpo_loss(ctx, p, st.ref_params, data), has_aux=True)(st.params)
                st, upd = state_lib.apply_update(st, grads, loss, ctx.optimizer)
                return st, {"loss": loss, **aux, **upd}

            state, stats = jax.lax.scan(epoch, state, None, length=gcfg.num_epochs)
            metrics = {k: jnp.mean(v) for k, v in stats.items()}
            metrics["update_skipped"] = jnp.sum(stats["update_skipped"])
            if ctx.selfplay:
                agent = jnp.any(traj.valid, 2)  # [B, G, N]: the agent has a counted step in the rollout
                metrics.update(episode_return=mean_over(returns, agent),
                               group_return_std=mean_over(jnp.std(returns, 1), jnp.any(agent, 1)),
                               group_adv_mean=jnp.max(jnp.abs(jnp.mean(adv, 1))))
            else:
                metrics.update(episode_return=jnp.mean(returns), group_return_std=jnp.mean(jnp.std(returns, -1)),
                               group_adv_mean=jnp.max(jnp.abs(jnp.mean(adv, -1))))
            return state.replace(step=state.step + 1), metrics

    return step_fn
