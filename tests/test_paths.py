"""Every object's own logged path: arc length, projection, goal, completion."""

import jax.numpy as jnp
import numpy as np

from jaxloop.data.toy import make_track_scenario
from jaxloop.sim.metrics import paths

T = 21
TIME = np.arange(T) * 0.1


def _scene():
    # Object 0 drives +x at 10 m/s (20 m in 2 s); object 1 drives +y at 5 m/s from (0, 10), and its
    # log is invalid for steps 5..9 (a gap: no segment touching the gap counts); object 2 is parked.
    valid1 = np.ones(T, bool)
    valid1[5:10] = False
    tracks = [dict(x=10.0 * TIME, y=np.zeros(T)), dict(x=np.zeros(T), y=10.0 + 5.0 * TIME, valid=valid1),
              dict(x=np.full(T, 40.0), y=np.full(T, 3.5))]
    return make_track_scenario(tracks, num_objects=4)


def test_arc_length_goal_and_projection():
    p = paths.log_paths(_scene())
    # Object 0: 20 segments of 1 m -> 20 m. Object 1: 20 segments of 0.5 m, minus the 6 that touch the
    # gap (4-5 .. 9-10) -> 14 * 0.5 = 7 m. Object 2: parked, 0 m. Object 3: never valid.
    np.testing.assert_allclose(np.asarray(p.goal_s[:3]), [20.0, 7.0, 0.0], atol=1e-3)
    np.testing.assert_allclose(np.asarray(p.goal[:3]), [[20.0, 0.0], [0.0, 20.0], [40.0, 3.5]], atol=1e-4)
    assert np.asarray(p.has_path).tolist() == [True, True, True, False]
    # (5.3, 1.2) projects onto object 0's path at s = 5.3, 1.2 m beside it; object 1 at (0.4, 11.0) is
    # 1 m up its path (segment 0-1 .. 1-2, before the gap): s = 1.0, lateral 0.4.
    xy = jnp.array([[5.3, 1.2], [0.4, 11.0], [40.0, 3.5], [0.0, 0.0]])
    s, lat = paths.path_progress(p, xy)
    np.testing.assert_allclose(np.asarray(s), [5.3, 1.0, 0.0, 0.0], atol=1e-3)
    np.testing.assert_allclose(np.asarray(lat), [1.2, 0.4, 0.0, 0.0], atol=1e-3)
    d = np.asarray(paths.goal_distance(p, xy))
    np.testing.assert_allclose(d[:3], [np.hypot(14.7, 1.2), np.hypot(0.4, 9.0), 0.0], atol=1e-3)
    assert np.isinf(d[3])


def test_completion():
    # 12 m of 20 -> 0.6; more than the log -> 1; a log under MIN_PATH (3 m) has nothing to complete -> 1.
    out = paths.completion(jnp.array([12.0, 25.0, 0.0, -4.0]), jnp.array([20.0, 20.0, 3.0, 20.0]))
    np.testing.assert_allclose(np.asarray(out), [0.6, 1.0, 1.0, 0.0])
