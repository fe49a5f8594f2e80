"""Built-in procedural driving scenarios: maps, traffic lights and expert logs.

The default dataset of jaxloop: nothing to download. Each scenario is generated from
one integer seed, deterministically, in the same `Scenario` format as the real-data
loaders (the network's polylines go through the map compiler of the real loaders,
`jaxloop.data.mapcompile.compile_polylines`, with `config.PROCEDURAL_MAP`).

Map families (`FAMILY_NAMES`): multi-lane straight and curved two-way roads (with
mid-block crosswalks, signalised or not), a 4-way signalised intersection (protected
or unprotected left turns, crosswalks with pedestrian phases), a T-junction with stop
signs on the minor road, a highway on-ramp merge, and a single-lane roundabout (held
out of the training splits). Training families are drawn with `TRAIN_FAMILY_WEIGHTS`
(mostly junctions, as in real logs).

Urban streets (`ParamRanges.urban_share` of the road and junction scenarios) have lower
speed limits, tighter queues and more stop-and-go, and kerbside parking strips between
the outermost lane and the kerb (the road edge moved out past them; on junction arms
from a few metres past the junction). Parked vehicles fill the strips' spaces nearest
the ego's route: they stand still for the whole log, outside every lane, so traffic is
never blocked by them, and they take the object slots that real logs give to the many
parked cars around the ego.

Expert logs come from a rule-based driver simulated jointly at 10 Hz in numpy,
vectorised over all agents of a whole chunk of scenarios:

- Longitudinal: IDM car following along each agent's path; stop lines (red and
  yellow lights with a stop-or-go decision at yellow onset, stop signs with a full
  stop) act as stopped leaders; a curvature speed cap slows agents before bends.
- Interaction: every pair of agents whose paths come close gets a conflict zone
  (precomputed from lane-pair proximity). Zones where the paths run the same way
  (shared lanes, merges) give projected car following; crossing zones give
  ordered passage: an agent does not enter while the agent ordered first has not
  cleared. The order follows right of way (main road over ramp and stop-controlled
  approaches, straight over unprotected left, pedestrians over turning vehicles)
  unless the yielding agent can clear the zone a safe time gap before the other
  arrives (gap acceptance); an agent that cannot stop comfortably is never
  re-ordered behind.
- Lateral: the state is integrated with the invertible kinematic bicycle of
  DESIGN.md exactly, the curvature aiming each step at the path point one step
  ahead, so the inverse bicycle recovers the logged actions and re-integrates the
  log; |a| <= 5.5 m/s², |k| <= 0.28 1/m.

The ego is drawn from the vehicles that stay on the map, weighted by interactions, and
most of the time (`_EGO_TURN_SHARE`) from those about to turn at a junction where any are.

Every generated log is then checked (box overlaps, red-light crossings, lateral
deviation from the lane) and agents that violate are removed and the chunk
re-simulated; a scenario whose ego violates is regenerated from the next sub-seed.

Speed: every stage past building a scenario's network and traffic runs on a whole chunk
of scenarios at once (conflict records, simulation, checks; maps are compiled one by
one), with every value computed from its own scenario only, so results do not depend on
the chunk size or the number of worker processes.

Splits draw scenario seeds from disjoint ranges (`SPLIT_SEEDS`): `train` [0, 1e9),
`val` [1e9, 1.1e9), `test` [1.1e9, 1.2e9) with the training parameter ranges and
families; `test_ood` [1.2e9, 1.3e9) with held-out parameter ranges (narrower lanes,
sharper curves and approach angles, denser and faster traffic, steeper ramps) and
the held-out roundabout family.

Layout of the package (each module one concern; `cli` is the command line, which the
library never imports):

- `config`: families, splits and seed ranges, `ParamRanges`, `GeneratorConfig`;
- `geometry`: polyline geometry;
- `network`: the road-network types; `roads`, `junctions`: the family builders;
- `traffic`: agents on routes and parked vehicles;
- `conflicts`: conflict zones between agent paths;
- `driver`: the joint numpy simulation of the expert driver;
- `checks`: checks of a simulated log;
- `assemble`: one chunk of scenarios, end to end;
- `pool`: the worker pool; `api`: `scenario_seeds`, `generate`;
- `cli`: `jaxloop data generate`.
"""

from jaxloop.data.procedural.api import generate, scenario_seeds
from jaxloop.data.procedural.assemble import _build_net
from jaxloop.data.procedural.config import (FAMILY_IDS, FAMILY_NAMES, OOD_FAMILIES, OOD_PARAMS, PROCEDURAL_MAP,
                                            SPLIT_SEEDS, SPLITS, TRAIN_FAMILIES, TRAIN_FAMILY_WEIGHTS, TRAIN_PARAMS,
                                            GeneratorConfig, ParamRanges)

__all__ = ["FAMILY_IDS", "FAMILY_NAMES", "OOD_FAMILIES", "OOD_PARAMS", "PROCEDURAL_MAP", "SPLITS", "SPLIT_SEEDS",
           "TRAIN_FAMILIES", "TRAIN_FAMILY_WEIGHTS", "TRAIN_PARAMS", "GeneratorConfig", "ParamRanges", "generate",
           "scenario_seeds"]
