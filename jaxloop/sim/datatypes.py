"""Pytrees of the simulator: logged trajectories, compiled maps, lights, routes, state.

Field names follow the public WOMD / Waymax conventions (see DESIGN.md) so a bridge to
Waymax datatypes is a field-by-field copy. Every container is a frozen
`flax.struct.dataclass`; change one with `.replace(...)`.

Shapes below are for a single scenario. Batched scenarios add leading axes `[...]`
(the trainer / evaluator adds them with `jax.vmap`); `validate()` accepts any leading
batch shape as long as it is the same for every field.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

# Object types (WOMD).
TYPE_UNSET = 0
TYPE_VEHICLE = 1
TYPE_PEDESTRIAN = 2
TYPE_CYCLIST = 3
TYPE_OTHER = 4
# ObjectMetadata.ids of an object that is not in the source log (a road user a perturbation or
# a training episode injects): its overlaps with the logged ego are never label noise.
SYNTHETIC_ID = -2

# Roadgraph point / polyline types (WOMD).
RG_FREEWAY_LANE = 1
RG_SURFACE_LANE = 2
RG_BIKE_LANE = 3
RG_ROAD_LINE_MIN = 6
RG_ROAD_LINE_MAX = 13
RG_ROAD_EDGE_BOUNDARY = 15
RG_ROAD_EDGE_MEDIAN = 16
RG_STOP_SIGN = 17
RG_CROSSWALK = 18
RG_SPEED_BUMP = 19

# Traffic-light states (WOMD).
TL_UNKNOWN = 0
TL_ARROW_STOP = 1
TL_ARROW_CAUTION = 2
TL_ARROW_GO = 3
TL_STOP = 4
TL_CAUTION = 5
TL_GO = 6
TL_FLASHING_STOP = 7
TL_FLASHING_CAUTION = 8
RED_STATES = (TL_ARROW_STOP, TL_STOP, TL_FLASHING_STOP)  # the states that stop traffic

DT = 0.1  # seconds per log step (10 Hz)


class ShapeError(ValueError):
    """A pytree field has the wrong shape or dtype; the message names the field."""


def _check(name: str, arr: Any, expected: tuple[int | str, ...], batch: tuple[int, ...] | None,
           dims: dict[str, int], dtype_kind: str | None = None) -> tuple[int, ...]:
    """Checks `arr` is `[*batch, *expected]`, binding symbolic dims in `dims`."""
    shape = tuple(np.shape(arr))
    n = len(expected)
    if len(shape) < n:
        raise ShapeError(f"{name}: expected shape [..., {', '.join(map(str, expected))}], got {list(shape)}")
    lead, tail = shape[: len(shape) - n], shape[len(shape) - n:]
    if batch is not None and lead != batch:
        raise ShapeError(f"{name}: expected batch dims {list(batch)}, got {list(lead)} (shape {list(shape)})")
    for sym, got in zip(expected, tail):
        if isinstance(sym, int):
            if got != sym:
                raise ShapeError(f"{name}: expected shape [..., {', '.join(map(str, expected))}], got {list(shape)}")
        elif sym in dims and dims[sym] != got:
            raise ShapeError(
                f"{name}: expected dimension {sym}={dims[sym]} (from earlier fields), got {got} (shape {list(shape)})")
        else:
            dims[sym] = got
    if dtype_kind is not None:
        kind = np.dtype(getattr(arr, "dtype", np.asarray(arr).dtype)).kind
        if kind not in dtype_kind:
            raise ShapeError(f"{name}: expected dtype kind {dtype_kind!r}, got {getattr(arr, 'dtype', None)}")
    return lead


def _validate_fields(obj: Any, spec: dict[str, tuple[tuple[int | str, ...], str]], prefix: str,
                     dims: dict[str, int], batch: tuple[int, ...] | None) -> tuple[int, ...] | None:
    for field, (expected, kind) in spec.items():
        lead = _check(f"{prefix}.{field}", getattr(obj, field), expected, batch, dims, kind)
        batch = lead if batch is None else batch
    return batch


_F = "f"
_B = "b"
_I = "iu"


@struct.dataclass
class Trajectory:
    """Per-object states over time. Every field is `[..., N, T]`."""

    x: jax.Array  # [N, T] float32, metres
    y: jax.Array  # [N, T]
    z: jax.Array  # [N, T]
    vel_x: jax.Array  # [N, T] m/s
    vel_y: jax.Array  # [N, T]
    yaw: jax.Array  # [N, T] radians, counter-clockwise from +x
    length: jax.Array  # [N, T] metres
    width: jax.Array  # [N, T]
    height: jax.Array  # [N, T]
    valid: jax.Array  # [N, T] bool
    timestamp_micros: jax.Array  # [N, T] int32

    _SPEC = {f: (("N", "T"), _F) for f in ("x", "y", "z", "vel_x", "vel_y", "yaw", "length", "width", "height")}
    _SPEC.update(valid=(("N", "T"), _B), timestamp_micros=(("N", "T"), _I))

    @property
    def xy(self) -> jax.Array:  # [..., N, T, 2]
        return jnp.stack([self.x, self.y], axis=-1)

    @property
    def speed(self) -> jax.Array:  # [..., N, T]
        return jnp.hypot(self.vel_x, self.vel_y)

    @property
    def num_objects(self) -> int:
        return self.x.shape[-2]

    @property
    def num_steps(self) -> int:
        return self.x.shape[-1]

    def validate(self, prefix: str = "Trajectory", dims: dict[str, int] | None = None,
                 batch: tuple[int, ...] | None = None) -> tuple[int, ...] | None:
        return _validate_fields(self, self._SPEC, prefix, {} if dims is None else dims, batch)

    @classmethod
    def zeros(cls, shape: tuple[int, ...]) -> "Trajectory":
        f = jnp.zeros(shape, jnp.float32)
        return cls(x=f, y=f, z=f, vel_x=f, vel_y=f, yaw=f, length=f, width=f, height=f,
                   valid=jnp.zeros(shape, bool), timestamp_micros=jnp.zeros(shape, jnp.int32))


@struct.dataclass
class ObjectState:
    """Object states at one step (or a short window). Every field is `[..., N]`."""

    x: jax.Array  # [N]
    y: jax.Array  # [N]
    z: jax.Array  # [N]
    vel_x: jax.Array  # [N]
    vel_y: jax.Array  # [N]
    yaw: jax.Array  # [N]
    length: jax.Array  # [N]
    width: jax.Array  # [N]
    height: jax.Array  # [N]
    valid: jax.Array  # [N] bool

    _SPEC = {f: (("N",), _F) for f in ("x", "y", "z", "vel_x", "vel_y", "yaw", "length", "width", "height")}
    _SPEC.update(valid=(("N",), _B))

    @property
    def xy(self) -> jax.Array:  # [..., N, 2]
        return jnp.stack([self.x, self.y], axis=-1)

    @property
    def speed(self) -> jax.Array:  # [..., N]
        return jnp.hypot(self.vel_x, self.vel_y)

    def validate(self, prefix: str = "ObjectState", dims: dict[str, int] | None = None,
                 batch: tuple[int, ...] | None = None) -> tuple[int, ...] | None:
        return _validate_fields(self, self._SPEC, prefix, {} if dims is None else dims, batch)


def at_step(a: jax.Array, t: jax.Array | int) -> jax.Array:
    """`a[..., t]` of a per-step array `[..., T]`, `t` clamped to `[0, T-1]` (a slice: no `[..., T]` pass)."""
    t = jnp.clip(t, 0, a.shape[-1] - 1)
    return jax.lax.dynamic_index_in_dim(a, t, axis=a.ndim - 1, keepdims=False)


def trajectory_at(traj: Trajectory, t: jax.Array | int) -> ObjectState:
    """The logged `ObjectState` `[N]` at step `t` (traced or static); `t` is clamped to `[0, T-1]`.

    A step past the end of the log comes back invalid rather than clamped-and-valid.
    """
    num_steps = traj.x.shape[-1]
    return _log_states(traj, lambda a: at_step(a, t), (t >= 0) & (t < num_steps))


def _log_states(traj: Trajectory, take, in_range: jax.Array) -> ObjectState:
    """`ObjectState` of `take(field)` for every field of the log, valid only `in_range`."""
    return ObjectState(
        x=take(traj.x), y=take(traj.y), z=take(traj.z), vel_x=take(traj.vel_x), vel_y=take(traj.vel_y),
        yaw=take(traj.yaw), length=take(traj.length), width=take(traj.width), height=take(traj.height),
        valid=take(traj.valid) & in_range)


def trajectory_window(traj: Trajectory, start: jax.Array | int, length: int) -> ObjectState:
    """The logged states of steps `start .. start + length - 1`, time-major: every field `[length, N]`.

    Each step equals `trajectory_at(traj, step)` (clamped, invalid past the end). The
    window is read row by row from the `[N, T]` log and transposed once, so a loop
    over its steps reads contiguous `[N]` rows instead of one `[N, T]` column per step
    (one cache line per object and field).
    """
    num_steps = traj.x.shape[-1]
    steps = start + jnp.arange(length)
    index = jnp.clip(steps, 0, num_steps - 1)
    take = lambda a: jnp.moveaxis(jnp.take(a, index, axis=-1), -1, 0)
    return _log_states(traj, take, ((steps >= 0) & (steps < num_steps))[:, None])


@struct.dataclass
class ObjectMetadata:
    """Static per-object facts. Every field is `[..., N]`."""

    ids: jax.Array  # [N] int32, track id in the source log (-1 for padding, SYNTHETIC_ID if injected)
    object_types: jax.Array  # [N] int32, TYPE_*
    is_sdc: jax.Array  # [N] bool, exactly one True: the ego
    is_modeled: jax.Array  # [N] bool, tracks_to_predict / focal tracks
    is_valid: jax.Array  # [N] bool, valid at any step
    objects_of_interest: jax.Array  # [N] bool

    _SPEC = dict(ids=(("N",), _I), object_types=(("N",), _I), is_sdc=(("N",), _B), is_modeled=(("N",), _B),
                 is_valid=(("N",), _B), objects_of_interest=(("N",), _B))

    @property
    def sdc_index(self) -> jax.Array:  # [...] int32
        return jnp.argmax(self.is_sdc, axis=-1).astype(jnp.int32)

    def validate(self, prefix: str = "ObjectMetadata", dims: dict[str, int] | None = None,
                 batch: tuple[int, ...] | None = None) -> tuple[int, ...] | None:
        return _validate_fields(self, self._SPEC, prefix, {} if dims is None else dims, batch)


@struct.dataclass
class RoadMap:
    """Compiled, fixed-size map (see `jaxloop.data.mapcompile`).

    Lanes are lane-centre polylines resampled to Q points each; road edges are
    directed segments with the drivable area on their RIGHT: a point with a positive
    cross product `cross(end - start, p - start)` is off the road on that side. Raw
    WOMD edges do not follow one orientation, so `mapcompile` orients every edge by
    the side its nearby lanes lie on.
    """

    lane_xy: jax.Array  # [P, Q, 2] lane-centre points, in driving order
    lane_dir: jax.Array  # [P, Q, 2] unit tangent at each point
    lane_valid: jax.Array  # [P, Q] bool
    lane_ids: jax.Array  # [P] int32, source polyline id (-1 padding)
    lane_types: jax.Array  # [P] int32, RG_*_LANE
    lane_speed_limit: jax.Array  # [P] float32, m/s (0 = unknown)
    edge_start: jax.Array  # [E, 2] road-edge segment start
    edge_end: jax.Array  # [E, 2] road-edge segment end
    edge_types: jax.Array  # [E] int32, RG_ROAD_EDGE_*
    edge_valid: jax.Array  # [E] bool
    crosswalk_xy: jax.Array  # [C, 4, 2] crosswalk polygon corners
    crosswalk_valid: jax.Array  # [C] bool
    stop_sign_xy: jax.Array  # [S, 2] stop-sign position
    stop_sign_lane_ids: jax.Array  # [S] int32, lane it controls (-1 unknown)
    stop_sign_valid: jax.Array  # [S] bool

    _SPEC = dict(
        lane_xy=(("P", "Q", 2), _F), lane_dir=(("P", "Q", 2), _F), lane_valid=(("P", "Q"), _B),
        lane_ids=(("P",), _I), lane_types=(("P",), _I), lane_speed_limit=(("P",), _F),
        edge_start=(("E", 2), _F), edge_end=(("E", 2), _F), edge_types=(("E",), _I), edge_valid=(("E",), _B),
        crosswalk_xy=(("C", 4, 2), _F), crosswalk_valid=(("C",), _B),
        stop_sign_xy=(("S", 2), _F), stop_sign_lane_ids=(("S",), _I), stop_sign_valid=(("S",), _B))

    @property
    def num_lanes(self) -> int:
        return self.lane_xy.shape[-3]

    @property
    def num_edges(self) -> int:
        return self.edge_start.shape[-2]

    def validate(self, prefix: str = "RoadMap", dims: dict[str, int] | None = None,
                 batch: tuple[int, ...] | None = None) -> tuple[int, ...] | None:
        return _validate_fields(self, self._SPEC, prefix, {} if dims is None else dims, batch)

    @classmethod
    def empty(cls, num_lanes: int = 1, lane_points: int = 2, num_edges: int = 1, num_crosswalks: int = 1,
              num_stop_signs: int = 1) -> "RoadMap":
        z = lambda *s: jnp.zeros(s, jnp.float32)
        f = lambda *s: jnp.zeros(s, bool)
        m = lambda *s: jnp.full(s, -1, jnp.int32)
        return cls(lane_xy=z(num_lanes, lane_points, 2), lane_dir=z(num_lanes, lane_points, 2),
                   lane_valid=f(num_lanes, lane_points), lane_ids=m(num_lanes),
                   lane_types=jnp.zeros((num_lanes,), jnp.int32), lane_speed_limit=z(num_lanes),
                   edge_start=z(num_edges, 2), edge_end=z(num_edges, 2),
                   edge_types=jnp.zeros((num_edges,), jnp.int32), edge_valid=f(num_edges),
                   crosswalk_xy=z(num_crosswalks, 4, 2), crosswalk_valid=f(num_crosswalks),
                   stop_sign_xy=z(num_stop_signs, 2), stop_sign_lane_ids=m(num_stop_signs),
                   stop_sign_valid=f(num_stop_signs))


@struct.dataclass
class TrafficLights:
    """Traffic-light states over time. Every field is `[..., L, T]`."""

    state: jax.Array  # [L, T] int32, TL_*
    x: jax.Array  # [L, T] stop-point x
    y: jax.Array  # [L, T] stop-point y
    lane_ids: jax.Array  # [L, T] int32, the lane this light governs
    valid: jax.Array  # [L, T] bool

    _SPEC = dict(state=(("L", "T"), _I), x=(("L", "T"), _F), y=(("L", "T"), _F),
                 lane_ids=(("L", "T"), _I), valid=(("L", "T"), _B))

    @property
    def xy(self) -> jax.Array:  # [..., L, T, 2]
        return jnp.stack([self.x, self.y], axis=-1)

    @property
    def is_red(self) -> jax.Array:  # [..., L, T] bool: stop, arrow stop or flashing stop
        s = self.state
        return self.valid & ((s == RED_STATES[0]) | (s == RED_STATES[1]) | (s == RED_STATES[2]))

    def validate(self, prefix: str = "TrafficLights", dims: dict[str, int] | None = None,
                 batch: tuple[int, ...] | None = None) -> tuple[int, ...] | None:
        return _validate_fields(self, self._SPEC, prefix, {} if dims is None else dims, batch)

    @classmethod
    def empty(cls, num_lights: int, num_steps: int) -> "TrafficLights":
        z = jnp.zeros((num_lights, num_steps), jnp.float32)
        return cls(state=jnp.zeros((num_lights, num_steps), jnp.int32), x=z, y=z,
                   lane_ids=jnp.full((num_lights, num_steps), -1, jnp.int32),
                   valid=jnp.zeros((num_lights, num_steps), bool))


@struct.dataclass
class Route:
    """The ego's route: a polyline with cumulative arc length (see `jaxloop.data.route`)."""

    xy: jax.Array  # [R, 2]
    arc_length: jax.Array  # [R] metres from the first point, non-decreasing
    valid: jax.Array  # [R] bool

    _SPEC = dict(xy=(("R", 2), _F), arc_length=(("R",), _F), valid=(("R",), _B))

    def validate(self, prefix: str = "Route", dims: dict[str, int] | None = None,
                 batch: tuple[int, ...] | None = None) -> tuple[int, ...] | None:
        return _validate_fields(self, self._SPEC, prefix, {} if dims is None else dims, batch)


@struct.dataclass
class Scenario:
    """Everything static about one episode: the log, the map, the lights and the ego route."""

    log_trajectory: Trajectory  # [N, T]
    object_metadata: ObjectMetadata  # [N]
    roadmap: RoadMap
    traffic_lights: TrafficLights  # [L, T]
    route: Route  # [R]

    @property
    def num_objects(self) -> int:
        return self.log_trajectory.num_objects

    @property
    def num_steps(self) -> int:
        return self.log_trajectory.num_steps

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """The leading (batch) dims: `()` for one scenario, `(B,)` for a batch."""
        return tuple(np.shape(self.log_trajectory.x))[:-2]

    @property
    def num_scenarios(self) -> int:
        """B of a batch `[B, ...]` (a ShapeError for an unbatched scenario)."""
        batch = self.batch_shape
        if len(batch) != 1:
            raise ShapeError(f"Scenario.num_scenarios: expected one leading batch axis, got batch shape {list(batch)}")
        return batch[0]

    def validate(self) -> "Scenario":
        """Raises `ShapeError` naming the field if any shape disagrees; returns self."""
        dims: dict[str, int] = {}
        batch = self.log_trajectory.validate("Scenario.log_trajectory", dims, None)
        self.object_metadata.validate("Scenario.object_metadata", dims, batch)
        self.roadmap.validate("Scenario.roadmap", dims, batch)
        self.traffic_lights.validate("Scenario.traffic_lights", dims, batch)
        self.route.validate("Scenario.route", dims, batch)
        return self


@struct.dataclass
class SimState:
    """Dynamic state of one episode: what the next step needs, nothing `[N, T]`."""

    timestep: jax.Array  # [] int32, index into the log of `current`
    current: ObjectState  # [N]
    history: ObjectState  # [N, K] the last K states, oldest first, `current` last
    agent_kind: jax.Array  # [N] int32, AGENT_* of jaxloop.sim.agents: who moves each object
    controlled: jax.Array  # [M] int32, unique object indices the policy's actions apply to
    agent_state: Any  # pytree of per-object agent memory (e.g. IDM path progress)
    key: jax.Array  # PRNG key

    def validate(self) -> "SimState":
        dims: dict[str, int] = {}
        batch = _check("SimState.timestep", self.timestep, (), None, dims, _I)
        self.current.validate("SimState.current", dims, batch)
        _validate_fields(self.history, {k: (("N", "K"), v[1]) for k, v in ObjectState._SPEC.items()},
                         "SimState.history", dims, batch)
        _check("SimState.agent_kind", self.agent_kind, ("N",), batch, dims, _I)
        _check("SimState.controlled", self.controlled, ("M",), batch, dims, _I)
        return self


def stack_scenarios(scenarios: list[Scenario]) -> Scenario:
    """Stacks same-shape scenarios into one batched `Scenario` `[B, ...]` (numpy on host)."""
    if not scenarios:
        raise ValueError("stack_scenarios: empty list")
    try:
        return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *scenarios)
    except ValueError as e:
        raise ShapeError(f"stack_scenarios: scenarios differ in shape; compile them with one MapConfig/N ({e})")


def index_batch(tree: Any, i: int) -> Any:
    """The `i`-th element of a batched pytree."""
    return jax.tree.map(lambda a: a[i], tree)


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]
