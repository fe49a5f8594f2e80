"""IDM parameters fitted to logged trajectories by gradient descent through the differentiable simulator.

Every object valid at the current step is driven by IDM (shared parameters) for `horizon`
steps from the logged initial state; the loss, per valid (object, step) of the log, is

    |p_sim - p_log|² / (1 m)²  +  speed_weight * (|v_sim| - |v_log|)² / (1 m/s)²
                               +  accel_weight * (a_sim - a_log)² / (1 m/s²)²

(the position term matches where objects are; the speed and acceleration terms, with a
the step-to-step change of speed over dt, their speed profile, the kinematic features
the realism score reads: `accel_weight > 0` is the realism-regularised fit) plus `prior_weight` times the squared log
ratio of each parameter to its default (a regulariser towards the published IDM
constants). The fitted parameters are the log-normal centre that `RealismConfig.idm_params`
samples around. Parameters are optimised in log space (positive), with Adam.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Sequence

import jax
import jax.numpy as jnp

from jaxloop.sim import agents as agents_lib
from jaxloop.sim.compute import compiler_options
from jaxloop.sim.datatypes import Scenario
from jaxloop.sim.env import Env, EnvConfig
from jaxloop.sim.rollout import rollout

FITTED = ("idm_desired_speed_scale", "idm_time_headway", "idm_min_gap", "idm_max_accel", "idm_comfort_decel")


@dataclasses.dataclass(frozen=True)
class FitConfig:
    horizon: int = 80
    steps: int = 40
    learning_rate: float = 0.05
    speed_weight: float = 1.0
    accel_weight: float = 0.0
    prior_weight: float = 0.01
    init_steps: int = 11


def _with(base: agents_lib.AgentParams, log_params: jax.Array) -> agents_lib.AgentParams:
    return base.replace(**{name: getattr(base, name) * jnp.exp(log_params[i]) for i, name in enumerate(FITTED)})


def make_loss(config: FitConfig, base: agents_lib.AgentParams = agents_lib.AgentParams()):
    """`loss(log_params [5], scenarios [S, ...]) -> (loss, aux)`: mean over scenes of the loss of the module docstring."""
    env = Env(EnvConfig(init_steps=config.init_steps, controlled="sdc", non_ego_agent="log",
                        grad_through_agents=True))
    zero = jnp.zeros((env.config.action_dim,))
    init = config.init_steps

    def scene_loss(log_params, scenario):
        log = scenario.log_trajectory
        keep = log.valid[:, init - 1]
        scenario = scenario.replace(log_trajectory=log.replace(valid=log.valid & keep[:, None]))
        kind = jnp.full((scenario.num_objects,), agents_lib.AGENT_IDM, jnp.int32)
        state = env.reset(scenario, jax.random.key(0), agent_kind=kind, with_idm=True)
        _, out = rollout(env, scenario, state, lambda sc, st, k: zero, config.horizon,
                         params=_with(base, log_params))
        sim, ref = out.states, out.log_states  # [H, N]
        ok = (ref.valid & sim.valid).astype(jnp.float32)
        pos = (sim.x - ref.x) ** 2 + (sim.y - ref.y) ** 2
        speed = (sim.speed - ref.speed) ** 2
        both = ok[1:] * ok[:-1]
        accel = ((jnp.diff(sim.speed, axis=0) - jnp.diff(ref.speed, axis=0)) / 0.1) ** 2
        total = (jnp.sum(ok * (pos + config.speed_weight * speed))
                 + config.accel_weight * jnp.sum(both * accel) * jnp.sum(ok) / jnp.maximum(jnp.sum(both), 1.0))
        return total / jnp.maximum(jnp.sum(ok), 1.0), jnp.sum(ok * jnp.sqrt(pos + 1e-9)) / jnp.maximum(jnp.sum(ok), 1.0)

    def loss(log_params, scenarios):
        per, ade = jax.vmap(scene_loss, in_axes=(None, 0))(log_params, scenarios)
        prior = config.prior_weight * jnp.sum(log_params ** 2)
        return jnp.mean(per) + prior, {"data": jnp.mean(per), "ade": jnp.mean(ade)}

    return loss


def fit_idm(scenarios: Scenario, config: FitConfig = FitConfig(),
            base: agents_lib.AgentParams = agents_lib.AgentParams(), log=print) -> tuple[agents_lib.AgentParams, dict]:
    """Fits the `FITTED` IDM parameters to the logs of `scenarios` `[S, ...]`; returns them and the history."""
    import optax
    loss = make_loss(config, base)
    opt = optax.adam(config.learning_rate)
    theta = jnp.zeros((len(FITTED),))
    opt_state = opt.init(theta)

    @jax.jit
    def step(theta, opt_state, scenarios):
        (value, aux), grad = jax.value_and_grad(loss, has_aux=True)(theta, scenarios)
        updates, opt_state = opt.update(grad, opt_state)
        return optax.apply_updates(theta, updates), opt_state, value, aux

    scenarios = jax.tree.map(jnp.asarray, scenarios)
    history = []
    for i in range(config.steps):
        theta, opt_state, value, aux = step(theta, opt_state, scenarios)
        rec = {"step": i, "loss": float(value), "data": float(aux["data"]), "ade": float(aux["ade"])}
        history.append(rec)
        if log is not None and (i % 10 == 0 or i == config.steps - 1):
            log(f"  idm fit step {i}: loss {rec['loss']:.3f}, ADE {rec['ade']:.3f} m")
    fitted = _with(base, theta)
    return jax.tree.map(float, fitted), {"history": history, "log_factors": [float(v) for v in theta]}


def params_dict(params: agents_lib.AgentParams) -> dict[str, float]:
    return {f.name: float(getattr(params, f.name)) for f in dataclasses.fields(params)}


def save_params(params: agents_lib.AgentParams, path: str) -> None:
    with open(path, "w") as f:
        json.dump(params_dict(params), f, indent=1)


def load_params(path: str) -> agents_lib.AgentParams:
    """`AgentParams` from a JSON object of field -> value (unknown fields are an error naming them)."""
    with open(path) as f:
        data = json.load(f)
    names = {f.name for f in dataclasses.fields(agents_lib.AgentParams)}
    if not isinstance(data, dict) or set(data) - names:
        raise ValueError(f"{path}: expected a JSON object with fields of AgentParams ({', '.join(sorted(names))}), "
                         f"got {sorted(set(data) - names) if isinstance(data, dict) else type(data).__name__}")
    return agents_lib.AgentParams(**{k: float(v) for k, v in data.items()})


def loss_of(params_sets: Sequence[agents_lib.AgentParams], scenarios: Scenario, config: FitConfig) -> list[float]:
    """The data loss (no prior) of each parameter set on `scenarios` (for before / after tables)."""
    out = []
    for p in params_sets:
        base = agents_lib.AgentParams(**params_dict(p))
        fn = jax.jit(make_loss(config, base), compiler_options=compiler_options())
        out.append(float(fn(jnp.zeros((len(FITTED),)), jax.tree.map(jnp.asarray, scenarios))[1]["ade"]))
    return out
