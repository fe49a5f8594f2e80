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
printed on stderr (an error if nothing valid is left).
"""

from __future__ import annotations

import sys

import numpy as np

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
    from jaxloop.data.cli import detect_format, expand_sources, iter_raw
    from jaxloop.data.common import LoadConfig
    from jaxloop.data.errors import DataError, SkipReport
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
