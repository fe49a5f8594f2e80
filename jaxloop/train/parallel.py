"""Data parallelism over one `jax.sharding.Mesh` with a single `data` axis (no pmap).

The batch of scenarios is sharded over its leading axis (`NamedSharding(mesh, P("data"))`);
parameters, optimiser state and metrics are replicated (`P()`). The train step is one
`jax.jit` with those shardings; XLA inserts the gradient all-reduce. The same code runs
on 1 device, n local devices, or many hosts.

Multi-host start-up: every process runs the same program and, before touching any
array, calls

    jax.distributed.initialize()          # coordinator from the cluster env (or pass
                                          # coordinator_address, num_processes, process_id)
    mesh = make_mesh()                    # all devices of all processes

Each process then reads only its own shard of the data: `process_slice(num_items)` is
the slice of scenario indices for `jax.process_index()` out of `jax.process_count()`,
and `shard_batch` assembles the global batch from each process's local rows with
`jax.make_array_from_process_local_data`. The local batch is `batch_size //
process_count` rows; `batch_size` must divide by the number of devices. Checkpoints are
written by the checkpoint manager from every process (orbax coordinates the writes).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxloop.sim.compute import compiler_options

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None, devices: list | None = None) -> Mesh:
    """A 1-D mesh named `data` over the first `num_devices` devices (default: all)."""
    devs = list(jax.devices() if devices is None else devices)
    if num_devices is not None:
        if not 1 <= num_devices <= len(devs):
            raise ValueError(f"make_mesh: asked for {num_devices} devices, {len(devs)} available")
        devs = devs[:num_devices]
    return Mesh(np.asarray(devs), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(f"batch size {batch_size} must divide by the {n} devices of the data axis")


def process_slice(num_items: int) -> slice:
    """This process's contiguous share of `num_items` (all of them on a single host)."""
    count, index = jax.process_count(), jax.process_index()
    per = num_items // count
    return slice(index * per, (index + 1) * per)


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Places a host batch (leading axis B) sharded over the data axis.

    Single process: `batch` is the global batch. Multi-process: `batch` is this
    process's local rows and the global array is assembled across processes.
    """
    sharding = batch_sharding(mesh)
    leading = {np.shape(x)[0] for x in jax.tree.leaves(batch)}
    if len(leading) != 1:
        raise ValueError(f"shard_batch: leaves disagree on the leading (batch) axis: {sorted(leading)}")
    if jax.process_count() == 1:
        check_batch_size(leading.pop(), mesh)
        return jax.device_put(batch, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, replicated(mesh))


def jit_train_step(step_fn: Callable, mesh: Mesh) -> Callable:
    """`jax.jit` of `step_fn(state, batch, key, params) -> (state, metrics)`: batch sharded, the rest
    (state, key, traced `Params`) replicated (with jaxloop's `compiler_options`)."""
    rep, data = replicated(mesh), batch_sharding(mesh)
    return jax.jit(step_fn, in_shardings=(rep, data, rep, rep), out_shardings=(rep, rep),
                   compiler_options=compiler_options())
