"""Map compilation of generated networks into `RoadMap`s."""

from __future__ import annotations

import numpy as np

from jaxloop.data.procedural.config import GeneratorConfig
from jaxloop.data.procedural.geometry import _min_dist_to
from jaxloop.data.procedural.network import _Net
from jaxloop.sim.datatypes import RG_ROAD_EDGE_BOUNDARY, RoadMap


def _edge_segments(edges: list[np.ndarray], seg_len: float, corner_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Road-edge polylines cut into segments `[M, 2]` (start, end) of at most about `seg_len`.

    As `jaxloop.data.mapcompile` does for raw edges: each polyline is split at vertices
    turning more than `corner_deg` (so corners stay vertices) and each piece divided into
    equal segments by arc length; all polylines at once on one increasing arc key.
    """
    xy = np.concatenate(edges)
    lens = np.array([len(e) for e in edges])
    run_start = np.zeros(len(xy), bool)
    run_start[np.cumsum(lens) - lens] = True
    # Drop vertices within 5 cm of the previous one: a near-zero segment has no reliable side.
    d = xy[1:] - xy[:-1]
    keep = np.concatenate([[True], np.hypot(d[:, 0], d[:, 1]) >= 0.05]) | run_start
    xy, run_start = xy[keep], run_start[keep]
    n = len(xy)
    d = xy[1:] - xy[:-1]
    dl = np.hypot(d[:, 0], d[:, 1])
    same = ~run_start[1:]  # d[i] joins two points of one polyline
    key = np.concatenate([[0.0], np.cumsum(np.where(same, dl, 1.0))])  # polylines 1 m apart on the key
    corner = np.zeros(n, bool)
    cos = (d[:-1, 0] * d[1:, 0] + d[:-1, 1] * d[1:, 1]) / np.maximum(dl[:-1] * dl[1:], 1e-12)
    corner[1:-1] = same[:-1] & same[1:] & (dl[:-1] > 1e-6) & (dl[1:] > 1e-6) & (cos < np.cos(np.deg2rad(corner_deg)))
    starts = np.flatnonzero(run_start | corner)
    nxt = np.append(starts[1:], n)
    stops = np.where(np.append(corner[starts[1:]], False), nxt, nxt - 1)  # a corner ends one piece, starts the next
    length = key[stops] - key[starts]
    nseg = np.where(length > 1e-6, np.maximum(1, np.ceil(length / seg_len - 1e-9)), 0).astype(np.int64)
    piece = np.repeat(np.arange(len(starts)), nseg)
    j = np.arange(len(piece)) - np.repeat(np.cumsum(nseg) - nseg, nseg)
    step = (length / np.maximum(nseg, 1))[piece]
    a0 = key[starts][piece] + j * step
    a = np.concatenate([a0, a0 + step])
    pts = np.stack([np.interp(a, key, xy[:, 0]), np.interp(a, key, xy[:, 1])], -1)
    return pts[:len(piece)], pts[len(piece):]


def _select_many(dist: np.ndarray, scen: np.ndarray, num: int, radius: float, capacity: int):
    """Features to keep per scenario: within `radius`, nearest first, at most `capacity` each.

    Returns (scenario `[K]`, slot `[K]`, feature index `[K]`) of the kept features and the
    number dropped for capacity per scenario `[num]`.
    """
    inside = np.flatnonzero(dist <= radius)
    order = inside[np.lexsort((dist[inside], scen[inside]))]
    sc = scen[order]
    count = np.bincount(sc, minlength=num)
    slot = np.arange(len(order)) - (np.cumsum(count) - count)[sc]
    keep = slot < capacity
    return sc[keep], slot[keep], order[keep], np.maximum(count - capacity, 0)


def _compile_maps(nets: list[_Net], focuses: list[np.ndarray], cfg: GeneratorConfig):
    """The networks compiled straight into `RoadMap`s (the layout of `jaxloop.data.mapcompile`), all at once.

    Lanes are cut into equal pieces no longer than `cfg.map.max_lane_length_m` (ids from 1, in
    lane order) and resampled to `cfg.map.lane_points` points by arc length (lane points are
    evenly spaced, so by index); road edges are cut into segments of about
    `cfg.map.edge_segment_m` (corners kept); crosswalks and stop signs are taken as built.
    Every feature is culled to `cfg.map.cull_radius_m` of its scenario's focus points `[F, 2]`,
    nearest first, up to the capacities of `cfg`.

    Returns per network: (RoadMap, whether features within the radius were dropped for
    capacity, ids `[num lanes]` of the last piece of each lane).
    """
    S = len(nets)
    radius = cfg.map.cull_radius_m
    # Lane pieces of every network, resampled by index.
    lanes = [ln for net in nets for ln in net.lanes]
    lane_scen = np.repeat(np.arange(S), [len(net.lanes) for net in nets])
    lens = np.array([ln.length for ln in lanes])
    npts = np.array([len(ln.xy) for ln in lanes])
    num = np.maximum(1, np.ceil(lens / cfg.map.max_lane_length_m - 1e-9)).astype(np.int64)
    cum = np.cumsum(num)
    first_lane = np.cumsum([len(net.lanes) for net in nets]) - [len(net.lanes) for net in nets]
    scen_first = (cum - num)[first_lane]  # first piece of each network
    last_id = cum - scen_first[lane_scen]  # local ids 1..: a lane's pieces end at last_id
    lane_of = np.repeat(np.arange(len(lanes)), num)
    piece = np.arange(len(lane_of)) - (cum - num)[lane_of]
    xy_all = np.concatenate([ln.xy for ln in lanes])
    start = np.cumsum(npts) - npts
    q = cfg.map.lane_points
    u = (piece[:, None] + np.linspace(0.0, 1.0, q)[None]) / num[lane_of, None] * (npts[lane_of, None] - 1)
    i0 = np.minimum(u.astype(np.int64), npts[lane_of, None] - 2)
    f = u - i0
    g = start[lane_of, None] + i0
    # Points [K, Q, 2] and unit tangents, per coordinate (numpy broadcasts over a last axis of 2 are slow).
    pts, tan = np.empty(g.shape + (2,)), np.empty(g.shape + (2,))
    for c in (0, 1):
        xc = xy_all[:, c].copy()
        p = pts[..., c]
        p[...] = xc[g] * (1.0 - f) + xc[g + 1] * f
        tan[:, 1:-1, c] = p[:, 2:] - p[:, :-2]
        tan[:, 0, c] = p[:, 1] - p[:, 0]
        tan[:, -1, c] = p[:, -1] - p[:, -2]
    norm = np.maximum(np.hypot(tan[..., 0], tan[..., 1]), 1e-12)
    tan[..., 0] /= norm
    tan[..., 1] /= norm
    piece_scen = lane_scen[lane_of]
    # Road edges, crosswalks, stop signs.
    segs = [_edge_segments(net.edges, cfg.map.edge_segment_m, cfg.map.edge_corner_deg) for net in nets]  # per network: batch-independent
    e0, e1 = np.concatenate([s[0] for s in segs]), np.concatenate([s[1] for s in segs])
    edge_scen = np.repeat(np.arange(S), [len(s[0]) for s in segs])
    boxes = np.array([c for net in nets for c in net.crosswalks], np.float64).reshape(-1, 4, 2)
    cw_scen = np.repeat(np.arange(S), [len(net.crosswalks) for net in nets])
    sign_xy = np.array([xy for net in nets for xy, _ in net.signs], np.float64).reshape(-1, 2)
    sign_scen = np.repeat(np.arange(S), [len(net.signs) for net in nets])
    lane_first = np.repeat(first_lane, [len(net.signs) for net in nets])
    sign_lane = last_id[lane_first + np.array([lane for net in nets for _, lane in net.signs], np.int64)]
    # Distances to the focus: one product per scenario over all its probe points.
    probe_pts = pts[:, ::3]
    nl, ne, nc = probe_pts.shape[0] * probe_pts.shape[1], 3 * len(e0), 4 * len(boxes)
    probes = np.concatenate([probe_pts.reshape(-1, 2), e0, e1, 0.5 * (e0 + e1), boxes.reshape(-1, 2), sign_xy])
    p_scen = np.concatenate([np.repeat(piece_scen, probe_pts.shape[1]), np.tile(edge_scen, 3),
                             np.repeat(cw_scen, 4), sign_scen])
    by = np.argsort(p_scen, kind="stable")
    bounds = np.searchsorted(p_scen[by], np.arange(S + 1))
    dist = np.empty(len(probes))
    for k in range(S):
        sel = by[bounds[k]:bounds[k + 1]]
        dist[sel] = _min_dist_to(np.take(probes, sel, axis=0), focuses[k])
    lane_d = dist[:nl].reshape(probe_pts.shape[:2]).min(axis=1)
    edge_d = dist[nl:nl + ne].reshape(3, -1).min(axis=0)
    cw_d = dist[nl + ne:nl + ne + nc].reshape(-1, 4).min(axis=1)
    sign_d = dist[nl + ne + nc:]
    # Fixed-size arrays [S, ...].
    P, E, C, SS = cfg.map.max_lanes, cfg.map.max_edges, cfg.map.max_crosswalks, cfg.map.max_stop_signs
    fields = dict(lane_xy=np.zeros((S, P, q, 2), np.float32), lane_dir=np.zeros((S, P, q, 2), np.float32),
                  lane_valid=np.zeros((S, P, q), bool), lane_ids=np.full((S, P), -1, np.int32),
                  lane_types=np.zeros((S, P), np.int32), lane_speed_limit=np.zeros((S, P), np.float32),
                  edge_start=np.zeros((S, E, 2), np.float32), edge_end=np.zeros((S, E, 2), np.float32),
                  edge_types=np.zeros((S, E), np.int32), edge_valid=np.zeros((S, E), bool),
                  crosswalk_xy=np.zeros((S, C, 4, 2), np.float32), crosswalk_valid=np.zeros((S, C), bool),
                  stop_sign_xy=np.zeros((S, SS, 2), np.float32), stop_sign_lane_ids=np.full((S, SS), -1, np.int32),
                  stop_sign_valid=np.zeros((S, SS), bool))
    sc, sl, i, dropped = _select_many(lane_d, piece_scen, S, radius, P)
    fields["lane_xy"][sc, sl], fields["lane_dir"][sc, sl] = np.take(pts, i, axis=0), np.take(tan, i, axis=0)
    fields["lane_valid"][sc, sl] = True
    fields["lane_ids"][sc, sl] = np.arange(len(lane_of))[i] - scen_first[sc] + 1
    fields["lane_types"][sc, sl] = np.array([ln.rg_type for ln in lanes])[lane_of[i]]
    fields["lane_speed_limit"][sc, sl] = np.array([ln.speed for ln in lanes])[lane_of[i]]
    sc, sl, i, d_edges = _select_many(edge_d, edge_scen, S, radius, E)
    fields["edge_start"][sc, sl], fields["edge_end"][sc, sl], fields["edge_valid"][sc, sl] = e0[i], e1[i], True
    fields["edge_types"][sc, sl] = RG_ROAD_EDGE_BOUNDARY
    sc, sl, i, d_cw = _select_many(cw_d, cw_scen, S, radius, C)
    fields["crosswalk_xy"][sc, sl], fields["crosswalk_valid"][sc, sl] = boxes[i], True
    sc, sl, i, d_signs = _select_many(sign_d, sign_scen, S, radius, SS)
    fields["stop_sign_xy"][sc, sl], fields["stop_sign_valid"][sc, sl] = sign_xy[i], True
    fields["stop_sign_lane_ids"][sc, sl] = sign_lane[i]
    dropped = (dropped + d_edges + d_cw + d_signs) > 0
    ids = np.split(last_id, first_lane[1:])
    return [(RoadMap(**{name: a[k] for name, a in fields.items()}), bool(dropped[k]), ids[k]) for k in range(S)]
