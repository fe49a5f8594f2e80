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
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


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

    Integer min / max reductions fuse with the elementwise work that produces their
    operand, where XLA:CPU hands float reductions to a separate kernel that first
    writes the whole operand to memory; on `[N, N]` passes the write costs more than
    the arithmetic.
    """
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
    return jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)


def from_ordered_key(key: jax.Array) -> jax.Array:
    """Inverse of `ordered_key`: the float32 values `[...]`."""
    bits = jnp.where(key < 0, key ^ jnp.int32(0x7FFFFFFF), key)
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def fused_reduce(x: jax.Array, op, identity, leaf: int = 16) -> jax.Array:
    """`op`-reduction (`jnp.minimum` / `jnp.maximum` / ...) of `x` `[..., K]` over its last axis.

    XLA:CPU splits a long reduction into a windowed first stage that does not fuse with
    the elementwise work producing its operand, so the whole operand is written to
    memory first. Halving the axis with elementwise `op` (which fuses) down to `leaf`
    entries, then reducing those, keeps the producer in the same loop.
    """
    while x.shape[-1] > leaf:
        if x.shape[-1] % 2:
            x = jnp.concatenate([x, jnp.full(x.shape[:-1] + (1,), identity, x.dtype)], -1)
        half = x.shape[-1] // 2
        x = op(x[..., :half], x[..., half:])
    return jax.lax.reduce(x, jnp.asarray(identity, x.dtype), lambda a, b: op(a, b), (x.ndim - 1,))


@jax.custom_jvp
def fused_min(x: jax.Array) -> jax.Array:
    """`jnp.min(x, -1)` of float32 `x` `[..., K]`, as an integer-key `fused_reduce` (same values and gradients).

    The tangent is that of `jnp.min`: the mean of the tangents of the entries equal to
    the minimum (the keys themselves carry no gradient).
    """
    inf_key = ordered_key(jnp.float32(jnp.inf))
    return from_ordered_key(fused_reduce(ordered_key(x), jnp.minimum, inf_key))


@fused_min.defjvp
def _fused_min_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    y = fused_min(x)
    hit = x == y[..., None]
    count = jnp.maximum(jnp.sum(hit, -1), 1).astype(dx.dtype)
    return y, jnp.sum(jnp.where(hit, dx, jnp.zeros((), dx.dtype)), -1) / count
