"""Argoverse 2 motion-forecasting scenarios (parquet + `log_map_archive_*.json`) -> `Scenario`s.

An AV2 scenario is 110 steps at 10 Hz (50 observed: the current step is index 49, then
60 future). The mapping to jaxloop's WOMD-style fields:

- ego: the track "AV" (is_sdc); the focal track (object_category 3) is marked
  is_modeled and objects_of_interest, scored tracks (category 2) is_modeled;
- types: vehicle / bus -> vehicle (1), pedestrian -> 2, cyclist / motorcyclist -> 3,
  everything else (static, background, construction, riderless bicycle, unknown) -> 4;
- yaw from `heading`, velocities from `velocity_x/y`; AV2 has no z, box size or
  height: z = 0 and a per-type nominal box (e.g. vehicle 4.5 x 2.0 x 1.6 m);
- lane segments -> lanes, centre line = the average of the left and right boundaries
  resampled to a common count (falling back to the archive's `centerline`); VEHICLE /
  BUS lanes are surface-street lanes, BIKE lanes bike lanes;
- drivable-area polygons -> road edges, each boundary traversed clockwise so the area
  is on its right;
- pedestrian crossings (two edges) -> crosswalk polygons.

AV2 has no traffic-light states and no stop signs: those come out empty.

Guarantees: any malformed parquet or map archive (wrong JSON types, unparsable numbers,
missing columns) raises `DataError` naming the file and the field, never a bare
`ValueError` / `AttributeError`, so `skip_invalid` can leave that scenario out. A map with
no lane segments is an error (a scenario without a map cannot be scored against it); a
map with lanes but no drivable area warns, naming the file (no road edges: offroad
cannot be measured).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import pathlib
import warnings

import numpy as np

from jaxloop.data.common import LoadConfig, RawLog, build_scenario
from jaxloop.data.errors import MALFORMED, DataError, as_data_error
from jaxloop.data.mapcompile import RawRoadgraph
from jaxloop.sim.datatypes import (RG_BIKE_LANE, RG_CROSSWALK, RG_ROAD_EDGE_BOUNDARY, RG_SURFACE_LANE, TYPE_CYCLIST,
                                   TYPE_OTHER, TYPE_PEDESTRIAN, TYPE_VEHICLE, Scenario)

NUM_STEPS = 110
CURRENT_INDEX = 49
FORMAT = "av2"
TYPE_MAP = {"vehicle": TYPE_VEHICLE, "bus": TYPE_VEHICLE, "pedestrian": TYPE_PEDESTRIAN, "cyclist": TYPE_CYCLIST,
            "motorcyclist": TYPE_CYCLIST}
# Nominal (length, width, height) per AV2 object type; AV2 logs no box sizes.
BOX_SIZE = {"vehicle": (4.5, 2.0, 1.6), "bus": (12.0, 2.6, 3.2), "pedestrian": (0.7, 0.7, 1.7),
            "cyclist": (1.9, 0.8, 1.7), "motorcyclist": (2.1, 0.9, 1.6), "riderless_bicycle": (1.8, 0.6, 1.1)}
DEFAULT_BOX = (1.0, 1.0, 1.0)
_COLUMNS = ("observed", "track_id", "object_type", "object_category", "timestep", "position_x", "position_y",
            "heading", "velocity_x", "velocity_y", "scenario_id", "focal_track_id")


def find_map(parquet_path: str | os.PathLike) -> pathlib.Path:
    """The `log_map_archive_*.json` beside a scenario parquet (AV2's directory layout)."""
    p = pathlib.Path(parquet_path)
    scenario_id = p.stem.removeprefix("scenario_")
    exact = p.parent / f"log_map_archive_{scenario_id}.json"
    if exact.is_file():
        return exact
    found = sorted(glob.glob(str(p.parent / "log_map_archive_*.json")))
    if len(found) == 1:
        return pathlib.Path(found[0])
    raise DataError(f"expected one log_map_archive_*.json beside the scenario, found {len(found)}", file=p,
                    field="map")


def _xyz(points, file, field) -> np.ndarray:
    try:
        return np.array([(q["x"], q["y"], q.get("z", 0.0)) for q in points], np.float64).reshape(-1, 3)
    except (TypeError, KeyError, ValueError, AttributeError) as e:
        raise DataError(f"expected a list of {{x, y, z}} points ({e!r})", file=file, field=field) from None


def _resample(xyz: np.ndarray, n: int) -> np.ndarray:
    seg = np.linalg.norm(np.diff(xyz[:, :2], axis=0), axis=-1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    if arc[-1] <= 0:
        return np.repeat(xyz[:1], n, axis=0)
    t = np.linspace(0.0, arc[-1], n)
    return np.stack([np.interp(t, arc, xyz[:, k]) for k in range(3)], -1)


def _points_in_polygon(points: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """Even-odd ray casting: `[M]` bool, points `[M, 2]` inside the closed ring `[K+1, 2]`."""
    a, b = ring[:-1], ring[1:]
    px, py = points[:, None, 0], points[:, None, 1]
    crosses = (a[None, :, 1] > py) != (b[None, :, 1] > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = a[None, :, 0] + (py - a[None, :, 1]) * (b[None, :, 0] - a[None, :, 0]) / (b[None, :, 1] - a[None, :, 1])
    return np.sum(crosses & (px < x_at), axis=1) % 2 == 1


def _distance_to_ring(points: np.ndarray, ring: np.ndarray) -> np.ndarray:
    a, b = ring[None, :-1], ring[None, 1:]
    seg = b - a
    rel = points[:, None] - a
    t = np.clip(np.sum(rel * seg, -1) / np.maximum(np.sum(seg ** 2, -1), 1e-12), 0.0, 1.0)
    return np.min(np.linalg.norm(rel - t[..., None] * seg, axis=-1), axis=1)


def _outer_boundaries(rings: list[tuple[int, np.ndarray]], tol: float = 0.1):
    """Drivable-area boundaries minus the parts shared with (or inside) another area.

    AV2 splits the drivable area into tiles; a tile border crossed by a road is not a
    road edge. Yields (area id, [polyline [K, 3], ...]) with each kept run of segments.
    """
    for i, (area_id, ring) in enumerate(rings):
        mids = 0.5 * (ring[:-1, :2] + ring[1:, :2])
        internal = np.zeros(mids.shape[0], bool)
        for j, (_, other) in enumerate(rings):
            if j != i:
                internal |= (_distance_to_ring(mids, other[:, :2]) < tol) | _points_in_polygon(mids, other[:, :2])
        keep = ~internal
        pieces = []
        start = None
        for k in range(keep.shape[0] + 1):  # runs of kept segments, per ring
            if k < keep.shape[0] and keep[k]:
                start = k if start is None else start
            elif start is not None:
                pieces.append(ring[start:k + 1])
                start = None
        yield area_id, pieces


def _section(archive: dict, key: str, path: pathlib.Path, required: bool = False) -> dict[str, dict]:
    """`archive[key]`: a dict of id -> dict entries (AV2's layout), checked before it is walked."""
    if key not in archive and not required:
        return {}
    section = archive.get(key)
    if not isinstance(section, dict):
        raise DataError(f"expected an object of id -> entry, got {type(section).__name__}", file=path, field=key)
    for k, entry in section.items():
        if not isinstance(entry, dict):
            raise DataError(f"expected an object, got {type(entry).__name__}", file=path, field=f"{key}[{k}]")
    return section


def _feature_id(entry: dict, key: str, path: pathlib.Path, field: str) -> int:
    try:
        return int(entry.get("id", key))
    except (TypeError, ValueError, OverflowError) as e:
        raise DataError(f"expected an integer id ({e})", file=path, field=field + ".id") from None


def read_map(path: str | os.PathLike) -> RawRoadgraph:
    """An AV2 `log_map_archive_*.json` as raw roadgraph points (lanes, road edges, crosswalks).

    Raises `DataError` naming the file and field for a malformed archive or one with no lane.
    """
    path = pathlib.Path(path)
    try:
        return _read_map(path)
    except DataError:
        raise
    except MALFORMED as e:  # a JSON shape no check anticipated: still this file's fault
        raise as_data_error(e, file=path) from e


def _read_map(path: pathlib.Path) -> RawRoadgraph:
    try:
        archive = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"unreadable map archive ({e})", file=path) from None
    if not isinstance(archive, dict) or "lane_segments" not in archive:
        raise DataError("not an AV2 map archive: no 'lane_segments'", file=path, field="lane_segments")
    lanes = _section(archive, "lane_segments", path, required=True)
    areas = _section(archive, "drivable_areas", path)
    crossings = _section(archive, "pedestrian_crossings", path)
    if not lanes:
        raise DataError("no lane segments: a scenario without a map cannot be evaluated", file=path,
                        field="lane_segments")
    if not areas:
        warnings.warn(f"{path}: map archive has lanes but no drivable areas: no road edges, so offroad cannot be "
                      "measured", stacklevel=2)
    xyz, types, ids = [], [], []
    # Lane ids are kept (they fit int32 in AV2); every other polyline (an area boundary
    # may split into several) gets a fresh id from 2**30 up, so consecutive polylines never share one.
    fresh = iter(range(2 ** 30, 2 ** 31 - 1))

    def add(points: np.ndarray, rg: int, fid: int | None = None):
        if points.shape[0]:
            if fid is None or not -2 ** 31 <= fid < 2 ** 30:
                fid = next(fresh)
            xyz.append(points)
            types.append(np.full(points.shape[0], rg, np.int32))
            ids.append(np.full(points.shape[0], fid, np.int64))

    for key, lane in lanes.items():
        field = f"lane_segments[{key}]"
        fid = _feature_id(lane, key, path, field)
        left = _xyz(lane.get("left_lane_boundary", []), path, field + ".left_lane_boundary")
        right = _xyz(lane.get("right_lane_boundary", []), path, field + ".right_lane_boundary")
        if left.shape[0] >= 2 and right.shape[0] >= 2:
            n = max(left.shape[0], right.shape[0], 10)
            centre = 0.5 * (_resample(left, n) + _resample(right, n))
        else:
            centre = _xyz(lane.get("centerline", []), path, field + ".centerline")
        rg = RG_BIKE_LANE if lane.get("lane_type") == "BIKE" else RG_SURFACE_LANE
        add(centre, rg, fid)
    if not xyz:
        raise DataError(f"none of the {len(lanes)} lane segment(s) has points: a scenario without a map cannot be "
                        "evaluated", file=path, field="lane_segments")
    rings = []
    for key, area in areas.items():
        ring = _xyz(area.get("area_boundary", []), path, f"drivable_areas[{key}].area_boundary")
        if ring.shape[0] < 3:
            continue
        if np.allclose(ring[0, :2], ring[-1, :2]):
            ring = ring[:-1]
        x, y = ring[:, 0], ring[:, 1]
        signed_area = 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)
        if signed_area > 0:  # counter-clockwise: the area is on the left, so reverse
            ring = ring[::-1]
        rings.append((_feature_id(area, key, path, f"drivable_areas[{key}]"), np.concatenate([ring, ring[:1]])))
    for _, pieces in _outer_boundaries(rings):
        for piece in pieces:
            add(piece, RG_ROAD_EDGE_BOUNDARY)
    for key, cw in crossings.items():
        e1 = _xyz(cw.get("edge1", []), path, f"pedestrian_crossings[{key}].edge1")
        e2 = _xyz(cw.get("edge2", []), path, f"pedestrian_crossings[{key}].edge2")
        add(np.concatenate([e1, e2[::-1]]), RG_CROSSWALK)
    if not xyz:
        z = np.zeros((0, 3))
        return RawRoadgraph(xyz=z, dir=z, types=np.zeros(0), ids=np.zeros(0), valid=np.zeros(0, bool))
    all_xyz = np.concatenate(xyz)
    all_ids = np.concatenate(ids)
    if not np.all(np.isfinite(all_xyz)):
        raise DataError("non-finite map coordinates", file=path, field="lane_segments/drivable_areas")
    d = np.zeros_like(all_xyz)
    d[:-1] = all_xyz[1:] - all_xyz[:-1]
    same = np.append(all_ids[1:] == all_ids[:-1], False)
    norm = np.linalg.norm(d, axis=-1, keepdims=True)
    d = np.where(same[:, None] & (norm > 1e-9), d / np.maximum(norm, 1e-9), 0.0)
    return RawRoadgraph(xyz=all_xyz, dir=d, types=np.concatenate(types), ids=all_ids.astype(np.int32),
                        valid=np.ones(all_xyz.shape[0], bool))


def read_tracks(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The scenario parquet's columns as numpy arrays (pyarrow)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=list(_COLUMNS))
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"not a readable AV2 scenario parquet ({e})", file=path, field="parquet") from None
    cols = {}
    for name in _COLUMNS:
        col = table.column(name)
        cols[name] = np.asarray(col.to_numpy(zero_copy_only=False))
    return cols


def _numeric(cols: dict, name: str, dtype, path: pathlib.Path) -> np.ndarray:
    try:
        return cols[name].astype(dtype)
    except (TypeError, ValueError, OverflowError) as e:
        raise DataError(f"expected a {np.dtype(dtype).name} column ({e})", file=path, field=name) from None


def load_av2(path: str | os.PathLike, map_path: str | os.PathLike | None = None,
             config: LoadConfig = LoadConfig()) -> tuple[Scenario, dict]:
    """One AV2 scenario parquet (+ its map archive, found beside it by default) -> (Scenario, info).

    Raises `DataError` (naming the parquet or map file and the field) for any malformed input.
    """
    path = pathlib.Path(path)
    try:
        return _load_av2(path, map_path, config)
    except DataError:
        raise
    except MALFORMED as e:  # a column shape or value no check anticipated: still this file's fault
        raise as_data_error(e, file=path) from e


def _load_av2(path: pathlib.Path, map_path, config: LoadConfig) -> tuple[Scenario, dict]:
    cols = read_tracks(path)
    map_path = find_map(path) if map_path is None else pathlib.Path(map_path)
    roadgraph = read_map(map_path)

    t = _numeric(cols, "timestep", np.int64, path)
    if t.size == 0:
        raise DataError("no track rows", file=path, field="timestep")
    if t.min() < 0 or t.max() >= NUM_STEPS:
        raise DataError(f"timestep outside [0, {NUM_STEPS}): {int(t.min())}..{int(t.max())}", file=path,
                        field="timestep")
    track_ids, obj = np.unique(cols["track_id"].astype(str), return_inverse=True)
    n = track_ids.shape[0]
    shape = (n, NUM_STEPS)
    traj = {f: np.zeros(shape, np.float64) for f in ("x", "y", "z", "vel_x", "vel_y", "yaw", "length", "width",
                                                     "height")}
    valid = np.zeros(shape, bool)
    if np.any(np.bincount(obj * NUM_STEPS + t, minlength=n * NUM_STEPS) > 1):
        raise DataError("a track has two rows for one timestep", file=path, field="track_id/timestep")
    for f, col in (("x", "position_x"), ("y", "position_y"), ("yaw", "heading"), ("vel_x", "velocity_x"),
                   ("vel_y", "velocity_y")):
        traj[f][obj, t] = _numeric(cols, col, np.float64, path)
    valid[obj, t] = True
    raw_type = np.empty(n, object)
    raw_type[obj] = cols["object_type"].astype(str)
    category = np.zeros(n, np.int64)
    category[obj] = _numeric(cols, "object_category", np.int64, path)
    for i, rt in enumerate(raw_type):
        traj["length"][i], traj["width"][i], traj["height"][i] = BOX_SIZE.get(rt, DEFAULT_BOX)
    traj["valid"] = valid
    traj["timestamp_micros"] = np.broadcast_to(np.arange(NUM_STEPS, dtype=np.int64) * 100_000, shape)
    focal_id = str(cols["focal_track_id"][0]) if cols["focal_track_id"].size else ""
    is_focal = track_ids == focal_id
    names = {"x": "position_x", "y": "position_y", "yaw": "heading", "vel_x": "velocity_x",
             "vel_y": "velocity_y", "valid": "observed"}
    numeric_ids = np.array([int(s) if s.isdigit() else -2 for s in track_ids], np.int64)
    # Track ids are strings ("AV", digits); keep digits, give others distinct negative ids below -1.
    other = numeric_ids == -2
    numeric_ids[other] = -2 - np.arange(int(other.sum()))
    log = RawLog(
        traj=traj, ids=np.where(numeric_ids >= 0, numeric_ids % (2 ** 31), numeric_ids).astype(np.int32),
        types=np.array([TYPE_MAP.get(rt, TYPE_OTHER) for rt in raw_type], np.int32),
        is_sdc=track_ids == "AV", is_modeled=category >= 2, objects_of_interest=is_focal, roadgraph=roadgraph,
        light_lane_ids=np.zeros((NUM_STEPS, 0), np.int64), light_state=np.zeros((NUM_STEPS, 0), np.int32),
        light_xy=np.zeros((NUM_STEPS, 0, 2)), light_valid=np.zeros((NUM_STEPS, 0), bool),
        current_index=CURRENT_INDEX, scenario_id=str(cols["scenario_id"][0]),
        field_name=lambda f, step: f"{names.get(f, f)}[timestep={step}]", sdc_field="track_id=='AV'",
        objects_field="track_id", must_keep=is_focal)
    # The ids column of padding is -1; AV2's "AV" track gets -2 (a real, non-numeric track).
    map_cfg = dataclasses.replace(config.map, orient_edges="keep")  # drivable-area rings are oriented above
    cfg = dataclasses.replace(config, map=map_cfg)
    scenario, info = build_scenario(log, cfg, source=str(path), record=None, fmt=FORMAT)
    info["map_file"] = str(map_path)
    info["focal_track_id"] = focal_id
    return scenario, info
