"""GPUDrive / PufferDrive JSON scenes (`.json` or `.json.gz`, one scene per file) -> `Scenario`s.

The format (ScenarioMax exports the same) holds one WOMD scene of T steps (WOMD: 91 at
10 Hz, the current step is index 10):

- `objects[i]`: per step `position` {x, y, z}, `velocity` {x, y}, `heading` and
  `valid`; per object `width`, `length`, `height` (missing in older files: a
  per-type default, `DEFAULT_HEIGHT`), `type` ("vehicle", "pedestrian", "cyclist";
  anything else is TYPE_OTHER) and `id` (older files: none, the object index is used).
  Invalid steps carry placeholder positions ((-10000, -10000), (0, 0)): only `valid`
  is trusted, and `build_scenario` zeroes them.
- `roads[j]`: `geometry` (a list of {x, y, z} points), `type` and `map_element_id`, the
  WOMD roadgraph type code (DESIGN.md; lane code 0 "undefined" -> surface lane, as in
  `womd.py`). Older files have no `map_element_id`: the `type` string decides
  (`ROAD_TYPE_FALLBACK`). Driveways (code 20) and unknown kinds are not part of the
  roadgraph-point layout and are left out. The polyline id is the road's `id`, else its
  index (traffic lights name lanes by that id).
- `tl_states[key]`: per listed step `state` (a string, `TL_STATES`), stop point `x`,
  `y`, `z`, `time_index` (the step each entry is for; without it, steps 0, 1, ...), and
  `lane_id` in newer files (older: the dict key is the lane id). Steps not listed have
  no light entry.
- optional `metadata`: `sdc_track_index`, `tracks_to_predict` ([{track_index, ...}]:
  is_modeled) and `objects_of_interest` (object ids). Without `sdc_track_index` the SDC
  is the last object, the format's own convention.
- the scenario id: `scenario_id`, else `name` without its suffix, else the file stem.

Heading units. Newer files store `heading` in radians; older ones (the Nocturne lineage
of the format) in degrees, with nothing in the file that says which: 9 of the 18 real
WOMD scenes in `shared/data/gpudrive` are in degrees. Read as radians, a degree heading
turns every box at random (boxes overlap and leave the road, the log "fails"), so the
unit is decided per file from the data (`heading_unit`): the heading is compared with
the direction of the logged velocity at every valid step where the object moves faster
than HEADING_CHECK_SPEED, and the unit whose median angular error is smaller wins (in
the degree files here it is under 0.01 rad for degrees and 0.1-1.5 rad for radians);
with fewer than HEADING_CHECK_MIN_STEPS such steps a heading of magnitude beyond 2 pi + 0.01
means degrees. Headings are converted to radians on load, and the load info reports the
decision (`heading_unit`, `heading_error_rad`, `heading_error_deg`, `heading_steps`).

The format carries no timestamps (steps are 0.1 s apart) and no stop-sign -> lane links.
Bad input raises `DataError` naming the file and the field (`objects[3].heading`,
`roads[12].geometry`, `tl_states['236'].state`, ...).
"""

from __future__ import annotations

import contextlib
import gc
import gzip
import itertools
import json
import operator
import os
import pathlib
import zlib

import numpy as np

from jaxloop.data.common import LoadConfig, RawLog, build_scenario
from jaxloop.data.errors import DataError
from jaxloop.data.mapcompile import RawRoadgraph
from jaxloop.sim.datatypes import (RG_CROSSWALK, RG_ROAD_EDGE_BOUNDARY, RG_ROAD_LINE_MIN, RG_SPEED_BUMP,
                                   RG_STOP_SIGN, RG_SURFACE_LANE, SYNTHETIC_ID, TYPE_CYCLIST, TYPE_OTHER,
                                   TYPE_PEDESTRIAN, TYPE_VEHICLE, Scenario)

import orjson  # 3-4x faster than the stdlib decoder on these multi-MB scenes: decoding dominates reading

FORMAT = "gpudrive"
SUFFIXES = (".json", ".json.gz")
INIT_STEPS = 11  # WOMD scenes: 10 past steps + the current one initialise an episode
CURRENT_INDEX = INIT_STEPS - 1
STEP_MICROS = 100_000  # 10 Hz
TYPE_MAP = {"vehicle": TYPE_VEHICLE, "pedestrian": TYPE_PEDESTRIAN, "cyclist": TYPE_CYCLIST}
# Box height (m) when a file has none: the medians of the heights logged in the GPUDrive
# example scenes that carry them (vehicle 1.65, pedestrian 1.72, cyclist 1.78), rounded.
DEFAULT_HEIGHT = {TYPE_VEHICLE: 1.6, TYPE_PEDESTRIAN: 1.7, TYPE_CYCLIST: 1.7, TYPE_OTHER: 1.0}
TL_STATES = {"unknown": 0, "arrow_stop": 1, "arrow_caution": 2, "arrow_go": 3, "stop": 4, "caution": 5, "go": 6,
             "flashing_stop": 7, "flashing_caution": 8}
# map_element_id values that are roadgraph point types (DESIGN.md); 0 is "lane, type undefined".
_RG_CODES = frozenset((1, 2, 3, *range(6, 14), 15, 16, 17, 18, 19))
# Files without map_element_id: the road `type` string alone. A painted line of unknown
# paint is the first road-line code (road lines only matter as "not a lane / edge").
ROAD_TYPE_FALLBACK = {"lane": RG_SURFACE_LANE, "road_line": RG_ROAD_LINE_MIN, "road_edge": RG_ROAD_EDGE_BOUNDARY,
                      "stop_sign": RG_STOP_SIGN, "crosswalk": RG_CROSSWALK, "speed_bump": RG_SPEED_BUMP}


def is_gpudrive_path(path: str | os.PathLike) -> bool:
    name = pathlib.Path(path).name
    return name.endswith(SUFFIXES)


def scene_stem(path: str | os.PathLike) -> str:
    name = pathlib.Path(path).name
    for suffix in (".json.gz", ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return pathlib.Path(name).stem


def read_scene(path: str | os.PathLike) -> dict:
    """The decoded JSON object of a `.json` / `.json.gz` scene file; `DataError` when unreadable."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"cannot read ({e.strerror or e})", file=source) from None
    if data[:2] == b"\x1f\x8b":  # gzip magic, whatever the name says
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"corrupt or truncated gzip stream ({e})", file=source, field="gzip") from None
    try:
        scene = orjson.loads(data)
    except ValueError as e:  # json.JSONDecodeError, orjson.JSONDecodeError and bad UTF-8 are ValueErrors
        where = f" at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
        raise DataError(f"not valid JSON{where} (truncated or corrupt file?): {getattr(e, 'msg', e)}", file=source,
                        field="json") from None
    if not isinstance(scene, dict):
        raise DataError(f"expected a JSON object at the top level, got {type(scene).__name__}", file=source,
                        field="(top level)")
    return scene


def _fail(source: str, field: str, message: str) -> DataError:
    return DataError(message, file=source or None, field=field)


def _get(obj: dict, key: str, where: str, source: str, kind: type | tuple[type, ...]):
    if key not in obj:
        raise _fail(source, f"{where}.{key}" if where else key, "missing field")
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):  # bool is an int subtype
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise _fail(source, f"{where}.{key}" if where else key, f"expected {names}, got {type(value).__name__}")
    return value


def _steps(obj: dict, key: str, i: int, t_len: int, source: str) -> list:
    value = _get(obj, key, f"objects[{i}]", source, list)
    if len(value) != t_len:
        raise _fail(source, f"objects[{i}].{key}", f"has {len(value)} steps, expected {t_len} (as objects[0].position)")
    return value


_X, _Y = operator.itemgetter("x"), operator.itemgetter("y")
_Z_KEY, _ZERO = itertools.repeat("z"), itertools.repeat(0.0)
_NUMERIC = frozenset((float, int))  # np.fromiter would quietly parse strings and turn None into NaN
_ID_MAX = 2 ** 31 - 1  # ids are stored as int32; negative ids are reserved (-1 padding, SYNTHETIC_ID)


def _split_xyz(points: list, xs: list, ys: list, zs: list | None) -> None:
    """Appends the x, y (and, with `zs`, z; 0 where a file leaves it out) of `points` to the lists.

    One C-level `map` per coordinate: much cheaper than a tuple per point. The points are
    dicts once x and y are read (`dict.get` reads z).
    """
    xs.extend(map(_X, points))
    ys.extend(map(_Y, points))
    if zs is None:
        return
    zs.extend(map(dict.get, points, _Z_KEY, _ZERO))  # some exporters leave z out: 0


def _first_non_number(flat: list) -> int | None:
    """Index of the first value of `flat` that is not an int or float (bool is not a number here), or None."""
    if _NUMERIC.issuperset(map(type, flat)):
        return None
    return next(k for k, v in enumerate(flat) if type(v) not in _NUMERIC)


def _numbers(columns: tuple[list, ...], shape: tuple) -> tuple[np.ndarray, ...]:
    """Equal-length flat lists -> float64 arrays of `shape`.

    ValueError(point, message) for the first non-number in point-major order (all of a
    point's coordinates before the next point's), as the lists interleave in the file.
    """
    bad = [(k, c) for c, flat in enumerate(columns) if (k := _first_non_number(flat)) is not None]
    if bad:
        k, c = min(bad)
        raise ValueError(k, f"expected a number, got {columns[c][k]!r}")
    return tuple(np.fromiter(flat, np.float64, len(flat)).reshape(shape) for flat in columns)


_SERIES = {"position": "{x, y, z} points", "velocity": "{x, y} vectors", "heading": "numbers", "valid": "booleans"}


def _object_id(o: dict, i: int, source: str) -> int:
    obj_id = o.get("id", i)
    if not isinstance(obj_id, int) or isinstance(obj_id, bool):
        raise _fail(source, f"objects[{i}].id", f"expected an integer id, got {obj_id!r}")
    if not 0 <= obj_id <= _ID_MAX:
        raise _fail(source, f"objects[{i}].id", f"id {obj_id} outside [0, {_ID_MAX}] (ids are int32; negative ids are "
                    f"reserved: -1 marks padding, {SYNTHETIC_ID} injected objects)")
    return obj_id


def _objects(scene: dict, source: str):
    objects = _get(scene, "objects", "", source, list)
    if not objects:
        raise _fail(source, "objects", "no objects")
    first = objects[0]
    if not isinstance(first, dict):
        raise _fail(source, "objects[0]", f"expected an object, got {type(first).__name__}")
    t_len = len(_get(first, "position", "objects[0]", source, list))
    if t_len == 0:
        raise _fail(source, "objects[0].position", "no steps")
    n = len(objects)
    # Flat Python lists filled object by object, converted to arrays once: much cheaper
    # than one small numpy conversion per object and step.
    px: list = []
    py: list = []
    pz: list = []
    vx: list = []
    vy: list = []
    yaw: list = []
    valid: list = []
    box = np.empty((n, 3), np.float64)  # length, width, height
    types = np.empty((n,), np.int32)
    ids = np.empty((n,), np.int64)
    for i, o in enumerate(objects):
        if not isinstance(o, dict):
            raise _fail(source, f"objects[{i}]", f"expected an object, got {type(o).__name__}")
        field = "position"
        try:
            _split_xyz(_steps(o, "position", i, t_len, source), px, py, pz)
            field = "velocity"
            _split_xyz(_steps(o, "velocity", i, t_len, source), vx, vy, None)
            field = "heading"
            yaw.extend(_steps(o, "heading", i, t_len, source))
            field = "valid"
            valid.extend(_steps(o, "valid", i, t_len, source))
        except DataError:
            raise
        except (KeyError, TypeError, AttributeError) as e:
            detail = f"missing key {e}" if isinstance(e, KeyError) else str(e)
            raise _fail(source, f"objects[{i}].{field}", f"expected a list of {t_len} {_SERIES[field]} ({detail})") \
                from None
        kind = o.get("type")
        if not isinstance(kind, str):
            raise _fail(source, f"objects[{i}].type", f"expected a type string, got {kind!r}")
        types[i] = TYPE_MAP.get(kind, TYPE_OTHER)
        for k, key in enumerate(("length", "width", "height")):
            if key == "height" and key not in o:
                box[i, k] = DEFAULT_HEIGHT[int(types[i])]
                continue
            box[i, k] = _get(o, key, f"objects[{i}]", source, (int, float))
        ids[i] = _object_id(o, i, source)
    arrays = {}
    for field, columns in (("position", (px, py, pz)), ("velocity", (vx, vy)), ("heading", (yaw,))):
        try:
            arrays[field] = _numbers(columns, (n, t_len))
        except ValueError as e:
            bad, why = e.args
            raise _fail(source, f"objects[{bad // t_len}].{field}", f"step {bad % t_len}: {why}") from None
    flags = np.array(valid)
    if flags.dtype != bool:
        bad = next(k for k, v in enumerate(valid) if type(v) is not bool)
        raise _fail(source, f"objects[{bad // t_len}].valid", f"expected a list of {t_len} booleans, got "
                    f"{valid[bad]!r} at step {bad % t_len}")
    return (arrays["position"], arrays["velocity"], arrays["heading"][0], flags.reshape(n, t_len), box, types,
            ids)


def _road_code(road: dict, j: int, source: str) -> int | None:
    """The roadgraph point type of road `j`, or None when it is not part of the layout (driveways)."""
    kind = road.get("type")
    if not isinstance(kind, str):
        raise _fail(source, f"roads[{j}].type", f"expected a type string, got {kind!r}")
    if "map_element_id" in road:
        code = road["map_element_id"]
        if not isinstance(code, int) or isinstance(code, bool):
            raise _fail(source, f"roads[{j}].map_element_id", f"expected an integer WOMD roadgraph code, got {code!r}")
        if code in _RG_CODES:
            return code
        if code == 0 and kind == "lane":  # lane of undefined type
            return RG_SURFACE_LANE
        return None if kind not in ROAD_TYPE_FALLBACK or code == 20 else ROAD_TYPE_FALLBACK[kind]
    return ROAD_TYPE_FALLBACK.get(kind)


def _roadgraph(scene: dict, source: str) -> RawRoadgraph:
    roads = _get(scene, "roads", "", source, list)
    xs: list = []
    ys: list = []
    zs: list = []
    counts, codes, ids, firsts = [], [], [], []  # per kept road with points
    for j, road in enumerate(roads):
        if not isinstance(road, dict):
            raise _fail(source, f"roads[{j}]", f"expected an object, got {type(road).__name__}")
        code = _road_code(road, j, source)
        if code is None:
            continue
        geometry = _get(road, "geometry", f"roads[{j}]", source, (list, dict))
        if isinstance(geometry, dict):  # a single point (stop signs of some exporters)
            geometry = [geometry]
        start = len(xs)
        try:
            _split_xyz(geometry, xs, ys, zs)
        except (KeyError, TypeError, AttributeError) as e:
            detail = f"missing key {e}" if isinstance(e, KeyError) else str(e)
            raise _fail(source, f"roads[{j}].geometry", f"expected a list of {{x, y, z}} points ({detail})") from None
        road_id = road.get("id", j)
        if not isinstance(road_id, int) or isinstance(road_id, bool):
            raise _fail(source, f"roads[{j}].id", f"expected an integer id, got {road_id!r}")
        if geometry:
            counts.append(len(xs) - start)
            codes.append(code)
            ids.append(road_id)
            firsts.append(j)
    if not xs:
        z = np.zeros((0, 3))
        return RawRoadgraph(xyz=z, dir=z, types=np.zeros(0), ids=np.zeros(0), valid=np.zeros(0, bool))
    try:
        xyz = np.stack(_numbers((xs, ys, zs), (-1,)), -1)
    except ValueError as e:
        bad, why = e.args
        run = int(np.searchsorted(np.cumsum(counts), bad, side="right"))
        raise _fail(source, f"roads[{firsts[run]}].geometry", f"point {bad - sum(counts[:run])}: {why}") from None
    counts_a = np.asarray(counts)
    run = np.repeat(np.arange(counts_a.shape[0]), counts_a)
    d = np.zeros_like(xyz)
    d[:-1] = xyz[1:] - xyz[:-1]
    same = np.zeros(xyz.shape[0], bool)
    same[:-1] = run[1:] == run[:-1]
    norm = np.linalg.norm(d, axis=-1, keepdims=True)
    d = np.where(same[:, None] & (norm > 1e-9), d / np.maximum(norm, 1e-9), 0.0)
    return RawRoadgraph(xyz=xyz, dir=d, types=np.repeat(np.asarray(codes, np.int32), counts_a),
                        ids=np.repeat(np.asarray(ids, np.int64), counts_a).astype(np.int32),
                        valid=np.ones(xyz.shape[0], bool))


def _lights(scene: dict, t_len: int, source: str):
    tl = scene.get("tl_states", {})
    if tl is None:
        tl = {}
    if not isinstance(tl, dict):
        raise _fail(source, "tl_states", f"expected an object keyed by lane id, got {type(tl).__name__}")
    width = len(tl)
    lane_ids = np.full((t_len, width), -1, np.int64)
    state = np.zeros((t_len, width), np.int32)
    xy = np.zeros((t_len, width, 2), np.float64)
    valid = np.zeros((t_len, width), bool)
    for k, (key, entry) in enumerate(tl.items()):
        where = f"tl_states[{key!r}]"
        if not isinstance(entry, dict):
            raise _fail(source, where, f"expected an object, got {type(entry).__name__}")
        states = _get(entry, "state", where, source, list)
        m = len(states)
        cols = {}
        for name in ("x", "y", "time_index", "lane_id"):
            if name not in entry:
                continue
            col = _get(entry, name, where, source, list)
            if len(col) != m:
                raise _fail(source, f"{where}.{name}", f"has {len(col)} entries, {where}.state has {m}")
            cols[name] = col
        for name in ("x", "y"):
            if name not in cols:
                raise _fail(source, f"{where}.{name}", "missing field")
        try:
            codes = [s if type(s) is int and 0 <= s <= 8 else TL_STATES[s] for s in states]
        except (KeyError, TypeError):
            bad = next(s for s in states if not (type(s) is int and 0 <= s <= 8) and s not in TL_STATES)
            raise _fail(source, f"{where}.state", f"unknown light state {bad!r}; expected one of "
                        f"{sorted(TL_STATES)}") from None
        try:
            steps = np.asarray(cols.get("time_index", range(m)), np.int64).reshape(m)
            if "lane_id" in cols:
                lanes = np.asarray(cols["lane_id"], np.int64).reshape(m)
            else:
                lanes = np.full(m, int(key), np.int64)
            px = np.asarray(cols["x"], np.float64).reshape(m)
            py = np.asarray(cols["y"], np.float64).reshape(m)
        except (TypeError, ValueError) as e:
            raise _fail(source, where, f"expected numeric time_index / lane_id / x / y lists and, without lane_id, "
                        f"an integer key ({e})") from None
        if m and (steps.min() < 0 or steps.max() >= t_len):
            raise _fail(source, f"{where}.time_index", f"steps {int(steps.min())}..{int(steps.max())} outside the "
                        f"scene's {t_len} steps")
        lane_ids[steps, k] = lanes
        state[steps, k] = codes
        xy[steps, k, 0] = px
        xy[steps, k, 1] = py
        valid[steps, k] = True
    return lane_ids, state, xy, valid


HEADING_CHECK_SPEED = 1.0  # m/s: slower steps say little about the direction of travel
HEADING_CHECK_MIN_STEPS = 20  # moving valid steps needed to decide the unit from the velocity


def _wrapped_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs((a - b + np.pi) % (2 * np.pi) - np.pi)


def heading_unit(yaw: np.ndarray, vel: np.ndarray, valid: np.ndarray) -> tuple[str, dict]:
    """"rad" or "deg" for a file's headings `[n, T]`, from the logged velocities `[2, n, T]` (see the module
    docstring), and the evidence: the median wrapped error against the velocity direction under each unit (NaN
    without moving steps) and the number of moving steps."""
    speed = np.hypot(vel[0], vel[1])
    moving = valid & (speed > HEADING_CHECK_SPEED)
    direction = np.arctan2(vel[1], vel[0])[moving]
    h = yaw[moving]
    err_rad = float(np.median(_wrapped_error(h, direction))) if h.size else float("nan")
    err_deg = float(np.median(_wrapped_error(np.deg2rad(h), direction))) if h.size else float("nan")
    if h.size >= HEADING_CHECK_MIN_STEPS:
        unit = "deg" if err_deg < err_rad else "rad"
    else:
        unit = "deg" if valid.any() and np.abs(yaw[valid]).max() > 2 * np.pi + 0.01 else "rad"
    return unit, {"heading_unit": unit, "heading_error_rad": round(err_rad, 4), "heading_error_deg": round(err_deg, 4),
                  "heading_steps": int(h.size)}


def scene_to_raw(scene: dict, source: str = "") -> RawLog:
    """A decoded scene (`read_scene`) -> `RawLog` for `build_scenario`; `DataError` on bad fields.

    Headings in degrees (`heading_unit`) are converted to radians."""
    pos, vel, yaw, valid, box, types, ids = _objects(scene, source)
    unit, notes = heading_unit(yaw, vel, valid)
    if unit == "deg":
        yaw = np.where(valid, np.deg2rad(yaw), yaw)
    n, t_len = valid.shape
    metadata = scene.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise _fail(source, "metadata", f"expected an object, got {type(metadata).__name__}")
    metadata = metadata or {}
    sdc_index = metadata.get("sdc_track_index", n - 1)
    sdc_field = "metadata.sdc_track_index" if "sdc_track_index" in metadata else "objects (the SDC is the last)"
    if not isinstance(sdc_index, int) or isinstance(sdc_index, bool) or not 0 <= sdc_index < n:
        raise _fail(source, "metadata.sdc_track_index", f"expected an object index in [0, {n}), got {sdc_index!r}")
    is_sdc = np.zeros(n, bool)
    is_sdc[sdc_index] = True
    modeled = np.zeros(n, bool)
    for j, req in enumerate(metadata.get("tracks_to_predict") or []):
        index = req.get("track_index") if isinstance(req, dict) else req
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < n:
            raise _fail(source, f"metadata.tracks_to_predict[{j}].track_index",
                        f"expected an object index in [0, {n}), got {index!r}")
        modeled[index] = True
    interest = metadata.get("objects_of_interest") or []
    if not isinstance(interest, list) or not all(isinstance(v, int) for v in interest):
        raise _fail(source, "metadata.objects_of_interest", f"expected a list of object ids, got {interest!r}")
    ooi = np.isin(ids, np.asarray(interest, np.int64))

    traj = {"x": pos[0], "y": pos[1], "z": pos[2], "vel_x": vel[0], "vel_y": vel[1],
            "yaw": yaw, "valid": valid,
            "timestamp_micros": np.broadcast_to(np.arange(t_len, dtype=np.int64) * STEP_MICROS, (n, t_len))}
    for k, key in enumerate(("length", "width", "height")):
        traj[key] = np.broadcast_to(box[:, k:k + 1], (n, t_len))
    lane_ids, state, light_xy, light_valid = _lights(scene, t_len, source)

    sid = scene.get("scenario_id")
    if not isinstance(sid, str) or not sid:
        name = scene.get("name")
        sid = scene_stem(name) if isinstance(name, str) and name else scene_stem(source) if source else ""
    json_name = {"x": "position.x", "y": "position.y", "z": "position.z", "vel_x": "velocity.x",
                 "vel_y": "velocity.y", "yaw": "heading", "length": "length", "width": "width", "height": "height",
                 "valid": "valid"}
    return RawLog(
        traj=traj, ids=ids.astype(np.int32), types=types, is_sdc=is_sdc, is_modeled=modeled, objects_of_interest=ooi,
        roadgraph=_roadgraph(scene, source), light_lane_ids=lane_ids, light_state=state, light_xy=light_xy,
        light_valid=light_valid, current_index=min(CURRENT_INDEX, t_len - 1), scenario_id=sid,
        field_name=lambda f, t: f"objects[*].{json_name[f]}[{t}]", sdc_field=sdc_field, objects_field="objects",
        notes=notes)


@contextlib.contextmanager
def _collector_paused():
    """Pauses the cyclic garbage collector for the block (unless it is off already).

    Decoding a scene creates some 30,000 containers that all live until it is converted;
    each collection the allocations trigger would walk them again for nothing (they hold
    no cycles, and reference counting frees them).
    """
    was_on = gc.isenabled()
    if was_on:
        gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def load_gpudrive(path: str | os.PathLike, config: LoadConfig = LoadConfig()) -> tuple[Scenario, dict]:
    """One GPUDrive / PufferDrive JSON scene file -> (Scenario, info); `DataError` on bad input."""
    source = os.fspath(path)
    with _collector_paused():
        raw = scene_to_raw(read_scene(source), source)
    scenario, info = build_scenario(raw, config, source=source, fmt=FORMAT)
    info["init_steps"] = INIT_STEPS
    return scenario, info
