"""Conflict zones between agent paths: lane-pair proximity tables and the per-pair conflict records."""

from __future__ import annotations

import numpy as np

from jaxloop.data.procedural.config import _CONFLICT_PED, _CONFLICT_VEHICLE, _PATH_DS
from jaxloop.data.procedural.geometry import _wrap
from jaxloop.sim.datatypes import TYPE_PEDESTRIAN


def _lane_table(polys: list[np.ndarray], scen: np.ndarray, is_ped: np.ndarray):
    """Proximity zones between lanes / pedestrian paths `polys` (evenly sampled) of the same scenario.

    `scen [U]` names each polyline's scenario, `is_ped [U]` marks pedestrian paths (pairs of
    two are skipped). Returns the P pairs of distinct polylines in proximity, in row-major
    order: `a [P]`, `b [P]`, `zone [P, 4]` (lo_a, hi_a, lo_b, hi_b: the arc range of a,
    then of b, that comes within the conflict distance of the other, padded 1 m) and
    `aligned [P]` (vehicle lanes running the same way at their closest points). Close
    point pairs are found with a uniform grid (cells of the conflict distance, keyed by
    scenario too), every polyline of every scenario at once.
    """
    nu = len(polys)
    npts = np.array([len(p) for p in polys])
    xy = np.concatenate(polys)
    start = np.cumsum(npts) - npts
    nsub = (npts + 3) // 4  # every 4th point, about 2 m apart; zones are padded by the half spacing
    owner = np.repeat(np.arange(nu), nsub)
    k = np.arange(len(owner)) - np.repeat(np.cumsum(nsub) - nsub, nsub)
    idx = start[owner] + 4 * k
    pts = np.take(xy, idx, axis=0)  # (np.take: row gathers by fancy indexing are far slower)
    d01 = np.take(xy, start + 1, axis=0) - np.take(xy, start, axis=0)
    s = 4 * k * np.hypot(d01[:, 0], d01[:, 1])[owner]
    t = (np.take(xy, np.minimum(idx + 1, (start + npts - 1)[owner]), axis=0)
         - np.take(xy, np.maximum(idx - 1, start[owner]), axis=0))
    h = np.arctan2(t[:, 1], t[:, 0])
    ped = is_ped[owner]
    cell = np.floor(pts / _CONFLICT_VEHICLE).astype(np.int64) + 50_000  # maps span far less than 100 km
    key = (scen[owner] * 100_003 + cell[:, 0]) * 100_003 + cell[:, 1]
    order = np.argsort(key, kind="stable")
    skey = key[order]
    # Half of the 3x3 neighbourhood (the cell itself and 4 neighbours) finds every close pair once
    # (twice within a cell: kept where ia < ib); the mirrored pairs are appended after filtering.
    ia, ib, first_cell = [], [], []
    pos = np.arange(len(skey))
    # Lookups per occupied cell: the cells' first positions and point counts, then per point.
    new_cell = np.concatenate([[True], skey[1:] != skey[:-1]])
    c_first = np.flatnonzero(new_cell)
    ukey, c_count = skey[c_first], np.diff(np.append(c_first, len(skey)))
    cell_of = np.cumsum(new_cell) - 1
    for k, o in enumerate((0, 100_003 - 1, 100_003, 100_003 + 1, 1)):
        q = np.minimum(np.searchsorted(ukey, ukey + o, "left"), len(ukey) - 1)
        hit = ukey[q] == ukey + o
        lo = c_first[q][cell_of]
        cnt = np.where(hit, c_count[q], 0)[cell_of]
        ia.append(np.repeat(pos, cnt))
        ib.append(np.arange(cnt.sum()) + np.repeat(lo - (np.cumsum(cnt) - cnt), cnt))
        first_cell.append(np.full(len(ia[-1]), k == 0))
    ia, ib, same_cell = np.concatenate(ia), np.concatenate(ib), np.concatenate(first_cell)
    keep = ~same_cell | (ia < ib)
    ia, ib = order[ia[keep]], order[ib[keep]]
    pa, pb = ped[ia], ped[ib]
    sel = (owner[ia] != owner[ib]) & ~(pa & pb)
    ia, ib, pa, pb = ia[sel], ib[sel], pa[sel], pb[sel]
    px, py = pts[:, 0].copy(), pts[:, 1].copy()
    d = np.hypot(px[ia] - px[ib], py[ia] - py[ib])
    sel = d < np.where(pa | pb, _CONFLICT_PED, _CONFLICT_VEHICLE)
    ia, ib, d = np.concatenate([ia[sel], ib[sel]]), np.concatenate([ib[sel], ia[sel]]), np.concatenate([d[sel]] * 2)
    if not len(ia):
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0, bool)
    pair = owner[ia] * nu + owner[ib]
    srt = np.lexsort((d, pair))  # by lane pair, closest point pair first
    pair, ia, ib = pair[srt], ia[srt], ib[srt]
    first = np.flatnonzero(np.concatenate([[True], pair[1:] != pair[:-1]]))
    sa, sb = s[ia], s[ib]
    zone = np.stack([np.minimum.reduceat(sa, first) - 1.0, np.maximum.reduceat(sa, first) + 1.0,
                     np.minimum.reduceat(sb, first) - 1.0, np.maximum.reduceat(sb, first) + 1.0], -1)
    dh = np.abs(_wrap(h[ia[first]] - h[ib[first]]))
    aligned = (dh < np.deg2rad(40)) & ~ped[ia[first]] & ~ped[ib[first]]
    return pair[first] // nu, pair[first] % nu, zone, aligned


def _records(items: list[dict]) -> list[np.ndarray]:
    """Conflict records `[R, 9]` (i, j, ai0, ai1, aj0, aj1, aligned, offset, priority) of each item's agent pairs.

    offset maps j's path position into i's (aligned zones); priority +1: i has right of
    way, -1: j has, 0: neither (the earlier arrival goes first). A pair of agents gets an
    aligned record if any lane of i's route is shared with, or runs alongside, one of j's
    (the union of those zones), and a crossing record for the first crossing zone along
    i's route. All items at once, as a sparse join: (agent, route lane) entries x lane
    pairs in proximity x entries; agent indices in the records are the item's own.
    """
    # Every (item, lane or pedestrian path) used by an agent gets a column.
    cols: dict[tuple[int, int], int] = {}
    polys, scen, is_ped, length, rank = [], [], [], [], []
    e_agent, e_col, e_off, e_pos = [], [], [], []
    g = 0
    for k, it in enumerate(items):
        net = it["net"]
        for u in sorted({lane for ag in it["agents"] for lane in ag.lanes}):
            cols[(k, u)] = len(polys)
            if u >= 0:
                polys.append(net.lanes[u].xy)
                length.append(net.lanes[u].length)
                rank.append(net.lanes[u].rank)
            else:
                polys.append(net.peds[-1 - u].xy)
                length.append(len(net.peds[-1 - u].xy) * _PATH_DS)
                rank.append(3)
            scen.append(k)
            is_ped.append(u < 0)
        for ag in it["agents"]:
            for p, (u, o) in enumerate(zip(ag.lanes, ag.lane_off)):
                e_agent.append(g)
                e_col.append(cols[(k, u)])
                e_off.append(o)
                e_pos.append(p)
            g += 1
    sizes = np.array([len(it["agents"]) for it in items])
    base = np.cumsum(sizes) - sizes
    nu = len(polys)
    pa, pb, zone, tal = _lane_table(polys, np.array(scen, np.int64), np.array(is_ped, bool))
    length, rank = np.array(length), np.array(rank)
    e_agent, e_col, e_off, e_pos = np.array(e_agent), np.array(e_col), np.array(e_off), np.array(e_pos)
    ped = np.array([ag.kind == TYPE_PEDESTRIAN for it in items for ag in it["agents"]])
    # Lane pairs that interact: in proximity (with their zones), or the same lane (zones unused).
    la, lb = np.concatenate([pa, np.arange(nu)]), np.concatenate([pb, np.arange(nu)])
    zone, tal = np.concatenate([zone, np.zeros((nu, 4))]), np.concatenate([tal, np.zeros(nu, bool)])
    # Join: entries on la x entries on lb (two expansions through entries grouped by column).
    by_col = np.argsort(e_col, kind="stable")
    cnt = np.bincount(e_col, minlength=nu)
    first = np.cumsum(cnt) - cnt

    def expand(n, start):
        rep = np.repeat(np.arange(len(n)), n)
        return rep, by_col[start[rep] + np.arange(len(rep)) - np.repeat(np.cumsum(n) - n, n)]

    l1, ea = expand(cnt[la], first[la])
    l2, eb = expand(cnt[lb[l1]], first[lb[l1]])
    ea, lp = ea[l2], l1[l2]  # lp: the lane pair of each combination
    ai, aj = e_agent[ea], e_agent[eb]
    keep = (ai < aj) & ~(ped[ai] & ped[aj])
    ea, eb, ai, aj, lp = ea[keep], eb[keep], ai[keep], aj[keep], lp[keep]
    ca, cb = e_col[ea], e_col[eb]
    same = ca == cb
    z = np.take(zone, lp, axis=0)
    oa, ob = e_off[ea], e_off[eb]
    lo_a = np.where(same, 0.0, z[:, 0]) + oa
    hi_a = np.where(same, length[ca], z[:, 1]) + oa
    lo_b = np.where(same, 0.0, z[:, 2]) + ob
    hi_b = np.where(same, length[cb], z[:, 3]) + ob
    al = same | tal[lp]
    prio = np.sign(rank[ca] - rank[cb]).astype(np.float64)
    key = ai * len(ped) + aj  # agent pairs in (i, j) order
    rowmajor = e_pos[ea] * (int(e_pos.max()) + 1) + e_pos[eb]  # ties go to the earliest route lanes (i's first)
    recs = []
    for sel, aligned in ((al, True), (~al, False)):
        idx = np.flatnonzero(sel)
        if not len(idx):
            continue
        # The combination with the smallest lo_a leads each pair (ties: earliest route lanes).
        idx = idx[np.lexsort((rowmajor[idx], lo_a[idx], key[idx]))]
        k_s = key[idx]
        head = np.flatnonzero(np.concatenate([[True], k_s[1:] != k_s[:-1]]))
        lead = idx[head]
        if aligned:
            ai0, ai1 = np.minimum.reduceat(lo_a[idx], head), np.maximum.reduceat(hi_a[idx], head)
            aj0, aj1 = np.minimum.reduceat(lo_b[idx], head), np.maximum.reduceat(hi_b[idx], head)
            # A shared lane fixes the offset between the two paths (its first occurrence); else zone centres.
            srt = idx[np.lexsort((rowmajor[idx], ~same[idx], key[idx]))]
            first_same = srt[np.flatnonzero(np.concatenate([[True], key[srt][1:] != key[srt][:-1]]))]
            offset = np.where(same[first_same], (oa - ob)[first_same], 0.5 * ((ai0 + ai1) - (aj0 + aj1)))
            recs.append(np.stack([ai[lead], aj[lead], ai0, ai1, aj0, aj1, np.ones(len(lead)), offset, prio[lead]], -1))
        else:
            recs.append(np.stack([ai[lead], aj[lead], lo_a[lead], hi_a[lead], lo_b[lead], hi_b[lead],
                                  np.zeros(len(lead)), np.zeros(len(lead)), prio[lead]], -1))
    rec = np.concatenate(recs).astype(np.float64) if recs else np.zeros((0, 9))
    # Per item, with the item's agent indices.
    owner_item = np.repeat(np.arange(len(items)), sizes)[rec[:, 0].astype(np.int64)]
    rec[:, :2] -= base[owner_item][:, None]
    return [rec[owner_item == k] for k in range(len(items))]
