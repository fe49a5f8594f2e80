"""Several scenario sources in one training set: common slot sizes, and batches that mix them by weight.

Sources differ in their slot counts (procedural scenarios: 32 objects, 64 lanes; WOMD:
128 objects, 256 lanes), so `pad_to` grows every slot axis of a batch to a common size
with invalid entries: objects `N`, lanes `P`, edge segments `E`, crosswalks `C`, stop
signs `S` and lights `L`. Padding is exact — a padded slot is invalid everywhere, so no
metric, observation or reward sees it. Axes whose length is part of the data itself
(steps `T`, points per lane `Q`, route points `R`) must already agree; a mismatch is an
error naming the field.

A `Mixture` holds the sources in memory; training and evaluation iterate it as a
`jaxloop.data.dataset.MixtureDataset` (`as_dataset`), whose `BatchPlan` gives each source
its share of every batch (largest-remainder rounding of `batch_size * weight`), rows
shuffled so every process slice mixes sources; without weights, the sources are one set.
Sources streamed from caches mix the same way (`open_dataset("A@0.75,B@0.25")`).

    mixture = mix([("procedural:train:1024", procedural, infos_p, 0.75),
                   ("data/womd_train", real, infos_r, 0.25)])
    plan = as_dataset(mixture).plan(batch_size=64, seed=0)
    idx = plan.indices(step=17)   # 48 procedural rows, 16 real
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from jaxloop.sim.datatypes import Scenario

PADDED_DIMS = ("N", "P", "E", "C", "S", "L")
# Integer fields whose padding value is -1 ("no such id"), as the loaders pad them.
_MINUS_ONE_FIELDS = frozenset({"ids", "lane_ids", "stop_sign_lane_ids"})
_PARTS = ("log_trajectory", "object_metadata", "roadmap", "traffic_lights", "route")


def slot_dims(scenarios: Scenario) -> dict[str, int]:
    """The symbolic dimensions of a (batched) scenario set: {"N": 128, "T": 91, "P": 256, ...}."""
    dims: dict[str, int] = {}
    batch = scenarios.batch_shape
    for part in _PARTS:
        getattr(scenarios, part).validate(f"Scenario.{part}", dims, batch)
    return dims


def pad_to(scenarios: Scenario, dims: dict[str, int]) -> Scenario:
    """`scenarios` (numpy, any batch shape) with every slot axis grown to `dims`; padded slots are invalid."""
    have = slot_dims(scenarios)
    for sym, size in have.items():
        target = dims.get(sym, size)
        if sym not in PADDED_DIMS and target != size:
            raise ValueError(f"scenario sets disagree on dimension {sym} ({size} vs {target}); only slot counts "
                             f"{PADDED_DIMS} can be padded to a common size")
        if target < size:
            raise ValueError(f"pad_to: dimension {sym} is {size}, larger than the target {target}")
    batch_ndim = len(scenarios.batch_shape)

    def pad_part(part: str):
        obj = getattr(scenarios, part)
        changes = {}
        for field, (expected, _) in type(obj)._SPEC.items():
            arr = np.asarray(getattr(obj, field))
            widths = [(0, 0)] * batch_ndim + [(0, dims[s] - have[s]) if isinstance(s, str) and s in PADDED_DIMS
                                              else (0, 0) for s in expected]
            if any(w for _, w in widths):
                fill = -1 if field in _MINUS_ONE_FIELDS else 0
                arr = np.pad(arr, widths, constant_values=np.array(fill).astype(arr.dtype))
            changes[field] = arr
        return obj.replace(**changes)

    return scenarios.replace(**{part: pad_part(part) for part in _PARTS})


def check_source_rows(sources: Sequence[str], weights: np.ndarray | None, batch_size: int) -> None:
    """ValueError when `batch_size` rows leave a weighted source with no row in every batch (None weights: no check)."""
    if weights is None:
        return
    counts = proportional_counts(weights, batch_size)
    empty = [s for s, n in zip(sources, counts) if n == 0]
    if empty:
        raise ValueError(f"batch size {batch_size} gives the sources rows {counts.tolist()} for weights "
                         f"{np.round(weights, 3).tolist()}: {empty} would never be trained on; use a batch "
                         f"of at least {int(np.ceil(1.0 / weights.min()))} or larger weights for them")


def describe_sources(sources: Sequence[str], starts: np.ndarray, weights: np.ndarray | None) -> list[dict]:
    """Per source: spec, scenario count and weight (JSON-able, for run configs and summaries)."""
    sizes = np.diff(starts)
    return [{"source": s, "num_scenarios": int(n), "weight": None if weights is None else float(w)}
            for s, n, w in zip(sources, sizes, weights if weights is not None else sizes)]


def proportional_counts(weights: Sequence[float], total: int) -> np.ndarray:
    """Integer counts summing to `total`, proportional to `weights` (largest-remainder rounding)."""
    w = np.asarray(weights, np.float64)
    exact = total * w / w.sum()
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def parse_weight(spec: str) -> tuple[str, float | None]:
    """`"SPEC@W"` -> (SPEC, W); a spec without a numeric `@W` suffix has no weight."""
    head, sep, tail = spec.rpartition("@")
    if not sep:
        return spec, None
    try:
        weight = float(tail)
    except ValueError:
        return spec, None
    if not np.isfinite(weight) or weight <= 0:
        raise ValueError(f"data source {spec!r}: the weight after '@' must be a finite number > 0, got {tail!r}")
    return head, weight


@dataclasses.dataclass
class Mixture:
    """Scenarios of several sources, padded to common slot sizes and concatenated `[S, ...]`."""

    scenarios: Scenario
    infos: list[dict]
    sources: tuple[str, ...]
    starts: np.ndarray  # [K + 1] first index of each source, then S
    weights: np.ndarray | None  # [K] summing to 1, or None: uniform over all scenarios

    def __len__(self) -> int:
        return int(self.starts[-1])

    def source_of(self, index: np.ndarray) -> np.ndarray:
        """Which source (0..K-1) each scenario index belongs to."""
        return np.searchsorted(self.starts, np.asarray(index), side="right") - 1

    def check_batch_size(self, batch_size: int) -> None:
        """ValueError when `batch_size` rows leave some weighted source with no row in every batch."""
        check_source_rows(self.sources, self.weights, batch_size)

    def describe(self) -> list[dict]:
        """Per source: spec, scenario count and weight (JSON-able, for run configs and summaries)."""
        return describe_sources(self.sources, self.starts, self.weights)


def mix(parts: Sequence[tuple[str, Scenario, list[dict], float | None]]) -> Mixture:
    """One `Mixture` from `(spec, scenarios [S_k, ...], infos, weight or None)` per source.

    Either every source has a weight or none has (then a batch draws uniformly over all
    scenarios, i.e. sources in proportion to their sizes).
    """
    if not parts:
        raise ValueError("mix: no data source given")
    weights = [w for *_, w in parts]
    if any(w is None for w in weights) and not all(w is None for w in weights):
        raise ValueError("data sources: give a weight (SPEC@W) to every source or to none; got "
                         + ", ".join(f"{s}@{w}" if w is not None else s for s, *_, w in parts))
    for spec, scenarios, infos, _ in parts:
        if len(scenarios.batch_shape) != 1 or len(infos) != scenarios.batch_shape[0]:
            raise ValueError(f"data source {spec!r}: expected scenarios [S, ...] with one info per scenario, got "
                             f"batch shape {list(scenarios.batch_shape)} and {len(infos)} infos")
    all_dims = [slot_dims(s) for _, s, _, _ in parts]
    target = {k: max(d[k] for d in all_dims) for k in all_dims[0]}
    padded = [pad_to(s, target) for _, s, _, _ in parts]
    scenarios = jax.tree.map(lambda *a: np.concatenate(a, 0), *padded) if len(padded) > 1 else padded[0]
    sizes = [len(infos) for _, _, infos, _ in parts]
    w = None if weights[0] is None else np.asarray(weights, np.float64) / np.sum(weights)
    return Mixture(scenarios=scenarios, infos=[i for _, _, infos, _ in parts for i in infos],
                   sources=tuple(s for s, *_ in parts), starts=np.concatenate([[0], np.cumsum(sizes)]), weights=w)
