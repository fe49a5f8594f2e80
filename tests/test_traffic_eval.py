"""Evaluation against any traffic: per-agent metrics equal the ego's at its index, a traffic actor
drives only the non-ego objects, and `jaxloop eval --non-ego policy:RUN` reports per-agent rates (RUN a
training run or an exported policy; `jaxloop gate --non-ego` takes the same traffic)."""

import glob
import json
import pathlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _train_utils import scenarios as tiny_scenarios
from _train_utils import tiny_config
from jaxloop.data.toy import make_track_scenario
from jaxloop.eval import cli
from jaxloop.eval.evaluate import EvalConfig, make_rollout_fn
from jaxloop.sim import metrics as m
from jaxloop.sim.actor import (Actor, ActorOutput, Observation, baseline_actor, policy_controlled, stateless_init,
                               with_traffic)
from jaxloop.sim.datatypes import stack_scenarios
from jaxloop.sim.env import Env, EnvConfig
from jaxloop.sim.metrics import agents as am

H = 40  # closed-loop steps of the hand-built scene
BRAKE, STEER = 1, 2  # traffic the table actor drives: the car ahead brakes, the one beside steers off the road
LEFT_ALONE = (3, 4, 5)  # policy objects the table actor leaves to the log


def _track(x0, y, speed, steps, length=4.5):
    x = x0 + speed * 0.1 * np.arange(steps)
    return {"x": x, "y": np.full(steps, y), "yaw": np.zeros(steps), "vel_x": np.full(steps, speed),
            "vel_y": np.zeros(steps), "length": length}


def _scene():
    """Straight road (edges at y = -1.75 and 5.25). 0: the ego at 10 m/s; 1: 25 m ahead at 10 m/s; 2: beside it;
    3: logged off the road (y = 6.5, a map artefact); 4, 5: parked with overlapping boxes in the log."""
    steps = 11 + H
    tracks = [_track(0.0, 0.0, 10.0, steps), _track(25.0, 0.0, 10.0, steps), _track(0.0, 3.5, 10.0, steps),
              _track(-20.0, 6.5, 5.0, steps), _track(150.0, 3.5, 0.0, steps), _track(153.0, 3.5, 0.0, steps)]
    return make_track_scenario(tracks)


def _table_traffic(num_objects: int) -> Actor:
    """Traffic: object 1 brakes to a stop (at most 6 m/s², the bicycle's limit), object 2 steers left;
    LEFT_ALONE not driven."""
    steer = np.zeros((num_objects, 2), np.float32)
    steer[STEER] = (0.0, 0.05)
    keep = np.ones(num_objects, bool)
    keep[list(LEFT_ALONE)] = False

    def select_action(params, obs, actor_state, key):
        cur = obs.state.current
        stop = jnp.maximum(-jnp.hypot(cur.vel_x[BRAKE], cur.vel_y[BRAKE]) / 0.1, -6.0)
        action = jnp.asarray(steer).at[BRAKE, 0].set(stop)
        return ActorOutput(action=action, controlled=policy_controlled(obs.state) & keep, actor_state=actor_state,
                           aux={})

    return Actor(init=stateless_init, select_action=select_action, name="table")


@pytest.fixture(scope="module")
def traffic_episode():
    """The expert ego with the table traffic (one compile): the scenario, the rollout and both episode metrics."""
    sc = _scene()
    config = EvalConfig(env=EnvConfig(controlled="vehicles"))
    actor = with_traffic(baseline_actor("expert", 2), _table_traffic(sc.num_objects))

    @jax.jit
    def run(scenario, key):
        scenario, out = make_rollout_fn(actor, config, H, agents=True)(scenario, key)
        return out, m.episode_metrics(scenario, out), am.agent_episode_metrics(scenario, out)

    return (sc,) + jax.device_get(run(sc, jax.random.key(0)))


def test_traffic_actor_drives_only_the_non_ego_objects(traffic_episode):
    sc, out, ego_ep, agent_ep = traffic_episode
    log = sc.log_trajectory
    steps = np.asarray(out.timesteps)
    logged = lambda f, i: np.asarray(getattr(log, f))[i, steps]
    # The ego (the expert baseline's log replay) and the objects the traffic leaves alone are exactly the log.
    for i in (0,) + LEFT_ALONE:
        for f in ("x", "y", "yaw"):
            np.testing.assert_array_equal(np.asarray(getattr(out.states, f))[:, i], logged(f, i), err_msg=f"{i} {f}")
    # The traffic's objects follow its actions: the braked car stops short of its log, the steered one turns left.
    speed = np.hypot(out.states.vel_x[:, BRAKE], out.states.vel_y[:, BRAKE])
    assert speed[-1] < 0.05 and out.states.x[-1, BRAKE] < logged("x", BRAKE)[-1] - 20.0
    assert out.states.y[-1, STEER] > 5.25 and out.states.yaw[-1, STEER] > 0.5
    # Masks: the ego is never the traffic's, the left-alone objects nobody's.
    controlled = np.asarray(out.aux["controlled"])
    assert not controlled[:, 0].any() and controlled[:, [BRAKE, STEER]].all()
    assert not controlled[:, list(LEFT_ALONE)].any()
    assert ego_ep["collision"] == 1.0  # the expert ego runs into the car that braked


def test_per_agent_metrics_of_the_hand_built_scene(traffic_episode):
    sc, out, ego_ep, agent_ep = traffic_episode
    ex = out.extras
    # At the ego's index, the per-agent step and episode metrics are the ego's own.
    np.testing.assert_array_equal(ex["agent_contact"][:, 0], ex["ego_contact"])
    np.testing.assert_array_equal(ex["agent_offroad_at_fault"][:, 0], ex["ego_offroad_at_fault"])
    np.testing.assert_array_equal(ex["agent_offroad"][:, 0], ex["ego_offroad"])
    for k in ("collision", "offroad", "raw_collision", "raw_offroad"):
        assert agent_ep[k][0] == ego_ep[k], k
    # Who is blamed: the ego ran into the stopped car (at fault), which was hit (not at fault); the parked
    # pair overlaps as logged (raw only); the steered car is off the road at fault, the car logged off it not.
    np.testing.assert_array_equal(agent_ep["collision"], [1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(agent_ep["raw_collision"], [1, 1, 0, 0, 1, 1])
    np.testing.assert_array_equal(agent_ep["offroad"], [0, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(agent_ep["raw_offroad"], [0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(agent_ep["collision_offroad"], [1, 0, 1, 0, 0, 0])
    # Route completion on each object's own logged path: the log replays complete it and reach the goal
    # (the parked cars have nothing to complete); the braked car covered 10^2 / (2 * 6) = 8.3 m of its 40 m.
    assert agent_ep["completion"][[0, 3, 4, 5]] == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_array_equal(agent_ep["goal_reached"], [1, 0, 0, 1, 1, 1])
    assert agent_ep["log_progress"][BRAKE] == pytest.approx(40.0, abs=0.1)
    assert agent_ep["completion"][BRAKE] == pytest.approx(8.33 / 40.0, abs=0.03)
    # Rates over the rated agents (valid at the start; the ego and what the actor drives): 0, 1, 2.
    from jaxloop.eval.evaluate import evaluated_agents
    mask = np.asarray(evaluated_agents(sc, out))
    np.testing.assert_array_equal(mask, [1, 1, 1, 0, 0, 0])
    rates = am.agent_rates({k: v[None] for k, v in agent_ep.items()}, mask[None])
    assert rates["num_agents"] == 3
    assert rates["collision_rate"] == pytest.approx(1 / 3) and rates["offroad_rate"] == pytest.approx(1 / 3)
    assert rates["collision_offroad_rate"] == pytest.approx(2 / 3) and rates["goal_rate"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="'collision' has shape"):
        am.agent_rates(agent_ep, mask[None])


def test_with_traffic_routes_params_and_state_to_each_actor():
    # Each part gets its own params, keeps its own state and drives only its own objects, whatever it asks for.
    sc = _scene()
    env = Env(EnvConfig(controlled="vehicles"))
    state = env.reset(sc, jax.random.key(0))

    def counter(scale):
        def select_action(params, obs, count, key):
            n = obs.state.current.x.shape[-1]
            return ActorOutput(action=jnp.full((n, 2), params * scale), controlled=jnp.ones(n, bool),
                               actor_state=count + 1, aux={"seen": params})
        return Actor(init=lambda key, scenario: jnp.int32(10 * scale), select_action=select_action)

    both = with_traffic(counter(1), counter(2))
    memory = both.init(jax.random.key(1), sc)
    assert (int(memory.ego), int(memory.traffic)) == (10, 20)
    out = both.select_action((3.0, 5.0), Observation(sc, state), memory, jax.random.key(2))
    ego = np.asarray(sc.object_metadata.is_sdc)
    np.testing.assert_array_equal(np.asarray(out.action)[ego], [[3.0, 3.0]])
    np.testing.assert_array_equal(np.asarray(out.action)[~ego], np.full(((~ego).sum(), 2), 10.0))
    np.testing.assert_array_equal(np.asarray(out.controlled), np.ones(sc.num_objects, bool))
    assert (int(out.actor_state.ego), int(out.actor_state.traffic)) == (11, 21)
    assert (float(out.aux["ego"]["seen"]), float(out.aux["traffic"]["seen"])) == (3.0, 5.0)
    # An ego actor that drives nothing (a baseline) leaves the ego to its agent model, and keeps its kind.
    base = with_traffic(baseline_actor("idm", 2), counter(2))
    assert base.agent_kind == baseline_actor("idm", 2).agent_kind
    out = base.select_action((None, 1.0), Observation(sc, state), base.init(jax.random.key(1), sc),
                             jax.random.key(2))
    np.testing.assert_array_equal(np.asarray(out.controlled), ~ego)


@pytest.fixture(scope="module")
def real_scenes(shared_data):
    from jaxloop.data.gpudrive import load_gpudrive
    from jaxloop.data.womd import load_womd

    scenes = [next(load_womd(shared_data / "womd" / "motion_data_one_example.tfrecord"))[0]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sorted(glob.glob(str(shared_data / "gpudrive" / "*.json")))[:3]:
            scenes.append(load_gpudrive(path)[0])
    return stack_scenarios(scenes)


def _shaken(state, key, shift):
    """Objects moved by N(0, shift) m and turned by up to 0.5 rad: contacts and corners off the road."""
    k1, k2, k3 = jax.random.split(key, 3)
    cur = state.current
    n = cur.x.shape
    cur = cur.replace(x=cur.x + shift * jax.random.normal(k1, n), y=cur.y + shift * jax.random.normal(k2, n),
                      yaw=cur.yaw + jax.random.uniform(k3, n, minval=-0.5, maxval=0.5))
    return state.replace(current=cur)


def _onto_nearest(state, ego):
    """The ego moved 1.5 m behind its nearest valid neighbour's centre: a contact."""
    cur = state.current
    d2 = jnp.where(cur.valid & (jnp.arange(cur.x.shape[-1]) != ego), (cur.x - cur.x[ego]) ** 2
                   + (cur.y - cur.y[ego]) ** 2, jnp.inf)
    j = jnp.argmin(d2)
    x = cur.x.at[ego].set(cur.x[j] - 1.5 * jnp.cos(cur.yaw[j]))
    y = cur.y.at[ego].set(cur.y[j] - 1.5 * jnp.sin(cur.yaw[j]))
    return state.replace(current=cur.replace(x=x, y=y, yaw=cur.yaw.at[ego].set(cur.yaw[j])))


def test_per_agent_step_metrics_equal_the_ego_metrics_on_real_scenes(real_scenes):
    # Every scene at two log steps, the objects shaken off their logged poses (and left there: the log
    # exemptions apply to some objects and not to others); at the first, the ego is put onto its nearest
    # neighbour. `prev` is the logged state a step before.
    env = Env(EnvConfig())
    config = EvalConfig().metrics

    def one(sc, t, key):
        prev = env.reset(sc, key, timestep=t - 1)
        state = _shaken(env.reset(sc, key, timestep=t), key, 1.0)
        state = jax.lax.cond(t == 20, lambda s: _onto_nearest(s, sc.object_metadata.sdc_index), lambda s: s, state)
        ego, agents = m.step_metrics(sc, prev, state, config=config), am.agent_step_metrics(sc, prev, state)
        i = sc.object_metadata.sdc_index
        return (ego["ego_contact"], agents["agent_contact"][i], ego["ego_offroad_at_fault"],
                agents["agent_offroad_at_fault"][i], ego["ego_offroad"], agents["agent_offroad"][i], agents)

    run = jax.jit(jax.vmap(jax.vmap(one, in_axes=(None, 0, 0)), in_axes=(0, None, None)))
    steps = jnp.array([20, 60])
    ec, ac, eo, ao, er, ar, agents = jax.device_get(run(real_scenes, steps, jax.random.split(jax.random.key(1), 2)))
    np.testing.assert_array_equal(ac, ec)
    np.testing.assert_array_equal(ao, eo)
    np.testing.assert_array_equal(ar, er)
    assert (ec != m.CONTACT_NONE).any(-1)[:, 0].all() and eo.sum() >= 1  # the ego has events to compare
    # Every object has its own: at-fault contacts and offroad, and the exemptions leave some out.
    contact, valid = agents["agent_contact"], agents["agent_valid"]
    assert (contact == m.CONTACT_AT_FAULT).any(-1)[valid].sum() >= 10
    assert ((contact != m.CONTACT_NONE) & (contact != m.CONTACT_AT_FAULT)).any(-1)[valid].sum() >= 10
    off, at_fault = agents["agent_offroad"], agents["agent_offroad_at_fault"]
    assert at_fault[valid].sum() >= 10 and (off & ~at_fault)[valid].sum() >= 1


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run directory of the training loop: an ego-only BC policy's checkpoint (the step-0 one: what is
    evaluated here is the plumbing, and a train step would cost one more compile)."""
    from jaxloop.train import loop
    out = str(tmp_path_factory.mktemp("traffic_run"))
    loop.run(tiny_config("bc"), tiny_scenarios(count=2, num_steps=30), out, 0, progress=False, use_tensorboard=False)
    return out


def test_eval_with_policy_traffic_reports_per_agent_rates(tiny_run, tmp_path, capsys):
    # The ego-only run as the ego and, from every other vehicle's own view, as the traffic.
    out = tmp_path / "eval"
    rc = cli.run_eval(policy=tiny_run, data="toy:2", non_ego=f"policy:{tiny_run}", horizon=8, batch_size=2,
                      out=str(out), json_output=True, num_objects=8)
    assert rc == 0
    agg = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    report = json.loads((out / "report.json").read_text())
    assert report["name"].endswith("traffic")
    agents = report["agents"]
    assert agg["agents"] == agents
    # toy:2 holds 4 valid cars per scene: the ego plus 3 policy-driven vehicles each.
    assert agents["all"]["num_agents"] == 8 and agents["non_ego"]["num_agents"] == 6
    for group in agents.values():
        for k in ("collision_rate", "offroad_rate", "collision_offroad_rate", "route_completion", "goal_rate"):
            assert 0.0 <= group[k] <= 1.0, k
    # The ego report keeps its form; an untrained policy leaves the log.
    assert set(report["aggregate"]) >= {"failure_rate", "collision_rate", "progress_ratio", "score"}
    assert report["aggregate"]["ade"] > 0.1
    assert "Per-agent rates" in (out / "report.md").read_text()
    # A baseline ego drives nothing through the dynamics: it takes the traffic run's environment.
    actor, env, label = cli.resolve_traffic("expert", EnvConfig(), tiny_run, "expert")
    assert env.controlled == "vehicles" and env.dynamics.normalize_actions and actor.agent_kind is not None
    assert label.startswith("expert vs ")
    with pytest.raises(ValueError, match="history_length .* differs from the --policy's"):
        cli.resolve_traffic(lambda *a: None, EnvConfig(dynamics=env.dynamics, history_length=7), tiny_run, "p")


def test_self_play_policy_run_drives_every_vehicle(tmp_path, monkeypatch, capsys):
    # A run trained in self-play (its env.controlled "vehicles") is one policy driving all its agents,
    # evaluated with per-agent rates.
    from jaxloop.train import loop
    run = str(tmp_path / "selfplay")
    loop.run(tiny_config("bc", controlled="vehicles"), tiny_scenarios(count=2, num_steps=30), run, 0, progress=False,
             use_tensorboard=False)
    seen = {}

    def fake_evaluate(policy, scenarios, infos, config, seed, name=None, agents=False):
        seen.update(policy=policy, config=config, agents=agents, scenarios=scenarios)
        from jaxloop.eval.evaluate import EvalReport
        return EvalReport(name=name, per_scenario=[], aggregate={}, per_family={}, agents={"all": {}})

    monkeypatch.setattr(cli, "evaluate", fake_evaluate)
    assert cli.run_eval(policy=run, data="toy:1", horizon=4, json_output=True, num_objects=4) == 0
    assert seen["config"].env.controlled == "vehicles" and seen["agents"] is True
    sc = jax.tree.map(lambda a: a[0], seen["scenarios"].get([0]))
    state = Env(seen["config"].env).reset(sc, jax.random.key(0))
    assert jax.jit(seen["policy"])(sc, state, jax.random.key(0)).shape == (sc.num_objects, 2)


@pytest.mark.parametrize("spec, match", [("bogus", "expected 'log', 'idm' or 'policy:RUN'"),
                                         ("policy:", "expected 'log', 'idm' or 'policy:RUN'"),
                                         ("constant_velocity", "expected 'log', 'idm' or 'policy:RUN'"),
                                         ("policy:/no/such/run", "no run or checkpoint directory")])
def test_bad_non_ego_spec_fails_before_any_rollout(spec, match, monkeypatch):
    monkeypatch.setattr(cli, "evaluate", lambda *a, **k: pytest.fail("evaluated"))
    monkeypatch.setattr("jaxloop.data.open_dataset", lambda *a, **k: pytest.fail("data loaded"))
    with pytest.raises(ValueError, match="--non-ego") as e:
        cli.run_eval(policy="expert", data="toy:2", non_ego=spec)
    assert match in str(e.value)


def test_traffic_run_that_is_not_a_run_errors(tmp_path):
    with pytest.raises(ValueError, match="--non-ego policy:.*not a training run"):
        cli.resolve_traffic("expert", EnvConfig(), str(tmp_path), "expert")


@pytest.fixture(scope="module")
def tiny_export(tiny_run, tmp_path_factory):
    """`tiny_run` exported (`jaxloop export`): the artefact maps one observer's flat features to its action."""
    from jaxloop.io.policies import export
    return export(tiny_run, str(tmp_path_factory.mktemp("traffic_export") / "exported"))


def test_exported_policy_traffic_drives_every_vehicle_as_its_checkpoint(tiny_run, tiny_export):
    # The exported artefact as traffic: the checkpoint's actions from every vehicle's own view, in one env.
    exported, env, label = cli.resolve_traffic("expert", EnvConfig(), tiny_export, "expert")
    checkpoint, env_ckpt, _ = cli.resolve_traffic("expert", EnvConfig(), tiny_run, "expert")
    assert env == env_ckpt and env.controlled == "vehicles" and label == "expert vs exported traffic"
    sc = jax.tree.map(lambda a: a[0], tiny_scenarios(count=1, num_steps=30))
    config = EvalConfig(env=env)
    steps = 4

    @jax.jit
    def run(scenario, key):
        state = Env(env).reset(scenario, key)
        obs = Observation(scenario, state)
        acts = [a.select_action((None, None), obs, a.init(key, scenario), key) for a in (exported, checkpoint)]
        return acts, make_rollout_fn(exported, config, steps, agents=True)(scenario, key)[1]

    (ax, ac), out = jax.device_get(run(sc, jax.random.key(0)))
    ego = np.asarray(sc.object_metadata.is_sdc)
    driven = np.asarray(ax.controlled)
    np.testing.assert_array_equal(driven, ac.controlled)
    assert driven[~ego].sum() >= 2 and not driven[ego].any()  # the other vehicles, not the ego
    np.testing.assert_allclose(ax.action[driven], ac.action[driven], atol=1e-5)
    # In the rollout the traffic leaves the log (an untrained policy) while the expert ego replays it.
    log = sc.log_trajectory
    t = np.asarray(out.timesteps)
    moved = np.abs(np.asarray(out.states.x) - np.asarray(log.x)[:, t].T)[-1]
    assert moved[driven].min() > 1e-3
    np.testing.assert_array_equal(moved[ego], 0.0)
    assert np.asarray(out.aux["controlled"])[:, driven].all()


def test_exported_self_play_policy_is_traffic_for_its_agents_and_an_ego_as_the_policy():
    # The committed self-play export: as --non-ego it drives what it was trained to (its env.controlled);
    # as --policy it drives the ego only, as before.
    path = str(pathlib.Path(__file__).parents[1] / "experiments" / "results" / "policies" / "selfplay_apg")
    if not (pathlib.Path(path) / "metadata.json").is_file():
        pytest.skip(f"{path} is not in this checkout")
    _, env, label = cli.resolve_traffic("expert", EnvConfig(), path, "expert")
    assert env.controlled == "vehicles" and label == "expert vs selfplay_apg traffic"
    policy, policy_env, _ = cli.resolve_policy_spec(path, EnvConfig())
    assert policy_env.controlled == "sdc" and callable(policy)


def test_gate_with_policy_traffic_names_it(tiny_run, tiny_export, tmp_path, monkeypatch):
    # Candidate and baseline against the same (exported) policy traffic. The candidate's suite runs, clean
    # only (the perturbations are the gate's own, tested elsewhere); the baseline's reuses it (one compile).
    from jaxloop.eval import perturb
    seen, suites = [], []
    real = perturb.run_suite

    def clean_only(policy, scenarios, infos, config, seed, name=None):
        seen.append((config.env.controlled, name))
        suites.append(suites[0] if suites else real(policy, scenarios, infos, config, seed, perturbations=(),
                                                    name=name))
        return suites[-1]

    monkeypatch.setattr(perturb, "run_suite", clean_only)
    out = tmp_path / "gate.json"
    traffic = f"policy:{tiny_export}"
    rc = cli.run_gate(candidate="expert", baseline="idm", data="toy:2", non_ego=traffic, out=str(out), horizon=4,
                      batch_size=2, num_objects=8)
    report = json.loads(out.read_text())
    assert rc == (0 if report["passed"] else 1)
    assert seen == [("vehicles", "expert vs exported traffic"), ("vehicles", "idm vs exported traffic")]
    assert report["traffic"] == traffic and report["checks"]
    assert f"{traffic} traffic" in out.with_suffix(".md").read_text()
    with pytest.raises(ValueError, match="--non-ego"):
        cli.run_gate(candidate="expert", data="toy:2", non_ego="bogus", out=str(out))


def test_a_self_play_policy_as_the_ego_sees_its_own_logged_path_as_its_route():
    # Self-play trains every agent, the ego too, on its own logged path as its route (ending at its goal);
    # the committed self-play export driving the ego alone must see that route, not the scenario's (which
    # runs on past the logged goal): its action is the artefact's on the ego's row of agent_features.
    from jaxloop.io.policies import agent_features, ego_features, load_exported_call, load_policy, trained_on_own_path
    from jaxloop.policy.observation import features, flatten
    path = pathlib.Path(__file__).parents[1] / "experiments" / "results" / "policies" / "selfplay_apg"
    if not (path / "metadata.json").is_file():
        pytest.skip(f"{path} is not in this checkout")
    policy, config = load_policy(str(path))
    assert trained_on_own_path(config) and not trained_on_own_path(tiny_config("bc"))
    call, _ = load_exported_call(str(path))
    from jaxloop.data.toy import make_toy_scenario
    sc = make_toy_scenario()

    @jax.jit
    def run(sc):
        state = Env(config.env_config()).reset(sc, jax.random.key(0))
        ego = sc.object_metadata.sdc_index
        own = flatten(jax.tree.map(lambda a: a[0], agent_features(sc, state, ego[None], config.obs)))
        return (own, flatten(features(sc, state, ego, config.obs)),
                flatten(ego_features(sc, state, config.obs, own_path=True)),
                policy(sc, state, jax.random.key(1)), call(own[None])[0])

    own, scen, via_helper, action, own_action = jax.device_get(run(sc))
    np.testing.assert_allclose(via_helper, own, rtol=1e-6)
    assert not np.allclose(own, scen)  # the two routes differ on this scene
    np.testing.assert_allclose(action, own_action, rtol=1e-5, atol=1e-6)
