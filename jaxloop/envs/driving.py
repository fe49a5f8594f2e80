"""A gymnax-style functional environment over the closed-loop simulator.

    env = DrivingEnv.from_source("procedural:train:64")
    params = env.default_params
    obs, state = env.reset(key, params)                                 # obs [D]
    obs, state, reward, done, info = env.step(key, state, action, params)  # action [A]

The interface is gymnax's (`reset(key, params)`, `step(key, state, action, params)`,
`observation_space(params)`, `action_space(params)`, `default_params`), so gymnax
wrappers and trainers written against it (purejaxrl, rejax, ...) drive jaxloop as they
drive any gymnax environment. Everything is a pure function of pytrees: `jax.vmap`
`reset` and `step` over keys (and states) for a batch of environments, `jax.jit` them.

One episode: `reset` draws a scenario from the bank (uniformly, with the key) and
starts it from the log (`Env.reset`); each `step` applies the ego's action through the
dynamics (`Env.step`), scores the transition (`rewards.step_reward` under
`EnvParams.reward_weights`) and observes the new state. The observation is the flat,
ego-centric feature vector of `jaxloop.policy.observation` (`flatten(features(...))`),
the one jaxloop's own policies read. An episode ends after `max_steps_in_episode` steps
(truncation, at most the log's closed-loop steps) or, if asked (`terminate_on`), on the
ego's first at-fault collision or offroad step (termination). `step` then auto-resets:
it returns the first observation and state of a fresh episode, while `reward`, `done`
and `info` are those of the step that ended the old one (gymnax's convention).

The scenario bank is a field of `EnvParams` (traced, like the reward weights), so one
compiled step serves any bank of the same shapes. Pass the params as an argument of
the jitted function rather than closing over them: a closed-over bank is baked into the
program as a constant. `EnvState` keeps the scenario's index into the bank, not the
scenario, so a state stays small whatever the size of the map.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxloop.envs.spaces import Box
from jaxloop.policy.observation import ObsConfig, features, flat_dim, flatten
from jaxloop.sim import metrics as metrics_lib
from jaxloop.sim import rewards as rewards_lib
from jaxloop.sim.agents import AgentParams
from jaxloop.sim.datatypes import Scenario, SimState, trajectory_at
from jaxloop.sim.dynamics import InvertibleBicycle
from jaxloop.sim.env import Env, EnvConfig, env_params
from jaxloop.sim.env import EnvParams as SimParams

TERMINATION_CHOICES = ("collision", "offroad")

RewardFn = Callable[[Scenario, SimState, SimState, rewards_lib.RewardWeights], jax.Array]


@struct.dataclass
class EnvParams:
    """Traced parameters of a `DrivingEnv` (vmap, sweep or swap them without recompiling)."""

    scenarios: Scenario  # [S, ...] the bank episodes are drawn from
    reward_weights: rewards_lib.RewardWeights
    sim_params: SimParams  # the simulator's: constants of the non-ego models (IDM), the dynamics' action limits
    max_steps_in_episode: int | jax.Array  # [] steps before truncation (capped at the log's closed-loop steps)

    @property
    def num_scenarios(self) -> int:
        return int(np.shape(self.scenarios.log_trajectory.x)[0])


@struct.dataclass
class EnvState:
    """State of one environment: the simulator state and where the episode stands."""

    sim: SimState  # the closed-loop state of the current scenario
    scenario_index: jax.Array  # [] int32, index of the scenario in `EnvParams.scenarios`
    episode_step: jax.Array  # [] int32, steps taken in this episode
    episode_return: jax.Array  # [] float32, sum of the episode's rewards so far


def default_env_config(init_steps: int = 11) -> EnvConfig:
    """The ego-controlled env with the bicycle's actions normalised to [-1, 1] (as jaxloop's trainers use)."""
    return EnvConfig(init_steps=init_steps, dynamics=InvertibleBicycle(normalize_actions=True), controlled="sdc")


def _as_bank(scenarios: Scenario) -> Scenario:
    """A batched scenario `[S, ...]` (an unbatched one gets S=1), validated, as device arrays."""
    ndim = np.ndim(scenarios.log_trajectory.x)
    if ndim == 2:
        scenarios = jax.tree.map(lambda a: np.asarray(a)[None], scenarios)
    elif ndim != 3:
        shape = list(np.shape(scenarios.log_trajectory.x))
        raise ValueError("DrivingEnv: scenarios must be one Scenario ([N, T] trajectories) or a bank with one "
                         f"leading axis ([S, N, T]); got log_trajectory.x of shape {shape}")
    scenarios.validate()
    return jax.tree.map(jnp.asarray, scenarios)


class DrivingEnv:
    """Gymnax-style environment: the ego drives scenarios drawn from a bank. Methods are pure.

    scenarios: the bank, a `Scenario` with one leading axis `[S, ...]` (e.g. from
      `jaxloop.data.load_source`; see `from_source`).
    env_config: the simulator (static); must control the ego only (`controlled="sdc"`).
      Default: `default_env_config()`, the bicycle with actions in [-1, 1].
    obs_config: sizes of the observation (static).
    reward_weights: the default `EnvParams.reward_weights` (a `RewardWeights` or a preset name).
    agent_params: the non-ego models' constants in the default `EnvParams.sim_params`.
    max_steps_in_episode: the default episode length; default all closed-loop steps of the log.
    terminate_on: end an episode early on the ego's at-fault "collision" and / or "offroad" (static).
    reward_fn: `fn(scenario, prev_state, state, weights) -> []`, default `rewards.step_reward`.

    The reward weights are traced, so every term of `step_reward` is computed, also those
    whose weight is 0 (a concrete 0 would skip the headway and conflict terms, about a
    third of a step's cost): a `reward_fn` that ignores its `weights` argument and closes
    over a fixed `RewardWeights` gets that back.
    """

    def __init__(self, scenarios: Scenario, env_config: EnvConfig | None = None,
                 obs_config: ObsConfig = ObsConfig(),
                 reward_weights: rewards_lib.RewardWeights | str = "progress_safety",
                 agent_params: AgentParams | None = None, max_steps_in_episode: int | None = None,
                 terminate_on: Sequence[str] = (), reward_fn: RewardFn = rewards_lib.step_reward):
        self.config = default_env_config() if env_config is None else env_config
        if self.config.controlled != "sdc":
            raise ValueError(f"DrivingEnv: controlled must be 'sdc' (one ego, one action [A]); got "
                             f"{self.config.controlled!r}")
        self.obs_config = obs_config
        self.terminate_on = tuple(terminate_on)
        for name in self.terminate_on:
            if name not in TERMINATION_CHOICES:
                raise ValueError(f"DrivingEnv: terminate_on entries must be in {TERMINATION_CHOICES}, got {name!r}")
        self.reward_fn = reward_fn
        self.sim_env = Env(self.config)
        bank = _as_bank(scenarios)
        self.num_steps = int(bank.log_trajectory.x.shape[-1])  # T of the bank's logs
        self.available_steps = self.num_steps - self.config.init_steps
        if self.available_steps < 1:
            raise ValueError(f"DrivingEnv: the logs have T={self.num_steps} steps, not more than "
                             f"init_steps={self.config.init_steps}: no closed-loop step is left")
        if max_steps_in_episode is None:
            max_steps_in_episode = self.available_steps
        if not 1 <= max_steps_in_episode <= self.available_steps:
            raise ValueError(f"DrivingEnv: max_steps_in_episode must be in [1, {self.available_steps}] "
                             f"(T={self.num_steps} minus init_steps={self.config.init_steps}), "
                             f"got {max_steps_in_episode}")
        if isinstance(reward_weights, str):
            reward_weights = rewards_lib.get_preset(reward_weights)
        self._default_params = EnvParams(
            scenarios=bank, reward_weights=reward_weights,
            sim_params=env_params(self.config, agent_params),
            max_steps_in_episode=int(max_steps_in_episode))

    @classmethod
    def from_source(cls, spec: str, num_objects: int | None = None, env_config: EnvConfig | None = None,
                    **kwargs) -> "DrivingEnv":
        """An env over the scenarios of a data spec (`jaxloop.data.load_source`: toy, procedural, files, caches).

        The env starts episodes at the source's `init_steps`; an `env_config` given with
        another `init_steps` is an error. `kwargs` go to `DrivingEnv`.
        """
        from jaxloop.data import init_steps_of, load_source
        scenarios, infos = load_source(spec, num_objects=num_objects)
        init_steps = init_steps_of(infos, f"data spec {spec!r}")
        if env_config is None:
            env_config = default_env_config(init_steps)
        elif env_config.init_steps != init_steps:
            raise ValueError(f"DrivingEnv.from_source: data spec {spec!r} starts episodes at init_steps={init_steps}, "
                             f"env_config has init_steps={env_config.init_steps}")
        return cls(scenarios, env_config, **kwargs)

    # -- the gymnax interface -------------------------------------------------------------------

    @property
    def default_params(self) -> EnvParams:
        return self._default_params

    @property
    def name(self) -> str:
        return "jaxloop-driving"

    @property
    def num_actions(self) -> int:
        return self.config.action_dim

    @property
    def obs_dim(self) -> int:
        """D, the length of an observation."""
        return flat_dim(self.obs_config, self.config.history_length)

    def observation_space(self, params: EnvParams | None = None) -> Box:
        """`Box` `[D]` float32, unbounded (features are scaled to O(1), see `ObsConfig`)."""
        del params
        return Box(-np.inf, np.inf, (self.obs_dim,), jnp.float32)

    def action_space(self, params: EnvParams | None = None) -> Box:
        """`Box` `[A]` float32 of the dynamics' action: [-1, 1] when normalised, else the physical limits
        (`params.sim_params.action_limits`, concrete).

        Out-of-range actions are clipped by the dynamics, never rejected.
        """
        params = self.default_params if params is None else params
        dyn = self.config.dynamics
        limits = params.sim_params.action_limits
        if limits is None:  # state dynamics: the action is the next pose itself
            low, high = -np.inf, np.inf
        elif dyn.normalize_actions:
            low, high = -1.0, 1.0
        else:
            low, high = -np.asarray(limits), np.asarray(limits)
        return Box(low, high, (dyn.action_dim,), jnp.float32)

    def reset(self, key: jax.Array, params: EnvParams | None = None) -> tuple[jax.Array, EnvState]:
        """A fresh episode on a scenario drawn uniformly from the bank: (obs `[D]`, state)."""
        params = self.default_params if params is None else params
        key_index, key_sim = jax.random.split(key)
        index = jax.random.randint(key_index, (), 0, params.num_scenarios, jnp.int32)
        return self.reset_to(key_sim, index, params)

    def reset_to(self, key: jax.Array, scenario_index: jax.Array | int,
                 params: EnvParams | None = None) -> tuple[jax.Array, EnvState]:
        """A fresh episode on bank scenario `scenario_index` (a traced or static int): (obs `[D]`, state)."""
        params = self.default_params if params is None else params
        with jax.named_scope("envs.reset"):
            index = jnp.asarray(scenario_index, jnp.int32)
            scenario = self.scenario(params, index)
            sim = self.sim_env.reset(scenario, key)
            state = EnvState(sim=sim, scenario_index=index, episode_step=jnp.zeros((), jnp.int32),
                             episode_return=jnp.zeros((), jnp.float32))
            return self.observe(scenario, sim), state

    def step(self, key: jax.Array, state: EnvState, action: jax.Array,
             params: EnvParams | None = None) -> tuple[jax.Array, EnvState, jax.Array, jax.Array, dict]:
        """One step with auto-reset: (obs `[D]`, state, reward `[]`, done `[]` bool, info).

        When the step ends the episode, obs and state are those of a fresh episode
        (drawn with `key`); reward, done and info are the finished step's. `info`:
          episode_step `[]` int32: steps of the episode after this one (its length when done);
          timestep `[]` int32: the log index the step reached;
          scenario_index `[]` int32: the scenario the step ran in;
          episode_return `[]`: the episode's return including this step (its return when done);
          truncated / terminated `[]` bool: done by the step limit / by `terminate_on`;
          discount `[]`: 0 on termination, else 1 (bootstrap through truncation);
          collision / offroad `[]` bool: the ego's at-fault contact / offroad this step
            (only those named in `terminate_on`).
        """
        params = self.default_params if params is None else params
        key_step, key_reset = jax.random.split(key)
        obs_step, state_step, reward, done, info = self.step_env(key_step, state, action, params)
        obs_reset, state_reset = self.reset(key_reset, params)
        with jax.named_scope("envs.auto_reset"):
            pick = lambda fresh, old: jnp.where(done, fresh, old)
            state = jax.tree.map(pick, state_reset, state_step)
            obs = pick(obs_reset, obs_step)
        return obs, state, reward, done, info

    # -- without auto-reset ---------------------------------------------------------------------

    def step_env(self, key: jax.Array, state: EnvState, action: jax.Array,
                 params: EnvParams | None = None) -> tuple[jax.Array, EnvState, jax.Array, jax.Array, dict]:
        """One step without auto-reset (gymnax's `step_env`): the state after a final step is the final state."""
        params = self.default_params if params is None else params
        action = self.check_action(action)
        with jax.named_scope("envs.step"):
            scenario = self.scenario(params, state.scenario_index)
            prev = state.sim.replace(key=key)
            sim, _ = self.sim_env.step(scenario, prev, action, params.sim_params)
            reward = jnp.asarray(self.reward_fn(scenario, prev, sim, params.reward_weights), jnp.float32)
            episode_step = state.episode_step + 1
            limit = jnp.minimum(params.max_steps_in_episode, self.available_steps)
            truncated = episode_step >= limit
            info = {}
            terminated = jnp.zeros((), bool)
            for name, flag in self._terminal_flags(scenario, prev, sim).items():
                info[name] = flag
                terminated = terminated | flag
            done = truncated | terminated
            episode_return = state.episode_return + reward
            info.update(episode_step=episode_step, timestep=sim.timestep, scenario_index=state.scenario_index,
                        episode_return=episode_return, truncated=truncated & ~terminated, terminated=terminated,
                        discount=1.0 - terminated.astype(jnp.float32))
            new_state = EnvState(sim=sim, scenario_index=state.scenario_index, episode_step=episode_step,
                                 episode_return=episode_return)
            return self.observe(scenario, sim), new_state, reward, done, info

    # -- pieces ---------------------------------------------------------------------------------

    def scenario(self, params: EnvParams, index: jax.Array) -> Scenario:
        """Bank scenario `index` (an unbatched `Scenario`)."""
        return jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, index, 0, keepdims=False), params.scenarios)

    def observe(self, scenario: Scenario, sim: SimState) -> jax.Array:
        """The ego's flat feature vector `[D]` (`flatten(features(...))`)."""
        return flatten(features(scenario, sim, scenario.object_metadata.sdc_index, self.obs_config))

    def check_action(self, action: jax.Array) -> jax.Array:
        """`action` as float32 `[A]`; a wrong shape raises `ValueError` at trace time."""
        action = jnp.asarray(action)
        dyn = self.config.dynamics
        expected = (dyn.action_dim,)
        if action.shape != expected:
            raise ValueError(f"DrivingEnv.step: action must have shape {expected} ({', '.join(dyn.action_names)} of "
                             f"{type(dyn).__name__}, one ego); got {action.shape}. A batch of actions goes through "
                             "jax.vmap(env.step) with one row per environment.")
        return action.astype(jnp.float32)

    def _terminal_flags(self, scenario: Scenario, prev: SimState, sim: SimState) -> dict[str, jax.Array]:
        """The ego's at-fault collision / offroad `[]` bool on this step, for the names in `terminate_on`."""
        if not self.terminate_on:
            return {}
        ego = scenario.object_metadata.is_sdc
        log_state = trajectory_at(scenario.log_trajectory, sim.timestep)
        flags = {}
        if "collision" in self.terminate_on:
            e = metrics_lib.take_object(sim.current, ego)
            _, lateral = metrics_lib.route_progress(jnp.stack([e.x, e.y]), scenario.route)
            contact = metrics_lib.contact_classes(
                sim.current, log_state, ego, metrics_lib.ego_in_lane(lateral, scenario.route),
                metrics_lib.recorded_objects(scenario), prev=prev.current)
            flags["collision"] = jnp.any(contact == metrics_lib.CONTACT_AT_FAULT)
        if "offroad" in self.terminate_on:
            valid, off, artefact = metrics_lib.ego_offroad_corners(sim.current, log_state, scenario.roadmap, ego)
            flags["offroad"] = valid & jnp.any(off & ~artefact)
        return flags
