"""Tiny problems shared by the trainer tests: small scenarios, observation sizes and networks."""

from __future__ import annotations

import jax.numpy as jnp

from jaxloop.data.toy import make_toy_scenario
from jaxloop.policy.networks import ModelConfig
from jaxloop.policy.observation import ObsConfig
from jaxloop.sim.datatypes import stack_scenarios, trajectory_at
from jaxloop.train.config import TrainConfig

TINY_OBS = ObsConfig(num_objects=3, num_lanes=2, lane_points=4, num_edges=2, num_lights=1, route_points=3)
TINY_MODEL = ModelConfig(hidden=(32,), embed_dim=16, num_heads=2)


def scenarios(count: int = 8, num_objects: int = 8, num_steps: int = 40):
    return stack_scenarios([make_toy_scenario(num_objects=num_objects, num_cars=4, num_steps=num_steps, seed=i)
                            for i in range(count)])


def tiny_config(algo: str, **changes) -> TrainConfig:
    base = dict(algo=algo, batch_size=8, horizon=10, learning_rate=3e-3, obs=TINY_OBS, model=TINY_MODEL,
                history_length=3)
    base.update(changes)
    return TrainConfig(**base)


def ego_log_distance(scenario, prev_state, state):
    """Distance (m) between the ego and its logged position at the new step."""
    del prev_state
    ego = scenario.object_metadata.sdc_index
    log = trajectory_at(scenario.log_trajectory, state.timestep)
    return jnp.sqrt((state.current.x[ego] - log.x[ego]) ** 2 + (state.current.y[ego] - log.y[ego]) ** 2 + 1e-6)


def forward_progress(scenario, prev_state, state):
    """Metres the ego moved along +x (the toy road's direction) this step."""
    ego = scenario.object_metadata.sdc_index
    return state.current.x[ego] - prev_state.current.x[ego]
