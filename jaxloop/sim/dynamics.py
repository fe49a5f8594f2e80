"""Action spaces and motion models (DESIGN.md, "Dynamics").

Each model is a frozen, hashable dataclass (static config under `jit`) with
`forward(state, action) -> state` and `inverse(state, next_state) -> (action, valid)`.
Their action limits may be overridden by a traced `limits` `[action_dim]` argument
(`forward` / `clip` / `inverse`), so they can be vmapped or swept like any parameter.
States are `ObjectState`s of any leading shape; actions are `[..., action_dim]`.
Only x, y, yaw, vel_x, vel_y evolve; z and the box size carry over.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxloop.sim.datatypes import DT, ObjectState
from jaxloop.sim.geometry import rotate, wrap_angle

# Below this speed the heading is taken from the log, not from the velocity vector,
# and the curvature of the inverse bicycle is zero (DESIGN.md).
_SPEED_EPS = 0.6


def _evolve(state: ObjectState, x, y, yaw, vel_x, vel_y) -> ObjectState:
    return state.replace(x=x, y=y, yaw=yaw, vel_x=vel_x, vel_y=vel_y)


def bicycle_inverse_unclipped(state: ObjectState, next_state: ObjectState, dt: float = DT) -> tuple[jax.Array, jax.Array]:
    """(acceleration, curvature) `[...]` of a transition by the inverse bicycle of DESIGN.md, before clipping."""
    v0 = jnp.hypot(state.vel_x, state.vel_y)
    v1 = jnp.hypot(next_state.vel_x, next_state.vel_y)
    a = (v1 - v0) / dt
    yaw1 = jnp.where(v1 > _SPEED_EPS, jnp.arctan2(next_state.vel_y, next_state.vel_x), next_state.yaw)
    travel = v0 * dt + 0.5 * a * dt ** 2
    moving = (v0 >= _SPEED_EPS) & (v1 >= _SPEED_EPS)
    k = jnp.where(moving, wrap_angle(yaw1 - state.yaw) / jnp.where(moving, travel, 1.0), 0.0)
    return a, k


@dataclasses.dataclass(frozen=True)
class InvertibleBicycle:
    """Kinematic bicycle with action (acceleration m/s², curvature 1/m).

    With `normalize_actions`, actions in [-1, 1] are scaled by the limits.
    """

    max_accel: float = 6.0
    max_curvature: float = 0.3
    dt: float = DT
    normalize_actions: bool = False

    action_dim = 2
    action_names = ("acceleration", "curvature")

    def __post_init__(self):
        if self.max_accel <= 0 or self.max_curvature <= 0 or self.dt <= 0:
            raise ValueError(f"InvertibleBicycle: limits and dt must be positive, got {self}")

    @property
    def limits(self) -> jax.Array:  # [2]
        return jnp.array([self.max_accel, self.max_curvature], jnp.float32)

    def clip(self, action: jax.Array, limits: jax.Array | None = None) -> jax.Array:
        """Physical action from a raw one: scaled if normalised, then clipped to the limits.

        `limits` `[2]` (traced) replaces the configured ones (see `EnvParams.action_limits`).
        """
        limits = self.limits if limits is None else limits
        if self.normalize_actions:
            return jnp.clip(action, -1.0, 1.0) * limits
        return jnp.clip(action, -limits, limits)

    def forward(self, state: ObjectState, action: jax.Array, limits: jax.Array | None = None) -> ObjectState:
        a_k = self.clip(action, limits)
        a, k = a_k[..., 0], a_k[..., 1]
        dt = self.dt
        v = jnp.sqrt(state.vel_x ** 2 + state.vel_y ** 2 + 1e-12)
        x = state.x + state.vel_x * dt + 0.5 * a * jnp.cos(state.yaw) * dt ** 2
        y = state.y + state.vel_y * dt + 0.5 * a * jnp.sin(state.yaw) * dt ** 2
        yaw = wrap_angle(state.yaw + k * (v * dt + 0.5 * a * dt ** 2))
        v_next = v + a * dt
        return _evolve(state, x, y, yaw, v_next * jnp.cos(yaw), v_next * jnp.sin(yaw))

    def inverse(self, state: ObjectState, next_state: ObjectState,
                limits: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Expert action reproducing `state -> next_state`; invalid transitions give zeros."""
        limits = self.limits if limits is None else limits
        a, k = bicycle_inverse_unclipped(state, next_state, self.dt)
        valid = state.valid & next_state.valid
        action = jnp.where(valid[..., None], jnp.stack([a, k], -1), 0.0)
        action = jnp.clip(action, -limits, limits)
        if self.normalize_actions:
            action = action / limits
        return action, valid


@dataclasses.dataclass(frozen=True)
class DeltaGlobal:
    """Action (dx, dy, dyaw) in the global frame."""

    max_delta: float = 6.0
    dt: float = DT
    normalize_actions: bool = False
    local: bool = False  # DeltaLocal sets this: (dx, dy) in the object's own frame

    action_dim = 3
    action_names = ("dx", "dy", "dyaw")

    @property
    def limits(self) -> jax.Array:  # [3]
        return jnp.array([self.max_delta, self.max_delta, jnp.pi], jnp.float32)

    def clip(self, action: jax.Array, limits: jax.Array | None = None) -> jax.Array:
        limits = self.limits if limits is None else limits
        if self.normalize_actions:
            return jnp.clip(action, -1.0, 1.0) * limits
        return jnp.clip(action, -limits, limits)

    def forward(self, state: ObjectState, action: jax.Array, limits: jax.Array | None = None) -> ObjectState:
        act = self.clip(action, limits)
        dxy = act[..., :2]
        if self.local:
            dxy = rotate(dxy, state.yaw)
        x = state.x + dxy[..., 0]
        y = state.y + dxy[..., 1]
        yaw = wrap_angle(state.yaw + act[..., 2])
        return _evolve(state, x, y, yaw, dxy[..., 0] / self.dt, dxy[..., 1] / self.dt)

    def inverse(self, state: ObjectState, next_state: ObjectState,
                limits: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        limits = self.limits if limits is None else limits
        dxy = jnp.stack([next_state.x - state.x, next_state.y - state.y], -1)
        if self.local:
            dxy = rotate(dxy, -state.yaw)
        dyaw = wrap_angle(next_state.yaw - state.yaw)
        valid = state.valid & next_state.valid
        action = jnp.where(valid[..., None], jnp.concatenate([dxy, dyaw[..., None]], -1), 0.0)
        action = jnp.clip(action, -limits, limits)
        if self.normalize_actions:
            action = action / limits
        return action, valid


def DeltaLocal(max_delta: float = 6.0, dt: float = DT, normalize_actions: bool = False) -> DeltaGlobal:
    """Action (dx, dy, dyaw) with (dx, dy) in the object's own frame."""
    return DeltaGlobal(max_delta=max_delta, dt=dt, normalize_actions=normalize_actions, local=True)


@dataclasses.dataclass(frozen=True)
class StateDynamics:
    """The action is the next (x, y, yaw, vel_x, vel_y) itself."""

    action_dim = 5
    action_names = ("x", "y", "yaw", "vel_x", "vel_y")
    normalize_actions: bool = False

    def clip(self, action: jax.Array, limits: jax.Array | None = None) -> jax.Array:
        return action

    def forward(self, state: ObjectState, action: jax.Array, limits: jax.Array | None = None) -> ObjectState:
        return _evolve(state, action[..., 0], action[..., 1], wrap_angle(action[..., 2]), action[..., 3],
                       action[..., 4])

    def inverse(self, state: ObjectState, next_state: ObjectState,
                limits: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        valid = state.valid & next_state.valid
        action = jnp.stack([next_state.x, next_state.y, next_state.yaw, next_state.vel_x, next_state.vel_y], -1)
        return jnp.where(valid[..., None], action, 0.0), valid


Dynamics = InvertibleBicycle | DeltaGlobal | StateDynamics

_REGISTRY = {
    "bicycle": InvertibleBicycle,
    "delta_global": DeltaGlobal,
    "delta_local": lambda **kw: DeltaLocal(**kw),
    "state": StateDynamics,
}


def make_dynamics(name: str, **kwargs) -> Dynamics:
    """Dynamics model by name: bicycle, delta_global, delta_local, state."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown dynamics {name!r}; expected one of {sorted(_REGISTRY)}")
    return _REGISTRY[name](**kwargs)
