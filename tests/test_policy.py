"""Observation features and policy networks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxloop.data.toy import make_toy_scenario
from jaxloop.policy import networks
from jaxloop.policy.observation import (ObsConfig, features, flat_dim, flatten, observer_features, route_waypoints,
                                        unflatten)
from jaxloop.sim.env import Env, EnvConfig

OBS = ObsConfig(num_objects=3, num_lanes=2, lane_points=4, num_edges=2, num_lights=1, route_points=4,
                route_spacing=5.0, position_scale=20.0)


@pytest.fixture(scope="module")
def scene():
    scenario = make_toy_scenario(num_objects=8, num_cars=4, num_steps=30, seed=3)
    env = Env(EnvConfig(history_length=3))
    return scenario, env.reset(scenario, jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def feats3(scene):
    """Features of observers 0, 1, 2 (one compile for the module)."""
    scenario, state = scene
    return jax.jit(observer_features, static_argnums=3)(scenario, state, jnp.arange(3), OBS)


def test_features_in_observer_frame(scene, feats3):
    scenario, state = scene
    cur = jax.tree.map(np.asarray, state.current)
    feats = feats3
    f0 = jax.tree.map(lambda a: np.asarray(a[0]), feats)
    # Ego history is [K=3 x (x, y, cos, sin, vx, vy, valid)] + (length, width)/5; the current
    # step (last) sits at the origin with heading 0: (0, 0, 1, 0).
    np.testing.assert_allclose(f0.ego[14:18], [0.0, 0.0, 1.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(f0.ego[-2:], [4.5 / 5, 2.0 / 5], atol=1e-6)
    # Nearest object: by hand from the global positions, in the ego frame, scaled by 1/20.
    dist = np.hypot(cur.x - cur.x[0], cur.y - cur.y[0])
    dist[0] = np.inf
    dist[~cur.valid] = np.inf
    j = int(np.argmin(dist))
    c, s = np.cos(-cur.yaw[0]), np.sin(-cur.yaw[0])
    dx, dy = cur.x[j] - cur.x[0], cur.y[j] - cur.y[0]
    np.testing.assert_allclose(f0.objects[0, :2], [(c * dx - s * dy) / 20, (s * dx + c * dy) / 20], rtol=1e-4, atol=1e-5)
    # 3 other cars exist, so exactly 3 object tokens are valid; the type one-hot says vehicle (1).
    assert f0.objects_valid.tolist() == [True, True, True]
    assert f0.objects[0, 8:].tolist() == [0, 1, 0, 0, 0]
    # Only 2 valid lanes, no lights in the toy map.
    assert f0.lanes_valid.tolist() == [True, True] and not f0.lights_valid.any()
    # Observer 1 sees itself at its own origin too: one policy can drive any object.
    f1 = jax.tree.map(lambda a: np.asarray(a[1]), feats)
    np.testing.assert_allclose(f1.ego[14:18], [0.0, 0.0, 1.0, 0.0], atol=1e-5)
    assert not np.allclose(f0.objects, f1.objects)


def test_route_waypoints_spacing(scene):
    scenario, state = scene
    # The toy route is a straight line: the waypoints are 5 m apart along it.
    fn = jax.jit(route_waypoints, static_argnums=(2, 3))
    xy, valid = fn(scenario, jnp.stack([state.current.x[0], state.current.y[0]]), 4, 5.0)
    steps = np.linalg.norm(np.diff(np.asarray(xy), axis=0), axis=-1)
    np.testing.assert_allclose(steps, 5.0, atol=1e-3)
    assert bool(np.all(valid))
    # Far past the end of the route every waypoint is invalid.
    end = scenario.route.xy[-1] + jnp.array([100.0, 0.0])
    assert not bool(np.any(fn(scenario, end, 4, 5.0)[1]))


def test_flatten_round_trip(feats3):
    feats = feats3
    flat = flatten(feats)
    assert flat.shape == (3, flat_dim(OBS, 3))
    back = unflatten(flat, OBS, 3)
    for a, b in zip(jax.tree.leaves(feats), jax.tree.leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="length"):
        unflatten(flat[:, :-1], OBS, 3)


def test_tanh_gaussian_log_prob_is_a_density():
    out = networks.PolicyOutput(mean=jnp.array([0.3]), log_std=jnp.array([math.log(0.7)]), value=jnp.zeros(()))
    u = jnp.array([[0.5]])
    # By hand: log N(0.5; 0.3, 0.7) - log(1 - tanh(0.5)^2).
    z = (0.5 - 0.3) / 0.7
    expected = -0.5 * z * z - math.log(0.7) - 0.5 * math.log(2 * math.pi) - math.log(1 - math.tanh(0.5) ** 2)
    log_prob = jax.jit(networks.tanh_log_prob)
    np.testing.assert_allclose(log_prob(out, u), [expected], rtol=1e-5)
    # The density of a = tanh(u) integrates to 1 over (-1, 1) (midpoint rule).
    a = jnp.linspace(-1, 1, 200001)[:-1] + 1e-5
    dens = jnp.exp(log_prob(out, jnp.arctanh(a)[:, None]))
    np.testing.assert_allclose(float(jnp.sum(dens) * 1e-5), 1.0, atol=2e-3)


@pytest.mark.parametrize("kind, action_dim", [("mlp", 2), ("attention", 3)])  # bicycle, delta
def test_networks_masks_and_heads(feats3, kind, action_dim):
    cfg = networks.ModelConfig(kind=kind, hidden=(16,), embed_dim=8, num_heads=2, value_head=True)
    model = networks.make_model(cfg, OBS, 3, action_dim, jax.random.PRNGKey(0))
    graphdef, params = nnx.split(model)
    apply = jax.jit(lambda p, f: nnx.merge(graphdef, p)(f))
    feats = jax.tree.map(lambda a: a[0], feats3)
    out = apply(params, feats)
    assert out.mean.shape == (action_dim,) and out.value.shape == ()
    action, u, logp = jax.jit(networks.sample)(out, jax.random.PRNGKey(1))
    assert bool(jnp.all(jnp.abs(action) <= 1.0)) and bool(jnp.isfinite(logp))
    # Values behind a mask do not matter (lights are all invalid in the toy map) ...
    poked = feats.replace(lights=feats.lights + 7.0)
    if kind == "attention":
        np.testing.assert_allclose(apply(params, poked).mean, out.mean, rtol=1e-6)
    # ... valid tokens do.
    moved = feats.replace(objects=feats.objects.at[0, 0].add(1.0))
    assert not np.allclose(apply(params, moved).mean, out.mean)


def test_attention_all_masked_is_finite(feats3):
    cfg = networks.ModelConfig(kind="attention", hidden=(16,), embed_dim=8, num_heads=2)
    model = networks.make_model(cfg, OBS, 3, 2, jax.random.PRNGKey(0))
    graphdef, params = nnx.split(model)
    feats = feats3
    empty = feats.replace(objects_valid=feats.objects_valid & False, lanes_valid=feats.lanes_valid & False,
                          edges_valid=feats.edges_valid & False)
    out = jax.jit(lambda p, f: nnx.merge(graphdef, p)(f))(params, empty)
    assert bool(jnp.all(jnp.isfinite(out.mean)))
