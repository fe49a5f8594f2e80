"""Likelihood of the logged behaviour under a set of rollouts, and the WOSAC-style realism meta-metric.

Estimators, bins, smoothing and weights follow the 2025 configuration of the Waymo Open
Sim Agents Challenge (the published `challenge_2025_sim_agents_config`; Montali et al.,
arXiv:2305.12032). This is a re-implementation from those definitions: WOSAC-style, not
the official number.

Per feature, per evaluated object (`FEATURES` below):

- histogram features: every valid simulated value of the object over all rollouts and
  future steps (independent time steps) is clipped to [min, max] and counted in
  `num_bins` equal bins; each bin gets an additive pseudocount of 0.1 and the counts are
  normalised to probabilities; each valid logged value of the object (clipped the same
  way) scores the log-probability of its bin;
- Bernoulli features (collision, offroad, traffic-light violation): the object's
  indicator "ever over the future" in each rollout gives p = (k + 0.001) / (R + 0.002),
  the logged indicator scores log p or log (1 - p) (a 2-bin histogram, pseudocount 0.001).
  As in WOSAC, a rollout's indicator counts only the steps at which the log has the object
  valid: an agent model may keep an object the log loses (a policy drives on, constant
  velocity coasts), and what it does after the log ends is not scored.

Aggregation (as WOSAC): a histogram feature's likelihood in a scene is
exp(mean of the log-probabilities over every valid (object, step) of the log); a
Bernoulli feature's is exp(mean over the evaluated objects). Per-object likelihoods are
exp(mean over that object's valid steps). The scene's meta-metric is the weighted sum of
its ten feature likelihoods (weights sum to 1); the category scores are the weighted
means within kinematic / interactive / map-based. A set's numbers are the means over its
scenes (a feature with no valid logged value in a scene is left out of that scene's mean
and its weight is renormalised away).

| feature | estimator | range | bins | pseudocount | weight |
|---|---|---|---|---|---|
| linear_speed | histogram | [0, 25] m/s | 10 | 0.1 | 0.05 |
| linear_acceleration | histogram | [-12, 12] m/s² | 11 | 0.1 | 0.05 |
| angular_speed | histogram | [-0.628, 0.628] rad/s | 11 | 0.1 | 0.05 |
| angular_acceleration | histogram | [-3.14, 3.14] rad/s² | 11 | 0.1 | 0.05 |
| distance_to_nearest_object | histogram | [-5, 40] m | 10 | 0.1 | 0.10 |
| collision | Bernoulli | | | 0.001 | 0.25 |
| time_to_collision | histogram | [0, 5] s | 10 | 0.1 | 0.10 |
| distance_to_road_edge | histogram | [-20, 40] m | 10 | 0.1 | 0.05 |
| offroad | Bernoulli | | | 0.001 | 0.25 |
| traffic_light_violation | Bernoulli | | | 0.001 | 0.05 |
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxloop.realism.features import Features


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    name: str
    category: str  # kinematic | interactive | map_based
    weight: float
    bernoulli: bool = False
    min_val: float = 0.0
    max_val: float = 1.0
    num_bins: int = 2
    pseudocount: float = 0.1
    validity: str = "valid"  # which Features mask scores it: valid | speed_valid | accel_valid


FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec("linear_speed", "kinematic", 0.05, min_val=0.0, max_val=25.0, num_bins=10, validity="speed_valid"),
    FeatureSpec("linear_acceleration", "kinematic", 0.05, min_val=-12.0, max_val=12.0, num_bins=11,
                validity="accel_valid"),
    FeatureSpec("angular_speed", "kinematic", 0.05, min_val=-0.628, max_val=0.628, num_bins=11,
                validity="speed_valid"),
    FeatureSpec("angular_acceleration", "kinematic", 0.05, min_val=-3.14, max_val=3.14, num_bins=11,
                validity="accel_valid"),
    FeatureSpec("distance_to_nearest_object", "interactive", 0.10, min_val=-5.0, max_val=40.0, num_bins=10),
    FeatureSpec("collision", "interactive", 0.25, bernoulli=True, pseudocount=0.001),
    FeatureSpec("time_to_collision", "interactive", 0.10, min_val=0.0, max_val=5.0, num_bins=10),
    FeatureSpec("distance_to_road_edge", "map_based", 0.05, min_val=-20.0, max_val=40.0, num_bins=10),
    FeatureSpec("offroad", "map_based", 0.25, bernoulli=True, pseudocount=0.001),
    FeatureSpec("traffic_light_violation", "map_based", 0.05, bernoulli=True, pseudocount=0.001),
)
CATEGORIES = ("kinematic", "interactive", "map_based")
BY_NAME = {f.name: f for f in FEATURES}


def histogram_log_prob(log_values: jax.Array, log_valid: jax.Array, sim_values: jax.Array, sim_valid: jax.Array,
                       spec: FeatureSpec) -> jax.Array:
    """Log-probability `[E, H]` of each logged value `[E, H]` under the histogram of the object's simulated
    values `[R, E, H]` pooled over rollouts and steps (invalid simulated values are not counted).

    Logged values where `log_valid` is False get 0 (the caller masks them).
    """
    width = (spec.max_val - spec.min_val) / spec.num_bins

    def bins(v):
        v = jnp.clip(v, spec.min_val, spec.max_val)
        return jnp.clip(jnp.floor((v - spec.min_val) / width).astype(jnp.int32), 0, spec.num_bins - 1)

    onehot = jax.nn.one_hot(bins(sim_values), spec.num_bins) * sim_valid[..., None]  # [R, E, H, K]
    counts = jnp.sum(onehot, axis=(0, 2)) + spec.pseudocount  # [E, K]
    log_probs = jnp.log(counts / jnp.sum(counts, -1, keepdims=True))
    out = jnp.take_along_axis(log_probs, bins(log_values), -1)  # [E, H]
    return jnp.where(log_valid, out, 0.0)


def bernoulli_log_prob(log_event: jax.Array, sim_event: jax.Array, spec: FeatureSpec) -> jax.Array:
    """Log-probability `[E]` of the logged indicator `[E]` under the rollouts' frequency `[R, E]`."""
    k = jnp.sum(sim_event.astype(jnp.float32), 0)
    num = sim_event.shape[0]
    p = (k + spec.pseudocount) / (num + 2 * spec.pseudocount)
    return jnp.where(log_event, jnp.log(p), jnp.log1p(-p))


def _mask(features: Features, spec: FeatureSpec) -> jax.Array:
    return getattr(features, spec.validity)


def scene_log_likelihoods(log: Features, sim: Features) -> dict[str, dict[str, jax.Array]]:
    """Per feature: `sum` (sum of the log-probabilities over valid entries), `count` (their number) and
    `per_object` `[E]` (mean log-probability per evaluated object; NaN where it has no valid entry).

    `log` holds `[E, H]` arrays, `sim` `[R, E, H]` (a `Features` batched over rollouts).
    """
    out = {}
    obj_valid = jnp.any(log.valid, -1)  # [E]
    for spec in FEATURES:
        if spec.bernoulli:
            # Simulated events count only at the steps where the log has the object (WOSAC: a rollout keeps
            # an object the log has lost, and what it does there is not scored).
            ever = lambda f, v: jnp.any(getattr(f, spec.name) & v, -1)
            lp = bernoulli_log_prob(ever(log, log.valid), ever(sim, sim.valid & log.valid[None]), spec)  # [E]
            lp = jnp.where(obj_valid, lp, 0.0)
            count = obj_valid.astype(jnp.float32)
            out[spec.name] = dict(sum=jnp.sum(lp), count=jnp.sum(count),
                                  per_object=jnp.where(obj_valid, lp, jnp.nan))
        else:
            lv = _mask(log, spec)
            lp = histogram_log_prob(getattr(log, spec.name), lv, getattr(sim, spec.name), _mask(sim, spec), spec)
            n = jnp.sum(lv, -1).astype(jnp.float32)
            out[spec.name] = dict(sum=jnp.sum(lp), count=jnp.sum(n),
                                  per_object=jnp.where(n > 0, jnp.sum(lp, -1) / jnp.maximum(n, 1.0), jnp.nan))
    return out


def scene_scores(lls: dict[str, dict]) -> dict[str, float]:
    """A scene's likelihood per feature, category scores and meta-metric from `scene_log_likelihoods` (host)."""
    import math
    lik = {}
    for spec in FEATURES:
        c = float(lls[spec.name]["count"])
        lik[spec.name] = math.exp(float(lls[spec.name]["sum"]) / c) if c > 0 else float("nan")
    return {**lik, **combine(lik)}


def combine(likelihoods: dict[str, float]) -> dict[str, float]:
    """Category scores and the meta-metric from per-feature likelihoods (NaN features are left out)."""
    import math
    out = {}
    total_w, total = 0.0, 0.0
    for cat in CATEGORIES:
        w = [(f.weight, likelihoods[f.name]) for f in FEATURES if f.category == cat
             and not math.isnan(likelihoods[f.name])]
        sw = sum(a for a, _ in w)
        out[cat] = sum(a * b for a, b in w) / sw if sw > 0 else float("nan")
        total_w += sw
        total += sum(a * b for a, b in w)
    out["realism_meta_metric"] = total / total_w if total_w > 0 else float("nan")
    return out


def min_ade(sim_xy: jax.Array, sim_valid: jax.Array, log_xy: jax.Array, log_valid: jax.Array,
            obj_valid: jax.Array) -> jax.Array:
    """minADE `[]`: the smallest over rollouts of the displacement error averaged over valid steps and then
    over the evaluated objects (`sim_xy` `[R, E, H, 2]`, `log_xy` `[E, H, 2]`, `obj_valid` `[E]`), metres."""
    both = sim_valid & log_valid[None]
    err = jnp.linalg.norm(sim_xy - log_xy[None], axis=-1)
    n = jnp.sum(both, -1)
    ade = jnp.sum(jnp.where(both, err, 0.0), -1) / jnp.maximum(n, 1)  # [R, E]
    use = obj_valid[None] & (n > 0)
    scene = jnp.sum(jnp.where(use, ade, 0.0), -1) / jnp.maximum(jnp.sum(use, -1), 1)
    return jnp.min(scene)
