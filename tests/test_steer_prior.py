"""The pure pursuit steering prior of the policy networks (`ModelConfig.steer_prior`)."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxloop.config import Experiment, from_dict, to_dict
from jaxloop.data.toy import make_track_scenario
from jaxloop.io.export import export_policy
from jaxloop.io.policies import build_model, flat_apply_fn, load_exported_call, make_policy_fn
from jaxloop.policy import networks
from jaxloop.policy.networks import ModelConfig, SteerPrior
from jaxloop.policy.observation import ObsConfig, features, flatten
from jaxloop.sim.dynamics import make_dynamics
from jaxloop.sim.env import Env
from jaxloop.sim.rollout import rollout

OBS = ObsConfig(history_length=3, num_objects=2, num_lanes=2, lane_points=4, num_edges=2, num_lights=1,
                route_points=6, route_spacing=5.0, position_scale=20.0, velocity_scale=10.0)
PP = ModelConfig(hidden=(16,), steer_prior="pure_pursuit", steer_lookahead_time=1.0, steer_min_lookahead=5.0)
RADIUS, SPEED, STEPS = 40.0, 10.0, 91


def _experiment(model: ModelConfig) -> Experiment:
    return Experiment(obs=OBS, model=model)


@pytest.fixture(scope="module")
def arc():
    """The ego on a left-turning circle of radius 40 m at 10 m/s (9 s: 90 m, 2.25 rad); route = its path."""
    theta = SPEED * np.arange(STEPS) * 0.1 / RADIUS
    x, y = RADIUS * np.sin(theta), RADIUS * (1.0 - np.cos(theta))
    track = {"x": x, "y": y, "yaw": theta, "vel_x": SPEED * np.cos(theta), "vel_y": SPEED * np.sin(theta)}
    return make_track_scenario([track], num_objects=2, x_range=(-50.0, 150.0))


@pytest.fixture(scope="module")
def scene(arc):
    """(env, reset state, the ego's features) on the arc (one compile for the module)."""
    env = Env(_experiment(PP).env_config())
    state = jax.jit(env.reset)(arc, jax.random.PRNGKey(0))
    return env, state, jax.jit(features, static_argnums=(2, 3))(arc, state, 0, OBS)


def _hand_built(feats, route_m, num_valid, speed):
    """`feats` with the route waypoints (metres, ego frame) and current speed (m/s, along x) replaced."""
    w = OBS.route_points
    route = np.zeros((w, 3), np.float32)
    route[:num_valid, :2] = np.asarray(route_m[:num_valid], np.float32).reshape(-1, 2) / OBS.position_scale
    route[:num_valid, 2] = 1.0
    ego = np.array(feats.ego)
    k = OBS.history_length
    ego[(k - 1) * 7 + 4], ego[(k - 1) * 7 + 5] = speed / OBS.velocity_scale, 0.0
    return feats.replace(ego=jnp.asarray(ego), route=jnp.asarray(route), route_valid=jnp.arange(w) < num_valid)


def test_pure_pursuit_curvature_of_hand_built_waypoints(scene):
    _, _, feats = scene
    prior = SteerPrior.of(PP, OBS, OBS.history_length, 2)
    route = [(5.0, 0.0), (10.0, 1.0), (15.0, 3.0), (20.0, 6.0), (25.0, 10.0), (30.0, 15.0)]
    curvature = jax.jit(networks.pure_pursuit_curvature, static_argnums=1)
    kappa = lambda f: float(curvature(f, prior))
    # 10 m/s x 1 s = 10 m of arc = waypoint 1 at (10, 1): kappa = 2 * 1 / (10^2 + 1^2) = 2 / 101 = 0.019802.
    assert kappa(_hand_built(feats, route, 6, 10.0)) == pytest.approx(2.0 / 101.0, rel=1e-5)
    # 7.5 m/s -> 7.5 m: halfway between (5, 0) and (10, 1) = (7.5, 0.5): 2 * 0.5 / (56.25 + 0.25) = 1 / 56.5.
    assert kappa(_hand_built(feats, route, 6, 7.5)) == pytest.approx(1.0 / 56.5, rel=1e-5)
    # Standing still: the minimum lookahead, 5 m = waypoint 0 at (5, 0): straight ahead, kappa = 0.
    assert kappa(_hand_built(feats, route, 6, 0.0)) == pytest.approx(0.0, abs=1e-7)
    # 25 m/s -> 25 m, but only 2 waypoints valid: the last valid one (10, 1), 2 / 101 again.
    assert kappa(_hand_built(feats, route, 2, 25.0)) == pytest.approx(2.0 / 101.0, rel=1e-5)
    # A target to the right at (6, -8): 2 * (-8) / (36 + 64) = -0.16.
    assert kappa(_hand_built(feats, [(6.0, -8.0)], 1, 10.0)) == pytest.approx(-0.16, rel=1e-5)
    # No valid waypoint (past the route's end): no prior.
    assert kappa(_hand_built(feats, route, 0, 10.0)) == 0.0
    # The pre-tanh mean: atanh(0.16 / 0.3) = atanh(0.5333) = 0.5947; saturating targets clip at 1 - 1e-3.
    prior_mean = jax.jit(networks.steer_prior_mean, static_argnums=1)
    assert float(prior_mean(_hand_built(feats, [(6.0, 8.0)], 1, 10.0), prior)) == pytest.approx(
        math.atanh(0.16 / 0.3), rel=1e-5)
    # (0.5, 2): 4 / 4.25 = 0.94 1/m, far past 0.3: clipped.
    assert float(prior_mean(_hand_built(feats, [(0.5, 2.0)], 1, 10.0), prior)) == pytest.approx(
        math.atanh(1 - networks.PRIOR_EPS), rel=1e-4)


def test_default_model_unchanged_and_prior_only_moves_the_curvature_mean(scene):
    assert ModelConfig().steer_prior == "none" and ModelConfig() == ModelConfig(steer_prior="none")
    # Settings saved before the option existed load as "none".
    old = to_dict(_experiment(ModelConfig()))
    for key in ("steer_prior", "steer_lookahead_time", "steer_min_lookahead", "steer_max_curvature"):
        old["model"].pop(key)
    assert from_dict(Experiment, old).model.steer_prior == "none"
    _, _, feats = scene

    for kind in ("mlp", "attention"):
        (g0, p0), (g1, p1) = (_abstract(dataclasses.replace(PP, kind=kind, steer_prior=prior))
                              for prior in ("none", "pure_pursuit"))
        assert jax.tree.structure(p0) == jax.tree.structure(p1)  # checkpoints and exports keep their layout
        assert nnx.merge(g0, p0).steer is None and nnx.merge(g1, p1).steer is not None
        rng = np.random.default_rng(0)  # random weights without compiling the initialisers
        params = jax.tree.map(lambda a: jnp.asarray(rng.normal(0.0, 0.3, a.shape), a.dtype), p0)
        o0, o1, prior = jax.jit(lambda p, f: (nnx.merge(g0, p)(f), nnx.merge(g1, p)(f),
                                              networks.steer_prior_mean(f, nnx.merge(g1, p).steer)))(params, feats)
        assert abs(float(prior)) > 0.05  # the arc turns left: the prior is not trivially zero here
        assert abs(float(o0.mean[1])) > 1e-3  # ... and the network's own output is not either
        np.testing.assert_array_equal(o1.mean[0], o0.mean[0])
        np.testing.assert_allclose(o1.mean[1], o0.mean[1] + prior, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(o1.log_std, o0.log_std)


def _abstract(model: ModelConfig):
    """(graphdef, abstract params) of the model of `model` (shapes only: nothing compiled)."""
    return nnx.split(nnx.eval_shape(lambda: build_model(_experiment(model), jax.random.PRNGKey(0))), nnx.Param)


def test_zero_output_policy_with_prior_follows_a_curved_route(arc, scene):
    env, state, feats = scene
    steps = int(STEPS - state.timestep - 31)  # the route waypoints reach 30 m: stop 30 m before the route's end
    distance_to_circle = lambda xy: np.abs(np.hypot(xy[:, 0], xy[:, 1] - RADIUS) - RADIUS)

    # Without the prior a zero network output is the action tanh(0) = (0, 0): no acceleration, no
    # curvature, so the ego leaves the circle on its tangent at constant speed.
    cur = jax.tree.map(lambda a: float(a[0]), state.current)
    t = 0.1 * np.arange(1, steps + 1)[:, None]
    straight = np.array([cur.x, cur.y]) + t * np.array([cur.vel_x, cur.vel_y])
    assert distance_to_circle(straight).max() > 5.0
    # With the prior: pure pursuit along the route, in closed loop.
    graphdef, params = _abstract(PP)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: jnp.asarray(rng.normal(0.0, 0.3, a.shape), a.dtype), params)
    params["heads"]["mean"]["kernel"] = jnp.zeros_like(params["heads"]["mean"]["kernel"][...])  # network output: 0
    params["heads"]["mean"]["bias"] = jnp.zeros_like(params["heads"]["mean"]["bias"][...])
    policy = make_policy_fn(graphdef, params, OBS, deterministic=True)
    _, out = jax.jit(lambda s: rollout(env, arc, s, policy, steps))(state)
    xy = np.asarray(out.states.xy[:, 0])  # [H, 2] the ego
    assert np.hypot(*(xy[-1] - xy[0])) > 0.6 * SPEED * 0.1 * steps  # it drove (about 50 m of arc)
    assert distance_to_circle(xy).max() < 0.5, distance_to_circle(xy).max()


def test_exported_policy_with_prior_round_trips(scene, tmp_path):
    _, _, feats = scene
    config = _experiment(PP)
    model = build_model(config, jax.random.PRNGKey(2))
    graphdef, params = nnx.split(model)
    apply_fn, example = flat_apply_fn(graphdef, config)
    export_policy(apply_fn, params, [example], tmp_path / "pp", platforms=["cpu"],
                  metadata={"experiment": to_dict(config)})
    call, loaded = load_exported_call(tmp_path / "pp")
    assert loaded == config and loaded.model.steer_prior == "pure_pursuit"
    flat = flatten(feats)[None]
    got = np.asarray(call(flat))
    direct = nnx.jit(lambda m, f: networks.mode(m(f)))(model, feats)
    np.testing.assert_allclose(got, np.asarray(direct)[None], rtol=1e-5, atol=1e-6)
    base_graphdef, _ = nnx.split(build_model(_experiment(dataclasses.replace(PP, steer_prior="none")),
                                             jax.random.PRNGKey(2)))
    without = np.asarray(jax.jit(flat_apply_fn(base_graphdef, config)[0])(params, flat))
    assert abs(got[0, 1] - without[0, 1]) > 1e-3  # the artefact carries the prior


def test_prior_config_is_checked():
    with pytest.raises(ValueError, match="steer_prior"):
        ModelConfig(steer_prior="stanley")
    with pytest.raises(ValueError, match="steer_min_lookahead"):
        ModelConfig(steer_min_lookahead=-1.0)
    with pytest.raises(ValueError, match="dynamics"):
        Experiment(model=PP, env=dataclasses.replace(Experiment().env, dynamics="delta_local"))
    with pytest.raises(ValueError, match="max_curvature"):
        Experiment(model=dataclasses.replace(PP, steer_max_curvature=0.2))
    with pytest.raises(ValueError, match="action_dim"):
        networks.make_model(PP, OBS, OBS.history_length, 3, jax.random.PRNGKey(0))
    assert make_dynamics("bicycle").max_curvature == ModelConfig().steer_max_curvature
