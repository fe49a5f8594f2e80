"""`jaxloop eval` and `jaxloop gate`.

Both validate every flag, policy spec and the data (`check_scenarios`: the horizon fits
the logs, the inputs are finite) before the first rollout, so a wrong `--baseline` or
`--horizon` fails in seconds, not after the candidate's suite has run.

`jaxloop eval --non-ego policy:RUN` evaluates the ego against traffic driven by a trained
run: its policy drives every other vehicle from that vehicle's own ego-centric view
(`jaxloop.io.policies.make_actor(controlled="vehicles")`; a self-play run its own
"vehicles" / "all"), pedestrians and cyclists replay the log. RUN may be an exported
policy directory (`jaxloop export`): the artefact maps one observer's features to its
action, so it drives every vehicle the same way (`io.policies.call_actor`). A `--policy`
run trained in self-play (its `env.controlled` "vehicles" / "all") drives all its
controlled agents; an exported `--policy` drives the ego only. In both cases the report
adds the per-agent rates over every controlled agent. `jaxloop gate --non-ego` takes the
same forms: candidate and baseline are both evaluated against the same traffic.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Annotated, Literal

import tyro

from jaxloop.eval.evaluate import BASELINES, EvalConfig, check_scenarios, evaluate
from jaxloop.sim.env import EnvConfig

NON_EGO_MODELS = ("log", "idm")
POLICY_PREFIX = "policy:"
NON_EGO_FORMS = "'log', 'idm' or 'policy:RUN' (RUN a training run, checkpoint or exported policy directory)"


def check_policy_spec(spec: str, flag: str = "--policy") -> None:
    """A `ValueError` naming `flag` unless `spec` is a baseline name or an existing path (cheap)."""
    if spec not in BASELINES and not pathlib.Path(spec).exists():
        raise ValueError(f"{flag} {spec!r}: neither a baseline ({', '.join(BASELINES)}) nor an existing checkpoint, "
                         f"run or exported policy directory")


def resolve_policy_spec(spec: str, env: EnvConfig, flag: str = "--policy") -> tuple[object, EnvConfig, str]:
    """(policy or baseline name, the env it drives, a label) for a baseline name, a training run / checkpoint
    directory or an exported policy directory (`jaxloop export`)."""
    check_policy_spec(spec, flag)
    if spec in BASELINES:
        return spec, env, spec
    path = pathlib.Path(spec)
    from jaxloop.io.export import METADATA_FILE
    from jaxloop.io.policies import load_params, load_policy, make_policy_fn, trained_on_own_path
    controlled = "sdc"
    if (path / METADATA_FILE).is_file():  # an exported policy drives the ego
        policy, experiment = load_policy(path)
    else:
        graphdef, params, experiment = load_params(path)
        controlled = run_controlled(experiment)
        policy = make_policy_fn(graphdef, params, experiment.obs, controlled=controlled,
                                own_path=trained_on_own_path(experiment))
    policy_env = dataclasses.replace(experiment.env_config(), non_ego_agent=env.non_ego_agent,
                                     init_steps=env.init_steps, controlled=controlled)
    return policy, policy_env, _run_label(path)


def _run_label(path: pathlib.Path) -> str:
    return path.name if path.name != "checkpoints" else path.parent.name


def run_controlled(experiment) -> str:
    """The objects a run's policy was trained to drive: its `env.controlled` ("sdc" for an ego-only run)."""
    return experiment.env.controlled


def parse_non_ego(spec: str) -> tuple[str, str | None]:
    """(the agent model of the objects no policy drives, the traffic run or None) of a `--non-ego` spec (cheap).

    `log` / `idm`: every other object replays its log / follows IDM. `policy:RUN`: the run
    at path RUN drives the other vehicles; the rest replay the log. A `ValueError` naming
    `--non-ego` and the expected forms otherwise, or when RUN does not exist.
    """
    if spec in NON_EGO_MODELS:
        return spec, None
    if not isinstance(spec, str) or not spec.startswith(POLICY_PREFIX) or not spec[len(POLICY_PREFIX):]:
        raise ValueError(f"--non-ego {spec!r}: expected {NON_EGO_FORMS}")
    run = spec[len(POLICY_PREFIX):]
    if not pathlib.Path(run).is_dir():
        raise ValueError(f"--non-ego {spec!r}: no run or checkpoint directory at {run!r}; expected {NON_EGO_FORMS}")
    return "log", run


def resolve_traffic(policy, env: EnvConfig, run: str, label: str) -> tuple[object, EnvConfig, str]:
    """(the actor of `policy` as the ego with `run` driving the other vehicles, the env they share, a label).

    The traffic is `run`'s deterministic policy as an actor with its params bound
    (`make_actor(controlled=...)`, every vehicle from its own view; a self-play run's own
    "vehicles" / "all"), or for an exported policy directory the artefact itself
    (`call_actor`, the same observers and mask), combined with the ego's by `with_traffic`. Both drive one
    environment: a trained ego must share the run's dynamics and history length (a
    baseline ego has none of its own and takes the run's).
    """
    from jaxloop.io.export import METADATA_FILE
    from jaxloop.io.policies import call_actor, config_from_checkpoint, load_exported_call, load_params, make_actor
    from jaxloop.sim.actor import as_actor, baseline_actor, bind_params, with_traffic
    flag = f"--non-ego {POLICY_PREFIX}{run}"
    name = _run_label(pathlib.Path(run))
    exported = (pathlib.Path(run) / METADATA_FILE).is_file()
    try:
        call, experiment = load_exported_call(run) if exported else (None, config_from_checkpoint(run))
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"{flag}: not a training run, checkpoint or exported policy directory ({e})") from e
    controlled = "all" if run_controlled(experiment) == "all" else "vehicles"
    if exported:  # the artefact maps one observer's features to its action: every vehicle from its own view
        traffic = call_actor(call, experiment.obs, controlled, name)
    else:
        try:
            graphdef, params, experiment = load_params(run, experiment)
        except (FileNotFoundError, ValueError) as e:
            raise ValueError(f"{flag}: not a training run or checkpoint directory ({e})") from e
        traffic = bind_params(make_actor(graphdef, experiment.obs, controlled=controlled, name=name), params)
    traffic_env = experiment.env_config()
    if not isinstance(policy, str):
        for field in ("dynamics", "history_length"):
            mine, theirs = getattr(env, field), getattr(traffic_env, field)
            if mine != theirs:
                raise ValueError(f"{flag}: its {field} {theirs!r} differs from the --policy's {mine!r}; the ego and "
                                 f"the traffic drive one environment")
    env = dataclasses.replace(env, controlled=controlled, dynamics=traffic_env.dynamics,
                              history_length=traffic_env.history_length)
    ego = baseline_actor(policy, env.action_dim) if isinstance(policy, str) else as_actor(policy, label)
    return with_traffic(ego, traffic), env, f"{label} vs {name} traffic"


def run_eval(policy: str = "expert", data: str = "procedural:test:64", non_ego: str = "log",
             perturb: bool = False, horizon: int | None = None, batch_size: int = 64, seed: int = 0,
             out: str | None = None, json_output: Annotated[bool, tyro.conf.arg(name="json")] = False,
             skip_invalid: bool = False, num_objects: int = 128,
             select: Literal["nearest", "error"] = "nearest", agents: bool = False) -> int:
    """Closed-loop evaluation of a checkpoint or baseline (expert, constant_velocity, idm).

    Args:
        policy: a baseline name or a training checkpoint / run directory.
        data: toy[:NUM], procedural:SPLIT:NUM[:SEED], a cache directory (streamed), or WOMD / AV2 files.
        non_ego: the other objects: log (replay), idm, or policy:RUN (a training run, checkpoint or exported
            policy directory drives every other vehicle, each from its own view).
        perturb: also run the perturbation suite and report metric deltas.
        horizon: closed-loop steps (default: to the end of the log).
        out: directory for report.json / report.md (and perturbations.json / .md).
        json_output: print the aggregate JSON on stdout instead of tables.
        skip_invalid: raw --data files: skip (and count on stderr) invalid files and records instead of stopping.
        num_objects: N object slots when reading raw files.
        select: raw files with more objects than N: keep the N nearest to the SDC (and every track to predict /
            object of interest), or stop with an error.
        agents: report per-agent rates even when only the ego is controlled (they are whenever a policy
            drives more: --non-ego policy:RUN, or a --policy run trained in self-play).
    """
    from jaxloop.data import open_dataset
    from jaxloop.data.formats import init_steps_of
    EvalConfig(batch_size=batch_size, horizon=horizon)  # flags checked before the data loads
    check_policy_spec(policy)
    non_ego_model, traffic_run = parse_non_ego(non_ego)
    scenarios = open_dataset(data, num_objects=num_objects, select=select, skip_invalid=skip_invalid)
    infos = scenarios.infos
    env = EnvConfig(non_ego_agent=non_ego_model, init_steps=init_steps_of(infos, f"--data {data}"))
    policy_obj, env, label = resolve_policy_spec(policy, env)
    if traffic_run is not None:
        policy_obj, env, label = resolve_traffic(policy_obj, env, traffic_run, label)
    config = EvalConfig(env=env, batch_size=batch_size, horizon=horizon)
    report = evaluate(policy_obj, scenarios, infos, config, seed, name=label,
                      agents=agents or env.controlled != "sdc")
    suite = None
    if perturb:
        from jaxloop.eval.perturb import run_suite
        suite = run_suite(policy_obj, scenarios, infos, config, seed, name=label, clean=report)
    if out:
        d = pathlib.Path(out)
        d.mkdir(parents=True, exist_ok=True)
        report.to_json(str(d / "report.json"))
        (d / "report.md").write_text(report.to_markdown())
        if suite is not None:
            (d / "perturbations.json").write_text(json.dumps(suite.to_dict(), indent=1))
            (d / "perturbations.md").write_text(suite.to_markdown())
    if json_output:
        agg = dict(report.aggregate)
        if report.agents is not None:
            agg["agents"] = report.agents
        if suite is not None:
            agg["perturbed"] = suite.mean_perturbed()
            agg["perturbation_deltas"] = suite.deltas()
        print(json.dumps(agg))
    else:
        print(report.to_markdown())
        if suite is not None:
            print(suite.to_markdown())
        if out:
            print(f"reports written to {out}/")
    return 0


def run_gate(candidate: str, baseline: str = "expert", data: str = "procedural:test:64",
         non_ego: str = "log", out: str = "runs/gate/report.json", tolerance: float = 0.02,
         max_failure_rate: float = 0.25, min_progress_ratio: float = 0.8, max_perturbed_failure_rate: float = 0.5,
         horizon: int | None = None, batch_size: int = 64, seed: int = 0, skip_invalid: bool = False,
         num_objects: int = 128, select: Literal["nearest", "error"] = "nearest") -> int:
    """Safety gate: PASS (exit 0) when the candidate is not worse than the baseline on failure
    rate beyond `tolerance`, clean and under every perturbation, and meets the absolute
    thresholds; FAIL (exit 1) with reasons otherwise. Writes a JSON + Markdown report.

    Args:
        candidate: checkpoint / run directory or baseline name.
        baseline: checkpoint / run directory or baseline name.
        data: held-out scenarios (see `jaxloop eval --help`).
        non_ego: the other objects, the same for candidate and baseline: log (replay), idm, or policy:RUN (a
            training run, checkpoint or exported policy drives every other vehicle; see `jaxloop eval --help`).
        skip_invalid: raw --data files: skip (and count on stderr) invalid files and records instead of stopping.
        num_objects: N object slots when reading raw files.
        select: raw files with more objects than N: keep the N nearest to the SDC (and every track to predict /
            object of interest), or stop with an error.
    """
    from jaxloop.data import open_dataset
    from jaxloop.data.formats import init_steps_of
    from jaxloop.eval.gate import GateConfig, check
    from jaxloop.eval.perturb import run_suite
    # Everything that can be wrong is found before the first (long) suite runs: flags,
    # both specs, then the data against each policy's config.
    gate_config = GateConfig(failure_tolerance=tolerance, max_failure_rate=max_failure_rate,
                             min_progress_ratio=min_progress_ratio,
                             max_perturbed_failure_rate=max_perturbed_failure_rate)
    EvalConfig(batch_size=batch_size, horizon=horizon)
    check_policy_spec(candidate, "--candidate")
    check_policy_spec(baseline, "--baseline")
    non_ego_model, traffic_run = parse_non_ego(non_ego)
    scenarios = open_dataset(data, num_objects=num_objects, select=select, skip_invalid=skip_invalid)
    infos = scenarios.infos
    env = EnvConfig(non_ego_agent=non_ego_model, init_steps=init_steps_of(infos, f"--data {data}"))
    plans = []
    for spec, flag in ((candidate, "--candidate"), (baseline, "--baseline")):
        policy_obj, policy_env, label = resolve_policy_spec(spec, env, flag)
        if traffic_run is not None:  # both against the same traffic
            policy_obj, policy_env, label = resolve_traffic(policy_obj, policy_env, traffic_run, label)
        config = EvalConfig(env=policy_env, batch_size=batch_size, horizon=horizon)
        check_scenarios(scenarios, infos, config)
        plans.append((policy_obj, config, label))
    suites = [run_suite(policy_obj, scenarios, infos, config, seed, name=label)
              for policy_obj, config, label in plans]
    result = dataclasses.replace(check(suites[0], suites[1], gate_config), traffic=non_ego)
    title = f"Safety gate: {candidate} vs {baseline} on {data}, {non_ego} traffic"
    result.write(out, title)
    print(result.to_markdown(title))
    print(f"report: {out} and {pathlib.Path(out).with_suffix('.md')}")
    return 0 if result.passed else 1

