"""One chunk of scenarios: build the networks and traffic, choose the egos, simulate, check and assemble."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxloop.data.procedural.checks import _violations
from jaxloop.data.procedural.config import (FAMILY_IDS, FAMILY_NAMES, OOD_FAMILIES, OOD_PARAMS, SPLITS, TRAIN_FAMILIES,
                                            TRAIN_FAMILY_WEIGHTS, TRAIN_PARAMS, _EGO_TURN_REACH, _EGO_TURN_SHARE, _INF,
                                            _PATH_DS, GeneratorConfig, ParamRanges)
from jaxloop.data.procedural.conflicts import _records
from jaxloop.data.procedural.driver import _Batch, _simulate
from jaxloop.data.procedural.junctions import _build_junction
from jaxloop.data.mapcompile import compile_polylines
from jaxloop.data.procedural.network import _Net
from jaxloop.data.procedural.roads import _build_merge, _build_road, _build_roundabout
from jaxloop.data.procedural.traffic import _add_parked, _spawn
from jaxloop.sim.datatypes import (DT, TL_ARROW_CAUTION, TL_ARROW_GO, TL_ARROW_STOP, TL_CAUTION, TL_GO, TL_STOP,
                                   TYPE_CYCLIST, TYPE_PEDESTRIAN, TYPE_VEHICLE, ObjectMetadata, Route, Scenario,
                                   TrafficLights, Trajectory)


def _build_net(family: str, rng: np.random.Generator, pr: ParamRanges, num_steps: int) -> _Net:
    if family == "straight":
        return _build_road(rng, pr, False, num_steps)
    if family == "curved":
        return _build_road(rng, pr, True, num_steps)
    if family == "intersection":
        return _build_junction(rng, pr, 4, num_steps)
    if family == "t_junction":
        return _build_junction(rng, pr, 3, num_steps)
    if family == "merge":
        return _build_merge(rng, pr)
    if family == "roundabout":
        return _build_roundabout(rng, pr)
    raise ValueError(f"unknown procedural family {family!r}; expected one of {FAMILY_NAMES}")


def _scenario_rng(split: str, scenario_seed: int, attempt: int) -> np.random.Generator:
    return np.random.default_rng([SPLITS.index(split), scenario_seed, attempt])


def _build_item(split: str, scenario_seed: int, attempt: int, cfg: GeneratorConfig) -> dict:
    rng = _scenario_rng(split, scenario_seed, attempt)
    ood = split == "test_ood"
    if ood:
        family = OOD_FAMILIES[int(rng.integers(len(OOD_FAMILIES)))]
    else:
        cum = np.cumsum(TRAIN_FAMILY_WEIGHTS)
        family = TRAIN_FAMILIES[min(int(np.searchsorted(cum, rng.random() * cum[-1], "right")), len(cum) - 1)]
    pr = OOD_PARAMS if ood else TRAIN_PARAMS
    net = _build_net(family, rng, pr, cfg.num_steps)

    def red_at0(sig):
        if sig < 0:
            return False
        st = net.lights[sig].states[: cfg.init_steps + 20].tolist()
        return not {TL_STOP, TL_ARROW_STOP, TL_CAUTION, TL_ARROW_CAUTION}.isdisjoint(st)

    agents = _spawn(net, rng, pr, cfg, red_at0)[: cfg.num_objects]
    return dict(split=split, seed=scenario_seed, attempt=attempt, family=family, net=net, agents=agents,
                alive=np.ones(len(agents), bool), rng=rng, params=pr)


def _choose_egos(items: list[dict], cfg: GeneratorConfig) -> None:
    """Conflict records of the items (all at once), then each item's ego: a vehicle that stays on the
    map for the whole log, preferring interactions."""
    horizon = (cfg.num_steps - 1) * DT
    for item, records in zip(items, _records(items)):
        agents, rng = item["agents"], item["rng"]
        score = np.zeros(len(agents))
        w_rec = np.where(records[:, 6] > 0, 1.0, 2.0)
        score += np.bincount(records[:, 0].astype(np.int64), w_rec, len(agents))
        score += np.bincount(records[:, 1].astype(np.int64), w_rec, len(agents))
        cands = []
        for k, ag in enumerate(agents):
            if ag.kind != TYPE_VEHICLE or ag.tag == "parked":
                continue
            room = (len(ag.path) - 1) * _PATH_DS - ag.s0 - ag.length / 2
            if room < ag.vdes * horizon + 10.0:
                continue
            bonus = {"left": 4.0, "merge": 4.0, "roundabout": 3.0, "right": 2.0}.get(ag.tag, 0.0)
            bonus += 3.0 if ag.stop_sign else (1.5 if ag.stop_sig >= 0 else 0.0)
            if ag.stop_s < _INF and ag.stop_s - ag.s0 < 45.0:
                bonus += 3.0
            # A turn whose connector starts within _EGO_TURN_REACH of the front, with no red light or
            # stop sign before it for the first 4 s, is (mostly) inside the log.
            turn = (ag.tag in ("left", "right") and ag.lane_off[1] - ag.s0 - ag.length / 2 < _EGO_TURN_REACH
                    and not ag.stop_sign and (ag.stop_sig < 0 or bool(np.isin(
                        item["net"].lights[ag.stop_sig].states[:40], (TL_GO, TL_ARROW_GO)).all())))
            cands.append((k, 1.0 + score[k] + bonus, turn))
        # Real egos turn far more often than a draw by interaction alone gives: most of the time, a turning one.
        turning = [c for c in cands if c[2]]
        if turning and rng.random() < _EGO_TURN_SHARE:
            cands = turning
        if cands:
            w = np.array([c[1] for c in cands]) ** 2
            ego = cands[int(rng.choice(len(cands), p=w / w.sum()))][0]
        else:
            veh = [k for k, a in enumerate(agents) if a.kind == TYPE_VEHICLE]
            ego = veh[0] if veh else 0
        item["records"], item["ego"] = records, ego
        _add_parked(item, item["params"], cfg)  # after the records: parked vehicles take part in none


def _focus(item: dict, b: _Batch, out: dict, lo: int, cfg: GeneratorConfig) -> tuple[np.ndarray, np.ndarray]:
    """The ego route `[R, 2]` (from 5 m behind its start to 60 m past its end) and the map's focus points `[F, 2]`:
    the ego's log and route and every agent's log every 3 s, one point per 8 m cell (as good for
    culling at 80 m, and it keeps the distance computations small)."""
    g = lo + item["ego"]
    hi = lo + len(item["agents"])
    ego_path = b.px[b.p_start[g]: b.p_start[g] + b.p_n[g]], b.py[b.p_start[g]: b.p_start[g] + b.p_n[g]]
    s_ego = out["s"][g]
    r0, r1 = max(s_ego[0] - 5.0, 0.0), min(s_ego[-1] + 60.0, b.p_len[g])
    rs = np.linspace(r0, r1, cfg.route_points)
    grid = np.arange(b.p_n[g]) * _PATH_DS
    route_xy = np.stack([np.interp(rs, grid, ego_path[0]), np.interp(rs, grid, ego_path[1])], -1)
    sub_valid = out["valid"][lo:hi, ::30]
    others = np.stack([out["x"][lo:hi, ::30][sub_valid], out["y"][lo:hi, ::30][sub_valid]], -1)
    focus = np.concatenate([np.stack([out["x"][g, ::5], out["y"][g, ::5]], -1), route_xy[::2], others])
    cell = np.floor(focus / 8.0).astype(np.int64)
    _, first = np.unique(cell[:, 0] * 1_000_003 + cell[:, 1], return_index=True)
    return route_xy, focus[np.sort(first)]


def _compile_map(net: _Net, focus: np.ndarray, cfg: GeneratorConfig) -> tuple:
    """The network compiled into a `RoadMap` by `mapcompile.compile_polylines` (lane pieces numbered 1, 2, ...
    with `PROCEDURAL_MAP`), culled around `focus` `[F, 2]`: (RoadMap, whether features within the cull radius were
    dropped for capacity, the id `[num lanes]` of each lane's last piece)."""
    roadmap, report, last_ids = compile_polylines(net.polylines(), focus, cfg.map)
    return roadmap, report.dropped_any, last_ids


def _log_fields(out: dict) -> np.ndarray:
    """The logged x, y, vel_x, vel_y, yaw `[5, G, T]` of every simulated agent (float32, zero where not valid)."""
    yaw, speed = out["yaw"], out["v"]
    fields = np.stack([out["x"], out["y"], speed * np.cos(yaw), speed * np.sin(yaw), yaw])
    return np.where(out["valid"], fields, 0.0).astype(np.float32)


def _assemble(item: dict, b: _Batch, out: dict, logs: np.ndarray, lo: int, cfg: GeneratorConfig,
              route_xy: np.ndarray, focus: np.ndarray, compiled: tuple) -> tuple[Scenario, dict]:
    """One finished scenario from its simulated log (`logs`: `_log_fields` of the chunk) and compiled map."""
    rng = item["rng"]
    agents = item["agents"]
    n_ag = len(agents)
    N, T = cfg.num_objects, cfg.num_steps
    alive = item["alive"]
    keep = np.flatnonzero(alive)
    ego = item["ego"]
    # Random slots for the kept agents among the first len(keep) object slots.
    slots = rng.permutation(len(keep))
    slot_of = {int(a): int(sl) for a, sl in zip(keep, slots)}
    shape = (N, T)
    g = lo + keep
    valid = np.zeros(shape, bool)
    valid[slots] = v_rows = out["valid"][g]
    types = np.zeros(N, np.int32)
    types[slots] = b.kind[g]
    # Fields (x, y, vel_x, vel_y, yaw, length, width, height, z), zero where not valid.
    fields = np.zeros((9, N, T), np.float32)
    fields[0:5, slots] = logs[:, g]
    dims = np.stack([b.length[g], b.width[g], np.array([agents[a].height for a in keep], np.float64)])
    fields[5:8, slots] = np.where(v_rows, dims[:, :, None], 0.0)
    fields[8] = fields[7] / 2
    traj = Trajectory(x=fields[0], y=fields[1], vel_x=fields[2], vel_y=fields[3], yaw=fields[4], length=fields[5],
                      width=fields[6], height=fields[7], z=fields[8], valid=valid,
                      timestamp_micros=np.broadcast_to(np.arange(T, dtype=np.int32) * 100_000, shape).copy())
    ego_slot = slot_of[ego]
    is_sdc = np.arange(N) == ego_slot
    rec = item["records"][:, :2].astype(np.int64)
    other = np.concatenate([rec[rec[:, 0] == ego, 1], rec[rec[:, 1] == ego, 0]])
    interacting = {slot_of[int(o)] for o in other if alive[o]}
    interest = np.zeros(N, bool)
    interest[sorted(interacting)] = True
    modeled = is_sdc.copy()
    veh_slots = [sl for sl in sorted(interacting) if types[sl] == TYPE_VEHICLE][:7]
    modeled[veh_slots] = True
    ids = np.full(N, -1, np.int32)
    ids[: len(keep)] = np.arange(len(keep))
    meta = ObjectMetadata(ids=ids, object_types=types, is_sdc=is_sdc, is_modeled=modeled, is_valid=valid.any(-1),
                          objects_of_interest=interest)
    net = item["net"]
    roadmap, dropped, last_id = compiled
    # Lights: the governed lane is the last piece of the approach lane, the stop point its end.
    L = cfg.max_lights
    tl = dict(state=np.zeros((L, T), np.int32), x=np.zeros((L, T), np.float32), y=np.zeros((L, T), np.float32),
              lane_ids=np.full((L, T), -1, np.int32), valid=np.zeros((L, T), bool))
    kept_ids = set(roadmap.lane_ids[roadmap.lane_ids >= 0].tolist())
    lights = [lt for lt in net.lights if last_id[lt.lane] in kept_ids]
    if len(lights) > L:
        end = np.array([net.lanes[lt.lane].xy[-1] for lt in lights])
        d = np.min(np.linalg.norm(end[:, None] - focus[None], axis=-1), axis=1)
        lights = [lights[i] for i in np.argsort(d, kind="stable")[:L]]
    for k, lt in enumerate(lights):
        stop = net.lanes[lt.lane].xy[-1]
        tl["state"][k] = lt.states
        tl["x"][k], tl["y"][k] = stop[0], stop[1]
        tl["lane_ids"][k] = last_id[lt.lane]
        tl["valid"][k] = True
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(route_xy, axis=0), axis=1))])
    route = Route(xy=route_xy.astype(np.float32), arc_length=arc.astype(np.float32),
                  valid=np.ones(cfg.route_points, bool))
    scenario = Scenario(log_trajectory=traj, object_metadata=meta, roadmap=roadmap, traffic_lights=TrafficLights(**tl),
                        route=route)
    kinds = [agents[a].kind for a in keep]
    info = dict(scenario_id=f"procedural-{item['split']}-{item['seed']}", format="procedural",
                family=item["family"], split=item["split"], seed=int(item["seed"]), attempt=int(item["attempt"]),
                ego_route=agents[ego].tag, num_vehicles=kinds.count(TYPE_VEHICLE),
                num_pedestrians=kinds.count(TYPE_PEDESTRIAN), num_cyclists=kinds.count(TYPE_CYCLIST),
                num_parked=sum(agents[a].tag == "parked" for a in keep),
                num_removed=int(n_ag - len(keep)), map_dropped=dropped)
    return scenario, info


def _generate_chunk(split: str, seeds: Sequence[int], cfg: GeneratorConfig) -> tuple[list[Scenario], list[dict]]:
    items = {k: _build_item(split, int(sd), 0, cfg) for k, sd in enumerate(seeds)}
    _choose_egos(list(items.values()), cfg)
    done: dict[int, tuple[Scenario, dict]] = {}
    pending = list(items)
    for _ in range(12):
        if not pending:
            break
        batch_items = [items[k] for k in pending]
        b = _Batch(batch_items, cfg.num_steps)
        out = _simulate(b)
        bad_all = _violations(b, out)
        nxt, fin = [], []
        for pos, k in enumerate(pending):
            it = items[k]
            lo = int(b.base[pos])
            bad = bad_all[lo:lo + len(it["agents"])] & it["alive"]
            ego = it["ego"]
            if bad[ego] or not out["valid"][lo + ego].all():
                items[k] = _build_item(split, it["seed"], it["attempt"] + 1, cfg)
                _choose_egos([items[k]], cfg)
                nxt.append(k)
            elif bad.any():
                it["alive"] = it["alive"] & ~bad
                nxt.append(k)
            else:
                fin.append((k, lo))
        if fin:
            focus = [_focus(items[k], b, out, lo, cfg) for k, lo in fin]
            maps = [_compile_map(items[k]["net"], fxy, cfg) for (k, _), (_, fxy) in zip(fin, focus)]
            logs = _log_fields(out)
            for (k, lo), (route_xy, fxy), compiled in zip(fin, focus, maps):
                done[k] = _assemble(items[k], b, out, logs, lo, cfg, route_xy, fxy, compiled)
        pending = nxt
    if pending:
        raise RuntimeError(f"procedural: scenarios {[items[k]['seed'] for k in pending]} of split {split!r} "
                           "failed their checks after 12 rounds")
    return [done[k][0] for k in range(len(seeds))], [done[k][1] for k in range(len(seeds))]
