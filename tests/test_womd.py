
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxloop.data import protos
from jaxloop.data.common import LoadConfig
from jaxloop.data.errors import DataError, SkipReport
from jaxloop.data.mapcompile import MapConfig
from jaxloop.data.tfrecord import read_records, write_records
from jaxloop.data.womd import decode_record, detect_layout, encode_example, load_womd, parse_example
from jaxloop.sim import agents
from jaxloop.sim.env import Env, EnvConfig
from jaxloop.sim.geometry import box_corners, signed_distance_to_polylines
from jaxloop.sim.rollout import log_replay_policy, rollout

EXAMPLE = "womd/motion_data_one_example.tfrecord"
SCENARIO = "womd/motion_data_one_scenario.tfrecord"


@pytest.fixture(scope="module")
def example_record(shared_data):
    return next(read_records(shared_data / EXAMPLE))


@pytest.fixture(scope="module")
def raw_features(example_record):
    return parse_example(example_record)


@pytest.fixture(scope="module")
def example_scenario(shared_data):
    return next(load_womd(shared_data / EXAMPLE))


@pytest.fixture(scope="module")
def proto_scenario(shared_data):
    return next(load_womd(shared_data / SCENARIO))


def _raw_state(feats, name):
    """[128, 91] from the raw past / current / future features."""
    return np.concatenate([feats[f"state/{p}/{name}"].reshape(128, -1) for p in ("past", "current", "future")], 1)


def test_tf_example_matches_raw_record(example_scenario, raw_features):
    scenario, info = example_scenario
    assert info["format"] == "womd_tf_example" and info["scenario_id"] == raw_features["scenario/id"][0].decode()
    assert scenario.num_steps == 91 and scenario.num_objects == 128
    sdc_raw = int(np.flatnonzero(raw_features["state/is_sdc"] > 0)[0])
    assert int(scenario.object_metadata.sdc_index) == sdc_raw == info["sdc_index"]
    valid_raw = _raw_state(raw_features, "valid") > 0
    assert int(scenario.log_trajectory.valid.sum()) == int(valid_raw.sum())
    x_raw, y_raw = _raw_state(raw_features, "x"), _raw_state(raw_features, "y")
    traj = scenario.log_trajectory
    for t in (10, 90):
        assert traj.valid[sdc_raw, t]
        assert traj.x[sdc_raw, t] == x_raw[sdc_raw, t] and traj.y[sdc_raw, t] == y_raw[sdc_raw, t]
    np.testing.assert_array_equal(traj.yaw[valid_raw], _raw_state(raw_features, "bbox_yaw")[valid_raw])
    np.testing.assert_array_equal(traj.vel_x[valid_raw], _raw_state(raw_features, "velocity_x")[valid_raw])
    assert scenario.traffic_lights.valid.any()


def test_scenario_proto_fixture(proto_scenario, shared_data):
    scenario, info = proto_scenario
    msg = protos.Scenario.FromString(next(read_records(shared_data / SCENARIO)))
    assert len(msg.tracks) == 83 and info["num_objects_raw"] == 83
    assert scenario.num_steps == 91 and info["format"] == "womd_scenario"
    assert int(scenario.object_metadata.sdc_index) == msg.sdc_track_index
    ids = scenario.object_metadata.ids
    np.testing.assert_array_equal(ids[:83], [t.id for t in msg.tracks])
    assert np.all(ids[83:] == -1) and not scenario.log_trajectory.valid[83:].any()
    t = 37
    s = msg.tracks[5].states[t]
    assert scenario.log_trajectory.valid[5, t] == s.valid
    if s.valid:
        assert scenario.log_trajectory.x[5, t] == np.float32(s.center_x)
    # Lanes of type 1-3, crosswalks and traffic lights all come through.
    assert scenario.roadmap.lane_valid.any() and scenario.roadmap.crosswalk_valid.any()
    assert scenario.traffic_lights.valid.any()


def test_layout_detection(example_record, shared_data):
    assert detect_layout(example_record) == "tf_example"
    assert detect_layout(next(read_records(shared_data / SCENARIO))) == "scenario"
    assert detect_layout(b"\x00\x01garbage") is None


def _run_log(scenario, policy_sdc: bool):
    env = Env(EnvConfig())
    kind = None if policy_sdc else jnp.full((scenario.num_objects,), agents.AGENT_LOG, jnp.int32)

    @jax.jit
    def episode(sc):
        state = env.reset(sc, jax.random.key(0), agent_kind=kind)
        _, out = rollout(env, sc, state, log_replay_policy(env), sc.num_steps - 11)
        return out

    return episode(scenario)


def test_log_replay_reproduces_log(example_scenario):
    scenario, _ = example_scenario
    out = _run_log(scenario, policy_sdc=False)
    traj = scenario.log_trajectory
    valid = np.asarray(out.log_states.valid)  # [80, N]
    np.testing.assert_array_equal(np.asarray(out.states.x)[valid], traj.x[:, 11:].T[valid])
    np.testing.assert_array_equal(np.asarray(out.states.y)[valid], traj.y[:, 11:].T[valid])


@pytest.mark.parametrize("which", ["example", "proto"])
def test_inverse_bicycle_expert_tracks_sdc(which, example_scenario, proto_scenario):
    scenario, info = example_scenario if which == "example" else proto_scenario
    out = _run_log(scenario, policy_sdc=True)
    i = info["sdc_index"]
    sim = np.stack([np.asarray(out.states.x)[:, i], np.asarray(out.states.y)[:, i]], -1)
    log = np.stack([scenario.log_trajectory.x[i, 11:], scenario.log_trajectory.y[i, 11:]], -1)
    valid = scenario.log_trajectory.valid[i, 11:]
    err = np.linalg.norm(sim - log, axis=-1)[valid]
    assert valid[-1] and err[-1] < 0.5, err[-1]


@pytest.mark.parametrize("which", ["example", "proto"])
def test_logged_sdc_is_on_the_road(which, example_scenario, proto_scenario):
    # Edges have the road on their right: every corner of the logged SDC box has a
    # negative signed distance to the nearest edge at every valid step.
    scenario, info = example_scenario if which == "example" else proto_scenario
    traj, rm, i = scenario.log_trajectory, scenario.roadmap, info["sdc_index"]
    corners = box_corners(*(jnp.asarray(getattr(traj, f)[i]) for f in ("x", "y", "yaw", "length", "width")))
    d = signed_distance_to_polylines(corners.reshape(-1, 2), jnp.asarray(rm.edge_start), jnp.asarray(rm.edge_end),
                                     jnp.asarray(rm.edge_valid)).reshape(-1, 4)
    d = np.asarray(d)[traj.valid[i]]
    assert rm.edge_valid.sum() > 50
    assert d.max() < 0.0, d.max()


def test_map_is_culled_and_sized(example_scenario):
    scenario, info = example_scenario
    rm = scenario.roadmap
    assert rm.lane_xy.shape == (256, 20, 2) and rm.edge_start.shape == (1024, 2)
    lanes = info["map"]["lanes"]
    assert lanes["kept"] + lanes["culled"] + lanes["dropped"] == lanes["total"] and lanes["culled"] > 0
    # Every kept lane piece is at most 30 m long and has unit tangents.
    seg = np.linalg.norm(np.diff(rm.lane_xy, axis=1), axis=-1)
    assert np.all(seg[rm.lane_valid[:, 1:]].reshape(-1) <= 30.0 / 19 + 1e-3)
    norms = np.linalg.norm(rm.lane_dir[rm.lane_valid], axis=-1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_capacity_warning_names_source(example_record, tmp_path):
    cfg = LoadConfig(map=MapConfig(max_edges=16))
    with pytest.warns(UserWarning, match=r"src\.tfrecord#3: map features .* did not fit"):
        _, info = decode_record(example_record, cfg, source="src.tfrecord", record=3)
    assert info["map"]["edges"]["dropped"] > 0 and info["map"]["edges"]["kept"] == 16


# ----------------------------------------------------------------------------- bad input


def _write_modified(raw_features, tmp_path, name, **changes):
    feats = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in raw_features.items()}
    for key, fn in changes.items():
        feats[key.replace("__", "/")] = fn(feats[key.replace("__", "/")])
    path = tmp_path / f"{name}.tfrecord"
    write_records(path, [encode_example(feats)])
    return path


def test_wrong_layout(shared_data):
    with pytest.raises(DataError, match=r"motion_data_one_scenario\.tfrecord: record 0: field 'state/id': missing"):
        next(load_womd(shared_data / SCENARIO, layout="tf_example"))


def test_wrong_layout_garbage_record(tmp_path):
    path = tmp_path / "garbage.tfrecord"
    write_records(path, [b"\x08\x96\x01not a scenario"])
    with pytest.raises(DataError, match=r"garbage\.tfrecord: record 0: field 'layout': record is neither"):
        next(load_womd(path))


def test_nan_coordinates(raw_features, tmp_path):
    sdc = int(np.flatnonzero(raw_features["state/is_sdc"])[0])

    def poison(x):
        x = x.reshape(128, 80).copy()
        x[sdc, 5] = np.nan
        return x.reshape(-1)

    path = _write_modified(raw_features, tmp_path, "nan", state__future__x=poison)
    # future step 5 is log step 10 past + 1 current + 5 = 16
    with pytest.raises(DataError, match=rf"nan\.tfrecord: record 0: field 'state/future/x': non-finite value nan "
                                        rf"at object {sdc} step 16"):
        next(load_womd(path))


def test_inf_roadgraph(raw_features, tmp_path):
    def poison(xyz):
        xyz = xyz.copy()
        xyz[3 * 7] = np.inf
        return xyz

    path = _write_modified(raw_features, tmp_path, "inf", roadgraph_samples__xyz=poison)
    with pytest.raises(DataError, match=r"inf\.tfrecord: record 0: field 'roadgraph_samples/xyz': .*non-finite"):
        next(load_womd(path))


def test_no_sdc(raw_features, tmp_path):
    path = _write_modified(raw_features, tmp_path, "nosdc", state__is_sdc=lambda a: np.zeros_like(a))
    with pytest.raises(DataError, match=r"nosdc\.tfrecord: record 0: field 'state/is_sdc': expected exactly one SDC"):
        next(load_womd(path))


def test_sdc_invalid_at_current_step(raw_features, tmp_path):
    sdc = int(np.flatnonzero(raw_features["state/is_sdc"])[0])

    def drop(v):
        v = v.copy()
        v[sdc] = 0
        return v

    path = _write_modified(raw_features, tmp_path, "sdcinvalid", state__current__valid=drop)
    with pytest.raises(DataError, match=r"record 0: field 'state/current/valid': the SDC .* invalid at the current"):
        next(load_womd(path))


def test_too_many_objects(example_record, shared_data, raw_features):
    cfg = LoadConfig(num_objects=16)
    with pytest.raises(DataError, match=r"field 'state/id': \d+ objects but LoadConfig.num_objects=16"):
        next(load_womd(shared_data / EXAMPLE, cfg))
    with pytest.warns(UserWarning, match="farthest from the SDC"):
        scenario, info = decode_record(example_record, LoadConfig(num_objects=16, select="nearest"))
    present = int((_raw_state(raw_features, "valid") > 0).any(1).sum())
    assert scenario.num_objects == 16 and info["dropped_objects"] == present - 16
    sdc_raw = int(np.flatnonzero(raw_features["state/is_sdc"])[0])
    i = int(scenario.object_metadata.sdc_index)
    assert scenario.object_metadata.ids[i] == int(raw_features["state/id"][sdc_raw])
    # Kept: the SDC, every track to predict and object of interest, then the nearest to the
    # SDC at the current step.
    x, y, v = (_raw_state(raw_features, k) for k in ("x", "y", "valid"))
    raw_ids = raw_features["state/id"].astype(np.int64)
    must = ((raw_features["state/tracks_to_predict"] > 0) | (raw_features["state/objects_of_interest"] > 0)
            | (raw_features["state/is_sdc"] > 0)) & (v > 0).any(1)
    d = np.where(v[:, 10] > 0, np.hypot(x[:, 10] - x[sdc_raw, 10], y[:, 10] - y[sdc_raw, 10]), np.inf)
    rest = [j for j in np.argsort(d, kind="stable") if not must[j]][: 16 - int(must.sum())]
    expected = set(raw_ids[must].tolist()) | set(raw_ids[rest].tolist())
    assert int(must.sum()) > 1 and set(scenario.object_metadata.ids.tolist()) == expected


def test_skip_invalid_counts(raw_features, example_record, tmp_path):
    bad = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in raw_features.items()}
    bad["state/is_sdc"] = np.zeros_like(bad["state/is_sdc"])
    path = tmp_path / "mixed.tfrecord"
    write_records(path, [example_record, encode_example(bad), example_record])
    with pytest.raises(DataError, match="record 1"):
        list(load_womd(path))
    report = SkipReport()
    out = list(load_womd(path, skip_invalid=True, skip_report=report))
    assert [info["record"] for _, info in out] == [0, 2]
    assert report.count == 1 and "record 1" in str(report) and report.reasons["state/is_sdc"] == 1


def test_scenario_proto_stop_signs_and_speed_limits(shared_data):
    msg = protos.Scenario.FromString(next(read_records(shared_data / SCENARIO)))
    signs = [f for f in msg.map_features if f.WhichOneof("feature_data") == "stop_sign"]
    governed = sum(max(1, len(f.stop_sign.lane)) for f in signs)  # one entry per (sign, lane)
    cfg = LoadConfig(map=MapConfig(cull_radius_m=1000.0, max_lanes=1024, max_edges=4096, max_stop_signs=64))
    scenario, info = next(load_womd(shared_data / SCENARIO, cfg))
    rm = scenario.roadmap
    assert info["map"]["stop_signs"]["kept"] == governed == int(rm.stop_sign_valid.sum())
    lanes = set(rm.lane_ids[rm.lane_valid.any(-1)].tolist())
    sign_lanes = rm.stop_sign_lane_ids[rm.stop_sign_valid]
    assert all(int(lane) in lanes for lane in sign_lanes if lane >= 0)
    # Speed limits come from mph: a 25 mph lane is 11.176 m/s.
    mph = {int(f.id): f.lane.speed_limit_mph for f in msg.map_features if f.WhichOneof("feature_data") == "lane"}
    for lane_id, limit in zip(rm.lane_ids[:20], rm.lane_speed_limit[:20]):
        if lane_id >= 0:
            np.testing.assert_allclose(limit, mph[int(lane_id)] * 0.44704, rtol=1e-6)
