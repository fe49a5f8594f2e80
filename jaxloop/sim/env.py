"""The closed-loop environment: `reset` and `step` over one scenario.

Pure, unbatched functions (DESIGN.md "Simulation contract"): batch with `jax.vmap`
in one place. `EnvConfig` is static (decides shapes and code paths); `EnvParams`
(the agent models' `AgentParams` and the dynamics' action limits) is traced. What a
policy observes is built from the state by `jaxloop.policy.observation.features`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from jaxloop.sim import agents as agents_lib
from jaxloop.sim.datatypes import TYPE_VEHICLE, ObjectState, Scenario, SimState, trajectory_at
from jaxloop.sim.dynamics import Dynamics, InvertibleBicycle
from jaxloop.sim.metrics.paths import GOAL_RADIUS, goal_distance, goal_far, log_paths

CONTROLLED_CHOICES = ("sdc", "vehicles", "all")
GOAL_BEHAVIORS = ("continue", "remove")


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    """Static environment configuration (hashable).

    init_steps: log steps 0..init_steps-1 initialise the episode; the current step is
      `init_steps - 1` (WOMD: 11 -> step 10).
    history_length: K, the states kept for observations (current included).
    controlled: which objects the policy drives: the ego ("sdc"), every valid vehicle
      ("vehicles", multi-agent), or every valid object ("all").
    non_ego_agent: the model of every other object: "log", "constant_velocity", "idm".
    grad_through_agents: let gradients flow through the non-policy objects' models
      (reactive agents respond to the policy); off by default, so the backward pass
      only differentiates the policy-driven objects.
    control_parked: the multi-agent modes also drive objects that start within
      GOAL_RADIUS of their goal (parked cars); by default those follow `non_ego_agent`
      (`controlled_mask`).
    goal_behavior: what a policy-driven object does once it has reached its goal (within
      GOAL_RADIUS of its last valid logged position, its episode's end in self-play):
      "continue" drives on under the policy; "remove" takes it out of the scene (invalid
      from the next step on: no contact, no offroad, no observation), as goal-reaching
      self-play benchmarks end an agent there. An object whose logged path is shorter than
      GOAL_RADIUS (a parked car) is never removed. Multi-agent modes only: with
      `controlled="sdc"` the ego's episode runs to the horizon whatever this says.
    """

    init_steps: int = 11
    history_length: int = 5
    dynamics: Dynamics = InvertibleBicycle()
    controlled: str = "sdc"
    non_ego_agent: str = "log"
    grad_through_agents: bool = False
    control_parked: bool = False
    goal_behavior: str = "continue"

    def __post_init__(self):
        if self.goal_behavior not in GOAL_BEHAVIORS:
            raise ValueError(f"EnvConfig.goal_behavior must be one of {GOAL_BEHAVIORS}, got {self.goal_behavior!r}")
        if self.init_steps < 1:
            raise ValueError(f"EnvConfig.init_steps must be >= 1, got {self.init_steps}")
        if self.history_length < 1:
            raise ValueError(f"EnvConfig.history_length must be >= 1, got {self.history_length}")
        if self.controlled not in CONTROLLED_CHOICES:
            raise ValueError(f"EnvConfig.controlled must be one of {CONTROLLED_CHOICES}, got {self.controlled!r}")
        if self.non_ego_agent not in ("log", "constant_velocity", "idm"):
            raise ValueError("EnvConfig.non_ego_agent must be 'log', 'constant_velocity' or 'idm', "
                             f"got {self.non_ego_agent!r}")

    @property
    def action_dim(self) -> int:
        return self.dynamics.action_dim


@struct.dataclass
class EnvParams:
    """Traced constants of a step: the non-policy agents' models and the dynamics' action limits."""

    agents: agents_lib.AgentParams = agents_lib.AgentParams()
    action_limits: jax.Array | None = None  # [A] physical limits of the action (None: the dynamics' own)


def env_params(config: EnvConfig, agents: agents_lib.AgentParams | None = None) -> EnvParams:
    """The `EnvParams` of `config`: default agent constants and the dynamics' configured limits as an array."""
    limits = getattr(config.dynamics, "limits", None)
    return EnvParams(agents=agents_lib.AgentParams() if agents is None else agents,
                     action_limits=None if limits is None else jnp.asarray(limits, jnp.float32))


@struct.dataclass
class StepInfo:
    """What a step reports besides the new state."""

    action: jax.Array  # [M, A] the physical (clipped, de-normalised) action of each controlled slot
    log_state: ObjectState  # [N] the log at the new timestep


def controlled_mask(scenario: Scenario, controlled: str, current: ObjectState | None = None,
                    control_parked: bool = False) -> jax.Array:
    """Objects `[N]` the policy drives under `EnvConfig.controlled`.

    "sdc": the ego. "vehicles" / "all": every valid vehicle (the SDC included) / object.
    Given the episode's initial state `current`, the multi-agent modes keep, besides the
    SDC, only the objects valid in it that start farther than GOAL_RADIUS from their
    goal (`paths.goal_far`, GPUDrive's and PufferDrive's rule): a parked car has nothing
    to drive and follows the non-ego model instead. `control_parked` keeps them too.
    """
    meta = scenario.object_metadata
    if controlled == "sdc":
        return meta.is_sdc
    if controlled == "vehicles":
        mask = meta.is_valid & ((meta.object_types == TYPE_VEHICLE) | meta.is_sdc)
    else:
        mask = meta.is_valid
    if current is None or control_parked:
        return mask
    return mask & (meta.is_sdc | (current.valid & goal_far(scenario, jnp.stack([current.x, current.y], -1))))


def controlled_slots(scenario: Scenario, controlled: str) -> jax.Array:
    """Object indices `[M]` the dynamics may drive: `[sdc]` (M=1) or every object (M=N).

    Indices are unique, so scattering the driven states back is well defined; which
    slots are actually policy-driven is `agent_kind == AGENT_POLICY`.
    """
    if controlled == "sdc":
        return scenario.object_metadata.sdc_index[None]
    return jnp.arange(scenario.num_objects, dtype=jnp.int32)


class Env:
    """Closed-loop simulator over one scenario. Methods are pure; `jit` / `vmap` them freely."""

    def __init__(self, config: EnvConfig = EnvConfig(), params: agents_lib.AgentParams | None = None):
        self.config = config
        self.params = agents_lib.AgentParams() if params is None else params

    @property
    def dynamics(self) -> Dynamics:
        return self.config.dynamics

    def reset(self, scenario: Scenario, key: jax.Array, agent_kind: jax.Array | None = None,
              with_idm: bool | None = None, timestep: jax.Array | int | None = None) -> SimState:
        """Initial state from the log at steps `0..init_steps-1`.

        `agent_kind` `[N]` overrides the per-object models chosen by the config.
        `with_idm` (static) says whether any object may be IDM, which decides whether
        the IDM model is carried and computed at all; by default it is when the config
        asks for IDM agents or `agent_kind` is given. `timestep` (may be traced) starts
        the episode at another log step instead of `init_steps - 1`: the state the
        simulator would hold had it replayed the log up to there (behaviour cloning's
        observation at a sampled log step).
        """
        with jax.named_scope("env.reset"):
            cfg = self.config
            t0 = cfg.init_steps - 1 if timestep is None else timestep
            k = cfg.history_length
            steps = t0 - k + 1 + jnp.arange(k)
            history = jax.vmap(lambda t: trajectory_at(scenario.log_trajectory, t), out_axes=-1)(steps)
            current = trajectory_at(scenario.log_trajectory, t0)
            # IDM memory (and the IDM computation) only when some object can be IDM.
            if with_idm is None:
                with_idm = agent_kind is not None or cfg.non_ego_agent == "idm"
            if agent_kind is None:
                default = agents_lib.AGENT_NAMES[cfg.non_ego_agent]
                policy = controlled_mask(scenario, cfg.controlled, current, cfg.control_parked)
                agent_kind = jnp.where(policy, agents_lib.AGENT_POLICY, default).astype(jnp.int32)
            timestep = jnp.asarray(t0, jnp.int32)
            return SimState(timestep=timestep, current=current, history=history,
                            agent_kind=jnp.asarray(agent_kind, jnp.int32),
                            controlled=controlled_slots(scenario, cfg.controlled),
                            agent_state=agents_lib.init_agent_state(scenario, current, timestep, with_idm),
                            key=key)

    def step(self, scenario: Scenario, state: SimState, action: jax.Array,
             params: EnvParams | agents_lib.AgentParams | None = None,
             log_next: ObjectState | None = None,
             controlled: jax.Array | None = None) -> tuple[SimState, StepInfo]:
        """Advances one step.

        `params` (traced): `EnvParams`, or `AgentParams` alone (the dynamics' own
        limits), or None (the env's `AgentParams` and the dynamics' own limits).

        `log_next` `[N]` is the log at `state.timestep + 1` (`trajectory_at`) for a caller
        that has read it already: `rollout` reads its whole horizon at once
        (`trajectory_window`), which is cheaper than one `[N, T]` column per step.

        `action` is `[M, A]` (one row per controlled slot, `SimState.controlled`), `[A]`
        (broadcast to every slot) or `[N, A]` (per object; the controlled rows are used).
        Only the M controlled objects go through the dynamics, so a single-ego episode
        costs one bicycle update per step however many objects the scenario holds.

        `controlled` `[N]` bool (an actor's `ActorOutput.controlled`) narrows the objects the
        action drives: a policy object (`AGENT_POLICY`) outside it follows the log this step,
        every other object its agent model as always. None: every policy object is driven.
        """
        with jax.named_scope("env.step"):
            limits = None
            if isinstance(params, EnvParams):
                params, limits = params.agents, params.action_limits
            params = self.params if params is None else params
            slots = state.controlled
            num_slots, num_objects = slots.shape[0], state.current.x.shape[-1]
            if action.ndim == 2 and action.shape[0] == num_objects and num_objects != num_slots:
                action = action[slots]
            action = jnp.broadcast_to(action, (num_slots, self.dynamics.action_dim))
            if log_next is None:
                log_next = trajectory_at(scenario.log_trajectory, state.timestep + 1)
            others, agent_state = agents_lib.step_non_policy(
                scenario, state.current, state.timestep, state.agent_kind, state.agent_state, params,
                getattr(self.dynamics, "dt", 0.1), log_next)
            if not self.config.grad_through_agents:
                others = jax.lax.stop_gradient(others)
            driven = self.dynamics.forward(jax.tree.map(lambda a: a[slots], state.current), action, limits)
            use = state.agent_kind[slots] == agents_lib.AGENT_POLICY  # [M]
            if controlled is not None:
                use = use & controlled[slots]
            current = jax.tree.map(lambda o, d: o.at[slots].set(jnp.where(use, d, o[slots])), others, driven)
            if self.config.goal_behavior == "remove" and self.config.controlled != "sdc":
                current = current.replace(valid=current.valid & ~at_goal(scenario, state))
            history = jax.tree.map(lambda h, c: jnp.concatenate([h[..., 1:], c[..., None]], -1),
                                   state.history, current)
            timestep = state.timestep + 1
            new_state = state.replace(timestep=timestep, current=current, history=history, agent_state=agent_state)
            info = StepInfo(action=jnp.where(use[:, None], self.dynamics.clip(action, limits), 0.0),
                            log_state=log_next)
            return new_state, info

    def controlled_states(self, state: SimState) -> ObjectState:
        """The current states `[M]` of the controlled slots."""
        return jax.tree.map(lambda a: a[state.controlled], state.current)


def at_goal(scenario: Scenario, state: SimState) -> jax.Array:
    """`[N]` bool: the policy-driven objects that are valid within GOAL_RADIUS of their goal at `state` and whose
    logged path is longer than that (`EnvConfig.goal_behavior="remove"` takes them out at the next step)."""
    paths = log_paths(scenario)
    near = goal_distance(paths, jnp.stack([state.current.x, state.current.y], -1)) <= GOAL_RADIUS
    policy = state.agent_kind == agents_lib.AGENT_POLICY
    return policy & state.current.valid & near & (paths.goal_s > GOAL_RADIUS)


def expert_actions(scenario: Scenario, dynamics: Dynamics,
                   limits: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Inverse-dynamics actions of the log: `[N, T-1, A]` and validity `[N, T-1]`.

    Action t moves the logged state at t to the logged state at t+1; `limits` `[A]`
    (traced) replaces the dynamics' configured action limits.
    """
    traj = scenario.log_trajectory
    fields = ("x", "y", "z", "vel_x", "vel_y", "yaw", "length", "width", "height", "valid")
    s0 = ObjectState(**{f: getattr(traj, f)[..., :-1] for f in fields})
    s1 = ObjectState(**{f: getattr(traj, f)[..., 1:] for f in fields})
    return dynamics.inverse(s0, s1, limits)


def num_closed_loop_steps(scenario: Scenario, config: EnvConfig) -> int:
    """Steps from the initial state to the end of the log (WOMD: 80)."""
    return scenario.num_steps - config.init_steps

