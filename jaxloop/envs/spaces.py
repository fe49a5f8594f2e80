"""Observation and action spaces of `jaxloop.envs` (the gymnax `Box` interface, no gymnax needed).

A `Box` has `shape`, `dtype`, `low` and `high` (arrays broadcast to `shape`), `sample(key)`
and `contains(x)`, like `gymnax.environments.spaces.Box`, so RL libraries that read
those attributes take it as is; `Box.to_gymnax()` returns gymnax's own class for code
that checks `isinstance` (it needs gymnax installed).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Box:
    """A box `low <= x <= high` of arrays `shape` (bounds may be +-inf: unbounded)."""

    low: Any
    high: Any
    shape: tuple[int, ...]
    dtype: Any = jnp.float32

    def __post_init__(self):
        shape = tuple(int(s) for s in self.shape)
        object.__setattr__(self, "shape", shape)
        low = np.broadcast_to(np.asarray(self.low, np.float32), shape)
        high = np.broadcast_to(np.asarray(self.high, np.float32), shape)
        if np.any(low > high):
            raise ValueError(f"Box: low must be <= high everywhere, got low={low}, high={high}")
        object.__setattr__(self, "low", jnp.asarray(low, self.dtype))
        object.__setattr__(self, "high", jnp.asarray(high, self.dtype))

    def sample(self, key: jax.Array) -> jax.Array:
        """A uniform sample `shape` of the box; unbounded dimensions draw a standard normal instead."""
        bounded = jnp.isfinite(self.low) & jnp.isfinite(self.high)
        low = jnp.where(bounded, self.low, 0.0)
        high = jnp.where(bounded, self.high, 1.0)
        key_uniform, key_normal = jax.random.split(key)
        uniform = jax.random.uniform(key_uniform, self.shape, jnp.float32, low, high)
        normal = jax.random.normal(key_normal, self.shape, jnp.float32)
        return jnp.where(bounded, uniform, normal).astype(self.dtype)

    def contains(self, x: jax.Array) -> jax.Array:
        """`[]` bool: `x` has this shape and lies within the bounds."""
        x = jnp.asarray(x)
        if x.shape != self.shape:
            return jnp.asarray(False)
        return jnp.all((x >= self.low) & (x <= self.high))

    def to_gymnax(self):
        """The same box as a `gymnax.environments.spaces.Box` (needs gymnax installed)."""
        try:
            from gymnax.environments import spaces
        except ImportError as e:
            raise ImportError("Box.to_gymnax needs gymnax: pip install gymnax") from e
        return spaces.Box(self.low, self.high, self.shape, self.dtype)
