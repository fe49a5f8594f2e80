"""All-object metrics: the culled offroad equals the brute-force definition, and per-object
metrics read at the ego's index equal the ego-only metrics."""

import glob
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxloop.sim import metrics as m
from jaxloop.sim.datatypes import ObjectState, RoadMap, stack_scenarios, trajectory_at
from jaxloop.sim.env import Env, EnvConfig
from jaxloop.sim.metrics import road
from jaxloop.sim.rollout import rollout

STEPS = (0, 60)


def _brute_offroad(state: ObjectState, start, end, valid) -> np.ndarray:
    """Straightforward float64 NumPy reference of the offroad definition, independent of the jitted code:
    each corner's nearest valid segment (ties within EDGE_TIE_TOLERANCE broken towards the farther
    supporting line; on an exact tie, off if any says so) has the corner on its left."""
    corners = np.asarray(m.boxes._corners(state), np.float64)  # [N, 4, 2]
    s, e, v = np.asarray(start, np.float64), np.asarray(end, np.float64), np.asarray(valid)
    seg = e - s
    len2 = np.maximum((seg ** 2).sum(-1), 1e-12)
    rel = corners[..., None, :] - s  # [N, 4, E, 2]
    t = np.clip((rel * seg).sum(-1) / len2, 0.0, 1.0)
    d2 = ((rel - t[..., None] * seg) ** 2).sum(-1)
    side = seg[:, 0] * rel[..., 1] - seg[:, 1] * rel[..., 0]
    key = np.where(v, np.maximum(d2 - m.EDGE_TIE_TOLERANCE * side ** 2 / len2, 0.0), np.inf)
    best = key.min(-1, keepdims=True)
    off = np.any((key <= best) & (side > 0) & np.isfinite(best), -1)
    return np.asarray(state.valid) & off.any(-1)


def _perturbed(state: ObjectState, seed: int, shift: float, far_every: int = 0) -> ObjectState:
    """Objects shifted by N(0, shift) m and turned at random; with `far_every`, every far_every-th object 25 m."""
    rng = np.random.default_rng(seed)
    n = state.x.shape
    scale = np.full(n, shift)
    if far_every:
        scale[..., ::far_every] = 25.0
    f = lambda a: jnp.asarray(a, jnp.float32)
    return state.replace(x=state.x + f(rng.normal(0, 1, n) * scale), y=state.y + f(rng.normal(0, 1, n) * scale),
                         yaw=state.yaw + f(rng.uniform(-math.pi, math.pi, n)))


@pytest.fixture(scope="module")
def real_scenes(shared_data):
    from jaxloop.data.gpudrive import load_gpudrive
    from jaxloop.data.womd import load_womd

    scenes = [next(load_womd(shared_data / "womd" / "motion_data_one_example.tfrecord"))[0]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sorted(glob.glob(str(shared_data / "gpudrive" / "*.json"))):
            scenes.append(load_gpudrive(path)[0])
    assert len(scenes) == 19
    return scenes


def test_culled_offroad_equals_the_reference_on_real_scenes(real_scenes):
    # Every scene at two steps, as logged and with objects shifted (3 m, every 16th 25 m) and
    # turned at random: the far shifts put objects where the culling bound fails and every
    # edge is tested, so both paths of `offroad` meet the reference.
    batch = stack_scenarios(real_scenes)
    rm = batch.roadmap
    assert road.edge_chunks_count(jax.tree.map(lambda a: a[0], rm)) > road.EDGE_CHUNKS_PER_OBJECT  # culled path

    def per_scene(roadmap, state):
        _, _, redo = road._culled_hits(state, roadmap)
        return m.offroad(state, roadmap), road.offroad_reference(state, roadmap), redo

    run = jax.jit(jax.vmap(per_scene))
    total = redone = offroad_count = 0
    for t in STEPS:
        logged = jax.vmap(lambda traj: trajectory_at(traj, t))(batch.log_trajectory)
        for k, shift in enumerate((0.0, 3.0)):
            state = logged if shift == 0.0 else _perturbed(logged, 7 * t + k, shift, far_every=16)
            fast, ref, redo = (np.asarray(a) for a in run(rm, state))
            np.testing.assert_array_equal(fast, ref, err_msg=f"step {t}, shift {shift}")
            valid = np.asarray(state.valid)
            total += valid.sum()
            redone += redo.sum()
            offroad_count += fast.sum()
            if t == 0 and shift in (0.0, 3.0):  # the NumPy float64 definition on the WOMD scene and one JSON scene
                for i in (0, 5):
                    one = jax.tree.map(lambda a: a[i], state)
                    np.testing.assert_array_equal(fast[i], _brute_offroad(one, rm.edge_start[i], rm.edge_end[i],
                                                                          rm.edge_valid[i]))
    # Both answers occur, and both the culled answer and the full-edge fallback decide some objects.
    assert 0 < offroad_count < total
    assert 0 < redone < total / 4


def _sharp_corner_map(turn_deg: float, filler: int = 120, invalid_filler: bool = False):
    """Two edge segments meeting at V = (10, 3) with a `turn_deg` turn (road on their right), each cut in
    eight pieces, plus far-away filler segments so that `offroad` culls; with `invalid_filler`, the
    filler is the real segments reversed (every point on the other side of them) and invalid."""
    th = math.radians(turn_deg)
    v = np.array([10.0, 3.0])
    d1, d2 = np.array([1.0, 0.0]), np.array([math.cos(th), math.sin(th)])
    cuts = np.linspace(0.0, 8.0, 9)
    start = [v - 8 * d1 + a * d1 for a in cuts[:-1]] + [v + a * d2 for a in cuts[:-1]]
    end = [v - 8 * d1 + a * d1 for a in cuts[1:]] + [v + a * d2 for a in cuts[1:]]
    for j in range(filler):  # a ring of short segments 300-400 m away
        a = 2 * math.pi * j / filler
        p = v + (300 + 100 * (j % 2)) * np.array([math.cos(a), math.sin(a)])
        start.append(p)
        end.append(p + np.array([1.0, 0.5]))
    start, end = np.asarray(start, np.float32), np.asarray(end, np.float32)
    valid = np.ones(len(start), bool)
    if invalid_filler:
        real = 2 * len(cuts) - 2
        start[real:], end[real:] = np.resize(end[:real], (filler, 2)), np.resize(start[:real], (filler, 2))
        valid[real:] = False
    return start, end, valid, v, d2


@jax.jit
def both_offroads(state, roadmap):
    return m.offroad(state, roadmap), road.offroad_reference(state, roadmap)


def test_culled_offroad_at_sharp_road_edge_corners():
    # As tests/test_metrics.py's sharp corner, with small boxes (0.2 x 0.1 m, so the corners sit
    # at the sampled points) around the vertex on both turns, through the culled path; and on the
    # same shapes with the filler invalid, reversed copies of the real segments, so that fewer
    # chunks hold a valid segment than each object takes and an invalid segment that counted
    # would flip every answer.
    for turn, invalid_filler in ((120.0, False), (-120.0, False), (120.0, True)):
        start, end, valid, v, d2 = _sharp_corner_map(turn, invalid_filler=invalid_filler)
        rng = np.random.default_rng(1)
        r, phi = rng.uniform(0.5, 5.0, 400), rng.uniform(-np.pi, np.pi, 400)
        u = np.stack([r * np.cos(phi), r * np.sin(phi)], -1)
        left1, left2 = u[:, 1] > 0, d2[0] * u[:, 1] - d2[1] * u[:, 0] > 0
        truth = (left1 & left2) if turn > 0 else (left1 | left2)
        n = len(u)
        f = lambda a: jnp.asarray(a, jnp.float32)
        state = ObjectState(x=f(v[0] + u[:, 0]), y=f(v[1] + u[:, 1]), z=f(np.zeros(n)), vel_x=f(np.zeros(n)),
                            vel_y=f(np.zeros(n)), yaw=f(np.zeros(n)), length=f(np.full(n, 1e-3)),
                            width=f(np.full(n, 1e-3)), height=f(np.ones(n)), valid=jnp.ones(n, bool))
        roadmap = _roadmap(start, end, valid)
        assert road.edge_chunks_count(roadmap) > road.EDGE_CHUNKS_PER_OBJECT
        fast, ref = (np.asarray(a) for a in both_offroads(state, roadmap))
        np.testing.assert_array_equal(fast, ref)
        # Tiny boxes: a box is off the road where its centre is, up to the points within 1 mm of an edge.
        near_edge = np.abs(u[:, 1]) < 2e-3
        np.testing.assert_array_equal(fast[~near_edge], truth[~near_edge])


def _roadmap(start, end, valid) -> RoadMap:
    from jaxloop.data.toy import make_toy_scenario
    rm = make_toy_scenario().roadmap
    return rm.replace(edge_start=jnp.asarray(start), edge_end=jnp.asarray(end), edge_valid=jnp.asarray(valid))


def test_per_object_metrics_at_the_ego_equal_the_ego_metrics(real_scenes):
    # A WOMD scene with the ego driven straight off its log and a JSON scene with it steered
    # off the road (from the 14th step on): every per-object metric read at the SDC equals
    # the ego-only one at every step.
    env = Env(EnvConfig(non_ego_agent="log"))
    every = m.MetricsConfig(per_object_overlap=True, per_object_offroad=True, per_object_red_light=True,
                            per_object_log_divergence=True)
    ego_only = m.MetricsConfig(per_object_overlap=False, per_object_offroad=False, per_object_red_light=False,
                               per_object_log_divergence=False)

    def go(sc, steer):
        state = env.reset(sc, jax.random.key(0))
        policy = lambda scenario, s, key: jnp.stack([jnp.float32(2.0), steer])
        both = lambda s, p, n, i: (m.step_metrics(s, p, n, i, config=every),
                                   m.step_metrics(s, p, n, i, config=ego_only))
        _, out = rollout(env, sc, state, policy, 20, extras_fn=both)
        return out.extras

    scenes = stack_scenarios([real_scenes[0], real_scenes[3]])
    per, ego = jax.jit(jax.vmap(go))(scenes, jnp.array([0.0, 0.15], jnp.float32))
    sdc = np.asarray(scenes.object_metadata.is_sdc)  # [4, N]
    for k in ("ego_overlap", "ego_offroad", "ego_log_divergence", "ego_log_valid", "ego_red_light",
              "ego_offroad_at_fault", "ego_overlap_at_fault"):
        np.testing.assert_array_equal(np.asarray(per[k]), np.asarray(ego[k]), err_msg=k)
    for k, e in (("overlap", "ego_overlap"), ("offroad", "ego_offroad"), ("log_divergence", "ego_log_divergence"),
                 ("red_light", "ego_red_light")):
        at_sdc = np.stack([np.asarray(per[k])[b][:, sdc[b]][:, 0] for b in range(2)])
        np.testing.assert_array_equal(at_sdc, np.asarray(ego[e]), err_msg=k)
    assert np.asarray(ego["ego_offroad"]).any() and not np.asarray(ego["ego_offroad"]).all()

    # The per-object functions against the ego ones on perturbed states, where overlaps and
    # offroad corners are frequent (every object in turn as the ego).
    sc = real_scenes[0]
    state = _perturbed(trajectory_at(sc.log_trajectory, 20), 3, 2.0)
    n = state.x.shape[0]

    @jax.jit
    def per_ego(state):
        ov, off = m.overlap(state), m.offroad(state, sc.roadmap)
        ego_ov = jax.vmap(lambda i: m.ego_overlap(state, i))(jnp.arange(n))
        ego_off = jax.vmap(lambda i: m.ego_offroad(state, sc.roadmap, i))(jnp.arange(n))
        return ov, ego_ov, off, ego_off

    ov, ego_ov, off, ego_off = (np.asarray(a) for a in per_ego(state))
    np.testing.assert_array_equal(ov, ego_ov)
    np.testing.assert_array_equal(off, ego_off)
    assert ov.any() and off.any() and not off.all()
