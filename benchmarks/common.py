"""Shared pieces of the benchmark scripts: timing, memory, environment metadata, JSON lines.

Every figure is the median of repeated timed calls after a warm-up call (which is
also the compile, timed separately), each call ended with `block_until_ready`.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from typing import Any, Callable

import jax


def environment() -> dict[str, Any]:
    dev = jax.devices()[0]
    return {
        "jax": jax.__version__, "backend": jax.default_backend(), "device_kind": dev.device_kind,
        "num_devices": jax.device_count(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "machine": platform.machine(),
    }


def peak_host_memory_mb() -> float:
    """Peak resident memory of this process so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_device_memory_mb() -> float | None:
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2 ** 20


def use_cpu_devices(count: int) -> None:
    """Splits the host CPU into `count` XLA devices (`jax_num_cpu_devices`); call before JAX's first
    computation. Other backends are unaffected (their devices stay the default ones)."""
    if count < 1:
        raise ValueError(f"use_cpu_devices: count must be >= 1, got {count}")
    jax.config.update("jax_num_cpu_devices", count)


def batch_placement(batch: int) -> jax.sharding.Sharding:
    """Where a benchmark batch of `batch` episodes lives: split along its leading axis over every
    device when `batch` divides by their number (data parallelism, as `jaxloop.train.parallel` runs
    training), else on the first device."""
    from jaxloop.train.parallel import batch_sharding, make_mesh
    if jax.device_count() > 1 and batch % jax.device_count() == 0:
        return batch_sharding(make_mesh())
    return jax.sharding.SingleDeviceSharding(jax.devices()[0])


def device_batch(base: list, batch: int, placement: jax.sharding.Sharding | None = None):
    """`batch` scenarios cycling through `base`, stacked and on the device(s) before timing (as a
    training step receives them from `jaxloop.data.pipeline`, whose host-to-device copy overlaps
    the previous step), so timed calls measure the step, not the copy. `placement`: a
    `batch_placement` (default: the default device)."""
    from jaxloop.sim.datatypes import stack_scenarios
    return jax.device_put(stack_scenarios([base[i % len(base)] for i in range(batch)]), placement)


def time_fn(fn: Callable, *args, repeats: int = 5, min_time: float = 0.2) -> dict[str, float]:
    """Compile + warm-up once, then the median wall time of `repeats` calls (at least `min_time` s in all)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - t0
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start < min_time and len(times) < 100):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return {"median_s": statistics.median(times), "compile_s": compile_s, "repeats": len(times)}


def emit(bench: str, case: dict, metric: str, value: float, unit: str, out=None, **extra: Any) -> dict:
    """Prints one JSON line (the form every jaxloop benchmark uses) and returns it."""
    record = {"bench": bench, "case": case, "metric": metric, "value": value, "unit": unit, **extra}
    line = json.dumps(record)
    print(line, file=out or sys.stdout, flush=True)
    return record
