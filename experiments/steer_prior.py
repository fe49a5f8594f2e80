"""Route-tracking steering prior: does a pure pursuit prior under the policy keep self-play agents on the road?

    python experiments/steer_prior.py [--profile full|quick] [--out experiments/results]
        [--bc-steps 600] [--apg-steps 100] [--rollouts 16]

The learned policies output (acceleration, curvature) directly, so they must learn lateral
tracking from data, which transfers badly from procedural maps to the real ones. With
`ModelConfig.steer_prior="pure_pursuit"` the curvature's pre-tanh mean is a pure pursuit
controller toward the lookahead point on the observer's route plus the network's output
(`jaxloop.policy.networks`). This experiment trains, from the same seed, data and steps:

1. self-play behaviour cloning (`env.controlled="vehicles"`, the `selfplay_bc` run of
   `experiments/selfplay.py::presets`) with the prior "none" and "pure_pursuit";
2. a short self-play APG from each (the `selfplay_apg` run: `closed_loop_safety` rewards);

and evaluates, on procedural `test` and the 18 real WOMD scenes of `../shared/data/gpudrive`:

(a) self-play traffic (the policy drives every vehicle): per-agent at-fault collision,
    offroad, either, route completion (`evaluate(..., agents=True)`);
(b) the policy as the ego against log replay (and IDM) traffic on the real scenes: at-fault failure;
(c) realism (WOSAC-style, `jaxloop.realism`) on the 18 real scenes, with constant-velocity
    and IDM rows at the same rollout count;
(d) one real-scene self-play episode rendered with and without the prior.

The `selfplay_bc` / `selfplay_apg` rows of `OUT/selfplay.json` are listed beside the "none" runs
for reference (the same settings when `--bc-steps 600 --apg-steps 100`, the defaults).

Writes `OUT/steer_prior.json` / `.md` (after every stage), exports the four policies to
`OUT/steer_prior_policies/NAME` and keeps the runs under `OUT/runs/steer_prior_PROFILE/` (not
committed). Deterministic given `--seed`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys
import time

import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from jaxloop.experiments.open_vs_closed_loop import log, procedural_set  # noqa: E402
from real_logs import base_parser, load_files, real_files  # noqa: E402
from selfplay import (PROFILES, _f, agent_table, ego_rates, ego_table, presets as selfplay_presets, render_failure,  # noqa: E402
                      selfplay_rates)

PRIORS = ("none", "pure_pursuit")
RUNS = ("bc_none", "bc_pure_pursuit", "apg_none", "apg_pure_pursuit")
REALISM_KEYS = ("realism_meta_metric", "kinematic", "interactive", "map_based", "min_ade", "offroad",
                "distance_to_road_edge", "collision", "linear_speed", "angular_speed")


def presets(profile: str, seed: int = 0, bc_steps: int | None = None, apg_steps: int | None = None,
            lookahead_time: float = 1.0, min_lookahead: float = 5.0) -> dict:
    """`{"bc_PRIOR", "apg_PRIOR"}`: `selfplay.presets`' "selfplay_bc" / "selfplay_apg" with `model.steer_prior`
    set, `bc_steps` / `apg_steps` replacing their steps (APG's cosine decay follows)."""
    base = selfplay_presets(profile, seed)
    bc, apg = base["selfplay_bc"], base["selfplay_apg"]
    if bc_steps is not None:
        bc = dataclasses.replace(bc, steps=bc_steps)
    if apg_steps is not None:
        apg = dataclasses.replace(apg, steps=apg_steps, lr_decay_steps=apg_steps)
    out = {}
    for prior in PRIORS:
        model = dataclasses.replace(bc.model, steer_prior=prior, steer_lookahead_time=lookahead_time,
                                    steer_min_lookahead=min_lookahead)
        out[f"bc_{prior}"] = dataclasses.replace(bc, model=model)
        out[f"apg_{prior}"] = dataclasses.replace(apg, model=model)
    return out


def realism_row(label: str, agents: str, scenarios, infos, rollouts: int, seed: int) -> dict:
    """(c) the WOSAC-style realism of `agents` on the real scenes: meta-metric, categories, a few features."""
    from jaxloop.realism.evaluate import RealismConfig, RealismRunner
    t = time.perf_counter()
    rep = RealismRunner(scenarios, infos, RealismConfig(agents=agents, rollouts=rollouts, seed=seed), name=label).run()
    row = {"description": rep.description, "wall_s": round(time.perf_counter() - t, 1),
           **{k: rep.aggregate.get(k) for k in REALISM_KEYS}}
    log(f"  realism {label}: meta {row['realism_meta_metric']:.4f}, map-based {row['map_based']:.4f}, "
        f"minADE {row['min_ade']:.2f} m ({row['wall_s']:.0f} s)")
    return row


def to_markdown(res: dict) -> str:
    lines = ["# Pure pursuit steering prior under the learned policy", "",
             f"Command: `{res['command']}`  ", f"Seed: {res['seed']}; profile `{res['profile']}`; BC "
             f"{res['bc_steps']} steps, APG {res['apg_steps']} steps; lookahead clip({res['lookahead_time']} s x "
             f"speed, {res['min_lookahead']} m, 30 m)  ", f"Machine: {res['machine']}  ",
             f"Wall time: {res['wall_s'] / 60:.1f} min"
             + ("" if res.get("complete") else " (incomplete: stages below are what finished)"), "",
             "`_none`: the network alone (the default model); `_pure_pursuit`: `ModelConfig.steer_prior="
             "\"pure_pursuit\"`, the curvature mean = atanh(kappa_pp / 0.3) + the network's output. Both from the "
             "same seed, data, steps and settings (`experiments/selfplay.py::presets`' selfplay_bc / selfplay_apg). "
             "Rates are at fault unless raw. real = the 18 GPUDrive JSON WOMD scenes.", ""]
    if res.get("selfplay"):
        lines += agent_table(res["selfplay"])
        ref = res.get("reference", {}).get("selfplay", {})
        if ref:
            lines += ["", f"Reference ({res['reference']['note']}):", "",
                      "| policy | set | agents | collision | offroad | collision+offroad | route completion |",
                      "|---" * 7 + "|"]
            for name, sets in ref.items():
                for s, r in sets.items():
                    lines.append(f"| {name} | {s} | {r['num_agents']} | " + " | ".join(_f(r[k], 4) for k in (
                        "collision_rate", "offroad_rate", "collision_offroad_rate", "route_completion")) + " |")
        lines.append("")
    if res.get("ego"):
        lines += ego_table(res["ego"], "## (b) As the ego on the real scenes (other objects log replay or IDM)")
    if res.get("realism"):
        lines += [f"## (c) Realism on the 18 real scenes (WOSAC-style, {res['rollouts']} rollouts per scene)", "",
                  "WOSAC-style re-implementation (`jaxloop.realism`), not the official number; the policy rows "
                  "drive the SDC and up to 15 nearest vehicles with action noise, the rest sampled IDM "
                  "(see the row descriptions in the JSON). offroad / distance to road edge / collision / speeds: "
                  "the per-feature likelihood scores.", "",
                  "| agents | meta-metric | kinematic | interactive | map-based | offroad | dist. road edge | "
                  "collision | lin. speed | ang. speed | minADE (m) | wall s |", "|---" * 12 + "|"]
        for name, r in res["realism"].items():
            lines.append(f"| {name} | {_f(r['realism_meta_metric'], 4)} | {_f(r['kinematic'])} | "
                         f"{_f(r['interactive'])} | {_f(r['map_based'])} | {_f(r['offroad'])} | "
                         f"{_f(r['distance_to_road_edge'])} | {_f(r['collision'])} | {_f(r['linear_speed'])} | "
                         f"{_f(r['angular_speed'])} | {_f(r['min_ade'], 2)} | {r['wall_s']} |")
        lines.append("")
    if res.get("training"):
        lines += ["## Training", ""]
        for name, s in res["training"].items():
            lines.append(f"- {name}: {s['final_step']} steps, {s['wall_s']:.0f} s, first / final loss "
                         f"{_f(s.get('first_loss'), 4)} / {_f(s.get('final_loss'), 4)}"
                         + (f", ADE {_f(s['ade'], 2)} m" if s.get("ade") is not None else "")
                         + f", {s['skipped_updates']} skipped updates")
        lines.append("")
    if res.get("renders"):
        lines += ["## Rendered real-scene self-play episodes", ""]
        for name, r in res["renders"].items():
            lines.append(f"- {name}: `{r['gif']}` (scenario {r['scenario_id']}; frame `{r['png']}` at the first "
                         "ego failure or the last step)")
        lines.append("")
    if res.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in res["notes"]] + [""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = base_parser(__doc__, "(unused: the runs use experiments/selfplay.py's preset)", PROFILES)
    parser.add_argument("--bc-steps", type=int, default=None, help="BC steps (default: selfplay_bc's)")
    parser.add_argument("--apg-steps", type=int, default=None, help="APG steps (default: selfplay_apg's)")
    parser.add_argument("--lookahead-time", type=float, default=1.0, help="ModelConfig.steer_lookahead_time")
    parser.add_argument("--min-lookahead", type=float, default=5.0, help="ModelConfig.steer_min_lookahead")
    parser.add_argument("--rollouts", type=int, default=None, help="realism rollouts per scene (full: 16)")
    parser.add_argument("--stages", default="train,selfplay,ego,realism,render")
    args = parser.parse_args(argv)
    cfgs = presets(args.profile, args.seed, args.bc_steps, args.apg_steps, args.lookahead_time, args.min_lookahead)
    full = args.profile == "full"
    rollouts = args.rollouts or (16 if full else 2)
    stages = set(args.stages.split(","))
    t_start = time.perf_counter()
    out = pathlib.Path(args.out)
    runs = out / "runs" / f"steer_prior_{args.profile}"
    stem = "steer_prior" if full else f"steer_prior_{args.profile}"
    policies = out / f"{stem}_policies"
    out.mkdir(parents=True, exist_ok=True)

    from jaxloop.config import to_dict
    from jaxloop.io.logging import finite_or_none, read_jsonl
    from jaxloop.io.policies import export
    from jaxloop.train.loop import run

    dev = jax.devices()[0]
    res = {"command": " ".join(["python", "experiments/steer_prior.py"] + list(argv if argv is not None else sys.argv[1:])),
           "seed": args.seed, "profile": args.profile, "bc_steps": cfgs["bc_none"].steps,
           "apg_steps": cfgs["apg_none"].steps, "lookahead_time": args.lookahead_time,
           "min_lookahead": args.min_lookahead, "rollouts": rollouts,
           "machine": f"{dev.platform} ({os.cpu_count()} cores, shared with other jobs), jax {jax.__version__}",
           "experiments": {n: to_dict(e) for n, e in cfgs.items()}, "notes": [], "complete": False, "stage_s": {}}
    json_path = out / f"{stem}.json"
    if json_path.exists() and "train" not in stages:
        old = json.loads(json_path.read_text())
        res.update({k: old[k] for k in ("training", "selfplay", "ego", "realism", "renders", "reference", "stage_s",
                                        "wall_s_before") if k in old})
        res["wall_s_before"] = old.get("wall_s", 0.0)

    def save():
        res["wall_s"] = time.perf_counter() - t_start + res.get("wall_s_before", 0.0)
        json_path.write_text(json.dumps(finite_or_none(res), indent=1, default=float))
        (out / f"{stem}.md").write_text(to_markdown(res))

    def timed(stage, t0):
        res["stage_s"][stage] = round(time.perf_counter() - t0, 1)

    # The committed self-play runs, for reference; the same settings as the "none" runs only at their steps.
    sp_path = out / "selfplay.json"
    base = selfplay_presets(args.profile, args.seed)
    same = {"bc_none": to_dict(cfgs["bc_none"]) == to_dict(base["selfplay_bc"]),
            "apg_none": to_dict(cfgs["apg_none"]) == to_dict(base["selfplay_apg"])}
    if full and sp_path.exists():
        sp = json.loads(sp_path.read_text())
        res["reference"] = {
            "note": "experiments/results/selfplay.json, trained before the option existed; settings "
                    + ("identical to" if all(same.values()) else "NOT identical to")
                    + " bc_none / apg_none here",
            "same_settings": same,
            "selfplay": {n: {s: r for s, r in sp.get("selfplay", {}).get(n, {}).items() if s in ("test", "real")}
                         for n in ("selfplay_bc", "selfplay_apg")}}

    log(f"loading scenarios ({args.profile})")
    train_spec, test_spec = cfgs["bc_none"].data.source, cfgs["bc_none"].eval.source
    files = sorted(sum(real_files(), []))
    files = files if full else files[:3]
    real = load_files(files)
    if len(real[1]) != len(files):
        raise RuntimeError(f"expected one scenario per real file, got {len(real[1])} from {len(files)} files")
    sets = {"test": procedural_set(test_spec), "real": real}

    if "train" in stages:
        t0 = time.perf_counter()
        train = procedural_set(train_spec)
        res["training"] = {}
        for name, init in (("bc_none", None), ("bc_pure_pursuit", None), ("apg_none", "bc_none"),
                           ("apg_pure_pursuit", "bc_pure_pursuit")):
            log(f"training {name}" + (f" from {init}" if init else ""))
            s = run(cfgs[name], train[0], str(runs / name), init_from=str(runs / init) if init else None,
                    log_every=10 if name.startswith("apg") else 50, ckpt_every=100, progress=False,
                    use_tensorboard=False, run_info={"data": train_spec})
            rows = [r for r in read_jsonl(runs / name / "logs") if r.get("loss") is not None]
            s = {k: s[k] for k in ("final_step", "steps", "wall_s", "env_steps_per_s", "skipped_updates")}
            s.update(final_loss=rows[-1]["loss"] if rows else None, first_loss=rows[0]["loss"] if rows else None,
                     **{k: rows[-1][k] for k in ("action_mse", "ade", "ended_frac") if rows and k in rows[-1]})
            res["training"][name] = s
            export(str(runs / name), str(policies / name))
            save()
        del train
        timed("train", t0)

    if "selfplay" in stages:
        t0 = time.perf_counter()
        res["selfplay"] = {}
        for name in RUNS:
            log(f"(a) self-play traffic: {name}")
            res["selfplay"][name] = selfplay_rates(str(runs / name), sets, args.seed)
            save()
        timed("selfplay", t0)

    if "ego" in stages:
        t0 = time.perf_counter()
        res["ego"] = {}
        for name in RUNS:
            log(f"(b) as the ego: {name}")
            res["ego"][name] = ego_rates(name, runs / name, {"real": sets["real"]}, args.seed)
            save()
        timed("ego", t0)

    if "realism" in stages:
        t0 = time.perf_counter()
        log(f"(c) realism, {rollouts} rollouts per scene")
        specs = {"constant_velocity": "constant_velocity", "idm": "idm"}
        specs.update({n: f"policy:{policies / n}" for n in RUNS})
        res["realism"] = {}
        for label, spec in specs.items():
            res["realism"][label] = realism_row(label, spec, *real, rollouts, args.seed)
            save()
        timed("realism", t0)

    if "render" in stages and res.get("selfplay"):
        t0 = time.perf_counter()
        # One real scene, with and without the prior: the first where the "none" APG policy's ego fails.
        failed = res["selfplay"]["apg_none"]["real"]["agents_failed_scenarios"]
        ids = [i.get("scenario_id") for i in real[1]]
        index = ids.index(failed[0]) if failed else 0
        res["renders"] = {}
        for name in ("apg_none", "apg_pure_pursuit"):
            log(f"rendering {name} on real scene {ids[index]}")
            res["renders"][name] = render_failure(str(runs / name), str(files[index]), [], [real[1][index]],
                                                  out / f"{stem}_{name}_real")
            save()
        timed("render", t0)

    res["complete"] = True
    save()
    log(f"wrote {json_path} / .md in {res['wall_s'] / 60:.1f} min")
    print(to_markdown(res))
    return res


if __name__ == "__main__":
    main()
