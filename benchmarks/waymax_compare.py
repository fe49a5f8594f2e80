"""The same scenarios stepped by Waymax's environment and by jaxloop's, as a ratio.

    python -m benchmarks.waymax_compare --quick

Runs only where the real Waymax (the GitHub project "waymo-waymax", not the unrelated
PyPI placeholder named `waymax`) is installed; otherwise prints one JSON line saying
why it was skipped. The module itself imports without Waymax. Both simulators step B
scenarios of N objects with the invertible bicycle for the ego and log replay for the
rest, jitted and vmapped the same way; the Waymax states come from the jaxloop ones
through `jaxloop.interop.waymax.to_waymax` under the same `jax.vmap`.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp

from benchmarks.common import emit, environment, time_fn
from jaxloop.interop.waymax import to_waymax, waymax_datatypes
from jaxloop.sim.compute import compiler_options


def _real_waymax() -> tuple[object | None, str | None]:
    """(waymax.datatypes, None) where the real Waymax is installed, else (None, why not)."""
    try:
        return waymax_datatypes(), None
    except ImportError as e:
        return None, f"the real Waymax is not installed: {e}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    datatypes, why = _real_waymax()
    if datatypes is None:
        print(json.dumps({"bench": "waymax_compare", "skipped": why}))
        return
    from waymax import config as wconfig, dynamics as wdynamics, env as wenv, datatypes as wdata

    from benchmarks.sim_step import _batch
    from jaxloop.sim.env import Env, EnvConfig

    env_meta = environment()
    steps = 20
    for batch in ([64] if args.quick else [64, 1024]):
        scenarios = _batch(batch, 128)
        ours = Env(EnvConfig())

        def jaxloop_run(scenario, key):
            state = ours.reset(scenario, key)
            def body(s, _):
                return ours.step(scenario, s, jnp.zeros(2))[0], None
            return jax.lax.scan(body, state, None, length=steps)[0].current.x

        keys = jax.random.split(jax.random.key(0), batch)
        opts = compiler_options()
        t_ours = time_fn(jax.jit(jax.vmap(jaxloop_run), compiler_options=opts), scenarios, keys)["median_s"]

        wenv_ = wenv.MultiAgentEnvironment(dynamics_model=wdynamics.InvertibleBicycleModel(),
                                           config=wconfig.EnvironmentConfig(max_num_objects=128))
        states = jax.vmap(lambda s, k: to_waymax(s, ours.reset(s, k)))(scenarios, keys)

        def waymax_run(state):
            def body(s, _):
                action = wdata.Action(data=jnp.zeros(s.log_trajectory.x.shape[:-1] + (2,)),
                                      valid=jnp.ones(s.log_trajectory.x.shape[:-1] + (1,), bool))
                return wenv_.step(s, action), None
            return jax.lax.scan(body, state, None, length=steps)[0].timestep

        t_waymax = time_fn(jax.jit(jax.vmap(waymax_run), compiler_options=opts), states)["median_s"]
        emit("waymax_compare", {"B": batch, "N": 128, "H": steps}, "jaxloop_over_waymax_speed", t_waymax / t_ours,
             "ratio", jaxloop_s=t_ours, waymax_s=t_waymax, env=env_meta)


if __name__ == "__main__":
    main()
