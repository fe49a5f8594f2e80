"""Offroad: box corners against the directed road-edge segments (drivable area on their right)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxloop.sim.compute import materialize
from jaxloop.sim.datatypes import ObjectState, RoadMap
from jaxloop.sim.metrics.boxes import _corners, take_object


def _segment_d2(px, py, ax, ay, bx, by):
    """Squared distance from points to segments (broadcast, elementwise) and the side cross product."""
    sx, sy = bx - ax, by - ay
    rx, ry = px - ax, py - ay
    t = jnp.clip((rx * sx + ry * sy) / jnp.maximum(sx * sx + sy * sy, 1e-12), 0.0, 1.0)
    ex, ey = rx - t * sx, ry - t * sy
    return ex * ex + ey * ey, sx * ry - sy * rx


EDGE_TIE_TOLERANCE = 1e-4  # relative, on squared distances: segments this close are "equally nearest"


def _segment_frames(start: jax.Array, end: jax.Array):
    """Per segment `[E]`: direction (sx, sy) = end - start and 1 / max(|end - start|^2, 1e-12)."""
    sx, sy = end[..., 0] - start[..., 0], end[..., 1] - start[..., 1]
    return sx, sy, 1.0 / jnp.maximum(sx * sx + sy * sy, 1e-12)


def _frame_terms(px, py, ax, ay, sx, sy, inv_len2):
    """Squared distance, ordering key (not masked) and side cross product of points to segments given by
    start (ax, ay), direction (sx, sy) and inverse squared length (broadcast, elementwise).

    The projection parameter is `clip(dot(p - a, s) * inv_len2, 0, 1)` (a product, not a
    division per pair); the key is `max(d2 - EDGE_TIE_TOLERANCE * p2, 0)` with
    `p2 = side^2 * inv_len2` the squared distance to the supporting line.
    """
    rx, ry = px - ax, py - ay
    t = jnp.clip((rx * sx + ry * sy) * inv_len2, 0.0, 1.0)
    ex, ey = rx - t * sx, ry - t * sy
    d2 = ex * ex + ey * ey
    side = sx * ry - sy * rx
    # Clamped at 0: float noise must not make a key negative (its bit pattern would then sort last).
    key = jnp.maximum(d2 - EDGE_TIE_TOLERANCE * (side * side * inv_len2), 0.0)
    return d2, key, side


def _edge_terms(points: jax.Array, start: jax.Array, end: jax.Array, valid: jax.Array):
    """Squared distance `[M, E]`, its tie-broken ordering key `[M, E]` and the side cross product `[M, E]`.

    The key is `d2 - EDGE_TIE_TOLERANCE * p2`, with `p2` the squared distance to the
    segment's supporting line (`p2 <= d2`): among segments equally near (within the
    tolerance), the one whose line the point is farther from orders first. Invalid
    segments get an infinite key. The per-segment terms (direction, inverse squared
    length) are computed once per segment (`_segment_frames`).
    """
    sx, sy, inv = _segment_frames(start, end)
    d2, key, side = _frame_terms(points[:, None, 0], points[:, None, 1], start[None, :, 0], start[None, :, 1],
                                 sx[None, :], sy[None, :], inv[None, :])
    return d2, jnp.where(valid[None, :], key, jnp.inf), side


def signed_edge_distance(points: jax.Array, start: jax.Array, end: jax.Array, valid: jax.Array) -> jax.Array:
    """Signed distance `[M]` of points `[M, 2]` to the nearest valid segment `[E, 2]` (> 0: on its left).

    Same convention as `geometry.signed_distance_to_polylines` (-1e3 with no valid
    segment), written as elementwise work plus reductions (no gathers).

    Which side: that of the nearest segment; among segments equally near (squared
    distances within `EDGE_TIE_TOLERANCE`, relative), the one whose supporting line the
    point is farthest from decides, and on an exact tie the point is off the road if any
    of them says so. Why: behind a shared vertex both segments are nearest at the vertex
    itself, so their distances agree up to float rounding (16.0 vs 16.000002), and at a
    sharp vertex (a turn of more than 90 degrees) their sides can disagree. The true
    side there is the one of the segment whose line is farther: for a corner turning
    left (towards the off-road side, a reflex vertex of the road) that makes the point
    on the road unless both say off; for a corner turning right (a convex vertex of the
    road) off the road if either says so. Between distinct segments, which are equally
    near only by coincidence, the rule changes nothing but a tie's winner. On straight
    polylines the segments meeting at a vertex share a line and agree.
    """
    d2, key, side = _edge_terms(points, start, end, valid)
    d2_min = jnp.min(jnp.where(valid[None, :], d2, jnp.inf), -1)
    key_min = jnp.min(key, -1)
    # "The first segment in key order has the point on its left", as float min-reductions
    # (boolean any-reductions are slow on CPU).
    off = jnp.min(jnp.where(side > 0.0, key, jnp.inf), -1) <= key_min
    dist = jnp.sqrt(jnp.where(jnp.isfinite(d2_min), d2_min, 0.0) + 1e-12)
    return jnp.where(jnp.any(valid), jnp.where(off, dist, -dist), -1e3)


def _nearest_side_key(d2: jax.Array, left: jax.Array) -> jax.Array:
    """uint32 keys whose minimum is the nearest segment, ties broken towards `left` (elementwise).

    A non-negative float32's bit pattern orders like its value, and its top (sign) bit
    is 0, so `bits(d2) << 1 | not left` keeps d2 exactly and puts, among segments at
    the same distance, one with the point on its left first. One integer min-reduction
    then answers both "how far" and "is some nearest segment's left side the point's".
    `d2` may be any non-negative ordering key (`_edge_terms`); +inf sorts last.
    """
    bits = jax.lax.bitcast_convert_type(d2, jnp.uint32)
    return (bits << 1) | (~left).astype(jnp.uint32)


def edge_offroad(points: jax.Array, start: jax.Array, end: jax.Array, valid: jax.Array) -> jax.Array:
    """`[M]` bool: `signed_edge_distance(points, start, end, valid) > 0`, in one reduction pass (not differentiable).

    A point is off the road when the first segment in the tie-broken order of
    `signed_edge_distance` has it on its left; with no valid segment it is not.
    """
    _, key, side = _edge_terms(points, start, end, valid)
    key = jnp.where(valid[None, :], _nearest_side_key(key, side > 0.0), jnp.uint32(0xFFFFFFFF))
    return (jnp.min(key, -1) & 1) == 0


def corner_road_distance(corners: jax.Array, roadmap: RoadMap) -> jax.Array:
    """Signed distance `[..., 4]` of box corners `[..., 4, 2]` to the nearest road edge (> 0: off road)."""
    flat = corners.reshape(-1, 2)
    d = signed_edge_distance(flat, roadmap.edge_start, roadmap.edge_end, roadmap.edge_valid)
    return d.reshape(corners.shape[:-1])


def _culled_edges(center: jax.Array, roadmap: RoadMap, k: int):
    """The `k` road-edge segments `[k, 2]` nearest to `center` `[2]` (a cheap pass over [E])."""
    k = min(k, roadmap.edge_start.shape[-2])
    d2, _ = _segment_d2(center[0], center[1], roadmap.edge_start[:, 0], roadmap.edge_start[:, 1],
                        roadmap.edge_end[:, 0], roadmap.edge_end[:, 1])
    d2 = jnp.where(roadmap.edge_valid, d2, jnp.inf)
    _, idx = jax.lax.top_k(-d2, k)
    return roadmap.edge_start[idx], roadmap.edge_end[idx], roadmap.edge_valid[idx]


def _ego_corners_and_edges(state: ObjectState, roadmap: RoadMap, ego: jax.Array, edge_cull: int):
    """The valid flag `[]` and corners `[4, 2]` of the ego, and the road edges to test them against
    (start `[E', 2]`, end `[E', 2]`, valid `[E']`: all of them, or the `edge_cull` nearest)."""
    e = take_object(state, ego)
    # The four corners meet every edge: computed once, not per (corner, edge) pair.
    corners = jnp.stack(materialize(*jnp.moveaxis(_corners(e), -1, 0)), -1)
    if edge_cull > 0:
        edges = _culled_edges(jnp.stack([e.x, e.y]), roadmap, edge_cull)
    else:
        edges = roadmap.edge_start, roadmap.edge_end, roadmap.edge_valid
    return e.valid, corners, edges


def ego_corner_road_distance(state: ObjectState, roadmap: RoadMap, ego: jax.Array, edge_cull: int = 0) -> jax.Array:
    """Signed distance `[4]` of the ego's corners to the nearest road edge (> 0: off road)."""
    _, corners, edges = _ego_corners_and_edges(state, roadmap, ego, edge_cull)
    return signed_edge_distance(corners, *edges)


def offroad_reference(state: ObjectState, roadmap: RoadMap) -> jax.Array:
    """`offroad` by brute force: every corner against every edge (`[N, 4, E]` work). The definition `offroad` keeps."""
    return state.valid & jnp.any(corner_road_distance(_corners(state), roadmap) > 0.0, -1)


# Culling of the per-object offroad test (`offroad`): the road edges are regrouped into
# spatially coherent chunks of EDGE_CHUNK segments, and each object is tested against the
# EDGE_CHUNKS_PER_OBJECT chunks whose bounding boxes are nearest to its corners' bounding box.
EDGE_CHUNK = 8
EDGE_CHUNKS_PER_OBJECT = 10


def _z_order(x: jax.Array, y: jax.Array, valid: jax.Array) -> jax.Array:
    """The permutation `[E]` that sorts points along a Z-order curve over the valid points' extent (invalid last).

    Each point's key holds its Z-order code (coordinates quantised to (32 - b) / 2 bits)
    above its index (the low b = ceil(log2 E) bits), so one sort of a single uint32 array
    (cheaper on CPU than an argsort) yields the permutation in its low bits.
    """
    num = x.shape[-1]
    index_bits = max(1, (num - 1).bit_length())
    axis_bits = (32 - index_bits) // 2
    lo_x, hi_x = jnp.min(jnp.where(valid, x, jnp.inf)), jnp.max(jnp.where(valid, x, -jnp.inf))
    lo_y, hi_y = jnp.min(jnp.where(valid, y, jnp.inf)), jnp.max(jnp.where(valid, y, -jnp.inf))
    span = jnp.maximum(jnp.maximum(hi_x - lo_x, hi_y - lo_y), 1e-3)
    top = float((1 << axis_bits) - 2)  # all ones is the code of the invalid points

    def spread(v, lo):  # axis_bits (<= 16) bits -> every other bit
        n = jnp.where(valid, jnp.clip((v - lo) / span * top, 0.0, top), 0.0).astype(jnp.uint32)
        n = (n | (n << 8)) & jnp.uint32(0x00FF00FF)
        n = (n | (n << 4)) & jnp.uint32(0x0F0F0F0F)
        n = (n | (n << 2)) & jnp.uint32(0x33333333)
        return (n | (n << 1)) & jnp.uint32(0x55555555)

    code = jnp.where(valid, spread(x, lo_x) | (spread(y, lo_y) << 1), jnp.uint32((1 << (2 * axis_bits)) - 1))
    key = (code << index_bits) | jnp.arange(num, dtype=jnp.uint32)
    return (jnp.sort(key) & jnp.uint32((1 << index_bits) - 1)).astype(jnp.int32)


def edge_chunks(roadmap: RoadMap, chunk: int = EDGE_CHUNK):
    """The road edges regrouped for culling: (start `[C, G, 2]`, end `[C, G, 2]`, valid `[C, G]`, box `[C, 4]`).

    Segments are ordered along a Z-order curve of their midpoints (so each run of
    `chunk` = G is compact) and cut into C = ceil(E / G) chunks; `box` is each chunk's
    axis-aligned bounding box (min x, min y, max x, max y) over its valid segments (+inf /
    -inf without one). Depends on the map only: inside a rollout XLA computes it once.
    """
    start, end, valid = (jnp.asarray(a) for a in (roadmap.edge_start, roadmap.edge_end, roadmap.edge_valid))
    num = start.shape[-2]
    pad = -num % chunk
    if pad:
        start = jnp.concatenate([start, jnp.zeros((pad, 2), start.dtype)])
        end = jnp.concatenate([end, jnp.zeros((pad, 2), end.dtype)])
        valid = jnp.concatenate([valid, jnp.zeros((pad,), bool)])
    mid = 0.5 * (start + end)
    order = _z_order(mid[:, 0], mid[:, 1], valid)
    start, end, valid = start[order], end[order], valid[order]
    c = (num + pad) // chunk
    start, end, valid = start.reshape(c, chunk, 2), end.reshape(c, chunk, 2), valid.reshape(c, chunk)
    lo = jnp.where(valid[..., None], jnp.minimum(start, end), jnp.inf).min(1)  # [C, 2]
    hi = jnp.where(valid[..., None], jnp.maximum(start, end), -jnp.inf).max(1)
    return start, end, valid, jnp.concatenate([lo, hi], -1)


def offroad(state: ObjectState, roadmap: RoadMap) -> jax.Array:
    """Per object `[N]` bool: valid and some corner is off the road (`signed_edge_distance > 0`).

    Exactly `offroad_reference` (the same segment terms, tie rule and booleans), with
    the edges culled per object: each object's corners meet only the segments of the
    EDGE_CHUNKS_PER_OBJECT chunks (`edge_chunks`) whose boxes are nearest to the
    axis-aligned bounding box of its corners (`[N, C]` box distances, then
    `[N, 4, K * G]` segment terms, one min-reduction per corner). Every segment left out is
    at least `b` from each corner, with `b` the box distance of the nearest chunk left
    out; when `b^2` is above the nearest culled segment's ordering key (with the tie
    tolerance and a rounding margin), no segment left out can be nearest or tie. A valid
    object whose corners miss the bound (far from every edge, or edges crowding the
    culled ones) is tested against every edge, one such object at a time, in a loop that
    does not run while none needs it. The chunk layout (`_chunk_table`) depends on the
    map only, so inside a rollout XLA computes it once per episode, not per step.
    """
    with jax.named_scope("metrics.offroad"):
        if edge_chunks_count(roadmap) <= EDGE_CHUNKS_PER_OBJECT:
            return offroad_reference(state, roadmap)
        corners, hit, redo = _culled_hits(state, roadmap)

        def pending(carry):
            return jnp.any(carry[1])

        def one(carry):  # every edge against the first object left to redo
            hit, redo = carry
            pick = jnp.arange(redo.shape[0]) == jnp.argmax(redo)
            pts = jnp.sum(jnp.where(pick[:, None, None], corners, 0.0), 0)  # [4, 2]
            full = jnp.any(edge_offroad(pts, roadmap.edge_start, roadmap.edge_end, roadmap.edge_valid))
            return jnp.where(pick, full, hit), redo & ~pick

        hit, _ = jax.lax.while_loop(pending, one, (hit, redo))
        return state.valid & hit


def edge_chunks_count(roadmap: RoadMap, chunk: int = EDGE_CHUNK) -> int:
    """C, the number of chunks of `edge_chunks` (static)."""
    return -(-roadmap.edge_start.shape[-2] // chunk)


# Where `_chunk_table` puts invalid segments: a point this far (in m, on both axes) from every
# real one, of zero length, so its key (about 2e30) is never the least and its side never left.
_FAR = 1e15
# The squared box distance `_culled_hits` gives a chunk without a valid segment (finite: no inf - inf).
_NO_CHUNK = 1e38


def _chunk_table(roadmap: RoadMap, chunk: int = EDGE_CHUNK):
    """`edge_chunks` as the culled pass reads it: the segments `[C, G, 5]` as (start x, start y, direction x,
    direction y, inverse squared length) (`_segment_frames`), and the chunk boxes as four `[C]` arrays
    (min x, min y, max x, max y).

    Invalid segments become zero-length segments at (`_FAR`, `_FAR`), so the culled pass needs
    no validity mask. Depends on the map only: inside a rollout XLA computes it once.
    """
    start, end, valid, _ = edge_chunks(roadmap, chunk)
    sx, sy, inv = _segment_frames(start, end)
    far = jnp.float32(_FAR)
    rows = (jnp.where(valid, start[..., 0], far), jnp.where(valid, start[..., 1], far), jnp.where(valid, sx, 0.0),
            jnp.where(valid, sy, 0.0), jnp.where(valid, inv, 1e12))
    lo = jnp.where(valid[..., None], jnp.minimum(start, end), jnp.inf)  # per axis: four contiguous `[C]` arrays
    hi = jnp.where(valid[..., None], jnp.maximum(start, end), -jnp.inf)
    return jnp.stack(rows, -1), (lo[..., 0].min(1), lo[..., 1].min(1), hi[..., 0].max(1), hi[..., 1].max(1))


def _culled_hits(state: ObjectState, roadmap: RoadMap):
    """The culled pass of `offroad`: corners `[N, 4, 2]`, some corner off the road among the culled edges `[N]`,
    and which valid objects the culled answer is not exact for `[N]`."""
    table, box = _chunk_table(roadmap)  # [C, G, 5], 4 x [C]
    k = EDGE_CHUNKS_PER_OBJECT
    corners = _corners(state)  # [N, 4, 2]
    # The corners meet every culled segment: computed once, not per (corner, segment) pair.
    px, py = materialize(corners[..., 0], corners[..., 1])  # [N, 4]
    # Gaps between each object's axis-aligned bounding box and each chunk's box: a lower
    # bound on the distance from any corner to any segment of the chunk.
    ox0, ox1 = jnp.min(px, -1)[:, None], jnp.max(px, -1)[:, None]  # [N, 1]
    oy0, oy1 = jnp.min(py, -1)[:, None], jnp.max(py, -1)[:, None]
    lo_x, lo_y, hi_x, hi_y = (b[None, :] for b in box)  # [1, C] each, contiguous
    gx = jnp.maximum(jnp.maximum(lo_x - ox1, ox0 - hi_x), 0.0)
    gy = jnp.maximum(jnp.maximum(lo_y - oy1, oy0 - hi_y), 0.0)
    # Distances, not squared: the square root is an op XLA does not recompute in each of
    # `_k_smallest`'s passes. Chunks without a valid segment are sqrt(_NO_CHUNK) away.
    box_d = jnp.sqrt(jnp.where(jnp.isfinite(lo_x), gx * gx + gy * gy, _NO_CHUNK))  # [N, C]
    # k passes of an integer min-reduction along each object's row of chunks pick the nearest
    # chunks: on CPU 70x faster than `jax.lax.top_k`, and 14x faster than the same passes
    # reducing over the object axis.
    idx, left_out = _k_smallest(box_d, k)  # [N, k], [N]: every chunk not taken is at least this far from every corner
    none_left = left_out > 0.5 * _NO_CHUNK ** 0.5  # [N]: every chunk not taken is empty
    n, chunk = idx.shape[0], table.shape[1]
    # Whole chunks, each row contiguous over the k * G culled segments.
    # One gather of whole chunks (on CPU 2.7x faster than one per row).
    seg = table[idx].reshape(n, 1, k * chunk, 5)
    ax, ay, sx, sy, inv = (seg[..., j] for j in range(5))  # [N, 1, k * G]
    _, key, side = _frame_terms(px[..., None], py[..., None], ax, ay, sx, sy, inv)  # [N, 4, k * G]
    # One reduction answers both "off the road" and "how near": the packed minimum holds the
    # least key in its upper 31 bits.
    packed = jnp.min(_nearest_side_key(key, side > 0.0), -1)  # [N, 4]
    off = (packed & 1) == 0
    key_min = jax.lax.bitcast_convert_type(packed >> 1, jnp.float32)
    # 1 cm absorbs float32 rounding of map-frame coordinates (an ulp is 1 mm at 10 km from the origin).
    reach = jnp.maximum(left_out - 0.01, 0.0)
    # Keys are >= (1 - EDGE_TIE_TOLERANCE) * d2; a further relative 1e-4 absorbs rounding.
    bound = (1.0 - 2.0 * EDGE_TIE_TOLERANCE) * (reach * reach)[:, None] * (1.0 - 1e-4)
    exact = none_left[:, None] | (bound > key_min)  # [N, 4]
    return corners, jnp.any(off, -1), state.valid & ~jnp.all(exact, -1)


def _k_smallest(x: jax.Array, k: int):
    """Indices `[N, k]` of the k smallest of non-negative `x` `[N, C]` in each row, and a lower bound `[N]`
    of the (k+1)-th smallest (its value with the low index bits cleared).

    Each entry's key is its value's bits with the index in the low bits, so keys are
    unique and the i-th smallest is the least key above the (i-1)-th: k + 1 plain
    min-reductions over `x` (no array rewritten between passes; pass `x` materialized, so
    that its producer is not recomputed in every pass).
    """
    c = x.shape[-1]
    bits = max(1, (c - 1).bit_length())
    low = jnp.int32((1 << bits) - 1)
    # A non-negative float32's bit pattern orders like its value (no `ordered_key` flip needed).
    key = (jax.lax.bitcast_convert_type(x, jnp.int32) & ~low) | jnp.arange(c, dtype=jnp.int32)
    picked = []
    best = jnp.full(x.shape[:-1] + (1,), -1, jnp.int32)  # below every key (keys of non-negative x are >= 0)
    for _ in range(k + 1):
        best = jnp.min(jnp.where(key > best, key, jnp.iinfo(jnp.int32).max), -1, keepdims=True)
        picked.append(best[:, 0])
    idx = jnp.stack(picked[:k], -1) & low
    return idx, jax.lax.bitcast_convert_type(picked[k] & ~low, jnp.float32)


def ego_offroad(state: ObjectState, roadmap: RoadMap, ego: jax.Array, edge_cull: int = 0) -> jax.Array:
    """`[]` bool: the valid ego has a corner off the road (`ego_corner_road_distance > 0`, one pass)."""
    with jax.named_scope("metrics.ego_offroad"):
        valid, corners, edges = _ego_corners_and_edges(state, roadmap, ego, edge_cull)
        return valid & jnp.any(edge_offroad(corners, *edges))


def offroad_surrogate(state: ObjectState, roadmap: RoadMap, ego: jax.Array, margin: float | jax.Array = 0.5,
                      tau: float | jax.Array = 0.1, edge_cull: int = 0, exempt: jax.Array | None = None) -> jax.Array:
    """Smooth offroad penalty `[]`: `sum_corners tau * softplus((d + margin) / tau)`, d = signed road distance.

    Corners where `exempt` `[4]` is True are left out (`offroad_artefacts`: where the
    logged ego is off the road too while the ego is near its log, the edge is a map or
    label artefact, and pushing away from it would push the policy off the log).
    """
    with jax.named_scope("metrics.offroad_surrogate"):
        d = ego_corner_road_distance(state, roadmap, ego, edge_cull)
        pen = tau * jax.nn.softplus((d + margin) / tau)
        if exempt is not None:
            pen = jnp.where(exempt, 0.0, pen)
        return jnp.sum(pen)


def _edges_near(e: ObjectState, roadmap: RoadMap, edge_cull: int):
    """(start, end, valid) of the road-edge segments the ego's corners are tested against."""
    if edge_cull > 0:
        return _culled_edges(jnp.stack([e.x, e.y]), roadmap, edge_cull)
    return roadmap.edge_start, roadmap.edge_end, roadmap.edge_valid
