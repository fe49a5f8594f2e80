"""What a scenario set looks like, measured the same way for every source: the gap between worlds.

A policy trained in the procedural world transfers to real logs only as far as the two
worlds agree. `scenario_statistics` measures, per scenario (numpy, host, from the logs
and the compiled map alone, so any source can be compared with any other):

- `ego_speed` (m/s): mean logged ego speed over valid steps;
- `ego_accel` (m/s²): 90th percentile of |dv/dt| of the logged ego;
- `ego_curvature` (1/m): 90th percentile of |dyaw/ds| of the logged ego where it moves
  faster than 2 m/s (heading change per metre travelled);
- `headway_m`: median gap to the nearest valid object ahead of the ego within ±2 m of its
  heading line (steps with no such object are left out; NaN when there is none at all);
- `objects_30m`: valid objects (not the ego) within 30 m of the ego at the current step;
- `other_speed` (m/s): mean speed of the other valid vehicles at the current step;
- `lane_width_m`: median spacing between neighbouring parallel lane centres near the ego
  (points of two lanes whose directions agree within 15° and whose lateral offset is 2-6 m);
- `lane_km_per_km2`: lane length (km) per km² within 50 m of the ego at the current step;
- `edge_km_per_km2`: the same for road-edge segments.

`summarize` reduces them to median / p10 / p90 over a set, `gap_table` puts two sets
side by side with the ratio of medians.
"""

from __future__ import annotations

import numpy as np

from jaxloop.sim.datatypes import TYPE_VEHICLE, Scenario

STAT_KEYS = ("ego_speed", "ego_accel", "ego_curvature", "headway_m", "objects_30m", "other_speed", "lane_width_m",
             "lane_km_per_km2", "edge_km_per_km2")
DENSITY_RADIUS_M = 50.0


def _nan_stat(fn, values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(fn(values)) if values.size else float("nan")


def _one(s: Scenario, current: int) -> dict[str, float]:
    traj, meta, rm = s.log_trajectory, s.object_metadata, s.roadmap
    ego = int(np.argmax(meta.is_sdc))
    valid = np.asarray(traj.valid)
    x, y, yaw = (np.asarray(a, np.float64) for a in (traj.x, traj.y, traj.yaw))
    speed = np.hypot(traj.vel_x, traj.vel_y).astype(np.float64)
    ev = valid[ego]
    out: dict[str, float] = {"ego_speed": _nan_stat(np.mean, np.where(ev, speed[ego], np.nan))}
    both = ev[1:] & ev[:-1]
    accel = np.where(both, np.abs(np.diff(speed[ego])) / 0.1, np.nan)
    out["ego_accel"] = _nan_stat(lambda v: np.percentile(v, 90), accel)
    ds = np.hypot(np.diff(x[ego]), np.diff(y[ego]))
    dyaw = np.angle(np.exp(1j * np.diff(yaw[ego])))
    moving = both & (speed[ego, 1:] > 2.0) & (ds > 0.05)
    out["ego_curvature"] = _nan_stat(lambda v: np.percentile(v, 90),
                                     np.where(moving, np.abs(dyaw) / np.maximum(ds, 1e-6), np.nan))
    # headway: others in the ego frame at every step where both are valid
    dx, dy = x - x[ego], y - y[ego]
    c, si = np.cos(yaw[ego]), np.sin(yaw[ego])
    ahead, lateral = dx * c + dy * si, -dx * si + dy * c
    others = valid & ev[None] & (np.arange(valid.shape[0]) != ego)[:, None]
    in_lane = others & (ahead > 0) & (np.abs(lateral) < 2.0)
    gap = np.where(in_lane, ahead, np.inf).min(0)
    out["headway_m"] = _nan_stat(np.median, np.where(np.isfinite(gap), gap, np.nan))
    t = current
    near = others[:, t] & (np.hypot(dx[:, t], dy[:, t]) < 30.0)
    out["objects_30m"] = float(near.sum())
    vehicles = others[:, t] & (np.asarray(meta.object_types) == TYPE_VEHICLE)
    out["other_speed"] = _nan_stat(np.mean, np.where(vehicles, speed[:, t], np.nan))
    centre = np.array([x[ego, t], y[ego, t]]) if ev[t] else np.array([x[ego][ev][0], y[ego][ev][0]])
    out["lane_width_m"] = _lane_width(np.asarray(rm.lane_xy, np.float64), np.asarray(rm.lane_dir, np.float64),
                                      np.asarray(rm.lane_valid), centre)
    area_km2 = np.pi * DENSITY_RADIUS_M ** 2 / 1e6
    lane_xy, lane_valid = np.asarray(rm.lane_xy, np.float64), np.asarray(rm.lane_valid)
    seg_ok = lane_valid[:, 1:] & lane_valid[:, :-1]
    mid = 0.5 * (lane_xy[:, 1:] + lane_xy[:, :-1])
    seg_len = np.linalg.norm(np.diff(lane_xy, axis=1), axis=-1)
    in_r = seg_ok & (np.linalg.norm(mid - centre, axis=-1) < DENSITY_RADIUS_M)
    out["lane_km_per_km2"] = float(seg_len[in_r].sum() / 1e3 / area_km2)
    start, end, ev_ = (np.asarray(a, np.float64) for a in (rm.edge_start, rm.edge_end, rm.edge_valid))
    emid = 0.5 * (start + end)
    e_in = ev_.astype(bool) & (np.linalg.norm(emid - centre, axis=-1) < DENSITY_RADIUS_M)
    out["edge_km_per_km2"] = float(np.linalg.norm(end - start, axis=-1)[e_in].sum() / 1e3 / area_km2)
    return out


def _lane_width(xy: np.ndarray, direction: np.ndarray, valid: np.ndarray, centre: np.ndarray) -> float:
    """Median lateral spacing of neighbouring parallel lanes within 40 m of `centre` (NaN if none)."""
    lane = np.broadcast_to(np.arange(xy.shape[0])[:, None], valid.shape)
    keep = valid & (np.linalg.norm(xy - centre, axis=-1) < 40.0)
    p, d, lid = xy[keep], direction[keep], lane[keep]
    if len(p) < 2:
        return float("nan")
    rel = p[None] - p[:, None]  # [M, M, 2] from point i to point j
    lat = np.abs(rel[..., 0] * -d[:, None, 1] + rel[..., 1] * d[:, None, 0])
    lon = np.abs(rel[..., 0] * d[:, None, 0] + rel[..., 1] * d[:, None, 1])
    parallel = (d @ d.T) > np.cos(np.deg2rad(15.0))
    ok = parallel & (lid[:, None] != lid[None]) & (lat > 2.0) & (lat < 6.0) & (lon < 1.5)
    nearest = np.where(ok, lat, np.inf).min(1)
    return _nan_stat(np.median, np.where(np.isfinite(nearest), nearest, np.nan))


def scenario_statistics(scenarios: Scenario, current_index: int = 10) -> dict[str, np.ndarray]:
    """`{stat: [S]}` over a batched numpy scenario set (see the module docstring); `current_index` is the
    log step of the episode start (WOMD: 10)."""
    import jax
    host = jax.tree.map(np.asarray, scenarios)
    count = host.num_scenarios
    rows = [_one(jax.tree.map(lambda a: a[i], host), current_index) for i in range(count)]
    return {k: np.array([r[k] for r in rows]) for k in STAT_KEYS}


def summarize(stats: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Median, p10, p90 and the number of scenarios with a value, per statistic."""
    out = {}
    for k, v in stats.items():
        f = v[np.isfinite(v)]
        out[k] = ({"median": float(np.median(f)), "p10": float(np.percentile(f, 10)),
                   "p90": float(np.percentile(f, 90)), "n": int(f.size)} if f.size else
                  {"median": float("nan"), "p10": float("nan"), "p90": float("nan"), "n": 0})
    return out


def gap_table(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]], name_a: str, name_b: str) -> str:
    """Markdown: each statistic's median [p10, p90] in two sets and the ratio of medians (a / b)."""
    lines = [f"| statistic | {name_a} | {name_b} | ratio |", "|---|---|---|---|"]
    cell = lambda s: f"{s['median']:.3g} [{s['p10']:.3g}, {s['p90']:.3g}]" if s["n"] else "n/a"
    for k in a:
        ratio = a[k]["median"] / b[k]["median"] if b[k]["n"] and b[k]["median"] else float("nan")
        lines.append(f"| {k} | {cell(a[k])} | {cell(b[k])} | {ratio:.2f} |")
    return "\n".join(lines)
