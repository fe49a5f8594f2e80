"""The actor contract: what drives objects in a closed-loop rollout.

An `Actor` is a pair of pure functions:

    actor_state = actor.init(key, scenario)
    out = actor.select_action(params, observation, actor_state, key)   # -> ActorOutput

`params` are the actor's own (a network's `nnx.State`, or None for an actor with none),
`observation` is an `Observation` (the scenario and the simulator state: an actor
computes whatever it reads from them, e.g. a policy's feature vector), `actor_state`
its memory (a recurrent policy's hidden state; `()` when it has none). The output holds
the action `[N, A]` (one row per object), the objects it drives `controlled` `[N]` bool,
the next actor state and `aux`, a dict of whatever a trainer needs per step (log-prob,
value, the features the action was computed from, ...).

`jaxloop.sim.rollout.rollout` calls `init` once per episode and carries the actor state
through its scan. Objects outside `controlled` keep what the environment does for them:
their agent model (log replay, constant velocity, IDM), and log replay for an object the
environment lets the policy drive (`AGENT_POLICY`) that the actor leaves alone.

Baselines are actors that drive nothing themselves: `baseline_actor("idm")` hands the
ego to the simulator's IDM model (`Actor.agent_kind`), which is what an evaluation of the
baseline runs. A plain `PolicyFn` (`policy(scenario, state, key) -> action`) becomes an
actor with `as_actor`.

Actors compose: `with_traffic(ego_actor, traffic_actor)` drives the ego with one actor and
every other object the environment lets a policy drive with another (e.g. a self-play
policy as reactive traffic), each with its own params and state.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from jaxloop.sim import agents as agents_lib
from jaxloop.sim.datatypes import Scenario, SimState, trajectory_at

BASELINE_KINDS = {"expert": agents_lib.AGENT_LOG, "constant_velocity": agents_lib.AGENT_CONSTANT_VELOCITY,
                  "idm": agents_lib.AGENT_IDM}
INIT_SALT = 0x5EED  # `rollout` folds it into the episode's key for `Actor.init`: the step keys stay untouched


@struct.dataclass
class Observation:
    """What an actor reads at a step: the scenario (constant over the episode) and the current `SimState`."""

    scenario: Scenario
    state: SimState


@struct.dataclass
class ActorOutput:
    """One step of an actor."""

    action: jax.Array  # [N, A] per object (rows outside `controlled` are ignored)
    controlled: jax.Array  # [N] bool: the objects this actor drives
    actor_state: Any  # the actor's memory after the step
    aux: dict  # per-step outputs for a trainer (log_prob [], value [], features, ...); {} when none


@dataclasses.dataclass(frozen=True, eq=False)
class Actor:
    """A closed-loop actor (see the module docstring).

    init: `(key, scenario) -> actor_state`, called at the start of every episode.
    select_action: `(params, observation, actor_state, key) -> ActorOutput`.
    agent_kind: for baselines, the simulator agent model (`AGENT_LOG`, `AGENT_CONSTANT_VELOCITY`,
      `AGENT_IDM`) that drives the ego in the actor's stead (`with_agent_kind`); None for an
      actor that drives its objects through the dynamics.
    name: a label for reports.
    """

    init: Callable[[jax.Array, Scenario], Any]
    select_action: Callable[[Any, Observation, Any, jax.Array], ActorOutput]
    agent_kind: int | None = None
    name: str = "actor"


def stateless_init(key: jax.Array, scenario: Scenario) -> tuple:
    """The `init` of an actor without memory: the empty state `()`."""
    del key, scenario
    return ()


def per_object_action(action: jax.Array, state: SimState) -> jax.Array:
    """An action `[A]` (every controlled slot), `[M, A]` (one per `state.controlled` slot) or `[N, A]` as `[N, A]`.

    Rows of objects outside the controlled slots are zero; `Env.step` reads back exactly
    the rows it would have read from the original form.
    """
    num_objects, slots = state.current.x.shape[-1], state.controlled
    action = jnp.asarray(action)
    if action.ndim == 1:
        action = jnp.broadcast_to(action, (slots.shape[0], action.shape[0]))
    if action.shape[0] == num_objects:
        return action
    return jnp.zeros((num_objects, action.shape[-1]), action.dtype).at[slots].set(action)


def policy_controlled(state: SimState) -> jax.Array:
    """The objects `[N]` the environment lets a policy drive: `agent_kind == AGENT_POLICY`."""
    return state.agent_kind == agents_lib.AGENT_POLICY


def as_actor(policy: "Actor | Callable[[Scenario, SimState, jax.Array], jax.Array]", name: str = "policy") -> Actor:
    """An `Actor` of a `PolicyFn` `policy(scenario, state, key) -> action` (an `Actor` is returned as is).

    It has no memory and no aux, ignores `params`, and drives every object the environment
    lets a policy drive; the action and the keys are exactly the policy's, so a rollout of
    the actor is the rollout of the policy.
    """
    if isinstance(policy, Actor):
        return policy

    def select_action(params, obs: Observation, actor_state, key: jax.Array) -> ActorOutput:
        del params
        action = per_object_action(policy(obs.scenario, obs.state, key), obs.state)
        return ActorOutput(action=action, controlled=policy_controlled(obs.state), actor_state=actor_state, aux={})

    return Actor(init=stateless_init, select_action=select_action, name=name)


def as_policy_fn(actor: Actor, params=None) -> Callable[[Scenario, SimState, jax.Array], jax.Array]:
    """The `PolicyFn` of a memoryless actor under `params`: the action `[N, A]` of `select_action`."""

    def policy(scenario: Scenario, state: SimState, key: jax.Array) -> jax.Array:
        out = actor.select_action(params, Observation(scenario, state), actor.init(key, scenario), key)
        return out.action

    return policy


def map_policy(wrap: Callable, actor: Actor) -> Actor:
    """`actor` under a `PolicyFn -> PolicyFn` wrapper (e.g. a perturbation of what the policy sees).

    `wrap(inner)` must call `inner(scenario, state, key)` once per step: the actor selects its
    action from the (scenario, state, key) the wrapper passes on, and the wrapped output
    replaces the action.
    """

    def select_action(params, obs: Observation, actor_state, key: jax.Array) -> ActorOutput:
        seen = []

        def inner(scenario, state, k):
            seen.append(actor.select_action(params, Observation(scenario, state), actor_state, k))
            return seen[-1].action

        action = wrap(inner)(obs.scenario, obs.state, key)
        if len(seen) != 1:
            raise ValueError(f"map_policy: the wrapper called the policy {len(seen)} times in a step; expected once")
        return seen[0].replace(action=per_object_action(action, obs.state))

    return Actor(init=actor.init, select_action=select_action, agent_kind=actor.agent_kind, name=actor.name)


def baseline_actor(name: str, action_dim: int) -> Actor:
    """A baseline as an actor: "expert" (log replay), "constant_velocity" or "idm" drives the ego.

    It drives nothing through the dynamics (`controlled` all False, zero actions): the
    simulator's own agent model of that name moves the ego (`Actor.agent_kind`, applied at
    reset by `with_agent_kind`), bit for bit what the evaluator's baselines do.
    """
    if name not in BASELINE_KINDS:
        raise ValueError(f"unknown baseline {name!r}; expected one of {tuple(BASELINE_KINDS)}")

    def select_action(params, obs: Observation, actor_state, key: jax.Array) -> ActorOutput:
        del params, key
        num = obs.state.current.x.shape[-1]
        return ActorOutput(action=jnp.zeros((num, action_dim), jnp.float32), controlled=jnp.zeros((num,), bool),
                           actor_state=actor_state, aux={})

    return Actor(init=stateless_init, select_action=select_action, agent_kind=BASELINE_KINDS[name], name=name)


def log_tracking_actor(dynamics, name: str = "log_tracking") -> Actor:
    """Every object the environment lets a policy drive, steered toward its next logged state: the action is
    the dynamics' inverse from its simulated state to the log at the next step (clipped to the limits,
    normalised as the dynamics takes it; zero where either is invalid).

    The log as the dynamics can drive it, closed loop (each step starts from where the object is, so errors
    do not compound): the per-agent reference of a self-play evaluation. Where it fails, the log itself is
    infeasible for the dynamics or its labels (boxes, map) read as a failure. No params, no memory.
    """
    def select_action(params, obs: Observation, actor_state, key: jax.Array) -> ActorOutput:
        del params, key
        state = obs.state
        action, _ = dynamics.inverse(state.current, trajectory_at(obs.scenario.log_trajectory, state.timestep + 1))
        return ActorOutput(action=action, controlled=policy_controlled(state), actor_state=actor_state, aux={})

    return Actor(init=stateless_init, select_action=select_action, name=name)


def with_agent_kind(actor: Actor, scenario: Scenario, agent_kind: jax.Array) -> jax.Array:
    """The per-object agent kinds `[N]` of an episode of `actor`: the ego's set to `actor.agent_kind` if it has one."""
    if actor.agent_kind is None:
        return agent_kind
    return agent_kind.at[scenario.object_metadata.sdc_index].set(actor.agent_kind)


@struct.dataclass
class TrafficState:
    """The state of a `with_traffic` actor: each part's own."""

    ego: Any
    traffic: Any


def ego_objects(scenario: Scenario) -> jax.Array:
    """`[N]` bool: the ego (`ObjectMetadata.is_sdc`), what `with_traffic` takes from the ego actor."""
    return scenario.object_metadata.is_sdc


def with_traffic(ego_actor: Actor, traffic_actor: Actor,
                 ego_mask: Callable[[Scenario], jax.Array] = ego_objects, name: str | None = None) -> Actor:
    """One actor of two: `ego_actor` drives the objects of `ego_mask(scenario)` `[N]`, `traffic_actor` the rest.

    Params are the pair `(ego_params, traffic_params)` (None: both None), the state a
    `TrafficState`, each part initialised with its own key. Per object i:

        action_i     = ego.action_i if ego_mask_i else traffic.action_i
        controlled_i = ego.controlled_i & ego_mask_i  |  traffic.controlled_i & ~ego_mask_i

    so neither actor drives the other's objects, whatever its own mask says (an ego-only
    policy's broadcast `[A]` action stays on the ego). Objects neither drives keep what
    the environment does for them. aux holds each part's aux under "ego" and "traffic".
    The ego actor's `agent_kind` (a baseline's simulator model of the ego) is kept. Put
    the environment in a multi-agent mode (`EnvConfig.controlled="vehicles"` or "all")
    so that the traffic objects are policy objects at all.
    """

    def init(key: jax.Array, scenario: Scenario) -> TrafficState:
        key_ego, key_traffic = jax.random.split(key)
        return TrafficState(ego=ego_actor.init(key_ego, scenario), traffic=traffic_actor.init(key_traffic, scenario))

    def select_action(params, obs: Observation, actor_state: TrafficState, key: jax.Array) -> ActorOutput:
        ego_params, traffic_params = (None, None) if params is None else params
        key_ego, key_traffic = jax.random.split(key)
        ego = ego_actor.select_action(ego_params, obs, actor_state.ego, key_ego)
        traffic = traffic_actor.select_action(traffic_params, obs, actor_state.traffic, key_traffic)
        mine = ego_mask(obs.scenario)
        ego_action = per_object_action(ego.action, obs.state)
        traffic_action = per_object_action(traffic.action, obs.state).astype(ego_action.dtype)
        return ActorOutput(action=jnp.where(mine[:, None], ego_action, traffic_action),
                           controlled=(ego.controlled & mine) | (traffic.controlled & ~mine),
                           actor_state=TrafficState(ego=ego.actor_state, traffic=traffic.actor_state),
                           aux={"ego": ego.aux, "traffic": traffic.aux})

    return Actor(init=init, select_action=select_action, agent_kind=ego_actor.agent_kind,
                 name=name or f"{ego_actor.name}+{traffic_actor.name}")


def bind_params(actor: Actor, params) -> Actor:
    """`actor` with its params fixed to `params` (constants of the trace): its own `select_action` params ignored."""

    def select_action(_, obs: Observation, actor_state, key: jax.Array) -> ActorOutput:
        return actor.select_action(params, obs, actor_state, key)

    return Actor(init=actor.init, select_action=select_action, agent_kind=actor.agent_kind, name=actor.name)


def record_controlled(actor: Actor) -> Actor:
    """`actor` with its `controlled` mask `[N]` also in `aux["controlled"]` (stacked `[H, N]` by `rollout`)."""

    def select_action(params, obs: Observation, actor_state, key: jax.Array) -> ActorOutput:
        out = actor.select_action(params, obs, actor_state, key)
        return out.replace(aux={**out.aux, "controlled": out.controlled})

    return Actor(init=actor.init, select_action=select_action, agent_kind=actor.agent_kind, name=actor.name)
