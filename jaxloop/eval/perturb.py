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
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from jaxloop.eval.evaluate import EvalConfig, EvalReport, evaluate
from jaxloop.sim.datatypes import Scenario
from jaxloop.sim.perturb import Perturbation, default_suite

DELTA_KEYS = ("failure_rate", "collision_rate", "offroad_rate", "raw_failure_rate", "red_light_rate",
              "nonfinite_rate", "progress_ratio",
              "score")


@dataclasses.dataclass
class SuiteReport:
    clean: EvalReport
    perturbed: dict[str, EvalReport]

    def deltas(self) -> dict[str, dict[str, float]]:
        base = self.clean.aggregate
        return {name: {k: rep.aggregate[k] - base[k] for k in DELTA_KEYS} for name, rep in self.perturbed.items()}

    def mean_perturbed(self) -> dict[str, float]:
        """Each metric averaged over the perturbations (the "perturbed" row of a report)."""
        return {k: float(np.mean([r.aggregate[k] for r in self.perturbed.values()])) for k in DELTA_KEYS}

    def to_dict(self) -> dict:
        return {"clean": self.clean.aggregate, "perturbed": {k: v.aggregate for k, v in self.perturbed.items()},
                "deltas": self.deltas(), "mean_perturbed": self.mean_perturbed()}

    def to_markdown(self) -> str:
        lines = [f"### Perturbations: {self.clean.name}", "",
                 "| perturbation | " + " | ".join(f"Δ {k}" for k in DELTA_KEYS) + " |", "|---" * (len(DELTA_KEYS) + 1) + "|"]
        for name, d in self.deltas().items():
            lines.append(f"| {name} | " + " | ".join(f"{d[k]:+.3f}" for k in DELTA_KEYS) + " |")
        return "\n".join(lines) + "\n"


def run_suite(policy, scenarios: Scenario, infos=None, config: EvalConfig = EvalConfig(), seed: int = 0,
              perturbations: Sequence[Perturbation] | None = None, name: str | None = None,
              clean: EvalReport | None = None) -> SuiteReport:
    """Evaluates clean (unless given) and under each perturbation."""
    perturbations = default_suite(config.env.init_steps) if perturbations is None else perturbations
    clean = clean or evaluate(policy, scenarios, infos, config, seed, name=name)
    perturbed = {p.name: evaluate(policy, scenarios, infos, config, seed, perturbation=p, name=name)
                 for p in perturbations}
    return SuiteReport(clean=clean, perturbed=perturbed)
