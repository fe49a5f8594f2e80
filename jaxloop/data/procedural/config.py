"""Configuration of the procedural generator: families, splits and their seed ranges, parameter ranges, sizes."""

from __future__ import annotations

import dataclasses
import functools

from jaxloop.data.mapcompile import MapConfig


FAMILY_NAMES = ("straight", "curved", "intersection", "t_junction", "merge", "roundabout")
FAMILY_IDS = {name: i for i, name in enumerate(FAMILY_NAMES)}
TRAIN_FAMILIES = ("straight", "curved", "intersection", "t_junction", "merge")
# How often each training family is drawn: real logs are mostly urban junctions, rarely highway merges.
TRAIN_FAMILY_WEIGHTS = (0.17, 0.15, 0.33, 0.25, 0.1)
OOD_FAMILIES = FAMILY_NAMES

SPLITS = ("train", "val", "test", "test_ood")
# Scenario seed ranges [start, stop) per split: disjoint, so no scenario is shared.
SPLIT_SEEDS = {"train": (0, 1_000_000_000), "val": (1_000_000_000, 1_100_000_000),
               "test": (1_100_000_000, 1_200_000_000), "test_ood": (1_200_000_000, 1_300_000_000)}

_PATH_DS = 0.5  # metres between the points of lanes and agent paths
_SHOULDER = 0.3  # metres of paved road between the outermost lane edge and the road edge
_CONFLICT_VEHICLE = 2.6  # centre-line distance under which two vehicle paths conflict (m)
_CONFLICT_PED = 1.9  # ... a pedestrian path and a vehicle path
_ZONE_BUFFER = 0.5  # metres kept before a conflict zone / behind its exit
_MAX_ACCEL = 5.5  # |a| bound of the driver (m/s²), under the action limit 6
_MAX_CURVATURE = 0.28  # |k| bound of the driver (1/m), under the action limit 0.3
_SPEED_EPS = 0.6  # the inverse bicycle's low-speed threshold (DESIGN.md)
_PARK_WIDTH = (2.6, 3.0)  # m: a kerbside parking strip between the outermost lane and the kerb
_PARK_TAPER = 5.0  # m over which a junction arm's kerb steps out to a parking strip
_PARK_INNER = 0.15  # m a parked box keeps from the lane edge (a moving vehicle keeps >= 0.2 m on its side)
_PARK_OUTER = 0.1  # m a parked box keeps from the strip's outer side (the kerb is _SHOULDER further)
_INF = 1e9
_EGO_TURN_REACH = 25.0  # m from the ego's front to its turn for the ego to count as turning in the log
_EGO_TURN_SHARE = 0.75  # chance the ego is a turning vehicle where there is one
_HEAD_TURN_SHARE = 0.5  # chance the first vehicle queued on a lane with turns takes one


# ----------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass(frozen=True)
class ParamRanges:
    """Ranges the per-scenario parameters are drawn from (uniform in [lo, hi])."""

    lane_width: tuple[float, float] = (3.2, 3.8)  # m
    curve_radius: tuple[float, float] = (45.0, 160.0)  # m, curved roads
    angle_jitter_deg: float = 12.0  # junction approach angles deviate from square by up to this
    density: tuple[float, float] = (0.45, 0.9)  # fraction of the object slots filled
    speed_scale: tuple[float, float] = (0.9, 1.05)  # times the nominal speed limits
    ramp_curvature: tuple[float, float] = (0.002, 0.0035)  # on-ramp approach parabola coefficient (1/m)
    max_lanes: int = 3  # lanes per direction at most
    # Urban streets: slower traffic and kerbside parking (real logs are mostly such streets, where most
    # vehicles around the ego are parked). Drawn per road / junction scenario; merges and roundabouts are
    # never urban.
    urban_share: float = 0.8  # chance a road or junction scenario is an urban street
    urban_speed_scale: tuple[float, float] = (0.5, 0.75)  # times the speed limits on urban streets
    parking_side: float = 0.85  # chance each kerb of an urban street has a parking strip
    parked_occupancy: tuple[float, float] = (0.45, 0.95)  # fraction of a strip's spaces taken
    parked_fraction: tuple[float, float] = (0.35, 0.6)  # share of the traffic budget given to parked vehicles

    def __post_init__(self):
        for name in ("lane_width", "curve_radius", "density", "speed_scale", "ramp_curvature", "urban_speed_scale",
                     "parked_occupancy", "parked_fraction"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"ParamRanges.{name} must satisfy 0 < lo <= hi, got {(lo, hi)}")
        if self.lane_width[0] < 2.8:
            raise ValueError(f"ParamRanges.lane_width must be >= 2.8 m (vehicles are up to 2.1 m wide), "
                             f"got {self.lane_width}")
        for name in ("urban_share", "parking_side"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"ParamRanges.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.parked_occupancy[1] > 1.0 or self.parked_fraction[1] >= 1.0:
            raise ValueError(f"ParamRanges.parked_occupancy must be <= 1 and parked_fraction < 1, got "
                             f"{self.parked_occupancy}, {self.parked_fraction}")
        if not 1 <= self.max_lanes <= 3:
            raise ValueError(f"ParamRanges.max_lanes must be in 1..3, got {self.max_lanes}")


TRAIN_PARAMS = ParamRanges()
# Held out: fewer (slow) urban streets, so faster traffic as well as the shifted ranges.
OOD_PARAMS = ParamRanges(lane_width=(2.9, 3.2), curve_radius=(28.0, 45.0), angle_jitter_deg=22.0,
                         density=(0.85, 1.0), speed_scale=(1.08, 1.2), ramp_curvature=(0.0045, 0.006),
                         urban_share=0.4)


# The map sizes of generated scenarios: lanes cut into pieces of at most 56 m (110 m junction
# arms in two pieces; 20 points about 2.9 m apart), each piece its own lane id, culled by
# every third point at 80 m; road edges are oriented as built (drivable area on their right),
# vertices within 5 cm of the previous one left out.
PROCEDURAL_MAP = MapConfig(max_lanes=64, lane_points=20, max_lane_length_m=56.0, max_edges=256, edge_segment_m=6.0,
                           max_crosswalks=8, max_stop_signs=8, cull_radius_m=80.0, orient_edges="keep",
                           lane_piece_ids=True, lane_probe_stride=3, edge_min_step_m=0.05)
# GeneratorConfig fields of earlier versions that are now those of GeneratorConfig.map.
_MOVED_TO_MAP = ("max_lanes", "lane_points", "max_lane_length_m", "max_edges", "max_crosswalks", "max_stop_signs",
                 "cull_radius_m", "edge_segment_m")


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    """Static sizes of the generated scenarios (hashable, validated).

    num_objects: N object slots; num_steps: T log steps at 10 Hz; init_steps: the
    first steps that initialise an episode (step init_steps-1 is "current");
    route_points: R points of the ego route; max_lights: L traffic-light slots.
    map: the compiled map's sizes and culling (`mapcompile.MapConfig`, `PROCEDURAL_MAP` by
      default): lanes are cut into pieces of at most `map.max_lane_length_m`, each
      resampled to `map.lane_points` points.
    """

    num_objects: int = 32
    num_steps: int = 91
    init_steps: int = 11
    route_points: int = 64
    max_lights: int = 16
    map: MapConfig = PROCEDURAL_MAP
    max_pedestrians: int = 6
    max_cyclists: int = 3
    chunk_size: int = 64  # scenarios simulated together (vectorised; the output does not depend on it)

    def __post_init__(self):
        if self.num_objects < 4:
            raise ValueError(f"GeneratorConfig.num_objects must be >= 4, got {self.num_objects}")
        if self.num_steps < 2 or not 1 <= self.init_steps < self.num_steps:
            raise ValueError(f"GeneratorConfig needs num_steps >= 2 and 1 <= init_steps < num_steps, "
                             f"got {self.num_steps}, {self.init_steps}")
        for name in ("route_points", "max_lights", "chunk_size"):
            if getattr(self, name) < 2:
                raise ValueError(f"GeneratorConfig.{name} must be >= 2, got {getattr(self, name)}")
        if not isinstance(self.map, MapConfig):
            raise ValueError(f"GeneratorConfig.map must be a mapcompile.MapConfig, got {type(self.map).__name__}")
        for name in ("max_lanes", "lane_points", "max_edges", "max_crosswalks", "max_stop_signs"):
            if getattr(self.map, name) < 2:
                raise ValueError(f"GeneratorConfig.map.{name} must be >= 2, got {getattr(self.map, name)}")
        if self.map.max_lane_length_m <= 5:
            raise ValueError(f"GeneratorConfig.map.max_lane_length_m must be > 5, got {self.map.max_lane_length_m}")
        if self.max_pedestrians < 0 or self.max_cyclists < 0:
            raise ValueError("GeneratorConfig.max_pedestrians / max_cyclists must be >= 0")

    def __getattr__(self, name):  # only for names that are not fields
        if name in _MOVED_TO_MAP:
            raise AttributeError(f"GeneratorConfig.{name} is now GeneratorConfig.map.{name} (a mapcompile.MapConfig)")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


def _reject_moved_fields(init):
    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        moved = [k for k in kwargs if k in _MOVED_TO_MAP]
        if moved:
            given = ", ".join(f"{k}=..." for k in moved)
            raise TypeError(f"GeneratorConfig({given}): the map sizes are GeneratorConfig.map, a mapcompile.MapConfig; "
                            f"pass map=dataclasses.replace(PROCEDURAL_MAP, {given})")
        init(self, *args, **kwargs)
    return __init__


GeneratorConfig.__init__ = _reject_moved_fields(GeneratorConfig.__init__)
