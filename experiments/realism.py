"""Realism of simulated traffic: WOSAC-style meta-metric of each traffic model on real logs.

    python experiments/realism.py [--rollouts 32] [--fit-steps 25] [--out experiments/results]

Scenes: the 18 WOMD scenes of `../shared/data/gpudrive/` (GPUDrive / PufferDrive JSON) and
the 2 WOMD fixtures (`../shared/data/womd/`). Rows (every object valid at the current
step driven by the model, 32 rollouts per scene, 80 future steps):

- `log_resampled`: the reference, the log replayed at a per-object time scale N(1, 0.05²)
  and lateral offset N(0, 0.2² m²): what near-human variation around the log scores;
- `log`: log replay (degenerate: every rollout equals the log; its score is the
  ceiling of a distribution that puts all mass on the log);
- `constant_velocity`, `idm` (parameters sampled per rollout and object around the
  defaults), `idm_fitted` (sampled around parameters fitted by gradient through the
  simulator to the 12 training scenes of the real-logs split, `jaxloop.realism.fit`);
- `policy:bc`, `policy:apg_finetuned`: the exported ego policies of the real-logs
  experiment, `policy:selfplay_apg` (and `selfplay_apg_bc`, `selfplay_ft`) the exported
  self-play policies of `experiments/selfplay.py` (steering and IDM acceleration priors),
  driving the SDC and its 15 nearest vehicles that have somewhere to go (start farther
  than GOAL_RADIUS from their goal; parked ones are sampled IDM), per-object ego-centric
  observation, own logged path as route, deterministic actions + N(0, 0.03²) noise (a
  policy with a target speed drives toward its slot's sampled IDM desired speed), the
  other objects sampled IDM;
- `policy:selfplay_bc_real`: self-play BC trained here (`train_real_bc`, `--runs`) on the
  12 real training scenes, a checkpoint whose actions are sampled from its head.

The 18-scene rows are also averaged over the 12 training / 6 held-out scenes
(`real_all_by_split`). `--rows ... --merge` reruns some rows into an existing JSON.

The IDM fit is also compared on the 6 held-out scenes (default vs fitted). Writes
`OUT/realism.json` / `.md` and `OUT/idm_fitted.json` (the fitted parameters).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time

import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from jaxloop.experiments.open_vs_closed_loop import SHARED_DATA, log  # noqa: E402
from jaxloop.io.logging import finite_or_none as _finite  # noqa: E402
from real_logs import load_files, real_files, training_load_config  # noqa: E402

POLICIES = pathlib.Path(__file__).resolve().parent / "results" / "policies"
REAL_BC = "selfplay_bc_real"  # self-play BC trained on the 12 real training scenes (the learned realism row)


def train_real_bc(runs: pathlib.Path, seed: int, steps: int = 600) -> pathlib.Path:
    """Self-play BC on the 12 real training scenes of the real-logs split: the self-play BC preset of
    `experiments/selfplay.py` (MLP 256x256, tanh-Gaussian head, `env.controlled="vehicles"`: every vehicle with
    somewhere to go is a sample), its data replaced by the real scenes at the procedural slot sizes. Resumable:
    a finished run is kept (`jaxloop.train.loop.run` trains up to `steps` total)."""
    from selfplay import presets
    from jaxloop.train.loop import run
    out = runs / REAL_BC
    summary = out / "summary.json"
    if summary.exists() and json.loads(summary.read_text()).get("final_step", 0) >= steps:
        return out
    cfg = presets("full", seed)["selfplay_bc"]
    cfg = dataclasses.replace(cfg, steps=steps, data=dataclasses.replace(cfg.data, source="gpudrive-train-split"))
    train_files, _ = real_files()
    scenarios, _ = load_files(train_files, training_load_config())
    log(f"self-play BC on the {len(train_files)} real training scenes ({steps} steps) -> {out}")
    s = run(cfg, scenarios, str(out), log_every=100, ckpt_every=steps, progress=False, use_tensorboard=False,
            run_info={"data": "gpudrive-train-split (12 real scenes)"})
    log(f"  {s['final_step']} steps in {s['wall_s']:.0f} s")
    return out
COLUMNS = ("realism_meta_metric", "kinematic", "interactive", "map_based", "min_ade")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rollouts", type=int, default=32)
    ap.add_argument("--fit-steps", type=int, default=25)
    ap.add_argument("--policies", default=f"bc,apg_finetuned,selfplay_apg,selfplay_apg_bc,selfplay_ft,{REAL_BC}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--accel-weight", type=float, default=1.0,
                    help="acceleration term of the realism-regularised IDM fit (idm_fitted_realism)")
    ap.add_argument("--rows", default=None, help="comma-separated row labels to run (default: all)")
    ap.add_argument("--merge", action="store_true", help="add the rows to an existing OUT/realism.json")
    ap.add_argument("--runs", default="/tmp/realism_runs",
                    help=f"where the {REAL_BC} policy is trained (policy:{REAL_BC} in --policies; resumed if done)")
    ap.add_argument("--out", default="experiments/results")
    ap.add_argument("--seed-study", default=None,
                    help="comma-separated rows (constant_velocity, idm, policy:NAME) to rerun on the 18 real scenes "
                         "for --study-seeds seeds: the spread of the meta-metric over seeds, for the ranking")
    ap.add_argument("--study-seeds", type=int, default=5)
    args = ap.parse_args(argv)
    from jaxloop.realism.evaluate import RealismConfig, RealismReport, RealismRunner, aggregate, markdown_table
    from jaxloop.realism.fit import FitConfig, fit_idm, params_dict, save_params

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    train_files, held_files = real_files()
    sets = {"real_all": load_files(sorted(train_files + held_files)),
            "womd": load_files(sorted((SHARED_DATA / "womd").glob("*.tfrecord"))),
            "real_holdout": load_files(held_files)}
    wanted = None if args.rows is None else set(args.rows.split(","))
    fits = {}
    for label, cfg in (("idm_fitted", FitConfig(steps=args.fit_steps)),
                       ("idm_fitted_realism", FitConfig(steps=args.fit_steps, accel_weight=args.accel_weight))):
        if wanted is not None and label not in wanted:
            continue
        log(f"fitting IDM ({label}) on the {len(train_files)} training scenes")
        t = time.time()
        fitted, fit_info = fit_idm(load_files(train_files)[0], cfg, log=log)
        fits[label] = (fitted, fit_info, round(time.time() - t, 1), cfg)
        save_params(fitted, str(out / f"{label}.json"))
        log(f"  fitted {params_dict(fitted)} in {fits[label][2]:.0f} s")

    rows = [("log_resampled", "log_resampled", None), ("log", "log", None),
            ("constant_velocity", "constant_velocity", None), ("idm", "idm", None)]
    rows += [(label, "idm", f[0]) for label, f in fits.items()]
    policies = [p for p in args.policies.split(",") if p]
    rows += [(f"policy:{p}", f"policy:{POLICIES / p}", None) for p in policies if p != REAL_BC]
    rows = [r for r in rows if wanted is None or r[0] in wanted]
    if REAL_BC in policies and (wanted is None or f"policy:{REAL_BC}" in wanted):
        rows.append((f"policy:{REAL_BC}", f"policy:{train_real_bc(pathlib.Path(args.runs), args.seed)}", None))
    results: dict = {"sets": {}, "timing_s": {}}
    if args.merge and (out / "realism.json").exists():
        results = json.loads((out / "realism.json").read_text())
    for set_name in ("real_all", "womd", "real_holdout"):
        scenarios, infos = sets[set_name]
        for label, agents, params in rows:
            if set_name == "real_holdout" and not label.startswith("idm"):
                continue
            config = RealismConfig(agents=agents, rollouts=args.rollouts, seed=args.seed,
                                   idm_params=params if params is not None else RealismConfig().idm_params)
            t = time.time()
            runner = RealismRunner(scenarios, infos, config, name=label)
            rep = runner.run()
            t1 = time.time()
            results["sets"].setdefault(set_name, {})[label] = {
                "description": rep.description, "aggregate": rep.aggregate,
                "per_scenario": [{k: v for k, v in r.items() if k != "per_object_log_likelihood"}
                                 for r in rep.per_scenario]}
            results["timing_s"][f"{set_name}/{label}"] = round(t1 - t, 1)
            log(f"  {set_name} {label}: meta {rep.aggregate['realism_meta_metric']:.4f} "
                f"(kin {rep.aggregate['kinematic']:.3f}, int {rep.aggregate['interactive']:.3f}, "
                f"map {rep.aggregate['map_based']:.3f}), minADE {rep.aggregate['min_ade']:.2f} m, {t1 - t:.0f} s")
            (out / "realism.json").write_text(json.dumps(_finite(results), indent=1))
        stored = results["sets"].get(set_name, {})
        results.setdefault("tables", {})[set_name] = markdown_table(
            [RealismReport(name=k, description=v["description"], per_scenario=[], aggregate=v["aggregate"], config={})
             for k, v in stored.items()])
    held_ids = {str(i.get("scenario_id")) for i in sets["real_holdout"][1]}
    subset = {}
    for label, v in results["sets"].get("real_all", {}).items():
        held_rows = [r for r in v["per_scenario"] if r["scenario_id"] in held_ids]
        train_rows = [r for r in v["per_scenario"] if r["scenario_id"] not in held_ids]
        if held_rows:
            subset[label] = {"real_holdout": aggregate(held_rows), "real_train": aggregate(train_rows)}
    results["real_all_by_split"] = subset
    results["tables"]["real_all_by_split"] = markdown_table(
        [RealismReport(name=f"{k} ({split})", description="", per_scenario=[], aggregate=v[split], config={})
         for split in ("real_train", "real_holdout") for k, v in subset.items()], COLUMNS)
    for label, (fitted, fit_info, fit_s, cfg) in fits.items():
        results.setdefault("idm_fits", {})[label] = {
            "train_scenes": [f.name for f in train_files], "held_out": [f.name for f in held_files],
            "fitted": params_dict(fitted), "fit_steps": cfg.steps, "fit_s": fit_s, "speed_weight": cfg.speed_weight,
            "accel_weight": cfg.accel_weight, "prior_weight": cfg.prior_weight,
            "ade_first": fit_info["history"][0]["ade"], "ade_last": fit_info["history"][-1]["ade"],
            "log_factors": fit_info["log_factors"]}
    if args.seed_study:
        results["seed_study"] = seed_study(args.seed_study.split(","), sets["real_all"], args.rollouts,
                                           args.study_seeds)
    results["machine"] = f"{jax.default_backend()} ({jax.device_count()} device), 2-core CPU under contention"
    results["wall_min"] = round((time.time() - start) / 60, 1)
    results.setdefault("invocations", []).append({"argv": sys.argv[1:] if argv is None else list(argv),
                                                  "rows": [r[0] for r in rows], "wall_min": results["wall_min"]})
    (out / "realism.json").write_text(json.dumps(_finite(results), indent=1))
    (out / "realism.md").write_text(markdown(results, args))
    log(f"wrote {out}/realism.json and realism.md in {results['wall_min']} min")
    return 0


def seed_study(labels: list[str], scenes, rollouts: int, num_seeds: int) -> dict:
    """Each row's meta-metric on `scenes` for seeds 0 .. num_seeds - 1 (one compile per row), with mean and
    standard deviation, and each row's per-seed difference from IDM (the same seeds: paired)."""
    import numpy as np
    from jaxloop.realism.evaluate import RealismConfig, RealismRunner
    out = {}
    for label in labels:
        agents = f"policy:{POLICIES / label[len('policy:'):]}" if label.startswith("policy:") else label
        runner = RealismRunner(*scenes, RealismConfig(agents=agents, rollouts=rollouts), name=label)
        metas = [runner.run(seed=s).aggregate["realism_meta_metric"] for s in range(num_seeds)]
        out[label] = {"seeds": list(range(num_seeds)), "meta": metas, "mean": float(np.mean(metas)),
                      "std": float(np.std(metas, ddof=1)) if num_seeds > 1 else 0.0}
        log(f"  seed study {label}: {out[label]['mean']:.4f} +- {out[label]['std']:.4f} over {num_seeds} seeds")
    if "idm" in out:
        for label, row in out.items():
            diff = np.asarray(row["meta"]) - np.asarray(out["idm"]["meta"])
            row["minus_idm"] = {"per_seed": diff.tolist(), "mean": float(diff.mean()),
                                "min": float(diff.min()), "max": float(diff.max())}
    return out


def markdown(results: dict, args) -> str:
    lines = ["# Realism of simulated traffic (WOSAC-style)", "",
             "Commands (rows of a later `--merge` invocation replace the earlier ones):", ""]
    for inv in results.get("invocations", []):
        lines.append(f"- `python experiments/realism.py {' '.join(inv['argv'])}`: {inv['wall_min']} min"
                     + (f" ({', '.join(inv['rows'])})" if inv.get("rows") else ""))
    lines += ["", f"Machine: {results['machine']}", "",
             "WOSAC-style: the Waymo Open Sim Agents Challenge features, histogram / Bernoulli estimators and 2025 "
             "weights (`jaxloop.realism`), re-implemented; not the official challenge number. Higher is more "
             "human-like (1 = the log is certain under the rollouts). `log` is degenerate (every rollout is the "
             "log), `log_resampled` the near-human reference.", ""]
    for set_name, title in (("real_all", "18 real WOMD scenes (GPUDrive JSON)"), ("womd", "2 WOMD fixtures"),
                            ("real_holdout", "6 held-out real scenes: IDM default vs fitted on the other 12"),
                            ("real_all_by_split", "The 18-scene rows split: 12 training scenes / 6 held out")):
        if set_name in results.get("tables", {}):
            lines += [f"## {title}", "", results["tables"][set_name], ""]
    study = results.get("seed_study")
    if study:
        lines += ["## The 18 real scenes over seeds", "",
                  f"The meta-metric with seeds 0-{len(next(iter(study.values()))['seeds']) - 1} "
                  f"({args.rollouts} rollouts each); the difference from IDM is paired by seed.", "",
                  "| agents | per seed | mean | std | minus IDM: mean (min, max) |", "|---|---|---|---|---|"]
        for label, row in study.items():
            d = row.get("minus_idm")
            lines.append(f"| {label} | {', '.join(f'{m:.4f}' for m in row['meta'])} | {row['mean']:.4f} | "
                         f"{row['std']:.4f} | " + (f"{d['mean']:+.4f} ({d['min']:+.4f}, {d['max']:+.4f})" if d else "")
                         + " |")
        lines.append("")
    from jaxloop.sim.agents import AgentParams
    default = dataclasses.asdict(AgentParams())
    fits = results.get("idm_fits", {})
    lines += ["## IDM fitted through the simulator", "",
              "Adam on the 12 training scenes of the real-logs split, deterministic IDM driving every object, loss "
              "= position + speed error (+ acceleration error for the realism-regularised fit), "
              "`jaxloop.realism.fit`.", "",
              "| parameter | default | " + " | ".join(fits) + " |", "|---" * (len(fits) + 2) + "|"]
    for k in ("idm_desired_speed_scale", "idm_time_headway", "idm_min_gap", "idm_max_accel", "idm_comfort_decel"):
        lines.append(f"| {k} | {default[k]:.3f} | " + " | ".join(f"{f['fitted'][k]:.3f}" for f in fits.values())
                     + " |")
    lines.append("| training ADE (first -> last step), m | | " + " | ".join(
        f"{f['ade_first']:.3f} -> {f['ade_last']:.3f}" for f in fits.values()) + " |")
    lines.append("| fit steps / wall s / accel weight | | " + " | ".join(
        f"{f['fit_steps']} / {f['fit_s']} / {f['accel_weight']}" for f in fits.values()) + " |")
    lines += ["", "Rows: " + "; ".join(f"`{k}`: {v['description']}" for k, v in results["sets"]["real_all"].items()),
              ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
