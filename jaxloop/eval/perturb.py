"""The perturbation suite: how a policy holds up away from its training distribution.

Each perturbation is a `jaxloop.sim.perturb.Perturbation`: pure hooks on the scenario,
the initial state, the agent models or the policy's inputs, applied inside the jitted,
vmapped evaluation. `run_suite` evaluates a policy clean and under each perturbation of
`jaxloop.sim.perturb.default_suite` and reports metric deltas against the clean run:

- `ego_noise`: the ego's initial pose and speed get Gaussian noise.
- `agents_idm` / `agents_log`: every non-ego object switches to IDM (reactive) / log replay.
- `speed_scale`: the other agents replay their logs faster or slower (time-warped).
- `inject_crossing`: a pedestrian or cyclist crosses the ego's logged path ahead of it.
- `lane_geometry`: the whole scene (map and logs together) is widened laterally and bent
  into a curve around the ego's start, changing lane width and curvature.
- `observation_noise`: the policy sees other objects' positions with Gaussian noise.
- `action_latency`: the policy acts on the state as it was `steps` steps ago.

The deltas cover every aggregate of the metric registry (`EvalConfig.registry`); the
Markdown table shows its summary columns (`Registry.summary_names`).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from jaxloop.eval.evaluate import EvalConfig, EvalReport, evaluate
from jaxloop.sim.datatypes import Scenario
from jaxloop.sim.metrics import DEFAULT, Registry
from jaxloop.sim.perturb import Perturbation, default_suite

# The Markdown columns of the default registry.
DELTA_KEYS = DEFAULT.summary_names


@dataclasses.dataclass
class SuiteReport:
    """A policy's clean report and one per perturbation, over the metrics of `registry`."""

    clean: EvalReport
    perturbed: dict[str, EvalReport]
    registry: Registry = dataclasses.field(default=DEFAULT, repr=False, compare=False)

    @property
    def delta_keys(self) -> tuple[str, ...]:
        """Every aggregate of the registry (that the clean report has)."""
        return tuple(k for k in self.registry.aggregate_names if k in self.clean.aggregate)

    def deltas(self) -> dict[str, dict[str, float]]:
        """Perturbed minus clean, per perturbation and aggregate (NaN where a perturbed report lacks one)."""
        base = self.clean.aggregate
        return {name: {k: rep.aggregate.get(k, float("nan")) - base[k] for k in self.delta_keys}
                for name, rep in self.perturbed.items()}

    def mean_perturbed(self) -> dict[str, float]:
        """Each metric averaged over the perturbations (the "perturbed" row of a report)."""
        return {k: float(np.mean([r.aggregate.get(k, float("nan")) for r in self.perturbed.values()]))
                for k in self.delta_keys}

    def to_dict(self) -> dict:
        return {"clean": self.clean.aggregate, "perturbed": {k: v.aggregate for k, v in self.perturbed.items()},
                "deltas": self.deltas(), "mean_perturbed": self.mean_perturbed(),
                "better": {k: v for k, v in self.registry.directions().items() if k in self.delta_keys}}

    def to_markdown(self) -> str:
        cols = [k for k in self.registry.summary_names if k in self.delta_keys]
        lines = [f"### Perturbations: {self.clean.name}", "",
                 "| perturbation | " + " | ".join(f"Δ {k}" for k in cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for name, d in self.deltas().items():
            lines.append(f"| {name} | " + " | ".join(f"{d[k]:+.3f}" for k in cols) + " |")
        return "\n".join(lines) + "\n"


def run_suite(policy, scenarios: Scenario, infos=None, config: EvalConfig = EvalConfig(), seed: int = 0,
              perturbations: Sequence[Perturbation] | None = None, name: str | None = None,
              clean: EvalReport | None = None) -> SuiteReport:
    """Evaluates clean (unless given) and under each perturbation."""
    perturbations = default_suite(config.env.init_steps) if perturbations is None else perturbations
    clean = clean or evaluate(policy, scenarios, infos, config, seed, name=name)
    perturbed = {p.name: evaluate(policy, scenarios, infos, config, seed, perturbation=p, name=name)
                 for p in perturbations}
    return SuiteReport(clean=clean, perturbed=perturbed, registry=config.registry)
