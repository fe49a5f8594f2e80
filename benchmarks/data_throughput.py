"""Data pipeline throughput: raw WOMD tf.Example records -> Scenarios, and cache -> device batches.

    python benchmarks/data_throughput.py --quick

JSON lines:
- `tfrecord_scenarios_per_s` per stage on one core, over a TFRecord holding the WOMD
  tf.Example fixture (91 steps, 128 objects, 20,000 roadgraph points) repeated R times:
  "framing" (read + both CRCs), "decode" (+ tf.Example parse to arrays), "full" (+ checks,
  map compilation, route, lights: a finished `Scenario`);
- `json_scenarios_per_s`: GPUDrive / PufferDrive JSON scenes (the 18 real WOMD scenes of
  `shared/data/gpudrive`, 2.3 MB and 18-100 objects each) read, decoded and built into
  finished `Scenario`s on one core (the process is pinned to one CPU for the case, and
  BLAS / OpenMP pools to one thread): the median over passes of the whole set (`rates`:
  every pass), with the split of one pass into JSON decode / field extraction / shared
  builder;
- `cache_scenarios_per_s`: `ScenarioDataset.batches` from a packed cache of S copies,
  shuffled, into device batches of B (prefetch thread on), after one warm-up epoch;
- `peak_host_mb` rides along on every line; parse lines also carry `scenarios_per_cpu_s`
  (process CPU time: the one-core rate, robust to other load on the machine).
"""

from __future__ import annotations

import os

# One-thread numeric pools, set before numpy loads: the parse cases measure one core.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import contextlib
import pathlib
import tempfile
import time
import warnings
from typing import Sequence

import jax

from benchmarks.common import emit, environment, peak_host_memory_mb

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURE = ROOT.parent / "shared" / "data" / "womd" / "motion_data_one_example.tfrecord"
JSON_SCENES = ROOT.parent / "shared" / "data" / "gpudrive"


def bench_parse(records: int, tmp: pathlib.Path, env_meta: dict) -> list:
    from jaxloop.data.tfrecord import read_records, write_records
    from jaxloop.data.womd import load_womd, parse_example

    payload = next(read_records(FIXTURE))
    path = tmp / "repeated.tfrecord"
    write_records(path, [payload] * records)
    scenarios = []

    def framing():
        return sum(1 for _ in read_records(path))

    def decode():
        return sum(1 for rec in read_records(path) if parse_example(rec))

    def full():
        scenarios.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scenarios.extend(load_womd(path))
        return len(scenarios)

    for stage, fn in (("framing", framing), ("decode", decode), ("full", full)):
        fn()  # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        n = fn()
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        # Single-threaded host code: the CPU-time rate is the one-core rate even on a shared machine.
        emit("data_throughput", {"stage": stage, "records": records, "layout": "tf_example", "N": 128, "T": 91,
                                 "roadgraph_points": 20000}, "tfrecord_scenarios_per_s", n / dt, "1/s",
             seconds=dt, cpu_seconds=cpu, scenarios_per_cpu_s=n / max(cpu, 1e-9),
             peak_host_mb=peak_host_memory_mb(), env=env_meta)
    return [s for s, _ in scenarios]


@contextlib.contextmanager
def one_core():
    """Pins this process to one of its CPUs (the last: the least likely to serve interrupts) for the block."""
    if not hasattr(os, "sched_setaffinity"):
        yield None
        return
    before = os.sched_getaffinity(0)
    core = max(before)
    os.sched_setaffinity(0, {core})
    try:
        yield core
    finally:
        os.sched_setaffinity(0, before)


def bench_json(passes: int, env_meta: dict) -> None:
    import statistics

    from jaxloop.data.common import LoadConfig, build_scenario
    from jaxloop.data.gpudrive import load_gpudrive, read_scene, scene_to_raw

    paths = sorted(JSON_SCENES.glob("*.json"))
    if not paths:
        raise SystemExit(f"no JSON scenes under {JSON_SCENES}")
    config = LoadConfig()
    rates, cpu_rates = [], []
    with warnings.catch_warnings(), one_core() as core:
        warnings.simplefilter("ignore")
        for p in paths:  # warm-up: imports, first numpy calls, the file cache
            load_gpudrive(p, config)
        for _ in range(passes):
            t0, c0 = time.perf_counter(), time.process_time()
            for p in paths:
                load_gpudrive(p, config)
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            rates.append(len(paths) / dt)
            cpu_rates.append(len(paths) / max(cpu, 1e-9))
        # Where one pass spends its (CPU) time.
        split = {"decode_s": 0.0, "extract_s": 0.0, "build_s": 0.0}
        for p in paths:
            c0 = time.process_time()
            scene = read_scene(p)
            c1 = time.process_time()
            raw = scene_to_raw(scene, str(p))
            c2 = time.process_time()
            build_scenario(raw, config, str(p), fmt="gpudrive")
            c3 = time.process_time()
            split["decode_s"] += c1 - c0
            split["extract_s"] += c2 - c1
            split["build_s"] += c3 - c2
    total = sum(split.values())
    emit("data_throughput", {"stage": "json_full", "scenes": len(paths), "passes": passes, "N": 128, "T": 91},
         "json_scenarios_per_s", statistics.median(rates), "1/s", scenarios_per_cpu_s=statistics.median(cpu_rates),
         rates=rates, cpu=core,
         ms_per_scene={k.removesuffix("_s"): 1e3 * v / len(paths) for k, v in split.items()},
         share={k.removesuffix("_s"): v / total for k, v in split.items()},
         mb_per_scene=sum(p.stat().st_size for p in paths) / len(paths) / 2 ** 20,
         peak_host_mb=peak_host_memory_mb(), env=env_meta)


def bench_cache(scenario, copies: int, batch: int, epochs: int, tmp: pathlib.Path, env_meta: dict) -> None:
    import numpy as np

    from jaxloop.data.pipeline import ScenarioDataset, write_cache

    batched = jax.tree.map(lambda a: np.broadcast_to(np.asarray(a), (copies,) + np.shape(a)), scenario)
    infos = [{"scenario_id": f"copy{i}", "format": "womd_tf_example"} for i in range(copies)]
    t0 = time.perf_counter()
    write_cache(batched, tmp / "cache", infos, shard_size=128)
    write_s = time.perf_counter() - t0
    ds = ScenarioDataset(tmp / "cache")
    per_epoch = copies // batch
    it = ds.batches(batch, seed=0, prefetch=2)
    for _ in range(per_epoch):  # warm-up epoch: loads the shards
        jax.block_until_ready(next(it)[0])
    t0 = time.perf_counter()
    n = 0
    for _ in range(per_epoch * epochs):
        jax.block_until_ready(next(it)[0])
        n += batch
    dt = time.perf_counter() - t0
    it.close()
    size_mb = sum(f.stat().st_size for f in (tmp / "cache").glob("*.npz")) / 2 ** 20
    emit("data_throughput", {"stage": "cache_to_device", "S": copies, "B": batch, "N": 128, "T": 91,
                             "shuffle": True, "prefetch": 2}, "cache_scenarios_per_s", n / dt, "1/s",
         seconds=dt, cache_mb=size_mb, mb_per_scenario=size_mb / copies, write_s=write_s,
         peak_host_mb=peak_host_memory_mb(), env=env_meta)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the small sweep (CI-sized)")
    parser.add_argument("--records", type=int, default=None)
    parser.add_argument("--copies", type=int, default=None)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--only", choices=("tfrecord", "json", "cache"), default=None, help="run one case")
    parser.add_argument("--passes", type=int, default=None, help="JSON passes over the scenes")
    args = parser.parse_args(argv)
    env_meta = environment()
    records = args.records or (20 if args.quick else 200)
    copies = args.copies or (256 if args.quick else 1024)
    run = lambda case: args.only in (None, case)
    with tempfile.TemporaryDirectory() as d:
        tmp = pathlib.Path(d)
        if run("tfrecord") or run("cache"):
            scenarios = bench_parse(records if run("tfrecord") else 1, tmp, env_meta)
        if run("json"):
            bench_json(args.passes or (3 if args.quick else 7), env_meta)
        if run("cache"):
            bench_cache(scenarios[0], copies, args.batch, 2 if args.quick else 4, tmp, env_meta)


if __name__ == "__main__":
    main()
