"""Bridge to Waymax's `SimulatorState`, field by field.

Two layers:

- `to_waymax_fields` / `from_waymax_fields`: pure functions over arrays between jaxloop's
  datatypes and `WaymaxFields`, NamedTuples of arrays in Waymax's published field
  layout. All work is `jnp` with no host conversion (the timestep may be traced), so
  they run under `jax.jit` and `jax.vmap` and need no Waymax installed; the round trip
  `from_waymax_fields(to_waymax_fields(scenario, state))` gives back the log, metadata,
  lights, timestep and history exactly.
- `to_waymax` / `from_waymax`: the same wrapped into (read from) Waymax's own dataclasses,
  only when the real Waymax is installed. `to_waymax` stays jit- and vmap-safe;
  `from_waymax` builds a full `Scenario` (the map through `mapcompile`) on the host.

Waymax (github.com/waymo-research/waymax, distributed as "waymo-waymax") is not on the
package registry; the registry's `waymax` is an unrelated placeholder. This module
imports `waymax` lazily, checks that it is the real one (`waymax.datatypes.SimulatorState`
exists) and otherwise raises an ImportError that says so.

Field correspondence (Waymax's public datatypes):

    SimulatorState.log_trajectory     <-> Scenario.log_trajectory  (x, y, z, vel_x, vel_y, yaw,
                                           length, width, height, valid, timestamp_micros) [N, T]
    SimulatorState.sim_trajectory     <-> the log with SimState.history written over steps
                                           timestep-K+1 .. timestep
    SimulatorState.object_metadata    <-> Scenario.object_metadata [N] (+ is_controlled: the
                                           state's controlled slots, the SDC without a state)
    SimulatorState.log_traffic_light  <-> Scenario.traffic_lights [L, T] (z = 0)
    SimulatorState.roadgraph_points   <-> the compiled RoadMap as points [M]: lane points with the
                                           vector to the next point, edge segment starts with
                                           (end - start); from Waymax, raw points go through
                                           `mapcompile` like any WOMD map
    SimulatorState.timestep           <-> SimState.timestep
    SimulatorState.sdc_paths          <-  None (jaxloop keeps one ego route instead)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxloop.sim.datatypes import ObjectMetadata, ObjectState, Scenario, SimState, TrafficLights, Trajectory

INSTALL_HINT = (
    "jaxloop.interop.waymax needs the real Waymax (waymo-research/waymax), installed from GitHub, e.g. "
    "`pip install git+https://github.com/waymo-research/waymax.git` (its distribution name is "
    "'waymo-waymax'). Note: the PyPI package named `waymax` is an unrelated placeholder, not Waymax; "
    "uninstall it if present. Waymax's licence is non-commercial.")

_TRAJ_FIELDS = ("x", "y", "z", "vel_x", "vel_y", "yaw", "length", "width", "height", "valid", "timestamp_micros")
_STATE_FIELDS = ("x", "y", "z", "vel_x", "vel_y", "yaw", "length", "width", "height", "valid")


class WaymaxTrajectory(NamedTuple):
    """Waymax `Trajectory` fields, each `[..., N, T]`."""

    x: jax.Array
    y: jax.Array
    z: jax.Array
    vel_x: jax.Array
    vel_y: jax.Array
    yaw: jax.Array
    length: jax.Array
    width: jax.Array
    height: jax.Array
    valid: jax.Array  # bool
    timestamp_micros: jax.Array  # int


class WaymaxTrafficLights(NamedTuple):
    """Waymax `TrafficLights` fields, each `[..., L, T]`."""

    x: jax.Array
    y: jax.Array
    z: jax.Array
    state: jax.Array  # int32
    lane_ids: jax.Array  # int32
    valid: jax.Array  # bool


class WaymaxObjectMetadata(NamedTuple):
    """Waymax `ObjectMetadata` fields, each `[..., N]`."""

    ids: jax.Array
    object_types: jax.Array
    is_sdc: jax.Array
    is_modeled: jax.Array
    is_valid: jax.Array
    objects_of_interest: jax.Array
    is_controlled: jax.Array


class WaymaxRoadgraphPoints(NamedTuple):
    """Waymax `RoadgraphPoints` fields, each `[..., M]`."""

    x: jax.Array
    y: jax.Array
    z: jax.Array
    dir_x: jax.Array
    dir_y: jax.Array
    dir_z: jax.Array
    types: jax.Array  # int32
    ids: jax.Array  # int32
    valid: jax.Array  # bool


class WaymaxFields(NamedTuple):
    """Waymax `SimulatorState` fields (`sdc_paths` is None on the Waymax side)."""

    sim_trajectory: WaymaxTrajectory
    log_trajectory: WaymaxTrajectory
    log_traffic_light: WaymaxTrafficLights
    object_metadata: WaymaxObjectMetadata
    timestep: jax.Array  # [...] int32
    roadgraph_points: WaymaxRoadgraphPoints


class JaxloopFields(NamedTuple):
    """What `from_waymax_fields` recovers: jaxloop datatypes at the pure-array level."""

    log_trajectory: Trajectory  # [N, T]
    object_metadata: ObjectMetadata  # [N]
    traffic_lights: TrafficLights  # [L, T]
    timestep: jax.Array  # [] int32
    history: ObjectState  # [N, K] sim_trajectory at steps timestep-K+1 .. timestep (invalid before step 0)
    is_controlled: jax.Array  # [N] bool


def waymax_datatypes():
    """`waymax.datatypes` of the real Waymax, or ImportError with the install hint."""
    try:
        import waymax  # noqa: F401
        from waymax import datatypes
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    if not hasattr(datatypes, "SimulatorState"):
        raise ImportError("the installed `waymax` has no waymax.datatypes.SimulatorState. " + INSTALL_HINT)
    return datatypes


def roadmap_points(scenario: Scenario) -> WaymaxRoadgraphPoints:
    """The compiled map of one unbatched scenario as WOMD-style points `[M]` (M = P * Q + E)."""
    rm = scenario.roadmap
    lane_xy = jnp.asarray(rm.lane_xy)
    p, q = lane_xy.shape[-3:-1]
    # The last point of a lane has no next point: a zero direction, as for a polyline's end.
    lane_next = jnp.concatenate([lane_xy[:, 1:] - lane_xy[:, :-1], jnp.zeros((p, 1, 2), lane_xy.dtype)], axis=1)
    edge_start, edge_end = jnp.asarray(rm.edge_start), jnp.asarray(rm.edge_end)
    xy = jnp.concatenate([lane_xy.reshape(-1, 2), edge_start]).astype(jnp.float32)
    d = jnp.concatenate([lane_next.reshape(-1, 2), edge_end - edge_start]).astype(jnp.float32)
    types = jnp.concatenate([jnp.repeat(jnp.asarray(rm.lane_types), q), jnp.asarray(rm.edge_types)])
    # Edge segments get their own negative ids, apart from every lane id and from -1 (padding).
    ids = jnp.concatenate([jnp.repeat(jnp.asarray(rm.lane_ids), q),
                           -2 - jnp.arange(edge_start.shape[0], dtype=jnp.int32)])
    valid = jnp.concatenate([jnp.asarray(rm.lane_valid).reshape(-1), jnp.asarray(rm.edge_valid)])
    zeros = jnp.zeros(xy.shape[0], jnp.float32)
    return WaymaxRoadgraphPoints(x=xy[:, 0], y=xy[:, 1], z=zeros, dir_x=d[:, 0], dir_y=d[:, 1], dir_z=zeros,
                                 types=types.astype(jnp.int32), ids=ids.astype(jnp.int32), valid=valid.astype(bool))


def to_waymax_fields(scenario: Scenario, state: SimState | None = None, init_steps: int = 11) -> WaymaxFields:
    """Waymax-layout arrays for one unbatched scenario, at `state` or at the initial step `init_steps - 1`.

    Pure `jnp` (the state's timestep may be traced): use under `jax.jit` / `jax.vmap`.
    """
    log = scenario.log_trajectory
    log_fields = {f: jnp.asarray(getattr(log, f)) for f in _TRAJ_FIELDS}
    sim_fields = dict(log_fields)
    meta = scenario.object_metadata
    num_objects, num_steps = log_fields["x"].shape[-2:]
    if state is None:
        timestep = jnp.asarray(init_steps - 1, jnp.int32)
        is_controlled = jnp.asarray(meta.is_sdc, bool)
    else:
        timestep = jnp.asarray(state.timestep, jnp.int32)
        is_controlled = jnp.zeros(num_objects, bool).at[state.controlled].set(True)
        k = state.history.x.shape[-1]
        # Log step t holds history slot t - (timestep - K + 1) when that slot exists; a
        # gather over [T] rather than a dynamic slice keeps a traced timestep in bounds.
        slot = jnp.arange(num_steps) - (timestep - k + 1)
        in_window = (slot >= 0) & (slot < k)
        take = jnp.clip(slot, 0, k - 1)
        for f in _STATE_FIELDS:
            hist = jnp.asarray(getattr(state.history, f))
            sim_fields[f] = jnp.where(in_window, jnp.take(hist, take, axis=-1), sim_fields[f]).astype(hist.dtype)
    tl = scenario.traffic_lights
    tl_x = jnp.asarray(tl.x)
    return WaymaxFields(
        sim_trajectory=WaymaxTrajectory(**sim_fields),
        log_trajectory=WaymaxTrajectory(**log_fields),
        log_traffic_light=WaymaxTrafficLights(x=tl_x, y=jnp.asarray(tl.y), z=jnp.zeros_like(tl_x),
                                              state=jnp.asarray(tl.state), lane_ids=jnp.asarray(tl.lane_ids),
                                              valid=jnp.asarray(tl.valid)),
        object_metadata=WaymaxObjectMetadata(
            ids=jnp.asarray(meta.ids), object_types=jnp.asarray(meta.object_types), is_sdc=jnp.asarray(meta.is_sdc),
            is_modeled=jnp.asarray(meta.is_modeled), is_valid=jnp.asarray(meta.is_valid),
            objects_of_interest=jnp.asarray(meta.objects_of_interest), is_controlled=is_controlled),
        timestep=timestep,
        roadgraph_points=roadmap_points(scenario))


def from_waymax_fields(fields: WaymaxFields, history_length: int = 5) -> JaxloopFields:
    """The jaxloop datatypes held by Waymax-layout arrays of one unbatched state (pure `jnp`).

    `history` is the `history_length` sim-trajectory steps ending at `timestep`; steps
    before 0 come back invalid (zeros). The roadgraph points are not turned back into a
    `RoadMap` here: that is `mapcompile`'s job (`from_waymax`).
    """
    log = Trajectory(**{f: jnp.asarray(getattr(fields.log_trajectory, f)) for f in _TRAJ_FIELDS})
    m = fields.object_metadata
    meta = ObjectMetadata(ids=m.ids, object_types=m.object_types, is_sdc=m.is_sdc, is_modeled=m.is_modeled,
                          is_valid=m.is_valid, objects_of_interest=m.objects_of_interest)
    t = fields.log_traffic_light
    lights = TrafficLights(state=t.state, x=t.x, y=t.y, lane_ids=t.lane_ids, valid=t.valid)
    timestep = jnp.asarray(fields.timestep, jnp.int32)
    sim = fields.sim_trajectory
    steps = timestep - history_length + 1 + jnp.arange(history_length)
    in_range = (steps >= 0) & (steps < sim.x.shape[-1])
    take = jnp.clip(steps, 0, sim.x.shape[-1] - 1)
    hist = {}
    for f in _STATE_FIELDS:
        a = jnp.take(jnp.asarray(getattr(sim, f)), take, axis=-1)
        hist[f] = (a & in_range) if f == "valid" else jnp.where(in_range, a, jnp.zeros((), a.dtype))
    return JaxloopFields(log_trajectory=log, object_metadata=meta, traffic_lights=lights, timestep=timestep,
                         history=ObjectState(**hist), is_controlled=jnp.asarray(m.is_controlled, bool))


def wrap_waymax(fields: WaymaxFields):
    """Waymax's `SimulatorState` holding `fields` (needs the real Waymax; no host conversion)."""
    dt = waymax_datatypes()
    return dt.SimulatorState(
        sim_trajectory=dt.Trajectory(**fields.sim_trajectory._asdict()),
        log_trajectory=dt.Trajectory(**fields.log_trajectory._asdict()),
        log_traffic_light=dt.TrafficLights(**fields.log_traffic_light._asdict()),
        object_metadata=dt.ObjectMetadata(**fields.object_metadata._asdict()),
        timestep=fields.timestep, sdc_paths=None,
        roadgraph_points=dt.RoadgraphPoints(**fields.roadgraph_points._asdict()))


def to_waymax(scenario: Scenario, state: SimState | None = None, init_steps: int = 11):
    """A Waymax `SimulatorState` for one unbatched scenario, at `state` or at the initial step.

    jit- and vmap-safe: `jax.vmap(lambda s, k: to_waymax(s, env.reset(s, k)))` batches it.
    """
    waymax_datatypes()  # the install hint before any array work
    return wrap_waymax(to_waymax_fields(scenario, state, init_steps))


def from_waymax(sim_state, config=None, source: str = "waymax") -> tuple[Scenario, dict]:
    """A jaxloop `Scenario` (and info dict) from an unbatched Waymax `SimulatorState`.

    The log, metadata and lights are copied field by field; the roadgraph points are
    compiled with `mapcompile` and the route derived from the SDC's log, exactly as for
    a WOMD record (`config` is a `jaxloop.data.LoadConfig`).
    """
    waymax_datatypes()
    from jaxloop.data import LoadConfig, RawLog, RawRoadgraph, build_scenario

    config = LoadConfig() if config is None else config
    lt = sim_state.log_trajectory
    traj = {f: np.asarray(getattr(lt, f)) for f in _TRAJ_FIELDS}
    traj["valid"] = traj["valid"].astype(bool)
    meta = sim_state.object_metadata
    rg = sim_state.roadgraph_points
    xyz = np.stack([np.asarray(rg.x), np.asarray(rg.y), np.asarray(rg.z)], -1)
    d = np.stack([np.asarray(rg.dir_x), np.asarray(rg.dir_y), np.asarray(rg.dir_z)], -1)
    raw = RawRoadgraph(xyz=xyz, dir=d, types=np.asarray(rg.types), ids=np.asarray(rg.ids), valid=np.asarray(rg.valid))
    tl = sim_state.log_traffic_light
    log = RawLog(
        traj=traj, ids=np.asarray(meta.ids), types=np.asarray(meta.object_types), is_sdc=np.asarray(meta.is_sdc),
        is_modeled=np.asarray(meta.is_modeled), objects_of_interest=np.asarray(meta.objects_of_interest),
        roadgraph=raw, light_lane_ids=np.asarray(tl.lane_ids).T, light_state=np.asarray(tl.state).T,
        light_xy=np.stack([np.asarray(tl.x).T, np.asarray(tl.y).T], -1), light_valid=np.asarray(tl.valid).T,
        current_index=int(np.asarray(sim_state.timestep)), scenario_id=source,
        field_name=lambda f, t: f"log_trajectory.{f}[:, {t}]", sdc_field="object_metadata.is_sdc",
        objects_field="object_metadata.ids")
    return build_scenario(log, config, source=source, fmt="waymax")


__all__ = ["INSTALL_HINT", "JaxloopFields", "WaymaxFields", "WaymaxObjectMetadata", "WaymaxRoadgraphPoints",
           "WaymaxTrafficLights", "WaymaxTrajectory", "from_waymax", "from_waymax_fields", "roadmap_points",
           "to_waymax", "to_waymax_fields", "waymax_datatypes", "wrap_waymax"]
