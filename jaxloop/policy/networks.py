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

Steering prior (`ModelConfig.steer_prior`). With "pure_pursuit" the curvature mean is a
route-tracking controller plus the network's output (a residual):

    mean[..., 1] = atanh(clip(kappa_pp / steer_max_curvature)) + network mean[..., 1]
    kappa_pp     = 2 y_L / (x_L^2 + y_L^2)

where (x_L, y_L) is the lookahead point on the observer's route, in its own frame (x
ahead, y left), read from the observation's route waypoints (`Features.route`). With a
zero network output the policy drives pure pursuit toward its route at constant speed.
The prior is a deterministic function of the features, so the Gaussian, its log-prob,
BC, APG, PPO, GRPO and exported policies all see it as part of the mean; the default
"none" adds nothing to the graph.

Acceleration prior (`ModelConfig.accel_prior`). With "idm" the acceleration mean is the
intelligent driver model read from the features plus the network's output:

    mean[..., 0] = atanh(clip(a_idm / accel_max)) + network mean[..., 0]
    a_idm = a [1 - (v / v0)^4 - (s* / gap)^2],  s* = s0 + max(0, v T + v (v - v_lead) / (2 sqrt(a b)))

clipped to [-idm_max_decel, a] (the gap term only with a lead). v is the observer's speed,
v0 its target speed (`ObsConfig.target_speed`: its largest logged speed, the IDM agents'
desired speed), and the lead the nearest of the observed objects whose centre lies within
its half width + 1 m of the route polyline ahead (origin, the route waypoints, then 50 m
straight on past the last one; speed along the route) and the red lights whose stop point
lies within 2 m of it: the rules of `jaxloop.sim.agents.idm_step`, on what the observer
sees, through the same `jaxloop.sim.agents.idm_acceleration`; its parameters are the IDM agents'
defaults (`AccelPrior.params`, an `AgentParams`). With both priors and a zero
network output the policy is an IDM driver steering pure pursuit along its route.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx, struct

from jaxloop.policy.observation import BOX_SCALE, Features, ObsConfig, flat_dim, flatten
from jaxloop.sim.agents import AgentParams, idm_acceleration
from jaxloop.sim.datatypes import RED_STATES

MODEL_KINDS = ("mlp", "attention")
HEAD_KINDS = ("deterministic", "gaussian")
STEER_PRIORS = ("none", "pure_pursuit")
ACCEL_PRIORS = ("none", "idm")
ACCEL_INDEX = 0
CURVATURE_INDEX = 1  # (acceleration, curvature) of the bicycle dynamics (`jaxloop.sim.dynamics.InvertibleBicycle`)
PRIOR_EPS = 1e-3  # |kappa_pp / steer_max_curvature| is clipped to 1 - PRIOR_EPS before atanh (|pre-tanh| <= 3.8)
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
    # Route-tracking steering prior added to the curvature's pre-tanh mean ("none" | "pure_pursuit").
    steer_prior: Literal["none", "pure_pursuit"] = "none"
    # Pure pursuit lookahead: clip(steer_lookahead_time x speed, steer_min_lookahead, the route
    # waypoints' reach), in metres of arc length along the route ahead of the observer's projection.
    steer_lookahead_time: float = 1.0  # s
    steer_min_lookahead: float = 5.0  # m
    # Physical curvature (1/m) of a normalised action of 1: the bicycle dynamics' `max_curvature`
    # (`Experiment` checks that they agree).
    steer_max_curvature: float = 0.3
    # Car-following acceleration prior added to the acceleration's pre-tanh mean ("none" | "idm"; "idm"
    # needs `ObsConfig.target_speed`). Physical acceleration (m/s²) of a normalised action of 1: the bicycle
    # dynamics' `max_accel` (`Experiment` checks that they agree).
    accel_prior: Literal["none", "idm"] = "none"
    accel_max: float = 6.0

    def __post_init__(self):
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"ModelConfig.kind must be one of {MODEL_KINDS}, got {self.kind!r}")
        if self.head not in HEAD_KINDS:
            raise ValueError(f"ModelConfig.head must be one of {HEAD_KINDS}, got {self.head!r}")
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"ModelConfig.hidden must be non-empty positive widths, got {self.hidden}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"ModelConfig.embed_dim ({self.embed_dim}) must divide by num_heads ({self.num_heads})")
        if self.steer_prior not in STEER_PRIORS:
            raise ValueError(f"ModelConfig.steer_prior must be one of {STEER_PRIORS}, got {self.steer_prior!r}")
        for name in ("steer_lookahead_time", "steer_min_lookahead"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"ModelConfig.{name} must be a finite number >= 0, got {value}")
        if not (math.isfinite(self.steer_max_curvature) and self.steer_max_curvature > 0):
            raise ValueError(f"ModelConfig.steer_max_curvature must be positive, got {self.steer_max_curvature}")
        if self.accel_prior not in ACCEL_PRIORS:
            raise ValueError(f"ModelConfig.accel_prior must be one of {ACCEL_PRIORS}, got {self.accel_prior!r}")
        if not (math.isfinite(self.accel_max) and self.accel_max > 0):
            raise ValueError(f"ModelConfig.accel_max must be positive, got {self.accel_max}")


@struct.dataclass
class PolicyOutput:
    mean: jax.Array  # [..., A] pre-tanh mean
    log_std: jax.Array  # [..., A]
    value: jax.Array  # [...] (zeros without a value head)


@dataclasses.dataclass(frozen=True)
class SteerPrior:
    """What the pure pursuit prior reads from the features: its lookahead, the action scale and the
    observation's scales (static: kept on the model beside its `ModelConfig`)."""

    lookahead_time: float  # s
    min_lookahead: float  # m
    max_curvature: float  # 1/m of a normalised curvature action of 1
    route_spacing: float  # m of arc length between route waypoints (`ObsConfig.route_spacing`)
    position_scale: float  # m per feature unit
    velocity_scale: float  # m/s per feature unit
    history_length: int  # K states in `Features.ego`, current last

    @classmethod
    def of(cls, config: ModelConfig, obs_config: ObsConfig, history_length: int,
           action_dim: int) -> "SteerPrior | None":
        """The prior of `config` (None for "none"); a `ValueError` unless the action is (acceleration, curvature)."""
        if config.steer_prior == "none":
            return None
        if action_dim != 2:
            raise ValueError(f"ModelConfig.steer_prior={config.steer_prior!r} needs the bicycle's (acceleration, "
                             f"curvature) action, got action_dim={action_dim}")
        return cls(config.steer_lookahead_time, config.steer_min_lookahead, config.steer_max_curvature,
                   obs_config.route_spacing, obs_config.position_scale, obs_config.velocity_scale, history_length)


def lookahead_point(feats: Features, prior: SteerPrior) -> tuple[jax.Array, jax.Array]:
    """The pure pursuit target `[..., 2]` (metres, observer frame) and whether the route has one `[...]`.

    Route waypoint j (0-based) lies (j + 1) x `route_spacing` m of arc ahead of the observer's
    projection on its route (`jaxloop.policy.observation.route_waypoints`); waypoints past the
    route's end are invalid (always a suffix). The lookahead arc length
    clip(lookahead_time x speed, min_lookahead, last valid waypoint's arc) is interpolated
    linearly between neighbouring waypoints, so it is at least the first waypoint's and at
    most the last valid one's (the fallback near the route's end). No valid waypoint: no target.
    """
    k = prior.history_length
    cur = feats.ego[..., (k - 1) * 7:k * 7]  # current (x, y, cos, sin, vx, vy, valid)
    speed = jnp.hypot(cur[..., 4], cur[..., 5]) * prior.velocity_scale
    xy = feats.route[..., :2] * prior.position_scale  # [..., W, 2]
    valid = feats.route_valid
    num_points = xy.shape[-2]
    count = jnp.sum(valid, -1)  # valid waypoints: 0 .. count - 1
    last = jnp.maximum(count - 1, 0).astype(jnp.float32)
    idx = jnp.clip(jnp.maximum(prior.lookahead_time * speed, prior.min_lookahead) / prior.route_spacing - 1.0,
                   0.0, last)  # fractional waypoint index of the lookahead arc length
    j0 = jnp.floor(idx)
    frac = idx - j0
    j0 = j0.astype(jnp.int32)
    j1 = jnp.minimum(j0 + 1, jnp.maximum(count - 1, 0))
    weights = ((1.0 - frac)[..., None] * jax.nn.one_hot(j0, num_points)
               + frac[..., None] * jax.nn.one_hot(j1, num_points))  # dense, as `observation._gather`
    point = jnp.einsum("...w,...wc->...c", weights, xy)
    return point, count > 0


def pure_pursuit_curvature(feats: Features, prior: SteerPrior) -> jax.Array:
    """kappa_pp = 2 y_L / (x_L^2 + y_L^2) `[...]` (1/m) toward the lookahead point; 0 without one."""
    point, ok = lookahead_point(feats, prior)
    d2 = jnp.sum(point ** 2, -1)
    kappa = 2.0 * point[..., 1] / jnp.maximum(d2, 1e-6)
    return jnp.where(ok & (d2 > 1e-6), kappa, 0.0)


def steer_prior_mean(feats: Features, prior: SteerPrior) -> jax.Array:
    """The prior's pre-tanh curvature `[...]`: atanh(clip(kappa_pp / max_curvature, 1 - PRIOR_EPS))."""
    return atanh_clipped(pure_pursuit_curvature(feats, prior) / prior.max_curvature, PRIOR_EPS)


IDM_PRIOR_LOOKAHEAD = 50.0  # m along the route: farther leads and lights are ignored (as the IDM agents)
IDM_PRIOR_LATERAL = 1.0  # m: a lead's centre within its half width + this of the route
IDM_PRIOR_LIGHT_LATERAL = 2.0  # m: a red light's stop point this close to the route governs


@dataclasses.dataclass(frozen=True)
class AccelPrior:
    """What the IDM acceleration prior reads from the features (static, kept on the model)."""

    accel_max: float  # m/s² of a normalised acceleration action of 1
    position_scale: float
    velocity_scale: float
    history_length: int
    params: AgentParams = AgentParams()  # the IDM agents' defaults

    @classmethod
    def of(cls, config: ModelConfig, obs_config: ObsConfig, history_length: int,
           action_dim: int) -> "AccelPrior | None":
        if config.accel_prior == "none":
            return None
        if action_dim != 2:
            raise ValueError(f"ModelConfig.accel_prior={config.accel_prior!r} needs the bicycle's (acceleration, "
                             f"curvature) action, got action_dim={action_dim}")
        if not obs_config.target_speed:
            raise ValueError(f"ModelConfig.accel_prior={config.accel_prior!r} needs ObsConfig.target_speed=True "
                             "(the IDM's desired speed)")
        return cls(config.accel_max, obs_config.position_scale, obs_config.velocity_scale, history_length)


def _safe_norm(v: jax.Array) -> jax.Array:
    """|v| over the last axis with a finite gradient at 0 (degenerate segments, padded tokens)."""
    return jnp.sqrt(jnp.sum(v ** 2, -1) + 1e-12)


def _route_frame(feats: Features, points: jax.Array, ps: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(arc offset `[..., P]`, lateral distance `[..., P]`, unit tangent `[..., P, 2]`) of points `[..., P, 2]`
    (metres, observer frame) on the route polyline ahead: the observer's origin, the valid route waypoints, then
    IDM_PRIOR_LOOKAHEAD m straight on along the last segment (along x without a waypoint)."""
    way = feats.route[..., :2] * ps  # [..., W, 2]
    valid = feats.route_valid  # a valid prefix
    origin = jnp.zeros_like(way[..., :1, :])
    # Invalid waypoints repeat the last valid one (or the origin): zero-length segments, never nearest.
    count = jnp.sum(valid, -1)
    w = way.shape[-2]
    last_idx = jnp.maximum(count - 1, 0)
    last = jnp.einsum("...w,...wc->...c", jax.nn.one_hot(last_idx, w), way)
    last = jnp.where((count > 0)[..., None], last, 0.0)
    way = jnp.where(valid[..., None], way, last[..., None, :])
    pts = jnp.concatenate([origin, way], -2)  # [..., W + 1, 2]
    prev = jnp.einsum("...w,...wc->...c", jax.nn.one_hot(last_idx, w + 1), pts)  # the point before `last`
    direction = last - jnp.where((count > 0)[..., None], prev, jnp.array([-1.0, 0.0]))
    direction = direction / jnp.maximum(_safe_norm(direction)[..., None], 1e-6)
    ext = last + IDM_PRIOR_LOOKAHEAD * direction
    starts = pts
    ends = jnp.concatenate([pts[..., 1:, :], ext[..., None, :]], -2)  # [..., W + 1, 2]
    seg = ends - starts
    seg_len = _safe_norm(seg)  # [..., S]
    arc0 = jnp.cumsum(seg_len, -1) - seg_len
    rel = points[..., :, None, :] - starts[..., None, :, :]  # [..., P, S, 2]
    t = jnp.clip(jnp.sum(rel * seg[..., None, :, :], -1) / jnp.maximum(seg_len ** 2, 1e-9)[..., None, :], 0.0, 1.0)
    dist = _safe_norm(rel - t[..., None] * seg[..., None, :, :])
    dist = jnp.where((seg_len > 1e-5)[..., None, :], dist, jnp.inf)
    best = jnp.argmin(dist, -1)  # [..., P]
    pick = jax.nn.one_hot(best, seg_len.shape[-1])  # [..., P, S]
    lateral = jnp.sum(pick * jnp.where(jnp.isfinite(dist), dist, 0.0), -1)
    offset = jnp.sum(pick * (arc0[..., None, :] + t * seg_len[..., None, :]), -1)
    tangent = jnp.einsum("...ps,...sc->...pc", pick, seg / jnp.maximum(seg_len, 1e-6)[..., None])
    return offset, lateral, tangent


def idm_prior_accel(feats: Features, prior: AccelPrior) -> jax.Array:
    """The IDM acceleration `[...]` (m/s²) of the observer from its features (see the module docstring)."""
    k, ps, vs, p = prior.history_length, prior.position_scale, prior.velocity_scale, prior.params
    cur = feats.ego[..., (k - 1) * 7:k * 7]
    v = _safe_norm(cur[..., 4:6]) * vs
    own_half = feats.ego[..., k * 7] * BOX_SCALE / 2.0
    v0 = feats.ego[..., k * 7 + 2] * vs * p.idm_desired_speed_scale
    # Object leads.
    obj = feats.objects
    o_xy, o_vel = obj[..., :2] * ps, obj[..., 4:6] * vs
    o_half_len, o_half_wid = obj[..., 6] * BOX_SCALE / 2.0, obj[..., 7] * BOX_SCALE / 2.0
    off, lat, tan = _route_frame(feats, o_xy, ps)
    is_lead = (feats.objects_valid & (off > 1e-3) & (off < IDM_PRIOR_LOOKAHEAD)
               & (lat < o_half_wid + IDM_PRIOR_LATERAL))
    gap = jnp.where(is_lead, off - own_half[..., None] - o_half_len, jnp.inf)
    lead = jnp.argmin(gap, -1)
    pick = jax.nn.one_hot(lead, gap.shape[-1])
    obj_gap = jnp.min(gap, -1)
    obj_speed = jnp.sum(pick * jnp.sum(o_vel * tan, -1), -1)
    # Red lights: stopped leads at their stop points.
    lights = feats.lights
    red = feats.lights_valid & jnp.any(lights[..., 2 + jnp.array(RED_STATES)] > 0.5, -1)
    l_off, l_lat, _ = _route_frame(feats, lights[..., :2] * ps, ps)
    light_lead = red & (l_lat < IDM_PRIOR_LIGHT_LATERAL) & (l_off > own_half[..., None]) & (l_off < IDM_PRIOR_LOOKAHEAD)
    light_gap = jnp.min(jnp.where(light_lead, l_off - own_half[..., None], jnp.inf), -1)
    lead_gap = jnp.minimum(obj_gap, light_gap)
    lead_speed = jnp.where(light_gap <= obj_gap, 0.0, obj_speed)
    has_lead = jnp.isfinite(lead_gap)
    return idm_acceleration(v, v0, lead_gap, lead_speed, has_lead, p)


def accel_prior_mean(feats: Features, prior: AccelPrior) -> jax.Array:
    """The prior's pre-tanh acceleration `[...]`: atanh(clip(a_idm / accel_max, 1 - PRIOR_EPS))."""
    return atanh_clipped(idm_prior_accel(feats, prior) / prior.accel_max, PRIOR_EPS)


def _with_prior(out: "PolicyOutput", feats: Features, prior: SteerPrior | None,
                accel: AccelPrior | None = None) -> "PolicyOutput":
    """`out` with the steering prior added to the curvature mean and the acceleration prior to the acceleration
    mean (unchanged without them)."""
    mean = out.mean
    if prior is not None:
        mean = mean + steer_prior_mean(feats, prior)[..., None] * jax.nn.one_hot(CURVATURE_INDEX, mean.shape[-1])
    if accel is not None:
        mean = mean + accel_prior_mean(feats, accel)[..., None] * jax.nn.one_hot(ACCEL_INDEX, mean.shape[-1])
    return out if mean is out.mean else out.replace(mean=mean)


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
        self.steer = SteerPrior.of(config, obs_config, history_length, action_dim)
        self.accel = AccelPrior.of(config, obs_config, history_length, action_dim)
        sizes = [flat_dim(obs_config, history_length), *config.hidden]
        self.trunk = _mlp(sizes, rngs)
        self.heads = _Heads(sizes[-1], action_dim, config, rngs)
        self.value_net = _ValueNet(sizes[0], config.hidden, rngs) if config.value_head else None

    def __call__(self, feats: Features) -> PolicyOutput:
        h = _run_mlp(self.trunk, flatten(feats), final_activation=True)
        out = self.heads(h, None if self.value_net is None else self.value_net(feats))
        return _with_prior(out, feats, self.steer, self.accel)


class AttentionPolicy(nnx.Module):
    """An ego query (own history + route) attending over object, lane, edge and light tokens.

    One cross-attention layer with a learned always-valid "null" token, so a scene with
    every token masked still has a well-defined (finite) attention output.
    """

    def __init__(self, obs_config: ObsConfig, history_length: int, action_dim: int, config: ModelConfig,
                 rngs: nnx.Rngs):
        self.config = config
        self.steer = SteerPrior.of(config, obs_config, history_length, action_dim)
        self.accel = AccelPrior.of(config, obs_config, history_length, action_dim)
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
        out = self.heads(h, None if self.value_net is None else self.value_net(feats))
        return _with_prior(out, feats, self.steer, self.accel)


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
