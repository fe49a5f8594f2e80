"""The expert driver: joint simulation of many scenarios at 10 Hz (IDM along paths, stop lines, conflict
zones; flat over agents, vectorised in numpy)."""

from __future__ import annotations

import numpy as np

from jaxloop.data.procedural.config import _MAX_ACCEL, _MAX_CURVATURE, _PATH_DS, _SPEED_EPS, _ZONE_BUFFER
from jaxloop.data.procedural.geometry import _wrap_near
from jaxloop.sim.datatypes import DT, TL_ARROW_CAUTION, TL_ARROW_STOP, TL_CAUTION, TL_STOP, TYPE_PEDESTRIAN


def _speed_caps(lens: np.ndarray, seg_x: np.ndarray, seg_y: np.ndarray, seg_n: np.ndarray) -> np.ndarray:
    """Speed caps `[sum K]` (concatenated) for the curvature of evenly sampled paths of `lens [P]` points.

    The paths are given by the segment vectors `seg_x`, `seg_y` and lengths `seg_n` (at
    least 1e-9) between consecutive points of all of them stored one after another (at
    least `sum K - 1` of them; those joining two paths are never used).

    Curvature from the turn between neighbouring segments (cross product over the
    lengths: the sine of the small turn angle), smoothed over 9 points (zero padded);
    the cap sqrt(2.2 / |k|) is propagated backwards as a braking profile at 1.5 m/s².
    All paths at once, every value computed from its own path only (so a path's caps
    do not depend on which others share the batch): the curvature and its smoothing on
    one flat array with 4 zeros between paths, the backward minimum on rows of a padded array.
    """
    n, total = len(lens), int(lens.sum())
    if lens.min() < 3:
        raise ValueError(f"procedural: agent paths need >= 3 points, got {int(lens.min())}")
    dx, dy, ds = seg_x[:total - 1], seg_y[:total - 1], seg_n[:total - 1]
    cross = dx[:-1] * dy[1:] - dy[:-1] * dx[1:]
    k_in = np.abs(cross) / (ds[:-1] * ds[1:] * 0.5 * (ds[1:] + ds[:-1]))  # [q - 1]: at inner point q
    pstart = np.cumsum(lens) - lens
    owner = np.repeat(np.arange(n), lens)
    j = np.arange(total) - pstart[owner]  # index along the path
    # The ends repeat their neighbour.
    src = np.minimum(np.maximum(j, 1), lens[owner] - 2) + pstart[owner] - 1
    seg = lens + 8
    seg_start = np.cumsum(seg) - seg
    dest = seg_start[owner] + j
    k = np.zeros(int(seg.sum()))  # per path: 4 zeros, K values, 4 zeros
    k[dest + 4] = k_in[src]
    width = len(k) - 8
    smooth = k[0:width].copy()
    for shift in range(1, 9):
        smooth += k[shift:shift + width]
    smooth = smooth[dest] / 9.0
    s3 = j * (2 * 1.5 * _PATH_DS)
    key = np.minimum(2.2 / np.maximum(smooth, 1e-4), 50.0 ** 2) + s3
    back = int(lens.max()) - 1 - j  # columns of a padded array, one path per column, from its end backwards
    flat = back * n + owner
    cols = np.full(int(lens.max()) * n, np.inf)
    cols[flat] = key
    np.minimum.accumulate(cols.reshape(-1, n), axis=0, out=cols.reshape(-1, n))
    run = cols[flat]
    return np.sqrt(np.maximum(run - s3, 0.0))


class _Batch:
    """Flat arrays over all agents (and conflict records) of a chunk of scenarios."""

    def __init__(self, items: list[dict], num_steps: int):
        self.num_steps = num_steps
        agents = [a for it in items for a in it["agents"]]
        self.scen = np.concatenate([np.full(len(it["agents"]), k) for k, it in enumerate(items)]).astype(np.int64)
        base = np.concatenate([[0], np.cumsum([len(it["agents"]) for it in items])[:-1]]).astype(np.int64)
        self.base = base
        self.alive = np.concatenate([it["alive"] for it in items])
        n = len(agents)
        f = lambda name: np.array([getattr(a, name) for a in agents], np.float64)
        self.kind = np.array([a.kind for a in agents], np.int64)
        self.length, self.width = f("length"), f("width")
        self.s0, self.v0, self.vdes = f("s0"), f("v0"), f("vdes")
        self.amax, self.bdec, self.headway, self.gap0 = f("amax"), f("bdec"), f("headway"), f("gap0")
        self.stop_s = f("stop_s")
        self.stop_sign = np.array([a.stop_sign for a in agents], bool)
        self.parked = np.array([a.tag == "parked" for a in agents], bool)
        slow = np.array([a.slow for a in agents], np.float64).reshape(n, 3)
        self.slow_t0, self.slow_t1, self.slow_f = slow[:, 0], slow[:, 1], slow[:, 2]
        # Signals: one table for the chunk; pedestrian paths use their walk signal.
        sig_red, sig_yel, sig_base = [], [], []
        for it in items:
            sig_base.append(len(sig_red))
            net = it["net"]
            for lt in net.lights:
                sig_red.append((lt.states == TL_STOP) | (lt.states == TL_ARROW_STOP))
                sig_yel.append((lt.states == TL_CAUTION) | (lt.states == TL_ARROW_CAUTION))
            for p in net.peds:
                sig_red.append(~p.walk)
                sig_yel.append(np.zeros(num_steps, bool))
        sig_red.append(np.zeros(num_steps, bool))
        sig_yel.append(np.zeros(num_steps, bool))
        self.sig_red, self.sig_yel = np.array(sig_red), np.array(sig_yel)
        none = len(sig_red) - 1
        sig = []
        for k, it in enumerate(items):
            nl = len(it["net"].lights)
            for a in it["agents"]:
                if a.kind == TYPE_PEDESTRIAN:
                    sig.append(sig_base[k] + nl + (-1 - a.lanes[0]))
                else:
                    sig.append(sig_base[k] + a.stop_sig if a.stop_sig >= 0 else none)
        self.sig = np.array(sig, np.int64)
        self.has_light = self.sig != none
        # Paths (uniform spacing): each distinct path once, those of moving vehicles first (the only ones
        # that need curvature speed caps); agents index into them.
        uniq: dict[int, int] = {}
        paths: list[np.ndarray] = []
        capped = [a.kind != TYPE_PEDESTRIAN and a.tag != "parked" for a in agents]
        for first in (True, False):
            for a, c in zip(agents, capped):
                if c == first and id(a.path) not in uniq:
                    uniq[id(a.path)] = len(paths)
                    paths.append(a.path)
        num_veh = len({id(a.path) for a, c in zip(agents, capped) if c})
        plens = np.array([len(p) for p in paths], np.int64)
        pstart = np.cumsum(plens) - plens
        which = np.array([uniq[id(a.path)] for a in agents], np.int64)
        self.p_start, self.p_n = pstart[which], plens[which]
        self.p_len = (self.p_n - 1) * _PATH_DS
        pts = np.concatenate(paths)
        self.px, self.py = pts[:, 0], pts[:, 1]
        # Segment vectors and lengths from each path point to the next (a path's last one unused).
        self.seg_x, self.seg_y = self.px[1:] - self.px[:-1], self.py[1:] - self.py[:-1]
        self.seg_n = np.maximum(np.hypot(self.seg_x, self.seg_y), 1e-9)
        self.cap = np.full(len(pts), 50.0)  # pedestrians and parked vehicles: no curvature cap
        if num_veh:
            self.cap[:int(pstart[num_veh - 1] + plens[num_veh - 1])] = _speed_caps(plens[:num_veh], self.seg_x,
                                                                                    self.seg_y, self.seg_n)
        # Records.
        rec = np.concatenate([it["records"] for it in items]).reshape(-1, 9)
        rec_base = np.repeat(base, [len(it["records"]) for it in items])
        self.ri, self.rj = rec[:, 0].astype(np.int64) + rec_base, rec[:, 1].astype(np.int64) + rec_base
        self.ai0, self.ai1, self.aj0, self.aj1 = rec[:, 2], rec[:, 3], rec[:, 4], rec[:, 5]
        self.aligned = rec[:, 6].astype(bool)
        self.off = rec[:, 7]
        self.prio = rec[:, 8]


def _simulate(b: _Batch) -> dict[str, np.ndarray]:
    """Runs the joint driver model; returns logs `[G, T]` (x, y, yaw, v, s, valid) and the worst lateral error `[G]`."""
    T = b.num_steps
    G = len(b.kind)
    R = len(b.ri)
    dt = DT
    # Static per-agent / per-record terms, hoisted out of the step loop.
    seg_x, seg_y, seg_n = b.seg_x, b.seg_y, b.seg_n
    # One row per path point (x, y, segment x, y, unit segment x, y): a single gather per lookup.
    table = np.stack([b.px[:-1], b.py[:-1], seg_x, seg_y, seg_x / seg_n, seg_y / seg_n], -1)
    i_max = b.p_n - 2
    n_max = b.p_n - 1

    def locate(s):
        u = s / _PATH_DS
        i0 = np.minimum(np.maximum(u.astype(np.int64), 0), i_max)  # truncation = floor where it matters
        return np.take(table, b.p_start + i0, axis=0), u - i0

    red_tg = np.ascontiguousarray((b.sig_red[b.sig] & b.has_light[:, None]).T)  # [T, G]
    yel_tg = np.ascontiguousarray((b.sig_yel[b.sig] & b.has_light[:, None]).T)
    not_ped = b.kind != TYPE_PEDESTRIAN
    parked = b.parked
    stop_s, stop_sign = b.stop_s, b.stop_sign
    ri, rj, aligned, crossing, prio = b.ri, b.rj, b.aligned, ~b.aligned, b.prio
    # Record terms of both sides at once: [2R], i's half then j's.
    rij = np.concatenate([ri, rj])
    a0b = np.concatenate([b.ai0, b.aj0]) - _ZONE_BUFFER
    a1b = np.concatenate([b.ai1, b.aj1]) + _ZONE_BUFFER
    ai0b, aj0b, ai1b, aj1b = a0b[:R], a0b[R:], a1b[:R], a1b[R:]
    prio_pos, prio_neg = prio > 0, prio < 0
    half = b.length / 2
    half2 = half[rij]
    crossing2, aligned2 = np.concatenate([crossing, crossing]), np.concatenate([aligned, aligned])
    stop_first2 = b.stop_s[rij] < np.concatenate([b.ai0, b.aj0])  # a stop line before the zone
    sqrt_ab = 2.0 * np.sqrt(b.amax * b.bdec)
    len_pair = 0.5 * (b.length[ri] + b.length[rj])
    off_m, off_p = -b.off, b.off
    cap_base = b.p_start
    exit_len = b.p_len - 0.5 - half
    t_all = np.arange(T) * dt
    slow = (t_all[:, None] >= b.slow_t0) & (t_all[:, None] < b.slow_t1)
    vdes_tg = np.where(slow, b.vdes * b.slow_f, b.vdes)  # [T, G] desired speed (slow-down episodes)
    # State.
    s = b.s0.copy()
    v = np.where(b.alive, b.v0, 0.0)
    r, f = locate(s)
    x, y = r[:, 0] + f * r[:, 2], r[:, 1] + f * r[:, 3]
    yaw = np.arctan2(r[:, 5], r[:, 4])
    valid = b.alive.copy()
    commit = np.zeros(G, bool)
    stop_timer = np.zeros(G)
    served = np.zeros(G, bool)
    order_i = np.zeros(R, bool)  # True: i goes first
    decided = np.zeros(R, bool)
    out = {k: np.zeros((T, G)) for k in ("x", "y", "yaw", "v", "s")}
    out["valid"] = np.zeros((T, G), bool)
    lat_err = np.zeros(G)
    for t in range(T):
        out["x"][t], out["y"][t], out["yaw"][t], out["v"][t], out["s"][t] = x, y, yaw, v, s
        out["valid"][t] = valid
        if t == T - 1:
            break
        front = s + half
        # Stop lines: lights (stop-or-go decision at yellow onset) and stop signs (full stop, 1 s).
        red, yel = red_tg[t], yel_tg[t]
        before = front < stop_s
        dist_stop = stop_s - front
        can_stop = dist_stop - 0.5 >= v * v / (2 * 3.5)
        commit |= yel & before & ~can_stop & not_ped
        near_stopped = stop_sign & before & (dist_stop < 4.0) & (v < 0.3)
        stop_timer += np.where(near_stopped, dt, 0.0)
        served |= stop_timer >= 1.0
        stop_active = before & (((red | yel) & ~commit) | (stop_sign & ~served))
        # Conflict records.
        valid2 = valid[rij]
        act = valid2[:R] & valid2[R:]
        s2, v2 = s[rij], v[rij]
        front2, rear2 = s2 + half2, s2 - half2
        si, sj = s2[:R], s2[R:]
        to_zone = a0b - front2
        ins = front2 > a0b
        ins_i, ins_j = ins[:R], ins[R:]
        clr = crossing2 & (rear2 > a1b)
        # Time to reach the zone (1e4: held at an active stop line before it; paths are far shorter than 1e4 m).
        eta = np.where(stop_active[rij] & stop_first2, 1e4, np.maximum(to_zone, 0.0) / np.maximum(v2, 1.0))
        tc = np.where(aligned2, 1.5, (a1b - rear2) / np.maximum(v2, 3.0))
        eta_i, eta_j, tc_i, tc_j = eta[:R], eta[R:], tc[:R], tc[R:]
        margin = np.where(prio_pos, eta_j + tc_j + 2.0 - eta_i,
                          np.where(prio_neg, eta_j - (eta_i + tc_i + 2.0), eta_j - eta_i))
        rule = margin > np.where(decided, np.where(order_i, -0.5, 0.5), 0.0)
        both = ins_i & ins_j
        one = ins_i != ins_j
        prov = np.where(one, ins_i, np.where(both & decided, order_i, np.where(both & aligned, si > sj + b.off, rule)))
        can = to_zone > v2 * v2 * (1 / 6.0) + 0.3  # can stop before the zone at 3 m/s²
        can_i, can_j = can[:R], can[R:]
        second_can = np.where(prov, can_j, can_i)
        first_can = np.where(prov, can_i, can_j)
        prov = np.where(decided & (prov != order_i) & ~second_can & ~both, order_i, prov)
        prov ^= ~decided & ~second_can & first_can & ~(both | one)
        order_i = np.where(act, prov, order_i)
        decided |= act
        # Constraints on the second of each record (at most one per record): gap, leader speed, standstill gap.
        k_front = np.where(order_i, front2[R:], front2[:R])
        k_s = np.where(order_i, sj, si)
        gap_zone = np.where(order_i, to_zone[R:], to_zone[:R])
        p_f = np.where(order_i, si + off_m, sj + off_p)  # the first's position in the second's path coordinates
        open_zone = gap_zone > -0.5
        cross_c = act & crossing & ~np.where(order_i, clr[:R], clr[R:]) & open_zone
        lead_ok = (aligned & act & (np.where(order_i, rear2[:R], rear2[R:]) < np.where(order_i, ai1b, aj1b))
                   & (k_front < np.where(order_i, aj1b, ai1b)))
        ahead = p_f > k_s
        follow_c = lead_ok & ahead
        on = cross_c | follow_c | (lead_ok & ~ahead & open_zone)
        # IDM.
        ci = np.minimum(np.maximum(np.round(s / _PATH_DS).astype(np.int64), 0), n_max)
        v_goal = np.minimum(vdes_tg[t], b.cap[cap_base + ci])
        ratio2 = np.square(v / np.maximum(v_goal, 0.1))
        a_free = np.maximum(b.amax * (1.0 - ratio2 * ratio2), -3.0)
        # Stop lines (per agent), then the records, IDM interaction term max-reduced per agent.
        s_star = 0.5 + np.maximum(0.0, v * b.headway + v * v / sqrt_ab)
        worst = np.where(stop_active, b.amax * (s_star / np.maximum(dist_stop - 0.5, 0.05)) ** 2, 0.0)
        on_idx = np.flatnonzero(on)
        if len(on_idx):
            oi = order_i[on_idx]
            ri_on, rj_on = ri[on_idx], rj[on_idx]
            ka, fa = np.where(oi, rj_on, ri_on), np.where(oi, ri_on, rj_on)
            fol = follow_c[on_idx]
            gap = np.where(fol, p_f[on_idx] - k_s[on_idx] - len_pair[on_idx], gap_zone[on_idx])
            vc = v[ka]
            vl = np.where(fol, v[fa], 0.0)
            s_star = np.where(fol, b.gap0[ka], 0.5) + np.maximum(0.0, vc * b.headway[ka] + vc * (vc - vl) / sqrt_ab[ka])
            np.maximum.at(worst, ka, b.amax[ka] * (s_star / np.maximum(gap, 0.05)) ** 2)
        a = np.minimum(np.maximum(a_free - worst, -_MAX_ACCEL), b.amax)
        a = np.maximum(a, -v / dt)
        a[parked] = 0.0
        # Bicycle step (DESIGN.md equations), curvature aimed at the path one step ahead.
        travel = v * dt + a * (0.5 * dt * dt)
        x1 = x + travel * np.cos(yaw)
        y1 = y + travel * np.sin(yaw)
        v1 = v + a * dt
        s_pred = s + travel
        r, f = locate(s_pred)
        ptx, pty = r[:, 4], r[:, 5]
        dx, dy = x1 - (r[:, 0] + f * r[:, 2]), y1 - (r[:, 1] + f * r[:, 3])
        s1 = s_pred + dx * ptx + dy * pty
        lat = np.abs(dy * ptx - dx * pty)
        r, f = locate(s1 + np.maximum(v1 * dt, 1.0))
        yaw_goal = np.arctan2(r[:, 1] + f * r[:, 3] - y1, r[:, 0] + f * r[:, 2] - x1)
        k = _wrap_near(yaw_goal - yaw) / np.maximum(travel, 1e-6)
        k = np.minimum(np.maximum(k, -_MAX_CURVATURE), _MAX_CURVATURE)
        k = np.where((v < _SPEED_EPS) | (v1 < _SPEED_EPS), 0.0, k)
        yaw1 = _wrap_near(yaw + k * travel)
        lat_err = np.maximum(lat_err, np.where(valid, lat, 0.0))
        x, y, yaw, v, s = x1, y1, yaw1, v1, s1
        valid = valid & (s < exit_len)
    out = {k: np.ascontiguousarray(a.T) for k, a in out.items()}
    out["lat_err"] = lat_err
    return out
