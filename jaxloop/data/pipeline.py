"""Packed on-disk scenario cache, shuffling, batching and prefetch to device.

A cache is a directory:

    manifest.json        format name + version, per-field shape/dtype (one scenario),
                         shard list with counts and sha256, one info dict per scenario
    shard_00000.npz      every Scenario leaf stacked over the shard's scenarios, keyed by
    shard_00001.npz      its pytree path ("log_trajectory.x", "roadmap.lane_xy", ...)

Shards are plain `np.savez` archives (uncompressed, so loading is a copy) read back with
`allow_pickle=False`.

Writing is all or nothing: `CacheWriter` / `write_cache` write into a hidden sibling
directory (`.NAME.*.partial`) and only a successful `close()` swaps it in for NAME; a
failure or exception at any point removes the partial directory and leaves whatever was
at NAME (an old cache included) untouched. The swap renames the old directory aside,
renames the new one in and then deletes the old one; only a crash between those two
renames leaves the old cache under `.NAME.*.old` instead of NAME. Because the swap
replaces the whole directory, the writer refuses a NAME holding anything but an empty
directory or a cache of this format version (no foreign file is ever deleted).

Every load checks, and names the manifest, shard, scenario and field when something
disagrees: the format version; each shard path (a plain file name inside the cache
directory: no `..`, no absolute path); each shard's sha256 against the manifest; that
the shard is a readable archive; each field's shape and dtype; finite float values; and
exactly one SDC per scenario (a cache edited to have none would silently make slot 0
the ego). All of these raise `CacheError` (a `DataError`). Caches written before shard
checksums existed (no "sha256" in their manifest) still load, unverified, with a
warning naming the manifest; `jaxloop data convert` rebuilds them with checksums.

Format version 2 holds no `family` field (the procedural map family is in the infos);
version 1 caches still load, their `family` arrays ignored.

`ScenarioDataset` is a `jaxloop.data.dataset.Dataset`: training and evaluation stream it
shard by shard (`train_batches` / `batches`, `(Scenario, infos)` per batch), each process
reading its own blocks of the cache, with shuffling by seed and epoch and prefetch on a
background thread (see `jaxloop.data.dataset`).
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import pathlib
import re
import shutil
import tempfile
import threading
import warnings
import weakref
import zipfile
from typing import Any, Sequence

import jax
import numpy as np

from jaxloop.data.dataset import Dataset
from jaxloop.data.errors import MALFORMED, DataError
from jaxloop.sim.datatypes import (ObjectMetadata, RoadMap, Route, Scenario, ShapeError, TrafficLights, Trajectory,
                                   field_names)

CACHE_FORMAT = "jaxloop.scenario_cache"
CACHE_VERSION = 2
# Version 1 caches also stored `family` (the procedural map family id, now in the infos): read, field ignored.
READABLE_VERSIONS = (1, 2)
_DROPPED_FIELDS = {1: ("family",)}
MANIFEST = "manifest.json"


class CacheError(DataError):
    """A cache directory that cannot be read or written as asked (version, shard, shape)."""


# ----------------------------------------------------------------------------- pytree <-> flat dict


def _template() -> Scenario:
    """A `Scenario` whose leaves are placeholders: only its structure and key paths matter."""
    part = lambda cls: cls(**{f: 0 for f in field_names(cls)})
    return Scenario(log_trajectory=part(Trajectory), object_metadata=part(ObjectMetadata), roadmap=part(RoadMap),
                    traffic_lights=part(TrafficLights), route=part(Route))


def _key_name(path) -> str:
    return ".".join(getattr(k, "name", getattr(k, "key", str(k))) for k in path)


def field_keys() -> list[str]:
    """The flattened leaf names of a `Scenario`, in pytree order."""
    return [_key_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(_template())[0]]


def flatten_scenario(scenario: Scenario) -> dict[str, np.ndarray]:
    """`{"log_trajectory.x": array, ...}` for every leaf (numpy)."""
    return {_key_name(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(scenario)[0]}


def unflatten_scenario(flat: dict[str, Any]) -> Scenario:
    """Inverse of `flatten_scenario`."""
    treedef = jax.tree_util.tree_structure(_template())
    return jax.tree_util.tree_unflatten(treedef, [flat[k] for k in field_keys()])


# ----------------------------------------------------------------------------- writing


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"info value {value!r} of type {type(value).__name__} is not JSON-serialisable")


def _read_manifest(path: pathlib.Path) -> dict:
    file = path / MANIFEST
    if not file.is_file():
        raise CacheError(f"not a scenario cache: {MANIFEST} not found", file=path)
    try:
        manifest = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CacheError(f"unreadable manifest ({e})", file=file) from e
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
        raise CacheError(f"not a {CACHE_FORMAT} manifest (format={manifest.get('format') if isinstance(manifest, dict) else None!r})",
                         file=file)
    version = manifest.get("version")
    if version not in READABLE_VERSIONS:
        raise CacheError(f"cache format version {version!r}, this jaxloop reads version "
                         f"{' or '.join(map(str, READABLE_VERSIONS))}; re-run `jaxloop data convert` to rebuild it",
                         file=file)
    _check_shards(path, manifest, file)
    fields = manifest.get("fields")
    if isinstance(fields, dict):
        for dropped in _DROPPED_FIELDS.get(version, ()):
            fields.pop(dropped, None)
    expected = field_keys()
    got = list(manifest.get("fields", {}))
    if sorted(got) != sorted(expected):
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        raise CacheError(f"fields differ from this jaxloop's Scenario (missing {missing}, unexpected {extra}); "
                         "rebuild the cache", file=file, field="fields")
    return manifest


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _check_shards(path: pathlib.Path, manifest: dict, file: pathlib.Path) -> None:
    """The shard list: dicts with a file confined to the cache directory, int start / count, optional sha256."""
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        raise CacheError(f"expected a list of shards, got {type(shards).__name__}", file=file, field="shards")
    root = path.resolve()
    expected_start = 0
    for k, shard in enumerate(shards):
        field = f"shards[{k}]"
        if not isinstance(shard, dict) or not isinstance(shard.get("file"), str):
            raise CacheError(f"expected an object with a 'file' name, got {shard!r}", file=file, field=field)
        name = shard["file"]
        rel = pathlib.PurePath(name)
        # A manifest is data: a shard path may not reach outside the cache directory it describes.
        if (not name or rel.is_absolute() or pathlib.PureWindowsPath(name).is_absolute() or ".." in rel.parts
                or (path / rel).resolve().parent != root):
            raise CacheError(f"shard path {name!r} is not a file name inside the cache directory", file=file,
                             field=field + ".file")
        for key in ("start", "count"):
            value = shard.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise CacheError(f"expected an int >= 0, got {value!r}", file=file, field=f"{field}.{key}")
        if shard["start"] != expected_start:  # the index of a scenario is found from the starts
            raise CacheError(f"start {shard['start']}, expected {expected_start} (the sum of the counts before it)",
                             file=file, field=field + ".start")
        expected_start += shard["count"]
        if "sha256" in shard and not (isinstance(shard["sha256"], str) and _SHA256.fullmatch(shard["sha256"])):
            raise CacheError(f"expected 64 lowercase hex digits, got {shard['sha256']!r}", file=file,
                             field=field + ".sha256")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_info(i: int, info: dict) -> dict:
    if not isinstance(info, dict) or "scenario_id" not in info or "format" not in info:
        raise ValueError(f"write_cache: infos[{i}] must be a dict with 'scenario_id' and 'format', got {info!r}")
    return _jsonable(info)


def _check_replaceable(out: pathlib.Path) -> None:
    """Refuses an `out` that the swap of `CacheWriter.close` must not replace: anything but
    nothing, an empty directory or a cache of this format version (and its own files only)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise CacheError("refusing to overwrite: exists and is not a directory", file=out)
    if (out / MANIFEST).exists():
        try:
            old = json.loads((out / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CacheError(f"refusing to overwrite: existing {MANIFEST} is unreadable ({e})", file=out) from e
        if not isinstance(old, dict) or old.get("format") != CACHE_FORMAT or old.get("version") not in READABLE_VERSIONS:
            raise CacheError(
                f"refusing to overwrite a cache of format {old.get('format') if isinstance(old, dict) else None!r} "
                f"version {old.get('version') if isinstance(old, dict) else None!r} with version {CACHE_VERSION}; "
                "remove the directory or choose another --out", file=out)
    foreign = sorted(p.name for p in out.iterdir() if not (p.name.startswith(MANIFEST) or p.name.startswith("shard_")))
    if foreign:
        raise CacheError(f"refusing to overwrite: the directory holds files that are not part of a scenario cache "
                         f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); the new cache replaces "
                         "the whole directory: remove them or choose another --out", file=out)


def _swap_in(partial: pathlib.Path, out: pathlib.Path) -> None:
    """Puts the finished `partial` directory at `out`, deleting what was there only once it is in place."""
    if not out.exists():
        os.rename(partial, out)
        return
    old = partial.with_name(partial.name.removesuffix(".partial") + ".old")
    os.rename(out, old)
    try:
        os.rename(partial, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


class CacheWriter:
    """Streams scenarios into a cache: a shard is written whenever `shard_size` have arrived,
    the manifest last (on `close()` / leaving the `with` block), so memory stays at one shard.

        with CacheWriter(out_dir) as writer:
            for scenario, info in load_womd(path):
                writer.add(scenario, info)
        manifest = writer.manifest

    Every scenario must have the shapes of the first (one MapConfig / N / T per cache).
    Shards go to a hidden sibling directory (`partial_dir`) that `close()` swaps in for
    `out_dir`; leaving the `with` block by an exception, `abort()`, or dropping an unclosed
    writer removes it, and `out_dir` (an old cache there included) is left as it was.
    """

    def __init__(self, out_dir: str | os.PathLike, shard_size: int = 256):
        if shard_size < 1:
            raise ValueError(f"write_cache: shard_size must be >= 1, got {shard_size}")
        self.out = pathlib.Path(out_dir)
        self.shard_size = shard_size
        # A symlinked `out_dir` keeps its link: the swap happens at the directory it points to.
        self._target = self.out.resolve() if self.out.is_symlink() else self.out
        _check_replaceable(self._target)
        self._target.parent.mkdir(parents=True, exist_ok=True)
        # A sibling, so the final rename stays on one filesystem.
        self.partial_dir = pathlib.Path(tempfile.mkdtemp(prefix=f".{self._target.name}.", suffix=".partial",
                                                         dir=self._target.parent))
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.partial_dir), True)
        self._pending: list[dict[str, np.ndarray]] = []
        self._fields: dict[str, dict] | None = None
        self._shards: list[dict] = []
        self._infos: list[dict] = []
        self.manifest: dict | None = None

    def add(self, scenario: Scenario, info: dict) -> None:
        """Adds one unbatched scenario and its info dict."""
        flat = flatten_scenario(scenario)
        if self._fields is None:
            if scenario.batch_shape != ():
                raise ShapeError("CacheWriter.add: expected one unbatched scenario, got batch shape "
                                 f"{list(scenario.batch_shape)}")
            scenario.validate()
            self._fields = {k: {"shape": list(v.shape), "dtype": v.dtype.name} for k, v in flat.items()}
        else:
            for k, v in flat.items():
                spec = self._fields[k]
                if list(v.shape) != spec["shape"] or v.dtype.name != spec["dtype"]:
                    raise ShapeError(f"CacheWriter.add: scenario {len(self._infos)} ({info.get('scenario_id')!r}) "
                                     f"field {k!r} has shape {list(v.shape)} {v.dtype.name}, the cache holds "
                                     f"{spec['shape']} {spec['dtype']}; use one MapConfig / N / T per cache")
        self._infos.append(_check_info(len(self._infos), info))
        self._pending.append(flat)
        if len(self._pending) >= self.shard_size:
            self._flush()

    def add_batch(self, scenarios: Scenario, infos: list[dict]) -> None:
        """Adds a batched scenario `[S, ...]` with its S info dicts."""
        count = scenarios.num_scenarios
        if len(infos) != count:
            raise ValueError(f"write_cache: {count} scenarios but {len(infos)} info dicts")
        flat = flatten_scenario(scenarios)
        treedef = jax.tree_util.tree_structure(_template())
        keys = field_keys()
        for i in range(count):
            self.add(jax.tree_util.tree_unflatten(treedef, [flat[k][i] for k in keys]), infos[i])

    def _flush(self) -> None:
        if not self._pending:
            return
        name = f"shard_{len(self._shards):05d}.npz"
        buffer = io.BytesIO()
        np.savez(buffer, **{k: np.stack([p[k] for p in self._pending]) for k in self._pending[0]})
        data = buffer.getvalue()
        (self.partial_dir / name).write_bytes(data)
        start = sum(sh["count"] for sh in self._shards)
        self._shards.append({"file": name, "start": start, "count": len(self._pending), "sha256": _sha256(data)})
        self._pending = []

    def close(self) -> dict:
        """Writes the last shard and the manifest, swaps the cache in at `out_dir`; returns the manifest.

        On any failure the partial directory is removed and `out_dir` is left as it was.
        """
        if self.manifest is not None:
            return self.manifest
        if self._fields is None:
            self.abort()
            raise ValueError(f"{self.out}: no scenario was added; an empty cache is not written")
        try:
            manifest = self._finish()
        except BaseException:
            self.abort()
            raise
        self._cleanup.detach()
        self.manifest = manifest
        return manifest

    def abort(self) -> None:
        """Discards what was written; `out_dir` keeps what it held before."""
        self._cleanup()

    def _finish(self) -> dict:
        self._flush()
        from jaxloop._version import __version__
        manifest = {
            "format": CACHE_FORMAT, "version": CACHE_VERSION, "jaxloop_version": __version__,
            "num_scenarios": len(self._infos), "shard_size": self.shard_size, "shards": self._shards,
            "fields": self._fields,
            "counts": dict(collections.Counter(str(i["format"]) for i in self._infos)),
            "infos": self._infos,
        }
        (self.partial_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))
        _check_replaceable(self._target)  # again: something may have appeared there while writing
        _swap_in(self.partial_dir, self._target)
        return manifest

    def __len__(self) -> int:
        return len(self._infos)

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_cache(scenarios: Scenario | Sequence[Scenario], out_dir: str | os.PathLike, infos: list[dict],
                shard_size: int = 256) -> dict:
    """Writes scenarios to a packed cache directory and returns its manifest.

    Args:
      scenarios: a batched `Scenario` (leading axis S) or a list of same-shape ones.
      out_dir: the cache directory (created). An existing cache of the same version
        is replaced, only once the new one is complete; one of another version, or a
        directory holding other files, is refused.
      infos: one JSON-serialisable dict per scenario, with at least `scenario_id` and
        `format` ("womd_tf_example", "womd_scenario", "av2", "procedural", ...);
        optional `family`, `split`, `source`, `record`.
      shard_size: scenarios per npz shard.

    For more scenarios than fit in memory, stream them through `CacheWriter`.
    """
    if shard_size < 1:
        raise ValueError(f"write_cache: shard_size must be >= 1, got {shard_size}")
    if isinstance(scenarios, Scenario):
        if len(scenarios.batch_shape) != 1:
            raise ShapeError(f"write_cache: expected scenarios batched along one leading axis, got batch shape "
                             f"{list(scenarios.batch_shape)}")
        scenarios = jax.tree.map(np.asarray, scenarios)
        scenarios.validate()
        count = scenarios.num_scenarios
    else:
        scenarios = list(scenarios)
        count = len(scenarios)
    if len(infos) != count:
        raise ValueError(f"write_cache: {count} scenarios but {len(infos)} info dicts")
    for i, info in enumerate(infos):
        _check_info(i, info)
    with CacheWriter(out_dir, shard_size) as writer:
        if isinstance(scenarios, Scenario):
            writer.add_batch(scenarios, infos)
        else:
            for scenario, info in zip(scenarios, infos):
                writer.add(jax.tree.map(np.asarray, scenario), info)
    return writer.manifest


# ----------------------------------------------------------------------------- reading


def _load_shard(path: pathlib.Path, manifest: dict, shard: dict) -> dict[str, np.ndarray]:
    file = path / shard["file"]
    if not file.is_file():
        raise CacheError(f"shard listed in {MANIFEST} is missing", file=file)
    try:
        raw = file.read_bytes()
    except OSError as e:
        raise CacheError(f"unreadable shard ({e})", file=file) from e
    if "sha256" in shard and _sha256(raw) != shard["sha256"]:
        raise CacheError(f"checksum mismatch: sha256 {_sha256(raw)}, {MANIFEST} lists {shard['sha256']} (the shard "
                         "is corrupt or was changed after writing; rebuild the cache)", file=file, field="sha256")
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, *MALFORMED) as e:
        raise CacheError(f"unreadable shard ({type(e).__name__}: {e})", file=file) from e
    for key, spec in manifest["fields"].items():
        if key not in data:
            raise CacheError("field missing from shard", file=file, field=key)
        arr = data[key]
        want = (shard["count"], *spec["shape"])
        if arr.shape != want or arr.dtype.name != spec["dtype"]:
            raise CacheError(f"expected shape {list(want)} dtype {spec['dtype']}, got {list(arr.shape)} "
                             f"{arr.dtype.name}", file=file, field=key)
    _check_values(file, data, manifest, shard)
    return data


def _check_values(file: pathlib.Path, data: dict[str, np.ndarray], manifest: dict, shard: dict) -> None:
    """Finite floats and exactly one SDC per scenario (what every loader guarantees on the way in)."""
    infos = manifest.get("infos", [])

    def where(local: int) -> str:
        g = shard["start"] + local
        sid = infos[g].get("scenario_id") if g < len(infos) and isinstance(infos[g], dict) else None
        return f"scenario {g} ({sid!r}, shard row {local})"

    count = shard["count"]
    for key, arr in data.items():
        if arr.dtype.kind == "f":
            bad = ~np.isfinite(arr.reshape(count, -1))
            if bad.any():
                local = int(np.flatnonzero(bad.any(axis=1))[0])
                raise CacheError(f"{where(local)}: {int(bad[local].sum())} non-finite value(s)", file=file, field=key)
    key = "object_metadata.is_sdc"
    sdc = data[key].reshape(count, -1).astype(bool).sum(axis=1)
    if np.any(sdc != 1):
        local = int(np.flatnonzero(sdc != 1)[0])
        raise CacheError(f"{where(local)}: expected exactly one SDC (ego), found {int(sdc[local])}", file=file,
                         field=key)


def load_infos(path: str | os.PathLike) -> list[dict]:
    """The info dicts of every scenario in the cache, in order."""
    return list(_read_manifest(pathlib.Path(path))["infos"])


def load_scenarios(path: str | os.PathLike) -> Scenario:
    """Every scenario of the cache as one batched numpy `Scenario` `[S, ...]`."""
    ds = ScenarioDataset(path)
    return ds.get(np.arange(len(ds)))


class ScenarioDataset(Dataset):
    """Random access and device batches over a scenario cache (`jaxloop.data.dataset.Dataset`).

    Shards are loaded on first use and kept (at most `max_cached_shards` of them, least
    recently used evicted; None keeps all).
    """

    def __init__(self, path: str | os.PathLike, max_cached_shards: int | None = None):
        self.path = pathlib.Path(path)
        self.manifest = _read_manifest(self.path)
        self.infos: list[dict] = list(self.manifest["infos"])
        self._shards = self.manifest["shards"]
        self._starts = np.array([s["start"] for s in self._shards], np.int64)
        self._count = int(self.manifest["num_scenarios"])
        if len(self.infos) != self._count or sum(s["count"] for s in self._shards) != self._count:
            raise CacheError(f"manifest counts disagree: {self._count} scenarios, {len(self.infos)} infos, "
                             f"{sum(s['count'] for s in self._shards)} in shards", file=self.path / MANIFEST)
        unverified = [s["file"] for s in self._shards if "sha256" not in s]
        if unverified:
            warnings.warn(f"{self.path / MANIFEST}: {len(unverified)} shard(s) without a sha256 checksum (a cache "
                          "written before checksums existed): loaded without an integrity check; rebuild it with "
                          "`jaxloop data convert` / `data generate`", stacklevel=2)
        self._max_cached = max_cached_shards
        self._cache: collections.OrderedDict[int, dict[str, np.ndarray]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._keys = field_keys()

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"ScenarioDataset({self.path})"

    @property
    def chunk_size(self) -> int:
        return max(int(self.manifest.get("shard_size") or self._shards[0]["count"]), 1)

    def hold(self, chunks: int) -> None:
        """Keeps at least `chunks` shards loaded (a bound of None, keep all, stays)."""
        if self._max_cached is not None:
            self._max_cached = max(self._max_cached, int(chunks))

    def identity(self) -> dict:
        """Scenario count and a blake2b over the manifest's fields, shard checksums and infos (no shard is read,
        except shards of a cache written before checksums, which are hashed whole)."""
        digest = hashlib.blake2b(digest_size=16)
        digest.update(json.dumps(self.manifest["fields"], sort_keys=True).encode())
        for shard in self._shards:
            sha = shard.get("sha256") or _sha256((self.path / shard["file"]).read_bytes())
            digest.update(f"{shard['count']}:{sha};".encode())
        digest.update(json.dumps(self.infos, sort_keys=True).encode())
        return {"num_scenarios": self._count, "blake2b": digest.hexdigest()}

    def _shard(self, i: int) -> dict[str, np.ndarray]:
        with self._lock:
            if i in self._cache:
                self._cache.move_to_end(i)
                return self._cache[i]
        data = _load_shard(self.path, self.manifest, self._shards[i])
        with self._lock:
            self._cache[i] = data
            if self._max_cached is not None:
                while len(self._cache) > max(self._max_cached, 1):
                    self._cache.popitem(last=False)
        return data

    def get(self, indices: Sequence[int] | np.ndarray) -> Scenario:
        """The scenarios at `indices` (any order, repeats allowed) as a batched numpy `Scenario`."""
        idx = np.asarray(indices, np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self._count):
            raise IndexError(f"{self.path}: scenario index out of range [0, {self._count}): "
                             f"{idx[(idx < 0) | (idx >= self._count)][:5].tolist()}")
        shard_of = np.searchsorted(self._starts, idx, side="right") - 1
        fields = self.manifest["fields"]
        out = {k: np.empty((idx.size, *fields[k]["shape"]), np.dtype(fields[k]["dtype"])) for k in self._keys}
        for s in np.unique(shard_of):
            data = self._shard(int(s))
            pos = np.flatnonzero(shard_of == s)
            local = idx[pos] - self._starts[s]
            if pos[-1] - pos[0] + 1 == pos.size:  # a contiguous run of the output: gather straight into it
                a, b = int(pos[0]), int(pos[-1]) + 1
                for k in self._keys:
                    np.take(data[k], local, axis=0, out=out[k][a:b])
            else:
                for k in self._keys:
                    out[k][pos] = data[k][local]
        return unflatten_scenario(out)
