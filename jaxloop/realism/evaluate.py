"""WOSAC-style realism of traffic models: many stochastic rollouts per scene, scored against the log.

    report = realism(scenarios, infos, RealismConfig(agents="idm", rollouts=32))
    print(report.to_markdown())

Per scene, `rollouts` closed-loop rollouts of the future (80 steps of a WOMD scene, after
the 11 logged initial steps) are simulated with every object valid at the current step
driven by the chosen traffic model; the features of `jaxloop.realism.features` are
computed for the evaluated objects of the log and of every rollout, and
`jaxloop.realism.likelihood` scores the log under the rollouts' distribution (WOSAC's
histogram and Bernoulli estimators, the 2025 weights). WOSAC-style: not the official
challenge number (see those modules for the definitions and where they come from).

Traffic models (`RealismConfig.agents`):
- `log`: log replay (a degenerate distribution: every rollout is the log);
- `constant_velocity`: every object keeps its current velocity (deterministic);
- `idm`: the intelligent driver model along each object's logged path, with its
  parameters sampled per rollout and object around `AgentParams` (`IdmSpread`:
  log-normal factors on desired speed, time headway, minimum gap, acceleration and
  comfortable deceleration), so the rollouts differ;
- `policy:RUN`: a trained policy (training run / checkpoint or `jaxloop export`
  directory). An ego-only policy sees the world through the per-object ego-centric
  observation, so it drives the SDC and the `policy_objects - 1` vehicles nearest to it
  that have somewhere to go (start farther than GOAL_RADIUS from their goal, self-play's
  controllable rule), each seeing what the training and evaluation actors show it
  (`policy_view`): a vehicle that is not the ego its own logged path as its route
  (`io.policies.agent_features`, as self-play trains), the ego the route it was trained
  on (`io.policies.ego_features`: its own logged path for a self-play run, the
  scenario's route for an ego-only run); parked vehicles, pedestrians, cyclists and farther vehicles are
  sampled IDM (which holds a parked car still along its short logged path). A checkpoint's actions are
  sampled from its tanh-Gaussian head; an exported policy is deterministic, so Gaussian
  noise of `policy_noise` (normalised action units) is added to its actions. A policy that
  observes a target speed (`ObsConfig.target_speed`) sees it times a factor
  exp(`policy_target_spread` x N(0, 1)) drawn per rollout and slot: a driver style sampled
  per rollout, as IDM samples its desired speed (the same spread by default);
- `log_resampled`: the reference row, no simulator: each rollout replays the log at a
  time scale drawn from N(1, 0.05²) per object with a lateral offset drawn from
  N(0, (0.2 m)²) that ramps in over 2 s: near-human variation around the log, to read the
  scale of the scores against (the log scored against itself is not meaningful).

Everything runs in one jitted function, vmapped over the rollouts of a scene and over a
chunk of scenes; keys are `fold_in(seed, scene index)`, so results do not depend on the
chunking and repeat exactly for a seed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxloop.realism import features as feats
from jaxloop.realism import likelihood as lk
from jaxloop.io.logging import finite_or_none as _finite
from jaxloop.sim import agents as agents_lib
from jaxloop.sim.compute import compiler_options
from jaxloop.sim.datatypes import Scenario, SimState, trajectory_at
from jaxloop.sim.env import Env, EnvConfig, controlled_mask
from jaxloop.sim.rollout import rollout

AGENT_MODELS = ("log", "constant_velocity", "idm", "log_resampled")
_KIND = {"log": agents_lib.AGENT_LOG, "constant_velocity": agents_lib.AGENT_CONSTANT_VELOCITY,
         "idm": agents_lib.AGENT_IDM}


@dataclasses.dataclass(frozen=True)
class IdmSpread:
    """Log-normal sampling of IDM parameters per rollout and object: each parameter of `AgentParams` is
    multiplied by exp(sigma * N(0, 1)). Zero spread gives the deterministic IDM."""

    desired_speed: float = 0.1
    time_headway: float = 0.3
    min_gap: float = 0.3
    max_accel: float = 0.3
    comfort_decel: float = 0.2


@dataclasses.dataclass(frozen=True)
class RealismConfig:
    """Static settings of a realism evaluation.

    agents: a traffic model of `AGENT_MODELS` or `policy:RUN`.
    rollouts: rollouts per scene (WOSAC: 32).
    horizon: future steps (None: to the end of the log, 80 for WOMD).
    init_steps: logged steps that initialise a rollout (WOMD: 11; current step 10).
    batch_size: scenes per compiled call.
    max_evaluated: evaluated-object slots per scene (`features.evaluated_objects`).
    policy_objects: objects a policy drives (the SDC and the nearest vehicles).
    policy_noise: std of the Gaussian added to a deterministic (exported) policy's normalised action.
    policy_skip_reversing: leave the vehicles the log moves backward to the sampled IDM (`policy_slots`).
    policy_head: a checkpoint samples its tanh-Gaussian head (False: its mode + `policy_noise`, as an export).
    policy_target_spread: a policy that observes a target speed (`ObsConfig.target_speed`) sees it times
        exp(spread x N(0, 1)), drawn per rollout and slot: a driver-style latent sampled as IDM samples its
        desired speed (default: the IDM agents' spread, `IdmSpread.desired_speed`; 0: the log's largest speed
        in every rollout). Policies without a target speed are unaffected.
    policy_parked: let the policy drive parked vehicles too (default False: only the SDC and vehicles that
        start farther than GOAL_RADIUS from their goal, self-play's rule; parked ones are sampled IDM).
    idm_params / idm_spread: the IDM parameters and their sampling.
    time_scale_std / lateral_std: the `log_resampled` reference's perturbations.
    """

    agents: str = "idm"
    rollouts: int = 32
    horizon: int | None = None
    init_steps: int = 11
    batch_size: int = 2
    max_evaluated: int = feats.DEFAULT_MAX_EVALUATED
    policy_objects: int = 16
    policy_noise: float = 0.03  # chosen on the 12 real training scenes (0.03 vs 0.1) for the self-play policies
    policy_parked: bool = False
    policy_skip_reversing: bool = False
    policy_head: bool = True
    policy_target_spread: float = IdmSpread.desired_speed
    idm_params: agents_lib.AgentParams = agents_lib.AgentParams()
    idm_spread: IdmSpread = IdmSpread()
    time_scale_std: float = 0.05
    lateral_std: float = 0.2
    seed: int = 0

    def __post_init__(self):
        if self.agents not in AGENT_MODELS and not self.agents.startswith("policy:"):
            raise ValueError(f"RealismConfig.agents must be one of {AGENT_MODELS} or 'policy:RUN', got {self.agents!r}")
        if self.agents.startswith("policy:") and not self.agents[len("policy:"):]:
            raise ValueError("RealismConfig.agents 'policy:RUN' needs a run, checkpoint or exported policy directory")
        if not (math.isfinite(self.policy_target_spread) and self.policy_target_spread >= 0):
            raise ValueError(f"RealismConfig.policy_target_spread must be a finite number >= 0, "
                             f"got {self.policy_target_spread}")
        for name in ("rollouts", "batch_size", "max_evaluated", "policy_objects", "init_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"RealismConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.horizon is not None and self.horizon < 2:
            raise ValueError(f"RealismConfig.horizon must be None or >= 2 steps, got {self.horizon}")


def sample_idm_params(key: jax.Array, base: agents_lib.AgentParams, spread: IdmSpread,
                      num_objects: int) -> agents_lib.AgentParams:
    """`AgentParams` with per-object `[N]` IDM parameters: `base` times log-normal factors (see `IdmSpread`)."""
    keys = jax.random.split(key, 5)
    factor = lambda k, s: jnp.exp(s * jax.random.normal(k, (num_objects,)))
    return base.replace(
        idm_desired_speed_scale=base.idm_desired_speed_scale * factor(keys[0], spread.desired_speed),
        idm_time_headway=base.idm_time_headway * factor(keys[1], spread.time_headway),
        idm_min_gap=base.idm_min_gap * factor(keys[2], spread.min_gap),
        idm_max_accel=base.idm_max_accel * factor(keys[3], spread.max_accel),
        idm_comfort_decel=base.idm_comfort_decel * factor(keys[4], spread.comfort_decel))


# ----------------------------------------------------------------------------- host-side scene preparation


REVERSE_SPEED = 1.0  # m/s of backward displacement (along the heading) between consecutive valid logged steps
REVERSE_STEPS = 10  # consecutive such steps (1 s)


def reverses(scenario: Scenario) -> np.ndarray:
    """`[N]` bool (host numpy): the log moves the object backward (against its heading, faster than
    REVERSE_SPEED) for REVERSE_STEPS consecutive steps somewhere: reversing, or a heading label opposite to the
    motion. Either way a forward-only bicycle cannot follow its path."""
    log = scenario.log_trajectory
    x, y, yaw, valid = (np.asarray(a) for a in (log.x, log.y, log.yaw, log.valid))
    along = np.diff(x, axis=-1) * np.cos(yaw[..., :-1]) + np.diff(y, axis=-1) * np.sin(yaw[..., :-1])
    back = (valid[..., 1:] & valid[..., :-1] & (along < -REVERSE_SPEED * feats.DT)).astype(np.int32)
    run = np.zeros(back.shape[:-1], np.int32)
    best = np.zeros_like(run)
    for t in range(back.shape[-1]):
        run = (run + 1) * back[..., t]
        best = np.maximum(best, run)
    return best >= REVERSE_STEPS


def policy_slots(scenario: Scenario, init_steps: int, num: int, control_parked: bool = False,
                 skip_reversing: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Unique object indices `[M]` (M = min(num, N)) and which of them the policy drives `[M]` (host numpy):
    the SDC first, then the vehicles valid at the current step nearest to it that have somewhere to go; the rest
    pad with other objects (not driven).

    "Somewhere to go" is self-play's controllable rule (`jaxloop.sim.env.controlled_mask`, GPUDrive's):
    the object's position at the current step is farther than GOAL_RADIUS from its last logged position. A
    parked vehicle is left to the sampled IDM, which along its (sub-GOAL_RADIUS) logged path holds it
    (nearly) still, as the log does; a noisy policy would make it drift. `control_parked` restores the
    nearest-vehicles-regardless rule. `skip_reversing` also leaves to the sampled IDM (which moves an object along
    its logged path) the vehicles the log moves backward for a second (`reverses`), which the policy's
    forward-only bicycle cannot follow: on the 18 real scenes 1 of the 142 vehicles the policy drives (off by
    default: it hands a policy row's hardest vehicles to IDM).
    """
    meta, log = scenario.object_metadata, scenario.log_trajectory
    t0 = init_steps - 1
    n = int(np.shape(log.x)[0])
    m = min(num, n)
    sdc = int(np.argmax(np.asarray(meta.is_sdc)))
    valid0 = np.asarray(log.valid)[:, t0]
    x, y = np.asarray(log.x)[:, t0], np.asarray(log.y)[:, t0]
    sc = jax.tree.map(jnp.asarray, scenario)  # self-play's own rule: the objects it controls
    vehicle = valid0 & np.asarray(controlled_mask(sc, "vehicles", trajectory_at(sc.log_trajectory, t0),
                                                  control_parked))
    vehicle[sdc] = False
    dist = np.where(vehicle, np.hypot(x - x[sdc], y - y[sdc]), np.inf)
    order = [int(i) for i in np.argsort(dist, kind="stable") if np.isfinite(dist[i])]
    chosen = [sdc] + order[:m - 1]
    rest = [i for i in range(n) if i not in chosen]
    slots = np.array(chosen + rest[:m - len(chosen)], np.int32)
    driven = np.zeros((m,), bool)
    driven[:len(chosen)] = valid0[chosen]
    if skip_reversing:
        driven &= ~reverses(scenario)[slots]
    return slots, driven


def policy_view(scenario: Scenario, state: SimState, slots: jax.Array, obs_config, own_path: bool):
    """Features `[M, ...]` of the policy-driven slots `[M]` (`policy_slots`: slot 0 is the SDC), as in training.

    The training and evaluation actors' own functions (`jaxloop.io.policies`): every
    vehicle that is not the ego sees its own logged path as its route (`agent_features`,
    what self-play trains on and `jaxloop eval --non-ego policy:RUN` drives with); the ego
    sees `ego_features`: its own logged path for a self-play run (`own_path`,
    `trained_on_own_path`), the scenario's route for an ego-only run, as each was trained.
    """
    from jaxloop.io.policies import agent_features, ego_features
    if own_path:
        return agent_features(scenario, state, slots, obs_config)
    ego = ego_features(scenario, state, obs_config, own_path=False)
    if slots.shape[0] == 1:
        return jax.tree.map(lambda a: a[None], ego)
    others = agent_features(scenario, state, slots[1:], obs_config)
    return jax.tree.map(lambda e, o: jnp.concatenate([e[None], o], 0), ego, others)


def prepare(scenarios: Scenario, config: RealismConfig, with_policy: bool = False) -> dict[str, Any]:
    """Per-scene host inputs `[S, ...]`: evaluated objects, and (for a policy) its slots."""
    num = int(np.shape(scenarios.log_trajectory.x)[0])
    one = lambda i: jax.tree.map(lambda a: np.asarray(a)[i], scenarios)
    index, index_valid, slots, driven = [], [], [], []
    for i in range(num):
        sc = one(i)
        a, b = feats.evaluated_objects(sc, config.init_steps, config.max_evaluated)
        index.append(a)
        index_valid.append(b)
        if with_policy:
            s, d = policy_slots(sc, config.init_steps, config.policy_objects, config.policy_parked,
                                config.policy_skip_reversing)
            slots.append(s)
            driven.append(d)
    out = {"index": np.stack(index), "index_valid": np.stack(index_valid)}
    if with_policy:
        out["slots"] = np.stack(slots)
        out["driven"] = np.stack(driven)
    return out


# ----------------------------------------------------------------------------- rollout sets


def _in_scene(scenario: Scenario, init_steps: int) -> jax.Array:
    return scenario.log_trajectory.valid[:, init_steps - 1]


def _only_in_scene(scenario: Scenario, init_steps: int) -> Scenario:
    """The scene without the objects not valid at the current step (WOSAC does not simulate them)."""
    keep = _in_scene(scenario, init_steps)
    log = scenario.log_trajectory
    return scenario.replace(log_trajectory=log.replace(valid=log.valid & keep[:, None]))


def _future_poses(states) -> feats.Poses:
    """`Poses` `[N, H]` of rollout states `[H, N]`."""
    tr = lambda a: jnp.swapaxes(a, 0, 1)
    return feats.Poses(x=tr(states.x), y=tr(states.y), yaw=tr(states.yaw), valid=tr(states.valid))


def baseline_rollout_fn(agents: str, config: RealismConfig, horizon: int) -> Callable:
    """`one(scenario, aux, key) -> Poses [N, H]`: one rollout of a scene under a built-in traffic model."""
    env = Env(EnvConfig(init_steps=config.init_steps, controlled="sdc", non_ego_agent="log"))
    kind_id = _KIND[agents]
    with_idm = agents == "idm"
    zero = jnp.zeros((env.config.action_dim,))

    def one(scenario, aux, key):
        del aux
        key_reset, key_params = jax.random.split(key)
        n = scenario.num_objects
        kind = jnp.full((n,), kind_id, jnp.int32)
        state = env.reset(scenario, key_reset, agent_kind=kind, with_idm=with_idm)
        params = sample_idm_params(key_params, config.idm_params, config.idm_spread, n) if with_idm else None
        _, out = rollout(env, scenario, state, lambda sc, st, k: zero, horizon, params=params)
        return _future_poses(out.states)

    return one


def policy_rollout_fn(path: str, config: RealismConfig, horizon: int) -> tuple[Callable, str]:
    """`one(scenario, aux, key) -> Poses [N, H]` with a trained policy driving `aux["slots"]` (see the module
    docstring), and a description of how it drives."""
    from jaxloop.policy import networks
    from jaxloop.policy.observation import flatten, scale_target_speed
    from jaxloop.io.policies import load_policy, trained_on_own_path

    _, train_config = load_policy(path)
    own_path = trained_on_own_path(train_config)
    obs_config = train_config.obs
    sample_target = config.policy_target_spread > 0 and obs_config.target_speed
    env_config = dataclasses.replace(train_config.env_config(), init_steps=config.init_steps, controlled="sdc",
                                     non_ego_agent="log", grad_through_agents=False)
    env = Env(env_config)
    exported = os.path.isfile(os.path.join(path, "metadata.json"))
    if exported:
        from jaxloop.io.export import load_policy as load_exported
        from jaxloop.io.policies import batch_polymorphic_call
        loaded = load_exported(path)
        call = batch_polymorphic_call(lambda flat: loaded.exported.call(loaded.params, flat)[0])

        def act(feat, key):
            a = call(flatten(feat))
            return jnp.clip(a + config.policy_noise * jax.random.normal(key, a.shape), -1.0, 1.0)
        how = f"deterministic exported policy + N(0, {config.policy_noise}²) action noise"
    else:
        from flax import nnx
        from jaxloop.io.policies import load_params
        graphdef, params, _ = load_params(path)

        if config.policy_head:
            def act(feat, key):
                return networks.sample(nnx.merge(graphdef, params)(feat), key)[0]
            how = "actions sampled from the checkpoint's tanh-Gaussian head"
        else:
            def act(feat, key):
                a = networks.mode(nnx.merge(graphdef, params)(feat))
                return jnp.clip(a + config.policy_noise * jax.random.normal(key, a.shape), -1.0, 1.0)
            how = f"the checkpoint's mode + N(0, {config.policy_noise}²) action noise"
    how += (f"; drives the SDC and up to {config.policy_objects - 1} nearest vehicles (per-object ego-centric "
            "observation, own logged path as route" + ("" if own_path else ", the SDC the scenario's route")
            + ("" if config.policy_parked else "; parked vehicles excluded")
            + ("; vehicles the log moves backward excluded" if config.policy_skip_reversing else "")
            + (f"; target speed times exp({config.policy_target_spread} N(0, 1)) per rollout"
               if sample_target else "")
            + "), the other objects sampled IDM")

    def one(scenario, aux, key):
        key_reset, key_params = jax.random.split(key)
        n = scenario.num_objects
        slots, driven = aux["slots"], aux["driven"]
        kind = jnp.full((n,), agents_lib.AGENT_IDM, jnp.int32)
        kind = kind.at[slots].set(jnp.where(driven, agents_lib.AGENT_POLICY, agents_lib.AGENT_IDM))
        state = env.reset(scenario, key_reset, agent_kind=kind, with_idm=True)
        state = state.replace(controlled=slots)
        params = sample_idm_params(key_params, config.idm_params, config.idm_spread, n)
        if sample_target:  # [M] driver styles
            style = jnp.exp(config.policy_target_spread
                            * jax.random.normal(jax.random.fold_in(key_params, 1), slots.shape))

        def policy(sc, st, k):
            feats = policy_view(sc, st, st.controlled, obs_config, own_path)
            return act(scale_target_speed(feats, style, obs_config) if sample_target else feats, k)

        _, out = rollout(env, scenario, state, policy, horizon, params=params)
        return _future_poses(out.states)

    return one, how


def resampled_log_fn(config: RealismConfig, horizon: int) -> Callable:
    """`one(scenario, aux, key) -> Poses [N, H]`: the log replayed at a random time scale and lateral offset
    per object (the reference row; see the module docstring)."""
    t0 = config.init_steps - 1
    ramp_steps = 20

    def one(scenario, aux, key):
        del aux
        log = scenario.log_trajectory
        n, t_max = log.x.shape
        k1, k2 = jax.random.split(key)
        scale = jnp.clip(1.0 + config.time_scale_std * jax.random.normal(k1, (n, 1)), 0.8, 1.2)
        offset = config.lateral_std * jax.random.normal(k2, (n, 1))
        steps = jnp.arange(1, horizon + 1, dtype=jnp.float32)[None]
        tau = t0 + steps * scale  # [N, H] fractional log step
        lo = jnp.clip(jnp.floor(tau).astype(jnp.int32), 0, t_max - 1)
        hi = jnp.clip(lo + 1, 0, t_max - 1)
        w = tau - lo
        take = lambda a, i: jnp.take_along_axis(a, i, 1)
        lerp = lambda a: take(a, lo) * (1 - w) + take(a, hi) * w
        yaw0 = take(log.yaw, lo)
        yaw = yaw0 + w * (((take(log.yaw, hi) - yaw0) + jnp.pi) % (2 * jnp.pi) - jnp.pi)
        lateral = offset * jnp.minimum(steps / ramp_steps, 1.0)
        x = lerp(log.x) - lateral * jnp.sin(yaw)
        y = lerp(log.y) + lateral * jnp.cos(yaw)
        valid = take(log.valid, lo) & take(log.valid, hi) & (tau <= t_max - 1)
        return feats.Poses(x=x, y=y, yaw=yaw, valid=valid)

    return one


# ----------------------------------------------------------------------------- scoring


def make_scene_fn(one: Callable, config: RealismConfig, horizon: int) -> Callable:
    """`scene(scenario, aux, key) -> {feature: {sum, count, per_object}, "min_ade": []}` for one unbatched scene,
    with `one(scenario, aux, key) -> Poses [N, H]` drawing one rollout."""
    init = config.init_steps

    def scene(scenario, aux, key):
        scenario = _only_in_scene(scenario, init)
        in_scene = _in_scene(scenario, init)
        index, index_valid = aux["index"], aux["index_valid"]
        score = lambda poses: feats.compute_features(scenario, poses, index, index_valid, in_scene, init)
        log_f = score(feats.log_poses(scenario, init, horizon))
        keys = jax.random.split(key, config.rollouts)

        def draw(k):
            future = one(scenario, aux, k)
            f = score(feats.with_future(scenario, init, future))
            xy = jnp.stack([future.x[index], future.y[index]], -1)
            return f, xy, future.valid[index]

        sim_f, sim_xy, sim_valid = jax.vmap(draw)(keys)
        out = lk.scene_log_likelihoods(log_f, sim_f)
        log = scenario.log_trajectory
        future = slice(init, init + horizon)
        log_xy = jnp.stack([log.x[index][:, future], log.y[index][:, future]], -1)
        out["min_ade"] = lk.min_ade(sim_xy, sim_valid & index_valid[:, None], log_xy, log_f.valid, index_valid)
        out["num_evaluated"] = jnp.sum(index_valid)
        return out

    return scene


@dataclasses.dataclass
class RealismReport:
    """Per-scene and aggregate realism of one traffic model."""

    name: str
    description: str
    per_scenario: list[dict]
    aggregate: dict[str, float]
    config: dict

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "aggregate": self.aggregate,
                "config": self.config, "per_scenario": self.per_scenario}

    def to_json(self, path: str | None = None) -> str:
        text = json.dumps(_finite(self.to_dict()), indent=1)
        if path:
            with open(path, "w") as f:
                f.write(text)
        return text

    def to_markdown(self) -> str:
        return markdown_table([self])


SUMMARY_COLUMNS = ("realism_meta_metric", "kinematic", "interactive", "map_based", "min_ade")


def markdown_table(reports: Sequence[RealismReport], columns: Sequence[str] | None = None) -> str:
    """One row per report: meta-metric, category scores, minADE and every feature likelihood."""
    cols = list(columns or (SUMMARY_COLUMNS + tuple(f.name for f in lk.FEATURES)))
    lines = ["| agents | scenes | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for r in reports:
        lines.append(f"| {r.name} | {r.aggregate['num_scenarios']} | "
                     + " | ".join(_fmt(r.aggregate.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.4f}"


def aggregate(rows: Sequence[dict]) -> dict[str, float]:
    """Means over scenes (NaN entries left out) of every score of `likelihood.scene_scores` and minADE."""
    keys = [f.name for f in lk.FEATURES] + list(lk.CATEGORIES) + ["realism_meta_metric", "min_ade"]
    out: dict[str, Any] = {"num_scenarios": len(rows)}
    for k in keys:
        vals = [r[k] for r in rows if r.get(k) is not None and not math.isnan(r[k])]
        out[k] = float(np.mean(vals)) if vals else float("nan")
    out["num_evaluated_objects"] = int(sum(r["num_evaluated"] for r in rows))
    return out


def resolve_model(agents: str, config: RealismConfig, horizon: int) -> tuple[Callable, str, bool]:
    """(one-rollout function, description, whether it needs policy slots)."""
    if agents.startswith("policy:"):
        path = agents[len("policy:"):]
        if not os.path.exists(path):
            raise FileNotFoundError(f"--agents {agents!r}: {path} is not a training run, checkpoint or exported "
                                    "policy directory")
        one, how = policy_rollout_fn(path, config, horizon)
        return one, how, True
    if agents == "log_resampled":
        return (resampled_log_fn(config, horizon), f"reference: the log at time scale N(1, {config.time_scale_std}²) "
                f"and lateral offset N(0, {config.lateral_std}²) m per object", False)
    desc = {"log": "log replay (degenerate: every rollout is the log)",
            "constant_velocity": "constant velocity (deterministic)",
            "idm": "IDM along the logged path, parameters sampled per rollout and object"}[agents]
    return baseline_rollout_fn(agents, config, horizon), desc, False


def check_horizon(scenarios: Scenario, config: RealismConfig) -> int:
    steps = int(np.shape(scenarios.log_trajectory.x)[-1]) - config.init_steps
    if steps < 2:
        raise ValueError(f"the scenes have {steps + config.init_steps} log steps: too few after init_steps="
                         f"{config.init_steps} for a realism rollout")
    if config.horizon is None:
        return steps
    if config.horizon > steps:
        raise ValueError(f"RealismConfig.horizon={config.horizon} exceeds the {steps} future steps of the scenes")
    return config.horizon


class RealismRunner:
    """A compiled realism evaluation of one traffic model on a scenario set `[S, ...]`: `run()` rolls out and
    scores (the first call compiles; later calls reuse the program, e.g. to time it)."""

    def __init__(self, scenarios: Scenario, infos: Sequence[dict] | None = None,
                 config: RealismConfig = RealismConfig(), name: str | None = None):
        self.num = int(np.shape(scenarios.log_trajectory.x)[0])
        if self.num == 0:
            raise ValueError("realism: empty scenario set")
        self.scenarios, self.infos, self.config = scenarios, infos, config
        self.horizon = check_horizon(scenarios, config)
        one, self.description, with_policy = resolve_model(config.agents, config, self.horizon)
        self.name = name or config.agents
        self.aux = prepare(scenarios, config, with_policy)
        scene = make_scene_fn(one, config, self.horizon)
        self.fn = jax.jit(jax.vmap(scene), compiler_options=compiler_options())

    def raw(self, seed: int | None = None) -> list[dict]:
        """Per-scene log-likelihood sums, counts, per-object means and minADE (numpy), in scene order."""
        base = jax.random.key(self.config.seed if seed is None else seed)
        keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(self.num))
        bs = min(self.config.batch_size, self.num)
        results = []
        for start in range(0, self.num, bs):
            idx = np.arange(start, start + bs) % self.num  # the last chunk wraps: one compile
            take = lambda a: np.asarray(a)[idx]
            res = jax.device_get(self.fn(jax.tree.map(take, self.scenarios), jax.tree.map(take, self.aux), keys[idx]))
            for j in range(min(bs, self.num - start)):
                results.append(jax.tree.map(lambda a: np.asarray(a)[j], res))
        return results

    def run(self, seed: int | None = None) -> RealismReport:
        config, infos = self.config, self.infos
        rows = []
        for i, res in enumerate(self.raw(seed)):
            row = lk.scene_scores(res)
            row["min_ade"] = float(res["min_ade"])
            row["num_evaluated"] = int(res["num_evaluated"])
            row["scenario_id"] = str((infos[i].get("scenario_id") if infos else None) or i)
            row["per_object_log_likelihood"] = {
                f.name: [None if math.isnan(v) else float(v) for v in res[f.name]["per_object"][:row["num_evaluated"]]]
                for f in lk.FEATURES}
            rows.append(row)
        cfg = {"agents": config.agents, "rollouts": config.rollouts, "horizon": self.horizon,
               "init_steps": config.init_steps, "seed": config.seed if seed is None else seed,
               "idm_params": {k: float(v) for k, v in dataclasses.asdict(config.idm_params).items()
                              if np.ndim(v) == 0},
               "idm_spread": dataclasses.asdict(config.idm_spread)}
        return RealismReport(name=self.name, description=self.description, per_scenario=rows,
                             aggregate=aggregate(rows), config=cfg)


def realism(scenarios: Scenario, infos: Sequence[dict] | None = None, config: RealismConfig = RealismConfig(),
            name: str | None = None) -> RealismReport:
    """Realism of `config.agents` on batched `scenarios` `[S, ...]` (see the module docstring)."""
    return RealismRunner(scenarios, infos, config, name).run()
