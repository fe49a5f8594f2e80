"""Network builders: multi-lane straight and curved two-way roads, the highway on-ramp merge and the
single-lane roundabout (held out of the training splits)."""

from __future__ import annotations

import numpy as np

from jaxloop.data.procedural.config import _PARK_WIDTH, _SHOULDER, ParamRanges
from jaxloop.data.procedural.geometry import (_arc, _bezier_many, _integrate_heading, _left, _offset, _resample,
                                              _tangent, _unit)
from jaxloop.data.procedural.network import _Light, _Net, _add_peds_across, _orient_edges, _phase_states, _walk_window
from jaxloop.sim.datatypes import RG_FREEWAY_LANE, RG_SURFACE_LANE, TL_CAUTION, TL_GO, TL_STOP


def _build_road(rng: np.random.Generator, pr: ParamRanges, curved: bool, num_steps: int) -> _Net:
    net = _Net()
    w = rng.uniform(*pr.lane_width)
    n = int(rng.integers(1, pr.max_lanes + 1))
    speed = rng.uniform(11.0, 16.0) * rng.uniform(*pr.speed_scale)
    urban = bool(rng.random() < pr.urban_share)
    if urban:
        speed *= rng.uniform(*pr.urban_speed_scale)
    net.urban = urban
    park_w = rng.uniform(*_PARK_WIDTH)
    parked_side = {d: urban and bool(rng.random() < pr.parking_side) for d in (1, -1)}  # per direction
    length = 300.0
    ds = 1.0
    k = np.zeros(int(length / ds) + 1)
    if curved:
        radius = max(rng.uniform(*pr.curve_radius), n * w + 15.0)
        sign = rng.choice([-1.0, 1.0])
        start = int(rng.uniform(50, 90))
        ramp = int(rng.uniform(15, 30))
        hold = int(rng.uniform(30, 80))
        prof = np.concatenate([np.linspace(0, 1, ramp), np.ones(hold), np.linspace(1, 0, ramp)])
        k[start:start + len(prof)] = sign * prof / radius
        if rng.random() < 0.5:  # S-curve
            s2 = start + len(prof) + int(rng.uniform(10, 30))
            r2 = max(rng.uniform(*pr.curve_radius), n * w + 15.0)
            seg = -prof[: max(0, min(len(prof), len(k) - s2))] * radius / r2
            k[s2:s2 + len(seg)] += sign * seg / radius
    ref = _integrate_heading(rng.uniform(-np.pi, np.pi), np.zeros(2), k, ds)
    ref = _resample(ref - ref[len(ref) // 2])
    # Mid-block crosswalk on about half the roads (signalised on half of those).
    cross_s = rng.uniform(100.0, 200.0) if rng.random() < 0.55 else None
    signalised = cross_s is not None and rng.random() < 0.5
    cw = rng.uniform(3.0, 4.5)
    s_ref = _arc(ref)
    # Kerbs per direction (each direction's kerb on its right), out past a parking strip where there is one.
    kerb = {d: n * w + _SHOULDER + (park_w if parked_side[d] else 0.0) for d in (1, -1)}
    half = max(kerb.values())
    light_states = None
    if signalised:
        green, yellow, red = rng.uniform(8, 16), rng.uniform(3.5, 4.5), rng.uniform(8, 14)
        cycle = [("green", green), ("yellow", yellow), ("red", red)]
        phases = _phase_states(cycle, rng.uniform(0, green + yellow + red), num_steps)
        light_states = np.where(phases == "green", TL_GO, np.where(phases == "yellow", TL_CAUTION, TL_STOP))
    nrm_ref = _left(_tangent(ref))
    for direction in (1, -1):
        for j in range(n):
            xy = ref - (direction * (j + 0.5) * w) * nrm_ref
            if direction < 0:
                xy = xy[::-1]
            pieces = [xy]
            if cross_s is not None:
                stop_at = (cross_s - cw / 2 - 2.0) if direction > 0 else (s_ref[-1] - cross_s - cw / 2 - 2.0)
                s_l = _arc(xy)
                i = int(np.searchsorted(s_l, stop_at))
                pieces = [xy[: i + 1], xy[i:]]
            ids = [net.add_lane(p, RG_SURFACE_LANE, speed) for p in pieces]
            if len(ids) == 2:
                if signalised:
                    net.lights.append(_Light(ids[0], light_states))
                    net.lanes[ids[0]].stop = ("light", len(net.lights) - 1)
            net.routes.append((ids, 1.0, "straight"))
            net.spawn[ids[0]] = (5.0, net.lanes[ids[0]].length - 3.0)
            if len(ids) == 2:
                net.spawn[ids[1]] = (3.0, net.lanes[ids[1]].length - 40.0)
                net.routes.append(([ids[1]], 1.0, "straight"))
            if j == n - 1:
                for i in ids:
                    net.bike_lanes.add(i)
    net.edges = [(ref + kerb[-1] * nrm_ref)[::4], (ref - kerb[1] * nrm_ref)[::4]]
    # Parking along each kerb with a strip, clear of the road's ends and of the crosswalk.
    ok = (s_ref > 8.0) & (s_ref < s_ref[-1] - 8.0)
    if cross_s is not None:
        ok &= np.abs(s_ref - cross_s) > cw / 2 + 3.0
    cuts = np.flatnonzero(np.diff(ok.astype(np.int8))) + 1
    runs = [r for r in np.split(np.arange(len(ref)), cuts) if ok[r[0]] and len(r) >= 20]
    for direction in (1, -1):
        if parked_side[direction]:
            line = ref - (direction * n * w) * nrm_ref
            for r in runs:
                net.parking.append((_resample(line[r] if direction > 0 else line[r][::-1]), park_w))
    if cross_s is not None:
        i = int(np.searchsorted(s_ref, cross_s))
        c, t = ref[i], _tangent(ref)[i]
        nrm = _left(t)
        corners = np.array([c - t * cw / 2 - nrm * (half + 0.5), c + t * cw / 2 - nrm * (half + 0.5),
                            c + t * cw / 2 + nrm * (half + 0.5), c - t * cw / 2 + nrm * (half + 0.5)])
        net.crosswalks.append(corners)
        walk = (np.ones(num_steps, bool) if light_states is None
                else _walk_window(light_states == TL_STOP, 2 * half / 1.1 + 4.0))
        _add_peds_across(net, c, t, nrm, half, cw, walk)
    _orient_edges(net)
    return net


def _build_merge(rng: np.random.Generator, pr: ParamRanges) -> _Net:
    net = _Net()
    w = rng.uniform(*pr.lane_width)
    n = int(rng.integers(2, 4))
    vmain = rng.uniform(24.0, 29.0) * rng.uniform(*pr.speed_scale)
    vramp = rng.uniform(17.0, 21.0) * rng.uniform(*pr.speed_scale)
    length = 480.0
    ds = 1.0
    k = np.zeros(int(length / ds) + 1)
    if rng.random() < 0.5:
        k[:] = rng.choice([-1, 1]) / rng.uniform(600.0, 1500.0)
    ref = _resample(_integrate_heading(rng.uniform(-np.pi, np.pi), np.zeros(2), k, ds))
    ref = ref - ref[len(ref) // 3]
    s_ref = _arc(ref)
    tan = _tangent(ref)
    nrm = _left(tan)
    c = rng.uniform(*pr.ramp_curvature)
    s_g = rng.uniform(150.0, 190.0)  # acceleration lane starts
    s_m0 = s_g + rng.uniform(60.0, 110.0)  # taper starts
    s_m = s_m0 + rng.uniform(50.0, 80.0)  # ramp fully merged
    s_r0 = max(s_g - rng.uniform(70.0, 100.0), 10.0)

    def l_ramp(s):
        s = np.asarray(s, np.float64)
        pre = -w - c * (s_g - s) ** 2
        taper = -w * 0.5 * (1 + np.cos(np.pi * np.clip((s - s_m0) / (s_m - s_m0), 0, 1)))
        return np.where(s < s_g, pre, np.where(s < s_m0, -w, taper))

    def at(s_arr, lat):
        i = np.clip(np.searchsorted(s_ref, s_arr), 0, len(ref) - 1)
        out = np.empty((len(i), 2))
        for c in (0, 1):
            out[:, c] = ref[:, c][i] + nrm[:, c][i] * lat
        return out

    main = []
    i_m = int(np.searchsorted(s_ref, s_m))
    for j in range(n):
        xy = _offset(ref, np.full(len(ref), j * w))
        if j == 0:
            main.append([net.add_lane(xy[: i_m + 1], RG_FREEWAY_LANE, vmain), net.add_lane(xy[i_m:], RG_FREEWAY_LANE,
                                                                                           vmain)])
        else:
            main.append([net.add_lane(xy, RG_FREEWAY_LANE, vmain)])
    s_ramp = np.arange(s_r0, s_m + 1e-6, 0.5)
    ramp_xy = at(s_ramp, l_ramp(s_ramp))
    ramp = net.add_lane(ramp_xy, RG_FREEWAY_LANE, vramp, rank=0)
    for j in range(n):
        net.routes.append((main[j], 1.0, "straight"))
        net.spawn[main[j][0]] = (5.0, (s_m - 20.0) if j == 0 else 260.0)
    net.routes.append(([ramp, main[0][1]], 1.0, "merge"))
    net.spawn[ramp] = (3.0, max(s_m0 - s_r0 - 10.0, 5.0))
    half_l = (n - 1) * w + w / 2 + _SHOULDER
    off = w / 2 + _SHOULDER
    # Gore: the unpaved wedge between the main road and the ramp, closed by a blunt 1 m nose (a
    # sharp tip would make the nearest-edge side test ambiguous just beyond it).
    s_nose = s_g - np.sqrt((2 * _SHOULDER + 1.0) / c)
    s_a = np.append(np.arange(0.0, s_nose, 2.0), s_nose)
    s_b = np.append(np.arange(s_r0, s_nose, 2.0), s_nose)
    main_side = at(s_a, np.full(len(s_a), -off))
    ramp_side = at(s_b[::-1], l_ramp(s_b[::-1]) + off)
    # Round nose: a half circle bulging downstream, so every vertex of the wedge is obtuse.
    pa, pb = main_side[-1], ramp_side[0]
    centre, rad = 0.5 * (pa + pb), 0.5 * np.linalg.norm(pb - pa)
    i_n = min(int(np.searchsorted(s_ref, s_nose)), len(ref) - 1)
    fwd, side = tan[i_n], pa - centre
    th = np.linspace(0.0, np.pi, 8)[1:-1]
    nose = centre + np.cos(th)[:, None] * side + np.sin(th)[:, None] * fwd * rad
    gore = np.concatenate([main_side, nose, ramp_side])
    s_c = np.arange(s_r0, s_m, 2.0)
    s_d = np.arange(s_m, s_ref[-1], 4.0)
    outer = np.concatenate([at(s_c, l_ramp(s_c) - off), at(s_d, np.full(len(s_d), -off))])
    net.edges = [gore, outer, _offset(ref, np.full(len(ref), half_l))[::4]]
    _orient_edges(net)
    return net


def _build_roundabout(rng: np.random.Generator, pr: ParamRanges) -> _Net:
    """Single-lane roundabout with 3-4 arms; entering traffic yields to the circulating lane."""
    net = _Net()
    w = rng.uniform(max(pr.lane_width[0], 3.6), max(pr.lane_width[1], 4.2))  # wider circulating lane
    R = rng.uniform(13.0, 18.0)  # circulating lane radius
    num_arms = int(rng.integers(3, 5))
    jit = np.deg2rad(pr.angle_jitter_deg) * 0.5
    base = rng.uniform(-np.pi, np.pi)
    angles = base + np.arange(num_arms) * 2 * np.pi / num_arms + rng.uniform(-jit, jit, num_arms)
    speed = rng.uniform(10.0, 13.0) * rng.uniform(*pr.speed_scale)
    vring = min(speed, 8.0)
    arm_len = 100.0
    r_a = R + 12.0  # where arm lanes end / start
    u = [_unit(a) for a in angles]
    nv = [_left(x) for x in u]
    # Ring: counter-clockwise circle, split into arcs between consecutive junction angles.
    d_in, d_out = 0.35, 0.35  # angular offsets (rad) of entry / exit points around each arm angle
    ring_pts = []  # (angle, kind, arm)
    for a in range(num_arms):
        ring_pts.append((angles[a] - d_out, "exit", a))
        ring_pts.append((angles[a] + d_in, "entry", a))
    ring_pts.sort(key=lambda p: p[0] % (2 * np.pi))
    arcs = []
    for i in range(len(ring_pts)):
        a0 = ring_pts[i][0]
        a1 = ring_pts[(i + 1) % len(ring_pts)][0]
        if a1 % (2 * np.pi) <= a0 % (2 * np.pi):
            a1 += 2 * np.pi
        a1 = a0 + ((a1 - a0) % (2 * np.pi))
        th = np.linspace(a0, a1, max(int(R * (a1 - a0) / 0.5), 4))
        arcs.append(net.add_lane(np.stack([R * np.cos(th), R * np.sin(th)], -1), RG_SURFACE_LANE, vring, rank=2))
    point_arc = {}  # (kind, arm) -> index of arc starting at that point
    for i, (_, kind, a) in enumerate(ring_pts):
        point_arc[(kind, a)] = i
    in_ids, out_ids, entries, exits = [], [], [], []
    # Entry and exit links of every arm (all cubics at once): arm lane end -> ring, ring -> arm lane start.
    ends = []
    for a in range(num_arms):
        ea, xa = angles[a] + d_in, angles[a] - d_out
        ends.append((u[a] * r_a + nv[a] * 0.5 * w, -u[a], R * _unit(ea), _left(_unit(ea))))
        ends.append((R * _unit(xa), _left(_unit(xa)), u[a] * r_a - nv[a] * 0.5 * w, u[a]))
    links = _bezier_many(*(np.array([e[i] for e in ends]) for i in range(4)))
    for a in range(num_arms):
        in_ids.append(net.add_lane([u[a] * (r_a + arm_len) + nv[a] * 0.5 * w, u[a] * r_a + nv[a] * 0.5 * w],
                                   RG_SURFACE_LANE, speed))
        out_ids.append(net.add_lane([u[a] * r_a - nv[a] * 0.5 * w, u[a] * (r_a + arm_len) - nv[a] * 0.5 * w],
                                    RG_SURFACE_LANE, speed))
        entries.append(net.add_lane(links[2 * a], RG_SURFACE_LANE, vring, rank=0, resampled=True))
        exits.append(net.add_lane(links[2 * a + 1], RG_SURFACE_LANE, vring, rank=2, resampled=True))
    nring = len(ring_pts)
    for a in range(num_arms):
        start = point_arc[("entry", a)]
        seq = [in_ids[a], entries[a]]
        i = start
        for _ in range(nring):
            seq.append(arcs[i])
            nxt = (i + 1) % nring
            kind, b = ring_pts[nxt][1], ring_pts[nxt][2]
            if kind == "exit" and b != a:
                route = seq + [exits[b], out_ids[b]]
                net.routes.append((route, 1.0, "roundabout"))
            i = nxt
        net.spawn[in_ids[a]] = (5.0, arm_len - 1.0)
        net.routes.append(([out_ids[a]], 0.4, "exit"))
        net.spawn[out_ids[a]] = (2.0, arm_len - 60.0)
    # Edges: the central island (clockwise so the ring is on its right) and the outer kerbs.
    th = np.linspace(0, 2 * np.pi, 73)
    island = (R - w / 2 - _SHOULDER) * np.stack([np.cos(th), np.sin(th)], -1)
    net.edges.append(island)
    order = np.argsort(angles % (2 * np.pi))
    off = w / 2 + _SHOULDER
    ro = R + off
    kerbs, ends = [], []
    for idx in range(num_arms):
        a, b = order[idx], order[(idx + 1) % num_arms]
        # Kerb from arm a's incoming side round the ring's outside to arm b's outgoing side.
        pa = u[a] * r_a + nv[a] * (0.5 * w + off)
        pb = u[b] * r_a - nv[b] * (0.5 * w + off)
        a0 = angles[a] + d_in + 0.25
        a1 = angles[b] - d_out - 0.25
        a1 = a0 + ((a1 - a0) % (2 * np.pi))
        thk = np.linspace(a0, a1, max(int(ro * (a1 - a0) / 1.0), 3))
        ring_out = ro * np.stack([np.cos(thk), np.sin(thk)], -1)
        kerbs.append((a, b, pa, ring_out))
        ends.append((pa, -u[a], ring_out[0], _left(_unit(a0))))
        ends.append((ring_out[-1], _left(_unit(a1)), pb, u[b]))
    joins = _bezier_many(*(np.array([e[i] for e in ends]) for i in range(4)), spacing=1.0)
    for idx, (a, b, pa, ring_out) in enumerate(kerbs):
        lead, trail = joins[2 * idx], joins[2 * idx + 1]
        kerb = np.concatenate([
            np.stack([u[a] * (r_a + arm_len) + nv[a] * (0.5 * w + off), pa]),
            lead[1:], ring_out[1:-1], trail, np.stack([u[b] * (r_a + arm_len) - nv[b] * (0.5 * w + off)])])
        net.edges.append(kerb)
    for a in range(num_arms):
        net.bike_lanes.add(in_ids[a])
    _orient_edges(net)
    return net
