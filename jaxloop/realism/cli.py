"""`jaxloop realism`: WOSAC-style realism of a traffic model against real logs."""

from __future__ import annotations

import pathlib
from typing import Annotated, Literal

import tyro


def run_realism(agents: str = "idm", data: str = "../shared/data/gpudrive", rollouts: int = 32,
                horizon: int | None = None, batch_size: int = 2, seed: int = 0, out: str | None = None,
                json_output: Annotated[bool, tyro.conf.arg(name="json")] = False, policy_objects: int = 16,
                policy_noise: float = 0.03, policy_parked: bool = False, policy_skip_reversing: bool = False,
                policy_head: bool = True, policy_target_spread: float = 0.1, idm_params: str | None = None,
                skip_invalid: bool = False,
                num_objects: int = 128, select: Literal["nearest", "error"] = "nearest") -> int:
    """Realism meta-metric of a traffic model: many stochastic rollouts per scene, the likelihood of the log
    under them per feature (WOSAC-style, not the official challenge number).

    Args:
        agents: log | constant_velocity | idm | log_resampled (the noisy-log reference) | policy:RUN (a training
            run / checkpoint or `jaxloop export` directory).
        data: toy[:NUM], procedural:SPLIT:NUM[:SEED], a cache directory, raw WOMD / AV2 / JSON files or
            directories, comma-separated.
        rollouts: rollouts per scene (WOSAC: 32).
        horizon: future steps (default: to the end of the log, 80 for WOMD).
        batch_size: scenes per compiled call.
        out: directory for realism.json / realism.md.
        json_output: print the aggregate JSON on stdout instead of the table.
        policy_objects: a policy drives the SDC and the nearest vehicles, this many in all.
        policy_noise: action noise std added to an exported (deterministic) policy, normalised units.
        policy_parked: the policy drives parked vehicles too (default: only vehicles that start farther than
            GOAL_RADIUS from their goal, self-play's rule; parked ones are sampled IDM).
        policy_skip_reversing: leave the vehicles the log moves backward for a second to the sampled IDM (the
            policy's bicycle drives forward only).
        policy_head: a checkpoint samples its tanh-Gaussian head (False: its mode + policy_noise).
        policy_target_spread: a policy that observes a target speed (`--obs.target-speed`) sees it times
            exp(spread N(0, 1)) per rollout and slot (a sampled driver style; the IDM agents' desired-speed
            spread by default); 0: the log's largest speed.
        idm_params: a JSON file of fitted IDM parameters (`jaxloop.realism.fit`) to sample around.
        skip_invalid: raw --data files: skip (and count on stderr) invalid files and records.
        num_objects: N object slots when reading raw files.
        select: raw files with more objects than N: keep the N nearest to the SDC, or stop with an error.
    """
    import json

    from jaxloop.data.formats import init_steps_of
    from jaxloop.data.sources import load_source
    from jaxloop.realism.evaluate import RealismConfig, realism
    from jaxloop.sim.agents import AgentParams

    params = AgentParams()
    if idm_params:
        from jaxloop.realism.fit import load_params
        params = load_params(idm_params)
    config = RealismConfig(agents=agents, rollouts=rollouts, horizon=horizon, batch_size=batch_size, seed=seed,
                           policy_objects=policy_objects, policy_noise=policy_noise,
                           policy_parked=policy_parked, policy_skip_reversing=policy_skip_reversing,
                           policy_head=policy_head, policy_target_spread=policy_target_spread, idm_params=params)
    if agents.startswith("policy:") and not pathlib.Path(agents[len("policy:"):]).exists():
        raise FileNotFoundError(f"--agents {agents!r}: no such run, checkpoint or exported policy directory")
    scenarios, infos = load_source(data, num_objects=num_objects, select=select, skip_invalid=skip_invalid)
    init = init_steps_of(infos, f"--data {data}")
    if init != config.init_steps:
        import dataclasses
        config = dataclasses.replace(config, init_steps=init)
    report = realism(scenarios, infos, config)
    if out:
        d = pathlib.Path(out)
        d.mkdir(parents=True, exist_ok=True)
        report.to_json(str(d / "realism.json"))
        (d / "realism.md").write_text(report.to_markdown())
    if json_output:
        print(json.dumps({"agents": report.name, "description": report.description, **report.aggregate}))
    else:
        print(f"{report.name}: {report.description}\n")
        print(report.to_markdown())
        print("WOSAC-style realism (the challenge's features, estimators and 2025 weights, re-implemented); "
              "not the official WOSAC number.")
        if out:
            print(f"report written to {out}/")
    return 0
