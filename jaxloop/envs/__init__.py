"""Functional RL environments over the simulator, in the gymnax interface (see `jaxloop.envs.driving`).

    from jaxloop.envs import DrivingEnv
    env = DrivingEnv.from_source("procedural:train:64")
    obs, state = env.reset(key, env.default_params)
    obs, state, reward, done, info = env.step(key, state, action, env.default_params)

`jaxloop.envs.gymnax_compat.GymnaxDrivingEnv` presents the same env as a subclass of
gymnax's `Environment` (with gymnax installed) for code that checks the type.
"""

from jaxloop.envs.driving import DrivingEnv, EnvParams, EnvState, default_env_config
from jaxloop.envs.spaces import Box

__all__ = ["Box", "DrivingEnv", "EnvParams", "EnvState", "default_env_config"]
