"""Self-play APG from a self-play BC run with given reward weights, evaluated per agent on procedural test.

    PYTHONPATH=. python experiments/selfplay_explore/sweep.py NAME --init RUNS/selfplay_bc \
        [--preset P] [--w '{"field": value}'] [--steer-prior none|pure_pursuit] [--out-dir DIR]

Trains `experiments/selfplay.py::presets("full")`'s selfplay_apg settings (100 steps by default)
into DIR/NAME and appends one JSON line of per-agent rates (`agent_rates`, plus the share of
agents under 50% / 90% route completion and per-family rates) to DIR/results.jsonl.
"""
import sys, json, time, argparse, dataclasses, pathlib
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import numpy as np

def evaluate_run(run_dir, test, num=100, seed=0, goal_behavior=None):
    import jax
    from jaxloop.data.formats import init_steps_of
    from jaxloop.eval.cli import resolve_policy_spec
    from jaxloop.eval.evaluate import EvalConfig, make_episode_fn, num_closed_loop_steps
    from jaxloop.sim.env import EnvConfig
    from jaxloop.sim.rollout import over_batch
    from jaxloop.sim.metrics.agents import agent_rates
    scen, infos = test
    env = EnvConfig(non_ego_agent="log", init_steps=init_steps_of(infos, "test"))
    policy, env, label = resolve_policy_spec(run_dir, env)
    if goal_behavior is not None:  # evaluate as if the run had another goal behaviour
        env = dataclasses.replace(env, goal_behavior=goal_behavior)
    cfg = EvalConfig(env=env, batch_size=20)
    first = jax.tree.map(lambda a: a[0], scen)
    steps = num_closed_loop_steps(first, cfg.env)
    ep = make_episode_fn(policy, cfg, steps, None, None, True)
    fn = jax.jit(lambda b, k: over_batch(ep, b, None, keys=k))
    keys = jax.random.split(jax.random.key(seed), num)
    chunks = []
    for s in range(0, num, 20):
        ix = np.arange(s, s + 20)
        b = jax.tree.map(lambda a: np.asarray(a)[ix], scen)
        chunks.append({k: np.asarray(v) for k, v in jax.device_get(fn(b, keys[ix]))["agents"].items()})
    ag = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    mask = ag["controlled"].astype(bool)
    r = agent_rates(ag, mask)
    comp = ag["completion"][mask]
    fail = (ag["collision_offroad"][mask] > 0)
    r["comp_lt50"] = float((comp < 0.5).mean()); r["comp_lt90"] = float((comp < 0.9).mean())
    r["comp_ok_agents"] = float(comp[~fail].mean()) if (~fail).any() else float("nan")
    r["comp_failed_agents"] = float(comp[fail].mean()) if fail.any() else float("nan")
    fam = np.array([i.get("family", "?") for i in infos[:num]])
    per = {}
    for f in sorted(set(fam)):
        mk = mask & (fam[:, None] == f)
        per[f] = (int(mk.sum()), round(float(ag["collision"][mk].mean()), 3), round(float(ag["offroad"][mk].mean()), 3),
                  round(float(ag["completion"][mk].mean()), 3))
    r["families"] = per
    return r, ag

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("name"); p.add_argument("--steps", type=int, default=100); p.add_argument("--bc", type=float, default=0.0)
    p.add_argument("--w", default="{}"); p.add_argument("--preset", default="closed_loop_safety")
    p.add_argument("--batch", type=int, default=8); p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--init", required=True, help="the self-play BC run to start from")
    p.add_argument("--eval-only", action="store_true")
    p.add_argument("--ego", action="store_true", help="also evaluate the policy as the ego on test (log / IDM traffic)")
    p.add_argument("--out-dir", default="runs/selfplay_explore")
    p.add_argument("--steer-prior", default="pure_pursuit", choices=("none", "pure_pursuit"))
    p.add_argument("--horizon", type=int, default=80)
    p.add_argument("--goal-behavior", default="remove", choices=("continue", "remove"),
                   help="EnvSettings.goal_behavior of the run (training and evaluation)")
    p.add_argument("--past-goal", action="store_true",
                   help="EnvSettings.done_at_goal=False: an agent's loss runs on past its goal (--goal-behavior continue)")
    p.add_argument("--eval-goal-behavior", default=None, choices=("continue", "remove"),
                   help="evaluate with this goal behaviour instead of the run's")
    a = p.parse_args()
    from selfplay import presets
    from jaxloop.experiments.open_vs_closed_loop import procedural_set
    from jaxloop.train.loop import run
    from jaxloop.config import APG, params_of
    from jaxloop.sim.rewards import get_preset
    cfgs = presets("full", 0, a.preset, steer_prior=a.steer_prior)
    apg = cfgs["selfplay_apg"]
    apg = dataclasses.replace(apg, algo=APG(bc_coef=a.bc), steps=a.steps, lr_decay_steps=a.steps, learning_rate=a.lr,
                              batch_size=a.batch, env=dataclasses.replace(apg.env, horizon=a.horizon,
                                                                         goal_behavior=a.goal_behavior,
                                                                         done_at_goal=not a.past_goal))
    weights = dataclasses.replace(get_preset(a.preset), **json.loads(a.w))
    out = a.init if a.eval_only else str(pathlib.Path(a.out_dir) / a.name)
    t = time.time()
    if not a.eval_only:
        train = procedural_set(apg.data.source)
        s = run(apg, train[0], out, init_from=a.init, log_every=10, ckpt_every=1000, progress=False,
                use_tensorboard=False, run_info={"data": apg.data.source}, params=params_of(apg, reward=weights))
        print("train", a.name, round(time.time() - t), "s", s["final_metrics"], flush=True)
        del train
    test = procedural_set(apg.eval.source)
    t2 = time.time()
    r, _ = evaluate_run(out, test, goal_behavior=a.eval_goal_behavior)
    print("eval", round(time.time() - t2), "s")
    if a.ego:  # the policy as the ego on test, the other objects log replay / IDM (at fault)
        from selfplay import ego_rates
        ego = ego_rates(a.name, pathlib.Path(out), {"test": test}, 0)
        r["ego"] = {k: {m: v[m] for m in ("failure_rate", "failures", "collision_rate", "offroad_rate",
                                           "progress_ratio")} for k, v in ego.items()}
    print("RESULT", a.name, json.dumps({"w": a.w, "eval_goal_behavior": a.eval_goal_behavior, "steps": a.steps, "bc": a.bc, "batch": a.batch, "lr": a.lr,
          **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}}), flush=True)
    with open(pathlib.Path(a.out_dir) / "results.jsonl", "a") as f:
        f.write(json.dumps({"name": a.name, "w": a.w, "eval_goal_behavior": a.eval_goal_behavior, "steps": a.steps, "bc": a.bc, "batch": a.batch, "lr": a.lr, **r}) + "\n")
