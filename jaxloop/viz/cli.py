"""`jaxloop render`: roll out one scenario of any data source with any policy and draw it to PNG (and GIF).

The episode is the evaluator's (`jaxloop.eval.evaluate.make_rollout_fn`): the same
policy resolution (a baseline, a training run / checkpoint, an exported policy), the
same non-ego model and the same per-step metrics, so a frame shows exactly the episode
that `jaxloop eval` scored. The steps where the ego collides or leaves the road are
printed (at fault, as `failure_rate` counts them, and raw), so a failing episode can be rendered at its
first failure with `--step first_failure`.
"""

from __future__ import annotations

import sys
from typing import Literal

import numpy as np

# Per-step flags the summary lists: at fault (what failure_rate counts), then the raw metrics.
FAILURES = {"ego_overlap_at_fault": "collision", "ego_offroad_at_fault": "offroad", "ego_red_light": "red_light",
            "ego_overlap": "raw collision", "ego_offroad": "raw offroad"}


def _load_scenario(data: str, index: int):
    """(one unbatched scenario, its info dict) of entry `index` of `data`."""
    from jaxloop.data.sources import load_source
    from jaxloop.sim.datatypes import index_batch
    batch, infos = load_source(data)
    count = len(infos)
    if not 0 <= index < count:
        raise ValueError(f"--index {index} is out of range: {data} holds {count} scenario(s)")
    return index_batch(batch, index), infos[index]


def failure_steps(extras: dict, timesteps: np.ndarray) -> dict[str, list[int]]:
    """Simulation steps at which each failure metric is set (valid ego steps only)."""
    valid = np.asarray(extras["ego_valid"])
    return {name: [int(t) for t in np.asarray(timesteps)[np.asarray(extras[k]) & valid]]
            for k, name in FAILURES.items() if k in extras}


def render(out: str = "render.png", data: str = "toy", index: int = 0, gif: str | None = None,
           policy: str = "expert", non_ego: Literal["log", "idm"] = "log", step: str = "-1", view_m: float = 80.0,
           width_px: int = 640, height_px: int = 640, stride: int = 1, fps: float = 10.0, seed: int = 0) -> int:
    """Rolls out scenario `index` of `data` with `policy` and renders it.

    Args:
        out: PNG path for the frame at closed-loop step `step`.
        data: any data spec of `jaxloop eval --data` (toy[:NUM], procedural:SPLIT:NUM[:SEED], a cache
            directory, raw WOMD / AV2 / GPUDrive JSON files).
        index: which scenario of the set.
        gif: also write the whole episode as a GIF here.
        policy: a baseline (expert, constant_velocity, idm), a training run / checkpoint directory or an
            exported policy directory.
        non_ego: the model of every other object.
        step: closed-loop step of the PNG frame (negative counts from the end), or "first_failure" (the
            first step with an at-fault collision or offroad or a red-light crossing; the last step if none).
        view_m: view width in metres, centred on the ego.
        width_px: image width in pixels.
        height_px: image height in pixels.
        stride: render every stride-th step into the GIF.
        fps: GIF frames per second.
        seed: episode key (stochastic agents and perturbations).
    """
    import jax

    from jaxloop.data.formats import init_steps_of
    from jaxloop.eval.cli import resolve_policy_spec
    from jaxloop.eval.evaluate import EvalConfig, make_rollout_fn
    from jaxloop.sim.compute import compiler_options
    from jaxloop.sim.env import EnvConfig, num_closed_loop_steps
    from jaxloop.viz.render import render_episode_gif, render_frame, save_png

    scenario, info = _load_scenario(data, index)
    env_config = EnvConfig(non_ego_agent=non_ego, init_steps=init_steps_of([info], f"--data {data}"))
    policy_obj, policy_env, label = resolve_policy_spec(policy, env_config)
    horizon = num_closed_loop_steps(scenario, policy_env)
    if horizon < 1:
        print(f"jaxloop render: scenario has {scenario.num_steps} steps, nothing to roll out after "
              f"{policy_env.init_steps} initial steps", file=sys.stderr)
        return 2
    episode = jax.jit(make_rollout_fn(policy_obj, EvalConfig(env=policy_env, batch_size=1), horizon),
                      compiler_options=compiler_options())
    scenario, result = jax.tree.map(np.asarray, episode(scenario, jax.random.key(seed)))
    failures = failure_steps(result.extras, result.timesteps)
    first = min((ts[0] for name, ts in failures.items() if ts and not name.startswith("raw")), default=None)
    if step == "first_failure":
        h = horizon - 1 if first is None else int(np.searchsorted(result.timesteps, first))
    else:
        try:
            requested = int(step)
        except ValueError:
            raise ValueError(f"--step must be an integer or 'first_failure', got {step!r}") from None
        h = requested + horizon if requested < 0 else requested
        if not 0 <= h < horizon:
            raise ValueError(f"--step {step} is out of range for {horizon} closed-loop steps")
    ego = int(np.argmax(np.asarray(scenario.object_metadata.is_sdc)))
    states = jax.tree.map(lambda a: a[h], result.states)
    trail = np.stack([result.states.x[: h + 1, ego], result.states.y[: h + 1, ego]], -1)
    image = render_frame(scenario, states, int(result.timesteps[h]), trail, width_px=width_px, height_px=height_px,
                         view_m=view_m)
    save_png(image, out)
    print(f"{label} on {info.get('scenario_id', index)}: "
          + ", ".join(f"{k} at steps {ts[:8]}{' ...' if len(ts) > 8 else ''}" if ts else f"no {k}"
                      for k, ts in failures.items()))
    print(f"wrote {out} (step {int(result.timesteps[h])}, {width_px}x{height_px})")
    if gif is not None:
        render_episode_gif(scenario, result.states, gif, fps=fps, stride=stride, timesteps=result.timesteps,
                           width_px=width_px, height_px=height_px, view_m=view_m)
        print(f"wrote {gif} ({-(-horizon // stride)} frames)")
    return 0
