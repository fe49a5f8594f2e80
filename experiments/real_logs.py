"""Real driving logs: does closed-loop post-training transfer to real WOMD scenes, and does fine-tuning on them help?

    python experiments/real_logs.py [--profile full|quick] [--out experiments/results]

Real scenes: the 18 WOMD scenes of `../shared/data/gpudrive/` (GPUDrive / PufferDrive JSON)
and the fixtures (2 WOMD records, 1 Argoverse 2 scenario). The fixed split of the 18:
sorted by file name, every third file (positions 2, 5, 8, 11, 14, 17) is held out, the
other 12 are the fine-tuning set (`REAL_HOLDOUT`).

1. behaviour cloning (open loop) on procedural `train`;
2. setting (a), transfer: APG post-training from BC on procedural `train` only;
3. setting (b), fine-tuning: APG from (a) on a mixture of procedural `train` and the 12
   real training scenes (`--data procedural@W_P real@W_R`: each batch holds both in the
   configured proportion, `jaxloop.data.mixture`);
4. every policy, the IDM ego and the expert (ego log replay) evaluated in closed loop
   (other objects log replay) on procedural `test`, the 6 held-out real scenes, all 18,
   and the fixtures: at-fault failure (what the policy is blamed for, the rates the
   gate uses) and raw failure (the Waymax-compatible metrics), with counts k of n;
5. the distribution gap between procedural and real scenes (`jaxloop.data.stats`).

Writes `OUT/real_logs.json` / `.md` and exports the three policies (`jax.export`, small)
to `OUT/policies/{bc,apg_procedural,apg_finetuned}`, which `jaxloop eval --policy DIR`
evaluates directly. The runs go to `OUT/runs/real_logs/` (not committed). Deterministic
given `--seed`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import time

import jax
import numpy as np

from jaxloop.experiments.open_vs_closed_loop import SHARED_DATA, log, presets as base_presets, procedural_set

PROFILES = ("full", "quick")  # names of `presets`; quick: a smoke run of the same pipeline (minutes)
REAL_TRAIN = "gpudrive-train-split"  # the fine-tuning mixture's name for the 12 real training scenes
REAL_HOLDOUT = slice(2, None, 3)  # positions 2, 5, 8, 11, 14, 17 of the sorted 18 files
KEYS = ("failure_rate", "collision_rate", "offroad_rate", "raw_failure_rate", "raw_collision_rate",
        "raw_offroad_rate", "progress_ratio", "score")
COUNTS = ("failure", "raw_failure", "collision", "raw_collision", "offroad", "raw_offroad")


def presets(profile: str, seed: int = 0, preset: str = "closed_loop_safety") -> dict:
    """The runs of `profile` as `Experiment`s: "bc", "apg_procedural" (setting a) and "apg_finetuned"
    (setting b, on `procedural@W_P,gpudrive-train-split@W_R`); `preset` is the APG runs' reward preset."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {PROFILES}")
    full = profile == "full"
    num_train, num_test, batch = (512, 100, 32) if full else (64, 16, 8)
    base = base_presets("full", seed)
    procedural = f"procedural:train:{num_train}:{seed}"
    data = dataclasses.replace(base["bc"].data, source=procedural)
    evals = dataclasses.replace(base["bc"].eval, source=f"procedural:test:{num_test}:{seed}", batch_size=32)
    bc = dataclasses.replace(base["bc"], steps=1500 if full else 60, batch_size=batch, data=data, eval=evals)
    apg_steps = 300 if full else 10
    apg = dataclasses.replace(base["apg"], steps=apg_steps, lr_decay_steps=apg_steps, batch_size=batch, data=data,
                              eval=evals, env=dataclasses.replace(base["apg"].env, reward_preset=preset))
    ft_steps = 200 if full else 10
    finetuned = dataclasses.replace(apg, steps=ft_steps, learning_rate=3e-4, lr_decay_steps=ft_steps,
                                    data=dataclasses.replace(data, source=f"{procedural}@0.5,{REAL_TRAIN}@0.5"))
    return {"bc": bc, "apg_procedural": apg, "apg_finetuned": finetuned}


def real_files() -> tuple[list[pathlib.Path], list[pathlib.Path]]:
    files = sorted((SHARED_DATA / "gpudrive").glob("*.json"))
    held = files[REAL_HOLDOUT]
    return [f for f in files if f not in held], held


def load_files(files, config=None):
    from jaxloop.data import formats
    from jaxloop.data.common import LoadConfig
    from jaxloop.sim.datatypes import stack_scenarios
    config = config or LoadConfig(select="nearest")
    scenarios, infos = [], []
    for f in files:
        for s, i in formats.read(f, config):
            scenarios.append(s)
            infos.append(i)
    return stack_scenarios(scenarios), infos


def training_load_config():
    """Real training scenes at the procedural slot sizes (32 nearest objects, 64 lanes, 256 edge segments):
    mixed batches then need no padding, so a real row costs what a procedural one does."""
    from jaxloop.data import procedural
    from jaxloop.data.common import LoadConfig
    from jaxloop.data.mapcompile import MapConfig
    g = procedural.GeneratorConfig()
    return LoadConfig(num_objects=g.num_objects, select="nearest", route_points=g.route_points,
                      num_lights=g.max_lights,
                      map=MapConfig(max_lanes=g.map.max_lanes, max_edges=g.map.max_edges,
                                    lane_points=g.map.lane_points))


def evaluate_sets(name, policy, env_config, sets, seed) -> dict:
    from jaxloop.data.formats import init_steps_of
    from jaxloop.eval.evaluate import EvalConfig, evaluate
    out = {}
    for set_name, (scenarios, infos) in sets.items():
        env = dataclasses.replace(env_config, init_steps=init_steps_of(infos, set_name))
        rep = evaluate(policy, scenarios, infos, EvalConfig(env=env, batch_size=32), seed, name=name)
        row = {k: rep.aggregate[k] for k in ("num_scenarios",) + KEYS}
        row["counts"] = {k: int(round(sum(r[k] for r in rep.per_scenario))) for k in COUNTS}
        row["failed"] = [r["scenario_id"] for r in rep.per_scenario if r["failure"] > 0]
        out[set_name] = row
        log(f"  {name} on {set_name}: at-fault failure {row['counts']['failure']}/{row['num_scenarios']}, raw "
            f"{row['counts']['raw_failure']}/{row['num_scenarios']}, progress {row['progress_ratio']:.3f}")
    return out


def targets(results: dict) -> dict[str, str]:
    """The issue's targets, each with its measured values and met / missed."""
    out = {}
    bc = results["bc"]
    idm = results["idm"]
    for name, real_set in (("apg_procedural", "real_all"), ("apg_finetuned", "real_holdout")):
        r = results[name]
        for s in dict.fromkeys((real_set, "real_holdout")):
            f, fb, fi = r[s]["failure_rate"], bc[s]["failure_rate"], idm[s]["failure_rate"]
            ok = f <= 0.5 * fb and f <= fi and r[s]["progress_ratio"] >= 0.8 and f <= fb
            out[f"{name} on {s}"] = (f"at-fault failure {f:.3f} vs BC {fb:.3f} ({f / fb if fb else float('nan'):.2f}x, "
                                     f"target <= 0.5x) and IDM {fi:.3f} (target <=); progress "
                                     f"{r[s]['progress_ratio']:.3f} (target >= 0.8): {'met' if ok else 'missed'}")
        t, tb = r["test"]["failure_rate"], bc["test"]["failure_rate"]
        ok = t <= 0.4 * tb and r["test"]["progress_ratio"] >= 0.9
        out[f"{name} on procedural test"] = (f"failure {t:.3f} vs BC {tb:.3f} ({t / tb if tb else float('nan'):.2f}x, "
                                             f"target <= 0.4x); progress {r['test']['progress_ratio']:.3f} "
                                             f"(target >= 0.9): {'met' if ok else 'missed'}")
    return out


def to_markdown(result: dict) -> str:
    sets = list(next(iter(result["policies"].values())))
    lines = ["# Real driving logs: transfer and fine-tuning", "", f"Command: `{result['command']}`  ",
             f"Seed: {result['seed']}  ", f"Machine: {result['machine']}  ",
             f"Wall time: {result['wall_s'] / 60:.1f} min", "",
             "Failure = collision or offroad or red-light violation in the episode. *At fault* is what the "
             "gate, rewards and losses use: collisions the ego is not to blame for (nuPlan's stopped-ego, rear and "
             "lateral cases, and overlaps the log itself holds while the ego is near its logged pose) and offroad "
             "corners where the logged ego is offroad too are left out; *raw* is the Waymax-compatible metric. "
             "Cells are rate (k/n).", "",
             f"Real split: {result['split']['train_count']} fine-tuning scenes, held out: "
             f"{', '.join(result['split']['holdout'])}.", ""]
    for key, count in (("failure_rate", "failure"), ("raw_failure_rate", "raw_failure"),
                       ("collision_rate", "collision"), ("raw_collision_rate", "raw_collision"),
                       ("offroad_rate", "offroad"), ("raw_offroad_rate", "raw_offroad"),
                       ("progress_ratio", None)):
        lines += [f"### {key}", "", "| policy | " + " | ".join(sets) + " |", "|---" * (len(sets) + 1) + "|"]
        for name, res in result["policies"].items():
            cells = []
            for s in sets:
                r = res[s]
                cells.append(f"{r[key]:.3f}" + (f" ({r['counts'][count]}/{r['num_scenarios']})" if count else ""))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["### Targets", ""] + [f"- {k}: {v}" for k, v in result["targets"].items()]
    lines += ["", "### Distribution gap (procedural test vs the 18 real scenes; median [p10, p90])", "",
              result["gap_table"], "", "### Training", ""]
    for name, s in result["training"].items():
        ran = (f"this invocation ran {s['steps']} in {s['wall_s']:.0f} s ({s['env_steps_per_s']:.0f} env-steps/s)"
               if s["steps"] else "resumed complete from an earlier invocation of the same command")
        lines.append(f"- {name}: {s['final_step']} steps; {ran}; {s['skipped_updates']} skipped updates; "
                     f"data {s.get('data')}")
    lines += ["", "### Failed real scenes (at fault), per policy", ""]
    for name, res in result["policies"].items():
        lines.append(f"- {name}: " + ", ".join(res["real_all"]["failed"]) if res["real_all"]["failed"]
                     else f"- {name}: none")
    return "\n".join(lines) + "\n"


def base_parser(description: str, preset_help: str, profiles=None) -> argparse.ArgumentParser:
    """The options every real-scene experiment takes: --profile, --out, --seed and --preset (of its APG runs)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=PROFILES if profiles is None else profiles, default="full")
    parser.add_argument("--out", default="experiments/results")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="closed_loop_safety", help=preset_help)
    return parser


def main(argv=None) -> dict:
    parser = base_parser(__doc__, "reward preset of the APG runs")
    args = parser.parse_args(argv)
    cfgs = presets(args.profile, args.seed, args.preset)
    t_start = time.perf_counter()
    out = pathlib.Path(args.out)
    runs = out / "runs" / f"real_logs_{args.profile}"
    tag = "" if args.preset == "closed_loop_safety" else f"_{args.preset}"
    out.mkdir(parents=True, exist_ok=True)

    from jaxloop.config import to_dict
    from jaxloop.data import sources
    from jaxloop.data.mixture import mix, parse_weight
    from jaxloop.data.stats import gap_table, scenario_statistics, summarize
    from jaxloop.sim.env import EnvConfig
    from jaxloop.train.loop import run
    from jaxloop.io.policies import export, load_policy_from_checkpoint

    log(f"loading scenarios ({args.profile})")
    procedural_spec = cfgs["bc"].data.source
    train = procedural_set(procedural_spec)
    test = procedural_set(cfgs["bc"].eval.source)
    train_files, held_files = real_files()
    real_train = load_files(train_files, training_load_config())
    sets = {"test": test, "real_holdout": load_files(held_files), "real_all": load_files(train_files + held_files),
            "womd": sources.load_source(str(SHARED_DATA / "womd" / "*.tfrecord")),
            "av2": sources.load_source(str(SHARED_DATA / "av2" / "*.parquet"))}
    loaded = {procedural_spec: train, REAL_TRAIN: real_train}
    parts = [parse_weight(part) for part in cfgs["apg_finetuned"].data.source.split(",")]
    mixture = mix([(spec, *loaded[spec], weight) for spec, weight in parts])
    training = {}
    log("behaviour cloning (open loop, procedural)")
    training["bc"] = run(cfgs["bc"], train[0], str(runs / "bc"), log_every=50, ckpt_every=500,
                         progress=False, use_tensorboard=False, run_info={"data": procedural_spec})
    log("setting (a): APG post-training on procedural data only")
    training["apg_procedural"] = run(cfgs["apg_procedural"], train[0], str(runs / f"apg_procedural{tag}"),
                                     init_from=str(runs / "bc"), log_every=10, ckpt_every=100, progress=False,
                                     use_tensorboard=False, run_info={"data": procedural_spec})
    log("setting (b): APG fine-tuning on procedural + the 12 real training scenes")
    training["apg_finetuned"] = run(cfgs["apg_finetuned"], mixture, str(runs / f"apg_finetuned{tag}"),
                                    init_from=str(runs / f"apg_procedural{tag}"), log_every=10, ckpt_every=100,
                                    progress=False, use_tensorboard=False,
                                    run_info={"data": json.dumps(mixture.describe())})
    for name, s in training.items():
        s["data"] = {"bc": "procedural", "apg_procedural": "procedural"}.get(name, mixture.describe())

    results = {}
    for name in ("expert", "idm"):
        log(f"evaluating {name}")
        results[name] = evaluate_sets(name, name, EnvConfig(), sets, args.seed)
    for name in ("bc", "apg_procedural", "apg_finetuned"):
        policy, cfg = load_policy_from_checkpoint(runs / (name if name == "bc" else name + tag))
        log(f"evaluating {name}")
        results[name] = evaluate_sets(name, policy, cfg.env_config(), sets, args.seed)
        export(str(runs / (name if name == "bc" else name + tag)), str(out / "policies" / f"{name}{tag}"))

    real = sets["real_all"]
    gap = gap_table(summarize(scenario_statistics(test[0])), summarize(scenario_statistics(real[0])),
                    f"procedural test ({len(test[1])})", "real (18)")
    env = jax.devices()[0]
    result = {
        "command": " ".join(["python", "experiments/real_logs.py"] + list(argv if argv is not None else sys.argv[1:])),
        "seed": args.seed, "profile": args.profile, "preset": args.preset,
        "machine": f"{env.platform} ({os.cpu_count()} cores), jax {jax.__version__}",
        "wall_s": time.perf_counter() - t_start, "experiments": {n: to_dict(e) for n, e in cfgs.items()},
        "split": {"train_count": len(train_files), "holdout": [f.name for f in held_files]},
        "policies": results, "targets": targets(results), "gap_table": gap,
        "training": {n: {k: s[k] for k in ("final_step", "steps", "wall_s", "env_steps_per_s", "skipped_updates",
                                           "data")} for n, s in training.items()},
    }
    stem = ("real_logs" if args.profile == "full" else f"real_logs_{args.profile}") + tag
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=float))
    (out / f"{stem}.md").write_text(to_markdown(result))
    log(f"wrote {out / stem}.json / .md in {result['wall_s'] / 60:.1f} min")
    print(to_markdown(result))
    return result


if __name__ == "__main__":
    main()
