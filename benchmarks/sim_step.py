"""Simulator throughput: batched env steps and the cost of differentiating a rollout.

    python benchmarks/sim_step.py --quick
    python -m benchmarks.sim_step --quick --only full    # just the IDM + every-metric case
    python -m benchmarks.sim_step --quick --only full --steps 80    # whole 80-step episodes per call

JSON lines: `scenario_steps_per_s` for B in (1, 64, 1024) at N=128 (dynamics + log
replay for every non-ego object); the same with `{"agents": "idm", "metrics": "all"}`:
IDM for every non-ego object and `jaxloop.sim.metrics.step_metrics` on every step
(every ego metric + all-pairs overlap: `FULL_METRICS`) on a WOMD-sized compiled map
(P=256 lanes x Q=20 points, E=2048 road-edge segments, L=16 lights); and
the all-object metrics case `{"agents": "log", "metrics": "objects", "map": "womd"}`: log replay
for every non-ego object and, on every step, overlap, offroad and log divergence of all N=128
objects (`metrics.overlap`, `metrics.offroad`, `metrics.log_divergence`, the work of Waymax's
per-object metrics) on the WOMD tf.Example fixture (`../shared/data/womd`, its compiled map),
at B in (1, 16, 1024), with the process's CPU time beside the wall time
(`scenario_steps_per_cpu_s`: on a shared machine it does not count waiting for a core); and
`backward_over_forward` for an 80-step rollout at B=64 (gradient of the final ego
position w.r.t. all actions vs the forward pass). Each timed call resets B episodes
and unrolls `--steps` closed-loop steps (default 20), so the per-episode set-up (the
logged paths of IDM, the rollout's log window) is in the figure once per call. The
scenarios are on the device before timing, as a training step receives them from
`jaxloop.data.pipeline` (at B=1024 the WOMD-sized batch is 650 MB, whose host-to-device
copy is the input pipeline's work, overlapped with the previous step there). Every
program is compiled with `jaxloop.sim.compute.compiler_options()`, as jaxloop's own are.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import statistics
import time
from typing import Sequence

import jax
import jax.numpy as jnp

from benchmarks.common import (batch_placement, device_batch, emit, environment, peak_device_memory_mb,
                               peak_host_memory_mb, time_fn, use_cpu_devices)
from jaxloop.data.toy import make_toy_scenario, pad_map
from jaxloop.sim import metrics
from jaxloop.sim.compute import compiler_options
from jaxloop.sim.env import Env, EnvConfig
from jaxloop.sim.rollout import rollout

STEPS_PER_CALL = 20
# On CPU the batch runs data-parallel over XLA devices carved out of the host (`jax_num_cpu_devices`),
# as `jaxloop.train.parallel` shards a training batch over devices. Paired in one process on 2 cores
# (identical outputs), the full step ran faster with more devices: at B=64
# 1.43x on 16 devices over one; at B=1024 1.27x on 8 over one, and 1.20x on 32 over 4 in a
# second run (README). Each device's share is a small batch
# whose working set stays in cache, and the devices' programs keep both cores busy where one
# program's threads wait between its many small loop-body ops.
CPU_DEVICES_PER_CORE = 8
# The full case: every ego metric plus overlap among all objects (the per-object red-light
# and log-divergence terms are extras a caller can switch on).
FULL_METRICS = metrics.MetricsConfig(per_object_overlap=True, per_object_red_light=False,
                                     per_object_log_divergence=False)


def _batch(batch: int, num_objects: int, placement=None):
    """B toy scenarios, on the device(s) of `placement` (default: the default device)."""
    base = [make_toy_scenario(num_objects=num_objects, num_cars=min(32, num_objects), seed=s) for s in range(4)]
    return device_batch(base, batch, placement)


def _womd_sized_batch(batch: int, num_objects: int, placement=None):
    """Toy scenarios with the array sizes of a compiled WOMD map (256 x 20 lanes, 2048 edges, 16 lights), on the
    device(s) of `placement` (default: the default device)."""
    base = [pad_map(make_toy_scenario(num_objects=num_objects, num_cars=min(32, num_objects), seed=s, num_lanes=256,
                                      lane_points=20), num_edges=2048, num_lights=16) for s in range(4)]
    return device_batch(base, batch, placement)


def _actions_and_keys(batch: int, steps: int, placement):
    """The open-loop action table `[B, steps, 2]` and B episode keys, placed like the scenarios."""
    actions = jnp.zeros((batch, steps, 2)) + jnp.array([0.5, 0.01])
    return jax.device_put((actions, jax.random.split(jax.random.key(0), batch)), placement)


def open_loop_policy(actions):
    """Policy reading a per-step action table `[H, A]` by the state's timestep."""
    def policy(scenario, state, key):
        del scenario, key
        return actions[state.timestep - 10]
    return policy


def bench_steps(batches: Sequence[int], num_objects: int, agents: str, env_meta: dict) -> None:
    env = Env(EnvConfig(non_ego_agent=agents if agents != "log" else "log"))
    for batch in batches:
        placement = batch_placement(batch)
        scenarios = _batch(batch, num_objects, placement)
        actions, keys = _actions_and_keys(batch, STEPS_PER_CALL, placement)

        def episode(scenario, acts, key):
            state = env.reset(scenario, key)
            final, _ = rollout(env, scenario, state, open_loop_policy(acts), STEPS_PER_CALL)
            return final.current.x

        fn = jax.jit(jax.vmap(episode), compiler_options=compiler_options())
        timing = time_fn(fn, scenarios, actions, keys)
        rate = batch * STEPS_PER_CALL / timing["median_s"]
        emit("sim_step", {"B": batch, "N": num_objects, "agents": agents, "devices": len(placement.device_set)},
             "scenario_steps_per_s", rate, "1/s",
             object_steps_per_s=rate * num_objects, compile_s=timing["compile_s"], repeats=timing["repeats"],
             peak_host_mb=peak_host_memory_mb(), peak_device_mb=peak_device_memory_mb(), env=env_meta)


def bench_steps_full(batches: Sequence[int], num_objects: int, env_meta: dict,
                     config: metrics.MetricsConfig = FULL_METRICS, steps: int = STEPS_PER_CALL) -> None:
    """Env step with IDM for every non-ego object and every step metric (ego + all-pairs overlap)."""
    env = Env(EnvConfig(non_ego_agent="idm"))
    extras_fn = lambda sc, prev, new, info: metrics.step_metrics(sc, prev, new, info, config=config)
    for batch in batches:
        placement = batch_placement(batch)
        scenarios = _womd_sized_batch(batch, num_objects, placement)
        actions, keys = _actions_and_keys(batch, steps, placement)

        def episode(scenario, acts, key):
            state = env.reset(scenario, key)
            final, out = rollout(env, scenario, state, open_loop_policy(acts), steps, extras_fn=extras_fn)
            # Reduce every metric so none of them is dead code.
            return final.current.x, jax.tree.map(lambda a: jnp.sum(a.astype(jnp.float32)), out.extras)

        fn = jax.jit(jax.vmap(episode), compiler_options=compiler_options())
        timing = time_fn(fn, scenarios, actions, keys)
        rate = batch * steps / timing["median_s"]
        emit("sim_step", {"B": batch, "N": num_objects, "agents": "idm", "metrics": "all",
                          "edge_cull": config.edge_cull, "steps": steps, "devices": len(placement.device_set)},
             "scenario_steps_per_s", rate, "1/s",
             object_steps_per_s=rate * num_objects, compile_s=timing["compile_s"], repeats=timing["repeats"],
             peak_host_mb=peak_host_memory_mb(), peak_device_mb=peak_device_memory_mb(), env=env_meta)


WOMD_FIXTURE = (pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "womd"
                / "motion_data_one_example.tfrecord")
OBJECT_BATCHES = (1, 16, 1024)


def object_metrics(scenario, prev, state, info):
    """Overlap, offroad and log divergence of every object `[N]` at the new step (Waymax's per-object metrics)."""
    del prev
    cur = state.current
    div, div_valid = metrics.log_divergence(cur, info.log_state)
    return {"overlap": metrics.overlap(cur), "offroad": metrics.offroad(cur, scenario.roadmap),
            "log_divergence": div, "log_valid": div_valid}


def bench_objects(batches: Sequence[int], env_meta: dict, steps: int = STEPS_PER_CALL,
                  path: pathlib.Path = WOMD_FIXTURE) -> None:
    """Log-replay env steps with all-object overlap + offroad + log divergence on the WOMD fixture (N=128)."""
    from jaxloop.data.womd import load_womd
    if not path.is_file():
        print(json.dumps({"bench": "sim_step", "skipped": f"WOMD fixture not found at {path}"}), flush=True)
        return
    base = [next(load_womd(path))[0]]
    num_objects = base[0].log_trajectory.x.shape[0]
    env = Env(EnvConfig(non_ego_agent="log"))
    for batch in batches:
        placement = batch_placement(batch)
        scenarios = device_batch(base, batch, placement)
        actions, keys = _actions_and_keys(batch, steps, placement)

        def episode(scenario, acts, key):
            state = env.reset(scenario, key)
            final, out = rollout(env, scenario, state, open_loop_policy(acts), steps, extras_fn=object_metrics)
            return final.current.x, jax.tree.map(lambda a: jnp.sum(a.astype(jnp.float32)), out.extras)

        fn = jax.jit(jax.vmap(episode), compiler_options=compiler_options())
        timing = time_fn(fn, scenarios, actions, keys)
        rate = batch * steps / timing["median_s"]
        cpu_s = process_cpu_s(fn, scenarios, actions, keys)
        emit("sim_step", {"B": batch, "N": num_objects, "agents": "log", "metrics": "objects", "map": "womd",
                          "steps": steps, "devices": len(placement.device_set)},
             "scenario_steps_per_s", rate, "1/s",
             object_steps_per_s=rate * num_objects, scenario_steps_per_cpu_s=batch * steps / cpu_s,
             compile_s=timing["compile_s"], repeats=timing["repeats"],
             peak_host_mb=peak_host_memory_mb(), peak_device_mb=peak_device_memory_mb(), env=env_meta)


def process_cpu_s(fn, *args, repeats: int = 5) -> float:
    """Median CPU time of this process (all its threads) over `repeats` calls of a compiled `fn`.

    On a machine shared with other work, wall time counts the time the process waits for
    a core; its own CPU time does not. A rate per CPU-second times the cores the program
    keeps busy is the wall rate it reaches on an otherwise idle machine.
    """
    times = []
    for _ in range(repeats):
        t = time.process_time()
        jax.block_until_ready(fn(*args))
        times.append(time.process_time() - t)
    return statistics.median(times)


def bench_backward(batch: int, num_objects: int, horizon: int, env_meta: dict) -> None:
    env = Env()
    placement = batch_placement(batch)
    scenarios = _batch(batch, num_objects, placement)
    actions, keys = _actions_and_keys(batch, horizon, placement)

    def loss(acts, scenario, key):
        state = env.reset(scenario, key)
        final, _ = rollout(env, scenario, state, open_loop_policy(acts), horizon)
        ego = scenario.object_metadata.sdc_index
        return final.current.x[ego] + final.current.y[ego]

    batched_loss = lambda a, s, k: jnp.sum(jax.vmap(loss)(a, s, k))
    fwd = jax.jit(batched_loss, compiler_options=compiler_options())
    bwd = jax.jit(jax.value_and_grad(batched_loss), compiler_options=compiler_options())
    t_f = time_fn(fwd, actions, scenarios, keys)
    t_b = time_fn(bwd, actions, scenarios, keys)
    emit("sim_step", {"B": batch, "N": num_objects, "H": horizon, "agents": "log", "devices": len(placement.device_set)},
         "backward_over_forward",
         t_b["median_s"] / t_f["median_s"], "ratio", forward_s=t_f["median_s"], backward_s=t_b["median_s"],
         peak_host_mb=peak_host_memory_mb(), env=env_meta)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the small sweep (CI-sized)")
    parser.add_argument("--batches", type=int, nargs="*", default=None)
    parser.add_argument("--num-objects", type=int, default=128)
    parser.add_argument("--only", choices=("log", "full", "objects", "backward"), nargs="*", default=None,
                        help="run only these cases (log: log-replay steps; full: IDM + every metric; objects: "
                             "all-object overlap + offroad + log divergence on the WOMD fixture; backward: "
                             "rollout gradient); default all")
    parser.add_argument("--edge-cull", type=int, default=0, help="MetricsConfig.edge_cull of the full case")
    parser.add_argument("--steps", type=int, default=STEPS_PER_CALL,
                        help="closed-loop steps per timed call of the full case (at most 80 on T=91 logs)")
    parser.add_argument("--cpu-devices", type=int, default=None,
                        help="XLA devices the host CPU is split into (default: eight per core); a batch that divides "
                             "by the device count is sharded over them")
    args = parser.parse_args(argv)
    if not 1 <= args.steps <= 80:
        parser.error(f"--steps must be in [1, 80] (closed-loop steps after the 11 initial ones of a 91-step log), "
                     f"got {args.steps}")
    use_cpu_devices(args.cpu_devices or CPU_DEVICES_PER_CORE * (os.cpu_count() or 1))
    env_meta = environment()
    batches = args.batches or ([1, 64, 1024] if args.quick else [1, 64, 256, 1024, 4096])
    only = set(args.only or ("log", "full", "objects", "backward"))
    if "log" in only:
        bench_steps(batches, args.num_objects, "log", env_meta)
    if "full" in only:
        bench_steps_full(batches, args.num_objects, env_meta,
                         dataclasses.replace(FULL_METRICS, edge_cull=args.edge_cull), args.steps)
    if "objects" in only:
        bench_objects(args.batches or OBJECT_BATCHES, env_meta, args.steps)
    if "backward" in only:
        bench_backward(64, args.num_objects, 80, env_meta)


if __name__ == "__main__":
    main()
