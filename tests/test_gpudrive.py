"""GPUDrive / PufferDrive JSON scenes: the real example scenes, bad copies, the format registry and selection."""

import copy
import gzip
import json
import math
import pathlib
import shutil
import warnings

import numpy as np
import pytest

from jaxloop.data import formats
from jaxloop.data.sources import detect_format, expand_sources, iter_raw
from jaxloop.data.common import LoadConfig
from jaxloop.data.errors import DataError, SkipReport
from jaxloop.data.gpudrive import (DEFAULT_HEIGHT, TL_STATES, TYPE_MAP, _road_code, load_gpudrive, read_scene,
                                  scene_to_raw)
from jaxloop.data.sources import load_source
from jaxloop.sim.datatypes import SYNTHETIC_ID, TYPE_OTHER

NUM_SCENES = 18
WITH_METADATA = "tfrecord-00000-of-00150_2af8a17d6cee3f8.json"  # metadata, lane_id lists, 100 objects, 14 lights
OLD_LIGHTS = "tfrecord-00001-of-00150_c9bbd79edc48bbcb.json"  # no metadata, lights keyed by lane id, partial steps
OLD_FORMAT = "tfrecord-00001-of-01000_307.json"  # no ids, heights, z, map_element_id or scenario_id
INTEREST = "tfrecord-00000-of-00150_b065dcb23730589b.json"  # 49 objects, tracks_to_predict + objects_of_interest


@pytest.fixture(scope="module")
def scene_dir(shared_data) -> pathlib.Path:
    return shared_data / "gpudrive"


def _quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kw)


def _expected_lights(scene: dict, t_len: int):
    """Per step, the (lane id, state code, x, y) of every listed light entry in file order."""
    per_step = [[] for _ in range(t_len)]
    for key, entry in scene["tl_states"].items():
        steps = entry.get("time_index", range(len(entry["state"])))
        for k, t in enumerate(steps):
            lane = entry["lane_id"][k] if "lane_id" in entry else int(key)
            per_step[t].append((lane, TL_STATES[entry["state"][k]], entry["x"][k], entry["y"][k]))
    return per_step


@pytest.mark.parametrize("name,unit", [(WITH_METADATA, "rad"), (OLD_LIGHTS, "deg")])
def test_scene_matches_its_json(scene_dir, name, unit):
    path = scene_dir / name
    scene = json.loads(path.read_text())
    scenario, info = _quiet(load_gpudrive, path)
    objects = scene["objects"]
    n, t_len = len(objects), len(objects[0]["position"])
    traj, meta = scenario.log_trajectory, scenario.object_metadata
    # Fewer objects than slots: slot i is objects[i].
    sdc = scene.get("metadata", {}).get("sdc_track_index", n - 1)
    assert info["sdc_index"] == sdc and int(np.flatnonzero(meta.is_sdc)[0]) == sdc
    valid = np.array([o["valid"] for o in objects], bool)
    np.testing.assert_array_equal(traj.valid[:n], valid)
    assert not traj.valid[n:].any()
    assert int(traj.valid.sum()) == int(valid.sum())
    x = np.array([[p["x"] for p in o["position"]] for o in objects])
    y = np.array([[p["y"] for p in o["position"]] for o in objects])
    yaw = np.array([o["heading"] for o in objects])
    assert info["heading_unit"] == unit
    yaw = np.deg2rad(yaw) if unit == "deg" else yaw
    vx = np.array([[v["x"] for v in o["velocity"]] for o in objects])
    # float32 slots: about 1e-4 relative at coordinates of a few thousand metres.
    np.testing.assert_allclose(traj.x[:n][valid], x[valid], atol=2e-3)
    np.testing.assert_allclose(traj.y[:n][valid], y[valid], atol=2e-3)
    np.testing.assert_allclose(traj.yaw[:n][valid], yaw[valid], atol=1e-5)
    np.testing.assert_allclose(traj.vel_x[:n][valid], vx[valid], atol=1e-4)
    lengths = np.broadcast_to(np.array([o["length"] for o in objects])[:, None], valid.shape)
    np.testing.assert_allclose(traj.length[:n][valid], lengths[valid], rtol=1e-6)
    assert (traj.x[:n][~valid] == 0).all()  # placeholders (-10000 / 0) never reach the scenario
    types = [TYPE_MAP.get(o["type"], TYPE_OTHER) for o in objects]
    np.testing.assert_array_equal(meta.object_types[:n], types)
    ttp = {r["track_index"] for r in scene.get("metadata", {}).get("tracks_to_predict", [])}
    assert set(np.flatnonzero(meta.is_modeled).tolist()) == ttp

    tl = scenario.traffic_lights
    expected = _expected_lights(scene, t_len)
    assert max(len(e) for e in expected) > 0
    for t in range(t_len):
        got = [(int(tl.lane_ids[j, t]), int(tl.state[j, t]), float(tl.x[j, t]), float(tl.y[j, t]))
               for j in range(tl.valid.shape[0]) if tl.valid[j, t]]
        assert [g[:2] for g in got] == [e[:2] for e in expected[t]], f"step {t}"
        np.testing.assert_allclose(np.reshape([g[2:] for g in got], (-1, 2)),
                                   np.reshape([e[2:] for e in expected[t]], (-1, 2)), atol=2e-3)
    assert info["scenario_id"] == scene["scenario_id"] and info["format"] == "gpudrive" and info["init_steps"] == 11


def test_old_files_default_heights_ids_and_road_types(scene_dir):
    path = scene_dir / OLD_FORMAT
    scene = json.loads(path.read_text())
    assert "height" not in scene["objects"][0] and "map_element_id" not in scene["roads"][0]
    scenario, info = _quiet(load_gpudrive, path)
    n = len(scene["objects"])
    heights = [DEFAULT_HEIGHT[TYPE_MAP.get(o["type"], TYPE_OTHER)] for o in scene["objects"]]
    height = scenario.log_trajectory.height[:n].max(axis=1)  # zero at invalid steps
    np.testing.assert_allclose(height, heights)
    np.testing.assert_array_equal(scenario.object_metadata.ids[:n], np.arange(n))  # no ids: the object index
    assert info["scenario_id"] == path.stem  # `name` is the file name
    # Roads typed by their `type` string alone still compile to lanes and edges.
    assert scenario.roadmap.lane_valid.any() and scenario.roadmap.edge_valid.any()


def test_all_scenes_load_from_directory_and_glob(scene_dir):
    scenarios, infos = _quiet(load_source, str(scene_dir))
    assert len(infos) == NUM_SCENES == len(list(scene_dir.glob("*.json")))
    assert scenarios.log_trajectory.x.shape[:1] == (NUM_SCENES,)
    assert {i["format"] for i in infos} == {"gpudrive"} and {i["init_steps"] for i in infos} == {11}
    assert formats.init_steps_of(infos) == 11
    # Every SDC is valid at the current step (index 10) and is the 5.29 m x 2.33 m box of the README.
    sdc = np.argmax(scenarios.object_metadata.is_sdc, axis=1)
    rows = np.arange(NUM_SCENES)
    assert scenarios.log_trajectory.valid[rows, sdc, 10].all()
    np.testing.assert_allclose(scenarios.log_trajectory.length[rows, sdc, 10], 5.286, atol=0.01)
    _, glob_infos = _quiet(load_source, str(scene_dir / "tfrecord-00000-*.json"))
    expected = sorted(p.name for p in scene_dir.glob("tfrecord-00000-*.json"))
    assert [pathlib.Path(i["source"]).name for i in glob_infos] == expected and len(expected) == 6
    # Several sources joined by commas: one set, in order.
    _, both = _quiet(load_source, f"{scene_dir / WITH_METADATA},{scene_dir / OLD_FORMAT}")
    assert [pathlib.Path(i["source"]).name for i in both] == [WITH_METADATA, OLD_FORMAT]


def test_gzip_copy_loads_identically(scene_dir, tmp_path):
    src = scene_dir / WITH_METADATA
    gz = tmp_path / (src.name + ".gz")
    gz.write_bytes(gzip.compress(src.read_bytes()))
    assert detect_format(gz) == "gpudrive"
    a, info_a = _quiet(load_gpudrive, src)
    b, info_b = _quiet(load_gpudrive, gz)
    import jax
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    assert info_a["scenario_id"] == info_b["scenario_id"]


def _write(tmp_path, scene: dict, name: str) -> pathlib.Path:
    path = tmp_path / name
    path.write_text(json.dumps(scene))
    return path


@pytest.fixture(scope="module")
def scene(scene_dir) -> dict:
    return json.loads((scene_dir / WITH_METADATA).read_text())


def _edited(scene, edit):
    copy = json.loads(json.dumps(scene))
    edit(copy)
    return copy


@pytest.mark.parametrize("edit, field, reason", [
    (lambda s: s["objects"][3].pop("heading"), "objects[3].heading", "missing field"),
    (lambda s: s.pop("roads"), "roads", "missing field"),
    (lambda s: s["objects"][2]["valid"].pop(), "objects[2].valid", "has 90 steps, expected 91"),
    (lambda s: s["objects"][5]["position"][7].update(x="12.5"), "objects[5].position", "expected a number"),
    (lambda s: s["objects"][4].update(valid=[1.5] * 91), "objects[4].valid", "booleans"),
    (lambda s: s["objects"][1]["velocity"][0].pop("y"), "objects[1].velocity", "missing key 'y'"),
    (lambda s: s["roads"][6]["geometry"][2].update(y=None), "roads[6].geometry", "point 2: expected a number"),
    (lambda s: s["roads"][3].update(map_element_id="lane"), "roads[3].map_element_id", "integer"),
    (lambda s: s["objects"][0].update(width="wide"), "objects[0].width", "expected int or float"),
    (lambda s: s["metadata"].update(sdc_track_index=500), "metadata.sdc_track_index", r"\[0, 100\)"),
    (lambda s: next(iter(s["tl_states"].values()))["state"].__setitem__(3, "purple"), "tl_states['174'].state",
     "unknown light state 'purple'"),
    (lambda s: next(iter(s["tl_states"].values()))["time_index"].__setitem__(0, 91), "tl_states['174'].time_index",
     "outside"),
])
def test_bad_fields_name_file_and_field(scene, tmp_path, edit, field, reason):
    path = _write(tmp_path, _edited(scene, edit), "bad.json")
    with pytest.raises(DataError, match=reason) as e:
        _quiet(load_gpudrive, path)
    assert e.value.file == str(path) and e.value.field == field
    assert str(path) in str(e.value) and field in str(e.value)


def test_truncated_and_corrupt_files(scene_dir, tmp_path):
    data = (scene_dir / OLD_FORMAT).read_bytes()
    truncated = tmp_path / "truncated.json"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"not valid JSON at line \d+ column \d+") as e:
        load_gpudrive(truncated)
    assert e.value.file == str(truncated) and e.value.field == "json"
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_bytes(b"\x00\x17garbage" + data[100:])
    with pytest.raises(DataError, match="not valid JSON") as e:
        load_gpudrive(corrupt)
    assert e.value.file == str(corrupt)
    bad_gz = tmp_path / "cut.json.gz"
    bad_gz.write_bytes(gzip.compress(data)[:-40])
    with pytest.raises(DataError, match="gzip") as e:
        load_gpudrive(bad_gz)
    assert e.value.file == str(bad_gz) and e.value.field == "gzip"
    array = tmp_path / "array.json"
    array.write_text("[1, 2]")
    with pytest.raises(DataError, match="expected a JSON object at the top level"):
        load_gpudrive(array)


def test_skip_invalid_counts_the_bad_file(scene_dir, tmp_path):
    for name in (WITH_METADATA, OLD_FORMAT):
        shutil.copy(scene_dir / name, tmp_path / name)
    (tmp_path / "broken.json").write_text('{"objects": [')
    (tmp_path / "README.md").write_text("not a scene")  # not of a known format: left out of the directory
    paths = expand_sources([str(tmp_path)])
    assert [p.name for p in paths] == sorted(["broken.json", WITH_METADATA, OLD_FORMAT])
    with pytest.raises(DataError, match="broken.json"):
        _quiet(lambda: [s for p in paths for s in iter_raw(p, LoadConfig(), False, SkipReport())])
    report = SkipReport()
    kept = _quiet(lambda: [info for p in paths for _, info in iter_raw(p, LoadConfig(), True, report)])
    assert report.count == 1 and "broken.json" in report.skipped[0] and report.reasons["json"] == 1
    assert sorted(pathlib.Path(i["source"]).name for i in kept) == sorted([WITH_METADATA, OLD_FORMAT])


def test_init_steps_per_source(shared_data, scene_dir):
    assert {f.name: f.init_steps for f in formats.FORMATS if not f.companion} == {"womd": 11, "av2": 50,
                                                                                  "gpudrive": 11}
    _, womd = _quiet(load_source, str(shared_data / "womd" / "motion_data_one_scenario.tfrecord"))
    _, av2 = _quiet(load_source, str(next((shared_data / "av2").glob("scenario_*.parquet"))))
    _, gpu = _quiet(load_source, str(scene_dir / OLD_FORMAT))
    assert [i["init_steps"] for i in womd + av2 + gpu] == [11, 50, 11]
    assert formats.init_steps_of(womd + gpu) == 11 and formats.init_steps_of(av2) == 50
    with pytest.raises(ValueError, match="different steps"):
        formats.init_steps_of(womd + av2)
    # Infos of caches written before infos carried init_steps are placed by their format.
    assert formats.init_steps_of([{"format": "av2"}]) == 50
    assert formats.init_steps_of([{"format": "womd_tf_example"}, {"format": "procedural"}]) == 11


def test_more_objects_than_slots_keeps_sdc_and_scored_tracks(scene_dir):
    path = scene_dir / INTEREST
    scene = json.loads(path.read_text())
    meta_json = scene["metadata"]
    n_slots = 8
    ids = [o["id"] for o in scene["objects"]]
    must = {ids[meta_json["sdc_track_index"]]} | {ids[r["track_index"]] for r in meta_json["tracks_to_predict"]}
    must |= set(meta_json["objects_of_interest"])
    assert len(must) <= n_slots < len(ids)
    with pytest.raises(DataError, match="objects but LoadConfig.num_objects=8"):
        load_source(str(path), num_objects=n_slots, select="error")
    with pytest.warns(UserWarning, match=r"49 objects for 8 slots; dropped the 41 farthest"):
        scenarios, infos = load_source(str(path), num_objects=n_slots)  # raw sources select by default
    kept = set(scenarios.object_metadata.ids[0].tolist())
    assert must <= kept and len(kept) == n_slots
    assert infos[0]["dropped_objects"] == len(ids) - n_slots and infos[0]["num_objects_raw"] == len(ids)
    sdc = int(np.argmax(scenarios.object_metadata.is_sdc[0]))
    assert scenarios.object_metadata.ids[0, sdc] == ids[meta_json["sdc_track_index"]]
    assert int(scenarios.object_metadata.is_modeled[0].sum()) == len(meta_json["tracks_to_predict"])
    # The rest of the slots go to the nearest of the others at the current step.
    x = np.array([o["position"][10]["x"] for o in scene["objects"]])
    y = np.array([o["position"][10]["y"] for o in scene["objects"]])
    v = np.array([o["valid"][10] for o in scene["objects"]])
    s = meta_json["sdc_track_index"]
    d = np.where(v, np.hypot(x - x[s], y - y[s]), np.inf)
    others = [i for i in np.argsort(d, kind="stable") if ids[i] not in must]
    assert {ids[i] for i in others[: n_slots - len(must)]} <= kept


@pytest.mark.parametrize("bad_id, why", [(-2, "reserved"), (-1, "reserved"), (2 ** 31, r"outside \[0, 2147483647\]")])
def test_reserved_or_out_of_range_object_ids_are_rejected(scene, tmp_path, bad_id, why):
    # -1 marks padding slots and -2 (SYNTHETIC_ID) injected objects; ids are stored as int32.
    assert SYNTHETIC_ID == -2
    path = _write(tmp_path, _edited(scene, lambda s: s["objects"][3].update(id=bad_id)), "bad_id.json")
    with pytest.raises(DataError, match=why) as e:
        _quiet(load_gpudrive, path)
    assert e.value.file == str(path) and e.value.field == "objects[3].id"


def test_raw_arrays_match_a_per_point_parse(scene_dir):
    """The vectorised field extraction against a point-by-point reading of every example scene, exactly."""
    for path in sorted(scene_dir.glob("*.json")):
        scene = read_scene(path)
        raw = scene_to_raw(scene, str(path))
        objects = scene["objects"]
        for field, series, key in (("x", "position", "x"), ("y", "position", "y"), ("z", "position", "z"),
                                   ("vel_x", "velocity", "x"), ("vel_y", "velocity", "y")):
            expected = np.array([[float(p.get(key, 0.0)) for p in o[series]] for o in objects])
            np.testing.assert_array_equal(raw.traj[field], expected, err_msg=f"{path.name} {field}")
        heading = np.array([o["heading"] for o in objects], float)
        if raw.notes["heading_unit"] == "deg":
            heading = np.where(raw.traj["valid"], np.deg2rad(heading), heading)
        np.testing.assert_array_equal(raw.traj["yaw"], heading)
        np.testing.assert_array_equal(raw.traj["valid"], np.array([o["valid"] for o in objects], bool))
        points, codes = [], []
        for j, road in enumerate(scene["roads"]):
            code = _road_code(road, j, "")
            geometry = road["geometry"] if isinstance(road["geometry"], list) else [road["geometry"]]
            if code is not None:
                points += [(p["x"], p["y"], p.get("z", 0.0)) for p in geometry]
                codes += [code] * len(geometry)
        np.testing.assert_array_equal(raw.roadgraph.xyz, np.array(points, np.float32).reshape(-1, 3))
        np.testing.assert_array_equal(raw.roadgraph.types, codes)


def test_loaded_headings_follow_the_logged_motion_in_every_scene(scene_dir):
    """Radian and degree files alike: after loading, the heading of every moving vehicle agrees with the direction
    of its logged velocity (a degree heading read as radians is off by 0.4-2 rad in median)."""
    units = set()
    for path in sorted(scene_dir.glob("*.json")):
        scenario, info = _quiet(load_gpudrive, path)
        traj = scenario.log_trajectory
        speed = np.hypot(traj.vel_x, traj.vel_y)
        moving = np.asarray(traj.valid) & (speed > 2.0)
        err = np.abs((np.asarray(traj.yaw) - np.arctan2(traj.vel_y, traj.vel_x) + np.pi) % (2 * np.pi) - np.pi)
        assert np.median(err[moving]) < 0.05, (path.name, info["heading_unit"], float(np.median(err[moving])))
        units.add(info["heading_unit"])
    assert units == {"rad", "deg"}  # the example set holds both kinds of file


def _with_headings(scene: dict, convert) -> dict:
    out = copy.deepcopy(scene)
    for o in out["objects"]:
        o["heading"] = [convert(h) if v else h for h, v in zip(o["heading"], o["valid"])]
    return out


def test_heading_unit_decided_per_file(scene, tmp_path):
    # The radian scene, rewritten in degrees, loads to the same headings (float32 slots: 1e-5 rad).
    ref, info = _quiet(load_gpudrive, _write(tmp_path, scene, "rad.json"))
    assert info["heading_unit"] == "rad" and info["heading_steps"] >= 20
    deg, info = _quiet(load_gpudrive, _write(tmp_path, _with_headings(scene, math.degrees), "deg.json"))
    assert info["heading_unit"] == "deg" and info["heading_error_deg"] < info["heading_error_rad"]
    valid = np.asarray(ref.log_trajectory.valid)
    np.testing.assert_allclose(np.asarray(deg.log_trajectory.yaw)[valid], np.asarray(ref.log_trajectory.yaw)[valid],
                               atol=1e-5)
    # Nothing moves: the range decides (|heading| > 2 pi + 0.01 only in degrees).
    still = copy.deepcopy(scene)
    for o in still["objects"]:
        o["velocity"] = [{"x": 0.0, "y": 0.0} for _ in o["velocity"]]
    _, info = _quiet(load_gpudrive, _write(tmp_path, _with_headings(still, lambda h: 90.0), "still_deg.json"))
    assert info["heading_unit"] == "deg" and info["heading_steps"] == 0
    _, info = _quiet(load_gpudrive, _write(tmp_path, _with_headings(still, lambda h: 1.5), "still_rad.json"))
    assert info["heading_unit"] == "rad"
