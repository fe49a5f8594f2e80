"""The one data path: datasets over caches and in-memory sets, the batch plan, old caches, eval over a stream."""

import hashlib
import io
import json

import jax
import numpy as np
import pytest

from jaxloop.data.dataset import InMemoryDataset, MixtureDataset, open_dataset
from jaxloop.data.pipeline import CACHE_VERSION, ScenarioDataset, load_scenarios, write_cache
from jaxloop.data.toy import make_toy_scenario
from jaxloop.sim.datatypes import stack_scenarios

COUNT = 12


def _infos(n, prefix="t"):
    return [{"scenario_id": f"{prefix}{i}", "format": "toy", "family": "even" if i % 2 == 0 else "odd",
             "init_steps": 11} for i in range(n)]


@pytest.fixture(scope="module")
def toys():
    return stack_scenarios([make_toy_scenario(num_objects=4, seed=i) for i in range(COUNT)])


@pytest.fixture()
def cache(toys, tmp_path):
    write_cache(toys, tmp_path / "c", _infos(COUNT), shard_size=2)  # 6 shards
    return tmp_path / "c"


def test_a_version_1_cache_loads_without_its_family_field(toys, cache):
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["version"] == CACHE_VERSION == 2 and "family" not in manifest["fields"]
    # The same cache as version 1 wrote it: a `family` array in every shard and in the fields.
    manifest["version"] = 1
    manifest["fields"]["family"] = {"shape": [], "dtype": "int32"}
    for shard in manifest["shards"]:
        with np.load(cache / shard["file"]) as z:
            data = dict(z)
        data["family"] = np.full(shard["count"], -1, np.int32)
        buffer = io.BytesIO()
        np.savez(buffer, **data)
        (cache / shard["file"]).write_bytes(buffer.getvalue())
        shard["sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    (cache / "manifest.json").write_text(json.dumps(manifest))
    back = load_scenarios(cache)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(toys)):
        np.testing.assert_array_equal(a, b)
    write_cache(toys, cache, _infos(COUNT))  # a version 1 cache is replaced by a version 2 one
    assert json.loads((cache / "manifest.json").read_text())["version"] == 2


def test_a_streamed_cache_gives_the_batches_of_the_same_set_in_memory(toys, cache):
    streamed = open_dataset(str(cache), max_cached_shards=3)
    assert isinstance(streamed, ScenarioDataset) and streamed.chunk_size == 2
    memory = InMemoryDataset(toys, _infos(COUNT))
    plan = streamed.plan(4, seed=5, window=1)  # one shard a window: each batch comes from one or two shards
    loaded = []
    for step, (batch, infos) in zip(range(9), streamed.train_batches(plan, prefetch=2)):
        idx = plan.indices(step)
        want = memory.get(idx)
        for a, b in zip(jax.tree.leaves(batch), jax.tree.leaves(want)):
            np.testing.assert_array_equal(a, b)
        assert [i["scenario_id"] for i in infos] == [f"t{i}" for i in idx]
        loaded.append(len(streamed._cache))
    assert max(loaded) <= 3  # never the whole cache (6 shards) in memory
    # One epoch = 3 batches of 4 = every scenario once; epochs are reshuffled.
    epochs = [np.concatenate([plan.indices(s) for s in range(3 * e, 3 * e + 3)]) for e in range(2)]
    assert all(sorted(e.tolist()) == list(range(COUNT)) for e in epochs) and not np.array_equal(*epochs)
    # A resumed stream continues the same sequence.
    again = streamed.train_batches(plan, start_step=7, num_steps=1, prefetch=0)
    (batch, infos), = list(again)
    assert [i["scenario_id"] for i in infos] == [f"t{i}" for i in plan.indices(7)]
    assert plan.position(7) == {"step": 7, "sources": [{"epoch": 2, "row": 4}]}
    # The identity of a cache is read from its manifest, and differs from another cache's.
    assert streamed.identity() == open_dataset(str(cache)).identity()
    assert streamed.identity()["blake2b"] != memory.identity()["blake2b"]


def test_a_mixture_of_a_cache_and_an_in_memory_set_keeps_its_proportions(toys, cache):
    mixture = open_dataset(f"{cache}@3,toy:4@1")
    assert isinstance(mixture, MixtureDataset) and isinstance(mixture.parts[0], ScenarioDataset)
    plan = mixture.plan(8, seed=0, partitions=2)
    for step in range(4):
        for d in range(2):
            src = mixture.source_of(plan.partition_indices(step, d))
            assert (src == 0).sum() == 3 and (src == 1).sum() == 1  # 4 * 3/4 and 4 * 1/4 per partition
    idx = plan.indices(0)
    batch, infos = mixture.load(idx)
    assert batch.batch_shape == (8,) and batch.num_objects == 8  # the cache's 4 object slots padded to toy's 8
    assert [i["scenario_id"].startswith("toy-") for i in infos] == (mixture.source_of(idx) == 1).tolist()


def test_eval_over_a_streamed_cache_reads_families_from_the_infos(toys, cache):
    from jaxloop.eval.evaluate import EvalConfig, evaluate
    config = EvalConfig(batch_size=5, horizon=8)
    streamed = evaluate("expert", open_dataset(str(cache)), config=config)
    memory = evaluate("expert", toys, _infos(COUNT), config=config)
    assert set(streamed.per_family) == {"even", "odd"} and streamed.per_family["odd"]["num_scenarios"] == 6
    assert [r["scenario_id"] for r in streamed.per_scenario] == [f"t{i}" for i in range(COUNT)]
    for a, b in zip(streamed.per_scenario, memory.per_scenario):
        assert a == b
