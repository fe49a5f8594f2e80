"""The metric registry: one entry reaches step metrics, episode values, evaluation JSON, perturbation
deltas, the gate and the reward; per-object entries read at the ego equal the ego's metric."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxloop.data.toy import make_toy_scenario
from jaxloop.eval import perturb
from jaxloop.eval.evaluate import RATES, EvalConfig, EvalReport, aggregate, evaluate
from jaxloop.eval.gate import GateConfig, check
from jaxloop.sim import metrics as m
from jaxloop.sim import rewards
from jaxloop.sim.datatypes import stack_scenarios
from jaxloop.sim.env import Env
from jaxloop.sim.metrics import agents
from jaxloop.sim.rollout import rollout

SPEED_LIMIT = 11.0  # m/s


def _speed(s: m.StepInputs) -> jax.Array:
    return jnp.hypot(s.cur.vel_x, s.cur.vel_y)  # [N]


# Added at run time, each in one entry: a per-object event with a gate and a reward weight, and
# a continuous per-step value (higher is better) averaged over the episode.
SPEEDING = m.Metric("speeding", step=lambda s: s.cur.valid & (_speed(s) > SPEED_LIMIT), per_object=True,
                    reduce="any", higher_is_better=False, event=True, object_name="object_speeding",
                    gate=m.GateSpec(tolerance=0.0, limit=0.0, perturbed=True), summary=True)
SPEED = m.Metric("speed", step=lambda s: m.select_index(_speed(s), s.ego), reduce="mean",
                 higher_is_better=True)
REGISTRY = m.DEFAULT.register(SPEEDING, SPEED)
CONFIG = EvalConfig(batch_size=3, horizon=12, registry=REGISTRY)


@pytest.fixture(scope="module")
def toy_set():
    scenarios = stack_scenarios([make_toy_scenario(num_objects=4, num_steps=30, num_cars=3, seed=s)
                                 for s in range(3)])
    return scenarios, [{"scenario_id": f"toy-{s}", "family": "toy"} for s in range(3)]


def speed_up(scenario, state, key):
    return jnp.array([3.0, 0.0])


@pytest.fixture(scope="module")
def suite(toy_set):
    # One evaluation (one compile). The deltas and the gate under a perturbation read reports,
    # so the "perturbed" report here is the clean one's rows with no episode speeding.
    scenarios, infos = toy_set
    clean = evaluate(speed_up, scenarios, infos, CONFIG, name="speed_up")
    suite = perturb.run_suite(speed_up, scenarios, infos, CONFIG, perturbations=[], clean=clean)
    rows = [dict(r, speeding=0.0) for r in clean.per_scenario]
    suite.perturbed["calm"] = EvalReport("speed_up [calm]", rows, aggregate(rows, REGISTRY), {}, registry=REGISTRY)
    return suite


# ----------------------------------------------------------------------------- one entry, every consumer


def test_an_added_metric_reaches_eval_json_deltas_and_the_gate(suite):
    clean, calm = suite.clean, suite.perturbed["calm"]
    assert suite.registry is REGISTRY  # from EvalConfig.registry
    # Eval JSON: a per-scenario value and an aggregate (a rate for the event, a mean for the rest).
    loaded = json.loads(clean.to_json())
    rows = loaded["per_scenario"]
    assert all(r["speeding"] in (0.0, 1.0) and r["speed"] > 0.0 for r in rows)
    rate = loaded["aggregate"]["speeding_rate"]
    assert rate == pytest.approx(np.mean([r["speeding"] for r in rows]))
    assert loaded["aggregate"]["speed"] == pytest.approx(np.mean([r["speed"] for r in rows]))
    assert rate > 0.0  # 3 m/s² for 1.2 s takes the 8-12 m/s cars past 11 m/s
    assert loaded["better"]["speeding_rate"] == "lower" and loaded["better"]["speed"] == "higher"
    assert "speeding_rate" in clean.to_markdown()  # a summary column
    # Perturbation deltas.
    d = suite.to_dict()
    assert d["deltas"]["calm"]["speeding_rate"] == pytest.approx(-rate) and d["deltas"]["calm"]["speed"] == 0.0
    assert d["mean_perturbed"]["speeding_rate"] == 0.0 and d["better"]["speeding_rate"] == "lower"
    assert "| calm | " in suite.to_markdown() and "Δ speeding_rate" in suite.to_markdown()
    # The gate: non-regression against the baseline (clean and perturbed) and the absolute limit.
    res = check(suite, suite, GateConfig())
    names = {c["name"]: c for c in res.checks}
    assert names["held-out speeding rate vs baseline"]["ok"] and names["calm: speeding rate vs baseline"]["ok"]
    assert res.reasons == [f"held-out speeding rate: {rate:.3f} > limit 0.000"]
    # The default registry's checks are all there, and a registry without the entry does not check it.
    assert {"held-out failure rate vs baseline", "held-out failure rate", "held-out collision rate",
            "held-out offroad rate", "held-out red-light rate", "held-out progress ratio",
            "calm: failure rate vs baseline", "calm: failure rate"} <= set(names)
    plain = check(suite, suite, GateConfig(), registry=m.DEFAULT)
    assert plain.passed and not any("speeding" in c["name"] for c in plain.checks)
    # Speeding where the baseline does not, under the perturbation, is a regression.
    speeding = perturb.SuiteReport(clean, {"calm": clean}, registry=REGISTRY)
    res = check(speeding, suite, GateConfig())
    assert f"calm: speeding rate vs baseline: {rate:.3f} > limit 0.000" in res.reasons
    # A default evaluation knows nothing of it.
    assert "speeding" not in m.DEFAULT and "speeding_rate" not in RATES


EVERY = m.MetricsConfig(per_object_overlap=True, per_object_offroad=True, per_object_red_light=True,
                        per_object_log_divergence=True, per_agent=True)
EGO_ONLY = m.MetricsConfig(per_object_overlap=False, per_object_offroad=False, per_object_red_light=False,
                           per_object_log_divergence=False)
# The reward names an existing weight: the infeasibility term swapped for speeding.
SWAPPED = m.DEFAULT.without("infeasible").register(
    m.Metric("speeding", step=SPEEDING.step, per_object=True, reduce="any", reward_weight="infeasible"))
WEIGHTS = rewards.RewardWeights(infeasible=2.0)


@pytest.fixture(scope="module")
def rolled(toy_set):
    # One compiled rollout for the tests below. The car of the other lane is moved 12 m back,
    # beside the ego, and the ego steers into it and on over the road edge (contacts and
    # offroad corners on some steps, not all).
    scenarios, _ = toy_set
    log = scenarios.log_trajectory
    scenarios = scenarios.replace(log_trajectory=log.replace(x=jnp.asarray(log.x).at[:, 1].add(-12.0)))
    env = Env()

    def extras(s, prev, new, info):
        sdc = s.object_metadata.is_sdc
        return dict(per=m.step_metrics(s, prev, new, info, config=EVERY, registry=REGISTRY),
                    ego=m.step_metrics(s, prev, new, info, config=EGO_ONLY, registry=REGISTRY),
                    reward=rewards.step_reward(s, prev, new, WEIGHTS),
                    swapped=rewards.step_reward(s, prev, new, WEIGHTS, registry=SWAPPED),
                    infeasible=m.kinematic_infeasibility(m.take_object(prev.current, sdc),
                                                         m.take_object(new.current, sdc)),
                    agents=agents.agent_step_metrics(s, prev, new, info))

    def go(sc):
        state = env.reset(sc, jax.random.key(0))
        policy = lambda scenario, s, key: jnp.array([1.0, 0.05])
        _, out = rollout(env, sc, state, policy, 15, extras_fn=extras)
        return (out.extras, m.episode_metrics(sc, out, out.extras["per"], registry=REGISTRY),
                agents.agent_episode_metrics(sc, out, out.extras["agents"]))

    x, ep, agent_ep = jax.jit(jax.vmap(go))(scenarios)
    return np.asarray(scenarios.object_metadata.is_sdc), dict(x, agent_episode=agent_ep), ep


def _at_sdc(a, sdc):
    """`[B, H]` from `[B, H, N]` at each scenario's SDC."""
    return np.stack([np.asarray(a)[b][:, sdc[b]][:, 0] for b in range(sdc.shape[0])])


def test_an_added_metric_in_step_and_episode_metrics_and_the_reward(rolled):
    sdc, x, ep = rolled
    steps = x["per"]
    assert steps["speeding"].shape == (3, 15, 4) and steps["ego_speeding"].shape == (3, 15)
    assert bool(steps["ego_speeding"].any()) and not bool(steps["ego_speeding"].all())
    np.testing.assert_array_equal(ep["speeding"], np.asarray(steps["ego_speeding"]).any(1).astype(np.float32))
    assert ep["object_speeding"].shape == (3, 4)
    np.testing.assert_array_equal(ep["object_speeding"], np.asarray(steps["speeding"] & steps["valid"]).any(1))
    np.testing.assert_allclose(ep["speed"], np.mean(steps["ego_speed"], 1), rtol=1e-6)
    # reward - swapped = -2 * infeasible + 2 * speeding on every (valid) step.
    expected = -2.0 * np.asarray(x["infeasible"], np.float32) + 2.0 * np.asarray(steps["ego_speeding"], np.float32)
    np.testing.assert_allclose(np.asarray(x["reward"] - x["swapped"]), expected, atol=1e-5)


def test_a_reward_weight_that_is_no_field_is_refused(toy_set):
    bad = m.DEFAULT.register(m.Metric("speeding", step=SPEEDING.step, per_object=True, reward_weight="speed_bonus"))
    sc = jax.tree.map(lambda a: a[0], toy_set[0])
    state = Env().reset(sc, jax.random.key(0))
    with pytest.raises(ValueError, match="reward_weight 'speed_bonus' is not a RewardWeights field"):
        rewards.step_reward(sc, state, state, WEIGHTS, registry=bad)


# ----------------------------------------------------------------------------- per object at the ego


def test_per_object_entries_at_the_ego_equal_the_ego_metric(rolled):
    # Every per-object entry of the registry, read at the SDC, equals the ego output and the
    # ego-only form (computed without the [N] form where a MetricsConfig flag turns it off).
    sdc, x, ep = rolled
    per, ego = x["per"], x["ego"]
    per_object = [e for e in REGISTRY if e.per_object]
    assert {e.name for e in per_object} >= {"valid", "raw_collision", "raw_offroad", "red_light", "log_valid", "ade",
                                            "speeding"}
    assert {e.objects_key for e in per_object} >= {"agent_contact", "agent_overlap_at_fault", "agent_offroad_at_fault"}
    for e in per_object:
        k, k_ego = e.objects_key, f"ego_{e.step_key}"
        assert k in per and (k in ego) == (not e.flags), k
        np.testing.assert_array_equal(_at_sdc(per[k], sdc), np.asarray(per[k_ego]), err_msg=k)
        np.testing.assert_array_equal(_at_sdc(per[k], sdc), np.asarray(ego[k_ego]), err_msg=k)
    for k in ("ego_overlap", "ego_offroad"):  # the test sees both outcomes
        assert np.asarray(ego[k]).any() and not np.asarray(ego[k]).all(), k
    assert np.asarray(per["agent_overlap_at_fault"]).any()  # at-fault contacts of the ego and the car it hits
    # The per-agent entries are the per-agent metrics of `jaxloop.sim.metrics.agents`.
    for k in ("agent_contact", "agent_offroad_at_fault", "agent_valid", "agent_offroad"):
        np.testing.assert_array_equal(per[{"agent_valid": "valid", "agent_offroad": "offroad"}.get(k, k)],
                                      x["agents"][k], err_msg=k)
    for e in REGISTRY:
        if e.object_reduce is not None:
            np.testing.assert_array_equal(ep[e.object_name], x["agent_episode"][e.object_name[len("agent_"):]],
                                          err_msg=e.name)
    # Episode values per object read at the ego equal the ego's.
    for e in (REGISTRY["raw_collision"], SPEEDING, REGISTRY["collision"], REGISTRY["offroad"], REGISTRY["raw_offroad"]):
        np.testing.assert_array_equal(np.asarray(ep[e.object_name])[sdc].astype(np.float32), np.asarray(ep[e.name]),
                                      err_msg=e.name)


# ----------------------------------------------------------------------------- semantics


def test_reductions_over_masked_steps():
    v = jnp.array([1.0, 5.0, 2.0, 7.0])
    mask = jnp.array([True, True, True, False])
    none = jnp.zeros(4, bool)
    # Over the first three steps: mean (1 + 5 + 2) / 3, sum 8, min 1, max 5, last 2.
    expect = {"mean": 8.0 / 3.0, "sum": 8.0, "min": 1.0, "max": 5.0, "last": 2.0}
    for name, value in expect.items():
        assert float(m.reduce_steps(name, v, mask, empty=-1.0)) == pytest.approx(value), name
    # No masked step: the entry's empty value (0 for sum).
    assert {k: float(m.reduce_steps(k, v, none, empty=-1.0)) for k in expect} == {
        "mean": -1.0, "sum": 0.0, "min": -1.0, "max": -1.0, "last": -1.0}
    b = jnp.array([False, False, False, True])
    assert float(m.reduce_steps("any", b, mask)) == 0.0 and float(m.reduce_steps("any", b, ~mask)) == 1.0
    # Per object [H, N]: each column on its own.
    v2 = jnp.stack([v, -v], 1)
    np.testing.assert_allclose(m.reduce_steps("last", v2, jnp.stack([mask, ~mask], 1)), [2.0, -7.0])
    with pytest.raises(ValueError, match="unknown reduction 'median'"):
        m.reduce_steps("median", v, mask)


def test_direction_aggregates_and_nonfinite_rules():
    lower, higher = m.DEFAULT["collision"], m.DEFAULT["progress_ratio"]
    assert lower.better(0.1, 0.2) and not lower.better(0.2, 0.1)
    assert higher.better(0.9, 0.8) and not higher.better(0.8, 0.9)
    assert (lower.aggregate_name, higher.aggregate_name) == ("collision_rate", "progress_ratio")
    assert m.DEFAULT.at_fault("raw_collision").name == "collision" and m.DEFAULT.at_fault("ade").name == "ade"
    # Non-finite episodes: events happened, continuous values undefined, counts kept, score 0.
    rules = {k: m.DEFAULT[k].nonfinite for k in ("failure", "raw_offroad", "ade", "progress", "collision_pairs",
                                                  "log_progress", "score")}
    assert rules == {"failure": "one", "raw_offroad": "one", "ade": "nan", "progress": "nan", "collision_pairs": "keep",
                     "log_progress": "keep", "score": "zero"}
    out = {"speeding": jnp.float32(0.0), "speed": jnp.float32(3.0), "score": jnp.float32(0.5)}
    bad = m.mark_nonfinite(out, jnp.float32(1.0), registry=REGISTRY)
    assert float(bad["speeding"]) == 1.0 and np.isnan(float(bad["speed"])) and float(bad["score"]) == 0.0


def test_gate_direction_of_a_higher_is_better_entry():
    # A higher-is-better entry fails the non-regression check when the candidate is lower than the
    # baseline minus the tolerance, and its absolute limit is a lower bound.
    comfort = m.Metric("smooth", step=lambda s: s.e.valid, reduce="mean", higher_is_better=True,
                       gate=m.GateSpec(tolerance=0.05, limit=0.5))
    registry = m.DEFAULT.register(comfort)

    def suite(value):
        agg = {"num_scenarios": 2, "failure_rate": 0.0, "collision_rate": 0.0, "offroad_rate": 0.0,
               "red_light_rate": 0.0, "progress_ratio": 1.0, "smooth": value}
        rows = [{"scenario_id": "s0", "nonfinite": 0.0}]
        return perturb.SuiteReport(clean=EvalReport("p", rows, agg, {}, registry=registry), perturbed={},
                                   registry=registry)

    base = suite(0.9)
    assert check(suite(0.86), base).passed  # within 0.05 below
    res = check(suite(0.8), base)
    assert res.reasons == ["held-out smooth vs baseline: 0.800 < limit 0.850"]
    assert check(suite(0.4), suite(0.4)).reasons == ["held-out smooth: 0.400 < limit 0.500"]
    assert check(suite(1.0), base).passed  # higher is better: above the baseline is no regression
    # A report that lacks the gated aggregate fails with a reason naming it.
    missing = check(perturb.SuiteReport(clean=EvalReport("p", [], {"progress_ratio": 1.0}, {}), perturbed={}),
                    base, registry=registry)
    assert "held-out smooth: not in the candidate's report" in missing.reasons


def test_bad_entries_are_refused_with_the_field_named():
    step = lambda s: s.e.valid
    with pytest.raises(ValueError, match="reduce must be one of"):
        m.Metric("x", step=step, reduce="median")
    with pytest.raises(ValueError, match="a gated metric needs a direction"):
        m.Metric("x", step=step, reduce="any", gate=m.GateSpec(limit=0.1))
    with pytest.raises(ValueError, match="per_object_flag 'per_object_speed' is not a MetricsConfig field"):
        m.Metric("x", step=step, per_object=True, ego_step=step, per_object_flag="per_object_speed")
    with pytest.raises(ValueError, match="duplicate metric names"):
        m.DEFAULT.register(m.Metric("ade", step=step))
    with pytest.raises(ValueError, match="several entries compute the step output"):
        m.DEFAULT.register(m.Metric("x", key="ttc", step=step))
    with pytest.raises(ValueError, match="at_fault 'nope' is not in the registry"):
        m.DEFAULT.register(m.Metric("x", step=step, reduce="any", at_fault="nope"))
    with pytest.raises(ValueError, match="valid 'nope' is no entry's step output"):
        m.DEFAULT.register(m.Metric("x", step=step, reduce="mean", valid="nope"))
    with pytest.raises(ValueError, match="EvalConfig.registry must be"):
        EvalConfig(registry=[SPEEDING])
    with pytest.raises(ValueError, match="not a GateConfig field"):
        m.GateSpec(limit="max_speeding_rate").resolve("limit", GateConfig())
    with pytest.raises(KeyError, match="no metric 'nope'"):
        m.DEFAULT["nope"]
