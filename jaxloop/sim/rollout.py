"""Closed-loop unroll: `lax.scan` of (policy -> env.step) over H steps.

The carry is the `SimState` alone (current objects, a K-step history, agent memory,
key): nothing `[N, T]`, so memory and backward cost grow linearly with H. The
scenario is closed over as a constant of the scan.
"""

from __future__ import annotations

from typing import Callable, Protocol

import jax
import jax.numpy as jnp
from flax import struct

from jaxloop.sim.datatypes import ObjectState, Scenario, SimState, trajectory_at, trajectory_window
from jaxloop.sim.env import Env, StepInfo


class PolicyFn(Protocol):
    def __call__(self, scenario: Scenario, state: SimState, key: jax.Array) -> jax.Array:
        """Action `[M, A]` (one per `state.controlled` slot), `[A]` or `[N, A]`."""


@struct.dataclass
class Rollout:
    """Stacked per-step outputs of `rollout`: leading axis H."""

    states: ObjectState  # [H, N] object states after each step
    actions: jax.Array  # [H, M, A] physical actions of the controlled slots
    log_states: ObjectState  # [H, N] the log at the same steps
    timesteps: jax.Array  # [H] log index of each state
    extras: dict  # whatever `step_fn_extras` returned per step, stacked


def rollout(env: Env, scenario: Scenario, state: SimState, policy: PolicyFn, num_steps: int,
            remat: bool = False, extras_fn: Callable[[Scenario, SimState, SimState, StepInfo], dict] | None = None,
            params=None) -> tuple[SimState, Rollout]:
    """Unrolls `num_steps` closed-loop steps from `state`.

    `remat=True` wraps each step in `jax.checkpoint`, trading recompute for memory in
    the backward pass. `extras_fn(scenario, prev_state, new_state, info)` may add
    per-step outputs (metrics, rewards) without keeping whole states around.
    """

    def body(carry: SimState, log_next: ObjectState):
        key, key_policy = jax.random.split(carry.key)
        carry = carry.replace(key=key)
        action = policy(scenario, carry, key_policy)
        new_state, info = env.step(scenario, carry, action, params, log_next)
        extras = {} if extras_fn is None else extras_fn(scenario, carry, new_state, info)
        return new_state, Rollout(states=new_state.current, actions=info.action, log_states=info.log_state,
                                  timesteps=new_state.timestep, extras=extras)

    if remat:
        body = jax.checkpoint(body)
    with jax.named_scope("rollout"):
        # The log of the whole horizon, read once and time-major (`trajectory_window`).
        logs = trajectory_window(scenario.log_trajectory, state.timestep + 1, num_steps)
        return jax.lax.scan(body, state, logs, length=num_steps)


def over_batch(fn: Callable, batch, key: jax.Array, *, keys: jax.Array | None = None):
    """`fn(scenario, key)` of one scenario, mapped over a batch `[B, ...]`: the one place the batch axis is added.

    Every scenario gets its own key: `keys` `[B]` when given, else `key` split B ways.
    Outputs gain a leading axis B.
    """
    num = jax.tree.leaves(batch)[0].shape[0]
    keys = jax.random.split(key, num) if keys is None else keys
    return jax.vmap(fn)(batch, keys)


def log_replay_policy(env: Env) -> PolicyFn:
    """A policy that reproduces the log through the env's dynamics (the inverse-dynamics expert)."""

    def policy(scenario: Scenario, state: SimState, key: jax.Array) -> jax.Array:
        del key
        nxt = trajectory_at(scenario.log_trajectory, state.timestep + 1)
        nxt = jax.tree.map(lambda a: a[state.controlled], nxt)
        action, _ = env.dynamics.inverse(env.controlled_states(state), nxt)
        return action

    return policy


def constant_action_policy(action: jax.Array) -> PolicyFn:
    """Applies the same action at every step (e.g. zeros: coast)."""

    def policy(scenario: Scenario, state: SimState, key: jax.Array) -> jax.Array:
        del scenario, state, key
        return jnp.asarray(action)

    return policy
