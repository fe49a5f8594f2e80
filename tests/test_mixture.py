"""Mixed-source training sets: exact padding to common slot sizes, batches in the configured proportion."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from _train_utils import scenarios
from jaxloop.data.dataset import InMemoryDataset, as_dataset
from jaxloop.data.mixture import mix, pad_to, parse_weight, proportional_counts, slot_dims
from jaxloop.eval.evaluate import EvalConfig, evaluate


def test_padding_is_exact_for_the_closed_loop():
    small = jax.tree.map(np.asarray, scenarios(count=3, num_objects=6))
    dims = slot_dims(small)
    target = dict(dims, N=dims["N"] + 5, P=dims["P"] + 3, E=dims["E"] + 7, L=dims["L"] + 2)
    padded = pad_to(small, target)
    assert slot_dims(padded) == target
    assert not padded.log_trajectory.valid[:, dims["N"]:].any()
    assert (padded.object_metadata.ids[:, dims["N"]:] == -1).all() and (padded.roadmap.lane_ids[:, dims["P"]:] == -1).all()
    config = EvalConfig(batch_size=3, horizon=20)
    a, b = (evaluate("idm", s, None, config, 0).per_scenario for s in (small, padded))
    for ra, rb in zip(a, b):
        for k in ("collision", "offroad", "progress", "ade", "ttc_min"):
            np.testing.assert_allclose(ra[k], rb[k], rtol=1e-5, atol=1e-5, err_msg=k)


def test_padding_refuses_what_it_cannot_pad():
    s = jax.tree.map(np.asarray, scenarios(count=2, num_objects=6))
    dims = slot_dims(s)
    with pytest.raises(ValueError, match="dimension T"):
        pad_to(s, dict(dims, T=dims["T"] + 1))
    with pytest.raises(ValueError, match="dimension N is 6, larger than the target 4"):
        pad_to(s, dict(dims, N=4))


def test_proportional_counts():
    # 10 * (0.5, 0.3, 0.2) = (5, 3, 2) exactly; 7 * (0.5, 0.3, 0.2) = (3.5, 2.1, 1.4): floors (3, 2, 1) sum to 6,
    # the one left goes to the largest remainder (0.5 -> the first source)
    assert proportional_counts([0.5, 0.3, 0.2], 10).tolist() == [5, 3, 2]
    assert proportional_counts([0.5, 0.3, 0.2], 7).tolist() == [4, 2, 1]
    assert proportional_counts([1, 1], 1).sum() == 1


def test_batches_mix_sources_in_the_configured_proportion():
    a = jax.tree.map(np.asarray, scenarios(count=5, num_objects=6))
    b = jax.tree.map(np.asarray, scenarios(count=3, num_objects=9))
    info = lambda n, name: [{"scenario_id": f"{name}-{i}"} for i in range(n)]
    m = mix([("a", a, info(5, "a"), 3.0), ("b", b, info(3, "b"), 1.0)])
    assert len(m) == 8 and slot_dims(m.scenarios)["N"] == 9
    ds = as_dataset(m)
    plan = ds.plan(64, seed=0)
    for step in range(5):
        idx = plan.indices(step)
        src = ds.source_of(idx)
        assert (src == 0).sum() == 48 and (src == 1).sum() == 16  # 64 * 3/4 and 64 * 1/4
        assert src[:32].min() == 0 and src[:32].max() == 1  # rows are shuffled: a half-batch mixes too
        batch, infos = ds.load(idx[:8])  # padded to the common slots, the infos beside their rows
        assert slot_dims(batch)["N"] == 9 and [i["scenario_id"][0] for i in infos] == ["ab"[k] for k in src[:8]]
    np.testing.assert_array_equal(ds.plan(16, seed=1).indices(2), ds.plan(16, seed=1).indices(2))
    assert [d["num_scenarios"] for d in m.describe()] == [5, 3]
    # no weights: the draw of one source over all scenarios
    u = as_dataset(mix([("a", a, info(5, "a"), None), ("b", b, info(3, "b"), None)]))
    whole = InMemoryDataset(jax.tree.map(lambda *x: np.concatenate(x), pad_to(a, slot_dims(b)), b))
    np.testing.assert_array_equal(u.plan(16, seed=0).indices(7), whole.plan(16, seed=0).indices(7))


def test_mix_errors():
    a = jax.tree.map(np.asarray, scenarios(count=2))
    with pytest.raises(ValueError, match="every source or to none"):
        mix([("a", a, [{}, {}], 1.0), ("b", a, [{}, {}], None)])
    with pytest.raises(ValueError, match="one info per scenario"):
        mix([("a", a, [{}], None)])
    assert parse_weight("procedural:train:64@0.25") == ("procedural:train:64", 0.25)
    assert parse_weight("data/run@home") == ("data/run@home", None)
    with pytest.raises(ValueError, match="finite number > 0"):
        parse_weight("toy@-1")


def test_weighted_data_spec_trains_on_a_mixture():
    from jaxloop.train import loop
    mixture, infos = loop.load_data("toy:4@3,toy:2@1", with_infos=True)
    assert len(mixture) == 6 and len(infos) == 6 and mixture.names == ("toy:4", "toy:2")
    batch = loop.host_batch(mixture, seed=0, step=1, batch_size=8)
    assert batch.batch_shape == (8,)
    src = mixture.source_of(loop.make_plan(mixture, 8, 0).indices(1))
    assert (src == 0).sum() == 6 and (src == 1).sum() == 2  # 8 * 3/4 and 8 * 1/4
    # the weights are part of what a run trained on: a resume with other weights is other data
    other = loop.load_data("toy:4@1,toy:2@1")
    assert loop.data_identity(mixture)["blake2b"] != loop.data_identity(other)["blake2b"]
    assert loop.data_identity(mixture)["blake2b"] == loop.data_identity(loop.load_data("toy:4@3,toy:2@1"))["blake2b"]


def test_a_batch_too_small_for_the_weights_is_refused():
    # 4 * (0.9, 0.1) = (3.6, 0.4): largest-remainder rounding gives (4, 0), the second source never appears
    a = jax.tree.map(np.asarray, scenarios(count=2))
    m = mix([("a", a, [{}, {}], 0.9), ("b", a, [{}, {}], 0.1)])
    assert proportional_counts(m.weights, 4).tolist() == [4, 0]
    with pytest.raises(ValueError, match=r"\['b'\] would never be trained on; use a batch of at least 10"):
        m.check_batch_size(4)
    m.check_batch_size(10)  # (9, 1)
