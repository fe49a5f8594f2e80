"""Training loop: resume equals an uninterrupted run, SIGTERM checkpoints, divergence stop, export."""

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _train_utils import TINY_MODEL, scenarios, tiny_config
from jaxloop.io.checkpoint import CheckpointManager
from jaxloop.policy.observation import features, flatten
from jaxloop.sim.env import Env
from jaxloop.train import loop
from jaxloop.io.policies import export, load_params, load_policy_from_checkpoint

ROOT = pathlib.Path(__file__).resolve().parents[1]
RUN = dict(log_every=3, ckpt_every=3, progress=False, use_tensorboard=False)


@pytest.fixture(scope="module")
def data():
    return scenarios()


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, data):
    out = str(tmp_path_factory.mktemp("full"))
    summary = loop.run(tiny_config("bc"), data, out, 6, **RUN)
    return out, summary


def _params(out):
    return [np.asarray(x) for x in jax.tree.leaves(load_params(os.path.join(out, "checkpoints"))[1])]


def test_resumed_run_matches_uninterrupted(full_run, data, tmp_path):
    out_full, summary = full_run
    assert summary["status"] == "completed" and summary["final_step"] == 6
    out = str(tmp_path / "resumed")
    first = loop.run(tiny_config("bc"), data, out, 3, **RUN)
    second = loop.run(tiny_config("bc"), data, out, 6, **RUN)
    assert (first["final_step"], second["start_step"], second["final_step"]) == (3, 3, 6)
    for a, b in zip(_params(out_full), _params(out)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    records = [json.loads(line) for line in open(os.path.join(out, "logs", "metrics.jsonl"))]
    assert [r["step"] for r in records] == [3, 6] and all(np.isfinite(r["loss"]) for r in records)
    with pytest.raises(ValueError, match="different config"):
        loop.run(tiny_config("bc", learning_rate=1e-2), data, out, 9, **RUN)


def test_diverged_run_stops_and_keeps_last_good_checkpoint(data, tmp_path):
    bad = jax.tree.map(np.copy, data)
    bad.log_trajectory.x[:, 0, :] = np.nan  # every BC loss is NaN: every update is skipped
    out = str(tmp_path / "diverged")
    with pytest.raises(loop.TrainingDiverged, match="2 updates in a row"):
        loop.run(tiny_config("bc"), bad, out, 10, log_every=1, ckpt_every=100, max_consecutive_skips=2,
                 progress=False, use_tensorboard=False)
    manager = CheckpointManager(os.path.join(out, "checkpoints"))
    assert manager.latest_step() == 0  # the initial (good) state, nothing written after the skips
    manager.close()
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["status"] == "diverged" and summary["skipped_updates"] == 2


def test_exported_policy_matches_in_process(full_run, data, tmp_path):
    out_full, _ = full_run
    policy, config = load_policy_from_checkpoint(os.path.join(out_full, "checkpoints"))
    export(out_full, str(tmp_path / "exported"))
    from jaxloop.io.export import load_policy
    exported = load_policy(tmp_path / "exported")
    env = Env(config.env_config())
    scenario = jax.tree.map(lambda a: a[3], data)

    @jax.jit
    def both(key):
        state = env.reset(scenario, key)
        flat = flatten(features(scenario, state, scenario.object_metadata.sdc_index, config.obs))
        return policy(scenario, state, key), flat

    actions, flats = jax.vmap(both)(jax.random.split(jax.random.PRNGKey(0), 3))
    got = exported(np.asarray(flats))
    np.testing.assert_allclose(np.asarray(got), np.asarray(actions), rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(np.asarray(got)) <= 1.0) and np.abs(np.asarray(got)).max() > 0



def test_init_from_an_exported_policy_loads_its_weights(full_run, data, tmp_path):
    out_full, _ = full_run
    exported = export(out_full, str(tmp_path / "exported"))
    out = str(tmp_path / "from_export")
    loop.run(tiny_config("apg"), data, out, 0, init_from=exported, **RUN)  # step 0: the weights it started from
    for a, b in zip(_params(out_full), _params(out)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="observation / model / dynamics config differs"):
        loop.run(tiny_config("apg", model=dataclasses.replace(TINY_MODEL, hidden=(8,))), data,
                 str(tmp_path / "other"), 1, init_from=exported, **RUN)

SIGTERM_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, "tests")
    from _train_utils import scenarios, tiny_config
    from jaxloop.train import loop
    loop.run(tiny_config("bc"), scenarios(), sys.argv[1], 10 ** 7, log_every=1, ckpt_every=10 ** 6, progress=False,
             use_tensorboard=False)
""")


def test_sigterm_leaves_a_restorable_checkpoint(tmp_path):
    out = tmp_path / "sigterm"
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, "-c", SIGTERM_SCRIPT, str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "logs" / "metrics.jsonl"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
                break
            time.sleep(0.5)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    manager = CheckpointManager(out / "checkpoints")
    step = manager.latest_step()
    manager.close()
    assert step is not None and step >= 3  # saved at the signal, past the last logged step
    policy, config = load_policy_from_checkpoint(out / "checkpoints")
    scenario = jax.tree.map(lambda a: a[0], scenarios())
    env = Env(config.env_config())
    action = jax.jit(lambda k: policy(scenario, env.reset(scenario, k), k))(jax.random.PRNGKey(0))
    assert action.shape == (2,) and bool(jnp.all(jnp.isfinite(action)))


@pytest.mark.parametrize("command", ["train", "export"])
def test_cli_commands_parse(command, capsys):
    from jaxloop.cli import main
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert ("--algo" in text and "--init-from" in text) if command == "train" else ("CKPT" in text and "--out" in text)
