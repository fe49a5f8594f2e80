"""Small helpers that steer how XLA compiles the simulator's hot loops.

XLA fuses an elementwise producer into every consumer, and a consumer that
broadcasts a per-object value over a pair axis (`[N] -> [N, N]`, `[N] -> [N, L]`,
a scalar over `[P, Q]`) then recomputes that value once per pair. For a cheap
producer that is fine; for `cos` / `sin` / `atan2` it multiplies the cost of an
all-pairs pass several times over (measured on CPU: the all-pairs box test ran 4-5x
slower with the trigonometry of both boxes recomputed per pair).
`jax.lax.optimization_barrier` does not stop this on CPU (it is expanded before
fusion), so `materialize` routes the values through an identity contraction, an op
XLA never fuses into a broadcasting consumer, which costs one tiny matmul.

`compiler_options` is what jaxloop's own `jax.jit` sites compile with (see there).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# XLA:CPU hands matmuls, reductions and elementwise work to YNNPACK fusions by default.
# On the simulator's shapes (short reductions over objects, corners and lane points
# next to all-pairs passes, and `materialize`'s tiny matmuls) XLA's own loops are
# faster: the IDM + every-metric step ran 1.08-1.10x faster at B=64 and B=1024 with
# none of them (results equal to float rounding), and the training steps of
# `benchmarks/train_throughput.py` at B=64 took the same time either way.
# XLA:CPU also splits every reduction longer than 32 into a windowed first stage
# (`tree_reduction_rewriter`, for the rounding of long float sums), which cannot fuse
# with the elementwise work producing its operand: each of the step's reductions over
# objects, lane points and road edges first wrote its whole operand to memory. Without
# the split the same step ran 1.06x faster at B=1024 (identical results), and the APG
# and PPO training steps at B=64 changed by at most 4e-6 relatively (float rounding).
# XLA:CPU's concurrency-optimized scheduler orders the program so that independent
# ops can run side by side on the worker threads: 1.04-1.06x on the same step and
# 1.02-1.03x on the APG, PPO and GRPO training steps (identical results).
# XLA:CPU vectorizes for 256-bit registers unless told otherwise; with 512 (used where the CPU
# has AVX-512, a hint elsewhere) the all-object overlap + offroad + log divergence step took
# 1.45x less CPU time at B=64 and 1.35x less at B=1, and the IDM + every-metric step 1.25x
# less at B=64 (identical outputs; paired in one process on a 2-core AVX-512 EPYC).
_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "", "xla_disable_hlo_passes": "tree_reduction_rewriter",
                "xla_cpu_enable_concurrency_optimized_scheduler": True, "xla_cpu_prefer_vector_width": 512}


@functools.cache
def compiler_options() -> dict[str, str | bool]:
    """XLA options for `jax.jit(..., compiler_options=compiler_options())` of simulator programs.

    On CPU: no YNNPACK fusions, no split reductions, the concurrency-optimized
    scheduler and 512-bit vectors (`_CPU_OPTIONS`), if this jaxlib knows the options
    (checked once by compiling a scalar function); elsewhere, or if it does not, `{}`
    (XLA's defaults).
    """
    if jax.default_backend() != "cpu":
        return {}
    try:
        jax.jit(lambda x: x + 1, compiler_options=_CPU_OPTIONS).lower(jnp.float32(0)).compile()
    except Exception:  # an XLA without the option: keep its defaults  # noqa: BLE001
        return {}
    return dict(_CPU_OPTIONS)


def materialize(*arrays: jax.Array) -> tuple[jax.Array, ...]:
    """The same finite arrays (equal shape `[...]`), computed once before their consumers.

    Exact for finite inputs (`x * 1 + y * 0`); a non-finite entry would spread NaN to
    the others at the same index, so only pass finite values (trigonometry, unit vectors,
    sizes). Differentiable and vmappable (a `dot_general`).
    """
    if not arrays:
        return ()
    stacked = jnp.stack(jnp.broadcast_arrays(*arrays), -1)  # [..., k]
    eye = jnp.eye(len(arrays), dtype=stacked.dtype)
    out = jnp.matmul(stacked, eye, precision=jax.lax.Precision.HIGHEST)
    return tuple(out[..., i] for i in range(len(arrays)))


def cos_sin(angle: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`(cos(angle), sin(angle))` `[...]`, materialized (see the module docstring)."""
    return materialize(jnp.cos(angle), jnp.sin(angle))


def ordered_key(x: jax.Array) -> jax.Array:
    """int32 keys `[...]` that order like the float32 values `x` (exact; -0.0 before +0.0).

    An integer key can carry more than the value in its low bits (`fused_argmin` puts
    the index there), so one min-reduction answers "which" as well as "how far".
    """
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
    return jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)


def fused_reduce(x: jax.Array, op, identity, leaf: int = 16) -> jax.Array:
    """`op`-reduction (`jnp.minimum` / `jnp.maximum` / ...) of `x` `[..., K]` over its last axis.

    With XLA's default options, XLA:CPU splits a long reduction into a windowed first
    stage that does not fuse with the elementwise work producing its operand, so the
    whole operand is written to memory first (`compiler_options` turns the split off).
    Halving the axis with elementwise `op` (which fuses) down to `leaf` entries, then
    reducing those, keeps the producer in the same loop under either.
    """
    while x.shape[-1] > leaf:
        if x.shape[-1] % 2:
            x = jnp.concatenate([x, jnp.full(x.shape[:-1] + (1,), identity, x.dtype)], -1)
        half = x.shape[-1] // 2
        x = op(x[..., :half], x[..., half:])
    return jax.lax.reduce(x, jnp.asarray(identity, x.dtype), lambda a, b: op(a, b), (x.ndim - 1,))


def fused_argmin(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Index `[...]` of the minimum of float32 `x` `[..., K]` over its last axis, and whether it is finite.

    One integer `fused_reduce`: every entry's `ordered_key` has its low ceil(log2 K)
    bits replaced by its index, so the minimum key names its entry. Values within
    2^(ceil(log2 K) - 23) of each other, relatively (K = 128: 1.5e-5), tie and the
    lowest index wins; read exact values at the index. No gradient (an index).
    """
    k = x.shape[-1]
    bits = max(1, (k - 1).bit_length())
    low = jnp.int32((1 << bits) - 1)
    key = (ordered_key(x) & ~low) | jnp.arange(k, dtype=jnp.int32)
    best = fused_reduce(key, jnp.minimum, jnp.iinfo(jnp.int32).max)
    return best & low, (best & ~low) < (ordered_key(jnp.float32(jnp.inf)) & ~low)
