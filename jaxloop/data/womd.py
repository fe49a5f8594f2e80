"""Waymo Open Motion Dataset records -> `Scenario`s (no TensorFlow, no waymo-open-dataset package).

Two record layouts, detected per record (or forced with `layout=`):

- "tf_example": the `tf.Example` layout (`state/{past,current,future}/*`, `state/type`,
  `state/id`, `state/is_sdc`, `state/tracks_to_predict`, `state/objects_of_interest`,
  `roadgraph_samples/{xyz,dir,type,id,valid}`,
  `traffic_light_state/{past,current,future}/{state,x,y,valid,id}`): 10 past + 1 current
  + 80 future steps, object-major state arrays `[N, t]`, time-major light arrays `[t, L]`.
- "scenario": the `waymo.open_dataset.Scenario` protobuf (tracks of per-step states,
  vector `map_features`, per-step `dynamic_map_states`), converted to the same raw
  roadgraph-point layout before map compilation.

Both go through `jaxloop.data.common.build_scenario` (checks, N slots, map compile,
route, lights). Bad records raise `DataError` naming file, record index and field (never
a bare decoder exception); with `skip_invalid=True` they are counted in a `SkipReport`
and skipped, and a broken file (empty, truncated, failing a CRC) is counted and ends
that file while the records before it are kept.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np
from google.protobuf.message import DecodeError

from jaxloop.data import protos
from jaxloop.data.common import LoadConfig, RawLog, build_scenario
from jaxloop.data.errors import MALFORMED, DataError, SkipReport, as_data_error
from jaxloop.data.mapcompile import RawRoadgraph
from jaxloop.data.tfrecord import TFRecordError, read_records
from jaxloop.sim.datatypes import (RG_CROSSWALK, RG_ROAD_EDGE_BOUNDARY, RG_ROAD_EDGE_MEDIAN, RG_ROAD_LINE_MIN,
                                   RG_SPEED_BUMP, RG_STOP_SIGN, RG_SURFACE_LANE, Scenario)

LAYOUTS = ("tf_example", "scenario")
FORMAT_NAMES = {"tf_example": "womd_tf_example", "scenario": "womd_scenario"}
NUM_PAST, NUM_FUTURE = 10, 80
MPH_TO_MPS = 0.44704

_STATE_FIELDS = {  # Trajectory field -> tf.Example state feature suffix
    "x": "x", "y": "y", "z": "z", "vel_x": "velocity_x", "vel_y": "velocity_y", "yaw": "bbox_yaw",
    "length": "length", "width": "width", "height": "height", "valid": "valid",
    "timestamp_micros": "timestamp_micros",
}
_PARTS = ("past", "current", "future")


# ----------------------------------------------------------------------------- tf.Example


def parse_example(data: bytes | object) -> dict[str, np.ndarray | list[bytes]]:
    """Decodes a serialised tf.Example (or a parsed `protos.Example`) into {feature name: float32 / int64
    array or list of bytes}."""
    ex = protos.Example.FromString(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    out: dict = {}
    for key, feat in ex.features.feature.items():
        kind = feat.WhichOneof("kind")
        if kind == "float_list":
            out[key] = np.asarray(feat.float_list.value, np.float32)
        elif kind == "int64_list":
            out[key] = np.asarray(feat.int64_list.value, np.int64)
        elif kind == "bytes_list":
            out[key] = list(feat.bytes_list.value)
        else:
            out[key] = np.zeros(0, np.float32)
    return out


def encode_example(features: dict[str, np.ndarray | list[bytes]]) -> bytes:
    """Inverse of `parse_example` (floats -> float_list, ints/bools -> int64_list, bytes -> bytes_list)."""
    ex = protos.Example()
    for key, value in features.items():
        feat = ex.features.feature[key]
        if isinstance(value, (list, tuple)) and value and isinstance(value[0], (bytes, str)):
            feat.bytes_list.value.extend(v.encode() if isinstance(v, str) else v for v in value)
            continue
        arr = np.asarray(value).reshape(-1)
        if arr.dtype.kind == "f":
            feat.float_list.value.extend(arr.astype(np.float32).tolist())
        else:
            feat.int64_list.value.extend(arr.astype(np.int64).tolist())
    return ex.SerializeToString()


def _require(feats: dict, key: str, size: int | None, source: str, record: int | None) -> np.ndarray:
    if key not in feats:
        raise DataError("missing feature: not a WOMD tf.Example record (or the wrong layout)", file=source or None,
                        record=record, field=key)
    arr = feats[key]
    if isinstance(arr, list):
        raise DataError(f"expected a numeric feature, got bytes", file=source or None, record=record, field=key)
    if size is not None and arr.size % size:
        raise DataError(f"has {arr.size} values, not a multiple of {size}", file=source or None, record=record,
                        field=key)
    return arr


def _example_to_raw(feats: dict, source: str, record: int | None) -> RawLog:
    req = lambda key, size=None: _require(feats, key, size, source, record)
    num_objects = req("state/id").size
    if num_objects == 0:
        raise DataError("no object slots", file=source or None, record=record, field="state/id")
    traj = {}
    steps = {}
    for f, suffix in _STATE_FIELDS.items():
        parts = []
        for part in _PARTS:
            key = f"state/{part}/{suffix}"
            arr = req(key, num_objects)
            parts.append(arr.reshape(num_objects, -1))
            steps[part] = parts[-1].shape[1]
        traj[f] = np.concatenate(parts, axis=1)
    traj["valid"] = traj["valid"] > 0
    for f in ("type", "is_sdc", "tracks_to_predict", "objects_of_interest"):
        arr = req(f"state/{f}")
        if arr.size != num_objects:
            raise DataError(f"has {arr.size} values for {num_objects} objects", file=source or None, record=record,
                            field=f"state/{f}")
    num_past, num_cur = steps["past"], steps["current"]

    def field_name(f: str, t: int) -> str:
        part = "past" if t < num_past else "current" if t < num_past + num_cur else "future"
        return f"state/{part}/{_STATE_FIELDS[f]}"

    # Roadgraph points.
    xyz = req("roadgraph_samples/xyz", 3).reshape(-1, 3)
    m = xyz.shape[0]
    rg = {}
    for name, width in (("dir", 3), ("type", 1), ("id", 1), ("valid", 1)):
        arr = req(f"roadgraph_samples/{name}", width)
        if arr.size != m * width:
            raise DataError(f"has {arr.size} values, expected {m * width} ({m} points)", file=source or None,
                            record=record, field=f"roadgraph_samples/{name}")
        rg[name] = arr.reshape(m, width) if width > 1 else arr.reshape(m)
    roadgraph = RawRoadgraph(xyz=xyz, dir=rg["dir"], types=rg["type"], ids=rg["id"], valid=rg["valid"] > 0)

    # Traffic lights: time-major [t, L] per part.
    light = {}
    for name in ("state", "x", "y", "valid", "id"):
        parts = []
        for part in _PARTS:
            key = f"traffic_light_state/{part}/{name}"
            if key not in feats:
                parts = None
                break
            value = feats[key]
            if isinstance(value, list) or value.size % max(steps[part], 1):
                raise DataError(f"expected a numeric feature of {steps[part]} step(s) x lights, got "
                                f"{'bytes' if isinstance(value, list) else f'{value.size} values'}",
                                file=source or None, record=record, field=key)
            parts.append(value.reshape(steps[part], -1))
        light[name] = parts
    t_len = traj["x"].shape[1]
    if any(v is None for v in light.values()):
        empty = np.zeros((t_len, 0))
        light = {"state": empty, "x": empty, "y": empty, "valid": empty.astype(bool), "id": empty}
    else:
        widths = {p.shape[1] for parts in light.values() for p in parts}
        if len(widths) != 1:
            raise DataError(f"traffic-light features disagree on the number of lights: {sorted(widths)}",
                            file=source or None, record=record, field="traffic_light_state")
        light = {k: np.concatenate(v, axis=0) for k, v in light.items()}

    scenario_id = feats.get("scenario/id", [b""])
    scenario_id = scenario_id[0].decode("utf-8", "replace") if isinstance(scenario_id, list) and scenario_id else ""
    return RawLog(
        traj=traj, ids=traj_ids(feats["state/id"]),
        types=np.nan_to_num(np.asarray(feats["state/type"], np.float64), nan=-1.0).astype(np.int32),
        is_sdc=feats["state/is_sdc"] > 0, is_modeled=feats["state/tracks_to_predict"] > 0,
        objects_of_interest=feats["state/objects_of_interest"] > 0, roadgraph=roadgraph,
        light_lane_ids=light["id"].astype(np.int64), light_state=light["state"].astype(np.int32),
        light_xy=np.stack([light["x"], light["y"]], -1).astype(np.float64), light_valid=light["valid"] > 0,
        current_index=num_past + num_cur - 1, scenario_id=scenario_id, field_name=field_name,
        sdc_field="state/is_sdc", objects_field="state/id")


def traj_ids(ids: np.ndarray) -> np.ndarray:
    """Object ids (stored as float in the tf.Example layout) as int32, -1 for padding."""
    ids = np.asarray(ids, np.float64)
    return np.where(np.isfinite(ids), ids, -1).astype(np.int64).astype(np.int32)


# ----------------------------------------------------------------------------- Scenario proto


def _points(pts) -> np.ndarray:
    return np.array([(p.x, p.y, p.z) for p in pts], np.float64).reshape(-1, 3)


def scenario_roadgraph(msg) -> RawRoadgraph:
    """The vector map of a Scenario proto as WOMD roadgraph points (types as in the tf.Example layout)."""
    xyz, types, ids = [], [], []
    speed_limits: dict[int, float] = {}
    stop_sign_lanes: dict[int, list[int]] = {}
    for feat in msg.map_features:
        kind = feat.WhichOneof("feature_data")
        fid = int(feat.id)
        if kind == "lane":
            pts = _points(feat.lane.polyline)
            t = int(feat.lane.type)
            rg = t if t in (1, 2, 3) else RG_SURFACE_LANE  # undefined lane type: treated as a surface street
            if feat.lane.HasField("speed_limit_mph"):
                speed_limits[fid] = float(feat.lane.speed_limit_mph) * MPH_TO_MPS
        elif kind == "road_line":
            pts = _points(feat.road_line.polyline)
            t = int(feat.road_line.type)
            rg = RG_ROAD_LINE_MIN - 1 + t if 1 <= t <= 8 else 0
        elif kind == "road_edge":
            pts = _points(feat.road_edge.polyline)
            rg = RG_ROAD_EDGE_MEDIAN if int(feat.road_edge.type) == 2 else RG_ROAD_EDGE_BOUNDARY
        elif kind == "stop_sign":
            p = feat.stop_sign.position
            pts = np.array([[p.x, p.y, p.z]], np.float64)
            rg = RG_STOP_SIGN
            stop_sign_lanes[fid] = [int(v) for v in feat.stop_sign.lane]
        elif kind == "crosswalk":
            pts = _points(feat.crosswalk.polygon)
            rg = RG_CROSSWALK
        elif kind == "speed_bump":
            pts = _points(feat.speed_bump.polygon)
            rg = RG_SPEED_BUMP
        else:  # driveways and unknown kinds are not part of the roadgraph-point layout
            continue
        if pts.shape[0] == 0:
            continue
        xyz.append(pts)
        types.append(np.full(pts.shape[0], rg, np.int32))
        ids.append(np.full(pts.shape[0], fid, np.int64))
    if not xyz:
        z = np.zeros((0, 3))
        return RawRoadgraph(xyz=z, dir=z, types=np.zeros(0), ids=np.zeros(0), valid=np.zeros(0, bool))
    xyz_all = np.concatenate(xyz)
    ids_all = np.concatenate(ids)
    d = np.zeros_like(xyz_all)
    d[:-1] = xyz_all[1:] - xyz_all[:-1]
    same = np.zeros(xyz_all.shape[0], bool)
    same[:-1] = ids_all[1:] == ids_all[:-1]
    norm = np.linalg.norm(d, axis=-1, keepdims=True)
    d = np.where(same[:, None] & (norm > 1e-9), d / np.maximum(norm, 1e-9), 0.0)
    return RawRoadgraph(xyz=xyz_all, dir=d, types=np.concatenate(types), ids=ids_all.astype(np.int32),
                        valid=np.ones(xyz_all.shape[0], bool), speed_limits=speed_limits,
                        stop_sign_lanes=stop_sign_lanes)


def _scenario_to_raw(msg, source: str, record: int | None) -> RawLog:
    t_len = len(msg.timestamps_seconds)
    n = len(msg.tracks)
    if n == 0 or t_len == 0:
        raise DataError(f"{n} tracks and {t_len} timestamps: not a WOMD Scenario record (or the wrong layout)",
                        file=source or None, record=record, field="tracks" if n == 0 else "timestamps_seconds")
    names = ("center_x", "center_y", "center_z", "velocity_x", "velocity_y", "heading", "length", "width", "height")
    arr = np.zeros((n, t_len, len(names)), np.float64)
    valid = np.zeros((n, t_len), bool)
    for i, track in enumerate(msg.tracks):
        if len(track.states) != t_len:
            raise DataError(f"track {i} has {len(track.states)} states for {t_len} timestamps", file=source or None,
                            record=record, field=f"tracks[{i}].states")
        arr[i] = [(s.center_x, s.center_y, s.center_z, s.velocity_x, s.velocity_y, s.heading, s.length, s.width,
                   s.height) for s in track.states]
        valid[i] = [s.valid for s in track.states]
    traj = {f: arr[..., k] for k, f in enumerate(("x", "y", "z", "vel_x", "vel_y", "yaw", "length", "width",
                                                  "height"))}
    traj["valid"] = valid
    stamps = np.asarray(msg.timestamps_seconds, np.float64)
    traj["timestamp_micros"] = np.broadcast_to(np.round((stamps - stamps[0]) * 1e6).astype(np.int64), (n, t_len))
    proto_names = dict(zip(("x", "y", "z", "vel_x", "vel_y", "yaw", "length", "width", "height", "valid"),
                           names + ("valid",)))

    ids = np.array([t.id for t in msg.tracks], np.int64)
    sdc = np.zeros(n, bool)
    if msg.HasField("sdc_track_index") and 0 <= msg.sdc_track_index < n:
        sdc[msg.sdc_track_index] = True
    modeled = np.zeros(n, bool)
    for req in msg.tracks_to_predict:
        if 0 <= req.track_index < n:
            modeled[req.track_index] = True
    ooi = np.isin(ids, np.asarray(list(msg.objects_of_interest), np.int64))

    width = max((len(d.lane_states) for d in msg.dynamic_map_states), default=0)
    light_ids = np.full((t_len, width), -1, np.int64)
    light_state = np.zeros((t_len, width), np.int32)
    light_xy = np.zeros((t_len, width, 2), np.float64)
    light_valid = np.zeros((t_len, width), bool)
    for t, dyn in enumerate(msg.dynamic_map_states[:t_len]):
        for k, ls in enumerate(dyn.lane_states):
            light_ids[t, k] = ls.lane
            light_state[t, k] = ls.state
            light_xy[t, k] = (ls.stop_point.x, ls.stop_point.y)
            light_valid[t, k] = True
    return RawLog(
        traj=traj, ids=ids.astype(np.int32), types=np.array([t.object_type for t in msg.tracks], np.int32),
        is_sdc=sdc, is_modeled=modeled, objects_of_interest=ooi, roadgraph=scenario_roadgraph(msg),
        light_lane_ids=light_ids, light_state=light_state, light_xy=light_xy, light_valid=light_valid,
        current_index=int(msg.current_time_index), scenario_id=msg.scenario_id,
        field_name=lambda f, t: f"tracks[*].states[{t}].{proto_names[f]}", sdc_field="sdc_track_index",
        objects_field="tracks")


# ----------------------------------------------------------------------------- entry points


def detect_layout(data: bytes) -> str | None:
    """'tf_example', 'scenario' or None for a serialised record."""
    try:
        ex = protos.Example.FromString(data)
        if "state/current/x" in ex.features.feature:
            return "tf_example"
    except DecodeError:
        pass
    try:
        msg = protos.Scenario.FromString(data)
        if len(msg.tracks) and len(msg.timestamps_seconds):
            return "scenario"
    except DecodeError:
        pass
    return None


def decode_record(data: bytes, config: LoadConfig = LoadConfig(), layout: str | None = None, source: str = "",
                  record: int | None = None) -> tuple[Scenario, dict]:
    """One serialised WOMD record -> (Scenario, info). `layout` None detects it."""
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS} or None, got {layout!r}")
    parsed_example = None
    if layout in (None, "tf_example"):
        try:
            parsed_example = protos.Example.FromString(data)
        except DecodeError:
            parsed_example = None
        if layout is None and parsed_example is not None and "state/current/x" in parsed_example.features.feature:
            layout = "tf_example"
    chosen = layout or detect_layout(data)
    if chosen is None:
        raise DataError("record is neither a WOMD tf.Example (no 'state/current/x' feature) nor a WOMD Scenario "
                        "proto (no tracks)", file=source or None, record=record, field="layout")
    try:
        if chosen == "tf_example":
            raw = _example_to_raw(parse_example(data if parsed_example is None else parsed_example), source, record)
        else:
            raw = _scenario_to_raw(protos.Scenario.FromString(data), source, record)
        return build_scenario(raw, config, source=source, record=record, fmt=FORMAT_NAMES[chosen])
    except DecodeError as e:
        raise DataError(f"not a serialised {chosen} protobuf ({e})", file=source or None, record=record,
                        field="layout") from None
    except DataError:
        raise
    except MALFORMED as e:  # a shape or value no check above anticipated: still this record's fault
        raise as_data_error(e, file=source or None, record=record) from e


def load_womd(path: str | os.PathLike, config: LoadConfig = LoadConfig(), layout: str | None = None,
              skip_invalid: bool = False, skip_report: SkipReport | None = None) -> Iterator[tuple[Scenario, dict]]:
    """Yields (Scenario, info) for every record of a WOMD TFRecord file, lazily.

    A record that fails to decode or validate raises `DataError` (whatever the decoder
    raised inside), or with `skip_invalid=True` is counted in `skip_report` and skipped.
    A framing error (CRC, truncation, empty file, unreadable file) ends the file: the
    bytes after it cannot be trusted. It raises `TFRecordError`, or with `skip_invalid`
    is counted once and the records read before it are kept.
    """
    source = os.fspath(path)

    def skip(error: DataError) -> None:
        if skip_report is not None:
            skip_report.add(error)

    try:
        records = read_records(source)
        for index, data in enumerate(records):
            try:
                item = decode_record(data, config, layout, source, index)
            except DataError as e:
                if not skip_invalid:
                    raise
                skip(e.located(file=source, record=index))
                continue
            yield item
    except TFRecordError as e:
        if not skip_invalid:
            raise
        skip(e)
    except OSError as e:
        error = DataError(f"unreadable file ({e})", file=source)
        if not skip_invalid:
            raise error from e
        skip(error)
