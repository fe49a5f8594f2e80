"""PPO on `jaxloop.envs.DrivingEnv`, in one file, in the style of purejaxrl (no RL library needed).

Any trainer written for the gymnax interface drives jaxloop the same way; this one shows
the whole of it: vmapped environments, a `lax.scan` collecting `num_steps` steps of each,
GAE, then `num_epochs` passes of clipped-ratio updates over shuffled minibatches (optax
Adam, learning rate annealed to 0), the whole iteration inside one jitted function. The actor-critic is a plain
two-layer MLP (dict of arrays) with a state-independent log standard deviation.

    PYTHONPATH=$PWD python experiments/envs_ppo.py --data procedural:train:64 --updates 200

It prints the mean return of the episodes finished in each block of updates, which
should rise as the ego learns to follow its route without leaving the road.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxloop.envs import DrivingEnv


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    num_envs: int = 16
    num_steps: int = 32  # steps per environment per update
    num_epochs: int = 4
    num_minibatches: int = 4
    learning_rate: float = 3e-4  # annealed linearly to 0 over `num_updates`
    num_updates: int = 200
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    value_coef: float = 0.5
    entropy_coef: float = 0.0
    max_grad_norm: float = 0.5
    hidden: int = 128


def init_network(key: jax.Array, obs_dim: int, action_dim: int, hidden: int) -> dict:
    """Actor and critic MLPs `obs [D] -> (mean [A], value [])`, orthogonal init as in purejaxrl."""
    def dense(k, n_in, n_out, scale):
        return {"w": jax.nn.initializers.orthogonal(scale)(k, (n_in, n_out)), "b": jnp.zeros(n_out)}

    ks = jax.random.split(key, 6)
    return {"actor": [dense(ks[0], obs_dim, hidden, np.sqrt(2)), dense(ks[1], hidden, hidden, np.sqrt(2)),
                      dense(ks[2], hidden, action_dim, 0.01)],
            "critic": [dense(ks[3], obs_dim, hidden, np.sqrt(2)), dense(ks[4], hidden, hidden, np.sqrt(2)),
                       dense(ks[5], hidden, 1, 1.0)],
            "log_std": jnp.full(action_dim, -0.5, jnp.float32)}


def mlp(layers: list[dict], x: jax.Array) -> jax.Array:
    for layer in layers[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ layers[-1]["w"] + layers[-1]["b"]


def policy(params: dict, obs: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(mean `[..., A]`, log_std `[A]`, value `[...]`)."""
    return mlp(params["actor"], obs), params["log_std"], mlp(params["critic"], obs)[..., 0]


def gaussian_log_prob(mean: jax.Array, log_std: jax.Array, action: jax.Array) -> jax.Array:
    z = (action - mean) / jnp.exp(log_std)
    return jnp.sum(-0.5 * z ** 2 - log_std - 0.5 * jnp.log(2 * jnp.pi), -1)


def make_train(env: DrivingEnv, config: PPOConfig):
    """`(init(key) -> runner, update(runner, params) -> (runner, metrics))`, both pure and jittable."""
    c = config
    space = env.action_space(env.default_params)
    schedule = optax.linear_schedule(c.learning_rate, 0.0, c.num_updates * c.num_epochs * c.num_minibatches)
    optimizer = optax.chain(optax.clip_by_global_norm(c.max_grad_norm), optax.adam(schedule, eps=1e-5))
    vreset = jax.vmap(env.reset, in_axes=(0, None))
    vstep = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    batch_size = c.num_envs * c.num_steps

    def init(key, env_params):
        key_net, key_env, key_run = jax.random.split(key, 3)
        net = init_network(key_net, env.obs_dim, space.shape[0], c.hidden)
        obs, state = vreset(jax.random.split(key_env, c.num_envs), env_params)
        return (net, optimizer.init(net), state, obs, key_run)

    def update(runner, env_params):
        net, opt_state, env_state, obs, key = runner

        def env_step(carry, _):
            env_state, obs, key = carry
            key, key_act, key_step = jax.random.split(key, 3)
            mean, log_std, value = policy(net, obs)
            action = mean + jnp.exp(log_std) * jax.random.normal(key_act, mean.shape)
            log_prob = gaussian_log_prob(mean, log_std, action)
            next_obs, env_state, reward, done, info = vstep(
                jax.random.split(key_step, c.num_envs), env_state, jnp.clip(action, space.low, space.high), env_params)
            transition = {"obs": obs, "action": action, "log_prob": log_prob, "value": value, "reward": reward,
                          "done": done, "episode_return": info["episode_return"]}
            return (env_state, next_obs, key), transition

        (env_state, obs, key), traj = jax.lax.scan(env_step, (env_state, obs, key), None, c.num_steps)

        # GAE; `done` ends an episode (the next obs belongs to a fresh one).
        _, _, last_value = policy(net, obs)

        def gae_step(carry, t):
            adv, next_value = carry
            delta = t["reward"] + c.gamma * next_value * (1 - t["done"]) - t["value"]
            adv = delta + c.gamma * c.gae_lambda * (1 - t["done"]) * adv
            return (adv, t["value"]), adv

        _, adv = jax.lax.scan(gae_step, (jnp.zeros_like(last_value), last_value), traj, reverse=True)
        data = {"obs": traj["obs"], "action": traj["action"], "log_prob": traj["log_prob"], "adv": adv,
                "ret": adv + traj["value"]}
        data = jax.tree.map(lambda a: a.reshape(batch_size, *a.shape[2:]), data)

        def loss_fn(net, mb):
            mean, log_std, value = policy(net, mb["obs"])
            ratio = jnp.exp(gaussian_log_prob(mean, log_std, mb["action"]) - mb["log_prob"])
            adv = (mb["adv"] - mb["adv"].mean()) / (mb["adv"].std() + 1e-8)
            actor = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - c.clip_eps, 1 + c.clip_eps) * adv).mean()
            critic = 0.5 * ((value - mb["ret"]) ** 2).mean()
            entropy = jnp.sum(log_std + 0.5 * jnp.log(2 * jnp.pi * jnp.e))
            return actor + c.value_coef * critic - c.entropy_coef * entropy, (actor, critic)

        def epoch(carry, key):
            def minibatch(carry, idx):
                net, opt_state = carry
                grads, (actor, critic) = jax.grad(loss_fn, has_aux=True)(net, jax.tree.map(lambda a: a[idx], data))
                updates, opt_state = optimizer.update(grads, opt_state, net)
                return (optax.apply_updates(net, updates), opt_state), (actor, critic)

            perm = jax.random.permutation(key, batch_size).reshape(c.num_minibatches, -1)
            return jax.lax.scan(minibatch, carry, perm)

        key, key_epochs = jax.random.split(key)
        (net, opt_state), (actor, critic) = jax.lax.scan(epoch, (net, opt_state),
                                                         jax.random.split(key_epochs, c.num_epochs))
        done = traj["done"].astype(jnp.float32)
        metrics = {"return_sum": jnp.sum(traj["episode_return"] * done), "episodes": jnp.sum(done),
                   "reward_per_step": traj["reward"].mean(), "actor_loss": actor.mean(), "critic_loss": critic.mean()}
        return (net, opt_state, env_state, obs, key), metrics

    return init, update


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="procedural:train:64", help="scenario source (jaxloop.data.sources)")
    ap.add_argument("--updates", type=int, default=200)
    ap.add_argument("--episode-steps", type=int, default=40, help="steps before an episode is truncated")
    ap.add_argument("--reward", default="progress_safety", help="reward preset (jaxloop.sim.rewards.PRESETS)")
    ap.add_argument("--block", type=int, default=20, help="updates per printed line")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    env = DrivingEnv.from_source(args.data, reward_weights=args.reward, max_steps_in_episode=args.episode_steps,
                                 terminate_on=("collision", "offroad"))
    config = PPOConfig(num_updates=args.updates)
    params = env.default_params
    init, update = make_train(env, config)

    def block(runner, params):  # `args.block` updates in one compiled call
        return jax.lax.scan(lambda r, _: update(r, params), runner, None, args.block)

    block = jax.jit(block)
    runner = jax.jit(init)(jax.random.key(args.seed), params)
    print(f"{args.data}: {params.num_scenarios} scenarios, obs [{env.obs_dim}], action {env.action_space().shape}, "
          f"{config.num_envs} envs x {config.num_steps} steps per update")
    t0, curve = time.perf_counter(), []
    for b in range(max(1, args.updates // args.block)):
        runner, m = block(runner, params)
        m = jax.device_get(m)
        episodes = float(m["episodes"].sum())
        mean_return = float(m["return_sum"].sum()) / max(episodes, 1.0)
        curve.append(mean_return)
        steps = (b + 1) * args.block * config.num_envs * config.num_steps
        print(f"updates {(b + 1) * args.block:4d}  env steps {steps:7d}  episodes {int(episodes):4d}  "
              f"mean return {mean_return:7.2f}  reward/step {float(m['reward_per_step'].mean()):6.3f}  "
              f"({time.perf_counter() - t0:5.1f} s)", flush=True)
    print(f"mean episode return: first block {curve[0]:.2f} -> last block {curve[-1]:.2f}")
    return curve


if __name__ == "__main__":
    main()
