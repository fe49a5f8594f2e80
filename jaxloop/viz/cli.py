"""`jaxloop render`: roll out one scenario in the simulator and draw it to PNG (and GIF)."""

from __future__ import annotations

import functools
import os
import sys
from typing import Literal

import numpy as np


def _load_scenario(data: str, index: int):
    """One unbatched scenario: toy (seeded by `index`) or entry `index` of a scenario cache directory."""
    from jaxloop.sim.datatypes import index_batch
    if data == "toy":
        from jaxloop.data.toy import make_toy_scenario
        return make_toy_scenario(seed=index)
    if not os.path.isdir(data):
        raise SystemExit(f"jaxloop render: --data must be 'toy' or a scenario cache directory; {data!r} is neither")
    try:
        from jaxloop.data.pipeline import load_scenarios
    except ImportError as e:
        raise SystemExit(f"jaxloop render: cannot read scenario directory {data!r}: jaxloop.data.pipeline is not "
                         f"available ({e}); use --data toy") from None
    batch = load_scenarios(data)
    count = int(np.shape(batch.family)[0]) if np.ndim(batch.family) else 1
    if np.ndim(batch.family) == 0:
        if index != 0:
            raise SystemExit(f"jaxloop render: {data} holds 1 scenario, --index {index} is out of range")
        return batch
    if not 0 <= index < count:
        raise SystemExit(f"jaxloop render: {data} holds {count} scenarios, --index {index} is out of range [0, {count})")
    return index_batch(batch, index)


def render(out: str = "render.png", data: str = "toy", index: int = 0, gif: str | None = None,
           policy: Literal["expert", "constant_velocity"] = "expert", step: int = -1, view_m: float = 80.0,
           width_px: int = 640, height_px: int = 640, stride: int = 1, fps: float = 10.0) -> int:
    """Rolls out scenario `index` of `data` ("toy" or a scenario cache directory) and renders it.

    Args:
        out: PNG path for the frame at closed-loop step `step`.
        data: "toy" (built-in scenario, seeded by --index) or a scenario cache directory.
        index: which scenario.
        gif: also write the whole episode as a GIF here.
        policy: ego policy: "expert" (inverse-dynamics log replay) or "constant_velocity" (zero action).
        step: closed-loop step of the PNG frame (negative counts from the end).
        view_m: view width in metres, centred on the ego.
        width_px: image width in pixels.
        height_px: image height in pixels.
        stride: render every stride-th step into the GIF.
        fps: GIF frames per second.
    """
    import jax
    import jax.numpy as jnp

    from jaxloop.sim.compute import compiler_options
    from jaxloop.sim.env import Env, EnvConfig, num_closed_loop_steps
    from jaxloop.sim.rollout import constant_action_policy, log_replay_policy, rollout
    from jaxloop.viz.render import render_episode_gif, render_frame, save_png

    scenario = _load_scenario(data, index)
    env = Env(EnvConfig())
    horizon = num_closed_loop_steps(scenario, env.config)
    if horizon < 1:
        print(f"jaxloop render: scenario has {scenario.num_steps} steps, nothing to roll out after "
              f"{env.config.init_steps} initial steps", file=sys.stderr)
        return 2
    ego_policy = (log_replay_policy(env) if policy == "expert"
                  else constant_action_policy(jnp.zeros(env.config.action_dim)))

    @functools.partial(jax.jit, compiler_options=compiler_options())
    def episode(scenario, key):
        return rollout(env, scenario, env.reset(scenario, key), ego_policy, horizon)[1]

    result = jax.tree.map(np.asarray, episode(scenario, jax.random.key(0)))
    h = step + horizon if step < 0 else step
    if not 0 <= h < horizon:
        print(f"jaxloop render: --step {step} is out of range for {horizon} closed-loop steps", file=sys.stderr)
        return 2
    ego = int(np.argmax(np.asarray(scenario.object_metadata.is_sdc)))
    states = jax.tree.map(lambda a: a[h], result.states)
    trail = np.stack([result.states.x[: h + 1, ego], result.states.y[: h + 1, ego]], -1)
    image = render_frame(scenario, states, int(result.timesteps[h]), trail, width_px=width_px, height_px=height_px,
                         view_m=view_m)
    save_png(image, out)
    print(f"wrote {out} (step {int(result.timesteps[h])}, {width_px}x{height_px})")
    if gif is not None:
        render_episode_gif(scenario, result.states, gif, fps=fps, stride=stride, timesteps=result.timesteps,
                           width_px=width_px, height_px=height_px, view_m=view_m)
        print(f"wrote {gif} ({-(-horizon // stride)} frames)")
    return 0
