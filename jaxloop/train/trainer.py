"""Trainers: `init(key) -> TrainState` and one compiled `train_step(TrainState, Batch, key, Params)`.

`make_trainer(experiment)` picks the algorithm (`experiment.algo`: BC, APG, PPO, GRPO) and
jits its step once with the mesh's shardings (batch over the data axis, state and
params replicated; see `jaxloop.train.parallel`). A `Batch` is a batched `Scenario` with
leading axis `batch_size`; `Params` (`jaxloop.config`) are traced, so other reward
weights, agent constants or action limits reuse the compiled step. `make_train(experiment,
scenarios)` returns a pure `train(key, params)` that samples batches and runs every step
inside one `lax.scan`, for small experiments: `jax.vmap(train)(keys, stacked_params)`
trains several seeds and several parameter settings at once.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxloop.config import Experiment, Params
from jaxloop.sim.datatypes import Scenario
from jaxloop.train import parallel
from jaxloop.train.common import ControlledFn, Context, StepFn, init_state, make_context
from jaxloop.train.state import TrainState, freeze_after

Batch = Scenario  # [B, ...]


def _step_module(algo: str):
    return importlib.import_module(f"jaxloop.train.{algo}")


@dataclasses.dataclass
class Trainer:
    config: Experiment
    ctx: Context
    mesh: Mesh
    step_fn: Callable  # pure (state, batch, key, params) -> (state, metrics)
    train_step: Callable  # the jitted step_fn
    _guarded: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def init(self, key: jax.Array) -> TrainState:
        """Fresh `TrainState`, replicated over the mesh."""
        return parallel.replicate(init_state(self.ctx, key), self.mesh)

    @property
    def params(self) -> Params:
        """The experiment's default `Params` (reward preset, agent constants, dynamics limits)."""
        return self.ctx.params

    def shard(self, batch: Batch) -> Batch:
        return parallel.shard_batch(batch, self.mesh)

    def guarded_step(self, max_consecutive_skips: int) -> Callable:
        """The jitted step frozen after `max_consecutive_skips` skips in a row (`state.freeze_after`), one per limit."""
        if max_consecutive_skips not in self._guarded:
            self._guarded[max_consecutive_skips] = parallel.jit_train_step(
                freeze_after(self.step_fn, max_consecutive_skips), self.mesh)
        return self._guarded[max_consecutive_skips]


def make_trainer(config: Experiment, mesh: Mesh | None = None, reward_fn: StepFn | None = None,
                 surrogate_fn: StepFn | None = None, controlled_fn: ControlledFn | None = None) -> Trainer:
    """The trainer of `config.algo` on `mesh` (default: every device on one data axis).

    `controlled_fn(scenario) -> [N] bool` narrows the self-play agents (`common.agent_mask`).
    Trainers are cached by (config, mesh, reward / mask functions): a second run with the
    same settings in one process (a resume, a sweep over data) reuses the compiled step.
    """
    mesh = parallel.make_mesh() if mesh is None else mesh
    parallel.check_batch_size(config.batch_size, mesh)
    return _cached_trainer(config, mesh, reward_fn, surrogate_fn, controlled_fn)


@functools.lru_cache(maxsize=16)
def _cached_trainer(config: Experiment, mesh: Mesh, reward_fn: StepFn | None,
                    surrogate_fn: StepFn | None, controlled_fn: ControlledFn | None = None) -> Trainer:
    ctx = make_context(config, reward_fn, surrogate_fn, controlled_fn)
    step_fn = _step_module(config.algo_name).make_step_fn(ctx)
    return Trainer(config=config, ctx=ctx, mesh=mesh, step_fn=step_fn,
                   train_step=parallel.jit_train_step(step_fn, mesh))


def init(config: Experiment, key: jax.Array) -> TrainState:
    """`TrainState` of `config` from `key` (unsharded)."""
    return init_state(make_context(config), key)


def sample_batch(scenarios: Scenario, key: jax.Array, batch_size: int) -> Batch:
    """`batch_size` scenarios drawn uniformly (with replacement) inside jit."""
    num = jax.tree.leaves(scenarios)[0].shape[0]
    idx = jax.random.randint(key, (batch_size,), 0, num)
    return jax.tree.map(lambda a: jnp.take(a, idx, axis=0), scenarios)


def make_train(config: Experiment, scenarios: Scenario, num_steps: int | None = None,
               reward_fn: StepFn | None = None, surrogate_fn: StepFn | None = None,
               controlled_fn: ControlledFn | None = None
               ) -> Callable[[jax.Array, Params], tuple[TrainState, dict[str, Any]]]:
    """A pure `train(key, params) -> (final TrainState, metrics stacked over steps)` of `num_steps` steps
    (default `config.steps`); jit it and vmap it over keys and `Params` (`jaxloop.config.stack_params`) freely.
    `controlled_fn` narrows the self-play agents (see `make_trainer`)."""
    ctx = make_context(config, reward_fn, surrogate_fn, controlled_fn)
    step_fn = _step_module(config.algo_name).make_step_fn(ctx)
    data = jax.tree.map(jnp.asarray, scenarios)
    num_steps = config.steps if num_steps is None else num_steps

    def train(key: jax.Array, params: Params):
        key_init, key_run = jax.random.split(key)
        state = init_state(ctx, key_init)

        def body(st, k):
            key_batch, key_step = jax.random.split(k)
            return step_fn(st, sample_batch(data, key_batch, config.batch_size), key_step, params)

        return jax.lax.scan(body, state, jax.random.split(key_run, num_steps))

    return train
