"""Self-play's per-agent anticipation and keep-up terms (`rewards.agent_*`): each object read as the ego."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxloop.data.toy import make_track_scenario
from jaxloop.sim import rewards
from jaxloop.sim.datatypes import DT, TL_GO, TL_STOP, trajectory_at
from jaxloop.sim.env import Env

T = 40
TIME = np.arange(T) * DT
W = rewards.get_preset("closed_loop_safety")  # T = 0.3, brake 4, headway 0.6 s + 1 m, log lag 2 s


def _track(x, y=0.0):
    return {"x": np.asarray(x, np.float64), "y": np.full(T, y)}


@pytest.fixture(scope="module")
def scene():
    """Ego 0 at 10 m/s; 1 and 2 a follower / lead pair in the other lane (y = 3.5); 3 crossing-free far ahead;
    a red light 40 m ahead of the ego in its lane for the first 30 steps."""
    tracks = [_track(10.0 * TIME), _track(30.0 + 10.0 * TIME, 3.5), _track(50.0 + 5.0 * TIME, 3.5),
              _track(150.0 + 5.0 * TIME)]
    light = dict(x=52.0, y=0.0, lane_id=0, state=np.where(np.arange(T) < 30, TL_STOP, TL_GO))
    sc = make_track_scenario(tracks, lights=[light])
    return sc, Env().reset(sc, jax.random.key(0))


def _with(state, rows):
    """`state` with object i's x (and speed along +x) replaced: rows {i: (x, v)}."""
    cur = state.current
    for i, (x, v) in rows.items():
        cur = cur.replace(x=cur.x.at[i].set(x), vel_x=cur.vel_x.at[i].set(v))
    return state.replace(current=cur)


def test_agent_anticipation_terms_at_the_ego_index_equal_the_ego_terms(scene):
    sc, s0 = scene
    state = _with(s0, {0: (40.0, 10.0)})  # front (4.5 m long) 9.75 m before the red line
    ego = sc.object_metadata.sdc_index

    @jax.jit
    def terms():
        log_state = trajectory_at(sc.log_trajectory, state.timestep)
        return dict(head=rewards.agent_headway_shortfall(state, W), red=rewards.agent_red_light_surrogate(sc, state, W),
                    conflict=rewards.agent_predicted_conflict(state, log_state, W),
                    ego_head=rewards.headway_shortfall(state, ego, W),
                    ego_red=rewards.red_light_surrogate(sc, state, ego, W),
                    ego_conflict=rewards.predicted_conflict(state, ego, W))

    out = jax.device_get(terms())
    assert out["head"].shape == out["red"].shape == out["conflict"].shape == (4,)
    i = int(ego)
    np.testing.assert_allclose(out["head"][i], out["ego_head"], rtol=1e-5)
    np.testing.assert_allclose(out["red"][i], out["ego_red"], rtol=1e-5)
    np.testing.assert_allclose(out["conflict"][i], out["ego_conflict"], rtol=1e-5, atol=1e-7)
    assert out["red"][i] > 3.5  # stopping from 10 m/s takes 12.5 m + 1 m margin: 3.75 m short
    # The light governs the ego's lane only: the others (next lane, or past it) feel nothing.
    np.testing.assert_allclose(out["red"][1:], 0.0, atol=1e-6)


def test_agent_headway_grows_as_a_follower_closes_in_and_slows_it(scene):
    sc, s0 = scene
    lead_x = s0.current.x[2]
    follower_at = lambda gap, v: _with(s0, {1: (lead_x - 4.5 - gap, v)})
    head = lambda gap, v: rewards.agent_headway_shortfall(follower_at(gap, v), W)

    @jax.jit
    def terms(gaps):
        loss = lambda h, a: rewards.agent_step_surrogate_loss(sc, s0, follower_at(8.0, 10.0),
                                                              W.replace(headway=h, anticipate=a))
        hs = jnp.array([1.0, 3.0])
        return dict(values=jax.vmap(lambda g: head(g, 10.0)[1])(gaps), at=head(8.0, 10.0),
                    dv=jax.grad(lambda v: head(8.0, v)[1])(10.0), loss=jax.vmap(loss, (0, None))(hs, 1.0),
                    off=jax.vmap(loss, (0, None))(hs, 0.0))

    out = jax.device_get(terms(jnp.array([30.0, 15.0, 8.0, 3.0])))
    values = out["values"]
    assert np.all(np.diff(values) > 0), values  # closer is worse
    assert values[0] < 0.05 and values[-1] > 5.0
    assert out["at"][2] < 1e-3  # the lead has nothing ahead in its lane
    assert out["dv"] > 0.0  # faster towards the same gap is worse: the gradient slows the follower
    # The surrogate loss carries it, for the follower only.
    np.testing.assert_allclose(out["loss"][1] - out["loss"][0], 2.0 * out["at"], rtol=1e-4, atol=1e-5)
    # Only with `anticipate`: closed_loop_safety's own anticipate = 0 leaves self-play without the term.
    np.testing.assert_array_equal(out["off"][1], out["off"][0])
    assert W.anticipate == 0.0 and rewards.get_preset("selfplay_keep_up").anticipate == 1.0


def test_agent_behind_log_is_a_floor_at_the_lagged_log(scene):
    sc, _ = scene
    w = W.replace(behind_lag=1.0)  # the floor: where the log was 10 steps ago
    t = 25
    base = Env().reset(sc, jax.random.key(0))
    state = base.replace(timestep=jnp.int32(t), current=trajectory_at(sc.log_trajectory, t))
    logged = float(state.current.x[1])  # on its log at 10 m/s: 10 m ahead of the floor

    @jax.jit
    def behind(x1):
        fn = lambda x: rewards.agent_behind_log(sc, state.replace(current=state.current.replace(
            x=state.current.x.at[1].set(x))), w)
        return fn(x1), jax.grad(lambda x: fn(x)[1])(x1)

    on_log, _ = jax.device_get(behind(logged))
    np.testing.assert_allclose(on_log, 0.0, atol=1e-6)  # every object on its log
    late, grad = jax.device_get(behind(logged - 15.5))  # 15.5 m behind its logged position now: 5.5 m behind the floor
    np.testing.assert_allclose(float(late[1]), 5.5, atol=1e-3)
    np.testing.assert_allclose(float(grad), -1.0, atol=1e-3)  # a metre forward is a metre less behind
    np.testing.assert_allclose(late[[0, 2, 3]], 0.0, atol=1e-6)
    ahead, _ = behind(logged + 20.0)  # running ahead of the log is free
    np.testing.assert_allclose(float(ahead[1]), 0.0, atol=1e-6)
