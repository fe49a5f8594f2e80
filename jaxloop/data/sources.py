"""One string names a scenario set, for the CLI and experiments.

- `toy[:NUM]`: the tiny straight-road scenarios of `jaxloop.data.toy`;
- `procedural:SPLIT:NUM[:SEED]`: generated on the fly (`jaxloop.data.procedural`);
- a directory holding a packed cache (`jaxloop data convert` / `data generate`);
- a raw WOMD TFRecord (either layout) or AV2 parquet file, or a glob of them.

`load_source(spec)` returns a batched `Scenario` `[S, ...]` (numpy) and one info dict
per scenario. Raw files that are bad raise `DataError` naming file, record and field;
with `skip_invalid=True` bad files and records are left out, counted, and the
`SkipReport` is printed on stderr (an error if nothing valid is left).
"""

from __future__ import annotations

import glob
import os
import pathlib
import sys

from jaxloop.sim.datatypes import Scenario, stack_scenarios


def load_source(spec: str, num_objects: int | None = None, skip_invalid: bool = False) -> tuple[Scenario, list[dict]]:
    if spec == "toy" or spec.startswith("toy:"):
        from jaxloop.data.toy import make_toy_scenario
        num = int(spec.split(":")[1]) if ":" in spec else 16
        kw = {} if num_objects is None else {"num_objects": num_objects}
        scenarios = [make_toy_scenario(seed=s, **kw) for s in range(num)]
        return stack_scenarios(scenarios), [{"scenario_id": f"toy-{s}", "format": "toy", "family": "toy"}
                                            for s in range(num)]
    if spec.startswith("procedural:"):
        parts = spec.split(":")
        if len(parts) not in (3, 4):
            raise ValueError(f"data spec {spec!r}: expected procedural:SPLIT:NUM[:SEED]")
        from jaxloop.data import procedural
        seed = int(parts[3]) if len(parts) == 4 else 0
        return procedural.generate(parts[1], int(parts[2]), seed)
    path = pathlib.Path(spec)
    if path.is_dir():
        from jaxloop.data import pipeline
        return pipeline.load_scenarios(path), pipeline.load_infos(path)
    files = sorted(glob.glob(spec)) if any(c in spec for c in "*?[") else [spec]
    if not files or not all(os.path.isfile(f) for f in files):
        raise FileNotFoundError(f"data spec {spec!r}: not 'toy', 'procedural:SPLIT:NUM', a cache directory "
                                "or existing WOMD / AV2 files")
    from jaxloop.data.cli import detect_format, iter_raw
    from jaxloop.data.common import LoadConfig
    from jaxloop.data.errors import DataError, SkipReport
    config = LoadConfig() if num_objects is None else LoadConfig(num_objects=num_objects)
    report = SkipReport()
    scenarios, infos = [], []
    for f in files:
        p = pathlib.Path(f)
        try:
            detect_format(p)
        except DataError as e:
            if not skip_invalid:
                raise
            report.add(e)
            continue
        for scenario, info in iter_raw(p, config, skip_invalid, report):
            scenarios.append(scenario)
            infos.append(info)
    if report.count:
        print(f"data spec {spec!r}: {report}", file=sys.stderr)
    if not scenarios:
        raise DataError(f"data spec {spec!r}: no valid scenario (skipped {report.count} invalid record(s))")
    return stack_scenarios(scenarios), infos
