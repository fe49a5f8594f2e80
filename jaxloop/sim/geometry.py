"""Planar geometry: oriented boxes, separating axes, segment distances, frames.

All functions are pure, shape-polymorphic over leading axes and differentiable
where the quantity is (the discrete overlap test is not; `box_separation` is its
continuous counterpart).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def wrap_angle(angle: jax.Array) -> jax.Array:
    """Wraps radians into [-pi, pi)."""
    return (angle + jnp.pi) % (2 * jnp.pi) - jnp.pi


def cross2(a: jax.Array, b: jax.Array) -> jax.Array:
    """z of the 2-D cross product `a x b`, over the last axis."""
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def rotate(xy: jax.Array, angle: jax.Array) -> jax.Array:
    """Rotates points `[..., 2]` counter-clockwise by `angle` `[...]`."""
    c, s = jnp.cos(angle), jnp.sin(angle)
    return jnp.stack([c * xy[..., 0] - s * xy[..., 1], s * xy[..., 0] + c * xy[..., 1]], axis=-1)


def to_local(xy: jax.Array, origin_xy: jax.Array, origin_yaw: jax.Array) -> jax.Array:
    """Global points `[..., 2]` into the frame at `origin_xy` `[..., 2]` heading `origin_yaw` `[...]`."""
    return rotate(xy - origin_xy, -origin_yaw)


def to_global(xy: jax.Array, origin_xy: jax.Array, origin_yaw: jax.Array) -> jax.Array:
    """Inverse of `to_local`."""
    return rotate(xy, origin_yaw) + origin_xy


def box_corners(x: jax.Array, y: jax.Array, yaw: jax.Array, length: jax.Array, width: jax.Array) -> jax.Array:
    """Corners `[..., 4, 2]` of oriented boxes: front-left, rear-left, rear-right, front-right (CCW)."""
    c, s = jnp.cos(yaw), jnp.sin(yaw)
    hl, hw = length / 2, width / 2
    sign_l = jnp.array([1.0, -1.0, -1.0, 1.0])
    sign_w = jnp.array([1.0, 1.0, -1.0, -1.0])
    dl = hl[..., None] * sign_l
    dw = hw[..., None] * sign_w
    cx = x[..., None] + dl * c[..., None] - dw * s[..., None]
    cy = y[..., None] + dl * s[..., None] + dw * c[..., None]
    return jnp.stack([cx, cy], axis=-1)


def _box_axes(yaw: jax.Array) -> jax.Array:
    """The two unit face normals `[..., 2, 2]` of a box."""
    c, s = jnp.cos(yaw), jnp.sin(yaw)
    return jnp.stack([jnp.stack([c, s], -1), jnp.stack([-s, c], -1)], axis=-2)


def box_separation(box_a: jax.Array, box_b: jax.Array) -> jax.Array:
    """Signed separation between oriented boxes along their four face normals.

    Boxes are `[..., 5]` = (x, y, yaw, length, width). The result `[...]` is the
    largest gap over the separating axes: positive when the boxes are apart (a lower
    bound of their distance, exact when the nearest features are faces), negative
    when they overlap (minus the penetration depth along the best axis). It is
    continuous and piecewise smooth, so it serves as the overlap surrogate.
    """
    box_a, box_b = jnp.broadcast_arrays(box_a, box_b)
    axes = jnp.concatenate([_box_axes(box_a[..., 2]), _box_axes(box_b[..., 2])], axis=-2)  # [..., 4, 2]

    def radius(box: jax.Array) -> jax.Array:  # projection half-extent on each axis [..., 4]
        own = _box_axes(box[..., 2])  # [..., 2, 2]
        proj = jnp.abs(jnp.einsum("...ad,...kd->...ak", axes, own))  # [..., 4, 2]
        half = jnp.stack([box[..., 3] / 2, box[..., 4] / 2], -1)  # [..., 2]
        return jnp.einsum("...ak,...k->...a", proj, half)

    centre_gap = jnp.abs(jnp.einsum("...ad,...d->...a", axes, box_b[..., :2] - box_a[..., :2]))
    gaps = centre_gap - radius(box_a) - radius(box_b)
    return jnp.max(gaps, axis=-1)


def smooth_box_separation(box_a: jax.Array, box_b: jax.Array, temperature: float = 0.1) -> jax.Array:
    """`box_separation` with the max over axes replaced by a log-sum-exp (smooth everywhere but |.|)."""
    box_a, box_b = jnp.broadcast_arrays(box_a, box_b)
    axes = jnp.concatenate([_box_axes(box_a[..., 2]), _box_axes(box_b[..., 2])], axis=-2)

    def radius(box: jax.Array) -> jax.Array:
        own = _box_axes(box[..., 2])
        proj = jnp.sqrt(jnp.einsum("...ad,...kd->...ak", axes, own) ** 2 + 1e-9)
        half = jnp.stack([box[..., 3] / 2, box[..., 4] / 2], -1)
        return jnp.einsum("...ak,...k->...a", proj, half)

    d = jnp.einsum("...ad,...d->...a", axes, box_b[..., :2] - box_a[..., :2])
    gaps = jnp.sqrt(d ** 2 + 1e-6) - radius(box_a) - radius(box_b)
    return temperature * jax.nn.logsumexp(gaps / temperature, axis=-1)


def pairwise_box_separation(boxes: jax.Array, valid: jax.Array, smooth: bool = False) -> jax.Array:
    """All-pairs separation `[..., N, N]` of boxes `[..., N, 5]`.

    Pairs with an invalid member and the diagonal are +inf (never overlapping).
    """
    fn = smooth_box_separation if smooth else box_separation
    sep = fn(boxes[..., :, None, :], boxes[..., None, :, :])
    n = boxes.shape[-2]
    mask = valid[..., :, None] & valid[..., None, :] & ~jnp.eye(n, dtype=bool)
    return jnp.where(mask, sep, jnp.inf)


def pairwise_overlap(boxes: jax.Array, valid: jax.Array) -> jax.Array:
    """Separating-axis test over all pairs: `[..., N, N]` bool, True where two valid boxes overlap."""
    return pairwise_box_separation(boxes, valid) < 0.0


def segment_projection(points: jax.Array, seg_start: jax.Array, seg_end: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Nearest point of segments to points `[..., 2]` (broadcast): (t `[...]`, distance `[...]` >= 0).

    With d = end - start, t = clip(<p - start, d> / |d|^2, 0, 1) is the nearest point's
    fraction along the segment and distance = sqrt(|p - (start + t d)|^2 + 1e-12) (smooth at 0).
    The one projection `point_segment_distance`, `project_to_polyline` and
    `metrics.agents.polyline_distance` share.
    """
    seg = seg_end - seg_start
    seg_len2 = jnp.sum(seg ** 2, -1)
    rel = points - seg_start
    t = jnp.clip(jnp.sum(rel * seg, -1) / jnp.maximum(seg_len2, 1e-12), 0.0, 1.0)
    nearest = seg_start + t[..., None] * seg
    return t, jnp.sqrt(jnp.sum((points - nearest) ** 2, -1) + 1e-12)


def point_segment_distance(points: jax.Array, seg_start: jax.Array, seg_end: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Distance and side of points `[..., 2]` to segments (broadcast).

    Returns (distance `[...]` >= 0, side `[...]`) where side is the 2-D cross product
    `cross(end - start, p - start)` normalised by the segment length: positive on the
    segment's left.
    """
    _, dist = segment_projection(points, seg_start, seg_end)
    seg = seg_end - seg_start
    side = cross2(seg, points - seg_start) / jnp.sqrt(jnp.maximum(jnp.sum(seg ** 2, -1), 1e-12))
    return dist, side


def signed_distance_to_polylines(points: jax.Array, seg_start: jax.Array, seg_end: jax.Array,
                                 seg_valid: jax.Array) -> jax.Array:
    """Signed distance of points `[..., M, 2]` to the nearest of segments `[..., E, 2]`.

    Positive on the nearest segment's left (off the road, for road edges), negative on
    its right. Returns `[..., M]`; +inf-free: with no valid segment the result is -1e3.
    """
    dist, side = point_segment_distance(points[..., :, None, :], seg_start[..., None, :, :], seg_end[..., None, :, :])
    dist = jnp.where(seg_valid[..., None, :], dist, jnp.inf)
    nearest = jnp.argmin(dist, axis=-1)
    d = jnp.take_along_axis(dist, nearest[..., None], -1)[..., 0]
    s = jnp.take_along_axis(side, nearest[..., None], -1)[..., 0]
    signed = jnp.where(s > 0, d, -d)
    return jnp.where(jnp.any(seg_valid, -1)[..., None], signed, -1e3)


def polyline_arc_length(xy: jax.Array, valid: jax.Array) -> jax.Array:
    """Cumulative arc length `[..., R]` of a polyline `[..., R, 2]` (invalid points add nothing)."""
    seg = jnp.linalg.norm(jnp.diff(xy, axis=-2), axis=-1)
    seg = jnp.where(valid[..., 1:] & valid[..., :-1], seg, 0.0)
    return jnp.concatenate([jnp.zeros_like(seg[..., :1]), jnp.cumsum(seg, -1)], -1)


def project_to_polyline(point: jax.Array, xy: jax.Array, arc_length: jax.Array,
                        valid: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Projects `point` `[..., 2]` onto a polyline `[..., R, 2]`.

    Returns (arc position `[...]`, lateral distance `[...]` >= 0, tangent heading `[...]`).
    """
    start, end = xy[..., :-1, :], xy[..., 1:, :]
    seg_valid = valid[..., :-1] & valid[..., 1:]
    t, dist = segment_projection(point[..., None, :], start, end)
    dist = jnp.where(seg_valid, dist, jnp.inf)
    i = jnp.argmin(dist, axis=-1)
    pick = lambda a: jnp.take_along_axis(a, i[..., None], -1)[..., 0]
    seg = end - start
    seg_len = jnp.sqrt(jnp.maximum(jnp.sum(seg ** 2, -1), 1e-12))
    s = pick(arc_length[..., :-1]) + pick(t) * pick(seg_len)
    heading = jnp.arctan2(pick(seg[..., 1]), pick(seg[..., 0]))
    return s, pick(dist), heading
