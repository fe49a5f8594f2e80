"""The road network a scenario is built on (internal): lanes at 0.5 m, edges, crosswalks, signs, lights,
routes, pedestrian paths, parking strips."""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxloop.data.mapcompile import PolylineMap, exact_min_dist
from jaxloop.data.procedural.geometry import _resample
from jaxloop.sim.datatypes import DT, RG_ROAD_EDGE_BOUNDARY


@dataclasses.dataclass
class _Lane:
    xy: np.ndarray  # [K, 2] at _PATH_DS
    rg_type: int  # RG_*_LANE
    speed: float  # m/s
    rank: int = 2  # right of way in conflicts: higher goes first
    stop: tuple[str, int] | None = None  # ("light", light index) / ("sign", sign index) at the lane end
    length: float = 0.0  # arc length (m), set on creation
    steps: np.ndarray | None = None  # [K - 1] segment lengths, computed on first use

    def __post_init__(self):
        if not self.length:  # evenly spaced points
            d = self.xy[1] - self.xy[0]
            self.length = float(np.hypot(d[0], d[1]) * (len(self.xy) - 1))

    def segment_lengths(self) -> np.ndarray:
        if self.steps is None:
            d = self.xy[1:] - self.xy[:-1]
            self.steps = np.hypot(d[:, 0], d[:, 1])
        return self.steps


@dataclasses.dataclass
class _Light:
    lane: int  # governed lane (ends at the stop line)
    states: np.ndarray  # [T] int TL_*


@dataclasses.dataclass
class _PedPath:
    xy: np.ndarray  # [K, 2] at _PATH_DS
    stop_s: float  # arc position of the kerb (waits behind it while the signal says don't walk)
    walk: np.ndarray  # [T] bool, walking allowed


@dataclasses.dataclass
class _Net:
    lanes: list[_Lane] = dataclasses.field(default_factory=list)
    edges: list[np.ndarray] = dataclasses.field(default_factory=list)  # oriented: drivable on the right
    crosswalks: list[np.ndarray] = dataclasses.field(default_factory=list)  # [4, 2]
    signs: list[tuple[np.ndarray, int]] = dataclasses.field(default_factory=list)  # (xy, lane)
    lights: list[_Light] = dataclasses.field(default_factory=list)
    routes: list[tuple[list[int], float, str]] = dataclasses.field(default_factory=list)  # (lanes, weight, tag)
    spawn: dict[int, tuple[float, float]] = dataclasses.field(default_factory=dict)  # lane -> spawn s range
    peds: list[_PedPath] = dataclasses.field(default_factory=list)
    bike_lanes: set[int] = dataclasses.field(default_factory=set)  # lanes cyclists may start on
    # Kerbside parking strips: (the strip's lane-side boundary [K, 2] at _PATH_DS, oriented with the traffic
    # beside it so the strip lies on its right; strip width m).
    parking: list[tuple[np.ndarray, float]] = dataclasses.field(default_factory=list)
    urban: bool = False  # an urban street: queued, stop-and-go traffic

    def polylines(self) -> PolylineMap:
        """The map features as `mapcompile.PolylineMap` (stop signs name their lane by its index)."""
        lanes, edges = self.lanes, self.edges
        return PolylineMap(
            lane_xy=np.concatenate([ln.xy for ln in lanes]), lane_counts=np.array([len(ln.xy) for ln in lanes]),
            lane_types=np.array([ln.rg_type for ln in lanes], np.int32),
            lane_speed=np.array([ln.speed for ln in lanes], np.float64),
            edge_xy=np.concatenate(edges) if edges else np.zeros((0, 2)), edge_counts=np.array([len(e) for e in edges]),
            edge_types=np.full(len(edges), RG_ROAD_EDGE_BOUNDARY, np.int32),
            crosswalks=np.array(self.crosswalks, np.float64).reshape(-1, 4, 2),
            stop_sign_xy=np.array([xy for xy, _ in self.signs], np.float64).reshape(-1, 2),
            stop_sign_lanes=np.array([lane for _, lane in self.signs], np.int64))

    def add_lane(self, xy, rg_type, speed, rank=2, resampled=False) -> int:
        xy = np.asarray(xy, np.float64)
        self.lanes.append(_Lane(xy if resampled else _resample(xy), rg_type, float(speed), rank))
        return len(self.lanes) - 1


def _orient_edges(net: _Net) -> None:
    """Orients each road edge so the drivable area (the side nearer the lanes) is on its right."""
    lane_pts = np.concatenate([lane.xy[::4] for lane in net.lanes])
    i = np.array([min(len(e) // 2, len(e) - 2) for e in net.edges])
    a = np.array([e[k] for e, k in zip(net.edges, i)])
    b = np.array([e[k + 1] for e, k in zip(net.edges, i)])
    d = b - a
    d /= np.maximum(np.hypot(d[:, 0], d[:, 1]), 1e-9)[:, None]
    right = np.stack([d[:, 1], -d[:, 0]], -1)
    mid = 0.5 * (a + b)
    dist = exact_min_dist(np.concatenate([mid + right, mid - right]), lane_pts).reshape(2, -1)
    net.edges = [e if dr <= dl else e[::-1].copy() for e, dr, dl in zip(net.edges, dist[0], dist[1])]


def _phase_states(cycle: list[tuple[str, float]], offset: float, num_steps: int) -> np.ndarray:
    """Phase name `[T]` at each step of a repeating cycle [(name, seconds)], starting `offset` s into it."""
    names = np.array([p for p, _ in cycle])
    ends = np.cumsum([d for _, d in cycle])
    t = (offset + np.arange(num_steps) * DT) % ends[-1]
    return names[np.minimum(np.searchsorted(ends, t, side="right"), len(names) - 1)]


def _walk_window(go: np.ndarray, crossing_s: float) -> np.ndarray:
    """Walk allowed from just over 1 s into a `go` window while it lasts `crossing_s` + 3 s more.

    A window open at the start of the log counts as open for 5 s already; one open at the
    end is assumed to last 30 s more.
    """
    num_steps = len(go)
    t = np.arange(num_steps)
    opens = go & np.concatenate([[True], ~go[:-1]])
    start = np.maximum.accumulate(np.where(opens, t, -1))
    stop = np.minimum.accumulate(np.where(~go, t, num_steps)[::-1])[::-1]  # first closed step at or after t
    remaining = (stop - t + 1) * DT + np.where(stop == num_steps, 30.0 - DT, 0.0)
    since = np.where(start == 0, 5.0 + t * DT, (t - start) * DT)
    return go & (remaining >= crossing_s + 3.0) & (since > 1.0 + 1e-9)


def _add_peds_across(net: _Net, centre, along, nrm, half, cw, walk) -> None:
    """Two kerb-to-kerb crossing paths (one each way) over a crosswalk centred at `centre`."""
    for sgn in (1.0, -1.0):
        a = centre + sgn * nrm * (half + 6.0) + along * sgn * cw * 0.2
        b = centre - sgn * nrm * (half + 6.0) + along * sgn * cw * 0.2
        xy = _resample(np.stack([a, b]))
        net.peds.append(_PedPath(xy, stop_s=6.0 - 1.0, walk=walk))
