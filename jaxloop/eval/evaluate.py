"""Closed-loop evaluation of a policy or a built-in baseline over a scenario set.

One jitted, vmapped episode function (reset -> rollout with per-step metrics -> episode
aggregates) runs over fixed-size chunks of the set (the last chunk is padded, so it
compiles once). Non-ego objects follow `EvalConfig.env.non_ego_agent` (log replay or
IDM). Baselines drive the ego without a network:

- `expert`: log replay of the ego (the reference: zero failures on clean logs),
- `constant_velocity`: the ego keeps its initial velocity,
- `idm`: the ego follows its logged path with IDM speed control, reacting to others.

A `Perturbation` (see `jaxloop.eval.perturb`) changes the scenario, the initial state,
the agents or what the policy sees; the same function evaluates clean and perturbed.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxloop.sim import agents as agents_lib
from jaxloop.sim.compute import compiler_options
from jaxloop.sim.datatypes import Scenario, SimState
from jaxloop.sim.env import Env, EnvConfig, num_closed_loop_steps
from jaxloop.sim.metrics import MetricsConfig, episode_metrics, step_metrics
from jaxloop.sim.rollout import PolicyFn, constant_action_policy, rollout

BASELINES = ("expert", "constant_velocity", "idm")
_BASELINE_KIND = {"expert": agents_lib.AGENT_LOG, "constant_velocity": agents_lib.AGENT_CONSTANT_VELOCITY,
                  "idm": agents_lib.AGENT_IDM}

# Aggregate name -> per-episode metric averaged over scenarios.
# failure / collision / offroad are the at-fault layer of `jaxloop.sim.metrics` (what the
# gate checks); raw_* are the Waymax-compatible metrics, blind to what the log holds.
RATES = {"failure_rate": "failure", "collision_rate": "collision", "offroad_rate": "offroad",
         "raw_failure_rate": "raw_failure", "raw_collision_rate": "raw_collision", "raw_offroad_rate": "raw_offroad",
         "red_light_rate": "red_light", "off_route_rate": "off_route", "wrong_way_rate": "wrong_way",
         "infeasible_rate": "infeasible", "progress_ratio": "progress_ratio", "score": "score", "ade": "ade",
         "fde": "fde", "comfort": "comfort", "ttc_min": "ttc_min"}
SCALAR_KEYS = ("failure", "collision", "offroad", "raw_failure", "raw_collision", "raw_offroad", "red_light",
               "off_route", "wrong_way", "infeasible", "progress", "log_progress", "progress_ratio", "ade", "fde",
               "comfort", "ttc_min", "score", "collision_pairs", "exempt_logged_pairs", "exempt_stopped_ego_pairs",
               "exempt_rear_pairs", "exempt_lateral_pairs", "offroad_artefact_steps")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Static evaluation settings. `horizon=None` runs to the end of the log."""

    env: EnvConfig = EnvConfig()
    metrics: MetricsConfig = MetricsConfig(per_object_overlap=False, per_object_red_light=False,
                                           per_object_log_divergence=False, edge_cull=64)
    batch_size: int = 64
    horizon: int | None = None

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"EvalConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.env.controlled != "sdc":
            raise ValueError("evaluation scores the ego: EvalConfig.env.controlled must be 'sdc'")


@dataclasses.dataclass(frozen=True)
class Perturbation:
    """A change to an evaluation episode. Every hook is pure and runs inside `vmap`.

    scenario_fn(scenario, key) -> scenario     before reset (map / log changes)
    state_fn(scenario, state, key) -> state    right after reset
    agent_kind_fn(scenario, kind) -> kind      per-object agent models `[N]`
    uses_idm: whether agent_kind_fn may make objects IDM (static)
    policy_fn(policy) -> policy                what the policy sees / when it acts
    params: AgentParams or None                traced agent constants
    """

    name: str
    scenario_fn: Callable[[Scenario, jax.Array], Scenario] | None = None
    state_fn: Callable[[Scenario, SimState, jax.Array], SimState] | None = None
    agent_kind_fn: Callable[[Scenario, jax.Array], jax.Array] | None = None
    uses_idm: bool = False
    policy_fn: Callable[[PolicyFn], PolicyFn] | None = None
    params: agents_lib.AgentParams | None = None
    description: str = ""


def resolve_policy(policy: PolicyFn | str, env: Env) -> tuple[PolicyFn, int | None]:
    """A policy function and, for baselines, the agent kind that drives the ego."""
    if isinstance(policy, str):
        if policy not in BASELINES:
            raise ValueError(f"unknown baseline {policy!r}; expected one of {BASELINES} or a policy function")
        return constant_action_policy(jnp.zeros(env.config.action_dim)), _BASELINE_KIND[policy]
    return policy, None


def make_episode_fn(policy: PolicyFn | str, config: EvalConfig, num_steps: int,
                    perturbation: Perturbation | None = None) -> Callable[[Scenario, jax.Array], dict]:
    """`episode(scenario, key) -> {metric: scalar}` for one unbatched scenario."""
    env = Env(config.env)
    policy_fn, ego_kind = resolve_policy(policy, env)
    p = perturbation or Perturbation("none")
    if p.policy_fn is not None:
        policy_fn = p.policy_fn(policy_fn)
    horizon = num_steps if config.horizon is None else min(config.horizon, num_steps)
    extras_fn = lambda sc, prev, new, info: step_metrics(sc, prev, new, info, config=config.metrics)
    with_idm = (config.env.non_ego_agent == "idm" or ego_kind == agents_lib.AGENT_IDM or p.uses_idm)

    def episode(scenario: Scenario, key: jax.Array) -> dict:
        key_scenario, key_reset, key_state = jax.random.split(key, 3)
        if p.scenario_fn is not None:
            scenario = p.scenario_fn(scenario, key_scenario)
        state = env.reset(scenario, key_reset)
        kind = state.agent_kind
        if ego_kind is not None:
            kind = kind.at[scenario.object_metadata.sdc_index].set(ego_kind)
        if p.agent_kind_fn is not None:
            kind = p.agent_kind_fn(scenario, kind)
        if ego_kind is not None or p.agent_kind_fn is not None:
            state = env.reset(scenario, key_reset, agent_kind=kind, with_idm=with_idm)
        if p.state_fn is not None:
            state = p.state_fn(scenario, state, key_state)
        _, out = rollout(env, scenario, state, policy_fn, horizon, extras_fn=extras_fn, params=p.params)
        m = episode_metrics(scenario, out)
        return {k: m[k] for k in SCALAR_KEYS}

    return episode


@dataclasses.dataclass
class EvalReport:
    """Per-scenario metrics and their aggregates (overall and per family)."""

    name: str
    per_scenario: list[dict]
    aggregate: dict[str, float]
    per_family: dict[str, dict[str, float]]

    def to_dict(self) -> dict:
        return {"name": self.name, "aggregate": self.aggregate, "per_family": self.per_family,
                "per_scenario": self.per_scenario}

    def to_json(self, path: str | None = None) -> str:
        text = json.dumps(_finite(self.to_dict()), indent=1)
        if path:
            with open(path, "w") as f:
                f.write(text)
        return text

    def to_markdown(self) -> str:
        cols = ("num_scenarios", "failure_rate", "collision_rate", "offroad_rate", "raw_failure_rate",
                "raw_collision_rate", "raw_offroad_rate", "red_light_rate", "progress_ratio", "score")
        lines = [f"### {self.name}", "", "| set | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        rows = [("all", self.aggregate)] + sorted(self.per_family.items())
        for label, agg in rows:
            lines.append(f"| {label} | " + " | ".join(_fmt(agg.get(c)) for c in cols) + " |")
        return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    if v is None:
        return ""
    return str(int(v)) if isinstance(v, int) else f"{v:.3f}"


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def aggregate(rows: Sequence[dict]) -> dict[str, float]:
    out: dict[str, Any] = {"num_scenarios": len(rows)}
    for name, key in RATES.items():
        vals = [r[key] for r in rows if r.get(key) is not None]
        out[name] = float(np.mean(vals)) if vals else float("nan")
    return out


def evaluate(policy: PolicyFn | str, scenarios: Scenario, infos: Sequence[dict] | None = None,
             config: EvalConfig = EvalConfig(), seed: int = 0, perturbation: Perturbation | None = None,
             name: str | None = None) -> EvalReport:
    """Evaluates `policy` (a `PolicyFn` or a baseline name) on batched `scenarios` `[S, ...]`."""
    num = int(np.shape(scenarios.family)[0])
    if num == 0:
        raise ValueError("evaluate: empty scenario set")
    if infos is not None and len(infos) != num:
        raise ValueError(f"evaluate: {len(infos)} infos for {num} scenarios")
    first = jax.tree.map(lambda a: a[0], scenarios)
    steps = num_closed_loop_steps(first, config.env)
    episode = make_episode_fn(policy, config, steps, perturbation)
    fn = jax.jit(jax.vmap(episode), compiler_options=compiler_options())
    keys = jax.random.split(jax.random.key(seed), num)
    bs = min(config.batch_size, num)
    chunks = []
    for start in range(0, num, bs):
        idx = np.arange(start, start + bs) % num  # pad the last chunk by wrapping: one compile
        batch = jax.tree.map(lambda a: np.asarray(a)[idx], scenarios)
        res = jax.device_get(fn(batch, keys[idx]))
        keep = min(bs, num - start)
        chunks.append({k: np.asarray(v)[:keep] for k, v in res.items()})
    cols = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    families = _family_names(scenarios, infos)
    rows = []
    for i in range(num):
        row = {k: float(cols[k][i]) for k in cols}
        row["scenario_id"] = (infos[i].get("scenario_id") if infos else None) or str(i)
        row["family"] = families[i]
        rows.append(row)
    per_family = {f: aggregate([r for r in rows if r["family"] == f]) for f in sorted(set(families))}
    label = name or (policy if isinstance(policy, str) else "policy")
    if perturbation is not None:
        label += f" [{perturbation.name}]"
    return EvalReport(name=label, per_scenario=rows, aggregate=aggregate(rows), per_family=per_family)


def _family_names(scenarios: Scenario, infos: Sequence[dict] | None) -> list[str]:
    """A family label per scenario: the info's family, else the procedural family id, else the format."""
    fam = np.asarray(scenarios.family).reshape(-1)
    try:
        from jaxloop.data.procedural import FAMILY_NAMES
    except ImportError:
        FAMILY_NAMES = ()
    names = []
    for i, f in enumerate(fam):
        info = infos[i] if infos is not None else {}
        if info.get("family"):
            names.append(str(info["family"]))
        elif 0 <= f < len(FAMILY_NAMES):
            names.append(FAMILY_NAMES[f])
        else:
            names.append(str(info.get("format", "real" if f < 0 else f"family_{f}")))
    return names
