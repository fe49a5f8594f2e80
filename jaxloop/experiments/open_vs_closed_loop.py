"""Open loop vs closed loop: does closed-loop post-training make a driving policy safer?

    python experiments/open_vs_closed_loop.py [--profile full|demo] [--out experiments/results] [--runs DIR]
    python -m jaxloop.experiments.open_vs_closed_loop ...      # the same, from an installed package

`make demo` / `jaxloop demo` run it with the small `demo` profile.

On built-in procedural scenarios (nothing downloaded):
1. behaviour cloning (open loop) on the inverse-bicycle expert actions of `train`;
2. closed-loop post-training from the BC checkpoint, with analytic policy gradients
   through the simulator (APG) and with GRPO (group-relative RL, KL to the BC policy);
3. every policy evaluated in closed loop on held-out `test`, on out-of-distribution
   `test_ood` (held-out parameter ranges and the roundabout family), under the
   perturbation suite, and on the real WOMD and Argoverse 2 fixtures;
4. the safety gate: each post-trained policy against its BC start.

Writes `OUT/open_vs_closed_loop.json` and `.md`, plots (training curves, failure rate
per family, perturbation deltas), GIFs of a few test episodes, and the runs (checkpoints,
logs) under `--runs` (default `OUT/runs/PROFILE`). Deterministic given `--seed`. The real
fixtures are read from `../shared/data` beside the checkout when it is there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import shutil
import sys
import time

import jax
import numpy as np

PROFILES = ("demo", "full")  # names of `presets`
SUMMARY_KEYS = ("failure_rate", "collision_rate", "offroad_rate", "red_light_rate", "progress_ratio", "score")
SHARED_DATA = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def presets(profile: str, seed: int = 0) -> dict:
    """The pipeline's runs of `profile` as `jaxloop.config.Experiment`s: "bc", then the closed-loop stages
    ("apg"; "grpo" too in the full profile). `"full"` is the committed results (~30 min on a 2-core CPU),
    `"demo"` (`make demo`) the same pipeline, small. Evaluation sets and the suite are in `eval`."""
    from jaxloop.config import APG, BC, GRPO, DataConfig, EnvSettings, EvalSettings, Experiment
    from jaxloop.policy.networks import ModelConfig

    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {PROFILES}")
    full = profile == "full"
    n = dict(train=1024, test=200, perturbed=200) if full else dict(train=256, test=64, perturbed=32)
    base = Experiment(algo=BC(samples_per_scenario=8), seed=seed, steps=3000 if full else 800,
                      batch_size=64 if full else 32, learning_rate=1e-3,
                      data=DataConfig(source=f"procedural:train:{n['train']}:{seed}"),
                      model=ModelConfig(kind="mlp", head="gaussian", hidden=(256, 256)),
                      eval=EvalSettings(source=f"procedural:test:{n['test']}:{seed}", suite="full" if full else "short",
                                        num_perturbed=n["perturbed"]))
    # APG: anticipation surrogates (red lights, headway, predicted conflicts), random crossing road users in
    # half the episodes with reactive traffic, noisy starts, cosine learning-rate decay.
    apg_steps = 600 if full else 120
    runs = {"bc": base,
            "apg": dataclasses.replace(base, algo=APG(), steps=apg_steps, lr_decay_steps=apg_steps,
                                       env=EnvSettings(reward_preset="closed_loop_safety", crosser_prob=0.5,
                                                       start_noise=1.0))}
    if full:
        runs["grpo"] = dataclasses.replace(base, algo=GRPO(group_size=4, kl_coef=0.02, num_epochs=2), steps=300,
                                           learning_rate=1e-4, batch_size=16,
                                           env=EnvSettings(reward_preset="safety_first", crosser_prob=0.5))
    return runs


def procedural_set(spec: str):
    """The (scenarios, infos) of a `procedural:SPLIT:NUM:SEED` source, generated on 2 workers."""
    from jaxloop.data import procedural
    _, split, num, seed = spec.split(":")
    return procedural.generate(split, int(num), int(seed), workers=2)


def load_real():
    """The WOMD fixtures (both layouts) and the AV2 fixture, or None where absent."""
    from jaxloop.data.sources import load_source
    from jaxloop.sim.datatypes import stack_scenarios
    out = {}
    womd = sorted((SHARED_DATA / "womd").glob("*.tfrecord"))
    if womd:
        scs, infos = [], []
        for f in womd:
            s, i = load_source(str(f))
            scs += [jax.tree.map(lambda a: a[k], s) for k in range(len(i))]
            infos += i
        out["womd"] = (stack_scenarios(scs), infos)
    av2 = sorted((SHARED_DATA / "av2").glob("scenario_*.parquet"))
    if av2:
        out["av2"] = load_source(str(av2[0]))
    return out


def evaluate_policy(name, policy, env_config, sets, perturbations, seed):
    from jaxloop.data.formats import init_steps_of
    from jaxloop.eval.evaluate import EvalConfig, evaluate
    from jaxloop.eval.perturb import run_suite

    results, reports = {}, {}
    for set_name, (scenarios, infos) in sets.items():
        init_steps = init_steps_of(infos, set_name)
        cfg = EvalConfig(env=dataclasses.replace(env_config, init_steps=init_steps), batch_size=64)
        t0 = time.perf_counter()
        rep = evaluate(policy, scenarios, infos, cfg, seed, name=name)
        reports[set_name] = rep
        results[set_name] = {k: rep.aggregate[k] for k in ("num_scenarios",) + SUMMARY_KEYS}
        log(f"  {name} on {set_name}: failure {rep.aggregate['failure_rate']:.3f} "
            f"progress {rep.aggregate['progress_ratio']:.3f} ({time.perf_counter() - t0:.0f} s)")
    scenarios, infos = sets["perturbed_base"]
    cfg = EvalConfig(env=env_config, batch_size=64)
    suite = run_suite(policy, scenarios, infos, cfg, seed, perturbations=perturbations, name=name,
                      clean=reports["perturbed_base"])
    results["perturbed"] = {**suite.mean_perturbed(), "num_scenarios": len(infos),
                            "num_perturbations": len(perturbations)}
    results["perturbation_deltas"] = suite.deltas()
    log(f"  {name} perturbed: failure {results['perturbed']['failure_rate']:.3f}")
    return results, reports, suite


def plot_curves(runs: dict[str, pathlib.Path], out: pathlib.Path) -> pathlib.Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxloop.io.logging import read_jsonl
    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3.2), dpi=100)
    for ax, (name, run) in zip(np.atleast_1d(axes), runs.items()):
        rows = read_jsonl(run / "logs")
        key = "episode_return" if name == "grpo" else "loss"
        xs = [r["step"] for r in rows if r.get(key) is not None]
        ys = [r[key] for r in rows if r.get(key) is not None]
        ax.plot(xs, ys)
        ax.set_title(f"{name}: {key}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "training_curves.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_families(reports: dict, out: pathlib.Path) -> pathlib.Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = sorted({f for r in reports.values() for f in r.per_family})
    width = 0.8 / len(reports)
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    for i, (name, rep) in enumerate(reports.items()):
        vals = [rep.per_family.get(f, {}).get("failure_rate", np.nan) for f in families]
        ax.bar(np.arange(len(families)) + i * width, vals, width, label=name)
    ax.set_xticks(np.arange(len(families)) + width * (len(reports) - 1) / 2, families, rotation=20)
    ax.set_ylabel("failure rate")
    ax.set_title("failure rate per family (test + test_ood)")
    ax.legend()
    fig.tight_layout()
    path = out / "failure_per_family.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_perturbations(deltas: dict[str, dict], out: pathlib.Path) -> pathlib.Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(next(iter(deltas.values())))
    width = 0.8 / len(deltas)
    fig, ax = plt.subplots(figsize=(8, 3.5), dpi=100)
    for i, (policy, d) in enumerate(deltas.items()):
        ax.bar(np.arange(len(names)) + i * width, [d[n]["failure_rate"] for n in names], width, label=policy)
    ax.set_xticks(np.arange(len(names)) + width * (len(deltas) - 1) / 2, names, rotation=25, ha="right")
    ax.set_ylabel("Δ failure rate vs clean")
    ax.axhline(0, color="k", lw=0.5)
    ax.legend()
    fig.tight_layout()
    path = out / "perturbation_deltas.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def render_gifs(policies: dict, env_configs: dict, scenarios, infos, out: pathlib.Path, indices) -> list[pathlib.Path]:
    from jaxloop.sim.env import Env
    from jaxloop.sim.rollout import rollout
    from jaxloop.viz.render import render_episode_gif

    paths = []
    for i in indices:
        sc = jax.tree.map(lambda a: np.asarray(a)[i], scenarios)
        for name, policy in policies.items():
            env = Env(env_configs[name])
            state = env.reset(sc, jax.random.key(0))
            _, ro = jax.jit(lambda s, st: rollout(env, s, st, policy, sc.num_steps - env.config.init_steps))(sc, state)
            path = out / f"episode_{infos[i]['family']}_{i}_{name}.gif"
            render_episode_gif(sc, jax.device_get(ro.states), path, fps=10, stride=2,
                               timesteps=np.asarray(ro.timesteps), width_px=360, height_px=360)
            paths.append(path)
    return paths


def to_markdown(result: dict) -> str:
    lines = ["# Open loop vs closed loop", "",
             f"Command: `{result['command']}`  ", f"Seed: {result['seed']}  ", f"Machine: {result['machine']}  ",
             f"Wall time: {result['wall_s'] / 60:.1f} min", "",
             "Failure = collision or offroad or red-light violation in the episode; progress ratio = ego progress "
             "along its route over the log's; score = the closed-loop driving score of `jaxloop.sim.metrics`.", ""]
    sets = ["test", "test_ood", "perturbed", "womd", "av2"]
    for key in SUMMARY_KEYS:
        lines += [f"### {key}", "", "| policy | " + " | ".join(sets) + " |", "|---" * (len(sets) + 1) + "|"]
        for name, res in result["policies"].items():
            lines.append(f"| {name} | " + " | ".join(f"{res[s][key]:.3f}" if s in res else "" for s in sets) + " |")
        lines.append("")
    lines += ["### Baselines on test (no network)", "", "| baseline | " + " | ".join(SUMMARY_KEYS) + " |",
              "|---" * (len(SUMMARY_KEYS) + 1) + "|"]
    for name, res in result.get("baselines", {}).items():
        lines.append(f"| {name} | " + " | ".join(f"{res['test'][k]:.3f}" for k in SUMMARY_KEYS) + " |")
    names = list(next(iter(result["policies"].values()))["perturbation_deltas"])
    lines += ["", "### Failure rate under each perturbation (first "
              f"{result['experiments']['bc']['eval']['num_perturbed']} test scenarios)", "",
              "| policy | clean | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    for name, res in result["policies"].items():
        clean = res["perturbed_clean"]["failure_rate"]
        lines.append(f"| {name} | {clean:.3f} | " + " | ".join(
            f"{clean + res['perturbation_deltas'][n]['failure_rate']:.3f}" for n in names) + " |")
    for name, res in result.get("baselines", {}).items():
        if "perturbed_failure_rate" in res:
            pf = res["perturbed_failure_rate"]
            lines.append(f"| {name} (baseline) | {pf['clean']:.3f} | " + " | ".join(f"{pf[n]:.3f}" for n in names) + " |")
    lines += ["", "Training augmentation: APG and GRPO episodes get a random crossing pedestrian or cyclist "
              "(random side, speed, timing) in half the episodes with reactive traffic, and APG episodes start "
              "off the logged ego state (noise up to the `ego_noise` level), so `inject_*` (both) and `ego_noise` "
              "(APG) are close to what they trained on; the other perturbations are unseen in training. "
              "APG's loss (`closed_loop_safety`) lets the ego fall up to 2 s behind its log without counting it "
              "as divergence (so yielding to a crosser is not penalised) and penalises overlaps predicted 0.5-2 s "
              "ahead at constant velocity."]
    lines += ["", "### Targets", ""]
    for k, v in result["targets"].items():
        lines.append(f"- {k}: {v}")
    lines += ["", "### Safety gate (post-trained vs BC, held-out test + perturbations)", ""]
    for name, g in result["gate"].items():
        lines.append(f"- {name}: {'PASS' if g['passed'] else 'FAIL'}" + ("" if g["passed"] else f" — {'; '.join(g['reasons'][:4])}"))
    lines += ["", "### Training", ""]
    for name, s in result["training"].items():
        resumed = f" (resumed at step {s['start_step']})" if s.get("start_step") else ""
        lines.append(f"- {name}: {s['final_step']} steps; this invocation ran {s['steps']}{resumed} in "
                     f"{s['wall_s']:.0f} s ({s['env_steps_per_s']:.0f} env-steps/s)")
    lines += ["", "Plots: " + ", ".join(f"`{p}`" for p in result["plots"]), "", "GIFs: " + ", ".join(f"`{p}`" for p in result["gifs"])]
    return "\n".join(lines) + "\n"


def main(argv=None, prog: str = "python experiments/open_vs_closed_loop.py") -> dict:
    """Runs the pipeline with command-line `argv` (see the module docstring) and returns the result dict.

    `prog` is the command recorded in the results.
    """
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=PROFILES, default="full")
    parser.add_argument("--out", default="experiments/results")
    parser.add_argument("--runs", default=None, help="where the training runs go (default: OUT/runs/PROFILE)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh", action="store_true", help="delete earlier runs (bc, apg, grpo) under --runs first")
    args = parser.parse_args(argv)
    runs_cfg = presets(args.profile, args.seed)
    bc_cfg = runs_cfg["bc"]
    post = tuple(name for name in runs_cfg if name != "bc")
    t_start = time.perf_counter()
    out = pathlib.Path(args.out)
    runs = out / "runs" / args.profile if args.runs is None else pathlib.Path(args.runs)
    if args.fresh:
        for name in ("bc", "apg", "grpo"):
            if (runs / name).exists():
                shutil.rmtree(runs / name)
    out.mkdir(parents=True, exist_ok=True)

    from jaxloop.config import to_dict
    from jaxloop.eval.gate import check
    from jaxloop.io.policies import load_policy_from_checkpoint
    from jaxloop.sim import perturb
    from jaxloop.train.loop import run

    log(f"generating scenarios ({args.profile})")
    train = procedural_set(bc_cfg.data.source)
    test = procedural_set(bc_cfg.eval.source)
    ood = procedural_set(bc_cfg.eval.source.replace(":test:", ":test_ood:"))
    k = bc_cfg.eval.num_perturbed
    perturbed_base = (jax.tree.map(lambda a: a[:k], test[0]), test[1][:k])
    sets = {"test": test, "test_ood": ood, "perturbed_base": perturbed_base, **load_real()}

    training = {}
    log("behaviour cloning (open loop)")
    training["bc"] = run(bc_cfg, train[0], str(runs / "bc"), log_every=50, ckpt_every=500, progress=False,
                         use_tensorboard=True)
    log("APG post-training (closed loop, gradients through the simulator)")
    training["apg"] = run(runs_cfg["apg"], train[0], str(runs / "apg"), init_from=str(runs / "bc"), log_every=10,
                          ckpt_every=100, progress=False)
    if "grpo" in post:
        log("GRPO post-training (closed loop RL, KL to the BC policy)")
        training["grpo"] = run(runs_cfg["grpo"], train[0], str(runs / "grpo"), init_from=str(runs / "bc"),
                               log_every=10, ckpt_every=100, progress=False)
    names = ("bc",) + post

    init_steps = bc_cfg.data.init_steps
    suite = perturb.default_suite(init_steps) if bc_cfg.eval.suite == "full" else [
        perturb.ego_noise(), perturb.agents_idm(), perturb.inject_crossing(init_steps=init_steps),
        perturb.action_latency()]
    results, reports, suites, policies, env_configs = {}, {}, {}, {}, {}
    for name in names:
        policy, cfg = load_policy_from_checkpoint(runs / name)
        policies[name], env_configs[name] = policy, cfg.env_config()
        log(f"evaluating {name}")
        results[name], reports[name], suites[name] = evaluate_policy(name, policy, cfg.env_config(), sets, suite,
                                                                     args.seed)
        results[name]["perturbed_clean"] = results[name].pop("perturbed_base")

    from jaxloop.eval.evaluate import EvalConfig, evaluate
    from jaxloop.eval.perturb import run_suite
    from jaxloop.sim.env import EnvConfig
    baselines = {}
    for name in ("expert", "constant_velocity", "idm"):
        rep = evaluate(name, test[0], test[1], EvalConfig(env=EnvConfig()), args.seed)
        baselines[name] = {"test": {k: rep.aggregate[k] for k in ("num_scenarios",) + SUMMARY_KEYS}}
        log(f"  baseline {name} on test: failure {rep.aggregate['failure_rate']:.3f}")
    # How hard each perturbation is: log replay of the ego and the reactive IDM ego under it.
    for name in ("expert", "idm") if bc_cfg.eval.suite == "full" else ():
        rep = run_suite(name, perturbed_base[0], perturbed_base[1], EvalConfig(env=EnvConfig()), args.seed,
                        perturbations=suite, name=name)
        baselines[name]["perturbed_failure_rate"] = {k: v.aggregate["failure_rate"] for k, v in rep.perturbed.items()}
        baselines[name]["perturbed_failure_rate"]["clean"] = rep.clean.aggregate["failure_rate"]

    bc_fail = results["bc"]["test"]["failure_rate"]
    targets = {}
    for name in post:
        r = results[name]
        ratio = r["test"]["failure_rate"] / bc_fail if bc_fail > 0 else float("nan")
        degr = lambda n: results[n]["perturbed"]["failure_rate"] - reports[n]["perturbed_base"].aggregate["failure_rate"]
        targets[name] = (f"test failure {r['test']['failure_rate']:.3f} = {ratio:.2f} x BC ({bc_fail:.3f}) "
                         f"[target <= 0.40: {'met' if ratio <= 0.4 else 'missed'}]; progress ratio "
                         f"{r['test']['progress_ratio']:.3f} [target >= 0.9: "
                         f"{'met' if r['test']['progress_ratio'] >= 0.9 else 'missed'}]; degradation under "
                         f"perturbation {degr(name):+.3f} vs BC {degr('bc'):+.3f} "
                         f"[{'less' if degr(name) < degr('bc') else 'not less'}]")
    targets["bc"] = f"BC's own test failure rate: {bc_fail:.3f}"
    gate = {name: check(suites[name], suites["bc"], runs_cfg[name].gate).to_dict() for name in post}

    plots = [plot_curves({n: runs / n for n in names}, out),
             plot_families({n: _merge(reports[n]["test"], reports[n]["test_ood"]) for n in reports}, out),
             plot_perturbations({n: results[n]["perturbation_deltas"] for n in results}, out)]
    log("rendering GIFs")
    fams, picks = set(), []
    for i, info in enumerate(test[1]):
        if info["family"] not in fams and len(picks) < 2:
            fams.add(info["family"])
            picks.append(i)
    gifs = render_gifs({n: policies[n] for n in ("bc", "apg")}, env_configs, test[0], test[1], out, picks)

    env = jax.devices()[0]
    import os
    result = {
        "command": " ".join([prog] + list(argv if argv is not None else sys.argv[1:])),
        "seed": args.seed, "profile": args.profile, "machine": f"{env.platform} ({os.cpu_count()} cores), jax {jax.__version__}",
        "wall_s": time.perf_counter() - t_start, "experiments": {n: to_dict(e) for n, e in runs_cfg.items()},
        "policies": results, "baselines": baselines, "targets": targets, "gate": gate,
        "training": {n: {k: s[k] for k in ("start_step", "final_step", "steps", "wall_s", "env_steps_per_s",
                                            "skipped_updates")} for n, s in training.items()},
        "plots": [str(x) for x in plots], "gifs": [str(x) for x in gifs], "runs": str(runs),
    }
    stem = "open_vs_closed_loop" if args.profile == "full" else f"open_vs_closed_loop_{args.profile}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=float))
    (out / f"{stem}.md").write_text(to_markdown(result))
    log(f"wrote {out / (stem + '.json')} and {out / (stem + '.md')}")
    return result


def _merge(a, b):
    """One report's per-family table over two sets (for the per-family plot)."""
    from jaxloop.eval.evaluate import EvalReport, aggregate
    rows = a.per_scenario + b.per_scenario
    fams = sorted({r["family"] for r in rows})
    return EvalReport(a.name, rows, aggregate(rows), {f: aggregate([r for r in rows if r["family"] == f]) for f in fams})


if __name__ == "__main__":
    main(prog="python -m jaxloop.experiments.open_vs_closed_loop")
