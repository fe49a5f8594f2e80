"""`jaxloop data convert` and `jaxloop data inspect`: raw scenario files -> cache, and a look inside.

Formats are detected per file: a TFRecord (by content, whatever the name) holds WOMD
records (tf.Example or Scenario proto, detected per record); a `.parquet` is an Argoverse
2 scenario with its `log_map_archive_*.json` beside it; a directory with a
`manifest.json` is a jaxloop scenario cache.

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
from typing import Annotated, Iterator, Literal

import numpy as np
import tyro

from jaxloop.data.common import LoadConfig
from jaxloop.data.errors import MALFORMED, DataError, SkipReport, as_data_error
from jaxloop.data.pipeline import MANIFEST, CacheWriter, ScenarioDataset
from jaxloop.data.tfrecord import is_tfrecord
from jaxloop.sim.datatypes import Scenario


def expand_sources(sources: list[str]) -> list[pathlib.Path]:
    """Files named or matched by globs, in order, without repeats; a pattern matching nothing is an error."""
    out: list[pathlib.Path] = []
    for src in sources:
        matches = sorted(glob.glob(src)) if glob.has_magic(src) else [src]
        if not matches:
            raise FileNotFoundError(f"{src}: no file matches")
        for m in matches:
            p = pathlib.Path(m)
            if not p.exists():
                raise FileNotFoundError(f"{p}: no such file")
            if p not in out:
                out.append(p)
    return out


def detect_format(path: pathlib.Path) -> str:
    """"cache", "womd" or "av2" for a path; raises `DataError` for anything else."""
    if path.is_dir():
        if (path / MANIFEST).is_file():
            return "cache"
        raise DataError(f"a directory without {MANIFEST} (not a scenario cache)", file=path)
    if path.suffix == ".parquet":
        return "av2"
    if path.suffix == ".json" and path.name.startswith("log_map_archive_"):
        return "av2_map"
    if path.stat().st_size == 0 or ".tfrecord" in path.name or is_tfrecord(path):
        return "womd"
    raise DataError("unrecognised format: expected a TFRecord of WOMD records, an AV2 scenario .parquet or a "
                    "scenario cache directory", file=path)


def iter_raw(path: pathlib.Path, config: LoadConfig, skip_invalid: bool,
             report: SkipReport | None) -> Iterator[tuple[Scenario, dict]]:
    """(Scenario, info) of every record of one raw file. Any error of the file becomes a `DataError` naming it;
    with `skip_invalid` it is counted in `report` and the rest of that file is left out (the readers skip bad
    records themselves and go on)."""
    try:
        yield from _iter_raw(path, config, skip_invalid, report)
    except (DataError, *MALFORMED) as e:
        located = isinstance(e, DataError) and e.file is not None
        error = e if located else as_data_error(e, file=path)
        if not skip_invalid:
            if located:
                raise
            raise error from e
        if report is not None:
            report.add(error)


def _iter_raw(path: pathlib.Path, config: LoadConfig, skip_invalid: bool,
              report: SkipReport | None) -> Iterator[tuple[Scenario, dict]]:
    fmt = detect_format(path)
    if fmt == "womd":
        from jaxloop.data.womd import load_womd
        yield from load_womd(path, config, skip_invalid=skip_invalid, skip_report=report)
    elif fmt == "av2":
        from jaxloop.data.av2 import load_av2
        yield load_av2(path, config=config)
    elif fmt == "av2_map":
        return  # read together with its scenario parquet
    else:
        raise DataError("is a scenario cache, not a raw file", file=path)


def convert(src: tyro.conf.Positional[list[str]], out: str, num_objects: int = 128, skip_invalid: bool = False,
            select: Literal["error", "nearest"] = "error", shard_size: int = 256, num_lights: int = 16) -> int:
    """Convert raw scenario files (WOMD TFRecords, AV2 parquet; files or globs) into a packed cache.

    Args:
      src: input files or glob patterns.
      out: the cache directory to write.
      num_objects: N object slots per scenario.
      skip_invalid: skip (and count) files and records that fail to read, decode or validate instead of stopping.
      select: more objects than N: "error", or "nearest" to keep the N nearest to the SDC.
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
    }


def inspect(path: tyro.conf.Positional[str], json_lines: Annotated[bool, tyro.conf.arg(name="json")] = False,
            num_objects: int = 128, select: Literal["error", "nearest"] = "error") -> int:
    """Describe the scenarios of a cache directory or a raw file (--json: one JSON object per scenario).

    Args:
      path: a scenario cache directory, a WOMD TFRecord or an AV2 scenario parquet.
      json_lines: print one JSON object per scenario instead of a table.
      num_objects: N object slots when reading a raw file.
      select: more objects than N in a raw file: "error" or "nearest".
    """
    try:
        return _inspect(pathlib.Path(path), json_lines, LoadConfig(num_objects=num_objects, select=select))
    except (DataError, FileNotFoundError) as e:
        print(f"jaxloop data inspect: error: {e}", file=sys.stderr)
        return 2


def _inspect(p: pathlib.Path, json_lines: bool, config: LoadConfig) -> int:
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or directory")
    if detect_format(p) == "cache":
        ds = ScenarioDataset(p)
        items = ((_index(ds.get([i])), ds.infos[i]) for i in range(len(ds)))
    else:
        items = iter_raw(p, config, False, SkipReport())
    if not json_lines:
        print(f"{'scenario_id':<40} {'format':<16} {'objects':>7} {'steps':>5} {'sdc':>4} {'lanes':>5} "
              f"{'edges':>5} {'lights':>6}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if json_lines else "default")
        for scenario, info in items:
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

