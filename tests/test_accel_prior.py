"""The IDM acceleration prior of the policy networks (`ModelConfig.accel_prior`) and the target-speed feature."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from jaxloop.config import Experiment
from jaxloop.data.toy import make_track_scenario
from jaxloop.policy import networks
from jaxloop.policy.networks import AccelPrior, ModelConfig
from jaxloop.policy.observation import ObsConfig, features, scale_target_speed
from jaxloop.sim.env import Env

OBS = ObsConfig(history_length=2, num_objects=2, num_lanes=1, lane_points=2, num_edges=1, num_lights=1,
                route_points=4, route_spacing=5.0, target_speed=True)
IDM = ModelConfig(hidden=(8,), accel_prior="idm")


@pytest.fixture(scope="module")
def feats():
    """The ego's features on a straight road: ego at 5 m/s for 3 s, then 8 m/s (its largest logged speed)."""
    t = np.arange(91) * 0.1
    speed = np.where(t < 3.0, 5.0, 8.0)
    x = np.concatenate([[0.0], np.cumsum(speed[:-1] * 0.1)])
    track = {"x": x, "y": np.zeros(91), "yaw": np.zeros(91), "vel_x": speed, "vel_y": np.zeros(91)}
    sc = make_track_scenario([track], num_objects=3, x_range=(-20.0, 300.0))
    state = Env(Experiment(obs=OBS, model=IDM).env_config()).reset(sc, None)
    return features(sc, state, 0, OBS)


def _with(feats, objects=(), lights=()):
    """`feats` with hand-built objects [(x, y, vx, length, width)] and lights [(x, y, state)] (metres, m/s)."""
    ps, vs = OBS.position_scale, OBS.velocity_scale
    obj = np.zeros((OBS.num_objects, OBS.object_dim), np.float32)
    for i, (x, y, vx, length, width) in enumerate(objects):
        obj[i, :8] = [x / ps, y / ps, 1.0, 0.0, vx / vs, 0.0, length / 5.0, width / 5.0]
    light = np.zeros((OBS.num_lights, OBS.light_dim), np.float32)
    for i, (x, y, st) in enumerate(lights):
        light[i, :2] = [x / ps, y / ps]
        light[i, 2 + st] = 1.0
    return feats.replace(objects=jnp.asarray(obj), objects_valid=jnp.arange(OBS.num_objects) < len(objects),
                         lights=jnp.asarray(light), lights_valid=jnp.arange(OBS.num_lights) < len(lights))


def test_target_speed_is_the_largest_logged_speed(feats):
    k = OBS.history_length
    assert feats.ego.shape == (OBS.ego_dim(),) == (k * 7 + 3,)
    assert float(feats.ego[k * 7 + 2]) * OBS.velocity_scale == pytest.approx(8.0, abs=1e-4)
    assert ObsConfig().ego_dim() == ObsConfig(target_speed=True).ego_dim() - 1


def test_idm_prior_acceleration_of_hand_built_scenes(feats):
    prior = AccelPrior.of(IDM, OBS, OBS.history_length, 2)
    a = lambda f: float(networks.idm_prior_accel(f, prior))
    # Free road at v = 5, v0 = 8: 2 (1 - (5/8)^4) = 2 (1 - 0.152588) = 1.694824 m/s².
    assert a(_with(feats)) == pytest.approx(1.694824, abs=1e-3)
    # A lead 20 m ahead (centres), both 4.5 m long: gap 20 - 4.5 = 15.5 m, lead at 3 m/s:
    # s* = 2 + 5 x 1.5 + 5 x (5 - 3) / (2 sqrt(2 x 3)) = 9.5 + 10 / 4.898979 = 11.541241 m;
    # a = 1.694824 - 2 (11.541241 / 15.5)^2 = 1.694824 - 1.108823 = 0.586001 m/s².
    lead = (20.0, 0.0, 3.0, 4.5, 2.0)
    assert a(_with(feats, [lead])) == pytest.approx(0.586001, abs=2e-3)
    # The same object 3.5 m to the side (half width 1 + 1 m < 3.5) is no lead; one behind neither.
    assert a(_with(feats, [(20.0, 3.5, 3.0, 4.5, 2.0), (-10.0, 0.0, 0.0, 4.5, 2.0)])) == pytest.approx(1.694824, abs=1e-3)
    # A red light (TL_STOP = 4) 30 m ahead: a stopped lead at gap 30 - 2.25 = 27.75 m:
    # s* = 9.5 + 25 / 4.898979 = 14.603098; a = 1.694824 - 2 (14.603098 / 27.75)^2 = 1.694824 - 0.553857 = 1.140967.
    assert a(_with(feats, lights=[(30.0, 0.5, 4)])) == pytest.approx(1.140966, abs=2e-3)
    # A green one (TL_GO = 6) is not a lead.
    assert a(_with(feats, lights=[(30.0, 0.5, 6)])) == pytest.approx(1.694824, abs=1e-3)


def test_a_scaled_target_speed_is_the_idm_desired_speed(feats):
    # The realism evaluation's sampled driver style: target 8 m/s x 1.25 = 10 m/s, free road at v = 5:
    # 2 (1 - (5/10)^4) = 2 x 0.9375 = 1.875 m/s² (1.694824 at the log's 8 m/s).
    prior = AccelPrior.of(IDM, OBS, OBS.history_length, 2)
    scaled = scale_target_speed(_with(feats), jnp.asarray(1.25), OBS)
    assert float(scaled.ego[-1]) * OBS.velocity_scale == pytest.approx(10.0, abs=1e-4)
    assert float(networks.idm_prior_accel(scaled, prior)) == pytest.approx(1.875, abs=1e-3)
    np.testing.assert_array_equal(scaled.ego[:-1], feats.ego[:-1])
    with pytest.raises(ValueError, match="target speed"):
        scale_target_speed(feats, jnp.asarray(1.25), ObsConfig())


def test_zero_network_output_gives_the_prior_mean(feats):
    prior = AccelPrior.of(IDM, OBS, OBS.history_length, 2)
    zero = networks.PolicyOutput(mean=jnp.zeros(2), log_std=jnp.zeros(2), value=jnp.zeros(()))
    out = networks._with_prior(zero, _with(feats), None, prior)
    assert math.tanh(float(out.mean[0])) * IDM.accel_max == pytest.approx(1.694824, abs=1e-3)
    assert float(out.mean[1]) == 0.0


def test_accel_prior_config_is_checked():
    with pytest.raises(ValueError, match="accel_prior"):
        ModelConfig(accel_prior="pid")
    with pytest.raises(ValueError, match="target_speed"):
        Experiment(obs=ObsConfig(), model=IDM)
    with pytest.raises(ValueError, match="accel_max"):
        Experiment(obs=OBS, model=ModelConfig(accel_prior="idm", accel_max=3.0))


def test_a_model_with_both_priors_builds_and_its_zero_output_mean_is_the_prior(feats):
    import jax
    from flax import nnx
    model = networks.make_model(ModelConfig(hidden=(8,), accel_prior="idm", steer_prior="pure_pursuit"), OBS,
                                OBS.history_length, 2, jax.random.PRNGKey(0))
    graphdef, params = nnx.split(model)
    params = jax.tree.map(jnp.zeros_like, params)  # a zero network: the mean is the priors' alone
    out = nnx.merge(graphdef, params)(_with(feats))
    assert math.tanh(float(out.mean[0])) * IDM.accel_max == pytest.approx(1.694824, abs=1e-3)
    assert abs(float(out.mean[1])) < 1e-3  # a straight route: pure pursuit steers straight


def test_idm_prior_gradient_is_finite_with_padded_tokens_and_no_route(feats):
    # APG differentiates the prior: zero-padded objects, repeated (invalid) waypoints and a standing observer
    # all put a norm at 0, whose plain gradient is NaN.
    import jax
    prior = AccelPrior.of(IDM, OBS, OBS.history_length, 2)
    k = OBS.history_length
    standing = feats.ego.at[(k - 1) * 7 + 4].set(0.0)
    cases = [_with(feats, [(20.0, 0.0, 3.0, 4.5, 2.0)]), _with(feats),
             _with(feats).replace(route_valid=jnp.zeros(OBS.route_points, bool), ego=standing)]
    for f in cases:
        floats = (f.ego, f.objects, f.route, f.lights)
        accel = lambda e, o, r, li: networks.idm_prior_accel(f.replace(ego=e, objects=o, route=r, lights=li), prior)
        grads = jax.grad(accel, argnums=(0, 1, 2, 3))(*floats)
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


def test_idm_prior_gradient_is_finite_on_a_real_scene(shared_data):
    # Every vehicle of a real WOMD scene (GPUDrive JSON) as the observer of its own features, as self-play
    # sees them: standing cars, objects on the route polyline's vertices and short logged paths all occur.
    import jax
    from jaxloop.data.common import LoadConfig
    from jaxloop.data.gpudrive import load_gpudrive
    from jaxloop.io.policies import agent_features
    obs = ObsConfig(target_speed=True)
    model = ModelConfig(hidden=(8,), accel_prior="idm", steer_prior="pure_pursuit")
    sc, _ = load_gpudrive(shared_data / "gpudrive" / "tfrecord-00000-of-01000_222.json",
                          LoadConfig(num_objects=32, select="nearest"))
    state = Env(Experiment(obs=obs, model=model).env_config()).reset(sc, None)
    observers = jnp.asarray(np.flatnonzero(np.asarray(state.current.valid)
                                           & (np.asarray(sc.object_metadata.object_types) == 1)))
    assert observers.shape[0] >= 10
    f = jax.jit(agent_features, static_argnums=(3,))(sc, state, observers, obs)  # compiled: 5x faster than eager
    prior = AccelPrior.of(model, obs, obs.history_length, 2)
    accel = lambda e, o, r: jnp.sum(networks.idm_prior_accel(f.replace(ego=e, objects=o, route=r), prior))
    grads = jax.jit(jax.grad(accel, argnums=(0, 1, 2)))(f.ego, f.objects, f.route)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
