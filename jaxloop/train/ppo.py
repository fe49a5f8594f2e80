"""PPO on the closed-loop reward (`rewards.step_reward` under a preset).

One jitted step: B episodes of H steps sampled with the tanh-Gaussian policy, GAE
advantages (the episode is truncated at H, so the last state is bootstrapped with its
value), then `num_epochs` passes over the B*H samples in `num_minibatches` shuffled
minibatches, all inside `lax.scan`. Loss per minibatch: clipped ratio surrogate +
`value_coef` * Huber value error - `entropy_coef` * entropy; each minibatch update is
clipped by global norm and skipped when non-finite.

Self-play (`env.controlled` "vehicles" / "all"): the B episodes hold every agent's
transitions `[B, H, N]` (`common.collect_agents`), GAE runs per agent, and the epochs
pass over the B*H*N samples, the masked ones (not an agent, or its episode over) weighing 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxloop.config import Params
from jaxloop.policy import networks
from jaxloop.sim.datatypes import Scenario
from jaxloop.sim.rollout import over_batch
from jaxloop.train import state as state_lib
from jaxloop.train.common import Context, apply_model, check_horizon, collect, collect_agents, mean_over


def gae(reward: jax.Array, value: jax.Array, last_value: jax.Array, valid: jax.Array, gamma: float,
        lam: float) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation over one episode `[H]`: (advantages, returns).

    `valid` masks steps where the ego does not exist: the recursion is cut there.
    """
    next_value = jnp.concatenate([value[1:], last_value[None]])
    next_ok = jnp.concatenate([valid[1:], jnp.ones((1,), bool)])
    delta = reward + gamma * jnp.where(next_ok, next_value, 0.0) - value

    def back(carry, inp):
        d, ok, nok = inp
        adv = d + gamma * lam * jnp.where(nok, carry, 0.0)
        adv = jnp.where(ok, adv, 0.0)
        return adv, adv

    _, adv = jax.lax.scan(back, jnp.zeros(()), (delta, valid, next_ok), reverse=True)
    return adv, adv + value


def ppo_loss(ctx: Context, params, data: dict) -> tuple[jax.Array, dict]:
    cfg = ctx.config.algo
    out = apply_model(ctx, params, data["feats"])
    log_prob = networks.tanh_log_prob(out, data["u"])
    ratio = jnp.exp(log_prob - data["log_prob"])
    adv = data["adv"]
    surrogate = jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - cfg.clip_eps, 1 + cfg.clip_eps) * adv)
    mask = data["valid"]
    policy_loss = -mean_over(surrogate, mask)
    # Huber: the critic's gradient stays O(1) whatever the return scale, so the shared
    # global-norm clip does not starve the policy gradient.
    value_loss = mean_over(optax.huber_loss(out.value, data["ret"], delta=cfg.value_huber_delta), mask)
    ent = mean_over(networks.entropy(out), mask)
    loss = policy_loss + cfg.value_coef * value_loss - cfg.entropy_coef * ent
    approx_kl = mean_over((ratio - 1) - jnp.log(ratio), mask)
    clip_frac = mean_over((jnp.abs(ratio - 1) > cfg.clip_eps).astype(jnp.float32), mask)
    return loss, {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": ent, "approx_kl": approx_kl,
                  "clip_frac": clip_frac}


def scenario_rollout(ctx: Context, net_params, params: Params, scenario: Scenario, key: jax.Array):
    """One scenario's episode (unbatched): its transitions `[H, ...]` with GAE advantages and returns `[H]`.

    Self-play: every agent's transitions `[H, N]`, with GAE run per agent (its own values,
    rewards and mask, so an agent's finished episode cuts its own recursion only).
    """
    check_horizon(ctx, scenario)
    algo = ctx.config.algo
    if ctx.selfplay:
        traj, last_value, _ = collect_agents(ctx, net_params, params, scenario, key, ctx.config.env.horizon)
        per_agent = jax.vmap(gae, in_axes=(1, 1, 0, 1, None, None), out_axes=1)
        adv, ret = per_agent(traj.reward, traj.value, last_value, traj.valid, algo.gamma, algo.gae_lambda)
        return traj, adv, ret
    traj, last_value, _ = collect(ctx, net_params, params, scenario, key, ctx.config.env.horizon)
    adv, ret = gae(traj.reward, traj.value, last_value, traj.valid, algo.gamma, algo.gae_lambda)
    return traj, adv, ret


def make_step_fn(ctx: Context):
    horizon = ctx.config.env.horizon
    pcfg = ctx.config.algo

    def step_fn(state: state_lib.TrainState, batch: Scenario, key: jax.Array, params: Params):
        with jax.named_scope("ppo.step"):
            key_roll, key_update = jax.random.split(key)
            traj, adv, ret = over_batch(lambda s, k: scenario_rollout(ctx, state.params, params, s, k), batch,
                                        key_roll)
            num = traj.reward.shape[0]
            if pcfg.normalize_advantages:
                mu = mean_over(adv, traj.valid)
                sd = jnp.sqrt(mean_over((adv - mu) ** 2, traj.valid))
                adv = (adv - mu) / (sd + 1e-8)
            data = {"feats": traj.feats, "u": traj.u, "log_prob": traj.log_prob, "adv": adv, "ret": ret,
                    "valid": traj.valid}
            lead = traj.reward.ndim  # [B, H] (self-play: [B, H, N]) transitions, flattened
            size = traj.reward.size
            data = jax.tree.map(lambda a: a.reshape(size, *a.shape[lead:]), data)
            mb = size // pcfg.num_minibatches

            def minibatch(st, idx):
                part = jax.tree.map(lambda a: a[idx], data)
                (loss, aux), grads = jax.value_and_grad(lambda p: ppo_loss(ctx, p, part), has_aux=True)(st.params)
                st, upd = state_lib.apply_update(st, grads, loss, ctx.optimizer)
                return st, {"loss": loss, **aux, **upd}

            def epoch(st, k):
                perm = jax.random.permutation(k, size).reshape(pcfg.num_minibatches, mb)
                return jax.lax.scan(minibatch, st, perm)

            state, stats = jax.lax.scan(epoch, state, jax.random.split(key_update, pcfg.num_epochs))
            episode_return = jnp.sum(traj.reward, 1)  # [B] (self-play: [B, N], one per object)
            if ctx.selfplay:
                episode_return = mean_over(episode_return, jnp.any(traj.valid, 1))
            metrics = {k: jnp.mean(v) for k, v in stats.items()}
            metrics["update_skipped"] = jnp.sum(stats["update_skipped"])
            metrics.update(episode_return=jnp.mean(episode_return), reward_per_step=mean_over(traj.reward, traj.valid))
            return state.replace(step=state.step + 1), metrics

    return step_fn
