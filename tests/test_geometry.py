import jax
import jax.numpy as jnp
import numpy as np

from jaxloop.sim import geometry as g


def test_wrap_angle():
    np.testing.assert_allclose(g.wrap_angle(jnp.array([0.0, 3 * np.pi / 2, -3 * np.pi / 2, 2 * np.pi])),
                               [0.0, -np.pi / 2, np.pi / 2, 0.0], atol=1e-6)


def test_box_corners_axis_aligned_and_rotated():
    c = g.box_corners(jnp.array(1.0), jnp.array(2.0), jnp.array(0.0), jnp.array(4.0), jnp.array(2.0))
    # half length 2, half width 1 about (1, 2): FL (3,3), RL (-1,3), RR (-1,1), FR (3,1)
    np.testing.assert_allclose(c, [[3, 3], [-1, 3], [-1, 1], [3, 1]], atol=1e-6)
    r = g.box_corners(jnp.array(0.0), jnp.array(0.0), jnp.array(np.pi / 2), jnp.array(4.0), jnp.array(2.0))
    # rotated 90 deg: front points to +y: FL (-1, 2), RL (-1, -2), RR (1, -2), FR (1, 2)
    np.testing.assert_allclose(r, [[-1, 2], [-1, -2], [1, -2], [1, 2]], atol=1e-6)


def _box(x, y, yaw, length=4.0, width=2.0):
    return jnp.array([x, y, yaw, length, width], jnp.float32)


def test_box_separation_cases():
    a = _box(0, 0, 0)
    # Separated along x: centres 5 apart, half lengths 2 + 2 -> gap 1.
    np.testing.assert_allclose(g.box_separation(a, _box(5, 0, 0)), 1.0, atol=1e-5)
    # Touching: centres 4 apart -> gap 0 (not an overlap under the strict test).
    np.testing.assert_allclose(g.box_separation(a, _box(4, 0, 0)), 0.0, atol=1e-5)
    # Overlapping by 0.5 m along y: centres 1.5 apart, half widths 1 + 1.
    np.testing.assert_allclose(g.box_separation(a, _box(0, 1.5, 0)), -0.5, atol=1e-5)
    # Rotated 45 deg box whose corner reaches x = 2 + 0.1 into a at its right face:
    # the rotated square 2x2 has half-diagonal sqrt(2); centre at 2 + sqrt(2) - 0.1.
    cx = 2 + np.sqrt(2) - 0.1
    sep = g.box_separation(a, _box(cx, 0, np.pi / 4, 2.0, 2.0))
    np.testing.assert_allclose(sep, -0.1, atol=1e-4)
    sep_far = g.box_separation(a, _box(cx + 0.3, 0, np.pi / 4, 2.0, 2.0))
    np.testing.assert_allclose(sep_far, 0.2, atol=1e-4)


def test_pairwise_overlap_masks_invalid_and_self():
    boxes = jnp.stack([_box(0, 0, 0), _box(1, 0, 0.3), _box(20, 0, 0), _box(0.5, 0.5, 0)])
    valid = jnp.array([True, True, True, False])
    ov = g.pairwise_overlap(boxes, valid)
    assert ov.shape == (4, 4)
    assert bool(ov[0, 1]) and bool(ov[1, 0])
    assert not bool(ov[0, 2]) and not bool(ov[0, 0])
    assert not bool(ov[0, 3])  # invalid never overlaps


def test_smooth_separation_gradient_and_limit():
    a = _box(0, 0, 0)
    f = lambda x: g.smooth_box_separation(a, _box(x, 0.3, 0.2), temperature=0.05)
    grad = jax.grad(f)(6.0)
    assert float(grad) > 0  # moving away increases clearance
    np.testing.assert_allclose(f(6.0), g.box_separation(a, _box(6.0, 0.3, 0.2)), atol=0.1)


def test_point_segment_signed_distance():
    # Segment from (0,0) to (10,0): point (5, 2) is 2 m on its left (+), (5,-3) 3 m on its right (-).
    pts = jnp.array([[5.0, 2.0], [5.0, -3.0], [13.0, 4.0]])
    d, side = g.point_segment_distance(pts, jnp.array([0.0, 0.0]), jnp.array([10.0, 0.0]))
    np.testing.assert_allclose(d, [2.0, 3.0, 5.0], atol=1e-5)  # last: to the end point (3, 4) -> 5
    assert side[0] > 0 and side[1] < 0
    sd = g.signed_distance_to_polylines(pts, jnp.array([[0.0, 0.0]]), jnp.array([[10.0, 0.0]]), jnp.array([True]))
    np.testing.assert_allclose(sd[:2], [2.0, -3.0], atol=1e-5)


def test_frames_round_trip():
    rng = np.random.default_rng(0)
    xy = jnp.asarray(rng.normal(size=(5, 2)), jnp.float32)
    origin, yaw = jnp.array([3.0, -1.0]), jnp.array(0.7)
    np.testing.assert_allclose(g.to_global(g.to_local(xy, origin, yaw), origin, yaw), xy, atol=1e-5)
    # A point 1 m ahead of an origin heading +y is at local (1, 0).
    np.testing.assert_allclose(g.to_local(jnp.array([0.0, 1.0]), jnp.zeros(2), jnp.array(np.pi / 2)), [1.0, 0.0],
                               atol=1e-6)


def test_project_to_polyline():
    xy = jnp.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0]])
    valid = jnp.ones(3, bool)
    arc = g.polyline_arc_length(xy, valid)
    np.testing.assert_allclose(arc, [0, 10, 20])
    s, lat, heading = g.project_to_polyline(jnp.array([11.0, 4.0]), xy, arc, valid)
    np.testing.assert_allclose([s, lat, heading], [14.0, 1.0, np.pi / 2], atol=1e-5)
