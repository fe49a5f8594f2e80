"""Shared last step of every real-data loader: raw arrays -> a validated `Scenario` + info dict.

Loaders (WOMD tf.Example, WOMD Scenario proto, Argoverse 2) decode their format into
`RawLog` (per-object arrays over time, raw roadgraph points, per-step traffic-light lane
states) and call `build_scenario`, which checks the data (finite values and physical
ranges at valid steps, one SDC valid at the current step, object count), fits objects
into N slots, compiles the map around the SDC's logged path, derives the route and packs
the traffic lights.

Physical ranges (checked at valid steps only: invalid steps may carry placeholders such
as -10000 or -1, which are zeroed in the output):

- |x|, |y| <= 1e6 m: dataset coordinates are local frames within a few tens of km
  (the real WOMD / AV2 / GPUDrive fixtures stay under 4e4 m);
- |z| <= 1e4 m (higher than any road);
- speed hypot(vel_x, vel_y) <= 150 m/s (above any road user; tracker velocity spikes of
  real logs, up to ~45 m/s in the fixtures, still pass);
- 0 < length, width, height <= 30 m (the longest articulated trucks are ~25 m).

A value outside them is a `DataError` naming the source field, the object and the step.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Callable

import numpy as np

from jaxloop.data.errors import DataError
from jaxloop.data.mapcompile import MapConfig, RawRoadgraph, compile_roadmap
from jaxloop.data.route import route_from_log
from jaxloop.sim.datatypes import ObjectMetadata, Scenario, TrafficLights, Trajectory

TRAJ_FLOAT_FIELDS = ("x", "y", "z", "vel_x", "vel_y", "yaw", "length", "width", "height")
SELECT_CHOICES = ("error", "nearest")
# Bounds of valid states (see the module docstring for why each is what it is).
MAX_ABS_XY_M = 1e6
MAX_ABS_Z_M = 1e4
MAX_SPEED_MPS = 150.0
MAX_BOX_M = 30.0


@dataclasses.dataclass(frozen=True)
class LoadConfig:
    """How raw scenarios become fixed-shape `Scenario`s (static: it decides shapes).

    num_objects: N object slots. A log with more objects (valid at some step) than N is
      an error unless `select="nearest"`, which keeps the SDC, the tracks to predict and
      objects of interest (`RawLog.must_keep`), then the nearest to the SDC (at the
      current step), and reports how many were dropped.
    num_lights: L traffic-light slots per step (WOMD: 16).
    map: sizes and culling of the compiled map.
    route_points, route_extend_m: the ego route (see `jaxloop.data.route`).
    """

    num_objects: int = 128
    num_lights: int = 16
    map: MapConfig = MapConfig()
    route_points: int = 64
    route_extend_m: float = 30.0
    select: str = "error"

    def __post_init__(self):
        if not isinstance(self.num_objects, int) or self.num_objects < 1:
            raise ValueError(f"LoadConfig.num_objects must be an int >= 1, got {self.num_objects!r}")
        if not isinstance(self.num_lights, int) or self.num_lights < 1:
            raise ValueError(f"LoadConfig.num_lights must be an int >= 1, got {self.num_lights!r}")
        if not isinstance(self.route_points, int) or self.route_points < 2:
            raise ValueError(f"LoadConfig.route_points must be an int >= 2, got {self.route_points!r}")
        if not self.route_extend_m >= 0:
            raise ValueError(f"LoadConfig.route_extend_m must be >= 0, got {self.route_extend_m!r}")
        if self.select not in SELECT_CHOICES:
            raise ValueError(f"LoadConfig.select must be one of {SELECT_CHOICES}, got {self.select!r}")


@dataclasses.dataclass
class RawLog:
    """One decoded scenario before fitting to fixed sizes (numpy, host).

    `field_name(f, t)` names the source field of trajectory field `f` at step `t`
    (e.g. "state/future/x") so errors point at the input.
    """

    traj: dict[str, np.ndarray]  # TRAJ_FLOAT_FIELDS -> [n, T] float; "valid" [n, T] bool; "timestamp_micros" [n, T]
    ids: np.ndarray  # [n] int
    types: np.ndarray  # [n] int, TYPE_*
    is_sdc: np.ndarray  # [n] bool
    is_modeled: np.ndarray  # [n] bool
    objects_of_interest: np.ndarray  # [n] bool
    roadgraph: RawRoadgraph
    light_lane_ids: np.ndarray  # [T, Lraw] int, lane governed by each raw light entry
    light_state: np.ndarray  # [T, Lraw] int, TL_*
    light_xy: np.ndarray  # [T, Lraw, 2] stop point
    light_valid: np.ndarray  # [T, Lraw] bool
    current_index: int
    scenario_id: str
    field_name: Callable[[str, int], str] = lambda f, t: f"{f}[t={t}]"
    sdc_field: str = "is_sdc"
    objects_field: str = "objects"
    # [n] bool, kept by select="nearest" whatever their distance (the SDC always);
    # None: the tracks to predict and objects of interest (is_modeled | objects_of_interest).
    must_keep: np.ndarray | None = None
    # What the decoder decided about the source and reports in the load info (e.g. {"heading_unit": "deg"}).
    notes: dict = dataclasses.field(default_factory=dict)


def _fail(message: str, source: str, record: int | None, field: str) -> DataError:
    return DataError(message, file=source or None, record=record, field=field)


def _lights(log: RawLog, num_lights: int, sdc_xy: np.ndarray, source: str, record) -> tuple[TrafficLights, int]:
    """Packs the raw per-step light entries into `num_lights` slots per step; returns lights and the drop count.

    Slots follow the source's per-step order (as in WOMD, a slot need not be the same
    light at every step: `lane_ids` says which lane each entry governs). When a step has
    more valid entries than slots, the ones nearest to the SDC are kept.
    """
    t_len = log.light_state.shape[0]
    valid = np.asarray(log.light_valid, bool)
    lanes = np.asarray(log.light_lane_ids, np.int64)
    xy = np.asarray(log.light_xy, np.float64)
    if valid.any() and not np.all(np.isfinite(xy[valid])):
        raise _fail("non-finite traffic-light stop point", source, record, "traffic_light_state/x")
    shape = (num_lights, t_len)
    state = np.zeros(shape, np.int32)
    x = np.zeros(shape, np.float32)
    y = np.zeros(shape, np.float32)
    lane_ids = np.full(shape, -1, np.int32)
    out_valid = np.zeros(shape, bool)
    dropped = 0
    if valid.shape[1] == 0:
        return TrafficLights(state=state, x=x, y=y, lane_ids=lane_ids, valid=out_valid), 0
    # Valid entries first, in source order; a step with too many keeps the nearest to the SDC.
    key = np.where(valid, 0.0, np.inf)
    over = valid.sum(axis=1) > num_lights
    if over.any():
        dist = np.sqrt(np.sum((xy - sdc_xy) ** 2, axis=-1))
        key[over] = np.where(valid[over], dist[over], np.inf)
        dropped = int((valid.sum(axis=1) - num_lights).max())
    order = np.argsort(key, axis=1, kind="stable")[:, :num_lights]  # [T, <=L]
    order[over] = np.sort(order[over], axis=1)  # kept lights of crowded steps back in source order
    m = order.shape[1]
    take = lambda a: np.take_along_axis(a, order, axis=1).T  # [m, T]
    sel_valid = take(valid)
    out_valid[:m] = sel_valid
    state[:m] = np.where(sel_valid, take(np.asarray(log.light_state)), 0)
    x[:m] = np.where(sel_valid, take(xy[..., 0]), 0.0)
    y[:m] = np.where(sel_valid, take(xy[..., 1]), 0.0)
    lane_ids[:m] = np.where(sel_valid, take(lanes), -1)
    return TrafficLights(state=state, x=x, y=y, lane_ids=lane_ids, valid=out_valid), dropped


def _check_ranges(log: RawLog, valid: np.ndarray, source: str, record: int | None) -> None:
    """Physical bounds of valid states; raises naming the field, object (index and id) and step."""
    ids = np.asarray(log.ids).reshape(-1)

    def check(name: str, values: np.ndarray, ok: np.ndarray, bound: str, field: str) -> None:
        bad = valid & ~ok
        if bad.any():
            i, t = (int(v[0]) for v in np.nonzero(bad))
            oid = int(ids[i]) if i < ids.shape[0] else None
            raise _fail(f"{name} {float(values[i, t]):.6g} at object {i} (id {oid}) step {t} outside {bound} "
                        f"({int(bad.sum())} valid state(s) in all)", source, record, log.field_name(field, t))

    tr = {f: np.asarray(log.traj[f], np.float64) for f in ("x", "y", "z", "vel_x", "vel_y", "length", "width",
                                                           "height")}
    for f in ("x", "y"):
        check(f, tr[f], np.abs(tr[f]) <= MAX_ABS_XY_M, f"|{f}| <= {MAX_ABS_XY_M:g} m", f)
    check("z", tr["z"], np.abs(tr["z"]) <= MAX_ABS_Z_M, f"|z| <= {MAX_ABS_Z_M:g} m", "z")
    speed = np.hypot(tr["vel_x"], tr["vel_y"])
    check("speed", speed, speed <= MAX_SPEED_MPS, f"speed <= {MAX_SPEED_MPS:g} m/s", "vel_x")
    for f in ("length", "width", "height"):
        check(f, tr[f], (tr[f] > 0) & (tr[f] <= MAX_BOX_M), f"(0, {MAX_BOX_M:g}] m", f)


def build_scenario(log: RawLog, config: LoadConfig, source: str = "", record: int | None = None,
                   fmt: str = "") -> tuple[Scenario, dict]:
    """Checks `log` and fits it into a `Scenario` of the sizes in `config`; returns it with its info dict.

    Raises `DataError` (naming source, record and field) for non-finite valid
    values or valid states outside the physical ranges of the module docstring, no / several SDCs, an SDC invalid at the current step, or more objects
    than `config.num_objects` when `config.select == "error"`.
    """
    valid = np.asarray(log.traj["valid"], bool)
    n_raw, t_len = valid.shape
    # Finite coordinates wherever a state is valid.
    for f in TRAJ_FLOAT_FIELDS:
        arr = np.asarray(log.traj[f])
        bad = valid & ~np.isfinite(arr)
        if bad.any():
            i, t = (int(v[0]) for v in np.nonzero(bad))
            raise _fail(f"non-finite value {arr[i, t]} at object {i} step {t} ({int(bad.sum())} in all)",
                        source, record, log.field_name(f, t))
    _check_ranges(log, valid, source, record)

    sdc = np.flatnonzero(np.asarray(log.is_sdc, bool))
    if sdc.shape[0] != 1:
        raise _fail(f"expected exactly one SDC (ego), found {sdc.shape[0]}", source, record, log.sdc_field)
    sdc_raw = int(sdc[0])
    cur = int(log.current_index)
    if not 0 <= cur < t_len:
        raise _fail(f"current step {cur} outside the log's {t_len} steps", source, record, "current_time_index")
    if not valid[sdc_raw, cur]:
        raise _fail(f"the SDC (object {sdc_raw}) is invalid at the current step {cur}", source, record,
                    log.field_name("valid", cur))

    # Fit objects into N slots: all raw slots when they fit (keeps slot indices), else
    # the objects valid at some step, else (select="nearest") the nearest to the SDC.
    n = config.num_objects
    present = valid.any(axis=1)
    dropped_objects = 0
    if n_raw <= n:
        keep = np.arange(n_raw)
    elif int(present.sum()) <= n:
        keep = np.flatnonzero(present)
    elif config.select == "nearest":
        sdc_xy = np.array([log.traj["x"][sdc_raw, cur], log.traj["y"][sdc_raw, cur]], np.float64)
        xy = np.stack([log.traj["x"], log.traj["y"]], -1).astype(np.float64)
        d = np.linalg.norm(xy - sdc_xy, axis=-1)
        d_cur = np.where(valid[:, cur], d[:, cur], np.inf)
        d_any = np.where(valid, d, np.inf).min(axis=1)
        dist = np.where(np.isfinite(d_cur), d_cur, d_any + 1e6)  # valid now first, then by closest approach
        # Tracks to predict and objects of interest are what a benchmark scores: never drop them.
        must_keep = (np.asarray(log.is_modeled, bool) | np.asarray(log.objects_of_interest, bool)
                     if log.must_keep is None else np.asarray(log.must_keep, bool))
        dist[must_keep & present] = -1.0
        dist[sdc_raw] = -2.0
        cand = np.flatnonzero(present)
        keep = np.sort(cand[np.argsort(dist[cand], kind="stable")[:n]])
        dropped_objects = int(present.sum()) - n
        label = source if record is None else f"{source}: record {record}"
        warnings.warn(f"{label}: {int(present.sum())} objects for {n} slots; dropped the "
                      f"{dropped_objects} farthest from the SDC (select='nearest')", stacklevel=2)
    else:
        raise _fail(f"{int(present.sum())} objects but LoadConfig.num_objects={n}; raise --num-objects or use "
                    "select='nearest' to keep the nearest to the SDC", source, record, log.objects_field)

    k = keep.shape[0]
    traj = {}
    for f in TRAJ_FLOAT_FIELDS:
        arr = np.zeros((n, t_len), np.float32)
        arr[:k] = np.where(valid[keep], np.asarray(log.traj[f])[keep], 0.0)
        traj[f] = arr
    traj_valid = np.zeros((n, t_len), bool)
    traj_valid[:k] = valid[keep]
    ts = np.zeros((n, t_len), np.int32)
    ts[:k] = np.where(valid[keep], np.asarray(log.traj["timestamp_micros"])[keep], 0)
    trajectory = Trajectory(**traj, valid=traj_valid, timestamp_micros=ts)

    def slots(a, fill, dtype):
        out = np.full((n,), fill, dtype)
        out[:k] = np.asarray(a)[keep]
        return out

    in_log = np.zeros((n,), bool)
    in_log[:k] = present[keep]
    ids = np.where(in_log, slots(log.ids, -1, np.int32), -1).astype(np.int32)
    meta = ObjectMetadata(
        ids=ids, object_types=np.where(in_log, slots(log.types, 0, np.int32), 0).astype(np.int32),
        is_sdc=slots(log.is_sdc, False, bool), is_modeled=slots(log.is_modeled, False, bool),
        is_valid=traj_valid.any(axis=1), objects_of_interest=slots(log.objects_of_interest, False, bool))
    sdc_index = int(np.flatnonzero(meta.is_sdc)[0])

    sdc_valid = traj_valid[sdc_index]
    sdc_xy = np.stack([traj["x"][sdc_index], traj["y"][sdc_index]], -1)
    where = f"{source}#{record}" if record is not None else source
    try:
        roadmap, report = compile_roadmap(log.roadgraph, sdc_xy[sdc_valid], config.map, source=where)
    except DataError as e:
        raise DataError(e.reason, file=source or None, record=record, field=e.field) from None
    route = route_from_log(sdc_xy, sdc_valid, roadmap, num_points=config.route_points,
                           extend_m=config.route_extend_m, ego_yaw=traj["yaw"][sdc_index])
    lights, dropped_lights = _lights(log, config.num_lights, sdc_xy[cur], source, record)
    if dropped_lights:
        warnings.warn(f"{source}: record {record}: up to {dropped_lights} traffic light(s) per step beyond "
                      f"LoadConfig.num_lights={config.num_lights} dropped (farthest from the SDC)", stacklevel=2)

    scenario = Scenario(log_trajectory=trajectory, object_metadata=meta, roadmap=roadmap, traffic_lights=lights,
                        route=route).validate()
    info = {
        "scenario_id": str(log.scenario_id), "format": fmt, "source": str(source), "record": record,
        "num_objects_raw": int(present.sum()), "dropped_objects": dropped_objects, "dropped_lights": dropped_lights,
        "sdc_index": sdc_index, "current_index": cur,
        "map": {kind: dataclasses.asdict(getattr(report, kind)) for kind in report.KINDS},
        **log.notes,
    }
    return scenario, info
