"""One experiment, one frozen tree: what `jaxloop train` parses, checkpoints save and presets name.

    Experiment
      data   DataConfig     the sources, and the log steps before the closed loop (`init_steps`)
      env    EnvSettings    dynamics, who the policy drives (ego or self-play), other traffic, horizon,
                            reward preset, training augmentation
      obs    ObsConfig      observation sizes and the history length K
      model  ModelConfig    the policy network
      algo   BC | APG | PPO | GRPO   the algorithm and its settings (a tagged union)
      eval   EvalSettings   held-out data and the perturbation suite
      gate   GateConfig     the safety gate's thresholds

Everything here decides shapes or code paths, so it is hashable, validated in
`__post_init__` and never traced. What may be swept, vmapped or annealed lives apart
in the traced `Params` pytree (reward weights, agent constants, dynamics limits):
`params_of(experiment)` gives its defaults, and `make_train` / `train_step` take it as
an argument.

`to_dict` / `from_dict` round-trip an `Experiment` through plain JSON (the algorithm
carries its tag, `"kind": "apg"`); `from_saved` also reads the settings saved by runs
and exports that predate this tree (`from_legacy_train_config`).

On the command line (tyro): `jaxloop train [--flags] [algo:bc|algo:apg|algo:ppo|algo:grpo]
[--algo.FLAG ...]`, e.g. `jaxloop train --data.source procedural:train:1024 algo:apg
--algo.truncate-every 8 --env.reward-preset closed_loop_safety`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Annotated, Any, ClassVar, Literal, Union

import jax
import jax.numpy as jnp
import tyro
from flax import struct

from jaxloop.policy.networks import ModelConfig
from jaxloop.policy.observation import ObsConfig
from jaxloop.sim.agents import AgentParams
from jaxloop.sim.dynamics import make_dynamics
from jaxloop.sim.env import CONTROLLED_CHOICES, EnvConfig, EnvParams, env_params
from jaxloop.sim.rewards import PRESETS, RewardWeights, get_preset

DYNAMICS = ("bicycle", "delta_local", "delta_global")
ALGOS = ("bc", "apg", "ppo", "grpo")


def _require_finite(config: Any) -> None:
    """Every float field of a config section is finite: NaN slips through `<` / `>` range checks."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{type(config).__name__}.{f.name} must be a finite number, got {value}")


# --- sections ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the scenarios come from (`jaxloop.data.sources`)."""

    source: str = "toy"  # "toy", procedural:SPLIT:NUM[:SEED], a cache, raw files; SPEC@W,... for a mixture
    # Log steps 0..init_steps-1 initialise an episode. A property of the source, not a flag:
    # `jaxloop train` sets it from the loaded scenarios' infos (`formats.init_steps_of`; WOMD 11, AV2 50).
    init_steps: Annotated[int, tyro.conf.Suppress] = 11
    num_toy: int = 64  # scenarios of source "toy"
    num_objects: int = 128  # N object slots when reading raw files
    select: Literal["nearest", "error"] = "nearest"  # raw files with more objects than N
    skip_invalid: bool = False  # raw files: skip (and count) invalid files and records

    def __post_init__(self):
        if self.init_steps < 1:
            raise ValueError(f"DataConfig.init_steps must be >= 1, got {self.init_steps}")
        if self.num_toy < 1 or self.num_objects < 1:
            raise ValueError(f"DataConfig: num_toy and num_objects must be >= 1, got {self.num_toy}, "
                             f"{self.num_objects}")


@dataclasses.dataclass(frozen=True)
class EnvSettings:
    """The closed-loop environment of training: static parts (the traced ones are in `Params`)."""

    dynamics: Literal["bicycle", "delta_local", "delta_global"] = "bicycle"
    # Which objects the policy drives: the ego ("sdc"), or self-play with one shared policy
    # driving every valid vehicle ("vehicles") or every valid object ("all"), each from its
    # own observation with its own reward / loss (`jaxloop.train.common`, "Self-play").
    controlled: Literal["sdc", "vehicles", "all"] = "sdc"
    non_ego_agent: Literal["log", "constant_velocity", "idm"] = "log"
    horizon: int = 80  # closed-loop steps per episode (apg / ppo / grpo)
    reward_preset: str = "progress_safety"  # default reward weights (`jaxloop.sim.rewards.PRESETS`)
    # Closed-loop episodes (apg / grpo) get a random crossing pedestrian or cyclist with
    # this probability, the other traffic then reactive (IDM): events with no expert log.
    crosser_prob: float = 0.0
    # ... and start off the logged ego state (noise up to this fraction of 1 m, 0.1 rad, 1 m/s).
    start_noise: float = 0.0
    # Self-play: an agent's episode ends at its first collision step too (it always ends at the
    # end of its logged route: goal reached or log ended). A finished agent keeps driving under
    # the policy (see `goal_behavior`); its later transitions are masked out of every loss, reward
    # and advantage.
    done_on_collision: bool = True
    # Self-play: ... and at its first offroad step.
    done_on_offroad: bool = True
    # Self-play: ... and when it reaches its goal (off: its loss goes on to the horizon or its log's end, so it
    # learns what to do at the end of its route; with goal_behavior "continue" only).
    done_at_goal: bool = True
    # Self-play: also drive the objects that start within GOAL_RADIUS (2 m) of their goal (parked
    # cars). Off: they follow `non_ego_agent`, as GPUDrive and PufferDrive leave them to the log.
    control_parked: bool = False
    # Self-play: a finished agent that reached its goal drives on ("continue") or leaves the scene ("remove",
    # `jaxloop.sim.env.EnvConfig.goal_behavior`); an evaluation of the run drives as it trained unless told otherwise.
    goal_behavior: Literal["continue", "remove"] = "continue"

    def __post_init__(self):
        _require_finite(self)
        if self.goal_behavior != "continue" and self.controlled == "sdc":
            raise ValueError(f"EnvSettings.goal_behavior={self.goal_behavior!r} needs a multi-agent mode "
                             "(controlled 'vehicles' / 'all')")
        if not self.done_at_goal and self.goal_behavior == "remove":
            raise ValueError("EnvSettings.done_at_goal=False needs goal_behavior='continue': a removed agent has no "
                             "episode past its goal")
        if self.controlled not in CONTROLLED_CHOICES:
            raise ValueError(f"EnvSettings.controlled must be one of {CONTROLLED_CHOICES}, got {self.controlled!r}")
        if self.dynamics not in DYNAMICS:
            raise ValueError(f"EnvSettings.dynamics must be one of {DYNAMICS}, got {self.dynamics!r}")
        if self.horizon < 1:
            raise ValueError(f"EnvSettings.horizon must be >= 1, got {self.horizon}")
        if self.reward_preset not in PRESETS:
            raise ValueError(f"EnvSettings.reward_preset: unknown preset {self.reward_preset!r}; expected one of "
                             f"{sorted(PRESETS)}")
        if self.start_noise < 0:
            raise ValueError(f"EnvSettings.start_noise must be >= 0, got {self.start_noise}")
        if not 0.0 <= self.crosser_prob <= 1.0:
            raise ValueError(f"EnvSettings.crosser_prob must be in [0, 1], got {self.crosser_prob}")


@dataclasses.dataclass(frozen=True)
class BC:
    """Open-loop behaviour cloning on inverse-dynamics expert actions."""

    kind: ClassVar[str] = "bc"
    samples_per_scenario: int = 4  # log steps t drawn per scenario and step
    loss: Literal["auto", "mse", "nll"] = "auto"  # auto: mse for a deterministic head, nll for a Gaussian one

    def __post_init__(self):
        if self.samples_per_scenario < 1:
            raise ValueError(f"BC.samples_per_scenario must be >= 1, got {self.samples_per_scenario}")
        if self.loss not in ("auto", "mse", "nll"):
            raise ValueError(f"BC.loss must be 'auto', 'mse' or 'nll', got {self.loss!r}")


@dataclasses.dataclass(frozen=True)
class APG:
    """Analytic policy gradients through the simulator."""

    kind: ClassVar[str] = "apg"
    truncate_every: int = 0  # W > 0: stop_gradient on the carry every W steps (truncated BPTT)
    grad_through_agents: bool = False  # let gradients flow through reactive (non-policy) objects
    remat: bool = True  # jax.checkpoint per step
    stochastic: bool = False  # reparameterised tanh-Gaussian samples instead of the mean action
    # > 0: loss = APG loss + bc_coef x the behaviour-cloning action MSE on the same batch (every controlled
    # agent's expert action at bc_samples sampled log steps per scenario): self-play regularised toward the logs
    bc_coef: float = 0.0
    bc_samples: int = 4

    def __post_init__(self):
        if self.truncate_every < 0:
            raise ValueError(f"APG.truncate_every must be >= 0, got {self.truncate_every}")
        if self.bc_coef < 0 or self.bc_samples < 1:
            raise ValueError(f"APG: bc_coef must be >= 0 and bc_samples >= 1, got {self.bc_coef}, {self.bc_samples}")


@dataclasses.dataclass(frozen=True)
class PPO:
    """PPO on the closed-loop reward (the model gets a value head)."""

    kind: ClassVar[str] = "ppo"
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    num_epochs: int = 4
    num_minibatches: int = 4
    value_coef: float = 0.5
    value_huber_delta: float = 1.0
    entropy_coef: float = 0.0
    normalize_advantages: bool = True

    def __post_init__(self):
        _require_finite(self)
        if not 0 < self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            raise ValueError(f"PPO: need 0 < gamma <= 1 and 0 <= gae_lambda <= 1, got {self}")
        if self.num_epochs < 1 or self.num_minibatches < 1 or self.clip_eps <= 0:
            raise ValueError(f"PPO: num_epochs, num_minibatches and clip_eps must be positive, got {self}")


@dataclasses.dataclass(frozen=True)
class GRPO:
    """Group-relative policy optimisation (KL to a reference policy)."""

    kind: ClassVar[str] = "grpo"
    group_size: int = 4  # G rollouts per scenario from the same start
    clip_eps: float = 0.2
    kl_coef: float = 0.05  # weight of KL(pi || reference)
    num_epochs: int = 2
    eps: float = 1e-6  # added to the group's standard deviation

    def __post_init__(self):
        _require_finite(self)
        if self.group_size < 2:
            raise ValueError(f"GRPO.group_size must be >= 2 (advantages are relative), got {self.group_size}")
        if self.num_epochs < 1 or self.clip_eps <= 0 or self.kl_coef < 0:
            raise ValueError(f"GRPO: num_epochs, clip_eps must be positive and kl_coef >= 0, got {self}")


Algo = Union[Annotated[BC, tyro.conf.subcommand("bc")], Annotated[APG, tyro.conf.subcommand("apg")],
             Annotated[PPO, tyro.conf.subcommand("ppo")], Annotated[GRPO, tyro.conf.subcommand("grpo")]]
ALGO_CLASSES: dict[str, type] = {c.kind: c for c in (BC, APG, PPO, GRPO)}


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """How the experiment pipelines evaluate the trained policy (held-out set, perturbation suite)."""

    source: str = "procedural:test:64"  # held-out scenarios
    non_ego_agent: Literal["log", "idm"] = "log"
    horizon: int | None = None  # closed-loop steps (None: to the end of the log)
    batch_size: int = 64
    suite: Literal["none", "short", "full"] = "full"  # perturbation suite (`jaxloop.eval.perturb`)
    num_perturbed: int = 0  # scenarios under each perturbation (0: every one)

    def __post_init__(self):
        if self.batch_size < 1 or self.num_perturbed < 0:
            raise ValueError(f"EvalSettings: batch_size must be >= 1 and num_perturbed >= 0, got "
                             f"{self.batch_size}, {self.num_perturbed}")
        if self.horizon is not None and self.horizon < 1:
            raise ValueError(f"EvalSettings.horizon must be None or >= 1, got {self.horizon}")


@dataclasses.dataclass(frozen=True)
class GateConfig:
    """Thresholds of the safety gate (`jaxloop.eval.gate`). Rates are fractions of scenarios."""

    failure_tolerance: float = 0.02  # candidate failure rate <= baseline's + this, clean and perturbed
    max_failure_rate: float = 0.25  # absolute, clean held-out set
    max_collision_rate: float = 0.20
    max_offroad_rate: float = 0.20
    max_red_light_rate: float = 0.10
    min_progress_ratio: float = 0.80
    max_perturbed_failure_rate: float = 0.50  # absolute, under each perturbation

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not 0.0 <= v <= (10.0 if f.name == "min_progress_ratio" else 1.0):
                raise ValueError(f"GateConfig.{f.name} out of range: {v}")


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A whole run: data, environment, observation, model, algorithm, optimiser, evaluation, gate."""

    seed: int = 0  # seeds the parameters, batches and rollouts
    steps: int = 100  # total train steps (a resumed run continues up to this number)
    batch_size: int = 16  # scenarios per step (sharded over the data axis)
    learning_rate: float = 3e-4  # Adam
    lr_decay_steps: int = 0  # > 0: cosine decay to 0.1 x learning_rate over this many updates
    max_grad_norm: float = 1.0  # global-norm gradient clip
    data: DataConfig = DataConfig()
    env: EnvSettings = EnvSettings()
    obs: ObsConfig = ObsConfig()
    model: ModelConfig = ModelConfig()
    algo: Algo = BC()
    eval: EvalSettings = EvalSettings()
    gate: GateConfig = GateConfig()

    def __post_init__(self):
        _require_finite(self)
        if self.steps < 0:
            raise ValueError(f"Experiment.steps must be >= 0, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"Experiment.batch_size must be >= 1, got {self.batch_size}")
        if self.lr_decay_steps < 0:
            raise ValueError(f"Experiment.lr_decay_steps must be >= 0, got {self.lr_decay_steps}")
        if self.learning_rate <= 0 or self.max_grad_norm <= 0:
            raise ValueError(f"Experiment: learning_rate and max_grad_norm must be positive, got "
                             f"{self.learning_rate}, {self.max_grad_norm}")
        if not isinstance(self.algo, tuple(ALGO_CLASSES.values())):
            raise ValueError(f"Experiment.algo must be one of BC, APG, PPO, GRPO, got {self.algo!r}")
        horizon = self.env.horizon
        if isinstance(self.algo, PPO) and (self.batch_size * horizon) % self.algo.num_minibatches:
            raise ValueError(f"Experiment: batch_size * env.horizon ({self.batch_size * horizon}) must divide by "
                             f"algo.num_minibatches ({self.algo.num_minibatches})")
        if isinstance(self.algo, APG) and self.algo.truncate_every and horizon % self.algo.truncate_every:
            raise ValueError(f"Experiment: env.horizon ({horizon}) must divide by algo.truncate_every "
                             f"({self.algo.truncate_every})")
        if self.model.steer_prior != "none":  # the prior's curvature scale is the dynamics' normalised action scale
            if self.env.dynamics != "bicycle":
                raise ValueError(f"Experiment: model.steer_prior={self.model.steer_prior!r} needs env.dynamics "
                                 f"'bicycle' (a curvature action), got {self.env.dynamics!r}")
            limit = self.env_config().dynamics.max_curvature
            if not math.isclose(self.model.steer_max_curvature, limit, rel_tol=1e-6):
                raise ValueError(f"Experiment: model.steer_max_curvature ({self.model.steer_max_curvature}) must "
                                 f"equal the bicycle dynamics' max_curvature ({limit})")
        if self.model.accel_prior != "none":  # the prior's acceleration scale is the dynamics' normalised one
            if self.env.dynamics != "bicycle":
                raise ValueError(f"Experiment: model.accel_prior={self.model.accel_prior!r} needs env.dynamics "
                                 f"'bicycle' (an acceleration action), got {self.env.dynamics!r}")
            if not self.obs.target_speed:
                raise ValueError(f"Experiment: model.accel_prior={self.model.accel_prior!r} needs "
                                 "obs.target_speed=True (the IDM's desired speed)")
            limit = self.env_config().dynamics.max_accel
            if not math.isclose(self.model.accel_max, limit, rel_tol=1e-6):
                raise ValueError(f"Experiment: model.accel_max ({self.model.accel_max}) must equal the bicycle "
                                 f"dynamics' max_accel ({limit})")

    @property
    def algo_name(self) -> str:
        """"bc" | "apg" | "ppo" | "grpo"."""
        return self.algo.kind

    @property
    def network(self) -> ModelConfig:
        """The model as built: PPO's always has a value head."""
        if isinstance(self.algo, PPO) and not self.model.value_head:
            return dataclasses.replace(self.model, value_head=True)
        return self.model

    @property
    def selfplay(self) -> bool:
        """Whether the policy drives more than the ego (`env.controlled` "vehicles" or "all")."""
        return self.env.controlled != "sdc"

    def env_config(self) -> EnvConfig:
        """The environment: the objects of `env.controlled` policy-driven, actions normalised to [-1, 1];
        APG's `grad_through_agents` lets gradients flow through the reactive objects' response to the policy."""
        return EnvConfig(init_steps=self.data.init_steps, history_length=self.obs.history_length,
                         dynamics=make_dynamics(self.env.dynamics, normalize_actions=True),
                         controlled=self.env.controlled,
                         non_ego_agent=self.env.non_ego_agent, control_parked=self.env.control_parked,
                         goal_behavior=self.env.goal_behavior,
                         grad_through_agents=isinstance(self.algo, APG) and self.algo.grad_through_agents)

    def same_run(self, other: "Experiment") -> bool:
        """Whether a checkpoint of `other` may be resumed as this experiment (everything but `steps` agrees)."""
        return dataclasses.replace(self, steps=0) == dataclasses.replace(other, steps=0)


# --- traced parameters ------------------------------------------------------------------------

@struct.dataclass
class Params:
    """What a compiled train step takes as traced input: sweep, vmap or anneal it without recompiling.

    reward: the RL reward / APG surrogate weights (`jaxloop.sim.rewards.RewardWeights`);
    env: the non-policy agents' constants and the dynamics' action limits (`EnvParams`).
    """

    reward: RewardWeights
    env: EnvParams


def params_of(experiment: Experiment, reward: RewardWeights | None = None,
              agents: AgentParams | None = None) -> Params:
    """The default `Params` of `experiment` as float32 arrays: its reward preset's weights, default agent
    constants and its dynamics' limits; `reward` / `agents` replace those parts."""
    reward = get_preset(experiment.env.reward_preset) if reward is None else reward
    params = Params(reward=reward, env=env_params(experiment.env_config(), agents))
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)


def stack_params(*params: Params) -> Params:
    """Several `Params` stacked on a new leading axis (for `jax.vmap` over a sweep)."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *params)


# --- JSON -------------------------------------------------------------------------------------

ALGO_TAG = "kind"


def to_dict(config: Any) -> dict:
    """Plain JSON-able dict of a (nested) config dataclass; a union member carries its `kind` tag."""
    out = {}
    if hasattr(type(config), ALGO_TAG) and type(config) in ALGO_CLASSES.values():
        out[ALGO_TAG] = config.kind
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        out[f.name] = to_dict(v) if dataclasses.is_dataclass(v) else (list(v) if isinstance(v, tuple) else v)
    return out


def _union_members(hint) -> tuple[type, ...]:
    if typing.get_origin(hint) in (Union, types.UnionType):
        members = []
        for arg in typing.get_args(hint):
            if typing.get_origin(arg) is Annotated:
                arg = typing.get_args(arg)[0]
            members.append(arg)
        return tuple(members)
    return ()


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Inverse of `to_dict`; an unknown key or algorithm tag is a `ValueError` naming it."""
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls)}
    data = {k: v for k, v in data.items() if not (k == ALGO_TAG and k not in names)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{where}: unknown config keys {sorted(unknown)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if typing.get_origin(hint) is Annotated:
            hint = typing.get_args(hint)[0]
        members = [m for m in _union_members(hint) if dataclasses.is_dataclass(m)]
        if members:
            tag = value.get(ALGO_TAG) if isinstance(value, dict) else None
            chosen = [m for m in members if getattr(m, ALGO_TAG, None) == tag]
            if not chosen:
                raise ValueError(f"{where}.{name}: {ALGO_TAG!r} must be one of "
                                 f"{[getattr(m, ALGO_TAG, m.__name__) for m in members]}, got {tag!r}")
            kwargs[name] = from_dict(chosen[0], value, f"{where}.{name}")
        elif dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(hint, value, f"{where}.{name}")
        elif typing.get_origin(hint) is tuple or (isinstance(hint, types.GenericAlias) and hint.__origin__ is tuple):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


# Keys of the JSON saved beside checkpoints and exports: the experiment, or (older runs) a TrainConfig.
EXPERIMENT_KEY = "experiment"
LEGACY_KEY = "train_config"


def from_legacy_train_config(data: dict) -> Experiment:
    """The `Experiment` of a flat `TrainConfig` dict saved by runs and exports before the experiment tree.

    Moves `init_steps` to `data`, `history_length` to `obs`, the environment fields to `env`,
    and the algorithm string with its section to the `algo` union; the other sections are dropped.
    """
    data = dict(data)
    algo = data.pop("algo", "bc")
    if algo not in ALGO_CLASSES:
        raise ValueError(f"train_config.algo: expected one of {ALGOS}, got {algo!r}")
    sections = {name: data.pop(name, {}) for name in ALGOS}
    env_keys = ("dynamics", "non_ego_agent", "horizon", "crosser_prob", "start_noise")
    env = {k: data.pop(k) for k in env_keys if k in data}
    if "reward_preset" in data:
        env["reward_preset"] = data.pop("reward_preset")
    obs = dict(data.pop("obs", {}))
    if "history_length" in data:
        obs["history_length"] = data.pop("history_length")
    source = {"init_steps": data.pop("init_steps")} if "init_steps" in data else {}
    top = {k: data.pop(k) for k in ("seed", "batch_size", "learning_rate", "lr_decay_steps", "max_grad_norm")
           if k in data}
    model = data.pop("model", {})
    if data:
        raise ValueError(f"train_config: unknown config keys {sorted(data)}")
    return from_dict(Experiment, {**top, "data": source, "env": env, "obs": obs, "model": model,
                                  "algo": {ALGO_TAG: algo, **sections[algo]}})


def from_saved(saved: dict, where: str = "config.json") -> Experiment:
    """The `Experiment` of a saved settings dict (a checkpoint's `config.json`, an export's metadata):
    its `experiment` entry, or an older run's `train_config` converted by `from_legacy_train_config`."""
    if EXPERIMENT_KEY in saved:
        return from_dict(Experiment, saved[EXPERIMENT_KEY])
    if LEGACY_KEY in saved:
        return from_legacy_train_config(saved[LEGACY_KEY])
    raise ValueError(f"{where}: no {EXPERIMENT_KEY!r} (or older {LEGACY_KEY!r}) entry; not saved by jaxloop train")
