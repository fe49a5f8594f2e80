"""`make demo`: the main job on built-in data.

Rolls out the ego under three baselines on toy scenarios (batched, jitted, one compile
each) and prints how far each strays from the log.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxloop.data.toy import make_toy_scenario
from jaxloop.sim.datatypes import stack_scenarios
from jaxloop.sim.env import Env, EnvConfig, num_closed_loop_steps
from jaxloop.sim.rollout import constant_action_policy, log_replay_policy, rollout


def run(num_scenarios: int = 64, seed: int = 0) -> int:
    """Rolls out baselines on toy scenarios and prints a table of ego log divergence."""
    scenarios = stack_scenarios([make_toy_scenario(seed=seed + i) for i in range(num_scenarios)])
    env = Env(EnvConfig())
    steps = num_closed_loop_steps(jax.tree.map(lambda a: a[0], scenarios), env.config)
    policies = {
        "expert (inverse bicycle)": log_replay_policy(env),
        "coast (zero action)": constant_action_policy(jnp.zeros(env.config.action_dim)),
    }
    print(f"{'policy':<28}{'ADE m':>10}{'FDE m':>10}{'wall s':>10}")
    for name, policy in policies.items():
        def episode(scenario, key):
            state = env.reset(scenario, key)
            _, out = rollout(env, scenario, state, policy, steps)
            ego = scenario.object_metadata.sdc_index
            err = jnp.hypot(out.states.x[:, ego] - out.log_states.x[:, ego], out.states.y[:, ego] - out.log_states.y[:, ego])
            return err.mean(), err[-1]

        fn = jax.jit(jax.vmap(episode))
        keys = jax.random.split(jax.random.key(seed), num_scenarios)
        t0 = time.perf_counter()
        ade, fde = jax.block_until_ready(fn(scenarios, keys))
        print(f"{name:<28}{float(np.mean(ade)):>10.3f}{float(np.mean(fde)):>10.3f}{time.perf_counter() - t0:>10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run())
