"""Policy networks (Flax NNX): an MLP baseline and a small attention scene encoder.

Both map `Features` (see `jaxloop.policy.observation`) of one observer to a
`PolicyOutput`: the mean and log standard deviation of a pre-tanh Gaussian over the
action and, optionally, a value estimate from a separate critic MLP. Actions live in [-1, 1] (the dynamics run
with `normalize_actions=True`):

- deterministic head: `action = tanh(mean)`;
- tanh-Gaussian head: `u ~ N(mean, exp(log_std))`, `action = tanh(u)`, with
  `log_prob(u) = log N(u) - sum log(1 - tanh(u)^2)` (the change of variables).

Use the models functionally across `jit`: `graphdef, params = nnx.split(model)` outside,
`nnx.merge(graphdef, params)` inside.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx, struct

from jaxloop.policy.observation import Features, ObsConfig, flat_dim, flatten

MODEL_KINDS = ("mlp", "attention")
HEAD_KINDS = ("deterministic", "gaussian")
LOG_STD_MIN, LOG_STD_MAX = -5.0, 1.0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Static network configuration."""

    kind: str = "mlp"  # "mlp" | "attention"
    head: str = "gaussian"  # "deterministic" | "gaussian"
    hidden: tuple[int, ...] = (128, 128)  # MLP trunk (and the attention model's output MLP)
    embed_dim: int = 64  # attention token width
    num_heads: int = 4
    value_head: bool = False  # PPO adds a value estimate
    init_log_std: float = -1.0

    def __post_init__(self):
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"ModelConfig.kind must be one of {MODEL_KINDS}, got {self.kind!r}")
        if self.head not in HEAD_KINDS:
            raise ValueError(f"ModelConfig.head must be one of {HEAD_KINDS}, got {self.head!r}")
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"ModelConfig.hidden must be non-empty positive widths, got {self.hidden}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"ModelConfig.embed_dim ({self.embed_dim}) must divide by num_heads ({self.num_heads})")


@struct.dataclass
class PolicyOutput:
    mean: jax.Array  # [..., A] pre-tanh mean
    log_std: jax.Array  # [..., A]
    value: jax.Array  # [...] (zeros without a value head)


def _mlp(sizes: list[int], rngs: nnx.Rngs) -> nnx.List:
    return nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])


def _run_mlp(layers, x: jax.Array, final_activation: bool = False) -> jax.Array:
    for i, layer in enumerate(layers):
        x = layer(x)
        if i < len(layers) - 1 or final_activation:
            x = nnx.gelu(x)
    return x


class _Heads(nnx.Module):
    """Mean and a state-independent log-std."""

    def __init__(self, in_dim: int, action_dim: int, config: ModelConfig, rngs: nnx.Rngs):
        self.mean = nnx.Linear(in_dim, action_dim, kernel_init=nnx.initializers.variance_scaling(
            0.01, "fan_in", "truncated_normal"), rngs=rngs)
        self.log_std = nnx.Param(jnp.full((action_dim,), config.init_log_std, jnp.float32))

    def __call__(self, h: jax.Array, value: jax.Array | None = None) -> PolicyOutput:
        mean = self.mean(h)
        log_std = jnp.broadcast_to(jnp.clip(self.log_std[...], LOG_STD_MIN, LOG_STD_MAX), mean.shape)
        value = jnp.zeros(mean.shape[:-1]) if value is None else value
        return PolicyOutput(mean=mean, log_std=log_std, value=value)


class _ValueNet(nnx.Module):
    """A critic on the flat features with its own trunk, so value errors do not steer the actor's features."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...], rngs: nnx.Rngs):
        self.layers = _mlp([in_dim, *hidden, 1], rngs)

    def __call__(self, feats: Features) -> jax.Array:
        return _run_mlp(self.layers, flatten(feats))[..., 0]


class MLPPolicy(nnx.Module):
    """MLP over the flat feature vector."""

    def __init__(self, obs_config: ObsConfig, history_length: int, action_dim: int, config: ModelConfig,
                 rngs: nnx.Rngs):
        self.config = config
        sizes = [flat_dim(obs_config, history_length), *config.hidden]
        self.trunk = _mlp(sizes, rngs)
        self.heads = _Heads(sizes[-1], action_dim, config, rngs)
        self.value_net = _ValueNet(sizes[0], config.hidden, rngs) if config.value_head else None

    def __call__(self, feats: Features) -> PolicyOutput:
        h = _run_mlp(self.trunk, flatten(feats), final_activation=True)
        return self.heads(h, None if self.value_net is None else self.value_net(feats))


class AttentionPolicy(nnx.Module):
    """An ego query (own history + route) attending over object, lane, edge and light tokens.

    One cross-attention layer with a learned always-valid "null" token, so a scene with
    every token masked still has a well-defined (finite) attention output.
    """

    def __init__(self, obs_config: ObsConfig, history_length: int, action_dim: int, config: ModelConfig,
                 rngs: nnx.Rngs):
        self.config = config
        d = config.embed_dim
        c = obs_config
        ego_in = c.ego_dim(history_length) + c.route_points * c.route_dim
        self.ego_embed = _mlp([ego_in, d, d], rngs)
        self.type_embed = nnx.Param(jax.random.normal(rngs.params(), (5, d)) * 0.02)  # null, obj, lane, edge, light
        self.obj_embed = nnx.Linear(c.object_dim, d, rngs=rngs)
        self.lane_embed = nnx.Linear(c.lane_dim, d, rngs=rngs)
        self.edge_embed = nnx.Linear(c.edge_dim, d, rngs=rngs)
        self.light_embed = nnx.Linear(c.light_dim, d, rngs=rngs)
        self.q = nnx.Linear(d, d, rngs=rngs)
        self.k = nnx.Linear(d, d, rngs=rngs)
        self.v = nnx.Linear(d, d, rngs=rngs)
        self.o = nnx.Linear(d, d, rngs=rngs)
        self.norm = nnx.LayerNorm(d, rngs=rngs)
        self.out = _mlp([2 * d, *config.hidden], rngs)
        self.heads = _Heads(config.hidden[-1], action_dim, config, rngs)
        self.value_net = (_ValueNet(flat_dim(obs_config, history_length), config.hidden, rngs)
                          if config.value_head else None)

    def __call__(self, feats: Features) -> PolicyOutput:
        batch = feats.ego.shape[:-1]
        d, nh = self.config.embed_dim, self.config.num_heads
        te = self.type_embed[...]
        ego_in = jnp.concatenate([feats.ego, feats.route.reshape(*batch, -1)], -1)
        query = _run_mlp(self.ego_embed, ego_in)  # [..., d]
        null = jnp.broadcast_to(te[0], (*batch, 1, d))
        tokens = jnp.concatenate([
            null,
            self.obj_embed(feats.objects) + te[1],
            self.lane_embed(feats.lanes) + te[2],
            self.edge_embed(feats.edges) + te[3],
            self.light_embed(feats.lights) + te[4],
        ], -2)  # [..., S, d]
        mask = jnp.concatenate([jnp.ones((*batch, 1), bool), feats.objects_valid, feats.lanes_valid,
                                feats.edges_valid, feats.lights_valid], -1)  # [..., S]
        hd = d // nh
        q = self.q(query).reshape(*batch, nh, hd)
        k = self.k(tokens).reshape(*batch, -1, nh, hd)
        v = self.v(tokens).reshape(*batch, -1, nh, hd)
        logits = jnp.einsum("...hc,...shc->...hs", q, k) / math.sqrt(hd)
        logits = jnp.where(mask[..., None, :], logits, -1e9)
        attn = jax.nn.softmax(logits, axis=-1)
        ctx = jnp.einsum("...hs,...shc->...hc", attn, v).reshape(*batch, d)
        ctx = self.norm(query + self.o(ctx))
        h = _run_mlp(self.out, jnp.concatenate([query, ctx], -1), final_activation=True)
        return self.heads(h, None if self.value_net is None else self.value_net(feats))


def make_model(config: ModelConfig, obs_config: ObsConfig, history_length: int, action_dim: int,
               key: jax.Array) -> nnx.Module:
    """The network named by `config.kind`, initialised from `key`."""
    rngs = nnx.Rngs(params=key)
    cls = MLPPolicy if config.kind == "mlp" else AttentionPolicy
    return cls(obs_config, history_length, action_dim, config, rngs)


# --- distributions over actions ---------------------------------------------------------

def _log1m_tanh2(u: jax.Array) -> jax.Array:
    """log(1 - tanh(u)^2), computed stably as 2 (log 2 - u - softplus(-2u))."""
    return 2.0 * (math.log(2.0) - u - jax.nn.softplus(-2.0 * u))


def gaussian_log_prob(out: PolicyOutput, u: jax.Array) -> jax.Array:
    """Log-density `[...]` of the pre-tanh sample `u` `[..., A]` under N(mean, exp(log_std))."""
    z = (u - out.mean) * jnp.exp(-out.log_std)
    return jnp.sum(-0.5 * z ** 2 - out.log_std - 0.5 * math.log(2 * math.pi), -1)


def tanh_log_prob(out: PolicyOutput, u: jax.Array) -> jax.Array:
    """Log-density `[...]` of the action `tanh(u)` (tanh change-of-variables correction included)."""
    return gaussian_log_prob(out, u) - jnp.sum(_log1m_tanh2(u), -1)


def sample(out: PolicyOutput, key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Reparameterised sample: (action `[..., A]` in [-1, 1], pre-tanh `u`, log-prob `[...]`)."""
    u = out.mean + jnp.exp(out.log_std) * jax.random.normal(key, out.mean.shape)
    return jnp.tanh(u), u, tanh_log_prob(out, u)


def mode(out: PolicyOutput) -> jax.Array:
    """The deterministic action `tanh(mean)`."""
    return jnp.tanh(out.mean)


def entropy(out: PolicyOutput) -> jax.Array:
    """Entropy `[...]` of the pre-tanh Gaussian (the usual PPO bonus for squashed policies)."""
    return jnp.sum(out.log_std + 0.5 * math.log(2 * math.pi * math.e), -1)


def atanh_clipped(action: jax.Array, eps: float = 1e-4) -> jax.Array:
    """Pre-tanh value of an action in [-1, 1], clipped away from the poles."""
    return jnp.arctanh(jnp.clip(action, -1.0 + eps, 1.0 - eps))
