"""jaxloop: a JAX-native, differentiable closed-loop trainer for driving policies.

The public API: what a research script needs from data to an exported policy.

    scenarios, infos = jaxloop.load_scenarios("procedural:train:64")    # any data spec
    env = jaxloop.Env(jaxloop.EnvConfig())                               # one scenario at a time; vmap it
    final, out = jaxloop.rollout(env, scenario, env.reset(scenario, key), policy, num_steps)
    config = jaxloop.Experiment(algo=jaxloop.BC())                      # the whole run, one frozen tree
    state, metrics = jaxloop.make_train(config, scenarios, num_steps=100)(key, jaxloop.params_of(config))
    policy = jaxloop.policy_from_params(config, state.params)
    report = jaxloop.evaluate(policy, scenarios, infos, jaxloop.EvalConfig(env=config.env_config()))
    result = jaxloop.gate(policy, "expert", scenarios, infos)            # the safety gate
    jaxloop.export("runs/bc", "policy/")                                 # a checkpoint -> jax.export artefact
    policy, config = jaxloop.load_policy("policy/")                      # a run, checkpoint or export

Everything else is importable from its module but internal. Names are imported on
first use, so `import jaxloop` does not import JAX.
"""

from __future__ import annotations

import importlib

from jaxloop._version import __version__

_EXPORTS = {
    # core datatypes
    "Scenario": "jaxloop.sim.datatypes", "SimState": "jaxloop.sim.datatypes", "ObjectState": "jaxloop.sim.datatypes",
    "Trajectory": "jaxloop.sim.datatypes", "ObjectMetadata": "jaxloop.sim.datatypes",
    "RoadMap": "jaxloop.sim.datatypes", "Route": "jaxloop.sim.datatypes", "TrafficLights": "jaxloop.sim.datatypes",
    "stack_scenarios": "jaxloop.sim.datatypes",
    # data
    "load_scenarios": "jaxloop.data.sources", "make_toy_scenario": "jaxloop.data.toy",
    # simulator
    "Env": "jaxloop.sim.env", "EnvConfig": "jaxloop.sim.env", "StepInfo": "jaxloop.sim.env",
    "make_dynamics": "jaxloop.sim.dynamics",
    "rollout": "jaxloop.sim.rollout", "Rollout": "jaxloop.sim.rollout",
    "constant_action_policy": "jaxloop.sim.rollout",
    # the experiment (static) and its traced parameters
    "Experiment": "jaxloop.config", "DataConfig": "jaxloop.config", "EnvSettings": "jaxloop.config",
    "EvalSettings": "jaxloop.config", "BC": "jaxloop.config", "APG": "jaxloop.config", "PPO": "jaxloop.config",
    "GRPO": "jaxloop.config", "Params": "jaxloop.config", "params_of": "jaxloop.config",
    "stack_params": "jaxloop.config",
    # training
    "make_trainer": "jaxloop.train.trainer", "make_train": "jaxloop.train.trainer",
    # evaluation and the gate
    "EvalConfig": "jaxloop.eval.evaluate", "evaluate": "jaxloop.eval.evaluate", "run_suite": "jaxloop.eval.perturb",
    "GateConfig": "jaxloop.config", "gate": "jaxloop.eval.gate",
    # realism of traffic models (WOSAC-style)
    "RealismConfig": "jaxloop.realism.evaluate", "RealismRunner": "jaxloop.realism.evaluate",
    # the simulator as a gymnax-style RL environment
    "DrivingEnv": "jaxloop.envs",
    # trained policies
    "load_policy": "jaxloop.io.policies", "policy_from_params": "jaxloop.io.policies", "export": "jaxloop.io.policies",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jaxloop' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
