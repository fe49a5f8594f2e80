"""Procedural scenario generation throughput (the built-in dataset).

    python benchmarks/generate.py --quick

JSON lines: `scenarios_per_s` (wall clock, the median of `--repeats` runs, with the
spread in `runs`) of `jaxloop.data.procedural.generate` for one process and for a pool
of `--workers` processes (default: every CPU), with the peak resident memory of the
calling process (a worker peaks about the same), and `scenarios_per_cpu_s` of the
single process (its CPU time: less sensitive to other load on the machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Sequence

from benchmarks.common import emit, environment, peak_host_memory_mb
from jaxloop.data import procedural


def bench(split: str, num: int, workers: int, repeats: int, env_meta: dict) -> None:
    procedural.generate(split, 8, seed=10_000_000, config=procedural.GeneratorConfig(chunk_size=8))  # warm-up
    rates, cpu_rates = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        _, infos = procedural.generate(split, num, seed=0, workers=workers)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        rates.append(num / elapsed)
        cpu_rates.append(num / cpu)
    removed = sum(i["num_removed"] for i in infos)
    retries = sum(i["attempt"] for i in infos)
    dropped = sum(i["map_dropped"] for i in infos) / num
    emit("generate", {"split": split, "num": num, "workers": workers}, "scenarios_per_s", statistics.median(rates),
         "1/s", runs=[round(r, 1) for r in rates], agents_removed=removed, scenario_retries=retries,
         map_dropped_fraction=dropped, peak_host_mb=peak_host_memory_mb(), env=env_meta)
    if workers == 1:  # robust to other load on the machine: scenarios per second of this process's CPU time
        emit("generate", {"split": split, "num": num, "workers": 1}, "scenarios_per_cpu_s",
             statistics.median(cpu_rates), "1/s", runs=[round(r, 1) for r in cpu_rates], env=env_meta)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the small sweep (CI-sized)")
    parser.add_argument("--num", type=int, default=None)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3, help="runs per case; the median is reported")
    args = parser.parse_args(argv)
    env_meta = environment()
    num = args.num or (256 if args.quick else 2048)
    bench("train", num, 1, args.repeats, env_meta)
    if args.workers > 1:
        bench("train", num, args.workers, args.repeats, env_meta)
    bench("test_ood", num // 4, 1, args.repeats, env_meta)


if __name__ == "__main__":
    main()
