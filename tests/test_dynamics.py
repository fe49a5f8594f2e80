import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxloop.sim.datatypes import ObjectState
from jaxloop.sim.dynamics import DeltaGlobal, DeltaLocal, InvertibleBicycle, StateDynamics, make_dynamics


def _state(x=0.0, y=0.0, yaw=0.0, vx=0.0, vy=0.0):
    f = lambda v: jnp.array([v], jnp.float32)
    return ObjectState(x=f(x), y=f(y), z=f(0.0), vel_x=f(vx), vel_y=f(vy), yaw=f(yaw), length=f(4.0),
                       width=f(2.0), height=f(1.5), valid=jnp.array([True]))


def test_bicycle_forward_hand_computed():
    # x=0, y=0, yaw=0, v=10 m/s along +x; a=2, k=0.1, dt=0.1.
    # x' = 0 + 10*0.1 + 0.5*2*cos(0)*0.01 = 1.01
    # y' = 0 + 0 + 0.5*2*sin(0)*0.01 = 0
    # yaw' = 0 + 0.1*(10*0.1 + 0.5*2*0.01) = 0.1*1.01 = 0.101
    # v' = 10 + 2*0.1 = 10.2 ; vx' = 10.2*cos(0.101), vy' = 10.2*sin(0.101)
    s = InvertibleBicycle().forward(_state(vx=10.0), jnp.array([[2.0, 0.1]]))
    np.testing.assert_allclose(s.x, [1.01], rtol=1e-6)
    np.testing.assert_allclose(s.y, [0.0], atol=1e-7)
    np.testing.assert_allclose(s.yaw, [0.101], rtol=1e-6)
    np.testing.assert_allclose(s.vel_x, [10.2 * np.cos(0.101)], rtol=1e-6)
    np.testing.assert_allclose(s.vel_y, [10.2 * np.sin(0.101)], rtol=1e-6)
    np.testing.assert_allclose(s.length, [4.0])  # size carries over


def test_bicycle_forward_heading_pi_over_2():
    # yaw = pi/2, v = 5 along +y, a = -4: x' = 0 + 0 + 0.5*(-4)*cos(pi/2)*0.01 = 0
    # y' = 0 + 5*0.1 + 0.5*(-4)*1*0.01 = 0.5 - 0.02 = 0.48 ; v' = 5 - 0.4 = 4.6
    s = InvertibleBicycle().forward(_state(yaw=np.pi / 2, vy=5.0), jnp.array([[-4.0, 0.0]]))
    np.testing.assert_allclose(s.x, [0.0], atol=1e-6)
    np.testing.assert_allclose(s.y, [0.48], rtol=1e-6)
    np.testing.assert_allclose(jnp.hypot(s.vel_x, s.vel_y), [4.6], rtol=1e-6)


def test_bicycle_clipping_and_normalised_actions():
    dyn = InvertibleBicycle()
    np.testing.assert_allclose(dyn.clip(jnp.array([10.0, -1.0])), [6.0, -0.3])
    # a=10 is clipped to 6: x' = 10*0.1 + 0.5*6*0.01 = 1.03
    s = dyn.forward(_state(vx=10.0), jnp.array([[10.0, 0.0]]))
    np.testing.assert_allclose(s.x, [1.03], rtol=1e-6)
    norm = InvertibleBicycle(normalize_actions=True)
    np.testing.assert_allclose(norm.clip(jnp.array([0.5, -2.0])), [3.0, -0.3], rtol=1e-6)
    s2 = norm.forward(_state(vx=10.0), jnp.array([[0.5, 0.0]]))  # a = 0.5*6 = 3 -> x' = 1 + 0.015
    np.testing.assert_allclose(s2.x, [1.015], rtol=1e-6)


def test_bicycle_inverse_hand_computed_and_low_speed():
    dyn = InvertibleBicycle()
    s0 = _state(vx=10.0)
    s1 = dyn.forward(s0, jnp.array([[2.0, 0.1]]))
    a, valid = dyn.inverse(s0, s1)
    np.testing.assert_allclose(a, [[2.0, 0.1]], rtol=1e-4)
    assert bool(valid[0])
    # Below 0.6 m/s the curvature is zero by definition.
    slow0, slow1 = _state(vx=0.3), _state(vx=0.5, yaw=0.2)
    a_slow, _ = dyn.inverse(slow0, slow1)
    np.testing.assert_allclose(a_slow, [[2.0, 0.0]], rtol=1e-5)  # a = (0.5-0.3)/0.1
    # Invalid transitions give zero actions.
    a_inv, v_inv = dyn.inverse(s0, s1.replace(valid=jnp.array([False])))
    np.testing.assert_allclose(a_inv, [[0.0, 0.0]])
    assert not bool(v_inv[0])


def test_bicycle_round_trip_on_smooth_log():
    """inverse -> forward reproduces a smooth synthetic log within 1e-3 m per step."""
    from jaxloop.data.toy import make_toy_scenario
    from jaxloop.sim.env import expert_actions
    from jaxloop.sim.datatypes import trajectory_at
    scenario = make_toy_scenario(num_cars=4)
    dyn = InvertibleBicycle()
    actions, valid = expert_actions(scenario, dyn)
    assert float(jnp.abs(actions[..., 0]).max()) <= 6.0 and float(jnp.abs(actions[..., 1]).max()) <= 0.3
    state = trajectory_at(scenario.log_trajectory, 0)
    for t in range(scenario.num_steps - 1):  # replay open loop from the log's first state
        state = dyn.forward(state, actions[:, t])
        log = trajectory_at(scenario.log_trajectory, t + 1)
        err = jnp.hypot(state.x - log.x, state.y - log.y)[:4]
        assert float(err.max()) < 1e-3, (t, err)


def test_delta_global_and_local():
    s0 = _state(x=1.0, y=2.0, yaw=np.pi / 2)
    g = DeltaGlobal().forward(s0, jnp.array([[1.0, 0.5, 0.1]]))
    # Global: x = 1 + 1 = 2, y = 2 + 0.5 = 2.5, yaw = pi/2 + 0.1, vel = (1, 0.5)/0.1 = (10, 5)
    np.testing.assert_allclose([g.x[0], g.y[0], g.yaw[0], g.vel_x[0], g.vel_y[0]],
                               [2.0, 2.5, np.pi / 2 + 0.1, 10.0, 5.0], rtol=1e-5)
    loc = DeltaLocal().forward(s0, jnp.array([[1.0, 0.5, 0.1]]))
    # Local (1, 0.5) rotated by +90 deg is (-0.5, 1): x = 0.5, y = 3, vel = (-5, 10)
    np.testing.assert_allclose([loc.x[0], loc.y[0], loc.vel_x[0], loc.vel_y[0]], [0.5, 3.0, -5.0, 10.0],
                               rtol=1e-5, atol=1e-5)
    # Clipping: |dx| <= 6, |dyaw| <= pi
    c = DeltaGlobal().forward(s0, jnp.array([[9.0, -7.0, 4.0]]))
    np.testing.assert_allclose([c.x[0], c.y[0]], [7.0, -4.0], rtol=1e-6)
    for dyn in (DeltaGlobal(), DeltaLocal()):
        act, _ = dyn.inverse(s0, dyn.forward(s0, jnp.array([[1.0, 0.5, 0.1]])))
        np.testing.assert_allclose(act, [[1.0, 0.5, 0.1]], rtol=1e-5, atol=1e-6)


def test_state_dynamics_and_registry():
    s = StateDynamics().forward(_state(), jnp.array([[1.0, 2.0, 0.5, 3.0, 4.0]]))
    np.testing.assert_allclose([s.x[0], s.y[0], s.yaw[0], s.vel_x[0], s.vel_y[0]], [1, 2, 0.5, 3, 4])
    assert make_dynamics("delta_local").local
    with pytest.raises(ValueError, match="unknown dynamics"):
        make_dynamics("unicycle")


def test_rollout_gradient_matches_finite_differences():
    """d(final position)/d(actions) of an 80-step bicycle rollout vs central differences (float64)."""
    with jax.enable_x64(True):
        dyn = InvertibleBicycle(max_accel=100.0, max_curvature=100.0)  # no clipping kinks
        s0 = jax.tree.map(lambda a: a.astype(jnp.float64) if a.dtype != bool else a, _state(vx=8.0))
        rng = np.random.default_rng(0)
        actions = jnp.asarray(np.stack([rng.uniform(-1, 1, 80), rng.uniform(-0.02, 0.02, 80)], -1))

        def final_xy(acts):
            def body(s, a):
                return dyn.forward(s, a[None]), None
            s, _ = jax.lax.scan(body, s0, acts)
            return jnp.stack([s.x[0], s.y[0]])

        jac = jax.jacrev(final_xy)(actions)  # [2, 80, 2]
        eps = 1e-6
        rng_idx = [(0, 0), (10, 1), (40, 0), (79, 1), (5, 1)]
        for t, j in rng_idx:
            d = jnp.zeros_like(actions).at[t, j].set(eps)
            fd = (final_xy(actions + d) - final_xy(actions - d)) / (2 * eps)
            np.testing.assert_allclose(jac[:, t, j], fd, rtol=1e-3, atol=1e-8)
        assert float(jnp.abs(jac).max()) > 0
