"""Closed-loop unroll: `lax.scan` of (actor -> env.step) over H steps.

The carry is the `SimState` (current objects, a K-step history, agent memory, key) and
the actor's state (`jaxloop.sim.actor`): nothing `[N, T]`, so memory and backward cost
grow linearly with H. The scenario is closed over as a constant of the scan. A plain
`PolicyFn` rolls out as the memoryless actor `as_actor(policy)`.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
from flax import struct

from jaxloop.sim.actor import INIT_SALT, Actor, Observation, as_actor
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
    extras: dict  # whatever `extras_fn` returned per step, stacked
    aux: dict = struct.field(default_factory=dict)  # the actor's `ActorOutput.aux` per step, stacked
    actor_state: Any = ()  # the actor's state after the last step (not stacked)


def rollout(env: Env, scenario: Scenario, state: SimState, policy: Actor | PolicyFn, num_steps: int,
            remat: bool = False, extras_fn: Callable[[Scenario, SimState, SimState, StepInfo], dict] | None = None,
            params=None, actor_params=None, actor_state=None) -> tuple[SimState, Rollout]:
    """Unrolls `num_steps` closed-loop steps of `policy` (an `Actor` or a `PolicyFn`) from `state`.

    `params` are the env's (`EnvParams`), `actor_params` the actor's (`select_action`'s
    first argument). `actor_state=None` starts an episode: `actor.init` is called with a key
    folded from `state.key` (the step keys are split from `state.key` as for a `PolicyFn`);
    pass the previous `Rollout.actor_state` to continue an episode instead.
    `remat=True` wraps each step in `jax.checkpoint`, trading recompute for memory in the
    backward pass. `extras_fn(scenario, prev_state, new_state, info)` may add per-step
    outputs (metrics, rewards) without keeping whole states around; the actor's aux is
    stacked into `Rollout.aux`.
    """
    actor = as_actor(policy)
    if actor_state is None:
        actor_state = actor.init(jax.random.fold_in(state.key, INIT_SALT), scenario)

    def body(carry, log_next: ObjectState):
        sim, memory = carry
        key, key_policy = jax.random.split(sim.key)
        sim = sim.replace(key=key)
        out = actor.select_action(actor_params, Observation(scenario=scenario, state=sim), memory, key_policy)
        new_state, info = env.step(scenario, sim, out.action, params, log_next, controlled=out.controlled)
        extras = {} if extras_fn is None else extras_fn(scenario, sim, new_state, info)
        return (new_state, out.actor_state), Rollout(states=new_state.current, actions=info.action,
                                                     log_states=info.log_state, timesteps=new_state.timestep,
                                                     extras=extras, aux=out.aux)

    if remat:
        body = jax.checkpoint(body)
    with jax.named_scope("rollout"):
        # The log of the whole horizon, read once and time-major (`trajectory_window`).
        logs = trajectory_window(scenario.log_trajectory, state.timestep + 1, num_steps)
        (final, memory), out = jax.lax.scan(body, (state, actor_state), logs, length=num_steps)
        return final, out.replace(actor_state=memory)


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
