import dataclasses
import hashlib
import json
import warnings

import jax
import numpy as np
import pytest

from jaxloop.data.mapcompile import (MapConfig, PolylineMap, RawRoadgraph, compile_polylines, compile_roadmap,
                                     oriented_bounding_box)
from jaxloop.data.pipeline import CacheError, ScenarioDataset, load_infos, load_scenarios, write_cache
from jaxloop.data.route import route_from_log
from jaxloop.data.toy import make_toy_scenario
from jaxloop.data.womd import load_womd
from jaxloop.sim.datatypes import stack_scenarios


@pytest.fixture(scope="module")
def womd_pair(shared_data):
    out = [next(load_womd(shared_data / f"womd/motion_data_one_{k}.tfrecord")) for k in ("example", "scenario")]
    return [s for s, _ in out], [i for _, i in out]


TAG = 1000  # toy i carries object id TAG + i in slot 0: a mark that survives the round trip


def _toys(n):
    out = []
    for i in range(n):
        toy = make_toy_scenario(seed=i)
        ids = np.asarray(toy.object_metadata.ids).copy()
        ids[0] = TAG + i
        out.append(toy.replace(object_metadata=toy.object_metadata.replace(ids=ids)))
    return out


def _tag(scenarios):
    return np.asarray(scenarios.object_metadata.ids)[..., 0] - TAG


def _tags(batch_and_infos):
    batch, infos = batch_and_infos
    tags = _tag(batch)
    assert [i["scenario_id"] for i in infos] == [str(t) for t in tags]  # the infos travel with their rows
    return tags


def test_cache_round_trip_bit_exact(womd_pair, tmp_path):
    scenarios, infos = womd_pair
    manifest = write_cache(scenarios, tmp_path / "c", infos, shard_size=1)
    assert manifest["num_scenarios"] == 2 and len(manifest["shards"]) == 2
    assert manifest["counts"] == {"womd_tf_example": 1, "womd_scenario": 1}
    back = load_scenarios(tmp_path / "c")
    want = stack_scenarios(scenarios)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(want)[0], jax.tree.leaves(back)):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert a.tobytes() == b.tobytes(), path  # bit-exact, NaN-safe
    assert load_infos(tmp_path / "c") == json.loads(json.dumps(infos))


def test_cache_refuses_other_version_and_reports_bad_files(tmp_path):
    toys = _toys(3)
    infos = [{"scenario_id": str(i), "format": "toy"} for i in range(3)]
    out = tmp_path / "c"
    write_cache(toys, out, infos, shard_size=2)
    write_cache(toys[:2], out, infos[:2], shard_size=2)  # same version: replaced
    assert len(ScenarioDataset(out)) == 2 and not (out / "shard_00001.npz").exists()

    manifest = json.loads((out / "manifest.json").read_text())
    manifest["version"] = 999
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match=r"manifest\.json: cache format version 999, this jaxloop reads version 1 or 2; re-run `jaxloop data convert`"):
        load_scenarios(out)
    with pytest.raises(CacheError, match="refusing to overwrite a cache of format .* version 999"):
        write_cache(toys, out, infos)

    out2 = tmp_path / "d"
    write_cache(toys, out2, infos, shard_size=2)
    (out2 / "shard_00001.npz").unlink()
    with pytest.raises(CacheError, match=r"shard_00001\.npz: shard listed in manifest\.json is missing"):
        load_scenarios(out2)

    out3 = tmp_path / "e"
    write_cache(toys, out3, infos, shard_size=2)
    with np.load(out3 / "shard_00000.npz") as z:
        data = dict(z)
    data["log_trajectory.x"] = data["log_trajectory.x"][:, :, :5]
    np.savez(out3 / "shard_00000.npz", **data)
    # Re-listed with its new checksum, so the shape check (not the checksum) is what answers.
    manifest = json.loads((out3 / "manifest.json").read_text())
    manifest["shards"][0]["sha256"] = hashlib.sha256((out3 / "shard_00000.npz").read_bytes()).hexdigest()
    (out3 / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match=r"shard_00000\.npz: field 'log_trajectory\.x': expected shape \[2, 8, 91\]"):
        load_scenarios(out3)


def test_dataset_batches_shuffle_and_split(tmp_path):
    toys = _toys(10)
    write_cache(toys, tmp_path / "c", [{"scenario_id": str(i), "format": "toy"} for i in range(10)], shard_size=3)
    ds = ScenarioDataset(tmp_path / "c")
    assert len(ds) == 10 and ds.infos[4]["scenario_id"] == "4"
    got = ds.get([7, 2, 2])
    np.testing.assert_array_equal(_tag(got), [7, 2, 2])
    np.testing.assert_array_equal(got.log_trajectory.x[0], toys[7].log_trajectory.x)

    # Two processes: disjoint blocks of 5; batches of 2 drop the remainder (2 per epoch each).
    seen = []
    for p in range(2):
        it = ds.batches(2, seed=3, process_index=p, process_count=2, num_epochs=2)
        fam = [_tags(b) for b in it]
        assert len(fam) == 4 and all(isinstance(b, np.ndarray) and b.shape == (2,) for b in fam)
        epoch0, epoch1 = np.concatenate(fam[:2]), np.concatenate(fam[2:])
        block = set(range(5 * p, 5 * p + 5))
        assert set(epoch0) <= block and set(epoch1) <= block and len(set(epoch0)) == 4
        seen.append(set(epoch0))
    assert not seen[0] & seen[1]
    # Same seed, same order; another seed, another order (10 scenarios: 1 - 1/(10*9*8*7) odds).
    a = [_tags(b).tolist() for b in ds.batches(5, seed=1, num_epochs=1)]
    b = [_tags(b).tolist() for b in ds.batches(5, seed=1, num_epochs=1, prefetch=0)]
    c = [_tags(b).tolist() for b in ds.batches(5, seed=2, num_epochs=1)]
    assert a == b and a != c and sorted(sum(a, [])) == list(range(10))
    ordered = [_tags(b).tolist() for b in ds.batches(4, shuffle=False, drop_remainder=False,
                                                                  num_epochs=1)]
    assert ordered == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    it = ds.batches(2, seed=0, sharding=sharding)
    batch, _ = next(it)
    it.close()
    assert isinstance(batch.log_trajectory.x, jax.Array) and batch.log_trajectory.x.sharding == sharding


# ----------------------------------------------------------------------------- map compilation and routes


def _straight_map():
    """A 100 m lane along +x at y=0, road edges at y=-2 (running +x) and y=+5.5 (running -x), a crosswalk."""
    x = np.arange(0.0, 100.01, 0.5)
    lane = np.stack([x, 0 * x, 0 * x], -1)
    lower = np.stack([x, 0 * x - 2.0, 0 * x], -1)  # road on its LEFT as given: must be reversed
    upper = np.stack([x[::-1], 0 * x + 5.5, 0 * x], -1)  # road on its left too
    c, s = np.cos(0.3), np.sin(0.3)
    box = np.array([[-2, -1], [2, -1], [2, 1], [-2, 1]]) @ np.array([[c, s], [-s, c]]) + [50.0, 1.0]
    cw = np.concatenate([box, np.zeros((4, 1))], -1)
    xyz = np.concatenate([lane, lower, upper, cw])
    n = len(x)
    types = np.concatenate([np.full(n, 2), np.full(n, 15), np.full(n, 15), np.full(4, 18)])
    ids = np.concatenate([np.full(n, 1), np.full(n, 2), np.full(n, 3), np.full(4, 4)])
    return RawRoadgraph(xyz=xyz, dir=np.zeros_like(xyz), types=types, ids=ids, valid=np.ones(len(xyz), bool),
                        speed_limits={1: 13.4})


def test_compile_splits_lanes_and_orients_edges():
    rm, report = compile_roadmap(_straight_map(), np.array([[0.0, 0.0], [100.0, 0.0]]),
                                 MapConfig(max_lanes=8, lane_points=5, max_edges=128, edge_segment_m=4.0))
    # 100 m at most 30 m per piece -> ceil(100/30) = 4 pieces of 25 m, 5 points 6.25 m apart.
    assert report.lanes.kept == 4 and rm.lane_valid.sum() == 20
    starts = np.sort(rm.lane_xy[:4, 0, 0])
    np.testing.assert_allclose(starts, [0.0, 25.0, 50.0, 75.0], atol=1e-4)
    np.testing.assert_allclose(np.diff(rm.lane_xy[0, :, 0]), 6.25, atol=1e-4)
    np.testing.assert_allclose(rm.lane_dir[:4].reshape(-1, 2), np.tile([1.0, 0.0], (20, 1)), atol=1e-6)
    np.testing.assert_allclose(rm.lane_speed_limit[:4], 13.4, rtol=1e-6)
    # Each 100 m edge -> 25 segments of 4 m; both reversed to put the road on their right.
    assert report.edges.kept == 50 and report.edges_reversed == 2
    valid = rm.edge_valid
    d = rm.edge_end[valid] - rm.edge_start[valid]
    lower = rm.edge_start[valid][:, 1] < 0
    assert np.all(d[lower][:, 0] < 0) and np.all(d[~lower][:, 0] > 0)
    # Oriented box of the rotated 4 x 2 crosswalk: area 8.
    corners = rm.crosswalk_xy[0]
    e1, e2 = corners[1] - corners[0], corners[2] - corners[1]
    assert abs(abs(e1[0] * e2[1] - e1[1] * e2[0]) - 8.0) < 1e-4


def test_compile_culls_and_warns_when_over_capacity():
    focus = np.array([[0.0, 0.0]])
    with pytest.warns(UserWarning, match="toy#7"):
        rm, report = compile_roadmap(_straight_map(), focus, MapConfig(cull_radius_m=40.0, max_edges=4,
                                                                       edge_segment_m=4.0), source="toy#7")
    # Lane pieces start at 0, 25, 50, 75 m: the ones within 40 m of the origin are the first two.
    assert report.lanes.kept == 2 and report.lanes.culled == 2
    # Edge segments within 40 m: x <= 40 on both edges -> 10 + 10 of 4 m (2 m off-axis still inside).
    assert report.dropped_any and report.edges.kept == 4 and report.edges.dropped == 16
    assert "edges: kept 4/50 (culled 30, dropped for capacity 16)" in str(report)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compile_roadmap(_straight_map(), focus, MapConfig(cull_radius_m=40.0))


def test_polyline_maps_share_the_compiler():
    """The same straight map as polylines compiles like the raw points; piece ids and the 5 cm vertex rule."""
    raw = _straight_map()
    focus = np.array([[0.0, 0.0], [100.0, 0.0]])
    config = MapConfig(max_lanes=8, lane_points=5, max_edges=128, edge_segment_m=4.0, orient_edges="keep")
    rm_raw, _ = compile_roadmap(raw, focus, config)
    xy = raw.xyz[:, :2].astype(np.float64)
    n = (len(xy) - 4) // 3
    lower = xy[n:2 * n].copy()
    lower = np.concatenate([lower[:10], lower[9:10] + [0.01, 0.03], lower[10:]])  # a kink 3 cm from the last vertex
    polylines = PolylineMap(lane_xy=xy[:n], lane_counts=[n], lane_types=[2], lane_speed=[13.4],
                            edge_xy=np.concatenate([lower, xy[2 * n:3 * n]]), edge_counts=[n + 1, n],
                            edge_types=[15, 15], crosswalks=rm_raw.crosswalk_xy[:1], stop_sign_xy=[[99.0, 0.0]],
                            stop_sign_lanes=[1], lane_ids=[1])  # stop signs name lanes by id
    # The kink only matters without the 5 cm rule: with it, the maps are the same.
    rm, report, last = compile_polylines(polylines, focus, dataclasses.replace(config, edge_min_step_m=0.05))
    for name in ("lane_xy", "lane_dir", "lane_ids", "lane_speed_limit", "edge_start", "edge_end", "crosswalk_xy"):
        np.testing.assert_allclose(getattr(rm, name), getattr(rm_raw, name), atol=1e-4, err_msg=name)
    assert report.lanes.kept == 4 and report.edges.kept == 50 and last.tolist() == [1]
    assert rm.stop_sign_lane_ids[0] == 1 and rm.stop_sign_valid.sum() == 1
    _, with_kink, _ = compile_polylines(polylines, focus, config)
    assert with_kink.edges.kept > 50  # its corners split the edge into more pieces
    # Piece ids: the four 25 m pieces are lanes 1..4; the stop sign (naming its lane by index) gets the last piece.
    by_index = dataclasses.replace(polylines, stop_sign_lanes=[0])
    rm, _, last = compile_polylines(by_index, focus, dataclasses.replace(config, lane_piece_ids=True))
    assert sorted(rm.lane_ids[rm.lane_valid[:, 0]].tolist()) == [1, 2, 3, 4] and last.tolist() == [4]
    assert rm.stop_sign_lane_ids[0] == 4
    end = rm.lane_xy[rm.lane_ids == 4][0, -1]
    np.testing.assert_allclose(end, [100.0, 0.0], atol=1e-4)


def test_oriented_bounding_box_of_rotated_rectangle():
    c, s = np.cos(1.0), np.sin(1.0)
    rect = np.array([[0, 0], [3, 0], [3, 1], [0, 1], [1.5, 0.5]]) @ np.array([[c, s], [-s, c]])
    box = oriented_bounding_box(rect)
    d = np.linalg.norm(box[:, None] - rect[None, :4], axis=-1)  # every corner matches one rectangle corner
    assert np.all(d.min(axis=1) < 1e-4) and np.all(d.min(axis=0) < 1e-4)
    e1, e2 = box[1] - box[0], box[2] - box[1]
    assert e1[0] * e2[1] - e1[1] * e2[0] > 0  # counter-clockwise


def test_route_follows_lane_past_log_end():
    rm, _ = compile_roadmap(_straight_map(), np.array([[0.0, 0.0], [100.0, 0.0]]), MapConfig())
    # Logged ego 0.8 m left of the lane centre from x=10 to x=40 (snapped), then extended 30 m.
    t = np.arange(31)
    ego = np.stack([10.0 + t, np.full(31, 0.8)], -1)
    route = route_from_log(ego, np.ones(31, bool), rm, num_points=61, extend_m=30.0)
    np.testing.assert_allclose(route.xy[:, 1], 0.0, atol=1e-5)
    np.testing.assert_allclose(route.xy[[0, -1], 0], [10.0, 70.0], atol=1e-4)
    np.testing.assert_allclose(route.arc_length[-1], 60.0, atol=1e-4)
    # Without a map: the logged path, extended straight along the final heading.
    route = route_from_log(ego, np.ones(31, bool), None, num_points=7, extend_m=30.0)
    np.testing.assert_allclose(route.xy[:, 1], 0.8, atol=1e-5)
    np.testing.assert_allclose(route.xy[:, 0], np.linspace(10, 70, 7), atol=1e-4)


def test_cli_convert_and_inspect_json(shared_data, tmp_path, capsys):
    from jaxloop.cli import main
    from jaxloop.data.tfrecord import read_records
    from jaxloop.data.womd import parse_example

    src = str(shared_data / "womd" / "*.tfrecord")
    assert main(["data", "convert", src, "--out", str(tmp_path / "c"), "--shard-size", "1"]) == 0
    capsys.readouterr()
    assert main(["data", "inspect", str(tmp_path / "c"), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["format"] for d in lines] == ["womd_tf_example", "womd_scenario"]
    feats = parse_example(next(read_records(shared_data / "womd" / "motion_data_one_example.tfrecord")))
    sdc = int(np.flatnonzero(feats["state/is_sdc"])[0])
    first = lines[0]
    assert first["sdc_index"] == sdc and first["num_steps"] == 91 and len(first["sdc_xy"]) == 91
    assert first["sdc_xy"][10] == [float(feats["state/current/x"][sdc]), float(feats["state/current/y"][sdc])]
    assert first["num_valid_object_steps"] == sum(int((feats[f"state/{p}/valid"] > 0).sum())
                                                  for p in ("past", "current", "future"))
    assert lines[1]["num_objects"] == 83 and lines[1]["num_lights"] > 0
    # A raw file inspects the same; a bad path is a clear error, not a traceback.
    assert main(["data", "inspect", str(shared_data / "womd" / "motion_data_one_example.tfrecord"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == first
    assert main(["data", "inspect", str(tmp_path / "missing")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_cache_writer_streams_shards_and_checks_shapes(tmp_path):
    from jaxloop.data.pipeline import CacheWriter
    from jaxloop.sim.datatypes import ShapeError

    toys = _toys(5)
    with CacheWriter(tmp_path / "c", shard_size=2) as writer:
        for i, toy in enumerate(toys):
            writer.add(toy, {"scenario_id": f"t{i}", "format": "toy", "family": i})
            # 2 per shard: after the 4th scenario two shards are on disk (in the partial directory that
            # close() swaps in), the manifest not yet, and nothing at the destination.
            if i == 3:
                assert sorted(p.name for p in writer.partial_dir.iterdir()) == ["shard_00000.npz", "shard_00001.npz"]
                assert not (tmp_path / "c").exists()
        with pytest.raises(ShapeError, match=r"field 'log_trajectory\.x' has shape \[4, 91\]"):
            writer.add(make_toy_scenario(num_objects=4), {"scenario_id": "x", "format": "toy"})
    assert [s["count"] for s in writer.manifest["shards"]] == [2, 2, 1]
    back = load_scenarios(tmp_path / "c")
    np.testing.assert_array_equal(_tag(back), np.arange(5))
    assert [i["scenario_id"] for i in load_infos(tmp_path / "c")] == [f"t{i}" for i in range(5)]


def test_route_of_a_stopped_ego_follows_its_yaw():
    rng = np.random.default_rng(0)
    ego = np.array([5.0, 7.0]) + rng.normal(0.0, 0.01, (91, 2))  # 1 cm jitter, no direction of travel
    route = route_from_log(ego, np.ones(91, bool), None, num_points=4, extend_m=30.0, ego_yaw=np.full(91, np.pi / 2))
    # One point (the first) extended 30 m along +y: (5, 7) -> (5, 37), 10 m apart.
    np.testing.assert_allclose(route.xy, [[ego[0, 0], ego[0, 1] + d] for d in (0.0, 10.0, 20.0, 30.0)], atol=1e-4)
    np.testing.assert_allclose(route.arc_length, [0.0, 10.0, 20.0, 30.0], atol=1e-4)
