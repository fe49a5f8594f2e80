"""jaxloop: a JAX-native, differentiable closed-loop trainer for driving policies.

The public API is re-exported here; everything else is importable but internal.
"""

from jaxloop.sim.datatypes import (ObjectMetadata, ObjectState, RoadMap, Route, Scenario, SimState, TrafficLights,
                                   Trajectory)
from jaxloop.sim.dynamics import DeltaGlobal, DeltaLocal, InvertibleBicycle, StateDynamics, make_dynamics
from jaxloop.sim.env import Env, EnvConfig, Observation, StepInfo, expert_actions
from jaxloop.sim.rollout import Rollout, rollout

__version__ = "0.1.0"

__all__ = [
    "DeltaGlobal", "DeltaLocal", "Env", "EnvConfig", "InvertibleBicycle", "ObjectMetadata", "ObjectState",
    "Observation", "RoadMap", "Rollout", "Route", "Scenario", "SimState", "StateDynamics", "StepInfo",
    "TrafficLights", "Trajectory", "expert_actions", "make_dynamics", "rollout",
]
