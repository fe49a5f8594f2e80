"""`jaxloop data generate`: procedural scenarios written as a packed cache."""

from __future__ import annotations

import time

from jaxloop.data.procedural.api import generate
from jaxloop.data.procedural.config import FAMILY_NAMES


def generate_cli(split: str = "train", num: int = 2000, seed: int = 0, out: str = "data/procedural_train",
                 workers: int = 0, shard_size: int = 256) -> int:
    """Generates procedural scenarios and writes them as a packed cache (see `jaxloop.data.pipeline`).

    Args:
      split: train | val | test | test_ood.
      num: number of scenarios.
      seed: offset into the split's seed range (scenario seeds start + seed + i).
      out: the cache directory.
      workers: processes generating in parallel (0: one per CPU).
      shard_size: scenarios per shard file.
    """
    from jaxloop.data.pipeline import write_cache
    t0 = time.perf_counter()
    import os
    scenarios, infos = generate(split, num, seed, workers=workers or os.cpu_count() or 1)
    t_gen = time.perf_counter() - t0
    write_cache(scenarios, out, infos, shard_size=shard_size)
    t_all = time.perf_counter() - t0
    counts: dict[str, int] = {}
    for info in infos:
        counts[info["family"]] = counts.get(info["family"], 0) + 1
    print(f"wrote {num} {split} scenarios to {out} in {t_all:.1f} s "
          f"(generation {t_gen:.1f} s, {num / max(t_gen, 1e-9):.0f} scenarios/s)")
    for name in FAMILY_NAMES:
        if name in counts:
            print(f"  {name:<13} {counts[name]}")
    return 0
