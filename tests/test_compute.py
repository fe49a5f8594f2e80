"""The XLA-steering helpers of `jaxloop.sim.compute` are exact rewrites of plain reductions."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxloop.sim import compute


def test_ordered_key_orders_like_the_floats():
    x = np.array([-np.inf, -3e38, -2.5, -1e-40, -0.0, 0.0, 1e-40, 1e-7, 2.5, 3e38, np.inf], np.float32)
    key = np.asarray(compute.ordered_key(jnp.asarray(x)))
    assert key.dtype == np.int32
    assert np.all(np.diff(key) > 0)  # strictly increasing, -0.0 before +0.0
    rng = np.random.default_rng(0)
    y = rng.normal(size=(50, 37)).astype(np.float32) * 100
    np.testing.assert_array_equal(np.asarray(jnp.argmin(compute.ordered_key(y), -1)), y.argmin(-1))


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


def test_fused_argmin_names_the_minimum_and_breaks_near_ties_by_index():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 128)).astype(np.float32) * 50
    x[1, 90] = x[1, 20] = x[1].min() - 1.0  # an exact tie: the lower index
    x[2, 64] = x[2].min() - 1.0
    x[2, 3] = x[2, 64] * (1 + 1e-6)  # within 2^-16 relatively (K = 128): a near tie, the lower index
    x[3] = np.inf  # no finite entry
    x[4, 7] = -np.inf
    index, found = jax.jit(compute.fused_argmin)(jnp.asarray(x))
    index, found = np.asarray(index), np.asarray(found)
    assert index.dtype == np.int32
    assert index[0] == x[0].argmin() and index[1] == 20 and index[2] == 3 and index[4] == 7
    np.testing.assert_array_equal(found, [True, True, True, False, True])
    # Entries farther apart than the tie tolerance keep their order.
    y = np.array([[1.0, 0.9999, 1.0001]], np.float32)
    assert int(compute.fused_argmin(jnp.asarray(y))[0][0]) == 1


def test_compiler_options_turn_off_ynn_fusions_and_split_reductions_on_cpu_and_keep_results():
    opts = compute.compiler_options()
    if jax.default_backend() != "cpu":
        assert opts == {}
        return
    assert opts == {"xla_cpu_experimental_ynn_fusion_type": "", "xla_disable_hlo_passes": "tree_reduction_rewriter",
                    "xla_cpu_enable_concurrency_optimized_scheduler": True, "xla_cpu_prefer_vector_width": 512}
    # A batch of short and long float reductions and a matmul, as in the metrics.
    fn = lambda x, w: (jnp.min(x, -1), jnp.sum(x * x, -1), x @ w, jnp.max(jnp.abs(x) * 2.0, 0))
    x = jnp.asarray(np.random.default_rng(2).normal(size=(64, 31)), jnp.float32)
    w = jnp.asarray(np.random.default_rng(3).normal(size=(31, 5)), jnp.float32)
    tuned = jax.jit(fn, compiler_options=opts)
    hlo = tuned.lower(x, w).compile().as_text()
    default_hlo = jax.jit(fn).lower(x, w).compile().as_text()
    assert "__ynn_fusion" not in hlo
    # The 64-long reduction over the first axis is split by default and is one fused reduction here.
    assert "reduce-window" in default_hlo and "reduce-window" not in hlo
    for got, want in zip(tuned(x, w), jax.jit(fn)(x, w)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
