"""Every object's own logged path: arc length, projection, goal, completion."""

import jax.numpy as jnp
import numpy as np

from jaxloop.data.toy import make_track_scenario
from jaxloop.policy.observation import route_waypoints
from jaxloop.sim.datatypes import Route
from jaxloop.sim.metrics import paths

T = 21
TIME = np.arange(T) * 0.1


PLACEHOLDER = -1.0  # what a WOMD log stores at an invalid step


def _scene():
    # Object 0 drives +x at 10 m/s (20 m in 2 s); object 1 drives +y at 5 m/s from (0, 10), and its log is
    # invalid (placeholder coordinates) for steps 5..9: an occlusion gap; object 2 is parked; object 3 is never
    # valid; object 4 enters the scene at step 4 (placeholders before it) and drives +x at 10 m/s along y = -20.
    valid1 = np.ones(T, bool)
    valid1[5:10] = False
    y1 = np.where(valid1, 10.0 + 5.0 * TIME, PLACEHOLDER)
    valid4 = TIME >= 0.4 - 1e-6
    tracks = [dict(x=10.0 * TIME, y=np.zeros(T)),
              dict(x=np.where(valid1, 0.0, PLACEHOLDER), y=y1, valid=valid1),
              dict(x=np.full(T, 40.0), y=np.full(T, 3.5)),
              dict(x=np.zeros(T), y=np.zeros(T), valid=np.zeros(T, bool)),
              dict(x=np.where(valid4, 10.0 * TIME, PLACEHOLDER), y=np.where(valid4, -20.0, PLACEHOLDER), valid=valid4)]
    return make_track_scenario(tracks, num_objects=5)


def test_arc_length_goal_and_projection():
    p = paths.log_paths(_scene())
    # Object 0: 20 segments of 1 m -> 20 m. Object 1: 0.5 m a step, the gap bridged by one straight segment from
    # (0, 12) at step 4 to (0, 15) at step 10 -> 10 m in all. Object 2: parked, 0 m. Object 3: never valid.
    # Object 4: valid from step 4 at (4, -20) to (20, -20) -> 16 m.
    np.testing.assert_allclose(np.asarray(p.goal_s), [20.0, 10.0, 0.0, 0.0, 16.0], atol=1e-3)
    np.testing.assert_allclose(np.asarray(p.goal[:3]), [[20.0, 0.0], [0.0, 20.0], [40.0, 3.5]], atol=1e-4)
    assert np.asarray(p.has_path).tolist() == [True, True, True, False, True]
    # No path point is a placeholder: the gap repeats (0, 12), the steps before object 4 enters its first point.
    np.testing.assert_allclose(np.asarray(p.xy[1, 5:10]), [[0.0, 12.0]] * 5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(p.xy[4, :4]), [[4.0, -20.0]] * 4, atol=1e-4)
    assert np.asarray(p.span[4]).tolist() == [False] * 4 + [True] * (T - 4)
    # (5.3, 1.2) projects onto object 0's path at s = 5.3, 1.2 m beside it; object 1 at (0.4, 11.0) is
    # 1 m up its path, lateral 0.4; object 4 at (10, -19) is 6 m along its path, 1 m beside it.
    xy = jnp.array([[5.3, 1.2], [0.4, 11.0], [40.0, 3.5], [0.0, 0.0], [10.0, -19.0]])
    s, lat = paths.path_progress(p, xy)
    np.testing.assert_allclose(np.asarray(s), [5.3, 1.0, 0.0, 0.0, 6.0], atol=1e-3)
    np.testing.assert_allclose(np.asarray(lat), [1.2, 0.4, 0.0, 0.0, 1.0], atol=1e-3)
    # Inside the gap, (0.3, 13.5) lies on the bridging segment: s = 2 + 1.5 = 3.5, lateral 0.3.
    s_gap, lat_gap = paths.path_progress(p, jnp.array([[0.0, 0.0], [0.3, 13.5], [0, 0], [0, 0], [0, 0]]))
    np.testing.assert_allclose([float(s_gap[1]), float(lat_gap[1])], [3.5, 0.3], atol=1e-3)
    d = np.asarray(paths.goal_distance(p, xy))
    np.testing.assert_allclose(d[:3], [np.hypot(14.7, 1.2), np.hypot(0.4, 9.0), 0.0], atol=1e-3)
    assert np.isinf(d[3])


def test_own_path_waypoints_cross_gaps_and_late_entries():
    # Route waypoints along a logged path with a gap and with a late entry are evenly spaced along the real
    # path, never pulled toward a placeholder coordinate (which the old segment search interpolated toward).
    scenario = _scene()
    p = paths.log_paths(scenario)
    for i, start, expect in ((1, [0.0, 10.5], [[0.0, 11.5 + k] for k in range(6)]),  # 1 m spacing, across the gap
                             (4, [6.0, -20.0], [[7.0 + k, -20.0] for k in range(6)])):
        route = Route(xy=p.xy[i], arc_length=p.arc_length[i], valid=p.span[i])
        xy, valid = route_waypoints(scenario.replace(route=route), jnp.array(start), 6, 1.0)
        np.testing.assert_allclose(np.asarray(xy), expect, atol=1e-3)
        assert bool(np.all(valid))
        # The same with the log's own validity as the mask: invalid points are skipped, not interpolated toward.
        route = Route(xy=jnp.stack([scenario.log_trajectory.x[i], scenario.log_trajectory.y[i]], -1),
                      arc_length=p.arc_length[i], valid=p.valid[i])
        xy, _ = route_waypoints(scenario.replace(route=route), jnp.array(start), 6, 1.0)
        np.testing.assert_allclose(np.asarray(xy), expect, atol=1e-3)


def test_completion():
    # 12 m of 20 -> 0.6; more than the log -> 1; a log under MIN_PATH (3 m) has nothing to complete -> 1.
    out = paths.completion(jnp.array([12.0, 25.0, 0.0, -4.0]), jnp.array([20.0, 20.0, 3.0, 20.0]))
    np.testing.assert_allclose(np.asarray(out), [0.6, 1.0, 1.0, 0.0])
