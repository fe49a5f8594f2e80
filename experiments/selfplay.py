"""Self-play: one shared policy drives every vehicle; how safe, how useful as an ego, and how human?

    python experiments/selfplay.py [--profile full|quick] [--out experiments/results]

On built-in procedural scenarios, evaluated on procedural `test` and on the 18 real WOMD
scenes of `../shared/data/gpudrive/` (GPUDrive / PufferDrive JSON):

1. self-play behaviour cloning (`env.controlled="vehicles"`: every vehicle's expert action
   from its own ego-centric view, its own logged path as route) on procedural `train`;
2. self-play APG from it (one differentiated rollout, every vehicle driven by the policy,
   every agent's own surrogate, gradients through all of them), with the `--preset` reward
   weights, and the same with `APG.bc_coef` > 0 (the BC action loss on the same batch
   added: self-play regularised toward the logs);
2b. real-data fine-tuning ("selfplay_ft"): self-play APG with `bc_coef` from (2)'s regularised
   policy on a mixture of procedural `train` and the 12 real fine-tuning scenes of
   `experiments/real_logs.py` (`--ft-preset` reward weights; each batch holds both halves);
3. evaluation, on procedural `test`, the 6 held-out real scenes (`real_holdout`) and all 18 (`real`):
   (a) self-play traffic: the policy drives every vehicle; per-agent (GPUDrive-style)
       at-fault collision, offroad, either, route completion and goal rate
       (`evaluate(..., agents=True)`);
   (b) as the ego (other objects log replay, then IDM): at-fault failure, collision,
       offroad, progress ratio, against the ego-only BC and APG policies exported by
       `experiments/real_logs.py` (`OUT/policies/{bc,apg_procedural}`);
   (c) realism (WOSAC-style meta-metric, `jaxloop.realism`) on the 18 real scenes of the
       self-play policies, with constant velocity and IDM rows at the same rollout count;
4. one failing self-play episode per policy rendered as a GIF.

Writes `OUT/selfplay.json` / `.md` (after every stage: an interrupted run keeps what it
measured) and exports the self-play policies to `OUT/policies/selfplay_*` (the exported
artefact maps one observer's features to its action: `jaxloop eval --policy DIR` drives the
ego with it; the runs, which `--non-ego policy:RUN` takes, go to `OUT/runs/selfplay_PROFILE/`,
not committed). Deterministic given `--seed`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from jaxloop.experiments.open_vs_closed_loop import log, presets as base_presets, procedural_set  # noqa: E402
from real_logs import REAL_TRAIN, base_parser, load_files, real_files, training_load_config  # noqa: E402

PROFILES = ("full", "quick")
EGO_KEYS = ("failure_rate", "collision_rate", "offroad_rate", "raw_failure_rate", "progress_ratio")
AGENT_KEYS = ("num_agents", "collision_rate", "offroad_rate", "collision_offroad_rate", "route_completion",
              "goal_rate", "raw_collision_rate", "raw_offroad_rate")
SELFPLAY = ("selfplay_bc", "selfplay_apg", "selfplay_apg_bc", "selfplay_ft")
EGO_BASELINES = ("bc", "apg_procedural")  # exported by experiments/real_logs.py


def presets(profile: str, seed: int = 0, preset: str = "closed_loop_safety", bc_coef: float = 1.0,
            ft_preset: str = "closed_loop_safety", real_weight: float = 0.5,
            steer_prior: str = "pure_pursuit", goal_behavior: str = "remove", done_at_goal: bool = True,
            accel_prior: str = "idm") -> dict:
    """The runs of `profile`: "selfplay_bc", "selfplay_apg" (from it), "selfplay_apg_bc" (from it, with
    `APG.bc_coef`) and "selfplay_ft" (from "selfplay_apg_bc", same `bc_coef`, `ft_preset` rewards, on
    `procedural@(1-real_weight),gpudrive-train-split@real_weight`), every vehicle driven by the policy
    (`env.controlled="vehicles"`), with the model's `steer_prior` (`ModelConfig.steer_prior`: the pure
    pursuit route-tracking prior under the curvature, see `experiments/steer_prior.py`) and `goal_behavior`
    (`EnvSettings.goal_behavior`: "remove" takes an agent out of the scene once it has reached its goal, the end
    of its episode; "continue" lets it drive on) and `done_at_goal` (`EnvSettings.done_at_goal`: False, with
    "continue", runs every agent's loss on past its goal, so it learns what to do at its route's end), and the
    model's `accel_prior` (`ModelConfig.accel_prior`: "idm" puts the intelligent driver model under the
    acceleration, with the observer's largest logged speed as its target, `ObsConfig.target_speed`)."""
    from jaxloop.config import APG, BC, EnvSettings
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {PROFILES}")
    full = profile == "full"
    num_train, num_test = (256, 100) if full else (16, 8)
    base = base_presets("full", seed)["bc"]  # the model (MLP 256x256, Gaussian head) and observation
    data = dataclasses.replace(base.data, source=f"procedural:train:{num_train}:{seed}")
    evals = dataclasses.replace(base.eval, source=f"procedural:test:{num_test}:{seed}", batch_size=32)
    env = EnvSettings(controlled="vehicles", reward_preset=preset, goal_behavior=goal_behavior,
                      done_at_goal=done_at_goal)
    model = dataclasses.replace(base.model, steer_prior=steer_prior, accel_prior=accel_prior)
    obs = dataclasses.replace(base.obs, target_speed=accel_prior == "idm")
    bc = dataclasses.replace(base, algo=BC(samples_per_scenario=4), steps=600 if full else 20,
                             batch_size=16 if full else 4, data=data, eval=evals, env=env, model=model, obs=obs)
    apg_steps = 100 if full else 3
    apg = dataclasses.replace(bc, algo=APG(), steps=apg_steps, lr_decay_steps=apg_steps, learning_rate=3e-4,
                              batch_size=8 if full else 2)
    apg_bc = dataclasses.replace(apg, algo=APG(bc_coef=bc_coef))
    mixture = f"{data.source}@{1 - real_weight:g},{REAL_TRAIN}@{real_weight:g}"
    ft = dataclasses.replace(apg_bc, data=dataclasses.replace(data, source=mixture),
                             env=dataclasses.replace(env, reward_preset=ft_preset))
    return {"selfplay_bc": bc, "selfplay_apg": apg, "selfplay_apg_bc": apg_bc, "selfplay_ft": ft}


def selfplay_rates(run: str, sets: dict, seed: int, goal_behavior: str | None = None,
                   continue_sets: tuple = ("test",)) -> dict:
    """(a) the run's policy drives every vehicle: the per-agent rates over all of them, and the ego's failure,
    with `goal_behavior` (None: the run's own). The sets of `continue_sets` are evaluated a second time
    ("SET_continue") with every agent driving on past its goal (`goal_behavior="continue"`)."""
    from jaxloop.data.formats import init_steps_of
    from jaxloop.eval.cli import resolve_policy_spec
    from jaxloop.eval.evaluate import EvalConfig, evaluate
    from jaxloop.sim.env import EnvConfig
    out = {}
    runs = [(s, s, goal_behavior) for s in sets] + [(f"{s}_continue", s, "continue") for s in continue_sets
                                                    if s in sets]
    for set_name, source, goal_behavior in runs:
        scenarios, infos = sets[source]
        env = EnvConfig(non_ego_agent="log", init_steps=init_steps_of(infos, source))
        policy, env, label = resolve_policy_spec(run, env)
        if goal_behavior is not None:
            env = dataclasses.replace(env, goal_behavior=goal_behavior)
        rep = evaluate(policy, scenarios, infos, EvalConfig(env=env, batch_size=16), seed, name=label, agents=True)
        row = {k: rep.agents["all"][k] for k in AGENT_KEYS}
        row["num_scenarios"] = len(infos)
        row["agents_failed_scenarios"] = [r["scenario_id"] for r in rep.per_scenario if r["failure"] > 0]
        out[set_name] = row
        log(f"  {label} self-play on {set_name}: {row['num_agents']} agents, collision "
            f"{row['collision_rate']:.4f} offroad {row['offroad_rate']:.4f} either {row['collision_offroad_rate']:.4f}"
            f" route {row['route_completion']:.3f} goal {row['goal_rate']:.3f}")
    return out


def reference_rates(sets: dict, seed: int, goal_behavior: str) -> dict:
    """The per-agent reference of (a): every agent the log's own path and timing, tracked through the bicycle
    dynamics closed loop (`jaxloop.sim.actor.log_tracking_actor`): what the log itself reads as where the
    dynamics cannot follow it or its boxes and map read as a failure."""
    from jaxloop.data.formats import init_steps_of
    from jaxloop.eval.evaluate import EvalConfig, evaluate
    from jaxloop.sim.actor import log_tracking_actor
    from jaxloop.sim.dynamics import InvertibleBicycle
    from jaxloop.sim.env import EnvConfig
    dynamics = InvertibleBicycle(normalize_actions=True)
    out = {}
    for set_name, (scenarios, infos) in sets.items():
        env = EnvConfig(init_steps=init_steps_of(infos, set_name), dynamics=dynamics, controlled="vehicles",
                        goal_behavior=goal_behavior)
        rep = evaluate(log_tracking_actor(dynamics), scenarios, infos, EvalConfig(env=env, batch_size=16), seed,
                       name="log_tracking", agents=True)
        out[set_name] = {k: rep.agents["all"][k] for k in AGENT_KEYS} | {"num_scenarios": len(infos)}
        log(f"  log tracking ({goal_behavior}) on {set_name}: either {out[set_name]['collision_offroad_rate']:.4f} "
            f"route {out[set_name]['route_completion']:.3f}")
    return out


def ego_policy(name: str, path: pathlib.Path):
    """(policy, env config) of `name` driving the ego only: an exported policy, or a self-play run's network
    applied to the ego's own view."""
    from jaxloop.io.policies import load_policy, load_policy_from_checkpoint
    if (path / "metadata.json").is_file():
        policy, cfg = load_policy(path)
    else:
        policy, cfg = load_policy_from_checkpoint(path, controlled="sdc")
    return policy, dataclasses.replace(cfg.env_config(), controlled="sdc", grad_through_agents=False)


def ego_rates(name: str, path: pathlib.Path, sets: dict, seed: int) -> dict:
    """(b) the policy as the ego, other objects log replay and IDM: at-fault failure, collision, offroad, progress."""
    from jaxloop.data.formats import init_steps_of
    from jaxloop.eval.evaluate import EvalConfig, evaluate
    policy, env_config = ego_policy(name, path)
    out = {}
    for traffic in ("log", "idm"):
        for set_name, (scenarios, infos) in sets.items():
            env = dataclasses.replace(env_config, non_ego_agent=traffic, init_steps=init_steps_of(infos, set_name))
            rep = evaluate(policy, scenarios, infos, EvalConfig(env=env, batch_size=32), seed, name=name)
            row = {k: rep.aggregate[k] for k in ("num_scenarios",) + EGO_KEYS}
            row["failures"] = int(round(sum(r["failure"] for r in rep.per_scenario)))
            out[f"{set_name}/{traffic}"] = row
            log(f"  {name} ego on {set_name} vs {traffic}: at-fault failure {row['failures']}/{row['num_scenarios']}"
                f" collision {row['collision_rate']:.3f} offroad {row['offroad_rate']:.3f} "
                f"progress {row['progress_ratio']:.3f}")
    return out


def realism_rows(rows: dict[str, str], scenarios, infos, rollouts: int, seed: int) -> dict:
    """(c) the WOSAC-style realism of each `{label: agents spec}` on the real scenes."""
    from jaxloop.realism.evaluate import RealismConfig, RealismRunner
    out = {}
    for label, agents in rows.items():
        t = time.perf_counter()
        rep = RealismRunner(scenarios, infos, RealismConfig(agents=agents, rollouts=rollouts, seed=seed),
                            name=label).run()
        out[label] = {"description": rep.description, "wall_s": round(time.perf_counter() - t, 1),
                      **{k: rep.aggregate[k] for k in ("realism_meta_metric", "kinematic", "interactive",
                                                       "map_based", "min_ade")}}
        log(f"  realism {label}: meta {out[label]['realism_meta_metric']:.4f}, minADE {out[label]['min_ade']:.2f} m "
            f"({out[label]['wall_s']:.0f} s)")
    return out


def render_failure(run: str, spec: str, scenario_ids: list, infos, path: pathlib.Path) -> dict | None:
    """A GIF of the first self-play episode with an ego failure (or of scenario 0), via `jaxloop render`."""
    from jaxloop.viz.cli import render
    ids = [i.get("scenario_id") for i in infos]
    index = ids.index(scenario_ids[0]) if scenario_ids and scenario_ids[0] in ids else 0
    png, gif = path.with_suffix(".png"), path.with_suffix(".gif")
    render(out=str(png), data=spec, index=index, gif=str(gif), policy=run, step="first_failure", stride=2,
           width_px=400, height_px=400)
    return {"scenario_index": index, "scenario_id": ids[index], "png": png.name, "gif": gif.name}


def targets(res: dict) -> list[tuple[str, str, str]]:
    """(target, measured, met / missed) of issue 21 item 6 and issue 22's self-play targets."""
    out = []
    sp, ego, real = res.get("selfplay", {}), res.get("ego", {}), res.get("realism", {})
    for name in ("selfplay_apg", "selfplay_apg_bc", "selfplay_ft"):
        for s in ("test", "real_holdout", "real"):
            r = sp.get(name, {}).get(s)
            if r:
                out.append((f"{name} self-play on {s}: per-agent at-fault collision+offroad <= 2%",
                            f"{100 * r['collision_offroad_rate']:.2f}%",
                            "met" if r["collision_offroad_rate"] <= 0.02 else "missed"))
                out.append((f"{name} self-play on {s}: route completion >= 95%", f"{100 * r['route_completion']:.1f}%",
                            "met" if r["route_completion"] >= 0.95 else "missed"))
        base = ego.get("apg_procedural", {})
        for key in sorted(ego.get(name, {})):
            r, b = ego[name][key], base.get(key)
            if b:
                ok = r["failure_rate"] <= b["failure_rate"]
                out.append((f"{name} as the ego on {key.replace('/', ' vs ')}: at-fault failure <= ego-only APG",
                            f"{r['failure_rate']:.3f} vs {b['failure_rate']:.3f} (progress {r['progress_ratio']:.3f} "
                            f"vs {b['progress_ratio']:.3f})", "met" if ok else "missed"))
    idm, cv = real.get("idm"), real.get("constant_velocity")
    for name in SELFPLAY[1:]:
        r = real.get(name)
        if r and idm:
            out.append((f"{name} realism >= IDM (18 real scenes)",
                        f"{r['realism_meta_metric']:.4f} vs {idm['realism_meta_metric']:.4f}",
                        "met" if r["realism_meta_metric"] >= idm["realism_meta_metric"] else "missed"))
    if idm and cv:
        learned = max((real[n]["realism_meta_metric"] for n in SELFPLAY if n in real), default=float("nan"))
        ok = cv["realism_meta_metric"] < idm["realism_meta_metric"] < learned
        out.append(("ranking constant velocity < IDM < learned (best self-play)",
                    f"{cv['realism_meta_metric']:.4f} < {idm['realism_meta_metric']:.4f} < {learned:.4f}",
                    "met" if ok else "missed"))
    # The two realism-regularised runs: `bc_coef` toward the procedural expert, and toward the real logs as well.
    for name in ("selfplay_apg_bc", "selfplay_ft"):
        r, sp_r = real.get(name), sp.get(name, {}).get("real")
        if r and idm and sp_r:
            ok = r["realism_meta_metric"] >= idm["realism_meta_metric"] and sp_r["collision_offroad_rate"] <= 0.02
            out.append((f"realism-regularised self-play ({name}) >= IDM with <= 2% per-agent collision+offroad "
                        "(real scenes)", f"{r['realism_meta_metric']:.4f} vs {idm['realism_meta_metric']:.4f}; "
                        f"{100 * sp_r['collision_offroad_rate']:.2f}%", "met" if ok else "missed"))
    return out


def _f(v, nd=3):
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{nd}f}"


def agent_table(selfplay: dict) -> list[str]:
    """Markdown lines of the per-agent table (a): a row per policy and set of `selfplay_rates`."""
    lines = ["## (a) Self-play traffic: the policy drives every vehicle (per-agent rates)", "",
             "| policy | set | agents | collision | offroad | collision+offroad | route completion | goal | "
             "raw collision | raw offroad |", "|---" * 10 + "|"]
    for name, sets in selfplay.items():
        for s, r in sets.items():
            lines.append(f"| {name} | {s} | {r['num_agents']} | " + " | ".join(_f(r[k], 4) for k in (
                "collision_rate", "offroad_rate", "collision_offroad_rate", "route_completion", "goal_rate",
                "raw_collision_rate", "raw_offroad_rate")) + " |")
    return lines


def ego_table(ego: dict, title: str) -> list[str]:
    """Markdown lines of the as-the-ego table: a row per policy, a column per "set/traffic" of `ego_rates`."""
    keys = list(next(iter(ego.values())))
    lines = [title, "", "Cells: at-fault failure (k/n) / collision / offroad / progress ratio.", "",
             "| policy | " + " | ".join(k.replace("/", " vs ") for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, rows in ego.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{_f(r['failure_rate'])} ({r['failures']}/{r['num_scenarios']}) / {_f(r['collision_rate'])} / "
            f"{_f(r['offroad_rate'])} / {_f(r['progress_ratio'])}" for r in (rows[k] for k in keys)) + " |")
    return lines + [""]


def to_markdown(res: dict) -> str:
    lines = ["# Self-play: one policy drives every vehicle", "", f"Command: `{res['command']}`  ",
             f"Seed: {res['seed']}; reward preset `{res['preset']}`; bc_coef {res['bc_coef']}; steer prior `{res.get('steer_prior', 'none')}`; acceleration prior `{res.get('accel_prior', 'none')}`; "
             f"goal behaviour `{res.get('goal_behavior', 'continue')}` in training"
             + ("" if res.get("done_at_goal", True) else ", each agent's loss run on past its goal (`done_at_goal` off)")
             + f", `{res.get('eval_goal_behavior', res.get('goal_behavior', 'continue'))}` in evaluation (a)  ",
             f"Machine: {res['machine']}  ", f"Wall time: {res['wall_s'] / 60:.1f} min"
             + ("" if res.get("complete") else " (incomplete: stages below are what finished)"), "",
             "Rates are at fault unless raw (the gate's definitions). real = the 18 GPUDrive JSON WOMD scenes; "
             "real_holdout = the 6 of them `experiments/real_logs.py` holds out (selfplay_ft is fine-tuned on the "
             "other 12). Self-play controls the agents that start farther than the goal radius from their goal "
             "(`jaxloop.sim.env.controlled_mask`); the others (parked) follow the log. An agent's episode ends at its "
             "goal (within 2 m of its last logged position; then its route counts as complete) or at its log's end; "
             "with goal behaviour `remove` (evaluation) it then leaves the scene. The `*_continue` rows evaluate "
             "the same policy with every agent driving on past its goal, its later events counted.", ""]
    lines += ["## Targets", "", "| target | measured | |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {ok} |" for t, m, ok in targets(res)] + [""]
    if res.get("selfplay"):
        lines += agent_table({**res["selfplay"], **res.get("reference", {})})
        lines += ["", "`log_tracking` is the reference: every agent steered toward its next logged state by the "
                  "bicycle's inverse dynamics (`jaxloop.sim.actor.log_tracking_actor`), the log as the dynamics can "
                  "drive it; its failures are the log's own (infeasible steps, boxes and map labels)."]
        lines.append("")
    if res.get("ego"):
        lines += ego_table(res["ego"], "## (b) As the ego (other objects log replay or IDM)")
    if res.get("realism"):
        lines += [f"## (c) Realism on the 18 real scenes (WOSAC-style, {res['realism_rollouts']} rollouts per scene)",
                  "", "WOSAC-style re-implementation (`jaxloop.realism`), not the official number. "
                  f"{res['realism_note']}", "",
                  "| agents | meta-metric | kinematic | interactive | map-based | minADE (m) | wall s |",
                  "|---|---|---|---|---|---|---|"]
        for name, r in res["realism"].items():
            lines.append(f"| {name} | {_f(r['realism_meta_metric'], 4)} | {_f(r['kinematic'])} | "
                         f"{_f(r['interactive'])} | {_f(r['map_based'])} | {_f(r['min_ade'], 2)} | {r['wall_s']} |")
        lines += ["", "Rows: " + "; ".join(f"`{k}`: {v['description']}" for k, v in res["realism"].items()), ""]
    if res.get("training"):
        lines += ["## Training", ""]
        for name, s in res["training"].items():
            lines.append(f"- {name}: {s['final_step']} steps, {s['wall_s']:.0f} s this invocation "
                         f"({s['env_steps_per_s']:.0f} env-steps/s), {s['skipped_updates']} skipped updates, "
                         f"final loss {_f(s.get('final_loss'), 4)}")
        lines.append("")
    if res.get("renders"):
        lines += ["## Rendered self-play episodes", ""]
        for name, r in res["renders"].items():
            lines.append(f"- {name}: `{r['gif']}` (scenario {r['scenario_id']}, frame `{r['png']}` at the first "
                         f"ego failure or the last step)")
        lines.append("")
    if res.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in res["notes"]] + [""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = base_parser(__doc__, "reward preset of the self-play APG runs", PROFILES)
    parser.add_argument("--bc-coef", type=float, default=1.0, help="APG.bc_coef of the regularised run")
    parser.add_argument("--ft-preset", default="closed_loop_safety", help="reward preset of the real fine-tuning run")
    parser.add_argument("--real-weight", type=float, default=0.5, help="real scenes' share of the fine-tuning batches")
    parser.add_argument("--steer-prior", default="pure_pursuit", choices=("none", "pure_pursuit"),
                        help="ModelConfig.steer_prior of the self-play runs")
    parser.add_argument("--accel-prior", default="idm", choices=("none", "idm"),
                        help="ModelConfig.accel_prior of the self-play runs (idm: with ObsConfig.target_speed)")
    parser.add_argument("--goal-behavior", default="remove", choices=("continue", "remove"),
                        help="EnvSettings.goal_behavior of the self-play runs (an agent at its goal leaves or drives on)")
    parser.add_argument("--past-goal", action="store_true",
                        help="EnvSettings.done_at_goal=False: every agent's loss runs on past its goal (needs "
                             "--goal-behavior continue)")
    parser.add_argument("--eval-goal-behavior", default="remove", choices=("continue", "remove"),
                        help="the goal behaviour of the per-agent evaluation (a); a `_continue` row of test is added")
    parser.add_argument("--rollouts", type=int, default=None, help="realism rollouts per scene")
    parser.add_argument("--stages", default="train,selfplay,reference,ego,realism,render")
    args = parser.parse_args(argv)
    cfgs = presets(args.profile, args.seed, args.preset, args.bc_coef, args.ft_preset, args.real_weight,
                   args.steer_prior, args.goal_behavior, not args.past_goal, args.accel_prior)
    full = args.profile == "full"
    rollouts = args.rollouts or (16 if full else 2)
    stages = set(args.stages.split(","))
    t_start = time.perf_counter()
    out = pathlib.Path(args.out)
    runs = out / "runs" / f"selfplay_{args.profile}"
    stem = "selfplay" if full else f"selfplay_{args.profile}"
    out.mkdir(parents=True, exist_ok=True)

    from jaxloop.config import to_dict
    from jaxloop.io.logging import finite_or_none, read_jsonl
    from jaxloop.io.policies import export
    from jaxloop.train.loop import run

    dev = jax.devices()[0]
    res = {"command": " ".join(["python", "experiments/selfplay.py"] + list(argv if argv is not None else sys.argv[1:])),
           "seed": args.seed, "profile": args.profile, "preset": args.preset, "bc_coef": args.bc_coef,
           "ft_preset": args.ft_preset, "real_weight": args.real_weight, "steer_prior": args.steer_prior,
           "accel_prior": args.accel_prior,
           "goal_behavior": args.goal_behavior, "done_at_goal": not args.past_goal,
           "eval_goal_behavior": args.eval_goal_behavior,
           "machine": f"{dev.platform} ({os.cpu_count()} cores, shared with other jobs), jax {jax.__version__}",
           "experiments": {n: to_dict(e) for n, e in cfgs.items()}, "realism_rollouts": rollouts,
           "realism_note": "", "notes": [], "complete": False}
    json_path = out / f"{stem}.json"
    if json_path.exists() and "train" not in stages:
        old = json.loads(json_path.read_text())
        res.update({k: old[k] for k in ("training", "selfplay", "reference", "ego", "realism", "renders") if k in old})
        res["wall_s_before"] = old.get("wall_s", 0.0)
        if old.get("command"):  # the stages of this invocation were added to an earlier run's results
            res["command"] = f"{old['command']}`, then `{res['command']}"

    def save():
        res["wall_s"] = time.perf_counter() - t_start + res.get("wall_s_before", 0.0)
        json_path.write_text(json.dumps(finite_or_none(res), indent=1, default=float))
        (out / f"{stem}.md").write_text(to_markdown(res))

    log(f"loading scenarios ({args.profile})")
    train_spec, test_spec = cfgs["selfplay_bc"].data.source, cfgs["selfplay_bc"].eval.source
    test = procedural_set(test_spec)
    files = sorted(sum(real_files(), []))
    real = load_files(files if full else files[:3])
    sets = {"test": test, "real": real}
    held = real_files()[1]  # the 6 real scenes no fine-tuning sees
    sets = {"test": sets["test"], "real_holdout": load_files(held if full else held[:1]), "real": sets["real"]}

    if "train" in stages:
        train = procedural_set(train_spec)
        res["training"] = {}
        from jaxloop.data.mixture import mix, parse_weight
        real_train = load_files(real_files()[0] if full else real_files()[0][:2], training_load_config())
        loaded = {train_spec: train, REAL_TRAIN: real_train}
        mixture = mix([(spec, *loaded[spec], w) for spec, w in map(parse_weight, cfgs["selfplay_ft"].data.source
                                                                      .split(","))])
        for name, init in (("selfplay_bc", None), ("selfplay_apg", "selfplay_bc"), ("selfplay_apg_bc", "selfplay_bc"),
                           ("selfplay_ft", "selfplay_apg_bc")):
            log(f"training {name}" + (f" from {init}" if init else ""))
            ft = name == "selfplay_ft"
            s = run(cfgs[name], mixture if ft else train[0], str(runs / name),
                    init_from=str(runs / init) if init else None,
                    log_every=10 if name != "selfplay_bc" else 50, ckpt_every=100, progress=False,
                    use_tensorboard=False, run_info={"data": json.dumps(mixture.describe()) if ft else train_spec})
            rows = [r for r in read_jsonl(runs / name / "logs") if r.get("loss") is not None]
            s = {k: s[k] for k in ("final_step", "steps", "wall_s", "env_steps_per_s", "skipped_updates")}
            s.update(final_loss=rows[-1]["loss"] if rows else None, first_loss=rows[0]["loss"] if rows else None,
                     **{k: rows[-1][k] for k in ("apg_loss", "bc_loss", "ade", "ended_frac") if rows and k in rows[-1]})
            s["data"] = mixture.describe() if ft else train_spec
            res["training"][name] = s
            export(str(runs / name), str(out / "policies" / (name if full else f"{name}_{args.profile}")))
            save()
        del train, real_train, mixture

    if "selfplay" in stages:
        res["selfplay"] = {}
        for name in SELFPLAY:
            log(f"(a) self-play traffic: {name}")
            res["selfplay"][name] = selfplay_rates(str(runs / name), sets, args.seed, args.eval_goal_behavior)
            save()

    if "reference" in stages:
        log("(a) reference: the log tracked through the dynamics")
        res["reference"] = {f"log_tracking ({gb})": reference_rates(sets, args.seed, gb)
                            for gb in dict.fromkeys((args.eval_goal_behavior, "continue"))}
        save()

    if "ego" in stages:
        res["ego"] = {}
        for name in EGO_BASELINES + SELFPLAY[1:]:
            # A self-play run, or its exported policy when the run is not here (runs/ is not committed).
            path = out / "policies" / name if name in EGO_BASELINES or not (runs / name).is_dir() else runs / name
            log(f"(b) as the ego: {name}")
            res["ego"][name] = ego_rates(name, path, sets, args.seed)
            save()

    if "realism" in stages:
        log(f"(c) realism, {rollouts} rollouts per scene")
        specs = {"constant_velocity": "constant_velocity", "idm": "idm"}
        specs.update({n: f"policy:{out / 'policies' / (n if full else f'{n}_{args.profile}')}"
                      for n in SELFPLAY[1:]})
        res["realism"] = {}
        for label, spec in specs.items():
            res["realism"].update(realism_rows({label: spec}, *real, rollouts, args.seed))
            save()
        res["realism_note"] = (f"{rollouts} rollouts per scene (WOSAC uses 32; experiments/results/realism.md has "
                               "32): the constant-velocity and IDM rows here use the same count.")

    if "render" in stages and res.get("selfplay"):
        res["renders"] = {}
        for name in SELFPLAY[1:]:
            failed = res["selfplay"][name]["test"]["agents_failed_scenarios"]
            log(f"rendering {name}")
            res["renders"][name] = render_failure(str(runs / name), test_spec, failed, test[1],
                                                  out / f"selfplay_{name}{'' if full else '_' + args.profile}")
            save()
        for name in ("selfplay_apg_bc", "selfplay_ft"):  # the same held-out real scene, before / after fine-tuning
            log(f"rendering {name} on a held-out real scene")
            res["renders"][f"{name}_real"] = render_failure(
                str(runs / name), str(held[0]), [], load_files(held[:1])[1],
                out / f"selfplay_{name}_real{'' if full else '_' + args.profile}")
            save()

    res["complete"] = True
    save()
    log(f"wrote {json_path} / .md in {res['wall_s'] / 60:.1f} min")
    print(to_markdown(res))
    return res


if __name__ == "__main__":
    main()
