"""Network builder of the 4-way signalised intersection and the stop-controlled T-junction."""

from __future__ import annotations

import numpy as np

from jaxloop.data.procedural.config import _PARK_TAPER, _PARK_WIDTH, _PATH_DS, _SHOULDER, ParamRanges
from jaxloop.data.procedural.geometry import _bezier_flat, _bezier_kmax_many, _left, _offset, _straight_many, _wrap
from jaxloop.data.procedural.network import _Lane, _Light, _Net, _PedPath, _orient_edges, _phase_states, _walk_window
from jaxloop.sim.datatypes import (RG_SURFACE_LANE, TL_ARROW_CAUTION, TL_ARROW_GO, TL_ARROW_STOP, TL_CAUTION, TL_GO,
                                   TL_STOP)


def _build_junction(rng: np.random.Generator, pr: ParamRanges, num_arms: int, num_steps: int) -> _Net:
    """A 4-way signalised intersection or a T-junction with stop signs on the minor road.

    The geometry is computed for all arms, lanes and movements at once: arm a has the
    outward direction `u[a]` and left normal `nv[a]`, `n_in[a]` lanes towards the centre
    (on its left, looking outwards) and `n_out[a]` away from it, starting `r_s` metres out.
    """
    net = _Net()
    w = rng.uniform(*pr.lane_width)
    jit = np.deg2rad(pr.angle_jitter_deg)
    base = rng.uniform(-np.pi, np.pi)
    if num_arms == 4:
        angles = base + np.arange(4) * np.pi / 2 + rng.uniform(-jit, jit, 4)
        n_road = [int(rng.integers(1, pr.max_lanes + 1)), int(rng.integers(1, pr.max_lanes + 1))]
        road_of = [0, 1, 0, 1]
        protected = bool(rng.random() < 0.5)
    else:
        angles = base + np.array([0.0, np.pi / 2 + rng.uniform(-1.5 * jit, 1.5 * jit), np.pi])
        n_road = [int(rng.integers(1, pr.max_lanes + 1)), int(rng.integers(1, 3))]
        road_of = [0, 1, 0]
        protected = False
    scale = rng.uniform(*pr.speed_scale)
    urban = bool(rng.random() < pr.urban_share)
    if urban:
        scale *= rng.uniform(*pr.urban_speed_scale)
    speed = [rng.uniform(11.0, 15.0) * scale, rng.uniform(9.0, 13.0) * scale]
    net.urban = urban
    park_w = rng.uniform(*_PARK_WIDTH)
    park_clear = rng.uniform(5.0, 10.0)  # no parking this far past the start of an arm (sight lines, turns)
    park_in = [urban and bool(rng.random() < pr.parking_side) for _ in range(num_arms)]  # kerb of the in lanes
    park_out = [urban and bool(rng.random() < pr.parking_side) for _ in range(num_arms)]  # ... of the out lanes
    arm_len = 110.0
    cw = rng.uniform(3.0, 4.0)
    arms = np.arange(num_arms)
    nxt = (arms + 1) % num_arms  # the neighbouring arm, counter-clockwise
    u = np.stack([np.cos(angles), np.sin(angles)], -1)  # [A, 2]
    nv = _left(u)  # [A, 2]
    n_out = [n_road[road_of[a]] for a in range(num_arms)]
    n_in = [n_out[a] + (1 if protected else 0) for a in range(num_arms)]  # a left-turn lane when protected

    def in_pt(a, lane, r):
        """Points `r` metres out on in lane `lane` (fractional: across the lanes) of arm `a` (arrays broadcast)."""
        return u[a] * r + nv[a] * (np.asarray(lane) + 0.5)[..., None] * w

    def out_pt(a, lane, r):
        return u[a] * r - nv[a] * (np.asarray(lane) + 0.5)[..., None] * w

    # Movements: (in arm, in lane, out arm, out lane, tag); the turn from arm a into arm b by their angles.
    turn = _wrap(angles[None, :] - angles[:, None] - np.pi).tolist()  # [A, A]
    moves = []
    for a in range(num_arms):
        thr0 = 1 if protected else 0
        n_thr = n_in[a] - thr0
        for b in range(num_arms):
            if b == a:
                continue
            t = turn[a][b]
            if abs(t) < np.deg2rad(40):
                for k in range(min(n_thr, n_out[b])):
                    moves.append((a, thr0 + k, b, k, "straight"))
            elif t > 0:
                moves.append((a, 0, b, 0, "left"))
            else:
                moves.append((a, n_in[a] - 1, b, n_out[b] - 1, "right"))
    nm = len(moves)
    max_half = max(max(n_in), max(n_out)) * w + _SHOULDER
    gaps = (_wrap(angles[nxt] - angles) % (2 * np.pi)).tolist()
    min_gap = min(g for g in gaps if g < np.pi * 0.99) if num_arms == 3 else min(gaps)
    r_s = max(max_half / np.tan(min_gap / 2) + cw + 3.0, 12.0)
    # The cubics: every movement's connector, then the kerb corners (each arm's outermost in lane into the
    # next arm's outermost out lane): end arms `ea`, `eb` and lanes `el`, `eo`.
    ea = np.array([m[0] for m in moves] + arms.tolist(), np.int64)
    el = np.array([m[1] for m in moves] + [n - 1 for n in n_in], np.int64)
    eb = np.array([m[2] for m in moves] + nxt.tolist(), np.int64)
    eo = np.array([m[3] for m in moves] + [n_out[b] - 1 for b in nxt], np.int64)
    # Grow the junction radius a metre at a time until every movement (and every kerb corner, offset half a
    # lane outwards) is gentle enough, checking a few radii per call.
    ua, na, ub, nb = u[ea], nv[ea], u[eb], nv[eb]
    la, lb = (el + 0.5)[:, None] * w, (eo + 0.5)[:, None] * w
    kcap = np.array([0.14] * nm + [0.6 / (w / 2 + _SHOULDER)] * num_arms)
    radii = np.cumsum([r_s] + [1.0] * 40)  # what repeated `r_s += 1.0` gives
    pick, block = 40, 3
    for lo in range(0, 40, block):
        r = radii[lo:min(lo + block, 40), None, None]
        kmax = _bezier_kmax_many((ua * r + na * la).reshape(-1, 2), np.tile(-ua, (len(r), 1)),
                                 (ub * r - nb * lb).reshape(-1, 2), np.tile(ub, (len(r), 1)))
        ok = np.all(kmax.reshape(len(r), -1) <= kcap, axis=1)
        if ok.any():
            pick = lo + int(np.argmax(ok))
            break
    r_s = radii[pick]
    curves, n_curve = _bezier_flat(in_pt(ea, el, r_s), -ua, out_pt(eb, eo, r_s), ub)
    c_start = np.cumsum(n_curve) - n_curve
    d01 = curves[c_start[:nm] + 1] - curves[c_start[:nm]]
    conn_len = (np.hypot(d01[:, 0], d01[:, 1]) * (n_curve[:nm] - 1)).tolist()  # as `_Lane` measures them
    curves = np.split(curves, np.cumsum(n_curve)[:-1])
    corners = [_offset(xy, -(w / 2 + _SHOULDER)) for xy in curves[nm:]]
    # Arm lanes (all the same length): in lanes towards the centre, then out lanes away from it.
    arm = [(a, k, +1) for a in range(num_arms) for k in range(n_in[a])]
    arm += [(a, k, -1) for a in range(num_arms) for k in range(n_out[a])]
    arm_a, arm_k, arm_side = (np.array(c, np.int64) for c in zip(*arm))
    ua_arm = u[arm_a]
    lat = nv[arm_a] * (arm_k + 0.5)[:, None] * w * arm_side[:, None]
    near, far = ua_arm * r_s + lat, ua_arm * (r_s + arm_len) + lat
    sgn = arm_side[:, None]
    p0, p1 = np.where(sgn > 0, far, near), np.where(sgn > 0, near, far)
    n_pts = max(int(np.ceil(arm_len / _PATH_DS)), 1) + 1
    arm_xy = p0[:, None] + (np.arange(n_pts) / (n_pts - 1))[None, :, None] * (p1 - p0)[:, None]
    arm_ids = {}
    for (a, k, side), xy in zip(arm, arm_xy):
        net.lanes.append(_Lane(xy, RG_SURFACE_LANE, float(speed[road_of[a]]), length=arm_len))
        arm_ids[(a, k, side)] = len(net.lanes) - 1
    in_ids = [[arm_ids[(a, k, 1)] for k in range(n_in[a])] for a in range(num_arms)]
    out_ids = [[arm_ids[(a, k, -1)] for k in range(n_out[a])] for a in range(num_arms)]
    minor = 1 if num_arms == 3 else -1
    weights = {"straight": 0.5, "left": 0.3, "right": 0.25}
    for (a, la_, b, lb_, tag), xy, length in zip(moves, curves, conn_len):
        if num_arms == 3:
            rank = 0 if a == minor else (1 if tag == "left" else 2)
        else:
            rank = 1 if (tag == "left" and not protected) else 2
        net.lanes.append(_Lane(xy, RG_SURFACE_LANE, float(min(speed[road_of[a]], speed[road_of[b]])), rank,
                               length=length))
        net.routes.append(([in_ids[a][la_], len(net.lanes) - 1, out_ids[b][lb_]], weights[tag], tag))
    for a in range(num_arms):
        for k in range(n_out[a]):
            net.routes.append(([out_ids[a][k]], 0.6, "exit"))
            net.spawn[out_ids[a][k]] = (2.0, arm_len - 60.0)
        for k in range(n_in[a]):
            net.spawn[in_ids[a][k]] = (5.0, arm_len - 1.0)
        net.bike_lanes.add(in_ids[a][n_in[a] - 1])
    # Traffic control.
    if num_arms == 4:
        grn = [rng.uniform(9.0, 16.0), rng.uniform(9.0, 16.0)]
        yel = rng.uniform(3.5, 4.5)
        allred = rng.uniform(1.0, 2.0)
        cycle = []
        for g in (0, 1):
            if protected:
                cycle += [(f"L{g}", rng.uniform(5.0, 8.0)), (f"LY{g}", 3.0)]
            cycle += [(f"G{g}", grn[g]), (f"Y{g}", yel), ("R", allred)]
        phases = _phase_states(cycle, rng.uniform(0, sum(d for _, d in cycle)), num_steps)
        # Per road: the through lanes' signal and the left-turn lane's arrow.
        through = [np.where(phases == f"G{g}", TL_GO, np.where(phases == f"Y{g}", TL_CAUTION, TL_STOP))
                   .astype(np.int64) for g in (0, 1)]
        arrow = [np.where(phases == f"L{g}", TL_ARROW_GO, np.where(phases == f"LY{g}", TL_ARROW_CAUTION, TL_ARROW_STOP))
                 .astype(np.int64) for g in (0, 1)] if protected else None
        for a in range(num_arms):
            g = road_of[a]
            for k in range(n_in[a]):
                net.lights.append(_Light(in_ids[a][k], arrow[g] if protected and k == 0 else through[g]))
                net.lanes[in_ids[a][k]].stop = ("light", len(net.lights) - 1)
        # Pedestrians cross arm a while the other road has its through green.
        green = [phases == f"G{g}" for g in (0, 1)]
        walks = [_walk_window(green[1 - road_of[a]], (n_in[a] + n_out[a]) * w / 1.1 + 4.0) for a in range(num_arms)]
        _junction_crosswalks(net, u, nv, r_s, cw, np.array(n_in), np.array(n_out), w, walks)
    else:
        for k in range(n_in[minor]):
            lane = in_ids[minor][k]
            net.signs.append((in_pt(minor, k, r_s) + u[minor] * 1.0 + nv[minor] * 0.5 * w, lane))
            net.lanes[lane].stop = ("sign", len(net.signs) - 1)
        if rng.random() < 0.6:
            walk = np.ones(num_steps, bool)
            _junction_crosswalks(net, u[minor:minor + 1], nv[minor:minor + 1], r_s, cw, np.array(n_in[minor:minor + 1]),
                                 np.array(n_out[minor:minor + 1]), w, [walk])
    # Road edges: for each pair of neighbouring arms, kerb along arm b's outgoing side, round the
    # corner (the outermost right-turn geometry shifted half a lane outwards), out along arm a.
    # A kerb with a parking strip steps out over _PARK_TAPER metres, `park_clear` past the arm's start.
    r_park = r_s + park_clear + _PARK_TAPER
    r_k = np.union1d(np.arange(r_s, r_s + arm_len, 5.0), [r_s + park_clear, r_park, r_s + arm_len])

    def kerb(a, side, n_lanes, parked):
        """Kerb points from the arm's start outwards; side +1: the in lanes' (left of u), -1: the out lanes'."""
        lat = n_lanes * w + _SHOULDER + (park_w * np.clip((r_k - r_s - park_clear) / _PARK_TAPER, 0.0, 1.0)
                                         if parked else 0.0)
        return u[a] * r_k[:, None] + side * nv[a] * np.asarray(lat)[..., None]

    for a in range(num_arms):
        b = int(nxt[a])
        net.edges.append(np.concatenate([kerb(a, 1, n_in[a], park_in[a])[::-1][:-1], corners[a][::2],
                                         kerb(b, -1, n_out[b], park_out[b])[1:]]))
    # Parking strips: lane-side boundaries from past the taper to 3 m short of the arm's end.
    r_line = np.arange(r_park + 1.0, r_s + arm_len - 3.0, _PATH_DS)
    for a in range(num_arms):
        if park_in[a]:  # traffic runs towards the centre
            net.parking.append((u[a] * r_line[::-1, None] + nv[a] * (n_in[a] * w), park_w))
        if park_out[a]:
            net.parking.append((u[a] * r_line[:, None] - nv[a] * (n_out[a] * w), park_w))
    _orient_edges(net)
    return net


def _junction_crosswalks(net: _Net, u, nv, r_s, cw, n_in, n_out, w, walks) -> None:
    """Crosswalks over arms with directions `u [K, 2]`, left normals `nv [K, 2]` and `n_in`, `n_out [K]` lanes,
    each with two kerb-to-kerb crossing paths (one each way) walking while `walks[k] [T]` allows."""
    r_m = r_s - 1.0 - cw / 2
    hi, lo = (n_in * w + _SHOULDER)[:, None], (n_out * w + _SHOULDER)[:, None]
    corners = np.stack([u * (r_m - cw / 2) - nv * (lo + 0.5), u * (r_m + cw / 2) - nv * (lo + 0.5),
                        u * (r_m + cw / 2) + nv * (hi + 0.5), u * (r_m - cw / 2) + nv * (hi + 0.5)], 1)
    net.crosswalks.extend(corners)
    ends = []  # [K, 2 directions, start / end, 2]
    for sgn in (1.0, -1.0):
        jitter = u * sgn * cw * 0.2
        a = u * r_m + nv * (hi + 6.0) + jitter
        b = u * r_m - nv * (lo + 6.0) + jitter
        ends.append(np.stack([a, b] if sgn > 0 else [b, a], 1))
    ends = np.stack(ends, 1).reshape(-1, 2, 2)
    for k, xy in enumerate(_straight_many(ends[:, 0], ends[:, 1])):
        net.peds.append(_PedPath(xy, stop_s=5.0, walk=walks[k // 2]))
