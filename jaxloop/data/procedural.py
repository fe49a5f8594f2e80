"""Built-in procedural driving scenarios: maps, traffic lights and expert logs.

The default dataset of jaxloop: nothing to download. Each scenario is generated from
one integer seed, deterministically, in the same `Scenario` format as the real-data
loaders (the map is compiled straight into the `RoadMap` layout of `jaxloop.data.mapcompile`).

Map families (`FAMILY_NAMES`): multi-lane straight and curved two-way roads (with
mid-block crosswalks, signalised or not), a 4-way signalised intersection (protected
or unprotected left turns, crosswalks with pedestrian phases), a T-junction with stop
signs on the minor road, a highway on-ramp merge, and a single-lane roundabout (held
out of the training splits). Training families are drawn with `TRAIN_FAMILY_WEIGHTS`
(mostly junctions, as in real logs).

Urban streets (`ParamRanges.urban_share` of the road and junction scenarios) have lower
speed limits, tighter queues and more stop-and-go, and kerbside parking strips between
the outermost lane and the kerb (the road edge moved out past them; on junction arms
from a few metres past the junction). Parked vehicles fill the strips' spaces nearest
the ego's route: they stand still for the whole log, outside every lane, so traffic is
never blocked by them, and they take the object slots that real logs give to the many
parked cars around the ego.

Expert logs come from a rule-based driver simulated jointly at 10 Hz in numpy,
vectorised over all agents of a whole chunk of scenarios:

- Longitudinal: IDM car following along each agent's path; stop lines (red and
  yellow lights with a stop-or-go decision at yellow onset, stop signs with a full
  stop) act as stopped leaders; a curvature speed cap slows agents before bends.
- Interaction: every pair of agents whose paths come close gets a conflict zone
  (precomputed from lane-pair proximity). Zones where the paths run the same way
  (shared lanes, merges) give projected car following; crossing zones give
  ordered passage: an agent does not enter while the agent ordered first has not
  cleared. The order follows right of way (main road over ramp and stop-controlled
  approaches, straight over unprotected left, pedestrians over turning vehicles)
  unless the yielding agent can clear the zone a safe time gap before the other
  arrives (gap acceptance); an agent that cannot stop comfortably is never
  re-ordered behind.
- Lateral: the state is integrated with the invertible kinematic bicycle of
  DESIGN.md exactly, the curvature aiming each step at the path point one step
  ahead, so the inverse bicycle recovers the logged actions and re-integrates the
  log; |a| <= 5.5 m/s², |k| <= 0.28 1/m.

The ego is drawn from the vehicles that stay on the map, weighted by interactions, and
most of the time (`_EGO_TURN_SHARE`) from those about to turn at a junction where any are.

Every generated log is then checked (box overlaps, red-light crossings, lateral
deviation from the lane) and agents that violate are removed and the chunk
re-simulated; a scenario whose ego violates is regenerated from the next sub-seed.

Speed: every stage past building a scenario's network and traffic runs on a whole chunk
of scenarios at once (conflict records, simulation, checks, map compilation), with
every value computed from its own scenario only, so results do not depend on the chunk
size or the number of worker processes.

Splits draw scenario seeds from disjoint ranges (`SPLIT_SEEDS`): `train` [0, 1e9),
`val` [1e9, 1.1e9), `test` [1.1e9, 1.2e9) with the training parameter ranges and
families; `test_ood` [1.2e9, 1.3e9) with held-out parameter ranges (narrower lanes,
sharper curves and approach angles, denser and faster traffic, steeper ramps) and
the held-out roundabout family.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from typing import Sequence

import numpy as np

from jaxloop.sim.datatypes import (DT, RG_FREEWAY_LANE, RG_ROAD_EDGE_BOUNDARY, RG_SURFACE_LANE, TL_ARROW_CAUTION,
                                   TL_ARROW_GO, TL_ARROW_STOP, TL_CAUTION, TL_GO, TL_STOP, TYPE_CYCLIST,
                                   TYPE_PEDESTRIAN, TYPE_VEHICLE, ObjectMetadata, RoadMap, Route, Scenario,
                                   TrafficLights, Trajectory, stack_scenarios)

FAMILY_NAMES = ("straight", "curved", "intersection", "t_junction", "merge", "roundabout")
FAMILY_IDS = {name: i for i, name in enumerate(FAMILY_NAMES)}
TRAIN_FAMILIES = ("straight", "curved", "intersection", "t_junction", "merge")
# How often each training family is drawn: real logs are mostly urban junctions, rarely highway merges.
TRAIN_FAMILY_WEIGHTS = (0.17, 0.15, 0.33, 0.25, 0.1)
OOD_FAMILIES = FAMILY_NAMES

SPLITS = ("train", "val", "test", "test_ood")
# Scenario seed ranges [start, stop) per split: disjoint, so no scenario is shared.
SPLIT_SEEDS = {"train": (0, 1_000_000_000), "val": (1_000_000_000, 1_100_000_000),
               "test": (1_100_000_000, 1_200_000_000), "test_ood": (1_200_000_000, 1_300_000_000)}

_PATH_DS = 0.5  # metres between the points of lanes and agent paths
_SHOULDER = 0.3  # metres of paved road between the outermost lane edge and the road edge
_CONFLICT_VEHICLE = 2.6  # centre-line distance under which two vehicle paths conflict (m)
_CONFLICT_PED = 1.9  # ... a pedestrian path and a vehicle path
_ZONE_BUFFER = 0.5  # metres kept before a conflict zone / behind its exit
_MAX_ACCEL = 5.5  # |a| bound of the driver (m/s²), under the action limit 6
_MAX_CURVATURE = 0.28  # |k| bound of the driver (1/m), under the action limit 0.3
_SPEED_EPS = 0.6  # the inverse bicycle's low-speed threshold (DESIGN.md)
_PARK_WIDTH = (2.6, 3.0)  # m: a kerbside parking strip between the outermost lane and the kerb
_PARK_TAPER = 5.0  # m over which a junction arm's kerb steps out to a parking strip
_PARK_INNER = 0.15  # m a parked box keeps from the lane edge (a moving vehicle keeps >= 0.2 m on its side)
_PARK_OUTER = 0.1  # m a parked box keeps from the strip's outer side (the kerb is _SHOULDER further)
_INF = 1e9
_EGO_TURN_REACH = 25.0  # m from the ego's front to its turn for the ego to count as turning in the log
_EGO_TURN_SHARE = 0.75  # chance the ego is a turning vehicle where there is one
_HEAD_TURN_SHARE = 0.5  # chance the first vehicle queued on a lane with turns takes one


# ----------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass(frozen=True)
class ParamRanges:
    """Ranges the per-scenario parameters are drawn from (uniform in [lo, hi])."""

    lane_width: tuple[float, float] = (3.2, 3.8)  # m
    curve_radius: tuple[float, float] = (45.0, 160.0)  # m, curved roads
    angle_jitter_deg: float = 12.0  # junction approach angles deviate from square by up to this
    density: tuple[float, float] = (0.45, 0.9)  # fraction of the object slots filled
    speed_scale: tuple[float, float] = (0.9, 1.05)  # times the nominal speed limits
    ramp_curvature: tuple[float, float] = (0.002, 0.0035)  # on-ramp approach parabola coefficient (1/m)
    max_lanes: int = 3  # lanes per direction at most
    # Urban streets: slower traffic and kerbside parking (real logs are mostly such streets, where most
    # vehicles around the ego are parked). Drawn per road / junction scenario; merges and roundabouts are
    # never urban.
    urban_share: float = 0.8  # chance a road or junction scenario is an urban street
    urban_speed_scale: tuple[float, float] = (0.5, 0.75)  # times the speed limits on urban streets
    parking_side: float = 0.85  # chance each kerb of an urban street has a parking strip
    parked_occupancy: tuple[float, float] = (0.45, 0.95)  # fraction of a strip's spaces taken
    parked_fraction: tuple[float, float] = (0.35, 0.6)  # share of the traffic budget given to parked vehicles

    def __post_init__(self):
        for name in ("lane_width", "curve_radius", "density", "speed_scale", "ramp_curvature", "urban_speed_scale",
                     "parked_occupancy", "parked_fraction"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"ParamRanges.{name} must satisfy 0 < lo <= hi, got {(lo, hi)}")
        if self.lane_width[0] < 2.8:
            raise ValueError(f"ParamRanges.lane_width must be >= 2.8 m (vehicles are up to 2.1 m wide), "
                             f"got {self.lane_width}")
        for name in ("urban_share", "parking_side"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"ParamRanges.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.parked_occupancy[1] > 1.0 or self.parked_fraction[1] >= 1.0:
            raise ValueError(f"ParamRanges.parked_occupancy must be <= 1 and parked_fraction < 1, got "
                             f"{self.parked_occupancy}, {self.parked_fraction}")
        if not 1 <= self.max_lanes <= 3:
            raise ValueError(f"ParamRanges.max_lanes must be in 1..3, got {self.max_lanes}")


TRAIN_PARAMS = ParamRanges()
# Held out: fewer (slow) urban streets, so faster traffic as well as the shifted ranges.
OOD_PARAMS = ParamRanges(lane_width=(2.9, 3.2), curve_radius=(28.0, 45.0), angle_jitter_deg=22.0,
                         density=(0.85, 1.0), speed_scale=(1.08, 1.2), ramp_curvature=(0.0045, 0.006),
                         urban_share=0.4)


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    """Static sizes of the generated scenarios (hashable, validated).

    num_objects: N object slots; num_steps: T log steps at 10 Hz; init_steps: the
    first steps that initialise an episode (step init_steps-1 is "current");
    route_points: R points of the ego route; max_lights: L traffic-light slots.
    The map sizes are those of `mapcompile.MapConfig` (`map_config()`): lanes are cut
    into pieces of at most `max_lane_length_m`, each resampled to `lane_points` points.
    """

    num_objects: int = 32
    num_steps: int = 91
    init_steps: int = 11
    route_points: int = 64
    max_lights: int = 16
    max_lanes: int = 64
    lane_points: int = 20
    max_lane_length_m: float = 56.0  # 110 m junction arms in two pieces; 20 points about 2.9 m apart
    max_edges: int = 256
    max_crosswalks: int = 8
    max_stop_signs: int = 8
    cull_radius_m: float = 80.0
    edge_segment_m: float = 6.0
    max_pedestrians: int = 6
    max_cyclists: int = 3
    chunk_size: int = 64  # scenarios simulated together (vectorised; the output does not depend on it)

    def __post_init__(self):
        if self.num_objects < 4:
            raise ValueError(f"GeneratorConfig.num_objects must be >= 4, got {self.num_objects}")
        if self.num_steps < 2 or not 1 <= self.init_steps < self.num_steps:
            raise ValueError(f"GeneratorConfig needs num_steps >= 2 and 1 <= init_steps < num_steps, "
                             f"got {self.num_steps}, {self.init_steps}")
        for name in ("route_points", "max_lights", "max_lanes", "lane_points", "max_edges", "max_crosswalks",
                     "max_stop_signs", "chunk_size"):
            if getattr(self, name) < 2:
                raise ValueError(f"GeneratorConfig.{name} must be >= 2, got {getattr(self, name)}")
        if self.max_lane_length_m <= 5 or self.cull_radius_m <= 0:
            raise ValueError(f"GeneratorConfig.max_lane_length_m must be > 5 and cull_radius_m > 0, got "
                             f"{self.max_lane_length_m}, {self.cull_radius_m}")
        if self.max_pedestrians < 0 or self.max_cyclists < 0:
            raise ValueError("GeneratorConfig.max_pedestrians / max_cyclists must be >= 0")

    def map_config(self):
        from jaxloop.data.mapcompile import MapConfig
        return MapConfig(max_lanes=self.max_lanes, lane_points=self.lane_points,
                         max_lane_length_m=self.max_lane_length_m, max_edges=self.max_edges,
                         max_crosswalks=self.max_crosswalks, max_stop_signs=self.max_stop_signs,
                         cull_radius_m=self.cull_radius_m, edge_segment_m=self.edge_segment_m,
                         orient_edges="keep", focus_spacing_m=4.0)


# ----------------------------------------------------------------------------------------------
# Polyline geometry (numpy, float64)


def _wrap(a):
    return (a + np.pi) % (2 * np.pi) - np.pi


def _arc(xy: np.ndarray) -> np.ndarray:
    """Cumulative arc length `[K]` of a polyline `[K, 2]`."""
    d = xy[1:] - xy[:-1]
    out = np.empty(len(xy))
    out[0] = 0.0
    np.cumsum(np.hypot(d[:, 0], d[:, 1]), out=out[1:])
    return out


def _resample(xy: np.ndarray, spacing: float = _PATH_DS) -> np.ndarray:
    """Evenly spaced points (endpoints kept) at about `spacing` metres."""
    xy = np.asarray(xy, np.float64)
    if len(xy) == 2:  # a straight segment: no interpolation table needed
        return _straight_many(xy[:1], xy[1:], spacing)[0]
    s = _arc(xy)
    n = max(int(np.ceil(s[-1] / spacing)), 1) + 1
    t = np.arange(n) * (s[-1] / (n - 1))
    t[-1] = s[-1]
    out = np.empty((n, 2))
    out[:, 0] = np.interp(t, s, xy[:, 0])
    out[:, 1] = np.interp(t, s, xy[:, 1])
    return out


def _resample_many(polys: list[np.ndarray], spacing: float = _PATH_DS) -> list[np.ndarray]:
    """`_resample` of many polylines at once (one interpolation on a shared increasing arc key)."""
    pts, n = _resample_flat(np.concatenate(polys), np.array([len(p) for p in polys]), spacing)
    return np.split(pts, np.cumsum(n)[:-1])


def _resample_flat(xy: np.ndarray, lens: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """`_resample_many` of the polylines of `lens [M]` points stored one after another in `xy [sum lens, 2]`;
    returns the resampled polylines stored the same way (points, counts `[M]`)."""
    d = xy[1:] - xy[:-1]
    step = np.hypot(d[:, 0], d[:, 1])
    first = np.cumsum(lens) - lens
    step[first[1:] - 1] = 1.0  # 1 m between polylines on the key
    key = np.concatenate([[0.0], np.cumsum(step)])
    length = key[first + lens - 1] - key[first]
    n = np.maximum(np.ceil(length / spacing).astype(np.int64), 1) + 1
    owner = np.repeat(np.arange(len(lens)), n)
    j = np.arange(len(owner)) - np.repeat(np.cumsum(n) - n, n)
    t = key[first][owner] + np.minimum(j / (n - 1)[owner], 1.0) * length[owner]
    pts = np.empty((len(t), 2))
    pts[:, 0] = np.interp(t, key, xy[:, 0])
    pts[:, 1] = np.interp(t, key, xy[:, 1])
    return pts, n


def _straight_many(a: np.ndarray, b: np.ndarray, spacing: float = _PATH_DS) -> list[np.ndarray]:
    """`_resample` of many straight segments at once: from `a [M, 2]` to `b [M, 2]`, M polylines."""
    d = b - a
    n = np.maximum(np.ceil(np.hypot(d[:, 0], d[:, 1]) / spacing).astype(np.int64), 1) + 1
    owner = np.repeat(np.arange(len(n)), n)
    f = (np.arange(len(owner)) - np.repeat(np.cumsum(n) - n, n)) / (n - 1)[owner]
    pts = np.empty((len(owner), 2))
    for c in (0, 1):  # per coordinate: [M, 2] -> [sum n, 2] broadcasts are slow in numpy
        pts[:, c] = np.repeat(a[:, c], n) + f * np.repeat(d[:, c], n)
    return np.split(pts, np.cumsum(n)[:-1])


def _tangent(xy: np.ndarray) -> np.ndarray:
    """Unit tangents `[K, 2]` (central differences inside, one-sided at the ends)."""
    d = np.empty_like(xy)
    d[1:-1] = xy[2:] - xy[:-2]
    d[0] = xy[1] - xy[0]
    d[-1] = xy[-1] - xy[-2]
    norm = np.maximum(np.hypot(d[:, 0], d[:, 1]), 1e-9)
    d[:, 0] /= norm
    d[:, 1] /= norm
    return d


def _wrap_near(a: np.ndarray) -> np.ndarray:
    """`_wrap` of angles within one turn of [-pi, pi) (cheaper than the modulo)."""
    return np.where(a >= np.pi, a - 2 * np.pi, np.where(a < -np.pi, a + 2 * np.pi, a))


def _left(d: np.ndarray) -> np.ndarray:
    out = np.empty_like(d)
    np.negative(d[..., 1], out=out[..., 0])
    out[..., 1] = d[..., 0]
    return out


def _offset(xy: np.ndarray, dist) -> np.ndarray:
    """The polyline shifted `dist` metres (a number or one per point) to its left (negative: right)."""
    t = _tangent(xy)
    out = np.empty(xy.shape)
    out[:, 0] = xy[:, 0] + dist * -t[:, 1]
    out[:, 1] = xy[:, 1] + dist * t[:, 0]
    return out


def _unit(angle) -> np.ndarray:
    return np.array([np.cos(angle), np.sin(angle)])


# Derivative weights of a cubic at 33 parameters in [0, 1]: d1 = _W1 . (p1 - p0, p2 - p1, p3 - p2),
# d2 = _W2 . (p2 - 2 p1 + p0, p3 - 2 p2 + p1).
_BT = np.linspace(0.0, 1.0, 33)
_W1 = (3 * (1 - _BT) ** 2, 6 * (1 - _BT) * _BT, 3 * _BT ** 2)
_W2 = (6 * (1 - _BT), 6 * _BT)


def _bezier_handles(p0, d0, p3, d3):
    """Chord lengths `[M]` and inner control points `[M, 2]` of the cubics of `_bezier_many`."""
    chord = np.hypot(p3[:, 0] - p0[:, 0], p3[:, 1] - p0[:, 1])
    phi = np.abs(_wrap(np.arctan2(d3[:, 1], d3[:, 0]) - np.arctan2(d0[:, 1], d0[:, 0])))
    ratio = np.where(phi < 1e-3, 1.0 / 3.0, (4.0 / 3.0) * np.tan(phi / 4) / (2 * np.sin(np.maximum(phi, 1e-3) / 2)))
    h = ratio * chord
    p1, p2 = np.empty_like(p0), np.empty_like(p3)
    for c in (0, 1):  # per coordinate (numpy broadcasts over a last axis of 2 are slow)
        p1[:, c] = p0[:, c] + d0[:, c] * h
        p2[:, c] = p3[:, c] - d3[:, c] * h
    return chord, p1, p2


def _bezier_kmax_many(p0, d0, p3, d3) -> np.ndarray:
    """The largest curvature `[M]` (sampled at 33 parameters) of the cubics of `_bezier_many`."""
    _, p1, p2 = _bezier_handles(p0, d0, p3, d3)
    d1, d2 = [], []
    for c in (0, 1):  # [M, 33] per coordinate
        q0, q1, q2, q3 = p0[:, c, None], p1[:, c, None], p2[:, c, None], p3[:, c, None]
        d1.append(_W1[0] * (q1 - q0) + _W1[1] * (q2 - q1) + _W1[2] * (q3 - q2))
        d2.append(_W2[0] * (q2 - 2 * q1 + q0) + _W2[1] * (q3 - 2 * q2 + q1))
    cr = np.abs(d1[0] * d2[1] - d1[1] * d2[0])
    return np.max(cr / np.maximum(np.hypot(d1[0], d1[1]) ** 3, 1e-9), axis=1)


def _bezier_many(p0, d0, p3, d3, spacing: float = _PATH_DS) -> list[np.ndarray]:
    """Cubics from `p0` heading `d0` to `p3` heading `d3` (handles sized to approximate circular arcs),
    resampled every `spacing` metres; many at once: endpoints and unit headings `[M, 2]` -> M polylines."""
    pts, n = _bezier_flat(p0, d0, p3, d3, spacing)
    return np.split(pts, np.cumsum(n)[:-1])


def _bezier_flat(p0, d0, p3, d3, spacing: float = _PATH_DS) -> tuple[np.ndarray, np.ndarray]:
    """`_bezier_many` with the polylines stored one after another: (points `[sum n, 2]`, counts `n [M]`)."""
    chord, p1, p2 = _bezier_handles(p0, d0, p3, d3)
    n = np.maximum((chord / spacing).astype(np.int64) * 3, 16)
    owner = np.repeat(np.arange(len(n)), n)
    t = (np.arange(len(owner)) - np.repeat(np.cumsum(n) - n, n)) / (n - 1)[owner]
    pts = np.empty((len(t), 2))
    for c in (0, 1):  # power basis, per coordinate
        q0, q1, q2, q3 = p0[:, c], p1[:, c], p2[:, c], p3[:, c]
        c1, c2, c3 = 3 * (q1 - q0), 3 * (q2 - 2 * q1 + q0), q3 - 3 * q2 + 3 * q1 - q0
        pts[:, c] = np.repeat(q0, n) + t * (np.repeat(c1, n) + t * (np.repeat(c2, n) + t * np.repeat(c3, n)))
    return _resample_flat(pts, n, spacing)


def _integrate_heading(heading0: float, start: np.ndarray, curvature: np.ndarray, ds: float) -> np.ndarray:
    """Polyline from a curvature profile `[K]` sampled every `ds` metres."""
    h = heading0 + np.concatenate([[0.0], np.cumsum(curvature[:-1] * ds)])
    steps = np.stack([np.cos(h), np.sin(h)], -1) * ds
    return start + np.concatenate([[np.zeros(2)], np.cumsum(steps[:-1], axis=0)])


# ----------------------------------------------------------------------------------------------
# Road network (internal): lanes at 0.5 m, edges, crosswalks, signs, lights, routes


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
    dist = _min_dist_to(np.concatenate([mid + right, mid - right]), lane_pts).reshape(2, -1)
    net.edges = [e if dr <= dl else e[::-1].copy() for e, dr, dl in zip(net.edges, dist[0], dist[1])]


def _phase_states(cycle: list[tuple[str, float]], offset: float, num_steps: int) -> np.ndarray:
    """Phase name `[T]` at each step of a repeating cycle [(name, seconds)], starting `offset` s into it."""
    names = np.array([p for p, _ in cycle])
    ends = np.cumsum([d for _, d in cycle])
    t = (offset + np.arange(num_steps) * DT) % ends[-1]
    return names[np.minimum(np.searchsorted(ends, t, side="right"), len(names) - 1)]


# ---------------------------------------------------------------- straight and curved roads


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


def _add_peds_across(net: _Net, centre, along, nrm, half, cw, walk) -> None:
    """Two kerb-to-kerb crossing paths (one each way) over a crosswalk centred at `centre`."""
    for sgn in (1.0, -1.0):
        a = centre + sgn * nrm * (half + 6.0) + along * sgn * cw * 0.2
        b = centre - sgn * nrm * (half + 6.0) + along * sgn * cw * 0.2
        xy = _resample(np.stack([a, b]))
        net.peds.append(_PedPath(xy, stop_s=6.0 - 1.0, walk=walk))


# ---------------------------------------------------------------- junctions


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


# ---------------------------------------------------------------- highway on-ramp merge


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


# ---------------------------------------------------------------- roundabout (held-out family)


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


def _build_net(family: str, rng: np.random.Generator, pr: ParamRanges, num_steps: int) -> _Net:
    if family == "straight":
        return _build_road(rng, pr, False, num_steps)
    if family == "curved":
        return _build_road(rng, pr, True, num_steps)
    if family == "intersection":
        return _build_junction(rng, pr, 4, num_steps)
    if family == "t_junction":
        return _build_junction(rng, pr, 3, num_steps)
    if family == "merge":
        return _build_merge(rng, pr)
    if family == "roundabout":
        return _build_roundabout(rng, pr)
    raise ValueError(f"unknown procedural family {family!r}; expected one of {FAMILY_NAMES}")


# ----------------------------------------------------------------------------------------------
# Traffic: agents on routes


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
    dist[sel] = _min_dist_to(xy_all[i[sel]], focus)
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


# ----------------------------------------------------------------------------------------------
# Conflict zones between agent paths


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


# ----------------------------------------------------------------------------------------------
# Joint simulation of many scenarios (flat over agents, vectorised)


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


# ----------------------------------------------------------------------------------------------
# Checks of a simulated log (per scenario)


def _box_overlap(xa, ya, ha, la, wa, xb, yb, hb, lb, wb) -> np.ndarray:
    """Separating-axis overlap test of oriented boxes (broadcast arrays)."""
    dx, dy = xb - xa, yb - ya
    sep = np.full(np.broadcast(xa, xb).shape, -np.inf)
    for ang in (ha, ha + np.pi / 2, hb, hb + np.pi / 2):
        cx, cy = np.cos(ang), np.sin(ang)
        ra = 0.5 * la * np.abs(np.cos(ang - ha)) + 0.5 * wa * np.abs(np.sin(ang - ha))
        rb = 0.5 * lb * np.abs(np.cos(ang - hb)) + 0.5 * wb * np.abs(np.sin(ang - hb))
        sep = np.maximum(sep, np.abs(dx * cx + dy * cy) - ra - rb)
    return sep < 0.05  # a 5 cm safety margin on top of the exact test


def _violations(b: _Batch, out: dict) -> np.ndarray:
    """Agents `[G]` whose log overlaps another agent's, runs a red light or leaves its lane (all scenarios at once)."""
    x, y, yaw, valid = out["x"], out["y"], out["yaw"], out["valid"]
    L, W = b.length, b.width
    G = len(L)
    bad = np.zeros(G, bool)
    # Agent pairs of the same scenario (not two pedestrians).
    sizes = np.diff(np.append(b.base, G))
    ii, jj = [], []
    for base, n in zip(b.base, sizes):
        i, j = np.triu_indices(n, 1)
        ii.append(i + base)
        jj.append(j + base)
    ii, jj = np.concatenate(ii), np.concatenate(jj)
    ped = b.kind == TYPE_PEDESTRIAN
    keep = ~(ped[ii] & ped[jj])
    ii, jj = ii[keep], jj[keep]
    diag = np.hypot(L, W)
    reach2 = ((0.5 * (diag[ii] + diag[jj]) + 0.1) ** 2).astype(np.float32)
    # Candidates (centres closer than the half diagonals): a float32 prefilter, the margin dwarfs its rounding.
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    dx, dy = x32[ii] - x32[jj], y32[ii] - y32[jj]
    near = (dx * dx + dy * dy < reach2[:, None]) & valid[ii] & valid[jj]
    pi, ti = np.nonzero(near)
    if pi.size:
        a, c = ii[pi], jj[pi]
        ov = _box_overlap(x[a, ti], y[a, ti], yaw[a, ti], L[a], W[a], x[c, ti], y[c, ti], yaw[c, ti], L[c], W[c])
        bad[a[ov]] = True
        bad[c[ov]] = True
    # Red lights: the front crosses the stop point while the governing light is red.
    front = out["s"] + L[:, None] / 2
    stop = b.stop_s[:, None]
    crossed = (front[:, :-1] < stop) & (front[:, 1:] >= stop) & valid[:, 1:]
    red = b.sig_red[b.sig] & b.has_light[:, None]
    veh = ~ped
    bad |= veh & np.any(crossed & (red[:, 1:] | red[:, :-1]), axis=1)
    bad |= veh & (out["lat_err"] > 0.35)
    return bad


# ----------------------------------------------------------------------------------------------
# One scenario: build, choose the ego, assemble


def _scenario_rng(split: str, scenario_seed: int, attempt: int) -> np.random.Generator:
    return np.random.default_rng([SPLITS.index(split), scenario_seed, attempt])


def _build_item(split: str, scenario_seed: int, attempt: int, cfg: GeneratorConfig) -> dict:
    rng = _scenario_rng(split, scenario_seed, attempt)
    ood = split == "test_ood"
    if ood:
        family = OOD_FAMILIES[int(rng.integers(len(OOD_FAMILIES)))]
    else:
        cum = np.cumsum(TRAIN_FAMILY_WEIGHTS)
        family = TRAIN_FAMILIES[min(int(np.searchsorted(cum, rng.random() * cum[-1], "right")), len(cum) - 1)]
    pr = OOD_PARAMS if ood else TRAIN_PARAMS
    net = _build_net(family, rng, pr, cfg.num_steps)

    def red_at0(sig):
        if sig < 0:
            return False
        st = net.lights[sig].states[: cfg.init_steps + 20].tolist()
        return not {TL_STOP, TL_ARROW_STOP, TL_CAUTION, TL_ARROW_CAUTION}.isdisjoint(st)

    agents = _spawn(net, rng, pr, cfg, red_at0)[: cfg.num_objects]
    return dict(split=split, seed=scenario_seed, attempt=attempt, family=family, net=net, agents=agents,
                alive=np.ones(len(agents), bool), rng=rng, params=pr)


def _choose_egos(items: list[dict], cfg: GeneratorConfig) -> None:
    """Conflict records of the items (all at once), then each item's ego: a vehicle that stays on the
    map for the whole log, preferring interactions."""
    horizon = (cfg.num_steps - 1) * DT
    for item, records in zip(items, _records(items)):
        agents, rng = item["agents"], item["rng"]
        score = np.zeros(len(agents))
        w_rec = np.where(records[:, 6] > 0, 1.0, 2.0)
        score += np.bincount(records[:, 0].astype(np.int64), w_rec, len(agents))
        score += np.bincount(records[:, 1].astype(np.int64), w_rec, len(agents))
        cands = []
        for k, ag in enumerate(agents):
            if ag.kind != TYPE_VEHICLE or ag.tag == "parked":
                continue
            room = (len(ag.path) - 1) * _PATH_DS - ag.s0 - ag.length / 2
            if room < ag.vdes * horizon + 10.0:
                continue
            bonus = {"left": 4.0, "merge": 4.0, "roundabout": 3.0, "right": 2.0}.get(ag.tag, 0.0)
            bonus += 3.0 if ag.stop_sign else (1.5 if ag.stop_sig >= 0 else 0.0)
            if ag.stop_s < _INF and ag.stop_s - ag.s0 < 45.0:
                bonus += 3.0
            # A turn whose connector starts within _EGO_TURN_REACH of the front, with no red light or
            # stop sign before it for the first 4 s, is (mostly) inside the log.
            turn = (ag.tag in ("left", "right") and ag.lane_off[1] - ag.s0 - ag.length / 2 < _EGO_TURN_REACH
                    and not ag.stop_sign and (ag.stop_sig < 0 or bool(np.isin(
                        item["net"].lights[ag.stop_sig].states[:40], (TL_GO, TL_ARROW_GO)).all())))
            cands.append((k, 1.0 + score[k] + bonus, turn))
        # Real egos turn far more often than a draw by interaction alone gives: most of the time, a turning one.
        turning = [c for c in cands if c[2]]
        if turning and rng.random() < _EGO_TURN_SHARE:
            cands = turning
        if cands:
            w = np.array([c[1] for c in cands]) ** 2
            ego = cands[int(rng.choice(len(cands), p=w / w.sum()))][0]
        else:
            veh = [k for k, a in enumerate(agents) if a.kind == TYPE_VEHICLE]
            ego = veh[0] if veh else 0
        item["records"], item["ego"] = records, ego
        _add_parked(item, item["params"], cfg)  # after the records: parked vehicles take part in none


def _min_dist_to(points: np.ndarray, focus: np.ndarray) -> np.ndarray:
    """Distance `[M]` of each point `[M, 2]` to the nearest focus point `[F, 2]` (exact per pair, no BLAS)."""
    if len(points) == 0:
        return np.zeros(0)
    dx = points[:, 0, None] - focus[None, :, 0]
    dy = points[:, 1, None] - focus[None, :, 1]
    dx *= dx
    dy *= dy
    dx += dy
    return np.sqrt(np.min(dx, axis=1))


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

    Lanes are cut into equal pieces no longer than `cfg.max_lane_length_m` (ids from 1, in
    lane order) and resampled to `cfg.lane_points` points by arc length (lane points are
    evenly spaced, so by index); road edges are cut into segments of about
    `cfg.edge_segment_m` (corners kept); crosswalks and stop signs are taken as built.
    Every feature is culled to `cfg.cull_radius_m` of its scenario's focus points `[F, 2]`,
    nearest first, up to the capacities of `cfg`.

    Returns per network: (RoadMap, whether features within the radius were dropped for
    capacity, ids `[num lanes]` of the last piece of each lane).
    """
    S = len(nets)
    radius = cfg.cull_radius_m
    # Lane pieces of every network, resampled by index.
    lanes = [ln for net in nets for ln in net.lanes]
    lane_scen = np.repeat(np.arange(S), [len(net.lanes) for net in nets])
    lens = np.array([ln.length for ln in lanes])
    npts = np.array([len(ln.xy) for ln in lanes])
    num = np.maximum(1, np.ceil(lens / cfg.max_lane_length_m - 1e-9)).astype(np.int64)
    cum = np.cumsum(num)
    first_lane = np.cumsum([len(net.lanes) for net in nets]) - [len(net.lanes) for net in nets]
    scen_first = (cum - num)[first_lane]  # first piece of each network
    last_id = cum - scen_first[lane_scen]  # local ids 1..: a lane's pieces end at last_id
    lane_of = np.repeat(np.arange(len(lanes)), num)
    piece = np.arange(len(lane_of)) - (cum - num)[lane_of]
    xy_all = np.concatenate([ln.xy for ln in lanes])
    start = np.cumsum(npts) - npts
    q = cfg.lane_points
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
    segs = [_edge_segments(net.edges, cfg.edge_segment_m, 25.0) for net in nets]  # per network: batch-independent
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
    P, E, C, SS = cfg.max_lanes, cfg.max_edges, cfg.max_crosswalks, cfg.max_stop_signs
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


def _focus(item: dict, b: _Batch, out: dict, lo: int, cfg: GeneratorConfig) -> tuple[np.ndarray, np.ndarray]:
    """The ego route `[R, 2]` (from 5 m behind its start to 60 m past its end) and the map's focus points `[F, 2]`:
    the ego's log and route and every agent's log every 3 s, one point per 8 m cell (as good for
    culling at 80 m, and it keeps the distance computations small)."""
    g = lo + item["ego"]
    hi = lo + len(item["agents"])
    ego_path = b.px[b.p_start[g]: b.p_start[g] + b.p_n[g]], b.py[b.p_start[g]: b.p_start[g] + b.p_n[g]]
    s_ego = out["s"][g]
    r0, r1 = max(s_ego[0] - 5.0, 0.0), min(s_ego[-1] + 60.0, b.p_len[g])
    rs = np.linspace(r0, r1, cfg.route_points)
    grid = np.arange(b.p_n[g]) * _PATH_DS
    route_xy = np.stack([np.interp(rs, grid, ego_path[0]), np.interp(rs, grid, ego_path[1])], -1)
    sub_valid = out["valid"][lo:hi, ::30]
    others = np.stack([out["x"][lo:hi, ::30][sub_valid], out["y"][lo:hi, ::30][sub_valid]], -1)
    focus = np.concatenate([np.stack([out["x"][g, ::5], out["y"][g, ::5]], -1), route_xy[::2], others])
    cell = np.floor(focus / 8.0).astype(np.int64)
    _, first = np.unique(cell[:, 0] * 1_000_003 + cell[:, 1], return_index=True)
    return route_xy, focus[np.sort(first)]


def _log_fields(out: dict) -> np.ndarray:
    """The logged x, y, vel_x, vel_y, yaw `[5, G, T]` of every simulated agent (float32, zero where not valid)."""
    yaw, speed = out["yaw"], out["v"]
    fields = np.stack([out["x"], out["y"], speed * np.cos(yaw), speed * np.sin(yaw), yaw])
    return np.where(out["valid"], fields, 0.0).astype(np.float32)


def _assemble(item: dict, b: _Batch, out: dict, logs: np.ndarray, lo: int, cfg: GeneratorConfig,
              route_xy: np.ndarray, focus: np.ndarray, compiled: tuple) -> tuple[Scenario, dict]:
    """One finished scenario from its simulated log (`logs`: `_log_fields` of the chunk) and compiled map."""
    rng = item["rng"]
    agents = item["agents"]
    n_ag = len(agents)
    N, T = cfg.num_objects, cfg.num_steps
    alive = item["alive"]
    keep = np.flatnonzero(alive)
    ego = item["ego"]
    # Random slots for the kept agents among the first len(keep) object slots.
    slots = rng.permutation(len(keep))
    slot_of = {int(a): int(sl) for a, sl in zip(keep, slots)}
    shape = (N, T)
    g = lo + keep
    valid = np.zeros(shape, bool)
    valid[slots] = v_rows = out["valid"][g]
    types = np.zeros(N, np.int32)
    types[slots] = b.kind[g]
    # Fields (x, y, vel_x, vel_y, yaw, length, width, height, z), zero where not valid.
    fields = np.zeros((9, N, T), np.float32)
    fields[0:5, slots] = logs[:, g]
    dims = np.stack([b.length[g], b.width[g], np.array([agents[a].height for a in keep], np.float64)])
    fields[5:8, slots] = np.where(v_rows, dims[:, :, None], 0.0)
    fields[8] = fields[7] / 2
    traj = Trajectory(x=fields[0], y=fields[1], vel_x=fields[2], vel_y=fields[3], yaw=fields[4], length=fields[5],
                      width=fields[6], height=fields[7], z=fields[8], valid=valid,
                      timestamp_micros=np.broadcast_to(np.arange(T, dtype=np.int32) * 100_000, shape).copy())
    ego_slot = slot_of[ego]
    is_sdc = np.arange(N) == ego_slot
    rec = item["records"][:, :2].astype(np.int64)
    other = np.concatenate([rec[rec[:, 0] == ego, 1], rec[rec[:, 1] == ego, 0]])
    interacting = {slot_of[int(o)] for o in other if alive[o]}
    interest = np.zeros(N, bool)
    interest[sorted(interacting)] = True
    modeled = is_sdc.copy()
    veh_slots = [sl for sl in sorted(interacting) if types[sl] == TYPE_VEHICLE][:7]
    modeled[veh_slots] = True
    ids = np.full(N, -1, np.int32)
    ids[: len(keep)] = np.arange(len(keep))
    meta = ObjectMetadata(ids=ids, object_types=types, is_sdc=is_sdc, is_modeled=modeled, is_valid=valid.any(-1),
                          objects_of_interest=interest)
    net = item["net"]
    roadmap, dropped, last_id = compiled
    # Lights: the governed lane is the last piece of the approach lane, the stop point its end.
    L = cfg.max_lights
    tl = dict(state=np.zeros((L, T), np.int32), x=np.zeros((L, T), np.float32), y=np.zeros((L, T), np.float32),
              lane_ids=np.full((L, T), -1, np.int32), valid=np.zeros((L, T), bool))
    kept_ids = set(roadmap.lane_ids[roadmap.lane_ids >= 0].tolist())
    lights = [lt for lt in net.lights if last_id[lt.lane] in kept_ids]
    if len(lights) > L:
        end = np.array([net.lanes[lt.lane].xy[-1] for lt in lights])
        d = np.min(np.linalg.norm(end[:, None] - focus[None], axis=-1), axis=1)
        lights = [lights[i] for i in np.argsort(d, kind="stable")[:L]]
    for k, lt in enumerate(lights):
        stop = net.lanes[lt.lane].xy[-1]
        tl["state"][k] = lt.states
        tl["x"][k], tl["y"][k] = stop[0], stop[1]
        tl["lane_ids"][k] = last_id[lt.lane]
        tl["valid"][k] = True
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(route_xy, axis=0), axis=1))])
    route = Route(xy=route_xy.astype(np.float32), arc_length=arc.astype(np.float32),
                  valid=np.ones(cfg.route_points, bool))
    scenario = Scenario(log_trajectory=traj, object_metadata=meta, roadmap=roadmap, traffic_lights=TrafficLights(**tl),
                        route=route)
    kinds = [agents[a].kind for a in keep]
    info = dict(scenario_id=f"procedural-{item['split']}-{item['seed']}", format="procedural",
                family=item["family"], split=item["split"], seed=int(item["seed"]), attempt=int(item["attempt"]),
                ego_route=agents[ego].tag, num_vehicles=kinds.count(TYPE_VEHICLE),
                num_pedestrians=kinds.count(TYPE_PEDESTRIAN), num_cyclists=kinds.count(TYPE_CYCLIST),
                num_parked=sum(agents[a].tag == "parked" for a in keep),
                num_removed=int(n_ag - len(keep)), map_dropped=dropped)
    return scenario, info


# ----------------------------------------------------------------------------------------------
# Public API


def scenario_seeds(split: str, num: int, seed: int = 0) -> np.ndarray:
    """The scenario seeds `[num]` of `generate(split, num, seed)`: `start + seed + i` in the split's range."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if num < 0 or seed < 0:
        raise ValueError(f"num and seed must be >= 0, got num={num}, seed={seed}")
    start, stop = SPLIT_SEEDS[split]
    if start + seed + num > stop:
        raise ValueError(f"split {split!r} has scenario seeds [{start}, {stop}): seed {seed} + num {num} "
                         f"runs past its end")
    return start + seed + np.arange(num, dtype=np.int64)


def _generate_chunk(split: str, seeds: Sequence[int], cfg: GeneratorConfig) -> tuple[list[Scenario], list[dict]]:
    items = {k: _build_item(split, int(sd), 0, cfg) for k, sd in enumerate(seeds)}
    _choose_egos(list(items.values()), cfg)
    done: dict[int, tuple[Scenario, dict]] = {}
    pending = list(items)
    for _ in range(12):
        if not pending:
            break
        batch_items = [items[k] for k in pending]
        b = _Batch(batch_items, cfg.num_steps)
        out = _simulate(b)
        bad_all = _violations(b, out)
        nxt, fin = [], []
        for pos, k in enumerate(pending):
            it = items[k]
            lo = int(b.base[pos])
            bad = bad_all[lo:lo + len(it["agents"])] & it["alive"]
            ego = it["ego"]
            if bad[ego] or not out["valid"][lo + ego].all():
                items[k] = _build_item(split, it["seed"], it["attempt"] + 1, cfg)
                _choose_egos([items[k]], cfg)
                nxt.append(k)
            elif bad.any():
                it["alive"] = it["alive"] & ~bad
                nxt.append(k)
            else:
                fin.append((k, lo))
        if fin:  # the maps of every scenario finished this round, compiled together
            focus = [_focus(items[k], b, out, lo, cfg) for k, lo in fin]
            maps = _compile_maps([items[k]["net"] for k, _ in fin], [f for _, f in focus], cfg)
            logs = _log_fields(out)
            for (k, lo), (route_xy, fxy), compiled in zip(fin, focus, maps):
                done[k] = _assemble(items[k], b, out, logs, lo, cfg, route_xy, fxy, compiled)
        pending = nxt
    if pending:
        raise RuntimeError(f"procedural: scenarios {[items[k]['seed'] for k in pending]} of split {split!r} "
                           "failed their checks after 12 rounds")
    return [done[k][0] for k in range(len(seeds))], [done[k][1] for k in range(len(seeds))]


def _worker(args):
    """Generates one chunk in a pool worker and stacks it straight into a new shared-memory block.

    Returns the block's name, the layout of the stacked leaves in it ((shape, dtype, byte
    offset) in tree order), the tree structure and the infos: only these small values are
    pickled back; the parent copies the arrays out and unlinks the block.
    """
    import jax
    from multiprocessing import shared_memory
    split, seeds, cfg = args
    scenarios, infos = _generate_chunk(split, seeds, cfg)
    per = [jax.tree.flatten(s) for s in scenarios]
    treedef = per[0][1]
    layout, size = [], 0
    for leaf in per[0][0]:
        leaf = np.asarray(leaf)
        layout.append(((len(scenarios),) + leaf.shape, leaf.dtype.str, size))
        size += -(-len(scenarios) * leaf.nbytes // 64) * 64  # 64-byte aligned
    shm = shared_memory.SharedMemory(create=True, size=max(size, 1))
    try:
        for i, (shape, dtype, offset) in enumerate(layout):
            np.stack([np.asarray(leaves[i]) for leaves, _ in per], out=np.ndarray(shape, dtype, shm.buf, offset))
    finally:
        shm.close()
    return shm.name, layout, treedef, infos


def _pool(processes: int):
    """A process pool for `_worker`.

    Forked from this process while its JAX runtime is not started (no runtime threads to
    copy, and the modules are already imported, so workers start in milliseconds);
    otherwise from a fork server that imports this module once.
    """
    import multiprocessing as mp
    try:
        from jax._src import xla_bridge
        started = xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):
        started = True
    if not started and "fork" in mp.get_all_start_methods():
        return mp.get_context("fork").Pool(processes)
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx.Pool(processes)


def generate(split: str = "train", num: int = 32, seed: int = 0, config: GeneratorConfig = GeneratorConfig(),
             workers: int = 1) -> tuple[Scenario, list[dict]]:
    """Generates `num` scenarios of `split` from scenario seeds `scenario_seeds(split, num, seed)`.

    Deterministic: the same (split, num, seed, config) gives byte-identical scenarios, for
    any `workers` (a process pool over chunks of `config.chunk_size` seeds).

    Returns a batched `Scenario` (numpy leaves, leading axis `num`) and one info dict per
    scenario: scenario_id, format="procedural", family, split, seed, and generation stats.
    """
    seeds = scenario_seeds(split, num, seed)
    if num == 0:
        raise ValueError("generate: num must be >= 1")
    chunks = [seeds[i:i + config.chunk_size] for i in range(0, num, config.chunk_size)]
    jobs = [(split, [int(x) for x in c], config) for c in chunks]
    if workers > 1 and len(jobs) > 1:
        import jax
        from multiprocessing import resource_tracker, shared_memory
        resource_tracker.ensure_running()  # shared with the workers, so blocks they create and we unlink stay tracked
        out: list[np.ndarray] = []
        infos, pos = [], 0
        with _pool(min(workers, len(jobs))) as pool:
            for name, layout, treedef, chunk_infos in pool.imap(_worker, jobs, chunksize=1):
                shm = shared_memory.SharedMemory(name=name)
                try:
                    if not out:
                        out = [np.empty((num,) + shape[1:], dtype) for shape, dtype, _ in layout]
                    for dst, (shape, dtype, offset) in zip(out, layout):
                        dst[pos:pos + shape[0]] = np.ndarray(shape, dtype, shm.buf, offset)
                finally:
                    shm.close()
                    shm.unlink()
                pos += len(chunk_infos)
                infos += chunk_infos
        batched = jax.tree.unflatten(treedef, out)
    else:  # one copy: stack every scenario once
        results = [_generate_chunk(*j) for j in jobs]
        batched = stack_scenarios([s for r in results for s in r[0]])
        infos = [i for r in results for i in r[1]]
    return batched, infos


def generate_cli(split: str = "train", num: int = 2000, seed: int = 0, out: str = "data/procedural_train",
                 workers: int = 0, shard_size: int = 256) -> int:
    """Generates procedural scenarios and writes them as a packed cache (see `jaxloop.data.pipeline`).

    Args:
      split: train | val | test | test_ood.
      num: number of scenarios.
      seed: offset into the split's seed range (scenario seeds start + seed + i).
      out: the cache directory.
      workers: processes generating in parallel (0: one per CPU).
      shard_size: scenarios per shard file.
    """
    from jaxloop.data.pipeline import write_cache
    t0 = time.perf_counter()
    import os
    scenarios, infos = generate(split, num, seed, workers=workers or os.cpu_count() or 1)
    t_gen = time.perf_counter() - t0
    write_cache(scenarios, out, infos, shard_size=shard_size)
    t_all = time.perf_counter() - t0
    counts: dict[str, int] = {}
    for info in infos:
        counts[info["family"]] = counts.get(info["family"], 0) + 1
    print(f"wrote {num} {split} scenarios to {out} in {t_all:.1f} s "
          f"(generation {t_gen:.1f} s, {num / max(t_gen, 1e-9):.0f} scenarios/s)")
    for name in FAMILY_NAMES:
        if name in counts:
            print(f"  {name:<13} {counts[name]}")
    return 0
