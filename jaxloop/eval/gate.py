"""The safety gate: may a candidate policy replace a baseline?

A candidate passes when, on held-out scenarios and under every perturbation of the
suite, its failure rate is not worse than the baseline's by more than a tolerance, and
it meets absolute thresholds (failure, collision, offroad and red-light rates; progress
ratio). Every check that fails is a reason in the report; the CLI exits 1 on failure.

The checks come from the metric registry (`jaxloop.sim.metrics.registry`): each entry with
a `GateSpec` is checked for non-regression against the baseline (in its direction, within
its tolerance) and against its absolute limits, clean and (where its spec says) under every
perturbation; thresholds that name a `GateConfig` field read it from the gate config.

A candidate with any non-finite episode (its simulated ego state became NaN / inf, see
`jaxloop.eval.evaluate`), clean or under any perturbation, FAILS whatever its rates, with
a reason naming the scenarios; so does a comparison against a baseline with non-finite
episodes, which would otherwise make the relative checks lenient.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

from typing import Sequence

from jaxloop.config import GateConfig  # the experiment's `gate` section
from jaxloop.eval.evaluate import EvalConfig, _finite
from jaxloop.eval.perturb import SuiteReport, run_suite
from jaxloop.sim.datatypes import Scenario
from jaxloop.sim.metrics import Registry
from jaxloop.sim.perturb import Perturbation
from jaxloop.sim.rollout import PolicyFn


@dataclasses.dataclass
class GateResult:
    passed: bool
    reasons: list[str]  # one line per failed check
    checks: list[dict]  # every check: name, value, limit, ok
    traffic: str | None = None  # what drove the other objects (`--non-ego`: log, idm, policy:RUN), if known

    def to_dict(self) -> dict:
        out = {"passed": self.passed, "reasons": self.reasons, "checks": self.checks}
        return out if self.traffic is None else dict(out, traffic=self.traffic)

    def to_markdown(self, title: str = "Safety gate") -> str:
        lines = [f"## {title}: {'PASS' if self.passed else 'FAIL'}", ""]
        if self.traffic is not None:
            lines += [f"Traffic (the other objects, for both policies): {self.traffic}", ""]
        if self.reasons:
            lines += ["Reasons:", ""] + [f"- {r}" for r in self.reasons] + [""]
        lines += ["| check | value | limit | ok |", "|---|---|---|---|"]
        for c in self.checks:
            lines.append(f"| {c['name']} | {c['value']:.3f} | {c['limit']:.3f} | {'yes' if c['ok'] else 'NO'} |")
        return "\n".join(lines) + "\n"

    def write(self, path: str | pathlib.Path, title: str = "Safety gate") -> None:
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_finite(self.to_dict()), indent=1))  # NaN is not JSON: null
        path.with_suffix(".md").write_text(self.to_markdown(title))


def check(candidate: SuiteReport, baseline: SuiteReport, config: GateConfig = GateConfig(),
          registry: Registry | None = None) -> GateResult:
    """Compares two suite reports over the same scenarios and perturbations, checking every gated entry
    of `registry` (default: the candidate's)."""
    checks: list[dict] = []
    reasons: list[str] = []

    def add(name: str, value: float, limit: float, upper: bool = True, reason: str | None = None) -> None:
        # NaN compares False both ways, so a NaN value fails either kind of check.
        ok = value <= limit + 1e-9 if upper else value >= limit - 1e-9
        checks.append({"name": name, "value": float(value), "limit": float(limit), "ok": bool(ok)})
        if not ok:
            reasons.append(reason or f"{name}: {value:.3f} {'>' if upper else '<'} limit {limit:.3f}")

    def nonfinite(label: str, rep, who: str) -> None:
        ids = rep.nonfinite_ids
        shown = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
        add(f"{label}: non-finite episodes", len(ids), 0,
            reason=f"{label}: {who} has non-finite (NaN / inf) ego states in {len(ids)} of {len(rep.per_scenario)} "
                   f"episodes ({shown}); expected none, non-finite episodes are failures")

    nonfinite("held-out", candidate.clean, "the candidate")
    for name, rep in candidate.perturbed.items():
        nonfinite(name, rep, "the candidate")
    for name, rep in [("held-out", baseline.clean), *baseline.perturbed.items()]:
        if rep.nonfinite_ids:
            reasons.append(f"{name}: the baseline has non-finite (NaN / inf) ego states in {len(rep.nonfinite_ids)} "
                           f"episodes ({', '.join(rep.nonfinite_ids[:10])}); a comparison against it is meaningless")

    registry = candidate.registry if registry is None else registry

    def compare(prefix: str, c: dict, b: dict, perturbed: bool) -> None:
        for metric in registry.gated:
            spec, key = metric.gate, metric.aggregate_name
            if perturbed and not spec.perturbed:
                continue
            lower = not metric.higher_is_better
            value = c.get(key, float("nan"))
            what = f"{prefix}{metric.gate_label}"
            missing_reason = f"{what}: not in the candidate's report" if key not in c else None
            tolerance = spec.resolve("tolerance", config)
            if tolerance is not None:
                ref = b.get(key, float("nan"))
                add(f"{what} vs baseline", value, ref + tolerance if lower else ref - tolerance, upper=lower,
                    reason=missing_reason or (f"{what} vs baseline: not in the baseline's report" if key not in b
                                              else None))
            limit = spec.resolve("perturbed_limit" if perturbed else "limit", config)
            if limit is not None:
                add(what, value, limit, upper=lower, reason=missing_reason)

    compare("held-out ", candidate.clean.aggregate, baseline.clean.aggregate, perturbed=False)
    missing = sorted(set(baseline.perturbed) - set(candidate.perturbed))
    for name, rep in candidate.perturbed.items():
        if name not in baseline.perturbed:
            continue
        compare(f"{name}: ", rep.aggregate, baseline.perturbed[name].aggregate, perturbed=True)
    reasons += [f"{name}: not evaluated for the candidate" for name in missing]
    return GateResult(passed=not reasons, reasons=reasons, checks=checks)


def gate(candidate: PolicyFn | str, baseline: PolicyFn | str, scenarios: Scenario, infos: Sequence[dict] | None = None,
         config: EvalConfig = EvalConfig(), gate_config: GateConfig = GateConfig(), seed: int = 0,
         baseline_config: EvalConfig | None = None, perturbations: Sequence[Perturbation] | None = None) -> GateResult:
    """Runs the perturbation suite for both policies on the same held-out scenarios `[S, ...]` and `check`s.

    A policy is a `PolicyFn` (e.g. from `jaxloop.io.policies.load_policy`) or a baseline name;
    `config` is the candidate's evaluation config, `baseline_config` the baseline's (default:
    the same), so a trained policy can run in the env of its own training config.
    `perturbations` default to `jaxloop.sim.perturb.default_suite`.
    """
    suites = [run_suite(policy, scenarios, infos, cfg, seed, perturbations=perturbations)
              for policy, cfg in ((candidate, config), (baseline, baseline_config or config))]
    return check(suites[0], suites[1], gate_config)
