"""One string names a scenario set, for the CLI and experiments.

- `toy[:NUM]`: the tiny straight-road scenarios of `jaxloop.data.toy`;
- `procedural:SPLIT:NUM[:SEED]`: generated on the fly (`jaxloop.data.procedural`);
- a directory holding a packed cache (`jaxloop data convert` / `data generate`);
- a raw file of any format of the registry (`jaxloop.data.formats`: WOMD TFRecord, AV2
  parquet, GPUDrive / PufferDrive JSON), a directory of raw files, or a glob of them;
- several of these joined by commas (`a.tfrecord,scenes/,cache`): one set, in order
  (their scenarios must share N and T).

`load_source(spec)` returns a batched `Scenario` `[S, ...]` (numpy) and one info dict
per scenario, each with the `init_steps` of its source (`formats.init_steps_of` gives the
one value of a set). Raw files keep, by default, the N objects nearest to the SDC (and
every track to predict / object of interest); `info["dropped_objects"]` counts the rest.
Raw files that are bad raise `DataError` naming file, record and field; with
`skip_invalid=True` bad files and records are left out, counted, and the `SkipReport` is
printed on stderr (an error if nothing valid is left). `load_scenarios(spec)` also reads
weighted mixtures (`SPEC@W,...`).
"""

from __future__ import annotations

import glob
import pathlib
import sys
from typing import Iterator

import numpy as np

from jaxloop.data import formats
from jaxloop.data.common import LoadConfig
from jaxloop.data.errors import MALFORMED, DataError, SkipReport, as_data_error
from jaxloop.data.mixture import Mixture, mix, parse_weight
from jaxloop.data.pipeline import MANIFEST
from jaxloop.sim.datatypes import Scenario, stack_scenarios

SPEC_SEPARATOR = ","


def _concat(parts: list[tuple[Scenario, list[dict]]], spec: str) -> tuple[Scenario, list[dict]]:
    import jax
    if len(parts) == 1:
        return parts[0]
    shapes = {(int(np.shape(s.log_trajectory.x)[-2]), int(np.shape(s.log_trajectory.x)[-1])) for s, _ in parts}
    if len(shapes) > 1:
        raise ValueError(f"data spec {spec!r}: its parts have different (objects, steps) shapes {sorted(shapes)}; "
                         "load them apart or convert them with the same --num-objects")
    scenarios = jax.tree.map(lambda *a: np.concatenate([np.asarray(x) for x in a]), *[s for s, _ in parts])
    return scenarios, [info for _, i in parts for info in i]


def _load_one(spec: str, num_objects: int | None, select: str, skip_invalid: bool) -> tuple[Scenario, list[dict]]:
    if spec == "toy" or spec.startswith("toy:"):
        from jaxloop.data.toy import make_toy_scenario
        num = int(spec.split(":")[1]) if ":" in spec else 16
        kw = {} if num_objects is None else {"num_objects": num_objects}
        scenarios = [make_toy_scenario(seed=s, **kw) for s in range(num)]
        return stack_scenarios(scenarios), [{"scenario_id": f"toy-{s}", "format": "toy", "family": "toy",
                                             "init_steps": 11} for s in range(num)]
    if spec.startswith("procedural:"):
        parts = spec.split(":")
        if len(parts) not in (3, 4):
            raise ValueError(f"data spec {spec!r}: expected procedural:SPLIT:NUM[:SEED]")
        from jaxloop.data import procedural
        seed = int(parts[3]) if len(parts) == 4 else 0
        scenarios, infos = procedural.generate(parts[1], int(parts[2]), seed)
        for info in infos:
            info.setdefault("init_steps", procedural.GeneratorConfig().init_steps)
        return scenarios, infos
    from jaxloop.data import pipeline
    try:
        paths = expand_sources([spec])
    except (FileNotFoundError, DataError) as e:
        raise FileNotFoundError(f"data spec {spec!r}: not 'toy', 'procedural:SPLIT:NUM', a cache directory or "
                                f"existing raw scenario files / directories ({e})") from None
    config = LoadConfig(select=select) if num_objects is None else LoadConfig(num_objects=num_objects, select=select)
    parts: list[tuple[Scenario, list[dict]]] = []
    scenarios, infos = [], []
    report = SkipReport()
    for p in paths:
        try:
            fmt = detect_format(p)
        except DataError as e:
            if not skip_invalid:
                raise
            report.add(e)
            continue
        if fmt == "cache":
            if scenarios:  # keep the order of the paths
                parts.append((stack_scenarios(scenarios), infos))
                scenarios, infos = [], []
            parts.append((pipeline.load_scenarios(p), pipeline.load_infos(p)))
            continue
        for scenario, info in iter_raw(p, config, skip_invalid, report):
            scenarios.append(scenario)
            infos.append(info)
    if scenarios:
        parts.append((stack_scenarios(scenarios), infos))
    if report.count:
        print(f"data spec {spec!r}: {report}", file=sys.stderr)
    if not parts:
        if report.count:
            raise DataError(f"data spec {spec!r}: no valid scenario (skipped {report.count} invalid record(s))")
        raise FileNotFoundError(f"data spec {spec!r}: no scenario in {[str(p) for p in paths]}")
    return _concat(parts, spec)


def load_source(spec: str, num_objects: int | None = None, select: str = "nearest",
                skip_invalid: bool = False) -> tuple[Scenario, list[dict]]:
    """The scenarios named by `spec` (see the module docstring) as one batch and their infos.

    num_objects: N object slots for raw files (default 128) and toy scenarios.
    select: raw files with more objects than N: "nearest" or "error" (`LoadConfig.select`).
    skip_invalid: leave out (and count on stderr) raw files and records that fail to read or validate.
    """
    specs = [s.strip() for s in spec.split(SPEC_SEPARATOR)] if SPEC_SEPARATOR in spec else [spec]
    if not all(specs):
        raise ValueError(f"data spec {spec!r}: an empty part between commas")
    return _concat([_load_one(s, num_objects, select, skip_invalid) for s in specs], spec)


def load_scenarios(spec: str, num_objects: int | None = None, select: str = "nearest",
                   skip_invalid: bool = False) -> tuple[Scenario | Mixture, list[dict]]:
    """Every scenario of a data spec and one info dict per scenario: the entry point of a script.

    `spec` is any spec of `load_source` (toy, procedural, caches, raw files, comma-joined);
    sources with weights (`procedural:train:1024@0.75,real/@0.25`) give a `Mixture` whose
    batches take each source in the given proportion (slot sizes padded to the largest).
    Otherwise the scenarios are one batched numpy `Scenario` `[S, ...]`, validated.
    """
    parts = [parse_weight(part.strip()) for part in spec.split(SPEC_SEPARATOR)]
    if any(weight is not None for _, weight in parts):
        mixture = mix([(part, *load_source(part, num_objects, select, skip_invalid), weight)
                       for part, weight in parts])
        return mixture, mixture.infos
    scenarios, infos = load_source(spec, num_objects, select, skip_invalid)
    scenarios.validate()
    return scenarios, infos


def expand_sources(sources: list[str]) -> list[pathlib.Path]:
    """Files named or matched by globs, in order, without repeats; a pattern matching nothing is an error.

    A directory holding a cache manifest stays one entry (a cache); any other directory
    stands for the raw scenario files directly in it (sorted; files of no known format,
    e.g. a README, are left out; none at all is an error).
    """
    out: list[pathlib.Path] = []
    for src in sources:
        matches = sorted(glob.glob(src)) if glob.has_magic(src) else [src]
        if not matches:
            raise FileNotFoundError(f"{src}: no file matches")
        for m in matches:
            p = pathlib.Path(m)
            if not p.exists():
                raise FileNotFoundError(f"{p}: no such file")
            if p.is_dir() and not (p / MANIFEST).is_file():
                files = [f for f in sorted(p.iterdir()) if f.is_file() and formats.find_format(f) is not None]
                if not files:
                    raise DataError(f"a directory with neither a {MANIFEST} (scenario cache) nor raw scenario files "
                                    f"({formats.describe()})", file=p)
            else:
                files = [p]
            for f in files:
                if f not in out:
                    out.append(f)
    return out


def detect_format(path: pathlib.Path) -> str:
    """"cache" or the registry name of a raw file's format ("womd", "av2", "av2_map", "gpudrive", see
    `jaxloop.data.formats`); raises `DataError` for anything else."""
    if path.is_dir():
        if (path / MANIFEST).is_file():
            return "cache"
        raise DataError(f"a directory without {MANIFEST} (not a scenario cache)", file=path)
    fmt = formats.find_format(path)
    if fmt is None:
        raise DataError(f"unrecognised format: expected {formats.describe()} or a scenario cache directory", file=path)
    return fmt.name


def iter_raw(path: pathlib.Path, config: LoadConfig, skip_invalid: bool,
             report: SkipReport | None) -> Iterator[tuple[Scenario, dict]]:
    """(Scenario, info) of every record of one raw file through its registry entry; each info carries
    `init_steps`. Any error of the file becomes a `DataError` naming it; with `skip_invalid` it is counted in
    `report` and the rest of that file is left out (the readers skip bad records themselves and go on)."""
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
    if detect_format(path) == "cache":
        raise DataError("is a scenario cache, not a raw file", file=path)
    yield from formats.read(path, config, skip_invalid, report)
