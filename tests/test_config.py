"""The experiment tree: JSON round trip with the algorithm's tag, older saved settings, the CLI, traced params."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxloop.config import (APG, BC, GRPO, PPO, DataConfig, EnvSettings, EvalSettings, Experiment, from_dict,
                            from_legacy_train_config, from_saved, params_of, stack_params, to_dict)
from jaxloop.policy.observation import ObsConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXPORTED_BC = ROOT / "experiments" / "results" / "policies" / "bc"


@pytest.mark.parametrize("algo", [BC(loss="mse"), APG(truncate_every=4), PPO(num_minibatches=2), GRPO(group_size=3)])
def test_experiment_round_trips_through_json_with_its_algorithm_tag(algo):
    exp = Experiment(seed=3, steps=7, batch_size=4, algo=algo, data=DataConfig(source="procedural:train:8"),
                     env=EnvSettings(horizon=8, reward_preset="closed_loop_safety"), obs=ObsConfig(history_length=3),
                     eval=EvalSettings(horizon=20, suite="short"))
    saved = json.loads(json.dumps(to_dict(exp)))
    assert saved["algo"]["kind"] == algo.kind and saved["obs"]["history_length"] == 3
    back = from_dict(Experiment, saved)
    assert back == exp and type(back.algo) is type(algo)


def test_bad_saved_settings_name_the_field():
    saved = to_dict(Experiment())
    with pytest.raises(ValueError, match=r"Experiment.algo: 'kind' must be one of \['bc', 'apg', 'ppo', 'grpo'\], "
                                         r"got 'dqn'"):
        from_dict(Experiment, {**saved, "algo": {"kind": "dqn"}})
    with pytest.raises(ValueError, match=r"Experiment.env: unknown config keys \['horizn'\]"):
        from_dict(Experiment, {**saved, "env": {"horizn": 3}})
    with pytest.raises(ValueError, match=r"config.json: no 'experiment' \(or older 'train_config'\) entry"):
        from_saved({"run": {}})


def test_ppo_builds_a_value_head_without_changing_the_experiment():
    exp = Experiment(algo=PPO())
    assert exp.network.value_head and not exp.model.value_head  # nothing mutated in __post_init__
    assert not Experiment(algo=BC()).network.value_head


def test_older_train_config_is_converted():
    # A TrainConfig saved by the committed export: init_steps moves to data, history_length to obs, the
    # algorithm string and its section to the tagged union.
    meta = json.loads((EXPORTED_BC / "metadata.json").read_text())["metadata"]
    old = meta["train_config"]
    exp = from_saved(meta)
    assert exp == from_legacy_train_config(old)
    assert isinstance(exp.algo, BC) and exp.algo.samples_per_scenario == old["bc"]["samples_per_scenario"]
    assert (exp.data.init_steps, exp.obs.history_length, exp.model.hidden) == (
        old["init_steps"], old["history_length"], tuple(old["model"]["hidden"]))
    assert (exp.env.horizon, exp.env.reward_preset, exp.batch_size) == (old["horizon"], old["reward_preset"],
                                                                        old["batch_size"])
    apg = from_legacy_train_config({**old, "algo": "apg", "crosser_prob": 0.5})
    assert apg.algo == APG(**old["apg"]) and apg.env.crosser_prob == 0.5
    with pytest.raises(ValueError, match=r"train_config: unknown config keys \['extra'\]"):
        from_legacy_train_config({**old, "extra": 1})


def test_committed_export_still_drives():
    from jaxloop.data.toy import make_toy_scenario
    from jaxloop.sim.env import Env
    from jaxloop.io.policies import load_policy
    policy, exp = load_policy(EXPORTED_BC)
    assert isinstance(exp, Experiment) and isinstance(exp.algo, BC)
    scenario = make_toy_scenario(num_objects=8, seed=0)
    env = Env(exp.env_config())
    action = jax.jit(lambda k: policy(scenario, env.reset(scenario, k), k))(jax.random.PRNGKey(0))
    assert action.shape == (2,) and bool(jnp.all(jnp.isfinite(action)))


def test_cli_parses_the_tree_and_the_checkpoint_saves_it_whole(tmp_path):
    from jaxloop.cli import main
    from jaxloop.io.policies import config_from_checkpoint
    out = tmp_path / "run"
    rc = main(["train", "--out", str(out), "--steps", "0", "--batch-size", "4", "--data.num-toy", "4",
               "--env.horizon", "16", "algo:apg", "--algo.truncate-every", "8", "--no-progress"])
    assert rc == 0
    exp = config_from_checkpoint(out)
    assert exp.algo == APG(truncate_every=8) and exp.env.horizon == 16 and exp.batch_size == 4
    assert exp.data.init_steps == 11 and exp.data.num_toy == 4  # init_steps from the toy source's infos
    saved = json.loads((out / "checkpoints" / "config.json").read_text())
    assert saved["experiment"]["algo"]["kind"] == "apg" and "train_config" not in saved


def test_params_follow_the_experiment_and_stack():
    exp = Experiment(env=EnvSettings(reward_preset="safety_first"))
    p = params_of(exp)
    assert float(p.reward.collision) == 50.0 and p.reward.collision.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(p.env.action_limits), [6.0, 0.3])  # bicycle: accel, curvature
    both = stack_params(p, params_of(Experiment()))
    assert both.reward.collision.shape == (2,) and float(both.reward.collision[1]) == 10.0


def test_traced_action_limits_reach_the_dynamics():
    # Full throttle (normalised action 1) under a traced acceleration limit: the speed gain is limit * dt.
    from jaxloop.data.toy import make_toy_scenario
    from jaxloop.sim.env import Env, EnvParams
    exp = Experiment()
    env = Env(exp.env_config())
    scenario = make_toy_scenario(num_objects=8, seed=0)
    ego = int(scenario.object_metadata.sdc_index)

    @jax.jit
    def speed_gain(limits):
        state = env.reset(scenario, jax.random.PRNGKey(0))
        new, info = env.step(scenario, state, jnp.array([1.0, 0.0]), EnvParams(action_limits=limits))
        return new.current.speed[ego] - state.current.speed[ego], info.action[0, 0]

    (gain6, act6), (gain3, act3) = speed_gain(jnp.array([6.0, 0.3])), speed_gain(jnp.array([3.0, 0.3]))
    np.testing.assert_allclose([float(act6), float(act3)], [6.0, 3.0])
    np.testing.assert_allclose([float(gain6), float(gain3)], [0.6, 0.3], rtol=1e-3)  # a * dt, dt = 0.1 s
    assert speed_gain._cache_size() == 1
