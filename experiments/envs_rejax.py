"""rejax's PPO on `jaxloop.envs.DrivingEnv`: jaxloop as the environment of an off-the-shelf JAX RL library.

rejax (a separate install, `pip install rejax`, not a jaxloop dependency) takes any environment
with the gymnax interface; `DrivingEnv` is one, so the whole of the integration is
`PPO.create(env=env, env_params=env.default_params, ...)`.

    PYTHONPATH=$PWD python experiments/envs_rejax.py --data procedural:train:64 --timesteps 100000

rejax evaluates the deterministic policy on 128 fresh episodes every `--eval-every`
environment steps; the script prints the mean and spread of those returns.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from jaxloop.envs import DrivingEnv


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="procedural:train:64", help="scenario source (jaxloop.data.sources)")
    ap.add_argument("--timesteps", type=int, default=100_000, help="environment steps in all")
    ap.add_argument("--eval-every", type=int, default=10_240, help="environment steps between evaluations")
    ap.add_argument("--episode-steps", type=int, default=40, help="steps before an episode is truncated")
    ap.add_argument("--reward", default="progress_safety", help="reward preset (jaxloop.sim.rewards.PRESETS)")
    ap.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        from rejax import PPO
    except ImportError:
        raise SystemExit("this example needs rejax: pip install rejax (or pip install -e .[rl])") from None

    env = DrivingEnv.from_source(args.data, reward_weights=args.reward, max_steps_in_episode=args.episode_steps,
                                 terminate_on=("collision", "offroad"))
    algo = PPO.create(env=env, env_params=env.default_params, total_timesteps=args.timesteps,
                      eval_freq=args.eval_every, num_envs=16, num_steps=32, num_epochs=4, num_minibatches=4,
                      learning_rate=args.lr, max_grad_norm=0.5, gae_lambda=0.95, clip_eps=0.2, ent_coef=0.0,
                      agent_kwargs={"activation": "tanh", "hidden_layer_sizes": (128, 128)})
    # The algorithm is a pytree: passing it in keeps the scenario bank (in env_params) an argument, not a constant.
    train = jax.jit(lambda algo, key: algo.train(key))
    print(f"{args.data}: {env.default_params.num_scenarios} scenarios, obs [{env.obs_dim}], "
          f"action {env.action_space().shape}; rejax PPO for {args.timesteps} env steps")
    t0 = time.perf_counter()
    _, (lengths, returns) = train(algo, jax.random.key(args.seed))
    returns, lengths = np.asarray(returns), np.asarray(lengths)
    print(f"trained in {time.perf_counter() - t0:.1f} s (compile included)")
    for i, (r, n) in enumerate(zip(returns, lengths)):
        print(f"eval {i:2d}  after ~{i * args.eval_every:7d} env steps  return {r.mean():7.2f} +- {r.std():5.2f}  "
              f"episode length {n.mean():5.1f}")
    print(f"mean evaluation return: first {returns[0].mean():.2f} -> last {returns[-1].mean():.2f}")
    return returns


if __name__ == "__main__":
    main()
