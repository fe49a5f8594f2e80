"""I/O costs: checkpoint save / restore, policy inference through the exported artefact, rendering.

    python benchmarks/io_render.py --quick

JSON lines: `checkpoint_save_s` / `checkpoint_restore_s` for a parameter pytree of
`--param-mb` MB (save waits until the write is on disk), `exported_call_s` vs
`jit_call_s` for a small MLP policy at batch 64, and `render_frame_s` (one reused
Renderer, 640x640, toy scenario with N=128 objects).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.common import emit, environment, time_fn
from jaxloop.data.toy import make_toy_scenario
from jaxloop.io.checkpoint import CheckpointManager
from jaxloop.io.export import export_policy, load_policy
from jaxloop.sim.datatypes import trajectory_at
from jaxloop.viz.render import Renderer


def _median_wall(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_checkpoint(param_mb: float, repeats: int, meta: dict) -> None:
    n = int(param_mb * 2 ** 20 / 4)
    state = {"params": {f"w{i}": jnp.ones((n // 8,), jnp.float32) for i in range(8)}, "key": jax.random.key(0)}
    abstract = jax.eval_shape(lambda: state)
    with tempfile.TemporaryDirectory() as d:
        mgr = CheckpointManager(d, max_to_keep=2)
        step = iter(range(10 ** 6))

        def save():
            mgr.save(next(step), state)
            mgr.wait()

        case = {"param_mb": param_mb}
        emit("io", case, "checkpoint_save_s", _median_wall(save, repeats), "s", env=meta)
        emit("io", case, "checkpoint_restore_s",
             _median_wall(lambda: jax.block_until_ready(mgr.restore(target=abstract)), repeats), "s", env=meta)
        mgr.close()


class _MLP(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(256, 256, rngs=rngs)
        self.l2 = nnx.Linear(256, 2, rngs=rngs)

    def __call__(self, x):
        return self.l2(jax.nn.relu(self.l1(x)))


def bench_export(meta: dict) -> None:
    graphdef, params = nnx.split(_MLP(nnx.Rngs(0)))
    apply = lambda p, x: nnx.merge(graphdef, p)(x)
    x = jnp.ones((64, 256))
    with tempfile.TemporaryDirectory() as d:
        export_policy(apply, params, (x,), d)
        policy = load_policy(d)
        case = {"batch": 64, "hidden": 256}
        emit("io", case, "exported_call_s", time_fn(policy, x)["median_s"], "s", env=meta)
        emit("io", case, "jit_call_s", time_fn(jax.jit(apply), params, x)["median_s"], "s", env=meta)


def bench_render(repeats: int, meta: dict) -> None:
    scenario = jax.tree.map(np.asarray, make_toy_scenario(num_objects=128, num_cars=32))
    renderer = Renderer(scenario, 640, 640, 80.0)
    steps = iter(range(10 ** 6))

    def frame():
        t = 11 + next(steps) % 80
        return renderer.frame(jax.tree.map(np.asarray, trajectory_at(scenario.log_trajectory, t)), t)

    emit("io", {"width_px": 640, "height_px": 640, "num_objects": 128}, "render_frame_s",
         _median_wall(frame, repeats), "s", env=meta)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the small sizes (CI-sized)")
    parser.add_argument("--param-mb", type=float, default=None)
    args = parser.parse_args(argv)
    meta = environment()
    param_mb = args.param_mb if args.param_mb is not None else (4.0 if args.quick else 64.0)
    repeats = 3 if args.quick else 10
    bench_checkpoint(param_mb, repeats, meta)
    bench_export(meta)
    bench_render(repeats * 3, meta)


if __name__ == "__main__":
    main()
