"""The XLA-steering helpers of `jaxloop.sim.compute` are exact rewrites of plain reductions."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxloop.sim import compute


def test_ordered_key_orders_like_the_floats_and_round_trips():
    x = np.array([-np.inf, -3e38, -2.5, -1e-40, -0.0, 0.0, 1e-40, 1e-7, 2.5, 3e38, np.inf], np.float32)
    key = np.asarray(compute.ordered_key(jnp.asarray(x)))
    assert key.dtype == np.int32
    assert np.all(np.diff(key) > 0)  # strictly increasing, -0.0 before +0.0
    back = np.asarray(compute.from_ordered_key(jnp.asarray(key)))
    np.testing.assert_array_equal(back.view(np.int32), x.view(np.int32))  # bit-exact, signs of zero included
    rng = np.random.default_rng(0)
    y = rng.normal(size=(50, 37)).astype(np.float32) * 100
    np.testing.assert_array_equal(np.asarray(compute.from_ordered_key(jnp.min(compute.ordered_key(y), -1))),
                                  y.min(-1))


def test_fused_reduce_equals_the_plain_reduction_for_odd_and_even_widths():
    rng = np.random.default_rng(1)
    for width in (1, 5, 16, 17, 37, 128, 131):
        x = rng.integers(-1000, 1000, size=(3, 4, width)).astype(np.int32)
        got_min = jax.jit(lambda a: compute.fused_reduce(a, jnp.minimum, jnp.iinfo(jnp.int32).max))(x)
        got_max = jax.jit(lambda a: compute.fused_reduce(a, jnp.maximum, jnp.iinfo(jnp.int32).min))(x)
        np.testing.assert_array_equal(got_min, x.min(-1))
        np.testing.assert_array_equal(got_max, x.max(-1))
    f = rng.normal(size=(6, 45)).astype(np.float32)
    np.testing.assert_array_equal(compute.fused_reduce(jnp.asarray(f), jnp.minimum, jnp.inf), f.min(-1))


def test_fused_min_has_the_values_and_gradients_of_jnp_min():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 40)).astype(np.float32)
    x[1, 7] = x[1, 30] = x[1].min() - 1.0  # a tie: the gradient is shared
    x[2] = np.inf  # no finite entry
    w = jnp.asarray(rng.normal(size=(4,)), jnp.float32)
    loss = lambda f: (lambda a: jnp.sum(jnp.where(jnp.isfinite(f(a)), f(a), 0.0) * w))
    np.testing.assert_array_equal(compute.fused_min(jnp.asarray(x)), x.min(-1))
    g_fused = jax.grad(loss(compute.fused_min))(jnp.asarray(x))
    g_plain = jax.grad(loss(lambda a: jnp.min(a, -1)))(jnp.asarray(x))
    np.testing.assert_allclose(g_fused, g_plain, atol=1e-7)
    assert float(g_fused[1, 7]) == float(g_fused[1, 30]) == float(w[1]) / 2
