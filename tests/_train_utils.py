"""Tiny problems shared by the trainer tests: small scenarios, observation sizes and networks."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jaxloop.config import ALGO_CLASSES, EnvSettings, Experiment
from jaxloop.data.toy import make_toy_scenario
from jaxloop.policy.networks import ModelConfig
from jaxloop.policy.observation import ObsConfig
from jaxloop.sim.datatypes import stack_scenarios, trajectory_at

TINY_OBS = ObsConfig(num_objects=3, num_lanes=2, lane_points=4, num_edges=2, num_lights=1, route_points=3,
                     history_length=3)
TINY_MODEL = ModelConfig(hidden=(32,), embed_dim=16, num_heads=2)
_ENV_FIELDS = {f.name for f in dataclasses.fields(EnvSettings)}


def scenarios(count: int = 8, num_objects: int = 8, num_steps: int = 40):
    return stack_scenarios([make_toy_scenario(num_objects=num_objects, num_cars=4, num_steps=num_steps, seed=i)
                            for i in range(count)])


def tiny_config(name: str, /, **changes) -> Experiment:
    """A small `Experiment` of algorithm `name` ("bc" | "apg" | "ppo" | "grpo"); `changes` are top-level fields,
    fields of `env` (horizon, crosser_prob, ...) or `algo=` an algorithm section."""
    if name not in ALGO_CLASSES:
        raise ValueError(f"tiny_config: algo must be one of {sorted(ALGO_CLASSES)}, got {name!r}")
    env = {k: changes.pop(k) for k in list(changes) if k in _ENV_FIELDS}
    base = dict(algo=ALGO_CLASSES[name](), batch_size=8, learning_rate=3e-3, obs=TINY_OBS, model=TINY_MODEL,
                env=EnvSettings(**{"horizon": 10, **env}))
    base.update(changes)
    return Experiment(**base)


def ego_log_distance(scenario, prev_state, state, weights=None):
    """Distance (m) between the ego and its logged position at the new step."""
    del prev_state, weights
    ego = scenario.object_metadata.sdc_index
    log = trajectory_at(scenario.log_trajectory, state.timestep)
    return jnp.sqrt((state.current.x[ego] - log.x[ego]) ** 2 + (state.current.y[ego] - log.y[ego]) ** 2 + 1e-6)


def forward_progress(scenario, prev_state, state, weights=None):
    """Metres the ego moved along +x (the toy road's direction) this step."""
    del weights
    ego = scenario.object_metadata.sdc_index
    return state.current.x[ego] - prev_state.current.x[ego]
