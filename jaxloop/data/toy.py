"""A tiny, exactly-known scenario for tests and smoke runs.

A straight two-lane road along +x; the ego and a few cars whose logs come from the
invertible bicycle driven by smooth actions, so inverse dynamics recovers them exactly.
"""

from __future__ import annotations

import numpy as np

from jaxloop.sim.datatypes import (RG_ROAD_EDGE_BOUNDARY, RG_SURFACE_LANE, TYPE_VEHICLE, ObjectMetadata, RoadMap,
                                   Route, Scenario, TrafficLights, Trajectory, DT)

LANE_WIDTH = 3.5


def _bicycle_log(x0, y0, yaw0, v0, accel, curvature, dt=DT):
    """Integrates the bicycle (DESIGN.md) over per-step actions `[T-1]` -> arrays `[T]`."""
    steps = len(accel) + 1
    x, y, yaw, v = (np.zeros(steps, np.float64) for _ in range(4))
    x[0], y[0], yaw[0], v[0] = x0, y0, yaw0, v0
    vx, vy = np.zeros(steps), np.zeros(steps)
    vx[0], vy[0] = v0 * np.cos(yaw0), v0 * np.sin(yaw0)
    for t in range(steps - 1):
        a, k = accel[t], curvature[t]
        x[t + 1] = x[t] + vx[t] * dt + 0.5 * a * np.cos(yaw[t]) * dt ** 2
        y[t + 1] = y[t] + vy[t] * dt + 0.5 * a * np.sin(yaw[t]) * dt ** 2
        yaw[t + 1] = (yaw[t] + k * (v[t] * dt + 0.5 * a * dt ** 2) + np.pi) % (2 * np.pi) - np.pi
        v[t + 1] = v[t] + a * dt
        vx[t + 1], vy[t + 1] = v[t + 1] * np.cos(yaw[t + 1]), v[t + 1] * np.sin(yaw[t + 1])
    return x, y, yaw, vx, vy


def make_toy_scenario(num_objects: int = 8, num_steps: int = 91, num_cars: int = 4, seed: int = 0,
                      lane_points: int = 20, num_lanes: int = 4, route_points: int = 32) -> Scenario:
    """A straight two-lane road with the ego (object 0) and `num_cars - 1` other cars.

    Cars drive with small sinusoidal accelerations and curvatures (well within the
    action limits); slots past `num_cars` are padding (invalid).
    """
    if not 1 <= num_cars <= num_objects:
        raise ValueError(f"make_toy_scenario: need 1 <= num_cars <= num_objects, got {num_cars}, {num_objects}")
    rng = np.random.default_rng(seed)
    shape = (num_objects, num_steps)
    fields = {k: np.zeros(shape, np.float32) for k in ("x", "y", "z", "vel_x", "vel_y", "yaw", "length", "width",
                                                       "height")}
    valid = np.zeros(shape, bool)
    t = np.arange(num_steps - 1) * DT
    for i in range(num_cars):
        lane = i % 2
        x0 = 25.0 * (i // 2) + rng.uniform(-2, 2) + (12.0 if lane else 0.0)
        v0 = rng.uniform(8.0, 12.0)
        accel = 0.8 * np.sin(2 * np.pi * t / rng.uniform(4, 8) + rng.uniform(0, 6))
        curvature = 0.002 * np.sin(2 * np.pi * t / rng.uniform(5, 9))
        x, y, yaw, vx, vy = _bicycle_log(x0, lane * LANE_WIDTH, 0.0, v0, accel, curvature)
        for k, arr in zip(("x", "y", "yaw", "vel_x", "vel_y"), (x, y, yaw, vx, vy)):
            fields[k][i] = arr
        fields["length"][i], fields["width"][i], fields["height"][i] = 4.5, 2.0, 1.6
        valid[i] = True
    for k in ("x", "y", "yaw", "vel_x", "vel_y", "length", "width", "height"):
        fields[k][~valid] = 0.0
    traj = Trajectory(**fields, valid=valid,
                      timestamp_micros=np.broadcast_to(np.arange(num_steps, dtype=np.int32) * 100_000, shape).copy())

    ids = np.where(np.arange(num_objects) < num_cars, np.arange(num_objects), -1).astype(np.int32)
    meta = ObjectMetadata(
        ids=ids, object_types=np.where(ids >= 0, TYPE_VEHICLE, 0).astype(np.int32),
        is_sdc=np.arange(num_objects) == 0, is_modeled=np.arange(num_objects) == 0,
        is_valid=valid.any(-1), objects_of_interest=np.zeros(num_objects, bool))

    x_max = float(fields["x"][valid].max()) + 30.0
    x_min = -30.0
    lane_x = np.linspace(x_min, x_max, lane_points, dtype=np.float32)
    lane_xy = np.zeros((num_lanes, lane_points, 2), np.float32)
    lane_dir = np.zeros((num_lanes, lane_points, 2), np.float32)
    lane_valid = np.zeros((num_lanes, lane_points), bool)
    for lane in range(2):
        lane_xy[lane, :, 0], lane_xy[lane, :, 1] = lane_x, lane * LANE_WIDTH
        lane_dir[lane, :, 0] = 1.0
        lane_valid[lane] = True
    lo, hi = -LANE_WIDTH / 2, LANE_WIDTH * 1.5
    # Drivable area on the right of each edge: the lower edge runs -x, the upper +x.
    edge_start = np.array([[x_max, lo], [x_min, hi]], np.float32)
    edge_end = np.array([[x_min, lo], [x_max, hi]], np.float32)
    roadmap = RoadMap(
        lane_xy=lane_xy, lane_dir=lane_dir, lane_valid=lane_valid,
        lane_ids=np.where(np.arange(num_lanes) < 2, np.arange(num_lanes), -1).astype(np.int32),
        lane_types=np.where(np.arange(num_lanes) < 2, RG_SURFACE_LANE, 0).astype(np.int32),
        lane_speed_limit=np.where(np.arange(num_lanes) < 2, 15.0, 0.0).astype(np.float32),
        edge_start=edge_start, edge_end=edge_end,
        edge_types=np.full(2, RG_ROAD_EDGE_BOUNDARY, np.int32), edge_valid=np.ones(2, bool),
        crosswalk_xy=np.zeros((1, 4, 2), np.float32), crosswalk_valid=np.zeros(1, bool),
        stop_sign_xy=np.zeros((1, 2), np.float32), stop_sign_lane_ids=np.full(1, -1, np.int32),
        stop_sign_valid=np.zeros(1, bool))

    lights = TrafficLights(state=np.zeros((1, num_steps), np.int32), x=np.zeros((1, num_steps), np.float32),
                           y=np.zeros((1, num_steps), np.float32), lane_ids=np.full((1, num_steps), -1, np.int32),
                           valid=np.zeros((1, num_steps), bool))

    # Route: the ego's logged path, extended 30 m beyond its last point, resampled.
    ego_xy = np.stack([fields["x"][0], fields["y"][0]], -1)
    route_xy = np.linspace(ego_xy[0], ego_xy[-1] + np.array([30.0, 0.0]), route_points).astype(np.float32)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(route_xy, axis=0), axis=-1))]).astype(np.float32)
    route = Route(xy=route_xy, arc_length=arc, valid=np.ones(route_points, bool))
    return Scenario(log_trajectory=traj, object_metadata=meta, roadmap=roadmap, traffic_lights=lights, route=route).validate()


def make_track_scenario(tracks: list[dict], num_objects: int | None = None, lights: list[dict] | None = None,
                        stop_signs: list[tuple[float, float]] | None = None, x_range: tuple[float, float] = (-50.0, 250.0),
                        lane_points: int = 20, num_lanes: int = 4, route_xy: np.ndarray | None = None) -> Scenario:
    """A hand-made scenario on the toy's straight two-lane road (lanes at y = 0 and y = 3.5 along +x).

    Each track is a dict of arrays `[T]`: x, y and optionally yaw, vel_x, vel_y (default:
    finite differences of x, y), valid (default all True), and scalars length (4.5),
    width (2.0). Track 0 is the ego. Each light is a dict: x, y (stop point), lane_id
    (0 or 1) and state `[T]` (TL_* codes). Stop signs are (x, y) points. The route
    defaults to the ego's logged path extended 30 m along its last direction.
    """
    if not tracks:
        raise ValueError("make_track_scenario: need at least one track (the ego)")
    num_steps = len(np.asarray(tracks[0]["x"]))
    num_objects = len(tracks) if num_objects is None else num_objects
    if num_objects < len(tracks):
        raise ValueError(f"make_track_scenario: num_objects={num_objects} < {len(tracks)} tracks")
    shape = (num_objects, num_steps)
    fields = {k: np.zeros(shape, np.float32) for k in ("x", "y", "z", "vel_x", "vel_y", "yaw", "length", "width",
                                                       "height")}
    valid = np.zeros(shape, bool)
    for i, tr in enumerate(tracks):
        x, y = np.asarray(tr["x"], np.float64), np.asarray(tr["y"], np.float64)
        if x.shape != (num_steps,) or y.shape != (num_steps,):
            raise ValueError(f"make_track_scenario: track {i} x / y must have shape ({num_steps},), "
                             f"got {x.shape} / {y.shape}")
        vx = np.asarray(tr["vel_x"]) if "vel_x" in tr else np.gradient(x, DT)
        vy = np.asarray(tr["vel_y"]) if "vel_y" in tr else np.gradient(y, DT)
        yaw = np.asarray(tr["yaw"]) if "yaw" in tr else np.where(np.hypot(vx, vy) > 0.1, np.arctan2(vy, vx), 0.0)
        for k, arr in zip(("x", "y", "yaw", "vel_x", "vel_y"), (x, y, yaw, vx, vy)):
            fields[k][i] = arr
        fields["length"][i], fields["width"][i] = tr.get("length", 4.5), tr.get("width", 2.0)
        fields["height"][i] = 1.6
        valid[i] = np.asarray(tr.get("valid", np.ones(num_steps, bool)), bool)
    for k in fields:
        fields[k][~valid] = 0.0
    traj = Trajectory(**fields, valid=valid,
                      timestamp_micros=np.broadcast_to(np.arange(num_steps, dtype=np.int32) * 100_000, shape).copy())
    n_tracks = len(tracks)
    ids = np.where(np.arange(num_objects) < n_tracks, np.arange(num_objects), -1).astype(np.int32)
    meta = ObjectMetadata(
        ids=ids, object_types=np.where(ids >= 0, TYPE_VEHICLE, 0).astype(np.int32),
        is_sdc=np.arange(num_objects) == 0, is_modeled=np.arange(num_objects) == 0,
        is_valid=valid.any(-1), objects_of_interest=np.zeros(num_objects, bool))

    x_min, x_max = x_range
    lane_x = np.linspace(x_min, x_max, lane_points, dtype=np.float32)
    lane_xy = np.zeros((num_lanes, lane_points, 2), np.float32)
    lane_dir = np.zeros((num_lanes, lane_points, 2), np.float32)
    lane_valid = np.zeros((num_lanes, lane_points), bool)
    for lane in range(2):
        lane_xy[lane, :, 0], lane_xy[lane, :, 1] = lane_x, lane * LANE_WIDTH
        lane_dir[lane, :, 0] = 1.0
        lane_valid[lane] = True
    lo, hi = -LANE_WIDTH / 2, LANE_WIDTH * 1.5
    signs = list(stop_signs or [])
    num_signs = max(1, len(signs))
    sign_xy = np.zeros((num_signs, 2), np.float32)
    sign_valid = np.zeros(num_signs, bool)
    for i, p in enumerate(signs):
        sign_xy[i], sign_valid[i] = p, True
    roadmap = RoadMap(
        lane_xy=lane_xy, lane_dir=lane_dir, lane_valid=lane_valid,
        lane_ids=np.where(np.arange(num_lanes) < 2, np.arange(num_lanes), -1).astype(np.int32),
        lane_types=np.where(np.arange(num_lanes) < 2, RG_SURFACE_LANE, 0).astype(np.int32),
        lane_speed_limit=np.where(np.arange(num_lanes) < 2, 15.0, 0.0).astype(np.float32),
        edge_start=np.array([[x_max, lo], [x_min, hi]], np.float32),
        edge_end=np.array([[x_min, lo], [x_max, hi]], np.float32),
        edge_types=np.full(2, RG_ROAD_EDGE_BOUNDARY, np.int32), edge_valid=np.ones(2, bool),
        crosswalk_xy=np.zeros((1, 4, 2), np.float32), crosswalk_valid=np.zeros(1, bool),
        stop_sign_xy=sign_xy, stop_sign_lane_ids=np.zeros(num_signs, np.int32), stop_sign_valid=sign_valid)

    lights = list(lights or [])
    num_lights = max(1, len(lights))
    tl = TrafficLights(state=np.zeros((num_lights, num_steps), np.int32),
                       x=np.zeros((num_lights, num_steps), np.float32), y=np.zeros((num_lights, num_steps), np.float32),
                       lane_ids=np.full((num_lights, num_steps), -1, np.int32),
                       valid=np.zeros((num_lights, num_steps), bool))
    for i, light in enumerate(lights):
        tl.state[i] = np.asarray(light["state"], np.int32)
        tl.x[i], tl.y[i] = light["x"], light["y"]
        tl.lane_ids[i] = light["lane_id"]
        tl.valid[i] = True

    if route_xy is None:
        ego_xy = np.stack([fields["x"][0], fields["y"][0]], -1)[valid[0]]
        direction = ego_xy[-1] - ego_xy[-2] if len(ego_xy) > 1 else np.array([1.0, 0.0])
        direction = direction / max(np.linalg.norm(direction), 1e-6)
        route_xy = np.concatenate([ego_xy, ego_xy[-1:] + 30.0 * direction[None]], 0)
    route_xy = np.asarray(route_xy, np.float32)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(route_xy, axis=0), axis=-1))]).astype(np.float32)
    route = Route(xy=route_xy, arc_length=arc, valid=np.ones(len(route_xy), bool))
    return Scenario(log_trajectory=traj, object_metadata=meta, roadmap=roadmap, traffic_lights=tl, route=route).validate()


def pad_map(scenario: Scenario, num_lanes: int | None = None, lane_points: int | None = None,
            num_edges: int | None = None, num_lights: int | None = None) -> Scenario:
    """Pads the (unbatched) scenario's map arrays with invalid entries up to the given sizes.

    Gives toy scenarios the array sizes of compiled real maps (e.g. 256 lanes x 20
    points, 2048 road-edge segments, 16 lights) without changing what is valid.
    """
    rm, tl = scenario.roadmap, scenario.traffic_lights

    def pad(a, axis, size, value):
        a = np.asarray(a)
        if size is None or size == a.shape[axis]:
            return a
        if size < a.shape[axis]:
            raise ValueError(f"pad_map: size {size} is smaller than the existing {a.shape[axis]} on axis {axis}")
        widths = [(0, 0)] * a.ndim
        widths[axis] = (0, size - a.shape[axis])
        return np.pad(a, widths, constant_values=value)

    rm = rm.replace(
        lane_xy=pad(pad(rm.lane_xy, 0, num_lanes, 0.0), 1, lane_points, 0.0),
        lane_dir=pad(pad(rm.lane_dir, 0, num_lanes, 0.0), 1, lane_points, 0.0),
        lane_valid=pad(pad(rm.lane_valid, 0, num_lanes, False), 1, lane_points, False),
        lane_ids=pad(rm.lane_ids, 0, num_lanes, -1), lane_types=pad(rm.lane_types, 0, num_lanes, 0),
        lane_speed_limit=pad(rm.lane_speed_limit, 0, num_lanes, 0.0),
        edge_start=pad(rm.edge_start, 0, num_edges, 0.0), edge_end=pad(rm.edge_end, 0, num_edges, 0.0),
        edge_types=pad(rm.edge_types, 0, num_edges, 0), edge_valid=pad(rm.edge_valid, 0, num_edges, False))
    tl = tl.replace(state=pad(tl.state, 0, num_lights, 0), x=pad(tl.x, 0, num_lights, 0.0),
                    y=pad(tl.y, 0, num_lights, 0.0), lane_ids=pad(tl.lane_ids, 0, num_lights, -1),
                    valid=pad(tl.valid, 0, num_lights, False))
    return scenario.replace(roadmap=rm, traffic_lights=tl).validate()
