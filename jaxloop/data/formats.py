"""The registry of raw scenario formats: how to recognise a file, read it, and where its episodes start.

Every reader decodes its records into `jaxloop.data.common.RawLog` and goes through the
one shared `build_scenario`; an entry here only says which files are its own and what
its logs look like (`num_steps` where the format fixes it, `init_steps`: the logged
steps that initialise an episode). Entries are tried in order, the first match wins.
Every info dict a reader yields carries `init_steps`; `init_steps_of` is the one value of
a set of infos (caches written before infos carried it fall back on their `format`).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Callable, Iterator

from jaxloop.data.common import LoadConfig
from jaxloop.data.errors import DataError, SkipReport
from jaxloop.sim.datatypes import Scenario

ReadFn = Callable[[pathlib.Path, LoadConfig, bool, "SkipReport | None"], Iterator[tuple[Scenario, dict]]]


@dataclasses.dataclass(frozen=True)
class Format:
    """One raw scenario format.

    name: what `detect_format` returns.
    matches: whether a (file) path is this format's, by name and / or content.
    read: (path, config, skip_invalid, skip_report) -> (Scenario, info) pairs through `build_scenario`.
    init_steps: logged steps that initialise an episode (the current step is init_steps - 1).
    num_steps: T of every log of the format, None where it varies.
    info_formats: the `info["format"]` values its reader writes (to place infos of old caches).
    companion: a file read together with another one (it yields nothing by itself).
    """

    name: str
    matches: Callable[[pathlib.Path], bool]
    read: ReadFn
    init_steps: int
    num_steps: int | None
    info_formats: tuple[str, ...]
    description: str
    companion: bool = False


def _skipping(read_one: Callable[[pathlib.Path, LoadConfig], tuple[Scenario, dict]]) -> ReadFn:
    """A one-scenario-per-file reader as a `ReadFn` that counts and skips a bad file under skip_invalid."""
    def read(path, config, skip_invalid, report):
        try:
            result = read_one(path, config)
        except DataError as e:
            if not skip_invalid:
                raise
            if report is not None:
                report.add(e.located(file=os.fspath(path)))
            return
        yield result
    return read


def _read_womd(path, config, skip_invalid, report):
    from jaxloop.data.womd import load_womd
    yield from load_womd(path, config, skip_invalid=skip_invalid, skip_report=report)


def _read_av2(path, config):
    from jaxloop.data.av2 import load_av2
    return load_av2(path, config=config)


def _read_gpudrive(path, config):
    from jaxloop.data.gpudrive import load_gpudrive
    return load_gpudrive(path, config)


def _nothing(path, config, skip_invalid, report):
    return iter(())


def _is_womd(path: pathlib.Path) -> bool:
    from jaxloop.data.tfrecord import is_tfrecord
    return path.stat().st_size == 0 or ".tfrecord" in path.name or is_tfrecord(path)


def _is_av2_map(path: pathlib.Path) -> bool:
    return path.suffix == ".json" and path.name.startswith("log_map_archive_")


def _is_gpudrive(path: pathlib.Path) -> bool:
    return path.name.endswith((".json", ".json.gz"))


FORMATS: tuple[Format, ...] = (
    Format("av2", lambda p: p.suffix == ".parquet", _skipping(_read_av2), init_steps=50, num_steps=110,
           info_formats=("av2",),
           description="an Argoverse 2 scenario .parquet (its log_map_archive_*.json beside it)"),
    Format("av2_map", _is_av2_map, _nothing, init_steps=50, num_steps=110, info_formats=(),
           description="an AV2 log_map_archive_*.json (read with its scenario parquet)", companion=True),
    Format("gpudrive", _is_gpudrive, _skipping(_read_gpudrive), init_steps=11, num_steps=None,
           info_formats=("gpudrive",), description="a GPUDrive / PufferDrive JSON scene (.json, .json.gz)"),
    Format("womd", _is_womd, _read_womd, init_steps=11, num_steps=91,
           info_formats=("womd_tf_example", "womd_scenario"),
           description="a TFRecord of WOMD records (tf.Example or Scenario proto)"),
)
BY_NAME = {f.name: f for f in FORMATS}
# Generated sources keep WOMD's timing.
_GENERATED_INIT_STEPS = {"toy": 11, "procedural": 11}


def find_format(path: pathlib.Path) -> Format | None:
    """The first registry entry whose `matches` accepts the file `path`, else None."""
    for fmt in FORMATS:
        if fmt.matches(path):
            return fmt
    return None


def describe() -> str:
    return ", ".join(f.description for f in FORMATS if not f.companion)


def read(path: pathlib.Path, config: LoadConfig, skip_invalid: bool = False,
         report: SkipReport | None = None) -> Iterator[tuple[Scenario, dict]]:
    """(Scenario, info) pairs of one raw file, each info with its source's `init_steps`."""
    fmt = find_format(path)
    if fmt is None:
        raise DataError(f"unrecognised format: expected {describe()}", file=path)
    for scenario, info in fmt.read(path, config, skip_invalid, report):
        info.setdefault("init_steps", fmt.init_steps)
        yield scenario, info


def init_steps_of(infos: list[dict], what: str = "the scenarios") -> int:
    """The one `init_steps` of a set of scenario infos; ValueError when they mix sources of different starts."""
    found: dict[int, str] = {}
    for info in infos:
        steps = info.get("init_steps")
        fmt = str(info.get("format", ""))
        if steps is None:
            steps = _GENERATED_INIT_STEPS.get(fmt)
            steps = next((f.init_steps for f in FORMATS if fmt in f.info_formats), steps)
        if steps is None:
            raise ValueError(f"{what}: scenario {info.get('scenario_id')!r} (format {fmt!r}) has no init_steps in its "
                             "info and its format is not in the registry")
        found.setdefault(int(steps), fmt)
    if not found:
        raise ValueError(f"{what}: no scenarios")
    if len(found) > 1:
        raise ValueError(f"{what}: scenarios start at different steps (init_steps by format: "
                         f"{', '.join(f'{v}={k}' for k, v in sorted(found.items()))}); evaluate each source apart")
    return next(iter(found))
