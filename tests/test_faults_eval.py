"""Fault suite for evaluation, the gate and the Waymax bridge: each case feeds one fault
and asserts the exact outcome."""

import importlib
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxloop.data.toy import make_toy_scenario
from jaxloop.eval import cli as eval_cli
from jaxloop.eval import evaluate as evaluate_mod
from jaxloop.eval import perturb
from jaxloop.sim import perturb as perturbations
from jaxloop.eval.evaluate import EvalConfig, EvalReport, NonFiniteEpisodeWarning, check_scenarios, evaluate
from jaxloop.eval.gate import GateConfig, check
from jaxloop.interop import waymax as bridge
from jaxloop.sim.datatypes import stack_scenarios
from jaxloop.sim.env import Env
from jaxloop.sim.metrics import mark_nonfinite
from jaxloop.sim.rollout import rollout

CONFIG = EvalConfig(batch_size=3, horizon=12)
IDS = ["toy-0", "toy-1", "toy-2"]


@pytest.fixture(scope="module")
def toy_set():
    scenarios = stack_scenarios([make_toy_scenario(seed=s, num_cars=3) for s in range(3)])
    return scenarios, [{"scenario_id": i, "family": "toy"} for i in IDS]


def nan_policy(scenario, state, key):
    return jnp.full((2,), jnp.nan)


def coast_policy(scenario, state, key):
    return jnp.zeros(2)


def nan_for_family_7(scenario, state, key):
    # NaN weights reach only the scenario marked 7 (object id 7 in slot 0); the others coast.
    return jnp.where(scenario.object_metadata.ids[0] == 7, jnp.nan, 0.0) * jnp.ones(2)


# ----------------------------------------------------------------------------- NaN rollouts


def test_nan_policy_is_a_failure_on_every_episode_and_warns_with_the_ids(toy_set):
    scenarios, infos = toy_set
    with pytest.warns(NonFiniteEpisodeWarning, match="3 of 3 episodes.*toy-0, toy-1, toy-2"):
        rep = evaluate(nan_policy, scenarios, infos, CONFIG, name="nan")
    agg = rep.aggregate
    assert agg["failure_rate"] == 1.0 and agg["collision_rate"] == 1.0 and agg["offroad_rate"] == 1.0
    assert agg["nonfinite_rate"] == 1.0 and agg["num_nonfinite"] == 3
    assert agg["score"] == 0.0
    # No finite episode: the continuous aggregates have no value rather than a made-up one.
    assert np.isnan(agg["progress_ratio"]) and np.isnan(agg["ade"])
    assert rep.nonfinite_ids == IDS
    # The JSON report is valid JSON: NaN becomes null.
    loaded = json.loads(rep.to_json(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c} in report"))
    assert loaded["aggregate"]["ade"] is None and loaded["per_scenario"][0]["nonfinite"] == 1.0


def test_one_nan_episode_fails_alone_and_continuous_metrics_average_the_finite_ones(toy_set):
    scenarios, infos = toy_set
    ids = np.asarray(scenarios.object_metadata.ids).copy()
    ids[:, 0] = [0, 7, 0]
    marked = scenarios.replace(object_metadata=scenarios.object_metadata.replace(ids=ids))
    with pytest.warns(NonFiniteEpisodeWarning, match=r"1 of 3 episodes, scored as failures: toy-1$"):
        rep = evaluate(nan_for_family_7, marked, infos, CONFIG)
    coast = evaluate(coast_policy, marked, infos, CONFIG)  # the same finite episodes, all three
    agg, rows = rep.aggregate, coast.per_scenario
    assert [r["nonfinite"] for r in rep.per_scenario] == [0.0, 1.0, 0.0]
    assert agg["num_nonfinite"] == 1 and agg["nonfinite_rate"] == pytest.approx(1 / 3)
    # failure: toy-1 counts 1, the others as the coasting run scored them.
    assert agg["failure_rate"] == pytest.approx((rows[0]["failure"] + 1.0 + rows[2]["failure"]) / 3)
    assert agg["collision_rate"] == pytest.approx((rows[0]["collision"] + 1.0 + rows[2]["collision"]) / 3)
    # ade over toy-0 and toy-2 only, and finite.
    assert np.isfinite(agg["ade"]) and agg["ade"] == pytest.approx((rows[0]["ade"] + rows[2]["ade"]) / 2)
    assert agg["progress_ratio"] == pytest.approx((rows[0]["progress_ratio"] + rows[2]["progress_ratio"]) / 2)
    assert agg["score"] == pytest.approx((rows[0]["score"] + 0.0 + rows[2]["score"]) / 3)


def test_mark_nonfinite_counts_every_event_and_fault_attributed_collisions():
    one, zero = jnp.float32(1.0), jnp.float32(0.0)
    out = {"failure": zero, "collision": zero, "offroad": zero, "at_fault_collision": zero, "red_light": zero,
           "ade": jnp.float32(2.0), "log_progress": jnp.float32(30.0), "score": jnp.float32(0.9),
           "object_collision": jnp.zeros(4)}
    bad = mark_nonfinite(out, one)
    assert {k: float(bad[k]) for k in ("failure", "collision", "offroad", "at_fault_collision", "red_light",
                                       "score", "nonfinite")} == {
        "failure": 1.0, "collision": 1.0, "offroad": 1.0, "at_fault_collision": 1.0, "red_light": 1.0,
        "score": 0.0, "nonfinite": 1.0}
    assert np.isnan(float(bad["ade"]))
    assert float(bad["log_progress"]) == 30.0  # the log's own progress stays finite
    np.testing.assert_array_equal(bad["object_collision"], np.zeros(4))  # per-object rows untouched
    good = mark_nonfinite(out, zero)
    assert all(np.array_equal(good[k], out[k]) for k in out) and float(good["nonfinite"]) == 0.0


# ----------------------------------------------------------------------------- the gate


def _report(rows_nonfinite, name="candidate"):
    rows = [{"scenario_id": f"s{i}", "family": "toy", "nonfinite": float(b)} for i, b in enumerate(rows_nonfinite)]
    agg = {"num_scenarios": len(rows), "failure_rate": 0.0, "collision_rate": 0.0, "offroad_rate": 0.0,
           "red_light_rate": 0.0, "progress_ratio": 1.0}
    return EvalReport(name=name, per_scenario=rows, aggregate=agg, per_family={})


def test_gate_fails_a_candidate_with_one_nonfinite_episode_even_with_perfect_rates():
    clean = perturb.SuiteReport(clean=_report([0, 0]), perturbed={"ego_noise": _report([0, 0])})
    bad = perturb.SuiteReport(clean=_report([0, 0]), perturbed={"ego_noise": _report([0, 1])})
    assert check(clean, clean).passed
    res = check(bad, clean)
    assert not res.passed
    assert res.reasons == ["ego_noise: the candidate has non-finite (NaN / inf) ego states in 1 of 2 episodes "
                           "(s1); expected none, non-finite episodes are failures"]
    # A baseline with non-finite episodes is no reference either.
    res = check(clean, bad)
    assert not res.passed and res.reasons[0].startswith("ego_noise: the baseline has non-finite")


def test_gate_fails_the_nan_policy_with_the_nonfinite_reason(toy_set):
    scenarios, infos = toy_set
    suite = [perturbations.ego_noise(pos_std=0.5)]
    with pytest.warns(NonFiniteEpisodeWarning):
        nan = perturb.run_suite(nan_policy, scenarios, infos, CONFIG, perturbations=suite, name="nan")
    expert = perturb.run_suite("expert", scenarios, infos, CONFIG, perturbations=suite)
    res = check(nan, expert, GateConfig())
    assert not res.passed
    assert res.reasons[0] == ("held-out: the candidate has non-finite (NaN / inf) ego states in 3 of 3 episodes "
                              "(toy-0, toy-1, toy-2); expected none, non-finite episodes are failures")
    assert res.reasons[1].startswith("ego_noise: the candidate has non-finite")
    assert any(r.startswith("held-out collision rate: 1.000 > limit") for r in res.reasons)


# ----------------------------------------------------------------------------- inputs and flags


def _set(a, index, value):
    out = np.array(a)
    out[index] = value
    return out


def test_nan_coordinate_at_a_valid_step_is_an_error_naming_the_scenario_before_any_rollout(toy_set, monkeypatch):
    scenarios, infos = toy_set
    log = scenarios.log_trajectory
    bad = scenarios.replace(log_trajectory=log.replace(x=_set(log.x, (1, 2, 30), np.nan)))
    monkeypatch.setattr(evaluate_mod, "make_episode_fn", lambda *a, **k: pytest.fail("a rollout was built"))
    with pytest.raises(ValueError, match=r"in 1 of 3 scenarios: toy-1 \(log_trajectory.x\); expected finite"):
        evaluate("expert", bad, infos, CONFIG)
    # Padding (invalid) steps may hold anything: slot 5 of the toy scenarios is never valid.
    assert not bool(np.asarray(log.valid)[:, 5].any())
    ok = scenarios.replace(log_trajectory=log.replace(x=_set(log.x, (1, 5, 30), np.nan)))
    assert check_scenarios(ok, infos, CONFIG) == 3


def test_nan_in_one_cache_shard_is_an_error_naming_the_scenario(tmp_path):
    from jaxloop.data import pipeline
    scenarios = [make_toy_scenario(seed=s, num_cars=3) for s in range(3)]
    log = scenarios[2].log_trajectory
    scenarios[2] = scenarios[2].replace(log_trajectory=log.replace(y=_set(log.y, (0, 40), np.inf)))
    pipeline.write_cache(scenarios, tmp_path / "cache", [{"scenario_id": i, "format": "toy"} for i in IDS],
                         shard_size=1)
    with pytest.raises(ValueError, match="toy-2"):
        eval_cli.run_eval(policy="expert", data=str(tmp_path / "cache"), horizon=5, batch_size=3)


@pytest.mark.parametrize("horizon", [-5, 0, 2.5, True])
def test_horizon_below_one_or_not_an_int_is_rejected_by_the_config(horizon):
    with pytest.raises(ValueError, match=rf"EvalConfig.horizon must be None .* or an int >= 1 .* got {horizon!r}"):
        EvalConfig(horizon=horizon)


def test_horizon_past_the_log_is_an_error_with_the_steps_available(toy_set):
    scenarios, infos = toy_set  # 91 log steps, init 11: 80 closed-loop steps
    with pytest.raises(ValueError, match=r"horizon=81 exceeds the 80 closed-loop steps .* expected 1..80 or None"):
        evaluate("expert", scenarios, infos, EvalConfig(horizon=81))
    assert check_scenarios(scenarios, infos, EvalConfig(horizon=80)) == 3


def test_eval_cli_rejects_a_negative_horizon_before_loading_data(monkeypatch):
    import jaxloop.data.sources as sources
    monkeypatch.setattr(sources, "load_source", lambda *a, **k: pytest.fail("data loaded before the flags"))
    with pytest.raises(ValueError, match="EvalConfig.horizon must be"):
        eval_cli.run_eval(policy="expert", data="toy:2", horizon=-5)


def test_gate_cli_checks_the_baseline_and_the_horizon_before_running_the_candidate(monkeypatch, tmp_path):
    monkeypatch.setattr(perturb, "run_suite", lambda *a, **k: pytest.fail("a suite ran before validation"))
    with pytest.raises(ValueError, match=r"--baseline 'no/such/run': neither a baseline"):
        eval_cli.run_gate(candidate="idm", baseline="no/such/run", data="toy:2", out=str(tmp_path / "g.json"))
    with pytest.raises(ValueError, match=r"--candidate 'nope'"):
        eval_cli.run_gate(candidate="nope", baseline="expert", data="toy:2", out=str(tmp_path / "g.json"))
    with pytest.raises(ValueError, match="horizon=200 exceeds the 80 closed-loop steps"):
        eval_cli.run_gate(candidate="idm", baseline="expert", data="toy:2", horizon=200,
                          out=str(tmp_path / "g.json"))


# ----------------------------------------------------------------------------- Waymax bridge


def _stepped(scenario, steps):
    env = Env()
    state = env.reset(scenario, jax.random.key(0))
    final, _ = rollout(env, scenario, state, coast_policy, steps)
    return final


def _assert_tree_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb) and jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_waymax_fields_under_jit_vmap_equal_the_unjitted_ones():
    scenarios = [make_toy_scenario(seed=s, num_cars=3) for s in range(2)]
    states = [_stepped(sc, 3 + 4 * i) for i, sc in enumerate(scenarios)]  # timesteps 13 and 17: traced, differ
    batched = jax.jit(jax.vmap(bridge.to_waymax_fields))(stack_scenarios(scenarios),
                                                         jax.tree.map(lambda *a: jnp.stack(a), *states))
    assert isinstance(batched, bridge.WaymaxFields)
    np.testing.assert_array_equal(batched.timestep, [13, 17])
    for i in range(2):
        _assert_tree_equal(jax.tree.map(lambda a: a[i], batched), bridge.to_waymax_fields(scenarios[i], states[i]))
    f = bridge.to_waymax_fields(scenarios[1], states[1])
    # The sim trajectory is the state's history on steps 13..17 and the log elsewhere.
    np.testing.assert_array_equal(f.sim_trajectory.x[:, 13:18], states[1].history.x)
    np.testing.assert_array_equal(f.sim_trajectory.x[:, 18:], scenarios[1].log_trajectory.x[:, 18:])
    assert not np.array_equal(f.sim_trajectory.x[0, 17], scenarios[1].log_trajectory.x[0, 17])  # coasting ego
    np.testing.assert_array_equal(f.object_metadata.is_controlled, np.arange(8) == 0)
    assert f.log_traffic_light.x.shape == scenarios[1].traffic_lights.x.shape  # [L, T] both sides


@pytest.mark.parametrize("steps", [0, 6])
def test_waymax_fields_round_trip_is_exact(steps):
    scenario = make_toy_scenario(seed=3, num_cars=3)
    state = _stepped(scenario, steps) if steps else Env().reset(scenario, jax.random.key(0))
    back = jax.jit(bridge.from_waymax_fields)(bridge.to_waymax_fields(scenario, state))
    _assert_tree_equal(back.log_trajectory, scenario.log_trajectory)
    _assert_tree_equal(back.object_metadata, scenario.object_metadata)
    _assert_tree_equal(back.traffic_lights, scenario.traffic_lights)
    _assert_tree_equal(back.history, state.history)
    assert int(back.timestep) == int(state.timestep) == 10 + steps
    # Without a state: the initial step, and the sim trajectory is the log itself.
    init = bridge.to_waymax_fields(scenario)
    assert int(init.timestep) == 10
    _assert_tree_equal(init.sim_trajectory, init.log_trajectory)


def test_to_waymax_without_waymax_names_the_missing_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "waymax", None)
    with pytest.raises(ImportError, match="needs the real Waymax"):
        bridge.wrap_waymax(bridge.to_waymax_fields(make_toy_scenario()))


def test_waymax_benchmark_imports_and_reports_that_waymax_is_missing(monkeypatch, capsys):
    module = importlib.import_module("benchmarks.waymax_compare")
    assert module.to_waymax is bridge.to_waymax
    with pytest.raises(SystemExit) as e:
        module.main(["--help"])
    assert e.value.code == 0 and "waymax_compare" in capsys.readouterr().out
    monkeypatch.setitem(sys.modules, "waymax", None)
    module.main(["--quick"])
    line = json.loads(capsys.readouterr().out.strip())
    assert line["bench"] == "waymax_compare"
    assert line["skipped"].startswith("the real Waymax is not installed") and "waymo-waymax" in line["skipped"]


def test_gate_command_names_a_bad_baseline_in_one_line(capsys, tmp_path):
    from jaxloop.cli import main
    assert main(["gate", "--candidate", "expert", "--baseline", "nope", "--data", "toy:2",
                 "--out", str(tmp_path / "g.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["jaxloop gate: error: --baseline 'nope': neither a baseline (expert, constant_velocity, idm) nor "
                   "an existing checkpoint, run or exported policy directory"]
