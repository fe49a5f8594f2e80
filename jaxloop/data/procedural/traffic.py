"""Traffic: agents on routes through the network, kerbside parked vehicles."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np

from jaxloop.data.mapcompile import exact_min_dist
from jaxloop.data.procedural.config import (_HEAD_TURN_SHARE, _INF, _PARK_INNER, _PARK_OUTER, _PATH_DS, GeneratorConfig,
                                            ParamRanges)
from jaxloop.data.procedural.geometry import _tangent, _unit
from jaxloop.data.procedural.network import _Net
from jaxloop.sim.datatypes import TYPE_CYCLIST, TYPE_PEDESTRIAN, TYPE_VEHICLE


@dataclasses.dataclass
class _Agent:
    kind: int  # TYPE_*
    path: np.ndarray  # [K, 2] at _PATH_DS
    lanes: list[int]  # route lane indices (pedestrians: [-1 - ped path index])
    lane_off: list[float]  # arc position of each lane's start on the path
    s0: float
    v0: float
    vdes: float
    length: float
    width: float
    height: float
    amax: float
    bdec: float
    headway: float
    gap0: float
    stop_s: float = _INF
    stop_sig: int = -1  # row of the scenario's signal table, -1 none
    stop_sign: bool = False
    tag: str = ""
    slow: tuple[float, float, float] = (0.0, 0.0, 1.0)  # (t0, t1, factor) of a slow-down episode


def _lane_len(net: _Net, i: int) -> float:
    return net.lanes[i].length


def _route_path(net: _Net, lanes: list[int]) -> tuple[np.ndarray, list[float]]:
    """The route's centre line at exactly `_PATH_DS` spacing and each lane's start position on it."""
    objs = [net.lanes[li] for li in lanes]
    offs, acc = [], 0.0
    for lane in objs:
        offs.append(acc)
        acc += lane.length
    if len(objs) == 1:
        xy, steps = objs[0].xy, objs[0].segment_lengths()
    else:  # each lane after the first joined from the previous one's end to its second point
        xy = np.concatenate([objs[0].xy] + [lane.xy[1:] for lane in objs[1:]])
        d = xy[1:] - xy[:-1]
        steps = np.hypot(d[:, 0], d[:, 1])
    s = np.empty(len(xy))
    s[0] = 0.0
    np.cumsum(steps, out=s[1:])
    t = np.arange(0.0, s[-1] + 1e-9, _PATH_DS)
    out = np.empty((len(t), 2))
    out[:, 0] = np.interp(t, s, xy[:, 0])
    out[:, 1] = np.interp(t, s, xy[:, 1])
    return out, offs


class _Draws:
    """Uniform draws from `rng` taken a block at a time (scalar generator calls are slow in Python).

    A block is drawn only when the previous one is used up, so the generator's state
    after the draws depends only on how many were taken.
    """

    def __init__(self, rng: np.random.Generator, block: int = 256):
        blocks = iter(lambda: rng.random(block).tolist(), None)
        self.random = itertools.chain.from_iterable(blocks).__next__  # () -> float

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self.random()


def _spawn(net: _Net, rng: np.random.Generator, pr: ParamRanges, cfg: GeneratorConfig, red_at0) -> list[_Agent]:
    """Places vehicles, cyclists and pedestrians on the network at t = 0."""
    agents: list[_Agent] = []
    density = rng.uniform(*pr.density)
    budget = max(3, int(round(density * cfg.num_objects)))
    if net.parking:  # slots left to the parked vehicles (`_add_parked`)
        budget = max(3, int(round(budget * (1.0 - rng.uniform(*pr.parked_fraction)))))
    n_ped = min(cfg.max_pedestrians, len(net.peds), int(rng.integers(0, cfg.max_pedestrians + 1)))
    n_cyc = int(rng.integers(0, cfg.max_cyclists + 1)) if net.bike_lanes else 0
    routes_from: dict[int, list[tuple[list[int], float, str]]] = {}
    for lanes, wgt, tag in net.routes:
        routes_from.setdefault(lanes[0], []).append((lanes, wgt, tag))
    spawn_lanes = [li for li in net.spawn if li in routes_from]
    path_cache: dict[tuple[int, ...], tuple[np.ndarray, list[float], tuple]] = {}
    rng.shuffle(spawn_lanes)
    dr = _Draws(rng)
    # Pedestrians first (they are few), one per crossing path.
    for pi in rng.permutation(len(net.peds))[:n_ped]:
        p = net.peds[pi]
        walking = dr.random() < 0.5
        s0 = dr.uniform(0.5, p.stop_s - 0.6)
        if walking and p.walk[0]:
            s0 = dr.uniform(0.5, min(p.stop_s + 6.0, len(p.xy) * _PATH_DS - 12.0))
        vdes = dr.uniform(1.0, 1.6)
        agents.append(_Agent(TYPE_PEDESTRIAN, p.xy, [-1 - int(pi)], [0.0], s0, vdes * dr.random(), vdes,
                             dr.uniform(0.4, 0.7), dr.uniform(0.4, 0.7), dr.uniform(1.5, 1.9), 0.8, 2.0, 0.6,
                             0.6, stop_s=p.stop_s, tag="walk"))
    # Vehicles and cyclists lane by lane, queued back from each lane's downstream end.
    vehicles_left = budget - len(agents)
    cyclists_left = n_cyc
    per_lane = max(1, int(np.ceil(vehicles_left / max(len(spawn_lanes), 1))) + 1)
    red0: dict[int, bool] = {}
    # Urban streets: shorter gaps between queued vehicles, more of them slowing down or starting slow.
    gap_max, slow_p, v0_lo = (12.0, 0.3, 0.3) if net.urban else (30.0, 0.15, 0.6)
    head_max = 12.0 if net.urban else 25.0  # the first vehicle of a lane is at most this / density from its end
    for li in spawn_lanes:
        if vehicles_left <= 0:
            break
        lo, hi = net.spawn[li]
        if hi <= lo:
            continue
        lane = net.lanes[li]
        pos = hi - dr.uniform(0.0, head_max / density)
        lead: _Agent | None = None
        lead_s = 0.0
        count = 0
        all_opts = routes_from[li]
        cyc_opts = [o for o in all_opts if o[2] in ("straight", "right", "exit")] or all_opts
        all_total, cyc_total = sum(o[1] for o in all_opts), sum(o[1] for o in cyc_opts)
        bike_lane = li in net.bike_lanes
        while pos > lo and vehicles_left > 0 and count < per_lane:
            is_cyc = cyclists_left > 0 and bike_lane and dr.random() < 0.3
            opts = cyc_opts if is_cyc else all_opts
            turns = [o for o in opts if o[2] in ("left", "right")]
            if lead is None and turns and dr.random() < _HEAD_TURN_SHARE:
                opts = turns  # the head of a junction queue: real logs turn far more than a weight draw gives
            pick = dr.random() * sum(o[1] for o in opts)
            k, acc = 0, opts[0][1]
            while acc <= pick and k < len(opts) - 1:
                k += 1
                acc += opts[k][1]
            lanes, _, tag = opts[k]
            key = tuple(lanes)
            if key not in path_cache:
                path, offs = _route_path(net, lanes)
                stop = (_INF, -1, False, 0.0)  # (stop position, signal, stop sign, start of the stop lane)
                for j, lj in enumerate(lanes):
                    st = net.lanes[lj].stop
                    if st is not None:
                        stop = (offs[j] + _lane_len(net, lj), st[1] if st[0] == "light" else -1, st[0] == "sign",
                                offs[j])
                        break
                path_cache[key] = (path, offs, stop)
            path, offs, stop = path_cache[key]
            if is_cyc:
                length, width, height = dr.uniform(1.6, 2.0), dr.uniform(0.6, 0.8), dr.uniform(1.6, 1.9)
                vdes = dr.uniform(4.0, 7.0)
                amax, bdec, headway, gap0 = 1.0, 2.0, 1.2, 1.5
            else:
                length, width, height = dr.uniform(4.2, 5.3), dr.uniform(1.8, 2.1), dr.uniform(1.4, 1.9)
                vdes = lane.speed * dr.uniform(0.85, 1.05)
                amax, bdec = dr.uniform(1.3, 2.2), dr.uniform(2.0, 3.0)
                headway, gap0 = dr.uniform(1.0, 1.7), dr.uniform(2.0, 3.0)
            s0 = pos - length / 2
            if lead is not None:
                room = lead_s - lead.length / 2 - (s0 + length / 2)
                if room < gap0 + 0.5:
                    pos -= gap0 + 1.0
                    continue
            # Initial speed: what the driver could stop from before the leader or an active stop line.
            v0 = vdes * dr.uniform(v0_lo, 1.0)
            if lead is not None:
                room = max(lead_s - lead.length / 2 - (s0 + length / 2) - gap0, 0.0)
                v0 = min(v0, math.sqrt(lead.v0 ** 2 + 2 * 1.5 * room), room / headway + lead.v0)
            stop_s, stop_sig, stop_sign = _INF, -1, False
            if stop[0] < _INF and stop[0] > s0 + length / 2:  # the first stop line is still ahead
                stop_s, stop_sig, stop_sign = stop[0], stop[1], stop[2]
                if stop_sig not in red0:
                    red0[stop_sig] = bool(red_at0(stop_sig))
                if stop_sign or red0[stop_sig]:
                    v0 = min(v0, math.sqrt(2 * 1.5 * max(stop_s - (s0 + length / 2) - 1.0, 0.0)))
            v0 = max(v0, 0.0)
            slow = (0.0, 0.0, 1.0)
            if dr.random() < slow_p:
                t0 = dr.uniform(0.0, 5.0)
                slow = (t0, t0 + dr.uniform(2.0, 5.0), dr.uniform(0.0, 0.5))
            kind = TYPE_CYCLIST if is_cyc else TYPE_VEHICLE
            ag = _Agent(kind, path, list(lanes), offs, s0, v0, vdes, length, width, height, amax, bdec,
                        headway, gap0, stop_s, stop_sig, stop_sign, tag, slow)
            agents.append(ag)
            vehicles_left -= 1
            cyclists_left -= int(is_cyc)
            count += 1
            lead, lead_s = ag, s0
            pos = s0 - length / 2 - gap0 - headway * v0 - dr.uniform(1.0, gap_max / density)
    return agents


def _parking_spots(net: _Net, rng: np.random.Generator, occupancy: float, focus: np.ndarray,
                   radius: float) -> dict[str, np.ndarray]:
    """Parked vehicles `[M]` along the network's parking strips within `radius` of the `focus` points `[F, 2]`:
    centre `xy [M, 2]`, yaw, length, width, height and distance `dist` to the focus.

    Each strip is filled front to back with spaces that are taken (a vehicle and a gap) or
    left empty (driveways, free spaces). A vehicle is kept only if every box corner lies
    inside its strip with the `_PARK_INNER` / `_PARK_OUTER` margins, measured from the strip's
    boundary polyline, so it is on the drivable area and clear of the lanes on curves too.
    All strips at once; the draws depend only on the strips' lengths.
    """
    lines = [line for line, _ in net.parking]
    n_pts = np.array([len(line) for line in lines])
    total = (n_pts - 1) * _PATH_DS
    ks = (total / 3.0).astype(np.int64) + 2  # spaces drawn per strip: more than fit
    owner = np.repeat(np.arange(len(lines)), ks)
    u = rng.random((9, int(ks.sum())))
    taken = u[0] < occupancy
    length, width, height = 4.0 + 1.0 * u[1], 1.7 + 0.3 * u[2], 1.4 + 0.5 * u[3]
    advance = np.where(taken, length + 0.7 + 1.8 * u[4], 3.0 + 4.0 * u[5])
    end = np.cumsum(advance)
    first = np.cumsum(ks) - ks
    start = end - advance - (end - advance)[first][owner] + 3.0 * u[6, first][owner]
    sel = taken & (start + length < total[owner] - 0.5)
    xy_all = np.concatenate(lines)
    tan_all = np.concatenate([_tangent(line) for line in lines])
    p0 = np.cumsum(n_pts) - n_pts
    park_w = np.array([w for _, w in net.parking])[owner]
    i = p0[owner] + np.minimum(np.round((start + length / 2) / _PATH_DS).astype(np.int64), n_pts[owner] - 1)
    dist = np.full(len(sel), np.inf)
    dist[sel] = exact_min_dist(xy_all[i[sel]], focus)
    sel &= dist <= radius
    dist = dist[sel]
    i, owner, length, width, height, park_w = i[sel], owner[sel], length[sel], width[sel], height[sel], park_w[sel]
    t = tan_all[i]
    out = np.stack([t[:, 1], -t[:, 0]], -1)  # the strip side (right of the traffic)
    lo = _PARK_INNER + width / 2 + 0.1
    hi = np.maximum(park_w - _PARK_OUTER - width / 2 - 0.1, lo)
    xy = xy_all[i] + out * (lo + u[7][sel] * (hi - lo))[:, None]
    yaw = np.arctan2(t[:, 1], t[:, 0]) + np.deg2rad(1.5) * (2.0 * u[8][sel] - 1.0)
    # Box corners against the strip: lateral offset from the nearest boundary point within +-8 m.
    c, sn = np.cos(yaw), np.sin(yaw)
    corners = np.stack([xy + np.stack([fl * c * length / 2 - fw * sn * width / 2,
                                       fl * sn * length / 2 + fw * c * width / 2], -1)
                        for fl, fw in ((1, 1), (1, -1), (-1, 1), (-1, -1))], 1)  # [M, 4, 2]
    win = np.clip(i[:, None] + np.arange(-16, 17)[None], p0[owner][:, None], (p0 + n_pts - 1)[owner][:, None])
    pts, ptan = xy_all[win], tan_all[win]  # [M, 33, 2]
    d2 = np.sum((corners[:, :, None] - pts[:, None]) ** 2, -1)  # [M, 4, 33]
    near = np.argmin(d2, -1)
    m_idx = np.arange(len(xy))[:, None]
    rel = corners - pts[m_idx, near]
    t_n = ptan[m_idx, near]
    lat_c = rel[..., 0] * t_n[..., 1] - rel[..., 1] * t_n[..., 0]  # [M, 4] towards the strip side
    fits = (lat_c.min(1) >= _PARK_INNER) & (lat_c.max(1) <= park_w - _PARK_OUTER)
    return dict(xy=xy[fits], yaw=yaw[fits], length=length[fits], width=width[fits], height=height[fits],
                dist=dist[fits])


def _add_parked(item: dict, pr: ParamRanges, cfg: GeneratorConfig) -> None:
    """Fills the item's free object slots with parked vehicles, nearest to the start of the ego's route first.

    Parked vehicles stand still for the whole log (they are simulated with zero
    acceleration) on paths of their own outside every lane, so they take part in no
    conflict record; the log checks still test them for overlaps.
    """
    net, agents, rng = item["net"], item["agents"], item["rng"]
    free = cfg.num_objects - len(agents)
    if not net.parking or free <= 0:
        return
    ego = agents[item["ego"]]
    i0, i1 = int(max(ego.s0 - 10.0, 0.0) / _PATH_DS), int((ego.s0 + 50.0) / _PATH_DS) + 1
    spots = _parking_spots(net, rng, rng.uniform(*pr.parked_occupancy), ego.path[i0:i1:4], 45.0)
    order = np.argsort(spots["dist"], kind="stable")[:free]
    for m in order.tolist():
        half = math.ceil((spots["length"][m] / 2 + 3.0) / _PATH_DS) * _PATH_DS
        heading = _unit(spots["yaw"][m])
        path = spots["xy"][m] + np.arange(-half, half + 1e-9, _PATH_DS)[:, None] * heading
        agents.append(_Agent(TYPE_VEHICLE, path, [], [], half, 0.0, 0.0, float(spots["length"][m]),
                             float(spots["width"][m]), float(spots["height"][m]), 1.0, 2.0, 1.0, 2.0, tag="parked"))
    item["alive"] = np.ones(len(agents), bool)
