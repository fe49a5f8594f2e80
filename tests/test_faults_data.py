"""Fault suite of the data layer: each case feeds one kind of bad input and asserts the exact
outcome — a `DataError` naming the file / record / field, and nothing good lost or corrupted."""

import hashlib
import inspect
import json
import pathlib
import shutil
import struct
import warnings

import numpy as np
import pytest

from jaxloop.cli import main
from jaxloop.data.av2 import load_av2, read_map
from jaxloop.data.errors import DataError, SkipReport
from jaxloop.data.pipeline import CacheError, CacheWriter, ScenarioDataset, load_infos, load_scenarios, write_cache
from jaxloop.data.sources import load_source
from jaxloop.data.tfrecord import TFRecordError, encode_record, masked_crc, read_records, write_records
from jaxloop.data.toy import make_toy_scenario
from jaxloop.data.womd import encode_example, load_womd, parse_example

EXAMPLE = "womd/motion_data_one_example.tfrecord"
AV2_ID = "0a1e6f0a-1817-4a98-b02e-db8c9327d151"


@pytest.fixture(scope="module")
def example_bytes(shared_data):
    return (shared_data / EXAMPLE).read_bytes()


@pytest.fixture(scope="module")
def example_record(shared_data):
    return next(read_records(shared_data / EXAMPLE))


@pytest.fixture(scope="module")
def features(example_record):
    return parse_example(example_record)


@pytest.fixture(scope="module")
def av2_archive(shared_data):
    return json.loads((shared_data / "av2" / f"log_map_archive_{AV2_ID}.json").read_text())


def _modified(features, **changes):
    feats = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in features.items()}
    for key, fn in changes.items():
        feats[key] = fn(feats[key])
    return encode_example(feats)


def _no_partial_dirs(parent: pathlib.Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _cache_bytes(out: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


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


# ----------------------------------------------------------------------------- defect 3: convert keeps the old cache


@pytest.fixture(scope="module")
def converted(shared_data, tmp_path_factory):
    """A cache of the tf.Example fixture (converted once) and its bytes, to copy per test."""
    out = tmp_path_factory.mktemp("conv") / "cache"
    assert main(["data", "convert", str(shared_data / EXAMPLE), "--out", str(out)]) == 0
    return out, _cache_bytes(out)


def test_failed_convert_leaves_the_old_cache(converted, tmp_path, capsys):
    src, before = converted
    out = tmp_path / "cache"
    shutil.copytree(src, out)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "empty.tfrecord").write_bytes(b"")
    capsys.readouterr()
    assert main(["data", "convert", str(tmp_path / "in" / "*.tfrecord"), "--out", str(out)]) == 2
    assert "empty.tfrecord: record 0: empty file" in capsys.readouterr().err
    assert _cache_bytes(out) == before  # every file, byte for byte
    assert load_scenarios(out).num_scenarios == 1
    assert _no_partial_dirs(tmp_path) == []
    # Skipping the only file leaves nothing to write: exit 1, and again the old cache stays.
    assert main(["data", "convert", str(tmp_path / "in" / "*.tfrecord"), "--out", str(out), "--skip-invalid"]) == 1
    assert "no scenario converted" in capsys.readouterr().err
    assert _cache_bytes(out) == before and _no_partial_dirs(tmp_path) == []


def test_exception_mid_convert_leaves_the_old_cache(converted, shared_data, tmp_path, monkeypatch):
    src, before = converted
    out = tmp_path / "cache"
    shutil.copytree(src, out)
    calls = []

    def add(self, scenario, info):
        calls.append(info["scenario_id"])
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(CacheWriter, "add", add)
    with pytest.raises(RuntimeError, match="disk on fire"):
        main(["data", "convert", str(shared_data / EXAMPLE), "--out", str(out)])
    assert len(calls) == 1  # it failed after reading a scenario, i.e. mid-way
    assert _cache_bytes(out) == before
    assert _no_partial_dirs(tmp_path) == []


def test_writer_swaps_in_only_when_closed_and_refuses_foreign_dirs(tmp_path):
    toys = _toys(3)
    infos = [{"scenario_id": f"t{i}", "format": "toy"} for i in range(3)]
    write_cache(toys, tmp_path / "c", infos, shard_size=2)
    with pytest.raises(KeyError):
        with CacheWriter(tmp_path / "c", shard_size=1) as writer:
            writer.add(toys[0], infos[0])
            writer.add(toys[1], infos[1])  # one shard written into the partial directory
            raise KeyError("stop")
    assert [i["scenario_id"] for i in load_infos(tmp_path / "c")] == ["t0", "t1", "t2"]
    assert not writer.partial_dir.exists() and _no_partial_dirs(tmp_path) == []
    # Success replaces it whole: no shard of the old cache survives beside the new one.
    write_cache(toys[:1], tmp_path / "c", infos[:1])
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["manifest.json", "shard_00000.npz"]
    # A symlinked destination stays a link; the cache it points to is what is replaced.
    (tmp_path / "link").symlink_to(tmp_path / "c")
    write_cache(toys[:2], tmp_path / "link", infos[:2])
    assert (tmp_path / "link").is_symlink() and len(load_infos(tmp_path / "c")) == 2
    assert _no_partial_dirs(tmp_path) == []
    # The swap replaces the whole directory, so one holding anything else is refused, untouched.
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(CacheError, match=r"mine: refusing to overwrite: .* not part of a scenario cache \(notes\.txt\)"):
        write_cache(toys, other, infos)
    assert [p.name for p in other.iterdir()] == ["notes.txt"] and _no_partial_dirs(tmp_path) == []


# ----------------------------------------------------------------------------- defect 4: skip-invalid isolates bad files


def test_skip_invalid_keeps_good_records_of_broken_tfrecords(example_bytes, example_record, features, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "a_good.tfrecord").write_bytes(example_bytes)
    (d / "b_empty.tfrecord").write_bytes(b"")
    (d / "c_truncated.tfrecord").write_bytes(example_bytes + example_bytes[: len(example_bytes) // 2])
    # A light feature whose size fits no [steps, lights] shape used to escape as a bare numpy ValueError.
    bad = _modified(features, **{"traffic_light_state/past/state": lambda a: a[:-1]})
    write_records(d / "d_mixed.tfrecord", [bad, example_record])
    with pytest.raises(DataError, match=r"d_mixed\.tfrecord: record 0: field 'traffic_light_state/past/state': "
                                        r"expected a numeric feature of 10 step"):
        list(load_womd(d / "d_mixed.tfrecord"))

    report = SkipReport()
    from jaxloop.data.sources import iter_raw
    from jaxloop.data.common import LoadConfig
    got = [info for f in sorted(d.iterdir()) for _, info in iter_raw(f, LoadConfig(), True, report)]
    # The good file, the good record before the truncation, and the good record after the bad one.
    assert [(pathlib.Path(i["source"]).name, i["record"]) for i in got] == [
        ("a_good.tfrecord", 0), ("c_truncated.tfrecord", 0), ("d_mixed.tfrecord", 1)]
    assert report.count == 3
    assert "b_empty.tfrecord: record 0: empty file" in report.skipped[0]
    assert "c_truncated.tfrecord: record 1: truncated record" in report.skipped[1]
    assert "d_mixed.tfrecord: record 0: field 'traffic_light_state/past/state'" in report.skipped[2]


def _av2_copy(shared_data, tmp_path, name, archive) -> pathlib.Path:
    parquet = tmp_path / f"scenario_{name}.parquet"
    shutil.copy(shared_data / "av2" / f"scenario_{AV2_ID}.parquet", parquet)
    (tmp_path / f"log_map_archive_{name}.json").write_text(json.dumps(archive))
    return parquet


def _bad_archives(archive):
    lane_key = next(iter(archive["lane_segments"]))
    area_key = next(iter(archive["drivable_areas"]))

    def edit(fn):
        a = json.loads(json.dumps(archive))
        fn(a)
        return a

    def text_x(a):
        a["lane_segments"][lane_key]["left_lane_boundary"][0]["x"] = "east"

    return {  # name -> (archive, the field the error must name)
        "lanes_list": (edit(lambda a: a.update(lane_segments=list(a["lane_segments"].values()))), "lane_segments"),
        "text_x": (edit(text_x), f"lane_segments[{lane_key}].left_lane_boundary"),
        "bad_id": (edit(lambda a: a["lane_segments"][lane_key].update(id="lane-one")), f"lane_segments[{lane_key}].id"),
        "area_list": (edit(lambda a: a["drivable_areas"].update({area_key: [1, 2]})), f"drivable_areas[{area_key}]"),
        "no_lanes": (edit(lambda a: a.update(lane_segments={})), "lane_segments"),
    }


def test_malformed_av2_maps_are_data_errors(shared_data, av2_archive, tmp_path):
    for name, (archive, field) in _bad_archives(av2_archive).items():
        parquet = _av2_copy(shared_data, tmp_path, name, archive)
        with pytest.raises(DataError) as e:
            load_av2(parquet)
        assert e.value.file == str(tmp_path / f"log_map_archive_{name}.json"), name
        assert e.value.field == field, name
    assert "a scenario without a map cannot be evaluated" in str(e.value)  # the no-lanes case, last
    # Lanes but no drivable area: loads, but says the map has no road edges.
    no_areas = dict(av2_archive, drivable_areas={})
    path = tmp_path / "log_map_archive_x.json"
    path.write_text(json.dumps(no_areas))
    with pytest.warns(UserWarning, match=r"log_map_archive_x\.json: map archive has lanes but no drivable areas"):
        raw = read_map(path)
    assert raw.xyz.shape[0] > 0


def test_convert_skip_invalid_keeps_the_good_av2_scenario(shared_data, av2_archive, tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    _av2_copy(shared_data, d, AV2_ID, av2_archive)
    bad = _bad_archives(av2_archive)
    for name in ("lanes_list", "text_x", "area_list"):
        _av2_copy(shared_data, d, name, bad[name][0])
    out = tmp_path / "cache"
    src = str(d / "scenario_*.parquet")
    assert main(["data", "convert", src, "--out", str(out)]) == 2
    # Sorted, the good scenario comes first and "area_list" second: it stops the conversion, naming its map.
    assert "log_map_archive_area_list.json: field 'drivable_areas[" in capsys.readouterr().err
    assert not out.exists() and _no_partial_dirs(tmp_path) == []
    assert main(["data", "convert", src, "--out", str(out), "--skip-invalid"]) == 0
    err = capsys.readouterr().err
    assert "skipped 3 invalid record(s)" in err
    for name in ("lanes_list", "text_x", "area_list"):
        assert f"log_map_archive_{name}.json" in err
    infos = load_infos(out)
    assert [(i["scenario_id"], pathlib.Path(i["source"]).name) for i in infos] == [
        (AV2_ID, f"scenario_{AV2_ID}.parquet")]


def test_load_source_skip_invalid_reports_on_stderr(shared_data, example_bytes, tmp_path, capsys):
    (tmp_path / "a.tfrecord").write_bytes(example_bytes)
    (tmp_path / "b.tfrecord").write_bytes(b"")
    spec = str(tmp_path / "*.tfrecord")
    with pytest.raises(DataError, match=r"b\.tfrecord: record 0: empty file"):
        load_source(spec)
    scenarios, infos = load_source(spec, skip_invalid=True)
    assert scenarios.batch_shape == (1,) and [pathlib.Path(i["source"]).name for i in infos] == ["a.tfrecord"]
    err = capsys.readouterr().err
    assert "skipped 1 invalid record(s)" in err and "b.tfrecord: record 0: empty file" in err
    with pytest.raises(DataError, match=r"no valid scenario \(skipped 1 invalid record"):
        load_source(str(tmp_path / "b.tfrecord"), skip_invalid=True)


class _Stop(Exception):
    pass


def test_eval_gate_and_train_pass_skip_invalid_through(monkeypatch, tmp_path):
    import jaxloop.data.sources as sources
    from jaxloop.eval.cli import run_eval, run_gate
    from jaxloop.train.loop import train

    seen = []

    def fake(spec, *args, **kwargs):
        seen.append(kwargs.get("skip_invalid"))
        raise _Stop

    monkeypatch.setattr(sources, "load_source", fake)
    for fn, kwargs in ((run_eval, {}), (run_gate, {"candidate": "expert"})):
        assert inspect.signature(fn).parameters["skip_invalid"].default is False
        for flag in (False, True):
            with pytest.raises(_Stop):
                fn(data="some/*.tfrecord", skip_invalid=flag, **kwargs)
    # train: the flag is the experiment's `--data.skip-invalid`
    from jaxloop.config import DataConfig, Experiment
    assert DataConfig().skip_invalid is False
    for flag in (False, True):
        with pytest.raises(_Stop):
            train(Experiment(data=DataConfig(source="some/*.tfrecord", skip_invalid=flag)), out=str(tmp_path / "run"))
    assert seen == [False, True] * 3


# ----------------------------------------------------------------------------- defect 7: the cache loader


@pytest.fixture()
def toy_cache(tmp_path):
    out = tmp_path / "c"
    write_cache(_toys(3), out, [{"scenario_id": f"t{i}", "format": "toy"} for i in range(3)], shard_size=2)
    return out


def _rewrite_shard(cache, name, fn, update_checksum=True):
    with np.load(cache / name) as z:
        data = dict(z)
    fn(data)
    np.savez(cache / name, **data)
    if update_checksum:
        manifest = json.loads((cache / "manifest.json").read_text())
        for shard in manifest["shards"]:
            if shard["file"] == name:
                shard["sha256"] = hashlib.sha256((cache / name).read_bytes()).hexdigest()
        (cache / "manifest.json").write_text(json.dumps(manifest))


def test_cache_without_an_sdc_is_refused(toy_cache):
    def zero_sdc(data):
        data["object_metadata.is_sdc"][1] = False  # shard 0 (scenarios 0, 1), row 1: scenario 1

    _rewrite_shard(toy_cache, "shard_00000.npz", zero_sdc)
    with pytest.raises(CacheError, match=r"shard_00000\.npz: field 'object_metadata\.is_sdc': scenario 1 \('t1', "
                                         r"shard row 1\): expected exactly one SDC \(ego\), found 0"):
        load_scenarios(toy_cache)
    ds = ScenarioDataset(toy_cache)
    assert int(_tag(ds.get([2]))[0]) == 2  # the other shard still serves


def test_cache_with_non_finite_values_is_refused(toy_cache):
    def poison(data):
        data["log_trajectory.x"][0, 3, 7] = np.inf

    _rewrite_shard(toy_cache, "shard_00001.npz", poison)
    with pytest.raises(CacheError, match=r"shard_00001\.npz: field 'log_trajectory\.x': scenario 2 \('t2', shard row "
                                         r"0\): 1 non-finite value"):
        load_scenarios(toy_cache)


def test_flipped_byte_fails_the_checksum(toy_cache):
    shard = toy_cache / "shard_00000.npz"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    listed = json.loads((toy_cache / "manifest.json").read_text())["shards"][0]["sha256"]
    actual = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(CacheError, match=rf"shard_00000\.npz: field 'sha256': checksum mismatch: sha256 {actual}, "
                                         rf"manifest\.json lists {listed}"):
        load_scenarios(toy_cache)


def test_truncated_shard_of_an_old_cache_names_the_shard(toy_cache):
    manifest = json.loads((toy_cache / "manifest.json").read_text())
    for shard in manifest["shards"]:
        del shard["sha256"]  # as written before checksums existed
    (toy_cache / "manifest.json").write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match=r"manifest\.json: 2 shard\(s\) without a sha256 checksum"):
        back = load_scenarios(toy_cache)  # still loads, unverified
    np.testing.assert_array_equal(_tag(back), [0, 1, 2])
    shard = toy_cache / "shard_00001.npz"
    shard.write_bytes(shard.read_bytes()[:-100])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CacheError, match=r"shard_00001\.npz: unreadable shard \(BadZipFile"):
            load_scenarios(toy_cache)


@pytest.mark.parametrize("name", ["../x.npz", "/tmp/x.npz", "sub/../../x.npz", ".."])
def test_shard_paths_outside_the_cache_are_refused(toy_cache, name):
    manifest = json.loads((toy_cache / "manifest.json").read_text())
    manifest["shards"][1]["file"] = name
    (toy_cache / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match=r"manifest\.json: field 'shards\[1\]\.file': shard path .* is not a file "
                                         "name inside the cache directory"):
        ScenarioDataset(toy_cache)


# ----------------------------------------------------------------------------- defect 9: lengths and ranges


def test_huge_tfrecord_length_with_a_valid_crc(example_bytes, tmp_path):
    length = struct.pack("<Q", 2 ** 40)
    header = length + struct.pack("<I", masked_crc(length))
    path = tmp_path / "huge.tfrecord"
    path.write_bytes(example_bytes + header + b"\0" * 64)
    records = read_records(path)
    assert len(next(records)) == len(example_bytes) - 16  # the good first record
    with pytest.raises(TFRecordError, match=rf"huge\.tfrecord: record 1: truncated record: payload has 64 of "
                                            rf"{2 ** 40} bytes .*byte offset {len(example_bytes)}\)") as e:
        next(records)
    assert e.value.record == 1 and e.value.offset == len(example_bytes)


def _state(features, name, fn):
    """Edits the [128, 1] current-step feature `state/current/NAME`."""
    def edit(a):
        a = a.reshape(128, -1).copy()
        fn(a)
        return a.reshape(-1)
    return {f"state/current/{name}": edit}


@pytest.mark.parametrize("name, value, message", [
    ("x", 3e38, r"x 3e\+38 at object {sdc} \(id {oid}\) step 10 outside \|x\| <= 1e\+06 m"),
    ("length", -5.0, r"length -5 at object {sdc} \(id {oid}\) step 10 outside \(0, 30\] m"),
    ("velocity_x", 500.0, r"speed 500(\.\d+)? at object {sdc} \(id {oid}\) step 10 outside speed <= 150 m/s"),
    ("z", -2e4, r"z -20000 at object {sdc} \(id {oid}\) step 10 outside \|z\| <= 10000 m"),
])
def test_physical_ranges_of_valid_states(features, tmp_path, name, value, message):
    sdc = int(np.flatnonzero(features["state/is_sdc"])[0])
    oid = int(features["state/id"][sdc])

    def put(a):
        a[sdc, 0] = value

    path = tmp_path / "bad.tfrecord"
    write_records(path, [_modified(features, **_state(features, name, put))])
    with pytest.raises(DataError, match=rf"bad\.tfrecord: record 0: field 'state/current/{name}': "
                                        + message.format(sdc=sdc, oid=oid)):
        next(load_womd(path))


def test_placeholders_at_invalid_steps_pass(features, tmp_path):
    valid = features["state/current/valid"].reshape(128)
    invalid = np.flatnonzero(valid == 0)
    assert invalid.size  # the fixture pads its 128 slots

    def put(a):
        a[invalid, 0] = -1.0

    def far(a):
        a[invalid, 0] = -1e7

    changes = {**_state(features, "length", put), **_state(features, "x", far)}
    path = tmp_path / "pad.tfrecord"
    write_records(path, [_modified(features, **changes)])
    scenario, _ = next(load_womd(path))
    # Placeholders of invalid steps are zeroed, never carried into the scenario.
    assert float(np.abs(scenario.log_trajectory.x[invalid, 10]).max()) == 0.0


def test_real_fixtures_pass_the_range_checks(shared_data):
    # WOMD coordinates reach a few 10 km: the bounds must leave real logs alone.
    scenarios = [s for f in sorted((shared_data / "womd").glob("*.tfrecord")) for s, _ in load_womd(f)]
    scenarios.append(load_av2(shared_data / "av2" / f"scenario_{AV2_ID}.parquet")[0])
    assert len(scenarios) == 3
