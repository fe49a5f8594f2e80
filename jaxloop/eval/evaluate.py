"""Closed-loop evaluation of a policy or a built-in baseline over a scenario set.

One jitted, vmapped episode function (reset -> rollout with per-step metrics -> episode
aggregates) runs over fixed-size chunks of the set (the last chunk is padded, so it
compiles once). Non-ego objects follow `EvalConfig.env.non_ego_agent` (log replay or
IDM). Baselines drive the ego without a network:

- `expert`: log replay of the ego (the reference: zero failures on clean logs),
- `constant_velocity`: the ego keeps its initial velocity,
- `idm`: the ego follows its logged path with IDM speed control, reacting to others.

A `Perturbation` (see `jaxloop.sim.perturb`) changes the scenario, the initial state,
the agents or what the policy sees; the same function evaluates clean and perturbed.

Traffic that is itself a policy (`jaxloop.sim.actor.with_traffic`, in an environment with
`controlled="vehicles"` / "all") and a self-play policy driving every vehicle are actors
like any other: the ego report is the same. `evaluate(..., agents=True)` adds per-agent
rates over every controlled agent (`jaxloop.sim.metrics.agents`, GPUDrive style) as
`EvalReport.agents`: "all" the agents the actor drives (and the ego, whatever drives it),
"non_ego" those besides the ego.

Non-finite numbers are never scored as safe:

- inputs: `evaluate` first checks the scenarios (`check_scenarios`); a NaN / inf in the
  log at a valid step (or in the valid parts of the map, route or lights) is a
  ValueError naming the scenario ids and fields, raised before any rollout;
- rollouts: an episode whose simulated ego state or ego metrics become non-finite has
  `nonfinite = 1` and counts as a failure with every safety event (collision, offroad,
  ...) set to 1 and score 0 (`jaxloop.sim.metrics.mark_nonfinite`); `evaluate` warns
  (`NonFiniteEpisodeWarning`) naming the scenario ids;
- aggregates: rates (`failure_rate`, ..., `nonfinite_rate`) and `score` average over
  every scenario; the continuous metrics (`CONTINUOUS_RATES`: progress_ratio, ade, fde,
  comfort, ttc_min) average over the finite episodes only, whose count is
  `num_scenarios - num_nonfinite` (NaN when none is finite), so they never turn NaN
  silently and never hide a failure -- `nonfinite_rate` says how many were left out.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import warnings
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxloop.io.logging import finite_or_none as _finite
from jaxloop.sim import agents as agents_lib
from jaxloop.sim.compute import compiler_options
from jaxloop.sim.datatypes import Scenario, trajectory_at
from jaxloop.sim.env import Env, EnvConfig, num_closed_loop_steps
from jaxloop.sim.metrics import MetricsConfig, episode_metrics, step_metrics
from jaxloop.sim.metrics.agents import agent_episode_metrics, agent_rates, agent_step_metrics
from jaxloop.sim.perturb import Perturbation
from jaxloop.sim.actor import (BASELINE_KINDS, Actor, as_actor, baseline_actor, map_policy, record_controlled,
                               with_agent_kind)
from jaxloop.sim.rollout import PolicyFn, over_batch, rollout

BASELINES = tuple(BASELINE_KINDS)

# Aggregate name -> per-episode metric averaged over scenarios.
# failure / collision / offroad are the at-fault layer of `jaxloop.sim.metrics` (what the
# gate checks); raw_* are the Waymax-compatible metrics, blind to what the log holds.
RATES = {"failure_rate": "failure", "collision_rate": "collision", "offroad_rate": "offroad",
         "raw_failure_rate": "raw_failure", "raw_collision_rate": "raw_collision", "raw_offroad_rate": "raw_offroad",
         "red_light_rate": "red_light", "off_route_rate": "off_route", "wrong_way_rate": "wrong_way",
         "infeasible_rate": "infeasible", "progress_ratio": "progress_ratio", "score": "score", "ade": "ade",
         "fde": "fde", "comfort": "comfort", "ttc_min": "ttc_min", "nonfinite_rate": "nonfinite"}
# Aggregates taken over finite episodes only: a non-finite episode has no value for them.
CONTINUOUS_RATES = ("progress_ratio", "ade", "fde", "comfort", "ttc_min")
SCALAR_KEYS = ("failure", "collision", "offroad", "raw_failure", "raw_collision", "raw_offroad", "red_light",
               "off_route", "wrong_way", "infeasible", "progress", "log_progress", "progress_ratio", "ade", "fde",
               "comfort", "ttc_min", "score", "nonfinite", "collision_pairs", "exempt_logged_pairs",
               "exempt_stopped_ego_pairs", "exempt_rear_pairs", "exempt_lateral_pairs", "offroad_artefact_steps")


class NonFiniteEpisodeWarning(RuntimeWarning):
    """Some episodes' simulated ego state became NaN / inf; they are scored as failures."""


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Static evaluation settings. `horizon=None` runs to the end of the log.

    The report scores the ego. `env.controlled` "vehicles" / "all" makes those objects
    policy objects, for an actor that drives them too (a self-play policy emitting
    `[N, A]`, or `with_traffic`); with "sdc" only the ego is.
    """

    env: EnvConfig = EnvConfig()
    metrics: MetricsConfig = MetricsConfig(per_object_overlap=False, per_object_red_light=False,
                                           per_object_log_divergence=False, edge_cull=64)
    batch_size: int = 64
    horizon: int | None = None

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"EvalConfig.batch_size must be >= 1, got {self.batch_size}")
        # The upper bound depends on the scenarios' length: `check_horizon` checks it.
        if self.horizon is not None and (isinstance(self.horizon, bool)
                                         or not isinstance(self.horizon, numbers.Integral) or self.horizon < 1):
            raise ValueError(f"EvalConfig.horizon must be None (to the end of the log) or an int >= 1 closed-loop "
                             f"steps, got {self.horizon!r}")


def resolve_policy(policy: Actor | PolicyFn | str, env: Env) -> Actor:
    """The actor of a policy: a baseline name becomes its `baseline_actor`, a `PolicyFn` its `as_actor`."""
    if isinstance(policy, str):
        if policy not in BASELINES:
            raise ValueError(f"unknown baseline {policy!r}; expected one of {BASELINES}, an Actor or a policy function")
        return baseline_actor(policy, env.config.action_dim)
    return as_actor(policy)


def make_rollout_fn(policy: Actor | PolicyFn | str, config: EvalConfig, num_steps: int,
                    perturbation: Perturbation | None = None, actor_params=None,
                    agents: bool = False) -> Callable[[Scenario, jax.Array], tuple]:
    """`episode(scenario, key) -> (scenario, RolloutOutput)` for one unbatched scenario.

    `policy` is an `Actor` (run under `actor_params`), a `PolicyFn` or a baseline name. The
    returned scenario is the (possibly perturbed) one the episode ran in; the output holds
    the per-step states and metrics (`extras`) that `make_episode_fn` reduces and
    `jaxloop render` draws. `agents` adds the per-agent step metrics (`agent_step_metrics`)
    to the extras and the actor's controlled mask `[H, N]` to `aux["controlled"]`.
    """
    env = Env(config.env)
    actor = resolve_policy(policy, env)
    p = perturbation or Perturbation("none")
    if p.policy_fn is not None:
        actor = map_policy(p.policy_fn, actor)
    horizon = check_horizon(config, num_steps)
    extras_fn = lambda sc, prev, new, info: step_metrics(sc, prev, new, info, config=config.metrics)
    if agents:
        actor, ego_extras = record_controlled(actor), extras_fn
        extras_fn = lambda sc, prev, new, info: {**ego_extras(sc, prev, new, info),
                                                 **agent_step_metrics(sc, prev, new, info)}
    with_idm = (config.env.non_ego_agent == "idm" or actor.agent_kind == agents_lib.AGENT_IDM or p.uses_idm)

    def episode(scenario: Scenario, key: jax.Array) -> tuple:
        key_scenario, key_reset, key_state = jax.random.split(key, 3)
        if p.scenario_fn is not None:
            scenario = p.scenario_fn(scenario, key_scenario)
        state = env.reset(scenario, key_reset)
        kind = with_agent_kind(actor, scenario, state.agent_kind)
        if p.agent_kind_fn is not None:
            kind = p.agent_kind_fn(scenario, kind)
        if actor.agent_kind is not None or p.agent_kind_fn is not None:
            state = env.reset(scenario, key_reset, agent_kind=kind, with_idm=with_idm)
        if p.state_fn is not None:
            state = p.state_fn(scenario, state, key_state)
        _, out = rollout(env, scenario, state, actor, horizon, extras_fn=extras_fn, params=p.params,
                         actor_params=actor_params)
        return scenario, out

    return episode


def make_episode_fn(policy: Actor | PolicyFn | str, config: EvalConfig, num_steps: int,
                    perturbation: Perturbation | None = None,
                    actor_params=None, agents: bool = False) -> Callable[[Scenario, jax.Array], dict]:
    """`episode(scenario, key) -> {metric: scalar}` for one unbatched scenario.

    `agents` adds "agents": the per-agent episode values `[N]` (`agent_episode_metrics`)
    with "controlled" (the agents to rate, `evaluated_agents`) and "ego" `[N]` masks.
    """
    run = make_rollout_fn(policy, config, num_steps, perturbation, actor_params, agents)

    def episode(scenario: Scenario, key: jax.Array) -> dict:
        scenario, out = run(scenario, key)
        m = episode_metrics(scenario, out)
        res = {k: m[k] for k in SCALAR_KEYS}
        if agents:
            res["agents"] = {**agent_episode_metrics(scenario, out), "controlled": evaluated_agents(scenario, out),
                             "ego": scenario.object_metadata.is_sdc}
        return res

    return episode


def evaluated_agents(scenario: Scenario, out) -> jax.Array:
    """`[N]` bool: the agents an episode rates: valid at its start, and driven by the actor at its first step
    (`aux["controlled"]`, see `make_rollout_fn(agents=True)`) or the ego (whatever drives it: a baseline's
    simulator model too)."""
    start = trajectory_at(scenario.log_trajectory, out.timesteps[0] - 1)
    return start.valid & (out.aux["controlled"][0] | scenario.object_metadata.is_sdc)


def agents_report(per_agent: dict) -> dict[str, dict[str, float]]:
    """Per-agent rates (`agent_rates`) of the batched episode values `{name: [S, N]}` of `make_episode_fn(agents=True)`:
    "all" over every rated agent, "non_ego" over those besides the ego (when there are any)."""
    controlled, ego = np.asarray(per_agent["controlled"], bool), np.asarray(per_agent["ego"], bool)
    out = {"all": agent_rates(per_agent, controlled)}
    if (controlled & ~ego).any():
        out["non_ego"] = agent_rates(per_agent, controlled & ~ego)
    return out


def check_horizon(config: EvalConfig, num_steps: int) -> int:
    """The closed-loop steps to run: `config.horizon`, or all `num_steps` the log has after the start."""
    if num_steps < 1:
        raise ValueError(f"the scenarios have no closed-loop steps: {num_steps + config.env.init_steps} log steps "
                         f"with EnvConfig.init_steps={config.env.init_steps}")
    if config.horizon is None:
        return num_steps
    if config.horizon > num_steps:
        raise ValueError(f"EvalConfig.horizon={config.horizon} exceeds the {num_steps} closed-loop steps the scenarios "
                         f"have ({num_steps + config.env.init_steps} log steps, init_steps={config.env.init_steps}); "
                         f"expected 1..{num_steps} or None")
    return config.horizon


def _scenario_ids(num: int, infos: Sequence[dict] | None) -> list[str]:
    return [str((infos[i].get("scenario_id") if infos else None) or i) for i in range(num)]


def _finite_checks(sc: Scenario) -> list[tuple[str, Any, Any]]:
    """(field, values, valid mask) of every float input the simulator reads where it is valid."""
    log, rm, tl, route = sc.log_trajectory, sc.roadmap, sc.traffic_lights, sc.route
    out = [(f"log_trajectory.{f}", getattr(log, f), log.valid)
           for f in ("x", "y", "z", "vel_x", "vel_y", "yaw", "length", "width", "height")]
    out += [("roadmap.lane_xy", rm.lane_xy, rm.lane_valid), ("roadmap.lane_dir", rm.lane_dir, rm.lane_valid),
            ("roadmap.edge_start", rm.edge_start, rm.edge_valid), ("roadmap.edge_end", rm.edge_end, rm.edge_valid),
            ("roadmap.crosswalk_xy", rm.crosswalk_xy, rm.crosswalk_valid),
            ("roadmap.stop_sign_xy", rm.stop_sign_xy, rm.stop_sign_valid),
            ("route.xy", route.xy, route.valid), ("route.arc_length", route.arc_length, route.valid),
            ("traffic_lights.x", tl.x, tl.valid), ("traffic_lights.y", tl.y, tl.valid)]
    return out


def check_scenarios(scenarios: Any, infos: Sequence[dict] | None = None,
                    config: EvalConfig | None = None) -> int:
    """Validates a batched scenario set `[S, ...]` (or a `jaxloop.data` dataset) before any rollout; returns S.

    Raises ValueError for an empty set, infos of the wrong length, a horizon longer than
    the logs (with `config`), or a NaN / inf at a valid step of the log, map, route or
    lights, naming the scenario ids and fields that hold them. Datasets held in memory are
    checked whole; a streamed cache for its size and horizon (its shard loader refuses any
    non-finite value, naming the scenario and field).
    """
    if not isinstance(scenarios, Scenario):  # a dataset (`jaxloop.data.Dataset`: get, infos, stream)
        if len(scenarios) == 0:
            raise ValueError("evaluate: empty scenario set")
        for part in getattr(scenarios, "parts", [scenarios]):
            if isinstance(getattr(part, "scenarios", None), Scenario):  # held in memory: checked whole
                check_scenarios(part.scenarios, part.infos, config)
            elif config is not None:
                check_horizon(config, int(np.shape(part.get([0]).log_trajectory.x)[-1]) - config.env.init_steps)
        return len(scenarios)
    num = scenarios.num_scenarios
    if num == 0:
        raise ValueError("evaluate: empty scenario set")
    if infos is not None and len(infos) != num:
        raise ValueError(f"evaluate: {len(infos)} infos for {num} scenarios")
    if config is not None:
        check_horizon(config, int(np.shape(scenarios.log_trajectory.x)[-1]) - config.env.init_steps)
    bad: dict[int, list[str]] = {}
    for field, values, valid in _finite_checks(scenarios):
        values, valid = np.asarray(values), np.asarray(valid, bool)
        # Trailing coordinate axes (xy pairs, polygon corners) share their point's mask.
        nonfinite = ~np.isfinite(values).reshape(*valid.shape, -1).all(-1) & valid
        for i in np.flatnonzero(nonfinite.reshape(num, -1).any(-1)):
            bad.setdefault(int(i), []).append(field)
    if bad:
        ids = _scenario_ids(num, infos)
        listed = "; ".join(f"{ids[i]} ({', '.join(fields)})" for i, fields in sorted(bad.items())[:20])
        more = f" and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise ValueError(f"non-finite (NaN / inf) scenario inputs at valid steps in {len(bad)} of {num} scenarios: "
                         f"{listed}{more}; expected finite values wherever `valid` is set (fix or drop these "
                         f"scenarios before evaluating)")
    return num


@dataclasses.dataclass
class EvalReport:
    """Per-scenario metrics and their aggregates (overall and per family)."""

    name: str
    per_scenario: list[dict]
    aggregate: dict[str, float]
    per_family: dict[str, dict[str, float]]
    agents: dict[str, dict[str, float]] | None = None  # per-agent rates by group (`agents_report`), when computed

    @property
    def nonfinite_ids(self) -> list[str]:
        """Scenario ids whose episode became non-finite (scored as failures)."""
        return [r["scenario_id"] for r in self.per_scenario if r.get("nonfinite")]

    def to_dict(self) -> dict:
        out = {"name": self.name, "aggregate": self.aggregate, "per_family": self.per_family,
               "per_scenario": self.per_scenario}
        if self.agents is not None:
            out["agents"] = self.agents
        return out

    def to_json(self, path: str | None = None) -> str:
        text = json.dumps(_finite(self.to_dict()), indent=1)
        if path:
            with open(path, "w") as f:
                f.write(text)
        return text

    def to_markdown(self) -> str:
        cols = ("num_scenarios", "failure_rate", "collision_rate", "offroad_rate", "raw_failure_rate",
                "raw_collision_rate", "raw_offroad_rate", "red_light_rate", "nonfinite_rate", "progress_ratio",
                "score")
        lines = [f"### {self.name}", "", "| set | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        rows = [("all", self.aggregate)] + sorted(self.per_family.items())
        for label, agg in rows:
            lines.append(f"| {label} | " + " | ".join(_fmt(agg.get(c)) for c in cols) + " |")
        if self.agents:
            lines += ["", agents_markdown(self.agents)]
        return "\n".join(lines) + "\n"


def agents_markdown(agents: dict[str, dict[str, float]]) -> str:
    """The per-agent rates table of `EvalReport.agents`."""
    cols = ("num_agents", "collision_rate", "offroad_rate", "collision_offroad_rate", "route_completion",
            "goal_rate", "raw_collision_rate", "raw_offroad_rate", "nonfinite_rate")
    lines = ["Per-agent rates (at fault unless raw)", "", "| agents | " + " | ".join(cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    for group, rates in agents.items():
        lines.append(f"| {group} | " + " | ".join(_fmt(rates.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def _fmt(v) -> str:
    if v is None:
        return ""
    return str(int(v)) if isinstance(v, int) else f"{v:.3f}"


def aggregate(rows: Sequence[dict]) -> dict[str, float]:
    """Means over `rows`; `CONTINUOUS_RATES` over the finite episodes only (see the module docstring)."""
    finite = [r for r in rows if not r.get("nonfinite")]
    out: dict[str, Any] = {"num_scenarios": len(rows), "num_nonfinite": len(rows) - len(finite)}
    for name, key in RATES.items():
        vals = [r[key] for r in (finite if name in CONTINUOUS_RATES else rows) if r.get(key) is not None]
        out[name] = float(np.mean(vals)) if vals else float("nan")
    return out


def evaluate(policy: Actor | PolicyFn | str, scenarios: Any, infos: Sequence[dict] | None = None,
             config: EvalConfig = EvalConfig(), seed: int = 0, perturbation: Perturbation | None = None,
             name: str | None = None, actor_params=None, agents: bool = False) -> EvalReport:
    """Evaluates `policy` (an `Actor` under `actor_params`, a `PolicyFn` or a baseline name) on batched
    `scenarios` `[S, ...]` (with `infos`) or
    a `jaxloop.data.Dataset` (its own infos: a cache is streamed), in order, in batches of `config.batch_size`.

    Raises ValueError (`check_scenarios`) before any rollout for non-finite inputs or a
    horizon longer than the logs; warns `NonFiniteEpisodeWarning` for episodes that
    became non-finite, which the report counts as failures. `agents` adds the per-agent
    rates over every controlled agent (`EvalReport.agents`, see the module docstring).
    """
    num = check_scenarios(scenarios, infos, config)
    bs = min(config.batch_size, num)
    # The last batch is padded by wrapping: one shape, one compile.
    index_batches = [np.arange(start, start + bs) % num for start in range(0, num, bs)]
    if isinstance(scenarios, Scenario):
        batches = (jax.tree.map(lambda a: np.asarray(a)[ix], scenarios) for ix in index_batches)
        first = jax.tree.map(lambda a: a[0], scenarios)
    else:
        infos = scenarios.infos
        batches = (batch for batch, _ in scenarios.stream(iter(index_batches)))  # prefetched
        first = jax.tree.map(lambda a: a[0], scenarios.get([0]))
    steps = num_closed_loop_steps(first, config.env)
    episode = make_episode_fn(policy, config, steps, perturbation, actor_params, agents)
    fn = jax.jit(lambda batch, keys: over_batch(episode, batch, None, keys=keys), compiler_options=compiler_options())
    keys = jax.random.split(jax.random.key(seed), num)
    chunks, agent_chunks = [], []
    for start, ix, batch in zip(range(0, num, bs), index_batches, batches):
        res = jax.device_get(fn(batch, keys[ix]))
        keep = min(bs, num - start)
        if agents:
            agent_chunks.append({k: np.asarray(v)[:keep] for k, v in res.pop("agents").items()})
        chunks.append({k: np.asarray(v)[:keep] for k, v in res.items()})
    cols = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    families = _family_names(num, infos)
    ids = _scenario_ids(num, infos)
    rows = []
    for i in range(num):
        row = {k: float(cols[k][i]) for k in cols}
        row["scenario_id"] = ids[i]
        row["family"] = families[i]
        rows.append(row)
    per_family = {f: aggregate([r for r in rows if r["family"] == f]) for f in sorted(set(families))}
    label = name or (policy if isinstance(policy, str) else policy.name if isinstance(policy, Actor) else "policy")
    if perturbation is not None:
        label += f" [{perturbation.name}]"
    report = EvalReport(name=label, per_scenario=rows, aggregate=aggregate(rows), per_family=per_family)
    if agents:
        report.agents = agents_report({k: np.concatenate([c[k] for c in agent_chunks]) for k in agent_chunks[0]})
    bad = report.nonfinite_ids
    if bad:
        shown = ", ".join(bad[:20]) + (f" and {len(bad) - 20} more" if len(bad) > 20 else "")
        warnings.warn(f"{label}: the simulated ego state became non-finite (NaN / inf) in {len(bad)} of {num} "
                      f"episodes, scored as failures: {shown}", NonFiniteEpisodeWarning, stacklevel=2)
    return report


def _family_names(num: int, infos: Sequence[dict] | None) -> list[str]:
    """A family label per scenario from its info: the procedural `family`, else the `format` (else "real")."""
    names = []
    for i in range(num):
        info = infos[i] if infos is not None else {}
        names.append(str(info.get("family") or info.get("format") or "real"))
    return names
