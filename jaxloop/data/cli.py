"""`jaxloop data convert` and `jaxloop data inspect`: raw scenario files -> cache, and a look inside.

Formats are detected per file by the registry of `jaxloop.data.formats`: a TFRecord (by
content, whatever the name) holds WOMD records (tf.Example or Scenario proto, detected
per record); a `.parquet` is an Argoverse 2 scenario with its `log_map_archive_*.json`
beside it; a `.json` / `.json.gz` is a GPUDrive / PufferDrive scene; a directory with a
`manifest.json` is a jaxloop scenario cache, any other directory stands for the raw
files in it.

Guarantees of `convert`: every bad file or record is a `DataError` naming file, record
and field; with `--skip-invalid` each is counted (and listed on stderr) and every good
scenario is kept. The cache at `--out` is replaced only by a complete new one: any
failure (exit 1 or 2, or an exception) leaves an existing cache there untouched and no
partial directory behind.
"""

from __future__ import annotations

import glob
import json
import pathlib
import sys
import warnings
from typing import Annotated, Literal

import numpy as np
import tyro

from jaxloop.data.common import LoadConfig
from jaxloop.data.errors import DataError, SkipReport
from jaxloop.data.pipeline import CacheWriter, ScenarioDataset
from jaxloop.data.sources import detect_format, expand_sources, iter_raw
from jaxloop.sim.datatypes import Scenario


def convert(src: tyro.conf.Positional[list[str]], out: str, num_objects: int = 128, skip_invalid: bool = False,
            select: Literal["error", "nearest"] = "nearest", shard_size: int = 256, num_lights: int = 16) -> int:
    """Convert raw scenario files (WOMD TFRecords, AV2 parquet, GPUDrive JSON) into a packed cache.

    Args:
      src: input files, directories of raw files or glob patterns (several, space-separated).
      out: the cache directory to write.
      num_objects: N object slots per scenario.
      skip_invalid: skip (and count) files and records that fail to read, decode or validate instead of stopping.
      select: more objects than N: "nearest" keeps the N nearest to the SDC (and every track to predict /
        object of interest) and counts the rest in info["dropped_objects"]; "error" stops.
      shard_size: scenarios per shard file.
      num_lights: traffic-light slots per step.
    """
    try:
        return _convert(src, out, LoadConfig(num_objects=num_objects, select=select, num_lights=num_lights),
                        skip_invalid, shard_size)
    except (DataError, FileNotFoundError) as e:
        print(f"jaxloop data convert: error: {e}", file=sys.stderr)
        return 2


def _convert(src: list[str], out: str, config: LoadConfig, skip_invalid: bool, shard_size: int) -> int:
    report = SkipReport()
    shape_of: dict[int, str] = {}
    paths = expand_sources(src)
    known = []
    for path in paths:  # an unknown format fails (or is skipped) before anything is read
        try:
            detect_format(path)
            known.append(path)
        except DataError as e:
            if not skip_invalid:
                raise
            report.add(e)
    # The writer fills a partial directory swapped in at `out` only by close(): any failure
    # below leaves an old cache there as it was.
    writer = CacheWriter(out, shard_size=shard_size)
    try:
        for path in known:
            for scenario, info in iter_raw(path, config, skip_invalid, report):
                steps = scenario.num_steps
                shape_of.setdefault(steps, info["format"])
                if len(shape_of) > 1:
                    raise DataError(f"scenarios of {sorted(shape_of)} steps ({shape_of}) cannot share one cache; "
                                    "convert each dataset into its own --out", file=path, record=info.get("record"))
                writer.add(scenario, info)
        if report.count:
            print(report, file=sys.stderr)
        if not len(writer):
            writer.abort()
            print(f"no scenario converted from {src}", file=sys.stderr)
            return 1
        manifest = writer.close()
    except BaseException:
        writer.abort()
        raise
    print(f"wrote {manifest['num_scenarios']} scenarios ({manifest['counts']}) in {len(manifest['shards'])} "
          f"shard(s) to {out}" + (f"; skipped {report.count}" if report.count else ""))
    return 0


def summary(scenario: Scenario, info: dict) -> dict:
    """The per-scenario facts `inspect --json` prints (one unbatched numpy Scenario)."""
    traj, meta, rm, tl = scenario.log_trajectory, scenario.object_metadata, scenario.roadmap, scenario.traffic_lights
    sdc = int(np.argmax(np.asarray(meta.is_sdc)))
    valid = np.asarray(traj.valid)
    sdc_xy = [[float(x), float(y)] if v else None
              for x, y, v in zip(np.asarray(traj.x)[sdc], np.asarray(traj.y)[sdc], valid[sdc])]
    return {
        "scenario_id": info.get("scenario_id"), "format": info.get("format"),
        "num_objects": int(np.asarray(meta.is_valid).sum()), "num_object_slots": int(valid.shape[0]),
        "num_steps": int(valid.shape[1]), "sdc_index": sdc, "num_valid_object_steps": int(valid.sum()),
        "sdc_xy": sdc_xy, "num_lanes": int(np.asarray(rm.lane_valid).any(-1).sum()),
        "num_edge_segments": int(np.asarray(rm.edge_valid).sum()),
        "num_crosswalks": int(np.asarray(rm.crosswalk_valid).sum()),
        "num_stop_signs": int(np.asarray(rm.stop_sign_valid).sum()),
        "num_lights": int(np.asarray(tl.valid).any(-1).sum()),
        "init_steps": info.get("init_steps"), "dropped_objects": info.get("dropped_objects", 0),
    }


def inspect(path: tyro.conf.Positional[list[str]], json_lines: Annotated[bool, tyro.conf.arg(name="json")] = False,
            num_objects: int = 128, select: Literal["error", "nearest"] = "nearest") -> int:
    """Describe the scenarios of caches and raw files (--json: one JSON object per scenario).

    Args:
      path: scenario cache directories, raw files (WOMD TFRecord, AV2 parquet, GPUDrive JSON), directories of raw
        files or glob patterns (several, space-separated).
      json_lines: print one JSON object per scenario instead of a table.
      num_objects: N object slots when reading a raw file.
      select: more objects than N in a raw file: "nearest" (keep the N nearest to the SDC) or "error".
    """
    paths = [path] if isinstance(path, (str, pathlib.Path)) else list(path)
    try:
        return _inspect(paths, json_lines, LoadConfig(num_objects=num_objects, select=select))
    except (DataError, FileNotFoundError) as e:
        print(f"jaxloop data inspect: error: {e}", file=sys.stderr)
        return 2


def _inspect(paths: list, json_lines: bool, config: LoadConfig) -> int:
    for p in paths:
        if not glob.has_magic(str(p)) and not pathlib.Path(p).exists():
            raise FileNotFoundError(f"{p}: no such file or directory")
    expanded = expand_sources([str(p) for p in paths])

    def items():
        for p in expanded:
            if detect_format(p) == "cache":
                ds = ScenarioDataset(p)
                yield from ((_index(ds.get([i])), ds.infos[i]) for i in range(len(ds)))
            else:
                yield from iter_raw(p, config, False, SkipReport())

    if not json_lines:
        print(f"{'scenario_id':<40} {'format':<16} {'objects':>7} {'steps':>5} {'sdc':>4} {'lanes':>5} "
              f"{'edges':>5} {'lights':>6}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if json_lines else "default")
        for scenario, info in items():
            s = summary(scenario, info)
            if json_lines:
                print(json.dumps(s))
            else:
                print(f"{str(s['scenario_id']):<40} {str(s['format']):<16} {s['num_objects']:>7} "
                      f"{s['num_steps']:>5} {s['sdc_index']:>4} {s['num_lanes']:>5} {s['num_edge_segments']:>5} "
                      f"{s['num_lights']:>6}")
    return 0


def _index(batched: Scenario) -> Scenario:
    import jax
    return jax.tree.map(lambda a: a[0], batched)

