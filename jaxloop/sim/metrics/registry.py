"""The metric registry: every metric of the scorecard, declared once.

A `Metric` entry says, for one metric:

- `step`: its value on one transition, `(StepInputs) -> [N]` per object (`per_object`) or
  `[]` for the ego (or any shape an ego-centric quantity has, e.g. `[N]` contact classes);
  per-object entries may have a cheaper `ego_step` used when their `[N]` form is switched
  off (`per_object_flag`, a `MetricsConfig` field), and the ego's value is always the
  per-object value at the ego's index otherwise;
- `reduce`: how an episode reduces its per-step ego values over the valid steps
  (`REDUCTIONS`: any, mean, sum, min, max, last) or a function of the episode
  (`(EpisodeInputs) -> []`, which may read other entries' episode values); None for a
  per-step quantity that is not reduced;
- `higher_is_better`: the direction (None: a diagnostic without one);
- `event`: a failure event (reported as a rate `{name}_rate`, counted as happened in a
  non-finite episode);
- `at_fault`: the name of its at-fault variant (raw collision -> collision);
- `gate`: what the safety gate checks of it (`GateSpec`);
- `reward_weight`: the `RewardWeights` field `step_reward` weighs its per-step ego value with.

`step_metrics`, `episode_metrics`, `nonfinite_episode`, `mark_nonfinite`, evaluation
aggregates and reports, perturbation deltas, the gate and `step_reward` iterate a
`Registry` (default `DEFAULT`), so a metric added to a registry shows up in all of them.

Step outputs: an entry with key `k` (default its name) gives `ego_{k}` and, while its
per-object form is on, `{object_key}` (default `k`) `[N]`. Episode outputs: `{name}` `[]`,
and `{object_name}` `[N]` for an entry that names one (reduced per object over the steps
where the object is valid, or by its `object_reduce`).

Per agent (`MetricsConfig.per_agent`, `jaxloop.sim.metrics.agents`): every object scored as
the ego is. The contact, at-fault collision and offroad entries then have `[N]` forms
(agent_contact `[N, N]`, agent_overlap_at_fault, agent_offroad_at_fault) whose rows at the
ego are the ego's; the episode gives agent_collision, agent_offroad, agent_raw_offroad,
agent_collision_offroad, agent_completion and agent_goal_reached `[N]`
(`agents.agent_episode_metrics`: an agent whose pose turns non-finite collided, went
offroad and reached nothing).

The at-fault offroad entry is a step rule and an episode rule: its step value (the per-step
at-fault corner, what rewards and termination read) is reduced by `fault.offroad_charged`,
so an ego or object whose logged box starts off the road is charged only once it has been
on the road; the per-agent episode value applies the same rule to every object. The raw
offroad step outputs are unchanged (Waymax's), and the rule reads them (`ego_offroad`,
`offroad`) rather than adding work to the per-step path.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Iterator

import jax
import jax.numpy as jnp

from jaxloop.sim.datatypes import Scenario, SimState, trajectory_at
from jaxloop.sim.metrics import agents
from jaxloop.sim.metrics.boxes import ego_separation, overlap, select_index, take_object
from jaxloop.sim.metrics.fault import (CONTACT_AT_FAULT, CONTACT_NAMES, CONTACT_NONE, contact_classes,
                                       ego_in_lane, ego_offroad_corners, offroad_charged, recorded_objects,
                                       start_offroad)
from jaxloop.sim.metrics.motion import (OFF_ROUTE_DISTANCE, TTC_CAP, TTC_THRESHOLD, ComfortLimits, comfort,
                                        kinematic_infeasibility, log_divergence, red_light_crossing, route_progress,
                                        time_to_collision, wrong_way)
from jaxloop.sim.metrics.road import offroad

MIN_LOG_PROGRESS = 5.0  # m
MIN_PROGRESS_RATIO = 0.2

REDUCTIONS = ("any", "mean", "sum", "min", "max", "last")
# In a non-finite episode: "one" = happened (events), "nan" = undefined, "zero" (the score), "keep".
ON_NONFINITE = ("one", "nan", "zero", "keep")


@dataclasses.dataclass(frozen=True)
class MetricsConfig:
    """What `step_metrics` computes (static). Ego metrics are always on.

    per_object_overlap: all-pairs SAT `[N, N]` -> `overlap` `[N]` (the ego's comes from it).
    per_object_offroad: every object's corners against the road edges near it (`offroad`:
      `[N, C]` chunk distances, then `[N, 4, K * G]` segment terms; exactly the all-edges
      answer; off by default).
    per_object_red_light: `[N, L]` stop-line crossings (cheap).
    per_object_log_divergence: `[N]` distances to the log (cheap).
    per_agent: every object scored as the ego is (`jaxloop.sim.metrics.agents`): `[N, N]`
      contact classes (`agent_contacts`), every object's at-fault and raw offroad (off by default).
    edge_cull: if > 0, the ego offroad test only looks at the `edge_cull` road-edge
      segments nearest to the ego's centre (a cheap `[E]` pass, then `[4, edge_cull]`).
      The nearest edge to every corner is among them unless more than `edge_cull`
      segments are closer to the centre than the box's half diagonal plus the corner's
      distance to its nearest edge.
    """

    per_object_overlap: bool = True
    per_object_offroad: bool = False
    per_object_red_light: bool = True
    per_object_log_divergence: bool = True
    per_agent: bool = False
    edge_cull: int = 0
    comfort: ComfortLimits = ComfortLimits()

    def __post_init__(self):
        if self.edge_cull < 0:
            raise ValueError(f"MetricsConfig.edge_cull must be >= 0, got {self.edge_cull}")


class StepInputs:
    """One transition `prev_state -> state` of one (unbatched) scenario, as step functions read it.

    The quantities several entries share (the ego's states, the log at the new step, the
    route projections, the ego's separations and contact classes, its offroad corners, log
    divergence, comfort) are computed on first use and reused by every entry of one trace.
    `info` is the env's `StepInfo` (its log state is used when given) or None.
    """

    def __init__(self, scenario: Scenario, prev_state: SimState, state: SimState, info=None,
                 config: MetricsConfig = MetricsConfig()):
        self.scenario, self.prev_state, self.state, self.info, self.config = scenario, prev_state, state, info, config
        self.ego = scenario.object_metadata.is_sdc  # [N] bool
        self.cur, self.prev = state.current, prev_state.current
        self.roadmap, self.route, self.timestep = scenario.roadmap, scenario.route, state.timestep

    @functools.cached_property
    def e(self):
        """The ego's `ObjectState` `[]` at the new step."""
        return take_object(self.cur, self.ego)

    @functools.cached_property
    def e_prev(self):
        return take_object(self.prev, self.ego)

    @functools.cached_property
    def log_state(self):
        """Every object's logged `ObjectState` `[N]` at the new step."""
        return (trajectory_at(self.scenario.log_trajectory, self.state.timestep) if self.info is None
                else self.info.log_state)

    @functools.cached_property
    def _route(self):
        return route_progress(jnp.stack([self.e.x, self.e.y]), self.route)

    @property
    def route_s(self):
        """`[]` arc position of the ego on the route at the new step."""
        return self._route[0]

    @property
    def route_lateral(self):
        return self._route[1]

    @functools.cached_property
    def route_s_prev(self):
        return route_progress(jnp.stack([self.e_prev.x, self.e_prev.y]), self.route)[0]

    @functools.cached_property
    def separation(self):
        """`[N]` clearance of the ego's box to every object's (`ego_separation`)."""
        return ego_separation(self.cur, self.ego)

    @functools.cached_property
    def contact(self):
        """`[N]` int32 class of the ego's contact with each object (`contact_classes`)."""
        return contact_classes(self.cur, self.log_state, self.ego, ego_in_lane(self.route_lateral, self.route),
                               recorded_objects(self.scenario), self.separation, prev=self.prev)

    @functools.cached_property
    def offroad_corners(self):
        """(valid `[]`, off `[4]`, artefact `[4]`): `ego_offroad_corners` with `config.edge_cull`."""
        return ego_offroad_corners(self.cur, self.log_state, self.roadmap, self.ego, self.config.edge_cull)

    @functools.cached_property
    def log_divergence(self):
        """(distance `[N]`, valid `[N]`) of every object to its log."""
        return log_divergence(self.cur, self.log_state)

    @functools.cached_property
    def ego_log_divergence(self):
        return log_divergence(self.e, take_object(self.log_state, self.ego))

    @functools.cached_property
    def agent_contact(self):
        """`[N, N]` int32: row i the contact classes with object i as the subject (`agents.agent_contacts`)."""
        return agents.agent_contacts(self.scenario, self.cur, self.log_state, self.prev).astype(jnp.int32)

    @functools.cached_property
    def agent_offroad_at_fault(self):
        """`[N]` bool: every object's at-fault offroad (`agents.agent_offroad_corners`)."""
        off, artefact = agents.agent_offroad_corners(self.cur, self.log_state, self.roadmap)
        return self.cur.valid & jnp.any(off & ~artefact, -1)

    @functools.cached_property
    def comfort(self):
        """`comfort` of the ego's history (needs at least 2 history states)."""
        return comfort(take_object(self.state.history, self.ego), self.config.comfort)


class EpisodeInputs:
    """One episode's per-step outputs `[H, ...]` (`extras`) with its scenario and `RolloutOutput`.

    `value(name)` is the registry entry's episode value, computed once (so a reduction may
    read others'); `steps(metric)` its per-step ego values and validity mask `[H]`.
    """

    def __init__(self, scenario: Scenario, rollout_out, extras: dict, registry: "Registry"):
        self.scenario, self.rollout_out, self.extras, self.registry = scenario, rollout_out, extras, registry
        self.valid = extras["ego_valid"]  # [H]
        self._values: dict[str, jax.Array] = {}

    def value(self, name: str) -> jax.Array:
        if name not in self._values:
            metric = self.registry[name]
            if metric.reduce is None:
                raise ValueError(f"metric {name!r} has no episode reduction (Metric.reduce is None)")
            if callable(metric.reduce):
                self._values[name] = metric.reduce(self)
            else:
                values, mask = self.steps(metric)
                self._values[name] = reduce_steps(metric.reduce, values, mask, metric.empty)
        return self._values[name]

    def steps(self, metric: "Metric") -> tuple[jax.Array, jax.Array]:
        """(ego values `[H, ...]`, mask `[H]`): valid ego steps, and where `metric.valid` names one, its flag."""
        x = self.extras
        mask = self.valid if metric.valid is None else x[f"ego_{metric.valid}"] & self.valid
        return x[f"ego_{metric.step_key}"], mask

    @functools.cached_property
    def agents(self) -> dict[str, jax.Array] | None:
        """`agents.agent_episode_metrics` `{name: [N]}` when the per-agent step forms were computed, else None."""
        x = self.extras
        if not all(k in x for k in ("agent_contact", "agent_offroad_at_fault", "offroad", "valid")):
            return None
        return agents.agent_episode_metrics(self.scenario, self.rollout_out,
                                            dict(x, agent_valid=x["valid"], agent_offroad=x["offroad"]))

    @functools.cached_property
    def pair_classes(self) -> jax.Array:
        """`[N]` int32: the class of the ego's contact pair with each object over the episode.

        Each pair counts once. A contact is classified where it starts (a contact lasting
        several steps is one event, judged by how it began, as in nuPlan), and every new
        contact of the pair is judged again. A contact that began as the log's own overlap
        stays exempt only while that holds: once the ego leaves its logged pose during it,
        an at-fault step is at fault. Exempt pairs carry the rule of their first contact.
        """
        contact = self.extras["ego_contact"]  # [H, N]
        touched = contact != CONTACT_NONE
        pair_at_fault = agents.pair_at_fault(contact)  # [N]
        first = jnp.argmax(touched, axis=0)  # [N]
        first_class = jnp.where(jnp.any(touched, 0), jnp.take_along_axis(contact, first[None], 0)[0], CONTACT_NONE)
        return jnp.where(pair_at_fault, CONTACT_AT_FAULT, first_class)


def _last_valid(values: jax.Array, valid: jax.Array) -> jax.Array:
    idx = jnp.where(jnp.any(valid), jnp.max(jnp.where(valid, jnp.arange(valid.shape[0]), -1)), 0)
    return values[idx]


def reduce_steps(reduce: str, values: jax.Array, mask: jax.Array, empty: float = 0.0) -> jax.Array:
    """A built-in episode reduction of per-step values `[H, ...]` over the steps where `mask` `[H, ...]` is set.

    any: 1.0 if some masked step is set (float 0/1); mean, sum, min, max: over the masked
    steps; last: the value at the last masked step. `empty` is the value without a masked
    step (mean, min, max, last; any and sum give 0). Reduces the leading (step) axis.
    """
    n = jnp.sum(mask, axis=0)
    if reduce == "any":
        return jnp.any(values & mask, axis=0).astype(jnp.float32)
    if reduce == "sum":
        return jnp.sum(jnp.where(mask, values, 0.0), axis=0)
    if reduce == "mean":
        return jnp.where(n > 0, jnp.sum(jnp.where(mask, values, 0.0), axis=0) / jnp.maximum(n, 1), empty)
    # Unmasked steps never decide a min / max (+-inf); without a masked step it is `empty`.
    if reduce == "min":
        return jnp.where(n > 0, jnp.min(jnp.where(mask, values, jnp.inf), axis=0), empty)
    if reduce == "max":
        return jnp.where(n > 0, jnp.max(jnp.where(mask, values, -jnp.inf), axis=0), empty)
    if reduce == "last":
        if values.ndim != 1:
            return jax.vmap(lambda v, k: reduce_steps("last", v, k, empty), in_axes=1, out_axes=0)(values, mask)
        return jnp.where(n > 0, _last_valid(values, mask), empty)
    raise ValueError(f"unknown reduction {reduce!r}; expected one of {REDUCTIONS} or a function of EpisodeInputs")


@dataclasses.dataclass(frozen=True)
class GateSpec:
    """What the safety gate (`jaxloop.eval.gate.check`) checks of an entry's aggregate.

    Each threshold is a number or the name of a `GateConfig` field; None skips the check.
    tolerance: non-regression on the held-out set: no worse than the baseline by more than this
      (in the entry's direction).
    limit: an absolute bound on the held-out set (upper for lower-is-better, lower otherwise).
    perturbed: also check the non-regression under every perturbation of the suite.
    perturbed_limit: an absolute bound under every perturbation.
    """

    tolerance: float | str | None = None
    limit: float | str | None = None
    perturbed: bool = False
    perturbed_limit: float | str | None = None

    def resolve(self, field: str, config) -> float | None:
        """The number `field` (tolerance, limit, perturbed_limit) stands for under `config` (a `GateConfig`)."""
        v = getattr(self, field)
        if v is None or isinstance(v, (int, float)):
            return v
        if not hasattr(config, v):
            raise ValueError(f"GateSpec.{field} names {v!r}, which is not a GateConfig field")
        return float(getattr(config, v))


@dataclasses.dataclass(frozen=True)
class Metric:
    """One registry entry (see the module docstring). Only `name` is required.

    name: the episode output (and report) name; an identifier.
    step: `(StepInputs) -> [N]` (per_object) or the ego's value; None for an entry that
      reduces another entry's step output (`key`) or only combines episode values.
    key: the step output's name (`ego_{key}`, `{key}`); default `name`.
    per_object: `step` returns `[N]`, one value per object.
    ego_step: `(StepInputs) -> []` the ego's value when the `[N]` form is off (default:
      the `[N]` form at the ego's index, always computed).
    per_object_flag: the `MetricsConfig` field (or fields: any of them) that switches the `[N]`
      form on (None: always on).
    object_key: the name of the `[N]` step output (default `key`).
    valid: the key of another step output `[H]` that masks the episode reduction (besides ego_valid).
    reduce: a name of `REDUCTIONS` or `(EpisodeInputs) -> []`; None: a per-step output only.
    empty: the reduction's value without a valid step (mean, min, max, last).
    higher_is_better: the direction; None for a diagnostic (e.g. a count).
    event: a failure event: a rate (`{name}_rate`) in reports, 1 in a non-finite episode.
    at_fault: the name of the at-fault variant of a raw metric.
    object_name: also reduce per object into this episode output `[N]`: the `[N]` step output
      by `reduce`, or `object_reduce`.
    object_reduce: `(EpisodeInputs) -> [N]`, or None where its inputs were not computed.
    aggregate: reported in evaluation aggregates (a rate for events, else a mean).
    on_nonfinite: "one", "nan", "zero" or "keep" in a non-finite episode; default "one" for
      events, "keep" without a direction, else "nan" (averaged over finite episodes only).
    gate: what the safety gate checks (`GateSpec`), or None.
    reward_weight: the `RewardWeights` field that weighs the per-step term in `step_reward`
      (which subtracts weight * penalty).
    reward_penalty: `(StepInputs) -> []` the penalty (None: no term on this step, decided
      statically); default the ego's step value as float32, negated when higher is better.
    label: the name in gate checks (default the name with spaces; " rate" is appended for events).
    summary: one of the columns of the Markdown tables (evaluation and perturbation deltas).
    """

    name: str
    step: Callable[[StepInputs], jax.Array] | None = None
    key: str | None = None
    per_object: bool = False
    ego_step: Callable[[StepInputs], jax.Array] | None = None
    per_object_flag: str | tuple[str, ...] | None = None
    object_key: str | None = None
    valid: str | None = None
    reduce: str | Callable[[EpisodeInputs], jax.Array] | None = None
    empty: float = 0.0
    higher_is_better: bool | None = None
    event: bool = False
    at_fault: str | None = None
    object_name: str | None = None
    object_reduce: Callable[[EpisodeInputs], jax.Array | None] | None = None
    aggregate: bool = True
    on_nonfinite: str | None = None
    gate: GateSpec | None = None
    reward_weight: str | None = None
    reward_penalty: Callable[[StepInputs], jax.Array | None] | None = None
    label: str | None = None
    summary: bool = False

    def __post_init__(self):
        where = f"Metric {self.name!r}"
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"Metric.name must be an identifier, got {self.name!r}")
        if self.reduce is not None and not callable(self.reduce) and self.reduce not in REDUCTIONS:
            raise ValueError(f"{where}: reduce must be one of {REDUCTIONS}, a function of EpisodeInputs or None, "
                             f"got {self.reduce!r}")
        if (self.step is None and self.key is None and (self.reduce is None or isinstance(self.reduce, str))
                and self.object_reduce is None):
            raise ValueError(f"{where}: needs a step function, the key of another entry's step output, or a "
                             f"reduction function")
        if (self.per_object or self.ego_step is not None or self.per_object_flag is not None) and self.step is None:
            raise ValueError(f"{where}: per_object, ego_step and per_object_flag need a step function")
        if (self.ego_step is not None or self.per_object_flag is not None or self.object_key) and not self.per_object:
            raise ValueError(f"{where}: ego_step, per_object_flag and object_key are for per_object entries")
        if self.per_object_flag is not None and self.ego_step is None:
            raise ValueError(f"{where}: a per_object_flag needs an ego_step for when the [N] form is off")
        for flag in self.flags:
            if flag not in MetricsConfig.__dataclass_fields__:
                raise ValueError(f"{where}: per_object_flag {flag!r} is not a MetricsConfig field")
        if self.object_name is not None and self.object_reduce is None and (
                not self.per_object or self.reduce is None or callable(self.reduce)):
            raise ValueError(f"{where}: object_name needs an object_reduce, or a per_object entry with a built-in "
                             f"reduction ({REDUCTIONS})")
        if self.object_reduce is not None and self.object_name is None:
            raise ValueError(f"{where}: object_reduce needs an object_name (its episode output)")
        if self.reduce is None and (self.event or self.gate is not None):
            raise ValueError(f"{where}: event and gate need an episode reduction (reduce)")
        if self.on_nonfinite is not None and self.on_nonfinite not in ON_NONFINITE:
            raise ValueError(f"{where}: on_nonfinite must be one of {ON_NONFINITE}, got {self.on_nonfinite!r}")
        if self.event and self.on_nonfinite not in (None, "one"):
            raise ValueError(f"{where}: an event is counted as happened in a non-finite episode (on_nonfinite 'one')")
        if self.gate is not None and (self.higher_is_better is None or not self.aggregate):
            raise ValueError(f"{where}: a gated metric needs a direction (higher_is_better) and aggregate=True")
        if self.reward_penalty is not None and self.reward_weight is None:
            raise ValueError(f"{where}: reward_penalty needs a reward_weight (a RewardWeights field)")
        if self.reward_weight is not None and self.reward_penalty is None and self.step is None:
            raise ValueError(f"{where}: a reward term needs a step function or a reward_penalty")

    @property
    def step_key(self) -> str:
        return self.key or self.name

    @property
    def objects_key(self) -> str:
        """The name of the `[N]` step output."""
        return self.object_key or self.step_key

    @property
    def flags(self) -> tuple[str, ...]:
        f = self.per_object_flag
        return () if f is None else (f,) if isinstance(f, str) else tuple(f)

    @property
    def aggregate_name(self) -> str:
        """Its name in evaluation aggregates: `{name}_rate` for events, else `name`."""
        return f"{self.name}_rate" if self.event else self.name

    @property
    def nonfinite(self) -> str:
        """What a non-finite episode makes of it (`ON_NONFINITE`)."""
        if self.on_nonfinite is not None:
            return self.on_nonfinite
        return "one" if self.event else "keep" if self.higher_is_better is None else "nan"

    @property
    def gate_label(self) -> str:
        return (self.label or self.name.replace("_", " ")) + (" rate" if self.event else "")

    def better(self, a, b) -> bool:
        """Whether value `a` is strictly better than `b` in this metric's direction."""
        if self.higher_is_better is None:
            raise ValueError(f"metric {self.name!r} has no direction (higher_is_better is None)")
        return a > b if self.higher_is_better else a < b

    def per_object_on(self, config: MetricsConfig) -> bool:
        """Whether `step_metrics` computes the `[N]` form under `config`."""
        return self.per_object and (not self.flags or any(bool(getattr(config, f)) for f in self.flags))

    def penalty(self, inputs: StepInputs) -> jax.Array | None:
        """The per-step penalty `step_reward` weighs (see `reward_penalty`)."""
        if self.reward_penalty is not None:
            return self.reward_penalty(inputs)
        v = ego_value(self, inputs).astype(jnp.float32)
        return -v if self.higher_is_better else v


def ego_value(metric: Metric, inputs: StepInputs) -> jax.Array:
    """The ego's per-step value of a step entry: its `[N]` form at the ego's index, or `ego_step` when that form is off."""
    if metric.per_object and not metric.per_object_on(inputs.config):
        return metric.ego_step(inputs)
    v = metric.step(inputs)
    return select_index(v, inputs.ego) if metric.per_object else v


def _entries(keep: Callable[[Metric], bool], among: str = "entries") -> property:
    """A `Registry` property: the entries of `among` (an attribute: a sequence of entries) that `keep`, in order."""
    return property(lambda self: [m for m in getattr(self, among) if keep(m)])


@dataclasses.dataclass(frozen=True)
class Registry:
    """An ordered, immutable collection of `Metric` entries (the order of outputs, reports and reward terms).

    `register` / `replace` / `without` return new registries; `DEFAULT` is the scorecard.
    Hashable, so it can sit in a static config (`EvalConfig.registry`).
    """

    entries: tuple[Metric, ...] = ()

    def __post_init__(self):
        names = [m.name for m in self.entries]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"Registry: duplicate metric names {dup}")
        keys = [m.step_key for m in self.entries if m.step is not None]
        outputs = [f"ego_{k}" for k in keys] + [m.objects_key for m in self.entries if m.per_object]
        dup = sorted({k for k in keys if keys.count(k) > 1} | {k for k in outputs if outputs.count(k) > 1})
        if dup:
            raise ValueError(f"Registry: several entries compute the step output(s) {dup}")
        for m in self.entries:
            if m.at_fault is not None and m.at_fault not in names:
                raise ValueError(f"Metric {m.name!r}: at_fault {m.at_fault!r} is not in the registry")
            for what, key in (("key", m.key if m.step is None and isinstance(m.reduce, str) else None),
                              ("valid", m.valid)):
                if key is not None and key not in keys:
                    raise ValueError(f"Metric {m.name!r}: {what} {key!r} is no entry's step output")

    def register(self, *metrics: Metric, before: str | None = None) -> "Registry":
        """A new registry with `metrics` appended (or inserted before the entry named `before`)."""
        entries = list(self.entries)
        at = len(entries) if before is None else self.names.index(self[before].name)
        return Registry(tuple(entries[:at]) + tuple(metrics) + tuple(entries[at:]))

    def replace(self, name: str, **changes) -> "Registry":
        """A new registry with the entry `name` changed (`dataclasses.replace`)."""
        self[name]
        return Registry(tuple(dataclasses.replace(m, **changes) if m.name == name else m for m in self.entries))

    def without(self, *names: str) -> "Registry":
        for n in names:
            self[n]
        return Registry(tuple(m for m in self.entries if m.name not in names))

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.entries]

    def __getitem__(self, name: str) -> Metric:
        for m in self.entries:
            if m.name == name:
                return m
        raise KeyError(f"no metric {name!r} in the registry; it has {self.names}")

    def __contains__(self, name: str) -> bool:
        return any(m.name == name for m in self.entries)

    def __iter__(self) -> Iterator[Metric]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def at_fault(self, name: str) -> Metric:
        """The at-fault variant of `name` (itself when it has none)."""
        m = self[name]
        return self[m.at_fault] if m.at_fault else m

    step_entries = _entries(lambda m: m.step is not None)
    episode_entries = _entries(lambda m: m.reduce is not None)

    @property
    def scalar_keys(self) -> tuple[str, ...]:
        """The per-episode scalars evaluation keeps per scenario: every episode entry, then `nonfinite`."""
        return tuple(m.name for m in self.episode_entries) + ("nonfinite",)

    aggregated = _entries(lambda m: m.aggregate, among="episode_entries")

    @property
    def aggregate_names(self) -> tuple[str, ...]:
        """The evaluation aggregates, in order: every aggregated entry, then `nonfinite_rate`."""
        return tuple(m.aggregate_name for m in self.aggregated) + ("nonfinite_rate",)

    @property
    def summary_names(self) -> tuple[str, ...]:
        """Markdown columns: the summary events, `nonfinite_rate`, then the other summary entries."""
        s = [m for m in self.aggregated if m.summary]
        return (tuple(m.aggregate_name for m in s if m.event) + ("nonfinite_rate",)
                + tuple(m.aggregate_name for m in s if not m.event))

    def directions(self) -> dict[str, str]:
        """Aggregate name -> "higher" or "lower" (which is better), for the aggregates with a direction."""
        out = {m.aggregate_name: "higher" if m.higher_is_better else "lower"
               for m in self.aggregated if m.higher_is_better is not None}
        return dict(out, nonfinite_rate="lower")

    gated = _entries(lambda m: m.gate is not None, among="episode_entries")
    rewarded = _entries(lambda m: m.reward_weight is not None)


# ----------------------------------------------------------------------------- the scorecard


def _failure(collision: str, offroad: str):
    return lambda ep: jnp.maximum(jnp.maximum(ep.value(collision), ep.value(offroad)), ep.value("red_light"))


def _progress(ep: EpisodeInputs) -> jax.Array:
    x = ep.extras
    return jnp.sum(jnp.where(ep.valid, x["ego_route_s"] - x["ego_route_s_prev"], 0.0))


def _log_progress(ep: EpisodeInputs) -> jax.Array:
    # The log's progress over the same steps, from the log at the step before the first.
    scenario, out = ep.scenario, ep.rollout_out
    ego = scenario.object_metadata.is_sdc
    log0 = take_object(trajectory_at(scenario.log_trajectory, out.timesteps[0] - 1), ego)
    ls = out.log_states
    log_xy = jnp.stack([select_index(ls.x, ego, 1), select_index(ls.y, ego, 1)], -1)  # [H, 2]
    log_valid = select_index(ls.valid, ego, 1)
    log_s, _ = route_progress(log_xy, scenario.route)
    log_s0, _ = route_progress(jnp.stack([log0.x, log0.y]), scenario.route)
    return jnp.where(jnp.any(log_valid) & log0.valid, _last_valid(log_s, log_valid) - log_s0, 0.0)


def _progress_ratio(ep: EpisodeInputs) -> jax.Array:
    log_progress = ep.value("log_progress")
    return jnp.where(log_progress > MIN_LOG_PROGRESS, ep.value("progress") / jnp.maximum(log_progress, 1e-6), 1.0)


def _score(ep: EpisodeInputs) -> jax.Array:
    v = ep.value
    ratio = v("progress_ratio")
    multiplier = ((1.0 - v("collision")) * (1.0 - v("offroad")) * (1.0 - v("red_light"))
                  * (1.0 - 0.5 * v("wrong_way")) * (ratio >= MIN_PROGRESS_RATIO))
    weighted = (5.0 * jnp.clip(ratio, 0.0, 1.0) + 5.0 * (v("ttc_min") > TTC_THRESHOLD) + 2.0 * v("comfort")) / 12.0
    return multiplier * weighted


def _pair_count(code: int):
    return lambda ep: jnp.sum(ep.pair_classes == code).astype(jnp.float32)


def _offroad_steps(ep: EpisodeInputs, charged: bool) -> jax.Array:
    """`[H]` bool: the ego's at-fault offroad steps it is charged with (`fault.offroad_charged`: one that starts
    off the mapped road is not charged until it has been on the road), or with `charged=False` those the start
    rule exempts."""
    x, scenario = ep.extras, ep.scenario
    if "ego_offroad" not in x:
        raise ValueError("the offroad episode rule needs the raw offroad step output ego_offroad (entry raw_offroad)")
    at_fault = x["ego_offroad_at_fault"] & ep.valid
    log_start = trajectory_at(scenario.log_trajectory, ep.rollout_out.timesteps[0] - 1)
    starts_off = start_offroad(log_start, scenario.roadmap, scenario.object_metadata.is_sdc)
    kept = offroad_charged(at_fault, ep.valid & ~x["ego_offroad"], starts_off)
    return kept if charged else at_fault & ~kept


def _offroad_artefact_steps(ep: EpisodeInputs) -> jax.Array:
    x = ep.extras
    return jnp.sum(x["ego_offroad"] & ~x["ego_offroad_at_fault"] & ep.valid).astype(jnp.float32)


def _discomfort(s: StepInputs) -> jax.Array | None:
    # The reward has no comfort term where the history is too short to tell (a static shape).
    return (~s.comfort["comfortable"]).astype(jnp.float32) if s.state.history.x.shape[-1] >= 2 else None


def _agents(name: str):
    """The per-agent episode value `name` `[N]` (`agents.agent_episode_metrics`), None without the per-agent pass."""
    return lambda ep: None if ep.agents is None else ep.agents[name]


def _step_only(name: str, step: Callable[[StepInputs], jax.Array], **kw) -> Metric:
    return Metric(name, step=step, aggregate=False, **kw)


_exempt = [Metric(f"exempt_{name}_pairs", reduce=_pair_count(code), aggregate=False)
           for code, name in CONTACT_NAMES.items() if code != CONTACT_AT_FAULT]

DEFAULT = Registry((
    Metric("valid", step=lambda s: s.cur.valid, per_object=True, aggregate=False),
    # At fault (what the gate, `failure` and the rewards use; see `jaxloop.sim.metrics`).
    Metric("failure", reduce=_failure("collision", "offroad"), higher_is_better=False, event=True, summary=True,
           gate=GateSpec(tolerance="failure_tolerance", limit="max_failure_rate", perturbed=True,
                         perturbed_limit="max_perturbed_failure_rate")),
    Metric("progress", reduce=_progress, higher_is_better=True, aggregate=False,
           reward_weight="progress", reward_penalty=lambda s: -(s.route_s - s.route_s_prev)),
    _step_only("contact", lambda s: s.agent_contact, per_object=True, per_object_flag="per_agent",
               object_key="agent_contact", ego_step=lambda s: s.contact),
    Metric("collision", key="overlap_at_fault", step=lambda s: jnp.any(s.agent_contact == CONTACT_AT_FAULT, -1),
           per_object=True, per_object_flag="per_agent", object_key="agent_overlap_at_fault",
           ego_step=lambda s: jnp.any(s.contact == CONTACT_AT_FAULT),
           reduce=lambda ep: (ep.value("collision_pairs") > 0).astype(jnp.float32), higher_is_better=False,
           event=True, summary=True, gate=GateSpec(limit="max_collision_rate"), reward_weight="collision",
           object_name="agent_collision", object_reduce=_agents("collision")),
    Metric("offroad", key="offroad_at_fault", step=lambda s: s.agent_offroad_at_fault, per_object=True,
           per_object_flag="per_agent", object_key="agent_offroad_at_fault",
           ego_step=lambda s: s.offroad_corners[0] & jnp.any(s.offroad_corners[1] & ~s.offroad_corners[2]),
           reduce=lambda ep: jnp.any(_offroad_steps(ep, True)).astype(jnp.float32), higher_is_better=False, event=True, summary=True, gate=GateSpec(limit="max_offroad_rate"),
           reward_weight="offroad", object_name="agent_offroad", object_reduce=_agents("offroad")),
    # Raw (Waymax-compatible).
    Metric("raw_failure", reduce=_failure("raw_collision", "raw_offroad"), higher_is_better=False, event=True,
           at_fault="failure", summary=True),
    Metric("raw_collision", key="overlap", step=lambda s: overlap(s.cur), per_object=True,
           per_object_flag="per_object_overlap", ego_step=lambda s: s.e.valid & jnp.any(s.separation < 0.0),
           reduce="any", higher_is_better=False, event=True, at_fault="collision", object_name="object_collision",
           summary=True),
    Metric("raw_offroad", key="offroad", step=lambda s: offroad(s.cur, s.roadmap), per_object=True,
           per_object_flag=("per_object_offroad", "per_agent"),
           ego_step=lambda s: s.offroad_corners[0] & jnp.any(s.offroad_corners[1]), reduce="any",
           higher_is_better=False, event=True, at_fault="offroad", summary=True, object_name="agent_raw_offroad",
           object_reduce=_agents("raw_offroad")),
    # Traffic rules and feasibility.
    Metric("red_light", step=lambda s: red_light_crossing(s.scenario, s.prev, s.cur, s.timestep), per_object=True,
           per_object_flag="per_object_red_light",
           ego_step=lambda s: red_light_crossing(s.scenario, s.e_prev, s.e, s.timestep), reduce="any",
           higher_is_better=False, event=True, summary=True, gate=GateSpec(limit="max_red_light_rate"),
           reward_weight="red_light", label="red-light"),
    Metric("off_route", step=lambda s: s.e.valid & jnp.any(s.route.valid) & (s.route_lateral > OFF_ROUTE_DISTANCE),
           reduce="any", higher_is_better=False, event=True, reward_weight="off_route"),
    Metric("wrong_way", step=lambda s: wrong_way(s.e, s.roadmap, s.route), reduce="any", higher_is_better=False,
           event=True, reward_weight="wrong_way"),
    Metric("infeasible", step=lambda s: kinematic_infeasibility(s.e_prev, s.e), reduce="any",
           higher_is_better=False, event=True, reward_weight="infeasible"),
    # Progress along the route.
    _step_only("route_s", lambda s: s.route_s),
    _step_only("route_s_prev", lambda s: s.route_s_prev),
    _step_only("route_lateral", lambda s: s.route_lateral),
    Metric("log_progress", reduce=_log_progress, aggregate=False),
    Metric("progress_ratio", reduce=_progress_ratio, higher_is_better=True, summary=True,
           gate=GateSpec(limit="min_progress_ratio")),
    # Per agent only (`MetricsConfig.per_agent`): on each object's own logged path.
    Metric("collision_offroad", object_name="agent_collision_offroad", object_reduce=_agents("collision_offroad"),
           higher_is_better=False),
    Metric("completion", object_name="agent_completion", object_reduce=_agents("completion"), higher_is_better=True),
    Metric("goal_reached", object_name="agent_goal_reached", object_reduce=_agents("goal_reached"),
           higher_is_better=True),
    # Log divergence.
    Metric("log_valid", step=lambda s: s.log_divergence[1], per_object=True,
           per_object_flag="per_object_log_divergence", ego_step=lambda s: s.ego_log_divergence[1], aggregate=False),
    Metric("ade", key="log_divergence", step=lambda s: s.log_divergence[0], per_object=True,
           per_object_flag="per_object_log_divergence", ego_step=lambda s: s.ego_log_divergence[0],
           valid="log_valid", reduce="mean", higher_is_better=False),
    Metric("fde", key="log_divergence", valid="log_valid", reduce="last", higher_is_better=False),
    # Comfort and time to collision.
    Metric("comfort", key="comfortable", step=lambda s: s.comfort["comfortable"], reduce="mean", empty=1.0,
           higher_is_better=True, reward_weight="discomfort", reward_penalty=_discomfort),
    _step_only("lon_accel", lambda s: s.comfort["lon_accel"]),
    _step_only("lat_accel", lambda s: s.comfort["lat_accel"]),
    _step_only("jerk", lambda s: s.comfort["jerk"]),
    Metric("ttc_min", key="ttc", step=lambda s: time_to_collision(s.cur, s.ego), reduce="min", empty=TTC_CAP,
           higher_is_better=True),
    Metric("score", reduce=_score, higher_is_better=True, on_nonfinite="zero", summary=True),
    # Diagnostics: how the contacts and offroad steps were attributed.
    Metric("collision_pairs", reduce=_pair_count(CONTACT_AT_FAULT), aggregate=False),
    *_exempt,
    Metric("offroad_artefact_steps", reduce=_offroad_artefact_steps, aggregate=False),
    Metric("offroad_start_exempt_steps", reduce=lambda ep: jnp.sum(_offroad_steps(ep, False)).astype(jnp.float32),
           aggregate=False),
))
