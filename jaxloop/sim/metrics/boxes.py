"""Object boxes: selecting objects, corners, and the separating-axis overlap (all pairs and the ego's)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxloop.sim import geometry as geo
from jaxloop.sim.compute import cos_sin
from jaxloop.sim.datatypes import ObjectState


def object_boxes(state: ObjectState) -> jax.Array:
    """Boxes `[..., N, 5]` = (x, y, yaw, length, width)."""
    return jnp.stack([state.x, state.y, state.yaw, state.length, state.width], -1)


def object_mask(index: jax.Array | int, num_objects: int) -> jax.Array:
    """`[N]` bool selecting one object: `index` is an object index or already an `[N]` bool mask
    (e.g. `ObjectMetadata.is_sdc`, which avoids an argmax: variadic reductions are slow on CPU)."""
    index = jnp.asarray(index)
    if index.dtype == jnp.bool_ and index.ndim == 1:
        return index
    return jnp.arange(num_objects) == index


def select_index(a: jax.Array, index: jax.Array | int, axis: int = 0) -> jax.Array:
    """`a` at a traced `index` (or one-hot bool mask) along `axis`, as a masked reduction.

    A one-hot sum vectorises under `vmap`, where a gather with a batched index is slow
    on CPU.
    """
    axis = axis % a.ndim
    shape = [1] * a.ndim
    shape[axis] = a.shape[axis]
    hit = object_mask(index, a.shape[axis]).reshape(shape)
    if a.dtype == jnp.bool_:
        return jnp.any(hit & a, axis=axis)
    return jnp.sum(jnp.where(hit, a, jnp.zeros((), a.dtype)), axis=axis)


def take_object(state: ObjectState, index: jax.Array | int) -> ObjectState:
    """The state of one object `[...]` from `[N, ...]`; `index` is an index or an `[N]` bool mask."""
    return jax.tree.map(lambda a: select_index(a, index, 0), state)


_CORNER_SIGN_L = (1.0, -1.0, -1.0, 1.0)  # front-left, rear-left, rear-right, front-right (CCW)
_CORNER_SIGN_W = (1.0, 1.0, -1.0, -1.0)


def _corners(state: ObjectState) -> jax.Array:  # [..., 4, 2]
    """Box corners as `geometry.box_corners`, with the trigonometry computed once per box (not per corner)."""
    c, s = cos_sin(state.yaw)
    dl = (state.length / 2)[..., None] * jnp.array(_CORNER_SIGN_L)
    dw = (state.width / 2)[..., None] * jnp.array(_CORNER_SIGN_W)
    cx = state.x[..., None] + dl * c[..., None] - dw * s[..., None]
    cy = state.y[..., None] + dl * s[..., None] + dw * c[..., None]
    return jnp.stack([cx, cy], -1)


def _heading(yaw: jax.Array) -> jax.Array:
    return jnp.stack([jnp.cos(yaw), jnp.sin(yaw)], -1)


# ----------------------------------------------------------------------------- overlap


def pair_separation(a: ObjectState, b: ObjectState) -> jax.Array:
    """Separating-axis gap between the boxes of `a` and `b` (broadcast), elementwise.

    The same quantity as `geometry.box_separation` (positive: apart, negative: minus the
    penetration depth along the best axis), written with the four face-normal
    projections in closed form so all-pairs work fuses into one loop (no small matmuls).
    The trigonometry is computed once per box (`a` and `b` as given, before
    broadcasting), not once per pair.
    """
    ca, sa = cos_sin(a.yaw)
    cb, sb = cos_sin(b.yaw)
    return _separation(a.x, a.y, ca, sa, a.length / 2, a.width / 2, b.x, b.y, cb, sb, b.length / 2, b.width / 2)


def _separation(xa, ya, ca, sa, hla, hwa, xb, yb, cb, sb, hlb, hwb) -> jax.Array:
    """`pair_separation` from box centres, heading cosines / sines and half sizes (broadcast)."""
    dx, dy = xb - xa, yb - ya
    cd = jnp.abs(ca * cb + sa * sb)  # |cos(yaw_b - yaw_a)|
    sd = jnp.abs(ca * sb - sa * cb)  # |sin(yaw_b - yaw_a)|
    g1 = jnp.abs(dx * ca + dy * sa) - hla - (hlb * cd + hwb * sd)
    g2 = jnp.abs(dy * ca - dx * sa) - hwa - (hlb * sd + hwb * cd)
    g3 = jnp.abs(dx * cb + dy * sb) - hlb - (hla * cd + hwa * sd)
    g4 = jnp.abs(dy * cb - dx * sb) - hwb - (hla * sd + hwa * cd)
    return jnp.maximum(jnp.maximum(g1, g2), jnp.maximum(g3, g4))


def pairwise_separation(state: ObjectState) -> jax.Array:
    """All-pairs separation `[N, N]`; +inf on the diagonal and for pairs with an invalid member."""
    a = jax.tree.map(lambda v: v[:, None], state)
    b = jax.tree.map(lambda v: v[None, :], state)
    n = state.x.shape[-1]
    mask = state.valid[:, None] & state.valid[None, :] & ~jnp.eye(n, dtype=bool)
    return jnp.where(mask, pair_separation(a, b), jnp.inf)


def _shifted_rows(v: jax.Array, rows: int) -> jax.Array:
    """`out[r, i] = v[(i + r + 1) % N]` `[rows, N]` for `v` `[N]`: every row a cyclic shift, by static slicing.

    Row r of the tiled `[v, v]` read from offset r + 1 is row r of a `[rows, 2N + 1]`
    reshape of the flattened tiles (skewed rows), so no gather is needed.
    """
    n = v.shape[-1]
    flat = jnp.broadcast_to(jnp.concatenate([v, v]), (rows, 2 * n)).reshape(-1)
    flat = jnp.concatenate([flat, jnp.zeros((rows + 1,), v.dtype)])
    return flat[1:1 + rows * (2 * n + 1)].reshape(rows, 2 * n + 1)[:, :n]


def _unshifted_rows(a: jax.Array) -> jax.Array:
    """Inverse of `_shifted_rows` on `[rows, N]`: `out[r, j] = a[r, (j - r - 1) % N]`."""
    rows, n = a.shape
    flat = jnp.concatenate([a, a], -1).reshape(-1)
    flat = jnp.concatenate([flat, jnp.zeros((n,), a.dtype)])
    return flat[n - 1:n - 1 + rows * (2 * n - 1)].reshape(rows, 2 * n - 1)[:, :n]


def overlap(state: ObjectState) -> jax.Array:
    """Per object `[N]` bool: the object is valid and overlaps another valid object (all pairs).

    Exactly the all-pairs test of `pairwise_separation`, evaluated once per unordered
    pair: the separation is symmetric, so object i is tested against i + 1 ... i + N/2
    (cyclically), which covers every pair (the N/2 shift twice for even N), and each
    pair's result goes to both members. Half the `[N, N]` work.
    """
    with jax.named_scope("metrics.overlap"):
        n = state.x.shape[-1]
        rows = n // 2
        if rows == 0:
            return jnp.zeros((n,), bool)
        c, s = cos_sin(state.yaw)
        boxes = (state.x, state.y, c, s, state.length / 2, state.width / 2)
        partners = [_shifted_rows(f, rows) for f in boxes]  # [N/2, N]: object (i + r + 1) % N
        sep = _separation(*[f[None, :] for f in boxes], *partners)
        hit = (sep < 0.0) & state.valid[None, :] & _shifted_rows(state.valid, rows)  # pair (i, i + r + 1)
        return jnp.any(hit, 0) | jnp.any(_unshifted_rows(hit), 0)


def ego_separation(state: ObjectState, ego: jax.Array) -> jax.Array:
    """Separation `[N]` of the ego's box to every object; +inf for invalid ones and the ego itself."""
    sep = pair_separation(take_object(state, ego), state)
    others = state.valid & ~object_mask(ego, state.x.shape[-1])
    return jnp.where(others, sep, jnp.inf)


def ego_overlap(state: ObjectState, ego: jax.Array) -> jax.Array:
    """`[]` bool: the valid ego overlaps a valid object (`[N]` work, no all-pairs)."""
    with jax.named_scope("metrics.ego_overlap"):
        return select_index(state.valid, ego) & jnp.any(ego_separation(state, ego) < 0.0)


def overlap_surrogate(state: ObjectState, ego: jax.Array, margin: float | jax.Array = 0.5,
                      tau: float | jax.Array = 0.1, exempt: jax.Array | None = None) -> jax.Array:
    """Smooth overlap penalty `[]` of the ego: `sum_j tau * softplus((margin - sep_j) / tau)`.

    `sep_j` is the smooth separation to each valid other object; the penalty is about
    `margin - sep` when closer than the margin and decays to 0 beyond it. Objects where
    `exempt` `[N]` is True are left out (`inherited_contacts`: an overlap the log holds
    while the ego is near its log must not push the policy off the log).
    """
    with jax.named_scope("metrics.overlap_surrogate"):
        boxes = object_boxes(state)
        sep = geo.smooth_box_separation(select_index(boxes, ego, 0), boxes)
        others = state.valid & ~object_mask(ego, state.x.shape[-1])
        if exempt is not None:
            others = others & ~exempt
        pen = tau * jax.nn.softplus((margin - sep) / tau)
        return jnp.sum(jnp.where(others, pen, 0.0))
