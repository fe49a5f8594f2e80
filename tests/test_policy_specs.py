"""Any policy on any data: checkpoints and exported artefacts evaluate alike, and render draws either."""

from __future__ import annotations

import os
import re

import jax
import numpy as np
import pytest
from PIL import Image

from _train_utils import scenarios, tiny_config
from jaxloop.eval.cli import resolve_policy_spec
from jaxloop.eval.evaluate import EvalConfig, evaluate
from jaxloop.sim.env import EnvConfig
from jaxloop.train import loop
from jaxloop.io.policies import batch_polymorphic_call, export, load_policy


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4-step BC run on toy scenarios and its exported artefact."""
    root = tmp_path_factory.mktemp("specs")
    run, exported = str(root / "run"), str(root / "exported")
    loop.run(tiny_config("bc"), scenarios(), run, 4, log_every=2, ckpt_every=2, progress=False,
             use_tensorboard=False)
    export(run, exported)
    return run, exported


def test_exported_policy_evaluates_like_its_checkpoint(trained):
    run, exported = trained
    data = scenarios(count=4)
    env = EnvConfig(init_steps=11)
    reports = []
    for spec in (run, exported):
        policy, policy_env, _ = resolve_policy_spec(spec, env)
        reports.append(evaluate(policy, data, None, EvalConfig(env=policy_env, batch_size=4, horizon=12), 0))
    ckpt, art = reports
    for a, b in zip(ckpt.per_scenario, art.per_scenario):
        assert a.keys() == b.keys()
        for k in ("ade", "fde", "progress", "collision", "offroad"):
            np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-4, err_msg=k)
    # the policy moved the ego somewhere other than the log: the comparison is not vacuous
    assert max(r["ade"] for r in ckpt.per_scenario) > 1e-3


def test_exported_call_vmaps_and_nests():
    """The folding rule of batch_polymorphic_call agrees with one flat call, under one and two vmaps."""
    w = np.arange(6.0, dtype=np.float32).reshape(3, 2)
    calls = []

    def flat_call(x):  # [b, 3] -> [b, 2], only batch-polymorphic code (like an exported artefact)
        calls.append(x.shape)
        return x @ w

    call = batch_polymorphic_call(flat_call)
    xs = np.random.default_rng(0).normal(size=(4, 5, 1, 3)).astype(np.float32)
    nested = jax.jit(jax.vmap(jax.vmap(call)))(xs)
    np.testing.assert_allclose(nested, xs @ w, rtol=1e-6)
    assert calls[-1] == (20, 3)  # both mapped axes folded into the exported batch dimension


def test_load_policy_rejects_a_step_for_an_exported_policy(trained):
    with pytest.raises(ValueError, match="one set of weights"):
        load_policy(trained[1], step=2)


def test_render_a_checkpoint_and_an_exported_policy(trained, tmp_path, capsys):
    from jaxloop.viz.cli import render
    for name, spec in zip(("ckpt", "exported"), trained):
        png = tmp_path / f"{name}.png"
        assert render(out=str(png), data="toy:2", index=1, policy=spec, width_px=48, height_px=40,
                      step="first_failure") == 0
        with Image.open(png) as im:
            assert im.size == (48, 40)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(f" on toy-1: " in line for line in lines[::2])
    for summary, wrote in zip(lines[::2], lines[1::2]):
        listed = re.findall(r"(raw )?(?:collision|offroad|red_light) at steps \[([\d, ]+)\]", summary)
        failed = [int(t) for raw, steps in listed if not raw for t in steps.split(", ")]
        frame = int(re.search(r"\(step (\d+),", wrote).group(1))
        assert frame == (min(failed) if failed else 39)  # the first failure, else the last of 40 toy steps


def test_render_a_raw_womd_file(shared_data, tmp_path, capsys):
    from jaxloop.viz.cli import render
    png = tmp_path / "womd.png"
    path = shared_data / "womd" / "motion_data_one_scenario.tfrecord"
    assert render(out=str(png), data=str(path), policy="idm", step="40", width_px=64, height_px=64) == 0
    assert os.path.getsize(png) > 0
    out = capsys.readouterr().out
    assert "idm on" in out and "step 51" in out  # closed-loop step 40 after the 11 initial steps
    with pytest.raises(ValueError, match="out of range"):
        render(out=str(png), data=str(path), index=3)
