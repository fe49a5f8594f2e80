"""The worker pool of `generate`: chunks generated in processes, returned through shared memory."""

from __future__ import annotations

import numpy as np

from jaxloop.data.procedural.assemble import _generate_chunk


def _worker(args):
    """Generates one chunk in a pool worker and stacks it straight into a new shared-memory block.

    Returns the block's name, the layout of the stacked leaves in it ((shape, dtype, byte
    offset) in tree order), the tree structure and the infos: only these small values are
    pickled back; the parent copies the arrays out and unlinks the block.
    """
    import jax
    from multiprocessing import shared_memory
    split, seeds, cfg = args
    scenarios, infos = _generate_chunk(split, seeds, cfg)
    per = [jax.tree.flatten(s) for s in scenarios]
    treedef = per[0][1]
    layout, size = [], 0
    for leaf in per[0][0]:
        leaf = np.asarray(leaf)
        layout.append(((len(scenarios),) + leaf.shape, leaf.dtype.str, size))
        size += -(-len(scenarios) * leaf.nbytes // 64) * 64  # 64-byte aligned
    shm = shared_memory.SharedMemory(create=True, size=max(size, 1))
    try:
        for i, (shape, dtype, offset) in enumerate(layout):
            np.stack([np.asarray(leaves[i]) for leaves, _ in per], out=np.ndarray(shape, dtype, shm.buf, offset))
    finally:
        shm.close()
    return shm.name, layout, treedef, infos


def _pool(processes: int):
    """A process pool for `_worker`.

    Forked from this process while its JAX runtime is not started (no runtime threads to
    copy, and the modules are already imported, so workers start in milliseconds);
    otherwise from a fork server that imports this module once.
    """
    import multiprocessing as mp
    try:
        from jax._src import xla_bridge
        started = xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):
        started = True
    if not started and "fork" in mp.get_all_start_methods():
        return mp.get_context("fork").Pool(processes)
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx.Pool(processes)
