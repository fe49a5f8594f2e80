"""Scenarios in (real logs, procedural generator), `Scenario` pytrees out.

The names below are the data layer's entry points for the rest of jaxloop and for
scripts; its modules are internal. They are imported on first use, so importing a
submodule (say `jaxloop.data.errors`) stays cheap.

- `load_scenarios(spec)` / `load_source(spec)`: any data spec -> `(scenarios, infos)`.
- `ScenarioDataset`, `CacheWriter`, `write_cache`, `MANIFEST`: the packed on-disk cache.
- `Mixture`, `mix`, `parse_weight`: weighted sources.
- `Dataset`, `open_dataset`, `as_dataset`, `InMemoryDataset`, `MixtureDataset`, `BatchPlan`: what training and
  evaluation iterate (streamed caches, in-memory sets, weighted mixtures) and the batch sequence.
- `init_steps_of`: the one `init_steps` of a set of infos.
- `make_toy_scenario`: the tiny straight-road scenario of tests and examples.
- `LoadConfig`, `RawLog`, `RawRoadgraph`, `build_scenario`: raw logs -> `Scenario`, for new formats and bridges.
- `DataError`, `SkipReport`: bad input, located.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_scenarios": "sources", "load_source": "sources", "SPEC_SEPARATOR": "sources",
    "expand_sources": "sources", "detect_format": "sources",
    "ScenarioDataset": "pipeline", "CacheWriter": "pipeline", "write_cache": "pipeline", "MANIFEST": "pipeline",
    "Mixture": "mixture", "mix": "mixture", "parse_weight": "mixture",
    "Dataset": "dataset", "InMemoryDataset": "dataset", "MixtureDataset": "dataset", "BatchPlan": "dataset",
    "as_dataset": "dataset", "open_dataset": "dataset",
    "init_steps_of": "formats",
    "make_toy_scenario": "toy",
    "LoadConfig": "common", "RawLog": "common", "build_scenario": "common",
    "RawRoadgraph": "mapcompile", "MapConfig": "mapcompile",
    "DataError": "errors", "SkipReport": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"jaxloop.data.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jaxloop.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
