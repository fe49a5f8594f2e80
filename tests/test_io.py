"""Checkpoints, policy export and metric logging."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxloop.io.checkpoint import CheckpointManager, read_config


class _Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(3, 8, rngs=rngs)
        self.l2 = nnx.Linear(8, 2, rngs=rngs)
        self.drop = nnx.Dropout(0.1, rngs=rngs)
        self.count = nnx.Variable(jnp.int32(0))

    def __call__(self, x):
        return self.l2(jax.nn.tanh(self.l1(x)))


def _state(seed: int):
    return {"w": jnp.arange(6, dtype=jnp.bfloat16).reshape(2, 3) + seed, "step": jnp.int32(seed),
            "key": jax.random.key(seed), "keys": jax.random.split(jax.random.key(seed + 100), 3),
            "i16": np.arange(3, dtype=np.int16)}


def _assert_same(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert jax.dtypes.issubdtype(y.dtype, jax.dtypes.prng_key)
            np.testing.assert_array_equal(jax.random.key_data(x), jax.random.key_data(y))
        else:
            assert x.dtype == y.dtype and x.shape == y.shape
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_checkpoint_periodic_keep_last_and_restore(tmp_path):
    d = tmp_path / "ckpt"
    mgr = CheckpointManager(d, max_to_keep=2, save_interval_steps=2)
    # steps 0..5 with interval 2 save 0, 2, 4; keep last 2 -> [2, 4]; a forced 5 -> [4, 5]
    saved = [mgr.save(s, _state(s), config={"lr": 0.1, "step": s}) for s in range(6)]
    assert saved == [True, False, True, False, True, False]
    mgr.wait()
    assert mgr.all_steps() == [2, 4] and mgr.latest_step() == 4
    assert mgr.save(5, _state(5), force=True)
    mgr.wait()
    assert mgr.all_steps() == [4, 5]
    assert read_config(d) == {"lr": 0.1, "step": 4}  # step 5 was saved without a config
    assert mgr.restore_config(4) == {"lr": 0.1, "step": 4}

    abstract = jax.eval_shape(lambda: _state(0))
    _assert_same(mgr.restore(target=abstract), _state(5))
    _assert_same(mgr.restore(4, target=_state(0)), _state(4))
    # without a target: nested dicts, keys re-wrapped from the recorded paths
    raw = mgr.restore(4)
    np.testing.assert_array_equal(jax.random.key_data(raw["key"]), jax.random.key_data(jax.random.key(4)))
    assert raw["keys"].shape == (3,)
    mgr.close()

    # a new manager over the same directory resumes from what is on disk
    mgr2 = CheckpointManager(d)
    assert mgr2.latest_step() == 5
    with pytest.raises(FileNotFoundError, match=r"step 3 .*saved steps: \[4, 5\]"):
        mgr2.restore(3, target=abstract)
    mgr2.close()


def test_checkpoint_errors_name_directory(tmp_path):
    missing = tmp_path / "nope"
    mgr = CheckpointManager(missing)
    assert mgr.latest_step() is None and mgr.all_steps() == []
    with pytest.raises(FileNotFoundError, match="nope"):
        mgr.restore()
    assert not missing.exists()  # a failed restore does not create the directory
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoints in .*empty"):
        CheckpointManager(empty).restore()
    with pytest.raises(FileNotFoundError, match="nope"):
        read_config(missing)
    with pytest.raises(TypeError, match="JSON"):
        CheckpointManager(tmp_path / "c").save(0, {"a": jnp.zeros(2)}, config={"f": object()})
    with pytest.raises(ValueError, match="save_interval_steps"):
        CheckpointManager(tmp_path, save_interval_steps=0)


def test_checkpoint_nnx_state_round_trip(tmp_path):
    model = _Net(nnx.Rngs(0, dropout=1))
    _, state = nnx.split(model)
    mgr = CheckpointManager(tmp_path / "nnx")
    assert mgr.save(7, state, config={"model": "net"})
    mgr.wait()
    abstract = nnx.state(nnx.eval_shape(lambda: _Net(nnx.Rngs(3, dropout=4))))
    restored = mgr.restore(target=abstract)
    assert isinstance(restored, nnx.State)
    _assert_same(restored, state)
    # the restored state drives a fresh model to the same outputs
    fresh = _Net(nnx.Rngs(5, dropout=6))
    nnx.update(fresh, restored)
    x = jnp.ones((4, 3))
    np.testing.assert_array_equal(fresh(x), model(x))
    mgr.close()


_SIGNAL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import jax.numpy as jnp
    from jaxloop.io.checkpoint import CheckpointManager
    mgr = CheckpointManager(sys.argv[1], save_interval_steps=1000)
    step = 0
    state = {"w": jnp.zeros(3)}
    mgr.install_signal_handlers(lambda: (step, state))
    for step in range(1, 4):
        state = {"w": jnp.full(3, float(step))}
    sig = signal.SIGTERM if sys.argv[2] == "term" else signal.SIGINT
    try:
        os.kill(os.getpid(), sig)
    except KeyboardInterrupt:
        print("interrupted")
        sys.exit(7)
""")


@pytest.mark.parametrize("which,code", [("term", 143), ("int", 7)])
def test_checkpoint_signal_saves_then_exits(tmp_path, which, code):
    d = tmp_path / which
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _SIGNAL_SCRIPT, str(d), which], capture_output=True, text=True,
                          env=env, cwd=os.path.dirname(os.path.dirname(__file__)), timeout=120)
    assert proc.returncode == code, proc.stderr[-2000:]
    mgr = CheckpointManager(d)
    assert mgr.all_steps() == [3]  # the loop left step = 3 and w = 3.0; interval 1000 would never save it
    np.testing.assert_array_equal(mgr.restore(target={"w": jnp.zeros(3)})["w"], np.full(3, 3.0))
    mgr.close()


def test_checkpoint_close_restores_handlers(tmp_path):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    mgr = CheckpointManager(tmp_path / "h")
    mgr.install_signal_handlers(lambda: (0, {"a": jnp.zeros(1)}))
    assert signal.getsignal(signal.SIGTERM) is not before[0]
    mgr.close()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


# ---------------------------------------------------------------- export

from jaxloop.io import export as export_lib  # noqa: E402


class _MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(5, 16, rngs=rngs)
        self.l2 = nnx.Linear(16, 2, param_dtype=jnp.bfloat16, rngs=rngs)

    def __call__(self, obs, goal):
        h = jax.nn.tanh(self.l1(obs))
        return {"action": self.l2(h).astype(jnp.float32) + goal, "value": h.sum(-1)}


def _export_mlp(tmp_path):
    model = _MLP(nnx.Rngs(0))
    graphdef, params = nnx.split(model)

    def apply(p, obs, goal):
        return nnx.merge(graphdef, p)(obs, goal)

    obs = jax.random.normal(jax.random.key(1), (4, 5))
    goal = jnp.ones((4, 2))
    out_dir = export_lib.export_policy(apply, params, (obs, goal), tmp_path / "policy",
                                       metadata={"action_space": {"low": [-6, -0.3], "high": [6, 0.3]}})
    return model, out_dir


def test_export_round_trip_identical(tmp_path):
    model, out_dir = _export_mlp(tmp_path)
    meta = json.loads((out_dir / "metadata.json").read_text())
    assert meta["batch_polymorphic"] and meta["inputs"][0] == {"shape": ["b", 5], "dtype": "float32"}
    assert meta["metadata"]["action_space"]["high"] == [6, 0.3] and meta["jax_version"] == jax.__version__
    assert meta["params"]["dtypes"]["l2/kernel/value"] == "bfloat16"
    # policy.jaxexport is written when flatbuffers (needed by Exported.serialize) is installed
    assert meta["serialized"] == (importlib.util.find_spec("flatbuffers") is not None)
    assert (out_dir / "policy.jaxexport").is_file() == meta["serialized"]
    with np.load(out_dir / "params.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == ["l1/bias/value", "l1/kernel/value", "l2/bias/value", "l2/kernel/value"]
    policy = export_lib.load_policy(out_dir)
    for batch in (4, 7):  # a batch size other than the example's: the batch dim is symbolic
        obs = jax.random.normal(jax.random.key(batch), (batch, 5))
        goal = jnp.full((batch, 2), 0.5)
        got, want = policy(obs, goal), model(obs, goal)
        assert set(got) == {"action", "value"}
        np.testing.assert_array_equal(np.asarray(got["action"]), np.asarray(want["action"]))
        np.testing.assert_array_equal(np.asarray(got["value"]), np.asarray(want["value"]))
    with pytest.raises(ValueError, match=r"input 0 has shape \[4, 6\].*expected shape \['b', 5\]"):
        policy(jnp.ones((4, 6)), jnp.ones((4, 2)))
    with pytest.raises(ValueError, match="input 1"):  # batch sizes disagree
        policy(jnp.ones((4, 5)), jnp.ones((3, 2)))
    with pytest.raises(TypeError, match="takes 2 inputs"):
        policy(jnp.ones((4, 5)))


def test_export_loads_without_flatbuffers(tmp_path):
    """The StableHLO + calling-convention fallback gives the same outputs as the serialized form."""
    model, out_dir = _export_mlp(tmp_path)
    meta = json.loads((out_dir / "metadata.json").read_text())
    exported = export_lib._exported_from_mlir(meta, (out_dir / "policy.mlir").read_bytes())
    policy = export_lib.load_policy(out_dir)
    obs, goal = jnp.ones((3, 5)), jnp.zeros((3, 2))
    out = exported.call(policy.params, obs, goal)
    np.testing.assert_array_equal(np.asarray(out[0]), np.asarray(model(obs, goal)["action"]))


def test_export_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an exported policy"):
        export_lib.load_policy(tmp_path)


# ---------------------------------------------------------------- logging

from jaxloop.io.logging import MetricLogger, read_jsonl  # noqa: E402


def test_metric_logger_jsonl_and_tensorboard(tmp_path):
    with MetricLogger(tmp_path / "run") as logger:
        logger.log(0, {"loss": jnp.float32(1.5), "reward": np.float64(-0.25), "count": jnp.int32(3)})
        logger.log(10, {"loss": float("nan"), "grad_norm": jnp.array([jnp.inf])})
    # strict JSON: NaN / inf are written as null, so a standard parser reads every line
    for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 10]
    assert records[0]["loss"] == 1.5 and records[0]["reward"] == -0.25 and records[0]["count"] == 3
    assert records[1]["loss"] is None and records[1]["grad_norm"] is None
    assert all(isinstance(r["time"], float) for r in records)
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "run").iterdir())
    # appending: a second logger on the same directory continues the file
    with MetricLogger(tmp_path / "run", use_tensorboard=False) as logger:
        logger.log(20, {"loss": 0.5})
        with pytest.raises(ValueError, match="'v' must be a scalar"):
            logger.log(21, {"v": np.zeros(3)})
    assert [r["step"] for r in read_jsonl(tmp_path / "run")] == [0, 10, 20]
    (tmp_path / "bad.jsonl").write_text('{"step": 0}\n{oops\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        read_jsonl(tmp_path / "bad.jsonl")
