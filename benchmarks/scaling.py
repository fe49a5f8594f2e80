"""How the closed-loop rollout's cost grows with batch, objects, horizon and map size.

    python benchmarks/scaling.py --quick

JSON lines (bench "scaling"):
- `env_steps_per_s` of a jitted, vmapped rollout over batch B, objects N, horizon H;
- `grad_env_steps_per_s` of the gradient of an ego loss through the rollout (APG-shaped);
- `temp_memory_mb`: the compiled gradient program's temporary buffers (XLA's memory
  analysis: the peak working set beyond inputs and outputs), with and without
  per-step rematerialisation, against H;
- `remat_time_ratio`: gradient time with remat over without, at the same H.
With `--metrics`, every step also evaluates the ego metric suite against the map, and
the map size P (lanes) is swept.
"""

from __future__ import annotations

import argparse
from typing import Sequence

import jax
import jax.numpy as jnp

from benchmarks.common import device_batch, emit, environment, peak_host_memory_mb, time_fn
from benchmarks.sim_step import open_loop_policy
from jaxloop.data.toy import make_toy_scenario
from jaxloop.sim.compute import compiler_options
from jaxloop.sim.env import Env, EnvConfig
from jaxloop.sim.rollout import rollout


def _scenarios(batch: int, num_objects: int, num_lanes: int = 4):
    base = [make_toy_scenario(num_objects=num_objects, num_cars=min(16, num_objects), num_lanes=num_lanes, seed=s)
            for s in range(4)]
    return device_batch(base, batch)


def _extras_fn(with_metrics: bool):
    if not with_metrics:
        return None
    from jaxloop.sim import metrics
    return lambda scenario, prev, new, info: metrics.step_metrics(scenario, prev, new)


def _programs(env: Env, horizon: int, remat: bool, with_metrics: bool):
    extras_fn = _extras_fn(with_metrics)

    def loss(acts, scenario, key):
        state = env.reset(scenario, key)
        final, out = rollout(env, scenario, state, open_loop_policy(acts), horizon, remat=remat, extras_fn=extras_fn)
        ego = scenario.object_metadata.sdc_index
        err = (out.states.x[:, ego] - out.log_states.x[:, ego]) ** 2 + (out.states.y[:, ego] - out.log_states.y[:, ego]) ** 2
        extra = sum(jnp.sum(jnp.asarray(v, jnp.float32)) for v in jax.tree.leaves(out.extras)) if extras_fn else 0.0
        return jnp.mean(err) + 0.0 * extra

    batched = lambda a, s, k: jnp.mean(jax.vmap(loss)(a, s, k))
    opts = compiler_options()
    return jax.jit(batched, compiler_options=opts), jax.jit(jax.grad(batched), compiler_options=opts)


def _inputs(batch: int, num_objects: int, horizon: int, num_lanes: int = 4):
    scenarios = _scenarios(batch, num_objects, num_lanes)
    actions = jnp.zeros((batch, horizon, 2)) + jnp.array([0.3, 0.005])
    keys = jax.random.split(jax.random.key(0), batch)
    return actions, scenarios, keys


def case_rollout(batch, num_objects, horizon, env_meta, with_metrics=False, num_lanes=4, grad=True):
    env = Env(EnvConfig())
    fwd, bwd = _programs(env, horizon, remat=False, with_metrics=with_metrics)
    args = _inputs(batch, num_objects, horizon, num_lanes)
    case = {"B": batch, "N": num_objects, "H": horizon, "P": num_lanes, "metrics": with_metrics}
    t = time_fn(fwd, *args)
    emit("scaling", case, "env_steps_per_s", batch * horizon / t["median_s"], "1/s", compile_s=t["compile_s"],
         peak_host_mb=peak_host_memory_mb(), env=env_meta)
    if grad:
        tg = time_fn(bwd, *args)
        emit("scaling", case, "grad_env_steps_per_s", batch * horizon / tg["median_s"], "1/s",
             compile_s=tg["compile_s"], peak_host_mb=peak_host_memory_mb(), env=env_meta)


def case_memory(batch, num_objects, horizon, env_meta):
    env = Env(EnvConfig())
    args = _inputs(batch, num_objects, horizon)
    times = {}
    for remat in (False, True):
        _, bwd = _programs(env, horizon, remat=remat, with_metrics=False)
        compiled = bwd.lower(*args).compile()
        mem = compiled.memory_analysis()
        temp = getattr(mem, "temp_size_in_bytes", None) if mem is not None else None
        times[remat] = time_fn(compiled, *args)["median_s"]
        case = {"B": batch, "N": num_objects, "H": horizon, "remat": remat}
        if temp is not None:
            emit("scaling", case, "temp_memory_mb", temp / 2 ** 20, "MiB", env=env_meta)
        emit("scaling", case, "grad_step_s", times[remat], "s", env=env_meta)
    emit("scaling", {"B": batch, "N": num_objects, "H": horizon}, "remat_time_ratio", times[True] / times[False],
         "ratio", env=env_meta)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--metrics", action="store_true", help="evaluate the ego metric suite every step")
    args = parser.parse_args(argv)
    env_meta = environment()
    if args.quick:
        batches, objects, horizons, lanes = [1, 16, 64, 256], [8, 32, 128], [10, 40, 80], [16, 128]
    else:
        batches, objects, horizons, lanes = [1, 4, 16, 64, 256, 1024, 4096], [8, 16, 32, 64, 128], [10, 20, 40, 80], \
            [16, 64, 256]
    for b in batches:
        case_rollout(b, 32, 20, env_meta, grad=b <= 256)
    for n in objects:
        case_rollout(64, n, 20, env_meta, grad=False)
    for h in horizons:
        case_memory(64 if args.quick else 256, 32, h, env_meta)
    if args.metrics:
        for p in lanes:
            case_rollout(64, 32, 20, env_meta, with_metrics=True, num_lanes=p, grad=False)


if __name__ == "__main__":
    main()
