"""The generator's entry points: scenario seeds of a split and `generate`."""

from __future__ import annotations

import numpy as np

from jaxloop.data.procedural.assemble import _generate_chunk
from jaxloop.data.procedural.config import SPLITS, SPLIT_SEEDS, GeneratorConfig
from jaxloop.data.procedural.pool import _pool, _worker
from jaxloop.sim.datatypes import Scenario, stack_scenarios


def scenario_seeds(split: str, num: int, seed: int = 0) -> np.ndarray:
    """The scenario seeds `[num]` of `generate(split, num, seed)`: `start + seed + i` in the split's range."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if num < 0 or seed < 0:
        raise ValueError(f"num and seed must be >= 0, got num={num}, seed={seed}")
    start, stop = SPLIT_SEEDS[split]
    if start + seed + num > stop:
        raise ValueError(f"split {split!r} has scenario seeds [{start}, {stop}): seed {seed} + num {num} "
                         f"runs past its end")
    return start + seed + np.arange(num, dtype=np.int64)


def generate(split: str = "train", num: int = 32, seed: int = 0, config: GeneratorConfig = GeneratorConfig(),
             workers: int = 1) -> tuple[Scenario, list[dict]]:
    """Generates `num` scenarios of `split` from scenario seeds `scenario_seeds(split, num, seed)`.

    Deterministic: the same (split, num, seed, config) gives byte-identical scenarios, for
    any `workers` (a process pool over chunks of `config.chunk_size` seeds).

    Returns a batched `Scenario` (numpy leaves, leading axis `num`) and one info dict per
    scenario: scenario_id, format="procedural", family, split, seed, and generation stats.
    """
    seeds = scenario_seeds(split, num, seed)
    if num == 0:
        raise ValueError("generate: num must be >= 1")
    chunks = [seeds[i:i + config.chunk_size] for i in range(0, num, config.chunk_size)]
    jobs = [(split, [int(x) for x in c], config) for c in chunks]
    if workers > 1 and len(jobs) > 1:
        import jax
        from multiprocessing import resource_tracker, shared_memory
        resource_tracker.ensure_running()  # shared with the workers, so blocks they create and we unlink stay tracked
        out: list[np.ndarray] = []
        infos, pos = [], 0
        with _pool(min(workers, len(jobs))) as pool:
            for name, layout, treedef, chunk_infos in pool.imap(_worker, jobs, chunksize=1):
                shm = shared_memory.SharedMemory(name=name)
                try:
                    if not out:
                        out = [np.empty((num,) + shape[1:], dtype) for shape, dtype, _ in layout]
                    for dst, (shape, dtype, offset) in zip(out, layout):
                        dst[pos:pos + shape[0]] = np.ndarray(shape, dtype, shm.buf, offset)
                finally:
                    shm.close()
                    shm.unlink()
                pos += len(chunk_infos)
                infos += chunk_infos
        batched = jax.tree.unflatten(treedef, out)
    else:  # one copy: stack every scenario once
        results = [_generate_chunk(*j) for j in jobs]
        batched = stack_scenarios([s for r in results for s in r[0]])
        infos = [i for r in results for i in r[1]]
    return batched, infos
