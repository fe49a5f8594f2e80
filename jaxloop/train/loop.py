"""The training loop and the `jaxloop train` command.

A Python loop at logging / checkpoint granularity around one compiled train step.
What it guarantees:

- One data path: the run iterates a `jaxloop.data.Dataset` (a cache streams from its
  shards; toy / procedural / raw files are built in memory; `A@w,B@w` is a weighted mixture)
  through its `BatchPlan`, prefetched on a background thread; each process loads only its
  own rows (`--data-partitions` blocks shared among the processes). Scenario infos travel
  beside each batch on the host.
- Same batches, same keys: the batch of a step is a pure function of `(seed, step)` (epochs
  shuffled by seed, see `BatchPlan`) and the step's key is `fold_in(key(seed + 1), step)`, so a
  resumed run sees exactly the batches and keys an uninterrupted one would. Every checkpoint
  records the data position (`BatchPlan.position`) and the order that defines it; a resume
  checks both.
- Resume: an existing checkpoint in the output directory is resumed, from the newest
  step whose checksum verifies (newer steps that do not verify are named on stderr and
  moved aside to `damaged_checkpoints/`), and only if the saved config and the data
  identity (sources, scenario count, content hash, batch order) match this run's; a
  mismatch is a `RunError` saying what differs.
- Multi-host: `jaxloop train --coordinator-address HOST:PORT --num-processes P --process-id I`,
  or under Slurm / another cluster JAX detects, with no flag (`parallel.initialize_distributed`).
  Process 0 writes logs and the summary; every process takes part in checkpoints.
- SIGTERM / SIGINT save the current state (stderr names the step and directory) and the
  run resumes bit-identically; after `kill -9` it resumes from the last committed step.
- Only finite states are checkpointed (`CheckpointManager.save` refuses others), so the
  "last good checkpoint" is always a state worth resuming and never rotated away by a bad one.
- Divergence: the compiled step freezes the state once `max_consecutive_skips` updates
  in a row were skipped (non-finite loss, gradient or update; `state.freeze_after`), with
  no per-step host sync; the next log / checkpoint step sees it and raises
  `TrainingDiverged` naming the step it diverged at and the last good checkpoint.
- A run that skipped more than `max_skip_fraction` of its updates ends with
  `TooManySkips` after its final checkpoint. Both exit the command with code 1, and
  `summary.json` says `"diverged"` / `"too_many_skips"` (else `"completed"` or `"interrupted"`).
- The output directory is never a scenario cache or inside one.

Every `log_every` steps the metrics come to the host, go to a tqdm progress bar, JSONL
and TensorBoard (`jaxloop.io.logging.MetricLogger`); every `ckpt_every` steps the
`TrainState` is checkpointed with its config (`jaxloop.io.checkpoint.CheckpointManager`).
A summary is printed and returned at the end.

Layout of `out`: `checkpoints/` (orbax steps, checksums/, config.json), `logs/`
(metrics.jsonl + TensorBoard events), `summary.json`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import jax
import numpy as np
import tyro

from jaxloop.config import BC, GRPO, Experiment, Params, from_saved, to_dict
from jaxloop.data import BatchPlan, Dataset, Mixture, MixtureDataset, as_dataset, open_dataset
from jaxloop.errors import CheckpointError, JaxloopError, RunError
from jaxloop.io.checkpoint import from_flat_dict, to_flat_dict
from jaxloop.io.policies import CONFIG_KEY, resolve_checkpoint_dir
from jaxloop.sim.datatypes import Scenario
from jaxloop.train import parallel
from jaxloop.train.common import StepFn
from jaxloop.train.state import TrainState
from jaxloop.train.trainer import make_trainer

DATA_KEY = "data"
POSITION_KEY = "data_position"


class TrainingDiverged(JaxloopError, RuntimeError):
    """Too many updates in a row were skipped for non-finite values (or the state went non-finite)."""

    exit_code = 1


class TooManySkips(JaxloopError, RuntimeError):
    """The run finished, but skipped more than the allowed fraction of its updates."""

    exit_code = 1


def load_data(data: str, num_toy: int = 64, toy_objects: int = 16, num_objects: int | None = None,
              select: str = "nearest", with_infos: bool = False,
              skip_invalid: bool = False) -> Dataset | tuple[Dataset, list[dict]]:
    """The `Dataset` of `--data.source` (`jaxloop.data.open_dataset`): `"toy"` (`num_toy` scenarios of
    `toy_objects`), `procedural:SPLIT:NUM[:SEED]`, a cache directory (streamed) or raw files (`num_objects` /
    `select` / `skip_invalid`); with `with_infos`, also its infos. Comma-separated sources with weights
    (`procedural:train:1024@0.75,real/@0.25`) give a `MixtureDataset`: slot sizes padded to the largest, each
    batch filled in the given proportion."""
    dataset = open_dataset(data, num_objects=num_objects, select=select, skip_invalid=skip_invalid,
                           num_toy=num_toy, toy_objects=toy_objects)
    return (dataset, dataset.infos) if with_infos else dataset


def make_plan(data: Dataset, batch_size: int, seed: int, partitions: int | None = None) -> BatchPlan:
    """The run's batch sequence over `data` with `partitions` blocks (default: one per process)."""
    partitions = jax.process_count() if partitions is None else partitions
    if isinstance(data, MixtureDataset):
        if batch_size % partitions == 0:
            data.check_batch_size(batch_size // partitions)
    return data.plan(batch_size, seed, partitions)


def host_batch(data: Dataset | Scenario | Mixture, seed: int, step: int, batch_size: int,
               partitions: int | None = None) -> Scenario:
    """This process's rows of the batch of `step` (`BatchPlan.process_indices`) as a numpy `Scenario`."""
    data = as_dataset(data)
    plan = make_plan(data, batch_size, seed, partitions)
    return data.get(plan.process_indices(step, jax.process_index(), jax.process_count()))


def step_key(seed: int, step: int) -> jax.Array:
    return jax.random.fold_in(jax.random.PRNGKey(seed + 1), step)


def _init_from(state: TrainState, config: Experiment, path: str) -> TrainState:
    """Policy parameters (and GRPO's reference) from another run's checkpoint or from an exported policy
    directory (`jaxloop export`: its params.npz and the `Experiment` in its metadata.json); new heads keep
    their init (an export has no value head)."""
    from jaxloop.io.export import METADATA_FILE
    if os.path.isfile(os.path.join(path, METADATA_FILE)):
        from jaxloop.io.export import load_policy
        from jaxloop.io.policies import config_of_export
        source = config_of_export(path)
        flat = {f"params/{name}": np.asarray(value) for name, value in load_policy(path).params.items()}
    else:
        from jaxloop.io.checkpoint import CheckpointManager
        from jaxloop.io.policies import config_from_checkpoint
        ckpt_dir = resolve_checkpoint_dir(path)
        source = config_from_checkpoint(ckpt_dir)
        manager = CheckpointManager(ckpt_dir)
        try:
            flat = to_flat_dict(manager.restore())
        finally:
            manager.close()
    if (source.obs, source.model.kind, source.model.hidden, source.env.dynamics) != (
            config.obs, config.model.kind, config.model.hidden, config.env.dynamics):
        raise ValueError(f"--init-from {path}: its observation / model / dynamics config differs from this run's "
                         f"(source model {source.model}, dynamics {source.env.dynamics})")
    params = from_flat_dict(state.params, flat, prefix="params", strict=False)
    loaded_leaves = sum(1 for k in to_flat_dict(state.params) if "params/" + k in flat)
    if loaded_leaves == 0:
        raise ValueError(f"--init-from {path}: no parameter of this model was found in the checkpoint")
    ref = jax.tree.map(lambda a: a.copy(), params) if state.ref_params is not None else None
    return state.replace(params=params, ref_params=ref, opt_state=state.opt_state)


def data_identity(data: Dataset | Scenario | Mixture, sources: list[str] | tuple[str, ...] = (),
                  plan: BatchPlan | None = None) -> dict:
    """What a run trained on: the source spec(s), the scenario count, the dataset's content hash
    (`Dataset.identity`; for a mixture also each source's weight) and, with `plan`, the batch order."""
    identity = {"sources": list(sources), **as_dataset(data).identity()}
    if plan is not None:
        identity["order"] = plan.describe()
    return identity


def _check_same_data(out: str, saved: dict | None, current: dict) -> None:
    if saved is None:  # written before runs recorded their data
        return
    differ = []
    if saved.get("sources") and current["sources"] and saved["sources"] != current["sources"]:
        differ.append(f"sources {saved['sources']} -> {current['sources']}")
    if saved.get("num_scenarios") != current["num_scenarios"]:
        differ.append(f"scenario count {saved.get('num_scenarios')} -> {current['num_scenarios']}")
    if saved.get("blake2b") != current["blake2b"]:
        differ.append(f"content hash {saved.get('blake2b')} -> {current['blake2b']}")
    if saved.get("order") and current.get("order") and saved["order"] != current["order"]:
        differ.append(f"batch order {saved['order']} -> {current['order']}")
    if differ:
        raise RunError(f"{out}: its checkpoint was trained on other data ({'; '.join(differ)}); resume with the same "
                       f"--data or use a new --out")


def check_out_dir(out: str) -> None:
    """Refuses an output directory that is a scenario cache or lies inside one (a run would write into the data)."""
    from jaxloop.data import MANIFEST
    path = Path(out).expanduser().absolute()
    for folder in (path, *path.parents):
        if (folder / MANIFEST).is_file():
            where = "is" if folder == path else f"is inside {folder}, which is"
            raise RunError(f"--out {out}: {where} a scenario cache (it holds {MANIFEST}); choose a directory outside "
                           f"the data")


def run(config: Experiment, scenarios: Dataset | Scenario | Mixture, out: str, num_steps: int | None = None, *,
        init_from: str | None = None, log_every: int = 10, ckpt_every: int = 100, max_consecutive_skips: int = 5,
        max_skip_fraction: float = 0.1, reward_fn: StepFn | None = None, surrogate_fn: StepFn | None = None,
        controlled_fn=None, mesh=None, progress: bool = True, use_tensorboard: bool = True, run_info: dict | None = None,
        params: Params | None = None, data_partitions: int | None = None, prefetch: int = 2) -> dict:
    """Trains the experiment `config` on `scenarios` (a `Dataset`, scenarios `[S, ...]` or a `Mixture` of
    weighted sources) until `num_steps` total steps (default `config.steps`); returns the summary dict. `params`
    replace the experiment's default traced `Params` (not saved: a resume passes them again), `controlled_fn`
    narrows the self-play agents (`jaxloop.train.common.agent_mask`; not saved either).

    `data_partitions` (default: the number of processes) cuts every source into that many blocks
    (`BatchPlan`); the batches depend on it, not on the process count, which must divide it.

    Raises `TrainingDiverged` once `max_consecutive_skips` updates in a row were skipped,
    `TooManySkips` at the end if more than `max_skip_fraction` of all updates were, and
    `RunError` if `out` holds a run of another config or data (or is a scenario cache).
    `run_info["data"]` (the data spec) is recorded with the data identity.
    """
    from tqdm.auto import tqdm

    from jaxloop.io.checkpoint import CheckpointManager, read_config
    from jaxloop.io.logging import MetricLogger

    if log_every < 1 or ckpt_every < 1 or max_consecutive_skips < 1:
        raise ValueError(f"run: log_every, ckpt_every and max_consecutive_skips must be >= 1, got {log_every}, "
                         f"{ckpt_every}, {max_consecutive_skips}")
    num_steps = config.steps if num_steps is None else num_steps
    if num_steps < 0:
        raise ValueError(f"run: num_steps must be >= 0, got {num_steps}")
    if not (math.isfinite(max_skip_fraction) and 0.0 <= max_skip_fraction <= 1.0):
        raise ValueError(f"run: max_skip_fraction must be in [0, 1], got {max_skip_fraction}")
    check_out_dir(out)
    dataset = as_dataset(scenarios)
    plan = make_plan(dataset, config.batch_size, config.seed, data_partitions)
    plan.check_processes(jax.process_count())
    run_info = dict(run_info or {})
    source = run_info.get("data")
    identity = data_identity(dataset, [source] if source else [], plan)
    lead = jax.process_index() == 0  # writes logs and the summary
    trainer = make_trainer(config, mesh=mesh, reward_fn=reward_fn, surrogate_fn=surrogate_fn,
                           controlled_fn=controlled_fn)
    train_step = trainer.guarded_step(max_consecutive_skips)
    params = trainer.params if params is None else params
    cfg_dict = {CONFIG_KEY: to_dict(config), "run": run_info, DATA_KEY: identity}
    ckpt_dir = os.path.join(out, "checkpoints")
    ckpt = CheckpointManager(ckpt_dir, max_to_keep=3, save_interval_steps=ckpt_every)
    state = trainer.init(jax.random.PRNGKey(config.seed))
    latest = ckpt.latest_step()
    if latest is not None:
        saved_cfg = read_config(ckpt.directory)
        saved = from_saved(saved_cfg, f"{ckpt.directory}/config.json")
        if not saved.same_run(config):
            raise RunError(f"{out}: holds a checkpoint of a different config; use a new --out or the same "
                           f"settings (saved: {to_dict(saved)})")
        _check_same_data(out, saved_cfg.get(DATA_KEY), identity)
        state = ckpt.restore(target=state)
        start = ckpt.restored_step
        _check_position(out, ckpt, start, plan)
        if start != latest:
            moved, where = ckpt.quarantine_after(start)
            print(f"warning: moved checkpoint step(s) {moved} that did not verify from {ckpt_dir} to {where}; they are "
                  f"re-run from step {start}", file=sys.stderr)
        if lead:
            print(f"resuming from step {start} in {ckpt_dir}")
    else:
        start = 0
        if init_from:
            state = _init_from(state, config, init_from)
            print(f"initialised policy parameters from {init_from}")
        # Step 0 on disk: config.json exists from the start, and a diverged or interrupted
        # run always leaves a restorable checkpoint.
        try:
            ckpt.save(0, state, _with_position(cfg_dict, plan, 0), force=True)
        except CheckpointError as e:
            ckpt.close()
            raise TrainingDiverged(f"step 0: the initial state is not finite, nothing was trained ({e})") from e

    holder = {"state": state}

    def state_to_save():
        current = holder["state"]
        if int(current.consecutive_skipped) >= max_consecutive_skips:
            return None  # frozen after divergence: the last good checkpoint already holds its parameters
        return int(current.step), current

    ckpt.install_signal_handlers(state_to_save)
    logger = MetricLogger(os.path.join(out, "logs"), use_tensorboard=use_tensorboard) if lead else _NullLogger()
    algo = config.algo
    env_steps_per_step = config.batch_size * (algo.samples_per_scenario if isinstance(algo, BC) else
                                              config.env.horizon * (algo.group_size if isinstance(algo, GRPO) else 1))
    status, last, diverged_at = "completed", {}, None
    t_start = time.perf_counter()
    bar = tqdm(total=num_steps, initial=start, disable=not (progress and lead), desc=f"train {config.algo_name}",
               dynamic_ncols=True)
    batches = dataset.train_batches(plan, start, max(num_steps - start, 0), prefetch=prefetch, place=trainer.shard)

    def diverged(done: int, in_a_row: int, at: int) -> TrainingDiverged:
        return TrainingDiverged(
            f"{in_a_row} updates in a row were skipped for a non-finite loss, gradient or update (steps "
            f"{at - in_a_row + 1}..{at}); the run diverged at step {at} and stopped at step {done}. The last good "
            f"checkpoint is step {ckpt.newest_checked_step()} in {ckpt_dir}.")

    try:
        for step, (batch, _infos) in zip(range(start, num_steps), batches):
            state, metrics = train_step(state, batch, step_key(config.seed, step), params)
            holder["state"] = state
            bar.update(1)
            done = step + 1
            is_log = done % log_every == 0 or done == num_steps
            is_ckpt = done % ckpt_every == 0
            if not (is_log or is_ckpt):
                continue
            in_a_row, at = (int(x) for x in jax.device_get((state.consecutive_skipped, state.step)))
            if in_a_row >= max_consecutive_skips:
                status, diverged_at = "diverged", at
                raise diverged(done, in_a_row, at)
            if is_log:
                host = jax.device_get({**metrics, "skipped_total": state.skipped,
                                       "consecutive_skipped": state.consecutive_skipped})
                last = {k: float(np.asarray(v)) for k, v in host.items() if k != "frozen"}
                logger.log(done, last)
                bar.set_postfix({k: f"{last[k]:.4g}" for k in ("loss", "episode_return", "grad_norm") if k in last})
            if is_ckpt:
                _save(ckpt, done, state, _with_position(cfg_dict, plan, done), ckpt_dir)
        if num_steps > start:
            _save(ckpt, num_steps, state, _with_position(cfg_dict, plan, num_steps), ckpt_dir, force=True)
        skipped, total = (int(x) for x in jax.device_get((state.skipped, state.step)))
        if total > 0 and skipped / total > max_skip_fraction:
            status = "too_many_skips"
            raise TooManySkips(f"{skipped} of {total} updates ({skipped / total:.0%}) were skipped for non-finite "
                               f"values, more than --max-skip-fraction {max_skip_fraction:g}; the final state is "
                               f"checkpointed (step {total} in {ckpt_dir}) but did not train as configured")
    except BaseException as e:
        if status == "completed":
            status = "diverged" if isinstance(e, TrainingDiverged) else "interrupted"
        raise
    finally:
        if hasattr(batches, "close"):
            batches.close()
        bar.close()
        logger.close()
        good = ckpt.newest_checked_step() if status != "interrupted" else None
        ckpt.close()
        wall = time.perf_counter() - t_start
        final_step, final_skipped = (int(x) for x in jax.device_get((holder["state"].step, holder["state"].skipped)))
        steps_run = max(final_step - start, 0)
        summary = {"status": status, "algo": config.algo_name, "start_step": start, "final_step": start + steps_run,
                   "steps": steps_run, "wall_s": wall, "steps_per_s": steps_run / wall if wall > 0 else 0.0,
                   "env_steps_per_s": steps_run * env_steps_per_step / wall if wall > 0 else 0.0,
                   "skipped_updates": final_skipped,
                   "skipped_fraction": final_skipped / final_step if final_step else 0.0,
                   "diverged_at_step": diverged_at, "final_metrics": last, "out": out}
        if status != "interrupted":
            summary["last_good_checkpoint"] = {"step": good, "directory": ckpt_dir}
        if lead:
            os.makedirs(out, exist_ok=True)
            with open(os.path.join(out, "summary.json"), "w") as f:
                json.dump(summary, f, indent=2)
            if status != "interrupted":
                print(_format_summary(summary))
    return summary


class _NullLogger:
    """The metric logger of a process other than 0 (process 0 writes the run's logs)."""

    def log(self, step: int, metrics) -> None:
        del step, metrics

    def close(self) -> None:
        pass


def _with_position(cfg_dict: dict, plan: BatchPlan, step: int) -> dict:
    return {**cfg_dict, POSITION_KEY: plan.position(step)}


def _check_position(out: str, ckpt, step: int, plan: BatchPlan) -> None:
    """The data position saved with the resumed step is where this run's batch order stands at it."""
    saved = (ckpt.restore_config(step) or {}).get(POSITION_KEY)
    if saved is not None and saved != plan.position(step):
        raise RunError(f"{out}: step {step} was saved at data position {saved}, but this run's batch order is at "
                       f"{plan.position(step)} there; resume with the same data, seed, batch size and "
                       f"--data-partitions or use a new --out")


def _save(ckpt, step: int, state: TrainState, cfg_dict: dict, ckpt_dir: str, force: bool = False) -> None:
    """A checkpoint of a finite state; a non-finite one ends the run as diverged instead of being written."""
    try:
        ckpt.save(step, state, cfg_dict, force=force)
    except CheckpointError as e:
        raise TrainingDiverged(f"step {step}: the train state is not finite and was not checkpointed ({e}). The last "
                               f"good checkpoint is step {ckpt.newest_checked_step()} in {ckpt_dir}.") from e


def _format_summary(summary: dict) -> str:
    lines = [f"{summary['algo']}: {summary['status']} at step {summary['final_step']} "
             f"({summary['steps']} steps in {summary['wall_s']:.1f} s, {summary['env_steps_per_s']:.0f} env-steps/s, "
             f"{summary['skipped_updates']} skipped updates, {summary['skipped_fraction']:.1%} of all)"]
    if summary.get("diverged_at_step") is not None:
        lines.append(f"  diverged at step {summary['diverged_at_step']}")
    good = summary.get("last_good_checkpoint")
    if good and summary["status"] != "completed":
        lines.append(f"  last good checkpoint: step {good['step']} in {good['directory']}")
    for k, v in sorted(summary["final_metrics"].items()):
        lines.append(f"  {k:<22}{v:.6g}")
    return "\n".join(lines)


_EXPERIMENT_ARG = tyro.conf.arg(name="")  # the experiment's fields are the command's own flags


@tyro.conf.configure(tyro.conf.CascadeSubcommandArgs)  # run flags may follow the algorithm's subcommand
def train(experiment: Annotated[Experiment, _EXPERIMENT_ARG] = Experiment(),
          out: str = "runs/train", init_from: str | None = None, log_every: int = 10, ckpt_every: int = 100,
          max_consecutive_skips: int = 5, max_skip_fraction: float = 0.1, progress: bool = True,
          data_partitions: int | None = None, coordinator_address: str | None = None,
          num_processes: int | None = None, process_id: int | None = None) -> int:
    """Trains a driving policy and checkpoints it, with the whole experiment, under OUT.

    The algorithm is a subcommand with its own flags, e.g.
    `jaxloop train --data.source data/train --steps 3000 --out runs/bc` (behaviour cloning, the default),
    `jaxloop train algo:apg --algo.truncate-every 8 --env.reward-preset closed_loop_safety --init-from runs/bc`,
    `jaxloop train algo:grpo --algo.group-size 4 --algo.kl-coef 0.05`, `jaxloop train algo:ppo`.
    `--data.source` takes "toy", procedural:SPLIT:NUM[:SEED], a cache directory, raw WOMD / AV2 / GPUDrive JSON
    files, directories of them or globs, several joined by commas (see `jaxloop.data.sources`); with a weight
    on every part (`procedural:train:1024@0.75,real/@0.25`) each batch mixes them in that proportion. The log
    steps before the closed loop (`data.init_steps`) come from the loaded sources.

    Args:
        experiment: the experiment (`jaxloop.config.Experiment`), saved beside every checkpoint.
        out: run directory (checkpoints/, logs/, summary.json); an existing run there is resumed.
        init_from: checkpoint, run or exported policy directory whose policy parameters start this run (GRPO: also
            the reference).
        log_every: steps between metric logs.
        ckpt_every: steps between checkpoints.
        max_consecutive_skips: skipped (non-finite) updates in a row that stop the run (exit 1, "diverged").
        max_skip_fraction: a run that skipped more than this fraction of its updates exits 1 ("too_many_skips").
        progress: show a progress bar.
        data_partitions: blocks every data source is cut into (default: one per process); the batches depend on
            it, not on the number of processes, which must divide it.
        coordinator_address: multi-host: HOST:PORT of process 0 (with --num-processes and --process-id); without
            these flags a Slurm / cluster environment is detected, and a single plain process starts none.
        num_processes: multi-host: the number of processes.
        process_id: multi-host: this process's index in [0, num_processes).
    """
    from jaxloop.data import init_steps_of
    for flag, value in (("--log-every", log_every), ("--ckpt-every", ckpt_every),
                        ("--max-consecutive-skips", max_consecutive_skips)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if not (math.isfinite(max_skip_fraction) and 0.0 <= max_skip_fraction <= 1.0):
        raise ValueError(f"--max-skip-fraction must be in [0, 1], got {max_skip_fraction}")
    check_out_dir(out)
    parallel.initialize_distributed(coordinator_address, num_processes, process_id)
    data = experiment.data
    scenarios, infos = load_data(data.source, num_toy=data.num_toy, num_objects=data.num_objects, select=data.select,
                                 with_infos=True, skip_invalid=data.skip_invalid)
    experiment = dataclasses.replace(experiment, data=dataclasses.replace(
        data, init_steps=init_steps_of(infos, f"--data.source {data.source}")))
    # A path is recorded absolute, so the same data reached from another working directory is the same source.
    source = str(Path(data.source).expanduser().absolute()) if os.path.exists(data.source) else data.source
    # TrainingDiverged / TooManySkips carry exit code 1; the `jaxloop` command prints them as one line.
    run(experiment, scenarios, out, init_from=init_from, log_every=log_every, ckpt_every=ckpt_every,
        max_consecutive_skips=max_consecutive_skips, max_skip_fraction=max_skip_fraction, progress=progress,
        run_info={"data": source}, data_partitions=data_partitions)
    return 0
