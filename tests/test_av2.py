import json

import jax.numpy as jnp
import numpy as np
import pyarrow.parquet as pq
import pytest

from jaxloop.data.av2 import load_av2, read_map
from jaxloop.data.common import LoadConfig
from jaxloop.data.errors import DataError
from jaxloop.sim.datatypes import RG_ROAD_EDGE_BOUNDARY, TYPE_OTHER, TYPE_PEDESTRIAN, TYPE_VEHICLE
from jaxloop.sim.geometry import box_corners, signed_distance_to_polylines

SCENARIO_ID = "0a1e6f0a-1817-4a98-b02e-db8c9327d151"


@pytest.fixture(scope="module")
def av2_paths(shared_data):
    return (shared_data / "av2" / f"scenario_{SCENARIO_ID}.parquet",
            shared_data / "av2" / f"log_map_archive_{SCENARIO_ID}.json")


@pytest.fixture(scope="module")
def av2_scenario(av2_paths):
    return load_av2(av2_paths[0])


@pytest.fixture(scope="module")
def rows(av2_paths):
    return pq.read_table(av2_paths[0]).to_pydict()


def test_loads_110_steps_with_av_as_sdc(av2_scenario, rows):
    scenario, info = av2_scenario
    assert scenario.num_steps == 110 and info["format"] == "av2" and info["scenario_id"] == SCENARIO_ID
    assert info["num_objects_raw"] == len(set(rows["track_id"])) == 58
    i = int(scenario.object_metadata.sdc_index)
    assert bool(scenario.object_metadata.is_sdc[i]) and int(scenario.object_metadata.is_sdc.sum()) == 1
    av = [k for k, tid in enumerate(rows["track_id"]) if tid == "AV"]
    assert int(scenario.log_trajectory.valid[i].sum()) == len(av) == 110
    k49 = next(k for k in av if rows["timestep"][k] == 49)
    traj = scenario.log_trajectory
    assert traj.x[i, 49] == np.float32(rows["position_x"][k49])
    assert traj.yaw[i, 49] == np.float32(rows["heading"][k49])
    assert traj.vel_y[i, 49] == np.float32(rows["velocity_y"][k49])
    assert scenario.object_metadata.object_types[i] == TYPE_VEHICLE
    assert int(scenario.log_trajectory.valid.sum()) == len(rows["track_id"])


def test_focal_track_and_types(av2_scenario, rows):
    scenario, info = av2_scenario
    meta = scenario.object_metadata
    focal = int(rows["focal_track_id"][0])
    j = int(np.flatnonzero(meta.ids == focal)[0])
    assert meta.is_modeled[j] and meta.objects_of_interest[j] and int(meta.objects_of_interest.sum()) == 1
    kind = {int(t): ty for t, ty in zip(rows["track_id"], rows["object_type"]) if t != "AV"}
    expected = {"vehicle": TYPE_VEHICLE, "bus": TYPE_VEHICLE, "pedestrian": TYPE_PEDESTRIAN,
                "static": TYPE_OTHER, "background": TYPE_OTHER, "riderless_bicycle": TYPE_OTHER}
    for slot, tid in enumerate(meta.ids):
        if tid >= 0:
            assert meta.object_types[slot] == expected[kind[int(tid)]], (tid, kind[int(tid)])


def test_drivable_areas_oriented_clockwise_and_sdc_on_road(av2_scenario, av2_paths):
    raw = read_map(av2_paths[1])
    edge = raw.types == RG_ROAD_EDGE_BOUNDARY
    assert edge.any()
    scenario, info = av2_scenario
    traj, rm, i = scenario.log_trajectory, scenario.roadmap, info["sdc_index"]
    corners = box_corners(*(jnp.asarray(getattr(traj, f)[i]) for f in ("x", "y", "yaw", "length", "width")))
    d = signed_distance_to_polylines(corners.reshape(-1, 2), jnp.asarray(rm.edge_start), jnp.asarray(rm.edge_end),
                                     jnp.asarray(rm.edge_valid))
    assert float(jnp.max(d)) < 0.0
    # Crosswalks are 4-corner boxes around the crossing's two edges.
    assert rm.crosswalk_valid.sum() >= 1
    archive = json.loads(av2_paths[1].read_text())
    lane = next(iter(archive["lane_segments"].values()))
    assert lane["lane_type"] in ("VEHICLE", "BIKE", "BUS")


def test_lane_centres_between_boundaries(av2_paths):
    raw = read_map(av2_paths[1])
    archive = json.loads(av2_paths[1].read_text())
    key, lane = next(iter(archive["lane_segments"].items()))
    pts = raw.xyz[raw.ids == int(key)]
    left = np.array([[p["x"], p["y"]] for p in lane["left_lane_boundary"]])
    right = np.array([[p["x"], p["y"]] for p in lane["right_lane_boundary"]])
    # First and last centre points are the midpoints of the boundaries' end points.
    np.testing.assert_allclose(pts[0, :2], 0.5 * (left[0] + right[0]), atol=1e-6)
    np.testing.assert_allclose(pts[-1, :2], 0.5 * (left[-1] + right[-1]), atol=1e-6)


def test_bad_av2_inputs(av2_paths, tmp_path):
    import pyarrow as pa

    table = pq.read_table(av2_paths[0])
    x = table.column("position_x").to_numpy().copy()
    x[3] = np.nan
    bad = table.set_column(table.schema.get_field_index("position_x"), "position_x", pa.array(x))
    path = tmp_path / f"scenario_{SCENARIO_ID}.parquet"
    pq.write_table(bad, path)
    with pytest.raises(DataError, match=r"field 'position_x\[timestep=3\]': non-finite value nan"):
        load_av2(path, av2_paths[1])
    no_av = table.filter(pa.compute.not_equal(table.column("track_id"), "AV"))
    pq.write_table(no_av, path)
    with pytest.raises(DataError, match=r"field \"track_id=='AV'\": expected exactly one SDC"):
        load_av2(path, av2_paths[1])
    pq.write_table(table, path)
    with pytest.raises(DataError, match="track_id': 58 objects but LoadConfig.num_objects=32"):
        load_av2(path, av2_paths[1], LoadConfig(num_objects=32))
    with pytest.warns(UserWarning, match="dropped the 26 farthest"):
        scenario, info = load_av2(path, av2_paths[1], LoadConfig(num_objects=32, select="nearest"))
    focal = int(table.column("focal_track_id")[0].as_py())
    assert focal in set(scenario.object_metadata.ids.tolist())  # the focal track is always kept
    with pytest.raises(DataError, match="expected one log_map_archive"):
        load_av2(path)  # no map beside the copy
