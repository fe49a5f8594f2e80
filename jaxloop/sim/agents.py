"""Behaviour of the objects the policy does not drive.

Each object has an agent kind (`SimState.agent_kind` `[N]`, traced so perturbations
and multi-agent masks can change it per scenario):

- `AGENT_LOG`: log replay, copies the log at t+1.
- `AGENT_CONSTANT_VELOCITY`: keeps its velocity and heading from the current step.
- `AGENT_IDM`: reactive car following along its own logged path (see `idm_step`).
- `AGENT_POLICY`: moved by the policy's action through the env's dynamics.

Every model is computed for all objects and selected per object with `where`, so the
mix is free to change without recompiling.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxloop.sim.datatypes import DT, ObjectState, Scenario, trajectory_at

AGENT_LOG = 0
AGENT_CONSTANT_VELOCITY = 1
AGENT_IDM = 2
AGENT_POLICY = 3

AGENT_NAMES = {"log": AGENT_LOG, "constant_velocity": AGENT_CONSTANT_VELOCITY, "idm": AGENT_IDM,
               "policy": AGENT_POLICY}


@struct.dataclass
class AgentParams:
    """Traced constants of the agent models (vmappable, differentiable)."""

    idm_desired_speed_scale: float = 1.0  # times the object's logged speed limit / max logged speed
    idm_min_gap: float = 2.0  # s0, metres
    idm_time_headway: float = 1.5  # T, seconds
    idm_max_accel: float = 2.0  # a, m/s²
    idm_comfort_decel: float = 3.0  # b, m/s²
    idm_max_decel: float = 8.0  # hard braking limit, m/s²
    idm_delta: float = 4.0  # acceleration exponent
    speed_scale: float = 1.0  # scales log-replay / IDM speeds for non-ego objects (perturbations)


def constant_velocity_step(state: ObjectState, dt: float = DT) -> ObjectState:
    """Moves every object `[N]` one step at its current velocity."""
    return state.replace(x=state.x + state.vel_x * dt, y=state.y + state.vel_y * dt)


def log_replay_step(scenario: Scenario, timestep: jax.Array) -> ObjectState:
    """The log at `timestep + 1` for every object `[N]` (invalid past the end of the log)."""
    return trajectory_at(scenario.log_trajectory, timestep + 1)


def select_objects(mask: jax.Array, a: ObjectState, b: ObjectState) -> ObjectState:
    """`a` where `mask` `[N]` else `b`, field by field."""
    return jax.tree.map(lambda u, v: jnp.where(mask, u, v), a, b)


def init_agent_state(scenario: Scenario, current: ObjectState, timestep: jax.Array):
    """Per-object agent memory at reset. Log replay and constant velocity need none."""
    del scenario, current, timestep
    return ()


def step_non_policy(scenario: Scenario, current: ObjectState, timestep: jax.Array, agent_kind: jax.Array,
                    agent_state, params: AgentParams, dt: float = DT) -> tuple[ObjectState, object]:
    """Next states `[N]` of all objects under their agent model (policy objects: log replay, replaced later)."""
    logged = log_replay_step(scenario, timestep)
    cv = constant_velocity_step(current, dt)
    # A constant-velocity object stays valid as long as it was valid when it started moving.
    cv = cv.replace(valid=current.valid)
    nxt = select_objects(agent_kind == AGENT_CONSTANT_VELOCITY, cv, logged)
    return nxt, agent_state
