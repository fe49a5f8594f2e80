"""APG train-step memory and time with and without per-step rematerialisation.

    python benchmarks/apg_remat.py --quick

JSON lines: the compiled APG step's temporary memory (XLA memory analysis) and median
step time at B=64, N=32 (procedural scenarios), for H in the sweep, remat off / on, and
the ratios remat/no-remat of memory and time.
"""

from __future__ import annotations

import argparse

import jax

from benchmarks.common import emit, environment, time_fn
from jaxloop.data import procedural
from jaxloop.config import APG, EnvSettings, Experiment
from jaxloop.train.loop import host_batch
from jaxloop.train.trainer import make_trainer


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args(argv)
    env_meta = environment()
    scenarios, _ = procedural.generate("train", args.batch, 0)
    for horizon in ([80] if args.quick else [20, 40, 80]):
        figures = {}
        for remat in (False, True):
            config = Experiment(algo=APG(remat=remat), batch_size=args.batch, env=EnvSettings(horizon=horizon))
            trainer = make_trainer(config)
            state = trainer.init(jax.random.PRNGKey(0))
            batch = trainer.shard(host_batch(scenarios, 0, 0, args.batch))
            key = jax.random.PRNGKey(1)
            compiled = trainer.train_step.lower(state, batch, key, trainer.params).compile()
            memory = compiled.memory_analysis().temp_size_in_bytes / 2 ** 20
            step_s = time_fn(compiled, state, batch, key, trainer.params, repeats=3)["median_s"]
            figures[remat] = (memory, step_s)
            case = {"algo": "apg", "B": args.batch, "N": 32, "H": horizon, "remat": remat}
            emit("apg_remat", case, "temp_memory_mb", memory, "MiB", env=env_meta)
            emit("apg_remat", case, "step_s", step_s, "s", env=env_meta)
        case = {"algo": "apg", "B": args.batch, "N": 32, "H": horizon}
        emit("apg_remat", case, "remat_memory_ratio", figures[True][0] / figures[False][0], "ratio", env=env_meta)
        emit("apg_remat", case, "remat_time_ratio", figures[True][1] / figures[False][1], "ratio", env=env_meta)


if __name__ == "__main__":
    main()
