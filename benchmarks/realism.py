"""Realism evaluation cost: 18 real scenes x 32 rollouts x 80 steps, every object driven by sampled IDM.

    python benchmarks/realism.py [--quick] [--agents idm] [--rollouts 32]

JSON lines: `realism_eval_s`, the median wall time of the whole evaluation (rollouts,
features, likelihoods) after compilation, and `compile_s` (the first call). `--quick`: 4
scenes x 8 rollouts.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import jax

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import emit, environment  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "gpudrive"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--agents", default="idm")
    ap.add_argument("--rollouts", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", default=str(DATA))
    args = ap.parse_args(argv)
    from jaxloop.data.sources import load_source
    from jaxloop.realism.evaluate import RealismConfig, RealismRunner
    scenarios, infos = load_source(args.data)
    rollouts = args.rollouts
    if args.quick:
        scenarios = jax.tree.map(lambda a: a[:4], scenarios)
        infos, rollouts = infos[:4], 8
    runner = RealismRunner(scenarios, infos, RealismConfig(agents=args.agents, rollouts=rollouts))
    t = time.perf_counter()
    runner.raw()
    compile_s = time.perf_counter() - t
    times = []
    for r in range(args.repeats):
        t = time.perf_counter()
        runner.raw(seed=r + 1)
        times.append(time.perf_counter() - t)
    emit("realism", {"scenes": runner.num, "rollouts": rollouts, "agents": args.agents, "horizon": runner.horizon},
         "realism_eval_s", statistics.median(times), "s", compile_s=compile_s, repeats=len(times),
         times_s=times, env=environment())
    return 0


if __name__ == "__main__":
    sys.exit(main())
