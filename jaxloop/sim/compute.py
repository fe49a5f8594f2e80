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
