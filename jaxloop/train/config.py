"""Static training configuration: one frozen dataclass tree, saved as JSON beside checkpoints.

`TrainConfig` holds what every algorithm shares (environment, observation, model,
optimiser, batch, horizon, reward preset) and one section per algorithm. Everything
in it decides shapes or code paths, so it is hashable and never traced.
`config_to_dict` / `config_from_dict` round-trip it through plain JSON types.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from jaxloop.policy.networks import ModelConfig
from jaxloop.policy.observation import ObsConfig
from jaxloop.sim.dynamics import make_dynamics
from jaxloop.sim.env import EnvConfig

ALGOS = ("bc", "apg", "ppo", "grpo")


def _require_finite(config: Any) -> None:
    """Every float field of a config section is finite: NaN slips through `<` / `>` range checks."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{type(config).__name__}.{f.name} must be a finite number, got {value}")

DYNAMICS = ("bicycle", "delta_local", "delta_global")


@dataclasses.dataclass(frozen=True)
class BCConfig:
    samples_per_scenario: int = 4  # log steps t drawn per scenario and step
    loss: str = "auto"  # "mse" | "nll" | "auto" (mse for a deterministic head, nll for a Gaussian one)

    def __post_init__(self):
        if self.samples_per_scenario < 1:
            raise ValueError(f"BCConfig.samples_per_scenario must be >= 1, got {self.samples_per_scenario}")
        if self.loss not in ("auto", "mse", "nll"):
            raise ValueError(f"BCConfig.loss must be 'auto', 'mse' or 'nll', got {self.loss!r}")


@dataclasses.dataclass(frozen=True)
class APGConfig:
    truncate_every: int = 0  # W > 0: stop_gradient on the carry every W steps (truncated BPTT)
    grad_through_agents: bool = False  # let gradients flow through reactive (non-policy) objects
    remat: bool = True  # jax.checkpoint per step
    stochastic: bool = False  # reparameterised tanh-Gaussian samples instead of the mean action

    def __post_init__(self):
        if self.truncate_every < 0:
            raise ValueError(f"APGConfig.truncate_every must be >= 0, got {self.truncate_every}")


@dataclasses.dataclass(frozen=True)
class PPOConfig:
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
            raise ValueError(f"PPOConfig: need 0 < gamma <= 1 and 0 <= gae_lambda <= 1, got {self}")
        if self.num_epochs < 1 or self.num_minibatches < 1 or self.clip_eps <= 0:
            raise ValueError(f"PPOConfig: num_epochs, num_minibatches and clip_eps must be positive, got {self}")


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    group_size: int = 4  # G rollouts per scenario from the same start
    clip_eps: float = 0.2
    kl_coef: float = 0.05  # weight of KL(pi || reference)
    num_epochs: int = 2
    eps: float = 1e-6  # added to the group's standard deviation

    def __post_init__(self):
        _require_finite(self)
        if self.group_size < 2:
            raise ValueError(f"GRPOConfig.group_size must be >= 2 (advantages are relative), got {self.group_size}")
        if self.num_epochs < 1 or self.clip_eps <= 0 or self.kl_coef < 0:
            raise ValueError(f"GRPOConfig: num_epochs, clip_eps must be positive and kl_coef >= 0, got {self}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    algo: str = "bc"
    seed: int = 0
    batch_size: int = 16  # scenarios per step (sharded over the data axis)
    learning_rate: float = 3e-4
    lr_decay_steps: int = 0  # > 0: cosine decay to 0.1 x learning_rate over this many updates
    max_grad_norm: float = 1.0
    horizon: int = 80  # closed-loop steps per episode (apg / ppo / grpo)
    reward_preset: str = "progress_safety"
    dynamics: str = "bicycle"
    init_steps: int = 11
    history_length: int = 5
    non_ego_agent: str = "log"
    # Closed-loop episodes (apg / grpo) get a random crossing pedestrian or cyclist with
    # this probability, the other traffic then reactive (IDM): events with no expert log.
    crosser_prob: float = 0.0
    # ... and start off the logged ego state (noise up to this fraction of 1 m, 0.1 rad, 1 m/s).
    start_noise: float = 0.0
    obs: ObsConfig = ObsConfig()
    model: ModelConfig = ModelConfig()
    bc: BCConfig = BCConfig()
    apg: APGConfig = APGConfig()
    ppo: PPOConfig = PPOConfig()
    grpo: GRPOConfig = GRPOConfig()

    def __post_init__(self):
        _require_finite(self)
        if self.algo not in ALGOS:
            raise ValueError(f"TrainConfig.algo must be one of {ALGOS}, got {self.algo!r}")
        if self.dynamics not in DYNAMICS:
            raise ValueError(f"TrainConfig.dynamics must be one of {DYNAMICS}, got {self.dynamics!r}")
        if self.batch_size < 1 or self.horizon < 1:
            raise ValueError(f"TrainConfig: batch_size and horizon must be >= 1, got {self.batch_size}, {self.horizon}")
        if self.lr_decay_steps < 0:
            raise ValueError(f"TrainConfig.lr_decay_steps must be >= 0, got {self.lr_decay_steps}")
        if self.start_noise < 0:
            raise ValueError(f"TrainConfig.start_noise must be >= 0, got {self.start_noise}")
        if not 0.0 <= self.crosser_prob <= 1.0:
            raise ValueError(f"TrainConfig.crosser_prob must be in [0, 1], got {self.crosser_prob}")
        if self.learning_rate <= 0 or self.max_grad_norm <= 0:
            raise ValueError(f"TrainConfig: learning_rate and max_grad_norm must be positive, got "
                             f"{self.learning_rate}, {self.max_grad_norm}")
        if self.algo == "ppo" and (self.batch_size * self.horizon) % self.ppo.num_minibatches:
            raise ValueError(f"TrainConfig: batch_size * horizon ({self.batch_size * self.horizon}) must divide by "
                             f"ppo.num_minibatches ({self.ppo.num_minibatches})")
        if self.algo == "ppo" and not self.model.value_head:
            object.__setattr__(self, "model", dataclasses.replace(self.model, value_head=True))
        if self.algo == "apg" and self.apg.truncate_every and self.horizon % self.apg.truncate_every:
            raise ValueError(f"TrainConfig: horizon ({self.horizon}) must divide by apg.truncate_every "
                             f"({self.apg.truncate_every})")

    def env_config(self) -> EnvConfig:
        """The environment: ego-controlled, actions normalised to [-1, 1]; APG's `grad_through_agents`
        lets gradients flow through the reactive objects' response to the ego."""
        return EnvConfig(init_steps=self.init_steps, history_length=self.history_length,
                         dynamics=make_dynamics(self.dynamics, normalize_actions=True), controlled="sdc",
                         non_ego_agent=self.non_ego_agent,
                         grad_through_agents=self.algo == "apg" and self.apg.grad_through_agents)


def config_to_dict(config: Any) -> dict:
    """Plain JSON-able dict of a (nested) config dataclass."""
    return {f.name: (config_to_dict(v) if dataclasses.is_dataclass(v) else (list(v) if isinstance(v, tuple) else v))
            for f in dataclasses.fields(config) for v in [getattr(config, f.name)]}


def config_from_dict(cls: type, data: dict) -> Any:
    """Inverse of `config_to_dict`; unknown keys are an error naming the key."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config keys {sorted(unknown)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = config_from_dict(hint, value)
        elif typing.get_origin(hint) is tuple or (isinstance(hint, types.GenericAlias) and hint.__origin__ is tuple):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)
