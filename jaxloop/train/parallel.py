"""Data parallelism over one `jax.sharding.Mesh` with a single `data` axis (no pmap).

The batch of scenarios is sharded over its leading axis (`NamedSharding(mesh, P("data"))`);
parameters, optimiser state and metrics are replicated (`P()`). The train step is one
`jax.jit` with those shardings; XLA inserts the gradient all-reduce. The same code runs
on 1 device, n local devices, or many hosts.

Multi-host start-up: every process runs the same program and, before touching any
array, calls

    initialize_distributed()              # jax.distributed.initialize from flags or the
                                          # cluster env (Slurm, Open MPI, ...); nothing
                                          # on a single plain process
    mesh = make_mesh()                    # all devices of all processes

Each process then loads only its own rows of every batch (its blocks of the data,
`jaxloop.data.dataset.BatchPlan.process_indices`), and `shard_batch` assembles the
global batch from each process's local rows with `jax.make_array_from_process_local_data`.
The local batch is `batch_size // process_count` rows; `batch_size` must divide by the
number of devices. Checkpoints are written by the checkpoint manager from every process
(orbax coordinates the writes).
"""

from __future__ import annotations

import os
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


def cluster_process_count() -> int:
    """The number of processes a cluster environment JAX knows (Slurm, Open MPI, Kubernetes, TPU pods)
    announces, or 1 when there is none (a plain process). `JAX_COORDINATOR_ADDRESS` counts as a cluster."""
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return int(os.environ.get("JAX_NUM_PROCESSES", 2))
    try:
        from jax._src.clusters import ClusterEnv
        envs = [env for env in ClusterEnv._cluster_types if not env.opt_in_only_method]
    except (ImportError, AttributeError):  # another JAX layout: Slurm only
        return int(os.environ.get("SLURM_NTASKS", 1)) if "SLURM_STEP_NODELIST" in os.environ else 1
    for env in envs:
        try:
            if env.is_env_present():
                return int(env.get_process_count())
        except Exception:  # noqa: BLE001 - a half-present environment is no cluster
            continue
    return 1


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
    """`jax.distributed.initialize` for a multi-process run; returns whether it was called.

    With `coordinator_address` (HOST:PORT of process 0), `num_processes` and `process_id` it
    uses them; with none of them, it starts only when a cluster environment announces more
    than one process (`cluster_process_count`) and lets JAX read that environment; a single
    plain process starts nothing. Must run before anything touches a device. On CPU the
    collectives are gloo's (`jax_cpu_collectives_implementation`).
    """
    given = [v is not None for v in (coordinator_address, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError("multi-host: give all of --coordinator-address, --num-processes and --process-id, or none "
                         "(then a Slurm / cluster environment is detected)")
    if all(given):
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError(f"multi-host: --process-id {process_id} must be in [0, --num-processes "
                             f"{num_processes})")
        if num_processes == 1:
            return False
    elif cluster_process_count() <= 1:
        return False
    if jax.config.jax_cpu_collectives_implementation in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
    return True


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
    """`tree` replicated on every device of `mesh`; with several processes each passes the same (host) value."""
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def one(x):
        if jax.dtypes.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key):
            return jax.random.wrap_key_data(one(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        return jax.make_array_from_process_local_data(sharding, np.asarray(x))

    return jax.tree.map(one, tree)


def jit_train_step(step_fn: Callable, mesh: Mesh) -> Callable:
    """`jax.jit` of `step_fn(state, batch, key, params) -> (state, metrics)`: batch sharded, the rest
    (state, key, traced `Params`) replicated (with jaxloop's `compiler_options`)."""
    rep, data = replicated(mesh), batch_sharding(mesh)
    return jax.jit(step_fn, in_shardings=(rep, data, rep, rep), out_shardings=(rep, rep),
                   compiler_options=compiler_options())
