"""Training throughput: env-steps trained per second for each algorithm and policy network.

    python benchmarks/train_throughput.py --quick

JSON lines (benchmarks.common.emit):

- `train_env_steps_per_s` per (algo, model) at B=64 scenarios, N=32 objects, H=80 steps:
  closed-loop env steps consumed by one compiled train step (APG, PPO: B*H; GRPO:
  (B/G scenarios) x G rollouts x H, so 64 episodes too; BC: B * samples_per_scenario
  logged samples), with the compile time and peak host memory;
- `apg_over_forward`: the APG train step (rollout + backward + update) over a
  forward-only closed-loop rollout of the same policy and batch that evaluates the same
  surrogate loss (target <= 4); `apg_over_bare_rollout` is the same step over a rollout
  without the loss.

- `train_agent_steps_per_s` per self-play algorithm (`--selfplay-algos`, default APG and
  PPO; `env.controlled="vehicles"`) at B=64, N=32 with every slot a car (M=32 controlled
  agents per scenario): controlled agent-steps trained per second (B*M*H per step),
  with `train_env_steps_per_s` (B*H) beside it.

Rewards are the `progress_safety` preset of `jaxloop.sim.rewards` (per agent in self-play:
`agent_step_reward`, `agent_step_surrogate_loss`).
"""

from __future__ import annotations

import argparse
from typing import Sequence

import jax
import jax.numpy as jnp

from benchmarks.common import emit, environment, peak_device_memory_mb, peak_host_memory_mb, time_fn
from jaxloop.data.toy import make_toy_scenario
from jaxloop.config import ALGO_CLASSES, BC, GRPO, EnvSettings, Experiment
from jaxloop.policy.networks import ModelConfig
from jaxloop.sim.compute import compiler_options
from jaxloop.sim.datatypes import stack_scenarios
from jaxloop.sim.env import controlled_mask
from jaxloop.sim.rollout import rollout
from jaxloop.io.policies import make_policy_fn
from jaxloop.train.trainer import make_trainer

BENCH = "train_throughput"


def _scenarios(batch: int, num_objects: int, num_steps: int, num_cars: int | None = None):
    cars = min(16, num_objects) if num_cars is None else num_cars
    base = [make_toy_scenario(num_objects=num_objects, num_cars=cars, num_steps=num_steps, seed=s)
            for s in range(4)]
    return stack_scenarios([base[i % 4] for i in range(batch)])


def _config(algo: str, model: str, batch: int, horizon: int, group: int, controlled: str = "sdc") -> Experiment:
    scen = batch // group if algo == "grpo" else batch
    return Experiment(algo=GRPO(group_size=group) if algo == "grpo" else ALGO_CLASSES[algo](), batch_size=scen,
                      env=EnvSettings(horizon=horizon, controlled=controlled),
                      model=ModelConfig(kind=model, hidden=(128, 128), embed_dim=64, num_heads=4))


def _env_steps(config: Experiment) -> int:
    if isinstance(config.algo, BC):
        return config.batch_size * config.algo.samples_per_scenario
    if isinstance(config.algo, GRPO):
        return config.batch_size * config.algo.group_size * config.env.horizon
    return config.batch_size * config.env.horizon


def bench(algos: Sequence[str], models: Sequence[str], batch: int, num_objects: int, horizon: int, group: int,
          repeats: int, env_meta: dict) -> None:
    data = _scenarios(batch, num_objects, horizon + 11)
    for model in models:
        for algo in algos:
            config = _config(algo, model, batch, horizon, group)
            trainer = make_trainer(config)
            state = trainer.init(jax.random.PRNGKey(0))
            batch_data = trainer.shard(jax.tree.map(lambda a: a[:config.batch_size], data))
            key = jax.random.PRNGKey(1)
            params = trainer.params
            step = lambda s: trainer.train_step(s, batch_data, key, params)
            timing = time_fn(step, state, repeats=repeats, min_time=0.0)
            rate = _env_steps(config) / timing["median_s"]
            case = {"algo": algo, "model": model, "B": batch, "N": num_objects, "H": horizon}
            if algo == "grpo":
                case["G"] = group
            emit(BENCH, case, "train_env_steps_per_s", rate, "1/s", step_s=timing["median_s"],
                 compile_s=timing["compile_s"], repeats=timing["repeats"], peak_host_mb=peak_host_memory_mb(),
                 peak_device_mb=peak_device_memory_mb(), env=env_meta)
            if algo == "apg":
                policy = make_policy_fn(trainer.ctx.graphdef, state.params, config.obs)
                env = trainer.ctx.env

                surrogate = trainer.ctx.surrogate_fn

                def forward(scenarios, k, with_loss):
                    def episode(scenario, kk):
                        extras = ((lambda sc, prev, new, info: {"loss": surrogate(sc, prev, new, params.reward)})
                                  if with_loss else None)
                        _, out = rollout(env, scenario, env.reset(scenario, kk), policy, horizon, extras_fn=extras)
                        return jnp.mean(out.extras["loss"]) if with_loss else jnp.mean(out.states.x)
                    return jnp.mean(jax.vmap(episode)(scenarios, jax.random.split(k, batch)))

                opts = compiler_options()
                fwd = time_fn(jax.jit(lambda s, k: forward(s, k, True), compiler_options=opts), batch_data, key,
                              repeats=repeats, min_time=0.0)
                bare = time_fn(jax.jit(lambda s, k: forward(s, k, False), compiler_options=opts), batch_data, key,
                               repeats=repeats, min_time=0.0)
                emit(BENCH, case, "apg_over_forward", timing["median_s"] / fwd["median_s"], "ratio",
                     apg_step_s=timing["median_s"], forward_s=fwd["median_s"], forward_compile_s=fwd["compile_s"],
                     apg_over_bare_rollout=timing["median_s"] / bare["median_s"], bare_rollout_s=bare["median_s"],
                     target=4.0, env=env_meta)


def bench_selfplay(algos: Sequence[str], models: Sequence[str], batch: int, num_objects: int, horizon: int,
                   group: int, repeats: int, env_meta: dict) -> None:
    """Self-play train steps: every slot a car, one shared policy driving all of them."""
    data = _scenarios(batch, num_objects, horizon + 11, num_cars=num_objects)
    for model in models:
        for algo in algos:
            config = _config(algo, model, batch, horizon, group, controlled="vehicles")
            trainer = make_trainer(config)
            state = trainer.init(jax.random.PRNGKey(0))
            batch_data = trainer.shard(jax.tree.map(lambda a: a[:config.batch_size], data))
            agents = int(jnp.sum(jax.vmap(lambda sc: controlled_mask(sc, "vehicles"))(batch_data)))
            key = jax.random.PRNGKey(1)
            params = trainer.params
            timing = time_fn(lambda s: trainer.train_step(s, batch_data, key, params), state, repeats=repeats,
                             min_time=0.0)
            episodes = config.algo.group_size if isinstance(config.algo, GRPO) else 1
            agent_steps = agents * episodes * horizon
            case = {"algo": algo, "model": model, "controlled": "vehicles", "B": batch, "N": num_objects,
                    "M": agents // config.batch_size, "H": horizon}
            emit(BENCH, case, "train_agent_steps_per_s", agent_steps / timing["median_s"], "1/s",
                 train_env_steps_per_s=_env_steps(config) / timing["median_s"], step_s=timing["median_s"],
                 compile_s=timing["compile_s"], repeats=timing["repeats"], peak_host_mb=peak_host_memory_mb(),
                 peak_device_mb=peak_device_memory_mb(), env=env_meta)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few repeats (CI-sized)")
    parser.add_argument("--algos", nargs="*", default=["bc", "apg", "ppo", "grpo"])
    parser.add_argument("--models", nargs="*", default=["mlp", "attention"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--num-objects", type=int, default=32)
    parser.add_argument("--horizon", type=int, default=80)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--selfplay-algos", nargs="*", default=["apg", "ppo"],
                        help="self-play cases (controlled='vehicles'); none to skip")
    parser.add_argument("--selfplay-models", nargs="*", default=["mlp"])
    args = parser.parse_args(argv)
    repeats = 2 if args.quick else 5
    bench(args.algos, args.models, args.batch, args.num_objects, args.horizon, args.group_size,
          repeats=repeats, env_meta=environment())
    bench_selfplay(args.selfplay_algos, args.selfplay_models, args.batch, args.num_objects, args.horizon,
                   args.group_size, repeats=repeats, env_meta=environment())


if __name__ == "__main__":
    main()
