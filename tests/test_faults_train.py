"""Faults in training runs: each case feeds a bad input or fault and checks the exact outcome.

Non-finite updates never reach a checkpoint; the skip guard acts inside the compiled
step; a resume refuses other data; damaged checkpoints fall back to the newest step
that verifies; bad flags and errors give one line from the `jaxloop` command.
"""

import dataclasses
import glob
import itertools
import json
import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _train_utils import scenarios, tiny_config
from jaxloop.data.dataset import BatchPlan
from jaxloop.errors import CheckpointError, JaxloopError, RunError
from jaxloop.io.checkpoint import CheckpointManager
from jaxloop.train import loop
from jaxloop.config import GRPO, PPO, EnvSettings, Experiment
from jaxloop.train.state import apply_update, create, make_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUIET = dict(progress=False, use_tensorboard=False)
LIMIT = 3  # max_consecutive_skips of every run here: one compiled guarded step for all of them


@pytest.fixture(scope="module")
def data():
    return scenarios()


def _unvalidated(config: Experiment, **changes) -> Experiment:
    """`config` with fields set past `__post_init__` (the validation a Python caller could bypass)."""
    config = dataclasses.replace(config)
    for name, value in changes.items():
        object.__setattr__(config, name, value)
    return config


def _finite_checkpoints(ckpt_dir):
    manager = CheckpointManager(ckpt_dir)
    try:
        steps = manager.all_steps()
        finite = {}
        for s in steps:
            leaves = [np.asarray(x) for x in jax.tree.leaves(manager.restore(s))]
            finite[s] = all(bool(np.all(np.isfinite(x))) for x in leaves if np.issubdtype(x.dtype, np.floating))
    finally:
        manager.close()
    return finite


def _summary(out):
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)


def _bad_steps(num_scenarios, bad, seed, num_steps, batch_size=8):
    """Which steps draw a poisoned scenario, by the loop's own batch plan (one in-memory source)."""
    plan = BatchPlan(((0, num_scenarios, num_scenarios),), None, batch_size, seed)
    return [bool(set(plan.indices(s).tolist()) & set(bad)) for s in range(num_steps)]


def _poison(data, bad):
    out = jax.tree.map(np.copy, data)
    for i in bad:
        out.log_trajectory.x[i] = np.nan  # that scenario's BC loss and gradient are NaN
    return out


# --- 1. non-finite state never becomes a checkpoint --------------------------------------------

def test_update_to_nonfinite_params_is_skipped():
    # Finite gradients, infinite learning rate: Adam's step is inf (or 0 * inf = NaN).
    opt = make_optimizer(math.inf, 1.0)
    state = create({"w": jnp.ones(3)}, opt)
    new, info = apply_update(state, {"w": jnp.array([1.0, 0.0, -1.0])}, jnp.asarray(1.0), opt)
    np.testing.assert_array_equal(new.params["w"], np.ones(3))
    assert (int(new.skipped), int(new.consecutive_skipped), float(info["update_skipped"])) == (1, 1, 1.0)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(new.opt_state))


def test_save_refuses_nonfinite_state(tmp_path):
    manager = CheckpointManager(tmp_path / "ck")
    with pytest.raises(CheckpointError, match=r"step 4 not saved: 1 leaves hold NaN or inf.*params/w"):
        manager.save(4, {"params": {"w": jnp.array([1.0, jnp.nan]), "b": jnp.zeros(2)}, "step": jnp.int32(4)})
    assert manager.all_steps() == []
    manager.close()


def test_infinite_learning_rate_diverges_and_keeps_only_finite_checkpoints(data, tmp_path):
    config = _unvalidated(tiny_config("bc"), learning_rate=math.inf)
    out = str(tmp_path / "inf")
    # Every update is skipped: steps 1..3 hit the limit at step 3; the ckpt at step 2 holds the initial state.
    with pytest.raises(loop.TrainingDiverged, match=r"3 updates in a row .*diverged at step 3 and stopped at step 4\. "
                                                    r"The last good checkpoint is step 2 in"):
        loop.run(config, data, out, 30, log_every=10, ckpt_every=2, max_consecutive_skips=LIMIT, **QUIET)
    finite = _finite_checkpoints(os.path.join(out, "checkpoints"))
    assert finite == {0: True, 2: True}  # nothing after the divergence, nothing non-finite
    summary = _summary(out)
    assert (summary["status"], summary["diverged_at_step"], summary["skipped_updates"]) == ("diverged", 3, 3)
    assert summary["last_good_checkpoint"]["step"] == 2


# --- 5. the skip guard acts every step, and the skipped fraction is bounded ---------------------

def test_consecutive_skips_between_log_steps_stop_the_run(data, tmp_path):
    steps = 20
    big = jax.tree.map(lambda a: np.concatenate([np.asarray(a)] * 4), data)  # 32 scenarios: 4 batches an epoch
    # A poisoned scenario set with a streak of LIMIT bad steps that recovers before the log
    # step: checked only at step 20, this run would have looked healthy.
    for bad in itertools.combinations(range(32), 3):
        pattern = _bad_steps(32, bad, 0, steps)
        ends = [s + 1 for s in range(LIMIT - 1, steps) if all(pattern[s - LIMIT + 1:s + 1])]
        if ends and not pattern[steps - 1] and ends[0] < steps - 1:
            break
    else:
        pytest.fail("no three poisoned scenarios give a recovering streak")
    diverged_at = ends[0]
    out = str(tmp_path / "streak")
    with pytest.raises(loop.TrainingDiverged, match=rf"diverged at step {diverged_at} and stopped at step {steps}\."):
        loop.run(tiny_config("bc"), _poison(big, bad), out, steps, log_every=steps, ckpt_every=100,
                 max_consecutive_skips=LIMIT, **QUIET)
    summary = _summary(out)
    assert summary["status"] == "diverged" and summary["diverged_at_step"] == diverged_at
    assert summary["final_step"] == diverged_at  # frozen there: no update after the divergence
    assert summary["skipped_updates"] == sum(pattern[:diverged_at])
    assert _finite_checkpoints(os.path.join(out, "checkpoints")) == {0: True}


def test_too_many_skips_ends_with_its_own_status(data, tmp_path):
    steps = 12
    big = jax.tree.map(lambda a: np.concatenate([np.asarray(a)] * 4), data)  # 32 scenarios
    for bad in ([i] for i in range(32)):
        pattern = _bad_steps(32, bad, 0, steps)
        streak = max(len(r) for r in "".join("x" if p else " " for p in pattern).split(" "))
        if streak < LIMIT and sum(pattern) / steps > 0.2:
            break
    else:
        pytest.fail("no poisoned scenario gives short streaks and > 20% skips")
    out = str(tmp_path / "skips")
    with pytest.raises(loop.TooManySkips, match=rf"{sum(pattern)} of {steps} updates .* more than "
                                                rf"--max-skip-fraction 0\.1"):
        loop.run(tiny_config("bc"), _poison(big, bad), out, steps, log_every=4, ckpt_every=100,
                 max_consecutive_skips=LIMIT, max_skip_fraction=0.1, **QUIET)
    summary = _summary(out)
    assert (summary["status"], summary["final_step"], summary["skipped_updates"]) == ("too_many_skips", steps,
                                                                                      sum(pattern))
    assert _finite_checkpoints(os.path.join(out, "checkpoints")) == {0: True, steps: True}
    assert loop.TooManySkips.exit_code == 1 and loop.TrainingDiverged.exit_code == 1


# --- 6. the data is part of the run's identity; never write a run into a cache ------------------

def test_resume_with_other_data_is_refused(data, tmp_path):
    out = str(tmp_path / "run")
    loop.run(tiny_config("bc"), data, out, 2, log_every=2, ckpt_every=2, max_consecutive_skips=LIMIT,
             run_info={"data": "toy"}, **QUIET)
    other = jax.tree.map(np.copy, data)
    other.log_trajectory.y[0, 0, 0] += 1.0  # one number differs
    with pytest.raises(RunError, match=r"trained on other data \(content hash [0-9a-f]+ -> [0-9a-f]+\)"):
        loop.run(tiny_config("bc"), other, out, 4, max_consecutive_skips=LIMIT, run_info={"data": "toy"}, **QUIET)
    fewer = jax.tree.map(lambda a: np.asarray(a)[:6], data)
    with pytest.raises(RunError, match=r"sources \['toy'\] -> \['procedural:train:6'\]; scenario count 8 -> 6"):
        loop.run(tiny_config("bc"), fewer, out, 4, max_consecutive_skips=LIMIT,
                 run_info={"data": "procedural:train:6"}, **QUIET)
    # The batch order is part of it too: other data partitions give other batches.
    with pytest.raises(RunError, match=r"batch order \{.*'partitions': 1.*\} -> \{.*'partitions': 2"):
        loop.run(tiny_config("bc"), data, out, 4, max_consecutive_skips=LIMIT, run_info={"data": "toy"},
                 data_partitions=2, **QUIET)
    manager = CheckpointManager(os.path.join(out, "checkpoints"))
    assert manager.all_steps() == [0, 2]  # the refused resumes wrote nothing
    manager.close()


@pytest.mark.parametrize("where", ["cache", "cache/runs/a"])
def test_out_inside_a_scenario_cache_is_refused(data, tmp_path, where):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "manifest.json").write_text("{}")
    out = tmp_path / where
    with pytest.raises(RunError, match=r"--out .*a scenario cache \(it holds manifest.json\)"):
        loop.run(tiny_config("bc"), data, str(out), 2, **QUIET)
    assert os.listdir(tmp_path / "cache") == ["manifest.json"]  # nothing written into the cache


# --- 8. checkpoint integrity: checksums, fallback, clear failure ---------------------------------

def _damage(step_dir, how):
    files = sorted(glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True), key=os.path.getsize)
    assert files, f"no data files under {step_dir}"
    raw = bytearray(open(files[-1], "rb").read())
    if how == "flip":
        raw[len(raw) // 2] ^= 0x01
    else:
        raw = raw[:len(raw) // 2]
    with open(files[-1], "wb") as f:
        f.write(bytes(raw))


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_damaged_latest_step_falls_back(tmp_path, capsys, how):
    d = tmp_path / "ck"
    manager = CheckpointManager(d)
    for s in (1, 2):
        manager.save(s, {"w": jnp.arange(1000.0) * s, "k": jax.random.key(s)})
    manager.close()
    _damage(str(d / "2"), how)
    manager = CheckpointManager(d)
    target = {"w": jnp.zeros(1000), "k": jax.random.key(0)}
    restored = manager.restore(target=target)
    err = capsys.readouterr().err
    reason = "checksum mismatch" if how == "flip" else "unreadable"
    assert f"step 2 failed verification ({reason}" in err and "using step 1, the newest step that verifies" in err
    assert manager.restored_step == 1
    np.testing.assert_array_equal(restored["w"], np.arange(1000.0))
    with pytest.raises(CheckpointError, match=rf"ck/2: {reason}"):
        manager.restore(2, target=target)  # an explicit step is never substituted
    manager.close()
    _damage(str(d / "1"), "flip")
    with pytest.raises(CheckpointError, match=r"no saved step verifies \(step 2: .*; step 1: checksum mismatch"):
        CheckpointManager(d).restore(target=target)


def test_resume_falls_back_past_a_damaged_step_and_reruns_it(data, tmp_path, capsys):
    out = str(tmp_path / "run")
    run = dict(log_every=2, ckpt_every=2, max_consecutive_skips=LIMIT, **QUIET)
    loop.run(tiny_config("bc"), data, out, 4, **run)
    ckpt_dir = os.path.join(out, "checkpoints")
    manager = CheckpointManager(ckpt_dir)
    uninterrupted = manager.restore(4)
    manager.close()
    _damage(os.path.join(ckpt_dir, "4"), "flip")
    capsys.readouterr()
    summary = loop.run(tiny_config("bc"), data, out, 4, **run)
    captured = capsys.readouterr()
    assert "step 4 failed verification (checksum mismatch" in captured.err
    assert "moved checkpoint step(s) [4] that did not verify" in captured.err and "resuming from step 2" in captured.out
    # the damaged step is kept aside (with its checksum record), not deleted
    aside = os.path.join(out, "damaged_checkpoints", "4")
    assert os.path.isdir(os.path.join(aside, "state")) and os.path.isfile(os.path.join(aside, "4.json"))
    assert (summary["start_step"], summary["final_step"], summary["status"]) == (2, 4, "completed")
    manager = CheckpointManager(ckpt_dir)
    rerun = manager.restore(4)  # verifies again, and the re-run steps 2..4 give the same state
    manager.close()
    for a, b in zip(jax.tree.leaves(uninterrupted), jax.tree.leaves(rerun)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


_SIGTERM_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import jax.numpy as jnp
    from jaxloop.io.checkpoint import CheckpointManager
    mgr = CheckpointManager(sys.argv[1], save_interval_steps=1000)
    mgr.save(0, {"w": jnp.zeros(3)})
    frozen = sys.argv[2] == "frozen"
    mgr.install_signal_handlers(lambda: None if frozen else (3, {"w": jnp.full(3, 3.0)}))
    os.kill(os.getpid(), signal.SIGTERM)
""")


@pytest.mark.parametrize("mode", ["running", "frozen"])
def test_sigterm_says_which_step_was_saved_where(tmp_path, mode):
    d = tmp_path / mode
    proc = subprocess.run([sys.executable, "-c", _SIGTERM_SCRIPT, str(d), mode], capture_output=True, text=True,
                          env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT), cwd=ROOT, timeout=120)
    assert proc.returncode == 143, proc.stderr[-2000:]
    if mode == "running":
        assert f"SIGTERM: saved checkpoint step 3 in {d}" in proc.stderr
    else:
        assert f"SIGTERM: nothing saved; the newest checkpoint in {d} is step 0" in proc.stderr
    manager = CheckpointManager(d)
    assert manager.all_steps() == ([0, 3] if mode == "running" else [0])
    manager.close()


# --- 9. flags and one-line errors ---------------------------------------------------------------

@pytest.mark.parametrize("make,match", [
    (lambda: Experiment(learning_rate=math.nan), r"Experiment.learning_rate must be a finite number, got nan"),
    (lambda: Experiment(learning_rate=math.inf), r"Experiment.learning_rate must be a finite number, got inf"),
    (lambda: Experiment(max_grad_norm=math.nan), r"Experiment.max_grad_norm must be a finite number"),
    (lambda: EnvSettings(start_noise=math.inf), r"EnvSettings.start_noise must be a finite number"),
    (lambda: PPO(clip_eps=math.nan), r"PPO.clip_eps must be a finite number"),
    (lambda: GRPO(kl_coef=math.nan), r"GRPO.kl_coef must be a finite number"),
])
def test_nonfinite_config_values_are_rejected(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("args,message", [
    (["--learning-rate", "nan"], "Experiment.learning_rate must be a finite number, got nan"),
    (["--learning-rate", "inf"], "Experiment.learning_rate must be a finite number, got inf"),
    (["--steps", "-1"], "Experiment.steps must be >= 0, got -1"),
    (["--max-skip-fraction", "1.5"], "--max-skip-fraction must be in [0, 1], got 1.5"),
])
def test_train_flags_give_one_line_errors(tmp_path, capsys, args, message):
    from jaxloop.cli import main
    rc = main(["train", "--out", str(tmp_path / "r"), *args])
    err = capsys.readouterr().err
    assert rc == 2 and err == f"jaxloop train: error: {message}\n"
    assert not (tmp_path / "r").exists()


def test_train_out_in_a_cache_is_a_one_line_error(tmp_path, capsys):
    from jaxloop.cli import main
    (tmp_path / "manifest.json").write_text("{}")
    rc = main(["train", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("jaxloop train: error: --out ") and "scenario cache" in err
    assert err.count("\n") == 1


def _raise_diverged() -> int:
    raise loop.TrainingDiverged("3 updates in a row were skipped\n(at step 7)")


def _raise_bug() -> int:
    raise RuntimeError("a real bug")


def _raise_missing() -> int:
    raise FileNotFoundError("no such file: runs/x")


@pytest.fixture
def test_commands(monkeypatch):
    from jaxloop import cli
    monkeypatch.setitem(cli.COMMANDS, "diverge", f"{__name__}:_raise_diverged")
    monkeypatch.setitem(cli.COMMANDS, "bug", f"{__name__}:_raise_bug")
    monkeypatch.setitem(cli.COMMANDS, "missing", f"{__name__}:_raise_missing")
    monkeypatch.delenv("JAXLOOP_DEBUG", raising=False)
    return cli


def test_cli_error_classes_exit_codes_and_debug(test_commands, capsys, monkeypatch):
    main = test_commands.main
    assert main(["diverge"]) == 1
    assert capsys.readouterr().err == "jaxloop diverge: error: 3 updates in a row were skipped (at step 7)\n"
    assert main(["missing"]) == 2
    assert capsys.readouterr().err == "jaxloop missing: error: no such file: runs/x\n"
    with pytest.raises(RuntimeError, match="a real bug"):  # not a user error: keeps its traceback
        main(["bug"])
    with pytest.raises(loop.TrainingDiverged):
        main(["--debug", "diverge"])
    monkeypatch.setenv("JAXLOOP_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["missing"])
    from jaxloop.data.errors import DataError
    assert issubclass(DataError, JaxloopError) and issubclass(DataError, ValueError)
    assert issubclass(loop.TrainingDiverged, JaxloopError)
