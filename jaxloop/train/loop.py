"""The training loop and the `jaxloop train` command.

A Python loop at logging / checkpoint granularity around one compiled train step:

- batches are drawn on the host from the scenario set with a generator seeded by
  `(seed, step)` and the step's key is `fold_in(key(seed + 1), step)`, so a resumed run
  sees exactly the batches and keys an uninterrupted one would;
- every `log_every` steps the metrics come to the host (the only sync), go to a tqdm
  progress bar, JSONL and TensorBoard (`jaxloop.io.logging.MetricLogger`);
- every `ckpt_every` steps the `TrainState` is checkpointed with its config
  (`jaxloop.io.checkpoint.CheckpointManager`); an existing checkpoint in the output
  directory is resumed; SIGTERM / SIGINT save the current state before exiting;
- `max_consecutive_skips` updates skipped in a row (non-finite loss or gradient) stop the
  run with a message, leaving the last good checkpoint as it is;
- a summary is printed and returned at the end.

Layout of `out`: `checkpoints/` (orbax steps + config.json), `logs/` (metrics.jsonl +
TensorBoard events), `summary.json`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Literal

import jax
import numpy as np

from jaxloop.sim.datatypes import Scenario
from jaxloop.train import parallel
from jaxloop.train.common import StepFn
from jaxloop.train.config import APGConfig, GRPOConfig, TrainConfig, config_from_dict, config_to_dict
from jaxloop.train.policy_fn import CONFIG_KEY, resolve_checkpoint_dir
from jaxloop.train.state import TrainState, from_flat_dict, to_flat_dict
from jaxloop.train.trainer import make_trainer


class TrainingDiverged(RuntimeError):
    """Too many updates in a row were skipped for non-finite values."""


def load_data(data: str, num_toy: int = 64, toy_objects: int = 16, num_objects: int | None = None,
              select: str = "nearest", with_infos: bool = False,
              skip_invalid: bool = False) -> Scenario | tuple[Scenario, list[dict]]:
    """Scenarios `[S, ...]` (numpy): `"toy"`, `procedural:SPLIT:NUM[:SEED]`, a cache directory or raw files
    (`jaxloop.data.sources`; `num_objects` / `select` / `skip_invalid` for raw files); with `with_infos`, also
    their infos."""
    if data == "toy":
        from jaxloop.data.toy import make_toy_scenario
        from jaxloop.sim.datatypes import stack_scenarios
        scenarios = stack_scenarios([make_toy_scenario(num_objects=toy_objects, seed=i) for i in range(num_toy)])
        infos = [{"scenario_id": f"toy-{i}", "format": "toy", "init_steps": 11} for i in range(num_toy)]
        return (scenarios, infos) if with_infos else scenarios
    from jaxloop.data.sources import load_source
    scenarios, infos = load_source(data, num_objects=num_objects, select=select, skip_invalid=skip_invalid)
    scenarios.validate()
    if not scenarios.batch_shape or len(scenarios.batch_shape) != 1:
        raise ValueError(f"--data {data!r}: expected scenarios with one leading batch axis, "
                         f"got batch shape {scenarios.batch_shape}")
    return (scenarios, infos) if with_infos else scenarios


def host_batch(scenarios: Scenario, seed: int, step: int, batch_size: int) -> Scenario:
    """The batch of `step`: indices from a generator seeded by `(seed, step)`; this process's rows only."""
    num = int(np.shape(scenarios.family)[0])
    idx = np.random.default_rng([seed, step]).integers(0, num, batch_size)
    idx = idx[parallel.process_slice(batch_size)]
    return jax.tree.map(lambda a: np.asarray(a)[idx], scenarios)


def step_key(seed: int, step: int) -> jax.Array:
    return jax.random.fold_in(jax.random.PRNGKey(seed + 1), step)


def _init_from(state: TrainState, config: TrainConfig, path: str) -> TrainState:
    """Policy parameters (and GRPO's reference) from another run's checkpoint; new heads keep their init."""
    from jaxloop.io.checkpoint import CheckpointManager
    from jaxloop.train.policy_fn import config_from_checkpoint
    ckpt_dir = resolve_checkpoint_dir(path)
    source = config_from_checkpoint(ckpt_dir)
    if (source.obs, source.model.kind, source.model.hidden, source.history_length, source.dynamics) != (
            config.obs, config.model.kind, config.model.hidden, config.history_length, config.dynamics):
        raise ValueError(f"--init-from {path}: its observation / model / dynamics config differs from this run's "
                         f"(source model {source.model}, dynamics {source.dynamics})")
    manager = CheckpointManager(ckpt_dir)
    try:
        flat = to_flat_dict(manager.restore())
    finally:
        manager.close()
    params = from_flat_dict(state.params, flat, prefix="params", strict=False)
    loaded = sum(1 for k in to_flat_dict(state.params) if "params/" + k in flat)
    if loaded == 0:
        raise ValueError(f"--init-from {path}: no parameter of this model was found in the checkpoint")
    ref = jax.tree.map(lambda a: a.copy(), params) if state.ref_params is not None else None
    return state.replace(params=params, ref_params=ref, opt_state=state.opt_state)


def run(config: TrainConfig, scenarios: Scenario, out: str, num_steps: int, *, init_from: str | None = None,
        log_every: int = 10, ckpt_every: int = 100, max_consecutive_skips: int = 5, reward_fn: StepFn | None = None,
        surrogate_fn: StepFn | None = None, mesh=None, progress: bool = True, use_tensorboard: bool = True,
        run_info: dict | None = None) -> dict:
    """Trains `config` on `scenarios` until `num_steps` total steps; returns the summary dict.

    Raises `TrainingDiverged` after `max_consecutive_skips` skipped updates in a row.
    """
    from tqdm.auto import tqdm

    from jaxloop.io.checkpoint import CheckpointManager
    from jaxloop.io.logging import MetricLogger

    if log_every < 1 or ckpt_every < 1 or max_consecutive_skips < 1:
        raise ValueError("run: log_every, ckpt_every and max_consecutive_skips must be >= 1")
    trainer = make_trainer(config, mesh=mesh, reward_fn=reward_fn, surrogate_fn=surrogate_fn)
    cfg_dict = {CONFIG_KEY: config_to_dict(config), "run": dict(run_info or {})}
    ckpt = CheckpointManager(os.path.join(out, "checkpoints"), max_to_keep=3, save_interval_steps=ckpt_every)
    state = trainer.init(jax.random.PRNGKey(config.seed))
    start = ckpt.latest_step()
    if start is not None:
        from jaxloop.io.checkpoint import read_config
        saved = config_from_dict(TrainConfig, read_config(ckpt.directory)[CONFIG_KEY])
        if saved != config:
            raise ValueError(f"{out}: holds a checkpoint of a different config; use a new --out or the same "
                             f"settings (saved: {config_to_dict(saved)})")
        state = ckpt.restore(start, target=state)
        print(f"resuming from step {start} in {out}/checkpoints")
    else:
        start = 0
        if init_from:
            state = _init_from(state, config, init_from)
            print(f"initialised policy parameters from {init_from}")
        # Step 0 on disk: config.json exists from the start, and a diverged or interrupted
        # run always leaves a restorable checkpoint.
        ckpt.save(0, state, cfg_dict, force=True)

    holder = {"state": state}
    ckpt.install_signal_handlers(lambda: (int(holder["state"].step), holder["state"]))
    logger = MetricLogger(os.path.join(out, "logs"), use_tensorboard=use_tensorboard)
    env_steps_per_step = config.batch_size * (config.bc.samples_per_scenario if config.algo == "bc" else
                                              config.horizon * (config.grpo.group_size if config.algo == "grpo" else 1))
    status, last = "completed", {}
    t_start = time.perf_counter()
    t_first = None
    bar = tqdm(total=num_steps, initial=start, disable=not progress, desc=f"train {config.algo}", dynamic_ncols=True)
    try:
        for step in range(start, num_steps):
            batch = trainer.shard(host_batch(scenarios, config.seed, step, config.batch_size))
            state, metrics = trainer.train_step(state, batch, step_key(config.seed, step))
            holder["state"] = state
            bar.update(1)
            done = step + 1
            if done % log_every == 0 or done == num_steps:
                host = jax.device_get({**metrics, "skipped_total": state.skipped,
                                       "consecutive_skipped": state.consecutive_skipped})
                if t_first is None:
                    t_first = time.perf_counter()
                last = {k: float(np.asarray(v)) for k, v in host.items()}
                logger.log(done, last)
                bar.set_postfix({k: f"{last[k]:.4g}" for k in ("loss", "episode_return", "grad_norm") if k in last})
                if last["consecutive_skipped"] >= max_consecutive_skips:
                    status = "diverged"
                    raise TrainingDiverged(
                        f"{int(last['consecutive_skipped'])} updates in a row were skipped for a non-finite loss or "
                        f"gradient (at step {done}); stopping. The last good checkpoint in {out}/checkpoints is kept "
                        f"(step {ckpt.latest_step()}).")
            if done % ckpt_every == 0:
                ckpt.save(done, state, cfg_dict)
        if num_steps > start:
            ckpt.save(num_steps, state, cfg_dict, force=True)
    except BaseException:
        status = "interrupted" if status == "completed" else status
        raise
    finally:
        bar.close()
        logger.close()
        ckpt.close()
        wall = time.perf_counter() - t_start
        steps_run = max(int(jax.device_get(holder["state"].step)) - start, 0)
        summary = {"status": status, "algo": config.algo, "start_step": start, "final_step": start + steps_run,
                   "steps": steps_run, "wall_s": wall, "steps_per_s": steps_run / wall if wall > 0 else 0.0,
                   "env_steps_per_s": steps_run * env_steps_per_step / wall if wall > 0 else 0.0,
                   "skipped_updates": int(jax.device_get(holder["state"].skipped)), "final_metrics": last,
                   "out": out}
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    print(_format_summary(summary))
    return summary


def _format_summary(summary: dict) -> str:
    lines = [f"{summary['algo']}: {summary['status']} at step {summary['final_step']} "
             f"({summary['steps']} steps in {summary['wall_s']:.1f} s, {summary['env_steps_per_s']:.0f} env-steps/s, "
             f"{summary['skipped_updates']} skipped updates)"]
    for k, v in sorted(summary["final_metrics"].items()):
        lines.append(f"  {k:<22}{v:.6g}")
    return "\n".join(lines)


def train(algo: Literal["bc", "apg", "ppo", "grpo"] = "bc", data: str = "toy", out: str = "runs/train",
          steps: int = 100, init_from: str | None = None, preset: str = "progress_safety", batch_size: int = 16,
          horizon: int = 80, model: Literal["mlp", "attention"] = "mlp",
          head: Literal["gaussian", "deterministic"] = "gaussian", hidden: tuple[int, ...] = (128, 128),
          learning_rate: float = 3e-4, lr_decay_steps: int = 0, max_grad_norm: float = 1.0, seed: int = 0,
          crosser_prob: float = 0.0, start_noise: float = 0.0,
          dynamics: Literal["bicycle", "delta_local", "delta_global"] = "bicycle",
          non_ego_agent: Literal["log", "constant_velocity", "idm"] = "log", group_size: int = 4,
          kl_coef: float = 0.05, truncate_every: int = 0, log_every: int = 10, ckpt_every: int = 100,
          max_consecutive_skips: int = 5, num_toy: int = 64, progress: bool = True, num_objects: int = 128,
          select: Literal["nearest", "error"] = "nearest", skip_invalid: bool = False) -> int:
    """Trains a driving policy (bc | apg | ppo | grpo) and checkpoints it under OUT.

    Args:
        algo: behaviour cloning (open loop), analytic policy gradients, PPO or GRPO (closed loop).
        data: "toy", procedural:SPLIT:NUM[:SEED], a cache directory, raw WOMD / AV2 / GPUDrive JSON files,
            directories of them or globs; several joined by commas (see `jaxloop.data.sources`).
        out: run directory (checkpoints/, logs/, summary.json); an existing run there is resumed.
        steps: total train steps (a resumed run continues up to this number).
        init_from: checkpoint (or run) directory whose policy parameters start this run (GRPO: also the reference).
        preset: reward preset of jaxloop.sim.rewards (RL reward / APG surrogate weights).
        batch_size: scenarios per step (divisible by the number of devices).
        horizon: closed-loop steps per episode.
        model: policy network.
        head: action head.
        hidden: MLP widths.
        learning_rate: Adam learning rate.
        lr_decay_steps: cosine decay of the learning rate to 0.1x over this many steps (0: constant).
        max_grad_norm: global-norm gradient clip.
        seed: seeds the parameters, batches and rollouts.
        crosser_prob: apg / grpo: fraction of episodes with a random pedestrian or cyclist crossing the ego's path.
        start_noise: apg / grpo: episodes start off the logged ego state by up to this fraction of 1 m, 0.1 rad, 1 m/s.
        dynamics: action space.
        non_ego_agent: behaviour of the other objects.
        group_size: GRPO rollouts per scenario.
        kl_coef: GRPO KL weight to the reference policy.
        truncate_every: APG truncated-BPTT window (0: full horizon).
        log_every: steps between metric logs.
        ckpt_every: steps between checkpoints.
        max_consecutive_skips: skipped (non-finite) updates in a row that stop the run.
        num_toy: number of toy scenarios for --data toy.
        progress: show a progress bar.
        num_objects: N object slots when reading raw files.
        select: raw files with more objects than N: keep the N nearest to the SDC (and every track to predict /
            object of interest), or stop with an error.
        skip_invalid: raw --data files: skip (and count on stderr) invalid files and records instead of stopping.
    """
    from jaxloop.data.formats import init_steps_of
    from jaxloop.policy.networks import ModelConfig
    scenarios, infos = load_data(data, num_toy=num_toy, num_objects=num_objects, select=select, with_infos=True,
                                 skip_invalid=skip_invalid)
    config = TrainConfig(algo=algo, seed=seed, init_steps=init_steps_of(infos, f"--data {data}"),
                         batch_size=batch_size, learning_rate=learning_rate,
                         lr_decay_steps=lr_decay_steps, crosser_prob=crosser_prob, start_noise=start_noise,
                         max_grad_norm=max_grad_norm, horizon=horizon, reward_preset=preset, dynamics=dynamics,
                         non_ego_agent=non_ego_agent, model=ModelConfig(kind=model, head=head, hidden=tuple(hidden)),
                         grpo=dataclasses.replace(GRPOConfig(), group_size=group_size, kl_coef=kl_coef),
                         apg=dataclasses.replace(APGConfig(), truncate_every=truncate_every))
    try:
        run(config, scenarios, out, steps, init_from=init_from, log_every=log_every, ckpt_every=ckpt_every,
            max_consecutive_skips=max_consecutive_skips, progress=progress, run_info={"data": data})
    except TrainingDiverged as e:
        print(f"error: {e}")
        return 1
    return 0

