"""Bridge to Waymax's `SimulatorState`, field by field (only when the real Waymax is installed).

Waymax (github.com/waymo-research/waymax, distributed as "waymo-waymax") is not on the
package registry; the registry's `waymax` is an unrelated placeholder. This module
imports `waymax` lazily, checks that it is the real one (`waymax.datatypes.SimulatorState`
exists) and otherwise raises an ImportError that says so.

Field correspondence (Waymax's public datatypes):

    SimulatorState.log_trajectory     <-> Scenario.log_trajectory  (x, y, z, vel_x, vel_y, yaw,
                                           length, width, height, valid, timestamp_micros)
    SimulatorState.sim_trajectory     <-> the log with SimState.history written over steps
                                           timestep-K+1 .. timestep
    SimulatorState.object_metadata    <-> Scenario.object_metadata (+ is_controlled = is_sdc)
    SimulatorState.log_traffic_light  <-> Scenario.traffic_lights (z = 0)
    SimulatorState.roadgraph_points   <-> the compiled RoadMap as points: lane points with the
                                           vector to the next point, edge segment starts with
                                           (end - start); from Waymax, raw points go through
                                           `mapcompile` like any WOMD map
    SimulatorState.timestep           <-> SimState.timestep
    SimulatorState.sdc_paths          <-  None (jaxloop keeps one ego route instead)
"""

from __future__ import annotations

import numpy as np

from jaxloop.sim.datatypes import Scenario, SimState

INSTALL_HINT = (
    "jaxloop.interop.waymax needs the real Waymax (waymo-research/waymax), installed from GitHub, e.g. "
    "`pip install git+https://github.com/waymo-research/waymax.git` (its distribution name is "
    "'waymo-waymax'). Note: the PyPI package named `waymax` is an unrelated placeholder, not Waymax; "
    "uninstall it if present. Waymax's licence is non-commercial.")

_TRAJ_FIELDS = ("x", "y", "z", "vel_x", "vel_y", "yaw", "length", "width", "height", "valid", "timestamp_micros")


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


def _traj(dt, fields: dict):
    return dt.Trajectory(**{f: np.asarray(fields[f]) for f in _TRAJ_FIELDS})


def roadmap_points(scenario: Scenario) -> dict[str, np.ndarray]:
    """The compiled map as WOMD-style points `[M]`: x, y, z, dir_x, dir_y, dir_z, types, ids, valid."""
    rm = scenario.roadmap
    lane_xy = np.asarray(rm.lane_xy)
    p, q = lane_xy.shape[:2]
    lane_next = np.concatenate([lane_xy[:, 1:] - lane_xy[:, :-1], np.zeros((p, 1, 2), lane_xy.dtype)], axis=1)
    edge_start, edge_end = np.asarray(rm.edge_start), np.asarray(rm.edge_end)
    xy = np.concatenate([lane_xy.reshape(-1, 2), edge_start])
    d = np.concatenate([lane_next.reshape(-1, 2), edge_end - edge_start])
    types = np.concatenate([np.repeat(np.asarray(rm.lane_types), q), np.asarray(rm.edge_types)]).astype(np.int32)
    ids = np.concatenate([np.repeat(np.asarray(rm.lane_ids), q),
                          -2 - np.arange(edge_start.shape[0], dtype=np.int32)]).astype(np.int32)
    valid = np.concatenate([np.asarray(rm.lane_valid).reshape(-1), np.asarray(rm.edge_valid)])
    zeros = np.zeros(xy.shape[0], np.float32)
    return dict(x=xy[:, 0].astype(np.float32), y=xy[:, 1].astype(np.float32), z=zeros,
                dir_x=d[:, 0].astype(np.float32), dir_y=d[:, 1].astype(np.float32), dir_z=zeros, types=types,
                ids=ids, valid=valid)


def to_waymax(scenario: Scenario, state: SimState | None = None, init_steps: int = 11):
    """A Waymax `SimulatorState` for one unbatched scenario (numpy leaves), at `state` or at the initial step."""
    dt = waymax_datatypes()
    log = {f: np.asarray(getattr(scenario.log_trajectory, f)) for f in _TRAJ_FIELDS}
    sim = {f: v.copy() for f, v in log.items()}
    timestep = init_steps - 1 if state is None else int(state.timestep)
    if state is not None:
        k = np.asarray(state.history.x).shape[-1]
        steps = np.arange(timestep - k + 1, timestep + 1)
        ok = (steps >= 0) & (steps < sim["x"].shape[-1])
        for f in ("x", "y", "z", "vel_x", "vel_y", "yaw", "length", "width", "height", "valid"):
            sim[f][:, steps[ok]] = np.asarray(getattr(state.history, f))[:, ok]
    meta = scenario.object_metadata
    tl = scenario.traffic_lights
    return dt.SimulatorState(
        sim_trajectory=_traj(dt, sim), log_trajectory=_traj(dt, log),
        log_traffic_light=dt.TrafficLights(x=np.asarray(tl.x), y=np.asarray(tl.y), z=np.zeros_like(np.asarray(tl.x)),
                                           state=np.asarray(tl.state), lane_ids=np.asarray(tl.lane_ids),
                                           valid=np.asarray(tl.valid)),
        object_metadata=dt.ObjectMetadata(ids=np.asarray(meta.ids), object_types=np.asarray(meta.object_types),
                                          is_sdc=np.asarray(meta.is_sdc), is_modeled=np.asarray(meta.is_modeled),
                                          is_valid=np.asarray(meta.is_valid),
                                          objects_of_interest=np.asarray(meta.objects_of_interest),
                                          is_controlled=np.asarray(meta.is_sdc)),
        timestep=np.asarray(timestep, np.int32), sdc_paths=None,
        roadgraph_points=dt.RoadgraphPoints(**roadmap_points(scenario)))


def from_waymax(sim_state, config=None, source: str = "waymax") -> tuple[Scenario, dict]:
    """A jaxloop `Scenario` (and info dict) from an unbatched Waymax `SimulatorState`.

    The log, metadata and lights are copied field by field; the roadgraph points are
    compiled with `mapcompile` and the route derived from the SDC's log, exactly as for
    a WOMD record (`config` is a `jaxloop.data.common.LoadConfig`).
    """
    waymax_datatypes()
    from jaxloop.data.common import LoadConfig, RawLog, build_scenario
    from jaxloop.data.mapcompile import RawRoadgraph

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


__all__ = ["INSTALL_HINT", "from_waymax", "roadmap_points", "to_waymax", "waymax_datatypes"]
