"""Datasets: the one thing training and evaluation iterate, over any scenario source.

A `Dataset` is random access to `S` scenarios plus one info dict per scenario (id, source,
family, ...: host metadata that travels beside a batch, never inside the simulator's
`Scenario`):

- `jaxloop.data.pipeline.ScenarioDataset`: a packed cache, streamed shard by shard (a
  small LRU of loaded shards, never the whole cache);
- `InMemoryDataset`: scenarios built in memory (toy, procedural splits, raw files);
- `MixtureDataset`: several datasets with weights (`--data A@w,B@w`), every batch filled in
  the configured proportion and padded to common slot sizes (`jaxloop.data.mixture.pad_to`).

`open_dataset(spec)` turns a `--data` string into one of these.

The batch sequence (`BatchPlan`) is a pure function of `(seed, step)`, so a resumed run
continues it exactly. Each source is cut into `partitions` equal contiguous blocks
(`D`; the remainder of a block is unused); a global batch of `B` rows holds `B / D` rows
from every block, block after block. Each block is an endless stream of epochs; epoch `e`
visits the block in an order drawn from `(seed, source, block, e)`: its storage chunks
(cache shards) in a random order, rows shuffled within windows of `window` chunks (so a
streaming reader holds about `window` shards), each epoch cut to a multiple of the rows it
gives per batch (the remainder is dropped). With weights, every block gives each source
`proportional_counts(weights, B / D)` rows per batch, each source's stream advancing at
its own pace. Process `p` of `P` owns blocks `[p D / P, (p + 1) D / P)`, i.e. rows
`[p B / P, (p + 1) B / P)` of the global batch, and reads only them: the global batch does
not depend on the number of processes, only on `D` (`P` must divide `D`).
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import hashlib
import json
import queue
import threading
import weakref
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np

from jaxloop.sim.datatypes import Scenario

DEFAULT_WINDOW = 4  # storage chunks shuffled together (cache shards: 4 x 256 scenarios by default)
ORDER_SCHEME = "blocks-chunk-window/1"  # recorded with a run: what defines its batch sequence


class Dataset:
    """Random access to `len(self)` scenarios and their `infos`; batches of them.

    Subclasses define `get(indices) -> Scenario [K, ...]` (numpy), `infos`, `__len__`,
    `chunk_size` (scenarios per storage chunk: a shuffle window is whole chunks) and
    `identity()` (what the data is, for a run's resume check).
    """

    infos: list[dict]
    chunk_size: int

    def __len__(self) -> int:
        raise NotImplementedError

    def get(self, indices: Sequence[int] | np.ndarray) -> Scenario:
        raise NotImplementedError

    def identity(self) -> dict:
        raise NotImplementedError

    @property
    def sources(self) -> tuple[tuple[int, int, int], ...]:
        """(start, size, chunk size) of each weighted source; one source for a plain dataset."""
        return ((0, len(self), self.chunk_size),)

    @property
    def weights(self) -> np.ndarray | None:
        return None

    def hold(self, chunks: int) -> None:
        """Lets a streaming dataset keep at least `chunks` storage chunks loaded (what a batch plan visits at once)."""
        del chunks

    def infos_of(self, indices: Sequence[int] | np.ndarray) -> list[dict]:
        return [self.infos[int(i)] for i in np.asarray(indices).reshape(-1)]

    def load(self, indices: np.ndarray) -> tuple[Scenario, list[dict]]:
        """(scenarios `[K, ...]`, their K infos) at `indices`."""
        return self.get(indices), self.infos_of(indices)

    def stream(self, index_batches: Iterator[np.ndarray], prefetch: int = 2,
               place: Callable[[Scenario], Any] | None = None) -> Iterator[tuple[Any, list[dict]]]:
        """(batch, infos) for each index array, loaded (and `place`d, e.g. on device) `prefetch` ahead on a
        background thread (`prefetch=0`: in the caller's thread)."""
        def one(ix):
            batch, infos = self.load(ix)
            return (place(batch) if place is not None else batch), infos

        items = (one(ix) for ix in index_batches)
        return Prefetcher(items, prefetch) if prefetch > 0 else items

    def plan(self, batch_size: int, seed: int = 0, partitions: int = 1, window: int = DEFAULT_WINDOW,
             shuffle: bool = True) -> "BatchPlan":
        """The batch sequence of `batch_size` global rows (see the module docstring)."""
        return BatchPlan(self.sources, self.weights, batch_size, seed, partitions, window, shuffle)

    def train_batches(self, plan: "BatchPlan", start_step: int = 0, num_steps: int | None = None,
                      process_index: int | None = None, process_count: int | None = None, prefetch: int = 2,
                      place: Callable[[Scenario], Any] | None = None) -> Iterator[tuple[Any, list[dict]]]:
        """This process's rows of the batches of steps `start_step, start_step + 1, ...` (forever, or
        `num_steps` of them): `(Scenario [B / P, ...], infos)`, prefetched."""
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
        plan.check_processes(process_count)
        # Each owned partition shuffles within its own window; a batch may straddle two windows.
        self.hold((plan.window + 1) * (plan.partitions // process_count))

        def indices():
            step = start_step
            while num_steps is None or step < start_step + num_steps:
                yield plan.process_indices(step, process_index, process_count)
                step += 1

        return self.stream(indices(), prefetch, place)

    def batches(self, batch_size: int, seed: int = 0, shuffle: bool = True, drop_remainder: bool = True,
                process_index: int | None = None, process_count: int | None = None, prefetch: int = 2,
                sharding: jax.sharding.Sharding | None = None,
                num_epochs: int | None = None) -> Iterator[tuple[Any, list[dict]]]:
        """`(batch, infos)` of `batch_size` scenarios per process, epoch after epoch.

        Each process reads its own block (`process_indices`), visited per epoch in the order of
        `BatchPlan` (one block per process) when `shuffle`, in index order otherwise. With
        `drop_remainder` every batch has exactly `batch_size` scenarios (one shape: one compile).
        `num_epochs=None` repeats forever. A background thread keeps up to `prefetch` batches
        ready on device (`jax.device_put`, or with several processes and a `sharding`, global
        arrays built from each process's local batch: global batch = batch_size * process_count).
        """
        if batch_size < 1:
            raise ValueError(f"batches: batch_size must be >= 1, got {batch_size}")
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
        local = self.process_indices(process_index, process_count)
        if drop_remainder and local.size < batch_size:
            raise ValueError(f"{self}: {local.size} scenarios for this process, fewer than batch_size "
                             f"{batch_size} (drop_remainder=True would yield nothing)")
        multi = sharding is not None and process_count > 1

        def place(batch: Scenario) -> Scenario:
            if multi:
                return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, a), batch)
            return jax.device_put(batch, sharding)

        whole = BatchPlan(((0, len(self), self.chunk_size),), None, batch_size * process_count, seed,
                          process_count, DEFAULT_WINDOW, shuffle)

        def index_batches() -> Iterator[np.ndarray]:
            epoch = 0
            while num_epochs is None or epoch < num_epochs:
                order = whole.epoch_order(0, process_index, epoch)
                stop = local.size - local.size % batch_size if drop_remainder else local.size
                for start in range(0, stop, batch_size):
                    # Sorted within the batch (its order carries no information once
                    # shuffled): each shard's part is then one contiguous gather.
                    ix = order[start:start + batch_size]
                    yield np.sort(ix) if shuffle else ix
                epoch += 1

        return self.stream(index_batches(), prefetch, place)

    def process_indices(self, process_index: int, process_count: int) -> np.ndarray:
        """This process's disjoint contiguous block of scenario indices (equal sizes; the remainder is unused)."""
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        per = len(self) // process_count
        return np.arange(process_index * per, (process_index + 1) * per)


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """Which scenario indices every step's batch holds (see the module docstring); a pure function of the step."""

    sources: tuple[tuple[int, int, int], ...]  # (start, size, chunk size) per source
    weights: np.ndarray | None
    batch_size: int  # global rows per step
    seed: int
    partitions: int = 1
    window: int = DEFAULT_WINDOW
    shuffle: bool = True

    def __post_init__(self):
        if self.batch_size < 1 or self.partitions < 1 or self.window < 1:
            raise ValueError(f"batch plan: batch_size, partitions and window must be >= 1, got {self.batch_size}, "
                             f"{self.partitions}, {self.window}")
        if self.batch_size % self.partitions:
            raise ValueError(f"batch size {self.batch_size} must divide by the {self.partitions} data partitions")
        for k, (_, size, _) in enumerate(self.sources):
            if size < self.partitions:
                raise ValueError(f"data source {k} has {size} scenarios, fewer than the {self.partitions} data "
                                 "partitions (each partition needs at least one)")
        object.__setattr__(self, "_orders", collections.OrderedDict())
        object.__setattr__(self, "_lock", threading.Lock())

    @property
    def rows_per_partition(self) -> int:
        return self.batch_size // self.partitions

    @property
    def counts(self) -> np.ndarray:
        """Rows each source gives per partition and batch `[K]`."""
        if self.weights is None:
            return np.array([self.rows_per_partition])
        from jaxloop.data.mixture import proportional_counts
        return proportional_counts(self.weights, self.rows_per_partition)

    def describe(self) -> dict:
        """JSON-able: what decides the sequence (recorded with a run; a resume must match it)."""
        return {"scheme": ORDER_SCHEME, "seed": self.seed, "batch_size": self.batch_size,
                "partitions": self.partitions, "window": self.window, "shuffle": self.shuffle}

    def check_processes(self, process_count: int) -> None:
        if self.partitions % process_count:
            raise ValueError(f"{self.partitions} data partitions do not divide among {process_count} processes; "
                             f"use a multiple of {process_count} (--data-partitions)")

    def _block(self, source: int, partition: int) -> tuple[int, int]:
        _, size, _ = self.sources[source]
        per = size // self.partitions
        return partition * per, (partition + 1) * per

    def epoch_order(self, source: int, partition: int, epoch: int) -> np.ndarray:
        """Indices (global) of the block `(source, partition)` in the order epoch `epoch` visits them."""
        key = (source, partition, epoch)
        with self._lock:
            if key in self._orders:
                self._orders.move_to_end(key)
                return self._orders[key]
        start, _, chunk = self.sources[source]
        lo, hi = self._block(source, partition)
        if not self.shuffle:
            order = np.arange(lo, hi)
        else:
            rng = np.random.default_rng([self.seed, source, partition, epoch])
            cuts = np.unique(np.concatenate([[lo, hi], np.arange(0, hi, max(chunk, 1))]))
            cuts = cuts[(cuts >= lo) & (cuts <= hi)]
            chunks = [np.arange(a, b) for a, b in zip(cuts[:-1], cuts[1:])]
            chunks = [chunks[i] for i in rng.permutation(len(chunks))]
            parts = []
            for w in range(0, len(chunks), self.window):
                rows = np.concatenate(chunks[w:w + self.window])
                parts.append(rows[rng.permutation(rows.size)])
            order = np.concatenate(parts)
        order = order + start
        with self._lock:
            self._orders[key] = order
            while len(self._orders) > 4 * len(self.sources) * self.partitions + 4:
                self._orders.popitem(last=False)
        return order

    def partition_indices(self, step: int, partition: int) -> np.ndarray:
        """The `B / D` indices the block `partition` of every source gives to step `step` (with several sources,
        rows shuffled so that any slice of them mixes the sources)."""
        out = []
        for source, n in enumerate(self.counts):
            n = int(n)
            if n == 0:
                continue
            lo, hi = self._block(source, partition)
            per = hi - lo
            epoch_len = per - per % n if per >= n else per
            j = step * n + np.arange(n)
            epoch, offset = j // epoch_len, j % epoch_len
            rows = np.empty(n, np.int64)
            for e in np.unique(epoch):
                sel = epoch == e
                rows[sel] = self.epoch_order(source, partition, int(e))[offset[sel]]
            out.append(rows)
        if len(out) == 1:
            return out[0]
        rows = np.concatenate(out)
        return rows[np.random.default_rng([self.seed, step, partition]).permutation(rows.size)]

    def indices(self, step: int) -> np.ndarray:
        """The global batch of `step` `[B]`: partition after partition."""
        return np.concatenate([self.partition_indices(step, d) for d in range(self.partitions)])

    def process_indices(self, step: int, process_index: int, process_count: int) -> np.ndarray:
        """Process `process_index`'s rows of the batch of `step` `[B / P]` (its partitions)."""
        self.check_processes(process_count)
        per = self.partitions // process_count
        return np.concatenate([self.partition_indices(step, d)
                               for d in range(process_index * per, (process_index + 1) * per)])

    def position(self, step: int) -> dict:
        """Where the sequence stands before `step`: per source and partition, the epoch and the row in it."""
        pos = []
        for source, n in enumerate(self.counts):
            lo, hi = self._block(source, 0)
            per, n = hi - lo, int(n)
            epoch_len = (per - per % n if per >= n else per) if n else 1
            pos.append({"epoch": int(step * n // epoch_len), "row": int(step * n % epoch_len)})
        return {"step": int(step), "sources": pos}


class InMemoryDataset(Dataset):
    """Scenarios `[S, ...]` already in host memory (numpy) with their infos."""

    def __init__(self, scenarios: Scenario, infos: Sequence[dict] | None = None):
        scenarios = jax.tree.map(np.asarray, scenarios)
        num = scenarios.num_scenarios
        infos = [{"scenario_id": str(i)} for i in range(num)] if infos is None else list(infos)
        if len(infos) != num:
            raise ValueError(f"InMemoryDataset: {num} scenarios but {len(infos)} infos")
        self.scenarios, self.infos = scenarios, infos
        self.chunk_size = max(num, 1)

    def __len__(self) -> int:
        return len(self.infos)

    def __repr__(self) -> str:
        return f"InMemoryDataset({len(self)} scenarios)"

    def get(self, indices: Sequence[int] | np.ndarray) -> Scenario:
        idx = np.asarray(indices, np.int64).reshape(-1)
        return jax.tree.map(lambda a: a[idx], self.scenarios)

    def identity(self) -> dict:
        """Scenario count and a blake2b over every array (with its path)."""
        digest = hashlib.blake2b(digest_size=16)
        for path, leaf in jax.tree_util.tree_flatten_with_path(self.scenarios)[0]:
            a = np.asarray(leaf, order="C")
            digest.update(f"{jax.tree_util.keystr(path)}:{a.dtype}:{a.shape};".encode())
            digest.update(a.tobytes())
        return {"num_scenarios": len(self), "blake2b": digest.hexdigest()}


class MixtureDataset(Dataset):
    """Several datasets in one index space (part after part); batches padded to common slot sizes.

    With `weights` (one per part, any positive scale) every batch gives each part its share
    (`BatchPlan`); without, the parts are one source drawn uniformly (in proportion to sizes).
    """

    def __init__(self, parts: Sequence[tuple[str, Dataset]], weights: Sequence[float] | None = None):
        from jaxloop.data.mixture import slot_dims
        if not parts:
            raise ValueError("mix: no data source given")
        self.names = tuple(name for name, _ in parts)
        self.parts = [ds for _, ds in parts]
        if weights is not None:
            if len(weights) != len(parts):
                raise ValueError(f"MixtureDataset: {len(weights)} weights for {len(parts)} sources")
            weights = np.asarray(weights, np.float64) / np.sum(weights)
        self._weights = weights
        self.starts = np.concatenate([[0], np.cumsum([len(ds) for ds in self.parts])]).astype(np.int64)
        self.infos = [info for ds in self.parts for info in ds.infos]
        all_dims = [slot_dims(ds.get([0])) for ds in self.parts]
        self.dims = {k: max(d[k] for d in all_dims) for k in all_dims[0]}
        # Unweighted, the parts are one source: in memory one chunk, else the smallest storage chunk.
        in_memory = all(isinstance(ds, InMemoryDataset) for ds in self.parts)
        self.chunk_size = max(len(self), 1) if in_memory else min(ds.chunk_size for ds in self.parts)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __repr__(self) -> str:
        return f"MixtureDataset({', '.join(self.names)})"

    @property
    def sources(self) -> tuple[tuple[int, int, int], ...]:
        if self._weights is None:
            return ((0, len(self), self.chunk_size),)
        return tuple((int(a), int(b - a), ds.chunk_size) for a, b, ds in zip(self.starts[:-1], self.starts[1:],
                                                                             self.parts))

    @property
    def weights(self) -> np.ndarray | None:
        return self._weights

    def hold(self, chunks: int) -> None:
        for ds in self.parts:
            ds.hold(chunks)

    def source_of(self, index: np.ndarray) -> np.ndarray:
        """Which part (0..K-1) each index belongs to."""
        return np.searchsorted(self.starts, np.asarray(index), side="right") - 1

    def get(self, indices: Sequence[int] | np.ndarray) -> Scenario:
        from jaxloop.data.mixture import pad_to
        idx = np.asarray(indices, np.int64).reshape(-1)
        part = self.source_of(idx)
        pieces, where = [], []
        for k in np.unique(part):
            pos = np.flatnonzero(part == k)
            pieces.append(pad_to(self.parts[k].get(idx[pos] - self.starts[k]), self.dims))
            where.append(pos)
        order = np.argsort(np.concatenate(where), kind="stable")
        return jax.tree.map(lambda *a: np.concatenate(a)[order], *pieces)

    def check_batch_size(self, batch_size: int) -> None:
        """ValueError when `batch_size` rows (per data partition) leave a weighted source with no row per batch."""
        from jaxloop.data.mixture import check_source_rows
        check_source_rows(self.names, self._weights, batch_size)

    def describe(self) -> list[dict]:
        """Per source: spec, scenario count and weight (JSON-able, for run configs and summaries)."""
        from jaxloop.data.mixture import describe_sources
        return describe_sources(self.names, self.starts, self._weights)

    def identity(self) -> dict:
        digest = hashlib.blake2b(digest_size=16)
        digest.update(json.dumps(self.describe()).encode())
        for ds in self.parts:
            digest.update(ds.identity()["blake2b"].encode())
        return {"num_scenarios": len(self), "blake2b": digest.hexdigest()}


def as_dataset(data: Any, infos: Sequence[dict] | None = None) -> Dataset:
    """`data` as a `Dataset`: a dataset itself, a batched `Scenario` `[S, ...]` (with `infos`) or a `Mixture`."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, Scenario):
        return InMemoryDataset(data, infos)
    from jaxloop.data.mixture import Mixture
    if isinstance(data, Mixture):
        parts = [(name, InMemoryDataset(jax.tree.map(lambda a: np.asarray(a)[lo:hi], data.scenarios),
                                        data.infos[lo:hi]))
                 for name, lo, hi in zip(data.sources, data.starts[:-1], data.starts[1:])]
        return MixtureDataset(parts, None if data.weights is None else list(data.weights))
    raise TypeError(f"expected a Dataset, a batched Scenario or a Mixture, got {type(data).__name__}")


def open_dataset(spec: str, num_objects: int | None = None, select: str = "nearest", skip_invalid: bool = False,
                 num_toy: int | None = None, toy_objects: int | None = None,
                 max_cached_shards: int | None = 2 * DEFAULT_WINDOW) -> Dataset:
    """The dataset a `--data` string names (`jaxloop.data.sources`): a cache directory streams from its
    shards (`max_cached_shards` loaded at a time); everything else is built in memory. A weight on every
    comma-separated part (`procedural:train:1024@0.75,real/@0.25`) gives a `MixtureDataset`."""
    from jaxloop.data import pipeline
    from jaxloop.data.mixture import parse_weight
    from jaxloop.data.sources import SPEC_SEPARATOR, load_source
    if spec == "toy" and num_toy is not None:
        from jaxloop.data.toy import make_toy_scenario
        from jaxloop.sim.datatypes import stack_scenarios
        kw = {} if toy_objects is None else {"num_objects": toy_objects}
        scenarios = stack_scenarios([make_toy_scenario(seed=i, **kw) for i in range(num_toy)])
        return InMemoryDataset(scenarios, [{"scenario_id": f"toy-{i}", "format": "toy", "init_steps": 11}
                                           for i in range(num_toy)])
    parts = [parse_weight(part.strip()) for part in spec.split(SPEC_SEPARATOR)]
    if any(w is not None for _, w in parts):
        if any(w is None for _, w in parts):
            raise ValueError("data sources: give a weight (SPEC@W) to every source or to none; got "
                             + ", ".join(f"{s}@{w}" if w is not None else s for s, w in parts))
        return MixtureDataset([(s, open_dataset(s, num_objects, select, skip_invalid, None, None, max_cached_shards))
                               for s, _ in parts], [w for _, w in parts])
    import os
    if os.path.isdir(spec) and os.path.isfile(os.path.join(spec, pipeline.MANIFEST)):
        return pipeline.ScenarioDataset(spec, max_cached_shards=max_cached_shards)
    scenarios, infos = load_source(spec, num_objects=num_objects, select=select, skip_invalid=skip_invalid)
    scenarios.validate()
    if len(scenarios.batch_shape) != 1:
        raise ValueError(f"--data {spec!r}: expected scenarios with one leading batch axis, "
                         f"got batch shape {list(scenarios.batch_shape)}")
    return InMemoryDataset(scenarios, infos)


# ----------------------------------------------------------------------------- prefetch

_LIVE: "weakref.WeakSet[Prefetcher]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for prefetcher in list(_LIVE):
        prefetcher.close()


class Prefetcher:
    """Runs a generator on a daemon thread, `size` items ahead; re-raises its errors in order."""

    _END = object()

    def __init__(self, source: Iterator, size: int):
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(source,), daemon=True)
        self._thread.start()
        _LIVE.add(self)

    def _put(self, entry) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, source: Iterator) -> None:
        try:
            for item in source:
                if not self._put((item, None)):
                    return
            self._put((self._END, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._put((self._END, e))

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self):
        if self._stop.is_set():
            raise StopIteration
        item, error = self._queue.get()
        if item is self._END:
            self._stop.set()
            if error is not None:
                raise error
            raise StopIteration
        return item

    def close(self, timeout: float = 10.0) -> None:
        """Stops the background thread and waits for it (also at exit and on garbage collection).

        Waiting matters: a daemon thread torn down at interpreter exit in the middle of a
        device transfer aborts the process.
        """
        self._stop.set()
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown may have torn down `queue`
            pass
